//! The wake endpoint Envoy's filter calls (`POST /api/proxy-wake`) and the operator's start
//! hook behind it, in-process on SQLite and PostgreSQL: only with the renewal secret and a live
//! browser capability whose user may still reach the pod; the hook gets its secret; at most one
//! hook call per pod per interval, also with two control planes on the database; the filter
//! configuration says waking is on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use common::{Harness, Which};
use podgate::config::{Need, Settings};
use podgate::AppState;
use tower::ServiceExt as _;

const SECRET: &str = "renew-secret-0123456789abcdef0123456789";
const HOOK_SECRET: &str = "start-hook-secret-0123456789abcdef0123";
/// How often the start hook may be called per pod.
const INTERVAL_SECS: u64 = 3600;

/// One start hook call: `METHOD path` and the secret header.
type Call = (String, Option<String>);

/// The platform's side: every start hook call.
#[derive(Clone, Default)]
struct Platform {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Platform {
    /// Serves the hook on a loopback port; its base URL.
    async fn start(&self) -> String {
        let calls = Arc::clone(&self.calls);
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let calls = Arc::clone(&calls);
            async move {
                let secret = req
                    .headers()
                    .get("podgate-start-secret")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                calls
                    .lock()
                    .unwrap()
                    .push((format!("{} {}", req.method(), req.uri().path()), secret));
                StatusCode::ACCEPTED
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits (a few seconds at most) until the hook was called `n` times.
    async fn called(&self, n: usize) -> Vec<Call> {
        for _ in 0..100 {
            if self.calls().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.calls()
    }
}

/// `s` with the renewal secret and the start hook at `hook` (none: waking off).
fn with_hook(s: Settings, hook: Option<String>) -> Settings {
    Settings {
        renew_secret: Some(SECRET.into()),
        start_hook_url: hook.map(|base| format!("{base}/pods/{{pod}}/start")),
        start_hook_secret: Some(HOOK_SECRET.into()),
        start_hook_interval_secs: Some(INTERVAL_SECS),
        ..s
    }
}

async fn harness(which: Which, hook: Option<String>) -> Option<Harness> {
    Harness::seeded(which, |s| with_hook(s, hook)).await
}

/// `POST /api/proxy-wake` as Envoy sends it (the renewal secret, the capability) to the
/// control plane serving `app`; the answer's status.
async fn wake_at(app: &Router, cap: &str) -> StatusCode {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/proxy-wake")
        .header("podgate-renew-secret", SECRET)
        .header(header::AUTHORIZATION, format!("Bearer {cap}"))
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(req).await.unwrap().status()
}

async fn two_control_planes_on_one_database_call_the_hook_once_per_interval(which: Which) {
    let platform = Platform::default();
    let base = platform.start().await;
    let Some(h) = harness(which, Some(base.clone())).await else {
        return;
    };
    // A second control plane on the same database: its own state, so its own memory of the
    // calls it made.
    let config = with_hook(common::settings(&h.tdb.url), Some(base))
        .resolve(Need::Server)
        .unwrap();
    let second = podgate::app(AppState::new(config, h.tdb.db.clone()).await.unwrap());
    let cap = h.browser_capability(&h.login("alice").await).await;

    // Both asked at once, then each again: one call.
    let (a, b) = tokio::join!(wake_at(&h.app, &cap), wake_at(&second, &cap));
    let mut statuses = [a, b];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::ACCEPTED, StatusCode::TOO_MANY_REQUESTS],
        "one control plane calls the hook, the other is held back"
    );
    for app in [&h.app, &second] {
        assert_eq!(wake_at(app, &cap).await, StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(platform.called(1).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(platform.calls().len(), 1, "{:?}", platform.calls());
    h.finish().await;
}
on_both!(two_control_planes_on_one_database_call_the_hook_once_per_interval);

async fn the_hook_is_called_with_its_secret_once_per_interval(which: Which) {
    let platform = Platform::default();
    let base = platform.start().await;
    let Some(h) = harness(which, Some(base)).await else {
        return;
    };
    let r = h.admin(Method::GET, "/v1/filter-config", None).await;
    assert_eq!(r.json()["wake"], true, "{}", r.body);
    let cap = h.browser_capability(&h.login("alice").await).await;

    // Only Envoy: without the renewal secret nothing is read and nothing is called.
    for secret in [None, Some("renew-secret-guessed-0123456789abcdef")] {
        let r = h.as_envoy("/api/proxy-wake", secret, Some(&cap), &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{secret:?}: {}", r.body);
    }
    for token in [None, Some(format!("{cap}x"))] {
        let r = h
            .as_envoy("/api/proxy-wake", Some(SECRET), token.as_deref(), &[])
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    assert!(platform.calls().is_empty());

    let r = h
        .as_envoy("/api/proxy-wake", Some(SECRET), Some(&cap), &[])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let calls = platform.called(1).await;
    assert_eq!(
        calls,
        vec![(
            "POST /pods/myslug/start".to_owned(),
            Some(HOOK_SECRET.to_owned())
        )]
    );
    // Within the interval: refused, and the hook is not called again.
    for _ in 0..3 {
        let r = h
            .as_envoy("/api/proxy-wake", Some(SECRET), Some(&cap), &[])
            .await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        // Told when to ask again: what is left of the interval, in whole seconds.
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=INTERVAL_SECS).contains(&wait), "Retry-After {wait}");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains(&format!("in {wait} s")),
            "{}",
            r.body
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(platform.calls().len(), 1);
    h.finish().await;
}
on_both!(the_hook_is_called_with_its_secret_once_per_interval);

async fn a_user_who_may_not_reach_the_pod_starts_nothing(which: Which) {
    let platform = Platform::default();
    let base = platform.start().await;
    let Some(h) = harness(which, Some(base)).await else {
        return;
    };
    let bob = h.browser_capability(&h.login("bob").await).await;
    // Bob leaves the team that gives him the pod.
    let r = h
        .admin(Method::DELETE, "/v1/teams/t1/members/bob", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h
        .as_envoy("/api/proxy-wake", Some(SECRET), Some(&bob), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    // A signed-out session starts nothing either.
    let alice_session = h.login("alice").await;
    let alice = h.browser_capability(&alice_session).await;
    let r = h.get("/auth/logout", &[("cookie", &alice_session)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = h
        .as_envoy("/api/proxy-wake", Some(SECRET), Some(&alice), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(platform.calls().is_empty(), "{:?}", platform.calls());
    h.finish().await;
}
on_both!(a_user_who_may_not_reach_the_pod_starts_nothing);

async fn without_a_hook_waking_is_off(which: Which) {
    let Some(h) = Harness::seeded(which, |s| Settings {
        renew_secret: Some(SECRET.into()),
        ..s
    })
    .await
    else {
        return;
    };
    let r = h.admin(Method::GET, "/v1/filter-config", None).await;
    assert!(r.json().get("wake").is_none(), "{}", r.body);
    let cap = h.browser_capability(&h.login("alice").await).await;
    let r = h
        .as_envoy("/api/proxy-wake", Some(SECRET), Some(&cap), &[])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    h.finish().await;
}
on_both!(without_a_hook_waking_is_off);

#[test]
fn a_hook_needs_a_secret_and_an_http_url() {
    let resolve = |url: Option<&str>, secret: Option<&str>| {
        Settings {
            start_hook_url: url.map(str::to_owned),
            start_hook_secret: secret.map(str::to_owned),
            dev_mode: Some(true),
            xds_listen: Some("off".into()),
            admin_token: Some("test-admin-token-0123456789abcdef0123".into()),
            ..podgate::config::Settings::default()
        }
        .resolve(podgate::config::Need::Server)
    };
    for (url, secret) in [
        (Some("http://platform/pods/{pod}/start"), None),
        (Some("http://platform/pods/{pod}/start"), Some("short")),
        (Some("ftp://platform/{pod}"), Some(HOOK_SECRET)),
        (Some("not a url {pod}"), Some(HOOK_SECRET)),
        (None, Some(HOOK_SECRET)),
    ] {
        let err = resolve(url, secret).unwrap_err().to_string();
        assert!(err.contains("start hook"), "{url:?} {secret:?}: {err}");
    }
}

#[test]
fn edge_rates_reach_the_filter_configuration_and_bad_ones_are_refused() {
    let resolve = |user: Option<&str>, pod: Option<&str>| {
        Settings {
            edge_rate_per_user: user.map(str::to_owned),
            edge_rate_per_pod: pod.map(str::to_owned),
            dev_mode: Some(true),
            xds_listen: Some("off".into()),
            admin_token: Some("test-admin-token-0123456789abcdef0123".into()),
            ..podgate::config::Settings::default()
        }
        .resolve(podgate::config::Need::Server)
    };
    let config = resolve(Some("50/100"), None).unwrap();
    let rates = config.edge_rates.unwrap();
    assert_eq!(
        (
            rates.per_user.map(|r| (r.per_second, r.burst)),
            rates.per_pod
        ),
        (Some((50, 100)), None)
    );
    assert!(resolve(None, None).unwrap().edge_rates.is_none());
    for bad in ["50", "0/10", "10/0", "x/y", "-1/5"] {
        let err = resolve(None, Some(bad)).unwrap_err().to_string();
        assert!(err.contains("edge-rate-per-pod"), "{bad}: {err}");
    }
}

#[test]
fn edge_concurrency_reaches_the_filter_configuration_and_zero_is_refused() {
    let resolve = |user: Option<u32>, pod: Option<u32>| {
        Settings {
            edge_concurrent_per_user: user,
            edge_concurrent_per_pod: pod,
            dev_mode: Some(true),
            xds_listen: Some("off".into()),
            admin_token: Some("test-admin-token-0123456789abcdef0123".into()),
            ..podgate::config::Settings::default()
        }
        .resolve(podgate::config::Need::Server)
    };
    let limits = resolve(Some(4), None).unwrap().edge_concurrency.unwrap();
    assert_eq!((limits.per_user, limits.per_pod), (Some(4), None));
    assert!(resolve(None, None).unwrap().edge_concurrency.is_none());
    let err = resolve(None, Some(0)).unwrap_err().to_string();
    assert!(err.contains("--edge-concurrent-per-pod 0"), "{err}");
    let err = resolve(Some(0), None).unwrap_err().to_string();
    assert!(err.contains("--edge-concurrent-per-user 0"), "{err}");
}
