//! Native tests of the decision memo: it answers what `decide` answers, for every field it
//! keys on, and stores only what it may.

use std::rc::Rc;

use super::memo::{decide_memoized, keyed, memo_hash, or_all, same_bytes, Keyed, Probe};
use super::request::HEADER_NAMES_READ;
use super::*;
use crate::response::PodResponse;
use crate::token::tests::NOW;

use super::tests::{
    base, cap, cap_for, config, config_with, headers, set, status, through_gate, Headers, HOST,
};

// ---- the decision memo ---------------------------------------------------------------------

/// Sends `h` through `gate` (its memo and caches shared across calls) at `now`, and checks the
/// answer is that of a fresh gate with the same configuration, whose memo and caches are empty.
pub(super) fn memo_agrees(gate: &mut Gate, h: &[(String, Vec<u8>)], now: i64) -> Decision {
    let memoized = through_gate(gate, h, now);
    let config = gate.config.clone().expect("a configured gate");
    let direct = through_gate(&mut Gate::new(config), h, now);
    assert_eq!(memoized, direct, "the memo changed the decision for {h:?}");
    memoized
}

#[test]
fn memo_answers_what_decide_answers_for_every_field_it_keys_on() {
    let c = config();
    let token = cap();
    let beta = cap_for("beta", 8726);
    let cookie = format!("a=1; __Host-podgate_cap={token}");
    let bearer = format!("Bearer {token}");
    let own = "https://localhost-3000-pod-alpha.example.dev";
    let other = "https://localhost-3000-pod-beta.example.dev";
    // Each differs from the first in one field `decide` reads; several are forwards that must
    // not be served one another's edits, several are denials that must not be served a forward.
    let variants: Vec<Headers> = vec![
        base(&[("cookie", &cookie)]),
        base(&[("cookie", &format!("a=2; __Host-podgate_cap={token}"))]),
        base(&[("cookie", &format!("__Host-podgate_cap={token}"))]),
        base(&[("cookie", &format!("__Host-podgate_cap={beta}"))]),
        base(&[("cookie", &cookie), ("cookie", "z=9")]),
        base(&[("authorization", &bearer)]),
        base(&[("authorization", &bearer), ("authorization", "Basic eDp5")]),
        base(&[("podgate-token", &token)]),
        base(&[("podgate-token", &token), ("x-podgate-user", "mallory")]),
        base(&[("cookie", &cookie), ("x-podgate-email", "m@example.dev")]),
        base(&[("cookie", &cookie), ("origin", own)]),
        base(&[("cookie", &cookie), ("origin", other)]),
        base(&[("cookie", &cookie), ("origin", other), (":method", "POST")])
            .into_iter()
            .filter(|(n, v)| !(n == ":method" && v == b"GET"))
            .collect(),
        base(&[
            ("cookie", &cookie),
            ("origin", own),
            ("upgrade", "websocket"),
        ]),
        base(&[
            ("cookie", &cookie),
            ("origin", other),
            ("upgrade", "websocket"),
        ]),
        base(&[("cookie", &cookie), ("upgrade", "h2c")]),
        headers(&[
            (":authority", "localhost-8726-pod-beta.example.dev"),
            (":path", "/"),
            (":method", "GET"),
            ("cookie", &cookie),
        ]),
        headers(&[
            (":authority", "localhost-8726-pod-beta.example.dev"),
            (":path", "/"),
            (":method", "GET"),
            ("cookie", &format!("__Host-podgate_cap={beta}")),
        ]),
        headers(&[
            (":authority", "localhost-8727-pod-alpha.example.dev"),
            (":path", "/"),
            (":method", "GET"),
            ("cookie", &cookie),
        ]),
        headers(&[
            (":authority", HOST),
            (":path", "/.podgate/callback?ticket=x"),
            (":method", "GET"),
            ("cookie", &cookie),
        ]),
    ];
    let mut gate = Gate::new(Rc::clone(&c));
    let mut forwards = 0;
    // Three passes: misses, then hits, then hits in the reverse order.
    for pass in 0..3 {
        let order: Vec<&Headers> = if pass == 2 {
            variants.iter().rev().collect()
        } else {
            variants.iter().collect()
        };
        for h in order {
            if matches!(
                memo_agrees(&mut gate, h, NOW + 1),
                Decision::Forward(f) if f.user.is_some()
            ) {
                forwards += 1;
            }
        }
    }
    assert!(
        forwards >= 3 * 10,
        "{forwards} forwards: the table lost its point"
    );
    assert!(!gate.memo().is_empty());
}

#[test]
fn a_memo_hit_is_a_cache_hit_and_skips_verification() {
    let c = config();
    let h = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    let mut gate = Gate::new(Rc::clone(&c));
    let first = through_gate(&mut gate, &h, NOW + 1);
    assert_eq!(gate.stats(), (0, 1));
    assert_eq!(gate.memo().len(), 1);
    let second = through_gate(&mut gate, &h, NOW + 2);
    assert_eq!(gate.stats(), (1, 1));
    match (first, second) {
        (Decision::Forward(a), Decision::Forward(b)) => assert!(Rc::ptr_eq(&a, &b)),
        other => panic!("{other:?}"),
    }
}

/// The forward `d` is, else a panic.
fn forward_of(d: Decision) -> Rc<Forward> {
    match d {
        Decision::Forward(forward) => forward,
        other => panic!("not forwarded: {other:?}"),
    }
}

#[test]
fn a_push_that_changes_only_pods_keeps_the_forwards_to_the_pods_it_leaves_alone() {
    use crate::config::{PodStatus, UPSTREAM_HEADER};
    let alpha = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    let beta = headers(&[
        (":authority", "localhost-8726-pod-beta.example.dev"),
        (":path", "/"),
        (":method", "GET"),
        (
            "cookie",
            &format!("__Host-podgate_cap={}", cap_for("beta", 8726)),
        ),
    ]);
    let with_beta2 = |c: &mut crate::config::FilterConfig| {
        let beta = c.pods["beta"].clone();
        c.pods.insert("beta2".into(), beta);
    };
    let mut gate = Gate::new(config());
    let alpha_before = forward_of(memo_agrees(&mut gate, &alpha, NOW + 1));
    let beta_before = forward_of(memo_agrees(&mut gate, &beta, NOW + 1));
    assert_eq!(gate.memo().len(), 2);

    // Another pod: both forwards are kept, and served from the memo.
    gate.configure(config_with(with_beta2));
    assert_eq!(gate.memo().len(), 2);
    let hits = gate.stats().0;
    assert!(Rc::ptr_eq(
        &forward_of(memo_agrees(&mut gate, &alpha, NOW + 2)),
        &alpha_before
    ));
    assert!(Rc::ptr_eq(
        &forward_of(memo_agrees(&mut gate, &beta, NOW + 2)),
        &beta_before
    ));
    assert_eq!(gate.stats().0, hits + 2);

    // Alpha stopped, moved, deleted: its forward goes at once, beta's stays.
    type Change = Box<dyn Fn(&mut crate::config::FilterConfig)>;
    let alpha_changes: [(&str, Change, u32); 3] = [
        (
            "stopped",
            Box::new(|c| c.pods.get_mut("alpha").unwrap().status = PodStatus::Stopped),
            503,
        ),
        (
            "moved",
            Box::new(|c| c.pods.get_mut("alpha").unwrap().address = Some("10.0.0.9:30001".into())),
            0,
        ),
        (
            "deleted",
            Box::new(|c| {
                c.pods.remove("alpha");
            }),
            404,
        ),
    ];
    for (what, change, answer) in alpha_changes {
        gate.configure(config_with(with_beta2));
        memo_agrees(&mut gate, &alpha, NOW + 3);
        assert_eq!(gate.memo().len(), 2, "{what}");
        gate.configure(config_with(|c| {
            with_beta2(c);
            change(c);
        }));
        assert_eq!(gate.memo().len(), 1, "{what}");
        let d = memo_agrees(&mut gate, &alpha, NOW + 3);
        assert_eq!(status(&d), answer, "{what}: {d:?}");
        if what == "moved" {
            assert_eq!(set(&d, UPSTREAM_HEADER), Some("10.0.0.9:30001"));
        }
        assert!(Rc::ptr_eq(
            &forward_of(memo_agrees(&mut gate, &beta, NOW + 3)),
            &beta_before
        ));
    }

    // A setting changed: nothing is kept, and the new rules answer.
    let others: [(&str, Change); 2] = [
        (
            "another upstream host template",
            Box::new(|c| c.upstream_host_template = "port-{port}.pod-{pod}.{domain}".into()),
        ),
        ("another leeway", Box::new(|c| c.leeway_secs = 5)),
    ];
    for (what, change) in others {
        gate.configure(config());
        memo_agrees(&mut gate, &alpha, NOW + 4);
        memo_agrees(&mut gate, &beta, NOW + 4);
        assert_eq!(gate.memo().len(), 2, "{what}");
        gate.configure(config_with(|c| change(c)));
        assert!(gate.memo().is_empty(), "{what}");
        let d = memo_agrees(&mut gate, &alpha, NOW + 4);
        assert!(matches!(d, Decision::Forward(_)), "{what}: {d:?}");
    }
}

#[test]
fn a_revocation_or_a_cut_drops_only_the_forwards_on_the_capabilities_it_withdraws() {
    use super::tests::key;
    use crate::cutoff::{SessionCut, UserCut};
    use crate::token::{mint_in_session, tests::claims, PodClaims, TokenError, TokenKind};
    // Alpha's visitor (user-1, session s-1) and beta's (user-2, session s-2): different
    // users, sessions and capability ids.
    let capability = |pod: &str, sub: &str, jti: &str, sid: &str| {
        let c = PodClaims {
            aud: format!("localhost-8726-pod-{pod}.example.dev"),
            pod: pod.into(),
            sub: sub.into(),
            jti: jti.into(),
            ..claims()
        };
        mint_in_session(TokenKind::Capability, &key(), &c, Some(sid), NOW, 900).unwrap()
    };
    let request = |pod: &str, token: &str| {
        headers(&[
            (
                ":authority",
                &format!("localhost-8726-pod-{pod}.example.dev"),
            ),
            (":path", "/"),
            (":method", "GET"),
            ("cookie", &format!("__Host-podgate_cap={token}")),
        ])
    };
    let alpha = request("alpha", &capability("alpha", "user-1", "jti-a", "s-1"));
    let beta = request("beta", &capability("beta", "user-2", "jti-b", "s-2"));
    let user_cut = |sub: &str, pod: Option<&str>| UserCut {
        sub: sub.into(),
        pod: pod.map(Into::into),
        port: None,
        resource: None,
        at: NOW,
        until: NOW + 1000,
    };

    type Change = Box<dyn Fn(&mut crate::config::FilterConfig)>;
    let session_cut = |sid: &str| SessionCut {
        sid: sid.into(),
        at: NOW,
        until: NOW + 1000,
    };
    // What each push withdraws: (alpha's capability, beta's).
    let pushes: [(&str, Change, (bool, bool)); 9] = [
        (
            "alpha's capability revoked",
            Box::new(|c| c.revoked_jti.push("jti-a".into())),
            (true, false),
        ),
        (
            "another capability revoked",
            Box::new(|c| c.revoked_jti.push("jti-z".into())),
            (false, false),
        ),
        (
            "alpha's session signed out",
            Box::new(move |c| c.cutoffs.sessions.push(session_cut("s-1"))),
            (true, false),
        ),
        (
            "another session signed out",
            Box::new(move |c| c.cutoffs.sessions.push(session_cut("s-9"))),
            (false, false),
        ),
        (
            "alpha's user lost access to alpha",
            Box::new(move |c| c.cutoffs.users.push(user_cut("user-1", Some("alpha")))),
            (true, false),
        ),
        (
            "alpha's user lost access to beta",
            Box::new(move |c| c.cutoffs.users.push(user_cut("user-1", Some("beta")))),
            (false, false),
        ),
        (
            "every capability issued until now cut",
            Box::new(|c| c.cutoffs.issued_before = Some(NOW)),
            (true, true),
        ),
        (
            "every capability issued before them cut",
            Box::new(|c| c.cutoffs.issued_before = Some(NOW - 1)),
            (false, false),
        ),
        (
            "a revocation taken off",
            Box::new(|c| c.revoked_jti.clear()),
            (false, false),
        ),
    ];
    for (what, change, (alpha_withdrawn, beta_withdrawn)) in pushes {
        // The configuration before: one unrelated revocation in force.
        let before = |c: &mut crate::config::FilterConfig| c.revoked_jti = vec!["jti-old".into()];
        let mut gate = Gate::new(config_with(before));
        let stored = [
            (
                &alpha,
                forward_of(memo_agrees(&mut gate, &alpha, NOW + 1)),
                alpha_withdrawn,
            ),
            (
                &beta,
                forward_of(memo_agrees(&mut gate, &beta, NOW + 1)),
                beta_withdrawn,
            ),
        ];
        assert_eq!(gate.memo().len(), 2, "{what}");
        gate.configure(config_with(|c| {
            before(c);
            change(c);
        }));
        let kept = 2 - usize::from(alpha_withdrawn) - usize::from(beta_withdrawn);
        assert_eq!(gate.memo().len(), kept, "{what}");
        for (request, before, withdrawn) in stored {
            let hits = gate.stats().0;
            let d = memo_agrees(&mut gate, request, NOW + 2);
            if withdrawn {
                assert!(
                    matches!(
                        d,
                        Decision::Deny(Denial::InvalidCapability {
                            reason: TokenError::Revoked,
                            ..
                        })
                    ),
                    "{what}: {d:?}"
                );
            } else {
                // The very forward stored before, served from the memo.
                assert!(Rc::ptr_eq(&forward_of(d), &before), "{what}");
                assert_eq!(gate.stats().0, hits + 1, "{what}");
            }
        }
    }
}

#[test]
fn a_memoized_forward_ends_at_the_capabilitys_expiry_with_the_leeway() {
    // `cap()` lives 900 s from NOW; the config's leeway is 30 s.
    let c = config();
    let h = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    let mut gate = Gate::new(Rc::clone(&c));
    let last_good = NOW + 900 + 30 - 1;
    assert!(matches!(
        memo_agrees(&mut gate, &h, NOW + 1),
        Decision::Forward(_)
    ));
    assert!(matches!(
        memo_agrees(&mut gate, &h, last_good),
        Decision::Forward(_)
    ));
    let expired = memo_agrees(&mut gate, &h, last_good + 1);
    assert_eq!(status(&expired), 401, "{expired:?}");
    assert!(gate.memo().is_empty(), "the expired entry is dropped");
}

#[test]
fn two_candidate_tokens_are_never_memoized() {
    // Cookie tossing: which token decides can change with time (one may not be valid yet), so
    // the decision is made afresh every time.
    let c = config();
    let cookie = format!(
        "__Host-podgate_cap={}; __Host-podgate_cap={}",
        cap(),
        cap_for("beta", 8726)
    );
    let h = base(&[("cookie", &cookie)]);
    let mut gate = Gate::new(Rc::clone(&c));
    for _ in 0..2 {
        assert!(matches!(
            memo_agrees(&mut gate, &h, NOW + 1),
            Decision::Forward(_)
        ));
    }
    assert!(gate.memo().is_empty());
}

#[test]
fn the_memo_is_off_with_the_token_cache_and_bounded_by_it() {
    let h = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    let off = config_with(|c| c.token_cache_entries = 0);
    let mut gate = Gate::new(off);
    through_gate(&mut gate, &h, NOW + 1);
    through_gate(&mut gate, &h, NOW + 1);
    assert!(gate.memo().is_empty());
    assert_eq!(gate.stats(), (0, 0));

    gate.configure(config_with(|c| c.token_cache_entries = 2));
    for n in 0..5 {
        let h = base(&[("cookie", &format!("n={n}; __Host-podgate_cap={}", cap()))]);
        through_gate(&mut gate, &h, NOW + 1);
        assert!(gate.memo().len() <= 2, "{} entries", gate.memo().len());
    }
}

#[test]
fn memo_keys_and_hashes_tell_close_requests_apart() {
    // Tagged, length-prefixed fields: moving bytes between fields changes the key.
    let mut memo = DecisionMemo::new();
    let key = |memo: &mut DecisionMemo, h: &Headers| {
        assert!(memo.build_key(&crate::wire::encode_header_map(h)).is_some());
        memo.key.clone()
    };
    let a = key(&mut memo, &base(&[("cookie", "ab"), ("cookie", "c")]));
    let b = key(&mut memo, &base(&[("cookie", "a"), ("cookie", "bc")]));
    let c = key(&mut memo, &base(&[("cookie", "abc")]));
    let d = key(&mut memo, &base(&[("authorization", "abc")]));
    let e = key(&mut memo, &base(&[("origin", "")]));
    let f = key(&mut memo, &base(&[]));
    let keys = [a, b, c, d, e, f];
    for (i, x) in keys.iter().enumerate() {
        for y in &keys[i + 1..] {
            assert_ne!(x, y);
            assert!(!same_bytes(x, y));
            assert_ne!(memo_hash(7, x).0, memo_hash(7, y).0);
        }
        assert!(same_bytes(x, &x.clone()));
    }
    // Every length around a word boundary, and a one-bit change anywhere; a byte of 0x80 or
    // more anywhere shows in the OR the hash pass returns.
    for len in 0..40 {
        let x: Vec<u8> = (0..len as u8).collect();
        assert!(memo_hash(7, &x).1 < 0x80);
        for at in 0..len {
            let mut high = x.clone();
            high[at] |= 0x80;
            assert!(memo_hash(7, &high).1 >= 0x80, "len {len} at {at}");
            assert!(or_all(&high) >= 0x80, "len {len} at {at}");
        }
        assert!(same_bytes(&x, &x.clone()));
        for at in 0..len {
            let mut y = x.clone();
            y[at] ^= 1;
            assert!(!same_bytes(&x, &y), "len {len} at {at}");
            assert_ne!(memo_hash(7, &x).0, memo_hash(7, &y).0, "len {len} at {at}");
        }
    }
    assert_ne!(
        memo_hash(1, b"same").0,
        memo_hash(2, b"same").0,
        "the seed matters"
    );
}

#[test]
fn the_probe_looks_at_every_header_decide_reads() {
    for name in HEADER_NAMES_READ {
        assert!(
            !matches!(keyed(name.as_bytes(), b"/"), Keyed::Ignored),
            "{name} is read by the view but not by the memo's probe"
        );
    }
    assert!(matches!(keyed(b"x-podgate-user", b"v"), Keyed::Name(b'x')));
    assert!(matches!(keyed(b"user-agent", b"v"), Keyed::Ignored));
    assert!(matches!(
        keyed(b":path", b"/.podgate/callback"),
        Keyed::Refused
    ));
}

#[test]
fn requests_the_probe_cannot_vouch_for_are_never_memoized() {
    let c = config();
    let cookie = format!("__Host-podgate_cap={}", cap());
    let with_raw = |name: &str, value: &[u8]| {
        let mut h = base(&[("cookie", &cookie)]);
        h.push((name.to_owned(), value.to_vec()));
        h
    };
    let cases: Vec<Headers> = vec![
        // Not UTF-8 in a header `decide` reads: the view refuses it.
        with_raw("accept", b"text/\xff"),
        with_raw("sec-fetch-mode", b"\xc3("),
        with_raw("access-control-request-headers", b"x\xff"),
        with_raw("origin", b"https://\xff"),
        // UTF-8 but not ASCII: the view takes it, the probe leaves it to the view.
        with_raw("accept", "text/html; q=\u{e9}".as_bytes()),
        with_raw("x-\u{fc}ber", b"1"),
        // A possible CORS preflight, and the reserved path.
        with_raw("access-control-request-method", b"PUT"),
        headers(&[
            (":authority", HOST),
            (":path", "/.podgate/callback?ticket=t"),
            (":method", "GET"),
            ("cookie", &cookie),
        ]),
    ];
    let clean = base(&[("cookie", &cookie)]);
    let mut forwards = 0;
    for h in &cases {
        // The clean request is memoized first: a case the probe wrongly took for it would be
        // served its forward.
        let mut gate = Gate::new(Rc::clone(&c));
        memo_agrees(&mut gate, &clean, NOW + 1);
        assert_eq!(gate.memo().len(), 1);
        for _ in 0..2 {
            if matches!(memo_agrees(&mut gate, h, NOW + 1), Decision::Forward(_)) {
                forwards += 1;
            }
        }
        assert_eq!(gate.memo().len(), 1, "memoized: {h:?}");
    }
    assert!(forwards >= 8, "{forwards}: the cases lost their point");
    // A name that is not UTF-8 (the view refuses the request) is not even keyed.
    let mut memo = DecisionMemo::new();
    let bad_name: [(&[u8], &[u8]); 2] = [(b":authority", HOST.as_bytes()), (b"x-\xff", b"1")];
    let wire = crate::wire::encode_header_map(&bad_name);
    assert_eq!(memo.build_key(&wire), None);
    assert_eq!(
        memo.build_key(b"\x05\x00\x00\x00"),
        None,
        "a map that does not decode"
    );
}

#[test]
fn a_slot_from_an_older_probe_stores_nothing() {
    let c = config();
    let h = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    let other = base(&[("cookie", "unrelated=1")]);
    let mut memo = DecisionMemo::new();
    let mut cache = VerifiedCache::new();
    let wire = crate::wire::encode_header_map(&h);
    let Probe::Miss(stale) = memo.probe(&c, &mut cache, &wire, NOW + 1) else {
        panic!("a hit in an empty memo");
    };
    // Another request is probed in between: its key is the one the memo holds now.
    let _ = memo.probe(
        &c,
        &mut cache,
        &crate::wire::encode_header_map(&other),
        NOW + 1,
    );
    let req = Request::from_headers(&h).unwrap();
    let decision = decide_memoized(&c, &mut cache, &mut memo, stale, &req, NOW + 1);
    assert!(matches!(decision, Decision::Forward(_)), "{decision:?}");
    assert!(memo.is_empty());
}

#[test]
fn a_forward_carries_what_its_response_and_its_websocket_need() {
    let c = config();
    let cookie = format!("__Host-podgate_cap={}", cap());
    let own = "https://localhost-8726-pod-alpha.example.dev";
    let h = base(&[
        ("cookie", &cookie),
        ("origin", own),
        ("upgrade", "websocket"),
    ]);
    let req = Request::from_headers(&h).unwrap();
    let Decision::Forward(f) = decide(&c, &mut VerifiedCache::new(), &req, NOW + 1) else {
        panic!("denied");
    };
    assert!(f.websocket);
    assert_eq!(
        f.response,
        Some(PodResponse::new(req.authority, req.origin))
    );
    let plain = base(&[("cookie", &cookie)]);
    let req = Request::from_headers(&plain).unwrap();
    let Decision::Forward(f) = decide(&c, &mut VerifiedCache::new(), &req, NOW + 1) else {
        panic!("denied");
    };
    assert!(!f.websocket);
    // The control plane's callback: its responses are not sanitized.
    let callback = headers(&[
        (":authority", HOST),
        (":path", "/.podgate/callback?ticket=t"),
        (":method", "GET"),
    ]);
    let req = Request::from_headers(&callback).unwrap();
    let Decision::Forward(f) = decide(&c, &mut VerifiedCache::new(), &req, NOW + 1) else {
        panic!("denied");
    };
    assert_eq!(f.response, None);
}
