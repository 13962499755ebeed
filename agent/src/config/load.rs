//! Loading: the YAML file or directory, the `PATRONI_*` environment merged on top, and the
//! merged tree turned into a checked [`Config`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::types::{
    empty_object, BootstrapConfig, CitusConfig, CitusProvision, Config, CtlConfig, DcsConfig,
    Etcd3Config, Etcd3Raw, KubernetesConfig, LogConfig, PostgresqlConfig, RestApiConfig,
    DEFAULT_NAMESPACE,
};
use super::validate::{check_dcs_sections, check_initdb_options, no_dcs_error, validate};
use super::value::{
    flag_option, join_host_port, parse_yaml, patch, show, split_host_port, strip_nulls, u64_of,
    AddressError, YamlError,
};
use super::{env, ConfigError, DynamicConfig};

const CONFIG_ENV_VAR: &str = "PATRONI_CONFIGURATION";
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

fn parse_text(text: &str, origin: &Path) -> Result<Value, ConfigError> {
    parse_yaml(text).map_err(|YamlError { line, column, msg }| ConfigError::Syntax {
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
            return missing(&key);
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
                    .map_err(|e| ConfigError::invalid(format!("etcd3.{}", e.key), e.problem))?,
            ),
            (None, Some(k8s)) => DcsConfig::Kubernetes(k8s),
            // check_dcs_sections guarantees exactly one.
            _ => return Err(no_dcs_error()),
        };

        let watchdog = crate::watchdog::WatchdogConfig::from_value(&raw.watchdog, &mut warnings)?;

        let citus = match raw.citus {
            None => None,
            Some(v) => Some(citus_from_value(&v)?),
        };

        let mut bootstrap = raw.bootstrap;
        check_initdb_options(&bootstrap.initdb)?;
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
}

/// Upper case, with Python's aliases resolved (`warn` → `WARNING`, `fatal` → `CRITICAL`).
fn normalize_log_level(level: &str) -> String {
    match level.trim().to_ascii_uppercase().as_str() {
        "WARN" => "WARNING".to_string(),
        "FATAL" => "CRITICAL".to_string(),
        other => other.to_string(),
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
    let group = citus_u32(m, "group")?.ok_or_else(|| missing("citus.group"))?;
    let database = match m.get("database") {
        None => return Err(missing("citus.database")),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(other) => {
            return Err(ConfigError::invalid(
                "citus.database",
                format!("invalid value {}, expected a database name", show(other)),
            ))
        }
    };
    let minimum_workers = citus_u32(m, "minimum_workers")?.unwrap_or(0);
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

/// `citus.<name>` as a non-negative integer; `None` when not set.
fn citus_u32(m: &Map<String, Value>, name: &str) -> Result<Option<u32>, ConfigError> {
    m.get(name)
        .map(|v| {
            u64_of(v)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ConfigError::invalid(
                        format!("citus.{name}"),
                        format!("invalid value {}, expected an integer >= 0", show(v)),
                    )
                })
        })
        .transpose()
}

fn missing(key: &str) -> ConfigError {
    ConfigError::invalid(key, "required setting is missing")
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

/// A problem in the `etcd3` section, naming its sub-key (`hosts[1]`, `protocol`).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct Etcd3Error {
    key: String,
    problem: Etcd3Problem,
}

#[derive(Debug, thiserror::Error)]
enum Etcd3Problem {
    #[error("DNS SRV discovery is not supported; list the endpoints in etcd3.hosts")]
    SrvDiscovery,
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("'{item}' has no host")]
    NoHost { item: String },
    #[error("expected host:port, got {value}")]
    NotAnEndpoint { value: String },
    #[error("expected a list or a comma-separated string, got {value}")]
    NotListOrString { value: String },
    #[error("no etcd endpoints: set etcd3.host, etcd3.hosts or etcd3.url")]
    NoEndpoints,
    #[error("invalid value '{protocol}', expected 'http' or 'https'")]
    Protocol { protocol: String },
}

impl TryFrom<Etcd3Raw> for Etcd3Config {
    type Error = Etcd3Error;
    fn try_from(raw: Etcd3Raw) -> Result<Self, Etcd3Error> {
        Etcd3Config::from_raw(raw)
    }
}

impl Etcd3Config {
    fn from_raw(raw: Etcd3Raw) -> Result<Etcd3Config, Etcd3Error> {
        let err = |key: &str, problem: Etcd3Problem| Etcd3Error {
            key: key.to_string(),
            problem,
        };
        for (key, v) in [
            ("srv", &raw.srv),
            ("discovery_srv", &raw.discovery_srv),
            ("srv_domain", &raw.srv_domain),
        ] {
            if v.is_some() {
                return Err(err(key, Etcd3Problem::SrvDiscovery));
            }
        }
        let default_port = raw.port.unwrap_or(2379);
        let mut protocol = raw.protocol.clone();
        let mut username = raw.username.clone();
        let mut password = raw.password.clone();
        let mut hosts = Vec::new();

        let mut add =
            |key: &str, item: &str, protocol: &mut Option<String>| -> Result<(), Etcd3Error> {
                let (scheme, _, authority) = dcs::split_url(item.trim());
                if let Some(s) = scheme {
                    protocol.get_or_insert_with(|| s.to_string());
                }
                let (hs, port) = split_host_port(authority, Some(default_port))
                    .map_err(|e| err(key, e.into()))?;
                if hs.is_empty() {
                    return Err(err(
                        key,
                        Etcd3Problem::NoHost {
                            item: item.to_string(),
                        },
                    ));
                }
                hosts.extend(hs.iter().map(|h| join_host_port(h, port)));
                Ok(())
            };

        // A proxy is used as a single fixed endpoint (Patroni: `url` with `use_proxies`).
        if let Some(url) = raw.proxy.as_deref().or(raw.url.as_deref()) {
            let key = if raw.proxy.is_some() { "proxy" } else { "url" };
            let (scheme, userinfo, _) = dcs::split_url(url);
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
                                    Etcd3Problem::NotAnEndpoint { value: show(other) },
                                ))
                            }
                        }
                    }
                }
                other => {
                    return Err(err(
                        "hosts",
                        Etcd3Problem::NotListOrString { value: show(other) },
                    ))
                }
            }
        } else if let Some(h) = &raw.host {
            add("host", h, &mut protocol)?;
        }
        if hosts.is_empty() {
            return Err(err("hosts", Etcd3Problem::NoEndpoints));
        }
        let protocol = protocol
            .unwrap_or_else(|| "http".to_string())
            .to_ascii_lowercase();
        if protocol != "http" && protocol != "https" {
            return Err(err("protocol", Etcd3Problem::Protocol { protocol }));
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
