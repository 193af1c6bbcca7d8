//! CORS preflights are answered by the filter and never forwarded.
use crate::support::*;

fn preflight(origin: &str) -> Req {
    Req::alpha()
        .method("OPTIONS")
        .path("/api/items")
        .set("origin", origin)
        .set("access-control-request-method", "PUT")
        .set("access-control-request-headers", "content-type,x-csrf")
}

#[test]
fn a_same_pod_preflight_is_answered_204_without_a_token() {
    let mut vm = vm();
    for origin in [
        "http://localhost-8727-pod-alpha.localhost:10000",
        "http://localhost-8726-pod-alpha.localhost",
        "http://localhost-3000-pod-alpha.localhost:8080",
    ] {
        let sent = preflight(origin).send(&mut vm);
        assert_eq!(sent.status(), Some(204), "{origin}: {:?}", sent.out);
        assert_eq!(sent.route_clears, 0, "answered here, never routed");
        let h = |n: &str| sent.out.header(n);
        assert_eq!(h("access-control-allow-origin"), Some(origin));
        assert_eq!(h("access-control-allow-credentials"), Some("true"));
        assert_eq!(h("access-control-allow-methods"), Some("PUT"));
        assert_eq!(
            h("access-control-allow-headers"),
            Some("content-type, x-csrf")
        );
        assert_eq!(h("access-control-max-age"), Some("600"));
        assert!(h("vary").unwrap().contains("Origin"));
        assert_eq!(h("www-authenticate"), None);
        assert_eq!(h("location"), None);
        assert_eq!(sent.out.body_text().as_deref(), Some(""));
    }
    assert_eq!(metric(&mut vm, "podgate.preflight"), 3);
    assert_eq!(metric(&mut vm, "podgate.allowed"), 0);
}

#[test]
fn any_other_origin_gets_403_and_nothing_is_forwarded() {
    let mut vm = vm();
    let t = alpha_cap();
    let origins = [
        "http://localhost-8726-pod-beta.localhost:10000",
        "http://localhost-8726-pod-beta.localhost",
        "null",
        "http://evil.example",
        "https://localhost-8726-pod-alpha.localhost",
        "http://localhost-8726-pod-alpha.localhost/path",
        "http://LOCALHOST-8726-POD-ALPHA.LOCALHOST",
        "http://localhost-8726-pod-alpha.localhost.evil.com",
        "",
    ];
    for origin in origins {
        let sent = preflight(origin).send(&mut vm);
        let body = sent.denied(403);
        assert_eq!(
            body["error"], "CORS preflight refused: only this pod's own origins may call it",
            "{origin:?}"
        );
        assert_eq!(sent.out.header("access-control-allow-origin"), None);
        // Credentials change nothing: a preflight is never forwarded.
        let with_cookie = preflight(origin).cookie(&t).send(&mut vm);
        with_cookie.denied(403);
    }
    assert_eq!(
        metric(&mut vm, "podgate.denied.cross_origin_preflight"),
        (origins.len() * 2) as u64
    );
    // A same-pod preflight with a malformed request list: 400.
    let bad = preflight("http://localhost-8727-pod-alpha.localhost")
        .set("access-control-request-headers", "a b, c")
        .send(&mut vm);
    bad.denied(400);
    assert_eq!(metric(&mut vm, "podgate.denied.bad_preflight"), 1);
}

#[test]
fn options_without_the_preflight_fields_is_an_ordinary_request() {
    let mut vm = vm();
    // No Access-Control-Request-Method: authenticated like any request.
    let sent = Req::alpha()
        .method("OPTIONS")
        .set("origin", "http://localhost-8727-pod-alpha.localhost")
        .send(&mut vm);
    sent.unauthorized();
    let sent = Req::alpha()
        .method("OPTIONS")
        .set("origin", "http://localhost-8727-pod-alpha.localhost")
        .token(&alpha_cap())
        .send(&mut vm);
    sent.forwarded();
    // A preflight to a host that is not a pod host: 400 as every request there.
    Req::get("example.com", "/")
        .method("OPTIONS")
        .set("origin", "http://example.com")
        .set("access-control-request-method", "GET")
        .send(&mut vm)
        .denied(400);
}
