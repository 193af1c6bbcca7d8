//! The mint audit trail: `GET /v1/audit`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::{ApiError, ApiResult, QueryArgs};
use crate::http::openapi::{Malformed, TooMany, Unauthorized};
use crate::store::AuditEntry;
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    user: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The mint audit trail, newest first: who got which kind of token for which pod or service port (and resource), how and when; never a token"),
        Malformed,
        Unauthorized,
        TooMany,
    )
)]
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
