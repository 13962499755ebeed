//! Background LIST + WATCH of the kind objects (wakes the HA loop, feeds the lock tracker) and of
//! the Pods (feeds the Pod cache only; Pod events never wake anyone).
//!
//! Each watch starts at the resourceVersion of its LIST, asks for bookmarks and ends itself after
//! a few minutes; a clean end or an error resumes from the last version seen (with backoff after
//! errors), a 410 Gone (or many errors in a row) starts again with a LIST.
//!
//! Why not kube-runtime's `watcher`: it lists, resumes from the last version, re-lists after 410
//! and announces a re-list (`Init` … `InitDone`), but this backend needs three things it does not
//! give:
//! - The LIST's resourceVersion. Every followed object absent from a LIST is offered to
//!   [`super::state::KindState`] as "absent as of that version", so a LIST served before a
//!   concurrent read (or write answer) cannot erase the newer object that read stored. The
//!   watcher keeps that version to itself (`InitDone` carries none), so an absence could only be
//!   applied blindly.
//! - The moment a watch is open again after an error. The Pod cache is marked complete then
//!   (the server replays every change since the version asked for) and readers stop listing Pods
//!   themselves; the watcher reopens without an event, so the cache would stay incomplete until
//!   the next Pod change and every `get_cluster` would LIST Pods meanwhile.
//! - Requests through [`super::client::ApiClient`]: a watcher is bound to one `kube::Client`, so it
//!   would not move to the next API server with `bypass_api_service`, its LIST and watch requests
//!   would have no time limit (the client has no read timeout: watches are long) instead of the
//!   attempt timeout, and the LIST would skip the retry rules (`Retry-After`, retriable codes,
//!   403 naming verb and resource) and the logging of `Warning` headers.
//!
//! Event lines are read leniently rather than as kube-core's `WatchEvent`, which rejects
//! bookmarks without `apiVersion`/`kind` and event types it does not know: here those are
//! skipped.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde_json::Value;

use super::client::{random_u64, status_message, Req};
use super::objects::{self, annotation, resource_version, Layout, LeaderRecord};
use super::state::Owner;
use super::Shared;

/// Server-side end of one watch request (plus jitter so members do not reconnect in step).
const WATCH_SECONDS: u64 = 240;
/// A watch that carried nothing (not even a bookmark) for this long is considered dead.
const IDLE_LIMIT: Duration = Duration::from_secs(WATCH_SECONDS + 90);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A failing watch is retried from the same resourceVersion (a 410 then says it is too old);
/// after this many failures in a row the cache is rebuilt with a LIST.
const RELIST_AFTER_ERRORS: u32 = 10;
/// Largest watch event line accepted.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Why a watch stream ended without an error.
#[derive(Debug, PartialEq)]
pub(crate) enum End {
    /// Timed out or closed: resume from the last resourceVersion.
    Closed,
    /// 410 Gone: the version is too old, LIST again.
    Expired,
}

/// One watch event.
#[derive(Debug)]
pub(crate) struct Event {
    pub kind: String,
    pub object: Value,
}

/// Annotations whose change wakes the HA loop, per object.
fn waking_annotations<'a>(layout: &Layout, name: &str) -> &'a [&'a str] {
    if name == layout.leader {
        &["leader"]
    } else if name == layout.config {
        &["config", "initialize"]
    } else if name == layout.failover {
        &["leader", "member", "scheduled_at"]
    } else if name == layout.sync {
        &["leader", "sync_standby", "quorum"]
    } else {
        &[]
    }
}

/// Does a change of `name` from `old` to `new` wake member `me`? Changes of the lock, config,
/// initialize, failover and sync annotations wake everyone; members that do not hold the lock also
/// follow every modification of the leader object (their cycles track the leader's heartbeat).
pub(crate) fn wakes(
    layout: &Layout,
    me: &str,
    name: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> bool {
    let get = |o: Option<&Value>, k: &str| o.and_then(|o| annotation(o, k)).map(str::to_string);
    if !layout.is_ours(name) {
        // Another Citus group's lock: its holder changing wakes the coordinator (which follows
        // worker primaries into pg_dist_node); renewals wake nobody.
        let other_leader = new.or(old).and_then(|o| layout.other_group_leader(o));
        let holder = |o: Option<&Value>| LeaderRecord::from_object(o).leader().map(str::to_string);
        return layout.group == Some(0) && other_leader.is_some() && holder(old) != holder(new);
    }
    if waking_annotations(layout, name)
        .iter()
        .any(|k| get(old, k) != get(new, k))
    {
        return true;
    }
    name == layout.leader
        && new.is_some()
        && old.and_then(resource_version) != new.and_then(resource_version)
        && get(new, "leader").as_deref() != Some(me)
}

/// Does this task follow the object: one of our group's, or (Citus) another group's leader
/// object, whose changes feed that group's lock tracker (and wake the coordinator)?
fn is_followed(layout: &Layout, name: &str, obj: &Value) -> bool {
    layout.is_ours(name) || (layout.group.is_some() && layout.other_group_leader(obj).is_some())
}

/// Wait `backoff`, then double it (up to [`MAX_BACKOFF`]) for the next failure.
async fn back_off(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

/// After a watch ended cleanly: a long-lived one is resumed at once; one that ended right away
/// (a proxy cutting streams short) is resumed with growing pauses so it cannot spin.
async fn closed_pause(opened: Instant, backoff: &mut Duration) {
    if opened.elapsed() >= Duration::from_secs(1) {
        *backoff = FIRST_BACKOFF;
    } else {
        back_off(backoff).await;
    }
}

/// Take every complete line off the front of `buf` as a watch event.
pub(crate) fn drain_events(buf: &mut Vec<u8>) -> Result<Vec<Event>, String> {
    let mut out = Vec::new();
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        let line = &line[..line.len() - 1];
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let v: Value =
            serde_json::from_slice(line).map_err(|e| format!("watch event is not JSON: {e}"))?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or("watch event without a type")?
            .to_string();
        let object = v.get("object").cloned().unwrap_or(Value::Null);
        out.push(Event { kind, object });
    }
    if buf.len() > MAX_LINE {
        return Err("watch event too large".into());
    }
    Ok(out)
}

/// LIST `resource` by our selector: the items and the list's resourceVersion.
async fn list(shared: &Shared, resource: &'static str) -> Result<(Vec<Value>, String), String> {
    let req = Req::list(
        resource,
        &shared.layout.namespace,
        &shared.layout.selector(),
    );
    let resp = shared
        .api
        .call(&req, shared.api.budget())
        .await
        .map_err(|e| crate::DcsError::from(e).to_string())?;
    let v = resp.json(&req).map_err(|e| e.to_string())?;
    parse_list(&v).ok_or_else(|| format!("{}: the answer is not a list", req.describe()))
}

/// Items and `metadata.resourceVersion` of a LIST answer.
pub(crate) fn parse_list(v: &Value) -> Option<(Vec<Value>, String)> {
    let items = match v.get("items") {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return None,
    };
    let rv = v
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Some((items, rv))
}

/// Follow one watch request from `rv`, calling `on_event` for every object event; `rv` moves
/// with events and bookmarks.
async fn stream(
    shared: &Shared,
    resource: &'static str,
    rv: &mut String,
    on_open: impl FnOnce(),
    mut on_event: impl FnMut(&str, Value),
) -> Result<End, String> {
    let seconds = WATCH_SECONDS + random_u64() % 30;
    let req = Req::watch(
        resource,
        &shared.layout.namespace,
        &shared.layout.selector(),
        rv,
        seconds,
    );
    let (status, mut body) = shared
        .api
        .open_stream(
            &req,
            shared.api.attempt_timeout().max(Duration::from_secs(2)),
        )
        .await?;
    if status == 410 {
        return Ok(End::Expired);
    }
    if !(200..300).contains(&status) {
        let text = tokio::time::timeout(Duration::from_secs(2), body.collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|c| status_message(&c.to_bytes()))
            .unwrap_or_default();
        return Err(format!("{}: HTTP {status}: {text}", req.describe()));
    }
    on_open();
    let mut buf = Vec::new();
    loop {
        let frame = match tokio::time::timeout(IDLE_LIMIT, body.frame()).await {
            Err(_) => return Ok(End::Closed),
            Ok(None) => return Ok(End::Closed),
            Ok(Some(Err(e))) => return Err(format!("{}: {e}", req.describe())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        for ev in drain_events(&mut buf)? {
            match ev.kind.as_str() {
                "ADDED" | "MODIFIED" | "DELETED" => {
                    if let Some(v) = resource_version(&ev.object) {
                        *rv = v.to_string();
                    }
                    on_event(&ev.kind, ev.object);
                }
                "BOOKMARK" => {
                    if let Some(v) = resource_version(&ev.object) {
                        *rv = v.to_string();
                    }
                }
                "ERROR" => {
                    if ev.object.get("code").and_then(Value::as_u64) == Some(410) {
                        return Ok(End::Expired);
                    }
                    let msg = ev
                        .object
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("no message");
                    return Err(format!("{}: error event: {msg}", req.describe()));
                }
                other => tracing::debug!(event = other, "unexpected watch event type"),
            }
        }
    }
}

/// Keep our group's kind objects current and wake the HA loop when something that matters
/// changes. Runs until aborted.
pub(crate) async fn run_kinds(shared: Arc<Shared>) {
    let layout = &shared.layout;
    let resource = layout.kind.resource();
    // This task's own view of our objects, to tell what an event changed.
    let mut seen: Option<HashMap<String, Value>> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let (items, list_rv) = match list(&shared, resource).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "kubernetes watch: LIST failed");
                back_off(&mut backoff).await;
                continue;
            }
        };
        let ours: HashMap<String, Value> = items
            .into_iter()
            .filter_map(|o| {
                let n = objects::name(&o)?.to_string();
                is_followed(layout, &n, &o).then_some((n, o))
            })
            .collect();
        // The first baseline is the last cluster read, so a change between that read and this
        // LIST still wakes the loop; later LISTs compare with what this task saw before.
        let baseline = match seen.take() {
            Some(s) => s,
            None => shared
                .kinds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last_read()
                .cloned()
                .unwrap_or_else(|| ours.clone()),
        };
        let mut names: BTreeSet<&str> = layout.names().into_iter().collect();
        names.extend(baseline.keys().map(String::as_str));
        names.extend(ours.keys().map(String::as_str));
        let wake = names
            .iter()
            .any(|n| wakes(layout, &shared.name, n, baseline.get(*n), ours.get(*n)));
        {
            let now = Instant::now();
            let mut st = shared.kinds.lock().unwrap_or_else(|p| p.into_inner());
            for n in names {
                st.offer(
                    Owner::of(layout, n),
                    n,
                    ours.get(n).cloned(),
                    Some(&list_rv),
                    now,
                );
            }
        }
        if wake {
            shared.notify.notify_one();
        }
        let mut view = ours;
        let mut rv = list_rv;
        let mut errors = 0u32;
        loop {
            let opened = Instant::now();
            let outcome = stream(
                &shared,
                resource,
                &mut rv,
                || {},
                |kind, obj| {
                    let Some(name) = objects::name(&obj).map(str::to_string) else {
                        return;
                    };
                    if !is_followed(layout, &name, &obj) {
                        return;
                    }
                    let old = view.get(&name);
                    let new_rv = resource_version(&obj);
                    if old.is_some() && !objects::rv_newer(new_rv, old.and_then(resource_version)) {
                        return;
                    }
                    let new = (kind != "DELETED").then_some(&obj);
                    if wakes(layout, &shared.name, &name, old, new) {
                        tracing::debug!(object = %name, event = kind, "kubernetes watch: wake-up");
                        shared.notify.notify_one();
                    }
                    {
                        let mut st = shared.kinds.lock().unwrap_or_else(|p| p.into_inner());
                        st.offer(
                            Owner::of(layout, &name),
                            &name,
                            new.cloned(),
                            new_rv,
                            Instant::now(),
                        );
                    }
                    if kind == "DELETED" {
                        view.remove(&name);
                    } else {
                        view.insert(name, obj);
                    }
                },
            )
            .await;
            match outcome {
                Ok(End::Closed) => {
                    errors = 0;
                    closed_pause(opened, &mut backoff).await;
                }
                Ok(End::Expired) => {
                    tracing::debug!("kubernetes watch: resourceVersion expired, listing again");
                    break;
                }
                Err(e) => {
                    errors += 1;
                    tracing::debug!(error = %e, errors, "kubernetes watch failed");
                    back_off(&mut backoff).await;
                    if errors >= RELIST_AFTER_ERRORS {
                        break;
                    }
                }
            }
        }
        seen = Some(view);
    }
}

/// Keep the Pod cache current. Runs until aborted.
pub(crate) async fn run_pods(shared: Arc<Shared>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let (items, list_rv) = match list(&shared, "pods").await {
            Ok(l) => l,
            Err(e) => {
                shared.pods.lock().unwrap_or_else(|p| p.into_inner()).synced = false;
                tracing::debug!(error = %e, "kubernetes pod watch: LIST failed");
                back_off(&mut backoff).await;
                continue;
            }
        };
        shared
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(items);
        let mut rv = list_rv;
        let mut errors = 0u32;
        let failed = loop {
            let resumed = || {
                // Events since `rv` are replayed by the server: the cache is complete again.
                shared.pods.lock().unwrap_or_else(|p| p.into_inner()).synced = true;
            };
            let opened = Instant::now();
            let outcome = stream(&shared, "pods", &mut rv, resumed, |kind, obj| {
                let mut cache = shared.pods.lock().unwrap_or_else(|p| p.into_inner());
                if kind == "DELETED" {
                    if let Some(n) = objects::name(&obj) {
                        cache.remove(n, resource_version(&obj));
                    }
                } else {
                    cache.offer(obj);
                }
            })
            .await;
            match outcome {
                Ok(End::Closed) => {
                    errors = 0;
                    closed_pause(opened, &mut backoff).await;
                }
                Ok(End::Expired) => break false,
                Err(e) => {
                    errors += 1;
                    tracing::debug!(error = %e, errors, "kubernetes pod watch failed");
                    // Changes may be missed until the watch is back: readers LIST Pods.
                    shared.pods.lock().unwrap_or_else(|p| p.into_inner()).synced = false;
                    if errors >= RELIST_AFTER_ERRORS {
                        break true;
                    }
                    back_off(&mut backoff).await;
                }
            }
        };
        // Until the next LIST the cache may miss changes: readers LIST pods themselves.
        shared.pods.lock().unwrap_or_else(|p| p.into_inner()).synced = false;
        if failed {
            back_off(&mut backoff).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn layout() -> Layout {
        Layout::new(
            "demo",
            None,
            "default",
            &BTreeMap::new(),
            "cluster-name",
            false,
        )
    }

    fn obj(name: &str, rv: &str, ann: Value) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": rv, "annotations": ann}})
    }

    #[test]
    fn what_wakes_whom() {
        let l = layout();
        let a1 = obj("demo-leader", "1", json!({"leader": "a", "renewTime": "1"}));
        let a2 = obj("demo-leader", "2", json!({"leader": "a", "renewTime": "2"}));
        let released = obj("demo-leader", "3", json!({"renewTime": "2"}));
        // A renewal wakes the others, not the holder.
        assert!(wakes(&l, "b", "demo-leader", Some(&a1), Some(&a2)));
        assert!(!wakes(&l, "a", "demo-leader", Some(&a1), Some(&a2)));
        // A release or a new holder wakes everyone.
        assert!(wakes(&l, "a", "demo-leader", Some(&a2), Some(&released)));
        assert!(wakes(&l, "a", "demo-leader", None, Some(&a1)));
        assert!(wakes(&l, "a", "demo-leader", Some(&a1), None));
        // Same version seen twice: nothing happened.
        assert!(!wakes(&l, "b", "demo-leader", Some(&a1), Some(&a1)));
        // Config: the config and initialize annotations, not history.
        let config = |rv, annotations| obj("demo-config", rv, annotations);
        let c1 = config("4", json!({"config": "{}", "history": "[]"}));
        let c2 = config("5", json!({"config": "{}", "history": "[[1,2,\"x\"]]"}));
        let c3 = config("6", json!({"config": "{}", "initialize": ""}));
        assert!(!wakes(&l, "b", "demo-config", Some(&c1), Some(&c2)));
        assert!(wakes(&l, "b", "demo-config", Some(&c2), Some(&c3)));
        assert!(wakes(&l, "b", "demo-config", None, Some(&c1)));
        let f = obj("demo-failover", "7", json!({"member": "b"}));
        assert!(wakes(&l, "a", "demo-failover", None, Some(&f)));
        let sync = |rv, standby| {
            obj(
                "demo-sync",
                rv,
                json!({"leader": "a", "sync_standby": standby}),
            )
        };
        let (s1, s2) = (sync("8", "b"), sync("9", "c"));
        assert!(wakes(&l, "a", "demo-sync", Some(&s1), Some(&s2)));
        // Objects of other groups or clusters never wake.
        assert!(!wakes(&l, "a", "other-leader", None, Some(&a1)));
    }

    #[test]
    fn worker_lock_holder_changes_wake_only_the_coordinator() {
        let citus = |group| {
            Layout::new(
                "demo",
                Some(group),
                "default",
                &BTreeMap::new(),
                "cluster-name",
                false,
            )
        };
        let (coordinator, worker) = (citus(0), citus(2));
        let w1 = |holder: Option<&str>, renew: &str, rv: &str| {
            let mut ann = json!({"renewTime": renew, "ttl": "30"});
            if let Some(h) = holder {
                ann["leader"] = json!(h);
            }
            json!({"metadata": {"name": "demo-1-leader", "resourceVersion": rv,
                "labels": {"cluster-name": "demo", "citus-group": "1"}, "annotations": ann}})
        };
        let (a1, a2) = (w1(Some("a"), "1", "1"), w1(Some("a"), "2", "2"));
        let (b3, free) = (w1(Some("b"), "3", "3"), w1(None, "3", "4"));
        let name = "demo-1-leader";
        // A new holder, a release, a deletion, a first appearance: the coordinator wakes.
        assert!(wakes(&coordinator, "c", name, Some(&a2), Some(&b3)));
        assert!(wakes(&coordinator, "c", name, Some(&b3), Some(&free)));
        assert!(wakes(&coordinator, "c", name, Some(&b3), None));
        assert!(wakes(&coordinator, "c", name, None, Some(&a1)));
        // Renewals do not; another worker group is never woken by them.
        assert!(!wakes(&coordinator, "c", name, Some(&a1), Some(&a2)));
        assert!(!wakes(&worker, "w", name, Some(&a2), Some(&b3)));
        // Other objects of a worker group do not wake the coordinator.
        let mut config = a1.clone();
        config["metadata"]["name"] = json!("demo-1-config");
        assert!(!wakes(
            &coordinator,
            "c",
            "demo-1-config",
            None,
            Some(&config)
        ));
        assert!(is_followed(&coordinator, name, &a1));
        assert!(is_followed(&worker, name, &a1));
        assert!(!is_followed(&coordinator, "demo-1-config", &config));
        assert!(!is_followed(&layout(), name, &a1));
    }

    #[test]
    fn events_split_across_chunks() {
        let stream = b"{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"a\",\"resourceVersion\":\"5\"}}}\n\n{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{\"resourceVersion\":\"9\"}}}\n{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410}}\n";
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(7) {
            buf.extend_from_slice(chunk);
            got.extend(drain_events(&mut buf).unwrap());
        }
        assert!(buf.is_empty());
        let kinds: Vec<_> = got.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["ADDED", "BOOKMARK", "ERROR"]);
        assert_eq!(got[2].object["code"], 410);
        let mut bad = b"{nope}\n".to_vec();
        assert!(drain_events(&mut bad).is_err());
    }

    #[test]
    fn list_answers() {
        let (items, rv) = parse_list(&json!({"kind": "ConfigMapList", "metadata": {"resourceVersion": "17"}, "items": [{"a": 1}]})).unwrap();
        assert_eq!((items.len(), rv.as_str()), (1, "17"));
        let (items, _) = parse_list(&json!({"metadata": {}, "items": null})).unwrap();
        assert!(items.is_empty());
        assert!(parse_list(&json!({"items": {}})).is_none());
    }
}
