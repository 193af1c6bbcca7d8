//! Token kinds, their claims, signing keys and verification.
//!
//! An untrusted token is parsed, its `typ` must name exactly the kind expected, its `kid` picks
//! exactly one key whose algorithm is fixed, the signature is checked with that key's
//! algorithm, then the claims are checked against an injected clock. There is no "try every key"
//! and no algorithm chosen by the token.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key};
use jwt_compact::{AlgorithmExt, Claims, Header};
use serde::{Deserialize, Serialize};

/// The longest token we are willing to parse; real ones are well under 1 KiB.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Shorter than any token a verifier accepts (its signature alone is 43 or 86 characters, its
/// header names a `typ` and a `kid`), so a shorter value is refused before any parsing or
/// hashing: planted junk costs next to nothing however much of it there is.
pub const MIN_TOKEN_LEN: usize = 64;
/// Shortest HMAC secret accepted (256 bits).
pub const MIN_HMAC_SECRET_LEN: usize = 32;
/// Hard upper bound for a login ticket's lifetime.
pub const MAX_TICKET_LIFETIME_SECS: i64 = 60;
/// Hard upper bound for an identity assertion's lifetime (`assertion`).
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 300;
/// Default capability lifetime.
pub const DEFAULT_CAPABILITY_LIFETIME_SECS: i64 = 900;
/// Default upper bound for a capability's lifetime (what a verifier accepts).
pub const DEFAULT_MAX_CAPABILITY_LIFETIME_SECS: i64 = 24 * 3600;
/// Default clock leeway for `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY_SECS: i64 = 30;

/// The kinds of JWT podgate mints. A token of one kind is never accepted as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Carried once in the callback URL, consumed in SQL.
    LoginTicket,
    /// The cookie or header that lets a request through to a pod.
    Capability,
    /// What the filter tells a pod about the request's user (`assertion`); never a credential
    /// anywhere in podgate.
    Assertion,
}

impl TokenKind {
    /// Every kind; `looks_like_ours` knows a token of any of them by its `kid` prefix.
    pub const ALL: [TokenKind; 3] = [
        TokenKind::LoginTicket,
        TokenKind::Capability,
        TokenKind::Assertion,
    ];

    /// The explicit `typ` header value of this kind.
    pub const fn typ(self) -> &'static str {
        match self {
            TokenKind::LoginTicket => "podgate-ticket+jwt",
            TokenKind::Capability => "podgate-cap+jwt",
            TokenKind::Assertion => "podgate-assert+jwt",
        }
    }

    /// The prefix every `kid` of this kind carries, so keys of one kind can never verify another.
    pub const fn kid_prefix(self) -> &'static str {
        match self {
            TokenKind::LoginTicket => "tkt-",
            TokenKind::Capability => "cap-",
            TokenKind::Assertion => "ast-",
        }
    }
}

mod recognise;
mod verify;
pub use recognise::{
    looks_like_ours, mentions_ours, API_TOKEN_PREFIX, MIN_API_TOKEN_LOOKALIKE_LEN, TYP_PREFIX,
};
pub use verify::Verifier;

/// Signing algorithms podgate supports. EdDSA is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    EdDSA,
    ES256,
    HS256,
}

impl Alg {
    /// The length of a signature: Ed25519 and P-256 (`r || s`) are 64 bytes, HMAC-SHA256 32.
    pub const fn signature_len(self) -> usize {
        match self {
            Alg::EdDSA | Alg::ES256 => 64,
            Alg::HS256 => 32,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
            Alg::HS256 => "HS256",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The claims every podgate token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodClaims {
    pub iss: String,
    /// The user id.
    pub sub: String,
    /// The exact public pod host (no port suffix).
    pub aud: String,
    pub pod: String,
    pub port: u16,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub claims: PodClaims,
    /// The session id claim (`sid`): the control-plane session the capability was minted for,
    /// when it was minted for a browser session. An opaque hash, never the session's secret.
    pub sid: Option<String>,
    /// The resource claim (`res`): for a service reached per resource (`resource`), the
    /// resource path the capability was minted for (`/sessions/abc`); `None` for any other.
    pub res: Option<String>,
    pub issued_at: i64,
    pub expires_at: i64,
    pub kid: String,
    /// The token itself, kept only for a capability with a session id, which the filter may
    /// renew (`renewal`): the renew call presents it.
    pub token: Option<RawToken>,
}

/// A token's compact form. Its `Debug` never prints it, so no log line carries a credential;
/// shared with `Arc`, so a `Verified` can be held across the control plane's awaits.
#[derive(Clone, PartialEq, Eq)]
pub struct RawToken(std::sync::Arc<str>);

impl RawToken {
    pub fn new(token: &str) -> Self {
        RawToken(token.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RawToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawToken(..)")
    }
}

/// One key in JWKS shape (RFC 7517). Private parts (`d`, or `k` for HMAC) are present only in
/// storage and, for HMAC, in the filter's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Jwk {
    pub kty: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
}

/// A JWKS document: `{"keys": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
}

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key {kid:?}: unsupported kty/alg/crv combination (use OKP/EdDSA/Ed25519, EC/ES256/P-256 or oct/HS256)")]
    Unsupported { kid: String },
    #[error("key {kid:?}: {what} is missing or not valid base64url")]
    BadMaterial { kid: String, what: &'static str },
    #[error("key {kid:?}: HMAC secrets must be at least 256 bits (32 bytes)")]
    WeakSecret { kid: String },
    #[error("key id {kid:?} appears twice in the key set")]
    DuplicateKid { kid: String },
    #[error("key id {kid:?} is empty or longer than 128 characters")]
    BadKid { kid: String },
}

/// Why a token was refused. Every variant means "not authenticated" (401) except where the
/// caller decides otherwise (scope is checked by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is empty or longer than {MAX_TOKEN_LEN} bytes")]
    Size,
    #[error("token is not three base64url segments of a JSON header, JSON claims and a signature")]
    Malformed,
    #[error("token type is not {expected}")]
    WrongType { expected: &'static str },
    #[error("token has no kid or an unknown kid")]
    UnknownKey,
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("token header carries a field that is never trusted (jku, jwk, x5u, x5c, crit, ...)")]
    ForbiddenHeader,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token claims are missing or malformed")]
    BadClaims,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token lives longer than its kind allows")]
    LifetimeTooLong,
    #[error("token was issued by someone else")]
    WrongIssuer,
    #[error("token has been revoked")]
    Revoked,
}

/// Header fields we refuse outright; the standard ones (`jku`, `x5u`, `x5t`) live in `Header`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ExtraHeader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwk: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x5c: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    b64: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zip: Option<serde_json::Value>,
}

impl ExtraHeader {
    fn is_clean(&self) -> bool {
        self.jwk.is_none()
            && self.x5c.is_none()
            && self.crit.is_none()
            && self.b64.is_none()
            && self.zip.is_none()
    }
}

/// The exact claims layout on the wire. `exp` and `iat` are required by the verifier.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireClaims {
    #[serde(flatten)]
    pod: PodClaims,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    res: Option<String>,
}

enum SecretMaterial {
    Ed25519(ed25519_compact::SecretKey),
    Es256(Box<p256::ecdsa::SigningKey>),
    Hs256(Hs256Key),
}

/// A private key that signs one kind of token.
pub struct SigningKey {
    kid: String,
    alg: Alg,
    material: SecretMaterial,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn unb64(kid: &str, what: &'static str, s: Option<&str>) -> Result<Vec<u8>, KeyError> {
    let bad = || KeyError::BadMaterial {
        kid: kid.to_owned(),
        what,
    };
    B64.decode(s.ok_or_else(bad)?).map_err(|_| bad())
}

fn check_kid(kid: &str) -> Result<(), KeyError> {
    if kid.is_empty() || kid.len() > 128 {
        return Err(KeyError::BadKid { kid: kid.into() });
    }
    Ok(())
}

impl SigningKey {
    /// An Ed25519 key from a 32-byte seed (the caller supplies randomness).
    pub fn ed25519_from_seed(kid: impl Into<String>, seed: [u8; 32]) -> Result<Self, KeyError> {
        let kid = kid.into();
        check_kid(&kid)?;
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
        Ok(Self {
            kid,
            alg: Alg::EdDSA,
            material: SecretMaterial::Ed25519(pair.sk),
        })
    }

    /// An ES256 key from a 32-byte P-256 scalar.
    pub fn es256_from_bytes(kid: impl Into<String>, scalar: &[u8]) -> Result<Self, KeyError> {
        let kid = kid.into();
        check_kid(&kid)?;
        let key =
            p256::ecdsa::SigningKey::from_slice(scalar).map_err(|_| KeyError::BadMaterial {
                kid: kid.clone(),
                what: "the P-256 private scalar",
            })?;
        Ok(Self {
            kid,
            alg: Alg::ES256,
            material: SecretMaterial::Es256(Box::new(key)),
        })
    }

    /// An HS256 key; secrets shorter than 256 bits are refused.
    pub fn hs256(kid: impl Into<String>, secret: &[u8]) -> Result<Self, KeyError> {
        let kid = kid.into();
        check_kid(&kid)?;
        if secret.len() < MIN_HMAC_SECRET_LEN {
            return Err(KeyError::WeakSecret { kid });
        }
        Ok(Self {
            kid,
            alg: Alg::HS256,
            material: SecretMaterial::Hs256(Hs256Key::new(secret)),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The JWK that verifies this key's tokens. For HS256 this contains the secret: it may go to
    /// the filter's configuration but never to a public JWKS.
    pub fn verifying_jwk(&self) -> Jwk {
        let mut jwk = Jwk {
            kid: self.kid.clone(),
            alg: self.alg.name().into(),
            use_: Some("sig".into()),
            ..Jwk::default()
        };
        match &self.material {
            SecretMaterial::Ed25519(sk) => {
                jwk.kty = "OKP".into();
                jwk.crv = Some("Ed25519".into());
                jwk.x = Some(b64(sk.public_key().as_ref()));
            }
            SecretMaterial::Es256(sk) => {
                let point = sk.verifying_key().to_encoded_point(false);
                jwk.kty = "EC".into();
                jwk.crv = Some("P-256".into());
                jwk.x = point.x().map(|x| b64(x));
                jwk.y = point.y().map(|y| b64(y));
            }
            SecretMaterial::Hs256(k) => {
                jwk.kty = "oct".into();
                jwk.k = Some(b64(k.as_ref()));
            }
        }
        jwk
    }

    /// The public JWK, or `None` for symmetric keys (which have no public half).
    pub fn public_jwk(&self) -> Option<Jwk> {
        match self.alg {
            Alg::HS256 => None,
            _ => Some(self.verifying_jwk()),
        }
    }

    /// The full private JWK, for storage only.
    pub fn to_private_jwk(&self) -> Jwk {
        let mut jwk = self.verifying_jwk();
        match &self.material {
            SecretMaterial::Ed25519(sk) => jwk.d = Some(b64(sk.seed().as_ref())),
            SecretMaterial::Es256(sk) => jwk.d = Some(b64(&sk.to_bytes())),
            SecretMaterial::Hs256(_) => {}
        }
        jwk
    }

    /// Rebuilds a signing key from its private JWK.
    pub fn from_private_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        let kid = jwk.kid.as_str();
        match (jwk.kty.as_str(), jwk.alg.as_str(), jwk.crv.as_deref()) {
            ("OKP", "EdDSA", Some("Ed25519")) => {
                let seed = unb64(kid, "d (the Ed25519 seed)", jwk.d.as_deref())?;
                let seed: [u8; 32] = seed.try_into().map_err(|_| KeyError::BadMaterial {
                    kid: kid.into(),
                    what: "d (the Ed25519 seed)",
                })?;
                Self::ed25519_from_seed(kid, seed)
            }
            ("EC", "ES256", Some("P-256")) => {
                let d = unb64(kid, "d (the P-256 scalar)", jwk.d.as_deref())?;
                Self::es256_from_bytes(kid, &d)
            }
            ("oct", "HS256", None) => {
                let k = unb64(kid, "k (the HMAC secret)", jwk.k.as_deref())?;
                Self::hs256(kid, &k)
            }
            _ => Err(KeyError::Unsupported { kid: kid.into() }),
        }
    }
}

/// Why minting failed (only on a broken key or unserialisable claims).
#[derive(Debug, thiserror::Error)]
#[error("could not sign the token: {0}")]
pub struct MintError(String);

/// Signs a token of `kind` with `key`, issued at `issued_at` (unix seconds) and valid for
/// `lifetime_secs`.
pub fn mint(
    kind: TokenKind,
    key: &SigningKey,
    claims: &PodClaims,
    issued_at: i64,
    lifetime_secs: i64,
) -> Result<String, MintError> {
    mint_in_session(kind, key, claims, None, issued_at, lifetime_secs)
}

/// [`mint`], with the session id claim `sid` when the token is minted for a browser session
/// (so that ending the session can cut it off).
pub fn mint_in_session(
    kind: TokenKind,
    key: &SigningKey,
    claims: &PodClaims,
    sid: Option<&str>,
    issued_at: i64,
    lifetime_secs: i64,
) -> Result<String, MintError> {
    mint_scoped(kind, key, claims, sid, None, issued_at, lifetime_secs)
}

/// [`mint_in_session`], with the resource claim `res` when the token is minted for one
/// resource of a service reached per resource (`resource`).
pub fn mint_scoped(
    kind: TokenKind,
    key: &SigningKey,
    claims: &PodClaims,
    sid: Option<&str>,
    res: Option<&str>,
    issued_at: i64,
    lifetime_secs: i64,
) -> Result<String, MintError> {
    let header = Header::empty()
        .with_key_id(key.kid.clone())
        .with_token_type(kind.typ());
    let at = |secs: i64| {
        chrono::DateTime::from_timestamp(secs, 0)
            .ok_or_else(|| MintError("time out of range".into()))
    };
    let mut wire = Claims::new(WireClaims {
        pod: claims.clone(),
        sid: sid.map(str::to_owned),
        res: res.map(str::to_owned),
    });
    wire.issued_at = Some(at(issued_at)?);
    wire.expiration = Some(at(issued_at.saturating_add(lifetime_secs))?);
    let signed = match &key.material {
        SecretMaterial::Ed25519(sk) => Ed25519.token(&header, &wire, sk),
        SecretMaterial::Es256(sk) => Es256.token(&header, &wire, sk.as_ref()),
        SecretMaterial::Hs256(k) => Hs256.token(&header, &wire, k),
    };
    signed.map_err(|e| MintError(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    pub const NOW: i64 = 1_800_000_000;
    pub const ISS: &str = "https://podgate.example.dev";

    pub fn claims() -> PodClaims {
        PodClaims {
            iss: ISS.into(),
            sub: "user-1".into(),
            aud: "localhost-8726-pod-myslug.example.dev".into(),
            pod: "myslug".into(),
            port: 8726,
            jti: "jti-1".into(),
            email: Some("u@example.dev".into()),
        }
    }

    pub fn ed_key(kind: TokenKind, n: u8) -> SigningKey {
        SigningKey::ed25519_from_seed(format!("{}ed{n}", kind.kid_prefix()), [n; 32]).unwrap()
    }

    fn es_key(kind: TokenKind) -> SigningKey {
        let mut scalar = [0u8; 32];
        scalar[31] = 7;
        scalar[0] = 1;
        SigningKey::es256_from_bytes(format!("{}es", kind.kid_prefix()), &scalar).unwrap()
    }

    fn hs_key(kind: TokenKind) -> SigningKey {
        SigningKey::hs256(format!("{}hs", kind.kid_prefix()), &[9u8; 32]).unwrap()
    }

    fn verifier(kind: TokenKind, keys: &[&SigningKey]) -> Verifier {
        let set = KeySet {
            keys: keys.iter().map(|k| k.verifying_jwk()).collect(),
        };
        Verifier::new(kind, ISS, &set, 30, 3600).unwrap()
    }

    fn segments(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    pub fn with_header(token: &str, header: serde_json::Value) -> String {
        let s = segments(token);
        format!("{}.{}.{}", b64(header.to_string().as_bytes()), s[1], s[2])
    }

    fn with_claims(token: &str, claims: serde_json::Value) -> String {
        let s = segments(token);
        format!("{}.{}.{}", s[0], b64(claims.to_string().as_bytes()), s[2])
    }

    #[test]
    fn every_algorithm_round_trips() {
        let kind = TokenKind::Capability;
        for key in [ed_key(kind, 1), es_key(kind), hs_key(kind)] {
            let v = verifier(kind, &[&key]);
            let t = mint(kind, &key, &claims(), NOW, 900).unwrap();
            let ok = v.verify(&t, NOW).unwrap();
            assert_eq!(ok.claims, claims());
            assert_eq!(ok.expires_at, NOW + 900);
            assert_eq!(ok.kid, key.kid());
            assert!(v.claims_ours(&t));
            // Tampered: flip one character of the signature.
            let mut s = segments(&t);
            let mid = s[2].len() / 2;
            let flipped = if &s[2][mid..=mid] == "A" { "B" } else { "A" };
            s[2].replace_range(mid..=mid, flipped);
            assert_eq!(v.verify(&s.join("."), NOW), Err(TokenError::BadSignature));
        }
    }

    /// Ed25519 signatures that hold for a lax verifier are refused: `S` plus the group order
    /// (the same signature, written non-canonically), and the "signature" (identity point, 0)
    /// that every message has under the identity point as a key. A key with an `x` that is no
    /// point on the curve is refused when the key set is read.
    #[test]
    fn malleable_and_weak_key_ed25519_signatures_are_refused() {
        const ORDER: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let kind = TokenKind::Capability;
        let key = ed_key(kind, 1);
        let v = verifier(kind, &[&key]);
        let good = mint(kind, &key, &claims(), NOW, 900).unwrap();
        assert!(v.verify(&good, NOW).is_ok());
        let s = segments(&good);
        let mut signature = B64.decode(&s[2]).unwrap();
        let mut carry = 0u16;
        for (byte, add) in signature[32..].iter_mut().zip(ORDER) {
            let sum = u16::from(*byte) + u16::from(add) + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0);
        let malleated = format!("{}.{}.{}", s[0], s[1], b64(&signature));
        assert_ne!(malleated, good);
        assert_eq!(v.verify(&malleated, NOW), Err(TokenError::BadSignature));

        // The identity point (y = 1) as the key, and as `R` with `S` = 0.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut weak = key.verifying_jwk();
        weak.x = Some(b64(&identity));
        let v = Verifier::new(kind, ISS, &KeySet { keys: vec![weak] }, 30, 3600).unwrap();
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let forged = format!("{}.{}.{}", s[0], s[1], b64(&forged));
        assert_eq!(v.verify(&forged, NOW), Err(TokenError::BadSignature));

        // y = 2 is on no curve point: the key set is refused.
        let mut off_curve = key.verifying_jwk();
        let mut x = [0u8; 32];
        x[0] = 2;
        off_curve.x = Some(b64(&x));
        assert!(matches!(
            Verifier::new(
                kind,
                ISS,
                &KeySet {
                    keys: vec![off_curve]
                },
                30,
                3600
            ),
            Err(KeyError::BadMaterial { .. })
        ));
    }

    /// `verify_signed_here` answers as `verify` for every token but one whose only fault is its
    /// signature: each claim, header and key check is the same.
    #[test]
    fn verify_signed_here_makes_every_check_but_the_signature() {
        let kind = TokenKind::LoginTicket;
        let key = ed_key(kind, 3);
        let v = verifier(kind, &[&key]);
        let good = mint(kind, &key, &claims(), NOW, 60).unwrap();
        let unknown = mint(kind, &ed_key(kind, 4), &claims(), NOW, 60).unwrap();
        let capability = mint(TokenKind::Capability, &key, &claims(), NOW, 60).unwrap();
        let wrong_issuer = mint(
            kind,
            &key,
            &PodClaims {
                iss: "https://elsewhere.example".into(),
                ..claims()
            },
            NOW,
            60,
        )
        .unwrap();
        let long_lived = mint(kind, &key, &claims(), NOW, 7200).unwrap();
        let no_sub = with_claims(
            &good,
            serde_json::json!({"iss": ISS, "aud": "a", "pod": "p", "port": 1, "jti": "j", "iat": NOW, "exp": NOW + 60}),
        );
        let short_signature = format!("{}.{}.AAAA", segments(&good)[0], segments(&good)[1]);
        for (token, at) in [
            (&good, NOW),
            (&good, NOW + 100),
            (&good, NOW - 100),
            (&unknown, NOW),
            (&capability, NOW),
            (&wrong_issuer, NOW),
            (&long_lived, NOW),
            (&no_sub, NOW),
            (&short_signature, NOW),
        ] {
            let full = v.verify(token, at);
            let here = v.verify_signed_here(token, at);
            match &full {
                // `no_sub` has the good token's signature over other claims: a check only the
                // signature makes, so it is the claims' fault here.
                Err(TokenError::BadSignature) if token == &no_sub => {
                    assert_eq!(here, Err(TokenError::BadClaims), "{token}");
                }
                _ => assert_eq!(here, full, "{token} at {at}"),
            }
        }
        assert!(v.verify_signed_here(&good, NOW).is_ok());
    }

    #[test]
    fn private_jwk_round_trips_and_public_jwk_has_no_secret() {
        let kind = TokenKind::Capability;
        for key in [ed_key(kind, 2), es_key(kind)] {
            let again = SigningKey::from_private_jwk(&key.to_private_jwk()).unwrap();
            let t = mint(kind, &again, &claims(), NOW, 60).unwrap();
            assert!(verifier(kind, &[&key]).verify(&t, NOW).is_ok());
            let public = key.public_jwk().unwrap();
            assert!(public.d.is_none() && public.k.is_none());
        }
        assert!(hs_key(kind).public_jwk().is_none());
    }

    #[test]
    fn kinds_never_cross() {
        let cap_key = ed_key(TokenKind::Capability, 1);
        let tkt_key = ed_key(TokenKind::LoginTicket, 1);
        let set = KeySet {
            keys: vec![cap_key.verifying_jwk(), tkt_key.verifying_jwk()],
        };
        let caps = Verifier::new(TokenKind::Capability, ISS, &set, 30, 3600).unwrap();
        let tickets = Verifier::new(TokenKind::LoginTicket, ISS, &set, 30, 3600).unwrap();
        let ticket = mint(TokenKind::LoginTicket, &tkt_key, &claims(), NOW, 60).unwrap();
        let cap = mint(TokenKind::Capability, &cap_key, &claims(), NOW, 60).unwrap();
        assert!(matches!(
            caps.verify(&ticket, NOW),
            Err(TokenError::WrongType { .. })
        ));
        assert!(matches!(
            tickets.verify(&cap, NOW),
            Err(TokenError::WrongType { .. })
        ));
        // A capability typ signed with a ticket key: the kid belongs to the other kind.
        let forged = mint(TokenKind::Capability, &tkt_key, &claims(), NOW, 60).unwrap();
        assert_eq!(caps.verify(&forged, NOW), Err(TokenError::UnknownKey));
        assert!(!caps.claims_ours("not-a-token"));
    }

    #[test]
    fn every_kind_and_api_tokens_look_like_ours_and_foreign_tokens_do_not() {
        for kind in TokenKind::ALL {
            assert!(kind.typ().starts_with(TYP_PREFIX), "{kind:?}");
            let t = mint(kind, &ed_key(kind, 1), &claims(), NOW, 60).unwrap();
            assert!(looks_like_ours(&t), "{kind:?}");
            // Forged, expired or of an unknown key: still ours.
            let s = segments(&t);
            assert!(looks_like_ours(&format!("{}.{}.AAAA", s[0], s[1])));
            for (typ, kid) in [
                (Some(kind.typ().to_uppercase()), None),
                (None, Some(format!("{}unknown", kind.kid_prefix()))),
                (
                    Some("podgate-future+jwt".to_owned()),
                    Some("new-1".to_owned()),
                ),
            ] {
                let h = serde_json::json!({"alg": "EdDSA", "typ": typ, "kid": kid});
                assert!(looks_like_ours(&with_header(&t, h.clone())), "{h}");
            }
            // Glued into other text, or with bytes after it: mentioned, but not one token.
            for text in [
                format!("\"{t}\""),
                format!("x={t};"),
                format!("Bearer\t{t}"),
                format!("{t}."),
                format!("{t}x.y"),
            ] {
                assert!(mentions_ours(&text), "{text:.40}");
            }
            assert!(!looks_like_ours(&format!("{t}.")));
            // Not our compact header (a first key that does not start with a letter): neither
            // check takes it, so they never disagree.
            let odd = with_header(&t, serde_json::json!({"1": 1, "typ": kind.typ()}));
            assert!(!looks_like_ours(&odd) && !mentions_ours(&odd));
        }
        let api = format!("pg_{}_{}", "0".repeat(24), "a".repeat(52));
        assert!(looks_like_ours(&api));
        assert!(mentions_ours(&format!("token=\"{api}\"")));
        // Foreign: another issuer's JWT, Basic, a short `pg_` word, garbage.
        let foreign = with_header(
            &mint(
                TokenKind::Capability,
                &ed_key(TokenKind::Capability, 1),
                &claims(),
                NOW,
                60,
            )
            .unwrap(),
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "app-key-1"}),
        );
        for text in [
            foreign.as_str(),
            "Basic dXNlcjpwYXNzd29yZA==",
            "Digest username=\"pg_bob\", realm=\"x\"",
            "pg_",
            "eyJ.eyJ.eyJ",
            "",
            "...",
        ] {
            assert!(!mentions_ours(text), "{text:.40}");
            assert!(!looks_like_ours(text), "{text:.40}");
        }
    }

    #[test]
    fn precheck_refuses_only_what_verify_refuses_and_reads_the_audience() {
        let kind = TokenKind::Capability;
        let key = ed_key(kind, 1);
        let v = verifier(kind, &[&key]);
        let t = mint(kind, &key, &claims(), NOW, 600).unwrap();
        let aud = claims().aud;
        assert_eq!(v.precheck(&t, &aud, NOW), Ok(true));
        assert_eq!(v.precheck(&t, "other.example.dev", NOW), Ok(false));
        // A bad signature passes the precheck: only `verify` can tell.
        let s = segments(&t);
        let forged = format!("{}.{}.{}", s[0], s[1], b64(&[7u8; 64]));
        assert_eq!(v.precheck(&forged, &aud, NOW), Ok(true));
        assert_eq!(v.verify(&forged, NOW), Err(TokenError::BadSignature));
        // Expired (with the leeway): refused without a signature check.
        assert_eq!(v.precheck(&t, &aud, NOW + 629), Ok(true));
        assert_eq!(v.precheck(&t, &aud, NOW + 630), Err(TokenError::Expired));
        let ticket = mint(
            TokenKind::LoginTicket,
            &ed_key(TokenKind::LoginTicket, 1),
            &claims(),
            NOW,
            60,
        )
        .unwrap();
        // Too short to be any token a verifier accepts, even with our typ.
        let typ_only = b64(br#"{"typ":"podgate-cap+jwt"}"#);
        let short = format!(
            "{typ_only}.e30.{}",
            "A".repeat(MIN_TOKEN_LEN - typ_only.len() - 6)
        );
        assert_eq!(short.len(), MIN_TOKEN_LEN - 1);
        for (token, err) in [
            ("", TokenError::Size),
            ("x.y.z", TokenError::Malformed),
            (short.as_str(), TokenError::Malformed),
            (
                ticket.as_str(),
                TokenError::WrongType {
                    expected: kind.typ(),
                },
            ),
        ] {
            assert_eq!(
                v.precheck(token, &aud, NOW),
                Err(err.clone()),
                "{token:.40}"
            );
            assert_eq!(v.verify(token, NOW), Err(err), "{token:.40}");
        }
        let unknown = with_header(
            &t,
            serde_json::json!({"alg": "EdDSA", "typ": kind.typ(), "kid": "cap-other"}),
        );
        assert_eq!(v.precheck(&unknown, &aud, NOW), Err(TokenError::UnknownKey));
    }

    #[test]
    fn format_attacks_are_rejected_cheaply() {
        let key = ed_key(TokenKind::Capability, 1);
        let v = verifier(TokenKind::Capability, &[&key]);
        let good = mint(TokenKind::Capability, &key, &claims(), NOW, 60).unwrap();
        let s = segments(&good);
        let cases: Vec<(String, TokenError)> = vec![
            ("".into(), TokenError::Size),
            ("a".repeat(MAX_TOKEN_LEN + 1), TokenError::Size),
            (".".repeat(4000), TokenError::Malformed),
            ("abc".into(), TokenError::Malformed),
            (format!("{}.{}", s[0], s[1]), TokenError::Malformed),
            (
                format!("{}.{}.{}.x", s[0], s[1], s[2]),
                TokenError::Malformed,
            ),
            (format!("{}.{}.", s[0], s[1]), TokenError::BadSignature),
            (
                format!("{}=.{}.{}", s[0], s[1], s[2]),
                TokenError::Malformed,
            ),
            (
                format!("{}.{}+.{}", s[0], s[1], s[2]),
                TokenError::Malformed,
            ),
            (
                format!("{}.{}/.{}", s[0], s[1], s[2]),
                TokenError::Malformed,
            ),
            (
                format!("{}.{}.{}", b64(b"[1,2]"), s[1], s[2]),
                TokenError::Malformed,
            ),
            (
                format!("{}.{}.{}", b64(b"\"str\""), s[1], s[2]),
                TokenError::Malformed,
            ),
            (
                format!("{}.{}.{}", b64(b"{"), s[1], s[2]),
                TokenError::Malformed,
            ),
        ];
        for (token, err) in cases {
            assert_eq!(v.verify(&token, NOW), Err(err), "{token:.80}");
        }
    }

    #[test]
    fn algorithm_attacks_are_rejected() {
        let kind = TokenKind::Capability;
        let key = ed_key(kind, 1);
        let v = verifier(kind, &[&key]);
        let good = mint(kind, &key, &claims(), NOW, 60).unwrap();
        let typ = kind.typ();
        let kid = key.kid();
        for alg in ["none", "None", "NONE", "nOnE"] {
            let t = with_header(
                &good,
                serde_json::json!({"alg": alg, "typ": typ, "kid": kid}),
            );
            let unsigned = format!("{}.{}.", segments(&t)[0], segments(&t)[1]);
            assert_eq!(
                v.verify(&t, NOW),
                Err(TokenError::AlgorithmMismatch),
                "{alg}"
            );
            assert_eq!(v.verify(&unsigned, NOW), Err(TokenError::AlgorithmMismatch));
        }
        // HS256 signed with our public key bytes (algorithm confusion).
        let public_x = B64.decode(key.verifying_jwk().x.unwrap()).unwrap();
        let mut padded = public_x.clone();
        padded.resize(32, 0);
        let confused = SigningKey::hs256(kid, &padded).unwrap();
        let t = mint(kind, &confused, &claims(), NOW, 60).unwrap();
        assert_eq!(v.verify(&t, NOW), Err(TokenError::AlgorithmMismatch));
        // ES256 header on an EdDSA key.
        let t = with_header(
            &good,
            serde_json::json!({"alg": "ES256", "typ": typ, "kid": kid}),
        );
        assert_eq!(v.verify(&t, NOW), Err(TokenError::AlgorithmMismatch));
        // Untrusted key sources in the header.
        for extra in ["jwk", "jku", "x5u", "x5c", "crit", "x5t", "b64", "zip"] {
            let mut h = serde_json::json!({"alg": "EdDSA", "typ": typ, "kid": kid});
            let value = match extra {
                "crit" => serde_json::json!(["exp"]),
                "x5c" => serde_json::json!(["MIIB"]),
                "b64" => serde_json::json!(false),
                "jwk" => serde_json::json!({"kty": "OKP"}),
                "x5t" => serde_json::json!(b64(&[1u8; 20])),
                _ => serde_json::json!("https://evil.example/keys"),
            };
            h[extra] = value;
            let t = with_header(&good, h);
            assert_eq!(
                v.verify(&t, NOW),
                Err(TokenError::ForbiddenHeader),
                "{extra}"
            );
        }
        // Unknown kid, missing kid, missing typ, wrong typ casing.
        for h in [
            serde_json::json!({"alg": "EdDSA", "typ": typ, "kid": "cap-other"}),
            serde_json::json!({"alg": "EdDSA", "typ": typ}),
        ] {
            assert_eq!(
                v.verify(&with_header(&good, h), NOW),
                Err(TokenError::UnknownKey)
            );
        }
        for h in [
            serde_json::json!({"alg": "EdDSA", "kid": kid}),
            serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
            serde_json::json!({"alg": "EdDSA", "typ": typ.to_uppercase(), "kid": kid}),
        ] {
            assert!(matches!(
                v.verify(&with_header(&good, h), NOW),
                Err(TokenError::WrongType { .. })
            ));
        }
    }

    #[test]
    fn claim_checks_at_the_leeway_boundary() {
        let kind = TokenKind::Capability;
        let key = ed_key(kind, 1);
        let v = verifier(kind, &[&key]);
        let t = mint(kind, &key, &claims(), NOW, 600).unwrap();
        // exp = NOW+600, leeway 30: valid until NOW+629, refused at NOW+630.
        assert!(v.verify(&t, NOW + 629).is_ok());
        assert_eq!(v.verify(&t, NOW + 630), Err(TokenError::Expired));
        // iat = NOW: accepted from NOW-30, refused before.
        assert!(v.verify(&t, NOW - 30).is_ok());
        assert_eq!(v.verify(&t, NOW - 31), Err(TokenError::NotYetValid));
        // Lifetime longer than allowed (3600).
        let long = mint(kind, &key, &claims(), NOW, 3601).unwrap();
        assert_eq!(v.verify(&long, NOW), Err(TokenError::LifetimeTooLong));
        // Tickets are capped at 60 s whatever the verifier was told.
        let tk = ed_key(TokenKind::LoginTicket, 1);
        let tv = verifier(TokenKind::LoginTicket, &[&tk]);
        let ticket = mint(TokenKind::LoginTicket, &tk, &claims(), NOW, 61).unwrap();
        assert_eq!(tv.verify(&ticket, NOW), Err(TokenError::LifetimeTooLong));
        // Wrong issuer.
        let mut c = claims();
        c.iss = "https://evil.example".into();
        let t = mint(kind, &key, &c, NOW, 60).unwrap();
        assert_eq!(v.verify(&t, NOW), Err(TokenError::WrongIssuer));
    }

    #[test]
    fn malformed_claims_are_rejected_even_when_signed() {
        // Sign arbitrary JSON claims with HS256 so the signature is valid and the claims are not.
        let kind = TokenKind::Capability;
        let key = hs_key(kind);
        let v = verifier(kind, &[&key]);
        let base = serde_json::json!({
            "iss": ISS, "sub": "u", "aud": "a", "pod": "p", "port": 1, "jti": "j",
            "iat": NOW, "exp": NOW + 60
        });
        let sign = |claims: &serde_json::Value| {
            let header = serde_json::json!({"alg": "HS256", "typ": kind.typ(), "kid": key.kid()});
            let signing_input = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            use hmac::Mac;
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&[9u8; 32]).unwrap();
            mac.update(signing_input.as_bytes());
            format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
        };
        assert!(v.verify(&sign(&base), NOW).is_ok());
        let mut cases = vec![];
        for (field, value) in [
            ("exp", serde_json::Value::Null),
            ("exp", serde_json::json!("1800000060")),
            ("exp", serde_json::json!(1.5e300)),
            ("iat", serde_json::Value::Null),
            ("port", serde_json::json!(70000)),
            ("port", serde_json::json!("8726")),
            ("sub", serde_json::Value::Null),
            ("aud", serde_json::json!(["a"])),
            ("iss", serde_json::Value::Null),
        ] {
            let mut c = base.clone();
            if value.is_null() {
                c.as_object_mut().unwrap().remove(field);
            } else {
                c[field] = value;
            }
            cases.push((field, c));
        }
        for (field, c) in cases {
            assert_eq!(
                v.verify(&sign(&c), NOW),
                Err(TokenError::BadClaims),
                "{field}"
            );
        }
        // Claims edited after signing fail the signature, never the claims check.
        let t = mint(kind, &key, &claims(), NOW, 60).unwrap();
        let mut other = base.clone();
        other["pod"] = serde_json::json!("other");
        let edited = with_claims(&t, other);
        assert_eq!(v.verify(&edited, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn key_sets_are_validated() {
        let weak = Jwk {
            kty: "oct".into(),
            kid: "cap-weak".into(),
            alg: "HS256".into(),
            k: Some(b64(&[1u8; 31])),
            ..Jwk::default()
        };
        let err = Verifier::new(
            TokenKind::Capability,
            ISS,
            &KeySet { keys: vec![weak] },
            30,
            60,
        )
        .unwrap_err();
        assert!(matches!(err, KeyError::WeakSecret { .. }));
        assert!(SigningKey::hs256("cap-x", &[0u8; 31]).is_err());
        let k = ed_key(TokenKind::Capability, 1).verifying_jwk();
        let dup = KeySet {
            keys: vec![k.clone(), k.clone()],
        };
        assert!(matches!(
            Verifier::new(TokenKind::Capability, ISS, &dup, 30, 60),
            Err(KeyError::DuplicateKid { .. })
        ));
        let mut rsa = k.clone();
        rsa.kty = "RSA".into();
        rsa.alg = "RS256".into();
        assert!(matches!(
            Verifier::new(
                TokenKind::Capability,
                ISS,
                &KeySet { keys: vec![rsa] },
                30,
                60
            ),
            Err(KeyError::Unsupported { .. })
        ));
        // An empty key set compiles and refuses everything.
        let empty = Verifier::new(TokenKind::Capability, ISS, &KeySet::default(), 30, 60).unwrap();
        let t = mint(
            TokenKind::Capability,
            &ed_key(TokenKind::Capability, 1),
            &claims(),
            NOW,
            60,
        )
        .unwrap();
        assert_eq!(empty.verify(&t, NOW), Err(TokenError::UnknownKey));
    }

    #[test]
    fn rotation_overlap_and_removal() {
        let kind = TokenKind::Capability;
        let old = ed_key(kind, 1);
        let new = ed_key(kind, 2);
        let old_token = mint(kind, &old, &claims(), NOW, 60).unwrap();
        let new_token = mint(kind, &new, &claims(), NOW, 60).unwrap();
        let overlap = verifier(kind, &[&old, &new]);
        assert!(overlap.verify(&old_token, NOW).is_ok());
        assert!(overlap.verify(&new_token, NOW).is_ok());
        let after = verifier(kind, &[&new]);
        assert_eq!(after.verify(&old_token, NOW), Err(TokenError::UnknownKey));
        assert!(after.verify(&new_token, NOW).is_ok());
    }
}
