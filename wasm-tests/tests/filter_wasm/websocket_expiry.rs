//! An open WebSocket is closed when its capability expires, by the root context's tick
//! (1 s); frames are not inspected. A push that cuts a capability off closes its WebSockets
//! and resets its other open streams (server-sent events, a long download).
use std::time::Duration;

use podgate_wasm_tests::host::{FilterVm, Outcome};

use crate::support::*;

/// A WebSocket forwarded with a header token valid until `NOW + LIFETIME`, upgraded.
fn open(vm: &mut FilterVm) -> u32 {
    open_with(vm, &alpha_cap())
}

/// The same, with `token`.
fn open_with(vm: &mut FilterVm, token: &str) -> u32 {
    let ctx = vm.open_stream().unwrap();
    let req = Req::alpha().token(token).websocket();
    let out = vm.request_headers(ctx, &req.headers, false).unwrap();
    assert_eq!(out.header("upgrade"), Some("websocket"), "{out:?}");
    let out = vm
        .response_headers(
            ctx,
            &[
                (":status", "101"),
                ("upgrade", "websocket"),
                ("connection", "upgrade"),
            ],
            false,
        )
        .unwrap();
    assert!(matches!(out, Outcome::Continue { .. }), "{out:?}");
    ctx
}

fn at(vm: &mut FilterVm, secs: i64) {
    vm.set_time_secs(u64::try_from(secs).unwrap());
}

const EXP: i64 = NOW + LIFETIME;

#[test]
fn the_tick_closes_a_websocket_when_its_capability_expires() {
    let mut vm = vm();
    assert_eq!(vm.tick_period(), Some(Duration::from_secs(1)));
    let ws = open(&mut vm);
    // A plain request with the same token stays open (only WebSockets close at `exp`).
    let plain = vm.open_stream().unwrap();
    let req = Req::alpha().token(&alpha_cap());
    vm.request_headers(plain, &req.headers, true).unwrap();

    for t in [NOW + 1, EXP - 60, EXP - 1] {
        at(&mut vm, t);
        assert_eq!(vm.tick().unwrap(), Vec::<u32>::new(), "at {t}");
        // Frames both ways pass before expiry.
        let up = vm.request_body(ws, b"\x81\x05hello", false).unwrap();
        assert!(matches!(up, Outcome::Continue { .. }), "{up:?}");
        let down = vm.response_body(ws, b"\x81\x05hello", false).unwrap();
        assert!(matches!(down, Outcome::Continue { .. }), "{down:?}");
        assert_eq!(vm.response_body_of(ws).unwrap(), b"\x81\x05hello");
    }
    at(&mut vm, EXP);
    assert_eq!(vm.tick().unwrap(), vec![ws], "closed at exp");
    assert!(!vm.is_open(ws));
    assert!(vm.is_open(plain));
    assert_eq!(metric(&mut vm, "podgate.websocket.expired"), 1);
    // Closed once: later ticks have nothing to do.
    at(&mut vm, EXP + 5);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    vm.close_stream(plain).unwrap();
    assert!(!vm.is_dead());
}

#[test]
fn frames_are_not_inspected_the_tick_alone_closes_at_expiry() {
    // The filter exports no body callbacks (each would cost every response a VM entry),
    // so a frame after expiry passes until the next tick, at most one period later.
    let mut vm = vm();
    let ws = open(&mut vm);
    at(&mut vm, EXP);
    let out = vm.request_body(ws, b"\x81\x01x", false).unwrap();
    assert!(matches!(out, Outcome::Continue { .. }), "{out:?}");
    assert_eq!(vm.host_calls().get("proxy_close_stream"), None);
    assert_eq!(vm.tick().unwrap(), vec![ws], "the next tick closes it");
    assert_eq!(metric(&mut vm, "podgate.websocket.expired"), 1);
}

#[test]
fn a_websocket_that_ended_is_forgotten() {
    let mut vm = vm();
    let ws = open(&mut vm);
    vm.close_stream(ws).unwrap();
    let before = vm.host_calls();
    at(&mut vm, EXP + 10);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    let after = vm.host_calls();
    assert_eq!(
        after.get("proxy_set_effective_context"),
        before.get("proxy_set_effective_context"),
        "no attempt to close a stream that is gone"
    );
    assert_eq!(metric(&mut vm, "podgate.websocket.expired"), 0);
}

#[test]
fn a_websocket_opened_on_a_memo_hit_is_closed_at_expiry_too() {
    let mut vm = vm();
    let token = alpha_cap();
    let first = open_with(&mut vm, &token);
    // The same headers again: answered from the decision memo.
    let second = open_with(&mut vm, &token);
    assert_eq!(metric(&mut vm, "podgate.token_cache.hits"), 1);
    at(&mut vm, EXP);
    let mut closed = vm.tick().unwrap();
    closed.sort_unstable();
    assert_eq!(closed, vec![first, second]);
    assert_eq!(metric(&mut vm, "podgate.websocket.expired"), 2);
}

#[test]
fn several_websockets_close_each_at_its_own_expiry() {
    let mut vm = vm();
    let early_token = cap_with(&ed_key(1), &claims("alpha", PORT), NOW, 60);
    let open_with = |vm: &mut FilterVm, token: &str| {
        let ctx = vm.open_stream().unwrap();
        let req = Req::alpha()
            .cookie(token)
            .websocket()
            .set("origin", "http://localhost-8726-pod-alpha.localhost:10000");
        let out = vm.request_headers(ctx, &req.headers, false).unwrap();
        assert!(matches!(out, Outcome::Continue { .. }), "{out:?}");
        ctx
    };
    let early = open_with(&mut vm, &early_token);
    let late = open_with(&mut vm, &alpha_cap());
    at(&mut vm, NOW + 59);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    at(&mut vm, NOW + 60);
    assert_eq!(vm.tick().unwrap(), vec![early]);
    assert!(vm.is_open(late));
    at(&mut vm, EXP);
    assert_eq!(vm.tick().unwrap(), vec![late]);
    assert_eq!(metric(&mut vm, "podgate.websocket.expired"), 2);
}

#[test]
fn a_push_that_cuts_a_websockets_capability_off_closes_it() {
    // Sign-out and loss of access end open WebSockets too: the push lists the cut, and the
    // configure callback closes the WebSockets whose capability it refuses, and only those,
    // without waiting for a tick.
    let mut vm = vm();
    let signed_out = open_with(
        &mut vm,
        &podgate_protocol::token::mint_in_session(
            podgate_protocol::token::TokenKind::Capability,
            &ed_key(1),
            &claims("alpha", PORT),
            Some("sid-signed-out"),
            NOW,
            LIFETIME,
        )
        .unwrap(),
    );
    let other = open(&mut vm);
    at(&mut vm, NOW + 10);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    let mut cfg = config(&[&ed_key(1)]);
    cfg["cutoffs"] = serde_json::json!({
        "sessions": [{"sid": "sid-signed-out", "at": NOW + 10, "until": NOW + 10 + LIFETIME + LEEWAY}]
    });
    let pushed = serde_json::to_vec(&cfg).unwrap();
    assert_eq!(
        vm.configure_closing(&pushed).unwrap(),
        (true, vec![signed_out]),
        "closed as the push arrives"
    );
    assert!(vm.is_open(other));
    at(&mut vm, NOW + 11);
    assert_eq!(
        vm.tick().unwrap(),
        Vec::<u32>::new(),
        "nothing left for the tick"
    );
    assert_eq!(metric(&mut vm, "podgate.websocket.cut"), 1);
    assert_eq!(metric(&mut vm, "podgate.websocket.expired"), 0);
    // A user cut closes the other one.
    cfg["cutoffs"] = serde_json::json!({
        "users": [{"sub": "user-1", "pod": "alpha", "at": NOW + 12, "until": NOW + 12 + LIFETIME + LEEWAY}]
    });
    let pushed = serde_json::to_vec(&cfg).unwrap();
    assert_eq!(vm.configure_closing(&pushed).unwrap(), (true, vec![other]));
    assert_eq!(metric(&mut vm, "podgate.websocket.cut"), 2);
}

#[test]
fn a_push_that_drops_a_signing_key_closes_the_websockets_it_signed() {
    // An operator who removes a key (a compromised one) ends what it signed: open WebSockets
    // too, as the push arrives, not at their capabilities' expiry. Those on a key still
    // listed stay open.
    let mut vm = vm_with(&config(&[&ed_key(1), &ed_key(2)]));
    let dropped = open(&mut vm);
    let kept = open_with(&mut vm, &cap(&ed_key(2), "alpha", PORT));
    at(&mut vm, NOW + 10);
    let pushed = serde_json::to_vec(&config(&[&ed_key(2)])).unwrap();
    assert_eq!(
        vm.configure_closing(&pushed).unwrap(),
        (true, vec![dropped])
    );
    assert!(vm.is_open(kept));
    at(&mut vm, NOW + 11);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    assert_eq!(metric(&mut vm, "podgate.websocket.cut"), 1);
    // A new request on the dropped key is refused too.
    let ctx = vm.open_stream().unwrap();
    let out = vm
        .request_headers(ctx, &Req::alpha().token(&alpha_cap()).headers, true)
        .unwrap();
    assert_eq!(out.status(), Some(401), "{out:?}");
}

/// A plain request on `token` whose response is still streaming (server-sent events).
fn streaming(vm: &mut FilterVm, token: &str) -> u32 {
    let ctx = vm.open_stream().unwrap();
    let out = vm
        .request_headers(ctx, &Req::alpha().token(token).headers, true)
        .unwrap();
    assert!(matches!(out, Outcome::Continue { .. }), "{out:?}");
    let out = vm
        .response_headers(
            ctx,
            &[(":status", "200"), ("content-type", "text/event-stream")],
            false,
        )
        .unwrap();
    assert!(matches!(out, Outcome::Continue { .. }), "{out:?}");
    ctx
}

#[test]
fn a_push_that_cuts_a_capability_off_resets_its_open_streams() {
    // Sign-out and loss of access end every open stream of the capability, not only its
    // WebSockets: an event stream would otherwise flow on for as long as the pod sends. The
    // others stay, and none is reset at `exp` (a request is judged when it starts).
    let mut vm = vm();
    let in_session = |sid: &str| {
        podgate_protocol::token::mint_in_session(
            podgate_protocol::token::TokenKind::Capability,
            &ed_key(1),
            &claims("alpha", PORT),
            Some(sid),
            NOW,
            LIFETIME,
        )
        .unwrap()
    };
    let signed_out = streaming(&mut vm, &in_session("sid-signed-out"));
    let kept = streaming(&mut vm, &in_session("sid-kept"));
    let ended = streaming(&mut vm, &in_session("sid-signed-out"));
    vm.close_stream(ended).unwrap();
    at(&mut vm, NOW + 10);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    // A request of that session in flight as the push lands.
    let young = streaming(&mut vm, &in_session("sid-signed-out"));
    let mut cfg = config(&[&ed_key(1)]);
    cfg["cutoffs"] = serde_json::json!({
        "sessions": [{"sid": "sid-signed-out", "at": NOW + 10, "until": NOW + 10 + LIFETIME + LEEWAY}]
    });
    let pushed = serde_json::to_vec(&cfg).unwrap();
    assert_eq!(
        vm.configure_closing(&pushed).unwrap(),
        (true, vec![signed_out]),
        "reset as the push arrives, and only the cut one that was not just let through"
    );
    assert!(!vm.is_open(signed_out));
    assert!(vm.is_open(kept));
    assert!(vm.is_open(young));
    assert_eq!(metric(&mut vm, "podgate.stream.cut"), 1);
    // The one in flight is let finish; still open a second later, the tick resets it.
    at(&mut vm, NOW + 11);
    assert_eq!(vm.tick().unwrap(), vec![young]);
    assert_eq!(metric(&mut vm, "podgate.stream.cut"), 2);
    assert_eq!(metric(&mut vm, "podgate.websocket.cut"), 0);
    // Past `exp`, the kept one is still open: streams are not timed out by the filter.
    at(&mut vm, EXP + 5);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    assert!(vm.is_open(kept));
    vm.close_stream(kept).unwrap();
    assert!(!vm.is_dead());
}

/// An API token of the exact shape (the control plane's answers are what the filter trusts).
const API_TOKEN: &str =
    "pg_0123456789abcdef01234567_abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst";

/// A gate with API tokens exchanged at the edge (renewal on: the exchange URL and secret),
/// renewing in the last 300 s, whose host takes the filter's calls.
fn exchanging_vm() -> FilterVm {
    let mut cfg = config(&[&ed_key(1)]);
    cfg["renewal"] = serde_json::json!({
        "url": "http://127.0.0.1:8080/api/proxy-renew",
        "secret": "renew-secret-0123456789abcdef0123456789",
        "before_secs": 300
    });
    let mut vm = vm_with(&cfg);
    vm.accept_http_calls();
    vm
}

/// Answers the one pending exchange call with `capability`.
fn answer_exchange(vm: &mut FilterVm, capability: &str) {
    let calls = vm.pending_http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let path = calls[0].headers.iter().find(|(n, _)| n == ":path");
    assert!(
        path.is_some_and(|(_, p)| p.starts_with("/api/proxy-exchange?")),
        "{calls:?}"
    );
    let body = serde_json::json!({ "token": capability }).to_string();
    vm.answer_http_call(calls[0].token, &[(":status", "200")], body.as_bytes())
        .unwrap();
}

/// A capability for alpha as an exchange mints it, issued at `iat`.
fn exchanged_cap(iat: i64) -> String {
    let claims = podgate_protocol::token::PodClaims {
        jti: format!("exchanged-{iat}"),
        ..claims("alpha", PORT)
    };
    cap_with(&ed_key(1), &claims, iat, LIFETIME)
}

#[test]
fn a_websocket_on_an_api_token_is_renewed_by_exchanging_the_token_again() {
    let mut vm = exchanging_vm();
    let ctx = vm.open_stream().unwrap();
    let req = Req::alpha().bearer(API_TOKEN).websocket();
    let out = vm.request_headers(ctx, &req.headers, false).unwrap();
    assert!(matches!(out, Outcome::Paused { .. }), "{out:?}");
    answer_exchange(&mut vm, &exchanged_cap(NOW));
    assert_eq!(vm.continued(ctx), Some(1));
    let out = vm
        .response_headers(ctx, &[(":status", "101"), ("upgrade", "websocket")], false)
        .unwrap();
    assert!(matches!(out, Outcome::Continue { .. }), "{out:?}");
    // Not due yet: no call.
    at(&mut vm, EXP - 301);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    assert!(vm.pending_http_calls().is_empty());
    // Due: the token is exchanged again, once, with nobody waiting on it.
    at(&mut vm, EXP - 300);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    at(&mut vm, EXP - 299);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    answer_exchange(&mut vm, &exchanged_cap(EXP - 300));
    // The next tick moves the socket to the fresh capability: open past the first one's `exp`.
    at(&mut vm, EXP - 298);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    at(&mut vm, EXP + 10);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new(), "still open");
    assert!(vm.is_open(ctx));
    let second_exp = EXP - 300 + LIFETIME;
    at(&mut vm, second_exp - 300);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    let calls = vm.pending_http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    // The control plane down: the call fails, the socket stays on its capability and the
    // token is asked for again no sooner than 5 s later.
    vm.answer_http_call(calls[0].token, &[(":status", "503")], b"")
        .unwrap();
    at(&mut vm, second_exp - 298);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    assert!(vm.pending_http_calls().is_empty());
    at(&mut vm, second_exp - 295);
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    let calls = vm.pending_http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    // The token refused (revoked): the socket is closed with the answer.
    vm.answer_http_call(calls[0].token, &[(":status", "401")], b"")
        .unwrap();
    assert!(vm.was_reset(ctx), "closed when the token is refused");
    assert_eq!(metric(&mut vm, "podgate.websocket.cut"), 1);
    assert!(!vm.is_dead());
}

#[test]
fn a_socket_is_never_moved_to_a_capability_that_ends_sooner() {
    let mut vm = exchanging_vm();
    let ctx = vm.open_stream().unwrap();
    let req = Req::alpha().bearer(API_TOKEN).websocket();
    vm.request_headers(ctx, &req.headers, false).unwrap();
    answer_exchange(&mut vm, &exchanged_cap(NOW));
    vm.response_headers(ctx, &[(":status", "101"), ("upgrade", "websocket")], false)
        .unwrap();
    at(&mut vm, EXP - 300);
    vm.tick().unwrap();
    // A capability that ends before the one the socket has (a lifetime lowered since).
    let shorter = cap_with(
        &ed_key(1),
        &podgate_protocol::token::PodClaims {
            jti: "shorter".into(),
            ..claims("alpha", PORT)
        },
        EXP - 400,
        300,
    );
    answer_exchange(&mut vm, &shorter);
    // Not taken: asked again 5 s later, and the socket lives on its own capability.
    at(&mut vm, EXP - 295);
    vm.tick().unwrap();
    answer_exchange(&mut vm, &exchanged_cap(EXP - 295));
    at(&mut vm, EXP - 294);
    vm.tick().unwrap();
    at(&mut vm, EXP + 1);
    assert_eq!(
        vm.tick().unwrap(),
        Vec::<u32>::new(),
        "moved to the later one"
    );
    assert!(vm.is_open(ctx));
}
