//! Services (published upstream APIs) and their credentials: `/v1/services`,
//! `/v1/services/{name}` (`GET`, `PATCH`, `DELETE`), `/v1/services/{name}/credential` and, for
//! OAuth credentials, `/v1/services/{name}/credential/{status,refresh,clear}`, and for a service
//! reached per resource the owners of its resources, `/v1/services/{name}/resources[/{id}]`. No
//! answer carries a credential's value, an OAuth secret or token: a service shows its
//! credential's header name and fingerprint, and its OAuth token endpoint, grant and client id.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use podgate_protocol::host::{PodAddr, SERVICE_PORT};
use podgate_protocol::resource;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{created, deleted, not_null, nullable, parse_enum, require_user};
use crate::cuts::commit_cutting_lost_access;
use crate::http::error::ErrorBody;
use crate::http::error::{ApiError, ApiResult, JsonBody, PathArgs};
use crate::http::openapi::{Conflict, Malformed, NotFound, TooMany, Unauthorized};
use crate::service_oauth::{self, AssertionIn, CredentialStatus, Grant, OAuthConfig, RequestBody};
use crate::services::{check_ca_pem, check_credential, parse_upstream, seal};
use crate::store::{
    now_unix, Change, HolderScope, ServiceRow, Sharing, StoredCredential, StoredOAuth,
    DEFAULT_SHARING,
};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_services, create_service))
        .routes(routes!(get_service, update_service, delete_service))
        .routes(routes!(put_credential, delete_credential))
        .routes(routes!(credential_status))
        .routes(routes!(refresh_credential))
        .routes(routes!(clear_credential))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewService {
    name: String,
    owner_id: String,
    team_id: Option<String>,
    sharing: Option<String>,
    upstream_url: String,
    ca_pem: Option<String>,
    /// `{"header": ..., "value": ...}`, read by hand (`credential_of`) so that no message about
    /// it can quote the value.
    credential: Option<serde_json::Value>,
    /// The pattern of its resource paths, e.g. `/sessions/{id}`: the service is then reached
    /// one resource at a time (`podgate_protocol::resource`).
    resource_path: Option<String>,
}

/// `PATCH /v1/services/{name}`: each field given replaces the stored one; `null` removes the
/// optional ones; a field left out is kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServicePatch {
    #[serde(default, deserialize_with = "not_null")]
    owner_id: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    team_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    sharing: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    upstream_url: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    ca_pem: Option<Option<String>>,
    /// As in `POST`, read by hand (`credential_of`); `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    credential: Option<Option<serde_json::Value>>,
    /// As in `POST`; `null` makes it a service reached as a whole.
    #[serde(default, deserialize_with = "nullable")]
    resource_path: Option<Option<String>>,
}

/// A credential as an admin sends it: a static one, an OAuth one, or an OAuth one with a
/// static fallback (in the OAuth configuration's header unless `header` names another).
struct CredentialBody {
    fixed: Option<StaticCredential>,
    oauth: Option<OAuthConfig>,
}

struct StaticCredential {
    header: String,
    value: String,
}

/// Reads `{"header": "...", "value": "..."}` or `{"oauth": {...}, "header"?, "value"?}`
/// without ever quoting what was sent.
fn credential_of(v: serde_json::Value) -> ApiResult<CredentialBody> {
    const SHAPE: &str =
        "`credential` must be {\"header\": \"authorization\", \"value\": \"Bearer ...\"} (two strings, nothing else), or {\"oauth\": {...}, \"value\"?: fallback, \"header\"?}";
    let serde_json::Value::Object(mut map) = v else {
        return Err(ApiError::bad(SHAPE));
    };
    if let Some(oauth) = map.remove("oauth") {
        let oauth = service_oauth::parse(oauth).map_err(ApiError::bad)?;
        let mut take = |k: &str| match map.remove(k) {
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            None => Ok(None),
            Some(_) => Err(ApiError::bad(SHAPE)),
        };
        let header = take("header")?;
        let value = take("value")?;
        if !map.is_empty() {
            return Err(ApiError::bad(SHAPE));
        }
        if header.is_some() && value.is_none() {
            return Err(ApiError::bad(
                "`header` beside `oauth` names the header of the fallback `value`: send `value` with it, or name the token's header as `oauth.header`",
            ));
        }
        let header = header.unwrap_or_else(|| oauth.header.clone());
        let fixed = match value {
            Some(value) => {
                check_credential(&header, &value).map_err(ApiError::bad)?;
                Some(StaticCredential { header, value })
            }
            None => None,
        };
        return Ok(CredentialBody {
            fixed,
            oauth: Some(oauth),
        });
    }
    let mut take = |k: &str| match map.remove(k) {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };
    let (Some(header), Some(value)) = (take("header"), take("value")) else {
        return Err(ApiError::bad(SHAPE));
    };
    if !map.is_empty() {
        return Err(ApiError::bad(SHAPE));
    }
    check_credential(&header, &value).map_err(ApiError::bad)?;
    Ok(CredentialBody {
        fixed: Some(StaticCredential { header, value }),
        oauth: None,
    })
}

/// What admins see of a service's OAuth credential: no secret.
#[derive(Debug, Serialize)]
struct OAuthView {
    token_url: String,
    grant: Grant,
    client_id: Option<String>,
    /// `client_secret_basic`, `private_key_jwt` or `jwt_assertion`.
    client_auth: &'static str,
    scope: Option<String>,
    header: String,
    renew_margin_secs: u64,
    /// Whether the token endpoint is verified with a CA of its own (`ca_pem`).
    ca_pem_set: bool,
    /// `form` or `json`.
    request_body: RequestBody,
    /// `body` or `authorization_header`.
    assertion_in: AssertionIn,
    /// The names of the extra token request parameters (not their values).
    token_params: Vec<String>,
    /// The names of the extra assertion claims (not their values).
    assertion_claims: Vec<String>,
    /// Whether a plain-http `token_url` off loopback was accepted on purpose.
    allow_insecure_http: bool,
    /// Whether it is stored sealed under a key-encryption key (always, outside dev mode).
    sealed: bool,
}

/// A service's OAuth credential as admins see it: its settings, or why it cannot be read (a
/// key-encryption key dropped before `podgate keys rewrap`, say), never as if it had none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum OAuthShown {
    Readable(OAuthView),
    Unreadable { sealed: bool, error: String },
}

/// What admins see of a service's credential.
#[derive(Debug, Serialize)]
struct CredentialView {
    header: String,
    /// `sha256:` and 8 hex digits of the value's SHA-256.
    fingerprint: String,
    /// Whether it is stored sealed under a key-encryption key (always, outside dev mode).
    sealed: bool,
}

/// What admins see of a service: never its credential's value.
#[derive(Debug, Serialize)]
struct ServiceView {
    name: String,
    owner_id: String,
    team_id: Option<String>,
    sharing: Sharing,
    upstream_url: String,
    /// The service's public URL: where callers reach it through Envoy.
    url: String,
    /// Whether the service has its own CA to verify the upstream's certificate.
    ca_pem_set: bool,
    /// The static credential, or with `oauth` the fallback.
    credential: Option<CredentialView>,
    oauth: Option<OAuthShown>,
    /// The pattern of its resource paths when it is reached one resource at a time.
    resource_path: Option<String>,
    created_at: i64,
    updated_at: i64,
}

fn view(s: &AppState, row: ServiceRow) -> ServiceView {
    let config = s.config();
    let host = config.public_hosts.render(&PodAddr {
        pod: row.name.clone(),
        port: SERVICE_PORT,
    });
    let oauth = row.oauth.as_ref().map(|stored| {
        let sealed = stored.kek_id.is_some();
        match service_oauth::open(&config.key_encryption, &row.name, stored) {
            Ok(c) => OAuthShown::Readable(OAuthView {
                client_auth: c.client_auth(),
                token_url: c.token_url,
                grant: c.grant,
                client_id: c.client_id,
                scope: c.scope,
                header: c.header,
                renew_margin_secs: c.renew_margin_secs,
                ca_pem_set: c.ca_pem.is_some(),
                request_body: c.request_body,
                assertion_in: c.assertion_in,
                token_params: c.token_params.into_keys().collect(),
                assertion_claims: c.assertion_claims.into_keys().collect(),
                allow_insecure_http: c.allow_insecure_http,
                sealed,
            }),
            Err(e) => {
                let fix = match e {
                    service_oauth::OpenError::Seal(_) => "give the key-encryption key it was sealed under as a previous one (--previous-key-encryption-key) and run `podgate keys rewrap`, or set the credential again",
                    service_oauth::OpenError::Content(_) => "set the credential again",
                };
                OAuthShown::Unreadable {
                    sealed,
                    error: format!(
                        "the stored OAuth configuration cannot be opened ({e}); {fix}"
                    ),
                }
            }
        }
    });
    ServiceView {
        oauth,
        url: config.pod_origin(&host),
        credential: row.credential.map(|c| CredentialView {
            sealed: c.kek_id.is_some(),
            header: c.header,
            fingerprint: c.fingerprint,
        }),
        ca_pem_set: row.ca_pem.is_some(),
        name: row.name,
        owner_id: row.owner_id,
        team_id: row.team_id,
        sharing: row.sharing,
        upstream_url: row.upstream_url,
        resource_path: row.resource_path,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

type SealedCredential = (Option<StoredCredential>, Option<StoredOAuth>);

fn sealed(s: &AppState, name: &str, c: &CredentialBody) -> ApiResult<SealedCredential> {
    let kek = &s.config().key_encryption;
    let fixed = c
        .fixed
        .as_ref()
        .map(|c| seal(kek, name, &c.header, &c.value))
        .transpose()
        .map_err(|e| {
            ApiError::internal(format!("sealing the credential of service {name}: {e}"))
        })?;
    let oauth = c
        .oauth
        .as_ref()
        .map(|c| service_oauth::seal(kek, name, c))
        .transpose()
        .map_err(|e| {
            ApiError::internal(format!(
                "sealing the OAuth credential of service {name}: {e}"
            ))
        })?;
    Ok((fixed, oauth))
}

/// Where service `row`'s credential comes from now, as the filter's directory has it.
fn status_of(s: &AppState, row: &ServiceRow) -> CredentialStatus {
    let kek = &s.config().key_encryption;
    let tokens = s.service_tokens();
    let unusable = crate::services::without_credential(kek, tokens, row);
    tokens.status(kek, row, unusable)
}

/// The 409 of a service name taken.
fn already_exists(name: &str) -> ApiError {
    ApiError::conflict(format!(
        "a service {name:?} already exists; change it with PATCH /v1/services/{name}, or delete it first"
    ))
}

/// Whether `url` can be a service's upstream with `ca_pem`, the 400 naming the field if not.
fn check_upstream(url: &str, ca_pem: Option<&str>) -> ApiResult<()> {
    let upstream =
        parse_upstream(url).map_err(|e| ApiError::bad(format!("`upstream_url`: {e}")))?;
    if let Some(pem) = ca_pem {
        if !upstream.https {
            return Err(ApiError::bad("`ca_pem` is only for an https upstream"));
        }
        check_ca_pem(pem).map_err(|e| ApiError::bad(format!("`ca_pem`: {e}")))?;
    }
    Ok(())
}

/// Whether `pattern` can be a service's `resource_path`, the 400 naming the field if not.
fn check_resource_path(pattern: &str) -> ApiResult<()> {
    resource::check_pattern(pattern)
        .map_err(|e| ApiError::bad(format!("`resource_path` {pattern:?}: {e}")))
}

async fn require_team(s: &AppState, team: &str) -> ApiResult<()> {
    if s.db().get_team(team).await?.is_none() {
        return Err(ApiError::bad(format!(
            "`team_id`: no team {team:?}; create it with POST /v1/teams first, or leave it out"
        )));
    }
    Ok(())
}

/// A change with service `name` read in it, to write back (`404` when there is none).
async fn change_service(s: &AppState, name: &str) -> ApiResult<(Change, ServiceRow)> {
    let mut change = s.db().change().await?;
    let row = change
        .service_for_update(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no service {name:?}")))?;
    Ok((change, row))
}

/// Writes `row` in `change`; when it no longer has the OAuth configuration it had (`had_oauth`),
/// its OAuth tokens are cleared everywhere in the same change, as by `credential/clear`: were the
/// same configuration set again, a control plane that still held a token would use it.
async fn put_service_row(
    change: &mut Change,
    row: &mut ServiceRow,
    had_oauth: bool,
) -> ApiResult<()> {
    change.put_service(row).await?;
    if had_oauth && row.oauth.is_none() {
        if let Some(epoch) = change.advance_oauth(&row.name, true).await? {
            row.oauth_epoch = epoch;
        }
    }
    Ok(())
}

/// Moves service `name`'s OAuth epoch (a refresh, or with `clear` a clear) for every control
/// plane on the database: `row` as it stands after.
async fn advance_oauth(s: &AppState, row: ServiceRow, clear: bool) -> ApiResult<ServiceRow> {
    let oauth_epoch = s
        .db()
        .advance_oauth(&row.name, clear)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no service {:?}", row.name)))?;
    Ok(ServiceRow { oauth_epoch, ..row })
}

pub(super) async fn require_service(s: &AppState, name: &str) -> ApiResult<ServiceRow> {
    s.db()
        .get_service(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no service {name:?}")))
}

/// Commits `change` to service `name` with the cuts of whoever held a capability for it and
/// may no longer reach it, or (`recheck` false) alone.
async fn commit_cutting(s: &AppState, change: Change, name: &str, recheck: bool) -> ApiResult<()> {
    let scopes: &[HolderScope] = if recheck {
        &[HolderScope::Port(name, SERVICE_PORT)]
    } else {
        &[]
    };
    commit_cutting_lost_access(s.db(), change, s.config().capability_lifetime, scopes).await?;
    Ok(())
}

#[utoipa::path(
    get,
    path = "/v1/services",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every service, each with its credential's header name and fingerprint, never its value"),
        Unauthorized,
        TooMany,
    )
)]
async fn list_services(State(s): State<AppState>) -> ApiResult<Json<Vec<ServiceView>>> {
    let rows = s.db().list_services().await?;
    Ok(Json(rows.into_iter().map(|r| view(&s, r)).collect()))
}

#[utoipa::path(
    post,
    path = "/v1/services",
    tag = "admin",
    security(("admin_token" = [])),
    request_body(content = serde_json::Value, description = "`{name, owner_id, team_id?, sharing? (owner, team, signed_in, public; default team), upstream_url (http(s)://host[:port]), ca_pem?, credential? ({header, value}, or {oauth: {...}, value?, header?} as in PUT /v1/services/{name}/credential), resource_path? (e.g. `/sessions/{id}`: reached one resource at a time, each resource's owner recorded with PUT /v1/services/{name}/resources/{id})}`"),
    responses(
        (status = 201, description = "Created; the answer shows the credential's fingerprint, never its value"),
        Malformed,
        Unauthorized,
        Conflict,
        TooMany,
    )
)]
async fn create_service(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<NewService>,
) -> ApiResult<Response> {
    if let Err(e) = s.config().public_hosts.check_service_name(&body.name) {
        return Err(ApiError::bad(format!(
            "service name {:?} cannot be used: {e}; use lowercase letters, digits and inner '-' whose host ({}) fits one DNS label and is no pod host",
            body.name,
            s.config().service_host_template_source
        )));
    }
    check_upstream(&body.upstream_url, body.ca_pem.as_deref())?;
    if let Some(pattern) = &body.resource_path {
        check_resource_path(pattern)?;
    }
    let sharing = match &body.sharing {
        Some(v) => parse_enum::<Sharing>(v, "sharing")?,
        None => DEFAULT_SHARING,
    };
    require_user(&s, &body.owner_id, "owner_id").await?;
    if let Some(team) = &body.team_id {
        require_team(&s, team).await?;
    }
    let credential = body.credential.map(credential_of).transpose()?;
    if s.db().get_service(&body.name).await?.is_some() {
        return Err(already_exists(&body.name));
    }
    let (credential, oauth) = match credential {
        Some(c) => sealed(&s, &body.name, &c)?,
        None => (None, None),
    };
    let now = now_unix();
    let row = ServiceRow {
        name: body.name,
        owner_id: body.owner_id,
        team_id: body.team_id,
        sharing,
        upstream_url: body.upstream_url,
        ca_pem: body.ca_pem,
        credential,
        oauth,
        resource_path: body.resource_path,
        oauth_epoch: crate::store::OAuthEpoch::at_creation(),
        created_at: now,
        updated_at: now,
    };
    let mut change = s.db().change().await?;
    if let Err(e) = change.create_service(&row).await {
        // Created meanwhile by another request: theirs stays.
        if let sqlx::Error::Database(db) = &e {
            if db.kind() == sqlx::error::ErrorKind::UniqueViolation {
                return Err(already_exists(&row.name));
            }
        }
        return Err(e.into());
    }
    // Capabilities still valid for an earlier service of this name must not open the new one
    // to people who may not reach it.
    commit_cutting(&s, change, &row.name, true).await?;
    Ok(created(view(&s, row)))
}

#[utoipa::path(
    get,
    path = "/v1/services/{name}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The service")),
    responses(
        (status = 200, description = "The service, with its credential's header name and fingerprint, never its value"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn get_service(
    State(s): State<AppState>,
    PathArgs(name): PathArgs<String>,
) -> ApiResult<Json<ServiceView>> {
    let row = require_service(&s, &name).await?;
    Ok(Json(view(&s, row)))
}

#[utoipa::path(
    patch,
    path = "/v1/services/{name}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The service")),
    request_body(content = serde_json::Value, description = "Any of `{owner_id, team_id, sharing (owner, team, signed_in, public), upstream_url (http(s)://host[:port]), ca_pem, credential, resource_path}`, as in `POST /v1/services`: each field given replaces the stored one, `null` removes `team_id`, `ca_pem`, `credential` (requests then reach the upstream without one) or `resource_path` (the service is then reached as a whole), a field left out is kept. Capabilities minted before a change of `resource_path` no longer match. Whoever may no longer reach the service after the change is cut off."),
    responses(
        (status = 200, description = "Updated; the answer shows the credential's fingerprint, never its value"),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn update_service(
    State(s): State<AppState>,
    PathArgs(name): PathArgs<String>,
    JsonBody(patch): JsonBody<ServicePatch>,
) -> ApiResult<Json<ServiceView>> {
    let credential = match patch.credential {
        Some(Some(v)) => Some(Some(credential_of(v)?)),
        Some(None) => Some(None),
        None => None,
    };
    // Checked before the change is opened: the reads use other connections, and a change holds
    // one (on PostgreSQL) until it commits.
    if let Some(owner) = &patch.owner_id {
        require_user(&s, owner, "owner_id").await?;
    }
    if let Some(Some(team)) = &patch.team_id {
        require_team(&s, team).await?;
    }
    let sharing = patch
        .sharing
        .as_deref()
        .map(|v| parse_enum::<Sharing>(v, "sharing"))
        .transpose()?;
    let (mut change, mut row) = change_service(&s, &name).await?;
    let who_before = (row.owner_id.clone(), row.team_id.clone(), row.sharing);
    if let Some(owner) = patch.owner_id {
        row.owner_id = owner;
    }
    if let Some(team) = patch.team_id {
        row.team_id = team;
    }
    if let Some(sharing) = sharing {
        row.sharing = sharing;
    }
    if let Some(url) = patch.upstream_url {
        row.upstream_url = url;
    }
    if let Some(pem) = patch.ca_pem {
        row.ca_pem = pem;
    }
    check_upstream(&row.upstream_url, row.ca_pem.as_deref())?;
    // A capability names its resource (or none) and must name exactly the one a request is
    // under, so after a change the capabilities minted before it stop matching at the edge and
    // at renewal; the resources' owners are kept, by id.
    if let Some(path) = patch.resource_path {
        if let Some(pattern) = &path {
            check_resource_path(pattern)?;
        }
        row.resource_path = path;
    }
    let had_oauth = row.oauth.is_some();
    if let Some(credential) = &credential {
        (row.credential, row.oauth) = match credential {
            Some(c) => sealed(&s, &name, c)?,
            None => (None, None),
        };
    }
    row.updated_at = now_unix();
    put_service_row(&mut change, &mut row, had_oauth).await?;
    // Another owner, team or sharing: whoever lost the service by it is cut off within one push.
    let lost = who_before != (row.owner_id.clone(), row.team_id.clone(), row.sharing);
    commit_cutting(&s, change, &name, lost).await?;
    if credential.is_some() {
        // A new configuration gets its token at once; the same one keeps its token.
        s.service_tokens().credential_set(&name);
    }
    tracing::info!(service = %name, credential = credential.is_some(), "service updated");
    Ok(Json(view(&s, row)))
}

#[utoipa::path(
    delete,
    path = "/v1/services/{name}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The service")),
    responses(
        (status = 204, description = "Deleted, with its credential"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn delete_service(
    State(s): State<AppState>,
    PathArgs(name): PathArgs<String>,
) -> ApiResult<Response> {
    let mut change = s.db().change().await?;
    let found = change.delete_service(&name).await?;
    // With no service, everyone who held a capability for it has lost it; re-checked whether or
    // not it was still there.
    commit_cutting(&s, change, &name, true).await?;
    deleted(found, "service")
}

#[utoipa::path(
    put,
    path = "/v1/services/{name}/credential",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The service")),
    request_body(content = serde_json::Value, description = "`{header, value}`: the header Envoy sets on every request to the upstream, e.g. `authorization` and `Bearer sk-...`, or `x-api-key`; or `{oauth: {token_url, grant (client_credentials, jwt_bearer), client_id?, client_secret? or private_key_pem?, key_id?, scope?, iss?, sub?, aud?, header? (authorization), renew_margin_secs? (300), request_body? (form, json), assertion_in? (body, authorization_header), token_params?, assertion_claims?, ca_pem?, allow_insecure_http?}, value? (a static fallback), header?}`: a token the control plane obtains and renews. `token_url` is https (http only for a loopback address or with allow_insecure_http); the header is not one Envoy overwrites or removes (x-forwarded-for, x-forwarded-proto, client forwarding headers)"),
    responses(
        (status = 200, description = "Set (sealed under the key-encryption key); the answer shows its fingerprint, never its value"),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn put_credential(
    State(s): State<AppState>,
    PathArgs(name): PathArgs<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<Json<ServiceView>> {
    let credential = credential_of(body)?;
    let (mut change, mut row) = change_service(&s, &name).await?;
    let had_oauth = row.oauth.is_some();
    (row.credential, row.oauth) = sealed(&s, &name, &credential)?;
    row.updated_at = now_unix();
    put_service_row(&mut change, &mut row, had_oauth).await?;
    change.commit().await?;
    // A new configuration gets its token at once; the same one keeps its token.
    s.service_tokens().credential_set(&name);
    tracing::info!(service = %name, oauth = credential.oauth.is_some(), "service credential set");
    Ok(Json(view(&s, row)))
}

#[utoipa::path(
    delete,
    path = "/v1/services/{name}/credential",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The service")),
    responses(
        (status = 200, description = "Removed: requests reach the upstream without a credential"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn delete_credential(
    State(s): State<AppState>,
    PathArgs(name): PathArgs<String>,
) -> ApiResult<Json<ServiceView>> {
    let (mut change, mut row) = change_service(&s, &name).await?;
    let had_oauth = row.oauth.is_some();
    row.credential = None;
    row.oauth = None;
    row.updated_at = now_unix();
    put_service_row(&mut change, &mut row, had_oauth).await?;
    change.commit().await?;
    Ok(Json(view(&s, row)))
}

#[utoipa::path(
    get,
    path = "/v1/services/{name}/credential/status",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The service")),
    responses(
        (status = 200, description = "Where the credential Envoy sets comes from now (oauth, fallback or none), the current OAuth token's expiry, the last renewal and the last error, as this control plane holds them; never the token", body = CredentialStatus),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn credential_status(
    State(s): State<AppState>,
    PathArgs(name): PathArgs<String>,
) -> ApiResult<Json<CredentialStatus>> {
    let row = require_service(&s, &name).await?;
    Ok(Json(status_of(&s, &row)))
}

#[utoipa::path(
    post,
    path = "/v1/services/{name}/credential/refresh",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The service")),
    responses(
        (status = 200, description = "A new OAuth token was obtained and is pushed to Envoy; every other control plane on the database renews its own at once, using its current one until then; the answer is the status, never the token", body = CredentialStatus),
        Malformed,
        Unauthorized,
        NotFound,
        TooMany,
        (status = 502, description = "The token endpoint gave no token; the message says why", body = ErrorBody),
    )
)]
async fn refresh_credential(
    State(s): State<AppState>,
    PathArgs(name): PathArgs<String>,
) -> ApiResult<Json<CredentialStatus>> {
    let row = require_service(&s, &name).await?;
    if row.oauth.is_none() {
        return Err(ApiError::bad(format!(
            "service {name:?} has no OAuth credential; set one with PUT /v1/services/{name}/credential"
        )));
    }
    let row = advance_oauth(&s, row, false).await?;
    service_oauth::refresh(&s, &row)
        .await
        .map_err(|e| ApiError::BadGateway(format!("service {name:?}: no new OAuth token: {e}")))?;
    Ok(Json(status_of(&s, &row)))
}

#[utoipa::path(
    post,
    path = "/v1/services/{name}/credential/clear",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The service")),
    responses(
        (status = 200, description = "The cached OAuth token is dropped, by this control plane and by every other on the database (Envoy gets the fallback, or answers 502 for the service, until each one's renewal task obtains a new one); the answer is the status", body = CredentialStatus),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn clear_credential(
    State(s): State<AppState>,
    PathArgs(name): PathArgs<String>,
) -> ApiResult<Json<CredentialStatus>> {
    let row = require_service(&s, &name).await?;
    // Every control plane, this one included, stops using its token at the push that follows
    // (`ServiceTokens::current`) and renews it.
    let row = advance_oauth(&s, row, true).await?;
    tracing::info!(service = %name, "service OAuth token dropped");
    Ok(Json(status_of(&s, &row)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_header_beside_oauth_without_a_fallback_value_is_refused_not_dropped() {
        let oauth = serde_json::json!({"token_url": "https://idp.example/token", "grant": "client_credentials", "client_id": "c", "client_secret": "s"});
        let refused =
            credential_of(serde_json::json!({"oauth": oauth.clone(), "header": "x-api-key"}));
        let Err(ApiError::BadRequest(why)) = refused else {
            panic!("accepted");
        };
        assert!(
            why.contains("`value`") && why.contains("oauth.header"),
            "{why}"
        );
        // With its value: the fallback goes in that header; without either: the token's.
        let both = credential_of(
            serde_json::json!({"oauth": oauth.clone(), "header": "x-api-key", "value": "k"}),
        )
        .unwrap();
        assert_eq!(both.fixed.unwrap().header, "x-api-key");
        let alone = credential_of(serde_json::json!({"oauth": oauth})).unwrap();
        assert!(alone.fixed.is_none());
        assert_eq!(alone.oauth.unwrap().header, "authorization");
    }
}
