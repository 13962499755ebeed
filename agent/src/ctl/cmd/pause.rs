//! `pause` and `resume`: maintenance mode on or off (the `pause` key of the dynamic
//! configuration), optionally waiting until every member reports it.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::ctl::context::{patch_config, Ctx};
use crate::ctl::{CtlError, CtlResult};

const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// `paused`: `pause` when true, `resume` when false.
pub async fn run(ctx: &Ctx, paused: bool, wait: bool, out: &mut dyn Write) -> CtlResult {
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
        write!(
            out,
            "'{}' request sent, waiting until it is recognized by all nodes",
            if paused { "pause" } else { "resume" }
        )?;
        out.flush()?;
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        loop {
            let c = ctx.cluster().await?;
            if c.members
                .iter()
                .all(|m| m.data.pause.unwrap_or(false) == paused)
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                writeln!(out)?;
                return Err(CtlError::failed(format!(
                    "members did not report the change within {} s",
                    WAIT_LIMIT.as_secs()
                )));
            }
            write!(out, ".")?;
            out.flush()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        writeln!(out)?;
    }
    writeln!(out, "Success: cluster management is {word}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::fixtures::{cluster, memory_ctx, text};

    /// The command's output and the dynamic configuration after it.
    async fn toggle(ctx: &Ctx, paused: bool) -> (String, Value) {
        let mut out = Vec::new();
        run(ctx, paused, false, &mut out).await.expect("toggled");
        let config = ctx.cluster().await.expect("cluster").config;
        (text(out), config.map(|c| c.raw).unwrap_or_default())
    }

    /// No member answers `PATCH /config`: the change goes to the DCS with compare-and-swap.
    #[tokio::test]
    async fn pause_and_resume_write_the_dcs_config_when_no_member_answers() {
        let ctx = memory_ctx(&cluster()).await;
        assert_eq!(
            toggle(&ctx, true).await,
            (
                "Success: cluster management is paused\n".to_string(),
                json!({"synchronous_mode": true, "pause": true})
            )
        );
        let again = run(&ctx, true, false, &mut Vec::new()).await;
        assert_eq!(
            again.err().map(|e| e.msg).as_deref(),
            Some("Cluster is already paused")
        );
        assert_eq!(
            toggle(&ctx, false).await,
            (
                "Success: cluster management is resumed\n".to_string(),
                json!({"synchronous_mode": true})
            )
        );
    }
}
