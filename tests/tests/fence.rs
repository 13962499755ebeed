//! The fence: a leader whose agent is frozen (SIGSTOP; its Postgres keeps running, as with a hung
//! runtime or a write blocked on a dead volume) is stopped by its fence process before another
//! member can take the lock — so it never acknowledges a write after a replica is promoted.
//!
//! How each guarantee is checked:
//! * no write acknowledged by the old primary after the promotion: a client connected directly
//!   to the old primary writes every 20 ms and records the wall-clock time of each
//!   acknowledgement; a sampler asks every other member `pg_is_in_recovery()` every 20 ms and
//!   records when it *sent* each query. The last acknowledgement of the old primary must come
//!   before the send time of the last sample that still found the new primary in recovery — a
//!   bound that errs against the test, not for it;
//! * the old postmaster is gone while the agent is still frozen (the agent could not have done
//!   it);
//! * every write the old primary acknowledged is on the new primary (the fast shutdown let the
//!   walsenders ship it);
//! * after SIGCONT the old member follows the new leader and streams from it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use regent_tests::config::Backend;
use regent_tests::probe::insert_probe;
use regent_tests::{wait_until, Member, TestCluster, BOOTSTRAP_DEADLINE};

const REJOIN_DEADLINE: Duration = Duration::from_secs(120);

regent_tests::backend_tests! {
    frozen_leader_agent_is_fenced_before_another_member_promotes: [etcd, kubernetes];
    without_the_fence_a_frozen_leader_agent_splits_the_brain: [etcd];
    required_watchdog_decides_who_may_lead: [etcd];
}

/// Acknowledged writes: id and wall-clock time of the acknowledgement.
type Acks = Arc<Mutex<Vec<(i64, DateTime<Utc>)>>>;

/// One answer of a member to `pg_is_in_recovery()`.
#[derive(Clone, Copy)]
struct RoleSample {
    sent: DateTime<Utc>,
    in_recovery: bool,
}

/// One session (1 s to connect), its connection driven by a task; `None` if it cannot be had.
async fn connect(config: &tokio_postgres::Config) -> Option<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(1),
        config.connect(tokio_postgres::NoTls),
    )
    .await
    .ok()?
    .ok()?;
    tokio::spawn(conn);
    Some(client)
}

/// Samples `pg_is_in_recovery()` of `member` every 20 ms until `stop` is set.
fn sample_roles(
    member: &Member,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<RoleSample>> {
    let config = member.pg_config();
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut client = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if client.is_none() {
                client = connect(&config).await;
            }
            if let Some(c) = &client {
                let sent = Utc::now();
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    c.query_one("SELECT pg_is_in_recovery()", &[]),
                )
                .await
                {
                    Ok(Ok(row)) => samples.push(RoleSample {
                        sent,
                        in_recovery: row.get(0),
                    }),
                    _ => client = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples
    })
}

async fn frozen_leader_agent_is_fenced_before_another_member_promotes(backend: Backend) {
    freeze_the_leader_agent(backend, true).await;
}

/// The same fault with `watchdog.fence: false`: the old primary goes on acknowledging writes
/// after a replica is promoted. This is what the fence is for, and it shows that the checks of
/// the test above do catch a split brain.
async fn without_the_fence_a_frozen_leader_agent_splits_the_brain(backend: Backend) {
    freeze_the_leader_agent(backend, false).await;
}

async fn freeze_the_leader_agent(backend: Backend, fenced: bool) {
    let cluster = TestCluster::builder(if fenced { "fence" } else { "nofence" })
        .backend(backend)
        .members(3)
        .configure(move |_, cfg| {
            cfg.set(
                "watchdog",
                serde_json::json!({"mode": "off", "fence": fenced}),
            );
        })
        .start()
        .await;
    let tag = format!(
        "[fence/{}{}]",
        backend.label(),
        if fenced { "" } else { "/no fence" }
    );
    let old_name = cluster.wait_for_bootstrap().await;
    let old = cluster.member(&old_name);
    old.create_probe_table().await.expect("create probe table");
    let old_postmaster = old.postmaster_pid().expect("the leader's postmaster pid");
    let agent = old.agent_pid().expect("the leader's agent pid");

    // A client on the old primary: one connection, re-opened after an error, a write every
    // 20 ms; every acknowledgement is recorded with its wall-clock time.
    let acks: Acks = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let config = old.pg_config();
        let acks = acks.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut id = 1_i64;
            let mut client = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if client.is_none() {
                    client = connect(&config).await;
                }
                if let Some(c) = &client {
                    match insert_probe(c, id).await {
                        Ok(()) => acks
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((id, Utc::now())),
                        Err(_) => client = None,
                    }
                    id += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let samplers: Vec<(String, _)> = cluster
        .others(&old_name)
        .into_iter()
        .map(|m| (m.name().to_string(), sample_roles(m, stop.clone())))
        .collect();
    wait_until(
        "20 writes acknowledged by the leader",
        Duration::from_secs(30),
        || async { (acks.lock().unwrap_or_else(|p| p.into_inner()).len() >= 20).then_some(()) },
    )
    .await;

    regent_tests::process::stop_process(agent);
    let frozen_at = Instant::now();
    let frozen_wall = Utc::now();
    println!("{tag} froze the agent of {old_name} (pid {agent})");

    // Another member takes over while the old agent stays frozen.
    let new_name = wait_until(
        "another member to become the primary",
        cluster.ttl() * 3,
        || async {
            for m in cluster.others(&old_name) {
                if let Ok(false) = m.pg_in_recovery().await {
                    return Some(m.name().to_string());
                }
            }
            None
        },
    )
    .await;
    let promoted_after = frozen_at.elapsed();
    let postmaster_alive = regent_tests::process::process_alive(old_postmaster);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer task");
    let mut samples = Vec::new();
    for (name, handle) in samplers {
        samples.push((name, handle.await.expect("sampler task")));
    }
    kill(Pid::from_raw(agent), Signal::SIGCONT).expect("SIGCONT the old leader's agent");

    let acks = acks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let last_ack = acks.last().map(|(_, t)| *t).expect("acknowledged writes");
    let new_samples = &samples
        .iter()
        .find(|(n, _)| *n == new_name)
        .expect("samples of the new primary")
        .1;
    let last_in_recovery = new_samples
        .iter()
        .rev()
        .find(|s| s.in_recovery)
        .map(|s| s.sent)
        .expect("the new primary was sampled in recovery");
    let secs = |t: DateTime<Utc>| (t - frozen_wall).num_milliseconds() as f64 / 1000.0;
    println!(
        "{tag} {new_name} primary {:.3} s after the freeze (last seen in recovery at +{:.3} s); \
         {old_name} acknowledged {} writes, the last at +{:.3} s; old postmaster alive: \
         {postmaster_alive}",
        promoted_after.as_secs_f64(),
        secs(last_in_recovery),
        acks.len(),
        secs(last_ack),
    );
    if !fenced {
        assert!(
            postmaster_alive && last_ack > last_in_recovery,
            "without the fence the old primary was expected to go on acknowledging writes"
        );
        return;
    }
    assert!(
        !postmaster_alive,
        "the old primary's postmaster still runs while its agent is frozen: nothing fenced it"
    );
    assert!(
        last_ack < last_in_recovery,
        "{old_name} acknowledged a write at +{:.3} s, after {new_name} may already have been \
         promoted (last seen in recovery at +{:.3} s)",
        secs(last_ack),
        secs(last_in_recovery)
    );
    // No member was primary at the same time as another, sample by sample.
    for (name, s) in &samples {
        if let Some(first_primary) = s.iter().find(|s| !s.in_recovery) {
            assert!(
                *name == new_name,
                "{name} was also primary (at +{:.3} s)",
                secs(first_primary.sent)
            );
        }
    }

    // The old member rejoins as a replica of the new leader.
    cluster
        .wait_for_member_streaming(&old_name, &new_name, REJOIN_DEADLINE)
        .await;
    let new = cluster.member(&new_name);
    let ids = new
        .probe_ids()
        .await
        .context("probe ids on the new primary")
        .expect("read the probe table");
    let lost: Vec<i64> = acks
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| ids.binary_search(id).is_err())
        .collect();
    println!(
        "{tag} {old_name} streams from {new_name} again; acknowledged writes missing: {}",
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost: {lost:?} (fast shutdown ships every acknowledged record)"
    );
}

/// `watchdog.mode: required`: a member without a working device never takes the lock and says
/// `watchdog_failed`; the leader kicks its device on every renew and closes it with the magic
/// character on shutdown. The device here is a plain file with the `testing` driver, which
/// records the bytes a real device would receive.
async fn required_watchdog_decides_who_may_lead(backend: Backend) {
    let cluster = TestCluster::builder("wdog")
        .backend(backend)
        .members(2)
        .start_agents(false)
        .configure(|index, cfg| {
            let data_dir = cfg
                .get("postgresql.data_dir")
                .and_then(|v| v.as_str())
                .map(std::path::PathBuf::from)
                .expect("data_dir");
            let member_dir = data_dir.parent().expect("member dir").to_path_buf();
            let device = if index == 0 {
                member_dir.join("no-such-watchdog")
            } else {
                member_dir.join("watchdog")
            };
            cfg.set(
                "watchdog",
                serde_json::json!({"mode": "required", "driver": "testing", "device": device}),
            );
        })
        .start()
        .await;
    let without = cluster.all()[0];
    let with = cluster.all()[1];
    let device = with.member_dir().join("watchdog");
    std::fs::write(&device, b"").expect("create the device file");
    regent_tests::process::chown_to_postgres(&device);
    without.start();
    with.start();

    let leader = cluster.wait_for_leader(BOOTSTRAP_DEADLINE).await;
    assert_eq!(
        leader,
        with.name(),
        "only the member with a working watchdog may lead"
    );
    let status = wait_until(
        "the member without a device to report watchdog_failed",
        Duration::from_secs(30),
        || async {
            without
                .patroni_status()
                .await
                .filter(|s| s["watchdog_failed"] == serde_json::json!(true))
        },
    )
    .await;
    println!(
        "[watchdog] {} reports {}",
        without.name(),
        status["watchdog_failed"]
    );
    // The leader kicks its device on every renew (loop_wait 2): several keepalives soon.
    let kicks = wait_until(
        "three keepalives on the leader's device",
        Duration::from_secs(30),
        || async {
            let bytes = std::fs::read(&device).ok()?;
            (bytes.iter().filter(|b| **b == b'1').count() >= 3).then_some(bytes.len())
        },
    )
    .await;
    assert!(
        !std::fs::read(&device).expect("device file").contains(&b'V'),
        "the device was closed while the member leads"
    );
    with.sigterm(Duration::from_secs(60))
        .await
        .expect("the leader stops on SIGTERM");
    let bytes = std::fs::read(&device).expect("device file");
    println!(
        "[watchdog] {kicks} keepalives seen while leading; last byte after shutdown: {:?}",
        bytes.last().map(|b| *b as char)
    );
    assert_eq!(
        bytes.last(),
        Some(&b'V'),
        "the device is closed with the magic character on shutdown"
    );
    // The remaining member still cannot lead: the lock stays free.
    let ttl = cluster.ttl();
    let end = std::time::Instant::now() + ttl + Duration::from_secs(4);
    while std::time::Instant::now() < end {
        assert!(
            !matches!(without.pg_in_recovery().await, Ok(false)),
            "the member without a working watchdog promoted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

regent_tests::backend_tests! {
    a_stopped_fence_is_replaced_and_the_leader_keeps_leading: [etcd];
}

/// The agent's `regent fence` children (pid), from /proc.
fn fence_children(agent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat.get(i + 2..))
                .and_then(|rest| rest.split(' ').nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(agent) && cmdline.ends_with(b"fence\0")
        })
        .filter(|pid| regent_tests::process::process_alive(*pid))
        .collect()
}

/// A fence that is stopped (SIGSTOP) could not act: the agent notices within a cycle, kills it
/// (continued later, it would act on a stale deadline) and starts a new one; the leader keeps
/// its lock and Postgres throughout.
async fn a_stopped_fence_is_replaced_and_the_leader_keeps_leading(backend: Backend) {
    let cluster = TestCluster::start_on(backend, "fencestop", 2).await;
    let leader_name = cluster.wait_for_leader(BOOTSTRAP_DEADLINE).await;
    let leader = cluster.member(&leader_name);
    let agent = leader.agent_pid().expect("agent pid");
    let postmaster = leader.postmaster_pid().expect("postmaster pid");
    let fences = fence_children(agent);
    let [old] = fences.as_slice() else {
        panic!("expected one fence child of the agent, found {fences:?}");
    };
    regent_tests::process::stop_process(*old);
    let new = wait_until(
        "a new fence in place of the stopped one",
        Duration::from_secs(20),
        || async {
            let now = fence_children(agent);
            (!regent_tests::process::process_alive(*old) && now.len() == 1 && now[0] != *old)
                .then(|| now[0])
        },
    )
    .await;
    println!("[fence/stop] fence {old} stopped; replaced by {new}");
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(30)).await,
        leader_name,
        "the leader changed"
    );
    assert_eq!(
        leader.postmaster_pid(),
        Some(postmaster),
        "Postgres was restarted"
    );
}
