//! Liveness, readiness and the public key set.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
        .route(ASSERTION_JWKS_PATH, get(assertion_jwks))
}

/// The process is up.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers and signing keys are loaded.
async fn readyz(State(state): State<AppState>) -> Response {
    let database = match state.db().ping().await {
        Ok(()) => "ok".to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database not reachable");
            "unreachable".to_owned()
        }
    };
    let keys = if state.keys_loaded() { "ok" } else { "missing" };
    let ready = database == "ok" && keys == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = (
        status,
        Json(json!({ "status": if ready { "ready" } else { "not ready" }, "database": database, "keys": keys })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Where pods fetch the keys that verify identity assertions.
pub const ASSERTION_JWKS_PATH: &str = "/.well-known/podgate-assertion-jwks.json";

/// `GET /.well-known/podgate-assertion-jwks.json`: the public identity assertion keys (those of
/// the current and overlapping capability keys), for pods to verify `x-podgate-assertion`.
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
async fn jwks(State(state): State<AppState>) -> Result<Response, crate::http::error::ApiError> {
    let ring = state.keys()?;
    let mut resp = Json(&ring.public_jwks).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(resp)
}
