//! The DCS `config` key is the cluster's dynamic configuration: seeded from `bootstrap.dcs` by
//! the member that initialized the cluster, then followed by every member. Garbage written there
//! by someone else is reported and changes nothing.

use std::time::Duration;

use regent_tests::{wait_until, TestCluster};
use serde_json::Value;

async fn show(member: &regent_tests::Member, setting: &str) -> Option<String> {
    let client = member.pg_client().await.ok()?;
    let row = client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .ok()?;
    row.try_get::<_, String>(0).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parameter_changed_in_the_dcs_reaches_every_member() {
    let cluster = TestCluster::start("dyncfg", 3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(120)).await;
    cluster
        .wait_for_replicas_streaming(&leader, Duration::from_secs(120))
        .await;

    let key = cluster.dcs_key("config");
    let raw = cluster
        .etcd
        .get(&key)
        .await
        .expect("config key seeded at bootstrap");
    let mut config: Value = serde_json::from_str(&raw).expect("config is JSON");
    assert_eq!(config["ttl"], 10, "seeded from bootstrap.dcs: {config}");

    // Someone writes garbage: every member reports it, naming the key, and keeps running on its
    // last good configuration.
    cluster
        .etcd
        .put(&key, "{not json")
        .await
        .expect("write garbage");
    for member in cluster.all() {
        let key = key.clone();
        wait_until(
            &format!("{} to report the bad config value", member.name()),
            Duration::from_secs(30),
            || {
                let key = key.clone();
                async move {
                    let log = member.log_contents();
                    log.lines()
                        .any(|l| l.contains(&format!("{key}: config is not JSON")))
                        .then_some(())
                }
            },
        )
        .await;
    }
    assert_eq!(
        cluster.members_answering("/primary", 200).await,
        vec![leader.clone()]
    );

    config["postgresql"]["parameters"]["work_mem"] = Value::from("8MB");
    cluster
        .etcd
        .put(&key, &config.to_string())
        .await
        .expect("write new config");

    for member in cluster.all() {
        wait_until(
            &format!("work_mem = 8MB on {}", member.name()),
            Duration::from_secs(30),
            || async move { (show(member, "work_mem").await.as_deref() == Some("8MB")).then_some(()) },
        )
        .await;
    }
    // Still one leader, nobody restarted for a reloadable parameter.
    assert_eq!(
        cluster.members_answering("/primary", 200).await,
        vec![leader]
    );
}
