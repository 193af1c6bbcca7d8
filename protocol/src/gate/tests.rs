//! Native tests of the whole decision: every row of the answers table and the stripping rules.

use std::collections::HashMap;
use std::rc::Rc;

use super::*;
use crate::config::{
    FilterConfig, PodEntry, PodStatus, CLUSTER_HEADER, EMAIL_HEADER, UPSTREAM_HEADER, USER_HEADER,
};
use crate::host::PodAddr;
use crate::token::tests::{claims, ed_key, ISS, NOW};
use crate::token::TokenError;
use crate::token::{mint, KeySet, PodClaims, SigningKey, TokenKind};

pub(super) type Headers = Vec<(String, Vec<u8>)>;

pub(super) const HOST: &str = "localhost-8726-pod-alpha.example.dev";

pub(super) fn key() -> SigningKey {
    ed_key(TokenKind::Capability, 1)
}

/// The configuration every gate test starts from (pods alpha, beta and a stopped sleepy), as
/// `edit` changes it. The other gate test modules use it too.
pub(super) fn config_with(edit: impl FnOnce(&mut FilterConfig)) -> Rc<CompiledConfig> {
    let mut pods = HashMap::new();
    for (slug, status) in [
        ("alpha", PodStatus::Running),
        ("beta", PodStatus::Running),
        ("sleepy", PodStatus::Stopped),
    ] {
        pods.insert(
            slug.to_owned(),
            PodEntry {
                status,
                cluster: format!("pod_{slug}"),
                address: Some("10.0.0.5:30001".into()),
            },
        );
    }
    let mut config = FilterConfig {
        issuer: ISS.into(),
        domain: "example.dev".into(),
        public_host_template: crate::host::DEFAULT_PUBLIC_TEMPLATE.into(),
        upstream_host_template: crate::host::DEFAULT_UPSTREAM_TEMPLATE.into(),
        service_host_template: None,
        public_scheme: "https".into(),
        cookie_name: "podgate_cap".into(),
        auth_url: "https://podgate.example.dev/api/proxy-auth".into(),
        control_plane_cluster: "podgate_control_plane".into(),
        keys: KeySet {
            keys: vec![key().verifying_jwk()],
        },
        pods,
        services: Default::default(),
        services_without_credential: Vec::new(),
        revoked_jti: vec![],
        cutoffs: Default::default(),
        logout_url: None,
        renewal: None,
        wake: false,
        rate_limits: None,
        concurrency_limits: None,
        assertion: None,
        leeway_secs: 30,
        max_capability_lifetime_secs: 3600,
        token_cache_entries: 16,
    };
    edit(&mut config);
    Rc::new(config.compile().unwrap())
}

pub(super) fn config() -> Rc<CompiledConfig> {
    config_with(|_| {})
}

pub(super) fn cap_for(pod: &str, port: u16) -> String {
    let c = PodClaims {
        aud: format!("localhost-{port}-pod-{pod}.example.dev"),
        pod: pod.into(),
        port,
        ..claims()
    };
    mint(TokenKind::Capability, &key(), &c, NOW, 900).unwrap()
}

pub(super) fn cap() -> String {
    cap_for("alpha", 8726)
}

pub(super) fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

pub(super) fn base(extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        (":authority", HOST),
        (":path", "/index.html"),
        (":method", "GET"),
    ];
    h.extend_from_slice(extra);
    headers(&h)
}

/// `h` through a fresh gate for `config`, as the filter takes it.
pub(super) fn run(config: &Rc<CompiledConfig>, h: &[(String, Vec<u8>)]) -> Decision {
    through_gate(&mut Gate::new(Rc::clone(config)), h, NOW + 1)
}

pub(super) fn edits(d: &Decision) -> &[HeaderEdit] {
    match d {
        Decision::Forward(f) => &f.edits,
        other => panic!("expected forward, got {other:?}"),
    }
}

pub(super) fn set<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
    edits(d).iter().rev().find_map(|e| match e {
        HeaderEdit::Set(n, v) if n == name => Some(v.as_str()),
        _ => None,
    })
}

pub(super) fn removed(d: &Decision, name: &str) -> bool {
    edits(d)
        .iter()
        .any(|e| matches!(e, HeaderEdit::Remove(n) if n == name))
}

pub(super) fn status(d: &Decision) -> u32 {
    match d {
        Decision::Deny(denial) => denial.reply().status,
        Decision::Forward(_) | Decision::Exchange(_) | Decision::Renew { .. } => 0,
        Decision::Answer(reply) => reply.status,
    }
}

#[test]
fn valid_cookie_forwards_with_host_rewritten_and_credentials_stripped() {
    let c = config();
    let cookie = format!("a=1; __Host-podgate_cap={}; b=2", cap());
    let d = run(
        &c,
        &base(&[
            ("cookie", &cookie),
            ("x-podgate-cluster", "pod_beta"),
            ("x-podgate-user", "admin"),
            ("x-forwarded-host", "localhost-8726-pod-beta.example.dev"),
        ]),
    );
    assert_eq!(
        set(&d, ":authority"),
        Some("localhost-8726.pod-alpha.example.dev")
    );
    assert_eq!(set(&d, "cookie"), Some("a=1; b=2"));
    // A pod with an address: routed by the address (the pods' original-destination route), no
    // cluster header; the client's copy is removed, so Envoy picks the route again.
    assert_eq!(set(&d, CLUSTER_HEADER), None);
    assert!(removed(&d, "x-podgate-cluster"));
    assert_eq!(set(&d, UPSTREAM_HEADER), Some("10.0.0.5:30001"));
    assert!(reroutes(&d));
    assert_eq!(set(&d, USER_HEADER), Some("user-1"));
    assert_eq!(set(&d, EMAIL_HEADER), Some("u@example.dev"));
    // Client copies are removed before ours are set.
    let e = edits(&d);
    let rm = e
        .iter()
        .position(|x| *x == HeaderEdit::Remove("x-podgate-user".into()))
        .unwrap();
    let st = e
        .iter()
        .position(|x| matches!(x, HeaderEdit::Set(n, _) if n == USER_HEADER))
        .unwrap();
    assert!(rm < st);
}

pub(super) fn reroutes(d: &Decision) -> bool {
    match d {
        Decision::Forward(f) => f.reroute,
        other => panic!("expected a forward, got {other:?}"),
    }
}

#[test]
fn only_a_forward_that_names_a_cluster_or_drops_a_client_copy_picks_the_route_again() {
    let c = config();
    let cookie = format!("__Host-podgate_cap={}", cap());
    // A pod with an address, nothing of ours sent: the route Envoy picked stays.
    let d = run(&c, &base(&[("cookie", &cookie)]));
    assert_eq!(set(&d, CLUSTER_HEADER), None);
    assert_eq!(set(&d, UPSTREAM_HEADER), Some("10.0.0.5:30001"));
    assert!(!reroutes(&d));
    // Any client copy of a header of ours: picked again.
    for name in ["x-podgate-cluster", "x-podgate-upstream", "x-podgate-pod"] {
        let d = run(&c, &base(&[("cookie", &cookie), (name, "pod_beta")]));
        assert!(removed(&d, name), "{name}");
        assert!(reroutes(&d), "{name}");
    }
    // The callback goes to the control plane by its cluster: picked again.
    let mut h = base(&[]);
    h[1].1 = b"/.podgate/callback?ticket=abc&next=/".to_vec();
    let d = run(&c, &h);
    assert_eq!(set(&d, CLUSTER_HEADER), Some("podgate_control_plane"));
    assert!(reroutes(&d));
}

#[test]
fn a_forward_names_the_pod_and_port_it_parsed_never_the_clients() {
    let c = config();
    let d = run(
        &c,
        &base(&[
            ("podgate-token", &cap()),
            ("x-podgate-pod", "beta"),
            ("x-podgate-port", "1"),
        ]),
    );
    let Decision::Forward(forward) = &d else {
        panic!("{d:?}")
    };
    let alpha = PodAddr {
        pod: "alpha".into(),
        port: 8726,
    };
    assert_eq!(forward.target, Some(alpha));
    let mut states = Vec::new();
    forward.each_filter_state(|name, value| states.push((name, value.to_owned())));
    let line = format!(
        "user={} pod=alpha port=8726 decision=allow reason=-",
        claims().sub
    );
    assert_eq!(
        states,
        [
            ("podgate_pod", "alpha".to_owned()),
            ("podgate_port", "8726".to_owned()),
            ("podgate", line),
        ]
    );
    // The client's copies are removed and none is set: the pod and port reach Envoy's local
    // replies as filter state, never the pod as headers.
    for name in ["x-podgate-pod", "x-podgate-port"] {
        assert!(removed(&d, name), "{name}");
        assert_eq!(set(&d, name), None, "{name}");
    }
    // The control plane's callback is no pod's answer: no target.
    let mut h = base(&[]);
    h[1].1 = b"/.podgate/callback?ticket=abc&next=/".to_vec();
    let Decision::Forward(callback) = run(&c, &h) else {
        panic!("the callback is forwarded")
    };
    assert_eq!(callback.target, None);
    let mut states = Vec::new();
    callback.each_filter_state(|name, value| states.push((name, value.to_owned())));
    assert_eq!(
        states,
        [(
            "podgate",
            "user=- pod=- port=- decision=callback reason=-".to_owned()
        )]
    );
}

#[test]
fn only_cookie_removes_the_header() {
    let c = config();
    let cookie = format!("__Host-podgate_cap={}", cap());
    let d = run(&c, &base(&[("cookie", &cookie)]));
    assert!(removed(&d, "cookie"));
    assert_eq!(set(&d, "cookie"), None);
}

#[test]
fn header_and_bearer_tokens_are_removed_foreign_bearer_kept() {
    let c = config();
    let token = cap();
    let d = run(&c, &base(&[("podgate-token", &token)]));
    assert!(removed(&d, "podgate-token"));
    let bearer = format!("Bearer {token}");
    let d = run(&c, &base(&[("authorization", &bearer)]));
    assert!(removed(&d, "authorization"));
    // A bearer that is not ours belongs to the pod's app: untouched, and not a credential.
    let d = run(&c, &base(&[("authorization", "Bearer abc.def.ghi")]));
    assert_eq!(status(&d), 401);
    let d = run(
        &c,
        &base(&[("authorization", "Bearer xyz"), ("podgate-token", &token)]),
    );
    assert!(!removed(&d, "authorization"));
    assert!(edits(&d)
        .iter()
        .all(|e| !matches!(e, HeaderEdit::Set(n, _) if n == "authorization")));
}

#[test]
fn the_answers_table() {
    let c = config();
    let token = cap();
    let cases: Vec<(&str, Headers, u32)> = vec![
        (
            "not a pod host",
            headers(&[(":authority", "example.dev"), (":path", "/")]),
            400,
        ),
        (
            "suffix confusion",
            headers(&[
                (
                    ":authority",
                    "localhost-8726-pod-alpha.example.dev.evil.com",
                ),
                ("podgate-token", &token),
            ]),
            400,
        ),
        ("no capability", base(&[]), 401),
        (
            "garbage capability",
            base(&[("podgate-token", "x.y.z")]),
            401,
        ),
        (
            "other pod",
            base(&[("podgate-token", &cap_for("beta", 8726))]),
            403,
        ),
        (
            "other port",
            base(&[("podgate-token", &cap_for("alpha", 8727))]),
            403,
        ),
        (
            "unknown pod",
            headers(&[
                (":authority", "localhost-8726-pod-ghost.example.dev"),
                (":method", "GET"),
                (":path", "/"),
                ("podgate-token", &cap_for("ghost", 8726)),
            ]),
            404,
        ),
        (
            "stopped pod",
            headers(&[
                (":authority", "localhost-8726-pod-sleepy.example.dev"),
                (":method", "GET"),
                (":path", "/"),
                ("podgate-token", &cap_for("sleepy", 8726)),
            ]),
            503,
        ),
    ];
    for (name, h, want) in cases {
        assert_eq!(status(&run(&c, &h)), want, "{name}");
    }
    let stopped = Denial::NotRunning(PodStatus::Stopped).reply();
    assert_eq!(
        stopped.body,
        r#"{"error":"Pod is not running (status: stopped)"}"#
    );
    let unauth = Denial::NoCapability { redirect: None }.reply();
    assert!(unauth
        .headers
        .iter()
        .any(|(n, v)| *n == "www-authenticate" && v.starts_with("Bearer realm=")));
}

#[test]
fn unknown_pod_is_no_existence_oracle_without_a_token() {
    let c = config();
    let ghost = headers(&[
        (":authority", "localhost-8726-pod-ghost.example.dev"),
        (":method", "GET"),
        (":path", "/"),
    ]);
    let alpha = base(&[]);
    let expected = Decision::Deny(Denial::NoCapability { redirect: None });
    assert_eq!(run(&c, &ghost), expected);
    assert_eq!(run(&c, &alpha), expected);
}

#[test]
fn browser_page_loads_are_redirected_to_sign_in() {
    let c = config();
    for extra in [
        vec![("sec-fetch-mode", "navigate")],
        vec![("accept", "text/html,application/xhtml+xml")],
        vec![("sec-fetch-mode", "navigate"), ("podgate-token", "bad")],
    ] {
        let d = run(&c, &base(&extra));
        let Decision::Deny(denial) = &d else { panic!() };
        let reply = denial.reply();
        assert_eq!(reply.status, 302, "{extra:?}");
        let location = reply
            .headers
            .iter()
            .find(|(n, _)| *n == "location")
            .map(|(_, v)| v.clone())
            .unwrap();
        assert_eq!(
            location,
            "https://podgate.example.dev/api/proxy-auth?pod=alpha&port=8726&next=/index.html"
        );
    }
    // Scripts, subresources and WebSockets get 401, never a redirect.
    for extra in [
        vec![("sec-fetch-mode", "cors"), ("accept", "text/html")],
        vec![("accept", "application/json")],
        vec![("upgrade", "websocket"), ("sec-fetch-mode", "navigate")],
    ] {
        assert_eq!(status(&run(&c, &base(&extra))), 401, "{extra:?}");
    }
    let mut post = base(&[("sec-fetch-mode", "navigate")]);
    post[2].1 = b"POST".to_vec();
    assert_eq!(status(&run(&c, &post)), 401);
}

#[test]
fn redirect_next_is_encoded_so_it_cannot_inject_parameters() {
    let c = config();
    let url = auth_redirect(
        &c,
        &PodAddr {
            pod: "alpha".into(),
            port: 1,
        },
        "/a?x=1&pod=evil#f",
    );
    assert_eq!(
        url,
        "https://podgate.example.dev/api/proxy-auth?pod=alpha&port=1&next=/a%3Fx%3D1%26pod%3Devil%23f"
    );
}

#[test]
fn a_long_next_loses_its_query_before_the_page() {
    let c = config();
    let pod = PodAddr {
        pod: "alpha".into(),
        port: 1,
    };
    let base = "https://podgate.example.dev/api/proxy-auth?pod=alpha&port=1";
    // A long shared dashboard link: back to the dashboard, without its query.
    let long_query = format!("/d/abc?{}", "var=x&".repeat(500));
    assert_eq!(
        auth_redirect(&c, &pod, &long_query),
        format!("{base}&next=/d/abc")
    );
    // A page that is itself too long: no `next`, the pod's root.
    let long_page = format!("/{}?a=1", "p".repeat(crate::redirect::MAX_NEXT_LEN));
    assert_eq!(auth_redirect(&c, &pod, &long_page), base);
    assert_eq!(
        auth_redirect(&c, &pod, &long_page[..long_page.len() - 4]),
        base
    );
}

#[test]
fn reserved_path_goes_to_the_control_plane_without_a_token() {
    let c = config();
    let mut h = base(&[("x-podgate-cluster", "pod_alpha"), ("cookie", "a=1")]);
    h[1].1 = b"/.podgate/callback?ticket=abc&next=/".to_vec();
    let d = run(&c, &h);
    assert_eq!(set(&d, CLUSTER_HEADER), Some("podgate_control_plane"));
    assert_eq!(
        set(&d, ":authority"),
        None,
        "Host must reach the control plane unchanged"
    );
    assert!(removed(&d, "x-podgate-cluster"));
    // ...but only on a pod host.
    let mut bad = h.clone();
    bad[0].1 = b"evil.example.dev".to_vec();
    assert_eq!(status(&run(&c, &bad)), 400);
}

#[test]
fn websocket_with_cookie_needs_the_pods_own_origin() {
    let c = config();
    let cookie = format!("__Host-podgate_cap={}", cap());
    let ws = |origin: Option<&str>, cookie: &str| {
        let mut h = vec![("upgrade", "websocket"), ("cookie", cookie)];
        if let Some(o) = origin {
            h.push(("origin", o));
        }
        run(&c, &base(&h))
    };
    assert!(matches!(
        ws(
            Some("https://localhost-8726-pod-alpha.example.dev"),
            &cookie
        ),
        Decision::Forward(_)
    ));
    assert!(matches!(
        ws(
            Some("https://localhost-8726-pod-alpha.example.dev:443"),
            &cookie
        ),
        Decision::Forward(_)
    ));
    for origin in [
        None,
        Some("https://localhost-8726-pod-beta.example.dev"),
        Some("https://localhost-8727-pod-alpha.example.dev"),
        Some("http://localhost-8726-pod-alpha.example.dev"),
        Some("https://evil.com"),
        Some("https://localhost-8726-pod-alpha.example.dev/x"),
        Some("null"),
    ] {
        assert_eq!(
            ws(origin, &cookie),
            Decision::Deny(Denial::CrossOriginWebSocket),
            "{origin:?}"
        );
    }
    // A header token is not ambient authority: no Origin rule.
    let token = cap();
    let d = run(
        &c,
        &base(&[
            ("upgrade", "websocket"),
            ("podgate-token", &token),
            ("origin", "https://evil.com"),
        ]),
    );
    assert!(matches!(d, Decision::Forward(_)));
}

#[test]
fn tossed_cookie_does_not_mask_the_real_one() {
    let c = config();
    let cookie = format!(
        "__Host-podgate_cap={}; __Host-podgate_cap={}",
        cap_for("beta", 8726),
        cap()
    );
    let d = run(&c, &base(&[("cookie", &cookie)]));
    assert_eq!(set(&d, USER_HEADER), Some("user-1"));
    assert!(removed(&d, "cookie"));
}

#[test]
fn non_utf8_headers_we_read_are_refused_others_pass() {
    let c = config();
    let mut h = base(&[("podgate-token", &cap())]);
    h.push(("x-app".into(), vec![0xff, 0xfe]));
    assert!(matches!(run(&c, &h), Decision::Forward(_)));
    let mut h = base(&[]);
    h.push(("cookie".into(), vec![b'a', b'=', 0xff]));
    assert_eq!(status(&run(&c, &h)), 400);
}

#[test]
fn revoked_capability_is_refused() {
    let c = config_with(|c| c.revoked_jti = vec!["jti-1".into()]);
    assert_eq!(status(&run(&c, &base(&[("podgate-token", &cap())]))), 401);
}

#[test]
fn empty_key_set_denies_everything() {
    let c = config_with(|c| c.keys = KeySet::default());
    assert_eq!(status(&run(&c, &base(&[("podgate-token", &cap())]))), 401);
}

#[test]
fn borrowed_headers_read_like_owned_ones() {
    let token = cap();
    let owned = base(&[
        ("cookie", &format!("a=1; podgate_cap={token}")),
        ("x-app", "1"),
    ]);
    let slices: Vec<(&[u8], &[u8])> = owned
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_slice()))
        .collect();
    assert_eq!(
        Request::from_slices(&slices).unwrap(),
        Request::from_headers(&owned).unwrap()
    );
    // A name that is not UTF-8 anywhere in the map is refused, whatever it is.
    let mut bad = slices.clone();
    bad.push((&[0x78, 0xff][..], &b"1"[..]));
    assert_eq!(
        Request::from_slices(&bad).unwrap_err(),
        Denial::MalformedHeaderName
    );
}

#[test]
fn every_cookie_header_is_searched_and_stripped() {
    let c = config();
    let token = cap();
    let ours = format!("__Host-podgate_cap={token}");
    let d = run(&c, &base(&[("cookie", &ours), ("cookie", "a=1; b=2")]));
    assert_eq!(set(&d, "cookie"), Some("a=1; b=2"));
    let d = run(
        &c,
        &base(&[("cookie", "a=1"), ("cookie", &ours), ("cookie", "b=2")]),
    );
    assert_eq!(set(&d, "cookie"), Some("a=1; b=2"));
    let d = run(&c, &base(&[("cookie", "a=1"), ("cookie", &ours)]));
    assert_eq!(set(&d, "cookie"), Some("a=1"));
}

#[test]
fn our_bearer_is_found_in_any_authorization_header_and_all_are_removed() {
    let c = config();
    let token = cap();
    let ours = format!("Bearer {token}");
    let joined = format!("Bearer {token}, Bearer xyz");
    for h in [
        vec![
            ("authorization", ours.as_str()),
            ("authorization", "Bearer xyz"),
        ],
        vec![
            ("authorization", "Bearer xyz"),
            ("authorization", ours.as_str()),
        ],
        vec![("authorization", joined.as_str())],
    ] {
        let d = run(&c, &base(&h));
        assert!(removed(&d, "authorization"), "{h:?}");
        assert_eq!(set(&d, USER_HEADER), Some("user-1"));
    }
}

#[test]
fn oversized_candidates_are_refused_before_any_work() {
    let c = config();
    let huge = "a".repeat(crate::token::MAX_TOKEN_LEN + 1);
    let h = base(&[("podgate-token", &huge)]);
    let req = Request::from_headers(&h).unwrap();
    let mut cache = VerifiedCache::new();
    let Decision::Deny(Denial::InvalidCapability { reason, .. }) =
        decide(&c, &mut cache, &req, NOW)
    else {
        panic!("expected 401")
    };
    assert_eq!(reason, TokenError::Size);
    assert_eq!(cache.stats(), (0, 0), "not even hashed for the cache");
}

#[test]
fn cookie_authority_does_not_extend_to_other_pods_pages() {
    let c = config();
    let cookie = format!("__Host-podgate_cap={}", cap());
    let req = |method: &str, origin: Option<&str>| {
        let mut h = base(&[("cookie", &cookie)]);
        h[2].1 = method.as_bytes().to_vec();
        if let Some(o) = origin {
            h.push(("origin".into(), o.as_bytes().to_vec()));
        }
        run(&c, &h)
    };
    let beta = "https://localhost-8726-pod-beta.example.dev";
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        assert_eq!(
            req(method, Some(beta)),
            Decision::Deny(Denial::CrossPodRequest)
        );
        assert_eq!(
            req(method, Some("null")),
            Decision::Deny(Denial::CrossPodRequest)
        );
        assert_eq!(
            req(method, Some("https://evil.com")),
            Decision::Deny(Denial::CrossPodRequest)
        );
        // The same pod's own pages, any of its ports: allowed.
        for own in [
            "https://localhost-8726-pod-alpha.example.dev",
            "https://localhost-3000-pod-alpha.example.dev",
        ] {
            assert!(matches!(req(method, Some(own)), Decision::Forward(_)));
        }
        // No Origin (not a browser): allowed.
        assert!(matches!(req(method, None), Decision::Forward(_)));
        // `Origin: null` from this very host (a page with `Referrer-Policy: no-referrer`), as
        // the browser's `Sec-Fetch-Site` says: allowed; from anywhere else: refused.
        let null_from = |site: &str| {
            let mut h = base(&[
                ("cookie", &cookie),
                ("origin", "null"),
                ("sec-fetch-site", site),
            ]);
            h[2].1 = method.as_bytes().to_vec();
            run(&c, &h)
        };
        assert!(matches!(null_from("same-origin"), Decision::Forward(_)));
        for site in ["same-site", "cross-site", "none", "Same-Origin"] {
            assert_eq!(
                null_from(site),
                Decision::Deny(Denial::CrossPodRequest),
                "{site}"
            );
        }
    }
    // Safe methods are not state-changing: allowed from anywhere.
    assert!(matches!(req("GET", Some(beta)), Decision::Forward(_)));
    // With a header token (not ambient authority) there is no Origin rule.
    let token = cap();
    let mut h = base(&[("podgate-token", &token), ("origin", beta)]);
    h[2].1 = b"POST".to_vec();
    assert!(matches!(run(&c, &h), Decision::Forward(_)));
}

#[test]
fn preflight_fields_are_read_strictly_and_the_gate_itself_never_answers_them() {
    // The filter answers preflights with `cors::preflight` before `decide`; `decide` treats an
    // OPTIONS like any request (a safe method needs a capability but no Origin check).
    let c = config();
    let own = "https://localhost-8727-pod-alpha.example.dev";
    let h = base(&[
        (":method", "OPTIONS"),
        ("origin", own),
        ("access-control-request-method", "PUT"),
        ("access-control-request-headers", "content-type"),
    ]);
    let req = Request::from_headers(&h).unwrap();
    let view = req.preflight_view();
    assert_eq!(view.origin, Some(own));
    assert_eq!(view.request_method, Some("PUT"));
    assert_eq!(view.request_headers, Some("content-type"));
    assert_eq!(view.authority, HOST);
    assert!(matches!(
        crate::cors::preflight(&c, &view),
        Some(crate::cors::Preflight::Allowed(_))
    ));
    // A request field we read that is not UTF-8 is refused, as for every header we read.
    let mut bad = base(&[]);
    bad.push(("access-control-request-headers".into(), vec![b'x', 0xff]));
    assert_eq!(
        run(&c, &bad),
        Decision::Deny(Denial::MalformedHeader("access-control-request-headers"))
    );
}

/// `h` serialized as Envoy hands it over, through `gate` at `now` (a request that is not a
/// preflight).
pub(super) fn through_gate(gate: &mut Gate, h: &[(String, Vec<u8>)], now: i64) -> Decision {
    match gate.on_request(&crate::wire::encode_header_map(h), now) {
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
