//! Native tests of services through the gate: their credential in, the caller's out, and a
//! service without a usable credential.

use std::rc::Rc;

use super::*;
use crate::config::{CLUSTER_HEADER, EMAIL_HEADER, USER_HEADER};
use crate::token::tests::{claims, NOW};
use crate::token::{mint, PodClaims, TokenKind};

use super::tests::{
    base, cap_for, config, config_with, edits, headers, key, removed, run, set, status,
};

/// The gate configuration with service `openai` (its credential an `x-api-key`) published under
/// `svc-{name}.{domain}`.
pub(super) fn config_with_service() -> Rc<CompiledConfig> {
    openai(("x-api-key", "sk-upstream"), &[])
}

/// The gate configuration with service `openai` published under `svc-{name}.{domain}`, its
/// credential `(header, value)` and the other credential headers `strip_headers`.
fn openai(credential: (&str, &str), strip_headers: &[&str]) -> Rc<CompiledConfig> {
    config_with(|c| {
        c.service_host_template = Some(crate::host::DEFAULT_SERVICE_TEMPLATE.into());
        c.services.insert(
            "openai".into(),
            crate::config::ServiceEntry {
                cluster: "service_openai".into(),
                host: "api.example.com".into(),
                credential: Some(crate::config::InjectedHeader {
                    name: credential.0.into(),
                    value: crate::config::SecretValue(credential.1.into()),
                }),
                strip_headers: strip_headers.iter().map(|h| (*h).to_owned()).collect(),
                resource_path: None,
                credential_expires_at: None,
                fallback_credential: None,
            },
        );
    })
}

/// `GET /v1/models` on service `openai` with the headers `extra`, decided by `c`.
fn get_models(c: &Rc<CompiledConfig>, extra: &[(&str, &str)]) -> Decision {
    let mut all = vec![
        (":authority", "svc-openai.example.dev"),
        (":path", "/v1/models"),
        (":method", "GET"),
    ];
    all.extend_from_slice(extra);
    run(c, &headers(&all))
}

fn service_cap(name: &str) -> String {
    let c = PodClaims {
        aud: format!("svc-{name}.example.dev"),
        pod: name.into(),
        port: crate::host::SERVICE_PORT,
        ..claims()
    };
    mint(TokenKind::Capability, &key(), &c, NOW, 900).unwrap()
}

#[test]
fn a_service_gets_its_credential_and_none_of_the_callers() {
    let c = config_with_service();
    let bearer = format!("Bearer {}", service_cap("openai"));
    let d = get_models(
        &c,
        &[
            ("authorization", &bearer),
            ("x-api-key", "the-callers-own"),
            ("x-forwarded-host", "evil.example"),
        ],
    );
    assert_eq!(set(&d, ":authority"), Some("api.example.com"));
    // Neither the client's copy nor our public host.
    assert!(removed(&d, "x-forwarded-host"));
    assert_eq!(set(&d, "x-forwarded-host"), None);
    assert_eq!(set(&d, CLUSTER_HEADER), Some("service_openai"));
    assert_eq!(set(&d, "x-api-key"), Some("sk-upstream"));
    assert!(removed(&d, "authorization"));
    assert_eq!(set(&d, USER_HEADER), None);
    assert_eq!(set(&d, EMAIL_HEADER), None);
    // The caller's own Authorization, with nothing of ours in it, is removed too.
    let d = get_models(
        &c,
        &[
            ("podgate-token", &service_cap("openai")),
            ("authorization", "Basic dXNlcjpwYXNz"),
        ],
    );
    assert!(removed(&d, "authorization"));
    assert_eq!(set(&d, "x-api-key"), Some("sk-upstream"));
}

#[test]
fn the_callers_copy_of_the_services_other_credential_header_is_removed() {
    // An OAuth token in force in `authorization`, the fallback configured in `x-api-key`.
    let c = openai(
        ("authorization", "Bearer at-1"),
        &["x-api-key", "authorization"],
    );
    let d = get_models(
        &c,
        &[
            ("podgate-token", &service_cap("openai")),
            ("x-api-key", "the-callers-own"),
            ("x-other", "kept"),
        ],
    );
    assert!(removed(&d, "x-api-key"));
    assert_eq!(set(&d, "authorization"), Some("Bearer at-1"));
    assert!(!removed(&d, "x-other"));
    // The injected header is set once, never removed after being set.
    let last_authorization = edits(&d).iter().rev().find(|e| match e {
        HeaderEdit::Set(n, _) | HeaderEdit::Remove(n) => n == "authorization",
    });
    assert!(
        matches!(last_authorization, Some(HeaderEdit::Set(_, v)) if v == "Bearer at-1"),
        "{:?}",
        edits(&d)
    );
}

#[test]
fn pod_and_service_capabilities_never_stand_in_for_each_other() {
    let c = config_with_service();
    // A capability for pod `openai` (a port of it) does not open service `openai`.
    let d = run(
        &c,
        &headers(&[
            (":authority", "svc-openai.example.dev"),
            (":path", "/"),
            (":method", "GET"),
            ("podgate-token", &cap_for("openai", 8726)),
        ]),
    );
    assert_eq!(status(&d), 403);
    // A service capability does not open a pod.
    let d = run(&c, &base(&[("podgate-token", &service_cap("alpha"))]));
    assert_eq!(status(&d), 403);
    // An unknown service is the unknown pod's answer.
    let d = run(
        &c,
        &headers(&[
            (":authority", "svc-other.example.dev"),
            (":path", "/"),
            (":method", "GET"),
            ("podgate-token", &service_cap("other")),
        ]),
    );
    assert_eq!(d, Decision::Deny(Denial::UnknownPod));
    // Without a service template, a service host is no host of ours.
    let d = run(
        &config(),
        &headers(&[
            (":authority", "svc-openai.example.dev"),
            (":path", "/"),
            (":method", "GET"),
            ("podgate-token", &service_cap("openai")),
        ]),
    );
    assert_eq!(status(&d), 400);
}

#[test]
fn a_page_load_of_a_service_without_a_capability_is_sent_to_sign_in_for_that_service() {
    let c = config_with_service();
    let d = run(
        &c,
        &headers(&[
            (":authority", "svc-openai.example.dev"),
            (":path", "/chat"),
            (":method", "GET"),
            ("sec-fetch-mode", "navigate"),
        ]),
    );
    match d {
        Decision::Deny(Denial::NoCapability {
            redirect: Some(url),
        }) => assert_eq!(
            url,
            "https://podgate.example.dev/api/proxy-auth?service=openai&next=/chat"
        ),
        other => panic!("{other:?}"),
    }
}

/// Service `openai` with an OAuth token in `authorization` that expires at `NOW + 60`, and
/// `fallback` (in `x-api-key`) beside it.
fn expiring_token(fallback: Option<&str>) -> Rc<CompiledConfig> {
    config_with(|c| {
        c.service_host_template = Some(crate::host::DEFAULT_SERVICE_TEMPLATE.into());
        let header = |name: &str, value: &str| crate::config::InjectedHeader {
            name: name.into(),
            value: crate::config::SecretValue(value.into()),
        };
        c.services.insert(
            "openai".into(),
            crate::config::ServiceEntry {
                cluster: "service_openai".into(),
                host: "api.example.com".into(),
                credential: Some(header("authorization", "Bearer at-1")),
                strip_headers: fallback.iter().map(|_| "x-api-key".to_owned()).collect(),
                resource_path: None,
                credential_expires_at: Some(NOW + 60),
                fallback_credential: fallback.map(|f| header("x-api-key", f)),
            },
        );
    })
}

#[test]
fn an_expired_token_is_never_sent_the_fallback_or_a_502_takes_over() {
    let h = headers(&[
        (":authority", "svc-openai.example.dev"),
        (":path", "/v1/models"),
        (":method", "GET"),
        ("podgate-token", &service_cap("openai")),
        ("x-api-key", "the-callers-own"),
        ("authorization", "Basic dXNlcjpwYXNz"),
    ]);
    // With a fallback: the token until it expires, then the fallback, and the caller's copy of
    // neither. The memo keeps the token's forward no longer than the token.
    let mut gate = Gate::new(expiring_token(Some("sk-fallback")));
    for now in [NOW + 1, NOW + 59] {
        let d = super::memo_tests::memo_agrees(&mut gate, &h, now);
        assert_eq!(set(&d, "authorization"), Some("Bearer at-1"), "{d:?}");
        assert!(removed(&d, "x-api-key"), "{d:?}");
        assert_eq!(set(&d, "x-api-key"), None, "{d:?}");
    }
    assert_eq!(gate.stats().0, 1, "the second was the memo's");
    for now in [NOW + 60, NOW + 61, NOW + 800] {
        let d = super::memo_tests::memo_agrees(&mut gate, &h, now);
        assert_eq!(set(&d, "x-api-key"), Some("sk-fallback"), "{d:?}");
        assert_eq!(set(&d, "authorization"), None, "{d:?}");
        assert!(removed(&d, "authorization"), "{d:?}");
    }
    // Without one: a 502 from the expiry on, and nothing forwarded.
    let mut gate = Gate::new(expiring_token(None));
    let d = super::memo_tests::memo_agrees(&mut gate, &h, NOW + 59);
    assert_eq!(set(&d, "authorization"), Some("Bearer at-1"), "{d:?}");
    for now in [NOW + 60, NOW + 800] {
        let d = super::memo_tests::memo_agrees(&mut gate, &h, now);
        assert_eq!(d, Decision::Deny(Denial::CredentialUnavailable));
    }
}

#[test]
fn a_service_without_a_usable_credential_is_a_502_and_forwards_nothing() {
    let c = config_with(|c| {
        c.service_host_template = Some(crate::host::DEFAULT_SERVICE_TEMPLATE.into());
        c.services_without_credential = vec!["openai".into()];
    });
    let d = get_models(&c, &[("podgate-token", &service_cap("openai"))]);
    assert_eq!(d, Decision::Deny(Denial::CredentialUnavailable));
    let reply = Denial::CredentialUnavailable.reply();
    assert_eq!(
        (reply.status, reply.reason),
        (502, "upstream_credential_unavailable")
    );
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["code"], "upstream_credential_unavailable");
    assert!(body["hint"].is_string());
    // Without a capability for it, the service is refused as any other: its state is no oracle.
    let d = run(
        &c,
        &headers(&[
            (":authority", "svc-openai.example.dev"),
            (":path", "/v1/models"),
            (":method", "GET"),
        ]),
    );
    assert_eq!(status(&d), 401);
}

/// A pod and a service may share a name (`openai`); each is a stranger to the other's pages.
/// The pod's page must not drive the service with the browser's service capability (and its
/// credential), nor read its answers, and the service's pages have no hold on the pod.
#[test]
fn a_pod_and_a_service_of_the_same_name_are_strangers_to_each_others_pages() {
    let c = config_with_service();
    let c = config_with(|f| {
        f.service_host_template = Some(crate::host::DEFAULT_SERVICE_TEMPLATE.into());
        f.services = c.services.clone();
        let alpha = f.pods["alpha"].clone();
        f.pods.insert("openai".into(), alpha);
    });
    let pod_page = "https://localhost-8726-pod-openai.example.dev";
    let service_page = "https://svc-openai.example.dev";
    let post = |authority: &str, cap: &str, origin: &str| {
        let cookie = format!("__Host-podgate_cap={cap}");
        run(
            &c,
            &headers(&[
                (":authority", authority),
                (":path", "/v1/chat/completions"),
                (":method", "POST"),
                ("cookie", &cookie),
                ("origin", origin),
            ]),
        )
    };
    let service = ("svc-openai.example.dev", service_cap("openai"));
    let pod = (
        "localhost-8726-pod-openai.example.dev",
        cap_for("openai", 8726),
    );
    for (to, from) in [(&service, pod_page), (&pod, service_page)] {
        assert_eq!(
            post(to.0, &to.1, from),
            Decision::Deny(Denial::CrossPodRequest),
            "{from} → {}",
            to.0
        );
    }
    // Each one's own pages still drive it.
    let d = post(service.0, &service.1, service_page);
    assert_eq!(set(&d, "x-api-key"), Some("sk-upstream"));
    assert!(matches!(
        post(pod.0, &pod.1, pod_page),
        Decision::Forward(_)
    ));

    // Preflights: refused across, allowed from the service's own origin.
    let preflight = |authority: &str, origin: &str| {
        crate::cors::preflight(
            &c,
            &crate::cors::PreflightRequest {
                authority,
                method: "OPTIONS",
                origin: Some(origin),
                request_method: Some("POST"),
                request_headers: Some("content-type"),
            },
        )
    };
    assert_eq!(
        preflight(service.0, pod_page),
        Some(crate::cors::Preflight::Refused(
            Denial::CrossOriginPreflight
        ))
    );
    assert_eq!(
        preflight(pod.0, service_page),
        Some(crate::cors::Preflight::Refused(
            Denial::CrossOriginPreflight
        ))
    );
    assert!(matches!(
        preflight(service.0, service_page),
        Some(crate::cors::Preflight::Allowed(_))
    ));

    // The service's answer to the pod's page is not made readable to it.
    let answer: [(&[u8], &[u8]); 2] =
        [(b":status", b"200"), (b"content-type", b"application/json")];
    let allowed_origin = |authority: &str, origin: &str| {
        let ctx = crate::response::PodResponse::new(authority, Some(origin));
        crate::response::sanitize(&c, &ctx, answer)
            .edits
            .into_iter()
            .find_map(|e| match e {
                crate::response::ResponseEdit::Set("access-control-allow-origin", v) => Some(v),
                _ => None,
            })
    };
    assert_eq!(allowed_origin(service.0, pod_page), None);
    assert_eq!(allowed_origin(pod.0, service_page), None);
    assert_eq!(
        allowed_origin(service.0, service_page).as_deref(),
        Some(service_page)
    );
}

#[test]
fn trace_to_a_service_is_refused_so_no_upstream_can_echo_its_credential() {
    let c = config_with_service();
    for method in ["TRACE", "TRACK", "trace"] {
        let d = run(
            &c,
            &headers(&[
                (":authority", "svc-openai.example.dev"),
                (":path", "/"),
                (":method", method),
                ("podgate-token", &service_cap("openai")),
            ]),
        );
        assert_eq!(d, Decision::Deny(Denial::TraceRefused), "{method}");
    }
    let reply = Denial::TraceRefused.reply();
    assert_eq!((reply.status, reply.reason), (405, "trace_refused"));
    assert!(reply
        .headers
        .iter()
        .any(|(n, v)| *n == "allow" && v.contains("GET")));
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["code"], "trace_refused");
    // Other methods still go through with the credential; pods are not concerned.
    let d = get_models(&c, &[("podgate-token", &service_cap("openai"))]);
    assert_eq!(status(&d), 0, "{d:?}");
    let pod = run(
        &c,
        &headers(&[
            (":authority", "localhost-8726-pod-alpha.example.dev"),
            (":path", "/"),
            (":method", "TRACE"),
            ("podgate-token", &cap_for("alpha", 8726)),
        ]),
    );
    assert!(matches!(pod, Decision::Forward(_)), "{pod:?}");
}
