//! `show-config`: the dynamic configuration in the DCS, as YAML.

use std::io::Write;

use dcs::Cluster;
use serde_json::{Map, Value};

use crate::ctl::context::Ctx;
use crate::ctl::output::to_yaml;
use crate::ctl::CtlResult;

pub async fn run(ctx: &Ctx, out: &mut dyn Write) -> CtlResult {
    let cluster = ctx.cluster().await?;
    write_config(cluster, out)?;
    Ok(())
}

/// An empty mapping when the cluster has no configuration yet.
fn write_config(cluster: Cluster, out: &mut dyn Write) -> std::io::Result<()> {
    let raw = cluster
        .config
        .map(|c| c.raw)
        .unwrap_or_else(|| Value::Object(Map::new()));
    write!(out, "{}", to_yaml(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::fixtures::{cluster, memory_ctx, text};
    use serde_json::json;

    fn shown(cluster: Cluster) -> String {
        let mut out = Vec::new();
        write_config(cluster, &mut out).expect("write");
        text(out)
    }

    #[tokio::test]
    async fn show_config_prints_the_dcs_config() {
        let ctx = memory_ctx(&cluster()).await;
        let mut out = Vec::new();
        run(&ctx, &mut out).await.expect("show-config");
        assert_eq!(text(out), "synchronous_mode: true\n");
    }

    #[test]
    fn config_is_block_yaml_with_sorted_keys() {
        let mut c = cluster();
        c.config = Some(dcs::ClusterConfig {
            raw: json!({"ttl": 30, "loop_wait": 10,
                "postgresql": {"parameters": {"max_connections": 100}, "use_pg_rewind": true}}),
            version: None,
        });
        assert_eq!(
            shown(c),
            "loop_wait: 10\npostgresql:\n  parameters:\n    max_connections: 100\n  use_pg_rewind: true\nttl: 30\n"
        );
    }

    #[test]
    fn no_config_is_an_empty_mapping() {
        let mut c = cluster();
        c.config = None;
        assert_eq!(shown(c), "{}\n");
    }
}
