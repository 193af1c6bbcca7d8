//! Lapsed browser capabilities in the compiled filter: a request whose cookie holds a
//! capability past its `exp` (a tab left idle) waits for one renew call per capability and
//! worker, with every other request on it; the control plane's fresh capability decides them
//! all again, our cookie stripped, the fresh cookie on each response. A refused or failed
//! renewal answers them as an expired capability, and is not asked again at once.

use podgate_protocol::renewal::RenewAnswer;
use podgate_wasm_tests::host::{FilterVm, Outcome};
use serde_json::json;

use crate::renewal::session_cap;
use crate::support::*;

/// The configuration of a renewing filter that renews lapsed capabilities for an hour.
fn lapsed_config() -> serde_json::Value {
    let mut cfg = config(&[&ed_key(1)]);
    cfg["renewal"] = json!({
        "url": "http://127.0.0.1:8080/api/proxy-renew",
        "secret": "renew-secret-0123456789abcdef0123456789",
        "before_secs": 300,
        "lapsed_secs": 3600
    });
    cfg
}

/// A VM with [`lapsed_config`] that takes the calls.
fn lapsed_vm() -> FilterVm {
    let mut vm = vm_with(&lapsed_config());
    vm.accept_http_calls();
    vm
}

/// Lapsed ten minutes ago at `NOW`.
fn lapsed_cap() -> String {
    session_cap(NOW - LIFETIME - LEEWAY - 600)
}

/// A stream sending a script's call with our cookie `token` beside the app's own cookie.
fn send(vm: &mut FilterVm, token: &str) -> (u32, Outcome) {
    let ctx = vm.open_stream().unwrap();
    let req = Req::alpha()
        .add("accept", "application/json")
        .add("cookie", &format!("theme=dark; {COOKIE}={token}"));
    let out = vm.request_headers(ctx, &req.headers, true).unwrap();
    (ctx, out)
}

/// The control plane's answer renewing to `fresh`: its cookie, and the body of the answer.
fn renew_answer(fresh: &str) -> (String, Vec<u8>) {
    let set_cookie = format!("{COOKIE}={fresh}; HttpOnly; SameSite=Lax; Path=/; Max-Age=43200");
    let body = serde_json::to_vec(&RenewAnswer {
        token: fresh.to_owned(),
        set_cookie: set_cookie.clone(),
    })
    .unwrap();
    (set_cookie, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn requests_on_a_lapsed_cookie_wait_for_one_renewal_then_go_on_the_fresh_one() {
    let mut vm = lapsed_vm();
    let old = lapsed_cap();
    let (first, out) = send(&mut vm, &old);
    assert!(matches!(out, Outcome::Paused { .. }), "{out:?}");
    let (second, out) = send(&mut vm, &old);
    assert!(matches!(out, Outcome::Paused { .. }), "{out:?}");
    let calls = vm.pending_http_calls();
    assert_eq!(calls.len(), 1, "one call for both: {calls:?}");
    assert_eq!(calls[0].upstream, "podgate_control_plane");
    assert_eq!(header(&calls[0].headers, ":path"), Some("/api/proxy-renew"));
    let bearer = format!("Bearer {old}");
    assert_eq!(
        header(&calls[0].headers, "authorization"),
        Some(bearer.as_str())
    );

    let fresh = session_cap(NOW);
    let (set_cookie, body) = renew_answer(&fresh);
    let looked_up = |vm: &mut FilterVm| {
        metric(vm, "podgate.token_cache.hits") + metric(vm, "podgate.token_cache.misses")
    };
    let before = looked_up(&mut vm);
    vm.answer_http_call(calls[0].token, &[(":status", "200")], &body)
        .unwrap();
    // Each stream decided again looked its capability up, and the counters say so.
    assert_eq!(looked_up(&mut vm), before + 2);
    for ctx in [first, second] {
        assert_eq!(vm.continued(ctx), Some(1), "stream {ctx}");
        assert_eq!(vm.local_reply_of(ctx), None);
        // What Envoy forwards: the user, the app's cookie, none of ours.
        let sent = vm.request_headers_of(ctx).unwrap();
        assert_eq!(header(&sent, "x-podgate-user"), Some("user-1"), "{sent:?}");
        assert_eq!(header(&sent, "cookie"), Some("theme=dark"), "{sent:?}");
        assert!(!format!("{sent:?}").contains(&old));
        assert!(!format!("{sent:?}").contains(&fresh));
        // The pod's answer carries the fresh cookie to the browser, and no cache may keep it,
        // whatever the pod said.
        let answered = vm
            .response_headers(
                ctx,
                &[
                    (":status", "200"),
                    ("cache-control", "public, max-age=600"),
                    ("cache-control", "s-maxage=600"),
                    ("cdn-cache-control", "max-age=600"),
                    ("surrogate-control", "max-age=600"),
                    ("cloudflare-cdn-cache-control", "max-age=600"),
                    ("x-accel-expires", "600"),
                ],
                true,
            )
            .unwrap();
        let Outcome::Continue { headers } = answered else {
            panic!("{answered:?}");
        };
        assert_eq!(header(&headers, "set-cookie"), Some(set_cookie.as_str()));
        let cache_control: Vec<_> = headers
            .iter()
            .filter(|(n, _)| n == "cache-control")
            .collect();
        assert_eq!(cache_control.len(), 1, "{headers:?}");
        assert_eq!(cache_control[0].1, "no-store");
        assert!(
            !headers.iter().any(|(n, _)| n.ends_with("cdn-cache-control")
                || n == "surrogate-control"
                || n == "x-accel-expires"),
            "{headers:?}"
        );
    }
    // A request sent with the old cookie before the browser stored the fresh one: decided on
    // the fresh capability at once, and told the fresh cookie too.
    let (late, out) = send(&mut vm, &old);
    let Outcome::Continue { headers } = out else {
        panic!("{out:?}");
    };
    assert_eq!(header(&headers, "x-podgate-user"), Some("user-1"));
    let answered = vm
        .response_headers(late, &[(":status", "200")], true)
        .unwrap();
    assert!(format!("{answered:?}").contains(&set_cookie));
    assert!(vm.pending_http_calls().is_empty());
    vm.tick().unwrap();
    assert_eq!(metric(&mut vm, "podgate.renewal.renewed"), 1);
}

#[test]
fn a_refused_or_failed_renewal_answers_as_an_expired_capability_and_is_not_asked_again_at_once() {
    for status in ["401", "503"] {
        let mut vm = lapsed_vm();
        let old = lapsed_cap();
        let (ctx, _) = send(&mut vm, &old);
        let calls = vm.pending_http_calls();
        assert_eq!(calls.len(), 1);
        vm.answer_http_call(calls[0].token, &[(":status", status)], b"")
            .unwrap();
        assert_eq!(vm.continued(ctx), Some(0), "answer {status}");
        let reply = vm.local_reply_of(ctx).expect("answered locally");
        assert_eq!(reply.status, 401, "answer {status}");
        assert!(
            String::from_utf8_lossy(&reply.body).contains("expired"),
            "{reply:?}"
        );
        // The next request is answered at once, with no second call.
        let (_, out) = send(&mut vm, &old);
        assert!(
            matches!(out, Outcome::LocalReply { status: 401, .. }),
            "answer {status}: {out:?}"
        );
        assert!(vm.pending_http_calls().is_empty(), "answer {status}");
    }
}

#[test]
fn a_page_load_on_a_lapsed_cookie_whose_renewal_is_refused_is_sent_to_sign_in() {
    let mut vm = lapsed_vm();
    let old = lapsed_cap();
    let ctx = vm.open_stream().unwrap();
    let req = Req::alpha()
        .add("accept", "text/html")
        .add("sec-fetch-mode", "navigate")
        .add("cookie", &format!("{COOKIE}={old}"));
    let out = vm.request_headers(ctx, &req.headers, true).unwrap();
    assert!(matches!(out, Outcome::Paused { .. }), "{out:?}");
    let calls = vm.pending_http_calls();
    vm.answer_http_call(calls[0].token, &[(":status", "401")], b"")
        .unwrap();
    let reply = vm.local_reply_of(ctx).expect("answered locally");
    assert_eq!(reply.status, 302, "{reply:?}");
    let location = reply
        .headers
        .iter()
        .find(|(n, _)| n == "location")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(location.starts_with(AUTH_URL), "{location}");
}

#[test]
fn requests_waiting_on_a_lost_renew_call_are_answered_at_the_tick() {
    // The call never answered (Envoy cancelled it, or the root context that made it went):
    // once it is taken as lost, the requests that waited are answered as an expired capability,
    // not left hanging.
    let mut vm = lapsed_vm();
    let old = lapsed_cap();
    let (ctx, out) = send(&mut vm, &old);
    assert!(matches!(out, Outcome::Paused { .. }), "{out:?}");
    vm.tick().unwrap();
    assert_eq!(
        vm.local_reply_of(ctx),
        None,
        "still within the call's timeout"
    );
    vm.set_time_secs(u64::try_from(NOW + 5).unwrap());
    vm.tick().unwrap();
    let reply = vm.local_reply_of(ctx).expect("answered at the tick");
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(vm.continued(ctx), Some(0));
}

#[test]
fn a_refused_renewal_stands_across_a_configuration_push() {
    let mut vm = lapsed_vm();
    let old = lapsed_cap();
    let (_, _) = send(&mut vm, &old);
    let calls = vm.pending_http_calls();
    vm.answer_http_call(calls[0].token, &[(":status", "401")], b"")
        .unwrap();
    let mut cfg = lapsed_config();
    cfg["renewal"]["timeout_ms"] = 2000.into();
    assert!(push(&mut vm, &cfg));
    let (_, out) = send(&mut vm, &old);
    assert!(
        matches!(out, Outcome::LocalReply { status: 401, .. }),
        "{out:?}"
    );
    assert!(
        vm.pending_http_calls().is_empty(),
        "asked again after a push"
    );
}

#[test]
fn a_lapsed_cookie_whose_fresh_capability_a_push_withdrew_goes_to_the_control_plane_again() {
    // Renewed once; then a push revokes the fresh capability (the gate no longer hands it
    // out, and the worker lets go of the renewal): a request still carrying the lapsed cookie
    // asks the control plane again, which decides.
    let mut vm = lapsed_vm();
    let old = lapsed_cap();
    let (_, _) = send(&mut vm, &old);
    let calls = vm.pending_http_calls();
    let fresh = podgate_protocol::token::mint_in_session(
        podgate_protocol::token::TokenKind::Capability,
        &ed_key(1),
        &podgate_protocol::token::PodClaims {
            jti: "jti-fresh".into(),
            ..claims("alpha", PORT)
        },
        Some("sid-a"),
        NOW,
        LIFETIME,
    )
    .unwrap();
    let body = serde_json::to_vec(&RenewAnswer {
        token: fresh.clone(),
        set_cookie: format!("{COOKIE}={fresh}; HttpOnly; Path=/"),
    })
    .unwrap();
    vm.answer_http_call(calls[0].token, &[(":status", "200")], &body)
        .unwrap();
    let mut cfg = lapsed_config();
    cfg["revoked_jti"] = json!(["jti-fresh"]);
    assert!(push(&mut vm, &cfg));
    let (_, out) = send(&mut vm, &old);
    assert!(matches!(out, Outcome::Paused { .. }), "{out:?}");
    assert_eq!(vm.pending_http_calls().len(), 1, "a second renew call");
}

#[test]
fn userinfo_on_a_lapsed_cookie_is_answered_on_the_fresh_one_with_its_cookie() {
    // A tab left idle whose first call is "who am I": it waits for the renewal, then the filter
    // answers from the fresh capability and hands on its cookie; nothing reaches the pod.
    let mut vm = lapsed_vm();
    let old = lapsed_cap();
    let ctx = vm.open_stream().unwrap();
    let req = Req::alpha()
        .set(":path", "/.podgate/userinfo")
        .add("accept", "application/json")
        .add("cookie", &format!("{COOKIE}={old}"));
    let out = vm.request_headers(ctx, &req.headers, true).unwrap();
    assert!(matches!(out, Outcome::Paused { .. }), "{out:?}");
    let calls = vm.pending_http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let fresh = session_cap(NOW);
    let (set_cookie, body) = renew_answer(&fresh);
    vm.answer_http_call(calls[0].token, &[(":status", "200")], &body)
        .unwrap();
    let reply = vm.local_reply_of(ctx).expect("answered by the filter");
    assert_eq!(reply.status, 200, "{reply:?}");
    let info: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(info["user"], "user-1");
    assert_eq!(
        header(&reply.headers, "set-cookie"),
        Some(set_cookie.as_str())
    );
    assert_eq!(vm.continued(ctx), Some(0), "reached the pod");
}
