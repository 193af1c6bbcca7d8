//! Native tests of lapsed cookie capabilities (`decide::lapsed`): a browser's capability past
//! its `exp` makes its request wait for a renewal, then go on the fresh one with its cookie;
//! nothing else that lapsed (no session, a header, past the window, forged, withdrawn,
//! another host, the window off) is ever renewed.

use std::rc::Rc;

use super::*;
use crate::cutoff::{Cutoffs, SessionCut};
use crate::renewal::{RenewAnswer, Renewal};
use crate::reply::Denial;
use crate::token::tests::NOW;
use crate::token::TokenError;

const HOST: &str = "localhost-8726-pod-alpha.example.dev";
const COOKIE: &str = "__Host-podgate_cap";
/// The test configuration's leeway, and the window of lapsed capabilities.
const LEEWAY: i64 = 30;
const LAPSED: i64 = 3600;
/// A capability issued at `NOW` for 900 s has lapsed from `LAPSES`.
const LAPSES: i64 = NOW + 900 + LEEWAY;

fn renewal_with(lapsed_secs: i64) -> Renewal {
    Renewal {
        url: "https://podgate.example.dev/api/proxy-renew".into(),
        secret: "0123456789abcdef0123456789abcdef".into(),
        before_secs: 300,
        timeout_ms: 1000,
        lapsed_secs,
    }
}

fn config_with(lapsed_secs: i64, cutoffs: Cutoffs) -> Rc<CompiledConfig> {
    super::tests::config_with(|c| {
        c.renewal = Some(renewal_with(lapsed_secs));
        c.cutoffs = cutoffs;
    })
}

fn config() -> Rc<CompiledConfig> {
    config_with(LAPSED, Cutoffs::default())
}

/// A capability for `pod`:8726 for alice, issued at `iat` for 900 s, in session `sid`.
fn cap_for(pod: &str, iat: i64, sid: Option<&str>) -> String {
    super::renewal_tests::cap_for("alice", pod, iat, sid)
}

fn request(cookie: Option<&str>, token_header: Option<&str>) -> Vec<u8> {
    let mut h = vec![
        (":authority".to_owned(), HOST.as_bytes().to_vec()),
        (":path".to_owned(), b"/api/data".to_vec()),
        (":method".to_owned(), b"GET".to_vec()),
    ];
    if let Some(c) = cookie {
        h.push((
            "cookie".to_owned(),
            format!("a=1; {COOKIE}={c}").into_bytes(),
        ));
    }
    if let Some(t) = token_header {
        h.push(("podgate-token".to_owned(), t.as_bytes().to_vec()));
    }
    crate::wire::encode_header_map(&h)
}

fn expired() -> Outcome {
    Outcome::Deny(Denial::InvalidCapability {
        reason: TokenError::Expired,
        redirect: None,
    })
}

fn renew(outcome: Outcome) -> Rc<LapsedRenewal> {
    match outcome {
        Outcome::Renew(renew) => renew,
        other => panic!("not renewed: {other:?}"),
    }
}

fn answer(token: &str) -> (Vec<u8>, String) {
    let set_cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Lax; Secure; Path=/");
    let body = serde_json::to_vec(&RenewAnswer {
        token: token.into(),
        set_cookie: set_cookie.clone(),
    })
    .unwrap();
    (body, set_cookie)
}

#[test]
fn a_lapsed_session_cookie_waits_for_its_renewal_then_goes_on_the_fresh_one_with_its_cookie() {
    let old = cap_for("alpha", NOW, Some("sid-a"));
    let mut gate = Gate::new(config());
    let at = LAPSES + 600;
    let wait = renew(gate.on_request(&request(Some(&old), None), at));
    assert_eq!(wait.old.token.as_ref().unwrap().as_str(), old);
    assert_eq!(wait.old.sid.as_deref(), Some("sid-a"));
    assert_eq!(
        wait.otherwise,
        expired(),
        "without a renewal: the 401 of today"
    );
    // The call is the renewal's: the old capability as the bearer.
    let call = gate.renewal_call(&wait.old).unwrap();
    let bearer = format!("Bearer {old}");
    assert!(call
        .headers
        .iter()
        .any(|(n, v)| n == "authorization" && *v == bearer));

    let fresh = cap_for("alpha", at, Some("sid-a"));
    let (body, set_cookie) = answer(&fresh);
    assert!(matches!(
        gate.renewed(&wait.old, 200, &body, at),
        renewal::Renewed::Fresh { .. }
    ));
    // Decided again, and every later request still carrying the old cookie: forwarded on the
    // fresh capability, our cookie stripped, the fresh cookie handed on; never memoized.
    for _ in 0..2 {
        let Outcome::Forward(f) = gate.on_request(&request(Some(&old), None), at + 1) else {
            panic!("not forwarded");
        };
        let granted = f.capability.as_ref().unwrap();
        assert_eq!(granted.token.as_ref().unwrap().as_str(), fresh);
        assert_eq!(f.set_cookie.as_deref(), Some(set_cookie.as_str()));
        assert_eq!(f.expires_at, Some(at + 900));
        assert!(f
            .edits
            .contains(&HeaderEdit::Set("cookie".into(), "a=1".into())));
        assert!(!format!("{:?}", f.edits).contains(&old));
    }
    // The fresh cookie itself: an ordinary forward, nothing to hand on.
    let Outcome::Forward(f) = gate.on_request(&request(Some(&fresh), None), at + 2) else {
        panic!("not forwarded");
    };
    assert_eq!(f.set_cookie, None);
    // Once the fresh one is cut off, the old cookie asks for a renewal again (which the
    // control plane refuses for a signed-out session).
    let cut = config_with(
        LAPSED,
        Cutoffs {
            sessions: vec![SessionCut {
                sid: "sid-a".into(),
                at: at + 3,
                until: at + 5000,
            }],
            ..Cutoffs::default()
        },
    );
    gate.configure(cut);
    assert_eq!(
        gate.on_request(&request(Some(&old), None), at + 4),
        expired(),
        "the old capability is cut too: nothing to renew"
    );
}

#[test]
fn a_lapsed_cookie_without_a_session_in_a_header_past_the_window_forged_or_elsewhere_is_refused() {
    let mut gate = Gate::new(config());
    let at = LAPSES + 10;
    let no_session = cap_for("alpha", NOW, None);
    assert_eq!(
        gate.on_request(&request(Some(&no_session), None), at),
        expired()
    );
    let in_session = cap_for("alpha", NOW, Some("sid-a"));
    assert_eq!(
        gate.on_request(&request(None, Some(&in_session)), at),
        expired(),
        "a script's header: scripts mint their own"
    );
    // The window's last second, then past it.
    renew(gate.on_request(&request(Some(&in_session), None), LAPSES - 1 + LAPSED));
    assert_eq!(
        gate.on_request(&request(Some(&in_session), None), LAPSES + LAPSED),
        expired()
    );
    // A forged signature (a character in the middle of it changed): refused after its one
    // signature check, no call; the same value again costs none.
    let dot = in_session.rfind('.').unwrap();
    let middle = dot + (in_session.len() - dot) / 2;
    let mut forged = in_session.clone();
    let was = forged.as_bytes()[middle];
    forged.replace_range(middle..=middle, if was == b'A' { "B" } else { "A" });
    let checks = gate.cache().verifications();
    for _ in 0..2 {
        assert!(matches!(
            gate.on_request(&request(Some(&forged), None), at),
            Outcome::Deny(Denial::InvalidCapability { .. })
        ));
    }
    assert_eq!(gate.cache().verifications(), checks + 1);
    // Another pod's capability on this host.
    let beta = cap_for("beta", NOW, Some("sid-a"));
    assert!(matches!(
        gate.on_request(&request(Some(&beta), None), at),
        Outcome::Deny(_)
    ));
    // Not lapsed but refused otherwise (not yet valid): no renewal either.
    let future = cap_for("alpha", at + 3600, Some("sid-a"));
    assert!(matches!(
        gate.on_request(&request(Some(&future), None), at),
        Outcome::Deny(_)
    ));
}

#[test]
fn a_withdrawn_lapsed_capability_and_a_configuration_without_the_window_renew_nothing() {
    let token = cap_for("alpha", NOW, Some("sid-a"));
    let at = LAPSES + 10;
    let mut off = Gate::new(config_with(0, Cutoffs::default()));
    assert_eq!(off.on_request(&request(Some(&token), None), at), expired());
    let signed_out = Cutoffs {
        sessions: vec![SessionCut {
            sid: "sid-a".into(),
            at: NOW + 100,
            until: at + 5000,
        }],
        ..Cutoffs::default()
    };
    let mut cut = Gate::new(config_with(LAPSED, signed_out));
    assert_eq!(cut.on_request(&request(Some(&token), None), at), expired());
    // The same lapsed cookie under the first configuration: renewed.
    let mut on = Gate::new(config());
    renew(on.on_request(&request(Some(&token), None), at));
}

#[test]
fn a_stopped_pod_loaded_from_a_tab_left_idle_is_woken_on_the_fresh_capability() {
    let config = super::tests::config_with(|c| {
        c.wake = true;
        c.renewal = Some(renewal_with(LAPSED));
    });
    let page_load = |cookie: &str| {
        crate::wire::encode_header_map(&[
            (
                ":authority".to_owned(),
                b"localhost-8726-pod-sleepy.example.dev".to_vec(),
            ),
            (":path".to_owned(), b"/".to_vec()),
            (":method".to_owned(), b"GET".to_vec()),
            ("sec-fetch-mode".to_owned(), b"navigate".to_vec()),
            ("accept".to_owned(), b"text/html".to_vec()),
            (
                "cookie".to_owned(),
                format!("{COOKIE}={cookie}").into_bytes(),
            ),
        ])
    };
    let mut gate = Gate::new(config);
    let old = cap_for("sleepy", NOW, Some("sid-a"));
    let at = LAPSES + 60;
    let wait = renew(gate.on_request(&page_load(&old), at));
    let fresh = cap_for("sleepy", at, Some("sid-a"));
    let (body, _) = answer(&fresh);
    assert!(matches!(
        gate.renewed(&wait.old, 200, &body, at),
        renewal::Renewed::Fresh { .. }
    ));
    // Decided again: the pod is stopped, so it is woken, with the fresh capability.
    let Outcome::Wake { call, .. } = gate.on_request(&page_load(&old), at + 1) else {
        panic!("not woken");
    };
    assert_eq!(call.pod, "sleepy");
    let bearer = format!("Bearer {fresh}");
    assert!(call
        .headers
        .iter()
        .any(|(n, v)| n == "authorization" && *v == bearer));
}

#[test]
fn lapsed_cookies_a_sibling_planted_for_its_own_host_cost_no_signature() {
    // A sibling pod's page plants two genuine lapsed capabilities of its own host under our
    // cookie name, after the real one (so they are tried first): they are passed over without
    // a signature, and the real one is renewed.
    let mut gate = Gate::new(config());
    let real = cap_for("alpha", NOW, Some("sid-a"));
    let planted = [
        cap_for("beta", NOW, Some("sid-b")),
        cap_for("beta", NOW + 1, Some("sid-b")),
    ];
    let wire = crate::wire::encode_header_map(&[
        (":authority".to_owned(), HOST.as_bytes().to_vec()),
        (":path".to_owned(), b"/api/data".to_vec()),
        (":method".to_owned(), b"GET".to_vec()),
        (
            "cookie".to_owned(),
            format!(
                "{COOKIE}={real}; {COOKIE}={}; {COOKIE}={}",
                planted[0], planted[1]
            )
            .into_bytes(),
        ),
    ]);
    let checks = gate.cache().verifications();
    let wait = renew(gate.on_request(&wire, LAPSES + 60));
    assert_eq!(wait.old.token.as_ref().unwrap().as_str(), real);
    assert_eq!(gate.cache().verifications(), checks + 1);
}

#[test]
fn userinfo_on_a_lapsed_cookie_waits_for_its_renewal_and_hands_on_the_fresh_cookie() {
    // A tab left idle asks "who am I" first: it waits for the renewal as any other request of
    // it would, instead of a 401 that would show a live session as signed out.
    let old = cap_for("alpha", NOW, Some("sid-a"));
    let userinfo = |cookie: &str| {
        crate::wire::encode_header_map(&[
            (":authority".to_owned(), HOST.as_bytes().to_vec()),
            (":path".to_owned(), b"/.podgate/userinfo".to_vec()),
            (":method".to_owned(), b"GET".to_vec()),
            (
                "cookie".to_owned(),
                format!("{COOKIE}={cookie}").into_bytes(),
            ),
        ])
    };
    let mut gate = Gate::new(config());
    let at = LAPSES + 600;
    let wait = renew(gate.on_request(&userinfo(&old), at));
    assert_eq!(wait.old.sid.as_deref(), Some("sid-a"));
    assert_eq!(wait.otherwise, expired(), "without a renewal: the 401");
    let fresh = cap_for("alpha", at, Some("sid-a"));
    let (body, set_cookie) = answer(&fresh);
    assert!(matches!(
        gate.renewed(&wait.old, 200, &body, at),
        renewal::Renewed::Fresh { .. }
    ));
    let Outcome::Answer(reply) = gate.on_request(&userinfo(&old), at + 1) else {
        panic!("not answered");
    };
    assert_eq!(reply.status, 200, "{reply:?}");
    let info: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(info["user"], "alice");
    assert_eq!(info["expires_at"], at + 900);
    assert!(reply
        .headers
        .iter()
        .any(|(n, v)| *n == "set-cookie" && *v == set_cookie));
    // Without a session id, nothing to renew: the 401.
    let no_sid = cap_for("alpha", NOW, None);
    assert_eq!(gate.on_request(&userinfo(&no_sid), at), expired());
}
