//! Teams and their members: `/v1/teams`, `/v1/teams/{id}` and `/v1/teams/{id}/members`.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{check_text, created, deleted, gen_id, parse_enum, require_user};
use crate::cuts::commit_cutting_lost_access;
use crate::http::error::{ApiError, ApiResult, JsonBody, PathArgs};
use crate::http::openapi::{Conflict, Malformed, NotFound, TooMany, Unauthorized};
use crate::ids::check_id;
use crate::store::HolderScope;
use crate::store::{now_unix, Member, Role, Team};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_teams, create_team))
        .routes(routes!(get_team, update_team, delete_team))
        .routes(routes!(list_members, add_member))
        .routes(routes!(get_member, set_member_role, delete_member))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTeam {
    id: Option<String>,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamPatch {
    name: String,
}

#[utoipa::path(
    get,
    path = "/v1/teams",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every team"),
        Unauthorized,
        TooMany,
    )
)]
async fn list_teams(State(s): State<AppState>) -> ApiResult<Json<Vec<Team>>> {
    Ok(Json(s.db().list_teams().await?))
}

#[utoipa::path(
    post,
    path = "/v1/teams",
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
async fn create_team(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<NewTeam>,
) -> ApiResult<Response> {
    let id = match body.id {
        Some(id) => id,
        None => gen_id("team")?,
    };
    check_id(&id, "team")?;
    check_text(&body.name, "name", 200)?;
    let team = Team {
        id,
        name: body.name,
        created_at: now_unix(),
    };
    s.db().create_team(&team).await?;
    Ok(created(team))
}

#[utoipa::path(
    get,
    path = "/v1/teams/{id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("id" = String, Path, description = "The id"),
    ),
    responses(
        (status = 200, description = "The team"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn get_team(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> ApiResult<Json<Team>> {
    s.db()
        .get_team(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no team {id:?}")))
}

#[utoipa::path(
    patch,
    path = "/v1/teams/{id}",
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
async fn update_team(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
    JsonBody(patch): JsonBody<TeamPatch>,
) -> ApiResult<Json<Team>> {
    check_text(&patch.name, "name", 200)?;
    if !s.db().update_team(&id, &patch.name).await? {
        return Err(ApiError::not_found(format!("no team {id:?}")));
    }
    get_team(State(s), PathArgs(id)).await
}

#[utoipa::path(
    delete,
    path = "/v1/teams/{id}",
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
async fn delete_team(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> ApiResult<Response> {
    let mut change = s.db().change().await?;
    let members = change.list_members(&id).await?;
    let gone = change.delete_team(&id).await?;
    // Its members lose the team's pods (unless another rule still lets them in).
    let scopes: Vec<HolderScope> = members
        .iter()
        .map(|m| HolderScope::User(&m.user_id))
        .collect();
    commit_cutting_lost_access(s.db(), change, s.config().capability_lifetime, &scopes).await?;
    deleted(gone, "team")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMember {
    user_id: String,
    #[serde(default = "default_role")]
    role: String,
}

fn default_role() -> String {
    Role::Member.as_str().to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: String,
}

async fn require_team(s: &AppState, team_id: &str) -> ApiResult<()> {
    match s.db().get_team(team_id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!(
            "no team {team_id:?}; create it with POST /v1/teams"
        ))),
    }
}
#[utoipa::path(
    get,
    path = "/v1/teams/{id}/members",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("id" = String, Path, description = "The id"),
    ),
    responses(
        (status = 200, description = "The team's members"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn list_members(
    State(s): State<AppState>,
    PathArgs(team_id): PathArgs<String>,
) -> ApiResult<Json<Vec<Member>>> {
    require_team(&s, &team_id).await?;
    Ok(Json(s.db().list_members(&team_id).await?))
}

#[utoipa::path(
    post,
    path = "/v1/teams/{id}/members",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("id" = String, Path, description = "The id"),
    ),
    responses(
        (status = 201, description = "Added"),
        Malformed,
        Unauthorized,
        NotFound,
        Conflict,
        TooMany,
    )
)]
async fn add_member(
    State(s): State<AppState>,
    PathArgs(team_id): PathArgs<String>,
    JsonBody(body): JsonBody<NewMember>,
) -> ApiResult<Response> {
    require_team(&s, &team_id).await?;
    require_user(&s, &body.user_id, "user_id").await?;
    let role: Role = parse_enum(&body.role, "role")?;
    let member = Member {
        team_id,
        user_id: body.user_id,
        role,
        created_at: now_unix(),
    };
    if s.db()
        .get_member(&member.team_id, &member.user_id)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict(format!(
            "{:?} is already a member of {:?}; change the role with PUT /v1/teams/{}/members/{}",
            member.user_id, member.team_id, member.team_id, member.user_id
        )));
    }
    s.db().put_member(&member).await?;
    Ok(created(member))
}

#[utoipa::path(
    get,
    path = "/v1/teams/{id}/members/{user_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("id" = String, Path, description = "The id"),
        ("user_id" = String, Path, description = "The member's user id"),
    ),
    responses(
        (status = 200, description = "The member"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn get_member(
    State(s): State<AppState>,
    PathArgs((team_id, user_id)): PathArgs<(String, String)>,
) -> ApiResult<Json<Member>> {
    s.db()
        .get_member(&team_id, &user_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("{user_id:?} is not a member of {team_id:?}")))
}

#[utoipa::path(
    put,
    path = "/v1/teams/{id}/members/{user_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("id" = String, Path, description = "The id"),
        ("user_id" = String, Path, description = "The member's user id"),
    ),
    responses(
        (status = 200, description = "Updated"),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn set_member_role(
    State(s): State<AppState>,
    PathArgs((team_id, user_id)): PathArgs<(String, String)>,
    JsonBody(body): JsonBody<RoleBody>,
) -> ApiResult<Json<Member>> {
    require_team(&s, &team_id).await?;
    // The user is named by the path, not by a field: a missing one is not found.
    if s.db().get_user(&user_id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "no user {user_id:?}; create it with POST /v1/users first, then add it to the team"
        )));
    }
    let role: Role = parse_enum(&body.role, "role")?;
    let created_at = s
        .db()
        .get_member(&team_id, &user_id)
        .await?
        .map_or_else(now_unix, |m| m.created_at);
    let member = Member {
        team_id,
        user_id,
        role,
        created_at,
    };
    s.db().put_member(&member).await?;
    Ok(Json(member))
}

#[utoipa::path(
    delete,
    path = "/v1/teams/{id}/members/{user_id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("id" = String, Path, description = "The id"),
        ("user_id" = String, Path, description = "The member's user id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn delete_member(
    State(s): State<AppState>,
    PathArgs((team_id, user_id)): PathArgs<(String, String)>,
) -> ApiResult<Response> {
    let mut change = s.db().change().await?;
    let gone = change.delete_member(&team_id, &user_id).await?;
    // The team's pods are cut off for them within one push, where no other rule lets them in.
    commit_cutting_lost_access(
        s.db(),
        change,
        s.config().capability_lifetime,
        &[HolderScope::User(&user_id)],
    )
    .await?;
    deleted(gone, "member")
}
