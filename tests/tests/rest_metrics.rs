//! `GET /metrics` on a real 3-member cluster follows what happens to it: the leader holds the
//! lock and is primary, replicas report their lag and the leader each replica's (a replica with
//! replay paused falls behind, then catches up); a parameter that needs a restart raises
//! `patroni_pending_restart` with the reason on `GET /patroni`, `GET /cluster` and in the
//! listings of `regent ctl` and patronictl; maintenance mode shows as `patroni_is_paused`; a
//! killed postmaster as `patroni_postgres_running 0`; the age of the last DCS round-trip grows
//! while the DCS is frozen and drops once it is back. Every scrape is checked to be a valid
//! exposition (HELP and TYPE for each sample, no series twice). Next to a real Patroni replica
//! (from PyPI, at $PATRONI_BIN or /opt/regent-patroni/bin/patroni), a Regent replica shows the
//! same `patroni_*` families and values and the same pending restart reason.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use regent_tests::config::{Backend, Timing};
use regent_tests::member::Member;
use regent_tests::tools::{patroni_bin, patronictl_bin};
use regent_tests::{regent_bin, wait_until_ok, TestCluster, BOOTSTRAP_DEADLINE};
use serde_json::{json, Value};

const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// Long enough that the short DCS freeze below changes nothing but the metric, and that a loaded
/// machine does not cost the leader its lock: the DCS read keeps retrying through the freeze
/// (retry_timeout) and the leader's lease stays valid (the lease guard stops a primary ttl − 20 %
/// after its last renewal).
const TIMING: Timing = Timing {
    ttl: 30,
    loop_wait: 2,
    retry_timeout: 10,
};

/// A healthy member reads the DCS every loop_wait; the age is in whole seconds.
const FRESH_DCS_AGE: f64 = 5.0;

regent_tests::backend_tests! {
    metrics_follow_the_cluster: [etcd, kubernetes];
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One `GET /metrics` answer, checked and parsed.
struct Scrape {
    member: String,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of `name`'s single series of this member (labels scope and name only).
    fn value(&self, name: &str) -> Result<f64> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels.len() == 2)
            .collect();
        match found.as_slice() {
            [one] => Ok(one.value),
            [] => bail!("{}: no {name} sample", self.member),
            _ => bail!("{}: {} {name} samples", self.member, found.len()),
        }
    }

    fn flag(&self, name: &str) -> Result<bool> {
        let value = self.value(name)?;
        if value == 1.0 {
            Ok(true)
        } else if value == 0.0 {
            Ok(false)
        } else {
            bail!("{}: {name} is {value}, not 0 or 1", self.member)
        }
    }

    /// `member` label → value of every `name` series that has one.
    fn by_member(&self, name: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| Some((s.labels.get("member")?.clone(), s.value)))
            .collect()
    }
}

fn parse_value(text: &str) -> Result<f64> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        other => other
            .parse::<f64>()
            .with_context(|| format!("sample value {other:?}")),
    }
}

/// `name{k="v",...} value` (label values here never contain `",`).
fn parse_sample(line: &str) -> Result<Sample> {
    let (series, value) = line
        .rsplit_once(' ')
        .ok_or_else(|| anyhow!("no value in {line:?}"))?;
    let (name, labels) = series
        .split_once('{')
        .ok_or_else(|| anyhow!("no labels in {line:?}"))?;
    let labels = labels
        .strip_suffix('}')
        .ok_or_else(|| anyhow!("labels not closed in {line:?}"))?;
    let labels = labels
        .split("\",")
        .map(|pair| {
            let (k, v) = pair
                .split_once("=\"")
                .ok_or_else(|| anyhow!("label {pair:?} in {line:?}"))?;
            Ok((k.to_string(), v.trim_end_matches('"').to_string()))
        })
        .collect::<Result<_>>()?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value)?,
    })
}

/// Parse an exposition, failing on what a scraper would reject or misread: a sample whose
/// family has no HELP or TYPE before it, a series that appears twice, a value that is no number,
/// a sample not labelled with this member's scope and name.
fn parse_exposition(member: &Member, scope: &str, text: &str) -> Result<Scrape> {
    let mut helps = BTreeSet::new();
    let mut types = BTreeSet::new();
    let mut series = BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            ensure!(helps.insert(name.to_string()), "second HELP for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| anyhow!("TYPE without a kind: {line:?}"))?;
            ensure!(matches!(kind, "gauge" | "counter"), "{line:?}");
            ensure!(types.insert(name.to_string()), "second TYPE for {name}");
        } else if !line.starts_with('#') {
            let sample = parse_sample(line)?;
            ensure!(helps.contains(&sample.name), "no HELP before {line:?}");
            ensure!(types.contains(&sample.name), "no TYPE before {line:?}");
            ensure!(
                series.insert(format!("{}{:?}", sample.name, sample.labels)),
                "duplicate series {line:?}"
            );
            ensure!(
                sample.labels.get("scope").map(String::as_str) == Some(scope)
                    && sample.labels.get("name").map(String::as_str) == Some(member.name()),
                "{line:?} is not labelled with scope {scope} and name {}",
                member.name()
            );
            samples.push(sample);
        }
    }
    ensure!(!samples.is_empty(), "no samples in {text:?}");
    Ok(Scrape {
        member: member.name().to_string(),
        samples,
    })
}

async fn scrape(member: &Member, scope: &str) -> Result<Scrape> {
    let url = format!("{}/metrics", member.api_base());
    let response = http()
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    ensure!(
        response.status().as_u16() == 200,
        "GET {url}: {}",
        response.status()
    );
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        content_type.starts_with("text/plain"),
        "content type {content_type:?}"
    );
    let text = response.text().await.context("metrics body")?;
    parse_exposition(member, scope, &text).with_context(|| format!("{} /metrics", member.name()))
}

/// Poll `member`'s metrics until `check` accepts them; return what it returned.
async fn wait_for_metrics<T>(
    what: &str,
    member: &Member,
    scope: &str,
    check: impl Fn(&Scrape) -> Result<T>,
) -> T {
    wait_until_ok(
        &format!("{}: {what}", member.name()),
        STEP_DEADLINE,
        || async { check(&scrape(member, scope).await?) },
    )
    .await
}

async fn patch_config(member: &Member, body: Value) {
    let url = format!("{}/config", member.api_base());
    let response = http()
        .patch(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("PATCH /config");
    let code = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(code, 200, "PATCH /config {body}: {text}");
}

/// A JSON listing (`list --extended -f json`) in which every member shows the restart flag and
/// `reason` as patronictl formats it.
fn assert_listing_shows_reason(tool: &str, output: &Output, reason: &str) {
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{tool} list failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{tool} list is not a JSON array ({e}): {text}"));
    assert_eq!(rows.len(), 3, "{tool}: {text}");
    for row in &rows {
        assert_eq!(row["Pending restart"], json!("*"), "{tool}: {row}");
        assert_eq!(
            row["Pending restart reason"],
            json!(reason),
            "{tool}: {row}"
        );
    }
}

async fn show_max_connections(member: &Member) -> String {
    let client = member.pg_client().await.expect("connect");
    let row = client
        .query_one("SHOW max_connections", &[])
        .await
        .expect("SHOW max_connections");
    row.get(0)
}

async fn metrics_follow_the_cluster(backend: Backend) {
    let cluster = TestCluster::builder("metrics")
        .backend(backend)
        .members(3)
        .timing(TIMING)
        .start()
        .await;
    let scope = cluster.scope().to_string();
    let scope = scope.as_str();
    let tag = format!("[metrics/{}]", backend.label());
    let leader_name = cluster.wait_for_bootstrap().await;
    let leader = cluster.member(&leader_name);
    let replicas = cluster.others(&leader_name);
    let replica_names: BTreeSet<String> = replicas.iter().map(|m| m.name().to_string()).collect();

    // Roles, the lock, lag: the leader lists a lag for each replica once they published a
    // position; each replica reports its own.
    let member_lags = wait_for_metrics("leader metrics", leader, scope, |m| {
        ensure!(m.flag("patroni_primary")?, "not primary");
        ensure!(m.flag("regent_leader_lock_held")?, "no lock");
        ensure!(!m.flag("patroni_replica")?, "replica");
        ensure!(m.flag("patroni_postgres_running")?, "Postgres not running");
        ensure!(!m.flag("patroni_cluster_unlocked")?, "unlocked");
        ensure!(m.value("patroni_postgres_timeline")? >= 1.0, "timeline");
        ensure!(m.value("patroni_xlog_location")? > 0.0, "xlog_location");
        let lags = m.by_member("regent_member_replication_lag_bytes");
        let named: BTreeSet<String> = lags.keys().cloned().collect();
        ensure!(named == replica_names, "lag series for {named:?}");
        ensure!(lags.values().all(|l| *l >= 0.0), "negative lag {lags:?}");
        Ok(lags)
    })
    .await;
    println!("{tag} leader {leader_name}: replica lags {member_lags:?} bytes");
    for replica in &replicas {
        let lag = wait_for_metrics("replica metrics", replica, scope, |m| {
            ensure!(!m.flag("patroni_primary")?, "primary");
            ensure!(!m.flag("regent_leader_lock_held")?, "holds the lock");
            ensure!(m.flag("patroni_replica")?, "not a replica");
            ensure!(m.flag("patroni_postgres_streaming")?, "not streaming");
            ensure!(m.value("patroni_xlog_replayed_location")? > 0.0, "replayed");
            ensure!(
                m.by_member("regent_member_replication_lag_bytes")
                    .is_empty(),
                "a replica lists other members' lag"
            );
            let lag = m.value("regent_replication_lag_bytes")?;
            ensure!(lag >= 0.0, "lag {lag}");
            Ok(lag)
        })
        .await;
        println!("{tag} replica {}: lag {lag} bytes", replica.name());
    }

    // A replica whose replay is paused falls behind by what the leader writes meanwhile, and
    // catches up once replay resumes.
    let behind = replicas[1];
    let behind_client = behind.pg_client().await.expect("connect to the replica");
    behind_client
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause replay");
    let leader_client = leader.pg_client().await.expect("connect to the leader");
    leader_client
        .batch_execute(
            "CREATE TABLE metrics_lag AS SELECT g AS id, repeat('x', 100) AS pad \
             FROM generate_series(1, 10000) g",
        )
        .await
        .expect("write on the leader");
    let lag = wait_for_metrics("lag while replay is paused", behind, scope, |m| {
        ensure!(m.flag("patroni_xlog_paused")?, "replay not shown paused");
        let lag = m.value("regent_replication_lag_bytes")?;
        ensure!(lag >= 1_000_000.0, "lag {lag}");
        Ok(lag)
    })
    .await;
    println!(
        "{tag} {} with replay paused: lag {lag} bytes",
        behind.name()
    );
    behind_client
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume replay");
    wait_for_metrics("caught up", behind, scope, |m| {
        ensure!(!m.flag("patroni_xlog_paused")?, "replay still paused");
        let lag = m.value("regent_replication_lag_bytes")?;
        ensure!(lag == 0.0, "lag {lag}");
        Ok(())
    })
    .await;

    // A parameter that needs a restart: flag and reason on every member, then withdrawn.
    let running = show_max_connections(leader).await;
    assert_ne!(running, "101", "the test needs another starting value");
    patch_config(
        leader,
        json!({"postgresql": {"parameters": {"max_connections": 101}}}),
    )
    .await;
    let want_reason = json!({"max_connections": {"old_value": running, "new_value": "101"}});
    for member in cluster.all() {
        wait_for_metrics("pending restart", member, scope, |m| {
            ensure!(m.flag("patroni_pending_restart")?, "no pending restart");
            Ok(())
        })
        .await;
        let status = member.patroni_status().await.expect("GET /patroni");
        assert_eq!(status["pending_restart"], json!(true), "{status}");
        assert_eq!(status["pending_restart_reason"], want_reason, "{status}");
    }
    // The reason reaches the DCS member data: GET /cluster lists it for every member.
    wait_until_ok(
        "GET /cluster shows every member's pending restart reason",
        STEP_DEADLINE,
        || async {
            let (_, body) = leader.api_get("/cluster").await?;
            let members = body["members"]
                .as_array()
                .ok_or_else(|| anyhow!("no members in {body}"))?;
            ensure!(members.len() == 3, "{body}");
            for m in members {
                ensure!(m["pending_restart_reason"] == want_reason, "{m}");
            }
            Ok(())
        },
    )
    .await;
    // ...and the listings show it: `regent ctl list --extended`, and the real patronictl.
    let shown = format!("max_connections: {running}->101");
    let ctl_env = if backend.is_kubernetes() {
        let kubeconfig = cluster.kube().kubeconfig("regent-ctl");
        vec![("KUBECONFIG".to_string(), kubeconfig.display().to_string())]
    } else {
        leader.spec().agent_env()
    };
    let ctl = std::process::Command::new(regent_bin())
        .envs(ctl_env)
        .env_remove("PATRONICTL_CONFIG_FILE")
        .arg("ctl")
        .arg("-c")
        .arg(leader.config_path())
        .args(["list", "--extended", "-f", "json"])
        .output()
        .expect("run regent ctl list");
    assert_listing_shows_reason("regent ctl", &ctl, &shown);
    if backend.is_kubernetes() {
        println!("{tag} patronictl on Kubernetes is proven in patronictl.rs; not repeated here");
    } else {
        let listing = std::process::Command::new(patronictl_bin())
            .args([
                "--dcs-url",
                &format!("etcd3://{}", cluster.etcd().client_addr()),
            ])
            .args(["list", scope, "--extended", "-f", "json"])
            .output()
            .expect("run patronictl list");
        assert_listing_shows_reason("patronictl", &listing, &shown);
    }
    println!("{tag} pending restart reason {want_reason}, listed as {shown:?}");
    patch_config(
        leader,
        json!({"postgresql": {"parameters": {"max_connections": running.parse::<u32>().expect("a number")}}}),
    )
    .await;
    for member in cluster.all() {
        wait_for_metrics("no pending restart", member, scope, |m| {
            ensure!(!m.flag("patroni_pending_restart")?, "still pending");
            Ok(())
        })
        .await;
        let status = member.patroni_status().await.expect("GET /patroni");
        assert!(status.get("pending_restart_reason").is_none(), "{status}");
    }

    // Maintenance mode; a postmaster killed meanwhile stays down and shows as not running.
    patch_config(leader, json!({"pause": true})).await;
    for member in cluster.all() {
        wait_for_metrics("paused", member, scope, |m| {
            ensure!(m.flag("patroni_is_paused")?, "not paused");
            Ok(())
        })
        .await;
    }
    let victim = replicas[0];
    let postmaster = victim.postmaster_pid().expect("replica postmaster pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(postmaster),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the replica's postmaster");
    let state = wait_for_metrics("Postgres down", victim, scope, |m| {
        ensure!(!m.flag("patroni_postgres_running")?, "still running");
        ensure!(m.flag("patroni_is_paused")?, "no longer paused");
        let state = m.value("patroni_postgres_state")?;
        ensure!(state != 5.0, "state still running");
        Ok(state)
    })
    .await;
    println!(
        "{tag} {} after kill -9 in pause: postgres_running 0, postgres_state {state}",
        victim.name()
    );
    patch_config(leader, json!({"pause": null})).await;
    for member in cluster.all() {
        wait_for_metrics("resumed", member, scope, |m| {
            ensure!(!m.flag("patroni_is_paused")?, "still paused");
            Ok(())
        })
        .await;
    }
    cluster
        .wait_for_member_streaming(victim.name(), &leader_name, Duration::from_secs(60))
        .await;
    wait_for_metrics("Postgres back", victim, scope, |m| {
        ensure!(m.flag("patroni_postgres_running")?, "not running");
        Ok(())
    })
    .await;

    // The DCS round-trip age: small while the DCS answers, growing while it is frozen (the API
    // keeps answering), small again once it is back.
    for member in cluster.all() {
        wait_for_metrics("fresh DCS contact", member, scope, |m| {
            let age = m.value("regent_dcs_last_seen_age_seconds")?;
            ensure!(age <= FRESH_DCS_AGE, "age {age}");
            Ok(())
        })
        .await;
    }
    let leader_postmaster = leader.postmaster_pid().expect("leader postmaster pid");
    cluster.pause_dcs();
    let mut first_ages = BTreeMap::new();
    for member in cluster.all() {
        let age = scrape(member, scope)
            .await
            .and_then(|m| m.value("regent_dcs_last_seen_age_seconds"))
            .expect("scrape while the DCS is frozen");
        first_ages.insert(member.name().to_string(), age);
    }
    let mut frozen_ages = BTreeMap::new();
    for member in cluster.all() {
        let first = first_ages[member.name()];
        let age = wait_for_metrics("DCS age growing", member, scope, |m| {
            let age = m.value("regent_dcs_last_seen_age_seconds")?;
            ensure!(age >= first, "age went back from {first} to {age}");
            ensure!(age >= first + 2.0 && age > FRESH_DCS_AGE, "age {age}");
            Ok(age)
        })
        .await;
        frozen_ages.insert(member.name().to_string(), age);
    }
    cluster.resume_dcs();
    println!("{tag} DCS age when frozen {first_ages:?}, later {frozen_ages:?} s");
    let mut resumed_ages = BTreeMap::new();
    for member in cluster.all() {
        let age = wait_for_metrics("DCS contact again", member, scope, |m| {
            let age = m.value("regent_dcs_last_seen_age_seconds")?;
            ensure!(age <= FRESH_DCS_AGE, "age {age}");
            Ok(age)
        })
        .await;
        resumed_ages.insert(member.name().to_string(), age);
    }
    println!("{tag} DCS age after resuming {resumed_ages:?} s");
    assert_eq!(
        cluster.wait_for_leader(STEP_DEADLINE).await,
        leader_name,
        "the freeze stayed within the lease"
    );
    assert_eq!(
        leader.postmaster_pid(),
        Some(leader_postmaster),
        "the leader's Postgres ran through the freeze"
    );
}

/// The raw text of `GET /metrics`.
async fn metrics_text(member: &Member) -> String {
    let url = format!("{}/metrics", member.api_base());
    let response = http().get(&url).send().await.expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    response.text().await.expect("metrics body")
}

/// Every comment line (`# HELP`, `# TYPE`, `# Values`) of the `patroni_*` families, in order.
fn patroni_family_comments(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .filter(|l| !l.contains(" regent_"))
        .map(str::to_string)
        .collect()
}

/// Gauges whose value means the same thing on two replicas of one cluster (positions, times and
/// versions differ by nature).
const COMPARABLE: &[&str] = &[
    "patroni_postgres_running",
    "patroni_primary",
    "patroni_standby_leader",
    "patroni_replica",
    "patroni_sync_standby",
    "patroni_quorum_standby",
    "patroni_xlog_location",
    "patroni_xlog_paused",
    "patroni_postgres_streaming",
    "patroni_postgres_in_archive_recovery",
    "patroni_postgres_server_version",
    "patroni_cluster_unlocked",
    "patroni_failsafe_mode_is_active",
    "patroni_postgres_timeline",
    "patroni_pending_restart",
    "patroni_is_paused",
    "patroni_postgres_state",
];

async fn comparable_values(member: &Member, scope: &str) -> Result<BTreeMap<String, f64>> {
    let scrape = scrape(member, scope).await?;
    COMPARABLE
        .iter()
        .map(|name| Ok((name.to_string(), scrape.value(name)?)))
        .collect()
}

regent_tests::backend_tests! {
    metrics_and_pending_restart_reason_match_patroni: [etcd];
}

/// A Regent replica and a real Patroni replica of the same Regent leader expose the same
/// `patroni_*` families (HELP, TYPE, order) with the same values, and report the same pending
/// restart reason after a parameter change (`wal_buffers` in its base unit, 8kB pages: not set
/// locally, unlike shared_buffers, and shown as `1MB` by both).
async fn metrics_and_pending_restart_reason_match_patroni(backend: Backend) {
    let cluster = TestCluster::builder("metpar")
        .backend(backend)
        .members(3)
        .timing(TIMING)
        .binary_for(2, patroni_bin())
        .start_agents(false)
        .start()
        .await;
    let scope = cluster.scope().to_string();
    let scope = scope.as_str();
    let (leader, regent, patroni) = (
        cluster.member("metpar-0"),
        cluster.member("metpar-1"),
        cluster.member("metpar-2"),
    );
    leader.start();
    assert_eq!(
        cluster.wait_for_leader(BOOTSTRAP_DEADLINE).await,
        "metpar-0"
    );
    regent.start();
    patroni.start();
    cluster
        .wait_for_replicas_streaming("metpar-0", BOOTSTRAP_DEADLINE)
        .await;

    let regent_text = metrics_text(regent).await;
    let patroni_text = metrics_text(patroni).await;
    assert_eq!(
        patroni_family_comments(&regent_text),
        patroni_family_comments(&patroni_text),
        "HELP/TYPE lines differ\nRegent:\n{regent_text}\nPatroni:\n{patroni_text}"
    );
    let same_values = || async {
        let regent_values = comparable_values(regent, scope).await?;
        let patroni_values = comparable_values(patroni, scope).await?;
        ensure!(
            regent_values == patroni_values,
            "Regent {regent_values:?}\nPatroni {patroni_values:?}"
        );
        Ok(regent_values)
    };
    let values = wait_until_ok(
        "the same values on both replicas",
        STEP_DEADLINE,
        same_values,
    )
    .await;
    assert_eq!(values["patroni_replica"], 1.0, "{values:?}");
    assert_eq!(values["patroni_pending_restart"], 0.0, "{values:?}");

    patch_config(
        leader,
        json!({"postgresql": {"parameters": {"max_connections": 101, "wal_buffers": 128}}}),
    )
    .await;
    let reason = |member: &'static str| {
        let member = cluster.member(member);
        async move {
            let status = member
                .patroni_status()
                .await
                .ok_or_else(|| anyhow!("no GET /patroni"))?;
            let reason = status["pending_restart_reason"].clone();
            ensure!(
                reason.as_object().is_some_and(|r| r.len() == 2),
                "{}: {status}",
                member.name()
            );
            Ok(reason)
        }
    };
    let patroni_reason = wait_until_ok("Patroni's pending restart reason", STEP_DEADLINE, || {
        reason("metpar-2")
    })
    .await;
    let regent_reason = wait_until_ok("Regent's pending restart reason", STEP_DEADLINE, || {
        reason("metpar-1")
    })
    .await;
    println!(
        "[metrics/parity] pending_restart_reason: Patroni {patroni_reason}, Regent {regent_reason}"
    );
    assert_eq!(regent_reason, patroni_reason);
    assert_eq!(
        regent_reason["wal_buffers"]["new_value"],
        json!("1MB"),
        "{regent_reason}"
    );
    assert_eq!(
        regent_reason["max_connections"]["new_value"],
        json!("101"),
        "{regent_reason}"
    );
    let values = wait_until_ok(
        "the same values with a restart pending",
        STEP_DEADLINE,
        same_values,
    )
    .await;
    assert_eq!(values["patroni_pending_restart"], 1.0, "{values:?}");
}
