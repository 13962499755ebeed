//! Self-tests of the harness: they need etcd and Postgres 15, not the `regent` binary. A small
//! shell stand-in for the agent runs a bare Postgres so that the member fixture (process control,
//! SQL helpers, teardown) and the writer can be checked for real.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regent_tests::process::{
    check_executable_by, postgres_user_if_root, process_alive, processes_with_cwd, PostgresUser,
};
use regent_tests::writer::{missing_ids, written_ids};
use regent_tests::{
    free_ports, poll_until, wait_until, wait_until_ok, Etcd, Member, TestCluster, TestDir, Writer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_fixture_reads_writes_restarts_and_pauses() {
    let etcd = Etcd::launch().await;
    assert_eq!(etcd.get("/service/t/leader").await, None);

    etcd.put("/service/t/leader", "member-0")
        .await
        .expect("put leader");
    etcd.put("/service/t/members/member-0", "{\"role\":\"primary\"}")
        .await
        .expect("put member");
    etcd.put("/service/u/leader", "other-scope")
        .await
        .expect("put other scope");
    assert_eq!(
        etcd.get("/service/t/leader").await.as_deref(),
        Some("member-0")
    );
    let scope_t = etcd.get_prefix("/service/t/").await;
    assert_eq!(
        scope_t,
        vec![
            ("/service/t/leader".to_string(), "member-0".to_string()),
            (
                "/service/t/members/member-0".to_string(),
                "{\"role\":\"primary\"}".to_string()
            ),
        ]
    );

    // Leases: a key on a 30 s lease reports its remaining time; a plain key has none.
    let lease = etcd.grant_lease(30).await.expect("grant lease");
    etcd.put_with_lease("/service/t/members/member-1", "{}", lease)
        .await
        .expect("put on lease");
    let remaining = etcd
        .lease_remaining("/service/t/members/member-1")
        .await
        .expect("lease time to live")
        .expect("key has a lease");
    assert!(remaining <= Duration::from_secs(30) && remaining >= Duration::from_secs(25));
    assert_eq!(
        etcd.lease_remaining("/service/t/leader")
            .await
            .expect("ttl of plain key"),
        None
    );

    // Data survives a SIGKILL and a restart on the same directory and port.
    etcd.stop();
    assert!(
        etcd.try_get("/service/t/leader").await.is_err(),
        "stopped etcd still answers"
    );
    etcd.start().await;
    assert_eq!(
        etcd.get("/service/t/leader").await.as_deref(),
        Some("member-0")
    );

    // A paused etcd does not answer; it answers again after resume.
    etcd.pause();
    let started = Instant::now();
    assert!(
        etcd.try_get("/service/t/leader").await.is_err(),
        "paused etcd answered"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "request to paused etcd failed early"
    );
    etcd.resume();
    let value = wait_until_ok(
        "etcd to answer after resume",
        Duration::from_secs(10),
        || async { etcd.try_get("/service/t/leader").await },
    )
    .await;
    assert_eq!(value.as_deref(), Some("member-0"));

    assert_eq!(
        etcd.delete_prefix("/service/t/")
            .await
            .expect("delete prefix"),
        3
    );
    assert!(etcd.get_prefix("/service/t/").await.is_empty());
    assert_eq!(etcd.get_prefix("/service/u/").await.len(), 1);

    let pid = etcd.pid().expect("etcd runs");
    drop(etcd);
    assert!(
        !process_alive(pid),
        "etcd pid {pid} survived the fixture's drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_graceful_stop_then_start() {
    let etcd = Etcd::launch().await;
    etcd.put("k", "v").await.expect("put");
    etcd.stop_graceful(Duration::from_secs(10)).await;
    assert!(etcd.pid().is_none());
    etcd.start().await;
    assert_eq!(etcd.get("k").await.as_deref(), Some("v"));
}

#[test]
fn ports_are_never_handed_out_twice() {
    let ports = free_ports(300);
    let unique: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(unique.len(), ports.len());
    // Each was bindable when handed out.
    for port in ports.iter().take(20) {
        std::net::TcpListener::bind(("127.0.0.1", *port)).expect("handed-out port is free");
    }
}

#[tokio::test]
#[should_panic(expected = "waiting for the impossible")]
async fn wait_until_panics_with_what_on_timeout() {
    wait_until("the impossible", Duration::from_millis(200), || async {
        None::<()>
    })
    .await;
}

#[tokio::test]
#[should_panic(expected = "last state: still 42")]
async fn wait_until_ok_reports_last_error() {
    wait_until_ok("a change", Duration::from_millis(200), || async {
        Err::<(), _>(anyhow::anyhow!("still 42"))
    })
    .await;
}

#[tokio::test]
async fn wait_helpers_return_the_value() {
    let mut calls = 0;
    let value = wait_until("third call", Duration::from_secs(5), || {
        calls += 1;
        let ready = calls >= 3;
        async move { ready.then_some(7) }
    })
    .await;
    assert_eq!(value, 7);
    assert_eq!(
        poll_until(Duration::from_millis(100), || async { None::<u8> }).await,
        None
    );
}

#[test]
fn permission_check_names_the_blocking_directory() {
    let dir = TestDir::new("perm");
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).expect("mkdir");
    let binary = closed.join("bin");
    std::fs::write(&binary, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let stranger = PostgresUser {
        uid: 4242,
        gid: 4242,
    };

    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let err = check_executable_by(&binary, stranger).expect_err("0700 directory must block");
    assert!(err.contains(&closed.display().to_string()), "{err}");

    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    check_executable_by(&binary, stranger).expect("o+x directory and o+x file are enough");

    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let err = check_executable_by(&binary, stranger).expect_err("file without o+x must block");
    assert!(err.contains("not executable"), "{err}");
}

/// A stand-in for `regent`: runs a bare Postgres (initdb on first start) on the port and in the
/// data directory of the member's config; stops it on SIGTERM and exits 0.
const STAND_IN_AGENT: &str = r#"#!/bin/sh
set -e
config="$1"
dir=$(dirname "$config")
port=$(sed -n '/^postgresql:/,/^[a-z]/s/^  listen: 127.0.0.1://p' "$config")
bin=/usr/lib/postgresql/15/bin
echo "stand-in agent: config $config port $port uid $(id -u)"
if [ ! -f "$dir/data/PG_VERSION" ]; then
  "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync >/dev/null
fi
"$bin/postgres" -D "$dir/data" -p "$port" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$dir" -c fsync=off &
pg=$!
trap 'kill -INT $pg; wait $pg; echo "stand-in agent: stopped"; exit 0' TERM
wait $pg
"#;

fn write_stand_in(dir: &Path) -> PathBuf {
    let path = dir.join("stand-in-agent");
    std::fs::write(&path, STAND_IN_AGENT).expect("write stand-in agent");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

async fn wait_for_sql(member: &Member) {
    wait_until_ok(
        &format!("{} to accept SQL", member.name()),
        Duration::from_secs(60),
        || async { member.pg_in_recovery().await },
    )
    .await;
}

fn process_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_fixture_and_writer_with_stand_in_agent() {
    let scripts = TestDir::new("stand-in");
    let stand_in = write_stand_in(scripts.path());
    let cluster = TestCluster::builder("fake")
        .members(2)
        .binary(stand_in)
        .start()
        .await;
    let (m0, m1) = (&cluster.members[0], &cluster.members[1]);
    wait_for_sql(m0).await;
    wait_for_sql(m1).await;
    assert!(
        m0.log_contents().contains("stand-in agent: config"),
        "{}",
        m0.log_contents()
    );

    if let Some(postgres) = postgres_user_if_root() {
        let agent = m0.agent_pid().expect("agent runs");
        assert_eq!(
            process_uid(agent),
            Some(postgres.uid),
            "agent must run as postgres"
        );
    }
    let postmaster = m0
        .postmaster_pid()
        .expect("postmaster.pid names a live postmaster");
    assert!(processes_with_cwd(&m0.data_dir()).contains(&postmaster));

    // Probe helpers.
    m0.create_probe_table().await.expect("create probe table");
    m0.write_probe(1).await.expect("write probe");
    assert!(m0.has_probe(1).await.expect("probe lookup"));
    assert!(!m0.has_probe(2).await.expect("probe lookup"));
    assert_eq!(m0.probe_ids().await.expect("probe ids"), vec![1]);
    assert!(!m0.pg_in_recovery().await.expect("recovery state"));

    // m1 is up but read-only: the writer, which lists it first, must skip it.
    let m1_client = m1.pg_client().await.expect("connect m1");
    m1_client
        .batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
        .await
        .expect("make m1 read-only");
    m1_client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload m1");
    wait_until_ok("m1 read-only", Duration::from_secs(10), || async {
        let client = m1.pg_client().await?;
        let row = client
            .query_one("SHOW default_transaction_read_only", &[])
            .await?;
        let value: String = row.try_get(0)?;
        anyhow::ensure!(value == "on", "default_transaction_read_only = {value}");
        Ok(())
    })
    .await;

    let writer = Writer::start(&[m1, m0], Duration::from_secs(30)).await;
    writer.wait_for_acks(10, Duration::from_secs(30)).await;

    // Crash m0 entirely: the writer fails, then recovers once m0 is back.
    m0.kill9_with_postmaster();
    assert!(
        !process_alive(postmaster),
        "postmaster survived kill9_with_postmaster"
    );
    assert!(m0.postmaster_pid().is_none());
    assert!(
        processes_with_cwd(&m0.data_dir()).is_empty(),
        "instance processes survived"
    );
    let crashed_at = Instant::now();
    wait_until(
        "writer to notice the crash",
        Duration::from_secs(15),
        || async {
            writer
                .snapshot()
                .first_failure_after(crashed_at)
                .map(|_| ())
        },
    )
    .await;
    m0.restart();
    let recovered = wait_until("writer to write again", Duration::from_secs(60), || async {
        writer.snapshot().first_ack_after(crashed_at)
    })
    .await;
    let report = writer.stop().await;
    println!("{}", report.summary());
    println!(
        "write outage after crash: {:.3} s",
        (recovered - crashed_at).as_secs_f64()
    );
    assert!(report.longest_unavailability() > Duration::ZERO);
    assert!(!report.unavailable_windows().is_empty());

    let present = written_ids(&m0.pg_client().await.expect("connect m0"))
        .await
        .expect("ids");
    assert_eq!(missing_ids(&report.acked, &present), Vec::<i64>::new());
    let on_m1 = written_ids(&m1.pg_client().await.expect("connect m1")).await;
    assert!(
        on_m1.is_err(),
        "nothing may have been written to the read-only m1: {on_m1:?}"
    );

    // SIGTERM: the stand-in stops Postgres and exits 0.
    let status = m0
        .sigterm(Duration::from_secs(30))
        .await
        .expect("agent exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(!m0.agent_running());
    wait_until("m0 postmaster gone", Duration::from_secs(10), || async {
        m0.postmaster_pid().is_none().then_some(())
    })
    .await;

    // kill9 leaves Postgres running (orphaned); dropping the cluster must still clean it up.
    let m1_postmaster = m1.postmaster_pid().expect("m1 postmaster");
    m1.kill9();
    assert!(!m1.agent_running());
    assert!(
        process_alive(m1_postmaster),
        "kill9 must only kill the agent"
    );
    drop(m1_client);
    drop(cluster);
    assert!(
        !process_alive(m1_postmaster),
        "postmaster {m1_postmaster} survived teardown"
    );
}
