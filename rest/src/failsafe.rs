//! `POST /failsafe`: while the DCS is unreachable, the primary asks every
//! member of the failsafe topology to accept it as the leader. A replica accepts and, for `ttl`
//! from then, does not race for the lock; a running primary refuses; with failsafe mode off the
//! call is refused too.
//!
//! The answer never waits for the HA loop: a replica's loop may itself be stuck on the
//! unreachable DCS for up to `retry_timeout`, and a late answer would make the primary step down.
//! The call is recorded in a [`FailsafeInbox`] shared with the loop, which reads it each cycle.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};

use crate::ops::{read_json, OpReply};
use crate::{reply, ApiState, Snapshot};

/// One accepted `POST /failsafe`: who claims to be the leader, and when it said so.
#[derive(Debug, Clone, PartialEq)]
pub struct FailsafeCall {
    pub leader: String,
    pub conn_url: Option<String>,
    pub api_url: Option<String>,
    /// Permanent slot positions the leader sent (`{"slot": lsn}`).
    pub slots: Map<String, Value>,
    /// Monotonic time of receipt: the sender counts as the leader until `received + ttl`.
    pub received: Instant,
}

/// The last accepted `POST /failsafe`, shared by the REST API (writer) and the HA loop (reader).
#[derive(Debug, Clone, Default)]
pub struct FailsafeInbox(Arc<Mutex<Option<FailsafeCall>>>);

impl FailsafeInbox {
    pub fn record(&self, call: FailsafeCall) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(call);
    }

    pub fn last(&self) -> Option<FailsafeCall> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forget the last call (this member became the leader).
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A `POST /failsafe` body that cannot be used: the 400 answer's text, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FailsafeCallError {
    pub field: &'static str,
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> FailsafeCallError {
    FailsafeCallError {
        field,
        problem: problem.into(),
    }
}

/// Validate a `POST /failsafe` body: `name` is required; `conn_url`, `api_url` are strings;
/// `slots` an object of positions.
pub fn parse_failsafe_call(
    body: &Map<String, Value>,
    received: Instant,
) -> Result<FailsafeCall, FailsafeCallError> {
    let leader = match body.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(invalid("name", "the sender's member name is required"))
        }
        Some(other) => return Err(invalid("name", format!("expected a string, got {other}"))),
    };
    let string = |key: &'static str| match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(key, format!("expected a string, got {other}"))),
    };
    let slots = match body.get("slots") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => {
            if let Some((name, _)) = m.iter().find(|(_, v)| v.as_u64().is_none()) {
                return Err(invalid(
                    "slots",
                    format!("position of {name:?} is not a non-negative integer"),
                ));
            }
            m.clone()
        }
        Some(other) => return Err(invalid("slots", format!("expected an object, got {other}"))),
    };
    Ok(FailsafeCall {
        leader,
        conn_url: string("conn_url")?,
        api_url: string("api_url")?,
        slots,
        received,
    })
}

pub(crate) async fn post_failsafe(
    state: &ApiState,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    if !snapshot.failsafe_mode {
        return reply::error_page(StatusCode::BAD_GATEWAY, "Bad Gateway");
    }
    let body = match read_json(headers, body, false).await {
        Ok(m) => m,
        Err(response) => return response,
    };
    let call = match parse_failsafe_call(&body, Instant::now()) {
        Ok(c) => c,
        Err(e) => return reply::error_page(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let pg = &snapshot.postgres;
    if pg.state == model::PostgresState::Running && pg.role == model::Role::Primary {
        return OpReply::text(500, "Running as a leader").into_response();
    }
    state.failsafe.record(call);
    OpReply::text(200, "Accepted").into_response()
}
