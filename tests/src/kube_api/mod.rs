//! A Kubernetes API test server with the real API server's semantics for the objects Regent uses.
