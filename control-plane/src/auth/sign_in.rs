//! podgate's own sign-in with an OpenID provider: the authorization code flow with PKCE (S256),
//! `state` and `nonce` (OpenID Connect Core 3.1, RFC 7636, RFC 9700).
//!
//! [`start`] makes a sign-in: random `state`, `nonce` and PKCE verifier, a row in
//! `sign_in_states` keyed by the state's hash and bound to this browser (the hash of a random
//! cookie value, [`SignInStarted::browser`]), and the provider's authorization URL (from its
//! discovery document) carrying the state, the nonce and the verifier's challenge. [`finish`]
//! takes that row once (a second callback with the same state finds nothing), checks it is
//! fresh and this browser's, exchanges the code at the token endpoint with the verifier and the
//! client's credentials, verifies the ID token (`OidcVerifier::verify_sign_in`: signature by the
//! provider's keys, `iss`, `aud` and `azp` = the sign-in client, `exp`/`iat`, `nonce`), and links
//! the subject to a podgate user like every ID token (`verify::provision`). The verifier and
//! the nonce stay in the database: they never appear in a URL, a cookie or a log line.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use base64::Engine;
use jwt_compact::alg::{Es256, Rsa};
use jwt_compact::{AlgorithmExt, Claims, Header};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

use crate::auth::oidc::{http_client, read_limited, OidcError, OidcVerifier};
use crate::auth::verify::{provision, IdentifyError};
use crate::config::idp::{
    fetch_url, ClientAuth, ClientKeyMaterial, KeySource, OidcProvider, SignInClient,
};
use crate::keys::{random_bytes, KeyringError};
use crate::metrics::{IdpDocument, Metrics};
use crate::store::{now_unix, Db, SignInState, User};

/// How long a sign-in may take, from `/auth/login` to `/auth/callback`.
pub const SIGN_IN_LIFETIME_SECS: i64 = 600;
/// How long a provider's endpoints from discovery are kept.
const ENDPOINTS_TTL: Duration = Duration::from_secs(3600);
/// Timeout of one request to the provider (discovery, token endpoint).
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest discovery document or token answer read.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Why a sign-in did not finish. Every variant but `Random`, `Store` and `Identify` is an
/// outcome to show the user; those three are ours.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// No, unknown, used, expired or another browser's `state`: start again.
    #[error("{0}")]
    State(String),
    /// The callback came without a code, or names another issuer (RFC 9207 `iss`).
    #[error("{0}")]
    BadCallback(String),
    /// The provider sent the user back with an error (`error=access_denied`, ...).
    #[error("the identity provider refused the sign-in: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    ProviderRefused {
        error: String,
        description: Option<String>,
    },
    /// The token endpoint refused the code (used before, expired, issued to another client).
    #[error("the identity provider refused to exchange the sign-in code: {0}")]
    CodeRefused(String),
    /// The ID token the provider returned is not one podgate accepts for this sign-in.
    #[error("{0}")]
    IdTokenRefused(String),
    /// The provider could not be reached, or its keys could not be fetched.
    #[error("{0}")]
    Unreachable(String),
    /// The provider answered something that is not what the protocol says.
    #[error("{0}")]
    BadAnswer(String),
    /// `provider` names no provider that signs people in.
    #[error("{0}")]
    UnknownProvider(String),
    #[error(transparent)]
    Random(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    #[error(transparent)]
    Identify(#[from] IdentifyError),
}

/// A sign-in that did not finish, with what is known for a fresh attempt.
#[derive(Debug)]
pub struct SignInFailure {
    pub error: SignInError,
    /// The provider of the sign-in, once its state was found.
    pub provider: Option<String>,
    /// Where the sign-in was to go, once its state was found.
    pub next: Option<String>,
}

impl<E: Into<SignInError>> From<E> for SignInFailure {
    fn from(e: E) -> Self {
        SignInFailure {
            error: e.into(),
            provider: None,
            next: None,
        }
    }
}

/// The provider's endpoints, from its discovery document.
#[derive(Debug, Clone)]
struct Endpoints {
    authorization: Url,
    token: Url,
    /// Where a relying party sends the browser to sign out at the provider too
    /// (`end_session_endpoint`, OpenID Connect RP-Initiated Logout); optional.
    end_session: Option<Url>,
}

/// The sign-in's state: the HTTP client and each provider's endpoints.
pub struct SignIns {
    http: reqwest::Client,
    endpoints: RwLock<HashMap<String, (Endpoints, Instant)>>,
    metrics: Metrics,
}

impl std::fmt::Debug for SignIns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIns").finish_non_exhaustive()
    }
}

/// What [`start`] and [`finish`] read: the database, the sign-ins' state, the ID-token
/// verifier, and the control plane's public URL (the redirect URI is `ISSUER/auth/callback`).
#[derive(Clone, Copy)]
pub struct SignInContext<'a> {
    pub db: &'a Db,
    pub sign_ins: &'a SignIns,
    pub verifier: &'a OidcVerifier,
    pub issuer: &'a str,
}

/// A sign-in under way: where to send the browser, and the browser-binding cookie's value and
/// name tag ([`binding_tag`]).
#[derive(Debug)]
pub struct SignInStarted {
    pub location: String,
    pub browser: String,
    pub tag: String,
}

/// The tag of the binding cookie of the sign-in whose `state` this is: each sign-in binds the
/// browser with a cookie of its own (`podgate_signin-<tag>`), so that sign-ins started at the
/// same moment in two tabs do not overwrite each other's. Public: it only names the cookie.
pub fn binding_tag(state: &str) -> String {
    sha256_hex(state)[..12].to_owned()
}

/// A finished sign-in: who, where to go, through which provider.
#[derive(Debug)]
pub struct SignedIn {
    pub user: User,
    pub next: String,
    pub provider: String,
    /// When the sign-in started (Unix seconds).
    pub started_at: i64,
}

/// What the provider sent back to `/auth/callback`.
#[derive(Debug, Default)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub iss: Option<String>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn random_token() -> Result<String, KeyringError> {
    Ok(b64(&random_bytes::<32>()?))
}

/// Whether a browser-binding cookie value is one of ours (43 base64url characters).
fn is_binding(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The redirect URI registered with every provider.
pub fn redirect_uri(issuer: &str) -> String {
    format!("{issuer}/auth/callback")
}

impl SignIns {
    pub fn new(metrics: Metrics) -> Result<SignIns, String> {
        Ok(SignIns {
            http: http_client(PROVIDER_TIMEOUT)?,
            endpoints: RwLock::new(HashMap::new()),
            metrics,
        })
    }

    /// The provider's endpoints, from discovery (cached for an hour; a failed fetch is not).
    async fn endpoints(&self, p: &OidcProvider) -> Result<Endpoints, SignInError> {
        if let Some((e, at)) = self
            .endpoints
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&p.name)
        {
            if at.elapsed() < ENDPOINTS_TTL {
                return Ok(e.clone());
            }
        }
        let fetched = self.fetch_endpoints(p).await;
        self.metrics
            .idp_fetch(&p.name, IdpDocument::Discovery, fetched.is_ok());
        let e = fetched?;
        self.endpoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(p.name.clone(), (e.clone(), Instant::now()));
        Ok(e)
    }

    /// Fetches and reads the provider's discovery document.
    async fn fetch_endpoints(&self, p: &OidcProvider) -> Result<Endpoints, SignInError> {
        let url = match &p.keys {
            KeySource::Discovery(u) => u.clone(),
            KeySource::Jwks(_) => {
                let base = p.issuer.trim_end_matches('/');
                Url::parse(&format!("{base}/.well-known/openid-configuration"))
                    .map_err(|e| SignInError::BadAnswer(format!("discovery URL: {e}")))?
            }
        };
        let unreachable = |why: String| {
            SignInError::Unreachable(format!(
                "the identity provider {} could not be reached ({why}); try again in a moment",
                p.name
            ))
        };
        let resp = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| unreachable(format!("{url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(unreachable(format!(
                "{url} answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        let body = read_limited(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| unreachable(format!("{url}: {e}")))?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| SignInError::BadAnswer(format!("{url} is not JSON ({e})")))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(p.issuer.as_str()) {
            return Err(SignInError::BadAnswer(format!(
                "the discovery document {url} does not name the issuer {:?}",
                p.issuer
            )));
        }
        let endpoint = |key: &str| -> Result<Url, SignInError> {
            let u = doc.get(key).and_then(Value::as_str).ok_or_else(|| {
                SignInError::BadAnswer(format!("the discovery document {url} has no {key}"))
            })?;
            fetch_url(
                u,
                key,
                p.allow_insecure_http,
                "fix the provider's discovery document",
            )
            .map_err(|e| SignInError::BadAnswer(e.to_string()))
        };
        Ok(Endpoints {
            authorization: endpoint("authorization_endpoint")?,
            token: endpoint("token_endpoint")?,
            end_session: match doc.get("end_session_endpoint") {
                Some(_) => Some(endpoint("end_session_endpoint")?),
                None => None,
            },
        })
    }

    /// Where to send a browser that signed out here and had signed in with `p`, so that it
    /// signs out at the provider too: the provider's `end_session_endpoint` with our
    /// `client_id` and `post_logout_redirect_uri` (OpenID Connect RP-Initiated Logout; the ID
    /// token is not kept, so there is no `id_token_hint`). `None` when the provider does not
    /// sign people in here or is not set to (`sign_out_at_provider`), names no such endpoint,
    /// or cannot be reached.
    pub async fn end_session_url(
        &self,
        p: &OidcProvider,
        post_logout_redirect_uri: &str,
    ) -> Option<String> {
        let client = p.sign_in.as_ref().filter(|c| c.sign_out_at_provider)?;
        let endpoints = match self.endpoints(p).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(provider = %p.name, error = %e, "no sign-out at the identity provider");
                return None;
            }
        };
        let mut url = endpoints.end_session?;
        url.query_pairs_mut()
            .append_pair("client_id", &client.client_id)
            .append_pair("post_logout_redirect_uri", post_logout_redirect_uri);
        Some(url.to_string())
    }
}

/// Starts a sign-in with provider `p` that goes to `next` (a safe path) once done, bound to the
/// browser by a fresh value in a cookie of its own ([`binding_tag`]).
pub async fn start(
    ctx: &SignInContext<'_>,
    p: &OidcProvider,
    next: &str,
) -> Result<SignInStarted, SignInError> {
    let client = p
        .sign_in
        .as_ref()
        .ok_or_else(|| SignInError::UnknownProvider(format!("{} does not sign in", p.name)))?;
    let endpoints = ctx.sign_ins.endpoints(p).await?;
    let browser = random_token()?;
    let state = random_token()?;
    let nonce = random_token()?;
    let verifier = random_token()?;
    let now = now_unix();
    ctx.db
        .put_sign_in_state(&SignInState {
            state_hash: sha256_hex(&state),
            browser_hash: sha256_hex(&browser),
            provider: p.name.clone(),
            nonce: nonce.clone(),
            pkce_verifier: verifier.clone(),
            next: next.to_owned(),
            created_at: now,
            expires_at: now + SIGN_IN_LIFETIME_SECS,
        })
        .await?;
    let mut location = endpoints.authorization;
    location
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client.client_id)
        .append_pair("redirect_uri", &redirect_uri(ctx.issuer))
        .append_pair("scope", &client.scopes.join(" "))
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &b64(&Sha256::digest(verifier.as_bytes())))
        .append_pair("code_challenge_method", "S256");
    Ok(SignInStarted {
        location: location.to_string(),
        browser,
        tag: binding_tag(&state),
    })
}

/// Finishes a sign-in from the provider's answer and the browser's binding cookies.
pub async fn finish(
    ctx: &SignInContext<'_>,
    params: &CallbackParams,
    browser_cookies: &[&str],
) -> Result<SignedIn, SignInFailure> {
    let state = params.state.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| {
        SignInError::State(
            "the identity provider's answer has no `state`, so it cannot be matched to a sign-in started here".into(),
        )
    })?;
    let row = ctx
        .db
        .take_sign_in_state(&sha256_hex(state))
        .await?
        .ok_or_else(|| {
            SignInError::State(
                "this sign-in is unknown or was already used (each sign-in link works once)".into(),
            )
        })?;
    let fail = |error: SignInError| SignInFailure {
        error,
        provider: Some(row.provider.clone()),
        next: Some(row.next.clone()),
    };
    if now_unix() >= row.expires_at {
        return Err(fail(SignInError::State(format!(
            "this sign-in expired: it must finish within {} minutes of starting",
            SIGN_IN_LIFETIME_SECS / 60
        ))));
    }
    let this_browser = browser_cookies.iter().filter(|c| is_binding(c)).any(|c| {
        sha256_hex(c)
            .as_bytes()
            .ct_eq(row.browser_hash.as_bytes())
            .into()
    });
    if !this_browser {
        return Err(fail(SignInError::State(
            "this sign-in was started in another browser (or its cookie is gone); sign-in links cannot be passed on".into(),
        )));
    }
    let Some(p) = ctx.verifier.provider(&row.provider) else {
        return Err(fail(SignInError::UnknownProvider(format!(
            "the identity provider {:?} of this sign-in is no longer configured",
            row.provider
        ))));
    };
    let Some(client) = p.sign_in.as_ref() else {
        return Err(fail(SignInError::UnknownProvider(format!(
            "the identity provider {:?} no longer signs people in",
            row.provider
        ))));
    };
    if let Some(iss) = &params.iss {
        if iss != &p.issuer {
            return Err(fail(SignInError::BadCallback(format!(
                "the answer names the issuer {iss:?}, not {:?}, the provider this sign-in went to",
                p.issuer
            ))));
        }
    }
    if let Some(error) = &params.error {
        return Err(fail(SignInError::ProviderRefused {
            error: error.clone(),
            description: params.error_description.clone(),
        }));
    }
    let Some(code) = params.code.as_deref().filter(|c| !c.is_empty()) else {
        return Err(fail(SignInError::BadCallback(
            "the identity provider's answer has neither a code nor an error".into(),
        )));
    };
    let id_token = exchange(ctx, p, client, code, &row.pkce_verifier)
        .await
        .map_err(fail)?;
    let claims = ctx
        .verifier
        .verify_sign_in(
            &p.name,
            &id_token,
            now_unix(),
            &client.client_id,
            &row.nonce,
        )
        .await
        .map_err(|e| {
            fail(match e {
                OidcError::Rejected(msg) => SignInError::IdTokenRefused(msg),
                OidcError::Upstream(msg) => SignInError::Unreachable(msg),
            })
        })?;
    let user = provision(
        ctx.db,
        &claims.verifier,
        &claims.subject,
        claims.email,
        &claims.user_prefix,
    )
    .await
    .map_err(|e| fail(e.into()))?;
    Ok(SignedIn {
        user,
        next: row.next,
        provider: row.provider,
        started_at: row.created_at,
    })
}

/// Exchanges the code at the token endpoint; returns the ID token.
async fn exchange(
    ctx: &SignInContext<'_>,
    p: &OidcProvider,
    client: &SignInClient,
    code: &str,
    verifier: &str,
) -> Result<String, SignInError> {
    let endpoints = ctx.sign_ins.endpoints(p).await?;
    let redirect = redirect_uri(ctx.issuer);
    let mut form: Vec<(&str, String)> = vec![
        ("grant_type", "authorization_code".into()),
        ("code", code.into()),
        ("redirect_uri", redirect),
        ("code_verifier", verifier.into()),
    ];
    let mut req = ctx.sign_ins.http.post(endpoints.token.clone());
    match &client.auth {
        ClientAuth::SecretBasic(secret) => {
            // RFC 6749 2.3.1: both parts form-encoded before Basic.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(enc(&client.client_id), Some(enc(&secret.0)));
        }
        ClientAuth::SecretPost(secret) => {
            form.push(("client_id", client.client_id.clone()));
            form.push(("client_secret", secret.0.clone()));
        }
        ClientAuth::PrivateKeyJwt(key) => {
            let assertion = client_assertion(client, key, &endpoints.token)?;
            form.push(("client_id", client.client_id.clone()));
            form.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ));
            form.push(("client_assertion", assertion));
        }
    }
    let unreachable = |why: String| {
        SignInError::Unreachable(format!(
            "the identity provider {}'s token endpoint could not be reached ({why}); try again",
            p.name
        ))
    };
    let resp = req
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form)
        .send()
        .await
        .map_err(|e| unreachable(e.without_url().to_string()))?;
    let status = resp.status();
    let body = read_limited(resp, MAX_ANSWER_BYTES)
        .await
        .map_err(unreachable)?;
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status.is_client_error() {
        let error = answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("refused");
        let description = answer
            .get("error_description")
            .and_then(Value::as_str)
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        return Err(SignInError::CodeRefused(format!(
            "{error}{description}; the code may have been used before or expired"
        )));
    }
    if !status.is_success() {
        return Err(unreachable(format!("HTTP {}", status.as_u16())));
    }
    answer
        .get("id_token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            SignInError::BadAnswer(format!(
                "the identity provider {}'s token endpoint returned no id_token; is openid among the sign-in's scopes?",
                p.name
            ))
        })
}

/// The `private_key_jwt` client assertion (RFC 7523 2.2): issued by and about the client, for
/// the token endpoint, one minute, a random `jti`.
fn client_assertion(
    client: &SignInClient,
    key: &crate::config::idp::ClientKey,
    token_endpoint: &Url,
) -> Result<String, SignInError> {
    let now = now_unix();
    let mut claims = Map::new();
    for (k, v) in [
        ("iss", json!(client.client_id)),
        ("sub", json!(client.client_id)),
        ("aud", json!(token_endpoint.as_str())),
        ("jti", json!(random_token()?)),
        ("iat", json!(now)),
        ("exp", json!(now + 60)),
    ] {
        claims.insert(k.into(), v);
    }
    let claims = Claims::new(claims);
    let header = Header::empty()
        .with_key_id(key.kid.clone())
        .with_token_type("JWT");
    let signed = match &key.material {
        ClientKeyMaterial::Rs256(k) => Rsa::rs256().token(&header, &claims, k.as_ref()),
        ClientKeyMaterial::Es256(k) => Es256.token(&header, &claims, k.as_ref()),
    };
    signed.map_err(|e| SignInError::BadAnswer(format!("cannot sign the client assertion: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn binding_values_are_ours_only() {
        let v = random_token().unwrap();
        assert!(is_binding(&v), "{v}");
        assert!(!is_binding(""));
        assert!(!is_binding(&format!("{v}x")));
        assert!(!is_binding(&v.replace(|_| true, "=")));
    }
}
