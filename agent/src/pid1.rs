//! PID 1 duties: reap orphaned children without stealing the exit status of the processes the
//! agent itself waits for (postmaster, initdb, pg_basebackup, pg_rewind...).
//!
//! Every child Regent spawns goes through [`spawn`] or [`output`], which record its pid as
//! *managed*. When Regent runs as PID 1 (or as a child subreaper), a SIGCHLD-driven reaper peeks at
//! exited children with `WNOWAIT` and reaps only those that are not managed: orphans re-parented to
//! us. Managed ones are left for tokio to collect.
//!
//! Spawned children also get `PR_SET_PDEATHSIG = SIGQUIT`: if the agent dies (kill -9), Postgres
//! performs an immediate shutdown instead of running on as an unsupervised primary whose lease
//! is about to expire. The runtime is single-threaded, so the spawning thread lives as long as the
//! agent (the death signal is tied to the spawning thread).

use std::collections::HashSet;
use std::io;
use std::process::{Output, Stdio};
use std::sync::Mutex;

use tokio::process::{Child, Command};

static MANAGED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn with_managed<R>(f: impl FnOnce(&mut HashSet<u32>) -> R) -> R {
    let mut guard = MANAGED.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(HashSet::new))
}

/// A spawned, managed child. The pid stays managed until [`ManagedChild::wait`] or drop.
pub struct ManagedChild {
    pub child: Child,
    pid: Option<u32>,
}

impl ManagedChild {
    pub fn id(&self) -> Option<u32> {
        self.pid
    }

    pub async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        let status = self.child.wait().await;
        self.release();
        status
    }

    /// Non-blocking check; `Some` once the child exited.
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        let r = self.child.try_wait()?;
        if r.is_some() {
            self.release();
        }
        Ok(r)
    }

    fn release(&mut self) {
        if let Some(pid) = self.pid.take() {
            with_managed(|m| m.remove(&pid));
        }
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.release();
    }
}

/// Runs in a forked child before exec: the agent's death signals it (SIGQUIT).
fn die_with_the_agent() -> io::Result<()> {
    // SAFETY: prctl is async-signal-safe; plain call with constant arguments.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGQUIT as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prepare(cmd: &mut Command) {
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(die_with_the_agent);
    }
}

/// Spawn a long-running child (the postmaster).
pub fn spawn(mut cmd: Command) -> io::Result<ManagedChild> {
    prepare(&mut cmd);
    let child = cmd.spawn()?;
    let pid = child.id();
    if let Some(p) = pid {
        with_managed(|m| m.insert(p));
    }
    Ok(ManagedChild { child, pid })
}

/// Spawn a long-running helper with the standard library's process API (the fence: the agent
/// checks on it without the runtime). Its pid stays managed until [`release`].
pub fn spawn_std(mut cmd: std::process::Command) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(die_with_the_agent);
    }
    let child = cmd.spawn()?;
    with_managed(|m| m.insert(child.id()));
    Ok(child)
}

/// A managed pid that was waited for: orphans with that pid may be reaped again.
pub fn release(pid: u32) {
    with_managed(|m| m.remove(&pid));
}

/// Run a command to completion and collect its output (initdb, pg_basebackup, pg_controldata...).
pub async fn output(mut cmd: Command) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    prepare(&mut cmd);
    let child = cmd.spawn()?;
    let pid = child.id();
    if let Some(p) = pid {
        with_managed(|m| m.insert(p));
    }
    let out = child.wait_with_output().await;
    if let Some(p) = pid {
        with_managed(|m| m.remove(&p));
    }
    out
}

/// Set once [`start_reaper`] ran: only then are exited children ours to reap (a test process
/// running the HA loop must leave other tests' children alone).
static REAPER_STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reap unmanaged exited children if this process took the reaper's role.
pub fn reap_orphans_if_reaper() -> usize {
    if REAPER_STARTED.load(std::sync::atomic::Ordering::Relaxed) {
        reap_orphans()
    } else {
        0
    }
}

/// Become a child subreaper (when not PID 1) so orphans of our children come to us, and start
/// reaping unmanaged exited children on SIGCHLD.
pub fn start_reaper() {
    REAPER_STARTED.store(true, std::sync::atomic::Ordering::Relaxed);
    let is_pid1 = std::process::id() == 1;
    if !is_pid1 {
        // SAFETY: plain prctl call with constant arguments.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
        }
    }
    tokio::spawn(async move {
        let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGCHLD; orphans will not be reaped");
                return;
            }
        };
        loop {
            sigchld.recv().await;
            reap_orphans();
        }
    });
}

/// Reap every exited child that is not managed. Returns how many were reaped.
pub fn reap_orphans() -> usize {
    let mut reaped = 0;
    let mut skipped: HashSet<i32> = HashSet::new();
    loop {
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc != 0 {
            break;
        }
        // SAFETY: waitid filled info; si_pid is valid for child-state changes.
        let pid = unsafe { info.si_pid() };
        if pid == 0 || skipped.contains(&pid) {
            break;
        }
        if with_managed(|m| m.contains(&(pid as u32))) {
            // Managed: tokio collects it. waitid(WNOWAIT) would keep returning it, so stop here;
            // the next SIGCHLD tries again after tokio reaped it.
            skipped.insert(pid);
            break;
        }
        let mut status = 0;
        // SAFETY: reaping a specific exited child.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        reaped += 1;
        tracing::debug!(pid, "reaped orphaned process");
    }
    reaped
}
