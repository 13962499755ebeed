//! `POST /citus` (and Patroni 4's alias `POST /mpp`): a worker group's primary tells the
//! coordinator it is about to stop or has just been promoted (ARCHITECTURE.md, *Citus*). The API only reads
//! the body; what to do with it (is this the coordinator's leader, is the sender its group's
//! leader, the `pg_dist_node` change) belongs to the agent, behind [`CitusHandler`].

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use crate::ops::{read_json, OpReply};
use crate::ApiState;

/// Handles a `/citus` event body; the answer is sent as is.
pub trait CitusHandler: Send + Sync + std::fmt::Debug {
    fn handle(
        &self,
        body: Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = OpReply> + Send + '_>>;
}

pub(crate) async fn citus(state: &ApiState, headers: &HeaderMap, body: Body) -> Response {
    let body = match read_json(headers, body, false).await {
        Ok(m) => Value::Object(m),
        Err(response) => return response,
    };
    match &state.citus {
        Some(handler) => handler.handle(body).await.into_response(),
        // Not a Citus member: accepted and ignored, as Patroni does for a valid body.
        None => OpReply::text(200, "OK").into_response(),
    }
}
