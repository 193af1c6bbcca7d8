//! Native tests of the whole decision: every row of the answers table and the stripping rules.

use std::collections::HashMap;
use std::rc::Rc;

use super::memo::{decide_memoized, keyed, memo_hash, or_all, same_bytes, Keyed, Probe};
use super::request::HEADER_NAMES_READ;
use super::token_cache::check_token;
use super::*;
use crate::config::{
    FilterConfig, PodEntry, PodStatus, CLUSTER_HEADER, EMAIL_HEADER, POD_HEADER, PORT_HEADER,
    UPSTREAM_HEADER, USER_HEADER,
};
use crate::cookie::{self, MAX_COOKIE_HEADER_LEN};
use crate::host::PodAddr;
use crate::response::PodResponse;
use crate::token::tests::{claims, ed_key, ISS, NOW};
use crate::token::TokenError;
use crate::token::{mint, KeySet, PodClaims, SigningKey, TokenKind};

type Headers = Vec<(String, Vec<u8>)>;

const HOST: &str = "localhost-8726-pod-alpha.example.dev";

fn key() -> SigningKey {
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

fn config() -> Rc<CompiledConfig> {
    config_with(|_| {})
}

fn cap_for(pod: &str, port: u16) -> String {
    let c = PodClaims {
        aud: format!("localhost-{port}-pod-{pod}.example.dev"),
        pod: pod.into(),
        port,
        ..claims()
    };
    mint(TokenKind::Capability, &key(), &c, NOW, 900).unwrap()
}

fn cap() -> String {
    cap_for("alpha", 8726)
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn base(extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        (":authority", HOST),
        (":path", "/index.html"),
        (":method", "GET"),
    ];
    h.extend_from_slice(extra);
    headers(&h)
}

/// `h` through a fresh gate for `config`, as the filter takes it.
fn run(config: &Rc<CompiledConfig>, h: &[(String, Vec<u8>)]) -> Decision {
    through_gate(&mut Gate::new(Rc::clone(config)), h, NOW + 1)
}

fn edits(d: &Decision) -> &[HeaderEdit] {
    match d {
        Decision::Forward(f) => &f.edits,
        other => panic!("expected forward, got {other:?}"),
    }
}

fn set<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
    edits(d).iter().rev().find_map(|e| match e {
        HeaderEdit::Set(n, v) if n == name => Some(v.as_str()),
        _ => None,
    })
}

fn removed(d: &Decision, name: &str) -> bool {
    edits(d)
        .iter()
        .any(|e| matches!(e, HeaderEdit::Remove(n) if n == name))
}

fn status(d: &Decision) -> u32 {
    match d {
        Decision::Deny(denial) => denial.reply().status,
        Decision::Forward(_) | Decision::Exchange(_) => 0,
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

fn reroutes(d: &Decision) -> bool {
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
    assert_eq!(set(&d, POD_HEADER), Some("alpha"));
    assert_eq!(set(&d, PORT_HEADER), Some("8726"));
    let e = edits(&d);
    for name in [POD_HEADER, PORT_HEADER] {
        let rm = e
            .iter()
            .position(|x| *x == HeaderEdit::Remove(name.into()))
            .unwrap();
        let st = e
            .iter()
            .position(|x| matches!(x, HeaderEdit::Set(n, _) if n == name))
            .unwrap();
        assert!(rm < st, "the client's {name} is removed before ours is set");
    }
    // The control plane's callback is no pod's answer: neither header is set.
    let mut h = base(&[]);
    h[1].1 = b"/.podgate/callback?ticket=abc&next=/".to_vec();
    let d = run(&c, &h);
    assert_eq!(set(&d, POD_HEADER), None);
    assert_eq!(set(&d, PORT_HEADER), None);
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
fn cache_saves_verification_but_never_extends_a_token() {
    let c = config();
    let token = cap(); // iat NOW, exp NOW+900, leeway 30
    let h = base(&[("podgate-token", &token)]);
    let req = Request::from_headers(&h).unwrap();
    let mut cache = VerifiedCache::new();
    for i in 0..50 {
        assert!(matches!(
            decide(&c, &mut cache, &req, NOW + i),
            Decision::Forward(_)
        ));
    }
    assert_eq!(
        cache.stats(),
        (49, 1),
        "one signature check for 50 requests"
    );
    assert!(matches!(
        decide(&c, &mut cache, &req, NOW + 929),
        Decision::Forward(_)
    ));
    assert_eq!(status(&decide(&c, &mut cache, &req, NOW + 930)), 401);
    assert!(cache.is_empty(), "expired entries are dropped on hit");
    // A tampered copy of a cached token is a different key: it is verified and refused.
    let mut tampered = token.clone();
    tampered.push('A');
    let h2 = base(&[("podgate-token", &tampered)]);
    let req2 = Request::from_headers(&h2).unwrap();
    assert_eq!(status(&decide(&c, &mut cache, &req2, NOW)), 401);
}

#[test]
fn cache_is_bounded() {
    let c = config_with(|c| c.token_cache_entries = 4);
    let mut cache = VerifiedCache::new();
    for i in 0..10 {
        let cl = PodClaims {
            jti: format!("j{i}"),
            aud: HOST.into(),
            pod: "alpha".into(),
            ..claims()
        };
        let t = mint(TokenKind::Capability, &key(), &cl, NOW, 900).unwrap();
        let h = base(&[("podgate-token", &t)]);
        let req = Request::from_headers(&h).unwrap();
        assert!(matches!(
            decide(&c, &mut cache, &req, NOW),
            Decision::Forward(_)
        ));
        assert!(cache.len() <= 4);
    }
}

#[test]
fn cache_keys_sharing_a_tail_stay_apart() {
    // The cache hashes only a key's last 16 bytes; equality still compares the whole token.
    let c = config();
    let mut cache = VerifiedCache::new();
    let tail = "x".repeat(80);
    let verified = |jti: &str| {
        Rc::new(crate::token::Verified {
            claims: PodClaims {
                jti: jti.into(),
                ..claims()
            },
            sid: None,
            res: None,
            issued_at: NOW,
            expires_at: NOW + 900,
            kid: "cap-ed1".into(),
            token: None,
        })
    };
    for i in 0..50 {
        cache.insert(
            &format!("head{i}.{tail}"),
            verified(&format!("j{i}")),
            64,
            NOW,
        );
    }
    assert_eq!(cache.len(), 50);
    for i in 0..50 {
        let hit = check_token(&c, &mut cache, &format!("head{i}.{tail}"), NOW).unwrap();
        assert_eq!(hit.claims.jti, format!("j{i}"));
    }
    // An unknown token with the same tail is a miss (then fails verification), never a hit.
    assert!(check_token(&c, &mut cache, &format!("other.{tail}"), NOW).is_err());
    assert_eq!(cache.stats(), (50, 1));
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

// ---- the decision memo ---------------------------------------------------------------------

/// `h` serialized as Envoy hands it over, through `gate` at `now` (a request that is not a
/// preflight).
fn through_gate(gate: &mut Gate, h: &[(String, Vec<u8>)], now: i64) -> Decision {
    match gate.on_request(&crate::wire::encode_header_map(h), now) {
        Outcome::Forward(forward) => Decision::Forward(forward),
        Outcome::Deny(denial) => Decision::Deny(denial),
        Outcome::Answer(reply) => Decision::Answer(reply),
        Outcome::Exchange(need) => Decision::Exchange(need),
        Outcome::Preflight(reply) => panic!("answered as a preflight: {reply:?}"),
        Outcome::Page(reply) | Outcome::Wake { page: reply, .. } => {
            panic!("answered with a page: {reply:?}")
        }
    }
}

/// Sends `h` through `gate` (its memo and caches shared across calls) at `now`, and checks the
/// answer is that of a fresh gate with the same configuration, whose memo and caches are empty.
fn memo_agrees(gate: &mut Gate, h: &[(String, Vec<u8>)], now: i64) -> Decision {
    let memoized = through_gate(gate, h, now);
    let config = gate.config.clone().expect("a configured gate");
    let direct = through_gate(&mut Gate::new(config), h, now);
    assert_eq!(memoized, direct, "the memo changed the decision for {h:?}");
    memoized
}

#[test]
fn memo_answers_what_decide_answers_for_every_field_it_keys_on() {
    let c = config();
    let token = cap();
    let beta = cap_for("beta", 8726);
    let cookie = format!("a=1; __Host-podgate_cap={token}");
    let bearer = format!("Bearer {token}");
    let own = "https://localhost-3000-pod-alpha.example.dev";
    let other = "https://localhost-3000-pod-beta.example.dev";
    // Each differs from the first in one field `decide` reads; several are forwards that must
    // not be served one another's edits, several are denials that must not be served a forward.
    let variants: Vec<Headers> = vec![
        base(&[("cookie", &cookie)]),
        base(&[("cookie", &format!("a=2; __Host-podgate_cap={token}"))]),
        base(&[("cookie", &format!("__Host-podgate_cap={token}"))]),
        base(&[("cookie", &format!("__Host-podgate_cap={beta}"))]),
        base(&[("cookie", &cookie), ("cookie", "z=9")]),
        base(&[("authorization", &bearer)]),
        base(&[("authorization", &bearer), ("authorization", "Basic eDp5")]),
        base(&[("podgate-token", &token)]),
        base(&[("podgate-token", &token), ("x-podgate-user", "mallory")]),
        base(&[("cookie", &cookie), ("x-podgate-email", "m@example.dev")]),
        base(&[("cookie", &cookie), ("origin", own)]),
        base(&[("cookie", &cookie), ("origin", other)]),
        base(&[("cookie", &cookie), ("origin", other), (":method", "POST")])
            .into_iter()
            .filter(|(n, v)| !(n == ":method" && v == b"GET"))
            .collect(),
        base(&[
            ("cookie", &cookie),
            ("origin", own),
            ("upgrade", "websocket"),
        ]),
        base(&[
            ("cookie", &cookie),
            ("origin", other),
            ("upgrade", "websocket"),
        ]),
        base(&[("cookie", &cookie), ("upgrade", "h2c")]),
        headers(&[
            (":authority", "localhost-8726-pod-beta.example.dev"),
            (":path", "/"),
            (":method", "GET"),
            ("cookie", &cookie),
        ]),
        headers(&[
            (":authority", "localhost-8726-pod-beta.example.dev"),
            (":path", "/"),
            (":method", "GET"),
            ("cookie", &format!("__Host-podgate_cap={beta}")),
        ]),
        headers(&[
            (":authority", "localhost-8727-pod-alpha.example.dev"),
            (":path", "/"),
            (":method", "GET"),
            ("cookie", &cookie),
        ]),
        headers(&[
            (":authority", HOST),
            (":path", "/.podgate/callback?ticket=x"),
            (":method", "GET"),
            ("cookie", &cookie),
        ]),
    ];
    let mut gate = Gate::new(Rc::clone(&c));
    let mut forwards = 0;
    // Three passes: misses, then hits, then hits in the reverse order.
    for pass in 0..3 {
        let order: Vec<&Headers> = if pass == 2 {
            variants.iter().rev().collect()
        } else {
            variants.iter().collect()
        };
        for h in order {
            if matches!(
                memo_agrees(&mut gate, h, NOW + 1),
                Decision::Forward(f) if f.user.is_some()
            ) {
                forwards += 1;
            }
        }
    }
    assert!(
        forwards >= 3 * 10,
        "{forwards} forwards: the table lost its point"
    );
    assert!(!gate.memo().is_empty());
}

#[test]
fn a_memo_hit_is_a_cache_hit_and_skips_verification() {
    let c = config();
    let h = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    let mut gate = Gate::new(Rc::clone(&c));
    let first = through_gate(&mut gate, &h, NOW + 1);
    assert_eq!(gate.stats(), (0, 1));
    assert_eq!(gate.memo().len(), 1);
    let second = through_gate(&mut gate, &h, NOW + 2);
    assert_eq!(gate.stats(), (1, 1));
    match (first, second) {
        (Decision::Forward(a), Decision::Forward(b)) => assert!(Rc::ptr_eq(&a, &b)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_memoized_forward_ends_at_the_capabilitys_expiry_with_the_leeway() {
    // `cap()` lives 900 s from NOW; the config's leeway is 30 s.
    let c = config();
    let h = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    let mut gate = Gate::new(Rc::clone(&c));
    let last_good = NOW + 900 + 30 - 1;
    assert!(matches!(
        memo_agrees(&mut gate, &h, NOW + 1),
        Decision::Forward(_)
    ));
    assert!(matches!(
        memo_agrees(&mut gate, &h, last_good),
        Decision::Forward(_)
    ));
    let expired = memo_agrees(&mut gate, &h, last_good + 1);
    assert_eq!(status(&expired), 401, "{expired:?}");
    assert!(gate.memo().is_empty(), "the expired entry is dropped");
}

#[test]
fn two_candidate_tokens_are_never_memoized() {
    // Cookie tossing: which token decides can change with time (one may not be valid yet), so
    // the decision is made afresh every time.
    let c = config();
    let cookie = format!(
        "__Host-podgate_cap={}; __Host-podgate_cap={}",
        cap(),
        cap_for("beta", 8726)
    );
    let h = base(&[("cookie", &cookie)]);
    let mut gate = Gate::new(Rc::clone(&c));
    for _ in 0..2 {
        assert!(matches!(
            memo_agrees(&mut gate, &h, NOW + 1),
            Decision::Forward(_)
        ));
    }
    assert!(gate.memo().is_empty());
}

#[test]
fn the_memo_is_off_with_the_token_cache_and_bounded_by_it() {
    let h = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    let off = config_with(|c| c.token_cache_entries = 0);
    let mut gate = Gate::new(off);
    through_gate(&mut gate, &h, NOW + 1);
    through_gate(&mut gate, &h, NOW + 1);
    assert!(gate.memo().is_empty());
    assert_eq!(gate.stats(), (0, 0));

    gate.configure(config_with(|c| c.token_cache_entries = 2));
    for n in 0..5 {
        let h = base(&[("cookie", &format!("n={n}; __Host-podgate_cap={}", cap()))]);
        through_gate(&mut gate, &h, NOW + 1);
        assert!(gate.memo().len() <= 2, "{} entries", gate.memo().len());
    }
}

#[test]
fn memo_keys_and_hashes_tell_close_requests_apart() {
    // Tagged, length-prefixed fields: moving bytes between fields changes the key.
    let mut memo = DecisionMemo::new();
    let key = |memo: &mut DecisionMemo, h: &Headers| {
        assert!(memo.build_key(&crate::wire::encode_header_map(h)).is_some());
        memo.key.clone()
    };
    let a = key(&mut memo, &base(&[("cookie", "ab"), ("cookie", "c")]));
    let b = key(&mut memo, &base(&[("cookie", "a"), ("cookie", "bc")]));
    let c = key(&mut memo, &base(&[("cookie", "abc")]));
    let d = key(&mut memo, &base(&[("authorization", "abc")]));
    let e = key(&mut memo, &base(&[("origin", "")]));
    let f = key(&mut memo, &base(&[]));
    let keys = [a, b, c, d, e, f];
    for (i, x) in keys.iter().enumerate() {
        for y in &keys[i + 1..] {
            assert_ne!(x, y);
            assert!(!same_bytes(x, y));
            assert_ne!(memo_hash(7, x).0, memo_hash(7, y).0);
        }
        assert!(same_bytes(x, &x.clone()));
    }
    // Every length around a word boundary, and a one-bit change anywhere; a byte of 0x80 or
    // more anywhere shows in the OR the hash pass returns.
    for len in 0..40 {
        let x: Vec<u8> = (0..len as u8).collect();
        assert!(memo_hash(7, &x).1 < 0x80);
        for at in 0..len {
            let mut high = x.clone();
            high[at] |= 0x80;
            assert!(memo_hash(7, &high).1 >= 0x80, "len {len} at {at}");
            assert!(or_all(&high) >= 0x80, "len {len} at {at}");
        }
        assert!(same_bytes(&x, &x.clone()));
        for at in 0..len {
            let mut y = x.clone();
            y[at] ^= 1;
            assert!(!same_bytes(&x, &y), "len {len} at {at}");
            assert_ne!(memo_hash(7, &x).0, memo_hash(7, &y).0, "len {len} at {at}");
        }
    }
    assert_ne!(
        memo_hash(1, b"same").0,
        memo_hash(2, b"same").0,
        "the seed matters"
    );
}

#[test]
fn the_probe_looks_at_every_header_decide_reads() {
    for name in HEADER_NAMES_READ {
        assert!(
            !matches!(keyed(name.as_bytes(), b"/"), Keyed::Ignored),
            "{name} is read by the view but not by the memo's probe"
        );
    }
    assert!(matches!(keyed(b"x-podgate-user", b"v"), Keyed::Name(b'x')));
    assert!(matches!(keyed(b"user-agent", b"v"), Keyed::Ignored));
    assert!(matches!(
        keyed(b":path", b"/.podgate/callback"),
        Keyed::Refused
    ));
}

#[test]
fn requests_the_probe_cannot_vouch_for_are_never_memoized() {
    let c = config();
    let cookie = format!("__Host-podgate_cap={}", cap());
    let with_raw = |name: &str, value: &[u8]| {
        let mut h = base(&[("cookie", &cookie)]);
        h.push((name.to_owned(), value.to_vec()));
        h
    };
    let cases: Vec<Headers> = vec![
        // Not UTF-8 in a header `decide` reads: the view refuses it.
        with_raw("accept", b"text/\xff"),
        with_raw("sec-fetch-mode", b"\xc3("),
        with_raw("access-control-request-headers", b"x\xff"),
        with_raw("origin", b"https://\xff"),
        // UTF-8 but not ASCII: the view takes it, the probe leaves it to the view.
        with_raw("accept", "text/html; q=\u{e9}".as_bytes()),
        with_raw("x-\u{fc}ber", b"1"),
        // A possible CORS preflight, and the reserved path.
        with_raw("access-control-request-method", b"PUT"),
        headers(&[
            (":authority", HOST),
            (":path", "/.podgate/callback?ticket=t"),
            (":method", "GET"),
            ("cookie", &cookie),
        ]),
    ];
    let clean = base(&[("cookie", &cookie)]);
    let mut forwards = 0;
    for h in &cases {
        // The clean request is memoized first: a case the probe wrongly took for it would be
        // served its forward.
        let mut gate = Gate::new(Rc::clone(&c));
        memo_agrees(&mut gate, &clean, NOW + 1);
        assert_eq!(gate.memo().len(), 1);
        for _ in 0..2 {
            if matches!(memo_agrees(&mut gate, h, NOW + 1), Decision::Forward(_)) {
                forwards += 1;
            }
        }
        assert_eq!(gate.memo().len(), 1, "memoized: {h:?}");
    }
    assert!(forwards >= 8, "{forwards}: the cases lost their point");
    // A name that is not UTF-8 (the view refuses the request) is not even keyed.
    let mut memo = DecisionMemo::new();
    let bad_name: [(&[u8], &[u8]); 2] = [(b":authority", HOST.as_bytes()), (b"x-\xff", b"1")];
    let wire = crate::wire::encode_header_map(&bad_name);
    assert_eq!(memo.build_key(&wire), None);
    assert_eq!(
        memo.build_key(b"\x05\x00\x00\x00"),
        None,
        "a map that does not decode"
    );
}

#[test]
fn a_slot_from_an_older_probe_stores_nothing() {
    let c = config();
    let h = base(&[("cookie", &format!("__Host-podgate_cap={}", cap()))]);
    let other = base(&[("cookie", "unrelated=1")]);
    let mut memo = DecisionMemo::new();
    let mut cache = VerifiedCache::new();
    let wire = crate::wire::encode_header_map(&h);
    let Probe::Miss(stale) = memo.probe(&c, &mut cache, &wire, NOW + 1) else {
        panic!("a hit in an empty memo");
    };
    // Another request is probed in between: its key is the one the memo holds now.
    let _ = memo.probe(
        &c,
        &mut cache,
        &crate::wire::encode_header_map(&other),
        NOW + 1,
    );
    let req = Request::from_headers(&h).unwrap();
    let decision = decide_memoized(&c, &mut cache, &mut memo, stale, &req, NOW + 1);
    assert!(matches!(decision, Decision::Forward(_)), "{decision:?}");
    assert!(memo.is_empty());
}

#[test]
fn a_forward_carries_what_its_response_and_its_websocket_need() {
    let c = config();
    let cookie = format!("__Host-podgate_cap={}", cap());
    let own = "https://localhost-8726-pod-alpha.example.dev";
    let h = base(&[
        ("cookie", &cookie),
        ("origin", own),
        ("upgrade", "websocket"),
    ]);
    let req = Request::from_headers(&h).unwrap();
    let Decision::Forward(f) = decide(&c, &mut VerifiedCache::new(), &req, NOW + 1) else {
        panic!("denied");
    };
    assert!(f.websocket);
    assert_eq!(
        f.response,
        Some(PodResponse::new(req.authority, req.origin))
    );
    let plain = base(&[("cookie", &cookie)]);
    let req = Request::from_headers(&plain).unwrap();
    let Decision::Forward(f) = decide(&c, &mut VerifiedCache::new(), &req, NOW + 1) else {
        panic!("denied");
    };
    assert!(!f.websocket);
    // The control plane's callback: its responses are not sanitized.
    let callback = headers(&[
        (":authority", HOST),
        (":path", "/.podgate/callback?ticket=t"),
        (":method", "GET"),
    ]);
    let req = Request::from_headers(&callback).unwrap();
    let Decision::Forward(f) = decide(&c, &mut VerifiedCache::new(), &req, NOW + 1) else {
        panic!("denied");
    };
    assert_eq!(f.response, None);
}

// ---- planted cookies, our tokens in any form, the pod's Cookie header ----------------------

const COOKIE: &str = "__Host-podgate_cap";

/// The request headers the pod would get after the edits (Envoy's replace semantics).
fn forwarded(h: &[(String, Vec<u8>)], d: &Decision) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = h
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    for edit in edits(d) {
        match edit {
            HeaderEdit::Remove(name) => out.retain(|(n, _)| n != name),
            HeaderEdit::Set(name, value) => {
                out.retain(|(n, _)| n != name);
                out.push((name.clone(), value.clone()));
            }
        }
    }
    out
}

/// Asserts that no forwarded header holds any of `tokens`, nor anything that looks like ours.
fn assert_no_trace(h: &[(String, Vec<u8>)], d: &Decision, tokens: &[&str], what: &str) {
    for (name, value) in forwarded(h, d) {
        for t in tokens {
            assert!(
                !value.contains(t),
                "{what}: {name} carries our token: {value:.80}"
            );
        }
        if matches!(name.as_str(), "authorization" | "cookie" | "podgate-token") {
            assert!(
                !crate::token::mentions_ours(&value),
                "{what}: {name}: {value:.80}"
            );
        }
        if name == "cookie" {
            assert_eq!(cookie::find_all(&value, COOKIE).count(), 0, "{what}");
        }
    }
}

/// The planted kinds a sibling's script (or a careless client) may put under our cookie name.
fn planted(kind: usize, n: usize) -> String {
    let impostor = SigningKey::ed25519_from_seed(key().kid(), [0x77; 32]).unwrap();
    let here = PodClaims {
        aud: HOST.into(),
        pod: "alpha".into(),
        jti: format!("planted-{n}"),
        ..claims()
    };
    match kind % 6 {
        // Valid-looking for this very host, signed with another key under our kid.
        0 => mint(TokenKind::Capability, &impostor, &here, NOW, 900).unwrap(),
        // A genuine capability for this host, expired.
        1 => mint(TokenKind::Capability, &key(), &here, NOW - 5000, 900).unwrap(),
        // A genuine capability for another pod (one value: signatures are randomized).
        2 => {
            static BETA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            BETA.get_or_init(|| cap_for("beta", 8726)).clone()
        }
        // A login ticket.
        3 => mint(
            TokenKind::LoginTicket,
            &ed_key(TokenKind::LoginTicket, 1),
            &here,
            NOW,
            60,
        )
        .unwrap(),
        // Garbage of every shape.
        4 => format!("junk{n}.x.y"),
        _ => format!("\"{}\"", "A".repeat(n % 40)),
    }
}

/// `count` planted cookies of every kind, then the real one among the app's; and the planted
/// values.
fn planted_header(count: usize, real: &str) -> (String, Vec<String>) {
    let values: Vec<String> = (0..count).map(|i| planted(i, i)).collect();
    let mut pairs: Vec<String> = values.iter().map(|v| format!("{COOKIE}={v}")).collect();
    pairs.push(format!("app=1; {COOKIE}={real}; theme=dark"));
    (pairs.join("; "), values)
}

#[test]
fn planted_cookies_never_lock_out_the_real_one() {
    let c = config();
    let real = cap();
    let mut sizes = vec![0, 1, 3, 10, 50];
    // As many as fit the largest Cookie header the filter scans.
    let one = planted_header(6, &real).0.len() / 7;
    sizes.push(MAX_COOKIE_HEADER_LEN / one - 2);
    for count in sizes {
        let (cookie, all) = planted_header(count, &real);
        assert!(cookie.len() <= MAX_COOKIE_HEADER_LEN, "{count}");
        let h = base(&[("cookie", &cookie)]);
        let req = Request::from_headers(&h).unwrap();
        let mut cache = VerifiedCache::new();
        let d = decide(&c, &mut cache, &req, NOW + 1);
        assert_eq!(set(&d, USER_HEADER), Some("user-1"), "{count} planted");
        assert_eq!(set(&d, "cookie"), Some("app=1; theme=dark"), "{count}");
        assert!(cache.verifications() <= MAX_VERIFICATIONS as u64, "{count}");
        let mut tokens: Vec<&str> = all.iter().map(|t| t.trim_matches('"')).collect();
        tokens.retain(|t| t.len() > 8);
        tokens.push(&real);
        assert_no_trace(&h, &d, &tokens, &format!("{count} planted"));
    }
}

#[test]
fn planted_values_cost_no_signature_check_unless_they_look_valid_for_this_host() {
    let c = config();
    let real = cap();
    // Expired genuine ones, another pod's, tickets, garbage: all refused before a signature.
    let cheap: Vec<String> = (0..40)
        .filter(|i| i % 6 != 0)
        .map(|i| format!("{COOKIE}={}", planted(i, i)))
        .collect();
    for real_first in [false, true] {
        let cookie = if real_first {
            format!("{COOKIE}={real}; {}", cheap.join("; "))
        } else {
            format!("{}; {COOKIE}={real}", cheap.join("; "))
        };
        let h = base(&[("cookie", &cookie)]);
        let req = Request::from_headers(&h).unwrap();
        let mut cache = VerifiedCache::new();
        let d = decide(&c, &mut cache, &req, NOW + 1);
        assert_eq!(
            set(&d, USER_HEADER),
            Some("user-1"),
            "real first: {real_first}"
        );
        assert_eq!(cache.verifications(), 1, "only the real one is verified");
    }
    // Without the real one: 403 if a valid capability for another pod is among them.
    let h = base(&[("cookie", &cheap.join("; "))]);
    let req = Request::from_headers(&h).unwrap();
    let mut cache = VerifiedCache::new();
    assert_eq!(
        decide(&c, &mut cache, &req, NOW + 1),
        Decision::Deny(Denial::WrongScope)
    );
    assert_eq!(cache.verifications(), 1, "the beta capability, once");
}

#[test]
fn valid_looking_forgeries_for_this_host_cost_at_most_two_signatures_per_request() {
    // The limit: 30 forgeries for this host (our typ, kid and aud, bad signatures) sent AFTER
    // the real cookie are tried first; each request checks two of them, the worker remembers
    // every failure, and the real one wins once the forgeries are used up.
    let c = config_with(|c| c.token_cache_entries = 64);
    let real = cap();
    let forged: Vec<String> = (0..30).map(|i| planted(0, i)).collect();
    let mut pairs = vec![format!("{COOKIE}={real}")];
    pairs.extend(forged.iter().map(|f| format!("{COOKIE}={f}")));
    let h = base(&[("cookie", &pairs.join("; "))]);
    let req = Request::from_headers(&h).unwrap();
    let mut cache = VerifiedCache::new();
    let mut requests = 0;
    loop {
        requests += 1;
        let before = cache.verifications();
        let d = decide(&c, &mut cache, &req, NOW + 1);
        assert!(cache.verifications() - before <= MAX_VERIFICATIONS as u64);
        if let Decision::Forward(_) = d {
            break;
        }
        assert_eq!(
            d,
            Decision::Deny(Denial::InvalidCapability {
                reason: TokenError::BadSignature,
                redirect: None
            })
        );
        assert!(requests <= 16, "locked out");
    }
    assert_eq!(
        requests, 16,
        "15 requests of two forgeries each, then the real one"
    );
    assert_eq!(cache.rejected_len(), 30);
    // From then on the real one is a cache hit: no signature at all, whatever is planted.
    let before = cache.verifications();
    let more: Vec<String> = (100..130)
        .map(|i| format!("{COOKIE}={}", planted(0, i)))
        .collect();
    let h2 = base(&[("cookie", &format!("{COOKIE}={real}; {}", more.join("; ")))]);
    let req2 = Request::from_headers(&h2).unwrap();
    assert!(matches!(
        decide(&c, &mut cache, &req2, NOW + 2),
        Decision::Forward(_)
    ));
    assert_eq!(cache.verifications(), before);
    // The longer-Path trick (planted cookies first, the real one last) costs nothing either.
    let h3 = base(&[("cookie", &format!("{}; {COOKIE}={real}", more.join("; ")))]);
    let req3 = Request::from_headers(&h3).unwrap();
    let mut fresh = VerifiedCache::new();
    assert!(matches!(
        decide(&c, &mut fresh, &req3, NOW + 2),
        Decision::Forward(_)
    ));
    assert_eq!(fresh.verifications(), 1);
}

#[test]
fn duplicates_in_several_cookie_headers_are_checked_once() {
    let c = config();
    let real = cap();
    let forged = planted(0, 1);
    let dup = vec![format!("{COOKIE}={forged}"); 20].join("; ");
    let ours = format!("a=1; {COOKIE}={real}");
    let h = base(&[("cookie", &ours), ("cookie", &dup), ("cookie", &dup)]);
    let req = Request::from_headers(&h).unwrap();
    let mut cache = VerifiedCache::new();
    let d = decide(&c, &mut cache, &req, NOW + 1);
    assert_eq!(set(&d, USER_HEADER), Some("user-1"));
    assert_eq!(
        cache.verifications(),
        2,
        "the forgery once, then the real one"
    );
    assert_eq!(set(&d, "cookie"), Some("a=1"));
    assert_no_trace(&h, &d, &[&real, &forged], "duplicates");
    // With the cache off the duplicates are still checked once.
    let off = config_with(|c| c.token_cache_entries = 0);
    let mut cache = VerifiedCache::new();
    assert!(matches!(
        decide(&off, &mut cache, &req, NOW + 1),
        Decision::Forward(_)
    ));
    assert_eq!(cache.verifications(), 2);
}

#[test]
fn planted_cookies_keep_the_memo_off_and_its_answers_right() {
    let c = config();
    let real = cap();
    let cookie = format!("{COOKIE}={}; {COOKIE}={real}", planted(1, 1));
    let h = base(&[("cookie", &cookie)]);
    let mut gate = Gate::new(Rc::clone(&c));
    for now in [NOW + 1, NOW + 2] {
        assert!(matches!(
            memo_agrees(&mut gate, &h, now),
            Decision::Forward(_)
        ));
    }
    assert!(gate.memo().is_empty(), "two candidates: never memoized");
}

/// The ways a client may hand over one of our tokens in `Authorization`, and whether each is
/// a well-formed bearer (stripped) or not (refused with 400, nothing forwarded).
fn authorization_forms(ours: &str) -> Vec<(String, bool)> {
    let forms: [(&str, bool); 20] = [
        ("Bearer {}", true),
        ("bearer {}", true),
        ("BEARER {}", true),
        ("bEaReR {}", true),
        ("Bearer   {}  ", true),
        ("\tBearer {}\t", true),
        ("Bearer app-token, Bearer {}", true),
        ("Bearer {}, Bearer app-token", true),
        ("Bearer {},Basic dXNlcjpwYXNz", true),
        ("Bearer\t{}", false),
        ("{}", false),
        ("Token {}", false),
        ("Basic {}", false),
        ("Bearer {} extra", false),
        ("Bearer {} {}", false),
        ("Bearer \"{}\"", false),
        ("\"Bearer {}\"", false),
        ("Bearer=\"{}\"", false),
        ("Bearer app-token, {}", false),
        ("Bearer {}.", false),
    ];
    forms
        .iter()
        .map(|(f, ok)| (f.replace("{}", ours), *ok))
        .collect()
}

fn ticket() -> String {
    let here = PodClaims {
        aud: HOST.into(),
        pod: "alpha".into(),
        ..claims()
    };
    mint(
        TokenKind::LoginTicket,
        &ed_key(TokenKind::LoginTicket, 1),
        &here,
        NOW,
        60,
    )
    .unwrap()
}

const API_TOKEN: &str =
    "pg_0123456789abcdef01234567_abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx";

#[test]
fn our_tokens_in_authorization_are_stripped_or_refused_in_every_form() {
    let c = config();
    let auth = cap();
    // A capability of ours that does not grant this request (another pod's).
    let other_cap = cap_for("beta", 8726);
    let tkt = ticket();
    let mut checked = (0, 0);
    for ours in [other_cap.as_str(), tkt.as_str(), API_TOKEN] {
        for (form, well_formed) in authorization_forms(ours) {
            // Another credential authenticates: the podgate-token header, or our cookie.
            for other in [
                ("podgate-token", auth.clone()),
                ("cookie", format!("{COOKIE}={auth}; app=1")),
            ] {
                let h = base(&[(other.0, &other.1), ("authorization", &form)]);
                let d = run(&c, &h);
                if well_formed {
                    assert_eq!(set(&d, USER_HEADER), Some("user-1"), "{form:.60}");
                    assert!(removed(&d, "authorization"), "{form:.60}");
                    assert_no_trace(&h, &d, &[ours, &auth], &form);
                    checked.0 += 1;
                } else {
                    assert_eq!(
                        d,
                        Decision::Deny(Denial::MalformedAuthorization),
                        "{form:.60}"
                    );
                    checked.1 += 1;
                }
            }
            // In a second Authorization header next to the app's own: the same.
            let h = base(&[
                ("podgate-token", &auth),
                ("authorization", "Bearer app-token"),
                ("authorization", &form),
            ]);
            let d = run(&c, &h);
            if well_formed {
                assert!(removed(&d, "authorization"), "{form:.60}");
                assert_no_trace(&h, &d, &[ours], &form);
            } else {
                assert_eq!(d, Decision::Deny(Denial::MalformedAuthorization));
            }
        }
    }
    assert_eq!(checked, (3 * 9 * 2, 3 * 11 * 2));
    let reply = Denial::MalformedAuthorization.reply();
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("Bearer <token>"), "{}", reply.body);
    // A well-formed ticket or API token alone is no capability: 401, and nothing forwarded.
    for ours in [tkt.as_str(), API_TOKEN] {
        let bearer = format!("Bearer {ours}");
        assert_eq!(status(&run(&c, &base(&[("authorization", &bearer)]))), 401);
    }
}

#[test]
fn the_apps_own_credentials_pass_untouched() {
    let c = config();
    let auth = cap();
    let foreign_jwt = crate::token::tests::with_header(
        &cap(),
        serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "app-1"}),
    );
    for value in [
        "Bearer app-token".to_owned(),
        format!("Bearer {foreign_jwt}"),
        "Basic dXNlcjpwYXNzd29yZA==".to_owned(),
        "Digest username=\"pg_bob\", realm=\"app\"".to_owned(),
        "Bearer\tapp-token".to_owned(),
        "app-token".to_owned(),
    ] {
        let h = base(&[("podgate-token", &auth), ("authorization", &value)]);
        let d = run(&c, &h);
        assert_eq!(set(&d, USER_HEADER), Some("user-1"), "{value}");
        assert!(!removed(&d, "authorization"), "{value}");
        let got: Vec<String> = forwarded(&h, &d)
            .into_iter()
            .filter(|(n, _)| n == "authorization")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(got, vec![value.clone()]);
    }
}

#[test]
fn the_pods_cookie_header_is_untouched_unless_a_pair_is_named_ours() {
    let c = config();
    let auth = cap();
    for cookie in [
        "xpodgate_cap=1",
        "__Host-podgate_cap2=1;;c=3",
        "x__Host-podgate_cap=1;b=2",
        "podgate_cap=1;b=2",
        "a=__Host-podgate_cap;b=\"x y\"",
        "a=1;b=2;;  c=3 ;",
        "__Host-podgate_cap;  a=1",
        " a=1 ",
    ] {
        let h = base(&[("podgate-token", &auth), ("cookie", cookie)]);
        let d = run(&c, &h);
        assert!(
            edits(&d).iter().all(|e| !matches!(e,
                HeaderEdit::Set(n, _) | HeaderEdit::Remove(n) if n == "cookie")),
            "{cookie:?}: {:?}",
            edits(&d)
        );
    }
    // With a pair of ours: exactly those go, the rest keeps its bytes.
    for (cookie, want) in [
        ("a=1;b=2;__Host-podgate_cap=x", Some("a=1;b=2")),
        ("a=1;  __Host-podgate_cap=x;b=2", Some("a=1;b=2")),
        (
            "xpodgate_cap=1; __Host-podgate_cap=x;\tz=\"q\"",
            Some("xpodgate_cap=1;\tz=\"q\""),
        ),
        ("__Host-podgate_cap=x", None),
    ] {
        let h = base(&[("podgate-token", &auth), ("cookie", cookie)]);
        let d = run(&c, &h);
        assert_eq!(set(&d, "cookie"), want, "{cookie:?}");
        assert_eq!(want.is_none(), removed(&d, "cookie"), "{cookie:?}");
    }
}

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
    // keeps the forward alive.
    let jti = claims().jti;
    gate.configure(config_with(|c| c.revoked_jti = vec![jti.clone()]));
    assert!(gate.memo().is_empty() && gate.cache().is_empty());
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

/// The gate configuration with service `openai` (its credential an `x-api-key`) published under
/// `svc-{name}.{domain}`.
pub(super) fn config_with_service() -> Rc<CompiledConfig> {
    config_with(|c| {
        c.service_host_template = Some(crate::host::DEFAULT_SERVICE_TEMPLATE.into());
        c.services.insert(
            "openai".into(),
            crate::config::ServiceEntry {
                cluster: "service_openai".into(),
                host: "api.example.com".into(),
                credential: Some(crate::config::InjectedHeader {
                    name: "x-api-key".into(),
                    value: crate::config::SecretValue("sk-upstream".into()),
                }),
                resource_path: None,
            },
        );
    })
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
    let d = run(
        &c,
        &headers(&[
            (":authority", "svc-openai.example.dev"),
            (":path", "/v1/models"),
            (":method", "GET"),
            ("authorization", &bearer),
            ("x-api-key", "the-callers-own"),
        ]),
    );
    assert_eq!(set(&d, ":authority"), Some("api.example.com"));
    assert_eq!(set(&d, CLUSTER_HEADER), Some("service_openai"));
    assert_eq!(set(&d, "x-api-key"), Some("sk-upstream"));
    assert!(removed(&d, "authorization"));
    assert_eq!(set(&d, USER_HEADER), None);
    assert_eq!(set(&d, EMAIL_HEADER), None);
    // The caller's own Authorization, with nothing of ours in it, is removed too.
    let d = run(
        &c,
        &headers(&[
            (":authority", "svc-openai.example.dev"),
            (":path", "/v1/models"),
            (":method", "GET"),
            ("podgate-token", &service_cap("openai")),
            ("authorization", "Basic dXNlcjpwYXNz"),
        ]),
    );
    assert!(removed(&d, "authorization"));
    assert_eq!(set(&d, "x-api-key"), Some("sk-upstream"));
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

#[test]
fn a_service_without_a_usable_credential_is_a_502_and_forwards_nothing() {
    let c = config_with(|c| {
        c.service_host_template = Some(crate::host::DEFAULT_SERVICE_TEMPLATE.into());
        c.services_without_credential = vec!["openai".into()];
    });
    let d = run(
        &c,
        &headers(&[
            (":authority", "svc-openai.example.dev"),
            (":path", "/v1/models"),
            (":method", "GET"),
            ("podgate-token", &service_cap("openai")),
        ]),
    );
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
