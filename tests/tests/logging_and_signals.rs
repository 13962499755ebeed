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
