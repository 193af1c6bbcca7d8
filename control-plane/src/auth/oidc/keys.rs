//! The identity providers' signing keys: fetched from each issuer's JWKS URL (or the
//! `jwks_uri` of its discovery document), compiled, and cached per issuer for the answer's
//! `max-age` (clamped to 1 min..24 h, 1 h without one); fetched again when stale or when a token
//! names an unknown `kid`, at most once per `min_refresh` per issuer. Also the HTTP client the
//! control plane fetches provider documents with.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jwt_compact::alg::{RsaPublicKey, StrongKey};
use jwt_compact::jwk::JsonWebKey;
use serde_json::Value;
use url::Url;

use super::{rejected, OidcError, OidcVerifier};
use crate::config::idp::{fetch_url, IdTokenAlg, KeySource, OidcProvider};
use crate::error_text::with_causes;
use crate::metrics::IdpDocument;

/// Most keys kept per issuer.
const MAX_KEYS: usize = 64;
/// Key cache lifetime without a `max-age`, and its bounds.
const DEFAULT_KEY_TTL: Duration = Duration::from_secs(3600);
const MIN_KEY_TTL: Duration = Duration::from_secs(60);
const MAX_KEY_TTL: Duration = Duration::from_secs(86_400);
/// Timeout of one fetch of keys or discovery.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest JWKS or discovery document read.
const MAX_DOC_BYTES: usize = 512 * 1024;

/// A provider's signing key, compiled; its algorithm is fixed by it.
pub(super) enum IdKey {
    Rs256(StrongKey<RsaPublicKey>),
    Es256(Box<p256::ecdsa::VerifyingKey>),
}

impl IdKey {
    pub(super) fn alg(&self) -> IdTokenAlg {
        match self {
            IdKey::Rs256(_) => IdTokenAlg::Rs256,
            IdKey::Es256(_) => IdTokenAlg::Es256,
        }
    }
}

#[derive(Default)]
pub(super) struct KeyCache {
    pub(super) keys: HashMap<String, Arc<IdKey>>,
    pub(super) fresh_until: Option<Instant>,
    /// When the last fetch began (successful or not): fetches are `min_refresh` apart.
    pub(super) last_attempt: Option<Instant>,
    /// Why the last fetch failed; `None` once one succeeds.
    pub(super) last_error: Option<String>,
}

pub(super) struct Issuer {
    pub(super) cfg: OidcProvider,
    pub(super) cache: RwLock<KeyCache>,
    /// One fetch at a time per issuer; others wait and reuse its result.
    pub(super) refreshing: tokio::sync::Mutex<()>,
    /// Fetches begun (counted under `refreshing`): tells a waiting request whether a fetch
    /// began after it missed a kid.
    pub(super) fetches: AtomicU64,
}

impl Issuer {
    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, KeyCache> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, KeyCache> {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long until the next fetch is allowed (zero: now).
    fn wait_before_fetch(&self) -> Duration {
        self.read_cache().last_attempt.map_or(Duration::ZERO, |t| {
            (t + self.cfg.min_refresh).saturating_duration_since(Instant::now())
        })
    }
}

/// The answer when a kid cannot be checked because the issuer's keys could not be fetched: the
/// token may be fine, so it is not a rejection.
fn keys_unavailable(cfg: &OidcProvider, kid: &str, why: &str) -> OidcError {
    OidcError::Upstream(format!(
        "the identity provider {}'s signing keys could not be fetched ({why}), so the ID token's key {kid:?} cannot be checked; this is not a problem with the token: try again in a few seconds",
        cfg.name
    ))
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

/// The client for keys and discovery: like [`http_client`], but a new connection per fetch.
/// Fetches are minutes apart, and a pooled connection the issuer's server has meanwhile closed
/// (Node closes idle ones after 5 s) fails the fetch that reuses it.
pub(super) fn key_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(3))
        .timeout(FETCH_TIMEOUT)
        .pool_max_idle_per_host(0)
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
    /// The key `kid` of `issuer`, fetching the issuer's keys again when they are stale or lack
    /// that kid.
    ///
    /// A kid we do not know is either a key the issuer has just rotated in or made up. Either
    /// way the request is answered from a fetch that began after its kid was missed: the first
    /// such request fetches (waiting for `min_refresh` since the previous fetch when needed) and
    /// every request that missed before that fetch began reuses its result (one that missed
    /// while a fetch was under way waits for the next). So a flood of made-up kids costs the
    /// issuer one fetch per `min_refresh`, and a token signed with a rotated-in key is never
    /// refused for being early: it waits at most `min_refresh` plus two fetches.
    pub(super) async fn key(
        &self,
        issuer: &Arc<Issuer>,
        kid: &str,
    ) -> Result<Arc<IdKey>, OidcError> {
        let (found, stale) = {
            let cache = issuer.read_cache();
            let stale = cache.fresh_until.is_none_or(|t| Instant::now() >= t);
            (cache.keys.get(kid).cloned(), stale)
        };
        if let Some(key) = found {
            if !stale {
                return Ok(key);
            }
            // Stale: one request fetches when the interval allows; the others keep using the key
            // meanwhile, and so does everyone when the fetch fails.
            let Ok(_guard) = issuer.refreshing.try_lock() else {
                return Ok(key);
            };
            if !issuer.wait_before_fetch().is_zero() {
                return Ok(key);
            }
            self.refresh(issuer).await;
            return issuer.read_cache().keys.get(kid).cloned().ok_or_else(|| {
                rejected(format!(
                    "the ID token's key id {kid:?} is no longer among {}'s published keys; sign in again for a fresh ID token",
                    issuer.cfg.name
                ))
            });
        }

        let seen = issuer.fetches.load(Ordering::SeqCst);
        let _guard = issuer.refreshing.lock().await;
        if issuer.fetches.load(Ordering::SeqCst) == seen {
            // No fetch has begun since this kid was missed: this request makes one.
            let wait = issuer.wait_before_fetch();
            if !wait.is_zero() {
                // The issuer failed moments ago: say so now rather than hold the request.
                if let Some(e) = issuer.read_cache().last_error.clone() {
                    return Err(keys_unavailable(&issuer.cfg, kid, &e));
                }
                tokio::time::sleep(wait).await;
            }
            self.refresh(issuer).await;
        }
        let cache = issuer.read_cache();
        if let Some(key) = cache.keys.get(kid) {
            return Ok(key.clone());
        }
        if let Some(e) = &cache.last_error {
            return Err(keys_unavailable(&issuer.cfg, kid, e));
        }
        Err(rejected(format!(
            "the ID token's key id {kid:?} is not among {}'s published keys (fetched just now); send an ID token this identity provider issued",
            issuer.cfg.name
        )))
    }

    /// Fetches the issuer's keys once. A failure keeps the keys we had and is remembered in
    /// `last_error` until a fetch succeeds.
    async fn refresh(&self, issuer: &Issuer) {
        issuer.fetches.fetch_add(1, Ordering::SeqCst);
        issuer.write_cache().last_attempt = Some(Instant::now());
        let fetched = self.fetch_keys(&issuer.cfg).await;
        self.metrics
            .idp_fetch(&issuer.cfg.name, IdpDocument::Jwks, fetched.is_ok());
        match fetched {
            Ok((keys, ttl)) => {
                tracing::info!(issuer = %issuer.cfg.issuer, keys = keys.len(), "fetched the identity provider's keys");
                let mut cache = issuer.write_cache();
                cache.keys = keys;
                cache.fresh_until = Some(Instant::now() + ttl);
                cache.last_error = None;
            }
            Err(e) => {
                let mut cache = issuer.write_cache();
                tracing::warn!(issuer = %issuer.cfg.issuer, error = %e, kept = cache.keys.len(), "fetching the identity provider's keys failed");
                cache.last_error = Some(e);
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
            .map_err(|e| format!("{url}: {}", with_causes(&e)))?;
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
