//! Per-kind behaviour of stored objects: server-set metadata, defaulting on create and update,
//! validation with the real server's field error texts, and normalisation (Go's `omitempty`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use super::resources::ResourceDef;
use super::selectors::{valid_dns_subdomain, valid_label_key, valid_label_value};
use super::status::{ApiError, FieldError};

/// `2024-06-01T10:00:00Z`: the form `metav1.Time` serialises to.
pub fn now_timestamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A random (version 4 layout) UID.
pub fn new_uid() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// A lowercase alphanumeric suffix for `generateName`.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn random_u64() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64
        ^ ((std::process::id() as u64) << 32);
    let n = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ seed;
    // splitmix64 finaliser
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn meta(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

pub fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    meta(object)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    let Value::Object(root) = object else {
        unreachable!("just made an object")
    };
    let entry = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// Drop `null`s and the empty collections that Go's `omitempty` would not serialise.
pub fn normalize(object: &mut Value) {
    fn strip_nulls(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|_, v| !v.is_null());
                m.values_mut().for_each(strip_nulls);
            }
            Value::Array(items) => items.iter_mut().for_each(strip_nulls),
            _ => {}
        }
    }
    strip_nulls(object);
    let empty = |v: &Value| match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    };
    if let Some(Value::Object(m)) = object.get_mut("metadata") {
        for key in [
            "labels",
            "annotations",
            "finalizers",
            "ownerReferences",
            "generateName",
        ] {
            if m.get(key).is_some_and(empty) {
                m.remove(key);
            }
        }
    }
    if let Value::Object(root) = object {
        for key in ["data", "binaryData", "subsets"] {
            if root.get(key).is_some_and(empty) {
                root.remove(key);
            }
        }
    }
}

/// Set `kind`/`apiVersion` first, as the real server serialises them.
pub fn with_type(res: &ResourceDef, object: &Value) -> Value {
    let mut out = Map::new();
    out.insert("kind".into(), json!(res.kind));
    out.insert("apiVersion".into(), json!(res.api_version()));
    if let Value::Object(m) = object {
        for (k, v) in m {
            if k != "kind" && k != "apiVersion" {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// Server-side state that create sets and update keeps.
pub fn prepare_create(res: &ResourceDef, namespace: &str, object: &mut Value) {
    let m = meta_mut(object);
    if res.namespaced {
        m.insert("namespace".into(), json!(namespace));
    } else {
        m.remove("namespace");
    }
    m.insert("uid".into(), json!(new_uid()));
    m.insert("creationTimestamp".into(), json!(now_timestamp()));
    m.remove("resourceVersion");
    m.remove("deletionTimestamp");
    m.remove("deletionGracePeriodSeconds");
    m.remove("generation");
    m.remove("managedFields");
    m.remove("selfLink");
    match res.kind {
        "Pod" => {
            meta_mut(object).insert("generation".into(), json!(1));
            default_pod_spec(object);
            // New pods are Pending until someone (a kubelet, here a test) reports otherwise.
            let qos = "BestEffort";
            object["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        "Service" => {
            object["status"] = json!({"loadBalancer": {}});
        }
        "Namespace" => {
            object["spec"] = json!({"finalizers": ["kubernetes"]});
            object["status"] = json!({"phase": "Active"});
        }
        _ => {}
    }
    default_common(res, object);
}

/// Defaults applied on every write (create and update).
fn default_common(res: &ResourceDef, object: &mut Value) {
    match res.kind {
        "Endpoints" => {
            if let Some(Value::Array(subsets)) = object.get_mut("subsets") {
                for subset in subsets {
                    if let Some(Value::Array(ports)) = subset.get_mut("ports") {
                        for port in ports {
                            if port.is_object() && port.get("protocol").is_none() {
                                port["protocol"] = json!("TCP");
                            }
                        }
                    }
                }
            }
        }
        "Service" => {
            let spec = object
                .as_object_mut()
                .map(|o| o.entry("spec").or_insert_with(|| json!({})));
            if let Some(spec) = spec {
                if !spec.is_object() {
                    *spec = json!({});
                }
                for (key, value) in [
                    ("type", "ClusterIP"),
                    ("sessionAffinity", "None"),
                    ("internalTrafficPolicy", "Cluster"),
                    ("ipFamilyPolicy", "SingleStack"),
                ] {
                    if spec.get(key).is_none() {
                        spec[key] = json!(value);
                    }
                }
                if spec.get("ipFamilies").is_none() {
                    spec["ipFamilies"] = json!(["IPv4"]);
                }
                if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                    for port in ports {
                        if !port.is_object() {
                            continue;
                        }
                        if port.get("protocol").is_none() {
                            port["protocol"] = json!("TCP");
                        }
                        if port.get("targetPort").is_none() {
                            if let Some(p) = port.get("port").cloned() {
                                port["targetPort"] = p;
                            }
                        }
                    }
                }
            }
        }
        "Namespace" => {
            let name = meta_str(object, "name").to_string();
            let m = meta_mut(object);
            let labels = m.entry("labels").or_insert_with(|| json!({}));
            if labels.is_object() {
                labels["kubernetes.io/metadata.name"] = json!(name);
            }
        }
        _ => {}
    }
}

fn default_pod_spec(object: &mut Value) {
    let Some(spec) = object.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    for (key, value) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
        ("serviceAccountName", json!("default")),
        ("serviceAccount", json!("default")),
    ] {
        if spec.get(key).is_none() {
            spec[key] = value;
        }
    }
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(containers)) = spec.get_mut(list) {
            for c in containers.iter_mut().filter(|c| c.is_object()) {
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                let tag_latest = !image.contains(':') || image.ends_with(":latest");
                let policy = if tag_latest && !image.contains('@') {
                    "Always"
                } else {
                    "IfNotPresent"
                };
                for (key, value) in [
                    ("imagePullPolicy", json!(policy)),
                    ("terminationMessagePath", json!("/dev/termination-log")),
                    ("terminationMessagePolicy", json!("File")),
                    ("resources", json!({})),
                ] {
                    if c.get(key).is_none() {
                        c[key] = value;
                    }
                }
                if let Some(Value::Array(ports)) = c.get_mut("ports") {
                    for p in ports.iter_mut().filter(|p| p.is_object()) {
                        if p.get("protocol").is_none() {
                            p["protocol"] = json!("TCP");
                        }
                    }
                }
            }
        }
    }
}

/// Carry server-owned state of `old` into an update `new` of the same object.
///
/// `subresource` is `Some("status")` for writes to `/status`: only the status changes (and, as
/// the real server allows, labels and annotations). Writes to the main resource keep the status.
pub fn prepare_update(res: &ResourceDef, old: &Value, new: &mut Value, subresource: Option<&str>) {
    if subresource == Some("status") {
        let status = new.get("status").cloned();
        let labels = meta(new).and_then(|m| m.get("labels")).cloned();
        let annotations = meta(new).and_then(|m| m.get("annotations")).cloned();
        let rv = meta(new).and_then(|m| m.get("resourceVersion")).cloned();
        *new = old.clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Value::Object(m) = new {
                    m.remove("status");
                }
            }
        }
        let m = meta_mut(new);
        for (key, value) in [("labels", labels), ("annotations", annotations)] {
            match value {
                Some(v) => m.insert(key.into(), v),
                None => m.remove(key),
            };
        }
        match rv {
            Some(v) => m.insert("resourceVersion".into(), v),
            None => m.remove("resourceVersion"),
        };
    } else if res.has_status && res.kind != "Namespace" {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Value::Object(m) = new {
                    m.remove("status");
                }
            }
        }
    }
    let old_meta = meta(old).cloned().unwrap_or_default();
    let m = meta_mut(new);
    for key in [
        "uid",
        "creationTimestamp",
        "name",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old_meta.get(key) {
            Some(v) => m.insert(key.into(), v.clone()),
            None => m.remove(key),
        };
    }
    m.remove("managedFields");
    m.remove("selfLink");
    match res.kind {
        "Pod" => {
            if let (Some(spec), Some(old_spec)) = (new.get("spec").cloned(), old.get("spec")) {
                let mut spec = spec;
                // Fields the API server fills in stay as they were when a client omits them.
                if let (Value::Object(s), Value::Object(o)) = (&mut spec, old_spec) {
                    for (k, v) in o {
                        if !s.contains_key(k) && k != "containers" && k != "initContainers" {
                            s.insert(k.clone(), v.clone());
                        }
                    }
                }
                new["spec"] = spec;
                default_pod_spec(new);
                if new.get("spec") != old.get("spec") {
                    let generation = old_meta
                        .get("generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    meta_mut(new).insert("generation".into(), json!(generation + 1));
                }
            }
        }
        "Service" => {
            for key in ["clusterIP", "clusterIPs"] {
                if new.get("spec").and_then(|s| s.get(key)).is_none() {
                    if let Some(v) = old.get("spec").and_then(|s| s.get(key)) {
                        if let Some(spec) = new.get_mut("spec").filter(|s| s.is_object()) {
                            spec[key] = v.clone();
                        }
                    }
                }
            }
        }
        "Namespace" if subresource != Some("status") => {
            if let Some(s) = old.get("status") {
                new["status"] = s.clone();
            }
        }
        _ => {}
    }
    default_common(res, new);
}

/// Allocate a cluster IP for a new Service (unless headless).
pub fn allocate_cluster_ip(object: &mut Value, counter: u64) {
    let Some(spec) = object.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    let ip = match spec.get("clusterIP").and_then(Value::as_str) {
        Some(ip) if !ip.is_empty() => ip.to_string(),
        _ => {
            if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
                return;
            }
            format!("10.96.{}.{}", (counter / 250) % 256, counter % 250 + 2)
        }
    };
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
}

const RFC1123_SUBDOMAIN_HELP: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
     alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character \
     (e.g. 'example.com', regex used for validation is \
     '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const RFC1123_LABEL_HELP: &str = "a lowercase RFC 1123 label must consist of lower case \
     alphanumeric characters or '-', and must start and end with an alphanumeric character \
     (e.g. 'my-name',  or '123-abc', regex used for validation is \
     '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const RFC1035_LABEL_HELP: &str = "a DNS-1035 label must consist of lower case alphanumeric \
     characters or '-', start with an alphabetic character, and end with an alphanumeric \
     character (e.g. 'my-name',  or 'abc-123', regex used for validation is \
     '[a-z]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE_HELP: &str = "a valid label must be an empty string or consist of alphanumeric \
     characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. \
     'MyValue',  or 'my_value',  or '12345', regex used for validation is \
     '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QUALIFIED_NAME_HELP: &str = "name part must consist of alphanumeric characters, '-', '_' or \
     '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  \
     or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

fn dns_label(value: &str) -> bool {
    value.len() <= 63 && valid_dns_subdomain(value) && !value.contains('.')
}

/// Validate `object` (already defaulted) as the real server would; `Err` is a 422 answer.
pub fn validate(res: &ResourceDef, object: &Value) -> Result<(), ApiError> {
    let name = meta_str(object, "name");
    let mut errors = Vec::new();
    if name.is_empty() {
        errors.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        match res.kind {
            "Service" => {
                let ok = dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase());
                if !ok {
                    errors.push(FieldError::invalid(
                        "metadata.name",
                        name,
                        RFC1035_LABEL_HELP,
                    ));
                }
            }
            "Namespace" => {
                if !dns_label(name) {
                    errors.push(FieldError::invalid(
                        "metadata.name",
                        name,
                        RFC1123_LABEL_HELP,
                    ));
                }
            }
            _ => {
                if !valid_dns_subdomain(name) {
                    errors.push(FieldError::invalid(
                        "metadata.name",
                        name,
                        RFC1123_SUBDOMAIN_HELP,
                    ));
                }
            }
        }
    }
    if let Some(labels) = meta(object).and_then(|m| m.get("labels")) {
        match labels.as_object() {
            Some(labels) => {
                for (key, value) in labels {
                    if !valid_label_key(key) {
                        errors.push(FieldError::invalid(
                            "metadata.labels",
                            key,
                            QUALIFIED_NAME_HELP,
                        ));
                    }
                    match value.as_str() {
                        Some(v) if valid_label_value(v) => {}
                        Some(v) => {
                            errors.push(FieldError::invalid("metadata.labels", v, LABEL_VALUE_HELP))
                        }
                        None => errors.push(FieldError::invalid(
                            "metadata.labels",
                            &value.to_string(),
                            "label values must be strings",
                        )),
                    }
                }
            }
            None => errors.push(FieldError::invalid(
                "metadata.labels",
                &labels.to_string(),
                "must be a map of strings",
            )),
        }
    }
    if let Some(annotations) = meta(object).and_then(|m| m.get("annotations")) {
        let mut total = 0;
        match annotations.as_object() {
            Some(map) => {
                for (key, value) in map {
                    if !valid_label_key(key) {
                        errors.push(FieldError::invalid(
                            "metadata.annotations",
                            key,
                            QUALIFIED_NAME_HELP,
                        ));
                    }
                    total += key.len() + value.as_str().map(str::len).unwrap_or(0);
                    if !value.is_string() {
                        errors.push(FieldError::invalid(
                            "metadata.annotations",
                            &value.to_string(),
                            "annotation values must be strings",
                        ));
                    }
                }
            }
            None => errors.push(FieldError::invalid(
                "metadata.annotations",
                &annotations.to_string(),
                "must be a map of strings",
            )),
        }
        if total > 256 * 1024 {
            errors.push(FieldError::too_long("metadata.annotations", 256 * 1024));
        }
    }
    match res.kind {
        "ConfigMap" => validate_configmap(object, &mut errors),
        "Endpoints" => validate_endpoints(object, &mut errors),
        "Pod" => validate_pod(object, &mut errors),
        "Service" => validate_service(object, &mut errors),
        _ => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res, name, &errors))
    }
}

fn validate_configmap(object: &Value, errors: &mut Vec<FieldError>) {
    let size: usize = ["data", "binaryData"]
        .iter()
        .filter_map(|f| object.get(*f).and_then(Value::as_object))
        .flat_map(|m| m.values())
        .map(|v| v.as_str().map_or(0, str::len))
        .sum();
    if size > 1024 * 1024 {
        errors.push(FieldError {
            field: "[]".into(),
            cause: "FieldValueTooLong",
            body: format!("Too long: must have at most {} bytes", 1024 * 1024),
        });
    }
    for field in ["data", "binaryData"] {
        let Some(data) = object.get(field) else {
            continue;
        };
        let Some(map) = data.as_object() else {
            errors.push(FieldError::invalid(
                field,
                &data.to_string(),
                "must be a map",
            ));
            continue;
        };
        for (key, value) in map {
            let ok = !key.is_empty()
                && key.len() <= 253
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
            if !ok {
                errors.push(FieldError::invalid(
                    format!("{field}[{key}]"),
                    key,
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
                     (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation \
                     is '[-._a-zA-Z0-9]+')",
                ));
            }
            if field == "data" && !value.is_string() {
                errors.push(FieldError::invalid(
                    format!("data[{key}]"),
                    &value.to_string(),
                    "must be a string",
                ));
            }
        }
    }
}

/// The checks of `ValidateNonSpecialIP`, with its messages.
fn validate_endpoint_ip(ip: &str, field: &str, errors: &mut Vec<FieldError>) {
    let parsed: Option<std::net::IpAddr> = ip.parse().ok();
    let Some(addr) = parsed else {
        errors.push(FieldError::invalid(field, ip, "must be a valid IP address"));
        return;
    };
    if addr.is_unspecified() {
        errors.push(FieldError::invalid(
            field,
            ip,
            &format!("may not be unspecified ({ip})"),
        ));
    }
    if addr.is_loopback() {
        errors.push(FieldError::invalid(
            field,
            ip,
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        ));
    }
    let link_local = match addr {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        errors.push(FieldError::invalid(
            field,
            ip,
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        ));
    }
    let link_local_multicast = match addr {
        std::net::IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xff0f) == 0xff02,
    };
    if link_local_multicast {
        errors.push(FieldError::invalid(
            field,
            ip,
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        ));
    }
}

fn validate_endpoints(object: &Value, errors: &mut Vec<FieldError>) {
    let Some(subsets) = object.get("subsets") else {
        return;
    };
    let Some(subsets) = subsets.as_array() else {
        errors.push(FieldError::invalid(
            "subsets",
            &subsets.to_string(),
            "must be a list",
        ));
        return;
    };
    for (i, subset) in subsets.iter().enumerate() {
        let addresses = subset.get("addresses").and_then(Value::as_array);
        let not_ready = subset.get("notReadyAddresses").and_then(Value::as_array);
        if addresses.is_none_or_empty() && not_ready.is_none_or_empty() {
            errors.push(FieldError::required(
                format!("subsets[{i}]"),
                "must specify `addresses` or `notReadyAddresses`",
            ));
        }
        for (list_name, list) in [("addresses", addresses), ("notReadyAddresses", not_ready)] {
            for (j, address) in list.into_iter().flatten().enumerate() {
                let field = format!("subsets[{i}].{list_name}[{j}].ip");
                match address.get("ip").and_then(Value::as_str) {
                    Some(ip) => validate_endpoint_ip(ip, &field, errors),
                    None => errors.push(FieldError::invalid(
                        &field,
                        "",
                        "must be a valid IP address",
                    )),
                }
            }
        }
        let ports = subset.get("ports").and_then(Value::as_array);
        let many = ports.map(Vec::len).unwrap_or(0) > 1;
        for (j, port) in ports.into_iter().flatten().enumerate() {
            let field = format!("subsets[{i}].ports[{j}]");
            let name = port.get("name").and_then(Value::as_str).unwrap_or("");
            if many && name.is_empty() {
                errors.push(FieldError::required(format!("{field}.name"), ""));
            }
            match port.get("port").and_then(Value::as_i64) {
                Some(p) if (1..=65535).contains(&p) => {}
                other => errors.push(FieldError::invalid(
                    format!("{field}.port"),
                    &other.map(|p| p.to_string()).unwrap_or_default(),
                    "must be between 1 and 65535, inclusive",
                )),
            }
            let protocol = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP");
            if !["TCP", "UDP", "SCTP"].contains(&protocol) {
                errors.push(FieldError::unsupported(
                    format!("{field}.protocol"),
                    protocol,
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
    }
}

trait NoneOrEmpty {
    fn is_none_or_empty(&self) -> bool;
}

impl NoneOrEmpty for Option<&Vec<Value>> {
    fn is_none_or_empty(&self) -> bool {
        self.map(Vec::is_empty).unwrap_or(true)
    }
}

fn validate_pod(object: &Value, errors: &mut Vec<FieldError>) {
    let containers = object
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    let Some(containers) = containers.filter(|c| !c.is_empty()) else {
        errors.push(FieldError::required("spec.containers", ""));
        return;
    };
    for (i, c) in containers.iter().enumerate() {
        if c.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            errors.push(FieldError::required(
                format!("spec.containers[{i}].name"),
                "",
            ));
        }
        if c.get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            errors.push(FieldError::required(
                format!("spec.containers[{i}].image"),
                "",
            ));
        }
    }
}

/// The spec of a pod with the fields an update may change masked out.
fn pod_spec_immutable_part(spec: Option<&Value>) -> Value {
    let mut spec = spec.cloned().unwrap_or(Value::Null);
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            for c in cs.iter_mut().filter(|c| c.is_object()) {
                c["image"] = Value::Null;
            }
        }
    }
    if let Value::Object(m) = &mut spec {
        m.remove("activeDeadlineSeconds");
        m.remove("tolerations");
        m.remove("terminationGracePeriodSeconds");
    }
    spec
}

/// Update-only checks (immutable fields).
pub fn validate_update(res: &ResourceDef, old: &Value, new: &Value) -> Result<(), ApiError> {
    let name = meta_str(new, "name");
    if res.kind == "Pod"
        && pod_spec_immutable_part(old.get("spec")) != pod_spec_immutable_part(new.get("spec"))
    {
        return Err(ApiError::invalid(
            res,
            name,
            &[FieldError::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,\
                 `spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,\
                 `spec.tolerations` (only additions to existing tolerations),\
                 `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was \
                 previously negative)",
            )],
        ));
    }
    if res.kind == "Service" {
        let ip = |o: &Value| o.get("spec").and_then(|s| s.get("clusterIP")).cloned();
        if ip(old) != ip(new) {
            let value = ip(new)
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            return Err(ApiError::invalid(
                res,
                name,
                &[FieldError::invalid(
                    "spec.clusterIPs[0]",
                    &value,
                    "may not change once set",
                )],
            ));
        }
    }
    validate(res, new)
}

fn validate_service(object: &Value, errors: &mut Vec<FieldError>) {
    let spec = object.get("spec");
    let headless = spec
        .and_then(|s| s.get("clusterIP"))
        .and_then(Value::as_str)
        == Some("None");
    let kind = spec
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let ports = spec.and_then(|s| s.get("ports")).and_then(Value::as_array);
    if ports.is_none_or_empty() && !headless && kind != "ExternalName" {
        errors.push(FieldError::required("spec.ports", ""));
    }
    let many = ports.map(Vec::len).unwrap_or(0) > 1;
    for (i, port) in ports.into_iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        if many
            && port
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        {
            errors.push(FieldError::required(format!("{field}.name"), ""));
        }
        match port.get("port").and_then(Value::as_i64) {
            Some(p) if (1..=65535).contains(&p) => {}
            other => errors.push(FieldError::invalid(
                format!("{field}.port"),
                &other.map(|p| p.to_string()).unwrap_or_default(),
                "must be between 1 and 65535, inclusive",
            )),
        }
    }
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&kind) {
        errors.push(FieldError::unsupported(
            "spec.type",
            kind,
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
}
