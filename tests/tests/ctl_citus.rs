//! `regent ctl` on a Citus cluster (a coordinator group and one worker group of two members
//! each), against real Citus when installed and otherwise the stand-in (tests/citus_standin).
//!
//! Guarantees checked here:
//! * Without `--group`, `list` and `topology` show every group, sorted by group then member,
//!   with a Group column and the title " Citus cluster: <scope> ", even when ctl's own
//!   configuration names a worker group; `--group N` narrows to one group and puts it in the
//!   title. Each group has exactly one Leader.
//! * The real patronictl, reading the same DCS, prints the same text: pretty, topology, JSON,
//!   TSV and YAML, with and without `--group` (compared byte for byte, retried while a member's
//!   published LSN moves between the two reads).
//!   A custom tag on one worker member brings the Tags column in every format.
//! * `switchover --force` without `--group` on a Citus cluster is refused, as by patronictl, and
//!   changes nothing; without --force it asks for the group and switches over in that group only.
//! * `version` and `reload` without `--group` reach every member of every group; `--group`
//!   narrows them. On Kubernetes, listing every group costs no more API requests than one group
//!   (the coordinator's single read brings the workers) and writes nothing.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use regent_tests::citus::{ensure_citus, CITUS_DATABASE};
use regent_tests::config::{Backend, KUBE_APP_LABEL, KUBE_NAMESPACE};
use regent_tests::tools::patronictl_bin;
use regent_tests::{regent_bin, wait_until, TestCluster, Timing};
use serde_json::{json, Value};

const MEMBERS_PER_GROUP: usize = 2;
const GROUPS: usize = 2;
const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(180);
/// How long the two tools may disagree while a member's published position moves.
const AGREEMENT_DEADLINE: Duration = Duration::from_secs(30);
const TIMING: Timing = Timing {
    ttl: 10,
    loop_wait: 2,
    retry_timeout: 3,
};
/// Bearer tokens of the tools' kubeconfigs: their requests are counted apart from the members'.
const REGENT_CTL_TOKEN: &str = "regent-ctl-citus";
const PATRONICTL_TOKEN: &str = "patronictl-citus";

/// A command line of one tool: program, options before the command, environment.
struct Tool {
    program: PathBuf,
    leading: Vec<String>,
    env: Vec<(String, String)>,
}

impl Tool {
    fn output(&self, args: &[&str]) -> Output {
        std::process::Command::new(&self.program)
            .args(&self.leading)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("PATRONICTL_CONFIG_FILE")
            .env_remove("PATRONI_CITUS_GROUP")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.program.display()))
    }

    /// stdout of a command that must succeed.
    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "{} {args:?} failed ({:?}): {}{}",
            self.program.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// patronictl's configuration: the members' DCS and a `citus` section naming the worker group
/// (listings without --group must still cover every group).
fn write_patronictl_config(path: &Path, cluster: &TestCluster) {
    let dcs = match cluster.backend() {
        Backend::Etcd => format!("etcd3:\n  hosts: {}\n", cluster.etcd().client_addr()),
        Backend::Kubernetes { use_endpoints } => {
            let (label, value) = KUBE_APP_LABEL;
            format!(
                "kubernetes:\n  namespace: {KUBE_NAMESPACE}\n  labels:\n    {label}: {value}\n  \
                 use_endpoints: {use_endpoints}\n"
            )
        }
    };
    let text = format!(
        "scope: {}\n{dcs}citus:\n  group: 1\n  database: {CITUS_DATABASE}\n",
        cluster.scope()
    );
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// (Group, Member, Role, State) of a JSON listing.
fn json_rows(text: &str) -> Vec<(i64, String, String, String)> {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {text}"))
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (
                r["Group"].as_i64().unwrap_or(-1),
                f("Member"),
                f("Role"),
                f("State"),
            )
        })
        .collect()
}

regent_tests::backend_tests! {
    ctl_lists_every_citus_group_as_patronictl: [etcd, kubernetes];
}

async fn ctl_lists_every_citus_group_as_patronictl(backend: Backend) {
    let tag = format!("[ctl_citus/{}]", backend.label());
    let flavor = ensure_citus();
    println!("{tag} Citus flavor: {}", flavor.describe());
    let cluster = TestCluster::builder("ctlcitus")
        .backend(backend)
        .members(GROUPS * MEMBERS_PER_GROUP)
        .timing(TIMING)
        .configure(|i, cfg| {
            cfg.set(
                "citus",
                json!({"group": i / MEMBERS_PER_GROUP, "database": CITUS_DATABASE}),
            );
            // A worker member with a custom tag: the Tags column, as each format prints it.
            if i == GROUPS * MEMBERS_PER_GROUP - 1 {
                cfg.set("tags", json!({"zone": "b", "rack": "r1"}));
            }
        })
        .start()
        .await;
    let members = cluster.all();
    let names: Vec<String> = members.iter().map(|m| m.name().to_string()).collect();
    let coordinator_config = members[0].config_path();
    let worker_config = members[MEMBERS_PER_GROUP].config_path();
    let kube_env = |token: &str| {
        if backend.is_kubernetes() {
            let kubeconfig = cluster.kube().kubeconfig(token);
            vec![("KUBECONFIG".to_string(), kubeconfig.display().to_string())]
        } else {
            Vec::new()
        }
    };
    let env = kube_env(REGENT_CTL_TOKEN);
    let regent = |config: &Path| Tool {
        program: regent_bin(),
        leading: vec!["ctl".into(), "-c".into(), config.display().to_string()],
        env: env.clone(),
    };
    // ctl configured as a worker member: a listing without --group still shows every group.
    let ctl = regent(&worker_config);

    // Every group: one leader and one streaming replica, as members publish it.
    let want_roles: Vec<(i64, String, String, String)> = {
        let rows = wait_until(
            "each group to have a leader and a streaming replica",
            BOOTSTRAP_DEADLINE,
            || {
                let out = ctl.output(&["list", "-f", "json"]);
                async move {
                    if !out.status.success() {
                        return None;
                    }
                    let rows = json_rows(&String::from_utf8_lossy(&out.stdout));
                    let leaders = rows.iter().filter(|r| r.2 == "Leader").count();
                    let streaming = rows.iter().filter(|r| r.3 == "streaming").count();
                    (rows.len() == GROUPS * MEMBERS_PER_GROUP
                        && leaders == GROUPS
                        && streaming == GROUPS * (MEMBERS_PER_GROUP - 1))
                        .then_some(rows)
                }
            },
        )
        .await;
        rows
    };
    println!("{tag} listing rows: {want_roles:?}");
    // Sorted by group, then member; members i in group i / 2.
    let order: Vec<(i64, String)> = want_roles.iter().map(|r| (r.0, r.1.clone())).collect();
    let expected_order: Vec<(i64, String)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| ((i / MEMBERS_PER_GROUP) as i64, n.clone()))
        .collect();
    assert_eq!(order, expected_order);
    for g in 0..GROUPS as i64 {
        let leaders = want_roles
            .iter()
            .filter(|r| r.0 == g && r.2 == "Leader")
            .count();
        assert_eq!(leaders, 1, "group {g}: {want_roles:?}");
    }

    let pretty = ctl.run(&["list"]);
    println!("{tag} regent ctl list:\n{pretty}");
    let title = format!("+ Citus cluster: {} -", cluster.scope());
    assert!(pretty.starts_with(&title), "{pretty}");
    assert!(pretty
        .lines()
        .nth(1)
        .unwrap_or_default()
        .starts_with("| Group | Member "));

    // --group narrows (and wins over the configured group): one group, named in the title.
    let one = regent(&coordinator_config).run(&["list", "--group", "1"]);
    println!("{tag} regent ctl list --group 1:\n{one}");
    assert!(
        one.starts_with(&format!("+ Citus cluster: {} (group: 1, ", cluster.scope())),
        "{one}"
    );
    let one_json =
        json_rows(&regent(&coordinator_config).run(&["list", "--group", "1", "-f", "json"]));
    let group_one: Vec<String> = one_json.iter().map(|r| r.1.clone()).collect();
    assert_eq!(group_one, names[MEMBERS_PER_GROUP..].to_vec());
    assert!(one_json.iter().all(|r| r.0 == 1), "{one_json:?}");

    let topology = ctl.run(&["topology"]);
    println!("{tag} regent ctl topology:\n{topology}");
    let replicas_indented = topology.lines().filter(|l| l.contains("| + ")).count();
    assert_eq!(
        replicas_indented,
        GROUPS * (MEMBERS_PER_GROUP - 1),
        "{topology}"
    );

    // Every group comes from one read: listing all groups costs no more LIST requests than
    // listing one (the fewest of three runs each, so a watch re-list under load does not count),
    // and writes nothing.
    if backend.is_kubernetes() {
        let kube = cluster.kube();
        let mut fewest_lists = Vec::new();
        for args in [&["list", "--group", "1"][..], &["list"][..]] {
            let mut fewest = u64::MAX;
            for _ in 0..3 {
                kube.reset_request_counts().await;
                ctl.run(args);
                let counts = kube.request_counts().await;
                let mine = counts.get(REGENT_CTL_TOKEN).cloned().unwrap_or_default();
                let writes: Vec<&String> = mine
                    .keys()
                    .filter(|k| !["get ", "list ", "watch "].iter().any(|v| k.starts_with(v)))
                    .collect();
                assert!(writes.is_empty(), "{args:?} wrote: {mine:?}");
                let lists: u64 = mine
                    .iter()
                    .filter(|(k, _)| k.starts_with("list "))
                    .map(|(_, n)| n)
                    .sum();
                println!("{tag} {args:?}: API requests {mine:?}");
                fewest = fewest.min(lists);
            }
            fewest_lists.push(fewest);
        }
        assert!(fewest_lists[0] > 0, "ctl's requests are counted");
        assert!(
            fewest_lists[1] <= fewest_lists[0],
            "LIST requests: all groups {}, one group {}",
            fewest_lists[1],
            fewest_lists[0]
        );
    }

    // Member commands without --group reach every group; --group narrows them.
    let scope = cluster.scope().to_string();
    let version = ctl.run(&["version", &scope]);
    let version_one = ctl.run(&["version", &scope, "--group", "1"]);
    let reload = ctl.run(&["reload", &scope, "--force"]);
    let reload_one = ctl.run(&["reload", &scope, "--group", "1", "--force"]);
    for (i, name) in names.iter().enumerate() {
        let in_group_one = i / MEMBERS_PER_GROUP == 1;
        let line = format!("{name}: Patroni ");
        assert!(version.contains(&line), "{version}");
        assert_eq!(version_one.contains(&line), in_group_one, "{version_one}");
        let reloaded = format!("member {name}");
        assert!(reload.contains(&reloaded), "{reload}");
        assert_eq!(reload_one.contains(&reloaded), in_group_one, "{reload_one}");
    }

    // A switchover needs a group on Citus: refused with --force, nothing changes.
    let refused = ctl.output(&["switchover", "--force"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--group must be specified"), "{err}");

    // The real patronictl agrees, text for text.
    let bin = patronictl_bin();
    let patronictl_config = cluster
        .member(&names[0])
        .member_dir()
        .join("patronictl-citus.yaml");
    write_patronictl_config(&patronictl_config, &cluster);
    let patronictl = Tool {
        program: bin,
        leading: vec!["-c".into(), patronictl_config.display().to_string()],
        env: kube_env(PATRONICTL_TOKEN),
    };
    let cases: [&[&str]; 9] = [
        &["list"],
        &["list", "-f", "json"],
        &["list", "-f", "tsv"],
        &["list", "-f", "yaml"],
        &["list", "-e"],
        &["topology"],
        &["list", "--group", "1"],
        &["list", "--group", "0", "-f", "json"],
        &["topology", "--group", "1"],
    ];
    for args in cases {
        let started = Instant::now();
        loop {
            let ours = ctl.run(args);
            let theirs = patronictl.run(args);
            if ours == theirs {
                println!(
                    "{tag} {args:?}: same output ({} lines)",
                    ours.lines().count()
                );
                break;
            }
            if started.elapsed() > AGREEMENT_DEADLINE {
                panic!("{args:?}: regent ctl and patronictl differ\n--- regent ctl\n{ours}--- patronictl\n{theirs}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // patronictl refuses the same switchover.
    let theirs = patronictl.output(&["switchover", "--force"]);
    assert!(!theirs.status.success());

    interactive_switchover_in_group(&tag, &ctl, &names, 1).await;
    // Both tools still agree on every group after it (roles settle as the sync state follows).
    let key = |rows: Vec<(i64, String, String, String)>| -> Vec<(i64, String, String)> {
        rows.into_iter().map(|r| (r.0, r.1, r.2)).collect()
    };
    let started = Instant::now();
    loop {
        let ours = key(json_rows(&ctl.run(&["list", "-f", "json"])));
        let theirs = key(json_rows(&patronictl.run(&["list", "-f", "json"])));
        if ours == theirs {
            break;
        }
        assert!(
            started.elapsed() < AGREEMENT_DEADLINE,
            "after the switchover: regent ctl {ours:?}, patronictl {theirs:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The scope: member names are `<scope>-<index>`.
fn scope_of(names: &[String]) -> &str {
    names[0]
        .rsplit_once('-')
        .map(|(s, _)| s)
        .unwrap_or_default()
}

/// The leader of `group` in a JSON listing, if any.
fn group_leader(rows: &[(i64, String, String, String)], group: i64) -> Option<String> {
    rows.iter()
        .find(|r| r.0 == group && r.2 == "Leader")
        .map(|r| r.1.clone())
}

/// `regent ctl switchover` without --group asks for the group, then proceeds in that group
/// (its members, its DCS objects) like patronictl.
async fn interactive_switchover_in_group(tag: &str, ctl: &Tool, names: &[String], group: i64) {
    use std::io::Write;
    let rows = json_rows(&ctl.run(&["list", "-f", "json"]));
    let leader = group_leader(&rows, group).expect("group leader");
    let candidate = rows
        .iter()
        .find(|r| r.0 == group && r.1 != leader)
        .map(|r| r.1.clone())
        .expect("a replica in the group");
    assert!(names.contains(&candidate));
    // Answers: Citus group, Primary (default), Candidate, when (now), confirmation.
    let answers = format!("{group}\n\n{candidate}\nnow\ny\n");
    let mut child = std::process::Command::new(&ctl.program)
        .args(&ctl.leading)
        .arg("switchover")
        .envs(ctl.env.iter().map(|(k, v)| (k, v)))
        .env_remove("PATRONICTL_CONFIG_FILE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run regent ctl switchover");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(answers.as_bytes());
    }
    let out = child.wait_with_output().expect("switchover output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{tag} interactive switchover:\n{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Citus group: "), "{text}");
    // Afterwards the group it acted on is shown, named in the title.
    assert!(
        text.contains(&format!(
            "+ Citus cluster: {} (group: {group}, ",
            scope_of(names)
        )),
        "{text}"
    );
    let started = Instant::now();
    wait_until(
        &format!("{candidate} to lead group {group}"),
        Duration::from_secs(90),
        || {
            let out = ctl.output(&["list", "-f", "json"]);
            let candidate = candidate.clone();
            async move {
                let rows = json_rows(&String::from_utf8_lossy(&out.stdout));
                (group_leader(&rows, group) == Some(candidate)).then_some(())
            }
        },
    )
    .await;
    println!(
        "{tag} group {group}: {leader} -> {candidate} in {:?}",
        started.elapsed()
    );
    // The other group kept its leader.
    let rows = json_rows(&ctl.run(&["list", "-f", "json"]));
    assert!(group_leader(&rows, 1 - group).is_some(), "{rows:?}");
}
