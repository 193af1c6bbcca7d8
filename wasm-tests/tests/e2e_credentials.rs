//! Our credentials through a real Envoy 1.40 and the recording fake pods: planted cookies of
//! our name never lock the real one out, our tokens of any kind in any form of
//! `Authorization` never reach the pod, and a `Cookie` header without a pair of ours reaches
//! the pod byte for byte. Every case asserts on what the fake pod received.
//!
//! Same stack as `e2e_envoy.rs` (`envoy/podgate-static.yaml`, one worker), its own Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use podgate_protocol::assertion::ASSERTION_HEADER;
use podgate_protocol::token::{self, PodClaims, SigningKey, TokenKind};
use podgate_wasm_tests::e2e::fixture::{impostor_key, now, USER};
use podgate_wasm_tests::e2e::{block_on, Turn};

mod e2e_shared;
use e2e_shared::{alpha_host, only_request, send, turn, PORT};

const COOKIE: &str = "podgate_cap";
const MISSES: &str = "wasmcustom.podgate.token_cache.misses";
const API_TOKEN: &str =
    "pg_0123456789abcdef01234567_abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx";

/// Asserts no header the pod got carries any of `tokens` or anything that looks like ours,
/// except the identity assertion the filter signed for the pod, which must be one (the pod's
/// verifier took it), never a credential.
fn assert_no_trace(seen: &podgate_wasm_tests::e2e::Recorded, tokens: &[&str], what: &str) {
    for (name, value) in &seen.headers {
        for t in tokens.iter().filter(|t| t.len() > 8) {
            assert!(
                !value.contains(t),
                "{what}: the pod got our token in {name}"
            );
        }
        if name == ASSERTION_HEADER {
            assert!(
                matches!(seen.assertion, Some(Ok(_))),
                "{what}: {name} is not a valid assertion: {:?}",
                seen.assertion
            );
            continue;
        }
        assert!(
            !token::mentions_ours(value),
            "{what}: the pod got one of ours in {name}: {value:.80}"
        );
    }
    assert!(!seen.has_header("podgate-token"), "{what}");
}

/// Signature checks so far, settled: the filter hands its counts to Envoy on its 1 s tick,
/// which a loaded machine may run late, so the counter is read until two reads 1.2 s apart
/// agree (a tick ran between them and had nothing more to hand over).
async fn signatures(stack: &Turn<'_>) -> u64 {
    let mut last = stack.envoy.counter(MISSES).await.unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let now = stack.envoy.counter(MISSES).await.unwrap();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// A forgery for alpha: our `kid`, alpha's `aud`, another key's signature.
fn forgery(stack: &Turn<'_>) -> String {
    stack
        .minter
        .mint_with(
            &impostor_key().unwrap(),
            &stack.minter.capability("alpha", PORT),
        )
        .unwrap()
}

fn ticket(issuer: &str) -> String {
    let key = SigningKey::ed25519_from_seed("tkt-e2e-1", [0x33; 32]).unwrap();
    let claims = PodClaims {
        iss: issuer.to_owned(),
        sub: USER.to_owned(),
        aud: alpha_host(),
        pod: "alpha".into(),
        port: PORT,
        jti: format!("tkt-{}", now()),
        email: None,
    };
    token::mint(TokenKind::LoginTicket, &key, &claims, now(), 60).unwrap()
}

/// What a sibling's script may plant for the base domain under our name, by kind.
fn planted(stack: &Turn<'_>, n: usize) -> String {
    match n % 5 {
        0 => forgery(stack),
        1 => stack
            .minter
            .mint(
                &stack
                    .minter
                    .capability("alpha", PORT)
                    .issued_at(now() - 5000),
            )
            .unwrap(),
        2 => stack.minter.valid("beta", PORT).unwrap(),
        3 => ticket(&stack.minter.issuer),
        _ => format!("junk{n}.x.y"),
    }
}

#[test]
fn planted_cookies_never_lock_out_the_real_one_and_none_reaches_the_pod() {
    block_on(async {
        let stack = turn().await;
        // 10, 50, and as many as fit the largest Cookie header Envoy takes next to the other
        // headers (`max_request_headers_kb: 32` in all).
        for count in [Some(10), Some(50), None] {
            stack.reset();
            let real = stack.minter.valid("alpha", PORT).unwrap();
            let mut values: Vec<String> = Vec::new();
            let mut len = 0;
            while count.map_or(len < 30 * 1024, |c| values.len() < c) {
                let value = planted(&stack, values.len());
                len += COOKIE.len() + value.len() + 3;
                values.push(value);
            }
            let count = values.len();
            let mut pairs: Vec<String> = values.iter().map(|v| format!("{COOKIE}={v}")).collect();
            pairs.push(format!("app=1; {COOKIE}={real}; theme=dark"));
            let before = signatures(&stack).await;
            let answer = send(
                stack
                    .client
                    .get(&alpha_host(), "/page")
                    .header("cookie", pairs.join("; ")),
            )
            .await;
            assert_eq!(answer.status, 200, "{count} planted: {}", answer.body);
            let seen = only_request(&stack, stack.alpha);
            assert_eq!(seen.header("x-podgate-user"), Some(USER));
            assert_eq!(
                seen.header_all("cookie"),
                vec!["app=1; theme=dark"],
                "{count}"
            );
            let mut tokens: Vec<&str> = values.iter().map(String::as_str).collect();
            tokens.push(&real);
            assert_no_trace(&seen, &tokens, &format!("{count} planted"));
            assert_eq!(
                signatures(&stack).await - before,
                1,
                "{count} planted: only the real one costs a signature"
            );
        }
    });
}

#[test]
fn forgeries_after_the_real_cookie_cost_two_signatures_a_request_then_it_wins() {
    block_on(async {
        let stack = turn().await;
        let real = stack.minter.valid("alpha", PORT).unwrap();
        let mut pairs = vec![format!("{COOKIE}={real}")];
        pairs.extend((0..6).map(|_| format!("{COOKIE}={}", forgery(&stack))));
        let header = pairs.join("; ");
        let before = signatures(&stack).await;
        for request in 1..=3u64 {
            let answer = send(
                stack
                    .client
                    .get(&alpha_host(), "/")
                    .header("cookie", &header),
            )
            .await;
            assert_eq!(answer.status, 401, "request {request}: {}", answer.body);
            assert!(stack.nothing_forwarded(), "{}", stack.describe());
            assert_eq!(signatures(&stack).await - before, 2 * request);
        }
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("cookie", &header),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request(&stack, stack.alpha);
        assert!(!seen.has_header("cookie"), "{seen:?}");
        assert_eq!(signatures(&stack).await - before, 7);
    });
}

#[test]
fn duplicates_in_several_cookie_headers_are_checked_once_and_all_stripped() {
    block_on(async {
        let stack = turn().await;
        let real = stack.minter.valid("alpha", PORT).unwrap();
        let forged = forgery(&stack);
        let dup = vec![format!("{COOKIE}={forged}"); 20].join("; ");
        let before = signatures(&stack).await;
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("cookie", format!("a=1; {COOKIE}={real}"))
                .header("cookie", &dup)
                .header("cookie", format!("b=2; {dup}")),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request(&stack, stack.alpha);
        assert_eq!(seen.header_all("cookie"), vec!["a=1; b=2"]);
        assert_no_trace(&seen, &[&real, &forged], "duplicates");
        assert_eq!(signatures(&stack).await - before, 2);
    });
}

/// `(form, well formed)`: a well-formed bearer of ours is stripped, any other form refused.
fn forms(ours: &str) -> Vec<(String, bool)> {
    [
        ("Bearer {}", true),
        ("bearer {}", true),
        ("BEARER {}", true),
        ("Bearer    {}", true),
        ("Bearer app-token, Bearer {}", true),
        ("Bearer {}, Bearer app-token", true),
        ("Bearer\t{}", false),
        ("{}", false),
        ("Token {}", false),
        ("Bearer {} extra words", false),
        ("Bearer \"{}\"", false),
        ("Bearer app-token, {}", false),
        ("{}, Bearer app-token", false),
    ]
    .iter()
    .map(|(f, ok)| (f.replace("{}", ours), *ok))
    .collect()
}

#[test]
fn our_tokens_in_authorization_never_reach_the_pod_in_any_form() {
    block_on(async {
        let stack = turn().await;
        let auth = stack.minter.valid("alpha", PORT).unwrap();
        let beta = stack.minter.valid("beta", PORT).unwrap();
        let tkt = ticket(&stack.minter.issuer);
        for ours in [beta.as_str(), tkt.as_str(), API_TOKEN] {
            for (form, well_formed) in forms(ours) {
                for by_cookie in [false, true] {
                    stack.reset();
                    let request = stack.client.get(&alpha_host(), "/api");
                    let request = if by_cookie {
                        request.header("cookie", format!("{COOKIE}={auth}; app=1"))
                    } else {
                        request.header("podgate-token", &auth)
                    };
                    let answer = send(request.header("authorization", &form)).await;
                    if well_formed {
                        assert_eq!(answer.status, 200, "{form:.50}: {}", answer.body);
                        let seen = only_request(&stack, stack.alpha);
                        assert!(!seen.has_header("authorization"), "{form:.50}");
                        assert_eq!(seen.header("x-podgate-user"), Some(USER));
                        assert_no_trace(&seen, &[ours, &auth], &form);
                        if by_cookie {
                            assert_eq!(seen.header_all("cookie"), vec!["app=1"]);
                        }
                    } else {
                        assert_eq!(answer.status, 400, "{form:.50}: {}", answer.body);
                        assert_eq!(answer.header("content-type"), Some("application/json"));
                        let body = answer.json();
                        assert!(
                            body["error"].as_str().unwrap().contains("Authorization"),
                            "{body}"
                        );
                        assert!(
                            body["hint"].as_str().unwrap().contains("Bearer <token>"),
                            "{body}"
                        );
                        assert!(
                            stack.nothing_forwarded(),
                            "{form:.50}: {}",
                            stack.describe()
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn the_apps_own_authorization_passes_untouched() {
    block_on(async {
        let stack = turn().await;
        let auth = stack.minter.valid("alpha", PORT).unwrap();
        for value in [
            "Bearer app-token",
            "Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImFwcC0xIn0.e30.c2ln",
            "Basic dXNlcjpwYXNzd29yZA==",
            "Digest username=\"pg_bob\", realm=\"app\"",
        ] {
            stack.reset();
            let answer = send(
                stack
                    .client
                    .get(&alpha_host(), "/api")
                    .header("podgate-token", &auth)
                    .header("authorization", value),
            )
            .await;
            assert_eq!(answer.status, 200, "{value}: {}", answer.body);
            let seen = only_request(&stack, stack.alpha);
            assert_eq!(seen.header_all("authorization"), vec![value]);
        }
    });
}

#[test]
fn the_pods_cookie_header_is_byte_exact_unless_a_pair_is_named_ours() {
    block_on(async {
        let stack = turn().await;
        let auth = stack.minter.valid("alpha", PORT).unwrap();
        let cases: Vec<(String, Option<String>)> = vec![
            ("xpodgate_cap=1;b=2".into(), None),
            ("podgate_cap2=1;;c=3".into(), None),
            ("a=podgate_cap;b=\"x y\"".into(), None),
            ("session=podgate_cap=1; ;x".into(), None),
            ("a=1;b=2;;  c=3 ;x".into(), None),
            ("podgate_cap;  a=1".into(), None),
            ("__Host-podgate_cap=1;b=\"x y\"".into(), None),
            (format!("a=1;b=2;{COOKIE}=x"), Some("a=1;b=2".into())),
            (
                format!("xpodgate_cap=1;  {COOKIE}={auth};\tz=9"),
                Some("xpodgate_cap=1;\tz=9".into()),
            ),
        ];
        for (cookie, stripped) in cases {
            stack.reset();
            let answer = send(
                stack
                    .client
                    .get(&alpha_host(), "/")
                    .header("podgate-token", &auth)
                    .header("cookie", &cookie),
            )
            .await;
            assert_eq!(answer.status, 200, "{cookie:?}: {}", answer.body);
            let seen = only_request(&stack, stack.alpha);
            let expected = stripped.unwrap_or_else(|| cookie.clone());
            assert_eq!(
                seen.header_all("cookie"),
                vec![expected.as_str()],
                "{cookie:?}"
            );
        }
    });
}
