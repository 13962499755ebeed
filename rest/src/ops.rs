//! Mutating endpoints (docs/compatibility.md, *REST API*): the handlers validate the request, hand the work to the
//! HA loop as a [`Command`] and turn its answer into Patroni's reply.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::{reply, ApiState, Command, Snapshot};

/// How long a handler waits for the HA loop to take a command (it may be in a long cycle).
const LOOP_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Bodies larger than this are refused.
const MAX_BODY: usize = 1 << 20;

/// An answer built by the HA loop: a status code and a text or JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct OpReply {
    pub code: u16,
    pub body: OpBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OpBody {
    /// Plain text, sent as `text/html` like Patroni.
    Text(String),
    Json(Value),
    /// Patroni's stock HTML error page with this message.
    Error(String),
}

impl OpReply {
    pub fn text(code: u16, text: impl Into<String>) -> OpReply {
        OpReply {
            code,
            body: OpBody::Text(text.into()),
        }
    }
    pub fn json(code: u16, value: Value) -> OpReply {
        OpReply {
            code,
            body: OpBody::Json(value),
        }
    }
    pub fn error(code: u16, message: impl Into<String>) -> OpReply {
        OpReply {
            code,
            body: OpBody::Error(message.into()),
        }
    }

    pub(crate) fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match self.body {
            OpBody::Text(t) => reply::text(code, "text/html", t),
            OpBody::Json(v) => reply::json(code, &v),
            OpBody::Error(m) => reply::error_page(code, &m),
        }
    }
}

/// `failover` or `switchover`: they share one handler, as in Patroni.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverAction {
    Failover,
    Switchover,
}

impl FailoverAction {
    pub fn name(self) -> &'static str {
        match self {
            FailoverAction::Failover => "failover",
            FailoverAction::Switchover => "switchover",
        }
    }
    fn title(self) -> &'static str {
        match self {
            FailoverAction::Failover => "Failover",
            FailoverAction::Switchover => "Switchover",
        }
    }
    fn past(self) -> &'static str {
        match self {
            FailoverAction::Failover => "failed",
            FailoverAction::Switchover => "switched",
        }
    }
}

/// A validated `POST /switchover` or `POST /failover`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverRequest {
    pub action: FailoverAction,
    pub leader: Option<String>,
    pub candidate: Option<String>,
    /// ISO 8601 with offset, as stored in the DCS `failover` key.
    pub scheduled_at: Option<String>,
}

/// What the HA loop did with a failover request.
#[derive(Debug)]
pub enum FailoverOutcome {
    /// The `failover` key was written at this wall time (unix ms); `leader` held the lock then.
    Written { at_ms: i64, leader: Option<String> },
    /// Refused or failed (412 infeasible, 503 write failed).
    Refused(OpReply),
}

/// `POST /restart` filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestartRequest {
    pub role: Option<String>,
    pub postgres_version: Option<String>,
    pub restart_pending: bool,
    pub timeout: Option<u64>,
    pub schedule: Option<String>,
}

/// The body of a request, read as Patroni does: no `Content-Length` → 411; unreadable, not a JSON
/// object, or (unless optional) empty → 400.
pub(crate) async fn read_json(
    headers: &HeaderMap,
    body: Body,
    optional: bool,
) -> Result<Map<String, Value>, Response> {
    if !headers.contains_key(header::CONTENT_LENGTH) {
        return if optional {
            Ok(Map::new())
        } else {
            Err(reply::error_page(
                StatusCode::LENGTH_REQUIRED,
                "Length Required",
            ))
        };
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| bad_request(&format!("cannot read the request body: {e}")))?;
    if bytes.is_empty() && optional {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) if !m.is_empty() || optional => Ok(m),
        Ok(Value::Object(_)) => Err(bad_request("the request body is an empty JSON object")),
        Ok(_) => Err(bad_request("the request body must be a JSON object")),
        Err(e) => Err(bad_request(&format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

fn bad_request(message: &str) -> Response {
    reply::error_page(StatusCode::BAD_REQUEST, message)
}

fn text(code: u16, body: impl Into<String>) -> Response {
    OpReply::text(code, body).into_response()
}

/// An optional string field; empty counts as absent (Patroni tests truthiness).
fn opt_string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{key}: expected a string, got {other}")),
    }
}

/// Parse a schedule the way Patroni does: a timezone is mandatory (400), the time must parse and
/// not be in the past (422). Returns the canonical ISO 8601 text.
pub fn parse_schedule(raw: &Value, action: &str, now_ms: i64) -> Result<String, (u16, String)> {
    let unparsable = || {
        (
            422,
            "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601"
                .to_string(),
        )
    };
    let Value::String(s) = raw else {
        return Err(unparsable());
    };
    let s = s.trim();
    let with_tz = chrono::DateTime::parse_from_rfc3339(s).ok().or_else(|| {
        [
            "%Y-%m-%dT%H:%M:%S%.f%#z",
            "%Y-%m-%d %H:%M:%S%.f%#z",
            "%Y-%m-%dT%H:%M%#z",
            "%Y-%m-%d %H:%M%#z",
        ]
        .iter()
        .find_map(|f| chrono::DateTime::parse_from_str(s, f).ok())
    });
    let Some(at) = with_tz else {
        let naive = [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M",
        ]
        .iter()
        .any(|f| chrono::NaiveDateTime::parse_from_str(s, f).is_ok());
        return Err(if naive {
            (
                400,
                format!("Timezone information is mandatory for the scheduled {action}"),
            )
        } else {
            unparsable()
        });
    };
    if at.timestamp_millis() < now_ms {
        return Err((422, format!("Cannot schedule {action} in the past")));
    }
    Ok(at.to_rfc3339())
}

/// Validate a `POST /switchover` / `POST /failover` body in Patroni's order; everything that needs
/// the DCS or the candidates' health is left to the HA loop.
pub fn validate_failover(
    body: &Map<String, Value>,
    mut action: FailoverAction,
    paused: bool,
    now_ms: i64,
) -> Result<FailoverRequest, (u16, String)> {
    let leader = opt_string(body, "leader").map_err(|e| (400, e))?;
    let candidate = match opt_string(body, "candidate").map_err(|e| (400, e))? {
        Some(c) => Some(c),
        None => opt_string(body, "member").map_err(|e| (400, e))?,
    };
    let scheduled = body.get("scheduled_at").filter(|v| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        _ => true,
    });
    if action == FailoverAction::Failover && candidate.is_none() {
        return Err((
            400,
            "Failover could be performed only to a specific candidate".into(),
        ));
    }
    if action == FailoverAction::Switchover && leader.is_none() {
        return Err((
            400,
            "Switchover could be performed only from a specific leader".into(),
        ));
    }
    let mut scheduled_at = None;
    if let Some(raw) = scheduled {
        if action == FailoverAction::Failover {
            return Err((400, "Failover can't be scheduled".into()));
        }
        if paused {
            return Err((400, "Can't schedule switchover in the paused state".into()));
        }
        scheduled_at = Some(parse_schedule(raw, action.name(), now_ms)?);
    }
    if paused && candidate.is_none() {
        return Err((
            400,
            "Switchover is possible only to a specific candidate in a paused state".into(),
        ));
    }
    if action == FailoverAction::Failover && leader.is_some() {
        // Patroni: a failover naming the leader is a switchover.
        action = FailoverAction::Switchover;
    }
    if leader.is_some() && leader == candidate {
        return Err((400, "Switchover target and source are the same".into()));
    }
    Ok(FailoverRequest {
        action,
        leader,
        candidate,
        scheduled_at,
    })
}

/// Send a command built around a reply channel and wait for the HA loop's answer.
async fn ask<T>(
    state: &ApiState,
    build: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    let unavailable = || {
        reply::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "the HA loop did not answer",
        )
    };
    // One deadline for both: a loop busy with a long task (a clone) may not even take the command.
    let exchange = async {
        state.commands.send(build(tx)).await.ok()?;
        rx.await.ok()
    };
    match tokio::time::timeout(LOOP_ANSWER_TIMEOUT, exchange).await {
        Ok(Some(answer)) => Ok(answer),
        _ => Err(unavailable()),
    }
}

pub(crate) async fn failover(
    state: &ApiState,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    body: Body,
    action: FailoverAction,
) -> Response {
    let body = match read_json(headers, body, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let request = match validate_failover(&body, action, snapshot.paused, now_ms) {
        Ok(r) => r,
        Err((code, msg)) => return text(code, msg),
    };
    tracing::info!(
        action = request.action.name(),
        leader = ?request.leader,
        candidate = ?request.candidate,
        scheduled_at = ?request.scheduled_at,
        "received a {} request",
        request.action.name()
    );
    let scheduled = request.scheduled_at.is_some();
    let action = request.action;
    let candidate = request.candidate.clone();
    let outcome = match ask(state, |reply| Command::Failover { request, reply }).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let (at_ms, old_leader) = match outcome {
        FailoverOutcome::Written { at_ms, leader } => (at_ms, leader),
        FailoverOutcome::Refused(r) => return r.into_response(),
    };
    if scheduled {
        return text(202, format!("{} scheduled", action.title()));
    }
    let (code, msg) = poll_failover_result(
        state.snapshot.clone(),
        at_ms,
        old_leader.as_deref(),
        candidate.as_deref(),
        action,
    )
    .await;
    text(code, msg)
}

/// Wait until a cluster view read after the request was written shows a new leader (200) or no
/// request any more (503 failed), for at most `2·max(10, loop_wait)` seconds like Patroni.
async fn poll_failover_result(
    mut snapshots: tokio::sync::watch::Receiver<Snapshot>,
    written_ms: i64,
    old_leader: Option<&str>,
    candidate: Option<&str>,
    action: FailoverAction,
) -> (u16, String) {
    let loop_wait = u64::from(snapshots.borrow().loop_wait);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2 * loop_wait.max(10));
    loop {
        {
            let snap = snapshots.borrow_and_update();
            if let Some(verdict) =
                failover_verdict(&snap, written_ms, old_leader, candidate, action)
            {
                return verdict;
            }
        }
        match tokio::time::timeout_at(deadline, snapshots.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => {
                return (503, format!("{} status unknown", action.title()));
            }
        }
    }
}

/// The result of a failover as far as one snapshot tells; `None` while undecided.
pub(crate) fn failover_verdict(
    snap: &Snapshot,
    written_ms: i64,
    old_leader: Option<&str>,
    candidate: Option<&str>,
    action: FailoverAction,
) -> Option<(u16, String)> {
    // Only a cycle that ended after the write read the DCS after it.
    if snap.last_cycle_unix_ms.is_none_or(|t| t <= written_ms) {
        return None;
    }
    let cluster = snap.cluster.as_ref()?;
    if let Some(leader) = cluster.leader_name() {
        if Some(leader) != old_leader {
            return Some(match candidate {
                Some(c) if c != leader => (
                    200,
                    format!(
                        "{} over to \"{leader}\" instead of \"{c}\"",
                        capitalize(action.past())
                    ),
                ),
                _ => (
                    200,
                    format!("Successfully {} over to \"{leader}\"", action.past()),
                ),
            });
        }
    }
    if cluster.failover.as_ref().is_none_or(|f| f.is_empty()) {
        return Some((503, format!("{} failed", action.title())));
    }
    None
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

pub(crate) async fn delete_switchover(state: &ApiState) -> Response {
    match ask(state, |reply| Command::CancelSwitchover { reply }).await {
        Ok(r) => r.into_response(),
        Err(r) => r,
    }
}

/// `PATCH /config` (merge, `null` deletes) or `PUT /config` (replace).
pub(crate) async fn config(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
    replace: bool,
) -> Response {
    let body = match read_json(headers, body, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let value = Value::Object(body);
    match ask(state, |reply| Command::Config {
        value,
        replace,
        reply,
    })
    .await
    {
        Ok(r) => r.into_response(),
        Err(r) => r,
    }
}

pub(crate) async fn reload(state: &ApiState) -> Response {
    match ask(state, |reply| Command::Reload { reply }).await {
        Ok(r) => r.into_response(),
        Err(r) => r,
    }
}

/// Validate `POST /restart` filters in Patroni's order.
pub fn validate_restart(
    body: &Map<String, Value>,
    paused: bool,
    now_ms: i64,
) -> Result<RestartRequest, (u16, String)> {
    if paused && body.contains_key("schedule") {
        return Err((500, "Can't schedule restart in the paused state".into()));
    }
    let mut request = RestartRequest::default();
    for (k, v) in body {
        match k.as_str() {
            "schedule" => request.schedule = Some(parse_schedule(v, "restart", now_ms)?),
            "role" => {
                let role = v.as_str().unwrap_or_default();
                if !matches!(role, "primary" | "master" | "standby_leader" | "replica") {
                    return Err((
                        400,
                        "PostgreSQL role should be either primary, standby_leader, or replica"
                            .into(),
                    ));
                }
                let role = if role == "master" { "primary" } else { role };
                request.role = Some(role.to_string());
            }
            "postgres_version" => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => other.to_string(),
                };
                if postgres_version_to_int(&text).is_none() {
                    return Err((
                        400,
                        format!(
                            "Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: {text}"
                        ),
                    ));
                }
                request.postgres_version = Some(text);
            }
            "timeout" => {
                let secs = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().trim_end_matches('s').trim().parse::<f64>().ok(),
                    _ => None,
                };
                match secs {
                    Some(s) if s > 0.0 => request.timeout = Some(s.ceil() as u64),
                    _ => {
                        return Err((400, "Timeout should be a positive number of seconds".into()))
                    }
                }
            }
            "restart_pending" => {
                request.restart_pending = match v {
                    Value::Bool(b) => *b,
                    Value::String(s) => {
                        matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1")
                    }
                    Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                    _ => false,
                }
            }
            other => {
                return Err((
                    400,
                    format!("Unknown filter for the scheduled restart: {other}"),
                ))
            }
        }
    }
    Ok(request)
}

/// `X.Y` or `X.Y.Z` (Patroni's postgres_version_to_int): `15.4` → 150004, `9.6.24` → 90624.
pub fn postgres_version_to_int(text: &str) -> Option<u32> {
    let parts: Vec<u32> = text
        .trim()
        .split('.')
        .map(|p| p.parse::<u32>().ok())
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        // New-style numbers: 10.1 is 10.0.1.
        [major, minor] if *major >= 10 => Some(major * 10000 + minor),
        [major, minor, patch] => Some(major * 10000 + minor * 100 + patch),
        _ => None,
    }
}

pub(crate) async fn restart(
    state: &ApiState,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let body = match read_json(headers, body, true).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let request = match validate_restart(&body, snapshot.paused, now_ms) {
        Ok(r) => r,
        Err((code, msg)) => return text(code, msg),
    };
    match ask(state, |reply| Command::Restart { request, reply }).await {
        Ok(r) => r.into_response(),
        Err(r) => r,
    }
}

pub(crate) async fn delete_restart(state: &ApiState) -> Response {
    match ask(state, |reply| Command::CancelRestart { reply }).await {
        Ok(r) => r.into_response(),
        Err(r) => r,
    }
}

pub(crate) async fn reinitialize(state: &ApiState, headers: &HeaderMap, body: Body) -> Response {
    let body = match read_json(headers, body, true).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let truthy = |k: &str| match body.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => {
            matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1")
        }
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        _ => false,
    };
    let force = truthy("force");
    match ask(state, |reply| Command::Reinitialize { force, reply }).await {
        Ok(r) => r.into_response(),
        Err(r) => r,
    }
}
