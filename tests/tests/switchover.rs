//! A switchover requested through the DCS failover object — what Patroni's REST API and
//! patronictl's fallback write — on a 3-member cluster: the leader hands over to the named
//! candidate, the old leader follows it without a re-clone, nothing acknowledged is lost, writes
//! are unavailable for a bounded time, two members never accept writes at once, and the request
//! is removed.

use std::time::{Duration, Instant};

use regent_tests::config::Backend;
use regent_tests::writer::assert_acked_rows_on;
use regent_tests::{wait_until, RoleSampler, TestCluster, Timing, Writer};

/// Longest time the writer may go without an acknowledged write around the switchover: the old
/// leader's fast shutdown with its checkpoint, the lock handover (itself bounded by
/// loop_wait / 2 below), the candidate's promotion, and the writer's reconnect through hosts
/// that refuse or time out (1 s connect timeout each). Measured 0.15–0.52 s on a quiet 2-core
/// machine and up to 2.1 s with a load average of 11; a handover that waited for one loop_wait
/// (5 s) would exceed it.
const SWITCHOVER_MAX_UNAVAILABILITY: Duration = Duration::from_secs(4);

regent_tests::backend_tests! {
    switchover_through_the_dcs_failover_object: [etcd, kubernetes, kubernetes_endpoints];
}

async fn switchover_through_the_dcs_failover_object(backend: Backend) {
    // A long loop_wait: every step of the handover must be driven by DCS events, not by the
    // next cycle (a candidate that waited for one would need at least 5 s).
    let timing = Timing {
        ttl: 20,
        loop_wait: 5,
        retry_timeout: 5,
    };
    let cluster = TestCluster::builder("swo")
        .backend(backend)
        .members(3)
        .timing(timing)
        .start()
        .await;
    let tag = format!("[swo/{}]", backend.label());
    let old_name = cluster.wait_for_bootstrap().await;
    let old = cluster.member(&old_name);
    let candidate = cluster.others(&old_name)[0].name().to_string();

    // A clone wipes the data directory: this file survives only if the old leader rejoins by
    // following (or rewinding), as a switchover must allow.
    let marker = old.data_dir().join("regent-test-marker");
    std::fs::write(&marker, b"kept").expect("write marker into the old leader's data dir");

    let writer = Writer::start(&cluster.all(), Duration::from_secs(30)).await;
    writer.wait_for_acks(6, Duration::from_secs(10)).await;

    let roles = RoleSampler::start(&cluster.all()).await;
    let requested_at = Instant::now();
    cluster
        .request_switchover(&old_name, &candidate)
        .await
        .expect("write the failover object");

    let new_name = wait_until(
        "a leader other than the old one",
        Duration::from_secs(30),
        || async {
            let leader = cluster.dcs_leader().await?;
            (leader != old_name).then_some(leader)
        },
    )
    .await;
    let handover = requested_at.elapsed();
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(30)).await,
        new_name
    );
    println!(
        "{tag} switchover {old_name} -> {candidate}: {new_name} holds the lock after {:.3} s",
        handover.as_secs_f64()
    );
    assert_eq!(new_name, candidate, "the named candidate took over");
    assert!(
        handover < Duration::from_secs(u64::from(timing.loop_wait)) / 2,
        "the lock moved after {handover:?}: a step waited for a loop (loop_wait {} s)",
        timing.loop_wait
    );

    cluster
        .wait_for_member_streaming(&old_name, &new_name, Duration::from_secs(60))
        .await;
    wait_until(
        "the failover object removed by the new leader",
        Duration::from_secs(20),
        || async {
            let request = cluster.dcs_get("failover").await;
            request
                .filter(|r| !failover_request_is_empty(r))
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(
        marker.exists(),
        "the old leader's data directory was recreated: it was cloned instead of following"
    );

    let report = writer.stop().await;
    // Longest stretch without an acknowledged write from the request on: failed attempts and
    // attempts that hang (a connect to a host that is going away) both count.
    let unavailable = report.longest_ack_gap(requested_at, report.stopped);
    println!("{tag} writer: {}", report.summary());
    println!(
        "{tag} write unavailability during the switchover: {:.3} s without an acknowledged \
         write over {:.1} s (bound {:.1} s)",
        unavailable.as_secs_f64(),
        (report.stopped - requested_at).as_secs_f64(),
        SWITCHOVER_MAX_UNAVAILABILITY.as_secs_f64()
    );
    assert!(
        unavailable <= SWITCHOVER_MAX_UNAVAILABILITY,
        "writes were unavailable for {unavailable:?} during the switchover"
    );
    println!("{tag} {}", roles.summary());
    roles.assert_never_two_primaries();
    assert_acked_rows_on(cluster.member(&new_name), &report.acked).await;
}

/// Patroni clears the Kubernetes failover object by nulling its annotations; etcd deletes the
/// key. Either way nothing is requested any more.
fn failover_request_is_empty(raw: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(map)) => map.values().all(|v| v.is_null()),
        Ok(serde_json::Value::Null) => true,
        _ => raw.trim().is_empty(),
    }
}
