//! The etcd v3 backend against a real etcd (started per test on free 127.0.0.1 ports).

// A test file: its helpers, too, may stop the test on an unexpected value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use dcs::etcd::{Etcd3, EtcdConfig};
use dcs::{Dcs, DcsError, Failover, MemberData, Role, Status, SyncState, Tags, Timing};
use serde_json::json;

mod support;
use support::etcd::{assert_acquisition_wakes, free_port, race, EtcdServer};

/// Send a signal (`STOP`, `CONT`) to the etcd process.
fn signal(server: &EtcdServer, sig: &str) {
    let pid = server.pid().to_string();
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

fn timing(ttl: u32, retry_timeout: u32) -> Timing {
    Timing {
        ttl,
        loop_wait: 1,
        retry_timeout,
    }
}

fn member(server: &EtcdServer, scope: &str, name: &str, timing: Timing) -> Etcd3 {
    Etcd3::new(EtcdConfig {
        hosts: vec![server.url()],
        scope: scope.into(),
        name: name.into(),
        timing,
        ..Default::default()
    })
    .expect("valid etcd config")
}

fn data(role: Role) -> MemberData {
    MemberData {
        conn_url: Some("postgres://127.0.0.1:5432/postgres".into()),
        api_url: Some("http://127.0.0.1:8008/patroni".into()),
        state: "running".into(),
        role,
        version: Some("4.0.0".into()),
        xlog_location: Some(67108960),
        timeline: Some(2),
        ..Default::default()
    }
}

/// Write a raw value the way another tool (or a broken peer) would.
async fn raw_put(server: &EtcdServer, key: &str, value: &str) {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    server
        .raw_post(
            "/v3/kv/put",
            json!({"key": b64(key), "value": b64(value)}),
            None,
        )
        .await;
}

#[tokio::test]
async fn lock_race_has_exactly_one_winner_and_only_the_holder_renews_or_deletes() {
    let server = EtcdServer::start_plain().await;
    let a = member(&server, "race", "a", timing(10, 3));
    let b = member(&server, "race", "b", timing(10, 3));
    for round in 0..20 {
        let (holder, other, holder_name) = race(&a, &b, round).await;
        let cluster = holder.get_cluster().await.expect("read");
        assert_eq!(cluster.leader_name(), Some(holder_name));
        // A second attempt while the lock is held loses, even for the holder's rival.
        assert!(!other.attempt_to_acquire_leader().await.expect("re-acquire"));
        assert!(holder
            .update_leader(&cluster, Some(round), None)
            .await
            .expect("renew"));
        assert!(!other
            .update_leader(&cluster, Some(round), None)
            .await
            .expect("renew by other"));
        assert!(!other.delete_leader(None).await.expect("delete by other"));
        assert_eq!(
            other.get_cluster().await.expect("read").leader_name(),
            Some(holder_name)
        );
        assert!(holder.delete_leader(None).await.expect("release"));
        assert!(a.get_cluster().await.expect("read").leader.is_none());
    }
}

#[tokio::test]
async fn renew_records_optime_and_delete_leader_keeps_slots() {
    let server = EtcdServer::start_plain().await;
    let a = member(&server, "optime", "a", timing(10, 3));
    let b = member(&server, "optime", "b", timing(10, 3));
    // Without a lease nothing can be renewed.
    assert!(!a
        .update_leader(&Default::default(), Some(1), None)
        .await
        .expect("renew"));
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    let mut slots = serde_json::Map::new();
    slots.insert("permanent".into(), json!(100));
    a.write_status(&Status {
        optime: Some(10),
        slots,
        ..Default::default()
    })
    .await
    .expect("status");
    let cluster = a.get_cluster().await.expect("read");
    assert!(a
        .update_leader(&cluster, Some(20), None)
        .await
        .expect("renew"));
    let cluster = b.get_cluster().await.expect("read");
    assert_eq!(cluster.status.optime, Some(20));
    assert_eq!(cluster.status.slots.get("permanent"), Some(&json!(100)));
    // A non-holder neither deletes the lock nor records its optime.
    assert!(!b.delete_leader(Some(5)).await.expect("delete by other"));
    assert_eq!(b.get_cluster().await.expect("read").status.optime, Some(20));
    assert!(a.delete_leader(Some(30)).await.expect("delete"));
    let cluster = b.get_cluster().await.expect("read");
    assert!(cluster.leader.is_none());
    assert_eq!(cluster.status.optime, Some(30));
    assert_eq!(cluster.status.slots.get("permanent"), Some(&json!(100)));
}

#[tokio::test]
async fn lock_expires_without_renewal_and_a_watcher_wakes() {
    let server = EtcdServer::start_plain().await;
    // etcd's minimum lease TTL with default election timing is 2 s.
    let a = member(&server, "expiry", "a", timing(2, 2));
    let b = member(&server, "expiry", "b", timing(2, 2));
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    let acquired = Instant::now();
    assert_eq!(
        b.get_cluster().await.expect("read").leader_name(),
        Some("a")
    );
    // a stops renewing; b waits for a change.
    let woke = b.watch(Duration::from_secs(8)).await;
    let waited = acquired.elapsed();
    assert!(woke, "watch must wake when the lock expires");
    let after_wake = b.get_cluster().await.expect("read");
    assert!(
        after_wake.leader.is_none(),
        "woken before the lock vanished: {:?}",
        after_wake.leader
    );
    assert!(
        waited >= Duration::from_millis(1500),
        "lock vanished too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "lock expired or wake came too late: {waited:?}"
    );
    // Once another member took the lock, the former holder's renew fails and changes nothing.
    let cluster = a.get_cluster().await.expect("read");
    assert!(b
        .attempt_to_acquire_leader()
        .await
        .expect("b takes the free lock"));
    assert!(!a
        .update_leader(&cluster, None, None)
        .await
        .expect("renew after expiry"));
    assert_eq!(
        a.get_cluster().await.expect("read").leader_name(),
        Some("b")
    );
    // b's lease runs out too while nobody takes the lock: b's renew attaches the lock to a new
    // lease (the store was unreachable for longer than ttl, the lock is still free).
    wait_until_lock_free(&a).await;
    let cluster = b.get_cluster().await.expect("read");
    assert!(b
        .update_leader(&cluster, Some(7), None)
        .await
        .expect("renew after expiry, lock free"));
    let after = a.get_cluster().await.expect("read");
    assert_eq!(after.leader_name(), Some("b"));
    assert_eq!(after.status.optime, Some(7));
    // And the new lease is kept alive by the next renews.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(b
        .update_leader(&b.get_cluster().await.expect("read"), None, None)
        .await
        .expect("renew"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        a.get_cluster().await.expect("read").leader_name(),
        Some("b")
    );
}

async fn wait_until_lock_free(reader: &Etcd3) {
    let started = Instant::now();
    while reader.get_cluster().await.expect("read").leader.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the unrenewed lock never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn compare_and_swap_on_config_failover_and_sync() {
    let server = EtcdServer::start_plain().await;
    let a = member(&server, "cas", "a", timing(10, 3));
    let b = member(&server, "cas", "b", timing(10, 3));
    assert!(a
        .set_config_value(&json!({"ttl": 30}), None)
        .await
        .expect("config"));
    let seen = a
        .get_cluster()
        .await
        .expect("read")
        .config
        .expect("config present");
    let version = seen.version.clone().expect("config version");
    assert!(b
        .set_config_value(&json!({"ttl": 40}), Some(&version))
        .await
        .expect("cas b"));
    assert!(!a
        .set_config_value(&json!({"ttl": 50}), Some(&version))
        .await
        .expect("stale cas"));
    let config = a
        .get_cluster()
        .await
        .expect("read")
        .config
        .expect("config present");
    assert_eq!(config.raw, json!({"ttl": 40}));

    let failover = Failover {
        leader: Some("a".into()),
        member: Some("b".into()),
        ..Default::default()
    };
    assert!(a
        .set_failover_value(&failover, None)
        .await
        .expect("failover"));
    let seen = b
        .get_cluster()
        .await
        .expect("read")
        .failover
        .expect("failover present");
    assert_eq!(seen.member.as_deref(), Some("b"));
    let version = seen.version.clone().expect("failover version");
    assert!(a
        .set_failover_value(&failover, Some(&version))
        .await
        .expect("rewrite"));
    assert!(!b
        .delete_failover(Some(&version))
        .await
        .expect("stale delete"));
    assert!(b.get_cluster().await.expect("read").failover.is_some());
    let version = b
        .get_cluster()
        .await
        .expect("read")
        .failover
        .and_then(|f| f.version);
    assert!(b.delete_failover(version.as_deref()).await.expect("delete"));
    assert!(b.get_cluster().await.expect("read").failover.is_none());

    let sync = SyncState {
        leader: Some("a".into()),
        sync_standby: vec!["b".into()],
        ..Default::default()
    };
    assert!(a.set_sync_state(&sync, None).await.expect("sync"));
    let seen = b.get_cluster().await.expect("read").sync;
    assert_eq!(
        (seen.leader.as_deref(), seen.sync_standby.clone()),
        (Some("a"), vec!["b".to_string()])
    );
    let version = seen.version.expect("sync version");
    assert!(a
        .set_sync_state(
            &SyncState {
                leader: Some("a".into()),
                ..Default::default()
            },
            Some(&version)
        )
        .await
        .expect("cas"));
    assert!(!b
        .delete_sync_state(Some(&version))
        .await
        .expect("stale delete"));
    assert!(b.delete_sync_state(None).await.expect("delete"));
    assert!(b.get_cluster().await.expect("read").sync.leader.is_none());
}

#[tokio::test]
async fn initialize_race_has_one_winner() {
    let server = EtcdServer::start_plain().await;
    let a = member(&server, "init", "a", timing(10, 3));
    let b = member(&server, "init", "b", timing(10, 3));
    for round in 0..10 {
        let (ra, rb) = tokio::join!(a.initialize(true, ""), b.initialize(true, ""));
        let (ra, rb) = (ra.expect("a init"), rb.expect("b init"));
        assert!(
            ra ^ rb,
            "round {round}: exactly one must win (a={ra}, b={rb})"
        );
        assert_eq!(
            a.get_cluster().await.expect("read").initialize.as_deref(),
            Some("")
        );
        a.cancel_initialization().await.expect("cancel");
        assert!(b.get_cluster().await.expect("read").initialize.is_none());
    }
    assert!(a.initialize(true, "").await.expect("init"));
    assert!(a
        .initialize(false, "7123456789012345678")
        .await
        .expect("set sysid"));
    assert!(!b.initialize(true, "").await.expect("late init"));
    let cluster = b.get_cluster().await.expect("read");
    assert_eq!(cluster.initialized_sysid(), Some("7123456789012345678"));
}

#[tokio::test]
async fn garbage_written_by_others_is_reported_not_fatal() {
    let server = EtcdServer::start_plain().await;
    let a = member(&server, "garbage", "a", timing(10, 3));
    a.touch_member(&data(Role::Replica)).await.expect("touch");
    raw_put(&server, "/service/garbage/members/broken", "{not json").await;
    raw_put(&server, "/service/garbage/history", r#"[[1,"x"]"#).await;
    raw_put(&server, "/service/garbage/config", "[1,2,3]").await;
    raw_put(&server, "/service/garbage/status", "nonsense").await;
    let cluster = a
        .get_cluster()
        .await
        .expect("cluster read must survive garbage");
    let warned = |key: &str| cluster.warnings.iter().any(|w| w.contains(key));
    assert!(
        warned("/service/garbage/members/broken"),
        "{:?}",
        cluster.warnings
    );
    assert!(warned("/service/garbage/history"), "{:?}", cluster.warnings);
    assert!(warned("/service/garbage/config"), "{:?}", cluster.warnings);
    assert!(warned("/service/garbage/status"), "{:?}", cluster.warnings);
    assert!(cluster.config.is_none());
    assert!(cluster.history.is_empty());
    let broken = cluster.member("broken").expect("broken member is kept");
    assert_eq!(broken.data, MemberData::default());
    assert!(!broken.data.tags.can_be_leader() || !broken.data.is_running());
    assert_eq!(
        cluster.member("a").map(|m| &m.data),
        Some(&data(Role::Replica))
    );
}

#[tokio::test]
async fn member_data_round_trip_and_lifecycle() {
    let server = EtcdServer::start_plain().await;
    // A dead first host: requests must move on to the live one.
    let dead = format!("127.0.0.1:{}", free_port());
    let a = Etcd3::new(EtcdConfig {
        hosts: vec![dead, server.url()],
        namespace: "/regent/".into(),
        scope: "members".into(),
        name: "a".into(),
        group: Some(1),
        timing: timing(10, 3),
        ..Default::default()
    })
    .expect("config");
    assert_eq!(a.prefix(), "/regent/members/1/");
    let mut mine = data(Role::Primary);
    mine.tags =
        serde_json::from_value::<Tags>(json!({"nofailover": true, "custom": "x"})).expect("tags");
    mine.extra
        .insert("proxy_url".into(), json!("postgres://proxy:5432/postgres"));
    a.touch_member(&mine).await.expect("touch");
    raw_put(&server, "/regent/members/1/members/old", r#"{"role":"master","state":"running","conn_url":"postgres://10.0.0.2:5432/postgres","xlog_location":"42"}"#).await;
    let cluster = a.get_cluster().await.expect("read");
    let me = cluster.member("a").expect("own member");
    assert_eq!(me.data, mine);
    let old = cluster.member("old").expect("Patroni 3 member");
    assert_eq!(old.data.role, Role::Primary);
    assert_eq!(old.data.xlog_location, Some(42));
    // Unchanged data is not rewritten.
    let version = me.version.clone();
    a.touch_member(&mine).await.expect("touch again");
    assert_eq!(
        a.get_cluster()
            .await
            .expect("read")
            .member("a")
            .and_then(|m| m.version.clone()),
        version
    );
    // A member key removed by someone else is written again on the next touch.
    a.delete_member().await.expect("delete member");
    assert!(a.get_cluster().await.expect("read").member("a").is_none());
    a.touch_member(&mine).await.expect("touch after delete");
    assert!(a.get_cluster().await.expect("read").member("a").is_some());
    // close() revokes the lease: member key and lock vanish at once.
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    a.close().await.expect("close");
    let cluster = a.get_cluster().await.expect("read");
    assert!(cluster.member("a").is_none());
    assert!(cluster.leader.is_none());
}

#[tokio::test]
async fn watch_wakes_on_leader_change_and_new_members_not_on_member_updates() {
    let server = EtcdServer::start_plain().await;
    let a = member(&server, "watch", "a", timing(10, 3));
    let b = member(&server, "watch", "b", timing(10, 3));
    b.get_cluster().await.expect("read");
    assert!(
        !b.watch(Duration::from_millis(200)).await,
        "nothing changed yet"
    );
    // A member that appears wakes the others (the leader creates its replication slot).
    let (woke, touched) = tokio::join!(b.watch(Duration::from_secs(5)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.touch_member(&data(Role::Replica)).await
    });
    touched.expect("first touch");
    assert!(woke, "watch must wake when a member key is created");
    // Member updates, status and history writes happen every cycle and must not wake anyone.
    a.touch_member(&data(Role::Primary))
        .await
        .expect("touch update");
    a.write_status(&Status {
        optime: Some(5),
        ..Default::default()
    })
    .await
    .expect("status");
    a.set_history_value(&[]).await.expect("history");
    assert!(
        !b.watch(Duration::from_millis(800)).await,
        "woken by a member/status/history write"
    );
    assert_acquisition_wakes(&a, &b).await;
    // A deleted lock is noticed within milliseconds.
    let ((woke, woke_at), deleted_at) = tokio::join!(
        async { (b.watch(Duration::from_secs(5)).await, Instant::now()) },
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(a.delete_leader(None).await.expect("release"));
            Instant::now()
        }
    );
    assert!(woke, "watch must wake on the deleted lock");
    let delay = woke_at.saturating_duration_since(deleted_at);
    assert!(
        delay < Duration::from_millis(500),
        "deleted lock noticed after {delay:?}"
    );
    // A change between two watch calls is not lost.
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    let started = Instant::now();
    assert!(
        b.watch(Duration::from_secs(5)).await,
        "change between calls was lost"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Config changes wake too.
    assert!(a
        .set_config_value(&json!({"loop_wait": 5}), None)
        .await
        .expect("config"));
    assert!(
        b.watch(Duration::from_secs(5)).await,
        "config change must wake"
    );
}

#[tokio::test]
async fn stopped_etcd_gives_unreachable_within_retry_timeout() {
    let mut server = EtcdServer::start_plain().await;
    let a = member(&server, "down", "a", timing(10, 2));
    a.touch_member(&data(Role::Primary)).await.expect("touch");
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    let cluster = a.get_cluster().await.expect("read");
    assert!(!a.watch(Duration::from_millis(100)).await);
    server.stop();
    let started = Instant::now();
    let (read, renew, watched) = tokio::join!(
        a.get_cluster(),
        a.update_leader(&cluster, Some(1), None),
        a.watch(Duration::from_millis(500)),
    );
    let elapsed = started.elapsed();
    assert!(matches!(read, Err(DcsError::Unreachable(_))), "{read:?}");
    assert!(matches!(renew, Err(DcsError::Unreachable(_))), "{renew:?}");
    assert!(!watched);
    assert!(
        elapsed >= Duration::from_millis(1500),
        "gave up too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "took too long: {elapsed:?}"
    );
}

#[tokio::test]
async fn watch_survives_an_etcd_restart() {
    let mut server = EtcdServer::start_plain().await;
    let a = member(&server, "restart", "a", timing(10, 5));
    let b = member(&server, "restart", "b", timing(10, 5));
    b.get_cluster().await.expect("read");
    assert!(!b.watch(Duration::from_millis(100)).await);
    server.restart().await;
    // Written while b's watch is probably still reconnecting: it must not be lost.
    assert!(a
        .attempt_to_acquire_leader()
        .await
        .expect("acquire after restart"));
    assert!(
        b.watch(Duration::from_secs(6)).await,
        "watch did not resume after restart"
    );
    assert_eq!(
        b.get_cluster().await.expect("read").leader_name(),
        Some("a")
    );
}

#[tokio::test]
async fn authentication_with_token_renewal() {
    let server = EtcdServer::start_plain().await;
    server.enable_auth("pw").await;
    let with = |user: Option<&str>, password: &str, name: &str| {
        Etcd3::new(EtcdConfig {
            hosts: vec![server.url()],
            scope: "auth".into(),
            name: name.into(),
            username: user.map(String::from),
            password: Some(password.into()),
            timing: timing(10, 2),
            ..Default::default()
        })
        .expect("config")
    };
    let a = with(Some("root"), "pw", "a");
    let b = with(Some("root"), "pw", "b");
    a.touch_member(&data(Role::Replica))
        .await
        .expect("touch with auth");
    b.get_cluster().await.expect("read with auth");
    assert!(matches!(
        with(None, "", "c").get_cluster().await,
        Err(DcsError::Forbidden(_))
    ));
    assert!(matches!(
        with(Some("root"), "bad", "c").get_cluster().await,
        Err(DcsError::Forbidden(_))
    ));
    // Changing the password invalidates every token of the user: a must authenticate again.
    let token = server
        .raw_post(
            "/v3/auth/authenticate",
            json!({"name": "root", "password": "pw"}),
            None,
        )
        .await;
    let token = token["token"].as_str().expect("token").to_string();
    server
        .raw_post(
            "/v3/auth/user/changepw",
            json!({"name": "root", "password": "pw"}),
            Some(&token),
        )
        .await;
    let stale = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
        .post(format!("{}/v3/kv/range", server.url()))
        .header("Authorization", &token)
        .json(&json!({"key": "YQ=="}))
        .send()
        .await
        .expect("range");
    assert_eq!(stale.status().as_u16(), 401, "tokens were not invalidated");
    assert!(!b.watch(Duration::from_millis(100)).await);
    assert!(a
        .attempt_to_acquire_leader()
        .await
        .expect("acquire with a renewed token"));
    assert!(
        b.watch(Duration::from_secs(5)).await,
        "watch with auth must wake"
    );
    assert_eq!(
        b.get_cluster().await.expect("read").leader_name(),
        Some("a")
    );
}

#[tokio::test]
async fn watch_resumes_after_compaction() {
    let server = EtcdServer::start_plain().await;
    let a = member(&server, "compact", "a", timing(10, 3));
    let b = member(&server, "compact", "b", timing(10, 3));
    b.get_cluster().await.expect("read");
    // Member writes after b's read, then compaction past them: b's watch cannot start where it
    // wanted and must report that it may have missed something.
    for i in 0..5u64 {
        a.write_status(&Status {
            optime: Some(i),
            ..Default::default()
        })
        .await
        .expect("status");
    }
    let head = server
        .raw_post("/v3/kv/range", json!({"key": "YQ=="}), None)
        .await;
    let revision = head["header"]["revision"]
        .as_str()
        .expect("revision")
        .to_string();
    server
        .raw_post(
            "/v3/kv/compaction",
            json!({"revision": revision, "physical": true}),
            None,
        )
        .await;
    assert!(
        b.watch(Duration::from_secs(5)).await,
        "compaction must wake the loop"
    );
    // The watch goes on from the current revision.
    assert!(!b.watch(Duration::from_millis(200)).await);
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    assert!(
        b.watch(Duration::from_secs(5)).await,
        "watch must go on after compaction"
    );
}

#[tokio::test]
async fn hung_etcd_times_out_and_recovers() {
    let server = EtcdServer::start_plain().await;
    let a = member(&server, "hung", "a", timing(10, 2));
    let b = member(&server, "hung", "b", timing(10, 2));
    assert!(a.attempt_to_acquire_leader().await.expect("acquire"));
    let cluster = b.get_cluster().await.expect("read");
    assert!(!b.watch(Duration::from_millis(100)).await);
    // A frozen server accepts connections but never answers: only timeouts can save us.
    signal(&server, "STOP");
    let started = Instant::now();
    let (read, renew) = tokio::join!(b.get_cluster(), a.update_leader(&cluster, None, None));
    let elapsed = started.elapsed();
    signal(&server, "CONT");
    assert!(matches!(read, Err(DcsError::Unreachable(_))), "{read:?}");
    assert!(matches!(renew, Err(DcsError::Unreachable(_))), "{renew:?}");
    assert!(
        elapsed < Duration::from_secs(4),
        "took too long: {elapsed:?}"
    );
    // Back to normal once it answers again, and the watch still works.
    let cluster = a.get_cluster().await.expect("read after resume");
    assert!(a
        .update_leader(&cluster, None, None)
        .await
        .expect("renew after resume"));
    assert!(a.delete_leader(None).await.expect("release"));
    assert!(b.watch(Duration::from_secs(5)).await, "watch after resume");
}
