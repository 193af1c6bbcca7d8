//! `GET /openapi.json`: the OpenAPI 3.1 description of the HTTP API. Each module's `router()`
//! registers its handlers with `utoipa_axum::routes!`, which reads the path and methods from the
//! handler's `#[utoipa::path]`, so a route and its description come from one place and cannot
//! drift apart; `crate::api` gathers them and splits the result into the router and this
//! document, which therefore lists exactly the routes this server answers (the dev login only
//! in dev mode, `/metrics` only when it is not on its own listener).

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::ErrorBody;
use crate::AppState;

/// The error answers most operations share, named once so each `#[utoipa::path]` lists them
/// by type: `responses((status = 200, ...), Malformed, Unauthorized, NotFound, TooMany)`. They
/// only describe answers (`ApiError` builds them), so their field is never read.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
#[response(status = 400, description = "The request is malformed")]
pub struct Malformed(ErrorBody);

#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
#[response(status = 401, description = "Not signed in, or credentials refused")]
pub struct Unauthorized(ErrorBody);

#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
#[response(status = 404, description = "Not found, or not yours to see")]
pub struct NotFound(ErrorBody);

#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
#[response(
    status = 409,
    description = "Conflict: already exists, or still referenced"
)]
pub struct Conflict(ErrorBody);

#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
#[response(status = 429, description = "Too many requests from this client")]
pub struct TooMany(ErrorBody);

/// The document's fixed part; the paths are added by the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "podgate control plane",
        description = "Identity, authorization, minting and the admin API of podgate. Every error is JSON `{\"error\": \"...\"}`; `control-plane/README.md` describes each endpoint.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&AdminToken),
    tags(
        (name = "health", description = "Liveness, readiness, keys, metrics and this document"),
        (name = "flow", description = "The login flow of a pod host: auth endpoint and callback"),
        (name = "sign-in", description = "Signing in with an OpenID provider"),
        (name = "session", description = "The control plane's session"),
        (name = "capabilities", description = "Capabilities for scripts; renewal, API token exchange and pod wake-up for Envoy's filter"),
        (name = "api-tokens", description = "Revocable API tokens, the CLI and its setup"),
        (name = "dev", description = "The dev login (dev mode only)"),
        (name = "admin", description = "The admin API, behind the admin token"),
    )
)]
pub struct ApiDoc;

/// The admin API's credential: `Authorization: Bearer <admin token>` (`--admin-token`).
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document's own route.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).routes(routes!(openapi_json))
}

/// The document as served, shared by every request.
#[derive(Clone)]
pub struct Document(pub Arc<String>);

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API")),
)]
async fn openapi_json(Extension(doc): Extension<Document>) -> Response {
    let mut resp = doc.0.as_str().to_owned().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
