//! podgate's ID-token verifier against a real, certified OpenID provider (npm `oidc-provider`,
//! `tests/oidc-provider/provider.mjs`): real ID tokens and RFC 9068 access tokens from a real
//! sign-in (authorization code + PKCE through its dev login), several clients of one issuer,
//! claims of the wrong JSON type, the provider rotating its keys and going down.
//!
//! Needs Node.js and `bash scripts/oidc-provider-deps.sh`; skips loudly without them, fails under
//! `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use common::oidc_provider::{
    peek, OidcProvider, SignIn, API_RESOURCE, CLI, OTHER, SELF_RESOURCE, WEB,
};
use common::{Harness, Resp, Which};
use http_body_util::BodyExt;
use jwt_compact::alg::{Rsa, RsaPrivateKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use podgate::config::idp::{ClientIds, OidcSettings};
use podgate::config::Settings;
use serde_json::{json, Value};
use tower::ServiceExt;

fn provider_settings(op: &OidcProvider, audience: ClientIds, min_refresh: u64) -> OidcSettings {
    OidcSettings {
        name: "op".into(),
        issuer: op.issuer.clone(),
        audience,
        min_refresh_secs: Some(min_refresh),
        ..OidcSettings::default()
    }
}

fn both_clients() -> ClientIds {
    ClientIds(vec![WEB.0.to_owned(), CLI.to_owned()])
}

async fn podgate(oidc: OidcSettings) -> Harness {
    Harness::seeded(Which::Sqlite, |s| Settings {
        oidc: vec![oidc],
        capability_failures_burst: Some(1000),
        ..s
    })
    .await
    .unwrap()
}

fn capability_request(token: &str) -> Request<Body> {
    let peer: SocketAddr = "192.0.2.1:5555".parse().unwrap();
    Request::builder()
        .method(Method::POST)
        .uri("/v1/capabilities")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .extension(ConnectInfo(peer))
        .body(Body::from(
            json!({"pod": "myslug", "port": 8726}).to_string(),
        ))
        .unwrap()
}

/// `POST /v1/capabilities` for alice's pod with `token` as the bearer.
async fn capability(h: &Harness, token: &str) -> Resp {
    h.send(capability_request(token)).await
}

/// Asserts a refusal: 401, the reason contains `needle`, and no capability in the body.
fn assert_refused(r: &Resp, needle: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{needle}: {}", r.body);
    assert!(
        r.error().contains(needle),
        "{needle:?} not in {:?}",
        r.error()
    );
    assert!(r.json().get("token").is_none(), "{}", r.body);
}

fn assert_minted(r: &Resp) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["token"].as_str().unwrap().split('.').count(), 3);
}

async fn user(h: &Harness, id: &str) -> Option<Value> {
    let r = h.admin(Method::GET, &format!("/v1/users/{id}"), None).await;
    (r.status == StatusCode::OK).then(|| r.json())
}

#[tokio::test]
async fn real_provider_id_tokens_sign_in_and_its_access_tokens_do_not() {
    let Some(op) = OidcProvider::start(json!({})).await else {
        return;
    };
    let h = podgate(provider_settings(&op, both_clients(), 5)).await;

    // One real sign-in of alice through podgate's web client, asking for a JWT access token whose
    // audience is that same client id (the resource names it).
    let mut req = SignIn::new(WEB.0, Some(WEB.1), "alice");
    req.resource = Some(SELF_RESOURCE);
    let tokens = op.sign_in(&req).await;
    let id_token = tokens["id_token"].as_str().unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    let (at_header, at_claims) = peek(access);
    // What makes the access token dangerous: same issuer, same keys, a trusted `aud`, alice's `sub`.
    assert_eq!(at_header["typ"], "at+jwt");
    assert_eq!(at_claims["aud"], WEB.0);
    assert_eq!(at_claims["sub"], "alice");
    assert_eq!(at_claims["iss"], op.issuer.as_str());
    assert_eq!(at_header["kid"], peek(id_token).0["kid"]);

    assert_minted(&capability(&h, id_token).await);
    assert_refused(&capability(&h, access).await, "access token");

    // The access token of a sign-in alone creates nobody.
    let mut req = SignIn::new(WEB.0, Some(WEB.1), "eve");
    req.resource = Some(SELF_RESOURCE);
    let eve = op.sign_in(&req).await;
    assert_refused(
        &capability(&h, eve["access_token"].as_str().unwrap()).await,
        "access token",
    );
    assert!(
        user(&h, "eve").await.is_none(),
        "an access token created a user"
    );
    assert!(h.tdb.db.user_identities("eve").await.unwrap().is_empty());

    // Access tokens of other grants and resources: client_credentials for podgate's own client id
    // (sub = the client), and a token for an API of the same issuer.
    let cc = op
        .client_credentials(WEB, Some(SELF_RESOURCE), Some("self:read"))
        .await;
    let cc = cc["access_token"].as_str().unwrap();
    assert_eq!(peek(cc).1["aud"], WEB.0);
    assert_refused(&capability(&h, cc).await, "access token");
    let mut req = SignIn::new(CLI, None, "alice");
    req.resource = Some(API_RESOURCE);
    let api = op.sign_in(&req).await;
    let api_at = api["access_token"].as_str().unwrap();
    assert_eq!(peek(api_at).1["aud"], API_RESOURCE);
    assert_refused(&capability(&h, api_at).await, "access token");
    // That sign-in's ID token is fine.
    assert_minted(&capability(&h, api["id_token"].as_str().unwrap()).await);
    h.finish().await;
}

#[tokio::test]
async fn real_provider_audiences_must_be_podgate_clients() {
    let Some(op) = OidcProvider::start(json!({
        // carol's ID tokens say they were issued to another client (`azp`).
        "accounts": {"carol": {"azp": OTHER.0}},
        "claims": {"openid": ["sub", "azp"], "email": ["email", "email_verified"]},
    }))
    .await
    else {
        return;
    };
    // Several client ids of one issuer (a web and a CLI client): both sign in.
    let h = podgate(provider_settings(&op, both_clients(), 5)).await;
    let web = op.sign_in(&SignIn::new(WEB.0, Some(WEB.1), "alice")).await;
    let cli = op.sign_in(&SignIn::new(CLI, None, "alice")).await;
    let other = op
        .sign_in(&SignIn::new(OTHER.0, Some(OTHER.1), "alice"))
        .await;
    let web_id = web["id_token"].as_str().unwrap();
    let cli_id = cli["id_token"].as_str().unwrap();
    let other_id = other["id_token"].as_str().unwrap();
    assert_eq!(peek(cli_id).1["aud"], CLI);
    assert_eq!(peek(other_id).1["aud"], OTHER.0);
    assert_minted(&capability(&h, web_id).await);
    assert_minted(&capability(&h, cli_id).await);
    // Another application of the same issuer: its users' ID tokens are not for podgate.
    assert_refused(
        &capability(&h, other_id).await,
        "not for a client podgate trusts",
    );
    // `azp` naming a client podgate does not trust, on an ID token whose `aud` is podgate's.
    let carol = op.sign_in(&SignIn::new(WEB.0, Some(WEB.1), "carol")).await;
    let carol_id = carol["id_token"].as_str().unwrap();
    let (_, c) = peek(carol_id);
    assert_eq!(
        (c["aud"].as_str(), c["azp"].as_str()),
        (Some(WEB.0), Some(OTHER.0))
    );
    assert_refused(&capability(&h, carol_id).await, "`azp`");
    h.finish().await;

    // The single-id form still works, and trusts only that client.
    let h = podgate(provider_settings(&op, WEB.0.into(), 5)).await;
    assert_minted(&capability(&h, web_id).await);
    assert_refused(&capability(&h, cli_id).await, "podgate-web");
    h.finish().await;
}

#[tokio::test]
async fn real_provider_email_verified_must_be_json_true() {
    let Some(op) = OidcProvider::start(json!({
        "accounts": {
            "str-true": {"email_verified": "true"},
            "str-false": {"email_verified": "false"},
            "num-one": {"email_verified": 1},
            "nul": {"email_verified": null},
            "unverified": {"email_verified": false},
        },
    }))
    .await
    else {
        return;
    };
    let h = podgate(provider_settings(&op, both_clients(), 5)).await;
    for (login, verified) in [
        ("verified", json!(true)),
        ("str-true", json!("true")),
        ("str-false", json!("false")),
        ("num-one", json!(1)),
        ("nul", Value::Null),
        ("unverified", json!(false)),
    ] {
        let t = op.sign_in(&SignIn::new(WEB.0, Some(WEB.1), login)).await;
        let id_token = t["id_token"].as_str().unwrap();
        let (_, claims) = peek(id_token);
        assert_eq!(claims["email_verified"], verified, "{login}: {claims}");
        assert_eq!(claims["email"], format!("{login}@example.test"));
        // Signed in (a new user, who may not reach alice's pod), with the email only when the
        // provider said JSON true.
        let r = capability(&h, id_token).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{login}: {}", r.body);
        let u = user(&h, login).await.expect("the user was created");
        let want = if verified == json!(true) {
            json!(format!("{login}@example.test"))
        } else {
            Value::Null
        };
        assert_eq!(u["email"], want, "{login}: {u}");
    }
    h.finish().await;
}

/// A token signed with `kid` that no provider ever published (a made-up kid); the claims are
/// otherwise those of a real ID token.
fn made_up_kid_token(claims: &Value, kid: &str) -> String {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/test_rsa_keys.json")).unwrap();
    let jwk: JsonWebKey<'_> = serde_json::from_str(&fixture["keys"][0].to_string()).unwrap();
    let sk = RsaPrivateKey::try_from(&jwk).unwrap();
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": "RS256", "kid": kid})),
        b64(claims)
    );
    let sig = Rsa::rs256().sign(&sk, input.as_bytes());
    use base64::Engine;
    format!(
        "{input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_bytes())
    )
}

/// Sends every token at once; returns the answers in order.
async fn all_at_once(h: &Harness, tokens: &[String]) -> Vec<(StatusCode, Value)> {
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in tokens.iter().enumerate() {
        let app = h.app.clone();
        let req = capability_request(t);
        set.spawn(async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (
                i,
                status,
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            )
        });
    }
    let mut out = vec![(StatusCode::OK, Value::Null); tokens.len()];
    while let Some(r) = set.join_next().await {
        let (i, s, b) = r.unwrap();
        out[i] = (s, b);
    }
    out
}

#[tokio::test]
async fn real_provider_rotation_is_picked_up_at_once_and_made_up_kids_cannot_stop_it() {
    let Some(op) = OidcProvider::start(json!({})).await else {
        return;
    };
    const MIN_REFRESH: u64 = 2;
    let h = podgate(provider_settings(&op, both_clients(), MIN_REFRESH)).await;
    let fetches = || h.state.verifiers().oidc.fetch_count("op");
    let alice = SignIn::new(WEB.0, Some(WEB.1), "alice");
    let sign_in = || op.sign_in(&alice);

    let first = sign_in().await;
    assert_minted(&capability(&h, first["id_token"].as_str().unwrap()).await);
    assert_eq!(fetches(), 1);

    // The provider rotates (the old key is gone at once). A token with the new kid arrives
    // together with a flood of made-up kids: the real token is accepted, the made-up ones
    // refused as unknown keys, and the provider sees one or two fetches.
    let rotated = op.rotate(false).await;
    let second = sign_in().await;
    let new_id = second["id_token"].as_str().unwrap().to_owned();
    assert_eq!(peek(&new_id).0["kid"], rotated["signing"]);
    let claims = peek(&new_id).1;
    let mut tokens: Vec<String> = (0..30)
        .map(|i| made_up_kid_token(&claims, &format!("made-up-{i}")))
        .collect();
    tokens.insert(15, new_id.clone());
    let started = Instant::now();
    let answers = all_at_once(&h, &tokens).await;
    for (i, (status, body)) in answers.iter().enumerate() {
        if i == 15 {
            assert_eq!(*status, StatusCode::OK, "the rotated token: {body}");
        } else {
            assert_eq!(*status, StatusCode::UNAUTHORIZED, "{body}");
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("not among op's published keys"),
                "{body}"
            );
        }
    }
    // One fetch answers every request that missed before it began; requests that missed while
    // it was under way get one more (it may have begun before their token was issued).
    let burst_fetches = fetches() - 1;
    assert!(
        (1..=2).contains(&burst_fetches),
        "{burst_fetches} fetches for one burst"
    );
    assert!(started.elapsed() < Duration::from_secs(2 * MIN_REFRESH + 5));
    // The old key was dropped by that fetch: tokens signed with it are refused now.
    assert_refused(
        &capability(&h, first["id_token"].as_str().unwrap()).await,
        "published keys",
    );

    // An attacker keeps sending made-up kids, just before and while the provider rotates
    // again: fetches stay at one per MIN_REFRESH, and the next rotated token is still accepted
    // (it waits for a fetch that begins after it arrived, never refused for being early).
    let flood_started = Instant::now();
    let before = fetches();
    for round in 0..3 {
        let burst: Vec<String> = (0..10)
            .map(|i| made_up_kid_token(&claims, &format!("flood-{round}-{i}")))
            .collect();
        let answers = all_at_once(&h, &burst).await;
        assert!(answers.iter().all(|(s, _)| *s == StatusCode::UNAUTHORIZED));
    }
    op.rotate(true).await;
    let third = sign_in().await;
    let mut burst: Vec<String> = (0..10)
        .map(|i| made_up_kid_token(&claims, &format!("flood-last-{i}")))
        .collect();
    burst.push(third["id_token"].as_str().unwrap().to_owned());
    let answers = all_at_once(&h, &burst).await;
    assert_eq!(answers[10].0, StatusCode::OK, "{}", answers[10].1);
    let made = fetches() - before;
    let allowed = flood_started.elapsed().as_secs() / MIN_REFRESH + 2;
    assert!(
        made <= allowed,
        "{made} fetches in {:?} (at most {allowed})",
        flood_started.elapsed()
    );
    // With the overlap, the second key still verifies.
    assert_minted(&capability(&h, &new_id).await);
    h.finish().await;
}

#[tokio::test]
async fn real_provider_down_is_a_503_not_an_invalid_token() {
    let Some(mut op) = OidcProvider::start(json!({})).await else {
        return;
    };
    let h = podgate(provider_settings(&op, both_clients(), 1)).await;
    let first = op.sign_in(&SignIn::new(WEB.0, Some(WEB.1), "alice")).await;
    let old = first["id_token"].as_str().unwrap().to_owned();
    assert_minted(&capability(&h, &old).await);
    op.rotate(false).await;
    let second = op.sign_in(&SignIn::new(WEB.0, Some(WEB.1), "alice")).await;
    let new = second["id_token"].as_str().unwrap().to_owned();
    op.stop();

    // A real token whose key podgate has not seen yet, while the provider is down: the answer
    // says the provider could not be reached, and that it is worth trying again.
    for _ in 0..2 {
        let r = capability(&h, &new).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        let e = r.error();
        assert!(e.contains("signing keys could not be fetched"), "{e}");
        assert!(e.contains("try again"), "{e}");
        assert!(r.header("www-authenticate").is_none());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.json().get("token").is_none());
    }
    // Tokens whose key is cached still work while the provider is away.
    assert_minted(&capability(&h, &old).await);
    h.finish().await;
}
