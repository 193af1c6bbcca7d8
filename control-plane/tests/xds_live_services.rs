//! Services, live, through a real Envoy 1.40 fed by the control plane's ADS server: an upstream
//! API behind TLS (a recording fake behind a TLS front with a test CA) published as
//! `svc-{name}.localhost`. The upstream receives the service's credential and nothing of the
//! caller's (API token, capability, own `Authorization`, identity headers); a user the service
//! is not shared with is refused, and so is a revoked API token, with nothing forwarded; an
//! upstream whose certificate the service's CA did not sign is never sent a request; no admin
//! answer, no `GET /v1/filter-config` and no log line holds the credential. `PATCH` changes the
//! credential, the upstream and who may reach it, in force after one push.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod xds_support;

use std::time::{Duration, Instant};

use podgate_testkit::TlsFront;
use reqwest::header::COOKIE;
use serde_json::{json, Value};
use xds_support::*;

/// One config push, with room for a loaded machine.
const ONE_PUSH: Duration = Duration::from_secs(3);
const SECRET: &str = "renew-secret-0123456789abcdef0123456789";
const BOB: &str = "bob";
/// The upstream's credential: it must reach the upstream and nothing else.
const UPSTREAM_KEY: &str = "sk-upstream-5b1d7e0c9a4f4e8d";

/// Creates service `name` on `upstream` (`https://localhost:port`) trusting `ca_pem`.
async fn create_service(stack: &Stack, name: &str, upstream: &TlsFront, ca_pem: &str) -> Value {
    stack
        .cp
        .admin(
            reqwest::Method::POST,
            "/v1/services",
            Some(json!({
                "name": name,
                "owner_id": USER,
                "sharing": "owner",
                "upstream_url": format!("https://localhost:{}", upstream.addr().port()),
                "ca_pem": ca_pem,
                "credential": {"header": "authorization", "value": format!("Bearer {UPSTREAM_KEY}")},
            })),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_gets_its_credential_over_tls_and_never_the_callers() {
    let stack = Stack::start(&["--renew-secret", SECRET]).await;
    stack.cp.create_user(BOB).await;
    let bob_session = stack.cp.session(BOB).await;
    let upstream = FakePod::start("upstream").await.unwrap();
    let front = TlsFront::start(upstream.addr()).await.unwrap();

    // The admin answers show the credential's header and fingerprint, never its value.
    let created = create_service(&stack, "openai", &front, front.ca_pem()).await;
    let shown = created.to_string();
    assert!(!shown.contains(UPSTREAM_KEY), "{shown}");
    assert_eq!(created["credential"]["header"], "authorization", "{shown}");
    assert!(
        created["credential"]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{shown}"
    );
    assert_eq!(created["credential"]["sealed"], true, "{shown}");
    assert_eq!(
        created["url"],
        format!("http://svc-openai.localhost:{}", stack.cp.envoy_port)
    );
    for path in ["/v1/services", "/v1/services/openai", "/v1/filter-config"] {
        let answer = stack.cp.admin(reqwest::Method::GET, path, None).await;
        assert!(
            !answer.to_string().contains(UPSTREAM_KEY),
            "{path}: {answer}"
        );
    }
    let filter = stack
        .cp
        .admin(reqwest::Method::GET, "/v1/filter-config", None)
        .await;
    assert_eq!(
        filter["services"]["openai"]["credential"]["value"], "(redacted)",
        "{filter}"
    );

    // An API token at the edge (`Authorization: Bearer pg_…`): the upstream answers over TLS
    // and sees the service's credential, and nothing of the caller's.
    let (id, token) = create_api_token(&stack, &stack.session, "svc").await;
    let bearer = format!("Bearer {token}");
    until_service_status(
        &stack,
        "openai",
        "/",
        &[("authorization", &bearer)],
        200,
        ONE_PUSH,
    )
    .await;
    assert!(front.handshakes() > 0);
    let (status, body) = get_service(
        &stack,
        "openai",
        "/v1/models",
        &[
            ("authorization", &bearer),
            ("x-podgate-user", "mallory"),
            ("x-forwarded-host", "evil.example"),
            ("x-app", "kept"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let last = upstream.requests().pop().unwrap();
    // Neither the client's copy nor our public host.
    assert!(!last.has_header("x-forwarded-host"), "{:?}", last.headers);
    let headers = format!("{:?}", last.headers);
    assert_eq!(last.path, "/v1/models");
    assert_eq!(
        last.header_all("authorization"),
        vec![format!("Bearer {UPSTREAM_KEY}").as_str()],
        "{headers}"
    );
    assert_eq!(
        last.header("host"),
        Some(format!("localhost:{}", front.addr().port()).as_str())
    );
    assert_eq!(last.header("x-app"), Some("kept"));
    assert!(!headers.contains(&token), "{headers}");
    assert!(!headers.contains("pg_"), "{headers}");
    for ours in ["podgate-token", "cookie"] {
        assert!(!last.has_header(ours), "{ours}: {headers}");
    }
    assert_no_podgate_header(&last);

    // A capability for the service (`{service}`) in `podgate-token`, with the caller's own
    // `Authorization`: the upstream gets the service's credential in its place.
    let resp = stack
        .http
        .post(format!("http://{}/v1/capabilities", stack.cp.http))
        .header(COOKIE, &stack.session)
        .json(&json!({"service": "openai"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let cap: Value = resp.json().await.unwrap();
    let cap = cap["token"].as_str().unwrap().to_owned();
    let (status, body) = get_service(
        &stack,
        "openai",
        "/",
        &[
            ("podgate-token", &cap),
            ("authorization", "Basic Y2FsbGVyOm93bg=="),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let last = upstream.requests().pop().unwrap();
    assert_eq!(
        last.header_all("authorization"),
        vec![format!("Bearer {UPSTREAM_KEY}").as_str()]
    );
    assert!(!format!("{:?}", last.headers).contains(&cap));
    // That capability opens no pod port, and a pod capability does not open the service.
    let (status, _) = get_service(&stack, "openai", "/", &[("podgate-token", "x")]).await;
    assert_eq!(status, 401);

    // Bob may not reach alice's service: refused, nothing forwarded.
    let (_, bobs) = create_api_token(&stack, &bob_session, "bob").await;
    let before = upstream.requests().len();
    let (status, body) = get_service(
        &stack,
        "openai",
        "/",
        &[("authorization", &format!("Bearer {bobs}"))],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let resp = stack
        .http
        .post(format!("http://{}/v1/capabilities", stack.cp.http))
        .header(COOKIE, &bob_session)
        .json(&json!({"service": "openai"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(upstream.requests().len(), before, "forwarded for bob");

    // Revoked: refused at the edge after the push, nothing forwarded.
    let resp = stack
        .http
        .delete(format!("http://{}/api/proxy-tokens/{id}", stack.cp.http))
        .header(COOKIE, &stack.session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    until_service_status(
        &stack,
        "openai",
        "/",
        &[("authorization", &bearer)],
        401,
        ONE_PUSH,
    )
    .await;
    let before = upstream.requests().len();
    let (status, body) = get_service(&stack, "openai", "/", &[("authorization", &bearer)]).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("API token"), "{body}");
    assert_eq!(
        upstream.requests().len(),
        before,
        "forwarded with a revoked token"
    );

    // The credential never reached a log.
    assert!(
        !stack.cp.log().contains(UPSTREAM_KEY),
        "the control plane logged it"
    );
    assert!(!stack.envoy.log().contains(UPSTREAM_KEY), "Envoy logged it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_certificate_the_services_ca_did_not_sign_gets_no_request() {
    let stack = Stack::start(&["--renew-secret", SECRET]).await;
    let upstream = FakePod::start("upstream").await.unwrap();
    let front = TlsFront::start(upstream.addr()).await.unwrap();
    // Another test CA: the front's certificate does not verify against it.
    let other_ca = TlsFront::start(upstream.addr()).await.unwrap();
    create_service(&stack, "pinned", &front, other_ca.ca_pem()).await;
    let (_, token) = create_api_token(&stack, &stack.session, "svc").await;
    let bearer = format!("Bearer {token}");
    // Refused with an upstream failure once the service is in force (Envoy counts the
    // certificate it could not verify), never forwarded.
    let start = Instant::now();
    let failed_verification = "cluster.podgate_service_pinned.ssl.fail_verify_error";
    loop {
        let (status, body) =
            get_service(&stack, "pinned", "/", &[("authorization", &bearer)]).await;
        assert_ne!(status, 200, "{body}");
        if status == 503 && stack.envoy.stat(failed_verification).await > 0 {
            break;
        }
        assert!(
            start.elapsed() < ONE_PUSH,
            "still {status} {body}\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        upstream.requests().is_empty(),
        "the upstream was sent a request"
    );

    // The right CA: the same upstream answers.
    stack
        .cp
        .admin(reqwest::Method::DELETE, "/v1/services/pinned", None)
        .await;
    create_service(&stack, "pinned", &front, front.ca_pem()).await;
    until_service_status(
        &stack,
        "pinned",
        "/",
        &[("authorization", &bearer)],
        200,
        ONE_PUSH,
    )
    .await;
    let last = upstream.requests().pop().unwrap();
    assert_eq!(
        last.header_all("authorization"),
        vec![format!("Bearer {UPSTREAM_KEY}").as_str()]
    );
}

/// Polls until the upstream's last request carries `header: want` (one push at most).
async fn until_upstream_header(
    stack: &Stack,
    upstream: &FakePod,
    bearer: &str,
    header: &str,
    want: Option<&str>,
) {
    let start = Instant::now();
    loop {
        let (status, body) = get_service(stack, "api", "/", &[("authorization", bearer)]).await;
        assert_eq!(status, 200, "{body}");
        let last = upstream.requests().pop().unwrap();
        if last.header(header) == want {
            return;
        }
        assert!(
            start.elapsed() < ONE_PUSH,
            "{header} still {:?}\n{}",
            last.header(header),
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patching_a_service_reaches_envoy_and_cuts_off_who_lost_it() {
    const NEW_KEY: &str = "sk-patched-3e9f0a1b2c4d";
    const MOVED_KEY: &str = "sk-moved-77c1d0e5f2a9";
    let stack = Stack::start(&["--renew-secret", SECRET]).await;
    stack.cp.create_user(BOB).await;
    let upstream = FakePod::start("upstream").await.unwrap();
    let front = TlsFront::start(upstream.addr()).await.unwrap();
    create_service(&stack, "api", &front, front.ca_pem()).await;
    let (_, token) = create_api_token(&stack, &stack.session, "svc").await;
    let bearer = format!("Bearer {token}");
    until_service_status(
        &stack,
        "api",
        "/",
        &[("authorization", &bearer)],
        200,
        ONE_PUSH,
    )
    .await;

    // Bad input: a 400 naming the field, nothing changed; an unknown service: 404.
    for (body, says) in [
        (json!({"upstream_url": "ftp://x"}), "upstream_url"),
        (json!({"sharing": "everyone"}), "sharing"),
        (json!({"owner_id": "nobody"}), "owner_id"),
        (json!({"team_id": "no-team"}), "team_id"),
        (json!({"ca_pem": "not a certificate"}), "ca_pem"),
        (json!({"nope": 1}), "nope"),
        (
            json!({"credential": {"header": "x-podgate-user", "value": NEW_KEY}}),
            "header",
        ),
    ] {
        let (status, answer) = stack
            .cp
            .admin_answer(
                reqwest::Method::PATCH,
                "/v1/services/api",
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(says), "{body}: {answer}");
        assert!(!answer.contains(NEW_KEY), "{answer}");
    }
    let (status, _) = stack
        .cp
        .admin_answer(
            reqwest::Method::PATCH,
            "/v1/services/missing",
            Some(json!({"sharing": "public"})),
        )
        .await;
    assert_eq!(status, 404);

    // A new static credential in another header: the upstream gets it after the push, and
    // the answer shows its fingerprint, never its value.
    let patched = stack
        .cp
        .admin(
            reqwest::Method::PATCH,
            "/v1/services/api",
            Some(json!({"credential": {"header": "x-api-key", "value": NEW_KEY}})),
        )
        .await;
    assert!(!patched.to_string().contains(NEW_KEY), "{patched}");
    assert_eq!(patched["credential"]["header"], "x-api-key", "{patched}");
    assert_eq!(
        patched["upstream_url"],
        format!("https://localhost:{}", front.addr().port())
    );
    until_upstream_header(&stack, &upstream, &bearer, "x-api-key", Some(NEW_KEY)).await;
    let last = upstream.requests().pop().unwrap();
    assert!(!last.has_header("authorization"), "{:?}", last.headers);

    // Another upstream, with its own CA, and the key for it, in one change: requests go there
    // with the new key. Neither key ever reaches the other's upstream, not even while Envoy
    // switches (requests keep coming meanwhile).
    let upstream2 = FakePod::start("upstream2").await.unwrap();
    let front2 = TlsFront::start(upstream2.addr()).await.unwrap();
    let sent_before = upstream.requests().len();
    stack
        .cp
        .admin(
            reqwest::Method::PATCH,
            "/v1/services/api",
            Some(json!({
                "upstream_url": format!("https://localhost:{}", front2.addr().port()),
                "ca_pem": front2.ca_pem(),
                "credential": {"header": "x-api-key", "value": MOVED_KEY},
            })),
        )
        .await;
    let start = Instant::now();
    while upstream2.requests().is_empty() {
        let auth = [("authorization", bearer.as_str())];
        let ask = || get_service(&stack, "api", "/", &auth);
        let (a, b, c) = tokio::join!(ask(), ask(), ask());
        for (status, body) in [a, b, c] {
            // Until the new cluster is in force Envoy may answer 503; nothing else.
            assert!(status == 200 || status == 503, "{status} {body}");
        }
        assert!(start.elapsed() < ONE_PUSH, "{}", stack.logs());
    }
    let new_upstream_got: Vec<Option<String>> = upstream2
        .requests()
        .iter()
        .map(|r| r.header("x-api-key").map(str::to_owned))
        .collect();
    assert!(
        new_upstream_got
            .iter()
            .all(|key| key.as_deref() == Some(MOVED_KEY)),
        "{new_upstream_got:?}"
    );
    let old_upstream_got: Vec<Option<String>> = upstream.requests()[sent_before..]
        .iter()
        .map(|r| r.header("x-api-key").map(str::to_owned))
        .collect();
    assert!(
        old_upstream_got
            .iter()
            .all(|key| key.as_deref() == Some(NEW_KEY)),
        "{old_upstream_got:?}"
    );
    // Envoy counts the service's requests under its own name, whatever its upstream.
    assert!(
        stack
            .envoy
            .stat("cluster.podgate_service_api.upstream_rq_total")
            .await
            > 0
    );

    // `null` removes the credential: requests reach the upstream without one.
    let patched = stack
        .cp
        .admin(
            reqwest::Method::PATCH,
            "/v1/services/api",
            Some(json!({"credential": null})),
        )
        .await;
    assert!(patched["credential"].is_null(), "{patched}");
    let start = Instant::now();
    loop {
        let (status, body) = get_service(&stack, "api", "/", &[("authorization", &bearer)]).await;
        assert_eq!(status, 200, "{body}");
        if !upstream2.requests().pop().unwrap().has_header("x-api-key") {
            break;
        }
        assert!(start.elapsed() < ONE_PUSH, "{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Given to bob: alice, who may no longer reach it, is cut off and refused at the edge.
    let patched = stack
        .cp
        .admin(
            reqwest::Method::PATCH,
            "/v1/services/api",
            Some(json!({"owner_id": BOB})),
        )
        .await;
    assert_eq!(patched["owner_id"], BOB, "{patched}");
    until_service_status(
        &stack,
        "api",
        "/",
        &[("authorization", &bearer)],
        403,
        ONE_PUSH,
    )
    .await;
    let before = upstream2.requests().len();
    let (status, _) = get_service(&stack, "api", "/", &[("authorization", &bearer)]).await;
    assert_eq!(status, 403);
    assert_eq!(upstream2.requests().len(), before);
    // Shared with everyone signed in: alice reaches it again, once the edge's memory of the
    // refusal lapses.
    stack
        .cp
        .admin(
            reqwest::Method::PATCH,
            "/v1/services/api",
            Some(json!({"sharing": "signed_in"})),
        )
        .await;
    let start = Instant::now();
    loop {
        let (status, body) = get_service(&stack, "api", "/", &[("authorization", &bearer)]).await;
        if status == 200 {
            break;
        }
        assert!(
            start.elapsed() < ONE_PUSH + Duration::from_secs(6),
            "still {status} {body}\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !stack.cp.log().contains(NEW_KEY),
        "the control plane logged it"
    );
}

/// The Python that has the `openai` package: `$PODGATE_OPENAI_PYTHON`, else `.venv`'s. Without
/// it the test is skipped, except under `CI=true`, where it fails.
fn openai_python() -> Option<std::path::PathBuf> {
    let python = std::env::var_os("PODGATE_OPENAI_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    let has = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has {
        return Some(python);
    }
    let why = format!(
        "no openai package in {} (`./just setup` installs requirements-dev.txt into .venv)",
        python.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true: {why}");
    }
    eprintln!("SKIPPING the openai SDK test: {why}");
    None
}

/// Streams a chat completion with the official `openai` package: `base_url` and `api_key` from
/// the command line, `*.localhost` resolved to loopback as browsers do. Prints the text and
/// when each piece of it arrived (seconds since the call), as JSON.
const OPENAI_SCRIPT: &str = r#"
import json, socket, sys, time

_resolve = socket.getaddrinfo
def _loopback(host, *args, **kwargs):
    if isinstance(host, str) and (host == "localhost" or host.endswith(".localhost")):
        host = "127.0.0.1"
    return _resolve(host, *args, **kwargs)
socket.getaddrinfo = _loopback

from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0, timeout=30)
start = time.monotonic()
stream = client.chat.completions.create(
    model="fake-model",
    messages=[{"role": "user", "content": "count to five"}],
    stream=True,
)
text, arrivals = "", []
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
        arrivals.append(time.monotonic() - start)
print(json.dumps({"text": text, "arrivals": arrivals}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openai_sdk_streams_a_chat_completion_with_a_podgate_api_token() {
    let Some(python) = openai_python() else {
        return;
    };
    let stack = Stack::start(&["--renew-secret", SECRET]).await;
    let pace = Duration::from_millis(400);
    let upstream = podgate_testkit::FakeOpenAi::start(pace).await.unwrap();
    let front = TlsFront::start(upstream.addr()).await.unwrap();
    const OPENAI_KEY: &str = "sk-fake-openai-3c9e1f27b4d8";
    let created = stack
        .cp
        .admin(
            reqwest::Method::POST,
            "/v1/services",
            Some(json!({
                "name": "openai",
                "owner_id": USER,
                "upstream_url": format!("https://localhost:{}", front.addr().port()),
                "ca_pem": front.ca_pem(),
                "credential": {"header": "authorization", "value": format!("Bearer {OPENAI_KEY}")},
            })),
        )
        .await;
    let base_url = format!("{}/v1", created["url"].as_str().unwrap());
    let (_, token) = create_api_token(&stack, &stack.session, "sdk").await;
    // In force once a request reaches the upstream (its 404 for `GET /`).
    until_service_status(
        &stack,
        "openai",
        "/",
        &[("authorization", &format!("Bearer {token}"))],
        404,
        ONE_PUSH,
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("stream.py");
    std::fs::write(&script, OPENAI_SCRIPT).unwrap();
    let (script_arg, url_arg, token_arg) = (script.clone(), base_url.clone(), token.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(&script_arg)
            .arg(&url_arg)
            .arg(&token_arg)
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env("NO_PROXY", "*")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", stack.logs());
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["text"], "one two three four five", "{result}");
    let arrivals: Vec<f64> = result["arrivals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_f64().unwrap())
        .collect();
    let (first, last) = (arrivals[0], *arrivals.last().unwrap());
    println!("first piece after {first:.3}s, last after {last:.3}s");
    // Streamed, not buffered: the last piece comes four paces after the first.
    assert!(
        last - first > 3.0 * pace.as_secs_f64(),
        "first {first:.3}s, last {last:.3}s: the answer was buffered"
    );

    let call = upstream
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/chat/completions")
        .expect("the upstream saw no chat completion");
    let headers = format!("{:?}", call.headers);
    assert_eq!(
        call.header_all("authorization"),
        vec![format!("Bearer {OPENAI_KEY}").as_str()],
        "{headers}"
    );
    assert!(!headers.contains(&token), "{headers}");
    assert!(!headers.contains("pg_"), "{headers}");
}

/// A GET through Envoy on service `name`'s host as a browser page load: status, `Location`,
/// `Set-Cookie`s and body.
async fn page_on_service(
    http: &reqwest::Client,
    stack: &Stack,
    name: &str,
    path_and_query: &str,
    cookie: Option<&str>,
) -> (u16, Option<String>, Vec<String>, String) {
    get_on_host(
        http,
        stack.envoy.listener,
        &service_host(name),
        path_and_query,
        cookie,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_browser_signs_in_to_a_service_and_its_cookie_never_reaches_the_upstream() {
    let stack = Stack::start(&["--renew-secret", SECRET]).await;
    let upstream = FakePod::start("upstream").await.unwrap();
    let front = TlsFront::start(upstream.addr()).await.unwrap();
    create_service(&stack, "openai", &front, front.ca_pem()).await;
    let http = no_redirects();

    // A page load without a capability goes to the control plane for this service.
    let start = Instant::now();
    let auth = loop {
        let (status, location, _, body) =
            page_on_service(&http, &stack, "openai", "/chat", None).await;
        if status == 302 {
            break location.unwrap();
        }
        assert!(start.elapsed() < ONE_PUSH, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(auth.contains("/api/proxy-auth?service=openai"), "{auth}");
    let resp = http
        .get(&auth)
        .header(COOKIE, &stack.session)
        .header(reqwest::header::ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302, "{:?}", resp.text().await);
    let callback =
        url::Url::parse(resp.headers()[reqwest::header::LOCATION].to_str().unwrap()).unwrap();
    assert_eq!(callback.host_str(), Some("svc-openai.localhost"));
    let path = format!("{}?{}", callback.path(), callback.query().unwrap());
    let (status, _, cookies, body) = page_on_service(&http, &stack, "openai", &path, None).await;
    assert_eq!(status, 302, "{body}");
    let cap = cookies
        .iter()
        .find(|c| c.starts_with("podgate_cap="))
        .unwrap_or_else(|| panic!("no capability cookie: {cookies:?}"));
    let cap = cap.split(';').next().unwrap().to_owned();

    // With the cookie: the upstream answers (once the service is in force at the edge), with
    // the service's credential, no cookie of ours.
    let with_cookie = format!("{cap}; app=1");
    let start = Instant::now();
    loop {
        let (status, _, _, body) =
            page_on_service(&http, &stack, "openai", "/chat", Some(&with_cookie)).await;
        if status == 200 {
            break;
        }
        assert!(start.elapsed() < ONE_PUSH, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last = upstream.requests().pop().unwrap();
    assert_eq!(last.path, "/chat");
    assert_eq!(
        last.header_all("authorization"),
        vec![format!("Bearer {UPSTREAM_KEY}").as_str()]
    );
    assert_eq!(last.header("cookie"), Some("app=1"));
    // The same cookie on a pod host is no capability there.
    let (status, _, _, _) = get_on_pod(&http, stack.envoy.listener, "alpha", "/", Some(&cap)).await;
    assert_ne!(status, 200);

    // A page of a pod that has the service's name is a stranger to the service: its script's
    // POST, which the browser sends with the service's cookie (sibling hosts are same-site), is
    // refused and reaches nothing; the service's own page is let through.
    let port = stack.envoy.listener.port();
    let post_from = |origin: String| {
        http.post(format!(
            "http://{}/v1/chat/completions",
            stack.envoy.listener
        ))
        .header(reqwest::header::HOST, service_host("openai"))
        .header(COOKIE, &with_cookie)
        .header(reqwest::header::ORIGIN, origin)
        .body(r#"{"model":"m"}"#)
        .send()
    };
    let seen = upstream.requests().len();
    let resp = post_from(format!("http://{}:{port}", pod_host("openai")))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("another origin"),
        "{body}"
    );
    assert_eq!(
        upstream.requests().len(),
        seen,
        "nothing reached the upstream"
    );
    let own = format!("http://{}:{port}", service_host("openai"));
    let resp = post_from(own.clone()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"]
            .to_str()
            .unwrap(),
        own
    );
    let last = upstream.requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(last.header("cookie"), Some("app=1"));
}
