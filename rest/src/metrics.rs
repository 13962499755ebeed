//! `GET /metrics`: Prometheus text with Patroni's metric names (reference §4.4).

use std::fmt::Write;

use axum::http::StatusCode;
use axum::response::Response;

use crate::reply;
use crate::status::{status_json, Xlog};
use crate::Snapshot;

/// Patroni's numeric codes for Postgres states; anything else is -1.
/// (state text, metric description name, index).
const STATE_INDEX: &[(&str, &str, i32)] = &[
    ("initializing new cluster", "initdb", 0),
    ("initdb failed", "initdb_failed", 1),
    ("running custom bootstrap script", "custom_bootstrap", 2),
    ("custom bootstrap failed", "custom_bootstrap_failed", 3),
    ("creating replica", "creating_replica", 4),
    ("running", "running", 5),
    ("starting", "starting", 6),
    ("starting after custom bootstrap", "bootstrap_starting", 7),
    ("start failed", "start_failed", 8),
    ("restarting", "restarting", 9),
    ("restart failed", "restart_failed", 10),
    ("stopping", "stopping", 11),
    ("stopped", "stopped", 12),
    ("stop failed", "stop_failed", 13),
    ("crashed", "crashed", 14),
];

/// Seconds since the epoch of a Postgres timestamp as text (`2024-06-01 10:00:00.123+00`); 0 if
/// absent or unreadable.
fn epoch_seconds(text: Option<&str>) -> f64 {
    let Some(text) = text else { return 0.0 };
    let parsed = chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z"))
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z"));
    match parsed {
        Ok(t) => t.timestamp_micros() as f64 / 1e6,
        Err(_) => 0.0,
    }
}

/// `4.1.5` → `040105`.
fn padded_version(version: &str) -> String {
    version
        .split('.')
        .map(|part| format!("{part:0>2}"))
        .collect()
}

pub(crate) fn metrics(snapshot: &Snapshot) -> Response {
    reply::text(StatusCode::OK, "text/plain", render(snapshot))
}

pub(crate) fn render(snapshot: &Snapshot) -> String {
    let status = status_json(snapshot);
    let labels = format!(
        "{{scope=\"{}\",name=\"{}\"}}",
        snapshot.scope, snapshot.name
    );
    let mut out = String::new();
    let mut gauge = |name: &str, kind: &str, help: &str, value: String| {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP patroni_{name} {help}");
        let _ = writeln!(out, "# TYPE patroni_{name} {kind}");
        let _ = writeln!(out, "patroni_{name}{labels} {value}");
    };
    let flag = |b: bool| u8::from(b).to_string();
    let (location, received, replayed, replayed_ts, paused) = match &status.xlog {
        Some(Xlog::Primary { location }) => (*location, 0, 0, 0.0, false),
        Some(Xlog::Replica {
            received_location,
            replayed_location,
            replayed_timestamp,
            paused,
        }) => (
            0,
            received_location.unwrap_or(0),
            replayed_location.unwrap_or(0),
            epoch_seconds(replayed_timestamp.as_deref()),
            *paused,
        ),
        None => (0, 0, 0, 0.0, false),
    };
    let postmaster_start = epoch_seconds(
        status
            .postmaster_start_time
            .as_ref()
            .and_then(serde_json::Value::as_str),
    );
    let server_version = status.server_version.unwrap_or(0);

    gauge(
        "version",
        "gauge",
        "Patroni semver without periods.",
        padded_version(&snapshot.version),
    );
    gauge(
        "postgres_running",
        "gauge",
        "Value is 1 if Postgres is running, 0 otherwise.",
        flag(status.is_running()),
    );
    gauge(
        "postmaster_start_time",
        "gauge",
        "Epoch seconds since Postgres started.",
        postmaster_start.to_string(),
    );
    gauge(
        "primary",
        "gauge",
        "Value is 1 if this node is the leader, 0 otherwise.",
        flag(status.role == "primary"),
    );
    gauge(
        "xlog_location",
        "counter",
        "Current location of the Postgres transaction log, 0 if this node is not the leader.",
        location.to_string(),
    );
    gauge(
        "standby_leader",
        "gauge",
        "Value is 1 if this node is the standby_leader, 0 otherwise.",
        flag(status.role == "standby_leader"),
    );
    gauge(
        "replica",
        "gauge",
        "Value is 1 if this node is a replica, 0 otherwise.",
        flag(status.role == "replica"),
    );
    gauge(
        "sync_standby",
        "gauge",
        "Value is 1 if this node is a sync standby, 0 otherwise.",
        flag(status.sync_standby == Some(true)),
    );
    gauge(
        "quorum_standby",
        "gauge",
        "Value is 1 if this node is a quorum standby, 0 otherwise.",
        flag(status.quorum_standby == Some(true)),
    );
    gauge(
        "xlog_received_location",
        "counter",
        "Current location of the received Postgres transaction log, 0 if this node is not a replica.",
        received.to_string(),
    );
    gauge(
        "xlog_replayed_location",
        "counter",
        "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.",
        replayed.to_string(),
    );
    gauge(
        "xlog_replayed_timestamp",
        "gauge",
        "Current timestamp of the replayed Postgres transaction log, 0 if null.",
        replayed_ts.to_string(),
    );
    gauge(
        "xlog_paused",
        "gauge",
        "Value is 1 if the Postgres xlog is paused, 0 otherwise.",
        flag(paused),
    );
    if server_version >= 90600 {
        let rs = status.replication_state.as_deref();
        gauge(
            "postgres_streaming",
            "gauge",
            "Value is 1 if Postgres is streaming, 0 otherwise.",
            flag(rs == Some("streaming")),
        );
        gauge(
            "postgres_in_archive_recovery",
            "gauge",
            "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
            flag(rs == Some("in archive recovery")),
        );
    }
    gauge(
        "postgres_server_version",
        "gauge",
        "Version of Postgres (if running), 0 otherwise.",
        server_version.to_string(),
    );
    gauge(
        "cluster_unlocked",
        "gauge",
        "Value is 1 if the cluster is unlocked, 0 if locked.",
        flag(status.cluster_unlocked == Some(true)),
    );
    gauge(
        "failsafe_mode_is_active",
        "gauge",
        "Value is 1 if failsafe mode is active, 0 if inactive.",
        flag(status.failsafe_mode_is_active == Some(true)),
    );
    gauge(
        "postgres_timeline",
        "gauge",
        "Postgres timeline of this node (if running), 0 otherwise.",
        status.timeline.flatten().unwrap_or(0).to_string(),
    );
    gauge(
        "dcs_last_seen",
        "gauge",
        "Epoch timestamp when DCS was last contacted successfully by Patroni.",
        status.dcs_last_seen.to_string(),
    );
    gauge(
        "pending_restart",
        "gauge",
        "Value is 1 if the node needs a restart, 0 otherwise.",
        flag(snapshot.postgres.pending_restart),
    );
    gauge(
        "is_paused",
        "gauge",
        "Value is 1 if auto failover is disabled, 0 otherwise.",
        flag(status.pause == Some(true)),
    );

    let state_index = STATE_INDEX
        .iter()
        .find(|(text, _, _)| *text == status.state)
        .map_or(-1, |(_, _, index)| *index);
    let descriptions: Vec<String> = STATE_INDEX
        .iter()
        .map(|(_, name, index)| format!("{index}={name}"))
        .collect();
    let _ = writeln!(
        out,
        "# HELP patroni_postgres_state Numeric representation of Postgres state."
    );
    let _ = writeln!(out, "# Values: {}", descriptions.join(", "));
    let _ = writeln!(out, "# TYPE patroni_postgres_state gauge");
    let _ = writeln!(out, "patroni_postgres_state{labels} {state_index}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_and_time() {
        assert_eq!(padded_version("4.1.5"), "040105");
        assert_eq!(epoch_seconds(Some("1970-01-01 00:00:10.5+00:00")), 10.5);
        assert_eq!(epoch_seconds(Some("1970-01-01 01:00:10+01")), 10.0);
        assert_eq!(epoch_seconds(Some("garbage")), 0.0);
        assert_eq!(epoch_seconds(None), 0.0);
    }
}
