//! `GET /v1/filter-config`: what Envoy's filter gets.

use axum::extract::State;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::{ApiResult, ErrorBody};
use crate::http::openapi::{TooMany, Unauthorized};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(filter_config))
}

/// `GET /v1/filter-config`: what the xDS server pushes to Envoy's filter right now, with each
/// service credential's value redacted.
#[utoipa::path(
    get,
    path = "/v1/filter-config",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The configuration Envoy's filter gets; service credentials' values redacted"),
        Unauthorized,
        TooMany,
        (status = 503, description = "A dependency is unavailable", body = ErrorBody),
    )
)]
async fn filter_config(
    State(s): State<AppState>,
) -> ApiResult<Json<podgate_protocol::config::FilterConfig>> {
    let ring = s.keys()?;
    let config =
        crate::filter_config::build_with_tokens(s.db(), s.config(), &ring, s.service_tokens())
            .await?;
    Ok(Json(crate::services::redact(config)))
}
