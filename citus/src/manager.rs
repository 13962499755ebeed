//! The coordinator leader's `pg_dist_node` manager (docs/compatibility.md, *Citus*).
//!
//! One task owns one dedicated connection to the coordinator's Citus database and applies every
//! change, one at a time:
//! - each HA cycle ([`NodeManager::heartbeat`]) brings the DCS truth: group 0 = this coordinator,
//!   and each worker group's running primary; rows that already match are left alone;
//! - a worker's `POST /citus` ([`NodeManager::rest_event`]) runs the controlled switchover:
//!   `before_demote` opens a transaction and points the group's node at `<host>-demoted` (Citus
//!   then holds the writes routed to it), `before_promote` points it at the new primary inside
//!   the same transaction, `after_promote` commits. The transaction has a deadline (the event's
//!   `timeout`); past it the manager rolls back and the next heartbeat applies the DCS state.
//!   The server enforces the same bound (`idle_in_transaction_session_timeout`) in case the
//!   agent hangs, and rolls back if the agent dies.
//!
//! Nothing is done unless `citus_is_coordinator()` is true. Nodes are looked up by group and
//! `noderole = 'primary'` (a node's name carries `-demoted` during a switchover), every change is
//! confirmed by reading `pg_dist_node` again, nodes are never removed, and a worker group that
//! is in `pg_dist_node` but not among the heartbeat targets is reported once, not dropped.

mod db;
mod queue;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::event::{duration_ms_i32, CitusEvent};
pub use worker::ManagerOptions;

/// Where a group's primary should be: host and port from its DCS leader's `conn_url`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeTarget {
    pub group: u32,
    pub host: String,
    pub port: u16,
}

/// Why a node target cannot be written to `pg_dist_node`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("group {group}: empty host")]
    EmptyHost { group: u32 },
    #[error("group {group}: invalid host {host:?}")]
    InvalidHost { group: u32, host: String },
    #[error("group {group}: host {host:?} ends with {:?}", worker::DEMOTED_SUFFIX)]
    DemotedHost { group: u32, host: String },
    #[error("group {group}: port 0 is not in 1..65535")]
    PortZero { group: u32 },
    #[error("group {group} is out of range")]
    GroupOutOfRange { group: u32 },
}

impl NodeTarget {
    /// A usable target: a host (without the `-demoted` suffix the manager uses itself) and a
    /// port in 1..=65535, in a group `pg_dist_node` can hold.
    pub fn validate(&self) -> Result<(), TargetError> {
        let group = self.group;
        if self.host.trim().is_empty() {
            return Err(TargetError::EmptyHost { group });
        }
        if self.host.contains(['\0', ' ', '\'', '"']) {
            return Err(TargetError::InvalidHost {
                group,
                host: self.host.clone(),
            });
        }
        if self.host.ends_with(worker::DEMOTED_SUFFIX) {
            return Err(TargetError::DemotedHost {
                group,
                host: self.host.clone(),
            });
        }
        if self.port == 0 {
            return Err(TargetError::PortZero { group });
        }
        if i32::try_from(group).is_err() {
            return Err(TargetError::GroupOutOfRange { group });
        }
        Ok(())
    }
}

/// One `pg_dist_node` row, as last read (columns selected by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistNode {
    pub nodeid: i32,
    pub groupid: i32,
    pub nodename: String,
    pub nodeport: i32,
    /// `primary`, `secondary` or `unavailable`.
    pub noderole: String,
    pub isactive: bool,
    pub hasmetadata: bool,
    pub metadatasynced: Option<bool>,
}

impl DistNode {
    /// Whether this row already points where `target` says.
    pub fn matches(&self, target: &NodeTarget) -> bool {
        self.nodename == target.host && self.nodeport == i32::from(target.port)
    }
}

/// Why a `POST /citus` event was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    #[error("this server is not the Citus coordinator (citus_is_coordinator() is false)")]
    NotCoordinator,
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    #[error("replaced by a newer event for group {0}")]
    Superseded(u32),
    #[error("the pg_dist_node manager was stopped")]
    Stopped,
    #[error("the Citus database is not reachable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Postgres(String),
    #[error("pg_dist_node does not show the change: {0}")]
    Unconfirmed(String),
    #[error("refused: {0}")]
    Refused(String),
}

pub(crate) enum Message {
    Heartbeat(Vec<NodeTarget>),
    Rest {
        event: CitusEvent,
        target: NodeTarget,
        reply: oneshot::Sender<Result<(), ManagerError>>,
    },
    Stop,
}

/// The handle: cheap to clone, the task ends when the last handle is dropped (the connection
/// closes, which rolls back anything in flight).
#[derive(Clone, Debug)]
pub struct NodeManager {
    messages: mpsc::UnboundedSender<Message>,
    stop_now: Arc<Notify>,
    nodes: Arc<Mutex<Vec<DistNode>>>,
}

impl NodeManager {
    /// Spawns the one task that serialises every pg_dist_node change, on its own connection.
    /// `db` points at the coordinator's Citus database. Needs a Tokio runtime.
    pub fn start(db: tokio_postgres::Config) -> NodeManager {
        NodeManager::start_with(db, ManagerOptions::default())
    }

    /// [`NodeManager::start`] with explicit limits and retry settings.
    pub fn start_with(db: tokio_postgres::Config, options: ManagerOptions) -> NodeManager {
        let pg = db::PgDb::new(db, options.pg_limits());
        NodeManager::spawn(pg, options)
    }

    fn spawn<D: db::Db + 'static>(db: D, options: ManagerOptions) -> NodeManager {
        let (messages, inbox) = mpsc::unbounded_channel();
        let stop_now = Arc::new(Notify::new());
        let nodes = Arc::new(Mutex::new(Vec::new()));
        let worker = worker::Worker::new(db, options, nodes.clone());
        tokio::spawn(worker.run(inbox, stop_now.clone()));
        NodeManager {
            messages,
            stop_now,
            nodes,
        }
    }

    /// Each HA cycle of the coordinator leader (non-blocking): group 0 = own host/port, and each
    /// worker group's running primary leader. Equal to the cache → nothing done.
    pub fn heartbeat(&self, targets: Vec<NodeTarget>) {
        let _ = self.messages.send(Message::Heartbeat(targets));
    }

    /// POST /citus (already checked by the caller: coordinator leader, group leader == ev.leader).
    /// before_demote returns once the '-demoted' update is applied inside the open transaction;
    /// the other events once applied (after_promote: committed and confirmed).
    ///
    /// The event is queued as soon as this future is first polled; dropping the future after
    /// that does not withdraw it. Patroni's coordinator answers only `before_demote` after the
    /// change (its sender waits up to `ttl`) and the other events at once (their sender waits
    /// 2 s): a handler can `tokio::spawn` those on a clone of the manager.
    pub async fn rest_event(&self, ev: CitusEvent, target: NodeTarget) -> Result<(), ManagerError> {
        if ev.group != target.group {
            return Err(ManagerError::InvalidTarget(format!(
                "the event is for group {} but the target is in group {}",
                ev.group, target.group
            )));
        }
        target
            .validate()
            .map_err(|e| ManagerError::InvalidTarget(e.to_string()))?;
        let (reply, answer) = oneshot::channel();
        self.messages
            .send(Message::Rest {
                event: ev,
                target,
                reply,
            })
            .map_err(|_| ManagerError::Stopped)?;
        answer.await.unwrap_or(Err(ManagerError::Stopped))
    }

    /// Coordinator demoted or shutting down: ROLLBACK anything in flight, clear cache and queue.
    pub fn stop(&self) {
        // The message resets the state in order; the notification interrupts a statement that
        // is running right now (e.g. a forced update waiting for its cooldown).
        let _ = self.messages.send(Message::Stop);
        self.stop_now.notify_waiters();
    }

    /// Last pg_dist_node read (for logs, metrics, tests).
    pub fn nodes(&self) -> Vec<DistNode> {
        match self.nodes.lock() {
            Ok(nodes) => nodes.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// `lock_cooldown` for heartbeat changes, in ms.
pub(crate) fn cooldown_ms(d: Duration) -> i32 {
    duration_ms_i32(d)
}
