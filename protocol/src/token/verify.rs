//! Verifying tokens: the key set a verifier holds (`VerifyingKey`, from JWKs) and
//! [`Verifier`]: parsing, the cheap checks that need no signature (`precheck`), full
//! verification (`verify`), and `verify_signed_here` for bytes this process signed itself.

use std::collections::HashMap;
use std::fmt;

use jwt_compact::alg::{Es256, Hs256, Hs256Key};
use jwt_compact::{AlgorithmExt, Claims, UntrustedToken};
use serde::Deserialize;

use super::{
    check_kid, unb64, Alg, ExtraHeader, Jwk, KeyError, KeySet, RawToken, TokenError, TokenKind,
    Verified, WireClaims, MAX_ASSERTION_LIFETIME_SECS, MAX_TICKET_LIFETIME_SECS, MAX_TOKEN_LEN,
    MIN_HMAC_SECRET_LEN, MIN_TOKEN_LEN,
};

enum VerifyingMaterial {
    /// Checked with `ed25519-dalek` (`verify_strict`), not through `jwt-compact`'s
    /// `ed25519-compact` backend that signs: on wasm32 `ed25519-dalek` does field arithmetic in
    /// 32-bit limbs, which the VM multiplies natively, where `ed25519-compact`'s 64-bit limbs
    /// need 128-bit products the VM builds from four.
    Ed25519(ed25519_dalek::VerifyingKey),
    Es256(Box<p256::ecdsa::VerifyingKey>),
    Hs256(Hs256Key),
}

struct VerifyingKey {
    alg: Alg,
    material: VerifyingMaterial,
}

impl VerifyingKey {
    fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        let kid = jwk.kid.as_str();
        let (alg, material) = match (jwk.kty.as_str(), jwk.alg.as_str(), jwk.crv.as_deref()) {
            ("OKP", "EdDSA", Some("Ed25519")) => {
                let x = unb64(kid, "x (the Ed25519 public key)", jwk.x.as_deref())?;
                let pk = <[u8; 32]>::try_from(x.as_slice())
                    .ok()
                    .and_then(|x| ed25519_dalek::VerifyingKey::from_bytes(&x).ok())
                    .ok_or_else(|| KeyError::BadMaterial {
                        kid: kid.into(),
                        what: "x (the Ed25519 public key)",
                    })?;
                (Alg::EdDSA, VerifyingMaterial::Ed25519(pk))
            }
            ("EC", "ES256", Some("P-256")) => {
                let x = unb64(kid, "x", jwk.x.as_deref())?;
                let y = unb64(kid, "y", jwk.y.as_deref())?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(KeyError::BadMaterial {
                        kid: kid.into(),
                        what: "x/y (P-256 coordinates)",
                    });
                }
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(4u8);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| {
                    KeyError::BadMaterial {
                        kid: kid.into(),
                        what: "x/y (not a point on P-256)",
                    }
                })?;
                (Alg::ES256, VerifyingMaterial::Es256(Box::new(vk)))
            }
            ("oct", "HS256", None) => {
                let k = unb64(kid, "k (the HMAC secret)", jwk.k.as_deref())?;
                if k.len() < MIN_HMAC_SECRET_LEN {
                    return Err(KeyError::WeakSecret { kid: kid.into() });
                }
                (Alg::HS256, VerifyingMaterial::Hs256(Hs256Key::new(k)))
            }
            _ => return Err(KeyError::Unsupported { kid: kid.into() }),
        };
        Ok(Self { alg, material })
    }
}

/// Verifies tokens of one kind against one issuer and one key set.
pub struct Verifier {
    kind: TokenKind,
    issuer: String,
    keys: HashMap<String, VerifyingKey>,
    /// The keys of this kind as they were given, sorted by `kid`: what [`Verifier::checks_as`]
    /// compares.
    jwks: Vec<Jwk>,
    leeway: i64,
    max_lifetime: i64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("kind", &self.kind)
            .field("issuer", &self.issuer)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Compiles a verifier. Keys whose `kid` lacks this kind's prefix are ignored (they belong to
    /// another kind); a malformed key of this kind fails the whole set.
    pub fn new(
        kind: TokenKind,
        issuer: impl Into<String>,
        keys: &KeySet,
        leeway_secs: i64,
        max_lifetime_secs: i64,
    ) -> Result<Self, KeyError> {
        let mut compiled = HashMap::new();
        let mut jwks = Vec::new();
        for jwk in &keys.keys {
            check_kid(&jwk.kid)?;
            if !jwk.kid.starts_with(kind.kid_prefix()) {
                continue;
            }
            let key = VerifyingKey::from_jwk(jwk)?;
            if compiled.insert(jwk.kid.clone(), key).is_some() {
                return Err(KeyError::DuplicateKid {
                    kid: jwk.kid.clone(),
                });
            }
            jwks.push(jwk.clone());
        }
        jwks.sort_by(|a, b| a.kid.cmp(&b.kid));
        let max_lifetime = match kind {
            TokenKind::LoginTicket => max_lifetime_secs.min(MAX_TICKET_LIFETIME_SECS),
            TokenKind::Capability => max_lifetime_secs,
            TokenKind::Assertion => max_lifetime_secs.min(MAX_ASSERTION_LIFETIME_SECS),
        };
        Ok(Self {
            kind,
            issuer: issuer.into(),
            keys: compiled,
            jwks,
            leeway: leeway_secs.max(0),
            max_lifetime,
        })
    }

    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    pub fn leeway(&self) -> i64 {
        self.leeway
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Whether a token this verifier's configuration verified before, as `verified`, is still
    /// one it would take: its key is still listed and its issuer is still ours. A key removed
    /// (a compromised one, say) takes every capability it signed with it.
    pub fn still_vouches_for(&self, verified: &Verified) -> bool {
        self.keys.contains_key(&verified.kid) && verified.claims.iss == self.issuer
    }

    /// Whether `other` gives every token the answer this verifier gives, at any time: the same
    /// kind, issuer, keys (every field of each, in any order), leeway and longest lifetime.
    /// Then what one verified or refused, the other would have too.
    pub fn checks_as(&self, other: &Verifier) -> bool {
        self.kind == other.kind
            && self.issuer == other.issuer
            && self.jwks == other.jwks
            && self.leeway == other.leeway
            && self.max_lifetime == other.max_lifetime
    }

    /// Cheap syntactic check: does this look like a token of our kind signed by one of our keys?
    /// Used to decide whether an `Authorization: Bearer` value is ours. No signature check.
    pub fn claims_ours(&self, token: &str) -> bool {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return false;
        }
        let Ok(untrusted) = UntrustedToken::<ExtraHeader>::try_from(token) else {
            return false;
        };
        let header = untrusted.header();
        header.token_type.as_deref() == Some(self.kind.typ())
            || header
                .key_id
                .as_deref()
                .is_some_and(|kid| self.keys.contains_key(kid))
    }

    /// Parses a token and checks everything about it that needs no signature check: size,
    /// format, `typ`, header fields, `kid` and algorithm, exactly as `verify` does.
    fn parse<'t>(
        &self,
        token: &'t str,
    ) -> Result<(UntrustedToken<'t, ExtraHeader>, &VerifyingKey), TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Size);
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let untrusted =
            UntrustedToken::<ExtraHeader>::try_from(token).map_err(|_| TokenError::Malformed)?;
        let header = untrusted.header();
        if header.token_type.as_deref() != Some(self.kind.typ()) {
            return Err(TokenError::WrongType {
                expected: self.kind.typ(),
            });
        }
        if header.key_set_url.is_some()
            || header.certificate_url.is_some()
            || header.certificate_sha1_thumbprint.is_some()
            || header.certificate_thumbprint.is_some()
            || !header.other_fields.is_clean()
        {
            return Err(TokenError::ForbiddenHeader);
        }
        let kid = header.key_id.as_deref().ok_or(TokenError::UnknownKey)?;
        let key = self.keys.get(kid).ok_or(TokenError::UnknownKey)?;
        // The key fixes the algorithm; the token's `alg` must name exactly it.
        if untrusted.algorithm() != key.alg.name() {
            return Err(TokenError::AlgorithmMismatch);
        }
        Ok((untrusted, key))
    }

    /// The checks that cost no signature, for choosing which candidates are worth one: every
    /// check of `verify` before the signature, the signature's length, then the unverified
    /// claims. `Err` only when `verify` would refuse the token too: a format, header, key or
    /// signature-length error, claims that do not decode, or an `exp` already past with the
    /// leeway. `Ok(true)` when the unverified `aud` is `audience`, `Ok(false)` otherwise (the
    /// token may still be a valid one for another host, which `verify` would tell).
    pub fn precheck(&self, token: &str, audience: &str, now: i64) -> Result<bool, TokenError> {
        let (_, claims) = self.unverified::<Audience>(token)?;
        if let Some(exp) = claims.expiration {
            if now >= exp.timestamp().saturating_add(self.leeway) {
                return Err(TokenError::Expired);
            }
        }
        Ok(claims.custom.aud.as_ref().and_then(|a| a.as_str()) == Some(audience))
    }

    /// [`Verifier::precheck`] for [`Verifier::verify_lapsed`]: whether `token` passes every
    /// check that needs no signature, its unverified `exp` says it lapsed (past the leeway) at
    /// most `lapsed_secs` ago, and its unverified `aud` is `audience`. Only such a token is
    /// worth a signature for a renewal on this host.
    pub fn lapsed_for(&self, token: &str, audience: &str, now: i64, lapsed_secs: i64) -> bool {
        let Ok((_, claims)) = self.unverified::<Audience>(token) else {
            return false;
        };
        let Some(exp) = claims.expiration.map(|t| t.timestamp()) else {
            return false;
        };
        let lapsed_at = exp.saturating_add(self.leeway);
        now >= lapsed_at
            && now < lapsed_at.saturating_add(lapsed_secs)
            && claims.custom.aud.as_ref().and_then(|a| a.as_str()) == Some(audience)
    }

    /// Verifies signature and claims at `now` (unix seconds). Scope (pod, port, aud) is the
    /// caller's to check, because the answer for a wrong scope differs from a bad token.
    pub fn verify(&self, token: &str, now: i64) -> Result<Verified, TokenError> {
        let (untrusted, key) = self.parse(token)?;
        let claims = match &key.material {
            VerifyingMaterial::Ed25519(pk) => {
                verify_ed25519(pk, token, &untrusted)?;
                untrusted
                    .deserialize_claims_unchecked::<WireClaims>()
                    .map_err(|_| TokenError::BadClaims)?
            }
            VerifyingMaterial::Es256(pk) => {
                Es256
                    .validator::<WireClaims>(pk.as_ref())
                    .validate(&untrusted)
                    .map_err(validation_error)?
                    .into_parts()
                    .1
            }
            VerifyingMaterial::Hs256(k) => {
                Hs256
                    .validator::<WireClaims>(k)
                    .validate(&untrusted)
                    .map_err(validation_error)?
                    .into_parts()
                    .1
            }
        };
        self.check_claims(token, &untrusted, claims, now)
    }

    /// [`Verifier::verify`] for a token that may be past its `exp` (and the leeway) by at most
    /// `lapsed_secs`: every check as at its last valid second, the signature included, for
    /// renewing a browser's capability it held while idle. The caller must also know that
    /// what the token grants is still allowed (the control plane checks the session and the
    /// access again); nothing is ever let through on a lapsed token itself.
    pub fn verify_lapsed(
        &self,
        token: &str,
        now: i64,
        lapsed_secs: i64,
    ) -> Result<Verified, TokenError> {
        /// Only the registered claims are read here.
        #[derive(Deserialize)]
        struct Registered {}
        let (_, claims) = self.unverified::<Registered>(token)?;
        let exp = claims
            .expiration
            .map(|t| t.timestamp())
            .ok_or(TokenError::BadClaims)?;
        let last_valid = exp.saturating_add(self.leeway).saturating_sub(1);
        if now > last_valid.saturating_add(lapsed_secs) {
            return Err(TokenError::Expired);
        }
        self.verify(token, now.min(last_valid))
    }

    /// [`Verifier::verify`] for exactly the bytes of a token this process signed itself and
    /// remembered (the control plane's login tickets between their minting and their
    /// redemption): every check but the signature's, which those bytes passed when they were
    /// made. Its key must still be one of this verifier's, as for `verify`. Never for a token
    /// that came from anywhere else.
    pub fn verify_signed_here(&self, token: &str, now: i64) -> Result<Verified, TokenError> {
        let (untrusted, claims) = self.unverified::<WireClaims>(token)?;
        self.check_claims(token, &untrusted, claims, now)
    }

    /// [`Verifier::parse`], the signature's length for the key, and the claims decoded as `T`
    /// without checking the signature.
    fn unverified<'t, T: serde::de::DeserializeOwned>(
        &self,
        token: &'t str,
    ) -> Result<(UntrustedToken<'t, ExtraHeader>, Claims<T>), TokenError> {
        let (untrusted, key) = self.parse(token)?;
        if untrusted.signature_bytes().len() != key.alg.signature_len() {
            return Err(TokenError::BadSignature);
        }
        let claims = untrusted
            .deserialize_claims_unchecked::<T>()
            .map_err(|_| TokenError::BadClaims)?;
        Ok((untrusted, claims))
    }

    /// The claim checks of `verify`, once the signature is settled.
    fn check_claims(
        &self,
        token: &str,
        untrusted: &UntrustedToken<'_, ExtraHeader>,
        claims: Claims<WireClaims>,
        now: i64,
    ) -> Result<Verified, TokenError> {
        let kid = untrusted.header().key_id.as_deref().unwrap_or_default();
        let exp = claims
            .expiration
            .map(|t| t.timestamp())
            .ok_or(TokenError::BadClaims)?;
        let iat = claims
            .issued_at
            .map(|t| t.timestamp())
            .ok_or(TokenError::BadClaims)?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        if iat > now.saturating_add(self.leeway) {
            return Err(TokenError::NotYetValid);
        }
        if let Some(nbf) = claims.not_before {
            if nbf.timestamp() > now.saturating_add(self.leeway) {
                return Err(TokenError::NotYetValid);
            }
        }
        if exp.saturating_sub(iat) > self.max_lifetime || exp < iat {
            return Err(TokenError::LifetimeTooLong);
        }
        let WireClaims { pod, sid, res } = claims.custom;
        if pod.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if pod.sub.is_empty() || pod.jti.is_empty() || pod.aud.is_empty() || pod.pod.is_empty() {
            return Err(TokenError::BadClaims);
        }
        if sid.as_ref().is_some_and(|s| s.is_empty()) || res.as_ref().is_some_and(|r| r.is_empty())
        {
            return Err(TokenError::BadClaims);
        }
        let kept = sid.is_some().then(|| RawToken::new(token));
        Ok(Verified {
            claims: pod,
            sid,
            res,
            issued_at: iat,
            expires_at: exp,
            kid: kid.to_owned(),
            token: kept,
        })
    }
}

/// The audience claim alone, as the checks before the signature read it.
#[derive(Deserialize)]
struct Audience {
    #[serde(default)]
    aud: Option<serde_json::Value>,
}

/// `jwt-compact`'s refusal as ours: claims that do not decode are the claims' fault, anything
/// else the signature's.
fn validation_error(e: jwt_compact::ValidationError) -> TokenError {
    match e {
        jwt_compact::ValidationError::MalformedClaims(_)
        | jwt_compact::ValidationError::NoClaim(_) => TokenError::BadClaims,
        _ => TokenError::BadSignature,
    }
}

/// The Ed25519 signature of `token` (parsed as `untrusted`) under `pk`, over the JWS signing
/// input (everything before the last `.`), as RFC 8037 defines it. `verify_strict` refuses a
/// non-canonical `S`, and a small-order `R` or key, besides a wrong signature.
fn verify_ed25519(
    pk: &ed25519_dalek::VerifyingKey,
    token: &str,
    untrusted: &UntrustedToken<'_, ExtraHeader>,
) -> Result<(), TokenError> {
    let signed = token
        .rsplit_once('.')
        .map(|(signed, _)| signed)
        .ok_or(TokenError::Malformed)?;
    let signature = ed25519_dalek::Signature::from_slice(untrusted.signature_bytes())
        .map_err(|_| TokenError::BadSignature)?;
    pk.verify_strict(signed.as_bytes(), &signature)
        .map_err(|_| TokenError::BadSignature)
}
