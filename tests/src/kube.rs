//! Fixture: the Kubernetes API test server as a child process.
