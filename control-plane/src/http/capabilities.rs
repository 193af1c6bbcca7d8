//! `POST /v1/capabilities {pod, port}`: a capability in the body, for scripts and SDKs; the
//! same checks as the browser flow, with every identity verifier.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::Json;
use podgate_protocol::resource;
use podgate_protocol::token::TokenKind;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::router::UtoipaMethodRouterExt;
use utoipa_axum::routes;

use crate::auth::verify::{identify, Accept};
use crate::authz;
use crate::http::error::{ApiError, ApiResult, ErrorBody, JsonBody};
use crate::http::limits::{self, Endpoint};
use crate::http::openapi::{Malformed, NotFound, TooMany, Unauthorized};
use crate::http::request::{credentials, ClientIp};
use crate::http::shared::{no_store, parse_target};
use crate::mint::mint_scoped_for;
use crate::AppState;

/// The route, behind its per-client limit (`crate::http::limits` says what counts and why).
pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(capabilities).map(|r| {
        r.route_layer(from_fn_with_state(
            (state.clone(), Endpoint::Capabilities),
            limits::limit,
        ))
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapabilityRequest {
    /// The pod's slug.
    pub pod: Option<String>,
    /// The pod port.
    pub port: Option<u16>,
    /// A service's name, instead of `pod` and `port`.
    pub service: Option<String>,
    /// On a service reached per resource: the id of the resource (`abc` for
    /// `/sessions/abc`); the capability opens only paths under it.
    pub resource: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CapabilityResponse {
    /// The capability, a JWT.
    pub token: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
    /// Seconds from this answer until it expires: what a client schedules its renewal by, since
    /// its clock need not agree with the control plane's.
    pub expires_in: i64,
    /// The pod port's public URL (the resource's, for one); send the token as `podgate-token`
    /// or `Authorization: Bearer`.
    pub url: String,
}

/// `POST /v1/capabilities {pod, port}` for scripts and SDKs.
#[utoipa::path(
    post,
    path = "/v1/capabilities",
    tag = "capabilities",
    request_body = CapabilityRequest,
    responses(
        (status = 200, description = "A capability for the pod port", body = CapabilityResponse),
        Malformed,
        Unauthorized,
        (status = 403, description = "Not allowed to reach that pod port: `{error, hint}`, the hint saying whom to ask", body = ErrorBody),
        NotFound,
        TooMany,
    )
)]
async fn capabilities(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client): ClientIp,
    JsonBody(req): JsonBody<CapabilityRequest>,
) -> ApiResult<Response> {
    let port = req.port.map(|p| p.to_string());
    let addr = parse_target(req.pod.as_deref(), port.as_deref(), req.service.as_deref())?;
    // Every verifier: API tokens and ID tokens as bearer, then the browser's cookies.
    let outcome = identify(
        &state.identify_context(),
        &credentials(&headers),
        &client,
        Accept::Api,
    )
    .await?;
    let via = outcome.identity.as_ref().map_or_else(
        || "capabilities".to_owned(),
        |i| format!("capabilities/{}", i.via.label()),
    );
    let api_token = outcome.identity.as_ref().and_then(|i| i.via.api_token());
    let sid = outcome
        .identity
        .as_ref()
        .and_then(|i| i.via.session_id().map(str::to_owned));
    let user = outcome.identity.map(|i| i.user);
    match &user {
        None => {
            // A credential that was presented and refused is an error even for public ports.
            if let Some(reason) = outcome.rejection {
                return Err(ApiError::Unauthorized(reason));
            }
            if state.authorize(None, &addr).await.is_err() {
                return Err(ApiError::Unauthorized(
                    "not signed in; send an API token (pg_...) or an ID token as `Authorization: Bearer`, or the session cookie".into(),
                ));
            }
        }
        Some(u) => state.authorize(Some(u), &addr).await?,
    }
    let res = match &req.resource {
        None => None,
        Some(id) if !resource::valid_id(id) => {
            return Err(ApiError::bad(format!(
                "`resource` {id:?} is no resource id: send the id alone (`abc` for /sessions/abc), 1 to {} letters, digits, '-', '.', '_' or '~'",
                resource::MAX_ID_LEN
            )))
        }
        Some(id) => match authz::resource_of_id(state.db(), &addr, id).await? {
            Some(res) => Some(res),
            None => {
                return Err(ApiError::bad(
                    "`resource` is only for a service reached per resource (one with a `resource_path`); leave it out",
                ))
            }
        },
    };
    authz::authorize_resource(state.db(), user.as_ref(), &addr, res.as_deref()).await?;
    let cap = mint_scoped_for(
        &state.mint_context(),
        TokenKind::Capability,
        user.as_ref(),
        &addr,
        res.as_deref(),
        &via,
        api_token.as_ref(),
        sid.as_deref(),
    )
    .await?;
    let host = state.config().public_hosts.render(&addr);
    let expires_at = chrono::DateTime::from_timestamp(cap.expires_at, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .ok_or_else(|| ApiError::internal("expiry out of range"))?;
    let expires_in = (cap.expires_at - crate::store::now_unix()).max(0);
    let mut resp = Json(CapabilityResponse {
        token: cap.token,
        expires_at,
        expires_in,
        url: match &res {
            Some(res) => format!("{}{res}", state.config().pod_origin(&host)),
            None => format!("{}/", state.config().pod_origin(&host)),
        },
    })
    .into_response();
    no_store(&mut resp);
    Ok(resp)
}
