//! Citus support: the coordinator's `pg_dist_node` manager, the `POST /citus` events, the
//! GUCs and bootstrap steps Citus needs, and provisioning scripts.

pub mod bootstrap;
pub mod event;
pub mod gucs;
pub mod manager;
pub mod provision;
