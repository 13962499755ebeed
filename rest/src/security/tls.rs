//! TLS for the REST API: a rustls server configuration from Patroni's `restapi.*` file settings,
//! and a listener that does handshakes off the accept loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, SupportedCipherSuite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::SecurityError;

/// Client certificate policy (`restapi.verify_client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyClient {
    #[default]
    None,
    /// Asked for; a connection without one is accepted, but unsafe requests are refused.
    Optional,
    /// The handshake fails without a certificate signed by `cafile`.
    Required,
}

impl VerifyClient {
    pub fn parse(value: Option<&str>) -> Result<VerifyClient, SecurityError> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("none") => Ok(VerifyClient::None),
            Some("optional") => Ok(VerifyClient::Optional),
            Some("required") => Ok(VerifyClient::Required),
            Some(other) => Err(SecurityError::new(
                "restapi.verify_client",
                format!("invalid value '{other}', expected none, optional or required"),
            )),
        }
    }
}

/// The TLS file settings of the `restapi` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub certfile: PathBuf,
    /// `None`: the private key is in `certfile`.
    pub keyfile: Option<PathBuf>,
    pub keyfile_password: Option<String>,
    pub cafile: Option<PathBuf>,
    /// OpenSSL cipher list; see [`select_suites`] for what is honoured.
    pub ciphers: Option<String>,
    pub verify_client: VerifyClient,
}

fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    pemfiles::certificates(path).map_err(|e| SecurityError::new(key, e.to_string()))
}

fn load_key(settings: &TlsSettings) -> Result<PrivateKeyDer<'static>, SecurityError> {
    let (key, path) = match &settings.keyfile {
        Some(p) => ("restapi.keyfile", p.as_path()),
        None => ("restapi.certfile", settings.certfile.as_path()),
    };
    pemfiles::private_key(path).map_err(|e| match e {
        pemfiles::PemError::EncryptedKey { .. } => {
            let hint = if settings.keyfile_password.is_some() {
                "restapi.keyfile_password is set, but"
            } else {
                "the key is encrypted and"
            };
            SecurityError::new(
                key,
                format!(
                    "{}: {hint} encrypted private keys are not supported; store it unencrypted \
                     (openssl pkey -in ENCRYPTED -out PLAIN) with restrictive permissions",
                    path.display()
                ),
            )
        }
        e => SecurityError::new(key, e.to_string()),
    })
}

/// OpenSSL name of a TLS 1.2 suite rustls implements.
fn openssl_name(suite: &SupportedCipherSuite) -> Option<&'static str> {
    let iana = format!("{:?}", suite.suite());
    Some(match iana.as_str() {
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

/// The cipher suites offered for `restapi.ciphers`. As with OpenSSL's cipher list, the setting
/// only concerns TLS 1.2: every TLS 1.3 suite stays enabled. TLS 1.2 suites named in the list
/// (OpenSSL or IANA names; `!`/`-` exclusions are skipped) are the only ones kept; a list naming
/// none of the suites rustls implements (keywords such as `HIGH:!aNULL`) keeps rustls' defaults,
/// which are all forward-secret AEAD suites.
pub fn select_suites(
    all: &[SupportedCipherSuite],
    ciphers: Option<&str>,
) -> Vec<SupportedCipherSuite> {
    let Some(list) = ciphers else {
        return all.to_vec();
    };
    let named: Vec<&str> = list
        .split([':', ',', ' '])
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.starts_with(['!', '-', '+']))
        .collect();
    let listed = |s: &SupportedCipherSuite| {
        let iana = format!("{:?}", s.suite());
        named.iter().any(|n| {
            n.eq_ignore_ascii_case(&iana)
                || openssl_name(s).is_some_and(|o| n.eq_ignore_ascii_case(o))
        })
    };
    let tls12_named = all
        .iter()
        .any(|s| matches!(s, SupportedCipherSuite::Tls12(_)) && listed(s));
    if !tls12_named {
        return all.to_vec();
    }
    all.iter()
        .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)) || listed(s))
        .copied()
        .collect()
}

fn load_certified(
    settings: &TlsSettings,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, SecurityError> {
    let certs = load_certs("restapi.certfile", &settings.certfile)?;
    let key = load_key(settings)?;
    let key_setting = if settings.keyfile.is_some() {
        "restapi.keyfile"
    } else {
        "restapi.certfile"
    };
    CertifiedKey::from_der(certs, key, provider)
        .map(Arc::new)
        .map_err(|e| SecurityError::new(key_setting, format!("certificate and key: {e}")))
}

fn modified(settings: &TlsSettings) -> Vec<Option<SystemTime>> {
    std::iter::once(&settings.certfile)
        .chain(settings.keyfile.as_ref())
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// As Patroni, a renewed certificate is served without a restart: on a handshake (at most once a
/// second) the files' modification times are compared, and changed files are loaded again. A
/// pair that does not load (e.g. the key not written yet) keeps the previous one in service.
#[derive(Debug)]
struct ReloadingCert {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    state: std::sync::Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    key: Arc<CertifiedKey>,
    modified: Vec<Option<SystemTime>>,
    checked: Instant,
}

const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= CERT_CHECK_INTERVAL {
            state.checked = Instant::now();
            let now = modified(&self.settings);
            if now != state.modified {
                state.modified = now;
                match load_certified(&self.settings, &self.provider) {
                    Ok(key) => {
                        tracing::info!("REST API certificate reloaded");
                        state.key = key;
                    }
                    Err(e) => tracing::warn!("REST API certificate not reloaded: {e}"),
                }
            }
        }
        Some(state.key.clone())
    }
}

/// Build the server configuration, reading every file (errors name the setting).
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, SecurityError> {
    let base = ring::default_provider();
    let provider = Arc::new(CryptoProvider {
        cipher_suites: select_suites(&base.cipher_suites, settings.ciphers.as_deref()),
        ..base
    });
    let stamps = modified(settings);
    let key = load_certified(settings, &provider)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SecurityError::new("restapi.ciphers", e.to_string()))?;
    let builder = if settings.verify_client == VerifyClient::None {
        builder.with_no_client_auth()
    } else {
        let cafile = settings.cafile.as_deref().ok_or_else(|| {
            SecurityError::new(
                "restapi.cafile",
                "needed to verify client certificates (restapi.verify_client is set)",
            )
        })?;
        let mut roots = RootCertStore::empty();
        for ca in load_certs("restapi.cafile", cafile)? {
            roots.add(ca).map_err(|e| {
                SecurityError::new("restapi.cafile", format!("{}: {e}", cafile.display()))
            })?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let verifier = if settings.verify_client == VerifyClient::Optional {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        let verifier = verifier
            .build()
            .map_err(|e| SecurityError::new("restapi.cafile", e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_cert_resolver(Arc::new(ReloadingCert {
        settings: settings.clone(),
        provider: provider.clone(),
        state: std::sync::Mutex::new(CertState {
            key,
            modified: stamps,
            checked: Instant::now(),
        }),
    }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The connection a TLS request came in on.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The client presented a certificate the CA verified.
    pub client_cert: bool,
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}

/// A slow or silent client must not hold up the others' handshakes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP accept loop plus one task per handshake; finished connections come out of `accept`.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("REST API accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let client_cert = tls.get_ref().1.peer_certificates().is_some();
                            let _ = tx.send((tls, Peer { addr, client_cert })).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!("REST API TLS handshake with {addr} failed: {e}")
                        }
                        Err(_) => tracing::debug!("REST API TLS handshake with {addr} timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends when aborted, i.e. when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            client_cert: false,
        })
    }
}
