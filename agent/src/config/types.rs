//! The typed configuration: Patroni's keys as structs and enums, with their serde attributes,
//! defaults and lenient deserializers, and the values derived from them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::value::{
    de_bool, de_opt_bool, de_opt_port, de_string_list, de_string_map, de_tool_flags, de_u64, show,
    split_host_port, u64_of,
};
use super::{ConfigError, DynamicConfig};

pub const DEFAULT_NAMESPACE: &str = "/service";
/// Where Debian installs the PostgreSQL 15 binaries; used when `postgresql.bin_dir` is not set.
pub const DEFAULT_PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

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
#[serde(default)]
pub struct LogConfig {
    /// Python logging level name (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`).
    pub level: String,
    #[serde(rename = "type")]
    pub type_: LogType,
    /// Python `%(...)s` format string. The JSON-logger field-list form is not kept.
    #[serde(deserialize_with = "de_log_format")]
    pub format: Option<String>,
    pub dateformat: Option<String>,
    pub dir: Option<PathBuf>,
    #[serde(deserialize_with = "de_string_map")]
    pub static_fields: BTreeMap<String, String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "INFO".to_string(),
            type_: LogType::Plain,
            format: None,
            dateformat: None,
            dir: None,
            static_fields: BTreeMap::new(),
        }
    }
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
#[serde(default)]
pub struct CtlConfig {
    pub authentication: Option<BasicAuth>,
    #[serde(deserialize_with = "de_bool")]
    pub insecure: bool,
    pub cacert: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
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
#[serde(default)]
pub(super) struct Etcd3Raw {
    pub(super) host: Option<String>,
    pub(super) hosts: Option<Value>,
    pub(super) url: Option<String>,
    pub(super) proxy: Option<String>,
    pub(super) srv: Option<String>,
    pub(super) discovery_srv: Option<String>,
    pub(super) srv_domain: Option<String>,
    #[serde(deserialize_with = "de_opt_port")]
    pub(super) port: Option<u16>,
    pub(super) protocol: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) cacert: Option<PathBuf>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct KubernetesConfig {
    /// Kubernetes namespace. A top-level `namespace` overrides it, as in Patroni.
    pub namespace: String,
    #[serde(deserialize_with = "de_string_map")]
    pub labels: BTreeMap<String, String>,
    pub scope_label: String,
    pub role_label: String,
    pub leader_label_value: String,
    pub follower_label_value: String,
    pub standby_leader_label_value: String,
    pub tmp_role_label: Option<String>,
    #[serde(deserialize_with = "de_bool")]
    pub use_endpoints: bool,
    pub pod_ip: Option<String>,
    /// Endpoint ports (`[{name, port, protocol}]`), default `[{port: 5432}]`.
    #[serde(deserialize_with = "de_k8s_ports")]
    pub ports: Vec<Value>,
    pub cacert: Option<PathBuf>,
    /// kubeconfig context when running outside a cluster (Patroni defaults to `kind-kind`).
    pub context: Option<String>,
    #[serde(deserialize_with = "de_bool")]
    pub bypass_api_service: bool,
    #[serde(deserialize_with = "de_http_codes")]
    pub retriable_http_codes: Vec<u16>,
    #[serde(deserialize_with = "de_string_map")]
    pub bootstrap_labels: BTreeMap<String, String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: "default".to_string(),
            labels: BTreeMap::new(),
            scope_label: "cluster-name".to_string(),
            role_label: "role".to_string(),
            leader_label_value: "primary".to_string(),
            follower_label_value: "replica".to_string(),
            standby_leader_label_value: "primary".to_string(),
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
#[serde(default)]
pub struct BootstrapConfig {
    /// Initial dynamic configuration written to the DCS by the member that initialises the
    /// cluster (a mapping; see [`DynamicConfig`]).
    #[serde(deserialize_with = "de_object")]
    pub dcs: Value,
    /// `initdb` options as long flags (`--data-checksums`, `--encoding=UTF8`).
    #[serde(deserialize_with = "de_tool_flags")]
    pub initdb: Vec<String>,
    /// Legacy: lines added to pg_hba.conf after initdb.
    pub pg_hba: Vec<String>,
    /// `initdb` (default) or the name of a custom bootstrap section.
    pub method: Option<String>,
    #[serde(alias = "post_init")]
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

pub(super) fn empty_object() -> Value {
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
#[serde(default)]
pub struct CitusProvision {
    pub coordinator: Vec<PathBuf>,
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

impl Config {
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
