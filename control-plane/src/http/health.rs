//! Liveness, readiness and the public key set.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::ErrorBody;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(jwks))
        .routes(routes!(assertion_jwks))
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses(
        (status = 200, description = "The process is up"),
    )
)]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers and signing keys are loaded. Services that have a credential but none
/// usable now (an OAuth credential for which this control plane holds no valid token, without a
/// fallback; a sealed value that does not open) are listed under `services_without_credential`,
/// the same list the filter gets and answers `502` for; they do not make it unready, since
/// another control plane would not fare better with the same token endpoint.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "The database answers and signing keys are loaded; `services_without_credential` lists the services that have no usable credential now (Envoy answers 502 for them)"),
        (status = 503, description = "A dependency is unavailable: `error` says which, beside `status`, `database`, `keys` and `services_without_credential`", body = ErrorBody),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let database = match state.db().ping().await {
        Ok(()) => "ok".to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database not reachable");
            "unreachable".to_owned()
        }
    };
    let keys = if state.keys_loaded() { "ok" } else { "missing" };
    let kek = &state.config().key_encryption;
    let without_credential: Vec<String> = match state.db().list_services().await {
        Ok(rows) => rows
            .iter()
            .filter(|r| crate::services::without_credential(kek, state.service_tokens(), r))
            .map(|r| r.name.clone())
            .collect(),
        Err(_) => Vec::new(),
    };
    let ready = database == "ok" && keys == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "database": database,
        "keys": keys,
        "services_without_credential": without_credential,
    });
    if !ready {
        // What every error answer has: what is wrong and what to do about it.
        let why = match (database == "ok", keys == "ok") {
            (false, false) => "the database does not answer and no signing keys are loaded",
            (false, true) => "the database does not answer",
            _ => "no signing keys are loaded",
        };
        body["error"] = json!(format!(
            "not ready: {why}; check the database (PODGATE_DATABASE_URL) and this control plane's log"
        ));
    }
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Where pods fetch the keys that verify identity assertions.
pub const ASSERTION_JWKS_PATH: &str = "/.well-known/podgate-assertion-jwks.json";

/// `GET /.well-known/podgate-assertion-jwks.json`: the public identity assertion keys (those of
/// the current and overlapping capability keys), for pods to verify `x-podgate-assertion`.
#[utoipa::path(
    get,
    path = ASSERTION_JWKS_PATH,
    tag = "health",
    responses(
        (status = 200, description = "The public identity assertion keys"),
        (status = 503, description = "A dependency is unavailable", body = ErrorBody),
    )
)]
async fn assertion_jwks(
    State(state): State<AppState>,
) -> Result<Response, crate::http::error::ApiError> {
    let ring = state.keys()?;
    let mut resp = Json(&ring.assertion_jwks).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(resp)
}

/// `GET /.well-known/jwks.json`: the public capability keys (current and overlapping).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "health",
    responses(
        (status = 200, description = "The public capability keys"),
        (status = 503, description = "A dependency is unavailable", body = ErrorBody),
    )
)]
async fn jwks(State(state): State<AppState>) -> Result<Response, crate::http::error::ApiError> {
    let ring = state.keys()?;
    let mut resp = Json(&ring.public_jwks).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(resp)
}
