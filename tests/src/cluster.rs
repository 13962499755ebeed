//! A DCS (etcd or the Kubernetes API test server) plus N members of one scope, with waits for
//! the states the HA tests care about and backend-neutral views of the cluster's DCS objects.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::config::{
    Backend, KubeSpec, MemberConfig, MemberSpec, Timing, FAST_TIMING, KUBE_APP_LABEL,
    KUBE_NAMESPACE,
};
use crate::etcd::Etcd;
use crate::kube::KubeApiServer;
use crate::member::Member;
use crate::process::TestDir;
use crate::proxy::DcsRelay;
use crate::{regent_bin, wait_until, wait_until_ok, BOOTSTRAP_DEADLINE};

/// Generate one test per backend from `async fn <case>(backend: Backend)`:
///
/// ```ignore
/// regent_tests::backend_tests! {
///     leader_crash: [etcd, kubernetes];
///     handover: [etcd, kubernetes, kubernetes_endpoints];
/// }
/// ```
///
/// makes `leader_crash::etcd`, `leader_crash::kubernetes`, … (so `cargo test kubernetes` picks
/// every Kubernetes variant).
#[macro_export]
macro_rules! backend_tests {
    ($($case:ident : [$($backend:ident),+ $(,)?]);* $(;)?) => {
        $(
            mod $case {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $backend() {
                        super::$case($crate::backend_named!($backend)).await;
                    }
                )+
            }
        )*
    };
}

/// The `Backend` a `backend_tests!` variant name stands for.
#[macro_export]
macro_rules! backend_named {
    (etcd) => {
        $crate::config::Backend::Etcd
    };
    (kubernetes) => {
        $crate::config::Backend::Kubernetes {
            use_endpoints: false,
        }
    };
    (kubernetes_endpoints) => {
        $crate::config::Backend::Kubernetes {
            use_endpoints: true,
        }
    };
}

type Customizer = Box<dyn Fn(usize, &mut MemberConfig) + Send + Sync>;

/// Builds a `TestCluster`: `TestCluster::builder("scope").members(3).start().await`.
pub struct ClusterBuilder {
    scope: String,
    members: usize,
    timing: Timing,
    backend: Backend,
    binary: Option<PathBuf>,
    /// Per-member binaries (e.g. the real Patroni for one member of a mixed cluster).
    member_binaries: Vec<(usize, PathBuf)>,
    customizers: Vec<Customizer>,
    start_agents: bool,
    dcs_relays: bool,
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

    /// The DCS the cluster runs on (default etcd).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Run member `index` with another agent binary that takes the same configuration file
    /// (the real `patroni` in interoperability tests).
    pub fn binary_for(mut self, index: usize, path: PathBuf) -> Self {
        self.member_binaries.push((index, path));
        self
    }

    /// Run another binary instead of `regent_bin()`.
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

    /// Connect each member to the DCS through its own relay, which `TestCluster::cut_from_dcs`
    /// can cut (default: members connect directly).
    pub fn dcs_relays(mut self, relays: bool) -> Self {
        self.dcs_relays = relays;
        self
    }

    /// Write configurations but do not start the agents (default: start them).
    pub fn start_agents(mut self, start: bool) -> Self {
        self.start_agents = start;
        self
    }

    pub async fn start(self) -> TestCluster {
        let binary = self.binary.clone().unwrap_or_else(regent_bin);
        let dir = TestDir::new(&format!("cluster-{}", self.scope));
        let dcs = match self.backend {
            Backend::Etcd => Dcs::Etcd(Etcd::launch().await),
            Backend::Kubernetes { use_endpoints } => Dcs::Kubernetes {
                server: KubeApiServer::launch().await,
                use_endpoints,
            },
        };
        // host:port of the DCS, which relays forward to.
        let dcs_addr = match &dcs {
            Dcs::Etcd(etcd) => etcd.client_addr(),
            Dcs::Kubernetes { server, .. } => server
                .url()
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .to_string(),
        };
        let mut relays = Vec::new();
        if self.dcs_relays {
            let upstream = dcs_addr
                .parse()
                .unwrap_or_else(|e| panic!("DCS address {dcs_addr}: {e}"));
            for _ in 0..self.members {
                relays.push(DcsRelay::start(upstream).await);
            }
        }
        let mut members = Vec::with_capacity(self.members);
        for index in 0..self.members {
            let name = format!("{}-{index}", self.scope);
            let member_dir = dir.postgres_subdir(&name);
            // Where this member reaches the DCS: its relay, or the DCS itself.
            let reach = relays
                .get(index)
                .map_or_else(|| dcs_addr.clone(), DcsRelay::addr);
            let etcd_hosts = match &dcs {
                Dcs::Etcd(_) => vec![reach.clone()],
                Dcs::Kubernetes { .. } => Vec::new(),
            };
            let mut spec = MemberSpec::new(&self.scope, &name, member_dir.clone(), etcd_hosts);
            spec.timing = self.timing;
            if let Dcs::Kubernetes {
                server,
                use_endpoints,
            } = &dcs
            {
                let kube = KubeSpec {
                    namespace: KUBE_NAMESPACE.to_string(),
                    labels: BTreeMap::from([(
                        KUBE_APP_LABEL.0.to_string(),
                        KUBE_APP_LABEL.1.to_string(),
                    )]),
                    use_endpoints: *use_endpoints,
                    pod_ip: pod_ip(index),
                    // The bearer token is the member's name: the server counts requests by it.
                    kubeconfig: server.write_kubeconfig(&member_dir.join("kubeconfig"), &name),
                };
                if reach != dcs_addr {
                    let text = std::fs::read_to_string(&kube.kubeconfig)
                        .unwrap_or_else(|e| panic!("read {}: {e}", kube.kubeconfig.display()));
                    std::fs::write(&kube.kubeconfig, text.replace(&dcs_addr, &reach))
                        .unwrap_or_else(|e| panic!("write {}: {e}", kube.kubeconfig.display()));
                }
                crate::process::chown_to_postgres(&kube.kubeconfig);
                spec.kubernetes = Some(kube);
            }
            let mut config = MemberConfig::patroni(&spec);
            for change in &self.customizers {
                change(index, &mut config);
            }
            if let (Dcs::Kubernetes { server, .. }, Some(kube)) = (&dcs, &spec.kubernetes) {
                let mut labels = kube.pod_labels(&self.scope);
                // A Citus member's Pod carries its group, as the StatefulSet template sets it.
                if let Some(group) = config.get("citus.group").and_then(|g| g.as_u64()) {
                    labels.insert("citus-group".to_string(), group.to_string());
                }
                server
                    .create_pod(KUBE_NAMESPACE, &name, &labels, &kube.pod_ip)
                    .await;
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
            relays,
            dcs,
            _dir: dir,
            scope: self.scope,
            timing: self.timing,
        }
    }
}

/// The Pod IP of member `index`: a private address, never loopback (the API server refuses
/// loopback Endpoints addresses); nothing connects to it.
pub fn pod_ip(index: usize) -> String {
    format!("10.0.{}.{}", index / 250, index % 250 + 1)
}

fn http_client(timeout: Option<Duration>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_millis(500));
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder
        .build()
        .unwrap_or_else(|e| panic!("build HTTP client: {e}"))
}

/// The DCS a test cluster runs on.
pub enum Dcs {
    Etcd(Etcd),
    Kubernetes {
        server: KubeApiServer,
        use_endpoints: bool,
    },
}

/// Bearer token of the harness's own Kubernetes API requests (counted apart from the members').
pub const HARNESS_TOKEN: &str = "regent-test-harness";

/// A running cluster. Fields drop in order: members (agents and Postgres killed), then the DCS,
/// then the directory holding everything.
pub struct TestCluster {
    pub members: Vec<Member>,
    /// One per member, by index, when built with `dcs_relays(true)`.
    relays: Vec<DcsRelay>,
    dcs: Dcs,
    _dir: TestDir,
    scope: String,
    timing: Timing,
}

impl TestCluster {
    /// Scope names become member-name prefixes, directory names and Kubernetes object names:
    /// keep them short, lower-case letters, digits and `-`.
    pub fn builder(scope: &str) -> ClusterBuilder {
        ClusterBuilder {
            scope: scope.to_string(),
            members: 3,
            timing: FAST_TIMING,
            backend: Backend::Etcd,
            binary: None,
            member_binaries: Vec::new(),
            customizers: Vec::new(),
            start_agents: true,
            dcs_relays: false,
        }
    }

    /// `n` members on etcd with default settings, agents started.
    pub async fn start(scope: &str, n: usize) -> TestCluster {
        Self::builder(scope).members(n).start().await
    }

    /// `n` members on `backend` with default settings, agents started.
    pub async fn start_on(backend: Backend, scope: &str, n: usize) -> TestCluster {
        Self::builder(scope)
            .members(n)
            .backend(backend)
            .start()
            .await
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

    pub fn backend(&self) -> Backend {
        match &self.dcs {
            Dcs::Etcd(_) => Backend::Etcd,
            Dcs::Kubernetes { use_endpoints, .. } => Backend::Kubernetes {
                use_endpoints: *use_endpoints,
            },
        }
    }

    pub fn dcs(&self) -> &Dcs {
        &self.dcs
    }

    /// The etcd server; panics on a Kubernetes cluster.
    pub fn etcd(&self) -> &Etcd {
        match &self.dcs {
            Dcs::Etcd(etcd) => etcd,
            Dcs::Kubernetes { .. } => panic!(
                "scope {} runs on the Kubernetes API test server, not etcd",
                self.scope
            ),
        }
    }

    /// The Kubernetes API test server; panics on an etcd cluster.
    pub fn kube(&self) -> &KubeApiServer {
        match &self.dcs {
            Dcs::Kubernetes { server, .. } => server,
            Dcs::Etcd(_) => panic!("scope {} runs on etcd, not Kubernetes", self.scope),
        }
    }

    /// Freeze the DCS process (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn pause_dcs(&self) {
        match &self.dcs {
            Dcs::Etcd(etcd) => etcd.pause(),
            Dcs::Kubernetes { server, .. } => server.pause(),
        }
    }

    /// Isolate member `name` from the DCS (its relay forwards nothing); the other members still
    /// reach it. Needs `dcs_relays(true)`.
    pub fn cut_from_dcs(&self, name: &str) {
        self.relay_of(name).cut();
    }

    /// Undo `cut_from_dcs`.
    pub fn reconnect_to_dcs(&self, name: &str) {
        self.relay_of(name).heal();
    }

    fn relay_of(&self, name: &str) -> &DcsRelay {
        let index = self
            .members
            .iter()
            .position(|m| m.name() == name)
            .unwrap_or_else(|| panic!("no member named {name} in scope {}", self.scope));
        self.relays.get(index).unwrap_or_else(|| {
            panic!(
                "scope {} was built without dcs_relays(true): {name} cannot be cut from the DCS",
                self.scope
            )
        })
    }

    /// Thaw the DCS process (SIGCONT).
    pub fn resume_dcs(&self) {
        match &self.dcs {
            Dcs::Etcd(etcd) => etcd.resume(),
            Dcs::Kubernetes { server, .. } => server.resume(),
        }
    }

    /// `/service/<scope>/`
    pub fn dcs_prefix(&self) -> String {
        format!("/service/{}/", self.scope)
    }

    /// Full etcd key of a cluster object (`leader`, `members/<name>`, `config`, …).
    pub fn dcs_key(&self, object: &str) -> String {
        format!("{}{object}", self.dcs_prefix())
    }

    /// Where a logical DCS object lives, for messages: the etcd key, or `<kind>/<name>`
    /// (`configmaps/<scope>-config`, `pods/<member>`).
    pub fn dcs_location(&self, object: &str) -> String {
        match &self.dcs {
            Dcs::Etcd(_) => self.dcs_key(object),
            Dcs::Kubernetes { .. } => match object.strip_prefix("members/") {
                Some(member) => format!("pods/{member}"),
                None => {
                    let (resource, name, _) = self.kube_location(object);
                    format!("{resource}/{name}")
                }
            },
        }
    }

    /// `(resource, object name, annotation)` of a logical key on Kubernetes.
    fn kube_location(&self, object: &str) -> (&'static str, String, Option<&'static str>) {
        let kind = self.kube_kind();
        let scope = &self.scope;
        match object {
            "leader" => (kind, self.kube_leader_object(), Some("leader")),
            "failsafe" => (kind, self.kube_leader_object(), Some("failsafe")),
            "config" | "initialize" | "history" => {
                let annotation = match object {
                    "config" => "config",
                    "initialize" => "initialize",
                    _ => "history",
                };
                (kind, format!("{scope}-config"), Some(annotation))
            }
            "failover" => (kind, format!("{scope}-failover"), None),
            "sync" => (kind, format!("{scope}-sync"), None),
            other => panic!("no Kubernetes location for DCS object {other:?}"),
        }
    }

    /// `configmaps`, or `endpoints` in Endpoints mode.
    fn kube_kind(&self) -> &'static str {
        match self.backend() {
            Backend::Kubernetes {
                use_endpoints: true,
            } => "endpoints",
            _ => "configmaps",
        }
    }

    /// Name of the leader object: `<scope>-leader`, or `<scope>` in Endpoints mode.
    pub fn kube_leader_object(&self) -> String {
        match self.backend() {
            Backend::Kubernetes {
                use_endpoints: true,
            } => self.scope.clone(),
            _ => format!("{}-leader", self.scope),
        }
    }

    /// Label selector matching every object of this cluster.
    pub fn kube_selector(&self) -> String {
        format!(
            "{}={},cluster-name={}",
            KUBE_APP_LABEL.0, KUBE_APP_LABEL.1, self.scope
        )
    }

    /// A logical DCS object as a string, whatever the backend: `leader` (holder name),
    /// `failsafe` (topology JSON), `config`, `initialize`, `history`, `members/<name>` (member JSON), `failover` and `sync`
    /// (JSON; on Kubernetes built from the object's annotations).
    pub async fn dcs_get(&self, object: &str) -> Option<String> {
        match &self.dcs {
            Dcs::Etcd(etcd) => etcd.get(&self.dcs_key(object)).await,
            Dcs::Kubernetes { server, .. } => {
                if let Some(member) = object.strip_prefix("members/") {
                    let pod = server.get("pods", KUBE_NAMESPACE, member).await?;
                    return annotation(&pod, "status").map(str::to_string);
                }
                let (resource, name, key) = self.kube_location(object);
                let found = server.get(resource, KUBE_NAMESPACE, &name).await?;
                match key {
                    Some(key) => annotation(&found, key)
                        .filter(|v| !v.is_empty() || key != "leader")
                        .map(str::to_string),
                    None => {
                        let annotations = found.pointer("/metadata/annotations")?.as_object()?;
                        let fields: serde_json::Map<String, Value> = annotations
                            .iter()
                            .filter(|(k, _)| {
                                ["leader", "member", "scheduled_at", "sync_standby", "quorum"]
                                    .contains(&k.as_str())
                            })
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        (!fields.is_empty()).then(|| Value::Object(fields).to_string())
                    }
                }
            }
        }
    }

    /// Overwrite a logical DCS object (`config`, `initialize`, `history`, `leader`) with `value`
    /// as another client would (no compare-and-swap).
    pub async fn dcs_put(&self, object: &str, value: &str) -> Result<()> {
        match &self.dcs {
            Dcs::Etcd(etcd) => etcd.put(&self.dcs_key(object), value).await,
            Dcs::Kubernetes { .. } => {
                let (resource, name, key) = self.kube_location(object);
                let key = key.with_context(|| format!("{object} is not one annotation"))?;
                self.kube_patch_annotations(resource, &name, json!({ key: value }))
                    .await
            }
        }
    }

    /// Holder of the leader lock as the DCS shows it: the etcd leader key, or the `leader`
    /// annotation of the Kubernetes leader object (which outlives its holder until taken over:
    /// on Kubernetes a lock expires in readers' eyes, not in the API server).
    pub async fn dcs_leader(&self) -> Option<String> {
        self.dcs_get("leader").await
    }

    /// Time left on the leader lock: the etcd lease's TTL (whole seconds, rounded down), or on
    /// Kubernetes `renewTime + ttl − now` from the leader object's annotations. An error says
    /// why it could not be read (no leader key, no lease on it, an unreadable object): a check
    /// built on it must fail rather than be skipped.
    pub async fn dcs_lock_remaining(&self) -> Result<Duration> {
        match &self.dcs {
            Dcs::Etcd(etcd) => {
                let key = self.dcs_key("leader");
                etcd.lease_remaining(&key)
                    .await
                    .with_context(|| format!("read the lease of {key}"))?
                    .with_context(|| format!("{key} is missing, has no lease, or it expired"))
            }
            Dcs::Kubernetes { server, .. } => {
                let name = self.kube_leader_object();
                let object = server
                    .get(self.kube_kind(), KUBE_NAMESPACE, &name)
                    .await
                    .with_context(|| format!("leader object {name} missing"))?;
                let lock = LeaderRecord::from_object(&object);
                lock.leader
                    .as_ref()
                    .with_context(|| format!("{name} names no leader: {object}"))?;
                let renewed = lock
                    .renew_time
                    .with_context(|| format!("{name} has no renewTime: {object}"))?;
                let ttl = lock
                    .ttl
                    .with_context(|| format!("{name} has no ttl: {object}"))?;
                let expires = renewed + chrono::Duration::seconds(ttl as i64);
                Ok((expires - Utc::now()).to_std().unwrap_or_default())
            }
        }
    }

    /// Ask for a switchover from `leader` to `candidate` through the DCS, as patronictl does
    /// when the REST API is not used: the etcd `failover` key holds `{"leader", "member"}`; on
    /// Kubernetes the `<scope>-failover` object carries them as annotations.
    pub async fn request_switchover(&self, leader: &str, candidate: &str) -> Result<()> {
        match &self.dcs {
            Dcs::Etcd(etcd) => {
                let value = json!({ "leader": leader, "member": candidate }).to_string();
                etcd.put(&self.dcs_key("failover"), &value).await
            }
            Dcs::Kubernetes { .. } => {
                self.kube_patch_annotations(
                    self.kube_kind(),
                    &format!("{}-failover", self.scope),
                    json!({ "leader": leader, "member": candidate }),
                )
                .await
            }
        }
    }

    /// The member's Pod on the Kubernetes API test server.
    pub async fn kube_pod(&self, member: &str) -> Option<Value> {
        self.kube().get("pods", KUBE_NAMESPACE, member).await
    }

    /// The `role` label of the member's Pod (`primary`, `replica`, …).
    pub async fn kube_pod_role(&self, member: &str) -> Option<String> {
        let pod = self.kube_pod(member).await?;
        pod.pointer("/metadata/labels/role")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// Wait until the member's Pod carries `role=<want>`.
    pub async fn wait_for_pod_role(&self, member: &str, want: &str, deadline: Duration) {
        wait_until_ok(
            &format!("Pod {member} labelled role={want}"),
            deadline,
            || async move {
                match self.kube_pod_role(member).await {
                    Some(role) if role == want => Ok(()),
                    other => bail!("role label {other:?}"),
                }
            },
        )
        .await
    }

    /// The leader object (`<scope>-leader` ConfigMap or `<scope>` Endpoints).
    pub async fn kube_leader_object_value(&self) -> Option<Value> {
        self.kube()
            .get(self.kube_kind(), KUBE_NAMESPACE, &self.kube_leader_object())
            .await
    }

    /// Merge `annotations` into the object's annotations (`null` deletes one), creating the
    /// object with this cluster's labels if it does not exist.
    pub async fn kube_patch_annotations(
        &self,
        resource: &str,
        name: &str,
        annotations: Value,
    ) -> Result<()> {
        let server = self.kube();
        let collection = format!("/api/v1/namespaces/{KUBE_NAMESPACE}/{resource}");
        let path = format!("{collection}/{name}");
        let patch = json!({ "metadata": { "annotations": annotations } });
        let (status, body) = server
            .request(
                reqwest::Method::PATCH,
                &path,
                "application/merge-patch+json",
                Some(&patch),
            )
            .await?;
        match status {
            200 => return Ok(()),
            404 => {}
            _ => bail!("PATCH {path}: HTTP {status}: {body}"),
        }
        let kind = match resource {
            "endpoints" => "Endpoints",
            "configmaps" => "ConfigMap",
            other => bail!("cannot create a {other} object"),
        };
        let object = json!({
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {
                "name": name,
                "namespace": KUBE_NAMESPACE,
                "labels": { KUBE_APP_LABEL.0: KUBE_APP_LABEL.1, "cluster-name": self.scope },
                "annotations": annotations,
            },
        });
        let (status, body) = server
            .request(
                reqwest::Method::POST,
                &collection,
                "application/json",
                Some(&object),
            )
            .await?;
        if !(200..300).contains(&status) {
            bail!("POST {collection} ({name}): HTTP {status}: {body}");
        }
        Ok(())
    }

    /// Start recording every version of the Kubernetes leader object (a WATCH from the
    /// harness, with receive times).
    pub async fn watch_kube_leader(&self) -> Result<LeaderWatch> {
        LeaderWatch::start(
            self.kube().url(),
            self.kube_kind(),
            &self.kube_leader_object(),
            &self.kube_selector(),
        )
        .await
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

    /// Wait until a single leader is elected and every member whose agent runs streams from it
    /// (up to [`BOOTSTRAP_DEADLINE`] each); returns the leader's name.
    pub async fn wait_for_bootstrap(&self) -> String {
        let leader = self.wait_for_leader(BOOTSTRAP_DEADLINE).await;
        self.wait_for_replicas_streaming(&leader, BOOTSTRAP_DEADLINE)
            .await;
        leader
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

/// A string annotation of a Kubernetes object.
pub fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.pointer("/metadata/annotations")?.get(key)?.as_str()
}

/// The lock fields of a Kubernetes leader object's annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderRecord {
    /// Holder; `None` when the annotation is absent or empty (released).
    pub leader: Option<String>,
    pub acquire_time: Option<DateTime<Utc>>,
    pub renew_time: Option<DateTime<Utc>>,
    pub ttl: Option<u64>,
    pub transitions: Option<u64>,
    pub resource_version: Option<String>,
}

impl LeaderRecord {
    pub fn from_object(object: &Value) -> LeaderRecord {
        let time = |key: &str| {
            annotation(object, key)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let number = |key: &str| annotation(object, key).and_then(|n| n.parse::<u64>().ok());
        LeaderRecord {
            leader: annotation(object, "leader")
                .filter(|l| !l.is_empty())
                .map(str::to_string),
            acquire_time: time("acquireTime"),
            renew_time: time("renewTime"),
            ttl: number("ttl"),
            transitions: number("transitions"),
            resource_version: object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }
}

/// One version of the leader object as the harness's watch received it.
#[derive(Debug, Clone)]
pub struct LeaderEvent {
    /// When the event reached the harness.
    pub received: Instant,
    /// `ADDED`, `MODIFIED`, `DELETED` (the first one is the listed state, `LISTED`).
    pub kind: String,
    pub record: LeaderRecord,
}

/// Records every version of one Kubernetes leader object until dropped.
pub struct LeaderWatch {
    events: Arc<Mutex<Vec<LeaderEvent>>>,
    task: JoinHandle<()>,
}

impl LeaderWatch {
    async fn start(
        server_url: String,
        resource: &str,
        name: &str,
        selector: &str,
    ) -> Result<LeaderWatch> {
        let base = format!(
            "{}/api/v1/namespaces/{KUBE_NAMESPACE}/{resource}",
            server_url.trim_end_matches('/')
        );
        let http = http_client(Some(Duration::from_secs(5)));
        let list: Value = http
            .get(&base)
            .bearer_auth(HARNESS_TOKEN)
            .query(&[("labelSelector", selector)])
            .send()
            .await
            .with_context(|| format!("LIST {base}"))?
            .json()
            .await
            .with_context(|| format!("LIST {base}: body"))?;
        let version = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("LIST {base}: no metadata.resourceVersion in {list}"))?
            .to_string();
        let events = Arc::new(Mutex::new(Vec::new()));
        let listed = list
            .get("items")
            .and_then(Value::as_array)
            .and_then(|items| {
                items.iter().find(|item| {
                    item.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                })
            });
        if let Some(object) = listed {
            lock(&events).push(LeaderEvent {
                received: Instant::now(),
                kind: "LISTED".to_string(),
                record: LeaderRecord::from_object(object),
            });
        }
        // No overall timeout: the stream stays open for the whole test, even while the server
        // is frozen.
        let response = http_client(None)
            .get(&base)
            .bearer_auth(HARNESS_TOKEN)
            .query(&[
                ("labelSelector", selector),
                ("watch", "1"),
                ("resourceVersion", version.as_str()),
                ("timeoutSeconds", "3600"),
            ])
            .send()
            .await
            .with_context(|| format!("WATCH {base}"))?;
        if !response.status().is_success() {
            bail!("WATCH {base}: HTTP {}", response.status());
        }
        let name = name.to_string();
        let sink = events.clone();
        let task = tokio::spawn(async move {
            let mut stream = response.bytes_stream();
            let mut buffer: Vec<u8> = Vec::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    let object = &event["object"];
                    if object.pointer("/metadata/name").and_then(Value::as_str)
                        != Some(name.as_str())
                    {
                        continue;
                    }
                    lock(&sink).push(LeaderEvent {
                        received: Instant::now(),
                        kind: event["type"].as_str().unwrap_or("?").to_string(),
                        record: LeaderRecord::from_object(object),
                    });
                }
            }
        });
        Ok(LeaderWatch { events, task })
    }

    /// Every version seen so far, oldest first.
    pub fn events(&self) -> Vec<LeaderEvent> {
        lock(&self.events).clone()
    }
}

impl Drop for LeaderWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
