//! OpenID Connect ID tokens (RS256, ES256) from configured issuers.
//!
//! Only ID tokens sign people in. An issuer also signs other JWTs with the same keys (RFC 9068
//! access tokens, logout tokens, introspection answers), often for the same client; they are
//! told apart by the header's `typ` (absent or `JWT` for ID tokens) and by claims only those
//! kinds carry (`client_id`, `scope`, `scp`, `events`, and the `typ`/`token_use` claims some
//! providers add). The `aud` must list a configured client id of the issuer and nothing else,
//! and `azp`, when present, must be one of them (OpenID Connect Core 3.1.3.7).
//!
//! The same discipline as `podgate_protocol::token`: the token's `iss` picks exactly one
//! configured issuer, its `kid` picks exactly one key of that issuer, the key fixes the
//! algorithm, and the token's `alg` must name exactly it. `none` and HS* are never accepted;
//! `jku`/`jwk`/`x5u`/`x5c`/`crit` headers are refused (keys come only from configuration).
//!
//! Keys (`keys`) come from each issuer's JWKS URL (or the `jwks_uri` of its discovery document), are
//! cached for the answer's `max-age` (clamped to 1 min..24 h, 1 h without one), and fetched again
//! when stale or when a token names an unknown `kid`, at most once per `min_refresh` per issuer
//! (see [`OidcVerifier::key`]: a token with a rotated-in kid waits for that fetch, it is never
//! refused for being early). A fetch that fails keeps the keys we had, and a kid it could not
//! check is answered as "provider unreachable", not as a bad token; a fetch that succeeds drops
//! keys the issuer no longer lists.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use jwt_compact::alg::{Es256, Rsa, StrongAlg};
use jwt_compact::{AlgorithmExt, Claims, UntrustedToken, ValidationError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::idp::{IdTokenAlg, OidcProvider};
use crate::metrics::Metrics;

mod keys;

pub use keys::{http_client, read_limited};
use keys::{key_client, IdKey, Issuer, KeyCache};

/// Longest ID token looked at.
pub const MAX_ID_TOKEN_LEN: usize = 16 * 1024;
/// Why a token was not accepted. `Rejected` is the client's problem (401); `Upstream` means the
/// issuer's keys could not be had to check it (503: try again).
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

/// Every configured issuer with its key cache.
pub struct OidcVerifier {
    issuers: Vec<Arc<Issuer>>,
    http: reqwest::Client,
    metrics: Metrics,
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

impl OidcVerifier {
    pub fn new(providers: &[OidcProvider], metrics: Metrics) -> Result<Self, String> {
        Ok(OidcVerifier {
            issuers: providers
                .iter()
                .map(|p| {
                    Arc::new(Issuer {
                        cfg: p.clone(),
                        cache: RwLock::new(KeyCache::default()),
                        refreshing: tokio::sync::Mutex::new(()),
                        fetches: AtomicU64::new(0),
                    })
                })
                .collect(),
            http: key_client()?,
            metrics,
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

    /// The configured provider named `name`.
    pub fn provider(&self, name: &str) -> Option<&OidcProvider> {
        self.issuers
            .iter()
            .find(|p| p.cfg.name == name)
            .map(|p| &p.cfg)
    }

    /// The providers that sign people in at `/auth/login`, in configuration order.
    pub fn sign_in_providers(&self) -> impl Iterator<Item = &OidcProvider> {
        self.issuers
            .iter()
            .map(|p| &p.cfg)
            .filter(|p| p.sign_in.is_some())
    }

    pub fn provider_name(&self, index: usize) -> &str {
        self.issuers.get(index).map_or("", |p| p.cfg.name.as_str())
    }

    /// How many times the keys of provider `name` were fetched (tests and metrics).
    pub fn fetch_count(&self, name: &str) -> u64 {
        self.issuers
            .iter()
            .find(|p| p.cfg.name == name)
            .map_or(0, |p| p.fetches.load(Ordering::SeqCst))
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
        Ok(self.verify_claims(issuer, untrusted, now).await?.0)
    }

    /// Checks a token of `issuer` and returns what it says about the person with all its claims.
    async fn verify_claims(
        &self,
        issuer: &Arc<Issuer>,
        untrusted: &UntrustedToken<'_, ExtraHeader>,
        now: i64,
    ) -> Result<(IdClaims, Map<String, Value>), OidcError> {
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
        check_typ(header.token_type.as_deref())?;
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
        Ok((check_claims(cfg, claims, now)?, claims.custom.clone()))
    }

    /// Verifies the ID token of podgate's own sign-in with the provider named `name`: what
    /// [`OidcVerifier::verify_for`] checks, then that it was issued to the sign-in's client
    /// (`aud` lists `client_id`; `azp`, when present, is `client_id`) and carries the sign-in's
    /// `nonce` (OpenID Connect Core 3.1.3.7).
    pub async fn verify_sign_in(
        &self,
        name: &str,
        token: &str,
        now: i64,
        client_id: &str,
        nonce: &str,
    ) -> Result<IdClaims, OidcError> {
        let issuer = self
            .issuers
            .iter()
            .find(|p| p.cfg.name == name)
            .ok_or_else(|| OidcError::Upstream(format!("no identity provider {name:?}")))?;
        let untrusted = parse(token)?;
        let (id, claims) = self.verify_claims(issuer, &untrusted, now).await?;
        let for_us = match claims.get("aud") {
            Some(Value::String(a)) => a == client_id,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(client_id)),
            _ => false,
        };
        if !for_us {
            return Err(rejected(format!(
                "the provider's ID token was issued to {}, not to podgate's sign-in client {client_id:?}",
                claims.get("aud").map_or_else(String::new, Value::to_string)
            )));
        }
        if let Some(azp) = claims.get("azp") {
            if azp.as_str() != Some(client_id) {
                return Err(rejected(format!(
                    "the provider's ID token was issued to client {azp} (`azp`), not to podgate's sign-in client {client_id:?}"
                )));
            }
        }
        let same_nonce = claims
            .get("nonce")
            .and_then(Value::as_str)
            .is_some_and(|n| subtle::ConstantTimeEq::ct_eq(n.as_bytes(), nonce.as_bytes()).into());
        if !same_nonce {
            return Err(rejected(
                "the provider's ID token does not carry this sign-in's nonce: it belongs to another sign-in",
            ));
        }
        Ok(id)
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

/// ID tokens carry no `typ` or `JWT` (RFC 7519 5.1; any casing, `application/` prefix allowed);
/// anything else (`at+jwt`, `logout+jwt`, `token-introspection+jwt`, ...) is another kind of
/// token from the same issuer.
fn check_typ(typ: Option<&str>) -> Result<(), OidcError> {
    let Some(typ) = typ else {
        return Ok(());
    };
    let lower = typ.to_ascii_lowercase();
    let bare = lower.strip_prefix("application/").unwrap_or(&lower);
    match bare {
        "jwt" => Ok(()),
        "at+jwt" => Err(rejected(format!(
            "the token is an OAuth access token (typ {typ:?}), not an ID token; send the ID token (`id_token`) the identity provider returned at sign-in"
        ))),
        _ => Err(rejected(format!(
            "the token's typ {typ:?} says it is not an ID token (ID tokens have typ JWT or none); send the ID token (`id_token`) the identity provider returned at sign-in"
        ))),
    }
}

/// Claims only other kinds of token carry: RFC 9068 access tokens (`client_id`, `scope`), other
/// access tokens (`scp`), security event and logout tokens (`events`).
const NOT_ID_TOKEN_CLAIMS: &[&str] = &["client_id", "scope", "scp", "events"];

/// Refuses tokens of the issuer that are not ID tokens by their claims.
fn check_kind(c: &Map<String, Value>) -> Result<(), OidcError> {
    if let Some(claim) = NOT_ID_TOKEN_CLAIMS.iter().find(|k| c.contains_key(**k)) {
        return Err(rejected(format!(
            "the token carries `{claim}`, a claim of access tokens or logout tokens, not of ID tokens; send the ID token (`id_token`) the identity provider returned at sign-in"
        )));
    }
    // Keycloak marks its tokens with a `typ` claim (`ID`, `Bearer`, `Refresh`), Amazon Cognito
    // with `token_use` (`id`, `access`).
    for (claim, id) in [("typ", "id"), ("token_use", "id")] {
        if let Some(v) = c.get(claim) {
            if !v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(id)) {
                return Err(rejected(format!(
                    "the token's `{claim}` claim is {v}, so it is not an ID token; send the ID token (`id_token`) the identity provider returned at sign-in"
                )));
            }
        }
    }
    Ok(())
}

/// Checks `aud` and `azp` as OpenID Connect Core 3.1.3.7 requires: `aud` lists one of the
/// configured client ids and no audience that is not one; `azp`, when present, is one of them,
/// and it must be present when there are several audiences.
fn check_audience(cfg: &OidcProvider, c: &Map<String, Value>) -> Result<(), OidcError> {
    let trusted = |a: &str| cfg.client_ids.iter().any(|id| id == a);
    let clients = cfg.client_ids.join(", ");
    let auds: Vec<&str> = match c.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= 16 => list
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| rejected("the ID token's audience `aud` lists something that is not a string"))?,
        other => {
            return Err(rejected(format!(
                "the ID token's audience `aud` is {}, not a client id or a list of 1-16 of them; get an ID token issued to one of: {clients}",
                other.map_or_else(|| "missing".to_owned(), Value::to_string)
            )))
        }
    };
    if !auds.iter().any(|a| trusted(a)) {
        return Err(rejected(format!(
            "the ID token is for audience {}, not for a client podgate trusts; get an ID token issued to one of: {clients}",
            c.get("aud").map_or_else(String::new, Value::to_string)
        )));
    }
    let untrusted: Vec<&str> = auds.iter().copied().filter(|a| !trusted(a)).collect();
    if !untrusted.is_empty() {
        return Err(rejected(format!(
            "the ID token is also for audience {untrusted:?}, which podgate does not trust (an ID token with other audiences could be replayed by them); get an ID token issued to one of: {clients} alone"
        )));
    }
    match c.get("azp") {
        None if auds.len() > 1 => Err(rejected(format!(
            "the ID token has several audiences but no `azp` (authorized party) saying which client it was issued to; get an ID token issued to one of: {clients}"
        ))),
        None => Ok(()),
        Some(Value::String(azp)) if trusted(azp) => Ok(()),
        Some(azp) => Err(rejected(format!(
            "the ID token was issued to client {azp} (`azp`), not to a client podgate trusts; get an ID token issued to one of: {clients}"
        ))),
    }
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
    check_kind(c)?;
    check_audience(cfg, c)?;
    // OpenID Connect requires `sub` in every ID token, whichever claim names the user here.
    if !matches!(c.get("sub"), Some(Value::String(s)) if !s.is_empty()) {
        return Err(rejected(
            "the ID token has no `sub` claim (a non-empty string), which every ID token carries; send the ID token (`id_token`) the identity provider returned at sign-in",
        ));
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
    // Only JSON `true` says the email is verified: `false`, `"true"`, `1` or `null` do not. An
    // absent claim counts as verified only where the provider is configured not to require it.
    let verified = match c.get("email_verified") {
        Some(Value::Bool(true)) => true,
        None => !cfg.require_email_verified,
        Some(_) => false,
    };
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::time::Duration;

    use serde_json::json;
    use url::Url;

    use crate::config::idp::KeySource;

    fn provider(client_ids: &[&str], require_email_verified: bool) -> OidcProvider {
        OidcProvider {
            name: "t".into(),
            issuer: "https://idp.example.dev".into(),
            client_ids: client_ids.iter().map(|s| (*s).to_owned()).collect(),
            keys: KeySource::Jwks(Url::parse("https://idp.example.dev/jwks").unwrap()),
            cookie: None,
            subject_claim: "sub".into(),
            email_claim: "email".into(),
            require_email_verified,
            user_prefix: String::new(),
            algorithms: vec![IdTokenAlg::Rs256],
            leeway: 60,
            max_lifetime: 86_400,
            allow_insecure_http: false,
            min_refresh: Duration::from_secs(5),
            sign_in: None,
        }
    }

    fn claims(extra: Value) -> Claims<Map<String, Value>> {
        let mut c = json!({
            "iss": "https://idp.example.dev", "aud": "web", "sub": "alice",
            "iat": 1_000, "exp": 2_000, "email": "alice@example.dev",
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        serde_json::from_value(c).unwrap()
    }

    fn check(cfg: &OidcProvider, extra: Value) -> Result<IdClaims, OidcError> {
        check_claims(cfg, &claims(extra), 1_500)
    }

    #[test]
    fn typ_must_be_absent_or_jwt() {
        for ok in [
            None,
            Some("JWT"),
            Some("jwt"),
            Some("application/jwt"),
            Some("APPLICATION/JWT"),
        ] {
            assert_eq!(check_typ(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+Jwt",
        ] {
            let Err(OidcError::Rejected(msg)) = check_typ(Some(bad)) else {
                panic!("{bad} accepted");
            };
            assert!(msg.contains("access token"), "{msg}");
        }
        for bad in [
            "logout+jwt",
            "secevent+jwt",
            "token-introspection+jwt",
            "JWS",
            "",
            "JWT ",
            "application/",
            "xjwt",
        ] {
            let Err(OidcError::Rejected(msg)) = check_typ(Some(bad)) else {
                panic!("{bad:?} accepted");
            };
            assert!(msg.contains("not an ID token"), "{msg}");
        }
    }

    #[test]
    fn claims_of_other_token_kinds_are_refused() {
        let cfg = provider(&["web"], true);
        assert!(check(&cfg, json!({})).is_ok());
        assert!(check(&cfg, json!({"typ": "ID", "token_use": "id"})).is_ok());
        for extra in [
            json!({"client_id": "web"}),
            json!({"scope": "openid"}),
            json!({"scp": ["a"]}),
            json!({"events": {}}),
            json!({"typ": "Bearer"}),
            json!({"typ": "Refresh"}),
            json!({"typ": true}),
            json!({"token_use": "access"}),
        ] {
            assert!(
                matches!(check(&cfg, extra.clone()), Err(OidcError::Rejected(_))),
                "{extra}"
            );
        }
    }

    #[test]
    fn audience_and_azp_follow_openid_connect_core() {
        let cfg = provider(&["web", "cli"], true);
        for ok in [
            json!({"aud": "web"}),
            json!({"aud": "cli"}),
            json!({"aud": ["cli"]}),
            json!({"aud": "web", "azp": "web"}),
            json!({"aud": "web", "azp": "cli"}),
            json!({"aud": ["web", "cli"], "azp": "web"}),
        ] {
            assert!(check(&cfg, ok.clone()).is_ok(), "{ok}");
        }
        for (bad, needle) in [
            (json!({"aud": "other"}), "not for a client podgate trusts"),
            (json!({"aud": "WEB"}), "not for a client podgate trusts"),
            (
                json!({"aud": ["web", "other"], "azp": "web"}),
                "also for audience",
            ),
            (
                json!({"aud": ["other", "web"], "azp": "web"}),
                "also for audience",
            ),
            (json!({"aud": ["web", "cli"]}), "no `azp`"),
            (json!({"aud": ["web", "web"]}), "no `azp`"),
            (json!({"aud": "web", "azp": "other"}), "`azp`"),
            (json!({"aud": "web", "azp": null}), "`azp`"),
            (json!({"aud": "web", "azp": ["web"]}), "`azp`"),
            (json!({"aud": []}), "`aud`"),
            (json!({"aud": null}), "`aud`"),
            (json!({"aud": 7}), "`aud`"),
            (json!({"aud": ["web", 7]}), "not a string"),
            (json!({"aud": vec!["web"; 17]}), "`aud`"),
        ] {
            let Err(OidcError::Rejected(msg)) = check(&cfg, bad.clone()) else {
                panic!("{bad} accepted");
            };
            assert!(msg.contains(needle), "{bad}: {needle:?} not in {msg:?}");
        }
        // A missing `aud` is refused too.
        let mut c = claims(json!({}));
        c.custom.remove("aud");
        assert!(check_claims(&cfg, &c, 1_500).is_err());
    }

    #[test]
    fn sub_is_required_whatever_names_the_user() {
        let mut cfg = provider(&["web"], true);
        cfg.subject_claim = "user_id".into();
        assert!(check(&cfg, json!({"user_id": "u1"})).is_ok());
        let mut c = claims(json!({"user_id": "u1"}));
        c.custom.remove("sub");
        assert!(check_claims(&cfg, &c, 1_500).is_err());
        assert!(check(&cfg, json!({"user_id": "u1", "sub": ""})).is_err());
        assert!(check(&cfg, json!({"user_id": "u1", "sub": 1})).is_err());
    }

    #[test]
    fn only_json_true_verifies_an_email() {
        let strict = provider(&["web"], true);
        let lax = provider(&["web"], false);
        let email = |cfg: &OidcProvider, v: Option<Value>| {
            let mut c = claims(json!({}));
            if let Some(v) = v {
                c.custom.insert("email_verified".into(), v);
            }
            check_claims(cfg, &c, 1_500).unwrap().email
        };
        let some = Some("alice@example.dev".to_owned());
        assert_eq!(email(&strict, Some(json!(true))), some);
        assert_eq!(email(&lax, Some(json!(true))), some);
        assert_eq!(email(&strict, None), None);
        assert_eq!(email(&lax, None), some);
        for v in [
            json!(false),
            json!("true"),
            json!("false"),
            json!(1),
            json!(0),
            Value::Null,
            json!([true]),
            json!({"v": true}),
        ] {
            assert_eq!(email(&strict, Some(v.clone())), None, "{v}");
            assert_eq!(email(&lax, Some(v.clone())), None, "{v}");
        }
    }
}
