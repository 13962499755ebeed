//! etcd v3 backend (placeholder)
