//! `POST /api/proxy-exchange?pod=&port=`: Envoy's podgate filter exchanges an API token sent
//! to a pod host for a capability for exactly that pod and port (`podgate_protocol::exchange`).
//! Only Envoy calls it: the request carries the renewal secret (`podgate-renew-secret`), the
//! API token as a bearer and the end client's address (`podgate-client`). Without the secret
//! nothing is read (403). The API token is checked as everywhere (`auth::api_tokens::verify`:
//! revoked and expired tokens are refused on their next use, and failures drain the client's
//! bucket, here counted per end client); its owner is authorized as for `/v1/capabilities`.
//! Answers: `{"token": "..."}`; 401 for a token refused; 404 for no such pod or port, or not
//! the owner's to reach; 429 with `Retry-After` for a client out of failed attempts. The
//! capability is audited with the API token's id (`via` = `exchange`), so revoking the token
//! puts it on the filter's revocation list.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::Json;
use podgate_protocol::exchange::{ExchangeAnswer, CLIENT_HEADER, EXCHANGE_PATH};
use podgate_protocol::token::TokenKind;
use serde::Deserialize;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::auth::api_tokens::{self, ApiTokenCheck, ApiTokenError};
use crate::authz::authorize;
use crate::authz::{authorize_resource, AuthzError, RESOURCE_MSG};
use crate::http::error::{ApiError, ErrorBody, QueryArgs};
use crate::http::limits::{self, Endpoint};
use crate::http::openapi::{Malformed, NotFound, TooMany, Unauthorized};
use crate::http::renew::{bearer, has_secret, only_envoy};
use crate::http::request::ClientIp;
use crate::http::shared::{no_store, parse_target};
use crate::metrics::{DbOp, Outcome};
use crate::mint::{mint_scoped_for, ByApiToken};
use crate::store::now_unix;
use crate::AppState;

/// The route, behind the per-client limit on wrong secrets.
pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(exchange).map(|r| {
        r.route_layer(from_fn_with_state(
            (state.clone(), Endpoint::Renew),
            limits::limit,
        ))
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    pod: Option<String>,
    port: Option<String>,
    service: Option<String>,
    /// The resource path the request is under, on a service reached per resource.
    res: Option<String>,
}

/// The end client's address the filter sent, or Envoy's own when there is none: what the
/// failed-token bucket counts by, prefixed so it never shares a bucket with direct calls.
fn end_client(headers: &HeaderMap, envoy: &str) -> String {
    let forwarded = headers
        .get(CLIENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64);
    format!("edge:{}", forwarded.unwrap_or(envoy))
}

/// Counted as an exchange by its answer's status.
#[utoipa::path(
    post,
    path = EXCHANGE_PATH,
    tag = "capabilities",
    params(
        ("pod" = Option<String>, Query, description = "The pod the API token was sent to"),
        ("port" = Option<u16>, Query, description = "The port"),
        ("service" = Option<String>, Query, description = "The service the API token was sent to, instead of `pod` and `port`"),
        ("res" = Option<String>, Query, description = "On a service reached per resource: the resource path the request is under (`/sessions/abc`)"),
    ),
    responses(
        (status = 200, description = "`{token}`: a capability for that pod and port"),
        Malformed,
        Unauthorized,
        (status = 403, description = "Refused", body = ErrorBody),
        NotFound,
        TooMany,
    )
)]
async fn exchange(
    State(state): State<AppState>,
    // Read only after the secret is checked: without it nothing is read, the query included.
    target: Result<QueryArgs<Target>, ApiError>,
    headers: HeaderMap,
    ClientIp(envoy): ClientIp,
) -> Response {
    let resp = answer_exchange(&state, target, &headers, &envoy).await;
    state
        .metrics()
        .exchange(Outcome::of_status(resp.status().as_u16()));
    resp
}

async fn answer_exchange(
    state: &AppState,
    target: Result<QueryArgs<Target>, ApiError>,
    headers: &HeaderMap,
    envoy: &str,
) -> Response {
    if !has_secret(state, headers) {
        return only_envoy("exchanges API tokens");
    }
    let target = match target {
        Ok(QueryArgs(target)) => target,
        Err(e) => return e.into_response(),
    };
    let addr = match parse_target(
        target.pod.as_deref(),
        target.port.as_deref(),
        target.service.as_deref(),
    ) {
        Ok(addr) => addr,
        Err(e) => return e.into_response(),
    };
    let Some(token) = bearer(headers).filter(|t| api_tokens::looks_like_api_token(t)) else {
        return ApiError::Unauthorized("no API token to exchange".into()).into_response();
    };
    let client = end_client(headers, envoy);
    let ctx = state.identify_context();
    let check = api_tokens::verify(
        ctx.db,
        ctx.api_token_failures,
        &ctx.verifiers.api_token_uses,
        token,
        &client,
        now_unix(),
    )
    .await;
    let (user, token) = match check {
        Ok(ApiTokenCheck::Accepted {
            user,
            id,
            expires_at,
        }) => (user, ByApiToken { id, expires_at }),
        Ok(ApiTokenCheck::Refused(reason)) => {
            tracing::info!(client, "API token refused at the edge");
            return ApiError::Unauthorized(reason).into_response();
        }
        Err(ApiTokenError::TooManyFailures(limited)) => {
            return ApiError::TooManyRequests {
                message: format!(
                    "too many failed API tokens from this client; retry in {} s",
                    limited.retry_after_secs
                ),
                retry_after_secs: limited.retry_after_secs,
            }
            .into_response()
        }
        Err(ApiTokenError::Store(e)) => return ApiError::from(e).into_response(),
    };
    let authorized = state
        .metrics()
        .db_timed(DbOp::Authorize, authorize(state.db(), Some(&user), &addr))
        .await;
    if let Err(e) = authorized {
        tracing::info!(client, user = %user.id, pod = %addr.pod, port = addr.port, "API token's owner may not reach the pod");
        return ApiError::from(e).into_response();
    }
    // A resource the owner may not use is the filter's "not allowed" (a 404, as above), never
    // a 403, which it reads as a wrong secret.
    match authorize_resource(state.db(), Some(&user), &addr, target.res.as_deref()).await {
        Ok(()) => {}
        Err(AuthzError::Store(e)) => return ApiError::from(e).into_response(),
        Err(AuthzError::NotFound | AuthzError::NotYourResource) => {
            tracing::info!(client, user = %user.id, service = %addr.pod, "API token's owner may not use the resource");
            return ApiError::not_found(RESOURCE_MSG).into_response();
        }
    }
    let minted = mint_scoped_for(
        &state.mint_context(),
        TokenKind::Capability,
        Some(&user),
        &addr,
        target.res.as_deref(),
        "exchange",
        Some(&token),
        None,
    )
    .await;
    match minted {
        Ok(cap) => {
            tracing::info!(client, user = %user.id, token = %token.id, pod = %addr.pod, port = addr.port, jti = %cap.jti, "API token exchanged at the edge");
            let mut resp = Json(ExchangeAnswer { token: cap.token }).into_response();
            no_store(&mut resp);
            resp
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
