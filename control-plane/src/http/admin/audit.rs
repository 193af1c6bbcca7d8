//! The mint audit trail: `GET /v1/audit`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::http::error::{ApiError, ApiResult, QueryArgs};
use crate::store::AuditEntry;
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/v1/audit", get(list_audit))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    user: Option<String>,
    limit: Option<i64>,
}

async fn list_audit(
    State(s): State<AppState>,
    QueryArgs(q): QueryArgs<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("`limit` must be 1-1000"));
    }
    Ok(Json(s.db().list_audit(q.user.as_deref(), limit).await?))
}
