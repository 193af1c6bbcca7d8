//! The admin API, health endpoints and JWKS, in-process on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{Harness, ADMIN};
use serde_json::json;

async fn health(h: &Harness) {
    let r = h.get("/healthz", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ok");
    let r = h.get("/readyz", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["database"], "ok");
    assert_eq!(r.json()["keys"], "ok");
    let r = h.get("/.well-known/jwks.json", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let keys = r.json();
    let k = &keys["keys"][0];
    assert_eq!(k["alg"], "EdDSA");
    assert_eq!(k["crv"], "Ed25519");
    assert!(k["kid"].as_str().unwrap().starts_with("cap-"));
    assert!(
        k.get("d").is_none_or(|d| d.is_null()),
        "private part published: {k}"
    );
    // Ticket keys never leave the control plane.
    assert!(!r.body.contains("tkt-"));
    // Unknown paths answer JSON.
    let r = h.get("/nope", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!r.error().is_empty());
    // So do wrong methods.
    let r = h.admin(Method::DELETE, "/v1/users", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.error().contains("method"), "{}", r.body);
    let r = h
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/healthz")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!r.error().is_empty());
    // Closing the database makes /readyz say so.
    h.tdb.db.close().await;
    let r = h.get("/readyz", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["database"], "unreachable");
    assert!(
        r.error().contains("the database does not answer"),
        "{}",
        r.body
    );
    // A key rotation then is a 503 saying so, not an internal error.
    let r = h.admin(Method::POST, "/v1/keys/rotate", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.error().contains("database"), "{}", r.body);
}
both!(health_ready_and_jwks, health);

async fn admin_auth(h: &Harness) {
    let cases: [Option<String>; 6] = [
        None,
        Some("Bearer ".into()),
        Some("Bearer wrong".into()),
        Some(format!("Bearer {ADMIN}x")),
        Some(format!("bearer {ADMIN}")),
        Some(format!("Basic {ADMIN}")),
    ];
    for auth in cases {
        let mut b = Request::builder().uri("/v1/users");
        if let Some(a) = &auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        let r = h.send(b.body(Body::empty()).unwrap()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(r.error().contains("Authorization: Bearer"), "{}", r.body);
        assert!(r.header("www-authenticate").is_some());
    }
    // A user's session is not the admin token.
    let cookie = h.login("someone").await;
    let r = h.get("/v1/users", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Nor is a capability.
    h.seed().await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/capabilities")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::COOKIE, h.login("alice").await)
        .body(Body::from(json!({"pod": "myslug", "port": 80}).to_string()))
        .unwrap();
    let token = h.send(req).await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = h
        .get(
            "/v1/users",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = h.admin(Method::GET, "/v1/users", None).await;
    assert_eq!(r.status, StatusCode::OK);
}
both!(admin_needs_the_admin_token, admin_auth);

async fn users(h: &Harness) {
    let r = h
        .admin(
            Method::POST,
            "/v1/users",
            Some(json!({"id": "u1", "email": "u1@example.dev", "name": "U One"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json()["id"], "u1");
    // Generated id.
    let r = h
        .admin(Method::POST, "/v1/users", Some(json!({"name": "no id"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let generated = r.json()["id"].as_str().unwrap().to_owned();
    assert!(generated.starts_with("user-"));
    // Duplicates, each named with the way out.
    let r = h
        .admin(Method::POST, "/v1/users", Some(json!({"id": "u1"})))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(
        r.error().contains(
            "a user \"u1\" already exists; pick another id, or update it with PATCH /v1/users/u1"
        ),
        "{}",
        r.body
    );
    let r = h
        .admin(
            Method::POST,
            "/v1/users",
            Some(json!({"id": "u2", "email": "u1@example.dev"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(
        r.error().contains("belongs to user \"u1\" already"),
        "{}",
        r.body
    );
    let r = h
        .admin(
            Method::PATCH,
            &format!("/v1/users/{generated}"),
            Some(json!({"email": "u1@example.dev"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(
        r.error().contains("belongs to user \"u1\" already"),
        "{}",
        r.body
    );
    // A user's own email is no clash.
    let r = h
        .admin(
            Method::PATCH,
            "/v1/users/u1",
            Some(json!({"email": "u1@example.dev"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Validation, each with a message.
    for bad in [
        json!({"id": ""}),
        json!({"id": "has space"}),
        json!({"id": "-leading"}),
        json!({"id": "anonymous"}),
        json!({"id": "x".repeat(129)}),
        json!({"id": "ok", "email": "not-an-email"}),
        json!({"id": "ok", "email": "a@b"}),
        json!({"id": "ok", "name": "a\u{7}b"}),
        json!({"id": "ok", "nmae": "typo"}),
        json!({"id": 5}),
        json!([1, 2]),
    ] {
        let r = h.admin(Method::POST, "/v1/users", Some(bad.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert!(r.error().len() > 10, "{}", r.body);
    }
    let r = h
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/users")
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
                .body(Body::from("{\"id\":\"x\"}"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("Content-Type: application/json"));
    let r = h
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/users")
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Read, update, list, delete.
    let r = h.admin(Method::GET, "/v1/users/u1", None).await;
    assert_eq!(r.json()["email"], "u1@example.dev");
    let r = h
        .admin(
            Method::PATCH,
            "/v1/users/u1",
            Some(json!({"email": null, "name": "Renamed"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["email"], serde_json::Value::Null);
    assert_eq!(r.json()["name"], "Renamed");
    let r = h
        .admin(Method::PATCH, "/v1/users/u1", Some(json!({"email": "bad"})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h.admin(Method::GET, "/v1/users", None).await;
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    let r = h.admin(Method::DELETE, "/v1/users/u1", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for (m, body) in [
        (Method::GET, None),
        (Method::DELETE, None),
        (Method::PATCH, Some(json!({"name": "x"}))),
    ] {
        let r = h.admin(m.clone(), "/v1/users/u1", body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m}");
        assert!(r.error().contains("user"), "{}", r.body);
    }
}
both!(users_crud_and_validation, users);

async fn teams_and_members(h: &Harness) {
    h.admin(Method::POST, "/v1/users", Some(json!({"id": "m1"})))
        .await;
    let r = h
        .admin(
            Method::POST,
            "/v1/teams",
            Some(json!({"id": "t9", "name": "Nine"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = h
        .admin(
            Method::POST,
            "/v1/teams",
            Some(json!({"id": "t9", "name": "Again"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = h
        .admin(Method::POST, "/v1/teams", Some(json!({"id": "tx"})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "name is required");
    let r = h
        .admin(
            Method::PATCH,
            "/v1/teams/t9",
            Some(json!({"name": "Nine!"})),
        )
        .await;
    assert_eq!(r.json()["name"], "Nine!");

    let r = h
        .admin(
            Method::POST,
            "/v1/teams/t9/members",
            Some(json!({"user_id": "m1", "role": "admin"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = h
        .admin(
            Method::POST,
            "/v1/teams/t9/members",
            Some(json!({"user_id": "m1"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = h
        .admin(
            Method::POST,
            "/v1/teams/t9/members",
            Some(json!({"user_id": "ghost"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("POST /v1/users"));
    let r = h
        .admin(
            Method::POST,
            "/v1/teams/nope/members",
            Some(json!({"user_id": "m1"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .admin(
            Method::PUT,
            "/v1/teams/t9/members/m1",
            Some(json!({"role": "boss"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("owner, admin, member"), "{}", r.body);
    let r = h
        .admin(
            Method::PUT,
            "/v1/teams/t9/members/ghost",
            Some(json!({"role": "member"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(
        r.error()
            .contains("no user \"ghost\"; create it with POST /v1/users"),
        "{}",
        r.body
    );
    let r = h
        .admin(
            Method::PUT,
            "/v1/teams/t9/members/m1",
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(r.json()["role"], "owner");
    let r = h.admin(Method::GET, "/v1/teams/t9/members", None).await;
    assert_eq!(r.json()[0]["user_id"], "m1");
    let r = h.admin(Method::GET, "/v1/teams/t9/members/m1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h
        .admin(Method::DELETE, "/v1/teams/t9/members/m1", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h.admin(Method::GET, "/v1/teams/t9/members/m1", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h.admin(Method::DELETE, "/v1/teams/t9", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h.admin(Method::GET, "/v1/teams", None).await;
    assert_eq!(r.json().as_array().unwrap().len(), 0);
}
both!(teams_and_members_crud, teams_and_members);

async fn servers_pods_ports(h: &Harness) {
    h.seed().await;
    // Servers.
    let r = h
        .admin(
            Method::POST,
            "/v1/servers",
            Some(json!({"id": "s2", "address": "http://10.0.0.1:80"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("without scheme or port"));
    let r = h
        .admin(
            Method::POST,
            "/v1/servers",
            Some(json!({"id": "s2", "address": "node2.internal", "name": "two"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("must be an IP address"));
    let r = h
        .admin(
            Method::POST,
            "/v1/servers",
            Some(json!({"id": "s2", "address": "10.0.0.1", "name": "two"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = h
        .admin(
            Method::PATCH,
            "/v1/servers/s2",
            Some(json!({"address": "10.0.0.2"})),
        )
        .await;
    assert_eq!(r.json()["address"], "10.0.0.2");
    assert_eq!(r.json()["name"], "two");
    assert_eq!(
        h.admin(Method::GET, "/v1/servers", None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Pods: the slug must fit a 63-character label for every port.
    let max = 63 - "localhost-65535-pod-".len();
    let r = h
        .admin(
            Method::POST,
            "/v1/pods",
            Some(json!({"slug": "a".repeat(max + 1), "owner_id": "alice", "nginx_port": 30002})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let msg = r.error();
    assert!(
        msg.contains("63-character DNS label") && msg.contains(&format!("at most {max}")),
        "{msg}"
    );
    let r = h
        .admin(
            Method::POST,
            "/v1/pods",
            Some(json!({"slug": "a".repeat(max), "owner_id": "alice", "nginx_port": 30002})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json()["status"], "starting");
    for (bad, needle) in [
        (
            json!({"slug": "Bad_Slug", "owner_id": "alice", "nginx_port": 1}),
            "not valid",
        ),
        (
            json!({"slug": "ok1", "owner_id": "ghost", "nginx_port": 1}),
            "owner_id",
        ),
        (
            json!({"slug": "ok1", "owner_id": "alice", "team_id": "nope", "nginx_port": 1}),
            "team_id",
        ),
        (
            json!({"slug": "ok1", "owner_id": "alice", "server_id": "nope", "nginx_port": 1}),
            "server_id",
        ),
        (
            json!({"slug": "ok1", "owner_id": "alice", "nginx_port": 0}),
            "nginx_port",
        ),
        (
            json!({"slug": "ok1", "owner_id": "alice", "nginx_port": 70000}),
            "JSON body",
        ),
        (
            json!({"slug": "ok1", "owner_id": "alice", "nginx_port": 1, "status": "dancing"}),
            "running",
        ),
        (json!({"slug": "ok1", "owner_id": "alice"}), "nginx_port"),
    ] {
        let r = h.admin(Method::POST, "/v1/pods", Some(bad.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert!(r.error().contains(needle), "{bad}: {}", r.body);
    }
    let r = h
        .admin(
            Method::POST,
            "/v1/pods",
            Some(json!({"slug": "myslug", "owner_id": "alice", "nginx_port": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    // Update and status.
    let r = h
        .admin(
            Method::PATCH,
            "/v1/pods/myslug",
            Some(json!({"team_id": null, "server_id": "s2", "nginx_port": 31000})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let pod = r.json();
    assert_eq!(pod["team_id"], serde_json::Value::Null);
    assert_eq!(pod["server_id"], "s2");
    assert_eq!(pod["nginx_port"], 31000);
    assert_eq!(pod["owner_id"], "alice");
    let r = h
        .admin(
            Method::PUT,
            "/v1/pods/myslug/status",
            Some(json!({"status": "stopped"})),
        )
        .await;
    assert_eq!(r.json()["status"], "stopped");
    let r = h
        .admin(
            Method::PUT,
            "/v1/pods/myslug/status",
            Some(json!({"status": "gone"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h
        .admin(
            Method::PUT,
            "/v1/pods/nope/status",
            Some(json!({"status": "running"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Ports.
    let r = h
        .admin(
            Method::PUT,
            "/v1/pods/myslug/ports/8726",
            Some(json!({"sharing": "team", "label": "VS Code"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = h
        .admin(
            Method::PUT,
            "/v1/pods/myslug/ports/8726",
            Some(json!({"sharing": "public"})),
        )
        .await;
    assert_eq!(r.json()["sharing"], "public");
    let r = h
        .admin(
            Method::PUT,
            "/v1/pods/myslug/ports/8726",
            Some(json!({"sharing": "world"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("signed_in"));
    let r = h
        .admin(
            Method::PUT,
            "/v1/pods/myslug/ports/0",
            Some(json!({"sharing": "team"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h
        .admin(
            Method::PUT,
            "/v1/pods/myslug/ports/99999",
            Some(json!({"sharing": "team"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!r.error().is_empty());
    let r = h
        .admin(
            Method::PUT,
            "/v1/pods/nope/ports/80",
            Some(json!({"sharing": "team"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h.admin(Method::GET, "/v1/pods/myslug/ports", None).await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let r = h
        .admin(Method::GET, "/v1/pods/myslug/ports/8726", None)
        .await;
    assert_eq!(r.json()["label"], "");
    let r = h
        .admin(Method::DELETE, "/v1/pods/myslug/ports/8726", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h
        .admin(Method::GET, "/v1/pods/myslug/ports/8726", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("default level"), "{}", r.body);
    // No such pod, or no such port: said as such, for reading and for removing.
    for method in [Method::GET, Method::DELETE] {
        let r = h
            .admin(method.clone(), "/v1/pods/nope/ports/8726", None)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
        assert_eq!(r.error(), "no pod \"nope\"");
        let r = h
            .admin(method.clone(), "/v1/pods/myslug/ports/0", None)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert!(r.error().contains("`port` must be 1-65535"), "{}", r.body);
        let r = h.admin(method, "/v1/pods/myslug/ports/http", None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert!(
            r.error().contains("a port is a number from 1 to 65535"),
            "{}",
            r.body
        );
    }

    // Referential integrity answers 409 with a way out.
    let r = h.admin(Method::DELETE, "/v1/users/alice", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.error().contains("delete or reassign"));
    assert!(r.error().contains("still owns pods ["), "{}", r.body);
    assert!(r.error().contains("\"myslug\""), "{}", r.body);
    let r = h.admin(Method::DELETE, "/v1/servers/s2", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.error()
            .contains("server \"s2\" still runs pods [\"myslug\"]"),
        "{}",
        r.body
    );
    let r = h.admin(Method::DELETE, "/v1/pods/myslug", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h.admin(Method::DELETE, "/v1/servers/s2", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.admin(Method::GET, "/v1/pods", None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Audit query validation.
    let r = h.admin(Method::GET, "/v1/audit?limit=0", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h.admin(Method::GET, "/v1/audit?limit=abc", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("query string"));
}
both!(servers_pods_and_ports, servers_pods_ports);

#[tokio::test]
async fn two_label_template_limits_slugs_by_its_own_label() {
    let h = Harness::with(common::Which::Sqlite, |mut s| {
        s.host_template = Some("localhost-{port}.pod-{pod}.{domain}".into());
        s
    })
    .await
    .unwrap();
    h.admin(Method::POST, "/v1/users", Some(json!({"id": "o"})))
        .await;
    let max = 63 - "pod-".len();
    let r = h
        .admin(
            Method::POST,
            "/v1/pods",
            Some(json!({"slug": "b".repeat(max), "owner_id": "o", "nginx_port": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // The upstream template (default two-label form) also has to fit; here it does.
    let r = h
        .admin(
            Method::POST,
            "/v1/pods",
            Some(json!({"slug": "b".repeat(max + 1), "owner_id": "o", "nginx_port": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    h.finish().await;
}

/// A pod's own limits at the edge: set on create and update, checked with a 400 naming the
/// field, shown in the pod's answers, removed with `null`, and in the filter configuration
/// (`rate_limits.pods`, `concurrency_limits.pods`) beside the global ones of the flags.
async fn pod_limits(h: &Harness) {
    h.seed().await;
    let r = h.admin(Method::GET, "/v1/pods/myslug", None).await;
    assert!(r.json().get("limits").is_none(), "{}", r.body);
    for (bad, needle) in [
        (
            json!({"concurrent": 0}),
            "`limits.concurrent` must be at least 1",
        ),
        (
            json!({"rate": {"per_second": 0, "burst": 5}}),
            "`limits.rate`: per_second and burst must both be at least 1",
        ),
        (json!({"rate": {"per_second": 1}}), "JSON body"),
        (json!({"concurrent": -1}), "JSON body"),
        (json!({"burst": 1}), "JSON body"),
    ] {
        let body = json!({"slug": "lim", "owner_id": "alice", "nginx_port": 1, "limits": bad});
        let r = h.admin(Method::POST, "/v1/pods", Some(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert!(r.error().contains(needle), "{bad}: {}", r.body);
        let r = h
            .admin(
                Method::PATCH,
                "/v1/pods/myslug",
                Some(json!({ "limits": bad })),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert!(r.error().contains(needle), "{bad}: {}", r.body);
    }
    // A refused create made no pod.
    let r = h.admin(Method::GET, "/v1/pods/lim", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let limits = json!({"rate": {"per_second": 5, "burst": 10}, "concurrent": 3});
    let body = json!({"slug": "lim", "owner_id": "alice", "nginx_port": 1, "limits": limits});
    let r = h.admin(Method::POST, "/v1/pods", Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json()["limits"], limits);
    let r = h.admin(Method::GET, "/v1/pods/lim", None).await;
    assert_eq!(r.json()["limits"], limits);
    assert_eq!(r.json()["nginx_port"], 1);
    let r = h
        .admin(
            Method::PATCH,
            "/v1/pods/myslug",
            Some(json!({"limits": {"concurrent": 2}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["limits"], json!({"concurrent": 2}));
    // Another field changed: the limits stay.
    let r = h
        .admin(
            Method::PATCH,
            "/v1/pods/myslug",
            Some(json!({"nginx_port": 30009})),
        )
        .await;
    assert_eq!(r.json()["limits"], json!({"concurrent": 2}));
    let listed = h.admin(Method::GET, "/v1/pods", None).await.json();
    let by_slug = |slug: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["slug"] == slug)
            .unwrap()
            .clone()
    };
    assert_eq!(by_slug("lim")["limits"], limits);
    assert_eq!(by_slug("myslug")["limits"], json!({"concurrent": 2}));

    let config = h.admin(Method::GET, "/v1/filter-config", None).await.json();
    assert_eq!(
        config["rate_limits"],
        json!({"pods": {"lim": {"per_second": 5, "burst": 10}}})
    );
    assert_eq!(
        config["concurrency_limits"],
        json!({"pods": {"lim": 3, "myslug": 2}})
    );

    // `null` removes them; a pod deleted takes its limits along.
    let r = h
        .admin(
            Method::PATCH,
            "/v1/pods/myslug",
            Some(json!({"limits": null})),
        )
        .await;
    assert!(r.json().get("limits").is_none(), "{}", r.body);
    let r = h.admin(Method::DELETE, "/v1/pods/lim", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let config = h.admin(Method::GET, "/v1/filter-config", None).await.json();
    assert!(config.get("rate_limits").is_none(), "{config}");
    assert!(config.get("concurrency_limits").is_none(), "{config}");
    let r = h
        .admin(
            Method::POST,
            "/v1/pods",
            Some(json!({"slug": "lim", "owner_id": "alice", "nginx_port": 1})),
        )
        .await;
    assert!(r.json().get("limits").is_none(), "{}", r.body);

    // The OpenAPI document describes the field and its bounds.
    let doc = h.get("/openapi.json", &[]).await.json();
    let limits = &doc["components"]["schemas"]["PodLimits"];
    assert_eq!(limits["properties"]["concurrent"]["minimum"], 1, "{limits}");
    let body = &doc["paths"]["/v1/pods"]["post"]["requestBody"];
    assert!(body.to_string().contains("NewPod"), "{body}");
    let new_pod = &doc["components"]["schemas"]["NewPod"];
    assert!(new_pod["properties"].get("limits").is_some(), "{new_pod}");
}
both!(pod_limits_set_shown_and_pushed, pod_limits);

/// The filter configuration the xDS push would send now, compiled as the filter compiles it.
async fn pushed(h: &Harness) -> podgate_protocol::config::CompiledConfig {
    let ring = h.state.keys().unwrap();
    podgate::filter_config::build(h.state.db(), h.state.config(), &ring)
        .await
        .unwrap()
        .compile()
        .unwrap()
}

/// A pod's lifecycle changes the pods of the filter's configuration and nothing else (the same
/// settings, revocations and cuts), so the filter keeps what it decided for every other pod
/// across the push.
async fn pod_lifecycle_pushes(h: &Harness) {
    h.seed().await;
    let mut before = pushed(h).await;
    let status = |status: &'static str| Some(json!({ "status": status }));
    let steps = [
        (
            "created",
            Method::POST,
            "/v1/pods",
            Some(
                json!({"slug": "life", "owner_id": "alice", "server_id": "s1", "nginx_port": 30005, "status": "starting"}),
            ),
        ),
        (
            "running",
            Method::PUT,
            "/v1/pods/life/status",
            status("running"),
        ),
        (
            "stopped",
            Method::PUT,
            "/v1/pods/life/status",
            status("stopped"),
        ),
        (
            "moved",
            Method::PATCH,
            "/v1/pods/life",
            Some(json!({"nginx_port": 31005})),
        ),
        ("deleted", Method::DELETE, "/v1/pods/life", None),
    ];
    for (what, method, path, body) in steps {
        let r = h.admin(method, path, body).await;
        assert!(r.status.is_success(), "{what}: {}", r.body);
        let after = pushed(h).await;
        assert_ne!(before.pods.get("life"), after.pods.get("life"), "{what}");
        assert!(before.same_settings(&after), "{what}");
        assert_eq!(before.revoked, after.revoked, "{what}");
        assert_eq!(before.cutoffs, after.cutoffs, "{what}");
        before = after;
    }
}
both!(
    a_pods_lifecycle_changes_only_the_pods_filter_config,
    pod_lifecycle_pushes
);

/// A PATCH that races the platform's status report does not undo it: the pod is read within
/// the change that writes it back. The report here is a change the test holds open while the
/// PATCH starts; on the code that read the pod before its change, the PATCH wrote the old
/// status back once the report committed.
async fn a_patch_does_not_undo_a_status_report_that_raced_it(h: &Harness) {
    use podgate_protocol::config::PodStatus;
    h.seed().await;
    let before = h.tdb.db.get_pod("myslug").await.unwrap().unwrap();
    let mut reported = before.clone();
    reported.status = if before.status == PodStatus::Running {
        PodStatus::Stopped
    } else {
        PodStatus::Running
    };
    let mut report = h.tdb.db.change().await.unwrap();
    assert!(report.update_pod(&reported).await.unwrap());
    let patch = h.admin(
        Method::PATCH,
        "/v1/pods/myslug",
        Some(json!({"limits": {"concurrent": 7}})),
    );
    let commit = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        report.commit().await.unwrap();
    };
    let (r, ()) = tokio::join!(patch, commit);
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["limits"]["concurrent"], 7, "{}", r.body);
    let after = h.tdb.db.get_pod("myslug").await.unwrap().unwrap();
    assert_eq!(
        after.status, reported.status,
        "the status report was undone"
    );
}
both!(
    a_patch_races_a_status_report,
    a_patch_does_not_undo_a_status_report_that_raced_it
);

/// Setting a service's credential while the service is being deleted does not bring it back:
/// the credential's write reads the service within its own change. The deletion here is a
/// change the test holds open while the `PUT` starts; on the code that read the service
/// before its change, the `PUT` wrote the whole service back once the deletion committed.
async fn a_credential_set_while_its_service_is_deleted_does_not_bring_it_back(h: &Harness) {
    h.seed().await;
    let r = h
        .admin(
            Method::POST,
            "/v1/services",
            Some(json!({"name": "gone", "owner_id": "alice",
                "upstream_url": "https://api.example.com"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let mut deletion = h.tdb.db.change().await.unwrap();
    assert!(deletion.delete_service("gone").await.unwrap());
    let put = h.admin(
        Method::PUT,
        "/v1/services/gone/credential",
        Some(json!({"header": "x-api-key", "value": "sk-late"})),
    );
    let commit = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        deletion.commit().await.unwrap();
    };
    let (r, ()) = tokio::join!(put, commit);
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(r.error().contains("no service"), "{}", r.body);
    assert!(h.tdb.db.get_service("gone").await.unwrap().is_none());
    let r = h.admin(Method::GET, "/v1/services/gone", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
}
both!(
    a_credential_races_a_deletion,
    a_credential_set_while_its_service_is_deleted_does_not_bring_it_back
);

/// A `PATCH` that sets a field to `null` which cannot be removed (an owner, a status, a name)
/// is a 400 naming the field, and changes nothing; before, `null` was read as "left out" and the
/// answer was a 200 with nothing changed.
async fn a_patch_cannot_null_a_field_that_cannot_be_removed(h: &Harness) {
    h.seed().await;
    let r = h
        .admin(
            Method::POST,
            "/v1/services",
            Some(json!({"name": "api", "owner_id": "alice",
                "upstream_url": "https://api.example.com"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for (path, field) in [
        ("/v1/pods/myslug", "owner_id"),
        ("/v1/pods/myslug", "status"),
        ("/v1/pods/myslug", "nginx_port"),
        ("/v1/services/api", "owner_id"),
        ("/v1/services/api", "sharing"),
        ("/v1/services/api", "upstream_url"),
        ("/v1/users/alice", "name"),
        ("/v1/servers/s1", "name"),
        ("/v1/servers/s1", "address"),
    ] {
        let before = h.admin(Method::GET, path, None).await.json();
        let r = h
            .admin(Method::PATCH, path, Some(json!({ field: null })))
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{path} {field}: {}",
            r.body
        );
        assert!(
            r.error().contains(field) && r.error().contains("null"),
            "{path} {field}: {}",
            r.body
        );
        assert_eq!(h.admin(Method::GET, path, None).await.json(), before);
    }
    // A field that can be removed still is.
    let r = h
        .admin(
            Method::PATCH,
            "/v1/pods/myslug",
            Some(json!({"team_id": null})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.json()["team_id"].is_null(), "{}", r.body);
}
both!(
    a_patch_with_null_for_a_field_that_cannot_be_removed,
    a_patch_cannot_null_a_field_that_cannot_be_removed
);

/// On PostgreSQL a change holds one of the pool's connections until it ends: an admin write that
/// read what it names (a pod's new team and server, a resource's former owner) through the pool
/// while its change was open waited on itself with a one-connection pool, and answered 503 after
/// the pool's 5 s. Now those reads are made before the change opens, or on its connection.
#[tokio::test]
async fn admin_writes_do_not_wait_on_their_own_change_for_a_connection() {
    let Some(h) = Harness::with_connections(common::Which::Postgres, 1).await else {
        return;
    };
    h.seed().await;
    let r = h
        .admin(
            Method::PATCH,
            "/v1/pods/myslug",
            Some(json!({"owner_id": "bob", "team_id": "t1", "server_id": "s1"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["owner_id"], "bob");
    let r = h
        .admin(
            Method::POST,
            "/v1/services",
            Some(json!({"name": "chat", "owner_id": "alice",
                "upstream_url": "http://127.0.0.1:9", "resource_path": "/sessions/{id}"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for owner in ["alice", "bob"] {
        let r = h
            .admin(
                Method::PUT,
                "/v1/services/chat/resources/s1",
                Some(json!({ "owner": owner })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{owner}: {}", r.body);
    }
    let r = h
        .admin(Method::GET, "/v1/services/chat/resources/s1", None)
        .await;
    assert_eq!(r.json()["owner_id"], "bob", "{}", r.body);
}

/// Removing a service's OAuth credential clears its OAuth tokens on every control plane, as
/// `credential/clear` does, however it is removed (`DELETE …/credential`, a `PUT` of a static
/// one, a `PATCH` with `credential: null`): the service's OAuth epoch moves with the removal, in
/// its change, so that a control plane still holding a token never uses it for the same
/// configuration set again. Setting an OAuth credential, or removing a static one, moves nothing.
async fn removing_a_credential_clears_its_oauth_tokens(h: &Harness) {
    h.seed().await;
    let oauth = json!({"oauth": {"token_url": "https://idp.example/token",
        "grant": "client_credentials", "client_id": "c", "client_secret": "s"}});
    let r = h
        .admin(
            Method::POST,
            "/v1/services",
            Some(json!({"name": "api", "owner_id": "alice",
                "upstream_url": "https://api.example.com", "credential": oauth})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let epoch = || async {
        let row = h.tdb.db.get_service("api").await.unwrap().unwrap();
        (row.oauth_epoch.generation, row.oauth_epoch.cleared)
    };
    let static_key = json!({"header": "x-api-key", "value": "sk-1"});
    let set_oauth = || {
        h.admin(
            Method::PUT,
            "/v1/services/api/credential",
            Some(oauth.clone()),
        )
    };
    for (method, path, body) in [
        (Method::DELETE, "/v1/services/api/credential", None),
        (
            Method::PUT,
            "/v1/services/api/credential",
            Some(static_key.clone()),
        ),
        (
            Method::PATCH,
            "/v1/services/api",
            Some(json!({"credential": null})),
        ),
    ] {
        let r = set_oauth().await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let (generation, _) = epoch().await;
        let r = h.admin(method.clone(), path, body).await;
        assert_eq!(r.status, StatusCode::OK, "{method} {path}: {}", r.body);
        assert_eq!(
            epoch().await,
            (generation + 1, generation + 1),
            "{method} {path} did not clear the tokens"
        );
    }
    // Setting one, or removing a static one: nothing to clear.
    let before = epoch().await;
    let r = set_oauth().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = h
        .admin(Method::PUT, "/v1/services/api/credential", Some(static_key))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let cleared = epoch().await;
    assert_eq!(cleared, (before.0 + 1, before.0 + 1));
    let r = h
        .admin(Method::DELETE, "/v1/services/api/credential", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.json()["credential"].is_null(), "{}", r.body);
    assert_eq!(epoch().await, cleared);
}
both!(
    removing_a_credential_clears_oauth_tokens,
    removing_a_credential_clears_its_oauth_tokens
);

/// `podgate keys rewrap` runs while the control planes serve: a service deleted while it runs
/// stays deleted, and a credential set meanwhile is kept (each service is resealed in a change
/// that reads it afresh). The deletion here is a change the test holds open while the rewrap
/// starts; on the code that wrote back the rows it read first, the rewrap brought the service
/// back once the deletion committed.
async fn a_rewrap_does_not_bring_back_a_service_deleted_meanwhile(h: &Harness) {
    use podgate::key_encryption::{KeyEncryption, KeyEncryptionKey};
    h.seed().await;
    for name in ["gone", "kept"] {
        let r = h
            .admin(
                Method::POST,
                "/v1/services",
                Some(json!({"name": name, "owner_id": "alice",
                    "upstream_url": "https://api.example.com",
                    "credential": {"header": "x-api-key", "value": format!("sk-{name}")}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    // The operator's key rotates: a new current key, the test's one as the previous.
    let previous = KeyEncryptionKey::parse(common::TEST_KEK, "test").unwrap();
    let rotated = KeyEncryption::new(
        Some(KeyEncryptionKey::from_bytes([9; 32], "new")),
        vec![previous],
    );
    let mut deletion = h.tdb.db.change().await.unwrap();
    assert!(deletion.delete_service("gone").await.unwrap());
    let rewrap = podgate::services::rewrap(&h.tdb.db, &rotated);
    let commit = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        deletion.commit().await.unwrap();
    };
    let (rewrapped, ()) = tokio::join!(rewrap, commit);
    assert_eq!(rewrapped.unwrap(), (1, 0));
    assert!(h.tdb.db.get_service("gone").await.unwrap().is_none());
    let kept = h.tdb.db.get_service("kept").await.unwrap().unwrap();
    let stored = kept.credential.unwrap();
    assert_eq!(
        stored.kek_id.as_deref(),
        Some(rotated.current().unwrap().id())
    );
    assert_eq!(
        podgate::services::open(&rotated, "kept", &stored).unwrap(),
        "sk-kept"
    );
}
both!(
    a_rewrap_races_a_deletion,
    a_rewrap_does_not_bring_back_a_service_deleted_meanwhile
);

/// Under a template that starts a label with the slug, a pod slug that would make it an
/// internationalized (`xn--`) label, which browsers show in other scripts, is refused with a
/// 400 saying how to pick another; the same slug is fine inside a label.
#[tokio::test]
async fn a_slug_that_would_start_an_internationalized_label_is_refused() {
    for (template, refused) in [
        ("{pod}.p{port}.{domain}", true),
        ("localhost-{port}-pod-{pod}.{domain}", false),
    ] {
        let h = Harness::with(common::Which::Sqlite, |mut s| {
            s.host_template = Some(template.into());
            s
        })
        .await
        .unwrap();
        h.admin(Method::POST, "/v1/users", Some(json!({"id": "o"})))
            .await;
        let r = h
            .admin(
                Method::POST,
                "/v1/pods",
                Some(json!({"slug": "xn--lice-43d", "owner_id": "o", "nginx_port": 1})),
            )
            .await;
        if refused {
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{template}: {}", r.body);
            assert!(r.error().contains("third and fourth"), "{}", r.body);
            assert!(h.tdb.db.get_pod("xn--lice-43d").await.unwrap().is_none());
        } else {
            assert_eq!(r.status, StatusCode::CREATED, "{template}: {}", r.body);
        }
        h.finish().await;
    }
}

/// A pod or service stored before a rule that refuses its name now (an older version, or
/// other host templates) is left out of the filter's configuration, so every other pod and
/// service, and every revocation, still reaches Envoy: the filter refuses a whole configuration
/// holding a name it cannot serve, and Envoy would keep its last one.
#[tokio::test]
async fn a_name_the_filter_would_refuse_is_left_out_and_the_rest_is_pushed() {
    let h = Harness::with(common::Which::Sqlite, |mut s| {
        s.host_template = Some("{pod}.p{port}.{domain}".into());
        s.service_host_template = Some("{name}.{domain}".into());
        s
    })
    .await
    .unwrap();
    h.admin(Method::POST, "/v1/users", Some(json!({"id": "o"})))
        .await;
    let r = h
        .admin(
            Method::POST,
            "/v1/pods",
            Some(json!({"slug": "alice", "owner_id": "o", "nginx_port": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = h
        .admin(
            Method::POST,
            "/v1/services",
            Some(json!({"name": "api", "owner_id": "o", "upstream_url": "http://127.0.0.1:9"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // As an older version stored them, before internationalized labels were refused.
    h.tdb
        .db
        .create_pod(&podgate::store::Pod {
            slug: "xn--lice-43d".into(),
            owner_id: "o".into(),
            team_id: None,
            server_id: None,
            status: podgate::store::PodStatus::Running,
            nginx_port: 1,
            created_at: 0,
            updated_at: 0,
        })
        .await
        .unwrap();
    let mut service = h.tdb.db.get_service("api").await.unwrap().unwrap();
    service.name = "xn--api-4ua".into();
    h.tdb.db.put_service(&service).await.unwrap();

    let ring = h.state.keys().unwrap();
    let built = podgate::filter_config::build(h.state.db(), h.state.config(), &ring)
        .await
        .unwrap();
    let compiled = built.compile().expect("the filter takes the configuration");
    assert!(compiled.pods.contains_key("alice"));
    assert!(!compiled.pods.contains_key("xn--lice-43d"));
    assert!(compiled.services.contains_key("api"));
    assert!(!compiled.services.contains_key("xn--api-4ua"));
    assert!(!compiled.services_without_credential.contains("xn--api-4ua"));
    h.finish().await;
}

/// Two creations of one service name that race: the later is a 409 and the service stays as
/// the first made it (the creation once replaced it whole, owner, upstream and credential). The
/// first here is a change the test holds open while the `POST` starts.
async fn a_service_created_meanwhile_is_not_replaced(h: &Harness) {
    h.seed().await;
    let first = podgate::store::ServiceRow {
        name: "dup".into(),
        owner_id: "alice".into(),
        team_id: None,
        sharing: podgate::store::Sharing::Owner,
        upstream_url: "https://first.example.com".into(),
        ca_pem: None,
        credential: None,
        oauth: None,
        resource_path: None,
        oauth_epoch: podgate::store::OAuthEpoch::default(),
        created_at: 1,
        updated_at: 1,
    };
    let mut creation = h.tdb.db.change().await.unwrap();
    creation.create_service(&first).await.unwrap();
    let post = h.admin(
        Method::POST,
        "/v1/services",
        Some(json!({"name": "dup", "owner_id": "bob",
            "upstream_url": "https://second.example.com"})),
    );
    let commit = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        creation.commit().await.unwrap();
    };
    let (r, ()) = tokio::join!(post, commit);
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.error().contains("already exists"), "{}", r.body);
    let kept = h.tdb.db.get_service("dup").await.unwrap().unwrap();
    assert_eq!(
        (kept.owner_id.as_str(), kept.upstream_url.as_str()),
        ("alice", "https://first.example.com")
    );
}
both!(
    a_service_creation_races_another,
    a_service_created_meanwhile_is_not_replaced
);

/// A CA bundle Envoy could not load (cut short, not a certificate) is a 400 naming `ca_pem`,
/// and the service keeps the CA it had: Envoy would refuse the service's new cluster and leave
/// the service without an upstream.
async fn a_ca_envoy_could_not_load_is_refused(h: &Harness) {
    h.seed().await;
    let ca = rcgen::generate_simple_self_signed(vec!["upstream.example".to_owned()])
        .unwrap()
        .cert
        .pem();
    let r = h
        .admin(
            Method::POST,
            "/v1/services",
            Some(json!({"name": "api", "owner_id": "alice",
                "upstream_url": "https://upstream.example", "ca_pem": ca})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let not_a_certificate =
        "-----BEGIN CERTIFICATE-----\nTUlJQm9uZSB0d28=\n-----END CERTIFICATE-----\n".to_owned();
    for (bad, says) in [
        (ca[..ca.len() / 2].to_owned(), "certificate 1 is cut short"),
        (not_a_certificate.clone(), "certificate 1 is not an X.509"),
        (format!("{ca}{not_a_certificate}"), "certificate 2"),
    ] {
        let r = h
            .admin(
                Method::PATCH,
                "/v1/services/api",
                Some(json!({"ca_pem": bad})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert!(r.error().contains("`ca_pem`"), "{}", r.body);
        assert!(r.error().contains(says), "{says}: {}", r.body);
    }
    let kept = h.tdb.db.get_service("api").await.unwrap().unwrap();
    assert_eq!(kept.ca_pem.as_deref(), Some(ca.as_str()));
    let r = h
        .admin(
            Method::POST,
            "/v1/services",
            Some(json!({"name": "other", "owner_id": "alice",
                "upstream_url": "https://upstream.example", "ca_pem": not_a_certificate})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(h.tdb.db.get_service("other").await.unwrap().is_none());
}
both!(
    a_ca_that_cannot_be_loaded,
    a_ca_envoy_could_not_load_is_refused
);

/// A service whose OAuth configuration cannot be opened (sealed under a key-encryption key this
/// control plane does not have) is shown with why and what to do, never as a service without
/// OAuth.
async fn an_oauth_credential_that_cannot_be_opened_is_shown_with_why(h: &Harness) {
    use podgate::key_encryption::{KeyEncryption, KeyEncryptionKey};
    h.seed().await;
    let r = h
        .admin(
            Method::POST,
            "/v1/services",
            Some(json!({"name": "api", "owner_id": "alice",
                "upstream_url": "https://api.example.com"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let oauth = podgate::service_oauth::parse(json!({"token_url": "https://idp.example/token",
        "grant": "client_credentials", "client_id": "c", "client_secret": "s3cret-value"}))
    .unwrap();
    let elsewhere = KeyEncryption::new(
        Some(KeyEncryptionKey::from_bytes([3; 32], "dropped")),
        vec![],
    );
    let mut row = h.tdb.db.get_service("api").await.unwrap().unwrap();
    row.oauth = Some(podgate::service_oauth::seal(&elsewhere, "api", &oauth).unwrap());
    h.tdb.db.put_service(&row).await.unwrap();
    for path in ["/v1/services/api", "/v1/services"] {
        let r = h.admin(Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let body = r.json();
        let shown = if path.ends_with("api") {
            &body["oauth"]
        } else {
            &body[0]["oauth"]
        };
        assert_eq!(shown["sealed"], true, "{}", r.body);
        let error = shown["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}", r.body));
        assert!(error.contains("cannot be opened"), "{error}");
        assert!(error.contains("keys rewrap"), "{error}");
        assert!(!r.body.contains("s3cret"), "{}", r.body);
    }
    // Stored unsealed and unreadable: no key would help, only setting it again.
    row.oauth = Some(podgate::store::StoredOAuth {
        kek_id: None,
        config: "{not json".into(),
    });
    h.tdb.db.put_service(&row).await.unwrap();
    let r = h.admin(Method::GET, "/v1/services/api", None).await;
    let body = r.json();
    assert_eq!(body["oauth"]["sealed"], false, "{}", r.body);
    let error = body["oauth"]["error"].as_str().unwrap();
    assert!(error.contains("set the credential again"), "{error}");
    assert!(!error.contains("rewrap"), "{error}");
}
both!(
    an_unreadable_oauth_credential,
    an_oauth_credential_that_cannot_be_opened_is_shown_with_why
);

/// Two PATCHes of one user or server that race keep both changes: each reads the row in the
/// change that writes it back. The first here is a change the test holds open while the PATCH
/// of another field starts; on the code that read the row before its change, the PATCH wrote
/// the old email (the old address) back once the first committed.
async fn patches_that_race_keep_both_fields(h: &Harness) {
    h.seed().await;
    let mut first = h.tdb.db.change().await.unwrap();
    let mut alice = first.user_for_update("alice").await.unwrap().unwrap();
    alice.email = Some("alice@new.example".into());
    assert!(first.update_user(&alice).await.unwrap());
    let patch = h.admin(
        Method::PATCH,
        "/v1/users/alice",
        Some(json!({"name": "Alice Liddell"})),
    );
    let commit = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        first.commit().await.unwrap();
    };
    let (r, ()) = tokio::join!(patch, commit);
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["email"], "alice@new.example", "{}", r.body);
    let kept = h.tdb.db.get_user("alice").await.unwrap().unwrap();
    assert_eq!(
        (kept.email.as_deref(), kept.name.as_str()),
        (Some("alice@new.example"), "Alice Liddell")
    );

    let server = h.tdb.db.list_servers().await.unwrap().remove(0);
    let mut first = h.tdb.db.change().await.unwrap();
    let mut moved = first.server_for_update(&server.id).await.unwrap().unwrap();
    moved.address = "10.9.9.9".into();
    assert!(first.update_server(&moved).await.unwrap());
    let path = format!("/v1/servers/{}", server.id);
    let patch = h.admin(Method::PATCH, &path, Some(json!({"name": "renamed"})));
    let commit = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        first.commit().await.unwrap();
    };
    let (r, ()) = tokio::join!(patch, commit);
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let kept = h.tdb.db.get_server(&server.id).await.unwrap().unwrap();
    assert_eq!(
        (kept.address.as_str(), kept.name.as_str()),
        ("10.9.9.9", "renamed")
    );
}
both!(
    user_and_server_patches_race,
    patches_that_race_keep_both_fields
);
