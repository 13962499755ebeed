//! A DCS held in memory, for deterministic simulation of the HA loop: one [`MemoryStore`] shared
//! by every member's [`MemoryDcs`], with the trait's lock semantics, versions for every racing
//! write, leases counted on tokio's clock (a paused test clock drives their expiry), watch
//! wake-ups, and faults per member: a member cut off from the store gets `Unreachable`, at once
//! or after hanging for its retry budget as a dropped network would make it.
//!
//! Like etcd, member keys and the leader lock are leases of `ttl` seconds: a member key not
//! touched within ttl disappears, and so does a lock not renewed. A renew that finds the lock
//! free takes it again (etcd's backend does the same after a lapsed lease); one that finds it
//! held by another member fails.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{
    Cluster, ClusterConfig, Dcs, DcsError, DcsResult, Failover, FailsafeTopology, HistoryEntry,
    Leader, Member, MemberData, Status, SyncState, Timing,
};

/// SplitMix64: a small seeded generator, so one seed names one sequence forever (latencies
/// here, fault schedules in the HA loop's simulation).
#[derive(Debug, Clone, Copy, Default)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0 .. n (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in 0 ..= max, to the microsecond.
    pub fn duration_up_to(&mut self, max: Duration) -> Duration {
        Duration::from_micros(self.below(max.as_micros() as u64 + 1))
    }
}

/// How a member cut off from the store sees its calls fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Refused at once (a closed port).
    Refused,
    /// No answer: every call hangs for the member's retry budget, then fails (dropped packets).
    Silent,
}

#[derive(Debug, Clone)]
struct Versioned<T> {
    value: T,
    version: u64,
}

#[derive(Debug, Clone)]
struct Leased<T> {
    value: T,
    version: u64,
    expires: Instant,
}

#[derive(Debug, Default)]
struct State {
    revision: u64,
    initialize: Option<Versioned<String>>,
    config: Option<Versioned<Value>>,
    leader: Option<Leased<String>>,
    members: BTreeMap<String, Leased<MemberData>>,
    failover: Option<Versioned<Failover>>,
    sync: Option<Versioned<SyncState>>,
    history: Vec<HistoryEntry>,
    status: Status,
    failsafe: Option<FailsafeTopology>,
    cut: BTreeMap<String, Cut>,
    /// Each call waits 0 ..= this long before it reaches the store (seeded, so reproducible).
    max_latency: Duration,
    latency: SplitMix64,
}

impl State {
    fn latency(&mut self) -> Duration {
        self.latency.duration_up_to(self.max_latency)
    }

    fn next_version(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// Drop what has expired; true when the lock went (a change watchers must see).
    fn expire(&mut self, now: Instant) -> bool {
        self.members.retain(|_, m| m.expires > now);
        if self.leader.as_ref().is_some_and(|l| l.expires <= now) {
            self.leader = None;
            self.next_version();
            return true;
        }
        false
    }

    fn view(&self) -> Cluster {
        let version = |v: u64| Some(v.to_string());
        Cluster {
            initialize: self.initialize.as_ref().map(|i| i.value.clone()),
            config: self.config.as_ref().map(|c| ClusterConfig {
                raw: c.value.clone(),
                version: version(c.version),
            }),
            leader: self.leader.as_ref().map(|l| Leader {
                name: l.value.clone(),
                version: version(l.version),
            }),
            status: self.status.clone(),
            members: self
                .members
                .iter()
                .map(|(name, m)| Member {
                    name: name.clone(),
                    data: m.value.clone(),
                    version: version(m.version),
                })
                .collect(),
            failover: self.failover.as_ref().map(|f| Failover {
                version: version(f.version),
                ..f.value.clone()
            }),
            sync: self
                .sync
                .as_ref()
                .map(|s| SyncState {
                    version: version(s.version),
                    ..s.value.clone()
                })
                .unwrap_or_default(),
            history: self.history.clone(),
            failsafe: self.failsafe.clone(),
            warnings: Vec::new(),
            workers: BTreeMap::new(),
        }
    }
}

/// Does `expected` (a version a caller read, or None for "no check") allow a write over
/// `current`? Like etcd's mod_revision compare: a version given for an absent key never matches.
fn version_matches(expected: Option<&str>, current: Option<u64>) -> bool {
    match expected {
        None => true,
        Some(v) => current.is_some_and(|c| c.to_string() == v),
    }
}

/// The store every member of one simulated cluster talks to.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    /// Bumped on every change the HA loop is woken by (lock, config, failover, initialize, sync).
    changes: Arc<watch::Sender<u64>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            state: Arc::new(Mutex::new(State::default())),
            changes: Arc::new(watch::channel(0).0),
        }
    }

    /// The DCS as member `name` sees it.
    pub fn client(&self, name: &str, timing: Timing) -> MemoryDcs {
        MemoryDcs {
            store: self.clone(),
            name: name.to_string(),
            timing: Mutex::new(timing),
            seen: Mutex::new(self.changes.subscribe()),
        }
    }

    /// Every call waits a seeded pseudo-random 0 ..= `max` before it reaches the store, so the
    /// calls of different members interleave as a network would make them.
    pub fn set_latency(&self, max: Duration, seed: u64) {
        let mut state = self.lock();
        state.max_latency = max;
        state.latency = SplitMix64(seed);
    }

    /// Cut `member` off from the store (`None` heals it).
    pub fn cut(&self, member: &str, how: Option<Cut>) {
        let mut state = self.lock();
        match how {
            Some(cut) => state.cut.insert(member.to_string(), cut),
            None => state.cut.remove(member),
        };
    }

    /// Who holds the lock now (expired locks count as free).
    pub fn leader(&self) -> Option<String> {
        let mut state = self.lock();
        if state.expire(Instant::now()) {
            self.notify();
        }
        state.leader.as_ref().map(|l| l.value.clone())
    }

    /// When the lock held now lapses unless renewed.
    pub fn leader_expires(&self) -> Option<Instant> {
        self.lock().leader.as_ref().map(|l| l.expires)
    }

    /// The members cut off now.
    pub fn cut_members(&self) -> BTreeSet<String> {
        self.lock().cut.keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

/// One member's view of a [`MemoryStore`].
pub struct MemoryDcs {
    store: MemoryStore,
    name: String,
    timing: Mutex<Timing>,
    seen: Mutex<watch::Receiver<u64>>,
}

impl MemoryDcs {
    fn timing(&self) -> Timing {
        *self.timing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.timing().ttl))
    }

    /// Fail the call when this member is cut off; otherwise the state, expired leases gone.
    async fn reach(&self) -> DcsResult<MutexGuard<'_, State>> {
        let latency = self.store.lock().latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let cut = self.store.lock().cut.get(&self.name).copied();
        match cut {
            None => {}
            Some(Cut::Refused) => {
                return Err(DcsError::Unreachable(format!(
                    "{} is cut off from the store",
                    self.name
                )))
            }
            Some(Cut::Silent) => {
                tokio::time::sleep(Duration::from_secs(u64::from(self.timing().retry_timeout)))
                    .await;
                return Err(DcsError::Unreachable(format!(
                    "{}: no answer within retry_timeout",
                    self.name
                )));
            }
        }
        let mut state = self.store.lock();
        if state.expire(Instant::now()) {
            self.store.notify();
        }
        Ok(state)
    }
}

impl MemoryDcs {
    /// Compare-and-swap one versioned key: when `expected` (None: no check) matches its
    /// version, `new` replaces it (None removes it) and watchers are woken.
    async fn swap<T>(
        &self,
        slot: impl Fn(&mut State) -> &mut Option<Versioned<T>>,
        expected: Option<&str>,
        new: Option<T>,
    ) -> DcsResult<bool> {
        let mut state = self.reach().await?;
        if !version_matches(expected, slot(&mut state).as_ref().map(|v| v.version)) {
            return Ok(false);
        }
        let version = state.next_version();
        *slot(&mut state) = new.map(|value| Versioned { value, version });
        drop(state);
        self.store.notify();
        Ok(true)
    }
}

#[async_trait]
impl Dcs for MemoryDcs {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn set_timing(&self, timing: Timing) {
        *self.timing.lock().unwrap_or_else(|p| p.into_inner()) = timing;
    }

    async fn get_cluster(&self) -> DcsResult<Cluster> {
        Ok(self.reach().await?.view())
    }

    async fn get_group(&self, group: u32) -> DcsResult<Cluster> {
        let state = self.reach().await?;
        // One group per store: Citus groups are not simulated.
        Ok(if group == 0 {
            state.view()
        } else {
            Cluster::default()
        })
    }

    async fn touch_member(&self, data: &MemberData) -> DcsResult<()> {
        let expires = Instant::now() + self.ttl();
        let mut state = self.reach().await?;
        let version = state.next_version();
        state.members.insert(
            self.name.clone(),
            Leased {
                value: data.clone(),
                version,
                expires,
            },
        );
        Ok(())
    }

    async fn delete_member(&self) -> DcsResult<()> {
        self.reach().await?.members.remove(&self.name);
        Ok(())
    }

    async fn attempt_to_acquire_leader(&self) -> DcsResult<bool> {
        let expires = Instant::now() + self.ttl();
        let mut state = self.reach().await?;
        if state.leader.is_some() {
            return Ok(false);
        }
        let version = state.next_version();
        state.leader = Some(Leased {
            value: self.name.clone(),
            version,
            expires,
        });
        drop(state);
        self.store.notify();
        Ok(true)
    }

    async fn update_leader(
        &self,
        _cluster: &Cluster,
        optime: Option<u64>,
        failsafe: Option<&FailsafeTopology>,
    ) -> DcsResult<bool> {
        // The lease counts from the start of the call, as the trait promises.
        let expires = Instant::now() + self.ttl();
        let mut state = self.reach().await?;
        let taken_again = match &state.leader {
            Some(l) if l.value != self.name => return Ok(false),
            Some(_) => false,
            None => true,
        };
        let version = state.next_version();
        state.leader = Some(Leased {
            value: self.name.clone(),
            version,
            expires,
        });
        if optime.is_some() {
            state.status.optime = optime;
        }
        if let Some(topology) = failsafe {
            state.failsafe = (!topology.is_empty()).then(|| topology.clone());
        }
        drop(state);
        if taken_again {
            self.store.notify();
        }
        Ok(true)
    }

    async fn delete_leader(&self, optime: Option<u64>) -> DcsResult<bool> {
        let mut state = self.reach().await?;
        if state.leader.as_ref().is_none_or(|l| l.value != self.name) {
            return Ok(false);
        }
        state.leader = None;
        if optime.is_some() {
            state.status.optime = optime;
        }
        state.next_version();
        drop(state);
        self.store.notify();
        Ok(true)
    }

    async fn initialize(&self, create_new: bool, sysid: &str) -> DcsResult<bool> {
        let mut state = self.reach().await?;
        if create_new && state.initialize.is_some() {
            return Ok(false);
        }
        let version = state.next_version();
        state.initialize = Some(Versioned {
            value: sysid.to_string(),
            version,
        });
        drop(state);
        self.store.notify();
        Ok(true)
    }

    async fn cancel_initialization(&self) -> DcsResult<()> {
        let mut state = self.reach().await?;
        state.initialize = None;
        state.next_version();
        drop(state);
        self.store.notify();
        Ok(())
    }

    async fn set_config_value(&self, value: &Value, version: Option<&str>) -> DcsResult<bool> {
        self.swap(|s| &mut s.config, version, Some(value.clone()))
            .await
    }

    async fn set_history_value(&self, history: &[HistoryEntry]) -> DcsResult<()> {
        let mut state = self.reach().await?;
        state.history = history.to_vec();
        state.next_version();
        Ok(())
    }

    async fn set_failover_value(
        &self,
        failover: &Failover,
        version: Option<&str>,
    ) -> DcsResult<bool> {
        let value = Failover {
            version: None,
            ..failover.clone()
        };
        self.swap(|s| &mut s.failover, version, Some(value)).await
    }

    async fn delete_failover(&self, version: Option<&str>) -> DcsResult<bool> {
        self.swap(|s| &mut s.failover, version, None).await
    }

    async fn set_sync_state(&self, sync: &SyncState, version: Option<&str>) -> DcsResult<bool> {
        let value = SyncState {
            version: None,
            ..sync.clone()
        };
        self.swap(|s| &mut s.sync, version, Some(value)).await
    }

    async fn delete_sync_state(&self, version: Option<&str>) -> DcsResult<bool> {
        self.swap(|s| &mut s.sync, version, None).await
    }

    async fn write_status(&self, status: &Status) -> DcsResult<()> {
        self.reach().await?.status = status.clone();
        Ok(())
    }

    async fn watch(&self, timeout: Duration) -> bool {
        let mut seen = {
            let guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            guard.clone()
        };
        // A lapsing lock is a change too: wake when it would expire.
        let expiry = self.store.leader_expires();
        let deadline = Instant::now() + timeout;
        let wake_at = expiry.map_or(deadline, |e| e.min(deadline));
        let woke = tokio::select! {
            changed = seen.changed() => changed.is_ok(),
            _ = tokio::time::sleep_until(wake_at) => {
                // At the lock's expiry: expire it now, so this and every other watcher see it.
                self.store.leader();
                let lapsed = seen.has_changed().unwrap_or(false);
                seen.borrow_and_update();
                lapsed
            }
        };
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        woke
    }

    async fn close(&self) -> DcsResult<()> {
        let mut state = self.reach().await?;
        state.members.remove(&self.name);
        let held = state.leader.as_ref().is_some_and(|l| l.value == self.name);
        if held {
            state.leader = None;
            state.next_version();
        }
        drop(state);
        if held {
            self.store.notify();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        ttl: 10,
        loop_wait: 2,
        retry_timeout: 3,
    };

    fn two() -> (MemoryStore, MemoryDcs, MemoryDcs) {
        let store = MemoryStore::new();
        let a = store.client("a", TIMING);
        let b = store.client("b", TIMING);
        (store, a, b)
    }

    #[tokio::test(start_paused = true)]
    async fn the_lock_is_exclusive_renewed_by_its_holder_and_lapses_after_ttl() {
        let (store, a, b) = two();
        assert!(a.attempt_to_acquire_leader().await.unwrap());
        assert!(!b.attempt_to_acquire_leader().await.unwrap());
        let view = b.get_cluster().await.unwrap();
        assert_eq!(view.leader_name(), Some("a"));
        assert!(!b.update_leader(&view, None, None).await.unwrap());
        assert!(!b.delete_leader(None).await.unwrap());

        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(a.update_leader(&view, Some(42), None).await.unwrap());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(store.leader().as_deref(), Some("a"), "renewed 9 s ago");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(store.leader(), None, "ttl passed since the renew");
        assert_eq!(b.get_cluster().await.unwrap().status.optime, Some(42));
        assert!(b.attempt_to_acquire_leader().await.unwrap());
        let view = a.get_cluster().await.unwrap();
        assert!(!a.update_leader(&view, None, None).await.unwrap());
        assert!(b.delete_leader(Some(50)).await.unwrap());
        assert_eq!(a.get_cluster().await.unwrap().leader, None);
    }

    #[tokio::test(start_paused = true)]
    async fn racing_writes_compare_versions() {
        let (_store, a, b) = two();
        assert!(a
            .set_config_value(&serde_json::json!({"ttl": 10}), None)
            .await
            .unwrap());
        let seen = b.get_cluster().await.unwrap().config.unwrap().version;
        assert!(a
            .set_config_value(&serde_json::json!({"ttl": 20}), seen.as_deref())
            .await
            .unwrap());
        assert!(
            !b.set_config_value(&serde_json::json!({"ttl": 30}), seen.as_deref())
                .await
                .unwrap(),
            "b's version is stale"
        );
        assert_eq!(
            a.get_cluster().await.unwrap().config.unwrap().raw["ttl"],
            20
        );

        let request = Failover {
            leader: Some("a".into()),
            member: Some("b".into()),
            ..Failover::default()
        };
        assert!(
            !a.delete_failover(Some("1")).await.unwrap(),
            "nothing to delete at that version"
        );
        assert!(a.set_failover_value(&request, None).await.unwrap());
        let version = b.get_cluster().await.unwrap().failover.unwrap().version;
        assert!(!b.delete_failover(Some("0")).await.unwrap());
        assert!(b.delete_failover(version.as_deref()).await.unwrap());

        assert!(a.initialize(true, "").await.unwrap());
        assert!(!b.initialize(true, "").await.unwrap());
        assert!(a.initialize(false, "7000").await.unwrap());
        assert_eq!(
            b.get_cluster().await.unwrap().initialize.as_deref(),
            Some("7000")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn members_lapse_without_touches_and_close_releases_everything() {
        let (_store, a, b) = two();
        a.touch_member(&MemberData::default()).await.unwrap();
        b.touch_member(&MemberData::default()).await.unwrap();
        assert!(a.attempt_to_acquire_leader().await.unwrap());
        tokio::time::advance(Duration::from_secs(6)).await;
        b.touch_member(&MemberData::default()).await.unwrap();
        let view = a.get_cluster().await.unwrap();
        assert!(a.update_leader(&view, None, None).await.unwrap());
        tokio::time::advance(Duration::from_secs(6)).await;
        let names: Vec<String> = a
            .get_cluster()
            .await
            .unwrap()
            .members
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["b"], "a touched its key 12 s ago");
        a.close().await.unwrap();
        assert_eq!(b.get_cluster().await.unwrap().leader, None);
    }

    #[tokio::test(start_paused = true)]
    async fn watch_wakes_on_lock_changes_and_expiry_not_on_member_touches() {
        let (_store, a, b) = two();
        assert!(!b.watch(Duration::from_secs(1)).await, "nothing happened");
        a.touch_member(&MemberData::default()).await.unwrap();
        assert!(
            !b.watch(Duration::from_secs(1)).await,
            "a member touch does not wake"
        );
        assert!(a.attempt_to_acquire_leader().await.unwrap());
        let started = Instant::now();
        assert!(
            b.watch(Duration::from_secs(30)).await,
            "the lock was taken before the call"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        // The lock lapses 10 s after it was taken: the watch wakes then, not at its timeout.
        assert!(b.watch(Duration::from_secs(30)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(b.get_cluster().await.unwrap().leader, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_off_member_fails_while_the_others_go_on() {
        let (store, a, b) = two();
        store.cut("a", Some(Cut::Refused));
        assert!(matches!(
            a.get_cluster().await,
            Err(DcsError::Unreachable(_))
        ));
        assert!(b.attempt_to_acquire_leader().await.unwrap());
        store.cut("b", Some(Cut::Silent));
        let started = Instant::now();
        assert!(matches!(
            b.get_cluster().await,
            Err(DcsError::Unreachable(_))
        ));
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(3),
            "hangs for retry_timeout"
        );
        assert_eq!(store.cut_members().len(), 2);
        store.cut("a", None);
        assert_eq!(a.get_cluster().await.unwrap().leader_name(), Some("b"));
    }
}
