//! Test keys, capabilities and pod hosts. The suite signs its own tokens with a fixed test key
//! and puts the matching public key in the filter's configuration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use podgate_protocol::token::{
    self, PodClaims, SigningKey, TokenKind, DEFAULT_CAPABILITY_LIFETIME_SECS,
};

/// The base domain of the local stack (the control plane's default).
pub const DOMAIN: &str = "localhost";
/// The user every capability is minted for unless a test says otherwise.
pub const USER: &str = "user-alice";
pub const EMAIL: &str = "alice@example.test";

/// The public pod host for the default template `localhost-{port}-pod-{pod}.{domain}`.
pub fn public_host(port: u16, pod: &str) -> String {
    format!("localhost-{port}-pod-{pod}.{DOMAIN}")
}

/// The Host the pod receives, from the default template `localhost-{port}.pod-{pod}.{domain}`.
pub fn upstream_host(port: u16, pod: &str) -> String {
    format!("localhost-{port}.pod-{pod}.{DOMAIN}")
}

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The suite's capability key (Ed25519, fixed seed so failures reproduce).
pub fn capability_key() -> anyhow::Result<SigningKey> {
    SigningKey::ed25519_from_seed("cap-e2e-1", [0x5a; 32]).map_err(|e| anyhow!("test key: {e}"))
}

/// The suite's identity assertion key (Ed25519, fixed seed): the filter signs with it, the fake
/// pods verify with its public half.
pub fn assertion_key() -> anyhow::Result<SigningKey> {
    SigningKey::ed25519_from_seed("ast-e2e-1", [0x3c; 32]).map_err(|e| anyhow!("test key: {e}"))
}

/// A key with the same `kid` as `capability_key` but other key material: its tokens carry a
/// signature the filter must refuse.
pub fn impostor_key() -> anyhow::Result<SigningKey> {
    SigningKey::ed25519_from_seed("cap-e2e-1", [0xa5; 32]).map_err(|e| anyhow!("impostor key: {e}"))
}

/// Mints capabilities for one issuer.
#[derive(Debug)]
pub struct Minter {
    pub issuer: String,
    pub key: SigningKey,
}

/// One capability to mint; fields default to a valid 15-minute capability for `USER`.
#[derive(Debug, Clone)]
pub struct Capability {
    pub pod: String,
    pub port: u16,
    /// `aud`; defaults to the public host of `pod` and `port`.
    pub aud: Option<String>,
    pub sub: String,
    pub email: Option<String>,
    pub issued_at: i64,
    pub lifetime_secs: i64,
}

impl Capability {
    pub fn subject(mut self, sub: &str) -> Self {
        self.sub = sub.to_owned();
        self
    }

    pub fn issued_at(mut self, issued_at: i64) -> Self {
        self.issued_at = issued_at;
        self
    }

    pub fn lifetime(mut self, secs: i64) -> Self {
        self.lifetime_secs = secs;
        self
    }

    pub fn aud(mut self, aud: &str) -> Self {
        self.aud = Some(aud.to_owned());
        self
    }
}

impl Minter {
    pub fn new(issuer: &str) -> anyhow::Result<Minter> {
        Ok(Minter {
            issuer: issuer.to_owned(),
            key: capability_key()?,
        })
    }

    /// A valid capability for `pod` and `port`, to adjust before minting.
    pub fn capability(&self, pod: &str, port: u16) -> Capability {
        Capability {
            pod: pod.to_owned(),
            port,
            aud: None,
            sub: USER.to_owned(),
            email: Some(EMAIL.to_owned()),
            issued_at: now(),
            lifetime_secs: DEFAULT_CAPABILITY_LIFETIME_SECS,
        }
    }

    /// Signs with the suite's key.
    pub fn mint(&self, cap: &Capability) -> anyhow::Result<String> {
        self.mint_with(&self.key, cap)
    }

    /// Signs with another key (a bad signature, an unknown `kid`, ...).
    pub fn mint_with(&self, key: &SigningKey, cap: &Capability) -> anyhow::Result<String> {
        static NEXT_JTI: AtomicU64 = AtomicU64::new(1);
        let claims = PodClaims {
            iss: self.issuer.clone(),
            sub: cap.sub.clone(),
            aud: cap
                .aud
                .clone()
                .unwrap_or_else(|| public_host(cap.port, &cap.pod)),
            pod: cap.pod.clone(),
            port: cap.port,
            jti: format!(
                "e2e-{}-{}",
                std::process::id(),
                NEXT_JTI.fetch_add(1, Ordering::Relaxed)
            ),
            email: cap.email.clone(),
        };
        token::mint(
            TokenKind::Capability,
            key,
            &claims,
            cap.issued_at,
            cap.lifetime_secs,
        )
        .map_err(|e| anyhow!("minting a test capability: {e}"))
    }

    /// A valid capability for `pod` and `port`, minted.
    pub fn valid(&self, pod: &str, port: u16) -> anyhow::Result<String> {
        self.mint(&self.capability(pod, port))
    }
}
