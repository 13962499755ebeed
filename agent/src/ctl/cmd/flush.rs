//! `flush`: discard scheduled restarts (`DELETE /restart` on each member chosen) or a scheduled
//! switchover (`DELETE /switchover`, else the failover object cleared in the DCS).

use std::io::Write;

use reqwest::Method;
use tracing::debug;

use super::write_failure;
use crate::ctl::context::Ctx;
use crate::ctl::members::{leader_first, select_members};
use crate::ctl::output::timestamp;
use crate::ctl::prompt::confirm_members;
use crate::ctl::{CtlError, CtlResult};

/// `target`: `restart` or `switchover`.
pub async fn run(
    ctx: &Ctx,
    names: &[String],
    target: &str,
    role: Option<&str>,
    force: bool,
    out: &mut dyn Write,
) -> CtlResult {
    let cluster = ctx.cluster().await?;
    match target {
        "restart" => {
            let members = select_members(ctx.groups, &cluster, names, role)?;
            confirm_members(out, &members, force, "flush")?;
            for m in members {
                if m.data.scheduled_restart.is_none() {
                    writeln!(out, "No scheduled restart for member {}", m.name)?;
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
                    Ok(r) if r.status == 200 => writeln!(
                        out,
                        "Success: flush scheduled restart for member {}",
                        m.name
                    )?,
                    outcome => write_failure(out, "flush scheduled restart", &m.name, &outcome)?,
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
                writeln!(out, "No pending scheduled switchover")?;
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
                        writeln!(out, "{prefix}: {}", r.body.trim())?;
                        return Ok(());
                    }
                    Ok(r) if r.status == 501 => break,
                    Ok(r) => writeln!(
                        out,
                        "Failed: member={}, status_code={}, ({})",
                        m.name,
                        r.status,
                        r.body.trim()
                    )?,
                    Err(e) => debug!(member = %m.name, error = %e, "member is not accessible"),
                }
            }
            writeln!(
                out,
                "{} Could not find any accessible member of cluster {}",
                timestamp(),
                ctx.cfg.scope
            )?;
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
    use crate::ctl::fixtures::{cluster, memory_ctx, text};

    #[tokio::test]
    async fn flush_says_when_there_is_nothing_to_flush() {
        let ctx = memory_ctx(&cluster()).await;
        let mut out = Vec::new();
        run(&ctx, &[], "switchover", None, true, &mut out)
            .await
            .expect("flush switchover");
        assert_eq!(text(out), "No pending scheduled switchover\n");

        let mut out = Vec::new();
        run(&ctx, &["m1".to_string()], "restart", None, true, &mut out)
            .await
            .expect("flush restart");
        assert_eq!(text(out), "No scheduled restart for member m1\n");

        let wrong = run(&ctx, &[], "reload", None, true, &mut Vec::new()).await;
        assert_eq!(
            wrong.err().map(|e| e.msg).as_deref(),
            Some("flush: unknown target 'reload', expected restart or switchover")
        );
    }
}
