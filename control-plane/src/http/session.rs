//! The browser session on the control plane: `GET|POST /auth/logout` (sign out everywhere) and
//! `GET /auth/userinfo` (who is signed in).
//!
//! Signing out ends every control-plane session the request's cookies name and cuts off every
//! capability minted for them (`cuts::cut_session`), on every pod host, at the next config push,
//! which this triggers. A pod host's `/.podgate/logout` (answered by the filter: it removes that
//! host's capability cookie) redirects here. In dev mode, `/dev/logout` signs out the same way.
//!
//! A GET signs out, like oauth2-proxy's `/oauth2/sign_out`: a pod page's plain link and the pod
//! host's redirect must work without a form, and the worst a forged request can do is sign the
//! user out (a nuisance, no access gained). Credentials of other verifiers (an identity
//! provider's cookie, the main app's session) are not ours to end: their capabilities carry no
//! session id and expire on their own.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::identity::{recent_session_of, sessions_to_end, start_session, EndedSession};
use crate::auth::verify::browser_identity;
use crate::cuts::cut_session;
use crate::http::cookies;
use crate::http::error::{ApiError, ApiResult};
use crate::http::openapi::Unauthorized;
use crate::http::request::{cookie_headers, credentials};
use crate::http::shared::no_store;
use crate::store::User;
use crate::AppState;

/// The session routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(logout, logout_post))
        .routes(routes!(userinfo))
}

/// Whether the browser is loading a page (a link, a redirect from a pod host, a form's `POST`)
/// rather than a script fetching: `Sec-Fetch-Mode` when the browser sends it, else an `Accept`
/// that names HTML. A script's `fetch` gets JSON even when it accepts HTML too.
fn wants_html(headers: &HeaderMap) -> bool {
    match headers.get("sec-fetch-mode") {
        Some(mode) => mode.as_bytes() == b"navigate",
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html")),
    }
}

/// `GET /auth/logout`: ends this browser's sessions and cuts off their capabilities
/// ([`end_and_answer`]).
#[utoipa::path(
    get,
    path = "/auth/logout",
    tag = "session",
    responses(
        (status = 200, description = "Signed out, or the signed-out page for a page load"),
        (status = 302, description = "Signed out here; sent on to sign out at the identity provider"),
    ),
)]
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    end_and_answer(state, headers).await
}

/// `POST /auth/logout`: the same as `GET`, for a form or a script.
#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "session",
    operation_id = "logout_post",
    responses(
        (status = 200, description = "Signed out, or the signed-out page for a page load"),
        (status = 302, description = "Signed out here; sent on to sign out at the identity provider"),
    ),
)]
async fn logout_post(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    end_and_answer(state, headers).await
}

/// Ends every session the request's cookies name but the one whose stored id hash is `kept`,
/// and cuts off the capabilities of the live ones (pushed at once); returns the live ones. For
/// a sign-out, and for a new sign-in in a browser that still holds a session
/// ([`session_for_sign_in`]).
pub(crate) async fn end_sessions(
    state: &AppState,
    headers: &HeaderMap,
    kept: Option<&str>,
) -> ApiResult<Vec<EndedSession>> {
    let mut named =
        sessions_to_end(state.db(), state.session_cookie(), &cookie_headers(headers)).await?;
    named.retain(|(id_hash, _)| Some(id_hash.as_str()) != kept);
    // The cuts and the end of the sessions together, or neither: a sign-out that fails leaves
    // the sessions, and signing out again ends them.
    if !named.is_empty() {
        let lifetime = state.config().capability_lifetime;
        let mut change = state.db().change().await?;
        for (id_hash, session) in &named {
            if let Some(session) = session {
                cut_session(&mut change, lifetime, &session.sid).await?;
            }
            change.delete_session(id_hash).await?;
        }
        change.commit().await?;
    }
    let ended: Vec<EndedSession> = named.into_iter().filter_map(|(_, s)| s).collect();
    if !ended.is_empty() {
        state.envoy_config_changed().await;
    }
    Ok(ended)
}

/// The session a sign-in of `user` with the identity provider `provider` (`None`: the dev
/// login), started at `started_at`, leaves this browser with: its cookie's value.
///
/// A live session of the same user, signed in the same way since this sign-in started, that
/// the browser already holds is kept. That is another tab's sign-in that finished while this
/// one was under way (a browser restoring several pod tabs sends each through the provider at
/// once): ending it would cut off the capabilities that tab was just given, and the browser's
/// cookie names it, so signing out still ends it with everything minted for it. Any other
/// session the browser holds (older than this sign-in, another user's, or one from another
/// provider) ends as a sign-out would end it, and a new one starts, so that signing out of the
/// new one leaves nothing of the old one working and a copy of an old cookie stops working.
pub(crate) async fn session_for_sign_in(
    state: &AppState,
    headers: &HeaderMap,
    user: &User,
    provider: Option<&str>,
    started_at: i64,
) -> ApiResult<String> {
    let cookies = cookie_headers(headers);
    let kept = recent_session_of(
        state.db(),
        state.session_cookie(),
        &cookies,
        &user.id,
        provider,
        started_at,
    )
    .await?;
    // The new session is stored before any other ends: a failure on the way leaves the browser
    // with the session it had (a new one it never got the cookie of expires unused).
    let (kept_id, value) = match kept {
        Some((id_hash, value)) => (Some(id_hash), value),
        None => (
            None,
            start_session(state.db(), state.config().session_lifetime, user, provider).await?,
        ),
    };
    end_sessions(state, headers, kept_id.as_deref()).await?;
    Ok(value)
}

/// Signing out, for `GET|POST /auth/logout` and the dev login's `GET /dev/logout`: ends this
/// browser's sessions, cuts off their capabilities, and answers with JSON, the signed-out page,
/// or a redirect to sign out at the identity provider too.
pub(crate) async fn end_and_answer(state: AppState, headers: HeaderMap) -> ApiResult<Response> {
    let ended = end_sessions(&state, &headers, None).await?;
    if !ended.is_empty() {
        tracing::info!(sessions = ended.len(), "signed out: capabilities cut off");
    }
    // A browser that signed in with an identity provider signs out there too, once the cut is
    // recorded: sent to the provider's end-session endpoint, which sends it back here (nothing
    // left to end: the signed-out page).
    let at_provider = if wants_html(&headers) {
        provider_sign_out(&state, &ended).await
    } else {
        None
    };
    let mut resp = if let Some(location) = at_provider {
        let mut r = StatusCode::FOUND.into_response();
        r.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_str(&location).map_err(|e| ApiError::internal(e.to_string()))?,
        );
        r
    } else if wants_html(&headers) {
        (
            StatusCode::OK,
            Html(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>Signed out</title></head>\
                 <body><h1>You are signed out</h1>\
                 <p>Your access to pods through this browser session has ended.</p></body></html>",
            ),
        )
            .into_response()
    } else {
        Json(json!({ "signed_out": true, "sessions_ended": ended.len() })).into_response()
    };
    let clear = cookies::clear_session(&state);
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&clear).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    no_store(&mut resp);
    Ok(resp)
}

/// The provider's end-session URL for the first of `ended` that signed in with a provider that
/// has one; the browser comes back to `/auth/logout`.
async fn provider_sign_out(state: &AppState, ended: &[EndedSession]) -> Option<String> {
    let ctx = state.sign_in_context();
    let back = format!("{}/auth/logout", ctx.issuer);
    for name in ended.iter().filter_map(|s| s.provider.as_deref()) {
        let Some(p) = ctx.verifier.sign_in_providers().find(|p| p.name == name) else {
            continue;
        };
        if let Some(url) = ctx.sign_ins.end_session_url(p, &back).await {
            return Some(url);
        }
    }
    None
}

/// `GET /auth/userinfo`: the signed-in user of this browser, or a 401.
#[utoipa::path(
    get,
    path = "/auth/userinfo",
    tag = "session",
    responses(
        (status = 200, description = "The signed-in user"),
        Unauthorized,
    )
)]
async fn userinfo(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let Some(identity) =
        browser_identity(&state.identify_context(), &credentials(&headers)).await?
    else {
        let mut resp = ApiError::Unauthorized(
            "not signed in; sign in through the login page, then retry".into(),
        )
        .into_response();
        no_store(&mut resp);
        return Ok(resp);
    };
    let user = &identity.user;
    let mut resp = Json(json!({
        "user": user.id,
        "email": user.email,
        "name": user.name,
        "via": identity.via.label(),
    }))
    .into_response();
    no_store(&mut resp);
    Ok(resp)
}
