//! The filter's own refusals in a real Envoy, as a browser navigating gets them and as a script
//! gets them: a 401 that cannot redirect, a 403, a 404 and a 503 answer a page load with a small
//! HTML page, and a script with the exact JSON it always got. Nothing reaches an upstream.
//!
//! Envoy and the filter come as for `e2e_envoy.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use podgate_wasm_tests::e2e::client::Answer;
use podgate_wasm_tests::e2e::{block_on, public_host, Turn};

mod e2e_shared;
use e2e_shared::{alpha_host, send, turn, PORT};

/// Headers Chromium sends on a top-level navigation.
const BROWSER: [(&str, &str); 3] = [
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-dest", "document"),
];

/// Headers a script's `fetch` sends.
const SCRIPT: [(&str, &str); 2] = [("accept", "application/json"), ("sec-fetch-mode", "cors")];

/// `GET host path` with `headers`, and `token` as `podgate-token` when given.
async fn get(
    stack: &Turn<'_>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    token: Option<&str>,
) -> Answer {
    let mut builder = stack.client.get(host, path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if let Some(token) = token {
        builder = builder.header("podgate-token", token);
    }
    send(builder).await
}

/// A page: the status, HTML with the headers every page carries, `title` as its heading.
fn assert_page(stack: &Turn<'_>, answer: &Answer, status: u16, title: &str) {
    assert_eq!(answer.status, status, "{title}: {}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("text/html; charset=utf-8"),
        "{title}"
    );
    assert_eq!(answer.header("cache-control"), Some("no-store"), "{title}");
    assert_eq!(
        answer.header("x-content-type-options"),
        Some("nosniff"),
        "{title}"
    );
    let csp = answer.header("content-security-policy").unwrap_or_default();
    assert!(csp.starts_with("default-src 'none'"), "{title}: {csp}");
    assert!(
        answer.body.starts_with("<!doctype html>"),
        "{title}: {}",
        answer.body
    );
    assert!(
        answer.body.contains(&format!("<h1>{title}</h1>")),
        "{title}: {}",
        answer.body
    );
    // No internal address: neither an upstream address nor a cluster name (the sign-in
    // link's public control-plane URL aside, which is on loopback here too).
    let auth_url = stack.filter_config["auth_url"].as_str().unwrap_or_default();
    let body = answer.body.replace(auth_url, "");
    for internal in ["127.0.0.1", "localhost:", "pod_", "cluster"] {
        assert!(
            !body.contains(internal),
            "{title}: {internal} in {}",
            answer.body
        );
    }
    assert!(
        stack.nothing_forwarded(),
        "{title}: something reached an upstream:\n{}",
        stack.describe()
    );
}

/// The script's JSON, exactly.
fn assert_json(stack: &Turn<'_>, answer: &Answer, status: u16, body: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.body, body);
    assert!(stack.nothing_forwarded(), "{}", stack.describe());
}

#[test]
fn a_401_that_cannot_redirect_is_a_sign_in_page_for_a_browser_and_json_for_a_script() {
    block_on(async {
        let stack = turn().await;
        let auth_url = stack.filter_config["auth_url"].as_str().unwrap().to_owned();
        let host = alpha_host();
        let page = get(&stack, &host, "/.podgate/userinfo", &BROWSER, None).await;
        assert_page(&stack, &page, 401, "Sign-in needed");
        assert!(page
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer realm=")));
        let link = format!("<a href=\"{auth_url}?pod=alpha&amp;port={PORT}");
        assert!(page.body.contains(&link), "{}", page.body);
        let script = get(&stack, &host, "/.podgate/userinfo", &SCRIPT, None).await;
        assert_json(
            &stack,
            &script,
            401,
            r#"{"error":"No capability: sign in through podgate or send a capability token","hint":"send the token from POST /v1/capabilities as 'podgate-token: <token>' or 'Authorization: Bearer <token>'"}"#,
        );
    });
}

#[test]
fn a_403_is_a_page_for_a_browser_and_json_for_a_script() {
    block_on(async {
        let stack = turn().await;
        let auth_url = stack.filter_config["auth_url"].as_str().unwrap().to_owned();
        let beta = stack.minter.valid("beta", PORT).unwrap();
        let host = alpha_host();
        let page = get(&stack, &host, "/app", &BROWSER, Some(&beta)).await;
        assert_page(&stack, &page, 403, "Not for this pod");
        assert!(
            page.body.contains(&format!(
                "<a href=\"{auth_url}?pod=alpha&amp;port={PORT}&amp;next=/app\">Sign in</a>"
            )),
            "{}",
            page.body
        );
        let script = get(&stack, &host, "/app", &SCRIPT, Some(&beta)).await;
        assert_json(
            &stack,
            &script,
            403,
            r#"{"error":"This capability is for another pod or port","hint":"get a capability for this pod and port"}"#,
        );
    });
}

#[test]
fn a_404_is_a_page_for_a_browser_and_json_for_a_script() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("delta", PORT).unwrap();
        let host = public_host(PORT, "delta");
        let page = get(&stack, &host, "/", &BROWSER, Some(&token)).await;
        assert_page(&stack, &page, 404, "Pod not found");
        assert!(page.body.contains("There is no pod named delta."));
        assert!(page.body.contains("<a href=\"\">Retry</a>"));
        let script = get(&stack, &host, "/", &SCRIPT, Some(&token)).await;
        assert_json(&stack, &script, 404, r#"{"error":"Pod not found"}"#);
    });
}

#[test]
fn a_503_is_a_page_for_a_browser_and_json_for_a_script() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("gamma", PORT).unwrap();
        let host = public_host(PORT, "gamma");
        let page = get(&stack, &host, "/", &BROWSER, Some(&token)).await;
        assert_page(&stack, &page, 503, "Pod not running");
        assert!(
            page.body
                .contains("Pod gamma is not running (status: stopped)."),
            "{}",
            page.body
        );
        assert!(page.body.contains("<a href=\"\">Retry</a>"));
        // Only `Accept` (a browser without Fetch Metadata) is a navigation too.
        let accept_only = get(&stack, &host, "/", &BROWSER[..1], Some(&token)).await;
        assert_page(&stack, &accept_only, 503, "Pod not running");
        let script = get(&stack, &host, "/", &SCRIPT, Some(&token)).await;
        assert_json(
            &stack,
            &script,
            503,
            r#"{"error":"Pod is not running (status: stopped)"}"#,
        );
        // No Accept at all (curl): the JSON.
        let curl = get(&stack, &host, "/", &[], Some(&token)).await;
        assert_json(
            &stack,
            &curl,
            503,
            r#"{"error":"Pod is not running (status: stopped)"}"#,
        );
    });
}

/// Request-rate limits in a real Envoy (one worker): past a user's burst, or a pod's, the filter
/// answers `429` with `Retry-After`, as JSON to a script and as a page to a browser, and nothing
/// reaches the pod.
#[test]
fn a_spent_rate_is_a_429_with_retry_after_as_json_or_a_page() {
    use podgate_wasm_tests::e2e::fixture::now;
    use podgate_wasm_tests::e2e::{PodSpec, Stack};
    block_on(async {
        let pods = [
            PodSpec {
                slug: "alpha",
                status: "running",
                down: false,
            },
            PodSpec {
                slug: "beta",
                status: "running",
                down: false,
            },
        ];
        let stack = Stack::start("rate-limits", &pods, |c| {
            c["rate_limits"] = serde_json::json!({
                "per_user": {"per_second": 1, "burst": 5},
                "pods": {"beta": {"per_second": 1, "burst": 1}},
            });
        })
        .await
        .unwrap();
        let send_as =
            |host: String, token: String, headers: &'static [(&'static str, &'static str)]| {
                let mut builder = stack.client.get(&host, "/").header("podgate-token", token);
                for (name, value) in headers {
                    builder = builder.header(*name, *value);
                }
                send(builder)
            };

        // beta's own bucket holds one request: the second is the pod's limit. Buckets refill
        // by whole seconds of the clock Envoy shares with this test, so a pair that straddled
        // a second boundary may both pass; only then is the pair sent again.
        let beta = stack.minter.valid("beta", PORT).unwrap();
        let mut beta_ok = 0;
        let second = loop {
            let before = now();
            let first = send_as(public_host(PORT, "beta"), beta.clone(), &SCRIPT).await;
            assert_eq!(first.status, 200, "{}", first.body);
            beta_ok += 1;
            let second = send_as(public_host(PORT, "beta"), beta.clone(), &SCRIPT).await;
            if second.status == 429 {
                break second;
            }
            assert_eq!(second.status, 200, "{}", second.body);
            beta_ok += 1;
            let after = now();
            assert_ne!(
                after, before,
                "beta's second request within one second was not refused"
            );
            assert!(beta_ok < 8, "no pair of requests fell within one second");
            // The next pair starts in a later second, with beta's bucket full again.
            while now() <= after {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        assert_eq!(second.header("retry-after"), Some("1"));
        assert_eq!(
            second.json()["error"],
            "Too many requests: this pod's request rate is spent; retry in 1 s"
        );
        assert_eq!(stack.pod("beta").unwrap().requests().len(), beta_ok);

        // The user's burst on alpha, back to back: at most the burst plus one a second.
        let alpha = stack.minter.valid("alpha", PORT).unwrap();
        let started = now();
        let mut statuses = Vec::new();
        let mut refused = None;
        for _ in 0..15 {
            let answer = send_as(alpha_host(), alpha.clone(), &SCRIPT).await;
            statuses.push(answer.status);
            if answer.status == 429 && refused.is_none() {
                refused = Some(answer);
            }
        }
        // Second boundaries of the shared clock the burst crossed: each refills one token.
        let crossed = u64::try_from(now() - started).unwrap_or(0);
        let ok = statuses.iter().filter(|s| **s == 200).count() as u64;
        // beta's forwarded requests took tokens of the user's burst (a refused one gives its
        // token back); at most the full burst of 5 and one a second.
        assert!(
            ok + beta_ok as u64 >= 4 && ok <= 5 + crossed,
            "{statuses:?} across {crossed} second boundaries"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "{statuses:?}"
        );
        let refused = refused.expect("no request was refused");
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(refused.header("content-type"), Some("application/json"));
        assert_eq!(
            refused.body,
            r#"{"error":"Too many requests: your request rate is spent; retry in 1 s","hint":"slow down; wait for Retry-After seconds before the next request"}"#
        );
        assert_eq!(stack.pod("alpha").unwrap().requests().len() as u64, ok);

        // A browser gets the page, with the same status and Retry-After (a second boundary
        // may just have refilled one token: the next request is refused then).
        let mut page = send_as(alpha_host(), alpha.clone(), &BROWSER).await;
        if page.status == 200 {
            page = send_as(alpha_host(), alpha, &BROWSER).await;
        }
        assert_eq!(page.status, 429, "{}", page.body);
        assert_eq!(page.header("retry-after"), Some("1"));
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(
            page.body.contains("<h1>Too many requests</h1>"),
            "{}",
            page.body
        );
    });
}
