//! Sign-out and cuts of lost access, live, through a real Envoy 1.40 fed by the control plane's
//! ADS server, with a recording fake pod: a browser signs in and reaches the pod, signs out on
//! the pod host, and the same capability is refused on the pod host within one push (the time
//! is printed) and its open WebSocket closed and its event stream reset within a second, as the
//! configuration with the cut arrives; a team removal cuts a member off the same way, WebSocket included, and one stopped
//! at its cut changes nothing until it is repeated;
//! `/.podgate/userinfo` is answered by the filter and never reaches the pod.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod xds_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::header::COOKIE;
use reqwest::Method;
use serde_json::{json, Value};
use xds_support::*;

/// One config push, with room for a loaded machine.
const ONE_PUSH: Duration = Duration::from_secs(2);
/// How long after a sign-out or a removal answers its WebSockets may stay open: the push and
/// the filter's configure callback, not the filter's tick (about 0.2 s here; the rest is room
/// for a loaded machine, still well under the capability's lifetime the tick would wait for).
const WEBSOCKET_CUT: Duration = Duration::from_secs(3);

/// A WebSocket upgrade to `pod` through Envoy with `token` as `podgate-token`, over a raw
/// connection; the connection once the pod answered `101`.
async fn open_websocket(envoy: SocketAddr, pod: &str, token: &str) -> tokio::net::TcpStream {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         podgate-token: {token}\r\n\r\n",
        pod_host(pod)
    );
    open_raw(envoy, &request, "HTTP/1.1 101").await
}

/// The pod's server-sent events (one every 200 ms, for minutes) through Envoy with `token` as
/// `podgate-token`, over a raw connection; the connection once the pod answered `200`.
async fn open_event_stream(envoy: SocketAddr, pod: &str, token: &str) -> tokio::net::TcpStream {
    let request = format!(
        "GET /_fake/events?every_ms=200&count=1000 HTTP/1.1\r\nHost: {}\r\n\
         Accept: text/event-stream\r\npodgate-token: {token}\r\n\r\n",
        pod_host(pod)
    );
    open_raw(envoy, &request, "HTTP/1.1 200").await
}

/// Polls `GET /` on the pod host with `cookie` until it is refused; the time it took.
async fn until_refused(stack: &Stack, pod: &str, cookie: &str) -> Duration {
    let http = no_redirects();
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < ONE_PUSH {
        let (status, location, _, body) =
            get_on_pod(&http, stack.envoy.listener, pod, "/", Some(cookie)).await;
        // A page load with a refused capability is sent to sign in again.
        if status == 302 && location.is_some_and(|l| l.contains("/api/proxy-auth?")) {
            return start.elapsed();
        }
        last = format!("{status} {body}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "still let through {ONE_PUSH:?} later; last answer: {last}\n{}",
        stack.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_on_the_pod_host_refuses_the_capability_within_one_push() {
    let stack = Stack::start(&[]).await;
    let pod = FakePod::start_on("pod-web", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    stack
        .cp
        .create_pod("web", USER, SERVER, pod.addr().port(), "running")
        .await;
    // The pod directory reaches Envoy.
    let token = stack.mint("web").await;
    until(
        &stack.http,
        stack.envoy.listener,
        "web",
        &token,
        ONE_PUSH,
        |a| a.status == 200,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));

    let http = no_redirects();
    let envoy = stack.envoy.listener;
    let cap = sign_in_through_envoy(&stack, "web", &stack.session).await;
    let (status, _, _, body) = get_on_pod(&http, envoy, "web", "/page", Some(&cap)).await;
    assert_eq!(status, 200, "{body}");
    let seen = pod.requests().len();
    assert_eq!(
        pod.requests().last().unwrap().header("x-podgate-user"),
        Some(USER)
    );

    // Who am I, on the pod host: answered by the filter, from the capability.
    let (status, _, _, body) =
        get_on_pod(&http, envoy, "web", "/.podgate/userinfo", Some(&cap)).await;
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["user"], USER);
    assert_eq!(info["email"], format!("{USER}@example.dev"));
    assert_eq!(info["pod"], "web");
    assert_eq!(info["port"], APP_PORT);
    assert!(info["expires_at"].as_i64().unwrap() > 0);
    let (status, _, _, _) = get_on_pod(&http, envoy, "web", "/.podgate/userinfo", None).await;
    assert_eq!(status, 401, "userinfo without a capability");
    assert_eq!(pod.requests().len(), seen, "userinfo reached the pod");

    // A WebSocket of the same capability (a script's copy, as a header token).
    let cap_value = cap.strip_prefix("podgate_cap=").unwrap();
    let mut ws = open_websocket(envoy, "web", cap_value).await;
    // When Envoy closes it, watched from now on so the polls below do not delay the reading.
    let ws_closed = tokio::spawn(async move {
        until_closed(&mut ws, Duration::from_secs(10)).await;
        Instant::now()
    });
    // And an event stream of it, which the pod would keep sending for minutes.
    let mut events = open_event_stream(envoy, "web", cap_value).await;
    let events_closed = tokio::spawn(async move {
        until_closed(&mut events, Duration::from_secs(10)).await;
        Instant::now()
    });
    // The user's other browser, signed in too and already let through (the filter remembers
    // that decision).
    let other_session = stack.cp.session(USER).await;
    // The event stream has flowed for over a second (a request in flight as a cut lands is
    // let finish, and reset a second later if still open).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let other_cap = sign_in_through_envoy(&stack, "web", &other_session).await;
    let (status, _, _, body) = get_on_pod(&http, envoy, "web", "/page", Some(&other_cap)).await;
    assert_eq!(status, 200, "{body}");
    let seen = pod.requests().len();

    // Sign out on the pod host: the filter clears the cookie and sends the browser on.
    let (status, location, cookies, _) =
        get_on_pod(&http, envoy, "web", "/.podgate/logout", Some(&cap)).await;
    assert_eq!(status, 302);
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("podgate_cap=;") && c.contains("Max-Age=0")),
        "{cookies:?}"
    );
    let logout = location.unwrap();
    assert_eq!(logout, format!("http://{}/auth/logout", stack.cp.http));
    assert_eq!(pod.requests().len(), seen, "logout reached the pod");
    let logout_sent = Instant::now();
    let resp = http
        .get(&logout)
        .header(COOKIE, &stack.session)
        .send()
        .await
        .unwrap();
    let signed_out = Instant::now();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"signed_out": true, "sessions_ended": 1})
    );

    // The same capability (a copy the browser kept, or a script's), on the pod host.
    let took = until_refused(&stack, "web", &cap).await;
    eprintln!(
        "sign-out → capability refused on the pod host in {took:?} ({:?} after the logout answer)",
        signed_out.elapsed()
    );
    // The WebSocket it opened is closed as the configuration with the cut arrives.
    let closed_at = ws_closed.await.unwrap();
    assert!(
        closed_at >= logout_sent,
        "the WebSocket ended before the sign-out"
    );
    let closed = closed_at.saturating_duration_since(signed_out);
    eprintln!("sign-out → WebSocket closed {closed:?} after the logout answer");
    assert!(
        closed <= WEBSOCKET_CUT,
        "the WebSocket closed {closed:?} after the logout answer\n{}",
        stack.logs()
    );
    // So is the event stream, although its request was judged long before.
    let closed_at = events_closed.await.unwrap();
    assert!(
        closed_at >= logout_sent,
        "the event stream ended before the sign-out"
    );
    let closed = closed_at.saturating_duration_since(signed_out);
    eprintln!("sign-out → event stream reset {closed:?} after the logout answer");
    assert!(
        closed <= WEBSOCKET_CUT,
        "the event stream ended {closed:?} after the logout answer\n{}",
        stack.logs()
    );
    let after = pod.requests().len();
    for _ in 0..5 {
        let (status, _, _, _) = get_on_pod(&http, envoy, "web", "/page", Some(&cap)).await;
        assert_eq!(status, 302);
    }
    assert_eq!(
        pod.requests().len(),
        after,
        "a refused capability reached the pod"
    );
    // The session's userinfo on the control plane says signed out.
    let resp = http
        .get(format!("http://{}/auth/userinfo", stack.cp.http))
        .header(COOKIE, &stack.session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // The user's other sessions are not signed out: the other browser's capability still goes
    // through with the configuration that cut the first one, and the pod gets the user without
    // the capability.
    for path in ["/page", "/after-sign-out"] {
        let (status, _, _, body) = get_on_pod(&http, envoy, "web", path, Some(&other_cap)).await;
        assert_eq!(status, 200, "{path}: {body}\n{}", stack.logs());
        let got = pod.requests().last().unwrap().clone();
        assert_eq!(got.path, path);
        assert_eq!(got.header("x-podgate-user"), Some(USER));
        assert!(
            got.header("cookie")
                .is_none_or(|c| !c.contains("podgate_cap")),
            "{got:?}"
        );
    }
    let other = stack.cp.session(USER).await;
    let token = stack.cp.mint(&other, "web").await.unwrap();
    until(&stack.http, envoy, "web", &token, ONE_PUSH, |a| {
        a.status == 200
    })
    .await
    .unwrap_or_else(|e| panic!("another session's capability: {e}"));
}

/// A pod `shared` of the stack's user in team `t1`, with bob as a member; the pod, and bob's
/// capability for it once it reaches the pod through Envoy.
async fn bob_on_a_team_pod(stack: &Stack) -> (FakePod, String) {
    let pod = FakePod::start_on("pod-team", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    stack
        .cp
        .team_pod_with_member("bob", "shared", pod.addr().port())
        .await;
    let bob_session = stack.cp.session("bob").await;
    let bob = stack.cp.mint(&bob_session, "shared").await.unwrap();
    until(
        &stack.http,
        stack.envoy.listener,
        "shared",
        &bob,
        ONE_PUSH,
        |a| a.status == 200,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    (pod, bob)
}

/// Waits until bob's capability is refused through Envoy as revoked, within one push; then
/// checks it stays refused and reaches the pod no more. The time the refusal took.
async fn until_bob_is_cut(stack: &Stack, pod: &FakePod, bob: &str) -> Duration {
    let took = until(
        &stack.http,
        stack.envoy.listener,
        "shared",
        bob,
        ONE_PUSH,
        |a| a.status == 401,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    let after = pod.requests().len();
    for _ in 0..5 {
        let a = through_envoy(&stack.http, stack.envoy.listener, "shared", bob)
            .await
            .unwrap();
        assert_eq!(a.status, 401, "{}", a.body);
        assert!(a.body.contains("revoked"), "{}", a.body);
    }
    assert_eq!(
        pod.requests().len(),
        after,
        "bob's capability reached the pod"
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_removal_cuts_the_member_off_within_one_push() {
    let stack = Stack::start(&[]).await;
    let (pod, bob) = bob_on_a_team_pod(&stack).await;
    let alice = stack.mint("shared").await;
    assert_eq!(
        pod.requests().last().unwrap().header("x-podgate-user"),
        Some("bob")
    );

    // Bob's WebSocket, and the owner's.
    let mut bob_ws = open_websocket(stack.envoy.listener, "shared", &bob).await;
    let bob_ws_closed = tokio::spawn(async move {
        until_closed(&mut bob_ws, Duration::from_secs(5)).await;
        Instant::now()
    });
    let mut alice_ws = open_websocket(stack.envoy.listener, "shared", &alice).await;

    stack
        .cp
        .admin(Method::DELETE, "/v1/teams/t1/members/bob", None)
        .await;
    let removed = Instant::now();
    let took = until_bob_is_cut(&stack, &pod, &bob).await;
    eprintln!(
        "team removal → bob's capability refused in {took:?} (since the admin answer: {:?})",
        removed.elapsed()
    );
    let closed = bob_ws_closed
        .await
        .unwrap()
        .saturating_duration_since(removed);
    eprintln!("team removal → bob's WebSocket closed {closed:?} after the admin answer");
    assert!(
        closed <= WEBSOCKET_CUT,
        "bob's WebSocket closed {closed:?} after the admin answer\n{}",
        stack.logs()
    );
    // The owner kept access.
    let a = through_envoy(&stack.http, stack.envoy.listener, "shared", &alice)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        pod.requests().last().unwrap().header("x-podgate-user"),
        Some(USER)
    );
    // And kept the WebSocket, past a tick of the filter.
    {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(1500), alice_ws.read(&mut buf)).await;
        assert!(read.is_err(), "the owner's WebSocket ended: {read:?}");
    }
}

/// A member removal whose cut fails (a database error part way through) changes nothing: the
/// member is still in the team and still reaches the pod through Envoy. The same removal again
/// removes them and cuts them off within one push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_removal_stopped_at_its_cut_changes_nothing_and_a_retry_cuts_within_one_push() {
    let stack = Stack::start(&[]).await;
    let (pod, bob) = bob_on_a_team_pod(&stack).await;

    let removal = "/v1/teams/t1/members/bob";
    stack
        .cp
        .admin_while_cuts_fail(Method::DELETE, removal, None)
        .await;

    // Nothing changed: bob is still a member and, a push's time later, still reaches the pod.
    let members = stack
        .cp
        .admin(Method::GET, "/v1/teams/t1/members", None)
        .await;
    assert_eq!(members[0]["user_id"], "bob", "{members}");
    tokio::time::sleep(ONE_PUSH).await;
    let before = pod.requests().len();
    let a = through_envoy(&stack.http, stack.envoy.listener, "shared", &bob)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}\n{}", a.body, stack.logs());
    assert_eq!(pod.requests().len(), before + 1);
    assert_eq!(
        pod.requests().last().unwrap().header("x-podgate-user"),
        Some("bob")
    );

    // The same removal again: it is done, and bob's capability is refused within one push.
    stack.cp.admin(Method::DELETE, removal, None).await;
    let took = until_bob_is_cut(&stack, &pod, &bob).await;
    eprintln!("repeated team removal → bob's capability refused in {took:?}");
    let members = stack
        .cp
        .admin(Method::GET, "/v1/teams/t1/members", None)
        .await;
    assert_eq!(members, json!([]), "{members}");
}
