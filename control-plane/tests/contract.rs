//! The control plane against the filter's own decision code (`podgate_protocol::gate`) and the
//! filter configuration the control plane builds: a browser's whole loop, in-process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::Harness;
use podgate::store::now_unix;
use podgate_protocol::config::{FilterConfig, PodStatus};
use podgate_protocol::gate::{
    auth_redirect, decide, Decision, Request as GateRequest, VerifiedCache,
};
use podgate_protocol::host::PodAddr;
use serde_json::json;

async fn browser_loop(h: &Harness) {
    h.seed().await;
    let r = h.admin(Method::GET, "/v1/filter-config", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let fc: FilterConfig = serde_json::from_str(&r.body).unwrap();
    assert_eq!(fc.issuer, "http://127.0.0.1:8080");
    assert_eq!(fc.auth_url, "http://127.0.0.1:8080/api/proxy-auth");
    let entry = &fc.pods["myslug"];
    assert_eq!(entry.status, PodStatus::Running);
    assert_eq!(entry.address.as_deref(), Some("127.0.0.1:30001"));
    assert!(fc.keys.keys.iter().all(|k| k.kid.starts_with("cap-")));
    let compiled = fc.compile().unwrap();
    let mut cache = VerifiedCache::new();
    let host = "localhost-8726-pod-myslug.localhost:10000";

    // 1. The filter sends a cookieless page load to the auth endpoint.
    let page = GateRequest {
        authority: host,
        path: "/app?x=1",
        method: "GET",
        accept: Some("text/html"),
        ..GateRequest::default()
    };
    assert!(matches!(
        decide(&compiled, &mut cache, &page, now_unix()),
        Decision::Deny(_)
    ));
    let addr = PodAddr {
        pod: "myslug".into(),
        port: 8726,
    };
    let auth = auth_redirect(&compiled, &addr, "/app?x=1");
    let path = auth.strip_prefix("http://127.0.0.1:8080").unwrap();

    // 2. The control plane (signed in) redirects to the callback on the pod host.
    let cookie = h.login("alice").await;
    let r = h
        .get(path, &[("cookie", &cookie), ("accept", "text/html")])
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let loc = r.header("location").unwrap().to_owned();
    let cb_path = loc.strip_prefix(&format!("http://{host}")).unwrap();

    // 3. The filter routes /.podgate/ to the control plane without a token.
    let reserved = GateRequest {
        authority: host,
        path: cb_path,
        method: "GET",
        ..GateRequest::default()
    };
    match decide(&compiled, &mut cache, &reserved, now_unix()) {
        Decision::Forward(f) => assert!(f.user.is_none()),
        other => panic!("callback not forwarded: {other:?}"),
    }
    let r = h
        .send(
            Request::builder()
                .uri(cb_path)
                .header(header::HOST, host)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(r.header("location"), Some("/app?x=1"));
    let cap_cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    // 4. With the cookie, the filter forwards as alice.
    let with_cookie = GateRequest {
        cookies: vec![&cap_cookie],
        ..page.clone()
    };
    match decide(&compiled, &mut cache, &with_cookie, now_unix()) {
        Decision::Forward(f) => {
            assert_eq!(f.user.as_deref(), Some("alice"));
            assert!(f.expires_at.unwrap() > now_unix());
        }
        other => panic!("not forwarded: {other:?}"),
    }
    // The same cookie on a sibling port or pod is refused.
    for other in [
        "localhost-8727-pod-myslug.localhost:10000",
        "localhost-8726-pod-other.localhost:10000",
    ] {
        let req = GateRequest {
            authority: other,
            ..with_cookie.clone()
        };
        assert!(
            matches!(
                decide(&compiled, &mut cache, &req, now_unix()),
                Decision::Deny(_)
            ),
            "{other}"
        );
    }

    // 5. A script's capability is accepted as a bearer token by the filter.
    let r = h
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/capabilities")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::COOKIE, &cookie)
                .body(Body::from(
                    json!({"pod": "myslug", "port": 8726}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    let bearer = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    let script = GateRequest {
        authority: host,
        path: "/api",
        method: "GET",
        authorizations: vec![&bearer],
        ..GateRequest::default()
    };
    assert!(matches!(
        decide(&compiled, &mut cache, &script, now_unix()),
        Decision::Forward(_)
    ));

    // 6. A stopped pod is in the directory with its status.
    h.admin(
        Method::PUT,
        "/v1/pods/myslug/status",
        Some(json!({"status": "stopped"})),
    )
    .await;
    let fc: FilterConfig =
        serde_json::from_str(&h.admin(Method::GET, "/v1/filter-config", None).await.body).unwrap();
    assert_eq!(fc.pods["myslug"].status, PodStatus::Stopped);
}
both!(browser_loop_through_the_filter_decision, browser_loop);

#[test]
fn ipv6_server_addresses_are_bracketed() {
    assert_eq!(
        podgate::filter_config::upstream_address("::1", 80),
        "[::1]:80"
    );
    assert_eq!(
        podgate::filter_config::upstream_address("10.0.0.1", 80),
        "10.0.0.1:80"
    );
}
