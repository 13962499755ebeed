//! The real kubectl (v1.32, from PATH) works against the Kubernetes API test server: discovery,
//! get (tables, JSON, YAML, label selectors), client-side apply, the three patch types, label,
//! annotate, delete, and a replace with a stale resourceVersion that must conflict. Over HTTPS
//! kubectl sends its token and refuses a server certificate its CA did not sign; with RBAC
//! rules it gets (and prints) the real server's 403 messages.
//!
//! kubectl is `$KUBECTL_BIN`, else the first on PATH (.ci/run installs it); without it the tests
//! fail.

use std::path::Path;
use std::time::Duration;

use regent_tests::kube::{KubeApiServer, Kubectl};
use regent_tests::tools::kubectl_bin;
use regent_tests::wait_until;
use serde_json::Value;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.display().to_string()
}

/// Table rows (header included) as whitespace-split cells.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

fn first_column(table: &str) -> Vec<String> {
    rows(table)
        .into_iter()
        .skip(1)
        .filter_map(|r| r.into_iter().next())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_manages_objects_on_the_test_server() {
    let bin = kubectl_bin();
    let server = KubeApiServer::launch().await;
    let k = Kubectl::new(bin, &server, "kubectl-user");
    let dir = server.dir().to_path_buf();

    // apply creates, then modifies (client-side apply: GET + strategic merge PATCH).
    let manifest = |value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels:\n    \
             app: pg\n    tier: db\ndata:\n  mode: {value}\n  keep: \"yes\"\n"
        )
    };
    let file = write(&dir, "settings.yaml", &manifest("one"));
    assert_eq!(
        k.ok(&["apply", "-f", &file]).await.trim(),
        "configmap/settings created"
    );
    let file = write(&dir, "settings.yaml", &manifest("two"));
    assert_eq!(
        k.ok(&["apply", "-f", &file]).await.trim(),
        "configmap/settings configured"
    );
    assert_eq!(
        k.ok(&["apply", "-f", &file]).await.trim(),
        "configmap/settings unchanged"
    );
    let cm = k.json(&["get", "configmap", "settings"]).await;
    assert_eq!(cm["data"]["mode"], "two", "{cm}");
    assert_eq!(cm["data"]["keep"], "yes");
    assert!(
        cm["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .is_some_and(|a| a.contains("\"mode\":\"two\""))
    );

    // More objects for listing.
    // A multi-document manifest (a `kind: List` would need client-side validation, which
    // needs the protobuf OpenAPI v2 document this server does not serve).
    let pod = |name: &str, labels: &str, image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n\
             spec: {{containers: [{{name: main, image: '{image}'}}]}}\n"
        )
    };
    let pods = write(
        &dir,
        "pods.yaml",
        &[
            pod("pg-0", "app: pg, role: primary", "postgres:15"),
            pod("pg-1", "app: pg, role: replica", "postgres:15"),
            pod("web-0", "app: web", "nginx"),
        ]
        .join("---\n"),
    );
    let created = k.ok(&["create", "-f", &pods]).await;
    assert_eq!(
        created.lines().collect::<Vec<_>>(),
        ["pod/pg-0 created", "pod/pg-1 created", "pod/web-0 created"]
    );

    // Typed-client commands send protobuf bodies.
    assert_eq!(
        k.ok(&[
            "create",
            "configmap",
            "literal",
            "--from-literal=a=1",
            "--from-literal=b=2"
        ])
        .await
        .trim(),
        "configmap/literal created"
    );
    let literal = k.json(&["get", "configmap", "literal"]).await;
    assert_eq!(
        literal["data"],
        serde_json::json!({"a": "1", "b": "2"}),
        "{literal}"
    );
    assert_eq!(
        k.ok(&["create", "namespace", "team"]).await.trim(),
        "namespace/team created"
    );
    let namespaces = k.ok(&["get", "namespaces"]).await;
    assert!(
        rows(&namespaces)
            .iter()
            .any(|r| r[..2] == ["team", "Active"]),
        "{namespaces}"
    );
    k.ok(&["delete", "configmap", "literal"]).await;

    // get: server-side tables.
    let table = k.ok(&["get", "configmaps"]).await;
    let cells = rows(&table);
    assert_eq!(cells[0], ["NAME", "DATA", "AGE"], "{table}");
    assert_eq!(cells[1][..2], ["settings", "2"], "{table}");
    let table = k.ok(&["get", "pods"]).await;
    let cells = rows(&table);
    assert_eq!(
        cells[0],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{table}"
    );
    assert_eq!(cells[1][..4], ["pg-0", "0/1", "Pending", "0"], "{table}");
    let wide = k
        .ok(&["get", "pods", "-o", "wide", "-l", "role=replica"])
        .await;
    assert!(rows(&wide)[0].contains(&"IP".to_string()), "{wide}");
    assert_eq!(first_column(&wide), ["pg-1"]);

    // Label selectors, equality- and set-based.
    for (selector, expected) in [
        ("app=pg", vec!["pg-0", "pg-1"]),
        ("app!=pg", vec!["web-0"]),
        ("role in (primary,replica)", vec!["pg-0", "pg-1"]),
        // Absent keys satisfy `notin`.
        ("app,role notin (primary)", vec!["pg-1", "web-0"]),
        ("role,role notin (primary)", vec!["pg-1"]),
        ("!role", vec!["web-0"]),
    ] {
        let out = k.ok(&["get", "pods", "-l", selector, "-o", "name"]).await;
        let names: Vec<&str> = out.lines().map(|l| l.trim_start_matches("pod/")).collect();
        assert_eq!(names, expected, "selector {selector}");
    }
    let empty = k.run(&["get", "pods", "-l", "app=none"]).await;
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("No resources found in default namespace.")
    );

    // -o json / -o yaml of one object and of a list.
    let pod = k.json(&["get", "pod", "pg-0"]).await;
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["status"]["phase"], "Pending");
    let list = k.json(&["get", "pods", "-l", "app=pg"]).await;
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][1]["metadata"]["name"], "pg-1");
    assert_eq!(list["items"][1]["kind"], "Pod");
    let yaml = k.ok(&["get", "configmap", "settings", "-o", "yaml"]).await;
    let parsed: Value = serde_yaml_ng::from_str(&yaml).expect("kubectl printed YAML");
    assert_eq!(parsed["data"]["mode"], "two", "{yaml}");
    assert!(yaml.contains("kind: ConfigMap"), "{yaml}");

    // patch: strategic (default), merge and JSON.
    assert_eq!(
        k.ok(&[
            "patch",
            "configmap",
            "settings",
            "-p",
            r#"{"data":{"s":"1"}}"#
        ])
        .await
        .trim(),
        "configmap/settings patched"
    );
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"keep":null,"m":"2"}}"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/data/mode","value":"three"}]"#,
    ])
    .await;
    let cm = k.json(&["get", "configmap", "settings"]).await;
    assert_eq!(
        cm["data"],
        serde_json::json!({"mode": "three", "s": "1", "m": "2"}),
        "{cm}"
    );
    // Strategic merge patches merge pod containers by name.
    k.ok(&[
        "patch",
        "pod",
        "pg-0",
        "-p",
        r#"{"spec":{"containers":[{"name":"main","image":"postgres:16"}]}}"#,
    ])
    .await;
    let pod = k.json(&["get", "pod", "pg-0"]).await;
    assert_eq!(pod["spec"]["containers"][0]["image"], "postgres:16");
    assert_eq!(pod["spec"]["containers"][0]["name"], "main");
    let failed = k
        .fails(&[
            "patch",
            "configmap",
            "settings",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/data/mode","value":"one"}]"#,
        ])
        .await;
    assert_eq!(
        failed.trim(),
        "The request is invalid: the server rejected our request due to an error in our request"
    );

    // label: add, refuse to overwrite without --overwrite, overwrite, remove.
    k.ok(&["label", "configmap", "settings", "owner=team-a"])
        .await;
    let refused = k
        .fails(&["label", "configmap", "settings", "owner=team-b"])
        .await;
    assert!(
        refused.contains("'owner' already has a value (team-a), and --overwrite is false"),
        "{refused}"
    );
    k.ok(&[
        "label",
        "configmap",
        "settings",
        "owner=team-b",
        "--overwrite",
    ])
    .await;
    assert_eq!(
        k.ok(&["label", "configmap", "settings", "tier-"])
            .await
            .trim(),
        "configmap/settings unlabeled"
    );
    let shown = k
        .ok(&["get", "configmap", "-l", "owner=team-b", "--show-labels"])
        .await;
    let cells = rows(&shown);
    assert_eq!(
        cells[0].last().map(String::as_str),
        Some("LABELS"),
        "{shown}"
    );
    assert_eq!(
        cells[1].last().map(String::as_str),
        Some("app=pg,owner=team-b"),
        "{shown}"
    );

    // annotate.
    k.ok(&["annotate", "pod", "pg-1", "status={\"role\":\"replica\"}"])
        .await;
    let pod = k.json(&["get", "pod", "pg-1"]).await;
    assert_eq!(
        pod["metadata"]["annotations"]["status"],
        "{\"role\":\"replica\"}"
    );

    // get -w streams Table rows; it ends when the server closes the watch.
    let mut watcher = k.command(&["get", "configmaps", "-w", "--output-watch-events"]);
    watcher
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let watcher = watcher.spawn().expect("spawn kubectl get -w");
    wait_until(
        "kubectl's watch request",
        Duration::from_secs(20),
        || async {
            let counts = server.request_counts().await;
            let watches = counts
                .get("anonymous")
                .and_then(|c| c.get("watch configmaps"))
                .copied()
                .unwrap_or(0);
            (watches > 0).then_some(())
        },
    )
    .await;
    k.ok(&["label", "configmap", "settings", "watched=yes"])
        .await;
    wait_until(
        "the label in the store",
        Duration::from_secs(10),
        || async {
            let cm = server.get("configmaps", "default", "settings").await?;
            (cm["metadata"]["labels"]["watched"] == "yes").then_some(())
        },
    )
    .await;
    server
        .inject(serde_json::json!({"drop_watches": true}))
        .await;
    let output = tokio::time::timeout(Duration::from_secs(20), watcher.wait_with_output())
        .await
        .expect("kubectl get -w ends when its watch is closed")
        .expect("kubectl get -w output");
    server.clear_faults().await;
    let streamed = String::from_utf8_lossy(&output.stdout).into_owned();
    let cells = rows(&streamed);
    assert_eq!(cells[0], ["EVENT", "NAME", "DATA", "AGE"], "{streamed}");
    assert_eq!(cells[1][..3], ["ADDED", "settings", "3"], "{streamed}");
    assert!(
        cells.iter().any(|r| r[..2] == ["MODIFIED", "settings"]),
        "{streamed}"
    );

    // replace with a stale resourceVersion conflicts; with the current one it succeeds.
    let stale = k.json(&["get", "configmap", "settings"]).await;
    let stale_file = write(&dir, "stale.json", &stale.to_string());
    k.ok(&["annotate", "configmap", "settings", "touched=yes"])
        .await;
    let conflict = k.fails(&["replace", "-f", &stale_file]).await;
    assert!(
        conflict.contains(
            "Error from server (Conflict): error when replacing \""
                .to_string()
                .as_str()
        ) && conflict.contains(
            "Operation cannot be fulfilled on configmaps \"settings\": the object has been \
             modified; please apply your changes to the latest version and try again"
        ),
        "{conflict}"
    );
    let fresh = k.json(&["get", "configmap", "settings"]).await;
    let fresh_file = write(&dir, "fresh.json", &fresh.to_string());
    assert_eq!(
        k.ok(&["replace", "-f", &fresh_file]).await.trim(),
        "configmap/settings replaced"
    );

    // delete, then get reports NotFound.
    assert_eq!(
        k.ok(&["delete", "configmap", "settings"]).await.trim(),
        "configmap \"settings\" deleted"
    );
    let missing = k.fails(&["get", "configmap", "settings"]).await;
    assert_eq!(
        missing.trim(),
        "Error from server (NotFound): configmaps \"settings\" not found"
    );
    assert_eq!(
        k.ok(&["delete", "pods", "-l", "app=pg"])
            .await
            .lines()
            .count(),
        2
    );
    assert_eq!(first_column(&k.ok(&["get", "pods"]).await), ["web-0"]);

    // Endpoints: the deprecation warning reaches the user; loopback addresses are refused.
    let ep = write(
        &dir,
        "ep.yaml",
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: lo}\n\
         subsets: [{addresses: [{ip: 127.0.0.1}], ports: [{port: 5432}]}]\n",
    );
    let invalid = k.fails(&["apply", "-f", &ep]).await;
    assert!(
        invalid.contains(
            "Warning: v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"
        ),
        "{invalid}"
    );
    assert!(
        invalid.contains(
            "Endpoints \"lo\" is invalid: subsets[0].addresses[0].ip: Invalid value: \
             \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
        ),
        "{invalid}"
    );

    // Every request was counted. client-go sends credentials only over TLS, so kubectl's
    // requests to this plain-HTTP server are anonymous.
    let counts = server.request_counts().await;
    assert!(!counts.contains_key("kubectl-user"), "{counts:?}");
    let mine = &counts["anonymous"];
    for key in [
        "get configmaps",
        "list pods",
        "create pods",
        "patch configmaps",
        "update configmaps",
        "delete configmaps",
    ] {
        assert!(
            mine.get(key).is_some_and(|n| *n > 0),
            "{key} missing in {mine:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_over_https_sends_its_token_and_checks_the_certificate() {
    let bin = kubectl_bin();
    let server = KubeApiServer::launch_tls().await;
    assert!(
        server.url().starts_with("https://127.0.0.1:"),
        "{}",
        server.url()
    );
    let k = Kubectl::new(bin.clone(), &server, "tls-user");
    let dir = server.dir().to_path_buf();
    let file = write(
        &dir,
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: over-tls}\ndata: {a: b}\n",
    );
    assert_eq!(
        k.ok(&["apply", "-f", &file]).await.trim(),
        "configmap/over-tls created"
    );
    let cm = k.json(&["get", "configmap", "over-tls"]).await;
    assert_eq!(cm["data"]["a"], "b", "{cm}");
    let names = first_column(&k.ok(&["get", "configmaps"]).await);
    assert_eq!(names, ["over-tls"]);

    // Over TLS the requests carry the kubeconfig's token.
    let counts = server.request_counts().await;
    let mine = counts
        .get("tls-user")
        .unwrap_or_else(|| panic!("no requests counted for tls-user: {counts:?}"));
    for key in ["get configmaps", "list configmaps", "create configmaps"] {
        assert!(
            mine.get(key).is_some_and(|n| *n > 0),
            "{key} missing in {mine:?}"
        );
    }
    assert!(!counts.contains_key("anonymous"), "{counts:?}");

    // A kubeconfig trusting another CA: the handshake fails, nothing reaches the API.
    server.reset_request_counts().await;
    let other_ca = test_pki::write_ca(&dir, "other-ca");
    let other_pem = std::fs::read_to_string(&other_ca).expect("read other CA");
    let wrong = server.write_kubeconfig_with_ca(
        &dir.join("kubeconfig-wrong-ca"),
        "wrong-ca-user",
        Some(&other_pem),
    );
    let k = Kubectl::with_kubeconfig(bin, &server, wrong);
    let error = k.fails(&["get", "configmaps"]).await;
    assert!(
        error.contains("x509: certificate signed by unknown authority")
            || error.contains("tls: failed to verify certificate"),
        "kubectl should refuse the certificate: {error}"
    );
    let counts = server.request_counts().await;
    assert!(!counts.contains_key("wrong-ca-user"), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_meets_rbac_rules() {
    let bin = kubectl_bin();
    let server = KubeApiServer::launch_tls().await;
    let dir = server.dir().to_path_buf();
    let roles = write(
        &dir,
        "roles.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: reader}\n\
         rules:\n- apiGroups: [\"\"]\n  resources: [configmaps]\n  verbs: [get, list]\n",
    );
    let yaml = std::fs::read_to_string(&roles).expect("read roles");
    server.enforce_rbac(&yaml, &[], &["root"]).await;
    let reader = Kubectl::new(bin.clone(), &server, "reader");
    let root = Kubectl::new(bin, &server, "root");
    let file = write(
        &dir,
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: guarded}\ndata: {a: b}\n",
    );
    let refused = reader.fails(&["create", "-f", &file]).await;
    assert!(
        refused.contains(
            "configmaps is forbidden: User \"system:serviceaccount:default:reader\" cannot \
             create resource \"configmaps\" in API group \"\" in the namespace \"default\""
        ),
        "{refused}"
    );
    root.ok(&["create", "-f", &file]).await;
    let cm = reader.json(&["get", "configmap", "guarded"]).await;
    assert_eq!(cm["data"]["a"], "b", "{cm}");
    let refused = reader
        .fails(&["annotate", "configmap", "guarded", "x=y"])
        .await;
    assert!(
        refused.contains(
            "configmaps \"guarded\" is forbidden: User \"system:serviceaccount:default:reader\" \
             cannot patch resource \"configmaps\" in API group \"\" in the namespace \"default\""
        ),
        "{refused}"
    );
    let refused = reader.fails(&["get", "pods"]).await;
    assert!(
        refused.contains("cannot list resource \"pods\""),
        "{refused}"
    );
    let denied = server.denied_requests().await;
    let seen: Vec<String> = denied
        .iter()
        .map(|d| {
            format!(
                "{} {} {}",
                d["client"].as_str().unwrap_or("?"),
                d["verb"],
                d["resource"]
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "reader \"create\" \"configmaps\"",
            "reader \"patch\" \"configmaps\"",
            "reader \"list\" \"pods\""
        ],
        "{denied:?}"
    );
}
