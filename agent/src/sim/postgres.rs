//! A simulated Postgres: one [`SimWorld`] holds every member's server (data directory,
//! whether and how it runs) so replicas can stream from the primary they are configured to
//! follow, clone it and rewind from it. Time is tokio's; nothing here touches a file or a
//! process.
//!
//! WAL is a number: a server's data directory has a timeline, the history of the timelines
//! before it (where each ended), and the position its WAL reaches. A primary's WAL grows when
//! the simulation writes to it; a running standby whose upstream runs, shares its system
//! identifier and has not forked off its timeline receives everything the upstream has.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use dcs::memory::SplitMix64;
use tokio::sync::Notify;

use crate::postgres::{
    ConfChange, ConfRole, ConnTarget, ControlData, PgError, PgObservation, PgProcessState,
    PgSettings, PostgresControl, RemoteTimeline, RewindOutcome, StopMode, TimelineSwitch,
};

/// What a data directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub sysid: String,
    pub timeline: u32,
    /// (timeline, position where it ended), oldest first.
    pub history: Vec<(u32, u64)>,
    /// How far its WAL goes.
    pub end: u64,
    /// pg_control's cluster state.
    pub state: &'static str,
}

impl Data {
    /// Where this data directory's timeline `timeline` ends in its own history (None: current).
    fn switch_of(&self, timeline: u32) -> Option<u64> {
        self.history
            .iter()
            .find(|(t, _)| *t == timeline)
            .map(|(_, lsn)| *lsn)
    }

    /// Can a standby holding `replica` continue from this (upstream) data: the same system, and
    /// its WAL does not run past where its timeline forked off ours.
    fn can_feed(&self, replica: &Data) -> bool {
        if self.sysid != replica.sysid || replica.timeline > self.timeline {
            return false;
        }
        if replica.timeline == self.timeline {
            return replica.end <= self.end;
        }
        self.switch_of(replica.timeline)
            .is_some_and(|fork| replica.end <= fork)
    }
}

/// The configuration last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conf {
    Primary,
    /// standby.signal, following this upstream (None: no primary_conninfo).
    Standby(Option<ConnTarget>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    Primary,
    Standby,
}

#[derive(Debug, Default)]
pub struct Server {
    pub data: Option<Data>,
    pub running: Option<Running>,
    pub conf: Option<Conf>,
    /// The upstream the running standby uses (taken from the configuration at start/reload).
    pub upstream: Option<ConnTarget>,
    pub pid: i32,
    pub exited: Arc<Notify>,
    /// The fence's orders: (postmaster pid, when the stop starts).
    pub fence: Option<(i32, tokio::time::Instant)>,
    /// Cut off from its upstream's WAL (the network between them drops everything).
    pub wal_cut: bool,
    /// `synchronous_standby_names` in the configuration files.
    pub rendered_sync_names: Option<String>,
    /// `synchronous_standby_names` in effect (the files' as of the last start or reload).
    pub sync_names: Option<String>,
}

impl Server {
    /// A clean shutdown (fast stop): pg_control says so. The pid stopped, None when none ran.
    fn shut_down(&mut self) -> Option<i32> {
        let was = self.running.take()?;
        if let Some(data) = self.data.as_mut() {
            data.state = match was {
                Running::Primary => "shut down",
                Running::Standby => "shut down in recovery",
            };
        }
        self.exited.notify_waiters();
        Some(self.pid)
    }
}

#[derive(Debug, Default)]
struct World {
    servers: BTreeMap<String, Server>,
    next_pid: i32,
    next_sysid: u64,
    /// Start, stop, promote, clone and rewind take 0 ..= this long (seeded, so reproducible).
    max_latency: Duration,
    latency: SplitMix64,
}

impl World {
    fn latency(&mut self) -> Duration {
        self.latency.duration_up_to(self.max_latency)
    }

    /// Let every running standby receive what its upstream has.
    fn stream(&mut self) {
        let names: Vec<String> = self.servers.keys().cloned().collect();
        // Twice: a cascade (a standby of a standby) catches up in one step too.
        for _ in 0..2 {
            for name in &names {
                let Some(server) = self.servers.get(name) else {
                    continue;
                };
                let (Some(Running::Standby), Some(upstream), Some(data), false) = (
                    server.running,
                    server.upstream.clone(),
                    server.data.clone(),
                    server.wal_cut,
                ) else {
                    continue;
                };
                let Some(source) = self.servers.get(&upstream.host) else {
                    continue;
                };
                let (Some(_), Some(source_data)) = (source.running, source.data.clone()) else {
                    continue;
                };
                if source_data.can_feed(&data) {
                    if let Some(s) = self.servers.get_mut(name) {
                        s.data = Some(Data {
                            state: "in archive recovery",
                            ..source_data
                        });
                    }
                }
            }
        }
    }
}

/// Every simulated server of one cluster.
#[derive(Clone, Default)]
pub struct SimWorld(Arc<Mutex<World>>);

impl SimWorld {
    fn lock(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Slow operations (start, stop, promote, clone, rewind) take a seeded 0 ..= `max`.
    pub fn set_latency(&self, max: Duration, seed: u64) {
        let mut world = self.lock();
        world.max_latency = max;
        world.latency = SplitMix64(seed);
    }

    /// Wait as long as the next slow operation takes.
    async fn slow(&self) {
        let latency = self.lock().latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// The Postgres of member `name` (reachable by others as host `name`).
    pub fn postgres(&self, name: &str, settings: PgSettings) -> SimPostgres {
        self.lock().servers.entry(name.to_string()).or_default();
        SimPostgres {
            world: self.clone(),
            name: name.to_string(),
            settings,
            sync_names: None,
        }
    }

    /// Members whose Postgres runs as a primary now.
    pub fn primaries(&self) -> Vec<String> {
        self.lock()
            .servers
            .iter()
            .filter(|(_, s)| s.running == Some(Running::Primary))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// (running, data) of a member, after streaming.
    pub fn server(&self, name: &str) -> (Option<Running>, Option<Data>) {
        let mut world = self.lock();
        world.stream();
        world
            .servers
            .get(name)
            .map(|s| (s.running, s.data.clone()))
            .unwrap_or((None, None))
    }

    /// A write on member `name` if it runs as a primary: the (timeline, position) the client
    /// is told is committed. With `synchronous_standby_names` set, the commit waits until enough
    /// of the named standbys have it; a write they never receive stays unacknowledged (None),
    /// though it is in the primary's WAL.
    pub fn write(&self, name: &str, bytes: u64) -> Option<(u32, u64)> {
        let mut world = self.lock();
        let server = world.servers.get_mut(name)?;
        if server.running != Some(Running::Primary) {
            return None;
        }
        let sync_names = server.sync_names.clone().filter(|n| !n.is_empty());
        let data = server.data.as_mut()?;
        data.end += bytes;
        let ack = (data.timeline, data.end);
        world.stream();
        let Some(sync_names) = sync_names else {
            return Some(ack);
        };
        let (needed, names) = parse_sync_names(&sync_names);
        let confirmed = world
            .servers
            .iter()
            .filter(|(n, s)| {
                (names.is_empty() || names.iter().any(|x| x == *n))
                    && s.running == Some(Running::Standby)
                    && s.upstream.as_ref().is_some_and(|u| u.host == name)
                    && s.data
                        .as_ref()
                        .is_some_and(|d| d.timeline == ack.0 && d.end >= ack.1)
            })
            .count();
        (confirmed >= needed).then_some(ack)
    }

    /// The fence of member `name`, acting on this world like the fence process on Postgres.
    pub fn fence(&self, name: &str) -> SimFence {
        SimFence {
            world: self.clone(),
            name: name.to_string(),
        }
    }

    /// Let every armed fence whose time has come stop its postmaster (fast stop). The fence
    /// does not depend on its agent: it acts while the agent is frozen.
    pub fn fire_fences(&self, now: tokio::time::Instant) -> Vec<String> {
        let mut world = self.lock();
        let mut fired = Vec::new();
        for (name, server) in world.servers.iter_mut() {
            let Some((pid, at)) = server.fence else {
                continue;
            };
            if now < at {
                continue;
            }
            server.fence = None;
            if server.running.is_some() && server.pid == pid {
                server.shut_down();
                fired.push(name.clone());
            }
        }
        fired
    }

    /// Cut (or heal) the WAL stream into member `name`'s standby.
    pub fn cut_wal(&self, name: &str, cut: bool) {
        self.lock()
            .servers
            .entry(name.to_string())
            .or_default()
            .wal_cut = cut;
    }

    /// The postmaster of `name` dies (kill -9); the data directory stays as it was.
    pub fn crash(&self, name: &str) {
        let mut world = self.lock();
        if let Some(server) = world.servers.get_mut(name) {
            if server.running.take().is_some() {
                server.exited.notify_waiters();
            }
        }
    }
}

/// `synchronous_standby_names` → (how many must confirm, the names; empty: any standby).
fn parse_sync_names(text: &str) -> (usize, Vec<String>) {
    let text = text.trim();
    if text == "*" {
        return (1, Vec::new());
    }
    let (needed, list) = match text.split_once('(') {
        Some((count, rest)) => {
            let count = count
                .split_whitespace()
                .last()
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            (count, rest.trim_end_matches(')'))
        }
        None => (1, text),
    };
    let names = list
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .filter(|n| !n.is_empty())
        .collect();
    (needed, names)
}

/// One member's simulated Postgres.
pub struct SimPostgres {
    world: SimWorld,
    name: String,
    settings: PgSettings,
    sync_names: Option<String>,
}

impl SimPostgres {
    fn with_server<T>(&self, f: impl FnOnce(&mut World, &str) -> T) -> T {
        let mut world = self.world.lock();
        world.stream();
        f(&mut world, &self.name)
    }

    fn not_running(&self) -> PgError {
        PgError::NotRunning
    }

    fn unexpected(step: &'static str, detail: impl Into<String>) -> PgError {
        PgError::Unexpected {
            step,
            detail: detail.into(),
        }
    }

    fn source_data(world: &World, from: &ConnTarget) -> Option<Data> {
        let source = world.servers.get(&from.host)?;
        source.running?;
        source.data.clone()
    }

    fn stop_now(&mut self) -> Option<i32> {
        self.with_server(|world, name| world.servers.get_mut(name)?.shut_down())
    }

    fn start_now(&mut self) -> Result<(), PgError> {
        self.with_server(|world, name| {
            world.next_pid += 1;
            let pid = world.next_pid;
            let server = world.servers.entry(name.to_string()).or_default();
            if server.running.is_some() {
                return Err(PgError::AlreadyRunning(server.pid));
            }
            let Some(data) = server.data.as_mut() else {
                return Err(Self::unexpected("start", "no data directory"));
            };
            match server.conf.clone() {
                Some(Conf::Standby(upstream)) => {
                    data.state = "in archive recovery";
                    server.running = Some(Running::Standby);
                    server.upstream = upstream;
                }
                // No standby.signal: a primary.
                Some(Conf::Primary) | None => {
                    data.state = "in production";
                    server.running = Some(Running::Primary);
                    server.upstream = None;
                }
            }
            server.sync_names = server.rendered_sync_names.clone();
            server.pid = pid;
            Ok(())
        })
    }
}

#[async_trait(?Send)]
impl PostgresControl for SimPostgres {
    fn settings(&self) -> &PgSettings {
        &self.settings
    }

    fn is_running(&mut self) -> bool {
        self.with_server(|w, n| w.servers.get(n).is_some_and(|s| s.running.is_some()))
    }

    fn postmaster_pid(&mut self) -> Option<i32> {
        self.with_server(|w, n| {
            w.servers
                .get(n)
                .filter(|s| s.running.is_some())
                .map(|s| s.pid)
        })
    }

    fn is_valid_data_dir(&self) -> bool {
        self.with_server(|w, n| w.servers.get(n).is_some_and(|s| s.data.is_some()))
    }

    fn wipe_data_dir(&self) -> Result<(), PgError> {
        self.with_server(|w, n| {
            let server = w.servers.entry(n.to_string()).or_default();
            if server.running.is_some() {
                return Err(PgError::AlreadyRunning(server.pid));
            }
            server.data = None;
            Ok(())
        })
    }

    fn write_config(&self, role: ConfRole) -> Result<ConfChange, PgError> {
        let wanted = match role {
            ConfRole::Primary => Conf::Primary,
            ConfRole::Replica { primary, .. } => Conf::Standby(primary),
        };
        let sync_names = self.sync_names.clone();
        self.with_server(|w, n| {
            let server = w.servers.entry(n.to_string()).or_default();
            let changed =
                server.conf.as_ref() != Some(&wanted) || server.rendered_sync_names != sync_names;
            server.conf = Some(wanted);
            server.rendered_sync_names = sync_names;
            Ok(ConfChange {
                changed,
                needs_restart: false,
            })
        })
    }

    fn reload(&mut self) -> Result<(), PgError> {
        self.with_server(|w, n| {
            let server = w.servers.entry(n.to_string()).or_default();
            if server.running.is_none() {
                return Err(PgError::NotRunning);
            }
            if let (Some(Running::Standby), Some(Conf::Standby(upstream))) =
                (server.running, server.conf.clone())
            {
                server.upstream = upstream;
            }
            server.sync_names = server.rendered_sync_names.clone();
            Ok(())
        })
    }

    fn set_parameters(
        &mut self,
        _parameters: serde_json::Map<String, serde_json::Value>,
        _pg_hba: Vec<String>,
    ) {
    }

    fn synchronous_standby_names(&self) -> Option<&str> {
        self.sync_names.as_deref()
    }

    fn set_synchronous_standby_names(&mut self, names: Option<String>) -> bool {
        let changed = self.sync_names != names;
        self.sync_names = names;
        changed
    }

    fn adopt_rendered_synchronous_standby_names(&mut self) -> Option<&str> {
        None
    }

    fn local_db_config(&self, database: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config.dbname(database);
        config
    }

    fn request_stop(&mut self, _mode: StopMode) -> Result<Option<i32>, PgError> {
        Ok(self.stop_now())
    }

    async fn observe(&mut self) -> PgObservation {
        let (running, data) = self.world.server(&self.name);
        let Some(running) = running else {
            return PgObservation::default();
        };
        let Some(data) = data else {
            return PgObservation::default();
        };
        let standby = running == Running::Standby;
        let streaming = standby
            && self.with_server(|w, n| {
                let server = w.servers.get(n);
                if server.is_some_and(|s| s.wal_cut) {
                    return false;
                }
                let upstream = server.and_then(|s| s.upstream.clone());
                let source = upstream.and_then(|u| Self::source_data(w, &u));
                source.is_some_and(|s| s.can_feed(&data) || s.end == data.end)
            });
        PgObservation {
            running: true,
            state: PgProcessState::Running,
            queryable: true,
            in_recovery: Some(standby),
            timeline: Some(data.timeline),
            sysid: Some(data.sysid.clone()),
            wal_position: (!standby).then_some(data.end),
            received_lsn: standby.then_some(data.end),
            replayed_lsn: standby.then_some(data.end),
            streaming: standby.then_some(streaming),
            server_version: Some(150000),
            ..PgObservation::default()
        }
    }

    async fn controldata(&self) -> Result<ControlData, PgError> {
        let (_, data) = self.world.server(&self.name);
        let data = data.ok_or_else(|| Self::unexpected("pg_controldata", "no data directory"))?;
        Ok(ControlData {
            sysid: data.sysid.clone(),
            state: data.state.to_string(),
            timeline: data.timeline,
            checkpoint_lsn: data.end,
            redo_lsn: data.end,
            min_recovery_end_lsn: if data.state.contains("recovery") {
                data.end
            } else {
                0
            },
            min_recovery_end_timeline: if data.state.contains("recovery") {
                data.timeline
            } else {
                0
            },
            wal_log_hints: true,
            ..ControlData::default()
        })
    }

    async fn checkpoint(&mut self) -> Result<(), PgError> {
        if self.is_running() {
            Ok(())
        } else {
            Err(self.not_running())
        }
    }

    async fn initdb(&self) -> Result<(), PgError> {
        self.with_server(|w, n| {
            w.next_sysid += 1;
            let sysid = format!("70000000000000{:05}", w.next_sysid);
            let server = w.servers.entry(n.to_string()).or_default();
            if server.data.is_some() {
                return Err(Self::unexpected(
                    "initdb",
                    "the data directory is not empty",
                ));
            }
            server.data = Some(Data {
                sysid,
                timeline: 1,
                history: Vec::new(),
                end: 1_000,
                state: "shut down",
            });
            Ok(())
        })
    }

    async fn post_bootstrap(&mut self) -> Result<(), PgError> {
        Ok(())
    }

    async fn basebackup(&self, from: &ConnTarget) -> Result<(), PgError> {
        self.world.slow().await;
        self.with_server(|w, n| {
            let source = Self::source_data(w, from)
                .ok_or_else(|| Self::unexpected("pg_basebackup", "the source does not run"))?;
            let server = w.servers.entry(n.to_string()).or_default();
            if server.running.is_some() {
                return Err(PgError::AlreadyRunning(server.pid));
            }
            server.data = Some(Data {
                state: "in archive recovery",
                ..source
            });
            Ok(())
        })
    }

    async fn rewind(&mut self, from: &ConnTarget) -> Result<RewindOutcome, PgError> {
        self.world.slow().await;
        self.with_server(|w, n| {
            let source = Self::source_data(w, from)
                .ok_or_else(|| Self::unexpected("pg_rewind", "the source does not run"))?;
            let server = w.servers.entry(n.to_string()).or_default();
            if server.running.is_some() {
                return Err(PgError::AlreadyRunning(server.pid));
            }
            let data = server
                .data
                .as_mut()
                .ok_or_else(|| Self::unexpected("pg_rewind", "no data directory"))?;
            if data.sysid != source.sysid {
                return Err(Self::unexpected("pg_rewind", "another system"));
            }
            if source.can_feed(data) {
                return Ok(RewindOutcome::NotNeeded);
            }
            // Back to where our timeline forked off the source's, then on with the source's
            // WAL: the rewound directory recovers to the source's position.
            *data = Data {
                state: "in archive recovery",
                ..source
            };
            Ok(RewindOutcome::Rewound)
        })
    }

    async fn start(&mut self) -> Result<(), PgError> {
        self.world.slow().await;
        self.start_now()
    }

    async fn spawn_postmaster(&mut self) -> Result<(), PgError> {
        self.world.slow().await;
        self.start_now()
    }

    async fn wait_until_ready(&mut self, _timeout: Duration) -> Result<(), PgError> {
        if self.is_running() {
            Ok(())
        } else {
            Err(self.not_running())
        }
    }

    async fn stop(&mut self, _mode: StopMode, _timeout: Duration) -> Result<(), PgError> {
        self.world.slow().await;
        self.stop_now();
        Ok(())
    }

    async fn wait_exit_within(&mut self, timeout: Duration) -> bool {
        if !self.is_running() {
            return true;
        }
        tokio::time::sleep(timeout).await;
        !self.is_running()
    }

    async fn wait_exit(&mut self) {
        let exited = self.with_server(|w, n| {
            let server = w.servers.entry(n.to_string()).or_default();
            server.running.map(|_| server.exited.clone())
        });
        match exited {
            Some(notify) => notify.notified().await,
            None => std::future::pending().await,
        }
    }

    async fn promote(&mut self) -> Result<(), PgError> {
        self.world.slow().await;
        self.with_server(|w, n| {
            let server = w.servers.entry(n.to_string()).or_default();
            if server.running != Some(Running::Standby) {
                return Err(PgError::NotRunning);
            }
            let Some(data) = server.data.as_mut() else {
                return Err(Self::unexpected("promote", "no data directory"));
            };
            data.history.push((data.timeline, data.end));
            data.timeline += 1;
            data.state = "in production";
            server.running = Some(Running::Primary);
            server.upstream = None;
            Ok(())
        })
    }

    async fn adopt_running(&mut self) -> Result<Option<i32>, PgError> {
        Ok(self.postmaster_pid())
    }

    async fn timeline_history(&mut self, timeline: u32) -> Result<Vec<TimelineSwitch>, PgError> {
        let (_, data) = self.world.server(&self.name);
        let data = data.ok_or_else(|| Self::unexpected("timeline history", "no data"))?;
        Ok(data
            .history
            .iter()
            .filter(|(t, _)| *t < timeline)
            .map(|(t, lsn)| (*t, *lsn, "no recovery target specified".to_string()))
            .collect())
    }

    async fn remote_timeline_history(
        &self,
        target: &ConnTarget,
    ) -> Result<RemoteTimeline, PgError> {
        self.with_server(|w, _| {
            let source = Self::source_data(w, target)
                .ok_or_else(|| Self::unexpected("connect to leader", "it does not run"))?;
            Ok(RemoteTimeline {
                timeline: source.timeline,
                checkpoint_timeline: Some(source.timeline),
                history: source
                    .history
                    .iter()
                    .map(|(t, lsn)| (*t, *lsn, String::new()))
                    .collect(),
            })
        })
    }

    async fn ensure_physical_slots_keeping(
        &mut self,
        _wanted: &[String],
        _keep: &dyn for<'s> Fn(&'s str) -> bool,
    ) -> Result<(), PgError> {
        Ok(())
    }
}

/// A member's simulated fence process.
pub struct SimFence {
    world: SimWorld,
    name: String,
}

impl crate::ha::cycle::FenceControl for SimFence {
    fn is_alive(&mut self) -> bool {
        true
    }

    fn arm(
        &mut self,
        pid: i32,
        deadline: tokio::time::Instant,
        margin: Duration,
    ) -> std::io::Result<()> {
        let at = deadline.checked_sub(margin).unwrap_or(deadline);
        self.world
            .lock()
            .servers
            .entry(self.name.clone())
            .or_default()
            .fence = Some((pid, at));
        Ok(())
    }

    fn disarm(&mut self) -> std::io::Result<()> {
        self.world
            .lock()
            .servers
            .entry(self.name.clone())
            .or_default()
            .fence = None;
        Ok(())
    }

    fn kill(self: Box<Self>) {}

    fn shutdown(self: Box<Self>) {}
}
