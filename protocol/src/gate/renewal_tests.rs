//! Native tests of renewal at the edge: when a capability needs renewing (`renewal::renew_at`,
//! `renewal::due`, through a `Gate`, memoized or not), what the renew call carries, and which
//! answers of the control plane the filter hands out (`renewal::judge`).

use std::rc::Rc;

use super::*;
use crate::cutoff::{Cutoffs, SessionCut};
use crate::renewal::{RenewAnswer, Renewal, RENEW_SECRET_HEADER};
use crate::token::tests::{claims, ed_key, NOW};
use crate::token::{mint_in_session, mint_scoped, PodClaims, TokenKind};

const HOST: &str = "localhost-8726-pod-alpha.example.dev";
const SECRET: &str = "0123456789abcdef0123456789abcdef";
const COOKIE: &str = "__Host-podgate_cap";

fn renewal() -> Renewal {
    Renewal {
        url: "https://podgate.example.dev/api/proxy-renew".into(),
        secret: SECRET.into(),
        before_secs: 300,
        timeout_ms: 1000,
        lapsed_secs: 0,
    }
}

fn config_with(renewal: Option<Renewal>, cutoffs: Cutoffs) -> Rc<CompiledConfig> {
    super::tests::config_with(|c| {
        c.renewal = renewal;
        c.cutoffs = cutoffs;
    })
}

fn config() -> Rc<CompiledConfig> {
    config_with(Some(renewal()), Cutoffs::default())
}

/// A capability for `pod`:8726 for `sub`, issued at `iat` for 900 s, in session `sid`.
pub(super) fn cap_for(sub: &str, pod: &str, iat: i64, sid: Option<&str>) -> String {
    let c = PodClaims {
        sub: sub.into(),
        aud: format!("localhost-8726-pod-{pod}.example.dev"),
        pod: pod.into(),
        jti: format!("{sub}-{pod}-{iat}"),
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

fn cap(iat: i64, sid: Option<&str>) -> String {
    cap_for("alice", "alpha", iat, sid)
}

fn request(cookie: Option<&str>, token_header: Option<&str>) -> Vec<u8> {
    let mut h = vec![
        (":authority".to_owned(), HOST.as_bytes().to_vec()),
        (":path".to_owned(), b"/".to_vec()),
        (":method".to_owned(), b"GET".to_vec()),
    ];
    if let Some(c) = cookie {
        h.push(("cookie".to_owned(), format!("{COOKIE}={c}").into_bytes()));
    }
    if let Some(t) = token_header {
        h.push(("podgate-token".to_owned(), t.as_bytes().to_vec()));
    }
    crate::wire::encode_header_map(&h)
}

fn forward(outcome: Outcome) -> Rc<Forward> {
    match outcome {
        Outcome::Forward(f) => f,
        other => panic!("not forwarded: {other:?}"),
    }
}

fn verified(config: &CompiledConfig, token: &str) -> Verified {
    config.verifier.verify(token, NOW).unwrap()
}

fn answer(token: &str, set_cookie: &str) -> Vec<u8> {
    serde_json::to_vec(&RenewAnswer {
        token: token.into(),
        set_cookie: set_cookie.into(),
    })
    .unwrap()
}

fn cookie_of(token: &str) -> String {
    format!("{COOKIE}={token}; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=900")
}

#[test]
fn a_session_cookie_is_renewed_in_the_last_part_of_its_life_memoized_or_not() {
    let token = cap(NOW, Some("sid-a"));
    let mut gate = Gate::new(config());
    // Twice: the second is a memo hit, which carries the same moment.
    for _ in 0..2 {
        let f = forward(gate.on_request(&request(Some(&token), None), NOW + 1));
        assert_eq!(f.renew_at, Some(NOW + 900 - 300));
        assert!(!renewal::due(f.renew_at, NOW + 1));
        assert!(!renewal::due(f.renew_at, NOW + 599));
        assert!(renewal::due(f.renew_at, NOW + 600));
        assert!(renewal::due(f.renew_at, NOW + 900));
    }
}

#[test]
fn header_tokens_tokens_without_a_session_and_a_configuration_without_renewal_are_never_renewed() {
    let with_sid = cap(NOW, Some("sid-a"));
    let without = cap(NOW, None);
    let mut gate = Gate::new(config());
    let f = forward(gate.on_request(&request(None, Some(&with_sid)), NOW + 700));
    assert_eq!(f.renew_at, None, "a script's header token");
    let f = forward(gate.on_request(&request(Some(&without), None), NOW + 700));
    assert_eq!(f.renew_at, None, "no session bounds it");
    assert!(!renewal::due(None, i64::MAX));
    let mut off = Gate::new(config_with(None, Cutoffs::default()));
    let f = forward(off.on_request(&request(Some(&with_sid), None), NOW + 700));
    assert_eq!(f.renew_at, None, "renewal off");
    assert!(off.renewal_call(f.capability.as_ref().unwrap()).is_none());
}

#[test]
fn the_renew_call_carries_the_secret_and_the_old_capability_to_the_control_plane() {
    let token = cap(NOW, Some("sid-a"));
    let mut gate = Gate::new(config());
    let f = forward(gate.on_request(&request(Some(&token), None), NOW + 700));
    let call = gate.renewal_call(f.capability.as_ref().unwrap()).unwrap();
    assert_eq!(call.cluster, "podgate_control_plane");
    assert_eq!(call.timeout_ms, 1000);
    let headers = call.headers;
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get(":method"), Some("POST"));
    assert_eq!(get(":path"), Some("/api/proxy-renew"));
    assert_eq!(get(":authority"), Some("podgate.example.dev"));
    assert_eq!(get(RENEW_SECRET_HEADER), Some(SECRET));
    assert_eq!(
        get("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    // Neither the secret nor a token is ever in a debug line, the whole configuration's
    // included.
    let printed = format!("{:?} {:?}", gate.config().unwrap(), f);
    assert!(!printed.contains(SECRET), "{printed}");
    assert!(!printed.contains(&token), "{printed}");
}

#[test]
fn a_fresh_capability_of_the_same_session_and_scope_is_handed_out_and_cached() {
    let config = config();
    let old = verified(&config, &cap(NOW, Some("sid-a")));
    let fresh = cap(NOW + 700, Some("sid-a"));
    let mut gate = Gate::new(Rc::clone(&config));
    let renewed = gate.renewed(&old, 200, &answer(&fresh, &cookie_of(&fresh)), NOW + 700);
    let Renewed::Fresh {
        capability,
        set_cookie,
    } = renewed
    else {
        panic!("{renewed:?}")
    };
    assert_eq!(capability.expires_at, NOW + 700 + 900);
    assert_eq!(&*set_cookie, cookie_of(&fresh));
    // The browser's next request with it is a cache hit: no signature check.
    let before = gate.stats();
    let f = forward(gate.on_request(&request(Some(&fresh), None), NOW + 701));
    assert_eq!(f.expires_at, Some(NOW + 1600));
    assert_eq!(gate.stats().0, before.0 + 1);
}

#[test]
fn a_refusal_stops_renewal_and_a_failure_or_anything_doubtful_keeps_the_old_capability() {
    let config = config();
    let old = verified(&config, &cap(NOW, Some("sid-a")));
    let fresh = cap(NOW + 700, Some("sid-a"));
    let good = cookie_of(&fresh);
    let judge =
        |status, body: &[u8]| renewal::judge(config.in_force(), &old, status, body, NOW + 700);
    assert_eq!(judge(401, b""), Renewed::Refused);
    // The call failed (0), the control plane failed or refused the secret (a
    // misconfiguration), or its answer is not what it must be.
    for status in [0, 403, 404, 500, 502, 503, 429] {
        assert_eq!(judge(status, &answer(&fresh, &good)), Renewed::Failed);
    }
    let another_session = cap(NOW + 700, Some("sid-b"));
    let no_session = cap(NOW + 700, None);
    let another_user = cap_for("mallory", "alpha", NOW + 700, Some("sid-a"));
    let another_pod = cap_for("alice", "beta", NOW + 700, Some("sid-a"));
    let older = cap(NOW - 10, Some("sid-a"));
    let a_resource = mint_scoped(
        TokenKind::Capability,
        &ed_key(TokenKind::Capability, 1),
        &PodClaims {
            sub: "alice".into(),
            aud: HOST.into(),
            pod: "alpha".into(),
            jti: "with-a-resource".into(),
            ..claims()
        },
        Some("sid-a"),
        Some("/sessions/a1"),
        NOW + 700,
        900,
    )
    .unwrap();
    for token in [
        &another_session,
        &no_session,
        &another_user,
        &another_pod,
        &older,
        &a_resource,
    ] {
        assert_eq!(
            judge(200, &answer(token, &cookie_of(token))),
            Renewed::Failed
        );
    }
    let doubtful = [
        // Not signed by our key.
        answer(&format!("{fresh}x"), &cookie_of(&format!("{fresh}x"))),
        // A cookie for another domain, another token, another name, two lines.
        answer(&fresh, &format!("{good}; Domain=example.dev")),
        answer(&fresh, &cookie_of(&another_session)),
        answer(&fresh, &good.replace(COOKIE, "podgate_cap")),
        answer(&fresh, &format!("{good}\r\nSet-Cookie: x=y")),
        b"{}".to_vec(),
        b"not json".to_vec(),
    ];
    for body in doubtful {
        assert_eq!(
            judge(200, &body),
            Renewed::Failed,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    assert!(matches!(
        judge(200, &answer(&fresh, &good)),
        Renewed::Fresh { .. }
    ));
}

#[test]
fn a_fresh_capability_the_configuration_cuts_off_is_not_handed_out() {
    let config = config_with(
        Some(renewal()),
        Cutoffs {
            sessions: vec![SessionCut {
                sid: "sid-a".into(),
                at: NOW + 800,
                until: NOW + 2000,
            }],
            ..Cutoffs::default()
        },
    );
    let old = verified(&config, &cap(NOW, Some("sid-a")));
    let fresh = cap(NOW + 700, Some("sid-a"));
    let renewed = renewal::judge(
        config.in_force(),
        &old,
        200,
        &answer(&fresh, &cookie_of(&fresh)),
        NOW + 801,
    );
    assert_eq!(renewed, Renewed::Failed);
}

#[test]
fn a_renewal_section_that_is_unsafe_or_malformed_is_refused() {
    let bad = [
        Renewal {
            secret: "short".into(),
            ..renewal()
        },
        Renewal {
            secret: format!("{SECRET}\r\nx: y"),
            ..renewal()
        },
        Renewal {
            url: "podgate.example.dev/api/proxy-renew".into(),
            ..renewal()
        },
        Renewal {
            url: "https://podgate.example.dev".into(),
            ..renewal()
        },
        Renewal {
            url: "https://podgate.example.dev/api/proxy-renew?x=1".into(),
            ..renewal()
        },
        Renewal {
            before_secs: 0,
            ..renewal()
        },
        Renewal {
            timeout_ms: 0,
            ..renewal()
        },
        Renewal {
            lapsed_secs: -1,
            ..renewal()
        },
        Renewal {
            lapsed_secs: crate::renewal::MAX_LAPSED_SECS + 1,
            ..renewal()
        },
    ];
    for r in bad {
        assert!(r.clone().compile().is_err(), "{r:?}");
    }
    assert!(renewal().compile().is_ok());
}
