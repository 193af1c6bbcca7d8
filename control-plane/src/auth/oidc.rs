//! OpenID Connect ID tokens (RS256, ES256) from configured issuers.
//!
//! The same discipline as `podgate_protocol::token`: the token's `iss` picks exactly one
//! configured issuer, its `kid` picks exactly one key of that issuer, the key fixes the
//! algorithm, and the token's `alg` must name exactly it. `none` and HS* are never accepted;
//! `jku`/`jwk`/`x5u`/`x5c`/`crit` headers are refused (keys come only from configuration).
//!
//! Keys come from each issuer's JWKS URL (or the `jwks_uri` of its discovery document), are
//! cached for the answer's `max-age` (clamped to 1 min..24 h, 1 h without one), and refreshed when
//! stale or when a token names an unknown `kid`, at most once per `min_refresh` per issuer (so a
//! flood of made-up kids costs the issuer nothing). A refresh that fails keeps the keys we had; a
//! refresh that succeeds drops keys the issuer no longer lists.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jwt_compact::alg::{Es256, Rsa, RsaPublicKey, StrongAlg, StrongKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{AlgorithmExt, Claims, UntrustedToken, ValidationError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use crate::config::idp::{fetch_url, IdTokenAlg, KeySource, OidcProvider};

/// Longest ID token looked at.
pub const MAX_ID_TOKEN_LEN: usize = 16 * 1024;
/// Largest JWKS or discovery document read.
const MAX_DOC_BYTES: usize = 512 * 1024;
/// Most keys kept per issuer.
const MAX_KEYS: usize = 64;
/// Key cache lifetime without a `max-age`, and its bounds.
const DEFAULT_KEY_TTL: Duration = Duration::from_secs(3600);
const MIN_KEY_TTL: Duration = Duration::from_secs(60);
const MAX_KEY_TTL: Duration = Duration::from_secs(86_400);
/// Timeout of one fetch of keys or discovery.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a token was not accepted. `Rejected` is the client's problem (401); `Upstream` means the
/// issuer's keys could not be had (502).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcError {
    Rejected(String),
    Upstream(String),
}

fn rejected(msg: impl Into<String>) -> OidcError {
    OidcError::Rejected(msg.into())
}

/// What a verified ID token says about the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdClaims {
    /// `oidc:NAME`.
    pub verifier: String,
    pub subject: String,
    pub email: Option<String>,
    pub user_prefix: String,
}

/// Header fields never trusted (keys come from configuration only).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ExtraHeader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwk: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x5c: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<Value>,
}

enum IdKey {
    Rs256(StrongKey<RsaPublicKey>),
    Es256(Box<p256::ecdsa::VerifyingKey>),
}

impl IdKey {
    fn alg(&self) -> IdTokenAlg {
        match self {
            IdKey::Rs256(_) => IdTokenAlg::Rs256,
            IdKey::Es256(_) => IdTokenAlg::Es256,
        }
    }
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<IdKey>>,
    fresh_until: Option<Instant>,
    /// Last fetch attempt (successful or not): refreshes are rate limited from it.
    last_attempt: Option<Instant>,
}

struct Issuer {
    cfg: OidcProvider,
    cache: RwLock<KeyCache>,
    /// One refresh at a time per issuer; others wait and reuse its result.
    refreshing: tokio::sync::Mutex<()>,
    fetches: std::sync::atomic::AtomicU64,
}

/// Every configured issuer with its key cache.
pub struct OidcVerifier {
    issuers: Vec<Arc<Issuer>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| i.cfg.issuer.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// An HTTP client for fetching keys and sessions: rustls, no redirects, timeouts.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(3)))
        .timeout(timeout)
        .user_agent(concat!("podgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Reads at most `limit` bytes of a response body.
pub async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let cc = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    cc.split(',').find_map(|part| {
        let v = part.trim().strip_prefix("max-age=")?;
        v.trim().parse::<u64>().ok().map(Duration::from_secs)
    })
}

fn b64url(s: Option<&Value>) -> Option<Vec<u8>> {
    use base64::Engine;
    let s = s?.as_str()?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// Compiles one JWK into a verifying key, or says why it is skipped.
fn compile_jwk(jwk: &Value, allowed: &[IdTokenAlg]) -> Result<(String, IdKey), String> {
    let kid = jwk
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or("no kid")?;
    if let Some(u) = jwk.get("use") {
        if u.as_str() != Some("sig") {
            return Err(format!("key {kid}: use is not sig"));
        }
    }
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = jwk.get("crv").and_then(Value::as_str);
    let alg = match jwk.get("alg").and_then(Value::as_str) {
        Some(a) => {
            IdTokenAlg::parse(a).ok_or_else(|| format!("key {kid}: alg {a} not accepted"))?
        }
        // No `alg`: the key type decides (Google and some others leave it out).
        None => match (kty, crv) {
            ("RSA", _) => IdTokenAlg::Rs256,
            ("EC", Some("P-256")) => IdTokenAlg::Es256,
            _ => return Err(format!("key {kid}: kty {kty} not supported")),
        },
    };
    if !allowed.contains(&alg) {
        return Err(format!("key {kid}: {} not allowed", alg.name()));
    }
    let key = match (alg, kty) {
        (IdTokenAlg::Rs256, "RSA") => {
            let n = b64url(jwk.get("n")).ok_or_else(|| format!("key {kid}: bad n"))?;
            let e = b64url(jwk.get("e")).ok_or_else(|| format!("key {kid}: bad e"))?;
            let web = JsonWebKey::Rsa {
                modulus: Cow::Owned(n),
                public_exponent: Cow::Owned(e),
                private_parts: None,
            };
            let pk = RsaPublicKey::try_from(&web).map_err(|e| format!("key {kid}: {e}"))?;
            let strong = StrongKey::try_from(pk)
                .map_err(|_| format!("key {kid}: RSA modulus shorter than 2048 bits"))?;
            IdKey::Rs256(strong)
        }
        (IdTokenAlg::Es256, "EC") if crv == Some("P-256") => {
            let x = b64url(jwk.get("x")).ok_or_else(|| format!("key {kid}: bad x"))?;
            let y = b64url(jwk.get("y")).ok_or_else(|| format!("key {kid}: bad y"))?;
            if x.len() != 32 || y.len() != 32 {
                return Err(format!("key {kid}: P-256 coordinates are not 32 bytes"));
            }
            let mut sec1 = Vec::with_capacity(65);
            sec1.push(4u8);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                .map_err(|_| format!("key {kid}: not a point on P-256"))?;
            IdKey::Es256(Box::new(vk))
        }
        _ => return Err(format!("key {kid}: alg does not fit kty {kty}")),
    };
    Ok((kid.to_owned(), key))
}

/// Compiles a JWKS document. Keys that cannot be used are skipped (logged); a `kid` listed twice
/// is dropped altogether (it could not pick exactly one key).
fn compile_jwks(doc: &Value, cfg: &OidcProvider) -> Result<HashMap<String, Arc<IdKey>>, String> {
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no `keys` array")?;
    let mut keys: HashMap<String, Arc<IdKey>> = HashMap::new();
    let mut twice = Vec::new();
    for jwk in list.iter().take(MAX_KEYS) {
        match compile_jwk(jwk, &cfg.algorithms) {
            Ok((kid, key)) => {
                if keys.insert(kid.clone(), Arc::new(key)).is_some() {
                    twice.push(kid);
                }
            }
            Err(why) => {
                tracing::debug!(issuer = %cfg.issuer, %why, "skipping a JWKS key");
            }
        }
    }
    for kid in twice {
        tracing::warn!(issuer = %cfg.issuer, %kid, "the JWKS lists this kid twice; ignoring it");
        keys.remove(&kid);
    }
    Ok(keys)
}

impl OidcVerifier {
    pub fn new(providers: &[OidcProvider]) -> Result<Self, String> {
        Ok(OidcVerifier {
            issuers: providers
                .iter()
                .map(|p| {
                    Arc::new(Issuer {
                        cfg: p.clone(),
                        cache: RwLock::new(KeyCache::default()),
                        refreshing: tokio::sync::Mutex::new(()),
                        fetches: std::sync::atomic::AtomicU64::new(0),
                    })
                })
                .collect(),
            http: http_client(FETCH_TIMEOUT)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Providers that read ID tokens from a cookie: (index, cookie name).
    pub fn cookies(&self) -> impl Iterator<Item = (usize, &str)> {
        self.issuers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.cfg.cookie.as_deref().map(|c| (i, c)))
    }

    pub fn provider_name(&self, index: usize) -> &str {
        self.issuers.get(index).map_or("", |p| p.cfg.name.as_str())
    }

    /// How many times the keys of provider `name` were fetched (tests and metrics).
    pub fn fetch_count(&self, name: &str) -> u64 {
        self.issuers
            .iter()
            .find(|p| p.cfg.name == name)
            .map_or(0, |p| p.fetches.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A cheap check: does this look like a JWT (three base64url segments)?
    pub fn looks_like_jwt(token: &str) -> bool {
        token.len() <= MAX_ID_TOKEN_LEN
            && token.split('.').count() == 3
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    /// Verifies a bearer ID token: its `iss` picks the provider.
    pub async fn verify_any(&self, token: &str, now: i64) -> Result<IdClaims, OidcError> {
        let untrusted = parse(token)?;
        let peek: Claims<Map<String, Value>> =
            untrusted.deserialize_claims_unchecked().map_err(|_| {
                rejected("the ID token's claims are malformed (exp, iat and nbf must be numbers)")
            })?;
        let iss = peek
            .custom
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| rejected("the ID token has no `iss` claim"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|p| p.cfg.issuer == iss)
            .ok_or_else(|| {
                rejected(format!(
                    "the ID token's issuer {iss:?} is not configured here; configured: {}",
                    self.issuers
                        .iter()
                        .map(|p| p.cfg.issuer.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        self.verify_with(issuer, &untrusted, now).await
    }

    /// Verifies an ID token for provider `index` (its cookie).
    pub async fn verify_for(
        &self,
        index: usize,
        token: &str,
        now: i64,
    ) -> Result<IdClaims, OidcError> {
        let issuer = self
            .issuers
            .get(index)
            .ok_or_else(|| OidcError::Upstream("no such identity provider".into()))?;
        let untrusted = parse(token)?;
        self.verify_with(issuer, &untrusted, now).await
    }

    async fn verify_with(
        &self,
        issuer: &Arc<Issuer>,
        untrusted: &UntrustedToken<'_, ExtraHeader>,
        now: i64,
    ) -> Result<IdClaims, OidcError> {
        let cfg = &issuer.cfg;
        let alg = IdTokenAlg::parse(untrusted.algorithm()).ok_or_else(|| {
            rejected(format!(
                "the ID token's algorithm {:?} is not accepted; ID tokens must be RS256 or ES256 (never none or HS*)",
                untrusted.algorithm()
            ))
        })?;
        if !cfg.algorithms.contains(&alg) {
            return Err(rejected(format!(
                "the ID token's algorithm {} is not allowed for {}",
                alg.name(),
                cfg.name
            )));
        }
        let header = untrusted.header();
        let ex = &header.other_fields;
        if header.key_set_url.is_some()
            || header.certificate_url.is_some()
            || ex.jwk.is_some()
            || ex.x5c.is_some()
            || ex.crit.is_some()
        {
            return Err(rejected(
                "the ID token's header carries jku, jwk, x5u, x5c or crit, which are never trusted",
            ));
        }
        let kid = header
            .key_id
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| rejected("the ID token has no `kid` header"))?;
        let key = self.key(issuer, kid).await?;
        // The key fixes the algorithm.
        if key.alg() != alg {
            return Err(rejected(format!(
                "the ID token says {} but its key {kid} is {}",
                alg.name(),
                key.alg().name()
            )));
        }
        let checked = match key.as_ref() {
            IdKey::Rs256(pk) => StrongAlg(Rsa::rs256())
                .validator::<Map<String, Value>>(pk)
                .validate(untrusted),
            IdKey::Es256(pk) => Es256
                .validator::<Map<String, Value>>(pk.as_ref())
                .validate(untrusted),
        }
        .map_err(|e| match e {
            ValidationError::MalformedClaims(_) | ValidationError::NoClaim(_) => {
                rejected("the ID token's claims are malformed (exp, iat and nbf must be numbers)")
            }
            _ => rejected("the ID token's signature is invalid"),
        })?;
        let claims = checked.claims();
        check_claims(cfg, claims, now)
    }

    /// The key `kid` of `issuer`, refreshing the cache when it is stale or lacks that kid.
    async fn key(&self, issuer: &Arc<Issuer>, kid: &str) -> Result<Arc<IdKey>, OidcError> {
        let lookup = |issuer: &Issuer| -> (Option<Arc<IdKey>>, bool, bool) {
            let cache = issuer
                .cache
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let stale = cache.fresh_until.is_none_or(|t| now >= t);
            let may_refresh = cache
                .last_attempt
                .is_none_or(|t| now.duration_since(t) >= issuer.cfg.min_refresh);
            (cache.keys.get(kid).cloned(), stale, may_refresh)
        };
        let (found, stale, may_refresh) = lookup(issuer);
        if let Some(key) = &found {
            if !stale || !may_refresh {
                return Ok(key.clone());
            }
        }
        if !may_refresh {
            let empty = issuer
                .cache
                .read()
                .map(|c| c.keys.is_empty())
                .unwrap_or(true);
            if empty {
                return Err(OidcError::Upstream(format!(
                    "the signing keys of identity provider {} are not available (the last fetch failed; it is retried at most every {} s)",
                    issuer.cfg.name,
                    issuer.cfg.min_refresh.as_secs()
                )));
            }
            return Err(rejected(format!(
                "the ID token's key id {kid:?} is not among {}'s keys (they were fetched less than {} s ago; an unknown kid refreshes them at most that often)",
                issuer.cfg.name,
                issuer.cfg.min_refresh.as_secs()
            )));
        }
        // One refresh at a time; whoever waited re-checks first.
        let _guard = issuer.refreshing.lock().await;
        let (found, stale, may_refresh) = lookup(issuer);
        if let Some(key) = &found {
            if !stale || !may_refresh {
                return Ok(key.clone());
            }
        }
        if may_refresh {
            self.refresh(issuer).await?;
        }
        let (found, _, _) = lookup(issuer);
        found.ok_or_else(|| {
            rejected(format!(
                "the ID token's key id {kid:?} is not among {}'s published keys",
                issuer.cfg.name
            ))
        })
    }

    async fn refresh(&self, issuer: &Issuer) -> Result<(), OidcError> {
        issuer
            .fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut cache = issuer
                .cache
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cache.last_attempt = Some(Instant::now());
        }
        match self.fetch_keys(&issuer.cfg).await {
            Ok((keys, ttl)) => {
                tracing::info!(issuer = %issuer.cfg.issuer, keys = keys.len(), "fetched the identity provider's keys");
                let mut cache = issuer
                    .cache
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                cache.keys = keys;
                cache.fresh_until = Some(Instant::now() + ttl);
                Ok(())
            }
            Err(e) => {
                let have = issuer.cache.read().map(|c| c.keys.len()).unwrap_or(0);
                tracing::warn!(issuer = %issuer.cfg.issuer, error = %e, kept = have, "fetching the identity provider's keys failed");
                if have == 0 {
                    Err(OidcError::Upstream(format!(
                        "the signing keys of identity provider {} could not be fetched: {e}",
                        issuer.cfg.name
                    )))
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn get_json(&self, url: &Url) -> Result<(Value, Option<Duration>), String> {
        let resp = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("{url} answered HTTP {}", status.as_u16()));
        }
        let ttl = max_age(resp.headers());
        let body = read_limited(resp, MAX_DOC_BYTES)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let v = serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON ({e})"))?;
        Ok((v, ttl))
    }

    async fn fetch_keys(
        &self,
        cfg: &OidcProvider,
    ) -> Result<(HashMap<String, Arc<IdKey>>, Duration), String> {
        let jwks_url = match &cfg.keys {
            KeySource::Jwks(u) => u.clone(),
            KeySource::Discovery(d) => {
                let (doc, _) = self.get_json(d).await?;
                let iss = doc.get("issuer").and_then(Value::as_str).unwrap_or("");
                if iss != cfg.issuer {
                    return Err(format!(
                        "the discovery document {d} names the issuer {iss:?}, not {:?}",
                        cfg.issuer
                    ));
                }
                let j = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("the discovery document {d} has no jwks_uri"))?;
                fetch_url(j, "jwks_uri", cfg.allow_insecure_http, "fix the issuer")
                    .map_err(|e| e.to_string())?
            }
        };
        let (doc, ttl) = self.get_json(&jwks_url).await?;
        let keys = compile_jwks(&doc, cfg)?;
        let ttl = ttl
            .unwrap_or(DEFAULT_KEY_TTL)
            .clamp(MIN_KEY_TTL, MAX_KEY_TTL);
        Ok((keys, ttl))
    }
}

fn parse(token: &str) -> Result<UntrustedToken<'_, ExtraHeader>, OidcError> {
    if token.is_empty() || token.len() > MAX_ID_TOKEN_LEN {
        return Err(rejected(format!(
            "the ID token is empty or longer than {MAX_ID_TOKEN_LEN} bytes"
        )));
    }
    UntrustedToken::<ExtraHeader>::try_from(token)
        .map_err(|_| rejected("the ID token is not a well-formed JWT"))
}

fn check_claims(
    cfg: &OidcProvider,
    claims: &Claims<Map<String, Value>>,
    now: i64,
) -> Result<IdClaims, OidcError> {
    let c = &claims.custom;
    let iss = c.get("iss").and_then(Value::as_str).unwrap_or("");
    if iss != cfg.issuer {
        return Err(rejected(format!(
            "the ID token's issuer {iss:?} is not {:?} ({})",
            cfg.issuer, cfg.name
        )));
    }
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => *a == cfg.audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(&cfg.audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(rejected(format!(
            "the ID token is for audience {}, not {:?}; sign in to the client this podgate is configured for",
            c.get("aud").map_or_else(|| "(none)".to_owned(), Value::to_string),
            cfg.audience
        )));
    }
    let exp = claims
        .expiration
        .map(|t| t.timestamp())
        .ok_or_else(|| rejected("the ID token has no `exp` claim"))?;
    let iat = claims
        .issued_at
        .map(|t| t.timestamp())
        .ok_or_else(|| rejected("the ID token has no `iat` claim"))?;
    if now >= exp.saturating_add(cfg.leeway) {
        return Err(rejected(format!(
            "the ID token expired {} s ago; get a fresh one from the identity provider",
            now - exp
        )));
    }
    if iat > now.saturating_add(cfg.leeway) {
        return Err(rejected(
            "the ID token was issued in the future (`iat`); check the clocks",
        ));
    }
    if let Some(nbf) = claims.not_before {
        if nbf.timestamp() > now.saturating_add(cfg.leeway) {
            return Err(rejected("the ID token is not valid yet (`nbf`)"));
        }
    }
    if exp < iat || exp - iat > cfg.max_lifetime {
        return Err(rejected(format!(
            "the ID token lives longer than {} s (exp - iat)",
            cfg.max_lifetime
        )));
    }
    let subject = match c.get(&cfg.subject_claim) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
        _ => {
            return Err(rejected(format!(
                "the ID token has no usable `{}` claim (a string of 1-255 characters)",
                cfg.subject_claim
            )))
        }
    };
    // An email the provider says is not verified is not used.
    let verified = c.get("email_verified").and_then(Value::as_bool) != Some(false);
    let email = c
        .get(&cfg.email_claim)
        .and_then(Value::as_str)
        .filter(|e| verified && e.contains('@') && e.len() <= 254)
        .map(str::to_owned);
    Ok(IdClaims {
        verifier: cfg.verifier(),
        subject,
        email,
        user_prefix: cfg.user_prefix.clone(),
    })
}
