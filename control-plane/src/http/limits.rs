//! The abuse limits as middleware: the per-client limit of each endpoint that takes
//! credentials, and the request size bounds every request passes (see `crate::limits`).

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::limits::{MAX_HEADER_COUNT, MAX_PATH_LEN, MAX_QUERY_LEN};
use crate::http::error::{error_response, ApiError};
use crate::http::request::client_ip;
use crate::limits::{Limited, Limiters, RateLimiter};
use crate::AppState;

/// An endpoint with its own limit (API tokens are limited where they are verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ProxyAuth,
    Callback,
    Capabilities,
    Admin,
    /// `/api/proxy-renew`: only a wrong renewal secret counts (Envoy's own refused renewals
    /// must not lock every renewal out).
    Renew,
}

impl Endpoint {
    /// The endpoint's label in the metrics.
    fn label(self) -> &'static str {
        match self {
            Endpoint::ProxyAuth => "proxy_auth",
            Endpoint::Callback => "callback",
            Endpoint::Capabilities => "capabilities",
            Endpoint::Admin => "admin",
            Endpoint::Renew => "renew",
        }
    }

    fn limiter(self, l: &Limiters) -> &RateLimiter {
        match self {
            Endpoint::ProxyAuth => &l.proxy_auth,
            Endpoint::Callback => &l.callback_failures,
            Endpoint::Capabilities => &l.capability_failures,
            Endpoint::Admin => &l.admin_failures,
            Endpoint::Renew => &l.envoy_secret_failures,
        }
    }

    /// `None` when every request counts, else which answers are failures.
    fn failure(self) -> Option<fn(StatusCode) -> bool> {
        match self {
            Endpoint::ProxyAuth => None,
            Endpoint::Callback => {
                Some(|s| s.is_client_error() && s != StatusCode::TOO_MANY_REQUESTS)
            }
            Endpoint::Capabilities => Some(|s| {
                matches!(
                    s,
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
                )
            }),
            Endpoint::Admin => Some(|s| s == StatusCode::UNAUTHORIZED),
            Endpoint::Renew => Some(|s| s == StatusCode::FORBIDDEN),
        }
    }

    fn refusal(self, l: Limited) -> ApiError {
        let wait = l.retry_after_secs;
        let message = match self {
            Endpoint::ProxyAuth => format!(
                "too many sign-in requests from this address; wait {wait} s and reload the page"
            ),
            Endpoint::Callback => format!(
                "too many failed sign-in links from this address; wait {wait} s, then open the pod's address again for a fresh link"
            ),
            Endpoint::Capabilities => format!(
                "too many refused capability requests from this address; wait {wait} s and retry with valid credentials and an existing pod and port"
            ),
            Endpoint::Admin => format!(
                "too many requests with a wrong admin token from this address; wait {wait} s and retry with PODGATE_ADMIN_TOKEN"
            ),
            Endpoint::Renew => format!(
                "too many renewals with a wrong secret from this address; wait {wait} s (only Envoy's podgate filter renews, with the secret derived from the key-encryption key or PODGATE_RENEW_SECRET)"
            ),
        };
        ApiError::TooManyRequests {
            message,
            retry_after_secs: wait,
        }
    }
}

/// The per-client limit of one endpoint: `route_layer(from_fn_with_state((state, endpoint),
/// limit))`.
pub async fn limit(
    State((state, endpoint)): State<(AppState, Endpoint)>,
    req: Request,
    next: Next,
) -> Response {
    let client = client_ip(&state, req.headers(), req.extensions());
    let limiter = endpoint.limiter(state.limits());
    let failure = endpoint.failure();
    let admitted = match failure {
        None => limiter.take(&client),
        Some(_) => limiter.check(&client),
    };
    if let Err(limited) = admitted {
        tracing::warn!(
            client,
            ?endpoint,
            retry_after = limited.retry_after_secs,
            "rate limited"
        );
        state.metrics().rate_limited(endpoint.label());
        return endpoint.refusal(limited).into_response();
    }
    let resp = next.run(req).await;
    if failure.is_some_and(|is_failure| is_failure(resp.status())) {
        limiter.fail(&client);
    }
    resp
}

/// Refuses oversized requests before routing: headers, path, query, and a declared body length
/// (bodies without one are cut at the same size by `DefaultBodyLimit`).
pub async fn bounded_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limits = &state.config().limits;
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers.len() > MAX_HEADER_COUNT || header_bytes > limits.max_header_bytes {
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!(
                "the request has {} headers of {header_bytes} bytes in all; at most {MAX_HEADER_COUNT} headers and {} bytes are accepted (send fewer or smaller cookies)",
                headers.len(),
                limits.max_header_bytes
            ),
        );
    }
    let uri = req.uri();
    if uri.path().len() > MAX_PATH_LEN {
        return error_response(
            StatusCode::URI_TOO_LONG,
            &format!(
                "the path is longer than {MAX_PATH_LEN} bytes; no endpoint has such paths (see control-plane/README.md)"
            ),
        );
    }
    if uri.query().is_some_and(|q| q.len() > MAX_QUERY_LEN) {
        return error_response(
            StatusCode::URI_TOO_LONG,
            &format!(
                "the query string is longer than {MAX_QUERY_LEN} bytes; send shorter parameters (`next` is at most 2048 bytes)"
            ),
        );
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return body_too_large(limits.max_body_bytes);
    }
    next.run(req).await
}

/// 413 with the JSON error body.
pub fn body_too_large(max: usize) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!(
            "the request body is larger than {max} bytes, the most this server accepts (--max-body-bytes); send a smaller JSON body"
        ),
    )
}
