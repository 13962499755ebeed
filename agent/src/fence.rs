//! The fence: a small process, separate from the agent, that stops the postmaster before the
//! leader lease can expire when the agent stops renewing it.
//!
//! The lease guard inside the HA loop is a timer of the agent's own runtime: anything that stops
//! that runtime (SIGSTOP, a deadlock, a blocked write to a dead volume, a hung allocator) stops
//! the guard too, while Postgres goes on acknowledging writes. The fence is the same binary
//! executed again as `regent fence`, started before Postgres, sharing nothing with the agent but
//! a pipe. While this member holds the leader lock the agent keeps it *armed* with the lease
//! deadline on the system-wide monotonic clock, and pushes the deadline forward after every
//! successful renew. If the deadline minus the safety margin passes without a push, the fence
//! stops Postgres itself:
//!
//! 1. at `deadline − margin`: SIGINT, a fast shutdown (walsenders ship every acknowledged
//!    record to the standbys before they exit; no new connection or transaction is accepted);
//! 2. at `deadline − margin/2`: SIGQUIT, an immediate shutdown;
//! 3. at `deadline − margin/4`: the postmaster is stopped (SIGSTOP, so it forks nothing more),
//!    each of its children is killed, then the postmaster itself (SIGKILL) — this also ends a
//!    postmaster that was itself frozen and could not act on the earlier signals.
//!
//! Each signal is sent only while the target still is the process the agent named (pid and
//! start time, so a recycled pid is never hit). The fence reads nothing but its pipe and
//! `/proc`, allocates nothing after start, and ignores the termination signals a terminal or
//! container runtime sends to a process group. It exits when the pipe closes while it is
//! disarmed; an agent that died with the fence armed leaves it to finish its duty first.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// The argument that makes `regent` run as the fence.
pub const FENCE_ARG: &str = "fence";

/// One message on the pipe: fixed size, so each write is atomic (far below PIPE_BUF).
const MESSAGE_LEN: usize = 32;
const KIND_ARM: u32 = 1;
const KIND_DISARM: u32 = 2;

/// What the agent tells the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Stop the postmaster (`pid`, started at `start_ticks` since boot) unless another arm
    /// arrives before `fire_at_ns`; it must be gone before `deadline_ns` (monotonic clock).
    Arm {
        pid: i32,
        start_ticks: u64,
        fire_at_ns: u64,
        deadline_ns: u64,
    },
    Disarm,
}

impl Order {
    fn encode(self) -> [u8; MESSAGE_LEN] {
        let mut m = [0u8; MESSAGE_LEN];
        match self {
            Order::Arm {
                pid,
                start_ticks,
                fire_at_ns,
                deadline_ns,
            } => {
                m[0..4].copy_from_slice(&KIND_ARM.to_le_bytes());
                m[4..8].copy_from_slice(&pid.to_le_bytes());
                m[8..16].copy_from_slice(&start_ticks.to_le_bytes());
                m[16..24].copy_from_slice(&fire_at_ns.to_le_bytes());
                m[24..32].copy_from_slice(&deadline_ns.to_le_bytes());
            }
            Order::Disarm => m[0..4].copy_from_slice(&KIND_DISARM.to_le_bytes()),
        }
        m
    }

    fn decode(m: &[u8; MESSAGE_LEN]) -> Option<Order> {
        let u32_at = |i: usize| u32::from_le_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&m[i..i + 8]);
            u64::from_le_bytes(b)
        };
        match u32_at(0) {
            KIND_ARM => Some(Order::Arm {
                pid: u32_at(4) as i32,
                start_ticks: u64_at(8),
                fire_at_ns: u64_at(16),
                deadline_ns: u64_at(24),
            }),
            KIND_DISARM => Some(Order::Disarm),
            _ => None,
        }
    }
}

/// Nanoseconds on CLOCK_MONOTONIC, the clock both processes share.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// `instant` as monotonic nanoseconds, never later than the real value: the clock is read
/// before `Instant::now()`, so the difference added is never too small.
fn instant_to_monotonic_ns(instant: Instant) -> u64 {
    let mono = monotonic_ns();
    let now = Instant::now();
    match instant.checked_duration_since(now) {
        Some(ahead) => mono.saturating_add(ahead.as_nanos() as u64),
        None => mono.saturating_sub(now.duration_since(instant).as_nanos() as u64),
    }
}

/// Fields of `/proc/<pid>/stat` the fence needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: u8,
    ppid: i32,
    start_ticks: u64,
}

/// Parse `/proc/<pid>/stat`; the command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = text.get(close + 2..)?;
    let mut fields = rest.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let state = *fields.next()?.first()?;
    let ppid = parse_decimal(fields.next()?)? as i32;
    // starttime is field 22; state is field 3, so 18 more fields lie between ppid and it.
    let start_ticks = parse_decimal(fields.nth(17)?)?;
    Some(ProcStat {
        state,
        ppid,
        start_ticks,
    })
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
}

/// Read `/proc/<pid>/stat` with no allocation: the path and the contents live on the stack.
fn read_stat(pid: i32) -> Option<ProcStat> {
    let mut path = [0u8; 32];
    let prefix = b"/proc/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut len = prefix.len();
    let mut digits = [0u8; 10];
    let mut n = u32::try_from(pid).ok()?;
    let mut count = 0;
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in (0..count).rev() {
        path[len] = digits[i];
        len += 1;
    }
    let suffix = b"/stat\0";
    path[len..len + suffix.len()].copy_from_slice(suffix);
    // SAFETY: `path` is NUL-terminated; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 1024];
    // SAFETY: reading into a buffer we own, of the length given.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: fd was opened above and is not used after this.
    unsafe { libc::close(fd) };
    if n <= 0 {
        return None;
    }
    parse_stat(&buf[..n as usize])
}

/// The start time (clock ticks since boot) of a live process, for the arm message.
pub fn process_start_ticks(pid: i32) -> Option<u64> {
    read_stat(pid)
        .filter(|s| !matches!(s.state, b'Z' | b'X'))
        .map(|s| s.start_ticks)
}

// ---------------------------------------------------------------------------------------------
// The agent's side.

/// The agent's handle on its fence process.
pub struct Fence {
    child: std::process::Child,
    pipe: std::io::PipeWriter,
    /// The last order sent (so an unchanged arm is not repeated needlessly).
    last: Option<Order>,
}

impl Fence {
    /// Start `regent fence` from this binary. Must run before Postgres starts.
    pub fn spawn() -> io::Result<Fence> {
        let exe = std::env::current_exe()?;
        let (reader, writer) = std::io::pipe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(FENCE_ARG)
            .stdin(Stdio::from(reader))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = crate::pid1::spawn_std(cmd)?;
        info!(pid = child.id(), "started the fence process");
        Ok(Fence {
            child,
            pipe: writer,
            last: None,
        })
    }

    /// Running and not stopped (a SIGSTOPped fence could not act).
    pub fn is_alive(&mut self) -> bool {
        match self.child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                crate::pid1::release(self.child.id());
                warn!(%status, "the fence process exited");
                return false;
            }
            Err(_) => return false,
        }
        match read_stat(self.child.id() as i32) {
            Some(s) => !matches!(s.state, b'T' | b't' | b'Z' | b'X'),
            None => false,
        }
    }

    /// Arm (or push) the fence: the postmaster `pid` must be down before `deadline`; the fast
    /// stop starts `margin` before it.
    pub fn arm(&mut self, pid: i32, deadline: Instant, margin: Duration) -> io::Result<()> {
        let start_ticks = process_start_ticks(pid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no process {pid}")))?;
        let deadline_ns = instant_to_monotonic_ns(deadline);
        let fire_at_ns = deadline_ns.saturating_sub(margin.as_nanos() as u64);
        self.send(Order::Arm {
            pid,
            start_ticks,
            fire_at_ns,
            deadline_ns,
        })
    }

    pub fn disarm(&mut self) -> io::Result<()> {
        if matches!(self.last, None | Some(Order::Disarm)) {
            return Ok(());
        }
        self.send(Order::Disarm)
    }

    fn send(&mut self, order: Order) -> io::Result<()> {
        if self.last == Some(order) {
            return Ok(());
        }
        // The pipe never fills: the fence reads every message as it comes. A write error means
        // the fence is gone (EPIPE; SIGPIPE is ignored by the Rust runtime).
        self.pipe.write_all(&order.encode())?;
        self.last = Some(order);
        Ok(())
    }

    /// Get rid of a fence that stopped answering before a new one replaces it: a stopped fence
    /// continued later would still act on its old, stale deadline.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::pid1::release(self.child.id());
    }

    /// Stop the fence (clean exit of the agent): disarm, close the pipe, wait.
    pub fn shutdown(mut self) {
        if let Err(e) = self.disarm() {
            warn!(error = %e, "cannot disarm the fence");
        }
        drop(self.pipe);
        let _ = self.child.wait();
        crate::pid1::release(self.child.id());
    }
}

// ---------------------------------------------------------------------------------------------
// The fence process.

/// Where the fence stands with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Duty {
    Idle,
    Armed {
        pid: i32,
        start_ticks: u64,
        fire_at_ns: u64,
        deadline_ns: u64,
        /// Escalation steps already taken (0 = none, 1 = SIGINT, 2 = SIGQUIT, 3 = SIGKILL).
        step: u8,
    },
}

/// The next step of the escalation: when, and which step it is.
fn next_step(fire_at_ns: u64, deadline_ns: u64, step: u8) -> Option<(u64, u8)> {
    let margin = deadline_ns.saturating_sub(fire_at_ns);
    match step {
        0 => Some((fire_at_ns, 1)),
        1 => Some((fire_at_ns + margin / 2, 2)),
        2 => Some((deadline_ns.saturating_sub(margin / 4), 3)),
        _ => None,
    }
}

fn say(msg: &[u8]) {
    // SAFETY: writing a byte slice we own to stderr; a failed write is of no consequence.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Whether `pid` still is the process the agent named.
fn same_process(pid: i32, start_ticks: u64) -> bool {
    read_stat(pid).is_some_and(|s| s.start_ticks == start_ticks && !matches!(s.state, b'Z' | b'X'))
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill with a pid and a valid signal number.
    unsafe { libc::kill(pid, sig) };
}

/// Kill every child of the (stopped) postmaster `pid`: `/proc` is read with getdents into a
/// stack buffer.
fn kill_children(proc_fd: libc::c_int, pid: i32) {
    // SAFETY: rewinding a directory descriptor we own.
    unsafe { libc::lseek(proc_fd, 0, libc::SEEK_SET) };
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: getdents64 fills our buffer with at most buf.len() bytes of dirent64 records.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                proc_fd,
                buf.as_mut_ptr(),
                buf.len() as libc::c_uint,
            )
        };
        if n <= 0 {
            return;
        }
        let mut offset = 0usize;
        while offset + 19 < n as usize {
            // dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name NUL-terminated.
            let reclen = u16::from_ne_bytes([buf[offset + 16], buf[offset + 17]]) as usize;
            if reclen == 0 {
                return;
            }
            let name = &buf[offset + 19..(offset + reclen).min(n as usize)];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            if let Some(child) = parse_decimal(&name[..end]) {
                let child = child as i32;
                if read_stat(child).is_some_and(|s| s.ppid == pid) {
                    signal(child, libc::SIGKILL);
                }
            }
            offset += reclen;
        }
    }
}

/// Carry out one escalation step on the target.
fn escalate(proc_fd: libc::c_int, pid: i32, start_ticks: u64, step: u8) {
    if !same_process(pid, start_ticks) {
        return;
    }
    match step {
        1 => {
            say(b"regent fence: the leader lease was not renewed in time: fast shutdown of Postgres\n");
            signal(pid, libc::SIGINT);
        }
        2 => {
            say(b"regent fence: Postgres still up: immediate shutdown\n");
            signal(pid, libc::SIGQUIT);
        }
        _ => {
            say(b"regent fence: Postgres still up close to the lease deadline: killing it\n");
            kill_tree(proc_fd, pid);
        }
    }
}

/// Stop `pid` (so it forks nothing more), kill each of its children, then kill it. Backends
/// outlive a killed postmaster until they notice; a frozen postmaster acts on no other signal.
fn kill_tree(proc_fd: libc::c_int, pid: i32) {
    signal(pid, libc::SIGSTOP);
    kill_children(proc_fd, pid);
    signal(pid, libc::SIGKILL);
}

/// [`kill_tree`] for the agent: the last step of a stop that Postgres did not obey.
pub fn kill_postmaster_and_backends(pid: i32) {
    // SAFETY: opening a directory we only read; closed below.
    let proc_fd = unsafe {
        libc::open(
            c"/proc".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    kill_tree(proc_fd, pid);
    if proc_fd >= 0 {
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(proc_fd) };
    }
}

/// Run as the fence: never returns normally while the agent lives.
pub fn run() -> std::process::ExitCode {
    // Group-wide termination signals (a terminal's ^C, a runtime stopping the container) must
    // not take the fence away while the agent shuts down; the agent's death closes the pipe.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to ignore.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    // SAFETY: opening a directory we only read; kept for the whole run.
    let proc_fd = unsafe {
        libc::open(
            c"/proc".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    let stdin = io::stdin();
    let fd = stdin.as_raw_fd();
    let mut duty = Duty::Idle;
    let mut pipe_open = true;
    let mut message = [0u8; MESSAGE_LEN];
    let mut filled = 0usize;
    loop {
        let now = monotonic_ns();
        let timeout_ms: libc::c_int = match duty {
            Duty::Idle if !pipe_open => return std::process::ExitCode::SUCCESS,
            Duty::Idle => -1,
            Duty::Armed {
                pid,
                start_ticks,
                fire_at_ns,
                deadline_ns,
                step,
            } => match next_step(fire_at_ns, deadline_ns, step) {
                Some((at, next)) if at <= now => {
                    escalate(proc_fd, pid, start_ticks, next);
                    duty = Duty::Armed {
                        pid,
                        start_ticks,
                        fire_at_ns,
                        deadline_ns,
                        step: next,
                    };
                    continue;
                }
                Some((at, _)) => {
                    // While stopping, look at the target often: it may be gone already.
                    let wait_ns = (at - now).min(if step > 0 { 20_000_000 } else { u64::MAX });
                    wait_ns.div_ceil(1_000_000).min(60_000) as libc::c_int
                }
                None => {
                    if !same_process(pid, start_ticks) {
                        duty = Duty::Idle;
                        continue;
                    }
                    20
                }
            },
        };
        if step_done(&duty) {
            // The target is gone after a step: nothing more to do until the next arm.
            duty = Duty::Idle;
            continue;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let polled = if pipe_open {
            // SAFETY: one pollfd we own.
            unsafe { libc::poll(&mut pfd, 1, timeout_ms) }
        } else {
            // SAFETY: poll with no descriptors is a sleep.
            unsafe { libc::poll(std::ptr::null_mut(), 0, timeout_ms) }
        };
        if polled <= 0 || !pipe_open {
            continue;
        }
        // SAFETY: reading into the unfilled tail of our message buffer.
        let n = unsafe {
            libc::read(
                fd,
                message[filled..].as_mut_ptr().cast(),
                MESSAGE_LEN - filled,
            )
        };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            pipe_open = false;
            continue;
        }
        if n == 0 {
            // The agent is gone. Disarmed: done. Armed: finish the duty first.
            pipe_open = false;
            continue;
        }
        filled += n as usize;
        if filled < MESSAGE_LEN {
            continue;
        }
        filled = 0;
        match Order::decode(&message) {
            Some(Order::Arm {
                pid,
                start_ticks,
                fire_at_ns,
                deadline_ns,
            }) => {
                duty = Duty::Armed {
                    pid,
                    start_ticks,
                    fire_at_ns,
                    deadline_ns,
                    step: 0,
                };
            }
            Some(Order::Disarm) => duty = Duty::Idle,
            None => say(b"regent fence: ignored a malformed message\n"),
        }
    }
}

/// After at least one step, a target that is gone needs nothing more.
fn step_done(duty: &Duty) -> bool {
    match *duty {
        Duty::Armed {
            pid,
            start_ticks,
            step,
            ..
        } => step > 0 && !same_process(pid, start_ticks),
        Duty::Idle => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_round_trip() {
        let arm = Order::Arm {
            pid: 4242,
            start_ticks: 987_654_321,
            fire_at_ns: 1_000_000_000_123,
            deadline_ns: 1_000_002_000_123,
        };
        assert_eq!(Order::decode(&arm.encode()), Some(arm));
        assert_eq!(Order::decode(&Order::Disarm.encode()), Some(Order::Disarm));
        assert_eq!(Order::decode(&[0u8; MESSAGE_LEN]), None);
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = b"1234 (postgres: a) b) S 77 1234 1234 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 1 0 556677 1000 10 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: b'S',
                ppid: 77,
                start_ticks: 556677
            })
        );
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id() as i32;
        let stat = read_stat(me).expect("own stat");
        assert!(stat.start_ticks > 0);
        assert_eq!(stat.ppid, nix::unistd::getppid().as_raw());
        assert!(same_process(me, stat.start_ticks));
        assert!(!same_process(me, stat.start_ticks + 1));
    }

    #[test]
    fn escalation_steps_come_in_order_before_the_deadline() {
        let fire = 10_000;
        let deadline = 14_000;
        assert_eq!(next_step(fire, deadline, 0), Some((10_000, 1)));
        assert_eq!(next_step(fire, deadline, 1), Some((12_000, 2)));
        assert_eq!(next_step(fire, deadline, 2), Some((13_000, 3)));
        assert_eq!(next_step(fire, deadline, 3), None);
    }

    #[test]
    fn monotonic_conversion_never_overshoots() {
        let target = Instant::now() + Duration::from_secs(5);
        let ns = instant_to_monotonic_ns(target);
        let now = monotonic_ns();
        assert!(ns > now + 4_900_000_000 && ns <= now + 5_000_000_000);
    }
}
