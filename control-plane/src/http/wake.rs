//! `POST /api/proxy-wake`: Envoy's podgate filter asks for a stopped pod to be started when one
//! of its users loads a page of it (`crate::wake`). Only Envoy calls it, as for renewal: the
//! renewal secret (403 without it) and the user's capability as a bearer (401 when it is not a
//! live browser capability whose user may still reach its pod and port). `202` when the start
//! hook is being called, `429` when it was called for this pod less than the interval ago (by any control plane on the
//! database), `404`
//! when no start hook is configured.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use podgate_protocol::wake::WAKE_PATH;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::http::error::{error_response, ApiError, ErrorBody};
use crate::http::limits::{self, Endpoint};
use crate::http::openapi::Unauthorized;
use crate::http::renew::{bearer, has_secret, only_envoy};
use crate::metrics::WakeOutcome;
use crate::renew::{still_allowed, RenewError};
use crate::wake::Woken;
use crate::AppState;

/// The route, behind the renew endpoint's per-client limit on wrong secrets.
pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(wake).map(|r| {
        r.route_layer(from_fn_with_state(
            (state.clone(), Endpoint::Renew),
            limits::limit,
        ))
    }))
}

/// Counted as a wake-up by its outcome.
#[utoipa::path(
    post,
    path = WAKE_PATH,
    tag = "capabilities",
    responses(
        (status = 202, description = "The start hook is being called"),
        Unauthorized,
        (status = 403, description = "Refused", body = ErrorBody),
        (status = 404, description = "No start hook is configured", body = ErrorBody),
        (status = 429, description = "The pod's start was asked for less than the interval ago (`Retry-After`: the seconds left of it), or too many requests from this client", body = ErrorBody),
    )
)]
async fn wake(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (outcome, resp) = answer_wake(&state, &headers).await;
    state.metrics().wake(outcome);
    resp
}

async fn answer_wake(state: &AppState, headers: &HeaderMap) -> (WakeOutcome, Response) {
    if !has_secret(state, headers) {
        return (WakeOutcome::Refused, only_envoy("wakes pods"));
    }
    let Some(token) = bearer(headers) else {
        return (
            WakeOutcome::Refused,
            ApiError::Unauthorized("no capability".into()).into_response(),
        );
    };
    // A live capability only: the filter asks with the one it granted the page load.
    let allowed = match still_allowed(&state.mint_context(), token, 0).await {
        Ok(allowed) => allowed,
        Err(RenewError::Refused(why)) => {
            tracing::info!(?why, "wake refused");
            return (
                WakeOutcome::Refused,
                ApiError::Unauthorized("this capability may not start the pod".into())
                    .into_response(),
            );
        }
        Err(RenewError::Mint(e)) => return failed(ApiError::from(e)),
        Err(RenewError::Store(e)) => return failed(ApiError::from(e)),
        Err(RenewError::Keys(e)) => return failed(ApiError::internal(e)),
    };
    let woken = match state.waker().wake(state.db(), &allowed.addr.pod).await {
        Ok(woken) => woken,
        Err(e) => return failed(ApiError::from(e)),
    };
    match woken {
        Woken::Called => {
            tracing::info!(user = %allowed.user.id, pod = %allowed.addr.pod, "pod start asked");
            (WakeOutcome::Called, StatusCode::ACCEPTED.into_response())
        }
        Woken::Limited { retry_after_secs } => {
            let wait = retry_after_secs.max(1);
            let refused = ApiError::TooManyRequests {
                message: format!(
                    "the pod's start was asked for moments ago; it may be asked again in {wait} s"
                ),
                retry_after_secs: wait,
            };
            (WakeOutcome::Limited, refused.into_response())
        }
        Woken::Off => (
            WakeOutcome::Off,
            error_response(StatusCode::NOT_FOUND, "no start hook is configured"),
        ),
    }
}

/// An error's answer, counted by its status: 5xx is ours, the rest the caller's.
fn failed(e: ApiError) -> (WakeOutcome, Response) {
    let resp = e.into_response();
    let outcome = if resp.status().is_server_error() {
        WakeOutcome::Error
    } else {
        WakeOutcome::Refused
    };
    (outcome, resp)
}
