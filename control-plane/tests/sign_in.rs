//! podgate's own sign-in (`/auth/login`, `/auth/callback`) against a real, certified OpenID
//! provider (npm `oidc-provider`, `tests/oidc-provider/provider.mjs`): the code flow with PKCE,
//! `state` and `nonce`, each client authentication, and every way a sign-in can fail, each
//! answered with a clear page (or JSON) and no session.
//!
//! The control plane runs in process with its default public URL, `http://127.0.0.1:8080`, so its
//! redirect URI is `http://127.0.0.1:8080/auth/callback`: the provider's redirects to it are read
//! from the sign-in and replayed against the app, as a browser would. Needs Node.js and
//! `bash scripts/oidc-provider-deps.sh`; skips loudly without them, fails under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use common::oidc_provider::{OidcProvider, SignIn, OTHER, REDIRECT_URI, WEB};
use common::{metric, Harness, Resp, Which};
use podgate::config::idp::{OidcSettings, SignInSettings};
use podgate::config::Settings;
use serde_json::{json, Value};

const PODGATE: &str = "http://127.0.0.1:8080";
const CALLBACK: &str = "http://127.0.0.1:8080/auth/callback";
/// Where the provider sends the browser back after signing it out (registered for podgate-web).
const SIGNED_OUT: &str = "http://127.0.0.1:8080/auth/logout";
const POST_CLIENT: (&str, &str) = ("podgate-post", "podgate-post-secret");
const JWT_CLIENT: &str = "podgate-jwt";

/// The RSA key of the `private_key_jwt` client, from the test fixtures (private JWK).
fn client_jwk() -> Value {
    let keys: Value = serde_json::from_str(include_str!("fixtures/test_rsa_keys.json")).unwrap();
    let mut k = keys["keys"][0].clone();
    k["kid"] = json!("podgate-jwt-key");
    k
}

/// The provider's clients: podgate's web client (secret in Basic; podgate's `/auth/logout` as its
/// post-logout redirect URI), one with the secret in the body, one with `private_key_jwt`, all registered with podgate's callback; and an application
/// podgate does not trust. Web and other-app also have the harness's own redirect URI, for
/// tokens a test obtains outside podgate.
fn clients() -> Value {
    let jwk = client_jwk();
    let public = json!({"kty": "RSA", "n": jwk["n"], "e": jwk["e"], "kid": jwk["kid"], "alg": "RS256", "use": "sig"});
    json!([
        {"client_id": WEB.0, "client_secret": WEB.1, "redirect_uris": [CALLBACK, REDIRECT_URI],
         "post_logout_redirect_uris": [SIGNED_OUT],
         "grant_types": ["authorization_code"], "response_types": ["code"],
         "token_endpoint_auth_method": "client_secret_basic"},
        {"client_id": POST_CLIENT.0, "client_secret": POST_CLIENT.1, "redirect_uris": [CALLBACK],
         "grant_types": ["authorization_code"], "response_types": ["code"],
         "token_endpoint_auth_method": "client_secret_post"},
        {"client_id": JWT_CLIENT, "redirect_uris": [CALLBACK],
         "grant_types": ["authorization_code"], "response_types": ["code"],
         "token_endpoint_auth_method": "private_key_jwt",
         "token_endpoint_auth_signing_alg": "RS256", "jwks": {"keys": [public]}},
        {"client_id": OTHER.0, "client_secret": OTHER.1, "redirect_uris": [REDIRECT_URI],
         "grant_types": ["authorization_code"], "response_types": ["code"],
         "token_endpoint_auth_method": "client_secret_basic"},
    ])
}

async fn provider() -> Option<OidcProvider> {
    OidcProvider::start(json!({ "clients": clients() })).await
}

/// An `[[oidc]]` entry named `name` for `issuer` that signs in as podgate-web.
fn entry(name: &str, issuer: &str) -> OidcSettings {
    OidcSettings {
        name: name.into(),
        issuer: issuer.into(),
        audience: WEB.0.into(),
        sign_in: Some(SignInSettings {
            client_secret: Some(WEB.1.into()),
            ..SignInSettings::default()
        }),
        ..OidcSettings::default()
    }
}

async fn podgate_on(which: Which, oidc: Vec<OidcSettings>) -> Option<Harness> {
    Harness::seeded(which, |s| Settings {
        oidc,
        callback_failures_burst: Some(1000),
        ..s
    })
    .await
}

async fn podgate(oidc: Vec<OidcSettings>) -> Harness {
    podgate_on(Which::Sqlite, oidc).await.unwrap()
}

/// A browser: the control plane's cookies it holds, and page-load headers.
#[derive(Default)]
struct Browser(BTreeMap<String, String>);

impl Browser {
    fn take(&mut self, r: &Resp) {
        for v in r.headers.get_all("set-cookie") {
            let pair = v.to_str().unwrap().split(';').next().unwrap();
            let (k, val) = pair.split_once('=').unwrap();
            if val.is_empty() {
                self.0.remove(k);
            } else {
                self.0.insert(k.to_owned(), val.to_owned());
            }
        }
    }

    async fn get(&mut self, h: &Harness, url: &str) -> Resp {
        let path = url.strip_prefix(PODGATE).unwrap_or(url);
        let cookie = self
            .0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut headers = vec![("accept", "text/html"), ("sec-fetch-mode", "navigate")];
        if !cookie.is_empty() {
            headers.push(("cookie", cookie.as_str()));
        }
        let r = h.get(path, &headers).await;
        self.take(&r);
        r
    }

    /// `/auth/login?{query}`: returns the provider's authorization URL it redirects to.
    async fn login(&mut self, h: &Harness, query: &str) -> String {
        let r = self.get(h, &format!("/auth/login?{query}")).await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        r.header("location").unwrap().to_owned()
    }
}

fn query(url: &str) -> BTreeMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

async fn sessions(h: &Harness) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM sessions")
        .fetch_one(h.state.db().pool())
        .await
        .unwrap()
}

/// A refusal: `status`, a page that says `needle` and links to a fresh sign-in, our security
/// headers, no session cookie and no session row.
async fn assert_refused(h: &Harness, r: &Resp, status: StatusCode, needle: &str) {
    assert_eq!(r.status, status, "{needle}: {}", r.body);
    assert!(
        r.header("content-type").unwrap().starts_with("text/html"),
        "{r:?}"
    );
    assert!(r.body.contains(needle), "{needle:?} not in {}", r.body);
    assert!(
        r.body.contains("Start again") && r.body.contains("/auth/login"),
        "{}",
        r.body
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r.header("content-security-policy").is_some());
    for v in r.headers.get_all("set-cookie") {
        assert!(
            !v.to_str().unwrap().starts_with("podgate_session="),
            "a refused sign-in set a session: {v:?}"
        );
    }
    assert_eq!(sessions(h).await, 0, "a refused sign-in made a session");
}

async fn happy_path(which: Which) {
    let Some(op) = provider().await else { return };
    let Some(h) = podgate_on(which, vec![entry("op", &op.issuer)]).await else {
        return;
    };
    let mut b = Browser::default();

    // A page load of alice's pod without a session: proxy-auth sends the browser to podgate's
    // own sign-in (the default login once a provider signs in), carrying where to come back.
    let r = b
        .get(
            &h,
            "/api/proxy-auth?pod=myslug&port=8726&next=%2Fdocs%3Fa%3D1",
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let login = r.header("location").unwrap().to_owned();
    assert!(
        login.starts_with(&format!("{PODGATE}/auth/login?next=")),
        "{login}"
    );

    let r = b.get(&h, &login).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert!(
        b.0.keys().any(|k| k.starts_with("podgate_signin-")),
        "no binding cookie: {r:?}"
    );
    let authorize = r.header("location").unwrap().to_owned();
    let q = query(&authorize);
    assert!(
        authorize.starts_with(&format!("{}/auth?", op.issuer)),
        "{authorize}"
    );
    assert_eq!(q["client_id"], WEB.0);
    assert_eq!(q["redirect_uri"], CALLBACK);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["response_type"], "code");
    assert!(q["scope"].split(' ').any(|s| s == "openid"));
    for k in ["state", "nonce", "code_challenge"] {
        assert!(q[k].len() >= 43, "{k}: {authorize}");
    }
    // The verifier never leaves the control plane; the challenge is its S256 hash.
    assert!(!q.contains_key("code_verifier"));

    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    assert!(query(&back).contains_key("code"), "{back}");
    let r = b.get(&h, &back).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let next = r.header("location").unwrap().to_owned();
    // The `next` proxy-auth sent to the sign-in, as its path on the control plane.
    let sent = query(&login)["next"].clone();
    assert_eq!(format!("{PODGATE}{next}"), sent, "lands on next");
    assert!(
        next.starts_with("/api/proxy-auth?pod=myslug&port=8726&next="),
        "{next}"
    );
    assert!(b.0.contains_key("podgate_session"));
    assert_eq!(sessions(&h).await, 1);

    // The session is alice's: proxy-auth now mints her ticket for her pod, to `next`.
    let r = b.get(&h, &next).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let to_pod = r.header("location").unwrap();
    assert!(
        to_pod.starts_with(
            "http://localhost-8726-pod-myslug.localhost:10000/.podgate/callback?ticket="
        ),
        "{to_pod}"
    );
    assert_eq!(query(to_pod)["next"], "/docs?a=1", "{to_pod}");

    // One sign-in, one discovery document, the provider's keys fetched for the ID token.
    let s = h.metrics().await;
    let login = |outcome| {
        metric(
            &s,
            "podgate_logins_total",
            &[("method", "sign_in"), ("outcome", outcome)],
        )
    };
    assert_eq!(login("ok"), 1.0);
    assert_eq!(login("refused") + login("error"), 0.0);
    let fetched = |document, outcome| {
        metric(
            &s,
            "podgate_idp_fetches_total",
            &[
                ("provider", "op"),
                ("document", document),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(fetched("discovery", "ok"), 1.0);
    assert!(fetched("jwks", "ok") >= 1.0);
    assert_eq!(
        fetched("discovery", "failed") + fetched("jwks", "failed"),
        0.0
    );

    // Signing in again in the same browser, a sign-in started once this session was there,
    // replaces its session: the one before ends as a sign-out would end it, so that signing
    // out of the new one leaves nothing of the old. (Times are in seconds: the session is
    // dated a second back, as one there before the sign-in started would be.)
    let first = format!("podgate_session={}", b.0["podgate_session"]);
    sqlx::query("UPDATE sessions SET created_at = created_at - 1")
        .execute(h.state.db().pool())
        .await
        .unwrap();
    let r = b.get(&h, &format!("{PODGATE}/auth/login?next=%2F")).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let authorize = r.header("location").unwrap().to_owned();
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    let r = b.get(&h, &back).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let second = format!("podgate_session={}", b.0["podgate_session"]);
    assert_ne!(first, second);
    assert_eq!(sessions(&h).await, 1);
    let r = h.get("/auth/userinfo", &[("cookie", &first)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let r = h.get("/auth/userinfo", &[("cookie", &second)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    h.finish().await;
}
on_both!(happy_path);

#[tokio::test]
async fn sign_in_with_client_secret_post_and_private_key_jwt() {
    let Some(op) = provider().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("client.jwk");
    std::fs::write(&key_file, client_jwk().to_string()).unwrap();
    let post = OidcSettings {
        audience: POST_CLIENT.0.into(),
        sign_in: Some(SignInSettings {
            client_secret: Some(POST_CLIENT.1.into()),
            client_auth: Some("client_secret_post".into()),
            ..SignInSettings::default()
        }),
        ..entry("post", &op.issuer)
    };
    let h = podgate(vec![post]).await;
    let mut b = Browser::default();
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    assert_eq!(query(&authorize)["client_id"], POST_CLIENT.0);
    let back = op.authorize(&authorize, "bob", CALLBACK).await;
    let r = b.get(&h, &back).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(r.header("location"), Some("/healthz"));
    h.finish().await;

    let jwt = OidcSettings {
        audience: JWT_CLIENT.into(),
        sign_in: Some(SignInSettings {
            private_key_file: Some(key_file),
            ..SignInSettings::default()
        }),
        ..entry("jwt", &op.issuer)
    };
    let h = podgate(vec![jwt]).await;
    let mut b = Browser::default();
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    assert_eq!(query(&authorize)["client_id"], JWT_CLIENT);
    let back = op.authorize(&authorize, "bob", CALLBACK).await;
    let r = b.get(&h, &back).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(r.header("location"), Some("/healthz"));
    assert_eq!(sessions(&h).await, 1);
    h.finish().await;
}

/// Two tabs restored together both start a sign-in before either binding cookie comes back:
/// each sign-in has a cookie of its own, so both finish, in either order, and each callback
/// removes its own.
#[tokio::test]
async fn two_tabs_that_start_signing_in_at_once_both_finish() {
    let Some(op) = provider().await else { return };
    let h = podgate(vec![entry("op", &op.issuer)]).await;
    let mut b = Browser::default();
    let page = [("accept", "text/html"), ("sec-fetch-mode", "navigate")];
    let first = h.get("/auth/login?next=%2Fhealthz", &page).await;
    let second = h.get("/auth/login?next=%2Freadyz", &page).await;
    b.take(&first);
    b.take(&second);
    let bindings =
        b.0.keys()
            .filter(|k| k.starts_with("podgate_signin-"))
            .count();
    assert_eq!(bindings, 2, "{:?}", b.0.keys());
    for (started, lands) in [(&first, "/healthz"), (&second, "/readyz")] {
        let back = op
            .authorize(started.header("location").unwrap(), "alice", CALLBACK)
            .await;
        let r = b.get(&h, &back).await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        assert_eq!(r.header("location"), Some(lands));
    }
    assert!(
        !b.0.keys().any(|k| k.starts_with("podgate_signin")),
        "{:?}",
        b.0.keys()
    );
    h.finish().await;
}

#[tokio::test]
async fn a_missing_wrong_expired_or_other_browsers_state_is_refused() {
    let Some(op) = provider().await else { return };
    let h = podgate(vec![entry("op", &op.issuer)]).await;

    // No state, and a state podgate never issued.
    let mut b = Browser::default();
    let r = b.get(&h, "/auth/callback?code=abc").await;
    assert_refused(&h, &r, StatusCode::BAD_REQUEST, "has no `state`").await;
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    let mut forged = url::Url::parse(&back).unwrap();
    let pairs: Vec<(String, String)> = forged
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                "forged-state".into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let r = b.get(&h, forged.as_str()).await;
    assert_refused(
        &h,
        &r,
        StatusCode::BAD_REQUEST,
        "unknown or was already used",
    )
    .await;

    // The real answer, in another browser (no binding cookie, or another one): refused, and the
    // sign-in is spent, so the right browser cannot be raced into someone else's session either.
    let mut other = Browser::default();
    let _ = other.login(&h, "").await;
    let r = other.get(&h, &back).await;
    assert_refused(
        &h,
        &r,
        StatusCode::BAD_REQUEST,
        "started in another browser",
    )
    .await;
    let r = b.get(&h, &back).await;
    assert_refused(&h, &r, StatusCode::BAD_REQUEST, "already used").await;

    // Expired: the sign-in is older than its lifetime.
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    sqlx::query("UPDATE sign_in_states SET expires_at = 0")
        .execute(h.state.db().pool())
        .await
        .unwrap();
    let r = b.get(&h, &back).await;
    assert_refused(&h, &r, StatusCode::BAD_REQUEST, "expired").await;
    // The retry link starts the same sign-in again: same provider, same next.
    assert!(
        r.body.contains("/auth/login?provider=op&amp;next=/healthz"),
        "{}",
        r.body
    );

    // A script gets the same refusal as JSON.
    let r = h.get("/auth/callback?state=nope&code=x", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error().contains("unknown or was already used"),
        "{}",
        r.body
    );
    assert!(r.json()["sign_in"]
        .as_str()
        .unwrap()
        .ends_with("/auth/login"));
    assert_eq!(sessions(&h).await, 0);
    h.finish().await;
}

/// Signing out of a session that signed in with a provider set to `sign_out_at_provider`, whose
/// discovery names an `end_session_endpoint`: the session ends and is cut off first, then the browser is sent to
/// the provider with podgate's `client_id` and `post_logout_redirect_uri`; the real provider
/// accepts both, signs the browser out and sends it back to `/auth/logout`, which has nothing
/// left to end. A script's sign-out (JSON) and a dev-login session are not sent anywhere.
#[tokio::test]
async fn signing_out_signs_out_at_the_provider_too() {
    let Some(op) = provider().await else { return };
    let mut op_entry = entry("op", &op.issuer);
    if let Some(sign_in) = op_entry.sign_in.as_mut() {
        sign_in.sign_out_at_provider = Some(true);
    }
    let h = podgate(vec![op_entry]).await;
    let mut b = Browser::default();
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    let r = b.get(&h, &back).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(sessions(&h).await, 1);

    let r = b.get(&h, "/auth/logout").await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        !b.0.contains_key("podgate_session"),
        "the session cookie is cleared"
    );
    // Ended and cut off before the browser leaves.
    assert_eq!(sessions(&h).await, 0);
    let cuts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM access_cuts WHERE sid IS NOT NULL")
        .fetch_one(h.state.db().pool())
        .await
        .unwrap();
    assert_eq!(cuts, 1);
    let end_session = r.header("location").unwrap().to_owned();
    assert!(
        end_session.starts_with(&format!("{}/session/end?", op.issuer)),
        "{end_session}"
    );
    let q = query(&end_session);
    assert_eq!(q["client_id"], WEB.0);
    assert_eq!(q["post_logout_redirect_uri"], SIGNED_OUT);
    assert!(!q.contains_key("id_token_hint"), "the ID token is not kept");

    let landed = op.end_session(&end_session, SIGNED_OUT).await;
    let r = b.get(&h, &landed).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("You are signed out"), "{}", r.body);

    // A script signing out gets JSON, not a redirect.
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    b.get(&h, &back).await;
    let session = format!("podgate_session={}", b.0["podgate_session"]);
    let r = h.get("/auth/logout", &[("cookie", &session)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json(), json!({"signed_out": true, "sessions_ended": 1}));
    // A dev-login session has no provider to sign out of.
    let dev = h.login("alice").await;
    let r = h
        .get("/auth/logout", &[("cookie", &dev), ("accept", "text/html")])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("You are signed out"), "{}", r.body);
    h.finish().await;

    // Without `sign_out_at_provider` (the default) the browser stays here.
    let h = podgate(vec![entry("op", &op.issuer)]).await;
    let mut b = Browser::default();
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    b.get(&h, &back).await;
    let r = b.get(&h, "/auth/logout").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("You are signed out"), "{}", r.body);
    assert_eq!(sessions(&h).await, 0);
    h.finish().await;
}

#[tokio::test]
async fn a_replayed_callback_or_code_is_refused() {
    let Some(op) = provider().await else { return };
    let h = podgate(vec![entry("op", &op.issuer)]).await;
    let mut b = Browser::default();
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    let r = b.get(&h, &back).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(sessions(&h).await, 1);
    sqlx::query("DELETE FROM sessions")
        .execute(h.state.db().pool())
        .await
        .unwrap();

    // The same answer again: its state was taken by the first.
    let mut thief = Browser(b.0.clone());
    thief.0.remove("podgate_session");
    let r = thief.get(&h, &back).await;
    assert_refused(&h, &r, StatusCode::BAD_REQUEST, "already used").await;

    // The used code under a fresh state of this browser: the provider refuses it.
    let fresh = thief.login(&h, "next=%2Fhealthz").await;
    let mut replay = url::Url::parse(CALLBACK).unwrap();
    replay
        .query_pairs_mut()
        .append_pair("code", &query(&back)["code"])
        .append_pair("state", &query(&fresh)["state"]);
    let r = thief.get(&h, replay.as_str()).await;
    assert_refused(
        &h,
        &r,
        StatusCode::BAD_REQUEST,
        "refused to exchange the sign-in code",
    )
    .await;
    assert!(r.body.contains("invalid_grant"), "{}", r.body);
    h.finish().await;
}

/// A stand-in for the provider's token endpoint, in front of the real provider: its discovery
/// document is the provider's with `token_endpoint` pointing here, and the token endpoint
/// answers whatever the test put in `answer` (a real ID token of another sign-in or client).
struct SubstitutingTokenEndpoint {
    discovery: String,
    answer: Arc<Mutex<Value>>,
}

async fn substituting_token_endpoint(op: &OidcProvider) -> SubstitutingTokenEndpoint {
    use axum::routing::{get, post};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let here = format!("http://{}", listener.local_addr().unwrap());
    let mut doc: Value = reqwest::get(format!("{}/.well-known/openid-configuration", op.issuer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    doc["token_endpoint"] = json!(format!("{here}/token"));
    let answer = Arc::new(Mutex::new(Value::Null));
    let a = answer.clone();
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        )
        .route(
            "/token",
            post(move || {
                let a = a.clone();
                async move { axum::Json(a.lock().unwrap().clone()) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    SubstitutingTokenEndpoint {
        discovery: format!("{here}/.well-known/openid-configuration"),
        answer,
    }
}

#[tokio::test]
async fn an_id_token_of_another_sign_in_or_client_is_refused() {
    let Some(op) = provider().await else { return };
    let fake = substituting_token_endpoint(&op).await;
    let h = podgate(vec![OidcSettings {
        discovery_url: Some(fake.discovery.clone()),
        ..entry("op", &op.issuer)
    }])
    .await;

    // A real ID token of podgate's client for alice, from another sign-in: another nonce.
    let other_sign_in = op.sign_in(&SignIn::new(WEB.0, Some(WEB.1), "alice")).await;
    *fake.answer.lock().unwrap() = other_sign_in;
    let mut b = Browser::default();
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    let r = b.get(&h, &back).await;
    assert_refused(&h, &r, StatusCode::UNAUTHORIZED, "nonce").await;

    // A real ID token for alice issued to another application of the same provider.
    let other_client = op
        .sign_in(&SignIn::new(OTHER.0, Some(OTHER.1), "alice"))
        .await;
    *fake.answer.lock().unwrap() = other_client;
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    let r = b.get(&h, &back).await;
    assert_refused(&h, &r, StatusCode::UNAUTHORIZED, "other-app").await;

    // No ID token at all.
    *fake.answer.lock().unwrap() = json!({"access_token": "x", "token_type": "Bearer"});
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    let r = b.get(&h, &back).await;
    assert_refused(&h, &r, StatusCode::BAD_GATEWAY, "returned no id_token").await;
    h.finish().await;
}

#[tokio::test]
async fn access_denied_and_a_provider_that_is_down_are_clear_pages() {
    let Some(mut op) = provider().await else {
        return;
    };
    let h = podgate(vec![entry("op", &op.issuer)]).await;
    let mut b = Browser::default();

    // The user cancels at the provider.
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.deny(&authorize, CALLBACK).await;
    assert_eq!(query(&back)["error"], "access_denied", "{back}");
    let r = b.get(&h, &back).await;
    assert_refused(&h, &r, StatusCode::FORBIDDEN, "access_denied").await;

    // The provider goes down between the sign-in and the code exchange.
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    op.stop();
    let r = b.get(&h, &back).await;
    assert_refused(
        &h,
        &r,
        StatusCode::SERVICE_UNAVAILABLE,
        "could not be reached",
    )
    .await;

    // A provider that cannot be reached at all: the sign-in cannot start.
    let h2 = podgate(vec![entry("down", "http://127.0.0.1:9")]).await;
    let mut b = Browser::default();
    let r = b.get(&h2, "/auth/login?next=%2Fhealthz").await;
    assert_refused(
        &h2,
        &r,
        StatusCode::SERVICE_UNAVAILABLE,
        "could not be reached",
    )
    .await;

    // The denied sign-in is the client's, the failed exchange ours; the unreachable provider's
    // discovery is a failed fetch.
    let s = h.metrics().await;
    let login = |outcome| {
        metric(
            &s,
            "podgate_logins_total",
            &[("method", "sign_in"), ("outcome", outcome)],
        )
    };
    assert_eq!(
        (login("ok"), login("refused"), login("error")),
        (0.0, 1.0, 1.0)
    );
    let s = h2.metrics().await;
    assert_eq!(
        metric(
            &s,
            "podgate_idp_fetches_total",
            &[
                ("provider", "down"),
                ("document", "discovery"),
                ("outcome", "failed")
            ],
        ),
        1.0
    );
    h.finish().await;
    h2.finish().await;
}

#[tokio::test]
async fn a_session_that_cannot_be_stored_is_a_clear_page() {
    let Some(op) = provider().await else {
        return;
    };
    let h = podgate(vec![entry("op", &op.issuer)]).await;
    let mut b = Browser::default();
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    // The database fails just as the session is stored.
    let rename = |from: &str, to: &str| format!("ALTER TABLE {from} RENAME TO {to}");
    sqlx::query(&rename("sessions", "sessions_away"))
        .execute(h.state.db().pool())
        .await
        .unwrap();
    let r = b.get(&h, &back).await;
    sqlx::query(&rename("sessions_away", "sessions"))
        .execute(h.state.db().pool())
        .await
        .unwrap();
    assert_refused(
        &h,
        &r,
        StatusCode::SERVICE_UNAVAILABLE,
        "could not store your session",
    )
    .await;
    // Starting again goes back to the same provider and the same place.
    assert!(
        r.body
            .contains("/auth/login?provider=op&amp;next=/healthz\""),
        "{}",
        r.body
    );
    h.finish().await;
}

/// A sign-in whose new session cannot be stored changes nothing: the session the browser held
/// stays, with every capability minted for it. Nothing is ended before the new session is
/// stored (before, the old one was ended first, and a failure left the browser signed out).
#[tokio::test]
async fn a_sign_in_that_cannot_store_its_session_leaves_the_one_before() {
    let Some(op) = provider().await else {
        return;
    };
    let h = podgate(vec![entry("op", &op.issuer)]).await;
    let pool = h.state.db().pool();
    let mut b = Browser::default();
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    let r = b.get(&h, &back).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let first = format!("podgate_session={}", b.0["podgate_session"]);
    // Dated a second back, as a session there before the next sign-in started would be.
    sqlx::query("UPDATE sessions SET created_at = created_at - 1")
        .execute(pool)
        .await
        .unwrap();
    // The next session cannot be stored; everything else the database does still works.
    sqlx::query(
        "CREATE TRIGGER no_new_sessions BEFORE INSERT ON sessions \
         BEGIN SELECT RAISE(FAIL, 'disk full'); END",
    )
    .execute(pool)
    .await
    .unwrap();
    let authorize = b.login(&h, "next=%2Fhealthz").await;
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    let r = b.get(&h, &back).await;
    sqlx::query("DROP TRIGGER no_new_sessions")
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(
        r.body.contains("could not store your session"),
        "{}",
        r.body
    );
    // The session before is still live, and nothing minted for it was cut.
    let r = h.get("/auth/userinfo", &[("cookie", &first)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["user"], "alice", "{}", r.body);
    assert_eq!(sessions(&h).await, 1);
    let cuts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM access_cuts")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(cuts, 0, "the session before was cut");
    h.finish().await;
}

#[tokio::test]
async fn several_providers_get_a_chooser_and_provider_picks_one() {
    let Some(op) = provider().await else { return };
    let mut second = entry("corp", "http://127.0.0.1:9");
    if let Some(s) = second.sign_in.as_mut() {
        s.display_name = Some("Corp <SSO> & \"friends\"".into());
    }
    let h = podgate(vec![entry("op", &op.issuer), second]).await;
    let mut b = Browser::default();

    let r = b.get(&h, "/auth/login?next=%2Fhealthz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        r.body.contains("/auth/login?provider=op&amp;next=/healthz"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("/auth/login?provider=corp&amp;next=/healthz"),
        "{}",
        r.body
    );
    // Display names are escaped.
    assert!(
        r.body.contains("Corp &lt;SSO&gt; &amp; \"friends\""),
        "{}",
        r.body
    );
    assert!(!r.body.contains("<SSO>"));
    assert!(
        !b.0.keys().any(|k| k.starts_with("podgate_signin")),
        "the chooser starts nothing"
    );

    // A script gets the list as JSON.
    let j = h.get("/auth/login", &[]).await.json();
    assert_eq!(j["providers"][0]["name"], "op");
    assert_eq!(
        j["providers"][1]["display_name"],
        "Corp <SSO> & \"friends\""
    );

    // provider= picks one, and the sign-in goes through.
    let authorize = b.login(&h, "provider=op&next=%2Fhealthz").await;
    assert!(authorize.starts_with(&op.issuer), "{authorize}");
    let back = op.authorize(&authorize, "alice", CALLBACK).await;
    let r = b.get(&h, &back).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(r.header("location"), Some("/healthz"));

    // An unknown provider, or a next elsewhere, is refused before anything starts.
    let r = b.get(&h, "/auth/login?provider=nope").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("no identity provider"), "{}", r.body);
    for next in [
        "https%3A%2F%2Fevil.example",
        "%2F%2Fevil.example",
        "%2F%5Cevil",
    ] {
        let r = b
            .get(&h, &format!("/auth/login?provider=op&next={next}"))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{next}: {}", r.body);
    }
    h.finish().await;
}
