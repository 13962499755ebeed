//! The real Patroni runs a two-member cluster on the Kubernetes API test server, in ConfigMap
//! mode and in Endpoints mode: it bootstraps, publishes its objects and Pod labels exactly as
//! on a real cluster, the replica streams, and after the leader dies the other member takes
//! the lock. Every request Patroni made must have been understood (no 400/415/422/5xx).
//!
//! Patroni is looked up at $PATRONI_BIN, else /opt/regent-patroni/bin/patroni (where .ci/run
//! installs it); without it the test fails.

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use regent_tests::cluster::{annotation, pod_ip};
use regent_tests::config::{Backend, KUBE_NAMESPACE};
use regent_tests::tools::patroni_bin;
use regent_tests::{wait_until_ok, TestCluster};
use serde_json::Value;

const STARTUP: Duration = Duration::from_secs(120);

/// What Patroni wrote on the leader object, checked field by field.
fn check_leader_object(object: &Value, leader: &str) -> anyhow::Result<()> {
    ensure!(
        annotation(object, "leader") == Some(leader),
        "leader annotation is {:?}, want {leader}",
        annotation(object, "leader")
    );
    for key in ["acquireTime", "renewTime"] {
        let time = annotation(object, key).with_context(|| format!("no {key}"))?;
        chrono::DateTime::parse_from_rfc3339(time)
            .with_context(|| format!("{key} {time:?} is not an ISO-8601 time"))?;
    }
    for key in ["ttl", "transitions", "optime"] {
        let value = annotation(object, key).with_context(|| format!("no {key}"))?;
        value
            .parse::<u64>()
            .with_context(|| format!("{key} {value:?} is not an integer"))?;
    }
    Ok(())
}

/// Every request line in the server log (`client METHOD uri status ms`) made by a member, with
/// a status that means the server did not understand it.
fn misunderstood_requests(log: &str, members: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [client, _method, _uri, status, _ms] = fields.as_slice() else {
                return false;
            };
            members.contains(client)
                && (matches!(*status, "400" | "404" | "405" | "415" | "422")
                    || status.starts_with('5'))
        })
        .map(String::from)
        .collect()
}

async fn patroni_cluster(use_endpoints: bool) {
    let patroni = patroni_bin();
    let scope = if use_endpoints { "pe" } else { "pc" };
    let cluster = TestCluster::builder(scope)
        .members(2)
        .backend(Backend::Kubernetes { use_endpoints })
        .binary(patroni)
        .start()
        .await;
    let server = cluster.kube();
    let kind = if use_endpoints {
        "endpoints"
    } else {
        "configmaps"
    };
    let leader_name = if use_endpoints {
        scope.to_string()
    } else {
        format!("{scope}-leader")
    };

    let leader = cluster.wait_for_leader(STARTUP).await;
    let replica = if leader == format!("{scope}-0") {
        format!("{scope}-1")
    } else {
        format!("{scope}-0")
    };
    cluster
        .wait_for_member_streaming(&replica, &leader, STARTUP)
        .await;

    // The leader object, the config object with `initialize`, and the member Pods.
    let object = server
        .get(kind, KUBE_NAMESPACE, &leader_name)
        .await
        .unwrap_or_else(|| panic!("no {kind} {leader_name}"));
    if let Err(e) = check_leader_object(&object, &leader) {
        panic!("leader object: {e:#}: {object}");
    }
    let labels = &object["metadata"]["labels"];
    assert_eq!(labels["cluster-name"], scope, "{object}");
    assert_eq!(labels["application"], "regent-test", "{object}");
    let config = server
        .get(kind, KUBE_NAMESPACE, &format!("{scope}-config"))
        .await
        .unwrap_or_else(|| panic!("no {kind} {scope}-config"));
    let initialize = annotation(&config, "initialize").unwrap_or("");
    assert!(
        !initialize.is_empty() && initialize.chars().all(|c| c.is_ascii_digit()),
        "initialize should be the system identifier: {config}"
    );
    let dynamic: Value = serde_json::from_str(annotation(&config, "config").unwrap_or("null"))
        .unwrap_or_else(|e| panic!("config annotation is not JSON: {e}: {config}"));
    // Patroni raises ttl to its minimum of 20 s; the leader publishes the effective one.
    let ttl = dynamic["ttl"].as_u64().unwrap_or(0);
    assert!(ttl >= u64::from(cluster.timing().ttl), "{dynamic}");
    assert_eq!(
        annotation(&object, "ttl"),
        Some(ttl.to_string().as_str()),
        "{object}"
    );

    cluster
        .wait_for_pod_role(&leader, "primary", Duration::from_secs(30))
        .await;
    cluster
        .wait_for_pod_role(&replica, "replica", Duration::from_secs(30))
        .await;
    let pod = cluster.kube_pod(&replica).await.expect("replica pod");
    let status: Value = serde_json::from_str(annotation(&pod, "status").unwrap_or("null"))
        .unwrap_or_else(|e| panic!("pod status annotation is not JSON: {e}: {pod}"));
    assert_eq!(status["role"], "replica", "{status}");
    assert_eq!(status["state"], "running", "{status}");

    // Patroni's own view agrees.
    let (code, view) = cluster
        .member(&replica)
        .api_get("/cluster")
        .await
        .expect("GET /cluster");
    assert_eq!(code, 200, "{view}");
    let roles: Vec<(String, String)> = view["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|x| {
                    (
                        x["name"].as_str().unwrap_or("").to_string(),
                        x["role"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        roles.contains(&(leader.clone(), "leader".to_string()))
            && roles.contains(&(replica.clone(), "replica".to_string())),
        "{view}"
    );

    if use_endpoints {
        // The leader Endpoints carry the leader's Pod IP and Postgres port; Patroni also made
        // the headless Service that keeps `<scope>-config` alive.
        let leader_index: usize = leader
            .rsplit('-')
            .next()
            .and_then(|i| i.parse().ok())
            .expect("member index");
        let subsets = &object["subsets"];
        assert_eq!(
            subsets[0]["addresses"][0]["ip"],
            pod_ip(leader_index).as_str(),
            "{object}"
        );
        assert_eq!(
            subsets[0]["ports"][0]["port"],
            cluster.member(&leader).pg_port(),
            "{object}"
        );
        let service = server
            .get("services", KUBE_NAMESPACE, &format!("{scope}-config"))
            .await
            .unwrap_or_else(|| panic!("no service {scope}-config"));
        assert_eq!(service["spec"]["clusterIP"], "None", "{service}");
    }

    // The leader dies with its Postgres: the replica takes the lock and promotes.
    let transitions: u64 = annotation(&object, "transitions")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    cluster.member(&leader).kill9_with_postmaster();
    let taken = wait_until_ok(
        &format!("{replica} holding the {kind} lock"),
        Duration::from_secs(90),
        || async {
            let object = server
                .get(kind, KUBE_NAMESPACE, &leader_name)
                .await
                .context("leader object gone")?;
            check_leader_object(&object, &replica)?;
            if !cluster.member(&replica).is_primary().await {
                bail!("{replica} holds the lock but is not primary yet");
            }
            Ok(object)
        },
    )
    .await;
    let new_transitions: u64 = annotation(&taken, "transitions")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert_eq!(new_transitions, transitions + 1, "{taken}");
    cluster
        .wait_for_pod_role(&replica, "primary", Duration::from_secs(30))
        .await;
    if use_endpoints {
        let replica_index: usize = replica
            .rsplit('-')
            .next()
            .and_then(|i| i.parse().ok())
            .expect("member index");
        assert_eq!(
            taken["subsets"][0]["addresses"][0]["ip"],
            pod_ip(replica_index).as_str(),
            "{taken}"
        );
    }

    // Each member used its own token, list+watch caches and patches.
    let counts = server.request_counts().await;
    for member in [&leader, &replica] {
        let mine = counts
            .get(member.as_str())
            .unwrap_or_else(|| panic!("no requests counted for {member}: {counts:?}"));
        for key in [
            format!("list {kind}"),
            format!("watch {kind}"),
            "list pods".to_string(),
            "watch pods".to_string(),
            "patch pods".to_string(),
        ] {
            assert!(
                mine.get(&key).is_some_and(|n| *n > 0),
                "{member}: no {key} in {mine:?}"
            );
        }
    }
    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    let bad = misunderstood_requests(&log, &[leader.as_str(), replica.as_str()]);
    assert!(
        bad.is_empty(),
        "requests the server did not accept: {bad:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_on_configmaps() {
    patroni_cluster(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_on_endpoints() {
    patroni_cluster(true).await;
}
