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

/// `failsafe_mode` across implementations on etcd: a Regent leader, a Patroni replica and a
/// Regent replica. With etcd frozen for longer than 2×ttl, the Regent leader's `POST /failsafe`
/// is accepted by the Patroni replica (and the Regent one) and it keeps taking writes; after a
/// switchover to the Patroni member, the Patroni leader's calls are accepted by the Regent
/// replicas and it keeps taking writes through a second freeze. No member promotes on its own
/// and the leader keeps the lock each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_mode_works_between_patroni_and_regent() {
    let cluster = TestCluster::builder("mixfs")
        .members(3)
        .binary_for(1, patroni_bin())
        .configure(|_, cfg| {
            cfg.set("bootstrap.dcs.failsafe_mode", true);
        })
        .start_agents(false)
        .start()
        .await;
    let regent = cluster.member("mixfs-0");
    regent.start();
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(120)).await,
        "mixfs-0"
    );
    cluster.member("mixfs-1").start();
    cluster.member("mixfs-2").start();
    cluster
        .wait_for_replicas_streaming("mixfs-0", Duration::from_secs(120))
        .await;
    regent.create_probe_table().await.expect("probe table");
    let mut next_id = 1;
    for leader in ["mixfs-0", "mixfs-1"] {
        let member = cluster.member(leader);
        // The leader's topology names all three members before the DCS goes away.
        regent_tests::wait_until_ok(
            &format!("{leader}'s failsafe topology to list every member"),
            Duration::from_secs(60),
            || async {
                let stored = cluster.dcs_get("failsafe").await.unwrap_or_default();
                let topology: serde_json::Value = serde_json::from_str(&stored).unwrap_or_default();
                anyhow::ensure!(
                    ["mixfs-0", "mixfs-1", "mixfs-2"]
                        .iter()
                        .all(|n| topology.get(n).is_some()),
                    "failsafe: {stored:?}"
                );
                Ok(())
            },
        )
        .await;
        let freeze = cluster.ttl() * 2 + Duration::from_secs(5);
        let paused_at = Instant::now();
        cluster.pause_dcs();
        let mut refused = Vec::new();
        let mut other_primaries = Vec::new();
        let mut acked = Vec::new();
        while paused_at.elapsed() < freeze {
            match member.write_probe(next_id).await {
                Ok(()) => acked.push(next_id),
                Err(e) => refused.push(format!("+{:.1} s: {e}", paused_at.elapsed().as_secs_f64())),
            }
            next_id += 1;
            for primary in cluster.sql_primaries().await {
                if primary != leader {
                    other_primaries.push(primary);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cluster.resume_dcs();
        println!(
            "[mixfs] {leader} through a {:.0} s etcd freeze: {} writes acknowledged, refused {refused:?}, other primaries {other_primaries:?}",
            freeze.as_secs_f64(),
            acked.len()
        );
        assert!(
            acked.len() >= 20,
            "too few writes to prove anything: {}",
            acked.len()
        );
        assert!(refused.is_empty(), "{leader} refused writes: {refused:?}");
        assert!(
            other_primaries.is_empty(),
            "another primary: {other_primaries:?}"
        );
        assert_eq!(
            cluster.wait_for_leader(Duration::from_secs(60)).await,
            leader,
            "the leader changed after the freeze"
        );
        let last = *acked.last().expect("acknowledged writes");
        cluster
            .wait_for_probe_on(&cluster.all(), last, Duration::from_secs(60))
            .await;
        if leader == "mixfs-0" {
            // Hand over to the Patroni member for the second round, once its member key (gone
            // with its lease during the freeze) is back and the leader can see it.
            wait_until(
                "the Patroni member back in the leader's view of the cluster",
                Duration::from_secs(60),
                || async {
                    let (_, body) = regent.api_get("/cluster").await.ok()?;
                    body["members"]
                        .as_array()?
                        .iter()
                        .any(|m| m["name"] == "mixfs-1" && m["state"] == "streaming")
                        .then_some(())
                },
            )
            .await;
            let resp = reqwest::Client::new()
                .post(format!("{}/switchover", regent.api_base()))
                .timeout(Duration::from_secs(60))
                .json(&serde_json::json!({"leader": "mixfs-0", "candidate": "mixfs-1"}))
                .send()
                .await
                .expect("POST /switchover");
            // A Patroni replica that accepted failsafe calls follows their sender for a ttl
            // after the last one, so right after the freeze the candidate may take a ttl to
            // act: the answer is then 503 "Switchover status unknown" and the switchover
            // completes later, as with Patroni's own leader.
            let code = resp.status().as_u16();
            assert!(
                code == 200 || code == 503,
                "switchover: {code} {}",
                resp.text().await.unwrap_or_default()
            );
            assert_eq!(
                cluster
                    .wait_for_leader(cluster.ttl() + Duration::from_secs(60))
                    .await,
                "mixfs-1"
            );
            cluster
                .wait_for_replicas_streaming("mixfs-1", Duration::from_secs(120))
                .await;
        }
    }
}
