//! Citus for tests: real Citus when it is installed, else the stand-in in `tests/citus_standin`
//! (SQL only — "Regent test stand-in for Citus — not Citus"), plus plain Postgres servers to
//! build a coordinator and workers from.
//!
//! * `ensure_citus()` detects real Citus (a `citus.control` without the stand-in marker) or
//!   installs the stand-in into `pg_config --sharedir`/extension and `--pkglibdir` (root only,
//!   idempotent, safe when tests call it concurrently, never over a real Citus) and says once
//!   which flavor the tests run against.
//! * `PgServer` is one initdb'd Postgres 15 on 127.0.0.1 with `shared_preload_libraries =
//!   'citus'`, md5 for TCP with the harness's superuser password.
//! * `CitusCluster` is a coordinator and workers in database `citus`, registered as Regent's
//!   (and Patroni's) bootstrap does: `pg_dist_authinfo` with the superuser password,
//!   `citus_set_coordinator_host`, then `citus_add_node` for each worker.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio_postgres::{Client, NoTls};

use crate::config::{PG_BIN_DIR, SUPERUSER, SUPERUSER_PASSWORD};
use crate::process::{self, TestDir};

/// Text in the stand-in's control file that tells it from real Citus.
pub const STANDIN_MARKER: &str = "Regent test stand-in for Citus";
/// Database the Citus helpers create and use (Patroni's documented default).
pub const CITUS_DATABASE: &str = "citus";
/// The contrib module `$libdir/citus.so` points at when the stand-in is installed: Regent puts
/// `citus` first in `shared_preload_libraries`, so some library of that name must load.
pub const STANDIN_LIBRARY_TARGET: &str = "auto_explain.so";

const CONTROL_FILE: &str = "citus.control";
const SCRIPT_FILE: &str = "citus--13.2-1.sql";
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which Citus the tests run against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CitusFlavor {
    /// A real Citus installation; `version` is its control file's `default_version`.
    Real { version: String },
    /// The stand-in from `tests/citus_standin`.
    StandIn,
}

impl CitusFlavor {
    pub fn is_stand_in(&self) -> bool {
        matches!(self, CitusFlavor::StandIn)
    }

    /// For test output: "real Citus 13.2-1" or "the Citus stand-in (not Citus)".
    pub fn describe(&self) -> String {
        match self {
            CitusFlavor::Real { version } => format!("real Citus {version}"),
            CitusFlavor::StandIn => {
                "the Regent test stand-in for Citus (not Citus; tests/citus_standin)".to_string()
            }
        }
    }
}

/// `tests/citus_standin` in this workspace.
pub fn standin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("citus_standin")
}

/// Real Citus, or the stand-in installed and up to date. Panics with what to do when the
/// stand-in is needed but cannot be installed (not root, no pg_config). Cached per process.
pub fn ensure_citus() -> CitusFlavor {
    static FLAVOR: OnceLock<CitusFlavor> = OnceLock::new();
    FLAVOR
        .get_or_init(|| {
            let flavor = detect_or_install().unwrap_or_else(|e| {
                panic!(
                    "Citus is not installed and the stand-in could not be installed: {e:#}. \
                     Run the tests as root, or install it by hand (tests/citus_standin/README.md)"
                )
            });
            eprintln!("citus tests run against {}", flavor.describe());
            flavor
        })
        .clone()
}

/// The stand-in's files in this workspace, as installed names and contents.
fn standin_files() -> Result<Vec<(&'static str, String)>> {
    let dir = standin_dir();
    [CONTROL_FILE, SCRIPT_FILE]
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))
                .map(|text| (name, text))
        })
        .collect()
}

/// `pg_config --<what>` of the Postgres 15 the tests use.
fn pg_config(what: &str) -> Result<PathBuf> {
    let binary = Path::new(PG_BIN_DIR).join("pg_config");
    let output = Command::new(&binary)
        .arg(format!("--{what}"))
        .output()
        .with_context(|| format!("run {} --{what}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{} --{what} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    ))
}

/// `default_version` from a control file's text.
fn control_default_version(control: &str) -> Option<String> {
    control.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "default_version").then(|| {
            value
                .trim()
                .trim_matches('\'')
                .trim_matches('"')
                .to_string()
        })
    })
}

fn detect_or_install() -> Result<CitusFlavor> {
    let extension_dir = pg_config("sharedir")?.join("extension");
    let library_dir = pg_config("pkglibdir")?;
    let installed_control = extension_dir.join(CONTROL_FILE);
    if let Ok(text) = fs::read_to_string(&installed_control) {
        if !text.contains(STANDIN_MARKER) {
            let version = control_default_version(&text)
                .ok_or_else(|| anyhow!("{} has no default_version", installed_control.display()))?;
            return Ok(CitusFlavor::Real { version });
        }
    }
    let library = library_dir.join("citus.so");
    match fs::symlink_metadata(&library) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = fs::read_link(&library)
                .with_context(|| format!("read link {}", library.display()))?;
            if target != Path::new(STANDIN_LIBRARY_TARGET) {
                bail!(
                    "{} links to {}, not to the stand-in's {STANDIN_LIBRARY_TARGET}; \
                     refusing to replace it",
                    library.display(),
                    target.display()
                );
            }
        }
        Ok(_) => bail!(
            "{} is a real library (Citus without its control file?); refusing to replace it",
            library.display()
        ),
        Err(_) => install_symlink(&library_dir, &library)?,
    }
    for (name, text) in standin_files()? {
        let target = extension_dir.join(name);
        if fs::read_to_string(&target).ok().as_deref() != Some(text.as_str()) {
            write_atomically(&target, &text)?;
        }
    }
    Ok(CitusFlavor::StandIn)
}

static TEMP_NAME_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary name next to `target`, for write-then-rename.
fn temp_name(target: &Path) -> PathBuf {
    let n = TEMP_NAME_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.regent-{}-{n}.tmp", std::process::id()))
}

/// Write `text` to `target` through a temporary file and a rename, so that a concurrent reader
/// (another test process, a starting server) sees the old or the new file, never half of one.
fn write_atomically(target: &Path, text: &str) -> Result<()> {
    let temp = temp_name(target);
    fs::write(&temp, text).with_context(|| format!("write {}", temp.display()))?;
    fs::rename(&temp, target).with_context(|| {
        let _ = fs::remove_file(&temp);
        format!("rename {} to {}", temp.display(), target.display())
    })
}

fn install_symlink(library_dir: &Path, library: &Path) -> Result<()> {
    let module = library_dir.join(STANDIN_LIBRARY_TARGET);
    if !module.exists() {
        bail!(
            "{} is missing: the stand-in's citus.so links to it",
            module.display()
        );
    }
    let temp = temp_name(library);
    symlink(STANDIN_LIBRARY_TARGET, &temp)
        .with_context(|| format!("create symlink {}", temp.display()))?;
    fs::rename(&temp, library).with_context(|| {
        let _ = fs::remove_file(&temp);
        format!("rename {} to {}", temp.display(), library.display())
    })
}

/// Run a command (as the postgres user when root) and fail with its output if it fails.
fn run_checked(mut cmd: Command, what: &str) -> Result<Output> {
    process::run_as_postgres(&mut cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// One plain Postgres 15 server on 127.0.0.1 (no agent), stopped and removed on drop.
#[derive(Debug)]
pub struct PgServer {
    name: String,
    port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    _dir: TestDir,
}

impl PgServer {
    /// initdb and start a server named `name` with `citus` preloaded (call `ensure_citus()`
    /// first) and `extra_settings` appended to postgresql.conf.
    pub fn start(name: &str, extra_settings: &[(&str, &str)]) -> Result<PgServer> {
        let dir = TestDir::new(&format!("pg-{name}"));
        let server_dir = dir.postgres_subdir("server");
        let data_dir = server_dir.join("data");
        let log_path = server_dir.join("postgresql.log");
        let password_file = server_dir.join("pwfile");
        fs::write(&password_file, format!("{SUPERUSER_PASSWORD}\n"))
            .with_context(|| format!("write {}", password_file.display()))?;
        process::chown_to_postgres(&password_file);

        let mut initdb = Command::new(Path::new(PG_BIN_DIR).join("initdb"));
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=md5"])
            .arg(format!("--pwfile={}", password_file.display()));
        run_checked(initdb, &format!("initdb for {name}"))?;

        let port = crate::ports::free_port();
        let mut settings = vec![
            ("listen_addresses", "'127.0.0.1'".to_string()),
            ("port", port.to_string()),
            (
                "unix_socket_directories",
                format!("'{}'", server_dir.display()),
            ),
            ("shared_preload_libraries", "'citus'".to_string()),
            ("max_connections", "50".to_string()),
            ("max_prepared_transactions", "100".to_string()),
            ("shared_buffers", "16MB".to_string()),
            ("fsync", "off".to_string()),
            ("wal_level", "logical".to_string()),
        ];
        settings.extend(extra_settings.iter().map(|(k, v)| (*k, v.to_string())));
        let conf: String = settings
            .iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect();
        let conf_path = data_dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path)
            .with_context(|| format!("read {}", conf_path.display()))?;
        text.push_str(&conf);
        fs::write(&conf_path, text).with_context(|| format!("write {}", conf_path.display()))?;

        let server = PgServer {
            name: name.to_string(),
            port,
            data_dir,
            log_path,
            _dir: dir,
        };
        server.start_again()?;
        Ok(server)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `pg_ctl start -w` (after `stop`).
    pub fn start_again(&self) -> Result<()> {
        let mut pg_ctl = Command::new(Path::new(PG_BIN_DIR).join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .args(["-w", "-t", "60", "start"]);
        run_checked(pg_ctl, &format!("pg_ctl start of {}", self.name)).map_err(|e| {
            anyhow!(
                "{e:#}\nserver log:\n{}",
                process::tail_file(&self.log_path, 20)
            )
        })?;
        Ok(())
    }

    /// `pg_ctl stop -m fast -w`.
    pub fn stop(&self) -> Result<()> {
        let mut pg_ctl = Command::new(Path::new(PG_BIN_DIR).join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run_checked(pg_ctl, &format!("pg_ctl stop of {}", self.name))?;
        Ok(())
    }

    /// The server log's last `lines` lines.
    pub fn log_tail(&self, lines: usize) -> String {
        process::tail_file(&self.log_path, lines)
    }

    /// Connection settings: TCP, the superuser with its password, database `dbname`.
    pub fn pg_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(SUPERUSER)
            .password(SUPERUSER_PASSWORD)
            .dbname(dbname)
            .application_name("regent-tests")
            .connect_timeout(PG_CONNECT_TIMEOUT);
        config
    }

    /// A connected client; the connection is driven by a task on the current runtime.
    pub async fn connect(&self, dbname: &str) -> Result<Client> {
        connect_with(&self.pg_config(dbname), &self.name).await
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut pg_ctl = Command::new(Path::new(PG_BIN_DIR).join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        process::run_as_postgres(&mut pg_ctl);
        let _ = pg_ctl.status();
        // Whatever is left of the instance (a backend that outlived its postmaster).
        let leftovers = process::processes_with_cwd(&self.data_dir);
        process::signal_all(&leftovers, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Connect with `config`, driving the connection on the current runtime.
pub async fn connect_with(config: &tokio_postgres::Config, what: &str) -> Result<Client> {
    let (client, connection) = tokio::time::timeout(PG_CONNECT_TIMEOUT * 2, config.connect(NoTls))
        .await
        .map_err(|_| anyhow!("{what}: connect timed out"))?
        .with_context(|| format!("{what}: connect"))?;
    tokio::spawn(async move {
        // Errors surface on the client's next query.
        let _ = connection.await;
    });
    Ok(client)
}

/// Start one server per name, in parallel (initdb dominates the time); blocking.
pub fn start_servers(names: &[String]) -> Result<Vec<PgServer>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| scope.spawn(move || PgServer::start(name, &[])))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a server start thread panicked")))
            })
            .collect()
    })
}

/// Create database `citus` (if missing) on `server` and `CREATE EXTENSION citus` in it.
pub async fn create_citus_database(server: &PgServer) -> Result<()> {
    let admin = server.connect("postgres").await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&CITUS_DATABASE],
        )
        .await
        .with_context(|| format!("{}: look up database {CITUS_DATABASE}", server.name))?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {CITUS_DATABASE}"))
            .await
            .with_context(|| format!("{}: CREATE DATABASE {CITUS_DATABASE}", server.name))?;
    }
    let db = server.connect(CITUS_DATABASE).await?;
    db.batch_execute("CREATE EXTENSION IF NOT EXISTS citus")
        .await
        .with_context(|| format!("{}: CREATE EXTENSION citus", server.name))?;
    Ok(())
}

/// A coordinator and workers, each a plain server with database `citus` and the extension,
/// registered in the coordinator's `pg_dist_node` (coordinator group 0, worker i group i+1 on a
/// fresh coordinator).
#[derive(Debug)]
pub struct CitusCluster {
    pub flavor: CitusFlavor,
    pub coordinator: PgServer,
    pub workers: Vec<PgServer>,
}

impl CitusCluster {
    /// Servers only, each with database `citus` and the extension; nothing registered.
    pub async fn start_unregistered(label: &str, workers: usize) -> Result<CitusCluster> {
        let flavor = ensure_citus();
        let names: Vec<String> = std::iter::once(format!("{label}-coordinator"))
            .chain((1..=workers).map(|i| format!("{label}-worker{i}")))
            .collect();
        let mut servers = tokio::task::spawn_blocking(move || start_servers(&names))
            .await
            .context("server start task")?
            .context("start servers")?;
        for server in &servers {
            create_citus_database(server).await?;
        }
        let coordinator = servers.remove(0);
        Ok(CitusCluster {
            flavor,
            coordinator,
            workers: servers,
        })
    }

    /// Servers registered as Regent's Citus bootstrap does: the superuser password in
    /// `pg_dist_authinfo` (so the coordinator reaches the workers over md5), the coordinator's
    /// own address, then each worker with `citus_add_node`.
    pub async fn start(label: &str, workers: usize) -> Result<CitusCluster> {
        let cluster = CitusCluster::start_unregistered(label, workers).await?;
        let coordinator = cluster.coordinator_client().await?;
        coordinator
            .execute(
                "INSERT INTO pg_catalog.pg_dist_authinfo VALUES (0, pg_catalog.current_user(), $1)",
                &[&format!("password={SUPERUSER_PASSWORD}")],
            )
            .await
            .context("coordinator: insert pg_dist_authinfo")?;
        coordinator
            .execute(
                "SELECT pg_catalog.citus_set_coordinator_host('127.0.0.1', $1, 'primary', 'default')",
                &[&i32::from(cluster.coordinator.port())],
            )
            .await
            .context("coordinator: citus_set_coordinator_host")?;
        for worker in &cluster.workers {
            coordinator
                .query_one(
                    "SELECT pg_catalog.citus_add_node('127.0.0.1', $1)",
                    &[&i32::from(worker.port())],
                )
                .await
                .with_context(|| format!("coordinator: citus_add_node for {}", worker.name()))?;
        }
        Ok(cluster)
    }

    /// A client of the coordinator's `citus` database.
    pub async fn coordinator_client(&self) -> Result<Client> {
        self.coordinator.connect(CITUS_DATABASE).await
    }

    /// A client of worker `index`'s `citus` database.
    pub async fn worker_client(&self, index: usize) -> Result<Client> {
        let worker = self
            .workers
            .get(index)
            .ok_or_else(|| anyhow!("no worker {index} (cluster has {})", self.workers.len()))?;
        worker.connect(CITUS_DATABASE).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_version_is_read_from_a_control_file() {
        let real = "# Citus extension\ncomment = 'Citus distributed database'\n\
                    default_version = '13.2-1'\nmodule_pathname = '$libdir/citus'\n";
        assert_eq!(control_default_version(real).as_deref(), Some("13.2-1"));
        assert_eq!(control_default_version("comment = 'x'\n"), None);
    }

    #[test]
    fn the_workspace_control_file_carries_the_marker_and_version() {
        let control = fs::read_to_string(standin_dir().join(CONTROL_FILE))
            .unwrap_or_else(|e| panic!("read the stand-in control file: {e}"));
        assert!(control.contains(STANDIN_MARKER));
        assert_eq!(control_default_version(&control).as_deref(), Some("13.2-1"));
        assert!(
            standin_dir().join(SCRIPT_FILE).exists(),
            "the script for default_version exists"
        );
    }

    #[test]
    fn temporary_names_are_hidden_siblings_and_unique() {
        let target = Path::new("/x/extension/citus.control");
        let (a, b) = (temp_name(target), temp_name(target));
        assert_ne!(a, b);
        assert_eq!(a.parent(), target.parent());
        let name = a.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(name.is_some_and(|n| n.starts_with(".citus.control.") && n.ends_with(".tmp")));
    }
}
