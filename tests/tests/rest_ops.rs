//! The REST operations on a 3-member cluster, as patronictl and operators call them: POST
//! /switchover and /failover (checks, texts, a switchover end to end with its write
//! unavailability measured), scheduled switchovers, PATCH/PUT /config reaching every member,
//! POST /reload.

use std::time::{Duration, Instant};

use regent_tests::config::Backend;
use regent_tests::writer::{missing_ids, written_ids};
use regent_tests::{wait_until, TestCluster, Writer};
use serde_json::{json, Value};

const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(120);

regent_tests::backend_tests! {
    rest_switchover_hands_over_to_the_candidate: [etcd, kubernetes];
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
    let old_name = cluster.wait_for_leader(BOOTSTRAP_DEADLINE).await;
    cluster
        .wait_for_replicas_streaming(&old_name, BOOTSTRAP_DEADLINE)
        .await;
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
    wait_until(
        "writer acknowledged rows",
        Duration::from_secs(10),
        || async { (writer.acked_count() > 5).then_some(()) },
    )
    .await;

    // Ask a replica that is not the candidate: any member's API serves the request.
    let third = cluster
        .others(&old_name)
        .into_iter()
        .find(|m| m.name() != candidate)
        .expect("a third member")
        .api_base();
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
    println!(
        "{tag} write unavailability during the REST switchover: {:.3} s",
        report.longest_unavailability().as_secs_f64()
    );
    let client = cluster
        .member(&candidate)
        .pg_client()
        .await
        .expect("connect to the new leader");
    let on_new = written_ids(&client).await.expect("rows on the new leader");
    let lost = missing_ids(&report.acked, &on_new);
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
}

async fn rest_switchover_hands_over_to_the_candidate(backend: Backend) {
    switchover(backend).await;
}

async fn get_json(url: &str) -> Option<Value> {
    http().get(url).send().await.ok()?.json().await.ok()
}

async fn rest_config_reload_and_scheduled_switchover(backend: Backend) {
    let cluster = TestCluster::start_on(backend, "rcfg", 3).await;
    let leader = cluster.wait_for_leader(BOOTSTRAP_DEADLINE).await;
    cluster
        .wait_for_replicas_streaming(&leader, BOOTSTRAP_DEADLINE)
        .await;
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

    let (code, text) = send(reqwest::Method::POST, &format!("{api}/reload"), None).await;
    assert_eq!((code, text.as_str()), (202, "reload scheduled"));

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
