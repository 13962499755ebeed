//! The neutral cluster model and the distributed configuration store's interface.
//!
//! Nothing here does IO: the types describe a cluster as every backend, the HA core and the REST
//! API see it, and [`Dcs`] is the interface each backend (the `dcs` crate) implements.
//!
//! The lock semantics are the trait's contract, identical on every backend:
//! * `attempt_to_acquire_leader` succeeds for at most one member while the lock is held; it is a
//!   compare-and-swap (etcd: `create_revision == 0`; Kubernetes: resourceVersion).
//! * `update_leader` succeeds only if the lock is still held by this member; on success the lock is
//!   guaranteed to be held for at least `ttl` seconds counted from the moment the call was *started*
//!   (so the caller can compute a safe local deadline without trusting the server's clock).
//! * `delete_leader` removes the lock only if this member holds it.
//! * every other write that can race takes the version seen at the last read and fails (Ok(false))
//!   when someone else wrote in between.

mod cluster;

use std::time::Duration;

use async_trait::async_trait;
pub use cluster::*;

/// Errors talking to the DCS. `Ok(false)` results, not errors, report lost races.
#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    /// The store could not be reached or did not answer within the retry budget.
    #[error("DCS unreachable: {0}")]
    Unreachable(String),
    /// The store answered with something we cannot use (bad status, bad body).
    #[error("DCS error: {0}")]
    Protocol(String),
    /// Access denied (authentication / authorisation).
    #[error("DCS access denied: {0}")]
    Forbidden(String),
}

pub type DcsResult<T> = Result<T, DcsError>;

/// Timing parameters a backend must follow; they come from the dynamic config and may change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
        }
    }
}

/// The interface the HA loop, the REST API and `regent ctl` use, whatever the backend.
///
/// A backend instance is bound to one member (`name`) of one cluster (`scope`, optional Citus
/// `group`).
#[async_trait]
pub trait Dcs: Send + Sync {
    /// Name of the backend for logs (`etcd3`, `kubernetes`).
    fn kind(&self) -> &'static str;

    /// Apply new timing (ttl, loop_wait, retry_timeout) from the dynamic configuration.
    fn set_timing(&self, timing: Timing);

    /// Read the whole cluster view with one round-trip where the backend allows it. On the Citus
    /// coordinator (group 0) the same round trip also fills [`Cluster::workers`] with every
    /// worker group.
    async fn get_cluster(&self) -> DcsResult<Cluster>;

    /// Read one Citus group of this cluster (same scope) with one round trip, e.g. a worker
    /// looking up the coordinator's leader (group 0) to send it `POST /citus`. The result's
    /// `workers` is empty. Problems in that group's objects are warnings, never an error.
    async fn get_group(&self, group: u32) -> DcsResult<Cluster>;

    /// Publish this member's data (kept alive with the member's session/lease).
    async fn touch_member(&self, data: &MemberData) -> DcsResult<()>;

    /// Remove this member's data (clean shutdown of a non-leader).
    async fn delete_member(&self) -> DcsResult<()>;

    /// Try to take the free leader lock. `Ok(true)`: won. `Ok(false)`: someone else holds it.
    async fn attempt_to_acquire_leader(&self) -> DcsResult<bool>;

    /// Renew the lock held by this member and record `optime`. `Ok(false)`: not ours any more
    /// (another member holds it); an error leaves that open. `failsafe`: write this topology in
    /// the same request (an empty one removes it); `None` leaves the stored value alone.
    async fn update_leader(
        &self,
        cluster: &Cluster,
        optime: Option<u64>,
        failsafe: Option<&FailsafeTopology>,
    ) -> DcsResult<bool>;

    /// Release the lock if this member holds it, recording the last `optime`.
    async fn delete_leader(&self, optime: Option<u64>) -> DcsResult<bool>;

    /// `create_new`: race to create `initialize` (value `sysid`, usually `""`); otherwise set it.
    async fn initialize(&self, create_new: bool, sysid: &str) -> DcsResult<bool>;

    /// Remove `initialize` after a failed bootstrap so another member may try.
    async fn cancel_initialization(&self) -> DcsResult<()>;

    /// Write the dynamic config (CAS on `version` when given). `Ok(false)`: lost the race.
    async fn set_config_value(
        &self,
        value: &serde_json::Value,
        version: Option<&str>,
    ) -> DcsResult<bool>;

    /// Write the timeline history list.
    async fn set_history_value(&self, history: &[HistoryEntry]) -> DcsResult<()>;

    /// Write the failover/switchover request (CAS on `version` when given).
    async fn set_failover_value(
        &self,
        failover: &Failover,
        version: Option<&str>,
    ) -> DcsResult<bool>;

    /// Clear the failover request (CAS on `version` when given).
    async fn delete_failover(&self, version: Option<&str>) -> DcsResult<bool>;

    /// Write the sync state (CAS on `version` when given).
    async fn set_sync_state(&self, sync: &SyncState, version: Option<&str>) -> DcsResult<bool>;

    /// Remove the sync state (CAS on `version` when given).
    async fn delete_sync_state(&self, version: Option<&str>) -> DcsResult<bool>;

    /// Write the leader status (`optime`, slots) without CAS.
    async fn write_status(&self, status: &Status) -> DcsResult<()>;

    /// Wait until a change that matters for HA decisions (leader lock, config, failover,
    /// initialize, sync) happens, or `timeout` passes. Returns `true` when woken by a change.
    /// Changes that happen between two calls are not lost: the next call returns at once. The
    /// Citus coordinator is also woken when any worker group's lock holder changes.
    async fn watch(&self, timeout: Duration) -> bool;

    /// Release the session (etcd lease revoke): member key and any lock bound to it go away.
    async fn close(&self) -> DcsResult<()>;
}
