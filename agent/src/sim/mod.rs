//! Deterministic simulation of the HA loop: the real [`Agent`] of every member, each with an
//! in-memory DCS client ([`dcs::memory`]) and a simulated Postgres ([`postgres::SimWorld`]), on
//! tokio's paused clock in one thread, driven through seeded random schedules of faults.
//!
//! After every 100 ms of simulated time the invariants are checked:
//! * at most one member runs Postgres as a primary;
//! * a member whose Postgres runs as a primary holds the leader lock: nobody else holds it,
//!   and it has not lapsed (a leader that cannot renew stops Postgres before its lease ends).
//!
//! And after the faults of a schedule are healed, within a bound, one member leads and every
//! other member's Postgres runs as a standby that has all of the leader's WAL; in
//! synchronous_mode (odd seeds) the leader's WAL holds every write a client was told is
//! committed. DCS calls and Postgres' slow operations take seeded random time, so members'
//! actions interleave.
//!
//! Faults: Postgres killed, the agent killed (and with it Postgres, as the parent-death signal
//! does) and started again, a member cut off from the DCS (refused or silent), a replica cut
//! off from the WAL stream (with or without the leader's Postgres dying meanwhile), a
//! switchover request, an agent frozen (its future is not polled, as SIGSTOP stops a process)
//! while its Postgres runs, the whole DCS down, a change of ttl and loop_wait. The fence is
//! simulated by the world (`SimFence`): armed by the agent, it stops Postgres at its time
//! whether or not the agent runs.
//!
//! A failing seed prints the schedule and what happened; `REGENT_SIM_SEED=<n>` replays one seed,
//! `REGENT_SIM_SCHEDULES=<n>` runs another number of schedules (10,000 by default, spread over
//! every core), `REGENT_SIM_TRACE=1` prints the trace of passing seeds too. Each seed runs on a
//! runtime of its own, so it replays alone exactly as it ran in the batch.

pub mod postgres;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use dcs::memory::{Cut, MemoryStore, SplitMix64};
use dcs::{Dcs, Failover, Timing};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::{JoinHandle, LocalSet};

use crate::config::Config;
use crate::ha::cycle::Agent;
use crate::ha::peers::MemberStatusSource;
use crate::postgres::PgSettings;
use postgres::{Running, SimWorld};

const SCOPE: &str = "sim";
const TIMING: Timing = Timing {
    ttl: 10,
    loop_wait: 2,
    retry_timeout: 3,
};
const STEP: Duration = Duration::from_millis(100);
/// After the last heal, the cluster must be whole again within this.
const CONVERGENCE: Duration = Duration::from_secs(90);

/// The schedule's generator: a seed names one schedule forever.
struct Rng(SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Nobody,
    Leader,
    LeaderAndOthers,
}

#[derive(Debug, Clone)]
enum Fault {
    KillPostgres(usize),
    KillAgent(usize, Duration),
    Cut(usize, Cut, Duration),
    Switchover(usize),
    /// The agent is frozen (SIGSTOP) for this long; its Postgres keeps running.
    Freeze(usize, Duration),
    /// Every member is cut off from the DCS for this long (the DCS is down).
    DcsDown(Cut, Duration),
    /// The dynamic configuration gets this ttl and loop_wait (retry_timeout stays 3).
    Timing(u32, u32),
    /// A replica stops receiving WAL; halfway through, the agents of the leader (and, with
    /// `Kill::LeaderAndOthers`, of every other member but that replica) are killed and stay
    /// down for longer than ttl: a replica that missed acknowledged writes may then be the
    /// only one left to take over.
    CutWal(usize, Duration, Kill),
}

/// An agent that can be frozen: while frozen its future is not polled at all, as a SIGSTOPped
/// process runs no code — its timers, its lease guard included, wait with it.
#[derive(Clone, Default)]
struct Freeze {
    frozen: Rc<Cell<bool>>,
    waker: Rc<RefCell<Option<Waker>>>,
}

impl Freeze {
    fn set(&self, frozen: bool) {
        self.frozen.set(frozen);
        if !frozen {
            if let Some(waker) = self.waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

struct Freezable<F> {
    inner: Pin<Box<F>>,
    freeze: Freeze,
}

impl<F: Future> Future for Freezable<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.freeze.frozen.get() {
            *self.freeze.waker.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        self.inner.as_mut().poll(cx)
    }
}

/// `GET /patroni` of the simulated members, from their agents' snapshots.
#[derive(Clone, Default)]
struct Snapshots(Rc<RefCell<BTreeMap<String, watch::Receiver<rest::Snapshot>>>>);

#[async_trait(?Send)]
impl MemberStatusSource for Snapshots {
    async fn status(&self, url: &str) -> Option<Value> {
        let snapshots = self.0.borrow();
        let snapshot = snapshots.get(url)?.borrow().clone();
        Some(rest::status_value(&snapshot))
    }
}

/// One HTTP client for every simulated agent: building one reads the system trust store, which
/// would dominate the simulation's time. The simulated agents never call it for `GET /patroni`.
fn http_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new).clone()
}

fn api_url(name: &str) -> String {
    format!("http://{name}:8008/patroni")
}

fn config(name: &str, synchronous: bool) -> Config {
    let yaml = format!(
        "scope: {SCOPE}\nname: {name}\n\
         restapi:\n  listen: 127.0.0.1:8008\n  connect_address: {name}:8008\n\
         etcd3:\n  hosts: ['127.0.0.1:2379']\n\
         bootstrap:\n  dcs:\n    ttl: {}\n    loop_wait: {}\n    retry_timeout: {}\n    \
         maximum_lag_on_failover: 1048576\n    synchronous_mode: {synchronous}\n\
         postgresql:\n  data_dir: /nonexistent/regent-sim/{name}\n  listen: 0.0.0.0:5432\n  \
         connect_address: {name}:5432\n  authentication:\n    superuser:\n      username: postgres\n    \
         replication:\n      username: replicator\n\
         watchdog:\n  mode: off\n  fence: false\n",
        TIMING.ttl, TIMING.loop_wait, TIMING.retry_timeout
    );
    match Config::from_yaml_str(&yaml) {
        Ok(c) => c,
        Err(e) => panic!("simulation config: {e}"),
    }
}

struct SimMember {
    name: String,
    task: Option<JoinHandle<()>>,
    shutdown: Option<watch::Sender<bool>>,
    freeze: Freeze,
}

struct Sim {
    store: MemoryStore,
    world: SimWorld,
    snapshots: Snapshots,
    members: Vec<SimMember>,
    trace: Vec<String>,
    started: tokio::time::Instant,
    /// The lock has been held at least once (bootstrap is over).
    ever_locked: bool,
    synchronous: bool,
    /// Synchronous mode: every (timeline, position) a client was told is committed.
    acknowledged: Vec<(u32, u64)>,
}

impl Sim {
    fn new(names: &[&str], synchronous: bool) -> Sim {
        Sim {
            store: MemoryStore::new(),
            world: SimWorld::default(),
            snapshots: Snapshots::default(),
            members: names
                .iter()
                .map(|n| SimMember {
                    name: n.to_string(),
                    task: None,
                    shutdown: None,
                    freeze: Freeze::default(),
                })
                .collect(),
            trace: Vec::new(),
            started: tokio::time::Instant::now(),
            ever_locked: false,
            synchronous,
            acknowledged: Vec::new(),
        }
    }

    fn note(&mut self, what: String) {
        let at = self.started.elapsed().as_secs_f64();
        self.trace.push(format!("{at:8.1}s {what}"));
    }

    fn start_agent(&mut self, index: usize) {
        let name = self.members[index].name.clone();
        let cfg = config(&name, self.synchronous);
        let settings = PgSettings {
            name: name.clone(),
            scope: SCOPE.into(),
            data_dir: format!("/nonexistent/regent-sim/{name}").into(),
            ..PgSettings::default()
        };
        let pg = Box::new(self.world.postgres(&name, settings));
        let dcs: Arc<dyn Dcs> = Arc::new(self.store.client(&name, TIMING));
        let (snapshot_tx, snapshot_rx) = watch::channel(rest::Snapshot::default());
        self.snapshots
            .0
            .borrow_mut()
            .insert(api_url(&name), snapshot_rx);
        let agent = Agent::new(cfg, dcs, pg, http_client(), snapshot_tx)
            .with_member_status(Box::new(self.snapshots.clone()))
            .with_fence(Box::new(self.world.fence(&name)));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let freeze = Freeze::default();
        self.members[index].freeze = freeze.clone();
        let task = tokio::task::spawn_local(Freezable {
            inner: Box::pin(async move {
                agent.run(shutdown_rx).await;
            }),
            freeze,
        });
        self.members[index].task = Some(task);
        self.members[index].shutdown = Some(shutdown_tx);
        self.note(format!("{name}: agent started"));
    }

    /// kill -9 of the agent: its Postgres dies with it (parent-death signal).
    fn kill_agent(&mut self, index: usize) {
        let name = self.members[index].name.clone();
        if let Some(task) = self.members[index].task.take() {
            task.abort();
        }
        self.members[index].shutdown = None;
        self.world.crash(&name);
        self.note(format!("{name}: agent killed"));
    }

    /// The invariants that must hold at every moment.
    fn check_safety(&mut self) -> Result<(), String> {
        let primaries = self.world.primaries();
        if primaries.len() > 1 {
            return Err(format!("two primaries at once: {primaries:?}"));
        }
        let holder = self.store.leader();
        self.ever_locked |= holder.is_some();
        if let Some(primary) = primaries.first() {
            match holder {
                Some(h) if h != *primary => {
                    return Err(format!(
                        "{primary} runs as a primary while {h} holds the lock"
                    ))
                }
                // Only the bootstrap starts a primary before taking the lock.
                None if self.ever_locked => {
                    return Err(format!("{primary} runs as a primary after its lock lapsed"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// One leader, every other member a standby with all of its WAL.
    fn whole(&self) -> Option<String> {
        let primaries = self.world.primaries();
        let [leader] = primaries.as_slice() else {
            return None;
        };
        if self.store.leader().as_deref() != Some(leader.as_str()) {
            return None;
        }
        let (_, leader_data) = self.world.server(leader);
        let leader_data = leader_data?;
        for member in &self.members {
            if member.name == *leader {
                continue;
            }
            let (running, data) = self.world.server(&member.name);
            if running != Some(Running::Standby)
                || data.as_ref()
                    != Some(&postgres::Data {
                        state: "in archive recovery",
                        ..leader_data.clone()
                    })
            {
                return None;
            }
        }
        Some(leader.clone())
    }

    /// Let `duration` of simulated time pass, writing to the primary and checking safety.
    async fn run_for(&mut self, duration: Duration) -> Result<(), String> {
        let end = tokio::time::Instant::now() + duration;
        while tokio::time::Instant::now() < end {
            tokio::time::sleep(STEP).await;
            for name in self.world.fire_fences(tokio::time::Instant::now()) {
                self.note(format!("{name}: the fence stopped Postgres"));
            }
            if let Some(primary) = self.world.primaries().first() {
                if let Some(ack) = self.world.write(primary, 128) {
                    if self.synchronous {
                        self.acknowledged.push(ack);
                    }
                }
            }
            self.check_safety()?;
        }
        Ok(())
    }

    /// Synchronous mode: the leader's WAL holds every acknowledged write.
    fn check_nothing_lost(&self, leader: &str) -> Result<(), String> {
        let (_, data) = self.world.server(leader);
        let Some(data) = data else {
            return Err(format!("{leader} has no data directory"));
        };
        let has = |(timeline, lsn): (u32, u64)| {
            if timeline == data.timeline {
                return lsn <= data.end;
            }
            data.history
                .iter()
                .any(|(t, end)| *t == timeline && lsn <= *end)
        };
        match self.acknowledged.iter().find(|ack| !has(**ack)) {
            Some((timeline, lsn)) => Err(format!(
                "an acknowledged write (timeline {timeline}, position {lsn}) is not in {leader}'s \
                 WAL (timeline {}, end {}, history {:?})",
                data.timeline, data.end, data.history
            )),
            None => Ok(()),
        }
    }

    async fn converge(&mut self) -> Result<String, String> {
        let end = tokio::time::Instant::now() + CONVERGENCE;
        loop {
            if let Some(leader) = self.whole() {
                self.check_nothing_lost(&leader)?;
                return Ok(leader);
            }
            if tokio::time::Instant::now() >= end {
                let states: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("{}: {:?}", m.name, self.world.server(&m.name)))
                    .collect();
                return Err(format!(
                    "not whole {CONVERGENCE:?} after the heal: lock {:?}; {}",
                    self.store.leader(),
                    states.join("; ")
                ));
            }
            self.run_for(STEP).await?;
        }
    }

    async fn apply(&mut self, fault: &Fault, rng: &mut Rng) -> Result<(), String> {
        match fault {
            Fault::KillPostgres(i) => {
                let name = self.members[*i].name.clone();
                self.world.crash(&name);
                self.note(format!("{name}: postgres killed"));
                self.run_for(rng.millis(500, 5_000)).await
            }
            Fault::KillAgent(i, down) => {
                self.kill_agent(*i);
                self.run_for(*down).await?;
                self.start_agent(*i);
                Ok(())
            }
            Fault::Cut(i, how, hold) => {
                let name = self.members[*i].name.clone();
                self.store.cut(&name, Some(*how));
                self.note(format!(
                    "{name}: cut off from the DCS ({how:?}) for {hold:?}"
                ));
                self.run_for(*hold).await?;
                self.store.cut(&name, None);
                self.note(format!("{name}: reaches the DCS again"));
                Ok(())
            }
            Fault::CutWal(i, hold, kill) => {
                let name = self.members[*i].name.clone();
                self.world.cut_wal(&name, true);
                self.note(format!("{name}: receives no WAL for {hold:?}"));
                self.run_for(*hold / 2).await?;
                let mut killed = Vec::new();
                if *kill != Kill::Nobody {
                    let leader = self.store.leader();
                    for j in 0..self.members.len() {
                        let member = &self.members[j].name;
                        let is_leader = leader.as_deref() == Some(member.as_str());
                        if j != *i && (is_leader || *kill == Kill::LeaderAndOthers) {
                            self.kill_agent(j);
                            killed.push(j);
                        }
                    }
                    self.run_for(Duration::from_secs(u64::from(TIMING.ttl) + 5))
                        .await?;
                }
                self.run_for(*hold / 2).await?;
                self.world.cut_wal(&name, false);
                self.note(format!("{name}: receives WAL again"));
                for j in killed {
                    self.start_agent(j);
                }
                Ok(())
            }
            Fault::DcsDown(how, hold) => {
                let names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
                for name in &names {
                    self.store.cut(name, Some(*how));
                }
                self.note(format!("the DCS is down ({how:?}) for {hold:?}"));
                self.run_for(*hold).await?;
                for name in &names {
                    self.store.cut(name, None);
                }
                self.note("the DCS is back".into());
                Ok(())
            }
            Fault::Timing(ttl, loop_wait) => {
                let client = self.store.client("sim-operator", TIMING);
                let current = client
                    .get_cluster()
                    .await
                    .ok()
                    .and_then(|c| c.config)
                    .map(|c| (c.raw, c.version));
                let Some((mut raw, version)) = current else {
                    self.note("timing change skipped: no config".into());
                    return Ok(());
                };
                raw["ttl"] = (*ttl).into();
                raw["loop_wait"] = (*loop_wait).into();
                let written = client.set_config_value(&raw, version.as_deref()).await;
                self.note(format!("ttl {ttl}, loop_wait {loop_wait}: {written:?}"));
                self.run_for(rng.millis(1_000, 10_000)).await
            }
            Fault::Freeze(i, hold) => {
                let name = self.members[*i].name.clone();
                self.members[*i].freeze.set(true);
                self.note(format!("{name}: agent frozen for {hold:?}"));
                self.run_for(*hold).await?;
                self.members[*i].freeze.set(false);
                self.note(format!("{name}: agent resumed"));
                Ok(())
            }
            Fault::Switchover(i) => {
                let Some(leader) = self.store.leader() else {
                    self.note("switchover skipped: no leader".into());
                    return Ok(());
                };
                let candidate = self.members[*i].name.clone();
                if candidate == leader {
                    return Ok(());
                }
                let client = self.store.client("sim-operator", TIMING);
                let request = Failover {
                    leader: Some(leader.clone()),
                    member: Some(candidate.clone()),
                    ..Failover::default()
                };
                let written = client.set_failover_value(&request, None).await;
                self.note(format!("switchover {leader} -> {candidate}: {written:?}"));
                self.run_for(rng.millis(1_000, 8_000)).await
            }
        }
    }
}

fn schedule(rng: &mut Rng, members: usize, faults: usize) -> Vec<Fault> {
    let ttl = u64::from(TIMING.ttl) * 1000;
    (0..faults)
        .map(|_| {
            let who = rng.below(members as u64) as usize;
            match rng.below(8) {
                0 => Fault::KillPostgres(who),
                1 => Fault::KillAgent(who, rng.millis(500, 2 * ttl)),
                2 => {
                    let how = if rng.below(2) == 0 {
                        Cut::Refused
                    } else {
                        Cut::Silent
                    };
                    Fault::Cut(who, how, rng.millis(1_000, 2 * ttl))
                }
                3 => {
                    let kill = match rng.below(3) {
                        0 => Kill::Nobody,
                        1 => Kill::Leader,
                        _ => Kill::LeaderAndOthers,
                    };
                    Fault::CutWal(who, rng.millis(2_000, 2 * ttl), kill)
                }
                4 => Fault::Freeze(who, rng.millis(1_000, 2 * ttl)),
                5 => {
                    let how = if rng.below(2) == 0 {
                        Cut::Refused
                    } else {
                        Cut::Silent
                    };
                    Fault::DcsDown(how, rng.millis(1_000, 2 * ttl))
                }
                6 => Fault::Timing([10, 15, 20][rng.below(3) as usize], 1 + rng.below(3) as u32),
                _ => Fault::Switchover(who),
            }
        })
        .collect()
}

/// One seeded schedule, start to end: its trace, or why and the trace when an invariant broke.
async fn run_schedule(seed: u64, faults: usize) -> ScheduleOutcome {
    let mut rng = Rng(SplitMix64(seed));
    let plan = schedule(&mut rng, 3, faults);
    // Odd seeds run in synchronous_mode.
    let mut sim = Sim::new(&["m1", "m2", "m3"], seed % 2 == 1);
    sim.store.set_latency(Duration::from_millis(50), rng.next());
    sim.world
        .set_latency(Duration::from_millis(300), rng.next());
    for i in 0..sim.members.len() {
        sim.start_agent(i);
    }
    let outcome = async {
        sim.converge()
            .await
            .map_err(|e| format!("bootstrap: {e}"))?;
        for fault in &plan {
            sim.note(format!("fault {fault:?}"));
            sim.apply(fault, &mut rng).await?;
            let leader = sim.converge().await?;
            sim.note(format!("whole again, {leader} leads"));
        }
        Ok::<(), String>(())
    }
    .await;
    for i in 0..sim.members.len() {
        if let Some(task) = sim.members[i].task.take() {
            task.abort();
        }
    }
    let mode = if sim.synchronous {
        format!(
            "synchronous_mode: {} writes acknowledged",
            sim.acknowledged.len()
        )
    } else {
        "asynchronous".to_string()
    };
    sim.note(mode);
    match outcome {
        Ok(()) => Ok(sim.trace),
        Err(e) => Err((e, sim.trace)),
    }
}

fn env_number(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

/// A schedule's trace, or why it failed and its trace.
type ScheduleOutcome = Result<Vec<String>, (String, Vec<String>)>;

/// Runs one seed on a runtime of its own, so a seed replays the same way alone or in a batch.
fn run_seed(seed: u64) -> ScheduleOutcome {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(r) => r,
        Err(e) => panic!("runtime: {e}"),
    };
    LocalSet::new().block_on(&runtime, run_schedule(seed, 8))
}

#[test]
fn seeded_schedules_keep_one_primary_and_heal() {
    let seeds: Vec<u64> = match env_number("REGENT_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (1..=env_number("REGENT_SIM_SCHEDULES").unwrap_or(10_000)).collect(),
    };
    // Seeds are independent: one worker thread per core takes the next seed until none is left.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = std::time::Instant::now();
    let results: Vec<(u64, Duration, ScheduleOutcome)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&seed) = seeds.get(i) else {
                            return done;
                        };
                        let clock = std::time::Instant::now();
                        let outcome = run_seed(seed);
                        done.push((seed, clock.elapsed(), outcome));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(done) => done,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    let mut failures = Vec::new();
    let mut slowest: Option<(u64, Duration)> = None;
    for (seed, took, outcome) in results {
        if slowest.is_none_or(|(_, t)| took > t) {
            slowest = Some((seed, took));
        }
        match outcome {
            Ok(trace) => {
                if std::env::var_os("REGENT_SIM_TRACE").is_some() {
                    println!("seed {seed}:\n  {}", trace.join("\n  "));
                }
            }
            Err((why, trace)) => failures.push(format!(
                "seed {seed}: {why}\n  {}\n  replay: REGENT_SIM_SEED={seed} cargo test -p agent --bin regent seeded_schedules",
                trace.join("\n  ")
            )),
        }
    }
    if let Some((seed, took)) = slowest {
        println!(
            "simulation: {} schedules on {workers} threads in {:.1} s; slowest seed {seed}: {:.2} s",
            seeds.len(),
            started.elapsed().as_secs_f64(),
            took.as_secs_f64()
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} schedules broke an invariant:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}
