//! The object store: every object of every resource under one mutex, one global
//! resourceVersion counter (like etcd's revision), a bounded window of recent events per
//! resource for watches to resume from, and a broadcast channel for live watchers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::objects::{
    self, allocate_cluster_ip, meta_mut, meta_str, normalize, prepare_create, prepare_update,
    random_suffix, validate, validate_update, with_type,
};
use super::patch::{self, PatchFailure, PatchType};
use super::resources::{self, ResourceDef, RESOURCES};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change. `object` is the new state (for a deletion: the last state, carrying the
/// deletion's resourceVersion); `prev` the state before (none for a creation).
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub resource: &'static ResourceDef,
    pub event_type: EventType,
    pub object: Value,
    pub prev: Option<Value>,
}

/// Which objects a LIST, WATCH or DELETE collection covers.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, object: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if meta_str(object, "namespace") != ns {
                return false;
            }
        }
        self.labels
            .matches(objects::meta(object).and_then(|m| m.get("labels")))
            && self.fields.matches(object)
    }
}

/// DeleteOptions.preconditions.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// Where a new watch starts.
pub enum WatchStart {
    /// Replay these stored events (resourceVersion given and still in the window).
    Events(Vec<Arc<Event>>),
    /// Send every current object as ADDED (no resourceVersion, or "0").
    Objects(Vec<Value>),
}

#[derive(Default)]
struct Window {
    events: VecDeque<Arc<Event>>,
    /// A watch from a resourceVersion below this misses evicted events: 410 Gone.
    min_rv: u64,
}

struct Inner {
    rv: u64,
    /// plural → (namespace, name) → object (stored without kind/apiVersion).
    objects: HashMap<&'static str, BTreeMap<(String, String), Value>>,
    windows: HashMap<&'static str, Window>,
    cluster_ips: u64,
}

pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
    window: usize,
}

type Key = (String, String);

impl Inner {
    /// A copy of the stored object `key` of `res`, if any.
    fn stored(&self, res: &ResourceDef, key: &Key) -> Option<Value> {
        self.objects
            .get(res.plural)
            .and_then(|m| m.get(key))
            .cloned()
    }
}

impl Store {
    /// A store holding what a fresh cluster has: the system namespaces and the `kubernetes`
    /// Service. `window` is how many events per resource stay available to resuming watches.
    pub fn new(window: usize) -> Store {
        let (events, _) = broadcast::channel(4096);
        let store = Store {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: HashMap::new(),
                windows: HashMap::new(),
                cluster_ips: 0,
            }),
            events,
            window: window.max(1),
        };
        let namespaces = must(resources::find("", "v1", "namespaces"));
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let created = store.create(namespaces, "", json!({"metadata": {"name": ns}}), false);
            if let Err(e) = created {
                panic!("seeding namespace {ns}: {}", e.message);
            }
        }
        let services = must(resources::find("", "v1", "services"));
        let seeded = store.create(
            services,
            "default",
            json!({
                "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}
            }),
            false,
        );
        if let Err(e) = seeded {
            panic!("seeding the kubernetes service: {}", e.message);
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, res: &'static ResourceDef, ns: &str, name: &str) -> Result<Value, ApiError> {
        let inner = self.lock();
        inner
            .objects
            .get(res.plural)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .map(|o| with_type(res, o))
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Matching objects, ordered by namespace and name, and the current resourceVersion.
    pub fn list(&self, res: &'static ResourceDef, filter: &Filter) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .get(res.plural)
            .map(|m| m.values().filter(|o| filter.matches(o)).cloned().collect())
            .unwrap_or_default();
        (items, inner.rv)
    }

    pub fn create(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        mut object: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(format!(
                "the body of a {} must be a JSON object",
                res.kind
            )));
        }
        if !meta_str(&object, "resourceVersion").is_empty() {
            // What etcd storage answers; kubectl users meet it creating exported objects.
            return Err(ApiError::new(
                500,
                "InternalError",
                "Internal error occurred: resourceVersion should not be set on objects to be \
                 created",
            ));
        }
        let mut inner = self.lock();
        check_namespace(&inner, res, ns)?;
        let body_ns = meta_str(&object, "namespace");
        if res.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the \
                 request",
            ));
        }
        if meta_str(&object, "name").is_empty() {
            let prefix = meta_str(&object, "generateName").to_string();
            if !prefix.is_empty() {
                meta_mut(&mut object)
                    .insert("name".into(), json!(format!("{prefix}{}", random_suffix())));
            }
        }
        prepare_create(res, ns, &mut object);
        if res.kind == "Service" {
            inner.cluster_ips += 1;
            allocate_cluster_ip(&mut object, inner.cluster_ips);
        }
        normalize(&mut object);
        validate(res, &object)?;
        let key = (
            if res.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            meta_str(&object, "name").to_string(),
        );
        let exists = inner
            .objects
            .get(res.plural)
            .is_some_and(|m| m.contains_key(&key));
        if exists {
            return Err(ApiError::already_exists(res, &key.1));
        }
        if dry_run {
            return Ok(with_type(res, &object));
        }
        Ok(self.commit(&mut inner, res, key, Some(object), EventType::Added))
    }

    /// PUT: replace the object (or its status). A non-empty `metadata.resourceVersion` in the
    /// body must be the current one. The flag tells whether the object was created (Endpoints
    /// allow create on update).
    pub fn update(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        name: &str,
        subresource: Option<&str>,
        object: Value,
        dry_run: bool,
    ) -> Result<(Value, bool), ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(format!(
                "the body of a {} must be a JSON object",
                res.kind
            )));
        }
        let body_name = meta_str(&object, "name");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = meta_str(&object, "namespace");
        if res.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the \
                 request",
            ));
        }
        let mut inner = self.lock();
        let key = object_key(res, ns, name);
        let Some(old) = inner.stored(res, &key) else {
            if res.create_on_update && subresource.is_none() {
                drop(inner);
                return self.create(res, ns, object, dry_run).map(|o| (o, true));
            }
            return Err(ApiError::not_found(res, name));
        };
        self.write_update(&mut inner, res, key, &old, object, subresource, dry_run)
            .map(|o| (o, false))
    }

    /// PATCH of any type; a resourceVersion the patch sets must be the current one.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        name: &str,
        subresource: Option<&str>,
        patch_body: &Value,
        patch_type: PatchType,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = object_key(res, ns, name);
        let old = inner
            .stored(res, &key)
            .ok_or_else(|| ApiError::not_found(res, name))?;
        let typed = with_type(res, &old);
        let patched =
            patch::apply(&typed, patch_body, patch_type, res.kind).map_err(|e| match e {
                PatchFailure::BadRequest(m) => ApiError::bad_request(m),
                PatchFailure::Invalid(m) => ApiError::patch_rejected(&m),
            })?;
        self.write_update(&mut inner, res, key, &old, patched, subresource, dry_run)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_update(
        &self,
        inner: &mut Inner,
        res: &'static ResourceDef,
        key: Key,
        old: &Value,
        mut new: Value,
        subresource: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let current_rv = meta_str(old, "resourceVersion").to_string();
        let given_rv = meta_str(&new, "resourceVersion").to_string();
        if !given_rv.is_empty() && given_rv != current_rv {
            return Err(ApiError::modified(res, &key.1));
        }
        let (given_uid, current_uid) = (meta_str(&new, "uid"), meta_str(old, "uid"));
        if !given_uid.is_empty() && given_uid != current_uid {
            return Err(ApiError::conflict(
                res,
                &key.1,
                &format!(
                    "Precondition failed: UID in precondition: {given_uid}, UID in object meta: \
                     {current_uid}"
                ),
            ));
        }
        if let Value::Object(m) = &mut new {
            m.remove("kind");
            m.remove("apiVersion");
        }
        prepare_update(res, old, &mut new, subresource);
        normalize(&mut new);
        validate_update(res, old, &new)?;
        let mut unchanged_new = new.clone();
        meta_mut(&mut unchanged_new).remove("resourceVersion");
        let mut unchanged_old = old.clone();
        meta_mut(&mut unchanged_old).remove("resourceVersion");
        if unchanged_new == unchanged_old || dry_run {
            // A no-op write does not bump the resourceVersion or notify watchers.
            meta_mut(&mut new).insert("resourceVersion".into(), json!(current_rv));
            return Ok(with_type(res, if dry_run { &new } else { old }));
        }
        Ok(self.commit(inner, res, key, Some(new), EventType::Modified))
    }

    pub fn delete(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        name: &str,
        preconditions: &Preconditions,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if res.kind == "Namespace" && ["default", "kube-system", "kube-public"].contains(&name) {
            return Err(ApiError {
                details: Some(json!({"name": name, "kind": "namespaces"})),
                ..ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "namespaces {} is forbidden: this namespace may not be deleted",
                        super::status::go_quote(name)
                    ),
                )
            });
        }
        let mut inner = self.lock();
        let key = object_key(res, ns, name);
        let old = inner
            .stored(res, &key)
            .ok_or_else(|| ApiError::not_found(res, name))?;
        let failed = |what: &str, wanted: &str, actual: &str| {
            ApiError::conflict(
                res,
                name,
                &format!(
                    "StorageError: invalid object, Code: 4, Key: /registry/{}/{}{name}, \
                     ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {what} in \
                     precondition: {wanted}, {what} in object meta: {actual}",
                    res.plural,
                    if res.namespaced {
                        format!("{ns}/")
                    } else {
                        String::new()
                    },
                ),
            )
        };
        if let Some(uid) = &preconditions.uid {
            let actual = meta_str(&old, "uid");
            if uid != actual {
                return Err(failed("UID", uid, actual));
            }
        }
        if let Some(rv) = &preconditions.resource_version {
            let actual = meta_str(&old, "resourceVersion");
            if rv != actual {
                return Err(failed("ResourceVersion", rv, actual));
            }
        }
        if dry_run {
            return Ok(with_type(res, &old));
        }
        if res.kind == "Namespace" {
            // Stand-in for the namespace controller: the content goes with the namespace.
            for other in RESOURCES.iter().filter(|r| r.namespaced) {
                let keys: Vec<Key> = inner
                    .objects
                    .get(other.plural)
                    .map(|m| m.keys().filter(|(n, _)| n == name).cloned().collect())
                    .unwrap_or_default();
                for k in keys {
                    self.commit(&mut inner, other, k, None, EventType::Deleted);
                }
            }
        }
        Ok(self.commit(&mut inner, res, key, None, EventType::Deleted))
    }

    pub fn delete_collection(
        &self,
        res: &'static ResourceDef,
        filter: &Filter,
        dry_run: bool,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let mut inner = self.lock();
        let keys: Vec<Key> = inner
            .objects
            .get(res.plural)
            .map(|m| {
                m.iter()
                    .filter(|(_, o)| filter.matches(o))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut deleted = Vec::new();
        for key in keys {
            if dry_run {
                if let Some(o) = inner.objects.get(res.plural).and_then(|m| m.get(&key)) {
                    deleted.push(o.clone());
                }
            } else {
                let gone = self.commit(&mut inner, res, key, None, EventType::Deleted);
                deleted.push(gone);
            }
        }
        Ok((deleted, inner.rv))
    }

    /// Record a change: next resourceVersion, store or remove, remember and broadcast the
    /// event. Returns the object as written (with kind), for a deletion its last state.
    fn commit(
        &self,
        inner: &mut Inner,
        res: &'static ResourceDef,
        key: Key,
        new: Option<Value>,
        event_type: EventType,
    ) -> Value {
        inner.rv += 1;
        let rv = inner.rv;
        let map = inner.objects.entry(res.plural).or_default();
        let prev = map.get(&key).cloned();
        let mut object = match new {
            Some(mut o) => {
                meta_mut(&mut o).insert("resourceVersion".into(), json!(rv.to_string()));
                map.insert(key, o.clone());
                o
            }
            None => {
                let mut last = map.remove(&key).unwrap_or_else(|| json!({}));
                meta_mut(&mut last).insert("resourceVersion".into(), json!(rv.to_string()));
                last
            }
        };
        object = with_type(res, &object);
        let event = Arc::new(Event {
            rv,
            resource: res,
            event_type,
            object: object.clone(),
            prev: prev.map(|p| with_type(res, &p)),
        });
        let window = inner.windows.entry(res.plural).or_default();
        window.events.push_back(event.clone());
        while window.events.len() > self.window {
            if let Some(evicted) = window.events.pop_front() {
                window.min_rv = evicted.rv;
            }
        }
        // No receivers is fine: nobody watches.
        let _ = self.events.send(event);
        object
    }

    /// Register a watcher of `res` starting after `rv` (`None`: from the current state).
    /// Subscribing under the store lock guarantees no event falls between start and stream.
    pub fn watch(
        &self,
        res: &'static ResourceDef,
        filter: &Filter,
        rv: Option<u64>,
    ) -> Result<(WatchStart, u64, broadcast::Receiver<Arc<Event>>), ApiError> {
        let inner = self.lock();
        let receiver = self.events.subscribe();
        match rv {
            None => {
                let objects = inner
                    .objects
                    .get(res.plural)
                    .map(|m| {
                        m.values()
                            .filter(|o| filter.matches(o))
                            .map(|o| with_type(res, o))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((WatchStart::Objects(objects), inner.rv, receiver))
            }
            Some(rv) => {
                let min_rv = inner.windows.get(res.plural).map(|w| w.min_rv).unwrap_or(0);
                if rv < min_rv {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {rv} ({min_rv})"
                    )));
                }
                let events = inner
                    .windows
                    .get(res.plural)
                    .map(|w| w.events.iter().filter(|e| e.rv > rv).cloned().collect())
                    .unwrap_or_default();
                Ok((WatchStart::Events(events), inner.rv.max(rv), receiver))
            }
        }
    }

    /// Write the objects and the resourceVersion counter to `path` (for [`Store::restore`] in
    /// a restarted server: `{"rv": N, "cluster_ips": N, "objects": {plural: [[namespace,
    /// name, object]]}}`) and end the process, all under the store lock: no
    /// change can be acknowledged that the saved state does not hold.
    pub fn save_and_exit(&self, path: &std::path::Path) -> ! {
        let inner = self.lock();
        let code = match std::fs::write(path, snapshot_of(&inner).to_string()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cannot save the state to {}: {e}", path.display());
                1
            }
        };
        std::process::exit(code)
    }

    /// Replace the whole state with one saved by [`Store::save_and_exit`]. Stored events are not part of it:
    /// a watch resuming from a resourceVersion before the restart gets 410 Gone and re-lists,
    /// as after a real API server restart.
    pub fn restore(&self, state: &Value) -> Result<(), String> {
        let rv = state
            .get("rv")
            .and_then(Value::as_u64)
            .ok_or("field `rv`: expected a number")?;
        let cluster_ips = state
            .get("cluster_ips")
            .and_then(Value::as_u64)
            .ok_or("field `cluster_ips`: expected a number")?;
        let mut objects = HashMap::new();
        let stored = state
            .get("objects")
            .and_then(Value::as_object)
            .ok_or("field `objects`: expected an object")?;
        for (plural, entries) in stored {
            let res = RESOURCES
                .iter()
                .find(|r| r.plural == plural)
                .ok_or_else(|| format!("field `objects`: unknown resource `{plural}`"))?;
            let mut by_key = BTreeMap::new();
            for entry in entries
                .as_array()
                .ok_or_else(|| format!("field `objects.{plural}`: expected an array"))?
            {
                let (ns, name, object) = match entry.as_array().map(Vec::as_slice) {
                    Some([Value::String(ns), Value::String(name), object @ Value::Object(_)]) => {
                        (ns, name, object)
                    }
                    _ => {
                        return Err(format!(
                            "field `objects.{plural}`: expected [namespace, name, object] entries"
                        ))
                    }
                };
                by_key.insert((ns.clone(), name.clone()), object.clone());
            }
            objects.insert(res.plural, by_key);
        }
        let mut inner = self.lock();
        inner.rv = rv;
        inner.cluster_ips = cluster_ips;
        inner.objects = objects;
        for res in RESOURCES {
            let window = inner.windows.entry(res.plural).or_default();
            window.events.clear();
            window.min_rv = rv;
        }
        Ok(())
    }

    /// Forget every stored event: watches from any resourceVersion before now get 410.
    pub fn compact(&self) -> u64 {
        let mut inner = self.lock();
        let rv = inner.rv;
        for res in RESOURCES {
            let window = inner.windows.entry(res.plural).or_default();
            window.events.clear();
            window.min_rv = rv;
        }
        rv
    }
}

fn snapshot_of(inner: &Inner) -> Value {
    let objects: serde_json::Map<String, Value> = inner
        .objects
        .iter()
        .map(|(plural, by_key)| {
            let entries = by_key
                .iter()
                .map(|((ns, name), object)| json!([ns, name, object]))
                .collect();
            ((*plural).to_string(), Value::Array(entries))
        })
        .collect();
    json!({"rv": inner.rv, "cluster_ips": inner.cluster_ips, "objects": objects})
}

fn object_key(res: &ResourceDef, ns: &str, name: &str) -> Key {
    (
        if res.namespaced {
            ns.to_string()
        } else {
            String::new()
        },
        name.to_string(),
    )
}

fn check_namespace(inner: &Inner, res: &ResourceDef, ns: &str) -> Result<(), ApiError> {
    if !res.namespaced {
        return Ok(());
    }
    let exists = inner
        .objects
        .get("namespaces")
        .is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())));
    if exists {
        Ok(())
    } else {
        Err(ApiError::namespace_not_found(ns))
    }
}

fn must<T>(v: Option<T>) -> T {
    match v {
        Some(v) => v,
        None => panic!("a built-in resource is missing from the resource table"),
    }
}
