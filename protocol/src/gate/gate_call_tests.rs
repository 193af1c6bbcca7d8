//! Native tests of the gate as the filter calls it: preflights, configuration, host failures,
//! responses.

use std::rc::Rc;

use super::*;
use crate::config::FilterConfig;
use crate::config::PodStatus;
use crate::response::PodResponse;
use crate::token::tests::{claims, NOW};
use crate::token::{mint, SigningKey, TokenError, TokenKind};

use super::tests::{base, cap, config, config_with, headers, Headers, HOST};

// ---- the gate as the filter calls it: preflight, configuration, host failures, responses ----

/// `h` serialized as Envoy hands it over, through `gate` at `NOW + 1`.
fn outcome(gate: &mut Gate, h: &[(String, Vec<u8>)]) -> Outcome {
    gate.on_request(&crate::wire::encode_header_map(h), NOW + 1)
}

#[test]
fn the_gate_answers_a_preflight_before_deciding_and_never_forwards_it() {
    let c = config();
    let mut gate = Gate::new(Rc::clone(&c));
    let own = "https://localhost-8727-pod-alpha.example.dev";
    let preflight = |origin: &str, extra: &[(&str, &str)]| {
        let mut h: Headers = base(extra)
            .into_iter()
            .filter(|(n, _)| n != ":method")
            .collect();
        h.extend(headers(&[
            (":method", "OPTIONS"),
            ("origin", origin),
            ("access-control-request-method", "PUT"),
        ]));
        h
    };
    let cookie = format!("__Host-podgate_cap={}", cap());
    // With and without a valid capability: a preflight is never a forward, even one whose
    // other headers would be forwarded.
    for extra in [vec![], vec![("cookie", cookie.as_str())]] {
        for _ in 0..2 {
            match outcome(&mut gate, &preflight(own, &extra)) {
                Outcome::Preflight(reply) => {
                    assert_eq!(reply.status, 204);
                    assert!(reply
                        .headers
                        .iter()
                        .any(|(n, v)| *n == "access-control-allow-origin" && v == own));
                }
                other => panic!("{extra:?}: {other:?}"),
            }
        }
        let beta = "https://localhost-8726-pod-beta.example.dev";
        assert_eq!(
            outcome(&mut gate, &preflight(beta, &extra)),
            Outcome::Deny(Denial::CrossOriginPreflight)
        );
        let mut bad = preflight(own, &extra);
        bad.retain(|(n, _)| n != "access-control-request-method");
        bad.push(("access-control-request-method".into(), b"P U T".to_vec()));
        assert_eq!(
            outcome(&mut gate, &bad),
            Outcome::Deny(Denial::BadPreflight)
        );
    }
    assert!(gate.memo().is_empty(), "a preflight was memoized");
    // The same OPTIONS without `Access-Control-Request-Method` is an ordinary request.
    let mut plain = preflight(own, &[("cookie", cookie.as_str())]);
    plain.retain(|(n, _)| n != "access-control-request-method");
    assert!(matches!(outcome(&mut gate, &plain), Outcome::Forward(_)));
}

#[test]
fn an_unconfigured_gate_refuses_every_request_and_every_response() {
    let mut gate = Gate::default();
    assert!(gate.config().is_none());
    let h = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    assert_eq!(outcome(&mut gate, &h), Outcome::Deny(Denial::NotConfigured));
    let reply = Denial::NotConfigured.reply();
    assert_eq!((reply.status, reply.reason), (500, "not_configured"));
    let pod = PodResponse::new(HOST, None);
    assert_eq!(
        gate.on_response(&pod, &crate::wire::encode_header_map(&[(":status", "200")])),
        Err(ResponseFailure::NotConfigured)
    );
}

#[test]
fn a_header_map_that_does_not_decode_is_a_host_error_and_nothing_is_forwarded() {
    let c = config();
    let mut gate = Gate::new(Rc::clone(&c));
    let h = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    let wire = crate::wire::encode_header_map(&h);
    // Memoized first: a broken copy of the same map must not be served its forward.
    assert!(matches!(
        gate.on_request(&wire, NOW + 1),
        Outcome::Forward(_)
    ));
    assert_eq!(gate.memo().len(), 1);
    // Cut inside the last value (the NUL after it is not needed to read it), cut after the
    // count, a count with nothing behind it, not even a whole count.
    let mut broken = vec![
        wire[..wire.len() - 2].to_vec(),
        wire[..4].to_vec(),
        b"\x05\x00\x00\x00".to_vec(),
        b"\x01".to_vec(),
    ];
    // A count that promises more headers than there are.
    let mut more = wire.clone();
    more[0] = more[0].wrapping_add(1);
    broken.push(more);
    for bytes in &broken {
        assert_eq!(
            gate.on_request(bytes, NOW + 1),
            Outcome::Deny(Denial::HostCallFailed),
            "{bytes:?}"
        );
    }
    let reply = Denial::HostCallFailed.reply();
    assert_eq!((reply.status, reply.reason), (500, "host_error"));
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("internal"),
        "{body}"
    );
    assert!(reply
        .headers
        .iter()
        .any(|(n, v)| *n == "content-type" && v == "application/json"));
    assert!(!reply.headers.iter().any(|(n, _)| *n == "location"));
    assert!(Denial::ALL_REASONS.contains(&"host_error"));
    // The same map, whole, is still the memoized forward.
    assert!(matches!(
        gate.on_request(&wire, NOW + 1),
        Outcome::Forward(_)
    ));
}

#[test]
fn configure_forgets_every_decision_made_under_the_old_configuration() {
    let token = cap();
    let h = base(&[("cookie", &format!("__Host-podgate_cap={token}"))]);
    let mut gate = Gate::new(config());
    for _ in 0..2 {
        assert!(matches!(outcome(&mut gate, &h), Outcome::Forward(_)));
    }
    assert_eq!(gate.memo().len(), 1);
    assert_eq!(gate.cache().len(), 1);
    // The capability revoked, then the pod stopped: neither the memo nor the token cache
    // keeps the forward alive. The memo drops the revoked capability's forward; the verified
    // token stays (the keys did not change) and is found revoked.
    let jti = claims().jti;
    gate.configure(config_with(|c| c.revoked_jti = vec![jti.clone()]));
    assert!(gate.memo().is_empty());
    assert_eq!(gate.cache().len(), 1);
    assert!(matches!(
        outcome(&mut gate, &h),
        Outcome::Deny(Denial::InvalidCapability {
            reason: TokenError::Revoked,
            ..
        })
    ));
    gate.configure(config_with(|c| {
        c.pods.get_mut("alpha").unwrap().status = PodStatus::Stopped;
    }));
    assert_eq!(
        outcome(&mut gate, &h),
        Outcome::Deny(Denial::NotRunning(PodStatus::Stopped))
    );
    assert_eq!(gate.cache().verifications(), 1);
}

/// A push that leaves the capability keys and checks as they were (pods, revocations, cuts
/// changed) keeps the verified tokens: the next request makes no signature check. A push that
/// changes any of them starts the cache over, and what it says then is the new verifier's.
#[test]
fn a_push_keeps_the_verified_tokens_only_while_they_verify_the_same() {
    let token = cap();
    let h = base(&[("cookie", &format!("__Host-podgate_cap={token}"))]);
    // Our `kid`, another key: refused by its signature, and remembered as refused.
    let impostor = SigningKey::ed25519_from_seed(super::tests::key().kid(), [0x77; 32]).unwrap();
    let alpha = crate::token::PodClaims {
        aud: HOST.into(),
        pod: "alpha".into(),
        port: 8726,
        ..claims()
    };
    let forged = mint(TokenKind::Capability, &impostor, &alpha, NOW, 900).unwrap();
    let forged_h = base(&[("cookie", &format!("__Host-podgate_cap={forged}"))]);
    let mut gate = Gate::new(config());
    assert!(matches!(outcome(&mut gate, &h), Outcome::Forward(_)));
    assert!(matches!(outcome(&mut gate, &forged_h), Outcome::Deny(_)));
    assert_eq!(gate.cache().verifications(), 2);

    // Another pod: nothing is checked again (the forward is even kept in the memo).
    gate.configure(config_with(|c| {
        let beta = c.pods["beta"].clone();
        c.pods.insert("beta2".into(), beta);
    }));
    assert_eq!(gate.memo().len(), 1);
    assert!(matches!(outcome(&mut gate, &h), Outcome::Forward(_)));
    assert!(matches!(outcome(&mut gate, &forged_h), Outcome::Deny(_)));
    assert_eq!(gate.cache().verifications(), 2);

    // A cut (every capability issued until now) reaches the cached token without a signature
    // check.
    gate.configure(config_with(|c| c.cutoffs.issued_before = Some(NOW + 1)));
    assert!(matches!(
        outcome(&mut gate, &h),
        Outcome::Deny(Denial::InvalidCapability {
            reason: TokenError::Revoked,
            ..
        })
    ));
    assert_eq!(gate.cache().verifications(), 2);

    // Another kind's key beside ours changes nothing; a second key of ours does; the same two
    // keys listed the other way round do not.
    let ticket_key = crate::token::tests::ed_key(TokenKind::LoginTicket, 5);
    let second = crate::token::tests::ed_key(TokenKind::Capability, 6);
    for (keys, checked) in [
        (
            vec![
                ticket_key.verifying_jwk(),
                super::tests::key().verifying_jwk(),
            ],
            2,
        ),
        (
            vec![super::tests::key().verifying_jwk(), second.verifying_jwk()],
            3,
        ),
        (
            vec![second.verifying_jwk(), super::tests::key().verifying_jwk()],
            3,
        ),
    ] {
        gate.configure(config_with(|c| c.keys.keys = keys));
        assert!(matches!(outcome(&mut gate, &h), Outcome::Forward(_)));
        assert_eq!(gate.cache().verifications(), checked);
    }

    // The impostor's key in place of ours: the refusal remembered no longer holds, nor the
    // token verified.
    gate.configure(config_with(|c| {
        c.keys.keys = vec![impostor.verifying_jwk()]
    }));
    assert!(gate.cache().is_empty());
    assert!(matches!(outcome(&mut gate, &forged_h), Outcome::Forward(_)));
    assert!(matches!(outcome(&mut gate, &h), Outcome::Deny(_)));
    assert_eq!(gate.cache().verifications(), 5);

    // Each of these starts the cache over: the token is checked again, under the new rules.
    type Change = Box<dyn Fn(&mut FilterConfig)>;
    let changes: [(&str, bool, Change); 5] = [
        ("the key removed", false, Box::new(|c| c.keys.keys.clear())),
        (
            "another issuer",
            false,
            Box::new(|c| c.issuer = "https://other.example.dev".into()),
        ),
        ("another leeway", true, Box::new(|c| c.leeway_secs = 5)),
        (
            "a lifetime cap below the token's",
            false,
            Box::new(|c| c.max_capability_lifetime_secs = 60),
        ),
        (
            "another cache size",
            true,
            Box::new(|c| c.token_cache_entries = 8),
        ),
    ];
    for (what, still_valid, change) in changes {
        gate.configure(config());
        assert!(
            matches!(outcome(&mut gate, &h), Outcome::Forward(_)),
            "{what}"
        );
        let before = gate.cache().verifications();
        gate.configure(config_with(|c| change(c)));
        assert!(gate.cache().is_empty(), "{what}");
        let again = outcome(&mut gate, &h);
        assert_eq!(
            matches!(again, Outcome::Forward(_)),
            still_valid,
            "{what}: {again:?}"
        );
        // Removing the key leaves nothing to check the token with.
        let checked = u64::from(what != "the key removed");
        assert_eq!(gate.cache().verifications(), before + checked, "{what}");
    }
}

/// The identity assertion `gate` hands the pod with `h` at `NOW + 1`.
fn assertion_for(gate: &mut Gate, h: &[(String, Vec<u8>)]) -> Rc<str> {
    match outcome(gate, h) {
        Outcome::Forward(forward) => gate.assertion(&forward, NOW + 1).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_push_keeps_the_identity_assertions_only_while_the_same_key_signs_them() {
    let h = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    let ast = |seed: u8| SigningKey::ed25519_from_seed(format!("ast-{seed}"), [seed; 32]).unwrap();
    let signing = |key: &SigningKey, lifetime_secs: i64| {
        let key = key.to_private_jwk();
        move |c: &mut FilterConfig| {
            c.assertion = Some(crate::assertion::Assertion {
                key: key.clone(),
                lifetime_secs,
            })
        }
    };
    let mut gate = Gate::new(config_with(signing(&ast(1), 60)));
    let first = assertion_for(&mut gate, &h);
    assert_eq!(gate.assertions_signed(), 1);
    // The private key is in no debug line.
    let private = ast(1).to_private_jwk().d.unwrap();
    let printed = format!("{:?}", gate.config().unwrap());
    assert!(
        printed.contains("ast-1") && !printed.contains(&private),
        "{printed}"
    );

    // Another pod, a revocation of some other capability: the pod gets the very value signed
    // before; nothing is signed again.
    gate.configure(config_with(|c| {
        signing(&ast(1), 60)(c);
        let beta = c.pods["beta"].clone();
        c.pods.insert("beta2".into(), beta);
        c.revoked_jti.push("someone-else".into());
    }));
    assert!(Rc::ptr_eq(&assertion_for(&mut gate, &h), &first));
    assert_eq!(gate.assertions_signed(), 1);

    // Each of these signs again: another key (a rotation), another lifetime, another cache
    // size, assertions turned off and on again.
    type Change<'a> = Box<dyn Fn(&mut FilterConfig) + 'a>;
    let changes: [(&str, Vec<Change>); 4] = [
        ("another key", vec![Box::new(signing(&ast(2), 60))]),
        ("another lifetime", vec![Box::new(signing(&ast(1), 120))]),
        (
            "another cache size",
            vec![Box::new(|c| {
                signing(&ast(1), 60)(c);
                c.token_cache_entries = 8;
            })],
        ),
        (
            "off and on",
            vec![
                Box::new(|c| c.assertion = None),
                Box::new(signing(&ast(1), 60)),
            ],
        ),
    ];
    for (what, steps) in changes {
        gate.configure(config_with(signing(&ast(1), 60)));
        let before = assertion_for(&mut gate, &h);
        let signed = gate.assertions_signed();
        for step in steps {
            gate.configure(config_with(|c| step(c)));
        }
        let again = assertion_for(&mut gate, &h);
        assert!(!Rc::ptr_eq(&again, &before), "{what}");
        assert_eq!(gate.assertions_signed(), signed + 1, "{what}");
    }
}

#[test]
fn the_gate_sanitizes_the_response_of_a_forward_it_made() {
    let c = config();
    let mut gate = Gate::new(Rc::clone(&c));
    let h = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    let Outcome::Forward(forward) = outcome(&mut gate, &h) else {
        panic!("not forwarded");
    };
    let pod = forward.response.as_ref().expect("a pod forward");
    let response = crate::wire::encode_header_map(&[
        (":status", "200"),
        ("set-cookie", "__Host-podgate_cap=forged; Path=/"),
        ("set-cookie", "theme=dark; Path=/"),
        ("access-control-allow-origin", "*"),
    ]);
    let sanitized = gate.on_response(pod, &response).unwrap();
    assert_eq!(
        sanitized.dropped_cookies,
        [crate::set_cookie::Refusal::OurName]
    );
    assert_eq!(sanitized.stripped_cors, 1);
    assert!(!sanitized.edits.is_empty());
    // What the filter would hand Envoy is exactly `response::sanitize` on the decoded map.
    let decoded = crate::wire::decode_header_map(&response).unwrap();
    assert_eq!(
        sanitized,
        crate::response::sanitize(&c, pod, decoded.iter().copied())
    );
    assert_eq!(
        gate.on_response(pod, &response[..response.len() - 2]),
        Err(ResponseFailure::Wire(crate::wire::WireError::Truncated))
    );
}
