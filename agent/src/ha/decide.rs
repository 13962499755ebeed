//! The HA decision function: cluster view + local state + settings → actions.
//!
//! Pure: no IO, no clock reads, no async. The loop (`cycle.rs`) observes the world, calls
//! [`decide`], executes the returned actions in order and, when an action whose outcome matters
//! fails (a lock could not be renewed or acquired), records the outcome in [`LocalState`] and calls
//! [`decide`] again. Every HA rule lives here and is tested table-style below.

use dcs::{Cluster, FailsafeTopology, Role, Tags};

/// How to take Postgres down when giving up the primary role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoteMode {
    /// The lock was lost: immediate stop, the lock is not ours to release.
    ImmediateNoLock,
    /// The DCS is unreachable: fast stop (walsenders ship all WAL to standbys first), no lock
    /// write. Escalates to immediate if the lease deadline comes close.
    Offline,
    /// A switchover: CHECKPOINT, fast stop, then release the lock with the shutdown checkpoint
    /// as optime so the candidate can take over at once and this member can follow it without
    /// a rewind.
    Graceful,
}

/// What the loop should do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Race to create the `initialize` key; losing aborts the rest of the plan.
    RaceInitialize,
    /// Remove an `initialize` claim that no member is acting on, so the race can run again.
    CancelInitialization,
    /// initdb, start, create users, write `initialize`=sysid and `config`, take the lock.
    Bootstrap,
    /// Wipe the data directory and clone it with pg_basebackup from this member.
    CloneFrom(String),
    /// Write `initialize` = our system identifier (adopting existing data).
    WriteInitialize(String),
    /// Seed the DCS `config` key from bootstrap.dcs.
    WriteConfig,
    /// Take the free lock; losing aborts the rest of the plan.
    AcquireLock,
    /// Renew our lock; a definite loss aborts the plan and re-runs the decision with
    /// `renew_failed`, an error re-runs it as "DCS unreachable". `failsafe`: the topology to
    /// write with the renew (empty: remove it), only when it changed.
    RenewLock { failsafe: Option<FailsafeTopology> },
    /// The DCS is unreachable and failsafe mode is on: `POST /failsafe` to every other member
    /// of the failsafe topology (name, api_url); the decision runs again with the outcome in
    /// `failsafe_round`.
    CheckFailsafeMembers(Vec<(String, String)>),
    /// Give the lock up.
    ReleaseLock,
    /// Start Postgres as a primary (we hold the lock).
    StartAsPrimary,
    /// Start Postgres as a replica of `leader` (or of nobody yet). When the data was last a
    /// primary, divergence from the leader's timeline is checked first and repaired with
    /// pg_rewind (or a fresh clone).
    StartAsReplica { leader: Option<String> },
    /// pg_promote().
    Promote,
    /// Stop being a primary.
    Demote(DemoteMode),
    /// Stop a replica whose WAL diverged from the leader; the next start repairs it.
    StopForRepair,
    /// Point primary_conninfo at `leader` (reload when it changed).
    Follow { leader: Option<String> },
    /// Keep one physical replication slot per other member (use_slots).
    EnsureSlots,
    /// Append the new timeline's row(s) to the DCS history.
    AppendHistory,
    /// Remove the failover/switchover request (done, or impossible).
    ClearFailover,
    /// Stop: the data directory belongs to another cluster.
    Fatal(String),
}

/// Where Postgres stands on this member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PgRole {
    #[default]
    Unknown,
    Primary,
    Replica,
}

/// The data directory.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum DataDir {
    /// Missing or empty: needs bootstrap or clone.
    #[default]
    Empty,
    /// A usable Postgres data directory.
    Valid { sysid: String },
}

/// The local facts the loop gathered this cycle.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocalState {
    pub data_dir: DataDir,
    /// The postmaster is up and accepts connections.
    pub pg_running: bool,
    pub pg_role: PgRole,
    pub timeline: Option<u32>,
    /// Primary: flush LSN. Replica: max(received, replayed).
    pub wal_position: u64,
    /// The postmaster died without being asked to.
    pub pg_crashed: bool,
    /// Consecutive failed attempts to start Postgres.
    pub start_failures: u32,
    /// This member believes it holds the lock (last renew or acquire succeeded).
    pub holds_lock: bool,
    /// Seconds (monotonic) until the lock we hold could expire; `None` when not holding.
    pub lock_expires_in: Option<f64>,
    /// The renew attempted in this cycle failed.
    pub renew_failed: bool,
    /// Reachable peers' status, gathered when the lock is free (leader race input).
    pub peers: Vec<PeerStatus>,
    /// This running replica holds WAL past the point where the leader's timeline forked off
    /// ours: it can never stream from the leader and must be repaired (pg_rewind or a clone).
    pub diverged_from_leader: bool,
    /// Wall-clock time of this cycle (unix milliseconds): scheduled switchovers are due by it.
    pub now_ms: i64,
    /// The cluster was in maintenance mode (`pause`) the last time the DCS could be read: with
    /// the DCS unreachable, a paused primary keeps running.
    pub last_known_paused: bool,
    /// Seconds for which `initialize` has said "bootstrap in progress" (empty) with no leader and
    /// no member bootstrapping: the member that claimed it is gone, or its claim was written
    /// although its request failed (an ambiguous timeout).
    pub bootstrap_unclaimed_for: Option<f64>,
    /// Why this member may not lead now: its fence process is not running, or the watchdog is
    /// required and not working. It neither takes nor keeps the lock.
    pub cannot_lead: Option<String>,
    /// The failsafe topology as last read from (or written to) the DCS: who must confirm a
    /// primary while the DCS is unreachable.
    pub last_known_failsafe: Option<FailsafeTopology>,
    /// Outcome of this cycle's failsafe round: every other member of the topology accepted
    /// this member as the leader (`Some(true)`) or not (`Some(false)`).
    pub failsafe_round: Option<bool>,
    /// A member that told this one over `POST /failsafe`, less than ttl ago, that it still runs
    /// as the leader: this member does not race for the lock while that holds.
    pub failsafe_leader: Option<String>,
}

/// A peer's answer to `GET /patroni` during the leader race.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    pub name: String,
    pub role: Role,
    pub running: bool,
    pub wal_position: u64,
    pub timeline: Option<u32>,
    pub tags: Tags,
}

/// The settings decisions depend on (local config merged with the DCS config).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub name: String,
    pub tags: Tags,
    pub maximum_lag_on_failover: u64,
    pub check_timeline: bool,
    pub use_slots: bool,
    pub primary_start_timeout: u64,
    /// Seconds before lock expiry at which a primary that could not renew must be down.
    pub lease_safety_margin: f64,
    /// How many failed starts of a primary make its holder give the lock up.
    pub max_primary_start_failures: u32,
    /// Seconds between cycles: a scheduled switchover this late is stale.
    pub loop_wait: u32,
    /// The lock's ttl; also how long a bootstrap claimed by nobody is waited for.
    pub ttl: u32,
    /// `synchronous_mode`: only the members named in the `sync` object may take the lock
    /// automatically, and a switchover goes to a synchronous standby.
    pub synchronous_mode: bool,
    /// `failsafe_mode`: with the DCS unreachable, a primary confirmed by every member of the
    /// failsafe topology keeps running.
    pub failsafe_mode: bool,
    /// This member's REST `api_url` (its entry in the failsafe topology).
    pub api_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            name: String::new(),
            tags: Tags::default(),
            maximum_lag_on_failover: 1_048_576,
            check_timeline: false,
            use_slots: true,
            primary_start_timeout: 300,
            lease_safety_margin: 2.0,
            max_primary_start_failures: 3,
            loop_wait: 10,
            ttl: 30,
            synchronous_mode: false,
            failsafe_mode: false,
            api_url: String::new(),
        }
    }
}

/// The outcome of one decision: actions and the one-line reason logged with them.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub reason: String,
    /// Run the next cycle within this many seconds (a scheduled switchover falls due).
    pub wake_in: Option<f64>,
}

fn plan(actions: Vec<Action>, reason: impl Into<String>) -> Decision {
    Decision {
        actions,
        reason: reason.into(),
        wake_in: None,
    }
}

/// Decide what to do with a fresh view of the DCS. `cluster` is `None` when the DCS could not be
/// read within the retry budget.
pub fn decide(cluster: Option<&Cluster>, local: &LocalState, s: &Settings) -> Decision {
    let paused = cluster.map_or(local.last_known_paused, Cluster::is_paused);
    // A lease we can no longer trust: be down before it can expire, whatever else is going on.
    // Maintenance mode is the exception: nobody promotes automatically while paused.
    if !paused && local.holds_lock && local.pg_role == PgRole::Primary && local.pg_running {
        if let Some(left) = local.lock_expires_in {
            if left <= s.lease_safety_margin {
                return plan(
                    vec![Action::Demote(DemoteMode::Offline)],
                    format!("lock may expire in {left:.1}s and was not renewed: demoting"),
                );
            }
        }
    }

    let Some(cluster) = cluster else {
        return decide_without_dcs(local, s);
    };

    if cluster.is_paused() {
        return decide_paused(cluster, local, s);
    }

    let me = s.name.as_str();

    // Bootstrap or clone an empty data directory.
    let DataDir::Valid { sysid } = &local.data_dir else {
        return decide_empty_data_dir(cluster, local, s);
    };

    if let Some(cluster_sysid) = cluster.initialized_sysid() {
        if cluster_sysid != sysid {
            return plan(
                vec![Action::Fatal(format!(
                    "data directory has system identifier {sysid} but the cluster was initialized with {cluster_sysid}"
                ))],
                "system identifier mismatch",
            );
        }
    }

    let mut prelude = Vec::new();
    if cluster.initialize.is_none() && cluster.leader.is_none() {
        // Existing data and a DCS that never saw this cluster: adopt it, unless we are a replica.
        if local.pg_role != PgRole::Replica {
            prelude.push(Action::WriteInitialize(sysid.clone()));
            if cluster.config.is_none() {
                prelude.push(Action::WriteConfig);
            }
        }
    }

    let leader = cluster.leader_name();
    let i_hold = leader == Some(me);

    if local.renew_failed {
        return if local.pg_running && local.pg_role == PgRole::Primary {
            plan(
                vec![Action::Demote(DemoteMode::ImmediateNoLock)],
                "failed to renew the lock: demoting",
            )
        } else {
            plan(vec![], "failed to renew the lock")
        };
    }

    // Postgres is down (never started, stopped, crashed).
    if !local.pg_running {
        let mut actions = prelude;
        if i_hold {
            if let Some(why) = &local.cannot_lead {
                actions.push(Action::ReleaseLock);
                return plan(actions, format!("{why}: releasing the lock"));
            }
            if local.start_failures >= s.max_primary_start_failures || s.primary_start_timeout == 0
            {
                actions.push(Action::ReleaseLock);
                return plan(
                    actions,
                    "cannot start Postgres as the leader: releasing the lock",
                );
            }
            actions.push(renew(cluster, s));
            actions.push(Action::StartAsPrimary);
            let why = if local.pg_crashed {
                "Postgres crashed on the leader: restarting it"
            } else {
                "starting Postgres as the leader"
            };
            return plan(actions, why);
        }
        match leader {
            Some(l) => actions.push(Action::StartAsReplica {
                leader: Some(l.to_string()),
            }),
            None => actions.push(Action::StartAsReplica { leader: None }),
        }
        let why = match leader {
            Some(l) => format!("starting Postgres as a replica of {l}"),
            None => "starting Postgres as a replica: no leader yet".to_string(),
        };
        return plan(actions, why);
    }

    let mut actions = prelude;
    match leader {
        Some(_) if i_hold => {
            if let Some(why) = &local.cannot_lead {
                // A primary hands over as in a switchover (the lock is released once Postgres
                // is down); a replica that was about to promote gives the lock back.
                if local.pg_role == PgRole::Primary {
                    actions.push(renew(cluster, s));
                    actions.push(Action::Demote(DemoteMode::Graceful));
                    return plan(actions, format!("{why}: handing the leadership over"));
                }
                actions.push(Action::ReleaseLock);
                return plan(actions, format!("{why}: releasing the lock"));
            }
            actions.push(renew(cluster, s));
            match local.pg_role {
                PgRole::Primary => {
                    if let Some(request) = failover_request_as_leader(cluster, local, s) {
                        return match request {
                            LeaderFailoverStep::HandOver(why) => {
                                actions.push(Action::Demote(DemoteMode::Graceful));
                                plan(actions, why)
                            }
                            LeaderFailoverStep::Clear(why) => {
                                actions.push(Action::ClearFailover);
                                plan(actions, why)
                            }
                            LeaderFailoverStep::Wait(why, wake_in) => Decision {
                                wake_in: Some(wake_in),
                                ..plan(actions, why)
                            },
                        };
                    }
                    if s.use_slots {
                        actions.push(Action::EnsureSlots);
                    }
                    if local.timeline.is_some_and(|t| t > cluster.timeline()) {
                        actions.push(Action::AppendHistory);
                    }
                    plan(
                        actions,
                        format!("no action: I am ({me}) the leader with the lock"),
                    )
                }
                _ => {
                    actions.push(Action::Promote);
                    plan(
                        actions,
                        "I hold the lock and Postgres is a replica: promoting",
                    )
                }
            }
        }
        Some(other) => {
            if local.pg_role == PgRole::Primary {
                actions.push(Action::Demote(DemoteMode::ImmediateNoLock));
                return plan(
                    actions,
                    format!("{other} holds the lock but I am a primary: demoting"),
                );
            }
            if local.diverged_from_leader {
                actions.push(Action::StopForRepair);
                return plan(
                    actions,
                    format!("my WAL diverged from {other}'s timeline: stopping to repair it"),
                );
            }
            actions.push(Action::Follow {
                leader: Some(other.to_string()),
            });
            plan(
                actions,
                format!("no action: I am ({me}) a replica following {other}"),
            )
        }
        None => {
            if let Some(leader) = failsafe_leader(local, s) {
                if local.pg_role != PgRole::Primary {
                    actions.push(Action::Follow {
                        leader: Some(leader.to_string()),
                    });
                    return plan(
                        actions,
                        format!(
                            "the lock is free but {leader} confirmed over /failsafe less than ttl ago that it runs as the leader: not racing"
                        ),
                    );
                }
            }
            let (healthiest, why) = is_healthiest(cluster, local, s);
            if healthiest {
                actions.push(Action::AcquireLock);
                if local.pg_role != PgRole::Primary {
                    actions.push(Action::Promote);
                }
                if s.use_slots {
                    actions.push(Action::EnsureSlots);
                }
                plan(
                    actions,
                    format!("the lock is free and I am the healthiest member: taking it ({why})"),
                )
            } else if local.pg_role == PgRole::Primary {
                actions.push(Action::Demote(DemoteMode::ImmediateNoLock));
                plan(
                    actions,
                    format!(
                        "the lock is free but I am not the healthiest member ({why}): demoting"
                    ),
                )
            } else {
                actions.push(Action::Follow { leader: None });
                plan(
                    actions,
                    format!("the lock is free but I am not the healthiest member: {why}"),
                )
            }
        }
    }
}

/// What the lock holder does about a failover/switchover request in the DCS.
enum LeaderFailoverStep {
    /// Step down so the candidate (or the healthiest replica) takes over.
    HandOver(String),
    /// The request is done or cannot be honoured: remove it.
    Clear(String),
    /// A scheduled switchover whose time has not come; it is due in this many seconds.
    Wait(String, f64),
}

/// `scheduled_at` as Patroni writes it (ISO 8601 with an offset), in unix milliseconds.
pub fn parse_scheduled_at(text: &str) -> Option<i64> {
    let t = text.trim();
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .or_else(|| {
            ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"]
                .iter()
                .find_map(|f| chrono::DateTime::parse_from_str(t, f).ok())
        })
        .map(|d| d.timestamp_millis())
}

/// A switchover request addressed to the leader. Only running replicas that
/// may lead are acceptable candidates, so stepping down never leaves the cluster leaderless on
/// purpose.
fn failover_request_as_leader(
    cluster: &Cluster,
    local: &LocalState,
    s: &Settings,
) -> Option<LeaderFailoverStep> {
    let request = cluster.failover.as_ref()?;
    if request.is_empty() {
        return None;
    }
    let me = s.name.as_str();
    // A scheduled switchover waits for its time; one missed by more than 1.5·loop_wait is stale.
    if let Some(at) = request.scheduled_at.as_deref() {
        let Some(at_ms) = parse_scheduled_at(at) else {
            return Some(LeaderFailoverStep::Clear(format!(
                "the switchover request has an unreadable scheduled_at {at:?}: removing it"
            )));
        };
        let delta_ms = at_ms - local.now_ms;
        if delta_ms > 0 {
            return Some(LeaderFailoverStep::Wait(
                format!("switchover scheduled at {at}: not acting on it before that time"),
                delta_ms as f64 / 1000.0,
            ));
        }
        if -delta_ms > i64::from(s.loop_wait) * 1500 {
            return Some(LeaderFailoverStep::Clear(format!(
                "found a stale scheduled switchover (at {at}): removing it"
            )));
        }
    }
    if let Some(source) = request.leader.as_deref() {
        if source != me {
            return Some(LeaderFailoverStep::Clear(format!(
                "the switchover request names {source} as the leader, not me ({me}): removing it"
            )));
        }
    }
    let candidate = request.member.as_deref();
    if candidate == Some(me) {
        return Some(LeaderFailoverStep::Clear(format!(
            "I am ({me}) the requested candidate and hold the lock: switchover done"
        )));
    }
    let eligible = |name: &str| may_take_over(cluster, s, name);
    match candidate {
        Some(c) if eligible(c) => Some(LeaderFailoverStep::HandOver(format!(
            "switchover to {c} requested: handing over the leadership"
        ))),
        Some(c) if s.synchronous_mode && !is_sync_standby(cluster, c) => {
            Some(LeaderFailoverStep::Clear(format!(
                "switchover candidate {c} is not a synchronous standby: removing the request"
            )))
        }
        Some(c) => Some(LeaderFailoverStep::Clear(format!(
            "switchover candidate {c} is not a running replica that may lead: removing the request"
        ))),
        None if cluster.members.iter().any(|m| eligible(&m.name)) => {
            Some(LeaderFailoverStep::HandOver(
                "switchover requested: handing over the leadership to the healthiest replica"
                    .into(),
            ))
        }
        None => Some(LeaderFailoverStep::Clear(
            "switchover requested but no running replica may lead: removing the request".into(),
        )),
    }
}

/// May `name` take over from me in a switchover: a running replica that may lead (in
/// synchronous mode, a synchronous standby: an asynchronous one may miss acknowledged writes).
fn may_take_over(cluster: &Cluster, s: &Settings, name: &str) -> bool {
    cluster.members.iter().any(|m| {
        m.name == name
            && m.name != s.name
            && m.data.is_running()
            && m.data.role == Role::Replica
            && m.data.tags.can_be_leader()
            && (!s.synchronous_mode || is_sync_standby(cluster, name))
    })
}

/// The members a switchover hands over to: the requested candidate, or else every member that
/// may take over. Once one of them has received the old primary's shutdown checkpoint, the
/// walsenders still trying to reach other replicas need not hold the handover up.
pub fn handover_candidates(cluster: &Cluster, s: &Settings) -> Vec<String> {
    let requested = cluster
        .failover
        .as_ref()
        .filter(|f| !f.is_empty())
        .and_then(|f| f.member.clone());
    match requested {
        Some(name) if may_take_over(cluster, s, &name) => vec![name],
        Some(_) => Vec::new(),
        None => cluster
            .members
            .iter()
            .filter(|m| may_take_over(cluster, s, &m.name))
            .map(|m| m.name.clone())
            .collect(),
    }
}

/// The renew of our lock, carrying the failsafe topology when it must change: with failsafe
/// mode on, every member with an API (and this one) — written only when the member set
/// changed; with it off, a leftover topology is removed.
fn renew(cluster: &Cluster, s: &Settings) -> Action {
    let failsafe = if s.failsafe_mode {
        let mut topology: FailsafeTopology = cluster
            .members
            .iter()
            .filter_map(|m| m.data.api_url.clone().map(|url| (m.name.clone(), url)))
            .collect();
        if !s.api_url.is_empty() {
            topology.insert(s.name.clone(), s.api_url.clone());
        }
        (cluster.failsafe.as_ref() != Some(&topology)).then_some(topology)
    } else {
        cluster.failsafe.as_ref().map(|_| FailsafeTopology::new())
    };
    Action::RenewLock { failsafe }
}

/// The member that confirmed over `POST /failsafe`, less than ttl ago, that it runs as the
/// leader (failsafe mode only).
fn failsafe_leader<'a>(local: &'a LocalState, s: &Settings) -> Option<&'a str> {
    local
        .failsafe_leader
        .as_deref()
        .filter(|l| s.failsafe_mode && *l != s.name)
}

/// The DCS could not be read, or the renew failed without a definite answer.
fn decide_without_dcs(local: &LocalState, s: &Settings) -> Decision {
    if local.last_known_paused {
        return plan(
            vec![],
            "DCS is not accessible and the cluster is paused: no automatic action",
        );
    }
    if !(local.pg_running && local.pg_role == PgRole::Primary) {
        return plan(vec![], "DCS is not accessible: waiting");
    }
    let demote = |why: &str| plan(vec![Action::Demote(DemoteMode::Offline)], why);
    if !s.failsafe_mode {
        return demote("DCS is not accessible and I was the primary: demoting");
    }
    if let Some(why) = &local.cannot_lead {
        // Without its fence (or a required watchdog) this member must not lead, DCS or not.
        return demote(&format!("DCS is not accessible and {why}: demoting"));
    }
    let Some(topology) = local
        .last_known_failsafe
        .as_ref()
        .filter(|t| t.contains_key(&s.name))
    else {
        return demote("DCS is not accessible and I am not in the failsafe topology: demoting");
    };
    match local.failsafe_round {
        None => {
            let members = topology
                .iter()
                .filter(|(name, _)| **name != s.name)
                .map(|(name, url)| (name.clone(), url.clone()))
                .collect();
            plan(
                vec![Action::CheckFailsafeMembers(members)],
                "DCS is not accessible: asking every member of the failsafe topology to accept me as the leader",
            )
        }
        Some(true) => plan(
            vec![],
            "continue to run as a leader because failsafe mode is enabled and all members are accessible",
        ),
        Some(false) => demote(
            "DCS is not accessible and not every member of the failsafe topology accepted me as the leader: demoting",
        ),
    }
}

/// Maintenance mode: no automatic starts, stops, promotions or demotions.
fn decide_paused(cluster: &Cluster, local: &LocalState, s: &Settings) -> Decision {
    let me = s.name.as_str();
    let i_hold = cluster.leader_name() == Some(me);
    if !matches!(local.data_dir, DataDir::Valid { .. }) || !local.pg_running {
        // As Patroni: a holder whose Postgres is down gives the lock up (nobody promotes while
        // paused); after resume the members elect a leader as usual.
        if i_hold {
            return plan(
                vec![Action::ReleaseLock],
                "paused: removed the leader lock because Postgres is not running",
            );
        }
        return plan(vec![], "paused: no automatic action");
    }
    if local.pg_role == PgRole::Primary {
        if i_hold {
            if let Some(step) = paused_failover_as_leader(cluster, local, s) {
                return step;
            }
            // Slots are kept in maintenance mode too: replicas stream through them.
            let mut actions = vec![renew(cluster, s)];
            if s.use_slots {
                actions.push(Action::EnsureSlots);
            }
            return plan(
                actions,
                format!("paused: I am ({me}) the leader with the lock"),
            );
        }
        if cluster.leader.is_none() {
            return plan(
                vec![Action::AcquireLock],
                "paused: a running primary takes the free lock",
            );
        }
        return plan(vec![], "paused: another member holds the lock");
    }
    if i_hold {
        return plan(
            vec![Action::ReleaseLock],
            "paused: Postgres is no longer a primary: releasing the lock",
        );
    }
    match cluster.leader_name() {
        Some(l) => plan(
            vec![Action::Follow {
                leader: Some(l.to_string()),
            }],
            format!("paused: following {l}"),
        ),
        // A manual failover is the one promotion allowed in maintenance mode.
        None if requested_candidate(cluster) == Some(me) && s.tags.can_be_leader() => {
            let mut actions = vec![Action::AcquireLock, Action::Promote];
            if s.use_slots {
                actions.push(Action::EnsureSlots);
            }
            plan(
                actions,
                "paused: I am the requested failover candidate: taking the lock",
            )
        }
        None => plan(vec![], "paused: no leader"),
    }
}

/// A manual switchover in maintenance mode: only to a named candidate, never scheduled. The old
/// primary starts again as a replica at once, since nothing automatic would start it.
fn paused_failover_as_leader(
    cluster: &Cluster,
    local: &LocalState,
    s: &Settings,
) -> Option<Decision> {
    let request = cluster.failover.as_ref().filter(|f| !f.is_empty())?;
    if request.scheduled_at.is_some() {
        // Scheduled actions wait for the end of the maintenance.
        return None;
    }
    let renew = renew(cluster, s);
    match failover_request_as_leader(cluster, local, s)? {
        LeaderFailoverStep::HandOver(why) => match request.member.as_deref() {
            Some(candidate) => Some(plan(
                vec![
                    renew,
                    Action::Demote(DemoteMode::Graceful),
                    Action::StartAsReplica {
                        leader: Some(candidate.to_string()),
                    },
                ],
                format!("paused: {why}"),
            )),
            None => Some(plan(
                vec![renew, Action::ClearFailover],
                "paused: a switchover needs a named candidate: removing the request",
            )),
        },
        LeaderFailoverStep::Clear(why) => Some(plan(
            vec![renew, Action::ClearFailover],
            format!("paused: {why}"),
        )),
        LeaderFailoverStep::Wait(..) => None,
    }
}

fn decide_empty_data_dir(cluster: &Cluster, local: &LocalState, s: &Settings) -> Decision {
    if cluster.initialize.is_none() && cluster.leader.is_none() {
        if let Some(why) = &local.cannot_lead {
            return plan(vec![], format!("not bootstrapping the cluster: {why}"));
        }
        if s.tags.can_be_leader() {
            return plan(
                vec![Action::RaceInitialize, Action::Bootstrap],
                "the cluster is not initialized: trying to bootstrap it",
            );
        }
        return plan(
            vec![],
            "waiting for a member that may lead to bootstrap the cluster",
        );
    }
    if let Some(leader) = cluster.leader_member() {
        if leader.data.is_running() && leader.data.conn_url.is_some() {
            return plan(
                vec![Action::CloneFrom(leader.name.clone())],
                format!("cloning a replica from the leader {}", leader.name),
            );
        }
    }
    // A running member tagged clonefrom may serve the copy.
    let mut sources: Vec<_> = cluster
        .members
        .iter()
        .filter(|m| {
            m.name != s.name
                && m.data.tags.clonefrom()
                && m.data.is_running()
                && m.data.conn_url.is_some()
        })
        .collect();
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(src) = sources.first() {
        if cluster.leader.is_some() {
            return plan(
                vec![Action::CloneFrom(src.name.clone())],
                format!("cloning a replica from {}", src.name),
            );
        }
    }
    if cluster.initialize.as_deref() == Some("")
        && cluster.leader.is_none()
        && local
            .bootstrap_unclaimed_for
            .is_some_and(|secs| secs >= f64::from(s.ttl.max(1)))
    {
        return plan(
            vec![Action::CancelInitialization],
            "initialize says a bootstrap is in progress but no member has been bootstrapping for a ttl: clearing it",
        );
    }
    plan(vec![], "waiting for the leader to bootstrap the cluster")
}

/// The candidate named by an unscheduled failover/switchover request.
fn requested_candidate(cluster: &Cluster) -> Option<&str> {
    cluster
        .failover
        .as_ref()
        .filter(|f| f.scheduled_at.is_none())
        .and_then(|f| f.member.as_deref())
}

/// Is `name` listed as a synchronous standby in the `sync` object?
fn is_sync_standby(cluster: &Cluster, name: &str) -> bool {
    cluster.sync.sync_standby.iter().any(|n| n == name)
}

/// Does the `sync` object name this member, as its leader or one of its standbys? An empty
/// `sync` (no leader) names nobody and restricts nobody.
fn sync_names(cluster: &Cluster, name: &str) -> bool {
    cluster.sync.leader.as_deref() == Some(name) || is_sync_standby(cluster, name)
}

/// Am I the member that should take a free lock?
fn is_healthiest(cluster: &Cluster, local: &LocalState, s: &Settings) -> (bool, String) {
    if let Some(why) = &local.cannot_lead {
        return (false, why.clone());
    }
    if !s.tags.can_be_leader() {
        return (false, "tagged nofailover / failover_priority 0".into());
    }
    // Failsafe mode: only the members the last leader listed may take its place; one it never
    // asked for confirmation could promote while it still runs without the DCS.
    if s.failsafe_mode
        && cluster
            .failsafe
            .as_ref()
            .is_some_and(|t| !t.is_empty() && !t.contains_key(&s.name))
    {
        return (
            false,
            "failsafe_mode: I am not in the failsafe topology".into(),
        );
    }
    if let Some(peer) = local
        .peers
        .iter()
        .find(|p| p.name != s.name && p.running && p.role == Role::Primary)
    {
        return (
            false,
            format!("{} is still running as a primary", peer.name),
        );
    }
    // The named candidate of a manual failover takes the lock whatever its lag (Patroni).
    if requested_candidate(cluster) == Some(s.name.as_str()) {
        return (true, "I am the requested failover candidate".into());
    }
    // Synchronous mode: only the last leader and its synchronous standbys are known to hold every
    // acknowledged write; an asynchronous replica never promotes on its own.
    let sync_active = s.synchronous_mode && cluster.sync.leader.is_some();
    if sync_active && !sync_names(cluster, &s.name) {
        return (
            false,
            "synchronous_mode: I am not a synchronous standby".into(),
        );
    }
    if let Some(optime) = cluster.status.optime {
        let lag = optime.saturating_sub(local.wal_position);
        if lag > s.maximum_lag_on_failover {
            return (false, format!("my WAL is {lag} bytes behind the last leader optime, over maximum_lag_on_failover"));
        }
    }
    if s.check_timeline && local.timeline.unwrap_or(0) < cluster.timeline() {
        return (false, "my timeline is behind the cluster timeline".into());
    }
    // A named failover candidate other than me that is alive wins.
    if let Some(f) = &cluster.failover {
        if let Some(candidate) = f.member.as_deref() {
            if candidate != s.name && local.peers.iter().any(|p| p.name == candidate && p.running) {
                return (
                    false,
                    format!("{candidate} is the requested failover candidate"),
                );
            }
        }
    }
    let my_priority = s.tags.failover_priority();
    for peer in &local.peers {
        if peer.name == s.name {
            continue;
        }
        if peer.running && peer.role == Role::Primary {
            return (
                false,
                format!("{} is still running as a primary", peer.name),
            );
        }
        if !peer.tags.can_be_leader() {
            continue;
        }
        // Synchronous mode: only the other synchronous standbys compete; asynchronous members
        // and the former leader do not, however far their WAL goes.
        if sync_active && !is_sync_standby(cluster, &peer.name) {
            continue;
        }
        if peer.wal_position > local.wal_position {
            return (
                false,
                format!(
                    "{} is ahead: {} > {}",
                    peer.name, peer.wal_position, local.wal_position
                ),
            );
        }
        if peer.wal_position == local.wal_position && peer.tags.failover_priority() > my_priority {
            return (
                false,
                format!("{} has equal WAL and a higher failover_priority", peer.name),
            );
        }
    }
    (true, format!("WAL position {}", local.wal_position))
}

#[cfg(test)]
#[path = "decide_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    const RENEW: Action = Action::RenewLock { failsafe: None };
    use dcs::{ClusterConfig, HistoryEntry, Leader, Member, MemberData, Status};
    use serde_json::json;

    fn settings(name: &str) -> Settings {
        Settings {
            name: name.into(),
            ..Settings::default()
        }
    }

    fn member(name: &str, role: Role) -> Member {
        Member::new(
            name,
            MemberData {
                conn_url: Some(format!("postgres://127.0.0.1:5432/postgres?{name}")),
                api_url: Some(format!("http://127.0.0.1:8008/{name}")),
                state: "running".into(),
                role,
                ..Default::default()
            },
        )
    }

    fn initialized(leader: Option<&str>) -> Cluster {
        Cluster {
            initialize: Some("7000000000000000001".into()),
            config: Some(ClusterConfig {
                raw: json!({"ttl": 10}),
                version: None,
            }),
            leader: leader.map(|l| Leader {
                name: l.into(),
                version: None,
            }),
            members: vec![
                member("a", Role::Primary),
                member("b", Role::Replica),
                member("c", Role::Replica),
            ],
            ..Default::default()
        }
    }

    fn data() -> DataDir {
        DataDir::Valid {
            sysid: "7000000000000000001".into(),
        }
    }

    fn replica(wal: u64) -> LocalState {
        LocalState {
            data_dir: data(),
            pg_running: true,
            pg_role: PgRole::Replica,
            timeline: Some(1),
            wal_position: wal,
            ..Default::default()
        }
    }

    fn primary(wal: u64) -> LocalState {
        LocalState {
            data_dir: DataDir::Valid {
                sysid: "7000000000000000001".into(),
            },
            pg_running: true,
            pg_role: PgRole::Primary,
            timeline: Some(1),
            wal_position: wal,
            holds_lock: true,
            lock_expires_in: Some(10.0),
            ..Default::default()
        }
    }

    fn peer(name: &str, wal: u64, tags: serde_json::Value) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            role: Role::Replica,
            running: true,
            wal_position: wal,
            timeline: Some(1),
            tags: serde_json::from_value(tags).unwrap(),
        }
    }

    fn tags(v: serde_json::Value) -> Tags {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn bootstrap_race() {
        let empty = Cluster::default();
        let fresh = LocalState::default();
        // (cluster, settings tags, expected first action)
        let initializing = Cluster {
            initialize: Some(String::new()),
            ..Default::default()
        };
        let cases: Vec<(&str, &Cluster, Tags, Vec<Action>)> = vec![
            (
                "uninitialized: race and bootstrap",
                &empty,
                Tags::default(),
                vec![Action::RaceInitialize, Action::Bootstrap],
            ),
            (
                "nofailover never bootstraps",
                &empty,
                tags(json!({"nofailover": true})),
                vec![],
            ),
            (
                "priority 0 never bootstraps",
                &empty,
                tags(json!({"failover_priority": 0})),
                vec![],
            ),
            (
                "someone else is bootstrapping: wait",
                &initializing,
                Tags::default(),
                vec![],
            ),
        ];
        for (what, cluster, t, expected) in cases {
            let s = Settings {
                tags: t,
                ..settings("b")
            };
            assert_eq!(
                decide(Some(cluster), &fresh, &s).actions,
                expected,
                "{what}"
            );
        }
    }

    /// A claim on the bootstrap (`initialize` empty) that no member acts on — its author is gone,
    /// or its write landed although the request timed out — is cleared after a ttl, so the
    /// cluster does not wait forever.
    #[test]
    fn unclaimed_bootstrap_is_cleared_after_a_ttl() {
        let initializing = Cluster {
            initialize: Some(String::new()),
            ..Default::default()
        };
        let s = Settings {
            ttl: 10,
            ..settings("b")
        };
        let waited = |secs: Option<f64>| LocalState {
            bootstrap_unclaimed_for: secs,
            ..LocalState::default()
        };
        for (secs, expected) in [
            (None, vec![]),
            (Some(9.9), vec![]),
            (Some(10.0), vec![Action::CancelInitialization]),
        ] {
            assert_eq!(
                decide(Some(&initializing), &waited(secs), &s).actions,
                expected,
                "{secs:?}"
            );
        }
        // With a leader, or once initialized, nothing is cleared.
        let mut led = initializing.clone();
        led.leader = Some(Leader {
            name: "a".into(),
            version: None,
        });
        assert!(!decide(Some(&led), &waited(Some(60.0)), &s)
            .actions
            .contains(&Action::CancelInitialization));
        let done = Cluster {
            initialize: Some("7000000000000000001".into()),
            ..Default::default()
        };
        assert!(!decide(Some(&done), &waited(Some(60.0)), &s)
            .actions
            .contains(&Action::CancelInitialization));
    }

    #[test]
    fn empty_member_clones_from_the_running_leader() {
        let c = initialized(Some("a"));
        let d = decide(Some(&c), &LocalState::default(), &settings("c"));
        assert_eq!(d.actions, vec![Action::CloneFrom("a".into())]);
        // The leader is not running yet: wait.
        let mut c2 = c.clone();
        c2.members[0].data.state = "starting".into();
        assert_eq!(
            decide(Some(&c2), &LocalState::default(), &settings("c")).actions,
            vec![]
        );
    }

    #[test]
    fn healthy_leader_renews() {
        let c = initialized(Some("a"));
        let d = decide(Some(&c), &primary(100), &settings("a"));
        assert_eq!(d.actions, vec![RENEW, Action::EnsureSlots]);
        let s = Settings {
            use_slots: false,
            ..settings("a")
        };
        assert_eq!(decide(Some(&c), &primary(100), &s).actions, vec![RENEW]);
    }

    #[test]
    fn replica_follows_the_leader() {
        let c = initialized(Some("a"));
        let d = decide(Some(&c), &replica(100), &settings("b"));
        assert_eq!(
            d.actions,
            vec![Action::Follow {
                leader: Some("a".into())
            }]
        );
    }

    #[test]
    fn diverged_replica_stops_for_repair() {
        let c = initialized(Some("a"));
        let mut l = replica(100);
        l.diverged_from_leader = true;
        let d = decide(Some(&c), &l, &settings("b"));
        assert_eq!(d.actions, vec![Action::StopForRepair]);
    }

    #[test]
    fn stopped_replica_starts_following_the_leader() {
        let c = initialized(Some("a"));
        let mut l = replica(0);
        l.pg_running = false;
        l.pg_role = PgRole::Unknown;
        let d = decide(Some(&c), &l, &settings("b"));
        assert_eq!(
            d.actions,
            vec![Action::StartAsReplica {
                leader: Some("a".into())
            }]
        );
    }

    /// The leader key vanished: only the healthiest eligible member takes it; the others follow.
    /// (what, my wal, my tags, peers, cluster optime, expected actions)
    type RaceCase = (
        &'static str,
        u64,
        serde_json::Value,
        Vec<PeerStatus>,
        Option<u64>,
        Vec<Action>,
    );

    #[test]
    fn leader_vanished_only_the_healthiest_promotes() {
        let c = initialized(None);
        let promote = vec![Action::AcquireLock, Action::Promote, Action::EnsureSlots];
        let wait = vec![Action::Follow { leader: None }];
        // (what, my wal, my tags, peers, cluster optime, expected)
        let cases: Vec<RaceCase> = vec![
            (
                "alone and eligible",
                100,
                json!({}),
                vec![],
                None,
                promote.clone(),
            ),
            (
                "most advanced wins",
                200,
                json!({}),
                vec![peer("c", 100, json!({}))],
                None,
                promote.clone(),
            ),
            (
                "behind a peer waits",
                100,
                json!({}),
                vec![peer("c", 200, json!({}))],
                None,
                wait.clone(),
            ),
            (
                "a nofailover peer ahead does not count",
                100,
                json!({}),
                vec![peer("c", 200, json!({"nofailover": true}))],
                None,
                promote.clone(),
            ),
            (
                "nofailover never promotes",
                300,
                json!({"nofailover": true}),
                vec![peer("c", 100, json!({}))],
                None,
                wait.clone(),
            ),
            (
                "failover_priority 0 never promotes",
                300,
                json!({"failover_priority": 0}),
                vec![],
                None,
                wait.clone(),
            ),
            (
                "equal WAL, higher peer priority waits",
                100,
                json!({"failover_priority": 1}),
                vec![peer("c", 100, json!({"failover_priority": 2}))],
                None,
                wait.clone(),
            ),
            (
                "equal WAL, higher own priority wins",
                100,
                json!({"failover_priority": 3}),
                vec![peer("c", 100, json!({"failover_priority": 2}))],
                None,
                promote.clone(),
            ),
            (
                "equal WAL, equal priority: both race, the DCS decides",
                100,
                json!({}),
                vec![peer("c", 100, json!({}))],
                None,
                promote.clone(),
            ),
            (
                "within maximum_lag_on_failover",
                100,
                json!({}),
                vec![],
                Some(100 + 1_048_576),
                promote.clone(),
            ),
            (
                "beyond maximum_lag_on_failover",
                100,
                json!({}),
                vec![],
                Some(100 + 1_048_577),
                wait.clone(),
            ),
        ];
        for (what, wal, my_tags, peers, optime, expected) in cases {
            let mut cluster = c.clone();
            cluster.status = Status {
                optime,
                ..Default::default()
            };
            let mut local = replica(wal);
            local.peers = peers;
            let s = Settings {
                tags: tags(my_tags),
                ..settings("b")
            };
            assert_eq!(
                decide(Some(&cluster), &local, &s).actions,
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn a_peer_still_primary_blocks_promotion() {
        let c = initialized(None);
        let mut local = replica(500);
        let mut p = peer("a", 100, json!({}));
        p.role = Role::Primary;
        local.peers = vec![p];
        assert_eq!(
            decide(Some(&c), &local, &settings("b")).actions,
            vec![Action::Follow { leader: None }]
        );
    }

    #[test]
    fn a_member_that_cannot_lead_neither_takes_nor_keeps_the_lock() {
        let why = "the fence process could not be started".to_string();
        // The lock is free and this member is the healthiest: it does not take it.
        let mut l = replica(100);
        l.cannot_lead = Some(why.clone());
        let d = decide(Some(&initialized(None)), &l, &settings("a"));
        assert!(!d.actions.contains(&Action::AcquireLock), "{}", d.reason);
        assert!(d.reason.contains(&why), "{}", d.reason);
        // A running primary holding the lock hands over, releasing it once stopped.
        let mut p = primary(100);
        p.cannot_lead = Some(why.clone());
        let d = decide(Some(&initialized(Some("a"))), &p, &settings("a"));
        assert_eq!(d.actions, vec![RENEW, Action::Demote(DemoteMode::Graceful)]);
        // The holder that was about to promote gives the lock back instead.
        let mut r = replica(100);
        r.holds_lock = true;
        r.cannot_lead = Some(why.clone());
        let d = decide(Some(&initialized(Some("a"))), &r, &settings("a"));
        assert_eq!(d.actions, vec![Action::ReleaseLock]);
        // The holder whose Postgres is down does not restart it as a primary.
        let mut down = primary(100);
        down.pg_running = false;
        down.cannot_lead = Some(why.clone());
        let d = decide(Some(&initialized(Some("a"))), &down, &settings("a"));
        assert_eq!(d.actions, vec![Action::ReleaseLock]);
        // Nor does it bootstrap a new cluster.
        let mut empty = LocalState {
            data_dir: DataDir::Empty,
            cannot_lead: Some(why),
            ..LocalState::default()
        };
        empty.pg_running = false;
        let mut c = initialized(None);
        c.initialize = None;
        let d = decide(Some(&c), &empty, &settings("a"));
        assert!(d.actions.is_empty(), "{:?}", d.actions);
    }

    #[test]
    fn renew_failure_demotes() {
        let c = initialized(Some("a"));
        let mut l = primary(100);
        l.renew_failed = true;
        assert_eq!(
            decide(Some(&c), &l, &settings("a")).actions,
            vec![Action::Demote(DemoteMode::ImmediateNoLock)]
        );
    }

    #[test]
    fn lease_close_to_expiry_demotes_before_anything_else() {
        let c = initialized(Some("a"));
        let mut l = primary(100);
        l.lock_expires_in = Some(1.5);
        assert_eq!(
            decide(Some(&c), &l, &settings("a")).actions,
            vec![Action::Demote(DemoteMode::Offline)]
        );
        assert_eq!(
            decide(None, &l, &settings("a")).actions,
            vec![Action::Demote(DemoteMode::Offline)]
        );
    }

    #[test]
    fn dcs_unreachable() {
        assert_eq!(
            decide(None, &primary(1), &settings("a")).actions,
            vec![Action::Demote(DemoteMode::Offline)]
        );
        assert_eq!(decide(None, &replica(1), &settings("b")).actions, vec![]);
    }

    /// Maintenance mode: a primary is not taken down because the DCS went away (Patroni's
    /// `_handle_dcs_error` while paused), not even when the lease runs out.
    #[test]
    fn dcs_unreachable_while_paused_keeps_the_primary() {
        let mut l = primary(1);
        l.last_known_paused = true;
        assert_eq!(decide(None, &l, &settings("a")).actions, vec![]);
        l.lock_expires_in = Some(0.5);
        assert_eq!(decide(None, &l, &settings("a")).actions, vec![]);
        let mut r = replica(1);
        r.last_known_paused = true;
        assert_eq!(decide(None, &r, &settings("b")).actions, vec![]);
        // Not paused when last seen: the primary goes down as before.
        l.last_known_paused = false;
        assert_eq!(
            decide(None, &l, &settings("a")).actions,
            vec![Action::Demote(DemoteMode::Offline)]
        );
    }

    #[test]
    fn primary_without_the_lock_demotes() {
        let c = initialized(Some("b"));
        let mut l = primary(100);
        l.holds_lock = false;
        assert_eq!(
            decide(Some(&c), &l, &settings("a")).actions,
            vec![Action::Demote(DemoteMode::ImmediateNoLock)]
        );
    }

    #[test]
    fn postgres_down_on_the_leader() {
        let c = initialized(Some("a"));
        let mut l = primary(100);
        l.pg_running = false;
        l.pg_crashed = true;
        assert_eq!(
            decide(Some(&c), &l, &settings("a")).actions,
            vec![RENEW, Action::StartAsPrimary]
        );
        l.start_failures = 3;
        assert_eq!(
            decide(Some(&c), &l, &settings("a")).actions,
            vec![Action::ReleaseLock]
        );
        l.start_failures = 0;
        let s = Settings {
            primary_start_timeout: 0,
            ..settings("a")
        };
        assert_eq!(decide(Some(&c), &l, &s).actions, vec![Action::ReleaseLock]);
    }

    #[test]
    fn lock_holder_still_replica_promotes() {
        let c = initialized(Some("b"));
        let mut l = replica(100);
        l.holds_lock = true;
        assert_eq!(
            decide(Some(&c), &l, &settings("b")).actions,
            vec![RENEW, Action::Promote]
        );
    }

    #[test]
    fn timeline_history_appended_after_promotion() {
        let mut c = initialized(Some("a"));
        let mut l = primary(100);
        l.timeline = Some(2);
        let s = Settings {
            use_slots: false,
            ..settings("a")
        };
        assert_eq!(
            decide(Some(&c), &l, &s).actions,
            vec![RENEW, Action::AppendHistory]
        );
        c.history = vec![HistoryEntry {
            timeline: 1,
            lsn: 50,
            reason: "x".into(),
            timestamp: None,
            new_leader: None,
        }];
        assert_eq!(decide(Some(&c), &l, &s).actions, vec![RENEW]);
    }

    #[test]
    fn sysid_mismatch_is_fatal() {
        let c = initialized(Some("a"));
        let mut l = replica(1);
        l.data_dir = DataDir::Valid {
            sysid: "123".into(),
        };
        assert!(matches!(
            decide(Some(&c), &l, &settings("b")).actions[..],
            [Action::Fatal(_)]
        ));
    }

    #[test]
    fn existing_data_is_adopted_by_an_empty_dcs() {
        let c = Cluster::default();
        let mut l = primary(1);
        l.holds_lock = false;
        let d = decide(Some(&c), &l, &settings("a"));
        assert_eq!(
            d.actions[..2],
            [
                Action::WriteInitialize("7000000000000000001".into()),
                Action::WriteConfig
            ]
        );
        assert!(d.actions.contains(&Action::AcquireLock));
    }

    #[test]
    fn paused_cluster_takes_no_automatic_action() {
        let mut c = initialized(None);
        c.config = Some(ClusterConfig {
            raw: json!({"pause": true}),
            version: None,
        });
        let mut l = replica(1000);
        assert_eq!(decide(Some(&c), &l, &settings("b")).actions, vec![]);
        l.pg_running = false;
        assert_eq!(decide(Some(&c), &l, &settings("b")).actions, vec![]);
        let mut p = primary(1);
        p.holds_lock = false;
        assert_eq!(
            decide(Some(&c), &p, &settings("a")).actions,
            vec![Action::AcquireLock]
        );
        // The holder's Postgres went down (killed): no restart, no failover; the lock is
        // given up as Patroni does, and the replicas keep following nobody into promotion.
        let mut held = initialized(Some("a"));
        held.config = c.config.clone();
        let mut down = primary(1);
        down.pg_running = false;
        down.pg_crashed = true;
        assert_eq!(
            decide(Some(&held), &down, &settings("a")).actions,
            vec![Action::ReleaseLock]
        );
        let mut without_lock = initialized(None);
        without_lock.config = c.config.clone();
        assert_eq!(
            decide(Some(&without_lock), &replica(1000), &settings("b")).actions,
            vec![]
        );
    }

    /// Property: from one agreed view with the lock free, at most one member with distinct WAL
    /// positions decides to acquire.
    #[test]
    fn at_most_one_acquirer_per_view_with_distinct_wal() {
        let c = initialized(None);
        let wals = [
            (String::from("a"), 10u64),
            ("b".into(), 30),
            ("c".into(), 20),
        ];
        let mut acquirers = 0;
        for (name, wal) in &wals {
            let mut local = replica(*wal);
            local.peers = wals
                .iter()
                .filter(|(n, _)| n != name)
                .map(|(n, w)| peer(n, *w, json!({})))
                .collect();
            if decide(Some(&c), &local, &settings(name))
                .actions
                .contains(&Action::AcquireLock)
            {
                acquirers += 1;
            }
        }
        assert_eq!(acquirers, 1);
    }

    fn with_request(
        leader: Option<&str>,
        candidate: Option<&str>,
        scheduled_at: Option<&str>,
    ) -> Cluster {
        let mut c = initialized(Some("a"));
        c.failover = Some(dcs::Failover {
            leader: leader.map(Into::into),
            member: candidate.map(Into::into),
            scheduled_at: scheduled_at.map(Into::into),
            version: None,
        });
        c
    }

    /// Whose receipt of the shutdown checkpoint lets a switchover stop waiting for the others.
    #[test]
    fn handover_candidates_follow_the_request_and_synchronous_mode() {
        let mut stopped_c = with_request(Some("a"), Some("c"), None);
        stopped_c.members[2].data.state = "stopped".into();
        let mut sync_b = with_request(Some("a"), None, None);
        sync_b.sync = sync_cluster(Some("a")).sync;
        let synchronous = Settings {
            synchronous_mode: true,
            ..settings("a")
        };
        let plain = settings("a");
        let cases: Vec<(&str, Cluster, &Settings, Vec<&str>)> = vec![
            (
                "the named candidate",
                with_request(Some("a"), Some("c"), None),
                &plain,
                vec!["c"],
            ),
            (
                "no candidate named: every running replica that may lead",
                with_request(Some("a"), None, None),
                &plain,
                vec!["b", "c"],
            ),
            (
                "a named candidate that is not running: nobody",
                stopped_c,
                &plain,
                vec![],
            ),
            (
                "synchronous mode: the synchronous standby only",
                sync_b,
                &synchronous,
                vec!["b"],
            ),
            (
                "no request (a handover for a nofailover tag): every replica that may lead",
                initialized(Some("a")),
                &plain,
                vec!["b", "c"],
            ),
        ];
        for (what, cluster, s, expected) in cases {
            assert_eq!(handover_candidates(&cluster, s), expected, "{what}");
        }
    }

    /// The lock holder's answer to a switchover request, and the candidate's after the lock
    /// was released.
    #[test]
    fn switchover_requests() {
        let mut nofailover_c = with_request(Some("a"), Some("c"), None);
        nofailover_c.members[2].data.tags = tags(json!({"nofailover": true}));
        let mut stopped_b = with_request(Some("a"), Some("b"), None);
        stopped_b.members[1].data.state = "stopped".into();
        let cases: Vec<(&str, Cluster, Vec<Action>)> = vec![
            (
                "to a running replica: hand over",
                with_request(Some("a"), Some("b"), None),
                vec![RENEW, Action::Demote(DemoteMode::Graceful)],
            ),
            (
                "without a candidate: hand over to the healthiest",
                with_request(Some("a"), None, None),
                vec![RENEW, Action::Demote(DemoteMode::Graceful)],
            ),
            (
                "without a source leader (failover form): hand over",
                with_request(None, Some("c"), None),
                vec![RENEW, Action::Demote(DemoteMode::Graceful)],
            ),
            (
                "naming another leader: removed",
                with_request(Some("b"), Some("c"), None),
                vec![RENEW, Action::ClearFailover],
            ),
            (
                "candidate tagged nofailover: removed",
                nofailover_c,
                vec![RENEW, Action::ClearFailover],
            ),
            (
                "candidate not running: removed",
                stopped_b,
                vec![RENEW, Action::ClearFailover],
            ),
            (
                "unknown candidate: removed",
                with_request(Some("a"), Some("zz"), None),
                vec![RENEW, Action::ClearFailover],
            ),
            (
                "scheduled: wait, keep leading",
                with_request(Some("a"), Some("b"), Some("2099-01-01T00:00:00+00:00")),
                vec![RENEW],
            ),
        ];
        for (what, cluster, expected) in cases {
            let d = decide(Some(&cluster), &primary(100), &settings("a"));
            assert_eq!(d.actions, expected, "{what}: {}", d.reason);
        }

        // The candidate that took the lock removes the request once it leads.
        let mut done = with_request(Some("a"), Some("b"), None);
        done.leader = Some(Leader {
            name: "b".into(),
            version: None,
        });
        let d = decide(Some(&done), &primary(200), &settings("b"));
        assert!(d.actions.contains(&Action::ClearFailover), "{}", d.reason);

        // Lock released by the old leader: only the candidate takes it, and not while the old
        // leader still runs as a primary.
        let mut free = with_request(Some("a"), Some("b"), None);
        free.leader = None;
        let mut candidate = replica(100);
        candidate.peers = vec![peer("a", 100, json!({})), peer("c", 150, json!({}))];
        let d = decide(Some(&free), &candidate, &settings("b"));
        assert_eq!(
            d.actions,
            vec![Action::AcquireLock, Action::Promote, Action::EnsureSlots],
            "{}",
            d.reason
        );
        let mut other = replica(150);
        other.peers = vec![peer("a", 100, json!({})), peer("b", 100, json!({}))];
        let d = decide(Some(&free), &other, &settings("c"));
        assert!(!d.actions.contains(&Action::AcquireLock), "{}", d.reason);
        let mut old_still_primary = candidate.clone();
        old_still_primary.peers[0].role = Role::Primary;
        let d = decide(Some(&free), &old_still_primary, &settings("b"));
        assert!(!d.actions.contains(&Action::AcquireLock), "{}", d.reason);
    }

    /// A scheduled switchover, seen by the leader at different wall times (loop_wait 10 s).
    #[test]
    fn scheduled_switchover_acts_when_due() {
        let at = "2030-01-01T12:00:00+00:00";
        let at_ms = parse_scheduled_at(at).expect("valid timestamp");
        let cases: Vec<(&str, i64, Vec<Action>, bool)> = vec![
            ("an hour early: wait", at_ms - 3_600_000, vec![RENEW], true),
            ("a second early: wait", at_ms - 1_000, vec![RENEW], true),
            (
                "on time: hand over",
                at_ms,
                vec![RENEW, Action::Demote(DemoteMode::Graceful)],
                false,
            ),
            (
                "one loop late: hand over",
                at_ms + 10_000,
                vec![RENEW, Action::Demote(DemoteMode::Graceful)],
                false,
            ),
            (
                "more than 1.5 loops late: stale, removed",
                at_ms + 15_001,
                vec![RENEW, Action::ClearFailover],
                false,
            ),
        ];
        for (what, now_ms, expected, waits) in cases {
            let cluster = with_request(Some("a"), Some("b"), Some(at));
            let mut local = primary(100);
            local.now_ms = now_ms;
            let d = decide(Some(&cluster), &local, &settings("a"));
            assert_eq!(d.actions, expected, "{what}: {}", d.reason);
            assert_eq!(d.wake_in.is_some(), waits, "{what}: {:?}", d.wake_in);
        }
        let cluster = with_request(Some("a"), Some("b"), Some(at));
        let mut local = primary(100);
        local.now_ms = at_ms - 1_500;
        let d = decide(Some(&cluster), &local, &settings("a"));
        assert_eq!(d.wake_in, Some(1.5));
        let unreadable = with_request(Some("a"), Some("b"), Some("tomorrow"));
        let d = decide(Some(&unreadable), &primary(100), &settings("a"));
        assert_eq!(
            d.actions,
            vec![RENEW, Action::ClearFailover],
            "{}",
            d.reason
        );
        // Patroni's other spellings of the same instant.
        assert_eq!(parse_scheduled_at("2030-01-01T13:00:00+01:00"), Some(at_ms));
        assert_eq!(
            parse_scheduled_at("2030-01-01 12:00:00.000+0000"),
            Some(at_ms)
        );
    }

    /// POST /failover with the lock free: the named candidate takes it, even when lagging or
    /// when the cluster is paused; the others leave it to the candidate.
    #[test]
    fn failover_without_leader_promotes_the_candidate() {
        let mut free = with_request(None, Some("c"), None);
        free.leader = None;
        free.status.optime = Some(10 << 20);
        let mut lagging_c = replica(100);
        lagging_c.peers = vec![peer("b", 10 << 20, json!({}))];
        let mut b = replica(10 << 20);
        b.peers = vec![peer("c", 100, json!({}))];
        let mut paused = free.clone();
        paused.config = Some(ClusterConfig {
            raw: json!({"pause": true}),
            version: None,
        });
        let mut nofailover = settings("c");
        nofailover.tags = tags(json!({"nofailover": true}));
        let mut scheduled = free.clone();
        if let Some(f) = scheduled.failover.as_mut() {
            f.scheduled_at = Some("2030-01-01T12:00:00+00:00".into());
        }
        let take = vec![Action::AcquireLock, Action::Promote, Action::EnsureSlots];
        let cases: Vec<(&str, &Cluster, &LocalState, Settings, bool)> = vec![
            (
                "lagging candidate takes the lock",
                &free,
                &lagging_c,
                settings("c"),
                true,
            ),
            (
                "the healthier non-candidate yields",
                &free,
                &b,
                settings("b"),
                false,
            ),
            (
                "paused: the candidate takes the lock",
                &paused,
                &lagging_c,
                settings("c"),
                true,
            ),
            ("paused: nobody else", &paused, &b, settings("b"), false),
            (
                "a nofailover candidate never",
                &free,
                &lagging_c,
                nofailover,
                false,
            ),
            (
                "a scheduled request names no candidate yet",
                &scheduled,
                &lagging_c,
                settings("c"),
                false,
            ),
        ];
        for (what, cluster, local, s, takes) in cases {
            let d = decide(Some(cluster), local, &s);
            assert_eq!(
                d.actions.contains(&Action::AcquireLock),
                takes,
                "{what}: {:?} {}",
                d.actions,
                d.reason
            );
            if takes && !cluster.is_paused() {
                assert_eq!(d.actions, take, "{what}");
            }
        }
    }

    /// Maintenance mode: the leader hands over to a named candidate only, and restarts as a
    /// replica of it in the same plan.
    #[test]
    fn paused_switchover_to_a_named_candidate() {
        let paused = |mut c: Cluster| {
            c.config = Some(ClusterConfig {
                raw: json!({"pause": true}),
                version: None,
            });
            c
        };
        let cases: Vec<(&str, Cluster, Vec<Action>)> = vec![
            (
                "named candidate: hand over and follow it",
                paused(with_request(Some("a"), Some("b"), None)),
                vec![
                    RENEW,
                    Action::Demote(DemoteMode::Graceful),
                    Action::StartAsReplica {
                        leader: Some("b".into()),
                    },
                ],
            ),
            (
                "no candidate: removed",
                paused(with_request(Some("a"), None, None)),
                vec![RENEW, Action::ClearFailover],
            ),
            (
                "unknown candidate: removed",
                paused(with_request(Some("a"), Some("zz"), None)),
                vec![RENEW, Action::ClearFailover],
            ),
            (
                "scheduled: left for after the maintenance",
                paused(with_request(
                    Some("a"),
                    Some("b"),
                    Some("2030-01-01T00:00:00+00:00"),
                )),
                vec![RENEW, Action::EnsureSlots],
            ),
            (
                "no request: keep leading, slots kept",
                paused(initialized(Some("a"))),
                vec![RENEW, Action::EnsureSlots],
            ),
        ];
        for (what, cluster, expected) in cases {
            let d = decide(Some(&cluster), &primary(100), &settings("a"));
            assert_eq!(d.actions, expected, "{what}: {}", d.reason);
        }
    }

    fn sync_settings(name: &str) -> Settings {
        Settings {
            synchronous_mode: true,
            ..settings(name)
        }
    }

    /// The old leader `a` is gone; `sync` names `b` as its synchronous standby, `c` is async.
    fn sync_cluster(leader: Option<&str>) -> Cluster {
        let mut c = initialized(leader);
        c.sync = dcs::SyncState {
            leader: Some("a".into()),
            sync_standby: vec!["b".into()],
            ..Default::default()
        };
        c
    }

    /// Synchronous mode: only the `sync` leader or a listed standby takes
    /// a free lock, so an asynchronous replica that may miss acknowledged writes never promotes,
    /// whatever its WAL position. `synchronous_mode_strict` changes what the primary waits for,
    /// not this rule, so the same table holds for it.
    #[test]
    fn synchronous_mode_only_sync_members_take_the_lock() {
        let free = sync_cluster(None);
        let promote = vec![Action::AcquireLock, Action::Promote, Action::EnsureSlots];
        let wait = vec![Action::Follow { leader: None }];
        // (what, me, my wal, peers, synchronous_mode, expected)
        type SyncCase = (
            &'static str,
            &'static str,
            u64,
            Vec<PeerStatus>,
            bool,
            Vec<Action>,
        );
        let cases: Vec<SyncCase> = vec![
            (
                "async replica ahead of the sync standby stays a replica",
                "c",
                900,
                vec![peer("b", 100, json!({}))],
                true,
                wait.clone(),
            ),
            (
                "async replica alone stays a replica",
                "c",
                900,
                vec![],
                true,
                wait.clone(),
            ),
            (
                "sync standby behind an async replica promotes",
                "b",
                100,
                vec![peer("c", 900, json!({}))],
                true,
                promote.clone(),
            ),
            (
                "sync standby alone promotes",
                "b",
                100,
                vec![],
                true,
                promote.clone(),
            ),
            (
                "without synchronous_mode the most advanced replica wins",
                "c",
                900,
                vec![peer("b", 100, json!({}))],
                false,
                promote.clone(),
            ),
            (
                "without synchronous_mode the sync standby behind waits",
                "b",
                100,
                vec![peer("c", 900, json!({}))],
                false,
                wait.clone(),
            ),
        ];
        for (what, me, wal, peers, sync_mode, expected) in cases {
            let mut local = replica(wal);
            local.peers = peers;
            let s = if sync_mode {
                sync_settings(me)
            } else {
                settings(me)
            };
            assert_eq!(decide(Some(&free), &local, &s).actions, expected, "{what}");
        }
        // An empty `sync` (no leader recorded) restricts nobody.
        let mut empty = free.clone();
        empty.sync = dcs::SyncState::default();
        assert_eq!(
            decide(Some(&empty), &replica(900), &sync_settings("c")).actions,
            promote
        );
        // The former leader named in `sync` may take the lock back.
        let mut l = replica(100);
        l.peers = vec![peer("b", 100, json!({}))];
        assert_eq!(
            decide(Some(&free), &l, &sync_settings("a")).actions,
            promote
        );
    }

    /// A switchover in synchronous mode goes to a synchronous standby only.
    #[test]
    fn synchronous_mode_switchover_needs_a_sync_standby() {
        let handover = vec![RENEW, Action::Demote(DemoteMode::Graceful)];
        let clear = vec![RENEW, Action::ClearFailover];
        let mut to_async = with_request(Some("a"), Some("c"), None);
        to_async.sync = sync_cluster(Some("a")).sync;
        assert_eq!(
            decide(Some(&to_async), &primary(100), &sync_settings("a")).actions,
            clear
        );
        assert_eq!(
            decide(Some(&to_async), &primary(100), &settings("a")).actions,
            handover
        );
        let mut to_sync = with_request(Some("a"), Some("b"), None);
        to_sync.sync = to_async.sync.clone();
        assert_eq!(
            decide(Some(&to_sync), &primary(100), &sync_settings("a")).actions,
            handover
        );
        // No candidate named and no synchronous standby: nobody may take over.
        let mut anyone = with_request(Some("a"), None, None);
        anyone.sync = dcs::SyncState {
            leader: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(
            decide(Some(&anyone), &primary(100), &sync_settings("a")).actions,
            clear
        );
    }

    fn failsafe_settings(name: &str) -> Settings {
        Settings {
            failsafe_mode: true,
            api_url: format!("http://127.0.0.1:8008/{name}"),
            ..settings(name)
        }
    }

    fn topology(names: &[&str]) -> FailsafeTopology {
        names
            .iter()
            .map(|n| (n.to_string(), format!("http://127.0.0.1:8008/{n}")))
            .collect()
    }

    /// DCS unreachable (or a renew without a definite answer): only a primary in failsafe mode
    /// that is in the topology and accepted by every other listed member keeps running.
    #[test]
    fn dcs_unreachable_with_and_without_failsafe() {
        let round = |names: &[&str]| {
            vec![Action::CheckFailsafeMembers(
                names
                    .iter()
                    .map(|n| (n.to_string(), format!("http://127.0.0.1:8008/{n}")))
                    .collect(),
            )]
        };
        let demote = vec![Action::Demote(DemoteMode::Offline)];
        let with = |known: Option<FailsafeTopology>, outcome: Option<bool>| LocalState {
            last_known_failsafe: known,
            failsafe_round: outcome,
            ..primary(100)
        };
        let abc = Some(topology(&["a", "b", "c"]));
        let cases: Vec<(&str, LocalState, Settings, Vec<Action>)> = vec![
            (
                "failsafe on: ask the other members first",
                with(abc.clone(), None),
                failsafe_settings("a"),
                round(&["b", "c"]),
            ),
            (
                "every member accepted: stay primary",
                with(abc.clone(), Some(true)),
                failsafe_settings("a"),
                vec![],
            ),
            (
                "a member refused or did not answer: demote",
                with(abc.clone(), Some(false)),
                failsafe_settings("a"),
                demote.clone(),
            ),
            (
                "failsafe off: demote",
                with(abc.clone(), None),
                settings("a"),
                demote.clone(),
            ),
            (
                "not in the topology: demote",
                with(Some(topology(&["b", "c"])), None),
                failsafe_settings("a"),
                demote.clone(),
            ),
            (
                "no topology known: demote",
                with(None, None),
                failsafe_settings("a"),
                demote.clone(),
            ),
            (
                "alone in the topology: nobody to ask, stay primary",
                with(Some(topology(&["a"])), None),
                failsafe_settings("a"),
                round(&[]),
            ),
            (
                "a replica waits",
                LocalState {
                    last_known_failsafe: abc.clone(),
                    ..replica(100)
                },
                failsafe_settings("b"),
                vec![],
            ),
            (
                "its fence is not running: demote",
                LocalState {
                    cannot_lead: Some("the fence process is gone".into()),
                    ..with(abc.clone(), None)
                },
                failsafe_settings("a"),
                demote.clone(),
            ),
            (
                "paused: no automatic action",
                LocalState {
                    last_known_paused: true,
                    ..with(abc.clone(), Some(false))
                },
                failsafe_settings("a"),
                vec![],
            ),
        ];
        for (what, local, s, expected) in cases {
            assert_eq!(decide(None, &local, &s).actions, expected, "{what}");
        }
        // A definite loss of the lock is not a DCS failure: no failsafe round.
        let lost = LocalState {
            renew_failed: true,
            holds_lock: false,
            ..with(abc, None)
        };
        assert_eq!(
            decide(
                Some(&initialized(Some("b"))),
                &lost,
                &failsafe_settings("a")
            )
            .actions,
            vec![Action::Demote(DemoteMode::ImmediateNoLock)]
        );
    }

    /// A replica that accepted a `POST /failsafe` less than ttl ago follows its sender and does
    /// not race for the free lock.
    #[test]
    fn replica_told_by_failsafe_does_not_race() {
        let free = initialized(None);
        let told = LocalState {
            failsafe_leader: Some("a".into()),
            peers: vec![peer("a", 50, json!({}))],
            ..replica(100)
        };
        assert_eq!(
            decide(Some(&free), &told, &failsafe_settings("b")).actions,
            vec![Action::Follow {
                leader: Some("a".into())
            }]
        );
        // Failsafe mode off: the call does not count; the healthiest member races.
        assert!(decide(Some(&free), &told, &settings("b"))
            .actions
            .contains(&Action::AcquireLock));
        // Nobody told it: it races.
        let untold = LocalState {
            failsafe_leader: None,
            ..told
        };
        assert!(decide(Some(&free), &untold, &failsafe_settings("b"))
            .actions
            .contains(&Action::AcquireLock));
    }

    /// Failsafe mode: a non-empty topology that lacks a member keeps it out of the leader race.
    #[test]
    fn leader_race_only_among_failsafe_members() {
        let mut free = initialized(None);
        let me = replica(100);
        for (what, failsafe, s, races) in [
            (
                "listed",
                Some(topology(&["a", "b"])),
                failsafe_settings("b"),
                true,
            ),
            (
                "not listed",
                Some(topology(&["a", "c"])),
                failsafe_settings("b"),
                false,
            ),
            (
                "empty topology",
                Some(topology(&[])),
                failsafe_settings("b"),
                true,
            ),
            ("no topology", None, failsafe_settings("b"), true),
            (
                "failsafe off",
                Some(topology(&["a", "c"])),
                settings("b"),
                true,
            ),
        ] {
            free.failsafe = failsafe;
            assert_eq!(
                decide(Some(&free), &me, &s)
                    .actions
                    .contains(&Action::AcquireLock),
                races,
                "{what}"
            );
        }
    }

    /// The leader writes the topology with its renew when the member set changed (always
    /// listing itself), and removes a leftover one when failsafe mode is off.
    #[test]
    fn leader_writes_failsafe_at_renew_when_members_changed() {
        let renew_of = |c: &Cluster, s: &Settings| {
            decide(Some(c), &primary(100), s)
                .actions
                .into_iter()
                .find(|a| matches!(a, Action::RenewLock { .. }))
        };
        let mut c = initialized(Some("a"));
        let all = topology(&["a", "b", "c"]);
        assert_eq!(
            renew_of(&c, &failsafe_settings("a")),
            Some(Action::RenewLock {
                failsafe: Some(all.clone())
            }),
            "no topology yet"
        );
        c.failsafe = Some(all.clone());
        assert_eq!(
            renew_of(&c, &failsafe_settings("a")),
            Some(RENEW),
            "unchanged: nothing written"
        );
        c.members.retain(|m| m.name != "c");
        assert_eq!(
            renew_of(&c, &failsafe_settings("a")),
            Some(Action::RenewLock {
                failsafe: Some(topology(&["a", "b"]))
            }),
            "a member left"
        );
        // Our own member key missing from the read: we are listed all the same.
        c.members.retain(|m| m.name != "a");
        assert_eq!(
            renew_of(&c, &failsafe_settings("a")),
            Some(Action::RenewLock {
                failsafe: Some(topology(&["a", "b"]))
            }),
            "the leader always lists itself"
        );
        c.failsafe = Some(all);
        assert_eq!(
            renew_of(&c, &settings("a")),
            Some(Action::RenewLock {
                failsafe: Some(FailsafeTopology::new())
            }),
            "failsafe off: a leftover topology is removed"
        );
        c.failsafe = None;
        assert_eq!(renew_of(&c, &settings("a")), Some(RENEW), "failsafe off");
    }
}
