#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The compiled filter (release `.wasm`, wasmtime host) against planted cookies of our name,
//! our tokens of every kind in every form of `Authorization`, and the pod's `Cookie` header
//! when none of ours is in it. Each case asserts on the headers Envoy would send upstream.

#[path = "support/mod.rs"]
mod support;

use podgate_protocol::token::{mint, PodClaims, SigningKey, TokenKind};
use support::*;

const BAD_SIGNATURE: &str = "Invalid capability: token signature is invalid";
const MALFORMED_AUTHORIZATION: &str = "Malformed Authorization header: it carries a podgate token, but not as one 'Bearer <token>' credential";
const API_TOKEN: &str =
    "pg_0123456789abcdef01234567_abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx";

/// Signs with our `kid` but another key: a forgery that looks valid for `alpha` until its
/// signature is checked.
fn forgery(n: usize) -> String {
    let impostor = SigningKey::ed25519_from_seed("cap-ed1", [0x77; 32]).unwrap();
    let claims = PodClaims {
        jti: format!("forged-{n}"),
        ..claims("alpha", PORT)
    };
    mint(TokenKind::Capability, &impostor, &claims, NOW, LIFETIME).unwrap()
}

fn ticket() -> String {
    mint(
        TokenKind::LoginTicket,
        &ticket_key(),
        &claims("alpha", PORT),
        NOW,
        60,
    )
    .unwrap()
}

/// What a sibling's script may plant under our name, by kind.
fn planted(n: usize) -> String {
    match n % 6 {
        0 => forgery(n),
        1 => cap_with(&ed_key(1), &claims("alpha", PORT), NOW - 5000, LIFETIME),
        2 => cap(&ed_key(1), "beta", PORT),
        3 => ticket(),
        4 => format!("junk{n}.x.y"),
        _ => "\"\"".to_owned(),
    }
}

/// Signature checks so far, as the filter reports them (`podgate.token_cache.misses`).
fn signatures(vm: &mut podgate_wasm_tests::host::FilterVm) -> u64 {
    metric(vm, "podgate.token_cache.misses")
}

/// Asserts that nothing forwarded carries any of `tokens` or a trace of one of ours.
fn assert_no_trace(sent: &Sent, tokens: &[&str], what: &str) {
    for (name, value) in sent.forwarded() {
        for t in tokens.iter().filter(|t| t.len() > 8) {
            assert!(!value.contains(t), "{what}: {name} carries our token");
        }
        assert!(
            !podgate_protocol::token::mentions_ours(value),
            "{what}: {name}: {value:.80}"
        );
    }
}

#[test]
fn planted_cookies_never_lock_out_the_real_one() {
    let real = alpha_cap();
    let one = format!("{COOKIE}={}; ", forgery(0)).len();
    let most = podgate_protocol::cookie::MAX_COOKIE_HEADER_LEN / one - 2;
    for count in [10, 50, most] {
        let values: Vec<String> = (0..count).map(planted).collect();
        let mut pairs: Vec<String> = values.iter().map(|v| format!("{COOKIE}={v}")).collect();
        pairs.push(format!("app=1; {COOKIE}={real}; theme=dark"));
        let header = pairs.join("; ");
        assert!(header.len() <= podgate_protocol::cookie::MAX_COOKIE_HEADER_LEN);
        let mut vm = vm();
        let sent = Req::alpha().add("cookie", &header).send(&mut vm);
        assert_eq!(sent.fwd1("x-podgate-user"), Some("user-1"), "{count}");
        assert_eq!(sent.fwd1("cookie"), Some("app=1; theme=dark"), "{count}");
        let mut tokens: Vec<&str> = values.iter().map(String::as_str).collect();
        tokens.push(&real);
        assert_no_trace(&sent, &tokens, &format!("{count} planted"));
        assert_eq!(
            signatures(&mut vm),
            1,
            "{count}: only the real one is verified"
        );
    }
}

#[test]
fn forgeries_cost_two_signatures_a_request_until_the_worker_knows_them() {
    // The limit: forgeries for this very host after the real cookie are tried first. Each
    // request checks two, the worker remembers each failure, the real one then wins for good.
    let mut vm = vm();
    let real = alpha_cap();
    let mut pairs = vec![format!("{COOKIE}={real}")];
    pairs.extend((0..10).map(|n| format!("{COOKIE}={}", forgery(n))));
    let header = pairs.join("; ");
    for request in 1..=5 {
        let sent = Req::alpha().add("cookie", &header).send(&mut vm);
        assert_eq!(sent.unauthorized(), BAD_SIGNATURE, "request {request}");
        assert_eq!(signatures(&mut vm), 2 * request);
    }
    let sent = Req::alpha().add("cookie", &header).send(&mut vm);
    assert_eq!(sent.fwd1("x-podgate-user"), Some("user-1"));
    assert_eq!(sent.fwd1("cookie"), None);
    assert_eq!(signatures(&mut vm), 11);
    // Known from now on: new forgeries in front of it cost nothing.
    let mut more: Vec<String> = (100..120)
        .map(|n| format!("{COOKIE}={}", forgery(n)))
        .collect();
    more.insert(0, format!("{COOKIE}={real}"));
    let sent = Req::alpha().add("cookie", &more.join("; ")).send(&mut vm);
    assert_eq!(sent.fwd1("x-podgate-user"), Some("user-1"));
    assert_eq!(signatures(&mut vm), 11);
}

#[test]
fn duplicates_in_several_cookie_headers_are_checked_once() {
    let mut vm = vm();
    let real = alpha_cap();
    let forged = forgery(1);
    let dup = vec![format!("{COOKIE}={forged}"); 30].join("; ");
    let sent = Req::alpha()
        .add("cookie", &format!("a=1; {COOKIE}={real}"))
        .add("cookie", &dup)
        .add("cookie", &format!("b=2;{dup}"))
        .send(&mut vm);
    assert_eq!(sent.fwd1("x-podgate-user"), Some("user-1"));
    assert_eq!(sent.fwd1("cookie"), Some("a=1; b=2"));
    assert_no_trace(&sent, &[&real, &forged], "duplicates");
    assert_eq!(
        signatures(&mut vm),
        2,
        "the forgery once, then the real one"
    );
}

/// `(form, well formed)`: a well-formed bearer of ours is stripped, any other form refused.
fn forms(ours: &str) -> Vec<(String, bool)> {
    [
        ("Bearer {}", true),
        ("bearer {}", true),
        ("BEARER {}", true),
        ("Bearer    {}   ", true),
        ("Bearer app-token, Bearer {}", true),
        ("Bearer {}, Bearer app-token", true),
        ("Bearer\t{}", false),
        ("{}", false),
        ("Token {}", false),
        ("Bearer {} extra words", false),
        ("Bearer \"{}\"", false),
        ("Bearer app-token, {}", false),
        ("{}, Bearer app-token", false),
        ("Bearer {}.", false),
    ]
    .iter()
    .map(|(f, ok)| (f.replace("{}", ours), *ok))
    .collect()
}

#[test]
fn our_tokens_in_authorization_are_stripped_or_refused_in_every_form() {
    let mut vm = vm();
    let auth = alpha_cap();
    let beta = cap(&ed_key(1), "beta", PORT);
    let tkt = ticket();
    let mut seen = (0, 0);
    for ours in [beta.as_str(), tkt.as_str(), API_TOKEN] {
        for (form, well_formed) in forms(ours) {
            for by_cookie in [false, true] {
                let req = if by_cookie {
                    Req::alpha().add("cookie", &format!("{COOKIE}={auth}; app=1"))
                } else {
                    Req::alpha().token(&auth)
                };
                let sent = req.add("authorization", &form).send(&mut vm);
                if well_formed {
                    assert_eq!(sent.fwd1("x-podgate-user"), Some("user-1"), "{form:.50}");
                    assert_eq!(sent.fwd1("authorization"), None, "{form:.50}");
                    assert_no_trace(&sent, &[ours, &auth], &form);
                    seen.0 += 1;
                } else {
                    assert_eq!(sent.error(400), MALFORMED_AUTHORIZATION, "{form:.50}");
                    let hint = sent.denied(400)["hint"].as_str().unwrap().to_owned();
                    assert!(hint.contains("Authorization: Bearer <token>"), "{hint}");
                    seen.1 += 1;
                }
            }
        }
    }
    assert_eq!(seen, (3 * 6 * 2, 3 * 8 * 2));
    assert_eq!(
        metric(&mut vm, "podgate.denied.malformed_authorization"),
        3 * 8 * 2
    );
}

#[test]
fn the_apps_own_authorization_passes_untouched() {
    let mut vm = vm();
    let auth = alpha_cap();
    let foreign_jwt = with_header(
        &auth,
        &serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "app-1"}),
    );
    for value in [
        "Bearer app-token".to_owned(),
        format!("Bearer {foreign_jwt}"),
        "Basic dXNlcjpwYXNzd29yZA==".to_owned(),
        "Digest username=\"pg_bob\", realm=\"app\"".to_owned(),
        "Bearer\tapp-token".to_owned(),
    ] {
        let sent = Req::alpha()
            .token(&auth)
            .add("authorization", &value)
            .send(&mut vm);
        assert_eq!(sent.fwd("authorization"), vec![value.as_str()], "{value}");
    }
}

#[test]
fn the_pods_cookie_header_is_byte_exact_unless_a_pair_is_named_ours() {
    let mut vm = vm();
    let auth = alpha_cap();
    for cookie in [
        "xpodgate_cap=1;b=2",
        "podgate_cap2=1;;c=3",
        "a=podgate_cap;b=\"x y\"",
        "session=podgate_cap=1; ;x",
        "a=1;b=2;;  c=3 ;",
        "podgate_cap;  a=1",
        " a=1 ;b=\"x y\"",
    ] {
        let sent = Req::alpha()
            .token(&auth)
            .add("cookie", cookie)
            .send(&mut vm);
        assert_eq!(sent.fwd("cookie"), vec![cookie], "{cookie:?}");
    }
    for (cookie, expected) in [
        (format!("a=1;b=2;{COOKIE}=x"), Some("a=1;b=2")),
        (
            format!("xpodgate_cap=1;{COOKIE}={auth};\tz=9"),
            Some("xpodgate_cap=1;\tz=9"),
        ),
        (format!("{COOKIE}=x"), None),
    ] {
        let sent = Req::alpha()
            .token(&auth)
            .add("cookie", &cookie)
            .send(&mut vm);
        assert_eq!(sent.fwd1("cookie"), expected, "{cookie:?}");
    }
}
