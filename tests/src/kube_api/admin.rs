//! Test controls that are not part of the Kubernetes API: request counts per client, injected
//! faults (stalls, error answers, dropped watches), event-window compaction and the log of
//! requests the authorization rules refused.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

/// `{"status": 500, "retry_after": 2, "count": 3, "verb": "patch", "resource": "configmaps",
/// "client": "member-0", "name": "x"}`: answer matching API requests with `status`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailRule {
    pub status: u16,
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// How many requests fail; absent: until the faults are cleared.
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub verb: Option<String>,
    /// Resource as counted, e.g. `configmaps` or `pods/status`.
    #[serde(default)]
    pub resource: Option<String>,
    /// Bearer token of the client.
    #[serde(default)]
    pub client: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// Body of `POST /_test/faults`; every present field is applied, the rest stays.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    #[serde(default)]
    pub stall_ms: Option<u64>,
    #[serde(default)]
    pub fail: Option<FailRule>,
    #[serde(default)]
    pub drop_watches: Option<bool>,
}

#[derive(Debug, Default)]
struct Faults {
    stall: Duration,
    rules: Vec<FailRule>,
}

/// What the request path tells the admin layer about an API request.
pub struct RequestInfo<'a> {
    pub client: &'a str,
    pub verb: &'a str,
    /// As counted: `configmaps`, `pods/status`.
    pub resource: &'a str,
    pub name: &'a str,
}

pub struct Admin {
    counts: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    /// Requests refused by the RBAC rules, oldest first.
    denied: Mutex<Vec<Value>>,
    faults: Mutex<Faults>,
    /// Bumped when faults are cleared: stalled requests stop waiting.
    faults_epoch: watch::Sender<u64>,
    /// Bumped by `drop_watches`: open watch streams end.
    watch_epoch: watch::Sender<u64>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            counts: Mutex::default(),
            denied: Mutex::default(),
            faults: Mutex::default(),
            faults_epoch: watch::channel(0).0,
            watch_epoch: watch::channel(0).0,
        }
    }
}

impl Admin {
    pub fn count(&self, info: &RequestInfo<'_>) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts
            .entry(info.client.to_string())
            .or_default()
            .entry(format!("{} {}", info.verb, info.resource))
            .or_default() += 1;
    }

    pub fn counts(&self) -> Value {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        json!(*counts)
    }

    pub fn reset_counts(&self) {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Remember a refused request (`{client, verb, resource, namespace, name, message}`).
    pub fn record_denied(&self, entry: Value) {
        self.denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
    }

    pub fn denied(&self) -> Value {
        Value::Array(
            self.denied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    pub fn reset_denied(&self) {
        self.denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn apply(&self, request: FaultRequest) {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ms) = request.stall_ms {
            faults.stall = Duration::from_millis(ms);
        }
        if let Some(rule) = request.fail {
            faults.rules.push(rule);
        }
        if request.drop_watches == Some(true) {
            self.watch_epoch.send_modify(|e| *e += 1);
        }
    }

    pub fn clear(&self) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = Faults::default();
        self.faults_epoch.send_modify(|e| *e += 1);
    }

    pub fn describe(&self) -> Value {
        let faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "stall_ms": faults.stall.as_millis() as u64,
            "fail": faults.rules.iter().map(|r| json!({
                "status": r.status, "retry_after": r.retry_after, "count": r.count,
                "verb": r.verb, "resource": r.resource, "client": r.client, "name": r.name,
            })).collect::<Vec<_>>(),
        })
    }

    /// Wait out an injected stall (cut short when the faults are cleared).
    pub async fn stall(&self) {
        let stall = self.faults.lock().unwrap_or_else(|p| p.into_inner()).stall;
        if stall.is_zero() {
            return;
        }
        let mut epoch = self.faults_epoch.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(stall) => {}
            _ = epoch.changed() => {}
        }
    }

    /// The injected failure (status, Retry-After) this request gets, if any.
    pub fn failure_for(&self, info: &RequestInfo<'_>) -> Option<(u16, Option<u64>)> {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let matches = |r: &FailRule| {
            r.verb.as_deref().is_none_or(|v| v == info.verb)
                && r.resource.as_deref().is_none_or(|v| v == info.resource)
                && r.client.as_deref().is_none_or(|v| v == info.client)
                && r.name.as_deref().is_none_or(|v| v == info.name)
        };
        let index = faults.rules.iter().position(matches)?;
        let rule = faults.rules[index].clone();
        if let Some(n) = rule.count {
            if n <= 1 {
                faults.rules.remove(index);
            } else {
                faults.rules[index].count = Some(n - 1);
            }
        }
        Some((rule.status, rule.retry_after))
    }

    pub fn watch_epoch(&self) -> watch::Receiver<u64> {
        self.watch_epoch.subscribe()
    }
}
