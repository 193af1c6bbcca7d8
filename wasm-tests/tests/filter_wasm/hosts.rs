//! Host grammar and routing: the pod comes from `:authority` only.
use crate::support::*;

fn bad_host_error(vm: &mut podgate_wasm_tests::host::FilterVm, authority: &[u8]) -> String {
    let token = alpha_cap();
    let sent = Req::alpha()
        .set_raw(b":authority", authority)
        .token(&token)
        .send(vm);
    let error = sent.error(400);
    assert!(error.starts_with("Not a pod host: "), "{error}");
    error.trim_start_matches("Not a pod host: ").to_owned()
}

const WRONG_DOMAIN: &str = "the host is not under the pod domain";
const NO_MATCH: &str = "the host does not match the pod host template";
const BAD_PORT: &str = "the port is not a number from 1 to 65535 without leading zeros";
const BAD_SLUG: &str = "the pod slug is not [a-z0-9]([a-z0-9-]*[a-z0-9])?";
const INVALID_CHAR: &str = "the host has characters other than lowercase a-z, 0-9, '-' and '.'";
const BAD_PORT_SUFFIX: &str = "the host's port suffix is not a number";
const LABEL_TOO_LONG: &str = "a pod host label is longer than 63 characters";
const EMPTY: &str = "the host is empty";
const TOO_LONG: &str = "the host is longer than 255 characters";

#[test]
fn suffix_confusion_is_400() {
    // Domain `example.dev`: a host that only ends in the domain text is not under it.
    let mut cfg = config(&[&ed_key(1)]);
    cfg["domain"] = "example.dev".into();
    let mut vm = vm_with(&cfg);
    for (authority, why) in [
        (
            "localhost-8726-pod-alpha.example.dev.evil.com",
            WRONG_DOMAIN,
        ),
        ("localhost-8726-pod-alpha.evilexample.dev", WRONG_DOMAIN),
        ("localhost-8726-pod-alphaexample.dev", WRONG_DOMAIN),
        ("localhost-8726-pod-alpha.example.devx", WRONG_DOMAIN),
        ("localhost-8726-pod-alpha.dev", WRONG_DOMAIN),
        ("example.dev", WRONG_DOMAIN),
        ("evil.com", WRONG_DOMAIN),
        ("x.localhost-8726-pod-alpha.example.dev", NO_MATCH),
    ] {
        assert_eq!(
            bad_host_error(&mut vm, authority.as_bytes()),
            why,
            "{authority}"
        );
    }
    // Positive control on that domain.
    let mut c = claims("alpha", PORT);
    c.aud = "localhost-8726-pod-alpha.example.dev".into();
    let token = cap_with(&ed_key(1), &c, NOW, 600);
    let sent = Req::get("localhost-8726-pod-alpha.example.dev", "/")
        .token(&token)
        .send(&mut vm);
    assert_eq!(
        sent.fwd1(":authority"),
        Some("localhost-8726.pod-alpha.example.dev")
    );
    // On `localhost`, the same shapes.
    let mut vm = crate::support::vm();
    for (authority, why) in [
        ("localhost-8726-pod-alpha.localhost.evil.com", WRONG_DOMAIN),
        ("localhost-8726-pod-alpha.evillocalhost", WRONG_DOMAIN),
        ("localhost-8726-pod-alphalocalhost", WRONG_DOMAIN),
        ("localhost", WRONG_DOMAIN),
    ] {
        assert_eq!(
            bad_host_error(&mut vm, authority.as_bytes()),
            why,
            "{authority}"
        );
    }
}

#[test]
fn malformed_labels_are_400() {
    let mut vm = vm();
    let long_slug = "a".repeat(45); // label = "localhost-8726-pod-" (19) + 45 = 64
    let ok_slug = "a".repeat(44);
    let too_long_label = format!("localhost-8726-pod-{long_slug}.localhost");
    let cases: Vec<(String, &str)> = vec![
        ("localhost-08726-pod-alpha.localhost".into(), BAD_PORT),
        ("localhost-0-pod-alpha.localhost".into(), BAD_PORT),
        ("localhost-65536-pod-alpha.localhost".into(), BAD_PORT),
        ("localhost-99999-pod-alpha.localhost".into(), BAD_PORT),
        ("localhost-123456-pod-alpha.localhost".into(), BAD_PORT),
        ("localhost--pod-alpha.localhost".into(), BAD_PORT),
        ("localhost-pod-alpha.localhost".into(), NO_MATCH),
        ("localhost-8726-pod-.localhost".into(), BAD_SLUG),
        ("localhost-8726-pod--alpha.localhost".into(), BAD_SLUG),
        ("localhost-8726-pod-alpha-.localhost".into(), BAD_SLUG),
        ("localhost-8726-pod-alpha.x.localhost".into(), BAD_SLUG),
        ("localhost-8726-pod-al_pha.localhost".into(), INVALID_CHAR),
        ("localhost_8726-pod-alpha.localhost".into(), INVALID_CHAR),
        ("localhost-8726-pod-Alpha.localhost".into(), INVALID_CHAR),
        ("LOCALHOST-8726-POD-ALPHA.LOCALHOST".into(), INVALID_CHAR),
        ("localhost-8726-pod-alpha.LOCALHOST".into(), INVALID_CHAR),
        (
            "localhost-8726-pod-alpha.xn--lcalhost-9za".into(),
            WRONG_DOMAIN,
        ),
        (
            "localhost-8726-pod-alph\u{430}.localhost".into(),
            INVALID_CHAR,
        ),
        ("localhost-8726-pod-alpha%2e.localhost".into(), INVALID_CHAR),
        (
            "user@localhost-8726-pod-alpha.localhost".into(),
            INVALID_CHAR,
        ),
        (" localhost-8726-pod-alpha.localhost".into(), INVALID_CHAR),
        ("localhost-8726-pod-alpha.localhost ".into(), INVALID_CHAR),
        (
            "localhost-8726-pod-alpha.localhost:".into(),
            BAD_PORT_SUFFIX,
        ),
        (
            "localhost-8726-pod-alpha.localhost:abc".into(),
            BAD_PORT_SUFFIX,
        ),
        (
            "localhost-8726-pod-alpha.localhost:10000:10000".into(),
            INVALID_CHAR,
        ),
        (
            "localhost-8726-pod-alpha.localhost:123456".into(),
            BAD_PORT_SUFFIX,
        ),
        (
            "localhost-8726-pod-alpha.localhost:10000.".into(),
            BAD_PORT_SUFFIX,
        ),
        ("localhost-8726-pod-alpha.localhost..".into(), WRONG_DOMAIN),
        ("localhost-8726-pod-alpha..localhost".into(), BAD_SLUG),
        ("[::1]:10000".into(), INVALID_CHAR),
        ("127.0.0.1:10000".into(), WRONG_DOMAIN),
        ("".into(), EMPTY),
        (":10000".into(), EMPTY),
        (".".into(), EMPTY),
        (too_long_label, LABEL_TOO_LONG),
        (format!("{}.localhost", "a".repeat(300)), TOO_LONG),
    ];
    for (authority, why) in cases {
        assert_eq!(
            bad_host_error(&mut vm, authority.as_bytes()),
            why,
            "{authority:?}"
        );
    }
    // The longest slug that fits one label is a pod host (unknown pod: 401 without token).
    let fits = Req::get(&format!("localhost-8726-pod-{ok_slug}.localhost"), "/").send(&mut vm);
    assert_eq!(fits.status(), Some(401));
    // A punycode-looking slug is an ordinary slug (the label itself is not an A-label).
    let puny = Req::get("localhost-8726-pod-xn--bcher-kva.localhost", "/").send(&mut vm);
    assert_eq!(puny.unauthorized(), crate::NO_CAPABILITY);
}

#[test]
fn a_port_suffix_and_one_trailing_dot_are_normalised_once() {
    let mut vm = vm();
    let token = alpha_cap();
    for authority in [
        "localhost-8726-pod-alpha.localhost:10000",
        "localhost-8726-pod-alpha.localhost.",
        "localhost-8726-pod-alpha.localhost.:10000",
        "localhost-8726-pod-alpha.localhost:80",
    ] {
        let sent = Req::get(authority, "/").token(&token).send(&mut vm);
        assert_eq!(
            sent.fwd1(":authority"),
            Some(upstream_host("alpha", PORT).as_str()),
            "{authority}"
        );
        assert_eq!(sent.fwd1("x-podgate-upstream"), Some("127.0.0.1:30001"));
    }
    for authority in [
        "localhost-8726-pod-alpha.localhost..",
        "localhost-8726-pod-alpha.localhost:10000:10000",
        "localhost-8726-pod-alpha.localhost..:10000",
    ] {
        let sent = Req::get(authority, "/").token(&token).send(&mut vm);
        assert_eq!(sent.status(), Some(400), "{authority}");
    }
}

#[test]
fn forwarded_host_headers_change_nothing() {
    let mut vm = vm();
    let alpha = alpha_cap();
    let beta_host = host("beta", PORT);
    let spoof = |req: Req| {
        req.add("x-forwarded-host", &beta_host)
            .add("x-original-host", &beta_host)
            .add("forwarded", &format!("host={beta_host};proto=http"))
            .add("x-host", &beta_host)
            .add("x-forwarded-server", &beta_host)
            .add("host", &beta_host)
    };
    // On alpha's host with alpha's token: alpha, whatever the other headers say.
    let sent = spoof(Req::alpha().token(&alpha)).send(&mut vm);
    assert_eq!(sent.fwd1("x-podgate-cluster"), None);
    assert_eq!(sent.fwd1("x-podgate-upstream"), Some("127.0.0.1:30001"));
    assert_eq!(
        sent.fwd1(":authority"),
        Some(upstream_host("alpha", PORT).as_str())
    );
    // On beta's host, alpha's token pointing the spoofed headers at alpha: 403.
    let alpha_host = host("alpha", PORT);
    let sent = Req::to("beta", PORT)
        .token(&alpha)
        .add("x-forwarded-host", &alpha_host)
        .add("x-original-host", &alpha_host)
        .add("forwarded", &format!("host={alpha_host}"))
        .send(&mut vm);
    assert_eq!(sent.error(403), crate::WRONG_SCOPE);
    // On a non-pod host, pointing at alpha: 400.
    let sent = Req::get("evil.com", "/")
        .token(&alpha)
        .add("x-forwarded-host", &alpha_host)
        .send(&mut vm);
    sent.denied(400);
    // A client x-podgate-cluster cannot pick the route either (see stripping).
    let sent = Req::alpha()
        .token(&alpha)
        .add("x-podgate-cluster", "pod_beta")
        .send(&mut vm);
    assert!(sent.fwd("x-podgate-cluster").is_empty());
    assert_eq!(sent.fwd("x-podgate-upstream"), vec!["127.0.0.1:30001"]);
    assert_eq!(sent.route_clears, 1);
}
