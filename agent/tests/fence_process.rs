//! `regent fence` as a process: driven through its pipe exactly as the agent drives it, against
//! stand-in "postmasters" (shell processes), with deadlines on the monotonic clock.
//!
//! The pipe carries fixed 32-byte little-endian messages: kind (u32: 1 arm, 2 disarm), pid
//! (i32), the target's start time in clock ticks since boot (u64, field 22 of /proc/<pid>/stat),
//! the instant the fast stop starts and the lease deadline (u64 nanoseconds, CLOCK_MONOTONIC).

// A test file: its helpers, too, may stop the test on an unexpected value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after
        .split(' ')
        .nth(19)
        .expect("starttime")
        .parse()
        .expect("number")
}

/// Running and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let after = &stat[stat.rfind(')').expect("comm") + 2..];
            !after.starts_with('Z') && !after.starts_with('X')
        }
        Err(_) => false,
    }
}

struct FenceUnderTest {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl FenceUnderTest {
    fn start() -> FenceUnderTest {
        let mut child = Command::new(env!("CARGO_BIN_EXE_regent"))
            .arg("fence")
            .stdin(Stdio::piped())
            .spawn()
            .expect("start regent fence");
        let pipe = child.stdin.take();
        FenceUnderTest { child, pipe }
    }

    fn arm(&mut self, pid: u32, ticks: u64, fire_in: Duration, deadline_in: Duration) {
        let now = monotonic_ns();
        let mut m = [0u8; 32];
        m[0..4].copy_from_slice(&1u32.to_le_bytes());
        m[4..8].copy_from_slice(&(pid as i32).to_le_bytes());
        m[8..16].copy_from_slice(&ticks.to_le_bytes());
        m[16..24].copy_from_slice(&(now + fire_in.as_nanos() as u64).to_le_bytes());
        m[24..32].copy_from_slice(&(now + deadline_in.as_nanos() as u64).to_le_bytes());
        self.send(&m);
    }

    fn send(&mut self, m: &[u8; 32]) {
        self.pipe
            .as_mut()
            .expect("pipe open")
            .write_all(m)
            .expect("write to the fence");
    }

    /// What the fence sees when the agent dies.
    fn close_pipe(&mut self) {
        self.pipe = None;
    }

    fn exited_within(&mut self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    fn disarm(&mut self) {
        let mut m = [0u8; 32];
        m[0..4].copy_from_slice(&2u32.to_le_bytes());
        self.send(&m);
    }
}

impl Drop for FenceUnderTest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in postmaster: a shell with a child, optionally deaf to SIGINT and SIGQUIT.
fn postmaster(deaf: bool) -> Child {
    let script = if deaf {
        "trap '' INT QUIT; sleep 60 & wait; wait"
    } else {
        "sleep 60 & wait"
    };
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .spawn()
        .expect("start sh")
}

/// Wait (polling) until `pid` is gone or `limit` passes; returns when it went.
fn wait_gone(child: &mut Child, limit: Duration) -> Option<Instant> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                s[s.rfind(')').unwrap_or(0) + 2..]
                    .split(' ')
                    .nth(1)
                    .is_some_and(|pp| pp == pid.to_string())
            })
        })
        .collect()
}

#[test]
fn an_unpushed_fence_stops_the_postmaster_with_sigint_at_the_fire_time() {
    let mut fence = FenceUnderTest::start();
    let mut pm = postmaster(false);
    let armed = Instant::now();
    fence.arm(
        pm.id(),
        start_ticks(pm.id()),
        Duration::from_millis(400),
        Duration::from_millis(1400),
    );
    let gone = wait_gone(&mut pm, Duration::from_secs(5)).expect("the postmaster was stopped");
    let after = gone - armed;
    assert!(
        after >= Duration::from_millis(390) && after < Duration::from_millis(1400),
        "stopped {after:?} after arming (fire at 400 ms, deadline 1400 ms)"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(pm.wait().ok().and_then(|s| s.signal()), Some(libc::SIGINT));
}

#[test]
fn a_postmaster_deaf_to_sigint_and_sigquit_is_killed_with_its_children_before_the_deadline() {
    let mut fence = FenceUnderTest::start();
    let mut pm = postmaster(true);
    // Let the shell start its child.
    let end = Instant::now() + Duration::from_secs(5);
    while children_of(pm.id()).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let kids = children_of(pm.id());
    assert!(!kids.is_empty(), "the stand-in postmaster has a child");
    let armed = Instant::now();
    fence.arm(
        pm.id(),
        start_ticks(pm.id()),
        Duration::from_millis(300),
        Duration::from_millis(1100),
    );
    let gone = wait_gone(&mut pm, Duration::from_secs(5)).expect("the postmaster was killed");
    assert!(
        gone - armed < Duration::from_millis(1100),
        "killed {:?} after arming, deadline 1100 ms",
        gone - armed
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(pm.wait().ok().and_then(|s| s.signal()), Some(libc::SIGKILL));
    let end = Instant::now() + Duration::from_secs(2);
    while kids.iter().any(|k| alive(*k)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        kids.iter().all(|k| !alive(*k)),
        "the postmaster's children were killed too"
    );
}

#[test]
fn a_frozen_postmaster_is_killed() {
    let mut fence = FenceUnderTest::start();
    let mut pm = postmaster(false);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pm.id() as i32, libc::SIGSTOP) };
    fence.arm(
        pm.id(),
        start_ticks(pm.id()),
        Duration::from_millis(200),
        Duration::from_millis(1000),
    );
    assert!(
        wait_gone(&mut pm, Duration::from_secs(5)).is_some(),
        "the frozen postmaster was killed"
    );
}

#[test]
fn pushes_keep_the_postmaster_running_and_a_disarm_stands_down() {
    let mut fence = FenceUnderTest::start();
    let mut pm = postmaster(false);
    let ticks = start_ticks(pm.id());
    // Pushed every 100 ms with a fire time 300 ms ahead, for 1.5 s: never fires.
    let end = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < end {
        fence.arm(
            pm.id(),
            ticks,
            Duration::from_millis(300),
            Duration::from_millis(800),
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(matches!(pm.try_wait(), Ok(None)), "stopped despite pushes");
    }
    fence.disarm();
    std::thread::sleep(Duration::from_millis(1200));
    assert!(matches!(pm.try_wait(), Ok(None)), "stopped after disarm");
    let _ = pm.kill();
    let _ = pm.wait();
}

#[test]
fn a_recycled_pid_is_never_signalled() {
    let mut fence = FenceUnderTest::start();
    let mut pm = postmaster(false);
    // The start time of another process: the fence must take the pid for someone else.
    fence.arm(
        pm.id(),
        start_ticks(pm.id()) + 1,
        Duration::from_millis(100),
        Duration::from_millis(400),
    );
    std::thread::sleep(Duration::from_millis(900));
    assert!(
        matches!(pm.try_wait(), Ok(None)),
        "a stranger was signalled"
    );
    let _ = pm.kill();
    let _ = pm.wait();
}

#[test]
fn the_fence_exits_when_the_agent_goes_while_disarmed_and_finishes_its_duty_when_armed() {
    let mut fence = FenceUnderTest::start();
    fence.close_pipe();
    assert!(
        fence.exited_within(Duration::from_secs(5)),
        "a disarmed fence exits when its pipe closes"
    );

    // Armed, then the agent is gone: the postmaster is still stopped at the fire time.
    let mut fence = FenceUnderTest::start();
    let mut pm = postmaster(false);
    fence.arm(
        pm.id(),
        start_ticks(pm.id()),
        Duration::from_millis(300),
        Duration::from_millis(1000),
    );
    fence.close_pipe();
    assert!(
        wait_gone(&mut pm, Duration::from_secs(5)).is_some(),
        "an armed fence whose agent died still stops the postmaster"
    );
    assert!(
        fence.exited_within(Duration::from_secs(5)),
        "and then exits"
    );
}
