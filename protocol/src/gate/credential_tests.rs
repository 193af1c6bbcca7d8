//! Native tests of our credentials in a request: planted cookies, our tokens in any form of
//! `Authorization`, and the pod's own `Cookie` and credentials passing untouched.

use std::rc::Rc;

use super::*;
use crate::config::USER_HEADER;
use crate::cookie::{self, MAX_COOKIE_HEADER_LEN};
use crate::token::tests::{claims, ed_key, NOW};
use crate::token::TokenError;
use crate::token::{mint, PodClaims, SigningKey, TokenKind};

use super::memo_tests::memo_agrees;
use super::tests::{
    base, cap, cap_for, config, config_with, edits, key, removed, run, set, status, HOST,
};

// ---- planted cookies, our tokens in any form, the pod's Cookie header ----------------------

const COOKIE: &str = "__Host-podgate_cap";

/// The request headers the pod would get after the edits (Envoy's replace semantics).
fn forwarded(h: &[(String, Vec<u8>)], d: &Decision) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = h
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    for edit in edits(d) {
        match edit {
            HeaderEdit::Remove(name) => out.retain(|(n, _)| n != name),
            HeaderEdit::Set(name, value) => {
                out.retain(|(n, _)| n != name);
                out.push((name.clone(), value.clone()));
            }
        }
    }
    out
}

/// Asserts that no forwarded header holds any of `tokens`, nor anything that looks like ours.
fn assert_no_trace(h: &[(String, Vec<u8>)], d: &Decision, tokens: &[&str], what: &str) {
    for (name, value) in forwarded(h, d) {
        for t in tokens {
            assert!(
                !value.contains(t),
                "{what}: {name} carries our token: {value:.80}"
            );
        }
        if matches!(name.as_str(), "authorization" | "cookie" | "podgate-token") {
            assert!(
                !crate::token::mentions_ours(&value),
                "{what}: {name}: {value:.80}"
            );
        }
        if name == "cookie" {
            assert_eq!(cookie::find_all(&value, COOKIE).count(), 0, "{what}");
        }
    }
}

/// The planted kinds a sibling's script (or a careless client) may put under our cookie name.
fn planted(kind: usize, n: usize) -> String {
    let impostor = SigningKey::ed25519_from_seed(key().kid(), [0x77; 32]).unwrap();
    let here = PodClaims {
        aud: HOST.into(),
        pod: "alpha".into(),
        jti: format!("planted-{n}"),
        ..claims()
    };
    match kind % 6 {
        // Valid-looking for this very host, signed with another key under our kid.
        0 => mint(TokenKind::Capability, &impostor, &here, NOW, 900).unwrap(),
        // A genuine capability for this host, expired.
        1 => mint(TokenKind::Capability, &key(), &here, NOW - 5000, 900).unwrap(),
        // A genuine capability for another pod (one value: signatures are randomized).
        2 => {
            static BETA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            BETA.get_or_init(|| cap_for("beta", 8726)).clone()
        }
        // A login ticket.
        3 => mint(
            TokenKind::LoginTicket,
            &ed_key(TokenKind::LoginTicket, 1),
            &here,
            NOW,
            60,
        )
        .unwrap(),
        // Garbage of every shape.
        4 => format!("junk{n}.x.y"),
        _ => format!("\"{}\"", "A".repeat(n % 40)),
    }
}

/// `count` planted cookies of every kind, then the real one among the app's; and the planted
/// values.
fn planted_header(count: usize, real: &str) -> (String, Vec<String>) {
    let values: Vec<String> = (0..count).map(|i| planted(i, i)).collect();
    let mut pairs: Vec<String> = values.iter().map(|v| format!("{COOKIE}={v}")).collect();
    pairs.push(format!("app=1; {COOKIE}={real}; theme=dark"));
    (pairs.join("; "), values)
}

#[test]
fn planted_cookies_never_lock_out_the_real_one() {
    let c = config();
    let real = cap();
    let mut sizes = vec![0, 1, 3, 10, 50];
    // As many as fit the largest Cookie header the filter scans.
    let one = planted_header(6, &real).0.len() / 7;
    sizes.push(MAX_COOKIE_HEADER_LEN / one - 2);
    for count in sizes {
        let (cookie, all) = planted_header(count, &real);
        assert!(cookie.len() <= MAX_COOKIE_HEADER_LEN, "{count}");
        let h = base(&[("cookie", &cookie)]);
        let req = Request::from_headers(&h).unwrap();
        let mut cache = VerifiedCache::new();
        let d = decide(&c, &mut cache, &req, NOW + 1);
        assert_eq!(set(&d, USER_HEADER), Some("user-1"), "{count} planted");
        assert_eq!(set(&d, "cookie"), Some("app=1; theme=dark"), "{count}");
        assert!(cache.verifications() <= MAX_VERIFICATIONS as u64, "{count}");
        let mut tokens: Vec<&str> = all.iter().map(|t| t.trim_matches('"')).collect();
        tokens.retain(|t| t.len() > 8);
        tokens.push(&real);
        assert_no_trace(&h, &d, &tokens, &format!("{count} planted"));
    }
}

#[test]
fn planted_values_cost_no_signature_check_unless_they_look_valid_for_this_host() {
    let c = config();
    let real = cap();
    // Expired genuine ones, another pod's, tickets, garbage: all refused before a signature.
    let cheap: Vec<String> = (0..40)
        .filter(|i| i % 6 != 0)
        .map(|i| format!("{COOKIE}={}", planted(i, i)))
        .collect();
    for real_first in [false, true] {
        let cookie = if real_first {
            format!("{COOKIE}={real}; {}", cheap.join("; "))
        } else {
            format!("{}; {COOKIE}={real}", cheap.join("; "))
        };
        let h = base(&[("cookie", &cookie)]);
        let req = Request::from_headers(&h).unwrap();
        let mut cache = VerifiedCache::new();
        let d = decide(&c, &mut cache, &req, NOW + 1);
        assert_eq!(
            set(&d, USER_HEADER),
            Some("user-1"),
            "real first: {real_first}"
        );
        assert_eq!(cache.verifications(), 1, "only the real one is verified");
    }
    // Without the real one: 403 if a valid capability for another pod is among them.
    let h = base(&[("cookie", &cheap.join("; "))]);
    let req = Request::from_headers(&h).unwrap();
    let mut cache = VerifiedCache::new();
    assert_eq!(
        decide(&c, &mut cache, &req, NOW + 1),
        Decision::Deny(Denial::WrongScope)
    );
    assert_eq!(cache.verifications(), 1, "the beta capability, once");
}

#[test]
fn valid_looking_forgeries_for_this_host_cost_at_most_two_signatures_per_request() {
    // The limit: 30 forgeries for this host (our typ, kid and aud, bad signatures) sent AFTER
    // the real cookie are tried first; each request checks two of them, the worker remembers
    // every failure, and the real one wins once the forgeries are used up.
    let c = config_with(|c| c.token_cache_entries = 64);
    let real = cap();
    let forged: Vec<String> = (0..30).map(|i| planted(0, i)).collect();
    let mut pairs = vec![format!("{COOKIE}={real}")];
    pairs.extend(forged.iter().map(|f| format!("{COOKIE}={f}")));
    let h = base(&[("cookie", &pairs.join("; "))]);
    let req = Request::from_headers(&h).unwrap();
    let mut cache = VerifiedCache::new();
    let mut requests = 0;
    loop {
        requests += 1;
        let before = cache.verifications();
        let d = decide(&c, &mut cache, &req, NOW + 1);
        assert!(cache.verifications() - before <= MAX_VERIFICATIONS as u64);
        if let Decision::Forward(_) = d {
            break;
        }
        assert_eq!(
            d,
            Decision::Deny(Denial::InvalidCapability {
                reason: TokenError::BadSignature,
                redirect: None
            })
        );
        assert!(requests <= 16, "locked out");
    }
    assert_eq!(
        requests, 16,
        "15 requests of two forgeries each, then the real one"
    );
    assert_eq!(cache.rejected_len(), 30);
    // From then on the real one is a cache hit: no signature at all, whatever is planted.
    let before = cache.verifications();
    let more: Vec<String> = (100..130)
        .map(|i| format!("{COOKIE}={}", planted(0, i)))
        .collect();
    let h2 = base(&[("cookie", &format!("{COOKIE}={real}; {}", more.join("; ")))]);
    let req2 = Request::from_headers(&h2).unwrap();
    assert!(matches!(
        decide(&c, &mut cache, &req2, NOW + 2),
        Decision::Forward(_)
    ));
    assert_eq!(cache.verifications(), before);
    // The longer-Path trick (planted cookies first, the real one last) costs nothing either.
    let h3 = base(&[("cookie", &format!("{}; {COOKIE}={real}", more.join("; ")))]);
    let req3 = Request::from_headers(&h3).unwrap();
    let mut fresh = VerifiedCache::new();
    assert!(matches!(
        decide(&c, &mut fresh, &req3, NOW + 2),
        Decision::Forward(_)
    ));
    assert_eq!(fresh.verifications(), 1);
}

#[test]
fn duplicates_in_several_cookie_headers_are_checked_once() {
    let c = config();
    let real = cap();
    let forged = planted(0, 1);
    let dup = vec![format!("{COOKIE}={forged}"); 20].join("; ");
    let ours = format!("a=1; {COOKIE}={real}");
    let h = base(&[("cookie", &ours), ("cookie", &dup), ("cookie", &dup)]);
    let req = Request::from_headers(&h).unwrap();
    let mut cache = VerifiedCache::new();
    let d = decide(&c, &mut cache, &req, NOW + 1);
    assert_eq!(set(&d, USER_HEADER), Some("user-1"));
    assert_eq!(
        cache.verifications(),
        2,
        "the forgery once, then the real one"
    );
    assert_eq!(set(&d, "cookie"), Some("a=1"));
    assert_no_trace(&h, &d, &[&real, &forged], "duplicates");
    // With the cache off the duplicates are still checked once.
    let off = config_with(|c| c.token_cache_entries = 0);
    let mut cache = VerifiedCache::new();
    assert!(matches!(
        decide(&off, &mut cache, &req, NOW + 1),
        Decision::Forward(_)
    ));
    assert_eq!(cache.verifications(), 2);
}

#[test]
fn planted_cookies_keep_the_memo_off_and_its_answers_right() {
    let c = config();
    let real = cap();
    let cookie = format!("{COOKIE}={}; {COOKIE}={real}", planted(1, 1));
    let h = base(&[("cookie", &cookie)]);
    let mut gate = Gate::new(Rc::clone(&c));
    for now in [NOW + 1, NOW + 2] {
        assert!(matches!(
            memo_agrees(&mut gate, &h, now),
            Decision::Forward(_)
        ));
    }
    assert!(gate.memo().is_empty(), "two candidates: never memoized");
}

/// The ways a client may hand over one of our tokens in `Authorization`, and whether each is
/// a well-formed bearer (stripped) or not (refused with 400, nothing forwarded).
fn authorization_forms(ours: &str) -> Vec<(String, bool)> {
    let forms: [(&str, bool); 20] = [
        ("Bearer {}", true),
        ("bearer {}", true),
        ("BEARER {}", true),
        ("bEaReR {}", true),
        ("Bearer   {}  ", true),
        ("\tBearer {}\t", true),
        ("Bearer app-token, Bearer {}", true),
        ("Bearer {}, Bearer app-token", true),
        ("Bearer {},Basic dXNlcjpwYXNz", true),
        ("Bearer\t{}", false),
        ("{}", false),
        ("Token {}", false),
        ("Basic {}", false),
        ("Bearer {} extra", false),
        ("Bearer {} {}", false),
        ("Bearer \"{}\"", false),
        ("\"Bearer {}\"", false),
        ("Bearer=\"{}\"", false),
        ("Bearer app-token, {}", false),
        ("Bearer {}.", false),
    ];
    forms
        .iter()
        .map(|(f, ok)| (f.replace("{}", ours), *ok))
        .collect()
}

fn ticket() -> String {
    let here = PodClaims {
        aud: HOST.into(),
        pod: "alpha".into(),
        ..claims()
    };
    mint(
        TokenKind::LoginTicket,
        &ed_key(TokenKind::LoginTicket, 1),
        &here,
        NOW,
        60,
    )
    .unwrap()
}

const API_TOKEN: &str =
    "pg_0123456789abcdef01234567_abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx";

#[test]
fn our_tokens_in_authorization_are_stripped_or_refused_in_every_form() {
    let c = config();
    let auth = cap();
    // A capability of ours that does not grant this request (another pod's).
    let other_cap = cap_for("beta", 8726);
    let tkt = ticket();
    let mut checked = (0, 0);
    for ours in [other_cap.as_str(), tkt.as_str(), API_TOKEN] {
        for (form, well_formed) in authorization_forms(ours) {
            // Another credential authenticates: the podgate-token header, or our cookie.
            for other in [
                ("podgate-token", auth.clone()),
                ("cookie", format!("{COOKIE}={auth}; app=1")),
            ] {
                let h = base(&[(other.0, &other.1), ("authorization", &form)]);
                let d = run(&c, &h);
                if well_formed {
                    assert_eq!(set(&d, USER_HEADER), Some("user-1"), "{form:.60}");
                    assert!(removed(&d, "authorization"), "{form:.60}");
                    assert_no_trace(&h, &d, &[ours, &auth], &form);
                    checked.0 += 1;
                } else {
                    assert_eq!(
                        d,
                        Decision::Deny(Denial::MalformedAuthorization),
                        "{form:.60}"
                    );
                    checked.1 += 1;
                }
            }
            // In a second Authorization header next to the app's own: the same.
            let h = base(&[
                ("podgate-token", &auth),
                ("authorization", "Bearer app-token"),
                ("authorization", &form),
            ]);
            let d = run(&c, &h);
            if well_formed {
                assert!(removed(&d, "authorization"), "{form:.60}");
                assert_no_trace(&h, &d, &[ours], &form);
            } else {
                assert_eq!(d, Decision::Deny(Denial::MalformedAuthorization));
            }
        }
    }
    assert_eq!(checked, (3 * 9 * 2, 3 * 11 * 2));
    let reply = Denial::MalformedAuthorization.reply();
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("Bearer <token>"), "{}", reply.body);
    // A well-formed ticket or API token alone is no capability: 401, and nothing forwarded.
    for ours in [tkt.as_str(), API_TOKEN] {
        let bearer = format!("Bearer {ours}");
        assert_eq!(status(&run(&c, &base(&[("authorization", &bearer)]))), 401);
    }
}

#[test]
fn the_apps_own_credentials_pass_untouched() {
    let c = config();
    let auth = cap();
    let foreign_jwt = crate::token::tests::with_header(
        &cap(),
        serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "app-1"}),
    );
    for value in [
        "Bearer app-token".to_owned(),
        format!("Bearer {foreign_jwt}"),
        "Basic dXNlcjpwYXNzd29yZA==".to_owned(),
        "Digest username=\"pg_bob\", realm=\"app\"".to_owned(),
        "Bearer\tapp-token".to_owned(),
        "app-token".to_owned(),
    ] {
        let h = base(&[("podgate-token", &auth), ("authorization", &value)]);
        let d = run(&c, &h);
        assert_eq!(set(&d, USER_HEADER), Some("user-1"), "{value}");
        assert!(!removed(&d, "authorization"), "{value}");
        let got: Vec<String> = forwarded(&h, &d)
            .into_iter()
            .filter(|(n, _)| n == "authorization")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(got, vec![value.clone()]);
    }
}

#[test]
fn the_pods_cookie_header_is_untouched_unless_a_pair_is_named_ours() {
    let c = config();
    let auth = cap();
    for cookie in [
        "xpodgate_cap=1",
        "__Host-podgate_cap2=1;;c=3",
        "x__Host-podgate_cap=1;b=2",
        "podgate_cap=1;b=2",
        "a=__Host-podgate_cap;b=\"x y\"",
        "a=1;b=2;;  c=3 ;",
        "__Host-podgate_cap;  a=1",
        " a=1 ",
    ] {
        let h = base(&[("podgate-token", &auth), ("cookie", cookie)]);
        let d = run(&c, &h);
        assert!(
            edits(&d).iter().all(|e| !matches!(e,
                HeaderEdit::Set(n, _) | HeaderEdit::Remove(n) if n == "cookie")),
            "{cookie:?}: {:?}",
            edits(&d)
        );
    }
    // With a pair of ours: exactly those go, the rest keeps its bytes.
    for (cookie, want) in [
        ("a=1;b=2;__Host-podgate_cap=x", Some("a=1;b=2")),
        ("a=1;  __Host-podgate_cap=x;b=2", Some("a=1;b=2")),
        (
            "xpodgate_cap=1; __Host-podgate_cap=x;\tz=\"q\"",
            Some("xpodgate_cap=1;\tz=\"q\""),
        ),
        ("__Host-podgate_cap=x", None),
    ] {
        let h = base(&[("podgate-token", &auth), ("cookie", cookie)]);
        let d = run(&c, &h);
        assert_eq!(set(&d, "cookie"), want, "{cookie:?}");
        assert_eq!(want.is_none(), removed(&d, "cookie"), "{cookie:?}");
    }
}
