//! The coordinator's pg_dist_node manager against real Postgres servers with Citus (real, when
//! installed, else the stand-in from tests/citus_standin: the error injection used here is
//! stand-in-only and those steps are skipped on real Citus).

// A test file: its helpers, too, may stop the test on an unexpected value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use citus::event::{CitusEvent, EventType};
use citus::manager::{DistNode, ManagerError, ManagerOptions, NodeManager, NodeTarget};
use regent_tests::citus::{CitusCluster, CITUS_DATABASE};
use regent_tests::{wait_until, wait_until_ok};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(20);

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "citus=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Short retry pauses so the retry tests stay quick.
fn options() -> ManagerOptions {
    ManagerOptions {
        retry_first_delay: Duration::from_millis(50),
        retry_max_delay: Duration::from_millis(200),
        sync_wait: Duration::from_secs(1),
        ..ManagerOptions::default()
    }
}

fn target(group: u32, host: &str, port: u16) -> NodeTarget {
    NodeTarget {
        group,
        host: host.into(),
        port,
    }
}

fn event(kind: EventType, group: u32, timeout: Duration) -> CitusEvent {
    CitusEvent {
        kind,
        group,
        leader: format!("worker-{group}"),
        timeout,
        cooldown: Duration::from_secs(2),
    }
}

/// The committed primary rows as (group, host, port), read by another session.
async fn primaries(client: &Client) -> Result<Vec<(i32, String, i32)>> {
    let rows = client
        .query(
            "SELECT groupid, nodename, nodeport FROM pg_catalog.pg_dist_node \
             WHERE noderole = 'primary' ORDER BY groupid",
            &[],
        )
        .await
        .context("read pg_dist_node")?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

fn primary_of(nodes: &[DistNode], group: i32) -> Option<(String, i32)> {
    nodes
        .iter()
        .find(|n| n.groupid == group && n.noderole == "primary")
        .map(|n| (n.nodename.clone(), n.nodeport))
}

async fn is_stand_in(client: &Client) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT to_regproc('citus_standin.is_standin') IS NOT NULL",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Stand-in only: the next `times` calls of `function` fail with `sqlstate`/`message`.
async fn inject(
    client: &Client,
    function: &str,
    sqlstate: &str,
    message: &str,
    times: i32,
) -> Result<()> {
    client
        .execute(
            "SELECT citus_standin.inject_error($1, $2, $3, $4)",
            &[&function, &sqlstate, &message, &times],
        )
        .await
        .with_context(|| format!("inject {sqlstate} into {function}"))?;
    Ok(())
}

/// Stand-in only: how many calls the injections of `function` have seen.
async fn injected_calls(client: &Client, function: &str) -> Result<i64> {
    let counters = client
        .query(
            "SELECT counter::text FROM citus_standin.injected_error WHERE function_name = $1",
            &[&function],
        )
        .await?;
    let mut calls = 0;
    for row in counters {
        let counter: String = row.try_get(0)?;
        let state = client
            .query_one(&format!("SELECT last_value, is_called FROM {counter}"), &[])
            .await?;
        if state.try_get::<_, bool>(1)? {
            calls += state.try_get::<_, i64>(0)?;
        }
    }
    Ok(calls)
}

async fn clear_injections(client: &Client) -> Result<()> {
    client
        .execute("SELECT citus_standin.clear_injected_errors()", &[])
        .await?;
    Ok(())
}

/// A distributed table and one id whose row lands in each worker group.
async fn distributed_events(client: &Client, groups: &[i32]) -> Result<Vec<(i32, i64)>> {
    client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, payload text); \
             SELECT create_distributed_table('events', 'id');",
        )
        .await
        .context("create the distributed table")?;
    let mut found = Vec::new();
    for group in groups {
        let mut id_for_group = None;
        for id in 1..1000i64 {
            let row = client
                .query_one(
                    "SELECT p.groupid FROM pg_catalog.pg_dist_placement p \
                     WHERE p.shardid = get_shard_id_for_distribution_column('events', $1::bigint)",
                    &[&id],
                )
                .await
                .context("shard placement")?;
            if row.try_get::<_, i32>(0)? == *group {
                id_for_group = Some(id);
                break;
            }
        }
        let id = id_for_group.ok_or_else(|| anyhow!("no id lands in group {group}"))?;
        found.push((*group, id));
    }
    Ok(found)
}

/// Whether some session of the coordinator waits on an advisory lock (a held routed write).
async fn writer_waits(client: &Client) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
            &[],
        )
        .await?;
    Ok(row.try_get::<_, i64>(0)? > 0)
}

/// Insert one row through the coordinator in a task; returns when it was acknowledged.
fn spawn_insert(client: Client, id: i64) -> tokio::task::JoinHandle<Result<(Client, Instant)>> {
    tokio::spawn(async move {
        client
            .execute("INSERT INTO events VALUES ($1, 'held')", &[&id])
            .await
            .with_context(|| format!("insert id {id}"))?;
        Ok((client, Instant::now()))
    })
}

async fn row_count(client: &Client, id: i64) -> Result<i64> {
    let row = client
        .query_one("SELECT count(*) FROM events WHERE id = $1", &[&id])
        .await?;
    Ok(row.try_get(0)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_registers_updates_and_refuses_off_the_coordinator() -> Result<()> {
    init_logging();
    let cluster = CitusCluster::start_unregistered("mgr-heartbeat", 2).await?;
    let coordinator = cluster.coordinator_client().await?;
    let coordinator_port = cluster.coordinator.port();
    let (w1, w2) = (cluster.workers[0].port(), cluster.workers[1].port());

    // Nothing registered yet: citus_is_coordinator() is false, so the manager refuses.
    let manager = NodeManager::start_with(cluster.coordinator.pg_config(CITUS_DATABASE), options());
    let refused = manager
        .rest_event(
            event(EventType::AfterPromote, 1, Duration::from_secs(5)),
            target(1, "127.0.0.1", w1),
        )
        .await;
    assert_eq!(refused, Err(ManagerError::NotCoordinator));
    assert!(primaries(&coordinator).await?.is_empty(), "nothing added");

    // What the Citus bootstrap does on a new coordinator.
    coordinator
        .batch_execute(&format!(
            "INSERT INTO pg_catalog.pg_dist_authinfo VALUES (0, current_user, 'password={}'); \
             SELECT citus_set_coordinator_host('127.0.0.1', {coordinator_port}, 'primary', 'default');",
            regent_tests::config::SUPERUSER_PASSWORD
        ))
        .await?;
    let stand_in = is_stand_in(&coordinator).await?;
    if stand_in {
        // The add meets "metadata out of sync" twice, as right after a metadata change.
        inject(
            &coordinator,
            "citus_add_node",
            "55000",
            "127.0.0.1:1 is a metadata node, but is out of sync",
            2,
        )
        .await?;
    }

    // The heartbeat registers both worker groups.
    manager.heartbeat(vec![
        target(0, "127.0.0.1", coordinator_port),
        target(1, "127.0.0.1", w1),
        target(2, "127.0.0.1", w2),
    ]);
    let expected = vec![
        (0, "127.0.0.1".to_string(), i32::from(coordinator_port)),
        (1, "127.0.0.1".to_string(), i32::from(w1)),
        (2, "127.0.0.1".to_string(), i32::from(w2)),
    ];
    wait_until_ok("both workers registered", WAIT, || async {
        let now = primaries(&coordinator).await?;
        if now != expected {
            bail!("pg_dist_node primaries: {now:?}");
        }
        Ok(())
    })
    .await;
    if stand_in {
        // Two failed tries and the successful third for worker 1, one more for worker 2.
        assert_eq!(injected_calls(&coordinator, "citus_add_node").await?, 4);
        clear_injections(&coordinator).await?;
    }
    let nodes = wait_until("the manager's view to show group 2", WAIT, || async {
        let nodes = manager.nodes();
        primary_of(&nodes, 2).map(|_| nodes)
    })
    .await;
    assert_eq!(
        primary_of(&nodes, 1),
        Some(("127.0.0.1".into(), i32::from(w1)))
    );

    // Group 2's primary moved ("localhost" names the same server differently): updated in
    // place, same node id.
    let node_id_before = nodes
        .iter()
        .find(|n| n.groupid == 2)
        .map(|n| n.nodeid)
        .context("group 2 row")?;
    manager.heartbeat(vec![
        target(0, "127.0.0.1", coordinator_port),
        target(1, "127.0.0.1", w1),
        target(2, "localhost", w2),
    ]);
    wait_until_ok("group 2 repointed", WAIT, || async {
        let now = primaries(&coordinator).await?;
        if now.get(2).map(|r| r.1.as_str()) != Some("localhost") {
            bail!("pg_dist_node primaries: {now:?}");
        }
        Ok(())
    })
    .await;
    let after = wait_until("the manager's view of group 2", WAIT, || async {
        let nodes = manager.nodes();
        (primary_of(&nodes, 2) == Some(("localhost".into(), i32::from(w2)))).then_some(nodes)
    })
    .await;
    assert_eq!(
        after.iter().find(|n| n.groupid == 2).map(|n| n.nodeid),
        Some(node_id_before),
        "updated in place, not re-added"
    );

    if stand_in {
        // A heartbeat equal to pg_dist_node runs nothing: an injected failure stays unused.
        inject(
            &coordinator,
            "citus_update_node",
            "XX000",
            "must not be called",
            1,
        )
        .await?;
        // A REST event afterwards proves the heartbeat before it was handled.
        manager.heartbeat(vec![
            target(0, "127.0.0.1", coordinator_port),
            target(1, "127.0.0.1", w1),
            target(2, "localhost", w2),
        ]);
        manager
            .rest_event(
                event(EventType::AfterPromote, 1, Duration::from_secs(5)),
                target(1, "127.0.0.1", w1),
            )
            .await
            .map_err(|e| anyhow!("after_promote equal to pg_dist_node: {e}"))?;
        assert_eq!(injected_calls(&coordinator, "citus_update_node").await?, 0);
        clear_injections(&coordinator).await?;
    }

    // A worker group missing from the heartbeat is reported, never dropped.
    manager.heartbeat(vec![
        target(0, "127.0.0.1", coordinator_port),
        target(1, "127.0.0.1", w1),
    ]);
    manager
        .rest_event(
            event(EventType::AfterPromote, 1, Duration::from_secs(5)),
            target(1, "127.0.0.1", w1),
        )
        .await
        .map_err(|e| anyhow!("after_promote: {e}"))?;
    assert_eq!(primaries(&coordinator).await?.len(), 3, "group 2 kept");

    // A target already used by another group is refused before Citus sees it.
    let clash = manager
        .rest_event(
            event(EventType::AfterPromote, 1, Duration::from_secs(5)),
            target(1, "localhost", w2),
        )
        .await;
    assert!(
        matches!(&clash, Err(ManagerError::Refused(m)) if m.contains("group 2")),
        "{clash:?}"
    );
    // Bad targets never reach the queue.
    for (bad, why) in [
        (target(1, "", w1), "empty host"),
        (target(1, "127.0.0.1", 0), "port 0"),
        (target(1, "h-demoted", w1), "-demoted"),
    ] {
        let result = manager
            .rest_event(
                event(EventType::AfterPromote, 1, Duration::from_secs(5)),
                bad,
            )
            .await;
        assert!(
            matches!(&result, Err(ManagerError::InvalidTarget(m)) if m.contains(why)),
            "{why}: {result:?}"
        );
    }
    let mismatch = manager
        .rest_event(
            event(EventType::AfterPromote, 2, Duration::from_secs(5)),
            target(1, "127.0.0.1", w1),
        )
        .await;
    assert!(matches!(mismatch, Err(ManagerError::InvalidTarget(_))));

    // On a worker, citus_is_coordinator() is false: refused, its pg_dist_node untouched.
    let worker = cluster.worker_client(0).await?;
    let worker_rows_before = primaries(&worker).await?;
    let on_worker =
        NodeManager::start_with(cluster.workers[0].pg_config(CITUS_DATABASE), options());
    on_worker.heartbeat(vec![target(1, "127.0.0.1", w2)]);
    let refused = on_worker
        .rest_event(
            event(EventType::BeforeDemote, 1, Duration::from_secs(5)),
            target(1, "127.0.0.1", w1),
        )
        .await;
    assert_eq!(refused, Err(ManagerError::NotCoordinator));
    assert_eq!(primaries(&worker).await?, worker_rows_before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_holds_routed_writes_until_after_promote() -> Result<()> {
    init_logging();
    let cluster = CitusCluster::start("mgr-switch", 2).await?;
    let coordinator = cluster.coordinator_client().await?;
    let stand_in = is_stand_in(&coordinator).await?;
    let (w1, w2) = (cluster.workers[0].port(), cluster.workers[1].port());
    let ids = distributed_events(&coordinator, &[1, 2]).await?;
    let (id_group1, id_group2) = (ids[0].1, ids[1].1);

    let manager = NodeManager::start_with(cluster.coordinator.pg_config(CITUS_DATABASE), options());
    manager.heartbeat(vec![
        target(0, "127.0.0.1", cluster.coordinator.port()),
        target(1, "127.0.0.1", w1),
        target(2, "127.0.0.1", w2),
    ]);
    if stand_in {
        // The '-demoted' update is a deadlock victim twice: retried under a savepoint.
        inject(
            &coordinator,
            "citus_update_node",
            "40P01",
            "deadlock detected",
            2,
        )
        .await?;
    }

    // 1. before_demote returns once the node is '-demoted' inside the open transaction.
    let held_since = Instant::now();
    manager
        .rest_event(
            event(EventType::BeforeDemote, 1, Duration::from_secs(30)),
            target(1, "127.0.0.1", w1),
        )
        .await
        .map_err(|e| anyhow!("before_demote: {e}"))?;
    assert_eq!(
        primary_of(&manager.nodes(), 1),
        Some(("127.0.0.1-demoted".into(), i32::from(w1))),
        "the manager read the row inside its transaction"
    );
    if stand_in {
        // Cleared after the commit: dropping the injection's sequence would wait for the
        // manager's open transaction, which used it.
        assert_eq!(injected_calls(&coordinator, "citus_update_node").await?, 3);
    }
    // Other sessions still see the committed address.
    assert_eq!(
        primaries(&coordinator).await?[1],
        (1, "127.0.0.1".to_string(), i32::from(w1))
    );

    // A write routed to group 1 waits; one to group 2 and reads do not.
    let writer = cluster.coordinator_client().await?;
    let held = spawn_insert(writer, id_group1);
    wait_until_ok(
        "the group 1 write to wait on the node lock",
        WAIT,
        || async {
            if writer_waits(&coordinator).await? {
                Ok(())
            } else {
                bail!("no session waits on an advisory lock")
            }
        },
    )
    .await;
    assert!(!held.is_finished(), "the group 1 write is held");
    let other = cluster.coordinator_client().await?;
    tokio::time::timeout(
        Duration::from_secs(5),
        other.execute("INSERT INTO events VALUES ($1, 'free')", &[&id_group2]),
    )
    .await
    .context("a write to group 2 must not wait")??;
    assert_eq!(row_count(&other, id_group2).await?, 1);

    // 2. before_promote: the new primary ("localhost" = the same server, another address)
    // inside the same transaction; the write still waits.
    manager
        .rest_event(
            event(EventType::BeforePromote, 1, Duration::from_secs(30)),
            target(1, "localhost", w1),
        )
        .await
        .map_err(|e| anyhow!("before_promote: {e}"))?;
    assert!(!held.is_finished(), "still held after before_promote");
    assert!(writer_waits(&coordinator).await?);

    // 3. after_promote commits: the write goes through to the new address.
    manager
        .rest_event(
            event(EventType::AfterPromote, 1, Duration::from_secs(30)),
            target(1, "localhost", w1),
        )
        .await
        .map_err(|e| anyhow!("after_promote: {e}"))?;
    let (writer, acknowledged) = tokio::time::timeout(WAIT, held)
        .await
        .context("the held write did not finish after the commit")???;
    if stand_in {
        clear_injections(&coordinator).await?;
    }
    let held_for = acknowledged.duration_since(held_since);
    eprintln!("routed write held for {held_for:?}");
    assert_eq!(row_count(&writer, id_group1).await?, 1);
    assert_eq!(
        primaries(&coordinator).await?[1],
        (1, "localhost".to_string(), i32::from(w1))
    );
    assert_eq!(
        primary_of(&manager.nodes(), 1),
        Some(("localhost".into(), i32::from(w1)))
    );

    // The next heartbeat (the DCS now names the new primary) changes nothing.
    manager.heartbeat(vec![
        target(0, "127.0.0.1", cluster.coordinator.port()),
        target(1, "localhost", w1),
        target(2, "127.0.0.1", w2),
    ]);
    // after_promote without a transaction: a plain update back, committed at once.
    manager
        .rest_event(
            event(EventType::AfterPromote, 1, Duration::from_secs(30)),
            target(1, "127.0.0.1", w1),
        )
        .await
        .map_err(|e| anyhow!("plain after_promote: {e}"))?;
    assert_eq!(
        primaries(&coordinator).await?[1],
        (1, "127.0.0.1".to_string(), i32::from(w1))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_stop_and_errors_roll_back() -> Result<()> {
    init_logging();
    let cluster = CitusCluster::start("mgr-deadline", 1).await?;
    let coordinator = cluster.coordinator_client().await?;
    let stand_in = is_stand_in(&coordinator).await?;
    let w1 = cluster.workers[0].port();
    let ids = distributed_events(&coordinator, &[1]).await?;
    let id = ids[0].1;
    let committed = primaries(&coordinator).await?;

    let manager = NodeManager::start_with(cluster.coordinator.pg_config(CITUS_DATABASE), options());
    manager.heartbeat(vec![
        target(0, "127.0.0.1", cluster.coordinator.port()),
        target(1, "127.0.0.1", w1),
    ]);

    // No after_promote within the timeout: rolled back, the held write resumes.
    let timeout = Duration::from_secs(2);
    manager
        .rest_event(
            event(EventType::BeforeDemote, 1, timeout),
            target(1, "127.0.0.1", w1),
        )
        .await
        .map_err(|e| anyhow!("before_demote: {e}"))?;
    let held_since = Instant::now();
    let held = spawn_insert(cluster.coordinator_client().await?, id);
    let (_, acknowledged) = tokio::time::timeout(WAIT, held)
        .await
        .context("the held write did not resume after the deadline")???;
    let held_for = acknowledged.duration_since(held_since);
    eprintln!("write held until the deadline rollback: {held_for:?}");
    assert!(held_for < timeout + Duration::from_secs(3), "{held_for:?}");
    assert_eq!(primaries(&coordinator).await?, committed, "rolled back");
    assert_eq!(row_count(&coordinator, id).await?, 1);

    // Heartbeats work again after the rollback (a heartbeat-driven change goes through).
    manager.heartbeat(vec![
        target(0, "127.0.0.1", cluster.coordinator.port()),
        target(1, "localhost", w1),
    ]);
    wait_until_ok("the heartbeat applies the DCS state", WAIT, || async {
        let now = primaries(&coordinator).await?;
        if now.get(1).map(|r| r.1.as_str()) != Some("localhost") {
            bail!("pg_dist_node primaries: {now:?}");
        }
        Ok(())
    })
    .await;
    let committed = primaries(&coordinator).await?;

    // stop() rolls back the open transaction at once.
    manager
        .rest_event(
            event(EventType::BeforeDemote, 1, Duration::from_secs(60)),
            target(1, "localhost", w1),
        )
        .await
        .map_err(|e| anyhow!("before_demote: {e}"))?;
    let held = spawn_insert(cluster.coordinator_client().await?, id + 1_000_000);
    wait_until_ok("the write to wait", WAIT, || async {
        if writer_waits(&coordinator).await? {
            Ok(())
        } else {
            bail!("no waiting session")
        }
    })
    .await;
    let stopped_at = Instant::now();
    manager.stop();
    let (_, acknowledged) = tokio::time::timeout(WAIT, held)
        .await
        .context("the held write did not resume after stop()")???;
    eprintln!(
        "write resumed {:?} after stop()",
        acknowledged.duration_since(stopped_at)
    );
    assert!(acknowledged.duration_since(stopped_at) < Duration::from_secs(5));
    assert_eq!(
        primaries(&coordinator).await?,
        committed,
        "rolled back by stop()"
    );

    if stand_in {
        // A non-retryable error in the transaction: answered with the SQLSTATE, rolled back,
        // and the next event starts afresh.
        inject(
            &coordinator,
            "citus_update_node",
            "P0002",
            "node 99 not found",
            1,
        )
        .await?;
        let failed = manager
            .rest_event(
                event(EventType::BeforeDemote, 1, Duration::from_secs(30)),
                target(1, "localhost", w1),
            )
            .await;
        assert!(
            matches!(&failed, Err(ManagerError::Postgres(m)) if m.contains("P0002")),
            "{failed:?}"
        );
        assert_eq!(primaries(&coordinator).await?, committed);
        manager
            .rest_event(
                event(EventType::AfterPromote, 1, Duration::from_secs(30)),
                target(1, "127.0.0.1", w1),
            )
            .await
            .map_err(|e| anyhow!("after_promote after an error: {e}"))?;
        assert_eq!(
            primaries(&coordinator).await?[1],
            (1, "127.0.0.1".to_string(), i32::from(w1))
        );
    }
    Ok(())
}

/// A hung agent cannot hold writes forever: the transaction's server-side idle limit (the
/// event's timeout plus `idle_margin`) ends the session and the held write resumes, while the
/// agent's own deadline cannot fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_agent_is_cut_off_by_the_server() -> Result<()> {
    init_logging();
    let cluster = CitusCluster::start("mgr-hung", 1).await?;
    let coordinator = cluster.coordinator_client().await?;
    let w1 = cluster.workers[0].port();
    let ids = distributed_events(&coordinator, &[1]).await?;
    let id = ids[0].1;
    let committed = primaries(&coordinator).await?;

    let config = cluster.coordinator.pg_config(CITUS_DATABASE);
    let coordinator_port = cluster.coordinator.port();
    let hang = Duration::from_secs(10);
    let (demoted_tx, demoted_rx) = tokio::sync::oneshot::channel();
    // The manager on a runtime of its own, whose only thread then blocks: a hung agent.
    let agent = std::thread::spawn(move || -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("agent runtime")?;
        runtime.block_on(async move {
            let manager = NodeManager::start_with(
                config,
                ManagerOptions {
                    idle_margin: Duration::from_secs(1),
                    ..options()
                },
            );
            manager.heartbeat(vec![
                target(0, "127.0.0.1", coordinator_port),
                target(1, "127.0.0.1", w1),
            ]);
            let result = manager
                .rest_event(
                    event(EventType::BeforeDemote, 1, Duration::from_secs(1)),
                    target(1, "127.0.0.1", w1),
                )
                .await;
            let _ = demoted_tx.send(result);
            std::thread::sleep(hang);
        });
        Ok(())
    });
    demoted_rx
        .await
        .context("the agent thread ended early")?
        .map_err(|e| anyhow!("before_demote: {e}"))?;
    let hung_at = Instant::now();
    let held = spawn_insert(cluster.coordinator_client().await?, id);
    let (_, acknowledged) = tokio::time::timeout(WAIT, held)
        .await
        .context("the held write never resumed")???;
    let held_for = acknowledged.duration_since(hung_at);
    eprintln!("write resumed {held_for:?} after the agent hung");
    assert!(
        held_for < hang - Duration::from_secs(2),
        "resumed by the server's idle limit, not by the agent waking up: {held_for:?}"
    );
    assert_eq!(primaries(&coordinator).await?, committed, "rolled back");
    assert_eq!(row_count(&coordinator, id).await?, 1);
    tokio::task::spawn_blocking(move || agent.join())
        .await
        .context("join task")?
        .map_err(|_| anyhow!("the agent thread panicked"))??;
    Ok(())
}
