//! Renewal at the edge in the compiled filter. With a host whose `proxy_http_call` fails (the
//! default here), a browser capability due for renewal still goes through, unpaused, with the
//! old capability, and the call is not retried at once; one far from renewal, and any header
//! token, costs no renewal call at all. With a host that takes the call, the request waits for
//! its answer, and a push that cuts the capability meanwhile refuses it.

use podgate_protocol::token::{mint_in_session, TokenKind};
use serde_json::json;

use crate::support::*;

fn renewing_vm() -> podgate_wasm_tests::host::FilterVm {
    let mut cfg = config(&[&ed_key(1)]);
    cfg["renewal"] = json!({
        "url": "http://127.0.0.1:8080/api/proxy-renew",
        "secret": "renew-secret-0123456789abcdef0123456789",
        "before_secs": 300
    });
    vm_with(&cfg)
}

/// A browser's capability for alpha, in session `sid-a`, issued at `iat`.
pub(crate) fn session_cap(iat: i64) -> String {
    mint_in_session(
        TokenKind::Capability,
        &ed_key(1),
        &claims("alpha", PORT),
        Some("sid-a"),
        iat,
        LIFETIME,
    )
    .unwrap()
}

fn http_calls(vm: &podgate_wasm_tests::host::FilterVm) -> u64 {
    vm.host_calls().get("proxy_http_call").copied().unwrap_or(0)
}

#[test]
fn a_due_capability_whose_renewal_fails_goes_through_with_the_old_one() {
    let mut vm = renewing_vm();
    // Issued so that at NOW less than 300 s of its life remain.
    let token = session_cap(NOW - LIFETIME + 100);
    let sent = Req::alpha().cookie(&token).send(&mut vm);
    assert_eq!(
        sent.fwd1("x-podgate-user"),
        Some("user-1"),
        "{:?}",
        sent.forwarded()
    );
    assert_eq!(http_calls(&vm), 1, "one renewal call");
    // Within the retry delay, no new call; the request goes through again.
    let sent = Req::alpha().cookie(&token).send(&mut vm);
    assert_eq!(sent.fwd1("x-podgate-user"), Some("user-1"));
    assert_eq!(http_calls(&vm), 1);
    vm.tick().unwrap();
    assert_eq!(metric(&mut vm, "podgate.renewal.failed"), 1);
    assert_eq!(metric(&mut vm, "podgate.renewal.renewed"), 0);
}

#[test]
fn a_capability_far_from_expiry_or_in_a_header_costs_no_renewal_call() {
    let mut vm = renewing_vm();
    let fresh = session_cap(NOW);
    let due = session_cap(NOW - LIFETIME + 100);
    for _ in 0..3 {
        let sent = Req::alpha().cookie(&fresh).send(&mut vm);
        assert_eq!(sent.fwd1("x-podgate-user"), Some("user-1"));
        // A script's header token is never renewed, due or not.
        let sent = Req::alpha().token(&due).send(&mut vm);
        assert_eq!(sent.fwd1("x-podgate-user"), Some("user-1"));
    }
    assert_eq!(http_calls(&vm), 0);
}

/// A renewing VM that takes the renew calls, and a page load on a due browser capability of
/// session `sid-a`, paused on its renew call: the VM, the stream and the call's token.
fn paused_on_renewal() -> (podgate_wasm_tests::host::FilterVm, u32, u32) {
    let mut vm = renewing_vm();
    vm.accept_http_calls();
    let ctx = vm.open_stream().unwrap();
    let req = Req::alpha().cookie(&session_cap(NOW - LIFETIME + 100));
    let out = vm.request_headers(ctx, &req.headers, true).unwrap();
    assert!(
        matches!(out, podgate_wasm_tests::host::Outcome::Paused { .. }),
        "{out:?}"
    );
    let calls = vm.pending_http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].upstream, "podgate_control_plane");
    (vm, ctx, calls[0].token)
}

#[test]
fn a_request_waiting_on_its_renewal_goes_on_when_the_call_fails() {
    let (mut vm, ctx, call) = paused_on_renewal();
    vm.answer_http_call(call, &[(":status", "503")], b"")
        .unwrap();
    assert_eq!(vm.continued(ctx), Some(1));
    assert_eq!(vm.local_reply_of(ctx), None);
    assert_eq!(metric(&mut vm, "podgate.renewal.failed"), 1);
}

#[test]
fn a_request_waiting_on_its_renewal_is_refused_when_a_push_cuts_its_capability_meanwhile() {
    // Signed out while the renew call was out (the control plane slow to answer): the push
    // that cuts the session arrives first; the request, edited for the pod but not forwarded,
    // is answered 401 and goes nowhere, whatever the call's answer.
    for answer in ["401", "503"] {
        let (mut vm, ctx, call) = paused_on_renewal();
        let mut cfg = config(&[&ed_key(1)]);
        cfg["renewal"] = json!({
            "url": "http://127.0.0.1:8080/api/proxy-renew",
            "secret": "renew-secret-0123456789abcdef0123456789",
            "before_secs": 300
        });
        cfg["cutoffs"] = json!({
            "sessions": [{"sid": "sid-a", "at": NOW, "until": NOW + LIFETIME + LEEWAY}]
        });
        assert!(push(&mut vm, &cfg));
        vm.answer_http_call(call, &[(":status", answer)], b"")
            .unwrap();
        assert_eq!(vm.continued(ctx), Some(0), "answer {answer}");
        let reply = vm.local_reply_of(ctx).expect("answered locally");
        assert_eq!(reply.status, 401, "answer {answer}");
        assert!(
            String::from_utf8_lossy(&reply.body).contains("revoked"),
            "{reply:?}"
        );
        assert_eq!(metric(&mut vm, "podgate.denied.invalid_capability"), 1);
    }
}

#[test]
fn a_renew_call_whose_request_hung_up_is_taken_as_lost_and_the_capability_renewed_again() {
    // The client hangs up while its request waits: Envoy cancels the call, unanswered. The
    // capability must not stay "being renewed" for good in this worker.
    let (mut vm, ctx, _call) = paused_on_renewal();
    vm.close_stream(ctx).unwrap();
    let cookie = session_cap(NOW - LIFETIME + 100);
    // Within the call's timeout (1 s) and margin, requests go on with the old capability
    // and start no second call.
    let sent = Req::alpha().cookie(&cookie).send(&mut vm);
    assert_eq!(sent.fwd1("x-podgate-user"), Some("user-1"));
    assert_eq!(vm.pending_http_calls().len(), 1);
    // Past them, the tick lets the lost call go and the next request renews again.
    vm.set_time_secs(u64::try_from(NOW + 5).unwrap());
    vm.tick().unwrap();
    let ctx = vm.open_stream().unwrap();
    let out = vm
        .request_headers(ctx, &Req::alpha().cookie(&cookie).headers, true)
        .unwrap();
    assert!(
        matches!(out, podgate_wasm_tests::host::Outcome::Paused { .. }),
        "{out:?}"
    );
    assert_eq!(vm.pending_http_calls().len(), 2);
}
