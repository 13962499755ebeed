//! The member table of `list`, `topology` and the before/after views of `switchover` and
//! `failover`, in patronictl's columns and formats.

use dcs::{Cluster, Member};
use serde_json::{json, Value};

use super::members::{group_views, member_role, sorted_members, title_case};
use super::output::{cell_text, to_flow_yaml, to_yaml, Format, Table};
use super::{Groups, ListArgs};
use crate::config::Config;

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

/// The listing of every group `groups` covers, as `list` (or `topology`) prints it.
pub fn render_members(
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
pub fn service_info(cluster: &Cluster) -> Vec<String> {
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
                        let old = v.get("old_value").map(cell_text).unwrap_or_default();
                        let new = v.get("new_value").map(cell_text).unwrap_or_default();
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
                let mut v = s.get("schedule").map(cell_text).unwrap_or_default();
                if let Some(pv) = s.get("postgres_version") {
                    v.push_str(&format!(" if version < {}", cell_text(pv)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::fixtures::{args, cfg, citus_cluster, cluster};
    use serde_json::Value;

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
