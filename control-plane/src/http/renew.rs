//! `POST /api/proxy-renew`: Envoy's podgate filter renews a browser's capability in the last
//! part of its life, or once it lapsed in a tab left idle (`podgate_protocol::renewal`, at most
//! a session lifetime after its `exp`: `renew.rs`). Only Envoy calls it: the request carries the
//! renewal secret (`podgate-renew-secret`, pushed to the filter with its configuration) and the
//! capability as a bearer. Without the secret nothing is read (403); a capability that cannot
//! be renewed is a 401 (the filter stops renewing it); success is
//! `{"token": "...", "set_cookie": "..."}`, the cookie exactly as the callback sets it.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::Json;
use podgate_protocol::renewal::{RenewAnswer, RENEW_PATH, RENEW_SECRET_HEADER};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::router::UtoipaMethodRouterExt;
use utoipa_axum::routes;

use crate::http::cookies;
use crate::http::error::{error_response, ApiError, ErrorBody};
use crate::http::limits::{self, Endpoint};
use crate::http::openapi::{TooMany, Unauthorized};
use crate::http::shared::no_store;
use crate::metrics::Outcome;
use crate::renew::{renew_capability, RenewError};
use crate::AppState;

/// The route, behind its per-client limit on wrong secrets.
pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(renew).map(|r| {
        r.route_layer(from_fn_with_state(
            (state.clone(), Endpoint::Renew),
            limits::limit,
        ))
    }))
}

/// The 403 for a call to an endpoint only Envoy's filter calls (it `does` what) without the
/// renewal secret, saying what the filter needs.
pub(crate) fn only_envoy(does: &str) -> Response {
    error_response(
        StatusCode::FORBIDDEN,
        &format!(
            "only Envoy's podgate filter {does} (with the renewal secret: every control plane \
             behind one Envoy must share the key-encryption key it is derived from, or the same \
             --renew-secret, PODGATE_RENEW_SECRET)"
        ),
    )
}

/// Whether `headers` carry the renewal secret, or one derived from a previous key-encryption
/// key (compared in constant time, over digests so the length leaks nothing either).
pub(crate) fn has_secret(state: &AppState, headers: &HeaderMap) -> bool {
    let presented = Sha256::digest(
        headers
            .get(RENEW_SECRET_HEADER)
            .map_or(&b""[..], |v| v.as_bytes()),
    );
    let config = state.config();
    std::iter::once(&config.renew_secret)
        .chain(&config.previous_renew_secrets)
        .fold(false, |found, expected| {
            found | bool::from(presented.ct_eq(&Sha256::digest(expected.as_bytes())))
        })
}

/// The bearer token of the one `Authorization` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Counted as a renewal by its answer's status.
#[utoipa::path(
    post,
    path = RENEW_PATH,
    tag = "capabilities",
    responses(
        (status = 200, description = "`{token, set_cookie}`"),
        Unauthorized,
        (status = 403, description = "Refused", body = ErrorBody),
        TooMany,
    )
)]
async fn renew(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let resp = answer_renewal(&state, &headers).await;
    state
        .metrics()
        .renewal(Outcome::of_status(resp.status().as_u16()));
    resp
}

async fn answer_renewal(state: &AppState, headers: &HeaderMap) -> Response {
    if !has_secret(state, headers) {
        return only_envoy("renews capabilities");
    }
    let Some(token) = bearer(headers) else {
        return ApiError::Unauthorized("no capability to renew".into()).into_response();
    };
    match renew_capability(&state.mint_context(), token).await {
        Ok(fresh) => {
            let answer = RenewAnswer {
                set_cookie: cookies::capability(state, &fresh),
                token: fresh.token,
            };
            let mut resp = Json(answer).into_response();
            no_store(&mut resp);
            resp
        }
        Err(RenewError::Refused(why)) => {
            tracing::info!(?why, "renewal refused");
            ApiError::Unauthorized("this capability is not renewed; sign in again".into())
                .into_response()
        }
        Err(RenewError::Mint(e)) => ApiError::from(e).into_response(),
        Err(RenewError::Store(e)) => ApiError::from(e).into_response(),
        Err(RenewError::Keys(e)) => ApiError::internal(e).into_response(),
    }
}
