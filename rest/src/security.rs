//! Access control of the REST API, as Patroni does it (docs/compatibility.md, *REST API*):
//! requests that change something (`POST`, `PUT`, `PATCH`, `DELETE`) must come from an allowed
//! address (`restapi.allowlist`, plus the members' `api_url` hosts with
//! `allowlist_include_members`; else 403 `Access is denied`), carry a client certificate when
//! `verify_client` asks for one (else 403), and carry the configured basic-auth credentials (else
//! 401 with `WWW-Authenticate: Basic realm="Patroni"`). Reads stay open. The checks run in a
//! middleware in front of every handler, so a refused request executes nothing.
//!
//! [`serve`] serves the guarded router over plain HTTP or, with `restapi.certfile`, over TLS.

mod net;
mod tls;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

pub use net::IpNet;
pub use tls::{select_suites, server_config, Peer, TlsListener, TlsSettings, VerifyClient};

use crate::Snapshot;

/// A setting that cannot be used, with its dotted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityError {
    pub key: String,
    pub message: String,
}

impl SecurityError {
    pub fn new(key: &str, message: impl Into<String>) -> SecurityError {
        SecurityError {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for SecurityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for SecurityError {}

/// The `restapi` settings access control uses.
#[derive(Debug, Clone, Default)]
pub struct SecuritySettings {
    /// `restapi.authentication` as (username, password).
    pub authentication: Option<(String, String)>,
    /// IPs, CIDR networks and host names.
    pub allowlist: Vec<String>,
    pub allowlist_include_members: bool,
    /// `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Headers added to every response (`restapi.http_extra_headers`, plus
    /// `https_extra_headers` under TLS), as (setting, name, value).
    pub extra_headers: Vec<(String, String, String)>,
}

/// Access control ready to use: names resolved, TLS files loaded.
pub struct Security {
    /// Replaced as a whole by [`Security::reload`].
    access: std::sync::RwLock<Arc<Access>>,
    verify_client: VerifyClient,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The TLS settings served with, to tell when a reload asks for others.
    tls_settings: Option<TlsSettings>,
    snapshot: tokio::sync::watch::Receiver<Snapshot>,
}

/// The settings a reload changes in place.
#[derive(Debug)]
struct Access {
    /// `base64(username:password)`, compared with what follows `Basic ` as Patroni does.
    auth_key: Option<String>,
    allowlist: Vec<IpNet>,
    include_members: bool,
    extra_headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Access {
    /// Resolve the allowlist's host names (once, as Patroni does) and check the headers.
    fn new(settings: &SecuritySettings) -> Result<Access, SecurityError> {
        let mut allowlist = Vec::new();
        for entry in &settings.allowlist {
            if entry.contains('/') {
                allowlist.push(
                    IpNet::parse_cidr(entry)
                        .map_err(|m| SecurityError::new("restapi.allowlist", m.to_string()))?,
                );
            } else {
                // As Patroni: a name that does not resolve is reported and skipped, so a DNS
                // hiccup at start only narrows who may change things.
                match net::resolve(entry, 8080) {
                    Ok(ips) => allowlist.extend(ips),
                    Err(e) => tracing::error!("restapi.allowlist: cannot resolve '{entry}': {e}"),
                }
            }
        }
        let mut extra_headers = Vec::new();
        for (setting, name, value) in &settings.extra_headers {
            let name = header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                SecurityError::new(setting, format!("'{name}' is not an HTTP header name"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                SecurityError::new(
                    setting,
                    format!("'{value}' is not a valid value for {name}"),
                )
            })?;
            extra_headers.push((name, value));
        }
        Ok(Access {
            auth_key: settings
                .authentication
                .as_ref()
                .map(|(user, password)| base64_encode(format!("{user}:{password}").as_bytes())),
            allowlist,
            include_members: settings.allowlist_include_members,
            extra_headers,
        })
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let access = self.access();
        f.debug_struct("Security")
            .field("authentication", &access.auth_key.is_some())
            .field("allowlist", &access.allowlist)
            .field("include_members", &access.include_members)
            .field("verify_client", &self.verify_client)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Security {
    /// Resolve the allowlist's host names and load the TLS files. `snapshot` supplies the
    /// members for `allowlist_include_members`.
    pub fn new(
        settings: &SecuritySettings,
        snapshot: tokio::sync::watch::Receiver<Snapshot>,
    ) -> Result<Security, SecurityError> {
        let access = Access::new(settings)?;
        let tls = settings.tls.as_ref().map(server_config).transpose()?;
        Ok(Security {
            access: std::sync::RwLock::new(Arc::new(access)),
            verify_client: settings
                .tls
                .as_ref()
                .map_or(VerifyClient::None, |t| t.verify_client),
            tls,
            tls_settings: settings.tls.clone(),
            snapshot,
        })
    }

    /// Apply reloaded settings (Patroni's reload): credentials, allowlist and extra headers
    /// change at once. TLS settings other than the served ones need a restart (the listener
    /// is bound once); that is logged. On error nothing changes.
    pub fn reload(&self, settings: &SecuritySettings) -> Result<(), SecurityError> {
        let access = Access::new(settings)?;
        if settings.tls != self.tls_settings {
            tracing::warn!(
                "restapi TLS settings (certfile, keyfile, cafile, ciphers, verify_client) changed: \
                 restart to apply them"
            );
        }
        *self.access.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(access);
        Ok(())
    }

    fn access(&self) -> Arc<Access> {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the API is served over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Patroni's order: address (403), client certificate (403), credentials (401).
    /// `check_members`: members' addresses count as allowed (all endpoints but `/failsafe`).
    pub async fn check_access(
        &self,
        peer: Option<IpAddr>,
        client_cert: bool,
        authorization: Option<&[u8]>,
        check_members: bool,
    ) -> Result<(), Response> {
        let access = self.access();
        let check_members = check_members && access.include_members;
        if !access.allowlist.is_empty() || check_members {
            let allowed = match peer {
                Some(ip) => {
                    access.allowlist.iter().any(|n| n.contains(ip))
                        || (check_members
                            && self.member_networks().await.iter().any(|n| n.contains(ip)))
                }
                None => false,
            };
            if !allowed {
                return Err(refusal(StatusCode::FORBIDDEN, "Access is denied"));
            }
        }
        if self.tls.is_some() && self.verify_client != VerifyClient::None && !client_cert {
            return Err(refusal(
                StatusCode::FORBIDDEN,
                "client certificate required",
            ));
        }
        if let Some(key) = &access.auth_key {
            let reason = match authorization {
                None => Some("no auth header received"),
                Some(value) => match value.strip_prefix(b"Basic ") {
                    Some(given) if constant_time_eq(given, key.as_bytes()) => None,
                    _ => Some("not authenticated"),
                },
            };
            if let Some(reason) = reason {
                let mut response = refusal(StatusCode::UNAUTHORIZED, reason);
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"Patroni\""),
                );
                return Err(response);
            }
        }
        Ok(())
    }

    /// The addresses of every member's `api_url` host in the last DCS view, resolved now (as
    /// Patroni does on each request, so a moved member is followed).
    async fn member_networks(&self) -> Vec<IpNet> {
        let urls: Vec<String> = {
            let snapshot = self.snapshot.borrow();
            snapshot
                .cluster
                .iter()
                .flat_map(|c| c.members.iter())
                .filter_map(|m| m.data.api_url.clone())
                .collect()
        };
        let mut nets = Vec::new();
        for url in urls {
            let Some((host, port)) = net::url_host_port(&url) else {
                tracing::debug!("cannot parse member api_url {url}");
                continue;
            };
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<IpAddr>() {
                nets.push(IpNet::host(ip));
                continue;
            }
            match tokio::net::lookup_host((bare.to_string(), port)).await {
                Ok(addrs) => nets.extend(addrs.map(|a| IpNet::host(a.ip()))),
                Err(e) => tracing::warn!("cannot resolve {host} (api_url {url}): {e}"),
            }
        }
        nets
    }
}

/// Patroni writes refusals as `text/html` with the reason as the whole body.
fn refusal(code: StatusCode, reason: &'static str) -> Response {
    (code, [(header::CONTENT_TYPE, "text/html")], reason).into_response()
}

/// Compare without an early exit, so the time taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    for y in b.iter().skip(a.len()) {
        diff |= y;
    }
    diff == 0
}

fn base64_encode(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `Authorization` header value for basic auth (`Basic base64(user:password)`).
pub fn basic_credentials(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{username}:{password}").as_bytes())
    )
}

/// Whether `method` changes something and so goes through [`Security::check_access`].
fn is_unsafe(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Whether the request came with a verified client certificate (set by the TLS listener).
#[derive(Debug, Clone, Copy)]
pub struct ClientCert(pub bool);

/// `router` with access control in front of every handler (fallback included).
pub fn guard(router: Router, security: Arc<Security>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(security, check))
}

async fn check(State(security): State<Arc<Security>>, request: Request, next: Next) -> Response {
    let mut response = checked(&security, request, next).await;
    // Patroni adds them to every answer, refusals included.
    for (name, value) in &security.access().extra_headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    response
}

async fn checked(security: &Security, request: Request, next: Next) -> Response {
    if !is_unsafe(request.method()) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let client_cert = request
        .extensions()
        .get::<ClientCert>()
        .is_some_and(|ClientCert(c)| *c);
    // Patroni leaves the members out of the allowlist for POST /failsafe only.
    let segment = request
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    let check_members = segment != "failsafe";
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match security
        .check_access(peer, client_cert, authorization, check_members)
        .await
    {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            tracing::info!(
                "REST API refused {} {} from {}: {}",
                request.method(),
                request.uri().path(),
                peer.map_or_else(|| "?".to_string(), |p| p.to_string()),
                refused.status()
            );
            refused
        }
    }
}

/// TLS connections carry [`Peer`]; give handlers the same `ConnectInfo<SocketAddr>` as plain
/// HTTP, plus [`ClientCert`].
async fn tls_peer(
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(ConnectInfo(peer.addr));
    request
        .extensions_mut()
        .insert(ClientCert(peer.client_cert));
    next.run(request).await
}

/// Serve `app` behind [`guard`] on `listener` until `shutdown` completes: over TLS when the
/// security settings have a certificate, plain HTTP otherwise. Handlers get the peer address as
/// `ConnectInfo<SocketAddr>` either way.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    security: Arc<Security>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = security.tls.clone();
    let app = guard(app, security);
    match tls {
        None => {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            let app = app
                .layer(axum::middleware::from_fn(tls_peer))
                .into_make_service_with_connect_info::<Peer>();
            axum::serve(TlsListener::new(listener, config)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tls_tests;
