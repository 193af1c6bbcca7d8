//! Signing keys: generated at first start, stored as private JWKs, rotated with an overlap
//! window in which the old key still verifies. Ticket and capability keys are separate (their
//! kids carry the kind's prefix), and ticket keys never leave the control plane.

use podgate_protocol::token::{KeySet, SigningKey, TokenKind, Verifier};

use crate::config::{Config, SigningAlg};
use crate::store::{Db, KeyKind, StoredKey};

/// Leeway for the control plane's own checks of tickets (same clock on both ends).
pub const TICKET_LEEWAY_SECS: i64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored key {kid}: {msg}")]
    Stored { kid: String, msg: String },
    #[error("key generation: {0}")]
    Generate(String),
}

/// The keys in force: one signer per kind and the verifying sets (current plus overlapping).
#[derive(Debug)]
pub struct KeyRing {
    pub ticket_signer: SigningKey,
    pub capability_signer: SigningKey,
    pub ticket_verifier: Verifier,
    /// Capability verifying keys (current and overlapping): what Envoy's filter receives. For
    /// HS256 these contain the secret.
    pub capability_keys: KeySet,
    /// Public keys for `/.well-known/jwks.json` (capability keys only; empty under HS256).
    pub public_jwks: KeySet,
}

impl KeyKind {
    pub fn token_kind(self) -> TokenKind {
        match self {
            KeyKind::Ticket => TokenKind::LoginTicket,
            KeyKind::Capability => TokenKind::Capability,
        }
    }
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeyringError> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).map_err(|e| KeyringError::Generate(e.to_string()))?;
    Ok(buf)
}

/// A random id: 128 bits, lowercase hex.
pub fn random_id() -> Result<String, KeyringError> {
    let b: [u8; 16] = random_bytes()?;
    Ok(hex(&b))
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Generates a fresh key of `kind` with `alg`.
pub fn generate(kind: KeyKind, alg: SigningAlg, now: i64) -> Result<StoredKey, KeyringError> {
    let kid = format!("{}{}", kind.token_kind().kid_prefix(), random_id()?);
    let gen_err = |e: podgate_protocol::token::KeyError| KeyringError::Generate(e.to_string());
    let key = match alg {
        SigningAlg::Eddsa => {
            SigningKey::ed25519_from_seed(kid.clone(), random_bytes()?).map_err(gen_err)?
        }
        SigningAlg::Es256 => {
            // A random 32-byte string is a valid P-256 scalar except with negligible probability.
            let mut attempt = 0;
            loop {
                let scalar: [u8; 32] = random_bytes()?;
                match SigningKey::es256_from_bytes(kid.clone(), &scalar) {
                    Ok(k) => break k,
                    Err(e) if attempt >= 8 => return Err(gen_err(e)),
                    Err(_) => attempt += 1,
                }
            }
        }
        SigningAlg::Hs256 => {
            let secret: [u8; 32] = random_bytes()?;
            SigningKey::hs256(kid.clone(), &secret).map_err(gen_err)?
        }
    };
    let private_jwk = serde_json::to_string(&key.to_private_jwk())
        .map_err(|e| KeyringError::Generate(e.to_string()))?;
    Ok(StoredKey {
        kid,
        kind,
        alg: alg.as_str().to_owned(),
        private_jwk,
        created_at: now,
        retired_at: None,
        verify_until: None,
    })
}

fn decode(k: &StoredKey) -> Result<SigningKey, KeyringError> {
    let jwk = serde_json::from_str(&k.private_jwk).map_err(|e| KeyringError::Stored {
        kid: k.kid.clone(),
        msg: format!("not a JWK: {e}"),
    })?;
    SigningKey::from_private_jwk(&jwk).map_err(|e| KeyringError::Stored {
        kid: k.kid.clone(),
        msg: e.to_string(),
    })
}

/// Makes sure each kind has an active key (generating one at first start).
pub async fn ensure(db: &Db, alg: SigningAlg, now: i64) -> Result<Vec<String>, KeyringError> {
    let live = db.live_keys(now).await?;
    let mut made = Vec::new();
    for kind in [KeyKind::Ticket, KeyKind::Capability] {
        if !live
            .iter()
            .any(|k| k.kind == kind && k.retired_at.is_none())
        {
            let key = generate(kind, alg, now)?;
            db.insert_key(&key).await?;
            made.push(key.kid);
        }
    }
    Ok(made)
}

/// New active keys for both kinds; the old ones verify for `overlap` more seconds.
pub async fn rotate(
    db: &Db,
    alg: SigningAlg,
    now: i64,
    overlap: i64,
) -> Result<Vec<String>, KeyringError> {
    let new = [
        generate(KeyKind::Ticket, alg, now)?,
        generate(KeyKind::Capability, alg, now)?,
    ];
    db.rotate_keys(&new, now, overlap).await?;
    Ok(new.iter().map(|k| k.kid.clone()).collect())
}

/// Loads the key ring in force at `now`.
pub async fn load(db: &Db, config: &Config, now: i64) -> Result<KeyRing, KeyringError> {
    let live = db.live_keys(now).await?;
    let mut ticket_signer = None;
    let mut capability_signer = None;
    let mut ticket_keys = KeySet { keys: Vec::new() };
    let mut capability_keys = KeySet { keys: Vec::new() };
    let mut public_jwks = KeySet { keys: Vec::new() };
    // Oldest first, so the newest active key of a kind wins if there were ever two.
    for stored in &live {
        let key = decode(stored)?;
        match stored.kind {
            KeyKind::Ticket => ticket_keys.keys.push(key.verifying_jwk()),
            KeyKind::Capability => {
                capability_keys.keys.push(key.verifying_jwk());
                if let Some(public) = key.public_jwk() {
                    public_jwks.keys.push(public);
                }
            }
        }
        if stored.retired_at.is_none() {
            match stored.kind {
                KeyKind::Ticket => ticket_signer = Some(key),
                KeyKind::Capability => capability_signer = Some(key),
            }
        }
    }
    let missing = |kind: &str| KeyringError::Stored {
        kid: String::new(),
        msg: format!("no active {kind} key; run `podgate keys rotate` or restart `podgate serve`"),
    };
    let ticket_signer = ticket_signer.ok_or_else(|| missing("ticket"))?;
    let capability_signer = capability_signer.ok_or_else(|| missing("capability"))?;
    let ticket_verifier = Verifier::new(
        TokenKind::LoginTicket,
        config.issuer.clone(),
        &ticket_keys,
        TICKET_LEEWAY_SECS,
        config.ticket_lifetime as i64,
    )
    .map_err(|e| KeyringError::Stored {
        kid: String::new(),
        msg: e.to_string(),
    })?;
    Ok(KeyRing {
        ticket_signer,
        capability_signer,
        ticket_verifier,
        capability_keys,
        public_jwks,
    })
}
