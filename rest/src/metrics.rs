//! `GET /metrics`: Prometheus text with Patroni's metric names (docs/compatibility.md, *REST API*).

use std::fmt::Write;

use axum::http::StatusCode;
use axum::response::Response;

use crate::reply;
use crate::status::{status_json, Xlog};
use crate::{Snapshot, Wal};

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
    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    reply::text(StatusCode::OK, "text/plain", render(snapshot, now))
}

/// A label value with Prometheus' escapes (`\\`, `\"`, `\n`).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition: each family's HELP and TYPE, then its samples, all labelled with
/// `{scope, name}` of this member (plus any per-sample labels).
struct Exposition {
    out: String,
    labels: Vec<(&'static str, String)>,
}

impl Exposition {
    fn new(snapshot: &Snapshot) -> Exposition {
        Exposition {
            out: String::new(),
            labels: vec![
                ("scope", snapshot.scope.clone()),
                ("name", snapshot.name.clone()),
            ],
        }
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, extra: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(extra.iter().copied())
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
    }

    /// One family with the single sample of this member.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Bytes the replica's replayed WAL is behind the leader's last published position (DCS
/// `optime`): what `GET /replica?lag=` compares. `None` on the lock holder or when either
/// position is unknown.
fn own_replication_lag(snapshot: &Snapshot) -> Option<u64> {
    if snapshot.has_lock {
        return None;
    }
    let replayed = match &snapshot.postgres.wal {
        Wal::Replica { replayed, .. } => (*replayed)?,
        _ => return None,
    };
    let cluster = snapshot.cluster.as_ref()?;
    cluster.leader.as_ref()?;
    let optime = cluster.status.optime.filter(|o| *o > 0)?;
    Some(optime.saturating_sub(replayed))
}

/// On the lock holder: every other member with a known position and its lag behind the
/// leader's published position, the numbers `GET /cluster` and `list` show. Sorted by name.
fn members_replication_lag(snapshot: &Snapshot) -> Vec<(String, u64)> {
    let Some(cluster) = snapshot.cluster.as_ref().filter(|_| snapshot.has_lock) else {
        return Vec::new();
    };
    let Some(optime) = cluster.status.optime.filter(|o| *o > 0) else {
        return Vec::new();
    };
    let mut lags: Vec<(String, u64)> = cluster
        .members
        .iter()
        .filter(|m| m.name != snapshot.name)
        .filter_map(|m| {
            let location = m.data.xlog_location.filter(|l| *l > 0)?;
            Some((m.name.clone(), optime.saturating_sub(location)))
        })
        .collect();
    lags.sort();
    lags
}

/// The exposition at `now` (unix seconds): Patroni's families first, in Patroni's order and
/// words, then Regent's own.
pub(crate) fn render(snapshot: &Snapshot, now: f64) -> String {
    let status = status_json(snapshot);
    let mut metrics = Exposition::new(snapshot);
    let flag = |b: bool| u8::from(b);
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
    let mut gauge = |name: &str, kind: &str, help: &str, value: String| {
        metrics.single(&format!("patroni_{name}"), kind, help, value);
    };

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
        flag(status.is_running()).to_string(),
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
        flag(status.role == "primary").to_string(),
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
        flag(status.role == "standby_leader").to_string(),
    );
    gauge(
        "replica",
        "gauge",
        "Value is 1 if this node is a replica, 0 otherwise.",
        flag(status.role == "replica").to_string(),
    );
    gauge(
        "sync_standby",
        "gauge",
        "Value is 1 if this node is a sync standby, 0 otherwise.",
        flag(status.sync_standby == Some(true)).to_string(),
    );
    gauge(
        "quorum_standby",
        "gauge",
        "Value is 1 if this node is a quorum standby, 0 otherwise.",
        flag(status.quorum_standby == Some(true)).to_string(),
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
        flag(paused).to_string(),
    );
    if server_version >= 90600 {
        let rs = status.replication_state.as_deref();
        gauge(
            "postgres_streaming",
            "gauge",
            "Value is 1 if Postgres is streaming, 0 otherwise.",
            flag(rs == Some("streaming")).to_string(),
        );
        gauge(
            "postgres_in_archive_recovery",
            "gauge",
            "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
            flag(rs == Some("in archive recovery")).to_string(),
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
        flag(status.cluster_unlocked == Some(true)).to_string(),
    );
    gauge(
        "failsafe_mode_is_active",
        "gauge",
        "Value is 1 if failsafe mode is active, 0 if inactive.",
        flag(status.failsafe_mode_is_active == Some(true)).to_string(),
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
        flag(snapshot.postgres.pending_restart).to_string(),
    );
    gauge(
        "is_paused",
        "gauge",
        "Value is 1 if auto failover is disabled, 0 otherwise.",
        flag(status.pause == Some(true)).to_string(),
    );

    // Patroni numbers its known states; anything else is -1.
    let state_index = status.state.metric_code().map_or(-1, |(_, index)| index);
    let descriptions: Vec<String> = model::PostgresState::metric_codes()
        .map(|(_, name, index)| format!("{index}={name}"))
        .collect();
    // Patroni lists the state codes in a comment between HELP and TYPE.
    let name = "patroni_postgres_state";
    let _ = writeln!(
        metrics.out,
        "# HELP {name} Numeric representation of Postgres state."
    );
    let _ = writeln!(metrics.out, "# Values: {}", descriptions.join(", "));
    let _ = writeln!(metrics.out, "# TYPE {name} gauge");
    metrics.sample(name, &[], state_index);

    // Regent's own families: what Patroni has no metric for.
    metrics.single(
        "regent_leader_lock_held",
        "gauge",
        "Value is 1 if this member holds the unexpired leader lock, 0 otherwise.",
        flag(snapshot.has_lock),
    );
    // Never reached the DCS: infinitely old, so `> N` alerts fire.
    let dcs_age = snapshot
        .dcs_last_seen
        .map_or(f64::INFINITY, |seen| (now - seen as f64).max(0.0));
    metrics.single(
        "regent_dcs_last_seen_age_seconds",
        "gauge",
        "Seconds since the last successful DCS round-trip (1 s resolution), +Inf if none yet.",
        format_float(dcs_age),
    );
    if let Some(lag) = own_replication_lag(snapshot) {
        metrics.single(
            "regent_replication_lag_bytes",
            "gauge",
            "Bytes this replica's replayed WAL is behind the leader's last published position.",
            lag,
        );
    }
    let members = members_replication_lag(snapshot);
    if !members.is_empty() {
        let name = "regent_member_replication_lag_bytes";
        metrics.family(
            name,
            "gauge",
            "On the leader: bytes each other member's WAL position is behind the leader's last published position.",
        );
        for (member, lag) in &members {
            metrics.sample(name, &[("member", member)], lag);
        }
    }
    metrics.out
}

/// A float as Prometheus reads it: `+Inf` for infinity, whole numbers without a fraction.
fn format_float(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if value.is_nan() {
        "NaN".to_string()
    } else {
        // Millisecond precision is plenty for ages measured against a 1 s clock.
        let rounded = (value * 1000.0).round() / 1000.0;
        rounded.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use model::{Cluster, ClusterConfig, Leader, Member, MemberData, Role};
    use serde_json::json;

    use super::*;
    use crate::PostgresStatus;

    const OPTIME: u64 = 100 << 20;
    const NOW: f64 = 1_717_236_312.5;

    fn member(name: &str, role: Role, xlog: Option<u64>) -> Member {
        Member::new(
            name,
            MemberData {
                state: "running".into(),
                role,
                xlog_location: xlog,
                ..Default::default()
            },
        )
    }

    /// `pg-0` leads at `OPTIME`; `pg-1` is 1 KiB behind, `pg-2` has not published a position.
    fn cluster(paused: bool) -> Cluster {
        let mut config = json!({"ttl": 30, "loop_wait": 10});
        if paused {
            config["pause"] = json!(true);
        }
        Cluster {
            initialize: Some("7379123456789012345".into()),
            config: Some(ClusterConfig {
                raw: config,
                version: None,
            }),
            leader: Some(Leader {
                name: "pg-0".into(),
                version: None,
            }),
            status: model::Status {
                optime: Some(OPTIME),
                ..Default::default()
            },
            members: vec![
                member("pg-2", Role::Replica, None),
                member("pg-0", Role::Primary, Some(OPTIME)),
                member("pg-1", Role::Replica, Some(OPTIME - 1024)),
            ],
            ..Default::default()
        }
    }

    fn base(name: &str) -> Snapshot {
        Snapshot {
            scope: "demo".into(),
            name: name.into(),
            version: "4.1.5".into(),
            cluster: Some(cluster(false)),
            dcs_last_seen: Some(1_717_236_310),
            ..Default::default()
        }
    }

    fn leader() -> Snapshot {
        let mut s = base("pg-0");
        s.has_lock = true;
        s.postgres = PostgresStatus {
            state: "running".into(),
            role: Role::Primary,
            server_version: Some(150004),
            postmaster_start_time: Some("2024-06-01 10:00:00+00:00".into()),
            timeline: Some(2),
            wal: Wal::Primary { location: OPTIME },
            ..Default::default()
        };
        s
    }

    /// A streaming replica 4 KiB behind in replay with a restart pending, in a paused cluster.
    fn replica() -> Snapshot {
        let mut s = base("pg-1");
        s.paused = true;
        s.cluster = Some(cluster(true));
        s.postgres = PostgresStatus {
            state: "running".into(),
            role: Role::Replica,
            server_version: Some(150004),
            postmaster_start_time: Some("2024-06-01 10:00:01+00:00".into()),
            timeline: Some(2),
            wal: Wal::Replica {
                received: Some(OPTIME - 1024),
                replayed: Some(OPTIME - 4096),
                replayed_timestamp: Some("2024-06-01 10:00:05+00:00".into()),
                paused: false,
            },
            replication_state: Some("streaming".into()),
            pending_restart: true,
            pending_restart_reason: Some(
                json!({"max_connections": {"old_value": "100", "new_value": "101"}}),
            ),
            ..Default::default()
        };
        s
    }

    /// Postgres down, the DCS never reached.
    fn isolated() -> Snapshot {
        Snapshot {
            scope: "demo".into(),
            name: "pg-2".into(),
            version: "4.1.5".into(),
            postgres: PostgresStatus {
                state: "stopped".into(),
                role: Role::Uninitialized,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn version_and_time() {
        assert_eq!(padded_version("4.1.5"), "040105");
        assert_eq!(epoch_seconds(Some("1970-01-01 00:00:10.5+00:00")), 10.5);
        assert_eq!(epoch_seconds(Some("1970-01-01 01:00:10+01")), 10.0);
        assert_eq!(epoch_seconds(Some("garbage")), 0.0);
        assert_eq!(epoch_seconds(None), 0.0);
    }

    #[test]
    fn replica_exposition_exactly() {
        let expected = r#"# HELP patroni_version Patroni semver without periods.
# TYPE patroni_version gauge
patroni_version{scope="demo",name="pg-1"} 040105
# HELP patroni_postgres_running Value is 1 if Postgres is running, 0 otherwise.
# TYPE patroni_postgres_running gauge
patroni_postgres_running{scope="demo",name="pg-1"} 1
# HELP patroni_postmaster_start_time Epoch seconds since Postgres started.
# TYPE patroni_postmaster_start_time gauge
patroni_postmaster_start_time{scope="demo",name="pg-1"} 1717236001
# HELP patroni_primary Value is 1 if this node is the leader, 0 otherwise.
# TYPE patroni_primary gauge
patroni_primary{scope="demo",name="pg-1"} 0
# HELP patroni_xlog_location Current location of the Postgres transaction log, 0 if this node is not the leader.
# TYPE patroni_xlog_location counter
patroni_xlog_location{scope="demo",name="pg-1"} 0
# HELP patroni_standby_leader Value is 1 if this node is the standby_leader, 0 otherwise.
# TYPE patroni_standby_leader gauge
patroni_standby_leader{scope="demo",name="pg-1"} 0
# HELP patroni_replica Value is 1 if this node is a replica, 0 otherwise.
# TYPE patroni_replica gauge
patroni_replica{scope="demo",name="pg-1"} 1
# HELP patroni_sync_standby Value is 1 if this node is a sync standby, 0 otherwise.
# TYPE patroni_sync_standby gauge
patroni_sync_standby{scope="demo",name="pg-1"} 0
# HELP patroni_quorum_standby Value is 1 if this node is a quorum standby, 0 otherwise.
# TYPE patroni_quorum_standby gauge
patroni_quorum_standby{scope="demo",name="pg-1"} 0
# HELP patroni_xlog_received_location Current location of the received Postgres transaction log, 0 if this node is not a replica.
# TYPE patroni_xlog_received_location counter
patroni_xlog_received_location{scope="demo",name="pg-1"} 104856576
# HELP patroni_xlog_replayed_location Current location of the replayed Postgres transaction log, 0 if this node is not a replica.
# TYPE patroni_xlog_replayed_location counter
patroni_xlog_replayed_location{scope="demo",name="pg-1"} 104853504
# HELP patroni_xlog_replayed_timestamp Current timestamp of the replayed Postgres transaction log, 0 if null.
# TYPE patroni_xlog_replayed_timestamp gauge
patroni_xlog_replayed_timestamp{scope="demo",name="pg-1"} 1717236005
# HELP patroni_xlog_paused Value is 1 if the Postgres xlog is paused, 0 otherwise.
# TYPE patroni_xlog_paused gauge
patroni_xlog_paused{scope="demo",name="pg-1"} 0
# HELP patroni_postgres_streaming Value is 1 if Postgres is streaming, 0 otherwise.
# TYPE patroni_postgres_streaming gauge
patroni_postgres_streaming{scope="demo",name="pg-1"} 1
# HELP patroni_postgres_in_archive_recovery Value is 1 if Postgres is replicating from archive, 0 otherwise.
# TYPE patroni_postgres_in_archive_recovery gauge
patroni_postgres_in_archive_recovery{scope="demo",name="pg-1"} 0
# HELP patroni_postgres_server_version Version of Postgres (if running), 0 otherwise.
# TYPE patroni_postgres_server_version gauge
patroni_postgres_server_version{scope="demo",name="pg-1"} 150004
# HELP patroni_cluster_unlocked Value is 1 if the cluster is unlocked, 0 if locked.
# TYPE patroni_cluster_unlocked gauge
patroni_cluster_unlocked{scope="demo",name="pg-1"} 0
# HELP patroni_failsafe_mode_is_active Value is 1 if failsafe mode is active, 0 if inactive.
# TYPE patroni_failsafe_mode_is_active gauge
patroni_failsafe_mode_is_active{scope="demo",name="pg-1"} 0
# HELP patroni_postgres_timeline Postgres timeline of this node (if running), 0 otherwise.
# TYPE patroni_postgres_timeline gauge
patroni_postgres_timeline{scope="demo",name="pg-1"} 2
# HELP patroni_dcs_last_seen Epoch timestamp when DCS was last contacted successfully by Patroni.
# TYPE patroni_dcs_last_seen gauge
patroni_dcs_last_seen{scope="demo",name="pg-1"} 1717236310
# HELP patroni_pending_restart Value is 1 if the node needs a restart, 0 otherwise.
# TYPE patroni_pending_restart gauge
patroni_pending_restart{scope="demo",name="pg-1"} 1
# HELP patroni_is_paused Value is 1 if auto failover is disabled, 0 otherwise.
# TYPE patroni_is_paused gauge
patroni_is_paused{scope="demo",name="pg-1"} 1
# HELP patroni_postgres_state Numeric representation of Postgres state.
# Values: 0=initdb, 1=initdb_failed, 2=custom_bootstrap, 3=custom_bootstrap_failed, 4=creating_replica, 5=running, 6=starting, 7=bootstrap_starting, 8=start_failed, 9=restarting, 10=restart_failed, 11=stopping, 12=stopped, 13=stop_failed, 14=crashed
# TYPE patroni_postgres_state gauge
patroni_postgres_state{scope="demo",name="pg-1"} 5
# HELP regent_leader_lock_held Value is 1 if this member holds the unexpired leader lock, 0 otherwise.
# TYPE regent_leader_lock_held gauge
regent_leader_lock_held{scope="demo",name="pg-1"} 0
# HELP regent_dcs_last_seen_age_seconds Seconds since the last successful DCS round-trip (1 s resolution), +Inf if none yet.
# TYPE regent_dcs_last_seen_age_seconds gauge
regent_dcs_last_seen_age_seconds{scope="demo",name="pg-1"} 2.5
# HELP regent_replication_lag_bytes Bytes this replica's replayed WAL is behind the leader's last published position.
# TYPE regent_replication_lag_bytes gauge
regent_replication_lag_bytes{scope="demo",name="pg-1"} 4096
"#;
        let text = render(&replica(), NOW);
        for (line, (got, want)) in text.lines().zip(expected.lines()).enumerate() {
            assert_eq!(got, want, "line {}", line + 1);
        }
        assert_eq!(text, expected);
    }

    /// Every line of `text` that is not a comment, as (name, labels, value).
    fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("sample has a value");
                let (name, labels) = series.split_once('{').expect("sample has labels");
                let labels = labels.strip_suffix('}').expect("labels end with }");
                let labels = labels
                    .split("\",")
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("label is k=\"v\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels, value.to_string())
            })
            .collect()
    }

    fn value_of(text: &str, name: &str) -> Option<String> {
        samples(text)
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
    }

    /// Checks the text exposition format rules a scraper relies on: names and label names are
    /// valid, every sample's family has exactly one HELP and one TYPE (gauge or counter) before
    /// its samples, a family's lines are contiguous, values are numbers (or ±Inf/NaN), and no
    /// series (name + labels) appears twice.
    fn assert_valid_exposition(text: &str) {
        let valid_name = |n: &str| {
            let mut chars = n.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        assert!(text.ends_with('\n'), "exposition ends with a newline");
        let mut helps = BTreeSet::new();
        let mut types = BTreeSet::new();
        let mut finished = BTreeSet::new();
        let mut current: Option<String> = None;
        let mut series = BTreeSet::new();
        for line in text.lines() {
            assert!(!line.is_empty(), "no empty lines:\n{text}");
            let family = if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a text");
                assert!(!help.trim().is_empty(), "{line}");
                assert!(helps.insert(name.to_string()), "second HELP: {line}");
                name.to_string()
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
                assert!(matches!(kind, "gauge" | "counter"), "{line}");
                assert!(types.insert(name.to_string()), "second TYPE: {line}");
                name.to_string()
            } else if line.starts_with('#') {
                continue;
            } else {
                let (name, labels, value) = samples(line).pop().expect("one sample");
                assert!(valid_name(&name), "metric name {name:?}");
                assert!(labels.keys().all(|k| valid_name(k)), "{line}");
                assert!(helps.contains(&name), "sample without HELP: {line}");
                assert!(types.contains(&name), "sample without TYPE: {line}");
                assert!(
                    matches!(value.as_str(), "+Inf" | "-Inf" | "NaN")
                        || value.parse::<f64>().is_ok_and(f64::is_finite),
                    "value of {line}"
                );
                assert!(
                    series.insert(format!("{name}{labels:?}")),
                    "duplicate series: {line}"
                );
                name
            };
            if current.as_deref() != Some(family.as_str()) {
                if let Some(previous) = current.replace(family.clone()) {
                    finished.insert(previous);
                }
                assert!(!finished.contains(&family), "{family} is split:\n{text}");
            }
        }
        assert_eq!(helps, types, "every family has both HELP and TYPE");
    }

    #[test]
    fn expositions_are_valid() {
        let mut odd = leader();
        odd.scope = "we\"ird\\scope".into();
        odd.name = "line\nbreak".into();
        for (what, snapshot) in [
            ("leader", leader()),
            ("replica", replica()),
            ("isolated", isolated()),
            ("odd names", odd),
        ] {
            let text = render(&snapshot, NOW);
            println!("{what}:\n{text}");
            assert_valid_exposition(&text);
        }
    }

    #[test]
    fn the_exposition_check_rejects_broken_text() {
        let good = "# HELP a_b A.\n# TYPE a_b gauge\na_b{scope=\"s\",name=\"n\"} 1\n";
        assert_valid_exposition(good);
        for broken in [
            // No TYPE.
            "# HELP a_b A.\na_b{scope=\"s\",name=\"n\"} 1\n",
            // The same series twice.
            "# HELP a_b A.\n# TYPE a_b gauge\na_b{scope=\"s\",name=\"n\"} 1\na_b{scope=\"s\",name=\"n\"} 2\n",
            // Not a number.
            "# HELP a_b A.\n# TYPE a_b gauge\na_b{scope=\"s\",name=\"n\"} one\n",
            // A family split by another one.
            "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 1\n# HELP b B.\n# TYPE b gauge\nb{x=\"1\"} 1\na{x=\"2\"} 1\n",
        ] {
            let outcome = std::panic::catch_unwind(|| assert_valid_exposition(broken));
            assert!(outcome.is_err(), "accepted:\n{broken}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = leader();
        s.scope = "a\"b\\c".into();
        s.name = "x\ny".into();
        let text = render(&s, NOW);
        assert!(
            text.contains("regent_leader_lock_held{scope=\"a\\\"b\\\\c\",name=\"x\\ny\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn leader_holds_the_lock_and_reports_each_replica_lag() {
        let text = render(&leader(), NOW);
        let labels = "{scope=\"demo\",name=\"pg-0\"";
        for line in [
            format!("patroni_primary{labels}}} 1"),
            format!("patroni_replica{labels}}} 0"),
            format!("patroni_xlog_location{labels}}} {OPTIME}"),
            format!("regent_leader_lock_held{labels}}} 1"),
            format!("regent_member_replication_lag_bytes{labels},member=\"pg-1\"}} 1024"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        // pg-2 published no position: no made-up number for it; the leader has no own lag.
        assert!(!text.contains("member=\"pg-2\""), "{text}");
        assert!(!text.contains("member=\"pg-0\""), "{text}");
        assert_eq!(value_of(&text, "regent_replication_lag_bytes"), None);
        assert_eq!(
            value_of(&text, "patroni_pending_restart").as_deref(),
            Some("0")
        );
        assert_eq!(value_of(&text, "patroni_is_paused").as_deref(), Some("0"));
    }

    #[test]
    fn replicas_report_no_member_lags() {
        let text = render(&replica(), NOW);
        assert_eq!(value_of(&text, "regent_member_replication_lag_bytes"), None);
        // Without a lock holder there is no position to be behind.
        let mut unlocked = replica();
        if let Some(c) = unlocked.cluster.as_mut() {
            c.leader = None;
        }
        let text = render(&unlocked, NOW);
        assert_eq!(value_of(&text, "regent_replication_lag_bytes"), None);
        assert_eq!(
            value_of(&text, "patroni_cluster_unlocked").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn dcs_age_grows_with_time_and_is_infinite_before_the_first_contact() {
        let s = replica();
        let age = |now: f64| {
            value_of(&render(&s, now), "regent_dcs_last_seen_age_seconds")
                .and_then(|v| v.parse::<f64>().ok())
        };
        assert_eq!(age(1_717_236_310.0), Some(0.0));
        assert_eq!(age(1_717_236_340.25), Some(30.25));
        // A clock step backwards does not produce a negative age.
        assert_eq!(age(1_717_236_300.0), Some(0.0));
        let text = render(&isolated(), NOW);
        assert_eq!(
            value_of(&text, "regent_dcs_last_seen_age_seconds").as_deref(),
            Some("+Inf")
        );
        assert_eq!(
            value_of(&text, "patroni_dcs_last_seen").as_deref(),
            Some("0")
        );
        assert_eq!(
            value_of(&text, "patroni_postgres_running").as_deref(),
            Some("0")
        );
        assert_eq!(
            value_of(&text, "patroni_postgres_state").as_deref(),
            Some("12")
        );
    }

    #[test]
    fn float_formatting() {
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(3.0), "3");
        assert_eq!(format_float(0.123_456), "0.123");
    }
}
