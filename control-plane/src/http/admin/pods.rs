//! Pods, their status and ports: `/v1/pods`, `/v1/pods/{slug}`, `/v1/pods/{slug}/status` and
//! `/v1/pods/{slug}/ports/{port}`.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    check_port, check_slug, check_text, created, deleted, not_null, nullable, parse_enum,
    require_user,
};
use crate::cuts::commit_cutting_lost_access;
use crate::http::error::{ApiError, ApiResult, JsonBody, PathArgs};
use crate::http::openapi::{Conflict, Malformed, NotFound, TooMany, Unauthorized};
use crate::store::HolderScope;
use crate::store::{now_unix, parse_pod_status, Pod, PodLimits, PodPort, PodStatus, Sharing};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_pods, create_pod))
        .routes(routes!(get_pod, update_pod, delete_pod))
        .routes(routes!(set_pod_status))
        .routes(routes!(list_ports))
        .routes(routes!(get_port, put_port, delete_port))
}

/// A pod as the admin API answers it: the pod, and its own limits at the edge when set.
#[derive(Debug, Serialize)]
struct PodView {
    #[serde(flatten)]
    pod: Pod,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<PodLimits>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewPod {
    slug: String,
    owner_id: String,
    team_id: Option<String>,
    server_id: Option<String>,
    #[serde(default = "default_status")]
    #[schema(default = "starting")]
    status: String,
    nginx_port: u16,
    /// The pod's own limits at the edge, winning over the global ones
    /// (`--edge-rate-per-pod`, `--edge-concurrent-per-pod`) in every Envoy from the next push.
    limits: Option<PodLimits>,
}

fn default_status() -> String {
    PodStatus::Starting.as_str().to_owned()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PodPatch {
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    owner_id: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    team_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    server_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    status: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(nullable = false)]
    nginx_port: Option<u16>,
    /// The pod's own limits at the edge: replaced when given, removed with `null`, kept when
    /// left out.
    #[serde(default, deserialize_with = "nullable")]
    limits: Option<Option<PodLimits>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortBody {
    sharing: String,
    #[serde(default)]
    label: String,
}

fn status_of(s: &str) -> ApiResult<PodStatus> {
    parse_pod_status(s).map_err(|e| ApiError::bad(format!("`status`: {e}")))
}

async fn check_pod_refs(s: &AppState, pod: &Pod) -> ApiResult<()> {
    check_refs(
        s,
        Some(&pod.owner_id),
        pod.team_id.as_ref(),
        pod.server_id.as_ref(),
    )
    .await
}

/// The owner, team and server named exist (those given).
async fn check_refs(
    s: &AppState,
    owner: Option<&String>,
    team: Option<&String>,
    server: Option<&String>,
) -> ApiResult<()> {
    if let Some(owner) = owner {
        require_user(s, owner, "owner_id").await?;
    }
    if let Some(team) = team {
        if s.db().get_team(team).await?.is_none() {
            return Err(ApiError::bad(format!(
                "`team_id`: no team {team:?}; create it with POST /v1/teams first, or leave it out"
            )));
        }
    }
    if let Some(server) = server {
        if s.db().get_server(server).await?.is_none() {
            return Err(ApiError::bad(format!(
                "`server_id`: no server {server:?}; create it with POST /v1/servers first, or leave it out"
            )));
        }
    }
    Ok(())
}

/// `limits` as given, checked; a 400 naming the field when a limit is 0.
fn check_limits(limits: Option<PodLimits>) -> ApiResult<Option<PodLimits>> {
    if let Some(limits) = &limits {
        limits.check().map_err(ApiError::bad)?;
    }
    Ok(limits.filter(|l| !l.is_empty()))
}

async fn view(s: &AppState, pod: Pod) -> ApiResult<PodView> {
    let limits = s.db().pod_limits(&pod.slug).await?;
    Ok(PodView { pod, limits })
}

async fn require_pod(s: &AppState, slug: &str) -> ApiResult<Pod> {
    s.db()
        .get_pod(slug)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no pod {slug:?}")))
}

#[utoipa::path(
    get,
    path = "/v1/pods",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every pod, each with its own `limits` when set"),
        Unauthorized,
        TooMany,
    )
)]
async fn list_pods(State(s): State<AppState>) -> ApiResult<Json<Vec<PodView>>> {
    let mut limits: std::collections::HashMap<String, PodLimits> =
        s.db().all_pod_limits().await?.into_iter().collect();
    let pods = s.db().list_pods().await?;
    Ok(Json(
        pods.into_iter()
            .map(|pod| {
                let limits = limits.remove(&pod.slug);
                PodView { pod, limits }
            })
            .collect(),
    ))
}

#[utoipa::path(
    post,
    path = "/v1/pods",
    tag = "admin",
    security(("admin_token" = [])),
    request_body = NewPod,
    responses(
        (status = 201, description = "Created: the pod, with its own `limits` when set"),
        Malformed,
        Unauthorized,
        NotFound,
        Conflict,
        TooMany,
    )
)]
async fn create_pod(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<NewPod>,
) -> ApiResult<Response> {
    check_slug(&s, &body.slug)?;
    let limits = check_limits(body.limits)?;
    let now = now_unix();
    let pod = Pod {
        slug: body.slug,
        owner_id: body.owner_id,
        team_id: body.team_id,
        server_id: body.server_id,
        status: status_of(&body.status)?,
        nginx_port: check_port(body.nginx_port, "nginx_port")?,
        created_at: now,
        updated_at: now,
    };
    check_pod_refs(&s, &pod).await?;
    if s.db().get_pod(&pod.slug).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "a pod {:?} already exists; pick another slug or update it with PATCH /v1/pods/{}",
            pod.slug, pod.slug
        )));
    }
    let mut change = s.db().change().await?;
    change.create_pod(&pod).await?;
    change.set_pod_limits(&pod.slug, limits.as_ref()).await?;
    // Capabilities still valid for an earlier pod of this slug must not open the new one to
    // people who may not reach it.
    commit_cutting_lost_access(
        s.db(),
        change,
        s.config().capability_lifetime,
        &[HolderScope::Pod(&pod.slug)],
    )
    .await?;
    Ok(created(PodView { pod, limits }))
}

#[utoipa::path(
    get,
    path = "/v1/pods/{slug}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("slug" = String, Path, description = "The pod"),
    ),
    responses(
        (status = 200, description = "The pod, with its own `limits` when set"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn get_pod(
    State(s): State<AppState>,
    PathArgs(slug): PathArgs<String>,
) -> ApiResult<Json<PodView>> {
    let pod = require_pod(&s, &slug).await?;
    Ok(Json(view(&s, pod).await?))
}

#[utoipa::path(
    patch,
    path = "/v1/pods/{slug}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("slug" = String, Path, description = "The pod"),
    ),
    request_body = PodPatch,
    responses(
        (status = 200, description = "Updated: the pod, with its own `limits` when set"),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn update_pod(
    State(s): State<AppState>,
    PathArgs(slug): PathArgs<String>,
    JsonBody(patch): JsonBody<PodPatch>,
) -> ApiResult<Json<PodView>> {
    let limits = patch.limits.map(check_limits).transpose()?;
    // The owner, team and server the patch names exist; checked before the change opens, since
    // these reads take connections of their own (the others the pod names were checked when
    // they were set).
    check_refs(
        &s,
        patch.owner_id.as_ref(),
        patch.team_id.as_ref().and_then(Option::as_ref),
        patch.server_id.as_ref().and_then(Option::as_ref),
    )
    .await?;
    // Read within the change that writes it back, so that a write racing this one (the
    // platform's status report) is not undone by it.
    let mut change = s.db().change().await?;
    let mut pod = change
        .pod_for_update(&slug)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no pod {slug:?}")))?;
    let who_before = (pod.owner_id.clone(), pod.team_id.clone());
    if let Some(owner) = patch.owner_id {
        pod.owner_id = owner;
    }
    if let Some(team) = patch.team_id {
        pod.team_id = team;
    }
    if let Some(server) = patch.server_id {
        pod.server_id = server;
    }
    if let Some(status) = patch.status {
        pod.status = status_of(&status)?;
    }
    if let Some(port) = patch.nginx_port {
        pod.nginx_port = check_port(port, "nginx_port")?;
    }
    pod.updated_at = now_unix();
    change.update_pod(&pod).await?;
    if let Some(limits) = limits {
        change.set_pod_limits(&pod.slug, limits.as_ref()).await?;
    }
    // Another owner or team: whoever lost the pod by it is cut off within one push.
    let scopes: &[HolderScope] = if who_before != (pod.owner_id.clone(), pod.team_id.clone()) {
        &[HolderScope::Pod(&pod.slug)]
    } else {
        &[]
    };
    commit_cutting_lost_access(s.db(), change, s.config().capability_lifetime, scopes).await?;
    Ok(Json(view(&s, pod).await?))
}

#[utoipa::path(
    put,
    path = "/v1/pods/{slug}/status",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("slug" = String, Path, description = "The pod"),
    ),
    responses(
        (status = 200, description = "Updated"),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn set_pod_status(
    State(s): State<AppState>,
    PathArgs(slug): PathArgs<String>,
    JsonBody(body): JsonBody<StatusBody>,
) -> ApiResult<Json<PodView>> {
    let status = status_of(&body.status)?;
    if !s.db().set_pod_status(&slug, status, now_unix()).await? {
        return Err(ApiError::not_found(format!("no pod {slug:?}")));
    }
    let pod = require_pod(&s, &slug).await?;
    Ok(Json(view(&s, pod).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/pods/{slug}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("slug" = String, Path, description = "The pod"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn delete_pod(
    State(s): State<AppState>,
    PathArgs(slug): PathArgs<String>,
) -> ApiResult<Response> {
    deleted(s.db().delete_pod(&slug).await?, "pod")
}

#[utoipa::path(
    get,
    path = "/v1/pods/{slug}/ports",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("slug" = String, Path, description = "The pod"),
    ),
    responses(
        (status = 200, description = "The pod's ports"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn list_ports(
    State(s): State<AppState>,
    PathArgs(slug): PathArgs<String>,
) -> ApiResult<Json<Vec<PodPort>>> {
    require_pod(&s, &slug).await?;
    Ok(Json(s.db().list_pod_ports(&slug).await?))
}

#[utoipa::path(
    get,
    path = "/v1/pods/{slug}/ports/{port}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("slug" = String, Path, description = "The pod"),
        ("port" = u16, Path, description = "The pod port"),
    ),
    responses(
        (status = 200, description = "The port"),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn get_port(
    State(s): State<AppState>,
    PathArgs((slug, port)): PathArgs<(String, u16)>,
) -> ApiResult<Json<PodPort>> {
    require_pod(&s, &slug).await?;
    let port = check_port(port, "port")?;
    s.db()
        .get_pod_port(&slug, port)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "pod {slug:?} has no sharing set for port {port} (it is shared at the default level, team)"
            ))
        })
}

#[utoipa::path(
    put,
    path = "/v1/pods/{slug}/ports/{port}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("slug" = String, Path, description = "The pod"),
        ("port" = u16, Path, description = "The pod port"),
    ),
    responses(
        (status = 200, description = "Set"),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn put_port(
    State(s): State<AppState>,
    PathArgs((slug, port)): PathArgs<(String, u16)>,
    JsonBody(body): JsonBody<PortBody>,
) -> ApiResult<Json<PodPort>> {
    require_pod(&s, &slug).await?;
    let port = check_port(port, "port")?;
    let sharing: Sharing = parse_enum(&body.sharing, "sharing")?;
    check_text(&body.label, "label", 100)?;
    let p = PodPort {
        pod_slug: slug,
        port,
        sharing,
        label: body.label,
    };
    let mut change = s.db().change().await?;
    change.put_pod_port(&p).await?;
    // A lower sharing level cuts off, within one push, those it no longer lets in.
    commit_cutting_lost_access(
        s.db(),
        change,
        s.config().capability_lifetime,
        &[HolderScope::Port(&p.pod_slug, p.port)],
    )
    .await?;
    Ok(Json(p))
}

#[utoipa::path(
    delete,
    path = "/v1/pods/{slug}/ports/{port}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("slug" = String, Path, description = "The pod"),
        ("port" = u16, Path, description = "The pod port"),
    ),
    responses(
        (status = 204, description = "Removed"),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn delete_port(
    State(s): State<AppState>,
    PathArgs((slug, port)): PathArgs<(String, u16)>,
) -> ApiResult<Response> {
    require_pod(&s, &slug).await?;
    let port = check_port(port, "port")?;
    let mut change = s.db().change().await?;
    let gone = change.delete_pod_port(&slug, port).await?;
    // Back to the default level, which may be lower.
    commit_cutting_lost_access(
        s.db(),
        change,
        s.config().capability_lifetime,
        &[HolderScope::Port(&slug, port)],
    )
    .await?;
    deleted(gone, "port setting")
}
