//! The real patronictl drives a Regent cluster through Regent's REST API and the DCS, on etcd and
//! on the Kubernetes API test server: list, pause and resume (PATCH /config, members report it),
//! edit-config (the dynamic config in the DCS, applied by every member), switchover --force
//! (POST /switchover), restart --force (POST /restart). patronictl is looked up next to
//! $PATRONI_BIN, else at /opt/regent-patroni/bin/patronictl (where .ci/run installs it); without
//! it the test fails.
//!
//! On Kubernetes patronictl reads its own configuration file (`scope` and a `kubernetes` section
//! with the members' namespace, labels and `use_endpoints`) and a kubeconfig with its own token,
//! so the test server counts its requests apart and the test can check it really used the API.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use regent_tests::config::{Backend, KUBE_APP_LABEL, KUBE_NAMESPACE};
use regent_tests::tools::patronictl_bin;
use regent_tests::{wait_until, TestCluster};

/// Bearer token of patronictl's kubeconfig: the name its API requests are counted under.
const PATRONICTL_TOKEN: &str = "patronictl";

/// How patronictl reaches the cluster's DCS: options before the command, and its environment.
struct Patronictl {
    bin: PathBuf,
    dcs_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Patronictl {
    /// etcd: `--dcs-url etcd3://...`. Kubernetes: `-c <file>` (patronictl has no URL form for
    /// Kubernetes) and KUBECONFIG pointing at the test server with patronictl's own token.
    fn for_cluster(bin: PathBuf, cluster: &TestCluster) -> Patronictl {
        match cluster.backend() {
            Backend::Etcd => Patronictl {
                bin,
                dcs_args: vec![
                    "--dcs-url".to_string(),
                    format!("etcd3://{}", cluster.etcd().client_addr()),
                ],
                env: Vec::new(),
            },
            Backend::Kubernetes { use_endpoints } => {
                let server = cluster.kube();
                let config = server.dir().join("patronictl.yaml");
                write_kube_config(&config, cluster.scope(), use_endpoints);
                let kubeconfig = server.kubeconfig(PATRONICTL_TOKEN);
                Patronictl {
                    bin,
                    dcs_args: vec!["-c".to_string(), config.display().to_string()],
                    env: vec![("KUBECONFIG".to_string(), kubeconfig.display().to_string())],
                }
            }
        }
    }

    /// Run one command; panics with its output unless it succeeds.
    fn run(&self, args: &[&str]) -> String {
        let out: Output = std::process::Command::new(&self.bin)
            .args(&self.dcs_args)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("PATRONICTL_CONFIG_FILE")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "patronictl {args:?} failed ({:?}): {text}",
            out.status.code()
        );
        text
    }
}

/// patronictl's configuration for the members' Kubernetes DCS: the same namespace, labels and
/// leader-object kind as the members (tests/src/config.rs). No top-level `namespace`: Patroni
/// would copy it into the Kubernetes section.
fn write_kube_config(path: &Path, scope: &str, use_endpoints: bool) {
    let (label, value) = KUBE_APP_LABEL;
    let text = format!(
        "scope: {scope}\nkubernetes:\n  namespace: {KUBE_NAMESPACE}\n  labels:\n    \
         {label}: {value}\n  use_endpoints: {use_endpoints}\n"
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The table row of `member` in `patronictl list` output.
fn list_row<'a>(table: &'a str, member: &str) -> &'a str {
    let cell = format!("| {member} ");
    table
        .lines()
        .find(|line| line.starts_with(&cell))
        .unwrap_or_else(|| panic!("no row for {member} in:\n{table}"))
}

regent_tests::backend_tests! {
    patronictl_operates_a_regent_cluster: [etcd, kubernetes, kubernetes_endpoints];
}

async fn patronictl_operates_a_regent_cluster(backend: Backend) {
    let bin = patronictl_bin();
    let cluster = TestCluster::start_on(backend, "pctl", 3).await;
    let tag = format!("[patronictl/{}]", backend.label());
    let leader = cluster.wait_for_bootstrap().await;
    let ctl = Patronictl::for_cluster(bin, &cluster);
    if backend.is_kubernetes() {
        cluster.kube().reset_request_counts().await;
    }

    // list: patronictl reads the members from the DCS and finds Regent's leader.
    let list = ctl.run(&["list", "pctl"]);
    println!("{tag}\n{list}");
    assert!(list.contains("+ Cluster: pctl ("), "{list}");
    assert!(list_row(&list, &leader).contains("| Leader "), "{list}");
    for other in cluster.others(&leader) {
        assert!(
            list_row(&list, other.name()).contains("| Replica "),
            "{list}"
        );
    }

    // pause --wait returns once every member reports the pause.
    let out = ctl.run(&["pause", "pctl", "--wait"]);
    assert!(
        out.contains("Success: cluster management is paused"),
        "{out}"
    );
    for m in cluster.all() {
        let status = m.patroni_status().await.unwrap_or_default();
        assert_eq!(status["pause"], true, "{}: {status}", m.name());
    }
    let list = ctl.run(&["list", "pctl"]);
    assert!(list.contains("Maintenance mode: on"), "{list}");
    let out = ctl.run(&["resume", "pctl", "--wait"]);
    assert!(
        out.contains("Success: cluster management is resumed"),
        "{out}"
    );

    // edit-config writes the dynamic config in the DCS; every member applies the parameter.
    let out = ctl.run(&["edit-config", "pctl", "-p", "work_mem=5MB", "--force"]);
    assert!(out.contains("work_mem"), "{out}");
    let shown = ctl.run(&["show-config", "pctl"]);
    assert!(shown.contains("work_mem: 5MB"), "{shown}");
    for m in cluster.all() {
        wait_until(
            "the member to apply work_mem from the DCS",
            Duration::from_secs(30),
            || async { (m.show("work_mem").await.as_deref() == Some("5MB")).then_some(()) },
        )
        .await;
    }

    // switchover --force to a named candidate, through POST /switchover on the leader.
    let candidate = cluster.others(&leader)[0].name().to_string();
    let out = ctl.run(&[
        "switchover",
        "pctl",
        "--leader",
        &leader,
        "--candidate",
        &candidate,
        "--force",
    ]);
    assert!(
        out.contains(&format!("Successfully switched over to \"{candidate}\"")),
        "{out}"
    );
    wait_until("the candidate to lead", Duration::from_secs(60), || async {
        (cluster.dcs_leader().await.as_deref() == Some(candidate.as_str())).then_some(())
    })
    .await;
    cluster
        .wait_for_member_streaming(&leader, &candidate, Duration::from_secs(60))
        .await;

    // restart --force of the old leader, now a replica.
    let out = ctl.run(&["restart", "pctl", &leader, "--force"]);
    assert!(
        out.contains(&format!("Success: restart on member {leader}")),
        "{out}"
    );
    cluster
        .wait_for_member_streaming(&leader, &candidate, Duration::from_secs(60))
        .await;

    // On Kubernetes, everything above went through the API server under patronictl's token.
    if backend.is_kubernetes() {
        let counts = cluster.kube().request_counts().await;
        let ours: u64 = counts
            .get(PATRONICTL_TOKEN)
            .map(|by_request| by_request.values().sum())
            .unwrap_or_default();
        println!("{tag} patronictl made {ours} Kubernetes API requests");
        assert!(
            ours > 0,
            "no API request under patronictl's token: {counts:?}"
        );
    }
}
