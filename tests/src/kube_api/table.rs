//! `as=Table` answers for `kubectl get`: the columns the real server prints for each kind.

use serde_json::{json, Value};

use super::objects::meta;
use super::resources::ResourceDef;

/// `duration.HumanDuration` of Kubernetes: `45s`, `3m20s`, `2d3h`, ...
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let d = (hours / 24) % 365;
        return if d == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{d}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn age(object: &Value) -> String {
    let created = meta(object)
        .and_then(|m| m.get("creationTimestamp"))
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    match created {
        Some(t) => {
            human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        }
        None => "<unknown>".into(),
    }
}

fn column(name: &str, kind: &str, format: &str, priority: u32, description: &str) -> Value {
    json!({"name": name, "type": kind, "format": format, "description": description, "priority": priority})
}

fn str_at<'a>(object: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = Some(object);
    for p in path {
        cur = cur.and_then(|c| c.get(*p));
    }
    cur.and_then(Value::as_str).unwrap_or("")
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating \
    resources, although some resources may allow a client to request the generation of an \
    appropriate name automatically. Name is primarily intended for creation idempotence and \
    configuration definition. Cannot be updated. More info: \
    https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when \
    this object was created. It is not guaranteed to be set in happens-before order across \
    separate operations. Clients may not set this value. It is represented in RFC3339 form and is \
    in UTC.";

fn columns(res: &ResourceDef) -> Vec<Value> {
    let name = column("Name", "string", "name", 0, NAME_DESCRIPTION);
    let age = column("Age", "string", "", 0, AGE_DESCRIPTION);
    match res.kind {
        "ConfigMap" => vec![
            name,
            column("Data", "integer", "", 0, "Data contains the configuration data."),
            age,
        ],
        "Pod" => vec![
            name,
            column("Ready", "string", "", 0, "The aggregate readiness state of this pod for accepting traffic."),
            column("Status", "string", "", 0, "The aggregate status of the containers in this pod."),
            column("Restarts", "string", "", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age,
            column("IP", "string", "", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            column("Node", "string", "", 1, "NodeName is a request to schedule this pod onto a specific node."),
            column("Nominated Node", "string", "", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
            column("Readiness Gates", "string", "", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        "Service" => vec![
            name,
            column("Type", "string", "", 0, "type determines how the Service is exposed."),
            column("Cluster-IP", "string", "", 0, "clusterIP is the IP address of the service."),
            column("External-IP", "string", "", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
            column("Port(s)", "string", "", 0, "The list of ports that are exposed by this service."),
            age,
            column("Selector", "string", "", 1, "Route service traffic to pods with label keys and values matching this selector."),
        ],
        "Endpoints" => vec![
            name,
            column("Endpoints", "string", "", 0, "Endpoints is the list of endpoints in this Endpoints object."),
            age,
        ],
        "Namespace" => vec![
            name,
            column("Status", "string", "", 0, "The status of the namespace"),
            age,
        ],
        "Lease" => vec![
            name,
            column("Holder", "string", "", 0, "holderIdentity contains the identity of the holder of a current lease."),
            age,
        ],
        _ => vec![name, age],
    }
}

fn cells(res: &ResourceDef, o: &Value) -> Vec<Value> {
    let name = json!(str_at(o, &["metadata", "name"]));
    match res.kind {
        "ConfigMap" => {
            let n = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + o.get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name, json!(n), json!(age(o))]
        }
        "Pod" => {
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let statuses = o["status"]["containerStatuses"].as_array();
            let ready = statuses.map_or(0, |s| {
                s.iter()
                    .filter(|c| c["ready"].as_bool() == Some(true))
                    .count()
            });
            let restarts: i64 = statuses.map_or(0, |s| {
                s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
            });
            let mut status = str_at(o, &["status", "reason"]).to_string();
            if status.is_empty() {
                status = str_at(o, &["status", "phase"]).to_string();
            }
            if o["metadata"].get("deletionTimestamp").is_some() {
                status = "Terminating".into();
            }
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                json!(age(o)),
                json!(or_none(str_at(o, &["status", "podIP"]))),
                json!(or_none(str_at(o, &["spec", "nodeName"]))),
                json!(or_none(str_at(o, &["status", "nominatedNodeName"]))),
                json!("<none>"),
            ]
        }
        "Service" => {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let port = p["port"].as_i64().unwrap_or(0);
                            let proto = p["protocol"].as_str().unwrap_or("TCP");
                            match p["nodePort"].as_i64() {
                                Some(np) => format!("{port}:{np}/{proto}"),
                                None => format!("{port}/{proto}"),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let selector: Vec<String> = o["spec"]["selector"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(str_at(o, &["spec", "type"])),
                json!(or_none(str_at(o, &["spec", "clusterIP"]))),
                json!("<none>"),
                json!(or_none(&ports.join(","))),
                json!(age(o)),
                json!(or_none(&selector.join(","))),
            ]
        }
        "Endpoints" => {
            let mut list = Vec::new();
            for subset in o["subsets"].as_array().into_iter().flatten() {
                let ports: Vec<i64> = subset["ports"]
                    .as_array()
                    .map(|ps| ps.iter().filter_map(|p| p["port"].as_i64()).collect())
                    .unwrap_or_default();
                for address in subset["addresses"].as_array().into_iter().flatten() {
                    let ip = address["ip"].as_str().unwrap_or("");
                    if ports.is_empty() {
                        list.push(ip.to_string());
                    }
                    for port in &ports {
                        list.push(format!("{ip}:{port}"));
                    }
                }
            }
            let shown = if list.len() > 3 {
                format!("{} + {} more...", list[..3].join(","), list.len() - 3)
            } else {
                list.join(",")
            };
            vec![name, json!(or_none(&shown)), json!(age(o))]
        }
        "Namespace" => vec![name, json!(str_at(o, &["status", "phase"])), json!(age(o))],
        "Lease" => vec![
            name,
            json!(str_at(o, &["spec", "holderIdentity"])),
            json!(age(o)),
        ],
        _ => vec![name, json!(age(o))],
    }
}

/// A `meta.k8s.io/v1` Table of `objects`; `include_object` is the `includeObject` parameter
/// (`None`, `Metadata` (default) or `Object`).
pub fn table(res: &ResourceDef, objects: &[Value], rv: Option<u64>, include_object: &str) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(res, o)});
            match include_object {
                "None" => {}
                "Object" => row["object"] = super::objects::with_type(res, o),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                    })
                }
            }
            row
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = rv {
        metadata["resourceVersion"] = json!(rv.to_string());
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(res),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(50 * 3600), "2d2h");
    }
}
