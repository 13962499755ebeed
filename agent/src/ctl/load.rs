//! The configuration ctl works with: the agent's file or directory (or a patronictl one, or the
//! environment), with `--dcs-url`, the cluster name and `--group` from the command line, and
//! placeholders for what only a member needs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{edit, CtlCli, CtlError, CtlResult};
use crate::config::{self, Config};

/// Placeholder member name: ctl is no member, but the loader and backends want one.
const CTL_NAME: &str = "regent-ctl";

/// The agent's loader, made lenient: ctl needs only the scope, the DCS section and the REST
/// credentials, so keys a member needs (name, restapi, postgresql) get placeholders when absent.
pub fn load_config(cli: &CtlCli, env: &BTreeMap<String, String>) -> CtlResult<Config> {
    let mut env = env.clone();
    let path = match &cli.config_file {
        Some(p) => {
            if !p.exists() {
                return Err(CtlError::usage(format!(
                    "configuration file {} does not exist",
                    p.display()
                )));
            }
            Some(p.clone())
        }
        None if env.contains_key("PATRONICTL_CONFIG_FILE") => {
            let p = PathBuf::from(&env["PATRONICTL_CONFIG_FILE"]);
            if !p.exists() {
                return Err(CtlError::usage(format!(
                    "configuration file {} (PATRONICTL_CONFIG_FILE) does not exist",
                    p.display()
                )));
            }
            Some(p)
        }
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".config/patroni/patronictl.yaml"))
            .filter(|p| p.exists()),
    };
    let mut tree = match &path {
        Some(p) => read_tree(p)?,
        None => match env
            .get("PATRONI_CONFIGURATION")
            .filter(|t| !t.trim().is_empty())
        {
            Some(text) => parse_yaml(text, "PATRONI_CONFIGURATION")?,
            None => Map::new(),
        },
    };
    env.remove("PATRONI_CONFIGURATION");
    if let Some(url) = &cli.dcs_url {
        let (hosts, namespace) = parse_dcs_url(url)?;
        tree.remove("kubernetes");
        tree.insert("etcd3".into(), serde_json::json!({ "hosts": hosts }));
        if let Some(ns) = namespace {
            tree.insert("namespace".into(), Value::String(ns));
        }
        env.retain(|k, _| {
            !k.starts_with("PATRONI_KUBERNETES_") && !k.starts_with("PATRONI_ETCD3_")
        });
    }
    if let Some(name) = cli.command.cluster_name() {
        tree.insert("scope".into(), Value::String(name.to_string()));
        env.remove("PATRONI_SCOPE");
    }
    let scope_known =
        tree.get("scope").is_some_and(|s| !s.is_null()) || env.contains_key("PATRONI_SCOPE");
    if !scope_known {
        return Err(CtlError::usage(
            "no cluster name: give CLUSTER_NAME or set scope in the configuration",
        ));
    }
    // --group wins over the file and over PATRONI_CITUS_GROUP (in a Pod: the Pod's own group),
    // and makes any cluster a Citus one, as in patronictl. A command spanning every group reads
    // from the coordinator (group 0), whose one DCS read also brings every worker group.
    let citus_configured =
        env.contains_key("PATRONI_CITUS_GROUP") || tree.get("citus").is_some_and(Value::is_object);
    let group = match cli.command.group() {
        Some(g) => Some(g),
        None if citus_configured && cli.command.spans_all_groups() => Some(0),
        None => None,
    };
    if let Some(g) = group {
        env.remove("PATRONI_CITUS_GROUP");
        let citus = tree
            .entry("citus")
            .or_insert_with(|| Value::Object(Map::new()));
        if !citus.is_object() {
            *citus = Value::Object(Map::new());
        }
        if let Value::Object(c) = citus {
            c.insert("group".into(), Value::from(g));
            // Only the DCS layout matters to ctl; PATRONI_CITUS_DATABASE still wins when set.
            c.entry("database")
                .or_insert_with(|| Value::String("postgres".into()));
        }
    }
    fill_placeholders(&mut tree);

    // The loader reads files; hand it the merged tree through a private temporary file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = std::env::temp_dir().join(format!("regent-ctl-{}-{seq}.yaml", std::process::id()));
    let text = serde_yaml_ng::to_string(&Value::Object(tree))
        .map_err(|e| CtlError::failed(format!("cannot serialise the configuration: {e}")))?;
    write_private(&tmp, &text)
        .map_err(|e| CtlError::failed(format!("cannot write {}: {e}", tmp.display())))?;
    let loaded = config::load_with_env(Some(&tmp), &env);
    let _ = std::fs::remove_file(&tmp);
    let origin = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the environment".into());
    loaded.map_err(|e| CtlError::usage(format!("invalid configuration in {origin}: {e}")))
}

pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

pub fn parse_yaml(text: &str, origin: &str) -> CtlResult<Map<String, Value>> {
    let v: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| CtlError::usage(format!("{origin}: not valid YAML: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(CtlError::usage(format!(
            "{origin}: expected a YAML mapping"
        ))),
    }
}

/// A file, or a directory whose `*.yml`/`*.yaml` files are merged in name order.
fn read_tree(path: &Path) -> CtlResult<Map<String, Value>> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| CtlError::usage(format!("cannot read {}: {e}", p.display())))
    };
    if !path.is_dir() {
        return parse_yaml(&read(path)?, &path.display().to_string());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| CtlError::usage(format!("cannot read {}: {e}", path.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    let mut tree = Map::new();
    for f in files {
        let part = parse_yaml(&read(&f)?, &f.display().to_string())?;
        edit::merge(&mut tree, part);
    }
    Ok(tree)
}

/// `etcd3://host:port[,host:port][/namespace]` (also `etcd://`).
fn parse_dcs_url(url: &str) -> CtlResult<(Vec<String>, Option<String>)> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| CtlError::usage(format!("--dcs-url {url}: expected etcd3://host:port")))?;
    if scheme != "etcd3" && scheme != "etcd" {
        return Err(CtlError::usage(format!(
            "--dcs-url {url}: only etcd3:// is supported (a Kubernetes DCS needs a configuration file)"
        )));
    }
    let (hosts, ns) = match rest.split_once('/') {
        Some((h, ns)) if !ns.is_empty() => (h, Some(format!("/{}", ns.trim_matches('/')))),
        Some((h, _)) => (h, None),
        None => (rest, None),
    };
    let hosts: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.contains(':') {
                h.to_string()
            } else {
                format!("{h}:2379")
            }
        })
        .collect();
    if hosts.is_empty() {
        return Err(CtlError::usage(format!("--dcs-url {url}: no host")));
    }
    Ok((hosts, ns))
}

fn fill_placeholders(tree: &mut Map<String, Value>) {
    let placeholders = serde_json::json!({
        "name": CTL_NAME,
        "restapi": {"listen": "127.0.0.1:8008", "connect_address": "127.0.0.1:8008"},
        "postgresql": {
            "listen": "127.0.0.1:5432",
            "connect_address": "127.0.0.1:5432",
            "data_dir": "/nonexistent/regent-ctl",
            "authentication": {
                "superuser": {"username": "postgres"},
                "replication": {"username": "replicator"}
            }
        }
    });
    if let Value::Object(p) = placeholders {
        fill_missing(tree, p);
    }
}

fn fill_missing(tree: &mut Map<String, Value>, defaults: Map<String, Value>) {
    for (k, v) in defaults {
        match (tree.get_mut(&k), v) {
            (Some(Value::Object(t)), Value::Object(d)) => fill_missing(t, d),
            (Some(existing), _) if !existing.is_null() => {}
            (_, v) => {
                tree.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The Citus group ctl reads for `args` with a configuration naming worker group 1.
    fn group_read(args: &[&str], env: &[(&str, &str)]) -> Option<u32> {
        let dir = std::env::temp_dir().join(format!(
            "regent-ctl-test-{}-{}",
            std::process::id(),
            args.join("_").replace(['-', ' '], "")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("ctl.yaml");
        std::fs::write(
            &path,
            "scope: demo\netcd3: {hosts: 127.0.0.1:2379}\ncitus: {group: 1, database: citus}\n",
        )
        .expect("write config");
        let mut argv = vec!["ctl".to_string(), "-c".into(), path.display().to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let cli = CtlCli::try_parse_from(argv).expect("arguments");
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cfg = load_config(&cli, &env).expect("configuration");
        let _ = std::fs::remove_dir_all(&dir);
        cfg.citus.map(|c| c.group)
    }

    /// patronictl's rule: listings and member commands without --group read the coordinator
    /// (which brings every worker group); pause/history/config default to the configured group;
    /// --group wins over the file and PATRONI_CITUS_GROUP.
    #[test]
    fn citus_group_read_follows_the_command() {
        assert_eq!(group_read(&["list"], &[]), Some(0));
        assert_eq!(group_read(&["topology"], &[]), Some(0));
        assert_eq!(group_read(&["restart", "demo", "--force"], &[]), Some(0));
        assert_eq!(
            group_read(&["list"], &[("PATRONI_CITUS_GROUP", "2")]),
            Some(0)
        );
        assert_eq!(group_read(&["list", "--group", "2"], &[]), Some(2));
        assert_eq!(group_read(&["pause"], &[]), Some(1));
        assert_eq!(group_read(&["show-config"], &[]), Some(1));
        assert_eq!(group_read(&["history", "--group", "0"], &[]), Some(0));
        assert_eq!(
            group_read(&["pause"], &[("PATRONI_CITUS_GROUP", "2")]),
            Some(2)
        );
    }

    #[test]
    fn group_option_makes_any_cluster_a_citus_one() {
        let cli = CtlCli::try_parse_from([
            "ctl",
            "--dcs-url",
            "etcd3://127.0.0.1:2379",
            "list",
            "demo",
            "--group",
            "3",
        ])
        .expect("arguments");
        let cfg = load_config(&cli, &BTreeMap::new()).expect("configuration");
        assert_eq!(cfg.citus.map(|c| c.group), Some(3));
        let cli =
            CtlCli::try_parse_from(["ctl", "--dcs-url", "etcd3://127.0.0.1:2379", "list", "demo"])
                .expect("arguments");
        let cfg = load_config(&cli, &BTreeMap::new()).expect("configuration");
        assert!(cfg.citus.is_none());
    }

    #[test]
    fn dcs_url_gives_hosts_and_namespace() {
        let (h, ns) = parse_dcs_url("etcd3://127.0.0.1:2379/service").unwrap();
        assert_eq!(h, vec!["127.0.0.1:2379"]);
        assert_eq!(ns.as_deref(), Some("/service"));
        let (h, ns) = parse_dcs_url("etcd3://a,b:1").unwrap();
        assert_eq!(h, vec!["a:2379", "b:1"]);
        assert!(ns.is_none());
        assert!(parse_dcs_url("consul://x").is_err());
    }

    #[test]
    fn placeholders_fill_only_what_is_missing() {
        let mut t = serde_json::json!({"name": "m1", "postgresql": {"data_dir": "/d"}})
            .as_object()
            .cloned()
            .unwrap();
        fill_placeholders(&mut t);
        assert_eq!(t["name"], "m1");
        assert_eq!(t["postgresql"]["data_dir"], "/d");
        assert_eq!(t["postgresql"]["listen"], "127.0.0.1:5432");
    }
}
