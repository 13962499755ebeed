//! Calls to members' REST APIs (`api_url` from their DCS data), with the `ctl.*` TLS settings and
//! credentials falling back to `restapi.*`, as patronictl does (`config::member_client`).

use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

/// Why a call to a member got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The `ctl`/`restapi` TLS or credential settings cannot make a client.
    #[error("REST client settings: {0}")]
    ClientSettings(#[source] crate::config::ConfigError),
    /// No answer at all: connection refused, TLS failure, timeout.
    #[error("{method} {url}: {source}")]
    Unreachable {
        method: reqwest::Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// An answer whose body is not the JSON asked for.
    #[error("GET {endpoint}: not JSON ({source})")]
    NotJson {
        endpoint: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A member's answer: status code and body text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

pub struct Api {
    client: reqwest::Client,
}

/// `http://h:p/patroni` + `switchover` → `http://h:p/switchover` (a URL join, like patronictl's).
pub fn endpoint_url(api_url: &str, endpoint: &str) -> String {
    let (scheme, rest) = api_url.split_once("://").unwrap_or(("http", api_url));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!(
        "{scheme}://{authority}/{}",
        endpoint.trim_start_matches('/')
    )
}

impl Api {
    /// `insecure`: `-k`, skip certificate checks as `ctl.insecure` does.
    pub fn new(cfg: &Config, insecure: bool) -> Result<Api, ApiError> {
        let mut cfg = cfg.clone();
        cfg.ctl.insecure |= insecure;
        let client =
            crate::config::member_client(&cfg, Duration::from_secs(30), Duration::from_secs(5))
                .map_err(ApiError::ClientSettings)?;
        Ok(Api { client })
    }

    /// One request; `Err` only when the member could not be reached (no answer at all).
    pub async fn request(
        &self,
        api_url: &str,
        method: reqwest::Method,
        endpoint: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Answer, ApiError> {
        let url = endpoint_url(api_url, endpoint);
        let mut req = self.client.request(method.clone(), &url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        tracing::debug!(%method, %url, body = ?body, "REST request");
        let resp = req.send().await.map_err(|source| ApiError::Unreachable {
            method: method.clone(),
            url: url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        tracing::debug!(%url, status, %body, "REST answer");
        Ok(Answer { status, body })
    }

    pub async fn get_json(&self, api_url: &str, endpoint: &str) -> Result<Value, ApiError> {
        let a = self
            .request(
                api_url,
                reqwest::Method::GET,
                endpoint,
                None,
                Some(Duration::from_secs(5)),
            )
            .await?;
        serde_json::from_str(&a.body).map_err(|source| ApiError::NotJson {
            endpoint: endpoint.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_url;

    #[test]
    fn endpoint_replaces_the_path_of_api_url() {
        assert_eq!(
            endpoint_url("http://10.0.0.1:8008/patroni", "switchover"),
            "http://10.0.0.1:8008/switchover"
        );
        assert_eq!(endpoint_url("http://h:1", "/config"), "http://h:1/config");
    }
}
