//! Who the user is. [`current_user`] is the one place that answers it; today it knows the
//! control plane's own session cookie (set by the dev login), and identity providers and API
//! tokens plug in here later without the endpoints changing.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use podgate_protocol::cookie::find_all;
use podgate_protocol::redirect::safe_next;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::http::flow::{no_store, single_params};
use crate::keys::{hex, random_bytes};
use crate::store::{now_unix, User};
use crate::AppState;

/// How many copies of our session cookie we look at (a browser may send several).
const MAX_SESSION_CANDIDATES: usize = 4;

fn session_hash(value: &str) -> String {
    hex(&Sha256::digest(value.as_bytes()))
}

/// The signed-in user of this request, read fresh from the database, or `None`.
pub async fn current_user(state: &AppState, headers: &HeaderMap) -> ApiResult<Option<User>> {
    let now = now_unix();
    for cookie_header in headers.get_all(header::COOKIE) {
        let Ok(cookie_header) = cookie_header.to_str() else {
            continue;
        };
        for value in find_all(cookie_header, state.session_cookie()).take(MAX_SESSION_CANDIDATES) {
            // Our values are 64 hex characters; anything else is not ours.
            if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            if let Some(user) = state.db().session_user(&session_hash(value), now).await? {
                return Ok(Some(user));
            }
        }
    }
    Ok(None)
}

/// Starts a session for `user`; returns the `Set-Cookie` value.
pub async fn start_session(state: &AppState, user: &User) -> ApiResult<String> {
    let secret: [u8; 32] = random_bytes().map_err(|e| ApiError::internal(e.to_string()))?;
    let value = hex(&secret);
    let now = now_unix();
    let lifetime = state.config().session_lifetime;
    state
        .db()
        .create_session(&session_hash(&value), &user.id, now, now + lifetime as i64)
        .await?;
    let secure = if state.config().issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    Ok(format!(
        "{}={value}; Path=/; Max-Age={lifetime}; HttpOnly; SameSite=Lax{secure}",
        state.session_cookie()
    ))
}

/// The dev login: exists only in dev mode (and says so loudly at start).
pub fn dev_router() -> Router<AppState> {
    Router::new()
        .route("/dev/login", get(dev_login))
        .route("/dev/logout", get(dev_logout))
}

/// Where to go after signing in: a same-host path, or an absolute URL on the control plane
/// itself (the login redirect of `/api/proxy-auth` sends one) turned into its path.
fn after_login(state: &AppState, next: Option<&str>) -> Option<String> {
    let next = next?;
    let issuer_prefix = format!("{}/", state.config().issuer);
    let path = match next.strip_prefix(&issuer_prefix) {
        Some(rest) => format!("/{rest}"),
        None => next.to_owned(),
    };
    let safe = safe_next(&path);
    (safe == path).then_some(safe)
}

/// `GET /dev/login?user=ID_OR_EMAIL&next=...`: signs in as that user (created if the id is
/// new), then redirects to `next` when it is safe, or answers the user as JSON.
async fn dev_login(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let params = single_params(query.as_deref(), &["user", "next"])?;
    let Some(who) = params.get("user").filter(|u| !u.is_empty()) else {
        return Err(ApiError::bad(
            "missing `user`; call /dev/login?user=USER_ID (or an email of an existing user)",
        ));
    };
    let db = state.db();
    let user = if who.contains('@') {
        db.get_user_by_email(who).await?.ok_or_else(|| {
            ApiError::not_found(format!(
                "no user with email {who:?}; create one with POST /v1/users or log in by id"
            ))
        })?
    } else if let Some(user) = db.get_user(who).await? {
        user
    } else {
        crate::http::admin::check_id(who, "user")?;
        let user = User {
            id: who.clone(),
            email: None,
            name: who.clone(),
            created_at: now_unix(),
        };
        db.create_user(&user).await?;
        tracing::warn!(user = %user.id, "dev login created a user");
        user
    };
    let cookie = start_session(&state, &user).await?;
    tracing::warn!(user = %user.id, "DEV LOGIN: signed in without any identity check");
    let mut resp = match after_login(&state, params.get("next").map(String::as_str)) {
        Some(next) => {
            let mut r = StatusCode::FOUND.into_response();
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&next).map_err(|e| ApiError::internal(e.to_string()))?,
            );
            r
        }
        None => Json(json!({ "user": user, "dev_mode": true })).into_response(),
    };
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    no_store(&mut resp);
    Ok(resp)
}

/// `GET /dev/logout`: ends the session of this browser.
async fn dev_logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    for cookie_header in headers.get_all(header::COOKIE) {
        if let Ok(h) = cookie_header.to_str() {
            for value in find_all(h, state.session_cookie()).take(MAX_SESSION_CANDIDATES) {
                state.db().delete_session(&session_hash(value)).await?;
            }
        }
    }
    let mut resp = Json(json!({ "signed_out": true })).into_response();
    let clear = format!(
        "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{}",
        state.session_cookie(),
        if state.config().issuer.starts_with("https://") {
            "; Secure"
        } else {
            ""
        }
    );
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&clear).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    no_store(&mut resp);
    Ok(resp)
}
