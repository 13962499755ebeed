//! The REST operations on a 3-member cluster, as patronictl and operators call them: POST
//! /switchover and /failover (checks, texts, a switchover end to end with its write
//! unavailability measured), a switchover while another replica has stopped answering,
//! scheduled switchovers, PATCH/PUT /config reaching every member, POST /reload.

use std::time::{Duration, Instant};

use regent_tests::config::Backend;
use regent_tests::writer::assert_acked_rows_on;
use regent_tests::{wait_until, RoleSampler, TestCluster, Writer, BOOTSTRAP_DEADLINE};
use serde_json::{json, Value};

/// Longest time the writer may go without an acknowledged write during a REST switchover: the
/// old leader's fast shutdown, the handover, the candidate's promotion and the writer's
/// reconnect (1 s connect timeout per host). Measured 0.20–0.38 s; the margin is for a loaded
/// machine (a switchover through the DCS took up to 2.1 s with a load average of 11). A
/// handover that waited for the old lock to expire (ttl 10 s) would exceed it.
const SWITCHOVER_MAX_UNAVAILABILITY: Duration = Duration::from_secs(4);

regent_tests::backend_tests! {
    rest_switchover_hands_over_to_the_candidate: [etcd, kubernetes];
    switchover_does_not_wait_for_a_replica_that_stopped_answering: [etcd];
    rest_config_reload_and_scheduled_switchover: [etcd];
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .expect("HTTP client")
}

/// Send `body` (raw text, so malformed bodies can be sent too) and return (status, body text).
async fn send(method: reqwest::Method, url: &str, body: Option<&str>) -> (u16, String) {
    let mut request = http().request(method, url);
    if let Some(b) = body {
        request = request
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let response = request.send().await.expect("REST request");
    let code = response.status().as_u16();
    (code, response.text().await.unwrap_or_default())
}

async fn post(url: &str, body: Value) -> (u16, String) {
    send(reqwest::Method::POST, url, Some(&body.to_string())).await
}

async fn switchover(backend: Backend) {
    let cluster = TestCluster::start_on(backend, "rsw", 3).await;
    let tag = format!("[rest-switchover/{}]", backend.label());
    let old_name = cluster.wait_for_bootstrap().await;
    let old = cluster.member(&old_name);
    let candidate = cluster.others(&old_name)[0].name().to_string();
    let api = old.api_base();

    // Refusals change nothing.
    let (code, text) = post(
        &format!("{api}/switchover"),
        json!({"leader": old_name, "candidate": "nobody"}),
    )
    .await;
    assert_eq!((code, text.as_str()), (412, "candidate does not exists"));
    let (code, text) = post(
        &format!("{api}/switchover"),
        json!({"leader": candidate, "candidate": old_name}),
    )
    .await;
    assert_eq!((code, text.as_str()), (412, "leader name does not match"));
    let (code, text) = post(&format!("{api}/failover"), json!({"candidate": old_name})).await;
    assert_eq!(code, 412, "failover to the current leader: {text}");
    let (code, _) = send(
        reqwest::Method::POST,
        &format!("{api}/switchover"),
        Some("{not json"),
    )
    .await;
    assert_eq!(code, 400, "malformed body");
    let (code, text) = post(
        &format!("{api}/switchover"),
        json!({"candidate": candidate}),
    )
    .await;
    assert_eq!(
        (code, text.as_str()),
        (
            400,
            "Switchover could be performed only from a specific leader"
        )
    );
    assert_eq!(
        cluster.dcs_leader().await.as_deref(),
        Some(old_name.as_str())
    );

    let writer = Writer::start(&cluster.all(), Duration::from_secs(30)).await;
    writer.wait_for_acks(6, Duration::from_secs(10)).await;

    // Ask a replica that is not the candidate: any member's API serves the request.
    let third = cluster
        .others(&old_name)
        .into_iter()
        .find(|m| m.name() != candidate)
        .expect("a third member")
        .api_base();
    let roles = RoleSampler::start(&cluster.all()).await;
    let started = Instant::now();
    let (code, text) = post(
        &format!("{third}/switchover"),
        json!({"leader": old_name, "candidate": candidate}),
    )
    .await;
    let answered = started.elapsed();
    assert_eq!(
        (code, text.as_str()),
        (
            200,
            format!("Successfully switched over to \"{candidate}\"").as_str()
        )
    );
    println!(
        "{tag} POST /switchover {old_name} -> {candidate} answered 200 after {:.3} s",
        answered.as_secs_f64()
    );
    assert_eq!(
        cluster.dcs_leader().await.as_deref(),
        Some(candidate.as_str())
    );
    cluster
        .wait_for_member_streaming(&old_name, &candidate, Duration::from_secs(60))
        .await;

    let report = writer.stop().await;
    println!("{tag} writer: {}", report.summary());
    // A write can also block instead of failing: the longest wait for an acknowledgement from
    // the request on bounds what a client saw.
    let longest_gap = report.longest_ack_gap(started, report.stopped);
    println!(
        "{tag} write unavailability during the REST switchover: {:.3} s (failed writes), \
         longest time without an acknowledged write {:.3} s (bound {:.1} s)",
        report.longest_unavailability().as_secs_f64(),
        longest_gap.as_secs_f64(),
        SWITCHOVER_MAX_UNAVAILABILITY.as_secs_f64()
    );
    assert!(
        longest_gap <= SWITCHOVER_MAX_UNAVAILABILITY,
        "writes were unavailable for {longest_gap:?} during the REST switchover"
    );
    println!("{tag} {}", roles.summary());
    roles.assert_never_two_primaries();
    assert_acked_rows_on(cluster.member(&candidate), &report.acked).await;
}

async fn rest_switchover_hands_over_to_the_candidate(backend: Backend) {
    switchover(backend).await;
}

/// A replica whose walreceiver stopped answering (a hung process or a network that drops its
/// packets) makes the old primary's fast shutdown wait: after the shutdown checkpoint, each
/// walsender waits until its replica confirms it, for up to wal_sender_timeout (60 s). The
/// switchover must not wait with it once the candidate has the checkpoint: it completes well
/// before the old leader's lease guard would have to stop Postgres (ttl − safety margin), and
/// the old leader is never started as the primary again.
async fn switchover_does_not_wait_for_a_replica_that_stopped_answering(backend: Backend) {
    let cluster = TestCluster::start_on(backend, "rswstuck", 3).await;
    let tag = format!("[rest-switchover-stuck/{}]", backend.label());
    let old_name = cluster.wait_for_bootstrap().await;
    let others = cluster.others(&old_name);
    let candidate = others[0].name().to_string();
    let stuck = others[1].name().to_string();

    let frozen = cluster
        .member(&stuck)
        .freeze_walreceiver()
        .await
        .expect("freeze the replica's walreceiver");
    // WAL the frozen replica will never confirm.
    let old_client = cluster
        .member(&old_name)
        .pg_client()
        .await
        .expect("connect to the leader");
    old_client
        .batch_execute("CREATE TABLE stuck_probe AS SELECT generate_series(1, 10000) AS n")
        .await
        .expect("write on the leader");

    let mut roles = RoleSampler::start(&cluster.all()).await;
    let started = Instant::now();
    let (code, text) = post(
        &format!("{}/switchover", cluster.member(&old_name).api_base()),
        json!({"leader": old_name, "candidate": candidate}),
    )
    .await;
    let answered = started.elapsed();
    println!(
        "{tag} POST /switchover {old_name} -> {candidate} with {stuck}'s walreceiver frozen: \
         {code} {text:?} after {:.3} s",
        answered.as_secs_f64()
    );
    assert_eq!(
        (code, text.as_str()),
        (
            200,
            format!("Successfully switched over to \"{candidate}\"").as_str()
        )
    );
    // The lease guard fires at ttl − safety margin (2 s at ttl 10) after the last renew.
    let guard = cluster.ttl() - Duration::from_secs(2);
    assert!(
        answered < guard,
        "the switchover took {answered:?}: it waited for the frozen replica (lease guard at {guard:?})"
    );
    cluster
        .wait_for_member_streaming(&old_name, &candidate, Duration::from_secs(60))
        .await;
    drop(frozen);
    cluster
        .wait_for_member_streaming(&stuck, &candidate, Duration::from_secs(90))
        .await;
    roles.stop().await;
    println!("{tag} {}", roles.summary());
    roles.assert_never_two_primaries();
    let spans = roles.primary_spans(&old_name);
    assert!(
        spans.len() <= 1,
        "the old leader was the primary again after it stopped for the switchover: {spans:?}"
    );
}

async fn get_json(url: &str) -> Option<Value> {
    http().get(url).send().await.ok()?.json().await.ok()
}

async fn rest_config_reload_and_scheduled_switchover(backend: Backend) {
    let cluster = TestCluster::start_on(backend, "rcfg", 3).await;
    let leader = cluster.wait_for_bootstrap().await;
    let replica = cluster.others(&leader)[0];
    let api = replica.api_base();

    // PATCH merges, null deletes, and the answer is the whole new configuration.
    let (code, text) = send(
        reqwest::Method::PATCH,
        &format!("{api}/config"),
        Some(r#"{"postgresql":{"parameters":{"work_mem":"7MB"}},"regent_test":{"a":1,"b":2}}"#),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let (code, text) = send(
        reqwest::Method::PATCH,
        &format!("{api}/config"),
        Some(r#"{"regent_test":{"a":null}}"#),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).expect("PATCH answers JSON");
    assert_eq!(answer["regent_test"], json!({"b": 2}));
    assert_eq!(answer["postgresql"]["parameters"]["work_mem"], json!("7MB"));

    // Every member sees it and applies it to its Postgres.
    for m in cluster.all() {
        let url = format!("{}/config", m.api_base());
        wait_until(
            &format!("{} shows the patched config", m.name()),
            Duration::from_secs(30),
            || async {
                let c = get_json(&url).await?;
                (c["regent_test"] == json!({"b": 2})).then_some(())
            },
        )
        .await;
        wait_until(
            &format!("{} runs with work_mem 7MB", m.name()),
            Duration::from_secs(30),
            || async {
                let client = m.pg_client().await.ok()?;
                let row = client.query_one("SHOW work_mem", &[]).await.ok()?;
                (row.get::<_, String>(0) == "7MB").then_some(())
            },
        )
        .await;
    }

    // A value the agent could not use is refused, naming the key, and nothing is written.
    let (code, text) = send(
        reqwest::Method::PATCH,
        &format!("{api}/config"),
        Some(r#"{"ttl":"soon"}"#),
    )
    .await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("ttl"), "{text}");
    let (code, _) = send(
        reqwest::Method::PATCH,
        &format!("{api}/config"),
        Some("[1]"),
    )
    .await;
    assert_eq!(code, 400);
    let config = get_json(&format!("{api}/config"))
        .await
        .expect("GET /config");
    assert_ne!(config["ttl"], json!("soon"));

    // PUT replaces the whole object.
    let mut replaced = config.clone();
    if let Some(m) = replaced.as_object_mut() {
        m.remove("regent_test");
    }
    let (code, text) = send(
        reqwest::Method::PUT,
        &format!("{api}/config"),
        Some(&replaced.to_string()),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    wait_until("PUT visible", Duration::from_secs(20), || async {
        let c = get_json(&format!("{api}/config")).await?;
        c.get("regent_test").is_none().then_some(())
    })
    .await;

    // POST /reload reads the file again: a local parameter overrides the DCS one.
    let path = replica.config_path();
    let mut file: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).expect("read member config"))
            .expect("member config is YAML");
    file["postgresql"]["parameters"]["work_mem"] = serde_yaml_ng::Value::from("3MB");
    std::fs::write(
        &path,
        serde_yaml_ng::to_string(&file).expect("render member config"),
    )
    .expect("write member config");
    let (code, text) = send(reqwest::Method::POST, &format!("{api}/reload"), None).await;
    assert_eq!((code, text.as_str()), (202, "reload scheduled"));
    wait_until(
        "the reloaded local work_mem",
        Duration::from_secs(20),
        || async {
            let client = replica.pg_client().await.ok()?;
            let row = client.query_one("SHOW work_mem", &[]).await.ok()?;
            (row.get::<_, String>(0) == "3MB").then_some(())
        },
    )
    .await;

    // A scheduled switchover can be cancelled ...
    let leader_api = cluster.member(&leader).api_base();
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (code, text) = post(
        &format!("{leader_api}/switchover"),
        json!({"leader": leader, "candidate": replica.name(), "scheduled_at": in_an_hour}),
    )
    .await;
    assert_eq!((code, text.as_str()), (202, "Switchover scheduled"));
    let (code, text) = send(
        reqwest::Method::DELETE,
        &format!("{leader_api}/switchover"),
        None,
    )
    .await;
    assert_eq!((code, text.as_str()), (200, "scheduled switchover deleted"));
    let (code, text) = send(
        reqwest::Method::DELETE,
        &format!("{leader_api}/switchover"),
        None,
    )
    .await;
    assert_eq!((code, text.as_str()), (404, "no switchover is scheduled"));

    // ... and one that is left alone happens at its time, not before.
    let due = chrono::Utc::now() + chrono::Duration::seconds(4);
    let (code, text) = post(
        &format!("{leader_api}/switchover"),
        json!({"leader": leader, "candidate": replica.name(), "scheduled_at": due.to_rfc3339()}),
    )
    .await;
    assert_eq!((code, text.as_str()), (202, "Switchover scheduled"));
    let new_leader = wait_until(
        "the scheduled switchover",
        Duration::from_secs(60),
        || async {
            let l = cluster.dcs_leader().await?;
            (l != leader).then_some(l)
        },
    )
    .await;
    let took_over = chrono::Utc::now();
    assert_eq!(new_leader, replica.name());
    assert!(
        took_over >= due,
        "switched over at {took_over}, before the scheduled {due}"
    );
    println!(
        "[rest-config] scheduled switchover done {:.3} s after its time",
        (took_over - due).num_milliseconds() as f64 / 1000.0
    );
}

regent_tests::backend_tests! {
    rest_restart_reinitialize_and_pause: [etcd];
}

async fn status(member: &regent_tests::Member) -> Option<Value> {
    get_json(&format!("{}/patroni", member.api_base())).await
}

/// Maintenance mode on through `through`'s `PATCH /config`; waits until every member reports it
/// in `/patroni` and `/`.
async fn pause_cluster(cluster: &TestCluster, through: &regent_tests::Member) {
    let (code, text) = send(
        reqwest::Method::PATCH,
        &format!("{}/config", through.api_base()),
        Some(r#"{"pause":true}"#),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    for m in cluster.all() {
        wait_until(
            &format!("{} reports pause", m.name()),
            Duration::from_secs(20),
            || async { (status(m).await?["pause"] == json!(true)).then_some(()) },
        )
        .await;
        let root = get_json(&format!("{}/", m.api_base())).await;
        assert_eq!(root.map(|r| r["pause"].clone()), Some(json!(true)));
    }
}

async fn rest_restart_reinitialize_and_pause(backend: Backend) {
    let cluster = TestCluster::start_on(backend, "rrst", 3).await;
    let leader = cluster.wait_for_bootstrap().await;
    let replica = cluster.others(&leader)[0];
    let api = replica.api_base();
    let leader_api = cluster.member(&leader).api_base();

    // Immediate restart: filters first, then a real restart (a new postmaster start time).
    let (code, text) = post(&format!("{api}/restart"), json!({"role": "primary"})).await;
    assert_eq!(
        (code, text.as_str()),
        (503, "restart conditions are not satisfied")
    );
    let (code, text) = post(&format!("{api}/restart"), json!({"bogus": 1})).await;
    assert_eq!(
        (code, text.as_str()),
        (400, "Unknown filter for the scheduled restart: bogus")
    );
    let before = status(replica).await.expect("GET /patroni")["postmaster_start_time"].clone();
    let (code, text) = send(reqwest::Method::POST, &format!("{api}/restart"), None).await;
    assert_eq!((code, text.as_str()), (200, "restarted successfully"));
    let after = wait_until(
        "the replica runs again",
        Duration::from_secs(30),
        || async {
            let s = status(replica).await?;
            (s["state"] == "running").then(|| s["postmaster_start_time"].clone())
        },
    )
    .await;
    assert_ne!(before, after, "the postmaster was not restarted");
    cluster
        .wait_for_member_streaming(replica.name(), &leader, Duration::from_secs(30))
        .await;

    // A parameter that needs a restart: every member says so, and a restart filtered on it
    // clears it.
    let (code, text) = send(
        reqwest::Method::PATCH,
        &format!("{leader_api}/config"),
        Some(r#"{"postgresql":{"parameters":{"max_connections":120}}}"#),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    for m in cluster.all() {
        wait_until(
            &format!("{} reports pending_restart", m.name()),
            Duration::from_secs(30),
            || async { (status(m).await?["pending_restart"] == json!(true)).then_some(()) },
        )
        .await;
    }
    let (code, text) = post(&format!("{api}/restart"), json!({"restart_pending": true})).await;
    assert_eq!((code, text.as_str()), (200, "restarted successfully"));
    wait_until(
        "pending_restart cleared by the restart",
        Duration::from_secs(30),
        || async {
            let s = status(replica).await?;
            (s["state"] == "running" && s.get("pending_restart").is_none()).then_some(())
        },
    )
    .await;
    cluster
        .wait_for_member_streaming(replica.name(), &leader, Duration::from_secs(30))
        .await;

    // The leader restarts in place and keeps the lock.
    let leader_member = cluster.member(&leader);
    let before =
        status(leader_member).await.expect("GET /patroni")["postmaster_start_time"].clone();
    let (code, text) = post(&format!("{leader_api}/restart"), json!({"role": "primary"})).await;
    assert_eq!((code, text.as_str()), (200, "restarted successfully"));
    let after = wait_until("the leader runs again", Duration::from_secs(30), || async {
        let s = status(leader_member).await?;
        (s["state"] == "running").then(|| s["postmaster_start_time"].clone())
    })
    .await;
    assert_ne!(before, after, "the leader's postmaster was not restarted");
    assert_eq!(cluster.dcs_leader().await.as_deref(), Some(leader.as_str()));
    cluster
        .wait_for_replicas_streaming(&leader, Duration::from_secs(60))
        .await;

    // Scheduled restart: shown, cancellable.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (code, text) = post(&format!("{api}/restart"), json!({"schedule": at})).await;
    assert_eq!((code, text.as_str()), (202, "Restart scheduled"));
    let (code, text) = post(&format!("{api}/restart"), json!({"schedule": at})).await;
    assert_eq!(
        (code, text.as_str()),
        (409, "Another restart is already scheduled")
    );
    wait_until(
        "scheduled_restart shown",
        Duration::from_secs(10),
        || async {
            let s = status(replica).await?;
            s.get("scheduled_restart").is_some().then_some(())
        },
    )
    .await;
    let (code, text) = send(reqwest::Method::DELETE, &format!("{api}/restart"), None).await;
    assert_eq!((code, text.as_str()), (200, "scheduled restart deleted"));
    let (code, text) = send(reqwest::Method::DELETE, &format!("{api}/restart"), None).await;
    assert_eq!((code, text.as_str()), (404, "no restarts are scheduled"));

    // Reinitialize: refused on the leader; a replica's data directory is cloned again.
    let (code, text) = send(
        reqwest::Method::POST,
        &format!("{leader_api}/reinitialize"),
        None,
    )
    .await;
    assert_eq!(
        (code, text.as_str()),
        (503, "I am the leader, can not reinitialize")
    );
    let marker = replica.data_dir().join("regent-test-marker");
    std::fs::write(&marker, b"gone after a reinit").expect("write marker");
    let (code, text) = post(&format!("{api}/reinitialize"), json!({"force": true})).await;
    assert_eq!((code, text.as_str()), (200, "reinitialize started"));
    cluster
        .wait_for_member_streaming(replica.name(), &leader, Duration::from_secs(60))
        .await;
    assert!(!marker.exists(), "the data directory was not recreated");

    // Pause: every member says so, and a crashed Postgres is left alone until resume.
    pause_cluster(&cluster, cluster.member(&leader)).await;
    let pid = replica.postmaster_pid().expect("replica postmaster");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the replica's postmaster");
    wait_until("the crash is seen", Duration::from_secs(20), || async {
        let s = status(replica).await?;
        (s["state"] != "running").then_some(())
    })
    .await;
    // Three HA cycles: a paused agent does not start Postgres again.
    let window = cluster.timing().loop_wait * 3;
    let until = Instant::now() + Duration::from_secs(u64::from(window));
    while Instant::now() < until {
        assert!(
            replica.postmaster_pid().is_none(),
            "a paused agent restarted Postgres"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, text) = send(
        reqwest::Method::PATCH,
        &format!("{leader_api}/config"),
        Some(r#"{"pause":null}"#),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    cluster
        .wait_for_member_streaming(replica.name(), &leader, Duration::from_secs(60))
        .await;
    assert_eq!(cluster.dcs_leader().await.as_deref(), Some(leader.as_str()));
}

regent_tests::backend_tests! {
    rest_failover_without_a_leader_promotes_the_candidate: [etcd];
}

/// A paused cluster loses its leader: nobody takes the lock on their own, and POST /failover
/// names the member that must.
async fn rest_failover_without_a_leader_promotes_the_candidate(backend: Backend) {
    let cluster = TestCluster::start_on(backend, "rfo", 3).await;
    let leader = cluster.wait_for_bootstrap().await;
    let others = cluster.others(&leader);
    let (candidate, third) = (others[0], others[1]);
    pause_cluster(&cluster, third).await;

    // A switchover to a named candidate is allowed in maintenance mode; the old leader runs on
    // as its replica.
    let (code, text) = post(
        &format!("{}/switchover", third.api_base()),
        json!({"leader": leader, "candidate": third.name()}),
    )
    .await;
    assert_eq!(
        (code, text.as_str()),
        (
            200,
            format!("Successfully switched over to \"{}\"", third.name()).as_str()
        )
    );
    cluster
        .wait_for_member_streaming(&leader, third.name(), Duration::from_secs(60))
        .await;
    let (code, text) = post(
        &format!("{}/switchover", third.api_base()),
        json!({"leader": third.name()}),
    )
    .await;
    assert_eq!(
        (code, text.as_str()),
        (
            400,
            "Switchover is possible only to a specific candidate in a paused state"
        )
    );

    // The leader dies: in maintenance mode nobody takes the lock on their own ...
    third.kill9_with_postmaster();
    wait_until(
        "the dead leader's lock expires",
        cluster.ttl() * 3,
        || async { cluster.dcs_leader().await.is_none().then_some(()) },
    )
    .await;
    let third = cluster.member(&leader);

    // ... until POST /failover names the member that must.
    let started = Instant::now();
    let (code, text) = post(
        &format!("{}/failover", third.api_base()),
        json!({"candidate": candidate.name()}),
    )
    .await;
    assert_eq!(
        (code, text.as_str()),
        (
            200,
            format!("Successfully failed over to \"{}\"", candidate.name()).as_str()
        )
    );
    println!(
        "[rest-failover] POST /failover without a leader answered after {:.3} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        cluster.dcs_leader().await.as_deref(),
        Some(candidate.name())
    );
    let primary_url = format!("{}/primary", candidate.api_base());
    wait_until(
        "the candidate serves as the primary",
        Duration::from_secs(20),
        || async {
            let r = http().get(&primary_url).send().await.ok()?;
            (r.status().as_u16() == 200).then_some(())
        },
    )
    .await;
}

regent_tests::backend_tests! {
    pause_survives_a_killed_leader_postgres: [etcd, kubernetes];
}

/// Maintenance mode: kill -9 of the leader's postmaster (its agent stays up) starts no failover
/// and no restart — for longer than ttl; the holder gives the lock up, as Patroni does, and after
/// resume the members elect exactly one leader.
async fn pause_survives_a_killed_leader_postgres(backend: Backend) {
    let cluster = TestCluster::start_on(backend, "pkl", 3).await;
    let leader = cluster.wait_for_bootstrap().await;
    let leader_member = cluster.member(&leader);
    pause_cluster(&cluster, leader_member).await;
    let pid = leader_member.postmaster_pid().expect("leader postmaster");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the leader's postmaster");
    wait_until("the crash is seen", Duration::from_secs(20), || async {
        (status(leader_member).await?["state"] != "running").then_some(())
    })
    .await;
    // Longer than ttl: a lock the dead primary no longer renewed would have expired by now, and
    // an unpaused replica would have promoted.
    let window = cluster.ttl() + Duration::from_secs(u64::from(cluster.timing().loop_wait) * 2);
    let until = Instant::now() + window;
    while Instant::now() < until {
        assert!(
            leader_member.postmaster_pid().is_none(),
            "a paused agent restarted Postgres"
        );
        for m in cluster.others(&leader) {
            assert!(
                matches!(m.pg_in_recovery().await, Ok(true)),
                "{} left recovery while the cluster is paused",
                m.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let primaries = cluster.sql_primaries().await;
    assert!(primaries.is_empty(), "primaries in pause: {primaries:?}");
    assert_eq!(
        cluster.dcs_leader().await,
        None,
        "a holder without Postgres keeps no lock in pause"
    );
    println!(
        "[pause-kill/{}] {:.1} s after the kill: no failover, no restart, DCS leader {:?}",
        backend.label(),
        window.as_secs_f64(),
        cluster.dcs_leader().await
    );
    let (code, text) = send(
        reqwest::Method::PATCH,
        &format!("{}/config", cluster.others(&leader)[0].api_base()),
        Some(r#"{"pause":null}"#),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let after = cluster.wait_for_leader(BOOTSTRAP_DEADLINE).await;
    println!(
        "[pause-kill/{}] after resume: {after} leads (the killed leader was {leader})",
        backend.label()
    );
    assert_eq!(cluster.sql_primaries().await, vec![after.clone()]);
}
