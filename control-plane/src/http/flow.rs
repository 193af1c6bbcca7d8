//! The browser flow:
//! `GET /api/proxy-auth` (signed in and allowed → a one-time login ticket on the pod host) and
//! `GET /.podgate/callback` (on the pod host, through Envoy: ticket → capability cookie).

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::from_fn_with_state;
use axum::response::{Html, IntoResponse, Response};
use podgate_protocol::host::PodAddr;
use podgate_protocol::redirect::{encode_query_value, safe_next, MAX_NEXT_LEN};
use podgate_protocol::token::TokenKind;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::router::UtoipaMethodRouterExt;
use utoipa_axum::routes;

use crate::auth::identity::current_session_with_facts;
use crate::auth::verify::{browser_identity, IdentifyError};
use crate::authz::{self, may_reach, AuthzError};
use crate::http::cookies;
use crate::http::error::{ApiError, ApiResult};
use crate::http::limits::{self, Endpoint};
use crate::http::openapi::{NotFound, TooMany, Unauthorized};
use crate::http::request::credentials;
use crate::http::shared::{is_page_load, no_store, parse_target, single_params};
use crate::ids::ANONYMOUS_SUB;
use crate::metrics::DbOp;
use crate::mint::{mint_scoped_for, redeem_ticket, RedeemError, TicketRefusal};
use crate::AppState;

/// The flow's routes, each behind its per-client limit (`limits.rs` says what counts and why).
pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    let limit = |endpoint| from_fn_with_state((state.clone(), endpoint), limits::limit);
    OpenApiRouter::new()
        .routes(routes!(proxy_auth).map(|r| r.route_layer(limit(Endpoint::ProxyAuth))))
        .routes(routes!(callback).map(|r| r.route_layer(limit(Endpoint::Callback))))
}

fn redirect(location: &str) -> ApiResult<Response> {
    let mut resp = StatusCode::FOUND.into_response();
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(location)
            .map_err(|e| ApiError::internal(format!("redirect target: {e}")))?,
    );
    no_store(&mut resp);
    Ok(resp)
}

/// `/api/proxy-auth` on the control plane for this pod port or service and (already safe)
/// `next`.
fn proxy_auth_url(state: &AppState, addr: &PodAddr, next: &str) -> String {
    format!(
        "{}/api/proxy-auth?{}&next={}",
        state.config().issuer,
        podgate_protocol::host::target_query(addr),
        encode_query_value(next)
    )
}

/// `GET /api/proxy-auth?pod=&port=&next=` (or `?service=&next=`).
#[utoipa::path(
    get,
    path = "/api/proxy-auth",
    tag = "flow",
    responses(
        (status = 302, description = "To the pod host's callback with a login ticket, or to the login"),
        Unauthorized,
        NotFound,
        TooMany,
    )
)]
async fn proxy_auth(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let params = single_params(query.as_deref(), &["pod", "port", "service", "next"])?;
    let addr = parse_target(
        params.get("pod").map(String::as_str),
        params.get("port").map(String::as_str),
        params.get("service").map(String::as_str),
    )?;
    let next = params.get("next").map_or("/", String::as_str);
    if next.len() > MAX_NEXT_LEN {
        // The filter never sends a longer one; anything that does is not a page load of ours.
        return Err(ApiError::bad(format!(
            "`next` is {} bytes, longer than {MAX_NEXT_LEN}; link to a shorter path",
            next.len()
        )));
    }
    let next = safe_next(next);
    let credentials = credentials(&headers);
    // The control-plane session comes first among the page flow's verifiers; its user and the
    // facts for this port are read in one query. Without a live one, the other verifiers.
    let session = state
        .metrics()
        .db_timed(
            DbOp::Authorize,
            current_session_with_facts(
                state.db(),
                state.session_cookie(),
                &credentials.cookie_headers,
                &addr,
            ),
        )
        .await
        .map_err(IdentifyError::Store)?;
    // The control-plane session, if that is how the user signed in: the ticket and its
    // capability carry its id, so signing out cuts them off.
    let (user, sid, authorized) = match session {
        Some((user, sid, facts)) => {
            if !facts.is_some_and(|f| may_reach(&f, Some(&user))) {
                return Err(AuthzError::NotFound.into());
            }
            (Some(user), Some(sid), true)
        }
        None => {
            let identity = browser_identity(&state.identify_context(), &credentials).await?;
            let sid = identity
                .as_ref()
                .and_then(|i| i.via.session_id().map(str::to_owned));
            (identity.map(|i| i.user), sid, false)
        }
    };

    // On a service reached per resource, the ticket (and its capability) names the resource
    // `next` is under (`Ok(None)`: not such a service), and only one the user may use; a path
    // under none is refused once the user is known to reach the service.
    let res = match authz::resource_for_path(state.db(), &addr, &next).await {
        Err(AuthzError::Store(e)) => return Err(e.into()),
        res => res,
    };
    if user.is_none() {
        // Only a public port lets someone through without signing in; a resource is always
        // someone's.
        let public = state.authorize(None, &addr).await.is_ok();
        if !public || !matches!(res, Ok(None)) {
            return not_signed_in(&state, &headers, &addr, &next);
        }
    } else if !authorized {
        state.authorize(user.as_ref(), &addr).await?;
    }
    let res = res?;
    authz::authorize_resource(state.db(), user.as_ref(), &addr, res.as_deref()).await?;

    let ticket = mint_scoped_for(
        &state.mint_context(),
        TokenKind::LoginTicket,
        user.as_ref(),
        &addr,
        res.as_deref(),
        "proxy-auth",
        None,
        sid.as_deref(),
    )
    .await?;
    let host = state.config().public_hosts.render(&addr);
    let location = format!(
        "{}/.podgate/callback?ticket={}&next={}",
        state.config().pod_origin(&host),
        encode_query_value(&ticket.token),
        encode_query_value(&next)
    );
    tracing::info!(
        user = user.as_ref().map_or(ANONYMOUS_SUB, |u| u.id.as_str()),
        pod = %addr.pod, port = addr.port, jti = %ticket.jti,
        "ticket minted"
    );
    redirect(&location)
}

fn not_signed_in(
    state: &AppState,
    headers: &HeaderMap,
    addr: &PodAddr,
    next: &str,
) -> ApiResult<Response> {
    let Some(login) = state.config().login_url.as_deref() else {
        return Err(ApiError::Unauthorized(
            "not signed in, and no login URL is configured".into(),
        ));
    };
    // The way back fits what the sign-in page takes (`/auth/login` refuses a `next` over
    // MAX_NEXT_LEN): a long `next` loses its query, then its path, so that signing in still
    // lands on the pod instead of failing on a link the user cannot shorten.
    let path_only = next.split(['?', '#']).next().unwrap_or("/");
    let back = [next, path_only]
        .into_iter()
        .map(|n| proxy_auth_url(state, addr, n))
        .find(|url| url.len() <= MAX_NEXT_LEN)
        .unwrap_or_else(|| proxy_auth_url(state, addr, "/"));
    let sep = if login.contains('?') { '&' } else { '?' };
    let location = format!("{login}{sep}next={}", encode_query_value(&back));
    if is_page_load(headers, "GET") {
        redirect(&location)
    } else {
        let mut resp = ApiError::Unauthorized(format!(
            "not signed in; sign in at {login} and retry, or use an API token"
        ))
        .into_response();
        no_store(&mut resp);
        Ok(resp)
    }
}

/// The host this request was sent to (HTTP/1 `Host`, or the HTTP/2 authority).
fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Why a callback failed. Every variant but `Server` is the client's: logged, and answered
/// with a page that says only what helps the user. `Server` is ours: answered as its error.
#[derive(Debug)]
#[allow(dead_code)] // the fields are read through `Debug`, in the log line
enum CallbackFailure {
    NotAPodHost,
    BadQuery(String),
    Refused(TicketRefusal),
    Server(ApiError),
}

impl From<RedeemError> for CallbackFailure {
    fn from(e: RedeemError) -> Self {
        match e {
            RedeemError::Refused(r) => CallbackFailure::Refused(r),
            RedeemError::Mint(e) => CallbackFailure::Server(e.into()),
            RedeemError::Store(e) => CallbackFailure::Server(e.into()),
        }
    }
}

/// `GET /.podgate/callback?ticket=&next=` on a pod host.
#[utoipa::path(
    get,
    path = "/.podgate/callback",
    operation_id = "ticket_callback",
    tag = "flow",
    responses(
        (status = 200, description = "With `SameSite=Strict` capability cookies: the cookie, and a page that goes on to `next` by itself", content_type = "text/html"),
        (status = 302, description = "The capability cookie, and to `next`"),
        (status = 400, description = "A page saying the sign-in link expired, was used or was meant for another address, with a link to try again", content_type = "text/html"),
        TooMany,
    )
)]
async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    let host = request_host(&headers, &uri).unwrap_or("");
    let addr = state.config().public_hosts.parse(host).ok();
    let next = single_params(query.as_deref(), &["next"])
        .ok()
        .and_then(|p| p.get("next").map(|n| safe_next(n)))
        .unwrap_or_else(|| "/".to_owned());
    match accept_ticket(&state, addr.as_ref(), query.as_deref()).await {
        Ok(cookie) => {
            let landed = if state.config().cookie_samesite == crate::config::SameSite::Strict {
                Ok(continue_page(&next))
            } else {
                redirect(&next)
            };
            let Ok(mut resp) = landed else {
                return failure_page(&state, addr.as_ref(), &next);
            };
            match HeaderValue::from_str(&cookie) {
                Ok(v) => {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                    resp
                }
                Err(_) => failure_page(&state, addr.as_ref(), &next),
            }
        }
        Err(CallbackFailure::Server(e)) => {
            let mut resp = e.into_response();
            if let Ok(clear) = HeaderValue::from_str(&cookies::clear_capability(&state)) {
                resp.headers_mut().append(header::SET_COOKIE, clear);
            }
            no_store(&mut resp);
            resp
        }
        Err(failure) => {
            tracing::info!(?failure, host, "callback refused");
            failure_page(&state, addr.as_ref(), &next)
        }
    }
}

/// Checks the ticket and mints the capability; returns the `Set-Cookie` value.
async fn accept_ticket(
    state: &AppState,
    addr: Option<&PodAddr>,
    query: Option<&str>,
) -> Result<String, CallbackFailure> {
    let addr = addr.ok_or(CallbackFailure::NotAPodHost)?;
    let params = single_params(query, &["ticket", "next"])
        .map_err(|e| CallbackFailure::BadQuery(e.to_string()))?;
    let ticket = params
        .get("ticket")
        .ok_or(CallbackFailure::BadQuery("no ticket".into()))?;
    let cap = redeem_ticket(&state.mint_context(), addr, ticket).await?;
    Ok(cookies::capability(state, &cap))
}

/// 400 page that clears our cookie and links to a fresh attempt.
/// The callback's answer under `SameSite=Strict` capability cookies: a page that goes on to
/// `next` by itself. A browser sends a Strict cookie on no request of a navigation that began on
/// another site (the identity provider, the control plane, a link in a chat), redirects
/// included, so a `302` to `next` would arrive without the cookie just set and be sent to sign in
/// again, round and round. The page's own refresh is a navigation the pod's origin starts, which
/// carries it. (`Referrer-Policy: no-referrer`, on every answer, keeps the ticket in this page's
/// URL out of that request.)
fn continue_page(next: &str) -> Response {
    let to = html_escape::encode_quoted_attribute(next);
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"0;url={to}\"><title>Signed in</title></head>\
         <body><p>Signed in. <a href=\"{to}\">Continue</a></p></body></html>"
    );
    let mut resp = (StatusCode::OK, Html(body)).into_response();
    no_store(&mut resp);
    resp
}

fn failure_page(state: &AppState, addr: Option<&PodAddr>, next: &str) -> Response {
    let retry = match addr {
        Some(addr) => proxy_auth_url(state, addr, next),
        None => state.config().issuer.clone(),
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign-in link expired</title></head>\
         <body><h1>This sign-in link cannot be used</h1>\
         <p>It has expired, was already used, or was meant for another address.</p>\
         <p><a href=\"{}\">Try again</a></p></body></html>",
        html_escape::encode_quoted_attribute(&retry)
    );
    let mut resp = (StatusCode::BAD_REQUEST, Html(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookies::clear_capability(state)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    no_store(&mut resp);
    resp
}
