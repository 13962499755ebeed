//! Integration-test harness for `regent`: a real etcd, real Postgres 15 members driven by the
//! `regent` binary, and helpers to observe them through the Patroni REST API, etcd and SQL.
//!
//! Everything listens on 127.0.0.1 only. When the tests run as root, `regent` (and so Postgres)
//! runs as the `postgres` user and every directory it needs is handed to that user.
//!
//! Environment:
//! * `REGENT_BIN` — binary to test (default `<workspace>/target/debug/regent`).
//! * `ETCD_BIN` — etcd server (default `/usr/bin/etcd`).
//! * `REGENT_KEEP_TEST_DIRS` — keep temporary directories after passing tests too.
//! * `REGENT_TEST_SHOW_LOGS` — print member log tails even when a test passes.

pub mod citus;
pub mod cluster;
pub mod config;
pub mod etcd;
pub mod kube;
pub mod kube_api;
pub mod member;
pub mod ports;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod roles;
pub mod server;
pub mod tools;
pub mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

pub use cluster::{ClusterBuilder, TestCluster};
pub use config::{MemberConfig, MemberSpec, Timing, FAST_TIMING};
pub use etcd::Etcd;
pub use member::{regent_command, Member};
pub use ports::{free_port, free_ports};
pub use process::TestDir;
pub use roles::RoleSampler;
pub use writer::{Writer, WriterReport};

/// How long a new cluster may take to elect its leader and to stream to each replica: initdb,
/// first start and base backups on a 2-core machine.
pub const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(120);

/// How often the wait helpers poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// The `regent` binary under test: `$REGENT_BIN`, else `<workspace>/target/debug/regent`.
///
/// Panics with instructions if it is missing, or (when running as root) if the postgres user
/// cannot execute it because a directory on its path is not searchable.
pub fn regent_bin() -> PathBuf {
    let path = match std::env::var_os("REGENT_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target/debug/regent"),
    };
    let path = std::fs::canonicalize(&path).unwrap_or_else(|_| {
        panic!(
            "regent binary not found at {}: build it with `cargo build -p agent` \
             (or point REGENT_BIN at a built binary)",
            path.display()
        )
    });
    if let Some(user) = process::postgres_user_if_root() {
        if let Err(obstacle) = process::check_executable_by(&path, user) {
            panic!(
                "regent binary {} must be runnable by the postgres user (uid {}), because the \
                 tests run as root and Postgres refuses root: {obstacle}. scripts/test.sh fixes \
                 the permissions, or set REGENT_BIN to a copy under /tmp",
                path.display(),
                user.uid
            );
        }
    }
    path
}

/// Poll `check` every `POLL_INTERVAL` until it returns `Some`, and return that value; panic
/// naming `what` if `deadline` passes first. A single slow check cannot overrun the deadline.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until(deadline, check).await {
        Some(value) => value,
        None => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}

/// Like `wait_until` with a check that explains why it is not satisfied yet: the panic message
/// carries the last explanation.
pub async fn wait_until_ok<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    let mut last_error;
    loop {
        let remaining = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, check()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(e)) => last_error = format!("{e:#}"),
            Err(_) => last_error = String::from("the last check was still running at the deadline"),
        }
        if started.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}; last state: {last_error}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Poll `check` until it returns `Some` or `deadline` passes (`None`); never panics.
pub async fn poll_until<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        let remaining = deadline.saturating_sub(started.elapsed());
        if let Ok(Some(value)) = tokio::time::timeout(remaining, check()).await {
            return Some(value);
        }
        if started.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Run `regent` with `args` to completion (as postgres when root, from `work_dir`), capturing
/// its output; panics if it is still running after `deadline` (it is killed first).
pub async fn run_regent<I, S>(args: I, work_dir: &Path, deadline: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut cmd = regent_command(&regent_bin(), work_dir);
    cmd.args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn regent {args:?}: {e}"));
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("waiting for regent {args:?}: {e}"),
        Err(_) => panic!("regent {args:?} still running after {deadline:?} (killed)"),
    }
}
