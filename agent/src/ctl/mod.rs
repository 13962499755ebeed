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
mod load;
mod members;
mod output;
mod prompt;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use load::load_config;
use output::Format;

/// Exit codes: 0 done, 1 the operation failed or was refused, 2 usage or configuration error.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

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

impl ListArgs {
    /// A single listing of every member in `format`, nothing extended.
    fn once(format: Format) -> ListArgs {
        ListArgs {
            cluster_name: None,
            group: None,
            extended: false,
            timestamp: false,
            format,
            watch_default: false,
            watch: None,
        }
    }
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
}
