//! `restart`: restart Postgres on the members chosen (by name, role, `--any`, `--pending`), at
//! once or at a scheduled time, through `POST /restart`.

use std::io::Write;

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::{parse_scheduled, write_failure};
use crate::ctl::context::Ctx;
use crate::ctl::members::select_members;
use crate::ctl::prompt::confirm_members;
use crate::ctl::{CtlError, CtlResult, MemberSelection};

/// How to restart the members selected.
#[derive(clap::Args, Debug, Clone)]
pub struct RestartOptions {
    /// Restart one member chosen at random.
    #[arg(long)]
    pub any: bool,
    /// When (ISO 8601 timestamp with time zone).
    #[arg(long)]
    pub scheduled: Option<String>,
    /// Only if the Postgres version is older than this.
    #[arg(long = "pg-version")]
    pub pg_version: Option<String>,
    /// Only members with a pending restart.
    #[arg(short = 'p', long)]
    pub pending: bool,
    /// Seconds to wait for Postgres to start.
    #[arg(long)]
    pub timeout: Option<String>,
    #[arg(long)]
    pub force: bool,
}

pub async fn run(
    ctx: &Ctx,
    selection: &MemberSelection,
    a: &RestartOptions,
    out: &mut dyn Write,
) -> CtlResult {
    let cluster = ctx.cluster().await?;
    let mut members = select_members(
        ctx.groups,
        &cluster,
        &selection.member_names,
        selection.role.as_deref(),
    )?;
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
            writeln!(out, "No member has a pending restart")?;
            return Ok(());
        }
    }
    if a.any {
        // Any one will do; the first keeps it deterministic.
        members.truncate(1);
    }
    confirm_members(out, &members, a.force, "restart")?;
    let body = Value::Object(body);
    let mut failed = false;
    for m in members {
        let Some(url) = m.data.api_url.as_deref() else {
            writeln!(out, "Failed: restart for member {}, no api_url", m.name)?;
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
            Ok(r) if r.status == 200 => writeln!(out, "Success: restart on member {}", m.name)?,
            Ok(r) if r.status == 202 => {
                writeln!(out, "Success: restart scheduled on member {}", m.name)?
            }
            Ok(r) if r.status == 409 => {
                failed = true;
                writeln!(
                    out,
                    "Failed: another restart is already scheduled on member {}",
                    m.name
                )?
            }
            outcome => {
                failed = true;
                write_failure(out, "restart", &m.name, &outcome)?
            }
        }
    }
    if failed {
        return Err(CtlError::failed("restart failed on some members"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::fixtures::{cluster, memory_ctx, text};

    fn options() -> RestartOptions {
        RestartOptions {
            any: false,
            scheduled: None,
            pg_version: None,
            pending: false,
            timeout: None,
            force: true,
        }
    }

    fn selection(role: Option<&str>) -> MemberSelection {
        MemberSelection {
            cluster_name: "demo".into(),
            member_names: Vec::new(),
            group: None,
            role: role.map(String::from),
        }
    }

    #[tokio::test]
    async fn restart_reports_each_member_it_cannot_call() {
        let ctx = memory_ctx(&cluster()).await;
        let mut out = Vec::new();
        let result = run(&ctx, &selection(Some("replica")), &options(), &mut out).await;
        assert_eq!(
            result.err().map(|e| e.msg).as_deref(),
            Some("restart failed on some members")
        );
        assert_eq!(
            text(out),
            "Failed: restart for member m1, no api_url\nFailed: restart for member m2, no api_url\n"
        );
    }

    /// `--pending` without a schedule keeps the members that report one: only m2 here.
    #[tokio::test]
    async fn pending_restart_keeps_the_members_that_need_one() {
        let ctx = memory_ctx(&cluster()).await;
        let mut out = Vec::new();
        let pending = RestartOptions {
            pending: true,
            ..options()
        };
        let result = run(&ctx, &selection(Some("leader")), &pending, &mut out).await;
        assert!(result.is_ok());
        assert_eq!(text(out), "No member has a pending restart\n");
        let mut out = Vec::new();
        let result = run(&ctx, &selection(None), &pending, &mut out).await;
        assert!(result.is_err());
        assert_eq!(text(out), "Failed: restart for member m2, no api_url\n");
    }
}
