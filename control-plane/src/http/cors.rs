//! CORS for browser apps: origins listed in `cors_origins` may call `POST /v1/capabilities`
//! (with an ID token as bearer, or their cookies) and the API-token endpoints from the page
//! itself. Every other origin gets no CORS headers, so browsers keep the answers from it;
//! preflights from them are refused.
//!
//! Hand-written rather than `tower_http::cors::CorsLayer`: that layer answers every preflight
//! itself with 200, where a refused origin here gets 403 with the JSON error body saying which
//! setting to change, and an allowed one 204.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::error::error_response;
use crate::AppState;

fn covered(path: &str) -> bool {
    path == "/v1/capabilities"
        || path == "/api/proxy-tokens"
        || path.starts_with("/api/proxy-tokens/")
}

fn allow(resp: &mut Response, origin: &HeaderValue) {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !covered(req.uri().path()) {
        return next.run(req).await;
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin.as_ref().filter(|o| {
        o.to_str()
            .is_ok_and(|o| state.config().identity.cors_origins.iter().any(|c| c == o))
    });
    if req.method() == Method::OPTIONS {
        let Some(origin) = allowed else {
            return error_response(
                StatusCode::FORBIDDEN,
                "this origin may not call the control plane from a browser; add it to PODGATE_CORS_ORIGINS",
            );
        };
        let mut resp = StatusCode::NO_CONTENT.into_response();
        allow(&mut resp, origin);
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return resp;
    }
    let allowed = allowed.cloned();
    let mut resp = next.run(req).await;
    if let Some(origin) = allowed {
        allow(&mut resp, &origin);
    }
    resp
}
