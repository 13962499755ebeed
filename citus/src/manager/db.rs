//! The statements the manager runs, behind a trait so the state machine can be tested without a
//! server, and their implementation on one dedicated `tokio_postgres` connection.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{CancelToken, Client, Config, NoTls, Row};

use super::DistNode;

/// A failed statement, classified by SQLSTATE and then by message (reference: "Classify errors").
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DbError {
    /// None: the connection is gone or the client gave up waiting.
    pub sqlstate: Option<String>,
    pub message: String,
}

impl DbError {
    pub fn new(sqlstate: Option<&str>, message: impl Into<String>) -> DbError {
        DbError {
            sqlstate: sqlstate.map(str::to_string),
            message: message.into(),
        }
    }

    fn state_is(&self, code: &SqlState) -> bool {
        self.sqlstate.as_deref() == Some(code.code())
    }

    /// Worth another try on the same connection: a deadlock victim (40P01), or Citus refusing
    /// an add while a metadata worker is still being synced (55000 "... out of sync").
    pub fn is_retryable(&self) -> bool {
        self.state_is(&SqlState::T_R_DEADLOCK_DETECTED)
            || (self.state_is(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
                && self.message.contains("out of sync"))
    }

    /// Citus refuses node management here: this server is not the coordinator.
    pub fn is_not_coordinator(&self) -> bool {
        self.state_is(&SqlState::INTERNAL_ERROR)
            && self
                .message
                .contains("operation is not allowed on this node")
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sqlstate {
            Some(code) => write!(f, "{} (SQLSTATE {code})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        match e.as_db_error() {
            Some(db) => DbError::new(Some(db.code().code()), db.message()),
            None => DbError::new(None, e.to_string()),
        }
    }
}

/// What the manager needs from the coordinator's database. Every method is one round trip
/// (or a few, for the timeouts) on the same connection; a transaction spans calls.
pub(crate) trait Db: Send {
    /// Connect if not connected.
    fn connect(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;
    /// Drop the connection: the server rolls back an open transaction.
    fn disconnect(&mut self);
    fn is_connected(&self) -> bool;
    /// Where the current connection's cancel token is kept, to cancel a running statement
    /// from outside (stop); the same cell for the whole life of the `Db`.
    fn canceller(&self) -> Canceller;
    /// `citus_is_coordinator()`.
    fn is_coordinator(&mut self) -> impl Future<Output = Result<bool, DbError>> + Send;
    /// Every `pg_dist_node` row (columns by name).
    fn read_nodes(&mut self) -> impl Future<Output = Result<Vec<DistNode>, DbError>> + Send;
    /// How many metadata workers still wait for the metadata sync.
    fn unsynced_metadata_nodes(&mut self) -> impl Future<Output = Result<i64, DbError>> + Send;
    /// `BEGIN`, with the server's idle-in-transaction limit for this transaction.
    fn begin(&mut self, idle_limit: Duration) -> impl Future<Output = Result<(), DbError>> + Send;
    /// Move the open transaction's idle-in-transaction limit.
    fn set_idle_limit(
        &mut self,
        idle_limit: Duration,
    ) -> impl Future<Output = Result<(), DbError>> + Send;
    fn savepoint(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;
    fn rollback_to_savepoint(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;
    fn commit(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;
    fn rollback(&mut self) -> impl Future<Output = Result<(), DbError>> + Send;
    /// `citus_update_node(nodeid, host, port, true, cooldown_ms)`.
    fn update_node(
        &mut self,
        nodeid: i32,
        host: &str,
        port: u16,
        cooldown_ms: i32,
    ) -> impl Future<Output = Result<(), DbError>> + Send;
    /// `citus_add_node(host, port, group, 'primary', 'default')`.
    fn add_node(
        &mut self,
        host: &str,
        port: u16,
        group: u32,
    ) -> impl Future<Output = Result<i32, DbError>> + Send;
    /// `citus_set_coordinator_host(host, port, 'primary', 'default')`.
    fn set_coordinator_host(
        &mut self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<(), DbError>> + Send;
}

/// The cancel token of the current connection, if any.
pub(crate) type Canceller = Arc<Mutex<Option<CancelToken>>>;

/// Cancel the statement running on the connection `canceller` belongs to (best effort).
pub(crate) async fn cancel_running(canceller: &Canceller) {
    let token = match canceller.lock() {
        Ok(token) => token.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    if let Some(token) = token {
        let _ = token.cancel_query(NoTls).await;
    }
}

/// Bounds for the dedicated connection.
#[derive(Debug, Clone)]
pub(crate) struct PgLimits {
    /// The session's `statement_timeout` for reads and the transaction statements.
    pub statement_timeout: Duration,
    /// The session's `idle_in_transaction_session_timeout` outside an explicit limit.
    pub idle_in_transaction: Duration,
    /// How much longer than `lock_cooldown` a forced `citus_update_node` may run.
    pub update_margin: Duration,
}

/// The real thing: one connection to the coordinator's Citus database.
pub(crate) struct PgDb {
    config: Config,
    limits: PgLimits,
    client: Option<Client>,
    cancel: Canceller,
    /// The client-side bound of statements that set no timeout of their own: the longest
    /// `statement_timeout` the session may have (a rollback can undo a `SET`, so it is set
    /// again before each change rather than tracked).
    statement_timeout: Duration,
}

const NODE_COLUMNS: &str =
    "SELECT nodeid, groupid, nodename, nodeport, noderole::text AS noderole, \
     isactive, hasmetadata, metadatasynced FROM pg_catalog.pg_dist_node ORDER BY nodeid";

impl PgDb {
    pub fn new(mut config: Config, limits: PgLimits) -> PgDb {
        // The session limits travel in the startup packet, so even the first statement is
        // bounded; options the caller set are kept.
        let mut options = config.get_options().unwrap_or_default().to_string();
        options.push_str(&format!(
            " -c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            limits.statement_timeout.as_millis(),
            limits.idle_in_transaction.as_millis()
        ));
        config.options(options.trim());
        if config.get_application_name().is_none() {
            config.application_name("regent-citus");
        }
        let statement_timeout = limits.statement_timeout;
        PgDb {
            config,
            limits,
            client: None,
            cancel: Arc::default(),
            statement_timeout,
        }
    }

    fn set_cancel_token(&self, token: Option<CancelToken>) {
        match self.cancel.lock() {
            Ok(mut cell) => *cell = token,
            Err(poisoned) => *poisoned.into_inner() = token,
        }
    }

    fn client(&self) -> Result<&Client, DbError> {
        self.client
            .as_ref()
            .filter(|c| !c.is_closed())
            .ok_or_else(|| DbError::new(None, "not connected"))
    }

    /// Drop the connection after an error that left it unusable (no SQLSTATE: closed, or the
    /// client-side limit passed).
    fn checked<T>(&mut self, result: Result<T, DbError>) -> Result<T, DbError> {
        if matches!(&result, Err(e) if e.sqlstate.is_none()) {
            self.disconnect();
        }
        result
    }

    async fn execute(&mut self, sql: &str) -> Result<(), DbError> {
        let limit = self.statement_timeout;
        let result = match self.client() {
            Ok(client) => bounded(limit, sql, client.batch_execute(sql)).await,
            Err(e) => Err(e),
        };
        self.checked(result)
    }

    async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        limit: Duration,
    ) -> Result<Vec<Row>, DbError> {
        let result = match self.client() {
            Ok(client) => bounded(limit, sql, client.query(sql, params)).await,
            Err(e) => Err(e),
        };
        self.checked(result)
    }

    /// Session `statement_timeout` for the next statements.
    async fn set_statement_timeout(&mut self, limit: Duration) -> Result<(), DbError> {
        self.statement_timeout = self.statement_timeout.max(limit);
        self.execute(&format!("SET statement_timeout = {}", limit.as_millis()))
            .await
    }
}

/// A statement bounded on the client side too, so a server that stops answering cannot stall
/// the manager: past the limit (plus a grace for the server's own timeout) it fails without a
/// SQLSTATE and the connection is dropped.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    run: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(limit + Duration::from_secs(5), run).await {
        Ok(result) => result.map_err(DbError::from),
        Err(_) => Err(DbError::new(
            None,
            format!("{what}: no answer within {limit:?}"),
        )),
    }
}

fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    name: &str,
) -> Result<T, DbError> {
    row.try_get(name)
        .map_err(|e| DbError::new(None, format!("pg_dist_node.{name}: {e}")))
}

fn node_from_row(row: &Row) -> Result<DistNode, DbError> {
    Ok(DistNode {
        nodeid: column(row, "nodeid")?,
        groupid: column(row, "groupid")?,
        nodename: column(row, "nodename")?,
        nodeport: column(row, "nodeport")?,
        noderole: column(row, "noderole")?,
        isactive: column(row, "isactive")?,
        hasmetadata: column(row, "hasmetadata")?,
        metadatasynced: column(row, "metadatasynced")?,
    })
}

impl Db for PgDb {
    async fn connect(&mut self) -> Result<(), DbError> {
        if self.is_connected() {
            return Ok(());
        }
        self.client = None;
        let connecting = self.config.connect(NoTls);
        let (client, connection) =
            match tokio::time::timeout(Duration::from_secs(10), connecting).await {
                Ok(result) => result?,
                Err(_) => return Err(DbError::new(None, "connecting: no answer within 10s")),
            };
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "citus: pg_dist_node connection ended");
            }
        });
        self.set_cancel_token(Some(client.cancel_token()));
        self.client = Some(client);
        self.statement_timeout = self.limits.statement_timeout;
        Ok(())
    }

    fn disconnect(&mut self) {
        self.client = None;
        self.set_cancel_token(None);
    }

    fn is_connected(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    fn canceller(&self) -> Canceller {
        self.cancel.clone()
    }

    async fn is_coordinator(&mut self) -> Result<bool, DbError> {
        let limit = self.statement_timeout;
        let rows = self
            .query(
                "SELECT pg_catalog.citus_is_coordinator() AS is_coordinator",
                &[],
                limit,
            )
            .await?;
        match rows.first() {
            Some(row) => column(row, "is_coordinator"),
            None => Err(DbError::new(None, "citus_is_coordinator() returned no row")),
        }
    }

    async fn read_nodes(&mut self) -> Result<Vec<DistNode>, DbError> {
        let limit = self.statement_timeout;
        let rows = self.query(NODE_COLUMNS, &[], limit).await?;
        rows.iter().map(node_from_row).collect()
    }

    async fn unsynced_metadata_nodes(&mut self) -> Result<i64, DbError> {
        let limit = self.statement_timeout;
        let rows = self
            .query(
                "SELECT count(*) AS unsynced FROM pg_catalog.pg_dist_node \
                 WHERE hasmetadata AND NOT metadatasynced",
                &[],
                limit,
            )
            .await?;
        match rows.first() {
            Some(row) => column(row, "unsynced"),
            None => Ok(0),
        }
    }

    async fn begin(&mut self, idle_limit: Duration) -> Result<(), DbError> {
        self.execute("BEGIN").await?;
        self.set_idle_limit(idle_limit).await
    }

    async fn set_idle_limit(&mut self, idle_limit: Duration) -> Result<(), DbError> {
        self.execute(&format!(
            "SET LOCAL idle_in_transaction_session_timeout = {}",
            idle_limit.as_millis().max(1)
        ))
        .await
    }

    async fn savepoint(&mut self) -> Result<(), DbError> {
        self.execute("SAVEPOINT regent_pg_dist_node").await
    }

    async fn rollback_to_savepoint(&mut self) -> Result<(), DbError> {
        self.execute("ROLLBACK TO SAVEPOINT regent_pg_dist_node")
            .await
    }

    async fn commit(&mut self) -> Result<(), DbError> {
        self.execute("COMMIT").await
    }

    async fn rollback(&mut self) -> Result<(), DbError> {
        self.execute("ROLLBACK").await
    }

    async fn update_node(
        &mut self,
        nodeid: i32,
        host: &str,
        port: u16,
        cooldown_ms: i32,
    ) -> Result<(), DbError> {
        // With force, Citus waits up to the cooldown and then terminates the blockers.
        let limit = Duration::from_millis(cooldown_ms.max(0) as u64) + self.limits.update_margin;
        self.set_statement_timeout(limit).await?;
        let port = i32::from(port);
        self.query(
            "SELECT pg_catalog.citus_update_node($1, $2, $3, true, $4)",
            &[&nodeid, &host, &port, &cooldown_ms],
            limit,
        )
        .await?;
        Ok(())
    }

    async fn add_node(&mut self, host: &str, port: u16, group: u32) -> Result<i32, DbError> {
        let limit = self.limits.statement_timeout;
        self.set_statement_timeout(limit).await?;
        let port = i32::from(port);
        let group = i32::try_from(group)
            .map_err(|_| DbError::new(None, format!("group {group} is out of range")))?;
        let rows = self
            .query(
                "SELECT pg_catalog.citus_add_node($1, $2, $3, 'primary', 'default') AS nodeid",
                &[&host, &port, &group],
                limit,
            )
            .await?;
        match rows.first() {
            Some(row) => column(row, "nodeid"),
            None => Err(DbError::new(None, "citus_add_node returned no row")),
        }
    }

    async fn set_coordinator_host(&mut self, host: &str, port: u16) -> Result<(), DbError> {
        let limit = self.limits.statement_timeout;
        self.set_statement_timeout(limit).await?;
        let port = i32::from(port);
        self.query(
            "SELECT pg_catalog.citus_set_coordinator_host($1, $2, 'primary', 'default')",
            &[&host, &port],
            limit,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        let cases = [
            (Some("40P01"), "deadlock detected", true, false),
            (
                Some("55000"),
                "127.0.0.1:55434 is a metadata node, but is out of sync",
                true,
                false,
            ),
            (
                Some("55000"),
                "there is already another node with the specified hostname and port",
                false,
                false,
            ),
            (
                Some("XX000"),
                "operation is not allowed on this node",
                false,
                true,
            ),
            (
                Some("XX000"),
                "node at \"h:1\" does not exist",
                false,
                false,
            ),
            (
                Some("57014"),
                "canceling statement due to statement timeout",
                false,
                false,
            ),
            (None, "connection closed", false, false),
        ];
        for (state, message, retryable, not_coordinator) in cases {
            let e = DbError::new(state, message);
            assert_eq!(e.is_retryable(), retryable, "{e}");
            assert_eq!(e.is_not_coordinator(), not_coordinator, "{e}");
        }
        assert_eq!(
            DbError::new(Some("P0002"), "node 9 not found").to_string(),
            "node 9 not found (SQLSTATE P0002)"
        );
    }
}
