//! Fixture: the Kubernetes API test server (`regent-kube-apiserver`, see `kube_api`) as a child
//! process on 127.0.0.1, with helpers to seed and inspect objects, read request counts and
//! inject faults. Killed on drop.
//!
//! The fixture's own requests carry the bearer token [`FIXTURE_TOKEN`], so they are counted
//! apart from the members' requests.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::ports::free_port;
use crate::process::{signal_all, tail_file, TestDir};

/// Bearer token of the fixture's own requests.
pub const FIXTURE_TOKEN: &str = "regent-test-fixture";

/// The server binary: `$REGENT_KUBE_APISERVER_BIN`, else next to the running test executable's
/// target directory (`target/debug/regent-kube-apiserver`, which cargo builds for the tests of
/// this package), else `<workspace>/target/debug/regent-kube-apiserver`.
pub fn kube_apiserver_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("REGENT_KUBE_APISERVER_BIN") {
        return PathBuf::from(path);
    }
    const NAME: &str = "regent-kube-apiserver";
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/deps/<test>-<hash> → target/debug/regent-kube-apiserver
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(NAME));
        }
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target/debug")
            .join(NAME),
    );
    for candidate in &candidates {
        if candidate.is_file() {
            return candidate.clone();
        }
    }
    panic!(
        "{NAME} not found (looked at {candidates:?}): build it with `cargo build -p regent-tests \
         --bin {NAME}` or set REGENT_KUBE_APISERVER_BIN"
    );
}

/// Path of a resource's collection: `/api/v1[/namespaces/NS]/RESOURCE` (or `/apis/GROUP/V1/...`).
fn collection_path(resource: &str, namespace: &str) -> String {
    let prefix = match resource {
        "leases" => "/apis/coordination.k8s.io/v1",
        _ => "/api/v1",
    };
    if namespace.is_empty() {
        format!("{prefix}/{resource}")
    } else {
        format!("{prefix}/namespaces/{namespace}/{resource}")
    }
}

/// The test API server process; state lives in its memory only.
pub struct KubeApiServer {
    dir: TestDir,
    port: u16,
    extra_args: Vec<String>,
    child: Mutex<Option<Child>>,
    paused: Mutex<bool>,
    http: reqwest::Client,
}

impl KubeApiServer {
    /// How long `launch`/`start` wait for the server to answer.
    pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

    /// Start a fresh server and wait until it serves requests.
    pub async fn launch() -> KubeApiServer {
        KubeApiServer::launch_with_args(&[]).await
    }

    /// Like `launch`, passing extra command-line arguments (e.g. `["--watch-window", "5"]`).
    pub async fn launch_with_args(args: &[&str]) -> KubeApiServer {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|e| panic!("build HTTP client: {e}"));
        let server = KubeApiServer {
            dir: TestDir::new("kube-api"),
            port: free_port(),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            child: Mutex::new(None),
            paused: Mutex::new(false),
            http,
        };
        server.start().await;
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its stdout/stderr: the listening line and one line per request.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("kube-apiserver.log")
    }

    /// Directory holding the log (and kubeconfigs written with `kubeconfig`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<i32> {
        let guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|c| c.id() as i32)
    }

    /// Start the server (again, after `stop`) on the same port; it starts empty.
    pub async fn start(&self) {
        {
            let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(child) = guard.as_mut() {
                if matches!(child.try_wait(), Ok(None)) {
                    panic!("the API server is already running (pid {})", child.id());
                }
            }
            let mut log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path().display()));
            let _ = writeln!(log, "=== starting regent-kube-apiserver ===");
            let log_err = log
                .try_clone()
                .unwrap_or_else(|e| panic!("clone log handle: {e}"));
            let bin = kube_apiserver_bin();
            let child = Command::new(&bin)
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .args(&self.extra_args)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            *guard = Some(child);
            *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = false;
        }
        let started = Instant::now();
        loop {
            let healthy = self
                .http
                .get(format!("{}/healthz", self.url()))
                .send()
                .await
                .map(|r| r.status().is_success());
            if let Ok(true) = healthy {
                return;
            }
            if let Some(status) = self.try_wait_exit() {
                panic!(
                    "regent-kube-apiserver exited during startup with {status}; log tail:\n{}",
                    tail_file(&self.log_path(), 20)
                );
            }
            if started.elapsed() > Self::STARTUP_DEADLINE {
                panic!(
                    "regent-kube-apiserver did not answer within {:?}; log tail:\n{}",
                    Self::STARTUP_DEADLINE,
                    tail_file(&self.log_path(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn try_wait_exit(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kill the server (SIGKILL): every connection breaks and all state is lost.
    pub fn stop(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = guard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }

    /// Freeze the server (SIGSTOP): connections hang until `resume`.
    pub fn pause(&self) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("cannot pause the API server: it is not running"));
        signal_all(&[pid], Signal::SIGSTOP);
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Undo `pause` (SIGCONT).
    pub fn resume(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        if *paused {
            if let Some(pid) = self.pid() {
                signal_all(&[pid], Signal::SIGCONT);
            }
            *paused = false;
        }
    }

    /// Write a kubeconfig at `path` whose context and current-context are both `kind-kind`,
    /// pointing at this server with bearer token `token` (the name requests are counted under).
    /// Readable by everyone, so members running as the postgres user can read it.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> PathBuf {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kind-kind", "cluster": {"server": self.url()}}],
            "users": [{"name": "kind-kind", "user": {"token": token}}],
            "contexts": [{"name": "kind-kind", "context": {
                "cluster": "kind-kind", "user": "kind-kind", "namespace": "default"
            }}],
            "current-context": "kind-kind",
            "preferences": {},
        });
        let text = serde_yaml_ng::to_string(&config)
            .unwrap_or_else(|e| panic!("kubeconfig is not YAML-serialisable: {e}"));
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("write kubeconfig {}: {e}", path.display()));
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        path.to_path_buf()
    }

    /// `write_kubeconfig` into the fixture's directory as `kubeconfig-<token>`.
    pub fn kubeconfig(&self, token: &str) -> PathBuf {
        self.write_kubeconfig(&self.dir().join(format!("kubeconfig-{token}")), token)
    }

    /// One API request as the fixture; returns the status and the JSON body (`Null` if none).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.url());
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(FIXTURE_TOKEN);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(serde_json::to_vec(body)?);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .with_context(|| format!("read body of {method} {url}"))?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    async fn request_ok(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, value) = self
            .request(method.clone(), path, content_type, body)
            .await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {value}");
        }
        Ok(value)
    }

    /// Create a Pod that looks scheduled and running: labels as given, phase Running and
    /// `status.podIP` = `pod_ip` (must not be loopback if it is to appear in Endpoints).
    /// Returns the Pod as stored.
    pub async fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        pod_ip: &str,
    ) -> Value {
        let pods = collection_path("pods", namespace);
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "postgres", "image": "postgres:15"}]},
        });
        self.request_ok(reqwest::Method::POST, &pods, "application/json", Some(&pod))
            .await
            .unwrap_or_else(|e| panic!("create pod {namespace}/{name}: {e:#}"));
        let status = json!({"status": {
            "phase": "Running",
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "hostIP": pod_ip,
            "startTime": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "conditions": [{"type": "Ready", "status": "True"}],
        }});
        self.request_ok(
            reqwest::Method::PATCH,
            &format!("{pods}/{name}/status"),
            "application/merge-patch+json",
            Some(&status),
        )
        .await
        .unwrap_or_else(|e| panic!("patch status of pod {namespace}/{name}: {e:#}"))
    }

    /// The object, `None` if it does not exist (panics on other errors). `resource` is the
    /// plural (`configmaps`, `pods`, `endpoints`, `services`, `leases`, `namespaces` with an
    /// empty namespace).
    pub async fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let path = format!("{}/{name}", collection_path(resource, namespace));
        let (status, value) = self
            .request(reqwest::Method::GET, &path, "", None)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
        match status {
            200 => Some(value),
            404 => None,
            _ => panic!("GET {path} answered {status}: {value}"),
        }
    }

    /// Objects of `resource` in `namespace` matching `label_selector` ("" for all).
    pub async fn list(&self, resource: &str, namespace: &str, label_selector: &str) -> Vec<Value> {
        let mut path = collection_path(resource, namespace);
        if !label_selector.is_empty() {
            path = format!("{path}?labelSelector={}", encode_query(label_selector));
        }
        let value = self
            .request_ok(reqwest::Method::GET, &path, "", None)
            .await
            .unwrap_or_else(|e| panic!("LIST {path}: {e:#}"));
        value["items"].as_array().cloned().unwrap_or_default()
    }

    /// Requests so far: client (bearer token or "anonymous") → "<verb> <resource>" → count,
    /// e.g. `counts["member-0"]["patch configmaps"]`.
    pub async fn request_counts(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let value = self
            .request_ok(reqwest::Method::GET, "/_test/requests", "", None)
            .await
            .unwrap_or_else(|e| panic!("read request counts: {e:#}"));
        serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("request counts {value}: {e}"))
    }

    pub async fn reset_request_counts(&self) {
        self.request_ok(reqwest::Method::DELETE, "/_test/requests", "", None)
            .await
            .unwrap_or_else(|e| panic!("reset request counts: {e:#}"));
    }

    /// Inject faults (see `POST /_test/faults`): `{"stall_ms": N}`, `{"fail": {"status": 500,
    /// "retry_after": 1, "count": 2, "verb": "patch", "resource": "configmaps", "client":
    /// "member-0", "name": "x"}}`, `{"drop_watches": true}`.
    pub async fn inject(&self, fault: Value) {
        self.request_ok(
            reqwest::Method::POST,
            "/_test/faults",
            "application/json",
            Some(&fault),
        )
        .await
        .unwrap_or_else(|e| panic!("inject fault {fault}: {e:#}"));
    }

    /// Remove every injected fault (stalled requests are released).
    pub async fn clear_faults(&self) {
        self.request_ok(reqwest::Method::DELETE, "/_test/faults", "", None)
            .await
            .unwrap_or_else(|e| panic!("clear faults: {e:#}"));
    }

    /// Forget the watch event window: watches from any earlier resourceVersion get 410 Gone.
    /// Returns the current resourceVersion.
    pub async fn compact(&self) -> u64 {
        let value = self
            .request_ok(reqwest::Method::POST, "/_test/compact", "", None)
            .await
            .unwrap_or_else(|e| panic!("compact: {e:#}"));
        value["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("compact answered {value}"))
    }
}

/// Percent-encode a query value.
pub fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- kube-apiserver log tail ({}) -----\n{}",
                self.log_path().display(),
                tail_file(&self.log_path(), 15)
            );
        }
        self.stop();
    }
}
