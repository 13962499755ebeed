//! Background watch of the cluster prefix: wakes the HA loop when a key that matters changes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::client::{b64, json_i64, unb64};
use super::{prefix_range_end, Shared};
use crate::model::parse_group;

/// Keys (relative to the prefix) whose changes wake the loop. Members, status and history change
/// every cycle and would cause wake-up storms.
const WAKING_KEYS: [&str; 5] = ["leader", "config", "failover", "initialize", "sync"];

/// Largest amount of unparsed stream data kept before giving up on the stream.
const MAX_BUFFER: usize = 64 * 1024 * 1024;

/// Reconnect a watch stream that carried nothing for this long.
const IDLE_RECONNECT: Duration = Duration::from_secs(60);

/// Runs until aborted: keeps a watch stream open, reconnecting with backoff.
pub(crate) async fn run(shared: Arc<Shared>) {
    // Start right after the last full read so changes in between are not missed.
    let last_read = shared.last_read_revision.load(Ordering::Relaxed);
    let mut next_revision = (last_read > 0).then_some(last_read + 1);
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = stream_once(&shared, &mut next_revision).await;
        if shared.watch_healthy.swap(false, Ordering::Relaxed) {
            // The stream was established: reconnect quickly.
            backoff = Duration::from_millis(100);
        }
        match outcome {
            Ok(StreamEnd::Compacted) => {
                // Events may have been lost: wake the loop so it re-reads everything.
                shared.notify.notify_one();
                continue;
            }
            Ok(StreamEnd::Closed) => tracing::debug!("etcd watch stream closed, reconnecting"),
            Err(e) => tracing::warn!(error = %e, "etcd watch failed, reconnecting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

enum StreamEnd {
    Closed,
    Compacted,
}

async fn stream_once(
    shared: &Shared,
    next_revision: &mut Option<i64>,
) -> Result<StreamEnd, String> {
    let mut create = json!({
        "key": b64(&shared.read_prefix),
        "range_end": b64(prefix_range_end(&shared.read_prefix)),
    });
    if let Some(rev) = *next_revision {
        create["start_revision"] = Value::String(rev.to_string());
    }
    let body = json!({ "create_request": create });
    let resp = shared.client.open_stream("/watch", &body).await?;
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // An idle watch sends nothing, so a hung server would go unnoticed: reconnect now and
        // then (from the next revision, nothing is lost).
        let chunk = match tokio::time::timeout(IDLE_RECONNECT, stream.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(StreamEnd::Closed),
            Err(_) => {
                tracing::debug!("etcd watch idle, reconnecting");
                return Ok(StreamEnd::Closed);
            }
        };
        let chunk = chunk.map_err(|e| format!("reading watch stream: {e}"))?;
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_BUFFER {
            return Err("watch message too large".into());
        }
        for msg in drain_messages(&mut buf)? {
            if let Some(end) = handle_message(shared, &msg, next_revision)? {
                return Ok(end);
            }
        }
    }
}

/// Handle one `{"result": ...}` message; `Some` ends the stream.
fn handle_message(
    shared: &Shared,
    msg: &Value,
    next_revision: &mut Option<i64>,
) -> Result<Option<StreamEnd>, String> {
    if let Some(err) = msg.get("error") {
        return Err(format!("watch error: {err}"));
    }
    let Some(result) = msg.get("result") else {
        return Err(format!("unexpected watch message: {msg}"));
    };
    let header_revision = json_i64(result.get("header").and_then(|h| h.get("revision")));
    if result
        .get("canceled")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let compact = json_i64(result.get("compact_revision"));
        if compact > 0 {
            tracing::warn!(
                compact,
                "etcd watch revision was compacted, watching from now"
            );
            *next_revision = None;
            return Ok(Some(StreamEnd::Compacted));
        }
        let reason = result
            .get("cancel_reason")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        if reason.contains("Unauthenticated") || reason.contains("auth token") {
            // Token expired or revoked: authenticate again on the next connect.
            shared.client.forget_token();
        }
        return Err(format!("watch canceled by etcd: {reason}"));
    }
    shared.watch_healthy.store(true, Ordering::Relaxed);
    let events = result.get("events").and_then(Value::as_array);
    match events {
        Some(events) if !events.is_empty() => {
            let mut wake = false;
            for ev in events {
                let kv = ev.get("kv");
                let rev = json_i64(kv.and_then(|k| k.get("mod_revision")));
                if rev > 0 {
                    *next_revision = Some(next_revision.unwrap_or(0).max(rev + 1));
                }
                let key = kv
                    .and_then(|k| k.get("key"))
                    .and_then(Value::as_str)
                    .and_then(|k| unb64(k).ok())
                    .and_then(|k| String::from_utf8(k).ok());
                if is_worker_leader(shared, key.as_deref()) {
                    // The coordinator follows worker primaries into pg_dist_node.
                    tracing::debug!(key = ?key, "etcd watch: worker group leader changed");
                    wake = true;
                } else if let Some(rel) = key
                    .as_deref()
                    .and_then(|k| k.strip_prefix(shared.prefix.as_str()))
                {
                    if WAKING_KEYS.contains(&rel) {
                        tracing::debug!(key = rel, "etcd watch event");
                        wake = true;
                    } else if rel.starts_with("members/") && is_creation(ev) {
                        // A member that (re)appears needs its replication slot on the leader
                        // before its Postgres starts streaming; updates do not wake anyone.
                        tracing::debug!(key = rel, "etcd watch: new member");
                        wake = true;
                    }
                }
            }
            if wake {
                shared.notify.notify_one();
            }
        }
        // Created or progress notification: everything up to the header revision was delivered.
        _ => {
            if header_revision > 0 && (next_revision.is_none() || result.get("created").is_none()) {
                *next_revision = Some(next_revision.unwrap_or(0).max(header_revision + 1));
            }
        }
    }
    Ok(None)
}

/// On the Citus coordinator (which watches the whole scope): is `key` another group's
/// `<scope_prefix><group>/leader`?
fn is_worker_leader(shared: &Shared, key: Option<&str>) -> bool {
    if shared.read_prefix == shared.prefix {
        return false;
    }
    key.and_then(|k| k.strip_prefix(shared.scope_prefix.as_str()))
        .and_then(|rel| rel.strip_suffix("/leader"))
        .and_then(parse_group)
        .is_some_and(|group| group != 0)
}

/// A PUT that created the key (its version is 1), as opposed to an update or a delete.
fn is_creation(event: &Value) -> bool {
    let is_put = event
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(|t| t == "PUT");
    is_put && json_i64(event.get("kv").and_then(|k| k.get("version"))) == 1
}

/// Take every complete JSON value off the front of `buf`, leaving an incomplete tail.
pub(crate) fn drain_messages(buf: &mut Vec<u8>) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut consumed = 0;
    {
        let mut iter = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
        loop {
            match iter.next() {
                Some(Ok(v)) => {
                    out.push(v);
                    consumed = iter.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(format!("watch stream is not JSON: {e}")),
                None => {
                    consumed = iter.byte_offset();
                    break;
                }
            }
        }
    }
    buf.drain(..consumed);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_chunks() {
        let stream = br#"{"result":{"created":true}}
{"result":{"events":[{"kv":{"key":"YQ=="}}]}}
{"result":{"header":{"revision":"3"}}}"#;
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(7) {
            buf.extend_from_slice(chunk);
            got.extend(drain_messages(&mut buf).unwrap());
        }
        assert_eq!(got.len(), 3);
        assert!(buf.is_empty());
        assert_eq!(got[2]["result"]["header"]["revision"], "3");
    }

    #[test]
    fn only_the_coordinator_follows_worker_leaders() {
        let member = |group| {
            super::super::Etcd3::new(super::super::EtcdConfig {
                scope: "demo".into(),
                name: "m".into(),
                group,
                ..Default::default()
            })
            .expect("valid config")
        };
        let coordinator = member(Some(0));
        let shared = &coordinator.shared;
        assert_eq!(shared.read_prefix, "/service/demo/");
        for (key, wakes) in [
            ("/service/demo/1/leader", true),
            ("/service/demo/12/leader", true),
            ("/service/demo/0/leader", false),
            ("/service/demo/1/members/w1", false),
            ("/service/demo/1/status", false),
            ("/service/demo/01/leader", false),
            ("/service/demo/leader", false),
            ("/service/other/1/leader", false),
        ] {
            assert_eq!(is_worker_leader(shared, Some(key)), wakes, "{key}");
        }
        assert!(!is_worker_leader(shared, None));
        for group in [Some(1), None] {
            let m = member(group);
            assert_eq!(m.shared.read_prefix, m.shared.prefix);
            assert!(!is_worker_leader(&m.shared, Some("/service/demo/2/leader")));
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut buf = b"{\"a\":1} ]".to_vec();
        assert!(drain_messages(&mut buf).is_err());
    }
}
