//! kubernetes/rbac.yaml is enough, and a rule missing from it shows: Regent clusters on the
//! Kubernetes API test server with the server enforcing only the Roles of that file (ConfigMap
//! mode: the `regent` Role; Endpoints mode: `regent` and `regent-endpoints`) for the members'
//! tokens. Three members bootstrap, replicate and fail over after kill -9 of the leader
//! without a single refused request; with the Pod `patch` rule removed, the members log a
//! clear error naming the verb and the resource.
//!
//! The test server binds every chosen Role to every member token (RoleBindings are not
//! modelled); the harness's and the fixture's own requests are exempt.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use regent_tests::config::{Backend, KUBE_NAMESPACE};
use regent_tests::kube::KubeApiServer;
use regent_tests::{wait_until, Member, TestCluster};
use serde_json::Value;

const REPLICATION_DEADLINE: Duration = Duration::from_secs(30);

fn rbac_yaml() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kubernetes/rbac.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The Roles a member gets in each mode, as kubernetes/rbac.yaml documents them.
fn roles_for(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Kubernetes {
            use_endpoints: true,
        } => &["regent", "regent-endpoints"],
        _ => &["regent"],
    }
}

/// A cluster whose members run only under the given Roles of `yaml`: the Pods are created and
/// the configurations written first (as the fixture, exempt), then the rules are switched on
/// (and shown to apply to a member's token), then the agents start.
async fn cluster_under_rbac(
    scope: &str,
    backend: Backend,
    members: usize,
    yaml: &str,
    roles: &[&str],
) -> TestCluster {
    let cluster = TestCluster::builder(scope)
        .members(members)
        .backend(backend)
        .start_agents(false)
        .start()
        .await;
    let server = cluster.kube();
    server.enforce_rbac(yaml, roles, &[]).await;
    // No Role of the file lets a member delete Pods (a dry run, should it be allowed).
    let member0 = cluster.members[0].name().to_string();
    let path = format!("/api/v1/namespaces/{KUBE_NAMESPACE}/pods/{member0}?dryRun=All");
    let (status, body) = request_as(server, &member0, reqwest::Method::DELETE, &path).await;
    assert_eq!(
        status, 403,
        "DELETE {path} as {member0} must be refused: {body}"
    );
    server.reset_denied_requests().await;
    server.reset_request_counts().await;
    for member in &cluster.members {
        member.start();
    }
    cluster
}

/// `"<verb> <resource> <name>"` of every refused request of a member of `cluster`.
async fn members_denied(cluster: &TestCluster) -> Vec<String> {
    let names: Vec<&str> = cluster.members.iter().map(Member::name).collect();
    cluster
        .kube()
        .denied_requests()
        .await
        .iter()
        .filter(|d| names.contains(&d["client"].as_str().unwrap_or("")))
        .map(|d| {
            format!(
                "{} {} {} {} ({})",
                d["client"].as_str().unwrap_or("?"),
                d["verb"].as_str().unwrap_or("?"),
                d["resource"].as_str().unwrap_or("?"),
                d["name"].as_str().unwrap_or(""),
                d["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// One request as `token` (a member's identity), for proving the rules apply to it.
async fn request_as(
    server: &KubeApiServer,
    token: &str,
    method: reqwest::Method,
    path: &str,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method.clone(), format!("{}{path}", server.url()))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path} as {token}: {e}"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The verbs and resources each member used (for the log).
async fn usage(cluster: &TestCluster) -> BTreeMap<String, Vec<String>> {
    let counts = cluster.kube().request_counts().await;
    cluster
        .members
        .iter()
        .map(|m| {
            let used = counts
                .get(m.name())
                .map(|c| c.keys().cloned().collect())
                .unwrap_or_default();
            (m.name().to_string(), used)
        })
        .collect()
}

async fn bootstrap_and_failover_under_rbac_yaml(backend: Backend) {
    let started = Instant::now();
    let scope = match backend {
        Backend::Kubernetes {
            use_endpoints: true,
        } => "rbace",
        _ => "rbacc",
    };
    let tag = format!("[{scope}/{}]", backend.label());
    let roles = roles_for(backend);
    let cluster = cluster_under_rbac(scope, backend, 3, &rbac_yaml(), roles).await;

    let leader = cluster.wait_for_bootstrap().await;
    let bootstrapped = started.elapsed();
    let old = cluster.member(&leader);
    old.create_probe_table().await.expect("create probe table");
    for id in 1..=5 {
        old.write_probe(id).await.expect("write probe");
    }
    cluster
        .wait_for_probe_on(&cluster.others(&leader), 5, REPLICATION_DEADLINE)
        .await;

    let killed_at = Instant::now();
    old.kill9_with_postmaster();
    let new_leader = wait_until(
        "a new leader after kill -9 of the old one",
        cluster.ttl() * 3,
        || async {
            let primaries = cluster.members_answering("/primary", 200).await;
            match primaries.as_slice() {
                [one] if *one != leader => Some(one.clone()),
                _ => None,
            }
        },
    )
    .await;
    let failover = killed_at.elapsed();
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(30)).await,
        new_leader
    );
    let new = cluster.member(&new_leader);
    new.write_probe(100).await.expect("write on the new leader");
    let third: Vec<&Member> = cluster
        .others(&leader)
        .into_iter()
        .filter(|m| m.name() != new_leader)
        .collect();
    cluster
        .wait_for_probe_on(&third, 100, REPLICATION_DEADLINE)
        .await;
    if backend.is_kubernetes() {
        cluster
            .wait_for_pod_role(&new_leader, "primary", Duration::from_secs(10))
            .await;
    }

    let denied = members_denied(&cluster).await;
    assert!(
        denied.is_empty(),
        "requests of the members refused under {roles:?} of kubernetes/rbac.yaml:\n{}",
        denied.join("\n")
    );
    for member in &cluster.members {
        let log = member.log_contents();
        assert!(
            !log.contains("forbidden"),
            "{} logged a refused request:\n{log}",
            member.name()
        );
    }
    println!(
        "{tag} under Roles {roles:?}: leader {leader} and replicas streaming after {:.1} s; \
         kill -9 of {leader}: {new_leader} primary after {:.1} s; no request refused; used: \
         {:?}",
        bootstrapped.as_secs_f64(),
        failover.as_secs_f64(),
        usage(&cluster).await
    );
}

/// kubernetes/rbac.yaml without `patch` on pods: members cannot publish their state.
fn without_pod_patch(yaml: &str) -> String {
    let rule = "resources: [pods]\n    verbs: [get, list, patch, watch]";
    assert!(
        yaml.contains(rule),
        "kubernetes/rbac.yaml no longer has the pods rule this test edits:\n{yaml}"
    );
    yaml.replace(rule, "resources: [pods]\n    verbs: [get, list, watch]")
}

async fn missing_rule_is_logged_with_verb_and_resource(backend: Backend) {
    let scope = "rbacm";
    let yaml = without_pod_patch(&rbac_yaml());
    let cluster = cluster_under_rbac(scope, backend, 2, &yaml, roles_for(backend)).await;
    let name = cluster.members[0].name().to_string();
    let member = cluster.member(&name);
    let expected = format!("forbidden: cannot patch pods \"{name}\"");
    let started = Instant::now();
    wait_until(
        &format!("{name} to log {expected:?}"),
        Duration::from_secs(60),
        || async { member.log_contents().contains(&expected).then_some(()) },
    )
    .await;
    let log = member.log_contents();
    let line = log
        .lines()
        .find(|l| l.contains(&expected))
        .unwrap_or_default()
        .to_string();
    // The server's own words and the hint at the missing rule come along.
    assert!(
        line.contains(&format!(
            "cannot patch resource \"pods\" in API group \"\" in the namespace \"{KUBE_NAMESPACE}\""
        )),
        "{line}"
    );
    assert!(line.contains("'patch' on 'pods'"), "{line}");
    // A refused request is an error to report, not a reason to exit.
    assert!(member.agent_running(), "{name} exited:\n{log}");
    let denied = members_denied(&cluster).await;
    assert!(!denied.is_empty());
    assert!(
        denied.iter().all(|d| d.contains(" patch pods ")),
        "only the removed rule may be missing: {denied:#?}"
    );
    println!(
        "[{scope}/{}] without pods/patch: {name} logged after {:.1} s: {line}",
        backend.label(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_mode_needs_only_the_regent_role() {
    bootstrap_and_failover_under_rbac_yaml(Backend::Kubernetes {
        use_endpoints: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_mode_needs_only_both_roles() {
    bootstrap_and_failover_under_rbac_yaml(Backend::Kubernetes {
        use_endpoints: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_rule_is_logged_with_verb_and_resource() {
    missing_rule_is_logged_with_verb_and_resource(Backend::Kubernetes {
        use_endpoints: false,
    })
    .await;
}
