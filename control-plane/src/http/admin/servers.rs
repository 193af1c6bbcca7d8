//! Servers, the machines pods run on: `/v1/servers` and `/v1/servers/{id}`.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{check_address, check_text, created, deleted, gen_id, not_null};
use crate::http::error::{ApiError, ApiResult, JsonBody, PathArgs};
use crate::http::openapi::{Conflict, Malformed, NotFound, TooMany, Unauthorized};
use crate::ids::check_id;
use crate::store::{now_unix, Server};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_servers, create_server))
        .routes(routes!(get_server, update_server, delete_server))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewServer {
    id: Option<String>,
    #[serde(default)]
    name: String,
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerPatch {
    #[serde(default, deserialize_with = "not_null")]
    name: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    address: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/servers",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every server"),
        Unauthorized,
        TooMany,
    )
)]
async fn list_servers(State(s): State<AppState>) -> ApiResult<Json<Vec<Server>>> {
    Ok(Json(s.db().list_servers().await?))
}

#[utoipa::path(
    post,
    path = "/v1/servers",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created"),
        Malformed,
        Unauthorized,
        Conflict,
        TooMany,
    )
)]
async fn create_server(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<NewServer>,
) -> ApiResult<Response> {
    let id = match body.id {
        Some(id) => id,
        None => gen_id("server")?,
    };
    check_id(&id, "server")?;
    check_text(&body.name, "name", 200)?;
    check_address(&body.address)?;
    let server = Server {
        id,
        name: body.name,
        address: body.address,
        created_at: now_unix(),
    };
    s.db().create_server(&server).await?;
    Ok(created(server))
}

#[utoipa::path(
    get,
    path = "/v1/servers/{id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("id" = String, Path, description = "The id"),
    ),
    responses(
        (status = 200, description = "The server"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn get_server(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> ApiResult<Json<Server>> {
    s.db()
        .get_server(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no server {id:?}")))
}

#[utoipa::path(
    patch,
    path = "/v1/servers/{id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("id" = String, Path, description = "The id"),
    ),
    responses(
        (status = 200, description = "Updated"),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn update_server(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
    JsonBody(patch): JsonBody<ServerPatch>,
) -> ApiResult<Json<Server>> {
    if let Some(name) = &patch.name {
        check_text(name, "name", 200)?;
    }
    if let Some(address) = &patch.address {
        check_address(address)?;
    }
    // Read and written back in one change, as a user's PATCH is.
    let mut change = s.db().change().await?;
    let mut server = change
        .server_for_update(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no server {id:?}")))?;
    if let Some(name) = patch.name {
        server.name = name;
    }
    if let Some(address) = patch.address {
        server.address = address;
    }
    change.update_server(&server).await?;
    change.commit().await?;
    Ok(Json(server))
}

#[utoipa::path(
    delete,
    path = "/v1/servers/{id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("id" = String, Path, description = "The id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        Unauthorized,
        NotFound,
        Conflict,
        TooMany,
    )
)]
async fn delete_server(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> ApiResult<Response> {
    let pods = s.db().pods_on_server(&id, 10).await?;
    if !pods.is_empty() {
        return Err(ApiError::conflict(format!(
            "server {id:?} still runs pods {pods:?} (at most 10 shown); delete each, or move it \
             with PATCH /v1/pods/{{slug}} {{\"server_id\": \"...\"}}, then delete the server"
        )));
    }
    deleted(s.db().delete_server(&id).await?, "server")
}
