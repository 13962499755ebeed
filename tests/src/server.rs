//! A test server process (etcd, the Kubernetes API test server) with its output appended to a
//! log file: started again on demand, killed (SIGKILL) or stopped (SIGTERM), frozen (SIGSTOP) to
//! look unreachable without losing its state, and killed on drop.

use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::process::{signal_all, stop_process, tail_file};

/// One server process at a time, under a name used in messages and in the log.
pub struct ServerProcess {
    name: &'static str,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    paused: Mutex<bool>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl ServerProcess {
    pub fn new(name: &'static str, log: PathBuf) -> ServerProcess {
        ServerProcess {
            name,
            log,
            child: Mutex::new(None),
            paused: Mutex::new(false),
        }
    }

    /// Its stdout and stderr, every start appended.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Process id of the running server, if any.
    pub fn pid(&self) -> Option<i32> {
        lock(&self.child).as_ref().map(|c| c.id() as i32)
    }

    /// Spawn `command` with its output appended to the log; panics if the server still runs.
    pub fn spawn(&self, command: &mut Command) {
        let mut guard = lock(&self.child);
        if let Some(child) = guard.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                panic!("{} is already running (pid {})", self.name, child.id());
            }
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let _ = writeln!(log, "=== starting {} ===", self.name);
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("clone log handle: {e}"));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", command.get_program()));
        *guard = Some(child);
        *lock(&self.paused) = false;
    }

    /// Poll `ready` every `interval` until it succeeds; panics with the log's last `tail_lines`
    /// lines if the process exits first or `deadline` passes.
    pub async fn wait_ready<F, Fut>(
        &self,
        deadline: Duration,
        interval: Duration,
        tail_lines: usize,
        mut ready: F,
    ) where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let started = Instant::now();
        loop {
            let error = match ready().await {
                Ok(()) => return,
                Err(e) => e,
            };
            if let Some(status) = self.try_wait_exit() {
                panic!(
                    "{} exited during startup with {status}; log tail:\n{}",
                    self.name,
                    tail_file(&self.log, tail_lines)
                );
            }
            if started.elapsed() > deadline {
                panic!(
                    "{} did not answer within {deadline:?}: {error}; log tail:\n{}",
                    self.name,
                    tail_file(&self.log, tail_lines)
                );
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// The exit status, once the process has exited.
    pub fn try_wait_exit(&self) -> Option<ExitStatus> {
        lock(&self.child)
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kill the server with SIGKILL and reap it.
    pub fn stop(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        *lock(&self.paused) = false;
    }

    /// Stop the server with SIGTERM, waiting up to `deadline` before falling back to SIGKILL.
    pub async fn stop_graceful(&self, deadline: Duration) {
        self.resume();
        if let Some(pid) = self.pid() {
            signal_all(&[pid], Signal::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < deadline {
            let exited = match lock(&self.child).as_mut() {
                None => true,
                Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            };
            if exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop();
    }

    /// Freeze the server (SIGSTOP) until `resume`.
    pub fn pause(&self) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("cannot pause {}: it is not running", self.name));
        stop_process(pid);
        *lock(&self.paused) = true;
    }

    /// Undo `pause` (SIGCONT).
    pub fn resume(&self) {
        let mut paused = lock(&self.paused);
        if *paused {
            if let Some(pid) = self.pid() {
                signal_all(&[pid], Signal::SIGCONT);
            }
            *paused = false;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} log tail ({}) -----\n{}",
                self.name,
                self.log.display(),
                tail_file(&self.log, 15)
            );
        }
        self.stop();
    }
}
