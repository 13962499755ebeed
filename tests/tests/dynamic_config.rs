//! The DCS `config` object (etcd key, or the `config` annotation of `<scope>-config` on
//! Kubernetes) is the cluster's dynamic configuration: seeded from `bootstrap.dcs` by the member
//! that initialized the cluster, then followed by every member. Garbage written there by someone
//! else is reported and changes nothing.

use std::time::Duration;

use regent_tests::config::Backend;
use regent_tests::{wait_until, TestCluster};
use serde_json::Value;

regent_tests::backend_tests! {
    a_parameter_changed_in_the_dcs_reaches_every_member: [etcd, kubernetes];
}

/// Whether a log line reports the garbage written into the config object, naming where it is.
fn reports_bad_config(backend: Backend, location: &str, line: &str) -> bool {
    match backend {
        Backend::Etcd => line.contains(&format!("{location}: config is not JSON")),
        Backend::Kubernetes { .. } => {
            let name = location.rsplit('/').next().unwrap_or(location);
            line.contains(name) && line.contains("'config' is not JSON")
        }
    }
}

async fn a_parameter_changed_in_the_dcs_reaches_every_member(backend: Backend) {
    let cluster = TestCluster::start_on(backend, "dyncfg", 3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(120)).await;
    cluster
        .wait_for_replicas_streaming(&leader, Duration::from_secs(120))
        .await;

    let location = cluster.dcs_location("config");
    let raw = cluster
        .dcs_get("config")
        .await
        .expect("config seeded at bootstrap");
    let mut config: Value = serde_json::from_str(&raw).expect("config is JSON");
    assert_eq!(config["ttl"], 10, "seeded from bootstrap.dcs: {config}");

    // Someone writes garbage: every member reports it, naming where it is, and keeps running on
    // its last good configuration.
    cluster
        .dcs_put("config", "{not json")
        .await
        .expect("write garbage");
    for member in cluster.all() {
        let location = location.as_str();
        wait_until(
            &format!("{} to report the bad config value", member.name()),
            Duration::from_secs(30),
            || async move {
                let log = member.log_contents();
                log.lines()
                    .any(|l| reports_bad_config(backend, location, l))
                    .then_some(())
            },
        )
        .await;
    }
    assert_eq!(
        cluster.members_answering("/primary", 200).await,
        vec![leader.clone()]
    );

    config["postgresql"]["parameters"]["work_mem"] = Value::from("8MB");
    let changed_at = std::time::Instant::now();
    cluster
        .dcs_put("config", &config.to_string())
        .await
        .expect("write new config");

    for member in cluster.all() {
        wait_until(
            &format!("work_mem = 8MB on {}", member.name()),
            Duration::from_secs(30),
            || async move { (member.show("work_mem").await.as_deref() == Some("8MB")).then_some(()) },
        )
        .await;
    }
    println!(
        "[dyncfg/{}] work_mem = 8MB on every member {:.3} s after the config change",
        backend.label(),
        changed_at.elapsed().as_secs_f64()
    );
    // Still one leader, nobody restarted for a reloadable parameter.
    assert_eq!(
        cluster.members_answering("/primary", 200).await,
        vec![leader]
    );
}
