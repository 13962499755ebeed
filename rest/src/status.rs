//! The status JSON of health checks and `GET /patroni` (docs/compatibility.md, *REST API*).
//!
//! Peers read it during the leader race (`xlog`, `role`, `tags`, `timeline`, `watchdog_failed`),
//! so field names and shapes follow Patroni exactly.

use serde::Serialize;
use serde_json::Value;

use crate::{ReplicationInfo, Snapshot, Wal};
use model::PostgresState;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StatusJson {
    pub state: PostgresState,
    /// Present (possibly `null`) only when Postgres could be queried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postmaster_start_time: Option<Value>,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xlog: Option<Xlog>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_standby: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum_standby: Option<bool>,
    /// Present (possibly `null`) only when Postgres could be queried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Option<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<Vec<ReplicationInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_unlocked: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failsafe_mode_is_active: Option<bool>,
    pub dcs_last_seen: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<model::Tags>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_system_identifier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_restart: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_restart_reason: Option<Value>,
    pub patroni: PatroniInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_restart: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watchdog_failed: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum Xlog {
    Primary {
        location: u64,
    },
    Replica {
        received_location: Option<u64>,
        replayed_location: Option<u64>,
        replayed_timestamp: Option<String>,
        paused: bool,
    },
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PatroniInfo {
    pub version: String,
    pub scope: String,
    pub name: String,
}

impl StatusJson {
    pub fn is_running(&self) -> bool {
        self.state == PostgresState::Running
    }

    /// Replayed position on a replica, 0 otherwise (what lag checks compare against).
    pub fn replayed_location(&self) -> u64 {
        match &self.xlog {
            Some(Xlog::Replica {
                replayed_location, ..
            }) => replayed_location.unwrap_or(0),
            _ => 0,
        }
    }

    pub fn received_location(&self) -> u64 {
        match &self.xlog {
            Some(Xlog::Replica {
                received_location, ..
            }) => received_location.unwrap_or(0),
            _ => 0,
        }
    }
}

/// Settings from the dynamic configuration that change what the API reports.
pub(crate) struct GlobalView<'a> {
    config: Option<&'a Value>,
    standby_cluster: bool,
}

impl<'a> GlobalView<'a> {
    pub fn of(snapshot: &'a Snapshot) -> GlobalView<'a> {
        let config = snapshot
            .dynamic_config
            .as_ref()
            .or_else(|| snapshot.cluster.as_ref()?.config.as_ref().map(|c| &c.raw));
        GlobalView {
            config,
            standby_cluster: snapshot.standby_cluster,
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.config?.get(key)
    }

    pub fn is_standby_cluster(&self) -> bool {
        self.standby_cluster
    }

    pub fn is_quorum_commit_mode(&self) -> bool {
        matches!(self.get("synchronous_mode"), Some(Value::String(s)) if s.eq_ignore_ascii_case("quorum"))
    }

    /// Synchronous (or quorum) replication requested, and not a standby cluster.
    pub fn is_synchronous_mode(&self) -> bool {
        let requested =
            self.get("synchronous_mode").is_some_and(truthy) || self.is_quorum_commit_mode();
        requested && !self.standby_cluster
    }

    pub fn maximum_lag_on_failover(&self) -> i64 {
        match self.get("maximum_lag_on_failover") {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(1_048_576),
            Some(Value::String(s)) => crate::lag::parse_size(s).unwrap_or(1_048_576),
            _ => 1_048_576,
        }
    }
}

/// Patroni's boolean reading of configuration values.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "on" | "true" | "yes" | "1"),
        Value::Number(n) => n.as_i64().is_some_and(|i| i != 0),
        _ => false,
    }
}

/// Is `name` in the `/sync` key's member list? Case-insensitive, like Postgres' matching of
/// `synchronous_standby_names`.
pub(crate) fn sync_matches(cluster: &model::Cluster, name: &str) -> bool {
    cluster
        .sync
        .sync_standby
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
}

/// `GET /patroni`'s body for a snapshot, as JSON (what a simulated member answers).
pub fn status_value(snapshot: &Snapshot) -> serde_json::Value {
    serde_json::to_value(status_json(snapshot)).unwrap_or_default()
}

/// Build the status JSON from the snapshot.
pub(crate) fn status_json(snapshot: &Snapshot) -> StatusJson {
    let pg = &snapshot.postgres;
    let global = GlobalView::of(snapshot);
    let queryable_state = matches!(
        pg.state,
        PostgresState::Running | PostgresState::Restarting | PostgresState::Starting
    );

    let mut status = StatusJson {
        state: pg.state.clone(),
        postmaster_start_time: None,
        role: pg.role.as_str().to_string(),
        server_version: None,
        xlog: None,
        sync_standby: None,
        quorum_standby: None,
        timeline: None,
        replication_state: None,
        replication: None,
        pause: snapshot.paused.then_some(true),
        cluster_unlocked: (!snapshot
            .cluster
            .as_ref()
            .is_some_and(model::Cluster::is_locked))
        .then_some(true),
        failsafe_mode_is_active: snapshot.failsafe_mode_is_active.then_some(true),
        dcs_last_seen: snapshot.dcs_last_seen.unwrap_or(0),
        tags: (!snapshot.tags.is_empty()).then(|| snapshot.tags.clone()),
        database_system_identifier: pg.sysid.clone().filter(|s| !s.is_empty()),
        pending_restart: pg.pending_restart.then_some(true),
        pending_restart_reason: pg.pending_restart_reason.clone(),
        patroni: PatroniInfo {
            version: snapshot.version.clone(),
            scope: snapshot.scope.clone(),
            name: snapshot.name.clone(),
        },
        scheduled_restart: snapshot.scheduled_restart.clone(),
        watchdog_failed: snapshot.watchdog_failed.then_some(true),
    };

    let xlog = match &pg.wal {
        Wal::Primary { location } => Some((
            Xlog::Primary {
                location: *location,
            },
            "primary",
        )),
        Wal::Replica {
            received,
            replayed,
            replayed_timestamp,
            paused,
        } => {
            // A replica in a standby cluster reports its HA role (standby_leader on the leader).
            let role = if global.is_standby_cluster() {
                pg.role.as_str()
            } else {
                "replica"
            };
            let xlog = Xlog::Replica {
                received_location: received.or(*replayed),
                replayed_location: *replayed,
                replayed_timestamp: replayed_timestamp.clone(),
                paused: *paused,
            };
            Some((xlog, role))
        }
        Wal::Unknown => None,
    };

    match xlog {
        Some((xlog, role)) if queryable_state => {
            status.role = role.to_string();
            status.postmaster_start_time = Some(
                pg.postmaster_start_time
                    .clone()
                    .map(Value::from)
                    .unwrap_or(Value::Null),
            );
            status.server_version = pg.server_version;
            status.xlog = Some(xlog);
            status.timeline = Some(pg.timeline);
            status.replication_state = pg.replication_state.clone();
            status.replication = (!pg.replication.is_empty()).then(|| pg.replication.clone());
            if status.role == "replica" && global.is_synchronous_mode() {
                if let Some(cluster) = &snapshot.cluster {
                    if sync_matches(cluster, &snapshot.name) {
                        if global.is_quorum_commit_mode() {
                            status.quorum_standby = Some(true);
                        } else {
                            status.sync_standby = Some(true);
                        }
                    }
                }
            }
        }
        // Running but not queryable: Patroni reports the state as unknown.
        _ if pg.state == PostgresState::Running => status.state = PostgresState::Unknown,
        _ => {}
    }
    status
}
