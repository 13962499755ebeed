//! Synchronous replication's rules (`synchronous_mode`; ARCHITECTURE.md, *Synchronous mode*).
//!
//! The leader picks its synchronous standbys each cycle and keeps two things in step: the
//! `synchronous_standby_names` it renders into postgresql.conf and the `sync` object in the DCS,
//! which names the members allowed to take over automatically. The order of the two writes keeps
//! the `sync` object from ever naming a standby that is not synchronous yet:
//!
//! * adding a standby: `synchronous_standby_names` first; `sync` only once pg_stat_replication
//!   shows it `sync` and it has flushed what the primary had flushed after the change;
//! * removing one: `sync` first, then `synchronous_standby_names`.
//!
//! Without a candidate, non-strict mode writes with no standby (empty names, `sync` lists
//! nobody), strict mode renders `*` so writes wait for any standby to come back.
//!
//! [`plan_primary`] and [`plan_replica`] are pure and table-tested; the loop
//! (`cycle::sync`) executes their steps.

use std::cmp::Reverse;

use dcs::{Cluster, Member};
use rest::{FailoverAction, FailoverRequest};

use crate::postgres::{synchronous_standby_names_for, ReplicationRow};

/// The dynamic settings synchronous replication follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyncSettings {
    pub enabled: bool,
    pub strict: bool,
    /// How many synchronous standbys to keep (≥ 1).
    pub node_count: u32,
    /// Standbys whose flush position lags the primary's by more than this are not chosen;
    /// ≤ 0 disables the check.
    pub maximum_lag_on_syncnode: i64,
}

/// One change, executed in order; a failed DCS write ends the plan (the next cycle re-reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyncStep {
    /// `sync` = `{leader: me, sync_standby: names}`, CAS on the version read this cycle.
    WriteSync(Vec<String>),
    /// Remove the `sync` object (synchronous mode was turned off).
    DeleteSync,
    /// Render `synchronous_standby_names` (`None`: as configured) and reload Postgres.
    SetStandbyNames(Option<String>),
}

/// What the leader observed this cycle.
pub(crate) struct PrimaryView<'a> {
    pub me: &'a str,
    pub cluster: &'a Cluster,
    pub replication: &'a [ReplicationRow],
    /// The primary's flush position.
    pub flush_lsn: u64,
    /// What we render now (`None`: the configured value).
    pub standby_names: Option<&'a str>,
    /// The primary's flush position noted after `synchronous_standby_names` last changed; a
    /// newly named standby counts as synchronous once it flushed this far. `None`: not noted
    /// yet (the change is too fresh), so no newly named standby is confirmed.
    pub since_lsn: Option<u64>,
}

/// The leader's steps for this cycle.
pub(crate) fn plan_primary(s: &SyncSettings, v: &PrimaryView) -> Vec<SyncStep> {
    let sync = &v.cluster.sync;
    if !s.enabled {
        let mut steps = Vec::new();
        if sync.leader.is_some() || !sync.sync_standby.is_empty() {
            steps.push(SyncStep::DeleteSync);
        }
        if v.standby_names.is_some() {
            steps.push(SyncStep::SetStandbyNames(None));
        }
        return steps;
    }
    if sync.leader.as_deref() != Some(v.me) {
        // A new leader owns the state first; its standbys are added as they are confirmed.
        return vec![SyncStep::WriteSync(Vec::new())];
    }
    let chosen = choose_standbys(s, v);
    let mut recorded = sync.sync_standby.clone();
    recorded.sort();
    let mut steps = Vec::new();
    // Removing: out of `sync` before out of synchronous_standby_names.
    let kept: Vec<String> = recorded
        .iter()
        .filter(|n| chosen.contains(n))
        .cloned()
        .collect();
    if kept != recorded {
        steps.push(SyncStep::WriteSync(kept.clone()));
    }
    let wanted = if chosen.is_empty() {
        if s.strict { "*" } else { "" }.to_string()
    } else {
        synchronous_standby_names_for(&chosen)
    };
    if v.standby_names != Some(wanted.as_str()) {
        steps.push(SyncStep::SetStandbyNames(Some(wanted)));
        return steps;
    }
    if !steps.is_empty() {
        // The `sync` version changed: confirm additions after the next read.
        return steps;
    }
    // Adding: into `sync` only once Postgres treats it as synchronous.
    let mut confirmed: Vec<String> = chosen
        .iter()
        .filter(|name| {
            let Some(row) = row_of(v.replication, name) else {
                return false;
            };
            let flush = row.flush_lsn.unwrap_or(0);
            row.sync_state.as_deref() == Some("sync")
                && (kept.contains(name) || v.since_lsn.is_some_and(|since| flush >= since))
        })
        .cloned()
        .collect();
    confirmed.sort();
    if confirmed != recorded {
        steps.push(SyncStep::WriteSync(confirmed));
    }
    steps
}

/// A replica renders what it needs at its promotion: nothing synchronous yet (`''`), or `*` in
/// strict mode so that no write is acknowledged before a standby is synchronous.
pub(crate) fn plan_replica(s: &SyncSettings, standby_names: Option<&str>) -> Option<SyncStep> {
    let wanted = s
        .enabled
        .then(|| if s.strict { "*" } else { "" }.to_string());
    (standby_names != wanted.as_deref()).then_some(SyncStep::SetStandbyNames(wanted))
}

/// Is every standby we would choose already recorded in `sync` (nothing left to confirm)?
pub(crate) fn all_chosen_recorded(s: &SyncSettings, v: &PrimaryView) -> bool {
    let mut chosen = choose_standbys(s, v);
    chosen.sort();
    let mut recorded = v.cluster.sync.sync_standby.clone();
    recorded.sort();
    chosen == recorded
}

fn row_of<'a>(rows: &'a [ReplicationRow], name: &str) -> Option<&'a ReplicationRow> {
    rows.iter()
        .find(|r| r.application_name.eq_ignore_ascii_case(name))
}

/// The standbys to be synchronous, best first, at most `node_count`: streaming members that
/// run, are not tagged `nosync` and do not lag too far; those Postgres already treats as
/// synchronous first, then by flush position; `nofailover` members last.
fn choose_standbys(s: &SyncSettings, v: &PrimaryView) -> Vec<String> {
    let mut candidates: Vec<(bool, u8, Reverse<u64>, String)> = v
        .cluster
        .members
        .iter()
        .filter(|m| m.name != v.me && m.data.is_running() && !m.data.tags.nosync())
        .filter_map(|m| {
            let row = row_of(v.replication, &m.name)?;
            if row.state.as_deref() != Some("streaming") {
                return None;
            }
            let flush = row.flush_lsn?;
            let lag = v.flush_lsn.saturating_sub(flush);
            if s.maximum_lag_on_syncnode > 0 && lag > s.maximum_lag_on_syncnode as u64 {
                return None;
            }
            let rank = match row.sync_state.as_deref() {
                Some("sync") => 0,
                Some("potential") | Some("quorum") => 1,
                _ => 2,
            };
            Some((
                !m.data.tags.can_be_leader(),
                rank,
                Reverse(flush),
                m.name.clone(),
            ))
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .take(s.node_count.max(1) as usize)
        .map(|c| c.3)
        .collect()
}

/// Synchronous mode's part of checking a `POST /switchover`/`/failover` (Patroni's
/// is_failover_possible): a switchover goes to a synchronous standby only, and without a named
/// candidate only the synchronous standbys are candidates. A failover to a named asynchronous
/// member stays possible: it is the operator's explicit choice. `Err` is Patroni's 412 text.
pub(crate) fn restrict_failover_candidates<'a>(
    cluster: &Cluster,
    request: &FailoverRequest,
    synchronous_mode: bool,
    candidates: Vec<&'a Member>,
) -> Result<Vec<&'a Member>, String> {
    if !synchronous_mode {
        return Ok(candidates);
    }
    let is_sync = |name: &str| cluster.sync.sync_standby.iter().any(|n| n == name);
    match request.candidate.as_deref() {
        Some(candidate) => {
            if request.action == FailoverAction::Switchover && !is_sync(candidate) {
                return Err("candidate name does not match with sync_standby".into());
            }
            Ok(candidates)
        }
        None => {
            let sync: Vec<&Member> = candidates
                .into_iter()
                .filter(|m| is_sync(&m.name))
                .collect();
            if sync.is_empty() {
                return Err(format!(
                    "{} is not possible: can not find sync_standby",
                    request.action.name()
                ));
            }
            Ok(sync)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcs::{Member, MemberData};
    use dcs::{Role, SyncState};
    use serde_json::json;

    fn settings() -> SyncSettings {
        SyncSettings {
            enabled: true,
            strict: false,
            node_count: 1,
            maximum_lag_on_syncnode: -1,
        }
    }

    fn member(name: &str, tags: serde_json::Value) -> Member {
        Member::new(
            name,
            MemberData {
                state: "running".into(),
                role: Role::Replica,
                tags: serde_json::from_value(tags).unwrap(),
                ..Default::default()
            },
        )
    }

    fn row(name: &str, sync_state: &str, flush: u64) -> ReplicationRow {
        ReplicationRow {
            application_name: name.into(),
            state: Some("streaming".into()),
            sync_state: Some(sync_state.into()),
            flush_lsn: Some(flush),
            ..Default::default()
        }
    }

    fn cluster(sync_leader: Option<&str>, standbys: &[&str]) -> Cluster {
        Cluster {
            members: vec![
                member("a", json!({})),
                member("b", json!({})),
                member("c", json!({})),
            ],
            sync: SyncState {
                leader: sync_leader.map(Into::into),
                sync_standby: standbys.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn plan(
        s: &SyncSettings,
        c: &Cluster,
        rows: &[ReplicationRow],
        ssn: Option<&str>,
        since: Option<u64>,
    ) -> Vec<SyncStep> {
        plan_primary(
            s,
            &PrimaryView {
                me: "a",
                cluster: c,
                replication: rows,
                flush_lsn: 1000,
                standby_names: ssn,
                since_lsn: since,
            },
        )
    }

    use SyncStep::{DeleteSync, SetStandbyNames as Ssn, WriteSync};

    #[test]
    fn the_sync_object_never_names_a_standby_before_it_is_synchronous() {
        let s = settings();
        let rows_async = [row("b", "async", 1000), row("c", "async", 900)];
        let rows_sync = [row("b", "sync", 1000), row("c", "async", 900)];
        let rows_behind = [row("b", "sync", 990)];
        let rows_c_only = [row("c", "async", 900)];
        // (what, sync object, rows, rendered names, since_lsn, expected steps)
        type Case<'a> = (
            &'static str,
            Cluster,
            &'a [ReplicationRow],
            Option<&'static str>,
            Option<u64>,
            Vec<SyncStep>,
        );
        let cases: Vec<Case> = vec![
            (
                "a new leader takes the sync object over first",
                cluster(Some("x"), &["a"]),
                &rows_async,
                Some(""),
                None,
                vec![WriteSync(vec![])],
            ),
            (
                "the most advanced streaming standby is named in the GUC first",
                cluster(Some("a"), &[]),
                &rows_async,
                Some(""),
                None,
                vec![Ssn(Some("b".into()))],
            ),
            (
                "not in sync yet: nothing recorded",
                cluster(Some("a"), &[]),
                &rows_async,
                Some("b"),
                Some(1000),
                vec![],
            ),
            (
                "sync but the flush position after the change not reached: wait",
                cluster(Some("a"), &[]),
                &rows_behind,
                Some("b"),
                Some(1000),
                vec![],
            ),
            (
                "sync and caught up: recorded",
                cluster(Some("a"), &[]),
                &rows_sync,
                Some("b"),
                Some(1000),
                vec![WriteSync(names(&["b"]))],
            ),
            (
                "the change is too fresh to confirm",
                cluster(Some("a"), &[]),
                &rows_sync,
                Some("b"),
                None,
                vec![],
            ),
            (
                "steady state: nothing to do",
                cluster(Some("a"), &["b"]),
                &rows_sync,
                Some("b"),
                Some(1000),
                vec![],
            ),
            (
                "the sync standby stops streaming: out of sync first, then the GUC",
                cluster(Some("a"), &["b"]),
                &rows_c_only,
                Some("b"),
                Some(1000),
                vec![WriteSync(vec![]), Ssn(Some("c".into()))],
            ),
            (
                "no candidate, not strict: empty names",
                cluster(Some("a"), &["b"]),
                &[],
                Some("b"),
                Some(1000),
                vec![WriteSync(vec![]), Ssn(Some(String::new()))],
            ),
        ];
        for (what, c, rows, ssn, since, expected) in cases {
            assert_eq!(plan(&s, &c, rows, ssn, since), expected, "{what}");
        }
    }

    #[test]
    fn strict_mode_blocks_writes_without_a_candidate() {
        let s = SyncSettings {
            strict: true,
            ..settings()
        };
        assert_eq!(
            plan(&s, &cluster(Some("a"), &["b"]), &[], Some("b"), Some(1)),
            vec![WriteSync(vec![]), Ssn(Some("*".into()))]
        );
        assert_eq!(
            plan(&s, &cluster(Some("a"), &[]), &[], Some("*"), Some(1)),
            vec![]
        );
        assert_eq!(plan_replica(&s, None), Some(Ssn(Some("*".into()))));
        assert_eq!(plan_replica(&settings(), Some("")), None);
    }

    #[test]
    fn candidates_exclude_nosync_lagging_and_stopped_members() {
        let mut c = cluster(Some("a"), &[]);
        c.members[1] = member("b", json!({"nosync": true}));
        let rows = [row("b", "async", 1000), row("c", "async", 400)];
        assert_eq!(
            plan(&settings(), &c, &rows, Some(""), None),
            vec![Ssn(Some("c".into()))]
        );
        let lag_limited = SyncSettings {
            maximum_lag_on_syncnode: 500,
            ..settings()
        };
        assert_eq!(plan(&lag_limited, &c, &rows, Some(""), None), vec![]);
        let mut stopped = cluster(Some("a"), &[]);
        stopped.members[2].data.state = "stopped".into();
        assert_eq!(
            plan(
                &settings(),
                &stopped,
                &[row("c", "async", 1000)],
                Some(""),
                None
            ),
            vec![]
        );
        // A current synchronous standby is kept over a more advanced one; two are named when
        // two are asked for.
        let two = SyncSettings {
            node_count: 2,
            ..settings()
        };
        let rows = [row("b", "async", 1000), row("c", "sync", 900)];
        assert_eq!(
            plan(
                &settings(),
                &cluster(Some("a"), &["c"]),
                &rows,
                Some("c"),
                Some(1)
            ),
            vec![]
        );
        assert_eq!(
            plan(&two, &cluster(Some("a"), &["c"]), &rows, Some("c"), Some(1)),
            vec![Ssn(Some("2 (c,b)".into()))]
        );
    }

    #[test]
    fn turning_synchronous_mode_off_clears_both() {
        let off = SyncSettings {
            enabled: false,
            ..settings()
        };
        assert_eq!(
            plan(&off, &cluster(Some("a"), &["b"]), &[], Some("b"), None),
            vec![DeleteSync, Ssn(None)]
        );
        assert_eq!(plan(&off, &cluster(None, &[]), &[], None, None), vec![]);
        assert_eq!(plan_replica(&off, Some("*")), Some(Ssn(None)));
    }

    #[test]
    fn switchover_requests_in_synchronous_mode() {
        let c = cluster(Some("a"), &["b"]);
        let all: Vec<&Member> = c.members.iter().filter(|m| m.name != "a").collect();
        let request = |action, candidate: Option<&str>| FailoverRequest {
            action,
            leader: Some("a".into()),
            candidate: candidate.map(Into::into),
            scheduled_at: None,
        };
        let check = |r: &FailoverRequest, sync_mode: bool| {
            restrict_failover_candidates(&c, r, sync_mode, all.clone())
                .map(|v| v.iter().map(|m| m.name.clone()).collect::<Vec<_>>())
        };
        let to_async = request(FailoverAction::Switchover, Some("c"));
        assert_eq!(
            check(&to_async, true),
            Err("candidate name does not match with sync_standby".into())
        );
        assert_eq!(check(&to_async, false), Ok(names(&["b", "c"])));
        assert_eq!(
            check(&request(FailoverAction::Switchover, Some("b")), true),
            Ok(names(&["b", "c"]))
        );
        // A failover to a named member is the operator's choice, even an async one.
        assert!(check(&request(FailoverAction::Failover, Some("c")), true).is_ok());
        assert_eq!(
            check(&request(FailoverAction::Switchover, None), true),
            Ok(names(&["b"]))
        );
        let none = cluster(Some("a"), &[]);
        assert_eq!(
            restrict_failover_candidates(
                &none,
                &request(FailoverAction::Switchover, None),
                true,
                all.clone()
            )
            .map(|v| v.len()),
            Err("switchover is not possible: can not find sync_standby".into())
        );
    }
}
