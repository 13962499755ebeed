//! `regent ctl`: patronictl's commands for a Regent (or Patroni) cluster. Reads the DCS directly
//! with the agent's backends and configuration loader, and calls members' REST APIs for
//! operations. It never publishes member data or takes a lock: the only DCS writes are the ones
//! an operator asks for (dynamic config, failover object).

mod api;
mod cmd;
mod context;
mod edit;
#[cfg(test)]
mod fixtures;
mod listing;
mod members;
mod output;
mod prompt;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};

use crate::config::{self, Config};
use output::Format;

/// Exit codes: 0 done, 1 the operation failed or was refused, 2 usage or configuration error.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Placeholder member name: ctl is no member, but the loader and backends want one.
const CTL_NAME: &str = "regent-ctl";

#[derive(Parser, Debug)]
// bin_name: `main` hands clap the arguments from "ctl" on, and clap would otherwise name the
// program after that first argument ("Usage: ctl ...").
#[command(
    name = "regent ctl",
    bin_name = "regent ctl",
    version,
    about = "Manage a Patroni-compatible cluster (patronictl's commands)"
)]
struct CtlCli {
    /// Configuration file or directory (the agent's, or a patronictl one).
    /// Default: $PATRONICTL_CONFIG_FILE, else ~/.config/patroni/patronictl.yaml when present.
    #[arg(short = 'c', long = "config-file")]
    config_file: Option<PathBuf>,
    /// DCS to use instead of the configured one: etcd3://host:port[/namespace].
    #[arg(short = 'd', long = "dcs-url")]
    dcs_url: Option<String>,
    /// Do not verify TLS certificates of REST APIs.
    #[arg(short = 'k', long)]
    insecure: bool,
    /// Log requests and answers on stderr.
    #[arg(long)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct ListArgs {
    cluster_name: Option<String>,
    /// Citus group (default: the coordinator and every worker group).
    #[arg(long)]
    group: Option<u32>,
    /// Show pending restarts, scheduled restarts and tags.
    #[arg(short = 'e', long)]
    extended: bool,
    /// Print a timestamp first.
    #[arg(short = 't', long = "timestamp")]
    timestamp: bool,
    #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
    format: Format,
    /// Repeat every 2 seconds.
    #[arg(short = 'W')]
    watch_default: bool,
    /// Repeat every N seconds.
    #[arg(short = 'w', long = "watch")]
    watch: Option<f64>,
}

/// The values of `--role` (patronictl's, with its old names).
const ROLES: [&str; 7] = [
    "leader",
    "primary",
    "standby-leader",
    "replica",
    "standby",
    "any",
    "master",
];

/// The members a command acts on: named ones (all when none), of a role.
#[derive(Args, Debug, Clone)]
struct MemberSelection {
    cluster_name: String,
    member_names: Vec<String>,
    #[arg(long)]
    group: Option<u32>,
    /// Only members with this role.
    #[arg(short = 'r', long, value_parser = ROLES)]
    role: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the members of a cluster.
    List(ListArgs),
    /// Members as a tree of who replicates from whom.
    Topology(ListArgs),
    /// Timeline history.
    History {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<u32>,
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
    },
    /// The dynamic configuration in the DCS, as YAML.
    ShowConfig {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<u32>,
    },
    /// Change the dynamic configuration in the DCS.
    EditConfig {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<u32>,
        #[command(flatten)]
        edit: cmd::edit_config::EditArgs,
    },
    /// Versions of regent ctl and of the members.
    Version {
        cluster_name: Option<String>,
        member_names: Vec<String>,
        #[arg(long)]
        group: Option<u32>,
    },
    /// Maintenance mode on: members take no automatic action.
    Pause {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<u32>,
        /// Wait until every member reports it.
        #[arg(long)]
        wait: bool,
    },
    /// Maintenance mode off.
    Resume {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<u32>,
        #[arg(long)]
        wait: bool,
    },
    /// Hand the leadership over to a replica.
    Switchover {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<u32>,
        /// The current leader.
        #[arg(long, alias = "master", alias = "primary")]
        leader: Option<String>,
        /// The member to promote.
        #[arg(long)]
        candidate: Option<String>,
        /// When (ISO 8601 timestamp with time zone, or `now`).
        #[arg(long)]
        scheduled: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Promote a replica now (also when there is no leader).
    Failover {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<u32>,
        #[arg(long, hide = true)]
        leader: Option<String>,
        #[arg(long)]
        candidate: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Restart Postgres on members.
    Restart {
        #[command(flatten)]
        members: MemberSelection,
        #[command(flatten)]
        options: cmd::restart::RestartOptions,
    },
    /// Reload the configuration of members.
    Reload {
        #[command(flatten)]
        members: MemberSelection,
        #[arg(long)]
        force: bool,
    },
    /// Discard a scheduled restart or switchover: `flush CLUSTER [MEMBER...] restart|switchover`.
    Flush {
        cluster_name: String,
        /// Members (for restart), then the target: restart or switchover.
        #[arg(required = true, num_args = 1..)]
        rest: Vec<String>,
        #[arg(long)]
        group: Option<u32>,
        #[arg(short = 'r', long, value_parser = ROLES)]
        role: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Rebuild replicas from the leader.
    Reinit {
        cluster_name: String,
        member_names: Vec<String>,
        #[arg(long)]
        group: Option<u32>,
        #[arg(long)]
        force: bool,
        /// Wait until the rebuild is over.
        #[arg(long)]
        wait: bool,
    },
}

impl Command {
    fn cluster_name(&self) -> Option<&str> {
        match self {
            Command::List(a) | Command::Topology(a) => a.cluster_name.as_deref(),
            Command::History { cluster_name, .. }
            | Command::ShowConfig { cluster_name, .. }
            | Command::EditConfig { cluster_name, .. }
            | Command::Version { cluster_name, .. }
            | Command::Pause { cluster_name, .. }
            | Command::Resume { cluster_name, .. }
            | Command::Switchover { cluster_name, .. }
            | Command::Failover { cluster_name, .. } => cluster_name.as_deref(),
            Command::Restart { members, .. } | Command::Reload { members, .. } => {
                Some(&members.cluster_name)
            }
            Command::Reinit { cluster_name, .. } | Command::Flush { cluster_name, .. } => {
                Some(cluster_name)
            }
        }
    }

    /// Commands that, on a Citus cluster without `--group`, cover the coordinator and every
    /// worker group (patronictl's `--group` without a default). The others (pause, resume,
    /// history, show-config, edit-config) default to the configured group.
    fn spans_all_groups(&self) -> bool {
        matches!(
            self,
            Command::List(_)
                | Command::Topology(_)
                | Command::Version { .. }
                | Command::Switchover { .. }
                | Command::Failover { .. }
                | Command::Restart { .. }
                | Command::Reload { .. }
                | Command::Reinit { .. }
                | Command::Flush { .. }
        )
    }

    fn group(&self) -> Option<u32> {
        match self {
            Command::List(a) | Command::Topology(a) => a.group,
            Command::History { group, .. }
            | Command::ShowConfig { group, .. }
            | Command::EditConfig { group, .. }
            | Command::Version { group, .. }
            | Command::Pause { group, .. }
            | Command::Resume { group, .. }
            | Command::Switchover { group, .. }
            | Command::Failover { group, .. }
            | Command::Reinit { group, .. }
            | Command::Flush { group, .. } => *group,
            Command::Restart { members, .. } | Command::Reload { members, .. } => members.group,
        }
    }
}

/// Which Citus groups a command shows and acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Groups {
    /// Not a Citus cluster.
    Plain,
    /// One group: `--group`, or the configured one for commands that default to it.
    One(u32),
    /// The coordinator and every worker group (a Citus cluster without `--group`).
    All,
}

/// A failure to report: message on stderr and exit code.
#[derive(Debug)]
pub struct CtlError {
    code: u8,
    msg: String,
}

impl CtlError {
    fn failed(msg: impl std::fmt::Display) -> CtlError {
        CtlError {
            code: EXIT_FAILED,
            msg: msg.to_string(),
        }
    }
    fn usage(msg: impl std::fmt::Display) -> CtlError {
        CtlError {
            code: EXIT_USAGE,
            msg: msg.to_string(),
        }
    }
}

/// Output that cannot be written (a closed pipe): the command cannot go on.
impl From<std::io::Error> for CtlError {
    fn from(e: std::io::Error) -> CtlError {
        CtlError::failed(format!("cannot write the output: {e}"))
    }
}

type CtlResult<T = ()> = Result<T, CtlError>;

/// Entry point: `args` starts with `ctl`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli = match CtlCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The DCS clients' retry warnings are noise for a one-shot command; errors say enough.
    let level = if cli.debug { "debug" } else { "warn,dcs=error" };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REGENT_CTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .try_init();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let cfg = match load_config(&cli, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("regent ctl: {}", e.msg);
            return ExitCode::from(e.code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("regent ctl: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let groups = match &cfg.citus {
        None => Groups::Plain,
        Some(_) if cli.command.group().is_none() && cli.command.spans_all_groups() => Groups::All,
        Some(c) => Groups::One(c.group),
    };
    match runtime.block_on(cmd::run(cli, cfg, groups)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", e.msg);
            ExitCode::from(e.code)
        }
    }
}

/// The agent's loader, made lenient: ctl needs only the scope, the DCS section and the REST
/// credentials, so keys a member needs (name, restapi, postgresql) get placeholders when absent.
fn load_config(cli: &CtlCli, env: &BTreeMap<String, String>) -> CtlResult<Config> {
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

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
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

fn parse_yaml(text: &str, origin: &str) -> CtlResult<Map<String, Value>> {
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

    /// Help and usage errors name the command as typed: `regent ctl`, for subcommands too.
    #[test]
    fn usage_names_regent_ctl() {
        let help = CtlCli::try_parse_from(["ctl", "--help"])
            .expect_err("--help stops parsing")
            .to_string();
        assert!(
            help.contains("Usage: regent ctl [OPTIONS] <COMMAND>"),
            "{help}"
        );
        let sub = CtlCli::try_parse_from(["ctl", "list", "--help"])
            .expect_err("--help stops parsing")
            .to_string();
        assert!(sub.contains("Usage: regent ctl list [OPTIONS]"), "{sub}");
        let wrong = CtlCli::try_parse_from(["ctl", "no-such-command"])
            .expect_err("an unknown subcommand is refused")
            .to_string();
        assert!(
            wrong.contains("Usage: regent ctl [OPTIONS] <COMMAND>"),
            "{wrong}"
        );
        assert!(!wrong.contains("Usage: ctl"), "{wrong}");
    }

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
