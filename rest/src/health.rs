//! Health-check status codes (docs/compatibility.md, *REST API*): role endpoints, `/liveness`, `/readiness`.

use axum::http::StatusCode;
use model::{PostgresState, Role};

use crate::lag::parse_size;
use crate::status::{GlobalView, StatusJson};
use crate::{Query, Snapshot};

const OK: StatusCode = StatusCode::OK;
const UNAVAILABLE: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

fn code(ok: bool) -> StatusCode {
    if ok {
        OK
    } else {
        UNAVAILABLE
    }
}

/// Status code of a health-check GET/HEAD/OPTIONS on `path`.
///
/// Like Patroni, the endpoint is picked by substring of the path (`/replica-lag` is `/replica`),
/// checked in a fixed order; anything unrecognised is 503.
pub(crate) fn health_check(
    snapshot: &Snapshot,
    status: &StatusJson,
    path: &str,
    query: &Query,
) -> StatusCode {
    let path = if path == "/" { "/primary" } else { path };
    let global = GlobalView::of(snapshot);
    let role = status.role.as_str();

    let replica = replica_rule(snapshot, status, query);

    let (leader, primary, standby_leader, replica) =
        if snapshot.cluster.is_none() && snapshot.paused {
            // DCS unreachable in maintenance mode: trust the local Postgres role.
            (
                code(role == "primary" || role == "standby_leader"),
                code(role == "primary"),
                code(role == "standby_leader"),
                replica,
            )
        } else if snapshot.has_lock {
            if global.is_standby_cluster() {
                // The standby leader replicates but is not a load-balanced replica.
                (
                    OK,
                    UNAVAILABLE,
                    code(role == "replica" || role == "standby_leader"),
                    UNAVAILABLE,
                )
            } else {
                (OK, OK, UNAVAILABLE, replica)
            }
        } else {
            (UNAVAILABLE, UNAVAILABLE, UNAVAILABLE, replica)
        };
    let writable_or_leading = primary == OK || standby_leader == OK;

    let (result, check_tags) = if path.contains("standby_leader") || path.contains("standby-leader")
    {
        (standby_leader, false)
    } else if path.contains("leader") {
        (leader, false)
    } else if path.contains("master") || path.contains("primary") || path.contains("read-write") {
        (primary, false)
    } else if path.contains("replica") {
        (replica, true)
    } else if path.contains("read-only") && !path.contains("sync") && !path.contains("quorum") {
        (if writable_or_leading { OK } else { replica }, true)
    } else if path.contains("health") {
        (code(status.is_running()), true)
    } else if snapshot.cluster.is_some() {
        let is_sync = status.sync_standby == Some(true);
        let is_quorum = status.quorum_standby == Some(true);
        let result = match path {
            "/sync" | "/synchronous" if is_sync => replica,
            "/quorum" if is_quorum => replica,
            "/async" | "/asynchronous" if !is_sync && !is_quorum => replica,
            "/read-only-quorum" if writable_or_leading => OK,
            "/read-only-quorum" if is_quorum => replica,
            "/read-only-sync" | "/read-only-synchronous" if writable_or_leading => OK,
            "/read-only-sync" | "/read-only-synchronous" if is_sync => replica,
            _ => UNAVAILABLE,
        };
        (result, true)
    } else {
        (UNAVAILABLE, true)
    };

    if result == OK && check_tags && !tag_filters_match(snapshot, query) {
        return UNAVAILABLE;
    }
    result
}

/// Running replica, load-balanced, within `lag` of the leader's last known position, and (4.x)
/// in the requested `replication_state`.
fn replica_rule(snapshot: &Snapshot, status: &StatusJson, query: &Query) -> StatusCode {
    let leader_optime = leader_optime(snapshot);
    // An unparseable lag means no limit, as in Patroni.
    let max_lag = query.get("lag").and_then(parse_size);
    let lagging = match max_lag {
        Some(max) => {
            leader_optime > 0
                && leader_optime > i128::from(status.replayed_location()) + i128::from(max)
        }
        None => false,
    };
    let state_matches = match query.get("replication_state") {
        Some(wanted) => status.replication_state.as_deref() == Some(wanted),
        None => true,
    };
    code(
        !snapshot.tags.noloadbalance()
            && !lagging
            && state_matches
            && status.role == "replica"
            && status.is_running(),
    )
}

fn leader_optime(snapshot: &Snapshot) -> i128 {
    snapshot
        .cluster
        .as_ref()
        .and_then(|c| c.status.optime)
        .map(i128::from)
        .unwrap_or(0)
}

/// `tag_<key>=<value>` parameters must equal this member's tags; non-string tag values compare
/// as lowercase text; a missing tag fails.
fn tag_filters_match(snapshot: &Snapshot, query: &Query) -> bool {
    query.first_values().all(|(key, wanted)| {
        let Some(tag) = key.strip_prefix("tag_") else {
            return true;
        };
        match snapshot.tags.0.get(tag) {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::String(s)) => s == wanted,
            Some(other) => other.to_string().to_lowercase() == wanted,
        }
    })
}

/// 200 while paused or while the next HA cycle is not overdue by more than `ttl` (a running
/// primary) or `2·ttl` (anyone else). Before the first finished cycle the agent counts as live.
pub(crate) fn liveness(snapshot: &Snapshot, now_unix_ms: i64) -> StatusCode {
    if snapshot.paused {
        return OK;
    }
    let Some(last_cycle) = snapshot.last_cycle_unix_ms else {
        return OK;
    };
    let pg = &snapshot.postgres;
    let is_primary = pg.role == Role::Primary && pg.state == PostgresState::Running;
    let tolerance_s = i64::from(snapshot.ttl) * if is_primary { 1 } else { 2 };
    let deadline = last_cycle + (i64::from(snapshot.loop_wait) + tolerance_s) * 1000;
    code(deadline > now_unix_ms)
}

/// 200 when holding the lock, or when Postgres runs, streams, the DCS view is valid and the
/// replica is within `lag` (default `maximum_lag_on_failover`) of the leader; `mode=write`
/// measures received instead of replayed WAL.
pub(crate) fn readiness(snapshot: &Snapshot, query: &Query) -> StatusCode {
    if snapshot.has_lock {
        return OK;
    }
    if snapshot.postgres.state != PostgresState::Running {
        return UNAVAILABLE;
    }
    let status = crate::status::status_json(snapshot);
    if status.replication_state.as_deref() != Some("streaming") {
        return UNAVAILABLE;
    }
    if snapshot.cluster.is_none() {
        return code(snapshot.failsafe_mode_is_active);
    }
    let location = if query.get("mode") == Some("write") {
        status.received_location()
    } else {
        status.replayed_location()
    };
    let lag = leader_optime(snapshot) - i128::from(location);
    let max_lag = query
        .get("lag")
        .and_then(parse_size)
        .unwrap_or_else(|| GlobalView::of(snapshot).maximum_lag_on_failover());
    code(lag <= i128::from(max_lag))
}
