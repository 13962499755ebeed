//! The HA loop: observe (DCS + Postgres), decide (pure), execute, publish.
//!
//! One task owns the Postgres child, the DCS session and the lock bookkeeping. The loop wakes
//! every `loop_wait` or as soon as the DCS reports a change that matters (watch), and a lease guard
//! cancels whatever the loop is doing to take a primary down before its lock could expire.

use std::sync::Arc;
use std::time::Duration;

use dcs::{Cluster, Dcs, HistoryEntry, MemberData, PostgresState, Role, Timing};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn, Instrument};

use super::decide::{
    decide, handover_candidates, Action, DataDir, DemoteMode, LocalState, PeerStatus, PgRole,
    Settings,
};
use super::error::{BootstrapError, Fatal, ReloadError};
use super::peers::{HttpStatus, MemberStatusSource};
use super::repair::{divergence_repair, Repair};
use crate::config::{Config, DynamicConfig};
use crate::postgres::{
    ConfRole, ConnTarget, PgObservation, PostgresControl, RewindOutcome, StopMode,
};

mod citus;
mod failsafe;
mod ops;
mod protection;
mod sync;

pub use citus::{CitusRuntime, CoordinatorEvents};
#[cfg(test)]
pub use protection::FenceControl;

/// Delay before a follow-up cycle when a state change is imminent.
const SOON: Duration = Duration::from_millis(250);

/// The Patroni version Regent reports to peers: they gate behaviour on it.
pub const PATRONI_COMPAT_VERSION: &str = "4.1.5";

/// Why the loop ended.
#[derive(Debug)]
pub enum Exit {
    /// Clean shutdown on SIGTERM/SIGINT.
    Shutdown,
    /// Unrecoverable condition (e.g. the data directory belongs to another cluster).
    Fatal(String),
}

/// How long a shutting-down leader waits for a fresh view of the cluster before handing over
/// with the last cycle's.
const SHUTDOWN_READ: Duration = Duration::from_secs(1);

/// What ended a wait in the main loop.
enum Wake {
    Shutdown,
    LeaseGuard,
    CycleDone(Result<(), Fatal>),
    Timer,
    /// A REST request for the loop (`None`: the API is gone).
    Command(Option<rest::Command>),
}

/// The outcome of executing one plan.
enum PlanOutcome {
    Done,
    /// The lock is definitely not ours any more: decide again with that fact.
    RenewFailed,
    /// A DCS write failed without a definite answer (error, timeout): decide again as with an
    /// unreachable DCS.
    DcsFailed,
    /// A failsafe round ended: did every member accept this primary?
    FailsafeRound(bool),
    /// A race was lost or a step failed; the next cycle re-reads the DCS.
    Aborted,
    Fatal(String),
}

pub struct Agent {
    cfg: Config,
    dynamic: DynamicConfig,
    dcs: Arc<dyn Dcs>,
    pg: Box<dyn PostgresControl>,
    http: reqwest::Client,
    /// Other members' `GET /patroni` (over `http`, or simulated).
    member_status: Box<dyn MemberStatusSource>,
    snapshot: watch::Sender<rest::Snapshot>,
    /// Monotonic instant until which the lock we hold is guaranteed (renew start + ttl).
    lock_deadline: Option<Instant>,
    start_failures: u32,
    /// We started Postgres and did not ask it to stop: an exit is a crash.
    pg_expected_up: bool,
    pg_crashed: bool,
    /// Published state of Postgres.
    state: PostgresState,
    role: Role,
    following: Option<ConnTarget>,
    last_member: Option<MemberData>,
    last_reason: String,
    /// Run the next cycle after this short delay instead of loop_wait (a state that is about to
    /// change: Postgres just started, the leader's checkpoint is imminent).
    next_cycle_soon: Option<Duration>,
    last_dcs_warnings: Vec<String>,
    /// A running replica was found past the leader's fork point: repair on the next start.
    divergence_seen: bool,
    /// Promoted, and the checkpoint that moves pg_control to the new timeline is not done yet.
    checkpoint_after_promote_pending: bool,
    /// Role and state last logged, so each change is logged once.
    logged_role_state: Option<(Role, PostgresState)>,
    last_cluster: Option<Cluster>,
    dcs_last_seen: Option<i64>,
    last_obs: PgObservation,
    last_cycle_ms: Option<i64>,
    /// Requests from the REST API, executed between cycles.
    commands: Option<tokio::sync::mpsc::Receiver<rest::Command>>,
    scheduled_restart: Option<ops::ScheduledRestart>,
    /// Loads the configuration again the way it was loaded at start (`POST /reload`).
    config_reloader: Option<ConfigReloader>,
    /// Citus members: the coordinator's pg_dist_node manager, or a worker's notifications.
    citus: Option<CitusRuntime>,
    /// A Postgres start the loop stopped waiting for (restart `timeout`): role, leader followed.
    pending_start: Option<(bool, Option<ConnTarget>)>,
    /// Since when `initialize` has claimed a bootstrap that no member is carrying out.
    bootstrap_unclaimed_since: Option<Instant>,
    /// `pause` as of the last successful DCS read (kept while the DCS is unreachable).
    last_known_paused: bool,
    /// Synchronous mode: the flush position noted after synchronous_standby_names changed.
    sync_since_lsn: Option<u64>,
    /// A synchronous standby about to stop publishes `nosync` so the leader releases it first.
    leaving_sync: bool,
    /// The process that stops Postgres when the lease runs out even if this agent is frozen.
    fence: protection::FenceSlot,
    watchdog: crate::watchdog::Watchdog,
    /// The failsafe topology as last read from or written to the DCS.
    known_failsafe: Option<dcs::FailsafeTopology>,
    /// This primary runs on failsafe rounds (the last cycle's round kept it up).
    failsafe_active: bool,
    /// Calls to `POST /failsafe` recorded by the REST API.
    failsafe_inbox: rest::FailsafeInbox,
}

/// Reads the configuration file (and environment) again; `Err` names what is wrong.
pub type ConfigReloader = Box<dyn Fn() -> Result<Config, ReloadError> + Send>;

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Agent {
    /// `http` calls other members' REST APIs ([`crate::config::member_client`]).
    pub fn new(
        cfg: Config,
        dcs: Arc<dyn Dcs>,
        pg: Box<dyn PostgresControl>,
        http: reqwest::Client,
        snapshot: watch::Sender<rest::Snapshot>,
    ) -> Agent {
        let (dynamic, warnings) = DynamicConfig::from_value(&cfg.bootstrap.dcs);
        for w in warnings {
            warn!("bootstrap.dcs: {w}");
        }
        // Started before any Postgres: a primary never runs without it.
        let fence = protection::FenceSlot::start(cfg.watchdog.fence);
        let watchdog = crate::watchdog::Watchdog::new(cfg.watchdog.clone());
        Agent {
            cfg,
            dynamic,
            dcs,
            pg,
            member_status: Box::new(HttpStatus(http.clone())),
            http,
            snapshot,
            lock_deadline: None,
            start_failures: 0,
            pg_expected_up: false,
            pg_crashed: false,
            state: PostgresState::Stopped,
            role: Role::Uninitialized,
            following: None,
            last_member: None,
            last_reason: String::new(),
            next_cycle_soon: None,
            last_dcs_warnings: Vec::new(),
            divergence_seen: false,
            checkpoint_after_promote_pending: false,
            logged_role_state: None,
            last_cluster: None,
            dcs_last_seen: None,
            last_obs: PgObservation::default(),
            last_cycle_ms: None,
            commands: None,
            scheduled_restart: None,
            config_reloader: None,
            citus: None,
            pending_start: None,
            bootstrap_unclaimed_since: None,
            last_known_paused: false,
            sync_since_lsn: None,
            leaving_sync: false,
            fence,
            watchdog,
            known_failsafe: None,
            failsafe_active: false,
            failsafe_inbox: rest::FailsafeInbox::default(),
        }
    }

    /// Share the inbox `POST /failsafe` writes to.
    pub fn with_failsafe_inbox(mut self, inbox: rest::FailsafeInbox) -> Agent {
        self.failsafe_inbox = inbox;
        self
    }

    /// A Citus member (the `citus` section is set).
    pub fn with_citus(mut self, runtime: CitusRuntime) -> Agent {
        self.citus = Some(runtime);
        self
    }

    /// How `POST /reload` reads the configuration again.
    pub fn with_config_reloader(mut self, reloader: ConfigReloader) -> Agent {
        self.config_reloader = Some(reloader);
        self
    }

    /// Take the REST API's requests; they run between cycles, each followed by a cycle at once.
    pub fn with_commands(mut self, commands: tokio::sync::mpsc::Receiver<rest::Command>) -> Agent {
        self.commands = Some(commands);
        self
    }

    fn timing(&self) -> Timing {
        Timing {
            ttl: self.dynamic.ttl,
            loop_wait: self.dynamic.loop_wait,
            retry_timeout: self.dynamic.retry_timeout,
        }
    }

    fn safety_margin(&self) -> f64 {
        (f64::from(self.dynamic.ttl) * 0.2).clamp(1.0, 5.0)
    }

    /// When the lease guard must fire: a primary must be down `safety_margin` before its lock
    /// could expire.
    fn guard_instant(&self) -> Option<Instant> {
        let deadline = self.lock_deadline?;
        // Paused: the primary stays up even if the lock could lapse (nobody promotes).
        if !self.pg_expected_up || self.last_known_paused {
            return None;
        }
        Some(
            deadline
                .checked_sub(Duration::from_secs_f64(self.safety_margin()))
                .unwrap_or(deadline),
        )
    }

    /// Use `fence` instead of the fence process (simulation).
    #[cfg(test)]
    pub fn with_fence(mut self, fence: Box<dyn protection::FenceControl>) -> Agent {
        self.fence = protection::FenceSlot::Running(fence);
        self
    }

    /// Read other members' `GET /patroni` from `source` instead of over HTTP (simulation).
    #[cfg(test)]
    pub fn with_member_status(mut self, source: Box<dyn MemberStatusSource>) -> Agent {
        self.member_status = source;
        self
    }

    /// Run until shutdown is requested or a fatal condition occurs.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Exit {
        self.dcs.set_timing(self.timing());
        if let Err(e) = self.pg.adopt_running().await {
            warn!(error = %e, "cannot check for an already running postmaster");
        }
        self.pg.adopt_rendered_synchronous_standby_names();
        let mut cycles: u64 = 0;
        loop {
            let guard = self.guard_instant();
            cycles += 1;
            let ended = {
                // Everything one cycle logs carries its number.
                let cycle = self
                    .run_cycle()
                    .instrument(tracing::info_span!("cycle", n = cycles));
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => Wake::Shutdown,
                    _ = sleep_until_opt(guard) => Wake::LeaseGuard,
                    r = cycle => Wake::CycleDone(r),
                }
            };
            match ended {
                Wake::Shutdown => return self.shutdown().await,
                Wake::LeaseGuard => self.lease_guard_fired().await,
                Wake::CycleDone(Err(Fatal(msg))) => {
                    error!("{msg}");
                    self.stop_postgres(StopMode::Fast, Duration::from_secs(30))
                        .await;
                    let _ = self.dcs.close().await;
                    self.stop_protection();
                    return Exit::Fatal(msg);
                }
                Wake::CycleDone(Ok(())) | Wake::Timer | Wake::Command(_) => {}
            }
            self.last_cycle_ms = Some(chrono::Utc::now().timestamp_millis());
            self.publish_snapshot();
            crate::pid1::reap_orphans_if_reaper();

            let mut wait = self
                .next_cycle_soon
                .take()
                .unwrap_or(Duration::from_secs(u64::from(
                    self.dynamic.loop_wait.max(1),
                )));
            if let Some(cap) = self.failsafe_wait_cap() {
                // The next failsafe round must fit before the lease guard fires.
                wait = wait.min(cap);
            }
            let guard = self.guard_instant();
            let dcs = self.dcs.clone();
            let woke = {
                let pg_exit = self.pg.wait_exit();
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => Wake::Shutdown,
                    _ = sleep_until_opt(guard) => Wake::LeaseGuard,
                    _ = dcs.watch(wait) => Wake::Timer,
                    _ = pg_exit => Wake::Timer,
                    cmd = next_command(&mut self.commands) => Wake::Command(cmd),
                }
            };
            match woke {
                Wake::Shutdown => return self.shutdown().await,
                Wake::LeaseGuard => self.lease_guard_fired().await,
                Wake::Command(Some(cmd)) => self.handle_command(cmd).await,
                // The API side is gone: stop listening.
                Wake::Command(None) => self.commands = None,
                _ => {}
            }
            self.run_scheduled_restart().await;
        }
    }

    async fn lease_guard_fired(&mut self) {
        warn!(
            "the leader lock could not be renewed and may expire in {:.1}s: stopping Postgres",
            self.safety_margin()
        );
        self.demote(DemoteMode::Offline, None).await;
    }

    /// One HA cycle. `Err` is fatal.
    async fn run_cycle(&mut self) -> Result<(), Fatal> {
        self.finish_pending_start().await;
        let retry = Duration::from_secs(u64::from(self.dynamic.retry_timeout) + 1);
        let read = match self.dcs_call_budget(retry) {
            Some(budget) => tokio::time::timeout(budget, self.dcs.get_cluster()).await,
            None => Ok(Err(dcs::DcsError::Unreachable(
                "no time left for a DCS read before the next failsafe round".into(),
            ))),
        };
        let cluster = match read {
            Ok(Ok(c)) => {
                self.dcs_last_seen = Some(unix_now());
                // Content written by others is reported once, not every loop.
                if c.warnings != self.last_dcs_warnings {
                    for w in c
                        .warnings
                        .iter()
                        .filter(|w| !self.last_dcs_warnings.contains(w))
                    {
                        warn!("DCS content: {w}");
                    }
                    self.last_dcs_warnings = c.warnings.clone();
                }
                Some(c)
            }
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the cluster from the DCS");
                None
            }
            Err(_) => {
                warn!("reading the cluster from the DCS timed out");
                None
            }
        };
        if let Some(c) = &cluster {
            self.last_known_paused = c.is_paused();
            self.known_failsafe = c.failsafe.clone();
            self.apply_dynamic_config(c).await;
        }
        let mut local = self.observe(cluster.as_ref()).await;
        if let Some(c) = &cluster {
            if c.leader.is_none()
                && local.pg_running
                && matches!(local.data_dir, DataDir::Valid { .. })
            {
                local.peers = self.fetch_peers(c).await;
            }
        }
        if let Some(c) = &cluster {
            local.diverged_from_leader = self.replica_diverged(c, &local).await;
        }
        local.now_ms = chrono::Utc::now().timestamp_millis();
        local.bootstrap_unclaimed_for = self.bootstrap_unclaimed_for(cluster.as_ref());
        local.last_known_paused = self.last_known_paused;
        local.cannot_lead = self.protection_refuses_leading();
        local.last_known_failsafe = self.known_failsafe.clone();
        local.failsafe_leader = self.recent_failsafe_leader();
        let settings = self.settings();
        // The view decisions are taken with: the DCS counts as unreachable from the moment a
        // write fails without a definite answer.
        let mut view = cluster.as_ref();
        let mut decision = decide(view, &local, &settings);
        // Each outcome that re-runs the decision can occur once per cycle.
        for _ in 0..3 {
            self.log_decision(&decision.reason);
            match self.execute(view, &decision.actions).await {
                PlanOutcome::Done | PlanOutcome::Aborted => break,
                PlanOutcome::Fatal(msg) => return Err(Fatal(msg)),
                PlanOutcome::RenewFailed if !local.renew_failed => {
                    local.renew_failed = true;
                    local.holds_lock = false;
                    decision = decide(view, &local, &settings);
                }
                PlanOutcome::DcsFailed if view.is_some() => {
                    view = None;
                    decision = decide(view, &local, &settings);
                }
                PlanOutcome::FailsafeRound(accepted) if local.failsafe_round.is_none() => {
                    local.failsafe_round = Some(accepted);
                    decision = decide(view, &local, &settings);
                }
                PlanOutcome::RenewFailed
                | PlanOutcome::DcsFailed
                | PlanOutcome::FailsafeRound(_) => break,
            }
        }
        self.set_failsafe_active(
            local.failsafe_round == Some(true) && self.pg_expected_up && self.role == Role::Primary,
        );
        if let Some(secs) = decision.wake_in {
            // Wake up when a scheduled switchover falls due rather than up to loop_wait later.
            let loop_wait = f64::from(self.dynamic.loop_wait.max(1));
            let due = Duration::from_secs_f64(secs.clamp(0.05, loop_wait));
            self.next_cycle_soon = Some(self.next_cycle_soon.map_or(due, |d| d.min(due)));
        }
        self.sync_after_cycle(view).await;
        self.sync_protection();
        if view.is_some() {
            // A primary in failsafe mode must not spend the time of its next round here.
            let usual = Duration::from_secs(u64::from(self.dynamic.retry_timeout) + 1);
            if let Some(budget) = self.dcs_call_budget(usual) {
                if tokio::time::timeout(budget, self.publish_member())
                    .await
                    .is_err()
                {
                    warn!("publishing the member data timed out");
                }
            }
        } else {
            // The DCS is unreachable: a write would only stall the cycle (and, on a primary in
            // failsafe mode, the next round).
            self.publish_snapshot();
        }
        self.citus_after_cycle(view).await;
        self.last_cluster = cluster;
        Ok(())
    }

    /// How long the DCS has claimed a bootstrap in progress (`initialize` empty, no leader)
    /// while no member reports bootstrapping.
    fn bootstrap_unclaimed_for(&mut self, cluster: Option<&Cluster>) -> Option<f64> {
        let unclaimed = cluster.is_some_and(|c| {
            c.initialize.as_deref() == Some("")
                && c.leader.is_none()
                && !c.members.iter().any(|m| {
                    matches!(
                        m.data.state,
                        PostgresState::InitializingNewCluster
                            | PostgresState::RunningCustomBootstrap
                    )
                })
        });
        if !unclaimed {
            self.bootstrap_unclaimed_since = None;
            return None;
        }
        let since = *self
            .bootstrap_unclaimed_since
            .get_or_insert_with(Instant::now);
        Some(since.elapsed().as_secs_f64())
    }

    fn log_decision(&mut self, reason: &str) {
        if reason != self.last_reason {
            info!("{reason}");
            self.last_reason = reason.to_string();
        } else {
            debug!("{reason}");
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            name: self.cfg.name.clone(),
            tags: self.cfg.tags.clone(),
            maximum_lag_on_failover: self.dynamic.maximum_lag_on_failover,
            check_timeline: self.dynamic.check_timeline,
            use_slots: self.use_slots(),
            primary_start_timeout: self.dynamic.primary_start_timeout,
            lease_safety_margin: self.safety_margin(),
            max_primary_start_failures: 3,
            loop_wait: self.dynamic.loop_wait,
            ttl: self.dynamic.ttl,
            synchronous_mode: self.dynamic.synchronous_mode
                && self.dynamic.standby_cluster.is_none(),
            failsafe_mode: self.dynamic.failsafe_mode,
            api_url: self.cfg.api_url(),
        }
    }

    /// Follow the DCS copy of the dynamic configuration.
    async fn apply_dynamic_config(&mut self, cluster: &Cluster) {
        let Some(cfg) = &cluster.config else { return };
        let (dynamic, warnings) = DynamicConfig::from_value(&cfg.raw);
        if dynamic == self.dynamic {
            return;
        }
        for w in warnings {
            warn!("DCS config: {w}");
        }
        let timing_changed = dynamic.ttl != self.dynamic.ttl
            || dynamic.loop_wait != self.dynamic.loop_wait
            || dynamic.retry_timeout != self.dynamic.retry_timeout;
        let params_changed =
            dynamic.parameters != self.dynamic.parameters || dynamic.pg_hba != self.dynamic.pg_hba;
        self.dynamic = dynamic;
        if timing_changed {
            info!(
                ttl = self.dynamic.ttl,
                loop_wait = self.dynamic.loop_wait,
                retry_timeout = self.dynamic.retry_timeout,
                "applying timing from the DCS config"
            );
            self.dcs.set_timing(self.timing());
        }
        if params_changed {
            self.pg.set_parameters(
                crate::merged_parameters(&self.cfg, &self.dynamic),
                crate::merged_pg_hba(&self.cfg, &self.dynamic),
            );
            if self.pg.is_running() {
                let role = self.current_conf_role();
                match self.pg.write_config(role) {
                    Ok(change) if change.changed => {
                        info!(
                            needs_restart = change.needs_restart,
                            "Postgres configuration changed: reloading"
                        );
                        if let Err(e) = self.pg.reload() {
                            warn!(error = %e, "cannot reload Postgres");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "cannot write the Postgres configuration"),
                }
            }
        }
    }

    fn current_conf_role(&self) -> ConfRole {
        if self.role == Role::Primary {
            ConfRole::Primary
        } else {
            match &self.following {
                Some(t) => ConfRole::Replica {
                    primary: Some(t.clone()),
                    slot: self.slot_for_me(),
                },
                None => ConfRole::Replica {
                    primary: None,
                    slot: None,
                },
            }
        }
    }

    fn slot_for_me(&self) -> Option<String> {
        self.use_slots()
            .then(|| crate::postgres::slot_name_for(&self.cfg.name))
    }

    /// `postgresql.use_slots` from the local file wins over the DCS copy.
    fn use_slots(&self) -> bool {
        self.cfg
            .postgresql
            .use_slots
            .unwrap_or(self.dynamic.use_slots)
    }

    /// `postgresql.use_pg_rewind` from the local file wins over the DCS copy.
    fn use_pg_rewind(&self) -> bool {
        self.cfg
            .postgresql
            .use_pg_rewind
            .unwrap_or(self.dynamic.use_pg_rewind)
    }

    async fn observe(&mut self, cluster: Option<&Cluster>) -> LocalState {
        let mut local = LocalState::default();
        // Crash detection: a postmaster we did not ask to stop has exited.
        if self.pg_expected_up && !self.pg.is_running() {
            if !self.pg_crashed {
                warn!("Postgres exited unexpectedly");
            }
            self.pg_crashed = true;
            self.pg_expected_up = false;
            self.state = PostgresState::Crashed;
        }
        local.pg_crashed = self.pg_crashed;
        let obs = self.pg.observe().await;
        // A running Postgres reports its system identifier; pg_control is read (a process
        // spawn) only when it does not.
        local.data_dir = if !self.pg.is_valid_data_dir() {
            DataDir::Empty
        } else if let Some(sysid) = obs.sysid.clone() {
            DataDir::Valid { sysid }
        } else {
            match self.pg.controldata().await {
                Ok(cd) => DataDir::Valid { sysid: cd.sysid },
                Err(e) => {
                    warn!(error = %e, "cannot read pg_control");
                    DataDir::Empty
                }
            }
        };
        local.pg_running = obs.running && obs.in_recovery.is_some();
        local.pg_role = match obs.in_recovery {
            Some(true) => PgRole::Replica,
            Some(false) => PgRole::Primary,
            None => PgRole::Unknown,
        };
        if obs.running {
            self.pg_expected_up = true;
        }
        local.timeline = obs.timeline;
        local.wal_position = match local.pg_role {
            PgRole::Primary => obs.wal_position.unwrap_or(0),
            _ => obs
                .received_lsn
                .unwrap_or(0)
                .max(obs.replayed_lsn.unwrap_or(0)),
        };
        if local.pg_running {
            self.state = PostgresState::Running;
            self.role = match local.pg_role {
                PgRole::Primary => Role::Primary,
                _ => Role::Replica,
            };
        }
        local.start_failures = self.start_failures;
        let me = self.cfg.name.as_str();
        let cluster_says_mine = cluster.and_then(|c| c.leader_name()) == Some(me);
        if !cluster_says_mine && cluster.is_some() {
            // The DCS says the lock is not ours (expired, released, taken).
            self.lock_deadline = None;
        }
        local.holds_lock = self.lock_deadline.is_some() || cluster_says_mine;
        local.lock_expires_in = self
            .lock_deadline
            .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64());
        self.last_obs = obs;
        local
    }

    /// A running replica that does not stream while the leader is on a newer timeline: does it
    /// hold WAL past the point where the leader's timeline forked off ours?
    async fn replica_diverged(&self, cluster: &Cluster, local: &LocalState) -> bool {
        if !local.pg_running
            || local.pg_role != PgRole::Replica
            || self.last_obs.streaming == Some(true)
        {
            return false;
        }
        let Some(leader) = cluster.leader_member().filter(|m| m.name != self.cfg.name) else {
            return false;
        };
        let (Some(mine), Some(theirs)) = (local.timeline, leader.data.timeline) else {
            return false;
        };
        if theirs <= mine {
            return false;
        }
        let Some(target) = Self::member_target(Some(cluster), &leader.name) else {
            return false;
        };
        let remote = match self.pg.remote_timeline_history(&target).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "cannot read the leader's timeline history");
                return false;
            }
        };
        match remote.history.iter().find(|h| h.0 == mine) {
            Some((_, switch_lsn, _)) if local.wal_position > *switch_lsn => {
                warn!(
                    leader = %leader.name,
                    timeline = mine,
                    position = %dcs::format_lsn(local.wal_position),
                    fork = %dcs::format_lsn(*switch_lsn),
                    "this replica has WAL past the point where the leader's timeline forked off"
                );
                true
            }
            _ => false,
        }
    }

    /// `GET /patroni` of the named members, in parallel.
    async fn fetch_peers_named(&self, cluster: &Cluster, names: &[String]) -> Vec<PeerStatus> {
        let targets = cluster
            .members
            .iter()
            .filter(|m| names.contains(&m.name))
            .filter_map(|m| m.data.api_url.clone().map(|u| (m.name.clone(), u)));
        self.fetch_statuses(targets).await
    }

    /// `GET /patroni` of every other member, in parallel: input of the leader race.
    async fn fetch_peers(&self, cluster: &Cluster) -> Vec<PeerStatus> {
        let mut targets: Vec<(String, String)> = cluster
            .members
            .iter()
            .filter_map(|m| m.data.api_url.clone().map(|u| (m.name.clone(), u)))
            .collect();
        // Failsafe mode: members of the topology whose keys are gone (the DCS was unreachable
        // for longer than ttl) may still run, maybe as the primary.
        if self.dynamic.failsafe_mode {
            for (name, url) in cluster.failsafe.iter().flatten() {
                if !targets.iter().any(|(n, _)| n == name) {
                    targets.push((name.clone(), url.clone()));
                }
            }
        }
        self.fetch_statuses(targets).await
    }

    /// `GET /patroni` of each (name, URL) other than this member, in parallel; members that do
    /// not answer with JSON are left out.
    async fn fetch_statuses(
        &self,
        targets: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<PeerStatus> {
        let futures = targets
            .into_iter()
            .filter(|(name, _)| *name != self.cfg.name)
            .map(|(name, url)| async move {
                let body = self.member_status.status(&url).await?;
                Some(peer_from_status(&name, &body))
            });
        futures_util::future::join_all(futures)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn execute(&mut self, cluster: Option<&Cluster>, actions: &[Action]) -> PlanOutcome {
        for action in actions {
            debug!(?action, "executing");
            let outcome = match action {
                Action::RaceInitialize => match self.dcs.initialize(true, "").await {
                    Ok(true) => {
                        info!("won the initialize race: bootstrapping a new cluster");
                        PlanOutcome::Done
                    }
                    Ok(false) => {
                        info!("another member is bootstrapping the cluster");
                        PlanOutcome::Aborted
                    }
                    Err(e) => {
                        warn!(error = %e, "initialize race");
                        PlanOutcome::Aborted
                    }
                },
                Action::CancelInitialization => {
                    match self.dcs.cancel_initialization().await {
                        Ok(()) => info!("removed the unclaimed bootstrap from initialize"),
                        Err(e) => warn!(error = %e, "cannot remove the unclaimed bootstrap"),
                    }
                    self.bootstrap_unclaimed_since = None;
                    PlanOutcome::Done
                }
                Action::Bootstrap => self.bootstrap().await,
                Action::CloneFrom(name) => self.clone_from(cluster, name).await,
                Action::WriteInitialize(sysid) => match self
                    .dcs
                    .initialize(cluster.is_some_and(|c| c.initialize.is_none()), sysid)
                    .await
                {
                    Ok(_) => PlanOutcome::Done,
                    Err(e) => {
                        warn!(error = %e, "cannot write initialize");
                        PlanOutcome::Aborted
                    }
                },
                Action::WriteConfig => match self
                    .dcs
                    .set_config_value(&self.bootstrap_dcs_config(), None)
                    .await
                {
                    Ok(_) => PlanOutcome::Done,
                    Err(e) => {
                        warn!(error = %e, "cannot write config");
                        PlanOutcome::Aborted
                    }
                },
                Action::AcquireLock => self.acquire_lock().await,
                Action::RenewLock { failsafe } => self.renew_lock(cluster, failsafe.as_ref()).await,
                Action::CheckFailsafeMembers(members) => self.check_failsafe_members(members).await,
                Action::ReleaseLock => self.release_lock_after_stopping_a_primary().await,
                Action::StartAsPrimary => self.start_postgres(ConfRole::Primary, None).await,
                Action::StartAsReplica { leader } => {
                    self.start_as_replica(cluster, leader.as_deref()).await
                }
                Action::Promote => self.promote().await,
                Action::Demote(mode) => {
                    self.demote(*mode, cluster).await;
                    PlanOutcome::Done
                }
                Action::Follow { leader } => self.follow(cluster, leader.as_deref()).await,
                Action::StopForRepair => {
                    self.stop_postgres(StopMode::Fast, Duration::from_secs(60))
                        .await;
                    self.following = None;
                    // pg_control alone cannot show this divergence once Postgres is down.
                    self.divergence_seen = true;
                    PlanOutcome::Done
                }
                Action::EnsureSlots => {
                    self.ensure_slots(cluster).await;
                    PlanOutcome::Done
                }
                Action::AppendHistory => {
                    self.append_history(cluster).await;
                    PlanOutcome::Done
                }
                Action::ClearFailover => {
                    let version = cluster
                        .and_then(|c| c.failover.as_ref())
                        .and_then(|f| f.version.clone());
                    match self.dcs.delete_failover(version.as_deref()).await {
                        Ok(true) => info!("removed the switchover request"),
                        Ok(false) => info!("the switchover request changed meanwhile"),
                        Err(e) => warn!(error = %e, "cannot remove the switchover request"),
                    }
                    PlanOutcome::Done
                }
                Action::Fatal(msg) => PlanOutcome::Fatal(msg.clone()),
            };
            match outcome {
                PlanOutcome::Done => continue,
                other => return other,
            }
        }
        PlanOutcome::Done
    }

    /// The initial dynamic configuration written by the member that bootstraps the cluster.
    fn bootstrap_dcs_config(&self) -> Value {
        match &self.cfg.bootstrap.dcs {
            Value::Object(m) => Value::Object(m.clone()),
            _ => Value::Object(Default::default()),
        }
    }

    async fn acquire_lock(&mut self) -> PlanOutcome {
        let started = Instant::now();
        match self.dcs.attempt_to_acquire_leader().await {
            Ok(true) => {
                self.lock_deadline =
                    Some(started + Duration::from_secs(u64::from(self.dynamic.ttl)));
                self.lock_confirmed();
                // This member leads now: an earlier leader's failsafe call no longer applies.
                self.failsafe_inbox.clear();
                info!("acquired the leader lock");
                PlanOutcome::Done
            }
            Ok(false) => {
                info!("another member acquired the leader lock first");
                PlanOutcome::Aborted
            }
            Err(e) => {
                warn!(error = %e, "cannot acquire the leader lock");
                // Whether the lock is ours is unknown: as with an unreachable DCS.
                PlanOutcome::DcsFailed
            }
        }
    }

    async fn renew_lock(
        &mut self,
        cluster: Option<&Cluster>,
        failsafe: Option<&dcs::FailsafeTopology>,
    ) -> PlanOutcome {
        let Some(cluster) = cluster else {
            return PlanOutcome::DcsFailed;
        };
        let started = Instant::now();
        let optime = self
            .last_obs
            .wal_position
            .filter(|_| self.role == Role::Primary);
        // A renew must finish before the lock we hold could expire. A deadline already past
        // (no renew while Postgres was down in maintenance mode) leaves nothing to protect:
        // the usual retry budget applies and the DCS decides whether the lock is still ours.
        let retry_budget = Duration::from_secs(u64::from(self.dynamic.retry_timeout.max(1)));
        let budget = self
            .lock_deadline
            .map(|d| d.saturating_duration_since(started))
            .filter(|left| !left.is_zero())
            .unwrap_or(retry_budget);
        // In failsafe mode a failed renew must leave time for a round.
        let Some(budget) = self.dcs_call_budget(budget) else {
            warn!("no time left to renew the leader lock before the next failsafe round");
            return PlanOutcome::DcsFailed;
        };
        let renew = self.dcs.update_leader(cluster, optime, failsafe);
        match tokio::time::timeout(budget, renew).await {
            Ok(Ok(true)) => {
                // The backend records optime in `status` as part of the renew.
                self.lock_deadline =
                    Some(started + Duration::from_secs(u64::from(self.dynamic.ttl)));
                self.lock_confirmed();
                if let Some(topology) = failsafe {
                    self.known_failsafe = (!topology.is_empty()).then(|| topology.clone());
                }
                PlanOutcome::Done
            }
            Ok(Ok(false)) => {
                warn!("the leader lock is no longer ours");
                self.lock_deadline = None;
                PlanOutcome::RenewFailed
            }
            // No definite answer: the lock may still be ours, as with an unreachable DCS.
            Ok(Err(e)) => {
                warn!(error = %e, "cannot renew the leader lock");
                PlanOutcome::DcsFailed
            }
            Err(_) => {
                warn!("renewing the leader lock timed out");
                PlanOutcome::DcsFailed
            }
        }
    }

    /// Release the lock, but never while a postmaster that may accept writes still runs here: one
    /// that is not known to be a replica (a primary, or one that does not answer — its backends
    /// may still commit) is stopped first, down to SIGKILL; if it cannot be, the lock is kept
    /// and the lease guard and the fence take over.
    async fn release_lock_after_stopping_a_primary(&mut self) -> PlanOutcome {
        let paused = self.last_known_paused;
        if !paused && self.pg.is_running() && self.last_obs.in_recovery != Some(true) {
            warn!("releasing the leader lock: stopping this Postgres first, it may accept writes");
            self.stop_postgres(StopMode::Immediate, Duration::from_secs(2))
                .await;
            if self.pg.is_running() {
                error!("Postgres did not stop: keeping the leader lock");
                return PlanOutcome::Aborted;
            }
        }
        self.release_lock().await;
        PlanOutcome::Done
    }

    async fn release_lock(&mut self) {
        let optime = self.last_obs.wal_position;
        match self.dcs.delete_leader(optime).await {
            Ok(_) => info!("released the leader lock"),
            Err(e) => warn!(error = %e, "cannot release the leader lock"),
        }
        self.lock_deadline = None;
        self.sync_protection();
    }

    async fn bootstrap(&mut self) -> PlanOutcome {
        self.state = PostgresState::InitializingNewCluster;
        self.publish_member().await;
        match self.try_bootstrap().await {
            Ok(()) => {
                info!("bootstrapped a new cluster");
                PlanOutcome::Done
            }
            Err(e) => {
                error!(error = %e, "bootstrap failed");
                self.state = PostgresState::InitdbFailed;
                self.stop_postgres(StopMode::Immediate, Duration::from_secs(10))
                    .await;
                if let Err(e) = self.pg.wipe_data_dir() {
                    error!(error = %e, "cannot clean the data directory after a failed bootstrap");
                }
                if let Err(e) = self.dcs.cancel_initialization().await {
                    warn!(error = %e, "cannot cancel the initialization");
                }
                PlanOutcome::Aborted
            }
        }
    }

    async fn try_bootstrap(&mut self) -> Result<(), BootstrapError> {
        self.pg.initdb().await?;
        self.pg.write_config(ConfRole::Primary)?;
        self.pg.start().await?;
        self.pg_expected_up = true;
        self.pg.post_bootstrap().await?;
        let sysid = self.pg.controldata().await?.sysid;
        self.dcs.initialize(false, &sysid).await?;
        self.dcs
            .set_config_value(&self.bootstrap_dcs_config(), None)
            .await?;
        match self.acquire_lock().await {
            PlanOutcome::Done => {}
            _ => return Err(BootstrapError::LockNotTaken),
        }
        self.role = Role::Primary;
        self.state = PostgresState::Running;
        // Publish the new primary's timeline and WAL position at once, not a cycle later.
        self.last_obs = self.pg.observe().await;
        Ok(())
    }

    fn member_target(cluster: Option<&Cluster>, name: &str) -> Option<ConnTarget> {
        let m = cluster?.member(name)?;
        let (host, port) = m.data.conn_host_port()?;
        Some(ConnTarget { host, port })
    }

    async fn clone_from(&mut self, cluster: Option<&Cluster>, name: &str) -> PlanOutcome {
        let Some(target) = Self::member_target(cluster, name) else {
            warn!("cannot clone from {name}: no usable conn_url");
            return PlanOutcome::Aborted;
        };
        self.state = PostgresState::CreatingReplica;
        self.role = Role::Uninitialized;
        self.publish_member().await;
        info!(from = name, "cloning the data directory with pg_basebackup");
        if let Err(e) = self.pg.basebackup(&target).await {
            error!(error = %e, "pg_basebackup from {name} failed");
            self.state = PostgresState::Stopped;
            return PlanOutcome::Aborted;
        }
        let leader = cluster.and_then(|c| c.leader_name()).map(str::to_string);
        let primary = leader
            .as_deref()
            .and_then(|l| Self::member_target(cluster, l));
        self.start_postgres(
            ConfRole::Replica {
                primary: primary.clone(),
                slot: self.slot_for_me(),
            },
            primary,
        )
        .await
    }

    async fn start_postgres(
        &mut self,
        role: ConfRole,
        following: Option<ConnTarget>,
    ) -> PlanOutcome {
        self.start_postgres_within(role, following, None).await
    }

    /// Start Postgres; with `wait`, stop waiting for it after that long (a restart's `timeout`):
    /// it goes on starting and the next cycle waits for it (`pending_start`).
    async fn start_postgres_within(
        &mut self,
        role: ConfRole,
        following: Option<ConnTarget>,
        wait: Option<Duration>,
    ) -> PlanOutcome {
        let as_primary = matches!(role, ConfRole::Primary);
        if let Err(e) = self.pg.write_config(role) {
            error!(error = %e, "cannot write the Postgres configuration");
            return PlanOutcome::Aborted;
        }
        self.state = PostgresState::Starting;
        self.publish_member().await;
        // The fence learns the new postmaster before it accepts a single connection, so a
        // frozen agent never leaves an unfenced primary behind.
        let started = match self.pg.spawn_postmaster().await {
            Ok(()) => {
                self.sync_protection();
                let wait = wait.unwrap_or(Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout));
                self.pg.wait_until_ready(wait).await
            }
            Err(e) => Err(e),
        };
        match started {
            Ok(()) => {
                self.postgres_started(as_primary, following);
                PlanOutcome::Done
            }
            Err(crate::postgres::PgError::StartTimeout(w))
                if wait.is_some() && self.pg.is_running() =>
            {
                info!(waited = ?w, "Postgres is still starting");
                self.pg_expected_up = true;
                self.pending_start = Some((as_primary, following));
                PlanOutcome::Aborted
            }
            Err(e) => {
                self.start_failures += 1;
                self.state = PostgresState::StartFailed;
                error!(failures = self.start_failures, error = %e, "cannot start Postgres");
                PlanOutcome::Aborted
            }
        }
    }

    /// A start left waiting (restart `timeout`): wait for it now, before anything is decided.
    async fn finish_pending_start(&mut self) {
        let Some((as_primary, following)) = self.pending_start.take() else {
            return;
        };
        let wait = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
        match self.pg.wait_until_ready(wait).await {
            Ok(()) => self.postgres_started(as_primary, following),
            Err(e) => {
                self.start_failures += 1;
                self.state = PostgresState::StartFailed;
                error!(failures = self.start_failures, error = %e, "cannot start Postgres");
            }
        }
    }

    fn postgres_started(&mut self, as_primary: bool, following: Option<ConnTarget>) {
        self.pg_expected_up = true;
        self.pg_crashed = false;
        self.start_failures = 0;
        self.following = if as_primary { None } else { following };
        self.state = PostgresState::Running;
        self.role = if as_primary {
            Role::Primary
        } else {
            Role::Replica
        };
        // Publish the streaming state as soon as the WAL receiver has connected.
        self.next_cycle_soon = Some(SOON);
        info!(role = %self.role, "Postgres started");
    }

    /// Start as a replica; data that last ran as a primary is first checked for divergence from
    /// the leader's timeline and repaired with pg_rewind or a fresh clone.
    async fn start_as_replica(
        &mut self,
        cluster: Option<&Cluster>,
        leader: Option<&str>,
    ) -> PlanOutcome {
        let target = leader.and_then(|l| Self::member_target(cluster, l));
        if let (Some(target), Some(leader)) = (&target, leader) {
            // Any data directory (a former primary, or a replica that ran ahead of the member
            // that won) is checked against the leader's timeline before it starts.
            if let Err(outcome) = self.repair_divergence(target, leader).await {
                return outcome;
            }
        }
        self.start_postgres(
            ConfRole::Replica {
                primary: target.clone(),
                slot: self.slot_for_me(),
            },
            target,
        )
        .await
    }

    async fn repair_divergence(
        &mut self,
        target: &ConnTarget,
        leader: &str,
    ) -> Result<(), PlanOutcome> {
        let local = match self.pg.controldata().await {
            Ok(cd) => cd,
            Err(e) => {
                warn!(error = %e, "cannot read pg_control");
                return Err(PlanOutcome::Aborted);
            }
        };
        // A divergence seen while running is consumed by this check, whatever it finds.
        let divergence_seen = std::mem::take(&mut self.divergence_seen);
        let use_pg_rewind = self.use_pg_rewind();
        let mut repair = divergence_repair(&local, divergence_seen, None, use_pg_rewind);
        if repair == Repair::NeedLeaderHistory {
            let remote = match self.pg.remote_timeline_history(target).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "cannot read the timeline history of {leader}");
                    self.divergence_seen = divergence_seen;
                    return Err(PlanOutcome::Aborted);
                }
            };
            repair = divergence_repair(&local, divergence_seen, Some(&remote), use_pg_rewind);
        }
        match repair {
            Repair::Nothing => return Ok(()),
            // Answered above; reaching it again would mean no history was read.
            Repair::NeedLeaderHistory => {
                self.divergence_seen = divergence_seen;
                return Err(PlanOutcome::Aborted);
            }
            Repair::WaitForLeaderCheckpoint => {
                info!(
                    leader,
                    "waiting for the leader's checkpoint after promotion before checking divergence"
                );
                self.divergence_seen = divergence_seen;
                self.next_cycle_soon = Some(SOON);
                return Err(PlanOutcome::Aborted);
            }
            Repair::Rewind {
                diverged,
                was_primary,
            } => {
                self.state = PostgresState::RunningPgRewind;
                info!(from = leader, diverged, was_primary, "running pg_rewind");
                match self.pg.rewind(target).await {
                    Ok(RewindOutcome::Rewound) => {
                        info!("pg_rewind done");
                        return Ok(());
                    }
                    Ok(RewindOutcome::NotNeeded) => {
                        info!("pg_rewind: no rewind required");
                        return Ok(());
                    }
                    Err(e) => warn!(error = %e, "pg_rewind failed: cloning a fresh copy instead"),
                }
            }
            Repair::Clone => warn!(
                "the data directory diverged from {leader}'s timeline and use_pg_rewind is off: \
                 cloning a fresh copy"
            ),
        }
        self.state = PostgresState::CreatingReplica;
        self.publish_member().await;
        if let Err(e) = self.pg.basebackup(target).await {
            error!(error = %e, "pg_basebackup from {leader} failed");
            return Err(PlanOutcome::Aborted);
        }
        Ok(())
    }

    async fn promote(&mut self) -> PlanOutcome {
        info!("promoting Postgres");
        self.notify_coordinator(::citus::event::EventType::BeforePromote)
            .await;
        self.role = Role::Promoted;
        match self.pg.promote().await {
            Ok(()) => {
                self.role = Role::Primary;
                self.following = None;
                if let Err(e) = self.pg.write_config(ConfRole::Primary) {
                    warn!(error = %e, "cannot rewrite the configuration after promotion");
                }
                info!("promoted: this member is now the primary");
                // Tell peers at once: the state change is what replicas follow.
                self.last_obs = self.pg.observe().await;
                self.checkpoint_after_promote_pending = true;
                // A Citus worker: the coordinator resumes writes to this group now (it checks
                // the lock, which is ours), not after the publish and checkpoint below.
                self.citus_announce_primary();
                self.publish_member().await;
                // A former primary may only check its divergence with pg_rewind once our
                // pg_control names the new timeline, i.e. after a checkpoint.
                match self.pg.checkpoint().await {
                    Ok(()) => self.checkpoint_after_promote_pending = false,
                    Err(e) => warn!(error = %e, "checkpoint after promotion failed"),
                }
                PlanOutcome::Done
            }
            Err(e) => {
                error!(error = %e, "promotion failed");
                self.role = Role::Replica;
                PlanOutcome::Aborted
            }
        }
    }

    /// How long a fast stop of a primary may take: it must be over (escalated to immediate if
    /// need be) half a second before the lock we hold could expire.
    fn stop_budget_before_lock_expiry(&self) -> Duration {
        self.lock_deadline
            .map(|d| {
                d.saturating_duration_since(Instant::now())
                    .saturating_sub(Duration::from_millis(500))
            })
            .unwrap_or(Duration::from_secs(5))
            .max(Duration::from_millis(200))
    }

    async fn demote(&mut self, mode: DemoteMode, cluster: Option<&Cluster>) {
        info!(?mode, "demoting");
        self.set_failsafe_active(false);
        match mode {
            DemoteMode::ImmediateNoLock => {
                self.stop_postgres(StopMode::Immediate, Duration::from_secs(10))
                    .await;
                self.lock_deadline = None;
            }
            DemoteMode::Offline => {
                // Fast stop lets walsenders ship every acknowledged WAL record to the replicas;
                // it must still be over before the lock could expire.
                self.stop_postgres(StopMode::Fast, self.stop_budget_before_lock_expiry())
                    .await;
                self.lock_deadline = None;
            }
            DemoteMode::Graceful => {
                // The checkpoint makes the shutdown checkpoint quick; the fast stop sends every
                // WAL record to the streaming replicas before the walsenders exit.
                if let Err(e) = self.pg.checkpoint().await {
                    debug!(error = %e, "checkpoint before switchover failed");
                }
                // A Citus worker: the coordinator holds writes to this group until the new
                // primary announces itself.
                self.notify_coordinator(::citus::event::EventType::BeforeDemote)
                    .await;
                let candidates = cluster
                    .map(|c| handover_candidates(c, &self.settings()))
                    .unwrap_or_default();
                self.stop_for_handover(cluster, &candidates, self.stop_budget_before_lock_expiry())
                    .await;
                if self.pg.is_running() {
                    // Keep the lock: releasing it with a primary still up could make two.
                    error!("Postgres did not stop: keeping the leader lock, switchover aborted");
                    return;
                }
                // The candidate takes the free lock only once GET /patroni shows no running
                // primary here: publish the stop before the release wakes it, or it waits a
                // whole loop_wait for its next cycle.
                self.role = Role::Demoted;
                self.publish_member().await;
                let optime = self.pg.controldata().await.ok().map(|cd| cd.checkpoint_lsn);
                match self.dcs.delete_leader(optime).await {
                    Ok(_) => info!("released the leader lock for the switchover"),
                    Err(e) => warn!(error = %e, "cannot release the leader lock"),
                }
                self.lock_deadline = None;
            }
        }
        self.role = Role::Demoted;
        self.following = None;
        self.sync_protection();
    }

    /// The fast shutdown of a switchover. Postgres writes its shutdown checkpoint, then waits
    /// until every walsender has sent it; a replica cut off from us holds that up until its
    /// connection times out, and the lock with it. Once a candidate reports WAL past the shutdown
    /// checkpoint, no client can write here any more and the candidate has every record: the
    /// rest of the shutdown is cut short with an immediate stop.
    async fn stop_for_handover(
        &mut self,
        cluster: Option<&Cluster>,
        candidates: &[String],
        budget: Duration,
    ) {
        const POLL: Duration = Duration::from_millis(250);
        self.pg_expected_up = false;
        if !self.pg.is_running() {
            self.state = PostgresState::Stopped;
            return;
        }
        self.state = PostgresState::Stopping;
        if let Err(e) = self.pg.request_stop(StopMode::Fast) {
            warn!(error = %e, "cannot ask Postgres to stop");
        }
        let deadline = Instant::now() + budget;
        loop {
            if self.pg.wait_exit_within(POLL).await {
                self.state = PostgresState::Stopped;
                return;
            }
            if Instant::now() >= deadline {
                warn!("Postgres did not stop in time for the switchover: immediate shutdown");
                break;
            }
            let (Some(cluster), false) = (cluster, candidates.is_empty()) else {
                continue;
            };
            let Ok(control) = self.pg.controldata().await else {
                continue;
            };
            // "shut down" while the postmaster runs: the shutdown checkpoint is written and only
            // walsenders are left.
            if control.state != "shut down" {
                continue;
            }
            let checkpoint = control.checkpoint_lsn;
            let peers = self.fetch_peers_named(cluster, candidates).await;
            if let Some(peer) = peers.iter().find(|p| p.wal_position > checkpoint) {
                info!(
                    candidate = %peer.name,
                    checkpoint = %dcs::format_lsn(checkpoint),
                    "the candidate has the shutdown checkpoint: not waiting for other replicas"
                );
                break;
            }
        }
        self.stop_postgres(StopMode::Immediate, Duration::from_secs(10))
            .await;
    }

    /// Stop Postgres; a stop that does not finish in `budget` escalates to immediate.
    async fn stop_postgres(&mut self, mode: StopMode, budget: Duration) {
        self.pg_expected_up = false;
        if !self.pg.is_running() {
            self.state = PostgresState::Stopped;
            return;
        }
        self.state = PostgresState::Stopping;
        if let Err(e) = self.pg.stop(mode, budget).await {
            warn!(error = %e, ?mode, "stopping Postgres failed: stopping immediately");
            if let Err(e) = self
                .pg
                .stop(StopMode::Immediate, Duration::from_secs(10))
                .await
            {
                error!(error = %e, "cannot stop Postgres");
                self.state = PostgresState::StopFailed;
                return;
            }
        }
        self.state = PostgresState::Stopped;
    }

    async fn follow(&mut self, cluster: Option<&Cluster>, leader: Option<&str>) -> PlanOutcome {
        let Some(leader) = leader else {
            return PlanOutcome::Done;
        };
        let Some(target) = Self::member_target(cluster, leader) else {
            debug!("leader {leader} has no conn_url yet");
            return PlanOutcome::Done;
        };
        if self.following.as_ref() == Some(&target) {
            return PlanOutcome::Done;
        }
        let role = ConfRole::Replica {
            primary: Some(target.clone()),
            slot: self.slot_for_me(),
        };
        match self.pg.write_config(role) {
            Ok(change) => {
                if change.needs_restart {
                    info!(leader, "following a new leader: restarting Postgres");
                    self.stop_postgres(StopMode::Fast, Duration::from_secs(60))
                        .await;
                    let role = ConfRole::Replica {
                        primary: Some(target.clone()),
                        slot: self.slot_for_me(),
                    };
                    return self.start_postgres(role, Some(target)).await;
                }
                if change.changed {
                    info!(leader, "following a new leader: reloading Postgres");
                    if let Err(e) = self.pg.reload() {
                        warn!(error = %e, "cannot reload Postgres");
                    }
                }
                self.following = Some(target);
                PlanOutcome::Done
            }
            Err(e) => {
                warn!(error = %e, "cannot write the replica configuration");
                PlanOutcome::Aborted
            }
        }
    }

    async fn ensure_slots(&mut self, cluster: Option<&Cluster>) {
        let Some(cluster) = cluster else { return };
        let mut wanted: Vec<String> = cluster
            .members
            .iter()
            .filter(|m| m.name != self.cfg.name && !m.data.tags.nostream())
            .map(|m| crate::postgres::slot_name_for(&m.name))
            .collect();
        // Permanent physical slots from the DCS `slots` key are kept on the primary too.
        for (name, def) in &self.dynamic.slots {
            let kind = def
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("physical");
            if kind == "physical" && !wanted.contains(name) {
                wanted.push(name.clone());
            }
        }
        // `ignore_slots` entries naming a physical slot protect it from being dropped.
        let ignored: Vec<String> = self
            .dynamic
            .ignore_slots
            .iter()
            .filter(|rule| {
                rule.get("type")
                    .and_then(Value::as_str)
                    .is_none_or(|t| t == "physical")
            })
            .filter_map(|rule| rule.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        let ignore_all_physical = self.dynamic.ignore_slots.iter().any(|rule| {
            rule.get("name").is_none()
                && rule.get("type").and_then(Value::as_str) == Some("physical")
        });
        let keep = |slot: &str| ignore_all_physical || ignored.iter().any(|n| n == slot);
        if let Err(e) = self.pg.ensure_physical_slots_keeping(&wanted, &keep).await {
            warn!(error = %e, "cannot manage replication slots");
        }
    }

    async fn append_history(&mut self, cluster: Option<&Cluster>) {
        let Some(cluster) = cluster else { return };
        let Some(timeline) = self.last_obs.timeline else {
            return;
        };
        let rows = match self.pg.timeline_history(timeline).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the timeline history");
                return;
            }
        };
        let now = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
        let mut history: Vec<HistoryEntry> = cluster.history.clone();
        let max_known = history.last().map(|h| h.timeline).unwrap_or(0);
        for (tli, lsn, reason) in rows {
            if tli > max_known {
                let newest = tli + 1 == timeline;
                history.push(HistoryEntry {
                    timeline: tli,
                    lsn,
                    reason,
                    timestamp: Some(now.clone()),
                    new_leader: newest.then(|| self.cfg.name.clone()),
                });
            }
        }
        let limit = self.dynamic.max_timelines_history as usize;
        if limit > 0 && history.len() > limit {
            history.drain(..history.len() - limit);
        }
        match self.dcs.set_history_value(&history).await {
            Ok(()) => info!(timeline, "timeline history updated"),
            Err(e) => warn!(error = %e, "cannot write the timeline history"),
        }
    }

    fn member_data(&self) -> MemberData {
        let obs = &self.last_obs;
        let running = self.state == PostgresState::Running;
        let mut data = MemberData {
            conn_url: Some(self.cfg.conn_url()),
            api_url: Some(self.cfg.api_url()),
            state: self.state.clone(),
            role: self.role.clone(),
            version: Some(PATRONI_COMPAT_VERSION.into()),
            tags: self.cfg.tags.clone(),
            ..Default::default()
        };
        if self.leaving_sync {
            data.tags.0.insert("nosync".into(), Value::Bool(true));
        }
        if running {
            data.timeline = obs.timeline;
            match self.role {
                Role::Primary => data.xlog_location = obs.wal_position,
                _ => {
                    let pos = obs
                        .received_lsn
                        .unwrap_or(0)
                        .max(obs.replayed_lsn.unwrap_or(0));
                    data.xlog_location = Some(pos);
                    data.receive_lsn = obs.received_lsn;
                    data.replay_lsn = obs.replayed_lsn;
                    data.replication_state = Some(
                        if obs.streaming == Some(true) {
                            "streaming"
                        } else {
                            "in archive recovery"
                        }
                        .into(),
                    );
                }
            }
            if obs.pending_restart {
                data.pending_restart = Some(true);
                data.pending_restart_reason = obs.pending_restart_reason_json();
            }
        }
        if self.last_cluster.as_ref().is_some_and(|c| c.is_paused()) {
            data.pause = Some(true);
        }
        data.scheduled_restart = self.scheduled_restart_json();
        if self.checkpoint_after_promote_pending && self.role == Role::Primary {
            data.checkpoint_after_promote = Some(false);
        }
        data
    }

    async fn publish_member(&mut self) {
        let data = self.member_data();
        let now = (data.role.clone(), data.state.clone());
        if self.logged_role_state.as_ref() != Some(&now) {
            let (from_role, from_state) = self
                .logged_role_state
                .as_ref()
                .map(|(r, st)| (r.to_string(), st.to_string()))
                .unwrap_or_default();
            info!(
                from_role,
                from_state,
                role = %now.0,
                state = %now.1,
                reason = %self.last_reason,
                "member role/state changed"
            );
            self.logged_role_state = Some(now);
        }
        if self.last_member.as_ref() == Some(&data) && self.dcs_last_seen.is_some() {
            // Unchanged: the backend still needs the call to keep the session alive.
            if let Err(e) = self.dcs.touch_member(&data).await {
                debug!(error = %e, "cannot publish member data");
            }
            return;
        }
        match self.dcs.touch_member(&data).await {
            Ok(()) => self.last_member = Some(data),
            Err(e) => warn!(error = %e, "cannot publish member data"),
        }
        self.publish_snapshot();
    }

    fn publish_snapshot(&self) {
        let snap = crate::snapshot::build(self);
        self.snapshot.send_replace(snap);
    }

    /// SIGTERM/SIGINT: leader → CHECKPOINT, fast stop (cut short as in a switchover once a
    /// member that may take over has the shutdown checkpoint), delete the lock so a replica
    /// takes over at once; replica → stop and remove the member key.
    async fn shutdown(mut self) -> Exit {
        info!("shutting down");
        let leader = self.lock_deadline.is_some() && self.role == Role::Primary;
        if leader {
            if let Err(e) = self.pg.checkpoint().await {
                debug!(error = %e, "checkpoint before shutdown failed");
            }
            self.notify_coordinator(::citus::event::EventType::BeforeDemote)
                .await;
        }
        self.stop_node_manager("shutting down");
        if !leader {
            self.leave_sync_duty().await;
        }
        let budget = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
        if leader {
            // As in a switchover: a replica that does not answer must not hold up the handover
            // (and the Pod's termination grace period) once another one has every record.
            // A fresh view: the last cycle's may predate a replica that has started since, and
            // a candidate missing from it would leave only replicas that may never answer.
            let cluster = match tokio::time::timeout(SHUTDOWN_READ, self.dcs.get_cluster()).await {
                Ok(Ok(fresh)) => Some(fresh),
                _ => self.last_cluster.clone(),
            };
            let candidates = cluster
                .as_ref()
                .map(|c| handover_candidates(c, &self.settings()))
                .unwrap_or_default();
            self.stop_for_handover(cluster.as_ref(), &candidates, budget)
                .await;
        } else {
            self.stop_postgres(StopMode::Fast, budget).await;
        }
        if leader {
            let optime = self.pg.controldata().await.ok().map(|cd| cd.checkpoint_lsn);
            match self.dcs.delete_leader(optime).await {
                Ok(_) => info!("leader lock released"),
                Err(e) => warn!(error = %e, "cannot release the leader lock"),
            }
        } else if let Err(e) = self.dcs.delete_member().await {
            debug!(error = %e, "cannot remove the member key");
        }
        if let Err(e) = self.dcs.close().await {
            debug!(error = %e, "cannot close the DCS session");
        }
        self.stop_protection();
        info!("stopped");
        Exit::Shutdown
    }

    // Accessors for the REST snapshot.
    pub fn cfg(&self) -> &Config {
        &self.cfg
    }
    pub fn dynamic(&self) -> &DynamicConfig {
        &self.dynamic
    }
    pub fn last_cluster(&self) -> Option<&Cluster> {
        self.last_cluster.as_ref()
    }
    pub fn last_obs(&self) -> &PgObservation {
        &self.last_obs
    }
    pub fn state(&self) -> &PostgresState {
        &self.state
    }
    pub fn role(&self) -> &Role {
        &self.role
    }
    pub fn has_lock(&self) -> bool {
        self.lock_deadline.is_some_and(|d| d > Instant::now())
    }
    /// The failsafe topology shown on `GET /failsafe` (failsafe mode only).
    pub fn failsafe_topology(&self) -> Option<&dcs::FailsafeTopology> {
        self.known_failsafe
            .as_ref()
            .filter(|_| self.dynamic.failsafe_mode)
    }
    pub fn failsafe_active(&self) -> bool {
        self.failsafe_active
    }
    pub fn dcs_last_seen(&self) -> Option<i64> {
        self.dcs_last_seen
    }
    pub fn last_cycle_ms(&self) -> Option<i64> {
        self.last_cycle_ms
    }
}

async fn next_command(
    commands: &mut Option<tokio::sync::mpsc::Receiver<rest::Command>>,
) -> Option<rest::Command> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Interpret a peer's `GET /patroni` body.
pub fn peer_from_status(name: &str, body: &Value) -> PeerStatus {
    let role = Role::parse(body.get("role").and_then(Value::as_str).unwrap_or(""));
    let state = PostgresState::parse(body.get("state").and_then(Value::as_str).unwrap_or(""));
    let xlog = body.get("xlog");
    let num = |k: &str| xlog.and_then(|x| x.get(k)).and_then(Value::as_u64);
    let wal = num("location")
        .unwrap_or(0)
        .max(num("received_location").unwrap_or(0))
        .max(num("replayed_location").unwrap_or(0));
    PeerStatus {
        name: name.to_string(),
        role,
        running: state == PostgresState::Running,
        wal_position: wal,
        timeline: body
            .get("timeline")
            .and_then(Value::as_u64)
            .map(|t| t as u32),
        tags: body
            .get("tags")
            .and_then(|t| serde_json::from_value(t.clone()).ok())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn peer_status_parsing() {
        let p = peer_from_status(
            "b",
            &json!({"state":"running","role":"replica","xlog":{"received_location":100,"replayed_location":90},"timeline":2,"tags":{"nofailover":true}}),
        );
        assert_eq!(p.wal_position, 100);
        assert!(p.running);
        assert!(!p.tags.can_be_leader());
        let p = peer_from_status(
            "a",
            &json!({"state":"running","role":"master","xlog":{"location":5}}),
        );
        assert_eq!(p.role, Role::Primary);
        assert_eq!(p.wal_position, 5);
        let p = peer_from_status("c", &json!({"state":"stopped","role":"demoted"}));
        assert_eq!(p.wal_position, 0);
        assert!(!p.running);
    }
}
