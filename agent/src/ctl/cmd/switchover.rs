//! `switchover` and `failover`: show the cluster, ask what is missing (leader, candidate, time),
//! confirm, then `POST /switchover` or `/failover` to the leader (to the candidate when there is
//! none), falling back to writing the failover object in the DCS; show the cluster again.

use std::io::Write;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Map, Value};
use tracing::debug;

use super::parse_scheduled;
use crate::ctl::context::{connect_dcs, read_cluster, Ctx};
use crate::ctl::listing::render_members;
use crate::ctl::members::title_case;
use crate::ctl::output::{timestamp, Format};
use crate::ctl::prompt::{ask, confirm, prompt};
use crate::ctl::{CtlError, CtlResult, Groups, ListArgs};

/// `switchover`: a switchover (`failover --leader` is one too), else a failover.
pub async fn run(
    ctx: &Ctx,
    switchover: bool,
    leader: Option<String>,
    candidate: Option<String>,
    scheduled: Option<String>,
    force: bool,
    out: &mut dyn Write,
) -> CtlResult {
    let action = if switchover { "switchover" } else { "failover" };
    let scope = ctx.cfg.scope.clone();
    let mut cluster = ctx.cluster().await?;
    let mut dcs = ctx.dcs.clone();
    let mut groups = ctx.groups;
    writeln!(out, "Current cluster topology")?;
    let list_args = ListArgs::once(Format::Pretty);
    write!(
        out,
        "{}",
        render_members(&ctx.cfg, ctx.groups, &cluster, &list_args, false)
    )?;
    if ctx.groups == Groups::All {
        // Every group was shown; the operation is for one of them (patronictl's rule).
        if force {
            return Err(CtlError::failed(
                "For Citus clusters the --group must be specified",
            ));
        }
        let answer = ask(out, "Citus group")?;
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
            None => prompt(out, "Primary", &current)?,
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
            let question = format!("Candidate [{}]", shown.join(", "));
            Some(prompt(out, &question, "")?).filter(|c| !c.is_empty())
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
                out,
                "When should the switchover take place (e.g. 2030-01-01T12:00+00:00)",
                "now",
            )?),
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
        if !confirm(out, &question)? {
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
                debug!(
                    endpoint = action,
                    status = 501,
                    "not offered by this member"
                );
                None
            }
            Ok(a) => Some(a),
            Err(e) => {
                debug!(endpoint = action, error = %e, "no answer");
                None
            }
        },
        None => None,
    };
    match answer {
        Some(a) if a.status == 200 || a.status == 202 => {
            writeln!(out, "{} {}", timestamp(), a.body.trim())?;
            // The cluster as it is now (patronictl shows it after the operation too).
            match read_cluster(dcs.as_ref()).await {
                Ok(now) => cluster = now,
                Err(e) => debug!(error = %e.msg, "cannot read the cluster after the operation"),
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
            writeln!(
                out,
                "{} Could not {action} using Patroni api, falling back to DCS",
                timestamp()
            )?;
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
    write!(
        out,
        "{}",
        render_members(&ctx.cfg, groups, &cluster, &list_args, false)
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::fixtures::{cluster, memory_ctx, text};

    /// No member answers: the failover object goes to the DCS, between the two listings.
    #[tokio::test]
    async fn switchover_falls_back_to_the_dcs_when_no_member_answers() {
        let ctx = memory_ctx(&cluster()).await;
        let mut out = Vec::new();
        run(
            &ctx,
            true,
            Some("m0".into()),
            Some("m1".into()),
            None,
            true,
            &mut out,
        )
        .await
        .expect("switchover");
        let out = text(out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Current cluster topology", "{out}");
        assert!(lines[1].starts_with("+ Cluster: demo (7379) -"), "{out}");
        let fallback = lines
            .iter()
            .position(|l| {
                l.ends_with(" Could not switchover using Patroni api, falling back to DCS")
            })
            .expect("the fallback line");
        assert_eq!(fallback, 8, "after the 7 lines of the first listing: {out}");
        assert!(lines[9].starts_with("+ Cluster: demo (7379) -"), "{out}");
        assert_eq!(lines.len(), 16, "{out}");
        let failover = ctx
            .cluster()
            .await
            .expect("cluster")
            .failover
            .expect("failover");
        assert_eq!(failover.leader.as_deref(), Some("m0"));
        assert_eq!(failover.member.as_deref(), Some("m1"));
        assert_eq!(failover.scheduled_at, None);
    }

    #[tokio::test]
    async fn switchover_and_failover_refuse_wrong_members() {
        let ctx = memory_ctx(&cluster()).await;
        let refusal = |switchover: bool, leader: Option<&str>, candidate: Option<&str>| {
            let ctx = &ctx;
            let leader = leader.map(String::from);
            let candidate = candidate.map(String::from);
            async move {
                run(
                    ctx,
                    switchover,
                    leader,
                    candidate,
                    None,
                    true,
                    &mut Vec::new(),
                )
                .await
                .err()
                .map(|e| e.msg)
            }
        };
        assert_eq!(
            refusal(true, Some("m1"), Some("m2")).await.as_deref(),
            Some("Member m1 is not the leader of cluster demo")
        );
        assert_eq!(
            refusal(true, Some("m0"), Some("m0")).await.as_deref(),
            Some("Member m0 is already the leader of cluster demo")
        );
        assert_eq!(
            refusal(true, None, Some("m9")).await.as_deref(),
            Some("Member m9 does not exist in cluster demo or is tagged as nofailover")
        );
        assert_eq!(
            refusal(false, None, None).await.as_deref(),
            Some("Failover could be performed only to a specific candidate")
        );
        assert!(ctx.cluster().await.expect("cluster").failover.is_none());
    }
}
