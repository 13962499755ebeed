//! The `POST /citus` event a worker group's leader sends to the coordinator's leader around a
//! demote or promote (docs/compatibility.md, *Citus*):
//! `{"type":"before_demote","group":1,"leader":"demo-1-0","timeout":30,"cooldown":10}`.
//!
//! `type`, `group` and `leader` are required. `timeout` (the sender's `ttl`, seconds) and
//! `cooldown` (the sender's `retry_timeout`, seconds) default to Patroni's defaults when absent.
//! Unknown fields are ignored, so newer senders stay compatible.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

/// `timeout` when the body has none: Patroni's default `ttl`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// `cooldown` when the body has none: Patroni's default `retry_timeout`.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(10);
/// Longest accepted `timeout`: a transaction pausing a group's writes for longer is a mistake.
pub const MAX_TIMEOUT_SECS: f64 = 3600.0;
/// Longest accepted `cooldown`: `citus_update_node` takes it in milliseconds as an int4.
pub const MAX_COOLDOWN_SECS: f64 = 3600.0;

/// What happens to the sender's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The group's primary is about to stop (switchover, restart, shutdown): pause its writes.
    BeforeDemote,
    /// A new primary is about to be promoted: point the paused node at it.
    BeforePromote,
    /// The new primary runs: point the node at it and let writes resume.
    AfterPromote,
}

impl EventType {
    /// Every type, in the order the wire names are listed in error messages.
    pub const ALL: [EventType; 3] = [
        EventType::BeforeDemote,
        EventType::BeforePromote,
        EventType::AfterPromote,
    ];

    /// The wire name (`before_demote`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::BeforeDemote => "before_demote",
            EventType::BeforePromote => "before_promote",
            EventType::AfterPromote => "after_promote",
        }
    }

    /// The type with this wire name.
    pub fn from_wire(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed `POST /citus` body.
#[derive(Debug, Clone, PartialEq)]
pub struct CitusEvent {
    pub kind: EventType,
    /// The sender's Citus group (≥ 1 for a worker; 0 is accepted and rejected later if needed).
    pub group: u32,
    /// The sender's member name; the coordinator acts only if it is the group's DCS leader.
    pub leader: String,
    /// How long a transaction opened by this event may stay open.
    pub timeout: Duration,
    /// `citus_update_node`'s `lock_cooldown`: how long conflicting sessions get before being
    /// terminated.
    pub cooldown: Duration,
}

/// Why a `POST /citus` body was refused: the 400 answer's text, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the request body must be a JSON object")]
    NotAnObject,
    #[error("{field}: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
}

fn field_error(field: &'static str, problem: impl Into<String>) -> EventError {
    EventError::Field {
        field,
        problem: problem.into(),
    }
}

/// Parse a `POST /citus` body.
pub fn parse_event(body: &Value) -> Result<CitusEvent, EventError> {
    let Value::Object(map) = body else {
        return Err(EventError::NotAnObject);
    };
    let kind = match map.get("type") {
        None | Some(Value::Null) => return Err(field_error("type", "required field is missing")),
        Some(Value::String(s)) => EventType::from_wire(s).ok_or_else(|| {
            field_error(
                "type",
                format!("expected one of before_demote, before_promote, after_promote, got {s:?}"),
            )
        })?,
        Some(other) => {
            return Err(field_error(
                "type",
                format!("expected a string, got {other}"),
            ))
        }
    };
    let group = match map.get("group") {
        None | Some(Value::Null) => return Err(field_error("group", "required field is missing")),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(g) if g <= i32::MAX as u64 => g as u32,
            _ => {
                return Err(field_error(
                    "group",
                    format!("expected an integer from 0 to {}, got {n}", i32::MAX),
                ))
            }
        },
        Some(other) => {
            return Err(field_error(
                "group",
                format!("expected an integer, got {other}"),
            ))
        }
    };
    let leader = match map.get("leader") {
        None | Some(Value::Null) => return Err(field_error("leader", "required field is missing")),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(field_error("leader", "must not be empty"))
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(field_error(
                "leader",
                format!("expected a string, got {other}"),
            ))
        }
    };
    let timeout = seconds(map, "timeout", DEFAULT_TIMEOUT, MAX_TIMEOUT_SECS, false)?;
    let cooldown = seconds(map, "cooldown", DEFAULT_COOLDOWN, MAX_COOLDOWN_SECS, true)?;
    Ok(CitusEvent {
        kind,
        group,
        leader,
        timeout,
        cooldown,
    })
}

/// An optional number of seconds in `0..=max` (`> 0` unless `zero_ok`).
fn seconds(
    map: &Map<String, Value>,
    key: &'static str,
    default: Duration,
    max: f64,
    zero_ok: bool,
) -> Result<Duration, EventError> {
    let n = match map.get(key) {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Number(n)) => n,
        Some(other) => {
            return Err(field_error(
                key,
                format!("expected a number of seconds, got {other}"),
            ))
        }
    };
    let secs = n.as_f64().filter(|s| s.is_finite()).unwrap_or(-1.0);
    let in_range = if zero_ok { secs >= 0.0 } else { secs > 0.0 } && secs <= max;
    if !in_range {
        let low = if zero_ok {
            "from 0"
        } else {
            "greater than 0 and"
        };
        return Err(field_error(
            key,
            format!("expected a number of seconds {low} up to {max}, got {n}"),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl CitusEvent {
    /// The body a worker sends: whole seconds as integers (what Patroni sends), fractions as
    /// floats.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "type": self.kind.as_str(),
            "group": self.group,
            "leader": self.leader,
            "timeout": seconds_value(self.timeout),
            "cooldown": seconds_value(self.cooldown),
        })
    }

    /// `cooldown` in milliseconds, as `citus_update_node` takes it.
    pub fn cooldown_ms(&self) -> i32 {
        duration_ms_i32(self.cooldown)
    }
}

/// A duration in milliseconds, clamped to an int4.
pub(crate) fn duration_ms_i32(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

fn seconds_value(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        Value::from(d.as_secs())
    } else {
        Value::from(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_what_patroni_sends() {
        let ev = parse_event(&json!({
            "type": "before_demote", "group": 1, "leader": "demo-1-0", "timeout": 30, "cooldown": 10
        }))
        .expect("valid");
        assert_eq!(
            ev,
            CitusEvent {
                kind: EventType::BeforeDemote,
                group: 1,
                leader: "demo-1-0".into(),
                timeout: Duration::from_secs(30),
                cooldown: Duration::from_secs(10),
            }
        );
        assert_eq!(ev.cooldown_ms(), 10_000);
    }

    #[test]
    fn every_type_and_defaults() {
        for kind in EventType::ALL {
            let ev = parse_event(&json!({"type": kind.as_str(), "group": 0, "leader": "x"}))
                .expect("valid");
            assert_eq!(ev.kind, kind);
            assert_eq!(ev.timeout, DEFAULT_TIMEOUT);
            assert_eq!(ev.cooldown, DEFAULT_COOLDOWN);
        }
    }

    #[test]
    fn fractional_seconds_and_zero_cooldown() {
        let ev = parse_event(&json!({
            "type": "after_promote", "group": 2, "leader": "w", "timeout": 2.5, "cooldown": 0,
            "extra": "ignored"
        }))
        .expect("valid");
        assert_eq!(ev.timeout, Duration::from_millis(2500));
        assert_eq!(ev.cooldown, Duration::ZERO);
        assert_eq!(ev.cooldown_ms(), 0);
    }

    #[test]
    fn rejections_name_the_field() {
        let base = json!({"type": "before_demote", "group": 1, "leader": "w"});
        let with = |key: &str, v: Value| {
            let mut b = base.clone();
            b[key] = v;
            b
        };
        let without = |key: &str| {
            let mut b = base.clone();
            b.as_object_mut().expect("object").remove(key);
            b
        };
        let cases: Vec<(Value, &str)> = vec![
            (json!([1]), "the request body must be a JSON object"),
            (without("type"), "type: required field is missing"),
            (
                with("type", json!("demote")),
                "type: expected one of before_demote, before_promote, after_promote, got \"demote\"",
            ),
            (with("type", json!(1)), "type: expected a string, got 1"),
            (without("group"), "group: required field is missing"),
            (
                with("group", json!(-1)),
                "group: expected an integer from 0 to 2147483647, got -1",
            ),
            (
                with("group", json!(1.5)),
                "group: expected an integer from 0 to 2147483647, got 1.5",
            ),
            (
                with("group", json!(4294967296u64)),
                "group: expected an integer from 0 to 2147483647, got 4294967296",
            ),
            (with("group", json!("1")), "group: expected an integer, got \"1\""),
            (without("leader"), "leader: required field is missing"),
            (with("leader", json!("")), "leader: must not be empty"),
            (with("leader", json!(7)), "leader: expected a string, got 7"),
            (
                with("timeout", json!(0)),
                "timeout: expected a number of seconds greater than 0 and up to 3600, got 0",
            ),
            (
                with("timeout", json!(-3)),
                "timeout: expected a number of seconds greater than 0 and up to 3600, got -3",
            ),
            (
                with("timeout", json!(1e300)),
                "timeout: expected a number of seconds greater than 0 and up to 3600, got 1e+300",
            ),
            (
                with("timeout", json!("30")),
                "timeout: expected a number of seconds, got \"30\"",
            ),
            (
                with("cooldown", json!(-0.5)),
                "cooldown: expected a number of seconds from 0 up to 3600, got -0.5",
            ),
            (
                with("cooldown", json!(true)),
                "cooldown: expected a number of seconds, got true",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                parse_event(&body).map_err(|e| e.to_string()),
                Err(expected.to_string()),
                "body {body}"
            );
        }
    }

    #[test]
    fn to_json_round_trips() {
        let events = [
            CitusEvent {
                kind: EventType::BeforePromote,
                group: 3,
                leader: "w-3-1".into(),
                timeout: Duration::from_secs(30),
                cooldown: Duration::from_secs(10),
            },
            CitusEvent {
                kind: EventType::AfterPromote,
                group: 1,
                leader: "w".into(),
                timeout: Duration::from_millis(1500),
                cooldown: Duration::ZERO,
            },
        ];
        assert_eq!(
            events[0].to_json(),
            json!({"type": "before_promote", "group": 3, "leader": "w-3-1", "timeout": 30, "cooldown": 10})
        );
        assert_eq!(events[1].to_json()["timeout"], json!(1.5));
        for ev in events {
            assert_eq!(parse_event(&ev.to_json()), Ok(ev));
        }
    }
}
