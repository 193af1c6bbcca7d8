//! `GET /metrics` (Prometheus), and the layer that counts refused requests by route and reason.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::metrics::CONTENT_TYPE;
use crate::AppState;

/// The metrics route: on the HTTP API's router, or alone on `--metrics-listen`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Every metric in the OpenMetrics text format, which Prometheus scrapes.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "Every metric, OpenMetrics text"),
    )
)]
async fn metrics(State(state): State<AppState>) -> Response {
    let mut resp = state.metrics().encode().into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}

/// Counts every 4xx answer under the route template that matched (none for an unknown path).
pub async fn count_refusals(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = next.run(req).await;
    if resp.status().is_client_error() {
        state.metrics().refusal(
            route.as_ref().map(MatchedPath::as_str),
            resp.status().as_u16(),
        );
    }
    resp
}
