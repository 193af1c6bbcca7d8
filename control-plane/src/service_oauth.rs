//! OAuth 2.0 access tokens as a service's credential: the control plane obtains them from the
//! service's token endpoint and renews them, and the filter configuration carries the current
//! one (`Bearer <token>` in the configured header) to every Envoy.
//!
//! Grants: `client_credentials`, the client authenticated with its secret (HTTP Basic) or with
//! a private key (`private_key_jwt`, an RFC 7523 client assertion), and `jwt_bearer` (an RFC
//! 7523 assertion grant signed with the private key, `iss`/`sub`/`aud` configurable). Keys are
//! RSA (RS256, at least 2048 bits) or EC P-256 (ES256), in PEM (PKCS#8, PKCS#1 or SEC1).
//!
//! The configuration, secrets included, is stored sealed under the key-encryption key, bound to
//! the service's name and the kind `service-oauth`. Tokens are held in memory only
//! ([`ServiceTokens`]), never in the database: with several control planes each fetches its
//! own. [`run`] renews each token `renew_margin_secs` before it expires and never later than
//! half its life, retries with exponential backoff, and asks for a configuration push after
//! every change so that each Envoy has a new token well before the old one expires. While no
//! valid token can be had, the service's static credential (if set) is used as a fallback;
//! without one the filter answers `502` for the service (`services::Published::WithoutCredential`),
//! so no request reaches the upstream without a credential.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jwt_compact::alg::{Es256, Rsa, RsaPrivateKey, RsaPublicKey, StrongKey};
use jwt_compact::{AlgorithmExt, Claims, Header};
use podgate_protocol::config::{credential_header_allowed, credential_value_allowed};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::key_encryption::{KekError, KeyEncryption, RowBinding, Sealed};
use crate::store::{now_unix, ServiceRow, StoredOAuth};
use crate::AppState;

/// The `kind` a sealed OAuth configuration is bound to.
const SEALED_KIND: &str = "service-oauth";
/// The `alg` of its binding (the whole configuration is one sealed value).
const SEALED_ALG: &str = "json";
/// The RFC 7523 client assertion type.
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The RFC 7523 assertion grant type.
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// A token endpoint's answer without `expires_in` is taken to last this long.
const DEFAULT_TOKEN_LIFETIME_MS: i64 = 3_600_000;
/// The longest wait between two failed attempts.
const MAX_BACKOFF_MS: i64 = 60_000;
/// The first wait after a failed attempt (doubled after each further one).
const FIRST_BACKOFF_MS: i64 = 500;
/// A token is not pushed for use in its last this many milliseconds (transit and clock skew).
const EXPIRY_SAFETY_MS: i64 = 500;
/// How long a token endpoint may take to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`run`] reads the services again without being told of a change: a safety net,
/// since every change is announced ([`ServiceTokens::services_changed`]).
const RESYNC: Duration = Duration::from_secs(30);
/// How soon [`run`] reads the services again after failing to.
const RETRY_READ: Duration = Duration::from_secs(1);
/// The shortest wait of [`run`] between two rounds, so that a token endpoint giving tokens of
/// almost no life is not asked in a tight loop.
const MIN_WAIT: Duration = Duration::from_millis(50);

/// The grant a service's tokens are obtained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    ClientCredentials,
    JwtBearer,
}

fn default_header() -> String {
    "authorization".to_owned()
}

fn default_margin() -> u64 {
    300
}

/// A service's OAuth configuration, secrets included; its `Debug` names no secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    pub token_url: String,
    pub grant: Grant,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
    /// The `kid` the assertions name, if the provider wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `jwt_bearer`: the assertion's `iss` (default: `client_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// `jwt_bearer`: the assertion's `sub` (default: `iss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The assertions' `aud` (default: `token_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default = "default_header")]
    pub header: String,
    #[serde(default = "default_margin")]
    pub renew_margin_secs: u64,
}

impl std::fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("token_url", &self.token_url)
            .field("grant", &self.grant)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// How the client proves itself: what admins see (never the secret).
impl OAuthConfig {
    pub fn client_auth(&self) -> &'static str {
        match (self.grant, &self.client_secret) {
            (Grant::JwtBearer, _) => "jwt_assertion",
            (Grant::ClientCredentials, Some(_)) => "client_secret_basic",
            (Grant::ClientCredentials, None) => "private_key_jwt",
        }
    }
}

/// The private key of the assertions; never printed.
enum SigningKey {
    Rs256(Box<RsaPrivateKey>),
    Es256(Box<p256::ecdsa::SigningKey>),
}

/// Reads an RSA (at least 2048 bits) or P-256 private key in PEM.
fn signing_key(pem: &str) -> Result<SigningKey, String> {
    use p256::pkcs8::DecodePrivateKey as _;
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .ok()
        .or_else(|| rsa::RsaPrivateKey::from_pkcs1_pem(pem).ok());
    if let Some(key) = rsa {
        if StrongKey::try_from(RsaPublicKey::from(&key)).is_err() {
            return Err("`private_key_pem` holds an RSA key shorter than 2048 bits".into());
        }
        return Ok(SigningKey::Rs256(Box::new(key)));
    }
    if let Ok(key) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
        return Ok(SigningKey::Es256(Box::new(key)));
    }
    if let Ok(key) = p256::SecretKey::from_sec1_pem(pem) {
        return Ok(SigningKey::Es256(Box::new(key.into())));
    }
    Err(
        "`private_key_pem` is not an RSA or EC P-256 private key in PEM (PKCS#8, PKCS#1 or SEC1)"
            .into(),
    )
}

/// Reads and checks `credential.oauth` as an admin sends it, without ever quoting a value.
pub fn parse(v: Value) -> Result<OAuthConfig, String> {
    const SHAPE: &str = "`credential.oauth` must be {\"token_url\", \"grant\": \"client_credentials\" | \"jwt_bearer\", \"client_id\"?, \"client_secret\"? | \"private_key_pem\"?, \"key_id\"?, \"scope\"?, \"iss\"?, \"sub\"?, \"aud\"?, \"header\"?, \"renew_margin_secs\"?} (strings, renew_margin_secs a number)";
    let config: OAuthConfig = serde_json::from_value(v).map_err(|_| SHAPE.to_owned())?;
    check(&config)?;
    Ok(config)
}

/// Whether a configuration can be used.
pub fn check(c: &OAuthConfig) -> Result<(), String> {
    let url = url::Url::parse(&c.token_url).map_err(|e| format!("`token_url`: not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("`token_url` must be an http(s) URL with a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("`token_url` must not carry user information".into());
    }
    if !credential_header_allowed(&c.header) {
        return Err(format!(
            "the header name {:?} cannot carry a credential: use a lowercase header name such as authorization",
            c.header
        ));
    }
    if c.renew_margin_secs > 86_400 {
        return Err("`renew_margin_secs` must be at most 86400".into());
    }
    match c.grant {
        Grant::ClientCredentials => {
            if c.client_id.as_deref().is_none_or(str::is_empty) {
                return Err("`client_credentials` needs `client_id`".into());
            }
            match (&c.client_secret, &c.private_key_pem) {
                (Some(s), None) if !s.is_empty() => {}
                (None, Some(pem)) => {
                    signing_key(pem)?;
                }
                _ => {
                    return Err(
                        "`client_credentials` needs exactly one of `client_secret` and `private_key_pem`"
                            .into(),
                    )
                }
            }
        }
        Grant::JwtBearer => {
            if c.client_secret.is_some() {
                return Err("`jwt_bearer` takes `private_key_pem`, not `client_secret`".into());
            }
            let Some(pem) = &c.private_key_pem else {
                return Err("`jwt_bearer` needs `private_key_pem`".into());
            };
            signing_key(pem)?;
            if c.client_id.is_none() && c.iss.is_none() {
                return Err("`jwt_bearer` needs `iss` (or `client_id`)".into());
            }
        }
    }
    Ok(())
}

fn binding(name: &str) -> RowBinding<'_> {
    RowBinding {
        kid: name,
        kind: SEALED_KIND,
        alg: SEALED_ALG,
    }
}

/// Seals a service's OAuth configuration under the current key-encryption key (plaintext
/// without one, which only dev mode allows).
pub fn seal(kek: &KeyEncryption, name: &str, c: &OAuthConfig) -> Result<StoredOAuth, KekError> {
    let json = serde_json::to_string(c).map_err(|_| KekError::Tampered {
        kek_id: String::new(),
    })?;
    Ok(match kek.seal(binding(name), json.as_bytes())? {
        Some(sealed) => StoredOAuth {
            kek_id: Some(sealed.kek_id),
            config: sealed.ciphertext,
        },
        None => StoredOAuth {
            kek_id: None,
            config: json,
        },
    })
}

/// Opens a service's stored OAuth configuration.
pub fn open(kek: &KeyEncryption, name: &str, stored: &StoredOAuth) -> Result<OAuthConfig, String> {
    let json = match &stored.kek_id {
        None => stored.config.clone(),
        Some(kek_id) => {
            let sealed = Sealed {
                kek_id: kek_id.clone(),
                ciphertext: stored.config.clone(),
            };
            let plain = kek
                .open(binding(name), &sealed)
                .map_err(|e| e.to_string())?;
            String::from_utf8(plain.to_vec()).map_err(|_| "not UTF-8".to_owned())?
        }
    };
    serde_json::from_str(&json).map_err(|_| "the stored configuration is not readable".to_owned())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A token obtained from a service's token endpoint; its `Debug` leaves the value out.
#[derive(Clone)]
pub struct Token {
    pub value: String,
    /// When it was asked for (Unix milliseconds): its life is counted from there.
    pub obtained_ms: i64,
    pub expires_ms: i64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// When to renew it: `margin` before its expiry, and never later than half its life; never
    /// before a quarter of its life either, so that a margin close to the lifetime does not
    /// renew it over and over.
    pub fn renew_at_ms(&self, margin_secs: u64) -> i64 {
        let margin = i64::try_from(margin_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let life = self.expires_ms - self.obtained_ms;
        let by_margin = self.expires_ms.saturating_sub(margin);
        by_margin
            .min(self.obtained_ms + life / 2)
            .max(self.obtained_ms + life / 4)
    }

    /// Whether it may be pushed for use at `now_ms`.
    pub fn usable(&self, now_ms: i64) -> bool {
        now_ms + EXPIRY_SAFETY_MS < self.expires_ms
    }
}

fn sign(key: &SigningKey, kid: Option<&str>, claims: Map<String, Value>) -> Result<String, String> {
    let claims = Claims::new(claims);
    let mut header = Header::empty().with_token_type("JWT");
    if let Some(kid) = kid {
        header = header.with_key_id(kid.to_owned());
    }
    match key {
        SigningKey::Rs256(k) => Rsa::rs256().token(&header, &claims, k.as_ref()),
        SigningKey::Es256(k) => Es256.token(&header, &claims, k.as_ref()),
    }
    .map_err(|e| format!("cannot sign the assertion: {e}"))
}

fn assertion_claims(iss: &str, sub: &str, aud: &str) -> Result<Map<String, Value>, String> {
    let now = now_unix();
    let jti = crate::keys::random_bytes::<16>().map_err(|e| e.to_string())?;
    let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    let mut claims = Map::new();
    for (k, v) in [
        ("iss", json!(iss)),
        ("sub", json!(sub)),
        ("aud", json!(aud)),
        ("jti", json!(jti)),
        ("iat", json!(now)),
        ("exp", json!(now + 60)),
    ] {
        claims.insert(k.into(), v);
    }
    Ok(claims)
}

/// Asks the token endpoint for a new access token. Errors never quote a secret or a token.
pub async fn fetch(client: &reqwest::Client, c: &OAuthConfig) -> Result<Token, String> {
    let aud = c.aud.clone().unwrap_or_else(|| c.token_url.clone());
    let mut form: Vec<(&str, String)> = Vec::new();
    let mut basic = None;
    match c.grant {
        Grant::ClientCredentials => {
            let client_id = c.client_id.clone().unwrap_or_default();
            form.push(("grant_type", "client_credentials".into()));
            if let Some(secret) = &c.client_secret {
                basic = Some((client_id, secret.clone()));
            } else {
                let pem = c.private_key_pem.as_deref().unwrap_or_default();
                let key = signing_key(pem)?;
                let claims = assertion_claims(&client_id, &client_id, &aud)?;
                form.push(("client_id", client_id));
                form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE.into()));
                form.push(("client_assertion", sign(&key, c.key_id.as_deref(), claims)?));
            }
        }
        Grant::JwtBearer => {
            let pem = c.private_key_pem.as_deref().unwrap_or_default();
            let key = signing_key(pem)?;
            let iss = c
                .iss
                .clone()
                .or_else(|| c.client_id.clone())
                .unwrap_or_default();
            let sub = c.sub.clone().unwrap_or_else(|| iss.clone());
            let claims = assertion_claims(&iss, &sub, &aud)?;
            form.push(("grant_type", JWT_BEARER_GRANT.into()));
            form.push(("assertion", sign(&key, c.key_id.as_deref(), claims)?));
            if let Some(id) = &c.client_id {
                form.push(("client_id", id.clone()));
            }
        }
    }
    if let Some(scope) = &c.scope {
        form.push(("scope", scope.clone()));
    }
    let obtained_ms = now_ms();
    let mut req = client.post(&c.token_url).form(&form).timeout(FETCH_TIMEOUT);
    if let Some((id, secret)) = basic {
        // RFC 6749 2.3.1: both form-urlencoded before Basic.
        let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        req = req.basic_auth(enc(&id), Some(enc(&secret)));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("the token endpoint cannot be reached: {}", e.without_url()))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|_| format!("the token endpoint answered {status} without JSON"))?;
    if !status.is_success() {
        // The OAuth error code and description name no secret of ours.
        let code = body.get("error").and_then(Value::as_str).unwrap_or("?");
        let description = body
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or("");
        let description: String = description.chars().take(200).collect();
        return Err(format!(
            "the token endpoint refused ({status}): {code} {description}"
        ));
    }
    let Some(value) = body.get("access_token").and_then(Value::as_str) else {
        return Err("the token endpoint's answer has no access_token".into());
    };
    if let Some(kind) = body.get("token_type").and_then(Value::as_str) {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(format!(
                "the token endpoint gave a token of type {kind:?}, not Bearer"
            ));
        }
    }
    if !credential_value_allowed(&format!("Bearer {value}")) {
        return Err("the access token is not visible ASCII of at most 8185 characters".into());
    }
    let lifetime_ms = match expires_in(body.get("expires_in"))? {
        Some(s) if s > 0.0 => (s * 1000.0) as i64,
        Some(_) => return Err("the token endpoint gave a token that has expired".into()),
        None => DEFAULT_TOKEN_LIFETIME_MS,
    };
    Ok(Token {
        value: value.to_owned(),
        obtained_ms,
        expires_ms: obtained_ms.saturating_add(lifetime_ms),
    })
}

/// The seconds of a token answer's `expires_in`: a number, or a string holding one (as some
/// providers send it); `None` when absent. Anything else is an error rather than a guess, so
/// that a token is never held past its real expiry.
fn expires_in(value: Option<&Value>) -> Result<Option<f64>, String> {
    let secs = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match secs {
        Some(s) if s.is_finite() => Ok(Some(s)),
        _ => Err(format!(
            "the token endpoint's expires_in {} is not a number of seconds",
            value
                .map(Value::to_string)
                .unwrap_or_default()
                .chars()
                .take(40)
                .collect::<String>()
        )),
    }
}

/// Where a service's credential comes from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Oauth,
    Fallback,
    None,
}

/// What this control plane holds for one OAuth service.
#[derive(Debug, Default)]
struct State {
    token: Option<Token>,
    /// The configuration the token was obtained with: a changed one is renewed at once.
    config: Option<OAuthConfig>,
    last_renewal_ms: Option<i64>,
    last_error: Option<String>,
    last_error_ms: Option<i64>,
    failures: u32,
    next_attempt_ms: i64,
}

/// The OAuth tokens of the services, in memory only.
#[derive(Debug, Default)]
pub struct ServiceTokens {
    states: Mutex<HashMap<String, State>>,
    /// Wakes [`run`] to read the services again: notified after every write that may change
    /// them (`AppState::envoy_config_changed`) and for every change another control plane
    /// announces (`xds_sync`). A notification while [`run`] is busy is kept for its next wait.
    changed: tokio::sync::Notify,
}

/// What admins see of a service's OAuth credential: never the token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialStatus {
    pub service: String,
    pub source: Source,
    pub oauth: bool,
    /// When the current token expires (Unix seconds), if there is one.
    pub expires_at: Option<i64>,
    /// When a token was last obtained (Unix seconds).
    pub last_renewal: Option<i64>,
    pub last_error: Option<String>,
    /// When the last error happened (Unix seconds).
    pub last_error_at: Option<i64>,
    /// Failed attempts since the last success.
    pub failures: u32,
    pub fallback: bool,
}

impl ServiceTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token of service `name` usable now (its header, `Bearer <token>`), if it was
    /// obtained with `config`, the service's configuration now. A token obtained with another
    /// one (a fetch that was under way when the configuration changed, or one this control plane
    /// held before another changed the service) is not the new configuration's: it is never
    /// used for it.
    pub fn current(&self, name: &str, config: &OAuthConfig) -> Option<String> {
        let now = now_ms();
        self.lock()
            .get(name)
            .filter(|s| s.config.as_ref() == Some(config))
            .and_then(|s| s.token.as_ref())
            .filter(|t| t.usable(now))
            .map(|t| format!("Bearer {}", t.value))
    }

    /// Records the outcome of an attempt; returns whether what Envoy gets changed.
    pub(crate) fn record(
        &self,
        name: &str,
        config: &OAuthConfig,
        outcome: Result<Token, String>,
    ) -> bool {
        let now = now_ms();
        let mut states = self.lock();
        let state = states.entry(name.to_owned()).or_default();
        match outcome {
            Ok(token) => {
                tracing::info!(service = %name, expires_in_ms = token.expires_ms - now, "service OAuth token obtained");
                state.token = Some(token);
                state.config = Some(config.clone());
                state.last_renewal_ms = Some(now);
                state.failures = 0;
                state.next_attempt_ms = 0;
                true
            }
            Err(e) => {
                tracing::warn!(service = %name, failures = state.failures + 1, "service OAuth token not obtained: {e}");
                state.failures = state.failures.saturating_add(1);
                let backoff = FIRST_BACKOFF_MS
                    .saturating_mul(1i64 << state.failures.saturating_sub(1).min(20))
                    .min(MAX_BACKOFF_MS);
                state.next_attempt_ms = now + backoff;
                state.last_error = Some(e);
                state.last_error_ms = Some(now);
                false
            }
        }
    }

    /// Drops the cached token of `name`; returns whether there was one.
    pub fn clear(&self, name: &str) -> bool {
        let mut states = self.lock();
        let Some(state) = states.get_mut(name) else {
            return false;
        };
        state.next_attempt_ms = 0;
        state.token.take().is_some()
    }

    /// The status of service `row`'s credential (never the token): where the credential
    /// Envoy gets comes from, as the filter's directory has it. `unusable`: the directory lists
    /// the service without a credential (`services::without_credential`).
    pub fn status(
        &self,
        kek: &KeyEncryption,
        row: &ServiceRow,
        unusable: bool,
    ) -> CredentialStatus {
        let opened = row
            .oauth
            .as_ref()
            .and_then(|stored| open(kek, &row.name, stored).ok());
        let token_in_force = opened
            .as_ref()
            .is_some_and(|config| self.current(&row.name, config).is_some());
        let now = now_ms();
        let states = self.lock();
        let state = states.get(&row.name);
        let token = state
            .and_then(|s| s.token.as_ref())
            .filter(|t| token_in_force && t.usable(now));
        let source = if unusable {
            Source::None
        } else if token.is_some() {
            Source::Oauth
        } else if row.credential.is_some() {
            Source::Fallback
        } else {
            Source::None
        };
        CredentialStatus {
            service: row.name.clone(),
            source,
            oauth: row.oauth.is_some(),
            expires_at: token.map(|t| t.expires_ms / 1000),
            last_renewal: state.and_then(|s| s.last_renewal_ms).map(|t| t / 1000),
            last_error: state.and_then(|s| s.last_error.clone()),
            last_error_at: state.and_then(|s| s.last_error_ms).map(|t| t / 1000),
            failures: state.map_or(0, |s| s.failures),
            fallback: row.credential.is_some(),
        }
    }

    /// The services may have changed: [`run`] reads them again.
    pub fn services_changed(&self) {
        self.changed.notify_one();
    }

    /// When service `name` is due for an attempt with `config` (Unix milliseconds; 0: now): its
    /// token's renewal time, and never before the backoff after a failure allows. A token
    /// obtained with another configuration is renewed at once.
    fn due_at(&self, name: &str, config: &OAuthConfig) -> i64 {
        let states = self.lock();
        let Some(state) = states.get(name) else {
            return 0;
        };
        let renew_at = match (&state.token, &state.config) {
            (Some(t), Some(c)) if c == config => t.renew_at_ms(config.renew_margin_secs),
            _ => 0,
        };
        renew_at.max(state.next_attempt_ms)
    }

    /// Whether service `name` is due for an attempt at `now`, with `config`.
    fn due(&self, name: &str, config: &OAuthConfig, now: i64) -> bool {
        now >= self.due_at(name, config)
    }

    /// When [`run`] has something to do next for `services`: the earliest attempt due, or the
    /// earliest moment a held token stops being usable (when it is swept and Envoy loses it).
    fn next_wake_ms(&self, services: &[(String, OAuthConfig)]) -> Option<i64> {
        let due = services
            .iter()
            .map(|(name, config)| self.due_at(name, config))
            .min();
        let expiry = self
            .lock()
            .values()
            .filter_map(|s| s.token.as_ref())
            .map(|t| t.expires_ms - EXPIRY_SAFETY_MS)
            .min();
        due.into_iter().chain(expiry).min()
    }

    /// Drops the states of services that have no OAuth configuration any more, and tokens that
    /// are no longer usable; returns whether what Envoy gets changed.
    fn sweep(&self, oauth_services: &[String], now: i64) -> bool {
        let dropped = {
            let mut states = self.lock();
            let before = states.len();
            states.retain(|name, _| oauth_services.contains(name));
            states.len() != before
        };
        self.sweep_expired(now) || dropped
    }

    /// Drops the tokens that are no longer usable; returns whether what Envoy gets changed.
    fn sweep_expired(&self, now: i64) -> bool {
        let mut changed = false;
        for (name, state) in self.lock().iter_mut() {
            if state.token.as_ref().is_some_and(|t| !t.usable(now)) {
                tracing::warn!(service = %name, "service OAuth token expired without a renewal");
                state.token = None;
                changed = true;
            }
        }
        changed
    }
}

/// The HTTP client of the token endpoints.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// Obtains a token for `row` now and records it (`POST …/credential/refresh`); returns the
/// error when none could be had.
pub async fn refresh(state: &AppState, row: &ServiceRow) -> Result<(), String> {
    let Some(stored) = &row.oauth else {
        return Err("the service has no OAuth credential".into());
    };
    let config = open(&state.config().key_encryption, &row.name, stored)?;
    let outcome = fetch(&http_client(), &config).await;
    let result = outcome.as_ref().map(|_| ()).map_err(Clone::clone);
    state.service_tokens().record(&row.name, &config, outcome);
    result
}

/// Keeps the OAuth tokens of every service fresh until `stop` completes: each due service gets
/// an attempt (concurrently), and every change asks for a configuration push.
///
/// The services are read at start, when told of a change ([`ServiceTokens::services_changed`])
/// and every [`RESYNC`] as a safety net; between reads the task sleeps until the next attempt
/// is due or a token stops being usable, so the renewals keep to the tokens' expiry.
pub async fn run(state: AppState, stop: impl std::future::Future<Output = ()>) {
    let client = http_client();
    let tokens = state.service_tokens();
    tokio::pin!(stop);
    // The OAuth services and their configurations, as last read.
    let mut services: Vec<(String, OAuthConfig)> = Vec::new();
    let mut read = true;
    let mut next_read = tokio::time::Instant::now();
    loop {
        let mut changed = false;
        if read {
            match state.db().list_services().await {
                Ok(rows) => {
                    let (opened, unusable) = oauth_services(&state, rows);
                    services = opened;
                    let names: Vec<String> = services
                        .iter()
                        .map(|(name, _)| name.clone())
                        .chain(unusable.iter().map(|(name, _)| name.clone()))
                        .collect();
                    changed |= tokens.sweep(&names, now_ms());
                    for (name, e) in unusable {
                        changed |= tokens.record(
                            &name,
                            &OAuthConfig::unusable(),
                            Err(format!("the OAuth configuration cannot be opened: {e}")),
                        );
                    }
                    next_read = tokio::time::Instant::now() + RESYNC;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "service OAuth renewal: cannot read the services");
                    next_read = tokio::time::Instant::now() + RETRY_READ;
                }
            }
        }
        let now = now_ms();
        changed |= tokens.sweep_expired(now);
        let mut attempts = tokio::task::JoinSet::new();
        for (name, config) in &services {
            if !tokens.due(name, config, now) {
                continue;
            }
            let (client, name, config) = (client.clone(), name.clone(), config.clone());
            attempts.spawn(async move {
                let outcome = fetch(&client, &config).await;
                (name, config, outcome)
            });
        }
        while let Some(done) = attempts.join_next().await {
            if let Ok((name, config, outcome)) = done {
                changed |= tokens.record(&name, &config, outcome);
            }
        }
        if changed {
            state.envoy_config_changed().await;
        }
        let mut wake = next_read;
        if let Some(at) = tokens.next_wake_ms(&services) {
            let wait_ms = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
            wake = wake.min(tokio::time::Instant::now() + Duration::from_millis(wait_ms));
        }
        wake = wake.max(tokio::time::Instant::now() + MIN_WAIT);
        tokio::select! {
            () = &mut stop => return,
            () = tokens.changed.notified() => read = true,
            () = tokio::time::sleep_until(wake) => {
                read = tokio::time::Instant::now() >= next_read;
            }
        }
    }
}

/// A service's name and its OAuth configuration, opened.
type Opened = (String, OAuthConfig);
/// A service's name and why its OAuth configuration does not open.
type Unusable = (String, String);

/// The OAuth services of `rows` with their configurations opened, and those whose
/// configuration does not open, with why.
fn oauth_services(state: &AppState, rows: Vec<ServiceRow>) -> (Vec<Opened>, Vec<Unusable>) {
    let mut opened = Vec::new();
    let mut unusable = Vec::new();
    for row in rows {
        let Some(stored) = &row.oauth else { continue };
        match open(&state.config().key_encryption, &row.name, stored) {
            Ok(config) => opened.push((row.name, config)),
            Err(e) => unusable.push((row.name, e)),
        }
    }
    (opened, unusable)
}

impl OAuthConfig {
    /// A placeholder recorded with an error when a stored configuration cannot be opened.
    fn unusable() -> OAuthConfig {
        OAuthConfig {
            token_url: String::new(),
            grant: Grant::ClientCredentials,
            client_id: None,
            client_secret: None,
            private_key_pem: None,
            key_id: None,
            scope: None,
            iss: None,
            sub: None,
            aud: None,
            header: default_header(),
            renew_margin_secs: default_margin(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_by_the_margin_at_most_half_way_and_not_before_a_quarter() {
        let t = |life_ms| Token {
            value: String::new(),
            obtained_ms: 0,
            expires_ms: life_ms,
        };
        // An hour-long token with the default margin: half way.
        assert_eq!(t(3_600_000).renew_at_ms(300), 1_800_000);
        // A margin past half its life: by the margin.
        assert_eq!(t(3_600_000).renew_at_ms(2_000), 1_600_000);
        // A margin longer than its life: a quarter of the way in.
        assert_eq!(t(3_000).renew_at_ms(300), 750);
        assert!(t(3_000).usable(2_000));
        assert!(!t(3_000).usable(2_600));
    }

    #[test]
    fn the_task_wakes_for_the_next_renewal_backoff_or_expiry() {
        let c = parse(json!({"token_url": "https://idp.example/token", "grant": "client_credentials", "client_id": "c", "client_secret": "s"})).unwrap();
        let tokens = ServiceTokens::default();
        let services = vec![("api".to_owned(), c.clone())];
        // Never tried: due now.
        assert_eq!(tokens.next_wake_ms(&services), Some(0));
        assert!(tokens.due("api", &c, 1));
        // A token: due at its renewal time (a quarter of a short life), awake before expiry.
        let now = now_ms();
        let token = Token {
            value: "t".into(),
            obtained_ms: now,
            expires_ms: now + 4_000,
        };
        assert!(tokens.record("api", &c, Ok(token.clone())));
        assert_eq!(tokens.next_wake_ms(&services), Some(now + 1_000));
        assert!(!tokens.due("api", &c, now + 999));
        assert!(tokens.due("api", &c, now + 1_000));
        // A failure: not before the backoff, and awake when the token stops being usable.
        assert!(!tokens.record("api", &c, Err("down".into())));
        let backoff_until = tokens.due_at("api", &c);
        assert!(backoff_until >= now + 1_000, "{backoff_until}");
        assert_eq!(
            tokens.next_wake_ms(&[]),
            Some(token.expires_ms - EXPIRY_SAFETY_MS)
        );
        // Another configuration: renewed at once.
        let mut other = c.clone();
        other.scope = Some("more".into());
        assert_eq!(
            tokens.due_at("api", &other),
            tokens.lock()["api"].next_attempt_ms
        );
        // No longer an OAuth service: forgotten.
        assert!(tokens.sweep(&[], now));
        assert_eq!(tokens.next_wake_ms(&services), Some(0));
    }

    #[test]
    fn expires_in_is_a_number_of_seconds_or_an_error() {
        let of = |v: Value| expires_in(Some(&v));
        assert_eq!(of(json!(600)).unwrap(), Some(600.0));
        assert_eq!(of(json!(1.5)).unwrap(), Some(1.5));
        // Sent as a string by some providers: still its seconds, not the default hour.
        assert_eq!(of(json!("600")).unwrap(), Some(600.0));
        assert_eq!(of(json!(" 2 ")).unwrap(), Some(2.0));
        assert_eq!(expires_in(None).unwrap(), None);
        assert_eq!(of(Value::Null).unwrap(), None);
        for bad in [
            json!("soon"),
            json!("inf"),
            json!("NaN"),
            json!(true),
            json!([600]),
        ] {
            let e = of(bad.clone()).unwrap_err();
            assert!(e.contains("expires_in"), "{bad}: {e}");
        }
    }

    #[test]
    fn configurations_are_checked_without_quoting_secrets() {
        let base = json!({"token_url": "https://idp.example/token", "grant": "client_credentials", "client_id": "c"});
        let mut ok = base.clone();
        ok["client_secret"] = json!("s3cret-value");
        let c = parse(ok).unwrap();
        assert_eq!(
            (c.header.as_str(), c.renew_margin_secs),
            ("authorization", 300)
        );
        assert_eq!(c.client_auth(), "client_secret_basic");
        assert!(!format!("{c:?}").contains("s3cret"));
        // Neither or both of the secret and the key; a bad key; unknown fields; a bad header.
        assert!(parse(base.clone()).is_err());
        let mut both = base.clone();
        both["client_secret"] = json!("s");
        both["private_key_pem"] = json!("x");
        assert!(parse(both).is_err());
        let mut bad_key = base.clone();
        bad_key["private_key_pem"] =
            json!("-----BEGIN PRIVATE KEY-----\ns3cret\n-----END PRIVATE KEY-----");
        let e = parse(bad_key).unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        let mut extra = base.clone();
        extra["client_secret"] = json!("s3cret-value");
        extra["nope"] = json!(1);
        assert!(!parse(extra).unwrap_err().contains("s3cret"));
        let mut header = base;
        header["client_secret"] = json!("s");
        header["header"] = json!("x-podgate-user");
        assert!(parse(header).is_err());
        assert!(parse(
            json!({"token_url": "https://idp.example/token", "grant": "jwt_bearer", "iss": "i"})
        )
        .is_err());
    }

    #[test]
    fn a_sealed_configuration_opens_only_for_its_service() {
        use crate::key_encryption::KeyEncryptionKey;
        let kek = KeyEncryption::new(Some(KeyEncryptionKey::from_bytes([9; 32], "t")), vec![]);
        let c = parse(json!({"token_url": "https://idp.example/token", "grant": "client_credentials", "client_id": "c", "client_secret": "s3cret-value"})).unwrap();
        let stored = seal(&kek, "api", &c).unwrap();
        assert!(stored.kek_id.is_some());
        assert!(!stored.config.contains("s3cret"));
        assert_eq!(open(&kek, "api", &stored).unwrap(), c);
        assert!(open(&kek, "other", &stored).is_err());
    }
}
