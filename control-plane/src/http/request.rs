//! What the domain reads from a request's parts: the client's address (for rate limits) and
//! the credentials the request presents.

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap};

use crate::auth::verify::Credentials;
use crate::AppState;

/// The client address for rate limits: the configured proxy header, else the TCP peer.
#[derive(Debug, Clone)]
pub struct ClientIp(pub String);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(
            state,
            &parts.headers,
            &parts.extensions,
        )))
    }
}

pub fn client_ip(state: &AppState, headers: &HeaderMap, ext: &Extensions) -> String {
    if let Some(h) = &state.config().identity.client_ip_header {
        if let Some(v) = headers.get(h.as_str()).and_then(|v| v.to_str().ok()) {
            // A list (X-Forwarded-For): the last hop is the one the trusted proxy added.
            if let Some(last) = v
                .rsplit(',')
                .next()
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                return last.chars().take(64).collect();
            }
        }
    }
    ext.get::<ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
}

/// The bearer credential of a request, if any (one `Authorization: Bearer` header).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The request's `Cookie` headers that are text, in order (the others cannot hold ours).
pub fn cookie_headers(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .collect()
}

/// The credentials a request presents, for `crate::auth::verify::identify`.
pub fn credentials(headers: &HeaderMap) -> Credentials<'_> {
    Credentials {
        bearer: bearer(headers),
        cookie_headers: cookie_headers(headers),
    }
}
