//! etcd v3 backend, speaking the gRPC-gateway JSON API over HTTP(S) with Patroni's key layout
//! (`<namespace>/<scope>/[<group>/]leader`, `members/<name>`, `config`, ...).
//!
//! One lease per process carries the member key and, while leader, the leader key. The lease is
//! kept alive by `touch_member` (at most once per `loop_wait`) and by every `update_leader`, which
//! sends the keepalive before checking that the leader key is still ours.

mod client;
mod parse;
mod tls;
mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub(crate) use self::client::error_chain;
use self::client::{b64, json_i64, CallError, Client};
use crate::model::{
    failsafe_to_json, history_to_json, Cluster, Failover, FailsafeTopology, HistoryEntry,
    MemberData, Status, SyncState,
};
use crate::{Dcs, DcsError, DcsResult, Timing};

/// Connection and identity settings of the etcd v3 backend.
#[derive(Clone, PartialEq)]
pub struct EtcdConfig {
    /// `host:port`, `http://host:port` or `https://host:port`.
    pub hosts: Vec<String>,
    /// Scheme of hosts given without one: `http` or `https`.
    pub protocol: String,
    /// PEM bundle of the CAs that sign the etcd server certificates; without it the system
    /// trust store is used.
    pub cacert: Option<PathBuf>,
    /// PEM client certificate (chain); holds the private key too when `key` is not set.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Key namespace, default `/service`.
    pub namespace: String,
    pub scope: String,
    /// This member's name.
    pub name: String,
    /// Citus group.
    pub group: Option<u32>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub timing: Timing,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("hosts", &self.hosts)
            .field("protocol", &self.protocol)
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("namespace", &self.namespace)
            .field("scope", &self.scope)
            .field("name", &self.name)
            .field("group", &self.group)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timing", &self.timing)
            .finish()
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            hosts: vec!["127.0.0.1:2379".into()],
            protocol: "http".into(),
            cacert: None,
            cert: None,
            key: None,
            namespace: "/service".into(),
            scope: String::new(),
            name: String::new(),
            group: None,
            username: None,
            password: None,
            timing: Timing::default(),
        }
    }
}

/// `<namespace>/<scope>/[<group>/]` with slashes normalised, e.g. `/service/demo/`.
pub fn cluster_prefix(namespace: &str, scope: &str, group: Option<u32>) -> String {
    let group = group.map(|g| format!("{g}/")).unwrap_or_default();
    let joined = format!("/{namespace}/{scope}/{group}");
    let mut out = String::with_capacity(joined.len());
    for c in joined.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// First key after every key starting with `prefix` (etcd `range_end` of a prefix read).
pub(crate) fn prefix_range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): read to the end of the keyspace.
    vec![0]
}

#[derive(Debug, Default)]
struct LeaseState {
    id: Option<i64>,
    /// When the last successful keepalive (or grant) was *sent*.
    last_refresh: Option<Instant>,
}

/// What we last wrote as member data, to skip identical writes.
#[derive(Debug, Clone, PartialEq)]
struct MemberCache {
    json: String,
    lease: i64,
    mod_revision: i64,
}

/// State shared with the background watch task.
pub(crate) struct Shared {
    client: Client,
    /// This member's group: `<namespace>/<scope>/[<group>/]`.
    prefix: String,
    /// `<namespace>/<scope>/`: every Citus group lives below it.
    scope_prefix: String,
    /// What `get_cluster` reads and the watch follows: the whole scope on the Citus coordinator
    /// (all groups in one range), else this member's group.
    read_prefix: String,
    name: String,
    notify: Notify,
    /// Revision of the last full read; the watch starts right after it.
    last_read_revision: AtomicI64,
    /// Set by the watch task when a stream is established.
    watch_healthy: AtomicBool,
    lease: tokio::sync::Mutex<LeaseState>,
    member_cache: Mutex<Option<MemberCache>>,
}

/// The etcd v3 DCS backend bound to one member of one cluster.
pub struct Etcd3 {
    shared: Arc<Shared>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

fn put_op(key: &str, value: &str, lease: Option<i64>) -> Value {
    let mut put = json!({"key": b64(key), "value": b64(value)});
    if let Some(l) = lease {
        put["lease"] = Value::String(l.to_string());
    }
    json!({ "request_put": put })
}

fn delete_op(key: &str) -> Value {
    json!({"request_delete_range": {"key": b64(key)}})
}

fn range_op(key: &str) -> Value {
    json!({"request_range": {"key": b64(key)}})
}

fn cmp_created(key: &str, revision: i64) -> Value {
    json!({"target": "CREATE", "result": "EQUAL", "key": b64(key), "create_revision": revision.to_string()})
}

fn cmp_modified(key: &str, revision: i64) -> Value {
    json!({"target": "MOD", "result": "EQUAL", "key": b64(key), "mod_revision": revision.to_string()})
}

fn cmp_value(key: &str, value: &str) -> Value {
    json!({"target": "VALUE", "result": "EQUAL", "key": b64(key), "value": b64(value)})
}

fn cmp_lease(key: &str, lease: i64) -> Value {
    json!({"target": "LEASE", "result": "EQUAL", "key": b64(key), "lease": lease.to_string()})
}

fn parse_version(version: &str) -> DcsResult<i64> {
    version
        .trim()
        .parse()
        .map_err(|_| DcsError::Protocol(format!("version '{version}' is not an etcd mod_revision")))
}

/// The first key-value of the first range response of a txn answer, as (value, lease).
fn txn_range_result(answer: &Value) -> Option<(String, i64)> {
    let kv = answer
        .get("responses")?
        .as_array()?
        .iter()
        .find_map(|r| r.get("response_range"))?
        .get("kvs")?
        .as_array()?
        .first()?;
    let value = kv.get("value").and_then(Value::as_str).unwrap_or_default();
    let value = String::from_utf8(client::unb64(value).ok()?).ok()?;
    Some((value, json_i64(kv.get("lease"))))
}

fn header_revision(answer: &Value) -> i64 {
    json_i64(answer.get("header").and_then(|h| h.get("revision")))
}

impl Etcd3 {
    /// Validate the settings and read the TLS files; no network IO happens until the first call.
    pub fn new(cfg: EtcdConfig) -> Result<Etcd3, DcsError> {
        if cfg.scope.trim().is_empty() {
            return Err(DcsError::Protocol("etcd: scope must not be empty".into()));
        }
        if cfg.name.trim().is_empty() || cfg.name.contains('/') {
            return Err(DcsError::Protocol(format!(
                "etcd: member name '{}' must be non-empty and contain no '/'",
                cfg.name
            )));
        }
        if cfg.hosts.is_empty() {
            return Err(DcsError::Protocol("etcd: no hosts configured".into()));
        }
        let protocol = match cfg.protocol.trim().to_ascii_lowercase().as_str() {
            "" | "http" => "http",
            "https" => "https",
            other => {
                return Err(DcsError::Protocol(format!(
                    "etcd3.protocol: invalid value '{other}', expected 'http' or 'https'"
                )))
            }
        };
        let hosts = cfg
            .hosts
            .iter()
            .map(|h| client::normalise_host(h, protocol))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DcsError::Protocol(format!("etcd hosts: {e}")))?;
        let credentials = match (cfg.username, cfg.password) {
            (Some(u), p) if !u.is_empty() => Some((u, p.unwrap_or_default())),
            _ => None,
        };
        let tls = tls::TlsMaterial::load(
            cfg.cacert.as_deref(),
            cfg.cert.as_deref(),
            cfg.key.as_deref(),
        )?;
        let namespace = if cfg.namespace.trim().is_empty() {
            "/service"
        } else {
            cfg.namespace.as_str()
        };
        let prefix = cluster_prefix(namespace, cfg.scope.trim(), cfg.group);
        let scope_prefix = cluster_prefix(namespace, cfg.scope.trim(), None);
        let read_prefix = if cfg.group == Some(0) {
            scope_prefix.clone()
        } else {
            prefix.clone()
        };
        let shared = Shared {
            client: Client::new(hosts, credentials, tls, cfg.timing)?,
            prefix,
            scope_prefix,
            read_prefix,
            name: cfg.name,
            notify: Notify::new(),
            last_read_revision: AtomicI64::new(0),
            watch_healthy: AtomicBool::new(false),
            lease: tokio::sync::Mutex::new(LeaseState::default()),
            member_cache: Mutex::new(None),
        };
        Ok(Etcd3 {
            shared: Arc::new(shared),
            watcher: Mutex::new(None),
        })
    }

    /// The key prefix of this cluster (and group), e.g. `/service/demo/`.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.shared.prefix)
    }

    fn member_key(&self) -> String {
        self.key(&format!("members/{}", self.shared.name))
    }

    async fn call(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        self.shared.client.call(path, body).await
    }

    async fn put(&self, key: &str, value: &str, lease: Option<i64>) -> Result<Value, CallError> {
        let mut body = json!({"key": b64(key), "value": b64(value)});
        if let Some(l) = lease {
            body["lease"] = Value::String(l.to_string());
        }
        self.call("/kv/put", &body).await
    }

    async fn delete(&self, key: &str) -> DcsResult<()> {
        self.call("/kv/deleterange", &json!({"key": b64(key)}))
            .await?;
        Ok(())
    }

    /// Run a transaction; returns whether the compares held and the whole answer.
    async fn txn(
        &self,
        compare: Vec<Value>,
        success: Vec<Value>,
        failure: Vec<Value>,
    ) -> Result<(bool, Value), CallError> {
        let body = json!({"compare": compare, "success": success, "failure": failure});
        let answer = self.call("/kv/txn", &body).await?;
        let ok = answer
            .get("succeeded")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok((ok, answer))
    }

    /// Put `value` at `rel`, compare-and-swap on `version` (mod_revision) when given.
    async fn cas_put(&self, rel: &str, value: &str, version: Option<&str>) -> DcsResult<bool> {
        let key = self.key(rel);
        match version {
            None => {
                self.put(&key, value, None).await?;
                Ok(true)
            }
            Some(v) => {
                let rev = parse_version(v)?;
                let (ok, _) = self
                    .txn(
                        vec![cmp_modified(&key, rev)],
                        vec![put_op(&key, value, None)],
                        vec![],
                    )
                    .await?;
                Ok(ok)
            }
        }
    }

    async fn cas_delete(&self, rel: &str, version: Option<&str>) -> DcsResult<bool> {
        let key = self.key(rel);
        match version {
            None => {
                self.delete(&key).await?;
                Ok(true)
            }
            Some(v) => {
                let rev = parse_version(v)?;
                let (ok, _) = self
                    .txn(vec![cmp_modified(&key, rev)], vec![delete_op(&key)], vec![])
                    .await?;
                Ok(ok)
            }
        }
    }

    async fn grant_lease(&self) -> DcsResult<i64> {
        let ttl = self.shared.client.timing().ttl.max(1);
        let answer = self
            .call("/lease/grant", &json!({"TTL": ttl.to_string()}))
            .await?;
        let id = json_i64(answer.get("ID"));
        if id == 0 {
            let why = answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no lease ID in the answer");
            return Err(DcsError::Protocol(format!(
                "etcd lease grant failed: {why}"
            )));
        }
        tracing::debug!(lease = id, ttl, "granted etcd lease");
        Ok(id)
    }

    /// Send one keepalive; `Ok(false)` when the lease has expired (TTL <= 0 or unknown).
    async fn keepalive(&self, id: i64) -> DcsResult<bool> {
        let answer = self
            .call("/lease/keepalive", &json!({"ID": id.to_string()}))
            .await?;
        if let Some(err) = answer.get("error") {
            return Err(DcsError::Protocol(format!(
                "etcd lease keepalive failed: {err}"
            )));
        }
        let result = answer.get("result").unwrap_or(&answer);
        Ok(json_i64(result.get("TTL")) > 0)
    }

    /// A live lease, granting one when there is none or it expired. Sends a keepalive when the
    /// last one is older than `refresh_after`.
    async fn live_lease(&self, state: &mut LeaseState, refresh_after: Duration) -> DcsResult<i64> {
        if let Some(id) = state.id {
            let fresh = state
                .last_refresh
                .is_some_and(|t| t.elapsed() < refresh_after);
            if fresh {
                return Ok(id);
            }
            let sent = Instant::now();
            if self.keepalive(id).await? {
                state.last_refresh = Some(sent);
                return Ok(id);
            }
            tracing::warn!(lease = id, "etcd lease expired, granting a new one");
            state.id = None;
        }
        let sent = Instant::now();
        let id = self.grant_lease().await?;
        state.id = Some(id);
        state.last_refresh = Some(sent);
        Ok(id)
    }

    /// Keepalive interval of the member lease: once per loop_wait, but never so rarely that the
    /// lease could expire between two cycles.
    fn refresh_interval(&self) -> Duration {
        let t = self.shared.client.timing();
        Duration::from_secs(u64::from(t.loop_wait)).min(Duration::from_secs(u64::from(t.ttl)) / 2)
    }

    fn set_member_cache(&self, value: Option<MemberCache>) {
        *self
            .shared
            .member_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = value;
    }

    fn member_cache(&self) -> Option<MemberCache> {
        self.shared
            .member_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One range over every key below `prefix`.
    async fn range_prefix(&self, prefix: &str) -> Result<Value, CallError> {
        let body = json!({"key": b64(prefix), "range_end": b64(prefix_range_end(prefix))});
        self.call("/kv/range", &body).await
    }

    async fn read_status(&self) -> DcsResult<Status> {
        let answer = self
            .call("/kv/range", &json!({"key": b64(self.key("status"))}))
            .await?;
        let raw = answer
            .get("kvs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|kv| kv.get("value"))
            .and_then(Value::as_str)
            .and_then(|v| client::unb64(v).ok())
            .and_then(|v| String::from_utf8(v).ok());
        Ok(raw.and_then(|r| Status::parse(&r).ok()).unwrap_or_default())
    }

    fn ensure_watcher(&self) {
        let mut guard = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        *guard = Some(tokio::spawn(watch::run(Arc::clone(&self.shared))));
    }

    fn stop_watcher(&self) {
        if let Some(h) = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
    }
}

impl Drop for Etcd3 {
    fn drop(&mut self) {
        self.stop_watcher();
    }
}

#[async_trait]
impl Dcs for Etcd3 {
    fn kind(&self) -> &'static str {
        "etcd3"
    }

    fn set_timing(&self, timing: Timing) {
        self.shared.client.set_timing(timing);
    }

    async fn get_cluster(&self) -> DcsResult<Cluster> {
        let read_prefix = &self.shared.read_prefix;
        let answer = self.range_prefix(read_prefix).await?;
        let revision = header_revision(&answer);
        if revision > 0 {
            self.shared
                .last_read_revision
                .store(revision, Ordering::Relaxed);
        }
        let mut warnings = Vec::new();
        let kvs = parse::decode_kvs(read_prefix, answer.get("kvs"), &mut warnings);
        let cluster = if *read_prefix == self.shared.prefix {
            parse::parse_cluster(&self.shared.prefix, &kvs, warnings)
        } else {
            parse::parse_coordinator(&self.shared.scope_prefix, kvs, warnings)
        };
        // Forget what we wrote if our member key vanished or was changed by someone else, so the
        // next touch_member writes it again.
        if let Some(cache) = self.member_cache() {
            let ours = cluster
                .member(&self.shared.name)
                .and_then(|m| m.version.clone());
            if ours != Some(cache.mod_revision.to_string()) {
                self.set_member_cache(None);
            }
        }
        for w in &cluster.warnings {
            tracing::debug!(warning = %w, "etcd cluster read");
        }
        Ok(cluster)
    }

    async fn get_group(&self, group: u32) -> DcsResult<Cluster> {
        let prefix = format!("{}{group}/", self.shared.scope_prefix);
        let answer = self.range_prefix(&prefix).await?;
        let mut warnings = Vec::new();
        let kvs = parse::decode_kvs(&prefix, answer.get("kvs"), &mut warnings);
        let cluster = parse::parse_cluster(&prefix, &kvs, warnings);
        for w in &cluster.warnings {
            tracing::debug!(warning = %w, group, "etcd group read");
        }
        Ok(cluster)
    }

    async fn touch_member(&self, data: &MemberData) -> DcsResult<()> {
        let json = serde_json::to_string(data)
            .map_err(|e| DcsError::Protocol(format!("cannot serialise member data: {e}")))?;
        let key = self.member_key();
        let mut lease_state = self.shared.lease.lock().await;
        let mut lease = self
            .live_lease(&mut lease_state, self.refresh_interval())
            .await?;
        if self
            .member_cache()
            .is_some_and(|c| c.json == json && c.lease == lease)
        {
            return Ok(());
        }
        let answer = match self.put(&key, &json, Some(lease)).await {
            Ok(a) => a,
            Err(e) if e.is_lease_not_found() => {
                lease_state.id = None;
                lease = self.live_lease(&mut lease_state, Duration::ZERO).await?;
                self.put(&key, &json, Some(lease)).await?
            }
            Err(e) => return Err(e.into()),
        };
        self.set_member_cache(Some(MemberCache {
            json,
            lease,
            mod_revision: header_revision(&answer),
        }));
        Ok(())
    }

    async fn delete_member(&self) -> DcsResult<()> {
        self.set_member_cache(None);
        self.delete(&self.member_key()).await
    }

    async fn attempt_to_acquire_leader(&self) -> DcsResult<bool> {
        let key = self.key("leader");
        let name = self.shared.name.clone();
        let mut lease_state = self.shared.lease.lock().await;
        // Refresh first so a won lock lives a full ttl from now.
        let mut lease = self.live_lease(&mut lease_state, Duration::ZERO).await?;
        let mut retried = false;
        loop {
            let result = self
                .txn(
                    vec![cmp_created(&key, 0)],
                    vec![put_op(&key, &name, Some(lease))],
                    vec![range_op(&key)],
                )
                .await;
            match result {
                Ok((true, _)) => {
                    tracing::info!(member = %name, "acquired the leader lock");
                    return Ok(true);
                }
                // A retried request may have been applied the first time: the key is then ours.
                Ok((false, answer)) => {
                    return Ok(
                        txn_range_result(&answer).is_some_and(|(v, l)| v == name && l == lease)
                    );
                }
                Err(e) if e.is_lease_not_found() && !retried => {
                    retried = true;
                    lease_state.id = None;
                    lease = self.live_lease(&mut lease_state, Duration::ZERO).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn update_leader(
        &self,
        cluster: &Cluster,
        optime: Option<u64>,
        failsafe: Option<&FailsafeTopology>,
    ) -> DcsResult<bool> {
        let key = self.key("leader");
        let mut lease_state = self.shared.lease.lock().await;
        let Some(lease) = lease_state.id else {
            return Ok(false);
        };
        // Keepalive before verifying: a successful renew then guarantees ttl from the call start.
        let sent = Instant::now();
        let alive = match self.keepalive(lease).await {
            Ok(alive) => alive,
            Err(DcsError::Protocol(msg)) if msg.contains("not found") => false,
            Err(e) => return Err(e),
        };
        // Status and failsafe go in the same transaction as the check that the lock is ours.
        let mut success = Vec::new();
        if optime.is_some() && optime != cluster.status.optime {
            let status = Status {
                optime,
                ..cluster.status.clone()
            };
            success.push(put_op(
                &self.key("status"),
                &status.to_json().to_string(),
                None,
            ));
        }
        if let Some(topology) = failsafe {
            let key = self.key("failsafe");
            success.push(if topology.is_empty() {
                delete_op(&key)
            } else {
                put_op(&key, &failsafe_to_json(topology), None)
            });
        }
        if !alive {
            // The lease ran out (the store was unreachable or stalled for longer than ttl): the
            // lock is ours again only if nobody else took it meanwhile.
            tracing::warn!(
                lease,
                "etcd lease expired: taking the leader lock again if it is free"
            );
            lease_state.id = None;
            let fresh = self.live_lease(&mut lease_state, Duration::ZERO).await?;
            drop(lease_state);
            let name = &self.shared.name;
            let mut reattach = success.clone();
            reattach.push(put_op(&key, name, Some(fresh)));
            let (ok, _) = self
                .txn(vec![cmp_value(&key, name)], reattach.clone(), vec![])
                .await?;
            if ok {
                return Ok(true);
            }
            let (ok, _) = self
                .txn(vec![cmp_created(&key, 0)], reattach, vec![])
                .await?;
            if !ok {
                tracing::warn!(member = %name, "leader lock is no longer ours");
            }
            return Ok(ok);
        }
        lease_state.last_refresh = Some(sent);
        drop(lease_state);
        let compare = vec![cmp_value(&key, &self.shared.name), cmp_lease(&key, lease)];
        let (ok, _) = self.txn(compare, success, vec![]).await?;
        if !ok {
            tracing::warn!(member = %self.shared.name, "leader lock is no longer ours");
        }
        Ok(ok)
    }

    async fn delete_leader(&self, optime: Option<u64>) -> DcsResult<bool> {
        let key = self.key("leader");
        let mut success = Vec::new();
        if let Some(o) = optime {
            let mut status = self.read_status().await?;
            status.optime = Some(o);
            success.push(put_op(
                &self.key("status"),
                &status.to_json().to_string(),
                None,
            ));
        }
        success.push(delete_op(&key));
        let (ok, _) = self
            .txn(vec![cmp_value(&key, &self.shared.name)], success, vec![])
            .await?;
        Ok(ok)
    }

    async fn initialize(&self, create_new: bool, sysid: &str) -> DcsResult<bool> {
        let key = self.key("initialize");
        if !create_new {
            self.put(&key, sysid, None).await?;
            return Ok(true);
        }
        let (ok, _) = self
            .txn(
                vec![cmp_created(&key, 0)],
                vec![put_op(&key, sysid, None)],
                vec![],
            )
            .await?;
        Ok(ok)
    }

    async fn cancel_initialization(&self) -> DcsResult<()> {
        self.delete(&self.key("initialize")).await
    }

    async fn set_config_value(&self, value: &Value, version: Option<&str>) -> DcsResult<bool> {
        self.cas_put("config", &value.to_string(), version).await
    }

    async fn set_history_value(&self, history: &[HistoryEntry]) -> DcsResult<()> {
        self.put(&self.key("history"), &history_to_json(history), None)
            .await?;
        Ok(())
    }

    async fn set_failover_value(
        &self,
        failover: &Failover,
        version: Option<&str>,
    ) -> DcsResult<bool> {
        let value = serde_json::to_string(failover)
            .map_err(|e| DcsError::Protocol(format!("cannot serialise failover: {e}")))?;
        self.cas_put("failover", &value, version).await
    }

    async fn delete_failover(&self, version: Option<&str>) -> DcsResult<bool> {
        self.cas_delete("failover", version).await
    }

    async fn set_sync_state(&self, sync: &SyncState, version: Option<&str>) -> DcsResult<bool> {
        self.cas_put("sync", &sync.to_json().to_string(), version)
            .await
    }

    async fn delete_sync_state(&self, version: Option<&str>) -> DcsResult<bool> {
        self.cas_delete("sync", version).await
    }

    async fn write_status(&self, status: &Status) -> DcsResult<()> {
        self.put(&self.key("status"), &status.to_json().to_string(), None)
            .await?;
        Ok(())
    }

    async fn watch(&self, timeout: Duration) -> bool {
        self.ensure_watcher();
        tokio::time::timeout(timeout, self.shared.notify.notified())
            .await
            .is_ok()
    }

    async fn close(&self) -> DcsResult<()> {
        self.stop_watcher();
        self.set_member_cache(None);
        let mut lease_state = self.shared.lease.lock().await;
        let Some(id) = lease_state.id.take() else {
            return Ok(());
        };
        lease_state.last_refresh = None;
        match self
            .call("/lease/revoke", &json!({"ID": id.to_string()}))
            .await
        {
            Ok(_) => Ok(()),
            // Already expired: nothing left to release.
            Err(e) if e.is_lease_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(cluster_prefix("/service", "demo", None), "/service/demo/");
        assert_eq!(
            cluster_prefix("/service/", "demo", Some(1)),
            "/service/demo/1/"
        );
        assert_eq!(cluster_prefix("service", "demo", None), "/service/demo/");
        assert_eq!(cluster_prefix("//a//b/", "demo", Some(0)), "/a/b/demo/0/");
    }

    #[test]
    fn range_end() {
        assert_eq!(
            prefix_range_end("/service/demo/"),
            b"/service/demo0".to_vec()
        );
        assert_eq!(prefix_range_end("a"), b"b".to_vec());
    }

    #[test]
    fn new_validates_without_io() {
        let cfg = EtcdConfig {
            scope: "demo".into(),
            name: "pg-1".into(),
            ..Default::default()
        };
        let e = Etcd3::new(cfg.clone()).unwrap();
        assert_eq!(e.prefix(), "/service/demo/");
        assert!(Etcd3::new(EtcdConfig {
            name: String::new(),
            ..cfg.clone()
        })
        .is_err());
        assert!(Etcd3::new(EtcdConfig {
            scope: " ".into(),
            ..cfg.clone()
        })
        .is_err());
        assert!(Etcd3::new(EtcdConfig {
            hosts: vec![],
            ..cfg.clone()
        })
        .is_err());
        assert!(Etcd3::new(EtcdConfig {
            hosts: vec!["https://x:1".into()],
            ..cfg.clone()
        })
        .is_ok());
        assert!(Etcd3::new(EtcdConfig {
            protocol: "https".into(),
            ..cfg.clone()
        })
        .is_ok());
        assert!(Etcd3::new(EtcdConfig {
            hosts: vec!["ftp://x:1".into()],
            ..cfg.clone()
        })
        .is_err());
        let err = Etcd3::new(EtcdConfig {
            protocol: "spdy".into(),
            ..cfg.clone()
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("etcd3.protocol"), "{err}");
        let err = Etcd3::new(EtcdConfig {
            protocol: "https".into(),
            cacert: Some("/nonexistent/ca.pem".into()),
            ..cfg
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("etcd3.cacert: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
    }
}
