//! The identity assertion: a short-lived JWT the filter puts in `x-podgate-assertion` on every
//! request it forwards to a pod, so the pod can check who the user is without trusting the
//! plain `x-podgate-user` headers (anything that reaches the pod's port could set those).
//!
//! It is a token of its own kind (`TokenKind::Assertion`: `typ` `podgate-assert+jwt`, a kid
//! starting `ast-`), signed with a key that signs nothing else, whose public half the control
//! plane publishes. The capability and ticket verifiers ignore `ast-` keys and refuse the
//! `typ`, so an assertion a pod leaks lets nobody through; an assertion verifier ignores every
//! other kid and `typ`, so a capability is no assertion either.
//!
//! Cost: a forward signs at most once per capability and worker per half assertion lifetime
//! ([`AssertionCache`]); every other request with that capability reuses the signed value.

use std::collections::HashMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::host::{HostTemplate, PodAddr};
use crate::token::{
    self, Alg, Jwk, KeySet, TokenError, TokenKind, Verified, Verifier, MAX_ASSERTION_LIFETIME_SECS,
};

/// The request header that carries the assertion to the pod.
pub const ASSERTION_HEADER: &str = "x-podgate-assertion";
/// Default lifetime of an assertion.
pub const DEFAULT_ASSERTION_LIFETIME_SECS: i64 = 60;

fn default_lifetime() -> i64 {
    DEFAULT_ASSERTION_LIFETIME_SECS
}

/// Signing assertions, as the filter's configuration carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    /// The private JWK of the assertion key (an `ast-` kid; EdDSA or ES256, never HMAC: pods
    /// verify with the public half).
    pub key: Jwk,
    /// Seconds an assertion is valid (at most `MAX_ASSERTION_LIFETIME_SECS`).
    #[serde(default = "default_lifetime")]
    pub lifetime_secs: i64,
}

/// The compiled form: the signing key and lifetime.
#[derive(Debug)]
pub struct CompiledAssertion {
    key: token::SigningKey,
    lifetime: i64,
}

impl Assertion {
    /// Checks the key (its kind, its algorithm) and the lifetime.
    pub fn compile(self) -> Result<CompiledAssertion, String> {
        if !self.key.kid.starts_with(TokenKind::Assertion.kid_prefix()) {
            return Err(format!(
                "the key id must start with {:?}",
                TokenKind::Assertion.kid_prefix()
            ));
        }
        let key = token::SigningKey::from_private_jwk(&self.key).map_err(|e| e.to_string())?;
        if key.alg() == Alg::HS256 {
            return Err("the key must be asymmetric (EdDSA or ES256)".into());
        }
        if !(1..=MAX_ASSERTION_LIFETIME_SECS).contains(&self.lifetime_secs) {
            return Err(format!(
                "lifetime_secs must be between 1 and {MAX_ASSERTION_LIFETIME_SECS}"
            ));
        }
        Ok(CompiledAssertion {
            key,
            lifetime: self.lifetime_secs,
        })
    }
}

impl CompiledAssertion {
    /// The kid assertions are signed with.
    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    /// Seconds an assertion is valid.
    pub fn lifetime(&self) -> i64 {
        self.lifetime
    }

    /// Signs the assertion for `capability` at `now`: its issuer, user, e-mail, audience (the
    /// public pod host), pod, port and id, valid for the configured lifetime.
    pub fn sign(&self, capability: &Verified, now: i64) -> Option<String> {
        token::mint(
            TokenKind::Assertion,
            &self.key,
            &capability.claims,
            now,
            self.lifetime,
        )
        .ok()
    }
}

/// One worker's signed assertions, by capability id: a value is reused until half its lifetime
/// has passed, so a pod always receives one with at least half its lifetime left.
#[derive(Debug, Default)]
pub struct AssertionCache {
    entries: HashMap<String, Signed>,
    signed: u64,
}

#[derive(Debug)]
struct Signed {
    aud: String,
    sub: String,
    issued_at: i64,
    value: Rc<str>,
}

impl AssertionCache {
    /// Forgets every value (a new configuration carries another key or lifetime).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// How many assertions this cache signed.
    pub fn signed(&self) -> u64 {
        self.signed
    }

    /// The assertion for `capability` at `now`: the cached one while it is fresh, else a new
    /// one. At most `max_entries` are kept; past that the cache starts over.
    pub fn get(
        &mut self,
        assertion: &CompiledAssertion,
        capability: &Verified,
        now: i64,
        max_entries: usize,
    ) -> Option<Rc<str>> {
        let claims = &capability.claims;
        if let Some(hit) = self.entries.get(&claims.jti) {
            let age = now.saturating_sub(hit.issued_at);
            if (0..assertion.lifetime / 2).contains(&age)
                && hit.aud == claims.aud
                && hit.sub == claims.sub
            {
                return Some(Rc::clone(&hit.value));
            }
        }
        let value: Rc<str> = assertion.sign(capability, now)?.into();
        self.signed += 1;
        if max_entries == 0 {
            return Some(value);
        }
        if self.entries.len() >= max_entries && !self.entries.contains_key(&claims.jti) {
            self.entries.clear();
        }
        self.entries.insert(
            claims.jti.clone(),
            Signed {
                aud: claims.aud.clone(),
                sub: claims.sub.clone(),
                issued_at: now,
                value: Rc::clone(&value),
            },
        );
        Some(value)
    }
}

/// What a pod learns from a valid assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asserted {
    pub sub: String,
    pub email: Option<String>,
    pub pod: String,
    pub port: u16,
    pub expires_at: i64,
}

/// Why a pod refuses an assertion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("the assertion is for another pod host")]
    WrongAudience,
}

/// Which audiences a pod takes as its own.
#[derive(Debug, Clone)]
pub enum Audience {
    /// Exactly this public pod host (one pod, one port).
    Host(String),
    /// Any port of this pod: `aud` must be the public host template rendered with this pod and
    /// the assertion's port, and the `pod` claim this pod.
    Pod { hosts: HostTemplate, pod: String },
}

impl Audience {
    fn admits(&self, aud: &str, pod: &str, port: u16) -> bool {
        match self {
            Audience::Host(host) => aud == host,
            Audience::Pod { hosts, pod: own } => {
                pod == own
                    && hosts.render(&PodAddr {
                        pod: own.clone(),
                        port,
                    }) == aud
            }
        }
    }
}

/// What a pod verifies assertions with: the issuer, the published assertion keys (the JWKS at
/// `/.well-known/podgate-assertion-jwks.json`) and its own public host(s).
#[derive(Debug)]
pub struct AssertionVerifier {
    verifier: Verifier,
    audience: Audience,
}

impl AssertionVerifier {
    /// `keys` may hold keys of any kind: only `ast-` keys are taken.
    pub fn new(
        issuer: impl Into<String>,
        keys: &KeySet,
        audience: Audience,
        leeway_secs: i64,
    ) -> Result<Self, token::KeyError> {
        Ok(AssertionVerifier {
            verifier: Verifier::new(
                TokenKind::Assertion,
                issuer,
                keys,
                leeway_secs,
                MAX_ASSERTION_LIFETIME_SECS,
            )?,
            audience,
        })
    }

    /// How many assertion keys the verifier holds.
    pub fn key_count(&self) -> usize {
        self.verifier.key_count()
    }

    /// Checks `value` at `now`: an assertion (`typ`, an `ast-` key, the signature, the issuer,
    /// the lifetime) for this very pod host.
    pub fn verify(&self, value: &str, now: i64) -> Result<Asserted, AssertionError> {
        let verified = self.verifier.verify(value.trim(), now)?;
        let claims = &verified.claims;
        if !self.audience.admits(&claims.aud, &claims.pod, claims.port) {
            return Err(AssertionError::WrongAudience);
        }
        Ok(Asserted {
            sub: verified.claims.sub,
            email: verified.claims.email,
            pod: verified.claims.pod,
            port: verified.claims.port,
            expires_at: verified.expires_at,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::token::{mint, PodClaims, SigningKey};

    const ISS: &str = "http://cp.test";
    const HOST: &str = "localhost-3000-pod-a.localhost";

    fn claims(aud: &str) -> PodClaims {
        PodClaims {
            iss: ISS.into(),
            sub: "user-1".into(),
            aud: aud.into(),
            pod: "a".into(),
            port: 3000,
            jti: "j1".into(),
            email: Some("u@example.dev".into()),
        }
    }

    fn keys() -> (SigningKey, SigningKey, KeySet) {
        let ast = SigningKey::ed25519_from_seed("ast-1", [7; 32]).unwrap();
        let cap = SigningKey::ed25519_from_seed("cap-1", [8; 32]).unwrap();
        let set = KeySet {
            keys: vec![ast.public_jwk().unwrap(), cap.public_jwk().unwrap()],
        };
        (ast, cap, set)
    }

    fn compiled(ast: &SigningKey) -> CompiledAssertion {
        Assertion {
            key: ast.to_private_jwk(),
            lifetime_secs: 60,
        }
        .compile()
        .unwrap()
    }

    fn capability(cap: &SigningKey, now: i64) -> Verified {
        let set = KeySet {
            keys: vec![cap.public_jwk().unwrap()],
        };
        let token = mint(TokenKind::Capability, cap, &claims(HOST), now, 900).unwrap();
        Verifier::new(TokenKind::Capability, ISS, &set, 30, 3600)
            .unwrap()
            .verify(&token, now)
            .unwrap()
    }

    #[test]
    fn assertion_verifies_for_its_pod_and_user() {
        let (ast, cap, set) = keys();
        let now = 1_700_000_000;
        let value = compiled(&ast).sign(&capability(&cap, now), now).unwrap();
        let verifier = AssertionVerifier::new(ISS, &set, Audience::Host(HOST.into()), 5).unwrap();
        let got = verifier.verify(&value, now + 1).unwrap();
        assert_eq!(got.sub, "user-1");
        assert_eq!(got.email.as_deref(), Some("u@example.dev"));
        assert_eq!((got.pod.as_str(), got.port), ("a", 3000));
        assert_eq!(got.expires_at, now + 60);
    }

    #[test]
    fn assertion_for_another_pod_expired_or_forged_is_refused() {
        let (ast, cap, set) = keys();
        let now = 1_700_000_000;
        let value = compiled(&ast).sign(&capability(&cap, now), now).unwrap();
        let other = AssertionVerifier::new(
            ISS,
            &set,
            Audience::Host("localhost-3000-pod-b.localhost".into()),
            5,
        )
        .unwrap();
        assert_eq!(
            other.verify(&value, now),
            Err(AssertionError::WrongAudience)
        );
        let verifier = AssertionVerifier::new(ISS, &set, Audience::Host(HOST.into()), 5).unwrap();
        assert_eq!(
            verifier.verify(&value, now + 66),
            Err(AssertionError::Token(TokenError::Expired))
        );
        // Signed by a key the control plane never published, under a published kid.
        let forger = SigningKey::ed25519_from_seed("ast-1", [9; 32]).unwrap();
        let forged = mint(TokenKind::Assertion, &forger, &claims(HOST), now, 60).unwrap();
        assert_eq!(
            verifier.verify(&forged, now),
            Err(AssertionError::Token(TokenError::BadSignature))
        );
        // Living longer than any assertion may.
        let long = mint(TokenKind::Assertion, &ast, &claims(HOST), now, 3600).unwrap();
        assert_eq!(
            verifier.verify(&long, now),
            Err(AssertionError::Token(TokenError::LifetimeTooLong))
        );
    }

    #[test]
    fn assertion_and_capability_never_pass_as_each_other() {
        let (ast, cap, set) = keys();
        let now = 1_700_000_000;
        let capability_token = mint(TokenKind::Capability, &cap, &claims(HOST), now, 900).unwrap();
        let assertion = compiled(&ast).sign(&capability(&cap, now), now).unwrap();
        // A capability presented to the assertion verifier.
        let verifier = AssertionVerifier::new(ISS, &set, Audience::Host(HOST.into()), 5).unwrap();
        assert!(matches!(
            verifier.verify(&capability_token, now),
            Err(AssertionError::Token(TokenError::WrongType { .. }))
        ));
        // The same capability key signing an assertion-typed token: its kid is not trusted.
        let by_cap_key = mint(TokenKind::Assertion, &cap, &claims(HOST), now, 60).unwrap();
        assert_eq!(
            verifier.verify(&by_cap_key, now),
            Err(AssertionError::Token(TokenError::UnknownKey))
        );
        // An assertion presented as a capability or a ticket, even with its key in the set.
        for kind in [TokenKind::Capability, TokenKind::LoginTicket] {
            let v = Verifier::new(kind, ISS, &set, 30, 3600).unwrap();
            assert!(matches!(
                v.verify(&assertion, now),
                Err(TokenError::WrongType { .. })
            ));
        }
        // A capability-typed token signed with the assertion key: the capability verifier
        // never trusts an `ast-` kid.
        let by_ast_key = mint(TokenKind::Capability, &ast, &claims(HOST), now, 900).unwrap();
        let caps = Verifier::new(TokenKind::Capability, ISS, &set, 30, 3600).unwrap();
        assert_eq!(caps.verify(&by_ast_key, now), Err(TokenError::UnknownKey));
        // The filter knows an assertion as one of ours (it is stripped, never forwarded).
        assert!(token::looks_like_ours(&assertion));
    }

    #[test]
    fn cache_signs_once_per_capability_per_half_lifetime() {
        let (ast, cap, _) = keys();
        let now = 1_700_000_000;
        let a = compiled(&ast);
        let c = capability(&cap, now);
        let mut cache = AssertionCache::default();
        let first = cache.get(&a, &c, now, 16).unwrap();
        let again = cache.get(&a, &c, now + 29, 16).unwrap();
        assert!(Rc::ptr_eq(&first, &again));
        assert_eq!(cache.signed(), 1);
        let fresh = cache.get(&a, &c, now + 30, 16).unwrap();
        assert!(!Rc::ptr_eq(&first, &fresh));
        assert_eq!(cache.signed(), 2);
        // A clock that went back signs anew rather than hand out a value from the future.
        cache.get(&a, &c, now, 16).unwrap();
        assert_eq!(cache.signed(), 3);
    }

    #[test]
    fn config_refuses_a_key_of_another_kind_hmac_or_a_long_lifetime() {
        let (ast, cap, _) = keys();
        let of = |key: Jwk, lifetime_secs| Assertion { key, lifetime_secs }.compile();
        assert!(of(cap.to_private_jwk(), 60).is_err());
        assert!(of(ast.to_private_jwk(), 0).is_err());
        assert!(of(ast.to_private_jwk(), MAX_ASSERTION_LIFETIME_SECS + 1).is_err());
        let hmac = SigningKey::hs256("ast-h", &[1; 32]).unwrap();
        assert!(of(hmac.to_private_jwk(), 60).is_err());
        assert!(of(ast.to_private_jwk(), 60).is_ok());
    }

    #[test]
    fn pod_audience_takes_any_port_of_its_own_pod_only() {
        let (ast, cap, set) = keys();
        let now = 1_700_000_000;
        let value = compiled(&ast).sign(&capability(&cap, now), now).unwrap();
        let hosts = HostTemplate::new(crate::host::DEFAULT_PUBLIC_TEMPLATE, "localhost").unwrap();
        let pod = |pod: &str| Audience::Pod {
            hosts: hosts.clone(),
            pod: pod.into(),
        };
        let mine = AssertionVerifier::new(ISS, &set, pod("a"), 5).unwrap();
        assert_eq!(mine.verify(&value, now).unwrap().port, 3000);
        let other = AssertionVerifier::new(ISS, &set, pod("b"), 5).unwrap();
        assert_eq!(
            other.verify(&value, now),
            Err(AssertionError::WrongAudience)
        );
    }
}
