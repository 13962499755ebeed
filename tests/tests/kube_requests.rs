//! Kubernetes API requests of an idle cluster, per member per minute, for Regent and for the real
//! Patroni with the same configuration (ttl 10, loop_wait 2): each member authenticates with its
//! own token, so the test server counts its requests apart. Regent must stay within a few
//! requests per loop; Patroni's numbers are printed beside them (Patroni is looked up at
//! $PATRONI_BIN, else /opt/regent-patroni/bin/patroni, where .ci/run installs it; without it the
//! test fails).
//!
//! The window is `REGENT_KUBE_IDLE_SECS` seconds (default 20); `bench/run.py --dcs kubernetes`
//! measures longer windows.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use regent_tests::config::Backend;
use regent_tests::tools::patroni_bin;
use regent_tests::TestCluster;

type Counts = BTreeMap<String, BTreeMap<String, u64>>;

fn idle_window() -> Duration {
    let secs = std::env::var("REGENT_KUBE_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(20);
    Duration::from_secs(secs.max(5))
}

/// Bring the cluster to a settled state (leader, replicas streaming, Pods labelled), then count
/// every member's requests over `window`; returns the counts of the members and the real length
/// of the window.
async fn idle_requests(cluster: &TestCluster, window: Duration) -> (Counts, Duration) {
    let leader = cluster.wait_for_bootstrap().await;
    for member in cluster.all() {
        let want = if member.name() == leader {
            "primary"
        } else {
            "replica"
        };
        cluster
            .wait_for_pod_role(member.name(), want, Duration::from_secs(30))
            .await;
    }
    let server = cluster.kube();
    server.reset_request_counts().await;
    let started = Instant::now();
    // The measurement is the window itself: nothing to wait for but time.
    tokio::time::sleep(window).await;
    let counts = server.request_counts().await;
    let measured = started.elapsed();
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(5)).await,
        leader,
        "the leader changed during the idle window"
    );
    let members: Counts = counts
        .into_iter()
        .filter(|(client, _)| cluster.all().iter().any(|m| m.name() == client))
        .collect();
    (members, measured)
}

fn per_minute(count: u64, window: Duration) -> f64 {
    count as f64 * 60.0 / window.as_secs_f64()
}

fn total(by_request: &BTreeMap<String, u64>) -> u64 {
    by_request.values().sum()
}

fn print_counts(agent: &str, counts: &Counts, window: Duration) {
    println!(
        "[kreq] {agent}: API requests per member per minute at idle ({:.1} s window)",
        window.as_secs_f64()
    );
    for (member, by_request) in counts {
        let detail: Vec<String> = by_request
            .iter()
            .map(|(request, n)| format!("{request} {:.1}", per_minute(*n, window)))
            .collect();
        println!(
            "[kreq]   {member}: {:.1}/min ({})",
            per_minute(total(by_request), window),
            detail.join(", ")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_request_rate_per_member_regent_and_patroni() {
    let window = idle_window();
    let backend = Backend::Kubernetes {
        use_endpoints: false,
    };

    let cluster = TestCluster::start_on(backend, "kreq", 3).await;
    let loops_per_minute = 60.0 / f64::from(cluster.timing().loop_wait);
    let (regent, regent_window) = idle_requests(&cluster, window).await;
    drop(cluster);
    print_counts("Regent", &regent, regent_window);
    assert_eq!(
        regent.len(),
        3,
        "every member's requests counted by its token: {regent:?}"
    );
    // One renewal PATCH (leader) and one LIST per loop, plus watches and the odd Pod patch:
    // four requests per loop is already generous.
    let bound = 4.0 * loops_per_minute;
    for (member, by_request) in &regent {
        let rate = per_minute(total(by_request), regent_window);
        assert!(
            rate <= bound,
            "{member} made {rate:.1} requests per minute at idle, more than {bound:.0} \
             (4 per loop): {by_request:?}"
        );
    }

    let patroni_path = patroni_bin();
    let cluster = TestCluster::builder("kreqp")
        .members(3)
        .backend(backend)
        .binary(patroni_path)
        .start()
        .await;
    let (patroni, patroni_window) = idle_requests(&cluster, window).await;
    drop(cluster);
    print_counts("Patroni", &patroni, patroni_window);
    assert_eq!(patroni.len(), 3, "{patroni:?}");
    let sum = |counts: &Counts, window| {
        counts
            .values()
            .map(|r| per_minute(total(r), window))
            .sum::<f64>()
    };
    println!(
        "[kreq] cluster total per minute at idle: Regent {:.1}, Patroni {:.1}",
        sum(&regent, regent_window),
        sum(&patroni, patroni_window)
    );
}
