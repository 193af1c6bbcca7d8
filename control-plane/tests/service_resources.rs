//! Services reached per resource, in-process, on SQLite and PostgreSQL: the admin API
//! (`resource_path` on create, resource owners under `/v1/services/{name}/resources`) with its
//! 400s and 404s; the rule (`authz::may_use_resource`: the owner only) applied by every mint of a
//! capability for a resource: the browser flow (`/api/proxy-auth`, the callback), its renewal,
//! `/v1/capabilities` and the exchange of API tokens at the edge; a lost resource cut off, and a
//! change stopped at its cut changing nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{Harness, Resp, Which};
use podgate::config::Settings;
use podgate::store::now_unix;
use podgate_protocol::config::{CompiledConfig, FilterConfig};
use podgate_protocol::redirect::encode_query_value;
use podgate_protocol::token::Verified;
use serde_json::json;

const SECRET: &str = "renew-secret-0123456789abcdef0123456789";
const CHAT: &str = "/v1/services/chat";

async fn harness(which: Which) -> Option<Harness> {
    Harness::seeded(which, |s| Settings {
        renew_secret: Some(SECRET.into()),
        ..s
    })
    .await
}

/// Service `chat` reached per resource, shared with everyone signed in; `a1` alice's, `b1`
/// bob's.
async fn chat(h: &Harness) {
    let r = h
        .admin(
            Method::POST,
            "/v1/services",
            Some(json!({
                "name": "chat",
                "owner_id": "alice",
                "sharing": "signed_in",
                "upstream_url": "http://127.0.0.1:9",
                "resource_path": "/sessions/{id}",
            })),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for (id, owner) in [("a1", "alice"), ("b1", "bob")] {
        let r = h
            .admin(
                Method::PUT,
                &format!("{CHAT}/resources/{id}"),
                Some(json!({ "owner": owner })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
}

async fn filter(h: &Harness) -> (serde_json::Value, CompiledConfig) {
    let r = h.admin(Method::GET, "/v1/filter-config", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let compiled = FilterConfig::compile_json(r.body.as_bytes()).unwrap();
    (r.json(), compiled)
}

fn verify(c: &CompiledConfig, token: &str) -> Verified {
    c.verifier.verify(token, now_unix()).unwrap()
}

/// The browser flow for a page load of `next` on service `chat` with `session`: the capability
/// the callback sets, or `/api/proxy-auth`'s refusal.
async fn browser_capability(h: &Harness, session: &str, next: &str) -> Result<String, Resp> {
    let r = h
        .get(
            &format!(
                "/api/proxy-auth?service=chat&next={}",
                encode_query_value(next)
            ),
            &[("cookie", session), ("accept", "text/html")],
        )
        .await;
    if r.status != StatusCode::FOUND {
        return Err(r);
    }
    let (host, ticket) = common::ticket_of(&r);
    let r = h.send(common::callback(&host, &ticket)).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    Ok(common::capability_cookie(&r))
}

/// `POST /v1/capabilities` with `body` as `session`.
async fn capabilities(h: &Harness, session: &str, body: serde_json::Value) -> Resp {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/capabilities")
        .header(header::COOKIE, session)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    h.send(req).await
}

/// A 403 that says what is wrong and what to do.
fn refused(r: &Resp) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let v = r.json();
    assert!(
        v["error"].as_str().unwrap().contains("resource"),
        "{}",
        r.body
    );
    assert!(
        v["hint"].as_str().unwrap().contains("/resources/"),
        "{}",
        r.body
    );
}

async fn the_admin_api_checks_what_it_is_sent(which: Which) {
    let Some(h) = harness(which).await else {
        return;
    };
    // A pattern that cannot be one is a 400 naming the field.
    for bad in [
        "/sessions",
        "sessions/{id}",
        "/sessions/{id}/x",
        "/{id}",
        "/a/../{id}",
    ] {
        let r = h
            .admin(
                Method::POST,
                "/v1/services",
                Some(json!({"name": "chat", "owner_id": "alice", "upstream_url": "http://127.0.0.1:9", "resource_path": bad})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert!(r.error().contains("`resource_path`"), "{}", r.body);
    }
    // Resources of a service that does not exist, or that has no pattern.
    let r = h
        .admin(
            Method::PUT,
            "/v1/services/nope/resources/a1",
            Some(json!({"owner": "alice"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = h
        .admin(
            Method::POST,
            "/v1/services",
            Some(
                json!({"name": "plain", "owner_id": "alice", "upstream_url": "http://127.0.0.1:9"}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.json()["resource_path"].is_null(), "{}", r.body);
    let r = h
        .admin(Method::GET, "/v1/services/plain/resources", None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("`resource_path`"), "{}", r.body);
    assert!(r.error().contains("PATCH /v1/services/plain"), "{}", r.body);

    // A pattern is given, changed and taken away with PATCH, checked as on create.
    const PLAIN: &str = "/v1/services/plain";
    let patch =
        |v: serde_json::Value| h.admin(Method::PATCH, PLAIN, Some(json!({ "resource_path": v })));
    let r = patch(json!("/runs")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("`resource_path`"), "{}", r.body);
    let r = h.admin(Method::GET, PLAIN, None).await;
    assert!(
        r.json()["resource_path"].is_null(),
        "a refused PATCH changed it: {}",
        r.body
    );
    for pattern in ["/runs/{id}", "/v2/runs/{id}"] {
        let r = patch(json!(pattern)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.json()["resource_path"], pattern, "{}", r.body);
        let (json, _) = filter(&h).await;
        assert_eq!(json["services"]["plain"]["resource_path"], pattern);
    }
    let r = h
        .admin(
            Method::PUT,
            "/v1/services/plain/resources/r1",
            Some(json!({"owner": "alice"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = patch(serde_json::Value::Null).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.json()["resource_path"].is_null(), "{}", r.body);
    let (json, _) = filter(&h).await;
    assert!(
        json["services"]["plain"]["resource_path"].is_null(),
        "{json}"
    );
    assert!(json["services"]["plain"]["cluster"].is_string(), "{json}");
    let r = h
        .admin(Method::GET, "/v1/services/plain/resources", None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    chat(&h).await;
    let r = h.admin(Method::GET, CHAT, None).await;
    assert_eq!(r.json()["resource_path"], "/sessions/{id}", "{}", r.body);
    let (json, _) = filter(&h).await;
    assert_eq!(json["services"]["chat"]["resource_path"], "/sessions/{id}");
    // An id that cannot be one, an owner who does not exist, a body of another shape.
    for id in ["a%2Fb", "..", "a%20b", &"x".repeat(129)] {
        let r = h
            .admin(
                Method::PUT,
                &format!("{CHAT}/resources/{id}"),
                Some(json!({"owner": "alice"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{id}: {}", r.body);
        assert!(r.error().contains("resource id"), "{}", r.body);
    }
    let r = h
        .admin(
            Method::PUT,
            &format!("{CHAT}/resources/c1"),
            Some(json!({"owner": "nobody"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.error().contains("`owner`"), "{}", r.body);
    let r = h
        .admin(
            Method::PUT,
            &format!("{CHAT}/resources/c1"),
            Some(json!({"owner": "alice", "extra": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    // Listed, read, forgotten once.
    let r = h
        .admin(Method::GET, &format!("{CHAT}/resources"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let ids: Vec<(String, String)> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["resource_id"].as_str().unwrap().to_owned(),
                v["owner_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [("a1".into(), "alice".into()), ("b1".into(), "bob".into())]
    );
    let r = h
        .admin(Method::GET, &format!("{CHAT}/resources/b1"), None)
        .await;
    assert_eq!(r.json()["owner_id"], "bob", "{}", r.body);
    let r = h
        .admin(Method::GET, &format!("{CHAT}/resources/zz"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = h
        .admin(Method::DELETE, &format!("{CHAT}/resources/b1"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h
        .admin(Method::DELETE, &format!("{CHAT}/resources/b1"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    // The resources go with their service.
    let r = h.admin(Method::DELETE, CHAT, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    chat(&h).await;
    let r = h
        .admin(Method::GET, &format!("{CHAT}/resources"), None)
        .await;
    assert_eq!(r.json().as_array().unwrap().len(), 2, "{}", r.body);
    h.finish().await;
}

async fn capabilities_are_minted_for_the_owners_resource_only(which: Which) {
    let Some(h) = harness(which).await else {
        return;
    };
    chat(&h).await;
    let (_, c) = filter(&h).await;
    let alice = h.login("alice").await;

    // The browser flow names the resource `next` is under.
    let cap = browser_capability(&h, &alice, "/sessions/a1/events")
        .await
        .unwrap();
    let v = verify(&c, &cap);
    assert_eq!(v.res.as_deref(), Some("/sessions/a1"));
    assert_eq!(v.claims.pod, "chat");
    for next in ["/sessions/b1", "/sessions/zz", "/", "/sessions/a1/../b1"] {
        let r = browser_capability(&h, &alice, next).await.unwrap_err();
        refused(&r);
    }

    // `/v1/capabilities` with `resource`.
    let r = capabilities(&h, &alice, json!({"service": "chat", "resource": "a1"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.json()["url"].as_str().unwrap().ends_with("/sessions/a1"));
    let v = verify(&c, r.json()["token"].as_str().unwrap());
    assert_eq!(v.res.as_deref(), Some("/sessions/a1"));
    for body in [
        json!({"service": "chat", "resource": "b1"}),
        json!({"service": "chat", "resource": "zz"}),
        json!({"service": "chat"}),
    ] {
        refused(&capabilities(&h, &alice, body).await);
    }
    // Not a resource id, or not a service reached per resource: the client's to fix.
    for body in [
        json!({"service": "chat", "resource": "../b1"}),
        json!({"service": "chat", "resource": "/sessions/a1"}),
        json!({"pod": "myslug", "port": 8726, "resource": "a1"}),
    ] {
        let r = capabilities(&h, &alice, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert!(r.error().contains("`resource`"), "{}", r.body);
    }
    let bob = h.login("bob").await;
    let r = capabilities(&h, &bob, json!({"service": "chat", "resource": "b1"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Someone who may not reach the service learns nothing of its resources: the answer of a
    // service that does not exist, whatever the path.
    let r = h
        .admin(
            Method::POST,
            "/v1/services",
            Some(
                json!({"name": "priv", "owner_id": "alice", "sharing": "owner",
                "upstream_url": "http://127.0.0.1:9", "resource_path": "/sessions/{id}"}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for next in ["/admin", "/sessions/b1"] {
        for service in ["priv", "ghost"] {
            let r = h
                .get(
                    &format!(
                        "/api/proxy-auth?service={service}&next={}",
                        encode_query_value(next)
                    ),
                    &[("cookie", &bob), ("accept", "text/html")],
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "{service}{next}: {}",
                r.body
            );
        }
    }

    // An API token at the edge: exchanged for its owner's resource only; a refusal is the
    // filter's "not allowed" (404), never a 403 (a wrong secret to it).
    let (_, token) = h.api_token(&alice, "edge").await;
    let exchange = |target: &'static str| {
        let token = token.clone();
        let h = &h;
        async move {
            h.as_envoy(
                &format!("/api/proxy-exchange?{target}"),
                Some(SECRET),
                Some(&token),
                &[],
            )
            .await
        }
    };
    let r = exchange("service=chat&res=%2Fsessions%2Fa1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v = verify(&c, r.json()["token"].as_str().unwrap());
    assert_eq!(v.res.as_deref(), Some("/sessions/a1"));
    assert!(v.sid.is_none());
    for target in [
        "service=chat&res=%2Fsessions%2Fb1",
        "service=chat",
        "service=chat&res=%2Fother%2Fa1",
    ] {
        let r = exchange(target).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{target}: {}", r.body);
    }
    // A resource on a pod is no resource.
    let r = exchange("pod=myslug&port=8726&res=%2Fsessions%2Fa1").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    h.finish().await;
}

async fn renewal_keeps_the_resource_until_it_is_lost(which: Which) {
    let Some(h) = harness(which).await else {
        return;
    };
    chat(&h).await;
    let (_, c) = filter(&h).await;
    let alice = h.login("alice").await;
    let cap = browser_capability(&h, &alice, "/sessions/a1")
        .await
        .unwrap();
    let r = h
        .as_envoy("/api/proxy-renew", Some(SECRET), Some(&cap), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let fresh = verify(&c, r.json()["token"].as_str().unwrap());
    assert_eq!(fresh.res.as_deref(), Some("/sessions/a1"));

    // a2 is alice's too.
    let r = h
        .admin(
            Method::PUT,
            &format!("{CHAT}/resources/a2"),
            Some(json!({"owner": "alice"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let other = browser_capability(&h, &alice, "/sessions/a2")
        .await
        .unwrap();

    // a1 changes hands: alice's capabilities for a1 are cut, her renewal refused; those for
    // a2 stay, and renew.
    let r = h
        .admin(
            Method::PUT,
            &format!("{CHAT}/resources/a1"),
            Some(json!({"owner": "bob"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let (_, c) = filter(&h).await;
    assert!(
        c.cutoffs.refuses(&verify(&c, &cap)),
        "alice's capability is cut"
    );
    let r = h
        .as_envoy("/api/proxy-renew", Some(SECRET), Some(&cap), &[])
        .await;
    assert_ne!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        !c.cutoffs.refuses(&verify(&c, &other)),
        "her capability for a2 is not cut"
    );
    let r = h
        .as_envoy("/api/proxy-renew", Some(SECRET), Some(&other), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let fresh = verify(&c, r.json()["token"].as_str().unwrap());
    assert_eq!(fresh.res.as_deref(), Some("/sessions/a2"));
    // Recording the same owner again cuts nobody.
    let bob = h.login("bob").await;
    let bobs = browser_capability(&h, &bob, "/sessions/a1").await.unwrap();
    let b1 = browser_capability(&h, &bob, "/sessions/b1").await.unwrap();
    let r = h
        .admin(
            Method::PUT,
            &format!("{CHAT}/resources/a1"),
            Some(json!({"owner": "bob"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let (_, c) = filter(&h).await;
    assert!(!c.cutoffs.refuses(&verify(&c, &bobs)));
    // Forgetting it cuts its owner.
    let r = h
        .admin(Method::DELETE, &format!("{CHAT}/resources/a1"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let (_, c) = filter(&h).await;
    assert!(c.cutoffs.refuses(&verify(&c, &bobs)));
    assert!(!c.cutoffs.refuses(&verify(&c, &b1)), "bob's b1 is not cut");
    h.finish().await;
}

async fn a_service_delete_stopped_at_its_cut_changes_nothing_and_can_be_repeated(which: Which) {
    let Some(h) = harness(which).await else {
        return;
    };
    chat(&h).await;
    let alice = h.login("alice").await;
    let cap = browser_capability(&h, &alice, "/sessions/a1")
        .await
        .unwrap();
    h.admin_while_cuts_fail(Method::DELETE, CHAT, None).await;
    // The service is still there, with its resource, and the capability is not cut.
    let r = h
        .admin(Method::GET, &format!("{CHAT}/resources/a1"), None)
        .await;
    assert_eq!(r.json()["owner_id"], "alice", "{}", r.body);
    let (_, c) = filter(&h).await;
    assert!(!c.cutoffs.refuses(&verify(&c, &cap)));
    // Deleting again deletes it and cuts the capability.
    let r = h.admin(Method::DELETE, CHAT, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = h.admin(Method::GET, CHAT, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let (_, c) = filter(&h).await;
    assert!(c.cutoffs.refuses(&verify(&c, &cap)));
    h.finish().await;
}

async fn a_resource_given_away_stopped_at_its_cut_changes_nothing_and_can_be_repeated(
    which: Which,
) {
    let Some(h) = harness(which).await else {
        return;
    };
    chat(&h).await;
    let alice = h.login("alice").await;
    let cap = browser_capability(&h, &alice, "/sessions/a1")
        .await
        .unwrap();
    let to_bob = json!({"owner": "bob"});
    let path = format!("{CHAT}/resources/a1");
    h.admin_while_cuts_fail(Method::PUT, &path, Some(to_bob.clone()))
        .await;
    let r = h.admin(Method::GET, &path, None).await;
    assert_eq!(r.json()["owner_id"], "alice", "{}", r.body);
    let (_, c) = filter(&h).await;
    assert!(!c.cutoffs.refuses(&verify(&c, &cap)));
    // The same request again still finds alice to cut.
    let r = h.admin(Method::PUT, &path, Some(to_bob)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["owner_id"], "bob", "{}", r.body);
    let (_, c) = filter(&h).await;
    assert!(c.cutoffs.refuses(&verify(&c, &cap)));
    h.finish().await;
}

on_both!(the_admin_api_checks_what_it_is_sent);
on_both!(a_resource_given_away_stopped_at_its_cut_changes_nothing_and_can_be_repeated);
on_both!(a_service_delete_stopped_at_its_cut_changes_nothing_and_can_be_repeated);
on_both!(capabilities_are_minted_for_the_owners_resource_only);
on_both!(renewal_keeps_the_resource_until_it_is_lost);
