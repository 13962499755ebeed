//! What the etcd backend's test files share.

// Each test file uses part of it.
#![allow(dead_code)]

pub mod etcd;
