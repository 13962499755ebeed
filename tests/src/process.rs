//! Process and file-system plumbing shared by the fixtures: running as the `postgres` user when
//! the tests run as root, temporary directories, and finding/killing processes through /proc.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid};

/// uid/gid that Postgres (and so every `regent` process) runs as when the tests run as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresUser {
    pub uid: u32,
    pub gid: u32,
}

/// `Some(postgres user)` when we run as root and must drop privileges for Postgres, else `None`.
pub fn postgres_user_if_root() -> Option<PostgresUser> {
    if !Uid::effective().is_root() {
        return None;
    }
    // Debian's postgres package creates uid 101 / gid 104 on a clean machine; look the user up
    // anyway so a machine with a different numbering still works.
    let user = nix::unistd::User::from_name("postgres").ok().flatten();
    Some(match user {
        Some(u) => PostgresUser {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        },
        None => PostgresUser { uid: 101, gid: 104 },
    })
}

/// Make `cmd` run as the postgres user when we are root (no-op otherwise).
pub fn run_as_postgres(cmd: &mut Command) -> &mut Command {
    if let Some(user) = postgres_user_if_root() {
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// Give `path` to the postgres user when we are root (no-op otherwise).
pub fn chown_to_postgres(path: &Path) {
    if let Some(user) = postgres_user_if_root() {
        nix::unistd::chown(
            path,
            Some(Uid::from_raw(user.uid)),
            Some(Gid::from_raw(user.gid)),
        )
        .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }
}

/// Check that a process running as `user` may execute `path`: every ancestor directory must be
/// searchable and the file executable for that user. Returns a description of the first obstacle.
pub fn check_executable_by(path: &Path, user: PostgresUser) -> Result<(), String> {
    let allowed = |meta: &fs::Metadata, bit_owner: u32, bit_group: u32, bit_other: u32| {
        let mode = meta.permissions().mode();
        if meta.uid() == user.uid {
            mode & bit_owner != 0
        } else if meta.gid() == user.gid {
            mode & bit_group != 0
        } else {
            mode & bit_other != 0
        }
    };
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let meta = fs::metadata(dir).map_err(|e| format!("cannot stat {}: {e}", dir.display()))?;
        if !allowed(&meta, 0o100, 0o010, 0o001) {
            return Err(format!(
                "directory {} (mode {:o}, owner uid {}) is not searchable by uid {}; \
                 run `chmod o+x {}`",
                dir.display(),
                meta.permissions().mode() & 0o7777,
                meta.uid(),
                user.uid,
                dir.display()
            ));
        }
    }
    let meta = fs::metadata(path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !allowed(&meta, 0o100, 0o010, 0o001) {
        return Err(format!(
            "{} (mode {:o}) is not executable by uid {}; run `chmod o+rx {}`",
            path.display(),
            meta.permissions().mode() & 0o7777,
            user.uid,
            path.display()
        ));
    }
    Ok(())
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop unless the thread is panicking
/// (then it is kept for inspection and its path printed) or `REGENT_KEEP_TEST_DIRS` is set.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Create `<tmp>/regent-<label>-<pid>-<n>`; traversable by everyone so that the postgres
    /// user can reach the member directories inside it.
    pub fn new(label: &str) -> TestDir {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("regent-{label}-{}-{n}", std::process::id()));
        if path.exists() {
            let _ = fs::remove_dir_all(&path);
        }
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Create a subdirectory owned by the postgres user (when root), mode 0700.
    pub fn postgres_subdir(&self, name: &str) -> PathBuf {
        let dir = self.path.join(name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
        chown_to_postgres(&dir);
        dir
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("REGENT_KEEP_TEST_DIRS").is_some() {
            eprintln!("test files kept in {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The last `lines` lines of a text file (lossy UTF-8), reading at most the last 256 KiB.
pub fn tail_file(path: &Path, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("<{} not readable>", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return format!("<{} not seekable>", path.display());
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Parent pid and state letter of a process, from /proc/<pid>/stat.
fn stat_of(pid: i32) -> Option<(i32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// True if `pid` exists and is not a zombie.
/// SIGSTOP `pid` and return once the kernel reports it stopped (`T` in /proc/<pid>/stat), so
/// a request sent afterwards cannot still be served (at most 2 s, then it returns anyway).
pub fn stop_process(pid: i32) {
    signal_all(&[pid], Signal::SIGSTOP);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if matches!(stat_of(pid), Some((_, 'T' | 't')) | None) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn process_alive(pid: i32) -> bool {
    matches!(stat_of(pid), Some((_, state)) if state != 'Z' && state != 'X')
}

fn all_pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// `root` and all its live descendants.
pub fn process_tree(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat_of(pid)?.0)))
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &(pid, ppid) in &parents {
            if ppid == parent && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
        i += 1;
    }
    tree.retain(|&pid| process_alive(pid));
    tree
}

/// Live processes whose working directory is `dir`: a postmaster and all its children chdir
/// into the data directory, so this finds a whole instance, orphans included.
pub fn processes_with_cwd(dir: &Path) -> Vec<i32> {
    let Ok(wanted) = fs::canonicalize(dir) else {
        return Vec::new();
    };
    all_pids()
        .into_iter()
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/cwd"))
                .map(|cwd| cwd == wanted)
                .unwrap_or(false)
        })
        .filter(|&pid| process_alive(pid) && pid != std::process::id() as i32)
        .collect()
}

/// Send `signal` to each pid, ignoring processes that are already gone.
pub fn signal_all(pids: &[i32], signal: Signal) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Wait (blocking) until none of `pids` is alive; false if some survived `deadline`.
///
/// Killed orphans are reaped by init, and until then their zombie still "exists" for
/// `kill(pid, 0)` — which is how Postgres decides that an old postmaster.pid is stale. So wait
/// for the /proc entries to vanish, accepting zombies only after half the deadline.
pub fn wait_gone_blocking(pids: &[i32], deadline: Duration) -> bool {
    let started = Instant::now();
    let until = started + deadline;
    loop {
        if pids
            .iter()
            .all(|&pid| !Path::new(&format!("/proc/{pid}")).exists())
        {
            return true;
        }
        if started.elapsed() >= deadline / 2 && pids.iter().all(|&pid| !process_alive(pid)) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Postmaster pid from the first line of `<data_dir>/postmaster.pid`, if it names a live process
/// that runs in that data directory (a stale file may name a recycled pid).
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 || !process_alive(pid) {
        return None;
    }
    let wanted = fs::canonicalize(data_dir).ok()?;
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    (cwd == wanted).then_some(pid)
}
