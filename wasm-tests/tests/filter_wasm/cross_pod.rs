//! Sibling pods are same-site (they share the base domain): SameSite does not stop pod B's page from sending
//! pod A's cookie along with a request to pod A.
use crate::support::*;

#[test]
fn a_same_origin_cookie_post_is_forwarded() {
    let mut vm = vm();
    let t = alpha_cap();
    let sent = Req::alpha()
        .method("POST")
        .cookie(&t)
        .set("origin", "http://localhost-8726-pod-alpha.localhost:10000")
        .set("sec-fetch-site", "same-origin")
        .send(&mut vm);
    sent.forwarded();
}

/// A page served with `Referrer-Policy: no-referrer` (helmet's default) posts to its own host
/// with `Origin: null`; the browser's `Sec-Fetch-Site: same-origin` vouches for it. The same
/// `null` from anywhere else is refused.
#[test]
fn a_post_from_the_pods_own_no_referrer_page_is_forwarded() {
    let mut vm = vm();
    let sent = post_from(Some("null"), "POST")
        .set("sec-fetch-site", "same-origin")
        .send(&mut vm);
    sent.forwarded();
    for site in ["same-site", "cross-site", "none"] {
        let sent = post_from(Some("null"), "POST")
            .set("sec-fetch-site", site)
            .send(&mut vm);
        assert_eq!(sent.error(403), REFUSED, "{site}");
    }
    let sent = post_from(Some("null"), "POST").send(&mut vm);
    assert_eq!(sent.error(403), REFUSED, "no Sec-Fetch-Site");
}

const REFUSED: &str =
    "Refused: a state-changing request from another origin with this pod's cookie";

fn post_from(origin: Option<&str>, method: &str) -> Req {
    let req = Req::alpha()
        .method(method)
        .path("/api/delete-everything")
        .cookie(&alpha_cap());
    match origin {
        Some(o) => req.set("origin", o),
        None => req,
    }
}

#[test]
fn a_cookie_authenticated_cross_pod_state_change_is_403() {
    // A page on pod B sends pod A's cookie along (same site): a state change needs pod A's origin.
    let mut vm = vm();
    let origins = [
        "http://localhost-8726-pod-beta.localhost:10000",
        "http://localhost-8726-pod-beta.localhost",
        "http://evil.example",
        "null",
        "",
        "https://localhost-8726-pod-alpha.localhost",
        "http://localhost-8726-pod-alpha.localhost.evil.com",
        "http://localhost-8726-pod-alpha.localhost/",
        "http://localhost-8726.pod-alpha.localhost",
    ];
    for origin in origins {
        for method in ["POST", "PUT", "PATCH", "DELETE", "post", "PROPFIND"] {
            let sent = post_from(Some(origin), method)
                .set("sec-fetch-site", "same-site")
                .send(&mut vm);
            assert_eq!(sent.error(403), REFUSED, "{method} from {origin:?}");
        }
    }
    assert_eq!(
        metric(&mut vm, "podgate.denied.cross_pod_request"),
        (origins.len() * 6) as u64
    );
    assert_eq!(metric(&mut vm, "podgate.allowed"), 0);
}

#[test]
fn what_the_cross_pod_rule_lets_through() {
    let mut vm = vm();
    let t = alpha_cap();
    // The pod's own origin, on any of its ports (the rule compares the pod, not the port).
    for origin in [
        "http://localhost-8726-pod-alpha.localhost:10000",
        "http://localhost-8726-pod-alpha.localhost",
        "http://localhost-3000-pod-alpha.localhost:10000",
    ] {
        post_from(Some(origin), "POST").send(&mut vm).forwarded();
    }
    // Safe methods from anywhere (CORS keeps the response from the other page).
    for method in ["GET", "HEAD", "OPTIONS"] {
        post_from(Some("http://localhost-8726-pod-beta.localhost"), method)
            .send(&mut vm)
            .forwarded();
    }
    // No Origin at all (not a browser; browsers send Origin on every POST).
    post_from(None, "POST").send(&mut vm).forwarded();
    // A header token is not ambient authority: no Origin rule.
    for req in [Req::alpha().token(&t), Req::alpha().bearer(&t)] {
        req.method("POST")
            .set("origin", "http://localhost-8726-pod-beta.localhost")
            .send(&mut vm)
            .forwarded();
    }
    // Tampered cookie: authentication fails first (401, not 403).
    Req::alpha()
        .method("POST")
        .cookie(&tamper_signature(&t))
        .set("origin", "http://evil.example")
        .send(&mut vm)
        .invalid(crate::reasons::BAD_SIGNATURE);
}
