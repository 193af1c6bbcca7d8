//! The setup page, `GET /setup`, for signed-in people: the pods and ports they may reach, as
//! links, and their API tokens (create with a name and lifetime, showing the one-line install
//! command once with a copy button; list; revoke). A static page and script (`/setup.js`) over
//! the JSON API (`/api/me`, `/api/proxy-tokens`) with the session cookie; the API does every
//! check, so the page holds no data until the script fetches it. Its CSP allows that one
//! same-origin script and its fetches ([`SETUP_CSP`]), applied by `security_headers` to the
//! page only.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use podgate_protocol::redirect::encode_query_value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::shared::no_store;
use crate::AppState;

/// The setup page's CSP: its own script and fetches, inline style, nothing else.
pub const SETUP_CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Marks a response as the setup page, for `security_headers` to give it [`SETUP_CSP`].
#[derive(Debug, Clone, Copy)]
pub struct SetupPage;

const PAGE: &str = include_str!("setup.html");
const SCRIPT: &str = include_str!("setup.js");

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(script))
}

/// The sign-in URL that comes back to this page: the configured login with `next`.
fn sign_in_url(state: &AppState) -> String {
    let config = state.config();
    let back = format!("{}/setup", config.issuer);
    match config.login_url.as_deref() {
        Some(login) => {
            let sep = if login.contains('?') { '&' } else { '?' };
            format!("{login}{sep}next={}", encode_query_value(&back))
        }
        None => format!("/auth/login?next={}", encode_query_value("/setup")),
    }
}

/// `GET /setup`: the page; its script fetches everything it shows.
#[utoipa::path(
    get,
    path = "/setup",
    tag = "api-tokens",
    responses((status = 200, description = "The setup page (HTML)")),
)]
async fn page(State(state): State<AppState>) -> Response {
    let body = PAGE.replace(
        "{{SIGN_IN}}",
        &html_escape::encode_quoted_attribute(&sign_in_url(&state)),
    );
    let mut resp = Html(body).into_response();
    resp.extensions_mut().insert(SetupPage);
    no_store(&mut resp);
    resp
}

/// `GET /setup.js`: the setup page's script.
#[utoipa::path(
    get,
    path = "/setup.js",
    tag = "api-tokens",
    responses((status = 200, description = "The setup page's script")),
)]
async fn script() -> Response {
    let mut resp = SCRIPT.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    no_store(&mut resp);
    resp
}
