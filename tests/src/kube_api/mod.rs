//! A Kubernetes API test server with the real API server's semantics for the objects Regent
//! and Patroni use: core/v1 `configmaps`, `endpoints`, `pods`, `services`, `namespaces` and
//! coordination.k8s.io/v1 `leases`.
//!
//! HTTP+JSON on one listener. Objects live in memory under one global resourceVersion counter;
//! LIST/WATCH with label and field selectors, create/update/patch (merge, strategic merge, JSON
//! patch)/delete with optimistic concurrency, `Status` error bodies worded as the real server's,
//! discovery and Table output good enough for kubectl. Test controls under `/_test/`:
//! request counts per bearer token, injected faults, event-window compaction (see `admin`) and
//! authorization rules (see `rbac`).
//!
//! Plain HTTP by default; HTTPS with a certificate and key ([`serve_tls`], see `tls`).
//! Optional RBAC: the rules of Role documents (e.g. kubernetes/rbac.yaml), enforced for every
//! client token but the admin tokens, with the real server's 403 answers.
//!
//! Run it as the `regent-kube-apiserver` binary (the `kube::KubeApiServer` fixture does), or
//! in-process with [`serve`].

mod admin;
mod discovery;
mod http;
mod objects;
mod patch;
mod protobuf;
pub mod rbac;
mod resources;
mod selectors;
mod status;
mod store;
mod table;
pub mod tls;
mod watch;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

pub use resources::{ResourceDef, RESOURCES};
pub use selectors::LabelSelector;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Events per resource kept for watches resuming from a resourceVersion; older ones get
    /// 410 Gone.
    pub watch_window: usize,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// Print one line per request on stdout.
    pub log_requests: bool,
    /// Authorization rules from the start (they can also be set and removed at run time with
    /// `POST/DELETE /_test/rbac`); `None`: every request is allowed.
    pub rbac: Option<rbac::Policy>,
    /// Start from the state saved in this file when it exists, and save the state there on
    /// SIGTERM before exiting: a restart that keeps every object, as a real API server backed
    /// by etcd does.
    pub state_file: Option<PathBuf>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            watch_window: 1000,
            bookmark_interval: Duration::from_secs(1),
            log_requests: true,
            rbac: None,
            state_file: None,
        }
    }
}

/// Shared state of one server.
pub struct App {
    store: store::Store,
    admin: admin::Admin,
    opts: ServeOptions,
    /// `host:port` for discovery's serverAddressByClientCIDRs.
    server_address: String,
    /// Authorization rules in force, if any.
    rbac: RwLock<Option<Arc<rbac::Policy>>>,
}

impl App {
    fn rbac(&self) -> Option<Arc<rbac::Policy>> {
        self.rbac.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_rbac(&self, policy: Option<rbac::Policy>) {
        *self.rbac.write().unwrap_or_else(|p| p.into_inner()) = policy.map(Arc::new);
    }
}

/// The router serving `addr` (the address clients use, for discovery). With
/// `opts.state_file`, the saved state is loaded and a task saves it on SIGTERM (needs a Tokio
/// runtime).
pub fn router(addr: SocketAddr, opts: ServeOptions) -> io::Result<Router> {
    let store = store::Store::new(opts.watch_window);
    if let Some(path) = &opts.state_file {
        load_state(&store, path)?;
    }
    let app = Arc::new(App {
        store,
        admin: admin::Admin::default(),
        rbac: RwLock::new(opts.rbac.clone().map(Arc::new)),
        opts,
        server_address: addr.to_string(),
    });
    if let Some(path) = app.opts.state_file.clone() {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let saver = app.clone();
        tokio::spawn(async move {
            terminate.recv().await;
            saver.store.save_and_exit(&path);
        });
    }
    Ok(Router::new().fallback(http::handle).with_state(app))
}

fn load_state(store: &store::Store, path: &std::path::Path) -> io::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("state file {}: {e}", path.display()),
            ))
        }
    };
    let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidData, message);
    let state: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| invalid(format!("state file {}: not JSON: {e}", path.display())))?;
    store
        .restore(&state)
        .map_err(|e| invalid(format!("state file {}: {e}", path.display())))
}

/// Serve the API on `listener` until the process ends (or the future is dropped).
pub async fn serve(listener: TcpListener, opts: ServeOptions) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    axum::serve(listener, router(addr, opts)?).await
}

/// Serve the API over HTTPS on `listener` with `tls` (see [`tls::server_config`]).
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    opts: ServeOptions,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let listener = tls::TlsListener::new(listener, tls)?;
    axum::serve(listener, router(addr, opts)?).await
}
