//! HTTP client for etcd's gRPC-gateway JSON API: host failover, retry budget, authentication and
//! the `/v3` → `/v3beta` fallback of older servers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::tls::TlsMaterial;
use crate::{DcsError, Timing};

/// gRPC status code etcd uses for "requested lease not found".
pub(crate) const GRPC_NOT_FOUND: i64 = 5;

/// Outcome of a call that did not produce a usable answer.
#[derive(Debug)]
pub(crate) enum CallError {
    /// No usable answer within the budget, access denied, or an unusable answer.
    Dcs(DcsError),
    /// etcd answered definitively with a gRPC error (the request was not applied).
    Grpc { code: i64, message: String },
}

impl CallError {
    pub(crate) fn is_lease_not_found(&self) -> bool {
        matches!(self, CallError::Grpc { code, message } if *code == GRPC_NOT_FOUND && message.contains("lease"))
    }
}

impl From<CallError> for DcsError {
    fn from(e: CallError) -> DcsError {
        match e {
            CallError::Dcs(d) => d,
            CallError::Grpc { code, message } => DcsError::Protocol(format!(
                "etcd refused the request (gRPC code {code}): {message}"
            )),
        }
    }
}

/// Result of one attempt against one host.
enum Attempt {
    /// Connection problem, timeout or 5xx: worth trying again (maybe on another host).
    Transient(String),
    /// The API path does not exist on this server (older etcd: try `/v3beta`).
    NoSuchEndpoint,
    /// Missing or expired auth token.
    Unauthenticated(String),
    Grpc {
        code: i64,
        message: String,
    },
    Fatal(DcsError),
}

pub(crate) fn b64(s: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub(crate) fn unb64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("invalid base64: {e}"))
}

/// etcd's int64 fields arrive as JSON strings; absent means 0.
pub(crate) fn json_i64(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// Normalise `host:port` / `http(s)://host:port/` into a base URL without trailing slash; hosts
/// without a scheme get `default_scheme`.
pub(crate) fn normalise_host(raw: &str, default_scheme: &str) -> Result<String, String> {
    let h = raw.trim();
    if h.trim_end_matches('/').is_empty() {
        return Err("empty etcd host".into());
    }
    match h.split_once("://") {
        Some((scheme, rest)) => {
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                return Err(format!(
                    "etcd host '{raw}': unsupported scheme '{scheme}', expected http or https"
                ));
            }
            let rest = rest.trim_end_matches('/');
            if rest.is_empty() {
                return Err(format!("etcd host '{raw}' has no address"));
            }
            Ok(format!("{}://{rest}", scheme.to_ascii_lowercase()))
        }
        None => Ok(format!("{default_scheme}://{}", h.trim_end_matches('/'))),
    }
}

/// An error with its sources: the top-level message of reqwest's and kube's errors hides the
/// cause (refused connection, certificate rejected, ...). The Kubernetes backend uses it too.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let msg = cause.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = cause.source();
    }
    out
}

pub(crate) struct Client {
    http: reqwest::Client,
    hosts: Vec<String>,
    current: AtomicUsize,
    /// Old servers only serve `/v3beta`; switched once on a plain 404.
    use_beta: AtomicBool,
    credentials: Option<(String, String)>,
    /// Whether a client certificate is configured (for hints on TLS failures).
    has_identity: bool,
    token: Mutex<Option<String>>,
    timing: Mutex<Timing>,
}

impl Client {
    pub(crate) fn new(
        hosts: Vec<String>,
        credentials: Option<(String, String)>,
        tls: TlsMaterial,
        timing: Timing,
    ) -> Result<Client, DcsError> {
        let https = hosts.iter().any(|h| h.starts_with("https://"));
        let has_identity = tls.identity.is_some();
        let builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .tcp_keepalive(Duration::from_secs(10))
            .tcp_keepalive_interval(Duration::from_secs(5))
            .tcp_keepalive_retries(3);
        let http = tls.apply(builder, https).build().map_err(|e| {
            DcsError::Protocol(format!(
                "cannot build the etcd HTTP client: {}",
                error_chain(&e)
            ))
        })?;
        Ok(Client {
            http,
            hosts,
            current: AtomicUsize::new(0),
            use_beta: AtomicBool::new(false),
            credentials,
            has_identity,
            token: Mutex::new(None),
            timing: Mutex::new(timing),
        })
    }

    pub(crate) fn timing(&self) -> Timing {
        *self.timing.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_timing(&self, t: Timing) {
        *self.timing.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    fn retry_budget(&self) -> Duration {
        Duration::from_secs(u64::from(self.timing().retry_timeout.max(1)))
    }

    /// Time limit of one request: a slice of the budget so one dead host cannot eat all of it.
    fn attempt_timeout(&self) -> Duration {
        (self.retry_budget() / 2).clamp(Duration::from_millis(500), Duration::from_secs(5))
    }

    fn token(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn forget_token(&self) {
        self.set_token(None);
    }

    fn set_token(&self, t: Option<String>) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    fn host(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.hosts.len();
        &self.hosts[i]
    }

    fn rotate_host(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn url(&self, path: &str) -> String {
        let api = if self.use_beta.load(Ordering::Relaxed) {
            "/v3beta"
        } else {
            "/v3"
        };
        format!("{}{api}{path}", self.host())
    }

    /// POST `body` to `path` (e.g. `/kv/range`), retrying transient failures across hosts until
    /// `retry_timeout` is spent.
    pub(crate) async fn call(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        let budget = self.retry_budget();
        let started = Instant::now();
        let deadline = started + budget;
        let per_attempt = self.attempt_timeout();
        let mut backoff = Duration::from_millis(50);
        let mut reauthenticated = false;
        let mut last_error = String::from("no attempt made");
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let timeout = per_attempt.min(deadline - now);
            if self.credentials.is_some() && self.token().is_none() {
                match self.authenticate(timeout).await {
                    Ok(()) => {}
                    Err(Attempt::Transient(msg)) => {
                        last_error = msg;
                        self.after_transient(path, &last_error, deadline, &mut backoff)
                            .await;
                        continue;
                    }
                    Err(Attempt::Grpc { message, .. } | Attempt::Unauthenticated(message)) => {
                        return Err(CallError::Dcs(DcsError::Forbidden(format!(
                            "etcd authentication: {message}"
                        ))))
                    }
                    Err(other) => return Err(self.definite(other, "authenticate")),
                }
            }
            tracing::debug!(path, host = self.host(), "etcd request");
            match self.attempt(path, body, timeout).await {
                Ok(v) => return Ok(v),
                Err(Attempt::NoSuchEndpoint) if !self.use_beta.load(Ordering::Relaxed) => {
                    tracing::info!("etcd does not serve /v3, falling back to /v3beta");
                    self.use_beta.store(true, Ordering::Relaxed);
                }
                Err(Attempt::Unauthenticated(msg))
                    if self.credentials.is_some() && !reauthenticated =>
                {
                    tracing::debug!(%msg, "etcd auth token rejected, authenticating again");
                    reauthenticated = true;
                    self.set_token(None);
                }
                Err(Attempt::Transient(msg)) => {
                    last_error = msg;
                    self.after_transient(path, &last_error, deadline, &mut backoff)
                        .await;
                }
                Err(other) => return Err(self.definite(other, path)),
            }
        }
        tracing::warn!(path, error = %last_error, "etcd unreachable");
        Err(CallError::Dcs(DcsError::Unreachable(format!(
            "etcd {path}: {last_error} (gave up after {:.1}s, hosts {})",
            started.elapsed().as_secs_f64(),
            self.hosts.join(",")
        ))))
    }

    fn definite(&self, a: Attempt, what: &str) -> CallError {
        match a {
            Attempt::Grpc { code, message } => CallError::Grpc { code, message },
            Attempt::Unauthenticated(m) => {
                CallError::Dcs(DcsError::Forbidden(format!("etcd {what}: {m}")))
            }
            Attempt::NoSuchEndpoint => CallError::Dcs(DcsError::Protocol(format!(
                "etcd does not serve {what} (HTTP 404)"
            ))),
            Attempt::Fatal(e) => CallError::Dcs(e),
            Attempt::Transient(m) => CallError::Dcs(DcsError::Unreachable(m)),
        }
    }

    async fn after_transient(
        &self,
        path: &str,
        error: &str,
        deadline: Instant,
        backoff: &mut Duration,
    ) {
        tracing::warn!(path, host = self.host(), %error, "etcd request failed, retrying");
        self.rotate_host();
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep((*backoff).min(remaining)).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(1));
    }

    async fn authenticate(&self, timeout: Duration) -> Result<(), Attempt> {
        let Some((user, password)) = &self.credentials else {
            return Ok(());
        };
        let body = json!({"name": user, "password": password});
        let v = self
            .send(&self.url("/auth/authenticate"), &body, timeout, None)
            .await?;
        match v.get("token").and_then(Value::as_str) {
            Some(t) => {
                self.set_token(Some(t.to_string()));
                Ok(())
            }
            None => Err(Attempt::Fatal(DcsError::Protocol(
                "etcd authenticate answer has no token".into(),
            ))),
        }
    }

    async fn attempt(&self, path: &str, body: &Value, timeout: Duration) -> Result<Value, Attempt> {
        let token = self.token();
        self.send(&self.url(path), body, timeout, token.as_deref())
            .await
    }

    async fn send(
        &self,
        url: &str,
        body: &Value,
        timeout: Duration,
        token: Option<&str>,
    ) -> Result<Value, Attempt> {
        let mut req = self.http.post(url).json(body).timeout(timeout);
        if let Some(t) = token {
            req = req.header("Authorization", t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Attempt::Transient(self.describe_send_error(url, e)))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            Attempt::Transient(format!(
                "{url}: reading answer: {}",
                error_chain(&e.without_url())
            ))
        })?;
        classify(url, status.as_u16(), &bytes)
    }

    /// Open a streaming request (watch) against the current host: one attempt, no total timeout.
    pub(crate) async fn open_stream(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, String> {
        let timeout = self.attempt_timeout();
        if self.credentials.is_some() && self.token().is_none() {
            if let Err(a) = self.authenticate(timeout).await {
                self.rotate_host();
                return Err(format!("authenticate: {}", describe(&a)));
            }
        }
        let url = self.url(path);
        let mut req = self.http.post(&url).json(body);
        if let Some(t) = self.token() {
            req = req.header("Authorization", t);
        }
        // Only the answer's head is time-limited: the body is a stream without end.
        let resp = match tokio::time::timeout(timeout, req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.rotate_host();
                return Err(self.describe_send_error(&url, e));
            }
            Err(_) => {
                self.rotate_host();
                return Err(format!("{url}: no answer within {timeout:?}"));
            }
        };
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(resp);
        }
        let bytes = tokio::time::timeout(timeout, resp.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        match classify(&url, status, &bytes) {
            Err(Attempt::NoSuchEndpoint) => self.use_beta.store(true, Ordering::Relaxed),
            Err(Attempt::Unauthenticated(_)) => self.set_token(None),
            _ => self.rotate_host(),
        }
        Err(format!(
            "{url}: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        ))
    }
}

impl Client {
    /// The error with its causes, plus what to configure when the TLS handshake failed.
    fn describe_send_error(&self, url: &str, e: reqwest::Error) -> String {
        // The URL leads the message already.
        let chain = error_chain(&e.without_url());
        let hint = if chain.contains("invalid peer certificate") {
            Some("check etcd3.cacert: it must hold the CA that signed the etcd server certificate")
        } else if !self.has_identity
            && (chain.contains("alert: BadCertificate")
                || chain.contains("alert: CertificateRequired"))
        {
            Some("etcd wants a client certificate: set etcd3.cert and etcd3.key")
        } else {
            None
        };
        match hint {
            Some(h) => format!("{url}: {chain} ({h})"),
            None => format!("{url}: {chain}"),
        }
    }
}

fn describe(a: &Attempt) -> String {
    match a {
        Attempt::Transient(m) | Attempt::Unauthenticated(m) => m.clone(),
        Attempt::NoSuchEndpoint => "endpoint not found".into(),
        Attempt::Grpc { code, message } => format!("gRPC code {code}: {message}"),
        Attempt::Fatal(e) => e.to_string(),
    }
}

/// Map an HTTP answer of the gateway to a value or an [`Attempt`] error.
fn classify(url: &str, status: u16, body: &[u8]) -> Result<Value, Attempt> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if status == 200 {
        return parsed.ok_or_else(|| {
            Attempt::Fatal(DcsError::Protocol(format!(
                "{url}: answer is not JSON: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )))
        });
    }
    // Gateway errors look like {"error": "...", "message": "...", "code": N}.
    let grpc = parsed.as_ref().and_then(|v| {
        let code = v.get("code")?.as_i64()?;
        let message = v
            .get("message")
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Some((code, message))
    });
    let text = || {
        String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string()
    };
    match (status, grpc) {
        (500..=599, g) => Err(Attempt::Transient(format!(
            "{url}: HTTP {status}: {}",
            g.map(|(_, m)| m).unwrap_or_else(text)
        ))),
        (401, g) => Err(Attempt::Unauthenticated(
            g.map(|(_, m)| m).unwrap_or_else(text),
        )),
        (403, g) => Err(Attempt::Fatal(DcsError::Forbidden(format!(
            "{url}: {}",
            g.map(|(_, m)| m).unwrap_or_else(text)
        )))),
        // Auth enabled on the server but no token sent.
        (_, Some((_, message))) if message.contains("user name is empty") => {
            Err(Attempt::Unauthenticated(message))
        }
        (_, Some((code, message))) => Err(Attempt::Grpc { code, message }),
        (404, None) => Err(Attempt::NoSuchEndpoint),
        (_, None) => Err(Attempt::Fatal(DcsError::Protocol(format!(
            "{url}: HTTP {status}: {}",
            text()
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            normalise_host("127.0.0.1:2379", "http").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalise_host("127.0.0.1:2379", "https").unwrap(),
            "https://127.0.0.1:2379"
        );
        assert_eq!(
            normalise_host("http://h:2379/", "https").unwrap(),
            "http://h:2379"
        );
        assert_eq!(
            normalise_host("HTTPS://h:2379", "http").unwrap(),
            "https://h:2379"
        );
        assert!(normalise_host("ftp://h:2379", "http").is_err());
        assert!(normalise_host("https://", "http").is_err());
        assert!(normalise_host(" ", "http").is_err());
    }

    #[test]
    fn gateway_errors_are_classified() {
        let lease = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
        assert!(matches!(
            classify("u", 404, lease),
            Err(Attempt::Grpc { code: 5, .. })
        ));
        assert!(matches!(
            classify("u", 404, b"Not Found\n"),
            Err(Attempt::NoSuchEndpoint)
        ));
        assert!(matches!(
            classify("u", 503, b"{}"),
            Err(Attempt::Transient(_))
        ));
        assert!(matches!(
            classify("u", 401, b"{}"),
            Err(Attempt::Unauthenticated(_))
        ));
        assert!(classify("u", 200, b"{\"a\":1}").is_ok());
        assert!(matches!(
            classify("u", 200, b"{\"a\""),
            Err(Attempt::Fatal(_))
        ));
    }

    #[test]
    fn int64_strings() {
        assert_eq!(json_i64(Some(&json!("42"))), 42);
        assert_eq!(json_i64(Some(&json!(7))), 7);
        assert_eq!(json_i64(None), 0);
    }
}
