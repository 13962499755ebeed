//! The REST API fuzzed with schemathesis against its own OpenAPI document (`GET /openapi.json`),
//! on a running one-member cluster whose API requires basic authentication.
//!
//! First run: every operation, without credentials, bounded in examples per operation and in
//! wall-clock time. Afterwards the member must be alive and still the leader, and nothing may
//! have changed: the DCS `config`, `leader`, `history` and `initialize` objects, no `failover`
//! object, the postmaster's start time (no restart) and `pg_conf_load_time()` (no reload).
//! Second run: the safe operations (GET, HEAD, OPTIONS) with the credentials.
//!
//! How 5xx answers are judged: schemathesis writes every exchange to a HAR file, which this test
//! reads itself. Any 500 fails the test. The only other 5xx allowed are those the document lists
//! and that a healthy leader gives by design:
//! * 503 from a health check that does not pass on this member: GET on a health path (`/replica`
//!   on the primary) or on a path without a GET handler, and HEAD or OPTIONS on any path (they
//!   are health checks everywhere, so OPTIONS `/cluster` answers 503, as in Patroni);
//! * 502 from `GET /failsafe` (failsafe mode is off);
//! * 501 to a method the document does not list for the path (schemathesis probes every path
//!   with TRACE; Patroni answers 501 there too).
//!
//! Unsafe requests without credentials must all be refused with 401. Schemathesis's own checks
//! run too (server errors with a similar allowance, status codes, content types, headers and
//! bodies conforming to the document, ignored authentication) and must pass.
//!
//! schemathesis comes from `$SCHEMATHESIS_BIN`, else `/opt/regent-schemathesis/bin/schemathesis`
//! (what `.ci/run` installs); the test fails, naming how to install it, when it is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use regent_tests::{wait_until, TestCluster, TestDir};
use serde_json::{json, Value};

const USER: &str = "fuzzadmin";
const PASSWORD: &str = "fuzz-s3cret";
const DEFAULT_SCHEMATHESIS: &str = "/opt/regent-schemathesis/bin/schemathesis";
/// Test cases per operation in each phase, and the wall-clock budget of the unauthenticated run
/// (the fuzzing phase repeats until the budget is spent).
const UNAUTHENTICATED_EXAMPLES: u32 = 25;
const UNAUTHENTICATED_SECONDS: u32 = 45;
/// The same for the authenticated run of the safe operations.
const AUTHENTICATED_EXAMPLES: u32 = 10;
const AUTHENTICATED_SECONDS: u32 = 20;
/// Schemathesis checks that must pass (`unsupported_method` is left out on purpose: like Patroni
/// the API answers 501 to a method it does not serve, where the check wants 405;
/// `negative_data_rejection` too: like Patroni, an unparsable `lag` means "no limit").
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,ignored_auth";

fn schemathesis_bin() -> PathBuf {
    let path = std::env::var_os("SCHEMATHESIS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SCHEMATHESIS));
    assert!(
        path.is_file(),
        "schemathesis not found at {} (set SCHEMATHESIS_BIN, or install it: \
         python3 -m venv /opt/regent-schemathesis && \
         /opt/regent-schemathesis/bin/pip install 'schemathesis>=4.32,<5'; .ci/run does this)",
        path.display()
    );
    path
}

/// Allowance for schemathesis's `not_a_server_error` check: its configuration cannot tell a
/// documented method from a probe, so it is wider; the test's own HAR check is the strict one.
const SCHEMATHESIS_CONFIG: &str = r#"
# 501 answers a method the API does not serve (TRACE probes) and 503 a HEAD or OPTIONS health
# check that fails (they are health checks on any path, OPTIONS /cluster included), as Patroni
# does; the HAR check of the test allows them only there.
[checks]
not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "501", "503"]

[[operations]]
include-path = "/failsafe"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "501", "502", "503"]
"#;

/// One exchange from the HAR file.
#[derive(Debug)]
struct Exchange {
    method: String,
    path: String,
    status: u16,
}

/// What a schemathesis run did.
#[derive(Debug)]
struct FuzzRun {
    exchanges: Vec<Exchange>,
    elapsed: Duration,
}

impl FuzzRun {
    fn by_status(&self) -> BTreeMap<u16, usize> {
        let mut counts = BTreeMap::new();
        for e in &self.exchanges {
            *counts.entry(e.status).or_insert(0) += 1;
        }
        counts
    }

    fn operations(&self) -> BTreeSet<(String, String)> {
        self.exchanges
            .iter()
            .map(|e| (e.method.clone(), e.path.clone()))
            .collect()
    }
}

/// Run schemathesis against the member's document and read back every exchange.
async fn run_schemathesis(
    dir: &Path,
    label: &str,
    document_url: &str,
    extra_args: &[&str],
    max_examples: u32,
    max_seconds: u32,
) -> FuzzRun {
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, SCHEMATHESIS_CONFIG).expect("write schemathesis.toml");
    let har = dir.join(format!("{label}.har"));
    let mut command = tokio::process::Command::new(schemathesis_bin());
    command
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .args(["run", document_url])
        .args(["--checks", CHECKS])
        .args(["--max-examples", &max_examples.to_string()])
        .args(["--max-time", &max_seconds.to_string()])
        .args(["--workers", "1", "--seed", "20260101"])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .args(["--suppress-health-check", "all"])
        .args(["--report", "har"])
        .arg("--report-har-path")
        .arg(&har)
        .args(extra_args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    // The time budget bounds the run; the margin covers start-up and the report.
    let limit = Duration::from_secs(u64::from(max_seconds) + 60);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ({label}) still running after {limit:?}"))
        .expect("run schemathesis");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis ({label}) found problems (exit {:?}):\n{stdout}\n{stderr}",
        output.status.code()
    );
    let har_text = std::fs::read_to_string(&har)
        .unwrap_or_else(|e| panic!("read {}: {e}\n{stdout}\n{stderr}", har.display()));
    let har: Value = serde_json::from_str(&har_text).expect("the HAR file is JSON");
    let entries = har["log"]["entries"].as_array().expect("HAR log.entries");
    let exchanges: Vec<Exchange> = entries
        .iter()
        .map(|entry| {
            let url = entry["request"]["url"].as_str().expect("HAR request.url");
            let path = url
                .split_once("://")
                .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
                .unwrap_or("/");
            let path = path.split(['?', '#']).next().unwrap_or("/");
            Exchange {
                method: entry["request"]["method"]
                    .as_str()
                    .expect("HAR request.method")
                    .to_uppercase(),
                path: path.to_string(),
                status: entry["response"]["status"]
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .expect("HAR response.status"),
            }
        })
        .collect();
    let run = FuzzRun { exchanges, elapsed };
    println!(
        "schemathesis ({label}): {} requests over {} method and path pairs in {:.1}s, by status: {:?}",
        run.exchanges.len(),
        run.operations().len(),
        run.elapsed.as_secs_f64(),
        run.by_status()
    );
    let summary: Vec<&str> = stdout.lines().rev().take(12).collect();
    println!(
        "schemathesis ({label}) summary:\n{}",
        summary.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    run
}

/// Check the served document against the OpenAPI 3.0 meta-schema, with the validator that
/// ships inside schemathesis (run by the Python of its virtualenv).
async fn validate_document(dir: &Path, document: &Value) {
    let file = dir.join("openapi.json");
    std::fs::write(&file, document.to_string()).expect("write openapi.json");
    let python = schemathesis_bin().with_file_name("python");
    let script = "import json, sys\n\
        from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR\n\
        errors = list(OPENAPI_30_VALIDATOR.iter_errors(json.load(open(sys.argv[1]))))\n\
        print('\\n'.join(str(e) for e in errors[:20]))\n\
        sys.exit(1 if errors else 0)\n";
    let output = tokio::process::Command::new(&python)
        .args(["-c", script])
        .arg(&file)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "the served document is not valid OpenAPI 3.0:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Server errors this member may give by design (see the module comment); everything else
/// with a 5xx is a failure.
fn allowed_server_error(
    exchange: &Exchange,
    health_paths: &BTreeSet<String>,
    documented: &BTreeSet<(String, String)>,
) -> bool {
    match exchange.status {
        // A method the document does not list for the path (schemathesis probes with TRACE).
        501 => !documented.contains(&(exchange.method.clone(), exchange.path.clone())),
        // A health check that does not pass: GET on a health path, HEAD or OPTIONS anywhere.
        // A health check that does not pass: GET on a health path or on a path without a GET
        // handler (schemathesis probes GET /switchover), HEAD or OPTIONS anywhere.
        503 => match exchange.method.as_str() {
            "GET" => {
                health_paths.contains(&exchange.path)
                    || !documented.contains(&("GET".to_string(), exchange.path.clone()))
            }
            "HEAD" | "OPTIONS" => true,
            _ => false,
        },
        502 => exchange.method == "GET" && exchange.path == "/failsafe",
        _ => false,
    }
}

/// Everything the fuzz run must leave as it was.
#[derive(Debug, PartialEq)]
struct Observed {
    leader: Option<String>,
    config: Option<Value>,
    failover: Option<String>,
    history: Option<String>,
    initialize: Option<String>,
    postmaster_start_time: String,
    conf_load_time: String,
    timeline: Option<Value>,
    scheduled_restart: Option<Value>,
}

async fn observe(cluster: &TestCluster) -> Observed {
    let member = &cluster.all()[0];
    let client = member.pg_client().await.expect("connect to Postgres");
    let row = client
        .query_one(
            "SELECT pg_postmaster_start_time()::text, pg_conf_load_time()::text",
            &[],
        )
        .await
        .expect("read postmaster start and configuration load times");
    let status = member.patroni_status().await.expect("GET /patroni");
    Observed {
        leader: cluster.dcs_get("leader").await,
        config: cluster
            .dcs_get("config")
            .await
            .map(|c| serde_json::from_str(&c).expect("DCS config is JSON")),
        failover: cluster.dcs_get("failover").await,
        history: cluster.dcs_get("history").await,
        initialize: cluster.dcs_get("initialize").await,
        postmaster_start_time: row.get(0),
        conf_load_time: row.get(1),
        timeline: status.get("timeline").cloned(),
        scheduled_restart: status.get("scheduled_restart").cloned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzing_without_credentials_changes_nothing() {
    let schemathesis = schemathesis_bin();
    let cluster = TestCluster::builder("fuzz")
        .members(1)
        .configure(|_, config| {
            config.set(
                "restapi.authentication",
                json!({"username": USER, "password": PASSWORD}),
            );
        })
        .start()
        .await;
    let name = cluster.wait_for_leader(Duration::from_secs(60)).await;
    let member = cluster.member(&name);
    let agent_pid = member.agent_pid().expect("agent running");
    let postmaster_pid = member.postmaster_pid().expect("postmaster running");
    // The DCS config is written by the bootstrap; wait for it so `before` is complete.
    wait_until("the DCS config object", Duration::from_secs(30), || async {
        cluster.dcs_get("config").await.map(|_| ())
    })
    .await;
    // ... and for the member's status to show its timeline (published by its first cycle after
    // bootstrap), so the only differences left would be the fuzz run's.
    wait_until(
        "the timeline on GET /patroni",
        Duration::from_secs(30),
        || async {
            let status = member.patroni_status().await?;
            status.get("timeline").is_some().then_some(())
        },
    )
    .await;
    let before = observe(&cluster).await;
    assert_eq!(before.leader.as_deref(), Some(name.as_str()));
    assert_eq!(before.failover, None);

    let document_url = format!("{}/openapi.json", member.api_base());
    let (code, document) = member
        .api_get("/openapi.json")
        .await
        .expect("GET /openapi.json");
    assert_eq!(code, 200, "GET /openapi.json");
    let health_paths: BTreeSet<String> = document["paths"]
        .as_object()
        .expect("document paths")
        .iter()
        .filter(|(_, item)| item["get"]["tags"] == json!(["health"]))
        .map(|(path, _)| path.clone())
        .collect();
    assert!(health_paths.contains("/replica"), "{health_paths:?}");
    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .expect("document paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|o| o.keys())
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();

    let dir = TestDir::new("rest-fuzz");
    validate_document(dir.path(), &document).await;
    println!("schemathesis: {}", schemathesis.display());
    let run = run_schemathesis(
        dir.path(),
        "no credentials",
        &document_url,
        &[],
        UNAUTHENTICATED_EXAMPLES,
        UNAUTHENTICATED_SECONDS,
    )
    .await;

    // The fuzzing reached every documented operation but the document itself, which
    // schemathesis leaves out (the test fetched it above).
    let exercised = run.operations();
    let missed: Vec<_> = documented
        .difference(&exercised)
        .filter(|(_, path)| path != "/openapi.json")
        .collect();
    assert!(missed.is_empty(), "operations never exercised: {missed:?}");
    let mut problems = Vec::new();
    let mut unsafe_requests = 0;
    for e in &run.exchanges {
        if e.status == 500 {
            problems.push(format!("500 from {} {}", e.method, e.path));
        } else if e.status >= 500 && !allowed_server_error(e, &health_paths, &documented) {
            problems.push(format!(
                "undocumented {} from {} {}",
                e.status, e.method, e.path
            ));
        }
        if matches!(e.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
            unsafe_requests += 1;
            if e.status != 401 {
                problems.push(format!(
                    "{} {} without credentials answered {}, not 401",
                    e.method, e.path, e.status
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        unsafe_requests > 0,
        "no unsafe request was sent: {:?}",
        run.operations()
    );
    println!("unsafe requests without credentials: {unsafe_requests}, all 401");

    // Alive, still the leader, nothing changed.
    assert_eq!(
        member.agent_pid(),
        Some(agent_pid),
        "the agent was replaced"
    );
    assert_eq!(
        member.postmaster_pid(),
        Some(postmaster_pid),
        "the postmaster was restarted"
    );
    assert!(
        member.is_primary().await,
        "{name} no longer answers /primary"
    );
    let after = observe(&cluster).await;
    assert_eq!(
        before, after,
        "the fuzz run without credentials changed something"
    );

    // The safe operations with the credentials: still only documented answers, still no change.
    let auth = format!("{USER}:{PASSWORD}");
    let run = run_schemathesis(
        dir.path(),
        "credentials, safe methods",
        &document_url,
        &[
            "--auth",
            auth.as_str(),
            "--include-method-regex",
            "^(GET|HEAD|OPTIONS)$",
            // The coverage phase probes other methods on the same paths (TRACE, but possibly
            // PATCH /config): with credentials only the selected methods may be sent.
            "--phases",
            "examples,fuzzing",
        ],
        AUTHENTICATED_EXAMPLES,
        AUTHENTICATED_SECONDS,
    )
    .await;
    assert!(!run.exchanges.is_empty());
    for e in &run.exchanges {
        assert!(
            matches!(e.method.as_str(), "GET" | "HEAD" | "OPTIONS"),
            "a request other than GET, HEAD or OPTIONS in the safe run: {e:?}"
        );
        assert!(
            e.status < 500 || allowed_server_error(e, &health_paths, &documented),
            "{} from {} {}",
            e.status,
            e.method,
            e.path
        );
    }
    assert_eq!(member.agent_pid(), Some(agent_pid));
    assert!(member.is_primary().await);
    assert_eq!(observe(&cluster).await, before);
    // A handler that panicked would have cost only its connection: look for it in the log.
    let log = member.log_contents();
    assert!(
        !log.contains("panicked"),
        "the agent log reports a panic:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
