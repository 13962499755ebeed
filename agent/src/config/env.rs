//! `PATRONI_*` environment variables turned into a configuration overlay, with Patroni's names
//! and value syntax (docs/configuration.md, *Loading*).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::value::{parse_bool_str, parse_yaml};
use super::ConfigError;

const PREFIX: &str = "PATRONI_";

/// Connection parameters accepted for `postgresql.authentication.<user>`.
const AUTH_PARAMS: &[&str] = &[
    "username",
    "password",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "gssencmode",
    "channel_binding",
];

/// Suffixes of `PATRONI_<SECTION>_<SUFFIX>` read for any section (DCS and Citus settings).
const GENERIC_SUFFIXES: &[&str] = &[
    "HOST",
    "HOSTS",
    "PORT",
    "USE_PROXIES",
    "PROTOCOL",
    "SRV",
    "SRV_SUFFIX",
    "URL",
    "PROXY",
    "CACERT",
    "CERT",
    "KEY",
    "VERIFY",
    "TOKEN",
    "CHECKS",
    "DC",
    "CONSISTENCY",
    "REGISTER_SERVICE",
    "SERVICE_CHECK_INTERVAL",
    "SERVICE_CHECK_TLS_SERVER_NAME",
    "SERVICE_TAGS",
    "NAMESPACE",
    "CONTEXT",
    "USE_ENDPOINTS",
    "SCOPE_LABEL",
    "ROLE_LABEL",
    "POD_IP",
    "PORTS",
    "LABELS",
    "BYPASS_API_SERVICE",
    "RETRIABLE_HTTP_CODES",
    "KEY_PASSWORD",
    "USE_SSL",
    "SET_ACLS",
    "GROUP",
    "DATABASE",
    "LEADER_LABEL_VALUE",
    "FOLLOWER_LABEL_VALUE",
    "STANDBY_LEADER_LABEL_VALUE",
    "TMP_ROLE_LABEL",
    "AUTH_DATA",
    "BOOTSTRAP_LABELS",
];

/// `PATRONI_<NAME>` for a setting's name (`restapi_allowlist`).
fn var_name(name: &str) -> String {
    format!("{PREFIX}{}", name.to_ascii_uppercase())
}

struct EnvReader<'a> {
    env: &'a BTreeMap<String, String>,
    used: BTreeSet<String>,
}

impl EnvReader<'_> {
    /// `PATRONI_<name>`, marked as consumed; empty values count as unset (as in Patroni).
    fn take(&mut self, name: &str) -> Option<String> {
        let key = var_name(name);
        let value = self.env.get(&key).filter(|v| !v.is_empty()).cloned();
        self.used.insert(key);
        value
    }
}

fn section<'m>(root: &'m mut Map<String, Value>, name: &str) -> &'m mut Map<String, Value> {
    let entry = root
        .entry(name.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(m) => m,
        _ => unreachable!("entry was just made an object"),
    }
}

/// A YAML list, brackets optional (`a,b` ≡ `[a, b]`; block lists starting with `-` also work).
fn parse_list(var: &str, raw: &str) -> Result<Value, ConfigError> {
    let text = if raw.trim().starts_with('-') || raw.contains('[') {
        raw.to_string()
    } else {
        format!("[{raw}]")
    };
    parse_yaml_as(var, &text, "a YAML list")
}

/// A YAML mapping, braces optional (`a: b` ≡ `{a: b}`).
fn parse_dict(var: &str, raw: &str) -> Result<Value, ConfigError> {
    let text = if raw.trim().starts_with('{') {
        raw.to_string()
    } else {
        format!("{{{raw}}}")
    };
    parse_yaml_as(var, &text, "a YAML mapping")
}

fn parse_yaml_as(var: &str, text: &str, what: &str) -> Result<Value, ConfigError> {
    parse_yaml(text).map_err(|e| ConfigError::invalid(var, format!("cannot parse as {what}: {e}")))
}

/// Booleans and integers that do not parse stay strings, so typed loading names the key.
fn bool_value(raw: String) -> Value {
    parse_bool_str(&raw)
        .map(Value::Bool)
        .unwrap_or(Value::String(raw))
}

fn int_value(raw: String) -> Value {
    raw.trim()
        .parse::<i64>()
        .map(Value::from)
        .unwrap_or(Value::String(raw))
}

/// Build the overlay that `PATRONI_*` variables apply on top of the file configuration.
pub(crate) fn overlay(env: &BTreeMap<String, String>) -> Result<Map<String, Value>, ConfigError> {
    let mut r = EnvReader {
        env,
        used: BTreeSet::new(),
    };
    let mut out = Map::new();

    for key in ["name", "namespace", "scope"] {
        if let Some(v) = r.take(key) {
            out.insert(key.to_string(), Value::String(v));
        }
    }

    // Pre-2.0 spellings of the log settings; the new names win.
    let mut legacy_log = BTreeMap::new();
    for (new, old) in [
        ("level", "loglevel"),
        ("format", "logformat"),
        ("dateformat", "log_datefmt"),
    ] {
        if let Some(v) = r.take(old) {
            legacy_log.insert(new, v);
        }
    }

    let plain: &[(&str, &[&str])] = &[
        (
            "restapi",
            &[
                "listen",
                "connect_address",
                "certfile",
                "keyfile",
                "keyfile_password",
                "cafile",
                "ciphers",
                "verify_client",
                "server_tokens",
            ],
        ),
        (
            "ctl",
            &["cacert", "certfile", "keyfile", "keyfile_password"],
        ),
        (
            "postgresql",
            &[
                "listen",
                "connect_address",
                "proxy_address",
                "config_dir",
                "data_dir",
                "pgpass",
                "bin_dir",
            ],
        ),
        (
            "log",
            &["type", "level", "traceback_level", "dateformat", "dir"],
        ),
        // Present so that a raft setup is reported as an unsupported DCS.
        ("raft", &["data_dir", "self_addr", "password", "bind_addr"]),
    ];
    for (sec, keys) in plain {
        for key in *keys {
            let value = r.take(&format!("{sec}_{key}")).or_else(|| {
                if *sec == "log" {
                    legacy_log.remove(key)
                } else {
                    None
                }
            });
            if let Some(v) = value {
                section(&mut out, sec).insert(key.to_string(), Value::String(v));
            }
        }
    }

    for binary in [
        "pg_ctl",
        "initdb",
        "pg_controldata",
        "pg_basebackup",
        "postgres",
        "pg_isready",
        "pg_rewind",
    ] {
        if let Some(v) = r.take(&format!("postgresql_bin_{binary}")) {
            section(section(&mut out, "postgresql"), "bin_name")
                .insert(binary.to_string(), Value::String(v));
        }
    }

    for (sec, key) in [
        ("restapi", "allowlist_include_members"),
        ("ctl", "insecure"),
        ("log", "deduplicate_heartbeat_logs"),
    ] {
        if let Some(v) = r.take(&format!("{sec}_{key}")) {
            section(&mut out, sec).insert(key.to_string(), bool_value(v));
        }
    }

    for (sec, key) in [
        ("restapi", "request_queue_size"),
        ("log", "max_queue_size"),
        ("log", "file_size"),
        ("log", "file_num"),
        ("log", "mode"),
    ] {
        if let Some(v) = r.take(&format!("{sec}_{key}")) {
            section(&mut out, sec).insert(key.to_string(), int_value(v));
        }
    }

    for (sec, key) in [("restapi", "allowlist"), ("raft", "partner_addrs")] {
        let name = format!("{sec}_{key}");
        if let Some(v) = r.take(&name) {
            section(&mut out, sec).insert(key.to_string(), parse_list(&var_name(&name), &v)?);
        }
    }

    // A log format without `%(field)` placeholders is a field list (JSON logs).
    if let Some(v) = r.take("log_format").or_else(|| legacy_log.remove("format")) {
        let value = if v.contains("%(") {
            Value::String(v)
        } else {
            parse_list("PATRONI_LOG_FORMAT", &v)?
        };
        section(&mut out, "log").insert("format".to_string(), value);
    }

    for (sec, key) in [
        ("restapi", "http_extra_headers"),
        ("restapi", "https_extra_headers"),
        ("log", "static_fields"),
        ("log", "loggers"),
    ] {
        let name = format!("{sec}_{key}");
        if let Some(v) = r.take(&name) {
            section(&mut out, sec).insert(key.to_string(), parse_dict(&var_name(&name), &v)?);
        }
    }

    for sec in ["ctl", "restapi"] {
        let auth = take_auth(&mut r, sec, &AUTH_PARAMS[..2]);
        if !auth.is_empty() {
            section(section(&mut out, sec), "authentication").extend(auth);
        }
    }

    for user in ["replication", "superuser", "rewind"] {
        let auth = take_auth(&mut r, user, AUTH_PARAMS);
        if !auth.is_empty() {
            let pg = section(&mut out, "postgresql");
            section(section(pg, "authentication"), user).extend(auth);
        }
    }

    // Credentials for the etcd sections apply whether or not the hosts came from the environment.
    for dcs in ["etcd", "etcd3"] {
        let auth = take_auth(&mut r, dcs, &AUTH_PARAMS[..2]);
        if !auth.is_empty() {
            section(&mut out, dcs).extend(auth);
        }
    }

    // Regent's own Citus settings.
    if let Some(raw) = r.take("CITUS_MINIMUM_WORKERS") {
        section(&mut out, "citus").insert("minimum_workers".into(), int_value(raw));
    }
    for role in ["coordinator", "worker"] {
        let name = format!("CITUS_PROVISION_{}", role.to_ascii_uppercase());
        if let Some(raw) = r.take(&name) {
            let scripts = parse_list(&format!("{PREFIX}{name}"), &raw)?;
            section(section(&mut out, "citus"), "provision").insert(role.into(), scripts);
        }
    }

    let remaining: Vec<(String, String)> = env
        .iter()
        .filter(|(k, v)| k.starts_with(PREFIX) && !r.used.contains(*k) && !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (var, raw) in remaining {
        let Some((name, suffix)) = var[PREFIX.len()..].split_once('_') else {
            continue;
        };
        if name.is_empty() || !GENERIC_SUFFIXES.contains(&suffix) {
            continue;
        }
        let value = if name == "CITUS" {
            match suffix {
                "GROUP" => int_value(raw),
                "DATABASE" => Value::String(raw),
                _ => continue,
            }
        } else {
            match suffix {
                "PORT" => int_value(raw),
                "HOSTS" | "PORTS" | "CHECKS" | "SERVICE_TAGS" | "RETRIABLE_HTTP_CODES" => {
                    parse_list(&var, &raw)?
                }
                "LABELS" | "SET_ACLS" | "AUTH_DATA" | "BOOTSTRAP_LABELS" => parse_dict(&var, &raw)?,
                "USE_PROXIES" | "REGISTER_SERVICE" | "USE_ENDPOINTS" | "BYPASS_API_SERVICE"
                | "VERIFY" => bool_value(raw),
                _ => Value::String(raw),
            }
        };
        section(&mut out, &name.to_ascii_lowercase()).insert(suffix.to_ascii_lowercase(), value);
    }

    Ok(out)
}

fn take_auth(r: &mut EnvReader<'_>, prefix: &str, params: &[&str]) -> Map<String, Value> {
    params
        .iter()
        .filter_map(|p| {
            r.take(&format!("{prefix}_{p}"))
                .map(|v| (p.to_string(), Value::String(v)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn maps_patroni_names_and_value_syntax() {
        let e = env(&[
            ("PATRONI_NAME", "pg1"),
            ("PATRONI_SCOPE", "demo"),
            ("PATRONI_LOGLEVEL", "DEBUG"),
            ("PATRONI_RESTAPI_LISTEN", "0.0.0.0:8008"),
            ("PATRONI_RESTAPI_USERNAME", "admin"),
            ("PATRONI_RESTAPI_ALLOWLIST", "10.0.0.0/8, 127.0.0.1"),
            ("PATRONI_RESTAPI_ALLOWLIST_INCLUDE_MEMBERS", "on"),
            (
                "PATRONI_RESTAPI_HTTP_EXTRA_HEADERS",
                "X-Frame-Options: SAMEORIGIN",
            ),
            ("PATRONI_CTL_INSECURE", "yes"),
            ("PATRONI_SUPERUSER_USERNAME", "postgres"),
            ("PATRONI_SUPERUSER_SSLMODE", "require"),
            ("PATRONI_REPLICATION_PASSWORD", "rep-pass"),
            ("PATRONI_POSTGRESQL_BIN_PG_CTL", "pg_ctl.wrapper"),
            ("PATRONI_ETCD3_HOSTS", "'10.0.0.1:2379','10.0.0.2:2379'"),
            ("PATRONI_ETCD3_USERNAME", "root"),
            (
                "PATRONI_KUBERNETES_LABELS",
                "{application: patroni, team: db}",
            ),
            (
                "PATRONI_KUBERNETES_PORTS",
                "[{name: postgresql, port: 5432}]",
            ),
            ("PATRONI_KUBERNETES_USE_ENDPOINTS", "true"),
            ("PATRONI_KUBERNETES_RETRIABLE_HTTP_CODES", "401,403"),
            ("PATRONI_CITUS_GROUP", "2"),
            ("PATRONI_CITUS_DATABASE", "citus"),
            ("PATRONI_CITUS_HOST", "ignored"),
            ("PATRONI_CITUS_MINIMUM_WORKERS", "2"),
            (
                "PATRONI_CITUS_PROVISION_COORDINATOR",
                "/etc/regent/provision/10-roles.sql, /etc/regent/provision/20-tables.sql",
            ),
            (
                "PATRONI_CITUS_PROVISION_WORKER",
                "/etc/regent/provision/worker",
            ),
            ("PATRONI_EMPTY", ""),
            ("OTHER_VAR", "x"),
        ]);
        let out = Value::Object(overlay(&e).unwrap_or_else(|err| panic!("{err}")));
        assert_eq!(
            out,
            json!({
                "name": "pg1",
                "scope": "demo",
                "log": {"level": "DEBUG"},
                "restapi": {
                    "listen": "0.0.0.0:8008",
                    "authentication": {"username": "admin"},
                    "allowlist": ["10.0.0.0/8", "127.0.0.1"],
                    "allowlist_include_members": true,
                    "http_extra_headers": {"X-Frame-Options": "SAMEORIGIN"},
                },
                "ctl": {"insecure": true},
                "postgresql": {
                    "bin_name": {"pg_ctl": "pg_ctl.wrapper"},
                    "authentication": {
                        "superuser": {"username": "postgres", "sslmode": "require"},
                        "replication": {"password": "rep-pass"},
                    },
                },
                "etcd3": {"hosts": ["10.0.0.1:2379", "10.0.0.2:2379"], "username": "root"},
                "kubernetes": {
                    "labels": {"application": "patroni", "team": "db"},
                    "ports": [{"name": "postgresql", "port": 5432}],
                    "use_endpoints": true,
                    "retriable_http_codes": [401, 403],
                },
                "citus": {
                    "group": 2,
                    "database": "citus",
                    "minimum_workers": 2,
                    "provision": {
                        "coordinator": [
                            "/etc/regent/provision/10-roles.sql",
                            "/etc/regent/provision/20-tables.sql",
                        ],
                        "worker": ["/etc/regent/provision/worker"],
                    },
                },
            })
        );
    }

    #[test]
    fn new_log_names_win_over_legacy() {
        let e = env(&[
            ("PATRONI_LOGLEVEL", "DEBUG"),
            ("PATRONI_LOG_LEVEL", "WARNING"),
        ]);
        let out = overlay(&e).unwrap_or_default();
        assert_eq!(out.get("log"), Some(&json!({"level": "WARNING"})));
    }

    #[test]
    fn unparsable_list_names_the_variable() {
        let e = env(&[("PATRONI_KUBERNETES_PORTS", "[{port: 5432")]);
        let err = overlay(&e).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.starts_with("PATRONI_KUBERNETES_PORTS: cannot parse"),
            "{err}"
        );
    }

    #[test]
    fn other_dcs_variables_create_their_section() {
        let e = env(&[("PATRONI_ZOOKEEPER_HOSTS", "zk1:2181")]);
        let out = overlay(&e).unwrap_or_default();
        assert_eq!(out.get("zookeeper"), Some(&json!({"hosts": ["zk1:2181"]})));
    }
}
