//! The Kubernetes DCS backend over HTTPS against the API test server: with the kubeconfig's
//! `certificate-authority-data` it bootstraps, takes and renews the lock, sees other members
//! and wakes on their changes, sending its token on every request; with a CA that did not sign
//! the server's certificate (or none) every call fails within retry_timeout with an error that
//! names the certificate problem, and nothing reaches the API.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dcs::kubernetes::{Kubernetes, KubernetesConfig};
use dcs::{Dcs, DcsError, MemberData, Role, Timing};
use regent_tests::kube::KubeApiServer;
use regent_tests::wait_until;

const SCOPE: &str = "tls";
const NS: &str = "default";

const TIMING: Timing = Timing {
    ttl: 10,
    loop_wait: 1,
    retry_timeout: 2,
};

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("application".to_string(), "regent-tls".to_string()),
        ("cluster-name".to_string(), SCOPE.to_string()),
    ])
}

/// A member whose Pod exists and whose kubeconfig (token = its name) is at `kubeconfig`.
async fn member(
    server: &KubeApiServer,
    name: &str,
    ip: &str,
    kubeconfig: std::path::PathBuf,
    timing: Timing,
) -> Kubernetes {
    server.create_pod(NS, name, &labels(), ip).await;
    Kubernetes::connect(KubernetesConfig {
        scope: SCOPE.into(),
        name: name.into(),
        namespace: NS.into(),
        labels: BTreeMap::from([("application".to_string(), "regent-tls".to_string())]),
        kubeconfig: Some(kubeconfig),
        timing,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("connect {name}: {e}"))
}

fn data(ip: &str) -> MemberData {
    MemberData {
        conn_url: Some(format!("postgres://{ip}:5432/postgres")),
        api_url: Some(format!("http://{ip}:8008/patroni")),
        state: "running".into(),
        role: Role::Replica,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_works_over_https_with_the_kubeconfig_ca() {
    let server = KubeApiServer::launch_tls().await;
    let a = member(
        &server,
        "tls-0",
        "10.0.0.1",
        server.kubeconfig("tls-0"),
        TIMING,
    )
    .await;
    let b = member(
        &server,
        "tls-1",
        "10.0.0.2",
        server.kubeconfig("tls-1"),
        TIMING,
    )
    .await;

    assert!(a
        .initialize(true, "7000000000000000001")
        .await
        .expect("initialize"));
    a.touch_member(&data("10.0.0.1"))
        .await
        .expect("touch tls-0");
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    b.touch_member(&data("10.0.0.2"))
        .await
        .expect("touch tls-1");
    let cluster = b.get_cluster().await.expect("tls-1 reads the cluster");
    assert_eq!(cluster.leader_name(), Some("tls-0"));
    assert_eq!(cluster.initialize.as_deref(), Some("7000000000000000001"));
    let mut names: Vec<&str> = cluster.members.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["tls-0", "tls-1"]);
    assert!(!b.attempt_to_acquire_leader().await.expect("second acquire"));

    // The watch over TLS wakes tls-1 when the leader renews.
    let cluster = a.get_cluster().await.expect("tls-0 reads the cluster");
    let started = Instant::now();
    let (woke, renewed) = tokio::join!(b.watch(Duration::from_secs(5)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.update_leader(&cluster, Some(100), None).await
    });
    assert!(renewed.expect("renew"), "the leader could not renew");
    assert!(woke, "tls-1's watch did not report the renewal");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let leader = server
        .get("configmaps", NS, "tls-leader")
        .await
        .expect("tls-leader ConfigMap");
    assert_eq!(
        leader["metadata"]["annotations"]["leader"], "tls-0",
        "{leader}"
    );

    // Every request carried its member's token.
    let counts = server.request_counts().await;
    assert!(!counts.contains_key("anonymous"), "{counts:?}");
    for (member, key) in [
        ("tls-0", "patch configmaps"),
        ("tls-0", "patch pods"),
        ("tls-1", "patch pods"),
        ("tls-1", "watch configmaps"),
    ] {
        assert!(
            counts
                .get(member)
                .and_then(|c| c.get(key))
                .is_some_and(|n| *n > 0),
            "no {key:?} counted for {member}: {counts:?}"
        );
    }
    a.close().await.expect("close tls-0");
    b.close().await.expect("close tls-1");
}

/// The first failing `get_cluster`: its error and how long it took.
async fn failed_read(dcs: &Kubernetes) -> (Duration, DcsError) {
    let started = Instant::now();
    match dcs.get_cluster().await {
        Ok(cluster) => panic!("the read must fail, got {cluster:?}"),
        Err(e) => (started.elapsed(), e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_refuses_a_certificate_its_ca_did_not_sign() {
    let server = KubeApiServer::launch_tls().await;
    let dir = server.dir().to_path_buf();
    let other_ca = test_pki::write_ca(&dir, "other-ca");
    let other_pem = std::fs::read_to_string(&other_ca).expect("read other CA");
    let wrong_ca = server.write_kubeconfig_with_ca(
        &dir.join("kubeconfig-wrong-ca"),
        "wrong-ca",
        Some(&other_pem),
    );
    let no_ca = server.write_kubeconfig_with_ca(&dir.join("kubeconfig-no-ca"), "no-ca", None);

    for (name, kubeconfig) in [("wrong-ca", wrong_ca), ("no-ca", no_ca)] {
        // A short retry budget: the failure is final, retrying only makes the test slower.
        let timing = Timing {
            retry_timeout: 1,
            ..TIMING
        };
        let dcs = member(&server, name, "10.0.0.9", kubeconfig, timing).await;
        let (elapsed, error) = failed_read(&dcs).await;
        let message = error.to_string();
        eprintln!("{name}: {message}");
        // retry_timeout is 1 s; the rest is slack for a loaded machine.
        assert!(
            elapsed < Duration::from_secs(6),
            "{name}: took {elapsed:?}: {message}"
        );
        assert!(
            matches!(error, DcsError::Unreachable(_)),
            "{name}: {error:?}"
        );
        assert!(
            message.contains("certificate") && message.contains("UnknownIssuer"),
            "{name}: the error must name the certificate problem: {message}"
        );
        let write = dcs.touch_member(&data("10.0.0.9")).await;
        assert!(
            write
                .as_ref()
                .is_err_and(|e| e.to_string().contains("certificate")),
            "{name}: a write must fail the same way: {write:?}"
        );
        dcs.close().await.ok();
    }
    // No request got through a failed handshake (the fixture created the Pods).
    let counts = server.request_counts().await;
    assert!(
        !counts.contains_key("wrong-ca") && !counts.contains_key("no-ca"),
        "{counts:?}"
    );
    wait_until(
        "the server to log the refused handshakes",
        Duration::from_secs(5),
        || async {
            let log = std::fs::read_to_string(server.log_path()).ok()?;
            log.contains("TLS handshake with 127.0.0.1:").then_some(())
        },
    )
    .await;
}
