//! `GET /cluster`, `/history`, `/config`, `/failsafe` (docs/compatibility.md, *REST API*): views of the last DCS read.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value};

use crate::reply;
use crate::status::{sync_matches, GlobalView};
use crate::Snapshot;

/// `{"members": [...], "scope", "pause"?, "scheduled_switchover"?}`, members sorted by name.
pub(crate) fn cluster(snapshot: &Snapshot) -> Response {
    match &snapshot.cluster {
        Some(cluster) => reply::json(StatusCode::OK, &cluster_json(snapshot, cluster)),
        None => reply::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "DCS view not available yet",
        ),
    }
}

pub(crate) fn cluster_json(snapshot: &Snapshot, cluster: &model::Cluster) -> Value {
    let global = GlobalView::of(snapshot);
    let leader_name = cluster.leader_name();
    let cluster_lsn = cluster.status.optime.unwrap_or(0);
    let sync_role = if global.is_quorum_commit_mode() {
        "quorum_standby"
    } else {
        "sync_standby"
    };

    let mut members: Vec<Value> = cluster
        .members
        .iter()
        .map(|m| {
            let data = &m.data;
            let is_leader = Some(m.name.as_str()) == leader_name;
            let role = if is_leader {
                if global.is_standby_cluster() {
                    "standby_leader"
                } else {
                    "leader"
                }
            } else if global.is_synchronous_mode() && sync_matches(cluster, &m.name) {
                sync_role
            } else {
                "replica"
            };
            // Non-leaders show how they replicate (`streaming`, ...) rather than `running`.
            let state = match (&data.replication_state, role) {
                (Some(rs), r) if r != "leader" && !rs.is_empty() => rs.clone(),
                _ => data.state.to_string(),
            };
            let mut member = Map::new();
            member.insert("name".into(), Value::from(m.name.clone()));
            member.insert("role".into(), Value::from(role));
            member.insert("state".into(), Value::from(state));
            member.insert(
                "api_url".into(),
                data.api_url.clone().map(Value::from).unwrap_or(Value::Null),
            );
            if let Some((host, port)) = data.conn_host_port() {
                member.insert("host".into(), Value::from(host));
                member.insert("port".into(), Value::from(port));
            }
            if let Some(tl) = data.timeline {
                member.insert("timeline".into(), Value::from(tl));
            }
            if let Some(pending) = data.pending_restart {
                member.insert("pending_restart".into(), Value::from(pending));
            }
            if let Some(reason) = &data.pending_restart_reason {
                member.insert("pending_restart_reason".into(), reason.clone());
            }
            if let Some(restart) = &data.scheduled_restart {
                member.insert("scheduled_restart".into(), restart.clone());
            }
            if !data.tags.is_empty() {
                member.insert(
                    "tags".into(),
                    serde_json::to_value(&data.tags).unwrap_or(Value::Null),
                );
            }
            if !is_leader {
                for (prefix, lsn) in [
                    ("receive_", data.receive_lsn),
                    ("replay_", data.replay_lsn),
                    ("", data.xlog_location),
                ] {
                    let (lsn_value, lag_value) = match lsn.filter(|l| *l > 0) {
                        None => (Value::from("unknown"), Value::from("unknown")),
                        Some(lsn) => (
                            Value::from(model::format_lsn(lsn)),
                            Value::from(cluster_lsn.saturating_sub(lsn)),
                        ),
                    };
                    member.insert(format!("{prefix}lsn"), lsn_value);
                    member.insert(format!("{prefix}lag"), lag_value);
                }
            }
            Value::Object(member)
        })
        .collect();
    members.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));

    let mut out = Map::new();
    out.insert("members".into(), Value::Array(members));
    out.insert("scope".into(), Value::from(snapshot.scope.clone()));
    if cluster.is_paused() {
        out.insert("pause".into(), Value::Bool(true));
    }
    if let Some(failover) = &cluster.failover {
        if let Some(at) = &failover.scheduled_at {
            let mut scheduled = Map::new();
            scheduled.insert("at".into(), Value::from(at.clone()));
            if let Some(from) = &failover.leader {
                scheduled.insert("from".into(), Value::from(from.clone()));
            }
            if let Some(to) = &failover.member {
                scheduled.insert("to".into(), Value::from(to.clone()));
            }
            out.insert("scheduled_switchover".into(), Value::Object(scheduled));
        }
    }
    Value::Object(out)
}

/// The timeline history rows, `[]` when none are known.
pub(crate) fn history(snapshot: &Snapshot) -> Response {
    let rows: Vec<Value> = snapshot
        .cluster
        .as_ref()
        .map(|c| c.history.iter().map(model::HistoryEntry::to_json).collect())
        .unwrap_or_default();
    reply::json(StatusCode::OK, &rows)
}

/// The dynamic configuration; 502 when the DCS holds none.
pub(crate) fn config(snapshot: &Snapshot) -> Response {
    let config = snapshot
        .dynamic_config
        .as_ref()
        .or_else(|| snapshot.cluster.as_ref()?.config.as_ref().map(|c| &c.raw));
    match config {
        Some(value) => reply::json(StatusCode::OK, value),
        None => reply::error_page(StatusCode::BAD_GATEWAY, "Bad Gateway"),
    }
}

/// The failsafe topology; 502 when failsafe mode is off.
pub(crate) fn failsafe(snapshot: &Snapshot) -> Response {
    match &snapshot.failsafe {
        Some(value @ Value::Object(_)) => reply::json(StatusCode::OK, value),
        _ => reply::error_page(StatusCode::BAD_GATEWAY, "Bad Gateway"),
    }
}
