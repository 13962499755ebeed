//! `reload`: make the members chosen re-read their configuration (`POST /reload`).

use std::io::Write;

use reqwest::Method;

use super::write_failure;
use crate::ctl::context::Ctx;
use crate::ctl::members::{dynamic, select_members};
use crate::ctl::prompt::confirm_members;
use crate::ctl::{CtlError, CtlResult, MemberSelection};

pub async fn run(
    ctx: &Ctx,
    selection: &MemberSelection,
    force: bool,
    out: &mut dyn Write,
) -> CtlResult {
    let cluster = ctx.cluster().await?;
    let members = select_members(
        ctx.groups,
        &cluster,
        &selection.member_names,
        selection.role.as_deref(),
    )?;
    confirm_members(out, &members, force, "reload")?;
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
            Ok(r) if r.status == 200 => writeln!(out, "No changes to apply on member {}", m.name)?,
            Ok(r) if r.status == 202 => writeln!(
                out,
                "Reload request received for member {} and will be processed within {} seconds",
                m.name,
                dynamic(&cluster).loop_wait
            )?,
            outcome => {
                failed = true;
                write_failure(out, "reload", &m.name, &outcome)?
            }
        }
    }
    if failed {
        return Err(CtlError::failed("reload failed on some members"));
    }
    Ok(())
}
