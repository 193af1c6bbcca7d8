//! Sign-out everywhere and cuts of lost access, in-process, on SQLite and PostgreSQL:
//! `/auth/logout` (and the dev login's `/dev/logout`, which is the same), `/auth/userinfo`, the
//! `sid` claim, and the filter configuration's `cutoffs` after a sign-out, a team removal, a lower sharing level, another owner and a deleted user;
//! a sign-out or a user delete stopped by a database error at its cut is finished by doing
//! it again; a team delete, an owner change or a pod create stopped at its cut changes nothing
//! and is repeated; and a user who still owns a pod is not deleted (nor cut).
//! Each capability is checked against the filter configuration the control plane would push,
//! compiled as the filter compiles it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{Harness, Resp, Which};
use podgate::store::now_unix;
use podgate_protocol::config::{CompiledConfig, FilterConfig};
use podgate_protocol::token::Verified;
use serde_json::json;

const PAGE: (&str, &str) = ("accept", "text/html");

fn q(v: &str) -> String {
    podgate_protocol::redirect::encode_query_value(v)
}

/// A ticket for `port` of myslug through `/api/proxy-auth` (signed in with `cookie`, or not).
async fn ticket(h: &Harness, cookie: Option<&str>, port: u16) -> (String, String) {
    let mut headers = vec![PAGE];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    let r = h
        .get(
            &format!("/api/proxy-auth?pod=myslug&port={port}&next=%2F"),
            &headers,
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let loc = url::Url::parse(r.header("location").unwrap()).unwrap();
    assert_eq!(loc.path(), "/.podgate/callback", "{loc}");
    let ticket = loc
        .query_pairs()
        .find(|(k, _)| k == "ticket")
        .unwrap()
        .1
        .into_owned();
    let host = format!("{}:{}", loc.host_str().unwrap(), loc.port().unwrap());
    (host, ticket)
}

async fn redeem(h: &Harness, host: &str, ticket: &str) -> Resp {
    let req = Request::builder()
        .uri(format!("/.podgate/callback?ticket={}&next=%2F", q(ticket)))
        .header(header::HOST, host)
        .body(Body::empty())
        .unwrap();
    h.send(req).await
}

fn cookie_value(r: &Resp) -> String {
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let set = r.header("set-cookie").unwrap();
    set.strip_prefix("podgate_cap=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// A capability for `port` of myslug through the whole browser flow.
async fn capability(h: &Harness, cookie: Option<&str>, port: u16) -> String {
    let (host, ticket) = ticket(h, cookie, port).await;
    cookie_value(&redeem(h, &host, &ticket).await)
}

/// The filter configuration the control plane pushes now, as JSON and compiled.
async fn filter(h: &Harness) -> (serde_json::Value, CompiledConfig) {
    let r = h.admin(Method::GET, "/v1/filter-config", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let compiled = FilterConfig::compile_json(r.body.as_bytes()).unwrap();
    (r.json(), compiled)
}

fn verify(c: &CompiledConfig, token: &str) -> Verified {
    c.verifier.verify(token, now_unix()).unwrap()
}

/// Whether the pushed configuration refuses `token` before its expiry.
async fn cut_off(h: &Harness, token: &str) -> bool {
    let (_, c) = filter(h).await;
    c.cutoffs.refuses(&verify(&c, token))
}

async fn signout_ends_every_capability_of_the_session(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let session = h.login("alice").await;
    let other_session = h.login("alice").await;
    let cap = capability(&h, Some(&session), 8726).await;
    let other_port = capability(&h, Some(&session), 8727).await;
    let other_cap = capability(&h, Some(&other_session), 8726).await;
    // A capability minted for scripts with the session cookie belongs to the session too.
    let r = h
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/v1/capabilities")
                .header(header::COOKIE, &session)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    json!({"pod": "myslug", "port": 8726}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let scripted = r.json()["token"].as_str().unwrap().to_owned();
    // A ticket in flight when the session ends.
    let (host, in_flight) = ticket(&h, Some(&session), 8726).await;

    let (json, c) = filter(&h).await;
    // No cut yet: the field is left out, so older filters still take the configuration.
    assert!(json.get("cutoffs").is_none(), "{json}");
    let v = verify(&c, &cap);
    let sid = v
        .sid
        .clone()
        .expect("a capability minted for a session names it");
    assert_eq!(sid.len(), 32);
    assert!(
        !session.contains(&sid),
        "the sid must not be the session's secret"
    );
    assert_eq!(verify(&c, &other_port).sid.as_deref(), Some(sid.as_str()));
    assert_eq!(verify(&c, &scripted).sid.as_deref(), Some(sid.as_str()));
    assert_ne!(verify(&c, &other_cap).sid.as_deref(), Some(sid.as_str()));
    assert!(!c.cutoffs.refuses(&v));
    let before_sign_out = c;

    // A page's script signs out with `fetch`, which may accept HTML too: not a page load (its
    // `Sec-Fetch-Mode` says so), so the answer is JSON, not the page or a redirect.
    let r = h
        .get(
            "/auth/logout",
            &[
                ("cookie", &session),
                ("accept", "text/html,*/*"),
                ("sec-fetch-mode", "cors"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json(), json!({"signed_out": true, "sessions_ended": 1}));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let clear = r.header("set-cookie").unwrap();
    assert!(
        clear.starts_with("podgate_session=;") && clear.contains("Max-Age=0"),
        "{clear}"
    );

    let (json, c) = filter(&h).await;
    let sessions = json["cutoffs"]["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{json}");
    assert_eq!(sessions[0]["sid"], sid.as_str());
    let until = sessions[0]["until"].as_i64().unwrap();
    let at = sessions[0]["at"].as_i64().unwrap();
    // Listed as long as a capability of the session can live: lifetime, leeway, a minute for
    // a mint that raced the sign-out.
    assert_eq!(until - at, 900 + 30 + 60);
    for token in [&cap, &other_port, &scripted] {
        assert!(c.cutoffs.refuses(&verify(&c, token)));
    }
    // The same user's other session is not signed out.
    assert!(!c.cutoffs.refuses(&verify(&c, &other_cap)));
    // The cuts are all the sign-out changed in what Envoy gets, so the filter keeps the
    // decisions it memoized for every capability but the session's.
    assert_ne!(before_sign_out.cutoffs, c.cutoffs);
    assert!(before_sign_out.same_settings(&c));
    assert!(c.withdraws(&verify(&c, &cap)) && !c.withdraws(&verify(&c, &other_cap)));
    // The ticket minted before the sign-out is not redeemed any more.
    let r = redeem(&h, &host, &in_flight).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    // The session is gone.
    let r = h.get("/auth/userinfo", &[("cookie", &session)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Signing out again (nothing to end) changes nothing and still answers.
    let r = h.get("/auth/logout", &[("cookie", &session), PAGE]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("signed out"), "{}", r.body);
    let (json, _) = filter(&h).await;
    assert_eq!(json["cutoffs"]["sessions"].as_array().unwrap().len(), 1);
    h.finish().await;
}
on_both!(signout_ends_every_capability_of_the_session);

/// A sign-in in a browser that still holds a session ends that session as a sign-out would
/// (its capabilities cut at once), so that signing out of the new session leaves nothing of the
/// old one working or renewable, and a copy of the old cookie stops working. The exception: a
/// session of the same user, signed in the same way, started while this sign-in was under way
/// (two tabs sent through the sign-in at once, the second finishing with the first one's
/// cookie) is kept with everything minted for it. Another browser's session of the same user
/// is left alone.
async fn a_new_sign_in_ends_the_session_it_replaces(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let first = h.login("alice").await;
    let elsewhere = h.login("alice").await;
    let first_cap = capability(&h, Some(&first), 8726).await;
    let elsewhere_cap = capability(&h, Some(&elsewhere), 8726).await;
    assert!(!cut_off(&h, &first_cap).await);
    let set_cookie = |r: &common::Resp| {
        r.header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    let sign_in = |who: &'static str, cookie: String| {
        let h = &h;
        async move {
            let r = h
                .get(&format!("/dev/login?user={who}"), &[("cookie", &cookie)])
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            set_cookie(&r)
        }
    };

    // The same browser signs in as alice again a moment later (its cookie goes along): the
    // same session, nothing cut.
    assert_eq!(sign_in("alice", first.clone()).await, first);
    assert!(
        !cut_off(&h, &first_cap).await,
        "the kept session's capability"
    );
    let r = h.get("/auth/userinfo", &[("cookie", &first)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // The browser holds two session cookies, bob's first: signing in as alice keeps hers and
    // ends bob's.
    let bobs = h.login("bob").await;
    let both = format!("{bobs}; {first}");
    assert_eq!(sign_in("alice", both).await, first);
    let r = h.get("/auth/userinfo", &[("cookie", &bobs)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(!cut_off(&h, &first_cap).await);

    // A session older than a sign-in's lifetime is not another tab's: replaced.
    sqlx::query("UPDATE sessions SET created_at = created_at - 700")
        .execute(h.state.db().pool())
        .await
        .unwrap();
    let renewed = sign_in("alice", first.clone()).await;
    assert_ne!(renewed, first);
    assert!(
        cut_off(&h, &first_cap).await,
        "the old session's capability"
    );
    let r = h.get("/auth/userinfo", &[("cookie", &first)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        !cut_off(&h, &elsewhere_cap).await,
        "another browser's session"
    );

    // The same browser signs in as bob: alice's session there ends.
    let renewed_cap = capability(&h, Some(&renewed), 8726).await;
    let second = sign_in("bob", renewed.clone()).await;
    assert_ne!(second, renewed);
    assert!(
        cut_off(&h, &renewed_cap).await,
        "the replaced session's capability"
    );
    let r = h.get("/auth/userinfo", &[("cookie", &second)]).await;
    assert_eq!(r.json()["user"], "bob", "{}", r.body);

    // Signing out of the new session: its capabilities are cut too; the other browser stays.
    let second_cap = capability(&h, Some(&second), 8726).await;
    let r = h.get("/auth/logout", &[("cookie", &second)]).await;
    assert_eq!(r.json(), json!({"signed_out": true, "sessions_ended": 1}));
    assert!(cut_off(&h, &second_cap).await);
    assert!(!cut_off(&h, &elsewhere_cap).await);
    let r = h.get("/auth/userinfo", &[("cookie", &elsewhere)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    h.finish().await;
}
on_both!(a_new_sign_in_ends_the_session_it_replaces);

async fn dev_logout_signs_out_like_auth_logout(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let session = h.login("alice").await;
    let other_session = h.login("alice").await;
    let cap = capability(&h, Some(&session), 8726).await;
    let other_cap = capability(&h, Some(&other_session), 8726).await;
    let (_, c) = filter(&h).await;
    let sid = verify(&c, &cap).sid.unwrap();

    let r = h.get("/dev/logout", &[("cookie", &session)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json(), json!({"signed_out": true, "sessions_ended": 1}));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let clear = r.header("set-cookie").unwrap();
    assert!(
        clear.starts_with("podgate_session=;") && clear.contains("Max-Age=0"),
        "{clear}"
    );
    // The session's capabilities are cut off in the configuration Envoy gets, as at
    // /auth/logout; the user's other session keeps its own.
    let (json, c) = filter(&h).await;
    let sessions = json["cutoffs"]["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{json}");
    assert_eq!(sessions[0]["sid"], sid.as_str());
    assert!(c.cutoffs.refuses(&verify(&c, &cap)));
    assert!(!c.cutoffs.refuses(&verify(&c, &other_cap)));
    let r = h.get("/auth/userinfo", &[("cookie", &session)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A browser gets the same page as at /auth/logout.
    let r = h
        .get("/dev/logout", &[("cookie", &other_session), PAGE])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("signed out"), "{}", r.body);
    let (_, c) = filter(&h).await;
    assert!(c.cutoffs.refuses(&verify(&c, &other_cap)));
    h.finish().await;
}
on_both!(dev_logout_signs_out_like_auth_logout);

async fn userinfo_answers_the_signed_in_user(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let r = h.get("/auth/userinfo", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.error().contains("not signed in"), "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let session = h.login("bob").await;
    let r = h.get("/auth/userinfo", &[("cookie", &session)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"user": "bob", "email": "bob@example.dev", "name": "bob", "via": "session"})
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // Cookies of the same name a sibling host planted with a longer path come first; those
    // that cannot be a session do not hide the real one, however many.
    let planted = format!("{}; {session}", ["podgate_session=planted"; 6].join("; "));
    let r = h.get("/auth/userinfo", &[("cookie", &planted)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["user"], "bob");
    // POST signs out too (a form); GET userinfo then says so.
    let r = h
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/auth/logout")
                .header(header::COOKIE, &session)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.get("/auth/userinfo", &[("cookie", &session)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    h.finish().await;
}
on_both!(userinfo_answers_the_signed_in_user);

/// The user cuts listed in the pushed configuration, as `(sub, pod, port)`.
async fn user_cuts(h: &Harness) -> Vec<(String, Option<String>, Option<u64>)> {
    let (json, _) = filter(h).await;
    let mut cuts: Vec<_> = json["cutoffs"]["users"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                c["sub"].as_str().unwrap().to_owned(),
                c["pod"].as_str().map(str::to_owned),
                c["port"].as_u64(),
            )
        })
        .collect();
    cuts.sort();
    cuts
}

fn cut(sub: &str, pod: Option<&str>, port: Option<u64>) -> (String, Option<String>, Option<u64>) {
    (sub.to_owned(), pod.map(str::to_owned), port)
}

async fn team_removal_cuts_the_member_only(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let alice = capability(&h, Some(&h.login("alice").await), 8726).await;
    let bob = capability(&h, Some(&h.login("bob").await), 8726).await;
    assert!(!cut_off(&h, &bob).await);
    let r = h
        .admin(Method::DELETE, "/v1/teams/t1/members/bob", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        user_cuts(&h).await,
        vec![cut("bob", Some("myslug"), Some(8726))]
    );
    assert!(cut_off(&h, &bob).await);
    assert!(!cut_off(&h, &alice).await, "the owner kept access");
    // A capability issued after the cut (access given back) is not refused by it.
    let (json, c) = filter(&h).await;
    let at = json["cutoffs"]["users"][0]["at"].as_i64().unwrap();
    let mut later = verify(&c, &bob);
    later.issued_at = at + 1;
    assert!(!c.cutoffs.refuses(&later));
    h.finish().await;
}
on_both!(team_removal_cuts_the_member_only);

async fn lower_sharing_cuts_only_who_lost_the_port(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let put = |sharing: &'static str| {
        let h = &h;
        async move {
            let r = h
                .admin(
                    Method::PUT,
                    "/v1/pods/myslug/ports/8726",
                    Some(json!({"sharing": sharing})),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        }
    };
    put("public").await;
    let anonymous = capability(&h, None, 8726).await;
    let carol = capability(&h, Some(&h.login("carol").await), 8726).await;
    let bob = capability(&h, Some(&h.login("bob").await), 8726).await;
    // Public → signed in: only the anonymous capability goes.
    put("signed_in").await;
    assert_eq!(
        user_cuts(&h).await,
        vec![cut("anonymous", Some("myslug"), Some(8726))]
    );
    assert!(cut_off(&h, &anonymous).await);
    assert!(!cut_off(&h, &carol).await);
    // Signed in → team: carol (not in the team) goes; bob (a member) stays.
    put("team").await;
    assert_eq!(
        user_cuts(&h).await,
        vec![
            cut("anonymous", Some("myslug"), Some(8726)),
            cut("carol", Some("myslug"), Some(8726)),
        ]
    );
    assert!(cut_off(&h, &carol).await);
    assert!(!cut_off(&h, &bob).await);
    // Removing the setting goes back to the default level, team: nothing more is cut.
    let r = h
        .admin(Method::DELETE, "/v1/pods/myslug/ports/8726", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(user_cuts(&h).await.len(), 2);
    put("owner").await;
    assert!(cut_off(&h, &bob).await);
    h.finish().await;
}
on_both!(lower_sharing_cuts_only_who_lost_the_port);

async fn another_owner_cuts_the_old_one(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let alice = capability(&h, Some(&h.login("alice").await), 8726).await;
    let bob = capability(&h, Some(&h.login("bob").await), 8726).await;
    let r = h
        .admin(
            Method::PATCH,
            "/v1/pods/myslug",
            Some(json!({"owner_id": "carol"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Alice owned it and is not in the team; bob is a member and keeps it.
    assert_eq!(
        user_cuts(&h).await,
        vec![cut("alice", Some("myslug"), Some(8726))]
    );
    assert!(cut_off(&h, &alice).await);
    assert!(!cut_off(&h, &bob).await);
    // A patch that changes neither owner nor team re-checks nothing.
    let r = h
        .admin(
            Method::PATCH,
            "/v1/pods/myslug",
            Some(json!({"status": "running"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(user_cuts(&h).await.len(), 1);
    h.finish().await;
}
on_both!(another_owner_cuts_the_old_one);

async fn a_deleted_user_is_cut_everywhere(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let bob = capability(&h, Some(&h.login("bob").await), 8726).await;
    let alice = capability(&h, Some(&h.login("alice").await), 8726).await;
    let r = h.admin(Method::DELETE, "/v1/users/bob", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(user_cuts(&h).await, vec![cut("bob", None, None)]);
    assert!(cut_off(&h, &bob).await);
    assert!(!cut_off(&h, &alice).await);
    h.finish().await;
}
on_both!(a_deleted_user_is_cut_everywhere);

async fn a_sign_out_stopped_half_way_is_finished_by_signing_out_again(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let session = h.login("alice").await;
    let cap = capability(&h, Some(&session), 8726).await;
    h.cuts_fail(true).await;
    let r = h.get("/auth/logout", &[("cookie", &session)]).await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.body);
    h.cuts_fail(false).await;
    assert!(!cut_off(&h, &cap).await);
    // The session is still there to end: signing out again ends it and cuts the capability
    // (once, though the browser sent its cookie twice).
    let twice = format!("{session}; {session}");
    let r = h.get("/auth/logout", &[("cookie", &twice)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["sessions_ended"], 1, "{}", r.body);
    assert!(cut_off(&h, &cap).await);
    h.finish().await;
}
on_both!(a_sign_out_stopped_half_way_is_finished_by_signing_out_again);

async fn a_user_delete_stopped_half_way_is_finished_by_deleting_again(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let bob = capability(&h, Some(&h.login("bob").await), 8726).await;
    h.admin_while_cuts_fail(Method::DELETE, "/v1/users/bob", None)
        .await;
    let r = h.admin(Method::GET, "/v1/users/bob", None).await;
    assert_eq!(r.status, StatusCode::OK, "bob is still there: {}", r.body);
    let r = h.admin(Method::DELETE, "/v1/users/bob", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(cut_off(&h, &bob).await);
    h.finish().await;
}
on_both!(a_user_delete_stopped_half_way_is_finished_by_deleting_again);

async fn a_user_who_still_owns_a_pod_is_not_deleted_and_keeps_access(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let alice = capability(&h, Some(&h.login("alice").await), 8726).await;
    let r = h.admin(Method::DELETE, "/v1/users/alice", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
    for says in ["\"myslug\"", "PATCH /v1/pods/{slug}", "owner_id"] {
        assert!(error.contains(says), "{says}: {error}");
    }
    // Nothing changed: alice and her access are as they were.
    let r = h.admin(Method::GET, "/v1/users/alice", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(user_cuts(&h).await, vec![]);
    assert!(!cut_off(&h, &alice).await);
    h.finish().await;
}
on_both!(a_user_who_still_owns_a_pod_is_not_deleted_and_keeps_access);

async fn a_pod_created_again_under_its_slug_cuts_the_old_holders(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let bob = capability(&h, Some(&h.login("bob").await), 8726).await;
    let alice = capability(&h, Some(&h.login("alice").await), 8726).await;
    // Deleting a pod cuts nothing (its host answers 404 from the next push)...
    let r = h.admin(Method::DELETE, "/v1/pods/myslug", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(user_cuts(&h).await.is_empty());
    // ...but a new pod under the same slug, without bob's team, must not take his capability.
    let r = h
        .admin(
            Method::POST,
            "/v1/pods",
            Some(json!({"slug": "myslug", "owner_id": "alice", "server_id": "s1", "status": "running", "nginx_port": 30001})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        user_cuts(&h).await,
        vec![cut("bob", Some("myslug"), Some(8726))]
    );
    assert!(cut_off(&h, &bob).await);
    assert!(!cut_off(&h, &alice).await);
    h.finish().await;
}
on_both!(a_pod_created_again_under_its_slug_cuts_the_old_holders);

async fn a_team_delete_stopped_at_its_cut_changes_nothing_and_can_be_repeated(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let bob = capability(&h, Some(&h.login("bob").await), 8726).await;
    h.admin_while_cuts_fail(Method::DELETE, "/v1/teams/t1", None)
        .await;
    // The team and its member are still there, and bob's access with them.
    let r = h.admin(Method::GET, "/v1/teams/t1/members", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()[0]["user_id"], "bob", "{}", r.body);
    assert!(!cut_off(&h, &bob).await);
    let r = h.admin(Method::DELETE, "/v1/teams/t1", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        user_cuts(&h).await,
        vec![cut("bob", Some("myslug"), Some(8726))]
    );
    assert!(cut_off(&h, &bob).await);
    h.finish().await;
}
on_both!(a_team_delete_stopped_at_its_cut_changes_nothing_and_can_be_repeated);

async fn an_owner_change_stopped_at_its_cut_changes_nothing_and_can_be_repeated(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let alice = capability(&h, Some(&h.login("alice").await), 8726).await;
    let to_carol = json!({"owner_id": "carol"});
    h.admin_while_cuts_fail(Method::PATCH, "/v1/pods/myslug", Some(to_carol.clone()))
        .await;
    let r = h.admin(Method::GET, "/v1/pods/myslug", None).await;
    assert_eq!(r.json()["owner_id"], "alice", "{}", r.body);
    assert!(!cut_off(&h, &alice).await);
    // The same patch again finds the owner still to change, and cuts.
    let r = h
        .admin(Method::PATCH, "/v1/pods/myslug", Some(to_carol))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["owner_id"], "carol", "{}", r.body);
    assert_eq!(
        user_cuts(&h).await,
        vec![cut("alice", Some("myslug"), Some(8726))]
    );
    assert!(cut_off(&h, &alice).await);
    h.finish().await;
}
on_both!(an_owner_change_stopped_at_its_cut_changes_nothing_and_can_be_repeated);

async fn a_pod_create_stopped_at_its_cut_changes_nothing_and_can_be_repeated(which: Which) {
    let Some(h) = Harness::seeded(which, |s| s).await else {
        return;
    };
    let bob = capability(&h, Some(&h.login("bob").await), 8726).await;
    let r = h.admin(Method::DELETE, "/v1/pods/myslug", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // A new pod under the slug, without bob's team: its create fails at bob's cut...
    let pod = json!({"slug": "myslug", "owner_id": "alice", "server_id": "s1", "status": "running", "nginx_port": 30001});
    h.admin_while_cuts_fail(Method::POST, "/v1/pods", Some(pod.clone()))
        .await;
    // ...and leaves no pod that bob's capability could open.
    let r = h.admin(Method::GET, "/v1/pods/myslug", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let (json, _) = filter(&h).await;
    assert!(
        !json.to_string().contains("\"myslug\""),
        "no pod in the pushed configuration: {json}"
    );
    let r = h.admin(Method::POST, "/v1/pods", Some(pod)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(cut_off(&h, &bob).await);
    h.finish().await;
}
on_both!(a_pod_create_stopped_at_its_cut_changes_nothing_and_can_be_repeated);
