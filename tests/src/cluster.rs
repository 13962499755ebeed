//! etcd plus N members of one scope, with waits for the states the HA tests care about.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::config::{MemberConfig, MemberSpec, Timing, FAST_TIMING};
use crate::etcd::Etcd;
use crate::member::Member;
use crate::process::TestDir;
use crate::{regent_bin, wait_until, wait_until_ok};

type Customizer = Box<dyn Fn(usize, &mut MemberConfig) + Send + Sync>;

/// Builds a `TestCluster`: `TestCluster::builder("scope").members(3).start().await`.
pub struct ClusterBuilder {
    scope: String,
    members: usize,
    timing: Timing,
    binary: Option<PathBuf>,
    /// Per-member binaries (e.g. the real Patroni for one member of a mixed cluster).
    member_binaries: Vec<(usize, PathBuf)>,
    customizers: Vec<Customizer>,
    start_agents: bool,
}

impl ClusterBuilder {
    pub fn members(mut self, n: usize) -> Self {
        self.members = n;
        self
    }

    /// ttl / loop_wait / retry_timeout written into `bootstrap.dcs` (default `FAST_TIMING`).
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Run another binary instead of `regent_bin()`.
    /// Run member `index` with another agent binary that takes the same configuration file
    /// (the real `patroni` in interoperability tests).
    pub fn binary_for(mut self, index: usize, path: PathBuf) -> Self {
        self.member_binaries.push((index, path));
        self
    }

    pub fn binary(mut self, path: PathBuf) -> Self {
        self.binary = Some(path);
        self
    }

    /// Change member `index`'s configuration before it is written (called for every member).
    pub fn configure(
        mut self,
        change: impl Fn(usize, &mut MemberConfig) + Send + Sync + 'static,
    ) -> Self {
        self.customizers.push(Box::new(change));
        self
    }

    /// Write configurations but do not start the agents (default: start them).
    pub fn start_agents(mut self, start: bool) -> Self {
        self.start_agents = start;
        self
    }

    pub async fn start(self) -> TestCluster {
        let binary = self.binary.unwrap_or_else(regent_bin);
        let dir = TestDir::new(&format!("cluster-{}", self.scope));
        let etcd = Etcd::launch().await;
        let mut members = Vec::with_capacity(self.members);
        for index in 0..self.members {
            let name = format!("{}-{index}", self.scope);
            let mut spec = MemberSpec::new(
                &self.scope,
                &name,
                dir.postgres_subdir(&name),
                vec![etcd.client_addr()],
            );
            spec.timing = self.timing;
            let mut config = MemberConfig::patroni(&spec);
            for change in &self.customizers {
                change(index, &mut config);
            }
            let member_binary = self
                .member_binaries
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| binary.clone());
            members.push(Member::create(spec, config, member_binary));
        }
        if self.start_agents {
            for member in &members {
                member.start();
            }
        }
        TestCluster {
            members,
            etcd,
            _dir: dir,
            scope: self.scope,
            timing: self.timing,
        }
    }
}

/// A running cluster. Fields drop in order: members (agents and Postgres killed), then etcd,
/// then the directory holding everything.
pub struct TestCluster {
    pub members: Vec<Member>,
    pub etcd: Etcd,
    _dir: TestDir,
    scope: String,
    timing: Timing,
}

impl TestCluster {
    /// Scope names become member-name prefixes and directory names: keep them short.
    pub fn builder(scope: &str) -> ClusterBuilder {
        ClusterBuilder {
            scope: scope.to_string(),
            members: 3,
            timing: FAST_TIMING,
            binary: None,
            member_binaries: Vec::new(),
            customizers: Vec::new(),
            start_agents: true,
        }
    }

    /// `n` members with default settings, agents started.
    pub async fn start(scope: &str, n: usize) -> TestCluster {
        Self::builder(scope).members(n).start().await
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.timing.ttl))
    }

    /// `/service/<scope>/`
    pub fn dcs_prefix(&self) -> String {
        format!("/service/{}/", self.scope)
    }

    /// Full etcd key of a cluster object (`leader`, `members/<name>`, `config`, …).
    pub fn dcs_key(&self, object: &str) -> String {
        format!("{}{object}", self.dcs_prefix())
    }

    /// Value of the leader key, if any.
    pub async fn dcs_leader(&self) -> Option<String> {
        self.etcd.get(&self.dcs_key("leader")).await
    }

    pub fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("no member named {name} in scope {}", self.scope))
    }

    /// Every member but `name`.
    pub fn others(&self, name: &str) -> Vec<&Member> {
        self.members.iter().filter(|m| m.name() != name).collect()
    }

    pub fn all(&self) -> Vec<&Member> {
        self.members.iter().collect()
    }

    /// Names of the members answering 200 on `path`.
    pub async fn members_answering(&self, path: &str, status: u16) -> Vec<String> {
        let mut names = Vec::new();
        for member in &self.members {
            if member.api_status(path).await == Some(status) {
                names.push(member.name().to_string());
            }
        }
        names
    }

    /// The member answering `GET /primary` with 200, if exactly one does.
    pub async fn leader(&self) -> Option<&Member> {
        let primaries = self.members_answering("/primary", 200).await;
        match primaries.as_slice() {
            [only] => Some(self.member(only)),
            _ => None,
        }
    }

    /// Members answering `GET /replica` with 200.
    pub async fn replicas(&self) -> Vec<&Member> {
        let names = self.members_answering("/replica", 200).await;
        self.members
            .iter()
            .filter(|m| names.iter().any(|n| n == m.name()))
            .collect()
    }

    /// Names of members whose Postgres answers `pg_is_in_recovery() = false`.
    pub async fn sql_primaries(&self) -> Vec<String> {
        let mut names = Vec::new();
        for member in &self.members {
            if let Ok(false) = member.pg_in_recovery().await {
                names.push(member.name().to_string());
            }
        }
        names
    }

    /// Wait until exactly one member answers `/primary` 200 and the DCS leader key names it.
    pub async fn wait_for_leader(&self, deadline: Duration) -> String {
        wait_until_ok(
            &format!("a single leader in scope {}", self.scope),
            deadline,
            || async {
                let primaries = self.members_answering("/primary", 200).await;
                let [leader] = primaries.as_slice() else {
                    bail!("members answering /primary 200: {primaries:?}");
                };
                let key = self.dcs_leader().await;
                if key.as_deref() != Some(leader.as_str()) {
                    bail!("{leader} answers /primary 200 but the leader key is {key:?}");
                }
                Ok(leader.clone())
            },
        )
        .await
    }

    /// Wait until `name` is a healthy replica streaming from `leader`: in recovery, WAL receiver
    /// `streaming` from the leader's port, `/replica` 200.
    pub async fn wait_for_member_streaming(&self, name: &str, leader: &str, deadline: Duration) {
        let member = self.member(name);
        let leader_port = i32::from(self.member(leader).pg_port());
        wait_until_ok(
            &format!("{name} streaming from {leader}"),
            deadline,
            || async { streaming_from(member, leader_port).await },
        )
        .await
    }

    /// Wait until every member other than `leader` whose agent runs streams from `leader`.
    pub async fn wait_for_replicas_streaming(&self, leader: &str, deadline: Duration) {
        let leader_port = i32::from(self.member(leader).pg_port());
        let replicas: Vec<&Member> = self
            .others(leader)
            .into_iter()
            .filter(|m| m.agent_running())
            .collect();
        let names: Vec<&str> = replicas.iter().map(|m| m.name()).collect();
        wait_until_ok(
            &format!("replicas {names:?} streaming from {leader}"),
            deadline,
            || async {
                for member in &replicas {
                    streaming_from(member, leader_port).await?;
                }
                Ok(())
            },
        )
        .await
    }

    /// Wait until probe row `id` is visible on each of `members`.
    pub async fn wait_for_probe_on(&self, members: &[&Member], id: i64, deadline: Duration) {
        let names: Vec<&str> = members.iter().map(|m| m.name()).collect();
        wait_until(
            &format!("probe row {id} visible on {names:?}"),
            deadline,
            || async {
                for member in members {
                    if !member.has_probe(id).await.unwrap_or(false) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }
}

async fn streaming_from(member: &Member, leader_port: i32) -> Result<()> {
    if !member.pg_in_recovery().await? {
        bail!("{} is not in recovery", member.name());
    }
    match member.wal_receiver().await? {
        Some((status, Some(port))) if status == "streaming" && port == leader_port => {}
        other => bail!(
            "{}: WAL receiver is {other:?}, want streaming from port {leader_port}",
            member.name()
        ),
    }
    match member.api_status("/replica").await {
        Some(200) => Ok(()),
        other => bail!("{}: GET /replica answered {other:?}", member.name()),
    }
}
