//! SQL-side control: observation, promotion, roles after bootstrap, slots, timeline history.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage, Socket};

use super::{ConnTarget, PgError, PgProcessState, PgUser, Postgres};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
const PROMOTE_WAIT_SECONDS: u32 = 60;
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(20);

/// One row of pg_stat_replication.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicationRow {
    pub pid: i32,
    pub usename: Option<String>,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    pub sync_state: Option<String>,
    pub sync_priority: Option<i32>,
    pub write_lsn: Option<u64>,
    pub flush_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
}

/// What the agent knows about the local server after one observation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PgObservation {
    pub running: bool,
    pub state: PgProcessState,
    /// Whether a query succeeded; everything below is `None`/empty otherwise.
    pub queryable: bool,
    pub in_recovery: Option<bool>,
    pub timeline: Option<u32>,
    pub sysid: Option<String>,
    /// Primary: pg_current_wal_flush_lsn().
    pub wal_position: Option<u64>,
    pub received_lsn: Option<u64>,
    pub replayed_lsn: Option<u64>,
    pub replayed_timestamp: Option<String>,
    pub replay_paused: Option<bool>,
    pub replication: Vec<ReplicationRow>,
    /// Replica: pg_stat_wal_receiver.status = 'streaming'.
    pub streaming: Option<bool>,
    pub server_version: Option<u32>,
    pub postmaster_start_time: Option<String>,
    pub pending_restart: bool,
    /// Why a restart is pending: each parameter whose running value differs from the one the
    /// configuration files give (what the postmaster would take on restart), by name.
    pub pending_restart_reason: BTreeMap<String, PendingParam>,
}

/// One parameter that waits for a restart, values as Patroni shows them (`128MB`, not `16384`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PendingParam {
    /// The running value (`current_setting`).
    pub old_value: String,
    /// The value after a restart: the last setting in the configuration files, or the built-in
    /// default when the files no longer set it.
    pub new_value: String,
}

impl PgObservation {
    /// `{"param": {"old_value": .., "new_value": ..}}` for the member data and `GET /patroni`;
    /// `None` when nothing is pending.
    pub fn pending_restart_reason_json(&self) -> Option<serde_json::Value> {
        if self.pending_restart_reason.is_empty() {
            return None;
        }
        let reasons = self
            .pending_restart_reason
            .iter()
            .map(|(name, p)| {
                let diff = serde_json::json!({"old_value": p.old_value, "new_value": p.new_value});
                (name.clone(), diff)
            })
            .collect();
        Some(serde_json::Value::Object(reasons))
    }
}

/// A line of a timeline history file: (timeline, LSN where it ended, reason).
pub type TimelineSwitch = (u32, u64, String);

/// A remote server's current timeline and the history leading to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTimeline {
    pub timeline: u32,
    /// Timeline of the server's last checkpoint. Right after a promotion it still names the old
    /// timeline until the first checkpoint completes; pg_rewind reads it and would wrongly answer
    /// "no rewind required", so callers wait until it caught up.
    pub checkpoint_timeline: Option<u32>,
    pub history: Vec<TimelineSwitch>,
}

pub(super) fn parse_timeline_history(text: &str) -> Result<Vec<TimelineSwitch>, PgError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, char::is_whitespace);
        let bad = || PgError::Unexpected {
            step: "timeline history",
            detail: format!("malformed line {line:?}"),
        };
        let timeline = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let switch_lsn = parts
            .next()
            .and_then(dcs::model::parse_lsn)
            .ok_or_else(bad)?;
        let reason = parts.next().unwrap_or_default().trim().to_string();
        out.push((timeline, switch_lsn, reason));
    }
    Ok(out)
}

/// Timeline from a WAL file name (first 8 hex digits).
fn timeline_of_walfile(name: &str) -> Option<u32> {
    name.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok())
}

async fn timed<T>(
    step: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, PgError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|source| PgError::Sql { step, source }),
        Err(_) => Err(PgError::Timeout { step, timeout }),
    }
}

async fn connect<T>(config: &Config, step: &'static str, tls: T) -> Result<Client, PgError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = timed(step, CONNECT_TIMEOUT * 2, config.connect(tls)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

fn base_config(user: &PgUser) -> Config {
    let mut config = Config::new();
    config
        .user(&user.username)
        .dbname("postgres")
        .application_name("regent")
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(p) = &user.password {
        config.password(p);
    }
    config
}

fn opt_lsn(v: Option<String>) -> Option<u64> {
    v.as_deref().and_then(dcs::model::parse_lsn)
}

const OBSERVE_SQL: &str = "SELECT pg_is_in_recovery(), \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END, \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
    pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
    pg_last_xact_replay_timestamp()::text, \
    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE NULL END, \
    (SELECT timeline_id FROM pg_control_checkpoint()), \
    (SELECT system_identifier::text FROM pg_control_system()), \
    (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
    (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1), \
    current_setting('server_version_num')::int, \
    pg_postmaster_start_time()::text, \
    (SELECT bool_or(pending_restart) FROM pg_settings), \
    (SELECT min_recovery_end_timeline FROM pg_control_recovery())";

/// Parameters waiting for a restart with their running value and the value the configuration
/// files give now (pg_file_settings re-reads them; the last occurrence wins), falling back to the
/// built-in default when no file sets the parameter any more. Recovery parameters and hot_standby
/// are left out, as Patroni does: the agent manages them itself.
const PENDING_RESTART_SQL: &str = "SELECT s.name, pg_catalog.current_setting(s.name), \
    f.setting, s.boot_val, s.unit, s.vartype \
    FROM pg_catalog.pg_settings s \
    LEFT JOIN LATERAL (SELECT fs.setting FROM pg_catalog.pg_file_settings fs \
        WHERE pg_catalog.lower(fs.name) = pg_catalog.lower(s.name) \
        ORDER BY fs.seqno DESC LIMIT 1) f ON true \
    WHERE s.pending_restart AND s.name <> 'hot_standby' AND s.name NOT LIKE 'recovery\\_%' \
    AND s.name NOT IN ('restore_command', 'archive_cleanup_command', 'primary_conninfo', \
        'primary_slot_name', 'promote_trigger_file') \
    ORDER BY s.name";

/// Bytes per memory unit and milliseconds per time unit, largest first (Postgres' unit names).
const MEMORY_UNITS: &[(&str, u64)] = &[
    ("TB", 1 << 40),
    ("GB", 1 << 30),
    ("MB", 1 << 20),
    ("kB", 1 << 10),
    ("B", 1),
];
const TIME_UNITS: &[(&str, u64)] = &[
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("min", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// A positive integer setting in its base unit (`unit` from pg_settings: `8kB`, `kB`, `MB`, `s`,
/// `ms`, ...) written with the largest unit that represents it exactly, as Postgres and Patroni
/// show values: `16384` with `8kB` → `128MB`. Anything else comes back unchanged.
pub(crate) fn from_base_unit(value: &str, vartype: &str, unit: Option<&str>) -> String {
    let unchanged = || value.to_string();
    let (Some(unit), "integer") = (unit, vartype) else {
        return unchanged();
    };
    let Ok(amount) = value.trim().parse::<u64>() else {
        return unchanged();
    };
    // `8kB`, `16MB`: a multiplier in front of the unit name.
    let digits = unit.len() - unit.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (multiplier, unit_name) = unit.split_at(digits);
    let multiplier = if multiplier.is_empty() {
        1
    } else {
        match multiplier.parse::<u64>() {
            Ok(m) => m,
            Err(_) => return unchanged(),
        }
    };
    let table = if MEMORY_UNITS.iter().any(|(name, _)| *name == unit_name) {
        MEMORY_UNITS
    } else if TIME_UNITS.iter().any(|(name, _)| *name == unit_name) {
        TIME_UNITS
    } else {
        return unchanged();
    };
    let Some(base) = table
        .iter()
        .find(|(name, _)| *name == unit_name)
        .map(|(_, factor)| *factor)
    else {
        return unchanged();
    };
    let Some(total) = amount
        .checked_mul(multiplier)
        .and_then(|v| v.checked_mul(base))
    else {
        return unchanged();
    };
    if total == 0 {
        return unchanged();
    }
    table
        .iter()
        .filter(|(_, factor)| *factor >= base)
        .find(|(_, factor)| total % factor == 0)
        .map_or_else(unchanged, |(name, factor)| {
            format!("{}{name}", total / factor)
        })
}

const REPLICATION_SQL: &str = "SELECT pid, usename::text, application_name, \
    client_addr::text, state, sync_state, sync_priority, \
    write_lsn::text, flush_lsn::text, replay_lsn::text \
    FROM pg_stat_replication ORDER BY application_name";

impl Postgres {
    /// Connection settings for the local server: superuser over the Unix socket.
    fn local_config(&self) -> Config {
        let mut config = base_config(&self.settings.superuser);
        config
            .host_path(self.effective_socket_dir())
            .port(self.settings.port);
        config
    }

    /// The cached local connection, (re)connecting when needed.
    async fn client(&mut self) -> Result<&Client, PgError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            let client = connect(&self.local_config(), "connect to local postgres", NoTls).await?;
            self.client = Some(client);
        }
        self.client.as_ref().ok_or(PgError::NotRunning)
    }

    /// Drop the cached connection after an error so the next call reconnects.
    fn forget_client_on_error<T>(&mut self, r: Result<T, PgError>) -> Result<T, PgError> {
        if r.is_err() {
            self.client = None;
        }
        r
    }

    pub(super) async fn query_local(
        &mut self,
        step: &'static str,
        timeout: Duration,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, PgError> {
        let r = match self.client().await {
            Ok(client) => timed(step, timeout, client.query(sql, params)).await,
            Err(e) => Err(e),
        };
        self.forget_client_on_error(r)
    }

    pub(super) async fn execute_local(
        &mut self,
        step: &'static str,
        timeout: Duration,
        sql: &str,
    ) -> Result<(), PgError> {
        let r = match self.client().await {
            Ok(client) => timed(step, timeout, client.batch_execute(sql)).await,
            Err(e) => Err(e),
        };
        self.forget_client_on_error(r)
    }

    /// Observe the local server. Never fails: when Postgres is down or not accepting
    /// connections only `running`/`state` are filled.
    pub async fn observe(&mut self) -> PgObservation {
        let state = self.process_state();
        let running = matches!(
            state,
            PgProcessState::Starting
                | PgProcessState::Running
                | PgProcessState::Standby
                | PgProcessState::Stopping
        );
        let mut obs = PgObservation {
            running,
            state,
            ..PgObservation::default()
        };
        if !running {
            self.client = None;
            return obs;
        }
        if let Err(e) = self.observe_sql(&mut obs).await {
            tracing::debug!(error = %e, "postgres not queryable");
        }
        obs
    }

    async fn observe_sql(&mut self, obs: &mut PgObservation) -> Result<(), PgError> {
        let rows = self
            .query_local("observe", QUERY_TIMEOUT, OBSERVE_SQL, &[])
            .await?;
        let row = rows.first().ok_or(PgError::Unexpected {
            step: "observe",
            detail: "no row".into(),
        })?;
        let get = |e: tokio_postgres::Error| PgError::Sql {
            step: "observe",
            source: e,
        };
        let in_recovery: bool = row.try_get(0).map_err(get)?;
        let walfile: Option<String> = row.try_get(2).map_err(get)?;
        let checkpoint_tli: Option<i32> = row.try_get(7).map_err(get)?;
        let receiver_status: Option<String> = row.try_get(9).map_err(get)?;
        let received_tli: Option<i32> = row.try_get(10).map_err(get)?;
        obs.queryable = true;
        obs.in_recovery = Some(in_recovery);
        obs.wal_position = opt_lsn(row.try_get(1).map_err(get)?);
        obs.received_lsn = opt_lsn(row.try_get(3).map_err(get)?);
        obs.replayed_lsn = opt_lsn(row.try_get(4).map_err(get)?);
        obs.replayed_timestamp = row.try_get(5).map_err(get)?;
        obs.replay_paused = row.try_get(6).map_err(get)?;
        obs.sysid = row.try_get(8).map_err(get)?;
        obs.streaming = in_recovery.then(|| receiver_status.as_deref() == Some("streaming"));
        let server_version: i32 = row.try_get(11).map_err(get)?;
        obs.server_version = u32::try_from(server_version).ok();
        obs.postmaster_start_time = row.try_get(12).map_err(get)?;
        obs.pending_restart = row
            .try_get::<_, Option<bool>>(13)
            .map_err(get)?
            .unwrap_or(false);
        // pg_control_checkpoint() lags right after a promotion; the current WAL file does not.
        let positive = |t: Option<i32>| t.and_then(|t| u32::try_from(t).ok()).filter(|t| *t > 0);
        obs.timeline = if in_recovery {
            // A replica's last restartpoint can still be on the timeline before a switch it
            // has replayed; the minimum recovery point and the walreceiver are on the new one.
            let min_recovery_tli: Option<i32> = row.try_get(14).map_err(get)?;
            [received_tli, checkpoint_tli, min_recovery_tli]
                .into_iter()
                .filter_map(positive)
                .max()
        } else {
            walfile
                .as_deref()
                .and_then(timeline_of_walfile)
                .or(positive(checkpoint_tli))
        };
        if obs.pending_restart {
            // As in Patroni the flag means "there is a reason" (parameters the agent manages
            // itself are no reason); it stays set when the details cannot be read this time.
            match self.pending_restart_params().await {
                Ok(params) => {
                    obs.pending_restart = !params.is_empty();
                    obs.pending_restart_reason = params;
                }
                Err(e) => tracing::debug!(error = %e, "pending restart reason not read"),
            }
        }
        if !in_recovery {
            obs.replication = self.replication_rows().await?;
        }
        Ok(())
    }

    async fn pending_restart_params(&mut self) -> Result<BTreeMap<String, PendingParam>, PgError> {
        let step = "pending restart reason";
        let rows = self
            .query_local(step, QUERY_TIMEOUT, PENDING_RESTART_SQL, &[])
            .await?;
        let get = |e: tokio_postgres::Error| PgError::Sql { step, source: e };
        let mut params = BTreeMap::new();
        for row in &rows {
            let name: String = row.try_get(0).map_err(get)?;
            let running: Option<String> = row.try_get(1).map_err(get)?;
            let in_files: Option<String> = row.try_get(2).map_err(get)?;
            let default: Option<String> = row.try_get(3).map_err(get)?;
            let unit: Option<String> = row.try_get(4).map_err(get)?;
            let vartype: String = row.try_get(5).map_err(get)?;
            let unit = unit.as_deref();
            let new_value = in_files.or(default).unwrap_or_else(|| "?".to_string());
            params.insert(
                name,
                PendingParam {
                    old_value: from_base_unit(&running.unwrap_or_default(), &vartype, unit),
                    new_value: from_base_unit(&new_value, &vartype, unit),
                },
            );
        }
        Ok(params)
    }

    async fn replication_rows(&mut self) -> Result<Vec<ReplicationRow>, PgError> {
        let rows = self
            .query_local("pg_stat_replication", QUERY_TIMEOUT, REPLICATION_SQL, &[])
            .await?;
        let get = |e: tokio_postgres::Error| PgError::Sql {
            step: "pg_stat_replication",
            source: e,
        };
        rows.iter()
            .map(|row| {
                Ok(ReplicationRow {
                    pid: row.try_get(0).map_err(get)?,
                    usename: row.try_get(1).map_err(get)?,
                    application_name: row
                        .try_get::<_, Option<String>>(2)
                        .map_err(get)?
                        .unwrap_or_default(),
                    client_addr: row.try_get(3).map_err(get)?,
                    state: row.try_get(4).map_err(get)?,
                    sync_state: row.try_get(5).map_err(get)?,
                    sync_priority: row.try_get(6).map_err(get)?,
                    write_lsn: opt_lsn(row.try_get(7).map_err(get)?),
                    flush_lsn: opt_lsn(row.try_get(8).map_err(get)?),
                    replay_lsn: opt_lsn(row.try_get(9).map_err(get)?),
                })
            })
            .collect()
    }

    /// Promote the standby and return once it accepts writes: `pg_promote(false)` then
    /// `pg_is_in_recovery()` every 20 ms (`pg_promote(true)` checks only every 100 ms, which
    /// every switchover and failover would pay); when the standby does not accept connections
    /// yet, pg_ctl's signal instead.
    pub async fn promote(&mut self) -> Result<(), PgError> {
        if !self.is_running() {
            return Err(PgError::NotRunning);
        }
        let timeout = Duration::from_secs(u64::from(PROMOTE_WAIT_SECONDS) + 5);
        let connected = self.client().await.map(|_| ());
        match connected {
            Ok(()) => {
                let rows = self
                    .query_local("pg_promote", QUERY_TIMEOUT, "SELECT pg_promote(false)", &[])
                    .await?;
                let signalled: bool = rows
                    .first()
                    .and_then(|r| r.try_get(0).ok())
                    .unwrap_or(false);
                if !signalled {
                    return Err(PgError::Unexpected {
                        step: "pg_promote",
                        detail: "the server did not accept the promotion request".into(),
                    });
                }
                self.wait_writable(timeout).await
            }
            Err(e) => {
                tracing::info!(error = %e, "standby not queryable; promoting by signal");
                self.signal_promote()?;
                self.wait_writable(timeout).await
            }
        }
    }

    async fn wait_writable(&mut self, timeout: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return Err(PgError::NotRunning);
            }
            if let Ok(rows) = self
                .query_local(
                    "pg_is_in_recovery",
                    QUERY_TIMEOUT,
                    "SELECT pg_is_in_recovery()",
                    &[],
                )
                .await
            {
                if rows.first().and_then(|r| r.try_get(0).ok()) == Some(false) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(PgError::Timeout {
                    step: "promote",
                    timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn checkpoint(&mut self) -> Result<(), PgError> {
        self.execute_local("CHECKPOINT", CHECKPOINT_TIMEOUT, "CHECKPOINT")
            .await
    }

    /// Create or update a login role without logging its password.
    async fn create_or_update_role(&mut self, user: &PgUser, options: &str) -> Result<(), PgError> {
        let mut options = options.to_string();
        if let Some(p) = &user.password {
            options.push_str(&format!(" PASSWORD {}", pgquote::literal(p)));
        }
        let sql = format!(
            "SET log_statement TO 'none'; SET log_min_duration_statement TO -1; \
             SET log_min_error_statement TO 'log';\n\
             DO $regent$ BEGIN\n\
               SET LOCAL synchronous_commit = 'local';\n\
               PERFORM 1 FROM pg_catalog.pg_authid WHERE rolname = {name_lit};\n\
               IF FOUND THEN ALTER ROLE {ident} WITH {options};\n\
               ELSE CREATE ROLE {ident} WITH {options}; END IF;\n\
             END $regent$;\n\
             RESET log_min_error_statement; RESET log_min_duration_statement; RESET log_statement;",
            name_lit = pgquote::literal(&user.username),
            ident = pgquote::ident(&user.username),
        );
        self.execute_local("create role", Duration::from_secs(30), &sql)
            .await
    }

    /// After the first start of a fresh cluster: set the superuser password, create the
    /// replication role and the rewind role with the grants pg_rewind needs.
    pub async fn post_bootstrap(&mut self) -> Result<(), PgError> {
        let superuser = self.settings.superuser.clone();
        if superuser.password.is_some() {
            self.create_or_update_role(&superuser, "SUPERUSER LOGIN")
                .await?;
        }
        let replication = self.settings.replication.clone();
        if replication.username != superuser.username {
            self.create_or_update_role(&replication, "REPLICATION LOGIN")
                .await?;
        }
        if let Some(rewind) = self.settings.rewind.clone() {
            if rewind.username != superuser.username {
                self.create_or_update_role(&rewind, "LOGIN").await?;
                let ident = pgquote::ident(&rewind.username);
                let grants: String = [
                    "pg_ls_dir(text, boolean, boolean)",
                    "pg_stat_file(text, boolean)",
                    "pg_read_binary_file(text)",
                    "pg_read_binary_file(text, bigint, bigint, boolean)",
                ]
                .iter()
                .map(|f| format!("GRANT EXECUTE ON FUNCTION pg_catalog.{f} TO {ident};\n"))
                .collect();
                let sql =
                    format!("BEGIN; SET LOCAL synchronous_commit = 'local';\n{grants}COMMIT;");
                self.execute_local("grant rewind functions", Duration::from_secs(30), &sql)
                    .await?;
            }
        }
        self.citus_bootstrap().await
    }

    /// Create missing physical slots (reserving WAL now) and drop inactive physical slots that
    /// are not wanted. Logical slots are never touched.
    pub async fn ensure_physical_slots(&mut self, wanted: &[String]) -> Result<(), PgError> {
        self.ensure_physical_slots_keeping(wanted, |_| false).await
    }

    /// Like `ensure_physical_slots`, but unwanted slots for which `keep` is true survive.
    pub async fn ensure_physical_slots_keeping(
        &mut self,
        wanted: &[String],
        keep: impl Fn(&str) -> bool,
    ) -> Result<(), PgError> {
        let rows = self
            .query_local(
                "list slots",
                QUERY_TIMEOUT,
                "SELECT slot_name::text, slot_type, active FROM pg_replication_slots",
                &[],
            )
            .await?;
        let mut existing = Vec::new();
        for row in &rows {
            let get = |e| PgError::Sql {
                step: "list slots",
                source: e,
            };
            let name: String = row.try_get(0).map_err(get)?;
            let kind: String = row.try_get(1).map_err(get)?;
            let active: bool = row.try_get(2).map_err(get)?;
            existing.push((name, kind, active));
        }
        for name in wanted {
            match existing.iter().find(|(n, _, _)| n == name) {
                Some((_, kind, _)) if kind != "physical" => {
                    tracing::warn!(slot = %name, kind = %kind, "wanted physical slot exists with another type");
                }
                Some(_) => {}
                None => {
                    tracing::info!(slot = %name, "creating physical replication slot");
                    self.query_local(
                        "create slot",
                        QUERY_TIMEOUT * 5,
                        "SELECT pg_create_physical_replication_slot($1, true)",
                        &[name],
                    )
                    .await?;
                }
            }
        }
        for (name, kind, active) in &existing {
            if kind == "physical" && !active && !wanted.contains(name) && !keep(name) {
                tracing::info!(slot = %name, "dropping physical replication slot");
                self.query_local(
                    "drop slot",
                    QUERY_TIMEOUT * 5,
                    "SELECT pg_drop_replication_slot($1)",
                    &[name],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Names of the physical slots on the local server.
    pub async fn physical_slots(&mut self) -> Result<Vec<String>, PgError> {
        let rows = self
            .query_local(
                "list slots",
                QUERY_TIMEOUT,
                "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                r.try_get(0).map_err(|e| PgError::Sql {
                    step: "list slots",
                    source: e,
                })
            })
            .collect()
    }

    /// The local history of `timeline` (empty for timeline 1).
    pub async fn timeline_history(
        &mut self,
        timeline: u32,
    ) -> Result<Vec<TimelineSwitch>, PgError> {
        if timeline <= 1 {
            return Ok(Vec::new());
        }
        let path = format!("pg_wal/{timeline:08X}.history");
        let rows = self
            .query_local(
                "read timeline history",
                QUERY_TIMEOUT,
                "SELECT pg_read_file($1)",
                &[&path],
            )
            .await?;
        let text: String = rows
            .first()
            .and_then(|r| r.try_get(0).ok())
            .unwrap_or_default();
        parse_timeline_history(&text)
    }

    /// Current timeline of a remote server and its history, read over TCP as the superuser.
    /// Used to check for divergence before following a new primary.
    pub async fn remote_timeline_history(
        &self,
        target: &ConnTarget,
    ) -> Result<RemoteTimeline, PgError> {
        let step = "connect to leader";
        let tls = self.remote_tls.clone().ok_or(PgError::Unexpected {
            step,
            detail: "no TLS settings".into(),
        })?;
        let mut config = base_config(&self.settings.superuser);
        config
            .host(&target.host)
            .port(target.port)
            .ssl_mode(tls.mode);
        let client = connect(&config, step, tls.connector).await?;
        let step = "leader timeline";
        let rows = timed(
            step,
            QUERY_TIMEOUT * 5,
            client.query(
                "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
                 ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
                 (SELECT timeline_id FROM pg_control_checkpoint()), \
                 (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1)",
                &[],
            ),
        )
        .await?;
        let row = rows.first().ok_or(PgError::Unexpected {
            step,
            detail: "no row".into(),
        })?;
        let get = |e| PgError::Sql { step, source: e };
        let walfile: Option<String> = row.try_get(0).map_err(get)?;
        let checkpoint_tli: Option<i32> = row.try_get(1).map_err(get)?;
        let received_tli: Option<i32> = row.try_get(2).map_err(get)?;
        let timeline = walfile
            .as_deref()
            .and_then(timeline_of_walfile)
            .or(received_tli
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0))
            .or(checkpoint_tli.and_then(|t| u32::try_from(t).ok()))
            .ok_or(PgError::Unexpected {
                step,
                detail: "no timeline".into(),
            })?;
        if timeline <= 1 {
            return Ok(RemoteTimeline {
                timeline,
                checkpoint_timeline: checkpoint_tli.and_then(|t| u32::try_from(t).ok()),
                history: Vec::new(),
            });
        }
        let path = format!("pg_wal/{timeline:08X}.history");
        let messages = timed(
            step,
            QUERY_TIMEOUT * 5,
            client.simple_query(&format!("SELECT pg_read_file({})", pgquote::literal(&path))),
        )
        .await?;
        let text = messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default();
        Ok(RemoteTimeline {
            timeline,
            checkpoint_timeline: checkpoint_tli.and_then(|t| u32::try_from(t).ok()),
            history: parse_timeline_history(&text)?,
        })
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn history_lines_are_parsed() {
        let text =
            "1\t0/3000060\tno recovery target specified\n\n2\t0/5000000\tbefore 2024-01-01\n";
        let h = parse_timeline_history(text).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(
            h[0],
            (1, 0x3000060, "no recovery target specified".to_string())
        );
        assert_eq!(h[1].0, 2);
        assert!(parse_timeline_history("x\ty\n").is_err());
    }

    #[test]
    fn walfile_timeline() {
        assert_eq!(timeline_of_walfile("0000000A0000000000000003"), Some(10));
        assert_eq!(timeline_of_walfile("xyz"), None);
    }

    #[test]
    fn settings_shown_in_the_largest_exact_unit() {
        let cases = [
            ("16384", "integer", Some("8kB"), "128MB"),
            ("16385", "integer", Some("8kB"), "131080kB"),
            ("4096", "integer", Some("kB"), "4MB"),
            ("1048576", "integer", Some("MB"), "1TB"),
            ("1", "integer", Some("16MB"), "16MB"),
            ("300", "integer", Some("s"), "5min"),
            ("86400", "integer", Some("s"), "1d"),
            ("1500", "integer", Some("ms"), "1500ms"),
            ("101", "integer", None, "101"),
            ("128MB", "integer", Some("8kB"), "128MB"),
            ("0", "integer", Some("kB"), "0"),
            ("-1", "integer", Some("kB"), "-1"),
            ("0.5", "real", Some("ms"), "0.5"),
            ("on", "bool", None, "on"),
            ("10", "integer", Some("furlongs"), "10"),
        ];
        for (value, vartype, unit, shown) in cases {
            assert_eq!(
                from_base_unit(value, vartype, unit),
                shown,
                "{value} {vartype} {unit:?}"
            );
        }
    }

    #[test]
    fn pending_restart_reason_as_patroni_shows_it() {
        let mut obs = PgObservation::default();
        assert_eq!(obs.pending_restart_reason_json(), None);
        obs.pending_restart_reason.insert(
            "max_connections".into(),
            PendingParam {
                old_value: "100".into(),
                new_value: "101".into(),
            },
        );
        assert_eq!(
            obs.pending_restart_reason_json(),
            Some(serde_json::json!({
                "max_connections": {"old_value": "100", "new_value": "101"}
            }))
        );
    }

    #[test]
    fn sql_quoting() {
        assert_eq!(pgquote::ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(pgquote::literal("it's"), "'it''s'");
        assert_eq!(pgquote::literal(r"a\b'"), r"E'a\\b'''");
    }
}
