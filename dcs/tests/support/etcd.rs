//! A throw-away single-node etcd on free 127.0.0.1 ports, killed and its directory removed on
//! drop.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dcs::etcd::Etcd3;
use dcs::Dcs;
use serde_json::{json, Value};

const ETCD_BIN: &str = "/usr/bin/etcd";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free port on 127.0.0.1")
}

pub struct EtcdServer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    /// Client URL: `http://127.0.0.1:PORT` or `https://...`.
    url: String,
    peer: String,
    extra_args: Vec<OsString>,
    /// Health checks and raw requests go through it (over TLS: trusting the server, with a
    /// client certificate).
    http: reqwest::Client,
}

impl EtcdServer {
    /// Start etcd serving clients with `scheme` (`http` or `https`), with `extra_args` (TLS
    /// files ...), and wait until `http` finds it healthy.
    pub async fn start(scheme: &str, extra_args: Vec<OsString>, http: reqwest::Client) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        assert!(
            Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} is missing: install etcd 3.4+ (Debian package `etcd-server`) to run these tests"
        );
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("dcs-etcd-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create etcd test dir");
        let port = free_port();
        let mut server = EtcdServer {
            child: None,
            dir,
            port,
            url: format!("{scheme}://127.0.0.1:{port}"),
            peer: format!("http://127.0.0.1:{}", free_port()),
            extra_args,
            http,
        };
        server.spawn();
        server.wait_healthy().await;
        server
    }

    /// A plain-HTTP etcd.
    pub async fn start_plain() -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client");
        EtcdServer::start("http", Vec::new(), http).await
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("open etcd log");
        let (url, peer) = (&self.url, &self.peer);
        let child = Command::new(ETCD_BIN)
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", url, "--advertise-client-urls", url])
            .args([
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    /// Kill and start again on the same ports and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_healthy().await;
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("etcd exited with {status}: {}", self.log_tail());
            }
            let health = (self.http)
                .get(format!("{}/health", self.url))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            if let Ok(resp) = health {
                let body = resp.json::<Value>().await.unwrap_or_default();
                if body["health"].as_str() == Some("true") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy at {}: {}",
                self.url,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last 20 lines of etcd's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kill etcd (SIGKILL) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Process id of the running etcd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd running").id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client URL, as written into `etcd3.hosts`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Turn authentication on with the user `root` (role `root`) and `password`.
    pub async fn enable_auth(&self, password: &str) {
        let user = json!({"name": "root", "password": password});
        self.raw_post("/v3/auth/user/add", user, None).await;
        let grant = json!({"user": "root", "role": "root"});
        self.raw_post("/v3/auth/user/grant", grant, None).await;
        self.raw_post("/v3/auth/enable", json!({}), None).await;
    }

    /// POST to the gateway (as another tool would), asserting success; returns the answer.
    pub async fn raw_post(&self, path: &str, body: Value, token: Option<&str>) -> Value {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(t) = token {
            req = req.header("Authorization", t);
        }
        let resp = req.send().await.expect("raw etcd request");
        assert!(resp.status().is_success(), "{path}: HTTP {}", resp.status());
        resp.json().await.expect("raw answer is JSON")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `watcher`'s watch wakes within 2 s when `acquirer` takes the free leader lock during it.
pub async fn assert_acquisition_wakes(acquirer: &Etcd3, watcher: &Etcd3) {
    let started = Instant::now();
    let (woke, acquired) = tokio::join!(watcher.watch(Duration::from_secs(5)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        acquirer.attempt_to_acquire_leader().await
    });
    assert!(acquired.expect("acquire"));
    assert!(woke, "watch must wake on the leader key");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "wake too slow: {:?}",
        started.elapsed()
    );
}

/// `a` and `b` try to take the free leader lock at once: exactly one wins. Returns the winner,
/// the loser and the winner's name.
pub async fn race<'a>(
    a: &'a Etcd3,
    b: &'a Etcd3,
    round: impl std::fmt::Display,
) -> (&'a Etcd3, &'a Etcd3, &'static str) {
    let (ra, rb) = tokio::join!(a.attempt_to_acquire_leader(), b.attempt_to_acquire_leader());
    let (ra, rb) = (ra.expect("a acquire"), rb.expect("b acquire"));
    assert!(
        ra ^ rb,
        "round {round}: exactly one must win (a={ra}, b={rb})"
    );
    if ra {
        (a, b, "a")
    } else {
        (b, a, "b")
    }
}
