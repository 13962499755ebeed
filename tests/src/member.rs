//! One `regent` member: its configuration file, its agent process, its Postgres instance.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

use crate::config::{MemberConfig, MemberSpec, SUPERUSER, SUPERUSER_PASSWORD};
use crate::process::{process_tree, processes_with_cwd, signal_all, tail_file, wait_gone_blocking};

/// Timeout of each REST call the harness makes.
pub const API_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of each Postgres connection attempt the harness makes.
pub const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A `regent` command line for `binary`, run as the postgres user when we are root, with a clean
/// environment (no inherited `PATRONI_*`/`PG*` variables that would change the configuration, no
/// Kubernetes credentials: a member gets its own kubeconfig or none).
pub fn regent_command(binary: &Path, work_dir: &Path) -> Command {
    let mut cmd = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("PATRONI_")
            || key_text.starts_with("PG")
            || key_text.starts_with("KUBERNETES_")
            || key_text == "KUBECONFIG"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("HOME", work_dir)
        .current_dir(work_dir)
        .stdin(Stdio::null());
    crate::process::run_as_postgres(&mut cmd);
    cmd
}

/// A member of a test cluster. Every method takes `&self`, so tests can act on several members
/// at once (e.g. wait for one to exit while writing to another).
///
/// Dropping it kills the agent and every process of its Postgres instance; if the thread is
/// panicking, the tail of the agent's log and of the Postgres log is printed first.
pub struct Member {
    spec: MemberSpec,
    config: MemberConfig,
    binary: PathBuf,
    /// Extra environment of the agent (e.g. `KUBECONFIG`), on top of `regent_command`'s.
    env: Vec<(String, String)>,
    child: Mutex<Option<Child>>,
    http: reqwest::Client,
}

impl Member {
    /// Write the member's configuration into `spec.member_dir` (which must exist and belong to
    /// the postgres user when root); the agent is not started.
    pub fn create(spec: MemberSpec, config: MemberConfig, binary: PathBuf) -> Member {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(API_TIMEOUT)
            // The Patroni API speaks one request per connection; never reuse a socket.
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_else(|e| panic!("build HTTP client: {e}"));
        let env = spec.agent_env();
        let member = Member {
            spec,
            config,
            binary,
            env,
            child: Mutex::new(None),
            http,
        };
        member.config.write_to(&member.config_path());
        member
    }

    /// Set an environment variable for every later start of the agent.
    pub fn with_env(mut self, key: &str, value: &str) -> Member {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The agent's extra environment.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The agent binary this member runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &MemberSpec {
        &self.spec
    }

    pub fn config(&self) -> &MemberConfig {
        &self.config
    }

    pub fn api_port(&self) -> u16 {
        self.spec.api_port
    }

    pub fn pg_port(&self) -> u16 {
        self.spec.pg_port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.spec.data_dir()
    }

    pub fn member_dir(&self) -> &Path {
        &self.spec.member_dir
    }

    pub fn config_path(&self) -> PathBuf {
        self.spec.member_dir.join("regent.yml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.spec.member_dir.join("regent.log")
    }

    /// Where the test configuration makes Postgres write its server log.
    pub fn postgres_log_path(&self) -> PathBuf {
        self.data_dir().join("log").join("postgresql.log")
    }

    pub fn api_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.spec.api_port)
    }

    /// Start the agent (`regent <config>`), output appended to the member's log file.
    pub fn start(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = guard.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                panic!(
                    "member {}: agent already running (pid {})",
                    self.name(),
                    child.id()
                );
            }
        }
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let _ = writeln!(
            log,
            "===== harness: starting {} =====",
            self.binary.display()
        );
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("clone log handle: {e}"));
        let child = regent_command(&self.binary, &self.spec.member_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg(self.config_path())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "member {}: spawn {}: {e}",
                    self.name(),
                    self.binary.display()
                )
            });
        *guard = Some(child);
    }

    /// Start the agent again with the same configuration; it must have exited or been killed.
    pub fn restart(&self) {
        self.start();
    }

    /// Pid of the agent if it is running.
    pub fn agent_pid(&self) -> Option<i32> {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id() as i32),
            _ => None,
        }
    }

    pub fn agent_running(&self) -> bool {
        self.agent_pid().is_some()
    }

    /// Pid of the running postmaster of this member's data directory.
    pub fn postmaster_pid(&self) -> Option<i32> {
        crate::process::postmaster_pid(&self.data_dir())
    }

    /// SIGKILL the agent only (Postgres keeps running, as after an agent crash) and reap it.
    pub fn kill9(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = guard.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL the agent and, at the same moment, every process of its Postgres instance (as
    /// after a machine crash); returns once all of them are gone.
    pub fn kill9_with_postmaster(&self) {
        let survivors = self.kill_all_processes();
        if !survivors.is_empty() {
            panic!(
                "member {}: processes {survivors:?} survived SIGKILL for 10 s",
                self.name()
            );
        }
    }

    /// SIGKILL agent and instance, reap the agent, wait for the rest; returns the survivors.
    fn kill_all_processes(&self) -> Vec<i32> {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let mut victims = Vec::new();
        if let Some(child) = guard.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                victims.extend(process_tree(child.id() as i32));
            }
        }
        for pid in self.instance_processes() {
            if !victims.contains(&pid) {
                victims.push(pid);
            }
        }
        signal_all(&victims, Signal::SIGKILL);
        if let Some(child) = guard.as_mut() {
            let _ = child.wait();
        }
        wait_gone_blocking(&victims, Duration::from_secs(10));
        victims.retain(|&pid| crate::process::process_alive(pid));
        victims
    }

    /// The postmaster, its children and anything else running inside the data directory.
    fn instance_processes(&self) -> Vec<i32> {
        let mut pids = processes_with_cwd(&self.data_dir());
        if let Some(postmaster) = self.postmaster_pid() {
            for pid in process_tree(postmaster) {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Send SIGTERM to the agent (no wait).
    pub fn send_sigterm(&self) {
        if let Some(pid) = self.agent_pid() {
            signal_all(&[pid], Signal::SIGTERM);
        }
    }

    /// Wait until the agent exits; its exit status, or an error if it is still running after
    /// `deadline` (it is left running) or was never started.
    pub async fn wait_exit(&self, deadline: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            {
                let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
                let Some(child) = guard.as_mut() else {
                    bail!("member {}: agent was never started", self.name());
                };
                if let Some(status) = child.try_wait().context("waitpid on the agent")? {
                    return Ok(status);
                }
            }
            if started.elapsed() >= deadline {
                bail!(
                    "member {}: agent still running {deadline:?} after the wait began",
                    self.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM the agent and wait for its exit status.
    pub async fn sigterm(&self, deadline: Duration) -> Result<ExitStatus> {
        self.send_sigterm();
        self.wait_exit(deadline).await
    }

    /// `GET <path>` on the member's REST API: status code and JSON body (`Value::Null` if the
    /// body is empty or not JSON).
    pub async fn api_get(&self, path: &str) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.api_base());
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .with_context(|| format!("read body of GET {url}"))?;
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    /// Status code of `GET <path>`, `None` if the API did not answer.
    pub async fn api_status(&self, path: &str) -> Option<u16> {
        self.api_get(path).await.ok().map(|(status, _)| status)
    }

    /// `GET /patroni` body if the API answers 200 or 503.
    pub async fn patroni_status(&self) -> Option<Value> {
        let (_, body) = self.api_get("/patroni").await.ok()?;
        body.is_object().then_some(body)
    }

    /// True if `GET /primary` answers 200 (this member holds the leader lock as a primary).
    pub async fn is_primary(&self) -> bool {
        self.api_status("/primary").await == Some(200)
    }

    /// True if `GET /replica` answers 200.
    pub async fn is_healthy_replica(&self) -> bool {
        self.api_status("/replica").await == Some(200)
    }

    /// Connection settings for this member's Postgres (TCP, superuser with password).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.spec.pg_port)
            .user(SUPERUSER)
            .password(SUPERUSER_PASSWORD)
            .dbname("postgres")
            .application_name("regent-tests")
            .connect_timeout(PG_CONNECT_TIMEOUT);
        config
    }

    /// SIGSTOP this replica's walreceiver: it stops confirming WAL, as a hung replica or one
    /// behind a network that drops its packets does, while its agent and REST API go on. The
    /// walreceiver gets SIGCONT when the returned guard is dropped.
    pub async fn freeze_walreceiver(&self) -> Result<FrozenProcess> {
        let client = self.pg_client().await?;
        let pid: i32 = client
            .query_one("SELECT pid FROM pg_stat_wal_receiver", &[])
            .await
            .with_context(|| format!("member {}: its walreceiver", self.name()))?
            .get(0);
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, Signal::SIGSTOP)
            .with_context(|| format!("member {}: SIGSTOP its walreceiver", self.name()))?;
        Ok(FrozenProcess(pid))
    }

    /// A connected client; the connection is driven by a task on the current runtime.
    pub async fn pg_client(&self) -> Result<Client> {
        let config = self.pg_config();
        let (client, connection) =
            tokio::time::timeout(PG_CONNECT_TIMEOUT * 2, config.connect(NoTls))
                .await
                .map_err(|_| anyhow!("member {}: connect to Postgres timed out", self.name()))?
                .with_context(|| format!("member {}: connect to Postgres", self.name()))?;
        tokio::spawn(async move {
            // Errors surface on the client's next query; nothing to do with them here.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// The value of the Postgres setting `setting` (`SHOW`), `None` if it cannot be read.
    pub async fn show(&self, setting: &str) -> Option<String> {
        let client = self.pg_client().await.ok()?;
        let row = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .ok()?;
        row.try_get::<_, String>(0).ok()
    }

    /// `pg_is_in_recovery()` of this member's Postgres.
    pub async fn pg_in_recovery(&self) -> Result<bool> {
        let client = self.pg_client().await?;
        let row = query_one_timed(&client, "SELECT pg_is_in_recovery()").await?;
        Ok(row.try_get(0)?)
    }

    /// The WAL receiver's `(status, sender_port)` on a replica, `None` if no receiver runs.
    pub async fn wal_receiver(&self) -> Result<Option<(String, Option<i32>)>> {
        let client = self.pg_client().await?;
        let rows = tokio::time::timeout(
            PG_CONNECT_TIMEOUT,
            client.query("SELECT status, sender_port FROM pg_stat_wal_receiver", &[]),
        )
        .await
        .map_err(|_| anyhow!("query pg_stat_wal_receiver timed out"))??;
        match rows.first() {
            None => Ok(None),
            Some(row) => Ok(Some((row.try_get(0)?, row.try_get(1)?))),
        }
    }

    /// The whole agent log so far.
    pub fn log_contents(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Print the last lines of the agent log and of the Postgres log to stderr.
    pub fn print_log_tails(&self, lines: usize) {
        eprintln!(
            "----- {} agent log tail ({}) -----\n{}",
            self.name(),
            self.log_path().display(),
            tail_file(&self.log_path(), lines)
        );
        if self.postgres_log_path().exists() {
            eprintln!(
                "----- {} postgres log tail ({}) -----\n{}",
                self.name(),
                self.postgres_log_path().display(),
                tail_file(&self.postgres_log_path(), lines / 2)
            );
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("REGENT_TEST_SHOW_LOGS").is_some() {
            self.print_log_tails(80);
        }
        let survivors = self.kill_all_processes();
        if !survivors.is_empty() {
            // Not a panic: we may already be unwinding, and a double panic aborts the run.
            eprintln!(
                "member {}: processes {survivors:?} survived SIGKILL",
                self.name()
            );
        }
    }
}

/// `query_one` bounded by the harness's connect timeout, so a hung server fails the attempt.
pub(crate) async fn query_one_timed(client: &Client, sql: &str) -> Result<tokio_postgres::Row> {
    tokio::time::timeout(PG_CONNECT_TIMEOUT, client.query_one(sql, &[]))
        .await
        .map_err(|_| anyhow!("query timed out after {PG_CONNECT_TIMEOUT:?}: {sql}"))?
        .with_context(|| format!("query failed: {sql}"))
}

/// A process stopped with SIGSTOP; SIGCONT when dropped, so a failing test leaves nothing
/// frozen.
pub struct FrozenProcess(nix::unistd::Pid);

impl Drop for FrozenProcess {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, Signal::SIGCONT);
    }
}
