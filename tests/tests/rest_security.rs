//! The REST API's access control end to end, on a one-member cluster served over TLS with basic
//! authentication and an allowlist: reads are open to any client trusting the CA, plain HTTP is
//! not served, unsafe requests need the credentials (401 otherwise, and nothing happens) and an
//! allowed source address (403 otherwise). Certificates are made per run (test-pki).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regent_tests::process::chown_to_postgres;
use regent_tests::{run_regent, wait_until, MemberConfig, MemberSpec, TestCluster, TestDir};
use serde_json::{json, Value};
use test_pki::{encrypted_key_envelope, Ca, Subject, Usage};

const USER: &str = "admin";
const PASSWORD: &str = "s3cret";

/// A CA and a server certificate for 127.0.0.1 it signed, readable by the agent.
fn make_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = Ca::new("rest test CA");
    let ca_cert = ca.write(dir, "ca");
    let subject = Subject::CommonName("127.0.0.1");
    let (cert, key) = ca.issue_to(dir, "server", subject, &["127.0.0.1"], Usage::Server);
    for file in [&ca_cert, &cert, &key] {
        chown_to_postgres(file);
    }
    (ca_cert, cert, key)
}

/// A cluster of `members` serving the REST API over https only, with a certificate of a CA made
/// for it and basic authentication; `configure` adds settings. Returns the directory of the
/// certificates (removed on drop) and the CA certificate's path.
async fn secured_cluster(
    scope: &str,
    members: usize,
    configure: impl Fn(usize, &mut MemberConfig) + Send + Sync + 'static,
) -> (TestDir, PathBuf, TestCluster) {
    let pki = TestDir::new(&format!("{scope}-pki"));
    let (ca, cert, key) = make_pki(pki.path());
    let cafile = ca.clone();
    let cluster = TestCluster::builder(scope)
        .members(members)
        .configure(move |_, cfg| {
            cfg.set("restapi.certfile", cert.display().to_string())
                .set("restapi.keyfile", key.display().to_string())
                .set("restapi.cafile", cafile.display().to_string())
                .set(
                    "restapi.authentication",
                    json!({"username": USER, "password": PASSWORD}),
                );
        })
        .configure(configure)
        .start()
        .await;
    (pki, ca, cluster)
}

/// `POST /reload` with the user `USER` and `password`.
async fn post_reload(client: &reqwest::Client, base: &str, password: &str) -> reqwest::Response {
    client
        .post(format!("{base}/reload"))
        .basic_auth(USER, Some(password))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {base}/reload: {e}"))
}

/// An https client trusting `ca`, connecting from `source` when given.
fn client(ca: &Path, source: Option<IpAddr>) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("read CA");
    let cert = reqwest::Certificate::from_pem(&pem).expect("CA PEM");
    reqwest::Client::builder()
        .add_root_certificate(cert)
        .timeout(Duration::from_secs(5))
        .local_address(source)
        .build()
        .expect("https client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_authentication_and_allowlist_guard_the_rest_api() {
    let (_pki, ca, cluster) = secured_cluster("restsec", 1, |_, cfg| {
        cfg.set("restapi.allowlist", json!(["127.0.0.1"])).set(
            "restapi.https_extra_headers",
            json!({"X-Regent-Test": "tls"}),
        );
    })
    .await;
    let member = cluster.member("restsec-0");
    let base = format!("https://127.0.0.1:{}", member.api_port());
    let https = client(&ca, None);

    // Reads over https with the CA work, without credentials.
    let status: Value = wait_until(
        "the member to run as primary over https",
        Duration::from_secs(120),
        || async {
            let response = https.get(format!("{base}/patroni")).send().await.ok()?;
            let body: Value = response.json().await.ok()?;
            (body["role"] == "primary" && body["state"] == "running").then_some(body)
        },
    )
    .await;
    assert_eq!(status["patroni"]["scope"], "restsec", "{status}");

    // The member publishes an https api_url.
    let member_key = cluster
        .dcs_get("members/restsec-0")
        .await
        .expect("member key in the DCS");
    assert!(
        member_key.contains(&format!("\"api_url\":\"{base}/patroni\"")),
        "{member_key}"
    );

    // No plain HTTP on the TLS port, and no https for a client that does not trust the CA.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let answer = plain
        .get(format!("http://127.0.0.1:{}/patroni", member.api_port()))
        .send()
        .await;
    assert!(
        answer.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain http answered: {answer:?}"
    );
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client without the CA");
    assert!(untrusting
        .get(format!("{base}/patroni"))
        .send()
        .await
        .is_err());

    // Unsafe requests without (or with wrong) credentials: 401 and nothing is done.
    let postmaster = member.postmaster_pid();
    assert!(postmaster.is_some(), "postmaster running");
    let response = https
        .post(format!("{base}/restart"))
        .json(&json!({}))
        .send()
        .await
        .expect("POST /restart");
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Basic realm=\"Patroni\"")
    );
    assert_eq!(
        response
            .headers()
            .get("x-regent-test")
            .and_then(|v| v.to_str().ok()),
        Some("tls"),
        "https_extra_headers on a refusal"
    );
    assert_eq!(
        response.text().await.expect("body"),
        "no auth header received"
    );
    let response = post_reload(&https, &base, "wrong").await;
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.text().await.expect("body"), "not authenticated");
    let response = https
        .delete(format!("{base}/switchover"))
        .send()
        .await
        .expect("DELETE /switchover");
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        member.postmaster_pid(),
        postmaster,
        "a refused restart restarted Postgres"
    );
    assert!(
        member
            .log_contents()
            .contains("REST API refused POST /restart"),
        "the refusal is logged"
    );

    // With the credentials the request reaches its handler.
    let response = post_reload(&https, &base, PASSWORD).await;
    let code = response.status().as_u16();
    assert!(
        code != 401 && code != 403,
        "authenticated POST /reload answered {code}"
    );

    // POST /reload applies a changed password: the old one is refused from then on.
    let mut config = member.config().clone();
    config.set(
        "restapi.authentication",
        json!({"username": USER, "password": "n3w"}),
    );
    config.write_to(&member.config_path());
    let response = post_reload(&https, &base, PASSWORD).await;
    assert_eq!(response.status().as_u16(), 202, "reload accepted");
    wait_until(
        "the reloaded password to be required",
        Duration::from_secs(30),
        || async {
            let old = https
                .post(format!("{base}/reload"))
                .basic_auth(USER, Some(PASSWORD))
                .send()
                .await
                .ok()?;
            (old.status().as_u16() == 401).then_some(())
        },
    )
    .await;
    let response = post_reload(&https, &base, "n3w").await;
    let code = response.status().as_u16();
    assert!(code != 401 && code != 403, "new password answered {code}");

    // A client outside the allowlist is refused even with the credentials; reads stay open.
    let outsider = client(&ca, Some("127.0.0.2".parse().expect("ip")));
    let response = post_reload(&outsider, &base, "n3w").await;
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(response.text().await.expect("body"), "Access is denied");
    let response = outsider
        .get(format!("{base}/patroni"))
        .send()
        .await
        .expect("GET /patroni from 127.0.0.2");
    assert_eq!(response.status().as_u16(), 200);
}

/// `--validate-config` loads the REST API's TLS files: a good set passes, a bad one is refused
/// (exit 2) naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_config_checks_the_tls_files() {
    let dir = TestDir::new("rest-security-validate");
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).expect("pki dir");
    let (ca, cert, key) = make_pki(&pki);
    let plain_key = std::fs::read_to_string(&key).expect("read key");
    std::fs::write(pki.join("enc.key"), encrypted_key_envelope(&plain_key)).expect("write key");
    chown_to_postgres(&pki.join("enc.key"));
    let spec = MemberSpec::new(
        "validate",
        "validate-0",
        dir.postgres_subdir("validate-0"),
        vec!["127.0.0.1:2379".to_string()],
    );
    let path = spec.member_dir.join("regent.yml");
    // Settings to write, and the key a refusal must name (`None`: accepted).
    type Case<'a> = (Vec<(&'a str, Value)>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("restapi.certfile", json!(cert.display().to_string())),
                ("restapi.keyfile", json!(key.display().to_string())),
                ("restapi.cafile", json!(ca.display().to_string())),
                ("restapi.verify_client", json!("optional")),
            ],
            None,
        ),
        (
            vec![("restapi.certfile", json!("/nonexistent/server.crt"))],
            Some("restapi.certfile"),
        ),
        (
            vec![
                ("restapi.certfile", json!(cert.display().to_string())),
                (
                    "restapi.keyfile",
                    json!(pki.join("enc.key").display().to_string()),
                ),
                ("restapi.keyfile_password", json!("pw")),
            ],
            Some("restapi.keyfile"),
        ),
        (
            vec![
                ("restapi.certfile", json!(cert.display().to_string())),
                ("restapi.keyfile", json!(key.display().to_string())),
                ("restapi.verify_client", json!("required")),
            ],
            Some("restapi.cafile"),
        ),
    ];
    for (settings, refused) in cases {
        let mut config = MemberConfig::patroni(&spec);
        for (key, value) in &settings {
            config.set(key, value);
        }
        config.write_to(&path);
        let output = run_regent(
            [std::ffi::OsStr::new("--validate-config"), path.as_os_str()],
            &spec.member_dir,
            Duration::from_secs(30),
        )
        .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        match refused {
            None => assert_eq!(output.status.code(), Some(0), "{settings:?}: {stderr}"),
            Some(key) => {
                assert_eq!(output.status.code(), Some(2), "{settings:?}: {stderr}");
                assert!(
                    stderr.contains(key),
                    "{settings:?} must name {key}: {stderr}"
                );
            }
        }
    }
}

/// Two members over TLS with authentication and only the members allowed: they read each other
/// over https (the CA from `restapi.cafile`), and a switchover asked with the credentials from a
/// member's address is carried out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_switch_over_through_the_secured_api() {
    let (_pki, ca, cluster) = secured_cluster("restsec2", 2, |_, cfg| {
        cfg.set("restapi.allowlist_include_members", true);
    })
    .await;
    let https = client(&ca, None);
    let base = |m: &regent_tests::Member| format!("https://127.0.0.1:{}", m.api_port());
    let roles = || async {
        let mut roles = Vec::new();
        for member in cluster.all() {
            let body: Value = https
                .get(format!("{}/patroni", base(member)))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            if body["state"] != "running" {
                return None;
            }
            roles.push((
                member.name().to_string(),
                body["role"].as_str()?.to_string(),
            ));
        }
        Some(roles)
    };
    let (leader, replica) = wait_until(
        "a primary and a running replica over https",
        Duration::from_secs(180),
        || async {
            let roles = roles().await?;
            let leader = roles.iter().find(|(_, r)| r == "primary")?.0.clone();
            let replica = roles.iter().find(|(_, r)| r == "replica")?.0.clone();
            Some((leader, replica))
        },
    )
    .await;
    let leader_api = base(cluster.member(&leader));
    let body = json!({"leader": leader, "candidate": replica});

    // Members are allowed; another address is not, credentials or not.
    let outsider = client(&ca, Some("127.0.0.2".parse().expect("ip")));
    let response = outsider
        .post(format!("{leader_api}/switchover"))
        .basic_auth(USER, Some(PASSWORD))
        .json(&body)
        .send()
        .await
        .expect("POST /switchover from 127.0.0.2");
    assert_eq!(response.status().as_u16(), 403);
    let response = https
        .post(format!("{leader_api}/switchover"))
        .json(&body)
        .send()
        .await
        .expect("POST /switchover without credentials");
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(cluster.dcs_leader().await.as_deref(), Some(leader.as_str()));

    let response = https
        .post(format!("{leader_api}/switchover"))
        .basic_auth(USER, Some(PASSWORD))
        .json(&body)
        .send()
        .await
        .expect("POST /switchover");
    let code = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(
        (code, text.as_str()),
        (
            200,
            format!("Successfully switched over to \"{replica}\"").as_str()
        )
    );
    wait_until(
        "the candidate to lead, seen over https",
        Duration::from_secs(60),
        || async {
            let roles = roles().await?;
            roles
                .iter()
                .any(|(n, r)| n == &replica && r == "primary")
                .then_some(())
        },
    )
    .await;
}
