//! The HA loop: a pure decision core and the loop that executes its actions.

pub mod cycle;
pub mod decide;
pub mod error;
pub mod peers;
pub mod repair;
pub mod requests;
pub mod sync_rules;
