//! Running the postmaster: start, stop, adopt one found running, detect crashes.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{PgError, PgProcessState, Postgres, StopMode};

const POLL: Duration = Duration::from_millis(20);
/// How long each escalation step (SIGQUIT, then SIGKILL) may take after a stop timed out.
const ESCALATION_GRACE: Duration = Duration::from_secs(5);
const LOG_TAIL_BYTES: u64 = 4096;

/// The fields of `postmaster.pid` we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PidFile {
    pub pid: i32,
    pub data_dir: String,
    /// Second number of line 7: the SysV shared memory id used as a startup interlock.
    pub shmem_id: Option<i32>,
    /// Line 8: `starting`, `stopping`, `ready` or `standby`.
    pub status: Option<String>,
}

pub(super) fn parse_pid_file(text: &str) -> Option<PidFile> {
    let lines: Vec<&str> = text.lines().collect();
    let pid: i32 = lines.first()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    let shmem_id = lines
        .get(6)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok());
    let status = lines
        .get(7)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    Some(PidFile {
        pid,
        data_dir: lines
            .get(1)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        shmem_id,
        status,
    })
}

/// Alive and not a zombie. EPERM from kill(0) means it exists under another user.
fn process_alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(true),
        Err(_) => true,
    }
}

/// Whether `pid` runs a postgres/postmaster binary (guards against pid reuse).
fn is_postgres_process(pid: i32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let argv0 = String::from_utf8_lossy(argv0);
            argv0.contains("postgres") || argv0.contains("postmaster")
        }
        Err(_) => true,
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Number of processes attached to a SysV shared memory segment; `None` when it is gone.
fn shmem_attached(shmem_id: i32) -> Option<u64> {
    // SAFETY: shmid_ds is plain old data; IPC_STAT only fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::shmctl(shmem_id, libc::IPC_STAT, &mut ds) };
    (rc == 0).then_some(ds.shm_nattch)
}

impl Postgres {
    fn pid_file_path(&self) -> std::path::PathBuf {
        self.settings.data_dir.join("postmaster.pid")
    }

    pub(super) fn read_pid_file(&self) -> Option<PidFile> {
        std::fs::read_to_string(self.pid_file_path())
            .ok()
            .and_then(|t| parse_pid_file(&t))
    }

    /// Pid of the live postmaster of our data directory: our child, or one we adopt from
    /// `postmaster.pid`. Records an exit of our child that nobody asked for.
    pub(super) fn running_pid(&mut self) -> Option<i32> {
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(None) => return child.id().and_then(|p| i32::try_from(p).ok()),
                Ok(Some(status)) => {
                    if !self.stop_requested {
                        tracing::warn!(%status, "postmaster exited unexpectedly");
                        self.unexpected_exit = Some(status);
                    }
                    self.child = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the postmaster child");
                    return child.id().and_then(|p| i32::try_from(p).ok());
                }
            }
        }
        if let Some(pid) = self.adopted_pid {
            if process_alive(pid) {
                return Some(pid);
            }
            self.adopted_pid = None;
        }
        if self.child.is_none() {
            if let Some(pf) = self.read_pid_file() {
                if process_alive(pf.pid)
                    && is_postgres_process(pf.pid)
                    && same_path(Path::new(&pf.data_dir), &self.settings.data_dir)
                {
                    tracing::info!(pid = pf.pid, "adopting a running postmaster");
                    self.adopted_pid = Some(pf.pid);
                    return Some(pf.pid);
                }
            }
        }
        None
    }

    /// Adopt a postmaster already running for our data directory (agent restart). Returns its pid.
    pub async fn adopt_running(&mut self) -> Result<Option<i32>, PgError> {
        Ok(self.running_pid())
    }

    /// Completes when the running postmaster exits (recording an unrequested exit for
    /// `postmaster_exited`); never completes while none runs. Cancel-safe, for `select!`.
    pub async fn wait_exit(&mut self) {
        if let Some(child) = &mut self.child {
            let status = child.wait().await;
            self.child = None;
            match status {
                Ok(status) if !self.stop_requested => {
                    tracing::warn!(%status, "postmaster exited unexpectedly");
                    self.unexpected_exit = Some(status);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot wait for the postmaster"),
            }
            return;
        }
        if self.adopted_pid.is_some() {
            while self.running_pid().is_some() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return;
        }
        std::future::pending::<()>().await
    }

    /// Whether a postmaster runs for our data directory (ours or adopted).
    pub fn is_running(&mut self) -> bool {
        self.running_pid().is_some()
    }

    /// Pid of the running postmaster.
    pub fn postmaster_pid(&mut self) -> Option<i32> {
        self.running_pid()
    }

    /// The exit status of our postmaster if it exited without `stop` being called; stays set
    /// until the next `start`/`stop`.
    pub fn postmaster_exited(&mut self) -> Option<ExitStatus> {
        self.running_pid();
        self.unexpected_exit
    }

    pub fn process_state(&mut self) -> PgProcessState {
        if self.running_pid().is_none() {
            return if self.unexpected_exit.is_some() {
                PgProcessState::Crashed
            } else {
                PgProcessState::Stopped
            };
        }
        match self.read_pid_file().and_then(|p| p.status).as_deref() {
            Some("ready") => PgProcessState::Running,
            Some("standby") => PgProcessState::Standby,
            Some("stopping") => PgProcessState::Stopping,
            _ => PgProcessState::Starting,
        }
    }

    /// Remove a `postmaster.pid` left by a dead postmaster, after the backends it left behind
    /// have detached from its shared memory (Postgres refuses to start while they are attached).
    async fn clear_stale_pid_file(&self) -> Result<(), PgError> {
        let Some(pf) = self.read_pid_file() else {
            return Ok(());
        };
        if let Some(id) = pf.shmem_id {
            let deadline = Instant::now() + self.settings.pg_ctl_timeout;
            while shmem_attached(id).is_some_and(|n| n > 0) {
                if Instant::now() > deadline {
                    return Err(PgError::Unexpected {
                        step: "start",
                        detail: format!(
                            "processes of the previous postmaster {} still hold shared memory id {id}",
                            pf.pid
                        ),
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        }
        tracing::info!(pid = pf.pid, "removing stale postmaster.pid");
        super::conf::remove_if_exists(&self.pid_file_path())?;
        Ok(())
    }

    /// Start `postgres -D <data_dir>` and wait until it accepts connections (`ready` or
    /// `standby` in postmaster.pid). On `StartTimeout` the postmaster keeps running.
    pub async fn start(&mut self) -> Result<(), PgError> {
        let wait = self.settings.pg_ctl_timeout;
        self.start_within(wait).await
    }

    /// Start the postmaster and wait at most `wait` for it to accept connections. On
    /// `StartTimeout` it keeps starting (a restart's `timeout` only bounds the answer).
    pub async fn start_within(&mut self, wait: Duration) -> Result<(), PgError> {
        self.spawn_postmaster().await?;
        self.wait_until_ready(wait).await
    }

    /// Start the postmaster without waiting for it (see [`Self::wait_until_ready`]): the caller
    /// can look after the new process before it accepts connections.
    pub async fn spawn_postmaster(&mut self) -> Result<(), PgError> {
        if let Some(pid) = self.running_pid() {
            return Err(PgError::AlreadyRunning(pid));
        }
        self.clear_stale_pid_file().await?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(&self.settings.data_dir);
        cmd.stdin(Stdio::null());
        if let Some(log) = &self.settings.log_file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| PgError::io(format!("open log file {}", log.display()), e))?;
            let file2 = file
                .try_clone()
                .map_err(|e| PgError::io("duplicate log file handle", e))?;
            cmd.stdout(file).stderr(file2);
        }
        let child = crate::pid1::spawn(cmd).map_err(|e| PgError::io("spawn postgres", e))?;
        tracing::info!(pid = ?child.id(), data_dir = %self.settings.data_dir.display(), "started postmaster");
        self.child = Some(child);
        self.adopted_pid = None;
        self.stop_requested = false;
        self.unexpected_exit = None;
        self.client = None;
        Ok(())
    }

    /// Wait until the postmaster accepts connections, or fail if it exits.
    pub async fn wait_until_ready(&mut self, timeout: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(pid) = self.running_pid() else {
                let status = self
                    .unexpected_exit
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "not running".into());
                return Err(PgError::StartFailed {
                    status,
                    log_tail: self.log_tail(),
                });
            };
            if let Some(pf) = self.read_pid_file() {
                if pf.pid == pid && matches!(pf.status.as_deref(), Some("ready" | "standby")) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(PgError::StartTimeout(timeout));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The end of the postmaster log file, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.settings.log_file else {
            return "(postmaster output is not captured)".into();
        };
        let mut buf = Vec::new();
        let read = std::fs::File::open(path).and_then(|mut f| {
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
            f.read_to_end(&mut buf)
        });
        match read {
            Ok(_) => String::from_utf8_lossy(&buf).trim().to_string(),
            Err(e) => format!("(cannot read {}: {e})", path.display()),
        }
    }

    fn signal(&self, pid: i32, signal: Signal) -> Result<(), PgError> {
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(PgError::io(
                format!("send {signal} to postmaster {pid}"),
                std::io::Error::from(e),
            )),
        }
    }

    /// Wait for the postmaster to exit; false on timeout.
    /// Has the postmaster exited within `timeout`? True when nothing runs.
    pub async fn wait_exit_within(&mut self, timeout: Duration) -> bool {
        if let Some(child) = &mut self.child {
            return match tokio::time::timeout(timeout, child.wait()).await {
                Ok(_) => {
                    self.child = None;
                    true
                }
                Err(_) => false,
            };
        }
        let deadline = Instant::now() + timeout;
        while self.running_pid().is_some() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
        true
    }

    /// Stop the postmaster with `mode`; after `timeout` escalate to an immediate shutdown and
    /// then SIGKILL. Ok when nothing was running.
    pub async fn stop(&mut self, mode: StopMode, timeout: Duration) -> Result<(), PgError> {
        let Some(pid) = self.request_stop(mode)? else {
            return Ok(());
        };
        if self.wait_exit_within(timeout).await {
            return Ok(());
        }
        if mode != StopMode::Immediate {
            tracing::warn!(
                pid,
                ?mode,
                "postmaster did not stop in time; immediate shutdown"
            );
            self.signal(pid, Signal::SIGQUIT)?;
            if self.wait_exit_within(ESCALATION_GRACE).await {
                return Ok(());
            }
        }
        tracing::warn!(
            pid,
            "postmaster did not stop; SIGKILL to it and every backend"
        );
        if process_alive(pid) && is_postgres_process(pid) {
            crate::fence::kill_postmaster_and_backends(pid);
        }
        if self.wait_exit_within(ESCALATION_GRACE).await {
            return Ok(());
        }
        Err(PgError::StopFailed(pid))
    }

    /// Ask the postmaster to shut down with `mode` without waiting; the pid asked, None when
    /// nothing runs.
    pub fn request_stop(&mut self, mode: StopMode) -> Result<Option<i32>, PgError> {
        // Our own session would keep a smart shutdown waiting forever.
        self.client = None;
        self.unexpected_exit = None;
        let Some(pid) = self.running_pid() else {
            return Ok(None);
        };
        self.stop_requested = true;
        let signal = match mode {
            StopMode::Smart => Signal::SIGTERM,
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        };
        tracing::info!(pid, ?mode, "stopping postmaster");
        self.signal(pid, signal)?;
        Ok(Some(pid))
    }

    /// Ask the postmaster to re-read its configuration files.
    pub fn reload(&mut self) -> Result<(), PgError> {
        let pid = self.running_pid().ok_or(PgError::NotRunning)?;
        self.signal(pid, Signal::SIGHUP)
    }

    /// Promote the way pg_ctl does: a `promote` file plus SIGUSR1 (works before the standby
    /// accepts connections).
    pub(super) fn signal_promote(&mut self) -> Result<(), PgError> {
        let pid = self.running_pid().ok_or(PgError::NotRunning)?;
        self.write_file(&self.settings.data_dir.join("promote"), "")?;
        self.signal(pid, Signal::SIGUSR1)
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn pid_file_is_parsed() {
        let text = "4242\n/var/lib/pg\n1700000000\n5432\n/run/pg\n127.0.0.1\n  5432001     32768\nstandby\n";
        let pf = parse_pid_file(text).unwrap();
        assert_eq!(pf.pid, 4242);
        assert_eq!(pf.data_dir, "/var/lib/pg");
        assert_eq!(pf.shmem_id, Some(32768));
        assert_eq!(pf.status.as_deref(), Some("standby"));
        assert_eq!(parse_pid_file("abc\n"), None);
        let early = parse_pid_file("17\n/d\n").unwrap();
        assert_eq!(early.status, None);
    }
}
