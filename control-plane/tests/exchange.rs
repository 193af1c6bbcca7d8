//! The exchange endpoint Envoy's filter calls for an API token sent to a pod host
//! (`POST /api/proxy-exchange`), in-process, on SQLite and PostgreSQL: only with the renewal
//! secret; the API token checked (unknown, revoked) and its owner authorized as for
//! `/v1/capabilities`; the capability for exactly that pod and port, audited with the token, so
//! revoking the token lists it for the filter; failed tokens counted per end client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{Harness, Which};
use podgate::config::Settings;
use podgate::store::now_unix;
use podgate_protocol::config::FilterConfig;

const SECRET: &str = "renew-secret-0123456789abcdef0123456789";

async fn harness(which: Which) -> Option<Harness> {
    Harness::seeded(which, |s| Settings {
        renew_secret: Some(SECRET.into()),
        ..s
    })
    .await
}

/// `POST /api/proxy-tokens` as `session`: `(id, token)`.
async fn api_token(h: &Harness, session: &str) -> (String, String) {
    h.api_token(session, "edge").await
}

/// `POST /api/proxy-exchange?{target}` as Envoy's filter makes it, from end client `client`.
async fn exchange(
    h: &Harness,
    secret: Option<&str>,
    token: Option<&str>,
    target: &str,
    client: &str,
) -> common::Resp {
    let path = format!("/api/proxy-exchange?{target}");
    h.as_envoy(&path, secret, token, &[("podgate-client", client)])
        .await
}

const HERE: &str = "pod=myslug&port=8726";

async fn an_api_token_is_exchanged_for_exactly_its_pod_and_port(which: Which) {
    let Some(h) = harness(which).await else {
        return;
    };
    let alice = h.login("alice").await;
    let (id, token) = api_token(&h, &alice).await;
    let (_, carols) = api_token(&h, &h.login("carol").await).await;

    // Only Envoy: without the secret, or with another, nothing is read, the query included
    // (a malformed one is refused as the missing secret, not as a bad query).
    for secret in [None, Some("renew-secret-guessed-0123456789abcdef")] {
        for target in [HERE, "pod=myslug&port=8726&x=1", "pod=a&pod=b"] {
            let r = exchange(&h, secret, Some(&token), target, "198.51.100.1").await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{target}: {}", r.body);
        }
    }
    let r = exchange(
        &h,
        Some(SECRET),
        Some(&token),
        "pod=a&pod=b",
        "198.51.100.1",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("query string"), "{}", r.body);
    let r = exchange(&h, Some(SECRET), None, HERE, "198.51.100.1").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    let r = exchange(&h, Some(SECRET), Some(&token), HERE, "198.51.100.1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let cap = r.json()["token"].as_str().unwrap().to_owned();
    let config = h.admin(Method::GET, "/v1/filter-config", None).await;
    let compiled = FilterConfig::compile_json(config.body.as_bytes()).unwrap();
    let v = compiled.verifier.verify(&cap, now_unix()).unwrap();
    assert_eq!(
        (v.claims.sub.as_str(), v.claims.pod.as_str(), v.claims.port),
        ("alice", "myslug", 8726)
    );
    assert_eq!(v.sid, None, "never renewed: exchanged again");
    let r = h.admin(Method::GET, "/v1/audit?user=alice", None).await;
    assert!(r.body.contains("\"exchange\""), "{}", r.body);

    // Another user's pod, or none: 404, as `/v1/capabilities` answers.
    let r = exchange(&h, Some(SECRET), Some(&carols), HERE, "198.51.100.1").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = exchange(
        &h,
        Some(SECRET),
        Some(&token),
        "pod=nosuch&port=8726",
        "198.51.100.1",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    // A query the filter never sends: a JSON 400 naming what is wrong, nothing exchanged.
    for (target, says) in [
        ("pod=myslug&port=8726&x=1", "unknown field `x`"),
        ("pod=myslug&pod=other&port=8726", "duplicate field `pod`"),
    ] {
        let r = exchange(&h, Some(SECRET), Some(&token), target, "198.51.100.1").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{target}: {}", r.body);
        assert!(r.error().contains(says), "{target}: {}", r.body);
    }

    // Revoked: refused from the next exchange on, and its capability listed for the filter.
    let req = Request::builder()
        .method(Method::DELETE)
        .uri(format!("/api/proxy-tokens/{id}"))
        .header(header::COOKIE, &alice)
        .body(Body::empty())
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = exchange(&h, Some(SECRET), Some(&token), HERE, "198.51.100.1").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.body.contains("revoked"), "{}", r.body);
    let config = h.admin(Method::GET, "/v1/filter-config", None).await;
    assert!(config.body.contains(&v.claims.jti), "{}", config.body);
    h.finish().await;
}
on_both!(an_api_token_is_exchanged_for_exactly_its_pod_and_port);

async fn failed_tokens_are_counted_per_end_client(which: Which) {
    let Some(h) = harness(which).await else {
        return;
    };
    let (_, token) = api_token(&h, &h.login("alice").await).await;
    let wrong = format!("pg_{}_{}", "0".repeat(24), "a".repeat(52));
    let mut limited = None;
    for _ in 0..20 {
        let r = exchange(&h, Some(SECRET), Some(&wrong), HERE, "203.0.113.7").await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    let limited = limited.expect("never limited");
    assert!(limited.header("retry-after").is_some(), "{limited:?}");
    // Another client through the same Envoy is not affected.
    let r = exchange(&h, Some(SECRET), Some(&token), HERE, "203.0.113.8").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    h.finish().await;
}
on_both!(failed_tokens_are_counted_per_end_client);

/// What an API token mints ends when the token does: the filter keeps an exchanged capability
/// until the capability's own expiry, and no push follows a token's expiry.
async fn an_api_token_mints_nothing_that_outlives_it(which: Which) {
    let Some(h) = harness(which).await else {
        return;
    };
    let alice = h.login("alice").await;
    let (id, token) = api_token(&h, &alice).await;
    let config = h.admin(Method::GET, "/v1/filter-config", None).await;
    let compiled = FilterConfig::compile_json(config.body.as_bytes()).unwrap();
    let expiry = |cap: &str| {
        compiled
            .verifier
            .verify(cap, now_unix())
            .unwrap()
            .expires_at
    };

    // Far from its expiry: the capability lives its full lifetime.
    let r = exchange(&h, Some(SECRET), Some(&token), HERE, "198.51.100.1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let lifetime = i64::try_from(h.state.config().capability_lifetime).unwrap();
    let full = expiry(r.json()["token"].as_str().unwrap()) - now_unix();
    assert!((lifetime - 2..=lifetime).contains(&full), "{full} s");

    // A minute from its expiry: at the edge and from `/v1/capabilities`, a minute at most.
    let ends = now_unix() + 60;
    sqlx::query("UPDATE api_tokens SET expires_at = $1 WHERE id = $2")
        .bind(ends)
        .bind(&id)
        .execute(h.tdb.db.pool())
        .await
        .unwrap();
    let r = exchange(&h, Some(SECRET), Some(&token), HERE, "198.51.100.1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let exchanged = expiry(r.json()["token"].as_str().unwrap());
    assert!(
        (ends - 2..=ends).contains(&exchanged),
        "{exchanged} against {ends}"
    );
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/capabilities")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"pod":"myslug","port":8726}"#))
        .unwrap();
    let asked = now_unix();
    let r = h.send(req).await;
    let answered = now_unix();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let minted = expiry(r.json()["token"].as_str().unwrap());
    assert!(
        (ends - 2..=ends).contains(&minted),
        "{minted} against {ends}"
    );
    let said = chrono::DateTime::parse_from_rfc3339(r.json()["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    assert_eq!(said, minted, "the answer's expires_at is the token's exp");
    let left = r.json()["expires_in"].as_i64().unwrap();
    assert!(
        // Counted by the control plane between `asked` and `answered`; the clock may tick.
        (minted - answered..=minted - asked).contains(&left),
        "expires_in {left} against exp {minted}"
    );
    h.finish().await;
}
on_both!(an_api_token_mints_nothing_that_outlives_it);
