//! Changes take effect live, through a real Envoy 1.40 fed by the control plane's ADS server:
//! pod lifecycle within a second, key rotation without a failed request, capabilities that stay
//! verified across pushes that leave the keys alone and rate buckets spent, Envoy serving on
//! while the control plane is down, then catching up when it returns, and a restart with the
//! wrong key-encryption key refused without touching the keys Envoy verifies with.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod xds_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use podgate_protocol::assertion::ASSERTION_HEADER;
use reqwest::Method;
use serde_json::json;
use xds_support::*;

/// How soon a change is in the Envoy: one push, with room for a loaded machine (each step
/// prints what it took).
const LIVE: Duration = Duration::from_secs(5);

/// Two fake pods on the same port of two loopback addresses (two "servers").
async fn two_servers() -> (FakePod, FakePod) {
    for _ in 0..20 {
        let a = FakePod::start_on("pod-on-a", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let on_b = SocketAddr::new(IpAddr::from([127, 0, 0, 2]), a.addr().port());
        if let Ok(b) = FakePod::start_on("pod-on-b", on_b).await {
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle_changes_routing_within_a_second() {
    let stack = Stack::start(&[]).await;
    let (a, b) = two_servers().await;
    let port = a.addr().port();
    stack
        .cp
        .create_server("server-b", IpAddr::from([127, 0, 0, 2]))
        .await;

    // Created running: routable.
    stack
        .cp
        .create_pod("web", USER, SERVER, port, "running")
        .await;
    let token = stack.mint("web").await;
    let took = until(
        &stack.http,
        stack.envoy.listener,
        "web",
        &token,
        LIVE,
        |a| a.status == 200 && a.pod().as_deref() == Some("pod-on-a"),
    )
    .await
    .unwrap_or_else(|e| panic!("created: {e}\n{}", stack.logs()));
    eprintln!("created → routable in {took:?}");
    {
        let seen = a.requests();
        let last = seen.last().unwrap();
        assert_eq!(
            last.header("host"),
            Some(format!("localhost-{APP_PORT}.pod-web.localhost").as_str())
        );
        assert!(
            !last.has_header("podgate-token"),
            "the capability is stripped before the pod"
        );
        // The original-destination cluster found the pod from the filter's routing headers;
        // the router removed both before forwarding.
        assert!(!last.has_header("x-podgate-upstream"), "{last:?}");
        assert!(!last.has_header("x-podgate-cluster"), "{last:?}");
        // The pod verifies the identity assertion with the keys the control plane publishes.
        let assertion = last
            .header(ASSERTION_HEADER)
            .expect("an identity assertion");
        let asserted = assertion_verifier(&stack, "web")
            .await
            .verify(assertion, now_unix())
            .unwrap();
        assert_eq!(
            (asserted.sub.as_str(), asserted.pod.as_str()),
            (USER, "web")
        );
        // The capability keys of `/.well-known/jwks.json` do not verify it.
        let capability_jwks = published_keys(&stack, "/.well-known/jwks.json").await;
        assert!(capability_jwks
            .keys
            .iter()
            .all(|k| k.kid.starts_with("cap-")));
    }

    // Stopped: 503 with the status, nothing forwarded.
    stack.cp.set_status("web", "stopped").await;
    let took = until(
        &stack.http,
        stack.envoy.listener,
        "web",
        &token,
        LIVE,
        |a| a.status == 503 && a.body.contains("stopped"),
    )
    .await
    .unwrap_or_else(|e| panic!("stopped: {e}\n{}", stack.logs()));
    eprintln!("stopped → 503 in {took:?}");
    let before = a.requests().len();
    let answer = through_envoy(&stack.http, stack.envoy.listener, "web", &token)
        .await
        .unwrap();
    assert_eq!(answer.status, 503);
    assert!(
        answer.body.contains("Pod is not running (status: stopped)"),
        "{}",
        answer.body
    );
    assert_eq!(a.requests().len(), before);

    // Started again.
    stack.cp.set_status("web", "running").await;
    until(
        &stack.http,
        stack.envoy.listener,
        "web",
        &token,
        LIVE,
        |a| a.status == 200,
    )
    .await
    .unwrap_or_else(|e| panic!("restarted: {e}\n{}", stack.logs()));

    // Moved to server B: traffic follows.
    stack
        .cp
        .admin(
            Method::PATCH,
            "/v1/pods/web",
            Some(json!({"server_id": "server-b"})),
        )
        .await;
    let took = until(
        &stack.http,
        stack.envoy.listener,
        "web",
        &token,
        LIVE,
        |a| a.status == 200 && a.pod().as_deref() == Some("pod-on-b"),
    )
    .await
    .unwrap_or_else(|e| panic!("moved: {e}\n{}", stack.logs()));
    eprintln!("moved → pod B in {took:?}");
    assert!(!b.requests().is_empty());

    // The server's address changes: pods on it follow too.
    stack
        .cp
        .admin(
            Method::PATCH,
            "/v1/servers/server-b",
            Some(json!({"address": "127.0.0.1"})),
        )
        .await;
    until(
        &stack.http,
        stack.envoy.listener,
        "web",
        &token,
        LIVE,
        |a| a.status == 200 && a.pod().as_deref() == Some("pod-on-a"),
    )
    .await
    .unwrap_or_else(|e| panic!("server address: {e}\n{}", stack.logs()));

    // Deleted: 404.
    stack.cp.admin(Method::DELETE, "/v1/pods/web", None).await;
    let took = until(
        &stack.http,
        stack.envoy.listener,
        "web",
        &token,
        LIVE,
        |a| a.status == 404,
    )
    .await
    .unwrap_or_else(|e| panic!("deleted: {e}\n{}", stack.logs()));
    eprintln!("deleted → 404 in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_load_fails_no_request() {
    let stack = Arc::new(Stack::start(&[]).await);
    let pod = FakePod::start_on("pod", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    stack
        .cp
        .create_pod("busy", USER, SERVER, pod.addr().port(), "running")
        .await;
    let old_token = stack.mint("busy").await;
    let old_kid = kid_of(&old_token);
    until(
        &stack.http,
        stack.envoy.listener,
        "busy",
        &old_token,
        LIVE,
        |a| a.status == 200,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));

    // Two loops: each mints a fresh capability and uses it at once.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let new_kid_seen = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (stack, stop, ok, failures, new_kid_seen, old_kid) = (
            Arc::clone(&stack),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failures),
            Arc::clone(&new_kid_seen),
            old_kid.clone(),
        );
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let token = match stack.cp.mint(&stack.session, "busy").await {
                    Ok(t) => t,
                    Err(e) => {
                        failures.lock().unwrap().push(format!("mint: {e}"));
                        continue;
                    }
                };
                if kid_of(&token) != old_kid {
                    new_kid_seen.fetch_add(1, Ordering::Relaxed);
                }
                match through_envoy(&stack.http, stack.envoy.listener, "busy", &token).await {
                    Ok(a) if a.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(a) => failures.lock().unwrap().push(format!(
                        "{} {} (kid {})",
                        a.status,
                        a.body,
                        kid_of(&token)
                    )),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rotated = stack.cp.admin(Method::POST, "/v1/keys/rotate", None).await;
    let rotated_at = std::time::Instant::now();
    // The new key signs once Envoy has it; well before the 5 s publish delay.
    while new_kid_seen.load(Ordering::Relaxed) == 0 {
        assert!(
            rotated_at.elapsed() < Duration::from_secs(8),
            "the new key never signed:\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let switch = rotated_at.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "rotation {rotated}: new key signing after {switch:?}; {ok} requests ok, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok > 50, "too little load: {ok}");
    assert!(
        switch < Duration::from_secs(3),
        "the new key should sign once Envoy ACKed, not at the delay"
    );
    // Capabilities signed with the old key keep working in the overlap window.
    let a = through_envoy(&stack.http, stack.envoy.listener, "busy", &old_token)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let new_token = stack.mint("busy").await;
    assert_ne!(kid_of(&new_token), old_kid);
}

/// A running pod `slug` of the stack's user on a fake pod of its own, and a capability for it
/// that Envoy already lets through.
async fn running_pod(stack: &Stack, slug: &str) -> (FakePod, String) {
    let pod = FakePod::start_on("pod", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    stack
        .cp
        .create_pod(slug, USER, SERVER, pod.addr().port(), "running")
        .await;
    let token = stack.mint(slug).await;
    until(&stack.http, stack.envoy.listener, slug, &token, LIVE, |a| {
        a.status == 200
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    (pod, token)
}

/// Creates the running pod "other" on `port` (a push) and waits until the filter knows it:
/// `pushed` accepts the answer to a capability for it, which is 404 before.
async fn pod_other(stack: &Stack, port: u16, pushed: impl Fn(&Answer) -> bool) {
    stack
        .cp
        .create_pod("other", USER, SERVER, port, "running")
        .await;
    let other = stack.mint("other").await;
    until(
        &stack.http,
        stack.envoy.listener,
        "other",
        &other,
        LIVE,
        pushed,
    )
    .await
    .unwrap_or_else(|e| panic!("pushed: {e}\n{}", stack.logs()));
}

/// The filter's counts in Envoy: signature checks (token cache misses), forwards allowed and
/// identity assertions signed.
async fn filter_counts(stack: &Stack) -> (u64, u64, u64) {
    (
        stack
            .envoy
            .stat("wasmcustom.podgate.token_cache.misses")
            .await,
        stack.envoy.stat("wasmcustom.podgate.allowed").await,
        stack
            .envoy
            .stat("wasmcustom.podgate.assertion.signed")
            .await,
    )
}

/// [`filter_counts`] once they reach `want` (the filter hands its counts over once a second,
/// a push restarts that second), or as they are after 5 s.
async fn filter_counts_reaching(stack: &Stack, want: (u64, u64, u64)) -> (u64, u64, u64) {
    let start = std::time::Instant::now();
    loop {
        let counts = filter_counts(stack).await;
        let reached = counts.0 >= want.0 && counts.1 >= want.1 && counts.2 >= want.2;
        if reached || start.elapsed() > Duration::from_secs(5) {
            // Anything still on its way would show now.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            return filter_counts(stack).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_created_elsewhere_keeps_what_was_verified_and_signed_and_a_key_rotation_does_not() {
    // Assertions live 300 s: the filter reuses one for 150 s, longer than this test takes. A
    // new assertion key signs once published for 2 s (120 by default).
    let stack = Stack::start(&[
        "--assertion-lifetime-secs",
        "300",
        "--assertion-key-delay-secs",
        "2",
    ])
    .await;
    let (pod, token) = running_pod(&stack, "web").await;
    let port = pod.addr().port();
    let assertion_of = |request: &podgate_testkit::Recorded| {
        request
            .header(ASSERTION_HEADER)
            .expect("an identity assertion")
            .to_owned()
    };
    let first = assertion_of(pod.requests().last().unwrap());
    let (checked, allowed, signed) = filter_counts_reaching(&stack, (1, 1, 1)).await;
    assert!(
        checked >= 1 && allowed >= 1 && signed >= 1,
        "{checked} checks, {allowed} allowed, {signed} signed"
    );

    // Another pod: a push of the filter's configuration. Once the filter knows the pod (its own
    // capability reaches it: 200, no longer 404), the capability for "web" still reaches "web",
    // costs no signature check and hands the pod the identity assertion signed before the push;
    // the one new check and the one new assertion are the other pod's. Envoy's counters go on
    // counting across the push.
    pod_other(&stack, port, |a| a.status == 200).await;
    let before = pod.requests().len();
    let a = through_envoy(&stack.http, stack.envoy.listener, "web", &token)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = pod.requests();
    assert_eq!(seen.len(), before + 1);
    assert!(!seen[before].has_header("podgate-token"));
    assert_eq!(assertion_of(&seen[before]), first);
    let want = (checked + 1, allowed + 2, signed + 1);
    assert_eq!(
        filter_counts_reaching(&stack, want).await,
        want,
        "(checks, allowed, signed) after a pod push"
    );

    // A rotation changes the keys Envoy verifies with, and the assertion key (it goes with the
    // newest capability key). Once the filter has it, the capability (signed by the old key,
    // still in the set) is checked once more and the pod gets an assertion signed by the new
    // assertion key, which the keys published now verify.
    let old_kid = kid_of(&token);
    stack.cp.admin(Method::POST, "/v1/keys/rotate", None).await;
    let rotated_at = std::time::Instant::now();
    let mut forwarded = 0;
    let renewed = loop {
        assert!(
            rotated_at.elapsed() < Duration::from_secs(12),
            "the new assertion key never signed:\n{}",
            stack.logs()
        );
        let a = through_envoy(&stack.http, stack.envoy.listener, "web", &token)
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        forwarded += 1;
        let got = assertion_of(pod.requests().last().unwrap());
        if got != first {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(kid_of(&renewed), kid_of(&first));
    // Not before its key had been published for the delay: pods caching the assertion keys
    // have it by then.
    assert!(
        rotated_at.elapsed() >= Duration::from_secs(2),
        "the new assertion key signed {:?} after the rotation",
        rotated_at.elapsed()
    );
    assert_ne!(kid_of(&stack.mint("web").await), old_kid);
    let asserted = assertion_verifier(&stack, "web")
        .await
        .verify(&renewed, now_unix())
        .unwrap();
    assert_eq!(
        (asserted.sub.as_str(), asserted.pod.as_str()),
        (USER, "web")
    );
    assert_eq!(pod.requests().len(), before + 1 + forwarded);
    let want = (checked + 2, allowed + 2 + forwarded as u64, signed + 2);
    assert_eq!(
        filter_counts_reaching(&stack, want).await,
        want,
        "(checks, allowed, signed) after a key rotation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_created_elsewhere_gives_no_one_a_new_burst() {
    // One request a second, four at once.
    let stack = Stack::start(&["--edge-rate-per-user", "1/4"]).await;
    let (pod, token) = running_pod(&stack, "web").await;
    let mut spent_at = None;
    for _ in 0..8 {
        let a = through_envoy(&stack.http, stack.envoy.listener, "web", &token)
            .await
            .unwrap();
        if a.status == 429 {
            spent_at = Some(std::time::Instant::now());
            break;
        }
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let spent_at = spent_at.expect("the burst was never spent");

    // Another pod: a push. Once the filter knows it (its capability is no longer answered 404:
    // the spent bucket answers 429), the user's bucket is as it was: only what refilled since
    // (one a second) gets through to "web", not a new burst of four.
    pod_other(&stack, pod.addr().port(), |a| a.status != 404).await;
    let before = pod.requests().len();
    let mut through = 0;
    for _ in 0..4 {
        let a = through_envoy(&stack.http, stack.envoy.listener, "web", &token)
            .await
            .unwrap();
        match a.status {
            200 => through += 1,
            429 => {}
            other => panic!("{other}: {}", a.body),
        }
    }
    let refilled = spent_at.elapsed().as_secs() + 1;
    assert!(
        through <= refilled.min(3),
        "{through} of 4 through {:?} after the bucket was spent",
        spent_at.elapsed()
    );
    assert_eq!(pod.requests().len(), before + through as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_while_the_control_plane_is_down_and_catches_up() {
    let mut stack = Stack::start(&[]).await;
    let (pod, token) = running_pod(&stack, "steady").await;
    let port = pod.addr().port();

    stack.cp.kill();
    // Envoy keeps its last config: existing capabilities keep working.
    for _ in 0..50 {
        let a = through_envoy(&stack.http, stack.envoy.listener, "steady", &token)
            .await
            .unwrap();
        assert_eq!(a.status, 200, "with the control plane down: {}", a.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Back on the same database and ports: Envoy reconnects and gets changes again.
    stack.cp.spawn().await;
    stack
        .cp
        .create_pod("after", USER, SERVER, port, "running")
        .await;
    let after = stack.mint("after").await;
    let took = until(
        &stack.http,
        stack.envoy.listener,
        "after",
        &after,
        Duration::from_secs(10),
        |a| a.status == 200,
    )
    .await
    .unwrap_or_else(|e| panic!("after restart: {e}\n{}", stack.logs()));
    eprintln!("pod created after restart routable in {took:?}");
    // The old one still works.
    let a = through_envoy(&stack.http, stack.envoy.listener, "steady", &token)
        .await
        .unwrap();
    assert_eq!(a.status, 200);

    // A graceful stop ends Envoy's open ADS stream too, promptly, and Envoy serves on.
    let (status, took) = stack.cp.terminate();
    assert_eq!(status, 0, "{}", stack.cp.log());
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(stack.cp.log().contains("ADS stream closed"));
    let a = through_envoy(&stack.http, stack.envoy.listener, "after", &after)
        .await
        .unwrap();
    assert_eq!(a.status, 200);
}

/// `POST /api/proxy-tokens` as the stack's user: `(id, token)`.
async fn create_api_token(stack: &Stack, name: &str) -> (String, String) {
    let resp = stack
        .http
        .post(format!("http://{}/api/proxy-tokens", stack.cp.http))
        .header(reqwest::header::COOKIE, &stack.session)
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

/// `POST /v1/capabilities` with an API token: the capability.
async fn mint_with(stack: &Stack, api_token: &str, pod: &str) -> String {
    let resp = stack
        .http
        .post(format!("http://{}/v1/capabilities", stack.cp.http))
        .bearer_auth(api_token)
        .json(&json!({"pod": pod, "port": APP_PORT}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_api_token_cuts_off_its_capabilities_within_a_second() {
    let stack = Stack::start(&[]).await;
    let pod = FakePod::start_on("pod", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    stack
        .cp
        .create_pod("cli", USER, SERVER, pod.addr().port(), "running")
        .await;
    let (t1_id, t1) = create_api_token(&stack, "T1").await;
    let (_, t2) = create_api_token(&stack, "T2").await;
    let by_t1 = mint_with(&stack, &t1, "cli").await;
    let by_t2 = mint_with(&stack, &t2, "cli").await;
    let by_session = stack.mint("cli").await;
    for token in [&by_t1, &by_t2, &by_session] {
        until(&stack.http, stack.envoy.listener, "cli", token, LIVE, |a| {
            a.status == 200
        })
        .await
        .unwrap_or_else(|e| panic!("before the revocation: {e}\n{}", stack.logs()));
    }

    let resp = stack
        .http
        .delete(format!("http://{}/api/proxy-tokens/{t1_id}", stack.cp.http))
        .header(reqwest::header::COOKIE, &stack.session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Envoy has it cached as verified: the revocation list still refuses it.
    let took = until(
        &stack.http,
        stack.envoy.listener,
        "cli",
        &by_t1,
        LIVE,
        |a| a.status == 401 && a.body.contains("revoked"),
    )
    .await
    .unwrap_or_else(|e| panic!("revoked: {e}\n{}", stack.logs()));
    eprintln!("API token revoked → its capability refused in {took:?}");
    // Refused from then on: nothing reaches the pod with it.
    let before = pod.requests().len();
    let a = through_envoy(&stack.http, stack.envoy.listener, "cli", &by_t1)
        .await
        .unwrap();
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(
        pod.requests().len(),
        before,
        "the revoked capability reached the pod"
    );
    // The other token's capability and the session's still reach it, as alice.
    for token in [&by_t2, &by_session] {
        pod.reset();
        let a = through_envoy(&stack.http, stack.envoy.listener, "cli", token)
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        let reached = pod.requests();
        assert_eq!(reached.len(), 1, "{}", a.body);
        assert_eq!(reached[0].header("x-podgate-user"), Some(USER));
    }
}

/// Signing keys at rest, through Envoy: a restart with another key-encryption key stops with an
/// error naming a stored key and the key-encryption key it needs, and replaces nothing, so
/// Envoy keeps serving the capabilities it has; with the right key the very same signing keys
/// come back and a new capability is signed with the same key as before. A key rotated in
/// under a key-encryption key the running control plane lacks makes its ADS port say
/// `NOT_SERVING` once its rounds have failed for 10 s, which `/metrics` shows, while Envoy
/// keeps serving what it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_encryption_key_it_lacks_stops_the_start_or_takes_the_control_plane_out_of_service() {
    let mut stack = Stack::start(&[]).await;
    let pod = FakePod::start_on("pod", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    stack
        .cp
        .create_pod("sealed", USER, SERVER, pod.addr().port(), "running")
        .await;
    let token = stack.mint("sealed").await;
    until(
        &stack.http,
        stack.envoy.listener,
        "sealed",
        &token,
        LIVE,
        |a| a.status == 200,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    let stored = stack.cp.admin(Method::GET, "/v1/keys", None).await;
    let needed = stored[0]["kek_id"].as_str().unwrap().to_owned();
    assert!(stored
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["kek_id"] == needed.as_str()));

    stack.cp.kill();
    let right = stack.cp.kek();
    let wrong = stack.cp.dir().join("kek-wrong");
    let wrong_id = make_kek(&wrong);
    stack.cp.set_kek(&wrong);
    let err = stack.cp.serve_expecting_failure().await;
    assert!(
        err.contains("stored key ") && err.contains(&needed) && err.contains(&wrong_id),
        "{err}"
    );
    // Nothing new was pushed: the capability Envoy has keeps working.
    let a = through_envoy(&stack.http, stack.envoy.listener, "sealed", &token)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);

    stack.cp.set_kek(&right);
    stack.cp.spawn().await;
    assert_eq!(stack.cp.admin(Method::GET, "/v1/keys", None).await, stored);
    let again = stack.mint("sealed").await;
    assert_eq!(kid_of(&again), kid_of(&token));
    for t in [&token, &again] {
        let a = through_envoy(&stack.http, stack.envoy.listener, "sealed", t)
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // Those requests reached the pod, without our token.
    let seen = pod.requests();
    assert!(
        seen.len() >= 3 && seen.iter().all(|s| !s.has_header("podgate-token")),
        "{seen:?}"
    );

    // Another process rotates the keys under a new key-encryption key (a replica restarted
    // with it too early): this control plane cannot open the new keys, so its Envoys would
    // never get them. Its rounds fail, and 10 s on it says NOT_SERVING.
    assert_eq!(cp_metric(&stack, "podgate_xds_serving", &[]).await, 1.0);
    assert!(cp_metric(&stack, "podgate_xds_last_round_timestamp_seconds", &[]).await > 0.0);
    let newer = stack.cp.dir().join("kek-newer");
    make_kek(&newer);
    let database_url = format!("sqlite://{}", stack.cp.dir().join("podgate.db").display());
    let mut rotate = std::process::Command::new(podgate_binary());
    rotate
        .env_clear()
        .args(["keys", "rotate", "--database-url", &database_url])
        .arg("--key-encryption-key-file")
        .arg(&newer)
        .arg("--previous-key-encryption-key-file")
        .arg(&right);
    let out = tokio::task::spawn_blocking(move || rotate.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let rotated = std::time::Instant::now();
    while cp_metric(&stack, "podgate_xds_serving", &[]).await != 0.0 {
        assert!(
            rotated.elapsed() < Duration::from_secs(30),
            "still SERVING:\n{}",
            stack.cp.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        rotated.elapsed() >= Duration::from_secs(9),
        "NOT_SERVING after {:?} only",
        rotated.elapsed()
    );
    assert!(cp_metric(&stack, "podgate_xds_build_failures_total", &[]).await >= 1.0);
    assert!(stack.cp.log().contains("reloading signing keys failed"));
    // Envoy keeps the configuration it has: the capability still reaches the pod.
    let a = through_envoy(&stack.http, stack.envoy.listener, "sealed", &token)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_envoy_stream_its_pushes_and_acks() {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let stack = Stack::start(&["--metrics-listen", &metrics.to_string()]).await;
    let pod = FakePod::start("web").await.unwrap();
    stack
        .cp
        .create_pod("web", USER, SERVER, pod.addr().port(), "running")
        .await;
    let token = stack.mint("web").await;
    until(
        &stack.http,
        stack.envoy.listener,
        "web",
        &token,
        LIVE,
        |a| a.status == 200,
    )
    .await
    .unwrap_or_else(|e| panic!("routable: {e}\n{}", stack.logs()));

    // Served on its own listener only.
    let api = stack
        .http
        .get(format!("http://{}/metrics", stack.cp.http))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 404);
    let body = stack
        .http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let s = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(sample(&s, "podgate_xds_streams", &[]), 1.0, "{body}");
    for kind in ["cds", "ecds"] {
        let pushes = sample(&s, "podgate_xds_pushes_total", &[("type", kind)]);
        let acks = sample(&s, "podgate_xds_acks_total", &[("type", kind)]);
        assert!(acks >= 1.0 && pushes >= acks, "{kind}: {body}");
        assert_eq!(
            sample(&s, "podgate_xds_nacks_total", &[("type", kind)]),
            0.0
        );
        assert_eq!(
            sample(&s, "podgate_xds_ack_seconds_count", &[("type", kind)]),
            acks,
            "{body}"
        );
        assert_eq!(sample(&s, "podgate_xds_version", &[("type", kind)]), 1.0);
    }
    // The pod's creation changed the filter's configuration: at least two ECDS versions.
    assert!(sample(&s, "podgate_xds_acks_total", &[("type", "ecds")]) >= 2.0);
    assert!(sample(&s, "podgate_xds_snapshots_total", &[]) >= 2.0);
    // Every round worked, the last one within a resync interval or so.
    assert_eq!(sample(&s, "podgate_xds_build_failures_total", &[]), 0.0);
    let last_round = sample(&s, "podgate_xds_last_round_timestamp_seconds", &[]);
    assert!((now_unix() as f64) - last_round < 10.0, "{last_round}");
    assert!(sample(&s, "podgate_db_seconds_count", &[("op", "snapshot")]) >= 2.0);
    assert_eq!(
        sample(
            &s,
            "podgate_mints_total",
            &[("kind", "capability"), ("outcome", "ok")]
        ),
        1.0
    );
}
