//! How the HA loop reads other members' `GET /patroni`: over HTTP with the member client, or,
//! in a simulation, from the simulated members directly.

use async_trait::async_trait;
use serde_json::Value;

/// Where `GET /patroni` answers come from.
#[async_trait(?Send)]
pub trait MemberStatusSource {
    /// The JSON a member's API at `url` answers, or None (no answer, not JSON).
    async fn status(&self, url: &str) -> Option<Value>;
}

/// The real one: an HTTP GET with the member client (its timeouts, TLS and auth).
pub struct HttpStatus(pub reqwest::Client);

#[async_trait(?Send)]
impl MemberStatusSource for HttpStatus {
    async fn status(&self, url: &str) -> Option<Value> {
        let response = self.0.get(url).send().await.ok()?;
        response.json().await.ok()
    }
}
