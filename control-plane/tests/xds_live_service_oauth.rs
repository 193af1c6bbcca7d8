//! Services with an OAuth credential, live, through a real Envoy fed by the control plane's ADS
//! server: the control plane obtains short-lived access tokens (4 s) from the testkit's token
//! endpoint and renews them; the TLS upstream receives `Bearer <token>` and nothing of the
//! caller's. Across several token lifetimes, every request (one every 50 ms) reaches the
//! upstream with a token the endpoint issued and that had not expired; with the endpoint down,
//! the service is answered 502 `upstream_credential_unavailable` (no request reaches the
//! upstream without a credential) until the endpoint is back, or a static fallback is
//! configured, which is then used; the status endpoints show expiry and the
//! last error, and no admin answer and no log line holds a token or a secret. With the control
//! plane gone, Envoy stops sending a token when it expires. A Coze JWT app
//! works as the credential the same way, and `TRACE` to a service is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod xds_support;

use std::time::{Duration, Instant, SystemTime};

use podgate_testkit::{FakeTokenEndpoint, TlsFront, TokenClient};
use reqwest::header::HOST;
use serde_json::{json, Value};
use xds_support::*;

const CLIENT_SECRET: &str = "oauth-client-secret-2c7e91d4";
const FALLBACK_KEY: &str = "sk-fallback-9a0b1c2d3e4f";
/// Every token the fake endpoint issues starts with this.
const TOKEN_PREFIX: &str = "fake-at-";

/// Polls `GET /v1/models` on service `api` with `bearer` until it is answered `want`.
async fn until_models(stack: &Stack, bearer: &str, want: u16, within: Duration) {
    let headers = [("authorization", bearer)];
    until_service_status(stack, "api", "/v1/models", &headers, want, within).await;
}

/// The token endpoint (4 s tokens for client `podgate` with [`CLIENT_SECRET`]), the stack, and
/// the upstream behind its TLS front.
async fn client_secret_setup() -> (FakeTokenEndpoint, Stack, FakePod, TlsFront) {
    let idp = FakeTokenEndpoint::start(
        vec![TokenClient {
            client_id: "podgate".into(),
            secret: Some(CLIENT_SECRET.into()),
            public_key_pem: None,
        }],
        Duration::from_secs(4),
    )
    .await
    .unwrap();
    let stack = Stack::start(&[]).await;
    let upstream = FakePod::start("upstream").await.unwrap();
    let front = TlsFront::start(upstream.addr()).await.unwrap();
    (idp, stack, upstream, front)
}

/// `GET /v1/services/api/credential/status`.
async fn credential_status(stack: &Stack) -> Value {
    stack
        .cp
        .admin(
            reqwest::Method::GET,
            "/v1/services/api/credential/status",
            None,
        )
        .await
}

/// `POST /api/proxy-tokens` with the stack's session: the token.
async fn api_token(stack: &Stack) -> String {
    let resp = stack
        .http
        .post(format!("http://{}/api/proxy-tokens", stack.cp.http))
        .header(reqwest::header::COOKIE, &stack.session)
        .json(&json!({ "name": "oauth" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let body: Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oauth_tokens_are_renewed_before_they_expire_and_never_shown() {
    let (idp, stack, upstream, front) = client_secret_setup().await;
    let oauth = json!({
        "token_url": idp.url(),
        "grant": "client_credentials",
        "client_id": "podgate",
        "client_secret": CLIENT_SECRET,
        "scope": "models",
    });
    let created = stack
        .cp
        .admin(
            reqwest::Method::POST,
            "/v1/services",
            Some(json!({
                "name": "api",
                "owner_id": USER,
                "sharing": "owner",
                "upstream_url": format!("https://localhost:{}", front.addr().port()),
                "ca_pem": front.ca_pem(),
                "credential": {"oauth": oauth},
            })),
        )
        .await;
    let shown = created.to_string();
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
    assert_eq!(
        created["oauth"]["client_auth"], "client_secret_basic",
        "{shown}"
    );
    assert_eq!(created["oauth"]["sealed"], true, "{shown}");
    assert!(created["credential"].is_null(), "{shown}");

    let bearer = format!("Bearer {}", api_token(&stack).await);
    until_models(&stack, &bearer, 200, Duration::from_secs(5)).await;

    // Three token lifetimes, a request every 50 ms: each answered 200 by the upstream, with a
    // token the endpoint issued that had not expired when the answer came back.
    let start = Instant::now();
    let mut sent = 0;
    upstream.reset();
    while start.elapsed() < Duration::from_secs(12) {
        let (status, body) =
            get_service(&stack, "api", "/v1/models", &[("authorization", &bearer)]).await;
        let answered = SystemTime::now();
        assert_eq!(status, 200, "request {sent}: {body}\n{}", stack.logs());
        sent += 1;
        let last = upstream.requests().pop().unwrap();
        let got = last.header_all("authorization");
        assert_eq!(got.len(), 1, "{:?}", last.headers);
        let token = got[0].strip_prefix("Bearer ").unwrap();
        assert!(
            idp.valid_at(token, answered),
            "request {sent}: token {token} not valid at {answered:?}: {:?}",
            idp.issued()
        );
        assert!(!format!("{:?}", last.headers).contains("pg_"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.requests().len(), sent);
    let issued = idp.issued();
    assert!(sent > 100, "{sent}");
    assert!(issued.len() >= 5, "{issued:?}");
    assert!(issued.iter().all(|t| t.how == "client_secret"));
    assert_eq!(issued[0].scope.as_deref(), Some("models"));

    let status = credential_status(&stack).await;
    assert_eq!(status["source"], "oauth", "{status}");
    assert!(status["expires_at"].as_i64().unwrap() > 0, "{status}");
    assert!(status["last_renewal"].as_i64().is_some(), "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    // Operators see the same in `/metrics`: every token asked for, and the expiry of the one
    // pushed.
    let fetched = cp_metric(
        &stack,
        "podgate_service_oauth_fetches_total",
        &[("service", "api"), ("outcome", "ok")],
    )
    .await;
    assert!(
        fetched >= issued.len() as f64,
        "{fetched} < {}",
        issued.len()
    );
    let expires = cp_metric(
        &stack,
        "podgate_service_oauth_token_expires_at_seconds",
        &[("service", "api")],
    )
    .await;
    assert!(
        expires > (status["expires_at"].as_i64().unwrap() - 10) as f64,
        "{expires} {status}"
    );

    // The endpoint goes down: the token expires, and with no fallback the service is answered
    // 502 `upstream_credential_unavailable`, so nothing reaches the upstream without a
    // credential.
    idp.set_up(false);
    let (code, body) = stack
        .cp
        .admin_answer(
            reqwest::Method::POST,
            "/v1/services/api/credential/refresh",
            None,
        )
        .await;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("503"), "{body}");
    let start = Instant::now();
    loop {
        let (status, body) =
            get_service(&stack, "api", "/v1/models", &[("authorization", &bearer)]).await;
        if status == 502 {
            break;
        }
        assert_eq!(status, 200, "{body}\n{}", stack.logs());
        assert!(start.elapsed() < Duration::from_secs(6), "{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = upstream.requests().len();
    for _ in 0..5 {
        let (status, body) =
            get_service(&stack, "api", "/v1/models", &[("authorization", &bearer)]).await;
        assert_eq!(status, 502, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "upstream_credential_unavailable", "{body}");
        assert!(body["hint"].is_string(), "{body}");
    }
    // A browser page load gets the page of that answer.
    let page = stack
        .http
        .get(format!("http://{}/", stack.envoy.listener))
        .header(HOST, service_host("api"))
        .header("authorization", &bearer)
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 502);
    let page = page.text().await.unwrap();
    assert!(page.contains("Service unavailable"), "{page}");
    assert_eq!(upstream.requests().len(), before);
    for r in upstream.requests() {
        let token = r.header_all("authorization")[0]
            .strip_prefix("Bearer ")
            .unwrap()
            .to_owned();
        assert!(issued
            .iter()
            .chain(idp.issued().iter())
            .any(|t| t.token == token));
    }
    // Envoy stops at the token's expiry, the control plane a moment before it pushes the next:
    // its status may still show the token for that moment.
    let start = Instant::now();
    let status = loop {
        let status = credential_status(&stack).await;
        if status["source"] == "none" || start.elapsed() > Duration::from_secs(3) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["source"], "none", "{status}");
    assert!(status["expires_at"].is_null(), "{status}");
    assert!(
        status["last_error"].as_str().unwrap().contains("503"),
        "{status}"
    );
    assert!(status["failures"].as_u64().unwrap() >= 1, "{status}");
    let failed = cp_metric(
        &stack,
        "podgate_service_oauth_fetches_total",
        &[("service", "api"), ("outcome", "failed")],
    )
    .await;
    assert!(failed >= 1.0, "{failed}");
    let expires = cp_metric(
        &stack,
        "podgate_service_oauth_token_expires_at_seconds",
        &[("service", "api")],
    )
    .await;
    assert_eq!(expires, 0.0, "no token pushed");
    let ready = stack
        .http
        .get(format!("http://{}/readyz", stack.cp.http))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        ready["services_without_credential"],
        json!(["api"]),
        "{ready}"
    );

    // Back up: the renewal task obtains a token again and requests flow with it.
    idp.set_up(true);
    until_models(&stack, &bearer, 200, Duration::from_secs(70)).await;
    let last = upstream.requests().pop().unwrap();
    assert!(
        last.header_all("authorization")[0].starts_with(&format!("Bearer {TOKEN_PREFIX}")),
        "{:?}",
        last.headers
    );
    // Down again, the token dropped: 502 again.
    idp.set_up(false);
    stack
        .cp
        .admin(
            reqwest::Method::POST,
            "/v1/services/api/credential/clear",
            None,
        )
        .await;
    until_models(&stack, &bearer, 502, Duration::from_secs(5)).await;

    // A static fallback: used while the endpoint stays down.
    stack
        .cp
        .admin(
            reqwest::Method::PUT,
            "/v1/services/api/credential",
            Some(json!({"oauth": oauth, "value": format!("Bearer {FALLBACK_KEY}")})),
        )
        .await;
    until_models(&stack, &bearer, 200, Duration::from_secs(5)).await;
    let last = upstream.requests().pop().unwrap();
    assert_eq!(
        last.header_all("authorization"),
        vec![format!("Bearer {FALLBACK_KEY}").as_str()]
    );
    let status = credential_status(&stack).await;
    assert_eq!(status["source"], "fallback", "{status}");

    // Back up: a forced refresh brings an OAuth token at once.
    idp.set_up(true);
    let status = stack
        .cp
        .admin(
            reqwest::Method::POST,
            "/v1/services/api/credential/refresh",
            None,
        )
        .await;
    assert_eq!(status["source"], "oauth", "{status}");
    let start = Instant::now();
    loop {
        let (code, body) =
            get_service(&stack, "api", "/v1/models", &[("authorization", &bearer)]).await;
        assert_eq!(code, 200, "{body}");
        let last = upstream.requests().pop().unwrap();
        if last.header_all("authorization")[0].starts_with(&format!("Bearer {TOKEN_PREFIX}")) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The fallback in another header: while the OAuth token is in force, a caller's own copy of
    // that header does not reach the upstream either, as it would not with the fallback in force.
    stack
        .cp
        .admin(
            reqwest::Method::PUT,
            "/v1/services/api/credential",
            Some(json!({"oauth": oauth, "header": "x-api-key", "value": FALLBACK_KEY})),
        )
        .await;
    let caller = [
        ("authorization", bearer.as_str()),
        ("x-api-key", "the-callers-own"),
    ];
    let with_token = |r: &podgate_testkit::Recorded| {
        r.header_all("authorization")
            .first()
            .is_some_and(|v| v.starts_with(&format!("Bearer {TOKEN_PREFIX}")))
    };
    let start = Instant::now();
    loop {
        let (code, body) = get_service(&stack, "api", "/v1/models", &caller).await;
        assert_eq!(code, 200, "{body}");
        let last = upstream.requests().pop().unwrap();
        if with_token(&last) && last.header_all("x-api-key").is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the upstream still gets {:?}\n{}",
            last.headers,
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let (code, body) = get_service(&stack, "api", "/v1/models", &caller).await;
        assert_eq!(code, 200, "{body}");
        let last = upstream.requests().pop().unwrap();
        assert!(with_token(&last), "{:?}", last.headers);
        assert!(
            last.header_all("x-api-key").is_empty(),
            "{:?}",
            last.headers
        );
    }
    // Clear: the cached token is dropped and answered with the status.
    let status = stack
        .cp
        .admin(
            reqwest::Method::POST,
            "/v1/services/api/credential/clear",
            None,
        )
        .await;
    assert!(status["service"] == "api", "{status}");

    // No admin answer and no log line holds a token or a secret.
    for path in [
        "/v1/services",
        "/v1/services/api",
        "/v1/services/api/credential/status",
        "/v1/filter-config",
    ] {
        let (_, answer) = stack
            .cp
            .admin_answer(reqwest::Method::GET, path, None)
            .await;
        for secret in [TOKEN_PREFIX, CLIENT_SECRET, FALLBACK_KEY] {
            assert!(!answer.contains(secret), "{path}: {answer}");
        }
    }
    let logs = stack.cp.log();
    for secret in [TOKEN_PREFIX, CLIENT_SECRET, FALLBACK_KEY] {
        assert!(!logs.contains(secret), "{secret} in the logs");
    }
}

/// Envoy holds the last token it was pushed, and its expiry: with every control plane gone (no
/// one to push the next token), it sends the token until it expires and never after, then the
/// static fallback where there is one, and otherwise answers 502 without forwarding anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_control_plane_gone_envoy_never_sends_an_expired_token() {
    let (idp, mut stack, upstream, front) = client_secret_setup().await;
    let oauth = json!({
        "token_url": idp.url(),
        "grant": "client_credentials",
        "client_id": "podgate",
        "client_secret": CLIENT_SECRET,
    });
    // `api` has the token alone; `keyed` has a static key in `x-api-key` beside it.
    for (name, credential) in [
        ("api", json!({"oauth": oauth})),
        (
            "keyed",
            json!({"oauth": oauth, "header": "x-api-key", "value": FALLBACK_KEY}),
        ),
    ] {
        stack
            .cp
            .admin(
                reqwest::Method::POST,
                "/v1/services",
                Some(json!({
                    "name": name,
                    "owner_id": USER,
                    "sharing": "owner",
                    "upstream_url": format!("https://localhost:{}", front.addr().port()),
                    "ca_pem": front.ca_pem(),
                    "credential": credential,
                })),
            )
            .await;
    }
    let bearer = format!("Bearer {}", api_token(&stack).await);
    let caller = [
        ("authorization", bearer.as_str()),
        ("x-api-key", "the-callers-own"),
    ];
    // Both exchanged and forwarded with a token before the control plane goes.
    until_models(&stack, &bearer, 200, Duration::from_secs(10)).await;
    let start = Instant::now();
    loop {
        let (status, body) = get_service(&stack, "keyed", "/v1/models", &caller).await;
        assert_eq!(status, 200, "{body}\n{}", stack.logs());
        let last = upstream.requests().pop().unwrap();
        if last.header_all("x-api-key").is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.cp.kill();
    let killed = Instant::now();
    let (mut refused, mut fallback) = (0, 0);
    // Past the last token's expiry (4 s at most), a request to each service every 50 ms.
    while killed.elapsed() < Duration::from_secs(6) {
        let (status, body) = get_service(&stack, "api", "/v1/models", &caller).await;
        let answered = SystemTime::now();
        if status == 200 {
            let last = upstream.requests().pop().unwrap();
            let got = last.header_all("authorization");
            let token = got[0].strip_prefix("Bearer ").unwrap();
            assert!(
                got.len() == 1 && idp.valid_at(token, answered),
                "api: {got:?} sent at {answered:?} {:?}",
                idp.issued()
            );
            assert_eq!(refused, 0, "a token sent after the 502s began");
        } else {
            assert_eq!(status, 502, "{body}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["code"], "upstream_credential_unavailable", "{body}");
            refused += 1;
        }
        let (status, body) = get_service(&stack, "keyed", "/v1/models", &caller).await;
        let answered = SystemTime::now();
        assert_eq!(status, 200, "{body}");
        let last = upstream.requests().pop().unwrap();
        match last.header_all("authorization").first() {
            Some(got) => {
                let token = got.strip_prefix("Bearer ").unwrap();
                assert!(
                    idp.valid_at(token, answered),
                    "keyed: {got} at {answered:?}"
                );
                assert!(last.header_all("x-api-key").is_empty());
                assert_eq!(fallback, 0, "the token sent after the fallback");
            }
            None => {
                assert_eq!(last.header_all("x-api-key"), vec![FALLBACK_KEY]);
                fallback += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused > 0 && fallback > 0, "{refused} {fallback}");
}

/// A Coze JWT app as the credential, as a product document sets it up (app id, key id, RSA key,
/// `api.coze.com` audience, a session name): the control plane gets its token in Coze's request
/// shape, the upstream receives `Bearer <that token>` through Envoy and the caller's API token
/// never; a `TRACE`, which an upstream could echo with the credential in it, is refused by the
/// filter and reaches nothing. Setting the same app again with a fallback beside it keeps the
/// token in force, and so does a restart of the control plane while the endpoint is slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coze_jwt_app_is_the_credential_and_trace_is_refused() {
    let idp = FakeTokenEndpoint::start(
        vec![TokenClient {
            client_id: "1150123456".into(),
            secret: None,
            public_key_pem: Some(include_str!("fixtures/service_oauth_rs256.pub.pem").into()),
        }],
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let mut stack = Stack::start(&[]).await;
    let upstream = FakePod::start("coze").await.unwrap();
    let front = TlsFront::start(upstream.addr()).await.unwrap();
    let created = stack
        .cp
        .admin(
            reqwest::Method::POST,
            "/v1/services",
            Some(json!({
                "name": "api",
                "owner_id": USER,
                "sharing": "owner",
                "upstream_url": format!("https://localhost:{}", front.addr().port()),
                "ca_pem": front.ca_pem(),
                "credential": {"oauth": created_oauth(&idp)},
            })),
        )
        .await;
    assert!(!created.to_string().contains("PRIVATE KEY"), "{created}");
    // What admins see of its shape: names, never values.
    let shown = &created["oauth"];
    assert_eq!(shown["request_body"], "json", "{created}");
    assert_eq!(shown["assertion_in"], "authorization_header", "{created}");
    assert_eq!(
        shown["token_params"],
        json!(["duration_seconds"]),
        "{created}"
    );
    assert_eq!(
        shown["assertion_claims"],
        json!(["session_name"]),
        "{created}"
    );
    assert!(!created.to_string().contains("my-app-session"), "{created}");
    let api_token = api_token(&stack).await;
    let bearer = format!("Bearer {api_token}");
    until_models(&stack, &bearer, 200, Duration::from_secs(10)).await;
    let issued = idp.issued();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0].how, "coze_jwt");
    assert_eq!(issued[0].requested_seconds, Some(86399));
    assert_eq!(issued[0].claims["session_name"], "my-app-session");
    let last = upstream.requests().pop().unwrap();
    assert_eq!(
        last.header_all("authorization"),
        vec![format!("Bearer {}", issued[0].token).as_str()]
    );
    assert!(!format!("{:?}", last.headers).contains(&api_token));

    let before = upstream.requests().len();
    let trace = stack
        .http
        .request(
            reqwest::Method::from_bytes(b"TRACE").unwrap(),
            format!("http://{}/", stack.envoy.listener),
        )
        .header(HOST, service_host("api"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(trace.status().as_u16(), 405);
    assert!(trace.headers().contains_key("allow"));
    let body: Value = trace.json().await.unwrap();
    assert_eq!(body["code"], "trace_refused", "{body}");
    assert_eq!(
        upstream.requests().len(),
        before,
        "TRACE reached the upstream"
    );

    // The same app set again with a static fallback beside it (a migration step: keep the API
    // key until the JWT app works): the token in force stays, nothing is fetched again.
    let (code, body) = stack
        .cp
        .admin_answer(
            reqwest::Method::PUT,
            "/v1/services/api/credential",
            Some(json!({"oauth": created_oauth(&idp), "value": format!("Bearer {FALLBACK_KEY}")})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    for _ in 0..20 {
        let (status, body) =
            get_service(&stack, "api", "/v1/models", &[("authorization", &bearer)]).await;
        assert_eq!(status, 200, "{body}");
        let last = upstream.requests().pop().unwrap();
        assert_eq!(
            last.header_all("authorization"),
            vec![format!("Bearer {}", issued[0].token).as_str()],
            "the token in force was dropped"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(idp.issued().len(), 1, "{:?}", idp.issued());

    // The control plane restarts while the token endpoint is slow (2 s an answer): Envoy keeps
    // the token it has until the restarted control plane has its own, and is never pushed the
    // fallback (or nothing) meanwhile.
    idp.set_delay(Duration::from_secs(2));
    let (code, _) = stack.cp.terminate();
    assert_eq!(code, 0, "{}", stack.cp.log());
    stack.cp.spawn().await;
    let restarted = Instant::now();
    while restarted.elapsed() < Duration::from_secs(4) || idp.issued().len() < 2 {
        let (status, body) =
            get_service(&stack, "api", "/v1/models", &[("authorization", &bearer)]).await;
        assert_eq!(status, 200, "{body}");
        let last = upstream.requests().pop().unwrap();
        let got = last.header_all("authorization");
        assert!(
            got.len() == 1 && got[0].starts_with(&format!("Bearer {TOKEN_PREFIX}")),
            "after the restart the upstream got {got:?}\n{}",
            stack.logs()
        );
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Coze app's OAuth configuration of [`a_coze_jwt_app_is_the_credential_and_trace_is_refused`].
fn created_oauth(idp: &FakeTokenEndpoint) -> Value {
    json!({
        "token_url": idp.coze_url(),
        "grant": "jwt_bearer",
        "iss": "1150123456",
        "aud": podgate_testkit::COZE_AUDIENCE,
        "key_id": "coze-public-key-id",
        "private_key_pem": include_str!("fixtures/service_oauth_rs256.pem"),
        "request_body": "json",
        "assertion_in": "authorization_header",
        "token_params": {"duration_seconds": 86399},
        "assertion_claims": {"session_name": "my-app-session"},
    })
}
