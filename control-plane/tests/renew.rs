//! The renew endpoint Envoy's filter calls (`POST /api/proxy-renew`), in-process, on SQLite and
//! PostgreSQL: only with the renewal secret; everything checked again at every renewal (the
//! capability, its session live and not signed out, the access); the fresh capability carries
//! the same session and its cookie is the callback's; the filter configuration tells the filter
//! where and when.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, Which};
use podgate::config::Settings;
use podgate::store::now_unix;
use podgate_protocol::config::{CompiledConfig, FilterConfig};
use podgate_protocol::token::Verified;

const SECRET: &str = "renew-secret-0123456789abcdef0123456789";

async fn harness(which: Which) -> Option<Harness> {
    Harness::seeded(which, |s| Settings {
        renew_secret: Some(SECRET.into()),
        ..s
    })
    .await
}

async fn filter(h: &Harness) -> (serde_json::Value, CompiledConfig) {
    let r = h.admin(Method::GET, "/v1/filter-config", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let compiled = FilterConfig::compile_json(r.body.as_bytes()).unwrap();
    (r.json(), compiled)
}

fn verify(c: &CompiledConfig, token: &str) -> Verified {
    c.verifier.verify(token, now_unix()).unwrap()
}

async fn renewal_keeps_the_session_and_needs_the_secret(which: Which) {
    let Some(h) = harness(which).await else {
        return;
    };
    let (json, c) = filter(&h).await;
    assert_eq!(json["renewal"]["secret"], SECRET);
    assert_eq!(json["renewal"]["before_secs"], 300, "a third of 900 s");
    assert!(json["renewal"]["url"]
        .as_str()
        .unwrap()
        .ends_with("/api/proxy-renew"));
    let session = h.login("alice").await;
    let cap = h.browser_capability(&session).await;
    let old = verify(&c, &cap);

    // Only Envoy: without the secret, or with another, nothing is read.
    for secret in [
        None,
        Some("renew-secret-guessed-0123456789abcdef"),
        Some(""),
    ] {
        let r = h
            .as_envoy("/api/proxy-renew", secret, Some(&cap), &[])
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{secret:?}: {}", r.body);
    }
    // With it: nothing to renew, a forgery, a ticket, a header token without a session.
    let r = h
        .as_envoy("/api/proxy-renew", Some(SECRET), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let r = h
        .as_envoy(
            "/api/proxy-renew",
            Some(SECRET),
            Some(&format!("{cap}x")),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    let r = h
        .as_envoy("/api/proxy-renew", Some(SECRET), Some(&cap), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    let fresh = body["token"].as_str().unwrap().to_owned();
    let v = verify(&c, &fresh);
    assert_eq!(v.sid, old.sid, "the same session");
    assert_eq!(
        (&v.claims.sub, &v.claims.aud, &v.claims.pod, v.claims.port),
        (
            &old.claims.sub,
            &old.claims.aud,
            &old.claims.pod,
            old.claims.port
        )
    );
    assert_ne!(v.claims.jti, old.claims.jti);
    let set_cookie = body["set_cookie"].as_str().unwrap();
    assert_eq!(
        set_cookie,
        format!("podgate_cap={fresh}; HttpOnly; SameSite=Lax; Path=/; Max-Age=43200"),
        "the callback's cookie: for the session's lifetime"
    );
    // Audited as a renewal.
    let r = h.admin(Method::GET, "/v1/audit?user=alice", None).await;
    assert!(r.body.contains("\"renew\""), "{}", r.body);
    // A renewed capability renews again while the session lives.
    let r = h
        .as_envoy("/api/proxy-renew", Some(SECRET), Some(&fresh), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // The session ends without a sign-out cut (gone from the store, as an expired one is):
    // renewal stops.
    for id_hash in h
        .state
        .db()
        .live_session_hashes("alice", now_unix())
        .await
        .unwrap()
    {
        h.state.db().delete_session(&id_hash).await.unwrap();
    }
    for token in [&cap, &fresh] {
        let r = h
            .as_envoy("/api/proxy-renew", Some(SECRET), Some(token), &[])
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    h.finish().await;
}
on_both!(renewal_keeps_the_session_and_needs_the_secret);

async fn renewal_stops_at_sign_out_and_when_access_is_lost(which: Which) {
    let Some(h) = harness(which).await else {
        return;
    };
    let alice_session = h.login("alice").await;
    let alice = h.browser_capability(&alice_session).await;
    let bob = h.browser_capability(&h.login("bob").await).await;
    for token in [&alice, &bob] {
        let r = h
            .as_envoy("/api/proxy-renew", Some(SECRET), Some(token), &[])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    // Bob leaves the team that gives him the pod.
    let r = h
        .admin(Method::DELETE, "/v1/teams/t1/members/bob", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h
        .as_envoy("/api/proxy-renew", Some(SECRET), Some(&bob), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    // Alice signs out everywhere.
    let r = h.get("/auth/logout", &[("cookie", &alice_session)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = h
        .as_envoy("/api/proxy-renew", Some(SECRET), Some(&alice), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    h.finish().await;
}
on_both!(renewal_stops_at_sign_out_and_when_access_is_lost);

/// A browser tab left idle holds its cookie (kept for the session's lifetime) with a capability
/// past its `exp`: renewed while the session lives, as the filter's configuration says
/// (`lapsed_secs`), and never once it lapsed longer ago than a session lives, or after sign-out.
async fn a_lapsed_capability_is_renewed_while_its_session_lives(which: Which) {
    let Some(h) = harness(which).await else {
        return;
    };
    let (json, c) = filter(&h).await;
    let session_lifetime = 43_200;
    assert_eq!(json["renewal"]["lapsed_secs"], session_lifetime);
    let session = h.login("alice").await;
    let live = verify(&c, &h.browser_capability(&session).await);
    let ring = h.state.keys().unwrap();
    // The same capability, as if minted long ago: it expired `ago` seconds before now.
    let lapsed = |ago: i64| {
        podgate_protocol::token::mint_in_session(
            podgate_protocol::token::TokenKind::Capability,
            &ring.capability_signer,
            &live.claims,
            live.sid.as_deref(),
            now_unix() - ago - 900,
            900,
        )
        .unwrap()
    };
    let leeway = json["leeway_secs"].as_i64().unwrap();

    let idle = lapsed(3600);
    let r = h
        .as_envoy("/api/proxy-renew", Some(SECRET), Some(&idle), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let fresh = verify(&c, r.json()["token"].as_str().unwrap());
    assert_eq!(fresh.sid, live.sid);
    assert_eq!(fresh.claims.sub, live.claims.sub);
    assert!(fresh.expires_at > now_unix() + 800);

    // Lapsed longer ago than any session lives (past the leeway too): refused.
    let too_old = lapsed(session_lifetime + leeway + 5);
    let r = h
        .as_envoy("/api/proxy-renew", Some(SECRET), Some(&too_old), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    // Signed out: the lapsed one is refused too.
    let r = h.get("/auth/logout", &[("cookie", &session)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = h
        .as_envoy("/api/proxy-renew", Some(SECRET), Some(&idle), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    h.finish().await;
}
on_both!(a_lapsed_capability_is_renewed_while_its_session_lives);

/// An issuer under a path (browsers reach the control plane under a prefix of the app's host,
/// through the app's proxy): Envoy still calls it through its cluster at the root, so the
/// renew and wake calls the filter makes name the root paths, and the control plane answers them.
async fn an_issuer_under_a_path_is_renewed_at_the_root(which: Which) {
    let Some(h) = Harness::seeded(which, |s| Settings {
        renew_secret: Some(SECRET.into()),
        issuer: Some("http://127.0.0.1:8080/podgate".into()),
        start_hook_url: Some("http://127.0.0.1:9/pods/{pod}/start".into()),
        start_hook_secret: Some("start-hook-secret-0123456789abcdef0123".into()),
        ..s
    })
    .await
    else {
        return;
    };
    let (_, c) = filter(&h).await;
    let renewal = c.renewal.as_ref().unwrap();
    assert_eq!(renewal.path, "/api/proxy-renew");
    assert_eq!(renewal.authority, "127.0.0.1:8080");
    let session = h.login("alice").await;
    let cap = h.browser_capability(&session).await;
    let r = h
        .as_envoy(&renewal.path, Some(SECRET), Some(&cap), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.json()["token"].as_str().is_some(), "{}", r.body);
    let wake = podgate_protocol::wake::call(&c, "myslug", &verify(&c, &cap)).unwrap();
    let path = wake.headers.iter().find(|(k, _)| k == ":path").unwrap();
    assert_eq!(path.1, "/api/proxy-wake");
    h.finish().await;
}
on_both!(an_issuer_under_a_path_is_renewed_at_the_root);

/// Without `--renew-secret`, the secret is derived from the key-encryption key (what every
/// replica sharing it pushes, before and after a restart); while a key rotation rolls through
/// the control planes, the one derived from a previous key is still taken, anything else not.
async fn a_derived_renew_secret_is_taken_from_the_current_and_previous_keys(which: Which) {
    use podgate::key_encryption::KeyEncryptionKey;
    const OLD_KEK: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    let Some(h) = Harness::seeded(which, |s| Settings {
        renew_secret: None,
        previous_key_encryption_key: Some(vec![OLD_KEK.into()]),
        ..s
    })
    .await
    else {
        return;
    };
    let derived = |kek: &str| {
        KeyEncryptionKey::parse(kek, "test")
            .unwrap()
            .derived_secret("renew secret")
    };
    let (json, _) = filter(&h).await;
    assert_eq!(json["renewal"]["secret"], derived(common::TEST_KEK));
    let session = h.login("alice").await;
    let cap = h.browser_capability(&session).await;
    for secret in [derived(common::TEST_KEK), derived(OLD_KEK)] {
        let r = h
            .as_envoy("/api/proxy-renew", Some(&secret), Some(&cap), &[])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let r = h
        .as_envoy("/api/proxy-renew", Some(SECRET), Some(&cap), &[])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.error().contains("key-encryption key"), "{}", r.body);
    h.finish().await;
}
on_both!(a_derived_renew_secret_is_taken_from_the_current_and_previous_keys);

/// With mutual TLS with Envoy, the public listener answers the endpoints only Envoy calls 404
/// (Envoy reaches them on the Envoy-facing listener, `podgate::envoy_app`, which needs its
/// client certificate); everything else is served as before.
#[tokio::test]
async fn with_mutual_tls_the_public_listener_refuses_what_only_envoy_calls() {
    let certs = tempfile::tempdir().unwrap();
    podgate::tls::generate_test_certs(certs.path(), &[]).unwrap();
    let file = |name: &str| Some(certs.path().join(name));
    let h = Harness::seeded(Which::Sqlite, |s| Settings {
        renew_secret: Some(SECRET.into()),
        envoy_tls_cert: file(podgate::tls::TEST_SERVER_CERT),
        envoy_tls_key: file(podgate::tls::TEST_SERVER_KEY),
        envoy_client_ca: file(podgate::tls::TEST_CA),
        ..s
    })
    .await
    .unwrap();
    for path in podgate::ENVOY_ONLY_PATHS {
        let r = h.as_envoy(path, Some(SECRET), None, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.body);
        assert!(
            r.body.contains("Envoy-facing listener"),
            "{path}: {}",
            r.body
        );
    }
    let r = h.get("/.podgate/callback?ticket=x", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(r.body.contains("Envoy-facing listener"), "{}", r.body);
    // The same request on the Envoy-facing app reaches the endpoint (no capability: 401).
    let envoy_side = podgate::envoy_app(h.state.clone());
    let req = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/proxy-renew")
        .header("podgate-renew-secret", SECRET)
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(envoy_side, req).await.unwrap();
    assert_ne!(resp.status(), StatusCode::NOT_FOUND);
    let r = h.get("/readyz", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The API reference of each listener lists what that listener answers.
    let public = h.get("/openapi.json", &[]).await.json();
    let public = public["paths"].as_object().unwrap();
    assert!(public.contains_key("/readyz"));
    for path in podgate::ENVOY_ONLY_PATHS
        .into_iter()
        .chain(["/.podgate/callback"])
    {
        assert!(!public.contains_key(path), "{path} listed");
    }
    let req = axum::http::Request::builder()
        .uri("/openapi.json")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(podgate::envoy_app(h.state.clone()), req)
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let envoy_side: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(envoy_side["paths"]
        .as_object()
        .unwrap()
        .contains_key("/api/proxy-renew"));
    h.finish().await;
}
