//! Citus provisioning scripts and bootstrap against real Postgres.
//!
//! * Provisioning (no Citus needed): each script runs once, in one transaction with its record in
//!   `regent.provisioned`; not again on a second call nor after a server restart; a failing
//!   script is reported with its file, SQLSTATE and line, leaves nothing behind and runs once
//!   fixed; a script that controls the transaction itself is refused before anything runs.
//! * Bootstrap and GUCs (real Citus or the test stand-in): a Regent coordinator renders Citus's
//!   settings on its primary and replica and, after initdb, creates the Citus database and
//!   extension, stores the superuser's credentials in `pg_dist_authinfo` and registers itself as
//!   the group 0 node; a worker does the same without registering anything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use citus::provision::{run_pending, Outcome, ProvisionError, Role};
use regent_tests::citus::{ensure_citus, PgServer};
use regent_tests::config::SUPERUSER;
use regent_tests::{wait_until_ok, TestCluster, TestDir};
use tokio_postgres::Client;

const DATABASE: &str = "postgres";

/// A plain Postgres 15 (Citus not preloaded).
fn plain_server(name: &str) -> PgServer {
    PgServer::start(name, &[("shared_preload_libraries", "''")])
        .unwrap_or_else(|e| panic!("start Postgres {name}: {e:#}"))
}

async fn client(server: &PgServer) -> Client {
    server
        .connect(DATABASE)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e:#}", server.name()))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn table_exists(client: &Client, name: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .unwrap_or_else(|e| panic!("look up {name}: {e}"))
        .get(0)
}

fn outcomes(ran: &[citus::provision::Ran]) -> Vec<(String, &'static str)> {
    ran.iter()
        .map(|r| {
            let kind = match r.outcome {
                Outcome::Applied { .. } => "applied",
                Outcome::AlreadyApplied => "already applied",
                Outcome::ChangedSinceApplied { .. } => "changed since applied",
            };
            (r.script.clone(), kind)
        })
        .collect()
}

fn named(pairs: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
    pairs.iter().map(|(n, k)| (n.to_string(), *k)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_once_and_not_again_after_a_restart() {
    let server = plain_server("provision-once");
    let dir = TestDir::new("provision-once-scripts");
    let roles = write(
        dir.path(),
        "10-roles.sql",
        "CREATE ROLE app_reader NOLOGIN;\n\
         CREATE TABLE runs (script text);\n\
         INSERT INTO runs VALUES ('10-roles');\n",
    );
    let tables = write(
        dir.path(),
        "20-tables.sql",
        "-- a comment with COMMIT; in it\n\
         CREATE TABLE events (id bigint PRIMARY KEY, payload text);\n\
         CREATE FUNCTION touch() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;\n\
         INSERT INTO runs VALUES ('20-tables');\n",
    );
    let scripts = vec![roles.clone(), tables.clone()];

    let mut c = client(&server).await;
    let ran = run_pending(&mut c, Role::Coordinator, &scripts)
        .await
        .unwrap_or_else(|e| panic!("first run: {e}"));
    assert_eq!(
        outcomes(&ran),
        named(&[("10-roles.sql", "applied"), ("20-tables.sql", "applied")])
    );
    assert_eq!(ran[0].path, roles);
    assert_eq!(ran[0].sha256.len(), 64);
    assert_eq!(count(&c, "SELECT count(*) FROM runs").await, 2);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM regent.provisioned WHERE role = 'coordinator'"
        )
        .await,
        2
    );

    // Second call: nothing runs.
    let ran = run_pending(&mut c, Role::Coordinator, &scripts)
        .await
        .unwrap_or_else(|e| panic!("second run: {e}"));
    assert_eq!(
        outcomes(&ran),
        named(&[
            ("10-roles.sql", "already applied"),
            ("20-tables.sql", "already applied")
        ])
    );
    assert_eq!(count(&c, "SELECT count(*) FROM runs").await, 2);

    // The other role's list is separate: the same file name runs for the worker role.
    let ran = run_pending(&mut c, Role::Worker, std::slice::from_ref(&roles)).await;
    let e = ran.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        e.contains("10-roles.sql") && e.contains("42710"),
        "the worker-role run re-creates the role and must fail naming the file and 42710: {e}"
    );

    // After a restart (fresh connection), still nothing runs; a changed file is reported only.
    drop(c);
    server.stop().unwrap_or_else(|e| panic!("stop: {e:#}"));
    server
        .start_again()
        .unwrap_or_else(|e| panic!("start again: {e:#}"));
    write(
        dir.path(),
        "20-tables.sql",
        "INSERT INTO runs VALUES ('20-tables changed');\n",
    );
    let mut c = client(&server).await;
    let ran = run_pending(&mut c, Role::Coordinator, &scripts)
        .await
        .unwrap_or_else(|e| panic!("run after restart: {e}"));
    assert_eq!(
        outcomes(&ran),
        named(&[
            ("10-roles.sql", "already applied"),
            ("20-tables.sql", "changed since applied")
        ])
    );
    assert_eq!(count(&c, "SELECT count(*) FROM runs").await, 2);

    // A directory stands for its *.sql files in name order; only the new one runs.
    write(
        dir.path(),
        "30-more.sql",
        "INSERT INTO runs VALUES ('30-more');\n",
    );
    write(dir.path(), "README.txt", "not SQL");
    let ran = run_pending(&mut c, Role::Coordinator, &[dir.path().to_path_buf()])
        .await
        .unwrap_or_else(|e| panic!("run of the directory: {e}"));
    assert_eq!(
        outcomes(&ran),
        named(&[
            ("10-roles.sql", "already applied"),
            ("20-tables.sql", "changed since applied"),
            ("30-more.sql", "applied"),
        ])
    );
    assert_eq!(count(&c, "SELECT count(*) FROM runs").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_script_leaves_nothing_and_runs_once_fixed() {
    let server = plain_server("provision-fail");
    let dir = TestDir::new("provision-fail-scripts");
    let good = write(dir.path(), "10-good.sql", "CREATE TABLE good (id int);\n");
    let bad = write(
        dir.path(),
        "20-bad.sql",
        "CREATE TABLE half (id int);\n\
         INSERT INTO half VALUES (1);\n\
         SELEC 2;\n",
    );
    let after = write(
        dir.path(),
        "30-after.sql",
        "CREATE TABLE after_bad (id int);\n",
    );
    let scripts = vec![good, bad.clone(), after];
    let mut c = client(&server).await;

    let err = run_pending(&mut c, Role::Worker, &scripts)
        .await
        .err()
        .unwrap_or_else(|| panic!("a script with a syntax error must fail"));
    let text = err.to_string();
    match &err {
        ProvisionError::Script { path, error } => {
            assert_eq!(path, &bad);
            assert_eq!(error.sqlstate, "42601", "{text}");
            assert_eq!(error.position, Some((3, 1)), "{text}");
        }
        other => panic!("expected a script error, got {other:?}"),
    }
    assert!(
        text.contains("20-bad.sql") && text.contains("42601") && text.contains("line 3"),
        "{text}"
    );
    // The good script before it stays applied; nothing of the failing one nor after it.
    assert!(table_exists(&c, "good").await);
    assert!(
        !table_exists(&c, "half").await,
        "failed script half-applied"
    );
    assert!(!table_exists(&c, "after_bad").await, "ran past a failure");
    assert_eq!(
        count(&c, "SELECT count(*) FROM regent.provisioned").await,
        1
    );

    // A script that would commit by itself is refused before anything of it runs.
    write(
        dir.path(),
        "20-bad.sql",
        "CREATE TABLE half (id int);\nCOMMIT;\nSELEC 2;\n",
    );
    let err = run_pending(&mut c, Role::Worker, &scripts)
        .await
        .err()
        .unwrap_or_else(|| panic!("transaction control must be refused"));
    assert!(
        matches!(&err, ProvisionError::TransactionControl { line: 2, statement, .. } if statement == "COMMIT"),
        "{err}"
    );
    assert!(!table_exists(&c, "half").await);

    // Fixed: the failed script and the ones after it run, the good one does not run again.
    write(
        dir.path(),
        "20-bad.sql",
        "CREATE TABLE half (id int);\nINSERT INTO half VALUES (1);\n",
    );
    let ran = run_pending(&mut c, Role::Worker, &scripts)
        .await
        .unwrap_or_else(|e| panic!("run after the fix: {e}"));
    assert_eq!(
        outcomes(&ran),
        named(&[
            ("10-good.sql", "already applied"),
            ("20-bad.sql", "applied"),
            ("30-after.sql", "applied"),
        ])
    );
    assert_eq!(count(&c, "SELECT count(*) FROM half").await, 1);

    // A missing file is named.
    let missing = dir.path().join("40-missing.sql");
    let err = run_pending(&mut c, Role::Worker, &[missing])
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("40-missing.sql") && err.contains("cannot read"),
        "{err}"
    );
}

/// `SHOW` of the settings Citus needs, in a fixed order.
async fn citus_settings(client: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for name in [
        "shared_preload_libraries",
        "wal_level",
        "max_prepared_transactions",
        "citus.local_hostname",
    ] {
        let row = client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .unwrap_or_else(|e| panic!("SHOW {name}: {e}"));
        out.push(row.get::<_, String>(0));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_bootstrap_and_gucs() {
    // Real Citus when installed, else the stand-in (the fixture says which).
    ensure_citus();
    let cluster = TestCluster::builder("citusboot")
        .members(2)
        .configure(|_, cfg| {
            cfg.set(
                "citus",
                serde_json::json!({"group": 0, "database": "citus"}),
            );
            cfg.set(
                "postgresql.parameters.shared_preload_libraries",
                "pg_stat_statements",
            );
            cfg.set("postgresql.parameters.max_connections", 40);
        })
        .start()
        .await;
    let members = cluster.all();
    let (primary, replica) = wait_until_ok(
        "a primary and a streaming replica",
        Duration::from_secs(120),
        || async {
            let (a, b) = (members[0], members[1]);
            match (a.is_primary().await, b.is_healthy_replica().await) {
                (true, true) => return Ok((a, b)),
                _ if b.is_primary().await && a.is_healthy_replica().await => return Ok((b, a)),
                _ => {}
            }
            Err(anyhow::anyhow!("no primary with a healthy replica yet"))
        },
    )
    .await;

    let mut config = primary.pg_config();
    config.dbname("citus");
    let c = regent_tests::citus::connect_with(&config, "coordinator")
        .await
        .unwrap_or_else(|e| panic!("connect to database citus: {e:#}"));
    let settings = citus_settings(&c).await;
    assert_eq!(
        settings[..3],
        ["citus,pg_stat_statements", "logical", "80"],
        "citus first with the user's library after it, logical WAL, 2 x max_connections"
    );
    assert!(
        settings[3].starts_with('/'),
        "citus.local_hostname is the socket directory: {}",
        settings[3]
    );

    let extension = count(
        &c,
        "SELECT count(*) FROM pg_catalog.pg_extension WHERE extname = 'citus'",
    )
    .await;
    assert_eq!(extension, 1, "CREATE EXTENSION citus ran");

    let row = c
        .query_one(
            "SELECT nodename, nodeport, noderole::text FROM pg_catalog.pg_dist_node WHERE groupid = 0",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("read the coordinator's row: {e}"));
    let (host, port, role): (String, i32, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (host.as_str(), port, role.as_str()),
        ("127.0.0.1", i32::from(primary.pg_port()), "primary")
    );

    let row = c
        .query_one(
            "SELECT rolename::text, authinfo FROM pg_catalog.pg_dist_authinfo WHERE nodeid = 0",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("read pg_dist_authinfo: {e}"));
    let (role, authinfo): (String, String) = (row.get(0), row.get(1));
    assert_eq!(role, SUPERUSER);
    assert_eq!(
        authinfo,
        format!("password={}", regent_tests::config::SUPERUSER_PASSWORD)
    );

    // The replica renders the same settings (a hot standby refuses to start with fewer prepared
    // transactions than its primary) and has the Citus database through replication.
    let mut config = replica.pg_config();
    config.dbname("citus");
    let r = regent_tests::citus::connect_with(&config, "replica")
        .await
        .unwrap_or_else(|e| panic!("connect to the replica's database citus: {e:#}"));
    assert_eq!(citus_settings(&r).await[..3], settings[..3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_bootstrap_does_not_register_a_coordinator() {
    ensure_citus();
    let cluster = TestCluster::builder("citusworker")
        .members(1)
        .configure(|_, cfg| {
            cfg.set(
                "citus",
                serde_json::json!({"group": 2, "database": "citus_db"}),
            );
        })
        .start()
        .await;
    let members = cluster.all();
    let worker = members[0];
    wait_until_ok(
        "the worker group's primary",
        Duration::from_secs(90),
        || async {
            if worker.is_primary().await {
                Ok(())
            } else {
                Err(anyhow::anyhow!("not primary yet"))
            }
        },
    )
    .await;
    let mut config = worker.pg_config();
    config.dbname("citus_db");
    let c = regent_tests::citus::connect_with(&config, "worker")
        .await
        .unwrap_or_else(|e| panic!("connect to database citus_db: {e:#}"));
    assert_eq!(citus_settings(&c).await[..2], ["citus", "logical"]);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_catalog.pg_extension WHERE extname = 'citus'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM pg_catalog.pg_dist_node").await,
        0,
        "a worker does not register itself"
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_catalog.pg_dist_authinfo WHERE nodeid = 0"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_steps_are_idempotent() {
    ensure_citus();
    let server = PgServer::start("citus-bootstrap-twice", &[])
        .unwrap_or_else(|e| panic!("start Postgres: {e:#}"));
    let plan = citus::bootstrap::Bootstrap {
        database: "citus".into(),
        coordinator: Some(citus::bootstrap::NodeAddress {
            host: "127.0.0.1".into(),
            port: server.port(),
        }),
        superuser: citus::bootstrap::AuthInfo {
            password: Some("it's secret".into()),
            ..Default::default()
        },
    };
    // Run as an interrupted bootstrap retried on the same data directory would.
    for attempt in 1..=2 {
        citus::bootstrap::run(&server.pg_config("postgres"), &plan)
            .await
            .unwrap_or_else(|e| panic!("bootstrap attempt {attempt}: {e}"));
    }
    let c = server
        .connect("citus")
        .await
        .unwrap_or_else(|e| panic!("connect to database citus: {e:#}"));
    let rows = c
        .query(
            "SELECT authinfo FROM pg_catalog.pg_dist_authinfo WHERE nodeid = 0",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("read pg_dist_authinfo: {e}"));
    let authinfo: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(authinfo, [r"password='it\'s secret'"]);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM pg_catalog.pg_dist_node WHERE groupid = 0"
        )
        .await,
        1
    );

    // A database that cannot be created is reported with the step and the SQLSTATE.
    let bad = citus::bootstrap::Bootstrap {
        database: "template0".into(),
        coordinator: None,
        superuser: Default::default(),
    };
    let err = citus::bootstrap::run(&server.pg_config("postgres"), &bad)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("connect to database template0: FATAL 55000"),
        "{err}"
    );
}
