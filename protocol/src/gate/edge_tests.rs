//! Native tests of the decision at the edge of what a path and the forwarding headers can do:
//! the reserved prefix in every spelling, `X-Forwarded-Host`, and the `next` of a redirect.

use std::rc::Rc;

use super::*;
use crate::config::CLUSTER_HEADER;
use crate::token::tests::{claims, ed_key, NOW};
use crate::token::{mint, PodClaims, TokenKind};

const HOST: &str = "localhost-8726-pod-alpha.example.dev";

fn config() -> Rc<CompiledConfig> {
    super::tests::config_with(|_| {})
}

fn cap() -> String {
    let c = PodClaims {
        aud: HOST.into(),
        pod: "alpha".into(),
        port: 8726,
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

fn request(authority: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        (":authority", authority),
        (":path", path),
        (":method", "GET"),
    ];
    h.extend_from_slice(extra);
    h.iter()
        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// The filter's way: `h` serialized as Envoy hands it over, through `gate`.
fn through_gate(gate: &mut Gate, h: &[(String, Vec<u8>)]) -> Decision {
    match gate.on_request(&crate::wire::encode_header_map(h), NOW + 1) {
        Outcome::Forward(forward) => Decision::Forward(forward),
        Outcome::Deny(denial) => Decision::Deny(denial),
        Outcome::Answer(reply) => Decision::Answer(reply),
        Outcome::Exchange(need) => Decision::Exchange(need),
        Outcome::Renew(renew) => match &renew.otherwise {
            Outcome::Deny(refusal) => Decision::Renew {
                old: std::rc::Rc::clone(&renew.old),
                refusal: refusal.clone(),
            },
            otherwise => panic!("a lapsed capability answered with {otherwise:?}"),
        },
        Outcome::Preflight(reply) => panic!("answered as a preflight: {reply:?}"),
        Outcome::Page(reply) | Outcome::Wake { page: reply, .. } => {
            panic!("answered with a page: {reply:?}")
        }
    }
}

/// `h` through a fresh gate for `c`.
fn once(c: &Rc<CompiledConfig>, h: &[(String, Vec<u8>)]) -> Decision {
    through_gate(&mut Gate::new(Rc::clone(c)), h)
}

fn forward(d: &Decision) -> &Forward {
    match d {
        Decision::Forward(f) => f,
        other => panic!("expected a forward, got {other:?}"),
    }
}

fn set<'a>(f: &'a Forward, name: &str) -> Vec<&'a str> {
    f.edits
        .iter()
        .filter_map(|e| match e {
            HeaderEdit::Set(n, v) if n == name => Some(v.as_str()),
            _ => None,
        })
        .collect()
}

/// Spellings of `/.podgate/callback?ticket=…` that some server on the way could read as it.
const RESERVED_SPELLINGS: &[&str] = &[
    "/.podgate/callback?ticket=t",
    "/.PODGATE/callback?ticket=t",
    "/.PodGate/callback?ticket=t",
    "/%2epodgate/callback?ticket=t",
    "/%2Epodgate/callback?ticket=t",
    "/.%70odgate/callback?ticket=t",
    "/.podgate%2Fcallback?ticket=t",
    "/.podgate%2fcallback?ticket=t",
    "/.podgate%5Ccallback?ticket=t",
    "/.podgate\\callback?ticket=t",
    "//.podgate/callback?ticket=t",
    "/./.podgate/callback?ticket=t",
    "/x/../.podgate/callback?ticket=t",
    "/x/%2e%2e/.podgate/callback?ticket=t",
    "/..;/.podgate/callback?ticket=t",
    "/.podgate;x/callback?ticket=t",
    "/.podgate?ticket=t",
    "/.podgate%3Fticket=t",
    "/.podgate#/../callback?ticket=t",
    "/.podgate./callback?ticket=t",
    "/a/.podgate/callback?ticket=t",
];

#[test]
fn every_spelling_of_the_reserved_prefix_goes_to_the_control_plane() {
    let c = config();
    let token = cap();
    let cookie = format!("__Host-podgate_cap={token}");
    for path in RESERVED_SPELLINGS {
        for extra in [
            vec![],
            vec![("cookie", cookie.as_str())],
            vec![("podgate-token", token.as_str())],
            vec![("sec-fetch-mode", "navigate"), ("accept", "text/html")],
        ] {
            let d = once(&c, &request(HOST, path, &extra));
            let f = forward(&d);
            assert_eq!(
                set(f, CLUSTER_HEADER),
                vec!["podgate_control_plane"],
                "{path} {extra:?}"
            );
            assert!(set(f, ":authority").is_empty(), "{path}: Host changed");
            assert_eq!(f.user, None, "{path}");
            assert_eq!(f.response, None, "{path}");
        }
    }
}

#[test]
fn the_memo_never_serves_a_pod_forward_to_a_reserved_spelling() {
    let c = config();
    let token = cap();
    let mut gate = Gate::new(c);
    // The same token and host on an ordinary path first, twice: stored, then a hit.
    let ordinary = request(HOST, "/index.html", &[("podgate-token", &token)]);
    for _ in 0..2 {
        let d = through_gate(&mut gate, &ordinary);
        // The pod has an address: the pods' route, no cluster header.
        assert!(set(forward(&d), CLUSTER_HEADER).is_empty());
        assert!(!forward(&d).reroute);
    }
    assert_eq!(gate.memo().len(), 1);
    for path in RESERVED_SPELLINGS {
        let h = request(HOST, path, &[("podgate-token", &token)]);
        for _ in 0..2 {
            let d = through_gate(&mut gate, &h);
            assert_eq!(
                set(forward(&d), CLUSTER_HEADER),
                vec!["podgate_control_plane"],
                "{path}: served the memoized pod forward"
            );
        }
    }
    assert_eq!(gate.memo().len(), 1, "a reserved path was memoized");
}

#[test]
fn x_forwarded_host_is_the_public_pod_host_on_every_forward() {
    let c = config();
    let token = cap();
    let spoofs = [
        ("x-forwarded-host", "evil.example.com"),
        ("x-forwarded-host", "localhost-8726-pod-beta.example.dev"),
    ];
    for (authority, want) in [
        (HOST, HOST),
        (&*format!("{HOST}:8443"), &*format!("{HOST}:8443")),
        (&*format!("{HOST}.:8443"), &*format!("{HOST}:8443")),
        (&*format!("{HOST}."), HOST),
    ] {
        for path in ["/", "/.podgate/callback?ticket=t"] {
            let mut extra = vec![("podgate-token", token.as_str())];
            extra.extend_from_slice(&spoofs);
            let d = once(&c, &request(authority, path, &extra));
            assert_eq!(
                set(forward(&d), "x-forwarded-host"),
                vec![want],
                "{authority} {path}"
            );
        }
    }
}

#[test]
fn a_page_load_redirect_never_carries_a_ticket_or_a_walk_out_of_the_path() {
    let c = config();
    let page = [("sec-fetch-mode", "navigate")];
    for (path, next) in [
        ("/app?ticket=t", "/app"),
        ("/app?a=1&TICKET=t&b=2", "/app%3Fa%3D1%26b%3D2"),
        ("/app?%74icket=t", "/app"),
        ("/a/..//evil.com", "/evil.com"),
        ("/.//evil.com", "/evil.com"),
        ("/%2e%2e//evil", "/evil"),
        ("/a%2F%2Fevil", "/"),
        ("/index.html", "/index.html"),
    ] {
        let d = once(&c, &request(HOST, path, &page));
        let Decision::Deny(denial) = &d else {
            panic!("{path}: {d:?}")
        };
        let reply = denial.reply();
        assert_eq!(reply.status, 302, "{path}");
        let location = reply
            .headers
            .iter()
            .find(|(n, _)| *n == "location")
            .map(|(_, v)| v.clone())
            .unwrap();
        assert_eq!(
            location,
            format!("https://podgate.example.dev/api/proxy-auth?pod=alpha&port=8726&next={next}"),
            "{path}"
        );
        assert!(!location.to_ascii_lowercase().contains("ticket"), "{path}");
    }
}

#[test]
fn a_capability_from_the_future_is_a_401_saying_so_never_a_sign_in_loop() {
    // The control plane's clock ahead of this proxy's by more than the leeway: every capability
    // it mints is refused as not valid yet, and so would the one a sign-in gives. A page load
    // is answered, not sent round.
    let c = config();
    let c_claims = PodClaims {
        aud: HOST.into(),
        pod: "alpha".into(),
        port: 8726,
        ..claims()
    };
    let key = ed_key(TokenKind::Capability, 1);
    let ahead = mint(TokenKind::Capability, &key, &c_claims, NOW + 120, 900).unwrap();
    let cookie = format!("__Host-podgate_cap={ahead}");
    let page = [("sec-fetch-mode", "navigate"), ("cookie", cookie.as_str())];
    let h = crate::wire::encode_header_map(&request(HOST, "/app", &page));
    let Outcome::Page(reply) = Gate::new(Rc::clone(&c)).on_request(&h, NOW + 1) else {
        panic!("not a page")
    };
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.body.contains("not valid yet"), "{}", reply.body);
    assert!(reply.body.contains("clock"), "{}", reply.body);
    // Not sent to sign in on its own (a loop while the clocks disagree); a link to, for once
    // they agree.
    assert!(!reply.headers.iter().any(|(n, _)| *n == "location"));
    assert!(reply.body.contains("/api/proxy-auth?"), "{}", reply.body);
    // A script gets the JSON saying the same.
    let h = request(HOST, "/api", &[("cookie", cookie.as_str())]);
    let d = once(&c, &h);
    let Decision::Deny(denial) = &d else {
        panic!("{d:?}")
    };
    let reply = denial.reply();
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.body.contains("clock"), "{}", reply.body);
    // Within the leeway it is taken; an expired one still goes to sign in.
    let close = mint(TokenKind::Capability, &key, &c_claims, NOW + 20, 900).unwrap();
    let cookie = format!("__Host-podgate_cap={close}");
    let page = [("sec-fetch-mode", "navigate"), ("cookie", cookie.as_str())];
    assert!(matches!(
        once(&c, &request(HOST, "/app", &page)),
        Decision::Forward(_)
    ));
    let old = mint(TokenKind::Capability, &key, &c_claims, NOW - 2000, 900).unwrap();
    let cookie = format!("__Host-podgate_cap={old}");
    let page = [("sec-fetch-mode", "navigate"), ("cookie", cookie.as_str())];
    let d = once(&c, &request(HOST, "/app", &page));
    let Decision::Deny(denial) = &d else {
        panic!("{d:?}")
    };
    assert_eq!(denial.reply().status, 302);
}
