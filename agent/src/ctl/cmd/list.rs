//! `list` and `topology`: the members of the cluster, flat or as a replication tree, once or
//! every few seconds (`-W`, `-w N`).

use std::io::Write;
use std::time::Duration;

use crate::ctl::context::Ctx;
use crate::ctl::listing::render_members;
use crate::ctl::{CtlResult, ListArgs};

/// `clear_between`: clear the screen between the rounds of a watched listing.
pub async fn run(
    ctx: &Ctx,
    a: &ListArgs,
    topology: bool,
    clear_between: bool,
    out: &mut dyn Write,
) -> CtlResult {
    let interval = a
        .watch
        .or(a.watch_default.then_some(2.0))
        .map(|s| Duration::from_secs_f64(s.max(0.1)));
    loop {
        let cluster = ctx.cluster().await?;
        if a.timestamp {
            writeln!(out, "{}", chrono::Local::now().format("%Y-%m-%d %H:%M:%S"))?;
        }
        write!(
            out,
            "{}",
            render_members(&ctx.cfg, ctx.groups, &cluster, a, topology)
        )?;
        let Some(i) = interval else {
            return Ok(());
        };
        out.flush()?;
        tokio::time::sleep(i).await;
        if clear_between {
            write!(out, "\x1b[2J\x1b[H")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::fixtures::{args, cluster, memory_ctx, text};
    use crate::ctl::output::Format;

    async fn listed(a: ListArgs, topology: bool) -> String {
        let ctx = memory_ctx(&cluster()).await;
        let mut out = Vec::new();
        run(&ctx, &a, topology, false, &mut out)
            .await
            .expect("list");
        text(out)
    }

    #[tokio::test]
    async fn list_prints_patronictls_table() {
        assert_eq!(
            listed(args(Format::Pretty), false).await,
            "\
+ Cluster: demo (7379) ------------+-----------+----+-------------+-----+------------+-----+-----------------+-------------------+
| Member | Host     | Role         | State     | TL | Receive LSN | Lag | Replay LSN | Lag | Pending restart | Tags              |
+--------+----------+--------------+-----------+----+-------------+-----+------------+-----+-----------------+-------------------+
| m0     | 10.0.0.1 | Leader       | running   |  1 |             |     |            |     |                 |                   |
| m1     | 10.0.0.2 | Sync Standby | streaming |  1 |    0/300000 |   0 |   0/300000 |   0 |                 |                   |
| m2     | 10.0.0.3 | Replica      | streaming |  1 |    0/100000 |   2 |   0/100000 |   2 | *               | replicatefrom: m1 |
+--------+----------+--------------+-----------+----+-------------+-----+------------+-----+-----------------+-------------------+
"
        );
    }

    #[tokio::test]
    async fn topology_prints_the_replication_tree() {
        let out = listed(args(Format::Tsv), true).await;
        let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(rows[0][..4], ["Cluster", "Member", "Host", "Role"], "{out}");
        assert_eq!(rows[1][..4], ["demo", "m0", "10.0.0.1", "Leader"], "{out}");
        assert_eq!(rows[2][..4], ["demo", "+ m1", "10.0.0.2", "Sync Standby"]);
        assert_eq!(rows[3][..4], ["demo", "  + m2", "10.0.0.3", "Replica"]);
        assert_eq!(rows.len(), 4, "{out}");
    }

    #[tokio::test]
    async fn timestamp_comes_first() {
        let mut a = args(Format::Json);
        a.timestamp = true;
        let out = listed(a, false).await;
        let first = out.lines().next().unwrap_or_default();
        assert!(
            chrono::NaiveDateTime::parse_from_str(first, "%Y-%m-%d %H:%M:%S").is_ok(),
            "{out}"
        );
        assert!(
            out.lines().nth(1).unwrap_or_default().starts_with("[{"),
            "{out}"
        );
    }
}
