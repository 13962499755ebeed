//! The Kubernetes backend over HTTPS against a small TLS fake of the API server: the kubeconfig
//! CA is enforced, `bypass_api_service` talks to the API server IPs from the `default/kubernetes`
//! Endpoints verifying them as `kubernetes.default.svc`, a 403 on those Endpoints turns the
//! bypass off, and every request carries Regent's User-Agent. Certificates are made per run
//! (test-pki).

// A test file: its helpers, too, may stop the test on an unexpected value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use dcs::kubernetes::{Kubernetes, KubernetesConfig};
use dcs::{Dcs, DcsError, Timing};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use test_pki::{write_ca, Ca, Subject, Usage};

/// A CA with two server certificates: one for the address in the kubeconfig (IP 127.0.0.1) and
/// one valid only for `kubernetes.default.svc` (what the API server IPs are verified as); and an
/// unrelated CA.
fn pki() -> &'static PathBuf {
    static PKI: OnceLock<PathBuf> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dcs-k8s-tls-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create pki dir");
        let ca = Ca::new("ca");
        ca.write(&dir, "ca");
        write_ca(&dir, "other-ca");
        for (name, san) in [
            ("by-ip", "127.0.0.1"),
            ("by-service", "kubernetes.default.svc"),
        ] {
            ca.issue_to(&dir, name, Subject::CommonName(name), &[san], Usage::Server);
        }
        dir
    })
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    user_agent: String,
}

/// A minimal HTTPS API server: empty lists, watches that stay open, and a configurable answer
/// for the `default/kubernetes` Endpoints.
struct FakeApi {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    async fn start(cert: &str, endpoints: (u16, Value)) -> FakeApi {
        let dir = pki();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join(format!("{cert}.crt")))
                .expect("read certificate")
                .collect::<Result<_, _>>()
                .expect("parse certificate");
        let key = PrivateKeyDer::from_pem_file(dir.join(format!("{cert}.key"))).expect("read key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let log = Arc::clone(&log);
                let endpoints = endpoints.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let mut lines = head.lines();
                    let mut first = lines.next().unwrap_or_default().split(' ');
                    let method = first.next().unwrap_or_default().to_string();
                    let path = first.next().unwrap_or_default().to_string();
                    let user_agent = lines
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("user-agent")
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_default();
                    log.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
                        method,
                        path: path.clone(),
                        user_agent,
                    });
                    if path.contains("watch=true") {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                            .await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                    let (code, body) = if path
                        .starts_with("/api/v1/namespaces/default/endpoints/kubernetes")
                    {
                        endpoints.clone()
                    } else if let Some(kind) = ["configmaps", "pods", "endpoints"]
                        .iter()
                        .find(|r| path.contains(&format!("/{r}?")))
                    {
                        (
                            200,
                            json!({"kind": format!("{kind}List"), "apiVersion": "v1",
                                     "metadata": {"resourceVersion": "7"}, "items": []}),
                        )
                    } else {
                        (
                            404,
                            json!({"kind": "Status", "code": 404, "reason": "NotFound", "message": "not here"}),
                        )
                    };
                    let body = body.to_string();
                    let answer = format!(
                        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                         Warning: 299 - \"v1 ConfigMap is fine; this is a test\"\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        FakeApi { port, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// LISTs (not watches) of `resource` this server answered.
    fn lists(&self, resource: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path.contains(&format!("/{resource}?")) && !s.path.contains("watch=true"))
            .count()
    }
}

fn kubeconfig(name: &str, port: u16, ca: &str) -> PathBuf {
    let dir = pki();
    let ca_pem = std::fs::read(dir.join(format!("{ca}.crt"))).expect("read CA");
    let ca_data = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca_data}\n\
         contexts:\n- name: kind-kind\n  context: {{cluster: c, user: u}}\ncurrent-context: kind-kind\n\
         users:\n- name: u\n  user: {{token: secret}}\n"
    );
    let path = dir.join(format!("kubeconfig-{name}"));
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

fn config(kubeconfig: PathBuf, bypass: bool) -> KubernetesConfig {
    KubernetesConfig {
        scope: "demo".into(),
        name: "demo-0".into(),
        kubeconfig: Some(kubeconfig),
        bypass_api_service: bypass,
        timing: Timing {
            ttl: 10,
            loop_wait: 1,
            retry_timeout: 2,
        },
        ..Default::default()
    }
}

fn endpoints_of(port: u16) -> Value {
    json!({"kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"},
           "subsets": [{"addresses": [{"ip": "127.0.0.1"}],
                        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_kubeconfig_ca_and_user_agent() {
    let api = FakeApi::start("by-ip", (404, json!({}))).await;
    let k = Kubernetes::connect(config(kubeconfig("ok", api.port, "ca"), false))
        .await
        .expect("connect");
    let cluster = k.get_cluster().await.expect("read over https");
    assert!(cluster.leader.is_none() && cluster.members.is_empty());
    let seen = api.seen();
    assert!(api.lists("configmaps") >= 1, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.user_agent.starts_with("regent/")),
        "{seen:?}"
    );
    assert!(seen.iter().all(|s| s.method == "GET"), "{seen:?}");
}

/// Log lines written by the code under test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The API server's `Warning` headers are logged once per distinct text, not once per request.
#[tokio::test(flavor = "current_thread")]
async fn api_warnings_are_logged_once() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let api = FakeApi::start("by-ip", (404, json!({}))).await;
    let k = Kubernetes::connect(config(kubeconfig("warn", api.port, "ca"), false))
        .await
        .expect("connect");
    for _ in 0..3 {
        k.get_cluster().await.expect("read");
    }
    assert!(api.seen().len() >= 3);
    let log =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|p| p.into_inner())).to_string();
    assert_eq!(
        log.matches("v1 ConfigMap is fine; this is a test").count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_server_certificate_is_refused() {
    let api = FakeApi::start("by-ip", (404, json!({}))).await;
    let k = Kubernetes::connect(config(kubeconfig("wrong-ca", api.port, "other-ca"), false))
        .await
        .expect("connect");
    let started = Instant::now();
    let e = k
        .get_cluster()
        .await
        .expect_err("untrusted server accepted");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let msg = e.to_string();
    assert!(matches!(e, DcsError::Unreachable(_)), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    assert!(api.lists("configmaps") == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_talks_to_the_api_server_ips_as_kubernetes_default_svc() {
    // The direct address only has a certificate for the service name, not for its IP.
    let direct = FakeApi::start("by-service", (404, json!({}))).await;
    let service = FakeApi::start("by-ip", (200, endpoints_of(direct.port))).await;
    let k = Kubernetes::connect(config(kubeconfig("bypass", service.port, "ca"), true))
        .await
        .expect("connect");
    k.get_cluster().await.expect("first read");
    let before = service.lists("configmaps");
    for _ in 0..3 {
        k.get_cluster().await.expect("read");
    }
    assert!(
        service
            .seen()
            .iter()
            .any(|s| s.path == "/api/v1/namespaces/default/endpoints/kubernetes"),
        "{:?}",
        service.seen()
    );
    assert!(direct.lists("configmaps") >= 3, "{:?}", direct.seen());
    assert_eq!(
        service.lists("configmaps"),
        before,
        "reads still go through the service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_is_turned_off_when_rbac_forbids_the_endpoints() {
    let direct = FakeApi::start("by-service", (404, json!({}))).await;
    let forbidden = json!({"kind": "Status", "code": 403, "reason": "Forbidden",
                           "message": "endpoints \"kubernetes\" is forbidden"});
    let service = FakeApi::start("by-ip", (403, forbidden)).await;
    let k = Kubernetes::connect(config(kubeconfig("forbidden", service.port, "ca"), true))
        .await
        .expect("connect");
    for _ in 0..3 {
        k.get_cluster().await.expect("read through the service");
    }
    let endpoint_reads = service
        .seen()
        .iter()
        .filter(|s| s.path.contains("/endpoints/kubernetes"))
        .count();
    assert_eq!(
        endpoint_reads,
        1,
        "asked again after a 403: {:?}",
        service.seen()
    );
    assert!(service.lists("configmaps") >= 3);
    assert!(direct.seen().is_empty(), "{:?}", direct.seen());
}
