//! The Kubernetes API test server behaves like the real API server where our agents (and
//! Patroni) can tell the difference: status codes, `Status` bodies, optimistic concurrency,
//! selectors, watches, validation, and the `/_test/` controls.

use std::collections::BTreeMap;
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
    fn new(server: &KubeApiServer, token: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
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
