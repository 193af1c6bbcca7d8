//! A service reached per resource, live, through a real Envoy 1.40 fed by the control plane's
//! ADS server: service `chat` with `resource_path: "/sessions/{id}"`, shared with everyone signed
//! in, resources `a1` and `a2` owned by alice and `b1` by bob. Alice reaches `/sessions/a1` (the recording
//! upstream gets the service's credential and nothing of hers) with the browser's cookie, an API
//! token at the edge and a capability from `/v1/capabilities`; she is refused `/sessions/b1`
//! every way, a traversal from her resource to bob's in any spelling, and a path outside the
//! pattern, with nothing recorded upstream; bob reaches `/sessions/b1`; forgetting `a1` cuts her
//! capabilities for it off at the next push, while she still reaches `a2`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod xds_support;

use std::time::Duration;

use podgate_testkit::http::exchange_on;
use reqwest::header::COOKIE;
use serde_json::{json, Value};
use xds_support::*;

/// One config push, with room for a loaded machine.
const ONE_PUSH: Duration = Duration::from_secs(3);
const SECRET: &str = "renew-secret-0123456789abcdef0123456789";
const BOB: &str = "bob";
const SERVICE: &str = "chat";
/// The upstream's credential: it must reach the upstream and nothing else.
const UPSTREAM_KEY: &str = "sk-chat-3f9a1c0b7e2d4a6c";

/// `POST /v1/capabilities` for resource `id` of the service (`None`: the whole service) with
/// `session`: status and body.
async fn capability_for(stack: &Stack, session: &str, id: Option<&str>) -> (u16, Value) {
    let mut body = json!({ "service": SERVICE });
    if let Some(id) = id {
        body["resource"] = json!(id);
    }
    let resp = stack
        .http
        .post(format!("http://{}/v1/capabilities", stack.cp.http))
        .header(COOKIE, session)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// [`capability_for`] resource `id`.
async fn capability(stack: &Stack, session: &str, id: &str) -> (u16, Value) {
    capability_for(stack, session, Some(id)).await
}

/// The token of a capability [`capability_for`] must grant.
async fn granted(stack: &Stack, session: &str, id: Option<&str>) -> String {
    let (status, cap) = capability_for(stack, session, id).await;
    assert_eq!(status, 200, "{cap}");
    cap["token"].as_str().unwrap().to_owned()
}

/// The stack with service `chat` on a recording upstream, `a1` and `a2` alice's and `b1` bob's;
/// bob's session.
async fn start() -> (Stack, FakePod, String) {
    let stack = Stack::start(&["--renew-secret", SECRET]).await;
    stack.cp.create_user(BOB).await;
    let bob = stack.cp.session(BOB).await;
    let upstream = FakePod::start("upstream").await.unwrap();
    let created = stack
        .cp
        .admin(
            reqwest::Method::POST,
            "/v1/services",
            Some(json!({
                "name": SERVICE,
                "owner_id": USER,
                "sharing": "signed_in",
                "upstream_url": format!("http://127.0.0.1:{}", upstream.addr().port()),
                "credential": {"header": "x-api-key", "value": UPSTREAM_KEY},
                "resource_path": "/sessions/{id}",
            })),
        )
        .await;
    assert_eq!(created["resource_path"], "/sessions/{id}", "{created}");
    for (id, owner) in [("a1", USER), ("a2", USER), ("b1", BOB)] {
        let row = stack
            .cp
            .admin(
                reqwest::Method::PUT,
                &format!("/v1/services/{SERVICE}/resources/{id}"),
                Some(json!({ "owner": owner })),
            )
            .await;
        assert_eq!(row["owner_id"], owner, "{row}");
    }
    // In force at the edge once a path outside the pattern is refused to alice, who reaches the
    // service (to anyone else it is the answer of a service that does not exist).
    let cap = granted(&stack, &stack.session, Some("a1")).await;
    until_service_status(
        &stack,
        SERVICE,
        "/admin",
        &[("podgate-token", &cap)],
        403,
        ONE_PUSH,
    )
    .await;
    let (status, _) = get_service(&stack, SERVICE, "/admin", &[]).await;
    assert_eq!(status, 401);
    (stack, upstream, bob)
}

/// The upstream got exactly one more request, for `path`, with the service's credential and
/// none of the caller's.
fn forwarded_once(upstream: &FakePod, before: usize, path: &str) {
    let requests = upstream.requests();
    assert_eq!(requests.len(), before + 1, "{requests:?}");
    let last = requests.last().unwrap();
    let headers = format!("{:?}", last.headers);
    assert_eq!(last.path, path);
    assert_eq!(
        last.header_all("x-api-key"),
        vec![UPSTREAM_KEY],
        "{headers}"
    );
    assert!(!headers.contains("pg_"), "{headers}");
    assert!(!headers.contains("podgate_cap"), "{headers}");
    for ours in ["authorization", "podgate-token"] {
        assert!(!last.has_header(ours), "{ours}: {headers}");
    }
    assert_no_podgate_header(last);
}

/// `GET path` on the service through Envoy with `headers` answers 200, and the upstream got
/// exactly that request ([`forwarded_once`]).
async fn reaches(stack: &Stack, upstream: &FakePod, path: &str, headers: &[(&str, &str)]) {
    let before = upstream.requests().len();
    let (status, body) = get_service(stack, SERVICE, path, headers).await;
    assert_eq!(status, 200, "{path}: {body}");
    forwarded_once(upstream, before, path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_browser_reaches_its_own_resource_and_is_refused_another_users() {
    let (stack, upstream, _) = start().await;
    let host = service_host(SERVICE);

    // Signing in on /sessions/a1 gets alice a capability for that resource.
    let cookie = sign_in_on_host(&stack, &host, "/sessions/a1", &stack.session, None)
        .await
        .unwrap();
    reaches(
        &stack,
        &upstream,
        "/sessions/a1/events?since=1",
        &[("cookie", &cookie)],
    )
    .await;
    // The audit says which resource the sign-in's ticket and capability were for.
    let audit = stack
        .cp
        .admin(
            reqwest::Method::GET,
            &format!("/v1/audit?user={USER}"),
            None,
        )
        .await;
    for (kind, via) in [("ticket", "proxy-auth"), ("capability", "callback")] {
        let row = audit
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == kind && r["via"] == via && r["pod_slug"] == SERVICE)
            .unwrap_or_else(|| panic!("no {kind} row: {audit}"));
        assert_eq!(row["resource"], "/sessions/a1", "{row}");
    }

    // Bob's resource: the filter sends the page load to sign in for it, and the control plane
    // refuses with a 403 that says why; nothing reaches the upstream.
    let before = upstream.requests().len();
    let (status, body) =
        sign_in_on_host(&stack, &host, "/sessions/b1", &stack.session, Some(&cookie))
            .await
            .unwrap_err();
    assert_eq!(status, 403, "{body}");
    let refusal: Value = serde_json::from_str(&body).unwrap();
    assert!(
        refusal["error"].as_str().unwrap().contains("resource"),
        "{body}"
    );
    assert!(refusal["hint"].is_string(), "{body}");
    // A script with alice's cookie is refused at the edge.
    let (status, _) = get_service(&stack, SERVICE, "/sessions/b1", &[("cookie", &cookie)]).await;
    assert_eq!(status, 403);
    // Outside the pattern: refused whoever asks.
    let (status, _) = get_service(&stack, SERVICE, "/admin", &[("cookie", &cookie)]).await;
    assert_eq!(status, 403);
    assert_eq!(upstream.requests().len(), before, "nothing forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_tokens_and_capabilities_reach_only_their_owners_resources() {
    let (stack, upstream, bob) = start().await;

    // An API token at the edge: exchanged per resource.
    let (_, token) = create_api_token(&stack, &stack.session, "chat").await;
    let bearer = format!("Bearer {token}");
    reaches(
        &stack,
        &upstream,
        "/sessions/a1",
        &[("authorization", &bearer)],
    )
    .await;
    let before = upstream.requests().len();
    for _ in 0..2 {
        let (status, body) = get_service(
            &stack,
            SERVICE,
            "/sessions/b1",
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(status, 403, "{body}");
    }
    assert_eq!(upstream.requests().len(), before, "nothing forwarded");

    // `/v1/capabilities` mints for her own resource only.
    let (status, cap) = capability(&stack, &stack.session, "a1").await;
    assert_eq!(status, 200, "{cap}");
    assert!(
        cap["url"].as_str().unwrap().ends_with("/sessions/a1"),
        "{cap}"
    );
    let cap = cap["token"].as_str().unwrap().to_owned();
    let (status, refusal) = capability(&stack, &stack.session, "b1").await;
    assert_eq!(status, 403, "{refusal}");
    assert!(refusal["hint"].is_string(), "{refusal}");
    let (status, _) = capability(&stack, &stack.session, "nope").await;
    assert_eq!(status, 403, "an unknown resource is answered as another's");
    reaches(
        &stack,
        &upstream,
        "/sessions/a1/x",
        &[("podgate-token", &cap)],
    )
    .await;
    let before = upstream.requests().len();
    let (status, _) =
        get_service(&stack, SERVICE, "/sessions/b1", &[("podgate-token", &cap)]).await;
    assert_eq!(status, 403);
    assert_eq!(upstream.requests().len(), before, "nothing forwarded");

    // Bob reaches his.
    let bobs = granted(&stack, &bob, Some("b1")).await;
    let (status, _) =
        get_service(&stack, SERVICE, "/sessions/b1", &[("podgate-token", &bobs)]).await;
    assert_eq!(status, 200);

    // Her capability for a2, minted before a1 is forgotten.
    let a2 = granted(&stack, &stack.session, Some("a2")).await;
    reaches(&stack, &upstream, "/sessions/a2", &[("podgate-token", &a2)]).await;

    // Forgetting a1 cuts alice's capabilities and exchanged token for it off at the next push.
    stack
        .cp
        .admin(
            reqwest::Method::DELETE,
            &format!("/v1/services/{SERVICE}/resources/a1"),
            None,
        )
        .await;
    until_service_status(
        &stack,
        SERVICE,
        "/sessions/a1",
        &[("podgate-token", &cap)],
        401,
        ONE_PUSH,
    )
    .await;
    until_service_status(
        &stack,
        SERVICE,
        "/sessions/a1",
        &[("authorization", &bearer)],
        403,
        ONE_PUSH,
    )
    .await;
    let (status, _) = capability(&stack, &stack.session, "a1").await;
    assert_eq!(status, 403);
    // Her other resource is not cut: the same capability and API token still reach it.
    reaches(&stack, &upstream, "/sessions/a2", &[("podgate-token", &a2)]).await;
    reaches(
        &stack,
        &upstream,
        "/sessions/a2/y",
        &[("authorization", &bearer)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_traversal_from_ones_own_resource_to_another_is_never_forwarded() {
    let (stack, upstream, _) = start().await;
    let cap = granted(&stack, &stack.session, Some("a1")).await;
    let (_, token) = create_api_token(&stack, &stack.session, "chat").await;
    let host = service_host(SERVICE);
    let before = upstream.requests().len();
    for credential in [
        format!("podgate-token: {cap}"),
        format!("Authorization: Bearer {token}"),
    ] {
        for path in [
            "/sessions/a1/../b1",
            "/sessions/a1/%2e%2e/b1",
            "/sessions/a1/%2E%2E/b1",
            "/sessions/a1/.%2e/b1",
            "/sessions/a1%2F..%2Fb1",
            "/sessions/a1/..%2Fb1",
            "/sessions/a1%5C..%5Cb1",
            "/sessions/a1/..;/b1",
            "/sessions/a1;/../../sessions/b1",
            "/sessions/a1%252e%252e/b1",
            "/sessions//b1",
            "/sessions/a1/../../sessions/b1",
        ] {
            let (status, body) = exchange_on(
                stack.envoy.listener,
                &host,
                &format!("GET {path} HTTP/1.1\r\n{credential}\r\n"),
                b"",
            )
            .await
            .unwrap();
            assert!(
                (300..500).contains(&status),
                "{path} with {}: {status} {body}",
                &credential[..14]
            );
        }
    }
    assert_eq!(
        upstream.requests().len(),
        before,
        "nothing forwarded: {:?}",
        upstream.requests()
    );
    // The plain path still works with the same credentials.
    let (status, _) =
        get_service(&stack, SERVICE, "/sessions/a1", &[("podgate-token", &cap)]).await;
    assert_eq!(status, 200);
}

/// `PATCH /v1/services/chat` with `resource_path`; the answer shows it.
async fn patch_resource_path(stack: &Stack, pattern: Value) {
    let patched = stack
        .cp
        .admin(
            reqwest::Method::PATCH,
            &format!("/v1/services/{SERVICE}"),
            Some(json!({ "resource_path": pattern })),
        )
        .await;
    assert_eq!(patched["resource_path"], pattern, "{patched}");
}

/// Taking the pattern away with `PATCH` makes `chat` a service reached as a whole at the next
/// push: a capability for a resource stops matching and one for the whole service reaches any
/// path; giving the pattern back turns that around. A refused request reaches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resource_path_changed_with_patch_changes_what_each_capability_reaches() {
    let (stack, upstream, _) = start().await;
    let resource_cap = granted(&stack, &stack.session, Some("a1")).await;
    reaches(
        &stack,
        &upstream,
        "/sessions/a1",
        &[("podgate-token", &resource_cap)],
    )
    .await;
    // A capability for the whole service cannot be had while it is reached per resource.
    let (status, body) = capability_for(&stack, &stack.session, None).await;
    assert_eq!(status, 403, "{body}");

    patch_resource_path(&stack, Value::Null).await;
    until_service_status(
        &stack,
        SERVICE,
        "/sessions/a1",
        &[("podgate-token", &resource_cap)],
        403,
        ONE_PUSH,
    )
    .await;
    let whole_cap = granted(&stack, &stack.session, None).await;
    for path in ["/admin", "/sessions/b1"] {
        reaches(&stack, &upstream, path, &[("podgate-token", &whole_cap)]).await;
    }

    patch_resource_path(&stack, json!("/sessions/{id}")).await;
    until_service_status(
        &stack,
        SERVICE,
        "/sessions/b1",
        &[("podgate-token", &whole_cap)],
        403,
        ONE_PUSH,
    )
    .await;
    let before = upstream.requests().len();
    let (status, _) =
        get_service(&stack, SERVICE, "/admin", &[("podgate-token", &whole_cap)]).await;
    assert_eq!(status, 403);
    assert_eq!(upstream.requests().len(), before, "nothing forwarded");
    // The resources' owners were kept: alice's capability for `a1` reaches it again.
    reaches(
        &stack,
        &upstream,
        "/sessions/a1",
        &[("podgate-token", &resource_cap)],
    )
    .await;
}
