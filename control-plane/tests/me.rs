//! `GET /api/me`: who the caller is and the pods and ports they may reach, on both databases:
//! the owner and a team member see the team's pod (every port by the default rule), anyone
//! signed in sees a port shared with every signed-in user and nothing else of that pod, an
//! outsider sees none of the team's pod; services by the same rule (the team's to its members,
//! one shared with every signed-in user to all); an API token's own name and expiry; 401
//! without a credential.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{Harness, Which};
use serde_json::{json, Value};

/// The pods of an `/api/me` answer: `(pod, ports, other_ports, owner)`.
fn pods(me: &Value) -> Vec<(String, Vec<u64>, bool, bool)> {
    me["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pod"].as_str().unwrap().to_owned(),
                p["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|q| q["port"].as_u64().unwrap())
                    .collect(),
                p["other_ports"].as_bool().unwrap(),
                p["owner"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The services of an `/api/me` answer: `(service, owner)`.
fn services(me: &Value) -> Vec<(String, bool)> {
    me["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap().to_owned(),
                s["owner"].as_bool().unwrap(),
            )
        })
        .collect()
}

async fn me(h: &Harness, name: &str, value: &str) -> (StatusCode, Value) {
    let r = h.get("/api/me", &[(name, value)]).await;
    let body = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, body)
}

async fn me_lists_what_each_may_reach(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    for (slug, port, sharing) in [
        ("shared", None, None),
        ("shared", Some(9000), Some("signed_in")),
        ("shared", Some(9001), Some("owner")),
        ("private", None, None),
    ] {
        let r = match port {
            None => {
                h.admin(
                    Method::POST,
                    "/v1/pods",
                    Some(json!({"slug": slug, "owner_id": "carol", "server_id": "s1", "status": "running", "nginx_port": 30002})),
                )
                .await
            }
            Some(p) => {
                h.admin(
                    Method::PUT,
                    &format!("/v1/pods/{slug}/ports/{p}"),
                    Some(json!({"sharing": sharing.unwrap(), "label": "x"})),
                )
                .await
            }
        };
        assert!(r.status.is_success(), "{}", r.body);
    }

    // Services: the team's (alice's, shared with t1), carol's own, one for everyone signed in.
    for (name, owner, team, sharing) in [
        ("teamapi", "alice", Some("t1"), "team"),
        ("carolapi", "carol", None, "owner"),
        ("openapi", "carol", None, "signed_in"),
    ] {
        let r = h
            .admin(
                Method::POST,
                "/v1/services",
                Some(
                    json!({"name": name, "owner_id": owner, "team_id": team, "sharing": sharing,
                    "upstream_url": "https://api.example.com",
                    "credential": {"header": "x-api-key", "value": "sk-not-shown"}}),
                ),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.body);
    }

    let alice = h.login("alice").await;
    let (status, body) = me(&h, "cookie", &alice).await;
    assert_eq!(
        services(&body),
        vec![("openapi".into(), false), ("teamapi".into(), true)]
    );
    let service = &body["services"][1];
    assert_eq!(service["sharing"], "team");
    let url = service["url"].as_str().unwrap();
    assert!(url.contains("svc-teamapi"), "{url}");
    assert!(!body.to_string().contains("sk-not-shown"), "{body}");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["email"], "alice@example.dev");
    assert!(body["api_token"].is_null());
    assert_eq!(
        pods(&body),
        vec![
            ("myslug".into(), vec![], true, true),
            ("shared".into(), vec![9000], false, false),
        ]
    );
    let url = body["pods"][1]["ports"][0]["url"].as_str().unwrap();
    assert!(url.contains("9000") && url.contains("shared"), "{url}");
    let template = body["pod_url_template"].as_str().unwrap();
    assert!(
        template.contains("{pod}") && template.contains("{port}"),
        "{template}"
    );

    let bob = h.login("bob").await;
    let (_, body) = me(&h, "cookie", &bob).await;
    assert_eq!(
        services(&body),
        vec![("openapi".into(), false), ("teamapi".into(), false)]
    );
    assert_eq!(
        pods(&body),
        vec![
            ("myslug".into(), vec![], true, false),
            ("shared".into(), vec![9000], false, false),
        ]
    );

    let carol = h.login("carol").await;
    let (_, body) = me(&h, "cookie", &carol).await;
    assert_eq!(
        services(&body),
        vec![("carolapi".into(), true), ("openapi".into(), true)]
    );
    assert_eq!(
        pods(&body),
        vec![
            ("private".into(), vec![], true, true),
            ("shared".into(), vec![9000, 9001], true, true),
        ]
    );

    // An API token: the same answer, with the token's name and expiry.
    let r = h
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/api/proxy-tokens")
                .header(header::COOKIE, &alice)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    json!({"name": "laptop", "expires_in_days": 3}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let (status, body) = me(&h, "authorization", &format!("Bearer {token}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["api_token"]["name"], "laptop");
    let left = body["api_token"]["expires_in_secs"].as_i64().unwrap();
    assert!((3 * 86_400 - 60..=3 * 86_400).contains(&left), "{left}");
    assert_eq!(pods(&body).len(), 2);
    assert_eq!(services(&body).len(), 2);

    let r = h.get("/api/me", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let (status, _) = me(&h, "authorization", "Bearer pg_nope").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    h.finish().await;
}
on_both!(me_lists_what_each_may_reach);
