//! End-to-end HA behaviour of three `regent` members (ttl 10, loop_wait 2, retry_timeout 3), each
//! case run on etcd v3 and on the Kubernetes API test server from the same source: bootstrap,
//! failover after a crash, clean shutdown of the leader, a frozen DCS, and a leader cut from the
//! DCS while the others still reach it. Where the primary changes, a role sampler checks that two
//! members never accept writes at once. Every test prints the times it measured.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chrono::Utc;
use regent_tests::cluster::{pod_ip, LeaderRecord, LeaderWatch};
use regent_tests::config::Backend;
use regent_tests::writer::assert_acked_rows_on;
use regent_tests::{
    wait_until, wait_until_ok, Member, RoleSampler, TestCluster, Writer, BOOTSTRAP_DEADLINE,
};
use serde_json::Value;

/// A restarted member may need crash recovery and pg_rewind before it streams again.
const REJOIN_DEADLINE: Duration = Duration::from_secs(120);
const REPLICATION_DEADLINE: Duration = Duration::from_secs(30);

regent_tests::backend_tests! {
    three_members_bootstrap_one_leader_two_streaming_replicas:
        [etcd, kubernetes, kubernetes_endpoints];
    leader_crash_fails_over_and_old_leader_rejoins: [etcd, kubernetes, kubernetes_endpoints];
    sigterm_on_leader_hands_over_quickly: [etcd, kubernetes];
    sigterm_on_leader_does_not_wait_for_a_replica_that_stopped_answering: [etcd];
    frozen_dcs_makes_leader_stop_writes_before_lock_expiry: [etcd, kubernetes];
    isolated_leader_is_replaced_only_after_its_lock_expired: [etcd, kubernetes];
    unclaimed_bootstrap_is_cleared_and_the_cluster_bootstraps: [etcd, kubernetes];
}

/// `initialize` already says "bootstrap in progress" (empty) but no member is bootstrapping —
/// the member that claimed it died, or its write landed although its request timed out. The
/// members clear the claim after a ttl and bootstrap instead of waiting forever.
async fn unclaimed_bootstrap_is_cleared_and_the_cluster_bootstraps(backend: Backend) {
    let cluster = TestCluster::builder("unc")
        .backend(backend)
        .members(2)
        .start_agents(false)
        .start()
        .await;
    let tag = format!("[unclaimed/{}]", backend.label());
    cluster
        .dcs_put("initialize", "")
        .await
        .expect("write an unclaimed bootstrap");
    let started = Instant::now();
    for m in cluster.all() {
        m.start();
    }
    let leader = cluster.wait_for_leader(BOOTSTRAP_DEADLINE).await;
    let took = started.elapsed();
    println!(
        "{tag} the unclaimed bootstrap was cleared and {leader} bootstrapped the cluster after {:.3} s (ttl {} s)",
        took.as_secs_f64(),
        cluster.timing().ttl
    );
    assert!(
        took >= cluster.ttl(),
        "the claim was cleared before a ttl had passed ({took:?})"
    );
    let initialize = cluster.dcs_get("initialize").await.unwrap_or_default();
    assert!(
        initialize.trim().parse::<u64>().is_ok(),
        "initialize holds the system identifier: {initialize:?}"
    );
}

/// `[scope/backend]`, the prefix of every line a test prints.
fn tag(cluster: &TestCluster) -> String {
    format!("[{}/{}]", cluster.scope(), cluster.backend().label())
}

/// Bring up `members` members and wait for a leader with every other member streaming from it.
async fn healthy_cluster(backend: Backend, scope: &str, members: usize) -> (TestCluster, String) {
    let started = Instant::now();
    let cluster = TestCluster::start_on(backend, scope, members).await;
    let leader = cluster.wait_for_leader(BOOTSTRAP_DEADLINE).await;
    let leader_after = started.elapsed();
    cluster
        .wait_for_replicas_streaming(&leader, BOOTSTRAP_DEADLINE)
        .await;
    println!(
        "{} bootstrap: leader {leader} after {:.3} s, all replicas streaming after {:.3} s",
        tag(&cluster),
        leader_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    (cluster, leader)
}

/// Write probe rows `ids` on `leader` and wait until each member of `replicas` has them all.
async fn write_and_replicate(
    cluster: &TestCluster,
    leader: &Member,
    replicas: &[&Member],
    ids: std::ops::RangeInclusive<i64>,
) {
    leader
        .create_probe_table()
        .await
        .expect("create probe table on the leader");
    for id in ids.clone() {
        leader
            .write_probe(id)
            .await
            .unwrap_or_else(|e| panic!("write probe {id} on leader: {e:#}"));
    }
    cluster
        .wait_for_probe_on(replicas, *ids.end(), REPLICATION_DEADLINE)
        .await;
}

/// Try a probe write on each candidate in turn until one commits; returns that member's name
/// and the moment the commit was acknowledged. Each attempt uses a fresh id.
async fn first_writable(
    candidates: &[&Member],
    first_id: i64,
    deadline: Duration,
) -> (String, Instant) {
    let mut next_id = first_id;
    let names: Vec<&str> = candidates.iter().map(|m| m.name()).collect();
    wait_until(
        &format!("one of {names:?} to accept a write"),
        deadline,
        || {
            let ids: Vec<i64> = (next_id..next_id + candidates.len() as i64).collect();
            next_id += candidates.len() as i64;
            async move {
                for (member, id) in candidates.iter().zip(ids) {
                    if member.write_probe(id).await.is_ok() {
                        return Some((member.name().to_string(), Instant::now()));
                    }
                }
                None
            }
        },
    )
    .await
}

fn str_field<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body.get(field).and_then(Value::as_str)
}

async fn three_members_bootstrap_one_leader_two_streaming_replicas(backend: Backend) {
    let (cluster, leader_name) = healthy_cluster(backend, "boot", 3).await;
    let tag = tag(&cluster);
    let leader = cluster.member(&leader_name);
    let replicas = cluster.others(&leader_name);
    let mut replica_names: Vec<String> = replicas.iter().map(|m| m.name().to_string()).collect();
    replica_names.sort();

    // Health checks: exactly one primary, the two others healthy replicas.
    assert_eq!(
        cluster.members_answering("/primary", 200).await,
        vec![leader_name.clone()]
    );
    let mut healthy_replicas = cluster.members_answering("/replica", 200).await;
    healthy_replicas.sort();
    assert_eq!(healthy_replicas, replica_names);

    // GET /patroni on each member.
    let (status, body) = leader
        .api_get("/patroni")
        .await
        .expect("GET /patroni on the leader");
    assert_eq!(status, 200, "{body}");
    assert_eq!(str_field(&body, "role"), Some("primary"), "{body}");
    assert_eq!(str_field(&body, "state"), Some("running"), "{body}");
    assert!(
        body.pointer("/xlog/location")
            .and_then(Value::as_u64)
            .is_some(),
        "{body}"
    );
    assert_eq!(
        body.get("timeline").and_then(Value::as_u64),
        Some(1),
        "{body}"
    );
    for replica in &replicas {
        let (status, body) = replica
            .api_get("/patroni")
            .await
            .expect("GET /patroni on a replica");
        assert_eq!(status, 200, "{}: {body}", replica.name());
        assert_eq!(
            str_field(&body, "role"),
            Some("replica"),
            "{}: {body}",
            replica.name()
        );
        assert_eq!(
            str_field(&body, "state"),
            Some("running"),
            "{}: {body}",
            replica.name()
        );
        let xlog = body.get("xlog").unwrap_or(&Value::Null);
        assert!(
            xlog.get("received_location").is_some() || xlog.get("replayed_location").is_some(),
            "{}: replica xlog lacks received/replayed location: {body}",
            replica.name()
        );
    }

    // GET /cluster lists the three members with their roles.
    let (status, body) = leader.api_get("/cluster").await.expect("GET /cluster");
    assert_eq!(status, 200, "{body}");
    let members = body
        .get("members")
        .and_then(Value::as_array)
        .expect("/cluster has members");
    assert_eq!(members.len(), 3, "{body}");
    for member in members {
        let name = str_field(member, "name").expect("member name");
        let want = if name == leader_name {
            "leader"
        } else {
            "replica"
        };
        assert_eq!(str_field(member, "role"), Some(want), "{name} in {body}");
    }

    // The DCS objects, in Patroni's layout on either backend.
    assert_eq!(
        cluster.dcs_leader().await.as_deref(),
        Some(leader_name.as_str())
    );
    let initialize = cluster
        .dcs_get("initialize")
        .await
        .unwrap_or_else(|| panic!("{} missing", cluster.dcs_location("initialize")));
    assert!(
        initialize.len() >= 10 && initialize.chars().all(|c| c.is_ascii_digit()),
        "initialize must hold the system identifier, got {initialize:?}"
    );
    let config = cluster
        .dcs_get("config")
        .await
        .unwrap_or_else(|| panic!("{} missing", cluster.dcs_location("config")));
    let config: Value = serde_json::from_str(&config).expect("config holds JSON");
    assert_eq!(
        config.get("ttl").and_then(Value::as_u64),
        Some(10),
        "{config}"
    );
    assert_eq!(
        config.get("loop_wait").and_then(Value::as_u64),
        Some(2),
        "{config}"
    );
    for member in &cluster.members {
        let object = format!("members/{}", member.name());
        let location = cluster.dcs_location(&object);
        let data = cluster
            .dcs_get(&object)
            .await
            .unwrap_or_else(|| panic!("{location} missing"));
        let data: Value = serde_json::from_str(&data).expect("member data holds JSON");
        let conn_url = str_field(&data, "conn_url").unwrap_or_default();
        assert!(
            conn_url.contains(&format!(":{}", member.pg_port())),
            "{location}: {data}"
        );
        let api_url = str_field(&data, "api_url").unwrap_or_default();
        assert!(
            api_url.contains(&format!(":{}/patroni", member.api_port())),
            "{location}: {data}"
        );
    }
    if let Backend::Kubernetes { use_endpoints } = backend {
        check_kubernetes_objects(&cluster, &leader_name, use_endpoints).await;
    }

    // A row written on the leader reaches both replicas.
    let started = Instant::now();
    write_and_replicate(&cluster, leader, &replicas, 1..=1).await;
    println!(
        "{tag} row replicated to both replicas in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(cluster.sql_primaries().await, vec![leader_name.clone()]);
}

/// Pod role labels and the leader object's lock annotations (and, in Endpoints mode, its
/// address: the leader's Pod IP and Postgres port).
async fn check_kubernetes_objects(cluster: &TestCluster, leader_name: &str, use_endpoints: bool) {
    for member in &cluster.members {
        let want = if member.name() == leader_name {
            "primary"
        } else {
            "replica"
        };
        // A replica publishes its role on its next cycle after it starts streaming.
        cluster
            .wait_for_pod_role(member.name(), want, Duration::from_secs(10))
            .await;
    }
    let object = cluster
        .kube_leader_object_value()
        .await
        .unwrap_or_else(|| panic!("leader object {} missing", cluster.kube_leader_object()));
    let record = LeaderRecord::from_object(&object);
    assert_eq!(record.leader.as_deref(), Some(leader_name), "{object}");
    assert_eq!(record.ttl, Some(10), "ttl annotation: {object}");
    assert!(
        record.acquire_time.is_some() && record.renew_time.is_some(),
        "acquireTime/renewTime in ISO-8601: {object}"
    );
    let age = Utc::now() - record.renew_time.unwrap_or_default();
    assert!(
        age < chrono::Duration::seconds(5),
        "renewTime is {age} old: the leader must renew every loop: {object}"
    );
    if use_endpoints {
        let index = cluster
            .members
            .iter()
            .position(|m| m.name() == leader_name)
            .expect("leader is a member");
        let address = object
            .pointer("/subsets/0/addresses/0/ip")
            .and_then(Value::as_str);
        assert_eq!(address, Some(pod_ip(index).as_str()), "{object}");
        let port = object
            .pointer("/subsets/0/ports/0/port")
            .and_then(Value::as_u64);
        assert_eq!(
            port,
            Some(u64::from(cluster.member(leader_name).pg_port())),
            "{object}"
        );
    }
}

async fn leader_crash_fails_over_and_old_leader_rejoins(backend: Backend) {
    let (cluster, old_name) = healthy_cluster(backend, "crash", 3).await;
    let tag = tag(&cluster);
    let old = cluster.member(&old_name);
    write_and_replicate(&cluster, old, &cluster.others(&old_name), 1..=20).await;

    let (lock_left, _) = lock_remaining(&cluster, "crash").await;
    let roles = RoleSampler::start(&cluster.all()).await;
    let killed_at = Instant::now();
    old.kill9_with_postmaster();
    let candidates = cluster.others(&old_name);
    let (new_name, writable_at) = first_writable(&candidates, 1_000, Duration::from_secs(60)).await;
    let failover = writable_at - killed_at;
    let bound = cluster.ttl() + Duration::from_secs(2);
    println!(
        "{tag} kill -9 of {old_name} (agent + postmaster): {new_name} accepted writes after \
         {:.3} s (lock had {:.1} s left; bound ttl + 2 s = {:.0} s)",
        failover.as_secs_f64(),
        lock_left.as_secs_f64(),
        bound.as_secs_f64()
    );
    assert!(
        failover <= bound,
        "failover took {failover:?}, more than ttl + 2 s"
    );

    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(30)).await,
        new_name
    );
    assert_eq!(cluster.sql_primaries().await, vec![new_name.clone()]);
    let third = candidates
        .iter()
        .find(|m| m.name() != new_name)
        .map(|m| m.name().to_string())
        .expect("a third member");
    cluster
        .wait_for_member_streaming(&third, &new_name, REJOIN_DEADLINE)
        .await;

    let restarted_at = Instant::now();
    old.restart();
    cluster
        .wait_for_member_streaming(&old_name, &new_name, REJOIN_DEADLINE)
        .await;
    println!(
        "{tag} {old_name} restarted and streams from {new_name} after {:.3} s",
        restarted_at.elapsed().as_secs_f64()
    );

    let new = cluster.member(&new_name);
    new.write_probe(5_000)
        .await
        .expect("write after failover on the new leader");
    println!("{tag} {}", roles.summary());
    roles.assert_never_two_primaries();
    cluster
        .wait_for_probe_on(&cluster.all(), 5_000, REPLICATION_DEADLINE)
        .await;
    let on_new = new.probe_ids().await.expect("probe ids on the new leader");
    assert!(
        (1..=20).all(|id| on_new.contains(&id)),
        "rows written before the crash lost: {on_new:?}"
    );
    for member in &cluster.members {
        let ids = member.probe_ids().await.expect("probe ids");
        assert_eq!(
            ids,
            on_new,
            "{} differs from the new leader {new_name}",
            member.name()
        );
    }
    if backend.is_kubernetes() {
        // The rejoined member's Pod says replica, the new leader's primary.
        for (name, want) in [
            (old_name.as_str(), "replica"),
            (new_name.as_str(), "primary"),
        ] {
            cluster
                .wait_for_pod_role(name, want, Duration::from_secs(10))
                .await;
        }
    }
}

async fn sigterm_on_leader_hands_over_quickly(backend: Backend) {
    let (cluster, old_name) = healthy_cluster(backend, "term", 3).await;
    let tag = tag(&cluster);
    let old = cluster.member(&old_name);
    let others = cluster.others(&old_name);
    write_and_replicate(&cluster, old, &others, 1..=10).await;

    let roles = RoleSampler::start(&cluster.all()).await;
    let signalled_at = Instant::now();
    old.send_sigterm();
    let (exit, (new_name, writable_at)) = tokio::join!(
        old.wait_exit(Duration::from_secs(60)),
        first_writable(&others, 1_000, Duration::from_secs(60)),
    );
    let status = exit.expect("the agent exits after SIGTERM");
    let handover = writable_at - signalled_at;
    println!(
        "{tag} SIGTERM to {old_name}: agent exited with {status}; {new_name} accepted writes \
         after {:.3} s",
        handover.as_secs_f64()
    );
    assert_eq!(status.code(), Some(0), "agent exit status after SIGTERM");
    assert!(
        handover < Duration::from_secs(3),
        "handover took {handover:?}, want < 3 s"
    );

    wait_until(
        &format!("{old_name}'s Postgres stopped"),
        Duration::from_secs(5),
        || async { old.postmaster_pid().is_none().then_some(()) },
    )
    .await;
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(30)).await,
        new_name
    );
    let on_new = cluster
        .member(&new_name)
        .probe_ids()
        .await
        .expect("probe ids");
    assert!(
        (1..=10).all(|id| on_new.contains(&id)),
        "rows lost in the handover: {on_new:?}"
    );
    println!("{tag} {}", roles.summary());
    roles.assert_never_two_primaries();
}

/// SIGTERM to the leader while one replica's walreceiver has stopped answering: after the
/// shutdown checkpoint the walsender for it would wait up to wal_sender_timeout (60 s), holding
/// the lock (and the Pod's grace period) with it. Once the other replica has every record the
/// leader stops waiting and releases the lock: that replica accepts writes before the lock could
/// even have lapsed (ttl − safety margin), and nothing acknowledged is lost.
async fn sigterm_on_leader_does_not_wait_for_a_replica_that_stopped_answering(backend: Backend) {
    let (cluster, old_name) = healthy_cluster(backend, "termstuck", 3).await;
    let tag = tag(&cluster);
    let old = cluster.member(&old_name);
    let others = cluster.others(&old_name);
    write_and_replicate(&cluster, old, &others, 1..=10).await;
    let (stuck, candidate) = (others[0], others[1]);
    let frozen = stuck
        .freeze_walreceiver()
        .await
        .expect("freeze a replica's walreceiver");
    for id in 11..=20 {
        old.write_probe(id)
            .await
            .unwrap_or_else(|e| panic!("write probe {id} on the leader: {e:#}"));
    }

    let roles = RoleSampler::start(&cluster.all()).await;
    let signalled_at = Instant::now();
    old.send_sigterm();
    let writable = [candidate];
    let (exit, (new_name, writable_at)) = tokio::join!(
        old.wait_exit(Duration::from_secs(90)),
        first_writable(&writable, 1_000, Duration::from_secs(90)),
    );
    let status = exit.expect("the agent exits after SIGTERM");
    let handover = writable_at - signalled_at;
    println!(
        "{tag} SIGTERM to {old_name} with {}'s walreceiver frozen: agent exited with {status}; \
         {new_name} accepted writes after {:.3} s",
        stuck.name(),
        handover.as_secs_f64()
    );
    assert_eq!(status.code(), Some(0), "agent exit status after SIGTERM");
    // Waiting for the frozen replica ends only when the fence stops Postgres, ttl - 2 s after
    // the last renew (about 7.5 s here); handing over at once takes about a second.
    let bound = cluster.ttl() / 2;
    assert!(
        handover < bound,
        "the handover took {handover:?}: it waited for the frozen replica (bound {bound:?})"
    );
    drop(frozen);
    let on_new = candidate.probe_ids().await.expect("probe ids");
    assert!(
        (1..=20).all(|id| on_new.contains(&id)),
        "rows lost in the handover: {on_new:?}"
    );
    println!("{tag} {}", roles.summary());
    roles.assert_never_two_primaries();
}

/// What one member's `GET /patroni` said at one moment while the DCS was frozen.
#[derive(Debug, Clone)]
struct MemberView {
    at: Instant,
    /// `None`: the REST API did not answer.
    role: Option<String>,
    /// `cluster_unlocked`: the member has no view of a lock holder — either it read the DCS and
    /// found the lock free, or (as during an outage) it could not read the DCS at all.
    unlocked: bool,
}

/// Poll `GET /patroni` on every member (all at once, every 50 ms) until `until`.
async fn record_views(members: &[&Member], until: Instant) -> Vec<(String, Vec<MemberView>)> {
    let mut views: Vec<(String, Vec<MemberView>)> = members
        .iter()
        .map(|m| (m.name().to_string(), Vec::new()))
        .collect();
    while Instant::now() < until {
        let answers =
            futures_util::future::join_all(members.iter().map(|m| m.patroni_status())).await;
        let at = Instant::now();
        for ((_, samples), answer) in views.iter_mut().zip(answers) {
            samples.push(MemberView {
                at,
                role: answer
                    .as_ref()
                    .and_then(|b| str_field(b, "role"))
                    .map(str::to_string),
                unlocked: answer
                    .as_ref()
                    .and_then(|b| b.get("cluster_unlocked"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    views
}

/// Probe writes on `member` every 20 ms until `until`: when each attempt ended and whether it
/// was acknowledged.
async fn write_until(member: &Member, first_id: i64, until: Instant) -> Vec<(Instant, bool)> {
    let mut attempts = Vec::new();
    let mut id = first_id;
    while Instant::now() < until {
        let accepted = member.write_probe(id).await.is_ok();
        attempts.push((Instant::now(), accepted));
        id += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    attempts
}

/// The DCS freezes (SIGSTOP) for longer than ttl while a client keeps writing. The leader must
/// stop accepting writes before the lock could be taken by another member:
/// * etcd: before its lease, read from etcd just before the freeze, runs out;
/// * Kubernetes: a replica treats the lock as free only ttl after it last saw the leader object
///   change, so before the last `renewTime` the leader wrote before the freeze + ttl.
///
/// While the DCS is frozen the members cannot read the lock, so none may act on it: every
/// member's `GET /patroni` is recorded throughout and each replica must stay a replica, and a
/// role sampler checks that two members never accept writes at once. A member that decided to
/// take the lock while the DCS was frozen (from a cached view) would have its request applied
/// only after the resume; on Kubernetes such a claim carries the claimant's clock in its
/// `renewTime`, which must not be earlier than the old lock's expiry (the last `renewTime`
/// + ttl). After the resume there is exactly one primary with every acknowledged write.
async fn frozen_dcs_makes_leader_stop_writes_before_lock_expiry(backend: Backend) {
    let (cluster, old_name) = healthy_cluster(backend, "pause", 3).await;
    let tag = tag(&cluster);
    let old = cluster.member(&old_name);
    old.create_probe_table().await.expect("create probe table");
    let leader_watch = kube_leader_watch(&cluster, backend).await;
    let writer = Writer::start(&cluster.all(), Duration::from_secs(30)).await;
    writer.wait_for_acks(20, Duration::from_secs(30)).await;

    let ttl = cluster.ttl();
    let roles = RoleSampler::start(&cluster.all()).await;
    let (lock_left, lock_read_at) = lock_remaining(&cluster, "freeze").await;
    let paused_wall = Utc::now();
    let paused_at = Instant::now();
    cluster.pause_dcs();

    // Keep writing on the old leader directly, and record what every member concludes, until
    // well after its lock must have run out.
    let watch_until = paused_at + ttl + Duration::from_secs(3);
    let everyone = cluster.all();
    let (attempts, views) = tokio::join!(
        write_until(old, 100_000, watch_until),
        record_views(&everyone, watch_until),
    );
    let since_pause = |t: Instant| (t - paused_at).as_secs_f64();
    let last_accepted = attempts.iter().rev().find(|(_, ok)| *ok).map(|(t, _)| *t);
    let first_refused = attempts
        .iter()
        .find(|(t, ok)| !ok && last_accepted.iter().all(|l| t > l))
        .map(|(t, _)| *t);
    let describe_views = |samples: &[MemberView]| {
        let roles: std::collections::BTreeSet<&str> = samples
            .iter()
            .map(|v| v.role.as_deref().unwrap_or("no answer"))
            .collect();
        let unlocked = samples.iter().find(|v| v.unlocked).map(|v| v.at);
        format!(
            "roles {roles:?}, no lock holder in its view from {}",
            unlocked.map_or("never".into(), |t| format!("+{:.3} s", since_pause(t)))
        )
    };
    println!(
        "{tag} DCS frozen; ttl {} s, leader lock had {:.1} s left; {old_name} last accepted a \
         write at +{} s, refused from +{} s ({} attempts); GET /patroni during the freeze: {}",
        ttl.as_secs(),
        lock_left.as_secs_f64(),
        last_accepted.map_or("never".into(), |t| format!("{:.3}", since_pause(t))),
        first_refused.map_or("never".into(), |t| format!("{:.3}", since_pause(t))),
        attempts.len(),
        views
            .iter()
            .map(|(name, samples)| format!("{name}: {}", describe_views(samples)))
            .collect::<Vec<_>>()
            .join("; ")
    );
    assert!(
        attempts.iter().any(|(t, _)| *t >= paused_at + ttl),
        "no write attempt after the ttl elapsed: the check proves nothing"
    );
    let late: Vec<f64> = attempts
        .iter()
        .filter(|(t, ok)| *ok && *t >= paused_at + ttl)
        .map(|(t, _)| since_pause(*t))
        .collect();
    assert!(
        late.is_empty(),
        "{old_name} accepted writes after ttl elapsed since the pause: {late:?}"
    );
    for (name, samples) in &views {
        let answered = samples.iter().filter(|v| v.role.is_some()).count();
        assert!(
            answered * 2 >= samples.len()
                && samples.last().is_some_and(|v| v.at >= paused_at + ttl),
            "{name}'s GET /patroni answered {answered} of {} polls during the freeze: too few \
             to tell what it did",
            samples.len()
        );
        if *name != old_name {
            let acted = samples
                .iter()
                .find(|v| v.role.as_deref().is_some_and(|r| r != "replica"));
            assert!(
                acted.is_none(),
                "replica {name} changed role while the DCS was frozen: {acted:?}"
            );
        }
    }

    // The earliest moment anyone may treat the lock as free, as an offset from the pause.
    let lock_free_from = match backend {
        Backend::Etcd => {
            // etcd reports whole seconds, rounded down: the lease ran for at least `left` after
            // it was read, and at most `left` + 1 s.
            let expiry = lock_read_at + lock_left + Duration::from_secs(1);
            if let Some(last) = last_accepted {
                assert!(
                    last < expiry,
                    "{old_name} accepted a write at +{:.3} s, after its lease expired (+{:.3} s)",
                    since_pause(last),
                    since_pause(expiry)
                );
            }
            since_pause(lock_read_at + lock_left)
        }
        Backend::Kubernetes { .. } => {
            let watch = leader_watch.as_ref().expect("the leader watch");
            // The last renewal the leader got in before the freeze: its renewTime is no later
            // than the freeze (later ones can only be written after the resume).
            let events = watch.events();
            let last = events
                .iter()
                .map(|e| &e.record)
                .filter(|r| r.renew_time.is_some_and(|t| t <= paused_wall))
                .max_by_key(|r| r.renew_time)
                .unwrap_or_else(|| panic!("no leader renewal seen before the freeze: {events:?}"))
                .clone();
            assert_eq!(last.leader.as_deref(), Some(old_name.as_str()), "{last:?}");
            let lock_ttl = last.ttl.expect("the leader object carries its ttl");
            let renewed = seconds(last.renew_time.expect("renewTime") - paused_wall);
            let expiry = renewed + lock_ttl as f64;
            println!(
                "{tag} last renewTime before the freeze at {renewed:+.3} s → lock free for \
                 others from {expiry:+.3} s"
            );
            if let Some(last_ok) = last_accepted {
                assert!(
                    since_pause(last_ok) < expiry,
                    "{old_name} accepted a write at +{:.3} s, after the lock became free for \
                     others at {expiry:+.3} s",
                    since_pause(last_ok)
                );
            }
            expiry
        }
    };
    cluster.resume_dcs();
    let resumed_at = Instant::now();
    let primary = wait_until_ok(
        "exactly one primary after the DCS resumed",
        Duration::from_secs(90),
        || async {
            let mut agreed: Option<String> = None;
            for _ in 0..5 {
                let primaries = cluster.sql_primaries().await;
                let [only] = primaries.as_slice() else {
                    bail!("primaries: {primaries:?}")
                };
                if let Some(previous) = &agreed {
                    ensure!(
                        previous == only,
                        "primary changed from {previous} to {only}"
                    );
                }
                agreed = Some(only.clone());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            agreed.context("no poll ran")
        },
    )
    .await;
    wait_until(
        "the writer to be acknowledged again",
        Duration::from_secs(60),
        || async { writer.snapshot().first_ack_after(resumed_at) },
    )
    .await;
    let report = writer.stop().await;
    println!(
        "{tag} after resume: primary {primary} ({:.3} s after resume); {}",
        resumed_at.elapsed().as_secs_f64(),
        report.summary()
    );
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(30)).await,
        primary
    );
    println!("{tag} {}", roles.summary());
    roles.assert_never_two_primaries();

    if let Some(watch) = leader_watch {
        // The first claim of the lock by another member after the freeze: its renewTime is the
        // claimant's clock when it decided to take the lock (a request it sent while the DCS was
        // frozen is applied only after the resume, but carries the time it was made).
        let events = watch.events();
        let claim = events
            .iter()
            .filter(|e| e.received >= resumed_at)
            .find(|e| e.record.leader.as_ref().is_some_and(|l| *l != old_name));
        match claim {
            Some(claim) => {
                let claimed = seconds(claim.record.renew_time.expect("renewTime") - paused_wall);
                println!(
                    "{tag} {} claimed the lock with renewTime {claimed:+.3} s (received at \
                     +{:.3} s, resumed at +{:.3} s)",
                    claim.record.leader.as_deref().unwrap_or("?"),
                    since_pause(claim.received),
                    since_pause(resumed_at)
                );
                assert!(
                    claimed >= lock_free_from,
                    "the lock was claimed at {claimed:+.3} s, before it expired at \
                     {lock_free_from:+.3} s: {claim:?}"
                );
            }
            None => {
                // The old leader kept or took back the lock: no other member claimed it.
                assert_eq!(
                    primary, old_name,
                    "a new primary without a claim: {events:?}"
                );
                println!("{tag} no other member claimed the lock; {old_name} leads again");
            }
        }
    }

    assert_acked_rows_on(cluster.member(&primary), &report.acked).await;
}

/// On Kubernetes, every version of the leader object from now on (on etcd: nothing).
async fn kube_leader_watch(cluster: &TestCluster, backend: Backend) -> Option<LeaderWatch> {
    match backend {
        Backend::Kubernetes { .. } => Some(
            cluster
                .watch_kube_leader()
                .await
                .expect("watch the leader object"),
        ),
        Backend::Etcd => None,
    }
}

/// Time left on the leader lock before the `event`, and when it was read.
async fn lock_remaining(cluster: &TestCluster, event: &str) -> (Duration, Instant) {
    let left = (cluster.dcs_lock_remaining().await)
        .unwrap_or_else(|e| panic!("time left on the leader lock before the {event}: {e:#}"));
    (left, Instant::now())
}

/// A chrono duration in seconds.
fn seconds(d: chrono::Duration) -> f64 {
    d.num_microseconds().unwrap_or_default() as f64 / 1e6
}

/// The last renewal of the Kubernetes leader object by `holder` at or before `wall`, from the
/// harness's watch.
fn last_renewal_before(
    watch: &regent_tests::cluster::LeaderWatch,
    holder: &str,
    wall: chrono::DateTime<Utc>,
) -> LeaderRecord {
    let events = watch.events();
    events
        .iter()
        .map(|e| &e.record)
        .filter(|r| r.renew_time.is_some_and(|t| t <= wall))
        .max_by_key(|r| r.renew_time)
        .filter(|r| r.leader.as_deref() == Some(holder))
        .cloned()
        .unwrap_or_else(|| panic!("no renewal by {holder} seen before {wall}: {events:?}"))
}

/// The leader loses the DCS while the other members still reach it (its DCS traffic goes through
/// a relay that is cut: a partition around one machine). The others see the lock go unrenewed
/// and may take it only once it expired: on etcd when its lease, read just before the cut, ran
/// out; on Kubernetes no earlier than the last `renewTime` the leader wrote + ttl — checked on
/// the claim itself (its `renewTime` is the claimant's clock when it claimed) and on when the
/// harness saw it. The old leader must stop accepting writes before another member accepts any,
/// two members never accept writes at once (role sampler), and once reconnected the old leader
/// follows the new one.
async fn isolated_leader_is_replaced_only_after_its_lock_expired(backend: Backend) {
    let started = Instant::now();
    let cluster = TestCluster::builder("iso")
        .backend(backend)
        .members(3)
        .dcs_relays(true)
        .start()
        .await;
    let old_name = cluster.wait_for_bootstrap().await;
    let tag = tag(&cluster);
    println!(
        "{tag} bootstrap: leader {old_name}, replicas streaming after {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let old = cluster.member(&old_name);
    let others = cluster.others(&old_name);
    write_and_replicate(&cluster, old, &others, 1..=10).await;
    let leader_watch = kube_leader_watch(&cluster, backend).await;

    let ttl = cluster.ttl();
    let roles = RoleSampler::start(&cluster.all()).await;
    let (lock_left, lock_read_at) = lock_remaining(&cluster, "cut").await;
    let cut_wall = Utc::now();
    let cut_at = Instant::now();
    cluster.cut_from_dcs(&old_name);

    // Keep writing on the old leader until well after the failover bound; meanwhile try the
    // others until one accepts a write, and watch who the DCS names as leader.
    let write_until_at = cut_at + ttl + Duration::from_secs(4);
    let (attempts, (new_name, writable_at), taken) = tokio::join!(
        write_until(old, 100_000, write_until_at),
        first_writable(&others, 200_000, Duration::from_secs(60)),
        wait_until(
            "another member holding the lock",
            Duration::from_secs(60),
            || async {
                let holder = cluster.dcs_leader().await?;
                (holder != old_name).then(|| (holder, Instant::now()))
            }
        ),
    );
    let (holder, taken_at) = taken;
    let since_cut = |t: Instant| (t - cut_at).as_secs_f64();
    let last_accepted = attempts.iter().rev().find(|(_, ok)| *ok).map(|(t, _)| *t);
    println!(
        "{tag} {old_name} cut from the DCS (lock had {:.1} s left): it last accepted a write at \
         +{} s ({} attempts); {holder} seen holding the lock at +{:.3} s; {new_name} accepted \
         writes from +{:.3} s",
        lock_left.as_secs_f64(),
        last_accepted.map_or("never".into(), |t| format!("{:.3}", since_cut(t))),
        attempts.len(),
        since_cut(taken_at),
        since_cut(writable_at)
    );
    assert_eq!(
        holder, new_name,
        "the member accepting writes holds the lock"
    );
    assert!(
        attempts.iter().any(|(t, _)| *t > writable_at),
        "no write attempt on {old_name} after {new_name} took over: the check proves nothing"
    );
    if let Some(last) = last_accepted {
        assert!(
            last < writable_at,
            "{old_name} accepted a write at +{:.3} s, after {new_name} accepted writes at +{:.3} s",
            since_cut(last),
            since_cut(writable_at)
        );
    }

    // The earliest moment the lock may count as free, as an instant.
    let lock_free_from = match &leader_watch {
        None => {
            // etcd reports whole seconds, rounded down: the lease ran for at least `left` after
            // it was read (a renewal between the read and the cut only makes it longer).
            let earliest = lock_read_at + lock_left;
            if let Some(last) = last_accepted {
                let latest = lock_read_at + lock_left + Duration::from_secs(1);
                assert!(
                    last < latest,
                    "{old_name} accepted a write at +{:.3} s, after its lease expired (by +{:.3} s)",
                    since_cut(last),
                    since_cut(latest)
                );
            }
            earliest
        }
        Some(watch) => {
            let last = last_renewal_before(watch, &old_name, cut_wall);
            let lock_ttl = last.ttl.expect("the leader object carries its ttl");
            let renewed = seconds(last.renew_time.expect("renewTime") - cut_wall);
            let expiry = renewed + lock_ttl as f64;
            let claim = watch
                .events()
                .into_iter()
                .find(|e| e.record.leader.as_ref().is_some_and(|l| *l != old_name))
                .expect("the watch saw another member claim the lock");
            let claimed = seconds(claim.record.renew_time.expect("renewTime") - cut_wall);
            println!(
                "{tag} last renewTime before the cut at {renewed:+.3} s → lock free for others \
                 from {expiry:+.3} s; {} claimed it with renewTime {claimed:+.3} s, seen at \
                 +{:.3} s",
                claim.record.leader.as_deref().unwrap_or("?"),
                since_cut(claim.received)
            );
            assert!(
                claimed >= expiry,
                "the lock was claimed at {claimed:+.3} s, before it expired at {expiry:+.3} s: \
                 {claim:?}"
            );
            if let Some(last_ok) = last_accepted {
                assert!(
                    since_cut(last_ok) < expiry,
                    "{old_name} accepted a write at +{:.3} s, after the lock became free for \
                     others at {expiry:+.3} s",
                    since_cut(last_ok)
                );
            }
            cut_at + Duration::from_secs_f64(expiry.max(0.0))
        }
    };
    assert!(
        taken_at >= lock_free_from,
        "{holder} held the lock at +{:.3} s, before it could expire at +{:.3} s",
        since_cut(taken_at),
        since_cut(lock_free_from)
    );
    let failover = writable_at - cut_at;
    let bound = ttl + Duration::from_secs(2);
    assert!(
        failover <= bound,
        "{new_name} accepted writes {failover:?} after the cut, more than ttl + 2 s"
    );

    cluster.reconnect_to_dcs(&old_name);
    let reconnected_at = Instant::now();
    cluster
        .wait_for_member_streaming(&old_name, &new_name, REJOIN_DEADLINE)
        .await;
    println!(
        "{tag} {old_name} reconnected and streams from {new_name} after {:.3} s",
        reconnected_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        cluster.wait_for_leader(Duration::from_secs(30)).await,
        new_name
    );
    println!("{tag} {}", roles.summary());
    roles.assert_never_two_primaries();
    let on_new = cluster
        .member(&new_name)
        .probe_ids()
        .await
        .expect("probe ids on the new leader");
    assert!(
        (1..=10).all(|id| on_new.contains(&id)),
        "rows replicated before the cut lost: {on_new:?}"
    );
}
