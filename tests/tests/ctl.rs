//! `regent ctl` against a live 3-member cluster (etcd, Kubernetes): listings (pretty, JSON) agree
//! with the real patronictl, the dynamic config is shown and edited by both tools (every member
//! applies the change), pause/resume, a switchover and the history it leaves, and a clear failure
//! on a wrong config path. One cluster serves every check to keep the suite short.

use std::process::Output;
use std::time::Duration;

use regent_tests::config::Backend;
use regent_tests::tools::patronictl_bin;
use regent_tests::{regent_bin, wait_until, TestCluster};
use serde_json::Value;

/// `regent ctl -c <config> args...` with the member's environment (KUBECONFIG on Kubernetes).
fn ctl_env(config: &std::path::Path, env: &[(String, String)], args: &[&str]) -> Output {
    std::process::Command::new(regent_bin())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("ctl")
        .arg("-c")
        .arg(config)
        .args(args)
        .env_remove("PATRONICTL_CONFIG_FILE")
        .output()
        .expect("run regent ctl")
}

/// `regent ctl` with `EDITOR` set and `answer` typed at the confirmation prompt.
fn ctl_edit(
    config: &std::path::Path,
    env: &[(String, String)],
    editor: &str,
    answer: &str,
) -> Output {
    use std::io::Write;
    let mut child = std::process::Command::new(regent_bin())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("EDITOR", editor)
        .args(["ctl", "-c"])
        .arg(config)
        .arg("edit-config")
        .env_remove("PATRONICTL_CONFIG_FILE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run regent ctl edit-config");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(answer.as_bytes());
    }
    child
        .wait_with_output()
        .expect("regent ctl edit-config output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "regent ctl {what} failed ({:?}): {}{}",
        o.status.code(),
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

/// (Member, Role, State) of every row of a JSON listing.
fn rows(json: &str) -> Vec<(String, String, String)> {
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let mut out: Vec<(String, String, String)> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {json}"))
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (f("Member"), f("Role"), f("State"))
        })
        .collect();
    out.sort();
    out
}

regent_tests::backend_tests! {
    regent_ctl_on_a_live_cluster: [etcd, kubernetes];
}

async fn regent_ctl_on_a_live_cluster(backend: Backend) {
    let cluster = TestCluster::start_on(backend, "ctl", 3).await;
    let leader = cluster.wait_for_bootstrap().await;
    let config = cluster.member(&leader).config_path();
    // On Kubernetes ctl has its own token, so the test server counts its requests apart.
    let env = if backend.is_kubernetes() {
        cluster.kube().reset_request_counts().await;
        let kubeconfig = cluster.kube().kubeconfig("regent-ctl");
        vec![("KUBECONFIG".to_string(), kubeconfig.display().to_string())]
    } else {
        cluster.member(&leader).spec().agent_env()
    };
    let ctl = |config: &std::path::Path, args: &[&str]| ctl_env(config, &env, args);

    // list, pretty: the title names the cluster and its system id; one leader, two replicas.
    // Members publish their replication state with their next HA cycle.
    let table = wait_until(
        "list to show two streaming replicas",
        Duration::from_secs(30),
        || {
            let t = ok(ctl(&config, &["list"]), "list");
            async move { (t.matches("| streaming ").count() == 2).then_some(t) }
        },
    )
    .await;
    println!("{table}");
    assert!(table.starts_with("+ Cluster: ctl ("), "{table}");
    let row_of = |name: &str| {
        table
            .lines()
            .find(|l| l.contains(&format!("| {name} ")))
            .unwrap_or_else(|| panic!("no row for {name}: {table}"))
            .to_string()
    };
    assert!(row_of(&leader).contains("| Leader "), "{table}");
    for r in cluster.others(&leader) {
        let row = row_of(r.name());
        assert!(
            row.contains("| Replica ") && row.contains("| streaming "),
            "{table}"
        );
    }

    // list, JSON: patronictl's keys.
    let want = wait_until(
        "every replica listed as streaming",
        Duration::from_secs(30),
        || {
            let config = config.clone();
            async move {
                let rows = rows(&ok(ctl(&config, &["list", "-f", "json"]), "list -f json"));
                (rows.iter().filter(|r| r.2 == "streaming").count() == 2).then_some(rows)
            }
        },
    )
    .await;
    assert_eq!(want.len(), 3);
    assert!(
        want.contains(&(leader.clone(), "Leader".into(), "running".into())),
        "{want:?}"
    );
    let json = ok(ctl(&config, &["list", "-f", "json"]), "list -f json");
    let first: Value = serde_json::from_str(&json).expect("JSON listing");
    for key in ["Cluster", "Member", "Host", "Role", "State", "TL"] {
        assert!(first[0].get(key).is_some(), "{key} missing: {json}");
    }

    // The real patronictl reads the same DCS and agrees on members, roles and states.
    // On Kubernetes patronictl needs its own configuration file; patronictl.rs drives it there.
    let patronictl = (!backend.is_kubernetes()).then(patronictl_bin);
    match &patronictl {
        None => println!("[ctl] Kubernetes: patronictl is driven by patronictl.rs there"),
        Some(p) => {
            let out = std::process::Command::new(p)
                .args([
                    "--dcs-url",
                    &format!("etcd3://{}", cluster.etcd().client_addr()),
                    "list",
                    "ctl",
                    "-f",
                    "json",
                ])
                .env_remove("PATRONICTL_CONFIG_FILE")
                .output()
                .expect("run patronictl");
            let theirs = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "patronictl: {theirs} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(rows(&theirs), want, "patronictl: {theirs}");
        }
    }

    // topology: the leader first, replicas indented under it.
    let topo = ok(ctl(&config, &["topology"]), "topology");
    let members: Vec<&str> = topo.lines().skip(3).take(3).collect();
    assert!(members[0].starts_with(&format!("| {leader} ")), "{topo}");
    assert!(
        members[1].starts_with("| + ") && members[2].starts_with("| + "),
        "{topo}"
    );

    // Reading commands write nothing (no member data, no Pod labels, no lock).
    if backend.is_kubernetes() {
        let counts = cluster.kube().request_counts().await;
        let mine = counts.get("regent-ctl").cloned().unwrap_or_default();
        assert!(!mine.is_empty(), "ctl's requests counted: {counts:?}");
        let writes: Vec<&String> = mine
            .keys()
            .filter(|k| !["get ", "list ", "watch "].iter().any(|v| k.starts_with(v)))
            .collect();
        assert!(writes.is_empty(), "list/topology wrote: {mine:?}");
    }

    // show-config is the DCS config as YAML; edit-config --pg/--set --force changes it with CAS
    // and every member applies the new parameter.
    let shown: Value = serde_yaml_ng::from_str(&ok(ctl(&config, &["show-config"]), "show-config"))
        .expect("show-config prints YAML");
    let ttl_before = shown["ttl"].clone();
    assert!(!ttl_before.is_null(), "{shown}");
    let edited = ok(
        ctl(
            &config,
            &[
                "edit-config",
                "--force",
                "--pg",
                "work_mem=7MB",
                "--set",
                "postgresql.parameters.temp_buffers=3MB",
            ],
        ),
        "edit-config",
    );
    assert!(edited.contains("+    work_mem: 7MB"), "{edited}");
    let shown: Value = serde_yaml_ng::from_str(&ok(ctl(&config, &["show-config"]), "show-config"))
        .expect("show-config prints YAML");
    assert_eq!(
        shown["postgresql"]["parameters"]["work_mem"], "7MB",
        "{shown:?}"
    );
    assert_eq!(shown["ttl"], ttl_before, "other keys kept: {shown:?}");
    for m in cluster.all() {
        wait_until(
            &format!("{} to apply work_mem", m.name()),
            Duration::from_secs(40),
            || async move { (m.show("work_mem").await.as_deref() == Some("7MB")).then_some(()) },
        )
        .await;
    }
    // The real patronictl edits the same config object (CAS on its version).
    if let Some(p) = &patronictl {
        let out = std::process::Command::new(p)
            .args([
                "--dcs-url",
                &format!("etcd3://{}", cluster.etcd().client_addr()),
                "edit-config",
                "ctl",
                "--force",
                "--pg",
                "work_mem=6MB",
            ])
            .env_remove("PATRONICTL_CONFIG_FILE")
            .output()
            .expect("run patronictl edit-config");
        assert!(
            out.status.success(),
            "patronictl edit-config: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let shown: Value =
            serde_yaml_ng::from_str(&ok(ctl(&config, &["show-config"]), "show-config"))
                .expect("show-config prints YAML");
        assert_eq!(shown["postgresql"]["parameters"]["work_mem"], "6MB");
        for m in cluster.all() {
            wait_until(
                &format!("{} to apply work_mem 6MB", m.name()),
                Duration::from_secs(40),
                || async move { (m.show("work_mem").await.as_deref() == Some("6MB")).then_some(()) },
            )
            .await;
        }
        ok(
            ctl(&config, &["edit-config", "--force", "--pg", "work_mem=7MB"]),
            "edit-config",
        );
    }
    // Without --set/--pg/--apply: $EDITOR, the diff, and a confirmation ("n" changes nothing).
    let editor = "sed -i -e 's/^maximum_lag_on_failover: .*/maximum_lag_on_failover: 1048577/'";
    let refused = ctl_edit(&config, &env, editor, "n\n");
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    assert!(
        stdout(&refused).contains("+maximum_lag_on_failover: 1048577"),
        "{}",
        stdout(&refused)
    );
    let shown = ok(ctl(&config, &["show-config"]), "show-config");
    assert!(!shown.contains("1048577"), "{shown}");
    let accepted = ctl_edit(&config, &env, editor, "y\n");
    assert!(accepted.status.success(), "{}", stdout(&accepted));
    let shown = ok(ctl(&config, &["show-config"]), "show-config");
    assert!(
        shown.contains("maximum_lag_on_failover: 1048577"),
        "{shown}"
    );

    let unchanged = ok(
        ctl(&config, &["edit-config", "--force", "--pg", "work_mem=7MB"]),
        "edit-config",
    );
    assert!(unchanged.contains("Not changed"), "{unchanged}");

    // pause / resume: written, reported by every member, shown by list.
    let paused = ok(ctl(&config, &["pause", "--wait"]), "pause");
    assert!(
        paused.contains("Success: cluster management is paused"),
        "{paused}"
    );
    let shown: Value = serde_yaml_ng::from_str(&ok(ctl(&config, &["show-config"]), "show-config"))
        .expect("show-config prints YAML");
    assert_eq!(shown["pause"], true, "{shown:?}");
    assert!(ok(ctl(&config, &["list"]), "list").contains("Maintenance mode: on"));
    let again = ctl(&config, &["pause"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already paused"));
    let resumed = ok(ctl(&config, &["resume", "--wait"]), "resume");
    assert!(
        resumed.contains("Success: cluster management is resumed"),
        "{resumed}"
    );
    assert!(!ok(ctl(&config, &["list"]), "list").contains("Maintenance mode"));

    // A scheduled switchover is listed, then flushed.
    let nothing = ok(ctl(&config, &["flush", "ctl", "switchover"]), "flush");
    assert!(
        nothing.contains("No pending scheduled switchover"),
        "{nothing}"
    );
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let target = cluster.others(&leader)[1].name().to_string();
    let out = ok(
        ctl(
            &config,
            &[
                "switchover",
                "--candidate",
                &target,
                "--scheduled",
                &later,
                "--force",
            ],
        ),
        "scheduled switchover",
    );
    println!("{out}");
    let listed = ok(ctl(&config, &["list"]), "list");
    assert!(listed.contains("Switchover scheduled at:"), "{listed}");
    let flushed = ok(
        ctl(&config, &["flush", "ctl", "switchover", "--force"]),
        "flush",
    );
    println!("{flushed}");
    wait_until(
        "the scheduled switchover flushed",
        Duration::from_secs(10),
        || async {
            let f = cluster.dcs_get("failover").await.unwrap_or_default();
            (!f.contains("scheduled_at")).then_some(())
        },
    )
    .await;
    assert_eq!(cluster.dcs_leader().await.as_deref(), Some(leader.as_str()));

    // switchover to a named replica; history then records the old timeline.
    let candidate = cluster.others(&leader)[0].name().to_string();
    let out = ok(
        ctl(
            &config,
            &[
                "switchover",
                "--leader",
                &leader,
                "--candidate",
                &candidate,
                "--force",
            ],
        ),
        "switchover",
    );
    println!("{out}");
    wait_until("the candidate to lead", Duration::from_secs(60), || async {
        (cluster.dcs_leader().await.as_deref() == Some(candidate.as_str())).then_some(())
    })
    .await;
    let history = wait_until("a history row", Duration::from_secs(30), || {
        let config = config.clone();
        async move {
            let h = ok(ctl(&config, &["history", "-f", "json"]), "history");
            let v: Value = serde_json::from_str(&h).ok()?;
            (!v.as_array()?.is_empty()).then_some(v)
        }
    })
    .await;
    assert_eq!(history[0]["TL"], 1, "{history}");
    assert!(
        history[0]["LSN"].as_u64().is_some_and(|l| l > 0),
        "{history}"
    );
    let pretty = ok(ctl(&config, &["history"]), "history");
    assert!(
        pretty.contains("| TL |") && pretty.contains("New Leader"),
        "{pretty}"
    );

    // reload and restart go to the members' REST APIs; a restarted replica streams again.
    let reload = ok(ctl(&config, &["reload", "ctl", "--force"]), "reload");
    for m in cluster.all() {
        assert!(reload.contains(&format!("member {}", m.name())), "{reload}");
    }
    let replica = cluster.others(&candidate)[0].name().to_string();
    let before = cluster.member(&replica).patroni_status().await;
    let restart = ok(
        ctl(&config, &["restart", "ctl", &replica, "--force"]),
        "restart",
    );
    assert!(
        restart.contains(&format!("Success: restart on member {replica}")),
        "{restart}"
    );
    let after = cluster.member(&replica).patroni_status().await;
    assert_ne!(
        before.and_then(|s| s.get("postmaster_start_time").cloned()),
        after.and_then(|s| s.get("postmaster_start_time").cloned()),
        "Postgres restarted"
    );
    cluster
        .wait_for_member_streaming(&replica, &candidate, Duration::from_secs(60))
        .await;
    let none = ok(
        ctl(&config, &["restart", "ctl", "--pending", "--force"]),
        "restart --pending",
    );
    assert!(none.contains("No member has a pending restart"), "{none}");
    let unknown = ctl(&config, &["restart", "ctl", "nobody", "--force"]);
    assert_eq!(unknown.status.code(), Some(1));

    // version asks every member's REST API.
    let version = ok(ctl(&config, &["version"]), "version");
    assert!(version.starts_with("regent ctl version "), "{version}");
    for m in cluster.all() {
        assert!(
            version.contains(&format!("{}: Patroni ", m.name())),
            "{version}"
        );
    }

    // A wrong configuration path: exit code 2 and a message naming the path.
    let wrong = ctl(std::path::Path::new("/nonexistent/regent.yml"), &["list"]);
    assert_eq!(wrong.status.code(), Some(2));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("/nonexistent/regent.yml") && err.contains("does not exist"),
        "{err}"
    );
}
