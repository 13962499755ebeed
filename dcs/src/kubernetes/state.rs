//! What this member knows about its group's objects, shared by the requests and the watch tasks:
//! the latest version of each kind object, the lock liveness tracker and the Pod cache.
//!
//! Lock liveness (docs/compatibility.md, *Kubernetes*): readers never compare `renewTime` with their clock. They
//! remember the lock record (`leader`, `acquireTime`, `ttl`, `renewTime`, `transitions`) and the
//! local instant it last changed; the lock counts as held while that instant + `ttl` is not past.
//! A holder that renewed at T (after its call started at S ≤ T) is seen changing at some T' ≥ T,
//! so every reader keeps the lock alive until at least S + ttl — the holder's own safe deadline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::objects::{self, Layout, LeaderRecord};

/// Tracks when the lock record last changed, in local time.
#[derive(Debug, Default, Clone)]
pub(crate) struct LockTracker {
    observed: LeaderRecord,
    changed_at: Option<Instant>,
    /// The last record that named a holder: what a holder re-creates its deleted object from,
    /// even after the deletion itself has been observed.
    last_held: LeaderRecord,
}

impl LockTracker {
    /// Record the lock fields seen now; only a change restarts the clock.
    pub(crate) fn observe(&mut self, record: LeaderRecord, now: Instant) {
        if (!record.is_empty() || !self.observed.is_empty()) && record != self.observed {
            if record.leader().is_some() {
                self.last_held = record.clone();
            }
            self.observed = record;
            self.changed_at = Some(now);
        }
    }

    pub(crate) fn last_held(&self) -> &LeaderRecord {
        &self.last_held
    }

    pub(crate) fn observed(&self) -> &LeaderRecord {
        &self.observed
    }

    /// The holder while the lock looks alive at `now`; `default_ttl` when the record has none.
    pub(crate) fn holder(&self, default_ttl: u32, now: Instant) -> Option<&str> {
        self.lease(default_ttl)
            .and_then(|(holder, expires)| (expires >= now).then_some(holder))
    }

    /// The holder and the last instant its lock counts as held, unless nobody holds it.
    pub(crate) fn lease(&self, default_ttl: u32) -> Option<(&str, Instant)> {
        let holder = self.observed.leader()?;
        let ttl = self
            .observed
            .ttl()
            .unwrap_or_else(|| u64::from(default_ttl.max(1)));
        Some((holder, self.changed_at? + Duration::from_secs(ttl)))
    }
}

/// Whose object an offer to [`KindState`] is, which decides the lock tracker it feeds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Owner<'a> {
    /// One of our group's objects; the one named `leader` feeds our lock tracker.
    Ours { leader: &'a str },
    /// Another Citus group's leader object, with a tracker of its own.
    OtherGroupLeader,
}

impl<'a> Owner<'a> {
    /// The owner of `name`, an object `layout`'s watch follows.
    pub(crate) fn of(layout: &'a Layout, name: &str) -> Owner<'a> {
        if layout.is_ours(name) {
            Owner::Ours {
                leader: &layout.leader,
            }
        } else {
            Owner::OtherGroupLeader
        }
    }
}

/// Our group's kind objects (latest version seen from any source) and the lock tracker fed by
/// every change of the leader object. With Citus also the other groups' leader objects, each
/// with its own tracker, judged the same way (they arrive anyway: the selector spans all groups).
#[derive(Debug, Default)]
pub(crate) struct KindState {
    objects: HashMap<String, Value>,
    tracker: LockTracker,
    /// Other Citus groups' lock trackers, by leader object name.
    other_trackers: HashMap<String, LockTracker>,
    /// The leader object as of the last `get_cluster` (outer `None`: nothing read yet).
    last_read_leader: Option<Option<Value>>,
    /// Our objects as of the last `get_cluster`, the baseline of the first watch LIST.
    last_read: Option<HashMap<String, Value>>,
}

impl KindState {
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.objects.get(name)
    }

    pub(crate) fn tracker(&self) -> &LockTracker {
        &self.tracker
    }

    /// Offer a newer version of `name` (`None`: absent/deleted as of `rv`). Older information
    /// than what we have is ignored, so LIST results and watch events may arrive in any order.
    /// Returns whether anything changed.
    pub(crate) fn offer(
        &mut self,
        owner: Owner<'_>,
        name: &str,
        obj: Option<Value>,
        rv: Option<&str>,
        now: Instant,
    ) -> bool {
        let changed = self.store(name, obj, rv);
        match owner {
            Owner::Ours { leader } => {
                if changed && name == leader {
                    let record = LeaderRecord::from_object(self.objects.get(name));
                    self.tracker.observe(record, now);
                }
            }
            Owner::OtherGroupLeader => {
                let tracked = self.other_trackers.contains_key(name);
                if changed || !tracked {
                    // Even "absent" starts the tracker, so the group is known from now on.
                    let record = LeaderRecord::from_object(self.objects.get(name));
                    self.other_trackers
                        .entry(name.to_string())
                        .or_default()
                        .observe(record, now);
                }
            }
        }
        changed
    }

    /// The holder of another group's lock while it looks alive at `now`.
    pub(crate) fn other_holder(&self, name: &str, default_ttl: u32, now: Instant) -> Option<&str> {
        self.other_trackers.get(name)?.holder(default_ttl, now)
    }

    /// Leader object names of the other groups seen so far.
    pub(crate) fn other_leader_names(&self) -> Vec<String> {
        self.other_trackers.keys().cloned().collect()
    }

    /// Keep a newer version of `name` (`None`: absent as of `rv`); older information is ignored.
    fn store(&mut self, name: &str, obj: Option<Value>, rv: Option<&str>) -> bool {
        let current_rv = self.objects.get(name).and_then(objects::resource_version);
        match obj {
            Some(obj) => {
                let new_rv = objects::resource_version(&obj);
                if self.objects.contains_key(name) && !objects::rv_newer(new_rv, current_rv) {
                    return false;
                }
                self.objects.insert(name.to_string(), obj);
                true
            }
            None => {
                if !self.objects.contains_key(name) {
                    return false;
                }
                if rv.is_some() && !objects::rv_newer(rv, current_rv) {
                    return false;
                }
                self.objects.remove(name);
                true
            }
        }
    }

    /// The first observation of the leader object (even "absent") starts the tracker.
    pub(crate) fn note_read(&mut self, leader_name: &str, ours: HashMap<String, Value>) {
        self.last_read_leader = Some(ours.get(leader_name).cloned());
        self.last_read = Some(ours);
    }

    pub(crate) fn last_read_leader(&self) -> Option<Option<&Value>> {
        self.last_read_leader.as_ref().map(Option::as_ref)
    }

    pub(crate) fn last_read(&self) -> Option<&HashMap<String, Value>> {
        self.last_read.as_ref()
    }
}

/// Pods matching the selector, fed by the Pod watch.
#[derive(Debug, Default)]
pub(crate) struct PodCache {
    pub synced: bool,
    pub pods: HashMap<String, Value>,
}

impl PodCache {
    /// Replace everything with a LIST result.
    pub(crate) fn replace(&mut self, items: Vec<Value>) {
        self.pods = items
            .into_iter()
            .filter_map(|p| objects::name(&p).map(|n| (n.to_string(), p.clone())))
            .collect();
        self.synced = true;
    }

    /// Apply a newer Pod version (older ones are ignored).
    pub(crate) fn offer(&mut self, pod: Value) {
        let Some(name) = objects::name(&pod).map(str::to_string) else {
            return;
        };
        let current = self.pods.get(&name).and_then(objects::resource_version);
        if !self.pods.contains_key(&name)
            || objects::rv_newer(objects::resource_version(&pod), current)
        {
            self.pods.insert(name, pod);
        }
    }

    pub(crate) fn remove(&mut self, name: &str, rv: Option<&str>) {
        let current = self.pods.get(name).and_then(objects::resource_version);
        if rv.is_none() || !objects::rv_newer(current, rv) {
            self.pods.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn leader(name: Option<&str>, renew: &str, rv: &str) -> Value {
        let mut ann =
            json!({"acquireTime": "A", "renewTime": renew, "ttl": "10", "transitions": "0"});
        if let Some(n) = name {
            ann["leader"] = json!(n);
        }
        json!({"metadata": {"name": "demo-leader", "resourceVersion": rv, "annotations": ann}})
    }

    fn record(obj: &Value) -> LeaderRecord {
        LeaderRecord::from_object(Some(obj))
    }

    #[test]
    fn lock_is_held_for_ttl_after_the_last_observed_change() {
        let t0 = Instant::now();
        let mut t = LockTracker::default();
        assert_eq!(t.holder(30, t0), None);
        // A fresh process treats an unchanged lock as held for a whole ttl.
        t.observe(record(&leader(Some("a"), "R1", "1")), t0);
        assert_eq!(t.holder(30, t0 + Duration::from_secs(10)), Some("a"));
        assert_eq!(t.holder(30, t0 + Duration::from_millis(10_001)), None);
        // Seeing the same record again does not extend it.
        t.observe(
            record(&leader(Some("a"), "R1", "1")),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(t.holder(30, t0 + Duration::from_millis(10_001)), None);
        // A renewal (new renewTime) does, whatever the timestamps say.
        t.observe(
            record(&leader(Some("a"), "R0", "2")),
            t0 + Duration::from_secs(8),
        );
        assert_eq!(t.holder(30, t0 + Duration::from_secs(18)), Some("a"));
        assert_eq!(t.holder(30, t0 + Duration::from_millis(18_001)), None);
        assert_eq!(
            t.lease(30).map(|(h, e)| (h.to_string(), e)),
            Some(("a".to_string(), t0 + Duration::from_secs(18)))
        );
        // Released: no holder at once.
        t.observe(
            record(&leader(None, "R0", "3")),
            t0 + Duration::from_secs(9),
        );
        assert_eq!(t.holder(30, t0 + Duration::from_secs(9)), None);
    }

    #[test]
    fn last_held_record_survives_a_deletion() {
        let t0 = Instant::now();
        let mut t = LockTracker::default();
        t.observe(record(&leader(Some("a"), "R1", "1")), t0);
        // The object deleted (seen through the watch before the holder renews).
        t.observe(LeaderRecord::default(), t0 + Duration::from_secs(1));
        assert_eq!(t.observed().leader(), None);
        assert_eq!(t.last_held().leader(), Some("a"));
        assert_eq!(t.last_held().get("acquireTime"), Some("A"));
    }

    #[test]
    fn ttl_annotation_wins_over_the_default() {
        let t0 = Instant::now();
        let mut t = LockTracker::default();
        let mut obj = leader(Some("a"), "R", "1");
        obj["metadata"]["annotations"]["ttl"] = json!("bogus");
        t.observe(record(&obj), t0);
        assert_eq!(t.holder(3, t0 + Duration::from_secs(3)), Some("a"));
        assert_eq!(t.holder(3, t0 + Duration::from_secs(4)), None);
        let mut t = LockTracker::default();
        t.observe(record(&leader(Some("a"), "R", "1")), t0);
        assert_eq!(t.holder(3, t0 + Duration::from_secs(9)), Some("a"));
    }

    const OURS: Owner<'static> = Owner::Ours {
        leader: "demo-leader",
    };

    #[test]
    fn old_information_never_restarts_the_clock() {
        let t0 = Instant::now();
        let mut s = KindState::default();
        assert!(s.offer(
            OURS,
            "demo-leader",
            Some(leader(Some("a"), "R2", "20")),
            None,
            t0
        ));
        // A LIST answer that was served before the watch event arrives later: ignored.
        let late = t0 + Duration::from_secs(9);
        assert!(!s.offer(
            OURS,
            "demo-leader",
            Some(leader(Some("a"), "R1", "19")),
            None,
            late
        ));
        assert!(!s.offer(OURS, "demo-leader", None, Some("19"), late));
        assert_eq!(s.tracker().holder(30, t0 + Duration::from_secs(11)), None);
        // Deleted after what we have: gone.
        assert!(s.offer(OURS, "demo-leader", None, Some("21"), late));
        assert!(s.get("demo-leader").is_none());
        assert_eq!(s.tracker().observed(), &LeaderRecord::default());
        // Other objects do not touch the tracker.
        assert!(s.offer(
            OURS,
            "demo-config",
            Some(json!({"metadata": {"resourceVersion": "5"}})),
            None,
            late
        ));
        assert!(s.tracker().observed().is_empty());
    }

    #[test]
    fn other_groups_have_their_own_trackers() {
        let t0 = Instant::now();
        let mut s = KindState::default();
        let worker = |holder: Option<&str>, renew: &str, rv: &str| {
            let mut o = leader(holder, renew, rv);
            o["metadata"]["name"] = json!("demo-1-leader");
            o
        };
        assert!(s.other_leader_names().is_empty());
        s.offer(
            Owner::OtherGroupLeader,
            "demo-1-leader",
            Some(worker(Some("w1"), "R1", "3")),
            None,
            t0,
        );
        assert_eq!(s.other_leader_names(), ["demo-1-leader"]);
        // Our own tracker is untouched.
        assert!(s.tracker().observed().is_empty());
        assert_eq!(s.other_holder("demo-1-leader", 30, t0), Some("w1"));
        // ttl annotation 10: not renewed for more than that, expired.
        let late = t0 + Duration::from_millis(10_001);
        assert_eq!(s.other_holder("demo-1-leader", 30, late), None);
        // A renewal seen later keeps it alive; older information is ignored.
        s.offer(
            Owner::OtherGroupLeader,
            "demo-1-leader",
            Some(worker(Some("w1"), "R2", "4")),
            None,
            t0 + Duration::from_secs(9),
        );
        assert!(!s.offer(
            Owner::OtherGroupLeader,
            "demo-1-leader",
            Some(worker(Some("w1"), "R1", "3")),
            None,
            late
        ));
        assert_eq!(s.other_holder("demo-1-leader", 30, late), Some("w1"));
        // Gone as of a newer list: no holder.
        assert!(s.offer(
            Owner::OtherGroupLeader,
            "demo-1-leader",
            None,
            Some("9"),
            late
        ));
        assert_eq!(s.other_holder("demo-1-leader", 30, late), None);
        // A group first seen without a leader object is tracked from then on.
        s.offer(
            Owner::OtherGroupLeader,
            "demo-2-leader",
            None,
            Some("9"),
            late,
        );
        assert_eq!(s.other_leader_names().len(), 2);
        assert_eq!(s.other_holder("unknown", 30, late), None);
    }

    #[test]
    fn pod_cache_keeps_the_newest() {
        let p = |rv: &str| json!({"metadata": {"name": "a", "resourceVersion": rv}});
        let mut c = PodCache::default();
        c.replace(vec![p("5")]);
        assert!(c.synced);
        c.offer(p("4"));
        assert_eq!(objects::resource_version(&c.pods["a"]), Some("5"));
        c.offer(p("6"));
        assert_eq!(objects::resource_version(&c.pods["a"]), Some("6"));
        c.remove("a", Some("5"));
        assert!(c.pods.contains_key("a"));
        c.remove("a", Some("7"));
        assert!(!c.pods.contains_key("a"));
    }
}
