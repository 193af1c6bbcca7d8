//! Native tests of sign-out and cut-offs through a `Gate`, and of the paths the filter answers
//! itself (`/.podgate/userinfo`, `/.podgate/logout`).

use std::rc::Rc;

use super::*;
use crate::cutoff::{Cutoffs, SessionCut, UserCut};
use crate::token::tests::{claims, ed_key, NOW};
use crate::token::{mint_in_session, PodClaims, TokenError, TokenKind};

const HOST: &str = "localhost-8726-pod-alpha.example.dev";

fn config_with(cutoffs: Cutoffs) -> Rc<CompiledConfig> {
    super::tests::config_with(|c| c.cutoffs = cutoffs)
}

/// A capability for alpha:8726 for `sub`, issued at `iat`, in session `sid`.
fn cap(sub: &str, iat: i64, sid: Option<&str>) -> String {
    let c = PodClaims {
        sub: sub.into(),
        aud: HOST.into(),
        pod: "alpha".into(),
        ..claims()
    };
    mint_in_session(
        TokenKind::Capability,
        &ed_key(TokenKind::Capability, 1),
        &c,
        sid,
        iat,
        900,
    )
    .unwrap()
}

fn request(path: &str, cookie: &str) -> Vec<u8> {
    request_accepting(path, cookie, "text/html")
}

/// `request` as a script's `fetch` sends it (not a page load).
fn script_request(path: &str, cookie: &str) -> Vec<u8> {
    request_accepting(path, cookie, "application/json")
}

fn request_accepting(path: &str, cookie: &str, accept: &str) -> Vec<u8> {
    let mut h = vec![
        (":authority".to_owned(), HOST.as_bytes().to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
        (":method".to_owned(), b"GET".to_vec()),
        ("accept".to_owned(), accept.as_bytes().to_vec()),
    ];
    if !cookie.is_empty() {
        h.push((
            "cookie".to_owned(),
            format!("__Host-podgate_cap={cookie}").into_bytes(),
        ));
    }
    crate::wire::encode_header_map(&h)
}

fn status(outcome: &Outcome) -> u32 {
    match outcome {
        Outcome::Forward(_) | Outcome::Exchange(_) | Outcome::Renew(_) => 0,
        Outcome::Deny(denial) => denial.reply().status,
        Outcome::Preflight(reply)
        | Outcome::Answer(reply)
        | Outcome::Page(reply)
        | Outcome::Wake { page: reply, .. } => reply.status,
    }
}

fn is_revoked(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Deny(Denial::InvalidCapability {
            reason: TokenError::Revoked,
            ..
        })
    )
}

#[test]
fn a_session_cut_refuses_its_capabilities_even_cached_and_memoized() {
    let mine = cap("alice", NOW, Some("sid-a"));
    let other_session = cap("alice", NOW, Some("sid-b"));
    let no_session = cap("alice", NOW, None);
    let mut gate = Gate::new(config_with(Cutoffs::default()));
    for token in [&mine, &other_session, &no_session] {
        // Twice: the second is a memo hit.
        for _ in 0..2 {
            assert_eq!(status(&gate.on_request(&request("/", token), NOW + 1)), 0);
        }
    }
    // The push that follows the sign-out.
    gate.configure(config_with(Cutoffs {
        sessions: vec![SessionCut {
            sid: "sid-a".into(),
            at: NOW + 5,
            until: NOW + 5 + 930,
        }],
        ..Cutoffs::default()
    }));
    let refused = gate.on_request(&request("/", &mine), NOW + 6);
    assert!(is_revoked(&refused), "{refused:?}");
    // A page load is sent to sign in again (a new session mints a new capability).
    assert_eq!(status(&refused), 302);
    assert_eq!(
        status(&gate.on_request(&request("/", &other_session), NOW + 6)),
        0
    );
    assert_eq!(
        status(&gate.on_request(&request("/", &no_session), NOW + 6)),
        0
    );
}

#[test]
fn a_user_cut_refuses_older_capabilities_and_lets_newer_ones_through() {
    let old = cap("bob", NOW, None);
    let new = cap("bob", NOW + 20, None);
    let someone_else = cap("carol", NOW, None);
    let mut gate = Gate::new(config_with(Cutoffs::default()));
    assert_eq!(status(&gate.on_request(&request("/", &old), NOW + 1)), 0);
    gate.configure(config_with(Cutoffs {
        users: vec![UserCut {
            sub: "bob".into(),
            pod: Some("alpha".into()),
            port: None,
            resource: None,
            at: NOW + 10,
            until: NOW + 940,
        }],
        ..Cutoffs::default()
    }));
    assert!(is_revoked(&gate.on_request(&request("/", &old), NOW + 21)));
    // Minted after access came back: not cut.
    assert_eq!(status(&gate.on_request(&request("/", &new), NOW + 21)), 0);
    assert_eq!(
        status(&gate.on_request(&request("/", &someone_else), NOW + 21)),
        0
    );
}

#[test]
fn userinfo_is_answered_from_the_capability_and_never_forwarded() {
    let mut gate = Gate::new(config_with(Cutoffs::default()));
    let token = cap("alice", NOW, Some("sid-a"));
    let Outcome::Answer(reply) = gate.on_request(&request("/.podgate/userinfo", &token), NOW + 1)
    else {
        panic!("userinfo was not answered by the filter");
    };
    assert_eq!(reply.status, 200);
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["user"], "alice");
    assert_eq!(body["email"], "u@example.dev");
    assert_eq!(body["pod"], "alpha");
    assert_eq!(body["port"], 8726);
    assert_eq!(body["expires_at"], NOW + 900);
    // The session id is nobody's business on the page.
    assert!(body.get("sid").is_none());
    assert!(reply
        .headers
        .iter()
        .any(|(n, v)| *n == "cache-control" && v == "no-store"));

    // Without a capability, or with a refused one: a 401 for scripts, no redirect.
    let none = gate.on_request(&script_request("/.podgate/userinfo", ""), NOW + 1);
    assert!(matches!(
        none,
        Outcome::Deny(Denial::NoCapability { redirect: None })
    ));
    let expired = gate.on_request(&script_request("/.podgate/userinfo", &token), NOW + 2000);
    assert!(matches!(
        expired,
        Outcome::Deny(Denial::InvalidCapability { redirect: None, .. })
    ));
    // A browser navigating there gets the 401 as a page with a sign-in link.
    let Outcome::Page(page) = gate.on_request(&request("/.podgate/userinfo", ""), NOW + 1) else {
        panic!("a page load of userinfo without a capability got no page");
    };
    assert_eq!((page.status, page.reason), (401, "no_capability"));
    // A cut capability is refused there too.
    gate.configure(config_with(Cutoffs {
        sessions: vec![SessionCut {
            sid: "sid-a".into(),
            at: NOW,
            until: NOW + 930,
        }],
        ..Cutoffs::default()
    }));
    assert!(is_revoked(&gate.on_request(
        &script_request("/.podgate/userinfo", &token),
        NOW + 1
    )));
}

#[test]
fn logout_clears_the_cookie_and_sends_the_browser_to_the_control_plane() {
    let mut gate = Gate::new(config_with(Cutoffs::default()));
    // With or without a capability: signing out needs none.
    for cookie in [String::new(), cap("alice", NOW, Some("sid-a"))] {
        let Outcome::Answer(reply) =
            gate.on_request(&request("/.podgate/logout?x=1", &cookie), NOW + 1)
        else {
            panic!("logout was not answered by the filter");
        };
        assert_eq!(reply.status, 302);
        let header = |name: &str| {
            reply
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header("location").as_deref(),
            Some("https://podgate.example.dev/auth/logout")
        );
        let set_cookie = header("set-cookie").unwrap();
        assert!(
            set_cookie.starts_with("__Host-podgate_cap=; Path=/; Max-Age=0; HttpOnly"),
            "{set_cookie}"
        );
        assert!(set_cookie.ends_with("; Secure"), "{set_cookie}");
    }
    // Other spellings are the control plane's (forwarded there, never to the pod).
    let Outcome::Forward(f) = gate.on_request(&request("/.PODGATE/logout", ""), NOW + 1) else {
        panic!("another spelling was answered");
    };
    assert!(f.user.is_none() && f.response.is_none());
}
