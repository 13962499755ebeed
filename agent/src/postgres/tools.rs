//! One-shot Postgres tools: initdb, pg_basebackup, pg_rewind, pg_controldata.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Output;

use tokio::process::Command;

use super::conf::conninfo_for;
use super::{ConnTarget, PgError, Postgres};

const STDERR_TAIL_CHARS: usize = 2000;

/// `pg_controldata` output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlData {
    pub sysid: String,
    /// "in production", "shut down", "shut down in recovery", "in archive recovery", ...
    pub state: String,
    /// Latest checkpoint's TimeLineID.
    pub timeline: u32,
    pub checkpoint_lsn: u64,
    pub redo_lsn: u64,
    pub min_recovery_end_lsn: u64,
    pub min_recovery_end_timeline: u32,
    pub wal_log_hints: bool,
    pub data_checksums: bool,
    /// Every line, by its label.
    pub raw: BTreeMap<String, String>,
}

impl ControlData {
    /// Shut down cleanly, as primary or standby (what pg_rewind needs without crash recovery).
    pub fn is_clean_shutdown(&self) -> bool {
        self.state == "shut down" || self.state == "shut down in recovery"
    }

    /// The newest timeline this data directory holds WAL of, as far as pg_control tells: on a
    /// replica the last restartpoint may predate a timeline switch it has replayed, while the
    /// minimum recovery point follows replay.
    pub fn replayed_timeline(&self) -> u32 {
        self.timeline.max(self.min_recovery_end_timeline)
    }

    /// A replica that stopped without a shutdown restartpoint (killed, crashed, power loss).
    pub fn is_crashed_replica(&self) -> bool {
        self.state == "in archive recovery"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewindOutcome {
    Rewound,
    NotNeeded,
}

fn tail(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let text = text.trim();
    let skip = text.chars().count().saturating_sub(STDERR_TAIL_CHARS);
    text.chars().skip(skip).collect()
}

pub(super) fn parse_controldata(text: &str) -> Result<ControlData, PgError> {
    let raw: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let field = |label: &str| {
        raw.get(label).ok_or_else(|| PgError::Unexpected {
            step: "pg_controldata",
            detail: format!("missing {label:?}"),
        })
    };
    let lsn = |label: &str| {
        field(label).and_then(|v| {
            dcs::model::parse_lsn(v).ok_or_else(|| PgError::Unexpected {
                step: "pg_controldata",
                detail: format!("{label}: not an LSN: {v:?}"),
            })
        })
    };
    let number = |label: &str| {
        field(label).and_then(|v| {
            v.parse::<u32>().map_err(|_| PgError::Unexpected {
                step: "pg_controldata",
                detail: format!("{label}: not a number: {v:?}"),
            })
        })
    };
    Ok(ControlData {
        sysid: field("Database system identifier")?.clone(),
        state: field("Database cluster state")?.clone(),
        timeline: number("Latest checkpoint's TimeLineID")?,
        checkpoint_lsn: lsn("Latest checkpoint location")?,
        redo_lsn: lsn("Latest checkpoint's REDO location")?,
        min_recovery_end_lsn: lsn("Minimum recovery ending location")?,
        min_recovery_end_timeline: number("Min recovery ending loc's timeline")?,
        wal_log_hints: raw.get("wal_log_hints setting").is_some_and(|v| v == "on"),
        data_checksums: raw
            .get("Data page checksum version")
            .is_some_and(|v| v != "0"),
        raw,
    })
}

impl Postgres {
    /// Run a tool to completion; non-zero exit becomes `PgError::Command` with its stderr.
    async fn run_tool(&self, step: &'static str, cmd: Command) -> Result<Output, PgError> {
        let out = crate::pid1::output(cmd)
            .await
            .map_err(|e| PgError::io(format!("run {step}"), e))?;
        if !out.status.success() {
            let mut stderr = tail(&out.stderr);
            if stderr.is_empty() {
                stderr = tail(&out.stdout);
            }
            return Err(PgError::Command {
                step,
                status: out.status.to_string(),
                stderr,
            });
        }
        Ok(out)
    }

    /// Create the data directory if needed, mode 0700, owned by `run_as`.
    fn prepare_data_dir(&self) -> Result<(), PgError> {
        let dir = &self.settings.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| PgError::io(format!("create {}", dir.display()), e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| PgError::io(format!("chmod {}", dir.display()), e))?;
        self.chown(dir)
    }

    /// Remove everything inside the data directory (keeping the directory itself; symlinks such
    /// as pg_wal are removed, not followed).
    pub fn wipe_data_dir(&self) -> Result<(), PgError> {
        let dir = &self.settings.data_dir;
        if dir.parent().is_none() {
            return Err(PgError::Unexpected {
                step: "wipe data directory",
                detail: format!("refusing to wipe {}", dir.display()),
            });
        }
        let step = || format!("wipe {}", dir.display());
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let path = entry.map_err(|e| PgError::io(step(), e))?.path();
                    let meta =
                        std::fs::symlink_metadata(&path).map_err(|e| PgError::io(step(), e))?;
                    let removed = if meta.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    removed.map_err(|e| PgError::io(format!("remove {}", path.display()), e))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PgError::io(step(), e)),
        }
        self.prepare_data_dir()
    }

    /// A 0600 file in the temp directory readable by `run_as`; removed by the caller.
    fn temp_secret_file(&self, content: &str) -> Result<PathBuf, PgError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("regent-pwfile-{}-{nanos}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| PgError::io(format!("create {}", path.display()), e))?;
        let written = file
            .write_all(content.as_bytes())
            .map_err(|e| PgError::io("write password file", e));
        drop(file);
        if let Err(e) = written.and_then(|_| self.chown(&path)) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    /// initdb into the (empty or missing) data directory with `initdb_options`, the superuser
    /// name and its password (through a temporary --pwfile). Moves initdb's postgresql.conf to
    /// postgresql.base.conf.
    pub async fn initdb(&self) -> Result<(), PgError> {
        if !self.data_dir_is_empty() {
            return Err(PgError::Unexpected {
                step: "initdb",
                detail: format!("{} is not empty", self.settings.data_dir.display()),
            });
        }
        self.prepare_data_dir()?;
        let options = &self.settings.initdb_options;
        let has = |long: &str, short: &str| {
            options
                .iter()
                .any(|o| o.starts_with(long) || o.starts_with(short))
        };
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.settings.data_dir);
        if !has("--username", "-U") {
            cmd.arg(format!("--username={}", self.settings.superuser.username));
        }
        let mut pwfile = None;
        if let Some(password) = &self.settings.superuser.password {
            if !has("--pwfile", "--pwprompt") {
                let path = self.temp_secret_file(password)?;
                cmd.arg(format!("--pwfile={}", path.display()));
                pwfile = Some(path);
            }
        }
        cmd.args(options);
        let result = self.run_tool("initdb", cmd).await;
        if let Some(path) = pwfile {
            let _ = std::fs::remove_file(path);
        }
        result?;
        let conf = self.settings.data_dir.join(super::conf::CONF);
        let base = self.settings.data_dir.join(super::conf::BASE_CONF);
        std::fs::rename(&conf, &base)
            .map_err(|e| PgError::io(format!("rename {}", conf.display()), e))?;
        Ok(())
    }

    /// Clone the data directory from `from` with pg_basebackup as the replication user.
    /// Never leaves a partial copy behind: the directory is wiped before and on failure.
    pub async fn basebackup(&self, from: &ConnTarget) -> Result<(), PgError> {
        self.write_pgpass()?;
        self.wipe_data_dir()?;
        let conninfo = conninfo_for(
            &self.settings.replication,
            from,
            &[("application_name", &self.settings.name)],
            None,
        );
        let mut cmd = self.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&self.settings.data_dir)
            .args(["-X", "stream", "-c", "fast", "--no-password", "-d"])
            .arg(conninfo)
            .args(&self.settings.basebackup_options);
        if let Err(e) = self.run_tool("pg_basebackup", cmd).await {
            if let Err(wipe) = self.wipe_data_dir() {
                tracing::error!(error = %wipe, "cannot wipe the data directory after a failed clone");
            }
            return Err(e);
        }
        self.adopt_copied_config()
    }

    /// Resynchronise our (stopped) data directory with `from` using pg_rewind. Removes
    /// standby.signal first (pg_rewind's single-user crash recovery refuses standby mode); call
    /// `write_config` afterwards, the source's configuration files were copied over ours.
    pub async fn rewind(&mut self, from: &ConnTarget) -> Result<RewindOutcome, PgError> {
        if let Some(pid) = self.running_pid() {
            return Err(PgError::AlreadyRunning(pid));
        }
        self.write_pgpass()?;
        for signal in ["standby.signal", "recovery.signal"] {
            super::conf::remove_if_exists(&self.settings.data_dir.join(signal))?;
        }
        let user = self
            .settings
            .rewind
            .as_ref()
            .unwrap_or(&self.settings.superuser);
        let conninfo = conninfo_for(user, from, &[("dbname", "postgres")], None);
        let mut cmd = self.command("pg_rewind");
        cmd.arg("-D")
            .arg(&self.settings.data_dir)
            .arg(format!("--source-server={conninfo}"))
            .env("LC_ALL", "C");
        let out = self.run_tool("pg_rewind", cmd).await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if text.contains("no rewind required") {
            return Ok(RewindOutcome::NotNeeded);
        }
        self.adopt_copied_config()?;
        Ok(RewindOutcome::Rewound)
    }

    /// Read the control file with pg_controldata.
    pub async fn controldata(&self) -> Result<ControlData, PgError> {
        let mut cmd = self.command("pg_controldata");
        cmd.arg("-D")
            .arg(&self.settings.data_dir)
            .env("LC_ALL", "C");
        let out = self.run_tool("pg_controldata", cmd).await?;
        parse_controldata(&String::from_utf8_lossy(&out.stdout))
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn controldata_is_parsed() {
        let text = "pg_control version number:            1300\n\
Database system identifier:           7710592885030834488\n\
Database cluster state:               shut down in recovery\n\
Latest checkpoint location:           0/1500790\n\
Latest checkpoint's REDO location:    0/1500758\n\
Latest checkpoint's TimeLineID:       3\n\
Latest checkpoint's oldestCommitTsXid:0\n\
Minimum recovery ending location:     0/3000000\n\
Min recovery ending loc's timeline:   2\n\
wal_log_hints setting:                on\n\
Data page checksum version:           0\n";
        let cd = parse_controldata(text).unwrap();
        assert_eq!(cd.sysid, "7710592885030834488");
        assert_eq!(cd.state, "shut down in recovery");
        assert!(cd.is_clean_shutdown());
        assert_eq!(cd.timeline, 3);
        assert_eq!(cd.checkpoint_lsn, 0x1500790);
        assert_eq!(cd.redo_lsn, 0x1500758);
        assert_eq!(cd.min_recovery_end_lsn, 0x3000000);
        assert_eq!(cd.min_recovery_end_timeline, 2);
        assert!(cd.wal_log_hints);
        assert!(!cd.data_checksums);
        assert_eq!(cd.raw["Latest checkpoint's oldestCommitTsXid"], "0");
        let e = parse_controldata("Database system identifier: 1\n").unwrap_err();
        assert!(e.to_string().contains("Database cluster state"), "{e}");
    }
}
