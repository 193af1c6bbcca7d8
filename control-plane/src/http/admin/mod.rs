//! The admin API under `/v1/`, behind the admin bearer token: users, teams and members,
//! servers, pods, their ports and status, services and their credentials, keys, and the mint
//! audit trail.

mod audit;
mod filter_config;
mod keys;
mod pods;
mod servers;
mod service_resources;
mod services;
mod teams;
mod users;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;

use crate::http::error::{ApiError, ApiResult};
use crate::http::limits::{self, Endpoint};
use crate::keys::random_id;
use crate::AppState;

pub fn router(state: AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(users::routes())
        .merge(teams::routes())
        .merge(servers::routes())
        .merge(pods::routes())
        .merge(services::routes())
        .merge(service_resources::routes())
        .merge(keys::routes())
        .merge(audit::routes())
        .merge(filter_config::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            push_after_write,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        // Outside the token check, so its 401s drain the client's bucket (`limits.rs`).
        .route_layer(middleware::from_fn_with_state(
            (state, Endpoint::Admin),
            limits::limit,
        ))
}

/// After a write (pods, status, servers, keys, or anything that cascades to them), tells the
/// xDS sync task to rebuild; unchanged content is not pushed. Not after a refusal of the
/// request (a 4xx but 404), which changed nothing; after a 404 or a 5xx too, because a repeated
/// delete still cuts (404) and a write may have committed before what failed after it (5xx).
async fn push_after_write(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let response = next.run(req).await;
    let status = response.status();
    let refused = status.is_client_error() && status != StatusCode::NOT_FOUND;
    if writes && !refused {
        state.envoy_config_changed().await;
    }
    response
}

/// Constant-time check of `Authorization: Bearer <admin token>`. Both sides are hashed first so
/// the comparison does not depend on the lengths either.
async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.config().admin_token.as_deref() else {
        return ApiError::Unauthorized(
            "the admin API is disabled: no admin token is configured; start the control plane \
             with --admin-token (PODGATE_ADMIN_TOKEN, at least 32 characters) to enable it"
                .into(),
        )
        .into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok: bool = Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into();
    if given.is_empty() || !ok {
        return ApiError::Unauthorized(
            "admin API: send `Authorization: Bearer <admin token>` (PODGATE_ADMIN_TOKEN)".into(),
        )
        .into_response();
    }
    next.run(req).await
}

// ---------------------------------------------------------------------------------------------
// Validation

fn check_text(value: &str, field: &str, max: usize) -> ApiResult<()> {
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::bad(format!(
            "`{field}` must be at most {max} characters without control characters"
        )));
    }
    Ok(())
}

fn check_email(email: &str) -> ApiResult<()> {
    let parts: Vec<&str> = email.split('@').collect();
    let ok = email.len() <= 254
        && parts.len() == 2
        && !parts[0].is_empty()
        && parts[1].contains('.')
        && !parts[1].starts_with('.')
        && !parts[1].ends_with('.')
        && !email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ','));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "`email` {email:?} is not an address like name@example.dev"
        )))
    }
}

/// A server's address must be an IP: every pod is reached through one original-destination
/// cluster whose destination the filter sets, and that cluster does no DNS lookup.
fn check_address(address: &str) -> ApiResult<()> {
    if address.parse::<std::net::IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "`address` {address:?} must be an IP address without scheme or port, e.g. 10.0.0.5 or fd00::5 (pods are reached through one original-destination cluster, which does no DNS lookup; resolve the name first)"
        )))
    }
}

fn check_port(port: u16, field: &str) -> ApiResult<u16> {
    if port == 0 {
        return Err(ApiError::bad(format!("`{field}` must be 1-65535")));
    }
    Ok(port)
}

fn parse_enum<T: std::str::FromStr<Err = String>>(s: &str, field: &str) -> ApiResult<T> {
    s.parse::<T>()
        .map_err(|e| ApiError::bad(format!("`{field}`: {e}")))
}

/// Checks a new pod's slug against both host templates, explaining the 63-character limit.
fn check_slug(state: &AppState, slug: &str) -> ApiResult<()> {
    let config = state.config();
    for (template, which) in [
        (&config.host_template, "public"),
        (&config.upstream_host_template, "upstream"),
    ] {
        if let Err(e) = template.check_slug(slug) {
            return Err(match e {
                podgate_protocol::host::HostError::LabelTooLong => ApiError::bad(format!(
                    "pod slug {slug:?} is {} characters, too long for the {which} host template {template}: its host must fit in one 63-character DNS label for every port, so a slug may have at most {} characters; pick a shorter slug",
                    slug.len(),
                    template.max_slug_len()
                )),
                podgate_protocol::host::HostError::ReservedLabel => ApiError::bad(format!(
                    "pod slug {slug:?} would start a DNS label of the {which} host template {template} with '{}', the form of internationalized names; pick a slug without '--' as its third and fourth characters",
                    slug.get(..4).unwrap_or(slug)
                )),
                other => ApiError::bad(format!(
                    "pod slug {slug:?} is not valid: {other}; use lowercase letters, digits and inner '-', e.g. my-pod-1"
                )),
            });
        }
    }
    Ok(())
}

fn gen_id(prefix: &str) -> ApiResult<String> {
    let r = random_id()?;
    Ok(format!("{prefix}-{}", &r[..16]))
}

/// For a `PATCH` field that may be left out (kept) but not removed: `null` is refused as the wrong
/// type (the answer names the field), rather than read as "left out" and silently ignored.
fn not_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// `Some(None)` for an explicit JSON `null`, `None` when the field is absent.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn created<T: Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

fn deleted(found: bool, what: &str) -> ApiResult<Response> {
    if found {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("no such {what}")))
    }
}

/// `Ok` when the user exists; else a 400 naming the field that named a missing user.
async fn require_user(s: &AppState, user_id: &str, field: &str) -> ApiResult<()> {
    match s.db().get_user(user_id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::bad(format!(
            "`{field}`: no user {user_id:?}; create it with POST /v1/users first"
        ))),
    }
}
