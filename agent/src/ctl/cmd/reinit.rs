//! `reinit`: rebuild the members named from the leader (`POST /reinitialize`), optionally
//! waiting until each one runs again.

use std::io::Write;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::write_failure;
use crate::ctl::context::Ctx;
use crate::ctl::members::select_members;
use crate::ctl::output::cell_text;
use crate::ctl::prompt::confirm_members;
use crate::ctl::{CtlError, CtlResult};

pub async fn run(
    ctx: &Ctx,
    names: &[String],
    force: bool,
    wait: bool,
    out: &mut dyn Write,
) -> CtlResult {
    let cluster = ctx.cluster().await?;
    if names.is_empty() {
        return Err(CtlError::usage("name the members to reinitialize"));
    }
    let members = select_members(ctx.groups, &cluster, names, None)?;
    confirm_members(out, &members, force, "reinitialize")?;
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
                writeln!(out, "Success: reinitialize for member {}", m.name)?;
                started.push((m.name.clone(), url.to_string()));
            }
            outcome => {
                failed = true;
                write_failure(out, "reinitialize", &m.name, &outcome)?
            }
        }
    }
    if wait && !started.is_empty() {
        writeln!(
            out,
            "Waiting for reinitialize to complete on: {}",
            started
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        for (name, url) in &started {
            loop {
                let state = ctx
                    .api
                    .get_json(url, "patroni")
                    .await
                    .ok()
                    .and_then(|v| v.get("state").map(cell_text));
                if state
                    .as_deref()
                    .is_some_and(|s| s != "creating replica" && s != "stopped" && s != "stopping")
                {
                    writeln!(out, "Reinitialize is completed on: {name}")?;
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
