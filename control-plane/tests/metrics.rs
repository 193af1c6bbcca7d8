//! `GET /metrics`: real requests move the counters by exactly what they did, read back through
//! a Prometheus text-format parser as a scraper would; label values stay within their fixed
//! sets; `--metrics-listen` takes the route off the API. On SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{metric, Harness, Resp, Which};
use prometheus_parse::Scrape;
use serde_json::json;

const HOST: &str = "localhost-8726-pod-myslug.localhost:10000";

async fn post_capability(h: &Harness, cookie: &str) -> Resp {
    h.send(
        Request::builder()
            .method(Method::POST)
            .uri("/v1/capabilities")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::COOKIE, cookie)
            .body(Body::from(
                json!({"pod": "myslug", "port": 8726}).to_string(),
            ))
            .unwrap(),
    )
    .await
}

async fn callback(h: &Harness, ticket: &str) -> Resp {
    h.send(
        Request::builder()
            .uri(format!("/.podgate/callback?ticket={ticket}&next=/"))
            .header(header::HOST, HOST)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

async fn requests_move_the_counters(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let before = h.metrics().await;
    assert_eq!(metric(&before, "podgate_logins_total", &[]), 0.0);
    assert_eq!(metric(&before, "podgate_xds_streams", &[]), 0.0);

    // Two logins, one refused.
    let alice = h.login("alice").await;
    let carol = h.login("carol").await;
    assert_eq!(
        h.get("/dev/login?user=", &[]).await.status,
        StatusCode::BAD_REQUEST
    );
    // A ticket, then its capability at the callback, then the same ticket again.
    let pa = h
        .get(
            "/api/proxy-auth?pod=myslug&port=8726&next=/",
            &[("cookie", &alice)],
        )
        .await;
    assert_eq!(pa.status, StatusCode::FOUND, "{}", pa.body);
    let location = url::Url::parse(pa.header("location").unwrap()).unwrap();
    let ticket = location
        .query_pairs()
        .find(|(k, _)| k == "ticket")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(callback(&h, &ticket).await.status, StatusCode::FOUND);
    assert_eq!(callback(&h, &ticket).await.status, StatusCode::BAD_REQUEST);
    // A capability by API, and one refused (carol may not reach the pod).
    assert_eq!(post_capability(&h, &alice).await.status, StatusCode::OK);
    assert_eq!(
        post_capability(&h, &carol).await.status,
        StatusCode::NOT_FOUND
    );
    // A renewal without the filter's secret, and a path nobody serves.
    let renew = h
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/api/proxy-renew")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(renew.status, StatusCode::FORBIDDEN);
    // An API token exchange and a wake-up without the filter's secret.
    for uri in ["/api/proxy-exchange", "/api/proxy-wake"] {
        let r = h
            .send(
                Request::builder()
                    .method(Method::POST)
                    .uri(uri)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}: {}", r.body);
    }
    assert_eq!(
        h.get("/no/such/path", &[]).await.status,
        StatusCode::NOT_FOUND
    );

    let s = h.metrics().await;
    let logins = |outcome| {
        metric(
            &s,
            "podgate_logins_total",
            &[("method", "dev"), ("outcome", outcome)],
        )
    };
    assert_eq!(logins("ok"), 2.0);
    assert_eq!(logins("refused"), 1.0);
    assert_eq!(
        metric(&s, "podgate_logins_total", &[("method", "sign_in")]),
        0.0
    );
    let mints = |kind, via, outcome| {
        metric(
            &s,
            "podgate_mints_total",
            &[("kind", kind), ("via", via), ("outcome", outcome)],
        )
    };
    assert_eq!(mints("ticket", "proxy-auth", "ok"), 1.0);
    assert_eq!(mints("capability", "callback", "ok"), 1.0);
    assert_eq!(mints("capability", "callback", "refused"), 1.0);
    assert_eq!(mints("capability", "api", "ok"), 1.0);
    assert_eq!(
        metric(&s, "podgate_renewals_total", &[("outcome", "refused")]),
        1.0
    );
    assert_eq!(
        metric(&s, "podgate_exchanges_total", &[("outcome", "refused")]),
        1.0
    );
    assert_eq!(
        metric(&s, "podgate_wakes_total", &[("outcome", "refused")]),
        1.0
    );
    let refusals = |route, reason| {
        metric(
            &s,
            "podgate_http_refusals_total",
            &[("route", route), ("reason", reason)],
        )
    };
    assert_eq!(refusals("/dev/login", "bad_request"), 1.0);
    assert_eq!(refusals("/.podgate/callback", "bad_request"), 1.0);
    assert_eq!(refusals("/v1/capabilities", "not_found"), 1.0);
    assert_eq!(refusals("/api/proxy-renew", "forbidden"), 1.0);
    assert_eq!(refusals("unmatched", "not_found"), 1.0);
    // Every read of a user's access is timed: the ticket's, both callbacks' (the replay is found
    // when its ticket is consumed, after the read) and both API requests'; and each commit of
    // the audit.
    assert_eq!(
        metric(&s, "podgate_db_seconds_count", &[("op", "authorize")]),
        5.0
    );
    assert!(metric(&s, "podgate_db_seconds_count", &[("op", "record")]) >= 1.0);
    // No label carries a user, a pod, a token or an address.
    for sample in &s.samples {
        for (k, v) in sample.labels.iter() {
            for secret in ["alice", "carol", "myslug", &ticket, "127.0.0.1"] {
                assert!(!v.contains(secret), "{}{{{k}={v:?}}}", sample.metric);
            }
        }
    }
    h.finish().await;
}
on_both!(requests_move_the_counters);

async fn rate_limit_refusals_are_counted(which: Which) {
    let Some(h) = Harness::seeded(which, |mut s| {
        s.proxy_auth_burst = Some(1);
        s
    })
    .await
    else {
        return;
    };
    let mut limited = 0;
    for _ in 0..3 {
        let r = h.get("/api/proxy-auth?pod=myslug&port=8726", &[]).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert!(limited >= 1);
    let s = h.metrics().await;
    assert_eq!(
        metric(
            &s,
            "podgate_rate_limited_total",
            &[("endpoint", "proxy_auth")]
        ),
        f64::from(limited)
    );
    assert_eq!(
        metric(
            &s,
            "podgate_http_refusals_total",
            &[("route", "/api/proxy-auth"), ("reason", "rate_limited")]
        ),
        f64::from(limited)
    );
    h.finish().await;
}
on_both!(rate_limit_refusals_are_counted);

/// With `--metrics-listen`, the API has no `/metrics`; `metrics_app` serves it alone.
#[tokio::test]
async fn metrics_listen_moves_the_route_off_the_api() {
    let h = Harness::with(Which::Sqlite, |mut s| {
        s.metrics_listen = Some("127.0.0.1:0".to_owned());
        s
    })
    .await
    .unwrap();
    assert_eq!(h.get("/metrics", &[]).await.status, StatusCode::NOT_FOUND);
    h.login("alice").await;
    let only = podgate::metrics_app(h.state.clone());
    let r = tower::ServiceExt::oneshot(
        only.clone(),
        Request::builder()
            .uri("/metrics")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    let s = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(
        metric(
            &s,
            "podgate_logins_total",
            &[("method", "dev"), ("outcome", "ok")]
        ),
        1.0
    );
    let r = tower::ServiceExt::oneshot(
        only,
        Request::builder()
            .uri("/healthz")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    h.finish().await;
}

/// Every metric the control plane serves has its row in `docs/operations.md`, "Monitoring".
#[tokio::test]
async fn every_metric_is_documented() {
    let h = Harness::new(Which::Sqlite).await.unwrap();
    let s = h.metrics().await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    assert!(s.docs.len() >= 10, "{:?}", s.docs);
    for (family, help) in &s.docs {
        assert!(!help.is_empty(), "{family} has no help text");
        // Counters are named with `_total` in the text and in the doc.
        let named = [family.clone(), format!("{family}_total")];
        assert!(
            named.iter().any(|n| doc.contains(&format!("`{n}`"))),
            "{family} is not in docs/operations.md"
        );
    }
    h.finish().await;
}
