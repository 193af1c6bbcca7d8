use std::collections::BTreeMap;

use crate::support::*;

#[test]
fn counts_reach_envoy_at_the_next_tick_once() {
    let mut vm = vm();
    Req::alpha().token(&alpha_cap()).send(&mut vm).forwarded();
    Req::alpha().send(&mut vm).denied(401);
    // Held in the VM: no host call per request for counting.
    assert_eq!(vm.metric("podgate.allowed"), Some(0));
    assert_eq!(vm.host_calls().get("proxy_increment_metric"), None);
    vm.tick().unwrap();
    assert_eq!(vm.metric("podgate.allowed"), Some(1));
    assert_eq!(vm.metric("podgate.denied.no_capability"), Some(1));
    assert_eq!(vm.metric("podgate.token_cache.misses"), Some(1));
    // Handed over once: the next tick adds nothing.
    vm.tick().unwrap();
    assert_eq!(vm.metric("podgate.allowed"), Some(1));
    assert_eq!(vm.metric("podgate.denied.no_capability"), Some(1));
}

#[test]
fn every_answer_counts_under_its_reason() {
    let mut vm = vm();
    let key = ed_key(1);
    let t = alpha_cap();
    // Defined up front, all zero.
    let names: Vec<String> = vm.metrics().keys().cloned().collect();
    for reason in podgate_protocol::reply::Denial::ALL_REASONS {
        assert!(
            names.contains(&format!("podgate.denied.{reason}")),
            "{names:?}"
        );
    }
    assert!(vm.metrics().values().all(|v| *v == 0));

    Req::get("evil.com", "/").send(&mut vm).denied(400); // bad_host
    Req::alpha()
        .add_raw(b"cookie", b"\xff")
        .send(&mut vm)
        .denied(400); // malformed_header
    Req::alpha()
        .token(&t)
        .add("authorization", &format!("Bearer\t{t}"))
        .send(&mut vm)
        .denied(400); // malformed_authorization
    Req::alpha().send(&mut vm).denied(401); // no_capability
    Req::alpha().navigate().send(&mut vm).denied(302); // no_capability
    Req::alpha()
        .token(&tamper_signature(&t))
        .send(&mut vm)
        .denied(401); // invalid_capability
    Req::alpha()
        .token(&cap(&key, "beta", PORT))
        .send(&mut vm)
        .denied(403); // wrong_scope
    Req::alpha()
        .token(&cap(&key, "alpha", 8727))
        .send(&mut vm)
        .denied(403); // wrong_scope
    Req::alpha()
        .cookie(&t)
        .websocket()
        .set("origin", "http://evil.example")
        .send(&mut vm)
        .denied(403); // cross_origin_websocket
    Req::alpha()
        .method("POST")
        .cookie(&t)
        .set("origin", "http://evil.example")
        .send(&mut vm)
        .denied(403); // cross_pod_request
    let preflight = |origin: &str| {
        Req::alpha()
            .method("OPTIONS")
            .set("origin", origin)
            .set("access-control-request-method", "PUT")
    };
    preflight("http://localhost-8726-pod-beta.localhost")
        .send(&mut vm)
        .denied(403); // cross_origin_preflight
    preflight("http://localhost-8727-pod-alpha.localhost")
        .set("access-control-request-method", "P U T")
        .send(&mut vm)
        .denied(400); // bad_preflight
    let ok = preflight("http://localhost-8727-pod-alpha.localhost").send(&mut vm);
    assert_eq!(ok.status(), Some(204)); // preflight
    Req::to("ghost", PORT)
        .token(&cap(&key, "ghost", PORT))
        .send(&mut vm)
        .denied(404); // unknown_pod
    Req::to("sleepy", PORT)
        .token(&cap(&key, "sleepy", PORT))
        .send(&mut vm)
        .denied(503); // pod_not_running
    Req::alpha().token(&t).send(&mut vm).forwarded(); // allowed
    Req::alpha()
        .path("/.podgate/callback?ticket=x")
        .send(&mut vm)
        .forwarded(); // callback

    vm.tick().unwrap();
    let counts: BTreeMap<String, u64> = vm
        .metrics()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("podgate.token_cache."))
        .collect();
    let expected: BTreeMap<String, u64> = [
        ("podgate.allowed", 1),
        ("podgate.callback", 1),
        ("podgate.denied.bad_host", 1),
        ("podgate.denied.malformed_header", 1),
        ("podgate.denied.malformed_authorization", 1),
        ("podgate.denied.no_capability", 2),
        ("podgate.denied.invalid_capability", 1),
        ("podgate.denied.wrong_scope", 2),
        ("podgate.denied.cross_origin_websocket", 1),
        ("podgate.denied.cross_pod_request", 1),
        ("podgate.denied.cross_origin_preflight", 1),
        ("podgate.denied.bad_preflight", 1),
        ("podgate.denied.unknown_pod", 1),
        ("podgate.denied.pod_not_running", 1),
        // No service in this configuration (`control-plane/tests/xds_live_service_oauth.rs`
        // gets it through a real Envoy).
        ("podgate.denied.upstream_credential_unavailable", 0),
        ("podgate.denied.trace_refused", 0),
        // Rate and open-stream limits are off in this configuration (`e2e_pages.rs` and
        // `e2e_limits.rs` count them).
        ("podgate.denied.rate_limited", 0),
        ("podgate.denied.too_many_streams", 0),
        ("podgate.denied.not_configured", 0),
        ("podgate.denied.host_error", 0),
        ("podgate.preflight", 1),
        // Response-side counters (`pod_responses`, `websocket_expiry` test them).
        ("podgate.response.set_cookie_dropped", 0),
        ("podgate.response.cors_stripped", 0),
        ("podgate.response.failed", 0),
        ("podgate.websocket.expired", 0),
        ("podgate.answered", 0),
        ("podgate.websocket.cut", 0),
        ("podgate.stream.cut", 0),
        // Renewals need the control plane (`control-plane/tests/xds_live_renewal.rs`).
        ("podgate.renewal.renewed", 0),
        ("podgate.renewal.refused", 0),
        ("podgate.renewal.failed", 0),
        // API tokens at the edge need the control plane
        // (`control-plane/tests/xds_live_api_tokens.rs`).
        ("podgate.exchange.calls", 0),
        ("podgate.exchange.granted", 0),
        ("podgate.denied.api_token_refused", 0),
        ("podgate.denied.api_token_not_allowed", 0),
        ("podgate.denied.exchange_busy", 0),
        ("podgate.denied.exchange_failed", 0),
        // No service reached per resource in this configuration
        // (`control-plane/tests/xds_live_service_resources.rs` meets these answers in Envoy).
        ("podgate.denied.ambiguous_path", 0),
        ("podgate.denied.wrong_resource", 0),
        ("podgate.denied.outside_resources", 0),
        // No assertion key in this configuration (`assertion` tests them in a real Envoy).
        ("podgate.assertion.signed", 0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(counts, expected);
    // Tokens checked: tampered, beta, alpha:8727, alpha (ws), ghost, sleepy = 6 misses; the
    // cross-pod POST and the final alpha request are hits.
    assert_eq!(metric(&mut vm, "podgate.token_cache.misses"), 6);
    assert_eq!(metric(&mut vm, "podgate.token_cache.hits"), 2);

    // not_configured, on a VM without config.
    let mut bare = bare_vm();
    Req::alpha().send(&mut bare).denied(500);
    assert_eq!(metric(&mut bare, "podgate.denied.not_configured"), 1);
    assert_eq!(metric(&mut bare, "podgate.allowed"), 0);
}

/// A host call the filter needs fails (here the clock): the request is answered `500`
/// `host_error` and nothing is forwarded; the counter and the access log (`wasm.podgate`, the
/// filter state Envoy's access log prints) both say why; the next request, the host working
/// again, goes on.
#[test]
fn a_failing_host_call_is_a_500_counted_and_in_the_access_log() {
    let mut vm = vm();
    vm.fail_the_clock(true);
    Req::alpha().token(&alpha_cap()).send(&mut vm).denied(500);
    let logged = vm
        .property(&[podgate_protocol::access_log::PROPERTY])
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    assert!(
        logged.as_deref().is_some_and(|l| l.contains("host_error")),
        "{logged:?}"
    );
    vm.fail_the_clock(false);
    Req::alpha().token(&alpha_cap()).send(&mut vm).forwarded();
    vm.tick().unwrap();
    assert_eq!(vm.metric("podgate.denied.host_error"), Some(1));
    assert_eq!(vm.metric("podgate.allowed"), Some(1));
}
