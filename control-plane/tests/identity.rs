//! Identity verifiers and API tokens, in process (`Router::oneshot`), on SQLite and PostgreSQL:
//! a test OpenID Connect provider (discovery + JWKS on 127.0.0.1, keys rotated mid-test), a fake
//! main app for the session path (and the app down, slow, broken), and the API-token lifecycle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use common::{Harness, Resp, Which};
use jwt_compact::alg::{Es256, Rsa, RsaPrivateKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use podgate::config::idp::{AppSessionSettings, OidcSettings};
use podgate::config::Settings;
use podgate::store::now_unix;
use serde_json::{json, Value};

const AUD: &str = "podgate-client";
const FIXTURE: &str = include_str!("fixtures/test_rsa_keys.json");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Test OIDC provider

enum KeyMaterial {
    Rsa(Box<RsaPrivateKey>),
    Es(Box<p256::ecdsa::SigningKey>),
}

struct TestKey {
    kid: String,
    material: KeyMaterial,
    public: Value,
}

fn rsa_key(index: usize, kid: &str) -> TestKey {
    let doc: Value = serde_json::from_str(FIXTURE).unwrap();
    let jwk_json = doc["keys"][index].to_string();
    let jwk: JsonWebKey<'_> = serde_json::from_str(&jwk_json).unwrap();
    let sk = RsaPrivateKey::try_from(&jwk).unwrap();
    let public = json!({
        "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": doc["keys"][index]["n"], "e": doc["keys"][index]["e"],
    });
    TestKey {
        kid: kid.into(),
        material: KeyMaterial::Rsa(Box::new(sk)),
        public,
    }
}

fn es_key(seed: u8, kid: &str) -> TestKey {
    let mut scalar = [seed; 32];
    scalar[0] = 1;
    let sk = p256::ecdsa::SigningKey::from_slice(&scalar).unwrap();
    let point = sk.verifying_key().to_encoded_point(false);
    // No `alg`: the key type decides (ES256 for P-256).
    let public = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
    });
    TestKey {
        kid: kid.into(),
        material: KeyMaterial::Es(Box::new(sk)),
        public,
    }
}

impl TestKey {
    fn alg(&self) -> &'static str {
        match self.material {
            KeyMaterial::Rsa(_) => "RS256",
            KeyMaterial::Es(_) => "ES256",
        }
    }

    /// Signs any header and claims (so tests can make every kind of bad token).
    fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = match &self.material {
            KeyMaterial::Rsa(sk) => Rsa::rs256()
                .sign(sk, signing_input.as_bytes())
                .as_bytes()
                .into_owned(),
            KeyMaterial::Es(sk) => Es256
                .sign(sk, signing_input.as_bytes())
                .as_bytes()
                .into_owned(),
        };
        format!("{signing_input}.{}", b64(&sig))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_raw(
            &json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }
}

#[derive(Clone)]
struct IdpState {
    issuer: String,
    keys: Arc<Mutex<Vec<Value>>>,
    jwks_hits: Arc<AtomicU64>,
}

struct Idp {
    issuer: String,
    state: IdpState,
}

impl Idp {
    async fn start(keys: &[&TestKey]) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}");
        let state = IdpState {
            issuer: issuer.clone(),
            keys: Arc::new(Mutex::new(keys.iter().map(|k| k.public.clone()).collect())),
            jwks_hits: Arc::new(AtomicU64::new(0)),
        };
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(s): State<IdpState>| async move {
                    Json(json!({"issuer": s.issuer, "jwks_uri": format!("{}/jwks", s.issuer)}))
                }),
            )
            .route(
                "/jwks",
                get(|State(s): State<IdpState>| async move {
                    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
                    let keys = s.keys.lock().unwrap().clone();
                    (
                        [(header::CACHE_CONTROL, "public, max-age=300")],
                        Json(json!({ "keys": keys })),
                    )
                }),
            )
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Idp { issuer, state }
    }

    fn set_keys(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.public.clone()).collect();
    }

    fn hits(&self) -> u64 {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    fn claims(&self, sub: &str) -> Value {
        let now = now_unix();
        json!({"iss": self.issuer, "aud": AUD, "sub": sub, "iat": now - 10, "exp": now + 3600,
               "email": format!("{sub}@idp.example.dev"), "email_verified": true})
    }

    fn settings(&self, name: &str, min_refresh: u64) -> OidcSettings {
        OidcSettings {
            name: name.into(),
            issuer: self.issuer.clone(),
            audience: AUD.into(),
            cookie: Some("__session".into()),
            min_refresh_secs: Some(min_refresh),
            ..OidcSettings::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fake main app (NextAuth's session endpoint)

#[derive(Clone, Default)]
struct AppState {
    hits: Arc<AtomicU64>,
}

async fn session_endpoint(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> axum::response::Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Only the app's own cookie may arrive here.
    assert!(
        !cookie.contains("podgate"),
        "podgate's cookies leaked to the app: {cookie}"
    );
    let value = cookie
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == "next-auth.session-token")
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default();
    match value.as_str() {
        "alice-session" => Json(json!({"user": {"id": "alice", "email": "alice@example.dev", "name": "Alice"}, "expires": "2099-01-01T00:00:00.000Z"})).into_response(),
        "newbie-session" => Json(json!({"user": {"id": "app-user-77", "email": "newbie@example.dev"}})).into_response(),
        "no-id" => Json(json!({"user": {"email": "x@example.dev"}})).into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(json!({})).into_response()
        }
        "boom" => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        "expired" => (StatusCode::UNAUTHORIZED, "no").into_response(),
        _ => Json(json!({})).into_response(),
    }
}

async fn start_app() -> (String, AppState) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::default();
    let app = Router::new()
        .route("/api/auth/session", get(session_endpoint))
        .with_state(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/api/auth/session"), state)
}

/// A loopback URL where nothing listens.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/api/auth/session")
}

// ---------------------------------------------------------------------------------------------
// Request helpers

fn request(
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let peer: SocketAddr = "192.0.2.1:5555".parse().unwrap();
    b = b.extension(ConnectInfo(peer));
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

async fn capability(h: &Harness, headers: &[(&str, &str)], port: u16) -> Resp {
    h.send(request(
        Method::POST,
        "/v1/capabilities",
        headers,
        Some(json!({"pod": "myslug", "port": port})),
    ))
    .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ---------------------------------------------------------------------------------------------
// OIDC

async fn oidc_bearer_and_every_failure(which: Which) {
    let rsa = rsa_key(0, "rsa-1");
    let es = es_key(7, "es-1");
    let idp = Idp::start(&[&rsa, &es]).await;
    let Some(h) = Harness::seeded(which, |s| Settings {
        oidc: vec![idp.settings("test", 5)],
        // Every refusal below is one client's: room for all of them (tests/abuse.rs tests limits).
        capability_failures_burst: Some(1000),
        ..s
    })
    .await
    else {
        return;
    };

    // An existing user whose id is the subject is linked as is (alice owns myslug).
    let t = rsa.sign(&idp.claims("alice"));
    let r = capability(&h, &[("authorization", &bearer(&t))], 8726).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.json()["token"].as_str().unwrap().contains('.'));
    let ids = h.tdb.db.user_identities("alice").await.unwrap();
    assert_eq!(ids, vec![("oidc:test".to_owned(), "alice".to_owned())]);

    // ES256 from the same issuer.
    let t = es.sign(&idp.claims("alice"));
    let r = capability(&h, &[("authorization", &bearer(&t))], 8726).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // A new person is created just in time (and may not reach alice's team port).
    let t = rsa.sign(&idp.claims("dave"));
    let r = capability(&h, &[("authorization", &bearer(&t))], 8726).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = h.admin(Method::GET, "/v1/users/dave", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["email"], "dave@idp.example.dev");
    // An unverified email is not recorded; a subject that is not a podgate id is hashed.
    let mut c = idp.claims("auth0|abc");
    c["email_verified"] = json!(false);
    let r = capability(&h, &[("authorization", &bearer(&rsa.sign(&c)))], 8726).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let users = h.admin(Method::GET, "/v1/users", None).await.json();
    let hashed: Vec<&Value> = users
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["id"].as_str().unwrap().starts_with("u-"))
        .collect();
    assert_eq!(hashed.len(), 1, "{users}");
    assert_eq!(hashed[0]["email"], Value::Null);
    // Seen again: the same user, not a second one.
    let r = capability(&h, &[("authorization", &bearer(&rsa.sign(&c)))], 8726).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let again = h.admin(Method::GET, "/v1/users", None).await.json();
    assert_eq!(
        again.as_array().unwrap().len(),
        users.as_array().unwrap().len()
    );

    let now = now_unix();
    let base = idp.claims("alice");
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let weak = rsa_key(2, "rsa-weak");
    let cases: Vec<(String, &str)> =
        vec![
        (rsa.sign(&with("exp", json!(now - 120))), "expired"),
        (rsa.sign(&with("aud", json!("someone-else"))), "audience"),
        (rsa.sign(&with("aud", json!(["a", "b"]))), "audience"),
        (rsa.sign(&without("aud")), "audience"),
        (rsa.sign(&without("exp")), "no `exp`"),
        (rsa.sign(&without("iat")), "no `iat`"),
        (rsa.sign(&with("exp", json!("soon"))), "malformed"),
        (rsa.sign(&with("iat", json!(now + 3600))), "future"),
        (rsa.sign(&with("nbf", json!(now + 3600))), "not valid yet"),
        (rsa.sign(&with("exp", json!(now + 30 * 86_400))), "lives longer"),
        (rsa.sign(&with("iss", json!("https://evil.example.dev"))), "not configured"),
        (rsa.sign(&without("iss")), "no `iss`"),
        (rsa.sign(&without("sub")), "`sub`"),
        (rsa.sign(&with("sub", json!(""))), "`sub`"),
        // Algorithms: none, HS256 (with the RSA modulus as the secret), a key of another family.
        (
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "kid": "rsa-1"}).to_string().as_bytes()),
                b64(base.to_string().as_bytes())
            ),
            "algorithm",
        ),
        (
            rsa.sign_raw(&json!({"alg": "HS256", "kid": "rsa-1"}), &base),
            "algorithm",
        ),
        (
            es.sign_raw(&json!({"alg": "ES256", "kid": "rsa-1"}), &base),
            "is RS256",
        ),
        (rsa.sign_raw(&json!({"alg": "RS256"}), &base), "no `kid`"),
        (
            rsa.sign_raw(
                &json!({"alg": "RS256", "kid": "rsa-1", "jku": "https://evil.example.dev/jwks"}),
                &base,
            ),
            "never trusted",
        ),
        (
            rsa.sign_raw(&json!({"alg": "RS256", "kid": "rsa-1", "jwk": rsa.public}), &base),
            "never trusted",
        ),
        // Signed by a key the issuer does not list, under a listed kid.
        (
            rsa_key(1, "rsa-1").sign(&base),
            "signature is invalid",
        ),
        (weak.sign(&base), "key id"),
        ("not.a.jwt".to_owned(), "well-formed"),
        ("eyJ.eyJ.sig".to_owned(), "well-formed"),
        ("garbage".to_owned(), "well-formed"),
    ];
    for (token, needle) in cases {
        let r = capability(&h, &[("authorization", &bearer(&token))], 8726).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{needle}: {}", r.body);
        assert!(
            r.error().contains(needle),
            "{needle:?} not in {:?}",
            r.error()
        );
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"podgate\"")
        );
    }
    h.finish().await;
}
on_both!(oidc_bearer_and_every_failure);

#[tokio::test]
async fn oidc_keys_rotate_and_refresh_is_rate_limited() {
    let k1 = rsa_key(0, "k1");
    let k2 = rsa_key(1, "k2");
    let idp = Idp::start(&[&k1]).await;
    let slow = Idp::start(&[&k1]).await; // the default 5 s between fetches
    let h = Harness::seeded(Which::Sqlite, |s| Settings {
        capability_failures_burst: Some(1000),
        oidc: vec![idp.settings("fast", 1), {
            let mut o = slow.settings("slow", 5);
            o.cookie = None;
            o.min_refresh_secs = None;
            o
        }],
        ..s
    })
    .await
    .unwrap();
    let cap = |t: String| {
        let h = &h;
        async move { capability(h, &[("authorization", &bearer(&t))], 8726).await }
    };

    assert_eq!(
        cap(k1.sign(&idp.claims("alice"))).await.status,
        StatusCode::OK
    );
    assert_eq!(idp.hits(), 1);
    // Cached: no fetch for the next token.
    assert_eq!(
        cap(k1.sign(&idp.claims("alice"))).await.status,
        StatusCode::OK
    );
    assert_eq!(idp.hits(), 1);

    // Rotation: k1 removed, k2 published. The first token with the new kid is accepted: it
    // waits for the next fetch the interval allows instead of being refused.
    idp.set_keys(&[&k2]);
    let r = cap(k2.sign(&idp.claims("alice"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(idp.hits(), 2);
    // The old key was dropped by that fetch.
    let r = cap(k1.sign(&idp.claims("alice"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.error().contains("not among fast's published keys"),
        "{}",
        r.error()
    );
    assert_eq!(idp.hits(), 3);

    // A weak (1024-bit RSA) key in the JWKS is skipped, never used.
    let weak = rsa_key(2, "weak");
    idp.set_keys(&[&k2, &weak]);
    let r = cap(weak.sign(&idp.claims("alice"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.error().contains("not among fast's published keys"),
        "{}",
        r.error()
    );
    assert_eq!(idp.hits(), 4);

    // A burst of made-up kids costs the issuer one or two fetches (one for the requests that
    // missed before it began, one for those that missed while it was under way), not one each.
    assert_eq!(
        cap(k1.sign(&slow.claims("alice"))).await.status,
        StatusCode::OK
    );
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let forged = rsa_key(0, &format!("made-up-{i}")).sign(&slow.claims("alice"));
        let app = h.app.clone();
        set.spawn(async move {
            use tower::ServiceExt;
            let req = request(
                Method::POST,
                "/v1/capabilities",
                &[("authorization", &bearer(&forged))],
                Some(json!({"pod": "myslug", "port": 8726})),
            );
            app.oneshot(req).await.unwrap().status()
        });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert!((2..=3).contains(&slow.hits()), "{} fetches", slow.hits());
    assert_eq!(h.state.verifiers().oidc.fetch_count("slow"), slow.hits());
    h.finish().await;
}

#[tokio::test]
async fn oidc_cookie_signs_browsers_in_but_bearer_does_not() {
    let k = rsa_key(0, "k1");
    let idp = Idp::start(&[&k]).await;
    let h = Harness::seeded(Which::Sqlite, |s| Settings {
        oidc: vec![idp.settings("firebase", 5)],
        ..s
    })
    .await
    .unwrap();
    let good = k.sign(&idp.claims("alice"));
    let page = [("accept", "text/html")];
    let r = h
        .get(
            "/api/proxy-auth?pod=myslug&port=8726",
            &[page[0], ("cookie", &format!("__session={good}"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert!(r
        .header("location")
        .unwrap()
        .starts_with("http://localhost-8726-pod-myslug.localhost:10000/.podgate/callback?ticket="));

    // An expired ID token in the cookie: not signed in, off to the login page.
    let mut c = idp.claims("alice");
    c["exp"] = json!(now_unix() - 600);
    let r = h
        .get(
            "/api/proxy-auth?pod=myslug&port=8726",
            &[page[0], ("cookie", &format!("__session={}", k.sign(&c)))],
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert!(
        r.header("location").unwrap().contains("/dev/login"),
        "{:?}",
        r.headers
    );

    // The page flow never reads bearer tokens (browsers do not send them on navigations).
    let r = h
        .get(
            "/api/proxy-auth?pod=myslug&port=8726",
            &[("authorization", &bearer(&good))],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);

    // The cookie works for /v1/capabilities too.
    let r = capability(&h, &[("cookie", &format!("__session={good}"))], 8726).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    h.finish().await;
}

#[tokio::test]
async fn oidc_issuer_down_is_a_503_and_discovery_must_name_the_issuer() {
    let dead = dead_url().await;
    let issuer = dead.trim_end_matches("/api/auth/session").to_owned();
    let k = rsa_key(0, "k1");
    // A provider whose discovery document names another issuer (ours ends with '/').
    let liar = Idp::start(&[&k]).await;
    let liar_issuer = format!("{}/", liar.issuer);
    let h = Harness::seeded(Which::Sqlite, |s| Settings {
        oidc: vec![
            OidcSettings {
                name: "down".into(),
                issuer: issuer.clone(),
                audience: AUD.into(),
                ..OidcSettings::default()
            },
            OidcSettings {
                name: "liar".into(),
                issuer: liar_issuer.clone(),
                audience: AUD.into(),
                ..OidcSettings::default()
            },
        ],
        ..s
    })
    .await
    .unwrap();
    let now = now_unix();
    let t =
        k.sign(&json!({"iss": issuer, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 60}));
    // Twice: the first answer comes from a fetch, the second from the remembered failure.
    for _ in 0..2 {
        let r = capability(&h, &[("authorization", &bearer(&t))], 8726).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert!(r.error().contains("could not be fetched"), "{}", r.error());
        assert!(r.error().contains("Connection refused"), "{}", r.error());
        assert!(r.error().contains("try again"), "{}", r.error());
        assert!(r.header("www-authenticate").is_none());
    }
    let t = k.sign(
        &json!({"iss": liar_issuer, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 60}),
    );
    let r = capability(&h, &[("authorization", &bearer(&t))], 8726).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.error().contains("names the issuer"), "{}", r.error());
    assert_eq!(
        liar.hits(),
        0,
        "keys fetched from a discovery document of another issuer"
    );
    h.finish().await;
}

/// What distinguishes an ID token from the issuer's other JWTs, `aud`/`azp` as OpenID Connect
/// Core 3.1.3.7 requires with several client ids, and `email_verified` of every JSON type.
async fn oidc_only_id_tokens_for_trusted_clients_sign_in(which: Which) {
    const CLI: &str = "podgate-cli";
    let k = rsa_key(0, "k1");
    let idp = Idp::start(&[&k]).await;
    let lax = Idp::start(&[&k]).await;
    let Some(h) = Harness::seeded(which, |s| Settings {
        oidc: vec![
            OidcSettings {
                audience: podgate::config::idp::ClientIds(vec![AUD.into(), CLI.into()]),
                ..idp.settings("test", 1)
            },
            OidcSettings {
                cookie: None,
                require_email_verified: Some(false),
                ..lax.settings("lax", 1)
            },
        ],
        capability_failures_burst: Some(1000),
        ..s
    })
    .await
    else {
        return;
    };
    let base = idp.claims("alice");
    let with = |pairs: &[(&str, Value)]| {
        let mut c = base.clone();
        for (k, v) in pairs {
            c[*k] = v.clone();
        }
        c
    };
    let typ = |t: &str| json!({"alg": "RS256", "kid": "k1", "typ": t});

    // Accepted: typ absent, JWT in any casing, the media type; either client id; several
    // audiences that are all podgate's clients with an azp that is one of them; the `typ` and
    // `token_use` claims of Keycloak and Cognito ID tokens.
    let good: Vec<String> = vec![
        k.sign_raw(&json!({"alg": "RS256", "kid": "k1"}), &base),
        k.sign_raw(&typ("jwt"), &base),
        k.sign_raw(&typ("application/JWT"), &base),
        k.sign(&with(&[("aud", json!(CLI))])),
        k.sign(&with(&[("aud", json!([AUD, CLI])), ("azp", json!(CLI))])),
        k.sign(&with(&[("aud", json!([AUD])), ("azp", json!(AUD))])),
        k.sign(&with(&[("typ", json!("ID"))])),
        k.sign(&with(&[("token_use", json!("id"))])),
    ];
    for t in good {
        let r = capability(&h, &[("authorization", &bearer(&t))], 8726).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }

    let refused: Vec<(String, &str)> = vec![
        // Other kinds of JWT from the same issuer, same key, same audience.
        (k.sign_raw(&typ("at+jwt"), &base), "access token"),
        (k.sign_raw(&typ("AT+JWT"), &base), "access token"),
        (
            k.sign_raw(&typ("application/at+jwt"), &base),
            "access token",
        ),
        (
            k.sign_raw(&typ("Application/At+Jwt"), &base),
            "access token",
        ),
        (k.sign_raw(&typ("logout+jwt"), &base), "not an ID token"),
        (k.sign_raw(&typ("secevent+jwt"), &base), "not an ID token"),
        (
            k.sign_raw(&typ("token-introspection+jwt"), &base),
            "not an ID token",
        ),
        (k.sign_raw(&typ("JWS"), &base), "not an ID token"),
        (k.sign_raw(&typ(""), &base), "not an ID token"),
        (k.sign(&with(&[("client_id", json!(AUD))])), "`client_id`"),
        (
            k.sign(&with(&[("scope", json!("openid email"))])),
            "`scope`",
        ),
        (k.sign(&with(&[("scp", json!(["read"]))])), "`scp`"),
        (k.sign(&with(&[("events", json!({}))])), "`events`"),
        (k.sign(&with(&[("typ", json!("Bearer"))])), "`typ` claim"),
        (k.sign(&with(&[("typ", json!(1))])), "`typ` claim"),
        (
            k.sign(&with(&[("token_use", json!("access"))])),
            "`token_use`",
        ),
        // Audiences: another client, untrusted extras, no azp with several, azp of another.
        (
            k.sign(&with(&[("aud", json!("other-app"))])),
            "not for a client podgate trusts",
        ),
        (
            k.sign(&with(&[
                ("aud", json!([AUD, "other-app"])),
                ("azp", json!(AUD)),
            ])),
            "also for audience [\"other-app\"]",
        ),
        (
            k.sign(&with(&[("aud", json!(["other-app", AUD]))])),
            "also for audience",
        ),
        (k.sign(&with(&[("aud", json!([AUD, CLI]))])), "no `azp`"),
        (k.sign(&with(&[("azp", json!("other-app"))])), "`azp`"),
        (k.sign(&with(&[("azp", json!([AUD]))])), "`azp`"),
        (k.sign(&with(&[("azp", json!(""))])), "`azp`"),
        (k.sign(&with(&[("aud", json!([]))])), "`aud`"),
        (k.sign(&with(&[("aud", json!([AUD, 5]))])), "not a string"),
        (k.sign(&with(&[("aud", json!(null))])), "`aud`"),
        (k.sign(&with(&[("aud", json!(vec![AUD; 17]))])), "`aud`"),
        (
            k.sign(&with(&[("aud", json!(AUD.to_uppercase()))])),
            "not for a client",
        ),
        // `sub` is required even when another claim names the user.
        (k.sign(&with(&[("sub", json!(7))])), "`sub`"),
    ];
    for (t, needle) in refused {
        let r = capability(&h, &[("authorization", &bearer(&t))], 8726).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{needle}: {}", r.body);
        assert!(
            r.error().contains(needle),
            "{needle:?} not in {:?}",
            r.error()
        );
    }

    // `email_verified`: only JSON true puts the email on the new user; an absent claim does only
    // where the provider is configured with require_email_verified = false.
    let cases: Vec<(&Idp, &str, Option<Value>, bool)> = vec![
        (&idp, "ev-true", Some(json!(true)), true),
        (&idp, "ev-str-true", Some(json!("true")), false),
        (&idp, "ev-str-false", Some(json!("false")), false),
        (&idp, "ev-one", Some(json!(1)), false),
        (&idp, "ev-null", Some(Value::Null), false),
        (&idp, "ev-object", Some(json!({"value": true})), false),
        (&idp, "ev-false", Some(json!(false)), false),
        (&idp, "ev-absent", None, false),
        (&lax, "lax-absent", None, true),
        (&lax, "lax-str-true", Some(json!("true")), false),
        (&lax, "lax-false", Some(json!(false)), false),
    ];
    for (issuer, sub, verified, taken) in cases {
        let mut c = issuer.claims(sub);
        match verified {
            Some(v) => c["email_verified"] = v,
            None => {
                c.as_object_mut().unwrap().remove("email_verified");
            }
        }
        let r = capability(&h, &[("authorization", &bearer(&k.sign(&c)))], 8726).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{sub}: {}", r.body);
        let u = h
            .admin(Method::GET, &format!("/v1/users/{sub}"), None)
            .await;
        assert_eq!(u.status, StatusCode::OK, "{sub}: {}", u.body);
        let want = if taken {
            json!(format!("{sub}@idp.example.dev"))
        } else {
            Value::Null
        };
        assert_eq!(u.json()["email"], want, "{sub}");
    }
    h.finish().await;
}
on_both!(oidc_only_id_tokens_for_trusted_clients_sign_in);

// ---------------------------------------------------------------------------------------------
// The main app's session

fn app_settings(url: &str, timeout_ms: u64) -> AppSessionSettings {
    AppSessionSettings {
        url: Some(url.into()),
        cookie: Some(vec!["next-auth.session-token".into()]),
        timeout_ms: Some(timeout_ms),
        ..AppSessionSettings::default()
    }
}

async fn app_session_path(which: Which) {
    let (url, app) = start_app().await;
    let Some(h) = Harness::seeded(which, |s| Settings {
        app_session: app_settings(&url, 500),
        ..s
    })
    .await
    else {
        return;
    };
    let cookie = |v: &str| format!("podgate_other=1; next-auth.session-token={v}");

    // Browser flow: the app's session signs alice in.
    let r = h
        .get(
            "/api/proxy-auth?pod=myslug&port=8726",
            &[("cookie", &cookie("alice-session"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert!(r
        .header("location")
        .unwrap()
        .contains("/.podgate/callback?ticket="));
    assert_eq!(app.hits.load(Ordering::SeqCst), 1);
    // Cached for a few seconds: no second call.
    let r = capability(&h, &[("cookie", &cookie("alice-session"))], 8726).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(app.hits.load(Ordering::SeqCst), 1);

    // A new app user is created just in time, with the app's id.
    let r = capability(&h, &[("cookie", &cookie("newbie-session"))], 8726).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let u = h.admin(Method::GET, "/v1/users/app-user-77", None).await;
    assert_eq!(u.status, StatusCode::OK);
    assert_eq!(u.json()["email"], "newbie@example.dev");

    for (value, status, needle) in [
        ("nobody", StatusCode::UNAUTHORIZED, "no session"),
        ("expired", StatusCode::UNAUTHORIZED, "HTTP 401"),
        ("no-id", StatusCode::UNAUTHORIZED, "/user/id"),
        ("boom", StatusCode::BAD_GATEWAY, "answered HTTP 500"),
        ("slow", StatusCode::BAD_GATEWAY, "did not answer: timed out"),
    ] {
        let r = capability(&h, &[("cookie", &cookie(value))], 8726).await;
        assert_eq!(r.status, status, "{value}: {}", r.body);
        assert!(
            r.error().contains(needle),
            "{needle:?} not in {:?}",
            r.error()
        );
    }
    // The browser flow: a bad session means "sign in"; the app failing is a 502.
    let r = h
        .get(
            "/api/proxy-auth?pod=myslug&port=8726",
            &[("cookie", &cookie("nobody")), ("accept", "text/html")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert!(r.header("location").unwrap().contains("/dev/login"));
    let r = h
        .get(
            "/api/proxy-auth?pod=myslug&port=8726",
            &[("cookie", &cookie("boom"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    h.finish().await;
}
on_both!(app_session_path);

#[tokio::test]
async fn app_down_is_a_clear_502() {
    let url = dead_url().await;
    let h = Harness::seeded(Which::Sqlite, |s| Settings {
        app_session: app_settings(&url, 500),
        ..s
    })
    .await
    .unwrap();
    let r = capability(&h, &[("cookie", "next-auth.session-token=abc")], 8726).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert!(
        r.error()
            .starts_with("the main app's session endpoint did not answer: refused the connection"),
        "{}",
        r.error()
    );
    // Without the app's cookie the app is not asked at all.
    let r = capability(&h, &[], 8726).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    h.finish().await;
}

#[tokio::test]
async fn app_session_json_pointers_are_configurable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/me",
        get(|| async { Json(json!({"data": {"uid": 42, "mail": "bob@example.dev"}})) }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let h = Harness::seeded(Which::Sqlite, |s| Settings {
        app_session: AppSessionSettings {
            url: Some(format!("http://{addr}/me")),
            cookie: Some(vec!["sid".into()]),
            user_id_pointer: Some("/data/uid".into()),
            email_pointer: Some("/data/mail".into()),
            user_prefix: Some("app-".into()),
            ..AppSessionSettings::default()
        },
        ..s
    })
    .await
    .unwrap();
    let r = capability(&h, &[("cookie", "sid=x")], 8726).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let u = h.admin(Method::GET, "/v1/users/app-42", None).await;
    assert_eq!(u.status, StatusCode::OK, "{}", u.body);
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// API tokens

async fn api_token_lifecycle(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let alice = h.login("alice").await;
    let carol = h.login("carol").await;

    // Not signed in: 401, whatever the body (a malformed one or none is not read first).
    for body in [
        Some(json!({"name": "x", "expires_in_days": 30})),
        Some(json!({"name": 7})),
        None,
    ] {
        let r = h
            .send(request(Method::POST, "/api/proxy-tokens", &[], body))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    // Signed in, a malformed body: a 400 that says what is wrong.
    let r = h
        .send(request(
            Method::POST,
            "/api/proxy-tokens",
            &[("cookie", &alice)],
            Some(json!({"name": 7})),
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.json()["error"].as_str().is_some(), "{}", r.body);

    let r = h
        .send(request(
            Method::POST,
            "/api/proxy-tokens",
            &[("cookie", &alice)],
            Some(json!({"name": "CLI Setup - 1/10/2026", "expires_in_days": 30})),
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with(&format!("pg_{id}_")), "{token}");
    assert_eq!(token.len(), 80);
    let exp = chrono::DateTime::parse_from_rfc3339(created["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    assert!((exp - (now_unix() + 30 * 86_400)).abs() < 10);
    // init_url = {issuer}/p/base64url({"t": token, "n": null})
    let init_url = created["init_url"].as_str().unwrap().to_owned();
    let config = init_url.strip_prefix("http://127.0.0.1:8080/p/").unwrap();
    let decoded: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(config)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(decoded, json!({"t": token, "n": null}));

    // Listed without secrets, never used yet.
    let r = h
        .send(request(
            Method::GET,
            "/api/proxy-tokens",
            &[("cookie", &alice)],
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        !r.body.contains(&token) && !r.body.contains("hash"),
        "{}",
        r.body
    );
    let listed = &r.json()["tokens"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["state"], "active");
    assert_eq!(listed["last_used_at"], Value::Null);
    // Only its hash is stored.
    let stored = h.tdb.db.api_token_with_user(&id).await.unwrap().unwrap().0;
    assert_eq!(stored.token_hash.len(), 64);
    assert_ne!(stored.token_hash, token);

    // Exchanged for a capability; the use is recorded.
    let r = capability(&h, &[("authorization", &bearer(&token))], 8726).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let audit = h
        .admin(Method::GET, "/v1/audit?user=alice", None)
        .await
        .json();
    assert!(
        audit
            .to_string()
            .contains(&format!("capabilities/api-token:{id}")),
        "{audit}"
    );
    let r = h
        .send(request(
            Method::GET,
            "/api/proxy-tokens",
            &[("cookie", &alice)],
            None,
        ))
        .await;
    assert!(
        r.json()["tokens"][0]["last_used_at"].is_string(),
        "{}",
        r.body
    );

    // A token cannot mint tokens, nor list them, nor revoke others.
    let r = h
        .send(request(
            Method::POST,
            "/api/proxy-tokens",
            &[("authorization", &bearer(&token))],
            Some(json!({"name": "more", "expires_in_days": 1})),
        ))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = h
        .send(request(
            Method::GET,
            "/api/proxy-tokens",
            &[("authorization", &bearer(&token))],
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Wrong secret under a real id; a mangled token.
    let forged = format!("{}{}", &token[..token.len() - 4], "aaaa");
    for bad in [forged.as_str(), "pg_nope", "pg_"] {
        let r = capability(&h, &[("authorization", &bearer(bad))], 8726).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
        assert!(r.error().contains("not valid"), "{}", r.error());
    }

    // Carol cannot see or revoke alice's token.
    let r = h
        .send(request(
            Method::GET,
            "/api/proxy-tokens",
            &[("cookie", &carol)],
            None,
        ))
        .await;
    assert_eq!(r.json()["tokens"], json!([]));
    let r = h
        .send(request(
            Method::DELETE,
            &format!("/api/proxy-tokens/{id}"),
            &[("cookie", &carol)],
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A cookie-authenticated change from a pod's origin is refused (pods are same-site).
    let r = h
        .send(request(
            Method::DELETE,
            &format!("/api/proxy-tokens/{id}"),
            &[
                ("cookie", &alice),
                ("origin", "http://localhost-8726-pod-evil.localhost:10000"),
            ],
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    // Revoked: refused on the very next use.
    let r = h
        .send(request(
            Method::DELETE,
            &format!("/api/proxy-tokens/{id}"),
            &[("cookie", &alice), ("origin", "http://127.0.0.1:8080")],
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["token"]["state"], "revoked");
    let r = capability(&h, &[("authorization", &bearer(&token))], 8726).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.error().contains("revoked"), "{}", r.error());

    // Expired: refused too.
    let r = h
        .send(request(
            Method::POST,
            "/api/proxy-tokens",
            &[("cookie", &alice)],
            Some(json!({"name": "short", "expires_in_days": 1, "prefix": "proj-1"})),
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let short = r.json();
    assert!(short["init_url"].as_str().unwrap().len() > 40);
    let short_token = short["token"].as_str().unwrap().to_owned();
    let short_id = short["id"].as_str().unwrap().to_owned();
    assert_eq!(
        capability(&h, &[("authorization", &bearer(&short_token))], 8726)
            .await
            .status,
        StatusCode::OK
    );
    sqlx::query("UPDATE api_tokens SET expires_at = $1 WHERE id = $2")
        .bind(now_unix() - 1)
        .bind(&short_id)
        .execute(h.tdb.db.pool())
        .await
        .unwrap();
    let r = capability(&h, &[("authorization", &bearer(&short_token))], 8726).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.error().contains("expired"), "{}", r.error());

    // A token may revoke itself (a CLI's logout), no other.
    let r = h
        .send(request(
            Method::POST,
            "/api/proxy-tokens",
            &[("cookie", &alice)],
            Some(json!({"name": "self"})),
        ))
        .await;
    let own = r.json();
    let own_token = own["token"].as_str().unwrap().to_owned();
    let r = h
        .send(request(
            Method::DELETE,
            &format!("/api/proxy-tokens/{short_id}"),
            &[("authorization", &bearer(&own_token))],
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = h
        .send(request(
            Method::DELETE,
            &format!("/api/proxy-tokens/{}", own["id"].as_str().unwrap()),
            &[("authorization", &bearer(&own_token))],
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        capability(&h, &[("authorization", &bearer(&own_token))], 8726)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // Bad requests.
    for body in [
        json!({"name": "", "expires_in_days": 30}),
        json!({"name": "x", "expires_in_days": 0}),
        json!({"name": "x", "expires_in_days": 366}),
        json!({"name": "x", "prefix": "a b"}),
        json!({"name": "x", "extra": 1}),
    ] {
        let r = h
            .send(request(
                Method::POST,
                "/api/proxy-tokens",
                &[("cookie", &alice)],
                Some(body.clone()),
            ))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
    }

    // Revoked and expired tokens stay listed, with their state.
    let list = h
        .send(request(
            Method::GET,
            "/api/proxy-tokens",
            &[("cookie", &alice)],
            None,
        ))
        .await
        .json();
    assert_eq!(list["tokens"].as_array().unwrap().len(), 3);
    h.finish().await;
}
on_both!(api_token_lifecycle);

/// The `jti` claim of a compact JWS.
fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

/// The filter configuration's `revoked_jti`, sorted, as the admin endpoint serves it (the same
/// `filter_config::build` the xDS push uses).
async fn revoked_jti(h: &Harness) -> Vec<String> {
    let r = h.admin(Method::GET, "/v1/filter-config", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let mut listed: Vec<String> = r.json()["revoked_jti"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    listed
}

fn sorted(jtis: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = jtis.iter().map(|j| j.to_string()).collect();
    v.sort();
    v
}

async fn revoking_an_api_token_revokes_its_capabilities(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let alice = h.login("alice").await;
    let mut tokens = Vec::new();
    for name in ["T1", "T2"] {
        let r = h
            .send(request(
                Method::POST,
                "/api/proxy-tokens",
                &[("cookie", &alice)],
                Some(json!({"name": name})),
            ))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let created = r.json();
        tokens.push((
            created["id"].as_str().unwrap().to_owned(),
            created["token"].as_str().unwrap().to_owned(),
        ));
    }
    let [(t1_id, t1), (t2_id, t2)] = <[(String, String); 2]>::try_from(tokens).unwrap();
    let mint = |headers: Vec<(&'static str, String)>| {
        let h = &h;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = capability(h, &headers, 8726).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            jti_of(r.json()["token"].as_str().unwrap())
        }
    };
    let t1_a = mint(vec![("authorization", bearer(&t1))]).await;
    let t1_b = mint(vec![("authorization", bearer(&t1))]).await;
    let t1_expired = mint(vec![("authorization", bearer(&t1))]).await;
    let t2_a = mint(vec![("authorization", bearer(&t2))]).await;
    let by_session = mint(vec![("cookie", alice.clone())]).await;
    // The audit names the API token of each mint, and no token for the session's.
    let audit = h
        .admin(Method::GET, "/v1/audit?user=alice", None)
        .await
        .json();
    let minted_with = |jti: &str| {
        audit
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["jti"] == jti)
            .unwrap()["api_token_id"]
            .clone()
    };
    assert_eq!(minted_with(&t1_a), json!(t1_id));
    assert_eq!(minted_with(&t2_a), json!(t2_id));
    assert_eq!(minted_with(&by_session), Value::Null);
    sqlx::query("UPDATE token_audit SET expires_at = $1 WHERE jti = $2")
        .bind(now_unix() - 1)
        .bind(&t1_expired)
        .execute(h.tdb.db.pool())
        .await
        .unwrap();

    // Nothing revoked yet.
    assert!(revoked_jti(&h).await.is_empty());

    // Revoking T1 lists exactly its unexpired capabilities, and asks for a push at once (a
    // notification left over from the seeding is drained first).
    let _ = tokio::time::timeout(Duration::from_millis(50), h.state.envoy_config_change()).await;
    let revoke = |id: String| {
        let h = &h;
        let alice = alice.clone();
        async move {
            let r = h
                .send(request(
                    Method::DELETE,
                    &format!("/api/proxy-tokens/{id}"),
                    &[("cookie", &alice)],
                    None,
                ))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r.json()["token"]["revoked_at"].clone()
        }
    };
    let revoked_at = revoke(t1_id.clone()).await;
    tokio::time::timeout(Duration::from_secs(1), h.state.envoy_config_change())
        .await
        .expect("the revocation asks the xDS sync task for a rebuild");
    let expected = sorted(&[&t1_a, &t1_b]);
    assert_eq!(revoked_jti(&h).await, expected);
    let ring = h.state.keys().unwrap();
    let built = podgate::filter_config::build(h.state.db(), h.state.config(), &ring)
        .await
        .unwrap();
    let mut pushed = built.revoked_jti.clone();
    pushed.sort();
    assert_eq!(pushed, expected, "what the xDS push sends");

    // Revoking again changes nothing: same revocation time, same list.
    assert_eq!(revoke(t1_id.clone()).await, revoked_at);
    assert_eq!(revoked_jti(&h).await, expected);

    // The longest-lived come first when the list is cut.
    sqlx::query("UPDATE token_audit SET expires_at = expires_at + 60 WHERE jti = $1")
        .bind(&t1_b)
        .execute(h.tdb.db.pool())
        .await
        .unwrap();
    let now = now_unix();
    assert_eq!(
        h.tdb
            .db
            .revoked_capabilities(now, now - 100_000, 1)
            .await
            .unwrap(),
        vec![t1_b.clone()]
    );

    // An expired capability drops out of the list.
    sqlx::query("UPDATE token_audit SET expires_at = $1 WHERE jti = $2")
        .bind(now_unix() - 1)
        .bind(&t1_a)
        .execute(h.tdb.db.pool())
        .await
        .unwrap();
    assert_eq!(revoked_jti(&h).await, sorted(&[&t1_b]));

    // T2 and the session's capability were never listed; T2 still mints. Revoking T2 adds its
    // capability, never the session's.
    let t2_b = mint(vec![("authorization", bearer(&t2))]).await;
    revoke(t2_id).await;
    assert_eq!(revoked_jti(&h).await, sorted(&[&t1_b, &t2_a, &t2_b]));
    assert!(!revoked_jti(&h).await.contains(&by_session));
    h.finish().await;
}
on_both!(revoking_an_api_token_revokes_its_capabilities);

async fn oidc_user_manages_tokens(which: Which) {
    let k = es_key(3, "es");
    let idp = Idp::start(&[&k]).await;
    let Some(h) = Harness::seeded(which, |s| Settings {
        oidc: vec![idp.settings("test", 5)],
        ..s
    })
    .await
    else {
        return;
    };
    let id_token = k.sign(&idp.claims("bob"));
    let r = h
        .send(request(
            Method::POST,
            "/api/proxy-tokens",
            &[("authorization", &bearer(&id_token))],
            Some(json!({"name": "from the browser app", "expires_in_days": 7})),
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    // bob is a member of t1: the API token reaches the team port.
    let r = capability(&h, &[("authorization", &bearer(&token))], 8726).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let list = h
        .send(request(
            Method::GET,
            "/api/proxy-tokens",
            &[("authorization", &bearer(&id_token))],
            None,
        ))
        .await
        .json();
    assert_eq!(list["tokens"][0]["created_via"], "oidc:test");
    h.finish().await;
}
on_both!(oidc_user_manages_tokens);

#[tokio::test]
async fn failed_api_token_attempts_are_rate_limited_per_client() {
    let h = Harness::seeded(Which::Sqlite, |s| s).await.unwrap();
    let alice = h.login("alice").await;
    let r = h
        .send(request(
            Method::POST,
            "/api/proxy-tokens",
            &[("cookie", &alice)],
            Some(json!({"name": "t"})),
        ))
        .await;
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let forged = format!("{}{}", &token[..token.len() - 4], "aaaa");
    for _ in 0..podgate::config::limits::DEFAULT_API_TOKEN_FAILURES.burst {
        let r = capability(&h, &[("authorization", &bearer(&forged))], 8726).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // The bucket is empty: even the valid token waits.
    for t in [&forged, &token] {
        let r = capability(&h, &[("authorization", &bearer(t))], 8726).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert!(r.error().contains("too many failed API-token attempts"));
        // One failure comes back every 6 s (10 a minute): that is the wait.
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=6).contains(&wait), "{wait}");
    }
    // Another client is not affected.
    let mut req = request(
        Method::POST,
        "/v1/capabilities",
        &[("authorization", &bearer(&token))],
        Some(json!({"pod": "myslug", "port": 8726})),
    );
    req.extensions_mut()
        .insert(ConnectInfo("198.51.100.7:1".parse::<SocketAddr>().unwrap()));
    assert_eq!(h.send(req).await.status, StatusCode::OK);
    h.finish().await;
}

#[tokio::test]
async fn setup_page_and_install_script() {
    let h = Harness::seeded(Which::Sqlite, |s| s).await.unwrap();
    let alice = h.login("alice").await;
    let created = h
        .send(request(
            Method::POST,
            "/api/proxy-tokens",
            &[("cookie", &alice)],
            Some(json!({"name": "cli", "prefix": "proj-1"})),
        ))
        .await
        .json();
    let init_url = created["init_url"].as_str().unwrap().to_owned();
    let path = init_url.strip_prefix("http://127.0.0.1:8080").unwrap();

    let r = h.get(path, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("not released yet") && r.body.contains("install.sh?init_url="));
    assert!(r.body.contains("proj-1"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(
        h.get("/p/not-base64!", &[]).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(h.get("/p/e30", &[]).await.status, StatusCode::BAD_REQUEST);

    let enc = podgate_protocol::redirect::encode_query_value(&init_url);
    let r = h
        .get(&format!("/api/download/install.sh?init_url={enc}"), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.starts_with("#!/usr/bin/env bash\n"));
    assert!(r.body.contains(&format!("INIT_URL='{init_url}'")));
    // The script refuses to pretend: it says the CLI is not released and exits 1.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("install.sh");
    std::fs::write(&script, &r.body).unwrap();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not released yet"));
    // Without init_url: the same answer.
    let r = h.get("/api/download/install.sh", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    std::fs::write(&script, &r.body).unwrap();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // Shell metacharacters, other hosts, other paths: a script that only says why and exits 2,
    // nothing of the input in it.
    for bad in [
        format!("{init_url}';touch /tmp/pwned;'"),
        format!("{init_url}$(touch /tmp/pwned)"),
        format!("{init_url}`id`"),
        format!("{init_url}\"; id; \""),
        format!("{init_url}\nid"),
        format!("{init_url}?a=b"),
        init_url.replace("127.0.0.1:8080", "evil.example.dev"),
        init_url.replace("/p/", "/x/"),
        init_url.replace("http://", "file://"),
        "http://127.0.0.1:8080/p/".to_owned(),
    ] {
        let r = h
            .get(
                &format!(
                    "/api/download/install.sh?init_url={}",
                    podgate_protocol::redirect::encode_query_value(&bad)
                ),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{bad}: {}", r.body);
        assert!(r.body.starts_with("#!/usr/bin/env bash\n"), "{}", r.body);
        assert!(r.body.trim_end().ends_with("exit 2"), "{}", r.body);
        for part in ["pwned", "id;", "`id`", "evil", "/x/", "file:", "eyJ", "a=b"] {
            assert!(!r.body.contains(part), "{part} in {}", r.body);
        }
        assert!(
            !r.body.contains("curl") && !r.body.contains("podgate-cli"),
            "{}",
            r.body
        );
    }
    // init_url given twice: refused, not guessed.
    let r = h
        .get(
            &format!("/api/download/install.sh?init_url={enc}&init_url={enc}"),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    h.finish().await;
}

#[tokio::test]
async fn cors_for_configured_browser_apps_only() {
    let h = Harness::seeded(Which::Sqlite, |s| Settings {
        cors_origins: Some(vec!["http://app.localhost:3000".into()]),
        ..s
    })
    .await
    .unwrap();
    let pre = |origin: &str| {
        request(
            Method::OPTIONS,
            "/v1/capabilities",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
            None,
        )
    };
    let r = h.send(pre("http://app.localhost:3000")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.localhost:3000")
    );
    assert!(r
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    let r = h
        .send(pre("http://localhost-8726-pod-evil.localhost:10000"))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let alice = h.login("alice").await;
    let r = capability(
        &h,
        &[("cookie", &alice), ("origin", "http://app.localhost:3000")],
        8726,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.localhost:3000")
    );
    let r = capability(
        &h,
        &[("cookie", &alice), ("origin", "http://other.localhost")],
        8726,
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    h.finish().await;
}
