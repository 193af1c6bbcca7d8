//! `GET /api/me`: who the caller is and what they may reach (pods and their ports, services),
//! for the CLI's `status` and the setup page. Any credential `/v1/capabilities` takes (an API
//! token, an ID token, the session cookie); 401 JSON without one.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use podgate_protocol::host::{PodAddr, SERVICE_PORT};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::verify::{identify, Accept, Via};
use crate::authz::may_reach;
use crate::http::error::{ApiError, ApiResult};
use crate::http::openapi::Unauthorized;
use crate::http::request::{credentials, ClientIp};
use crate::http::shared::no_store;
use crate::store::{now_unix, AccessFacts, User, DEFAULT_SHARING};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me))
}

fn rfc3339(t: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The pods `user` may reach: for each, the listed ports they may reach (with their URL) and
/// whether ports without their own sharing rule are theirs too.
async fn reachable_pods(state: &AppState, user: &User) -> ApiResult<Vec<Value>> {
    let mut out = Vec::new();
    for (pod, is_team_member) in state.db().pods_within_reach(&user.id).await? {
        let facts = |sharing| AccessFacts {
            owner_id: pod.owner_id.clone(),
            sharing,
            is_team_member,
        };
        let mut ports = Vec::new();
        for p in state.db().list_pod_ports(&pod.slug).await? {
            if may_reach(&facts(p.sharing), Some(user)) {
                let host = state.config().host_template.render(&PodAddr {
                    pod: pod.slug.clone(),
                    port: p.port,
                });
                ports.push(json!({
                    "port": p.port,
                    "label": p.label,
                    "sharing": p.sharing.as_str(),
                    "url": format!("{}/", state.config().pod_origin(&host)),
                }));
            }
        }
        let other_ports = may_reach(&facts(DEFAULT_SHARING), Some(user));
        if ports.is_empty() && !other_ports {
            continue;
        }
        out.push(json!({
            "pod": pod.slug,
            "status": pod.status,
            "owner": pod.owner_id == user.id,
            "ports": ports,
            "other_ports": other_ports,
        }));
    }
    Ok(out)
}

/// The services `user` may reach (by the rule capabilities for them are minted with), each
/// with its URL.
async fn reachable_services(state: &AppState, user: &User) -> ApiResult<Vec<Value>> {
    let config = state.config();
    let mut out = Vec::new();
    for (name, facts) in state.db().services_access_facts(&user.id).await? {
        if !may_reach(&facts, Some(user)) {
            continue;
        }
        let host = config.public_hosts.render(&PodAddr {
            pod: name.clone(),
            port: SERVICE_PORT,
        });
        out.push(json!({
            "service": name,
            "owner": facts.owner_id == user.id,
            "sharing": facts.sharing.as_str(),
            "url": format!("{}/", config.pod_origin(&host)),
        }));
    }
    Ok(out)
}

/// `GET /api/me`.
#[utoipa::path(
    get,
    path = "/api/me",
    tag = "api-tokens",
    responses(
        (status = 200, description = "The caller, its API token if it used one, the pods and ports and the services it may reach"),
        Unauthorized,
    )
)]
async fn me(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client): ClientIp,
) -> ApiResult<Response> {
    let outcome = identify(
        &state.identify_context(),
        &credentials(&headers),
        &client,
        Accept::Api,
    )
    .await?;
    let Some(identity) = outcome.identity else {
        return Err(ApiError::Unauthorized(outcome.rejection.unwrap_or_else(
            || {
                "not signed in; send an API token (pg_...) as `Authorization: Bearer`, or sign in"
                    .into()
            },
        )));
    };
    let token = match &identity.via {
        Via::ApiToken { id, .. } => state.db().api_token_with_user(id).await?.map(|(t, _)| {
            json!({
                "id": t.id,
                "name": t.name,
                "expires_at": rfc3339(t.expires_at),
                "expires_in_secs": (t.expires_at - now_unix()).max(0),
            })
        }),
        _ => None,
    };
    let pods = reachable_pods(&state, &identity.user).await?;
    let services = reachable_services(&state, &identity.user).await?;
    let mut resp = Json(json!({
        "user": identity.user.id,
        "email": identity.user.email,
        "via": identity.via.label(),
        "api_token": token,
        // How pod hosts are named (`{pod}`, `{port}`), so a client can tell which pod and port
        // a pod URL names.
        "host_template": state.config().host_template.to_string(),
        // A pod port's URL with `{pod}` and `{port}` left to fill in.
        "pod_url_template": format!(
            "{}/",
            state.config().pod_origin(&state.config().host_template.to_string())
        ),
        "pods": pods,
        "services": services,
    }))
    .into_response();
    no_store(&mut resp);
    Ok(resp)
}
