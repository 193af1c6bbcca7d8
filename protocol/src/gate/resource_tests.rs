//! Native tests of services reached per resource through a `Gate`: a capability names one
//! resource and opens only paths under it; a browser holding another resource's is sent to get
//! this one's; other and ambiguous paths are refused whoever asks; decisions are not memoized
//! across paths; API tokens are exchanged per resource.

use std::rc::Rc;

use super::*;
use crate::config::CLUSTER_HEADER;
use crate::exchange::{ExchangeAnswer, EXCHANGE_PATH};
use crate::renewal::Renewal;
use crate::token::tests::{claims, ed_key, NOW};
use crate::token::{mint_scoped, PodClaims, TokenKind};

const SVC: &str = "svc-chat.example.dev";
const TOKEN: &str =
    "pg_0123456789abcdef01234567_abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst";

fn config(exchanges: bool) -> Rc<CompiledConfig> {
    super::tests::config_with(|c| {
        c.service_host_template = Some(crate::host::DEFAULT_SERVICE_TEMPLATE.into());
        c.services.insert(
            "chat".into(),
            crate::config::ServiceEntry {
                cluster: "service_chat".into(),
                host: "chat.internal".into(),
                credential: Some(crate::config::InjectedHeader {
                    name: "x-api-key".into(),
                    value: crate::config::SecretValue("sk-chat".into()),
                }),
                strip_headers: Vec::new(),
                resource_path: Some("/sessions/{id}".into()),
                credential_expires_at: None,
                fallback_credential: None,
            },
        );
        c.renewal = exchanges.then(|| Renewal {
            url: "https://podgate.example.dev/api/proxy-renew".into(),
            secret: "0123456789abcdef0123456789abcdef".into(),
            before_secs: 300,
            timeout_ms: 1000,
            lapsed_secs: 0,
        });
    })
}

/// alice's capability for service `chat`, for resource `res`.
fn cap(res: Option<&str>) -> String {
    let c = PodClaims {
        sub: "alice".into(),
        aud: SVC.into(),
        pod: "chat".into(),
        port: crate::host::SERVICE_PORT,
        ..claims()
    };
    mint_scoped(
        TokenKind::Capability,
        &ed_key(TokenKind::Capability, 1),
        &c,
        None,
        res,
        NOW,
        900,
    )
    .unwrap()
}

fn request(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut h = vec![(":authority", SVC), (":path", path), (":method", "GET")];
    h.extend_from_slice(extra);
    crate::wire::encode_header_map(&h)
}

fn with_cap(path: &str, token: &str) -> Vec<u8> {
    request(path, &[("podgate-token", token)])
}

fn forwarded(outcome: Outcome) -> Rc<Forward> {
    match outcome {
        Outcome::Forward(f) => f,
        other => panic!("not forwarded: {other:?}"),
    }
}

fn denied(outcome: Outcome) -> Denial {
    match outcome {
        Outcome::Deny(d) => d,
        other => panic!("not denied: {other:?}"),
    }
}

#[test]
fn a_capability_opens_its_resource_and_nothing_else() {
    let mut gate = Gate::new(config(false));
    let a1 = cap(Some("/sessions/a1"));
    for path in ["/sessions/a1", "/sessions/a1/", "/sessions/a1/events?x=1"] {
        let f = forwarded(gate.on_request(&with_cap(path, &a1), NOW));
        assert!(f.edits.contains(&HeaderEdit::Set(
            CLUSTER_HEADER.into(),
            "service_chat".into()
        )));
    }
    // Another resource, a path outside the pattern, a capability for the whole service.
    assert_eq!(
        denied(gate.on_request(&with_cap("/sessions/b1", &a1), NOW)),
        Denial::WrongResource
    );
    assert_eq!(
        denied(gate.on_request(&with_cap("/sessions/a10", &a1), NOW)),
        Denial::WrongResource
    );
    assert_eq!(
        denied(gate.on_request(&with_cap("/admin", &a1), NOW)),
        Denial::OutsideResources
    );
    // A capability for another host is, as ever, for another pod or port.
    let pod_cap = {
        let c = PodClaims {
            aud: "localhost-8726-pod-alpha.example.dev".into(),
            pod: "alpha".into(),
            port: 8726,
            ..claims()
        };
        mint_scoped(
            TokenKind::Capability,
            &ed_key(TokenKind::Capability, 1),
            &c,
            None,
            Some("/sessions/a1"),
            NOW,
            900,
        )
        .unwrap()
    };
    assert_eq!(
        denied(gate.on_request(&with_cap("/sessions/a1", &pod_cap), NOW)),
        Denial::WrongScope
    );
    assert_eq!(
        denied(gate.on_request(&with_cap("/sessions/a1", &cap(None)), NOW)),
        Denial::WrongResource
    );
}

#[test]
fn ambiguous_paths_are_refused_even_under_the_right_resource() {
    let mut gate = Gate::new(config(false));
    let a1 = cap(Some("/sessions/a1"));
    for path in [
        "/sessions/a1/../b1",
        "/sessions/a1/%2e%2e/b1",
        "/sessions/a1%2F..%2Fb1",
        "/sessions/a1/..;/b1",
        "/sessions//a1",
    ] {
        assert_eq!(
            denied(gate.on_request(&with_cap(path, &a1), NOW)),
            Denial::AmbiguousPath,
            "{path}"
        );
    }
}

#[test]
fn a_browser_with_another_resources_cookie_is_sent_to_get_this_one() {
    let mut gate = Gate::new(config(false));
    let cookie = format!("__Host-podgate_cap={}", cap(Some("/sessions/a1")));
    let wire = request(
        "/sessions/b1/x",
        &[("cookie", &cookie), ("sec-fetch-mode", "navigate")],
    );
    match gate.on_request(&wire, NOW) {
        Outcome::Deny(Denial::NoCapability {
            redirect: Some(url),
        }) => assert_eq!(
            url,
            "https://podgate.example.dev/api/proxy-auth?service=chat&next=/sessions/b1/x"
        ),
        other => panic!("{other:?}"),
    }
    // A script is told, not redirected.
    let wire = request("/sessions/b1/x", &[("cookie", &cookie)]);
    assert_eq!(denied(gate.on_request(&wire, NOW)), Denial::WrongResource);
}

#[test]
fn a_forward_for_one_resource_is_not_memoized_for_another() {
    // The same headers (one cookie) for two paths: the memo key has no path.
    let mut gate = Gate::new(config(false));
    let cookie = format!("__Host-podgate_cap={}", cap(Some("/sessions/a1")));
    let a1 = request("/sessions/a1", &[("cookie", &cookie)]);
    let b1 = request("/sessions/b1", &[("cookie", &cookie)]);
    forwarded(gate.on_request(&a1, NOW));
    forwarded(gate.on_request(&a1, NOW));
    assert_eq!(gate.memo().len(), 0);
    assert_eq!(denied(gate.on_request(&b1, NOW)), Denial::WrongResource);
}

#[test]
fn an_api_token_is_exchanged_per_resource() {
    let mut gate = Gate::new(config(true));
    let bearer = format!("Bearer {TOKEN}");
    let a1 = request("/sessions/a1/x", &[("authorization", &bearer)]);
    let b1 = request("/sessions/b1", &[("authorization", &bearer)]);
    let Outcome::Exchange(need) = gate.on_request(&a1, NOW) else {
        panic!("no exchange");
    };
    assert_eq!(need.resource.as_deref(), Some("/sessions/a1"));
    let call = gate.exchange_call(&need, None).unwrap();
    let path = call.headers.iter().find(|(k, _)| k == ":path").unwrap();
    assert_eq!(
        path.1,
        format!("{EXCHANGE_PATH}?service=chat&res=/sessions/a1")
    );
    // An answer for another resource is no answer.
    let wrong = serde_json::to_vec(&ExchangeAnswer {
        token: cap(Some("/sessions/b1")),
    })
    .unwrap();
    assert_eq!(
        gate.exchanged(&need, 200, None, &wrong, NOW),
        Err(Denial::ExchangeFailed)
    );
    let right = serde_json::to_vec(&ExchangeAnswer {
        token: cap(Some("/sessions/a1")),
    })
    .unwrap();
    assert_eq!(gate.exchanged(&need, 200, None, &right, NOW), Ok(()));
    forwarded(gate.on_request(&a1, NOW));
    // The grant for a1 is not found for b1: b1 needs its own exchange.
    let Outcome::Exchange(need_b) = gate.on_request(&b1, NOW) else {
        panic!("b1 reused a1's capability");
    };
    assert_eq!(need_b.resource.as_deref(), Some("/sessions/b1"));
    assert_ne!(need_b.key, need.key);
    // A path under no resource is exchanged for no resource (which the control plane refuses
    // on such a service), so the answer is that of a service that does not exist; were it
    // granted, the path is refused all the same.
    let bad = request("/sessions/a1/../b1", &[("authorization", &bearer)]);
    let Outcome::Exchange(need_none) = gate.on_request(&bad, NOW) else {
        panic!("not exchanged");
    };
    assert_eq!(need_none.resource, None);
    let whole = serde_json::to_vec(&ExchangeAnswer { token: cap(None) }).unwrap();
    assert_eq!(gate.exchanged(&need_none, 200, None, &whole, NOW), Ok(()));
    assert_eq!(denied(gate.on_request(&bad, NOW)), Denial::AmbiguousPath);
    let outside = request("/admin", &[("authorization", &bearer)]);
    assert_eq!(
        denied(gate.on_request(&outside, NOW)),
        Denial::OutsideResources
    );
}

#[test]
fn a_path_under_no_resource_is_refused_only_to_whoever_reaches_the_service() {
    // Without a capability for this service, the answers of a service that does not exist:
    // the refusal would tell that it exists and how it is reached.
    let mut gate = Gate::new(config(false));
    let other = {
        let c = PodClaims {
            aud: "svc-other.example.dev".into(),
            pod: "other".into(),
            port: crate::host::SERVICE_PORT,
            ..claims()
        };
        mint_scoped(
            TokenKind::Capability,
            &ed_key(TokenKind::Capability, 1),
            &c,
            None,
            None,
            NOW,
            900,
        )
        .unwrap()
    };
    for path in ["/admin", "/sessions/a1/../b1"] {
        for host in [SVC, "svc-ghost.example.dev"] {
            let bare = crate::wire::encode_header_map(&[
                (":authority", host),
                (":path", path),
                (":method", "GET"),
            ]);
            assert!(
                matches!(
                    denied(gate.on_request(&bare, NOW)),
                    Denial::NoCapability { redirect: None }
                ),
                "{host}{path}"
            );
            let elsewhere = crate::wire::encode_header_map(&[
                (":authority", host),
                (":path", path),
                (":method", "GET"),
                ("podgate-token", other.as_str()),
            ]);
            assert_eq!(
                denied(gate.on_request(&elsewhere, NOW)),
                Denial::WrongScope,
                "{host}{path}"
            );
        }
    }
}

#[test]
fn a_service_without_a_pattern_is_unchanged() {
    let c = super::service_tests::config_with_service();
    let mut gate = Gate::new(c);
    let plain = {
        let c = PodClaims {
            aud: "svc-openai.example.dev".into(),
            pod: "openai".into(),
            port: crate::host::SERVICE_PORT,
            ..claims()
        };
        mint_scoped(
            TokenKind::Capability,
            &ed_key(TokenKind::Capability, 1),
            &c,
            None,
            None,
            NOW,
            900,
        )
        .unwrap()
    };
    let wire = crate::wire::encode_header_map(&[
        (":authority", "svc-openai.example.dev"),
        (":path", "/v1/../x;y"),
        (":method", "GET"),
        ("podgate-token", plain.as_str()),
    ]);
    forwarded(gate.on_request(&wire, NOW));
}
