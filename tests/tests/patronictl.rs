//! The real patronictl drives a Regent cluster on etcd through Regent's REST API: pause and
//! resume (PATCH /config, members report it), switchover --force (POST /switchover), restart
//! --force (POST /restart). Skipped with a message when patronictl is not installed
//! (/opt/regent-patroni/bin/patronictl, or next to $PATRONI_BIN).

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use regent_tests::{wait_until, TestCluster};

const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(120);

fn patronictl_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATRONI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/regent-patroni/bin/patroni"))
        .with_file_name("patronictl");
    path.exists().then_some(path)
}

fn run(bin: &PathBuf, dcs_url: &str, args: &[&str]) -> String {
    let out: Output = std::process::Command::new(bin)
        .arg("--dcs-url")
        .arg(dcs_url)
        .args(args)
        .env_remove("PATRONICTL_CONFIG_FILE")
        .output()
        .expect("run patronictl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "patronictl {args:?} failed ({:?}): {text}",
        out.status.code()
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patronictl_operates_a_regent_cluster() {
    let Some(bin) = patronictl_bin() else {
        println!("[patronictl] not installed: skipping");
        return;
    };
    let cluster = TestCluster::start("pctl", 3).await;
    let leader = cluster.wait_for_leader(BOOTSTRAP_DEADLINE).await;
    cluster
        .wait_for_replicas_streaming(&leader, BOOTSTRAP_DEADLINE)
        .await;
    let url = format!("etcd3://{}", cluster.etcd().client_addr());

    // pause --wait returns once every member reports the pause.
    let out = run(&bin, &url, &["pause", "pctl", "--wait"]);
    assert!(
        out.contains("Success: cluster management is paused"),
        "{out}"
    );
    for m in cluster.all() {
        let status = m.patroni_status().await.unwrap_or_default();
        assert_eq!(status["pause"], true, "{}: {status}", m.name());
    }
    let list = run(&bin, &url, &["list", "pctl"]);
    assert!(list.contains("Maintenance mode: on"), "{list}");
    let out = run(&bin, &url, &["resume", "pctl", "--wait"]);
    assert!(
        out.contains("Success: cluster management is resumed"),
        "{out}"
    );

    // switchover --force to a named candidate, through POST /switchover on the leader.
    let candidate = cluster.others(&leader)[0].name().to_string();
    let out = run(
        &bin,
        &url,
        &[
            "switchover",
            "pctl",
            "--leader",
            &leader,
            "--candidate",
            &candidate,
            "--force",
        ],
    );
    assert!(
        out.contains(&format!("Successfully switched over to \"{candidate}\"")),
        "{out}"
    );
    wait_until("the candidate to lead", Duration::from_secs(60), || async {
        (cluster.dcs_leader().await.as_deref() == Some(candidate.as_str())).then_some(())
    })
    .await;
    cluster
        .wait_for_member_streaming(&leader, &candidate, Duration::from_secs(60))
        .await;

    // restart --force of the old leader, now a replica.
    let out = run(&bin, &url, &["restart", "pctl", &leader, "--force"]);
    assert!(
        out.contains(&format!("Success: restart on member {leader}")),
        "{out}"
    );
    cluster
        .wait_for_member_streaming(&leader, &candidate, Duration::from_secs(60))
        .await;
}
