//! Probe rows: small writes used to check who accepts writes and what replicated where.

use anyhow::{anyhow, Context, Result};
use tokio_postgres::Client;

use crate::member::{Member, PG_CONNECT_TIMEOUT};

/// Table the probe helpers write to (the `Writer` has its own table).
pub const PROBE_TABLE: &str = "regent_probe";

/// Create the probe table if it does not exist (run it on the primary).
pub async fn create_probe_table(client: &Client) -> Result<()> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (id bigint PRIMARY KEY, \
         written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    );
    tokio::time::timeout(PG_CONNECT_TIMEOUT * 2, client.batch_execute(&sql))
        .await
        .map_err(|_| anyhow!("CREATE TABLE {PROBE_TABLE} timed out"))?
        .with_context(|| format!("CREATE TABLE {PROBE_TABLE}"))
}

/// Insert probe row `id`; Ok only once the server acknowledged the commit.
pub async fn insert_probe(client: &Client, id: i64) -> Result<()> {
    let sql = format!("INSERT INTO {PROBE_TABLE} (id) VALUES ($1)");
    tokio::time::timeout(PG_CONNECT_TIMEOUT, client.execute(&sql, &[&id]))
        .await
        .map_err(|_| anyhow!("insert of probe {id} timed out"))?
        .with_context(|| format!("insert probe {id}"))
        .map(|_| ())
}

/// All probe ids, ascending.
pub async fn probe_ids(client: &Client) -> Result<Vec<i64>> {
    let sql = format!("SELECT id FROM {PROBE_TABLE} ORDER BY id");
    let rows = tokio::time::timeout(PG_CONNECT_TIMEOUT * 2, client.query(&sql, &[]))
        .await
        .map_err(|_| anyhow!("select from {PROBE_TABLE} timed out"))?
        .with_context(|| format!("select from {PROBE_TABLE}"))?;
    rows.iter()
        .map(|row| row.try_get(0).context("probe id column"))
        .collect()
}

impl Member {
    /// Create the probe table through this member (must be the primary).
    pub async fn create_probe_table(&self) -> Result<()> {
        create_probe_table(&self.pg_client().await?).await
    }

    /// Connect and insert probe row `id`: Ok means this member accepted and committed a write.
    pub async fn write_probe(&self, id: i64) -> Result<()> {
        insert_probe(&self.pg_client().await?, id).await
    }

    /// All probe ids visible on this member.
    pub async fn probe_ids(&self) -> Result<Vec<i64>> {
        probe_ids(&self.pg_client().await?).await
    }

    /// True if probe row `id` is visible on this member.
    pub async fn has_probe(&self, id: i64) -> Result<bool> {
        let client = self.pg_client().await?;
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {PROBE_TABLE} WHERE id = $1)");
        let row = tokio::time::timeout(PG_CONNECT_TIMEOUT, client.query_one(&sql, &[&id]))
            .await
            .map_err(|_| anyhow!("probe lookup timed out"))??;
        Ok(row.try_get(0)?)
    }
}
