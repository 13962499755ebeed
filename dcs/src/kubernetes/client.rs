//! Requests to the Kubernetes API through kube's client, with Patroni's retry rules: every
//! request lives within a `retry_timeout` budget, each attempt gets a slice of it, backoff is at
//! most 1 s; timeouts, connection errors, 500/503/504, `retriable_http_codes` and 429 (honouring
//! `Retry-After`) are retried; 401/403 become [`DcsError::Forbidden`] naming verb and resource.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, ACCEPT, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderValue, Method};
use k8s_openapi::api::core::v1::Endpoints;
use kube::client::Body;
use serde_json::Value;

use super::objects;
use crate::{DcsError, Timing};

pub(crate) const MERGE_PATCH: &str = "application/strategic-merge-patch+json";
pub(crate) const JSON: &str = "application/json";

/// TLS server name of the API server certificate when talking to its IPs directly.
const API_SERVICE_NAME: &str = "kubernetes.default.svc";

/// Backoff bounds between attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One API request, described well enough to name it in errors.
///
/// Requests are built by hand and sent with `kube::Client::send` rather than through
/// `kube::Api`: `Api` turns every answer that is not a success into an error that keeps the code
/// but drops the headers, while the retry loop acts on the status code (409: a compare-and-swap
/// lost, 404: the object is gone, 410: a watch's version expired, 429 and the retriable codes)
/// together with `Retry-After`, and logs `Warning` headers.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub method: Method,
    /// RBAC verb: get, list, watch, create, patch, update, delete.
    pub verb: &'static str,
    /// Resource (plural): configmaps, endpoints, pods, services.
    pub resource: &'static str,
    pub name: Option<String>,
    pub namespace: String,
    /// Path and query, e.g. `/api/v1/namespaces/default/configmaps?labelSelector=...`.
    pub path: String,
    pub body: Option<Bytes>,
    pub content_type: Option<&'static str>,
}

impl Req {
    fn new(method: Method, verb: &'static str, resource: &'static str, ns: &str) -> Req {
        Req {
            method,
            verb,
            resource,
            name: None,
            namespace: ns.to_string(),
            path: format!("/api/v1/namespaces/{}/{resource}", encode(ns)),
            body: None,
            content_type: None,
        }
    }

    fn named(mut self, name: &str) -> Req {
        self.path = format!("{}/{}", self.path, encode(name));
        self.name = Some(name.to_string());
        self
    }

    fn json_body(mut self, body: &Value, content_type: &'static str) -> Req {
        self.body = Some(Bytes::from(body.to_string()));
        self.content_type = Some(content_type);
        self
    }

    pub(crate) fn get(resource: &'static str, ns: &str, name: &str) -> Req {
        Req::new(Method::GET, "get", resource, ns).named(name)
    }

    pub(crate) fn list(resource: &'static str, ns: &str, selector: &str) -> Req {
        let mut r = Req::new(Method::GET, "list", resource, ns);
        r.path = format!("{}?labelSelector={}", r.path, encode(selector));
        r
    }

    pub(crate) fn watch(
        resource: &'static str,
        ns: &str,
        selector: &str,
        resource_version: &str,
        timeout_seconds: u64,
    ) -> Req {
        let mut r = Req::new(Method::GET, "watch", resource, ns);
        r.path = format!(
            "{}?labelSelector={}&watch=true&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds={timeout_seconds}",
            r.path,
            encode(selector),
            encode(resource_version)
        );
        r
    }

    pub(crate) fn create(resource: &'static str, ns: &str, body: &Value) -> Req {
        let name = body
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut r = Req::new(Method::POST, "create", resource, ns).json_body(body, JSON);
        r.name = name;
        r
    }

    pub(crate) fn patch(resource: &'static str, ns: &str, name: &str, body: &Value) -> Req {
        Req::new(Method::PATCH, "patch", resource, ns)
            .named(name)
            .json_body(body, MERGE_PATCH)
    }

    /// `patch configmaps "demo-leader" in namespace "default"`.
    pub(crate) fn describe(&self) -> String {
        match &self.name {
            Some(n) => format!(
                "{} {} \"{n}\" in namespace \"{}\"",
                self.verb, self.resource, self.namespace
            ),
            None => format!(
                "{} {} in namespace \"{}\"",
                self.verb, self.resource, self.namespace
            ),
        }
    }
}

/// Percent-encode everything but unreserved characters (label selectors, names).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A successful answer.
#[derive(Debug)]
pub(crate) struct Resp {
    pub body: Bytes,
}

impl Resp {
    pub(crate) fn json(&self, req: &Req) -> Result<Value, DcsError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            DcsError::Protocol(format!("{}: the answer is not JSON ({e})", req.describe()))
        })
    }
}

/// A request that did not succeed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// A definitive answer the caller may want to handle (404, 409, 422, ...).
    Status {
        code: u16,
        message: String,
        /// The request was sent more than once (an earlier attempt may have been applied).
        retried: bool,
        what: String,
    },
    Dcs(DcsError),
}

impl From<CallError> for DcsError {
    fn from(e: CallError) -> DcsError {
        match e {
            CallError::Dcs(d) => d,
            CallError::Status {
                code,
                message,
                what,
                ..
            } => DcsError::Protocol(format!("cannot {what}: HTTP {code}: {message}")),
        }
    }
}

impl From<DcsError> for CallError {
    fn from(e: DcsError) -> CallError {
        CallError::Dcs(e)
    }
}

/// What to do with an HTTP status.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Retry,
    Forbidden,
    Fail,
}

/// Patroni's rules: retriable codes (500, 503, 504, configured ones), 429 and any answer with a
/// `Retry-After` are retried; 401/403 are access problems; everything else is final.
pub(crate) fn classify(status: u16, has_retry_after: bool, retriable: &[u16]) -> Verdict {
    if (200..300).contains(&status) {
        Verdict::Success
    } else if matches!(status, 429 | 500 | 503 | 504)
        || retriable.contains(&status)
        || has_retry_after
    {
        Verdict::Retry
    } else if matches!(status, 401 | 403) {
        Verdict::Forbidden
    } else {
        Verdict::Fail
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the API server).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

/// The `message` of a `kind: Status` body, else the body text (shortened).
pub(crate) fn status_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return m.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "no message".into();
    }
    text.chars().take(300).collect()
}

fn forbidden(req: &Req, code: u16, message: &str) -> DcsError {
    let what = req.describe();
    let what = what.split_once(' ').map(|(_, rest)| rest).unwrap_or(&what);
    if code == 401 {
        DcsError::Forbidden(format!(
            "unauthorized: cannot {} {what}: {message} (check the credentials: the kubeconfig user or the service account token)",
            req.verb
        ))
    } else {
        DcsError::Forbidden(format!(
            "forbidden: cannot {} {what}: {message} (check the Role bound to this member's service account: it must allow '{}' on '{}')",
            req.verb, req.verb, req.resource
        ))
    }
}

/// An error with its sources, formatted as the etcd backend does.
pub(crate) use crate::etcd::error_chain;

/// A random number without a dependency, for shuffling API server addresses.
pub(crate) fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// The `https` addresses of the `default/kubernetes` Endpoints, shuffled.
pub(crate) fn api_server_urls(endpoints: &Endpoints) -> Vec<String> {
    let mut urls = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let port = subset.ports.iter().flatten().find(|p| {
            p.name.as_deref() == Some("https") && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
        });
        let Some(port) = port.map(|p| p.port) else {
            continue;
        };
        for address in subset.addresses.iter().flatten() {
            let ip = &address.ip;
            if ip.is_empty() {
                continue;
            }
            if ip.contains(':') {
                urls.push(format!("https://[{ip}]:{port}"));
            } else {
                urls.push(format!("https://{ip}:{port}"));
            }
        }
    }
    // Fisher-Yates.
    for i in (1..urls.len()).rev() {
        let j = (random_u64() % (i as u64 + 1)) as usize;
        urls.swap(i, j);
    }
    urls
}

#[derive(Clone)]
pub(crate) struct Server {
    pub url: String,
    pub client: kube::Client,
}

struct Bypass {
    enabled: bool,
    servers: Vec<Server>,
    refreshed: Option<Instant>,
}

/// The API client of one member.
pub(crate) struct ApiClient {
    base: kube::Config,
    configured: Server,
    bypass: Mutex<Bypass>,
    current: AtomicUsize,
    timing: Mutex<Timing>,
    retriable: Vec<u16>,
    warnings_seen: Mutex<HashSet<String>>,
}

fn build_client(config: kube::Config) -> Result<kube::Client, DcsError> {
    kube::Client::try_from(config).map_err(|e| {
        DcsError::Protocol(format!(
            "kubernetes: cannot build the API client: {}",
            error_chain(&e)
        ))
    })
}

impl ApiClient {
    pub(crate) fn new(
        mut config: kube::Config,
        timing: Timing,
        retriable: Vec<u16>,
        bypass_api_service: bool,
    ) -> Result<ApiClient, DcsError> {
        // Our own retry loop decides; kube's would hide status codes and Retry-After.
        config.default_retry = false;
        config.read_timeout = None;
        config.connect_timeout = Some(Duration::from_secs(2));
        let agent = format!("regent/{}", env!("CARGO_PKG_VERSION"));
        if let Ok(v) = HeaderValue::from_str(&agent) {
            config.headers.push((USER_AGENT, v));
        }
        let url = config.cluster_url.to_string();
        let configured = Server {
            url: url.trim_end_matches('/').to_string(),
            client: build_client(config.clone())?,
        };
        Ok(ApiClient {
            base: config,
            configured,
            bypass: Mutex::new(Bypass {
                enabled: bypass_api_service,
                servers: Vec::new(),
                refreshed: None,
            }),
            current: AtomicUsize::new(0),
            timing: Mutex::new(timing),
            retriable,
            warnings_seen: Mutex::new(HashSet::new()),
        })
    }

    pub(crate) fn timing(&self) -> Timing {
        *self.timing.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_timing(&self, t: Timing) {
        *self.timing.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// The deadline of an operation started now.
    pub(crate) fn budget(&self) -> Instant {
        Instant::now() + Duration::from_secs(u64::from(self.timing().retry_timeout.max(1)))
    }

    /// Time limit of one attempt: half the budget (one retry on a single API server).
    pub(crate) fn attempt_timeout(&self) -> Duration {
        (Duration::from_secs(u64::from(self.timing().retry_timeout.max(1))) / 2)
            .max(Duration::from_millis(500))
    }

    fn servers(&self) -> Vec<Server> {
        let b = self.bypass.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = if b.enabled {
            b.servers.clone()
        } else {
            Vec::new()
        };
        out.push(self.configured.clone());
        out
    }

    fn pick(&self) -> Server {
        let servers = self.servers();
        let i = self.current.load(Ordering::Relaxed) % servers.len();
        servers[i].clone()
    }

    fn rotate(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    fn log_warnings(&self, headers: &HeaderMap) {
        for v in headers.get_all("warning") {
            let text = String::from_utf8_lossy(v.as_bytes()).to_string();
            let mut seen = self.warnings_seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() < 1000 && seen.insert(text.clone()) {
                tracing::warn!(warning = %text, "Kubernetes API warning");
            }
        }
    }

    async fn send_once(
        &self,
        server: &Server,
        req: &Req,
    ) -> Result<(http::response::Parts, Body), String> {
        let mut b = http::Request::builder()
            .method(req.method.clone())
            .uri(req.path.as_str())
            .header(ACCEPT, JSON);
        if let Some(ct) = req.content_type {
            b = b.header(CONTENT_TYPE, ct);
        }
        let body = req.body.clone().map(Body::from).unwrap_or_else(Body::empty);
        let request = b
            .body(body)
            .map_err(|e| format!("invalid request {}: {e}", req.path))?;
        let resp = server
            .client
            .send(request)
            .await
            .map_err(|e| format!("{}: {}", server.url, error_chain(&e)))?;
        Ok(resp.into_parts())
    }

    /// Send `req` until it succeeds, fails definitively, or `deadline` passes.
    pub(crate) async fn call(&self, req: &Req, deadline: Instant) -> Result<Resp, CallError> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        let mut last = String::from("no attempt was made");
        let mut last_auth: Option<(u16, String)> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.give_up(req, &last, last_auth));
            }
            let server = self.pick();
            let slice = self.attempt_timeout().min(remaining);
            attempts += 1;
            let attempt = async {
                let (parts, body) = self.send_once(&server, req).await?;
                let bytes = body.collect_bytes().await.map_err(|e| {
                    format!("{}: reading the answer: {}", server.url, error_chain(&e))
                })?;
                Ok::<_, String>((parts, bytes))
            };
            let mut wait = backoff;
            match tokio::time::timeout(slice, attempt).await {
                Err(_) => {
                    last = format!(
                        "no answer from {} within {:.1}s",
                        server.url,
                        slice.as_secs_f64()
                    );
                    self.rotate();
                }
                Ok(Err(e)) => {
                    last = e;
                    self.rotate();
                }
                Ok(Ok((parts, body))) => {
                    self.log_warnings(&parts.headers);
                    let code = parts.status.as_u16();
                    let after = retry_after(&parts.headers);
                    match classify(code, after.is_some(), &self.retriable) {
                        Verdict::Success => return Ok(Resp { body }),
                        Verdict::Forbidden => {
                            return Err(CallError::Dcs(forbidden(
                                req,
                                code,
                                &status_message(&body),
                            )))
                        }
                        Verdict::Fail => {
                            return Err(CallError::Status {
                                code,
                                message: status_message(&body),
                                retried: attempts > 1,
                                what: req.describe(),
                            })
                        }
                        Verdict::Retry => {
                            let message = status_message(&body);
                            last = format!("HTTP {code} from {}: {message}", server.url);
                            if matches!(code, 401 | 403) {
                                last_auth = Some((code, message));
                            }
                            if let Some(after) = after {
                                let remaining = deadline.saturating_duration_since(Instant::now());
                                if after > remaining {
                                    last.push_str(&format!(
                                        " (Retry-After {}s is beyond the remaining retry budget)",
                                        after.as_secs()
                                    ));
                                    return Err(self.give_up(req, &last, last_auth));
                                }
                                wait = after;
                            }
                        }
                    }
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(wait.min(remaining)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn give_up(&self, req: &Req, last: &str, last_auth: Option<(u16, String)>) -> CallError {
        if let Some((code, message)) = last_auth {
            return CallError::Dcs(forbidden(req, code, &message));
        }
        CallError::Dcs(DcsError::Unreachable(format!(
            "cannot {}: no usable answer within retry_timeout ({}s); last error: {last}",
            req.describe(),
            self.timing().retry_timeout
        )))
    }

    /// Open a streaming request (watch): one attempt, `header_timeout` for the response head.
    /// Returns the status code and the body to read from.
    pub(crate) async fn open_stream(
        &self,
        req: &Req,
        header_timeout: Duration,
    ) -> Result<(u16, Body), String> {
        let server = self.pick();
        match tokio::time::timeout(header_timeout, self.send_once(&server, req)).await {
            Err(_) => {
                self.rotate();
                Err(format!(
                    "{}: no answer from {} within {header_timeout:?}",
                    req.describe(),
                    server.url
                ))
            }
            Ok(Err(e)) => {
                self.rotate();
                Err(format!("{}: {e}", req.describe()))
            }
            Ok(Ok((parts, body))) => {
                self.log_warnings(&parts.headers);
                Ok((parts.status.as_u16(), body))
            }
        }
    }

    /// With `bypass_api_service`, refresh the list of API server addresses from the
    /// `default/kubernetes` Endpoints at most once per `loop_wait`; a 403 turns the feature off.
    pub(crate) async fn refresh_api_servers(&self) {
        {
            let b = self.bypass.lock().unwrap_or_else(|p| p.into_inner());
            if !b.enabled {
                return;
            }
            let interval = Duration::from_secs(u64::from(self.timing().loop_wait.max(1)))
                .saturating_sub(Duration::from_millis(500));
            if b.refreshed.is_some_and(|t| t.elapsed() < interval) {
                return;
            }
        }
        let req = Req::get("endpoints", "default", "kubernetes");
        let deadline = Instant::now() + self.attempt_timeout();
        let answer = match self.call(&req, deadline).await {
            // Typed: a malformed object is reported with the field at fault.
            Ok(resp) => resp.json(&req).map_err(CallError::Dcs).and_then(|v| {
                objects::typed::<Endpoints>("the default/kubernetes Endpoints", &v)
                    .map_err(|e| CallError::Dcs(DcsError::Protocol(e)))
            }),
            Err(e) => Err(e),
        };
        let mut b = self.bypass.lock().unwrap_or_else(|p| p.into_inner());
        b.refreshed = Some(Instant::now());
        match answer {
            Ok(endpoints) => {
                let urls = api_server_urls(&endpoints);
                if urls.is_empty() {
                    tracing::debug!("no https addresses in the default/kubernetes Endpoints");
                    return;
                }
                let known: Vec<&str> = b.servers.iter().map(|s| s.url.as_str()).collect();
                let mut sorted_new = urls.clone();
                sorted_new.sort();
                let mut sorted_known: Vec<String> = known.iter().map(|s| s.to_string()).collect();
                sorted_known.sort();
                if sorted_new == sorted_known {
                    return;
                }
                let mut servers = Vec::with_capacity(urls.len());
                for url in urls {
                    let Ok(uri) = url.parse::<http::Uri>() else {
                        continue;
                    };
                    let mut config = self.base.clone();
                    config.cluster_url = uri;
                    config.tls_server_name = Some(API_SERVICE_NAME.to_string());
                    match build_client(config) {
                        Ok(client) => servers.push(Server { url, client }),
                        Err(e) => tracing::warn!(error = %e, "cannot use API server {url}"),
                    }
                }
                tracing::info!(
                    servers = ?servers.iter().map(|s| s.url.as_str()).collect::<Vec<_>>(),
                    "talking to the Kubernetes API servers directly (bypass_api_service)"
                );
                b.servers = servers;
                self.current.store(0, Ordering::Relaxed);
            }
            Err(CallError::Dcs(DcsError::Forbidden(msg))) => {
                tracing::warn!(
                    "RBAC does not allow reading the 'kubernetes' Endpoints in the 'default' namespace ({msg}); disabling bypass_api_service"
                );
                b.enabled = false;
                b.servers.clear();
            }
            Err(e) => {
                let e: DcsError = e.into();
                tracing::debug!(error = %e, "cannot refresh the list of API servers");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn retry_classification() {
        assert_eq!(classify(200, false, &[]), Verdict::Success);
        assert_eq!(classify(201, false, &[]), Verdict::Success);
        for code in [429, 500, 503, 504] {
            assert_eq!(classify(code, false, &[]), Verdict::Retry, "{code}");
        }
        assert_eq!(classify(502, false, &[]), Verdict::Fail);
        assert_eq!(classify(502, false, &[502]), Verdict::Retry);
        assert_eq!(classify(403, false, &[]), Verdict::Forbidden);
        assert_eq!(classify(401, false, &[]), Verdict::Forbidden);
        // Configured codes win, as in Patroni (e.g. 401 while a token rotates).
        assert_eq!(classify(401, false, &[401]), Verdict::Retry);
        for code in [400, 404, 409, 410, 422] {
            assert_eq!(classify(code, false, &[]), Verdict::Fail, "{code}");
        }
        assert_eq!(classify(409, true, &[]), Verdict::Retry);
    }

    #[test]
    fn retry_after_header() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn requests_are_named_and_encoded() {
        let r = Req::patch("configmaps", "default", "demo-leader", &json!({}));
        assert_eq!(
            r.describe(),
            r#"patch configmaps "demo-leader" in namespace "default""#
        );
        assert_eq!(r.path, "/api/v1/namespaces/default/configmaps/demo-leader");
        assert_eq!(r.content_type, Some(MERGE_PATCH));
        let l = Req::list("pods", "ns1", "application=patroni,cluster-name=demo");
        assert_eq!(
            l.path,
            "/api/v1/namespaces/ns1/pods?labelSelector=application%3Dpatroni%2Ccluster-name%3Ddemo"
        );
        assert_eq!(l.describe(), r#"list pods in namespace "ns1""#);
        let c = Req::create(
            "configmaps",
            "default",
            &json!({"metadata": {"name": "demo-config"}}),
        );
        assert_eq!(c.name.as_deref(), Some("demo-config"));
        assert_eq!(c.path, "/api/v1/namespaces/default/configmaps");
        let w = Req::watch("endpoints", "default", "a=b", "42", 240);
        assert!(w
            .path
            .contains("watch=true&resourceVersion=42&allowWatchBookmarks=true&timeoutSeconds=240"));
    }

    #[test]
    fn forbidden_names_verb_resource_and_server_message() {
        let r = Req::patch("configmaps", "default", "demo-leader", &json!({}));
        let msg = forbidden(
            &r,
            403,
            "configmaps \"demo-leader\" is forbidden: User \"x\" cannot patch",
        )
        .to_string();
        assert!(
            msg.contains(
                r#"forbidden: cannot patch configmaps "demo-leader" in namespace "default""#
            ),
            "{msg}"
        );
        assert!(msg.contains("User \"x\" cannot patch"), "{msg}");
        assert!(msg.contains("'patch' on 'configmaps'"), "{msg}");
        let msg = forbidden(&r, 401, "Unauthorized").to_string();
        assert!(
            msg.contains("unauthorized: cannot patch configmaps"),
            "{msg}"
        );
    }

    #[test]
    fn status_messages() {
        let body = br#"{"kind":"Status","code":409,"reason":"Conflict","message":"Operation cannot be fulfilled"}"#;
        assert_eq!(status_message(body), "Operation cannot be fulfilled");
        assert_eq!(status_message(b"  plain text "), "plain text");
        assert_eq!(status_message(b""), "no message");
    }

    #[test]
    fn api_server_addresses() {
        let ep: Endpoints = serde_json::from_value(json!({"subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "fd00::1"}],
             "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]},
            {"addresses": [{"ip": "10.0.0.9"}], "ports": [{"name": "metrics", "port": 1}]}
        ]}))
        .unwrap();
        let mut urls = api_server_urls(&ep);
        urls.sort();
        assert_eq!(
            urls,
            [
                "https://10.0.0.1:6443",
                "https://10.0.0.2:6443",
                "https://[fd00::1]:6443"
            ]
        );
        assert!(api_server_urls(&Endpoints::default()).is_empty());
    }
}
