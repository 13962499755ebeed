//! The neutral cluster model shared by every DCS backend, the HA core and the REST API.
//!
//! Nothing here knows about etcd or Kubernetes. Backends map these types to their wire
//! format (key layout, annotations); the formats of the JSON payloads themselves (member data,
//! history rows, failover and sync objects) are Patroni's and are produced/parsed here so that
//! every backend writes byte-compatible values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A member's role, as published in member data and on REST.
///
/// Written the way Patroni 4 writes it (`primary`); `master` is accepted on read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Role {
    Primary,
    Replica,
    StandbyLeader,
    Demoted,
    Promoted,
    #[default]
    Uninitialized,
    Other(String),
}

impl Role {
    pub fn as_str(&self) -> &str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Demoted => "demoted",
            Role::Promoted => "promoted",
            Role::Uninitialized => "uninitialized",
            Role::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> Role {
        match s {
            "primary" | "master" => Role::Primary,
            "replica" => Role::Replica,
            "standby_leader" | "standby-leader" => Role::StandbyLeader,
            "demoted" => Role::Demoted,
            "promoted" => Role::Promoted,
            "uninitialized" => Role::Uninitialized,
            other => Role::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Role::parse(&s))
    }
}

/// What a member's Postgres is doing, as members publish it (`state` in member data and in
/// `GET /patroni`). The texts are Patroni's, so both implementations read each other's;
/// `patroni_postgres_state` numbers them. A text this version does not know is kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PostgresState {
    InitializingNewCluster,
    InitdbFailed,
    RunningCustomBootstrap,
    CustomBootstrapFailed,
    CreatingReplica,
    Running,
    Starting,
    StartingAfterCustomBootstrap,
    StartFailed,
    Restarting,
    RestartFailed,
    Stopping,
    Stopped,
    StopFailed,
    Crashed,
    /// Regent repairing a data directory that diverged from the leader's timeline.
    RunningPgRewind,
    /// Postgres runs but does not answer queries (status JSON only).
    Unknown,
    /// Written by someone else; also the empty text of member data without a state.
    Other(String),
}

/// `patroni_postgres_state`'s name for a state and its number.
type MetricCode = (&'static str, i32);

/// Every known state with its text and, where Patroni numbers it, its metric code.
static POSTGRES_STATES: [(PostgresState, &str, Option<MetricCode>); 17] = [
    (
        PostgresState::InitializingNewCluster,
        "initializing new cluster",
        Some(("initdb", 0)),
    ),
    (
        PostgresState::InitdbFailed,
        "initdb failed",
        Some(("initdb_failed", 1)),
    ),
    (
        PostgresState::RunningCustomBootstrap,
        "running custom bootstrap script",
        Some(("custom_bootstrap", 2)),
    ),
    (
        PostgresState::CustomBootstrapFailed,
        "custom bootstrap failed",
        Some(("custom_bootstrap_failed", 3)),
    ),
    (
        PostgresState::CreatingReplica,
        "creating replica",
        Some(("creating_replica", 4)),
    ),
    (PostgresState::Running, "running", Some(("running", 5))),
    (PostgresState::Starting, "starting", Some(("starting", 6))),
    (
        PostgresState::StartingAfterCustomBootstrap,
        "starting after custom bootstrap",
        Some(("bootstrap_starting", 7)),
    ),
    (
        PostgresState::StartFailed,
        "start failed",
        Some(("start_failed", 8)),
    ),
    (
        PostgresState::Restarting,
        "restarting",
        Some(("restarting", 9)),
    ),
    (
        PostgresState::RestartFailed,
        "restart failed",
        Some(("restart_failed", 10)),
    ),
    (PostgresState::Stopping, "stopping", Some(("stopping", 11))),
    (PostgresState::Stopped, "stopped", Some(("stopped", 12))),
    (
        PostgresState::StopFailed,
        "stop failed",
        Some(("stop_failed", 13)),
    ),
    (PostgresState::Crashed, "crashed", Some(("crashed", 14))),
    (PostgresState::RunningPgRewind, "running pg_rewind", None),
    (PostgresState::Unknown, "unknown", None),
];

impl PostgresState {
    pub fn as_str(&self) -> &str {
        match self {
            PostgresState::Other(text) => text,
            known => POSTGRES_STATES
                .iter()
                .find(|(state, _, _)| state == known)
                .map_or("", |(_, text, _)| text),
        }
    }

    pub fn parse(text: &str) -> PostgresState {
        POSTGRES_STATES
            .iter()
            .find(|(_, known, _)| *known == text)
            .map_or_else(
                || PostgresState::Other(text.to_string()),
                |(state, _, _)| state.clone(),
            )
    }

    /// `patroni_postgres_state`'s name and number for this state, as Patroni numbers them.
    pub fn metric_code(&self) -> Option<MetricCode> {
        POSTGRES_STATES
            .iter()
            .find(|(state, _, _)| state == self)
            .and_then(|(_, _, code)| *code)
    }

    /// Every state `patroni_postgres_state` numbers, in order: (text, name, number).
    pub fn metric_codes() -> impl Iterator<Item = (&'static str, &'static str, i32)> {
        POSTGRES_STATES
            .iter()
            .filter_map(|(_, text, code)| code.map(|(name, number)| (*text, name, number)))
    }

    /// A new data directory being made: initdb, a custom bootstrap, or a copy of the leader.
    pub fn is_bootstrapping(&self) -> bool {
        matches!(
            self,
            PostgresState::InitializingNewCluster
                | PostgresState::RunningCustomBootstrap
                | PostgresState::StartingAfterCustomBootstrap
                | PostgresState::CreatingReplica
        )
    }
}

impl Default for PostgresState {
    /// Nothing published.
    fn default() -> Self {
        PostgresState::Other(String::new())
    }
}

impl From<&str> for PostgresState {
    fn from(text: &str) -> Self {
        PostgresState::parse(text)
    }
}

impl std::str::FromStr for PostgresState {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(PostgresState::parse(text))
    }
}

impl std::fmt::Display for PostgresState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PostgresState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PostgresState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(PostgresState::parse(&text))
    }
}

/// Member tags (`tags:` in the config, `tags` in member data). Kept as the raw JSON map so custom
/// tags survive; typed accessors interpret the well-known ones leniently (Patroni accepts
/// booleans written as strings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tags(pub Map<String, Value>);

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1"),
        Value::Number(n) => n.as_i64().map(|i| i != 0).unwrap_or(false),
        _ => false,
    }
}

impl Tags {
    pub fn flag(&self, name: &str) -> bool {
        self.0.get(name).map(truthy).unwrap_or(false)
    }
    pub fn nofailover(&self) -> bool {
        self.flag("nofailover")
    }
    pub fn noloadbalance(&self) -> bool {
        self.flag("noloadbalance")
    }
    pub fn clonefrom(&self) -> bool {
        self.flag("clonefrom")
    }
    pub fn nosync(&self) -> bool {
        self.flag("nosync")
    }
    pub fn nostream(&self) -> bool {
        self.flag("nostream")
    }
    pub fn replicatefrom(&self) -> Option<&str> {
        self.0.get("replicatefrom").and_then(Value::as_str)
    }
    /// `failover_priority`, default 1; `nofailover: true` means 0 (never leader).
    pub fn failover_priority(&self) -> i64 {
        if self.nofailover() {
            return 0;
        }
        match self.0.get("failover_priority") {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(1),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(1),
            _ => 1,
        }
    }
    /// May this member ever become leader?
    pub fn can_be_leader(&self) -> bool {
        self.failover_priority() > 0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One member as published in the DCS (Patroni's member JSON; docs/compatibility.md, *Member JSON*).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(default)]
    pub state: PostgresState,
    #[serde(default = "default_role")]
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart_reason: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_restart: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_after_promote: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<bool>,
    /// Fields Regent does not interpret, kept so nothing written by a peer is lost.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_role() -> Role {
    Role::Uninitialized
}

/// Why member data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MemberDataError {
    #[error("member data is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("member data is not a JSON object")]
    NotObject,
    /// A known field holds a value of the wrong type.
    #[error("member data field '{field}' has an invalid value: {value}")]
    InvalidField { field: String, value: Value },
    #[error("member data: {0}")]
    Invalid(serde_json::Error),
}

impl MemberData {
    /// Parse member data written by anyone (Regent, Patroni, a human). Errors name the field.
    ///
    /// Accepts the legacy plain value `postgres://u:p@host:port/db?application_name=<api_url>`.
    pub fn parse(raw: &str) -> Result<MemberData, MemberDataError> {
        let trimmed = raw.trim();
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            let (conn, query) = trimmed.split_once('?').unwrap_or((trimmed, ""));
            let api_url = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("application_name="))
                .map(str::to_string);
            return Ok(MemberData {
                conn_url: Some(conn.to_string()),
                api_url,
                state: PostgresState::Running,
                role: Role::Replica,
                ..Default::default()
            });
        }
        let value: Value = serde_json::from_str(trimmed).map_err(MemberDataError::NotJson)?;
        let mut obj = match value {
            Value::Object(m) => m,
            _ => return Err(MemberDataError::NotObject),
        };
        // Patroni readers accept conn_kwargs instead of conn_url.
        if !obj.contains_key("conn_url") {
            if let Some(Value::Object(kw)) = obj.get("conn_kwargs") {
                let host = kw
                    .get("host")
                    .and_then(Value::as_str)
                    .unwrap_or("localhost");
                let port = kw
                    .get("port")
                    .map(|p| match p {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_else(|| "5432".into());
                let db = kw
                    .get("dbname")
                    .and_then(Value::as_str)
                    .unwrap_or("postgres");
                obj.insert(
                    "conn_url".into(),
                    Value::String(format!("postgres://{host}:{port}/{db}")),
                );
            }
        }
        // Accept numbers written as strings for the integer fields.
        for field in ["xlog_location", "timeline", "receive_lsn", "replay_lsn"] {
            if let Some(Value::String(s)) = obj.get(field) {
                if let Ok(n) = s.trim().parse::<u64>() {
                    obj.insert(field.into(), Value::from(n));
                }
            }
        }
        serde_path_to_error_lite(Value::Object(obj))
    }

    /// `host` and `port` from `conn_url`.
    pub fn conn_host_port(&self) -> Option<(String, u16)> {
        parse_url_host_port(self.conn_url.as_deref()?, 5432)
    }

    /// Patroni's "WAL position" of a member: the published `xlog_location`.
    pub fn wal_position(&self) -> u64 {
        self.xlog_location.unwrap_or(0)
    }

    pub fn is_running(&self) -> bool {
        self.state == PostgresState::Running
    }
}

/// Deserialize a member object and, on failure, name the offending field.
fn serde_path_to_error_lite(v: Value) -> Result<MemberData, MemberDataError> {
    if let Value::Object(m) = &v {
        // Check each typed field on its own so the error names it.
        let probe = |name: &str, ok: fn(&Value) -> bool| -> Result<(), MemberDataError> {
            match m.get(name) {
                Some(val) if !val.is_null() && !ok(val) => Err(MemberDataError::InvalidField {
                    field: name.to_string(),
                    value: val.clone(),
                }),
                _ => Ok(()),
            }
        };
        probe("conn_url", Value::is_string)?;
        probe("api_url", Value::is_string)?;
        probe("state", Value::is_string)?;
        probe("role", Value::is_string)?;
        probe("version", Value::is_string)?;
        probe("xlog_location", Value::is_u64)?;
        probe("timeline", Value::is_u64)?;
        probe("receive_lsn", Value::is_u64)?;
        probe("replay_lsn", Value::is_u64)?;
        probe("tags", Value::is_object)?;
        probe("pending_restart", Value::is_boolean)?;
        probe("checkpoint_after_promote", Value::is_boolean)?;
        probe("pause", Value::is_boolean)?;
    }
    serde_json::from_value(v).map_err(MemberDataError::Invalid)
}

/// `[scheme://][userinfo@]host[:port][/path][?query]` split into (scheme, userinfo,
/// `host[:port]`); the path and query are dropped. Addresses in configuration and in member
/// data come with and without a scheme, so neither part is required.
pub fn split_url(url: &str) -> (Option<&str>, Option<&str>, &str) {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    match authority.rsplit_once('@') {
        Some((user, host)) => (scheme, Some(user), host),
        None => (scheme, None, authority),
    }
}

/// Parse `scheme://[user[:pw]@]host[:port][/...]` into host and port.
pub fn parse_url_host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let (_, _, hostport) = split_url(url);
    if hostport.is_empty() {
        return None;
    }
    if let Some(stripped) = hostport.strip_prefix('[') {
        // [ipv6]:port
        let (host, after) = stripped.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        return Some((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((hostport.to_string(), default_port)),
    }
}

/// A member: its name plus its published data.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub data: MemberData,
    /// Backend-specific object version (etcd mod_revision, Kubernetes resourceVersion).
    pub version: Option<String>,
}

impl Member {
    pub fn new(name: impl Into<String>, data: MemberData) -> Self {
        Member {
            name: name.into(),
            data,
            version: None,
        }
    }
}

/// The leader lock as seen by a reader. Present only while the lock is held (unexpired).
#[derive(Debug, Clone, PartialEq)]
pub struct Leader {
    pub name: String,
    /// Backend-specific version of the lock object, for compare-and-swap.
    pub version: Option<String>,
}

/// The dynamic configuration (`config` key; docs/configuration.md).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The whole JSON object as stored; keys Regent does not know are kept.
    pub raw: Value,
    pub version: Option<String>,
}

/// One timeline-history row: `[timeline, switch_lsn, reason, timestamp, new_leader]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub timeline: u32,
    pub lsn: u64,
    pub reason: String,
    pub timestamp: Option<String>,
    pub new_leader: Option<String>,
}

/// Why the timeline history, or one of its rows, could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("history is not a JSON list")]
    NotList,
    #[error("history row is not a list")]
    RowNotList,
    #[error("history row has fewer than 3 items")]
    RowTooShort,
    /// `item` names the column: `timeline` or `lsn`.
    #[error("history {item} is not a non-negative integer")]
    Negative { item: &'static str },
    #[error("history {item} is not an integer")]
    NotInteger { item: &'static str },
    #[error("history timeline too large")]
    TimelineTooLarge,
}

impl HistoryEntry {
    pub fn to_json(&self) -> Value {
        let mut row = vec![
            Value::from(self.timeline),
            Value::from(self.lsn),
            Value::from(self.reason.clone()),
        ];
        if let Some(ts) = &self.timestamp {
            row.push(Value::from(ts.clone()));
            if let Some(l) = &self.new_leader {
                row.push(Value::from(l.clone()));
            }
        }
        Value::Array(row)
    }

    pub fn from_json(v: &Value) -> Result<HistoryEntry, HistoryError> {
        let row = v.as_array().ok_or(HistoryError::RowNotList)?;
        if row.len() < 3 {
            return Err(HistoryError::RowTooShort);
        }
        let num = |i: usize, item: &'static str| -> Result<u64, HistoryError> {
            match &row[i] {
                Value::Number(n) => n.as_u64().ok_or(HistoryError::Negative { item }),
                Value::String(s) => s.parse().map_err(|_| HistoryError::NotInteger { item }),
                _ => Err(HistoryError::NotInteger { item }),
            }
        };
        Ok(HistoryEntry {
            timeline: u32::try_from(num(0, "timeline")?)
                .map_err(|_| HistoryError::TimelineTooLarge)?,
            lsn: num(1, "lsn")?,
            reason: row[2].as_str().unwrap_or_default().to_string(),
            timestamp: row.get(3).and_then(Value::as_str).map(str::to_string),
            new_leader: row.get(4).and_then(Value::as_str).map(str::to_string),
        })
    }
}

/// Parse the `history` value (a JSON list of rows); bad rows are reported, not fatal.
pub fn parse_history(raw: &str) -> Result<Vec<HistoryEntry>, HistoryError> {
    let v: Value = serde_json::from_str(raw).map_err(HistoryError::NotJson)?;
    let rows = v.as_array().ok_or(HistoryError::NotList)?;
    rows.iter().map(HistoryEntry::from_json).collect()
}

/// The failsafe topology: every member's name and REST `api_url`, written by the leader. While
/// the DCS cannot be reached, a primary keeps running only if every listed member confirms it
/// over REST, and only listed members may take a free lock.
pub type FailsafeTopology = BTreeMap<String, String>;

/// Why a `failsafe` value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FailsafeError {
    #[error("failsafe is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("failsafe is not a JSON object")]
    NotObject,
    /// The member's `api_url` is not a string.
    #[error("failsafe entry {member:?} is not a string")]
    EntryNotString { member: String },
}

/// Parse a `failsafe` value (`{"<name>": "<api_url>"}`).
pub fn parse_failsafe(raw: &str) -> Result<FailsafeTopology, FailsafeError> {
    let v: Value = serde_json::from_str(raw).map_err(FailsafeError::NotJson)?;
    let Value::Object(m) = v else {
        return Err(FailsafeError::NotObject);
    };
    m.into_iter()
        .map(|(name, url)| match url {
            Value::String(u) => Ok((name, u)),
            _ => Err(FailsafeError::EntryNotString { member: name }),
        })
        .collect()
}

/// The `failsafe` value as written (compact JSON object).
pub fn failsafe_to_json(topology: &FailsafeTopology) -> String {
    serde_json::to_string(topology).unwrap_or_else(|_| "{}".into())
}

pub fn history_to_json(rows: &[HistoryEntry]) -> String {
    Value::Array(rows.iter().map(HistoryEntry::to_json).collect()).to_string()
}

/// A requested manual failover / switchover (`failover` key).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The candidate (`member` on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
    #[serde(skip)]
    pub version: Option<String>,
}

/// Why a `failover` value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// A JSON object that is not a failover request.
    #[error("failover value: {0}")]
    Invalid(serde_json::Error),
}

impl Failover {
    /// Parse JSON or the legacy `leader:candidate` form.
    pub fn parse(raw: &str) -> Result<Failover, FailoverError> {
        let t = raw.trim();
        if t.is_empty() {
            return Ok(Failover::default());
        }
        if t.starts_with('{') {
            return serde_json::from_str(t).map_err(FailoverError::Invalid);
        }
        let (l, m) = t.split_once(':').unwrap_or((t, ""));
        Ok(Failover {
            leader: (!l.is_empty()).then(|| l.to_string()),
            member: (!m.is_empty()).then(|| m.to_string()),
            ..Default::default()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.leader.is_none() && self.member.is_none()
    }
}

/// Synchronous replication state (`sync` key).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncState {
    pub leader: Option<String>,
    pub sync_standby: Vec<String>,
    pub quorum: Option<u32>,
    pub version: Option<String>,
}

/// Why a `sync` value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SyncStateError {
    #[error("sync value is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("sync value is not a JSON object")]
    NotObject,
}

impl SyncState {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert(
            "leader".into(),
            self.leader.clone().map(Value::from).unwrap_or(Value::Null),
        );
        let ss = if self.sync_standby.is_empty() {
            Value::Null
        } else {
            Value::from(self.sync_standby.join(","))
        };
        m.insert("sync_standby".into(), ss);
        if let Some(q) = self.quorum {
            m.insert("quorum".into(), Value::from(q));
        }
        Value::Object(m)
    }

    pub fn parse(raw: &str) -> Result<SyncState, SyncStateError> {
        let v: Value = serde_json::from_str(raw).map_err(SyncStateError::NotJson)?;
        let obj = v.as_object().ok_or(SyncStateError::NotObject)?;
        let mut names: Vec<String> = obj
            .get("sync_standby")
            .and_then(Value::as_str)
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        Ok(SyncState {
            leader: obj
                .get("leader")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            sync_standby: names,
            quorum: obj.get("quorum").and_then(|q| match q {
                Value::Number(n) => n.as_u64().map(|x| x as u32),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }),
            version: None,
        })
    }
}

/// The leader's status (`status` key): last known WAL position and permanent slot positions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub optime: Option<u64>,
    pub slots: Map<String, Value>,
    pub retain_slots: Vec<String>,
}

/// Why a `status` value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status value is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("status value is not a JSON object")]
    NotObject,
}

impl Status {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(o) = self.optime {
            m.insert("optime".into(), Value::from(o));
        }
        if !self.slots.is_empty() {
            m.insert("slots".into(), Value::Object(self.slots.clone()));
        }
        if !self.retain_slots.is_empty() {
            m.insert(
                "retain_slots".into(),
                Value::from(self.retain_slots.clone()),
            );
        }
        Value::Object(m)
    }

    pub fn parse(raw: &str) -> Result<Status, StatusError> {
        let t = raw.trim();
        // Legacy: a bare integer optime.
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Status {
                optime: Some(n),
                ..Default::default()
            });
        }
        let v: Value = serde_json::from_str(t).map_err(StatusError::NotJson)?;
        let obj = v.as_object().ok_or(StatusError::NotObject)?;
        Ok(Status {
            optime: obj.get("optime").and_then(|o| match o {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            }),
            slots: obj
                .get("slots")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            retain_slots: obj
                .get("retain_slots")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// Everything a member knows about its cluster (or Citus group) after one read of the DCS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cluster {
    /// `None`: never initialized. `Some("")`: bootstrap in progress. `Some(sysid)`: initialized.
    pub initialize: Option<String>,
    pub config: Option<ClusterConfig>,
    /// The lock, only while held.
    pub leader: Option<Leader>,
    pub status: Status,
    pub members: Vec<Member>,
    pub failover: Option<Failover>,
    pub sync: SyncState,
    pub history: Vec<HistoryEntry>,
    /// The failsafe topology written by the leader (`None`: absent or unreadable).
    pub failsafe: Option<FailsafeTopology>,
    /// Problems met while reading objects written by others (named field, what was wrong). On
    /// the Citus coordinator this also holds every worker group's warnings, each naming its key
    /// or object, so one list reports everything the read met.
    pub warnings: Vec<String>,
    /// Citus: every worker group (>= 1) present in the DCS, read in the same round trip as this
    /// group. Filled only on the coordinator (group 0); empty for everyone else and for the
    /// clusters returned by [`crate::Dcs::get_group`]. A worker group's `leader` is its lock
    /// holder (etcd: the leader key exists; Kubernetes: see the backend), its `members` carry
    /// their published data.
    pub workers: BTreeMap<u32, Cluster>,
}

impl Cluster {
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn leader_name(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.name.as_str())
    }

    pub fn leader_member(&self) -> Option<&Member> {
        self.member(self.leader_name()?)
    }

    pub fn is_locked(&self) -> bool {
        self.leader.is_some()
    }

    /// Is the cluster initialized with a real system identifier?
    pub fn initialized_sysid(&self) -> Option<&str> {
        self.initialize.as_deref().filter(|s| !s.is_empty())
    }

    /// Timeline the cluster is on according to its history: last row + 1, or 1.
    pub fn timeline(&self) -> u32 {
        self.history.last().map(|h| h.timeline + 1).unwrap_or(1)
    }

    pub fn is_paused(&self) -> bool {
        self.config
            .as_ref()
            .and_then(|c| c.raw.get("pause"))
            .map(truthy)
            .unwrap_or(false)
    }
}

/// A Citus group id as written in keys and labels: `0` or a number without leading zeros;
/// anything else is not a group.
pub fn parse_group(s: &str) -> Option<u32> {
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Convert an LSN in `X/Y` text form to its absolute byte offset.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    Some((hi << 32) | lo)
}

/// Format an absolute LSN as `X/Y`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_states_read_and_write_patronis_texts() {
        for (state, text, _) in POSTGRES_STATES.iter() {
            assert_eq!(PostgresState::parse(text), *state, "{text}");
            assert_eq!(state.to_string(), *text);
            let member = MemberData::parse(&format!(r#"{{"state":"{text}"}}"#)).unwrap();
            assert_eq!(member.state, *state);
            assert!(serde_json::to_string(&member)
                .unwrap()
                .contains(&format!(r#""state":"{text}""#)));
        }
        // Someone else's state survives a read and a write; no state stays no state.
        let other = MemberData::parse(r#"{"state":"running custom bootstrap script 2"}"#).unwrap();
        assert_eq!(
            other.state,
            PostgresState::Other("running custom bootstrap script 2".into())
        );
        assert!(serde_json::to_string(&other)
            .unwrap()
            .contains(r#""state":"running custom bootstrap script 2""#));
        assert_eq!(MemberData::parse("{}").unwrap().state.as_str(), "");
        assert!(MemberData::parse(r#"{"state": 5}"#).is_err());
    }

    #[test]
    fn postgres_state_metric_codes_are_patronis() {
        let codes: Vec<(&str, i32)> = PostgresState::metric_codes()
            .map(|(_, name, code)| (name, code))
            .collect();
        assert_eq!(codes.len(), 15);
        assert!(codes
            .iter()
            .enumerate()
            .all(|(i, (_, code))| *code == i as i32));
        assert_eq!(PostgresState::Running.metric_code(), Some(("running", 5)));
        assert_eq!(PostgresState::Crashed.metric_code(), Some(("crashed", 14)));
        assert_eq!(PostgresState::RunningPgRewind.metric_code(), None);
        assert_eq!(PostgresState::Other("x".into()).metric_code(), None);
    }

    #[test]
    fn role_accepts_master_and_writes_primary() {
        let d = MemberData::parse(r#"{"role":"master","state":"running"}"#).unwrap();
        assert_eq!(d.role, Role::Primary);
        assert!(serde_json::to_string(&d)
            .unwrap()
            .contains(r#""role":"primary""#));
    }

    #[test]
    fn member_bad_field_is_named() {
        let e = MemberData::parse(r#"{"role":"replica","xlog_location":"abc"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"member data field 'xlog_location' has an invalid value: "abc""#
        );
        let e = MemberData::parse(r#"{"tags":[1]}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "member data field 'tags' has an invalid value: [1]"
        );
    }

    #[test]
    fn parse_errors_read_as_before() {
        let not_json = |raw: &str| serde_json::from_str::<Value>(raw).unwrap_err().to_string();
        let message = |e: &dyn std::error::Error| e.to_string();
        assert_eq!(
            message(&MemberData::parse("{").unwrap_err()),
            format!("member data is not JSON: {}", not_json("{"))
        );
        assert_eq!(
            message(&MemberData::parse("[]").unwrap_err()),
            "member data is not a JSON object"
        );
        assert_eq!(
            message(&parse_history("[").unwrap_err()),
            format!("history is not JSON: {}", not_json("["))
        );
        assert_eq!(
            message(&parse_history("{}").unwrap_err()),
            "history is not a JSON list"
        );
        assert_eq!(
            message(&parse_history("[1]").unwrap_err()),
            "history row is not a list"
        );
        assert_eq!(
            message(&parse_history("[[1,2]]").unwrap_err()),
            "history row has fewer than 3 items"
        );
        assert_eq!(
            message(&parse_history(r#"[[-1,2,""]]"#).unwrap_err()),
            "history timeline is not a non-negative integer"
        );
        assert_eq!(
            message(&parse_history(r#"[[1,"x",""]]"#).unwrap_err()),
            "history lsn is not an integer"
        );
        assert_eq!(
            message(&parse_history(r#"[[1,null,""]]"#).unwrap_err()),
            "history lsn is not an integer"
        );
        assert_eq!(
            message(&parse_history(r#"[[4294967296,2,""]]"#).unwrap_err()),
            "history timeline too large"
        );
        assert_eq!(
            message(&parse_failsafe("x").unwrap_err()),
            format!("failsafe is not JSON: {}", not_json("x"))
        );
        assert_eq!(
            message(&parse_failsafe("[]").unwrap_err()),
            "failsafe is not a JSON object"
        );
        assert_eq!(
            message(&parse_failsafe(r#"{"pg-1":1}"#).unwrap_err()),
            r#"failsafe entry "pg-1" is not a string"#
        );
        let bad_failover = r#"{"member":1}"#;
        assert_eq!(
            message(&Failover::parse(bad_failover).unwrap_err()),
            format!(
                "failover value: {}",
                serde_json::from_str::<Failover>(bad_failover).unwrap_err()
            )
        );
        assert_eq!(
            message(&SyncState::parse("x").unwrap_err()),
            format!("sync value is not JSON: {}", not_json("x"))
        );
        assert_eq!(
            message(&SyncState::parse("[]").unwrap_err()),
            "sync value is not a JSON object"
        );
        assert_eq!(
            message(&Status::parse("x").unwrap_err()),
            format!("status value is not JSON: {}", not_json("x"))
        );
        assert_eq!(
            message(&Status::parse("[]").unwrap_err()),
            "status value is not a JSON object"
        );
    }

    #[test]
    fn member_keeps_unknown_fields() {
        let raw = r#"{"role":"replica","state":"running","proxy_url":"x","xlog_location":"12"}"#;
        let d = MemberData::parse(raw).unwrap();
        assert_eq!(d.xlog_location, Some(12));
        assert_eq!(d.extra.get("proxy_url"), Some(&Value::from("x")));
    }

    #[test]
    fn legacy_member_value() {
        let d = MemberData::parse(
            "postgres://u:p@10.0.0.1:5433/postgres?application_name=http://10.0.0.1:8008/patroni",
        )
        .unwrap();
        assert_eq!(d.conn_host_port(), Some(("10.0.0.1".into(), 5433)));
        assert_eq!(d.api_url.as_deref(), Some("http://10.0.0.1:8008/patroni"));
    }

    #[test]
    fn tags_priority() {
        let t: Tags = serde_json::from_str(r#"{"nofailover":"true"}"#).unwrap();
        assert_eq!(t.failover_priority(), 0);
        let t: Tags = serde_json::from_str(r#"{"failover_priority":3}"#).unwrap();
        assert_eq!(t.failover_priority(), 3);
        assert_eq!(Tags::default().failover_priority(), 1);
    }

    #[test]
    fn history_round_trip() {
        let raw = r#"[[1,25623960,"no recovery target specified","2024-06-01T09:59:00+02:00","pg-1"],[2,3,"x"]]"#;
        let h = parse_history(raw).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].new_leader.as_deref(), Some("pg-1"));
        assert_eq!(parse_history(&history_to_json(&h)).unwrap(), h);
    }

    #[test]
    fn lsn_text() {
        assert_eq!(parse_lsn("0/4000060"), Some(67108960));
        assert_eq!(format_lsn(67108960), "0/4000060");
    }

    #[test]
    fn failover_legacy_and_json() {
        let f = Failover::parse("a:b").unwrap();
        assert_eq!(
            (f.leader.as_deref(), f.member.as_deref()),
            (Some("a"), Some("b"))
        );
        let f = Failover::parse(r#"{"member":"c"}"#).unwrap();
        assert_eq!(f.member.as_deref(), Some("c"));
    }

    #[test]
    fn url_host_port() {
        assert_eq!(
            parse_url_host_port("http://127.0.0.1:8008/patroni", 80),
            Some(("127.0.0.1".into(), 8008))
        );
        assert_eq!(
            parse_url_host_port("postgres://h/postgres", 5432),
            Some(("h".into(), 5432))
        );
        assert_eq!(
            parse_url_host_port("postgres://[::1]:5433/x", 5432),
            Some(("::1".into(), 5433))
        );
    }
}
