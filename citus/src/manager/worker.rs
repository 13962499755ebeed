//! The manager's task: the queue, the cache of primary rows, the in-flight switchover
//! transaction, and the statements that change `pg_dist_node`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::db::{cancel_running, Db, DbError, PgLimits};
use super::queue::{Origin, Pushed, Queue, Task};
use super::{cooldown_ms, DistNode, ManagerError, Message, NodeTarget};
use crate::event::EventType;

/// Appended to a group's host by `before_demote`: unresolvable, so Citus holds the writes.
pub(crate) const DEMOTED_SUFFIX: &str = "-demoted";

/// Limits and retry settings of the manager.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// `lock_cooldown` of heartbeat changes (REST events bring their own): how long sessions
    /// blocking the change get before Citus terminates them. Patroni: 10 s.
    pub heartbeat_cooldown: Duration,
    /// Tries of a statement failing with a retryable error (deadlock victim, metadata out of
    /// sync), the first included.
    pub retry_attempts: u32,
    /// Pause before the second try; doubled each time up to `retry_max_delay`.
    pub retry_first_delay: Duration,
    pub retry_max_delay: Duration,
    /// How long an add waits for the metadata workers to be synced before trying anyway.
    pub sync_wait: Duration,
    /// The connection's `statement_timeout` (forced updates get `lock_cooldown` + `update_margin`).
    pub statement_timeout: Duration,
    /// The connection's `idle_in_transaction_session_timeout` outside a switchover.
    pub idle_in_transaction: Duration,
    /// A switchover transaction's server-side idle limit is its deadline plus this: the server
    /// rolls back even if the agent hangs.
    pub idle_margin: Duration,
    pub update_margin: Duration,
    /// How long a worker group in pg_dist_node may lack a heartbeat target (no running primary
    /// in the DCS) before it is reported; reported once per absence, never dropped.
    pub missing_grace: Duration,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            heartbeat_cooldown: Duration::from_secs(10),
            retry_attempts: 6,
            retry_first_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(2),
            sync_wait: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction: Duration::from_secs(60),
            idle_margin: Duration::from_secs(5),
            update_margin: Duration::from_secs(10),
            missing_grace: Duration::from_secs(30),
        }
    }
}

impl ManagerOptions {
    pub(crate) fn pg_limits(&self) -> PgLimits {
        PgLimits {
            statement_timeout: self.statement_timeout,
            idle_in_transaction: self.idle_in_transaction,
            update_margin: self.update_margin,
        }
    }
}

/// The open switchover transaction of one group.
#[derive(Debug)]
struct InFlight {
    group: u32,
    nodeid: i32,
    /// The committed row when the transaction began (for the log).
    before: DistNode,
    /// Where the row points inside the transaction.
    host: String,
    port: u16,
    deadline: Instant,
}

/// A worker group in pg_dist_node that the heartbeats do not name.
#[derive(Debug)]
struct MissingGroup {
    since: Instant,
    reported: bool,
}

/// One change of a primary row.
enum Change<'a> {
    Update {
        nodeid: i32,
        host: &'a str,
        port: u16,
        cooldown_ms: i32,
    },
    Add {
        host: &'a str,
        port: u16,
        group: u32,
    },
    SetCoordinator {
        host: &'a str,
        port: u16,
    },
}

impl Change<'_> {
    fn name(&self) -> &'static str {
        match self {
            Change::Update { .. } => "citus_update_node",
            Change::Add { .. } => "citus_add_node",
            Change::SetCoordinator { .. } => "citus_set_coordinator_host",
        }
    }
}

pub(crate) struct Worker<D> {
    db: D,
    options: ManagerOptions,
    queue: Queue,
    /// Committed primary rows by group; None: read again before the next change.
    cache: Option<BTreeMap<u32, DistNode>>,
    in_flight: Option<InFlight>,
    /// `citus_is_coordinator()` was true on the current connection.
    coordinator: bool,
    /// Groups in pg_dist_node without a heartbeat target: since when, and whether reported.
    missing_since: BTreeMap<u32, MissingGroup>,
    /// The last reason tasks could not run, to log it once.
    last_failure: Option<String>,
    shared_nodes: Arc<Mutex<Vec<DistNode>>>,
}

fn node_text(host: &str, port: impl std::fmt::Display) -> String {
    format!("{host}:{port}")
}

impl<D: Db> Worker<D> {
    pub fn new(db: D, options: ManagerOptions, shared_nodes: Arc<Mutex<Vec<DistNode>>>) -> Self {
        Worker {
            db,
            options,
            queue: Queue::default(),
            cache: None,
            in_flight: None,
            coordinator: false,
            missing_since: BTreeMap::new(),
            last_failure: None,
            shared_nodes,
        }
    }

    pub async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Message>, stop_now: Arc<Notify>) {
        let canceller = self.db.canceller();
        loop {
            let deadline = self.in_flight.as_ref().map(|f| f.deadline);
            let work = self.queue.has_pickable(self.in_flight_group());
            tokio::select! {
                biased;
                message = inbox.recv() => match message {
                    Some(message) => self.on_message(message).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() => self.expire().await,
                _ = std::future::ready(()), if work => {
                    let interrupted = tokio::select! {
                        _ = self.step() => false,
                        _ = stop_now.notified() => true,
                    };
                    if interrupted {
                        // The Stop message that follows resets the state; the running
                        // statement must not finish on its own (an autocommit update would).
                        cancel_running(&canceller).await;
                        self.db.disconnect();
                    }
                }
            }
        }
        // Every handle is gone: closing the connection rolls back anything in flight.
        self.db.disconnect();
    }

    fn in_flight_group(&self) -> Option<u32> {
        self.in_flight.as_ref().map(|f| f.group)
    }

    async fn on_message(&mut self, message: Message) {
        match message {
            Message::Heartbeat(targets) => self.on_heartbeat(targets),
            Message::Rest {
                event,
                target,
                reply,
            } => {
                let task = Task {
                    target,
                    cooldown_ms: event.cooldown_ms(),
                    origin: Origin::Rest {
                        kind: event.kind,
                        timeout: event.timeout,
                        reply: Some(reply),
                    },
                };
                if let Pushed::Replaced(mut older) = self.queue.push(task) {
                    let group = older.target.group;
                    older.reply(Err(ManagerError::Superseded(group)));
                }
            }
            Message::Stop => self.reset().await,
        }
    }

    fn on_heartbeat(&mut self, targets: Vec<NodeTarget>) {
        let mut groups = BTreeSet::new();
        for target in targets {
            if let Err(reason) = target.validate() {
                warn!(%reason, "citus: heartbeat target ignored");
                continue;
            }
            groups.insert(target.group);
            // Queued even when equal to the cache: it replaces an older, different target of
            // the group, and is discarded when picked.
            let pushed = self.queue.push(Task {
                target,
                cooldown_ms: cooldown_ms(self.options.heartbeat_cooldown),
                origin: Origin::Heartbeat,
            });
            if let Pushed::Dropped(task) = pushed {
                debug!(
                    group = task.target.group,
                    "citus: heartbeat ignored, a POST /citus event of the group is queued"
                );
            }
        }
        let Some(cache) = &self.cache else { return };
        let cached: Vec<u32> = cache.keys().copied().filter(|g| *g >= 1).collect();
        let report = groups_to_report(
            &mut self.missing_since,
            &cached,
            &groups,
            Instant::now(),
            self.options.missing_grace,
        );
        for group in report {
            if let Some(row) = cache.get(&group) {
                warn!(
                    group,
                    nodeid = row.nodeid,
                    node = %node_text(&row.nodename, row.nodeport),
                    "citus: worker group is in pg_dist_node but has had no running primary in the DCS for a while; its node is left as is"
                );
            }
        }
    }

    /// Stop: roll back anything in flight, forget the queue, the cache and the connection.
    async fn reset(&mut self) {
        if let Some(f) = self.in_flight.take() {
            info!(
                group = f.group,
                "citus: stopping; rolling back the switchover transaction"
            );
            if self.db.rollback().await.is_err() {
                debug!("citus: rollback failed; the connection is closed instead");
            }
        }
        self.db.disconnect();
        for mut task in self.queue.drain() {
            task.reply(Err(ManagerError::Stopped));
        }
        self.cache = None;
        self.coordinator = false;
        self.missing_since.clear();
        self.last_failure = None;
    }

    /// The deadline of the switchover transaction passed: roll back (writes resume at the
    /// committed address); the next heartbeat applies the DCS state.
    async fn expire(&mut self) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        warn!(
            group = f.group,
            node = %node_text(&f.host, f.port),
            "citus: the switchover transaction reached its deadline without after_promote; rolled back"
        );
        if let Err(e) = self.db.rollback().await {
            debug!(error = %e, "citus: rollback failed; closing the connection instead");
            self.db.disconnect();
        }
        self.cache = None;
    }

    async fn step(&mut self) {
        if let Err(error) = self.prepare().await {
            let text = error.to_string();
            if self.last_failure.as_deref() != Some(text.as_str()) {
                warn!(error = %text, "citus: pg_dist_node changes cannot run");
                self.last_failure = Some(text);
            }
            // Heartbeats come again next cycle; REST callers get the reason now.
            self.queue.drain_heartbeats();
            for mut task in self.queue.drain() {
                task.reply(Err(error.clone()));
            }
            return;
        }
        self.last_failure = None;
        let mut discarded = Vec::new();
        let cache = &self.cache;
        let picked = self.queue.take(
            self.in_flight.as_ref().map(|f| f.group),
            |t| cached_row(cache, t.target.group).is_some_and(|row| row.matches(&t.target)),
            &mut discarded,
        );
        let Some(mut task) = picked else { return };
        let result = match &task.origin {
            Origin::Heartbeat => self.apply_committed(&task.target, task.cooldown_ms).await,
            Origin::Rest { kind, timeout, .. } => {
                let (kind, timeout) = (*kind, *timeout);
                self.apply_rest(kind, timeout, &task.target, task.cooldown_ms)
                    .await
            }
        };
        if let Err(e) = &result {
            warn!(group = task.target.group, error = %e, "citus: pg_dist_node change failed");
        }
        task.reply(result);
    }

    /// Connected, on the coordinator, with the cache loaded.
    async fn prepare(&mut self) -> Result<(), ManagerError> {
        if !self.db.is_connected() {
            if let Some(f) = self.in_flight.take() {
                warn!(
                    group = f.group,
                    "citus: the connection holding the switchover transaction is gone; the server rolled it back"
                );
            }
            self.cache = None;
            self.coordinator = false;
            self.db
                .connect()
                .await
                .map_err(|e| ManagerError::Unavailable(e.to_string()))?;
        }
        if !self.coordinator {
            match self.db.is_coordinator().await {
                Ok(true) => self.coordinator = true,
                Ok(false) => return Err(ManagerError::NotCoordinator),
                // 42883: no citus_is_coordinator(), the extension is not there.
                Err(e) if e.sqlstate.as_deref() == Some("42883") => {
                    return Err(ManagerError::NotCoordinator)
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        if self.cache.is_none() {
            self.reload().await?;
        }
        Ok(())
    }

    fn publish(&self, nodes: &[DistNode]) {
        match self.shared_nodes.lock() {
            Ok(mut shared) => *shared = nodes.to_vec(),
            Err(poisoned) => *poisoned.into_inner() = nodes.to_vec(),
        }
    }

    /// Read pg_dist_node (committed: only outside a transaction) into the cache.
    async fn reload(&mut self) -> Result<(), ManagerError> {
        let nodes = match self.db.read_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => return Err(self.fail(e)),
        };
        self.publish(&nodes);
        let mut cache = BTreeMap::new();
        for node in nodes.into_iter().filter(|n| n.noderole == "primary") {
            if let Ok(group) = u32::try_from(node.groupid) {
                cache.entry(group).or_insert(node);
            }
        }
        self.cache = Some(cache);
        Ok(())
    }

    /// After a failed statement: close the connection (rolling back anything open), forget the
    /// in-flight state, and read everything again before the next change.
    fn fail(&mut self, e: DbError) -> ManagerError {
        if let Some(f) = self.in_flight.take() {
            warn!(group = f.group, error = %e, "citus: switchover transaction abandoned (rolled back)");
        }
        self.db.disconnect();
        self.cache = None;
        self.coordinator = false;
        if e.is_not_coordinator() {
            ManagerError::NotCoordinator
        } else if e.sqlstate.is_none() {
            ManagerError::Unavailable(e.to_string())
        } else {
            ManagerError::Postgres(e.to_string())
        }
    }

    /// Refuse a target that is already another group's primary (Citus would refuse too, with a
    /// less telling error, or ignore the group on add).
    fn check_clash(&self, target: &NodeTarget) -> Result<(), ManagerError> {
        let clash = self
            .cache
            .iter()
            .flat_map(|c| c.iter())
            .find(|(group, row)| **group != target.group && row.matches(target));
        match clash {
            Some((group, row)) => Err(ManagerError::Refused(format!(
                "group {}: {} is already node {} of group {group}",
                target.group,
                node_text(&target.host, target.port),
                row.nodeid
            ))),
            None => Ok(()),
        }
    }

    /// Run one change, again after a retryable error (bounded, with backoff). Inside a
    /// transaction each try runs under a savepoint, so a deadlock does not lose what the
    /// transaction already holds.
    async fn run_change(
        &mut self,
        change: &Change<'_>,
        in_transaction: bool,
    ) -> Result<(), DbError> {
        let mut delay = self.options.retry_first_delay;
        let attempts = self.options.retry_attempts.max(1);
        let mut attempt = 1;
        loop {
            if in_transaction {
                self.db.savepoint().await?;
            }
            let result = match *change {
                Change::Update {
                    nodeid,
                    host,
                    port,
                    cooldown_ms,
                } => self.db.update_node(nodeid, host, port, cooldown_ms).await,
                Change::Add { host, port, group } => {
                    self.db.add_node(host, port, group).await.map(|_| ())
                }
                Change::SetCoordinator { host, port } => {
                    self.db.set_coordinator_host(host, port).await
                }
            };
            match result {
                Err(e) if e.is_retryable() && attempt < attempts => {
                    if in_transaction {
                        self.db.rollback_to_savepoint().await?;
                    }
                    warn!(attempt, error = %e, "citus: {} will be tried again", change.name());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.options.retry_max_delay);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Before an add: Citus refuses it while a metadata worker is out of sync, so wait (bounded)
    /// for the sync; the add's own retries cover the rest.
    async fn wait_metadata_synced(&mut self) {
        let give_up = Instant::now() + self.options.sync_wait;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.db.unsynced_metadata_nodes().await {
                Ok(0) => return,
                Ok(n) if Instant::now() < give_up => {
                    debug!(
                        unsynced = n,
                        "citus: waiting for the metadata sync before an add"
                    )
                }
                Ok(n) => {
                    debug!(
                        unsynced = n,
                        "citus: metadata still unsynced; adding anyway"
                    );
                    return;
                }
                Err(e) => {
                    debug!(error = %e, "citus: metadata sync state unknown");
                    return;
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// An autocommit change (heartbeat, or an event without a switchover transaction), then
    /// confirmed by reading pg_dist_node again.
    async fn apply_committed(
        &mut self,
        target: &NodeTarget,
        cooldown: i32,
    ) -> Result<(), ManagerError> {
        let before = cached_row(&self.cache, target.group).cloned();
        if before.as_ref().is_some_and(|row| row.matches(target)) {
            return Ok(());
        }
        self.check_clash(target)?;
        let result = match &before {
            Some(row) => {
                let change = Change::Update {
                    nodeid: row.nodeid,
                    host: &target.host,
                    port: target.port,
                    cooldown_ms: cooldown,
                };
                self.run_change(&change, false).await
            }
            None => {
                self.wait_metadata_synced().await;
                let change = if target.group == 0 {
                    Change::SetCoordinator {
                        host: &target.host,
                        port: target.port,
                    }
                } else {
                    Change::Add {
                        host: &target.host,
                        port: target.port,
                        group: target.group,
                    }
                };
                self.run_change(&change, false).await
            }
        };
        if let Err(e) = result {
            return Err(self.fail(e));
        }
        self.reload().await?;
        self.confirm(target, before.as_ref())
    }

    /// The committed row of the target's group now matches it: log the change once.
    fn confirm(
        &mut self,
        target: &NodeTarget,
        before: Option<&DistNode>,
    ) -> Result<(), ManagerError> {
        let before_text =
            before.map_or("(none)".to_string(), |r| node_text(&r.nodename, r.nodeport));
        match cached_row(&self.cache, target.group) {
            Some(row) if row.matches(target) => {
                info!(
                    group = target.group,
                    nodeid = row.nodeid,
                    before = %before_text,
                    after = %node_text(&row.nodename, row.nodeport),
                    "citus: pg_dist_node primary changed"
                );
                Ok(())
            }
            other => {
                let found = other.map_or("no primary row".to_string(), |r| {
                    format!(
                        "node {} at {}",
                        r.nodeid,
                        node_text(&r.nodename, r.nodeport)
                    )
                });
                self.cache = None;
                Err(ManagerError::Unconfirmed(format!(
                    "group {}: expected {}, found {found}",
                    target.group,
                    node_text(&target.host, target.port)
                )))
            }
        }
    }

    async fn apply_rest(
        &mut self,
        kind: EventType,
        timeout: Duration,
        target: &NodeTarget,
        cooldown: i32,
    ) -> Result<(), ManagerError> {
        let in_flight = self.in_flight_group() == Some(target.group);
        let known = cached_row(&self.cache, target.group).is_some();
        match kind {
            EventType::BeforeDemote if !in_flight && !known => {
                info!(
                    group = target.group,
                    "citus: before_demote for a group without a primary in pg_dist_node; nothing to pause"
                );
                Ok(())
            }
            EventType::BeforeDemote => {
                let demoted = format!("{}{DEMOTED_SUFFIX}", target.host);
                self.hold(kind, target.group, &demoted, target.port, timeout, cooldown)
                    .await
            }
            EventType::BeforePromote if in_flight || known => {
                self.check_clash(target)?;
                self.hold(
                    kind,
                    target.group,
                    &target.host,
                    target.port,
                    timeout,
                    cooldown,
                )
                .await
            }
            EventType::AfterPromote if in_flight => {
                self.check_clash(target)?;
                self.finish(target, cooldown).await
            }
            EventType::BeforePromote | EventType::AfterPromote => {
                self.apply_committed(target, cooldown).await
            }
        }
    }

    /// Point the group's node at host:port inside the switchover transaction (opened here if
    /// none), confirmed by reading the row inside the transaction.
    async fn hold(
        &mut self,
        kind: EventType,
        group: u32,
        host: &str,
        port: u16,
        timeout: Duration,
        cooldown: i32,
    ) -> Result<(), ManagerError> {
        let idle_limit = timeout + self.options.idle_margin;
        let deadline = Instant::now() + timeout;
        if self.in_flight.is_some() {
            if let Err(e) = self.db.set_idle_limit(idle_limit).await {
                return Err(self.fail(e));
            }
        } else {
            let Some(row) = cached_row(&self.cache, group).cloned() else {
                return Err(ManagerError::Refused(format!(
                    "group {group} has no primary in pg_dist_node"
                )));
            };
            if let Err(e) = self.db.begin(idle_limit).await {
                return Err(self.fail(e));
            }
            self.in_flight = Some(InFlight {
                group,
                nodeid: row.nodeid,
                host: row.nodename.clone(),
                port: u16::try_from(row.nodeport).unwrap_or(0),
                before: row,
                deadline,
            });
        }
        self.update_in_transaction(host, port, cooldown).await?;
        if let Some(f) = &mut self.in_flight {
            f.deadline = deadline;
            info!(
                group,
                event = %kind,
                nodeid = f.nodeid,
                before = %node_text(&f.before.nodename, f.before.nodeport),
                after = %node_text(host, port),
                "citus: pg_dist_node changed inside the switchover transaction; writes routed to the group wait for its commit"
            );
        }
        Ok(())
    }

    /// The in-flight row → host:port (if different), confirmed inside the transaction.
    async fn update_in_transaction(
        &mut self,
        host: &str,
        port: u16,
        cooldown: i32,
    ) -> Result<(), ManagerError> {
        let Some(f) = &self.in_flight else {
            return Err(ManagerError::Refused("no switchover transaction".into()));
        };
        if f.host == host && f.port == port {
            return Ok(());
        }
        let nodeid = f.nodeid;
        let change = Change::Update {
            nodeid,
            host,
            port,
            cooldown_ms: cooldown,
        };
        if let Err(e) = self.run_change(&change, true).await {
            return Err(self.fail(e));
        }
        let nodes = match self.db.read_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => return Err(self.fail(e)),
        };
        self.publish(&nodes);
        let seen = nodes.iter().find(|n| n.nodeid == nodeid);
        if !seen.is_some_and(|n| n.nodename == host && n.nodeport == i32::from(port)) {
            let found = seen.map_or("no row".to_string(), |n| node_text(&n.nodename, n.nodeport));
            let error = ManagerError::Unconfirmed(format!(
                "node {nodeid}: expected {} inside the transaction, found {found}",
                node_text(host, port)
            ));
            self.fail(DbError::new(None, error.to_string()));
            return Err(error);
        }
        if let Some(f) = &mut self.in_flight {
            f.host = host.to_string();
            f.port = port;
        }
        Ok(())
    }

    /// after_promote of the in-flight group: point at the new primary if needed, COMMIT, and
    /// confirm the committed row.
    async fn finish(&mut self, target: &NodeTarget, cooldown: i32) -> Result<(), ManagerError> {
        self.update_in_transaction(&target.host, target.port, cooldown)
            .await?;
        let Some(f) = self.in_flight.take() else {
            return Err(ManagerError::Refused("no switchover transaction".into()));
        };
        // Never commit a name nobody can resolve (update_in_transaction just set the target,
        // which validate() keeps free of the suffix; this guards the invariant).
        if f.host.ends_with(DEMOTED_SUFFIX) {
            self.in_flight = Some(f);
            return Err(self.fail(DbError::new(
                None,
                "refusing to commit a -demoted node name",
            )));
        }
        if let Err(e) = self.db.commit().await {
            self.in_flight = Some(f);
            return Err(self.fail(e));
        }
        self.reload().await?;
        self.confirm(target, Some(&f.before))
    }
}

/// Track the worker groups of pg_dist_node (`cached`) that the heartbeat does not name
/// (`targeted`), and return those missing for `grace` and not reported yet in this absence. A
/// switchover or failover leaves a group without a running primary for a moment: only a longer
/// absence is worth a warning.
fn groups_to_report(
    missing_since: &mut BTreeMap<u32, MissingGroup>,
    cached: &[u32],
    targeted: &BTreeSet<u32>,
    now: Instant,
    grace: Duration,
) -> Vec<u32> {
    missing_since.retain(|group, _| !targeted.contains(group) && cached.contains(group));
    let mut report = Vec::new();
    for group in cached.iter().filter(|g| !targeted.contains(g)) {
        let missing = missing_since.entry(*group).or_insert(MissingGroup {
            since: now,
            reported: false,
        });
        if !missing.reported && now.duration_since(missing.since) >= grace {
            missing.reported = true;
            report.push(*group);
        }
    }
    report
}

fn cached_row(cache: &Option<BTreeMap<u32, DistNode>>, group: u32) -> Option<&DistNode> {
    cache.as_ref().and_then(|c| c.get(&group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_groups_are_reported_once_after_the_grace() {
        let grace = Duration::from_secs(30);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut missing = BTreeMap::new();
        let cached = [1, 2];
        let targeted = |groups: &[u32]| groups.iter().copied().collect::<BTreeSet<u32>>();
        // (time, targeted groups, expected report)
        let steps: [(u64, &[u32], &[u32]); 7] = [
            (0, &[1, 2], &[]),
            (10, &[1], &[]),    // group 2 missing since 10 s
            (30, &[1], &[]),    // 20 s: within the grace
            (40, &[1], &[2]),   // 30 s: reported
            (50, &[1], &[]),    // once
            (60, &[1, 2], &[]), // back: forgotten
            (70, &[], &[]),     // both missing again: a new absence
        ];
        for (secs, groups, expected) in steps {
            let got = groups_to_report(&mut missing, &cached, &targeted(groups), at(secs), grace);
            assert_eq!(got, expected, "at {secs} s");
        }
        assert_eq!(
            groups_to_report(&mut missing, &cached, &targeted(&[]), at(100), grace),
            vec![1, 2]
        );
        // A group gone from pg_dist_node is forgotten.
        groups_to_report(&mut missing, &[1], &targeted(&[]), at(101), grace);
        assert!(!missing.contains_key(&2));
    }
}
