//! Distributed configuration store backends: etcd v3, Kubernetes and an in-memory store, each
//! implementing the [`Dcs`] trait of the neutral model (the `model` crate, re-exported here so
//! `dcs::Cluster`, `dcs::model::Cluster` and `crate::model::Cluster` all name the same types).

pub mod etcd;
pub mod kubernetes;
pub mod memory;

pub use ::model;
pub use ::model::*;
