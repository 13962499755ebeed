//! `failsafe_mode` end to end, on etcd v3 and on the Kubernetes API test server: three members
//! (ttl 10, loop_wait 2, retry_timeout 3) with failsafe mode on.
//!
//! * The DCS freezes (SIGSTOP) for longer than 2×ttl: the primary keeps accepting every write,
//!   no replica promotes, and after the resume the same member holds the lock with every
//!   acknowledged write on every member.
//! * The DCS freezes and a replica dies: the primary stops accepting writes within ttl of the
//!   death (its last confirmed round was before it).
//! * The DCS misbehaves without being down — the API server answers 500, 429 and stalls in turn,
//!   etcd freezes and thaws every other second — for longer than 2×ttl: the primary stays up.
//!
//! A role sampler queries every member's Postgres every 20 ms throughout. Every test prints the
//! times it measured.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use regent_tests::config::Backend;
use regent_tests::{wait_until, wait_until_ok, Member, RoleSampler, TestCluster};
use serde_json::{json, Value};

/// A misbehaving DCS fails for longer than `retry_timeout` (so retries do not hide it) ...
const FAULT_SPELL: Duration = Duration::from_secs(4);
/// ... then answers for a moment, again and again.
const ANSWERING_SPELL: Duration = Duration::from_millis(400);

regent_tests::backend_tests! {
    frozen_dcs_primary_stays_up_with_failsafe: [etcd, kubernetes];
    frozen_dcs_and_a_dead_replica_make_the_primary_step_down: [etcd, kubernetes];
    misbehaving_dcs_primary_stays_up_with_failsafe: [etcd, kubernetes];
}

fn tag(cluster: &TestCluster) -> String {
    format!("[{}/{}]", cluster.scope(), cluster.backend().label())
}

/// Three members with failsafe mode on; returns the cluster and its leader once both replicas
/// stream and the leader publishes a failsafe topology naming all three, with the probe table
/// created on the leader.
async fn failsafe_cluster(backend: Backend, scope: &str) -> (TestCluster, String) {
    let started = Instant::now();
    let cluster = TestCluster::builder(scope)
        .backend(backend)
        .members(3)
        .configure(|_, cfg| {
            cfg.set("bootstrap.dcs.failsafe_mode", true);
        })
        .start()
        .await;
    let leader = cluster.wait_for_bootstrap().await;
    let names: Vec<String> = cluster.all().iter().map(|m| m.name().to_string()).collect();
    let member = cluster.member(&leader);
    wait_until_ok(
        "the leader to show a failsafe topology of all three members",
        Duration::from_secs(30),
        || async {
            let (code, body) = member.api_get("/failsafe").await?;
            ensure!(code == 200, "GET /failsafe: {code} {body}");
            let listed: Vec<&String> = body
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            ensure!(
                names.iter().all(|n| listed.contains(&n)),
                "GET /failsafe: {body}"
            );
            Ok(())
        },
    )
    .await;
    // The topology must be in the DCS itself, not only in the leader's memory.
    let stored = cluster.dcs_get("failsafe").await;
    let stored: Value = stored
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    for name in &names {
        assert!(stored.get(name).is_some(), "failsafe in the DCS: {stored}");
    }
    println!(
        "{} bootstrap: leader {leader}, replicas streaming and failsafe topology written after {:.3} s",
        tag(&cluster),
        started.elapsed().as_secs_f64()
    );
    member
        .create_probe_table()
        .await
        .expect("create probe table");
    (cluster, leader)
}

/// Write probe rows on `leader` every 50 ms until `until`. Returns the acknowledged ids and the
/// refused attempts (seconds since `since`).
async fn write_through(
    leader: &Member,
    first_id: i64,
    since: Instant,
    until: Instant,
) -> (Vec<i64>, Vec<f64>) {
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    let mut id = first_id;
    while Instant::now() < until {
        match leader.write_probe(id).await {
            Ok(()) => acked.push(id),
            Err(_) => refused.push((Instant::now() - since).as_secs_f64()),
        }
        id += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (acked, refused)
}

/// From the role samples: `leader` accepted writes without a break over `[from, to]`, and no
/// other member accepted writes at any time.
fn only_primary_throughout(
    roles: &RoleSampler,
    cluster: &TestCluster,
    leader: &str,
    from: Instant,
    to: Instant,
) {
    roles.assert_never_two_primaries();
    for other in cluster.others(leader) {
        assert!(
            roles.primary_spans(other.name()).is_empty(),
            "{} accepted writes: {}",
            other.name(),
            roles.summary()
        );
    }
    let covering = roles
        .primary_spans(leader)
        .iter()
        .any(|span| span.from <= from && span.to >= to);
    assert!(
        covering,
        "{leader} did not accept writes throughout: {}",
        roles.summary()
    );
}

/// Enough writes went through `leader` to tell, and it refused none while the DCS `during`.
fn every_write_accepted(leader: &str, acked: &[i64], refused: &[f64], during: &str) {
    assert!(
        acked.len() >= 50,
        "too few writes to prove anything: {}",
        acked.len()
    );
    assert!(
        refused.is_empty(),
        "{leader} refused writes while the DCS {during}: {refused:?}"
    );
}

/// After the DCS is back: `leader` leads again (lock and role), alone, and every acknowledged
/// write is on every member.
async fn same_leader_and_no_write_lost(cluster: &TestCluster, leader: &str, acked: &[i64]) {
    let resumed_at = Instant::now();
    let now_leader = cluster.wait_for_leader(Duration::from_secs(60)).await;
    assert_eq!(now_leader, leader, "the leader changed");
    println!(
        "{} {leader} holds the lock again {:.3} s after the DCS recovered",
        tag(cluster),
        resumed_at.elapsed().as_secs_f64()
    );
    for member in cluster.all() {
        wait_until_ok(
            &format!("{} to have every acknowledged write", member.name()),
            Duration::from_secs(60),
            || async {
                let ids = member.probe_ids().await?;
                let missing: Vec<&i64> = acked.iter().filter(|id| !ids.contains(id)).collect();
                ensure!(
                    missing.is_empty(),
                    "{} missing ({} in all): {:?}",
                    missing.len(),
                    acked.len(),
                    &missing[..missing.len().min(10)]
                );
                Ok(())
            },
        )
        .await;
    }
}

async fn failsafe_active(member: &Member) -> bool {
    member
        .patroni_status()
        .await
        .is_some_and(|s| s.get("failsafe_mode_is_active") == Some(&json!(true)))
}

async fn frozen_dcs_primary_stays_up_with_failsafe(backend: Backend) {
    let (cluster, leader_name) = failsafe_cluster(backend, "fsfrz").await;
    let tag = tag(&cluster);
    let leader = cluster.member(&leader_name);
    let frozen_for = cluster.ttl() * 2 + Duration::from_secs(5);
    let mut roles = RoleSampler::start(&cluster.all()).await;
    let paused_at = Instant::now();
    cluster.pause_dcs();
    let (acked, refused) = write_through(leader, 1, paused_at, paused_at + frozen_for).await;
    let active = failsafe_active(leader).await;
    cluster.resume_dcs();
    let resumed_at = Instant::now();
    roles.stop().await;
    println!(
        "{tag} DCS frozen {:.1} s: {} writes acknowledged, {} refused {refused:?}, failsafe_mode_is_active {active}; {}",
        frozen_for.as_secs_f64(),
        acked.len(),
        refused.len(),
        roles.summary()
    );
    only_primary_throughout(&roles, &cluster, &leader_name, paused_at, resumed_at);
    every_write_accepted(&leader_name, &acked, &refused, "was frozen");
    assert!(
        active,
        "{leader_name} did not report failsafe_mode_is_active while the DCS was frozen"
    );
    same_leader_and_no_write_lost(&cluster, &leader_name, &acked).await;
}

async fn frozen_dcs_and_a_dead_replica_make_the_primary_step_down(backend: Backend) {
    let (cluster, leader_name) = failsafe_cluster(backend, "fsdead").await;
    let tag = tag(&cluster);
    let leader = cluster.member(&leader_name);
    let others = cluster.others(&leader_name);
    let (victim, survivor) = (others[0], others[1]);
    let mut roles = RoleSampler::start(&cluster.all()).await;
    cluster.pause_dcs();
    let paused_at = Instant::now();
    wait_until(
        "the leader to run on failsafe rounds",
        cluster.ttl(),
        || async { failsafe_active(leader).await.then_some(()) },
    )
    .await;
    victim.kill9_with_postmaster();
    let killed_at = Instant::now();
    let ttl = cluster.ttl();
    let mut attempts: Vec<(f64, bool)> = Vec::new();
    let mut id = 1;
    while Instant::now() < killed_at + ttl + Duration::from_secs(3) {
        let ok = leader.write_probe(id).await.is_ok();
        attempts.push(((Instant::now() - killed_at).as_secs_f64(), ok));
        id += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    roles.stop().await;
    cluster.resume_dcs();
    let last_ok = attempts.iter().rev().find(|(_, ok)| *ok).map(|(t, _)| *t);
    let last_primary_sample = roles
        .primary_spans(&leader_name)
        .last()
        .map(|span| (span.to - killed_at).as_secs_f64());
    println!(
        "{tag} DCS frozen at -{:.3} s, {} killed at 0: {leader_name} last accepted a write at {}, last sampled as a primary at {}; {}",
        (killed_at - paused_at).as_secs_f64(),
        victim.name(),
        last_ok.map_or("never".into(), |t| format!("+{t:.3} s")),
        last_primary_sample.map_or("never".into(), |t| format!("+{t:.3} s")),
        roles.summary()
    );
    assert!(
        attempts.iter().any(|(t, _)| *t >= ttl.as_secs_f64()),
        "no write attempt after ttl: the check proves nothing"
    );
    let late: Vec<f64> = attempts
        .iter()
        .filter(|(t, ok)| *ok && *t >= ttl.as_secs_f64())
        .map(|(t, _)| *t)
        .collect();
    assert!(
        late.is_empty(),
        "{leader_name} accepted writes ttl after a member of the topology died: {late:?}"
    );
    roles.assert_never_two_primaries();
    assert!(
        roles.primary_spans(survivor.name()).is_empty(),
        "{} promoted while the DCS was frozen: {}",
        survivor.name(),
        roles.summary()
    );
    assert!(
        last_primary_sample.is_some_and(|t| t < ttl.as_secs_f64()),
        "{leader_name} still accepted writes ttl after a member of the topology died: {}",
        roles.summary()
    );
    wait_until(
        "a single primary after the DCS resumed",
        Duration::from_secs(90),
        || async { (cluster.sql_primaries().await.len() == 1).then_some(()) },
    )
    .await;
}

async fn misbehaving_dcs_primary_stays_up_with_failsafe(backend: Backend) {
    let (cluster, leader_name) = failsafe_cluster(backend, "fsflap").await;
    let tag = tag(&cluster);
    let leader = cluster.member(&leader_name);
    let misbehave_for = cluster.ttl() * 2 + Duration::from_secs(5);
    let mut roles = RoleSampler::start(&cluster.all()).await;
    let started = Instant::now();
    let until = started + misbehave_for;
    let faults: Arc<Mutex<Vec<String>>> = Arc::default();
    let chaos = {
        let faults = faults.clone();
        let cluster = &cluster;
        async move {
            let backend = cluster.backend();
            let mut round = 0u32;
            while Instant::now() < until {
                let at = (Instant::now() - started).as_secs_f64();
                match backend {
                    Backend::Kubernetes { .. } => {
                        let kube = cluster.kube();
                        let fault = match round % 3 {
                            0 => json!({"fail": {"status": 500}}),
                            1 => json!({"fail": {"status": 429, "retry_after": 1}}),
                            _ => json!({"stall_ms": 5000}),
                        };
                        kube.inject(fault.clone()).await;
                        faults
                            .lock()
                            .expect("faults")
                            .push(format!("+{at:.1} {fault}"));
                        tokio::time::sleep(FAULT_SPELL).await;
                        kube.clear_faults().await;
                        tokio::time::sleep(ANSWERING_SPELL).await;
                    }
                    Backend::Etcd => {
                        cluster.pause_dcs();
                        faults
                            .lock()
                            .expect("faults")
                            .push(format!("+{at:.1} frozen"));
                        tokio::time::sleep(FAULT_SPELL).await;
                        cluster.resume_dcs();
                        tokio::time::sleep(ANSWERING_SPELL).await;
                    }
                }
                round += 1;
            }
        }
    };
    let ((acked, refused), ()) = tokio::join!(write_through(leader, 1, started, until), chaos);
    let ended = Instant::now();
    roles.stop().await;
    println!(
        "{tag} DCS misbehaved {:.1} s ({} faults): {} writes acknowledged, {} refused {refused:?}; {}",
        misbehave_for.as_secs_f64(),
        faults.lock().expect("faults").len(),
        acked.len(),
        refused.len(),
        roles.summary()
    );
    only_primary_throughout(&roles, &cluster, &leader_name, started, ended);
    every_write_accepted(&leader_name, &acked, &refused, "misbehaved");
    same_leader_and_no_write_lost(&cluster, &leader_name, &acked).await;
}
