//! `POST /api/proxy-wake`: Envoy's podgate filter asks for a stopped pod to be started when one
//! of its users loads a page of it (`crate::wake`). Only Envoy calls it, as for renewal: the
//! renewal secret (403 without it) and the user's capability as a bearer (401 when it is not a
//! live browser capability whose user may still reach its pod and port). `202` when the start
//! hook is being called, `429` when it was called for this pod less than the interval ago, `404`
//! when no start hook is configured.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use podgate_protocol::wake::WAKE_PATH;

use crate::http::error::{error_response, ApiError};
use crate::http::limits::{self, Endpoint};
use crate::http::renew::{bearer, has_secret};
use crate::renew::{still_allowed, RenewError};
use crate::wake::Woken;
use crate::AppState;

/// The route, behind the renew endpoint's per-client limit on wrong secrets.
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new().route(
        WAKE_PATH,
        post(wake).route_layer(from_fn_with_state(
            (state.clone(), Endpoint::Renew),
            limits::limit,
        )),
    )
}

async fn wake(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !has_secret(&state, &headers) {
        return error_response(
            StatusCode::FORBIDDEN,
            "only Envoy's podgate filter wakes pods",
        );
    }
    let Some(token) = bearer(&headers) else {
        return ApiError::Unauthorized("no capability".into()).into_response();
    };
    let allowed = match still_allowed(&state.mint_context(), token).await {
        Ok(allowed) => allowed,
        Err(RenewError::Refused(why)) => {
            tracing::info!(?why, "wake refused");
            return ApiError::Unauthorized("this capability may not start the pod".into())
                .into_response();
        }
        Err(RenewError::Mint(e)) => return ApiError::from(e).into_response(),
        Err(RenewError::Store(e)) => return ApiError::from(e).into_response(),
        Err(RenewError::Keys(e)) => return ApiError::internal(e).into_response(),
    };
    match state.waker().wake(&allowed.addr.pod) {
        Woken::Called => {
            tracing::info!(user = %allowed.user.id, pod = %allowed.addr.pod, "pod start asked");
            StatusCode::ACCEPTED.into_response()
        }
        Woken::Limited => error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "the pod's start was asked for moments ago",
        ),
        Woken::Off => error_response(StatusCode::NOT_FOUND, "no start hook is configured"),
    }
}
