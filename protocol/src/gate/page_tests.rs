//! Native tests of how a refusal is answered: a browser page load gets the page of
//! `page::for_denial`, a script the exact JSON of `Denial::reply`.

use std::rc::Rc;

use super::*;
use crate::config::PodStatus;
use crate::token::tests::{claims, ed_key, NOW};
use crate::token::{mint, PodClaims, TokenKind};

fn cap_for(pod: &str, port: u16) -> String {
    let c = PodClaims {
        aud: format!("localhost-{port}-pod-{pod}.example.dev"),
        pod: pod.into(),
        port,
        ..claims()
    };
    mint(
        TokenKind::Capability,
        &ed_key(TokenKind::Capability, 1),
        &c,
        NOW,
        900,
    )
    .unwrap()
}

fn on(host: &str, path: &str, extra: &[(&str, &str)]) -> Outcome {
    let mut h: Vec<(String, Vec<u8>)> = vec![
        (":authority".into(), host.as_bytes().to_vec()),
        (":path".into(), path.as_bytes().to_vec()),
        (":method".into(), b"GET".to_vec()),
    ];
    h.extend(
        extra
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
    );
    let config = super::tests::config_with(|_| {});
    Gate::new(Rc::clone(&config)).on_request(&crate::wire::encode_header_map(&h), NOW + 1)
}

const NAVIGATE: [(&str, &str); 2] = [
    ("sec-fetch-mode", "navigate"),
    ("accept", "text/html,application/xhtml+xml"),
];

fn page(outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Page(reply) => reply,
        other => panic!("expected a page, got {other:?}"),
    }
}

/// Each refusal a page load can meet without a redirect: `(host, path, token)` and the status.
fn cases() -> Vec<(String, &'static str, String, u32, Denial)> {
    vec![
        // A bad token on a script-only path: 401 without a redirect.
        (
            "localhost-8726-pod-alpha.example.dev".into(),
            "/.podgate/userinfo",
            String::new(),
            401,
            Denial::NoCapability { redirect: None },
        ),
        (
            "localhost-8726-pod-alpha.example.dev".into(),
            "/",
            cap_for("beta", 8726),
            403,
            Denial::WrongScope,
        ),
        (
            "localhost-8726-pod-ghost.example.dev".into(),
            "/",
            cap_for("ghost", 8726),
            404,
            Denial::UnknownPod,
        ),
        (
            "localhost-8726-pod-sleepy.example.dev".into(),
            "/",
            cap_for("sleepy", 8726),
            503,
            Denial::NotRunning(PodStatus::Stopped),
        ),
    ]
}

#[test]
fn page_loads_get_pages_scripts_the_exact_json() {
    for (host, path, token, status, denial) in cases() {
        let mut with_token: Vec<(&str, &str)> = Vec::new();
        if !token.is_empty() {
            with_token.push(("podgate-token", token.as_str()));
        }
        // A script: the refusal itself, answered with its JSON.
        assert_eq!(on(&host, path, &with_token), Outcome::Deny(denial.clone()));
        // `fetch` asking for HTML is still a script: not a navigation.
        let mut fetch = with_token.clone();
        fetch.extend([("sec-fetch-mode", "cors"), ("accept", "text/html")]);
        assert_eq!(on(&host, path, &fetch), Outcome::Deny(denial.clone()));
        // A navigation, by Sec-Fetch-Mode or (older browsers) by Accept alone.
        let mut nav = with_token.clone();
        nav.extend(NAVIGATE);
        let mut accept_only = with_token.clone();
        accept_only.push(("accept", "text/html"));
        for headers in [nav, accept_only] {
            let reply = page(on(&host, path, &headers));
            assert_eq!(reply.status, status, "{denial:?}");
            assert_eq!(reply.reason, denial.reason());
            assert!(reply.body.starts_with("<!doctype html>"), "{}", reply.body);
            assert!(
                !reply.body.contains("10.0.0.5") && !reply.body.contains("pod_"),
                "internal addresses leak: {}",
                reply.body
            );
        }
    }
}

#[test]
fn sign_in_link_asks_for_this_page_back() {
    let mut h = vec![("podgate-token", "")];
    let token = cap_for("beta", 8726);
    h[0].1 = token.as_str();
    h.extend(NAVIGATE);
    let reply = page(on("localhost-8726-pod-alpha.example.dev", "/app?x=1", &h));
    assert!(
        reply.body.contains(
            "href=\"https://podgate.example.dev/api/proxy-auth?pod=alpha&amp;port=8726&amp;next=/app%3Fx%3D1\""
        ),
        "{}",
        reply.body
    );
}

#[test]
fn page_loads_still_redirect_to_sign_in_where_they_can() {
    let mut nav = NAVIGATE.to_vec();
    let outcome = on("localhost-8726-pod-alpha.example.dev", "/", &nav);
    assert!(
        matches!(
            outcome,
            Outcome::Deny(Denial::NoCapability { redirect: Some(_) })
        ),
        "{outcome:?}"
    );
    nav.push(("podgate-token", "not-a-token"));
    let outcome = on("localhost-8726-pod-alpha.example.dev", "/", &nav);
    assert!(
        matches!(
            outcome,
            Outcome::Deny(Denial::NoCapability { redirect: Some(_) })
                | Outcome::Deny(Denial::InvalidCapability {
                    redirect: Some(_),
                    ..
                })
        ),
        "{outcome:?}"
    );
}

#[test]
fn a_post_is_never_a_page_load() {
    let token = cap_for("sleepy", 8726);
    let mut h: Vec<(String, Vec<u8>)> = vec![
        (
            ":authority".into(),
            b"localhost-8726-pod-sleepy.example.dev".to_vec(),
        ),
        (":path".into(), b"/".to_vec()),
        (":method".into(), b"POST".to_vec()),
        ("podgate-token".into(), token.into_bytes()),
    ];
    h.extend(
        NAVIGATE
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
    );
    let config = super::tests::config_with(|_| {});
    let outcome = Gate::new(config).on_request(&crate::wire::encode_header_map(&h), NOW + 1);
    assert_eq!(
        outcome,
        Outcome::Deny(Denial::NotRunning(PodStatus::Stopped))
    );
}
