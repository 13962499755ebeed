//! The manager's state machine against an in-memory `pg_dist_node` (no server): what runs,
//! in which order, inside or outside the switchover transaction.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::db::{Canceller, Db, DbError};
use super::*;
use crate::event::EventType;

#[derive(Default)]
struct State {
    committed: Vec<DistNode>,
    /// The open transaction's view, and the one at its savepoint.
    tx: Option<Vec<DistNode>>,
    savepoint: Option<Vec<DistNode>>,
    coordinator: bool,
    connected: bool,
    /// The next calls of these statements fail.
    failures: VecDeque<(&'static str, DbError)>,
    /// What ran, e.g. "update 2 h-demoted:5432", "begin", "commit".
    log: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeDb(Arc<Mutex<State>>);

fn node(nodeid: i32, group: i32, host: &str) -> DistNode {
    DistNode {
        nodeid,
        groupid: group,
        nodename: host.into(),
        nodeport: 5432,
        noderole: "primary".into(),
        isactive: true,
        hasmetadata: group > 0,
        metadatasynced: Some(true),
    }
}

impl FakeDb {
    fn with_nodes(nodes: Vec<DistNode>) -> FakeDb {
        let db = FakeDb::default();
        {
            let mut s = db.state();
            s.committed = nodes;
            s.coordinator = true;
        }
        db
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("fake state")
    }

    fn log(&self) -> Vec<String> {
        self.state().log.clone()
    }

    fn committed_host(&self, group: i32) -> Option<String> {
        self.state()
            .committed
            .iter()
            .find(|n| n.groupid == group)
            .map(|n| n.nodename.clone())
    }

    fn fail_next(&self, statement: &'static str, sqlstate: &str, message: &str) {
        self.state()
            .failures
            .push_back((statement, DbError::new(Some(sqlstate), message)));
    }

    /// Record `entry`; fail if the next injected failure is for `statement`.
    fn run(&self, statement: &'static str, entry: String) -> Result<(), DbError> {
        let mut s = self.state();
        if !s.connected {
            return Err(DbError::new(None, "not connected"));
        }
        s.log.push(entry);
        if s.failures
            .front()
            .is_some_and(|(name, _)| *name == statement)
        {
            let (_, error) = s.failures.pop_front().expect("front exists");
            return Err(error);
        }
        Ok(())
    }

    /// The view statements act on: the transaction's, else the committed rows.
    fn with_view<T>(&self, f: impl FnOnce(&mut Vec<DistNode>) -> T) -> T {
        let mut s = self.state();
        let s = &mut *s;
        match &mut s.tx {
            Some(tx) => f(tx),
            None => f(&mut s.committed),
        }
    }
}

impl Db for FakeDb {
    async fn connect(&mut self) -> Result<(), DbError> {
        self.state().connected = true;
        Ok(())
    }

    fn disconnect(&mut self) {
        let mut s = self.state();
        if s.connected {
            s.log.push("disconnect".into());
        }
        s.connected = false;
        s.tx = None;
        s.savepoint = None;
    }

    fn is_connected(&self) -> bool {
        self.state().connected
    }

    fn canceller(&self) -> Canceller {
        Arc::default()
    }

    async fn is_coordinator(&mut self) -> Result<bool, DbError> {
        self.run("is_coordinator", "is_coordinator".into())?;
        Ok(self.state().coordinator)
    }

    async fn read_nodes(&mut self) -> Result<Vec<DistNode>, DbError> {
        self.run("read", "read".into())?;
        Ok(self.with_view(|v| v.clone()))
    }

    async fn unsynced_metadata_nodes(&mut self) -> Result<i64, DbError> {
        Ok(0)
    }

    async fn begin(&mut self, idle_limit: Duration) -> Result<(), DbError> {
        self.run("begin", format!("begin idle={}ms", idle_limit.as_millis()))?;
        let mut s = self.state();
        s.tx = Some(s.committed.clone());
        Ok(())
    }

    async fn set_idle_limit(&mut self, idle_limit: Duration) -> Result<(), DbError> {
        self.run("idle", format!("idle={}ms", idle_limit.as_millis()))
    }

    async fn savepoint(&mut self) -> Result<(), DbError> {
        let mut s = self.state();
        s.savepoint = s.tx.clone();
        Ok(())
    }

    async fn rollback_to_savepoint(&mut self) -> Result<(), DbError> {
        self.run("rollback_to_savepoint", "rollback to savepoint".into())?;
        let mut s = self.state();
        s.tx = s.savepoint.clone();
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), DbError> {
        self.run("commit", "commit".into())?;
        let mut s = self.state();
        if let Some(tx) = s.tx.take() {
            s.committed = tx;
        }
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), DbError> {
        self.run("rollback", "rollback".into())?;
        self.state().tx = None;
        Ok(())
    }

    async fn update_node(
        &mut self,
        nodeid: i32,
        host: &str,
        port: u16,
        cooldown_ms: i32,
    ) -> Result<(), DbError> {
        self.run(
            "update",
            format!("update {nodeid} {host}:{port} cooldown={cooldown_ms}"),
        )?;
        self.with_view(|v| {
            if let Some(n) = v.iter_mut().find(|n| n.nodeid == nodeid) {
                n.nodename = host.into();
                n.nodeport = i32::from(port);
            }
        });
        Ok(())
    }

    async fn add_node(&mut self, host: &str, port: u16, group: u32) -> Result<i32, DbError> {
        self.run("add", format!("add {host}:{port} group {group}"))?;
        Ok(self.with_view(|v| {
            let id = v.iter().map(|n| n.nodeid).max().unwrap_or(0) + 1;
            let mut n = node(id, group as i32, host);
            n.nodeport = i32::from(port);
            v.push(n);
            id
        }))
    }

    async fn set_coordinator_host(&mut self, host: &str, port: u16) -> Result<(), DbError> {
        self.run("set_coordinator", format!("set_coordinator {host}:{port}"))?;
        self.with_view(|v| {
            let id = v.iter().map(|n| n.nodeid).max().unwrap_or(0) + 1;
            let mut n = node(id, 0, host);
            n.nodeport = i32::from(port);
            v.push(n);
        });
        Ok(())
    }
}

fn fast_options() -> ManagerOptions {
    ManagerOptions {
        retry_attempts: 3,
        retry_first_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(2),
        sync_wait: Duration::from_millis(10),
        ..ManagerOptions::default()
    }
}

fn target(group: u32, host: &str) -> NodeTarget {
    NodeTarget {
        group,
        host: host.into(),
        port: 5432,
    }
}

fn event(kind: EventType, group: u32, timeout: Duration) -> CitusEvent {
    CitusEvent {
        kind,
        group,
        leader: "w".into(),
        timeout,
        cooldown: Duration::from_secs(3),
    }
}

/// Three groups registered: coordinator "c" (id 1), workers "a" (id 2, group 1) and "b" (id 3,
/// group 2).
fn registered() -> FakeDb {
    FakeDb::with_nodes(vec![node(1, 0, "c"), node(2, 1, "a"), node(3, 2, "b")])
}

/// The log lines that change something or end a transaction.
fn changes(db: &FakeDb) -> Vec<String> {
    db.log()
        .into_iter()
        .filter(|l| {
            l.starts_with("update")
                || l.starts_with("add")
                || l.starts_with("set_coordinator")
                || l.starts_with("begin")
                || l == "commit"
                || l == "rollback"
        })
        .collect()
}

async fn rest(
    manager: &NodeManager,
    kind: EventType,
    group: u32,
    host: &str,
) -> Result<(), ManagerError> {
    manager
        .rest_event(
            event(kind, group, Duration::from_secs(30)),
            target(group, host),
        )
        .await
}

/// Poll `request` once, which sends it, and check it is not answered yet.
async fn send_now<F: std::future::Future + Unpin>(request: &mut F) {
    tokio::select! {
        biased;
        _ = request => panic!("answered while it should wait"),
        _ = std::future::ready(()) => {}
    }
}

#[tokio::test]
async fn heartbeat_equal_to_pg_dist_node_runs_nothing_and_adds_what_is_missing() {
    let db = FakeDb::with_nodes(vec![node(2, 1, "a")]);
    let manager = NodeManager::spawn(db.clone(), fast_options());
    manager.heartbeat(vec![target(0, "c"), target(1, "a"), target(3, "new")]);
    // A REST event is answered after the heartbeat before it: a barrier.
    rest(&manager, EventType::AfterPromote, 1, "a")
        .await
        .expect("after_promote");
    assert_eq!(
        changes(&db),
        vec!["set_coordinator c:5432", "add new:5432 group 3"],
        "group 0 first, then the missing worker; group 1 already matches"
    );
    assert_eq!(db.committed_host(3).as_deref(), Some("new"));
    assert_eq!(manager.nodes().len(), 3);
    // Again: nothing.
    manager.heartbeat(vec![target(0, "c"), target(1, "a"), target(3, "new")]);
    rest(&manager, EventType::AfterPromote, 1, "a")
        .await
        .expect("after_promote");
    assert_eq!(changes(&db).len(), 2);
}

#[tokio::test]
async fn switchover_runs_in_one_transaction_and_heartbeats_wait() {
    let db = registered();
    let manager = NodeManager::spawn(db.clone(), fast_options());
    manager.heartbeat(vec![target(0, "c"), target(1, "a"), target(2, "b")]);
    rest(&manager, EventType::BeforeDemote, 1, "a")
        .await
        .expect("before_demote");
    assert_eq!(db.committed_host(1).as_deref(), Some("a"), "not committed");
    // While in flight: group 1's heartbeat is ignored, group 2's waits, another group's REST
    // event waits too.
    manager.heartbeat(vec![target(0, "c"), target(1, "stale"), target(2, "b2")]);
    let mut waiting = Box::pin(rest(&manager, EventType::AfterPromote, 2, "b3"));
    send_now(&mut waiting).await;
    rest(&manager, EventType::BeforePromote, 1, "a2")
        .await
        .expect("before_promote");
    send_now(&mut waiting).await;
    rest(&manager, EventType::AfterPromote, 1, "a2")
        .await
        .expect("after_promote");
    waiting.await.expect("group 2 event");
    assert_eq!(
        changes(&db),
        vec![
            "begin idle=35000ms",
            "update 2 a-demoted:5432 cooldown=3000",
            "update 2 a2:5432 cooldown=3000",
            "commit",
            "update 3 b3:5432 cooldown=3000",
        ],
        "the REST event of group 2 replaced its heartbeat; group 1's heartbeat was ignored"
    );
    assert_eq!(db.committed_host(1).as_deref(), Some("a2"));
    assert_eq!(db.committed_host(2).as_deref(), Some("b3"));
}

#[tokio::test]
async fn a_newer_event_of_a_group_supersedes_the_queued_one() {
    let db = registered();
    let manager = NodeManager::spawn(db.clone(), fast_options());
    rest(&manager, EventType::BeforeDemote, 1, "a")
        .await
        .expect("before_demote");
    // Group 2's events queue behind the transaction of group 1.
    let mut older = Box::pin(rest(&manager, EventType::AfterPromote, 2, "old"));
    send_now(&mut older).await;
    let mut newer = Box::pin(rest(&manager, EventType::AfterPromote, 2, "new"));
    send_now(&mut newer).await;
    rest(&manager, EventType::AfterPromote, 1, "a")
        .await
        .expect("after_promote");
    assert_eq!(older.await, Err(ManagerError::Superseded(2)));
    newer.await.expect("newer event");
    assert_eq!(db.committed_host(2).as_deref(), Some("new"));
    assert!(!changes(&db).iter().any(|l| l.contains(" old:")));
}

#[tokio::test]
async fn the_deadline_rolls_back_and_the_next_heartbeat_applies() {
    let db = registered();
    let manager = NodeManager::spawn(db.clone(), fast_options());
    manager
        .rest_event(
            event(EventType::BeforeDemote, 1, Duration::from_millis(100)),
            target(1, "a"),
        )
        .await
        .expect("before_demote");
    let started = tokio::time::Instant::now();
    while !db.log().iter().any(|l| l == "rollback") {
        assert!(started.elapsed() < Duration::from_secs(5), "no rollback");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(db.committed_host(1).as_deref(), Some("a"));
    manager.heartbeat(vec![target(1, "a2")]);
    rest(&manager, EventType::AfterPromote, 2, "b")
        .await
        .expect("barrier");
    assert_eq!(db.committed_host(1).as_deref(), Some("a2"));
    assert_eq!(
        changes(&db).last().map(String::as_str),
        Some("update 2 a2:5432 cooldown=10000"),
        "heartbeat changes use the default cooldown"
    );
}

#[tokio::test]
async fn retries_are_bounded_and_kept_inside_the_transaction() {
    let db = registered();
    let manager = NodeManager::spawn(db.clone(), fast_options());
    // Two deadlocks, then success: the transaction survives through the savepoint.
    db.fail_next("update", "40P01", "deadlock detected");
    db.fail_next("update", "40P01", "deadlock detected");
    rest(&manager, EventType::BeforeDemote, 1, "a")
        .await
        .expect("before_demote after two deadlocks");
    assert_eq!(
        db.log()
            .iter()
            .filter(|l| *l == "rollback to savepoint")
            .count(),
        2
    );
    rest(&manager, EventType::AfterPromote, 1, "a")
        .await
        .expect("after_promote");
    assert_eq!(db.committed_host(1).as_deref(), Some("a"));

    // As many failures as tries: given up, answered with the SQLSTATE.
    for _ in 0..3 {
        db.fail_next(
            "add",
            "55000",
            "127.0.0.1:1 is a metadata node, but is out of sync",
        );
    }
    let result = rest(&manager, EventType::AfterPromote, 5, "e").await;
    assert!(
        matches!(&result, Err(ManagerError::Postgres(m)) if m.contains("55000")),
        "{result:?}"
    );
    assert_eq!(db.log().iter().filter(|l| l.starts_with("add")).count(), 3);

    // Not retried: a duplicate address (55000 without "out of sync").
    db.fail_next(
        "update",
        "55000",
        "there is already another node with the specified hostname and port",
    );
    let before = db.log().iter().filter(|l| l.starts_with("update")).count();
    let result = rest(&manager, EventType::AfterPromote, 2, "x").await;
    assert!(
        matches!(result, Err(ManagerError::Postgres(_))),
        "{result:?}"
    );
    assert_eq!(
        db.log().iter().filter(|l| l.starts_with("update")).count(),
        before + 1
    );
}

#[tokio::test]
async fn a_lost_connection_abandons_the_transaction_and_stop_rolls_back() {
    let db = registered();
    let manager = NodeManager::spawn(db.clone(), fast_options());
    rest(&manager, EventType::BeforeDemote, 1, "a")
        .await
        .expect("before_demote");
    // The server ended the session (e.g. idle_in_transaction_session_timeout).
    Db::disconnect(&mut db.clone());
    // after_promote finds no transaction any more: a plain update, committed.
    rest(&manager, EventType::AfterPromote, 1, "a2")
        .await
        .expect("after_promote");
    assert_eq!(db.committed_host(1).as_deref(), Some("a2"));
    assert!(!changes(&db).contains(&"commit".to_string()));

    rest(&manager, EventType::BeforeDemote, 2, "b")
        .await
        .expect("before_demote");
    manager.stop();
    let started = tokio::time::Instant::now();
    while db.is_connected() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still connected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(changes(&db).last().map(String::as_str), Some("rollback"));
    assert_eq!(db.committed_host(2).as_deref(), Some("b"));
}

#[tokio::test]
async fn off_the_coordinator_nothing_runs() {
    let db = registered();
    db.state().coordinator = false;
    let manager = NodeManager::spawn(db.clone(), fast_options());
    manager.heartbeat(vec![target(1, "z")]);
    assert_eq!(
        rest(&manager, EventType::BeforeDemote, 1, "a").await,
        Err(ManagerError::NotCoordinator)
    );
    assert!(changes(&db).is_empty());
}

#[test]
fn cache_comparison_and_target_validation() {
    let row = node(2, 1, "a");
    assert!(row.matches(&target(1, "a")));
    assert!(!row.matches(&target(1, "a-demoted")));
    assert!(!row.matches(&NodeTarget {
        group: 1,
        host: "a".into(),
        port: 5433
    }));
    let cases = [
        (target(1, "a"), None),
        (target(1, ""), Some("group 1: empty host")),
        (target(1, "  "), Some("group 1: empty host")),
        (target(1, "a b"), Some("group 1: invalid host \"a b\"")),
        (
            target(1, "a-demoted"),
            Some("group 1: host \"a-demoted\" ends with \"-demoted\""),
        ),
        (
            NodeTarget {
                group: 1,
                host: "a".into(),
                port: 0,
            },
            Some("group 1: port 0 is not in 1..65535"),
        ),
        (
            target(u32::MAX, "a"),
            Some("group 4294967295 is out of range"),
        ),
    ];
    for (t, expected) in cases {
        assert_eq!(
            t.validate().err().map(|e| e.to_string()).as_deref(),
            expected,
            "{t:?}"
        );
    }
}
