//! The Citus steps on a new primary of each group, right after `initdb` and the roles:
//!
//! 1. `CREATE DATABASE <database>` unless it is `postgres` (already existing is fine);
//! 2. `CREATE EXTENSION IF NOT EXISTS citus` in it;
//! 3. the superuser's password / client certificate in `pg_dist_authinfo` (node 0 = every node),
//!    so Citus reaches the other groups with the same credentials as the agent;
//! 4. on the coordinator, its own address as the group 0 node (`citus_set_coordinator_host`).
//!
//! Every step is idempotent, so a bootstrap interrupted and retried on the same data directory
//! ends in the same state. The session commits locally (`synchronous_commit=local`: no standby
//! exists yet) and without a statement timeout (`CREATE EXTENSION citus` takes a while).

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

/// Where the coordinator's other groups reach it: the host and port of its `conn_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub host: String,
    pub port: u16,
}

/// The superuser's connection options Citus needs to reach other nodes as that user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub password: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

impl AuthInfo {
    /// The libpq `key=value` string stored in `pg_dist_authinfo`; `None` when nothing is set.
    pub fn conninfo(&self) -> Option<String> {
        let pairs: Vec<String> = [
            ("password", &self.password),
            ("sslcert", &self.sslcert),
            ("sslkey", &self.sslkey),
        ]
        .into_iter()
        .filter_map(|(key, value)| {
            value
                .as_deref()
                .map(|v| format!("{key}={}", pgquote::conninfo_value(v)))
        })
        .collect();
        (!pairs.is_empty()).then(|| pairs.join(" "))
    }
}

/// What the bootstrap of one new primary does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// `citus.database`.
    pub database: String,
    /// `Some` on the coordinator (group 0): its own address, registered as node of group 0.
    pub coordinator: Option<NodeAddress>,
    pub superuser: AuthInfo,
}

#[derive(Debug, thiserror::Error)]
#[error("{step}: {}", describe(.source))]
pub struct BootstrapError {
    pub step: String,
    #[source]
    pub source: tokio_postgres::Error,
}

/// A Postgres error with its SQLSTATE when the server sent one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Run the bootstrap against the local server. `local` connects as the superuser (its database
/// name is replaced per step).
pub async fn run(local: &Config, plan: &Bootstrap) -> Result<(), BootstrapError> {
    let fail = |step: &str| {
        let step = step.to_string();
        move |source| BootstrapError { step, source }
    };
    if plan.database != "postgres" {
        let client = connect(local, "postgres")
            .await
            .map_err(fail("connect to database postgres"))?;
        let create = format!("CREATE DATABASE {}", pgquote::ident(&plan.database));
        match client.batch_execute(&create).await {
            Ok(()) => tracing::info!(database = %plan.database, "created the Citus database"),
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(fail(&format!("create database {}", plan.database))(e)),
        }
    }

    let client = connect(local, &plan.database)
        .await
        .map_err(fail(&format!("connect to database {}", plan.database)))?;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS citus")
        .await
        .map_err(fail("create extension citus"))?;

    if let Some(conninfo) = plan.superuser.conninfo() {
        client
            .execute(
                "INSERT INTO pg_catalog.pg_dist_authinfo (nodeid, rolename, authinfo) \
                 SELECT 0, pg_catalog.current_user(), $1::text \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_authinfo \
                                   WHERE nodeid = 0 AND rolename = pg_catalog.current_user())",
                &[&conninfo],
            )
            .await
            .map_err(fail("store the superuser credentials in pg_dist_authinfo"))?;
    }

    if let Some(own) = &plan.coordinator {
        client
            .execute(
                "SELECT pg_catalog.citus_set_coordinator_host($1, $2, 'primary', 'default')",
                &[&own.host, &i32::from(own.port)],
            )
            .await
            .map_err(fail(
                "register the coordinator (citus_set_coordinator_host)",
            ))?;
        tracing::info!(host = %own.host, port = own.port, "registered the coordinator in pg_dist_node");
    }
    Ok(())
}

async fn connect(local: &Config, database: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config = local.clone();
    config.dbname(database);
    let options = [
        local.get_options().unwrap_or_default(),
        "-c synchronous_commit=local -c statement_timeout=0",
    ]
    .join(" ");
    config.options(options.trim());
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "Citus bootstrap connection closed");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authinfo_is_a_libpq_string() {
        assert_eq!(AuthInfo::default().conninfo(), None);
        let auth = AuthInfo {
            password: Some("it's a \\secret".into()),
            sslcert: None,
            sslkey: Some("/etc/ssl/key.pem".into()),
        };
        assert_eq!(
            auth.conninfo().as_deref(),
            Some(r"password='it\'s a \\secret' sslkey=/etc/ssl/key.pem")
        );
        let only_cert = AuthInfo {
            sslcert: Some("/c.pem".into()),
            ..AuthInfo::default()
        };
        assert_eq!(only_cert.conninfo().as_deref(), Some("sslcert=/c.pem"));
        let empty_password = AuthInfo {
            password: Some(String::new()),
            ..AuthInfo::default()
        };
        assert_eq!(empty_password.conninfo().as_deref(), Some("password=''"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(pgquote::ident("citus"), "\"citus\"");
        assert_eq!(pgquote::ident("a\"b"), "\"a\"\"b\"");
    }
}
