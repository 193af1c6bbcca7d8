//! Who is asking: every identity verifier, tried in one defined order, each rejection logged.
//!
//! | order | credential | verifier | `/api/proxy-auth` | `/v1/capabilities` | `/api/proxy-tokens` |
//! |---|---|---|---|---|---|
//! | 1 | `Authorization: Bearer pg_…` | API token | – | yes | revoke itself only |
//! | 2 | `Authorization: Bearer <JWT>` | OIDC ID token (its `iss` picks the issuer) | – | yes | yes |
//! | 3 | `podgate_session` cookie | control-plane session (dev login) | yes | yes | yes |
//! | 4 | each `[[oidc]]` `cookie` | OIDC ID token of that issuer | yes | yes | yes |
//! | 5 | the main app's session cookie | main-app session endpoint | yes | yes | yes |
//!
//! The first verifier that accepts wins. When none accepts but one rejected a credential, the
//! first rejection is the answer (401 with its reason) where credentials are required; the page
//! flow treats it as "not signed in" and sends the browser to the login page. A main app that
//! does not answer is a 502, an identity provider whose keys cannot be fetched to check a token
//! a 503 (try again; the token may be fine), a flood of bad API tokens a 429.
//!
//! People seen for the first time through an OIDC issuer or the main app's session are created
//! just in time, linked by (verifier, subject) in `user_identities`.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::auth::app_session::{AppSessionError, AppSessionVerifier};
use crate::auth::oidc::{OidcError, OidcVerifier};
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::store::{now_unix, User};
use crate::AppState;

/// Which credentials an endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Browser page flows (`/api/proxy-auth`): cookies only.
    Browser,
    /// Minting for scripts, SDKs and browser apps (`/v1/capabilities`): everything.
    Api,
    /// Managing API tokens: everything but API tokens (a leaked token cannot mint more).
    Manage,
}

/// How the user was recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The control plane's own session; `sid` is the session id claim its capabilities carry.
    Session {
        sid: String,
    },
    /// An ID token; `cookie` when it came from the provider's cookie.
    Oidc {
        provider: String,
        cookie: bool,
    },
    AppSession,
    ApiToken {
        id: String,
    },
}

impl Via {
    /// Short label for logs and the mint audit (`via`).
    pub fn label(&self) -> String {
        match self {
            Via::Session { .. } => "session".into(),
            Via::Oidc { provider, .. } => format!("oidc:{provider}"),
            Via::AppSession => crate::auth::app_session::VERIFIER.into(),
            Via::ApiToken { id } => format!("api-token:{id}"),
        }
    }
    /// The API token's id when the credential is one (recorded with what it mints, so revoking
    /// the token revokes those capabilities too).
    pub fn api_token_id(&self) -> Option<&str> {
        match self {
            Via::ApiToken { id } => Some(id),
            _ => None,
        }
    }
    /// The control-plane session this credential is, if it is one: what a capability minted
    /// with it names as its `sid`, so that signing out cuts it off.
    pub fn session_id(&self) -> Option<&str> {
        match self {
            Via::Session { sid } => Some(sid),
            _ => None,
        }
    }
    /// Whether the credential is a cookie (the browser sends it by itself: CSRF matters).
    pub fn is_cookie(&self) -> bool {
        matches!(
            self,
            Via::Session { .. } | Via::AppSession | Via::Oidc { cookie: true, .. }
        )
    }
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub user: User,
    pub via: Via,
}

/// The result of trying the verifiers.
#[derive(Debug, Default)]
pub struct Outcome {
    pub identity: Option<Identity>,
    /// The first rejection, when a credential was presented and refused.
    pub rejection: Option<String>,
}

/// The verifiers' state: issuers' key caches, the main-app session cache (API-token failures
/// are limited in `limits.rs`).
#[derive(Debug)]
pub struct Verifiers {
    pub oidc: OidcVerifier,
    pub app_session: Option<AppSessionVerifier>,
    /// Last `last_used_at` write per API token (throttles the writes).
    touched: Mutex<HashMap<String, i64>>,
}

pub use crate::auth::api_tokens::LAST_USED_EVERY_SECS;

impl Verifiers {
    pub fn new(config: &Config) -> Result<Verifiers, String> {
        let id = &config.identity;
        Ok(Verifiers {
            oidc: OidcVerifier::new(&id.oidc)?,
            app_session: id
                .app_session
                .clone()
                .map(AppSessionVerifier::new)
                .transpose()?,
            touched: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `last_used_at` of token `id` should be written now (at most once a minute per
    /// token per process; the row's own value is checked too by the caller).
    pub fn should_touch(&self, id: &str, now: i64) -> bool {
        let Ok(mut map) = self.touched.lock() else {
            return false;
        };
        if map.len() > 100_000 {
            map.retain(|_, t| now - *t < LAST_USED_EVERY_SECS);
        }
        match map.get(id) {
            Some(t) if now - *t < LAST_USED_EVERY_SECS => false,
            _ => {
                map.insert(id.to_owned(), now);
                true
            }
        }
    }
}

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

pub fn client_ip(state: &AppState, headers: &HeaderMap, ext: &axum::http::Extensions) -> String {
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

fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for h in headers.get_all(header::COOKIE) {
        if let Ok(h) = h.to_str() {
            out.extend(podgate_protocol::cookie::find_all(h, name).take(4));
        }
    }
    out
}

fn reject(outcome: &mut Outcome, verifier: &str, msg: String) {
    tracing::info!(verifier, reason = %msg, "identity verifier rejected the request's credential");
    if outcome.rejection.is_none() {
        outcome.rejection = Some(msg);
    }
}

/// Tries the verifiers `accept` allows, in the defined order.
pub async fn identify(
    state: &AppState,
    headers: &HeaderMap,
    client: &str,
    accept: Accept,
) -> ApiResult<Outcome> {
    let mut outcome = Outcome::default();
    let v = state.verifiers();
    let now = now_unix();

    if accept != Accept::Browser {
        if let Some(token) = bearer(headers) {
            if crate::auth::api_tokens::looks_like_api_token(token) {
                // Under `Manage` the handler decides what a token may do (revoke itself only).
                match crate::auth::api_tokens::verify(state, token, client, now).await? {
                    Ok((user, id)) => {
                        outcome.identity = Some(Identity {
                            user,
                            via: Via::ApiToken { id },
                        });
                        return Ok(outcome);
                    }
                    Err(msg) => reject(&mut outcome, "api-token", msg),
                }
            } else if v.oidc.is_empty() {
                reject(
                    &mut outcome,
                    "oidc",
                    "the bearer token is neither a podgate API token (pg_…) nor an ID token of a configured identity provider (none is configured)".into(),
                );
            } else {
                match v.oidc.verify_any(token, now).await {
                    Ok(c) => {
                        let provider = c.verifier.trim_start_matches("oidc:").to_owned();
                        let user =
                            provision(state, &c.verifier, &c.subject, c.email, &c.user_prefix)
                                .await?;
                        outcome.identity = Some(Identity {
                            user,
                            via: Via::Oidc {
                                provider,
                                cookie: false,
                            },
                        });
                        return Ok(outcome);
                    }
                    Err(OidcError::Rejected(msg)) => reject(&mut outcome, "oidc", msg),
                    Err(OidcError::Upstream(msg)) => return Err(ApiError::Unavailable(msg)),
                }
            }
        }
    }

    if let Some((user, sid)) = crate::auth::identity::current_session(state, headers).await? {
        outcome.identity = Some(Identity {
            user,
            via: Via::Session { sid },
        });
        return Ok(outcome);
    }

    for (index, cookie) in v.oidc.cookies() {
        for value in cookie_values(headers, cookie) {
            match v.oidc.verify_for(index, value, now).await {
                Ok(c) => {
                    let user =
                        provision(state, &c.verifier, &c.subject, c.email, &c.user_prefix).await?;
                    outcome.identity = Some(Identity {
                        user,
                        via: Via::Oidc {
                            provider: v.oidc.provider_name(index).to_owned(),
                            cookie: true,
                        },
                    });
                    return Ok(outcome);
                }
                Err(OidcError::Rejected(msg)) => reject(
                    &mut outcome,
                    &format!("oidc:{}", v.oidc.provider_name(index)),
                    msg,
                ),
                Err(OidcError::Upstream(msg)) => return Err(ApiError::Unavailable(msg)),
            }
        }
    }

    if let Some(app) = &v.app_session {
        match app.verify(headers).await {
            Ok(Some(u)) => {
                let prefix = state
                    .config()
                    .identity
                    .app_session
                    .as_ref()
                    .map_or("", |a| a.user_prefix.as_str())
                    .to_owned();
                let user = provision(
                    state,
                    crate::auth::app_session::VERIFIER,
                    &u.subject,
                    u.email,
                    &prefix,
                )
                .await?;
                outcome.identity = Some(Identity {
                    user,
                    via: Via::AppSession,
                });
                return Ok(outcome);
            }
            Ok(None) => {}
            Err(AppSessionError::Rejected(msg)) => {
                reject(&mut outcome, crate::auth::app_session::VERIFIER, msg)
            }
            Err(AppSessionError::Upstream(msg)) => {
                tracing::warn!(verifier = crate::auth::app_session::VERIFIER, error = %msg, "the main app's session endpoint failed");
                return Err(ApiError::BadGateway(msg));
            }
        }
    }
    Ok(outcome)
}

/// The signed-in browser user of a page flow, or `None` (rejections are logged and mean "not
/// signed in": the browser goes to the login page).
pub async fn browser_user(state: &AppState, headers: &HeaderMap) -> ApiResult<Option<User>> {
    Ok(browser_identity(state, headers).await?.map(|i| i.user))
}

/// [`browser_user`], with how they were recognised (their session, for the `sid` claim).
pub async fn browser_identity(
    state: &AppState,
    headers: &HeaderMap,
) -> ApiResult<Option<Identity>> {
    Ok(identify(state, headers, "", Accept::Browser)
        .await?
        .identity)
}

/// The user id given to someone first seen as `subject` at `verifier`: the subject itself (with
/// the verifier's prefix) when it is a valid podgate id, so an admin can create users with the
/// provider's ids beforehand; otherwise a stable hash of verifier and subject.
pub fn user_id_for(verifier: &str, subject: &str, prefix: &str) -> String {
    let direct = format!("{prefix}{subject}");
    if crate::ids::check_id(&direct, "user").is_ok() {
        return direct;
    }
    let digest = Sha256::digest(format!("{verifier}\n{subject}").as_bytes());
    format!("{prefix}u-{}", &hex::encode(digest)[..32])
}

/// The user linked to `subject` at `verifier`, created on first sight.
pub async fn provision(
    state: &AppState,
    verifier: &str,
    subject: &str,
    email: Option<String>,
    prefix: &str,
) -> ApiResult<User> {
    let db = state.db();
    if let Some(user) = db.identity_user(verifier, subject).await? {
        return Ok(user);
    }
    let candidate = User {
        id: user_id_for(verifier, subject, prefix),
        name: email.clone().unwrap_or_default(),
        email,
        created_at: now_unix(),
    };
    let user = db
        .link_identity(verifier, subject, &candidate)
        .await?
        .ok_or_else(|| ApiError::internal("a linked identity vanished"))?;
    tracing::info!(user = %user.id, verifier, "first sign-in through this verifier: user linked");
    Ok(user)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert_eq!(user_id_for("oidc:firebase", "abcDEF123", ""), "abcDEF123");
        assert_eq!(user_id_for("oidc:g", "123", "g-"), "g-123");
        let hashed = user_id_for("oidc:auth0", "auth0|5f1", "");
        assert!(hashed.starts_with("u-") && hashed.len() == 34, "{hashed}");
        assert_eq!(hashed, user_id_for("oidc:auth0", "auth0|5f1", ""));
        assert_ne!(hashed, user_id_for("oidc:other", "auth0|5f1", ""));
        assert!(user_id_for("app-session", "anonymous", "").starts_with("u-"));
    }
}
