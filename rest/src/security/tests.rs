use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

/// A router whose only handler counts how often it ran.
fn counting_router() -> (Router, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let router = Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "done"
        }
    });
    (router, runs)
}

fn snapshot_with_members(api_urls: &[&str]) -> tokio::sync::watch::Receiver<Snapshot> {
    let members = api_urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            model::Member::new(
                format!("m{i}"),
                model::MemberData {
                    api_url: Some(url.to_string()),
                    ..Default::default()
                },
            )
        })
        .collect();
    let snapshot = Snapshot {
        cluster: Some(model::Cluster {
            members,
            ..Default::default()
        }),
        ..Default::default()
    };
    // The receiver keeps the last value after the sender is gone.
    tokio::sync::watch::channel(snapshot).1
}

fn security(settings: SecuritySettings, members: &[&str]) -> Arc<Security> {
    Arc::new(Security::new(&settings, snapshot_with_members(members)).expect("valid settings"))
}

fn with_auth() -> SecuritySettings {
    SecuritySettings {
        authentication: Some(("admin".into(), "s3cret".into())),
        ..Default::default()
    }
}

async fn call(
    security: Arc<Security>,
    method: Method,
    path: &str,
    peer: &str,
    authorization: Option<&str>,
) -> (StatusCode, Option<String>, String, usize) {
    let (router, runs) = counting_router();
    let app = guard(router, security);
    let mut request = Request::builder().method(method).uri(path);
    if let Some(a) = authorization {
        request = request.header(header::AUTHORIZATION, a);
    }
    let mut request = request.body(Body::empty()).expect("request");
    let peer: IpAddr = peer.parse().expect("peer ip");
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(peer, 40000)));
    let response = app.oneshot(request).await.expect("infallible");
    let status = response.status();
    let www = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().expect("ascii").to_string());
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        www,
        String::from_utf8_lossy(&body).into_owned(),
        runs.load(Ordering::SeqCst),
    )
}

const GOOD: &str = "Basic YWRtaW46czNjcmV0"; // admin:s3cret

#[tokio::test]
async fn unsafe_methods_need_credentials() {
    let sec = security(with_auth(), &[]);
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let (code, www, body, runs) =
            call(sec.clone(), method.clone(), "/reload", "10.1.1.1", None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{method}");
        assert_eq!(www.as_deref(), Some("Basic realm=\"Patroni\""));
        assert_eq!(body, "no auth header received");
        assert_eq!(runs, 0, "{method} must not reach the handler");
    }
}

#[tokio::test]
async fn wrong_credentials_are_refused() {
    let sec = security(with_auth(), &[]);
    for auth in [
        "Basic YWRtaW46d3Jvbmc=", // admin:wrong
        "Basic YWRtaW46czNjcmV0eA==",
        "Bearer YWRtaW46czNjcmV0",
        "basic YWRtaW46czNjcmV0",
        "Basic ",
    ] {
        let (code, www, body, runs) = call(
            sec.clone(),
            Method::POST,
            "/restart",
            "10.1.1.1",
            Some(auth),
        )
        .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{auth}");
        assert!(www.is_some());
        assert_eq!(body, "not authenticated");
        assert_eq!(runs, 0);
    }
    let (code, _, body, runs) = call(sec, Method::POST, "/restart", "10.1.1.1", Some(GOOD)).await;
    assert_eq!((code, body.as_str(), runs), (StatusCode::OK, "done", 1));
}

#[tokio::test]
async fn reads_stay_open() {
    let sec = security(
        SecuritySettings {
            allowlist: vec!["192.0.2.0/24".into()],
            ..with_auth()
        },
        &[],
    );
    for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
        let (code, _, _, runs) =
            call(sec.clone(), method.clone(), "/patroni", "10.9.9.9", None).await;
        assert_eq!((code, runs), (StatusCode::OK, 1), "{method}");
    }
}

#[tokio::test]
async fn without_settings_everything_passes() {
    let sec = security(SecuritySettings::default(), &[]);
    let (code, _, _, runs) = call(sec, Method::POST, "/reload", "10.1.1.1", None).await;
    assert_eq!((code, runs), (StatusCode::OK, 1));
}

#[tokio::test]
async fn allowlist_accepts_listed_addresses_and_networks() {
    let sec = security(
        SecuritySettings {
            allowlist: vec![
                "10.0.0.0/8".into(),
                "192.0.2.7".into(),
                "2001:db8::/32".into(),
                "localhost".into(),
            ],
            ..Default::default()
        },
        &[],
    );
    for peer in [
        "10.200.3.4",
        "192.0.2.7",
        "2001:db8::1",
        "127.0.0.1",
        "::ffff:10.0.0.1",
    ] {
        let (code, _, _, runs) = call(sec.clone(), Method::POST, "/reload", peer, None).await;
        assert_eq!((code, runs), (StatusCode::OK, 1), "{peer}");
    }
    for peer in ["11.0.0.1", "192.0.2.8", "2001:db9::1"] {
        let (code, www, body, runs) = call(sec.clone(), Method::POST, "/reload", peer, None).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{peer}");
        assert_eq!(body, "Access is denied");
        assert!(www.is_none());
        assert_eq!(runs, 0);
    }
}

#[tokio::test]
async fn allowlist_is_checked_before_credentials() {
    let sec = security(
        SecuritySettings {
            allowlist: vec!["10.0.0.0/8".into()],
            ..with_auth()
        },
        &[],
    );
    let (code, _, _, runs) =
        call(sec.clone(), Method::POST, "/reload", "11.0.0.1", Some(GOOD)).await;
    assert_eq!((code, runs), (StatusCode::FORBIDDEN, 0));
    let (code, _, _, runs) = call(sec.clone(), Method::POST, "/reload", "10.0.0.1", None).await;
    assert_eq!((code, runs), (StatusCode::UNAUTHORIZED, 0));
    let (code, _, _, runs) = call(sec, Method::POST, "/reload", "10.0.0.1", Some(GOOD)).await;
    assert_eq!((code, runs), (StatusCode::OK, 1));
}

#[tokio::test]
async fn members_are_allowed_with_allowlist_include_members() {
    let members = [
        "http://127.0.0.2:8008/patroni",
        "https://[::2]:8009/patroni",
        "not a url",
    ];
    let sec = security(
        SecuritySettings {
            allowlist_include_members: true,
            ..Default::default()
        },
        &members,
    );
    for peer in ["127.0.0.2", "::2"] {
        let (code, _, _, runs) = call(sec.clone(), Method::POST, "/switchover", peer, None).await;
        assert_eq!((code, runs), (StatusCode::OK, 1), "{peer}");
    }
    let (code, _, _, _) = call(sec.clone(), Method::POST, "/switchover", "127.0.0.3", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // As in Patroni, POST /failsafe does not consider members, so without an allowlist
    // nothing restricts it.
    let (code, _, _, _) = call(sec, Method::POST, "/failsafe", "127.0.0.3", None).await;
    assert_eq!(code, StatusCode::OK);

    let sec = security(
        SecuritySettings {
            allowlist: vec!["10.0.0.1".into()],
            allowlist_include_members: true,
            ..Default::default()
        },
        &members,
    );
    let (code, _, _, _) = call(sec.clone(), Method::POST, "/failsafe", "127.0.0.2", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _, _, _) = call(sec, Method::POST, "/reload", "127.0.0.2", None).await;
    assert_eq!(code, StatusCode::OK);
}

#[test]
fn bad_allowlist_entries_name_the_key() {
    for entry in ["10.0.0.0/33", "nonsense/8"] {
        let err = Security::new(
            &SecuritySettings {
                allowlist: vec![entry.into()],
                ..Default::default()
            },
            snapshot_with_members(&[]),
        )
        .expect_err(entry);
        assert_eq!(err.key, "restapi.allowlist", "{entry}: {err}");
    }
}

#[tokio::test]
async fn unresolvable_allowlist_names_are_skipped() {
    let sec = security(
        SecuritySettings {
            allowlist: vec!["no-such-host.invalid".into(), "10.0.0.1".into()],
            ..Default::default()
        },
        &[],
    );
    let (code, _, _, _) = call(sec.clone(), Method::POST, "/reload", "10.0.0.1", None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _, _, _) = call(sec, Method::POST, "/reload", "10.0.0.2", None).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
}

#[test]
fn missing_tls_files_name_the_key() {
    let tls = TlsSettings {
        certfile: "/nonexistent/regent.crt".into(),
        ..Default::default()
    };
    let err = server_config(&tls).expect_err("missing certfile");
    assert_eq!(err.key, "restapi.certfile");
    assert!(err.to_string().contains("/nonexistent/regent.crt"), "{err}");
}

#[test]
fn verify_client_values() {
    assert_eq!(VerifyClient::parse(None), Ok(VerifyClient::None));
    assert_eq!(
        VerifyClient::parse(Some("Required")),
        Ok(VerifyClient::Required)
    );
    assert_eq!(
        VerifyClient::parse(Some("optional")),
        Ok(VerifyClient::Optional)
    );
    assert_eq!(
        VerifyClient::parse(Some("maybe")).map_err(|e| e.key),
        Err("restapi.verify_client".to_string())
    );
}

#[test]
fn networks() {
    let net = IpNet::parse_cidr("10.1.2.3/15").expect("host bits allowed");
    assert!(net.contains("10.0.0.1".parse().expect("ip")));
    assert!(net.contains("10.1.255.255".parse().expect("ip")));
    assert!(!net.contains("10.2.0.0".parse().expect("ip")));
    assert!(!net.contains("::1".parse().expect("ip")));
    let all = IpNet::parse_cidr("0.0.0.0/0").expect("all");
    assert!(all.contains("203.0.113.9".parse().expect("ip")));
    assert!(IpNet::parse_cidr("::/129").is_err());
}

#[test]
fn member_urls() {
    assert_eq!(
        net::url_host_port("http://10.0.0.1:8008/patroni"),
        Some(("10.0.0.1".into(), 8008))
    );
    assert_eq!(
        net::url_host_port("https://db1/patroni"),
        Some(("db1".into(), 443))
    );
    assert_eq!(
        net::url_host_port("http://[::1]:8008/patroni"),
        Some(("::1".into(), 8008))
    );
    assert_eq!(net::url_host_port("db1:8008"), None);
}

#[test]
fn base64_and_comparison() {
    assert_eq!(base64_encode(b"admin:s3cret"), "YWRtaW46czNjcmV0");
    assert_eq!(base64_encode(b"a:b"), "YTpi");
    assert_eq!(base64_encode(b"ab:"), "YWI6");
    assert_eq!(base64_encode(b"a:"), "YTo=");
    assert_eq!(base64_encode(b"u:pw"), "dTpwdw==");
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(!constant_time_eq(b"", b"a"));
}

#[test]
fn ciphers_restrict_tls12_only() {
    let all = tokio_rustls::rustls::crypto::ring::default_provider().cipher_suites;
    let tls13 = all
        .iter()
        .filter(|s| matches!(s, tokio_rustls::rustls::SupportedCipherSuite::Tls13(_)))
        .count();
    assert_eq!(select_suites(&all, None).len(), all.len());
    // Keywords are not interpreted: defaults stay.
    assert_eq!(
        select_suites(&all, Some("HIGH:!aNULL:!MD5")).len(),
        all.len()
    );
    let picked = select_suites(&all, Some("ECDHE-RSA-AES128-GCM-SHA256:!aNULL"));
    assert_eq!(picked.len(), tls13 + 1);
    let picked = select_suites(
        &all,
        Some("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,ECDHE-RSA-CHACHA20-POLY1305"),
    );
    assert_eq!(picked.len(), tls13 + 2);
}

#[tokio::test]
async fn extra_headers_go_on_every_answer() {
    let sec = security(
        SecuritySettings {
            extra_headers: vec![(
                "restapi.http_extra_headers".into(),
                "X-Frame-Options".into(),
                "SAMEORIGIN".into(),
            )],
            ..with_auth()
        },
        &[],
    );
    for (method, want) in [
        (Method::GET, StatusCode::OK),
        (Method::POST, StatusCode::UNAUTHORIZED),
    ] {
        let (router, _) = counting_router();
        let mut request = Request::builder()
            .method(method)
            .uri("/patroni")
            .body(Body::empty())
            .expect("request");
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
        let response = guard(router, sec.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        assert_eq!(response.status(), want);
        assert_eq!(
            response
                .headers()
                .get("x-frame-options")
                .map(|v| v.as_bytes()),
            Some(&b"SAMEORIGIN"[..])
        );
    }
    let err = Security::new(
        &SecuritySettings {
            extra_headers: vec![(
                "restapi.https_extra_headers".into(),
                "bad header".into(),
                "x".into(),
            )],
            ..Default::default()
        },
        snapshot_with_members(&[]),
    )
    .expect_err("bad name");
    assert_eq!(err.key, "restapi.https_extra_headers");
}

#[tokio::test]
async fn reload_changes_credentials_and_allowlist_at_once() {
    let sec = security(with_auth(), &[]);
    let (code, _, _, _) = call(sec.clone(), Method::POST, "/reload", "10.0.0.1", Some(GOOD)).await;
    assert_eq!(code, StatusCode::OK);
    sec.reload(&SecuritySettings {
        authentication: Some(("admin".into(), "n3w".into())),
        allowlist: vec!["10.0.0.0/24".into()],
        ..Default::default()
    })
    .expect("reload");
    let (code, _, _, runs) =
        call(sec.clone(), Method::POST, "/reload", "10.0.0.1", Some(GOOD)).await;
    assert_eq!((code, runs), (StatusCode::UNAUTHORIZED, 0), "old password");
    let new = basic_credentials("admin", "n3w");
    let (code, _, _, _) = call(sec.clone(), Method::POST, "/reload", "10.0.0.1", Some(&new)).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _, _, _) = call(sec.clone(), Method::POST, "/reload", "10.0.1.1", Some(&new)).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // A bad reload changes nothing.
    let bad = SecuritySettings {
        allowlist: vec!["10.0.0.0/99".into()],
        ..Default::default()
    };
    assert_eq!(
        sec.reload(&bad).expect_err("bad cidr").key,
        "restapi.allowlist"
    );
    let (code, _, _, _) = call(sec, Method::POST, "/reload", "10.0.1.1", Some(&new)).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
}
