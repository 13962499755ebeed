//! Keeping the fence process and the watchdog device in step with the leader lock.
//!
//! Both are armed only while this member holds the lock (and the cluster is not paused), pushed
//! by every successful acquire or renew, and let go once Postgres no longer runs as a primary.
//! A lock that is lost while a primary still runs keeps the last deadline armed: the demote that
//! follows must still be over before the lock could expire elsewhere.

use std::time::Duration;

use tracing::{error, info};

use tokio::time::Instant;

use super::Agent;
use crate::fence::Fence;

/// What the loop asks of its fence: the fence process, or a simulated one.
pub trait FenceControl {
    /// Running and able to act (not exited, not stopped).
    fn is_alive(&mut self) -> bool;
    /// The postmaster `pid` must be down before `deadline`; the fast stop starts `margin` before.
    fn arm(&mut self, pid: i32, deadline: Instant, margin: Duration) -> std::io::Result<()>;
    fn disarm(&mut self) -> std::io::Result<()>;
    /// Gone wrong: kill it.
    fn kill(self: Box<Self>);
    /// Clean exit: disarm and let it go.
    fn shutdown(self: Box<Self>);
}

impl FenceControl for Fence {
    fn is_alive(&mut self) -> bool {
        Fence::is_alive(self)
    }
    fn arm(&mut self, pid: i32, deadline: Instant, margin: Duration) -> std::io::Result<()> {
        Fence::arm(self, pid, deadline.into_std(), margin)
    }
    fn disarm(&mut self) -> std::io::Result<()> {
        Fence::disarm(self)
    }
    fn kill(self: Box<Self>) {
        Fence::kill(*self)
    }
    fn shutdown(self: Box<Self>) {
        Fence::shutdown(*self)
    }
}

/// The agent's fence process.
pub(super) enum FenceSlot {
    /// `watchdog.fence: false`.
    Off,
    Running(Box<dyn FenceControl>),
    /// It could not be started or died: this member does not lead until it runs again.
    Missing(String),
}

impl FenceSlot {
    pub(super) fn start(enabled: bool) -> FenceSlot {
        if !enabled {
            return FenceSlot::Off;
        }
        match Fence::spawn() {
            Ok(f) => FenceSlot::Running(Box::new(f)),
            Err(e) => {
                error!(error = %e, "cannot start the fence process");
                FenceSlot::Missing(format!("the fence process could not be started: {e}"))
            }
        }
    }
}

impl Agent {
    /// Why this member may not lead now (fence missing, required watchdog not working); a fence
    /// that died is started again first.
    pub(super) fn protection_refuses_leading(&mut self) -> Option<String> {
        let fence_dead = match &mut self.fence {
            FenceSlot::Running(f) => !f.is_alive(),
            FenceSlot::Missing(_) => true,
            FenceSlot::Off => false,
        };
        if fence_dead {
            if let FenceSlot::Running(old) = std::mem::replace(&mut self.fence, FenceSlot::Off) {
                error!("the fence process is gone or stopped: starting it again");
                old.kill();
            }
            self.fence = FenceSlot::start(true);
            if let FenceSlot::Running(_) = self.fence {
                info!("the fence process runs again");
            }
        }
        self.watchdog.check_before_leading();
        if let FenceSlot::Missing(why) = &self.fence {
            return Some(format!("{why}: not leading without it"));
        }
        self.watchdog.cannot_lead()
    }

    /// The fast stop of the fence starts this long before the lease deadline (the lease guard's
    /// margin: both aim at the same moment).
    fn fence_margin(&self) -> Duration {
        Duration::from_secs_f64(self.safety_margin())
    }

    /// Arm, push or disarm the fence, and let the watchdog go when this member stops leading.
    /// Idempotent: called after every lock change, every demote and every cycle.
    pub(super) fn sync_protection(&mut self) {
        let paused = self.last_known_paused;
        let postmaster = self.pg.postmaster_pid();
        let leading = self.lock_deadline.is_some() && !paused;
        // The lock is gone but a Postgres not known to be a replica still runs (the demote is
        // about to stop it, or could not): it must still be down before the old deadline, so
        // an armed fence stays armed.
        let primary_being_demoted = self.lock_deadline.is_none()
            && !paused
            && postmaster.is_some()
            && self.last_obs.in_recovery != Some(true);
        let margin = self.fence_margin();
        let deadline = self.lock_deadline;
        if let FenceSlot::Running(fence) = &mut self.fence {
            let result = match (deadline, postmaster) {
                (Some(deadline), Some(pid)) if leading => fence.arm(pid, deadline, margin),
                _ if primary_being_demoted => Ok(()),
                _ => fence.disarm(),
            };
            if let Err(e) = result {
                // A vanished postmaster (it exited meanwhile) needs no fence; a write error
                // means the fence is gone.
                if postmaster.is_some_and(|pid| crate::fence::process_start_ticks(pid).is_none()) {
                    let _ = fence.disarm();
                } else {
                    error!(error = %e, "cannot reach the fence process");
                    self.fence =
                        FenceSlot::Missing(format!("the fence process is unreachable: {e}"));
                }
            }
        }
        if !leading && !primary_being_demoted {
            self.watchdog.disable();
        }
    }

    /// After a successful acquire or renew: push the fence and kick the watchdog.
    pub(super) fn lock_confirmed(&mut self) {
        self.sync_protection();
        if !self.last_known_paused {
            let ttl = self.dynamic.ttl;
            self.watchdog.keepalive(ttl);
        }
    }

    /// `watchdog_failed` as published in the member status.
    pub fn watchdog_failed(&self) -> bool {
        self.watchdog.failed()
    }

    /// A clean exit: Postgres is down, so the fence is disarmed and stopped.
    pub(super) fn stop_protection(&mut self) {
        self.watchdog.disable();
        if self.pg.postmaster_pid().is_some() {
            // Paused: the fence is disarmed and exits with the pipe. Otherwise an armed fence
            // still stops this Postgres at the lease deadline.
            info!("Postgres still runs at exit: the fence keeps its current orders");
            return;
        }
        if let FenceSlot::Running(f) = std::mem::replace(&mut self.fence, FenceSlot::Off) {
            f.shutdown();
        }
    }
}
