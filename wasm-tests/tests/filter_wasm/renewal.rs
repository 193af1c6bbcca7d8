//! Renewal at the edge in the compiled filter, with a host whose `proxy_http_call` fails (this
//! host implements none): a browser capability due for renewal still goes through, unpaused,
//! with the old capability, and the call is not retried at once; one far from renewal, and any
//! header token, costs no renewal call at all.

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
fn session_cap(iat: i64) -> String {
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
