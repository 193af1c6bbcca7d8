//! API tokens at the edge, live, through a real Envoy 1.40 fed by the control plane's ADS
//! server, with recording fake pods: `Authorization: Bearer pg_…` and `podgate-token: pg_…`
//! on a pod host reach the token owner's pod, and the token never reaches the pod;
//! `/.podgate/userinfo` names the token's owner; a pod nothing listens on, reached by a token's
//! first exchange, gets Envoy's answer naming the pod and port; another user's pod is refused; a revoked token is refused within a second; the control plane away
//! is a 503, never a forward; and a burst of 10,000 wrong tokens leaves the control plane
//! answering other users, with the figures printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod xds_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, COOKIE, HOST};
use serde_json::Value;
use xds_support::*;

/// One config push, with room for a loaded machine.
const ONE_PUSH: Duration = Duration::from_secs(2);
const SECRET: &str = "renew-secret-0123456789abcdef0123456789";
const BOB: &str = "bob";

async fn start() -> Stack {
    Stack::start(&["--renew-secret", SECRET]).await
}

/// A running fake pod `slug` of `owner`, reachable through Envoy.
async fn pod_running(stack: &Stack, slug: &str, owner: &str, session: &str) -> FakePod {
    let pod = FakePod::start_on(&format!("pod-{slug}"), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    stack
        .cp
        .create_pod(slug, owner, SERVER, pod.addr().port(), "running")
        .await;
    let token = stack.cp.mint(session, slug).await.unwrap();
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

/// `GET /` on `pod`'s host through Envoy with `header: value`: status and body.
async fn get_with(stack: &Stack, pod: &str, header: &str, value: &str) -> (u16, String) {
    let resp = stack
        .http
        .get(format!("http://{}/", stack.envoy.listener))
        .header(HOST, pod_host(pod))
        .header(header, value)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Revokes API token `id` with `session`, as its owner does on `/setup`.
async fn revoke(stack: &Stack, session: &str, id: &str) {
    let resp = stack
        .http
        .delete(format!("http://{}/api/proxy-tokens/{id}", stack.cp.http))
        .header(COOKIE, session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// The exchange calls that reached the control plane so far: each is logged there with the
/// client it came from (`edge:<address>`), whatever its answer. Counted at the control plane
/// rather than from the filter's counters, which reach Envoy only with its next tick.
fn exchange_calls(stack: &Stack) -> u64 {
    stack
        .cp
        .log()
        .lines()
        .filter(|l| l.contains("edge:127.0.0.1"))
        .count() as u64
}

/// Whether the pod's last recorded request carried `token` in any header, and that request.
fn last_request_leaks(pod: &FakePod, token: &str) -> (bool, String) {
    let seen = pod.requests();
    let last = seen.last().expect("the pod saw no request");
    let leaks = last.headers.iter().any(|(_, v)| v.contains(token))
        || last.path.contains(token)
        || last.has_header("authorization")
        || last.has_header("podgate-token");
    (leaks, format!("{:?}", last.headers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_tokens_reach_their_owners_pods_at_the_edge_and_never_reach_the_pod() {
    let mut stack = start().await;
    stack.cp.create_user(BOB).await;
    let bob_session = stack.cp.session(BOB).await;
    let session = stack.session.clone();
    let alpha = pod_running(&stack, "alpha", USER, &session).await;
    let bobs = pod_running(&stack, "bobs", BOB, &bob_session).await;
    let (id, token) = create_api_token(&stack, &session, "edge").await;
    let bearer = format!("Bearer {token}");

    // The bearer form: the pod answers, sees alice, and never the token.
    let (status, body) = get_with(&stack, "alpha", "authorization", &bearer).await;
    assert_eq!(status, 200, "{body}\n{}", stack.logs());
    assert!(body.contains("pod-alpha"), "{body}");
    let (leaks, headers) = last_request_leaks(&alpha, &token);
    assert!(!leaks, "the API token reached the pod: {headers}");
    let last = alpha.requests().pop().unwrap();
    assert_eq!(last.header("x-podgate-user"), Some(USER), "{headers}");

    // The `podgate-token` form, the app's other headers kept.
    let resp = stack
        .http
        .get(format!("http://{}/form", stack.envoy.listener))
        .header(HOST, pod_host("alpha"))
        .header("podgate-token", &token)
        .header("x-app", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (leaks, headers) = last_request_leaks(&alpha, &token);
    assert!(!leaks, "the API token reached the pod: {headers}");
    assert_eq!(
        alpha.requests().pop().unwrap().header("x-app"),
        Some("kept")
    );

    // Cached: more requests make no more exchange calls (counters reach Envoy once a second).
    for _ in 0..20 {
        let (status, _) = get_with(&stack, "alpha", "authorization", &bearer).await;
        assert_eq!(status, 200);
    }
    let calls = exchange_calls(&stack);
    // One per form's first request (the keys are the same; the second may join or repeat).
    assert!((1..=2).contains(&calls), "{calls} exchange calls");

    // A client that gives up while its token is being exchanged leaves nothing behind: the
    // call outlives its stream, and the next request with the token is answered.
    let (_, quitter) = create_api_token(&stack, &session, "quitter").await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(1))
        .build()
        .unwrap();
    let _ = impatient
        .get(format!("http://{}/", stack.envoy.listener))
        .header(HOST, pod_host("alpha"))
        .header("podgate-token", &quitter)
        .send()
        .await;
    let t = Instant::now();
    let (status, body) = get_with(&stack, "alpha", "podgate-token", &quitter).await;
    assert_eq!(status, 200, "{body}\n{}", stack.logs());
    // Not held for the lost call's 15 s: answered by the call in flight or a new one.
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());

    // A pod of alice's that nothing listens on, reached with a token not yet exchanged: the
    // request the exchange let through fails at the pod, and Envoy's answer names the pod and
    // port the filter recorded for it.
    let closed = free_port();
    stack
        .cp
        .create_pod("gone", USER, SERVER, closed, "running")
        .await;
    let cap = stack.cp.mint(&session, "gone").await.unwrap();
    until(
        &stack.http,
        stack.envoy.listener,
        "gone",
        &cap,
        ONE_PUSH,
        |a| a.status == 503,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    let (_, unexchanged) = create_api_token(&stack, &session, "gone").await;
    let calls = exchange_calls(&stack);
    let (status, body) = get_with(&stack, "gone", "podgate-token", &unexchanged).await;
    assert_eq!(status, 503, "{body}\n{}", stack.logs());
    let failure: Value = serde_json::from_str(&body).unwrap();
    assert!(
        failure["error"]
            .as_str()
            .is_some_and(|e| e.contains("Nothing is listening")),
        "{body}"
    );
    assert_eq!(
        (failure["pod"].as_str(), failure["port"].as_str()),
        (Some("gone"), Some(APP_PORT.to_string().as_str())),
        "{body}"
    );
    assert!(exchange_calls(&stack) > calls, "not exchanged");

    // Another user's pod: refused, and nothing reaches it.
    let bobs_before = bobs.requests().len();
    let (status, body) = get_with(&stack, "bobs", "authorization", &bearer).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may not reach"), "{body}");
    assert_eq!(
        bobs.requests().len(),
        bobs_before,
        "refused, yet it reached bob's pod"
    );

    // `/.podgate/userinfo` with an API token: the filter answers whom the token stands for,
    // from the capability it is exchanged for (a token not exchanged yet is exchanged first);
    // another user's pod is a 403; nothing reaches a pod.
    let (_, fresh) = create_api_token(&stack, &session, "whoami").await;
    let before = alpha.requests().len();
    let bobs_before = bobs.requests().len();
    for (pod, token) in [("alpha", &token), ("alpha", &fresh), ("bobs", &token)] {
        let resp = stack
            .http
            .get(format!("http://{}/.podgate/userinfo", stack.envoy.listener))
            .header(HOST, pod_host(pod))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert!(!body.contains(token.as_str()), "the token echoed: {body}");
        if pod == "bobs" {
            assert_eq!(status, 403, "{body}");
            continue;
        }
        assert_eq!(status, 200, "{body}\n{}", stack.logs());
        let who: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (who["user"].as_str(), who["pod"].as_str()),
            (Some(USER), Some("alpha")),
            "{who}"
        );
    }
    assert_eq!(alpha.requests().len(), before, "userinfo reached the pod");
    assert_eq!(
        bobs.requests().len(),
        bobs_before,
        "alice's token reached bob's pod"
    );

    // A wrong token: refused, and nothing reaches the pod.
    let wrong = format!("pg_{}_{}", "0".repeat(24), "a".repeat(52));
    let before = alpha.requests().len();
    let (status, body) =
        get_with(&stack, "alpha", "authorization", &format!("Bearer {wrong}")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Invalid API token"), "{body}");
    assert_eq!(
        alpha.requests().len(),
        before,
        "a wrong token reached the pod"
    );

    // Revoked: refused on the next exchange, which the push forces.
    let (_, other) = create_api_token(&stack, &session, "kept").await;
    let revoked_at = Instant::now();
    revoke(&stack, &session, &id).await;
    let mut last;
    let refused_after = loop {
        last = get_with(&stack, "alpha", "authorization", &bearer).await;
        if last.0 == 401 {
            break revoked_at.elapsed();
        }
        assert_eq!(last.0, 200, "{}", last.1);
        assert!(revoked_at.elapsed() < ONE_PUSH, "still {last:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!("revoked API token refused at the edge after {refused_after:?}");
    assert!(last.1.contains("API token"), "{}", last.1);
    // Refused from then on, and nothing reaches the pod.
    let before = alpha.requests().len();
    let (status, body) = get_with(&stack, "alpha", "authorization", &bearer).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        alpha.requests().len(),
        before,
        "a revoked token reached the pod"
    );

    // The control plane away: a token not yet exchanged is a 503, never a forward.
    let before = alpha.requests().len();
    stack.cp.kill();
    let (status, body) = get_with(&stack, "alpha", "podgate-token", &other).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("could not check the API token"), "{body}");
    assert_eq!(
        alpha.requests().len(),
        before,
        "forwarded without the control plane"
    );
}

/// A random well-formed API token that the control plane does not know.
/// A WebSocket opened with an API token lives as long as the token does: its capability
/// (30 s here) is renewed by exchanging the token again before it ends, as a browser's is
/// through its cookie; once the token is revoked, the WebSocket is closed within a push.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_on_an_api_token_outlives_its_capability_and_ends_with_the_token() {
    let stack = Stack::start(&["--renew-secret", SECRET, "--capability-lifetime-secs", "30"]).await;
    let session = stack.session.clone();
    let _alpha = pod_running(&stack, "alpha", USER, &session).await;
    let (id, token) = create_api_token(&stack, &session, "terminal").await;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n",
        pod_host("alpha")
    );
    let opened = Instant::now();
    let mut ws = open_raw(stack.envoy.listener, &request, "HTTP/1.1 101").await;
    // Past the first capability's end (30 s) and into the second's renewal, a message every 5 s.
    while opened.elapsed() < Duration::from_secs(42) {
        let said = format!("at {} s", opened.elapsed().as_secs());
        assert_eq!(ws_echo(&mut ws, &said).await, said, "{}", stack.logs());
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    revoke(&stack, &session, &id).await;
    let took = until_closed(&mut ws, Duration::from_secs(5)).await;
    println!("the revoked token's WebSocket closed {took:?} after the revocation");
}

fn wrong_token(i: u64) -> String {
    format!("pg_{:024x}_{}", i ^ 0x5eed_0000_0000, "b".repeat(52))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_wrong_api_tokens_leaves_the_control_plane_answering() {
    let stack = start().await;
    stack.cp.create_user(BOB).await;
    let bob_session = stack.cp.session(BOB).await;
    let session = stack.session.clone();
    let alpha = pod_running(&stack, "alpha", USER, &session).await;
    let bobs = pod_running(&stack, "bobs", BOB, &bob_session).await;
    let (_, bobs_token) = create_api_token(&stack, &bob_session, "bob").await;
    let bob_bearer = format!("Bearer {bobs_token}");
    let (status, _) = get_with(&stack, "bobs", "authorization", &bob_bearer).await;
    assert_eq!(status, 200, "{}", stack.logs());
    let calls_before = exchange_calls(&stack);
    let alpha_before = alpha.requests().len();

    const FLOOD: u64 = 10_000;
    const CONCURRENCY: u64 = 64;
    let next = Arc::new(AtomicU64::new(0));
    let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let envoy = stack.envoy.listener;
    let flood_started = Instant::now();
    let mut flooders = Vec::new();
    for _ in 0..CONCURRENCY {
        let (next, statuses, http) = (next.clone(), statuses.clone(), client());
        flooders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= FLOOD {
                    break;
                }
                let status = match http
                    .get(format!("http://{envoy}/"))
                    .header(HOST, pod_host("alpha"))
                    .header(AUTHORIZATION, format!("Bearer {}", wrong_token(i)))
                    .send()
                    .await
                {
                    Ok(resp) => resp.status().as_u16(),
                    Err(_) => 0,
                };
                *statuses.lock().unwrap().entry(status).or_insert(0u64) += 1;
            }
        }));
    }

    // Meanwhile: bob through Envoy with his exchanged token, and a direct call to the
    // control plane (`/v1/capabilities` for alice), each timed.
    let mut edge = Vec::new();
    let mut direct = Vec::new();
    while next.load(Ordering::Relaxed) < FLOOD {
        let t = Instant::now();
        let (status, body) = get_with(&stack, "bobs", "authorization", &bob_bearer).await;
        edge.push(t.elapsed());
        assert_eq!(status, 200, "bob refused during the flood: {body}");
        let t = Instant::now();
        stack.cp.mint(&session, "alpha").await.unwrap();
        direct.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for f in flooders {
        f.await.unwrap();
    }
    let burst = flood_started.elapsed();
    let calls = exchange_calls(&stack) - calls_before;
    let statuses = statuses.lock().unwrap().clone();
    let worst = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    println!(
        "flood: {FLOOD} wrong API tokens, {CONCURRENCY} at a time, in {burst:?} \
         ({:.0} requests/s); answers by status {statuses:?}; exchange calls that reached the \
         control plane: {calls}",
        FLOOD as f64 / burst.as_secs_f64()
    );
    println!(
        "during the flood: bob's API-token request through Envoy: {} samples, median {:?}, \
         worst {:?}; POST /v1/capabilities on the control plane: median {:?}, worst {:?}",
        edge.len(),
        median(&mut edge.clone()),
        worst(&edge),
        median(&mut direct.clone()),
        worst(&direct)
    );
    assert_eq!(statuses.values().sum::<u64>(), FLOOD);
    assert_eq!(statuses.get(&200), None, "a wrong token got through");
    assert_eq!(
        alpha.requests().len(),
        alpha_before,
        "a wrong token reached the pod"
    );
    assert!(
        statuses.keys().all(|s| [401, 429].contains(s)),
        "{statuses:?}"
    );
    // The control plane's bucket of failed tokens per client, then the filter's own wait.
    assert!(
        calls < 100,
        "{calls} exchange calls for {FLOOD} wrong tokens"
    );
    // Bob's requests and the direct mints were all answered during the flood (each asserted
    // above); how fast is printed, and measured by `just bench`.
    assert!(!edge.is_empty() && !direct.is_empty());
    assert!(!bobs
        .requests()
        .iter()
        .any(|r| r.headers.iter().any(|(_, v)| v.contains("pg_"))));
}
