//! `history`: the timelines the cluster went through, from the DCS `history` key.

use std::io::Write;

use dcs::Cluster;
use serde_json::Value;

use crate::ctl::context::Ctx;
use crate::ctl::output::{Format, Table};
use crate::ctl::CtlResult;

pub async fn run(ctx: &Ctx, fmt: Format, out: &mut dyn Write) -> CtlResult {
    let cluster = ctx.cluster().await?;
    write_history(&cluster, fmt, out)?;
    Ok(())
}

fn write_history(cluster: &Cluster, fmt: Format, out: &mut dyn Write) -> std::io::Result<()> {
    let rows = cluster
        .history
        .iter()
        .map(|h| {
            vec![
                Value::from(h.timeline),
                Value::from(h.lsn),
                Value::String(h.reason.clone()),
                Value::String(h.timestamp.clone().unwrap_or_default()),
                Value::String(h.new_leader.clone().unwrap_or_default()),
            ]
        })
        .collect();
    let table = Table {
        columns: ["TL", "LSN", "Reason", "Timestamp", "New Leader"]
            .map(String::from)
            .to_vec(),
        rows,
        right: vec!["TL", "LSN"],
        title: String::new(),
    };
    write!(out, "{}", table.render(fmt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::fixtures::{cluster, memory_ctx, text};

    fn with_history() -> dcs::Cluster {
        let mut c = cluster();
        c.history = vec![
            dcs::HistoryEntry {
                timeline: 1,
                lsn: 50331808,
                reason: "no recovery target specified".into(),
                timestamp: Some("2026-12-08T01:02:03.123456+00:00".into()),
                new_leader: Some("m1".into()),
            },
            dcs::HistoryEntry {
                timeline: 2,
                lsn: 83886240,
                reason: "no recovery target specified".into(),
                timestamp: None,
                new_leader: None,
            },
        ];
        c
    }

    fn history_of(fmt: Format) -> String {
        let mut out = Vec::new();
        write_history(&with_history(), fmt, &mut out).expect("write");
        text(out)
    }

    /// The command reads the history the DCS holds.
    #[tokio::test]
    async fn history_command_prints_the_dcs_history() {
        let ctx = memory_ctx(&with_history()).await;
        let mut out = Vec::new();
        run(&ctx, Format::Tsv, &mut out).await.expect("history");
        assert_eq!(
            text(out),
            "TL\tLSN\tReason\tTimestamp\tNew Leader\n\
             1\t50331808\tno recovery target specified\t2026-12-08T01:02:03.123456+00:00\tm1\n\
             2\t83886240\tno recovery target specified\t\t\n"
        );
    }

    #[test]
    fn history_as_a_table_and_as_json() {
        assert_eq!(
            history_of(Format::Pretty),
            "\
+----+----------+------------------------------+----------------------------------+------------+
| TL |      LSN | Reason                       | Timestamp                        | New Leader |
+----+----------+------------------------------+----------------------------------+------------+
|  1 | 50331808 | no recovery target specified | 2026-12-08T01:02:03.123456+00:00 | m1         |
|  2 | 83886240 | no recovery target specified |                                  |            |
+----+----------+------------------------------+----------------------------------+------------+
"
        );
        assert_eq!(
            history_of(Format::Json),
            "[{\"TL\": 1, \"LSN\": 50331808, \"Reason\": \"no recovery target specified\", \
             \"Timestamp\": \"2026-12-08T01:02:03.123456+00:00\", \"New Leader\": \"m1\"}, \
             {\"TL\": 2, \"LSN\": 83886240, \"Reason\": \"no recovery target specified\", \
             \"Timestamp\": \"\", \"New Leader\": \"\"}]\n"
        );
    }

    #[test]
    fn no_history_is_an_empty_table() {
        let mut out = Vec::new();
        write_history(&cluster(), Format::Tsv, &mut out).expect("write");
        assert_eq!(text(out), "TL\tLSN\tReason\tTimestamp\tNew Leader\n");
    }
}
