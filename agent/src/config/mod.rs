//! Configuration: Patroni's YAML keys and `PATRONI_*` environment variables (docs/configuration.md).
//!
//! Loading order (as Patroni): a config file or directory (`*.yml`/`*.yaml` merged alphabetically)
//! with `PATRONI_*` variables applied on top; without a path, the whole YAML from
//! `PATRONI_CONFIGURATION` (other variables then ignored) or else the variables alone.
//!
//! The text is parsed into a JSON tree first (YAML syntax errors carry line and column), the
//! environment overlay is merged into that tree, and only then is it deserialized into typed
//! structs, so that a wrong type names its dotted key (`restapi.listen: invalid type: ...`).
//! Unknown keys are ignored: Patroni files carry many settings Regent has no use for.
//!
//! Dynamic settings (`ttl`, `loop_wait`, `postgresql.use_slots`, ...) live in the DCS; see
//! [`DynamicConfig`].

// The structs mirror Patroni's full key set; not every key has a consumer yet.
#![allow(dead_code)]

mod dynamic;
mod env;
mod http;
mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

pub use dynamic::DynamicConfig;
pub use http::member_client;
#[cfg(test)]
use http::member_client_builder;
pub(crate) use value::parse_bool_str;
pub use value::split_host_port;

use value::{
    de_bool, de_opt_bool, de_opt_port, de_string_list, de_string_map, de_tool_flags, de_u64,
    flag_option, join_host_port, patch, show, strip_nulls, u64_of,
};

pub const DEFAULT_NAMESPACE: &str = "/service";
/// Where Debian installs the PostgreSQL 15 binaries; used when `postgresql.bin_dir` is not set.
pub const DEFAULT_PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
const CONFIG_ENV_VAR: &str = "PATRONI_CONFIGURATION";
/// Other DCS sections Patroni understands; Regent refuses them rather than ignoring them.
const UNSUPPORTED_DCS: &[&str] = &["etcd", "zookeeper", "consul", "exhibitor", "raft"];
/// `initdb` options Regent sets itself.
const INITDB_RESERVED: &[&str] = &["pgdata", "nosync", "pwfile", "sync-only", "version"];
/// `pg_basebackup` options Regent sets itself (dropped with a warning, as Patroni does).
const BASEBACKUP_RESERVED: &[&str] = &[
    "pgdata",
    "format",
    "wal-method",
    "xlog-method",
    "gzip",
    "version",
    "dbname",
    "host",
    "port",
    "username",
    "password",
];
const LOG_LEVELS: &[&str] = &[
    "DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL",
];

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Debug)]
pub enum ConfigError {
    /// A file or directory could not be read.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// YAML that does not parse. `line`/`column` are 1-based; 0 when unknown.
    /// For `PATRONI_CONFIGURATION`, `path` is the variable name.
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    /// A value that is missing, has the wrong type or makes no sense. `key` is the dotted key
    /// path (or the environment variable / file it came from); empty for whole-config problems.
    Invalid { key: String, msg: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            msg: msg.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::Syntax {
                path,
                line,
                column,
                msg,
            } if *line > 0 => write!(
                f,
                "{}: YAML syntax error at line {line}, column {column}: {msg}",
                path.display()
            ),
            ConfigError::Syntax { path, msg, .. } => {
                write!(f, "{}: YAML error: {msg}", path.display())
            }
            ConfigError::Invalid { key, msg } if key.is_empty() => f.write_str(msg),
            ConfigError::Invalid { key, msg } => write!(f, "{key}: {msg}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The error text for the command line, to follow `regent: ` (main exits 2 after printing it).
pub fn render_errors_for_cli(e: &ConfigError) -> String {
    format!("invalid configuration: {e}")
}

// ---------------------------------------------------------------------------------------------
// Typed configuration

#[derive(Debug, Clone)]
pub struct Config {
    pub scope: String,
    pub name: String,
    /// Key prefix in etcd (default `/service`); unused with Kubernetes.
    pub namespace: String,
    pub log: LogConfig,
    pub restapi: RestApiConfig,
    pub ctl: CtlConfig,
    pub dcs: DcsConfig,
    pub bootstrap: BootstrapConfig,
    pub postgresql: PostgresqlConfig,
    pub tags: dcs::Tags,
    /// The watchdog device and the fence process (`crate::watchdog`).
    pub watchdog: crate::watchdog::WatchdogConfig,
    pub citus: Option<CitusConfig>,
    /// Things worth logging once logging is up (settings adjusted or ignored while loading).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogType {
    #[default]
    Plain,
    Json,
}

impl<'de> Deserialize<'de> for LogType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.to_ascii_lowercase().as_str() {
            "plain" => Ok(LogType::Plain),
            "json" => Ok(LogType::Json),
            _ => Err(D::Error::custom(format!(
                "invalid value '{s}', expected 'plain' or 'json'"
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogConfig {
    /// Python logging level name (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`).
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(rename = "type", default)]
    pub type_: LogType,
    /// Python `%(...)s` format string. The JSON-logger field-list form is not kept.
    #[serde(default, deserialize_with = "de_log_format")]
    pub format: Option<String>,
    #[serde(default)]
    pub dateformat: Option<String>,
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_string_map")]
    pub static_fields: BTreeMap<String, String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            type_: LogType::Plain,
            format: None,
            dateformat: None,
            dir: None,
            static_fields: BTreeMap::new(),
        }
    }
}

fn default_log_level() -> String {
    "INFO".to_string()
}

fn de_log_format<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(Some(s)),
        Value::Null | Value::Array(_) => Ok(None),
        other => Err(D::Error::custom(format!(
            "invalid value {}, expected a format string",
            show(&other)
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RestApiConfig {
    pub listen: String,
    pub connect_address: String,
    #[serde(default)]
    pub authentication: Option<BasicAuth>,
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    #[serde(default)]
    pub keyfile_password: Option<String>,
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    #[serde(default)]
    pub ciphers: Option<String>,
    /// `none`, `optional` or `required`.
    #[serde(default)]
    pub verify_client: Option<String>,
    #[serde(default, deserialize_with = "de_string_list")]
    pub allowlist: Vec<String>,
    #[serde(default, deserialize_with = "de_bool")]
    pub allowlist_include_members: bool,
    #[serde(default, deserialize_with = "de_string_map")]
    pub http_extra_headers: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "de_string_map")]
    pub https_extra_headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CtlConfig {
    #[serde(default)]
    pub authentication: Option<BasicAuth>,
    #[serde(default, deserialize_with = "de_bool")]
    pub insecure: bool,
    #[serde(default)]
    pub cacert: Option<PathBuf>,
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    #[serde(default)]
    pub keyfile_password: Option<String>,
}

/// The DCS backend: exactly one of the `etcd3` / `kubernetes` sections.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DcsConfig {
    Etcd3(Etcd3Config),
    Kubernetes(KubernetesConfig),
}

impl DcsConfig {
    /// Section name, as in the config file.
    pub fn kind(&self) -> &'static str {
        match self {
            DcsConfig::Etcd3(_) => "etcd3",
            DcsConfig::Kubernetes(_) => "kubernetes",
        }
    }
}

/// etcd v3 endpoints. `hosts` are normalised to `host:port` from any of Patroni's forms
/// (`host`, `hosts` as list or comma string, `url`, `proxy`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "Etcd3Raw")]
pub struct Etcd3Config {
    pub hosts: Vec<String>,
    /// `http` or `https`.
    pub protocol: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Etcd3Config {
    /// Endpoint URLs: `http://10.0.0.1:2379`.
    pub fn endpoints(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| format!("{}://{h}", self.protocol))
            .collect()
    }
}

#[derive(Debug, Default, Deserialize)]
struct Etcd3Raw {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    hosts: Option<Value>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default)]
    srv: Option<String>,
    #[serde(default)]
    discovery_srv: Option<String>,
    #[serde(default)]
    srv_domain: Option<String>,
    #[serde(default, deserialize_with = "de_opt_port")]
    port: Option<u16>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    cacert: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
}

impl TryFrom<Etcd3Raw> for Etcd3Config {
    type Error = String;
    fn try_from(raw: Etcd3Raw) -> Result<Self, String> {
        Etcd3Config::from_raw(raw).map_err(|(key, msg)| format!("{key}: {msg}"))
    }
}

/// Strip `scheme://` and any path; returns (scheme, userinfo, host[:port]).
fn split_url(url: &str) -> (Option<&str>, Option<&str>, &str) {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    match authority.rsplit_once('@') {
        Some((user, host)) => (scheme, Some(user), host),
        None => (scheme, None, authority),
    }
}

impl Etcd3Config {
    /// Errors are (sub-key, message).
    fn from_raw(raw: Etcd3Raw) -> Result<Etcd3Config, (String, String)> {
        let err = |k: &str, m: String| (k.to_string(), m);
        for (key, v) in [
            ("srv", &raw.srv),
            ("discovery_srv", &raw.discovery_srv),
            ("srv_domain", &raw.srv_domain),
        ] {
            if v.is_some() {
                return Err(err(
                    key,
                    "DNS SRV discovery is not supported; list the endpoints in etcd3.hosts".into(),
                ));
            }
        }
        let default_port = raw.port.unwrap_or(2379);
        let mut protocol = raw.protocol.clone();
        let mut username = raw.username.clone();
        let mut password = raw.password.clone();
        let mut hosts = Vec::new();

        let mut add = |key: &str,
                       item: &str,
                       protocol: &mut Option<String>|
         -> Result<(), (String, String)> {
            let (scheme, _, authority) = split_url(item.trim());
            if let Some(s) = scheme {
                protocol.get_or_insert_with(|| s.to_string());
            }
            let (hs, port) =
                split_host_port(authority, Some(default_port)).map_err(|m| err(key, m))?;
            if hs.is_empty() {
                return Err(err(key, format!("'{item}' has no host")));
            }
            hosts.extend(hs.iter().map(|h| join_host_port(h, port)));
            Ok(())
        };

        // A proxy is used as a single fixed endpoint (Patroni: `url` with `use_proxies`).
        if let Some(url) = raw.proxy.as_deref().or(raw.url.as_deref()) {
            let key = if raw.proxy.is_some() { "proxy" } else { "url" };
            let (scheme, userinfo, _) = split_url(url);
            if let Some(s) = scheme {
                protocol = Some(s.to_string());
            }
            if let Some(info) = userinfo {
                let (u, p) = info
                    .split_once(':')
                    .map(|(u, p)| (u, Some(p)))
                    .unwrap_or((info, None));
                username = Some(u.to_string());
                password = p.map(str::to_string).or(password);
            }
            add(key, url, &mut protocol)?;
        } else if let Some(v) = &raw.hosts {
            match v {
                Value::String(s) => {
                    for item in s.split(',').filter(|i| !i.trim().is_empty()) {
                        add("hosts", item, &mut protocol)?;
                    }
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        match item {
                            Value::String(s) => add(&format!("hosts[{i}]"), s, &mut protocol)?,
                            other => {
                                return Err(err(
                                    &format!("hosts[{i}]"),
                                    format!("expected host:port, got {}", show(other)),
                                ))
                            }
                        }
                    }
                }
                other => {
                    return Err(err(
                        "hosts",
                        format!(
                            "expected a list or a comma-separated string, got {}",
                            show(other)
                        ),
                    ))
                }
            }
        } else if let Some(h) = &raw.host {
            add("host", h, &mut protocol)?;
        }
        if hosts.is_empty() {
            return Err(err(
                "hosts",
                "no etcd endpoints: set etcd3.host, etcd3.hosts or etcd3.url".into(),
            ));
        }
        let protocol = protocol
            .unwrap_or_else(|| "http".to_string())
            .to_ascii_lowercase();
        if protocol != "http" && protocol != "https" {
            return Err(err(
                "protocol",
                format!("invalid value '{protocol}', expected 'http' or 'https'"),
            ));
        }
        Ok(Etcd3Config {
            hosts,
            protocol,
            username,
            password,
            cacert: raw.cacert,
            cert: raw.cert,
            key: raw.key,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct KubernetesConfig {
    /// Kubernetes namespace. A top-level `namespace` overrides it, as in Patroni.
    #[serde(default = "default_k8s_namespace")]
    pub namespace: String,
    #[serde(default, deserialize_with = "de_string_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "default_scope_label")]
    pub scope_label: String,
    #[serde(default = "default_role_label")]
    pub role_label: String,
    #[serde(default = "default_primary_label_value")]
    pub leader_label_value: String,
    #[serde(default = "default_replica_label_value")]
    pub follower_label_value: String,
    #[serde(default = "default_primary_label_value")]
    pub standby_leader_label_value: String,
    #[serde(default)]
    pub tmp_role_label: Option<String>,
    #[serde(default, deserialize_with = "de_bool")]
    pub use_endpoints: bool,
    #[serde(default)]
    pub pod_ip: Option<String>,
    /// Endpoint ports (`[{name, port, protocol}]`), default `[{port: 5432}]`.
    #[serde(default = "default_k8s_ports", deserialize_with = "de_k8s_ports")]
    pub ports: Vec<Value>,
    #[serde(default)]
    pub cacert: Option<PathBuf>,
    /// kubeconfig context when running outside a cluster (Patroni defaults to `kind-kind`).
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default, deserialize_with = "de_bool")]
    pub bypass_api_service: bool,
    #[serde(default, deserialize_with = "de_http_codes")]
    pub retriable_http_codes: Vec<u16>,
    #[serde(default, deserialize_with = "de_string_map")]
    pub bootstrap_labels: BTreeMap<String, String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: default_k8s_namespace(),
            labels: BTreeMap::new(),
            scope_label: default_scope_label(),
            role_label: default_role_label(),
            leader_label_value: default_primary_label_value(),
            follower_label_value: default_replica_label_value(),
            standby_leader_label_value: default_primary_label_value(),
            tmp_role_label: None,
            use_endpoints: false,
            pod_ip: None,
            ports: default_k8s_ports(),
            cacert: None,
            context: None,
            bypass_api_service: false,
            retriable_http_codes: Vec::new(),
            bootstrap_labels: BTreeMap::new(),
        }
    }
}

fn default_k8s_namespace() -> String {
    "default".to_string()
}
fn default_scope_label() -> String {
    "cluster-name".to_string()
}
fn default_role_label() -> String {
    "role".to_string()
}
fn default_primary_label_value() -> String {
    "primary".to_string()
}
fn default_replica_label_value() -> String {
    "replica".to_string()
}
fn default_k8s_ports() -> Vec<Value> {
    vec![serde_json::json!({"port": 5432})]
}

fn de_k8s_ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    let items = match Value::deserialize(d)? {
        Value::Null => return Ok(default_k8s_ports()),
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        other => {
            return Err(D::Error::custom(format!(
                "invalid value {}, expected a list of {{name, port, protocol}} mappings",
                show(&other)
            )))
        }
    };
    for (i, item) in items.iter().enumerate() {
        let port = item.as_object().map(|m| m.get("port"));
        match port {
            Some(None) => {}
            Some(Some(p)) if u64_of(p).is_some_and(|p| (1..=65535).contains(&p)) => {}
            _ => {
                return Err(D::Error::custom(format!(
                    "item {i}: expected a mapping with a valid 'port', got {}",
                    show(item)
                )))
            }
        }
    }
    Ok(items)
}

/// An integer, a list of integers, or a comma-separated string of integers.
fn de_http_codes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    let v = Value::deserialize(d)?;
    let items: Vec<Value> = match &v {
        Value::Null => Vec::new(),
        Value::Array(items) => items.clone(),
        Value::String(s) => s
            .split(',')
            .filter(|c| !c.trim().is_empty())
            .map(|c| Value::String(c.trim().to_string()))
            .collect(),
        other => vec![other.clone()],
    };
    items
        .iter()
        .map(|c| {
            u64_of(c)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| D::Error::custom(format!("invalid HTTP status code {}", show(c))))
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
pub struct BootstrapConfig {
    /// Initial dynamic configuration written to the DCS by the member that initialises the
    /// cluster (a mapping; see [`DynamicConfig`]).
    #[serde(default = "empty_object", deserialize_with = "de_object")]
    pub dcs: Value,
    /// `initdb` options as long flags (`--data-checksums`, `--encoding=UTF8`).
    #[serde(default, deserialize_with = "de_tool_flags")]
    pub initdb: Vec<String>,
    /// Legacy: lines added to pg_hba.conf after initdb.
    #[serde(default)]
    pub pg_hba: Vec<String>,
    /// `initdb` (default) or the name of a custom bootstrap section.
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default, alias = "post_init")]
    pub post_bootstrap: Option<String>,
    /// The `bootstrap.<method>` section of a custom method (`command`, `no_params`,
    /// `keep_existing_recovery_conf`, `recovery_conf`, extra `--k=v` arguments).
    #[serde(skip)]
    pub method_config: Option<Map<String, Value>>,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            dcs: empty_object(),
            initdb: Vec::new(),
            pg_hba: Vec::new(),
            method: None,
            post_bootstrap: None,
            method_config: None,
        }
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

fn de_object<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(empty_object()),
        obj @ Value::Object(_) => Ok(obj),
        other => Err(D::Error::custom(format!(
            "invalid value {}, expected a mapping",
            show(&other)
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PgUser {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub sslmode: Option<String>,
    #[serde(default)]
    pub sslkey: Option<String>,
    #[serde(default)]
    pub sslcert: Option<String>,
    #[serde(default)]
    pub sslrootcert: Option<String>,
    #[serde(default)]
    pub sslpassword: Option<String>,
    #[serde(default)]
    pub sslcrl: Option<String>,
    #[serde(default)]
    pub sslcrldir: Option<String>,
    #[serde(default)]
    pub gssencmode: Option<String>,
    #[serde(default)]
    pub channel_binding: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PgAuthentication {
    pub superuser: PgUser,
    pub replication: PgUser,
    #[serde(default)]
    pub rewind: Option<PgUser>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PostgresqlConfig {
    /// `listen_addresses` and port: `host:port`, `*:5432`, `0.0.0.0,127.0.0.1:5432`.
    pub listen: String,
    /// `host:port` other members and clients use to reach this server.
    pub connect_address: String,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// Executable name overrides (`bin_name.pg_ctl: pg_ctl.wrapper`).
    #[serde(default, deserialize_with = "de_string_map")]
    pub bin_name: BTreeMap<String, String>,
    #[serde(default)]
    pub config_dir: Option<PathBuf>,
    #[serde(default)]
    pub pgpass: Option<PathBuf>,
    #[serde(default)]
    pub proxy_address: Option<String>,
    pub authentication: PgAuthentication,
    /// Local GUCs; they override the ones from the DCS.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub pg_hba: Vec<String>,
    #[serde(default)]
    pub pg_ident: Vec<String>,
    #[serde(default = "default_pg_ctl_timeout", deserialize_with = "de_u64")]
    pub pg_ctl_timeout: u64,
    #[serde(default, deserialize_with = "de_bool")]
    pub use_unix_socket: bool,
    #[serde(default, deserialize_with = "de_bool")]
    pub use_unix_socket_repl: bool,
    #[serde(default, deserialize_with = "de_bool")]
    pub remove_data_directory_on_rewind_failure: bool,
    #[serde(default, deserialize_with = "de_bool")]
    pub remove_data_directory_on_diverged_timelines: bool,
    /// `pg_basebackup` options as long flags.
    #[serde(default, deserialize_with = "de_tool_flags")]
    pub basebackup: Vec<String>,
    #[serde(default, deserialize_with = "de_string_list")]
    pub create_replica_methods: Vec<String>,
    /// `on_start`, `on_stop`, `on_restart`, `on_reload`, `on_role_change` → command.
    #[serde(default, deserialize_with = "de_string_map")]
    pub callbacks: BTreeMap<String, String>,
    #[serde(default)]
    pub pre_promote: Option<String>,
    #[serde(default)]
    pub before_stop: Option<String>,
    /// Local values; the effective setting comes from the DCS (see [`DynamicConfig`]).
    #[serde(default, deserialize_with = "de_opt_bool")]
    pub use_pg_rewind: Option<bool>,
    #[serde(default, deserialize_with = "de_opt_bool")]
    pub use_slots: Option<bool>,
}

fn default_pg_ctl_timeout() -> u64 {
    60
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CitusConfig {
    /// 0 = coordinator, ≥ 1 = worker groups.
    pub group: u32,
    pub database: String,
    /// Regent: how many worker groups must be registered before the coordinator runs its
    /// provisioning scripts (`citus.minimum_workers`, default 0).
    #[serde(default)]
    pub minimum_workers: u32,
    /// Regent: SQL scripts each group's primary runs once (`citus.provision`).
    #[serde(default)]
    pub provision: CitusProvision,
}

/// `citus.provision.coordinator` / `.worker`: SQL files (or directories of `*.sql` files), in the
/// order they run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CitusProvision {
    #[serde(default)]
    pub coordinator: Vec<PathBuf>,
    #[serde(default)]
    pub worker: Vec<PathBuf>,
}

impl CitusConfig {
    /// The scripts of this member's group: the coordinator's for group 0, else the workers'.
    pub fn provision_scripts(&self) -> &[PathBuf] {
        if self.group == 0 {
            &self.provision.coordinator
        } else {
            &self.provision.worker
        }
    }
}

/// The whole file as deserialized; DCS and Citus sections are converted afterwards so their
/// errors can name sub-keys.
#[derive(Deserialize)]
struct RawConfig {
    scope: String,
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    log: LogConfig,
    restapi: RestApiConfig,
    #[serde(default)]
    ctl: CtlConfig,
    #[serde(default)]
    etcd3: Option<Etcd3Raw>,
    #[serde(default)]
    kubernetes: Option<KubernetesConfig>,
    #[serde(default)]
    bootstrap: BootstrapConfig,
    postgresql: PostgresqlConfig,
    #[serde(default)]
    tags: dcs::Tags,
    #[serde(default)]
    watchdog: Value,
    #[serde(default)]
    citus: Option<Value>,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let tree = Value::deserialize(d)?;
        Config::from_tree(tree).map_err(D::Error::custom)
    }
}

/// Deserialize with the dotted key path of any error.
fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        let mut key = if path == "." { String::new() } else { path };
        // serde reports a missing field at its parent; name the field itself.
        if let Some(field) = msg
            .strip_prefix("missing field `")
            .and_then(|r| r.strip_suffix('`'))
        {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(field);
            return ConfigError::invalid(key, "required setting is missing");
        }
        ConfigError::invalid(key, msg)
    })
}

impl Config {
    /// Build and validate a configuration from a merged tree (file + environment).
    pub fn from_tree(tree: Value) -> Result<Config, ConfigError> {
        let mut root = match tree {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return Err(ConfigError::invalid(
                    "",
                    format!("the configuration must be a mapping, got {}", show(&other)),
                ))
            }
        };
        // Nulls in bootstrap.dcs are meaningful to whoever reads it; elsewhere an empty key
        // means "not set".
        let bootstrap_dcs = root
            .get_mut("bootstrap")
            .and_then(Value::as_object_mut)
            .and_then(|b| b.remove("dcs"));
        strip_nulls(&mut root);
        if let Some(dcs) = bootstrap_dcs {
            if let Some(Value::Object(b)) = root.get_mut("bootstrap") {
                b.insert("dcs".to_string(), dcs);
            }
        }

        check_dcs_sections(&root)?;

        // Patroni copies a top-level `namespace` into the DCS section, where for Kubernetes it
        // replaces the Kubernetes namespace.
        if let Some(ns) = root.get("namespace").cloned() {
            if let Some(Value::Object(k8s)) = root.get_mut("kubernetes") {
                k8s.insert("namespace".to_string(), ns);
            }
        }

        // A new Citus group starts with synchronous replication unless told otherwise.
        if root.get("citus").is_some_and(Value::is_object) {
            let bootstrap = root.entry("bootstrap").or_insert_with(empty_object);
            if let Value::Object(b) = bootstrap {
                if let Value::Object(dcs) = b.entry("dcs").or_insert_with(empty_object) {
                    dcs.entry("synchronous_mode").or_insert(Value::Bool(true));
                }
            }
        }

        let mut warnings = Vec::new();
        let raw: RawConfig = typed(Value::Object(root.clone()))?;

        let dcs = match (raw.etcd3, raw.kubernetes) {
            (Some(etcd), None) => DcsConfig::Etcd3(
                Etcd3Config::from_raw(etcd)
                    .map_err(|(k, m)| ConfigError::invalid(format!("etcd3.{k}"), m))?,
            ),
            (None, Some(k8s)) => DcsConfig::Kubernetes(k8s),
            // check_dcs_sections guarantees exactly one.
            _ => return Err(no_dcs_error()),
        };

        let watchdog = crate::watchdog::WatchdogConfig::from_value(&raw.watchdog, &mut warnings)
            .map_err(|e| match e.split_once(": ") {
                Some((key, msg)) => ConfigError::invalid(key.to_string(), msg.to_string()),
                None => ConfigError::invalid("watchdog".to_string(), e.clone()),
            })?;

        let citus = match raw.citus {
            None => None,
            Some(v) => Some(citus_from_value(&v)?),
        };

        let mut bootstrap = raw.bootstrap;
        for flag in &bootstrap.initdb {
            let opt = flag_option(flag);
            if INITDB_RESERVED.contains(&opt) {
                return Err(ConfigError::invalid(
                    "bootstrap.initdb",
                    format!("option '{opt}' is not allowed: Regent sets it"),
                ));
            }
        }
        if let Some(method) = bootstrap.method.as_deref().filter(|m| *m != "initdb") {
            let section = root
                .get("bootstrap")
                .and_then(|b| b.get(method))
                .and_then(Value::as_object)
                .cloned();
            match section {
                Some(s) => bootstrap.method_config = Some(s),
                None => {
                    return Err(ConfigError::invalid(
                        format!("bootstrap.{method}"),
                        format!(
                        "bootstrap.method is '{method}' but there is no bootstrap.{method} section"
                    ),
                    ))
                }
            }
        }
        let (_, issues) = DynamicConfig::read(&bootstrap.dcs);
        for issue in issues {
            if issue.invalid {
                return Err(ConfigError::invalid(
                    format!("bootstrap.dcs.{}", issue.key),
                    issue.msg,
                ));
            }
            warnings.push(format!("bootstrap.dcs.{}: {}", issue.key, issue.msg));
        }

        let mut postgresql = raw.postgresql;
        postgresql.basebackup.retain(|flag| {
            let opt = flag_option(flag);
            let reserved = BASEBACKUP_RESERVED.contains(&opt);
            if reserved {
                warnings.push(format!(
                    "postgresql.basebackup: option '{opt}' is ignored: Regent sets it"
                ));
            }
            !reserved
        });
        for key in postgresql.callbacks.keys() {
            if ![
                "on_start",
                "on_stop",
                "on_restart",
                "on_reload",
                "on_role_change",
            ]
            .contains(&key.as_str())
            {
                warnings.push(format!(
                    "postgresql.callbacks.{key}: unknown callback, ignored"
                ));
            }
        }
        if root
            .get("log")
            .and_then(|l| l.get("format"))
            .is_some_and(Value::is_array)
        {
            warnings.push(
                "log.format: field lists (JSON log format) are not supported; using the default"
                    .into(),
            );
        }

        let mut log = raw.log;
        log.level = normalize_log_level(&log.level);

        let cfg = Config {
            scope: raw.scope,
            name: raw.name,
            namespace: raw.namespace,
            log,
            restapi: raw.restapi,
            ctl: raw.ctl,
            dcs,
            bootstrap,
            postgresql,
            tags: raw.tags,
            watchdog,
            citus,
            warnings,
        };
        validate(&cfg)?;
        Ok(cfg)
    }

    /// Parse a whole configuration from YAML text (no environment).
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        let tree = parse_text(text, Path::new("<config>"))?;
        Config::from_tree(tree)
    }

    /// Hosts for `listen_addresses` and the port, from `postgresql.listen`.
    pub fn postgres_listen_host_port(&self) -> (Vec<String>, u16) {
        split_host_port(&self.postgresql.listen, Some(5432)).unwrap_or_else(|_| (Vec::new(), 5432))
    }

    /// Host and port others connect to, from `postgresql.connect_address`.
    pub fn pg_connect_host_port(&self) -> (String, u16) {
        let (hosts, port) = split_host_port(&self.postgresql.connect_address, Some(5432))
            .unwrap_or_else(|_| (Vec::new(), 5432));
        (hosts.into_iter().next().unwrap_or_default(), port)
    }

    /// Address for the REST API to bind: `*` or an empty host mean all IPv4 interfaces.
    pub fn rest_listen_addr(&self) -> (String, u16) {
        let (hosts, port) =
            split_host_port(&self.restapi.listen, None).unwrap_or_else(|_| (Vec::new(), 8008));
        let host = match hosts.first().map(String::as_str) {
            None | Some("*") => "0.0.0.0".to_string(),
            Some(h) => h.to_string(),
        };
        (host, port)
    }

    /// `postgres://<postgresql.connect_address>/postgres`, as published in member data.
    pub fn conn_url(&self) -> String {
        format!(
            "postgres://{}/postgres",
            self.postgresql.connect_address.trim()
        )
    }

    /// `http[s]://<restapi.connect_address>/patroni`, as published in member data.
    pub fn api_url(&self) -> String {
        let scheme = if self.restapi.certfile.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/patroni", self.restapi.connect_address.trim())
    }

    /// Path of a PostgreSQL executable: `bin_name` overrides the name; then `bin_dir/<name>`,
    /// else the Debian PostgreSQL 15 directory if it has it, else the bare name (`$PATH`).
    pub fn bin(&self, name: &str) -> PathBuf {
        let exe = self
            .postgresql
            .bin_name
            .get(name)
            .map(String::as_str)
            .unwrap_or(name);
        if let Some(dir) = &self.postgresql.bin_dir {
            return dir.join(exe);
        }
        let debian = Path::new(DEFAULT_PG_BIN_DIR).join(exe);
        if debian.exists() {
            debian
        } else {
            PathBuf::from(exe)
        }
    }

    /// Key prefix of this cluster in a key-value DCS: `/<namespace>/<scope>` with slashes
    /// collapsed (`/service/` + `batman` → `/service/batman`).
    pub fn base_path(&self) -> String {
        let joined = format!("/{}/{}", self.namespace, self.scope);
        let mut out = String::with_capacity(joined.len());
        for c in joined.chars() {
            if !(c == '/' && out.ends_with('/')) {
                out.push(c);
            }
        }
        out.trim_end_matches('/').to_string()
    }

    /// Dynamic configuration to write to the DCS when this member initialises the cluster.
    pub fn bootstrap_dynamic(&self) -> (DynamicConfig, Vec<String>) {
        DynamicConfig::from_value(&self.bootstrap.dcs)
    }
}

/// Upper case, with Python's aliases resolved (`warn` → `WARNING`, `fatal` → `CRITICAL`).
fn normalize_log_level(level: &str) -> String {
    match level.trim().to_ascii_uppercase().as_str() {
        "WARN" => "WARNING".to_string(),
        "FATAL" => "CRITICAL".to_string(),
        other => other.to_string(),
    }
}

fn no_dcs_error() -> ConfigError {
    ConfigError::invalid("", "no DCS configured: add an etcd3 or kubernetes section")
}

fn check_dcs_sections(root: &Map<String, Value>) -> Result<(), ConfigError> {
    if let Some(name) = UNSUPPORTED_DCS.iter().find(|n| root.contains_key(**n)) {
        return Err(ConfigError::invalid(
            "",
            format!("unsupported DCS '{name}': Regent supports etcd3 and kubernetes"),
        ));
    }
    match (root.contains_key("etcd3"), root.contains_key("kubernetes")) {
        (true, true) => Err(ConfigError::invalid(
            "",
            "both etcd3 and kubernetes are configured: keep exactly one DCS section",
        )),
        (false, false) => Err(no_dcs_error()),
        _ => Ok(()),
    }
}

fn citus_from_value(v: &Value) -> Result<CitusConfig, ConfigError> {
    let Value::Object(m) = v else {
        return Err(ConfigError::invalid(
            "citus",
            format!(
                "expected a mapping with group and database, got {}",
                show(v)
            ),
        ));
    };
    let group = match m.get("group") {
        None => {
            return Err(ConfigError::invalid(
                "citus.group",
                "required setting is missing",
            ))
        }
        Some(g) => u64_of(g)
            .and_then(|g| u32::try_from(g).ok())
            .ok_or_else(|| {
                ConfigError::invalid(
                    "citus.group",
                    format!("invalid value {}, expected an integer >= 0", show(g)),
                )
            })?,
    };
    let database = match m.get("database") {
        None => {
            return Err(ConfigError::invalid(
                "citus.database",
                "required setting is missing",
            ))
        }
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(other) => {
            return Err(ConfigError::invalid(
                "citus.database",
                format!("invalid value {}, expected a database name", show(other)),
            ))
        }
    };
    let minimum_workers = match m.get("minimum_workers") {
        None => 0,
        Some(n) => u64_of(n)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                ConfigError::invalid(
                    "citus.minimum_workers",
                    format!("invalid value {}, expected an integer >= 0", show(n)),
                )
            })?,
    };
    let provision = match m.get("provision") {
        None => CitusProvision::default(),
        Some(p) => citus_provision_from_value(p)?,
    };
    Ok(CitusConfig {
        group,
        database,
        minimum_workers,
        provision,
    })
}

fn citus_provision_from_value(v: &Value) -> Result<CitusProvision, ConfigError> {
    let Value::Object(m) = v else {
        return Err(ConfigError::invalid(
            "citus.provision",
            format!(
                "expected a mapping with coordinator and/or worker, got {}",
                show(v)
            ),
        ));
    };
    let mut out = CitusProvision::default();
    for (key, value) in m {
        let target = match key.as_str() {
            "coordinator" => &mut out.coordinator,
            "worker" => &mut out.worker,
            // A misspelt role would silently provision nothing.
            _ => {
                return Err(ConfigError::invalid(
                    format!("citus.provision.{key}"),
                    "unknown key, expected coordinator or worker",
                ))
            }
        };
        let full_key = format!("citus.provision.{key}");
        let bad = |what: &Value| {
            ConfigError::invalid(
                full_key.clone(),
                format!(
                    "invalid value {}, expected a path or a list of paths to .sql files",
                    show(what)
                ),
            )
        };
        let items: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            Value::String(_) => vec![value],
            other => return Err(bad(other)),
        };
        for item in items {
            match item {
                Value::String(s) if !s.trim().is_empty() => target.push(PathBuf::from(s.trim())),
                other => return Err(bad(other)),
            }
        }
    }
    Ok(out)
}

/// Semantic checks on a loaded configuration (addresses parse, names are set, ...).
/// [`load`] and friends already run it.
/// Settings that parse but cannot be used as given, found before anything starts: the REST
/// API's TLS files must load (certificate, unencrypted key, CA for `verify_client`), and the
/// files `ctl` uses must be readable.
pub fn check_supported(cfg: &Config) -> Result<(), ConfigError> {
    if let Some(tls) = cfg.restapi.tls_settings()? {
        rest::security::server_config(&tls).map_err(|e| ConfigError::invalid(e.key, e.message))?;
    }
    for (key, headers) in [
        (
            "restapi.http_extra_headers",
            &cfg.restapi.http_extra_headers,
        ),
        (
            "restapi.https_extra_headers",
            &cfg.restapi.https_extra_headers,
        ),
    ] {
        for (name, value) in headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    key,
                    format!("'{name}' is not an HTTP header name"),
                ));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(ConfigError::invalid(
                    key,
                    format!("'{value}' is not a valid value for {name}"),
                ));
            }
        }
    }
    for (key, path) in [
        ("ctl.cacert", &cfg.ctl.cacert),
        ("ctl.certfile", &cfg.ctl.certfile),
        ("ctl.keyfile", &cfg.ctl.keyfile),
    ] {
        if let Some(path) = path {
            std::fs::File::open(path).map_err(|e| {
                ConfigError::invalid(key, format!("cannot read {}: {e}", path.display()))
            })?;
        }
    }
    Ok(())
}

impl RestApiConfig {
    /// TLS settings when `certfile` is set (Patroni serves https exactly then).
    pub fn tls_settings(&self) -> Result<Option<rest::security::TlsSettings>, ConfigError> {
        let Some(certfile) = &self.certfile else {
            return Ok(None);
        };
        let verify_client = rest::security::VerifyClient::parse(self.verify_client.as_deref())
            .map_err(|e| ConfigError::invalid(e.key, e.message))?;
        Ok(Some(rest::security::TlsSettings {
            certfile: certfile.clone(),
            keyfile: self.keyfile.clone(),
            keyfile_password: self.keyfile_password.clone(),
            cafile: self.cafile.clone(),
            ciphers: self.ciphers.clone(),
            verify_client,
        }))
    }

    /// Access control and TLS settings of the REST API.
    pub fn security_settings(&self) -> Result<rest::security::SecuritySettings, ConfigError> {
        Ok(rest::security::SecuritySettings {
            authentication: self
                .authentication
                .as_ref()
                .map(|a| (a.username.clone(), a.password.clone())),
            allowlist: self.allowlist.clone(),
            allowlist_include_members: self.allowlist_include_members,
            tls: self.tls_settings()?,
            extra_headers: self
                .http_extra_headers
                .iter()
                .map(|(n, v)| ("restapi.http_extra_headers", n, v))
                .chain(
                    self.https_extra_headers
                        .iter()
                        .filter(|_| self.certfile.is_some())
                        .map(|(n, v)| ("restapi.https_extra_headers", n, v)),
                )
                .map(|(key, n, v)| (key.to_string(), n.clone(), v.clone()))
                .collect(),
        })
    }
}

pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let bad = |key: &str, msg: String| Err(ConfigError::invalid(key, msg));
    if cfg.scope.trim().is_empty() {
        return bad("scope", "must not be empty".into());
    }
    if cfg.name.trim().is_empty() {
        return bad("name", "must not be empty".into());
    }
    if !LOG_LEVELS.contains(&cfg.log.level.to_ascii_uppercase().as_str()) {
        return bad(
            "log.level",
            format!(
                "invalid value '{}', expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
                cfg.log.level
            ),
        );
    }

    split_host_port(&cfg.restapi.listen, None)
        .map_err(|m| ConfigError::invalid("restapi.listen", m))?;
    check_connect_address(
        "restapi.connect_address",
        &cfg.restapi.connect_address,
        None,
    )?;
    if let Some(v) = &cfg.restapi.verify_client {
        if !["none", "optional", "required"].contains(&v.as_str()) {
            return bad(
                "restapi.verify_client",
                format!("invalid value '{v}', expected none, optional or required"),
            );
        }
    }
    for (section, auth) in [
        ("restapi", &cfg.restapi.authentication),
        ("ctl", &cfg.ctl.authentication),
    ] {
        if auth.as_ref().is_some_and(|a| a.username.is_empty()) {
            return bad(
                &format!("{section}.authentication.username"),
                "must not be empty".into(),
            );
        }
    }

    let (hosts, _) = split_host_port(&cfg.postgresql.listen, Some(5432))
        .map_err(|m| ConfigError::invalid("postgresql.listen", m))?;
    if hosts.is_empty() {
        return bad("postgresql.listen", "no listen address given".into());
    }
    check_connect_address(
        "postgresql.connect_address",
        &cfg.postgresql.connect_address,
        Some(5432),
    )?;
    if cfg.postgresql.data_dir.as_os_str().is_empty() {
        return bad("postgresql.data_dir", "must not be empty".into());
    }
    let auth = &cfg.postgresql.authentication;
    for (user, pg_user) in [
        ("superuser", Some(&auth.superuser)),
        ("replication", Some(&auth.replication)),
        ("rewind", auth.rewind.as_ref()),
    ] {
        if pg_user.is_some_and(|u| u.username.trim().is_empty()) {
            return bad(
                &format!("postgresql.authentication.{user}.username"),
                "must not be empty".into(),
            );
        }
    }
    if cfg.postgresql.pg_ctl_timeout == 0 {
        return bad(
            "postgresql.pg_ctl_timeout",
            "must be at least 1 second".into(),
        );
    }

    match &cfg.dcs {
        DcsConfig::Etcd3(e) => {
            if e.hosts.is_empty() {
                return bad("etcd3.hosts", "no etcd endpoints".into());
            }
            if e.protocol != "http" && e.protocol != "https" {
                return bad(
                    "etcd3.protocol",
                    format!("invalid value '{}', expected http or https", e.protocol),
                );
            }
        }
        DcsConfig::Kubernetes(k) => {
            if k.namespace.trim().is_empty() || k.namespace.contains('/') {
                return bad(
                    "kubernetes.namespace",
                    format!(
                        "'{}' is not a Kubernetes namespace (a top-level `namespace` setting overrides it)",
                        k.namespace
                    ),
                );
            }
            for (key, v) in [
                ("scope_label", &k.scope_label),
                ("role_label", &k.role_label),
                ("leader_label_value", &k.leader_label_value),
                ("follower_label_value", &k.follower_label_value),
                ("standby_leader_label_value", &k.standby_leader_label_value),
            ] {
                if v.trim().is_empty() {
                    return bad(&format!("kubernetes.{key}"), "must not be empty".into());
                }
            }
            if k.leader_label_value == k.follower_label_value {
                return bad(
                    "kubernetes.follower_label_value",
                    "must differ from kubernetes.leader_label_value".into(),
                );
            }
        }
    }
    if let Some(c) = &cfg.citus {
        if c.database.trim().is_empty() {
            return bad("citus.database", "must not be empty".into());
        }
    }
    Ok(())
}

fn check_connect_address(
    key: &str,
    addr: &str,
    default_port: Option<u16>,
) -> Result<(), ConfigError> {
    let (hosts, _) =
        split_host_port(addr, default_port).map_err(|m| ConfigError::invalid(key, m))?;
    match hosts.as_slice() {
        [h] if h != "*" => Ok(()),
        _ => Err(ConfigError::invalid(
            key,
            format!("'{addr}' must name exactly one reachable host, as host:port"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

fn parse_text(text: &str, origin: &Path) -> Result<Value, ConfigError> {
    value::parse_yaml(text).map_err(|(line, column, msg)| ConfigError::Syntax {
        path: origin.to_path_buf(),
        line,
        column,
        msg,
    })
}

fn read_file(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match parse_text(&text, path)? {
        Value::Object(m) => Ok(m),
        other => Err(ConfigError::invalid(
            path.display().to_string(),
            format!(
                "expected a YAML mapping at the top level, got {}",
                show(&other)
            ),
        )),
    }
}

/// A file, or a directory whose `*.yml`/`*.yaml` files are merged in name order.
fn read_path(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let io_err = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.is_dir() {
        return read_file(path);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let p = entry.path();
        let is_yaml = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".yml") || n.ends_with(".yaml"));
        if is_yaml && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    let mut merged = Map::new();
    for f in files {
        patch(&mut merged, read_file(&f)?);
    }
    Ok(merged)
}

fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Load from a file or directory, with `PATRONI_*` variables of this process applied on top.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_env(Some(path), &process_env())
}

/// Load without a file: `PATRONI_CONFIGURATION`, or else the `PATRONI_*` variables.
pub fn load_from_env() -> Result<Config, ConfigError> {
    load_with_env(None, &process_env())
}

/// [`load`] / [`load_from_env`] with an explicit environment.
pub fn load_with_env(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Config, ConfigError> {
    let tree = match path {
        Some(p) => {
            let mut base = read_path(p)?;
            patch(&mut base, env::overlay(env)?);
            Value::Object(base)
        }
        None => {
            let whole = env.get(CONFIG_ENV_VAR).filter(|t| !t.trim().is_empty());
            match whole
                .map(|t| parse_text(t, Path::new(CONFIG_ENV_VAR)))
                .transpose()?
            {
                Some(Value::Object(m)) if !m.is_empty() => Value::Object(m),
                Some(Value::Object(_)) | Some(Value::Null) | None => {
                    Value::Object(env::overlay(env)?)
                }
                Some(other) => {
                    return Err(ConfigError::invalid(
                        CONFIG_ENV_VAR,
                        format!("expected a YAML mapping, got {}", show(&other)),
                    ))
                }
            }
        }
    };
    Config::from_tree(tree)
}

#[cfg(test)]
mod tests;
