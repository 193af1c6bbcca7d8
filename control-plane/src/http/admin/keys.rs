//! Signing keys: `GET /v1/keys` and `POST /v1/keys/rotate`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::openapi::{TooMany, Unauthorized};
use crate::store::{now_unix, KeyKind};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys))
        .routes(routes!(rotate_keys))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyInfo {
    pub kid: String,
    pub kind: KeyKind,
    pub alg: String,
    pub created_at: i64,
    /// `active` (signs), or `verifying` (retired, still verifies until `verify_until`).
    pub state: String,
    pub verify_until: Option<i64>,
    /// The key-encryption key the private key is stored under; `null`: stored in plaintext.
    pub kek_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The signing keys' states"),
        Unauthorized,
        TooMany,
    )
)]
async fn list_keys(State(s): State<AppState>) -> ApiResult<Json<Vec<KeyInfo>>> {
    let keys = s.db().live_keys(now_unix()).await?;
    Ok(Json(
        keys.into_iter()
            .map(|k| KeyInfo {
                state: if k.retired_at.is_none() {
                    "active".into()
                } else {
                    "verifying".into()
                },
                kek_id: k.material.kek_id().map(str::to_owned),
                kid: k.kid,
                kind: k.kind,
                alg: k.alg,
                created_at: k.created_at,
                verify_until: k.verify_until,
            })
            .collect(),
    ))
}

#[utoipa::path(
    post,
    path = "/v1/keys/rotate",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The new active keys"),
        Unauthorized,
        TooMany,
        (status = 500, description = "Generating the keys failed (nothing was stored), or they were stored but do not load (the server log says which)", body = ErrorBody),
        (status = 503, description = "The database did not answer (nothing was stored), or the keys are stored but not read back yet (the message says which)", body = ErrorBody),
    )
)]
async fn rotate_keys(State(s): State<AppState>) -> ApiResult<Response> {
    let config = s.config();
    let kids = crate::keys::rotate(
        s.db(),
        config.signing_alg,
        now_unix(),
        config.rotation_overlap(),
        &config.key_encryption,
    )
    .await?;
    // Stored, whatever happens next: this control plane reads them now, or at its next resync
    // (within 30 s) if that fails, and the answer says so rather than a bare error.
    if let Err(e) = s.reload_keys().await {
        // Either answer is logged with its cause (`ApiError`).
        return Err(match e {
            crate::keys::KeyringError::Db(_) => ApiError::Unavailable(format!(
                "the new keys {kids:?} are stored, but this control plane could not read them \
                 back yet (the database did not answer); it reads them at its next resync, \
                 within 30 s: do not rotate again, GET /v1/keys shows them"
            )),
            _ => ApiError::internal(format!(
                "the new keys {kids:?} are stored but do not load: {e}; check the \
                 key-encryption key this control plane runs with"
            )),
        });
    }
    tracing::info!(?kids, "signing keys rotated");
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({
            "active": kids,
            "overlap_secs": config.rotation_overlap(),
            // Publish before sign: the new capability key signs once every Envoy has it.
            "capability_signs_within_secs": if config.xds.is_some() { config.key_publish_delay } else { 0 },
        })),
    )
        .into_response())
}
