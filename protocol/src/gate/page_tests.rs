//! Native tests of how a refusal is answered: a browser page load gets the page of
//! `page::for_denial`, a script the exact JSON of `Denial::reply` (with CORS headers when it runs
//! on another port of the pod).

use std::rc::Rc;

use super::*;
use crate::config::PodStatus;
use crate::token::tests::{claims, ed_key, NOW};
use crate::token::{mint, PodClaims, TokenKind};

fn cap_for(pod: &str, port: u16) -> String {
    let c = PodClaims {
        aud: format!("localhost-{port}-pod-{pod}.example.dev"),
        pod: pod.into(),
        port,
        ..claims()
    };
    mint(
        TokenKind::Capability,
        &ed_key(TokenKind::Capability, 1),
        &c,
        NOW,
        900,
    )
    .unwrap()
}

fn on(host: &str, path: &str, extra: &[(&str, &str)]) -> Outcome {
    let mut h: Vec<(String, Vec<u8>)> = vec![
        (":authority".into(), host.as_bytes().to_vec()),
        (":path".into(), path.as_bytes().to_vec()),
        (":method".into(), b"GET".to_vec()),
    ];
    h.extend(
        extra
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
    );
    let config = super::tests::config_with(|_| {});
    Gate::new(Rc::clone(&config)).on_request(&crate::wire::encode_header_map(&h), NOW + 1)
}

const NAVIGATE: [(&str, &str); 2] = [
    ("sec-fetch-mode", "navigate"),
    ("accept", "text/html,application/xhtml+xml"),
];

fn page(outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Page(reply) => reply,
        other => panic!("expected a page, got {other:?}"),
    }
}

/// Each refusal a page load can meet without a redirect: `(host, path, token)` and the status.
fn cases() -> Vec<(String, &'static str, String, u32, Denial)> {
    vec![
        // A bad token on a script-only path: 401 without a redirect.
        (
            "localhost-8726-pod-alpha.example.dev".into(),
            "/.podgate/userinfo",
            String::new(),
            401,
            Denial::NoCapability { redirect: None },
        ),
        (
            "localhost-8726-pod-alpha.example.dev".into(),
            "/",
            cap_for("beta", 8726),
            403,
            Denial::WrongScope,
        ),
        (
            "localhost-8726-pod-ghost.example.dev".into(),
            "/",
            cap_for("ghost", 8726),
            404,
            Denial::UnknownPod,
        ),
        (
            "localhost-8726-pod-sleepy.example.dev".into(),
            "/",
            cap_for("sleepy", 8726),
            503,
            Denial::NotRunning(PodStatus::Stopped),
        ),
    ]
}

#[test]
fn page_loads_get_pages_scripts_the_exact_json() {
    for (host, path, token, status, denial) in cases() {
        let mut with_token: Vec<(&str, &str)> = Vec::new();
        if !token.is_empty() {
            with_token.push(("podgate-token", token.as_str()));
        }
        // A script: the refusal itself, answered with its JSON.
        assert_eq!(on(&host, path, &with_token), Outcome::Deny(denial.clone()));
        // `fetch` asking for HTML is still a script: not a navigation.
        let mut fetch = with_token.clone();
        fetch.extend([("sec-fetch-mode", "cors"), ("accept", "text/html")]);
        assert_eq!(on(&host, path, &fetch), Outcome::Deny(denial.clone()));
        // A navigation, by Sec-Fetch-Mode or (older browsers) by Accept alone.
        let mut nav = with_token.clone();
        nav.extend(NAVIGATE);
        let mut accept_only = with_token.clone();
        accept_only.push(("accept", "text/html"));
        for headers in [nav, accept_only] {
            let reply = page(on(&host, path, &headers));
            assert_eq!(reply.status, status, "{denial:?}");
            assert_eq!(reply.reason, denial.reason());
            assert!(reply.body.starts_with("<!doctype html>"), "{}", reply.body);
            assert!(
                !reply.body.contains("10.0.0.5") && !reply.body.contains("pod_"),
                "internal addresses leak: {}",
                reply.body
            );
        }
    }
}

#[test]
fn sign_in_link_asks_for_this_page_back() {
    let mut h = vec![("podgate-token", "")];
    let token = cap_for("beta", 8726);
    h[0].1 = token.as_str();
    h.extend(NAVIGATE);
    let reply = page(on("localhost-8726-pod-alpha.example.dev", "/app?x=1", &h));
    assert!(
        reply.body.contains(
            "href=\"https://podgate.example.dev/api/proxy-auth?pod=alpha&amp;port=8726&amp;next=/app%3Fx%3D1\""
        ),
        "{}",
        reply.body
    );
}

#[test]
fn page_loads_still_redirect_to_sign_in_where_they_can() {
    let mut nav = NAVIGATE.to_vec();
    let outcome = on("localhost-8726-pod-alpha.example.dev", "/", &nav);
    assert!(
        matches!(
            outcome,
            Outcome::Deny(Denial::NoCapability { redirect: Some(_) })
        ),
        "{outcome:?}"
    );
    nav.push(("podgate-token", "not-a-token"));
    let outcome = on("localhost-8726-pod-alpha.example.dev", "/", &nav);
    assert!(
        matches!(
            outcome,
            Outcome::Deny(Denial::NoCapability { redirect: Some(_) })
                | Outcome::Deny(Denial::InvalidCapability {
                    redirect: Some(_),
                    ..
                })
        ),
        "{outcome:?}"
    );
}

#[test]
fn a_post_is_never_a_page_load() {
    let token = cap_for("sleepy", 8726);
    let mut h: Vec<(String, Vec<u8>)> = vec![
        (
            ":authority".into(),
            b"localhost-8726-pod-sleepy.example.dev".to_vec(),
        ),
        (":path".into(), b"/".to_vec()),
        (":method".into(), b"POST".to_vec()),
        ("podgate-token".into(), token.into_bytes()),
    ];
    h.extend(
        NAVIGATE
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
    );
    let config = super::tests::config_with(|_| {});
    let outcome = Gate::new(config).on_request(&crate::wire::encode_header_map(&h), NOW + 1);
    assert_eq!(
        outcome,
        Outcome::Deny(Denial::NotRunning(PodStatus::Stopped))
    );
}

/// A browser's capability for sleepy:8726: minted in a session, so it carries its token.
fn session_cap() -> String {
    let c = PodClaims {
        aud: "localhost-8726-pod-sleepy.example.dev".into(),
        pod: "sleepy".into(),
        port: 8726,
        ..claims()
    };
    crate::token::mint_in_session(
        TokenKind::Capability,
        &ed_key(TokenKind::Capability, 1),
        &c,
        Some("sid-a"),
        NOW,
        900,
    )
    .unwrap()
}

fn waking_config(wake: bool, renewal: bool) -> Rc<CompiledConfig> {
    super::tests::config_with(|c| {
        c.wake = wake;
        c.renewal = renewal.then(|| crate::renewal::Renewal {
            url: "http://cp.internal:8080/base/api/proxy-renew".into(),
            secret: "renew-secret-0123456789abcdef".into(),
            before_secs: 300,
            timeout_ms: 1000,
            lapsed_secs: 0,
        });
    })
}

fn on_config(config: &Rc<CompiledConfig>, extra: &[(&str, &str)], method: &str) -> Outcome {
    let mut h: Vec<(String, Vec<u8>)> = vec![
        (
            ":authority".into(),
            b"localhost-8726-pod-sleepy.example.dev".to_vec(),
        ),
        (":path".into(), b"/".to_vec()),
        (":method".into(), method.as_bytes().to_vec()),
    ];
    h.extend(
        extra
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
    );
    Gate::new(Rc::clone(config)).on_request(&crate::wire::encode_header_map(&h), NOW + 1)
}

#[test]
fn a_page_load_of_a_stopped_pod_asks_to_start_it_when_waking_is_on() {
    let token = session_cap();
    let mut nav = NAVIGATE.to_vec();
    nav.push(("podgate-token", token.as_str()));
    let Outcome::Wake { call, page } = on_config(&waking_config(true, true), &nav, "GET") else {
        panic!("no wake call");
    };
    assert_eq!(call.pod, "sleepy");
    assert_eq!(call.cluster, "podgate_control_plane");
    let header = |name: &str| {
        call.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header(":method"), Some("POST"));
    // At the root whatever the renew URL's path: Envoy reaches the control plane through its
    // cluster, where every route is at the root.
    assert_eq!(header(":path"), Some("/api/proxy-wake"));
    assert_eq!(header(":authority"), Some("cp.internal:8080"));
    assert_eq!(
        header(crate::renewal::RENEW_SECRET_HEADER),
        Some("renew-secret-0123456789abcdef")
    );
    assert_eq!(
        header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!((page.status, page.reason), (503, "pod_not_running"));
    assert!(
        page.body.contains("http-equiv=\"refresh\""),
        "{}",
        page.body
    );
    // No secret, token or internal address on the page.
    for hidden in ["renew-secret", token.as_str(), "cp.internal", "10.0.0.5"] {
        assert!(!page.body.contains(hidden), "{hidden}: {}", page.body);
    }
}

#[test]
fn scripts_posts_and_configs_without_waking_start_nothing() {
    let token = session_cap();
    let bearer = [("podgate-token", token.as_str())];
    let mut nav = NAVIGATE.to_vec();
    nav.extend(bearer);
    let stopped = Outcome::Deny(Denial::NotRunning(PodStatus::Stopped));
    // A script, even with waking on: the JSON 503, no call.
    let mut script = bearer.to_vec();
    script.push(("sec-fetch-mode", "cors"));
    assert_eq!(
        on_config(&waking_config(true, true), &script, "GET"),
        stopped
    );
    assert_eq!(on_config(&waking_config(true, true), &nav, "POST"), stopped);
    // Waking off, or without the renewal's call to go by: the plain page.
    for config in [waking_config(false, true), waking_config(true, false)] {
        assert!(!config.wake || config.renewal.is_some());
        let Outcome::Page(page) = on_config(&config, &nav, "GET") else {
            panic!("expected the plain page");
        };
        assert!(!page.body.contains("refresh"));
    }
    // Without a capability for the pod, nothing is woken: the sign-in redirect comes first.
    let outcome = on_config(&waking_config(true, true), &NAVIGATE, "GET");
    assert!(
        matches!(
            outcome,
            Outcome::Deny(Denial::NoCapability { redirect: Some(_) })
        ),
        "{outcome:?}"
    );
}

/// A push that leaves the rates as they were (another pod) keeps the spent buckets: the
/// client gets no new burst. Other rates start the buckets over.
#[test]
fn a_push_keeps_spent_rates_unless_the_rates_change() {
    use crate::rate::{Rate, RateLimits};
    let rates = |burst| {
        move |c: &mut crate::config::FilterConfig| {
            c.rate_limits = Some(RateLimits {
                per_user: Some(Rate {
                    per_second: 1,
                    burst,
                }),
                ..RateLimits::default()
            });
        }
    };
    let token = cap_for("alpha", 8726);
    let script = crate::wire::encode_header_map(&[
        (
            ":authority".to_owned(),
            b"localhost-8726-pod-alpha.example.dev".to_vec(),
        ),
        (":path".to_owned(), b"/".to_vec()),
        (":method".to_owned(), b"GET".to_vec()),
        ("podgate-token".to_owned(), token.as_bytes().to_vec()),
    ]);
    let forwards = |gate: &mut Gate| {
        (0..5)
            .take_while(|_| matches!(gate.on_request(&script, NOW + 1), Outcome::Forward(_)))
            .count()
    };
    let mut gate = Gate::new(super::tests::config_with(rates(2)));
    assert_eq!(forwards(&mut gate), 2);
    gate.configure(super::tests::config_with(|c| {
        rates(2)(c);
        let beta = c.pods["beta"].clone();
        c.pods.insert("beta2".into(), beta);
    }));
    assert_eq!(forwards(&mut gate), 0, "a pod push refilled the bucket");
    gate.configure(super::tests::config_with(rates(3)));
    assert_eq!(forwards(&mut gate), 3);
}

#[test]
fn spent_rates_are_429_for_memo_hits_too_page_for_browsers_json_for_scripts() {
    use crate::rate::{Limited, Rate, RateLimits};
    let config = super::tests::config_with(|c| {
        c.rate_limits = Some(RateLimits {
            per_user: Some(Rate {
                per_second: 1,
                burst: 2,
            }),
            ..RateLimits::default()
        });
    });
    let token = cap_for("alpha", 8726);
    let request = |extra: &[(&str, &str)]| {
        let mut h: Vec<(String, Vec<u8>)> = vec![
            (
                ":authority".into(),
                b"localhost-8726-pod-alpha.example.dev".to_vec(),
            ),
            (":path".into(), b"/".to_vec()),
            (":method".into(), b"GET".to_vec()),
            ("podgate-token".into(), token.as_bytes().to_vec()),
        ];
        h.extend(
            extra
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
        );
        crate::wire::encode_header_map(&h)
    };
    let mut gate = Gate::new(Rc::clone(&config));
    let script = request(&[]);
    // The burst: decided, then a memo hit.
    for _ in 0..2 {
        assert!(matches!(
            gate.on_request(&script, NOW + 1),
            Outcome::Forward(_)
        ));
    }
    let limited = Denial::RateLimited {
        scope: Limited::User,
        retry_after: 1,
    };
    assert_eq!(
        gate.on_request(&script, NOW + 1),
        Outcome::Deny(limited.clone())
    );
    let json = limited.reply();
    assert_eq!(json.status, 429);
    assert!(json.headers.contains(&("retry-after", "1".to_owned())));
    assert_eq!(
        json.body,
        r#"{"error":"Too many requests: your request rate is spent; retry in 1 s","hint":"slow down; wait for Retry-After seconds before the next request"}"#
    );
    let mut nav = NAVIGATE.to_vec();
    nav.push(("x", "1"));
    let page = page(gate.on_request(&request(&nav), NOW + 1));
    assert_eq!((page.status, page.reason), (429, "rate_limited"));
    assert!(page.headers.contains(&("retry-after", "1".to_owned())));
    assert!(
        page.body.contains("<h1>Too many requests</h1>"),
        "{}",
        page.body
    );
    // A second later, one more goes through.
    assert!(matches!(
        gate.on_request(&script, NOW + 2),
        Outcome::Forward(_)
    ));
    assert_eq!(gate.on_request(&script, NOW + 2), Outcome::Deny(limited));
}

#[test]
fn open_streams_past_the_limit_are_429_until_one_ends_and_a_push_keeps_the_count() {
    use crate::concurrent::ConcurrencyLimits;
    use crate::rate::Limited;
    let limited = |per_user| {
        super::tests::config_with(|c| {
            c.concurrency_limits = Some(ConcurrencyLimits {
                per_user: Some(per_user),
                ..ConcurrencyLimits::default()
            });
        })
    };
    let token = cap_for("alpha", 8726);
    let request = |extra: &[(&str, &str)]| {
        let mut h: Vec<(String, Vec<u8>)> = vec![
            (
                ":authority".into(),
                b"localhost-8726-pod-alpha.example.dev".to_vec(),
            ),
            (":path".into(), b"/".to_vec()),
            (":method".into(), b"GET".to_vec()),
            ("podgate-token".into(), token.as_bytes().to_vec()),
        ];
        h.extend(
            extra
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
        );
        crate::wire::encode_header_map(&h)
    };
    let mut gate = Gate::new(limited(2));
    let script = request(&[]);
    // Decided, then a memo hit: both held.
    for stream in [1, 2] {
        assert!(matches!(
            gate.on_stream_request(stream, &script, NOW + 1),
            Outcome::Forward(_)
        ));
    }
    let refused = Denial::TooManyStreams {
        scope: Limited::User,
        retry_after: 1,
    };
    assert_eq!(
        gate.on_stream_request(3, &script, NOW + 1),
        Outcome::Deny(refused.clone())
    );
    let json = refused.reply();
    assert_eq!((json.status, json.reason), (429, "too_many_streams"));
    assert!(json.headers.contains(&("retry-after", "1".to_owned())));
    let mut nav = NAVIGATE.to_vec();
    nav.push(("x", "1"));
    let page = page(gate.on_stream_request(4, &request(&nav), NOW + 1));
    assert_eq!((page.status, page.reason), (429, "too_many_streams"));
    assert!(page.headers.contains(&("retry-after", "1".to_owned())));
    // Without a stream nothing is counted.
    assert!(matches!(
        gate.on_request(&script, NOW + 1),
        Outcome::Forward(_)
    ));
    // One ends: the next gets in.
    gate.end_stream(1);
    assert!(matches!(
        gate.on_stream_request(5, &script, NOW + 1),
        Outcome::Forward(_)
    ));
    // A push keeps what is open (2 and 5) and puts the new limit in force.
    gate.configure(limited(3));
    assert_eq!(gate.streams().of_user("user-1"), 2);
    assert!(matches!(
        gate.on_stream_request(6, &script, NOW + 1),
        Outcome::Forward(_)
    ));
    assert_eq!(
        gate.on_stream_request(7, &script, NOW + 1),
        Outcome::Deny(refused)
    );
    for stream in [2, 5, 6, 7] {
        gate.end_stream(stream);
    }
    assert_eq!(gate.streams().open(), 0);
}

#[test]
fn a_refusal_to_a_script_of_another_port_of_the_pod_carries_cors_headers() {
    let host = "localhost-8726-pod-alpha.example.dev";
    let expired = {
        let c = PodClaims {
            aud: host.into(),
            pod: "alpha".into(),
            port: 8726,
            ..claims()
        };
        mint(
            TokenKind::Capability,
            &ed_key(TokenKind::Capability, 1),
            &c,
            NOW - 3600,
            900,
        )
        .unwrap()
    };
    let bearer = format!("Bearer {expired}");
    // A fetch from the pod's page on port 3000: the 401 says why, readable by that script.
    let own = "https://localhost-3000-pod-alpha.example.dev";
    let reply = page(on(
        host,
        "/api",
        &[("authorization", &bearer), ("origin", own)],
    ));
    assert_eq!(reply.status, 401);
    assert_eq!(reply.reason, "invalid_capability");
    let header = |name: &str| {
        reply
            .headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(header("access-control-allow-origin"), [own]);
    assert_eq!(header("access-control-allow-credentials"), ["true"]);
    assert!(header("access-control-expose-headers")[0].contains("www-authenticate"));
    assert_eq!(header("vary"), ["Origin"]);
    assert!(!header("www-authenticate").is_empty());
    // Another pod's page, a foreign site or no Origin: the plain refusal, no CORS.
    for origin in [
        Some("https://localhost-3000-pod-beta.example.dev"),
        Some("https://evil.example"),
        Some("null"),
        None,
    ] {
        let mut extra = vec![("authorization", bearer.as_str())];
        extra.extend(origin.map(|o| ("origin", o)));
        match on(host, "/api", &extra) {
            Outcome::Deny(denial) => assert_eq!(denial.reply().status, 401, "{origin:?}"),
            other => panic!("{origin:?}: {other:?}"),
        }
    }
}
