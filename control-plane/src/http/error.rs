//! The one error type of the HTTP API. Client errors say what is wrong and how to fix it;
//! internal errors are logged with their context and answered with a generic message. The
//! domain's error types are turned into it here, and only here.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::identity::SessionError;
use crate::auth::verify::IdentifyError;
use crate::authz::{AuthzError, NOT_FOUND_MSG};
use crate::keys::{KeyringError, NoKeyRing};
use crate::limits::Limited;
use crate::mint::MintError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a value is invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// No or wrong credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Refused, with what to do about it (403, `{error, hint}`).
    #[error("{message}")]
    Forbidden { message: String, hint: String },
    /// Not there, or not yours to see: the same answer for both (404).
    #[error("{0}")]
    NotFound(String),
    /// Already exists, or still referenced (409).
    #[error("{0}")]
    Conflict(String),
    /// A dependency (database, keys) is not ready (503).
    #[error("{0}")]
    Unavailable(String),
    /// Too many requests, or too many failed attempts, from this client (429).
    #[error("{message}")]
    TooManyRequests {
        message: String,
        /// Seconds until the client's bucket has a token again (`Retry-After`).
        retry_after_secs: u64,
    },
    /// The request body is larger than this server accepts (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A service we depend on (the main app's session endpoint) failed or did not answer (502).
    #[error("{0}")]
    BadGateway(String),
    /// A bug or an outage; the context is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A bad id is the client's to fix (400).
impl From<crate::ids::InvalidId> for ApiError {
    fn from(e: crate::ids::InvalidId) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiError::NotFound(msg.into())
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        ApiError::Conflict(msg.into())
    }
    pub fn internal(context: impl Into<String>) -> Self {
        ApiError::Internal(context.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body of every error answer, as the OpenAPI document describes it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What is wrong and how to fix it (a generic message for an internal error).
    pub error: String,
}

/// A JSON error body `{"error": "..."}` with `Cache-Control: no-store`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let mut resp = (status, Json(json!({ "error": message }))).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(context) => {
                tracing::error!(error = %context, "internal error");
                error_response(status, "internal error; the server log has the details")
            }
            ApiError::Unavailable(context) => {
                tracing::warn!(error = %context, "unavailable");
                error_response(status, context)
            }
            ApiError::Unauthorized(msg) => {
                let mut resp = error_response(status, msg);
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"podgate\""),
                );
                resp
            }
            ApiError::Forbidden { message, hint } => {
                let mut resp =
                    (status, Json(json!({ "error": message, "hint": hint }))).into_response();
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                resp
            }
            ApiError::BadRequest(msg)
            | ApiError::NotFound(msg)
            | ApiError::Conflict(msg)
            | ApiError::PayloadTooLarge(msg) => error_response(status, msg),
            ApiError::TooManyRequests {
                message,
                retry_after_secs,
            } => {
                let mut resp = error_response(status, message);
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from((*retry_after_secs).max(1)),
                );
                resp
            }
            ApiError::BadGateway(msg) => {
                tracing::warn!(error = %msg, "dependency failed");
                error_response(status, msg)
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            let kind = if crate::store::is_foreign_key_violation(&e) {
                sqlx::error::ErrorKind::ForeignKeyViolation
            } else {
                db.kind()
            };
            match kind {
                sqlx::error::ErrorKind::UniqueViolation => {
                    return ApiError::conflict(
                        "a record with this id (or email) already exists; pick another or update the existing one",
                    )
                }
                sqlx::error::ErrorKind::ForeignKeyViolation => {
                    return ApiError::conflict(
                        "this refers to a record that does not exist, or is still referred to (e.g. a user who owns pods, a server that runs pods); create it first, or delete or reassign what refers to it",
                    )
                }
                sqlx::error::ErrorKind::CheckViolation => {
                    return ApiError::bad("a value is outside what the database accepts; check enumerations and port ranges")
                }
                _ => {}
            }
        }
        if matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) {
            return ApiError::Unavailable(
                "the database is not reachable; try again shortly".into(),
            );
        }
        ApiError::Internal(format!("database: {e}"))
    }
}

/// The database as any other database error (503 when it cannot be reached); randomness or key
/// material failed: ours, logged, never echoed (500).
impl From<KeyringError> for ApiError {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::Db(e) => e.into(),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

/// No key ring yet: try again shortly (503); a poisoned lock is a bug (500).
impl From<NoKeyRing> for ApiError {
    fn from(e: NoKeyRing) -> Self {
        match e {
            NoKeyRing::NotLoaded => ApiError::Unavailable(e.to_string()),
            NoKeyRing::Poisoned => ApiError::Internal(e.to_string()),
        }
    }
}

/// A provider whose keys cannot be fetched is a 503 (the token may be fine), a main app that
/// does not answer a 502, a flood of bad API tokens a 429.
impl From<IdentifyError> for ApiError {
    fn from(e: IdentifyError) -> Self {
        match e {
            IdentifyError::ProviderUnavailable(msg) => ApiError::Unavailable(msg),
            IdentifyError::AppSessionFailed(msg) => ApiError::BadGateway(msg),
            IdentifyError::TooManyApiTokenFailures(Limited { retry_after_secs }) => {
                ApiError::TooManyRequests {
                    message: format!(
                        "too many failed API-token attempts from this address; wait {retry_after_secs} s and retry with a valid token"
                    ),
                    retry_after_secs,
                }
            }
            IdentifyError::LinkVanished => ApiError::Internal(e.to_string()),
            IdentifyError::Store(e) => e.into(),
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Random(e) => e.into(),
            SessionError::Store(e) => e.into(),
        }
    }
}

/// "No such pod or port" and "not yours" are the same 404: no existence oracle.
impl From<AuthzError> for ApiError {
    fn from(e: AuthzError) -> Self {
        match e {
            AuthzError::NotFound => ApiError::not_found(NOT_FOUND_MSG),
            AuthzError::NotYourResource => ApiError::Forbidden {
                message: crate::authz::RESOURCE_MSG.into(),
                hint: crate::authz::RESOURCE_HINT.into(),
            },
            AuthzError::Store(e) => e.into(),
        }
    }
}

/// Minting fails only on our side: 503 without keys, else 500.
impl From<MintError> for ApiError {
    fn from(e: MintError) -> Self {
        match e {
            MintError::NoKeys(e) => e.into(),
            MintError::Random(e) => e.into(),
            MintError::Sign { .. } | MintError::Record(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::bad(
                "the body must be JSON; send `Content-Type: application/json`",
            ),
            // A body without `Content-Length` cut at `DefaultBodyLimit` (a declared length over
            // it never gets this far: `limits::bounded_request` answers first, with the number).
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(
                "the request body is larger than this server accepts (--max-body-bytes, 16384 bytes by default); send a smaller JSON body".into(),
            ),
            other => ApiError::bad(format!(
                "the JSON body is not valid: {}; check field names and types against the API reference",
                other.body_text()
            )),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad(format!(
            "the query string is not valid: {}; check parameter names, each given once, and \
             their types against the API reference (GET /openapi.json)",
            r.body_text()
        ))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        let text = r.body_text();
        let hint = if text.contains("`u16`") {
            "a port is a number from 1 to 65535"
        } else {
            "check each part of it against the API reference (GET /openapi.json)"
        };
        ApiError::bad(format!("the path is not valid: {text}; {hint}"))
    }
}

/// `Json` whose rejection is an [`ApiError`] (JSON body, says how to fix it).
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

/// `Query` whose rejection is an [`ApiError`].
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryArgs<T>(pub T);

/// `Path` whose rejection is an [`ApiError`].
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct PathArgs<T>(pub T);
