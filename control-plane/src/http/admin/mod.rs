//! The admin API under `/v1/`, behind the admin bearer token: users, teams and members,
//! servers, pods, their ports and status, keys, and the mint audit trail.

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ApiResult, JsonBody, PathArgs, QueryArgs};
use crate::http::limits::{self, Endpoint};
use crate::ids::check_id;
use crate::keys::random_id;
use crate::store::{
    now_unix, parse_pod_status, AuditEntry, KeyKind, Member, Pod, PodPort, PodStatus, Role, Server,
    Sharing, Team, User,
};
use crate::AppState;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/users", get(list_users).post(create_user))
        .route(
            "/v1/users/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/v1/teams", get(list_teams).post(create_team))
        .route(
            "/v1/teams/{id}",
            get(get_team).patch(update_team).delete(delete_team),
        )
        .route("/v1/teams/{id}/members", get(list_members).post(add_member))
        .route(
            "/v1/teams/{id}/members/{user_id}",
            get(get_member).put(set_member_role).delete(delete_member),
        )
        .route("/v1/servers", get(list_servers).post(create_server))
        .route(
            "/v1/servers/{id}",
            get(get_server).patch(update_server).delete(delete_server),
        )
        .route("/v1/pods", get(list_pods).post(create_pod))
        .route(
            "/v1/pods/{slug}",
            get(get_pod).patch(update_pod).delete(delete_pod),
        )
        .route("/v1/pods/{slug}/status", put(set_pod_status))
        .route("/v1/pods/{slug}/ports", get(list_ports))
        .route(
            "/v1/pods/{slug}/ports/{port}",
            get(get_port).put(put_port).delete(delete_port),
        )
        .route("/v1/keys", get(list_keys))
        .route("/v1/keys/rotate", post(rotate_keys))
        .route("/v1/audit", get(list_audit))
        .route("/v1/filter-config", get(filter_config))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            push_after_write,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        // Outside the token check, so its 401s drain the client's bucket (`limits.rs`).
        .route_layer(middleware::from_fn_with_state(
            (state, Endpoint::Admin),
            limits::limit,
        ))
}

/// After a successful write (pods, status, servers, keys, or anything that cascades to them),
/// tells the xDS sync task to rebuild; unchanged content is not pushed.
async fn push_after_write(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let response = next.run(req).await;
    if writes && response.status().is_success() {
        state.envoy_config_changed();
    }
    response
}

/// Constant-time check of `Authorization: Bearer <admin token>`. Both sides are hashed first so
/// the comparison does not depend on the lengths either.
async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.config().admin_token.as_deref() else {
        return ApiError::Unauthorized(
            "the admin API is disabled: no admin token is configured".into(),
        )
        .into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok: bool = Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into();
    if given.is_empty() || !ok {
        return ApiError::Unauthorized(
            "admin API: send `Authorization: Bearer <admin token>` (PODGATE_ADMIN_TOKEN)".into(),
        )
        .into_response();
    }
    next.run(req).await
}

// ---------------------------------------------------------------------------------------------
// Validation

fn check_text(value: &str, field: &str, max: usize) -> ApiResult<()> {
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::bad(format!(
            "`{field}` must be at most {max} characters without control characters"
        )));
    }
    Ok(())
}

fn check_email(email: &str) -> ApiResult<()> {
    let parts: Vec<&str> = email.split('@').collect();
    let ok = email.len() <= 254
        && parts.len() == 2
        && !parts[0].is_empty()
        && parts[1].contains('.')
        && !parts[1].starts_with('.')
        && !parts[1].ends_with('.')
        && !email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ','));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "`email` {email:?} is not an address like name@example.dev"
        )))
    }
}

/// A server's address must be an IP: every pod is reached through one original-destination
/// cluster whose destination the filter sets, and that cluster does no DNS lookup.
fn check_address(address: &str) -> ApiResult<()> {
    if address.parse::<std::net::IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "`address` {address:?} must be an IP address without scheme or port, e.g. 10.0.0.5 or fd00::5 (pods are reached through one original-destination cluster, which does no DNS lookup; resolve the name first)"
        )))
    }
}

fn check_port(port: u16, field: &str) -> ApiResult<u16> {
    if port == 0 {
        return Err(ApiError::bad(format!("`{field}` must be 1-65535")));
    }
    Ok(port)
}

fn parse_enum<T: std::str::FromStr<Err = String>>(s: &str, field: &str) -> ApiResult<T> {
    s.parse::<T>()
        .map_err(|e| ApiError::bad(format!("`{field}`: {e}")))
}

/// Checks a new pod's slug against both host templates, explaining the 63-character limit.
fn check_slug(state: &AppState, slug: &str) -> ApiResult<()> {
    let config = state.config();
    for (template, which) in [
        (&config.host_template, "public"),
        (&config.upstream_host_template, "upstream"),
    ] {
        if let Err(e) = template.check_slug(slug) {
            return Err(match e {
                podgate_protocol::host::HostError::LabelTooLong => ApiError::bad(format!(
                    "pod slug {slug:?} is {} characters, too long for the {which} host template {template}: its host must fit in one 63-character DNS label for every port, so a slug may have at most {} characters; pick a shorter slug",
                    slug.len(),
                    template.max_slug_len()
                )),
                other => ApiError::bad(format!(
                    "pod slug {slug:?} is not valid: {other}; use lowercase letters, digits and inner '-', e.g. my-pod-1"
                )),
            });
        }
    }
    Ok(())
}

fn gen_id(prefix: &str) -> ApiResult<String> {
    let r = random_id().map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(format!("{prefix}-{}", &r[..16]))
}

/// `Some(None)` for an explicit JSON `null`, `None` when the field is absent.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn created<T: Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

fn deleted(found: bool, what: &str) -> ApiResult<Response> {
    if found {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("no such {what}")))
    }
}

// ---------------------------------------------------------------------------------------------
// Users

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
    name: Option<String>,
}

async fn list_users(State(s): State<AppState>) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(s.db().list_users().await?))
}

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
    }
    check_text(&body.name, "name", 200)?;
    let user = User {
        id,
        email: body.email,
        name: body.name,
        created_at: now_unix(),
    };
    s.db().create_user(&user).await?;
    Ok(created(user))
}

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

async fn update_user(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
    JsonBody(patch): JsonBody<UserPatch>,
) -> ApiResult<Json<User>> {
    let mut user = s
        .db()
        .get_user(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {id:?}")))?;
    if let Some(email) = patch.email {
        if let Some(e) = &email {
            check_email(e)?;
        }
        user.email = email;
    }
    if let Some(name) = patch.name {
        check_text(&name, "name", 200)?;
        user.name = name;
    }
    s.db()
        .update_user(&id, user.email.as_deref(), &user.name)
        .await?;
    Ok(Json(user))
}

async fn delete_user(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> ApiResult<Response> {
    deleted(s.db().delete_user(&id).await?, "user")
}

// ---------------------------------------------------------------------------------------------
// Teams and members

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

async fn list_teams(State(s): State<AppState>) -> ApiResult<Json<Vec<Team>>> {
    Ok(Json(s.db().list_teams().await?))
}

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

async fn delete_team(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> ApiResult<Response> {
    deleted(s.db().delete_team(&id).await?, "team")
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

async fn require_user(s: &AppState, user_id: &str, field: &str) -> ApiResult<()> {
    match s.db().get_user(user_id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::bad(format!(
            "`{field}`: no user {user_id:?}; create it with POST /v1/users first"
        ))),
    }
}

async fn list_members(
    State(s): State<AppState>,
    PathArgs(team_id): PathArgs<String>,
) -> ApiResult<Json<Vec<Member>>> {
    require_team(&s, &team_id).await?;
    Ok(Json(s.db().list_members(&team_id).await?))
}

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

async fn set_member_role(
    State(s): State<AppState>,
    PathArgs((team_id, user_id)): PathArgs<(String, String)>,
    JsonBody(body): JsonBody<RoleBody>,
) -> ApiResult<Json<Member>> {
    require_team(&s, &team_id).await?;
    require_user(&s, &user_id, "user").await?;
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

async fn delete_member(
    State(s): State<AppState>,
    PathArgs((team_id, user_id)): PathArgs<(String, String)>,
) -> ApiResult<Response> {
    deleted(s.db().delete_member(&team_id, &user_id).await?, "member")
}

// ---------------------------------------------------------------------------------------------
// Servers

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
    name: Option<String>,
    address: Option<String>,
}

async fn list_servers(State(s): State<AppState>) -> ApiResult<Json<Vec<Server>>> {
    Ok(Json(s.db().list_servers().await?))
}

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

async fn update_server(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
    JsonBody(patch): JsonBody<ServerPatch>,
) -> ApiResult<Json<Server>> {
    let mut server = s
        .db()
        .get_server(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no server {id:?}")))?;
    if let Some(name) = patch.name {
        check_text(&name, "name", 200)?;
        server.name = name;
    }
    if let Some(address) = patch.address {
        check_address(&address)?;
        server.address = address;
    }
    s.db()
        .update_server(&id, &server.name, &server.address)
        .await?;
    Ok(Json(server))
}

async fn delete_server(
    State(s): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> ApiResult<Response> {
    deleted(s.db().delete_server(&id).await?, "server")
}

// ---------------------------------------------------------------------------------------------
// Pods and ports

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPod {
    slug: String,
    owner_id: String,
    team_id: Option<String>,
    server_id: Option<String>,
    #[serde(default = "default_status")]
    status: String,
    nginx_port: u16,
}

fn default_status() -> String {
    PodStatus::Starting.as_str().to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodPatch {
    owner_id: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    team_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    server_id: Option<Option<String>>,
    status: Option<String>,
    nginx_port: Option<u16>,
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
    require_user(s, &pod.owner_id, "owner_id").await?;
    if let Some(team) = &pod.team_id {
        if s.db().get_team(team).await?.is_none() {
            return Err(ApiError::bad(format!(
                "`team_id`: no team {team:?}; create it with POST /v1/teams first, or leave it out"
            )));
        }
    }
    if let Some(server) = &pod.server_id {
        if s.db().get_server(server).await?.is_none() {
            return Err(ApiError::bad(format!(
                "`server_id`: no server {server:?}; create it with POST /v1/servers first, or leave it out"
            )));
        }
    }
    Ok(())
}

async fn require_pod(s: &AppState, slug: &str) -> ApiResult<Pod> {
    s.db()
        .get_pod(slug)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no pod {slug:?}")))
}

async fn list_pods(State(s): State<AppState>) -> ApiResult<Json<Vec<Pod>>> {
    Ok(Json(s.db().list_pods().await?))
}

async fn create_pod(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<NewPod>,
) -> ApiResult<Response> {
    check_slug(&s, &body.slug)?;
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
    s.db().create_pod(&pod).await?;
    Ok(created(pod))
}

async fn get_pod(
    State(s): State<AppState>,
    PathArgs(slug): PathArgs<String>,
) -> ApiResult<Json<Pod>> {
    Ok(Json(require_pod(&s, &slug).await?))
}

async fn update_pod(
    State(s): State<AppState>,
    PathArgs(slug): PathArgs<String>,
    JsonBody(patch): JsonBody<PodPatch>,
) -> ApiResult<Json<Pod>> {
    let mut pod = require_pod(&s, &slug).await?;
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
    check_pod_refs(&s, &pod).await?;
    pod.updated_at = now_unix();
    s.db().update_pod(&pod).await?;
    Ok(Json(pod))
}

async fn set_pod_status(
    State(s): State<AppState>,
    PathArgs(slug): PathArgs<String>,
    JsonBody(body): JsonBody<StatusBody>,
) -> ApiResult<Json<Pod>> {
    let status = status_of(&body.status)?;
    if !s.db().set_pod_status(&slug, status, now_unix()).await? {
        return Err(ApiError::not_found(format!("no pod {slug:?}")));
    }
    Ok(Json(require_pod(&s, &slug).await?))
}

async fn delete_pod(
    State(s): State<AppState>,
    PathArgs(slug): PathArgs<String>,
) -> ApiResult<Response> {
    deleted(s.db().delete_pod(&slug).await?, "pod")
}

async fn list_ports(
    State(s): State<AppState>,
    PathArgs(slug): PathArgs<String>,
) -> ApiResult<Json<Vec<PodPort>>> {
    require_pod(&s, &slug).await?;
    Ok(Json(s.db().list_pod_ports(&slug).await?))
}

async fn get_port(
    State(s): State<AppState>,
    PathArgs((slug, port)): PathArgs<(String, u16)>,
) -> ApiResult<Json<PodPort>> {
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
    s.db().put_pod_port(&p).await?;
    Ok(Json(p))
}

async fn delete_port(
    State(s): State<AppState>,
    PathArgs((slug, port)): PathArgs<(String, u16)>,
) -> ApiResult<Response> {
    deleted(s.db().delete_pod_port(&slug, port).await?, "port setting")
}

// ---------------------------------------------------------------------------------------------
// Keys and audit

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyInfo {
    pub kid: String,
    pub kind: KeyKind,
    pub alg: String,
    pub created_at: i64,
    /// `active` (signs), or `verifying` (retired, still verifies until `verify_until`).
    pub state: String,
    pub verify_until: Option<i64>,
}

async fn list_keys(State(s): State<AppState>) -> ApiResult<Json<Vec<KeyInfo>>> {
    let keys = s.db().live_keys(now_unix()).await?;
    Ok(Json(
        keys.into_iter()
            .map(|k| KeyInfo {
                state: if k.retired_at.is_none() {
                    "active".into()
                } else {
                    "verifying".into()
                },
                kid: k.kid,
                kind: k.kind,
                alg: k.alg,
                created_at: k.created_at,
                verify_until: k.verify_until,
            })
            .collect(),
    ))
}

async fn rotate_keys(State(s): State<AppState>) -> ApiResult<Response> {
    let config = s.config();
    let kids = crate::keys::rotate(
        s.db(),
        config.signing_alg,
        now_unix(),
        config.rotation_overlap(),
    )
    .await
    .map_err(|e| ApiError::internal(format!("rotating keys: {e}")))?;
    s.reload_keys()
        .await
        .map_err(|e| ApiError::internal(format!("reloading keys: {e}")))?;
    tracing::info!(?kids, "signing keys rotated");
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({
            "active": kids,
            "overlap_secs": config.rotation_overlap(),
            // Publish before sign: the new capability key signs once every Envoy has it.
            "capability_signs_within_secs": if config.xds.is_some() { config.key_publish_delay } else { 0 },
        })),
    )
        .into_response())
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

/// `GET /v1/filter-config`: what the xDS server pushes to Envoy's filter right now.
async fn filter_config(
    State(s): State<AppState>,
) -> ApiResult<Json<podgate_protocol::config::FilterConfig>> {
    Ok(Json(crate::filter_config::build(&s).await?))
}
