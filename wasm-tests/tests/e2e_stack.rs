//! The whole stack on loopback, everything real: the `podgate` binary (SQLite, dev login, ADS),
//! Envoy 1.40 on `envoy/podgate.yaml` (clusters and the filter pushed over ADS/ECDS), and demo
//! pods (`podgate-demo-pod`) that record every connection and request. See `e2e::stack_full`.
//!
//! Most tests share one stack and seed their own pod, people and demo pods (so "nothing reached
//! the pod" is exact per test even when tests run in parallel). The control-plane restart and
//! the capability expiry start their own stacks. The browser test drives Debian's headless
//! Chromium (`scripts/browser-deps.sh`); it fails under `CI=true` without it, and skips loudly
//! otherwise.
//!
//! Needs: Envoy (`./just setup`), the filter (built if missing), `podgate` (built once per run
//! with `cargo build -p podgate`, or `$PODGATE_BIN`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use podgate_demo_pod::{marker, DemoPod};
use podgate_wasm_tests::e2e::client::Answer;
use podgate_wasm_tests::e2e::stack_full::{
    query_params, save_artifact, FullStack, Seeded, Servers, StackOptions, StaticPage, CAP_COOKIE,
    CP_HOST, SESSION_COOKIE,
};
use podgate_wasm_tests::e2e::web_client::{Page, WebClient};
use podgate_wasm_tests::e2e::webdriver::{browser_or_skip, Browser};
use podgate_wasm_tests::e2e::{block_on, EnvoyClient, WsOutcome};
use podgate_wasm_tests::host::workspace_root;
use serde_json::json;
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::Message;

const PAGE: u16 = 8726;
const API: u16 = 3000;

/// The stack most tests share (started on first use, on the process-wide runtime).
async fn shared() -> &'static FullStack {
    static SHARED: OnceCell<Result<FullStack, String>> = OnceCell::const_new();
    SHARED
        .get_or_init(|| async {
            FullStack::start(StackOptions::new("shared"))
                .await
                .map_err(|e| format!("{e:#}"))
        })
        .await
        .as_ref()
        .unwrap_or_else(|e| panic!("the shared stack did not start: {e}"))
}

/// Seeds a pod on fresh demo pods and waits until Envoy knows it; records are then empty.
async fn seed_pod(stack: &FullStack, name: &str) -> (Servers, Seeded) {
    let servers = FullStack::servers().await.unwrap();
    let seeded = stack.seed(name, &servers).await.unwrap();
    wait_known(stack, &seeded).await;
    servers.a.reset();
    servers.b.reset();
    (servers, seeded)
}

/// Waits until a request with the owner's capability is forwarded (the pod reached Envoy).
async fn wait_known(stack: &FullStack, seeded: &Seeded) {
    let owner = WebClient::new().unwrap();
    stack.dev_login(&owner, &seeded.owner).await.unwrap();
    let token = stack.capability(&owner, &seeded.slug, API).await.unwrap();
    stack
        .wait_until(
            &seeded.slug,
            API,
            &token,
            "the new pod reaches Envoy",
            |a| a.status == 200,
        )
        .await
        .unwrap();
}

fn assert_untouched(pod: &DemoPod, what: &str) {
    assert!(pod.untouched(), "{what}: {}", pod.describe());
}

/// Asserts the filter's own JSON denial and that no demo pod saw anything.
fn assert_denied(answer: &Answer, status: u16, servers: &Servers, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    assert!(
        answer.json()["error"].is_string(),
        "{what}: JSON error, got {:?}",
        answer.body
    );
    assert_untouched(&servers.a, what);
    assert_untouched(&servers.b, what);
}

fn hop_location(page: &Page, i: usize) -> String {
    page.hops
        .get(i)
        .and_then(|h| h.location.clone())
        .unwrap_or_else(|| panic!("hop {i} has no Location:\n{}", page.trail()))
}

/// The browser flow for `user` on `port`: dev login, then the pod URL, followed to the end.
async fn browser_flow(
    stack: &FullStack,
    seeded: &Seeded,
    user: &str,
    port: u16,
    path: &str,
) -> (WebClient, Page) {
    let web = WebClient::new().unwrap();
    stack.dev_login(&web, user).await.unwrap();
    let page = web
        .navigate(&stack.pod_url(&seeded.slug, port, path))
        .await
        .unwrap();
    (web, page)
}

// ---------------------------------------------------------------------------------------------
// Browser flow

#[test]
fn browser_flow_dev_login_pod_url_proxy_auth_callback_cookie_page() {
    block_on(async {
        let stack = shared().await;
        let (servers, seeded) = seed_pod(stack, "web").await;
        let path = "/index.html?from=shared-link";
        let (web, page) = browser_flow(stack, &seeded, &seeded.member, PAGE, path).await;
        let trail = page.trail();

        // 1. The pod URL without a cookie: the filter redirects to /api/proxy-auth for that
        //    pod, port and path.
        assert_eq!(page.hops.len(), 4, "{trail}");
        assert_eq!(page.hops[0].status, 302, "{trail}");
        let to_auth = hop_location(&page, 0);
        assert!(
            to_auth.starts_with(&stack.cp_url("/api/proxy-auth?")),
            "{to_auth}"
        );
        let q = query_params(&to_auth);
        assert_eq!(q.get("pod"), Some(&seeded.slug));
        assert_eq!(q.get("port").map(String::as_str), Some("8726"));
        assert_eq!(q.get("next").map(String::as_str), Some(path));

        // 2. /api/proxy-auth with the session: a one-time ticket on the pod host's callback.
        assert_eq!(page.hops[1].status, 302, "{trail}");
        let to_callback = hop_location(&page, 1);
        let callback_prefix = stack.pod_url(&seeded.slug, PAGE, "/.podgate/callback?");
        assert!(to_callback.starts_with(&callback_prefix), "{to_callback}");
        let ticket = query_params(&to_callback)
            .get("ticket")
            .cloned()
            .expect("a ticket");
        assert_eq!(
            page.hops[1].headers.get("cache-control").unwrap(),
            "no-store"
        );

        // 3. The callback (through Envoy to the control plane): the capability cookie, then
        //    back to the path, with no token in the final URL.
        assert_eq!(page.hops[2].status, 302, "{trail}");
        assert_eq!(hop_location(&page, 2), path);
        let pod_host = stack.pod_host(&seeded.slug, PAGE);
        let cookie = web
            .jar
            .get(&pod_host, CAP_COOKIE)
            .expect("capability cookie");
        assert!(cookie.host_only && cookie.attribute("domain").is_none());
        assert_eq!(cookie.attribute("httponly").as_deref(), Some(""));
        assert_eq!(cookie.attribute("samesite").as_deref(), Some("Lax"));
        assert_eq!(cookie.attribute("path").as_deref(), Some("/"));
        assert!(!page.url.contains("ticket"), "{}", page.url);

        // 4. The page, from server A, for the member.
        assert_eq!(page.status, 200, "{trail}\n{}", page.body);
        assert!(page.body.contains(&marker(PAGE)), "{}", page.body);
        assert!(page.body.contains("server A"));
        assert!(page.body.contains(&seeded.member));

        // The pod got exactly the page request: Host rewritten, identity headers set, no
        // credential of ours (no cookie, no ticket, no session).
        let seen = servers.a.requests();
        assert_eq!(seen.len(), 1, "{}", servers.a.describe());
        let seen = &seen[0];
        assert_eq!(seen.path, path);
        assert_eq!(
            seen.header_all("host"),
            vec![stack.upstream_host(&seeded.slug, PAGE)]
        );
        assert_eq!(seen.header("x-podgate-user"), Some(seeded.member.as_str()));
        assert_eq!(
            seen.header("x-podgate-email"),
            Some(seeded.member_email.as_str())
        );
        assert!(!seen.has_header("cookie"), "{seen:?}");
        assert!(!seen.mentions(&cookie.value));
        assert!(!seen.mentions(&ticket));
        assert!(!seen.mentions(SESSION_COOKIE));
        assert_untouched(&servers.b, "server B");

        // The cookie is host-only: it goes to this pod port only; the session stays on the
        // control plane's host.
        assert!(web
            .jar
            .get(&stack.pod_host(&seeded.slug, API), CAP_COOKIE)
            .is_none());
        assert!(web.jar.get(&pod_host, SESSION_COOKIE).is_none());
        assert!(web.jar.get(CP_HOST, SESSION_COOKIE).is_some());

        // A second visit goes straight to the page.
        servers.a.reset();
        let again = web
            .navigate(&stack.pod_url(&seeded.slug, PAGE, "/"))
            .await
            .unwrap();
        assert_eq!(again.hops.len(), 1, "{}", again.trail());
        assert_eq!(again.status, 200);
        assert_eq!(servers.a.requests().len(), 1);
    });
}

#[test]
fn shared_link_in_a_fresh_browser_goes_through_login_and_lands_on_the_page() {
    block_on(async {
        let stack = shared().await;
        let (servers, seeded) = seed_pod(stack, "link").await;
        let web = WebClient::new().unwrap();
        let path = "/index.html?tab=preview";
        let page = web
            .navigate(&stack.pod_url(&seeded.slug, PAGE, path))
            .await
            .unwrap();
        // pod URL → /api/proxy-auth → (not signed in) the login URL, carrying the way back.
        let trail = page.trail();
        assert_eq!(page.hops[0].status, 302, "{trail}");
        assert_eq!(page.hops[1].status, 302, "{trail}");
        let login = hop_location(&page, 1);
        assert!(login.starts_with(&stack.cp_url("/dev/login?")), "{login}");
        let back = query_params(&login).get("next").cloned().unwrap();
        assert!(
            back.starts_with(&stack.cp_url("/api/proxy-auth?")),
            "{back}"
        );
        assert_eq!(
            query_params(&back).get("next").map(String::as_str),
            Some(path)
        );
        assert_untouched(&servers.a, "before signing in");

        // Signing in (the dev login takes the user in the URL) continues to the page.
        let page = web
            .navigate(&format!("{login}&user={}", seeded.member))
            .await
            .unwrap();
        assert_eq!(page.status, 200, "{}\n{}", page.trail(), page.body);
        assert!(page.body.contains(&marker(PAGE)));
        let seen = servers.a.requests();
        assert_eq!(seen.len(), 1, "{}", servers.a.describe());
        assert_eq!(seen[0].path, path);
    });
}

#[test]
fn invalid_cookie_page_load_redirects_fetch_gets_401_and_nothing_reaches_the_pod() {
    block_on(async {
        let stack = shared().await;
        let (servers, seeded) = seed_pod(stack, "bad").await;
        let web = WebClient::new().unwrap();
        let host = stack.pod_host(&seeded.slug, PAGE);
        web.jar.set_raw(&host, CAP_COOKIE, "not.a.token");
        let url = stack.pod_url(&seeded.slug, PAGE, "/deep/path?x=1");

        let load = web
            .send(
                reqwest::Method::GET,
                &url,
                podgate_wasm_tests::e2e::web_client::Kind::Navigate,
                &[],
                None,
            )
            .await
            .unwrap();
        assert_eq!(load.status, 302, "{}", load.body);
        let location = hop_location(&load, 0);
        assert!(location.starts_with(&stack.cp_url("/api/proxy-auth?")));
        assert_eq!(
            query_params(&location).get("next").map(String::as_str),
            Some("/deep/path?x=1")
        );

        let fetch = web.fetch(&url, &[]).await.unwrap();
        assert_eq!(fetch.status, 401, "{}", fetch.body);
        assert!(fetch.header("www-authenticate").is_some());
        assert!(fetch.json()["error"].is_string());

        // Someone else's valid capability (pod A's owner on port 3000) on port 8726: 403.
        let owner = WebClient::new().unwrap();
        stack.dev_login(&owner, &seeded.owner).await.unwrap();
        let other_port = stack.capability(&owner, &seeded.slug, API).await.unwrap();
        let answer = EnvoyClient::send(
            stack
                .envoy_client
                .get(&host, "/")
                .header("podgate-token", &other_port),
        )
        .await
        .unwrap();
        assert_denied(&answer, 403, &servers, "a capability for another port");
        assert_untouched(&servers.a, "invalid cookie");
    });
}

// ---------------------------------------------------------------------------------------------
// Script flow

#[test]
fn script_flow_capability_in_a_header_reaches_the_json_api() {
    block_on(async {
        let stack = shared().await;
        let (servers, seeded) = seed_pod(stack, "api").await;
        let web = WebClient::new().unwrap();

        // Not signed in: no capability.
        let refused = web
            .post_json(
                &stack.cp_url("/v1/capabilities"),
                json!({"pod": seeded.slug, "port": API}),
            )
            .await
            .unwrap();
        assert_eq!(refused.status, 401, "{}", refused.body);

        stack.dev_login(&web, &seeded.member).await.unwrap();
        let minted = web
            .post_json(
                &stack.cp_url("/v1/capabilities"),
                json!({"pod": seeded.slug, "port": API}),
            )
            .await
            .unwrap();
        assert_eq!(minted.status, 200, "{}", minted.body);
        let body = minted.json();
        let token = body["token"].as_str().unwrap().to_owned();
        let url = body["url"]
            .as_str()
            .unwrap()
            .trim_end_matches('/')
            .to_owned();
        assert_eq!(url, stack.pod_origin(&seeded.slug, API));
        assert!(body["expires_at"].is_string());

        // A script: no cookie jar, the token in `podgate-token`.
        let script = WebClient::new().unwrap();
        let info = script
            .fetch(&format!("{url}/api/info"), &[("podgate-token", &token)])
            .await
            .unwrap();
        assert_eq!(info.status, 200, "{}", info.body);
        let info = info.json();
        assert_eq!(info["pod"], "server A");
        assert_eq!(info["service_port"], API);
        assert_eq!(info["user"], seeded.member.as_str());
        assert_eq!(info["email"], seeded.member_email.as_str());
        assert_eq!(
            info["host"],
            stack.upstream_host(&seeded.slug, API).as_str()
        );

        // And as `Authorization: Bearer`.
        let bearer = format!("Bearer {token}");
        let info = script
            .fetch(&format!("{url}/api/info"), &[("authorization", &bearer)])
            .await
            .unwrap();
        assert_eq!(info.status, 200, "{}", info.body);

        let seen = servers.a.requests();
        assert_eq!(seen.len(), 2, "{}", servers.a.describe());
        for r in &seen {
            assert!(!r.has_header("podgate-token"), "{r:?}");
            assert!(!r.has_header("authorization"), "{r:?}");
            assert!(!r.mentions(&token), "{r:?}");
        }

        // The outsider gets the same 404 as for a pod that does not exist.
        let outsider = WebClient::new().unwrap();
        stack.dev_login(&outsider, &seeded.outsider).await.unwrap();
        let theirs = outsider
            .post_json(
                &stack.cp_url("/v1/capabilities"),
                json!({"pod": seeded.slug, "port": API}),
            )
            .await
            .unwrap();
        let nobodys = outsider
            .post_json(
                &stack.cp_url("/v1/capabilities"),
                json!({"pod": "no-such-pod", "port": API}),
            )
            .await
            .unwrap();
        assert_eq!(theirs.status, 404, "{}", theirs.body);
        assert_eq!(
            (theirs.status, &theirs.body),
            (nobodys.status, &nobodys.body)
        );

        // No token: 401 for a script, nothing forwarded.
        servers.a.reset();
        let none = script.fetch(&format!("{url}/api/info"), &[]).await.unwrap();
        assert_eq!(none.status, 401, "{}", none.body);
        assert_untouched(&servers.a, "script without a token");
    });
}

// ---------------------------------------------------------------------------------------------
// WebSockets

#[test]
fn websocket_with_the_cookie_and_the_pods_own_origin_echoes() {
    block_on(async {
        let stack = shared().await;
        let (servers, seeded) = seed_pod(stack, "ws").await;
        let (web, page) = browser_flow(stack, &seeded, &seeded.member, PAGE, "/").await;
        assert_eq!(page.status, 200, "{}", page.trail());
        servers.a.reset();
        let host = stack.pod_host(&seeded.slug, PAGE);
        let cookie = web.jar.header(&host).unwrap();
        let origin = stack.pod_origin(&seeded.slug, PAGE);

        let outcome = stack
            .websocket(
                &seeded.slug,
                PAGE,
                &[("cookie", &cookie), ("origin", &origin)],
            )
            .await
            .unwrap();
        let WsOutcome::Open(mut ws) = outcome else {
            panic!("refused: {outcome:?}\n{}", stack.logs());
        };
        for i in 0..3 {
            let text = format!("hello {i}");
            ws.send(Message::text(text.clone())).await.unwrap();
            let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(echoed, Message::text(text));
        }
        ws.as_mut().close(None).await.ok();
        assert_eq!(servers.a.ws_messages(), 3);
        let seen = servers.a.requests();
        assert_eq!(seen.len(), 1, "{}", servers.a.describe());
        assert!(seen[0].websocket);
        assert_eq!(seen[0].path, "/ws");
        assert!(!seen[0].has_header("cookie"), "{:?}", seen[0]);
        assert_eq!(
            seen[0].header("x-podgate-user"),
            Some(seeded.member.as_str())
        );

        // Cross-site WebSocket hijacking: the same cookie from another pod's page, from the
        // control plane's page, or with no Origin at all is refused before the pod.
        servers.a.reset();
        let other_pod = stack.pod_origin("evil", PAGE);
        let cp_origin = stack.cp_url("");
        for origin in [Some(other_pod.as_str()), Some(cp_origin.as_str()), None] {
            let mut headers = vec![("cookie", cookie.as_str())];
            if let Some(o) = origin {
                headers.push(("origin", o));
            }
            match stack.websocket(&seeded.slug, PAGE, &headers).await.unwrap() {
                WsOutcome::Refused { status, .. } => assert_eq!(status, 403, "origin {origin:?}"),
                WsOutcome::Open(_) => panic!("origin {origin:?}: the WebSocket opened"),
            }
        }
        assert_untouched(&servers.a, "foreign-origin WebSockets");
        assert_untouched(&servers.b, "foreign-origin WebSockets");
    });
}

// ---------------------------------------------------------------------------------------------
// Pod states, unknown pods, removed members

#[test]
fn stopped_pod_answers_503_with_its_status_and_comes_back() {
    block_on(async {
        let stack = shared().await;
        let (servers, seeded) = seed_pod(stack, "stop").await;
        let (web, page) = browser_flow(stack, &seeded, &seeded.member, PAGE, "/").await;
        assert_eq!(page.status, 200);
        let token = stack.capability(&web, &seeded.slug, API).await.unwrap();

        stack
            .admin
            .put(
                &format!("/v1/pods/{}/status", seeded.slug),
                json!({"status": "stopped"}),
            )
            .await
            .unwrap();
        let answer = stack
            .wait_until(&seeded.slug, API, &token, "the pod stops", |a| {
                a.status == 503
            })
            .await
            .unwrap();
        // Polls that ran before the change reached Envoy were forwarded; count from here.
        servers.a.reset();
        assert_eq!(
            answer.json()["error"],
            "Pod is not running (status: stopped)",
            "{}",
            answer.body
        );
        // A page load with the cookie gets the same answer as a page (no redirect loop).
        let load = web
            .navigate(&stack.pod_url(&seeded.slug, PAGE, "/"))
            .await
            .unwrap();
        assert_eq!(load.status, 503, "{}", load.trail());
        assert_eq!(
            load.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(
            load.body.contains(&format!(
                "Pod {} is not running (status: stopped).",
                seeded.slug
            )),
            "{}",
            load.body
        );
        // And a WebSocket: refused before the pod.
        let host = stack.pod_host(&seeded.slug, PAGE);
        let cookie = web.jar.header(&host).unwrap();
        let origin = stack.pod_origin(&seeded.slug, PAGE);
        match stack
            .websocket(
                &seeded.slug,
                PAGE,
                &[("cookie", &cookie), ("origin", &origin)],
            )
            .await
            .unwrap()
        {
            WsOutcome::Refused { status, .. } => assert_eq!(status, 503),
            WsOutcome::Open(_) => panic!("a WebSocket to a stopped pod opened"),
        }
        assert_untouched(&servers.a, "stopped pod");

        stack
            .admin
            .put(
                &format!("/v1/pods/{}/status", seeded.slug),
                json!({"status": "running"}),
            )
            .await
            .unwrap();
        stack
            .wait_until(&seeded.slug, API, &token, "the pod runs again", |a| {
                a.status == 200
            })
            .await
            .unwrap();
    });
}

#[test]
fn unknown_pod_answers_404_at_proxy_auth_and_at_the_filter() {
    block_on(async {
        let stack = shared().await;
        let (servers, seeded) = seed_pod(stack, "gone").await;
        let web = WebClient::new().unwrap();
        stack.dev_login(&web, &seeded.member).await.unwrap();

        // /api/proxy-auth for a pod that does not exist: 404, no ticket.
        let page = web
            .send(
                reqwest::Method::GET,
                &stack.cp_url("/api/proxy-auth?pod=no-such-pod&port=8726"),
                podgate_wasm_tests::e2e::web_client::Kind::Navigate,
                &[],
                None,
            )
            .await
            .unwrap();
        assert_eq!(page.status, 404, "{}", page.body);
        assert!(page.header("location").is_none());

        // A capability minted while the pod existed, used after it was deleted: the filter's
        // 404, nothing forwarded.
        let token = stack.capability(&web, &seeded.slug, API).await.unwrap();
        stack
            .admin
            .delete(&format!("/v1/pods/{}", seeded.slug))
            .await
            .unwrap();
        let answer = stack
            .wait_until(&seeded.slug, API, &token, "the pod is deleted", |a| {
                a.status == 404
            })
            .await
            .unwrap();
        servers.a.reset();
        let answer2 = EnvoyClient::send(
            stack
                .envoy_client
                .get(&stack.pod_host(&seeded.slug, API), "/api/info")
                .header("podgate-token", &token),
        )
        .await
        .unwrap();
        assert_denied(&answer2, 404, &servers, "deleted pod");
        assert_eq!(answer.body, answer2.body);
    });
}

#[test]
fn user_removed_from_the_team_is_refused_at_the_next_proxy_auth() {
    block_on(async {
        let stack = shared().await;
        let (servers, seeded) = seed_pod(stack, "kick").await;
        let (web, page) = browser_flow(stack, &seeded, &seeded.member, PAGE, "/").await;
        assert_eq!(page.status, 200, "{}", page.trail());
        // A ticket minted before the removal, not yet used.
        let pending = web
            .send(
                reqwest::Method::GET,
                &stack.cp_url(&format!("/api/proxy-auth?pod={}&port={API}", seeded.slug)),
                podgate_wasm_tests::e2e::web_client::Kind::Navigate,
                &[],
                None,
            )
            .await
            .unwrap();
        assert_eq!(pending.status, 302, "{}", pending.body);
        let pending_callback = hop_location(&pending, 0);
        servers.a.reset();

        stack
            .admin
            .delete(&format!(
                "/v1/teams/{}/members/{}",
                seeded.team, seeded.member
            ))
            .await
            .unwrap();

        // The next /api/proxy-auth: the uniform 404, no ticket.
        for port in [PAGE, API] {
            let refused = web
                .send(
                    reqwest::Method::GET,
                    &stack.cp_url(&format!("/api/proxy-auth?pod={}&port={port}", seeded.slug)),
                    podgate_wasm_tests::e2e::web_client::Kind::Navigate,
                    &[],
                    None,
                )
                .await
                .unwrap();
            assert_eq!(refused.status, 404, "port {port}: {}", refused.body);
            assert!(refused.header("location").is_none());
        }
        // The ticket minted before the removal is refused at the callback (access is read
        // again), with our cookie cleared; nothing reaches the pod.
        let used = web.navigate(&pending_callback).await.unwrap();
        assert_eq!(used.status, 400, "{}", used.trail());
        assert!(used.hops[0]
            .set_cookies
            .iter()
            .any(|c| c.starts_with(&format!("{CAP_COOKIE}=;")) && c.contains("Max-Age=0")));
        // Scripts too.
        let minted = web
            .post_json(
                &stack.cp_url("/v1/capabilities"),
                json!({"pod": seeded.slug, "port": API}),
            )
            .await
            .unwrap();
        assert_eq!(minted.status, 404, "{}", minted.body);
        assert_untouched(&servers.a, "removed member");
        assert_untouched(&servers.b, "removed member");
    });
}

// ---------------------------------------------------------------------------------------------
// Config changes over ADS

#[test]
fn pod_moved_to_another_server_traffic_follows() {
    block_on(async {
        let stack = shared().await;
        let (servers, seeded) = seed_pod(stack, "move").await;
        let (web, page) = browser_flow(stack, &seeded, &seeded.member, PAGE, "/").await;
        assert!(page.body.contains("server A"), "{}", page.body);
        let token = stack.capability(&web, &seeded.slug, API).await.unwrap();

        stack
            .admin
            .patch(
                &format!("/v1/pods/{}", seeded.slug),
                json!({"server_id": seeded.server_b, "nginx_port": servers.b.addr().port()}),
            )
            .await
            .unwrap();
        stack
            .wait_until(
                &seeded.slug,
                API,
                &token,
                "traffic moves to server B",
                |a| a.json()["pod"] == "server B",
            )
            .await
            .unwrap();
        servers.a.reset();
        servers.b.reset();

        // The same cookie, the same URL: now served by B; A sees nothing.
        let page = web
            .navigate(&stack.pod_url(&seeded.slug, PAGE, "/"))
            .await
            .unwrap();
        assert_eq!(page.status, 200, "{}", page.trail());
        assert!(page.body.contains("server B"), "{}", page.body);
        assert_eq!(servers.b.requests().len(), 1, "{}", servers.b.describe());
        assert_untouched(&servers.a, "after the move");
    });
}

#[test]
fn a_pod_nothing_listens_for_gets_the_clear_503_over_ads_too() {
    // The local reply mapping of envoy/podgate.yaml on the original-destination cluster the
    // control plane pushes: the pod and port the filter parsed, never the pod's address.
    block_on(async {
        let stack = shared().await;
        let (servers, seeded) = seed_pod(stack, "refuse").await;
        let owner = WebClient::new().unwrap();
        stack.dev_login(&owner, &seeded.owner).await.unwrap();
        let token = stack.capability(&owner, &seeded.slug, API).await.unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        stack
            .admin
            .patch(
                &format!("/v1/pods/{}", seeded.slug),
                json!({"nginx_port": closed}),
            )
            .await
            .unwrap();
        let answer = stack
            .wait_until(
                &seeded.slug,
                API,
                &token,
                "the pod's nginx port is closed",
                |a| a.status == 503,
            )
            .await
            .unwrap();
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let json = answer.json();
        assert!(
            json["error"]
                .as_str()
                .is_some_and(|e| e.contains("Nothing is listening")),
            "{}",
            answer.body
        );
        assert_eq!(json["pod"], seeded.slug.as_str(), "{}", answer.body);
        assert_eq!(json["port"], API.to_string(), "{}", answer.body);
        for internal in ["127.0.0.1", &closed.to_string(), "podgate_pods"] {
            assert!(
                !answer.body.contains(internal),
                "{internal} in {}",
                answer.body
            );
        }
        servers.a.reset();
        servers.b.reset();
    });
}

#[test]
fn control_plane_killed_cookies_keep_working_and_back_envoy_reconnects() {
    block_on(async {
        let mut stack = FullStack::start(StackOptions::new("restart"))
            .await
            .unwrap();
        let (servers, seeded) = seed_pod(&stack, "cp").await;
        let (web, page) = browser_flow(&stack, &seeded, &seeded.member, PAGE, "/").await;
        assert_eq!(page.status, 200, "{}", page.trail());
        let token = stack.capability(&web, &seeded.slug, API).await.unwrap();
        let connected = stack
            .envoy
            .counter("control_plane.connected_state")
            .await
            .unwrap();
        assert_eq!(connected, 1, "Envoy is on the ADS stream");

        stack.cp.kill().unwrap();
        assert!(!stack.cp.is_running());
        let deadline = Instant::now() + Duration::from_secs(15);
        while stack
            .envoy
            .counter("control_plane.connected_state")
            .await
            .unwrap()
            != 0
        {
            assert!(Instant::now() < deadline, "Envoy never noticed the kill");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Existing cookies and tokens keep working on Envoy's last good configuration.
        servers.a.reset();
        for _ in 0..5 {
            let page = web
                .navigate(&stack.pod_url(&seeded.slug, PAGE, "/"))
                .await
                .unwrap();
            assert_eq!(page.status, 200, "{}\n{}", page.trail(), page.body);
            assert!(page.body.contains(&marker(PAGE)));
            let info = web
                .fetch(
                    &stack.pod_url(&seeded.slug, API, "/api/info"),
                    &[("podgate-token", &token)],
                )
                .await
                .unwrap();
            assert_eq!(info.status, 200, "{}", info.body);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(servers.a.requests().len(), 10);
        // A new sign-in cannot happen without the control plane: the callback on the pod host
        // fails at Envoy, nothing reaches the pod.
        servers.a.reset();
        let fresh = WebClient::new().unwrap();
        let callback = fresh
            .navigate(&stack.pod_url(&seeded.slug, PAGE, "/.podgate/callback?ticket=x"))
            .await
            .unwrap();
        assert!(callback.status >= 500, "{}", callback.trail());
        assert_untouched(&servers.a, "callback while the control plane is down");

        // Back: Envoy reconnects, and a pod created now appears.
        stack.cp.restart().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while stack
            .envoy
            .counter("control_plane.connected_state")
            .await
            .unwrap()
            != 1
        {
            assert!(
                Instant::now() < deadline,
                "Envoy did not reconnect:\n{}",
                stack.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (servers2, seeded2) = seed_pod(&stack, "after").await;
        let (_, page) = browser_flow(&stack, &seeded2, &seeded2.member, PAGE, "/").await;
        assert_eq!(page.status, 200, "{}\n{}", page.trail(), stack.logs());
        assert_eq!(servers2.a.requests().len(), 1);
        // And the old cookie still works.
        let page = web
            .navigate(&stack.pod_url(&seeded.slug, PAGE, "/"))
            .await
            .unwrap();
        assert_eq!(page.status, 200);
    });
}

#[test]
fn an_idle_tab_keeps_working_past_its_capability_until_its_session_ends() {
    block_on(async {
        // The shortest lifetime the control plane takes is 30 s; the filter adds its leeway
        // (30 s by default), so a capability is refused about 60 s after it was minted. The
        // session (and so the cookie) lives 10 minutes.
        let mut options = StackOptions::new("expiry");
        options.capability_lifetime_secs = Some(30);
        options.extra_args = vec!["--session-lifetime-secs".into(), "600".into()];
        let stack = FullStack::start(options).await.unwrap();
        let (servers, seeded) = seed_pod(&stack, "exp").await;
        let (web, page) = browser_flow(&stack, &seeded, &seeded.member, PAGE, "/").await;
        assert_eq!(page.status, 200, "{}", page.trail());
        let token = stack.capability(&web, &seeded.slug, API).await.unwrap();
        let host = stack.pod_host(&seeded.slug, PAGE);
        let old_cookie = web.jar.get(&host, CAP_COOKIE).unwrap().value;
        // The cookie lives as long as the session, not the capability in it.
        assert!(web
            .jar
            .get(&host, CAP_COOKIE)
            .unwrap()
            .attribute("max-age")
            .is_some_and(|a| a == "600"));

        // The tab sits idle past the later `exp` of the two tokens plus the filter's leeway.
        let config = stack.admin.get("/v1/filter-config").await.unwrap();
        let leeway = config["leeway_secs"].as_u64().unwrap();
        assert_eq!(config["renewal"]["lapsed_secs"], 600);
        let exp = jwt_exp(&token).max(jwt_exp(&old_cookie));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let wait = (exp + leeway + 2).saturating_sub(now);
        assert!(
            wait <= 120,
            "lifetime {exp} - {now} + leeway {leeway}: too long for a test"
        );
        tokio::time::sleep(Duration::from_secs(wait)).await;
        servers.a.reset();

        // The page's script calls its pod with the lapsed cookie: the filter renews it before
        // deciding, the pod gets the call without any credential of ours, and the browser gets
        // the fresh cookie with the answer.
        let fetch = web
            .fetch(&stack.pod_url(&seeded.slug, PAGE, "/api/info"), &[])
            .await
            .unwrap();
        assert_eq!(fetch.status, 200, "{}", fetch.body);
        let fresh = web.jar.get(&host, CAP_COOKIE).unwrap();
        assert_ne!(
            fresh.value, old_cookie,
            "no fresh cookie: {:?}",
            fetch.headers
        );
        assert!(jwt_exp(&fresh.value) > exp + leeway);
        assert!(fresh.attribute("max-age").is_some_and(|a| a == "600"));
        let seen = servers.a.requests();
        assert_eq!(seen.len(), 1, "{}", servers.a.describe());
        assert_eq!(seen[0].path, "/api/info");
        let sent: String = format!("{:?}", seen[0].headers);
        assert!(!sent.contains(CAP_COOKIE), "{sent}");
        assert!(!sent.contains(&old_cookie) && !sent.contains(&fresh.value));

        // A WebSocket the page reopens with the old cookie (sent before the fresh one
        // arrived): renewed the same way, open and echoing.
        let origin = stack.pod_origin(&seeded.slug, PAGE);
        let cookie = format!("{CAP_COOKIE}={old_cookie}");
        match stack
            .websocket(
                &seeded.slug,
                PAGE,
                &[("cookie", &cookie), ("origin", &origin)],
            )
            .await
            .unwrap()
        {
            WsOutcome::Open(mut ws) => {
                ws.send(tokio_tungstenite::tungstenite::Message::Text(
                    "after idle".into(),
                ))
                .await
                .unwrap();
                let echoed = ws.next().await.unwrap().unwrap();
                assert!(
                    echoed.to_text().unwrap().contains("after idle"),
                    "{echoed:?}"
                );
            }
            WsOutcome::Refused { status, body, .. } => {
                panic!("the lapsed cookie's WebSocket was refused: {status} {body}")
            }
        }

        // A script's own token is never renewed: scripts mint their own.
        servers.a.reset();
        let script = web
            .fetch(
                &stack.pod_url(&seeded.slug, API, "/api/info"),
                &[("podgate-token", &token)],
            )
            .await
            .unwrap();
        assert_eq!(script.status, 401, "{}", script.body);
        assert!(script.header("www-authenticate").is_some());
        assert_untouched(&servers.a, "expired header token");

        // Signed out, the lapsed cookie is renewed no more once the push arrives (until then
        // the fresh capability lives, as any capability does): a script gets the 401, a page
        // load goes to sign in, and the pod sees nothing.
        let out = web.navigate(&stack.cp_url("/auth/logout")).await.unwrap();
        assert!(out.status < 400, "{}", out.trail());
        let deadline = Instant::now() + Duration::from_secs(10);
        let refused = loop {
            web.jar.set_raw(&host, CAP_COOKIE, &old_cookie);
            let answer = web
                .fetch(&stack.pod_url(&seeded.slug, PAGE, "/api/info"), &[])
                .await
                .unwrap();
            if answer.status != 200 || Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(refused.status, 401, "{}", refused.body);
        servers.a.reset();
        let again = web
            .fetch(&stack.pod_url(&seeded.slug, PAGE, "/api/info"), &[])
            .await
            .unwrap();
        assert_eq!(again.status, 401, "{}", again.body);
        web.jar.set_raw(&host, CAP_COOKIE, &old_cookie);
        let page = web
            .navigate(&stack.pod_url(&seeded.slug, PAGE, "/index.html"))
            .await
            .unwrap();
        assert!(
            page.hops[0]
                .location
                .as_deref()
                .is_some_and(|l| l.starts_with(&stack.cp_url("/api/proxy-auth?"))),
            "{}",
            page.trail()
        );
        assert_untouched(&servers.a, "lapsed cookie after sign-out");
    });
}

/// The `exp` claim of a JWS compact token (read, not verified).
fn jwt_exp(token: &str) -> u64 {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["exp"]
        .as_u64()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// A real browser

#[test]
fn browser_workbench_iframe_shows_the_pod_through_proxy_auth() {
    if browser_or_skip().is_none() {
        return;
    }
    block_on(async {
        let stack = shared().await;
        let (servers, seeded) = seed_pod(stack, "demo").await;

        // The workbench page, served on the control plane's host name (another port, same
        // site), with an iframe pointing at /api/proxy-auth.
        let template =
            std::fs::read_to_string(workspace_root().join("tests/browser/workbench.html")).unwrap();
        let frame_src = stack.cp_url(&format!("/api/proxy-auth?pod={}&port={PAGE}", seeded.slug));
        let html = template
            .replace("{{TITLE}}", &seeded.slug)
            .replace("{{FRAME_SRC}}", &frame_src);
        let workbench = StaticPage::serve(html).await.unwrap();
        let workbench_url = format!("http://{CP_HOST}:{}/workbench", workbench.addr.port());

        let browser = Browser::start((1100, 700)).await.unwrap();
        // Sign in (the dev login sets the session cookie on the control plane's host).
        browser
            .goto(&stack.cp_url(&format!("/dev/login?user={}", seeded.member)))
            .await
            .unwrap();
        browser.goto(&workbench_url).await.unwrap();
        let frame = browser.find("#pod-frame").await.unwrap();
        browser.enter_frame(&frame).await.unwrap();
        let wait = browser
            .wait_for(
                "var m = document.getElementById('marker'); return m ? m.textContent : '';",
                Duration::from_secs(20),
            )
            .await;
        let in_frame = match wait {
            Ok(text) => text,
            Err(e) => {
                let body = browser
                    .execute("return document.documentElement.outerHTML")
                    .await
                    .unwrap_or_default();
                panic!(
                    "{e:#}: the frame shows {body}\n{}\n{}",
                    servers.a.describe(),
                    stack.logs()
                );
            }
        };
        assert_eq!(in_frame, marker(PAGE));
        let marker_el = browser.find("#marker").await.unwrap();
        assert_eq!(browser.text(&marker_el).await.unwrap(), marker(PAGE));
        let frame_url = browser
            .execute("return location.href")
            .await
            .unwrap()
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(frame_url, stack.pod_url(&seeded.slug, PAGE, "/"));
        // The page's own WebSocket (cookie + the pod's origin) echoes inside the frame.
        let ws = browser
            .wait_for(
                "var s = document.getElementById('ws-status'); \
                 return s && s.className ? s.className + ':' + s.textContent : '';",
                Duration::from_secs(15),
            )
            .await
            .unwrap();
        let ws = ws.as_str().unwrap_or_default().to_owned();
        assert!(ws.starts_with("ok:WebSocket echo: hello from"), "{ws}");
        // Script cannot read the HttpOnly capability cookie.
        let visible = browser.execute("return document.cookie").await.unwrap();
        assert_eq!(visible, "", "HttpOnly cookie visible to the pod's script");
        browser.leave_frames().await.unwrap();
        assert_eq!(browser.current_url().await.unwrap(), workbench_url);

        let png = browser.screenshot().await.unwrap();
        let path = save_artifact("browser", "workbench-iframe.png", &png).unwrap();
        eprintln!("screenshot: {}", path.display());
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        browser.quit().await;

        // What the pod got: the page and the WebSocket, as the member, with no credential.
        let seen = servers.a.requests();
        assert!(
            seen.iter().any(|r| r.path == "/" && !r.websocket),
            "{seen:?}"
        );
        assert!(seen.iter().any(|r| r.websocket), "{seen:?}");
        for r in &seen {
            assert_eq!(r.header("x-podgate-user"), Some(seeded.member.as_str()));
            assert!(
                !r.cookie_names().iter().any(|c| c.starts_with("podgate")),
                "{r:?}"
            );
            assert!(!r.path.contains("ticket"), "{r:?}");
        }
        assert_untouched(&servers.b, "server B");
    });
}

/// A page in a real browser that fetches every second and keeps a WebSocket open, with the
/// shortest capability lifetime (30 s; the filter's leeway is 30 s more), for three minutes:
/// renewal at the edge keeps every call working and the WebSocket open, with no redirect. Then
/// the user signs out on the pod host (in another window): within a push the page's fetches
/// fail and its WebSocket is closed (the times are printed; [`CUT_WITHIN_MS`] bounds them), and
/// the next page load of the pod goes to sign in.
#[test]
fn browser_page_keeps_fetching_and_its_websocket_stays_open_across_capability_lifetimes() {
    if browser_or_skip().is_none() {
        return;
    }
    block_on(async {
        let (stack, servers, seeded, browser, page_url) =
            browser_on_the_pods_page("renewal-browser", "renew").await;
        browser
            .execute(&format!("{PAGE_LOOP} return true;"))
            .await
            .unwrap();
        let run = Duration::from_secs(180);
        let start = Instant::now();
        let state = || page_state(&browser);
        while start.elapsed() < run {
            tokio::time::sleep(Duration::from_secs(15)).await;
            let now = state().await;
            eprintln!("{:?}: {now}", start.elapsed());
            assert_eq!(now["failed"], json!([]), "{now}\n{}", stack.logs());
            assert_eq!(now["ws"], "open", "{now}\n{}", stack.logs());
        }
        let end = state().await;
        assert!(end["ok"].as_u64().unwrap() >= 170, "{end}");
        assert!(end["echoes"].as_u64().unwrap() >= 170, "{end}");
        assert_eq!(
            browser.current_url().await.unwrap(),
            page_url,
            "no redirect"
        );

        // Sign out as a user would, on the pod host, in another window (the page stays open
        // and visible): /.podgate/logout, then the control plane's /auth/logout.
        browser.execute(FAST_LOOP).await.unwrap();
        let page_window = browser.window_handle().await.unwrap();
        browser.new_window().await.unwrap();
        browser
            .goto(&stack.pod_url(&seeded.slug, PAGE, "/.podgate/logout"))
            .await
            .unwrap();
        assert!(
            browser
                .current_url()
                .await
                .unwrap()
                .starts_with(&stack.cp_url("/auth/logout")),
            "the sign-out ends on the control plane"
        );
        // When the last answer of the sign-out (the control plane's) was in, by the browser's
        // clock, which the page's times use too.
        let signed_out = browser
            .execute(
                "return Math.round(performance.timeOrigin \
                 + performance.getEntriesByType('navigation')[0].responseEnd);",
            )
            .await
            .unwrap()
            .as_f64()
            .unwrap();
        browser.switch_to_window(&page_window).await.unwrap();
        let (failed, closed) = until_cut(&browser, signed_out, &stack).await;
        eprintln!(
            "browser sign-out → the page's fetch failed {failed} ms and its WebSocket closed \
             {closed} ms after the sign-out answer"
        );
        assert!(
            failed <= CUT_WITHIN_MS && closed <= CUT_WITHIN_MS,
            "fetch failed {failed} ms, WebSocket closed {closed} ms after the sign-out"
        );
        // The next page load of the pod goes to sign in.
        browser.goto(&page_url).await.unwrap();
        let landed = browser.current_url().await.unwrap();
        assert!(
            landed.starts_with(&stack.cp_url("/dev/login?")),
            "the page load after sign-out landed on {landed}"
        );
        browser.quit().await;
        // Every call reached the pod as the member, without our cookie.
        let seen = servers.a.requests();
        assert!(seen.len() >= 170, "{}", servers.a.describe());
        for r in &seen {
            assert_eq!(r.header("x-podgate-user"), Some(seeded.member.as_str()));
            assert!(
                !r.cookie_names().iter().any(|c| c.starts_with("podgate")),
                "{r:?}"
            );
        }
    });
}

/// The most a sign-out or a removal may take to reach a browser page's fetches and WebSocket:
/// a push and Envoy's 0.2 s delayed close take about 0.2 s on an idle machine (printed by the
/// tests); the bound leaves room for a loaded one.
const CUT_WITHIN_MS: f64 = 3000.0;

/// A page in a real browser that fetches and keeps a WebSocket open; its user is removed from
/// the pod's team: within a push the fetches fail and the WebSocket is closed.
#[test]
fn browser_page_loses_its_fetches_and_websocket_within_a_push_of_a_team_removal() {
    if browser_or_skip().is_none() {
        return;
    }
    block_on(async {
        let stack = shared().await;
        let (_servers, seeded) = seed_pod(stack, "removal").await;
        let browser = Browser::start((800, 600)).await.unwrap();
        browser
            .goto(&stack.cp_url(&format!("/dev/login?user={}", seeded.member)))
            .await
            .unwrap();
        browser
            .goto(&stack.pod_url(&seeded.slug, PAGE, "/"))
            .await
            .unwrap();
        browser
            .wait_for(
                "var m = document.getElementById('marker'); return m ? m.textContent : '';",
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.logs()));
        browser
            .execute(&format!("{PAGE_LOOP} {FAST_LOOP}"))
            .await
            .unwrap();
        browser
            .wait_for(
                "return window.__pg.ws === 'open' && window.__pg.echoes > 2;",
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.logs()));
        let before = page_state(&browser).await;
        assert_eq!(before["failed"], json!([]), "{before}");

        stack
            .admin
            .delete(&format!(
                "/v1/teams/{}/members/{}",
                seeded.team, seeded.member
            ))
            .await
            .unwrap();
        // The browser runs on this machine: its clock is this one.
        let removed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as f64;
        let (failed, closed) = until_cut(&browser, removed, stack).await;
        eprintln!(
            "browser team removal → the page's fetch failed {failed} ms and its WebSocket \
             closed {closed} ms after the admin answer"
        );
        assert!(
            failed <= CUT_WITHIN_MS && closed <= CUT_WITHIN_MS,
            "fetch failed {failed} ms, WebSocket closed {closed} ms after the removal"
        );
        browser.quit().await;
    });
}

/// The page script of the browser tests: a fetch of the pod every second (`__pgTick`, on
/// `__pgTimer`) and a WebSocket echoing a ping per fetch, with counts, failures and when the
/// first failure and the close happened (the browser's `Date.now()`) in `window.__pg`.
const PAGE_LOOP: &str = "window.__pg = {ok: 0, failed: [], ws: 'opening', echoes: 0, failedAt: 0, closedAt: 0};\
     var ws = new WebSocket(location.origin.replace('http', 'ws') + '/ws');\
     ws.onopen = function () { window.__pg.ws = 'open'; };\
     ws.onmessage = function () { window.__pg.echoes++; };\
     ws.onclose = function (e) { window.__pg.ws = 'closed ' + e.code; window.__pg.closedAt = Date.now(); };\
     var fail = function (what) {\
       if (!window.__pg.failedAt) { window.__pg.failedAt = Date.now(); }\
       window.__pg.failed.push(what + ' at ' + Date.now());\
     };\
     window.__pgTick = function () {\
       fetch('/index.html', {cache: 'no-store', redirect: 'manual'}).then(function (r) {\
         if (r.status === 200) { window.__pg.ok++; } else { fail(r.status + ' ' + r.type); }\
       }, function (e) { fail(String(e)); });\
       if (ws.readyState === 1) { ws.send('ping'); }\
     };\
     window.__pgTimer = setInterval(window.__pgTick, 1000);";

/// A real browser: a pod's page left idle past its capability's expiry (30 s, and the filter's
/// 30 s leeway) fetches again and opens a new WebSocket, both answered with no failure and no
/// redirect: the capability in its cookie was renewed at the edge, and nothing of ours reached
/// the pod.
#[test]
fn browser_tab_left_idle_past_its_capability_fetches_and_reconnects() {
    if browser_or_skip().is_none() {
        return;
    }
    block_on(async {
        let (stack, servers, seeded, browser, page_url) =
            browser_on_the_pods_page("idle-browser", "idle").await;
        // Idle: the capability minted for this page load lapses (its lifetime and the leeway).
        tokio::time::sleep(Duration::from_secs(65)).await;
        servers.a.reset();
        browser.execute(IDLE_RETURN).await.unwrap();
        browser
            .wait_for(
                "return window.__idle.fetch !== 'pending' \
                 && (window.__idle.echo !== '' || window.__idle.ws.indexOf('closed') === 0);",
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.logs()));
        let idle = browser
            .execute("return JSON.stringify(window.__idle);")
            .await
            .unwrap();
        let idle: serde_json::Value = serde_json::from_str(idle.as_str().unwrap()).unwrap();
        assert_eq!(idle["fetch"], "200", "{idle}\n{}", stack.logs());
        assert_eq!(idle["ws"], "open", "{idle}\n{}", stack.logs());
        assert_eq!(idle["echo"], "after idle", "{idle}");
        // The browser holds the fresh cookie: a reload lands on the page, no redirect.
        browser.goto(&page_url).await.unwrap();
        assert_eq!(browser.current_url().await.unwrap(), page_url);
        browser.quit().await;
        let seen = servers.a.requests();
        assert!(seen.len() >= 3, "{}", servers.a.describe());
        for r in &seen {
            assert_eq!(r.header("x-podgate-user"), Some(seeded.member.as_str()));
            assert!(
                !r.cookie_names().iter().any(|c| c.starts_with("podgate")),
                "{r:?}"
            );
        }
    });
}

/// A stack of its own with the shortest capability lifetime (30 s), a pod, and a real browser
/// signed in as its member, showing the pod's page (loaded): the stack, the pod's servers, the
/// seeded pod, the browser and the page's URL.
async fn browser_on_the_pods_page(
    label: &str,
    pod: &str,
) -> (FullStack, Servers, Seeded, Browser, String) {
    let mut options = StackOptions::new(label);
    options.capability_lifetime_secs = Some(30);
    let stack = FullStack::start(options).await.unwrap();
    let (servers, seeded) = seed_pod(&stack, pod).await;
    let browser = Browser::start((800, 600)).await.unwrap();
    browser
        .goto(&stack.cp_url(&format!("/dev/login?user={}", seeded.member)))
        .await
        .unwrap();
    let page_url = stack.pod_url(&seeded.slug, PAGE, "/");
    browser.goto(&page_url).await.unwrap();
    browser
        .wait_for(
            "var m = document.getElementById('marker'); return m ? m.textContent : '';",
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.logs()));
    (stack, servers, seeded, browser, page_url)
}

/// What the page's script does when its user comes back: a fetch and a new WebSocket, at once.
const IDLE_RETURN: &str = "window.__idle = {fetch: 'pending', ws: 'opening', echo: ''};\
     fetch('/index.html', {cache: 'no-store', redirect: 'manual'}).then(\
       function (r) { window.__idle.fetch = String(r.status); },\
       function (e) { window.__idle.fetch = String(e); });\
     var ws = new WebSocket(location.origin.replace('http', 'ws') + '/ws');\
     ws.onopen = function () { window.__idle.ws = 'open'; ws.send('after idle'); };\
     ws.onmessage = function (m) { window.__idle.echo = String(m.data); };\
     ws.onclose = function (e) { if (window.__idle.ws !== 'open') { window.__idle.ws = 'closed ' + e.code; } };\
     return true;";

/// The page loop fetches every 100 ms from now on, so a cut is timed to a tenth of a second.
const FAST_LOOP: &str = "clearInterval(window.__pgTimer);\
     window.__pgTimer = setInterval(window.__pgTick, 100); return true;";

/// `window.__pg` of the page loop.
async fn page_state(browser: &Browser) -> serde_json::Value {
    browser
        .execute("return JSON.stringify(window.__pg);")
        .await
        .unwrap()
        .as_str()
        .map(|s| serde_json::from_str::<serde_json::Value>(s).unwrap())
        .unwrap()
}

/// Waits (at most 5 s) until the page loop saw a fetch fail and its WebSocket close; how long
/// after `since` (the browser's clock, in ms) each happened.
async fn until_cut(browser: &Browser, since: f64, stack: &FullStack) -> (f64, f64) {
    let waited = browser
        .wait_for(
            "return window.__pg.failedAt > 0 && window.__pg.closedAt > 0;",
            Duration::from_secs(5),
        )
        .await;
    let end = page_state(browser).await;
    if let Err(e) = waited {
        panic!("{e:#}: {end}\n{}", stack.logs());
    }
    eprintln!("after the cut: {end}");
    let at = |key: &str| end[key].as_f64().unwrap() - since;
    (at("failedAt"), at("closedAt"))
}

// ---------------------------------------------------------------------------------------------
// Redirect targets

#[test]
fn sign_in_lands_on_the_canonical_next_never_another_host_or_a_ticket() {
    block_on(async {
        let stack = shared().await;
        let (servers, seeded) = seed_pod(stack, "next").await;
        let web = WebClient::new().unwrap();
        stack.dev_login(&web, &seeded.member).await.unwrap();
        let pod_origin = stack.pod_url(&seeded.slug, PAGE, "/");
        // `next` as a link to the auth endpoint could carry it: a later normalisation of each
        // could make a network-path reference, show a ticket, or land on the reserved prefix.
        for (next, lands) in [
            ("/.//evil.example", "/evil.example"),
            ("/a/..//evil.example", "/evil.example"),
            ("/%2e%2e//evil.example", "/evil.example"),
            ("/a/b/../..//evil.example/x", "/evil.example/x"),
            ("/./%2Fevil.example", "/"),
            ("/..;//evil.example", "/"),
            ("/index.html?ticket=stale-ticket&x=1", "/index.html?x=1"),
            ("/.PODGATE/callback?ticket=stale-ticket", "/"),
        ] {
            servers.a.reset();
            let url = stack.cp_url(&format!(
                "/api/proxy-auth?pod={}&port={PAGE}&next={}",
                seeded.slug,
                podgate_protocol::redirect::encode_query_value(next)
            ));
            let page = web.navigate(&url).await.unwrap();
            let trail = page.trail();
            // /api/proxy-auth → the callback on the pod host (through Envoy) → the next.
            assert_eq!(page.hops[0].status, 302, "{next}: {trail}");
            let to_callback = hop_location(&page, 0);
            assert_eq!(
                query_params(&to_callback).get("next").map(String::as_str),
                Some(lands),
                "{next}: {trail}"
            );
            assert_eq!(page.hops[1].status, 302, "{next}: {trail}");
            assert_eq!(hop_location(&page, 1), lands, "{next}: {trail}");
            assert!(page.url.starts_with(&pod_origin), "{next}: {trail}");
            assert!(!page.url.contains("ticket"), "{next}: {trail}");
            let seen = servers.a.requests();
            assert_eq!(seen.len(), 1, "{next}: {}", servers.a.describe());
            assert_eq!(seen[0].path, lands, "{next}");
            assert!(!seen[0].mentions("stale-ticket"), "{next}: {:?}", seen[0]);
        }
        assert_untouched(&servers.b, "server B");
    });
}

/// Secret the wake test's platform expects from the control plane.
const HOOK_SECRET: &str = "start-hook-secret-0123456789abcdef0123";

/// A fake platform's start hook on loopback: answers 202 to every request and reports each one
/// (request line, `podgate-start-secret`) on the channel. Its port.
async fn fake_platform(calls: tokio::sync::mpsc::UnboundedSender<(String, Option<String>)>) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let calls = calls.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut lines = head.split("\r\n");
                let line = lines.next().unwrap_or_default();
                let line = line.rsplit_once(' ').map_or(line, |(l, _)| l).to_owned();
                let secret = lines.find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("podgate-start-secret")
                        .then(|| value.trim().to_owned())
                });
                let _ = calls.send((line, secret));
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    port
}

/// A member opens a stopped pod in Chromium: the page says it is starting and the control plane
/// calls the operator's start hook (with its secret, once); the fake platform reports the pod
/// `running` two seconds later through the admin API, and the page reloads itself onto the
/// pod's own content, the user doing nothing.
#[test]
fn browser_on_a_stopped_pod_wakes_it_and_ends_on_the_pods_page() {
    if browser_or_skip().is_none() {
        return;
    }
    block_on(async {
        let (tx, mut calls) = tokio::sync::mpsc::unbounded_channel();
        let hook_port = fake_platform(tx).await;
        let mut options = StackOptions::new("wake-browser");
        options.extra_args = vec![
            "--start-hook-url".into(),
            format!("http://127.0.0.1:{hook_port}/pods/{{pod}}/start"),
            "--start-hook-secret".into(),
            HOOK_SECRET.into(),
        ];
        let stack = FullStack::start(options).await.unwrap();
        let (servers, seeded) = seed_pod(&stack, "wake").await;
        let owner = WebClient::new().unwrap();
        stack.dev_login(&owner, &seeded.owner).await.unwrap();
        let token = stack.capability(&owner, &seeded.slug, API).await.unwrap();
        stack
            .admin
            .put(
                &format!("/v1/pods/{}/status", seeded.slug),
                json!({"status": "stopped"}),
            )
            .await
            .unwrap();
        let script = stack
            .wait_until(&seeded.slug, API, &token, "the pod stops", |a| {
                a.status == 503
            })
            .await
            .unwrap();
        // A script gets the JSON and starts nothing.
        assert_eq!(
            script.json()["error"],
            "Pod is not running (status: stopped)"
        );
        servers.a.reset();

        let browser = Browser::start((800, 600)).await.unwrap();
        browser
            .goto(&stack.cp_url(&format!("/dev/login?user={}", seeded.member)))
            .await
            .unwrap();
        browser
            .goto(&stack.pod_url(&seeded.slug, PAGE, "/"))
            .await
            .unwrap();
        let title = browser.execute("return document.title").await.unwrap();
        assert_eq!(title, "Pod starting", "{}", stack.logs());
        let (line, secret) = tokio::time::timeout(Duration::from_secs(20), calls.recv())
            .await
            .unwrap_or_else(|_| panic!("the start hook was not called\n{}", stack.logs()))
            .unwrap();
        assert_eq!(line, format!("POST /pods/{}/start", seeded.slug));
        assert_eq!(secret.as_deref(), Some(HOOK_SECRET));
        assert_untouched(&servers.a, "stopped pod");

        // The platform starts the pod.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack
            .admin
            .put(
                &format!("/v1/pods/{}/status", seeded.slug),
                json!({"status": "running"}),
            )
            .await
            .unwrap();
        let shown = browser
            .wait_for(
                "var m = document.getElementById('marker'); return m ? m.textContent : '';",
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.logs()));
        assert_eq!(shown, marker(PAGE));
        // The page reloaded every two seconds meanwhile; the hook was called once.
        assert!(calls.try_recv().is_err(), "the start hook was called again");
    });
}
