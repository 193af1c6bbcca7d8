//! Cookie-authenticated upgrades need the pod's own Origin; header tokens do not.
use crate::support::*;

const OWN: &str = "http://localhost-8726-pod-alpha.localhost:10000";
const REFUSED: &str = "WebSocket refused: Origin is not this pod's own origin";

#[test]
fn a_cookie_websocket_from_the_pods_own_origin_is_forwarded() {
    let mut vm = vm();
    let t = alpha_cap();
    for origin in [
        OWN,
        "http://localhost-8726-pod-alpha.localhost",
        "http://localhost-8726-pod-alpha.localhost:8080",
    ] {
        let sent = Req::alpha()
            .cookie(&t)
            .websocket()
            .set("origin", origin)
            .send(&mut vm);
        assert_eq!(sent.fwd1("upgrade"), Some("websocket"), "{origin}");
        assert_eq!(sent.fwd1("origin"), Some(origin));
        assert_eq!(sent.fwd1("cookie"), None);
    }
    // Tampered cookie: 401 (authentication first).
    Req::alpha()
        .cookie(&tamper_signature(&t))
        .websocket()
        .set("origin", OWN)
        .send(&mut vm)
        .invalid(crate::reasons::BAD_SIGNATURE);
}

#[test]
fn a_cookie_websocket_from_any_other_origin_is_403() {
    let mut vm = vm();
    let t = alpha_cap();
    let cases: Vec<(&str, Option<&str>)> = vec![
        ("foreign", Some("http://evil.example")),
        ("missing", None),
        ("null", Some("null")),
        ("empty", Some("")),
        (
            "other pod",
            Some("http://localhost-8726-pod-beta.localhost:10000"),
        ),
        (
            "other port",
            Some("http://localhost-8727-pod-alpha.localhost:10000"),
        ),
        (
            "https when public is http",
            Some("https://localhost-8726-pod-alpha.localhost:10000"),
        ),
        (
            "with a path",
            Some("http://localhost-8726-pod-alpha.localhost:10000/"),
        ),
        (
            "suffix",
            Some("http://localhost-8726-pod-alpha.localhost.evil.com"),
        ),
        (
            "userinfo",
            Some("http://evil@localhost-8726-pod-alpha.localhost"),
        ),
        (
            "uppercase",
            Some("HTTP://localhost-8726-pod-alpha.localhost"),
        ),
        ("no scheme", Some("localhost-8726-pod-alpha.localhost")),
        (
            "upstream host",
            Some("http://localhost-8726.pod-alpha.localhost"),
        ),
    ];
    for (name, origin) in cases {
        for upgrade in ["websocket", "WebSocket"] {
            let mut req = Req::alpha().cookie(&t).websocket().set("upgrade", upgrade);
            if let Some(origin) = origin {
                req = req.set("origin", origin);
            }
            let sent = req.send(&mut vm);
            assert_eq!(sent.error(403), REFUSED, "{name}");
        }
    }
}

#[test]
fn a_header_token_websocket_has_no_origin_rule() {
    let mut vm = vm();
    let t = alpha_cap();
    for origin in [Some("http://evil.example"), None, Some("null")] {
        for req in [Req::alpha().token(&t), Req::alpha().bearer(&t)] {
            let mut req = req.websocket();
            if let Some(origin) = origin {
                req = req.set("origin", origin);
            }
            let sent = req.send(&mut vm);
            assert_eq!(sent.fwd1("upgrade"), Some("websocket"), "{origin:?}");
        }
    }
    // A header token for another pod does not let the cookie skip the Origin rule.
    let beta = cap(&ed_key(1), "beta", PORT);
    let sent = Req::alpha()
        .token(&beta)
        .cookie(&t)
        .websocket()
        .set("origin", "http://evil.example")
        .send(&mut vm);
    assert_eq!(sent.error(403), REFUSED);
}

#[test]
fn over_https_the_own_origin_is_https_and_the_cookie_is_host_prefixed() {
    let mut cfg = config(&[&ed_key(1)]);
    cfg["public_scheme"] = "https".into();
    let mut vm = vm_with(&cfg);
    let t = alpha_cap();
    let host_cookie = format!("__Host-podgate_cap={t}");
    let sent = Req::alpha()
        .add("cookie", &host_cookie)
        .websocket()
        .set("origin", "https://localhost-8726-pod-alpha.localhost")
        .send(&mut vm);
    assert_eq!(sent.fwd1("cookie"), None);
    let sent = Req::alpha()
        .add("cookie", &host_cookie)
        .websocket()
        .set("origin", "http://localhost-8726-pod-alpha.localhost")
        .send(&mut vm);
    assert_eq!(sent.error(403), REFUSED);
    // Over https the unprefixed name is not our cookie: no capability, and it is kept.
    let sent = Req::alpha().cookie(&t).send(&mut vm);
    assert_eq!(sent.unauthorized(), crate::NO_CAPABILITY);
    let sent = Req::alpha()
        .token(&t)
        .add("cookie", &format!("podgate_cap=x; {host_cookie}"))
        .send(&mut vm);
    assert_eq!(sent.fwd1("cookie"), Some("podgate_cap=x"));
}
