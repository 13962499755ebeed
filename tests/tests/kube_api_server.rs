//! The Kubernetes API test server behaves like the real API server where our agents (and
//! Patroni) can tell the difference: status codes, `Status` bodies, optimistic concurrency,
//! selectors, watches, validation, and the `/_test/` controls; HTTPS with its own CA, and RBAC
//! rules (kubernetes/rbac.yaml) enforced with the real authorizer's 403 answers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use regent_tests::kube::KubeApiServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const CM: &str = "/api/v1/namespaces/default/configmaps";

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Client {
    /// A client of `server` with bearer token `token`, trusting the server's CA over TLS.
    fn new(server: &KubeApiServer, token: &str) -> Client {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(pem) = server.ca_pem() {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes()).expect("CA certificate");
            http = http
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca);
        }
        Client {
            http: http.build().expect("HTTP client"),
            base: server.url(),
            token: token.to_string(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", content_type)
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, "", None).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, "application/json", Some(body))
            .await
    }

    async fn put(&self, path: &str, body: Value) -> Answer {
        self.call(Method::PUT, path, "application/json", Some(body))
            .await
    }

    async fn patch(&self, path: &str, content_type: &str, body: Value) -> Answer {
        self.call(Method::PATCH, path, content_type, Some(body))
            .await
    }

    async fn delete(&self, path: &str, body: Option<Value>) -> Answer {
        self.call(Method::DELETE, path, "application/json", body)
            .await
    }
}

fn rv(object: &Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("no resourceVersion in {object}"))
        .to_string()
}

fn assert_status(answer: &Answer, code: u16, reason: &str, message: &str) {
    assert_eq!(answer.status.as_u16(), code, "{}", answer.body);
    assert_eq!(answer.body["kind"], "Status", "{}", answer.body);
    assert_eq!(answer.body["apiVersion"], "v1", "{}", answer.body);
    assert_eq!(answer.body["status"], "Failure", "{}", answer.body);
    assert_eq!(answer.body["code"], code, "{}", answer.body);
    assert_eq!(answer.body["reason"], reason, "{}", answer.body);
    assert_eq!(answer.body["message"], message, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_lifecycle_with_optimistic_concurrency() {
    let server = KubeApiServer::launch().await;
    let c = Client::new(&server, "alice");

    let created = c
        .post(
            CM,
            json!({"metadata": {"name": "x", "labels": {"app": "pg"}, "annotations": {"a": "1"}}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let obj = &created.body;
    assert_eq!(obj["kind"], "ConfigMap");
    assert_eq!(obj["apiVersion"], "v1");
    assert_eq!(obj["metadata"]["namespace"], "default");
    assert_eq!(
        obj["metadata"]["uid"].as_str().map(str::len),
        Some(36),
        "{obj}"
    );
    assert!(obj["metadata"]["creationTimestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let rv1 = rv(obj);

    let again = c.post(CM, json!({"metadata": {"name": "x"}})).await;
    assert_status(
        &again,
        409,
        "AlreadyExists",
        "configmaps \"x\" already exists",
    );
    assert_eq!(
        again.body["details"],
        json!({"name": "x", "kind": "configmaps"})
    );

    let missing = c.get(&format!("{CM}/nope")).await;
    assert_status(&missing, 404, "NotFound", "configmaps \"nope\" not found");

    // A strategic merge patch carrying the current resourceVersion wins and bumps it.
    let patched = c
        .patch(
            &format!("{CM}/x"),
            "application/strategic-merge-patch+json",
            json!({"metadata": {"resourceVersion": rv1, "annotations": {"a": null, "b": "2"}}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["metadata"]["annotations"], json!({"b": "2"}));
    let rv2 = rv(&patched.body);
    assert!(rv2.parse::<u64>().unwrap_or(0) > rv1.parse::<u64>().unwrap_or(u64::MAX));

    // The same patch with the now stale resourceVersion conflicts, and changes nothing.
    let conflict_message = "Operation cannot be fulfilled on configmaps \"x\": the object has been \
                            modified; please apply your changes to the latest version and try again";
    let stale = c
        .patch(
            &format!("{CM}/x"),
            "application/strategic-merge-patch+json",
            json!({"metadata": {"resourceVersion": rv1, "annotations": {"c": "3"}}}),
        )
        .await;
    assert_status(&stale, 409, "Conflict", conflict_message);
    let merge_stale = c
        .patch(
            &format!("{CM}/x"),
            "application/merge-patch+json",
            json!({"metadata": {"resourceVersion": rv1}, "data": {"k": "v"}}),
        )
        .await;
    assert_status(&merge_stale, 409, "Conflict", conflict_message);
    let put_stale = c
        .put(
            &format!("{CM}/x"),
            json!({"metadata": {"name": "x", "resourceVersion": rv1}, "data": {"k": "v"}}),
        )
        .await;
    assert_status(&put_stale, 409, "Conflict", conflict_message);
    let current = c.get(&format!("{CM}/x")).await;
    assert_eq!(rv(&current.body), rv2);
    assert_eq!(current.body["metadata"]["annotations"], json!({"b": "2"}));

    // PUT with the current version replaces the object (labels and annotations included).
    let put = c
        .put(
            &format!("{CM}/x"),
            json!({"kind": "ConfigMap", "apiVersion": "v1",
                   "metadata": {"name": "x", "resourceVersion": rv2}, "data": {"k": "v"}}),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body["data"], json!({"k": "v"}));
    assert!(put.body["metadata"].get("labels").is_none(), "{}", put.body);
    assert_eq!(put.body["metadata"]["uid"], obj["metadata"]["uid"]);
    let rv3 = rv(&put.body);

    // A write that changes nothing keeps the resourceVersion.
    let noop = c
        .patch(
            &format!("{CM}/x"),
            "application/merge-patch+json",
            json!({"data": {"k": "v"}}),
        )
        .await;
    assert_eq!(rv(&noop.body), rv3);

    // JSON patch, including a failing test operation.
    let json_patch = c
        .patch(
            &format!("{CM}/x"),
            "application/json-patch+json",
            json!([{"op": "test", "path": "/data/k", "value": "v"},
                   {"op": "add", "path": "/data/j", "value": "w"}]),
        )
        .await;
    assert_eq!(json_patch.status, StatusCode::OK, "{}", json_patch.body);
    assert_eq!(json_patch.body["data"], json!({"j": "w", "k": "v"}));
    let failed_test = c
        .patch(
            &format!("{CM}/x"),
            "application/json-patch+json",
            json!([{"op": "test", "path": "/data/k", "value": "other"}]),
        )
        .await;
    assert_eq!(failed_test.status.as_u16(), 422, "{}", failed_test.body);

    let delete = c.delete(&format!("{CM}/x"), None).await;
    assert_eq!(delete.status, StatusCode::OK, "{}", delete.body);
    assert_eq!(delete.body["kind"], "Status");
    assert_eq!(delete.body["status"], "Success");
    assert_eq!(delete.body["details"]["name"], "x");
    assert_eq!(delete.body["details"]["kind"], "configmaps");
    let gone = c.delete(&format!("{CM}/x"), None).await;
    assert_status(&gone, 404, "NotFound", "configmaps \"x\" not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_helpers_and_request_counts() {
    let server = KubeApiServer::launch().await;
    let labels: BTreeMap<String, String> = [("application", "spilo"), ("cluster-name", "demo")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let pod = server
        .create_pod("default", "demo-0", &labels, "10.0.0.1")
        .await;
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    assert_eq!(pod["status"]["podIP"], "10.0.0.1");
    server
        .create_pod("default", "other-0", &BTreeMap::new(), "10.0.0.2")
        .await;
    let listed = server
        .list("pods", "default", "application=spilo,cluster-name=demo")
        .await;
    let names: Vec<&str> = listed
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, vec!["demo-0"]);
    assert!(server.get("pods", "default", "missing").await.is_none());
    assert!(server.get("namespaces", "", "default").await.is_some());

    server.reset_request_counts().await;
    let a = Client::new(&server, "member-a");
    let b = Client::new(&server, "member-b");
    a.get(&format!("{CM}?labelSelector=x%3Dy")).await;
    a.get(&format!("{CM}?labelSelector=x%3Dy")).await;
    b.post(CM, json!({"metadata": {"name": "b"}})).await;
    b.patch(
        "/api/v1/namespaces/default/pods/demo-0/status",
        "application/merge-patch+json",
        json!({"status": {"phase": "Running"}}),
    )
    .await;
    let counts = server.request_counts().await;
    assert_eq!(
        counts["member-a"],
        BTreeMap::from([("list configmaps".to_string(), 2)])
    );
    assert_eq!(
        counts["member-b"],
        BTreeMap::from([
            ("create configmaps".to_string(), 1),
            ("patch pods/status".to_string(), 1)
        ])
    );
    assert!(!counts.contains_key("anonymous"), "{counts:?}");

    // A watch stream sees a change made after it started.
    let http = reqwest::Client::new();
    let response = http
        .get(format!(
            "{}{CM}?watch=true&resourceVersion={}",
            server.url(),
            rv(&server.get("configmaps", "default", "b").await.expect("b"))
        ))
        .send()
        .await
        .expect("watch");
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    b.patch(
        &format!("{CM}/b"),
        "application/merge-patch+json",
        json!({"data": {"k": "v"}}),
    )
    .await;
    let mut stream = response.bytes_stream();
    let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5s")
        .expect("stream open")
        .expect("chunk");
    let event: Value = serde_json::from_slice(&chunk).expect("one JSON event per chunk");
    assert_eq!(event["type"], "MODIFIED", "{event}");
    assert_eq!(event["object"]["data"]["k"], "v");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_validation_and_deprecation_warning() {
    let server = KubeApiServer::launch().await;
    let c = Client::new(&server, "alice");
    let ep = "/api/v1/namespaces/default/endpoints";
    let warning =
        "299 - \"v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice\"";

    let loopback = c
        .post(
            ep,
            json!({"metadata": {"name": "demo"},
                   "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 5432}]}]}),
        )
        .await;
    assert_status(
        &loopback,
        422,
        "Invalid",
        "Endpoints \"demo\" is invalid: subsets[0].addresses[0].ip: Invalid value: \"127.0.0.1\": \
         may not be in the loopback range (127.0.0.0/8, ::1/128)",
    );
    assert_eq!(
        loopback.body["details"]["causes"],
        json!([{"reason": "FieldValueInvalid",
                "message": "Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
                "field": "subsets[0].addresses[0].ip"}])
    );
    assert_eq!(loopback.headers["warning"], warning);

    let created = c
        .post(
            ep,
            json!({"metadata": {"name": "demo"},
                   "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"name": "postgresql", "port": 5432}]}]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.headers["warning"], warning);
    assert_eq!(
        created.body["subsets"][0]["ports"][0],
        json!({"name": "postgresql", "port": 5432, "protocol": "TCP"})
    );
    let listed = c.get(ep).await;
    assert_eq!(listed.headers["warning"], warning);
    assert_eq!(listed.body["kind"], "EndpointsList");

    // Emptying the subsets (how Patroni releases the leader Endpoints) drops the field.
    let emptied = c
        .patch(
            &format!("{ep}/demo"),
            "application/strategic-merge-patch+json",
            json!({"subsets": []}),
        )
        .await;
    assert_eq!(emptied.status, StatusCode::OK, "{}", emptied.body);
    assert!(emptied.body.get("subsets").is_none(), "{}", emptied.body);
}

/// Reads newline-delimited watch events from a streaming response.
struct EventStream {
    stream: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>,
    >,
    buffer: Vec<u8>,
}

impl EventStream {
    async fn open(c: &Client, path: &str) -> EventStream {
        let response = c
            .http
            .get(format!("{}{path}", c.base))
            .bearer_auth(&c.token)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|e| panic!("watch {path}: {e}"));
        assert_eq!(response.status(), StatusCode::OK, "watch {path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        EventStream {
            stream: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    /// The next event; `None` when the server ended the stream. Panics after `deadline`.
    async fn next(&mut self, deadline: Duration) -> Option<Value> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("event is JSON"));
            }
            let remaining = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.stream.next()).await {
                Err(_) => panic!("no watch event within {deadline:?}"),
                Ok(None) => return None,
                Ok(Some(Err(e))) => panic!("watch stream broke: {e}"),
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
            }
        }
    }

    /// The next event that is not a bookmark.
    async fn next_change(&mut self, deadline: Duration) -> Value {
        loop {
            let event = self.next(deadline).await.expect("stream ended");
            if event["type"] != "BOOKMARK" {
                return event;
            }
        }
    }
}

fn summary(event: &Value) -> (String, String) {
    (
        event["type"].as_str().unwrap_or("").to_string(),
        event["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_field_selectors() {
    let server = KubeApiServer::launch().await;
    let c = Client::new(&server, "alice");
    for (name, labels) in [
        ("a", json!({"app": "pg", "role": "primary"})),
        ("b", json!({"app": "pg", "role": "replica"})),
        ("c", json!({"app": "web"})),
        ("d", json!({})),
    ] {
        let created = c
            .post(CM, json!({"metadata": {"name": name, "labels": labels}}))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    }
    let list = c.get(CM).await;
    assert_eq!(list.body["kind"], "ConfigMapList");
    assert_eq!(list.body["apiVersion"], "v1");
    assert!(list.body["metadata"]["resourceVersion"].is_string());
    // List items carry no kind/apiVersion, as with the real server.
    assert!(list.body["items"][0].get("kind").is_none(), "{}", list.body);
    assert_eq!(names(&list.body), ["a", "b", "c", "d"]);

    let cases: &[(&str, &[&str])] = &[
        ("app=pg", &["a", "b"]),
        ("app==pg", &["a", "b"]),
        ("app!=pg", &["c", "d"]),
        ("app=pg,role=replica", &["b"]),
        ("role in (primary, replica)", &["a", "b"]),
        ("role notin (primary)", &["b", "c", "d"]),
        ("role", &["a", "b"]),
        ("!role", &["c", "d"]),
        ("app in (pg,web),!role", &["c"]),
    ];
    for (selector, expected) in cases {
        let path = format!(
            "{CM}?labelSelector={}",
            regent_tests::kube::encode_query(selector)
        );
        let answer = c.get(&path).await;
        assert_eq!(answer.status, StatusCode::OK, "{selector}: {}", answer.body);
        assert_eq!(names(&answer.body), *expected, "selector {selector}");
    }
    let by_name = c
        .get(&format!("{CM}?fieldSelector=metadata.name%3Db"))
        .await;
    assert_eq!(names(&by_name.body), ["b"]);
    let all_ns = c.get("/api/v1/configmaps?labelSelector=app%3Dweb").await;
    assert_eq!(names(&all_ns.body), ["c"]);

    let bad = c.get(&format!("{CM}?labelSelector=app%20in%20pg")).await;
    assert_eq!(bad.status.as_u16(), 400, "{}", bad.body);
    assert_eq!(bad.body["reason"], "BadRequest");
    let bad_field = c.get(&format!("{CM}?fieldSelector=data.x%3Dy")).await;
    assert_status(
        &bad_field,
        400,
        "BadRequest",
        "field label not supported: data.x",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_bookmarks_and_expiry() {
    let server = KubeApiServer::launch_with_args(&["--bookmark-interval-ms", "200"]).await;
    let c = Client::new(&server, "alice");
    let t = Duration::from_secs(5);
    c.post(
        CM,
        json!({"metadata": {"name": "a", "labels": {"app": "pg"}}}),
    )
    .await;
    let start_rv = rv(&c.get(CM).await.body);

    let mut watch = EventStream::open(
        &c,
        &format!("{CM}?watch=true&resourceVersion={start_rv}&allowWatchBookmarks=true&labelSelector=app%3Dpg"),
    )
    .await;
    c.patch(
        &format!("{CM}/a"),
        "application/merge-patch+json",
        json!({"data": {"k": "1"}}),
    )
    .await;
    c.post(
        CM,
        json!({"metadata": {"name": "b", "labels": {"app": "pg"}}}),
    )
    .await;
    c.post(CM, json!({"metadata": {"name": "unrelated"}})).await;
    let moved = c
        .patch(
            &format!("{CM}/a"),
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"app": "other"}}}),
        )
        .await;
    c.delete(&format!("{CM}/b"), None).await;

    let e1 = watch.next_change(t).await;
    assert_eq!(summary(&e1), ("MODIFIED".into(), "a".into()));
    assert_eq!(e1["object"]["kind"], "ConfigMap");
    assert_eq!(e1["object"]["data"]["k"], "1");
    let e2 = watch.next_change(t).await;
    assert_eq!(summary(&e2), ("ADDED".into(), "b".into()));
    // Leaving the selection is a DELETED event with the previous content at the new version.
    let e3 = watch.next_change(t).await;
    assert_eq!(summary(&e3), ("DELETED".into(), "a".into()));
    assert_eq!(e3["object"]["metadata"]["labels"]["app"], "pg");
    assert_eq!(rv(&e3["object"]), rv(&moved.body));
    let e4 = watch.next_change(t).await;
    assert_eq!(summary(&e4), ("DELETED".into(), "b".into()));
    let bookmark = loop {
        let e = watch.next(t).await.expect("stream open");
        if e["type"] == "BOOKMARK" {
            break e;
        }
    };
    assert_eq!(bookmark["object"]["kind"], "ConfigMap");
    let bookmark_rv: u64 = rv(&bookmark["object"]).parse().expect("numeric rv");
    assert!(bookmark_rv >= rv(&e4["object"]).parse().expect("numeric rv"));

    // The legacy watch path, without a resourceVersion: synthetic ADDED for what exists.
    let mut legacy = EventStream::open(&c, "/api/v1/watch/namespaces/default/configmaps").await;
    let mut initial = vec![
        summary(&legacy.next_change(t).await),
        summary(&legacy.next_change(t).await),
    ];
    initial.sort();
    assert_eq!(
        initial,
        [
            ("ADDED".to_string(), "a".to_string()),
            ("ADDED".into(), "unrelated".into())
        ]
    );

    // A watch with a timeout ends by itself.
    let mut short = EventStream::open(
        &c,
        &format!("{CM}?watch=1&resourceVersion={bookmark_rv}&timeoutSeconds=1"),
    )
    .await;
    let started = Instant::now();
    assert!(short.next(t).await.is_none(), "no events expected");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // After compaction, resuming from an old version is 410 Gone, as an ERROR event.
    let now = server.compact().await;
    let mut expired =
        EventStream::open(&c, &format!("{CM}?watch=true&resourceVersion={start_rv}")).await;
    let error = expired.next(t).await.expect("an ERROR event");
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["kind"], "Status");
    assert_eq!(error["object"]["code"], 410);
    assert_eq!(error["object"]["reason"], "Expired");
    assert_eq!(
        error["object"]["message"],
        format!("too old resource version: {start_rv} ({now})")
    );
    assert!(
        expired.next(t).await.is_none(),
        "the stream ends after the error"
    );
    // Resuming from the current version still works.
    let mut fresh = EventStream::open(&c, &format!("{CM}?watch=true&resourceVersion={now}")).await;
    c.delete(&format!("{CM}/unrelated"), None).await;
    assert_eq!(
        summary(&fresh.next_change(t).await),
        ("DELETED".into(), "unrelated".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_window_evicts_old_events() {
    let server = KubeApiServer::launch_with_args(&["--watch-window", "3"]).await;
    let c = Client::new(&server, "alice");
    let first = c.post(CM, json!({"metadata": {"name": "x"}})).await;
    let from = rv(&first.body);
    for i in 0..3 {
        c.patch(
            &format!("{CM}/x"),
            "application/merge-patch+json",
            json!({"data": {"i": i.to_string()}}),
        )
        .await;
    }
    // Three events after `from` are still in the window.
    let mut ok = EventStream::open(&c, &format!("{CM}?watch=true&resourceVersion={from}")).await;
    assert_eq!(
        summary(&ok.next_change(Duration::from_secs(5)).await),
        ("MODIFIED".into(), "x".into())
    );
    c.patch(
        &format!("{CM}/x"),
        "application/merge-patch+json",
        json!({"data": {"i": "4"}}),
    )
    .await;
    let mut gone = EventStream::open(&c, &format!("{CM}?watch=true&resourceVersion={from}")).await;
    let error = gone
        .next(Duration::from_secs(5))
        .await
        .expect("ERROR event");
    assert_eq!(error["object"]["code"], 410, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_stay_pending_until_status_is_written() {
    let server = KubeApiServer::launch().await;
    let c = Client::new(&server, "alice");
    let pods = "/api/v1/namespaces/default/pods";
    let created = c
        .post(
            pods,
            json!({"metadata": {"name": "p", "labels": {"app": "pg"}},
                   "spec": {"containers": [{"name": "pg", "image": "postgres:15"}]},
                   "status": {"phase": "Running", "podIP": "10.0.0.9"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        created.body["status"],
        json!({"phase": "Pending", "qosClass": "BestEffort"})
    );
    assert_eq!(created.body["metadata"]["generation"], 1);
    assert_eq!(created.body["spec"]["restartPolicy"], "Always");
    assert_eq!(
        created.body["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );

    // Writes to the main resource cannot change the status; labels and annotations change.
    let patched = c
        .patch(
            &format!("{pods}/p"),
            "application/strategic-merge-patch+json",
            json!({"metadata": {"labels": {"role": "primary"}, "annotations": {"status": "{\"state\":\"running\"}"}},
                   "status": {"phase": "Running"}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["status"]["phase"], "Pending");
    assert_eq!(
        patched.body["metadata"]["labels"],
        json!({"app": "pg", "role": "primary"})
    );
    assert_eq!(patched.body["metadata"]["generation"], 1);

    let status = c
        .patch(
            &format!("{pods}/p/status"),
            "application/merge-patch+json",
            json!({"status": {"phase": "Running", "podIP": "10.0.0.9"}}),
        )
        .await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.body);
    assert_eq!(status.body["status"]["phase"], "Running");
    assert_eq!(
        c.get(&format!("{pods}/p")).await.body["status"]["podIP"],
        "10.0.0.9"
    );

    // Pod specs are mostly immutable.
    let immutable = c
        .patch(
            &format!("{pods}/p"),
            "application/strategic-merge-patch+json",
            json!({"spec": {"restartPolicy": "Never"}}),
        )
        .await;
    assert_eq!(immutable.status.as_u16(), 422, "{}", immutable.body);
    assert!(immutable.body["message"].as_str().is_some_and(|m| m
        .starts_with("Pod \"p\" is invalid: spec: Forbidden: pod updates may not change fields")));

    let invalid = c
        .post(pods, json!({"metadata": {"name": "q"}, "spec": {}}))
        .await;
    assert_status(
        &invalid,
        422,
        "Invalid",
        "Pod \"q\" is invalid: spec.containers: Required value",
    );

    // Deleting a pod answers with the pod.
    let deleted = c.delete(&format!("{pods}/p"), None).await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(deleted.body["kind"], "Pod");
    assert_eq!(deleted.body["metadata"]["name"], "p");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_preconditions_collections_and_namespaces() {
    let server = KubeApiServer::launch().await;
    let c = Client::new(&server, "alice");
    let x = c.post(CM, json!({"metadata": {"name": "x"}})).await.body;
    let uid = x["metadata"]["uid"].as_str().expect("uid").to_string();
    let wrong_uid = c
        .delete(&format!("{CM}/x"), Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "0000"}})))
        .await;
    assert_status(
        &wrong_uid,
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on configmaps \"x\": StorageError: invalid object, \
             Code: 4, Key: /registry/configmaps/default/x, ResourceVersion: 0, \
             AdditionalErrorMsg: Precondition failed: UID in precondition: 0000, UID in object \
             meta: {uid}"
        ),
    );
    let wrong_rv = c
        .delete(
            &format!("{CM}/x"),
            Some(json!({"preconditions": {"resourceVersion": "1"}})),
        )
        .await;
    assert_eq!(wrong_rv.status.as_u16(), 409, "{}", wrong_rv.body);
    assert!(wrong_rv.body["message"]
        .as_str()
        .is_some_and(|m| m.ends_with(&format!(
            "ResourceVersion in precondition: 1, ResourceVersion in object meta: {}",
            rv(&x)
        ))));
    let right = c
        .delete(
            &format!("{CM}/x"),
            Some(json!({"preconditions": {"uid": uid, "resourceVersion": rv(&x)}})),
        )
        .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.body);
    assert_eq!(right.body["details"]["uid"], uid.as_str());

    for (name, app) in [("a", "pg"), ("b", "pg"), ("c", "web")] {
        c.post(
            CM,
            json!({"metadata": {"name": name, "labels": {"app": app}}}),
        )
        .await;
    }
    let collection = c
        .delete(&format!("{CM}?labelSelector=app%3Dpg"), None)
        .await;
    assert_eq!(collection.status, StatusCode::OK, "{}", collection.body);
    assert_eq!(collection.body["kind"], "ConfigMapList");
    assert_eq!(names(&collection.body), ["a", "b"]);
    assert_eq!(names(&c.get(CM).await.body), ["c"]);

    // Objects need an existing namespace; created namespaces work, deleting one empties it.
    let orphan = c
        .post(
            "/api/v1/namespaces/nope/configmaps",
            json!({"metadata": {"name": "x"}}),
        )
        .await;
    assert_status(&orphan, 404, "NotFound", "namespaces \"nope\" not found");
    let ns = c
        .post("/api/v1/namespaces", json!({"metadata": {"name": "team"}}))
        .await;
    assert_eq!(ns.status, StatusCode::CREATED, "{}", ns.body);
    assert_eq!(ns.body["status"]["phase"], "Active");
    assert_eq!(
        ns.body["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team"
    );
    let inside = c
        .post(
            "/api/v1/namespaces/team/configmaps",
            json!({"metadata": {"generateName": "cfg-"}}),
        )
        .await;
    assert_eq!(inside.status, StatusCode::CREATED, "{}", inside.body);
    assert!(inside.body["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("cfg-") && n.len() == 9));
    c.delete("/api/v1/namespaces/team", None).await;
    let protected = c.delete("/api/v1/namespaces/default", None).await;
    assert_status(
        &protected,
        403,
        "Forbidden",
        "namespaces \"default\" is forbidden: this namespace may not be deleted",
    );
    assert!(names(&c.get("/api/v1/namespaces/team/configmaps").await.body).is_empty());

    // PUT of a missing ConfigMap is 404; of missing Endpoints it creates them.
    let put_missing = c
        .put(&format!("{CM}/none"), json!({"metadata": {"name": "none"}}))
        .await;
    assert_status(
        &put_missing,
        404,
        "NotFound",
        "configmaps \"none\" not found",
    );
    let put_ep = c
        .put(
            "/api/v1/namespaces/default/endpoints/e",
            json!({"metadata": {"name": "e"}}),
        )
        .await;
    assert_eq!(put_ep.status, StatusCode::CREATED, "{}", put_ep.body);
    let mismatch = c
        .put(&format!("{CM}/c"), json!({"metadata": {"name": "other"}}))
        .await;
    assert_status(
        &mismatch,
        400,
        "BadRequest",
        "the name of the object (other) does not match the name on the URL (c)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults() {
    let server = KubeApiServer::launch().await;
    let c = Client::new(&server, "alice");
    c.post(CM, json!({"metadata": {"name": "x"}})).await;

    // Stalls delay every API request; clearing releases a stalled one early.
    server.inject(json!({"stall_ms": 300})).await;
    let started = Instant::now();
    assert_eq!(c.get(&format!("{CM}/x")).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.inject(json!({"stall_ms": 30_000})).await;
    let started = Instant::now();
    let stalled = tokio::spawn({
        let c = Client::new(&server, "alice");
        async move { c.get(&format!("{CM}/x")).await.status }
    });
    // Requests are counted before they stall: wait until the second GET is waiting.
    regent_tests::wait_until("the stalled request", Duration::from_secs(5), || async {
        let counts = server.request_counts().await;
        (counts.get("alice").and_then(|c| c.get("get configmaps")) == Some(&2)).then_some(())
    })
    .await;
    server.clear_faults().await;
    assert_eq!(stalled.await.expect("join"), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Failures by status, verb, resource and count.
    server
        .inject(
            json!({"fail": {"status": 500, "count": 2, "verb": "patch", "resource": "configmaps"}}),
        )
        .await;
    let x_path = format!("{CM}/x");
    let patch = || {
        c.patch(
            &x_path,
            "application/merge-patch+json",
            json!({"data": {"a": "b"}}),
        )
    };
    assert_eq!(c.get(&format!("{CM}/x")).await.status, StatusCode::OK);
    let first = patch().await;
    assert_status(
        &first,
        500,
        "InternalError",
        "Internal error occurred: injected fault",
    );
    assert_eq!(patch().await.status.as_u16(), 500);
    assert_eq!(patch().await.status, StatusCode::OK);

    server
        .inject(json!({"fail": {"status": 429, "retry_after": 3, "count": 1}}))
        .await;
    let throttled = c.get(&format!("{CM}/x")).await;
    assert_status(
        &throttled,
        429,
        "TooManyRequests",
        "Too many requests, please try again later.",
    );
    assert_eq!(throttled.headers["retry-after"], "3");
    assert_eq!(throttled.body["details"]["retryAfterSeconds"], 3);

    server
        .inject(json!({"fail": {"status": 403, "client": "bob", "verb": "list"}}))
        .await;
    assert_eq!(c.get(CM).await.status, StatusCode::OK);
    let bob = Client::new(&server, "bob");
    let forbidden = bob.get(CM).await;
    assert_status(
        &forbidden,
        403,
        "Forbidden",
        "configmaps is forbidden: User \"system:serviceaccount:default:bob\" cannot list \
         resource \"configmaps\" in API group \"\" in the namespace \"default\"",
    );
    server.clear_faults().await;
    assert_eq!(bob.get(CM).await.status, StatusCode::OK);

    // drop_watches ends open watches at once.
    let mut watch = EventStream::open(
        &c,
        &format!(
            "{CM}?watch=true&resourceVersion={}",
            rv(&c.get(CM).await.body)
        ),
    )
    .await;
    server.inject(json!({"drop_watches": true})).await;
    assert!(watch.next(Duration::from_secs(5)).await.is_none());

    let counts = server.request_counts().await;
    assert_eq!(counts["alice"]["patch configmaps"], 3, "{counts:?}");
    assert_eq!(counts["alice"]["watch configmaps"], 1, "{counts:?}");
    assert_eq!(counts["bob"]["list configmaps"], 2, "{counts:?}");

    let unknown = c
        .http
        .post(format!("{}/_test/faults", c.base))
        .body(r#"{"stall": 1}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boolean_parameters_parse_like_go() {
    let server = KubeApiServer::launch().await;
    let c = Client::new(&server, "alice");
    c.post(CM, json!({"metadata": {"name": "x"}})).await;
    // Patroni's client sends Python's spelling.
    let mut watch = EventStream::open(&c, &format!("{CM}?watch=True")).await;
    assert_eq!(
        summary(&watch.next_change(Duration::from_secs(5)).await),
        ("ADDED".into(), "x".into())
    );
    let list = c.get(&format!("{CM}?watch=false")).await;
    assert_eq!(list.body["kind"], "ConfigMapList");
    let bad = c.get(&format!("{CM}?watch=yes")).await;
    assert_eq!(bad.status.as_u16(), 400, "{}", bad.body);
    assert_eq!(bad.body["reason"], "BadRequest");
    let counts = server.request_counts().await;
    assert_eq!(counts["alice"]["watch configmaps"], 1, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_owned_metadata_is_guarded() {
    let server = KubeApiServer::launch().await;
    let c = Client::new(&server, "alice");
    let with_rv = c
        .post(
            CM,
            json!({"metadata": {"name": "x", "resourceVersion": "5"}}),
        )
        .await;
    assert_status(
        &with_rv,
        500,
        "InternalError",
        "Internal error occurred: resourceVersion should not be set on objects to be created",
    );
    let x = c.post(CM, json!({"metadata": {"name": "x"}})).await.body;
    let other_uid = c
        .patch(
            &format!("{CM}/x"),
            "application/merge-patch+json",
            json!({"metadata": {"uid": "00000000-0000-4000-8000-000000000000"}}),
        )
        .await;
    assert_status(
        &other_uid,
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on configmaps \"x\": Precondition failed: UID in \
             precondition: 00000000-0000-4000-8000-000000000000, UID in object meta: {}",
            x["metadata"]["uid"].as_str().unwrap_or("")
        ),
    );
    // Fields the server owns cannot be rewritten by a patch.
    let patched = c
        .patch(
            &format!("{CM}/x"),
            "application/merge-patch+json",
            json!({"metadata": {"creationTimestamp": "2000-01-01T00:00:00Z"}, "data": {"a": "b"}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(
        patched.body["metadata"]["creationTimestamp"],
        x["metadata"]["creationTimestamp"]
    );
    let huge = "x".repeat(1024 * 1024 + 1);
    let too_big = c
        .post(
            CM,
            json!({"metadata": {"name": "big"}, "data": {"k": huge}}),
        )
        .await;
    assert_status(
        &too_big,
        422,
        "Invalid",
        "ConfigMap \"big\" is invalid: []: Too long: must have at most 1048576 bytes",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_in_process_and_discovery() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let opts = regent_tests::kube_api::ServeOptions {
        log_requests: false,
        ..Default::default()
    };
    let task = tokio::spawn(regent_tests::kube_api::serve(listener, opts));
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let url = format!("http://{addr}{path}");
        let http = http.clone();
        async move {
            let response = http.get(&url).send().await.expect("GET");
            (
                response.status(),
                response.json::<Value>().await.expect("JSON"),
            )
        }
    };
    let (status, namespaces) = get("/api/v1/namespaces").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        names(&namespaces),
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    let (_, version) = get("/version").await;
    assert_eq!(version["major"], "1");
    let (_, api) = get("/api").await;
    assert_eq!(api["versions"], json!(["v1"]));
    let (_, core) = get("/api/v1").await;
    let resources: Vec<&str> = core["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for wanted in [
        "configmaps",
        "endpoints",
        "pods",
        "pods/status",
        "services",
        "namespaces",
    ] {
        assert!(resources.contains(&wanted), "{wanted} missing: {core}");
    }
    let (_, groups) = get("/apis").await;
    assert_eq!(groups["groups"][0]["name"], "coordination.k8s.io");
    let (status, unknown) = get("/api/v1/namespaces/default/secrets").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        unknown["message"],
        "the server could not find the requested resource"
    );
    let (status, lease) = get("/apis/coordination.k8s.io/v1/namespaces/default/leases/x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        lease["message"],
        "leases.coordination.k8s.io \"x\" not found"
    );
    task.abort();
}

/// kubernetes/rbac.yaml of this repository.
fn rbac_yaml_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kubernetes/rbac.yaml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_its_own_ca() {
    let server = KubeApiServer::launch_tls().await;
    assert!(server.is_tls());
    let url = server.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let c = Client::new(&server, "tls-client");
    let created = c.post(CM, json!({"metadata": {"name": "x"}})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(c.get(&format!("{CM}/x")).await.status, StatusCode::OK);
    let counts = server.request_counts().await;
    assert_eq!(counts["tls-client"]["create configmaps"], 1, "{counts:?}");
    assert_eq!(counts["tls-client"]["get configmaps"], 1, "{counts:?}");

    // The certificate names 127.0.0.1 and localhost.
    let localhost = c
        .http
        .get(format!("https://localhost:{}/version", server.port()))
        .send()
        .await
        .expect("https://localhost");
    assert_eq!(localhost.status(), StatusCode::OK);
    // Without the CA the certificate is refused; plain HTTP gets no answer.
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    let error = untrusting
        .get(format!("{url}/version"))
        .send()
        .await
        .expect_err("a certificate from an unknown CA must be refused");
    let chain = format!("{:?}", anyhow::Error::from(error));
    assert!(chain.contains("UnknownIssuer"), "{chain}");
    let plain = untrusting
        .get(format!("http://127.0.0.1:{}/version", server.port()))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|r| !r.status().is_success()),
        "plain HTTP to the HTTPS port: {plain:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_rules_are_enforced_like_the_real_authorizer() {
    // ConfigMap mode: only the `regent` Role of kubernetes/rbac.yaml, from the command line.
    let server = KubeApiServer::builder()
        .rbac_file(&rbac_yaml_path(), &["regent"], &["root"])
        .launch()
        .await;
    let m = Client::new(&server, "member");
    let root = Client::new(&server, "root");
    let forbidden = |answer: &Answer, message: &str| {
        assert_status(answer, 403, "Forbidden", message);
    };
    let user = "User \"system:serviceaccount:default:member\"";

    // What the Role allows on configmaps.
    let created = m.post(CM, json!({"metadata": {"name": "x"}})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(m.get(&format!("{CM}/x")).await.status, StatusCode::OK);
    assert_eq!(m.get(CM).await.status, StatusCode::OK);
    let patched = m
        .patch(
            &format!("{CM}/x"),
            "application/strategic-merge-patch+json",
            json!({"metadata": {"annotations": {"a": "1"}}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let watch = m
        .http
        .get(format!("{}{CM}?watch=1&timeoutSeconds=1", m.base))
        .bearer_auth("member")
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), StatusCode::OK);
    drop(watch);
    // ... and what it does not.
    forbidden(
        &m.put(&format!("{CM}/x"), patched.body.clone()).await,
        &format!(
            "configmaps \"x\" is forbidden: {user} cannot update resource \"configmaps\" in API \
             group \"\" in the namespace \"default\""
        ),
    );
    forbidden(
        &m.delete(&format!("{CM}/x"), None).await,
        &format!(
            "configmaps \"x\" is forbidden: {user} cannot delete resource \"configmaps\" in API \
             group \"\" in the namespace \"default\""
        ),
    );
    forbidden(
        &m.delete(CM, None).await,
        &format!(
            "configmaps is forbidden: {user} cannot deletecollection resource \"configmaps\" in \
             API group \"\" in the namespace \"default\""
        ),
    );
    forbidden(
        &m.get("/api/v1/configmaps").await,
        &format!(
            "configmaps is forbidden: {user} cannot list resource \"configmaps\" in API group \
             \"\" at the cluster scope"
        ),
    );
    // Pods: patch the Pod, not its status; never create.
    server
        .create_pod("default", "p", &BTreeMap::new(), "10.0.0.1")
        .await;
    let pod = "/api/v1/namespaces/default/pods/p";
    let labelled = m
        .patch(
            pod,
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"role": "primary"}}}),
        )
        .await;
    assert_eq!(labelled.status, StatusCode::OK, "{}", labelled.body);
    let status_patch = m
        .patch(
            &format!("{pod}/status"),
            "application/merge-patch+json",
            json!({"status": {"phase": "Failed"}}),
        )
        .await;
    forbidden(
        &status_patch,
        &format!(
            "pods \"p\" is forbidden: {user} cannot patch resource \"pods/status\" in API group \
             \"\" in the namespace \"default\""
        ),
    );
    assert_eq!(
        status_patch.body["details"],
        json!({"name": "p", "kind": "pods"})
    );
    // Endpoints belong to the other Role, which is not bound; leases to none.
    forbidden(
        &m.get("/api/v1/namespaces/default/endpoints/x").await,
        &format!(
            "endpoints \"x\" is forbidden: {user} cannot get resource \"endpoints\" in API group \
             \"\" in the namespace \"default\""
        ),
    );
    forbidden(
        &m.get("/apis/coordination.k8s.io/v1/namespaces/default/leases/l")
            .await,
        &format!(
            "leases.coordination.k8s.io \"l\" is forbidden: {user} cannot get resource \"leases\" \
             in API group \"coordination.k8s.io\" in the namespace \"default\""
        ),
    );
    // Admin tokens and discovery are not subject to the rules.
    assert_eq!(
        root.delete(&format!("{CM}/x"), None).await.status,
        StatusCode::OK
    );
    assert_eq!(m.get("/api/v1").await.status, StatusCode::OK);
    assert!(server.get("endpoints", "default", "x").await.is_none());

    let denied = server.denied_requests().await;
    let seen: Vec<String> = denied
        .iter()
        .map(|d| {
            format!(
                "{} {} {} {}",
                d["client"].as_str().unwrap_or("?"),
                d["verb"].as_str().unwrap_or("?"),
                d["resource"].as_str().unwrap_or("?"),
                d["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "member update configmaps x",
            "member delete configmaps x",
            "member deletecollection configmaps ",
            "member list configmaps ",
            "member patch pods/status p",
            "member get endpoints x",
            "member get leases l",
        ]
    );
    let counts = server.request_counts().await;
    assert_eq!(counts["member"]["patch pods/status"], 1, "{counts:?}");
    let rbac = root.get("/_test/rbac").await.body;
    assert_eq!(rbac["roles"][0]["name"], "regent", "{rbac}");
    assert_eq!(rbac["roles"].as_array().map(Vec::len), Some(1), "{rbac}");

    // At run time: resourceNames, including a list narrowed to one name by fieldSelector.
    server
        .enforce_rbac(
            "kind: Role\nmetadata: {name: api}\nrules:\n- apiGroups: [\"\"]\n  resources: \
             [endpoints]\n  resourceNames: [kubernetes]\n  verbs: [get, list]\n",
            &[],
            &[],
        )
        .await;
    let ep = "/api/v1/namespaces/default/endpoints";
    assert_eq!(
        m.get(&format!("{ep}/kubernetes")).await.status.as_u16(),
        404
    );
    assert_eq!(m.get(&format!("{ep}/other")).await.status.as_u16(), 403);
    assert_eq!(
        m.get(&format!("{ep}?fieldSelector=metadata.name%3Dkubernetes"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(m.get(ep).await.status.as_u16(), 403);
    // The runtime rules replaced the file's: configmaps are refused now.
    assert_eq!(m.get(CM).await.status.as_u16(), 403);
    server.allow_all().await;
    assert_eq!(m.get(ep).await.status, StatusCode::OK);
    assert_eq!(m.delete(CM, None).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_file_keeps_objects_across_a_restart() {
    let state = std::env::temp_dir().join(format!("regent-kube-state-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let state_arg = state.display().to_string();
    let server = KubeApiServer::launch_with_args(&["--state-file", &state_arg]).await;
    let c = Client::new(&server, "alice");
    c.post(
        CM,
        json!({"metadata": {"name": "kept"}, "data": {"a": "1"}}),
    )
    .await;
    let patched = c
        .patch(
            &format!("{CM}/kept"),
            "application/merge-patch+json",
            json!({"data": {"a": "2"}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let before = rv(&patched.body);

    // SIGTERM: the server saves its objects and exits.
    let pid = server.pid().expect("server pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("{}/healthz", server.url()))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the server still answers after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(state.exists(), "no state file at {}", state.display());

    server.start().await;
    let kept = c.get(&format!("{CM}/kept")).await;
    assert_eq!(kept.status, StatusCode::OK, "{}", kept.body);
    assert_eq!(kept.body["data"]["a"], "2", "{}", kept.body);
    assert_eq!(
        rv(&kept.body),
        before,
        "the resourceVersion survives the restart"
    );
    // The counter continues: a new object gets a newer resourceVersion.
    let created = c.post(CM, json!({"metadata": {"name": "after"}})).await;
    assert!(
        rv(&created.body).parse::<u64>().expect("numeric rv")
            > before.parse::<u64>().expect("numeric rv"),
        "{} after {before}",
        created.body
    );
    // Events from before the restart are gone: resuming a watch from then gets 410.
    let mut gone = EventStream::open(&c, &format!("{CM}?watch=true&resourceVersion=1")).await;
    let error = gone
        .next(Duration::from_secs(5))
        .await
        .expect("ERROR event");
    assert_eq!(error["object"]["code"], 410, "{error}");
    server.stop();
    let _ = std::fs::remove_file(&state);
}
