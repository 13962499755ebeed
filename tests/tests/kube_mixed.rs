//! A mixed cluster on the Kubernetes API test server: two Regent members and the real Patroni in
//! one scope, sharing the ConfigMaps and Pods. A Regent member bootstraps and leads, the Patroni
//! member clones and streams from it; then a switchover to the Patroni member is requested
//! through the DCS (the `<scope>-failover` object, as Patroni's REST API and patronictl write
//! it) and the Regent members follow the Patroni leader with nothing acknowledged lost.
//!
//! Patroni is looked up at $PATRONI_BIN, else /opt/regent-patroni/bin/patroni (where .ci/run
//! installs it); without it the test fails.

use std::time::{Duration, Instant};

use regent_tests::config::Backend;
use regent_tests::tools::patroni_bin;
use regent_tests::writer::assert_acked_rows_on;
use regent_tests::{wait_until, wait_until_ok, TestCluster, Writer};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_and_regent_share_a_kubernetes_cluster_and_switch_over() {
    let patroni_path = patroni_bin();
    let cluster = TestCluster::builder("kmix")
        .members(3)
        .backend(Backend::Kubernetes {
            use_endpoints: false,
        })
        .binary_for(2, patroni_path)
        .start_agents(false)
        .start()
        .await;
    let regent = cluster.member("kmix-0");
    let patroni = cluster.member("kmix-2");

    // A Regent member bootstraps; the second Regent member and the Patroni member join.
    let started = Instant::now();
    regent.start();
    let leader = cluster.wait_for_leader(Duration::from_secs(120)).await;
    assert_eq!(leader, "kmix-0");
    cluster.member("kmix-1").start();
    patroni.start();
    cluster
        .wait_for_replicas_streaming("kmix-0", Duration::from_secs(120))
        .await;
    println!(
        "[kmix] Regent leader kmix-0, Regent kmix-1 and Patroni kmix-2 streaming after {:.3} s",
        started.elapsed().as_secs_f64()
    );
    regent.create_probe_table().await.expect("probe table");
    for id in 1..=10 {
        regent
            .write_probe(id)
            .await
            .expect("write on the Regent leader");
    }
    cluster
        .wait_for_probe_on(&cluster.all(), 10, Duration::from_secs(30))
        .await;

    // Both agents publish themselves the same way: Pod role labels and status annotations.
    cluster
        .wait_for_pod_role("kmix-0", "primary", Duration::from_secs(10))
        .await;
    for name in ["kmix-1", "kmix-2"] {
        cluster
            .wait_for_pod_role(name, "replica", Duration::from_secs(20))
            .await;
    }
    let status = cluster
        .dcs_get("members/kmix-2")
        .await
        .expect("Patroni's Pod has a status annotation");
    let status: Value = serde_json::from_str(&status).expect("status annotation is JSON");
    assert_eq!(status["role"], "replica", "{status}");
    assert_eq!(status["state"], "running", "{status}");
    let (code, body) = regent.api_get("/cluster").await.expect("GET /cluster");
    assert_eq!(code, 200, "{body}");
    let names: Vec<&str> = body["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["kmix-0", "kmix-1", "kmix-2"], "{body}");

    // Switchover to the Patroni member, requested through the failover object while a client
    // keeps writing.
    let writer = Writer::start(&cluster.all(), Duration::from_secs(30)).await;
    writer.wait_for_acks(10, Duration::from_secs(30)).await;
    let requested_at = Instant::now();
    cluster
        .request_switchover("kmix-0", "kmix-2")
        .await
        .expect("write the failover object");
    wait_until_ok(
        "the Patroni member to hold the lock",
        Duration::from_secs(60),
        || async {
            match cluster.dcs_leader().await {
                Some(leader) if leader == "kmix-2" => Ok(()),
                other => anyhow::bail!("leader annotation {other:?}"),
            }
        },
    )
    .await;
    let locked_after = requested_at.elapsed();
    let mut next_id = 1_000;
    wait_until(
        "Patroni's Postgres to accept writes",
        Duration::from_secs(60),
        || {
            next_id += 1;
            let id = next_id;
            async move { patroni.write_probe(id).await.ok() }
        },
    )
    .await;
    println!(
        "[kmix] switchover kmix-0 -> kmix-2 (Patroni): lock after {:.3} s, writes on Patroni \
         after {:.3} s",
        locked_after.as_secs_f64(),
        requested_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(30)).await,
        "kmix-2"
    );

    // Both Regent members follow the Patroni leader.
    let followed_at = Instant::now();
    cluster
        .wait_for_replicas_streaming("kmix-2", Duration::from_secs(120))
        .await;
    println!(
        "[kmix] Regent members stream from the Patroni leader {:.3} s later",
        followed_at.elapsed().as_secs_f64()
    );
    cluster
        .wait_for_pod_role("kmix-2", "primary", Duration::from_secs(20))
        .await;
    for name in ["kmix-0", "kmix-1"] {
        cluster
            .wait_for_pod_role(name, "replica", Duration::from_secs(20))
            .await;
    }
    wait_until(
        "the failover object cleared by the new leader",
        Duration::from_secs(30),
        || async { cluster.dcs_get("failover").await.is_none().then_some(()) },
    )
    .await;

    // Nothing acknowledged was lost, and the new leader's rows reach the Regent replicas.
    wait_until(
        "the writer acknowledged on the new leader",
        Duration::from_secs(30),
        || async { writer.snapshot().first_ack_after(followed_at) },
    )
    .await;
    let report = writer.stop().await;
    println!("[kmix] {}", report.summary());
    assert_acked_rows_on(patroni, &report.acked).await;
    cluster
        .wait_for_probe_on(&cluster.all(), next_id, Duration::from_secs(30))
        .await;
    for member in cluster.all() {
        let ids = member.probe_ids().await.expect("probe ids");
        assert!(
            (1..=10).all(|id| ids.contains(&id)),
            "{}: rows written before the switchover lost: {ids:?}",
            member.name()
        );
    }
}
