//! Format compatibility with the real Patroni (from PyPI) on etcd v3: a Patroni member joins a
//! cluster bootstrapped by Regent, clones from and streams from the Regent leader, takes over
//! when the Regent leader shuts down, and the Regent member then rejoins as its replica; finally
//! Regent takes the lead back. Every step reads and writes the same DCS keys.
//!
//! Patroni is looked up at $PATRONI_BIN, else /opt/regent-patroni/bin/patroni (where .ci/run
//! installs it in a virtualenv the postgres user can run).

use std::time::{Duration, Instant};

use regent_tests::tools::patroni_bin;
use regent_tests::{wait_until, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_and_regent_members_share_one_cluster() {
    let cluster = TestCluster::builder("mix")
        .members(2)
        .binary_for(1, patroni_bin())
        .start_agents(false)
        .start()
        .await;
    let regent = cluster.member("mix-0");
    let patroni = cluster.member("mix-1");

    // Regent bootstraps the cluster; the Patroni member joins it.
    regent.start();
    let leader = cluster.wait_for_leader(Duration::from_secs(120)).await;
    assert_eq!(leader, "mix-0");
    patroni.start();
    cluster
        .wait_for_member_streaming("mix-1", "mix-0", Duration::from_secs(120))
        .await;
    regent.create_probe_table().await.expect("probe table");
    regent
        .write_probe(1)
        .await
        .expect("write on the Regent leader");
    cluster
        .wait_for_probe_on(&[patroni], 1, Duration::from_secs(30))
        .await;
    let (status, body) = regent.api_get("/cluster").await.expect("GET /cluster");
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["mix-0", "mix-1"], "{body}");

    // patronictl reads what Regent wrote: the Regent member is the Leader.
    let patronictl = patroni_bin().with_file_name("patronictl");
    let output = std::process::Command::new(&patronictl)
        .args([
            "--dcs-url",
            &format!("etcd3://{}", cluster.etcd().client_addr()),
            "list",
            "mix",
        ])
        .env_remove("PATRONICTL_CONFIG_FILE")
        .output()
        .expect("run patronictl");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "patronictl list failed: {table} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let leader_row = table
        .lines()
        .find(|l| l.contains("mix-0"))
        .unwrap_or_default();
    assert!(
        leader_row.contains("Leader") && leader_row.contains("running"),
        "{table}"
    );
    let replica_row = table
        .lines()
        .find(|l| l.contains("mix-1"))
        .unwrap_or_default();
    assert!(
        replica_row.contains("Replica") && replica_row.contains("streaming"),
        "{table}"
    );

    // The Regent leader shuts down: Patroni takes the released lock and promotes.
    let stopped_at = Instant::now();
    let status = regent
        .sigterm(Duration::from_secs(60))
        .await
        .expect("regent exits");
    assert_eq!(status.code(), Some(0));
    wait_until("Patroni to take the lock", Duration::from_secs(60), || {
        let cluster = &cluster;
        async move { (cluster.dcs_leader().await.as_deref() == Some("mix-1")).then_some(()) }
    })
    .await;
    wait_until(
        "Patroni's Postgres to accept writes",
        Duration::from_secs(60),
        || async move { patroni.write_probe(2).await.ok() },
    )
    .await;
    println!(
        "[mix] Regent → Patroni handover: writes on Patroni after {:.3} s",
        stopped_at.elapsed().as_secs_f64()
    );

    // Regent comes back and follows the Patroni leader (rewinding its old timeline if needed).
    regent.restart();
    cluster
        .wait_for_member_streaming("mix-0", "mix-1", Duration::from_secs(120))
        .await;
    cluster
        .wait_for_probe_on(&[regent], 2, Duration::from_secs(30))
        .await;
    assert!(
        regent.has_probe(1).await.expect("query"),
        "row 1 kept on the Regent member"
    );

    // Patroni shuts down: Regent takes the lead back and accepts writes.
    let status = patroni
        .sigterm(Duration::from_secs(60))
        .await
        .expect("patroni exits");
    assert!(status.success(), "patroni exit status {status:?}");
    wait_until(
        "Regent to take the lock back",
        Duration::from_secs(60),
        || {
            let cluster = &cluster;
            async move { (cluster.dcs_leader().await.as_deref() == Some("mix-0")).then_some(()) }
        },
    )
    .await;
    wait_until(
        "Regent's Postgres to accept writes",
        Duration::from_secs(60),
        || async move { regent.write_probe(3).await.ok() },
    )
    .await;
    assert!(
        regent.has_probe(2).await.expect("query"),
        "row written on Patroni kept"
    );
    // Timeline history written by both agents is one readable list.
    let history = cluster
        .etcd()
        .get(&cluster.dcs_key("history"))
        .await
        .expect("history key");
    let rows: serde_json::Value = serde_json::from_str(&history).expect("history is JSON");
    assert!(
        rows.as_array().is_some_and(|r| r.len() >= 2),
        "two promotions recorded: {rows}"
    );
}
