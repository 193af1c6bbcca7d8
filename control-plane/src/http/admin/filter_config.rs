//! `GET /v1/filter-config`: what Envoy's filter gets.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::http::error::ApiResult;
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/v1/filter-config", get(filter_config))
}

/// `GET /v1/filter-config`: what the xDS server pushes to Envoy's filter right now.
async fn filter_config(
    State(s): State<AppState>,
) -> ApiResult<Json<podgate_protocol::config::FilterConfig>> {
    let ring = s.keys()?;
    Ok(Json(
        crate::filter_config::build(s.db(), s.config(), &ring).await?,
    ))
}
