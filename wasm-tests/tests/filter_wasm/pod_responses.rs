//! What the browser gets from a pod: no cookie for the parent domain, another host or under
//! our names; no `Access-Control-*` of the pod's; ours only for a same-pod `Origin`.
use std::collections::BTreeMap;

use podgate_wasm_tests::host::{FilterVm, Outcome};

use crate::support::*;

/// The request through the filter (must be forwarded), then `response` from the pod; the
/// response as the client would get it and the host calls of the response phase alone.
pub(crate) fn respond(
    vm: &mut FilterVm,
    req: &Req,
    response: &[(&[u8], &[u8])],
) -> (Outcome, BTreeMap<String, u64>) {
    let ctx = vm.open_stream().unwrap();
    let forwarded = vm.request_headers(ctx, &req.headers, true).unwrap();
    assert!(forwarded.forwarded().is_some(), "{forwarded:?}");
    let before = vm.host_calls();
    let out = vm.response_headers(ctx, response, true).unwrap();
    let after = vm.host_calls();
    vm.close_stream(ctx).unwrap();
    assert!(!vm.is_dead(), "{:?}", vm.failure());
    let calls = after
        .iter()
        .filter_map(|(name, n)| {
            let d = n - before.get(name).copied().unwrap_or(0);
            (d > 0).then(|| (name.clone(), d))
        })
        .collect();
    (out, calls)
}

const OWN_HOST: &str = "localhost-8726-pod-alpha.localhost";

#[test]
fn cookie_tossing_and_our_cookie_names_never_reach_the_browser() {
    let mut vm = vm();
    let req = Req::alpha().cookie(&alpha_cap());
    let response: Vec<(&[u8], &[u8])> = vec![
        (b":status", b"200"),
        (b"set-cookie", b"session=s1; Path=/; HttpOnly"),
        (b"set-cookie", b"toss=1; Domain=localhost"),
        (b"set-cookie", b"toss=2; Domain=.localhost; Path=/"),
        (b"set-cookie", b"toss=3; domain=LOCALHOST"),
        (b"set-cookie", b"toss=4; Domain=localhost."),
        (b"set-cookie", b"toss=5; Domain="),
        (
            b"set-cookie",
            b"toss=6; Domain=localhost-8726-pod-beta.localhost",
        ),
        (
            b"set-cookie",
            b"toss=7; Domain=localhost-8727-pod-alpha.localhost",
        ),
        (b"content-type", b"text/html"),
        (b"set-cookie", b"podgate_cap=forged; Path=/"),
        (b"set-cookie", b"__Host-podgate_cap=forged; Path=/; Secure"),
        (b"set-cookie", b"__Secure-podgate_cap=forged"),
        (b"set-cookie", b"PodGate_Cap=forged"),
        (b"set-cookie", b" podgate_cap =forged"),
        (b"set-cookie", b"podgate_session=forged"),
        (b"set-cookie", b"=podgate_cap=forged"),
        (b"set-cookie", b"junk=\xff\xfe"),
        (
            b"set-cookie",
            b"prefs=\"a b\"; Domain=localhost-8726-pod-alpha.localhost",
        ),
        (
            b"set-cookie",
            b"last=9; Domain=.LOCALHOST-8726-POD-ALPHA.LOCALHOST; Max-Age=60",
        ),
    ];
    let (out, calls) = respond(&mut vm, &req, &response);
    assert_eq!(
        out.header_values("set-cookie"),
        [
            "session=s1; Path=/; HttpOnly",
            "prefs=\"a b\"; Domain=localhost-8726-pod-alpha.localhost",
            "last=9; Domain=.LOCALHOST-8726-POD-ALPHA.LOCALHOST; Max-Age=60",
        ],
        "only the pod's own cookies, byte for byte, in order"
    );
    assert_eq!(out.header(":status"), Some("200"));
    assert_eq!(out.header("content-type"), Some("text/html"));
    assert_eq!(metric(&mut vm, "podgate.response.set_cookie_dropped"), 15);
    // One read, one remove, one add per kept cookie.
    assert_eq!(calls.get("proxy_get_header_map_pairs"), Some(&1));
    assert_eq!(calls.get("proxy_remove_header_map_value"), Some(&1));
    assert_eq!(calls.get("proxy_add_header_map_value"), Some(&3));
}

#[test]
fn a_plain_response_costs_one_host_call_and_is_untouched() {
    let mut vm = vm();
    let req = Req::alpha().cookie(&alpha_cap());
    let response: Vec<(&[u8], &[u8])> = vec![
        (b":status", b"200"),
        (b"content-type", b"application/json"),
        (b"set-cookie", b"a=1; Path=/"),
        (
            b"set-cookie",
            b"b=2; Domain=localhost-8726-pod-alpha.localhost",
        ),
        (b"x-raw", b"caf\xe9"),
    ];
    let (out, calls) = respond(&mut vm, &req, &response);
    assert_eq!(
        calls,
        BTreeMap::from([("proxy_get_header_map_pairs".to_owned(), 1)]),
        "nothing to change: one read, no edit"
    );
    assert_eq!(
        out.header_values("set-cookie"),
        [
            "a=1; Path=/",
            "b=2; Domain=localhost-8726-pod-alpha.localhost"
        ]
    );
    assert_eq!(out.header("x-raw"), Some("caf\u{fffd}"));
    assert_eq!(metric(&mut vm, "podgate.response.set_cookie_dropped"), 0);
}

#[test]
fn the_control_plane_may_set_our_cookie_on_the_callback() {
    let mut vm = vm();
    let req = Req::get(OWN_HOST, "/.podgate/callback?ticket=x");
    let cookie = "podgate_cap=minted; Path=/; HttpOnly; SameSite=Lax";
    let response: Vec<(&[u8], &[u8])> = vec![
        (b":status", b"302"),
        (b"set-cookie", cookie.as_bytes()),
        (b"location", b"/"),
    ];
    let (out, calls) = respond(&mut vm, &req, &response);
    assert_eq!(out.header_values("set-cookie"), [cookie]);
    assert!(calls.is_empty(), "{calls:?}");
}

#[test]
fn the_pods_cors_headers_are_removed_and_ours_follow_a_same_pod_origin() {
    let mut vm = vm();
    let t = alpha_cap();
    let response: Vec<(&[u8], &[u8])> = vec![
        (b":status", b"200"),
        (b"access-control-allow-origin", b"*"),
        (b"access-control-allow-credentials", b"true"),
        (
            b"access-control-allow-origin",
            b"http://localhost-8726-pod-beta.localhost",
        ),
        (b"access-control-expose-headers", b"x-total"),
        (b"access-control-allow-methods", b"PUT"),
        (b"vary", b"accept-encoding"),
    ];
    let aca = |out: &Outcome| -> Vec<(String, String)> {
        match out {
            Outcome::Continue { headers } => headers
                .iter()
                .filter(|(n, _)| n.starts_with("access-control-"))
                .cloned()
                .collect(),
            other => panic!("{other:?}"),
        }
    };
    // No Origin, another pod, a foreign site, null, another scheme: no CORS header at all.
    for origin in [
        None,
        Some("http://localhost-8726-pod-beta.localhost:10000"),
        Some("http://evil.example"),
        Some("null"),
        Some("https://localhost-8727-pod-alpha.localhost"),
        Some("http://localhost-8727-pod-alpha.localhost/"),
    ] {
        let mut req = Req::alpha().token(&t);
        if let Some(o) = origin {
            req = req.set("origin", o);
        }
        let (out, _) = respond(&mut vm, &req, &response);
        assert_eq!(aca(&out), vec![], "{origin:?}");
        assert_eq!(out.header_values("vary"), ["accept-encoding"], "{origin:?}");
    }
    // Another port of the same pod: ours, with the origin echoed; the pod's expose list.
    for origin in [
        "http://localhost-8727-pod-alpha.localhost:10000",
        "http://localhost-8726-pod-alpha.localhost",
    ] {
        let req = Req::alpha().cookie(&t).set("origin", origin);
        let (out, _) = respond(&mut vm, &req, &response);
        let got = aca(&out);
        assert_eq!(out.header_values("access-control-allow-origin"), [origin]);
        assert_eq!(
            out.header_values("access-control-allow-credentials"),
            ["true"]
        );
        assert_eq!(
            out.header_values("access-control-expose-headers"),
            ["x-total"]
        );
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(out.header_values("vary"), ["accept-encoding", "Origin"]);
    }
    assert!(metric(&mut vm, "podgate.response.cors_stripped") >= 6 * 4);
}

#[test]
fn a_memo_hit_sanitizes_the_pods_response_as_the_first_request_did() {
    // The second, identical request is answered from the decision memo: what the response
    // phase needs must come with it.
    let mut vm = vm();
    let origin = "http://localhost-8727-pod-alpha.localhost:10000";
    let req = Req::alpha().cookie(&alpha_cap()).set("origin", origin);
    let response: Vec<(&[u8], &[u8])> = vec![
        (b":status", b"200"),
        (b"set-cookie", b"a=1; Path=/"),
        (b"set-cookie", b"b=2; Domain=localhost"),
        (b"access-control-allow-origin", b"*"),
    ];
    for round in ["decided", "memo hit"] {
        let (out, _) = respond(&mut vm, &req, &response);
        assert_eq!(out.header_values("set-cookie"), ["a=1; Path=/"], "{round}");
        assert_eq!(
            out.header_values("access-control-allow-origin"),
            [origin],
            "{round}"
        );
    }
    assert_eq!(metric(&mut vm, "podgate.token_cache.misses"), 1);
    assert_eq!(metric(&mut vm, "podgate.token_cache.hits"), 1);
    assert_eq!(metric(&mut vm, "podgate.response.set_cookie_dropped"), 2);
}
