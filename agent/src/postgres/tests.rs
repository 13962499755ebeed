//! Tests against real Postgres 15 binaries: bootstrap, clone, streaming, promote, rewind,
//! stop modes, crash detection and adoption. Run as the `postgres` user when we are root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
const SUPERUSER_PASSWORD: &str = "su 'pass\\word";
const DEADLINE: Duration = Duration::from_secs(20);

struct TestDir(PathBuf);

impl TestDir {
    fn new(run_as: Option<(u32, u32)>) -> TestDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("regent-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_as() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("running as root needs a postgres user");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn settings(dir: &Path, name: &str) -> PgSettings {
    let mut parameters = serde_json::Map::new();
    parameters.insert("fsync".into(), json!(false));
    parameters.insert("shared_buffers".into(), json!("16MB"));
    parameters.insert("max_connections".into(), json!(30));
    parameters.insert("wal_receiver_status_interval".into(), json!("1s"));
    parameters.insert("wal_retrieve_retry_interval".into(), json!("200ms"));
    let socket_dir = dir.join(format!("{name}-socket"));
    std::fs::create_dir_all(&socket_dir).unwrap();
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid)).unwrap();
    }
    PgSettings {
        data_dir: dir.join(name),
        bin_dir: BIN_DIR.into(),
        scope: "test-scope".into(),
        name: name.into(),
        listen_addresses: "127.0.0.1".into(),
        port: free_port(),
        connect_host: "127.0.0.1".into(),
        superuser: PgUser::new("postgres", Some(SUPERUSER_PASSWORD)),
        replication: PgUser::new("repl user", Some("repl:pass")),
        rewind: Some(PgUser::new("rewinder", Some("rw"))),
        parameters,
        initdb_options: vec!["--no-sync".into(), "--encoding=UTF8".into()],
        run_as: run_as(),
        pg_ctl_timeout: Duration::from_secs(20),
        socket_dir,
        log_file: Some(dir.join(format!("{name}.log"))),
        ..PgSettings::default()
    }
}

fn target(pg: &Postgres) -> ConnTarget {
    ConnTarget {
        host: "127.0.0.1".into(),
        port: pg.settings().port,
    }
}

/// Poll `observe()` until `check` holds; fail with the last observation.
async fn observe_until(
    pg: &mut Postgres,
    what: &str,
    check: impl Fn(&PgObservation) -> bool,
) -> PgObservation {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let obs = pg.observe().await;
        if check(&obs) {
            return obs;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached; last observation {obs:?}; log: {}",
            pg.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sql(pg: &mut Postgres, statement: &str) -> Result<(), PgError> {
    pg.execute_local("test sql", Duration::from_secs(10), statement)
        .await
}

async fn count_rows(pg: &mut Postgres) -> i64 {
    let rows = pg
        .query_local(
            "count",
            Duration::from_secs(5),
            "SELECT count(*) FROM t",
            &[],
        )
        .await
        .unwrap();
    rows[0].get(0)
}

/// The binaries are part of the test set-up (.ci/run installs postgresql-15): without them the
/// tests fail rather than pass unseen.
fn require_postgres() {
    assert!(
        Path::new(BIN_DIR).join("postgres").exists(),
        "Postgres 15 binaries are missing under {BIN_DIR}"
    );
}

#[tokio::test]
async fn postgres_cluster_lifecycle() {
    require_postgres();
    let dir = TestDir::new(run_as());

    // Bootstrap a primary.
    let mut a = Postgres::new(settings(&dir.0, "node-a")).unwrap();
    assert!(a.data_dir_is_empty());
    assert_eq!(
        a.conn_url(),
        format!("postgres://127.0.0.1:{}/postgres", a.settings().port)
    );
    a.initdb().await.unwrap();
    assert!(a.is_valid_data_dir());
    assert!(a.data_dir().join("postgresql.base.conf").exists());
    let change = a.write_config(ConfRole::Primary).unwrap();
    assert!(change.changed);
    assert_eq!(
        a.write_config(ConfRole::Primary).unwrap(),
        ConfChange::default(),
        "second render changes nothing"
    );
    a.start().await.unwrap();
    assert!(matches!(a.start().await, Err(PgError::AlreadyRunning(_))));
    a.post_bootstrap().await.unwrap();
    let obs = a.observe().await;
    assert!(obs.running && obs.queryable, "{obs:?}");
    assert_eq!(obs.state, PgProcessState::Running);
    assert_eq!(obs.in_recovery, Some(false));
    assert_eq!(obs.timeline, Some(1));
    assert_eq!(obs.server_version.map(|v| v / 10000), Some(15));
    assert!(obs.wal_position.is_some_and(|l| l > 0));
    assert!(!obs.pending_restart);
    let sysid = obs.sysid.clone().unwrap();

    let slot_b = slot_name_for("node-b");
    a.ensure_physical_slots(&[slot_b.clone(), "stale_slot".into()])
        .await
        .unwrap();
    a.ensure_physical_slots(std::slice::from_ref(&slot_b))
        .await
        .unwrap();
    assert_eq!(a.physical_slots().await.unwrap(), vec![slot_b.clone()]);
    sql(&mut a, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    // Clone a replica and stream from the primary through the slot.
    let mut b = Postgres::new(settings(&dir.0, "node-b")).unwrap();
    b.basebackup(&target(&a)).await.unwrap();
    assert!(!b.data_dir().join("postgresql.conf").exists());
    let replica_of_a = ConfRole::Replica {
        primary: Some(target(&a)),
        slot: Some(slot_b.clone()),
    };
    b.write_config(replica_of_a.clone()).unwrap();
    assert!(b.data_dir().join("standby.signal").exists());
    b.start().await.unwrap();
    let obs = observe_until(&mut b, "replica streams", |o| o.streaming == Some(true)).await;
    assert_eq!(obs.in_recovery, Some(true));
    assert_eq!(obs.state, PgProcessState::Running);
    assert_eq!(obs.sysid.as_deref(), Some(sysid.as_str()));
    assert_eq!(obs.timeline, Some(1));
    let obs = observe_until(&mut a, "primary sees replica", |o| {
        o.replication
            .iter()
            .any(|r| r.application_name == "node-b" && r.state.as_deref() == Some("streaming"))
    })
    .await;
    assert_eq!(obs.replication[0].usename.as_deref(), Some("repl user"));
    sql(&mut a, "INSERT INTO t VALUES (2)").await.unwrap();
    let target_lsn = a.observe().await.wal_position.unwrap();
    observe_until(&mut b, "replica replays", |o| {
        o.replayed_lsn.is_some_and(|l| l >= target_lsn)
    })
    .await;
    assert_eq!(count_rows(&mut b).await, 2);

    // A conninfo change is applied by reload, a max_connections change needs a restart.
    let change = b
        .write_config(ConfRole::Replica {
            primary: Some(target(&a)),
            slot: None,
        })
        .unwrap();
    assert_eq!(
        change,
        ConfChange {
            changed: true,
            needs_restart: false
        }
    );
    b.reload().unwrap();
    let mut more = b.settings().clone();
    more.parameters.insert("max_connections".into(), json!(40));
    b.set_settings(more).unwrap();
    let change = b.write_config(replica_of_a.clone()).unwrap();
    assert_eq!(
        change,
        ConfChange {
            changed: true,
            needs_restart: true
        }
    );
    b.reload().unwrap();
    observe_until(&mut b, "pending restart reported", |o| o.pending_restart).await;

    // Promote the replica; the new timeline is visible at once and in the history.
    b.promote().await.unwrap();
    let obs = b.observe().await;
    assert_eq!(obs.in_recovery, Some(false), "{obs:?}");
    assert_eq!(obs.timeline, Some(2));
    assert!(!b.data_dir().join("standby.signal").exists());
    sql(&mut b, "INSERT INTO t VALUES (3)").await.unwrap();
    b.checkpoint().await.unwrap();
    let history = b.timeline_history(2).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].0, 1);
    let remote = a.remote_timeline_history(&target(&b)).await.unwrap();
    assert_eq!(remote.timeline, 2);
    assert_eq!(remote.history, history);

    // The old primary diverges, then is rewound and follows the new primary.
    sql(&mut a, "INSERT INTO t VALUES (100)").await.unwrap();
    a.stop(StopMode::Fast, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(!a.is_running());
    assert_eq!(a.postmaster_exited(), None, "a requested stop is no crash");
    let cd = a.controldata().await.unwrap();
    assert_eq!(cd.state, "shut down");
    assert_eq!(cd.sysid, sysid);
    assert_eq!(cd.timeline, 1);
    let outcome = a.rewind(&target(&b)).await.unwrap();
    assert_eq!(outcome, RewindOutcome::Rewound);
    a.write_config(ConfRole::Replica {
        primary: Some(target(&b)),
        slot: None,
    })
    .unwrap();
    a.start().await.unwrap();
    let obs = observe_until(&mut a, "rewound node streams", |o| {
        o.streaming == Some(true) && o.timeline == Some(2)
    })
    .await;
    assert_eq!(obs.in_recovery, Some(true));
    sql(&mut b, "INSERT INTO t VALUES (4)").await.unwrap();
    let target_lsn = b.observe().await.wal_position.unwrap();
    observe_until(&mut a, "rewound node replays", |o| {
        o.replayed_lsn.is_some_and(|l| l >= target_lsn)
    })
    .await;
    assert_eq!(count_rows(&mut a).await, 4, "diverged row is gone");

    // Adopt a running postmaster from a fresh handle, and stop it through that handle.
    let mut adopted = Postgres::new(a.settings().clone()).unwrap();
    assert!(adopted.adopt_running().await.unwrap().is_some());
    assert!(adopted.is_running());
    assert_eq!(adopted.postmaster_pid(), a.postmaster_pid());
    assert_eq!(adopted.observe().await.in_recovery, Some(true));
    // A smart shutdown waits for every session, including the one `a` keeps cached.
    a.client = None;
    let smart = Instant::now();
    adopted
        .stop(StopMode::Smart, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        smart.elapsed() < Duration::from_secs(5),
        "smart stop had to escalate"
    );
    assert!(!a.is_running());
    // Stopped behind this handle's back: reported, with the clean exit status.
    assert!(a.postmaster_exited().is_some_and(|s| s.success()));
    assert_eq!(
        a.controldata().await.unwrap().state,
        "shut down in recovery"
    );

    // A killed postmaster is reported as crashed and restarts over its stale postmaster.pid.
    let pid = b.postmaster_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while b.postmaster_exited().is_none() {
        assert!(Instant::now() < deadline, "crash not detected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.process_state(), PgProcessState::Crashed);
    assert!(!b.observe().await.running);
    assert!(b.data_dir().join("postmaster.pid").exists());
    b.start().await.unwrap();
    assert_eq!(b.postmaster_exited(), None);
    assert_eq!(count_rows(&mut b).await, 4);
    b.stop(StopMode::Immediate, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(!b.is_running());
    assert_eq!(b.controldata().await.unwrap().state, "in production");

    // A configuration Postgres rejects fails the start with the log tail in the error.
    let mut broken = a.settings().parameters.clone();
    broken.insert("shared_buffers".into(), json!("lots"));
    a.set_parameters(broken, Vec::new());
    a.write_config(ConfRole::Primary).unwrap();
    match a.start().await {
        Err(PgError::StartFailed { log_tail, .. }) => {
            assert!(log_tail.contains("shared_buffers"), "{log_tail}")
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn failed_clone_leaves_an_empty_data_dir() {
    require_postgres();
    let dir = TestDir::new(run_as());
    let mut s = settings(&dir.0, "orphan");
    s.pg_ctl_timeout = Duration::from_secs(5);
    let pg = Postgres::new(s).unwrap();
    std::fs::create_dir_all(pg.data_dir()).unwrap();
    std::fs::write(pg.data_dir().join("leftover"), "x").unwrap();
    let nobody = ConnTarget {
        host: "127.0.0.1".into(),
        port: free_port(),
    };
    let err = pg.basebackup(&nobody).await.unwrap_err();
    assert!(err.to_string().contains("pg_basebackup"), "{err}");
    assert!(pg.data_dir().exists());
    assert!(pg.data_dir_is_empty());
    assert!(!pg.is_valid_data_dir());
    let mode = std::fs::metadata(pg.data_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// A restart's `timeout` bounds only the wait: the postmaster goes on starting and can be
/// waited for again.
#[tokio::test]
async fn a_start_no_longer_waited_for_goes_on() {
    require_postgres();
    let dir = TestDir::new(run_as());
    let mut pg = Postgres::new(settings(&dir.0, "node-w")).unwrap();
    pg.initdb().await.unwrap();
    pg.write_config(ConfRole::Primary).unwrap();
    // Not ready the instant it is spawned.
    let started = pg.start_within(Duration::ZERO).await;
    assert!(
        matches!(started, Err(PgError::StartTimeout(_))),
        "{started:?}"
    );
    assert!(pg.is_running(), "the postmaster was left running");
    pg.wait_until_ready(DEADLINE).await.unwrap();
    let obs = pg.observe().await;
    assert!(obs.queryable, "{obs:?}");
    pg.stop(StopMode::Fast, DEADLINE).await.unwrap();
}

/// PEM files of a test CA and of a server certificate it signed for `localhost`.
struct TestCertificates {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    /// A client certificate for the role `certuser`.
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn test_certificates(dir: &Path) -> TestCertificates {
    use test_pki::{write_ca, Ca, Subject, Usage};
    let ca = Ca::new("CA");
    let localhost = Subject::CommonName("localhost");
    let (server_cert, server_key) =
        ca.issue_to(dir, "server", localhost, &["localhost"], Usage::Server);
    let certuser = Subject::CommonName("certuser");
    let (client_cert, client_key) = ca.issue_to(dir, "client", certuser, &[], Usage::Client);
    let files = TestCertificates {
        ca: ca.write(dir, "ca"),
        other_ca: write_ca(dir, "other-ca"),
        server_cert,
        server_key,
        client_cert,
        client_key,
    };
    // Postgres refuses a key file others can read.
    std::fs::set_permissions(&files.server_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Some((uid, gid)) = run_as() {
        for file in [&files.server_cert, &files.server_key] {
            std::os::unix::fs::chown(file, Some(uid), Some(gid)).unwrap();
        }
    }
    files
}

/// The agent's TCP connection to another member (the leader's timeline check) against a server
/// whose pg_hba accepts TCP only with TLS: every sslmode behaves as with libpq.
#[tokio::test]
async fn remote_connections_honour_sslmode_against_a_hostssl_only_server() {
    require_postgres();
    let dir = TestDir::new(run_as());
    let certs = test_certificates(&dir.0);
    let mut server_settings = settings(&dir.0, "tls-server");
    server_settings.parameters.insert("ssl".into(), json!("on"));
    server_settings.parameters.insert(
        "ssl_cert_file".into(),
        json!(certs.server_cert.to_string_lossy()),
    );
    server_settings.parameters.insert(
        "ssl_key_file".into(),
        json!(certs.server_key.to_string_lossy()),
    );
    server_settings
        .parameters
        .insert("ssl_ca_file".into(), json!(certs.ca.to_string_lossy()));
    server_settings.pg_hba = vec![
        "local all all trust".into(),
        "hostssl all certuser 127.0.0.1/32 cert".into(),
        "hostssl all all 127.0.0.1/32 scram-sha-256".into(),
        "hostssl all all ::1/128 scram-sha-256".into(),
    ];
    let mut server = Postgres::new(server_settings.clone()).unwrap();
    server.initdb().await.unwrap();
    server.write_config(ConfRole::Primary).unwrap();
    server.start().await.unwrap();
    server.post_bootstrap().await.unwrap();
    sql(&mut server, "CREATE ROLE certuser LOGIN SUPERUSER")
        .await
        .unwrap();

    let client_with = |options: &[(&str, &str)]| {
        let mut s = server_settings.clone();
        for (key, value) in options {
            let text = value.to_string();
            match *key {
                "sslmode" => s.superuser.sslmode = Some(text),
                "sslrootcert" => s.superuser.sslrootcert = Some(text),
                "sslcert" => s.superuser.sslcert = Some(text),
                "sslkey" => s.superuser.sslkey = Some(text),
                "user" => {
                    s.superuser.username = text;
                    s.superuser.password = None;
                }
                other => panic!("no option {other}"),
            }
        }
        Postgres::new(s)
    };
    let refused = |options: &[(&str, &str)]| match client_with(options) {
        Ok(_) => panic!("{options:?} accepted"),
        Err(e) => e.to_string(),
    };
    let ca = certs.ca.to_string_lossy().into_owned();
    let other_ca = certs.other_ca.to_string_lossy().into_owned();
    let client_cert = certs.client_cert.to_string_lossy().into_owned();
    let client_key = certs.client_key.to_string_lossy().into_owned();
    let by_address = target(&server);
    let by_name = ConnTarget {
        host: "localhost".into(),
        port: server.settings().port,
    };
    // (options, target, whether the connection succeeds)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a ConnTarget, bool);
    let cases: Vec<Case> = vec![
        (vec![], &by_address, true),
        (vec![("sslmode", "disable")], &by_address, false),
        (vec![("sslmode", "allow")], &by_address, true),
        (vec![("sslmode", "require")], &by_address, true),
        (
            vec![("sslmode", "require"), ("sslrootcert", &other_ca)],
            &by_address,
            false,
        ),
        (
            vec![("sslmode", "verify-ca"), ("sslrootcert", &ca)],
            &by_address,
            true,
        ),
        (
            vec![("sslmode", "verify-ca"), ("sslrootcert", &other_ca)],
            &by_address,
            false,
        ),
        (
            vec![("sslmode", "verify-full"), ("sslrootcert", &ca)],
            &by_name,
            true,
        ),
        // The certificate names localhost, not 127.0.0.1.
        (
            vec![("sslmode", "verify-full"), ("sslrootcert", &ca)],
            &by_address,
            false,
        ),
        // pg_hba's `cert` method: the client certificate is the credential.
        (
            vec![("user", "certuser"), ("sslmode", "require")],
            &by_address,
            false,
        ),
        (
            vec![
                ("user", "certuser"),
                ("sslmode", "verify-ca"),
                ("sslrootcert", &ca),
                ("sslcert", &client_cert),
                ("sslkey", &client_key),
            ],
            &by_address,
            true,
        ),
    ];
    for (options, target, expect_ok) in cases {
        let Ok(client) = client_with(&options) else {
            panic!("{options:?} refused");
        };
        let result = client.remote_timeline_history(target).await;
        assert_eq!(
            result.is_ok(),
            expect_ok,
            "options {options:?} to {}: {result:?}",
            target.host
        );
        if let Ok(remote) = result {
            assert_eq!(remote.timeline, 1, "{options:?}");
        }
    }

    // Options that cannot work are refused when the settings are read, naming the option.
    let error = refused(&[("sslmode", "verify-everything")]);
    assert!(
        error.starts_with("postgresql.authentication.superuser.sslmode: "),
        "{error}"
    );
    let error = refused(&[("sslmode", "verify-ca")]);
    assert!(
        error.starts_with("postgresql.authentication.superuser.sslrootcert: "),
        "{error}"
    );
    let error = refused(&[
        ("sslmode", "verify-full"),
        ("sslrootcert", "/nonexistent/ca.crt"),
    ]);
    assert!(error.contains("/nonexistent/ca.crt"), "{error}");

    server
        .stop(StopMode::Fast, Duration::from_secs(20))
        .await
        .unwrap();
}
