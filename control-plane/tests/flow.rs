//! The browser flow and script minting, in-process: `/api/proxy-auth`, `/.podgate/callback`,
//! `POST /v1/capabilities`, on SQLite and PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::vec_init_then_push
)]

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{Harness, Resp};
use podgate::authz::NOT_FOUND_MSG;
use podgate::store::now_unix;
use podgate_protocol::token::{mint, PodClaims, TokenKind, Verifier};
use serde_json::json;

const HOST: &str = "localhost-8726-pod-myslug.localhost";
const ORIGIN: &str = "http://localhost-8726-pod-myslug.localhost:10000";
const PAGE: (&str, &str) = ("accept", "text/html,application/xhtml+xml");

async fn proxy_auth(h: &Harness, cookie: Option<&str>, query: &str, page: bool) -> Resp {
    let mut headers = vec![];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    if page {
        headers.push(PAGE);
    }
    h.get(&format!("/api/proxy-auth?{query}"), &headers).await
}

/// The callback URL's host (with port), ticket and next.
fn callback_parts(resp: &Resp) -> (String, String, String) {
    assert_eq!(resp.status, StatusCode::FOUND, "{}", resp.body);
    let loc = url::Url::parse(resp.header("location").unwrap()).unwrap();
    assert_eq!(loc.path(), "/.podgate/callback");
    let q: Vec<(String, String)> = loc.query_pairs().into_owned().collect();
    assert_eq!(q.len(), 2, "{q:?}");
    assert_eq!(q[0].0, "ticket");
    assert_eq!(q[1].0, "next");
    let host = format!("{}:{}", loc.host_str().unwrap(), loc.port().unwrap());
    (host, q[0].1.clone(), q[1].1.clone())
}

async fn callback(h: &Harness, host: &str, query: &str, cookie: Option<&str>) -> Resp {
    let mut b = Request::builder()
        .uri(format!("/.podgate/callback?{query}"))
        .header(header::HOST, host);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    h.send(b.body(Body::empty()).unwrap()).await
}

fn q(v: &str) -> String {
    podgate_protocol::redirect::encode_query_value(v)
}

fn assert_flow_headers(r: &Resp) {
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{r:?}");
}

fn assert_refused_page(r: &Resp) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_flow_headers(r);
    let set = r.header("set-cookie").unwrap();
    assert!(set.starts_with("podgate_cap=;"), "{set}");
    assert!(set.contains("Max-Age=0"), "{set}");
    assert!(r.body.contains("Try again"), "{}", r.body);
    assert!(
        r.body.contains("/api/proxy-auth?pod=")
            || r.body.contains("href=\"http://127.0.0.1:8080\"")
    );
}

async fn full_flow(h: &Harness, who: &str) -> (String, Resp) {
    let cookie = h.login(who).await;
    let r = proxy_auth(
        h,
        Some(&cookie),
        "pod=myslug&port=8726&next=%2Fapp%3Fx%3D1",
        true,
    )
    .await;
    let (host, ticket, next) = callback_parts(&r);
    assert_eq!(next, "/app?x=1");
    let r = callback(
        h,
        &host,
        &format!("ticket={}&next={}", q(&ticket), q(&next)),
        None,
    )
    .await;
    (ticket, r)
}

async fn owner_flow(h: &Harness) {
    h.seed().await;
    let cookie = h.login("alice").await;
    let r = proxy_auth(h, Some(&cookie), "pod=myslug&port=8726&next=%2Fapp", true).await;
    assert_flow_headers(&r);
    let loc = r.header("location").unwrap().to_owned();
    assert!(
        loc.starts_with(&format!("{ORIGIN}/.podgate/callback?ticket=")),
        "{loc}"
    );
    let (host, ticket, next) = callback_parts(&r);
    assert_eq!(host, format!("{HOST}:10000"));

    let r = callback(
        h,
        &host,
        &format!("ticket={}&next={}", q(&ticket), q(&next)),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_flow_headers(&r);
    assert_eq!(r.header("location"), Some("/app"));
    let set = r.header("set-cookie").unwrap();
    assert!(set.starts_with("podgate_cap="), "{set}");
    // Kept for the session's lifetime (12 h by default), not the capability's: the filter
    // renews the capability in it, even once it lapsed in a tab left idle.
    for attr in ["Path=/", "Max-Age=43200", "HttpOnly", "SameSite=Lax"] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    assert!(!set.contains("Domain"), "{set}");
    assert!(!set.contains("Secure"), "{set}");

    // The capability verifies with the published keys and carries the expected claims.
    let token = set
        .strip_prefix("podgate_cap=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let jwks = h.get("/.well-known/jwks.json", &[]).await.json();
    let keys: podgate_protocol::token::KeySet = serde_json::from_value(jwks).unwrap();
    let v = Verifier::new(
        TokenKind::Capability,
        "http://127.0.0.1:8080",
        &keys,
        0,
        900,
    )
    .unwrap();
    let verified = v.verify(token, now_unix()).unwrap();
    assert_eq!(verified.claims.aud, HOST);
    assert_eq!(verified.claims.pod, "myslug");
    assert_eq!(verified.claims.port, 8726);
    assert_eq!(verified.claims.sub, "alice");
    assert_eq!(verified.claims.email.as_deref(), Some("alice@example.dev"));
    assert_eq!(verified.expires_at - verified.issued_at, 900);

    // Both mints are in the audit trail, by jti, without the token.
    let audit = h.admin(Method::GET, "/v1/audit?user=alice", None).await;
    assert_eq!(audit.status, StatusCode::OK);
    let rows = audit.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["kind"], "capability");
    assert_eq!(rows[0]["jti"], verified.claims.jti);
    assert_eq!(rows[1]["kind"], "ticket");
    assert!(!audit.body.contains(token));
    assert!(!audit.body.contains(&ticket));
}
both!(owner_gets_a_capability_cookie, owner_flow);

async fn replay(h: &Harness) {
    h.seed().await;
    let cookie = h.login("alice").await;
    let r = proxy_auth(h, Some(&cookie), "pod=myslug&port=8726", true).await;
    let (host, ticket, _) = callback_parts(&r);
    let query = format!("ticket={}&next=%2F", q(&ticket));
    let first = callback(h, &host, &query, None).await;
    assert_eq!(first.status, StatusCode::FOUND, "{}", first.body);
    let second = callback(h, &host, &query, Some("podgate_cap=old")).await;
    assert_refused_page(&second);
}
both!(replayed_ticket_is_refused, replay);

/// A ticket this control plane minted is remembered, so its redemption skips the signature
/// check; only its exact bytes are: the same ticket with another signature or other claims is
/// refused, and the original still redeems once.
async fn remembered_ticket(h: &Harness) {
    h.seed().await;
    let cookie = h.login("alice").await;
    let r = proxy_auth(h, Some(&cookie), "pod=myslug&port=8726", true).await;
    let (host, ticket, _) = callback_parts(&r);
    assert_eq!(h.state.tickets().len(), 1, "the ticket is remembered");
    let parts: Vec<&str> = ticket.split('.').collect();
    assert_eq!(parts.len(), 3);
    let other_signature = {
        let mut sig = parts[2].as_bytes().to_vec();
        sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            String::from_utf8(sig).unwrap()
        )
    };
    let other_claims = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = json!("bob");
        let claims = b64.encode(claims.to_string());
        format!("{}.{claims}.{}", parts[0], parts[2])
    };
    for forged in [&other_signature, &other_claims] {
        let r = callback(h, &host, &format!("ticket={}&next=%2F", q(forged)), None).await;
        assert_refused_page(&r);
    }
    assert_eq!(h.state.tickets().len(), 1, "a forgery took the original");
    let r = callback(h, &host, &format!("ticket={}&next=%2F", q(&ticket)), None).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert!(
        h.state.tickets().is_empty(),
        "a redeemed ticket stays remembered"
    );
    let again = callback(h, &host, &format!("ticket={}&next=%2F", q(&ticket)), None).await;
    assert_refused_page(&again);
}
both!(
    a_remembered_ticket_skips_only_its_own_signature,
    remembered_ticket
);

/// A ticket minted by another control plane on the same database is verified in full and
/// redeems there; presented again where it was minted (where it is still remembered), it is a
/// replay.
async fn ticket_of_another_control_plane(h: &Harness) {
    use tower::ServiceExt;
    h.seed().await;
    let config = common::settings(&h.tdb.url)
        .resolve(podgate::config::Need::Server)
        .unwrap();
    let second = podgate::AppState::new(config, h.tdb.db.clone())
        .await
        .unwrap();
    let second_app = podgate::app(second.clone());
    let cookie = h.login("alice").await;
    let r = proxy_auth(h, Some(&cookie), "pod=myslug&port=8726", true).await;
    let (host, ticket, _) = callback_parts(&r);
    let uri = format!("/.podgate/callback?ticket={}&next=%2F", q(&ticket));
    let req = Request::builder()
        .uri(&uri)
        .header(header::HOST, &host)
        .body(Body::empty())
        .unwrap();
    let resp = second_app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let set = resp.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("podgate_cap=ey"), "{set}");
    assert!(second.tickets().is_empty());
    assert_eq!(h.state.tickets().len(), 1);
    let replay = callback(h, &host, &format!("ticket={}&next=%2F", q(&ticket)), None).await;
    assert_refused_page(&replay);
}
both!(
    a_ticket_redeems_at_another_control_plane,
    ticket_of_another_control_plane
);

/// Many callbacks racing with one ticket: exactly one wins, one capability is recorded.
async fn concurrent_replay(h: &Harness) {
    use tower::ServiceExt;
    h.seed().await;
    let cookie = h.login("alice").await;
    let r = proxy_auth(h, Some(&cookie), "pod=myslug&port=8726", true).await;
    let (host, ticket, _) = callback_parts(&r);
    let uri = format!("/.podgate/callback?ticket={}&next=%2F", q(&ticket));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let app = h.app.clone();
        let req = Request::builder()
            .uri(uri.clone())
            .header(header::HOST, host.clone())
            .body(Body::empty())
            .unwrap();
        set.spawn(async move { app.oneshot(req).await.unwrap().status() });
    }
    let statuses = set.join_all().await;
    let won = statuses.iter().filter(|s| **s == StatusCode::FOUND).count();
    assert_eq!(won, 1, "{statuses:?}");
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::FOUND || *s == StatusCode::BAD_REQUEST));
    let audit = h
        .admin(Method::GET, "/v1/audit?user=alice", None)
        .await
        .json();
    let caps = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "capability")
        .count();
    assert_eq!(caps, 1, "one capability recorded");
}
both!(racing_replays_yield_one_capability, concurrent_replay);

async fn access_rules(h: &Harness) {
    h.seed().await;
    let alice = h.login("alice").await;
    let bob = h.login("bob").await;
    let carol = h.login("carol").await;
    let page = true;

    // Default (no port row) is team: owner and member yes, outsider no.
    for (c, ok) in [(&alice, true), (&bob, true), (&carol, false)] {
        let r = proxy_auth(h, Some(c), "pod=myslug&port=8726", page).await;
        assert_eq!(r.status == StatusCode::FOUND, ok, "{c} {}", r.body);
    }
    // Owner-only excludes the team member.
    let r = h
        .admin(
            Method::PUT,
            "/v1/pods/myslug/ports/8726",
            Some(json!({"sharing": "owner"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for (c, ok) in [(&alice, true), (&bob, false), (&carol, false)] {
        let r = proxy_auth(h, Some(c), "pod=myslug&port=8726", page).await;
        assert_eq!(r.status == StatusCode::FOUND, ok, "{c} {}", r.body);
    }
    // Signed-in: anyone with a session; nobody without one (who is sent to log in).
    h.admin(
        Method::PUT,
        "/v1/pods/myslug/ports/8726",
        Some(json!({"sharing": "signed_in"})),
    )
    .await;
    let r = proxy_auth(h, Some(&carol), "pod=myslug&port=8726", page).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let r = proxy_auth(h, None, "pod=myslug&port=8726", page).await;
    assert!(r
        .header("location")
        .unwrap()
        .starts_with("http://127.0.0.1:8080/dev/login?next="));
    // Public: anyone, anonymously.
    h.admin(
        Method::PUT,
        "/v1/pods/myslug/ports/8726",
        Some(json!({"sharing": "public"})),
    )
    .await;
    let r = proxy_auth(h, None, "pod=myslug&port=8726", page).await;
    let (host, ticket, _) = callback_parts(&r);
    let r = callback(h, &host, &format!("ticket={}", q(&ticket)), None).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    // Removing bob from the team takes effect at the next mint.
    h.admin(Method::DELETE, "/v1/pods/myslug/ports/8726", None)
        .await;
    let r = h
        .admin(Method::DELETE, "/v1/teams/t1/members/bob", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = proxy_auth(h, Some(&bob), "pod=myslug&port=8726", page).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
both!(owner_team_and_sharing_levels, access_rules);

async fn no_oracle(h: &Harness) {
    h.seed().await;
    let carol = h.login("carol").await;
    let hidden = proxy_auth(h, Some(&carol), "pod=myslug&port=8726", false).await;
    let missing = proxy_auth(h, Some(&carol), "pod=nosuchpod&port=8726", false).await;
    for r in [&hidden, &missing] {
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.error(), NOT_FOUND_MSG);
        assert!(r.header("location").is_none());
    }
    assert_eq!(hidden.body, missing.body);
    // Nothing was minted.
    let audit = h.admin(Method::GET, "/v1/audit", None).await.json();
    assert_eq!(audit.as_array().unwrap().len(), 0);
}
both!(unknown_and_forbidden_answer_the_same, no_oracle);

async fn not_signed_in(h: &Harness) {
    h.seed().await;
    // A page load goes to the login URL, which leads back here with the same validated values.
    let r = proxy_auth(h, None, "pod=myslug&port=8726&next=%2Fdeep%2Fpath", true).await;
    assert_eq!(r.status, StatusCode::FOUND);
    let loc = url::Url::parse(r.header("location").unwrap()).unwrap();
    assert_eq!(loc.path(), "/dev/login");
    let next: Vec<_> = loc.query_pairs().collect();
    assert_eq!(
        next[0].1,
        "http://127.0.0.1:8080/api/proxy-auth?pod=myslug&port=8726&next=/deep/path"
    );
    // Following it through the dev login comes back to proxy-auth.
    let r = h
        .get(
            &format!("/dev/login?user=alice&next={}", q(&next[0].1)),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(
        r.header("location"),
        Some("/api/proxy-auth?pod=myslug&port=8726&next=/deep/path")
    );
    // A pod URL as long as the filter lets through (a 2 KB search) still signs in: the way
    // back fits what the sign-in page takes, without the query (then without the path).
    let long_query = format!("/search?q={}", "a%26".repeat(500));
    let long_path = format!("/{}", "p/".repeat(1000));
    for (next, lands) in [(long_query.as_str(), "/search"), (long_path.as_str(), "/")] {
        let r = proxy_auth(
            h,
            None,
            &format!("pod=myslug&port=8726&next={}", q(next)),
            true,
        )
        .await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        let loc = url::Url::parse(r.header("location").unwrap()).unwrap();
        let back = loc.query_pairs().find(|(k, _)| k == "next").unwrap().1;
        assert!(
            back.len() <= podgate_protocol::redirect::MAX_NEXT_LEN,
            "{back}"
        );
        assert_eq!(
            back,
            format!("http://127.0.0.1:8080/api/proxy-auth?pod=myslug&port=8726&next={lands}")
        );
        let r = h
            .get(&format!("/dev/login?user=alice&next={}", q(&back)), &[])
            .await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        assert_eq!(
            r.header("location").unwrap(),
            format!("/api/proxy-auth?pod=myslug&port=8726&next={lands}")
        );
    }
    // An API client gets 401 JSON.
    let r = proxy_auth(h, None, "pod=myslug&port=8726", false).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.error().contains("not signed in"));
    // Unknown pods also send an anonymous visitor to log in (no oracle either).
    let r = proxy_auth(h, None, "pod=nosuch&port=8726", false).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A forged or unknown session cookie is not a session.
    let r = proxy_auth(
        h,
        Some("podgate_session=00ff"),
        "pod=myslug&port=8726",
        false,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
both!(not_signed_in_goes_to_login, not_signed_in);

/// The open-redirect class: every `next` that is not a same-host relative path becomes `/`.
async fn open_redirect(h: &Harness) {
    h.seed().await;
    let cookie = h.login("alice").await;
    let bad = [
        "//evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "https://evil.example/",
        "http:evil.example",
        "javascript:alert(1)",
        "data:text/html,x",
        " /x",
        "/x\r\nSet-Cookie: a=b",
        "/x\ty",
        "///evil.example",
        "/%2fevil.example",
        "/%5cevil.example",
        "evil.example",
        "",
        "/\u{0}",
        "https:\\\\evil.example",
        "//localhost-8726-pod-other.localhost",
    ];
    for next in bad {
        let r = proxy_auth(
            h,
            Some(&cookie),
            &format!("pod=myslug&port=8726&next={}", q(next)),
            true,
        )
        .await;
        let (_, ticket, got) = callback_parts(&r);
        assert_eq!(got, "/", "next {next:?} was kept");
        // The callback applies the same rule to a `next` injected there.
        let r = callback(
            h,
            &format!("{HOST}:10000"),
            &format!("ticket={}&next={}", q(&ticket), q(next)),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        assert_eq!(
            r.header("location"),
            Some("/"),
            "callback kept next {next:?}"
        );
        // The dev login refuses it, as `/auth/login` does, before signing anyone in: no
        // session, and the new user it would have made is not made.
        let r = h
            .get(&format!("/dev/login?user=mallory&next={}", q(next)), &[])
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "next {next:?}: {}",
            r.body
        );
        assert!(r.error().contains("`next`"), "{}", r.body);
        assert!(r.header("set-cookie").is_none(), "next {next:?}");
        let r = h.admin(Method::GET, "/v1/users/mallory", None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "next {next:?}: {}", r.body);
    }
    for good in ["/", "/a/b?c=d&e=f#frag", "/x%20y"] {
        let r = proxy_auth(
            h,
            Some(&cookie),
            &format!("pod=myslug&port=8726&next={}", q(good)),
            true,
        )
        .await;
        let (_, _, got) = callback_parts(&r);
        assert_eq!(got, podgate_protocol::redirect::safe_next(good));
    }
}
both!(open_redirects_fall_back_to_root, open_redirect);

/// Parameter injection: duplicates, malformed values, and headers that must not steer the
/// destination.
async fn injection(h: &Harness) {
    h.seed().await;
    let cookie = h.login("alice").await;
    for query in [
        "pod=myslug&pod=other&port=8726",
        "pod=myslug&port=8726&port=8727",
        "pod=myslug&port=8726&next=%2Fa&next=%2Fb",
    ] {
        let r = proxy_auth(h, Some(&cookie), query, true).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(r.error().contains("more than once"), "{}", r.body);
    }
    for query in [
        "port=8726",
        "pod=myslug",
        "pod=MySlug&port=8726",
        "pod=my_slug&port=8726",
        "pod=myslug.evil.example&port=8726",
        "pod=myslug%2Fx&port=8726",
        "pod=-x&port=8726",
        "pod=myslug&port=0",
        "pod=myslug&port=65536",
        "pod=myslug&port=08726",
        "pod=myslug&port=+8726",
        "pod=myslug&port=8726%00",
        "pod=xn--e1afmkfd&port=x",
    ] {
        let r = proxy_auth(h, Some(&cookie), query, true).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.body);
        assert!(!r.error().is_empty());
    }
    // Request headers never steer the destination host.
    let r = h
        .get(
            "/api/proxy-auth?pod=myslug&port=8726",
            &[
                ("cookie", &cookie),
                ("host", "evil.example"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "host=evil.example"),
            ],
        )
        .await;
    assert!(r
        .header("location")
        .unwrap()
        .starts_with(&format!("{ORIGIN}/")));
    // A `ticket` smuggled into proxy-auth's next is removed; the rest is only a path on the
    // pod host.
    let r = proxy_auth(
        h,
        Some(&cookie),
        "pod=myslug&port=8726&next=%2F%3Fticket%3Dx%26next%3D%2F%2Fevil",
        true,
    )
    .await;
    let (_, _, next) = callback_parts(&r);
    assert_eq!(next, "/?next=//evil");
}
both!(parameter_injection_is_refused, injection);

fn ticket_claims(h: &Harness, host: &str, pod: &str, port: u16) -> PodClaims {
    PodClaims {
        iss: h.state.config().issuer.clone(),
        sub: "alice".into(),
        aud: host.into(),
        pod: pod.into(),
        port,
        jti: podgate::keys::random_id().unwrap(),
        email: None,
    }
}

async fn bad_tickets(h: &Harness) {
    h.seed().await;
    let ring = h.state.keys().unwrap();
    let now = now_unix();
    let host = format!("{HOST}:10000");
    let good = ticket_claims(h, HOST, "myslug", 8726);
    let mk = |claims: &PodClaims, at: i64, life: i64| {
        mint(
            TokenKind::LoginTicket,
            &ring.ticket_signer,
            claims,
            at,
            life,
        )
        .unwrap()
    };

    // Baseline: a hand-minted good ticket works (so the failures below are for their reason).
    let r = callback(h, &host, &format!("ticket={}", mk(&good, now, 60)), None).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);

    let mut cases: Vec<(&str, String)> = vec![];
    cases.push((
        "expired",
        mk(&ticket_claims(h, HOST, "myslug", 8726), now - 120, 60),
    ));
    cases.push((
        "not yet valid",
        mk(&ticket_claims(h, HOST, "myslug", 8726), now + 600, 60),
    ));
    cases.push((
        "too long-lived",
        mk(&ticket_claims(h, HOST, "myslug", 8726), now, 3600),
    ));
    cases.push((
        "aud of another pod",
        mk(
            &ticket_claims(h, "localhost-8726-pod-other.localhost", "other", 8726),
            now,
            60,
        ),
    ));
    cases.push((
        "aud of another port",
        mk(
            &ticket_claims(h, "localhost-8727-pod-myslug.localhost", "myslug", 8727),
            now,
            60,
        ),
    ));
    let mut wrong_iss = ticket_claims(h, HOST, "myslug", 8726);
    wrong_iss.iss = "http://evil.example".into();
    cases.push(("wrong issuer", mk(&wrong_iss, now, 60)));
    let mut mismatched = ticket_claims(h, HOST, "myslug", 8726);
    mismatched.pod = "other".into();
    cases.push(("pod claim not the host's", mk(&mismatched, now, 60)));
    // A capability (another kind, another key) where a ticket is expected.
    let cap = mint(
        TokenKind::Capability,
        &ring.capability_signer,
        &ticket_claims(h, HOST, "myslug", 8726),
        now,
        60,
    )
    .unwrap();
    cases.push(("capability as ticket", cap));
    // A ticket-typed token signed with the capability key (a kid of another kind).
    let cross = mint(
        TokenKind::LoginTicket,
        &ring.capability_signer,
        &ticket_claims(h, HOST, "myslug", 8726),
        now,
        60,
    )
    .unwrap();
    cases.push(("ticket signed with a capability key", cross));
    let tampered = {
        let t = mk(&ticket_claims(h, HOST, "myslug", 8726), now, 60);
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let claims = podgate_protocol::token::PodClaims {
            sub: "bob".into(),
            ..ticket_claims(h, HOST, "myslug", 8726)
        };
        let mut v = serde_json::to_value(&claims).unwrap();
        v["iat"] = json!(now);
        v["exp"] = json!(now + 60);
        use base64::Engine;
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        parts.join(".")
    };
    cases.push(("tampered claims", tampered));
    cases.push(("garbage", "not.a.token".into()));
    cases.push(("empty", String::new()));
    cases.push(("alg none", {
        use base64::Engine;
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.",
            e(r#"{"alg":"none","typ":"podgate-ticket+jwt"}"#),
            e(r#"{"sub":"alice"}"#)
        )
    }));
    for (what, token) in cases {
        let r = callback(h, &host, &format!("ticket={}&next=%2F", q(&token)), None).await;
        assert_refused_page(&r);
        assert!(
            !r.body.contains(&token) || token.is_empty(),
            "{what}: token echoed"
        );
        let _ = what;
    }

    // No ticket, two tickets, not a pod host.
    let t = mk(&ticket_claims(h, HOST, "myslug", 8726), now, 60);
    assert_refused_page(&callback(h, &host, "next=%2F", None).await);
    assert_refused_page(&callback(h, &host, &format!("ticket={t}&ticket={t}"), None).await);
    assert_refused_page(&callback(h, "evil.example", &format!("ticket={t}"), None).await);
    assert_refused_page(&callback(h, "127.0.0.1:8080", &format!("ticket={t}"), None).await);
    // The right ticket on a sibling pod's host is refused (aud is this exact host).
    assert_refused_page(
        &callback(
            h,
            "localhost-8726-pod-other.localhost:10000",
            &format!("ticket={t}"),
            None,
        )
        .await,
    );
    // And it was not consumed by those attempts: it still works on its own host.
    let r = callback(h, &host, &format!("ticket={t}"), None).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
}
both!(bad_tickets_are_refused, bad_tickets);

async fn revoked_between_ticket_and_callback(h: &Harness) {
    h.seed().await;
    let bob = h.login("bob").await;
    let r = proxy_auth(h, Some(&bob), "pod=myslug&port=8726", true).await;
    let (host, ticket, _) = callback_parts(&r);
    h.admin(Method::DELETE, "/v1/teams/t1/members/bob", None)
        .await;
    let r = callback(h, &host, &format!("ticket={}", q(&ticket)), None).await;
    assert_refused_page(&r);
}
both!(
    access_is_read_again_at_the_callback,
    revoked_between_ticket_and_callback
);

async fn capabilities_endpoint(h: &Harness) {
    h.seed().await;
    let post = |cookie: Option<String>, body: String, ct: &'static str| {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/v1/capabilities")
            .header(header::CONTENT_TYPE, ct);
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        b.body(Body::from(body)).unwrap()
    };
    let alice = h.login("alice").await;
    let carol = h.login("carol").await;
    let body = json!({"pod": "myslug", "port": 8726}).to_string();

    let r = h
        .send(post(Some(alice.clone()), body.clone(), "application/json"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    assert_eq!(v["url"], format!("{ORIGIN}/"));
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    // The lifetime as seconds from the answer, for clients whose clock is off.
    let expires_in = v["expires_in"].as_i64().unwrap();
    assert!((898..=900).contains(&expires_in), "{v}");
    let keys: podgate_protocol::token::KeySet =
        serde_json::from_value(h.get("/.well-known/jwks.json", &[]).await.json()).unwrap();
    let cap = Verifier::new(
        TokenKind::Capability,
        "http://127.0.0.1:8080",
        &keys,
        0,
        900,
    )
    .unwrap();
    let verified = cap
        .verify(v["token"].as_str().unwrap(), now_unix())
        .unwrap();
    assert_eq!(verified.claims.aud, HOST);
    // A capability is not a ticket, and a ticket is not a capability.
    let r = callback(
        h,
        &format!("{HOST}:10000"),
        &format!("ticket={}", v["token"].as_str().unwrap()),
        None,
    )
    .await;
    assert_refused_page(&r);
    let pa = proxy_auth(h, Some(&alice), "pod=myslug&port=8726", true).await;
    let (_, ticket, _) = callback_parts(&pa);
    assert!(cap.verify(&ticket, now_unix()).is_err());

    let r = h
        .send(post(Some(carol), body.clone(), "application/json"))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error(), NOT_FOUND_MSG);
    let r = h.send(post(None, body.clone(), "application/json")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").is_some());
    // A capability or a ticket is not a session.
    let r = h
        .send(post(
            Some(format!("podgate_session={}", v["token"].as_str().unwrap())),
            body.clone(),
            "application/json",
        ))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = h
        .send(post(
            Some(format!("podgate_session={ticket}")),
            body.clone(),
            "application/json",
        ))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Bad bodies say what is wrong.
    let r = h
        .send(post(Some(alice.clone()), body.clone(), "text/plain"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("Content-Type"));
    for bad in [
        json!({"pod": "myslug"}),
        json!({"pod": "myslug", "port": 0}),
        json!({"pod": "myslug", "port": 70000}),
        json!({"pod": "My Slug", "port": 80}),
        json!({"pod": "myslug", "port": 80, "user": "bob"}),
    ] {
        let r = h
            .send(post(
                Some(alice.clone()),
                bad.to_string(),
                "application/json",
            ))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
        assert!(!r.error().is_empty());
    }
    // Public ports mint for anyone.
    h.admin(
        Method::PUT,
        "/v1/pods/myslug/ports/8726",
        Some(json!({"sharing": "public"})),
    )
    .await;
    let r = h.send(post(None, body, "application/json")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let verified = cap
        .verify(r.json()["token"].as_str().unwrap(), now_unix())
        .unwrap();
    assert_eq!(verified.claims.sub, "anonymous");
}
both!(capabilities_for_scripts, capabilities_endpoint);

async fn rotation(h: &Harness) {
    h.seed().await;
    let alice = h.login("alice").await;
    let before = h.get("/.well-known/jwks.json", &[]).await.json();
    assert_eq!(before["keys"].as_array().unwrap().len(), 1);
    let old_kid = before["keys"][0]["kid"].as_str().unwrap().to_owned();
    assert!(old_kid.starts_with("cap-"));
    assert!(before["keys"][0].get("d").is_none_or(|d| d.is_null()));
    // A ticket minted before the rotation still works after it (overlap window).
    let r = proxy_auth(h, Some(&alice), "pod=myslug&port=8726", true).await;
    let (host, ticket, _) = callback_parts(&r);

    let r = h.admin(Method::POST, "/v1/keys/rotate", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let after = h.get("/.well-known/jwks.json", &[]).await.json();
    let kids: Vec<&str> = after["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&old_kid.as_str()));

    let r = callback(h, &host, &format!("ticket={}", q(&ticket)), None).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let token = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("podgate_cap=")
        .to_owned();
    let header: serde_json::Value = {
        use base64::Engine;
        let h64 = token.split('.').next().unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h64)
                .unwrap(),
        )
        .unwrap()
    };
    assert_ne!(
        header["kid"], old_kid,
        "new capabilities are signed by the new key"
    );

    let keys = h.admin(Method::GET, "/v1/keys", None).await.json();
    let states: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.iter().filter(|s| **s == "active").count(), 2);
    assert_eq!(states.iter().filter(|s| **s == "verifying").count(), 2);
    assert!(!keys.to_string().contains("\"d\""));
}
both!(key_rotation_keeps_old_keys_in_overlap, rotation);

/// Control planes on one database: a ticket one signs with a ticket key it has just rotated in
/// (ticket keys sign at once) is redeemed at another that has not read the keys since, as the
/// callback may reach any of them; that one reads the keys again for the key it does not know.
async fn a_ticket_signed_with_a_key_rotated_in_elsewhere(h: &Harness) {
    h.seed().await;
    let other = h.replica().await;
    let alice = h.login("alice").await;
    let r = h.admin(Method::POST, "/v1/keys/rotate", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Three sign-ins reach the other at once: one reads the keys, the others wait for that
    // reading and check their tickets with it.
    let mut tickets = Vec::new();
    for _ in 0..3 {
        tickets.push(h.login_ticket(&alice).await);
    }
    let redeem = |i: usize| {
        let (host, ticket) = &tickets[i];
        common::send_to(&other, common::callback(host, ticket))
    };
    let (a, b, c) = tokio::join!(redeem(0), redeem(1), redeem(2));
    for r in [&a, &b, &c] {
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        let cookie = r.header("set-cookie").unwrap();
        assert!(cookie.starts_with("podgate_cap=ey"), "{cookie}");
    }
    // Redeemed once: the first control plane refuses it now.
    let (host, ticket) = &tickets[0];
    let r = h.send(common::callback(host, ticket)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
}
both!(
    tickets_cross_control_planes_after_a_rotation,
    a_ticket_signed_with_a_key_rotated_in_elsewhere
);

#[tokio::test]
async fn https_cookie_is_host_prefixed_and_secure() {
    let h = Harness::with(common::Which::Sqlite, |mut s| {
        s.public_scheme = Some("https".into());
        s.pod_public_port = Some(443);
        s.domain = Some("example.dev".into());
        s.cookie_samesite = Some("strict".into());
        s
    })
    .await
    .unwrap();
    h.seed().await;
    let cookie = h.login("alice").await;
    let r = proxy_auth(&h, Some(&cookie), "pod=myslug&port=8726", true).await;
    let loc = r.header("location").unwrap();
    assert!(
        loc.starts_with("https://localhost-8726-pod-myslug.example.dev/.podgate/callback?ticket="),
        "{loc}"
    );
    let parsed = url::Url::parse(loc).unwrap();
    let ticket = parsed
        .query_pairs()
        .find(|(k, _)| k == "ticket")
        .unwrap()
        .1
        .into_owned();
    let r = callback(
        &h,
        "localhost-8726-pod-myslug.example.dev",
        &format!("ticket={}", q(&ticket)),
        None,
    )
    .await;
    // Under Strict cookies the callback is a page that goes on by itself (a 302 would arrive
    // without the cookie, sent by no navigation that began on another site); it sends no
    // Referer, which would carry the ticket.
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body
            .contains("http-equiv=\"refresh\" content=\"0;url=/\""),
        "{}",
        r.body
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let set = r.header("set-cookie").unwrap();
    assert!(set.starts_with("__Host-podgate_cap="), "{set}");
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    assert!(!set.contains("Domain"));
    h.finish().await;
}

#[tokio::test]
async fn full_flow_for_a_team_member() {
    let h = Harness::new(common::Which::Sqlite).await.unwrap();
    h.seed().await;
    let (_, r) = full_flow(&h, "bob").await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location"), Some("/app?x=1"));
    h.finish().await;
}

#[tokio::test]
async fn dev_login_exists_only_in_dev_mode() {
    let h = Harness::with(common::Which::Sqlite, |mut s| {
        s.dev_mode = Some(false);
        s.login_url = Some("https://app.example.dev/login".into());
        s
    })
    .await
    .unwrap();
    let r = h.get("/dev/login?user=alice", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    h.seed().await;
    let r = proxy_auth(&h, None, "pod=myslug&port=8726", true).await;
    let loc = r.header("location").unwrap();
    assert!(loc.starts_with("https://app.example.dev/login?next=http%3A//127.0.0.1%3A8080/api/proxy-auth%3Fpod%3Dmyslug%26port%3D8726%26next%3D/"), "{loc}");
    h.finish().await;
}

/// `next` values that a later normalisation could turn into a network-path reference, a
/// ticket, or the reserved prefix: `/api/proxy-auth` puts the canonical form in the callback
/// URL, and the callback, handed the raw value, redirects to that same canonical form.
async fn canonical_next_through_the_callback(h: &Harness) {
    h.seed().await;
    let cookie = h.login("alice").await;
    let table = [
        ("/.//evil.example", "/evil.example"),
        ("/a/..//evil.example", "/evil.example"),
        ("/%2e%2e//evil.example", "/evil.example"),
        ("/.%2E//evil.example/x", "/evil.example/x"),
        ("/a/b/../..//evil.example", "/evil.example"),
        ("/./%2Fevil.example", "/"),
        ("/.%5C%5Cevil.example", "/"),
        ("/%252F%252Fevil.example", "/"),
        ("/..;//evil.example", "/"),
        ("/.\\/evil.example", "/"),
        ("/app?ticket=stolen&x=1", "/app?x=1"),
        ("/app?x=1&TICKET=stolen", "/app?x=1"),
        ("/.podgate/callback?ticket=stolen", "/"),
        ("/x/../.PODGATE/logout", "/"),
        ("/a//b/./c", "/a/b/c"),
        ("/a/b?c=d#frag", "/a/b?c=d#frag"),
    ];
    for (next, want) in table {
        let r = proxy_auth(
            h,
            Some(&cookie),
            &format!("pod=myslug&port=8726&next={}", q(next)),
            true,
        )
        .await;
        let (_, ticket, got) = callback_parts(&r);
        assert_eq!(got, want, "proxy-auth, next {next:?}");
        let r = callback(
            h,
            &format!("{HOST}:10000"),
            &format!("ticket={}&next={}", q(&ticket), q(next)),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::FOUND, "{next:?}: {}", r.body);
        let location = r.header("location").unwrap_or_default();
        assert_eq!(location, want, "callback, next {next:?}");
        assert!(!location.contains("stolen"), "{next:?} -> {location}");
        assert!(!location.starts_with("//"), "{next:?} -> {location}");
    }
}
both!(
    callback_lands_on_the_canonical_next,
    canonical_next_through_the_callback
);

/// An identity assertion (what every pod receives, signed with the assertion key) is refused
/// as a ticket, as an API token and by the capability verifier; a ticket-typed token signed
/// with the assertion key is refused too.
async fn assertions_are_no_credential(h: &Harness) {
    h.seed().await;
    let ring = h.state.keys().unwrap();
    let now = now_unix();
    let host = format!("{HOST}:10000");
    let claims = ticket_claims(h, HOST, "myslug", 8726);
    let assertion = mint(
        TokenKind::Assertion,
        &ring.assertion_signer,
        &claims,
        now,
        60,
    )
    .unwrap();
    let by_assertion_key = mint(
        TokenKind::LoginTicket,
        &ring.assertion_signer,
        &claims,
        now,
        60,
    )
    .unwrap();
    for (what, token) in [
        ("assertion as ticket", assertion.clone()),
        ("ticket signed with the assertion key", by_assertion_key),
    ] {
        let r = callback(h, &host, &format!("ticket={}&next=%2F", q(&token)), None).await;
        assert_refused_page(&r);
        assert!(!r.body.contains(&token), "{what}: token echoed");
    }
    // As an API token: minting with it as the bearer is refused.
    let r = h
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/capabilities")
                .header(header::AUTHORIZATION, format!("Bearer {assertion}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    json!({"pod": "myslug", "port": 8726}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    // As a capability, to the control plane's capability verifier (renewal's).
    let capabilities = Verifier::new(
        TokenKind::Capability,
        h.state.config().issuer.clone(),
        &ring.capability_keys,
        30,
        3600,
    )
    .unwrap();
    assert!(capabilities.verify(&assertion, now).is_err());
}

both!(
    assertions_are_no_credential_anywhere,
    assertions_are_no_credential
);
