//! Patroni's Kubernetes object layout: names, labels, annotations, role labels, Endpoints subsets,
//! and turning listed objects into the neutral [`Cluster`].
//!
//! Everything here is pure (no IO) and reads data anyone may have written: nothing panics on what
//! the API server returns, problems become warnings that name the object.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    ConfigMap, EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Service,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

pub(crate) use crate::model::parse_group;
use crate::model::{
    failsafe_to_json, parse_failsafe, Cluster, ClusterConfig, Failover, FailsafeTopology,
    HistoryEntry, Leader, Member, MemberData, Role, Status, SyncState,
};

/// Annotations of the leader object that make up the lock record.
pub(crate) const LOCK_FIELDS: [&str; 5] =
    ["leader", "acquireTime", "ttl", "renewTime", "transitions"];

/// Label Patroni puts on the objects of a Citus group (never on the selector).
pub(crate) const CITUS_GROUP_LABEL: &str = "citus-group";

/// The object kind that holds the cluster state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    ConfigMaps,
    Endpoints,
}

impl Kind {
    /// Resource name in API paths (`configmaps`, `endpoints`).
    pub(crate) fn resource(self) -> &'static str {
        match self {
            Kind::ConfigMaps => "configmaps",
            Kind::Endpoints => "endpoints",
        }
    }

    /// `kind` of a single object.
    pub(crate) fn kind_name(self) -> &'static str {
        match self {
            Kind::ConfigMaps => "ConfigMap",
            Kind::Endpoints => "Endpoints",
        }
    }
}

/// Names, labels and selector of one cluster (or Citus group) in one namespace.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    pub kind: Kind,
    pub namespace: String,
    pub scope: String,
    pub group: Option<u32>,
    /// `<scope>[-<group>]`.
    pub base: String,
    pub leader: String,
    pub config: String,
    pub failover: String,
    pub sync: String,
    /// `L`: configured labels plus `{scope_label: scope}`; every LIST/WATCH selects by it.
    pub selector_labels: BTreeMap<String, String>,
    /// Labels written on every kind object we create or patch (`L` + `citus-group`).
    pub object_labels: BTreeMap<String, String>,
}

impl Layout {
    pub(crate) fn new(
        scope: &str,
        group: Option<u32>,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        scope_label: &str,
        use_endpoints: bool,
    ) -> Layout {
        let kind = if use_endpoints {
            Kind::Endpoints
        } else {
            Kind::ConfigMaps
        };
        let mut selector_labels = labels.clone();
        selector_labels.insert(scope_label.to_string(), scope.to_string());
        Layout::build(kind, namespace, scope, group, selector_labels)
    }

    fn build(
        kind: Kind,
        namespace: &str,
        scope: &str,
        group: Option<u32>,
        selector_labels: BTreeMap<String, String>,
    ) -> Layout {
        let base = match group {
            Some(g) => format!("{scope}-{g}"),
            None => scope.to_string(),
        };
        let mut object_labels = selector_labels.clone();
        if let Some(g) = group {
            object_labels.insert(CITUS_GROUP_LABEL.to_string(), g.to_string());
        }
        Layout {
            kind,
            namespace: namespace.to_string(),
            scope: scope.to_string(),
            group,
            leader: match kind {
                Kind::Endpoints => base.clone(),
                Kind::ConfigMaps => format!("{base}-leader"),
            },
            config: format!("{base}-config"),
            failover: format!("{base}-failover"),
            sync: format!("{base}-sync"),
            base,
            selector_labels,
            object_labels,
        }
    }

    /// The layout of another Citus group of the same cluster (same scope, labels and kind).
    pub(crate) fn for_group(&self, group: u32) -> Layout {
        Layout::build(
            self.kind,
            &self.namespace,
            &self.scope,
            Some(group),
            self.selector_labels.clone(),
        )
    }

    /// The Citus group of a kind object of *another* group than ours: its `citus-group` label
    /// names the group (as Patroni's coordinator splits its cache) and its name is one of that
    /// group's object names. Anything else is not another group's object.
    pub(crate) fn other_group_of(&self, obj: &Value) -> Option<u32> {
        let group = label(obj, CITUS_GROUP_LABEL).and_then(parse_group)?;
        if Some(group) == self.group {
            return None;
        }
        self.for_group(group).is_ours(name(obj)?).then_some(group)
    }

    /// The group of another group's leader object (see [`Layout::other_group_of`]).
    pub(crate) fn other_group_leader(&self, obj: &Value) -> Option<u32> {
        let group = self.other_group_of(obj)?;
        (name(obj) == Some(self.for_group(group).leader.as_str())).then_some(group)
    }

    /// The label selector `k1=v1,k2=v2` (not URL-encoded).
    pub(crate) fn selector(&self) -> String {
        self.selector_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Is `name` one of this group's kind objects?
    pub(crate) fn is_ours(&self, name: &str) -> bool {
        name == self.leader || name == self.config || name == self.failover || name == self.sync
    }

    pub(crate) fn names(&self) -> [&str; 4] {
        [&self.leader, &self.config, &self.failover, &self.sync]
    }

    /// Does a Pod belong to this group? Without Citus every Pod matching the selector does; with
    /// Citus the Pod's `citus-group` label must name our group.
    pub(crate) fn pod_in_group(&self, pod: &Value) -> bool {
        match self.group {
            None => true,
            Some(g) => label(pod, CITUS_GROUP_LABEL)
                .and_then(parse_group)
                .is_some_and(|pg| pg == g),
        }
    }

    /// `ConfigMap demo-config`, for messages.
    pub(crate) fn describe(&self, name: &str) -> String {
        format!("{} {name}", self.kind.kind_name())
    }
}

/// A warning for an object or Pod whose `citus-group` label is present but names no group.
pub(crate) fn group_label_warning(what: &str, obj: &Value) -> Option<String> {
    let value = label(obj, CITUS_GROUP_LABEL)?;
    parse_group(value).is_none().then(|| {
        format!("{what}: label '{CITUS_GROUP_LABEL}' is not a Citus group ({value:?}); ignored")
    })
}

// ---- generic accessors on API objects ---------------------------------------------------------

pub(crate) fn metadata(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

pub(crate) fn name(obj: &Value) -> Option<&str> {
    metadata(obj)?.get("name").and_then(Value::as_str)
}

pub(crate) fn resource_version(obj: &Value) -> Option<&str> {
    metadata(obj)?
        .get("resourceVersion")
        .and_then(Value::as_str)
}

pub(crate) fn annotations(obj: &Value) -> Option<&Map<String, Value>> {
    metadata(obj)?.get("annotations").and_then(Value::as_object)
}

/// A string annotation (non-string values count as absent).
pub(crate) fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    annotations(obj)?.get(key).and_then(Value::as_str)
}

pub(crate) fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    metadata(obj)?
        .get("labels")
        .and_then(Value::as_object)?
        .get(key)
        .and_then(Value::as_str)
}

/// Is resourceVersion `a` newer than `b`? Compared as integers (as Patroni does); versions that
/// are not integers are opaque, so any difference counts as newer.
pub(crate) fn rv_newer(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(a), Some(b)) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x > y,
            _ => a != b,
        },
    }
}

/// ISO-8601 UTC with microseconds, `2024-06-01T10:00:00.123456+00:00`.
pub(crate) fn iso_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}

// ---- the lock record ---------------------------------------------------------------------------

/// The lock fields of the leader object as last observed; absent fields are not in the map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LeaderRecord(pub BTreeMap<&'static str, String>);

impl LeaderRecord {
    pub(crate) fn from_object(obj: Option<&Value>) -> LeaderRecord {
        let mut m = BTreeMap::new();
        if let Some(obj) = obj {
            for f in LOCK_FIELDS {
                if let Some(v) = annotation(obj, f) {
                    m.insert(f, v.to_string());
                }
            }
        }
        LeaderRecord(m)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn get(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }

    /// The holder's name, if any (empty counts as none).
    pub(crate) fn leader(&self) -> Option<&str> {
        self.get("leader").filter(|s| !s.is_empty())
    }

    /// The `ttl` annotation when it is a positive integer.
    pub(crate) fn ttl(&self) -> Option<u64> {
        self.get("ttl")
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|t| *t > 0)
    }
}

fn str_value(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

/// Annotations for taking the lock: a different previous holder bumps `transitions`, the same one
/// keeps `acquireTime` and `transitions`.
pub(crate) fn acquire_annotations(
    me: &str,
    ttl: u32,
    now: &str,
    observed: &LeaderRecord,
) -> Map<String, Value> {
    let mut acquire_time = now.to_string();
    let mut transitions = 0u64;
    if !observed.is_empty() {
        transitions = observed
            .get("transitions")
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        if observed.get("leader") != Some(me) {
            transitions += 1;
        } else if let Some(t) = observed.get("acquireTime").filter(|t| !t.is_empty()) {
            acquire_time = t.to_string();
        }
    }
    let mut m = Map::new();
    m.insert("leader".into(), str_value(me));
    m.insert("ttl".into(), str_value(ttl.to_string()));
    m.insert("renewTime".into(), str_value(now));
    m.insert("acquireTime".into(), str_value(acquire_time));
    m.insert("transitions".into(), str_value(transitions.to_string()));
    m
}

/// Annotations for renewing the lock, keeping `acquireTime` and `transitions` of `current`
/// (the leader object as last seen); with `optime` also the status fields.
pub(crate) fn renew_annotations(
    me: &str,
    ttl: u32,
    now: &str,
    current: &LeaderRecord,
    optime: Option<u64>,
    status: &Status,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("leader".into(), str_value(me));
    m.insert("ttl".into(), str_value(ttl.to_string()));
    m.insert("renewTime".into(), str_value(now));
    m.insert(
        "acquireTime".into(),
        str_value(
            current
                .get("acquireTime")
                .filter(|s| !s.is_empty())
                .unwrap_or(now),
        ),
    );
    m.insert(
        "transitions".into(),
        str_value(
            current
                .get("transitions")
                .filter(|s| !s.is_empty())
                .unwrap_or("0"),
        ),
    );
    if let Some(o) = optime {
        let status = Status {
            optime: Some(o),
            ..status.clone()
        };
        m.extend(status_annotations(&status));
    }
    m
}

/// An annotation value to write: the text, or null (which removes the annotation) when there is
/// none or it is empty.
fn text_or_null(text: Option<String>) -> Value {
    text.filter(|t| !t.is_empty())
        .map(Value::String)
        .unwrap_or(Value::Null)
}

/// The `failsafe` annotation of the leader object; an empty topology removes it.
pub(crate) fn failsafe_annotation(topology: &FailsafeTopology) -> Map<String, Value> {
    let failsafe = (!topology.is_empty()).then(|| failsafe_to_json(topology));
    Map::from_iter([("failsafe".into(), text_or_null(failsafe))])
}

/// `optime`, `slots`, `retain_slots` annotations (null removes them).
pub(crate) fn status_annotations(status: &Status) -> Map<String, Value> {
    let optime = status.optime.map(|o| o.to_string());
    let slots = (!status.slots.is_empty()).then(|| Value::Object(status.slots.clone()).to_string());
    let retain_slots = (!status.retain_slots.is_empty())
        .then(|| Value::from(status.retain_slots.clone()).to_string());
    Map::from_iter([
        ("optime".into(), text_or_null(optime)),
        ("slots".into(), text_or_null(slots)),
        ("retain_slots".into(), text_or_null(retain_slots)),
    ])
}

/// `leader`, `member`, `scheduled_at` of a failover request (null clears).
pub(crate) fn failover_annotations(f: &Failover) -> Map<String, Value> {
    Map::from_iter([
        ("leader".into(), text_or_null(f.leader.clone())),
        ("member".into(), text_or_null(f.member.clone())),
        ("scheduled_at".into(), text_or_null(f.scheduled_at.clone())),
    ])
}

/// `leader`, `sync_standby` (sorted, comma-joined), `quorum` (int as string).
pub(crate) fn sync_annotations(s: &SyncState) -> Map<String, Value> {
    let mut names = s.sync_standby.clone();
    names.sort();
    names.dedup();
    Map::from_iter([
        ("leader".into(), text_or_null(s.leader.clone())),
        (
            "sync_standby".into(),
            text_or_null((!names.is_empty()).then(|| names.join(","))),
        ),
        (
            "quorum".into(),
            text_or_null(s.quorum.map(|q| q.to_string())),
        ),
    ])
}

/// Body of a POST creating one of our kind objects (null annotations are left out).
pub(crate) fn create_body(
    layout: &Layout,
    name: &str,
    annotations: &Map<String, Value>,
    subsets: Option<&[EndpointSubset]>,
) -> Value {
    let annotations = annotations
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    let metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(layout.namespace.clone()),
        labels: Some(layout.object_labels.clone()),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    };
    match layout.kind {
        Kind::ConfigMaps => json!(ConfigMap {
            metadata,
            ..ConfigMap::default()
        }),
        Kind::Endpoints => json!(Endpoints {
            metadata,
            subsets: subsets.map(<[EndpointSubset]>::to_vec),
        }),
    }
}

/// Body of a strategic-merge PATCH of one of our kind objects: a null annotation removes it, a
/// `resourceVersion` makes the PATCH a compare-and-swap. Built as JSON, not typed: the typed
/// annotations cannot hold the nulls.
pub(crate) fn patch_body(
    layout: &Layout,
    name: &str,
    annotations: &Map<String, Value>,
    resource_version: Option<&str>,
    subsets: Option<&[EndpointSubset]>,
) -> Value {
    let mut meta = json!({
        "name": name,
        "namespace": layout.namespace,
        "labels": layout.object_labels,
        "annotations": annotations,
    });
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = str_value(rv);
    }
    let mut body = json!({ "metadata": meta });
    if let Some(s) = subsets {
        if layout.kind == Kind::Endpoints {
            body["subsets"] = json!(s);
        }
    }
    body
}

/// Endpoints mode: the headless `<scope>-config` Service, which keeps the config Endpoints from
/// being cleaned up.
pub(crate) fn config_service(layout: &Layout) -> Value {
    json!(Service {
        metadata: ObjectMeta {
            name: Some(layout.config.clone()),
            namespace: Some(layout.namespace.clone()),
            labels: Some(layout.object_labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// Do the object's annotations already carry every value of `wanted` (null = absent)?
pub(crate) fn has_annotations(obj: &Value, wanted: &Map<String, Value>) -> bool {
    wanted.iter().all(|(k, v)| match v {
        Value::Null => annotations(obj).and_then(|a| a.get(k)).is_none(),
        Value::String(s) => annotation(obj, k) == Some(s.as_str()),
        _ => false,
    })
}

// ---- member Pods -------------------------------------------------------------------------------

/// Role label settings (`kubernetes.*` keys).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LabelSettings {
    pub role_label: String,
    pub leader_label_value: String,
    pub follower_label_value: String,
    pub standby_leader_label_value: String,
    pub tmp_role_label: Option<String>,
    pub bootstrap_labels: BTreeMap<String, String>,
}

/// The role label value of a member.
fn role_value(
    data: &MemberData,
    holds_lock: bool,
    leader: &str,
    follower: &str,
    standby_leader: &str,
) -> Option<String> {
    match (&data.role, holds_lock) {
        (Role::StandbyLeader, true) => Some(standby_leader.to_string()),
        (Role::Primary, true) => Some(leader.to_string()),
        // A primary without the lock must not attract primary traffic.
        (Role::Primary, false) => None,
        (Role::Replica, _) if data.is_running() => Some(follower.to_string()),
        (other, _) if data.is_running() => Some(other.as_str().to_string()),
        _ => None,
    }
}

/// The Pod labels a member sets on itself; `None` removes the label.
pub(crate) fn member_labels(
    settings: &LabelSettings,
    data: &MemberData,
    holds_lock: bool,
) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    out.insert(
        settings.role_label.clone(),
        role_value(
            data,
            holds_lock,
            &settings.leader_label_value,
            &settings.follower_label_value,
            &settings.standby_leader_label_value,
        ),
    );
    if let Some(tmp) = settings.tmp_role_label.as_ref().filter(|t| !t.is_empty()) {
        out.insert(
            tmp.clone(),
            role_value(data, holds_lock, "primary", "replica", "primary"),
        );
    }
    // `bootstrap_labels` are set while a new data directory is being made.
    let bootstrapping = data.state.is_bootstrapping();
    for (k, v) in &settings.bootstrap_labels {
        out.insert(k.clone(), bootstrapping.then(|| v.clone()));
    }
    out
}

/// Does the Pod already carry these labels and this member data?
pub(crate) fn pod_matches(
    pod: &Value,
    labels: &BTreeMap<String, Option<String>>,
    data: &MemberData,
) -> bool {
    let labels_ok = labels.iter().all(|(k, v)| label(pod, k) == v.as_deref());
    if !labels_ok {
        return false;
    }
    let Some(raw) = annotation(pod, "status") else {
        return false;
    };
    match (
        serde_json::from_str::<Value>(raw),
        serde_json::to_value(data),
    ) {
        (Ok(have), Ok(want)) => have == want,
        _ => false,
    }
}

/// Strategic-merge PATCH body of our own Pod.
pub(crate) fn pod_patch(
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, Option<String>>,
    status: Option<&str>,
) -> Value {
    let labels: Map<String, Value> = labels
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.clone().map(Value::String).unwrap_or(Value::Null),
            )
        })
        .collect();
    json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {"status": status},
        }
    })
}

// ---- Endpoints subsets -------------------------------------------------------------------------

/// `value` (a part of `what`) as the typed Kubernetes object `T`. Fields `T` does not know are
/// ignored; a field of the wrong type is an error that names `what` and the field's path.
pub(crate) fn typed<T: DeserializeOwned>(what: &str, value: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        format!("{what}: field '{path}': {}", e.into_inner())
    })
}

/// The `subsets` of an Endpoints object (none when absent).
pub(crate) fn endpoint_subsets(what: &str, obj: &Value) -> Result<Vec<EndpointSubset>, String> {
    match obj.get("subsets") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(subsets) => typed(&format!("{what}: subsets"), subsets),
    }
}

/// `kubernetes.ports` normalised the way Patroni sends them: `port` as an integer (default 5432),
/// `name` and `protocol` only when set.
pub(crate) fn normalise_ports(ports: &[Value]) -> Result<Vec<EndpointPort>, String> {
    if ports.is_empty() {
        return Ok(vec![EndpointPort {
            port: 5432,
            ..EndpointPort::default()
        }]);
    }
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let obj = p
                .as_object()
                .ok_or(format!("kubernetes.ports: item {i} is not a mapping"))?;
            let port = match obj.get("port") {
                None | Some(Value::Null) => 5432,
                Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
                Some(_) => 0,
            };
            let port = i32::try_from(port)
                .ok()
                .filter(|p| (1..=65535).contains(p))
                .ok_or(format!("kubernetes.ports: item {i} has no valid 'port'"))?;
            let text = |key: &str| {
                obj.get(key)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            };
            Ok(EndpointPort {
                port,
                name: text("name"),
                protocol: text("protocol"),
                ..EndpointPort::default()
            })
        })
        .collect()
}

/// The same port, the protocol defaulting to TCP as the API server fills it in.
fn same_port(a: &EndpointPort, b: &EndpointPort) -> bool {
    let protocol = |p: &EndpointPort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
    a.port == b.port && a.name == b.name && protocol(a) == protocol(b)
}

/// Do the Endpoints subsets differ from one address `ip` with `ports`?
pub(crate) fn subsets_changed(
    subsets: &[EndpointSubset],
    ip: &str,
    ports: &[EndpointPort],
) -> bool {
    let [subset] = subsets else {
        return true;
    };
    let addresses = subset.addresses.as_deref().unwrap_or_default();
    let observed = subset.ports.as_deref().unwrap_or_default();
    if addresses.len() != 1 || addresses[0].ip != ip || observed.len() != ports.len() {
        return true;
    }
    if ports.len() == 1 {
        return !same_port(&observed[0], &ports[0]);
    }
    let mut by_name: HashMap<Option<&str>, &EndpointPort> =
        observed.iter().map(|p| (p.name.as_deref(), p)).collect();
    ports
        .iter()
        .any(|p| match by_name.remove(&p.name.as_deref()) {
            Some(o) => !same_port(p, o),
            None => true,
        })
}

/// The leader Endpoints subsets: our address (with a reference to our Pod) and the ports.
pub(crate) fn leader_subsets(
    ip: &str,
    ports: &[EndpointPort],
    pod: Option<&Value>,
    namespace: &str,
    me: &str,
    existing: &[EndpointSubset],
) -> Vec<EndpointSubset> {
    let mut address = EndpointAddress {
        ip: ip.to_string(),
        ..EndpointAddress::default()
    };
    if let Some(pod) = pod {
        let spec = |key: &str| {
            pod.get("spec")
                .and_then(|s| s.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        address.hostname = spec("hostname");
        address.node_name = spec("nodeName");
        // Keep an existing reference to our Pod at this address (as Patroni does).
        let reuse = existing
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .find(|a| {
                a.ip == ip && a.target_ref.as_ref().and_then(|t| t.name.as_deref()) == Some(me)
            })
            .and_then(|a| a.target_ref.clone());
        let target = reuse.unwrap_or_else(|| {
            let field = |key: &str| {
                metadata(pod)
                    .and_then(|m| m.get(key))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            ObjectReference {
                kind: Some("Pod".into()),
                uid: field("uid"),
                namespace: Some(namespace.to_string()),
                name: Some(me.to_string()),
                resource_version: field("resourceVersion"),
                ..ObjectReference::default()
            }
        });
        address.target_ref = Some(target);
    }
    vec![EndpointSubset {
        addresses: Some(vec![address]),
        ports: Some(ports.to_vec()),
        ..EndpointSubset::default()
    }]
}

/// The Pod's `status.podIP`.
pub(crate) fn pod_ip(pod: &Value) -> Option<&str> {
    pod.get("status")?
        .get("podIP")?
        .as_str()
        .filter(|s| !s.is_empty())
}

// ---- reading the cluster -----------------------------------------------------------------------

/// Build the cluster view from our group's kind objects (by name) and the Pods. `lock_held`
/// is the liveness verdict of the lock tracker for the leader object's current record.
pub(crate) fn build_cluster(
    layout: &Layout,
    kinds: &HashMap<String, Value>,
    pods: &[Value],
    lock_held: bool,
) -> Cluster {
    let mut warnings = Vec::new();
    let mut cluster = Cluster::default();

    if let Some(obj) = kinds.get(&layout.config) {
        let what = layout.describe(&layout.config);
        let rv = resource_version(obj).map(str::to_string);
        if let Some(v) = annotations(obj).and_then(|a| a.get("initialize")) {
            match v.as_str() {
                Some(s) => cluster.initialize = Some(s.trim().to_string()),
                None => warnings.push(format!(
                    "{what}: annotation 'initialize' is not a string; ignored"
                )),
            }
        }
        if let Some(raw) = annotation(obj, "config") {
            match serde_json::from_str::<Value>(raw) {
                Ok(raw @ Value::Object(_)) => {
                    cluster.config = Some(ClusterConfig {
                        raw,
                        version: rv.clone(),
                    })
                }
                Ok(_) => warnings.push(format!(
                    "{what}: annotation 'config' is not a JSON object; ignored"
                )),
                Err(e) => warnings.push(format!(
                    "{what}: annotation 'config' is not JSON ({e}); ignored"
                )),
            }
        }
        if let Some(raw) = annotation(obj, "history") {
            cluster.history = parse_history_lenient(&what, raw, &mut warnings);
        }
    }

    if let Some(obj) = kinds.get(&layout.leader) {
        let what = layout.describe(&layout.leader);
        cluster.status = parse_status(&what, obj, &mut warnings);
        if let Some(raw) = annotation(obj, "failsafe") {
            match parse_failsafe(raw) {
                Ok(f) => cluster.failsafe = Some(f),
                Err(e) => warnings.push(format!("{what}: annotation 'failsafe': {e}; ignored")),
            }
        }
        let record = LeaderRecord::from_object(Some(obj));
        if lock_held {
            if let Some(holder) = record.leader() {
                cluster.leader = Some(Leader {
                    name: holder.to_string(),
                    version: resource_version(obj).map(str::to_string),
                });
            }
        }
    }

    if let Some(obj) = kinds.get(&layout.failover) {
        let field = |k: &str| {
            annotation(obj, k)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let f = Failover {
            leader: field("leader"),
            member: field("member"),
            scheduled_at: field("scheduled_at"),
            version: resource_version(obj).map(str::to_string),
        };
        if !f.is_empty() || f.scheduled_at.is_some() {
            cluster.failover = Some(f);
        }
    }

    if let Some(obj) = kinds.get(&layout.sync) {
        let what = layout.describe(&layout.sync);
        let rv = resource_version(obj).map(str::to_string);
        let mut raw = Map::new();
        for k in ["leader", "sync_standby", "quorum"] {
            if let Some(v) = annotation(obj, k) {
                raw.insert(k.into(), str_value(v));
            }
        }
        let mut sync = SyncState::parse(&Value::Object(raw).to_string()).unwrap_or_default();
        if let Some(q) = annotation(obj, "quorum").filter(|q| !q.trim().is_empty()) {
            if sync.quorum.is_none() {
                warnings.push(format!(
                    "{what}: annotation 'quorum' is not an integer ({q:?}); ignored"
                ));
            }
        }
        if sync.leader.is_none() {
            // Patroni: an empty leader means an empty sync state.
            sync.sync_standby.clear();
            sync.quorum = None;
        }
        sync.version = rv;
        cluster.sync = sync;
    }

    for pod in pods {
        if !layout.pod_in_group(pod) {
            continue;
        }
        let Some(pod_name) = name(pod) else { continue };
        let Some(raw) = annotations(pod).and_then(|a| a.get("status")) else {
            continue;
        };
        let parsed = match raw.as_str() {
            Some(s) => MemberData::parse(s).map_err(|e| e.to_string()),
            None => Err("annotation 'status' is not a string".to_string()),
        };
        match parsed {
            Ok(data) => cluster.members.push(Member {
                name: pod_name.to_string(),
                data,
                version: resource_version(pod).map(str::to_string),
            }),
            Err(e) => warnings.push(format!(
                "Pod {pod_name}: annotation 'status': {e}; member ignored"
            )),
        }
    }
    cluster.members.sort_by(|a, b| a.name.cmp(&b.name));
    cluster.warnings = warnings;
    cluster
}

fn parse_status(what: &str, obj: &Value, warnings: &mut Vec<String>) -> Status {
    let mut status = Status::default();
    if let Some(raw) = annotation(obj, "optime") {
        match raw.trim().parse::<u64>() {
            Ok(o) => status.optime = Some(o),
            Err(_) => warnings.push(format!(
                "{what}: annotation 'optime' is not an integer ({raw:?}); ignored"
            )),
        }
    }
    if let Some(raw) = annotation(obj, "slots") {
        match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) => status.slots = m,
            Ok(Value::Null) => {}
            _ => warnings.push(format!(
                "{what}: annotation 'slots' is not a JSON object; ignored"
            )),
        }
    }
    if let Some(raw) = annotation(obj, "retain_slots") {
        match serde_json::from_str::<Value>(raw) {
            Ok(Value::Array(a)) => {
                status.retain_slots = a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            }
            Ok(Value::Null) => {}
            _ => warnings.push(format!(
                "{what}: annotation 'retain_slots' is not a JSON list; ignored"
            )),
        }
    }
    status
}

/// Parse the history list keeping the good rows; bad rows are reported and skipped.
fn parse_history_lenient(what: &str, raw: &str, warnings: &mut Vec<String>) -> Vec<HistoryEntry> {
    let rows = match serde_json::from_str::<Value>(raw) {
        Ok(Value::Array(rows)) => rows,
        Ok(_) => {
            warnings.push(format!(
                "{what}: annotation 'history' is not a JSON list; ignored"
            ));
            return Vec::new();
        }
        Err(e) => {
            warnings.push(format!(
                "{what}: annotation 'history' is not JSON ({e}); ignored"
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        match HistoryEntry::from_json(row) {
            Ok(h) => out.push(h),
            Err(e) => warnings.push(format!(
                "{what}: annotation 'history' row {i}: {e}; skipped"
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(group: Option<u32>, endpoints: bool) -> Layout {
        let labels = BTreeMap::from([("application".to_string(), "patroni".to_string())]);
        Layout::new("demo", group, "default", &labels, "cluster-name", endpoints)
    }

    fn obj(name: &str, rv: &str, annotations: Value) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": rv, "annotations": annotations}})
    }

    /// The config, leader, failover and sync objects with these versions and annotations.
    fn kind_objects(l: &Layout, objects: [(&str, Value); 4]) -> HashMap<String, Value> {
        [&l.config, &l.leader, &l.failover, &l.sync]
            .into_iter()
            .zip(objects)
            .map(|(name, (rv, annotations))| (name.clone(), obj(name, rv, annotations)))
            .collect()
    }

    fn pod(name: &str, rv: &str, group: Option<&str>, status: Option<&str>) -> Value {
        let mut labels = json!({"application": "patroni", "cluster-name": "demo"});
        if let Some(g) = group {
            labels["citus-group"] = json!(g);
        }
        let mut p = json!({"metadata": {"name": name, "resourceVersion": rv, "labels": labels, "uid": "u-1"},
                           "spec": {"hostname": "h", "nodeName": "n1"},
                           "status": {"podIP": "10.0.0.5"}});
        if let Some(s) = status {
            p["metadata"]["annotations"] = json!({"status": s});
        }
        p
    }

    #[test]
    fn names_and_selector() {
        let l = layout(None, false);
        assert_eq!(
            (
                l.leader.as_str(),
                l.config.as_str(),
                l.failover.as_str(),
                l.sync.as_str()
            ),
            ("demo-leader", "demo-config", "demo-failover", "demo-sync")
        );
        assert_eq!(l.selector(), "application=patroni,cluster-name=demo");
        assert_eq!(l.object_labels, l.selector_labels);
        let e = layout(None, true);
        assert_eq!(e.leader, "demo");
        assert_eq!(e.config, "demo-config");
        let c = layout(Some(1), false);
        assert_eq!(c.leader, "demo-1-leader");
        assert_eq!(c.sync, "demo-1-sync");
        // The group label is written on objects but never selected on.
        assert_eq!(c.selector(), "application=patroni,cluster-name=demo");
        assert_eq!(
            c.object_labels.get("citus-group").map(String::as_str),
            Some("1")
        );
        let ce = layout(Some(2), true);
        assert_eq!(ce.leader, "demo-2");
        assert!(ce.is_ours("demo-2-failover") && !ce.is_ours("demo-1-failover"));
    }

    #[test]
    fn citus_group_filter() {
        assert_eq!(parse_group("0"), Some(0));
        assert_eq!(parse_group("12"), Some(12));
        for bad in ["", "01", "-1", "1a", " 1"] {
            assert_eq!(parse_group(bad), None, "{bad:?}");
        }
        let l = layout(Some(1), false);
        assert!(l.pod_in_group(&pod("a", "1", Some("1"), None)));
        assert!(!l.pod_in_group(&pod("a", "1", Some("2"), None)));
        assert!(!l.pod_in_group(&pod("a", "1", Some("01"), None)));
        assert!(!l.pod_in_group(&pod("a", "1", None, None)));
        assert!(layout(None, false).pod_in_group(&pod("a", "1", Some("2"), None)));
        // Members of other groups are not ours.
        let pods = vec![
            pod(
                "w1",
                "5",
                Some("1"),
                Some(r#"{"state":"running","role":"replica"}"#),
            ),
            pod(
                "w2",
                "6",
                Some("2"),
                Some(r#"{"state":"running","role":"replica"}"#),
            ),
        ];
        let c = build_cluster(&l, &HashMap::new(), &pods, false);
        assert_eq!(c.members.len(), 1);
        assert_eq!(c.members[0].name, "w1");
        assert_eq!(c.members[0].version.as_deref(), Some("5"));
    }

    #[test]
    fn other_groups_by_label_and_name() {
        let obj = |name: &str, group: Option<&str>| {
            let mut labels = json!({"application": "patroni", "cluster-name": "demo"});
            if let Some(g) = group {
                labels["citus-group"] = json!(g);
            }
            json!({"metadata": {"name": name, "labels": labels}})
        };
        let coordinator = layout(Some(0), false);
        let w2 = coordinator.for_group(2);
        assert_eq!(
            (w2.leader.as_str(), w2.config.as_str(), w2.group),
            ("demo-2-leader", "demo-2-config", Some(2))
        );
        assert_eq!(w2.selector(), coordinator.selector());
        assert_eq!(w2.object_labels["citus-group"], "2");
        assert_eq!(w2, layout(Some(2), false));
        assert_eq!(layout(Some(0), true).for_group(3).leader, "demo-3");
        assert_eq!(
            coordinator.other_group_of(&obj("demo-2-sync", Some("2"))),
            Some(2)
        );
        assert_eq!(
            coordinator.other_group_leader(&obj("demo-2-leader", Some("2"))),
            Some(2)
        );
        assert_eq!(
            coordinator.other_group_leader(&obj("demo-2-config", Some("2"))),
            None
        );
        // Own group, a label that does not match the name, no label, a bad label: not another
        // group's object.
        assert_eq!(
            coordinator.other_group_of(&obj("demo-0-leader", Some("0"))),
            None
        );
        assert_eq!(
            coordinator.other_group_of(&obj("demo-2-leader", Some("1"))),
            None
        );
        assert_eq!(
            coordinator.other_group_of(&obj("demo-2-leader", None)),
            None
        );
        assert_eq!(
            coordinator.other_group_of(&obj("demo-2-leader", Some("02"))),
            None
        );
        // A worker sees the coordinator's objects as another group's.
        assert_eq!(
            layout(Some(1), false).other_group_leader(&obj("demo-0-leader", Some("0"))),
            Some(0)
        );
        let w = group_label_warning("ConfigMap x", &obj("x", Some("two"))).unwrap_or_default();
        assert!(w.contains("ConfigMap x") && w.contains("\"two\""), "{w}");
        assert_eq!(
            group_label_warning("ConfigMap x", &obj("x", Some("2"))),
            None
        );
        assert_eq!(group_label_warning("ConfigMap x", &obj("x", None)), None);
    }

    #[test]
    fn resource_versions_compare_as_integers() {
        assert!(rv_newer(Some("10"), Some("9")));
        assert!(!rv_newer(Some("9"), Some("10")));
        assert!(!rv_newer(Some("9"), Some("9")));
        assert!(rv_newer(Some("9"), None));
        assert!(!rv_newer(None, Some("9")));
        assert!(rv_newer(Some("abc"), Some("abd")));
    }

    #[test]
    fn timestamps_have_microseconds_and_utc_offset() {
        let t = iso_now();
        assert_eq!(t.len(), "2024-06-01T10:00:00.123456+00:00".len(), "{t}");
        assert!(t.ends_with("+00:00"), "{t}");
        assert!(chrono::DateTime::parse_from_rfc3339(&t).is_ok(), "{t}");
    }

    #[test]
    fn acquire_counts_transitions() {
        let now = "2024-06-01T10:00:00.000001+00:00";
        let fresh = acquire_annotations("a", 30, now, &LeaderRecord::default());
        assert_eq!(fresh["transitions"], "0");
        assert_eq!(fresh["acquireTime"], now);
        assert_eq!(fresh["renewTime"], now);
        assert_eq!(fresh["ttl"], "30");
        assert_eq!(fresh["leader"], "a");
        let other = LeaderRecord::from_object(Some(&obj(
            "demo-leader",
            "1",
            json!({"leader": "b", "acquireTime": "T0", "transitions": "4", "ttl": "30"}),
        )));
        let m = acquire_annotations("a", 30, now, &other);
        assert_eq!(
            (m["transitions"].as_str(), m["acquireTime"].as_str()),
            (Some("5"), Some(now))
        );
        let mine = LeaderRecord::from_object(Some(&obj(
            "demo-leader",
            "1",
            json!({"leader": "a", "acquireTime": "T0", "transitions": "4"}),
        )));
        let m = acquire_annotations("a", 30, now, &mine);
        assert_eq!(
            (m["transitions"].as_str(), m["acquireTime"].as_str()),
            (Some("4"), Some("T0"))
        );
        // Released lock (leader annotation gone): a new acquisition is a transition.
        let released = LeaderRecord::from_object(Some(&obj(
            "demo-leader",
            "1",
            json!({"acquireTime": "T0", "transitions": "x"}),
        )));
        assert_eq!(
            acquire_annotations("a", 30, now, &released)["transitions"],
            "1"
        );
    }

    #[test]
    fn renew_keeps_acquire_time_and_writes_status() {
        let current = LeaderRecord::from_object(Some(&obj(
            "demo-leader",
            "1",
            json!({"leader": "a", "acquireTime": "T0", "transitions": "2"}),
        )));
        let mut status = Status::default();
        status.slots.insert("s1".into(), json!(100));
        let m = renew_annotations("a", 10, "NOW", &current, Some(67108960), &status);
        assert_eq!(m["acquireTime"], "T0");
        assert_eq!(m["transitions"], "2");
        assert_eq!(m["renewTime"], "NOW");
        assert_eq!(m["ttl"], "10");
        assert_eq!(m["optime"], "67108960");
        assert_eq!(m["slots"], r#"{"s1":100}"#);
        assert_eq!(m["retain_slots"], Value::Null);
        let m = renew_annotations("a", 10, "NOW", &LeaderRecord::default(), None, &status);
        assert_eq!(m["acquireTime"], "NOW");
        assert_eq!(m["transitions"], "0");
        assert!(!m.contains_key("optime"));
        let topology: FailsafeTopology = [("a".to_string(), "http://h:8008/patroni".to_string())]
            .into_iter()
            .collect();
        assert_eq!(
            failsafe_annotation(&topology)["failsafe"],
            r#"{"a":"http://h:8008/patroni"}"#
        );
        assert_eq!(
            failsafe_annotation(&FailsafeTopology::new())["failsafe"],
            Value::Null
        );
    }

    #[test]
    fn bodies_for_create_and_patch() {
        let l = layout(Some(1), true);
        let mut ann = Map::new();
        ann.insert("leader".into(), json!("a"));
        ann.insert("slots".into(), Value::Null);
        let create = create_body(&l, "demo-1", &ann, Some(&[]));
        assert_eq!(create["metadata"]["annotations"], json!({"leader": "a"}));
        assert_eq!(create["metadata"]["labels"]["citus-group"], "1");
        assert_eq!(create["kind"], "Endpoints");
        assert_eq!(create["subsets"], json!([]));
        assert!(create["metadata"].get("resourceVersion").is_none());
        let patch = patch_body(&l, "demo-1", &ann, Some("42"), None);
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["metadata"]["annotations"]["slots"], Value::Null);
        assert!(patch.get("kind").is_none() && patch.get("subsets").is_none());
        // ConfigMaps never carry subsets.
        let cm = patch_body(&layout(None, false), "x", &ann, None, Some(&[]));
        assert!(cm.get("subsets").is_none());
        let cm = create_body(&layout(None, false), "demo-config", &ann, Some(&[]));
        assert_eq!(
            (&cm["apiVersion"], &cm["kind"]),
            (&json!("v1"), &json!("ConfigMap"))
        );
        assert!(cm.get("subsets").is_none() && cm.get("data").is_none());
        let service = config_service(&l);
        assert_eq!(
            (&service["apiVersion"], &service["kind"]),
            (&json!("v1"), &json!("Service"))
        );
        assert_eq!(service["metadata"]["name"], "demo-1-config");
        assert_eq!(service["metadata"]["labels"]["citus-group"], "1");
        assert_eq!(service["spec"], json!({"clusterIP": "None"}));
    }

    #[test]
    fn annotation_match() {
        let o = obj("x", "1", json!({"leader": "a", "ttl": "30"}));
        let mut want = Map::new();
        want.insert("leader".into(), json!("a"));
        want.insert("optime".into(), Value::Null);
        assert!(has_annotations(&o, &want));
        want.insert("ttl".into(), json!("31"));
        assert!(!has_annotations(&o, &want));
    }

    fn settings() -> LabelSettings {
        LabelSettings {
            role_label: "role".into(),
            leader_label_value: "primary".into(),
            follower_label_value: "replica".into(),
            standby_leader_label_value: "primary".into(),
            tmp_role_label: None,
            bootstrap_labels: BTreeMap::new(),
        }
    }

    fn member(role: Role, state: &str) -> MemberData {
        MemberData {
            role,
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn role_label_values() {
        let mut s = settings();
        s.leader_label_value = "master".into();
        s.standby_leader_label_value = "standby".into();
        s.follower_label_value = "follower".into();
        let role = |d: &MemberData, lock: bool| member_labels(&s, d, lock)["role"].clone();
        let cases = [
            (Role::Primary, "running", true, Some("master")),
            (Role::Primary, "running", false, None),
            (Role::StandbyLeader, "running", true, Some("standby")),
            (
                Role::StandbyLeader,
                "running",
                false,
                Some("standby_leader"),
            ),
            (Role::Replica, "running", false, Some("follower")),
            (Role::Replica, "starting", false, None),
            (Role::Demoted, "running", false, Some("demoted")),
            (Role::Uninitialized, "running", false, Some("uninitialized")),
            (Role::Uninitialized, "stopped", false, None),
        ];
        for (r, state, lock, want) in cases {
            let got = role(&member(r.clone(), state), lock);
            assert_eq!(got.as_deref(), want, "{r:?} {state} lock={lock}");
        }
    }

    #[test]
    fn tmp_role_and_bootstrap_labels() {
        let mut s = settings();
        s.leader_label_value = "master".into();
        s.tmp_role_label = Some("tmp-role".into());
        s.bootstrap_labels = BTreeMap::from([("bootstrapping".into(), "true".into())]);
        let l = member_labels(&s, &member(Role::Primary, "running"), true);
        assert_eq!(l["role"].as_deref(), Some("master"));
        assert_eq!(l["tmp-role"].as_deref(), Some("primary"));
        assert_eq!(l["bootstrapping"], None);
        let l = member_labels(&s, &member(Role::Uninitialized, "creating replica"), false);
        assert_eq!(l["bootstrapping"].as_deref(), Some("true"));
        assert_eq!(l["role"], None);
        let l = member_labels(
            &s,
            &member(Role::Replica, "initializing new cluster"),
            false,
        );
        assert_eq!(l["bootstrapping"].as_deref(), Some("true"));
    }

    #[test]
    fn pod_patch_and_skip() {
        let s = settings();
        let data = MemberData {
            conn_url: Some("postgres://10.0.0.5:5432/postgres".into()),
            api_url: Some("http://10.0.0.5:8008/patroni".into()),
            state: "running".into(),
            role: Role::Replica,
            version: Some("4.0.0".into()),
            xlog_location: Some(67108960),
            timeline: Some(2),
            ..Default::default()
        };
        let labels = member_labels(&s, &data, false);
        let json = serde_json::to_string(&data).unwrap();
        assert_eq!(
            json,
            r#"{"conn_url":"postgres://10.0.0.5:5432/postgres","api_url":"http://10.0.0.5:8008/patroni","state":"running","role":"replica","version":"4.0.0","xlog_location":67108960,"timeline":2}"#
        );
        let body = pod_patch("default", "demo-0", &labels, Some(&json));
        assert_eq!(body["metadata"]["labels"]["role"], "replica");
        assert_eq!(body["metadata"]["annotations"]["status"], json.as_str());
        let mut p = pod("demo-0", "3", None, Some(&json));
        assert!(!pod_matches(&p, &labels, &data), "role label missing");
        p["metadata"]["labels"]["role"] = json!("replica");
        assert!(pod_matches(&p, &labels, &data));
        // Key order in the stored JSON does not matter.
        p["metadata"]["annotations"]["status"] = json!(
            r#"{"timeline":2,"xlog_location":67108960,"version":"4.0.0","role":"replica","state":"running","api_url":"http://10.0.0.5:8008/patroni","conn_url":"postgres://10.0.0.5:5432/postgres"}"#
        );
        assert!(pod_matches(&p, &labels, &data));
        let mut other = data.clone();
        other.xlog_location = Some(1);
        assert!(!pod_matches(&p, &labels, &other));
        // A label that must be removed but is present.
        let primary = member(Role::Primary, "running");
        let l = member_labels(&s, &primary, false);
        assert_eq!(l["role"], None);
        let body = pod_patch("default", "demo-0", &l, None);
        assert_eq!(body["metadata"]["labels"]["role"], Value::Null);
        assert_eq!(body["metadata"]["annotations"]["status"], Value::Null);
    }

    #[test]
    fn ports_and_subsets() {
        let port = |v: Value| -> EndpointPort { serde_json::from_value(v).unwrap() };
        let subsets = |v: Value| -> Vec<EndpointSubset> { serde_json::from_value(v).unwrap() };
        assert_eq!(normalise_ports(&[]).unwrap(), [port(json!({"port": 5432}))]);
        assert_eq!(
            normalise_ports(&[json!({"name": "postgresql", "port": "5433", "protocol": ""})])
                .unwrap(),
            [port(json!({"name": "postgresql", "port": 5433}))]
        );
        assert!(normalise_ports(&[json!({"port": "http"})]).is_err());
        assert!(normalise_ports(&[json!({"port": 65536})]).is_err());
        assert!(normalise_ports(&[json!(5432)]).is_err());

        let ports = vec![port(json!({"port": 5432}))];
        assert!(subsets_changed(&[], "10.0.0.5", &ports));
        let p = pod("demo-0", "7", None, None);
        let s = leader_subsets("10.0.0.5", &ports, Some(&p), "default", "demo-0", &[]);
        assert_eq!(
            json!(s),
            json!([{"addresses": [{"ip": "10.0.0.5", "hostname": "h", "nodeName": "n1",
                "targetRef": {"kind": "Pod", "uid": "u-1", "namespace": "default", "name": "demo-0", "resourceVersion": "7"}}],
                "ports": [{"port": 5432}]}])
        );
        assert!(!subsets_changed(&s, "10.0.0.5", &ports));
        assert!(subsets_changed(&s, "10.0.0.6", &ports));
        assert!(subsets_changed(
            &s,
            "10.0.0.5",
            &[port(json!({"port": 5433}))]
        ));
        // The server fills in the default protocol; it is still the same port.
        let with_proto = subsets(
            json!([{"addresses": [{"ip": "10.0.0.5"}], "ports": [{"port": 5432, "protocol": "TCP"}]}]),
        );
        assert!(!subsets_changed(&with_proto, "10.0.0.5", &ports));
        let two = [
            port(json!({"name": "a", "port": 1})),
            port(json!({"name": "b", "port": 2})),
        ];
        let swapped = subsets(
            json!([{"addresses": [{"ip": "1.2.3.4"}], "ports": [{"name": "b", "port": 2}, {"name": "a", "port": 1}]}]),
        );
        assert!(!subsets_changed(&swapped, "1.2.3.4", &two));
        let three = [
            port(json!({"name": "b", "port": 2})),
            port(json!({"name": "c", "port": 3})),
        ];
        assert!(subsets_changed(&swapped, "1.2.3.4", &three));
        // An existing reference to our Pod is kept (its resourceVersion does not churn).
        let p2 = pod("demo-0", "8", None, None);
        let again = leader_subsets("10.0.0.5", &ports, Some(&p2), "default", "demo-0", &s);
        assert_eq!(
            json!(again)[0]["addresses"][0]["targetRef"]["resourceVersion"],
            "7"
        );
        // Without our Pod only the IP is known.
        let bare = leader_subsets("10.0.0.9", &ports, None, "default", "demo-0", &[]);
        assert_eq!(
            json!(bare),
            json!([{"addresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 5432}]}])
        );
        assert_eq!(pod_ip(&p), Some("10.0.0.5"));
    }

    #[test]
    fn endpoints_read_leniently_with_named_errors() {
        // Fields the types do not know are ignored, missing ones default.
        let obj = json!({"subsets": [{"addresses": [{"ip": "10.0.0.5", "future": 1}],
            "ports": [{"port": 5432, "appProtocol": "postgresql"}], "extra": true}]});
        let s = endpoint_subsets("Endpoints demo-leader", &obj).unwrap();
        assert!(!subsets_changed(
            &s,
            "10.0.0.5",
            &normalise_ports(&[]).unwrap()
        ));
        assert!(endpoint_subsets("x", &json!({})).unwrap().is_empty());
        assert!(endpoint_subsets("x", &json!({"subsets": null}))
            .unwrap()
            .is_empty());
        // A field of the wrong type names the object and the field.
        let bad = json!({"subsets": [{"ports": [{"port": "5432"}]}]});
        let e = endpoint_subsets("Endpoints demo-leader", &bad).unwrap_err();
        assert!(
            e.starts_with("Endpoints demo-leader: subsets: field '[0].ports[0].port'"),
            "{e}"
        );
    }

    #[test]
    fn full_cluster_from_objects() {
        let l = layout(None, false);
        let kinds = kind_objects(
            &l,
            [
                (
                    "11",
                    json!({"config": r#"{"ttl":30,"pause":true}"#, "initialize": "7123456789012345678",
                        "history": r#"[[1,25623960,"no recovery target specified","2024-06-01T09:59:00+02:00","pg-1"],[2,"bad"]]"#}),
                ),
                (
                    "12",
                    json!({"leader": "a", "acquireTime": "T", "renewTime": "T", "ttl": "30", "transitions": "1",
                        "optime": "67108960", "slots": r#"{"s":5}"#}),
                ),
                ("13", json!({"leader": "a", "member": "b"})),
                (
                    "14",
                    json!({"leader": "a", "sync_standby": "c,b", "quorum": "1"}),
                ),
            ],
        );
        let pods = vec![
            pod(
                "b",
                "21",
                None,
                Some(r#"{"state":"running","role":"replica","xlog_location":5}"#),
            ),
            pod(
                "a",
                "20",
                None,
                Some(r#"{"state":"running","role":"master"}"#),
            ),
            pod("c", "22", None, Some("{garbage")),
            pod("d", "23", None, None),
        ];
        let c = build_cluster(&l, &kinds, &pods, true);
        assert_eq!(c.initialized_sysid(), Some("7123456789012345678"));
        assert!(c.is_paused());
        assert_eq!(
            c.config.as_ref().and_then(|c| c.version.as_deref()),
            Some("11")
        );
        assert_eq!(c.history.len(), 1);
        assert_eq!(c.history[0].new_leader.as_deref(), Some("pg-1"));
        assert_eq!(
            c.leader,
            Some(Leader {
                name: "a".into(),
                version: Some("12".into())
            })
        );
        assert_eq!(c.status.optime, Some(67108960));
        assert_eq!(c.status.slots.get("s"), Some(&json!(5)));
        let f = c.failover.as_ref().expect("failover");
        assert_eq!(
            (f.leader.as_deref(), f.member.as_deref()),
            (Some("a"), Some("b"))
        );
        assert_eq!(f.version.as_deref(), Some("13"));
        assert_eq!(c.sync.sync_standby, vec!["b".to_string(), "c".to_string()]);
        assert_eq!(c.sync.quorum, Some(1));
        assert_eq!(c.sync.version.as_deref(), Some("14"));
        let names: Vec<_> = c.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(c.members[0].data.role, Role::Primary);
        assert!(
            c.warnings.iter().any(|w| w.starts_with("Pod c:")),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("ConfigMap demo-config") && w.contains("row 1")),
            "{:?}",
            c.warnings
        );
        // The same objects with an expired lock: no leader, everything else kept.
        let c = build_cluster(&l, &kinds, &pods, false);
        assert!(c.leader.is_none());
        assert_eq!(c.status.optime, Some(67108960));
    }

    #[test]
    fn garbage_annotations_are_warnings() {
        let l = layout(None, false);
        let kinds = kind_objects(
            &l,
            [
                ("1", json!({"config": "[1,2]", "history": "{"})),
                (
                    "2",
                    json!({"leader": "a", "optime": "x", "slots": "[1]", "failsafe": "{\"a\":1}"}),
                ),
                ("4", json!({})),
                ("3", json!({"leader": "a", "quorum": "many"})),
            ],
        );
        let c = build_cluster(&l, &kinds, &[], true);
        assert!(c.config.is_none());
        assert!(c.history.is_empty());
        assert_eq!(c.status.optime, None);
        assert!(c.failover.is_none());
        assert_eq!(c.sync.leader.as_deref(), Some("a"));
        assert_eq!(c.sync.version.as_deref(), Some("3"));
        let has = |obj: &str, ann: &str| {
            c.warnings
                .iter()
                .any(|w| w.contains(obj) && w.contains(&format!("'{ann}'")))
        };
        assert!(has("ConfigMap demo-config", "config"), "{:?}", c.warnings);
        assert!(has("ConfigMap demo-config", "history"), "{:?}", c.warnings);
        assert!(has("ConfigMap demo-leader", "optime"), "{:?}", c.warnings);
        assert!(has("ConfigMap demo-leader", "slots"), "{:?}", c.warnings);
        assert!(has("ConfigMap demo-leader", "failsafe"), "{:?}", c.warnings);
        assert!(c.failsafe.is_none());
        assert!(has("ConfigMap demo-sync", "quorum"), "{:?}", c.warnings);
    }

    #[test]
    fn failover_and_sync_annotations() {
        let f = Failover {
            leader: None,
            member: Some("b".into()),
            scheduled_at: Some("2024-06-01T10:00:00+00:00".into()),
            version: None,
        };
        let m = failover_annotations(&f);
        assert_eq!(m["leader"], Value::Null);
        assert_eq!(m["member"], "b");
        let cleared = failover_annotations(&Failover::default());
        assert!(cleared.values().all(Value::is_null) && cleared.len() == 3);
        let s = SyncState {
            leader: Some("a".into()),
            sync_standby: vec!["c".into(), "b".into()],
            quorum: Some(1),
            version: None,
        };
        let m = sync_annotations(&s);
        assert_eq!(
            (
                m["leader"].as_str(),
                m["sync_standby"].as_str(),
                m["quorum"].as_str()
            ),
            (Some("a"), Some("b,c"), Some("1"))
        );
        let m = sync_annotations(&SyncState::default());
        assert!(m.values().all(Value::is_null));
    }
}
