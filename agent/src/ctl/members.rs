//! The members of a cluster as the commands see them: per Citus group, with patronictl's roles,
//! in patronictl's orders, selected by name and role.

use dcs::{Cluster, Member};
use serde_json::Value;

use super::{CtlError, CtlResult, Groups};
use crate::config::DynamicConfig;

/// The groups a command covers, each with its number (`None`: not a Citus cluster), the
/// coordinator first, then the workers in group order.
pub fn group_views(groups: Groups, cluster: &Cluster) -> Vec<(Option<u32>, &Cluster)> {
    match groups {
        Groups::Plain => vec![(None, cluster)],
        Groups::One(g) => vec![(Some(g), cluster)],
        Groups::All => std::iter::once((Some(0), cluster))
            .chain(cluster.workers.iter().map(|(g, w)| (Some(*g), w)))
            .collect(),
    }
}

/// The dynamic configuration in the DCS, with defaults for what it leaves out.
pub fn dynamic(cluster: &Cluster) -> DynamicConfig {
    let raw = cluster
        .config
        .as_ref()
        .map(|c| c.raw.clone())
        .unwrap_or(Value::Null);
    DynamicConfig::from_value(&raw).0
}

/// `synchronous_mode` on, in any of the spellings Patroni accepts.
pub fn is_sync_mode(cluster: &Cluster) -> bool {
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
pub fn member_role(cluster: &Cluster, m: &Member) -> &'static str {
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

/// `sync_standby` → `Sync Standby`.
pub fn title_case(role: &str) -> String {
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

/// The members by name.
pub fn sorted_members(cluster: &Cluster) -> Vec<&Member> {
    let mut members: Vec<&Member> = cluster.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members
}

/// Leader first, then the others by name (patronictl's order for cluster-wide calls).
pub fn leader_first(cluster: &Cluster) -> Vec<&Member> {
    let mut out: Vec<&Member> = cluster.leader_member().into_iter().collect();
    out.extend(
        sorted_members(cluster)
            .into_iter()
            .filter(|m| Some(m.name.as_str()) != cluster.leader_name()),
    );
    out
}

/// Whether `m` has the role a `--role` option names (none: any).
pub fn role_matches(cluster: &Cluster, m: &Member, role: Option<&str>) -> bool {
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
pub fn select_members<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::fixtures::citus_cluster;

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
}
