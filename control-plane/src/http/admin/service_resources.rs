//! The resources of a service reached per resource (`resource_path`, e.g. `/sessions/{id}`):
//! `/v1/services/{name}/resources[/{id}]`, each resource's owner. Changing or forgetting an owner
//! cuts the former owner's capabilities for that resource when the rule no longer lets them use
//! it; their other resources of the service stay reachable.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use podgate_protocol::resource;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::services::require_service;
use super::{deleted, require_user};
use crate::cuts::{commit_cutting_resource, ResourceLoss};
use crate::http::error::{ApiError, ApiResult, JsonBody, PathArgs};
use crate::http::openapi::{Malformed, NotFound, TooMany, Unauthorized};
use crate::store::{now_unix, Change, ServiceResourceRow};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_resources))
        .routes(routes!(put_resource, get_resource, delete_resource))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceOwner {
    owner: String,
}

/// The `resource_path` of service `name` if it is reached per resource; a 400 naming the field
/// otherwise.
async fn require_resource_service(s: &AppState, name: &str) -> ApiResult<String> {
    let row = require_service(s, name).await?;
    row.resource_path.ok_or_else(|| {
        ApiError::bad(format!(
            "service {name:?} has no `resource_path`, so it has no resources; give it one with PATCH /v1/services/{name}, e.g. {{\"resource_path\": \"/sessions/{{id}}\"}}"
        ))
    })
}

fn check_resource_id(id: &str) -> ApiResult<()> {
    if resource::valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "resource id {id:?} cannot be used: use 1 to {} letters, digits, '-', '.', '_' or '~' (not '.' or '..')",
            resource::MAX_ID_LEN
        )))
    }
}

/// Commits `change`, which gave resource `id` of `service` (its `resource_path` is `pattern`)
/// to `now_owner` or forgot it, with the cut of the capabilities `former` holds for it when
/// the rule no longer lets them use it.
async fn commit_cutting_former_owner(
    s: &AppState,
    mut change: Change,
    (service, pattern): (&str, &str),
    id: &str,
    former: Option<String>,
    now_owner: Option<&str>,
) -> ApiResult<()> {
    let mut lost = None;
    if let Some(former) = former {
        let user = change.get_user(&former).await?;
        let facts = crate::authz::ResourceFacts {
            service,
            resource_id: id,
            owner_id: now_owner,
        };
        if !crate::authz::may_use_resource(&facts, user.as_ref()) {
            lost = Some(ResourceLoss {
                user_id: former,
                service: service.to_owned(),
                resource: resource::resource_of_id(pattern, id),
            });
        }
    }
    commit_cutting_resource(
        s.db(),
        change,
        s.config().capability_lifetime,
        lost.as_ref(),
    )
    .await?;
    Ok(())
}

#[utoipa::path(
    get,
    path = "/v1/services/{name}/resources",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The service")),
    responses(
        (status = 200, description = "Every resource of the service with its owner, by id", body = Vec<ServiceResourceRow>),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn list_resources(
    State(s): State<AppState>,
    PathArgs(name): PathArgs<String>,
) -> ApiResult<Json<Vec<ServiceResourceRow>>> {
    require_resource_service(&s, &name).await?;
    Ok(Json(s.db().list_service_resources(&name).await?))
}

#[utoipa::path(
    put,
    path = "/v1/services/{name}/resources/{id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("name" = String, Path, description = "The service"),
        ("id" = String, Path, description = "The resource id: `abc` for `/sessions/abc`"),
    ),
    request_body(content = serde_json::Value, description = "`{owner}`: the user id that owns the resource; only they get capabilities for it"),
    responses(
        (status = 200, description = "Recorded; a former owner's capabilities for this resource are cut off at the next push", body = ServiceResourceRow),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn put_resource(
    State(s): State<AppState>,
    PathArgs((name, id)): PathArgs<(String, String)>,
    JsonBody(body): JsonBody<ResourceOwner>,
) -> ApiResult<Json<ServiceResourceRow>> {
    let pattern = require_resource_service(&s, &name).await?;
    check_resource_id(&id)?;
    require_user(&s, &body.owner, "owner").await?;
    let now = now_unix();
    let mut change = s.db().change().await?;
    let former = change
        .put_service_resource(&name, &id, &body.owner, now)
        .await?
        .filter(|f| *f != body.owner);
    let scope = (name.as_str(), pattern.as_str());
    commit_cutting_former_owner(&s, change, scope, &id, former, Some(&body.owner)).await?;
    tracing::info!(service = %name, resource = %id, owner = %body.owner, "resource owner recorded");
    let row = s
        .db()
        .get_service_resource(&name, &id)
        .await?
        .ok_or_else(|| ApiError::internal("a resource just recorded is gone"))?;
    Ok(Json(row))
}

#[utoipa::path(
    get,
    path = "/v1/services/{name}/resources/{id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("name" = String, Path, description = "The service"),
        ("id" = String, Path, description = "The resource id"),
    ),
    responses(
        (status = 200, description = "The resource and its owner", body = ServiceResourceRow),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn get_resource(
    State(s): State<AppState>,
    PathArgs((name, id)): PathArgs<(String, String)>,
) -> ApiResult<Json<ServiceResourceRow>> {
    require_resource_service(&s, &name).await?;
    check_resource_id(&id)?;
    s.db()
        .get_service_resource(&name, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("service {name:?} has no resource {id:?}")))
}

#[utoipa::path(
    delete,
    path = "/v1/services/{name}/resources/{id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("name" = String, Path, description = "The service"),
        ("id" = String, Path, description = "The resource id"),
    ),
    responses(
        (status = 204, description = "Forgotten: nobody may use it; its owner's capabilities for it are cut off at the next push"),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn delete_resource(
    State(s): State<AppState>,
    PathArgs((name, id)): PathArgs<(String, String)>,
) -> ApiResult<Response> {
    let pattern = require_resource_service(&s, &name).await?;
    check_resource_id(&id)?;
    let mut change = s.db().change().await?;
    let former = change.delete_service_resource(&name, &id).await?;
    let found = former.is_some();
    commit_cutting_former_owner(&s, change, (&name, &pattern), &id, former, None).await?;
    deleted(found, "resource")
}
