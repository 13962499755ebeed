//! `version`: regent ctl's version, then each member's Patroni and PostgreSQL versions as its
//! `GET /patroni` reports them.

use std::io::Write;

use serde_json::Value;

use crate::ctl::context::Ctx;
use crate::ctl::members::{group_views, sorted_members};
use crate::ctl::output::cell_text;
use crate::ctl::CtlResult;

pub async fn run(ctx: &Ctx, names: &[String], out: &mut dyn Write) -> CtlResult {
    writeln!(out, "regent ctl version {}", env!("CARGO_PKG_VERSION"))?;
    let cluster = ctx.cluster().await?;
    writeln!(out)?;
    let members = group_views(ctx.groups, &cluster)
        .into_iter()
        .flat_map(|(_, c)| sorted_members(c));
    for m in members {
        if !names.is_empty() && !names.contains(&m.name) {
            continue;
        }
        let Some(url) = m.data.api_url.as_deref() else {
            writeln!(out, "{}: failed to get version: no api_url", m.name)?;
            continue;
        };
        match ctx.api.get_json(url, "patroni").await {
            Ok(status) => writeln!(out, "{}: {}", m.name, member_version(&status))?,
            Err(e) => writeln!(out, "{}: failed to get version: {e}", m.name)?,
        }
    }
    Ok(())
}

/// `Patroni 4.0.4 PostgreSQL 16.4` from a member's `GET /patroni`.
fn member_version(status: &Value) -> String {
    let version = status
        .pointer("/patroni/version")
        .map(cell_text)
        .unwrap_or_default();
    let pg = status
        .get("server_version")
        .and_then(Value::as_u64)
        .map(|n| format!(" PostgreSQL {}", format_pg_version(n)))
        .unwrap_or_default();
    format!("Patroni {version}{pg}")
}

/// `server_version` as Postgres prints it: 90624 → 9.6.24, 160004 → 16.4.
fn format_pg_version(v: u64) -> String {
    if v < 100000 {
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    } else {
        format!("{}.{}", v / 10000, v % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_as_patronictl_prints_them() {
        assert_eq!(
            member_version(&json!({"patroni": {"version": "4.0.4"}, "server_version": 160004})),
            "Patroni 4.0.4 PostgreSQL 16.4"
        );
        assert_eq!(
            member_version(&json!({"patroni": {"version": "3.3.0"}, "server_version": 90624})),
            "Patroni 3.3.0 PostgreSQL 9.6.24"
        );
        assert_eq!(member_version(&json!({})), "Patroni ");
    }
}
