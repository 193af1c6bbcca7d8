//! Users: `/v1/users` and `/v1/users/{id}`.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{check_email, check_text, created, deleted, gen_id, not_null, nullable};
use crate::http::error::{ApiError, ApiResult, JsonBody, PathArgs};
use crate::http::openapi::{Conflict, Malformed, NotFound, TooMany, Unauthorized};
use crate::ids::check_id;
use crate::store::{now_unix, User};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    id: Option<String>,
    email: Option<String>,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    #[serde(default, deserialize_with = "nullable")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    name: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/users",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every user"),
        Unauthorized,
        TooMany,
    )
)]
async fn list_users(State(s): State<AppState>) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(s.db().list_users().await?))
}

#[utoipa::path(
    post,
    path = "/v1/users",
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
async fn create_user(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<NewUser>,
) -> ApiResult<Response> {
    let id = match body.id {
        Some(id) => id,
        None => gen_id("user")?,
    };
    check_id(&id, "user")?;
    if let Some(e) = &body.email {
        check_email(e)?;
        email_free(&s, e, None).await?;
    }
    check_text(&body.name, "name", 200)?;
    if s.db().get_user(&id).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "a user {id:?} already exists; pick another id, or update it with PATCH /v1/users/{id}"
        )));
    }
    let user = User {
        id,
        email: body.email,
        name: body.name,
        created_at: now_unix(),
    };
    s.db().create_user(&user).await?;
    Ok(created(user))
}

/// A 409 naming the user who has `email` already, unless it is `except` (the user being
/// changed).
async fn email_free(s: &AppState, email: &str, except: Option<&str>) -> ApiResult<()> {
    match s.db().get_user_by_email(email).await? {
        Some(other) if Some(other.id.as_str()) != except => Err(ApiError::conflict(format!(
            "the email {email:?} belongs to user {:?} already; pick another, or change or delete \
             that user first",
            other.id
        ))),
        _ => Ok(()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("id" = String, Path, description = "The id"),
    ),
    responses(
        (status = 200, description = "The user"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn get_user(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> ApiResult<Json<User>> {
    s.db()
        .get_user(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no user {id:?}")))
}

#[utoipa::path(
    patch,
    path = "/v1/users/{id}",
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
        Conflict,
        TooMany,
    )
)]
async fn update_user(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
    JsonBody(patch): JsonBody<UserPatch>,
) -> ApiResult<Json<User>> {
    if let Some(Some(e)) = &patch.email {
        check_email(e)?;
        email_free(&s, e, Some(&id)).await?;
    }
    if let Some(name) = &patch.name {
        check_text(name, "name", 200)?;
    }
    // Read and written back in one change: a PATCH racing another (or a deletion) neither
    // undoes its fields nor brings the user back.
    let mut change = s.db().change().await?;
    let mut user = change
        .user_for_update(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {id:?}")))?;
    if let Some(email) = patch.email {
        user.email = email;
    }
    if let Some(name) = patch.name {
        user.name = name;
    }
    change.update_user(&user).await?;
    change.commit().await?;
    Ok(Json(user))
}

#[utoipa::path(
    delete,
    path = "/v1/users/{id}",
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
async fn delete_user(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> ApiResult<Response> {
    if s.db().get_user(&id).await?.is_none() {
        return deleted(false, "user");
    }
    let (pods, services) = s.db().owned_by(&id, 10).await?;
    if !pods.is_empty() || !services.is_empty() {
        let owned: Vec<String> = [("pods", pods), ("services", services)]
            .into_iter()
            .filter(|(_, names)| !names.is_empty())
            .map(|(what, names)| format!("{what} {names:?}"))
            .collect();
        return Err(ApiError::conflict(format!(
            "user {id:?} still owns {} (at most 10 of each shown); delete or reassign each \
             (PATCH /v1/pods/{{slug}} or PATCH /v1/services/{{name}} with \
             {{\"owner_id\": \"...\"}}), then delete the user",
            owned.join(" and ")
        )));
    }
    // Their capabilities stop working within one push, wherever they are: the user goes with
    // the cut, or neither does.
    let mut change = s.db().change().await?;
    let gone = change.delete_user(&id).await?;
    crate::cuts::commit_cutting_user(s.db(), change, s.config().capability_lifetime, &id).await?;
    deleted(gone, "user")
}
