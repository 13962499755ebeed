//! Patroni-compatible REST API (docs/compatibility.md, *REST API*).
//!
//! The API is a view: handlers read the latest [`Snapshot`] published by the HA loop through a
//! `tokio::sync::watch` channel, and requests that change something are handed to the loop as
//! [`Command`]s over an `mpsc` channel. Nothing here talks to Postgres or the DCS.
//!
//! Routing follows Patroni: the first path segment picks the handler; any `GET` without a
//! dedicated handler is a health check (unknown paths answer 503 with the status JSON); `HEAD`
//! and `OPTIONS` are health checks answering with the status code only; anything else is 501.

mod citus;
mod cluster;
mod failsafe;
mod health;
mod lag;
mod metrics;
mod openapi;
mod ops;
mod reply;
pub mod security;
mod status;

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::Router;

pub use citus::CitusHandler;
pub use failsafe::{parse_failsafe_call, FailsafeCall, FailsafeCallError, FailsafeInbox};
pub use lag::parse_size;
pub use ops::{
    parse_schedule, postgres_version_to_int, FailoverAction, FailoverOutcome, FailoverRequest,
    OpBody, OpReply, RestartRequest,
};
pub use status::status_value;

/// Everything the API shows, published by the HA loop after each cycle.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub scope: String,
    pub name: String,
    /// Patroni version Regent reports (`patroni.version`, `patroni_version` metric).
    pub version: String,
    pub api_url: String,
    /// Last DCS view; `None` before the first successful read.
    pub cluster: Option<model::Cluster>,
    /// Unix seconds of the last successful DCS round-trip.
    pub dcs_last_seen: Option<i64>,
    /// This member holds an unexpired leader lock.
    pub has_lock: bool,
    /// The effective configuration describes a standby cluster.
    pub standby_cluster: bool,
    pub postgres: PostgresStatus,
    /// Configured tags, plus any the HA loop injects (e.g. `nosync` while leaving sync duty).
    pub tags: model::Tags,
    /// Maintenance mode (`pause: true` in the dynamic configuration).
    pub paused: bool,
    pub ttl: u32,
    pub loop_wait: u32,
    /// When the HA loop last finished a cycle (unix milliseconds); drives `/liveness`.
    pub last_cycle_unix_ms: Option<i64>,
    /// The dynamic configuration (`config` object) as last read from the DCS.
    pub dynamic_config: Option<serde_json::Value>,
    /// DCS failsafe mode currently keeps this primary running without the DCS.
    pub failsafe_mode_is_active: bool,
    /// `failsafe_mode` is on in the dynamic configuration (`POST /failsafe` is accepted).
    pub failsafe_mode: bool,
    /// The `/failsafe` topology (`{name: api_url}`) when failsafe mode is enabled.
    pub failsafe: Option<serde_json::Value>,
    /// A scheduled restart as shown on REST (`{"schedule": ISO, ...filters}`).
    pub scheduled_restart: Option<serde_json::Value>,
    /// The watchdog is required but unhealthy.
    pub watchdog_failed: bool,
}

/// What the HA loop last learned about the local Postgres.
#[derive(Debug, Clone, Default)]
pub struct PostgresStatus {
    pub state: model::PostgresState,
    pub role: model::Role,
    /// `server_version_num`, e.g. 150004.
    pub server_version: Option<u32>,
    /// `pg_postmaster_start_time()` as text, e.g. `2024-06-01 10:00:00.123+00:00`.
    pub postmaster_start_time: Option<String>,
    pub timeline: Option<u32>,
    pub sysid: Option<String>,
    /// WAL positions; `Unknown` when Postgres could not be queried.
    pub wal: Wal,
    /// `pg_stat_replication` rows (on a primary or cascading replica).
    pub replication: Vec<ReplicationInfo>,
    /// `streaming` or `in archive recovery` on replicas.
    pub replication_state: Option<String>,
    pub pending_restart: bool,
    /// `{"param": {"old_value": ..., "new_value": ...}}`.
    pub pending_restart_reason: Option<serde_json::Value>,
}

/// WAL positions as absolute byte offsets.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Wal {
    /// Not in recovery: the flush LSN.
    Primary { location: u64 },
    /// In recovery.
    Replica {
        received: Option<u64>,
        replayed: Option<u64>,
        /// `pg_last_xact_replay_timestamp()` as text.
        replayed_timestamp: Option<String>,
        paused: bool,
    },
    /// Postgres was not queryable.
    #[default]
    Unknown,
}

/// One `pg_stat_replication` row as shown in the status JSON.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReplicationInfo {
    pub usename: String,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: String,
    pub sync_state: String,
    pub sync_priority: i32,
}

/// Requests the API hands to the HA loop, which owns the DCS session and Postgres and executes
/// them between cycles; each carries the channel its answer goes back on.
#[derive(Debug)]
pub enum Command {
    /// Write the `failover` key after checking the request is feasible (unscheduled only).
    Failover {
        request: FailoverRequest,
        reply: tokio::sync::oneshot::Sender<FailoverOutcome>,
    },
    /// Remove a scheduled switchover (`DELETE /switchover`).
    CancelSwitchover {
        reply: tokio::sync::oneshot::Sender<OpReply>,
    },
    /// `PATCH /config` (`replace: false`, merge with `null` deleting) or `PUT /config`.
    Config {
        value: serde_json::Value,
        replace: bool,
        reply: tokio::sync::oneshot::Sender<OpReply>,
    },
    /// `POST /reload`: re-read the configuration file and re-render the Postgres configuration.
    Reload {
        reply: tokio::sync::oneshot::Sender<OpReply>,
    },
    /// `POST /restart` (immediate or scheduled).
    Restart {
        request: RestartRequest,
        reply: tokio::sync::oneshot::Sender<OpReply>,
    },
    /// `DELETE /restart`.
    CancelRestart {
        reply: tokio::sync::oneshot::Sender<OpReply>,
    },
    /// `POST /reinitialize`.
    Reinitialize {
        force: bool,
        reply: tokio::sync::oneshot::Sender<OpReply>,
    },
}

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub snapshot: tokio::sync::watch::Receiver<Snapshot>,
    pub commands: tokio::sync::mpsc::Sender<Command>,
    /// Citus members: what `POST /citus` events are handed to (`None`: not a Citus member).
    pub citus: Option<std::sync::Arc<dyn CitusHandler>>,
    /// Where `POST /failsafe` records the leader that called (read by the HA loop).
    pub failsafe: FailsafeInbox,
}

/// The whole API as one router. Patroni routes on the first path segment and treats unknown GETs
/// as health checks, which axum's path router cannot express, so a single handler dispatches.
pub fn router(state: ApiState) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// Serve the API on `listener` until `shutdown` completes. The peer address is made available to
/// handlers (`ConnectInfo<SocketAddr>`) for access control.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn dispatch(State(state): State<ApiState>, request: Request) -> Response {
    // Clone so no lock on the channel is held while the reply is built.
    let snapshot = state.snapshot.borrow().clone();
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let query = Query::parse(parts.uri.query());
    let segment = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let headers = &parts.headers;

    match (&method, segment) {
        (&Method::GET, "patroni") => reply::json(StatusCode::OK, &status::status_json(&snapshot)),
        (&Method::GET, "cluster") => cluster::cluster(&snapshot),
        (&Method::GET, "history") => cluster::history(&snapshot),
        (&Method::GET, "config") => cluster::config(&snapshot),
        (&Method::GET, "failsafe") => cluster::failsafe(&snapshot),
        (&Method::GET, "metrics") => metrics::metrics(&snapshot),
        (&Method::GET, "openapi.json") => openapi::openapi(),
        (&Method::GET, "liveness") => reply::status_only(health::liveness(&snapshot, now_ms)),
        (&Method::GET, "readiness") => reply::status_only(health::readiness(&snapshot, &query)),
        (&Method::GET, _) => {
            let body = status::status_json(&snapshot);
            let code = health::health_check(&snapshot, &body, &path, &query);
            reply::json(code, &body)
        }
        (&Method::POST, "switchover") => {
            ops::failover(&state, &snapshot, headers, body, FailoverAction::Switchover).await
        }
        (&Method::POST, "failover") => {
            ops::failover(&state, &snapshot, headers, body, FailoverAction::Failover).await
        }
        (&Method::DELETE, "switchover") => ops::delete_switchover(&state).await,
        (&Method::PATCH, "config") => ops::config(&state, headers, body, false).await,
        (&Method::PUT, "config") => ops::config(&state, headers, body, true).await,
        (&Method::POST, "reload") => ops::reload(&state).await,
        (&Method::POST, "restart") => ops::restart(&state, &snapshot, headers, body).await,
        (&Method::DELETE, "restart") => ops::delete_restart(&state).await,
        (&Method::POST, "reinitialize") => ops::reinitialize(&state, headers, body).await,
        (&Method::POST, "failsafe") => {
            failsafe::post_failsafe(&state, &snapshot, headers, body).await
        }
        (&Method::POST, "citus" | "mpp") => citus::citus(&state, headers, body).await,
        (&Method::HEAD, _) | (&Method::OPTIONS, _) => {
            let body = status::status_json(&snapshot);
            reply::status_only(health::health_check(&snapshot, &body, &path, &query))
        }
        _ => reply::error_page(
            StatusCode::NOT_IMPLEMENTED,
            &format!("Unsupported method ('{}')", method.as_str()),
        ),
    }
}

/// Query parameters the way Patroni reads them: blank values dropped, first value of a key wins.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        let pairs: Vec<(String, String)> = raw
            .and_then(|q| {
                let uri: axum::http::Uri = format!("/?{q}").parse().ok()?;
                axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok()
            })
            .map(|axum::extract::Query(pairs)| pairs)
            .unwrap_or_default();
        Query(pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect())
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every distinct key with its first value.
    pub(crate) fn first_values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| !self.0[..*i].iter().any(|(earlier, _)| earlier == k))
            .map(|(_, (k, v))| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests;
