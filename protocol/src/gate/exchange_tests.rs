//! Native tests of API tokens at the edge through a `Gate`: a request with an API token waits
//! for an exchange, the control plane's answer is judged and remembered, and the request
//! decided again is forwarded without the token, memoized like a capability's; refusals are
//! remembered; a revoked capability sends the token back to the control plane.

use std::rc::Rc;

use super::*;
use crate::cutoff::Cutoffs;
use crate::exchange::{ExchangeAnswer, EXCHANGE_PATH};
use crate::renewal::{Renewal, RENEW_SECRET_HEADER};
use crate::token::tests::{claims, ed_key, NOW};
use crate::token::{mint_in_session, PodClaims, TokenKind};

const HOST: &str = "localhost-8726-pod-alpha.example.dev";
const SECRET: &str = "0123456789abcdef0123456789abcdef";
const TOKEN: &str =
    "pg_0123456789abcdef01234567_abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst";

/// Renewal on in `c`, which API tokens at the edge need (the exchange URL and secret).
fn renewing(c: &mut crate::config::FilterConfig) {
    c.renewal = Some(Renewal {
        url: "https://podgate.example.dev/api/proxy-renew".into(),
        secret: SECRET.into(),
        before_secs: 300,
        timeout_ms: 1000,
        lapsed_secs: 0,
    });
}

fn config_with(renewal: bool, revoked: &[&str]) -> Rc<CompiledConfig> {
    super::tests::config_with(|c| {
        if renewal {
            renewing(c);
        }
        c.cutoffs = Cutoffs::default();
        c.revoked_jti = revoked.iter().map(|s| (*s).to_owned()).collect();
    })
}

/// A capability for `pod`:`port` for alice, without a session, as the exchange mints.
fn cap(pod: &str, port: u16, jti: &str) -> String {
    let c = PodClaims {
        sub: "alice".into(),
        aud: format!("localhost-{port}-pod-{pod}.example.dev"),
        pod: pod.into(),
        port,
        jti: jti.into(),
        ..claims()
    };
    mint_in_session(
        TokenKind::Capability,
        &ed_key(TokenKind::Capability, 1),
        &c,
        None,
        NOW,
        900,
    )
    .unwrap()
}

fn answer(token: &str) -> Vec<u8> {
    serde_json::to_vec(&ExchangeAnswer {
        token: token.into(),
    })
    .unwrap()
}

fn request(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut h = vec![
        (":authority", HOST),
        (":path", "/"),
        (":method", "GET"),
        ("cookie", "theme=dark"),
    ];
    h.extend_from_slice(extra);
    crate::wire::encode_header_map(&h)
}

fn bearer() -> Vec<u8> {
    request(&[("authorization", &format!("Bearer {TOKEN}"))])
}

fn needed(outcome: Outcome) -> Rc<crate::exchange::ExchangeNeeded> {
    match outcome {
        Outcome::Exchange(need) => need,
        other => panic!("no exchange: {other:?}"),
    }
}

fn denied(outcome: Outcome) -> Denial {
    match outcome {
        Outcome::Deny(d) => d,
        other => panic!("not denied: {other:?}"),
    }
}

#[test]
fn a_websocket_on_an_api_token_carries_the_exchange_that_renews_it() {
    let mut gate = Gate::new(config_with(true, &[]));
    let ws = request(&[
        ("authorization", &format!("Bearer {TOKEN}")),
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
    ]);
    let need = needed(gate.on_request(&ws, NOW));
    let first = cap("alpha", 8726, "x1");
    assert_eq!(
        gate.exchanged(&need, 200, None, &answer(&first), NOW),
        Ok(())
    );
    let Outcome::Forward(forward) = gate.on_request(&ws, NOW) else {
        panic!("not forwarded");
    };
    assert!(forward.websocket);
    let exchange = forward
        .exchange
        .as_ref()
        .expect("the exchange that renews it");
    assert_eq!(exchange.key, need.key);
    let expires = forward.expires_at.unwrap();
    assert_eq!(forward.renew_at, Some(expires - 300));
    // The exchange cache names the capability it lives on until the token is exchanged again,
    // then the fresh one.
    let held = gate.exchanged_capability(exchange, NOW).unwrap();
    assert_eq!(held.claims.jti, "x1");
    let fresh = cap("alpha", 8726, "x2");
    assert_eq!(
        gate.exchanged(exchange, 200, None, &answer(&fresh), NOW + 700),
        Ok(())
    );
    let renewed = gate.exchanged_capability(exchange, NOW + 700).unwrap();
    assert_eq!(renewed.claims.jti, "x2");
    // A plain request on the token carries none: it is exchanged again when it comes.
    let Outcome::Forward(plain) = gate.on_request(&bearer(), NOW + 700) else {
        panic!("not forwarded");
    };
    assert_eq!((plain.exchange.is_none(), plain.renew_at), (true, None));
    // Refused from then on (revoked): none.
    assert!(gate.exchanged(exchange, 401, None, b"", NOW + 701).is_err());
    assert_eq!(gate.exchanged_capability(exchange, NOW + 701), None);
}

#[test]
fn an_api_token_is_exchanged_then_forwarded_without_it_and_memoized() {
    for (name, wire) in [
        ("bearer", bearer()),
        ("podgate-token", request(&[("podgate-token", TOKEN)])),
    ] {
        let mut gate = Gate::new(config_with(true, &[]));
        let need = needed(gate.on_request(&wire, NOW));
        assert_eq!(need.pod.pod, "alpha");
        assert_eq!(need.pod.port, 8726);
        assert!(
            !format!("{need:?}").contains(TOKEN),
            "the token is never logged"
        );

        let call = gate.exchange_call(&need, Some("203.0.113.9")).unwrap();
        assert_eq!(call.cluster, "podgate_control_plane");
        let header = |n: &str| {
            call.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            header(":path"),
            Some(format!("{EXCHANGE_PATH}?pod=alpha&port=8726").as_str())
        );
        assert_eq!(header(":authority"), Some("podgate.example.dev"));
        assert_eq!(header(RENEW_SECRET_HEADER), Some(SECRET));
        assert_eq!(
            header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(header("podgate-client"), Some("203.0.113.9"));

        let body = answer(&cap("alpha", 8726, "x1"));
        assert_eq!(gate.exchanged(&need, 200, None, &body, NOW), Ok(()));
        let Outcome::Forward(forward) = gate.on_request(&wire, NOW) else {
            panic!("{name}: not forwarded");
        };
        assert_eq!(forward.user.as_deref(), Some("alice"));
        assert_eq!(forward.renew_at, None, "never renewed: exchanged again");
        let removed: Vec<&str> = forward
            .edits
            .iter()
            .filter_map(|e| match e {
                HeaderEdit::Remove(n) => Some(n.as_str()),
                HeaderEdit::Set(..) => None,
            })
            .collect();
        let stripped = if name == "bearer" {
            "authorization"
        } else {
            "podgate-token"
        };
        assert!(removed.contains(&stripped), "{name}: {removed:?}");
        for edit in &forward.edits {
            if let HeaderEdit::Set(_, v) = edit {
                assert!(
                    !v.contains(TOKEN),
                    "{name}: the token is set again: {edit:?}"
                );
            }
        }
        // The next request is a memo hit: no decode, no hash of the token.
        let (hits, _) = gate.stats();
        let again = gate.on_request(&wire, NOW);
        assert_eq!(again, Outcome::Forward(forward));
        assert_eq!(gate.stats().0, hits + 1);
    }
}

#[test]
fn refusals_are_remembered_and_answered_without_a_call() {
    let mut gate = Gate::new(config_with(true, &[]));
    let need = needed(gate.on_request(&bearer(), NOW));
    assert_eq!(
        gate.exchanged(&need, 401, None, b"{}", NOW),
        Err(Denial::ApiTokenRefused)
    );
    assert_eq!(
        denied(gate.on_request(&bearer(), NOW)),
        Denial::ApiTokenRefused
    );
    assert_eq!(
        denied(gate.on_request(&bearer(), NOW + crate::exchange::REFUSED_TTL_SECS - 1)),
        Denial::ApiTokenRefused
    );
    // After the refusal's short life the control plane is asked again.
    needed(gate.on_request(&bearer(), NOW + crate::exchange::REFUSED_TTL_SECS));

    let need = needed(gate.on_request(&bearer(), NOW + 10));
    assert_eq!(
        gate.exchanged(&need, 404, None, b"{}", NOW + 10),
        Err(Denial::ApiTokenNotAllowed)
    );
    assert_eq!(
        denied(gate.on_request(&bearer(), NOW + 10)),
        Denial::ApiTokenNotAllowed
    );
    assert_eq!(Denial::ApiTokenNotAllowed.reply().status, 403);
}

#[test]
fn a_malformed_api_token_is_refused_without_a_call() {
    let mut gate = Gate::new(config_with(true, &[]));
    let short = format!("Bearer {}", &TOKEN[..TOKEN.len() - 2]);
    let d = denied(gate.on_request(&request(&[("authorization", &short)]), NOW));
    assert_eq!(d, Denial::ApiTokenRefused);
    let reply = d.reply();
    assert_eq!(reply.status, 401);
    assert!(reply.body.contains("API token"), "{}", reply.body);
}

#[test]
fn a_busy_or_failed_exchange_fails_closed_and_is_not_remembered() {
    let mut gate = Gate::new(config_with(true, &[]));
    let need = needed(gate.on_request(&bearer(), NOW));
    assert_eq!(
        gate.exchanged(&need, 429, Some(7), b"", NOW),
        Err(Denial::ExchangeBusy(7))
    );
    let reply = Denial::ExchangeBusy(7).reply();
    assert_eq!(reply.status, 429);
    assert!(reply.headers.contains(&("retry-after", "7".to_owned())));
    let fresh = cap("alpha", 8726, "x1");
    let wrong_port = cap("alpha", 8727, "x2");
    for (status, body) in [
        (0, Vec::new()),
        (403, Vec::new()),
        (500, Vec::new()),
        (200, b"not json".to_vec()),
        (200, answer("eyJhbGciOiJFZERTQSJ9.e30.AAAA")),
        // A capability for another port is never taken.
        (200, answer(&wrong_port)),
    ] {
        let need = needed(gate.on_request(&bearer(), NOW));
        assert_eq!(
            gate.exchanged(&need, status, None, &body, NOW),
            Err(Denial::ExchangeFailed),
            "{status}"
        );
        assert_eq!(Denial::ExchangeFailed.reply().status, 503);
    }
    let need = needed(gate.on_request(&bearer(), NOW));
    assert_eq!(
        gate.exchanged(&need, 200, None, &answer(&fresh), NOW),
        Ok(())
    );
}

#[test]
fn a_revoked_capability_sends_the_token_back_to_the_control_plane() {
    let mut gate = Gate::new(config_with(true, &[]));
    let need = needed(gate.on_request(&bearer(), NOW));
    let body = answer(&cap("alpha", 8726, "x1"));
    gate.exchanged(&need, 200, None, &body, NOW).unwrap();
    assert!(matches!(
        gate.on_request(&bearer(), NOW),
        Outcome::Forward(_)
    ));
    // A push revokes it: the memo and the caches start over, and the token is exchanged
    // again (the control plane refuses a revoked token).
    gate.configure(config_with(true, &["x1"]));
    let need = needed(gate.on_request(&bearer(), NOW));
    // A capability the configuration in force revokes is not taken either.
    assert_eq!(
        gate.exchanged(&need, 200, None, &body, NOW),
        Err(Denial::ExchangeFailed)
    );
    gate.exchanged(&need, 401, None, b"", NOW).unwrap_err();
    assert_eq!(
        denied(gate.on_request(&bearer(), NOW)),
        Denial::ApiTokenRefused
    );
}

#[test]
fn without_exchanges_an_api_token_is_no_credential() {
    let mut gate = Gate::new(config_with(false, &[]));
    let d = denied(gate.on_request(&bearer(), NOW));
    assert!(matches!(d, Denial::NoCapability { .. }), "{d:?}");
    assert!(gate
        .exchange_call(
            &crate::exchange::ExchangeNeeded {
                key: [0; 32],
                token: TOKEN.into(),
                pod: crate::host::PodAddr {
                    pod: "alpha".into(),
                    port: 8726
                },
                resource: None,
            },
            None
        )
        .is_none());
}

#[test]
fn another_users_pod_is_refused_by_the_control_plane_and_a_capability_elsewhere_not_taken() {
    let mut gate = Gate::new(config_with(true, &[]));
    let wire = crate::wire::encode_header_map(&[
        (":authority", "localhost-8726-pod-beta.example.dev"),
        (":path", "/"),
        (":method", "GET"),
        ("authorization", &format!("Bearer {TOKEN}")),
    ]);
    let need = needed(gate.on_request(&wire, NOW));
    assert_eq!(need.pod.pod, "beta");
    // A capability for alpha in answer to beta's exchange: refused.
    let body = answer(&cap("alpha", 8726, "x1"));
    assert_eq!(
        gate.exchanged(&need, 200, None, &body, NOW),
        Err(Denial::ExchangeFailed)
    );
    assert_ne!(need.key, needed(gate.on_request(&bearer(), NOW)).key);
}

#[test]
fn a_capability_sent_with_an_api_token_keeps_its_meaning() {
    let mut gate = Gate::new(config_with(true, &[]));
    let capability = cap("alpha", 8726, "c1");
    let with_both = request(&[
        ("podgate-token", &capability),
        ("authorization", &format!("Bearer {TOKEN}")),
    ]);
    let Outcome::Forward(forward) = gate.on_request(&with_both, NOW) else {
        panic!("the capability did not decide");
    };
    assert!(forward
        .edits
        .contains(&HeaderEdit::Remove("authorization".into())));
    // A capability for elsewhere, or a refused one: the API token decides.
    let elsewhere = cap("beta", 8726, "c2");
    for other in [elsewhere.as_str(), "eyJhbGciOiJFZERTQSJ9.e30.AAAA"] {
        let wire = request(&[
            ("podgate-token", other),
            ("authorization", &format!("Bearer {TOKEN}")),
        ]);
        needed(gate.on_request(&wire, NOW));
    }
}

#[test]
fn a_push_keeps_exchanged_tokens_and_checks_them_under_the_new_keys() {
    let mut gate = Gate::new(config_with(true, &[]));
    let need = needed(gate.on_request(&bearer(), NOW));
    let body = answer(&cap("alpha", 8726, "x1"));
    gate.exchanged(&need, 200, None, &body, NOW).unwrap();
    // The same keys: no call after the push. A push that only adds a pod keeps no forward
    // of an API token in the memo: the grant is confirmed under the new configuration.
    assert!(matches!(
        gate.on_request(&bearer(), NOW),
        Outcome::Forward(_)
    ));
    assert_eq!(gate.memo().len(), 1);
    gate.configure(super::tests::config_with(|c| {
        renewing(c);
        let beta = c.pods["beta"].clone();
        c.pods.insert("beta2".into(), beta);
    }));
    assert!(gate.memo().is_empty());
    assert!(matches!(
        gate.on_request(&bearer(), NOW),
        Outcome::Forward(_)
    ));
    gate.configure(config_with(true, &[]));
    assert!(matches!(
        gate.on_request(&bearer(), NOW),
        Outcome::Forward(_)
    ));
    // The key that signed it is gone: exchanged again.
    gate.configure(super::tests::config_with(|c| {
        renewing(c);
        c.keys = crate::token::KeySet {
            keys: vec![ed_key(TokenKind::Capability, 2).verifying_jwk()],
        };
    }));
    needed(gate.on_request(&bearer(), NOW));
}

#[test]
fn userinfo_with_an_api_token_names_the_user_once_exchanged() {
    let mut gate = Gate::new(config_with(true, &[]));
    let wire = |path: &str, token: &str| {
        crate::wire::encode_header_map(&[
            (":authority", HOST),
            (":path", path),
            (":method", "GET"),
            ("authorization", &format!("Bearer {token}")),
        ])
    };
    let userinfo = wire(crate::own_paths::USERINFO_PATH, TOKEN);
    // Asked for the first time: the control plane is asked, as for a forward.
    let need = needed(gate.on_request(&userinfo, NOW));
    assert_eq!((need.pod.pod.as_str(), need.pod.port), ("alpha", 8726));
    let body = answer(&cap("alpha", 8726, "u1"));
    assert_eq!(gate.exchanged(&need, 200, None, &body, NOW), Ok(()));
    let Outcome::Answer(reply) = gate.on_request(&userinfo, NOW) else {
        panic!("not answered by the filter");
    };
    assert_eq!(reply.status, 200);
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(json["user"], "alice");
    assert_eq!(
        (json["pod"].as_str(), json["port"].as_u64()),
        (Some("alpha"), Some(8726))
    );
    assert!(!reply.body.contains(TOKEN));
    // Beside a capability that no longer grants (signed out: revoked), the token answers, as
    // it would let a forward through.
    let mut gate = Gate::new(config_with(true, &["gone"]));
    let need = needed(gate.on_request(&userinfo, NOW));
    assert_eq!(gate.exchanged(&need, 200, None, &body, NOW), Ok(()));
    let with_cookie = crate::wire::encode_header_map(&[
        (":authority", HOST),
        (":path", crate::own_paths::USERINFO_PATH),
        (":method", "GET"),
        ("podgate-token", TOKEN),
        (
            "authorization",
            &format!("Bearer {}", cap("alpha", 8726, "gone")),
        ),
    ]);
    let Outcome::Answer(reply) = gate.on_request(&with_cookie, NOW) else {
        panic!("not answered by the filter");
    };
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("alice"), "{}", reply.body);

    // A refused token: 401, remembered, never a redirect.
    let other = "pg_abcdef0123456789abcdef01_abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst";
    let need = needed(gate.on_request(&wire(crate::own_paths::USERINFO_PATH, other), NOW));
    assert_eq!(
        gate.exchanged(&need, 401, None, b"{}", NOW),
        Err(Denial::ApiTokenRefused)
    );
    assert_eq!(
        denied(gate.on_request(&wire(crate::own_paths::USERINFO_PATH, other), NOW)),
        Denial::ApiTokenRefused
    );
}
