//! One test per answer the filter gives (forward, sign-in redirect, 400, 401, 403, 404, 503,
//! 500 when unconfigured), each with status, body and headers, and the positive case next to
//! it tampered to show it fails.
use crate::support::*;
use crate::{reasons, NO_CAPABILITY, WRONG_SCOPE};
use podgate_wasm_tests::host::Outcome;

#[test]
fn a_valid_capability_is_forwarded_and_the_same_token_tampered_is_not() {
    let mut vm = vm();
    let token = alpha_cap();
    let ok = Req::alpha().token(&token).send(&mut vm);
    assert_eq!(ok.fwd1("x-podgate-upstream"), Some("127.0.0.1:30001"));
    Req::alpha()
        .token(&tamper_signature(&token))
        .send(&mut vm)
        .invalid(reasons::BAD_SIGNATURE);
}

#[test]
fn not_a_pod_host_is_400() {
    let mut vm = vm();
    let token = alpha_cap();
    let sent = Req::get("example.com", "/").token(&token).send(&mut vm);
    let body = sent.denied(400);
    assert_eq!(
        body["error"],
        "Not a pod host: the host is not under the pod domain"
    );
    assert!(body["hint"].is_string(), "{body}");
    assert_eq!(sent.out.header("www-authenticate"), None);
    assert_eq!(sent.out.header("location"), None);
}

#[test]
fn no_capability_is_401_with_a_bearer_challenge() {
    let mut vm = vm();
    let sent = Req::alpha().set("accept", "application/json").send(&mut vm);
    assert_eq!(sent.unauthorized(), NO_CAPABILITY);
    assert_eq!(
        sent.out.header("www-authenticate"),
        Some("Bearer realm=\"podgate\"")
    );
    let body = sent.denied(401);
    assert!(body["hint"].as_str().unwrap().contains("podgate-token"));
}

#[test]
fn a_browser_navigation_is_redirected_to_the_auth_endpoint() {
    let mut vm = vm();
    let sent = Req::alpha()
        .path("/app/index.html?tab=2")
        .navigate()
        .send(&mut vm);
    assert_eq!(
        sent.redirect(),
        format!("{AUTH_URL}?pod=alpha&port=8726&next=/app/index.html%3Ftab%3D2")
    );
    assert_eq!(sent.denied(302)["error"], NO_CAPABILITY);
    // HEAD navigations too.
    let head = Req::alpha().method("HEAD").navigate().send(&mut vm);
    assert_eq!(
        head.redirect(),
        format!("{AUTH_URL}?pod=alpha&port=8726&next=/")
    );
    // The redirect names the pod and port of the host, nothing from other headers.
    let other = Req::to("beta", 3000)
        .set("sec-fetch-mode", "navigate")
        .set("x-forwarded-host", &host("alpha", PORT))
        .send(&mut vm);
    assert_eq!(
        other.redirect(),
        format!("{AUTH_URL}?pod=beta&port=3000&next=/")
    );
}

#[test]
fn accept_html_without_fetch_metadata_is_a_page_load() {
    let mut vm = vm();
    let sent = Req::alpha()
        .path("/docs")
        .set("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
        .send(&mut vm);
    assert_eq!(
        sent.redirect(),
        format!("{AUTH_URL}?pod=alpha&port=8726&next=/docs")
    );
}

#[test]
fn never_a_redirect_for_post_xhr_or_websocket() {
    let mut vm = vm();
    let cases: Vec<(&str, Req)> = vec![
        ("POST navigate", Req::alpha().method("POST").navigate()),
        (
            "POST accept html",
            Req::alpha().method("POST").set("accept", "text/html"),
        ),
        (
            "XHR (cors) accepting html",
            Req::alpha()
                .set("sec-fetch-mode", "cors")
                .set("accept", "text/html"),
        ),
        (
            "no-cors subresource",
            Req::alpha()
                .set("sec-fetch-mode", "no-cors")
                .set("accept", "text/html"),
        ),
        ("websocket navigate", Req::alpha().navigate().websocket()),
        (
            "websocket accept html",
            Req::alpha().set("accept", "text/html").websocket(),
        ),
        ("DELETE navigate", Req::alpha().method("DELETE").navigate()),
    ];
    for (name, req) in cases {
        let sent = req.send(&mut vm);
        assert_eq!(sent.status(), Some(401), "{name}: {:?}", sent.out);
        assert_eq!(sent.unauthorized(), NO_CAPABILITY, "{name}");
    }
    // The same with an invalid token: still 401, never a redirect.
    let bad = tamper_signature(&alpha_cap());
    let sent = Req::alpha()
        .method("POST")
        .navigate()
        .token(&bad)
        .send(&mut vm);
    sent.invalid(reasons::BAD_SIGNATURE);
}

#[test]
fn an_invalid_capability_is_401_or_a_redirect_for_a_page_load() {
    let mut vm = vm();
    let bad = tamper_signature(&alpha_cap());
    Req::alpha()
        .token(&bad)
        .send(&mut vm)
        .invalid(reasons::BAD_SIGNATURE);
    let page = Req::alpha().navigate().cookie(&bad).send(&mut vm);
    assert_eq!(
        page.redirect(),
        format!("{AUTH_URL}?pod=alpha&port=8726&next=/")
    );
    assert_eq!(
        page.denied(302)["error"],
        format!("Invalid capability: {}", reasons::BAD_SIGNATURE)
    );
}

#[test]
fn a_capability_for_another_pod_is_403() {
    let mut vm = vm();
    let beta = cap(&ed_key(1), "beta", PORT);
    let sent = Req::alpha().token(&beta).send(&mut vm);
    assert_eq!(sent.error(403), WRONG_SCOPE);
    assert_eq!(sent.out.header("www-authenticate"), None);
    // Positive: on its own pod it passes; tampered there, it does not.
    Req::to("beta", PORT).token(&beta).send(&mut vm).forwarded();
    Req::to("beta", PORT)
        .token(&tamper_signature(&beta))
        .send(&mut vm)
        .invalid(reasons::BAD_SIGNATURE);
    // Even for a browser page load: a 403 (as a page), not a redirect loop.
    let page = Req::alpha().navigate().cookie(&beta).send(&mut vm);
    let Outcome::LocalReply { status, body, .. } = &page.out else {
        panic!("expected the 403 page, got {:?}", page.out);
    };
    assert_eq!(*status, 403);
    assert_eq!(
        page.out.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let body = String::from_utf8_lossy(body);
    assert!(body.contains("<h1>Not for this pod</h1>"), "{body}");
}

#[test]
fn a_capability_for_another_port_is_403() {
    let mut vm = vm();
    let other_port = cap(&ed_key(1), "alpha", 8727);
    let sent = Req::alpha().token(&other_port).send(&mut vm);
    assert_eq!(sent.error(403), WRONG_SCOPE);
    Req::to("alpha", 8727)
        .token(&other_port)
        .send(&mut vm)
        .forwarded();
}

#[test]
fn an_unknown_pod_is_404_only_with_a_valid_token_for_it() {
    let mut vm = vm();
    let ghost = cap(&ed_key(1), "ghost", PORT);
    let sent = Req::to("ghost", PORT).token(&ghost).send(&mut vm);
    assert_eq!(
        sent.denied(404),
        serde_json::json!({"error": "Pod not found"})
    );
    // No existence oracle: without a token (or with one for elsewhere) an unknown pod answers
    // exactly like a known one.
    let unknown = Req::to("ghost", PORT).send(&mut vm);
    let known = Req::to("alpha", PORT).send(&mut vm);
    assert_eq!(unknown.out, known.out);
    let alpha = alpha_cap();
    let unknown = Req::to("ghost", PORT).token(&alpha).send(&mut vm);
    let known = Req::to("beta", PORT).token(&alpha).send(&mut vm);
    assert_eq!(unknown.out, known.out);
    assert_eq!(unknown.error(403), WRONG_SCOPE);
    // Tampered: 401, not 404.
    Req::to("ghost", PORT)
        .token(&tamper_signature(&ghost))
        .send(&mut vm)
        .invalid(reasons::BAD_SIGNATURE);
}

#[test]
fn a_stopped_pod_is_503_with_the_exact_body() {
    let mut vm = vm();
    let sleepy = cap(&ed_key(1), "sleepy", PORT);
    let sent = Req::to("sleepy", PORT).token(&sleepy).send(&mut vm);
    sent.denied(503);
    assert_eq!(
        sent.out.body_text().unwrap(),
        r#"{"error":"Pod is not running (status: stopped)"}"#
    );
    Req::to("sleepy", PORT)
        .token(&tamper_signature(&sleepy))
        .send(&mut vm)
        .invalid(reasons::BAD_SIGNATURE);
    // Every non-running status is a 503 naming it.
    for status in ["starting", "stopping", "error"] {
        let mut cfg = config(&[&ed_key(1)]);
        cfg["pods"]["sleepy"]["status"] = status.into();
        let mut vm = vm_with(&cfg);
        let sent = Req::to("sleepy", PORT).token(&sleepy).send(&mut vm);
        sent.denied(503);
        assert_eq!(
            sent.out.body_text().unwrap(),
            format!(r#"{{"error":"Pod is not running (status: {status})"}}"#)
        );
    }
}

#[test]
fn unconfigured_is_500_and_nothing_is_forwarded() {
    let mut vm = bare_vm();
    let sent = Req::alpha().token(&alpha_cap()).send(&mut vm);
    assert_eq!(
        sent.error(500),
        "podgate is not configured; nothing is forwarded"
    );
    // A refused first config leaves it unconfigured.
    assert!(!push(&mut vm, &serde_json::json!({"issuer": ""})));
    assert_eq!(
        Req::alpha().token(&alpha_cap()).send(&mut vm).status(),
        Some(500)
    );
    assert_eq!(Req::alpha().navigate().send(&mut vm).status(), Some(500));
}

#[test]
fn a_refused_config_keeps_the_last_good_one_serving() {
    let token = alpha_cap();
    let mut vm = vm();
    Req::alpha().token(&token).send(&mut vm).forwarded();
    // A second good config: alpha now stopped. It must be the one kept below.
    let mut second = config(&[&ed_key(1)]);
    second["pods"]["alpha"]["status"] = "stopped".into();
    assert!(push(&mut vm, &second));
    Req::alpha().token(&token).send(&mut vm).denied(503);
    let mut weak_hmac = config(&[&ed_key(1)]);
    weak_hmac["keys"]["keys"].as_array_mut().unwrap().push(
        serde_json::json!({"kty": "oct", "kid": "cap-weak", "alg": "HS256", "k": b64(&[1u8; 31])}),
    );
    let mut bad_leeway = config(&[]);
    bad_leeway["leeway_secs"] = 3600.into();
    let mut unknown_field = config(&[]);
    unknown_field["surprise"] = true.into();
    let mut bad_template = config(&[]);
    bad_template["public_host_template"] = "{pod}.{domain}".into();
    let refused = [
        b"{ not json".to_vec(),
        Vec::new(),
        b"[]".to_vec(),
        weak_hmac.to_string().into_bytes(),
        bad_leeway.to_string().into_bytes(),
        unknown_field.to_string().into_bytes(),
        bad_template.to_string().into_bytes(),
    ];
    for bytes in refused {
        assert!(
            !vm.configure(&bytes).unwrap(),
            "accepted {:?}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(!vm.is_dead());
        // Still the second config (alpha stopped), not the first and not unconfigured.
        let sent = Req::alpha().token(&token).send(&mut vm);
        assert_eq!(
            sent.out.body_text().unwrap(),
            r#"{"error":"Pod is not running (status: stopped)"}"#
        );
        Req::to("beta", PORT)
            .token(&cap(&ed_key(1), "beta", PORT))
            .send(&mut vm)
            .forwarded();
    }
}
