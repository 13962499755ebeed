//! What every command works with: the configuration, the DCS (reads with a deadline, the
//! dynamic configuration written with compare-and-swap) and the members' REST APIs.

use std::sync::Arc;
use std::time::Duration;

use dcs::Cluster;
use reqwest::Method;
use serde_json::{Map, Value};
use tracing::debug;

use super::api::Api;
use super::edit;
use super::members::leader_first;
use super::{CtlError, CtlResult, Groups};
use crate::config::Config;

const DCS_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Ctx {
    pub cfg: Config,
    pub dcs: Arc<dyn dcs::Dcs>,
    pub api: Api,
    /// The Citus groups this command covers. `All`: `dcs` is the coordinator's (group 0), whose
    /// one read also fills `Cluster::workers`.
    pub groups: Groups,
}

impl Ctx {
    pub async fn cluster(&self) -> CtlResult<Cluster> {
        read_cluster(self.dcs.as_ref()).await
    }
}

pub async fn read_cluster(dcs: &dyn dcs::Dcs) -> CtlResult<Cluster> {
    match tokio::time::timeout(DCS_TIMEOUT, dcs.get_cluster()).await {
        Ok(Ok(c)) => {
            for w in &c.warnings {
                debug!(warning = %w, "DCS");
            }
            Ok(c)
        }
        Ok(Err(e)) => Err(CtlError::failed(format!("cannot read the cluster: {e}"))),
        Err(_) => Err(CtlError::failed(format!(
            "cannot read the cluster: the {} DCS did not answer within {} s",
            dcs.kind(),
            DCS_TIMEOUT.as_secs()
        ))),
    }
}

pub async fn connect_dcs(cfg: &Config) -> CtlResult<Arc<dyn dcs::Dcs>> {
    crate::build_dcs(cfg)
        .await
        .map_err(|e| CtlError::failed(format!("cannot set up the DCS: {e}")))
}

/// PATCH /config on the first member that answers; when the REST API does not offer it (501)
/// or nobody answers, CAS-write the DCS config. Returns the config written.
pub async fn patch_config(
    ctx: &Ctx,
    cluster: &Cluster,
    patch: Map<String, Value>,
) -> CtlResult<Value> {
    for m in leader_first(cluster) {
        let Some(url) = m.data.api_url.as_deref() else {
            continue;
        };
        match ctx
            .api
            .request(
                url,
                Method::PATCH,
                "config",
                Some(&Value::Object(patch.clone())),
                None,
            )
            .await
        {
            Ok(a) if a.status == 200 => {
                debug!(member = %m.name, "config changed with PATCH /config");
                return serde_json::from_str(&a.body).or(Ok(Value::Null));
            }
            Ok(a) if a.status == 501 => {
                debug!(member = %m.name, "PATCH /config not offered (501): writing the DCS config with CAS");
                break;
            }
            Ok(a) => {
                return Err(CtlError::failed(format!(
                    "PATCH /config on {} answered {}: {}",
                    m.name,
                    a.status,
                    a.body.trim()
                )))
            }
            Err(e) => debug!(member = %m.name, error = %e, "member is not accessible"),
        }
    }
    debug!("changing the config with a CAS write in the DCS");
    let mut current = cluster.clone();
    for _ in 0..5 {
        let mut raw = current
            .config
            .as_ref()
            .and_then(|c| c.raw.as_object().cloned())
            .unwrap_or_default();
        edit::merge(&mut raw, patch.clone());
        let version = current.config.as_ref().and_then(|c| c.version.clone());
        let value = Value::Object(raw);
        if write_config(ctx, &value, version.as_deref()).await? {
            return Ok(value);
        }
        current = ctx.cluster().await?;
    }
    Err(CtlError::failed(
        "the configuration kept changing while writing it; try again",
    ))
}

pub async fn write_config(ctx: &Ctx, value: &Value, version: Option<&str>) -> CtlResult<bool> {
    ctx.dcs
        .set_config_value(value, version)
        .await
        .map_err(|e| CtlError::failed(format!("cannot write the configuration: {e}")))
}
