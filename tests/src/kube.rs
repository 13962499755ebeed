//! Fixture: the Kubernetes API test server (`regent-kube-apiserver`, see `kube_api`) as a child
//! process on 127.0.0.1, with helpers to seed and inspect objects, read request counts and
//! inject faults. Killed on drop.
//!
//! The fixture's own requests carry the bearer token [`FIXTURE_TOKEN`], so they are counted
//! apart from the members' requests (and are never refused by RBAC rules).
//!
//! Plain HTTP by default. [`KubeApiServer::launch_tls`] serves HTTPS with a certificate for
//! 127.0.0.1/localhost signed by a CA made for that server (test-pki); kubeconfigs
//! then carry the CA as `certificate-authority-data`. [`KubeApiServer::enforce_rbac`] (or
//! [`KubeApiServerBuilder::rbac_file`]) makes the server enforce the Roles of a YAML file such
//! as kubernetes/rbac.yaml for every other token.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::ports::free_port;
use crate::process::TestDir;
use crate::server::ServerProcess;

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

/// Certificates of an HTTPS test server.
#[derive(Debug, Clone)]
struct TlsFiles {
    ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl TlsFiles {
    fn create(dir: &Path) -> TlsFiles {
        let ca = test_pki::Ca::new("ca");
        let subject = test_pki::Subject::CommonName("127.0.0.1");
        let names = ["127.0.0.1", "localhost"];
        let (server_cert, server_key) =
            ca.issue_to(dir, "server", subject, &names, test_pki::Usage::Server);
        TlsFiles {
            ca_cert: ca.write(dir, "ca"),
            server_cert,
            server_key,
        }
    }
}

/// `kubectl` against a test server, with its own kubeconfig and a discovery cache in the server's
/// directory.
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
    timeout: Duration,
}

impl Kubectl {
    /// As the user with bearer token `token` (a kubeconfig written for it).
    pub fn new(bin: PathBuf, server: &KubeApiServer, token: &str) -> Kubectl {
        Kubectl::with_kubeconfig(bin, server, server.kubeconfig(token))
    }

    pub fn with_kubeconfig(bin: PathBuf, server: &KubeApiServer, kubeconfig: PathBuf) -> Kubectl {
        Kubectl {
            bin,
            kubeconfig,
            cache_dir: server.dir().join("kubectl-cache"),
            timeout: Duration::from_secs(30),
        }
    }

    /// How long one command may take (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Kubectl {
        self.timeout = timeout;
        self
    }

    /// `kubectl args...` with this kubeconfig and cache, not yet started.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .kill_on_drop(true);
        cmd
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        match tokio::time::timeout(self.timeout, cmd.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => panic!("run kubectl {args:?}: {e}"),
            Err(_) => panic!("kubectl {args:?} did not finish within {:?}", self.timeout),
        }
    }

    /// Run and require success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Run and require failure; returns stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            !output.status.success(),
            "kubectl {args:?} should fail but printed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Run with `-o json` and require success; returns the parsed output.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let out = self.ok(&full).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}: {out}"))
    }
}

/// Options of a test server: `KubeApiServer::builder().tls().rbac_file(..).launch().await`.
#[derive(Debug, Default, Clone)]
pub struct KubeApiServerBuilder {
    args: Vec<String>,
    tls: bool,
}

impl KubeApiServerBuilder {
    /// Extra command-line arguments (e.g. `["--watch-window", "5"]`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Serve HTTPS (certificates made per server, see test-pki).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Enforce the Roles named `roles` (all if empty) of the YAML file `path` from the start
    /// (also after a restart), for every token but the fixture's, the harness's and
    /// `admin_tokens`.
    pub fn rbac_file(mut self, path: &Path, roles: &[&str], admin_tokens: &[&str]) -> Self {
        self.args.push("--rbac".into());
        self.args.push(path.display().to_string());
        for role in roles {
            self.args.push("--rbac-role".into());
            self.args.push(role.to_string());
        }
        for token in admin_tokens {
            self.args.push("--admin-token".into());
            self.args.push(token.to_string());
        }
        self
    }

    pub async fn launch(self) -> KubeApiServer {
        let dir = TestDir::new("kube-api");
        let tls = self.tls.then(|| TlsFiles::create(dir.path()));
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5));
        if let Some(files) = &tls {
            let pem = std::fs::read(&files.ca_cert)
                .unwrap_or_else(|e| panic!("read {}: {e}", files.ca_cert.display()));
            let ca = reqwest::Certificate::from_pem(&pem)
                .unwrap_or_else(|e| panic!("CA {}: {e}", files.ca_cert.display()));
            http = http
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca);
        }
        let http = http
            .build()
            .unwrap_or_else(|e| panic!("build HTTP client: {e}"));
        let log = dir.path().join("kube-apiserver.log");
        let server = KubeApiServer {
            process: ServerProcess::new("regent-kube-apiserver", log),
            dir,
            port: free_port(),
            extra_args: self.args,
            tls,
            rbac: Mutex::new(None),
            http,
        };
        server.start().await;
        server
    }
}

/// The test API server process; state lives in its memory only.
pub struct KubeApiServer {
    // Declared before `dir`: the process is killed before its directory is removed.
    process: ServerProcess,
    dir: TestDir,
    port: u16,
    extra_args: Vec<String>,
    tls: Option<TlsFiles>,
    /// The body of the last `enforce_rbac`, applied again after a restart.
    rbac: Mutex<Option<Value>>,
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
        KubeApiServer::builder().args(args).launch().await
    }

    /// A fresh server speaking HTTPS only, with a certificate for 127.0.0.1 and localhost
    /// signed by its own CA ([`ca_cert_path`](Self::ca_cert_path)).
    pub async fn launch_tls() -> KubeApiServer {
        KubeApiServer::builder().tls().launch().await
    }

    /// Every launch option: HTTPS, RBAC rules, extra arguments.
    pub fn builder() -> KubeApiServerBuilder {
        KubeApiServerBuilder::default()
    }

    /// `http://127.0.0.1:PORT`, or `https://` when serving TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Whether the server speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The CA certificate (PEM file) that signed the server's certificate, when serving TLS.
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.ca_cert.clone())
    }

    /// The CA certificate's PEM text, when serving TLS.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_cert_path().map(|path| {
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its stdout/stderr: the listening line and one line per request.
    pub fn log_path(&self) -> PathBuf {
        self.process.log_path().to_path_buf()
    }

    /// Directory holding the log (and kubeconfigs written with `kubeconfig`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<i32> {
        self.process.pid()
    }

    /// Start the server (again, after `stop`) on the same port; it starts empty.
    pub async fn start(&self) {
        let mut command = Command::new(kube_apiserver_bin());
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port));
        if let Some(tls) = &self.tls {
            command
                .arg("--tls-cert")
                .arg(&tls.server_cert)
                .arg("--tls-key")
                .arg(&tls.server_key);
        }
        self.process.spawn(command.args(&self.extra_args));
        let probe = || async {
            let url = format!("{}/healthz", self.url());
            match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("GET {url} answered {}", r.status())),
                Err(e) => Err(format!("GET {url}: {e}")),
            }
        };
        let interval = Duration::from_millis(20);
        self.process
            .wait_ready(Self::STARTUP_DEADLINE, interval, 20, probe)
            .await;
        let rbac = self.rbac.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(body) = rbac {
            self.post_rbac(&body).await;
        }
    }

    /// Kill the server (SIGKILL): every connection breaks and all state is lost.
    pub fn stop(&self) {
        self.process.stop();
    }

    /// Freeze the server (SIGSTOP): connections hang until `resume`.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// Undo `pause` (SIGCONT).
    pub fn resume(&self) {
        self.process.resume();
    }

    /// Write a kubeconfig at `path` whose context and current-context are both `kind-kind`,
    /// pointing at this server with bearer token `token` (the name requests are counted under).
    /// Over TLS it carries the server's CA as `certificate-authority-data`.
    /// Readable by everyone, so members running as the postgres user can read it.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> PathBuf {
        let ca = self.ca_pem();
        self.write_kubeconfig_with_ca(path, token, ca.as_deref())
    }

    /// `write_kubeconfig` with the given CA certificate (PEM text) as
    /// `certificate-authority-data` (`None`: none), e.g. one that did not sign the server's
    /// certificate.
    pub fn write_kubeconfig_with_ca(
        &self,
        path: &Path,
        token: &str,
        ca_pem: Option<&str>,
    ) -> PathBuf {
        use base64::Engine as _;
        let mut cluster = json!({"server": self.url()});
        if let Some(pem) = ca_pem {
            cluster["certificate-authority-data"] =
                json!(base64::engine::general_purpose::STANDARD.encode(pem));
        }
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kind-kind", "cluster": cluster}],
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

    /// Enforce the Roles named `roles` (all if empty) of `yaml` (a multi-document text such as
    /// kubernetes/rbac.yaml) for every client token except the fixture's, the cluster harness's
    /// and `admin_tokens`: refused requests get the real server's 403 Status and are listed by
    /// [`denied_requests`](Self::denied_requests). Every Role is bound to every other token;
    /// RoleBindings are ignored. Replaces earlier rules; kept across `stop`/`start`.
    pub async fn enforce_rbac(&self, yaml: &str, roles: &[&str], admin_tokens: &[&str]) {
        let body = json!({
            "yaml": yaml,
            "roles": roles,
            "admin_tokens": admin_tokens,
        });
        self.post_rbac(&body).await;
        *self.rbac.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
    }

    async fn post_rbac(&self, body: &Value) {
        self.request_ok(
            reqwest::Method::POST,
            "/_test/rbac",
            "application/json",
            Some(body),
        )
        .await
        .unwrap_or_else(|e| panic!("set RBAC rules: {e:#}"));
    }

    /// Stop enforcing RBAC rules set with `enforce_rbac` (rules given at launch stay off until
    /// the next restart).
    pub async fn allow_all(&self) {
        *self.rbac.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.request_ok(reqwest::Method::DELETE, "/_test/rbac", "", None)
            .await
            .unwrap_or_else(|e| panic!("remove RBAC rules: {e:#}"));
    }

    /// Requests refused by the RBAC rules so far, oldest first: `{client, verb, resource,
    /// namespace, name, message}`.
    pub async fn denied_requests(&self) -> Vec<Value> {
        let value = self
            .request_ok(reqwest::Method::GET, "/_test/denied", "", None)
            .await
            .unwrap_or_else(|e| panic!("read denied requests: {e:#}"));
        value.as_array().cloned().unwrap_or_default()
    }

    pub async fn reset_denied_requests(&self) {
        self.request_ok(reqwest::Method::DELETE, "/_test/denied", "", None)
            .await
            .unwrap_or_else(|e| panic!("reset denied requests: {e:#}"));
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
