//! Citus in the HA loop (ARCHITECTURE.md, *Citus*).
//!
//! * Coordinator (group 0) leader: runs the `pg_dist_node` manager while it leads with a running
//!   primary, feeds it every cycle with each group's current primary (the DCS truth), serves the
//!   workers' `POST /citus` events, and stops it (rolling back anything in flight) the moment it
//!   is no longer the leader.
//! * Worker (group ≥ 1) leader: tells the coordinator's leader before it stops Postgres for a
//!   switchover, restart or shutdown (`before_demote`, which pauses writes to the group), before
//!   it promotes (`before_promote`) and once it runs as the primary (`after_promote`, which
//!   resumes them on the new address).
//! * Provisioning scripts run once per role after bootstrap (coordinator: once `minimum_workers`
//!   worker groups are registered).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use citus::event::{CitusEvent, EventType};
use citus::manager::{NodeManager, NodeTarget};
use dcs::{Cluster, Dcs, Member, PostgresState, Role};
use rest::OpReply;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::Agent;

/// HTTP timeout of the events that do not wait for the coordinator (Patroni: 2 s).
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);

/// The coordinator's manager, shared by the HA loop (which starts and stops it) and the REST
/// handler (which hands it the workers' events).
pub type SharedManager = Arc<Mutex<Option<NodeManager>>>;

/// What the loop keeps for a Citus member.
pub struct CitusRuntime {
    pub group: u32,
    pub database: String,
    pub manager: SharedManager,
    /// Worker: the last published state was a running primary (an `after_promote` is sent on
    /// each change to it).
    published_primary: bool,
    /// Provisioning scripts have run (or there are none) in this process.
    provisioned: bool,
    provisioning: Option<tokio::task::JoinHandle<bool>>,
    /// The (registered, with a leader) worker group counts last logged while waiting.
    provision_wait_logged: Option<(usize, usize)>,
}

impl CitusRuntime {
    pub fn new(group: u32, database: String) -> CitusRuntime {
        CitusRuntime {
            group,
            database,
            manager: Arc::new(Mutex::new(None)),
            published_primary: false,
            provisioned: false,
            provisioning: None,
            provision_wait_logged: None,
        }
    }

    pub fn is_coordinator(&self) -> bool {
        self.group == 0
    }

    fn manager(&self) -> Option<NodeManager> {
        self.manager.lock().ok().and_then(|m| m.clone())
    }
}

/// A group's current primary as the coordinator registers it: the lock holder, running as
/// primary, with a usable `conn_url`.
pub fn primary_target(group: u32, cluster: &Cluster) -> Option<NodeTarget> {
    let leader = cluster.leader_member()?;
    if !leader.data.is_running() || !matches!(leader.data.role, Role::Primary) {
        return None;
    }
    target_of(group, leader)
}

fn target_of(group: u32, member: &Member) -> Option<NodeTarget> {
    let (host, port) = member.data.conn_host_port()?;
    Some(NodeTarget { group, host, port })
}

/// `http://host:port/patroni` → `http://host:port/citus`.
fn citus_url(api_url: &str) -> String {
    let base = api_url.trim_end_matches('/');
    let base = base.strip_suffix("/patroni").unwrap_or(base);
    format!("{base}/citus")
}

impl Agent {
    /// Coordinator: start, feed or stop the manager after each cycle. Worker: send
    /// `after_promote` once the primary runs. Never blocks on the coordinator.
    pub(super) async fn citus_after_cycle(&mut self, cluster: Option<&Cluster>) {
        let Some(rt) = self.citus.as_ref() else {
            return;
        };
        let leading = self.lock_deadline.is_some()
            && self.role == Role::Primary
            && self.state == PostgresState::Running
            && self.pg.is_running();
        if rt.is_coordinator() {
            if leading {
                if let Some(cluster) = cluster {
                    self.coordinator_heartbeat(cluster);
                }
            } else {
                self.stop_node_manager("not the coordinator's leader");
            }
        } else {
            let was = rt.published_primary;
            if leading && !was {
                self.notify_coordinator_detached(EventType::AfterPromote);
            }
            if let Some(rt) = self.citus.as_mut() {
                rt.published_primary = leading;
            }
        }
        if leading {
            self.maybe_provision(cluster).await;
        }
    }

    /// A worker just promoted: `after_promote` at once (the next cycle would send it too late
    /// for clients whose writes the coordinator holds).
    pub(super) fn citus_announce_primary(&mut self) {
        let Some(rt) = self.citus.as_mut() else {
            return;
        };
        if rt.is_coordinator() || rt.published_primary {
            return;
        }
        rt.published_primary = true;
        self.notify_coordinator_detached(EventType::AfterPromote);
    }

    fn coordinator_heartbeat(&mut self, cluster: &Cluster) {
        let Some(rt) = self.citus.as_ref() else {
            return;
        };
        let manager = match rt.manager() {
            Some(m) => m,
            None => {
                let db = self.pg.local_db_config(&rt.database);
                let m = NodeManager::start(db);
                info!("coordinator leader: managing pg_dist_node");
                if let Ok(mut slot) = rt.manager.lock() {
                    *slot = Some(m.clone());
                }
                m
            }
        };
        let mut targets = Vec::new();
        if let Some(me) = cluster.member(&self.cfg.name) {
            targets.extend(target_of(0, me));
        } else if let Some(data) = &self.last_member {
            targets.extend(target_of(
                0,
                &Member::new(self.cfg.name.clone(), data.clone()),
            ));
        }
        for (group, worker) in &cluster.workers {
            targets.extend(primary_target(*group, worker));
        }
        manager.heartbeat(targets);
    }

    pub(super) fn stop_node_manager(&mut self, why: &str) {
        let Some(rt) = self.citus.as_ref() else {
            return;
        };
        let taken = rt.manager.lock().ok().and_then(|mut m| m.take());
        if let Some(m) = taken {
            info!("{why}: no longer managing pg_dist_node");
            m.stop();
        }
    }

    /// Worker leader: tell the coordinator's leader about `kind`. `before_demote` waits (up to
    /// ttl) until the coordinator has paused writes to this group; the others wait at most 2 s.
    /// Failures are logged and the operation goes on, as a worker cannot wait for a coordinator
    /// that is down.
    pub(super) async fn notify_coordinator(&mut self, kind: EventType) {
        let Some(rt) = self.citus.as_mut() else {
            return;
        };
        if rt.is_coordinator() {
            return;
        }
        if kind == EventType::BeforeDemote {
            // The next running primary (this one after a restart, or another) announces itself.
            rt.published_primary = false;
        }
        let event = self.citus_event(kind);
        let timeout = match kind {
            EventType::BeforeDemote => Duration::from_secs(u64::from(self.dynamic.ttl.max(1))),
            _ => NOTIFY_TIMEOUT,
        };
        send_event(self.dcs.clone(), self.http.clone(), event, timeout).await;
    }

    /// As [`Agent::notify_coordinator`], without waiting for the answer.
    fn notify_coordinator_detached(&self, kind: EventType) {
        let event = self.citus_event(kind);
        let dcs = self.dcs.clone();
        let http = self.http.clone();
        tokio::spawn(send_event(dcs, http, event, NOTIFY_TIMEOUT));
    }

    fn citus_event(&self, kind: EventType) -> CitusEvent {
        CitusEvent {
            kind,
            group: self.citus.as_ref().map_or(0, |rt| rt.group),
            leader: self.cfg.name.clone(),
            timeout: Duration::from_secs(u64::from(self.dynamic.ttl)),
            cooldown: Duration::from_secs(u64::from(self.dynamic.retry_timeout)),
        }
    }

    /// Provisioning scripts for this member's role, once per process after they succeeded.
    /// They run in a task; a failure is reported and retried on a later cycle.
    async fn maybe_provision(&mut self, cluster: Option<&Cluster>) {
        let minimum_workers = self.cfg.citus.as_ref().map_or(0, |c| c.minimum_workers);
        let Some(rt) = self.citus.as_mut() else {
            return;
        };
        if rt.provisioned {
            return;
        }
        if let Some(task) = &rt.provisioning {
            if !task.is_finished() {
                return;
            }
            let task = rt.provisioning.take();
            if let Some(task) = task {
                if task.await.unwrap_or(false) {
                    rt.provisioned = true;
                    return;
                }
            }
        }
        let (role, scripts) = {
            let Some(c) = self.cfg.citus.as_ref() else {
                return;
            };
            if rt.group == 0 {
                (
                    citus::provision::Role::Coordinator,
                    c.provision.coordinator.clone(),
                )
            } else {
                (citus::provision::Role::Worker, c.provision.worker.clone())
            }
        };
        if scripts.is_empty() {
            rt.provisioned = true;
            return;
        }
        if rt.group == 0 {
            // Worker groups must be registered first: scripts typically distribute tables.
            let registered = rt.manager().map_or(0, |m| {
                m.nodes()
                    .iter()
                    .filter(|n| n.groupid > 0 && n.noderole == "primary")
                    .map(|n| n.groupid)
                    .collect::<std::collections::BTreeSet<i32>>()
                    .len()
            });
            let with_leader = cluster.map_or(0, |c| {
                c.workers.values().filter(|w| w.leader.is_some()).count()
            });
            if registered.min(with_leader) < minimum_workers as usize {
                let seen = Some((registered, with_leader));
                if rt.provision_wait_logged != seen {
                    info!(
                        registered,
                        with_leader,
                        minimum_workers,
                        "provisioning waits for minimum_workers worker groups"
                    );
                    rt.provision_wait_logged = seen;
                }
                return;
            }
        }
        let db = self.pg.local_db_config(&rt.database);
        rt.provisioning = Some(tokio::spawn(async move {
            let (mut client, connection) = match db.connect(tokio_postgres::NoTls).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "provisioning: cannot connect");
                    return false;
                }
            };
            tokio::spawn(connection);
            match citus::provision::run_pending(&mut client, role, &scripts).await {
                Ok(ran) => {
                    for r in &ran {
                        info!("provisioning: ran {r:?}");
                    }
                    true
                }
                Err(e) => {
                    warn!(error = %e, "provisioning failed (will retry)");
                    false
                }
            }
        }));
    }
}

async fn send_event(
    dcs: Arc<dyn Dcs>,
    http: reqwest::Client,
    event: CitusEvent,
    timeout: Duration,
) {
    let coordinator = match dcs.get_group(0).await {
        Ok(c) => c,
        Err(e) => {
            warn!(event = ?event.kind, error = %e, "cannot read the coordinator group from the DCS");
            return;
        }
    };
    let Some(url) = coordinator
        .leader_member()
        .and_then(|m| m.data.api_url.as_deref())
        .map(citus_url)
    else {
        warn!(event = ?event.kind, "the coordinator group has no leader with an api_url: not notified");
        return;
    };
    let started = std::time::Instant::now();
    match http
        .post(&url)
        .timeout(timeout)
        .json(&event.to_json())
        .send()
        .await
    {
        Ok(resp) if resp.status().is_success() => {
            info!(event = ?event.kind, elapsed_ms = started.elapsed().as_millis() as u64, "coordinator notified");
        }
        Ok(resp) => {
            let code = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            warn!(event = ?event.kind, code, "coordinator refused the event: {}", text.trim());
        }
        Err(e) => warn!(event = ?event.kind, error = %e, "cannot notify the coordinator at {url}"),
    }
}

/// `POST /citus` on a coordinator member.
pub struct CoordinatorEvents {
    pub manager: SharedManager,
    pub dcs: Arc<dyn Dcs>,
}

impl std::fmt::Debug for CoordinatorEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorEvents").finish_non_exhaustive()
    }
}

impl rest::CitusHandler for CoordinatorEvents {
    fn handle(
        &self,
        body: Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = OpReply> + Send + '_>> {
        Box::pin(self.handle_event(body))
    }
}

impl CoordinatorEvents {
    async fn handle_event(&self, body: Value) -> OpReply {
        let event = match citus::event::parse_event(&body) {
            Ok(e) => e,
            Err(reason) => return OpReply::error(400, reason.to_string()),
        };
        let manager = self.manager.lock().ok().and_then(|m| m.clone());
        let Some(manager) = manager else {
            // Not the coordinator's leader (or a worker): accepted and ignored, as Patroni.
            debug!(event = ?event.kind, group = event.group, "citus event ignored: not the coordinator's leader");
            return OpReply::text(200, "OK");
        };
        if event.group == 0 {
            return OpReply::text(200, "OK");
        }
        // The sender must be its group's leader right now; its address comes from the DCS.
        let group = match self.dcs.get_group(event.group).await {
            Ok(c) => c,
            Err(e) => {
                return OpReply::error(503, format!("cannot read group {}: {e}", event.group))
            }
        };
        let Some(leader) = group.leader_member().filter(|m| m.name == event.leader) else {
            info!(
                event = ?event.kind,
                group = event.group,
                sender = %event.leader,
                leader = ?group.leader_name(),
                "citus event ignored: the sender is not its group's leader"
            );
            return OpReply::text(200, "OK");
        };
        let Some(target) = target_of(event.group, leader) else {
            return OpReply::text(200, "OK");
        };
        let kind = event.kind;
        if kind == EventType::AfterPromote {
            // The sender need not wait for the commit. before_demote (writes must be held before
            // Postgres stops) and before_promote (it must be applied before this after_promote,
            // or it would open a new hold) are answered once applied.
            tokio::spawn(async move {
                if let Err(e) = manager.rest_event(event, target).await {
                    warn!(event = ?kind, error = %e, "citus event not applied");
                }
            });
            return OpReply::text(200, "OK");
        }
        match manager.rest_event(event, target).await {
            Ok(()) => OpReply::text(200, "OK"),
            Err(e) => {
                warn!(event = ?kind, error = %e, "citus event not applied");
                OpReply::error(503, format!("not applied: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citus_url_replaces_the_status_path() {
        assert_eq!(
            citus_url("http://10.0.0.5:8008/patroni"),
            "http://10.0.0.5:8008/citus"
        );
        assert_eq!(citus_url("https://h:8008/patroni/"), "https://h:8008/citus");
        assert_eq!(citus_url("http://h:8008"), "http://h:8008/citus");
    }
}
