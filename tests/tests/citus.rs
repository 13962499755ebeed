//! Citus end to end: a coordinator group and worker groups, each a Regent HA cluster in one
//! scope, against real Citus when it is installed and otherwise against the stand-in of Citus's
//! metadata API (tests/citus_standin; the run says which).
//!
//! Guarantees checked here:
//! * pg_dist_node names each group's current primary (read on the coordinator's primary) after
//!   bootstrap, a worker switchover, a worker failover and a coordinator failover.
//! * A worker switchover through POST /citus costs writes through the coordinator no error: every
//!   INSERT (20 ms apart) is acknowledged; its longest stall is reported. Reads are not held by
//!   Citus while the old primary is down: their errors are counted and reported, not asserted.
//! * Bad /citus bodies get 400 and change nothing in pg_dist_node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regent_tests::citus::{ensure_citus, CitusFlavor, CITUS_DATABASE};
use regent_tests::config::{Backend, SUPERUSER, SUPERUSER_PASSWORD};
use regent_tests::{poll_until, Member, TestCluster, Timing};
use serde_json::json;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::{Client, NoTls};

const MEMBERS_PER_GROUP: usize = 2;
const TIMING: Timing = Timing {
    ttl: 10,
    loop_wait: 2,
    retry_timeout: 3,
};

/// A Citus cluster: `groups` groups (0 = coordinator) of two members each, named
/// `<scope>-<index>`, member `i` in group `i / 2`.
async fn start(
    backend: Backend,
    scope: &str,
    groups: usize,
    extra: impl Fn(usize, &mut regent_tests::MemberConfig) + Send + Sync + 'static,
) -> (CitusFlavor, TestCluster) {
    let flavor = ensure_citus();
    let cluster = TestCluster::builder(scope)
        .backend(backend)
        .members(groups * MEMBERS_PER_GROUP)
        .timing(TIMING)
        .configure(move |i, cfg| {
            cfg.set(
                "citus",
                json!({"group": i / MEMBERS_PER_GROUP, "database": CITUS_DATABASE}),
            );
            extra(i, cfg);
        })
        .start()
        .await;
    (flavor, cluster)
}

fn group_members(cluster: &TestCluster, group: usize) -> Vec<&Member> {
    cluster
        .all()
        .into_iter()
        .skip(group * MEMBERS_PER_GROUP)
        .take(MEMBERS_PER_GROUP)
        .collect()
}

/// The group's member answering `GET /primary` 200, if exactly one does.
async fn group_primary(cluster: &TestCluster, group: usize) -> Option<&Member> {
    let mut found = Vec::new();
    for m in group_members(cluster, group) {
        if m.api_status("/primary").await == Some(200) {
            found.push(m);
        }
    }
    (found.len() == 1).then(|| found[0])
}

async fn wait_group_primary(cluster: &TestCluster, group: usize, deadline: Duration) -> &Member {
    let started = Instant::now();
    loop {
        if let Some(m) = group_primary(cluster, group).await {
            return m;
        }
        if started.elapsed() > deadline {
            for m in cluster.all() {
                m.print_log_tails(60);
            }
            panic!("group {group} has no single primary after {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn citus_client(member: &Member) -> anyhow::Result<Client> {
    let mut config = member.pg_config();
    config.dbname(CITUS_DATABASE);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Primary rows of pg_dist_node: group → "host:port".
async fn dist_nodes(member: &Member) -> anyhow::Result<BTreeMap<i32, String>> {
    let client = citus_client(member).await?;
    let rows = client
        .query(
            "SELECT groupid, nodename, nodeport FROM pg_catalog.pg_dist_node \
             WHERE noderole = 'primary' ORDER BY groupid",
            &[],
        )
        .await?;
    let mut out = BTreeMap::new();
    for row in rows {
        let group: i32 = row.try_get(0)?;
        let host: String = row.try_get(1)?;
        let port: i32 = row.try_get(2)?;
        out.insert(group, format!("{host}:{port}"));
    }
    Ok(out)
}

/// What pg_dist_node should say: each group's primary at 127.0.0.1:<its port>.
async fn expected_nodes(cluster: &TestCluster, groups: usize) -> Option<BTreeMap<i32, String>> {
    let mut out = BTreeMap::new();
    for g in 0..groups {
        let p = group_primary(cluster, g).await?;
        out.insert(g as i32, format!("127.0.0.1:{}", p.pg_port()));
    }
    Some(out)
}

/// Poll until the coordinator primary's pg_dist_node matches every group's primary.
async fn wait_dist_nodes_match(
    cluster: &TestCluster,
    groups: usize,
    deadline: Duration,
) -> Duration {
    let started = Instant::now();
    let mut last;
    loop {
        if let (Some(want), Some(coord)) = (
            expected_nodes(cluster, groups).await,
            group_primary(cluster, 0).await,
        ) {
            match dist_nodes(coord).await {
                Ok(have) if have == want => return started.elapsed(),
                Ok(have) => last = format!("want {want:?}, have {have:?}"),
                Err(e) => last = format!("cannot read pg_dist_node: {e}"),
            }
        } else {
            last = "not every group has one primary".into();
        }
        if started.elapsed() > deadline {
            for m in cluster.all() {
                m.print_log_tails(80);
            }
            panic!("pg_dist_node did not match the groups' primaries after {deadline:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A client of the coordinator group: multi-host over its members, read-write sessions.
fn coordinator_config(cluster: &TestCluster) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    for m in group_members(cluster, 0) {
        config.host("127.0.0.1").port(m.pg_port());
    }
    config
        .user(SUPERUSER)
        .password(SUPERUSER_PASSWORD)
        .dbname(CITUS_DATABASE)
        .application_name("regent-tests-citus-client")
        .connect_timeout(Duration::from_secs(1))
        .target_session_attrs(TargetSessionAttrs::ReadWrite);
    config
}

async fn create_distributed_table(cluster: &TestCluster) {
    let config = coordinator_config(cluster);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .expect("connect to the coordinator");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS events (id bigint PRIMARY KEY, note text)")
        .await
        .expect("create events");
    client
        .query("SELECT create_distributed_table('events', 'id')", &[])
        .await
        .expect("distribute events");
}

#[derive(Debug, Default, Clone)]
struct ClientReport {
    writes_ok: u64,
    write_errors: Vec<String>,
    longest_write: Duration,
    reads_ok: u64,
    read_errors: Vec<String>,
}

/// Writes (INSERT) and reads (count) through the coordinator every 20 ms until stopped.
struct CoordinatorClient {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<ClientReport>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CoordinatorClient {
    /// `first_id`: ids written start there, so runs never collide.
    async fn start(cluster: &TestCluster, first_id: i64) -> CoordinatorClient {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(ClientReport::default()));
        let config = coordinator_config(cluster);
        let mut tasks = Vec::new();
        for writer in [true, false] {
            let (client, connection) = config
                .connect(NoTls)
                .await
                .expect("connect to the coordinator");
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let stop = stop.clone();
            let report = report.clone();
            tasks.push(tokio::spawn(async move {
                let mut id: i64 = first_id;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    if writer {
                        id += 1;
                        let r = client
                            .execute("INSERT INTO events VALUES ($1, 'x')", &[&id])
                            .await;
                        let took = started.elapsed();
                        let mut rep = report.lock().unwrap();
                        rep.longest_write = rep.longest_write.max(took);
                        match r {
                            Ok(_) => rep.writes_ok += 1,
                            Err(e) => rep.write_errors.push(describe(&e)),
                        }
                    } else {
                        let r = client.query_one("SELECT count(*) FROM events", &[]).await;
                        let mut rep = report.lock().unwrap();
                        match r {
                            Ok(_) => rep.reads_ok += 1,
                            Err(e) => rep.read_errors.push(describe(&e)),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        CoordinatorClient {
            stop,
            report,
            tasks,
        }
    }

    fn snapshot(&self) -> ClientReport {
        self.report.lock().unwrap().clone()
    }

    async fn stop(self) -> ClientReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let r = self.report.lock().unwrap().clone();
        r
    }
}

regent_tests::backend_tests! {
    citus_cluster_registers_every_group_and_follows_worker_switchovers: [etcd, kubernetes];
    worker_and_coordinator_failovers_keep_pg_dist_node_right: [etcd, kubernetes];
    bad_citus_bodies_are_refused_and_change_nothing: [etcd];
    minimum_workers_holds_provisioning_back: [etcd];
    coordinator_and_worker_switchovers_at_once_do_not_deadlock: [etcd];
}

async fn citus_cluster_registers_every_group_and_follows_worker_switchovers(backend: Backend) {
    let (flavor, cluster) = start(backend, "cit", 3, |_, _| {}).await;
    let tag = format!("[citus/{}]", backend.label());
    eprintln!("{tag} running against {}", flavor.describe());
    let booted = wait_dist_nodes_match(&cluster, 3, Duration::from_secs(90)).await;
    eprintln!("{tag} pg_dist_node names all 3 groups' primaries after {booted:.3?}");
    create_distributed_table(&cluster).await;

    // Five worker switchovers through the REST API (group 1, back and forth), each while a
    // client writes and reads through the coordinator every 20 ms.
    let mut stalls = Vec::new();
    // Five runs give the median the closing note reports (etcd); Kubernetes checks the same path.
    let runs: i64 = if backend.is_kubernetes() { 2 } else { 5 };
    for run in 1..=runs {
        let client = CoordinatorClient::start(&cluster, run * 1_000_000).await;
        poll_until(Duration::from_secs(10), || async {
            (client.snapshot().writes_ok >= 10).then_some(())
        })
        .await
        .expect("writes go through before the switchover");
        let (old, candidate) = primary_and_standby(&cluster, 1).await;
        let switch_started = Instant::now();
        request_switchover(old, candidate).await;
        let new = poll_until(Duration::from_secs(30), || async {
            group_primary(&cluster, 1)
                .await
                .filter(|m| m.name() == candidate.name())
        })
        .await
        .expect("the candidate becomes group 1's primary");
        let updated = wait_dist_nodes_match(&cluster, 3, Duration::from_secs(10)).await;
        // Writes must go on against the new primary before the client stops.
        let writes_before = client.snapshot().writes_ok;
        poll_until(Duration::from_secs(10), || async {
            (client.snapshot().writes_ok >= writes_before + 10).then_some(())
        })
        .await
        .expect("writes continue after the switchover");
        let report = client.stop().await;
        eprintln!(
            "{tag} run {run}: worker switchover {} -> {}: primary after {:.3?}, pg_dist_node \
             matched {:.3?} later; writes: {} ok, {} errors, longest {:.3?}; reads: {} ok, {} \
             errors{}",
            old.name(),
            new.name(),
            switch_started.elapsed(),
            updated,
            report.writes_ok,
            report.write_errors.len(),
            report.longest_write,
            report.reads_ok,
            report.read_errors.len(),
            report
                .read_errors
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
        );
        assert!(
            report.write_errors.is_empty(),
            "writes through the coordinator failed during the worker switchover: {:?}",
            report.write_errors
        );
        stalls.push(report.longest_write);
        // The old primary follows the new one (no re-clone) before the next run.
        wait_streaming(old).await;
    }
    stalls.sort();
    let n = stalls.len();
    eprintln!(
        "{tag} longest write stall per worker switchover: median {:.3?} (min {:.3?}, max {:.3?}, n={n})",
        stalls[n / 2], stalls[0], stalls[n - 1]
    );
}

async fn worker_and_coordinator_failovers_keep_pg_dist_node_right(backend: Backend) {
    let (flavor, cluster) = start(backend, "cif", 2, |_, _| {}).await;
    let tag = format!("[citus-failover/{}]", backend.label());
    eprintln!("{tag} running against {}", flavor.describe());
    wait_dist_nodes_match(&cluster, 2, Duration::from_secs(90)).await;

    // kill -9 of the worker group's leader (agent and postmaster).
    let (old, survivor) = primary_and_standby(&cluster, 1).await;
    old.kill9_with_postmaster();
    let killed = Instant::now();
    poll_until(Duration::from_secs(60), || async {
        matches!(survivor.pg_in_recovery().await, Ok(false)).then_some(())
    })
    .await
    .expect("the surviving worker member is promoted");
    let promoted = killed.elapsed();
    let updated = wait_dist_nodes_match(&cluster, 2, Duration::from_secs(10)).await;
    eprintln!(
        "{tag} worker {} killed: {} promoted after {promoted:.3?}; pg_dist_node \
         updated {updated:.3?} after the promotion (loop_wait {} s)",
        old.name(),
        survivor.name(),
        TIMING.loop_wait
    );
    assert!(
        updated <= Duration::from_secs(u64::from(TIMING.loop_wait) + 1),
        "pg_dist_node took {updated:?} after the promotion, more than one loop"
    );
    old.start();

    // kill -9 of the coordinator's leader: the new coordinator leader takes over, then a worker
    // switchover is reflected by it.
    let (coordinator, next) = primary_and_standby(&cluster, 0).await;
    coordinator.kill9_with_postmaster();
    poll_until(Duration::from_secs(60), || async {
        group_primary(&cluster, 0)
            .await
            .filter(|m| m.name() == next.name())
    })
    .await
    .expect("the second coordinator member leads");
    wait_dist_nodes_match(&cluster, 2, Duration::from_secs(15)).await;
    let (worker, other) = primary_and_standby(&cluster, 1).await;
    request_switchover(worker, other).await;
    poll_until(Duration::from_secs(30), || async {
        group_primary(&cluster, 1)
            .await
            .filter(|m| m.name() == other.name())
    })
    .await
    .expect("the candidate leads group 1");
    let after = wait_dist_nodes_match(&cluster, 2, Duration::from_secs(10)).await;
    eprintln!(
        "{tag} coordinator {} killed, {} took over; worker switchover reflected {after:.3?} \
         after the new worker primary answered",
        coordinator.name(),
        next.name()
    );
}

async fn bad_citus_bodies_are_refused_and_change_nothing(backend: Backend) {
    let (flavor, cluster) = start(backend, "cib", 2, |_, _| {}).await;
    eprintln!(
        "[citus-bodies/{}] running against {}",
        backend.label(),
        flavor.describe()
    );
    wait_dist_nodes_match(&cluster, 2, Duration::from_secs(90)).await;
    let coordinator = wait_group_primary(&cluster, 0, Duration::from_secs(5)).await;
    let worker = wait_group_primary(&cluster, 1, Duration::from_secs(5)).await;
    let before = dist_nodes(coordinator).await.expect("pg_dist_node");
    let bodies = [
        json!({"type": "before_demote", "group": 1}),
        json!({"type": "explode", "group": 1, "leader": worker.name()}),
        json!({"type": "before_demote", "group": -1, "leader": worker.name()}),
        json!({"type": "before_demote", "group": "one", "leader": worker.name()}),
        json!({"type": "before_demote", "group": 1, "leader": 7}),
        json!({"type": "before_demote", "group": 1, "leader": worker.name(), "timeout": "soon"}),
        json!({"type": "before_demote", "group": 1, "leader": worker.name(), "cooldown": -5}),
        json!(["before_demote"]),
    ];
    for body in bodies {
        let (code, text) = post(coordinator, "/citus", body.clone()).await;
        assert_eq!(code, 400, "{body} → {code} {text}");
    }
    // A valid event from a member that is not its group's leader is accepted and ignored.
    let replica = other_member(&cluster, 1, worker);
    let (code, _) = post(
        coordinator,
        "/citus",
        json!({"type": "before_demote", "group": 1, "leader": replica.name(), "timeout": 5, "cooldown": 1}),
    )
    .await;
    assert_eq!(code, 200);
    let after = dist_nodes(coordinator).await.expect("pg_dist_node");
    assert_eq!(before, after, "pg_dist_node changed");
    // Writes to the worker group are not held: a probe write through the coordinator returns.
    create_distributed_table(&cluster).await;
    let insert = "INSERT INTO events SELECT g, 'y' FROM generate_series(1, 20) g";
    execute_within(
        coordinator,
        insert,
        Duration::from_secs(3),
        "writes are not paused",
    )
    .await;
}

/// Run `sql` through `coordinator`; it must succeed within `limit` (else panics with `in_time`).
async fn execute_within(coordinator: &Member, sql: &str, limit: Duration, in_time: &str) {
    let client = citus_client(coordinator).await.expect("connect");
    tokio::time::timeout(limit, client.execute(sql, &[]))
        .await
        .expect(in_time)
        .expect("insert");
}

/// An error as SQLSTATE and message (a closed connection has no SQLSTATE).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// A coordinator switchover while a worker switchover holds writes on the coordinator: both
/// finish, pg_dist_node ends right, and writes through the coordinator work again.
async fn coordinator_and_worker_switchovers_at_once_do_not_deadlock(backend: Backend) {
    let (flavor, cluster) = start(backend, "cid", 2, |_, _| {}).await;
    let tag = format!("[citus-both/{}]", backend.label());
    eprintln!("{tag} running against {}", flavor.describe());
    wait_dist_nodes_match(&cluster, 2, Duration::from_secs(90)).await;
    create_distributed_table(&cluster).await;
    let mut pairs = Vec::new();
    for group in [0, 1] {
        let (old, candidate) = primary_and_standby(&cluster, group).await;
        pairs.push((group, old, candidate));
    }
    let started = Instant::now();
    let requests = pairs.iter().map(|(_, old, candidate)| {
        post(
            old,
            "/switchover",
            json!({"leader": old.name(), "candidate": candidate.name()}),
        )
    });
    for (code, text) in futures_util::future::join_all(requests).await {
        assert_eq!(code, 200, "switchover: {text}");
    }
    for (group, _, candidate) in &pairs {
        poll_until(Duration::from_secs(30), || async {
            group_primary(&cluster, *group)
                .await
                .filter(|m| m.name() == candidate.name())
        })
        .await
        .unwrap_or_else(|| panic!("{} leads group {group}", candidate.name()));
    }
    wait_dist_nodes_match(&cluster, 2, Duration::from_secs(30)).await;
    let settled = started.elapsed();
    let coordinator = wait_group_primary(&cluster, 0, Duration::from_secs(5)).await;
    let insert = "INSERT INTO events SELECT g, 'z' FROM generate_series(1, 50) g";
    let held = "writes are not held after both switchovers";
    execute_within(coordinator, insert, Duration::from_secs(10), held).await;
    eprintln!(
        "{tag} both switchovers done, pg_dist_node right {:.3?} after they started",
        settled
    );
}

/// `regent.provisioned` rows (role/script) on `member`, empty when the table does not exist yet.
async fn provisioned(member: &Member) -> Vec<String> {
    let Ok(client) = citus_client(member).await else {
        return Vec::new();
    };
    client
        .query(
            "SELECT role || '/' || script FROM regent.provisioned ORDER BY 1",
            &[],
        )
        .await
        .map(|rows| rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
        .unwrap_or_default()
}

async fn minimum_workers_holds_provisioning_back(backend: Backend) {
    let scripts = regent_tests::TestDir::new("citus-scripts");
    let dir = scripts.postgres_subdir("provision");
    let coordinator_sql = dir.join("10-coordinator.sql");
    let worker_sql = dir.join("10-worker.sql");
    std::fs::write(
        &coordinator_sql,
        "CREATE TABLE provisioned_events (id bigint PRIMARY KEY);\n\
         SELECT create_distributed_table('provisioned_events', 'id');\n",
    )
    .expect("write the coordinator script");
    std::fs::write(&worker_sql, "CREATE TABLE worker_local (id int);\n")
        .expect("write the worker script");
    for f in [&coordinator_sql, &worker_sql] {
        regent_tests::process::chown_to_postgres(f);
    }
    let (c, w) = (coordinator_sql.clone(), worker_sql.clone());
    let flavor = ensure_citus();
    let cluster = TestCluster::builder("cim")
        .backend(backend)
        .members(3 * MEMBERS_PER_GROUP)
        .timing(TIMING)
        .start_agents(false)
        .configure(move |i, cfg| {
            cfg.set(
                "citus",
                json!({
                    "group": i / MEMBERS_PER_GROUP,
                    "database": CITUS_DATABASE,
                    "minimum_workers": 2,
                    "provision": {"coordinator": [c.display().to_string()], "worker": [w.display().to_string()]},
                }),
            );
        })
        .start()
        .await;
    let tag = format!("[citus-provision/{}]", backend.label());
    eprintln!("{tag} running against {}", flavor.describe());
    // The coordinator group and one worker group only.
    for m in group_members(&cluster, 0)
        .into_iter()
        .chain(group_members(&cluster, 1))
    {
        m.start();
    }
    let worker = wait_group_primary(&cluster, 1, Duration::from_secs(90)).await;
    wait_provisioned(
        worker,
        "worker/10-worker.sql",
        Duration::from_secs(60),
        "the worker group's script ran",
    )
    .await;
    let coordinator = wait_group_primary(&cluster, 0, Duration::from_secs(60)).await;
    // The coordinator has registered the one worker group and says it waits for a second.
    poll_until(Duration::from_secs(30), || async {
        let nodes = dist_nodes(coordinator).await.ok()?;
        let waiting = coordinator
            .log_contents()
            .lines()
            .any(|l| l.contains("provisioning waits") && l.contains("registered=1"));
        (nodes.contains_key(&1) && waiting).then_some(())
    })
    .await
    .expect("the coordinator registers group 1 and waits for minimum_workers");
    assert!(
        !provisioned(coordinator)
            .await
            .iter()
            .any(|r| r.starts_with("coordinator/")),
        "the coordinator script ran with one worker group of two"
    );
    let started = Instant::now();
    for m in group_members(&cluster, 2) {
        m.start();
    }
    wait_provisioned(
        coordinator,
        "coordinator/10-coordinator.sql",
        Duration::from_secs(90),
        "the coordinator script runs once two worker groups are registered",
    )
    .await;
    eprintln!(
        "{tag} coordinator script ran {:.3?} after the second worker group was started",
        started.elapsed()
    );
    // Each script ran exactly once, and the second worker group ran its own.
    let worker2 = wait_group_primary(&cluster, 2, Duration::from_secs(30)).await;
    wait_provisioned(
        worker2,
        "worker/10-worker.sql",
        Duration::from_secs(60),
        "the second worker group's script ran",
    )
    .await;
    let rows = provisioned(coordinator).await;
    assert_eq!(rows, vec!["coordinator/10-coordinator.sql".to_string()]);
}

/// Wait until `member` records that `script` ran; panics with `what` after `deadline`.
async fn wait_provisioned(member: &Member, script: &str, deadline: Duration, what: &str) {
    poll_until(deadline, || async {
        provisioned(member)
            .await
            .iter()
            .any(|s| s == script)
            .then_some(())
    })
    .await
    .expect(what);
}

/// `POST /switchover` to `leader` naming `candidate`; it must be accepted.
async fn request_switchover(leader: &Member, candidate: &Member) {
    let body = json!({"leader": leader.name(), "candidate": candidate.name()});
    let (code, text) = post(leader, "/switchover", body).await;
    assert_eq!(code, 200, "switchover: {text}");
}

async fn post(member: &Member, path: &str, body: serde_json::Value) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", member.api_base()))
        .timeout(Duration::from_secs(60))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path} to {}: {e}", member.name()));
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

/// The member of `group` other than `than` (groups have two).
fn other_member<'a>(cluster: &'a TestCluster, group: usize, than: &Member) -> &'a Member {
    group_members(cluster, group)
        .into_iter()
        .find(|m| m.name() != than.name())
        .unwrap_or_else(|| panic!("a second member in group {group}"))
}

/// `group`'s primary and its other member, once that one streams as the synchronous standby.
async fn primary_and_standby(cluster: &TestCluster, group: usize) -> (&Member, &Member) {
    let primary = wait_group_primary(cluster, group, Duration::from_secs(5)).await;
    let standby = other_member(cluster, group, primary);
    wait_streaming(standby).await;
    (primary, standby)
}

/// Streaming, and the group's synchronous standby: Citus groups run `synchronous_mode`, where
/// only that member may take over (switchover or failover).
async fn wait_streaming(member: &Member) {
    poll_until(Duration::from_secs(30), || async {
        matches!(member.wal_receiver().await, Ok(Some((s, _))) if s == "streaming").then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{} is not streaming", member.name()));
    poll_until(Duration::from_secs(30), || async {
        (member.api_status("/sync").await == Some(200)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{} is not the synchronous standby", member.name()));
}
