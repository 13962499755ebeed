//! Logs are JSON with `log.type: json`; a member that cannot reach its DCS waits without touching
//! the data directory and still shuts down cleanly (exit 0) on SIGTERM.

use std::time::Duration;

use regent_tests::{
    free_port, regent_bin, regent_command, wait_until, MemberConfig, MemberSpec, TestDir,
};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_clean_sigterm_without_a_dcs() {
    let dir = TestDir::new("jsonlog");
    // Nothing listens on this port: the DCS is unreachable for the whole test.
    let dead_etcd = format!("127.0.0.1:{}", free_port());
    let spec = MemberSpec::new(
        "jsonlog",
        "jsonlog-0",
        dir.postgres_subdir("jsonlog-0"),
        vec![dead_etcd],
    );
    let mut config = MemberConfig::patroni(&spec);
    config.set("log.type", "json");
    config.set("log.level", "DEBUG");
    let config_path = spec.member_dir.join("regent.yml");
    config.write_to(&config_path);
    let log_path = spec.member_dir.join("regent.log");
    let log = std::fs::File::create(&log_path).expect("create log file");
    let mut cmd = regent_command(&regent_bin(), &spec.member_dir);
    cmd.arg(&config_path)
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log);
    let mut child = cmd.spawn().expect("spawn regent");

    // Wait until the agent has tried the DCS and said so.
    let log_path_ref = &log_path;
    wait_until(
        "the agent to report the unreachable DCS",
        Duration::from_secs(30),
        || async move {
            let text = std::fs::read_to_string(log_path_ref).ok()?;
            text.contains("DCS is not accessible").then_some(())
        },
    )
    .await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = wait_until(
        "regent to exit after SIGTERM",
        Duration::from_secs(30),
        || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        },
    )
    .await;
    assert_eq!(status.code(), Some(0), "clean shutdown exits 0");

    let text = std::fs::read_to_string(&log_path).expect("read log");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "expected several log lines, got {text}");
    for line in &lines {
        let record: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            record.get("timestamp").is_some() && record.get("level").is_some(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("\"received SIGTERM\"")),
        "the shutdown is logged: {text}"
    );
    // Without a DCS nothing may be decided: no data directory was created.
    assert!(
        !spec.data_dir().exists(),
        "data directory must not be created without a DCS"
    );
}

/// A second agent started with the name of a running member refuses to start (exit 1) and
/// touches neither the running member nor the DCS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_with_the_same_name_refuses_to_start() {
    let cluster = regent_tests::TestCluster::start("dupname", 1).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(120)).await;
    let member = cluster.member(&leader);

    // Same name and data directory, its own ports and config file.
    let dir = TestDir::new("dupname-second");
    let second_dir = dir.postgres_subdir("second");
    let mut config = member.config().clone();
    let api = format!("127.0.0.1:{}", free_port());
    let pg = format!("127.0.0.1:{}", free_port());
    config.set("restapi.listen", &api);
    config.set("restapi.connect_address", &api);
    config.set("postgresql.listen", &pg);
    config.set("postgresql.connect_address", &pg);
    let config_path = second_dir.join("regent.yml");
    config.write_to(&config_path);
    let output =
        regent_tests::run_regent([&config_path], &second_dir, Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already running"), "{stderr}");
    // The running member is untouched: still the leader, still answering.
    assert_eq!(cluster.dcs_leader().await.as_deref(), Some(leader.as_str()));
    assert!(
        member.is_primary().await,
        "the running member must still be primary"
    );
}
