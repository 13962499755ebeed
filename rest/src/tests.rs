//! Endpoint tests against hand-built snapshots.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use model::{
    Cluster, ClusterConfig, Failover, HistoryEntry, Leader, Member, MemberData, Role, SyncState,
    Tags,
};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;

const LEADER_OPTIME: u64 = 100 << 20;

fn tags(value: Value) -> Tags {
    serde_json::from_value(value).expect("test tags are a JSON object")
}

fn member(name: &str, role: Role, xlog: Option<u64>) -> Member {
    let index: u16 = name
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let port = 5432 + index;
    Member::new(
        name,
        MemberData {
            conn_url: Some(format!("postgres://127.0.0.1:{port}/postgres")),
            api_url: Some(format!("http://127.0.0.1:{}/patroni", port + 2576)),
            state: "running".into(),
            role,
            xlog_location: xlog,
            timeline: Some(2),
            replication_state: (xlog.is_some()).then(|| "streaming".to_string()),
            ..Default::default()
        },
    )
}

/// A three-member cluster led by `pg-0`, leader optime 100 MiB.
fn cluster() -> Cluster {
    Cluster {
        initialize: Some("7379123456789012345".into()),
        config: Some(ClusterConfig {
            raw: json!({"ttl": 30, "loop_wait": 10}),
            version: Some("1".into()),
        }),
        leader: Some(Leader {
            name: "pg-0".into(),
            version: None,
        }),
        status: model::Status {
            optime: Some(LEADER_OPTIME),
            ..Default::default()
        },
        members: vec![
            member("pg-2", Role::Replica, None),
            member("pg-0", Role::Primary, Some(LEADER_OPTIME)),
            member("pg-1", Role::Replica, Some(LEADER_OPTIME - 1024)),
        ],
        history: vec![HistoryEntry {
            timeline: 1,
            lsn: 25_623_960,
            reason: "no recovery target specified".into(),
            timestamp: Some("2024-06-01T09:59:00+00:00".into()),
            new_leader: Some("pg-0".into()),
        }],
        ..Default::default()
    }
}

fn base(name: &str) -> Snapshot {
    Snapshot {
        scope: "demo".into(),
        name: name.into(),
        version: "4.1.5".into(),
        api_url: "http://127.0.0.1:8008/patroni".into(),
        cluster: Some(cluster()),
        dcs_last_seen: Some(1_717_236_310),
        ttl: 30,
        loop_wait: 10,
        last_cycle_unix_ms: Some(chrono::Utc::now().timestamp_millis()),
        ..Default::default()
    }
}

fn primary() -> Snapshot {
    let mut s = base("pg-0");
    s.has_lock = true;
    s.tags = tags(json!({"clonefrom": true}));
    s.postgres = PostgresStatus {
        state: "running".into(),
        role: Role::Primary,
        server_version: Some(150004),
        postmaster_start_time: Some("2024-06-01 10:00:00.123+00:00".into()),
        timeline: Some(2),
        sysid: Some("7379123456789012345".into()),
        wal: Wal::Primary {
            location: LEADER_OPTIME,
        },
        replication: vec![ReplicationInfo {
            usename: "standby".into(),
            application_name: "pg-1".into(),
            client_addr: Some("127.0.0.1".into()),
            state: "streaming".into(),
            sync_state: "async".into(),
            sync_priority: 0,
        }],
        ..Default::default()
    };
    s
}

/// A streaming replica `behind` bytes behind the leader's optime.
fn replica(behind: u64) -> Snapshot {
    let mut s = base("pg-1");
    s.tags = tags(json!({"zone": "a", "nofailover": false, "weight": 3}));
    s.postgres = PostgresStatus {
        state: "running".into(),
        role: Role::Replica,
        server_version: Some(150004),
        postmaster_start_time: Some("2024-06-01 10:00:01+00:00".into()),
        timeline: Some(2),
        sysid: Some("7379123456789012345".into()),
        wal: Wal::Replica {
            received: Some(LEADER_OPTIME - behind),
            replayed: Some(LEADER_OPTIME - behind),
            replayed_timestamp: None,
            paused: false,
        },
        replication_state: Some("streaming".into()),
        ..Default::default()
    };
    s
}

fn stopped() -> Snapshot {
    let mut s = base("pg-2");
    s.postgres = PostgresStatus {
        state: "stopped".into(),
        role: Role::Uninitialized,
        ..Default::default()
    };
    s
}

struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

async fn call(snapshot: Snapshot, method: Method, uri: &str) -> Reply {
    let (_publisher, receiver) = tokio::sync::watch::channel(snapshot);
    let (commands, _inbox) = tokio::sync::mpsc::channel(1);
    let app = router(ApiState {
        snapshot: receiver,
        commands,
        citus: None,
        failsafe: Default::default(),
    });
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .expect("valid request");
    let response = app.oneshot(request).await.expect("router is infallible");
    reply_of(response).await
}

/// The status, content type and body of a router's answer.
async fn reply_of(response: axum::response::Response) -> Reply {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body reads")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        content_type,
        body,
    }
}

async fn get(snapshot: Snapshot, uri: &str) -> Reply {
    call(snapshot, Method::GET, uri).await
}

/// Every case: (scenario name, snapshot, path, expected code).
async fn check_codes(cases: Vec<(&str, Snapshot, &str, u16)>) {
    let mut failures = Vec::new();
    for (scenario, snapshot, path, expected) in cases {
        let reply = get(snapshot, path).await;
        if reply.status.as_u16() != expected {
            failures.push(format!(
                "{scenario} GET {path}: got {} want {expected}",
                reply.status.as_u16()
            ));
            continue;
        }
        if reply.content_type.as_deref() != Some("application/json") {
            failures.push(format!(
                "{scenario} GET {path}: content type {:?}",
                reply.content_type
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn paths_with(expected_200: &[&str]) -> Vec<(&'static str, u16)> {
    const HEALTH_PATHS: &[&str] = &[
        "/",
        "/primary",
        "/master",
        "/read-write",
        "/leader",
        "/standby-leader",
        "/standby_leader",
        "/replica",
        "/read-only",
        "/synchronous",
        "/sync",
        "/asynchronous",
        "/async",
        "/read-only-sync",
        "/read-only-synchronous",
        "/health",
        "/no-such-endpoint",
    ];
    HEALTH_PATHS
        .iter()
        .map(|p| (*p, if expected_200.contains(p) { 200 } else { 503 }))
        .collect()
}

#[tokio::test]
async fn health_codes_by_role() {
    let scenarios: Vec<(&str, Snapshot, Vec<&str>)> = vec![
        (
            "primary",
            primary(),
            vec![
                "/",
                "/primary",
                "/master",
                "/read-write",
                "/leader",
                "/read-only",
                "/read-only-sync",
                "/read-only-synchronous",
                "/health",
            ],
        ),
        (
            "replica",
            replica(0),
            vec![
                "/replica",
                "/read-only",
                "/asynchronous",
                "/async",
                "/health",
            ],
        ),
        ("stopped", stopped(), vec![]),
        (
            "primary without lock",
            {
                let mut s = primary();
                s.has_lock = false;
                s
            },
            vec!["/health"],
        ),
        (
            "standby leader",
            {
                let mut s = replica(0);
                s.has_lock = true;
                s.standby_cluster = true;
                s.postgres.role = Role::StandbyLeader;
                s
            },
            vec![
                "/leader",
                "/standby-leader",
                "/standby_leader",
                "/read-only",
                "/read-only-sync",
                "/read-only-synchronous",
                "/health",
            ],
        ),
        (
            "noloadbalance replica",
            {
                let mut s = replica(0);
                s.tags = tags(json!({"noloadbalance": true}));
                s
            },
            vec!["/health"],
        ),
    ];
    let mut cases = Vec::new();
    for (name, snapshot, ok) in scenarios {
        for (path, code) in paths_with(&ok) {
            cases.push((name, snapshot.clone(), path, code));
        }
    }
    check_codes(cases).await;
}

#[tokio::test]
async fn replica_lag_tags_and_replication_state() {
    let lagging = replica(32 << 20);
    let cases = vec![
        ("in sync", replica(0), "/replica?lag=1MB", 200),
        ("lagging, no limit", lagging.clone(), "/replica", 200),
        (
            "lagging, 16MB limit",
            lagging.clone(),
            "/replica?lag=16MB",
            503,
        ),
        (
            "lagging, byte limit",
            lagging.clone(),
            "/replica?lag=1048576",
            503,
        ),
        (
            "lagging, 64MB limit",
            lagging.clone(),
            "/replica?lag=64MB",
            200,
        ),
        (
            "lagging, exactly at limit",
            lagging.clone(),
            "/replica?lag=32MB",
            200,
        ),
        (
            "lagging, 1GB limit",
            lagging.clone(),
            "/replica?lag=1GB",
            200,
        ),
        (
            "lagging, unparseable limit ignored",
            lagging.clone(),
            "/replica?lag=lots",
            200,
        ),
        ("lagging, async", lagging.clone(), "/async?lag=16MB", 503),
        (
            "lagging, read-only",
            lagging.clone(),
            "/read-only?lag=16MB",
            503,
        ),
        ("tag match", replica(0), "/replica?tag_zone=a", 200),
        ("tag mismatch", replica(0), "/replica?tag_zone=b", 503),
        ("tag missing", replica(0), "/replica?tag_rack=1", 503),
        (
            "bool tag as lowercase text",
            replica(0),
            "/replica?tag_nofailover=false",
            200,
        ),
        (
            "number tag as text",
            replica(0),
            "/replica?tag_weight=3",
            200,
        ),
        (
            "two tags, one wrong",
            replica(0),
            "/replica?tag_zone=a&tag_weight=4",
            503,
        ),
        ("tags on health", replica(0), "/health?tag_zone=b", 503),
        (
            "tags ignored on primary paths",
            primary(),
            "/primary?tag_zone=b",
            200,
        ),
        (
            "tags ignored on leader",
            primary(),
            "/leader?tag_missing=x",
            200,
        ),
        (
            "streaming wanted",
            replica(0),
            "/replica?replication_state=streaming",
            200,
        ),
        (
            "archive recovery is not streaming",
            {
                let mut s = replica(0);
                s.postgres.replication_state = Some("in archive recovery".into());
                s
            },
            "/replica?replication_state=streaming",
            503,
        ),
        (
            "replica path by substring",
            replica(0),
            "/replica-anything",
            200,
        ),
    ];
    check_codes(cases).await;
}

#[tokio::test]
async fn sync_standby_endpoints() {
    let mut sync_replica = replica(0);
    sync_replica.dynamic_config = Some(json!({"synchronous_mode": true}));
    if let Some(c) = sync_replica.cluster.as_mut() {
        c.sync = SyncState {
            leader: Some("pg-0".into()),
            sync_standby: vec!["PG-1".into()],
            ..Default::default()
        };
    }
    let body = get(sync_replica.clone(), "/sync").await;
    assert_eq!(body.status, StatusCode::OK);
    assert_eq!(body.json()["sync_standby"], json!(true));
    check_codes(vec![
        ("sync", sync_replica.clone(), "/synchronous", 200),
        ("sync", sync_replica.clone(), "/read-only-sync", 200),
        ("sync", sync_replica.clone(), "/async", 503),
        (
            "sync without DCS",
            {
                let mut s = sync_replica.clone();
                s.cluster = None;
                s
            },
            "/sync",
            503,
        ),
    ])
    .await;
}

#[tokio::test]
async fn paused_without_dcs_uses_local_role() {
    let mut s = primary();
    s.paused = true;
    s.cluster = None;
    s.has_lock = false;
    check_codes(vec![
        ("paused primary, DCS down", s.clone(), "/primary", 200),
        ("paused primary, DCS down", s.clone(), "/leader", 200),
        ("paused primary, DCS down", s.clone(), "/replica", 503),
    ])
    .await;
    let body = get(s, "/patroni").await.json();
    assert_eq!(body["pause"], json!(true));
    assert_eq!(body["cluster_unlocked"], json!(true));
}

#[tokio::test]
async fn primary_status_json() {
    let reply = get(primary(), "/patroni").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    let body = reply.json();
    assert_eq!(
        body,
        json!({
            "state": "running",
            "postmaster_start_time": "2024-06-01 10:00:00.123+00:00",
            "role": "primary",
            "server_version": 150004,
            "xlog": {"location": LEADER_OPTIME},
            "timeline": 2,
            "replication": [{"usename": "standby", "application_name": "pg-1", "client_addr": "127.0.0.1",
                             "state": "streaming", "sync_state": "async", "sync_priority": 0}],
            "dcs_last_seen": 1_717_236_310,
            "tags": {"clonefrom": true},
            "database_system_identifier": "7379123456789012345",
            "patroni": {"version": "4.1.5", "scope": "demo", "name": "pg-0"},
        })
    );
}

#[tokio::test]
async fn replica_status_json() {
    let mut s = replica(4096);
    s.postgres.pending_restart = true;
    s.postgres.pending_restart_reason =
        Some(json!({"max_connections": {"old_value": "100", "new_value": "200"}}));
    if let Some(c) = s.cluster.as_mut() {
        c.leader = None;
    }
    let body = get(s, "/replica").await.json();
    assert_eq!(body["role"], "replica");
    assert_eq!(
        body["xlog"],
        json!({"received_location": LEADER_OPTIME - 4096, "replayed_location": LEADER_OPTIME - 4096,
               "replayed_timestamp": null, "paused": false})
    );
    assert_eq!(body["replication_state"], "streaming");
    assert_eq!(body["cluster_unlocked"], json!(true));
    assert_eq!(body["pending_restart"], json!(true));
    assert_eq!(
        body["pending_restart_reason"]["max_connections"]["new_value"],
        "200"
    );
    assert!(
        body.get("replication").is_none(),
        "no senders, no replication key: {body}"
    );
}

#[tokio::test]
async fn stopped_status_json_has_only_state_and_role() {
    let reply = get(stopped(), "/patroni").await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["state"], "stopped");
    assert_eq!(body["role"], "uninitialized");
    assert_eq!(body["patroni"]["name"], "pg-2");
    for absent in [
        "xlog",
        "timeline",
        "server_version",
        "postmaster_start_time",
        "tags",
        "pause",
    ] {
        assert!(body.get(absent).is_none(), "{absent} present: {body}");
    }
    // Running but not queryable is reported as unknown, like Patroni.
    let mut s = primary();
    s.postgres.wal = Wal::Unknown;
    let reply = get(s, "/health").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["state"], "unknown");
}

#[tokio::test]
async fn head_and_options_give_status_only() {
    for method in [Method::HEAD, Method::OPTIONS] {
        for (snapshot, path, expected) in [
            (primary(), "/primary", 200),
            (replica(0), "/primary", 503),
            (replica(0), "/replica", 200),
            (replica(0), "/whatever", 503),
        ] {
            let reply = call(snapshot, method.clone(), path).await;
            assert_eq!(reply.status.as_u16(), expected, "{method} {path}");
            assert!(reply.body.is_empty(), "{method} {path} has a body");
            assert!(
                reply.content_type.is_none(),
                "{method} {path} has a content type"
            );
        }
    }
}

#[tokio::test]
async fn unknown_method_is_501() {
    for (method, path) in [
        (Method::POST, "/primary"),
        (Method::DELETE, "/cluster"),
        (Method::PUT, "/nothing"),
    ] {
        let reply = call(primary(), method.clone(), path).await;
        assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED, "{method} {path}");
        assert!(reply
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/html")));
        let text = String::from_utf8_lossy(&reply.body);
        assert!(
            text.contains(&format!("Unsupported method ('{method}')")),
            "{text}"
        );
    }
}

#[tokio::test]
async fn liveness() {
    let now = chrono::Utc::now().timestamp_millis();
    let at = |mut s: Snapshot, seconds_ago: i64| {
        s.last_cycle_unix_ms = Some(now - seconds_ago * 1000);
        s
    };
    // Deadline: last cycle + loop_wait (10 s) + ttl (30 s) on a primary, + 2·ttl elsewhere.
    let cases = vec![
        ("primary fresh", at(primary(), 1), 200),
        ("primary overdue", at(primary(), 45), 503),
        ("replica within 2·ttl", at(replica(0), 45), 200),
        ("replica overdue", at(replica(0), 75), 503),
        (
            "paused and overdue",
            {
                let mut s = at(primary(), 500);
                s.paused = true;
                s
            },
            200,
        ),
        (
            "no cycle yet",
            {
                let mut s = primary();
                s.last_cycle_unix_ms = None;
                s
            },
            200,
        ),
    ];
    for (name, snapshot, expected) in cases {
        let reply = get(snapshot, "/liveness").await;
        assert_eq!(reply.status.as_u16(), expected, "{name}");
        assert!(reply.body.is_empty(), "{name}: liveness has a body");
    }
}

#[tokio::test]
async fn readiness() {
    let cases = vec![
        ("lock holder", primary(), "/readiness", 200),
        ("streaming replica", replica(0), "/readiness", 200),
        (
            "replica beyond maximum_lag_on_failover",
            replica(2 << 20),
            "/readiness",
            503,
        ),
        (
            "replica within explicit lag",
            replica(2 << 20),
            "/readiness?lag=4MB",
            200,
        ),
        (
            "mode=write uses received",
            {
                let mut s = replica(2 << 20);
                s.postgres.wal = Wal::Replica {
                    received: Some(LEADER_OPTIME),
                    replayed: Some(LEADER_OPTIME - (2 << 20)),
                    replayed_timestamp: None,
                    paused: false,
                };
                s
            },
            "/readiness?mode=write",
            200,
        ),
        ("stopped", stopped(), "/readiness", 503),
        (
            "no DCS view",
            {
                let mut s = replica(0);
                s.cluster = None;
                s
            },
            "/readiness",
            503,
        ),
        (
            "not streaming",
            {
                let mut s = replica(0);
                s.postgres.replication_state = Some("in archive recovery".into());
                s
            },
            "/readiness",
            503,
        ),
    ];
    for (name, snapshot, path, expected) in cases {
        let reply = get(snapshot, path).await;
        assert_eq!(reply.status.as_u16(), expected, "{name}");
        assert!(reply.body.is_empty(), "{name}: readiness has a body");
    }
}

#[tokio::test]
async fn cluster_view() {
    let mut s = replica(0);
    s.dynamic_config = Some(json!({"synchronous_mode": "on", "pause": true}));
    if let Some(c) = s.cluster.as_mut() {
        c.sync = SyncState {
            leader: Some("pg-0".into()),
            sync_standby: vec!["pg-1".into()],
            ..Default::default()
        };
        c.config = Some(ClusterConfig {
            raw: json!({"pause": true}),
            version: None,
        });
        c.failover = Some(Failover {
            leader: Some("pg-0".into()),
            member: Some("pg-1".into()),
            scheduled_at: Some("2030-01-01T00:00:00+00:00".into()),
            version: None,
        });
    }
    let reply = get(s, "/cluster").await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["scope"], "demo");
    assert_eq!(body["pause"], json!(true));
    assert_eq!(
        body["scheduled_switchover"],
        json!({"at": "2030-01-01T00:00:00+00:00", "from": "pg-0", "to": "pg-1"})
    );
    let members = body["members"].as_array().expect("members is a list");
    let names: Vec<&str> = members.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, ["pg-0", "pg-1", "pg-2"]);
    let leader = &members[0];
    assert_eq!(leader["role"], "leader");
    assert_eq!(leader["state"], "running");
    assert_eq!(leader["host"], "127.0.0.1");
    assert_eq!(leader["port"], 5432);
    assert_eq!(leader["api_url"], "http://127.0.0.1:8008/patroni");
    assert_eq!(leader["timeline"], 2);
    assert!(
        leader.get("lag").is_none(),
        "the leader has no lag: {leader}"
    );
    let sync = &members[1];
    assert_eq!(sync["role"], "sync_standby");
    assert_eq!(sync["state"], "streaming");
    assert_eq!(sync["lag"], 1024);
    assert_eq!(sync["lsn"], model::format_lsn(LEADER_OPTIME - 1024));
    assert_eq!(sync["receive_lag"], "unknown");
    let unknown = &members[2];
    assert_eq!(unknown["role"], "replica");
    assert_eq!(unknown["lag"], "unknown");

    let reply = get(stopped(), "/cluster").await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = get(
        {
            let mut s = stopped();
            s.cluster = None;
            s
        },
        "/cluster",
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn standby_cluster_roles_in_cluster_view() {
    let mut s = replica(0);
    s.standby_cluster = true;
    let body = get(s, "/cluster").await.json();
    assert_eq!(body["members"][0]["role"], "standby_leader");
}

#[tokio::test]
async fn history_config_failsafe() {
    let reply = get(primary(), "/history").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!([[
            1,
            25_623_960,
            "no recovery target specified",
            "2024-06-01T09:59:00+00:00",
            "pg-0"
        ]])
    );
    let reply = get(
        {
            let mut s = primary();
            s.cluster = None;
            s
        },
        "/history",
    )
    .await;
    assert_eq!(reply.json(), json!([]));

    let reply = get(primary(), "/config").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"ttl": 30, "loop_wait": 10}));
    let mut s = primary();
    s.dynamic_config = Some(json!({"ttl": 20}));
    assert_eq!(get(s, "/config").await.json(), json!({"ttl": 20}));
    let mut s = primary();
    if let Some(c) = s.cluster.as_mut() {
        c.config = None;
    }
    let reply = get(s, "/config").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply
        .content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("text/html")));

    assert_eq!(
        get(primary(), "/failsafe").await.status,
        StatusCode::BAD_GATEWAY
    );
    let mut s = primary();
    s.failsafe = Some(json!({"pg-0": "http://127.0.0.1:8008/patroni"}));
    let reply = get(s, "/failsafe").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["pg-0"], "http://127.0.0.1:8008/patroni");
}

#[tokio::test]
async fn metrics_text() {
    let reply = get(primary(), "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type.as_deref(), Some("text/plain"));
    let text = String::from_utf8_lossy(&reply.body).to_string();
    let labels = "{scope=\"demo\",name=\"pg-0\"}";
    for line in [
        format!("patroni_version{labels} 040105"),
        format!("patroni_postgres_running{labels} 1"),
        format!("patroni_primary{labels} 1"),
        format!("patroni_replica{labels} 0"),
        format!("patroni_xlog_location{labels} {LEADER_OPTIME}"),
        format!("patroni_postgres_timeline{labels} 2"),
        format!("patroni_cluster_unlocked{labels} 0"),
        format!("patroni_postgres_state{labels} 5"),
        format!("patroni_postmaster_start_time{labels} 1717236000.123"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[tokio::test]
async fn snapshot_updates_are_seen() {
    let (publisher, receiver) = tokio::sync::watch::channel(stopped());
    let (commands, _inbox) = tokio::sync::mpsc::channel(1);
    let app = router(ApiState {
        snapshot: receiver,
        commands,
        citus: None,
        failsafe: Default::default(),
    });
    let health = || {
        Request::builder()
            .uri("/health")
            .body(Body::empty())
            .expect("valid request")
    };
    let before = app.clone().oneshot(health()).await.expect("infallible");
    assert_eq!(before.status(), StatusCode::SERVICE_UNAVAILABLE);
    publisher.send_replace(primary());
    let after = app.oneshot(health()).await.expect("infallible");
    assert_eq!(after.status(), StatusCode::OK);
}

#[tokio::test]
async fn serves_http_1_0_over_tcp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    let (_publisher, receiver) = tokio::sync::watch::channel(replica(0));
    let (commands, _inbox) = tokio::sync::mpsc::channel(1);
    let (stop, stopped_signal) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        ApiState {
            snapshot: receiver,
            commands,
            citus: None,
            failsafe: Default::default(),
        },
        async move {
            let _ = stopped_signal.await;
        },
    ));

    let exchange = |request: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut raw = Vec::new();
        // HTTP/1.0 without keep-alive: the server closes after the reply, ending the read.
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut raw),
        )
        .await
        .expect("reply within 10 s")
        .expect("read reply");
        String::from_utf8_lossy(&raw).to_string()
    };

    let reply = exchange("GET /replica HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await;
    let status_line = reply.lines().next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/1.") && status_line.contains(" 200 "),
        "{reply}"
    );
    let (head, body) = reply.split_once("\r\n\r\n").expect("header/body separator");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let json: Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(json["role"], "replica");

    let reply = exchange("OPTIONS /primary HTTP/1.0\r\n\r\n").await;
    assert!(
        reply.lines().next().unwrap_or_default().contains(" 503 "),
        "{reply}"
    );
    assert!(
        reply.ends_with("\r\n\r\n"),
        "OPTIONS reply has a body: {reply:?}"
    );

    stop.send(()).expect("server still running");
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("server stops after shutdown")
        .expect("server task did not panic")
        .expect("server ended cleanly");
}

/// A request with a body to an API whose HA loop is played by `fake_loop` (every command it gets).
async fn call_ops(
    snapshot: Snapshot,
    method: Method,
    uri: &str,
    body: Option<&str>,
    fake_loop: impl FnMut(Command) + Send + 'static,
) -> Reply {
    let (publisher, receiver) = tokio::sync::watch::channel(snapshot);
    let (commands, mut inbox) = tokio::sync::mpsc::channel(4);
    let mut fake_loop = fake_loop;
    let loop_task = tokio::spawn(async move {
        while let Some(cmd) = inbox.recv().await {
            fake_loop(cmd);
        }
    });
    let app = router(ApiState {
        snapshot: receiver,
        commands,
        citus: None,
        failsafe: Default::default(),
    });
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(b) = body {
        builder = builder.header(header::CONTENT_LENGTH, b.len());
    }
    let request = builder
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .expect("valid request");
    // Keep the publisher alive while the handler may poll snapshots.
    let publisher = std::sync::Arc::new(publisher);
    let keep = publisher.clone();
    let response = app.oneshot(request).await.expect("router is infallible");
    drop(keep);
    loop_task.abort();
    reply_of(response).await
}

fn no_loop(cmd: Command) {
    panic!("the request should not reach the HA loop: {cmd:?}");
}

fn text_of(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Body validation happens before anything reaches the loop, with Patroni's codes and texts.
#[tokio::test]
async fn switchover_and_failover_body_validation() {
    let mut paused = primary();
    paused.paused = true;
    type Case = (
        &'static str,
        Snapshot,
        &'static str,
        Option<&'static str>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "no body",
            primary(),
            "/switchover",
            None,
            411,
            "Length Required",
        ),
        (
            "not JSON",
            primary(),
            "/switchover",
            Some("{leader"),
            400,
            "not valid JSON",
        ),
        (
            "not an object",
            primary(),
            "/switchover",
            Some("[1]"),
            400,
            "JSON object",
        ),
        (
            "empty object",
            primary(),
            "/switchover",
            Some("{}"),
            400,
            "empty",
        ),
        (
            "switchover without leader",
            primary(),
            "/switchover",
            Some(r#"{"candidate":"pg-1"}"#),
            400,
            "Switchover could be performed only from a specific leader",
        ),
        (
            "failover without candidate",
            primary(),
            "/failover",
            Some(r#"{"leader":"pg-0"}"#),
            400,
            "Failover could be performed only to a specific candidate",
        ),
        (
            "leader of the wrong type",
            primary(),
            "/switchover",
            Some(r#"{"leader":5}"#),
            400,
            "leader: expected a string",
        ),
        (
            "same source and target",
            primary(),
            "/switchover",
            Some(r#"{"leader":"pg-0","candidate":"pg-0"}"#),
            400,
            "Switchover target and source are the same",
        ),
        (
            "scheduled failover",
            primary(),
            "/failover",
            Some(r#"{"candidate":"pg-1","scheduled_at":"2099-01-01T00:00:00+00:00"}"#),
            400,
            "Failover can't be scheduled",
        ),
        (
            "schedule without timezone",
            primary(),
            "/switchover",
            Some(r#"{"leader":"pg-0","scheduled_at":"2099-01-01T00:00:00"}"#),
            400,
            "Timezone information is mandatory for the scheduled switchover",
        ),
        (
            "unparsable schedule",
            primary(),
            "/switchover",
            Some(r#"{"leader":"pg-0","scheduled_at":"tomorrow"}"#),
            422,
            "Unable to parse scheduled timestamp",
        ),
        (
            "schedule in the past",
            primary(),
            "/switchover",
            Some(r#"{"leader":"pg-0","scheduled_at":"2001-01-01T00:00:00+00:00"}"#),
            422,
            "Cannot schedule switchover in the past",
        ),
        (
            "scheduling while paused",
            paused.clone(),
            "/switchover",
            Some(
                r#"{"leader":"pg-0","candidate":"pg-1","scheduled_at":"2099-01-01T00:00:00+00:00"}"#,
            ),
            400,
            "Can't schedule switchover in the paused state",
        ),
        (
            "paused without candidate",
            paused,
            "/switchover",
            Some(r#"{"leader":"pg-0"}"#),
            400,
            "Switchover is possible only to a specific candidate in a paused state",
        ),
        (
            "PATCH /config without body",
            primary(),
            "/config",
            None,
            411,
            "Length Required",
        ),
    ];
    for (what, snapshot, uri, body, code, text) in cases {
        let method = if uri == "/config" {
            Method::PATCH
        } else {
            Method::POST
        };
        let r = call_ops(snapshot, method, uri, body, no_loop).await;
        assert_eq!(r.status.as_u16(), code, "{what}: {}", text_of(&r));
        assert!(text_of(&r).contains(text), "{what}: {}", text_of(&r));
    }
}

#[tokio::test]
async fn restart_filter_validation() {
    let mut paused = primary();
    paused.paused = true;
    let cases: Vec<(&str, Snapshot, &str, u16, &str)> = vec![
        (
            "bad role",
            primary(),
            r#"{"role":"boss"}"#,
            400,
            "PostgreSQL role should be either primary, standby_leader, or replica",
        ),
        (
            "bad version",
            primary(),
            r#"{"postgres_version":"9.6"}"#,
            400,
            "Invalid PostgreSQL version format",
        ),
        (
            "bad timeout",
            primary(),
            r#"{"timeout":-1}"#,
            400,
            "Timeout should be a positive number of seconds",
        ),
        (
            "unknown key",
            primary(),
            r#"{"when":"now"}"#,
            400,
            "Unknown filter for the scheduled restart: when",
        ),
        (
            "schedule while paused",
            paused,
            r#"{"schedule":"2099-01-01T00:00:00+00:00"}"#,
            500,
            "Can't schedule restart in the paused state",
        ),
        (
            "schedule in the past",
            primary(),
            r#"{"schedule":"2001-01-01T00:00:00+00:00"}"#,
            422,
            "Cannot schedule restart in the past",
        ),
    ];
    for (what, snapshot, body, code, text) in cases {
        let r = call_ops(snapshot, Method::POST, "/restart", Some(body), no_loop).await;
        assert_eq!(r.status.as_u16(), code, "{what}: {}", text_of(&r));
        assert!(text_of(&r).contains(text), "{what}: {}", text_of(&r));
    }
    assert_eq!(postgres_version_to_int("15.4"), Some(150004));
    assert_eq!(postgres_version_to_int("9.6.24"), Some(90624));
    assert_eq!(postgres_version_to_int("9.6"), None);
}

/// What the loop answers is what the client gets; a valid request reaches the loop as parsed.
#[tokio::test]
async fn commands_reach_the_loop_and_answers_come_back() {
    let r = call_ops(
        primary(),
        Method::POST,
        "/switchover",
        Some(r#"{"leader":"pg-0","member":"pg-2"}"#),
        |cmd| match cmd {
            Command::Failover { request, reply } => {
                assert_eq!(request.candidate.as_deref(), Some("pg-2"));
                assert_eq!(request.action, FailoverAction::Switchover);
                let _ = reply.send(FailoverOutcome::Refused(OpReply::text(
                    412,
                    "switchover is not possible: no good candidates have been found",
                )));
            }
            other => panic!("unexpected {other:?}"),
        },
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        text_of(&r),
        "switchover is not possible: no good candidates have been found"
    );

    let r = call_ops(
        primary(),
        Method::POST,
        "/switchover",
        Some(r#"{"leader":"pg-0","scheduled_at":"2099-01-01T10:00:00+02:00"}"#),
        |cmd| match cmd {
            Command::Failover { request, reply } => {
                assert_eq!(
                    request.scheduled_at.as_deref(),
                    Some("2099-01-01T10:00:00+02:00")
                );
                let _ = reply.send(FailoverOutcome::Written {
                    at_ms: 0,
                    leader: Some("pg-0".into()),
                });
            }
            other => panic!("unexpected {other:?}"),
        },
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(text_of(&r), "Switchover scheduled");

    let r = call_ops(
        primary(),
        Method::PATCH,
        "/config",
        Some(r#"{"ttl":20,"postgresql":{"parameters":{"work_mem":null}}}"#),
        |cmd| match cmd {
            Command::Config {
                value,
                replace,
                reply,
            } => {
                assert!(!replace);
                assert_eq!(value["postgresql"]["parameters"]["work_mem"], Value::Null);
                let _ = reply.send(OpReply::json(200, json!({"ttl": 20})));
            }
            other => panic!("unexpected {other:?}"),
        },
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"ttl": 20}));

    let r = call_ops(primary(), Method::POST, "/reload", None, |cmd| match cmd {
        Command::Reload { reply } => {
            let _ = reply.send(OpReply::text(202, "reload scheduled"));
        }
        other => panic!("unexpected {other:?}"),
    })
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(text_of(&r), "reload scheduled");

    // A loop that never answers: 503, not a hung request.
    let (publisher, receiver) = tokio::sync::watch::channel(primary());
    let (commands, inbox) = tokio::sync::mpsc::channel(1);
    drop(inbox);
    let app = router(ApiState {
        snapshot: receiver,
        commands,
        citus: None,
        failsafe: Default::default(),
    });
    let request = Request::builder()
        .method(Method::POST)
        .uri("/reload")
        .body(Body::empty())
        .expect("valid request");
    let response = app.oneshot(request).await.expect("router is infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(publisher);
}

/// The poll after a switchover: only views read after the write count.
#[test]
fn failover_verdicts() {
    let written = 1_000;
    let mut snap = primary();
    snap.last_cycle_unix_ms = Some(written - 1);
    let sw = FailoverAction::Switchover;
    let mut with_failover = cluster();
    with_failover.failover = Some(Failover {
        leader: Some("pg-0".into()),
        member: Some("pg-1".into()),
        ..Default::default()
    });
    snap.cluster = Some(with_failover.clone());
    assert_eq!(
        ops::failover_verdict(&snap, written, Some("pg-0"), Some("pg-1"), sw),
        None,
        "a view older than the write"
    );
    snap.last_cycle_unix_ms = Some(written + 1);
    assert_eq!(
        ops::failover_verdict(&snap, written, Some("pg-0"), Some("pg-1"), sw),
        None,
        "still the old leader, request pending"
    );
    let mut moved = with_failover.clone();
    moved.leader = Some(Leader {
        name: "pg-1".into(),
        version: None,
    });
    snap.cluster = Some(moved.clone());
    assert_eq!(
        ops::failover_verdict(&snap, written, Some("pg-0"), Some("pg-1"), sw),
        Some((200, "Successfully switched over to \"pg-1\"".into()))
    );
    assert_eq!(
        ops::failover_verdict(&snap, written, Some("pg-0"), Some("pg-2"), sw),
        Some((200, "Switched over to \"pg-1\" instead of \"pg-2\"".into()))
    );
    assert_eq!(
        ops::failover_verdict(&snap, written, None, Some("pg-1"), FailoverAction::Failover),
        Some((200, "Successfully failed over to \"pg-1\"".into()))
    );
    let mut gone = cluster();
    gone.failover = None;
    snap.cluster = Some(gone);
    assert_eq!(
        ops::failover_verdict(&snap, written, Some("pg-0"), Some("pg-1"), sw),
        Some((503, "Switchover failed".into()))
    );
}

/// `POST /failsafe`: 502 with failsafe mode off, 500 on a running primary, 400 naming a bad
/// field, 200 `Accepted` on a replica — which records the sender for the HA loop at once,
/// without waiting for it.
#[tokio::test]
async fn post_failsafe() {
    async fn post(snapshot: Snapshot, inbox: &FailsafeInbox, body: &str) -> (u16, String) {
        let (_publisher, receiver) = tokio::sync::watch::channel(snapshot);
        // Nobody reads commands: the handler must not need the HA loop.
        let (commands, _unread) = tokio::sync::mpsc::channel(1);
        let app = router(ApiState {
            snapshot: receiver,
            commands,
            citus: None,
            failsafe: inbox.clone(),
        });
        let request = Request::builder()
            .method(Method::POST)
            .uri("/failsafe")
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body.to_string()))
            .expect("valid request");
        let response = app.oneshot(request).await.expect("router is infallible");
        let code = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (code, String::from_utf8_lossy(&bytes).into_owned())
    }
    let body = r#"{"name":"pg-0","conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","slots":{"s1":100}}"#;
    let on = |mut s: Snapshot| {
        s.failsafe_mode = true;
        s
    };
    let inbox = FailsafeInbox::default();
    assert_eq!(post(replica(0), &inbox, body).await.0, 502);
    assert!(inbox.last().is_none());
    let (code, text) = post(on(primary()), &inbox, body).await;
    assert_eq!((code, text.as_str()), (500, "Running as a leader"));
    assert!(inbox.last().is_none());
    for (bad, field) in [
        (r#"{"conn_url":"x"}"#, "name"),
        (r#"{"name":7}"#, "name"),
        (r#"{"name":"pg-0","api_url":5}"#, "api_url"),
        (r#"{"name":"pg-0","slots":{"s":"x"}}"#, "slots"),
    ] {
        let (code, text) = post(on(replica(0)), &inbox, bad).await;
        assert_eq!(code, 400, "{bad}");
        assert!(text.contains(field), "{bad}: {text}");
    }
    assert!(inbox.last().is_none());
    let (code, text) = post(on(replica(0)), &inbox, body).await;
    assert_eq!((code, text.as_str()), (200, "Accepted"));
    let call = inbox.last().expect("recorded");
    assert_eq!(call.leader, "pg-0");
    assert_eq!(
        call.api_url.as_deref(),
        Some("http://127.0.0.1:8008/patroni")
    );
    assert_eq!(call.slots.get("s1"), Some(&json!(100)));
}
