//! The answers the filter gives, one per failure, each with its status and JSON body.

use serde::Serialize;

use crate::config::PodStatus;
use crate::host::HostError;
use crate::rate::Limited;
use crate::token::TokenError;

/// The realm in `WWW-Authenticate`.
pub const REALM: &str = "podgate";

/// Why a request was not forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// 400: the host is not a pod host.
    BadHost(HostError),
    /// 400: a header the filter must read is not valid UTF-8.
    MalformedHeader(&'static str),
    /// 400: a header name is not valid UTF-8 (Envoy's codecs normally refuse these first).
    MalformedHeaderName,
    /// 400: an `Authorization` value holds one of our tokens, but not as one well-formed
    /// `Bearer <token>` credential; refused rather than guessed at, so it never reaches the pod.
    MalformedAuthorization,
    /// 401 (or a redirect for a browser page load): no capability at all.
    NoCapability { redirect: Option<String> },
    /// 401 (or a redirect): a capability that failed verification.
    InvalidCapability {
        reason: TokenError,
        redirect: Option<String>,
    },
    /// 403: a valid capability for another pod or port.
    WrongScope,
    /// 403: a cookie-authenticated WebSocket from another origin.
    CrossOriginWebSocket,
    /// 403: a cookie-authenticated state-changing request from another pod's (or a foreign)
    /// origin.
    CrossPodRequest,
    /// 403: a CORS preflight from an origin that is not one of this pod's (`cors`).
    CrossOriginPreflight,
    /// 400: a same-pod CORS preflight whose requested method or headers are malformed.
    BadPreflight,
    /// 404: the pod is not in the directory.
    UnknownPod,
    /// 400: a path a server could read two ways (`resource::classify`), on a service reached
    /// per resource; refused rather than guessed at.
    AmbiguousPath,
    /// 403: a valid capability for this service, but for another of its resources.
    WrongResource,
    /// 403: a path outside the resource pattern of a service reached per resource.
    OutsideResources,
    /// 405: `TRACE` or `TRACK` to a service: the upstream could echo the request, and with it
    /// the credential podgate injects, back to the caller.
    TraceRefused,
    /// 502: the service is published but has no usable credential now (its OAuth token cannot
    /// be had and it has no fallback); nothing is forwarded, so its upstream never gets a
    /// request without its credential.
    CredentialUnavailable,
    /// 503: the pod exists but is not running.
    NotRunning(PodStatus),
    /// 429: the user's or the pod's request rate is spent (`rate`); retry after that many
    /// seconds.
    RateLimited { scope: Limited, retry_after: u32 },
    /// 429: the user or the pod holds as many open streams as its limit allows (`concurrent`);
    /// retry after that many seconds (or once one of them ends).
    TooManyStreams { scope: Limited, retry_after: u32 },
    /// 500: the filter has no usable configuration; fail closed.
    NotConfigured,
    /// 500: a call to the proxy failed (reading the request, the clock, or applying the
    /// edits), or the proxy handed over a header map that does not decode; fail closed.
    HostCallFailed,
    /// 401: an API token that is malformed, unknown, revoked or expired (`exchange`).
    ApiTokenRefused,
    /// 403: the API token's owner may not reach this pod and port.
    ApiTokenNotAllowed,
    /// 429: too many API-token exchanges at once; retry after that many seconds.
    ExchangeBusy(u32),
    /// 503: the control plane gave no usable answer to an API-token exchange; fail closed.
    ExchangeFailed,
}

#[derive(Serialize)]
struct Body<'a> {
    error: String,
    /// A stable code for scripts, on the answers that carry one.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'a str>,
}

/// A fully formed local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Short reason for Envoy's response details and our metrics.
    pub reason: &'static str,
}

impl Denial {
    /// Metric suffix and response detail: one per row of the answers table.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::BadHost(_) => "bad_host",
            Denial::MalformedHeader(_) | Denial::MalformedHeaderName => "malformed_header",
            Denial::MalformedAuthorization => "malformed_authorization",
            Denial::NoCapability { .. } => "no_capability",
            Denial::InvalidCapability { .. } => "invalid_capability",
            Denial::WrongScope => "wrong_scope",
            Denial::CrossOriginWebSocket => "cross_origin_websocket",
            Denial::CrossPodRequest => "cross_pod_request",
            Denial::CrossOriginPreflight => "cross_origin_preflight",
            Denial::BadPreflight => "bad_preflight",
            Denial::UnknownPod => "unknown_pod",
            Denial::AmbiguousPath => "ambiguous_path",
            Denial::WrongResource => "wrong_resource",
            Denial::OutsideResources => "outside_resources",
            Denial::TraceRefused => "trace_refused",
            Denial::CredentialUnavailable => "upstream_credential_unavailable",
            Denial::NotRunning(_) => "pod_not_running",
            Denial::RateLimited { .. } => "rate_limited",
            Denial::TooManyStreams { .. } => "too_many_streams",
            Denial::NotConfigured => "not_configured",
            Denial::HostCallFailed => "host_error",
            Denial::ApiTokenRefused => "api_token_refused",
            Denial::ApiTokenNotAllowed => "api_token_not_allowed",
            Denial::ExchangeBusy(_) => "exchange_busy",
            Denial::ExchangeFailed => "exchange_failed",
        }
    }

    /// Every reason, for defining metrics up front.
    pub const ALL_REASONS: [&'static str; 25] = [
        "bad_host",
        "malformed_header",
        "malformed_authorization",
        "no_capability",
        "invalid_capability",
        "wrong_scope",
        "cross_origin_websocket",
        "cross_pod_request",
        "cross_origin_preflight",
        "bad_preflight",
        "unknown_pod",
        "ambiguous_path",
        "wrong_resource",
        "outside_resources",
        "trace_refused",
        "upstream_credential_unavailable",
        "pod_not_running",
        "rate_limited",
        "too_many_streams",
        "not_configured",
        "host_error",
        "api_token_refused",
        "api_token_not_allowed",
        "exchange_busy",
        "exchange_failed",
    ];

    /// Builds the local reply.
    pub fn reply(&self) -> Reply {
        let (status, error, hint): (u32, String, Option<&str>) = match self {
            Denial::BadHost(e) => (
                400,
                format!("Not a pod host: {e}"),
                Some("use https://localhost-{port}-pod-{pod}.{domain}/ as given by podgate"),
            ),
            Denial::MalformedHeader(name) => (
                400,
                format!("Malformed request: the {name} header is not valid UTF-8"),
                None,
            ),
            Denial::MalformedHeaderName => (
                400,
                "Malformed request: a header name is not valid UTF-8".into(),
                None,
            ),
            Denial::MalformedAuthorization => (
                400,
                "Malformed Authorization header: it carries a podgate token, but not as one 'Bearer <token>' credential".into(),
                Some("send exactly 'Authorization: Bearer <token>' (the scheme, one space, the bare token: no quotes, tabs or other words), or the token alone as 'podgate-token: <token>'"),
            ),
            Denial::NoCapability { .. } => (
                401,
                "No capability: sign in through podgate or send a capability token".into(),
                Some("send the token from POST /v1/capabilities as 'podgate-token: <token>' or 'Authorization: Bearer <token>'"),
            ),
            Denial::InvalidCapability { reason, .. } => (
                401,
                format!("Invalid capability: {reason}"),
                Some(if *reason == TokenError::NotYetValid {
                    "the control plane's clock is ahead of this proxy's by more than the leeway: make both keep time (NTP), then sign in again"
                } else {
                    "get a fresh token from POST /v1/capabilities or reload the page"
                }),
            ),
            Denial::WrongScope => (
                403,
                "This capability is for another pod or port".into(),
                Some("get a capability for this pod and port"),
            ),
            Denial::CrossOriginWebSocket => (
                403,
                "WebSocket refused: Origin is not this pod's own origin".into(),
                Some("open WebSockets from pages served by this pod host, or authenticate with a header token"),
            ),
            Denial::CrossPodRequest => (
                403,
                "Refused: a state-changing request from another origin with this pod's cookie".into(),
                Some("call this pod from its own pages, or authenticate with a header token"),
            ),
            Denial::CrossOriginPreflight => (
                403,
                "CORS preflight refused: only this pod's own origins may call it".into(),
                Some("call this pod from pages served by one of its own ports"),
            ),
            Denial::BadPreflight => (
                400,
                "Malformed CORS preflight: Access-Control-Request-Method or -Headers is not a list of tokens".into(),
                None,
            ),
            Denial::UnknownPod => (404, "Pod not found".into(), None),
            Denial::AmbiguousPath => (
                400,
                "Refused: the path has a segment servers read differently (`.`, `..`, an empty segment, `;`, `\\`, or an encoded `/`, `\\`, `.`, `%`, `;`)".into(),
                Some("send the path in its plain form, e.g. /sessions/abc/events"),
            ),
            Denial::WrongResource => (
                403,
                "This capability is for another resource of this service".into(),
                Some("get a capability for this resource (POST /v1/capabilities with `resource`), or open it in the browser"),
            ),
            Denial::OutsideResources => (
                403,
                "This service is reached per resource, and this path is under none".into(),
                Some("use a path under the service's resource pattern, e.g. /sessions/{id}/..."),
            ),
            Denial::TraceRefused => (
                405,
                "TRACE is not forwarded to services: the upstream could echo back the credential podgate adds".into(),
                Some("use another method; TRACE and TRACK are refused on service hosts"),
            ),
            Denial::CredentialUnavailable => (
                502,
                "The service's upstream credential is unavailable; nothing is forwarded".into(),
                Some("retry later; if it lasts, ask an admin to check the service's credential (GET /v1/services/{name}/credential/status)"),
            ),
            Denial::NotRunning(status) => (
                503,
                format!("Pod is not running (status: {})", status.as_str()),
                None,
            ),
            Denial::RateLimited { scope, retry_after } => (
                429,
                format!(
                    "Too many requests: {} request rate is spent; retry in {retry_after} s",
                    match scope {
                        Limited::User => "your",
                        Limited::Pod => "this pod's",
                    }
                ),
                Some("slow down; wait for Retry-After seconds before the next request"),
            ),
            Denial::TooManyStreams { scope, retry_after } => (
                429,
                format!(
                    "Too many open connections: {} open requests and WebSockets are at the limit; retry in {retry_after} s",
                    match scope {
                        Limited::User => "your",
                        Limited::Pod => "this pod's",
                    }
                ),
                Some("close a WebSocket or wait for a request to finish, then retry"),
            ),
            Denial::NotConfigured => (
                500,
                "podgate is not configured; nothing is forwarded".into(),
                None,
            ),
            Denial::HostCallFailed => (
                500,
                "podgate internal error: the proxy failed to hand over or edit the request; nothing is forwarded".into(),
                None,
            ),
            Denial::ApiTokenRefused => (
                401,
                "Invalid API token: malformed, unknown, revoked or expired".into(),
                Some("create an API token with POST /api/proxy-tokens while signed in, and send it as 'Authorization: Bearer pg_...'"),
            ),
            Denial::ApiTokenNotAllowed => (
                403,
                "This API token's owner may not reach this pod and port".into(),
                Some("use a token of a user who may reach this pod"),
            ),
            Denial::ExchangeBusy(_) => (
                429,
                "Too many API-token requests at once; retry shortly".into(),
                None,
            ),
            Denial::ExchangeFailed => (
                503,
                "podgate could not check the API token with the control plane; nothing is forwarded".into(),
                Some("retry shortly"),
            ),
        };
        let redirect = match self {
            Denial::NoCapability { redirect } | Denial::InvalidCapability { redirect, .. } => {
                redirect.as_ref()
            }
            _ => None,
        };
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("cache-control", "no-store".to_owned()),
        ];
        if let Some(location) = redirect {
            headers.push(("location", location.clone()));
            headers.push(("referrer-policy", "no-referrer".to_owned()));
            let body = serde_json::json!({"error": error, "location": location}).to_string();
            return Reply {
                status: 302,
                headers,
                body,
                reason: self.reason(),
            };
        }
        match self {
            Denial::ExchangeBusy(secs) => headers.push(("retry-after", secs.to_string())),
            Denial::ExchangeFailed => headers.push(("retry-after", "1".to_owned())),
            Denial::TraceRefused => headers.push((
                "allow",
                "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS".to_owned(),
            )),
            Denial::RateLimited { retry_after, .. }
            | Denial::TooManyStreams { retry_after, .. } => {
                headers.push(("retry-after", retry_after.to_string()))
            }
            _ => {}
        }
        if status == 401 {
            let err = match self {
                Denial::InvalidCapability { .. } | Denial::ApiTokenRefused => {
                    ", error=\"invalid_token\""
                }
                _ => "",
            };
            headers.push(("www-authenticate", format!("Bearer realm=\"{REALM}\"{err}")));
        }
        let code = match self {
            Denial::CredentialUnavailable | Denial::TraceRefused => Some(self.reason()),
            _ => None,
        };
        let body = serde_json::to_string(&Body { error, code, hint })
            .unwrap_or_else(|_| String::from("{\"error\":\"denied\"}"));
        Reply {
            status,
            headers,
            body,
            reason: self.reason(),
        }
    }
}
