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

use sha2::{Digest, Sha256};

use crate::auth::api_tokens::{ApiTokenCheck, ApiTokenError, LastUseWrites};
use crate::auth::app_session::{AppSessionError, AppSessionVerifier};
use crate::auth::oidc::{OidcError, OidcVerifier};
use crate::config::Config;
use crate::limits::{Limited, RateLimiter};
use crate::metrics::Metrics;
use crate::mint::ByApiToken;
use crate::store::{now_unix, Db, User};

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
        /// Unix seconds.
        expires_at: i64,
    },
}

impl Via {
    /// Short label for logs and the mint audit (`via`).
    pub fn label(&self) -> String {
        match self {
            Via::Session { .. } => "session".into(),
            Via::Oidc { provider, .. } => format!("oidc:{provider}"),
            Via::AppSession => crate::auth::app_session::VERIFIER.into(),
            Via::ApiToken { id, .. } => format!("api-token:{id}"),
        }
    }
    /// The API token when the credential is one: recorded with what it mints, so revoking the
    /// token revokes those capabilities too, and what it mints ends when it does.
    pub fn api_token(&self) -> Option<ByApiToken> {
        match self {
            Via::ApiToken { id, expires_at } => Some(ByApiToken {
                id: id.clone(),
                expires_at: *expires_at,
            }),
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

/// The verifiers' state: issuers' key caches, the main-app session cache, and when each API
/// token's last use was written (API-token failures are limited in `limits.rs`).
#[derive(Debug)]
pub struct Verifiers {
    pub oidc: OidcVerifier,
    pub app_session: Option<AppSessionVerifier>,
    pub api_token_uses: LastUseWrites,
}

impl Verifiers {
    pub fn new(config: &Config, metrics: &Metrics) -> Result<Verifiers, String> {
        let id = &config.identity;
        Ok(Verifiers {
            oidc: OidcVerifier::new(&id.oidc, metrics.clone())?,
            app_session: id
                .app_session
                .clone()
                .map(AppSessionVerifier::new)
                .transpose()?,
            api_token_uses: LastUseWrites::default(),
        })
    }
}

/// What [`identify`] reads besides the request: the database, the verifiers, the limit of failed
/// API-token attempts and the name of the control plane's session cookie.
#[derive(Debug, Clone, Copy)]
pub struct IdentifyContext<'a> {
    pub db: &'a Db,
    pub verifiers: &'a Verifiers,
    pub api_token_failures: &'a RateLimiter,
    pub session_cookie: &'a str,
}

/// The credentials a request presents, read from its headers by the HTTP layer.
#[derive(Debug, Clone, Default)]
pub struct Credentials<'a> {
    /// The value of its `Authorization: Bearer` header, if any.
    pub bearer: Option<&'a str>,
    /// Its `Cookie` headers that are text, in order.
    pub cookie_headers: Vec<&'a str>,
}

impl<'a> Credentials<'a> {
    /// The values of cookie `name`, at most four per header.
    fn cookies(&self, name: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        for h in &self.cookie_headers {
            out.extend(podgate_protocol::cookie::find_all(h, name).take(4));
        }
        out
    }
}

/// Why the caller could not be identified at all (a credential a verifier refuses is no error:
/// it is [`Outcome::rejection`]).
#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    /// An identity provider's keys could not be fetched to check a token (try again).
    #[error("{0}")]
    ProviderUnavailable(String),
    /// The main app's session endpoint failed or did not answer.
    #[error("{0}")]
    AppSessionFailed(String),
    /// Too many failed API-token attempts from this client.
    #[error("too many failed API-token attempts; retry in {} s", .0.retry_after_secs)]
    TooManyApiTokenFailures(Limited),
    /// A linked identity was not there right after it was linked.
    #[error("a linked identity vanished")]
    LinkVanished,
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

impl From<ApiTokenError> for IdentifyError {
    fn from(e: ApiTokenError) -> Self {
        match e {
            ApiTokenError::TooManyFailures(limited) => {
                IdentifyError::TooManyApiTokenFailures(limited)
            }
            ApiTokenError::Store(e) => IdentifyError::Store(e),
        }
    }
}

fn reject(outcome: &mut Outcome, verifier: &str, msg: String) {
    tracing::info!(verifier, reason = %msg, "identity verifier rejected the request's credential");
    if outcome.rejection.is_none() {
        outcome.rejection = Some(msg);
    }
}

/// Tries the verifiers `accept` allows on the credentials `client` presents, in the defined
/// order.
pub async fn identify(
    ctx: &IdentifyContext<'_>,
    credentials: &Credentials<'_>,
    client: &str,
    accept: Accept,
) -> Result<Outcome, IdentifyError> {
    let mut outcome = Outcome::default();
    let v = ctx.verifiers;
    let now = now_unix();

    if accept != Accept::Browser {
        if let Some(token) = credentials.bearer {
            if crate::auth::api_tokens::looks_like_api_token(token) {
                // Under `Manage` the handler decides what a token may do (revoke itself only).
                let check = crate::auth::api_tokens::verify(
                    ctx.db,
                    ctx.api_token_failures,
                    &v.api_token_uses,
                    token,
                    client,
                    now,
                )
                .await?;
                match check {
                    ApiTokenCheck::Accepted {
                        user,
                        id,
                        expires_at,
                    } => {
                        outcome.identity = Some(Identity {
                            user,
                            via: Via::ApiToken { id, expires_at },
                        });
                        return Ok(outcome);
                    }
                    ApiTokenCheck::Refused(msg) => reject(&mut outcome, "api-token", msg),
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
                            provision(ctx.db, &c.verifier, &c.subject, c.email, &c.user_prefix)
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
                    Err(OidcError::Upstream(msg)) => {
                        return Err(IdentifyError::ProviderUnavailable(msg))
                    }
                }
            }
        }
    }

    let session = crate::auth::identity::current_session(
        ctx.db,
        ctx.session_cookie,
        &credentials.cookie_headers,
    )
    .await?;
    if let Some((user, sid)) = session {
        outcome.identity = Some(Identity {
            user,
            via: Via::Session { sid },
        });
        return Ok(outcome);
    }

    for (index, cookie) in v.oidc.cookies() {
        for value in credentials.cookies(cookie) {
            match v.oidc.verify_for(index, value, now).await {
                Ok(c) => {
                    let user =
                        provision(ctx.db, &c.verifier, &c.subject, c.email, &c.user_prefix).await?;
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
                Err(OidcError::Upstream(msg)) => {
                    return Err(IdentifyError::ProviderUnavailable(msg))
                }
            }
        }
    }

    if let Some(app) = &v.app_session {
        match app.verify(&credentials.cookie_headers).await {
            Ok(Some(u)) => {
                let user = provision(
                    ctx.db,
                    crate::auth::app_session::VERIFIER,
                    &u.subject,
                    u.email,
                    app.user_prefix(),
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
                return Err(IdentifyError::AppSessionFailed(msg));
            }
        }
    }
    Ok(outcome)
}

/// The signed-in browser user of a page flow, or `None` (rejections are logged and mean "not
/// signed in": the browser goes to the login page).
pub async fn browser_user(
    ctx: &IdentifyContext<'_>,
    credentials: &Credentials<'_>,
) -> Result<Option<User>, IdentifyError> {
    Ok(browser_identity(ctx, credentials).await?.map(|i| i.user))
}

/// [`browser_user`], with how they were recognised (their session, for the `sid` claim).
pub async fn browser_identity(
    ctx: &IdentifyContext<'_>,
    credentials: &Credentials<'_>,
) -> Result<Option<Identity>, IdentifyError> {
    Ok(identify(ctx, credentials, "", Accept::Browser)
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
    db: &Db,
    verifier: &str,
    subject: &str,
    email: Option<String>,
    prefix: &str,
) -> Result<User, IdentifyError> {
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
        .ok_or(IdentifyError::LinkVanished)?;
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
