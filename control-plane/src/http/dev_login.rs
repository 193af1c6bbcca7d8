//! The dev login: signs in as any user without an identity check. Routed only in dev mode
//! (which says so loudly at start).

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::{ApiError, ApiResult};
use crate::http::openapi::{Malformed, NotFound};
use crate::http::shared::{checked_next, no_store, single_params};
use crate::http::{cookies, session};
use crate::ids::check_id;
use crate::metrics::{LoginMethod, Outcome};
use crate::store::{now_unix, User};
use crate::AppState;

/// The dev login's routes.
pub fn dev_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(dev_login))
        .routes(routes!(dev_logout))
}

/// `GET /dev/login?user=ID_OR_EMAIL&next=...`: signs in as that user (created if the id is
/// new), then redirects to `next` (a 400 before signing in when it is not a path on this
/// control plane, as at `/auth/login`), or answers the user as JSON.
/// Counted as a login by its answer's status.
#[utoipa::path(
    get,
    path = "/dev/login",
    tag = "dev",
    responses(
        (status = 200, description = "Signed in (dev mode only)"),
        (status = 302, description = "A redirect"),
        Malformed,
        NotFound,
    )
)]
async fn dev_login(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let resp = dev_sign_in(&state, &headers, query)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    state
        .metrics()
        .login(LoginMethod::Dev, Outcome::of_status(resp.status().as_u16()));
    resp
}

async fn dev_sign_in(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<String>,
) -> ApiResult<Response> {
    let params = single_params(query.as_deref(), &["user", "next"])?;
    let Some(who) = params.get("user").filter(|u| !u.is_empty()) else {
        return Err(ApiError::bad(
            "missing `user`; call /dev/login?user=USER_ID (or an email of an existing user)",
        ));
    };
    let next = checked_next(
        &state.config().issuer,
        params.get("next").map(String::as_str),
    )
    .map_err(ApiError::bad)?;
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
        check_id(who, "user")?;
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
    // The dev login is one request: a session started within a sign-in's lifetime is another
    // tab's, as a provider's sign-in under way that long would keep it.
    let started_at = now_unix() - crate::auth::sign_in::SIGN_IN_LIFETIME_SECS;
    let session =
        crate::http::session::session_for_sign_in(state, headers, &user, None, started_at).await?;
    let cookie = cookies::session(state, &session);
    tracing::warn!(user = %user.id, "DEV LOGIN: signed in without any identity check");
    let mut resp = match next {
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

/// `GET /dev/logout`: signing out is not special in dev mode: the sessions end and their
/// capabilities are cut off, as at `/auth/logout` (the same implementation; its own operation).
#[utoipa::path(
    get,
    path = "/dev/logout",
    tag = "dev",
    responses(
        (status = 200, description = "Signed out (dev mode only), or the signed-out page for a page load"),
        (status = 302, description = "Signed out here; sent on to sign out at the identity provider"),
    )
)]
async fn dev_logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    session::end_and_answer(state, headers).await
}
