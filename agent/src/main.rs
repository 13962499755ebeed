//! `regent`: a high-availability agent for PostgreSQL (Patroni-compatible).

mod config;
mod ha;
mod pid1;
mod postgres;

fn main() {}
