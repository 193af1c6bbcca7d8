//! Sign-in with an OpenID provider (`auth/sign_in.rs` does the protocol):
//! `GET /auth/login?next=&provider=` (a chooser page when several providers sign in and none is
//! named; otherwise a redirect to the provider) and `GET /auth/callback` (the provider's answer →
//! the control plane's session cookie and a redirect to `next`).
//!
//! Every failure is a page for browsers (what happened, and a link that starts again) and a JSON
//! body `{"error", "sign_in"}` for other clients, both `no-store`, with the status of the cause:
//! 400 for a state that is missing, unknown, used, expired or another browser's, and for a code
//! the provider refused; 403 when the provider or the user refused (`access_denied`); 401 for an
//! ID token podgate does not accept (another client's, another sign-in's nonce); 503 when the
//! provider cannot be reached; 502 when it answers nonsense.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use html_escape::{encode_quoted_attribute, encode_text};
use podgate_protocol::redirect::encode_query_value;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::router::UtoipaMethodRouterExt;
use utoipa_axum::routes;

use crate::auth::sign_in::{self, CallbackParams, SignInError, SignInFailure};
use crate::config::idp::OidcProvider;
use crate::http::cookies;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::limits::{self, Endpoint};
use crate::http::openapi::{Malformed, TooMany, Unauthorized};
use crate::http::request::cookie_headers;
use crate::http::shared::{checked_next, is_page_load, no_store, single_params};
use crate::metrics::{LoginMethod, Outcome};
use crate::AppState;

/// The sign-in's routes: starting one counts like `/api/proxy-auth` (each writes a row), a
/// failed callback like a failed ticket.
pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    let limit = |endpoint| from_fn_with_state((state.clone(), endpoint), limits::limit);
    OpenApiRouter::new()
        .routes(routes!(login).map(|r| r.route_layer(limit(Endpoint::ProxyAuth))))
        .routes(routes!(callback).map(|r| r.route_layer(limit(Endpoint::Callback))))
}

/// `/auth/login` for `provider` (or the chooser) going to `next`.
fn login_url(state: &AppState, provider: Option<&str>, next: Option<&str>) -> String {
    let mut url = format!("{}/auth/login", state.config().issuer);
    let mut sep = '?';
    if let Some(p) = provider {
        url.push_str(&format!("{sep}provider={}", encode_query_value(p)));
        sep = '&';
    }
    if let Some(n) = next {
        url.push_str(&format!("{sep}next={}", encode_query_value(n)));
    }
    url
}

/// A page with `title` and `body` (HTML already escaped), `no-store`.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title></head><body>{body}</body></html>",
        encode_text(title)
    );
    let mut resp = (status, Html(html)).into_response();
    no_store(&mut resp);
    resp
}

/// A failed sign-in: a page with what happened and a link to start again for browsers, JSON for
/// other clients.
fn failure(headers: &HeaderMap, status: StatusCode, message: &str, retry: &str) -> Response {
    let mut resp = if is_page_load(headers, "GET") {
        page(
            status,
            "Sign-in failed",
            &format!(
                "<h1>Sign-in failed</h1><p>{}</p><p><a href=\"{}\">Start again</a></p>",
                encode_text(message),
                encode_quoted_attribute(retry)
            ),
        )
    } else {
        let mut r = (status, Json(json!({ "error": message, "sign_in": retry }))).into_response();
        no_store(&mut r);
        r
    };
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"podgate\""),
        );
    }
    resp
}

/// The status and the message of a sign-in error; ours are logged and answered generically.
fn status_of(e: &SignInError) -> (StatusCode, String) {
    let status = match e {
        SignInError::State(_)
        | SignInError::BadCallback(_)
        | SignInError::CodeRefused(_)
        | SignInError::UnknownProvider(_) => StatusCode::BAD_REQUEST,
        SignInError::ProviderRefused { error, .. } => match error.as_str() {
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "server_error" => StatusCode::BAD_GATEWAY,
            "invalid_request"
            | "invalid_scope"
            | "unsupported_response_type"
            | "unauthorized_client"
            | "invalid_request_uri"
            | "invalid_request_object" => StatusCode::BAD_REQUEST,
            // access_denied, login_required, consent_required, interaction_required, ...
            _ => StatusCode::FORBIDDEN,
        },
        SignInError::IdTokenRefused(_) => StatusCode::UNAUTHORIZED,
        SignInError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
        SignInError::BadAnswer(_) => StatusCode::BAD_GATEWAY,
        SignInError::Random(_) | SignInError::Store(_) | SignInError::Identify(_) => {
            tracing::error!(error = %e, "sign-in failed on our side");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; the server log has the details. Try again in a moment.".into(),
            );
        }
    };
    (status, e.to_string())
}

fn sign_in_failure(state: &AppState, headers: &HeaderMap, f: SignInFailure) -> Response {
    let (status, message) = status_of(&f.error);
    tracing::info!(provider = f.provider.as_deref().unwrap_or(""), status = status.as_u16(), reason = %message, "sign-in refused");
    let retry = login_url(state, f.provider.as_deref(), f.next.as_deref());
    failure(headers, status, &message, &retry)
}

/// A `302` to `location` that sets `cookie`.
fn redirect_with_cookie(location: &str, cookie: &str) -> Result<Response, ApiError> {
    let mut resp = StatusCode::FOUND.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(location)
            .map_err(|e| ApiError::internal(format!("redirect: {e}")))?,
    );
    h.append(
        header::SET_COOKIE,
        HeaderValue::from_str(cookie).map_err(|e| ApiError::internal(format!("cookie: {e}")))?,
    );
    no_store(&mut resp);
    Ok(resp)
}

/// The chooser: one link per provider that signs in.
fn chooser(
    state: &AppState,
    headers: &HeaderMap,
    providers: &[&OidcProvider],
    next: Option<&str>,
) -> Response {
    if !is_page_load(headers, "GET") {
        let list: Vec<_> = providers
            .iter()
            .filter_map(|p| {
                let client = p.sign_in.as_ref()?;
                Some(json!({
                    "name": p.name,
                    "display_name": client.display_name,
                    "sign_in": login_url(state, Some(&p.name), next),
                }))
            })
            .collect();
        let mut r = Json(json!({ "providers": list })).into_response();
        no_store(&mut r);
        return r;
    }
    let items: String = providers
        .iter()
        .filter_map(|p| {
            let client = p.sign_in.as_ref()?;
            Some(format!(
                "<li><a href=\"{}\">{}</a></li>",
                encode_quoted_attribute(&login_url(state, Some(&p.name), next)),
                encode_text(&client.display_name)
            ))
        })
        .collect();
    page(
        StatusCode::OK,
        "Sign in",
        &format!("<h1>Sign in</h1><p>Choose how to sign in:</p><ul>{items}</ul>"),
    )
}

/// `GET /auth/login?next=&provider=`.
#[utoipa::path(
    get,
    path = "/auth/login",
    operation_id = "sign_in_login",
    tag = "sign-in",
    responses(
        (status = 200, description = "OK"),
        (status = 302, description = "To the identity provider, or the chooser of providers"),
        Malformed,
        (status = 404, description = "No identity provider is configured for signing in", body = ErrorBody),
        TooMany,
        (status = 502, description = "A provider answered nonsense", body = ErrorBody),
        (status = 503, description = "A dependency is unavailable", body = ErrorBody),
    )
)]
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let start_over = login_url(&state, None, None);
    let params = match single_params(query.as_deref(), &["next", "provider"]) {
        Ok(p) => p,
        Err(e) => {
            return failure(
                &headers,
                StatusCode::BAD_REQUEST,
                &e.to_string(),
                &start_over,
            )
        }
    };
    let issuer = &state.config().issuer;
    let next = match checked_next(issuer, params.get("next").map(String::as_str)) {
        Ok(next) => next,
        Err(e) => return failure(&headers, StatusCode::BAD_REQUEST, &e, &start_over),
    };
    let verifier = &state.verifiers().oidc;
    let providers: Vec<&OidcProvider> = verifier.sign_in_providers().collect();
    let provider = match (params.get("provider"), providers.as_slice()) {
        (_, []) => {
            return failure(
                &headers,
                StatusCode::NOT_FOUND,
                "no identity provider is configured to sign in with here; an operator adds one with an [oidc.sign_in] table or PODGATE_OIDC_CLIENT_SECRET",
                &start_over,
            )
        }
        (Some(name), _) => match providers.iter().find(|p| &p.name == name) {
            Some(p) => *p,
            None => {
                return failure(
                    &headers,
                    StatusCode::BAD_REQUEST,
                    &format!("there is no identity provider {name:?} to sign in with here"),
                    &login_url(&state, None, next.as_deref()),
                )
            }
        },
        (None, [only]) => *only,
        (None, several) => return chooser(&state, &headers, several, next.as_deref()),
    };
    let started = match sign_in::start(
        &state.sign_in_context(),
        provider,
        next.as_deref().unwrap_or(""),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            return sign_in_failure(
                &state,
                &headers,
                SignInFailure {
                    error: e,
                    provider: Some(provider.name.clone()),
                    next,
                },
            )
        }
    };
    let cookie = cookies::sign_in_binding(&state, &started.tag, &started.browser);
    redirect_with_cookie(&started.location, &cookie).unwrap_or_else(IntoResponse::into_response)
}

/// `GET /auth/callback?state=&code=` (or `error=`), where the provider sends the browser back.
/// Counted as a login by its answer's status.
#[utoipa::path(
    get,
    path = "/auth/callback",
    operation_id = "sign_in_callback",
    tag = "sign-in",
    responses(
        (status = 200, description = "OK"),
        (status = 302, description = "Signed in: the session cookie, and to `next`"),
        Malformed,
        Unauthorized,
        (status = 403, description = "Refused", body = ErrorBody),
        TooMany,
        (status = 502, description = "A provider answered nonsense", body = ErrorBody),
        (status = 503, description = "A dependency is unavailable", body = ErrorBody),
    )
)]
async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let resp = finish_sign_in(&state, &headers, query).await;
    state.metrics().login(
        LoginMethod::SignIn,
        Outcome::of_status(resp.status().as_u16()),
    );
    resp
}

async fn finish_sign_in(state: &AppState, headers: &HeaderMap, query: Option<String>) -> Response {
    let names = ["state", "code", "error", "error_description", "iss"];
    let mut params = match single_params(query.as_deref(), &names) {
        Ok(p) => p,
        Err(e) => {
            return failure(
                headers,
                StatusCode::BAD_REQUEST,
                &e.to_string(),
                &login_url(state, None, None),
            )
        }
    };
    let params = CallbackParams {
        state: params.remove("state"),
        code: params.remove("code"),
        error: params.remove("error"),
        error_description: params.remove("error_description"),
        iss: params.remove("iss"),
    };
    // The sign-in's own binding cookie (and the one shared name, for a sign-in started before
    // each got its own), removed whatever the outcome.
    let tag = params.state.as_deref().map(sign_in::binding_tag);
    let own = tag
        .as_deref()
        .map(|t| cookies::sign_in_binding_name(state, t));
    let jar = cookie_headers(headers);
    let bindings: Vec<&str> = jar
        .iter()
        .flat_map(|h| {
            let own = own
                .as_deref()
                .into_iter()
                .flat_map(move |name| podgate_protocol::cookie::find_all(h, name).take(4));
            own.chain(podgate_protocol::cookie::find_all(h, state.sign_in_cookie()).take(4))
        })
        .collect();
    let mut resp = finish_with(state, headers, &params, &bindings).await;
    if let Some(tag) = &tag {
        if let Ok(v) = HeaderValue::from_str(&cookies::clear_sign_in_binding(state, tag)) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// [`finish_sign_in`] once the parameters and the binding cookies are read.
async fn finish_with(
    state: &AppState,
    headers: &HeaderMap,
    params: &CallbackParams,
    bindings: &[&str],
) -> Response {
    let signed_in = match sign_in::finish(&state.sign_in_context(), params, bindings).await {
        Ok(s) => s,
        Err(f) => return sign_in_failure(state, headers, f),
    };
    let session = crate::http::session::session_for_sign_in(
        state,
        headers,
        &signed_in.user,
        Some(&signed_in.provider),
        signed_in.started_at,
    )
    .await;
    let session = match session {
        Ok(s) => s,
        // The provider's answer is used up: the browser gets the sign-in failure page, with a
        // link that starts again for the same place.
        Err(e) => {
            tracing::error!(error = %e, "cannot store a session after a sign-in");
            let next = (!signed_in.next.is_empty()).then_some(signed_in.next.as_str());
            return failure(
                headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "podgate could not store your session (an error in its database); start \
                 again in a moment",
                &login_url(state, Some(&signed_in.provider), next),
            );
        }
    };
    tracing::info!(user = %signed_in.user.id, provider = %signed_in.provider, "signed in");
    let cookie = cookies::session(state, &session);
    if signed_in.next.is_empty() {
        let mut resp = page(
            StatusCode::OK,
            "Signed in",
            &format!(
                "<h1>Signed in</h1><p>You are signed in to podgate as {}.</p>",
                encode_text(&signed_in.user.id)
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        return resp;
    }
    redirect_with_cookie(&signed_in.next, &cookie).unwrap_or_else(IntoResponse::into_response)
}
