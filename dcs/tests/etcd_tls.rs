//! The etcd v3 backend over TLS against a real etcd that demands client certificates. The CA and
//! certificates are made per run (test-pki).

// A test file: its helpers, too, may stop the test on an unexpected value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dcs::etcd::{Etcd3, EtcdConfig};
use dcs::{Dcs, DcsError, Timing};

use test_pki::{write_ca, Ca, Subject, Usage};

mod support;
use support::etcd::{assert_acquisition_wakes, race, EtcdServer};

/// Certificates of one test run: a CA signing the server (IP SAN 127.0.0.1) and client
/// certificates, and an unrelated CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

const PKI_DIR_PREFIX: &str = "dcs-etcd-tls-pki-";

/// The certificates outlive every test of a run, so each run removes those of finished runs.
fn remove_stale_pki_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PKI_DIR_PREFIX)) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Made once per test binary; every test reads the same files.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        remove_stale_pki_dirs();
        let dir = std::env::temp_dir().join(format!("{PKI_DIR_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create pki dir");
        let ca = Ca::new("ca");
        ca.write(&dir, "ca");
        write_ca(&dir, "other-ca");
        // etcd's JSON gateway presents the server certificate as a client to etcd itself, so the
        // server certificate must allow client authentication too.
        let server = Subject::CommonName("127.0.0.1");
        ca.issue_to(
            &dir,
            "server",
            server,
            &["127.0.0.1"],
            Usage::ServerAndClient,
        );
        let client = ca.issue(Subject::CommonName("regent-client"), &[], Usage::Client);
        client.write(&dir, "client");
        // etcd's JSON gateway refuses client certificates with a common name once
        // authentication is enabled: members using passwords need one without.
        let no_cn = Subject::Organization("regent test client");
        ca.issue_to(&dir, "client-no-cn", no_cn, &[], Usage::Client);
        // Certificate and key in one file, the form used when etcd3.key is not set.
        std::fs::write(dir.join("client-with-key.pem"), client.combined_pem())
            .expect("write combined pem");
        Pki { dir }
    })
}

/// A throw-away single-node etcd serving clients over TLS only, demanding client certificates
/// signed by the test CA.
async fn start_tls_etcd() -> EtcdServer {
    let pki = pki();
    let mut args: Vec<OsString> = Vec::new();
    for (flag, file) in [
        ("--cert-file", "server.crt"),
        ("--key-file", "server.key"),
        ("--trusted-ca-file", "ca.crt"),
    ] {
        args.push(flag.into());
        args.push(pki.path(file).into());
    }
    args.push("--client-cert-auth".into());
    EtcdServer::start("https", args, raw_client()).await
}

/// An HTTP client trusting the test CA and presenting the client certificate.
fn raw_client() -> reqwest::Client {
    let pki = pki();
    let ca = std::fs::read(pki.path("ca.crt")).expect("read ca.crt");
    let identity = std::fs::read(pki.path("client-with-key.pem")).expect("read client pem");
    reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca cert"))
        .identity(reqwest::Identity::from_pem(&identity).expect("client identity"))
        .build()
        .expect("https client")
}

fn timing(retry_timeout: u32) -> Timing {
    Timing {
        ttl: 10,
        loop_wait: 1,
        retry_timeout,
    }
}

/// Settings of a member that trusts the test CA and presents the client certificate as
/// separate certificate and key files, with the scheme coming from `protocol`.
fn tls_config(server: &EtcdServer, scope: &str, name: &str) -> EtcdConfig {
    let pki = pki();
    EtcdConfig {
        hosts: vec![format!("127.0.0.1:{}", server.port())],
        protocol: "https".into(),
        cacert: Some(pki.path("ca.crt")),
        cert: Some(pki.path("client.crt")),
        key: Some(pki.path("client.key")),
        scope: scope.into(),
        name: name.into(),
        timing: timing(3),
        ..Default::default()
    }
}

#[tokio::test]
async fn lock_race_read_and_watch_over_mutual_tls() {
    let server = start_tls_etcd().await;
    let a = Etcd3::new(tls_config(&server, "tls", "a")).expect("config a");
    // b: scheme in the host, certificate and key in one file.
    let b = Etcd3::new(EtcdConfig {
        hosts: vec![server.url()],
        protocol: "http".into(),
        key: None,
        cert: Some(pki().path("client-with-key.pem")),
        ..tls_config(&server, "tls", "b")
    })
    .expect("config b");

    for round in 0..3 {
        let (holder, other, holder_name) = race(&a, &b, round).await;
        let cluster = other.get_cluster().await.expect("read");
        assert_eq!(cluster.leader_name(), Some(holder_name));
        assert!(holder
            .update_leader(&cluster, None, None)
            .await
            .expect("renew"));
        assert!(holder.delete_leader(None).await.expect("release"));
    }

    // The watch stream runs over TLS too: a new leader wakes the other member quickly.
    b.get_cluster().await.expect("read");
    assert!(
        !b.watch(Duration::from_millis(200)).await,
        "nothing changed yet"
    );
    assert_acquisition_wakes(&a, &b).await;
    assert_eq!(
        b.get_cluster().await.expect("read").leader_name(),
        Some("a")
    );
    a.close().await.expect("close a");
    b.close().await.expect("close b");
}

/// The message of the first failed cluster read, which must fail as unreachable within the
/// retry timeout (3 s; one more for the last attempt and scheduling).
async fn refused_within_retry_timeout(dcs: &Etcd3) -> String {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), dcs.get_cluster())
        .await
        .expect("a failing read must not hang");
    let err = match result {
        Ok(_) => panic!("the read must fail"),
        Err(e) => e,
    };
    assert!(
        matches!(err, DcsError::Unreachable(_)),
        "expected unreachable, got {err:?}"
    );
    let (elapsed, message) = (started.elapsed(), err.to_string());
    assert!(
        elapsed < Duration::from_secs(5),
        "took {elapsed:?}: {message}"
    );
    message
}

#[tokio::test]
async fn missing_client_certificate_fails_within_retry_timeout() {
    let server = start_tls_etcd().await;
    let dcs = Etcd3::new(EtcdConfig {
        cert: None,
        key: None,
        ..tls_config(&server, "tls", "anonymous")
    })
    .expect("config");
    let message = refused_within_retry_timeout(&dcs).await;
    assert!(
        message.contains("BadCertificate") && message.contains("set etcd3.cert"),
        "the error must say a client certificate is needed: {message}"
    );
}

#[tokio::test]
async fn server_signed_by_another_ca_is_rejected() {
    let server = start_tls_etcd().await;
    let dcs = Etcd3::new(EtcdConfig {
        cacert: Some(pki().path("other-ca.crt")),
        ..tls_config(&server, "tls", "wrong-ca")
    })
    .expect("config");
    let message = refused_within_retry_timeout(&dcs).await;
    assert!(
        message.contains("UnknownIssuer") && message.contains("etcd3.cacert"),
        "the error must name the certificate problem: {message}"
    );
}

#[tokio::test]
async fn password_authentication_over_tls() {
    let server = start_tls_etcd().await;
    server.enable_auth("pw").await;
    let with = |username: Option<&str>, password: &str, name: &str| {
        Etcd3::new(EtcdConfig {
            username: username.map(String::from),
            password: Some(password.into()),
            cert: Some(pki().path("client-no-cn.crt")),
            key: Some(pki().path("client-no-cn.key")),
            ..tls_config(&server, "tls-auth", name)
        })
        .expect("config")
    };
    let a = with(Some("root"), "pw", "a");
    let b = with(Some("root"), "pw", "b");
    b.get_cluster().await.expect("read with auth");
    let (woke, acquired) = tokio::join!(b.watch(Duration::from_secs(5)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.attempt_to_acquire_leader().await
    });
    assert!(acquired.expect("acquire with auth"));
    assert!(woke, "watch with auth over TLS must wake");
    assert_eq!(
        b.get_cluster().await.expect("read with auth").leader_name(),
        Some("a")
    );
    for (user, password) in [(None, "pw"), (Some("root"), "wrong")] {
        let denied = with(user, password, "c").get_cluster().await;
        assert!(
            matches!(denied, Err(DcsError::Forbidden(_))),
            "user {user:?}: expected access denied, got {denied:?}"
        );
    }
    // etcd's own rule, reported as etcd words it: with authentication on, a client certificate
    // with a common name is refused.
    let with_cn = Etcd3::new(EtcdConfig {
        username: Some("root".into()),
        password: Some("pw".into()),
        ..tls_config(&server, "tls-auth", "d")
    })
    .expect("config");
    let refused = with_cn.get_cluster().await.err().map(|e| e.to_string());
    assert!(
        refused.as_deref().is_some_and(|m| m.contains("CommonName")),
        "expected etcd's CommonName refusal, got {refused:?}"
    );
}

#[test]
fn unusable_tls_files_are_refused_at_construction_naming_the_key() {
    let pki = pki();
    let base = EtcdConfig {
        hosts: vec!["127.0.0.1:2379".into()],
        protocol: "https".into(),
        scope: "tls".into(),
        name: "a".into(),
        ..Default::default()
    };
    let error = |cfg: EtcdConfig| match Etcd3::new(cfg) {
        Ok(_) => panic!("construction must fail"),
        Err(e) => e.to_string(),
    };
    let missing = pki.dir.join("missing.pem");
    let msg = error(EtcdConfig {
        cacert: Some(missing.clone()),
        ..base.clone()
    });
    assert!(
        msg.contains(&format!("etcd3.cacert: cannot read {}", missing.display())),
        "{msg}"
    );
    let msg = error(EtcdConfig {
        cacert: Some(pki.path("ca.key")),
        ..base.clone()
    });
    assert!(
        msg.contains("etcd3.cacert") && msg.contains("no PEM certificate"),
        "{msg}"
    );
    let msg = error(EtcdConfig {
        cert: Some(pki.path("client.crt")),
        ..base.clone()
    });
    assert!(
        msg.contains("etcd3.cert") && msg.contains("no PEM private key"),
        "{msg}"
    );
    let msg = error(EtcdConfig {
        cert: Some(pki.path("client.crt")),
        key: Some(missing),
        ..base.clone()
    });
    assert!(msg.contains("etcd3.key: cannot read"), "{msg}");
    let msg = error(EtcdConfig {
        cert: Some(pki.path("client.crt")),
        key: Some(pki.path("client.crt")),
        ..base.clone()
    });
    assert!(
        msg.contains("etcd3.key") && msg.contains("no PEM private key"),
        "{msg}"
    );
    // Valid files are accepted without any network IO.
    Etcd3::new(EtcdConfig {
        cacert: Some(pki.path("ca.crt")),
        cert: Some(pki.path("client.crt")),
        key: Some(pki.path("client.key")),
        ..base
    })
    .expect("valid TLS files");
}
