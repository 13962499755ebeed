//! A real single-node etcd (v3, JSON gateway) on 127.0.0.1 for one test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use crate::ports::free_port;
use crate::process::TestDir;
use crate::server::ServerProcess;

/// Path of the etcd server binary: `$ETCD_BIN`, else `/usr/bin/etcd`.
pub fn etcd_bin() -> PathBuf {
    let path = std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    if !path.exists() {
        panic!(
            "etcd server binary not found at {} (install it with `apt-get install -y etcd-server`, \
             or set ETCD_BIN)",
            path.display()
        );
    }
    path
}

/// One key as read through the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// Lease id (0 when the key has no lease).
    pub lease: i64,
    pub mod_revision: i64,
}

/// A single-node etcd with its own data directory and ports; killed on drop.
///
/// The process can be stopped and started again on the same data directory and ports, and
/// frozen with SIGSTOP (`pause`) to simulate an unreachable DCS without losing its state.
pub struct Etcd {
    // Declared before `dir`: the process is killed before its directory is removed.
    process: ServerProcess,
    dir: TestDir,
    client_port: u16,
    peer_port: u16,
    http: reqwest::Client,
}

impl Etcd {
    /// How long `launch`/`start` wait for the server to answer.
    pub const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

    /// Start a fresh etcd and wait until it serves requests.
    pub async fn launch() -> Etcd {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_else(|e| panic!("build HTTP client: {e}"));
        let dir = TestDir::new("etcd");
        let etcd = Etcd {
            process: ServerProcess::new("etcd", dir.path().join("etcd.log")),
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            http,
        };
        etcd.start().await;
        etcd
    }

    /// `host:port` of the client endpoint, as written into `etcd3.hosts`.
    pub fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn log_path(&self) -> PathBuf {
        self.process.log_path().to_path_buf()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Process id of the running server, if any.
    pub fn pid(&self) -> Option<i32> {
        self.process.pid()
    }

    /// Start the server (again) on the same data directory and ports; waits until it is healthy.
    pub async fn start(&self) {
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let client_url = self.client_url();
        self.process.spawn(
            Command::new(etcd_bin())
                .arg("--name=regent-test")
                .arg(format!("--data-dir={}", self.data_dir().display()))
                .arg(format!("--listen-client-urls={client_url}"))
                .arg(format!("--advertise-client-urls={client_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=regent-test={peer_url}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=regent-test")
                .arg("--heartbeat-interval=100")
                .arg("--election-timeout=500")
                .env_remove("ETCDCTL_API"),
        );
        let probe = || async {
            let answer = self.range_raw("health-probe", None).await;
            answer.map(drop).map_err(|e| format!("{e:#}"))
        };
        let interval = Duration::from_millis(50);
        self.process
            .wait_ready(Self::STARTUP_DEADLINE, interval, 40, probe)
            .await;
    }

    /// Kill the server with SIGKILL and reap it. Data directory and ports are kept for `start`.
    pub fn stop(&self) {
        self.process.stop();
    }

    /// Stop the server with SIGTERM, waiting up to `deadline` before falling back to SIGKILL.
    pub async fn stop_graceful(&self, deadline: Duration) {
        self.process.stop_graceful(deadline).await;
    }

    /// Freeze the server (SIGSTOP): connections hang, leases do not expire until `resume`.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// Undo `pause` (SIGCONT).
    pub fn resume(&self) {
        self.process.resume();
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}{path}", self.client_url());
        let response = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("read body of POST {url}"))?;
        if !status.is_success() {
            bail!("POST {url} answered {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {url}: body is not JSON: {text}"))
    }

    async fn range_raw(&self, key: &str, range_end: Option<Vec<u8>>) -> Result<Vec<KeyValue>> {
        let mut body = json!({ "key": B64.encode(key) });
        if let Some(end) = range_end {
            body["range_end"] = json!(B64.encode(end));
        }
        let reply = self.post("/v3/kv/range", body).await?;
        let Some(kvs) = reply.get("kvs").and_then(Value::as_array) else {
            return Ok(Vec::new());
        };
        kvs.iter().map(decode_kv).collect()
    }

    /// The key's value, `None` if absent.
    pub async fn try_get(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .range_raw(key, None)
            .await?
            .into_iter()
            .next()
            .map(|kv| kv.value))
    }

    /// The key's value, `None` if absent; panics if etcd cannot be read.
    pub async fn get(&self, key: &str) -> Option<String> {
        self.try_get(key)
            .await
            .unwrap_or_else(|e| panic!("etcd get {key}: {e:#}"))
    }

    /// The key with its lease and revision, `None` if absent.
    pub async fn try_get_kv(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.range_raw(key, None).await?.into_iter().next())
    }

    /// All keys starting with `prefix`, sorted by key.
    pub async fn try_get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.range_raw(prefix, Some(prefix_range_end(prefix.as_bytes())))
            .await
    }

    /// All `(key, value)` pairs starting with `prefix`; panics if etcd cannot be read.
    pub async fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.try_get_prefix(prefix)
            .await
            .unwrap_or_else(|e| panic!("etcd get prefix {prefix}: {e:#}"))
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect()
    }

    /// Write a key (no lease).
    pub async fn put(&self, key: &str, value: &str) -> Result<()> {
        self.post(
            "/v3/kv/put",
            json!({ "key": B64.encode(key), "value": B64.encode(value) }),
        )
        .await
        .map(|_| ())
    }

    /// Grant a lease of `ttl` seconds; returns its id.
    pub async fn grant_lease(&self, ttl: u64) -> Result<i64> {
        let reply = self
            .post("/v3/lease/grant", json!({ "TTL": ttl.to_string() }))
            .await?;
        int_field(&reply, "ID").ok_or_else(|| anyhow!("lease/grant reply without ID: {reply}"))
    }

    /// Write a key attached to `lease`.
    pub async fn put_with_lease(&self, key: &str, value: &str, lease: i64) -> Result<()> {
        self.post(
            "/v3/kv/put",
            json!({
                "key": B64.encode(key),
                "value": B64.encode(value),
                "lease": lease.to_string(),
            }),
        )
        .await
        .map(|_| ())
    }

    /// Delete every key starting with `prefix`; returns how many were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let reply = self
            .post(
                "/v3/kv/deleterange",
                json!({
                    "key": B64.encode(prefix),
                    "range_end": B64.encode(prefix_range_end(prefix.as_bytes())),
                }),
            )
            .await?;
        Ok(int_field(&reply, "deleted").unwrap_or(0) as u64)
    }

    /// Time left on the lease attached to `key`: `None` if the key is absent or has no lease.
    /// etcd reports whole seconds (rounded down), so the true remainder is below `value + 1 s`.
    pub async fn lease_remaining(&self, key: &str) -> Result<Option<Duration>> {
        let Some(kv) = self.try_get_kv(key).await? else {
            return Ok(None);
        };
        if kv.lease == 0 {
            return Ok(None);
        }
        let reply = self
            .post(
                "/v3/lease/timetolive",
                json!({ "ID": kv.lease.to_string() }),
            )
            .await?;
        let ttl = int_field(&reply, "TTL")
            .ok_or_else(|| anyhow!("lease/timetolive reply without TTL: {reply}"))?;
        Ok((ttl >= 0).then(|| Duration::from_secs(ttl as u64)))
    }

    /// Directory holding the data dir and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The gateway encodes int64 as JSON strings; accept numbers too.
fn int_field(v: &Value, field: &str) -> Option<i64> {
    match v.get(field)? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn decode_b64_text(v: &Value, field: &str) -> Result<String> {
    let Some(encoded) = v.get(field).and_then(Value::as_str) else {
        // The gateway omits empty values.
        return Ok(String::new());
    };
    let bytes = B64
        .decode(encoded)
        .with_context(|| format!("{field} is not base64: {encoded}"))?;
    String::from_utf8(bytes).with_context(|| format!("{field} is not UTF-8"))
}

fn decode_kv(kv: &Value) -> Result<KeyValue> {
    Ok(KeyValue {
        key: decode_b64_text(kv, "key")?,
        value: decode_b64_text(kv, "value")?,
        lease: int_field(kv, "lease").unwrap_or(0),
        mod_revision: int_field(kv, "mod_revision").unwrap_or(0),
    })
}

/// etcd's prefix range end: the prefix with its last byte incremented (trailing 0xff dropped).
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or empty prefix): "\0" means "to the end of the key space".
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_range_end;

    #[test]
    fn range_end_increments_last_byte() {
        assert_eq!(prefix_range_end(b"/service/a/"), b"/service/a0".to_vec());
        assert_eq!(prefix_range_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_range_end(b""), vec![0]);
    }
}
