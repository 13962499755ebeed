//! Checks of a configuration, each error naming the key at fault.

use serde_json::{Map, Value};

use super::types::{Config, DcsConfig};
use super::value::{flag_option, split_host_port};
use super::ConfigError;

/// Other DCS sections Patroni understands; Regent refuses them rather than ignoring them.
const UNSUPPORTED_DCS: &[&str] = &["etcd", "zookeeper", "consul", "exhibitor", "raft"];
/// `initdb` options Regent sets itself.
const INITDB_RESERVED: &[&str] = &["pgdata", "nosync", "pwfile", "sync-only", "version"];
const LOG_LEVELS: &[&str] = &[
    "DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL",
];

pub(super) fn no_dcs_error() -> ConfigError {
    ConfigError::invalid("", "no DCS configured: add an etcd3 or kubernetes section")
}

pub(super) fn check_dcs_sections(root: &Map<String, Value>) -> Result<(), ConfigError> {
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

/// Semantic checks on a loaded configuration (addresses parse, names are set, ...).
/// [`load`] and friends already run it.
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

/// `bootstrap.initdb` may not set the options Regent passes itself.
pub(super) fn check_initdb_options(flags: &[String]) -> Result<(), ConfigError> {
    for flag in flags {
        let opt = flag_option(flag);
        if INITDB_RESERVED.contains(&opt) {
            return Err(ConfigError::invalid(
                "bootstrap.initdb",
                format!("option '{opt}' is not allowed: Regent sets it"),
            ));
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
