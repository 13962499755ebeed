//! The `dcs::Dcs` contract, one suite run against both backends: etcd v3 (a real etcd) and
//! Kubernetes (the `regent-kube-apiserver` test server, one Pod per member created first).
//! `etcd::<case>` and `kubernetes::<case>` run the same function; Kubernetes-only cases
//! (conflicts, throttling, faults, forbidden, stalls, compaction, Endpoints mode) follow.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dcs::etcd::{Etcd3, EtcdConfig};
use dcs::kubernetes::{Kubernetes, KubernetesConfig};
use dcs::{Dcs, DcsError, Failover, MemberData, Role, SyncState, Timing};
use regent_tests::kube::KubeApiServer;
use regent_tests::{poll_until, wait_until, wait_until_ok, Etcd};
use serde_json::{json, Value};

const SCOPE: &str = "demo";
const NS: &str = "default";

/// Race repetitions (both members read, then both try to take the lock).
const RACE_ROUNDS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Backend {
    Etcd,
    Kubernetes,
}

fn timing(ttl: u32, retry_timeout: u32) -> Timing {
    Timing {
        ttl,
        loop_wait: 1,
        retry_timeout,
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("application".to_string(), "patroni".to_string()),
        ("cluster-name".to_string(), SCOPE.to_string()),
    ])
}

/// A running store of either kind.
struct Store {
    backend: Backend,
    etcd: Option<Etcd>,
    kube: Option<KubeApiServer>,
}

impl Store {
    async fn start(backend: Backend) -> Store {
        match backend {
            Backend::Etcd => Store {
                backend,
                etcd: Some(Etcd::launch().await),
                kube: None,
            },
            Backend::Kubernetes => Store {
                backend,
                etcd: None,
                kube: Some(KubeApiServer::launch().await),
            },
        }
    }

    fn kube(&self) -> &KubeApiServer {
        self.kube.as_ref().expect("a Kubernetes store")
    }

    /// An etcd member of Citus group `group` (`None`: no Citus) with default settings.
    fn etcd_member(&self, name: &str, group: Option<u32>, timing: Timing) -> Etcd3 {
        Etcd3::new(EtcdConfig {
            hosts: vec![self.etcd.as_ref().expect("etcd").client_url()],
            scope: SCOPE.into(),
            name: name.into(),
            group,
            timing,
            ..Default::default()
        })
        .expect("valid etcd config")
    }

    /// A member with default settings.
    async fn member(&self, name: &str, timing: Timing) -> Box<dyn Dcs> {
        match self.backend {
            Backend::Etcd => Box::new(self.etcd_member(name, None, timing)),
            Backend::Kubernetes => Box::new(kube_member(self.kube(), name, timing, |_| {}).await),
        }
    }

    /// Write unusable values into the config and into one member's data, as a broken peer or
    /// a human would; returns the object names the warnings must mention.
    async fn write_garbage(&self) -> Vec<String> {
        match self.backend {
            Backend::Etcd => {
                let etcd = self.etcd.as_ref().expect("etcd");
                etcd.put("/service/demo/config", "[1, 2")
                    .await
                    .expect("put");
                etcd.put("/service/demo/members/broken", "{garbage")
                    .await
                    .expect("put");
                etcd.put("/service/demo/history", r#"[[1,"x"]"#)
                    .await
                    .expect("put");
                vec![
                    "/service/demo/config".into(),
                    "/service/demo/members/broken".into(),
                    "/service/demo/history".into(),
                ]
            }
            Backend::Kubernetes => {
                let kube = self.kube();
                create_broken_pod(kube, &labels(), "10.0.0.99").await;
                let cm = json!({"metadata": {"name": "demo-config", "labels": labels(),
                    "annotations": {"config": "[1, 2", "history": "[[1,\"x\"]"}}});
                let (status, body) = post_config_map(kube, &cm).await;
                if status == 409 {
                    patch(
                        kube,
                        "configmaps",
                        "demo-config",
                        json!({"metadata": {"annotations": cm["metadata"]["annotations"]}}),
                    )
                    .await;
                } else {
                    assert_eq!(status, 201, "{body}");
                }
                vec!["Pod broken".into(), "ConfigMap demo-config".into()]
            }
        }
    }
}

/// A Kubernetes member: its Pod is created first (labels = the cluster selector), its kubeconfig
/// token is its name (so the server counts its requests apart).
async fn kube_member(
    kube: &KubeApiServer,
    name: &str,
    timing: Timing,
    adjust: impl FnOnce(&mut KubernetesConfig),
) -> Kubernetes {
    if kube.get("pods", NS, name).await.is_none() {
        let ip = format!(
            "10.0.0.{}",
            10 + name.bytes().map(u32::from).sum::<u32>() % 200
        );
        kube.create_pod(NS, name, &labels(), &ip).await;
    }
    let mut cfg = KubernetesConfig {
        scope: SCOPE.into(),
        name: name.into(),
        namespace: NS.into(),
        labels: BTreeMap::from([("application".to_string(), "patroni".to_string())]),
        kubeconfig: Some(kube.kubeconfig(name)),
        timing,
        ..Default::default()
    };
    adjust(&mut cfg);
    Kubernetes::connect(cfg).await.expect("connect")
}

/// A Pod `broken` whose `status` annotation is not JSON, as a broken peer would leave it.
async fn create_broken_pod(kube: &KubeApiServer, pod_labels: &BTreeMap<String, String>, ip: &str) {
    kube.create_pod(NS, "broken", pod_labels, ip).await;
    let garbage = json!({"metadata": {"annotations": {"status": "{garbage"}}});
    patch(kube, "pods", "broken", garbage).await;
}

/// POST the ConfigMap `cm` as the test fixture; returns the status and the answer.
async fn post_config_map(kube: &KubeApiServer, cm: &Value) -> (u16, Value) {
    kube.request(
        reqwest::Method::POST,
        &format!("/api/v1/namespaces/{NS}/configmaps"),
        "application/json",
        Some(cm),
    )
    .await
    .expect("create config map")
}

/// DELETE the ConfigMap `demo-leader` as the test fixture, as an administrator might.
async fn delete_leader_object(kube: &KubeApiServer) {
    let path = format!("/api/v1/namespaces/{NS}/configmaps/demo-leader");
    let (code, body) = kube
        .request(reqwest::Method::DELETE, &path, "application/json", None)
        .await
        .expect("delete the leader object");
    assert_eq!(code, 200, "DELETE {path}: {body}");
}

/// Strategic-merge PATCH as the test fixture (someone other than the members).
async fn patch(kube: &KubeApiServer, resource: &str, name: &str, body: Value) -> Value {
    let path = format!("/api/v1/namespaces/{NS}/{resource}/{name}");
    let (status, answer) = kube
        .request(
            reqwest::Method::PATCH,
            &path,
            "application/strategic-merge-patch+json",
            Some(&body),
        )
        .await
        .expect("patch");
    assert_eq!(status, 200, "PATCH {path}: {answer}");
    answer
}

fn data(role: Role, state: &str) -> MemberData {
    MemberData {
        conn_url: Some("postgres://10.0.0.5:5432/postgres".into()),
        api_url: Some("http://10.0.0.5:8008/patroni".into()),
        state: state.into(),
        role,
        version: Some("4.0.0".into()),
        xlog_location: Some(67108960),
        timeline: Some(2),
        ..Default::default()
    }
}

async fn leader_of(member: &dyn Dcs) -> Option<String> {
    member
        .get_cluster()
        .await
        .expect("read")
        .leader
        .map(|l| l.name)
}

// ---- the shared contract -----------------------------------------------------------------------

/// Only one of two members racing for a free lock wins; the loser cannot take, renew or delete it.
async fn acquire_is_exclusive(backend: Backend) {
    let store = Store::start(backend).await;
    let a = store.member("a", timing(10, 3)).await;
    let b = store.member("b", timing(10, 3)).await;
    a.get_cluster().await.expect("read");
    b.get_cluster().await.expect("read");
    let (ra, rb) = tokio::join!(a.attempt_to_acquire_leader(), b.attempt_to_acquire_leader());
    let (ra, rb) = (ra.expect("a acquire"), rb.expect("b acquire"));
    assert!(ra ^ rb, "exactly one must win (a={ra}, b={rb})");
    let (holder, other, holder_name) = if ra { (&a, &b, "a") } else { (&b, &a, "b") };
    let cluster = other.get_cluster().await.expect("read");
    assert_eq!(cluster.leader_name(), Some(holder_name));
    assert!(!other
        .attempt_to_acquire_leader()
        .await
        .expect("second attempt"));
    assert!(!other
        .update_leader(&cluster, Some(1), None)
        .await
        .expect("renew by other"));
    assert!(!other.delete_leader(None).await.expect("delete by other"));
    assert_eq!(
        leader_of(holder.as_ref()).await.as_deref(),
        Some(holder_name)
    );
}

/// The holder renews; once someone else holds the lock, renewing fails and changes nothing.
async fn renew_keeps_then_loses(backend: Backend) {
    let store = Store::start(backend).await;
    let a = store.member("a", timing(3, 2)).await;
    let b = store.member("b", timing(3, 2)).await;
    a.get_cluster().await.expect("read");
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    let started = Instant::now();
    // Renewing every second keeps the lock well past its ttl.
    while started.elapsed() < Duration::from_secs(5) {
        let cluster = a.get_cluster().await.expect("read");
        assert_eq!(cluster.leader_name(), Some("a"));
        assert!(a
            .update_leader(&cluster, Some(100), None)
            .await
            .expect("renew"));
        assert_eq!(leader_of(b.as_ref()).await.as_deref(), Some("a"));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // a stops renewing: after its ttl the lock is free for b.
    let free_after = Instant::now();
    wait_until(
        "the unrenewed lock to expire for b",
        Duration::from_secs(8),
        || async { (leader_of(b.as_ref()).await.is_none()).then_some(()) },
    )
    .await;
    assert!(
        free_after.elapsed() >= Duration::from_secs(2),
        "lock looked free too early: {:?}",
        free_after.elapsed()
    );
    assert!(b.attempt_to_acquire_leader().await.expect("b acquires"));
    let cluster = a.get_cluster().await.expect("read");
    assert_eq!(cluster.leader_name(), Some("b"));
    assert!(!a
        .update_leader(&cluster, Some(200), None)
        .await
        .expect("stale renew"));
    assert!(!a.delete_leader(Some(200)).await.expect("stale release"));
    let cluster = b.get_cluster().await.expect("read");
    assert_eq!(cluster.leader_name(), Some("b"));
    assert!(b
        .update_leader(&cluster, Some(300), None)
        .await
        .expect("b renews"));
    assert_eq!(
        b.get_cluster().await.expect("read").status.optime,
        Some(300)
    );
}

/// Release removes the lock only for the holder; the optime is recorded.
async fn release_by_holder_only(backend: Backend) {
    let store = Store::start(backend).await;
    let a = store.member("a", timing(10, 3)).await;
    let b = store.member("b", timing(10, 3)).await;
    a.get_cluster().await.expect("read");
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    b.get_cluster().await.expect("read");
    assert!(!b.delete_leader(None).await.expect("release by other"));
    assert_eq!(leader_of(b.as_ref()).await.as_deref(), Some("a"));
    assert!(a.delete_leader(Some(4242)).await.expect("release"));
    let cluster = b.get_cluster().await.expect("read");
    assert!(cluster.leader.is_none());
    assert_eq!(cluster.status.optime, Some(4242));
    assert!(!a.delete_leader(None).await.expect("second release"));
    // Free again: b takes it at once.
    assert!(b.attempt_to_acquire_leader().await.expect("b acquires"));
    assert_eq!(leader_of(a.as_ref()).await.as_deref(), Some("b"));
}

/// Config, failover and sync writes with a stale version lose and overwrite nothing.
async fn cas_on_config_failover_sync(backend: Backend) {
    let store = Store::start(backend).await;
    let a = store.member("a", timing(10, 3)).await;
    let b = store.member("b", timing(10, 3)).await;
    assert!(a
        .set_config_value(&json!({"ttl": 30, "loop_wait": 10}), None)
        .await
        .expect("seed config"));
    let v1 = b
        .get_cluster()
        .await
        .expect("read")
        .config
        .and_then(|c| c.version)
        .expect("config version");
    assert!(a
        .set_config_value(&json!({"ttl": 30, "loop_wait": 5}), Some(&v1))
        .await
        .expect("a config CAS"));
    assert!(!b
        .set_config_value(&json!({"ttl": 99}), Some(&v1))
        .await
        .expect("b stale config CAS"));
    let config = b.get_cluster().await.expect("read").config.expect("config");
    assert_eq!(config.raw, json!({"ttl": 30, "loop_wait": 5}));

    let f = Failover {
        leader: Some("a".into()),
        member: Some("b".into()),
        ..Default::default()
    };
    assert!(a.set_failover_value(&f, None).await.expect("failover"));
    let fv = b
        .get_cluster()
        .await
        .expect("read")
        .failover
        .and_then(|f| f.version)
        .expect("failover version");
    let f2 = Failover {
        member: Some("c".into()),
        scheduled_at: Some("2030-01-01T00:00:00+00:00".into()),
        ..Default::default()
    };
    assert!(a
        .set_failover_value(&f2, Some(&fv))
        .await
        .expect("failover CAS"));
    assert!(!b
        .delete_failover(Some(&fv))
        .await
        .expect("stale failover delete"));
    assert!(!b
        .set_failover_value(&f, Some(&fv))
        .await
        .expect("stale failover write"));
    let got = b
        .get_cluster()
        .await
        .expect("read")
        .failover
        .expect("failover");
    assert_eq!(
        (
            got.leader.as_deref(),
            got.member.as_deref(),
            got.scheduled_at.as_deref()
        ),
        (None, Some("c"), Some("2030-01-01T00:00:00+00:00"))
    );
    assert!(b
        .delete_failover(got.version.as_deref())
        .await
        .expect("failover delete"));
    assert!(a.get_cluster().await.expect("read").failover.is_none());

    let sync = SyncState {
        leader: Some("a".into()),
        sync_standby: vec!["c".into(), "b".into()],
        quorum: Some(1),
        version: None,
    };
    assert!(a.set_sync_state(&sync, None).await.expect("sync"));
    let read = b.get_cluster().await.expect("read").sync;
    assert_eq!(read.sync_standby, vec!["b".to_string(), "c".to_string()]);
    assert_eq!((read.leader.as_deref(), read.quorum), (Some("a"), Some(1)));
    let sv = read.version.clone().expect("sync version");
    let sync2 = SyncState {
        sync_standby: vec!["b".into()],
        ..sync.clone()
    };
    assert!(a.set_sync_state(&sync2, Some(&sv)).await.expect("sync CAS"));
    assert!(!b
        .set_sync_state(&sync, Some(&sv))
        .await
        .expect("stale sync write"));
    assert!(!b
        .delete_sync_state(Some(&sv))
        .await
        .expect("stale sync delete"));
    let read = a.get_cluster().await.expect("read").sync;
    assert_eq!(read.sync_standby, vec!["b".to_string()]);
    assert!(a
        .delete_sync_state(read.version.as_deref())
        .await
        .expect("sync delete"));
    let read = b.get_cluster().await.expect("read").sync;
    assert!(
        read.leader.is_none() && read.sync_standby.is_empty(),
        "{read:?}"
    );
}

/// One winner of the bootstrap race; cancel lets another try; the sysid sticks.
async fn initialize_race(backend: Backend) {
    let store = Store::start(backend).await;
    let a = store.member("a", timing(10, 3)).await;
    let b = store.member("b", timing(10, 3)).await;
    for round in 0..10 {
        let (ra, rb) = tokio::join!(a.initialize(true, ""), b.initialize(true, ""));
        let (ra, rb) = (ra.expect("a init"), rb.expect("b init"));
        assert!(
            ra ^ rb,
            "round {round}: exactly one must win (a={ra}, b={rb})"
        );
        assert_eq!(
            b.get_cluster().await.expect("read").initialize.as_deref(),
            Some("")
        );
        let winner = if ra { &a } else { &b };
        winner.cancel_initialization().await.expect("cancel");
        assert!(a.get_cluster().await.expect("read").initialize.is_none());
    }
    assert!(a.initialize(true, "").await.expect("init"));
    assert!(a
        .initialize(false, "7123456789012345678")
        .await
        .expect("sysid"));
    assert!(!b.initialize(true, "").await.expect("late init"));
    assert_eq!(
        b.get_cluster().await.expect("read").initialized_sysid(),
        Some("7123456789012345678")
    );
}

/// Member data published by one member is read back unchanged by another; on Kubernetes also the
/// Pod's `status` annotation (Patroni's compact JSON) and role label.
async fn member_publish(backend: Backend) {
    let store = Store::start(backend).await;
    let a = store.member("a", timing(10, 3)).await;
    let b = store.member("b", timing(10, 3)).await;
    let replica = data(Role::Replica, "running");
    a.touch_member(&replica).await.expect("touch");
    // Kubernetes readers see Pods through a watch-fed cache: visible within moments.
    let seen = wait_until(
        "b to see a's member data",
        Duration::from_secs(2),
        || async {
            b.get_cluster()
                .await
                .ok()?
                .member("a")
                .map(|m| m.data.clone())
        },
    )
    .await;
    assert_eq!(seen, replica);
    if backend == Backend::Kubernetes {
        let kube = store.kube();
        let pod = kube.get("pods", NS, "a").await.expect("pod a");
        assert_eq!(
            pod["metadata"]["annotations"]["status"],
            r#"{"conn_url":"postgres://10.0.0.5:5432/postgres","api_url":"http://10.0.0.5:8008/patroni","state":"running","role":"replica","version":"4.0.0","xlog_location":67108960,"timeline":2}"#
        );
        assert_eq!(pod["metadata"]["labels"]["role"], "replica");
        // Unchanged data: no second PATCH.
        kube.reset_request_counts().await;
        a.get_cluster().await.expect("read");
        a.touch_member(&replica).await.expect("touch again");
        let counts = kube.request_counts().await;
        assert_eq!(
            counts.get("a").and_then(|c| c.get("patch pods")),
            None,
            "{counts:?}"
        );
    }
    // The lock holder publishing itself as primary.
    a.get_cluster().await.expect("read");
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    let primary = data(Role::Primary, "running");
    a.touch_member(&primary).await.expect("touch primary");
    wait_until(
        "b to see a as the primary leader",
        Duration::from_secs(2),
        || async {
            let cluster = b.get_cluster().await.ok()?;
            (cluster.leader_member().map(|m| &m.data) == Some(&primary)).then_some(())
        },
    )
    .await;
    if backend == Backend::Kubernetes {
        let pod = store.kube().get("pods", NS, "a").await.expect("pod a");
        assert_eq!(pod["metadata"]["labels"]["role"], "primary");
        b.touch_member(&data(Role::Replica, "starting"))
            .await
            .expect("touch b");
        let pod = store.kube().get("pods", NS, "b").await.expect("pod b");
        assert!(pod["metadata"]["labels"].get("role").is_none(), "{pod}");
        b.touch_member(&data(Role::Uninitialized, "running"))
            .await
            .expect("touch b");
        let pod = store.kube().get("pods", NS, "b").await.expect("pod b");
        assert_eq!(pod["metadata"]["labels"]["role"], "uninitialized");
    }
    // A clean shutdown of a non-leader removes its data.
    b.delete_member().await.expect("delete member");
    wait_until(
        "b's member data to disappear",
        Duration::from_secs(2),
        || async {
            a.get_cluster()
                .await
                .ok()?
                .member("b")
                .is_none()
                .then_some(())
        },
    )
    .await;
    if backend == Backend::Kubernetes {
        let pod = store.kube().get("pods", NS, "b").await.expect("pod b");
        assert!(pod["metadata"]["labels"].get("role").is_none(), "{pod}");
    }
}

/// A replica's watch wakes within a second of the lock's release; a change between two watch
/// calls is not lost; quiet periods do not wake.
async fn watch_wakes_on_release(backend: Backend) {
    let store = Store::start(backend).await;
    let a = store.member("a", timing(10, 3)).await;
    let b = store.member("b", timing(10, 3)).await;
    a.get_cluster().await.expect("read");
    b.get_cluster().await.expect("read");
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    // The acquisition happened after b's read: b's next watch returns at once.
    let started = Instant::now();
    assert!(
        b.watch(Duration::from_secs(5)).await,
        "acquisition between calls was lost"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(leader_of(b.as_ref()).await.as_deref(), Some("a"));
    // Drain wake-ups from the acquisition, then nothing happens.
    while b.watch(Duration::from_millis(300)).await {}
    assert!(
        !b.watch(Duration::from_millis(500)).await,
        "woken without a change"
    );
    let ((woke, woke_at), released_at) = tokio::join!(
        async { (b.watch(Duration::from_secs(5)).await, Instant::now()) },
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(a.delete_leader(None).await.expect("release"));
            Instant::now()
        }
    );
    assert!(woke, "the release did not wake the replica");
    let delay = woke_at.saturating_duration_since(released_at);
    assert!(
        delay < Duration::from_secs(1),
        "release noticed after {delay:?}"
    );
    assert!(leader_of(b.as_ref()).await.is_none());
    // Config changes wake too.
    while b.watch(Duration::from_millis(300)).await {}
    assert!(a
        .set_config_value(&json!({"loop_wait": 5}), None)
        .await
        .expect("config"));
    assert!(
        b.watch(Duration::from_secs(5)).await,
        "config change did not wake"
    );
}

/// A lock that is no longer renewed wakes a waiting replica when it runs out, so the replica
/// races for it without waiting for its own timer.
async fn watch_wakes_on_lock_expiry(backend: Backend) {
    let store = Store::start(backend).await;
    let a = store.member("a", timing(3, 2)).await;
    let b = store.member("b", timing(3, 2)).await;
    a.get_cluster().await.expect("read");
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    let acquired = Instant::now();
    assert_eq!(leader_of(b.as_ref()).await.as_deref(), Some("a"));
    while b.watch(Duration::from_millis(300)).await {}
    // Wait with a timeout far beyond the ttl: only the expiry can end it early.
    let mut woke = false;
    while !woke && acquired.elapsed() < Duration::from_secs(20) {
        woke = b.watch(Duration::from_secs(20)).await && leader_of(b.as_ref()).await.is_none();
    }
    let after = acquired.elapsed();
    assert!(woke, "the expired lock never woke the replica");
    assert!(
        after >= Duration::from_millis(2900),
        "woken before the ttl: {after:?}"
    );
    assert!(
        after < Duration::from_secs(5),
        "expiry noticed late: {after:?}"
    );
    assert!(b
        .attempt_to_acquire_leader()
        .await
        .expect("b takes the expired lock"));
}

/// Unusable data written by others becomes warnings naming the object, never a failed read.
async fn garbage_is_reported(backend: Backend) {
    let store = Store::start(backend).await;
    let a = store.member("a", timing(10, 3)).await;
    a.touch_member(&data(Role::Replica, "running"))
        .await
        .expect("touch");
    let named = store.write_garbage().await;
    let named_all = |c: &dcs::Cluster| {
        named
            .iter()
            .all(|n| c.warnings.iter().any(|w| w.contains(n.as_str())))
    };
    let found = poll_until(Duration::from_secs(2), || async {
        let cluster = a.get_cluster().await.expect("a read must survive garbage");
        named_all(&cluster).then_some(cluster)
    })
    .await;
    let cluster = match found {
        Some(c) => c,
        None => {
            let c = a.get_cluster().await.expect("read");
            panic!("warnings do not name all of {named:?}: {:?}", c.warnings)
        }
    };
    assert!(cluster.config.is_none());
    assert!(cluster.history.is_empty());
    assert_eq!(
        cluster.member("a").map(|m| &m.data),
        Some(&data(Role::Replica, "running"))
    );
    // The broken member can never be a failover candidate.
    assert!(cluster
        .member("broken")
        .is_none_or(|m| !m.data.is_running()));
}

/// Both members read, then both try to take the lock at once; repeated many times, never both
/// win (and someone always does).
async fn race_never_two_winners(backend: Backend) {
    let store = Store::start(backend).await;
    let a = store.member("a", timing(10, 3)).await;
    let b = store.member("b", timing(10, 3)).await;
    let started = Instant::now();
    let mut wins = [0usize; 2];
    for round in 0..RACE_ROUNDS {
        let (ca, cb) = tokio::join!(a.get_cluster(), b.get_cluster());
        let (ca, cb) = (ca.expect("a read"), cb.expect("b read"));
        assert!(
            ca.leader.is_none() && cb.leader.is_none(),
            "round {round}: lock not free"
        );
        let (ra, rb) = tokio::join!(a.attempt_to_acquire_leader(), b.attempt_to_acquire_leader());
        let (ra, rb) = (ra.expect("a acquire"), rb.expect("b acquire"));
        assert!(!(ra && rb), "round {round}: both members won the lock");
        assert!(ra || rb, "round {round}: nobody won the free lock");
        let (winner, name) = if ra { (&a, "a") } else { (&b, "b") };
        wins[usize::from(rb)] += 1;
        assert_eq!(leader_of(winner.as_ref()).await.as_deref(), Some(name));
        assert!(
            winner.delete_leader(None).await.expect("release"),
            "round {round}"
        );
    }
    println!(
        "{backend:?}: {RACE_ROUNDS} lock races in {:.1}s, never two winners (a won {}, b won {})",
        started.elapsed().as_secs_f64(),
        wins[0],
        wins[1]
    );
    if backend == Backend::Kubernetes {
        // Every round the winner writes twice (acquire, release); every other write is a loser
        // that reached the server with the resourceVersion both had read, and got 409.
        let counts = store.kube().request_counts().await;
        let writes: u64 = ["a", "b"]
            .iter()
            .flat_map(|m| ["patch configmaps", "create configmaps"].map(|w| (m, w)))
            .map(|(m, w)| counts.get(*m).and_then(|c| c.get(w)).copied().unwrap_or(0))
            .sum();
        let stale = writes.saturating_sub(2 * RACE_ROUNDS as u64);
        println!("{stale} of {RACE_ROUNDS} losers sent their stale resourceVersion and got 409");
        assert!(
            stale >= RACE_ROUNDS as u64 / 2,
            "too few races reached the server with a stale version: {stale} ({counts:?})"
        );
    }
}

// ---- Citus groups ------------------------------------------------------------------------------

impl Store {
    /// The coordinator `c0` (group 0), `w1` and `w1b` (group 1) and `w2` (group 2).
    async fn citus_groups(&self) -> [Box<dyn Dcs>; 4] {
        let t = timing(10, 3);
        [
            self.citus_member("c0", 0, t).await,
            self.citus_member("w1", 1, t).await,
            self.citus_member("w1b", 1, t).await,
            self.citus_member("w2", 2, t).await,
        ]
    }

    /// A member of Citus group `group` (Kubernetes: its Pod carries the `citus-group` label).
    async fn citus_member(&self, name: &str, group: u32, timing: Timing) -> Box<dyn Dcs> {
        match self.backend {
            Backend::Etcd => Box::new(self.etcd_member(name, Some(group), timing)),
            Backend::Kubernetes => {
                let mut pod_labels = labels();
                pod_labels.insert("citus-group".into(), group.to_string());
                let ip = citus_ip(name);
                self.kube().create_pod(NS, name, &pod_labels, &ip).await;
                Box::new(kube_member(self.kube(), name, timing, |c| c.group = Some(group)).await)
            }
        }
    }

    /// Read requests as (ranges or config map LISTs, Pod LISTs). etcd: its cumulative count of
    /// Range calls from all clients (etcd's own metrics), no Pods; Kubernetes: `client`'s LISTs
    /// since the last call (the server's counts are reset).
    async fn read_requests(&self, client: &str) -> (u64, u64) {
        match self.backend {
            Backend::Etcd => {
                let url = format!("{}/metrics", self.etcd.as_ref().expect("etcd").client_url());
                let text = reqwest::get(&url)
                    .await
                    .expect("etcd metrics")
                    .text()
                    .await
                    .expect("etcd metrics text");
                let ranges = text
                    .lines()
                    .find(|l| {
                        l.starts_with("grpc_server_started_total{")
                            && l.contains(r#"grpc_method="Range""#)
                    })
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
                    .expect("etcd counts Range calls");
                (ranges as u64, 0)
            }
            Backend::Kubernetes => {
                let counts = self.kube().request_counts().await;
                self.kube().reset_request_counts().await;
                let get = |what: &str| {
                    counts
                        .get(client)
                        .and_then(|c| c.get(what))
                        .copied()
                        .unwrap_or(0)
                };
                (get("list configmaps"), get("list pods"))
            }
        }
    }
}

/// A distinct Pod IP per member name.
fn citus_ip(name: &str) -> String {
    format!(
        "10.0.1.{}",
        10 + name.bytes().map(u32::from).sum::<u32>() % 200
    )
}

/// Member data as a Citus node publishes it, addresses derived from the name.
fn citus_data(name: &str, role: Role) -> MemberData {
    let ip = citus_ip(name);
    MemberData {
        conn_url: Some(format!("postgres://{ip}:5432/citus")),
        api_url: Some(format!("http://{ip}:8008/patroni")),
        state: "running".into(),
        role,
        ..Default::default()
    }
}

fn member_names(c: &dcs::Cluster) -> Vec<&str> {
    c.members.iter().map(|m| m.name.as_str()).collect()
}

/// The coordinator reads every worker group (lock holder, members with their data, config) in
/// the same single round trip as its own group; workers read only their group, and
/// `get_group(0)` gives them the coordinator's leader with one read. Garbage in a worker group is
/// reported naming the object and never fails the read.
async fn citus_coordinator_reads_every_group(backend: Backend) {
    let store = Store::start(backend).await;
    let [c0, w1, w1b, w2] = store.citus_groups().await;
    for (m, name, role) in [
        (&c0, "c0", Role::Primary),
        (&w1, "w1", Role::Primary),
        (&w1b, "w1b", Role::Replica),
        (&w2, "w2", Role::Primary),
    ] {
        m.touch_member(&citus_data(name, role))
            .await
            .expect("touch");
    }
    for m in [&c0, &w1, &w2] {
        m.get_cluster().await.expect("read");
        assert!(m.attempt_to_acquire_leader().await.expect("acquire"));
    }
    assert!(w1
        .set_config_value(&json!({"ttl": 20}), None)
        .await
        .expect("group 1 config"));

    let full = wait_until(
        "the coordinator sees both worker groups",
        Duration::from_secs(5),
        || async {
            let c = c0.get_cluster().await.expect("coordinator read");
            (c.workers.len() == 2
                && c.workers
                    .get(&1)
                    .is_some_and(|w| w.members.len() == 2 && w.config.is_some()))
            .then_some(c)
        },
    )
    .await;
    assert_eq!(full.leader_name(), Some("c0"));
    assert_eq!(member_names(&full), ["c0"]);
    let g1 = &full.workers[&1];
    assert_eq!(g1.leader_name(), Some("w1"));
    assert_eq!(member_names(g1), ["w1", "w1b"]);
    assert_eq!(
        g1.leader_member().map(|m| &m.data),
        Some(&citus_data("w1", Role::Primary))
    );
    assert_eq!(
        g1.member("w1b").map(|m| &m.data),
        Some(&citus_data("w1b", Role::Replica))
    );
    assert_eq!(
        g1.config.as_ref().map(|c| c.raw["ttl"].clone()),
        Some(json!(20))
    );
    assert!(g1.workers.is_empty());
    let g2 = &full.workers[&2];
    assert_eq!(g2.leader_name(), Some("w2"));
    assert_eq!(
        g2.leader_member().and_then(|m| m.data.conn_url.clone()),
        citus_data("w2", Role::Primary).conn_url
    );
    assert!(full.warnings.is_empty(), "{:?}", full.warnings);

    // A worker reads its own group only, and the coordinator's with get_group(0).
    let own = wait_until(
        "group 1 with both members",
        Duration::from_secs(5),
        || async {
            let c = w1.get_cluster().await.expect("worker read");
            (c.members.len() == 2).then_some(c)
        },
    )
    .await;
    assert!(own.workers.is_empty());
    assert_eq!(own.leader_name(), Some("w1"));
    assert_eq!(member_names(&own), ["w1", "w1b"]);
    let coordinator = w1.get_group(0).await.expect("worker reads group 0");
    assert_eq!(coordinator.leader_name(), Some("c0"));
    assert_eq!(
        coordinator
            .leader_member()
            .and_then(|m| m.data.api_url.clone()),
        citus_data("c0", Role::Primary).api_url
    );
    assert_eq!(member_names(&coordinator), ["c0"]);
    assert!(coordinator.workers.is_empty());
    // Pods come from the watch cache, which may still lack the latest member data.
    let other = wait_until(
        "group 1 with both members",
        Duration::from_secs(5),
        || async {
            let c = w2.get_group(1).await.expect("worker reads group 1");
            (c.members.len() == 2).then_some(c)
        },
    )
    .await;
    assert_eq!(other.leader_name(), Some("w1"));
    assert_eq!(member_names(&other), ["w1", "w1b"]);
    let empty = w1.get_group(7).await.expect("absent group");
    assert!(empty.leader.is_none() && empty.members.is_empty());

    // Round trips: one range / one LIST per read, whatever the number of groups; Pods come
    // from the watch cache once it is in sync.
    if backend == Backend::Kubernetes {
        let kube = store.kube();
        let synced = poll_until(Duration::from_secs(5), || async {
            kube.reset_request_counts().await;
            c0.get_cluster().await.ok()?;
            w1.get_group(0).await.ok()?;
            let counts = kube.request_counts().await;
            let pod_lists = |client: &str| {
                counts
                    .get(client)
                    .and_then(|c| c.get("list pods"))
                    .copied()
                    .unwrap_or(0)
            };
            (pod_lists("c0") + pod_lists("w1") == 0).then_some(())
        })
        .await;
        assert!(synced.is_some(), "the Pod caches never served a read");
    }
    let (before, _) = store.read_requests("c0").await;
    for _ in 0..3 {
        let c = c0.get_cluster().await.expect("coordinator read");
        assert_eq!(c.workers.len(), 2);
    }
    let (after, pods) = store.read_requests("c0").await;
    let ranges = if backend == Backend::Etcd {
        after - before
    } else {
        after
    };
    assert_eq!(ranges, 3, "3 coordinator reads, requests: {ranges}");
    assert_eq!(pods, 0);
    store.read_requests("w1").await;
    let (before, _) = store.read_requests("w1").await;
    w1.get_group(0).await.expect("group 0");
    let (after, pods) = store.read_requests("w1").await;
    let ranges = if backend == Backend::Etcd {
        after - before
    } else {
        after
    };
    assert_eq!((ranges, pods), (1, 0), "one read for get_group");

    // Garbage in a worker group: named warnings, the read still succeeds.
    let named: Vec<String> = match backend {
        Backend::Etcd => {
            let etcd = store.etcd.as_ref().expect("etcd");
            etcd.put("/service/demo/2/members/broken", "{garbage")
                .await
                .expect("put");
            etcd.put("/service/demo/2/config", "[1, 2")
                .await
                .expect("put");
            vec![
                "/service/demo/2/members/broken".into(),
                "/service/demo/2/config".into(),
            ]
        }
        Backend::Kubernetes => {
            let kube = store.kube();
            let mut pod_labels = labels();
            pod_labels.insert("citus-group".into(), "2".into());
            create_broken_pod(kube, &pod_labels, "10.0.2.99").await;
            let mut cm_labels = labels();
            cm_labels.insert("citus-group".into(), "2".into());
            let cm = json!({"metadata": {"name": "demo-2-config", "labels": cm_labels,
                "annotations": {"config": "[1, 2"}}});
            let (status, body) = post_config_map(kube, &cm).await;
            assert_eq!(status, 201, "{body}");
            vec!["Pod broken".into(), "ConfigMap demo-2-config".into()]
        }
    };
    let seen = poll_until(Duration::from_secs(5), || async {
        let c = c0
            .get_cluster()
            .await
            .expect("the coordinator read must survive garbage");
        let g2 = c.workers.get(&2)?;
        named
            .iter()
            .all(|n| {
                g2.warnings.iter().any(|w| w.contains(n.as_str()))
                    && c.warnings.iter().any(|w| w.contains(n.as_str()))
            })
            .then_some(c)
    })
    .await;
    let c = match seen {
        Some(c) => c,
        None => {
            let c = c0.get_cluster().await.expect("read");
            panic!("warnings do not name all of {named:?}: {:?}", c.warnings)
        }
    };
    let g2 = &c.workers[&2];
    assert_eq!(g2.leader_name(), Some("w2"));
    assert!(g2.config.is_none());
    assert!(g2.member("broken").is_none_or(|m| !m.data.is_running()));
    assert_eq!(c.workers[&1].leader_name(), Some("w1"));
    // Read on its own, group 2 reports the same problems.
    let direct = w1
        .get_group(2)
        .await
        .expect("group 2 read survives garbage");
    assert!(
        named
            .iter()
            .all(|n| direct.warnings.iter().any(|w| w.contains(n.as_str()))),
        "{:?}",
        direct.warnings
    );
}

/// A worker group's lock changing hands wakes the coordinator's watch within a second (new
/// holder, release); worker renewals and member updates do not, and workers are not woken by
/// other groups' locks.
async fn citus_worker_leader_change_wakes_coordinator(backend: Backend) {
    let store = Store::start(backend).await;
    let [c0, w1, w1b, w2] = store.citus_groups().await;
    for m in [&c0, &w1, &w1b, &w2] {
        m.get_cluster().await.expect("read");
    }
    assert!(c0.attempt_to_acquire_leader().await.expect("acquire"));
    while c0.watch(Duration::from_millis(300)).await {}

    // How long after `act` started (the write being sent) the watch of `watcher` returned.
    async fn woken_after<F: std::future::Future<Output = ()>>(
        watcher: &dyn Dcs,
        act: F,
    ) -> Option<Duration> {
        let ((woke, woke_at), acted_at) = tokio::join!(
            async { (watcher.watch(Duration::from_secs(5)).await, Instant::now()) },
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let started = Instant::now();
                act.await;
                started
            }
        );
        woke.then(|| woke_at.saturating_duration_since(acted_at))
    }

    let delay = woken_after(c0.as_ref(), async {
        assert!(w1.attempt_to_acquire_leader().await.expect("w1 acquires"));
    })
    .await
    .expect("a new worker leader did not wake the coordinator");
    assert!(delay < Duration::from_secs(1), "noticed after {delay:?}");
    println!("{backend:?}: worker lock acquired, coordinator woken after {delay:?}");
    let c = c0.get_cluster().await.expect("read");
    assert_eq!(c.workers.get(&1).and_then(|w| w.leader_name()), Some("w1"));

    // Quiet: renewals and member data of workers do not wake the coordinator.
    while c0.watch(Duration::from_millis(300)).await {}
    let (woke, ()) = tokio::join!(c0.watch(Duration::from_millis(1500)), async {
        for i in 0..3u64 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let g1 = w1.get_cluster().await.expect("read");
            assert!(w1
                .update_leader(&g1, Some(100 + i), None)
                .await
                .expect("renew"));
            let mut data = citus_data("w1b", Role::Replica);
            data.xlog_location = Some(100 + i);
            w1b.touch_member(&data).await.expect("touch");
        }
    });
    assert!(
        !woke,
        "worker renewals or member updates woke the coordinator"
    );

    // A worker is not woken by another group's lock.
    w1.get_cluster().await.expect("read");
    while w1.watch(Duration::from_millis(300)).await {}
    let (woke, ()) = tokio::join!(w1.watch(Duration::from_millis(1500)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(w2.attempt_to_acquire_leader().await.expect("w2 acquires"));
    });
    assert!(!woke, "group 2's lock woke a group 1 member");

    // Switchover in group 1: release, then the other member takes the lock.
    while c0.watch(Duration::from_millis(300)).await {}
    let delay = woken_after(c0.as_ref(), async {
        assert!(w1.delete_leader(Some(200)).await.expect("release"));
    })
    .await
    .expect("a worker release did not wake the coordinator");
    assert!(
        delay < Duration::from_secs(1),
        "release noticed after {delay:?}"
    );
    let c = c0.get_cluster().await.expect("read");
    assert_eq!(c.workers.get(&1).and_then(|w| w.leader_name()), None);
    while c0.watch(Duration::from_millis(300)).await {}
    w1b.get_cluster().await.expect("read");
    let delay = woken_after(c0.as_ref(), async {
        assert!(w1b.attempt_to_acquire_leader().await.expect("w1b acquires"));
    })
    .await
    .expect("the new worker leader did not wake the coordinator");
    assert!(
        delay < Duration::from_secs(1),
        "new holder noticed after {delay:?}"
    );
    println!("{backend:?}: worker switchover, coordinator woken after {delay:?}");
    let c = c0.get_cluster().await.expect("read");
    assert_eq!(c.workers.get(&1).and_then(|w| w.leader_name()), Some("w1b"));
    assert_eq!(c.workers.get(&2).and_then(|w| w.leader_name()), Some("w2"));
}

/// A worker leader that stops renewing is no longer the coordinator's view of the group's
/// leader once its ttl has run out (etcd: the lease expires; Kubernetes: the coordinator's own
/// tracker of that group's lock), and never before.
async fn citus_expired_worker_lock_is_dropped(backend: Backend) {
    let store = Store::start(backend).await;
    let c0 = store.citus_member("c0", 0, timing(10, 3)).await;
    let w1 = store.citus_member("w1", 1, timing(3, 2)).await;
    w1.touch_member(&citus_data("w1", Role::Primary))
        .await
        .expect("touch");
    w1.get_cluster().await.expect("read");
    assert!(w1.attempt_to_acquire_leader().await.expect("acquire"));
    let acquired = Instant::now();
    let c = c0.get_cluster().await.expect("read");
    assert_eq!(c.workers.get(&1).and_then(|w| w.leader_name()), Some("w1"));
    // The worker's agent dies: no renewals, no release.
    drop(w1);
    let gone = poll_until(Duration::from_secs(10), || async {
        let c = c0.get_cluster().await.expect("read");
        let holder = c
            .workers
            .get(&1)
            .and_then(|w| w.leader_name().map(str::to_string));
        if holder.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        holder.is_none().then(|| acquired.elapsed())
    })
    .await
    .expect("the dead worker leader was never dropped");
    println!("{backend:?}: dead worker leader dropped after {gone:?} (ttl 3 s)");
    assert!(
        gone >= Duration::from_millis(2900),
        "dropped before its ttl: {gone:?}"
    );
    assert!(gone < Duration::from_secs(7), "dropped late: {gone:?}");
}

/// The leader writes the failsafe topology with its renew — on Kubernetes in the same PATCH as
/// the lock — every member reads it, `None` leaves it alone and an empty one removes it.
async fn failsafe_topology_rides_on_the_renew(backend: Backend) {
    let store = Store::start(backend).await;
    let a = store.member("a", timing(10, 3)).await;
    let b = store.member("b", timing(10, 3)).await;
    a.get_cluster().await.expect("read");
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    let topology: dcs::FailsafeTopology = [
        ("a".to_string(), "http://10.0.0.5:8008/patroni".to_string()),
        ("b".to_string(), "http://10.0.0.6:8008/patroni".to_string()),
    ]
    .into_iter()
    .collect();
    let cluster = a.get_cluster().await.expect("read");
    assert_eq!(cluster.failsafe, None);
    if backend == Backend::Kubernetes {
        store.kube().reset_request_counts().await;
    }
    assert!(a
        .update_leader(&cluster, Some(1), Some(&topology))
        .await
        .expect("renew with the topology"));
    if backend == Backend::Kubernetes {
        let counts = store.kube().request_counts().await;
        let writes: u64 = counts
            .get("a")
            .map(|c| {
                c.iter()
                    .filter(|(k, _)| {
                        !k.starts_with("get") && !k.starts_with("list") && !k.starts_with("watch")
                    })
                    .map(|(_, n)| *n)
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(writes, 1, "one write per renew: {counts:?}");
    }
    let seen = wait_until_ok(
        "b to read the failsafe topology",
        Duration::from_secs(5),
        || async {
            let c = b.get_cluster().await?;
            anyhow::ensure!(c.failsafe.is_some(), "no failsafe yet");
            Ok(c.failsafe)
        },
    )
    .await;
    assert_eq!(seen.as_ref(), Some(&topology));
    // Renewing without a topology keeps the stored one.
    let cluster = a.get_cluster().await.expect("read");
    assert!(a
        .update_leader(&cluster, Some(2), None)
        .await
        .expect("renew"));
    assert_eq!(
        a.get_cluster().await.expect("read").failsafe.as_ref(),
        Some(&topology)
    );
    // An empty topology removes it.
    let cluster = a.get_cluster().await.expect("read");
    assert!(a
        .update_leader(&cluster, Some(3), Some(&dcs::FailsafeTopology::new()))
        .await
        .expect("renew removing the topology"));
    assert_eq!(a.get_cluster().await.expect("read").failsafe, None);
    // Nobody else may write it through a renew of a lock it does not hold.
    let cluster = b.get_cluster().await.expect("read");
    assert!(!b
        .update_leader(&cluster, None, Some(&topology))
        .await
        .expect("renew by a non-holder"));
    assert_eq!(b.get_cluster().await.expect("read").failsafe, None);
}

macro_rules! contract_suite {
    ($($case:ident),* $(,)?) => {
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Etcd).await
                }
            )*
        }
        mod kubernetes {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Kubernetes).await
                }
            )*
        }
    };
}

contract_suite!(
    acquire_is_exclusive,
    renew_keeps_then_loses,
    release_by_holder_only,
    cas_on_config_failover_sync,
    initialize_race,
    member_publish,
    watch_wakes_on_release,
    watch_wakes_on_lock_expiry,
    garbage_is_reported,
    race_never_two_winners,
    citus_coordinator_reads_every_group,
    citus_worker_leader_change_wakes_coordinator,
    citus_expired_worker_lock_is_dropped,
    failsafe_topology_rides_on_the_renew,
);

// ---- Kubernetes only ---------------------------------------------------------------------------

mod kubernetes_only {
    use super::*;

    async fn setup(names: &[&str], t: Timing) -> (KubeApiServer, Vec<Kubernetes>) {
        let kube = KubeApiServer::launch().await;
        let mut members = Vec::new();
        for n in names {
            members.push(kube_member(&kube, n, t, |_| {}).await);
        }
        (kube, members)
    }

    fn count(counts: &BTreeMap<String, BTreeMap<String, u64>>, client: &str, what: &str) -> u64 {
        counts
            .get(client)
            .and_then(|c| c.get(what))
            .copied()
            .unwrap_or(0)
    }

    /// Someone else changes the leader object under the holder: the renew re-reads and goes on
    /// when the lock is still ours, and gives up without overwriting when it is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conflicts_reread_and_never_overwrite() {
        let (kube, m) = setup(&["a"], timing(10, 3)).await;
        let a = &m[0];
        a.get_cluster().await.expect("read");
        assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
        let cluster = a.get_cluster().await.expect("read");
        // Keep a's watch from telling it about the foreign write: its cached version goes stale.
        kube.inject(json!({"fail": {"status": 500, "verb": "watch", "resource": "configmaps", "client": "a"}}))
            .await;
        kube.inject(json!({"drop_watches": true})).await;
        patch(
            &kube,
            "configmaps",
            "demo-leader",
            json!({"metadata": {"annotations": {"note": "x"}}}),
        )
        .await;
        kube.reset_request_counts().await;
        assert!(a
            .update_leader(&cluster, Some(7), None)
            .await
            .expect("renew after a foreign write"));
        let counts = kube.request_counts().await;
        assert_eq!(count(&counts, "a", "get configmaps"), 1, "{counts:?}");
        let obj = kube
            .get("configmaps", NS, "demo-leader")
            .await
            .expect("leader object");
        assert_eq!(obj["metadata"]["annotations"]["optime"], "7");
        assert_eq!(obj["metadata"]["annotations"]["note"], "x");
        // Taken over behind our back: the renew fails and the new holder stays.
        patch(
            &kube,
            "configmaps",
            "demo-leader",
            json!({"metadata": {"annotations": {"leader": "z"}}}),
        )
        .await;
        assert!(!a
            .update_leader(&cluster, Some(8), None)
            .await
            .expect("renew of a lost lock"));
        let obj = kube
            .get("configmaps", NS, "demo-leader")
            .await
            .expect("leader object");
        assert_eq!(obj["metadata"]["annotations"]["leader"], "z");
        assert_eq!(obj["metadata"]["annotations"]["optime"], "7");
        assert!(!a.delete_leader(None).await.expect("release of a lost lock"));
        assert_eq!(
            kube.get("configmaps", NS, "demo-leader")
                .await
                .expect("leader")["metadata"]["annotations"]["leader"],
            "z"
        );
    }

    /// The leader object deleted under the holder (by hand, or `patronictl remove`): the next
    /// renew creates it again with the same holder, acquireTime and transitions — no needless
    /// failover — and when another member created it first, the renew fails without touching it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleted_leader_object_is_recreated_by_its_holder() {
        let (kube, m) = setup(&["a"], timing(10, 3)).await;
        let a = &m[0];
        a.get_cluster().await.expect("read");
        assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
        let cluster = a.get_cluster().await.expect("read");
        let before = kube
            .get("configmaps", NS, "demo-leader")
            .await
            .expect("leader object");
        delete_leader_object(&kube).await;
        assert!(a
            .update_leader(&cluster, Some(11), None)
            .await
            .expect("renew after the delete"));
        let after = kube
            .get("configmaps", NS, "demo-leader")
            .await
            .expect("leader object created again");
        let ann = |o: &Value, k: &str| o["metadata"]["annotations"][k].clone();
        assert_eq!(ann(&after, "leader"), "a");
        assert_eq!(ann(&after, "optime"), "11");
        assert_eq!(ann(&after, "acquireTime"), ann(&before, "acquireTime"));
        assert_eq!(ann(&after, "transitions"), ann(&before, "transitions"));

        // Deleted again, and b creates it first: a's renew must fail and leave b's lock alone.
        delete_leader_object(&kube).await;
        let created = json!({"metadata": {"name": "demo-leader", "namespace": NS,
            "labels": {"application": "patroni", "cluster-name": "demo"},
            "annotations": {"leader": "b", "ttl": "10", "renewTime": "2026-01-01T00:00:00.000000+00:00"}}});
        let (code, body) = post_config_map(&kube, &created).await;
        assert_eq!(code, 201, "create the leader object as b: {body}");
        assert!(!a
            .update_leader(&cluster, Some(12), None)
            .await
            .expect("renew of a lock someone else created"));
        let now = kube
            .get("configmaps", NS, "demo-leader")
            .await
            .expect("leader object");
        assert_eq!(ann(&now, "leader"), "b");
    }

    /// The leader object carries Patroni's annotations.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leader_annotations_are_patronis() {
        let (kube, m) = setup(&["a", "b"], timing(10, 3)).await;
        let (a, b) = (&m[0], &m[1]);
        a.get_cluster().await.expect("read");
        assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
        let obj = kube
            .get("configmaps", NS, "demo-leader")
            .await
            .expect("leader object");
        let ann = &obj["metadata"]["annotations"];
        assert_eq!(ann["leader"], "a");
        assert_eq!(ann["ttl"], "10");
        assert_eq!(ann["transitions"], "0");
        let acquired = ann["acquireTime"]
            .as_str()
            .expect("acquireTime")
            .to_string();
        assert!(
            chrono::DateTime::parse_from_rfc3339(&acquired).is_ok(),
            "{acquired}"
        );
        assert!(
            acquired.ends_with("+00:00") && acquired.len() == 32,
            "{acquired}"
        );
        assert_eq!(obj["metadata"]["labels"], json!(labels()));
        let cluster = a.get_cluster().await.expect("read");
        assert!(a
            .update_leader(&cluster, Some(67108960), None)
            .await
            .expect("renew"));
        let obj = kube
            .get("configmaps", NS, "demo-leader")
            .await
            .expect("leader object");
        let ann = &obj["metadata"]["annotations"];
        assert_eq!(ann["acquireTime"], acquired.as_str());
        assert_ne!(ann["renewTime"], acquired.as_str());
        assert_eq!(ann["optime"], "67108960");
        assert!(ann.get("slots").is_none(), "{ann}");
        // A different holder counts a transition, the same one re-acquiring does not.
        assert!(a.delete_leader(Some(67108961)).await.expect("release"));
        b.get_cluster().await.expect("read");
        assert!(b.attempt_to_acquire_leader().await.expect("b acquires"));
        let ann = kube
            .get("configmaps", NS, "demo-leader")
            .await
            .expect("leader")["metadata"]["annotations"]
            .clone();
        assert_eq!(
            (ann["leader"].as_str(), ann["transitions"].as_str()),
            (Some("b"), Some("1"))
        );
        assert_eq!(ann["optime"], "67108961");
    }

    /// 429 with Retry-After and 500s are retried within retry_timeout; 403 names verb and object.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throttling_and_server_errors_are_retried_forbidden_is_named() {
        let (kube, m) = setup(&["a"], timing(10, 4)).await;
        let a = &m[0];
        kube.inject(json!({"fail": {"status": 429, "retry_after": 1, "count": 1, "verb": "patch", "resource": "configmaps", "client": "a"}})).await;
        assert!(a.set_config_value(&json!({"ttl": 10}), None).await.is_ok());
        let started = Instant::now();
        kube.inject(json!({"fail": {"status": 429, "retry_after": 1, "count": 1, "verb": "patch", "resource": "configmaps", "client": "a"}})).await;
        assert!(a
            .set_config_value(&json!({"ttl": 11}), None)
            .await
            .expect("after 429"));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(1),
            "Retry-After not honoured: {waited:?}"
        );
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        kube.inject(json!({"fail": {"status": 500, "count": 2, "verb": "list", "resource": "configmaps", "client": "a"}})).await;
        let cluster = a.get_cluster().await.expect("read after two 500s");
        assert_eq!(cluster.config.map(|c| c.raw), Some(json!({"ttl": 11})));
        // A Retry-After beyond the budget gives up at once.
        kube.inject(json!({"fail": {"status": 429, "retry_after": 30, "count": 1, "verb": "list", "resource": "configmaps", "client": "a"}})).await;
        let started = Instant::now();
        let e = a
            .get_cluster()
            .await
            .expect_err("throttled beyond the budget");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(e, DcsError::Unreachable(_)) && e.to_string().contains("429"),
            "{e}"
        );
        kube.inject(json!({"fail": {"status": 403, "verb": "patch", "resource": "configmaps", "client": "a"}})).await;
        let e = a
            .set_config_value(&json!({"ttl": 12}), None)
            .await
            .expect_err("forbidden");
        let msg = e.to_string();
        assert!(matches!(e, DcsError::Forbidden(_)), "{msg}");
        assert!(
            msg.contains(r#"cannot patch configmaps "demo-config" in namespace "default""#),
            "{msg}"
        );
        kube.clear_faults().await;
        assert!(a
            .set_config_value(&json!({"ttl": 12}), None)
            .await
            .expect("after clearing"));
    }

    /// A frozen API server: every call gives up within retry_timeout; afterwards all works again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_server_is_unreachable_within_the_budget() {
        let (kube, m) = setup(&["a", "b"], timing(10, 2)).await;
        let (a, b) = (&m[0], &m[1]);
        a.get_cluster().await.expect("read");
        assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
        let cluster = a.get_cluster().await.expect("read");
        kube.pause();
        let started = Instant::now();
        let (read, renew) = tokio::join!(b.get_cluster(), a.update_leader(&cluster, Some(1), None));
        let elapsed = started.elapsed();
        kube.resume();
        assert!(matches!(read, Err(DcsError::Unreachable(_))), "{read:?}");
        assert!(matches!(renew, Err(DcsError::Unreachable(_))), "{renew:?}");
        assert!(
            elapsed >= Duration::from_millis(1500),
            "gave up too early: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_millis(3500),
            "took too long: {elapsed:?}"
        );
        let cluster = a.get_cluster().await.expect("read after resume");
        assert!(a
            .update_leader(&cluster, Some(2), None)
            .await
            .expect("renew after resume"));
        assert_eq!(leader_of(b).await.as_deref(), Some("a"));
    }

    /// A watch that was down while the lock changed hands and the event window was compacted
    /// resumes with a 410 Gone, lists again, and wakes the loop for what it missed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_relists_after_compaction() {
        let (kube, m) = setup(&["a", "b"], timing(10, 3)).await;
        let (a, b) = (&m[0], &m[1]);
        assert!(a
            .set_config_value(&json!({"ttl": 10}), None)
            .await
            .expect("config"));
        b.get_cluster().await.expect("read");
        while b.watch(Duration::from_millis(300)).await {}
        // b's watch breaks and cannot come back.
        kube.inject(json!({"fail": {"status": 500, "verb": "watch", "resource": "configmaps", "client": "b"}})).await;
        kube.inject(json!({"drop_watches": true})).await;
        a.get_cluster().await.expect("read");
        assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
        kube.compact().await;
        kube.reset_request_counts().await;
        kube.clear_faults().await;
        let started = Instant::now();
        assert!(
            b.watch(Duration::from_secs(5)).await,
            "the missed acquisition did not wake b"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let counts = kube.request_counts().await;
        assert!(
            count(&counts, "b", "list configmaps") >= 1,
            "no re-LIST after 410: {counts:?}"
        );
        assert_eq!(leader_of(b).await.as_deref(), Some("a"));
        // The new watch works.
        while b.watch(Duration::from_millis(300)).await {}
        assert!(a.delete_leader(None).await.expect("release"));
        assert!(
            b.watch(Duration::from_secs(5)).await,
            "watch dead after the re-LIST"
        );
    }

    /// At idle a member reads with exactly one LIST of the config maps (Pods from the watch
    /// cache) and the leader renews with one PATCH.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_list_per_read_one_patch_per_renew() {
        let (kube, m) = setup(&["a", "b"], timing(10, 3)).await;
        let (a, b) = (&m[0], &m[1]);
        a.get_cluster().await.expect("read");
        assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
        b.touch_member(&data(Role::Replica, "running"))
            .await
            .expect("touch");
        // Let the Pod caches sync.
        let synced = poll_until(Duration::from_secs(5), || async {
            kube.reset_request_counts().await;
            b.get_cluster().await.ok()?;
            (count(&kube.request_counts().await, "b", "list pods") == 0).then_some(())
        })
        .await;
        assert!(synced.is_some(), "the Pod cache never served a read");
        kube.reset_request_counts().await;
        for _ in 0..5 {
            let cluster = a.get_cluster().await.expect("read");
            assert!(a
                .update_leader(&cluster, Some(1), None)
                .await
                .expect("renew"));
            b.get_cluster().await.expect("read");
            b.touch_member(&data(Role::Replica, "running"))
                .await
                .expect("touch");
        }
        let counts = kube.request_counts().await;
        assert_eq!(count(&counts, "a", "list configmaps"), 5, "{counts:?}");
        assert_eq!(count(&counts, "b", "list configmaps"), 5, "{counts:?}");
        assert_eq!(count(&counts, "a", "patch configmaps"), 5, "{counts:?}");
        assert_eq!(
            count(&counts, "a", "list pods") + count(&counts, "b", "list pods"),
            0,
            "{counts:?}"
        );
        assert_eq!(
            count(&counts, "b", "patch pods"),
            0,
            "unchanged member data rewritten: {counts:?}"
        );
    }

    /// Endpoints mode: the leader Endpoints carries the leader's address and ports and a
    /// reference to its Pod; release empties it; the config Service exists; a loopback address
    /// is refused by the API server (422) and surfaces as an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn endpoints_mode_subsets() {
        let kube = KubeApiServer::launch().await;
        let endpoints = |cfg: &mut KubernetesConfig| {
            cfg.use_endpoints = true;
            cfg.ports = vec![json!({"name": "postgresql", "port": 5432})];
        };
        let a = kube_member(&kube, "a", timing(10, 3), endpoints).await;
        a.get_cluster().await.expect("read");
        assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
        a.touch_member(&data(Role::Primary, "running"))
            .await
            .expect("touch");
        let pod = kube.get("pods", NS, "a").await.expect("pod a");
        let ip = pod["status"]["podIP"].as_str().expect("pod ip").to_string();
        let ep = kube
            .get("endpoints", NS, "demo")
            .await
            .expect("leader Endpoints");
        assert_eq!(ep["metadata"]["annotations"]["leader"], "a");
        let subset = &ep["subsets"][0];
        assert_eq!(subset["addresses"][0]["ip"], ip.as_str());
        assert_eq!(subset["addresses"][0]["targetRef"]["kind"], "Pod");
        assert_eq!(subset["addresses"][0]["targetRef"]["name"], "a");
        assert_eq!(
            subset["addresses"][0]["targetRef"]["uid"],
            pod["metadata"]["uid"]
        );
        assert_eq!(subset["ports"][0]["port"], 5432);
        assert_eq!(subset["ports"][0]["name"], "postgresql");
        let svc = kube
            .get("services", NS, "demo-config")
            .await
            .expect("config Service");
        assert_eq!(svc["spec"]["clusterIP"], "None");
        let cluster = a.get_cluster().await.expect("read");
        assert_eq!(cluster.leader_name(), Some("a"));
        assert!(a
            .update_leader(&cluster, Some(5), None)
            .await
            .expect("renew"));
        assert!(a
            .set_config_value(&json!({"ttl": 10}), None)
            .await
            .expect("config"));
        assert!(kube.get("endpoints", NS, "demo-config").await.is_some());
        assert!(a.delete_leader(Some(6)).await.expect("release"));
        let ep = kube
            .get("endpoints", NS, "demo")
            .await
            .expect("leader Endpoints");
        assert!(
            ep.get("subsets")
                .is_none_or(|s| s.as_array().is_some_and(Vec::is_empty)),
            "{ep}"
        );
        assert!(
            ep["metadata"]["annotations"].get("leader").is_none(),
            "{ep}"
        );

        let c = kube_member(&kube, "c", timing(10, 3), |cfg| {
            endpoints(cfg);
            cfg.pod_ip = Some("127.0.0.1".into());
        })
        .await;
        c.get_cluster().await.expect("read");
        let e = c
            .attempt_to_acquire_leader()
            .await
            .expect_err("loopback address accepted");
        let msg = e.to_string();
        assert!(msg.contains("422") && msg.contains("endpoints"), "{msg}");
        let ep = kube
            .get("endpoints", NS, "demo")
            .await
            .expect("leader Endpoints");
        assert!(
            ep["metadata"]["annotations"].get("leader").is_none(),
            "{ep}"
        );
    }

    /// Citus: a worker sees only its group's objects and Pods, and its objects carry the group
    /// label while the selector does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn citus_groups_are_separate() {
        let kube = KubeApiServer::launch().await;
        let mut pod_labels = labels();
        pod_labels.insert("citus-group".into(), "1".into());
        kube.create_pod(NS, "w1", &pod_labels, "10.0.1.1").await;
        pod_labels.insert("citus-group".into(), "2".into());
        kube.create_pod(NS, "w2", &pod_labels, "10.0.1.2").await;
        let w1 = kube_member(&kube, "w1", timing(10, 3), |c| c.group = Some(1)).await;
        let w2 = kube_member(&kube, "w2", timing(10, 3), |c| c.group = Some(2)).await;
        w1.touch_member(&data(Role::Replica, "running"))
            .await
            .expect("touch");
        w2.touch_member(&data(Role::Replica, "running"))
            .await
            .expect("touch");
        w1.get_cluster().await.expect("read");
        w2.get_cluster().await.expect("read");
        assert!(w1
            .attempt_to_acquire_leader()
            .await
            .expect("w1 acquires group 1"));
        assert!(w2
            .attempt_to_acquire_leader()
            .await
            .expect("w2 acquires group 2"));
        let obj = kube
            .get("configmaps", NS, "demo-1-leader")
            .await
            .expect("group 1 leader");
        assert_eq!(obj["metadata"]["labels"]["citus-group"], "1");
        let c1 = w1.get_cluster().await.expect("read");
        assert_eq!(c1.leader_name(), Some("w1"));
        assert_eq!(
            c1.members
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["w1"]
        );
        let c2 = w2.get_cluster().await.expect("read");
        assert_eq!(c2.leader_name(), Some("w2"));
        assert_eq!(
            c2.members
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["w2"]
        );
    }

    /// Everything a member does, once: reads, member data, the lock's whole life, config,
    /// history, failover, sync, initialize, status, watch.
    async fn full_workflow(a: &Kubernetes, b: &Kubernetes) {
        a.get_cluster().await.expect("read");
        b.get_cluster().await.expect("read");
        a.touch_member(&data(Role::Replica, "running"))
            .await
            .expect("touch");
        assert!(a.initialize(true, "").await.expect("initialize"));
        a.cancel_initialization().await.expect("cancel");
        assert!(a.initialize(true, "").await.expect("initialize"));
        assert!(a
            .initialize(false, "7123456789012345678")
            .await
            .expect("sysid"));
        assert!(a
            .set_config_value(&json!({"ttl": 10}), None)
            .await
            .expect("config"));
        a.set_history_value(&[]).await.expect("history");
        a.get_cluster().await.expect("read");
        assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
        a.touch_member(&data(Role::Primary, "running"))
            .await
            .expect("touch");
        let cluster = a.get_cluster().await.expect("read");
        assert!(a
            .update_leader(&cluster, Some(1), None)
            .await
            .expect("renew"));
        a.write_status(&dcs::Status {
            optime: Some(2),
            ..Default::default()
        })
        .await
        .expect("status");
        let f = Failover {
            member: Some("b".into()),
            ..Default::default()
        };
        assert!(b.set_failover_value(&f, None).await.expect("failover"));
        let version = a
            .get_cluster()
            .await
            .expect("read")
            .failover
            .and_then(|f| f.version);
        assert!(a
            .delete_failover(version.as_deref())
            .await
            .expect("failover delete"));
        let sync = SyncState {
            leader: Some("a".into()),
            sync_standby: vec!["b".into()],
            ..Default::default()
        };
        assert!(a.set_sync_state(&sync, None).await.expect("sync"));
        assert!(a.delete_sync_state(None).await.expect("sync delete"));
        while b.watch(Duration::from_millis(200)).await {}
        assert!(a.delete_leader(Some(3)).await.expect("release"));
        assert!(
            b.watch(Duration::from_secs(5)).await,
            "release did not wake b"
        );
        b.delete_member().await.expect("delete member");
        a.close().await.expect("close");
    }

    /// The shipped kubernetes/rbac.yaml allows everything a member does, in both modes; a Role
    /// without `patch` on configmaps makes writes fail with Forbidden naming verb, resource and
    /// object; bypass_api_service without access to the `kubernetes` Endpoints turns itself off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shipped_rbac_suffices_and_denials_are_named() {
        let yaml = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../kubernetes/rbac.yaml"
        ))
        .expect("read kubernetes/rbac.yaml");
        let kube = KubeApiServer::launch().await;
        kube.enforce_rbac(&yaml, &["regent"], &[]).await;
        let a = kube_member(&kube, "a", timing(10, 3), |_| {}).await;
        let b = kube_member(&kube, "b", timing(10, 3), |c| c.bypass_api_service = true).await;
        full_workflow(&a, &b).await;
        let denied = kube.denied_requests().await;
        assert_eq!(
            denied.len(),
            1,
            "only bypass_api_service's read may be refused: {denied:?}"
        );
        assert_eq!(denied[0]["resource"], "endpoints");
        assert_eq!(denied[0]["name"], "kubernetes");

        kube.enforce_rbac(&yaml, &["regent", "regent-endpoints"], &[])
            .await;
        kube.reset_denied_requests().await;
        let endpoints = |c: &mut KubernetesConfig| c.use_endpoints = true;
        let ea = kube_member(&kube, "ea", timing(10, 3), endpoints).await;
        let eb = kube_member(&kube, "eb", timing(10, 3), endpoints).await;
        full_workflow(&ea, &eb).await;
        let denied = kube.denied_requests().await;
        assert!(
            denied.is_empty(),
            "Endpoints mode needs more than the Roles allow: {denied:?}"
        );

        let without_patch = yaml.replacen(
            "resources: [configmaps]\n    verbs: [create, get, list, patch, watch]",
            "resources: [configmaps]\n    verbs: [create, get, list, watch]",
            1,
        );
        assert_ne!(
            without_patch, yaml,
            "the configmaps rule of rbac.yaml changed shape"
        );
        kube.enforce_rbac(&without_patch, &["regent"], &[]).await;
        let e = a
            .set_config_value(&json!({"ttl": 11}), None)
            .await
            .expect_err("patch without permission");
        let msg = e.to_string();
        assert!(matches!(e, DcsError::Forbidden(_)), "{msg}");
        assert!(
            msg.contains(r#"cannot patch configmaps "demo-config" in namespace "default""#),
            "{msg}"
        );
        let denied = kube.denied_requests().await;
        let server_says = denied
            .last()
            .and_then(|d| d["message"].as_str())
            .expect("the refused patch is listed")
            .to_string();
        assert!(
            msg.contains(&server_says),
            "the server's message {server_says:?} is missing: {msg}"
        );
        a.get_cluster().await.expect("reads are still allowed");
    }

    /// The same over HTTPS, the CA coming from the kubeconfig.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn works_over_https() {
        let kube = KubeApiServer::launch_tls().await;
        assert!(kube.url().starts_with("https://"));
        let a = kube_member(&kube, "a", timing(10, 3), |_| {}).await;
        let b = kube_member(&kube, "b", timing(10, 3), |_| {}).await;
        full_workflow(&a, &b).await;
        // A kubeconfig with a CA that did not sign the server certificate is refused.
        let other_ca = test_pki::write_ca(kube.dir(), "other");
        let pem = std::fs::read_to_string(&other_ca).expect("read the other CA");
        let path = kube.write_kubeconfig_with_ca(&kube.dir().join("kubeconfig-c"), "c", Some(&pem));
        kube.create_pod(NS, "c", &labels(), "10.0.0.77").await;
        let c = Kubernetes::connect(KubernetesConfig {
            scope: SCOPE.into(),
            name: "c".into(),
            kubeconfig: Some(path),
            timing: timing(10, 2),
            ..Default::default()
        })
        .await
        .expect("connect");
        let e = c
            .get_cluster()
            .await
            .expect_err("untrusted server accepted");
        assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    }
}
