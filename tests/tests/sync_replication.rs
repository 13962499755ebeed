//! Synchronous replication (`synchronous_mode`) on real clusters: the leader names one streaming
//! replica as synchronous (the `sync` object and pg_stat_replication agree), only that member may
//! take over, a switchover to an asynchronous member is refused, no acknowledged write is lost
//! across a crash of the leader, and in strict mode writes wait while no standby is there.
//! Also maintenance mode's counterpart on the DCS side: a paused primary keeps running and
//! accepting writes while the DCS is unreachable, well past the lock's ttl.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use regent_tests::config::{Backend, MemberConfig};
use regent_tests::member::Member;
use regent_tests::writer::{assert_acked_rows_on, WRITER_TABLE};
use regent_tests::{poll_until, wait_until_ok, RoleSampler, TestCluster, Writer};
use serde_json::{json, Value};

const SYNC_DEADLINE: Duration = Duration::from_secs(60);
const REJOIN_DEADLINE: Duration = Duration::from_secs(120);
/// Longest time without an acknowledged write while a synchronous standby stops. Its release
/// comes before it stops, so commits never wait for it: writes go every 20 ms and the longest gap
/// measured was 0.03 s (etcd and Kubernetes). The margin is for a loaded machine. A commit that
/// waited on the departing standby until its replacement is named takes seconds: a gap over the
/// bound, or a failure at the writer's 2 s insert timeout.
const SYNC_STANDBY_STOP_MAX_ACK_GAP: Duration = Duration::from_millis(1500);

regent_tests::backend_tests! {
    only_the_sync_standby_takes_over: [etcd, kubernetes];
    strict_mode_holds_writes_without_a_standby: [etcd, kubernetes];
    paused_primary_outlives_a_dcs_outage: [etcd];
}

fn synchronous(strict: bool) -> impl Fn(usize, &mut MemberConfig) + Send + Sync + 'static {
    move |_, config: &mut MemberConfig| {
        config.set("bootstrap.dcs.synchronous_mode", true);
        config.set("bootstrap.dcs.synchronous_mode_strict", strict);
    }
}

/// The `sync` object as (leader, sorted standbys), whatever the backend.
async fn sync_object(cluster: &TestCluster) -> Option<(String, Vec<String>)> {
    let raw = cluster.dcs_get("sync").await?;
    let value: Value = serde_json::from_str(&raw).ok()?;
    let leader = value.get("leader")?.as_str()?.to_string();
    let mut standbys: Vec<String> = value
        .get("sync_standby")
        .and_then(Value::as_str)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    standbys.sort();
    Some((leader, standbys))
}

/// `application_name` → `sync_state` on `leader`.
async fn replication_states(leader: &Member) -> Result<Vec<(String, String)>> {
    let client = leader.pg_client().await?;
    let rows = client
        .query(
            "SELECT application_name, sync_state FROM pg_stat_replication ORDER BY 1",
            &[],
        )
        .await
        .context("pg_stat_replication")?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Wait until the `sync` object, owned by `leader`, names exactly one standby, Postgres on the
/// leader shows that one `sync` and every other streaming member `async`, and `expected_async`
/// replicas stream; returns the synchronous standby's name.
async fn wait_for_one_sync_standby(
    cluster: &TestCluster,
    leader: &str,
    expected_async: usize,
) -> String {
    let leader_member = cluster.member(leader);
    wait_until_ok(
        &format!("{leader} with one synchronous standby"),
        SYNC_DEADLINE,
        || async {
            let Some((owner, standbys)) = sync_object(cluster).await else {
                bail!("no sync object");
            };
            if owner != leader {
                bail!("sync object owned by {owner}");
            }
            let [standby] = standbys.as_slice() else {
                bail!("sync standbys {standbys:?}");
            };
            let states = replication_states(leader_member).await?;
            let sync: Vec<&str> = states
                .iter()
                .filter(|(_, s)| s == "sync")
                .map(|(n, _)| n.as_str())
                .collect();
            let asynchronous = states.iter().filter(|(_, s)| s == "async").count();
            if sync != [standby.as_str()] || asynchronous != expected_async {
                bail!("sync object names {standby}, pg_stat_replication shows {states:?}");
            }
            Ok(standby.clone())
        },
    )
    .await
}

async fn post(url: &str, body: Value) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(30))
        .json(&body)
        .send()
        .await
        .expect("REST request");
    let code = response.status().as_u16();
    (code, response.text().await.unwrap_or_default())
}

async fn metrics(member: &Member) -> String {
    reqwest::get(format!("{}/metrics", member.api_base()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

fn sync_standby_gauge(text: &str) -> Option<&str> {
    text.lines()
        .find(|l| l.starts_with("patroni_sync_standby{"))
        .and_then(|l| l.rsplit(' ').next())
}

/// A writer on a cluster where an earlier writer ran: its ids start at 1 again, so the table is
/// emptied first (on the leader) to keep every write of the new run meaningful.
async fn fresh_writer(cluster: &TestCluster) -> Writer {
    let leader = cluster.leader().await.expect("a leader");
    let client = leader.pg_client().await.expect("connect to the leader");
    client
        .batch_execute(&format!("TRUNCATE {WRITER_TABLE}"))
        .await
        .expect("empty the writer table");
    Writer::start(&cluster.all(), Duration::from_secs(30)).await
}

/// Watch `member` for `window` after the lock became free: it must never leave recovery. The
/// window starts once its log shows that it considered the free lock and refused it.
async fn assert_stays_replica(member: &Member, window: Duration) {
    wait_until_ok(
        &format!(
            "{} refusing the free lock as an asynchronous member",
            member.name()
        ),
        Duration::from_secs(60),
        || async {
            if member
                .log_contents()
                .contains("synchronous_mode: I am not a synchronous standby")
            {
                Ok(())
            } else {
                bail!("not yet")
            }
        },
    )
    .await;
    let promoted = poll_until(window, || async {
        matches!(member.pg_in_recovery().await, Ok(false)).then_some(())
    })
    .await;
    assert!(
        promoted.is_none(),
        "{} (asynchronous) promoted while the synchronous standby was down",
        member.name()
    );
}

async fn only_the_sync_standby_takes_over(backend: Backend) {
    let cluster = TestCluster::builder("sync")
        .backend(backend)
        .members(3)
        .configure(synchronous(false))
        .start()
        .await;
    let tag = format!("[sync/{}]", backend.label());
    let leader = cluster.wait_for_bootstrap().await;
    let standby = wait_for_one_sync_standby(&cluster, &leader, 1).await;
    let async_name = cluster
        .others(&leader)
        .iter()
        .map(|m| m.name().to_string())
        .find(|n| *n != standby)
        .expect("a third member");
    println!("{tag} leader {leader}, sync standby {standby}, async {async_name}");

    // What clients and patronictl see.
    let sync_member = cluster.member(&standby);
    let async_member = cluster.member(&async_name);
    assert_eq!(sync_member.api_status("/sync").await, Some(200));
    assert_eq!(async_member.api_status("/sync").await, Some(503));
    assert_eq!(async_member.api_status("/async").await, Some(200));
    assert_eq!(sync_member.api_status("/async").await, Some(503));
    let (_, listing) = cluster
        .member(&leader)
        .api_get("/cluster")
        .await
        .expect("GET /cluster");
    let role_of = |name: &str| {
        listing["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == name))
            .and_then(|m| m["role"].as_str())
            .map(str::to_string)
    };
    assert_eq!(role_of(&standby).as_deref(), Some("sync_standby"));
    assert_eq!(role_of(&async_name).as_deref(), Some("replica"));
    assert_eq!(sync_standby_gauge(&metrics(sync_member).await), Some("1"));
    assert_eq!(sync_standby_gauge(&metrics(async_member).await), Some("0"));

    // A switchover to the asynchronous member is refused; nothing changes.
    let api = cluster.member(&leader).api_base();
    let (code, text) = post(
        &format!("{api}/switchover"),
        json!({"leader": leader, "candidate": async_name}),
    )
    .await;
    assert_eq!(
        (code, text.as_str()),
        (412, "candidate name does not match with sync_standby")
    );
    assert!(cluster.dcs_get("failover").await.is_none_or(|f| {
        serde_json::from_str::<Value>(&f).is_ok_and(|v| v.get("member").is_none_or(Value::is_null))
    }));

    // Crash of the leader (agent and Postgres): the sync standby takes over with every
    // acknowledged write; the asynchronous member does not.
    let writer = Writer::start(&cluster.all(), Duration::from_secs(30)).await;
    writer.wait_for_acks(21, Duration::from_secs(20)).await;
    let roles = RoleSampler::start(&cluster.all()).await;
    let killed_at = Instant::now();
    cluster.member(&leader).kill9_with_postmaster();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(60)).await;
    assert_eq!(new_leader, standby, "the synchronous standby took over");
    wait_until_ok(
        "a write acknowledged by the new leader",
        Duration::from_secs(30),
        || async {
            match writer.snapshot().first_ack_after(killed_at) {
                Some(_) => Ok(()),
                None => bail!("no write acknowledged since the crash"),
            }
        },
    )
    .await;
    let report = writer.stop().await;
    // A write in flight when the leader died may still be acknowledged by it: count from the
    // first write that failed.
    let first_failure = report
        .first_failure_after(killed_at)
        .expect("a write failed after the crash");
    let writable_after = report
        .first_ack_after(first_failure)
        .expect("a write acknowledged after the crash")
        - killed_at;
    let bound = cluster.ttl() + Duration::from_secs(2);
    println!(
        "{tag} kill -9 of {leader}: {standby} accepted writes after {:.3} s (bound ttl + 2 s = \
         {:.0} s); {}",
        writable_after.as_secs_f64(),
        bound.as_secs_f64(),
        report.summary()
    );
    assert!(
        writable_after <= bound,
        "failover took {writable_after:?}, more than ttl + 2 s"
    );
    assert_eq!(cluster.sql_primaries().await, vec![standby.clone()]);
    assert_acked_rows_on(sync_member, &report.acked).await;
    println!("{tag} {}", roles.summary());
    roles.assert_never_two_primaries();

    // The old leader rejoins; the new leader picks a synchronous standby among the two.
    cluster.member(&leader).restart();
    cluster
        .wait_for_member_streaming(&leader, &standby, REJOIN_DEADLINE)
        .await;
    cluster
        .wait_for_member_streaming(&async_name, &standby, REJOIN_DEADLINE)
        .await;
    let second_sync = wait_for_one_sync_standby(&cluster, &standby, 1).await;
    let second_async = cluster
        .others(&standby)
        .iter()
        .map(|m| m.name().to_string())
        .find(|n| *n != second_sync)
        .expect("an asynchronous member");
    println!("{tag} leader {standby}, sync standby {second_sync}, async {second_async}");

    // Leader and sync standby crash together: the asynchronous member, the only one left, must
    // not promote (it may miss acknowledged writes). The sync standby, once back, takes over
    // with everything.
    let writer = fresh_writer(&cluster).await;
    writer.wait_for_acks(21, Duration::from_secs(20)).await;
    cluster.member(&standby).kill9_with_postmaster();
    cluster.member(&second_sync).kill9_with_postmaster();
    let report = writer.stop().await;
    assert_stays_replica(cluster.member(&second_async), cluster.ttl()).await;
    assert!(
        matches!(
            cluster.member(&second_async).pg_in_recovery().await,
            Ok(true)
        ),
        "{second_async} is still a running replica"
    );
    cluster.member(&second_sync).restart();
    let last_leader = cluster.wait_for_leader(Duration::from_secs(90)).await;
    assert_eq!(
        last_leader, second_sync,
        "the synchronous standby took over"
    );
    assert_acked_rows_on(cluster.member(&second_sync), &report.acked).await;
    roles.assert_never_two_primaries();
    println!(
        "{tag} {second_async} stayed a replica; {second_sync} took over with all {} acknowledged rows",
        report.acked.len()
    );

    // A synchronous standby that is stopped leaves its duty first (it publishes nosync and
    // waits for the leader to release it), so commits on the primary do not wait for it.
    let leader_now = last_leader;
    cluster.member(&standby).restart();
    for name in [&second_async, &standby] {
        cluster
            .wait_for_member_streaming(name, &leader_now, REJOIN_DEADLINE)
            .await;
    }
    let leaving = wait_for_one_sync_standby(&cluster, &leader_now, 1).await;
    let writer = fresh_writer(&cluster).await;
    writer.wait_for_acks(21, Duration::from_secs(20)).await;
    let stopping = cluster.member(&leaving);
    let stop_requested = Instant::now();
    stopping
        .sigterm(Duration::from_secs(60))
        .await
        .expect("stop the synchronous standby");
    assert!(
        stopping
            .log_contents()
            .contains("released from synchronous standby duty"),
        "{leaving} stopped without being released from synchronous duty"
    );
    let replacement = wait_for_one_sync_standby(&cluster, &leader_now, 0).await;
    assert_ne!(replacement, leaving);
    let before = writer.acked_count();
    writer
        .wait_for_acks(before + 21, Duration::from_secs(20))
        .await;
    let report = writer.stop().await;
    // From the SIGTERM until the writer had 20 more acknowledgements after the replacement
    // took over: the stop, the release, the exit and the choice of a new synchronous standby.
    let stop_window = (stop_requested, report.stopped);
    let stop_failures = report.failures_between(stop_window.0, stop_window.1);
    let stop_gap = report.longest_ack_gap(stop_window.0, stop_window.1);
    println!(
        "{tag} {leaving} (sync standby) stopped with SIGTERM, {replacement} took its duty; \
         {stop_failures} failed writes and at most {:.3} s between two acknowledgements over \
         {:.1} s (bound {:.1} s); {}",
        stop_gap.as_secs_f64(),
        (stop_window.1 - stop_window.0).as_secs_f64(),
        SYNC_STANDBY_STOP_MAX_ACK_GAP.as_secs_f64(),
        report.summary()
    );
    assert_eq!(
        stop_failures,
        0,
        "writes failed while the synchronous standby stopped: {}",
        report.summary()
    );
    assert!(
        stop_gap <= SYNC_STANDBY_STOP_MAX_ACK_GAP,
        "commits stalled {stop_gap:?} while the synchronous standby stopped: {}",
        report.summary()
    );
    assert_acked_rows_on(cluster.member(&leader_now), &report.acked).await;

    // POST /restart of the synchronous standby: released first, synchronous again once back.
    let restarting = cluster.member(&replacement);
    let (code, text) = post(&format!("{}/restart", restarting.api_base()), json!({})).await;
    assert_eq!(code, 200, "POST /restart: {text}");
    assert!(
        restarting
            .log_contents()
            .contains("released from synchronous standby duty"),
        "{replacement} restarted without being released from synchronous duty"
    );
    assert_eq!(
        wait_for_one_sync_standby(&cluster, &leader_now, 0).await,
        replacement,
        "the restarted standby is synchronous again"
    );
}

/// `synchronous_mode_strict`: with its only replica gone the leader renders `*` and a commit
/// waits (Postgres' SyncRep wait) until a standby is back; it then completes.
async fn strict_mode_holds_writes_without_a_standby(backend: Backend) {
    let cluster = TestCluster::builder("strict")
        .backend(backend)
        .members(2)
        .configure(synchronous(true))
        .start()
        .await;
    let tag = format!("[strict/{}]", backend.label());
    let leader_name = cluster.wait_for_bootstrap().await;
    let replica_name = wait_for_one_sync_standby(&cluster, &leader_name, 0).await;
    let leader = cluster.member(&leader_name);
    let client = leader.pg_client().await.expect("connect to the leader");
    client
        .batch_execute("CREATE TABLE strict_probe (id int)")
        .await
        .expect("create a table while the standby is synchronous");

    cluster
        .member(&replica_name)
        .sigterm(Duration::from_secs(60))
        .await
        .expect("stop the replica");
    wait_until_ok("synchronous_standby_names = '*'", SYNC_DEADLINE, || async {
        let row = client
            .query_one("SHOW synchronous_standby_names", &[])
            .await?;
        let names: String = row.try_get(0)?;
        if names == "*" {
            Ok(())
        } else {
            bail!("synchronous_standby_names = {names:?}")
        }
    })
    .await;
    assert_eq!(
        sync_object(&cluster).await,
        Some((leader_name.clone(), vec![])),
        "the sync object names no standby"
    );

    // The commit waits for a standby. (A statement_timeout would not make it fail: Postgres
    // cancels the wait with a warning and reports the local commit, so the wait itself is what
    // is checked here: the insert does not return, and its backend waits on SyncRep.)
    let writer = leader.pg_client().await.expect("second connection");
    let insert = tokio::spawn(async move {
        writer
            .execute("INSERT INTO strict_probe VALUES (1)", &[])
            .await
            .map(|_| Instant::now())
    });
    wait_until_ok(
        "the insert waiting on SyncRep",
        Duration::from_secs(20),
        || async {
            let row = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                    &[],
                )
                .await?;
            let waiting: i64 = row.try_get(0)?;
            if waiting == 1 {
                Ok(())
            } else {
                bail!("{waiting} backends wait on SyncRep")
            }
        },
    )
    .await;
    assert!(
        !insert.is_finished(),
        "the insert returned without a standby"
    );

    let restarted_at = Instant::now();
    cluster.member(&replica_name).restart();
    let done = tokio::time::timeout(REJOIN_DEADLINE, insert)
        .await
        .expect("the insert completes once the standby is back")
        .expect("insert task")
        .expect("insert");
    println!(
        "{tag} the held insert completed {:.3} s after {replica_name} was restarted",
        (done - restarted_at).as_secs_f64()
    );
    assert_eq!(
        wait_for_one_sync_standby(&cluster, &leader_name, 0).await,
        replica_name
    );

    // Turning synchronous mode off removes the sync object and the standby names.
    let response = reqwest::Client::new()
        .patch(format!("{}/config", leader.api_base()))
        .json(&json!({"synchronous_mode": false}))
        .send()
        .await
        .expect("PATCH /config");
    assert_eq!(response.status().as_u16(), 200, "PATCH /config");
    wait_until_ok("synchronous mode off", SYNC_DEADLINE, || async {
        let row = client
            .query_one("SHOW synchronous_standby_names", &[])
            .await?;
        let names: String = row.try_get(0)?;
        let sync = sync_object(&cluster).await;
        if names.is_empty() && sync.is_none() {
            Ok(())
        } else {
            bail!("synchronous_standby_names = {names:?}, sync object {sync:?}")
        }
    })
    .await;
}

/// Maintenance mode (Patroni's `_handle_dcs_error` while paused): with the DCS frozen for longer
/// than the ttl the primary is neither demoted nor stopped, and writes go on.
async fn paused_primary_outlives_a_dcs_outage(backend: Backend) {
    let cluster = TestCluster::start_on(backend, "pdcs", 2).await;
    let tag = format!("[pause-dcs/{}]", backend.label());
    // The role sampler below needs every member's Postgres up.
    let leader_name = cluster.wait_for_bootstrap().await;
    let leader = cluster.member(&leader_name);
    leader
        .create_probe_table()
        .await
        .expect("create the probe table");
    let response = reqwest::Client::new()
        .patch(format!("{}/config", leader.api_base()))
        .json(&json!({"pause": true}))
        .send()
        .await
        .expect("PATCH /config");
    assert_eq!(response.status().as_u16(), 200, "PATCH /config pause");
    for member in cluster.all() {
        wait_until_ok(
            &format!("{} paused", member.name()),
            SYNC_DEADLINE,
            || async {
                match member.patroni_status().await {
                    Some(s) if s.get("pause") == Some(&Value::Bool(true)) => Ok(()),
                    other => bail!("GET /patroni: {other:?}"),
                }
            },
        )
        .await;
    }
    let postmaster = leader.postmaster_pid().expect("leader postmaster pid");

    let roles = RoleSampler::start(&cluster.all()).await;
    let frozen_at = Instant::now();
    cluster.pause_dcs();
    let watch_until = frozen_at + cluster.ttl() + Duration::from_secs(5);
    let (mut accepted, mut refused) = (0, Vec::new());
    let mut id = 1;
    while Instant::now() < watch_until {
        match leader.write_probe(id).await {
            Ok(()) => accepted += 1,
            Err(e) => refused.push(format!(
                "+{:.1} s: {e:#}",
                frozen_at.elapsed().as_secs_f64()
            )),
        }
        id += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.resume_dcs();
    println!(
        "{tag} DCS frozen {:.1} s (ttl {} s): {accepted} writes accepted, {} refused",
        (watch_until - frozen_at).as_secs_f64(),
        cluster.ttl().as_secs(),
        refused.len()
    );
    assert!(
        refused.is_empty(),
        "writes refused while paused: {refused:?}"
    );
    assert_eq!(
        leader.postmaster_pid(),
        Some(postmaster),
        "the primary's postmaster was stopped"
    );
    assert!(matches!(leader.pg_in_recovery().await, Ok(false)));
    assert_eq!(cluster.wait_for_leader(SYNC_DEADLINE).await, leader_name);
    println!("{tag} {}", roles.summary());
    roles.assert_never_two_primaries();
}
