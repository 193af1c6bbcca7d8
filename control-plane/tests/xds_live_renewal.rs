//! Renewal at the edge, live, through a real Envoy 1.40 fed by the control plane's ADS server,
//! with a recording fake pod and the shortest capability lifetime the control plane accepts
//! (30 s; the filter's leeway is 30 s more): a browser that keeps calling the pod keeps
//! working for several lifetimes with no failed call, its cookie jar receiving renewed
//! capabilities, and its WebSocket stays open and echoes; after sign-out renewal is refused
//! and the calls and the WebSocket end within about one push; a cut user's capability is not
//! renewed; the renew endpoint refuses anyone without the renewal secret.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod xds_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, COOKIE};
use reqwest::Method;
use serde_json::Value;
use xds_support::*;

/// The shortest capability lifetime the control plane accepts.
const LIFETIME: Duration = Duration::from_secs(30);
/// One config push, with room for a loaded machine.
const ONE_PUSH: Duration = Duration::from_secs(2);
const SECRET: &str = "renew-secret-0123456789abcdef0123456789";

async fn start() -> Stack {
    let lifetime = LIFETIME.as_secs().to_string();
    Stack::start(&[
        "--capability-lifetime-secs",
        &lifetime,
        "--renew-secret",
        SECRET,
    ])
    .await
}

/// A browser's WebSocket to `pod` through Envoy: the cookie, from the pod's own origin.
async fn open_websocket(envoy: SocketAddr, pod: &str, cookie: &str) -> tokio::net::TcpStream {
    let host = pod_host(pod);
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: http://{host}:{}\r\nCookie: {cookie}\r\n\r\n",
        envoy.port()
    );
    open_raw(envoy, &request, "HTTP/1.1 101").await
}

/// `POST /api/proxy-renew` on the control plane, as only Envoy should call it.
async fn renew_directly(
    stack: &Stack,
    secret: Option<&str>,
    capability: Option<&str>,
) -> (u16, Value) {
    let mut req = no_redirects().post(format!("http://{}/api/proxy-renew", stack.cp.http));
    if let Some(s) = secret {
        req = req.header("podgate-renew-secret", s);
    }
    if let Some(c) = capability {
        req = req.header(AUTHORIZATION, format!("Bearer {c}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn pod_running(stack: &Stack, slug: &str) -> FakePod {
    let pod = FakePod::start_on(&format!("pod-{slug}"), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    stack
        .cp
        .create_pod(slug, USER, SERVER, pod.addr().port(), "running")
        .await;
    let token = stack.mint(slug).await;
    until(
        &stack.http,
        stack.envoy.listener,
        slug,
        &token,
        ONE_PUSH,
        |a| a.status == 200,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_in_use_keeps_working_for_several_lifetimes_and_its_websocket_stays_open() {
    let stack = start().await;
    let pod = pod_running(&stack, "web").await;
    let http = no_redirects();
    let envoy = stack.envoy.listener;
    let mut jar = sign_in_through_envoy(&stack, "web", &stack.session).await;
    let first = jar.clone();
    let mut ws = open_websocket(envoy, "web", &jar).await;
    assert_eq!(ws_echo(&mut ws, "hello").await, "hello");

    // Three lifetimes and the leeway: without renewal the first capability is refused after
    // one lifetime and the leeway, and the WebSocket is closed at its `exp`.
    let run = LIFETIME * 3 + Duration::from_secs(35);
    let start = Instant::now();
    let mut calls = 0u32;
    let mut renewed = Vec::new();
    let mut last_echo = Instant::now();
    while start.elapsed() < run {
        let before = pod.requests().len();
        let (status, location, cookies, body) =
            get_on_pod(&http, envoy, "web", "/page", Some(&jar)).await;
        calls += 1;
        assert_eq!(
            (status, location),
            (200, None),
            "call {calls} at {:?} failed: {body}\n{}",
            start.elapsed(),
            stack.logs()
        );
        let seen = pod.requests();
        assert_eq!(seen.len(), before + 1, "the call reached the pod once");
        let last = seen.last().unwrap();
        assert_eq!(last.header("x-podgate-user"), Some(USER));
        assert!(
            !last.header("cookie").unwrap_or("").contains("podgate_cap"),
            "our cookie reached the pod"
        );
        if let Some(fresh) = cookies.iter().find(|c| c.starts_with("podgate_cap=")) {
            // Set as the callback sets it, for the session's lifetime.
            for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"] {
                assert!(fresh.contains(attr), "{fresh}");
            }
            assert!(!fresh.to_ascii_lowercase().contains("domain="), "{fresh}");
            jar = fresh.split(';').next().unwrap().to_owned();
            renewed.push(start.elapsed());
        }
        if last_echo.elapsed() > Duration::from_secs(5) {
            let text = format!("still here at {:?}", start.elapsed());
            assert_eq!(ws_echo(&mut ws, &text).await, text);
            last_echo = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{calls} calls over {run:?}, none failed; renewed cookies at {renewed:?}");
    assert!(renewed.len() >= 3, "renewed only at {renewed:?}");
    assert_ne!(jar, first);
    // The WebSocket opened with the first capability outlived it, and still echoes.
    assert_eq!(ws_echo(&mut ws, "the end").await, "the end");
    assert!(stack.envoy.stat("wasmcustom.podgate.renewal.renewed").await >= 3);
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.podgate.websocket.expired")
            .await,
        0
    );
    assert_eq!(
        stack.envoy.stat("wasmcustom.podgate.renewal.failed").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sign_out_renewal_is_refused_and_calls_and_the_websocket_end_within_one_push() {
    let stack = start().await;
    let pod = pod_running(&stack, "web").await;
    let http = no_redirects();
    let envoy = stack.envoy.listener;
    let cookie = sign_in_through_envoy(&stack, "web", &stack.session).await;
    let cap = cookie.strip_prefix("podgate_cap=").unwrap().to_owned();
    let mut ws = open_websocket(envoy, "web", &cookie).await;

    // The renew endpoint, called directly: only with the secret, and it re-checks all.
    let (status, body) = renew_directly(&stack, None, Some(&cap)).await;
    assert_eq!(status, 403, "no secret: {body}");
    let (status, _) = renew_directly(
        &stack,
        Some("renew-secret-guessed-0123456789abcdef"),
        Some(&cap),
    )
    .await;
    assert_eq!(status, 403, "a wrong secret");
    let (status, _) = renew_directly(&stack, Some(SECRET), None).await;
    assert_eq!(status, 401, "no capability");
    let (status, _) = renew_directly(&stack, Some(SECRET), Some(&format!("{cap}x"))).await;
    assert_eq!(status, 401, "a forged capability");
    let script = stack
        .cp
        .mint(&stack.cp.session(USER).await, "web")
        .await
        .unwrap();
    let (status, body) = renew_directly(&stack, Some(SECRET), Some(&script)).await;
    assert_eq!(status, 200, "a live session's capability: {body}");
    let (status, body) = renew_directly(&stack, Some(SECRET), Some(&cap)).await;
    assert_eq!(status, 200, "{body}");
    let fresh = body["token"].as_str().unwrap().to_owned();
    assert!(
        body["set_cookie"]
            .as_str()
            .unwrap()
            .starts_with(&format!("podgate_cap={fresh}; ")),
        "{body}"
    );

    // Sign out.
    let resp = http
        .get(format!("http://{}/auth/logout", stack.cp.http))
        .header(COOKIE, &stack.session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let signed_out = Instant::now();
    for token in [&cap, &fresh] {
        let (status, body) = renew_directly(&stack, Some(SECRET), Some(token)).await;
        assert_eq!(status, 401, "renewed after sign-out: {body}");
    }
    // Calls with the old and the renewed capability end within a push, and so does the
    // WebSocket.
    for jar in [cookie.clone(), format!("podgate_cap={fresh}")] {
        let start = Instant::now();
        loop {
            let (status, _, _, body) = get_on_pod(&http, envoy, "web", "/page", Some(&jar)).await;
            if status == 302 {
                break;
            }
            assert_eq!(status, 200, "{body}");
            assert!(
                start.elapsed() < ONE_PUSH,
                "still let through {ONE_PUSH:?} after sign-out\n{}",
                stack.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let closed = until_closed(&mut ws, Duration::from_secs(5)).await;
    // An upper bound: the polls above ran first.
    let since_sign_out = signed_out.elapsed();
    eprintln!(
        "sign-out → calls refused, WebSocket closed {since_sign_out:?} after the logout answer ({closed:?} after the refusals)"
    );
    assert!(
        since_sign_out <= ONE_PUSH + Duration::from_secs(1),
        "the WebSocket closed {since_sign_out:?} after the logout answer\n{}",
        stack.logs()
    );
    let after = pod.requests().len();
    let (status, _, _, _) = get_on_pod(&http, envoy, "web", "/page", Some(&cookie)).await;
    assert_eq!(status, 302);
    assert_eq!(
        pod.requests().len(),
        after,
        "a signed-out capability reached the pod"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_users_capability_is_not_renewed() {
    let stack = start().await;
    let _pod = FakePod::start_on("pod-team", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    stack
        .cp
        .team_pod_with_member("bob", "shared", _pod.addr().port())
        .await;
    let bob_session = stack.cp.session("bob").await;
    let bob = stack.cp.mint(&bob_session, "shared").await.unwrap();
    let (status, body) = renew_directly(&stack, Some(SECRET), Some(&bob)).await;
    assert_eq!(status, 200, "a member's capability: {body}");
    let renewed = body["token"].as_str().unwrap().to_owned();
    stack
        .cp
        .admin(Method::DELETE, "/v1/teams/t1/members/bob", None)
        .await;
    for token in [&bob, &renewed] {
        let (status, body) = renew_directly(&stack, Some(SECRET), Some(token)).await;
        assert_eq!(status, 401, "a cut user's capability was renewed: {body}");
    }
    // The owner's is.
    let alice = stack.mint("shared").await;
    let (status, body) = renew_directly(&stack, Some(SECRET), Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
}
