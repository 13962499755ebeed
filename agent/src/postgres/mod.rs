//! Postgres control: rendering configuration files, running the postmaster and the one-shot tools
//! (initdb, pg_basebackup, pg_rewind, pg_controldata) and observing the running server.
//!
//! Every child process is spawned through [`crate::pid1`], so PID 1 reaping never steals an exit
//! status we wait for, and children die with the agent. One [`Postgres`] value owns the postmaster.
#![allow(dead_code)]

mod conf;
mod control;
mod process;
mod query;
mod tls;
mod tools;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

// The public API of this module; not every item is referenced by the agent yet.
#[allow(unused_imports)]
pub use conf::{slot_name_for, synchronous_standby_names_for, ConfChange, ConfRole};
pub use control::PostgresControl;
#[allow(unused_imports)]
pub use query::{PgObservation, RemoteTimeline, ReplicationRow, TimelineSwitch};
#[allow(unused_imports)]
pub use tools::{ControlData, RewindOutcome};

/// Credentials and TLS options of one Postgres role the agent connects as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgUser {
    pub username: String,
    pub password: Option<String>,
    pub sslmode: Option<String>,
    pub sslkey: Option<String>,
    pub sslpassword: Option<String>,
    pub sslcert: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcrl: Option<String>,
    pub sslcrldir: Option<String>,
    pub gssencmode: Option<String>,
    pub channel_binding: Option<String>,
}

impl PgUser {
    pub fn new(username: impl Into<String>, password: Option<&str>) -> Self {
        PgUser {
            username: username.into(),
            password: password.map(str::to_owned),
            ..PgUser::default()
        }
    }

    /// libpq connection options other than user/password, in a stable order.
    fn conninfo_options(&self) -> Vec<(&'static str, &str)> {
        [
            ("sslmode", &self.sslmode),
            ("sslkey", &self.sslkey),
            ("sslpassword", &self.sslpassword),
            ("sslcert", &self.sslcert),
            ("sslrootcert", &self.sslrootcert),
            ("sslcrl", &self.sslcrl),
            ("sslcrldir", &self.sslcrldir),
            ("gssencmode", &self.gssencmode),
            ("channel_binding", &self.channel_binding),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

/// Everything the Postgres control module needs, filled from the agent configuration.
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// Cluster scope; rendered as `cluster_name`.
    pub scope: String,
    /// Member name: `application_name` of the replication connection and source of the slot name.
    pub name: String,
    pub listen_addresses: String,
    pub port: u16,
    /// Host other members use to reach this server.
    pub connect_host: String,
    pub superuser: PgUser,
    pub replication: PgUser,
    pub rewind: Option<PgUser>,
    /// Merged GUCs (dynamic config + local overrides).
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// pg_hba.conf lines; empty = a default set of rules.
    pub pg_hba: Vec<String>,
    /// Ready initdb flags such as `--data-checksums`, `--encoding=UTF8`.
    pub initdb_options: Vec<String>,
    /// Extra pg_basebackup flags, appended after ours (so they win).
    pub basebackup_options: Vec<String>,
    /// uid/gid to run the Postgres binaries as (needed when the agent runs as root).
    pub run_as: Option<(u32, u32)>,
    pub pg_ctl_timeout: Duration,
    /// Directory of the Unix socket the agent connects through; rendered as
    /// `unix_socket_directories` unless `parameters` sets that itself. Must be writable by Postgres.
    pub socket_dir: PathBuf,
    /// Postmaster stderr/stdout goes here (appended); `None` inherits the agent's.
    pub log_file: Option<PathBuf>,
    /// Password file for libpq tools and the WAL receiver; `None` = `<data_dir parent>/.pgpass_<name>`.
    pub pgpass: Option<PathBuf>,
    /// Set on members of a Citus cluster: Citus's GUCs on every render, its bootstrap after initdb.
    pub citus: Option<CitusSettings>,
}

/// The Citus part of the settings (`citus.group`, `citus.database`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CitusSettings {
    /// 0 = coordinator, ≥ 1 = a worker group.
    pub group: u32,
    pub database: String,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            data_dir: PathBuf::from("/var/lib/postgresql/data"),
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            scope: String::new(),
            name: String::new(),
            listen_addresses: "127.0.0.1".into(),
            port: 5432,
            connect_host: "127.0.0.1".into(),
            superuser: PgUser::new("postgres", None),
            replication: PgUser::new("replicator", None),
            rewind: None,
            parameters: serde_json::Map::new(),
            pg_hba: Vec::new(),
            initdb_options: Vec::new(),
            basebackup_options: Vec::new(),
            run_as: None,
            pg_ctl_timeout: Duration::from_secs(60),
            socket_dir: PathBuf::from("/var/run/postgresql"),
            log_file: None,
            pgpass: None,
            citus: None,
        }
    }
}

/// A server to replicate, clone or rewind from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnTarget {
    pub host: String,
    pub port: u16,
}

/// How to shut the postmaster down (SIGTERM / SIGINT / SIGQUIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Smart,
    Fast,
    Immediate,
}

/// What the postmaster is doing, from our child handle and `postmaster.pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PgProcessState {
    #[default]
    Stopped,
    /// Our postmaster exited without being asked to.
    Crashed,
    Starting,
    /// Accepting connections (`ready`): a primary or a hot standby; see `in_recovery`.
    Running,
    /// Up in recovery but not accepting connections (`standby`: hot_standby is off).
    Standby,
    Stopping,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} failed ({status}): {stderr}")]
    Command {
        step: &'static str,
        status: String,
        stderr: String,
    },
    #[error("postgresql parameter {name}: {reason}")]
    Parameter { name: String, reason: String },
    #[error("postgresql.authentication.{user}.{source}")]
    TlsOption {
        user: &'static str,
        source: tls::TlsOptionError,
    },
    #[error("postmaster exited during start ({status}); log tail: {log_tail}")]
    StartFailed { status: String, log_tail: String },
    #[error("postmaster did not accept connections within {0:?}")]
    StartTimeout(Duration),
    #[error("postmaster already running (pid {0})")]
    AlreadyRunning(i32),
    #[error("postgres is not running")]
    NotRunning,
    #[error("postmaster {0} still alive after SIGKILL")]
    StopFailed(i32),
    #[error("{step}: {source}")]
    Sql {
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{step}: no answer within {timeout:?}")]
    Timeout {
        step: &'static str,
        timeout: Duration,
    },
    #[error("{step}: {detail}")]
    Unexpected { step: &'static str, detail: String },
}

impl PgError {
    fn io(step: impl Into<String>, source: std::io::Error) -> Self {
        PgError::Io {
            step: step.into(),
            source,
        }
    }
}

/// Owner of one Postgres data directory and its postmaster.
pub struct Postgres {
    settings: PgSettings,
    child: Option<crate::pid1::ManagedChild>,
    /// A postmaster we did not start (found running at agent start).
    adopted_pid: Option<i32>,
    stop_requested: bool,
    unexpected_exit: Option<std::process::ExitStatus>,
    client: Option<tokio_postgres::Client>,
    /// TLS of the superuser's TCP connections to other members (built from its ssl options).
    remote_tls: Option<tls::RemoteTls>,
    /// `synchronous_standby_names` chosen by synchronous mode; `None` leaves the parameter as
    /// configured.
    synchronous_standby_names: Option<String>,
}

impl Postgres {
    /// Relative `data_dir`/`socket_dir` are resolved against the current directory. Fails when
    /// the settings cannot produce a configuration (bad parameter names or values, no name).
    pub fn new(settings: PgSettings) -> Result<Self, PgError> {
        let mut pg = Postgres {
            settings: PgSettings::default(),
            child: None,
            adopted_pid: None,
            stop_requested: false,
            unexpected_exit: None,
            client: None,
            remote_tls: None,
            synchronous_standby_names: None,
        };
        pg.set_settings(settings)?;
        Ok(pg)
    }

    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    /// Replace the settings (after a config reload); call `write_config` afterwards.
    pub fn set_settings(&mut self, mut settings: PgSettings) -> Result<(), PgError> {
        settings.data_dir = absolute(&settings.data_dir);
        settings.socket_dir = absolute(&settings.socket_dir);
        validate(&settings)?;
        let remote_tls =
            tls::remote_tls(&settings.superuser).map_err(|source| PgError::TlsOption {
                user: "superuser",
                source,
            })?;
        self.settings = settings;
        self.remote_tls = Some(remote_tls);
        self.client = None;
        Ok(())
    }

    /// Replace the GUCs and pg_hba lines (dynamic configuration changed); call `write_config`
    /// afterwards. Bad parameters are reported by `write_config`.
    pub fn set_parameters(
        &mut self,
        parameters: serde_json::Map<String, serde_json::Value>,
        pg_hba: Vec<String>,
    ) {
        self.settings.parameters = parameters;
        self.settings.pg_hba = pg_hba;
    }

    /// How other members reach this server.
    pub fn conn_target(&self) -> ConnTarget {
        ConnTarget {
            host: self.settings.connect_host.clone(),
            port: self.settings.port,
        }
    }

    /// `conn_url` as published in the member data: `postgres://host:port/postgres`.
    pub fn conn_url(&self) -> String {
        let host = &self.settings.connect_host;
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        format!("postgres://{host}:{}/postgres", self.settings.port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.settings.data_dir
    }

    pub fn pgpass_path(&self) -> PathBuf {
        if let Some(p) = &self.settings.pgpass {
            return absolute(p);
        }
        let parent = self
            .settings
            .data_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        parent.join(format!(".pgpass_{}", slot_name_for(&self.settings.name)))
    }

    /// The socket directory we connect through: the first entry of a user-set
    /// `unix_socket_directories`, else `socket_dir`.
    fn effective_socket_dir(&self) -> PathBuf {
        let user_set = self
            .settings
            .parameters
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("unix_socket_directories"))
            .and_then(|(_, v)| v.as_str())
            .and_then(|v| {
                v.split(',')
                    .map(str::trim)
                    .find(|d| !d.is_empty() && !d.starts_with('@'))
                    .map(PathBuf::from)
            });
        user_set.unwrap_or_else(|| self.settings.socket_dir.clone())
    }

    /// Connection settings for database `database` of the local server: the superuser over the
    /// Unix socket, as the agent's own connection.
    pub fn local_db_config(&self, database: &str) -> tokio_postgres::Config {
        let user = &self.settings.superuser;
        let mut config = tokio_postgres::Config::new();
        config
            .user(&user.username)
            .dbname(database)
            .application_name("regent")
            .host_path(self.effective_socket_dir())
            .port(self.settings.port)
            .connect_timeout(Duration::from_secs(2));
        if let Some(p) = &user.password {
            config.password(p);
        }
        config
    }

    /// Citus's steps on a new primary, after initdb and the roles: the Citus
    /// database and extension, the superuser's credentials in `pg_dist_authinfo`, and on the
    /// coordinator its own address in `pg_dist_node`. Nothing to do outside a Citus cluster.
    pub async fn citus_bootstrap(&self) -> Result<(), PgError> {
        let Some(citus) = &self.settings.citus else {
            return Ok(());
        };
        let superuser = &self.settings.superuser;
        let plan = citus::bootstrap::Bootstrap {
            database: citus.database.clone(),
            coordinator: (citus.group == 0).then(|| citus::bootstrap::NodeAddress {
                host: self.settings.connect_host.clone(),
                port: self.settings.port,
            }),
            superuser: citus::bootstrap::AuthInfo {
                password: superuser.password.clone(),
                sslcert: superuser.sslcert.clone(),
                sslkey: superuser.sslkey.clone(),
            },
        };
        let local = self.local_db_config("postgres");
        citus::bootstrap::run(&local, &plan)
            .await
            .map_err(|e| PgError::Unexpected {
                step: "Citus bootstrap",
                detail: e.to_string(),
            })
    }

    /// True when the data directory is missing or has no entries.
    pub fn data_dir_is_empty(&self) -> bool {
        match std::fs::read_dir(&self.settings.data_dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(_) => true,
        }
    }

    /// True when the data directory looks like an initialised cluster.
    pub fn is_valid_data_dir(&self) -> bool {
        let d = &self.settings.data_dir;
        d.join("PG_VERSION").is_file() && d.join("global").join("pg_control").is_file()
    }

    /// Major version from `PG_VERSION` (e.g. 15), if readable.
    pub fn data_dir_major_version(&self) -> Option<u32> {
        std::fs::read_to_string(self.settings.data_dir.join("PG_VERSION"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// chown to `run_as` when set.
    fn chown(&self, path: &Path) -> Result<(), PgError> {
        if let Some((uid, gid)) = self.settings.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| PgError::io(format!("chown {}", path.display()), e))?;
        }
        Ok(())
    }

    /// A command for one of the Postgres binaries: run as `run_as`, from `/`, with our passfile
    /// and without the agent's own configuration variables.
    fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.settings.bin_dir.join(program));
        cmd.current_dir("/");
        if let Some((uid, gid)) = self.settings.run_as {
            cmd.uid(uid).gid(gid);
        }
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("PATRONI_") || k.starts_with("REGENT_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("PGPASSFILE", self.pgpass_path());
        cmd
    }
}

fn validate(settings: &PgSettings) -> Result<(), PgError> {
    let invalid = |name: &str, reason: &str| PgError::Parameter {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if settings.name.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if settings.data_dir.parent().is_none() {
        return Err(invalid("data_dir", "must not be the root directory"));
    }
    if settings.superuser.username.is_empty() {
        return Err(invalid("superuser.username", "must not be empty"));
    }
    if settings.replication.username.is_empty() {
        return Err(invalid("replication.username", "must not be empty"));
    }
    conf::managed_parameters(settings, &ConfRole::Primary, Path::new("/")).map(|_| ())
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
