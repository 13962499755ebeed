//! The commands: read the cluster from the DCS, print it, or act through members' REST APIs.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use dcs::{Cluster, Member};
use reqwest::Method;
use serde_json::{json, Map, Value};
use tracing::debug;

use super::api::Api;
use super::edit;
use super::output::{to_flow_yaml, to_yaml, Format, Table};
use super::{Command, CtlCli, CtlError, CtlResult, Groups, ListArgs};
use crate::config::{Config, DynamicConfig};

const DCS_TIMEOUT: Duration = Duration::from_secs(15);

struct Ctx {
    cfg: Config,
    dcs: Arc<dyn dcs::Dcs>,
    api: Api,
    /// The Citus groups this command covers. `All`: `dcs` is the coordinator's (group 0), whose
    /// one read also fills `Cluster::workers`.
    groups: Groups,
}

impl Ctx {
    async fn cluster(&self) -> CtlResult<Cluster> {
        read_cluster(self.dcs.as_ref()).await
    }
}

async fn read_cluster(dcs: &dyn dcs::Dcs) -> CtlResult<Cluster> {
    match tokio::time::timeout(DCS_TIMEOUT, dcs.get_cluster()).await {
        Ok(Ok(c)) => {
            for w in &c.warnings {
                debug!("DCS: {w}");
            }
            Ok(c)
        }
        Ok(Err(e)) => Err(CtlError::failed(format!("cannot read the cluster: {e}"))),
        Err(_) => Err(CtlError::failed(format!(
            "cannot read the cluster: the {} DCS did not answer within {} s",
            dcs.kind(),
            DCS_TIMEOUT.as_secs()
        ))),
    }
}

async fn connect_dcs(cfg: &Config) -> CtlResult<Arc<dyn dcs::Dcs>> {
    crate::build_dcs(cfg)
        .await
        .map_err(|e| CtlError::failed(format!("cannot set up the DCS: {e}")))
}

/// The groups a command covers, each with its number (`None`: not a Citus cluster), the
/// coordinator first, then the workers in group order.
fn group_views(groups: Groups, cluster: &Cluster) -> Vec<(Option<u32>, &Cluster)> {
    match groups {
        Groups::Plain => vec![(None, cluster)],
        Groups::One(g) => vec![(Some(g), cluster)],
        Groups::All => std::iter::once((Some(0), cluster))
            .chain(cluster.workers.iter().map(|(g, w)| (Some(*g), w)))
            .collect(),
    }
}

pub(super) async fn run(cli: CtlCli, cfg: Config, groups: Groups) -> CtlResult {
    let dcs = connect_dcs(&cfg).await?;
    let api = Api::new(&cfg, cli.insecure).map_err(CtlError::usage)?;
    let ctx = Ctx {
        cfg,
        dcs,
        api,
        groups,
    };
    match cli.command {
        Command::List(a) => list(&ctx, &a, false).await,
        Command::Topology(a) => list(&ctx, &a, true).await,
        Command::History { format, .. } => history(&ctx, format).await,
        Command::ShowConfig { .. } => show_config(&ctx).await,
        Command::EditConfig {
            quiet,
            set,
            pg,
            apply,
            replace,
            force,
            ..
        } => {
            edit_config(
                &ctx,
                EditArgs {
                    quiet,
                    set,
                    pg,
                    apply,
                    replace,
                    force,
                },
            )
            .await
        }
        Command::Version { member_names, .. } => version(&ctx, &member_names).await,
        Command::Pause { wait, .. } => toggle_pause(&ctx, true, wait).await,
        Command::Resume { wait, .. } => toggle_pause(&ctx, false, wait).await,
        Command::Switchover {
            leader,
            candidate,
            scheduled,
            force,
            ..
        } => failover(&ctx, true, leader, candidate, scheduled, force).await,
        Command::Failover {
            leader,
            candidate,
            force,
            ..
        } => failover(&ctx, leader.is_some(), leader, candidate, None, force).await,
        Command::Restart {
            member_names,
            role,
            any,
            scheduled,
            pg_version,
            pending,
            timeout,
            force,
            ..
        } => {
            restart(
                &ctx,
                RestartArgs {
                    members: member_names,
                    role,
                    any,
                    scheduled,
                    pg_version,
                    pending,
                    timeout,
                    force,
                },
            )
            .await
        }
        Command::Reload {
            member_names,
            role,
            force,
            ..
        } => reload(&ctx, &member_names, role.as_deref(), force).await,
        Command::Reinit {
            member_names,
            force,
            wait,
            ..
        } => reinit(&ctx, &member_names, force, wait).await,
        Command::Flush {
            mut rest,
            role,
            force,
            ..
        } => {
            let target = rest.pop().unwrap_or_default();
            flush(&ctx, &rest, &target, role.as_deref(), force).await
        }
    }
}

fn timestamp() -> String {
    chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
}

/// Ask a yes/no question on the terminal; no terminal or no answer means no.
fn confirm(question: &str) -> bool {
    print!("{question} [y/N]: ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

fn prompt(question: &str, default: &str) -> String {
    print!("{question} [{default}]: ");
    read_answer(default)
}

/// A question without a default (`Citus group: `).
fn ask(question: &str) -> String {
    print!("{question}: ");
    read_answer("")
}

fn read_answer(default: &str) -> String {
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let t = line.trim();
    if t.is_empty() {
        default.to_string()
    } else {
        t.to_string()
    }
}

// ---------------------------------------------------------------- list / topology

fn dynamic(cluster: &Cluster) -> DynamicConfig {
    let raw = cluster
        .config
        .as_ref()
        .map(|c| c.raw.clone())
        .unwrap_or(Value::Null);
    DynamicConfig::from_value(&raw).0
}

fn is_sync_mode(cluster: &Cluster) -> bool {
    cluster
        .config
        .as_ref()
        .and_then(|c| c.raw.get("synchronous_mode"))
        .is_some_and(|v| match v {
            Value::Bool(b) => *b,
            Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "on" | "true" | "quorum"),
            _ => false,
        })
}

/// `leader`, `standby_leader`, `sync_standby` or `replica`, as patronictl names roles.
fn member_role(cluster: &Cluster, m: &Member) -> &'static str {
    if cluster.leader_name() == Some(m.name.as_str()) {
        if dynamic(cluster).is_standby_cluster() {
            "standby_leader"
        } else {
            "leader"
        }
    } else if is_sync_mode(cluster) && cluster.sync.sync_standby.iter().any(|s| s == &m.name) {
        "sync_standby"
    } else {
        "replica"
    }
}

fn title_case(role: &str) -> String {
    role.split('_')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn sorted_members(cluster: &Cluster) -> Vec<&Member> {
    let mut members: Vec<&Member> = cluster.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members
}

/// Member names in tree order (leader, then who replicates from whom) with their prefixes.
fn topology_order<'a>(cluster: &'a Cluster, members: &[&'a Member]) -> Vec<(&'a Member, String)> {
    let leader = members
        .iter()
        .find(|m| member_role(cluster, m).ends_with("leader"))
        .map(|m| m.name.clone());
    let replicas: Vec<&str> = members
        .iter()
        .filter(|m| Some(&m.name) != leader.as_ref())
        .map(|m| m.name.as_str())
        .collect();
    let parent_of = |m: &Member| -> Option<String> {
        match m.data.tags.replicatefrom() {
            Some(p) if p != m.name && replicas.contains(&p) => Some(p.to_string()),
            _ => leader.clone(),
        }
    };
    let mut out = Vec::new();
    fn walk<'a>(
        level: usize,
        parent: Option<&str>,
        members: &[&'a Member],
        parent_of: &dyn Fn(&Member) -> Option<String>,
        leader: Option<&str>,
        out: &mut Vec<(&'a Member, String)>,
    ) {
        for m in members {
            if Some(m.name.as_str()) == leader || parent_of(m).as_deref() != parent {
                continue;
            }
            if out.iter().any(|(o, _)| o.name == m.name) {
                continue;
            }
            let prefix = format!("{}+ ", " ".repeat(2 * level.saturating_sub(1)));
            out.push((*m, format!("{prefix}{}", m.name)));
            walk(level + 1, Some(&m.name), members, parent_of, leader, out);
        }
    }
    if let Some(l) = members.iter().find(|m| Some(&m.name) == leader.as_ref()) {
        out.push((*l, l.name.clone()));
    }
    walk(
        1,
        leader.as_deref(),
        members,
        &parent_of,
        leader.as_deref(),
        &mut out,
    );
    // Members in a replication loop, or with no leader at all: list them flat.
    for m in members {
        if !out.iter().any(|(o, _)| o.name == m.name) {
            out.push((*m, m.name.clone()));
        }
    }
    out
}

fn lag_mb(bytes: u64) -> Value {
    Value::from(((bytes as f64) / 1024.0 / 1024.0).round() as u64)
}

async fn list(ctx: &Ctx, a: &ListArgs, topology: bool) -> CtlResult {
    let interval = a
        .watch
        .or(a.watch_default.then_some(2.0))
        .map(|s| Duration::from_secs_f64(s.max(0.1)));
    loop {
        let cluster = ctx.cluster().await?;
        if a.timestamp {
            println!("{}", chrono::Local::now().format("%Y-%m-%d %H:%M:%S"));
        }
        print!(
            "{}",
            render_members(&ctx.cfg, ctx.groups, &cluster, a, topology)
        );
        let Some(i) = interval else {
            return Ok(());
        };
        tokio::time::sleep(i).await;
        if std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H");
        }
    }
}

fn render_members(
    cfg: &Config,
    groups: Groups,
    cluster: &Cluster,
    a: &ListArgs,
    topology: bool,
) -> String {
    let fmt = a.format;
    let views = group_views(groups, cluster);
    // Columns, the host:port choice and the extended columns look at every group shown.
    let all_members: Vec<&Member> = views.iter().flat_map(|(_, c)| c.members.iter()).collect();

    let mut columns: Vec<&str> = vec!["Cluster", "Member", "Host", "Role", "State", "TL"];
    columns.extend(["Receive LSN", "Receive Lag", "Replay LSN", "Replay Lag"]);
    if groups != Groups::Plain {
        columns.insert(1, "Group");
    }
    let any_pending = all_members
        .iter()
        .any(|m| m.data.pending_restart == Some(true));
    let any_reason = all_members.iter().any(|m| {
        m.data
            .pending_restart_reason
            .as_ref()
            .is_some_and(|r| r.as_object().is_some_and(|o| !o.is_empty()))
    });
    let any_sched = all_members
        .iter()
        .any(|m| m.data.scheduled_restart.is_some());
    let any_tags = all_members.iter().any(|m| !m.data.tags.is_empty());
    for (c, any) in [
        ("Pending restart", any_pending),
        ("Pending restart reason", any_reason),
        ("Scheduled restart", any_sched),
        ("Tags", any_tags),
    ] {
        if a.extended || any {
            columns.push(c);
        }
    }
    let hosts: Vec<(String, u16)> = all_members
        .iter()
        .filter_map(|m| m.data.conn_host_port())
        .collect();
    let mut distinct: Vec<&String> = hosts.iter().map(|(h, _)| h).collect();
    distinct.sort();
    distinct.dedup();
    let append_port = hosts.iter().any(|(_, p)| *p != 5432) || distinct.len() < hosts.len();

    let mut rows = Vec::new();
    for (group, group_cluster) in &views {
        let members = sorted_members(group_cluster);
        let ordered: Vec<(&Member, String)> = if topology {
            topology_order(group_cluster, &members)
        } else {
            members.iter().map(|m| (*m, m.name.clone())).collect()
        };
        for (m, shown_name) in &ordered {
            let cells = MemberCells::of(group_cluster, m, fmt, topology, append_port);
            let row: Vec<Value> = columns
                .iter()
                .map(|c| match *c {
                    "Cluster" => Value::String(cfg.scope.clone()),
                    "Group" => group.map(Value::from).unwrap_or(json!("")),
                    "Member" => Value::String(shown_name.clone()),
                    other => cells.get(other),
                })
                .collect();
            rows.push(row);
        }
    }

    let initialize = match cluster.initialize.as_deref() {
        None => "uninitialized".to_string(),
        Some("") => "initializing".to_string(),
        Some(s) => s.to_string(),
    };
    let title = match groups {
        Groups::Plain => format!(" Cluster: {} ({initialize}) ", cfg.scope),
        Groups::One(g) => format!(" Citus cluster: {} (group: {g}, {initialize}) ", cfg.scope),
        Groups::All => format!(" Citus cluster: {} ", cfg.scope),
    };
    let mut columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    if matches!(fmt, Format::Pretty) {
        // The cluster name (and a single group) is in the title; every group listed keeps its
        // column. Both lag columns are just "Lag".
        let skip = if matches!(groups, Groups::One(_)) {
            2
        } else {
            1
        };
        columns.drain(..skip);
        for r in &mut rows {
            r.drain(..skip);
        }
        for c in &mut columns {
            if c == "Receive Lag" || c == "Replay Lag" {
                *c = "Lag".into();
            }
        }
    }
    let table = Table {
        columns,
        rows,
        right: vec!["Group", "Receive LSN", "Replay LSN", "Lag", "TL"],
        title,
    };
    let mut out = table.render(fmt);
    if matches!(fmt, Format::Pretty) {
        for (group, group_cluster) in &views {
            let info = service_info(group_cluster);
            if info.is_empty() {
                continue;
            }
            if let (Groups::All, Some(g)) = (groups, group) {
                out.push_str(&format!("Citus group: {g}\n"));
            }
            out.push(' ');
            out.push_str(&info.join("\n "));
            out.push('\n');
        }
    }
    out
}

/// Maintenance mode and a scheduled switchover, printed under a pretty listing.
fn service_info(cluster: &Cluster) -> Vec<String> {
    let mut info = Vec::new();
    if cluster.is_paused() {
        info.push("Maintenance mode: on".to_string());
    }
    if let Some(f) = cluster
        .failover
        .as_ref()
        .filter(|f| f.scheduled_at.is_some())
    {
        let mut line = format!(
            "Switchover scheduled at: {}",
            f.scheduled_at.as_deref().unwrap_or_default()
        );
        if let Some(l) = &f.leader {
            line.push_str(&format!("\n{:>24}: {l}", "from"));
        }
        if let Some(c) = &f.member {
            line.push_str(&format!("\n{:>24}: {c}", "to"));
        }
        info.push(line);
    }
    info
}

/// The cells of one member's row that depend on the member and its group only.
struct MemberCells {
    host: String,
    role: &'static str,
    state: String,
    timeline: Value,
    receive_lsn: Value,
    receive_lag: Value,
    replay_lsn: Value,
    replay_lag: Value,
    pending_restart: bool,
    reason: String,
    scheduled: String,
    tags: Value,
}

impl MemberCells {
    fn of(
        cluster: &Cluster,
        m: &Member,
        fmt: Format,
        topology: bool,
        append_port: bool,
    ) -> MemberCells {
        let cluster_lsn = cluster.status.optime.unwrap_or(0);
        let role = member_role(cluster, m);
        let is_leader = cluster.leader_name() == Some(m.name.as_str());
        let state = if role != "leader" {
            m.data
                .replication_state
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| m.data.state.to_string())
        } else {
            m.data.state.to_string()
        };
        let host = match m.data.conn_host_port() {
            Some((h, p)) if append_port => format!("{h}:{p}"),
            Some((h, _)) => h,
            None => String::new(),
        };
        let lsn_cells = |lsn: Option<u64>| -> (Value, Value) {
            match lsn {
                _ if is_leader => (json!(""), json!("")),
                None | Some(0) => (json!(""), json!("")),
                Some(l) => (
                    Value::String(dcs::format_lsn(l)),
                    lag_mb(cluster_lsn.saturating_sub(l)),
                ),
            }
        };
        let (mut receive_lsn, mut receive_lag) = lsn_cells(m.data.receive_lsn);
        let (mut replay_lsn, mut replay_lag) = lsn_cells(m.data.replay_lsn);
        // Members that publish only `xlog_location` (older Patroni): one position.
        if !is_leader && m.data.receive_lsn.is_none() && m.data.replay_lsn.is_none() {
            let (l, g) = lsn_cells(m.data.xlog_location);
            if state == "streaming" {
                (receive_lsn, receive_lag) = (l, g);
            } else {
                (replay_lsn, replay_lag) = (l, g);
            }
        }
        let reason = m
            .data
            .pending_restart_reason
            .as_ref()
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        let old = v.get("old_value").map(cell).unwrap_or_default();
                        let new = v.get("new_value").map(cell).unwrap_or_default();
                        let full = format!("{k}: {old}->{new}");
                        if matches!(fmt, Format::Pretty) && full.len() > 50 {
                            format!("{k}: [hidden - too long]")
                        } else {
                            full
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        let scheduled = m
            .data
            .scheduled_restart
            .as_ref()
            .map(|s| {
                let mut v = s.get("schedule").map(cell).unwrap_or_default();
                if let Some(pv) = s.get("postgres_version") {
                    v.push_str(&format!(" if version < {}", cell(pv)));
                }
                v
            })
            .unwrap_or_default();
        let tags = if m.data.tags.is_empty() {
            json!("")
        } else if matches!(fmt, Format::Pretty) && !topology {
            Value::String(
                to_yaml(&Value::Object(m.data.tags.0.clone()))
                    .trim()
                    .to_string(),
            )
        } else if matches!(fmt, Format::Pretty | Format::Tsv) {
            // patronictl: YAML flow style in TSV and in the topology view.
            Value::String(to_flow_yaml(&Value::Object(m.data.tags.0.clone())))
        } else {
            Value::Object(m.data.tags.0.clone())
        };
        MemberCells {
            host,
            role,
            state,
            timeline: m.data.timeline.map(Value::from).unwrap_or(json!("")),
            receive_lsn,
            receive_lag,
            replay_lsn,
            replay_lag,
            pending_restart: m.data.pending_restart == Some(true),
            reason,
            scheduled,
            tags,
        }
    }

    fn get(&self, column: &str) -> Value {
        match column {
            "Host" => Value::String(self.host.clone()),
            "Role" => Value::String(title_case(self.role)),
            "State" => Value::String(self.state.clone()),
            "TL" => self.timeline.clone(),
            "Receive LSN" => self.receive_lsn.clone(),
            "Receive Lag" => self.receive_lag.clone(),
            "Replay LSN" => self.replay_lsn.clone(),
            "Replay Lag" => self.replay_lag.clone(),
            "Pending restart" => json!(if self.pending_restart { "*" } else { "" }),
            "Pending restart reason" => Value::String(self.reason.clone()),
            "Scheduled restart" => Value::String(self.scheduled.clone()),
            "Tags" => self.tags.clone(),
            _ => json!(""),
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------- history / config / version

async fn history(ctx: &Ctx, fmt: Format) -> CtlResult {
    let cluster = ctx.cluster().await?;
    let rows = cluster
        .history
        .iter()
        .map(|h| {
            vec![
                Value::from(h.timeline),
                Value::from(h.lsn),
                Value::String(h.reason.clone()),
                Value::String(h.timestamp.clone().unwrap_or_default()),
                Value::String(h.new_leader.clone().unwrap_or_default()),
            ]
        })
        .collect();
    let table = Table {
        columns: ["TL", "LSN", "Reason", "Timestamp", "New Leader"]
            .map(String::from)
            .to_vec(),
        rows,
        right: vec!["TL", "LSN"],
        title: String::new(),
    };
    print!("{}", table.render(fmt));
    Ok(())
}

async fn show_config(ctx: &Ctx) -> CtlResult {
    let cluster = ctx.cluster().await?;
    let raw = cluster
        .config
        .map(|c| c.raw)
        .unwrap_or_else(|| Value::Object(Map::new()));
    print!("{}", to_yaml(&raw));
    Ok(())
}

fn format_pg_version(v: u64) -> String {
    if v < 100000 {
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    } else {
        format!("{}.{}", v / 10000, v % 100)
    }
}

async fn version(ctx: &Ctx, names: &[String]) -> CtlResult {
    println!("regent ctl version {}", env!("CARGO_PKG_VERSION"));
    let cluster = ctx.cluster().await?;
    println!();
    let members = group_views(ctx.groups, &cluster)
        .into_iter()
        .flat_map(|(_, c)| sorted_members(c));
    for m in members {
        if !names.is_empty() && !names.contains(&m.name) {
            continue;
        }
        let Some(url) = m.data.api_url.as_deref() else {
            println!("{}: failed to get version: no api_url", m.name);
            continue;
        };
        match ctx.api.get_json(url, "patroni").await {
            Ok(v) => {
                let version = v.pointer("/patroni/version").map(cell).unwrap_or_default();
                let pg = v
                    .get("server_version")
                    .and_then(Value::as_u64)
                    .map(|n| format!(" PostgreSQL {}", format_pg_version(n)))
                    .unwrap_or_default();
                println!("{}: Patroni {version}{pg}", m.name);
            }
            Err(e) => println!("{}: failed to get version: {e}", m.name),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- pause / resume / edit-config

/// Leader first, then the others by name (patronictl's order for cluster-wide calls).
fn leader_first(cluster: &Cluster) -> Vec<&Member> {
    let mut out: Vec<&Member> = cluster.leader_member().into_iter().collect();
    out.extend(
        sorted_members(cluster)
            .into_iter()
            .filter(|m| Some(m.name.as_str()) != cluster.leader_name()),
    );
    out
}

/// PATCH /config on the first member that answers; when the REST API does not offer it (501)
/// or nobody answers, CAS-write the DCS config. Returns the config written.
async fn patch_config(ctx: &Ctx, cluster: &Cluster, patch: Map<String, Value>) -> CtlResult<Value> {
    for m in leader_first(cluster) {
        let Some(url) = m.data.api_url.as_deref() else {
            continue;
        };
        match ctx
            .api
            .request(
                url,
                Method::PATCH,
                "config",
                Some(&Value::Object(patch.clone())),
                None,
            )
            .await
        {
            Ok(a) if a.status == 200 => {
                debug!(member = %m.name, "config changed with PATCH /config");
                return serde_json::from_str(&a.body).or(Ok(Value::Null));
            }
            Ok(a) if a.status == 501 => {
                debug!(member = %m.name, "PATCH /config not offered (501): writing the DCS config with CAS");
                break;
            }
            Ok(a) => {
                return Err(CtlError::failed(format!(
                    "PATCH /config on {} answered {}: {}",
                    m.name,
                    a.status,
                    a.body.trim()
                )))
            }
            Err(e) => debug!("member {} is not accessible: {e}", m.name),
        }
    }
    debug!("changing the config with a CAS write in the DCS");
    let mut current = cluster.clone();
    for _ in 0..5 {
        let mut raw = current
            .config
            .as_ref()
            .and_then(|c| c.raw.as_object().cloned())
            .unwrap_or_default();
        edit::merge(&mut raw, patch.clone());
        let version = current.config.as_ref().and_then(|c| c.version.clone());
        let value = Value::Object(raw);
        if write_config(ctx, &value, version.as_deref()).await? {
            return Ok(value);
        }
        current = ctx.cluster().await?;
    }
    Err(CtlError::failed(
        "the configuration kept changing while writing it; try again",
    ))
}

async fn write_config(ctx: &Ctx, value: &Value, version: Option<&str>) -> CtlResult<bool> {
    ctx.dcs
        .set_config_value(value, version)
        .await
        .map_err(|e| CtlError::failed(format!("cannot write the configuration: {e}")))
}

async fn toggle_pause(ctx: &Ctx, paused: bool, wait: bool) -> CtlResult {
    let cluster = ctx.cluster().await?;
    if cluster.is_paused() == paused {
        return Err(CtlError::failed(format!(
            "Cluster is {} paused",
            if paused { "already" } else { "not" }
        )));
    }
    let mut patch = Map::new();
    patch.insert(
        "pause".into(),
        if paused { json!(true) } else { Value::Null },
    );
    patch_config(ctx, &cluster, patch).await?;
    let word = if paused { "paused" } else { "resumed" };
    if wait {
        print!(
            "'{}' request sent, waiting until it is recognized by all nodes",
            if paused { "pause" } else { "resume" }
        );
        let _ = std::io::stdout().flush();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let c = ctx.cluster().await?;
            if c.members
                .iter()
                .all(|m| m.data.pause.unwrap_or(false) == paused)
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                println!();
                return Err(CtlError::failed(
                    "members did not report the change within 120 s",
                ));
            }
            print!(".");
            let _ = std::io::stdout().flush();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!();
    }
    println!("Success: cluster management is {word}");
    Ok(())
}

struct EditArgs {
    quiet: bool,
    set: Vec<String>,
    pg: Vec<String>,
    apply: Option<String>,
    replace: Option<String>,
    force: bool,
}

fn read_input(source: &str) -> CtlResult<Map<String, Value>> {
    let text = if source == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CtlError::failed(format!("cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(source)
            .map_err(|e| CtlError::usage(format!("cannot read {source}: {e}")))?
    };
    super::parse_yaml(&text, source)
}

fn run_editor(current: &str) -> CtlResult<String> {
    let editor = std::env::var("EDITOR")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    let path = std::env::temp_dir().join(format!("regent-ctl-edit-{}.yaml", std::process::id()));
    super::write_private(&path, current)
        .map_err(|e| CtlError::failed(format!("cannot write {}: {e}", path.display())))?;
    // $EDITOR may carry arguments ("code -w").
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status();
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(CtlError::failed(format!("editor {editor} failed: {s}"))),
        Err(e) => return Err(CtlError::failed(format!("cannot run editor {editor}: {e}"))),
    }
    text.map_err(|e| CtlError::failed(format!("cannot read the edited file: {e}")))
}

async fn edit_config(ctx: &Ctx, a: EditArgs) -> CtlResult {
    let cluster = ctx.cluster().await?;
    let Some(cfg) = cluster.config.clone() else {
        return Err(CtlError::failed(
            "the cluster has no configuration in the DCS yet",
        ));
    };
    let before = cfg.raw.as_object().cloned().unwrap_or_default();
    let before_text = to_yaml(&Value::Object(before.clone()));
    let mut after = before.clone();
    if let Some(src) = &a.replace {
        after = read_input(src)?;
    }
    if let Some(src) = &a.apply {
        let overlay = read_input(src)?;
        edit::merge(&mut after, overlay);
    }
    for s in &a.set {
        edit::apply_set(&mut after, s).map_err(CtlError::usage)?;
    }
    for p in &a.pg {
        edit::apply_pg(&mut after, p).map_err(CtlError::usage)?;
    }
    if a.set.is_empty() && a.pg.is_empty() && a.apply.is_none() && a.replace.is_none() {
        let edited = run_editor(&before_text)?;
        after = super::parse_yaml(&edited, "the edited configuration")?;
    }
    let after_text = to_yaml(&Value::Object(after.clone()));
    let diff = edit::diff(&before_text, &after_text);
    if diff.is_empty() {
        println!("Not changed");
        return Ok(());
    }
    if !a.quiet {
        print!("{diff}");
    }
    let (_, issues) = DynamicConfig::read(&Value::Object(after.clone()));
    if let Some(bad) = issues.iter().find(|i| i.invalid) {
        return Err(CtlError::usage(format!(
            "the new configuration is invalid: {}: {}",
            bad.key, bad.msg
        )));
    }
    if !a.force && !confirm("Apply these changes?") {
        return Err(CtlError::failed("Aborted"));
    }
    // CAS on the version read: a concurrent change makes this fail instead of being lost.
    if !write_config(ctx, &Value::Object(after), cfg.version.as_deref()).await? {
        return Err(CtlError::failed(
            "Config modification aborted due to concurrent changes",
        ));
    }
    println!("Configuration changed");
    Ok(())
}

// ---------------------------------------------------------------- switchover / failover

fn parse_scheduled(s: Option<&str>) -> CtlResult<Option<String>> {
    match s.map(str::trim) {
        None | Some("") | Some("now") => Ok(None),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| Some(d.to_rfc3339()))
            .map_err(|e| {
                CtlError::usage(format!(
                    "--scheduled {t}: expected an ISO 8601 time with a time zone ({e})"
                ))
            }),
    }
}

async fn failover(
    ctx: &Ctx,
    switchover: bool,
    leader: Option<String>,
    candidate: Option<String>,
    scheduled: Option<String>,
    force: bool,
) -> CtlResult {
    let action = if switchover { "switchover" } else { "failover" };
    let scope = ctx.cfg.scope.clone();
    let mut cluster = ctx.cluster().await?;
    let mut dcs = ctx.dcs.clone();
    let mut groups = ctx.groups;
    println!("Current cluster topology");
    let list_args = ListArgs {
        cluster_name: None,
        group: None,
        extended: false,
        timestamp: false,
        format: Format::Pretty,
        watch_default: false,
        watch: None,
    };
    print!(
        "{}",
        render_members(&ctx.cfg, ctx.groups, &cluster, &list_args, false)
    );
    if ctx.groups == Groups::All {
        // Every group was shown; the operation is for one of them (patronictl's rule).
        if force {
            return Err(CtlError::failed(
                "For Citus clusters the --group must be specified",
            ));
        }
        let answer = ask("Citus group");
        let group: u32 = answer.parse().map_err(|_| {
            CtlError::usage(format!(
                "Citus group: '{answer}' is not a group number (an integer >= 0)"
            ))
        })?;
        let mut cfg = ctx.cfg.clone();
        if let Some(c) = cfg.citus.as_mut() {
            c.group = group;
        }
        dcs = connect_dcs(&cfg).await?;
        cluster = read_cluster(dcs.as_ref()).await?;
        groups = Groups::One(group);
    }
    let cluster_leader = cluster.leader_name().map(str::to_string);
    let mut leader = leader;
    if switchover {
        let Some(current) = cluster_leader.clone() else {
            return Err(CtlError::failed("This cluster has no leader"));
        };
        let l = match leader.take() {
            Some(l) => l,
            None if force => current.clone(),
            None => prompt("Primary", &current),
        };
        if l != current {
            return Err(CtlError::failed(format!(
                "Member {l} is not the leader of cluster {scope}"
            )));
        }
        leader = Some(l);
    }
    let mut candidates: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| Some(&m.name) != cluster_leader.as_ref() && !m.data.tags.nofailover())
        .map(|m| m.name.clone())
        .collect();
    candidates.sort();
    if candidates.is_empty() {
        return Err(CtlError::failed(format!(
            "No candidates found to {action} to"
        )));
    }
    let candidate = match candidate {
        Some(c) => Some(c),
        None if force => None,
        None => {
            // The list as patronictl prints it (a Python list of strings).
            let shown: Vec<String> = candidates.iter().map(|c| format!("'{c}'")).collect();
            Some(prompt(&format!("Candidate [{}]", shown.join(", ")), "")).filter(|c| !c.is_empty())
        }
    };
    if !switchover && candidate.is_none() {
        return Err(CtlError::usage(
            "Failover could be performed only to a specific candidate",
        ));
    }
    if let Some(c) = &candidate {
        if !candidates.contains(c) {
            if Some(c) == cluster_leader.as_ref() {
                return Err(CtlError::failed(format!(
                    "Member {c} is already the leader of cluster {scope}"
                )));
            }
            return Err(CtlError::failed(format!(
                "Member {c} does not exist in cluster {scope} or is tagged as nofailover"
            )));
        }
    }
    let scheduled_at = if switchover {
        let s = match scheduled {
            Some(s) => Some(s),
            None if force => None,
            None => Some(prompt(
                "When should the switchover take place (e.g. 2030-01-01T12:00+00:00)",
                "now",
            )),
        };
        parse_scheduled(s.as_deref())?
    } else {
        None
    };
    if scheduled_at.is_some() && cluster.is_paused() {
        return Err(CtlError::failed(
            "Can't schedule switchover in the paused state",
        ));
    }
    let mut body = Map::new();
    body.insert("candidate".into(), json!(candidate));
    if switchover {
        body.insert("leader".into(), json!(leader));
    }
    if let Some(at) = &scheduled_at {
        body.insert("scheduled_at".into(), json!(at));
    }
    if !force {
        let demote = cluster_leader
            .as_ref()
            .map(|l| format!(", demoting current leader {l}"))
            .unwrap_or_default();
        let question = match &scheduled_at {
            Some(at) => format!(
                "Are you sure you want to schedule switchover of cluster {scope} at {at}{demote}?"
            ),
            None => format!("Are you sure you want to {action} cluster {scope}{demote}?"),
        };
        if !confirm(&question) {
            return Err(CtlError::failed(format!("Aborting {action}")));
        }
    }
    // Sent to the leader, or (leaderless failover) to the candidate.
    let target = cluster
        .leader_member()
        .or_else(|| candidate.as_deref().and_then(|c| cluster.member(c)));
    let body = Value::Object(body);
    let answer = match target.and_then(|m| m.data.api_url.as_deref()) {
        Some(url) => match ctx
            .api
            .request(
                url,
                Method::POST,
                action,
                Some(&body),
                Some(Duration::from_secs(90)),
            )
            .await
        {
            Ok(a) if a.status == 501 => {
                debug!("POST /{action} answered 501: not offered by this member");
                None
            }
            Ok(a) => Some(a),
            Err(e) => {
                debug!("{e}");
                None
            }
        },
        None => None,
    };
    match answer {
        Some(a) if a.status == 200 || a.status == 202 => {
            println!("{} {}", timestamp(), a.body.trim());
            // The cluster as it is now (patronictl shows it after the operation too).
            match read_cluster(dcs.as_ref()).await {
                Ok(now) => cluster = now,
                Err(e) => debug!("{}", e.msg),
            }
        }
        Some(a) => {
            return Err(CtlError::failed(format!(
                "{} failed, details: {}, {}",
                title_case(action),
                a.status,
                a.body.trim()
            )));
        }
        None => {
            println!(
                "{} Could not {action} using Patroni api, falling back to DCS",
                timestamp()
            );
            debug!("writing the failover object in the DCS");
            let value = dcs::Failover {
                leader: if switchover { leader.clone() } else { None },
                member: candidate.clone(),
                scheduled_at: scheduled_at.clone(),
                version: None,
            };
            let written = dcs
                .set_failover_value(&value, None)
                .await
                .map_err(|e| CtlError::failed(format!("cannot write the failover object: {e}")))?;
            if !written {
                return Err(CtlError::failed("cannot write the failover object"));
            }
        }
    }
    print!(
        "{}",
        render_members(&ctx.cfg, groups, &cluster, &list_args, false)
    );
    Ok(())
}

// ---------------------------------------------------------------- restart / reload / reinit

fn role_matches(cluster: &Cluster, m: &Member, role: Option<&str>) -> bool {
    let is_leader = cluster.leader_name() == Some(m.name.as_str());
    let standby = dynamic(cluster).is_standby_cluster();
    match role.unwrap_or("any") {
        "any" => true,
        "leader" => is_leader,
        "primary" | "master" => is_leader && !standby,
        "standby-leader" => is_leader && standby,
        "replica" | "standby" => !is_leader,
        _ => false,
    }
}

/// Members named on the command line (all when none) of every group the command covers, group
/// by group, filtered by role (judged within each member's group).
fn select_members<'a>(
    groups: Groups,
    cluster: &'a Cluster,
    names: &[String],
    role: Option<&str>,
) -> CtlResult<Vec<&'a Member>> {
    let views = group_views(groups, cluster);
    for n in names {
        if views.iter().all(|(_, c)| c.member(n).is_none()) {
            return Err(CtlError::failed(format!(
                "{n} is not a member of cluster {}",
                cluster
                    .members
                    .first()
                    .map(|_| "this cluster")
                    .unwrap_or("this (empty) cluster")
            )));
        }
    }
    let out: Vec<&Member> = views
        .iter()
        .flat_map(|(_, c)| {
            sorted_members(c)
                .into_iter()
                .filter(move |m| role_matches(c, m, role))
        })
        .filter(|m| names.is_empty() || names.contains(&m.name))
        .collect();
    if out.is_empty() {
        return Err(CtlError::failed("No members to act on"));
    }
    Ok(out)
}

fn confirm_members(members: &[&Member], force: bool, action: &str) -> CtlResult {
    if force {
        return Ok(());
    }
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    if !confirm(&format!(
        "Are you sure you want to {action} members {}?",
        names.join(", ")
    )) {
        return Err(CtlError::failed(format!("Aborted {action}")));
    }
    Ok(())
}

struct RestartArgs {
    members: Vec<String>,
    role: Option<String>,
    any: bool,
    scheduled: Option<String>,
    pg_version: Option<String>,
    pending: bool,
    timeout: Option<String>,
    force: bool,
}

async fn restart(ctx: &Ctx, a: RestartArgs) -> CtlResult {
    let cluster = ctx.cluster().await?;
    let mut members = select_members(ctx.groups, &cluster, &a.members, a.role.as_deref())?;
    let mut body = Map::new();
    if a.pending {
        body.insert("restart_pending".into(), json!(true));
    }
    if let Some(v) = &a.pg_version {
        body.insert("postgres_version".into(), json!(v));
    }
    let scheduled = parse_scheduled(a.scheduled.as_deref())?;
    if let Some(at) = &scheduled {
        if cluster.is_paused() {
            return Err(CtlError::failed(
                "Can't schedule restart in the paused state",
            ));
        }
        body.insert("schedule".into(), json!(at));
    }
    if let Some(t) = &a.timeout {
        body.insert("timeout".into(), json!(t));
    }
    // The role only selects members (patronictl sends no role); without a schedule, --pending
    // keeps the members that report a pending restart now.
    if a.pending && scheduled.is_none() {
        members.retain(|m| m.data.pending_restart == Some(true));
        if members.is_empty() {
            println!("No member has a pending restart");
            return Ok(());
        }
    }
    if a.any {
        // Any one will do; the first keeps it deterministic.
        members.truncate(1);
    }
    confirm_members(&members, a.force, "restart")?;
    let body = Value::Object(body);
    let mut failed = false;
    for m in members {
        let Some(url) = m.data.api_url.as_deref() else {
            println!("Failed: restart for member {}, no api_url", m.name);
            failed = true;
            continue;
        };
        if a.force && scheduled.is_some() {
            let _ = ctx
                .api
                .request(url, Method::DELETE, "restart", None, None)
                .await;
        }
        match ctx
            .api
            .request(url, Method::POST, "restart", Some(&body), None)
            .await
        {
            Ok(r) if r.status == 200 => println!("Success: restart on member {}", m.name),
            Ok(r) if r.status == 202 => println!("Success: restart scheduled on member {}", m.name),
            Ok(r) if r.status == 409 => {
                failed = true;
                println!(
                    "Failed: another restart is already scheduled on member {}",
                    m.name
                )
            }
            Ok(r) => {
                failed = true;
                println!(
                    "Failed: restart for member {}, status code={}, ({})",
                    m.name,
                    r.status,
                    r.body.trim()
                )
            }
            Err(e) => {
                failed = true;
                println!("Failed: restart for member {}: {e}", m.name)
            }
        }
    }
    if failed {
        return Err(CtlError::failed("restart failed on some members"));
    }
    Ok(())
}

async fn reload(ctx: &Ctx, names: &[String], role: Option<&str>, force: bool) -> CtlResult {
    let cluster = ctx.cluster().await?;
    let members = select_members(ctx.groups, &cluster, names, role)?;
    confirm_members(&members, force, "reload")?;
    let mut failed = false;
    for m in members {
        let Some(url) = m.data.api_url.as_deref() else {
            continue;
        };
        match ctx
            .api
            .request(url, Method::POST, "reload", None, None)
            .await
        {
            Ok(r) if r.status == 200 => println!("No changes to apply on member {}", m.name),
            Ok(r) if r.status == 202 => println!(
                "Reload request received for member {} and will be processed within {} seconds",
                m.name,
                dynamic(&cluster).loop_wait
            ),
            Ok(r) => {
                failed = true;
                println!(
                    "Failed: reload for member {}, status code={}, ({})",
                    m.name,
                    r.status,
                    r.body.trim()
                )
            }
            Err(e) => {
                failed = true;
                println!("Failed: reload for member {}: {e}", m.name)
            }
        }
    }
    if failed {
        return Err(CtlError::failed("reload failed on some members"));
    }
    Ok(())
}

async fn reinit(ctx: &Ctx, names: &[String], force: bool, wait: bool) -> CtlResult {
    let cluster = ctx.cluster().await?;
    if names.is_empty() {
        return Err(CtlError::usage("name the members to reinitialize"));
    }
    let members = select_members(ctx.groups, &cluster, names, None)?;
    confirm_members(&members, force, "reinitialize")?;
    let body = json!({ "force": force });
    let mut failed = false;
    let mut started = Vec::new();
    for m in members {
        let Some(url) = m.data.api_url.as_deref() else {
            continue;
        };
        match ctx
            .api
            .request(url, Method::POST, "reinitialize", Some(&body), None)
            .await
        {
            Ok(r) if r.status == 200 => {
                println!("Success: reinitialize for member {}", m.name);
                started.push((m.name.clone(), url.to_string()));
            }
            Ok(r) => {
                failed = true;
                println!(
                    "Failed: reinitialize for member {}, status code={}, ({})",
                    m.name,
                    r.status,
                    r.body.trim()
                )
            }
            Err(e) => {
                failed = true;
                println!("Failed: reinitialize for member {}: {e}", m.name)
            }
        }
    }
    if wait && !started.is_empty() {
        println!(
            "Waiting for reinitialize to complete on: {}",
            started
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (name, url) in &started {
            loop {
                let state = ctx
                    .api
                    .get_json(url, "patroni")
                    .await
                    .ok()
                    .and_then(|v| v.get("state").map(cell));
                if state
                    .as_deref()
                    .is_some_and(|s| s != "creating replica" && s != "stopped" && s != "stopping")
                {
                    println!("Reinitialize is completed on: {name}");
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    if failed {
        return Err(CtlError::failed("reinitialize failed on some members"));
    }
    Ok(())
}

// ---------------------------------------------------------------- flush

async fn flush(
    ctx: &Ctx,
    names: &[String],
    target: &str,
    role: Option<&str>,
    force: bool,
) -> CtlResult {
    let cluster = ctx.cluster().await?;
    match target {
        "restart" => {
            let members = select_members(ctx.groups, &cluster, names, role)?;
            confirm_members(&members, force, "flush")?;
            for m in members {
                if m.data.scheduled_restart.is_none() {
                    println!("No scheduled restart for member {}", m.name);
                    continue;
                }
                let Some(url) = m.data.api_url.as_deref() else {
                    continue;
                };
                match ctx
                    .api
                    .request(url, Method::DELETE, "restart", None, None)
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        println!("Success: flush scheduled restart for member {}", m.name)
                    }
                    Ok(r) => println!(
                        "Failed: flush scheduled restart for member {}, status code={}, ({})",
                        m.name,
                        r.status,
                        r.body.trim()
                    ),
                    Err(e) => {
                        println!("Failed: flush scheduled restart for member {}: {e}", m.name)
                    }
                }
            }
            Ok(())
        }
        "switchover" => {
            if !names.is_empty() {
                return Err(CtlError::usage("flush switchover takes no member names"));
            }
            let Some(failover) = cluster
                .failover
                .as_ref()
                .filter(|f| f.scheduled_at.is_some())
            else {
                println!("No pending scheduled switchover");
                return Ok(());
            };
            for m in leader_first(&cluster) {
                let Some(url) = m.data.api_url.as_deref() else {
                    continue;
                };
                match ctx
                    .api
                    .request(url, Method::DELETE, "switchover", None, None)
                    .await
                {
                    Ok(r) if r.status == 200 || r.status == 404 => {
                        let prefix = if r.status == 200 { "Success" } else { "Failed" };
                        println!("{prefix}: {}", r.body.trim());
                        return Ok(());
                    }
                    Ok(r) if r.status == 501 => break,
                    Ok(r) => println!(
                        "Failed: member={}, status_code={}, ({})",
                        m.name,
                        r.status,
                        r.body.trim()
                    ),
                    Err(e) => debug!("member {} is not accessible: {e}", m.name),
                }
            }
            println!(
                "{} Could not find any accessible member of cluster {}",
                timestamp(),
                ctx.cfg.scope
            );
            debug!("clearing the failover object in the DCS (CAS)");
            let done = ctx
                .dcs
                .delete_failover(failover.version.as_deref())
                .await
                .map_err(|e| CtlError::failed(format!("cannot clear the failover object: {e}")))?;
            if !done {
                return Err(CtlError::failed(
                    "the failover object changed meanwhile; nothing flushed",
                ));
            }
            Ok(())
        }
        other => Err(CtlError::usage(format!(
            "flush: unknown target '{other}', expected restart or switchover"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, data: Value) -> Member {
        Member::new(
            name,
            dcs::MemberData::parse(&data.to_string()).expect("member data"),
        )
    }

    fn cfg() -> Config {
        Config::from_yaml_str(
            "scope: demo\nname: x\netcd3: {hosts: 127.0.0.1:2379}\n\
             restapi: {listen: 127.0.0.1:8008, connect_address: 127.0.0.1:8008}\n\
             postgresql: {listen: 127.0.0.1:5432, connect_address: 127.0.0.1:5432, data_dir: /d,\
             authentication: {superuser: {username: p}, replication: {username: r}}}\n",
        )
        .expect("config")
    }

    fn args(format: Format) -> ListArgs {
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

    fn cluster() -> Cluster {
        let mut c = Cluster {
            initialize: Some("7379".into()),
            leader: Some(dcs::Leader {
                name: "m0".into(),
                version: None,
            }),
            config: Some(dcs::ClusterConfig {
                raw: json!({"synchronous_mode": true}),
                version: None,
            }),
            ..Default::default()
        };
        c.status.optime = Some(3 * 1024 * 1024);
        c.sync.sync_standby = vec!["m1".into()];
        c.members = vec![
            member(
                "m2",
                json!({"conn_url": "postgres://10.0.0.3:5432/postgres", "state": "running",
                "role": "replica", "replication_state": "streaming", "timeline": 1,
                "receive_lsn": 1048576, "replay_lsn": 1048576, "pending_restart": true,
                "tags": {"replicatefrom": "m1"}}),
            ),
            member(
                "m0",
                json!({"conn_url": "postgres://10.0.0.1:5432/postgres", "state": "running",
                "role": "primary", "timeline": 1, "xlog_location": 3145728}),
            ),
            member(
                "m1",
                json!({"conn_url": "postgres://10.0.0.2:5432/postgres", "state": "running",
                "role": "replica", "replication_state": "streaming", "timeline": 1,
                "receive_lsn": 3145728, "replay_lsn": 3145728}),
            ),
        ];
        c
    }

    #[test]
    fn roles_lag_and_pending_restart_as_patronictl_lists_them() {
        let out = render_members(
            &cfg(),
            Groups::Plain,
            &cluster(),
            &args(Format::Json),
            false,
        );
        let rows: Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(rows[0]["Member"], "m0");
        assert_eq!(rows[0]["Role"], "Leader");
        assert_eq!(rows[0]["Host"], "10.0.0.1", "port shown only when needed");
        assert!(rows[0].get("Receive Lag").is_none());
        assert_eq!(rows[1]["Role"], "Sync Standby");
        assert_eq!(rows[1]["Receive Lag"], 0);
        assert_eq!(rows[2]["Role"], "Replica");
        assert_eq!(rows[2]["Replay Lag"], 2);
        assert_eq!(rows[2]["Replay LSN"], "0/100000");
        assert_eq!(rows[2]["Pending restart"], "*");
        assert_eq!(rows[2]["Cluster"], "demo");
        assert!(
            out.starts_with("[{\"Cluster\": \"demo\", \"Member\": \"m0\""),
            "{out}"
        );
    }

    #[test]
    fn pretty_listing_has_the_title_and_lag_columns() {
        let out = render_members(
            &cfg(),
            Groups::Plain,
            &cluster(),
            &args(Format::Pretty),
            false,
        );
        let first = out.lines().next().unwrap_or_default();
        assert!(first.starts_with("+ Cluster: demo (7379) -"), "{out}");
        let header = out.lines().nth(1).unwrap_or_default();
        assert!(
            header.contains("| Member | Host     | Role         | State     | TL | Receive LSN | Lag | Replay LSN | Lag | Pending restart | Tags"),
            "{out}"
        );
    }

    /// A coordinator (the 3-member `cluster()`) with worker group 1: w1-a leads, w1-b streams.
    fn citus_cluster() -> Cluster {
        let mut c = cluster();
        let mut worker = Cluster {
            initialize: Some("7380".into()),
            leader: Some(dcs::Leader {
                name: "w1-a".into(),
                version: None,
            }),
            config: Some(dcs::ClusterConfig {
                raw: json!({"pause": true}),
                version: None,
            }),
            ..Default::default()
        };
        worker.status.optime = Some(1024 * 1024);
        worker.members = vec![
            member(
                "w1-b",
                json!({"conn_url": "postgres://10.0.1.2:5432/postgres", "state": "running",
                "role": "replica", "replication_state": "streaming", "timeline": 2,
                "receive_lsn": 1048576, "replay_lsn": 1048576}),
            ),
            member(
                "w1-a",
                json!({"conn_url": "postgres://10.0.1.1:5432/postgres", "state": "running",
                "role": "primary", "timeline": 2}),
            ),
        ];
        c.workers.insert(1, worker);
        c
    }

    #[test]
    fn citus_listing_without_group_shows_every_group_in_order() {
        let out = render_members(
            &cfg(),
            Groups::All,
            &citus_cluster(),
            &args(Format::Json),
            false,
        );
        let rows: Value = serde_json::from_str(&out).expect("JSON");
        let order: Vec<(i64, &str, &str)> = rows
            .as_array()
            .expect("list")
            .iter()
            .map(|r| {
                (
                    r["Group"].as_i64().unwrap_or(-1),
                    r["Member"].as_str().unwrap_or(""),
                    r["Role"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            order,
            vec![
                (0, "m0", "Leader"),
                (0, "m1", "Sync Standby"),
                (0, "m2", "Replica"),
                (1, "w1-a", "Leader"),
                (1, "w1-b", "Replica"),
            ]
        );
        assert!(
            out.starts_with("[{\"Cluster\": \"demo\", \"Group\": 0, \"Member\": \"m0\""),
            "{out}"
        );
        // Lag is measured against the member's own group.
        assert_eq!(rows[4]["Replay Lag"], 0);

        let pretty = render_members(
            &cfg(),
            Groups::All,
            &citus_cluster(),
            &args(Format::Pretty),
            false,
        );
        let lines: Vec<&str> = pretty.lines().collect();
        assert!(
            lines[0].starts_with("+ Citus cluster: demo ---"),
            "{pretty}"
        );
        assert!(
            lines[1].starts_with("| Group | Member | Host     | Role         |"),
            "{pretty}"
        );
        assert!(lines[3].starts_with("|     0 | m0     |"), "{pretty}");
        assert!(lines[6].starts_with("|     1 | w1-a   |"), "{pretty}");
        // Service lines name the group they belong to.
        assert!(
            pretty.ends_with("+\nCitus group: 1\n Maintenance mode: on\n"),
            "{pretty}"
        );

        let tsv = render_members(
            &cfg(),
            Groups::All,
            &citus_cluster(),
            &args(Format::Tsv),
            true,
        );
        let first: Vec<String> = tsv
            .lines()
            .map(|l| l.split('\t').take(3).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            first,
            vec![
                "Cluster Group Member",
                "demo 0 m0",
                "demo 0 + m1",
                "demo 0   + m2",
                "demo 1 w1-a",
                "demo 1 + w1-b",
            ]
        );
    }

    #[test]
    fn citus_listing_of_one_group_puts_it_in_the_title() {
        let mut worker = citus_cluster().workers.remove(&1).expect("group 1");
        worker.config = None;
        let pretty = render_members(
            &cfg(),
            Groups::One(1),
            &worker,
            &args(Format::Pretty),
            false,
        );
        let lines: Vec<&str> = pretty.lines().collect();
        assert!(
            lines[0].starts_with("+ Citus cluster: demo (group: 1, 7380) -"),
            "{pretty}"
        );
        assert!(lines[1].starts_with("| Member | Host "), "{pretty}");
        let json = render_members(&cfg(), Groups::One(1), &worker, &args(Format::Json), false);
        let rows: Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(rows[0]["Group"], 1);
        assert_eq!(rows[0]["Member"], "w1-a");
        assert_eq!(rows.as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn members_are_selected_in_every_group_with_roles_judged_per_group() {
        let c = citus_cluster();
        let names = |groups, role| -> Vec<String> {
            select_members(groups, &c, &[], role)
                .expect("members")
                .iter()
                .map(|m| m.name.clone())
                .collect()
        };
        assert_eq!(names(Groups::All, Some("leader")), vec!["m0", "w1-a"]);
        assert_eq!(
            names(Groups::All, Some("replica")),
            vec!["m1", "m2", "w1-b"]
        );
        assert_eq!(names(Groups::One(0), Some("leader")), vec!["m0"]);
        let one = select_members(Groups::All, &c, &["w1-b".to_string()], None).expect("w1-b");
        assert_eq!(one.len(), 1);
        assert!(select_members(Groups::One(0), &c, &["w1-b".to_string()], None).is_err());
    }

    #[test]
    fn topology_nests_cascading_replicas() {
        let out = render_members(&cfg(), Groups::Plain, &cluster(), &args(Format::Tsv), true);
        let names: Vec<&str> = out
            .lines()
            .skip(1)
            .filter_map(|l| l.split('\t').nth(1))
            .collect();
        assert_eq!(names, vec!["m0", "+ m1", "  + m2"], "{out}");
    }
}
