//! TLS serving end to end on 127.0.0.1, with certificates made per test (test-pki).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use test_pki::{encrypted_key_envelope, Ca, Subject, Usage};

use super::*;

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, in a directory
/// removed on drop.
struct Pki {
    dir: PathBuf,
    ca: Ca,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A new key and certificate for 127.0.0.1 written as server.crt / server.key.
    fn issue_server(&self) {
        let subject = Subject::CommonName("regent-test");
        self.ca
            .issue_to(&self.dir, "server", subject, &["127.0.0.1"], Usage::Server);
    }
}

fn make_pki() -> Pki {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "regent-rest-tls-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("pki dir");
    let ca = Ca::new("CA");
    ca.write(&dir, "ca");
    let pki = Pki { dir, ca };
    pki.issue_server();
    let client = Subject::CommonName("regent-test");
    pki.ca
        .issue_to(&pki.dir, "client", client, &[], Usage::Client);
    pki
}

fn tls_settings(pki: &Pki, verify_client: VerifyClient) -> TlsSettings {
    TlsSettings {
        certfile: pki.path("server.crt"),
        keyfile: Some(pki.path("server.key")),
        cafile: Some(pki.path("ca.crt")),
        verify_client,
        ..Default::default()
    }
}

/// Serve a router answering "done" with `settings`; returns the https base URL.
async fn start(settings: SecuritySettings) -> (String, tokio::sync::oneshot::Sender<()>) {
    let snapshot = tokio::sync::watch::channel(Snapshot::default()).1;
    let security = Arc::new(Security::new(&settings, snapshot).expect("settings"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = Router::new().fallback(|| async { "done" });
    tokio::spawn(serve(listener, app, security, async move {
        let _ = stopped.await;
    }));
    (format!("https://127.0.0.1:{port}"), stop)
}

fn client(pki: &Pki, with_cert: bool) -> reqwest::Client {
    let ca = std::fs::read(pki.path("ca.crt")).expect("ca");
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"))
        .timeout(Duration::from_secs(5));
    if with_cert {
        let mut pem = std::fs::read(pki.path("client.crt")).expect("client cert");
        pem.extend(std::fs::read(pki.path("client.key")).expect("client key"));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    builder.build().expect("client")
}

#[tokio::test]
async fn https_with_optional_client_certificates() {
    let pki = make_pki();
    let (base, _stop) = start(SecuritySettings {
        tls: Some(tls_settings(&pki, VerifyClient::Optional)),
        ..Default::default()
    })
    .await;
    let anonymous = client(&pki, false);
    let response = anonymous
        .get(format!("{base}/patroni"))
        .send()
        .await
        .expect("GET over https");
    assert_eq!(response.status(), 200);
    // Patroni refuses unsafe requests without a client certificate when it asks for one.
    let response = anonymous
        .post(format!("{base}/reload"))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.text().await.expect("body"),
        "client certificate required"
    );
    let response = client(&pki, true)
        .post(format!("{base}/reload"))
        .send()
        .await
        .expect("POST with a client certificate");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "done");
    // No plain HTTP on the TLS port.
    let plain = base.replace("https://", "http://");
    let answer = reqwest::Client::new()
        .get(format!("{plain}/patroni"))
        .send()
        .await;
    assert!(
        answer.as_ref().map_or(true, |r| !r.status().is_success()),
        "{answer:?}"
    );
}

#[tokio::test]
async fn required_client_certificates_are_checked_in_the_handshake() {
    let pki = make_pki();
    let (base, _stop) = start(SecuritySettings {
        tls: Some(tls_settings(&pki, VerifyClient::Required)),
        authentication: Some(("u".into(), "p".into())),
        ..Default::default()
    })
    .await;
    assert!(client(&pki, false)
        .get(format!("{base}/patroni"))
        .send()
        .await
        .is_err());
    let with_cert = client(&pki, true);
    let response = with_cert
        .get(format!("{base}/patroni"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    // A certificate does not replace the credentials.
    let response = with_cert
        .post(format!("{base}/reload"))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 401);
    let response = with_cert
        .post(format!("{base}/reload"))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
}

#[test]
fn encrypted_keys_and_missing_ca_are_refused_by_name() {
    let pki = make_pki();
    let key = std::fs::read_to_string(pki.path("server.key")).expect("key");
    std::fs::write(pki.path("enc.key"), encrypted_key_envelope(&key)).expect("write");
    let settings = TlsSettings {
        keyfile: Some(pki.path("enc.key")),
        keyfile_password: Some("pw".into()),
        ..tls_settings(&pki, VerifyClient::None)
    };
    let err = server_config(&settings).expect_err("encrypted key");
    assert_eq!(err.key, "restapi.keyfile");
    assert!(err.message.contains("encrypted"), "{err}");

    let settings = TlsSettings {
        cafile: None,
        ..tls_settings(&pki, VerifyClient::Required)
    };
    assert_eq!(
        server_config(&settings).expect_err("no CA").key,
        "restapi.cafile"
    );

    // The key may live in the certificate file.
    let mut both = std::fs::read(pki.path("server.crt")).expect("crt");
    both.extend(std::fs::read(pki.path("server.key")).expect("key"));
    std::fs::write(pki.path("both.pem"), both).expect("write");
    let settings = TlsSettings {
        certfile: pki.path("both.pem"),
        keyfile: None,
        ..tls_settings(&pki, VerifyClient::None)
    };
    assert!(server_config(&settings).is_ok());
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let pki = make_pki();
    let (base, _stop) = start(SecuritySettings {
        tls: Some(tls_settings(&pki, VerifyClient::None)),
        ..Default::default()
    })
    .await;
    let serial = |pki: &Pki| {
        let pki_path = pki.path("ca.crt");
        let base = base.clone();
        async move {
            // A fresh client each time: a new handshake, no session reuse.
            let ca = std::fs::read(pki_path).expect("ca");
            let client = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"))
                .tls_info(true)
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            let response = client.get(format!("{base}/patroni")).send().await.ok()?;
            let info = response.extensions().get::<reqwest::tls::TlsInfo>()?;
            info.peer_certificate().map(<[u8]>::to_vec)
        }
    };
    let first = serial(&pki).await.expect("served over https");
    // Renew: a new key and certificate written over the old files.
    pki.issue_server();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = serial(&pki).await.expect("still served");
        if now != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
