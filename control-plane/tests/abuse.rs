//! Holding the line: per-client rate limits on every endpoint that takes credentials, bounded
//! request sizes, and the security headers of every response, in-process on SQLite and
//! PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use common::{Harness, Resp, Which, ADMIN};
use podgate::config::limits::{
    Rate, DEFAULT_ADMIN_FAILURES, DEFAULT_API_TOKEN_FAILURES, DEFAULT_CALLBACK_FAILURES,
    DEFAULT_CAPABILITY_FAILURES, DEFAULT_MAX_BODY_BYTES, DEFAULT_PROXY_AUTH,
};
use podgate::config::Settings;
use podgate::http::security_headers::{API_CSP, HTML_CSP};
use serde_json::{json, Value};

const HOST: &str = "localhost-8726-pod-myslug.localhost:10000";
const PAGE: (&str, &str) = ("accept", "text/html");

/// A request from the client at `peer` (an IP; the port is irrelevant).
fn from(
    peer: &str,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Request<Body> {
    let peer: SocketAddr = match peer.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, 40000),
        Err(_) => panic!("not an IP: {peer}"),
    };
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .extension(ConnectInfo(peer));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

async fn proxy_auth(h: &Harness, peer: &str, cookie: Option<&str>) -> Resp {
    let mut headers = vec![PAGE];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    h.send(from(
        peer,
        Method::GET,
        "/api/proxy-auth?pod=myslug&port=8726&next=%2Fapp",
        &headers,
        None,
    ))
    .await
}

/// A fresh login ticket for alice (asked for from its own address, so no test bucket is used).
async fn ticket(h: &Harness, alice: &str) -> String {
    let r = proxy_auth(h, "203.0.113.250", Some(alice)).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let loc = url::Url::parse(r.header("location").unwrap()).unwrap();
    loc.query_pairs()
        .find(|(k, _)| k == "ticket")
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

async fn callback(h: &Harness, peer: &str, ticket: &str) -> Resp {
    let uri = format!(
        "/.podgate/callback?ticket={}&next=%2F",
        podgate_protocol::redirect::encode_query_value(ticket)
    );
    h.send(from(peer, Method::GET, &uri, &[("host", HOST)], None))
        .await
}

async fn capability(h: &Harness, peer: &str, headers: &[(&str, &str)], pod: &str) -> Resp {
    h.send(from(
        peer,
        Method::POST,
        "/v1/capabilities",
        headers,
        Some(json!({"pod": pod, "port": 8726})),
    ))
    .await
}

async fn admin_from(h: &Harness, peer: &str, token: &str) -> Resp {
    let bearer = format!("Bearer {token}");
    h.send(from(
        peer,
        Method::GET,
        "/v1/users",
        &[("authorization", &bearer)],
        None,
    ))
    .await
}

/// What a client sees when refused: 429, a whole number of seconds to wait, the JSON error body
/// that names the problem, and the same security headers as every answer.
fn assert_limited(r: &Resp, longest_wait: u64, says: &str) {
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    let wait: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {r:?}"))
        .parse()
        .unwrap();
    assert!((1..=longest_wait).contains(&wait), "Retry-After {wait}");
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json"),
        "{r:?}"
    );
    let error = r.error();
    assert!(error.contains(says), "{error}");
    assert!(error.contains(&format!("wait {wait} s")), "{error}");
    assert_security_headers("429", r);
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

// ---------------------------------------------------------------------------------------------
// Rate limits

/// Sends `attempt(i)` (each one counted by the limit) until one is refused and returns that
/// answer. The refusal must come after exactly the burst, plus what the bucket regained while
/// the test ran (one per `60 s / per_minute`; a slow database makes that more than none).
async fn refused_after_burst<F, Fut>(rate: Rate, mut attempt: F) -> Resp
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    let start = Instant::now();
    let mut passed = 0;
    loop {
        let r = attempt(passed).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            let regained =
                (start.elapsed().as_secs_f64() * f64::from(rate.per_minute) / 60.0).ceil() as u32;
            assert!(
                passed >= rate.burst && passed <= rate.burst + regained,
                "refused after {passed}, the burst is {} (+{regained} regained)",
                rate.burst
            );
            return r;
        }
        passed += 1;
        assert!(
            passed <= rate.burst * 10 + 100,
            "never refused: {} {}",
            r.status,
            r.body
        );
    }
}

/// Every request counts at the browser's auth endpoint, signed in or not: refused after the
/// documented burst; another address is unaffected.
async fn proxy_auth_counts_every_request(which: Which) {
    let Some(owned) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let h = &owned;
    let alice = h.login("alice").await;
    let alice = alice.as_str();
    let r = refused_after_burst(DEFAULT_PROXY_AUTH, |i| async move {
        // Half not signed in (302 to the login page), half signed in (302 with a ticket).
        let cookie = (i % 2 == 1).then_some(alice);
        let r = proxy_auth(h, "192.0.2.10", cookie).await;
        if r.status != StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.status, StatusCode::FOUND, "request {i}: {}", r.body);
        }
        r
    })
    .await;
    // 120 a minute: one request back every half second.
    assert_limited(&r, 1, "too many sign-in requests");
    assert!(r.header("location").is_none());
    let r = proxy_auth(h, "192.0.2.11", Some(alice)).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert!(r
        .header("location")
        .unwrap()
        .contains("/.podgate/callback?ticket="));
    owned.finish().await;
}
on_both!(proxy_auth_counts_every_request);

/// A callback as Envoy forwards it: from Envoy's address, the client in the configured header.
fn via_envoy(client: &str, ticket: &str) -> Request<Body> {
    let uri = format!(
        "/.podgate/callback?ticket={}&next=%2F",
        podgate_protocol::redirect::encode_query_value(ticket)
    );
    from(
        "127.0.0.1",
        Method::GET,
        &uri,
        &[("host", HOST), ("x-envoy-external-address", client)],
        None,
    )
}

/// The callback counts failures only: successes in between cost nothing, failures are refused
/// after the burst, and then even a valid ticket waits (and is not spent); behind one Envoy the
/// configured client header keeps clients apart.
async fn callback_counts_failures(which: Which) {
    let Some(owned) = Harness::seeded(which, |s| Settings {
        client_ip_header: Some("x-envoy-external-address".into()),
        ..s
    })
    .await
    else {
        return;
    };
    let h = &owned;
    let alice = h.login("alice").await;
    let alice = alice.as_str();
    let client = "198.51.100.1";
    let r = refused_after_burst(DEFAULT_CALLBACK_FAILURES, |i| async move {
        if i == 5 {
            // Three good tickets in the middle: no failures, so nothing is taken.
            for _ in 0..3 {
                let t = ticket(h, alice).await;
                let r = h.send(via_envoy(client, &t)).await;
                assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
                assert!(r
                    .header("set-cookie")
                    .unwrap()
                    .starts_with("podgate_cap=ey"));
            }
        }
        let r = h.send(via_envoy(client, &format!("bad-{i}"))).await;
        if r.status != StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "failure {i}: {}", r.body);
        }
        r
    })
    .await;
    assert_limited(&r, 6, "too many failed sign-in links");
    // A valid ticket waits too, and is not consumed by the refusal.
    let t = ticket(h, alice).await;
    let r = h.send(via_envoy(client, &t)).await;
    assert_limited(&r, 6, "too many failed sign-in links");
    assert!(r.header("set-cookie").is_none());
    // Another client behind the same Envoy redeems that very ticket.
    let r = h.send(via_envoy("198.51.100.2", &t)).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    // Without the header, the TCP peer is the client.
    let r = callback(h, "192.0.2.99", "bad").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    owned.finish().await;
}
on_both!(callback_counts_failures);

/// `POST /v1/capabilities` counts refusals (401 and the uniform 404), never successes nor
/// malformed requests.
async fn capabilities_count_refusals(which: Which) {
    let Some(owned) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let h = &owned;
    let alice = h.login("alice").await;
    let carol = h.login("carol").await;
    let (alice, carol) = (alice.as_str(), carol.as_str());
    let burst = DEFAULT_CAPABILITY_FAILURES.burst;
    // Twice the burst of successes, and of malformed requests, from one address: none counts.
    for _ in 0..burst * 2 {
        let r = capability(h, "192.0.2.20", &[("cookie", alice)], "myslug").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.json()["token"].as_str().unwrap().starts_with("ey"));
        let r = capability(h, "192.0.2.20", &[("cookie", alice)], "BAD SLUG").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    // Refusals of every kind drain the bucket: unknown pod, not allowed, not signed in.
    let r = refused_after_burst(DEFAULT_CAPABILITY_FAILURES, |i| async move {
        let peer = "192.0.2.20";
        let r = match i % 3 {
            0 => capability(h, peer, &[("cookie", alice)], "nope").await,
            1 => capability(h, peer, &[("cookie", carol)], "myslug").await,
            _ => capability(h, peer, &[], "myslug").await,
        };
        assert!(
            matches!(
                r.status,
                StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
            ),
            "refusal {i}: {} {}",
            r.status,
            r.body
        );
        r
    })
    .await;
    assert_limited(&r, 3, "too many refused capability requests");
    // Now even alice's own pod waits; no token is minted.
    let r = capability(h, "192.0.2.20", &[("cookie", alice)], "myslug").await;
    assert_limited(&r, 3, "too many refused capability requests");
    assert!(!r.body.contains("\"token\""), "{}", r.body);
    let r = capability(h, "192.0.2.22", &[("cookie", alice)], "myslug").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    owned.finish().await;
}
on_both!(capabilities_count_refusals);

/// Wrong API tokens share one bucket across every endpoint that takes them.
async fn api_token_failures_are_shared_across_endpoints(which: Which) {
    let Some(owned) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let h = &owned;
    let forged = format!("Bearer pg_{}_{}", "0".repeat(24), "a".repeat(52));
    let forged = forged.as_str();
    let r = refused_after_burst(DEFAULT_API_TOKEN_FAILURES, |i| async move {
        let r = match i % 3 {
            0 => capability(h, "192.0.2.30", &[("authorization", forged)], "myslug").await,
            1 => {
                h.send(from(
                    "192.0.2.30",
                    Method::DELETE,
                    "/api/proxy-tokens/000000000000000000000000",
                    &[("authorization", forged)],
                    None,
                ))
                .await
            }
            // Listing refuses API tokens, but one is still checked first (it may revoke itself).
            _ => {
                h.send(from(
                    "192.0.2.30",
                    Method::GET,
                    "/api/proxy-tokens",
                    &[("authorization", forged)],
                    None,
                ))
                .await
            }
        };
        if r.status != StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "attempt {i}: {}",
                r.body
            );
        }
        r
    })
    .await;
    assert_limited(&r, 6, "too many failed API-token attempts");
    let r = capability(h, "192.0.2.31", &[("authorization", forged)], "myslug").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    owned.finish().await;
}
on_both!(api_token_failures_are_shared_across_endpoints);

/// Wrong admin tokens: refused after the documented burst, then even the right token waits;
/// the admin's own requests never count; another address is unaffected.
async fn admin_token_failures_are_limited(which: Which) {
    let Some(owned) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let h = &owned;
    for _ in 0..30 {
        assert_eq!(
            admin_from(h, "192.0.2.41", ADMIN).await.status,
            StatusCode::OK
        );
    }
    let wrong = "x".repeat(40);
    let wrong = wrong.as_str();
    let r = refused_after_burst(DEFAULT_ADMIN_FAILURES, |i| async move {
        let r = admin_from(h, "192.0.2.41", wrong).await;
        if r.status != StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "attempt {i}: {}",
                r.body
            );
        }
        r
    })
    .await;
    assert_limited(&r, 6, "too many requests with a wrong admin token");
    let r = admin_from(h, "192.0.2.41", ADMIN).await;
    assert_limited(&r, 6, "too many requests with a wrong admin token");
    assert_eq!(
        admin_from(h, "192.0.2.42", ADMIN).await.status,
        StatusCode::OK
    );
    // Envoy's calls are limited in a bucket of their own: an Envoy on the address a stale admin
    // script locked out still renews (401 here: nothing to renew, but answered), and Envoy's
    // wrong secrets never lock the admin out.
    let secret = h.state.config().renew_secret.clone();
    let renew = |peer: &'static str, secret: String| async move {
        h.send(from(
            peer,
            Method::POST,
            "/api/proxy-renew",
            &[("podgate-renew-secret", &secret)],
            None,
        ))
        .await
    };
    let r = renew("192.0.2.41", secret.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let r = refused_after_burst(DEFAULT_ADMIN_FAILURES, |_| {
        renew("192.0.2.43", "x".repeat(40))
    })
    .await;
    assert_limited(&r, 6, "too many renewals with a wrong secret");
    assert_eq!(
        admin_from(h, "192.0.2.43", ADMIN).await.status,
        StatusCode::OK
    );
    owned.finish().await;
}
on_both!(admin_token_failures_are_limited);

/// The limits are settings: a small burst is honoured, and IPv6 clients are one client per /64.
#[tokio::test]
async fn configured_burst_and_ipv6_prefixes() {
    let h = Harness::seeded(Which::Sqlite, |s| Settings {
        proxy_auth_burst: Some(3),
        proxy_auth_per_minute: Some(1),
        ..s
    })
    .await
    .unwrap();
    for peer in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"] {
        assert_eq!(proxy_auth(&h, peer, None).await.status, StatusCode::FOUND);
    }
    // One a minute: the wait is up to a minute.
    let r = proxy_auth(&h, "2001:db8:1:2:abcd::1", None).await;
    assert_limited(&r, 60, "too many sign-in requests");
    assert_eq!(
        proxy_auth(&h, "2001:db8:1:3::1", None).await.status,
        StatusCode::FOUND
    );
    assert_eq!(
        proxy_auth(&h, "192.0.2.50", None).await.status,
        StatusCode::FOUND
    );
    h.finish().await;
}

/// Under a flood of distinct addresses each limit holds at most `--rate-limit-clients` buckets;
/// a limited client stays limited while the map has room.
#[tokio::test]
async fn limiter_memory_is_bounded_under_many_clients() {
    let cap = 50;
    let h = Harness::seeded(Which::Sqlite, |s| Settings {
        proxy_auth_burst: Some(2),
        proxy_auth_per_minute: Some(1),
        rate_limit_clients: Some(cap),
        ..s
    })
    .await
    .unwrap();
    let limits = h.state.limits();
    for _ in 0..2 {
        assert_eq!(
            proxy_auth(&h, "192.0.2.60", None).await.status,
            StatusCode::FOUND
        );
    }
    for i in 0..30 {
        let peer = format!("10.0.0.{i}");
        assert_eq!(proxy_auth(&h, &peer, None).await.status, StatusCode::FOUND);
    }
    assert_eq!(limits.proxy_auth.tracked_clients(), 31);
    assert_limited(
        &proxy_auth(&h, "192.0.2.60", None).await,
        60,
        "too many sign-in requests",
    );
    // 2000 more clients, IPv4 and IPv6 from distinct /64s, on three limits at once.
    for i in 0..2000u32 {
        let peer = if i % 2 == 0 {
            format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)
        } else {
            format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff)
        };
        assert_eq!(proxy_auth(&h, &peer, None).await.status, StatusCode::FOUND);
        if i % 4 == 1 {
            let r = capability(&h, &peer, &[], "nope").await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            let r = admin_from(&h, &peer, "wrong").await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        }
        assert!(limits.proxy_auth.tracked_clients() <= cap);
    }
    assert!(limits.proxy_auth.tracked_clients() <= cap);
    assert!(
        limits.proxy_auth.tracked_clients() >= cap * 8 / 10,
        "evicts the oldest, not everyone"
    );
    assert!(limits.capability_failures.tracked_clients() <= cap);
    assert!(limits.admin_failures.tracked_clients() <= cap);
    // The newest clients are still tracked: the last one has spent one of its two.
    let last = "2001:db8:0:7cf::1";
    assert_eq!(proxy_auth(&h, last, None).await.status, StatusCode::FOUND);
    assert_limited(
        &proxy_auth(&h, last, None).await,
        60,
        "too many sign-in requests",
    );
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Bounded sizes

/// A body of `len` bytes that is valid JSON for `field` (so only its size can be wrong).
fn padded(mut v: Value, field: &str, len: usize) -> String {
    v[field] = Value::String("a".repeat(len));
    v.to_string()
}

fn raw(
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: String,
    declare_length: bool,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if declare_length {
        b = b.header(header::CONTENT_LENGTH, body.len());
    }
    b.body(Body::from(body)).unwrap()
}

fn assert_too_large(r: &Resp) {
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    let error = r.error();
    assert!(
        error.contains("request body is larger than") && error.contains("smaller JSON body"),
        "{error}"
    );
    assert_security_headers("413", r);
}

/// Oversized bodies are 413 with a JSON body, declared (`Content-Length`) or not, on the admin
/// API, API-token creation and minting; nothing reaches the database.
async fn oversized_bodies_are_refused_and_write_nothing(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let alice = h.login("alice").await;
    let admin = format!("Bearer {ADMIN}");
    let over = DEFAULT_MAX_BODY_BYTES + 1;
    let users_before = h.admin(Method::GET, "/v1/users", None).await.json();
    let audit_before = h.admin(Method::GET, "/v1/audit", None).await.json();
    for declare in [true, false] {
        let body = padded(
            json!({"id": "mallory", "email": "m@example.dev"}),
            "name",
            over,
        );
        let r = h
            .send(raw(
                Method::POST,
                "/v1/users",
                &[("authorization", &admin)],
                body,
                declare,
            ))
            .await;
        assert_too_large(&r);
        if declare {
            // Refused on the declared length, before anything reads the body.
            let says = format!("larger than {DEFAULT_MAX_BODY_BYTES} bytes");
            assert!(r.error().contains(&says), "{}", r.body);
        }
        let body = padded(json!({"name": "cli"}), "prefix", over);
        let r = h
            .send(raw(
                Method::POST,
                "/api/proxy-tokens",
                &[("cookie", &alice)],
                body,
                declare,
            ))
            .await;
        assert_too_large(&r);
        let body = padded(json!({"port": 8726}), "pod", over);
        let r = h
            .send(raw(
                Method::POST,
                "/v1/capabilities",
                &[("cookie", &alice)],
                body,
                declare,
            ))
            .await;
        assert_too_large(&r);
    }
    // A declared oversized body is refused before authentication even looks at the request.
    let body = padded(json!({"id": "mallory"}), "name", over);
    let r = h
        .send(raw(Method::POST, "/v1/users", &[], body, true))
        .await;
    assert_too_large(&r);
    // Just under the limit is read and judged on its content (a 400, not a 413).
    let body = padded(
        json!({"id": "mallory"}),
        "name",
        DEFAULT_MAX_BODY_BYTES - 100,
    );
    let r = h
        .send(raw(
            Method::POST,
            "/v1/users",
            &[("authorization", &admin)],
            body,
            true,
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(
        h.admin(Method::GET, "/v1/users", None).await.json(),
        users_before
    );
    assert!(h.admin(Method::GET, "/v1/users/mallory", None).await.status == StatusCode::NOT_FOUND);
    assert_eq!(
        h.admin(Method::GET, "/v1/audit", None).await.json(),
        audit_before
    );
    let tokens = h
        .get("/api/proxy-tokens", &[("cookie", &alice)])
        .await
        .json();
    assert_eq!(tokens["tokens"], json!([]));
    h.finish().await;
}
on_both!(oversized_bodies_are_refused_and_write_nothing);

/// Headers, paths, queries and `next` have bounds, each answered with what to change.
#[tokio::test]
async fn oversized_headers_paths_and_parameters() {
    let h = Harness::seeded(Which::Sqlite, |s| s).await.unwrap();
    let big_cookie = format!("junk={}", "a".repeat(40 * 1024));
    let r = h.get("/healthz", &[("cookie", &big_cookie)]).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(r.error().contains("smaller cookies"), "{}", r.body);
    assert_security_headers("431", &r);
    let mut b = Request::builder().uri("/healthz");
    for i in 0..120 {
        b = b.header(format!("x-h{i}"), "1");
    }
    let r = h.send(b.body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(r.error().contains("at most 100 headers"), "{}", r.body);
    // Just under: fine.
    let cookie = format!("junk={}", "a".repeat(16 * 1024));
    assert_eq!(
        h.get("/healthz", &[("cookie", &cookie)]).await.status,
        StatusCode::OK
    );

    let r = h.get(&format!("/{}", "a".repeat(3000)), &[]).await;
    assert_eq!(r.status, StatusCode::URI_TOO_LONG);
    assert!(r.error().contains("path is longer than"), "{}", r.body);
    let r = h
        .get(
            &format!(
                "/api/proxy-auth?pod=myslug&port=8726&x={}",
                "a".repeat(9000)
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::URI_TOO_LONG);
    assert!(r.error().contains("query string is longer"), "{}", r.body);
    assert_security_headers("414", &r);
    let long_next = format!("/{}", "a".repeat(3000));
    let r = h
        .get(
            &format!("/api/proxy-auth?pod=myslug&port=8726&next={long_next}"),
            &[PAGE],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.error().contains("`next` is 3001 bytes, longer than 2048"),
        "{}",
        r.body
    );
    let r = h
        .get(
            &format!("/api/proxy-auth?pod={}&port=8726", "a".repeat(64)),
            &[PAGE],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("`pod`"), "{}", r.body);
    // A Host that is too long is not a pod host: the failure page, cookie cleared.
    let uri = "/.podgate/callback?ticket=x&next=%2F";
    let long_host = format!("{}.localhost", "a".repeat(300));
    let r = h
        .send(
            Request::builder()
                .uri(uri)
                .header("host", long_host)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Security headers

fn assert_security_headers(what: &str, r: &Resp) {
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}: {r:?}");
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}: {r:?}"
    );
    assert_eq!(
        r.header("referrer-policy"),
        Some("no-referrer"),
        "{what}: {r:?}"
    );
    let html = r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html"));
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert_eq!(csp, if html { HTML_CSP } else { API_CSP }, "{what}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(csp.starts_with("default-src 'none'"), "{what}: {csp}");
    assert_eq!(
        r.headers.get_all("content-security-policy").iter().count(),
        1,
        "{what}: one policy, not two"
    );
}

/// Every route the control plane serves, with and without credentials, its error paths, the
/// fallbacks and the refusals of the layers: all carry the security headers; all but the JWKS
/// are `no-store`.
async fn every_response_carries_the_security_headers(which: Which) {
    let Some(h) = Harness::seeded(which, |s| Settings {
        cors_origins: Some(vec!["https://app.example.dev".into()]),
        ..s
    })
    .await
    else {
        return;
    };
    let alice = h.login("alice").await;
    let admin = format!("Bearer {ADMIN}");
    let mut seen: Vec<(String, Resp)> = Vec::new();
    let mut send = |label: String, r: Resp| seen.push((label, r));

    // Public and flow endpoints.
    for (path, headers) in [
        ("/healthz", vec![]),
        ("/readyz", vec![]),
        ("/.well-known/jwks.json", vec![]),
        ("/dev/login?user=dave", vec![]),
        ("/dev/login", vec![]),
        ("/dev/logout", vec![("cookie", alice.as_str())]),
        ("/api/proxy-auth?pod=myslug&port=8726", vec![PAGE]),
        ("/api/proxy-auth?pod=myslug&port=8726", vec![]),
        ("/api/proxy-auth?pod=Bad&port=8726", vec![PAGE]),
        (
            "/api/proxy-auth?pod=nope&port=8726",
            vec![("cookie", alice.as_str())],
        ),
        ("/api/proxy-tokens", vec![]),
        ("/p/not-a-config", vec![]),
        ("/api/download/install.sh", vec![]),
        ("/api/download/install.sh?init_url=javascript:x", vec![]),
        ("/no/such/endpoint", vec![]),
        ("/v1/capabilities", vec![]),
    ] {
        let r = h.get(path, &headers).await;
        send(format!("GET {path} {headers:?} -> {}", r.status), r);
    }
    // alice is logged out by /dev/logout above: sign in again.
    let alice = h.login("alice").await;

    // The whole login, and minting, and API tokens: every token-carrying answer.
    let r = proxy_auth(&h, "192.0.2.70", Some(&alice)).await;
    assert!(r.header("location").unwrap().contains("ticket="));
    send("proxy-auth ticket redirect".into(), r);
    let t = ticket(&h, &alice).await;
    let r = callback(&h, "192.0.2.70", &t).await;
    assert!(r
        .header("set-cookie")
        .unwrap()
        .starts_with("podgate_cap=ey"));
    send("callback success".into(), r);
    let r = callback(&h, "192.0.2.70", &t).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    send("callback replay (HTML page)".into(), r);
    let r = capability(&h, "192.0.2.70", &[("cookie", &alice)], "myslug").await;
    assert_eq!(r.status, StatusCode::OK);
    send("capability minted".into(), r);
    let r = capability(&h, "192.0.2.70", &[], "myslug").await;
    send("capability refused".into(), r);
    let r = h
        .send(from(
            "192.0.2.70",
            Method::POST,
            "/api/proxy-tokens",
            &[("cookie", &alice)],
            Some(json!({"name": "cli"})),
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let created = r.json();
    send("API token created".into(), r);
    let r = h.get("/api/proxy-tokens", &[("cookie", &alice)]).await;
    send("API tokens listed".into(), r);
    let init = created["init_url"].as_str().unwrap();
    let path = init.strip_prefix("http://127.0.0.1:8080").unwrap();
    let r = h.get(path, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    send("setup page".into(), r);
    let r = h
        .get(
            &format!(
                "/api/download/install.sh?init_url={}",
                podgate_protocol::redirect::encode_query_value(init)
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    send("install script".into(), r);
    let id = created["id"].as_str().unwrap();
    let r = h
        .send(from(
            "192.0.2.70",
            Method::DELETE,
            &format!("/api/proxy-tokens/{id}"),
            &[("cookie", &alice)],
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    send("API token revoked".into(), r);

    // CORS preflights, allowed and refused; a wrong method.
    for origin in ["https://app.example.dev", "https://evil.example"] {
        let r = h
            .send(
                Request::builder()
                    .method(Method::OPTIONS)
                    .uri("/v1/capabilities")
                    .header("origin", origin)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        send(format!("preflight from {origin} -> {}", r.status), r);
    }
    let r = h
        .send(
            Request::builder()
                .method(Method::PUT)
                .uri("/healthz")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    send("405".into(), r);

    // Every admin route, with the admin token and without.
    let admin_routes: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/v1/users", None),
        (Method::POST, "/v1/users", Some(json!({"id": "erin"}))),
        (Method::GET, "/v1/users/erin", None),
        (
            Method::PATCH,
            "/v1/users/erin",
            Some(json!({"name": "Erin"})),
        ),
        (Method::GET, "/v1/teams", None),
        (
            Method::POST,
            "/v1/teams",
            Some(json!({"id": "t2", "name": "Two"})),
        ),
        (Method::GET, "/v1/teams/t2", None),
        (Method::PATCH, "/v1/teams/t2", Some(json!({"name": "Deux"}))),
        (Method::GET, "/v1/teams/t2/members", None),
        (
            Method::POST,
            "/v1/teams/t2/members",
            Some(json!({"user_id": "erin"})),
        ),
        (Method::GET, "/v1/teams/t2/members/erin", None),
        (
            Method::PUT,
            "/v1/teams/t2/members/erin",
            Some(json!({"role": "admin"})),
        ),
        (Method::DELETE, "/v1/teams/t2/members/erin", None),
        (Method::GET, "/v1/servers", None),
        (
            Method::POST,
            "/v1/servers",
            Some(json!({"id": "s2", "address": "127.0.0.2"})),
        ),
        (Method::GET, "/v1/servers/s2", None),
        (
            Method::PATCH,
            "/v1/servers/s2",
            Some(json!({"name": "two"})),
        ),
        (Method::GET, "/v1/pods", None),
        (
            Method::POST,
            "/v1/pods",
            Some(json!({"slug": "p2", "owner_id": "erin", "server_id": "s2", "nginx_port": 30002})),
        ),
        (Method::GET, "/v1/pods/p2", None),
        (
            Method::PATCH,
            "/v1/pods/p2",
            Some(json!({"nginx_port": 30003})),
        ),
        (
            Method::PUT,
            "/v1/pods/p2/status",
            Some(json!({"status": "running"})),
        ),
        (Method::GET, "/v1/pods/p2/ports", None),
        (
            Method::PUT,
            "/v1/pods/p2/ports/8080",
            Some(json!({"sharing": "public"})),
        ),
        (Method::GET, "/v1/pods/p2/ports/8080", None),
        (Method::DELETE, "/v1/pods/p2/ports/8080", None),
        (Method::DELETE, "/v1/pods/p2", None),
        (Method::DELETE, "/v1/servers/s2", None),
        (Method::DELETE, "/v1/teams/t2", None),
        (Method::DELETE, "/v1/users/erin", None),
        (Method::GET, "/v1/keys", None),
        (Method::POST, "/v1/keys/rotate", None),
        (Method::GET, "/v1/audit", None),
        (Method::GET, "/v1/filter-config", None),
        (Method::GET, "/v1/users/nobody", None),
        (Method::POST, "/v1/users", Some(json!({"id": "bad id"}))),
    ];
    for (i, (method, path, body)) in admin_routes.into_iter().enumerate() {
        let r = h.admin(method.clone(), path, body.clone()).await;
        assert!(
            r.status != StatusCode::METHOD_NOT_ALLOWED && !r.body.contains("no such endpoint"),
            "{method} {path} is not a route: {} {}",
            r.status,
            r.body
        );
        send(format!("admin {method} {path} -> {}", r.status), r);
        // One address each: wrong admin tokens are limited per address.
        let r = h
            .send(from(
                &format!("10.9.0.{i}"),
                method.clone(),
                path,
                &[],
                body,
            ))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        send(format!("no token {method} {path}"), r);
    }
    let r = h
        .send(raw(
            Method::POST,
            "/v1/users",
            &[("authorization", &admin)],
            "{".into(),
            true,
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    send("malformed JSON".into(), r);

    assert!(seen.len() > 100, "{}", seen.len());
    for (label, r) in &seen {
        assert_security_headers(label, r);
        if label.starts_with("GET /.well-known/jwks.json") {
            // Public keys, deliberately cacheable (security_headers.rs says why).
            assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
        } else {
            assert_eq!(
                r.header("cache-control"),
                Some("no-store"),
                "{label}: {r:?}"
            );
        }
    }
    // The HTML pages got the page policy, the rest the API one (checked above per type).
    assert!(seen
        .iter()
        .any(|(l, r)| l == "setup page" && r.header("content-security-policy") == Some(HTML_CSP)));
    assert!(seen.iter().any(|(l, r)| l == "callback replay (HTML page)"
        && r.header("content-security-policy") == Some(HTML_CSP)));
    h.finish().await;
}
on_both!(every_response_carries_the_security_headers);

/// Each answer that carries or sets a credential is `no-store` and leaks no referrer, even where
/// the handler itself would have allowed caching.
async fn credential_answers_are_no_store(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let login = h.get("/dev/login?user=alice", &[]).await;
    assert!(login
        .header("set-cookie")
        .unwrap()
        .starts_with("podgate_session="));
    let alice = h.login("alice").await;
    let redirect = proxy_auth(&h, "192.0.2.80", Some(&alice)).await;
    let t = ticket(&h, &alice).await;
    let cb = callback(&h, "192.0.2.80", &t).await;
    let minted = capability(&h, "192.0.2.80", &[("cookie", &alice)], "myslug").await;
    let created = h
        .send(from(
            "192.0.2.80",
            Method::POST,
            "/api/proxy-tokens",
            &[("cookie", &alice)],
            Some(json!({"name": "cli"})),
        ))
        .await;
    let token = created.json()["token"].as_str().unwrap().to_owned();
    let by_token = capability(
        &h,
        "192.0.2.80",
        &[("authorization", &format!("Bearer {token}"))],
        "myslug",
    )
    .await;
    for (what, r, carries) in [
        ("dev login", &login, "set-cookie"),
        ("proxy-auth", &redirect, "location"),
        ("callback", &cb, "set-cookie"),
        ("capability", &minted, "body"),
        ("API token", &created, "body"),
        ("capability by API token", &by_token, "body"),
    ] {
        assert!(
            r.status.is_success() || r.status.is_redirection(),
            "{what}: {r:?}"
        );
        match carries {
            "body" => assert!(r.body.contains("\"token\":\""), "{what}"),
            name => assert!(r.header(name).is_some(), "{what}"),
        }
        assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
    }
    h.finish().await;
}
on_both!(credential_answers_are_no_store);

/// At most 100 live API tokens per user, also when creations race: with 99 live, eight at once
/// give exactly one 201 and seven 409s naming the limit, and 100 tokens are live.
async fn the_token_limit_holds_when_creations_race(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let alice = h.login("alice").await;
    let now = podgate::store::now_unix();
    let mut change = h.tdb.db.change().await.unwrap();
    for i in 0..99 {
        change
            .create_api_token(&podgate::store::ApiTokenRow {
                id: format!("{i:024x}"),
                user_id: "alice".into(),
                name: format!("t{i}"),
                token_hash: format!("{i:064x}"),
                prefix: None,
                created_via: "test".into(),
                created_at: now,
                expires_at: now + 86_400,
                last_used_at: None,
                revoked_at: None,
            })
            .await
            .unwrap();
    }
    change.commit().await.unwrap();
    let create = |n: usize| {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/proxy-tokens")
            .header(header::COOKIE, &alice)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({ "name": format!("race {n}") }).to_string(),
            ))
            .unwrap();
        h.send(req)
    };
    let (a, b, c, d) = tokio::join!(create(0), create(1), create(2), create(3));
    let (e, f, g, i) = tokio::join!(create(4), create(5), create(6), create(7));
    let answers = [a, b, c, d, e, f, g, i];
    let created = answers
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(
        created,
        1,
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in answers.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
        assert!(r.error().contains("the most allowed"), "{}", r.body);
    }
    let listed = h
        .get("/api/proxy-tokens", &[("cookie", &alice)])
        .await
        .json();
    let live = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["revoked_at"].is_null())
        .count();
    assert_eq!(live, 100, "{listed}");
    h.finish().await;
}
on_both!(the_token_limit_holds_when_creations_race);
