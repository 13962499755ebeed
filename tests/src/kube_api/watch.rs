//! WATCH streams: newline-delimited JSON events over a chunked 200 response, resumable from a
//! resourceVersion inside the event window (410 Gone as an `ERROR` event otherwise), with
//! optional bookmarks and timeout.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::objects::with_type;
use super::resources::ResourceDef;
use super::status::ApiError;
use super::store::{Event, EventType, Filter, WatchStart};
use super::App;

#[derive(Debug, Clone, Default)]
pub struct WatchParams {
    /// `None`: no resourceVersion or "0" (start with the current objects).
    pub resource_version: Option<u64>,
    pub allow_bookmarks: bool,
    pub timeout: Option<Duration>,
    /// `sendInitialEvents=true`: current objects first, then a bookmark marking their end.
    pub send_initial_events: bool,
    /// `Some(includeObject)` when the client asked for Table output (`kubectl get -w`): each
    /// change is a one-row Table, column definitions only in the first.
    pub table: Option<String>,
}

/// Renders change events, as plain objects or as Table rows.
struct Encoder {
    res: &'static ResourceDef,
    table: Option<String>,
    first: bool,
}

impl Encoder {
    fn change(&mut self, event_type: &str, object: &Value) -> Bytes {
        let Some(include) = &self.table else {
            return line(event_type, object);
        };
        let rv = object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok());
        let mut rendered = super::table::table(self.res, std::slice::from_ref(object), rv, include);
        if !std::mem::take(&mut self.first) {
            rendered["columnDefinitions"] = Value::Array(Vec::new());
        }
        line(event_type, &rendered)
    }
}

/// How a stored event looks to a watcher with `filter`: objects moving out of the selection
/// are DELETED (previous content, this event's resourceVersion), moving in are ADDED.
fn translate(filter: &Filter, event: &Event) -> Option<(&'static str, Value)> {
    let now = filter.matches(&event.object);
    match event.event_type {
        EventType::Added => now.then(|| ("ADDED", event.object.clone())),
        EventType::Deleted => now.then(|| ("DELETED", event.object.clone())),
        EventType::Modified => {
            let before = event.prev.as_ref().is_some_and(|p| filter.matches(p));
            match (before, now) {
                (true, true) => Some(("MODIFIED", event.object.clone())),
                (false, true) => Some(("ADDED", event.object.clone())),
                (true, false) => {
                    let mut old = event.prev.clone().unwrap_or(Value::Null);
                    if let Some(m) = old.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.insert("resourceVersion".into(), json!(event.rv.to_string()));
                    }
                    Some(("DELETED", old))
                }
                (false, false) => None,
            }
        }
    }
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(&json!({"type": event_type, "object": object}))
        .unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn bookmark(res: &ResourceDef, rv: u64, initial_events_end: bool) -> Bytes {
    let mut object = with_type(
        res,
        &json!({"metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null}}),
    );
    if initial_events_end {
        object["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line("BOOKMARK", &object)
}

/// Start a watch and answer with its stream.
pub fn serve(
    app: Arc<App>,
    res: &'static ResourceDef,
    filter: Filter,
    params: WatchParams,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let started = app.store.watch(res, &filter, params.resource_version);
    let mut drop_epoch = app.admin.watch_epoch();
    let bookmark_interval = app.opts.bookmark_interval;
    let mut encoder = Encoder {
        res,
        table: params.table.clone(),
        first: true,
    };
    tokio::spawn(async move {
        let (start, start_rv, mut events) = match started {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(line("ERROR", &e.status())).await;
                return;
            }
        };
        let skip_until = params.resource_version.unwrap_or(0);
        let mut last_rv = start_rv;
        match start {
            WatchStart::Objects(objects) => {
                for object in objects {
                    if tx.send(encoder.change("ADDED", &object)).await.is_err() {
                        return;
                    }
                }
                if params.send_initial_events
                    && tx.send(bookmark(res, start_rv, true)).await.is_err()
                {
                    return;
                }
            }
            WatchStart::Events(backlog) => {
                for event in backlog {
                    if let Some((t, o)) = translate(&filter, &event) {
                        if tx.send(encoder.change(t, &o)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let deadline = params.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval(bookmark_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                received = events.recv() => match received {
                    Ok(event) => {
                        last_rv = last_rv.max(event.rv);
                        if !std::ptr::eq(event.resource, res) || event.rv <= skip_until {
                            continue;
                        }
                        if let Some((t, o)) = translate(&filter, &event) {
                            if tx.send(encoder.change(t, &o)).await.is_err() {
                                return;
                            }
                        }
                    }
                    // A watcher too slow for the broadcast buffer is closed, as the real server
                    // closes watchers that cannot keep up; the client re-lists.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if params.allow_bookmarks => {
                    if tx.send(bookmark(res, last_rv, false)).await.is_err() {
                        return;
                    }
                }
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if params.allow_bookmarks {
                        let _ = tx.send(bookmark(res, last_rv, false)).await;
                    }
                    return;
                }
                _ = drop_epoch.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<Bytes, Infallible>(bytes), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| {
            ApiError::new(500, "InternalError", "building the watch response").into_response_plain()
        })
}

impl ApiError {
    /// A plain error response, for the rare paths that cannot use the main error mapping.
    pub fn into_response_plain(self) -> Response {
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() =
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response
    }
}
