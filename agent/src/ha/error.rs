//! The HA loop's errors.

use crate::postgres::PgError;
use dcs::DcsError;

/// Why bootstrapping a new cluster failed; the data directory is wiped and the race can run
/// again.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Dcs(#[from] DcsError),
    #[error("could not take the leader lock after bootstrap")]
    LockNotTaken,
}

/// A fresh read of the cluster for a REST operation failed; the text is the 503 answer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterReadError {
    #[error("cannot read the cluster from the DCS: {0}")]
    Dcs(#[from] DcsError),
    #[error("reading the cluster from the DCS timed out")]
    Timeout,
}

/// A changed configuration file that cannot be applied to a running member.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReloadRefused {
    #[error("scope cannot change ({old} -> {new})")]
    Scope { old: String, new: String },
    #[error("name cannot change ({old} -> {new})")]
    Name { old: String, new: String },
    #[error("postgresql.data_dir cannot change")]
    DataDir,
}

/// The configuration file (or the REST API's credentials it names) could not be read again;
/// the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Security(#[from] rest::security::SecurityError),
}

/// A dynamic configuration the parser would have to correct: one problem per key, each naming
/// the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}", .0.join("; "))]
pub struct InvalidDynamicConfig(pub Vec<String>);

/// What stops the loop for good: the data directory belongs to another cluster, for one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Fatal(pub String);
