//! Signing keys: generated at first start, stored as private JWKs sealed under the operator's
//! key-encryption key (`key_encryption.rs`; plaintext only in dev mode without one), rotated with
//! an overlap window in which the old key still verifies. Ticket and capability keys are separate
//! (their kids carry the kind's prefix), and ticket keys never leave the control plane.
//!
//! Publish before sign: a new capability key is handed to Envoy at once (it verifies), but
//! signs only once the [`SigningGate`] lets it — every connected Envoy acknowledged a config
//! holding it, or the publish delay passed — so no Envoy ever sees a token it cannot check.
//!
//! Identity assertion keys are not stored: each capability key has one, derived from its
//! private material ([`assertion_key`]), so assertion keys rotate, overlap and are published
//! exactly when capability keys are, and the filter signs with the one of the capability key
//! that signs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use podgate_protocol::token::{KeySet, SigningKey, TokenKind, Verifier};
use sha2::{Digest, Sha256};

use crate::config::{Config, SigningAlg};
use crate::key_encryption::{KeyEncryption, RowBinding, Sealed};
use crate::store::{Db, KeyKind, KeyMaterial, StoredKey};

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
    /// A setting the command needs is missing; the message says which and how to set it.
    #[error("{0}")]
    Setting(String),
}

/// No key ring to sign or verify with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoKeyRing {
    /// None has been loaded yet (the database was not ready at start).
    #[error("signing keys are not loaded yet")]
    NotLoaded,
    /// A panic while the ring was being replaced.
    #[error("key ring lock poisoned")]
    Poisoned,
}

/// The key ring in force, replaced whole by [`LiveKeys::reload`], and the gate a new capability
/// key passes before it signs.
#[derive(Debug)]
pub struct LiveKeys {
    ring: RwLock<Option<Arc<KeyRing>>>,
    gate: SigningGate,
    /// When [`LiveKeys::reload_for_unknown_key`] last read the keys; held while it reads them,
    /// so that callers meanwhile wait for that reading rather than being turned away.
    unknown_key_reload: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// How often a token naming a key this ring does not have may make the keys be read again:
/// often enough for a ticket another control plane signed with a key it just rotated in, rarely
/// enough that tokens with made-up key ids cannot keep the database busy.
const UNKNOWN_KEY_RELOAD: std::time::Duration = std::time::Duration::from_secs(1);

impl LiveKeys {
    /// No ring yet; [`LiveKeys::reload`] loads one.
    pub fn new(gate: SigningGate) -> LiveKeys {
        LiveKeys {
            ring: RwLock::new(None),
            gate,
            unknown_key_reload: tokio::sync::Mutex::new(None),
        }
    }

    /// The key ring in force.
    pub fn current(&self) -> Result<Arc<KeyRing>, NoKeyRing> {
        let guard = self.ring.read().map_err(|_| NoKeyRing::Poisoned)?;
        guard.clone().ok_or(NoKeyRing::NotLoaded)
    }

    pub fn loaded(&self) -> bool {
        self.ring.read().map(|k| k.is_some()).unwrap_or(false)
    }

    /// Publish before sign: the xDS sync task clears new capability keys here.
    pub fn signing_gate(&self) -> &SigningGate {
        &self.gate
    }

    /// A token names a key `seen` (the ring it was checked with) does not have: the ring to
    /// check it with again, if there is a newer one. That is the ring in force when another
    /// caller read the keys since `seen` was taken (a caller meanwhile waits for that reading),
    /// else the keys are read again, at most once per [`UNKNOWN_KEY_RELOAD`], in case another
    /// control plane rotated a key in since this one last read them (a ticket key signs at once).
    pub async fn reload_for_unknown_key(
        &self,
        db: &Db,
        config: &Config,
        seen: &Arc<KeyRing>,
    ) -> Option<Arc<KeyRing>> {
        let mut last = self.unknown_key_reload.lock().await;
        let newer = |keys: &LiveKeys| keys.current().ok().filter(|r| !Arc::ptr_eq(r, seen));
        if let Some(ring) = newer(self) {
            return Some(ring);
        }
        if last.is_some_and(|at| at.elapsed() < UNKNOWN_KEY_RELOAD) {
            return None;
        }
        *last = Some(std::time::Instant::now());
        if let Err(e) = self.reload(db, config).await {
            tracing::warn!(error = %e, "reading the keys again for an unknown key id failed");
            return None;
        }
        newer(self)
    }

    /// Re-reads the keys from the database (after a rotation, or periodically so a rotation by
    /// another process is picked up and expired keys drop out).
    pub async fn reload(&self, db: &Db, config: &Config) -> Result<(), KeyringError> {
        let ring = load_gated(db, config, crate::store::now_unix(), &self.gate).await?;
        let mut guard = self.ring.write().map_err(|_| KeyringError::Stored {
            kid: String::new(),
            msg: "key ring lock poisoned".into(),
        })?;
        *guard = Some(Arc::new(ring));
        Ok(())
    }
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
    /// The identity assertion key of `capability_signer` (`assertion_key`): what the filter
    /// signs assertions with.
    pub assertion_signer: SigningKey,
    /// Public assertion keys (those of every live capability key) for
    /// `/.well-known/podgate-assertion-jwks.json`.
    pub assertion_jwks: KeySet,
    /// The newest capability key while it is being published: it verifies (it is in
    /// `capability_keys`) but `capability_signer` is still the previous key.
    pub capability_pending: Option<PendingKey>,
}

/// A capability key published to Envoy but not signing yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKey {
    pub kid: String,
    /// Unix time after which it signs whatever the Envoys say.
    pub signs_at_latest: i64,
}

/// When a newly rotated-in capability key may start signing.
#[derive(Debug)]
pub struct SigningGate {
    /// Kids every connected Envoy has acknowledged (set by the xDS sync task).
    cleared: Mutex<HashSet<String>>,
    /// Seconds from a key's creation before it signs even if not cleared.
    max_wait: i64,
    /// Seconds from a key's creation before a cleared key may sign (other control planes on the
    /// same database need one resync to publish it to their own Envoys).
    min_wait: i64,
}

impl SigningGate {
    /// Every key signs as soon as it exists (no xDS: nothing to wait for).
    pub fn open() -> SigningGate {
        SigningGate::new(0, 0)
    }

    pub fn new(min_wait_secs: u64, max_wait_secs: u64) -> SigningGate {
        let max_wait = i64::try_from(max_wait_secs).unwrap_or(i64::MAX);
        SigningGate {
            cleared: Mutex::new(HashSet::new()),
            max_wait,
            min_wait: i64::try_from(min_wait_secs)
                .unwrap_or(i64::MAX)
                .min(max_wait),
        }
    }

    /// Lets `kid` sign (once its minimum wait has passed).
    pub fn clear(&self, kid: &str) {
        self.cleared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kid.to_owned());
    }

    fn may_sign(&self, key: &StoredKey, now: i64) -> bool {
        let age = now.saturating_sub(key.created_at);
        age >= self.max_wait
            || (age >= self.min_wait
                && self
                    .cleared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(&key.kid))
    }
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
    Ok(hex::encode(b))
}

/// A token id (`jti`): the minting time in milliseconds (48 bits) then 80 random bits, lowercase
/// hex (32 characters, like [`random_id`]). Ids minted close together sort close together, so
/// the indexes keyed by jti (audit rows, consumed tickets) take each batch of new rows on a few
/// pages at their end instead of one random page per row: fewer pages written per commit and
/// per checkpoint. The time adds nothing a token does not already say in `iat`.
pub fn token_id() -> Result<String, KeyringError> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    b[6..].copy_from_slice(&random_bytes::<10>()?);
    Ok(hex::encode(b))
}

/// What a stored key's ciphertext is bound to.
fn binding(k: &StoredKey) -> RowBinding<'_> {
    RowBinding {
        kid: &k.kid,
        kind: k.kind.as_str(),
        alg: &k.alg,
    }
}

/// Generates a fresh key of `kind` with `alg`, sealed under the current key-encryption key
/// (plaintext when there is none: dev mode).
pub fn generate(
    kind: KeyKind,
    alg: SigningAlg,
    now: i64,
    kek: &KeyEncryption,
) -> Result<StoredKey, KeyringError> {
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
    let private_jwk = zeroize::Zeroizing::new(
        serde_json::to_string(&key.to_private_jwk())
            .map_err(|e| KeyringError::Generate(e.to_string()))?,
    );
    let mut stored = StoredKey {
        kid,
        kind,
        alg: alg.as_str().to_owned(),
        material: KeyMaterial::Plaintext(String::new()),
        created_at: now,
        retired_at: None,
        verify_until: None,
    };
    stored.material = match kek
        .seal(binding(&stored), private_jwk.as_bytes())
        .map_err(|e| KeyringError::Generate(e.to_string()))?
    {
        Some(sealed) => KeyMaterial::Sealed(sealed),
        None => KeyMaterial::Plaintext(private_jwk.to_string()),
    };
    Ok(stored)
}

/// The private JWK of a stored key, opened with whichever configured key-encryption key sealed
/// it. A key that cannot be opened is an error naming it: never a reason to make a new one.
pub fn private_jwk(
    k: &StoredKey,
    kek: &KeyEncryption,
) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyringError> {
    match &k.material {
        KeyMaterial::Plaintext(jwk) => Ok(zeroize::Zeroizing::new(jwk.as_bytes().to_vec())),
        KeyMaterial::Sealed(sealed) => {
            kek.open(binding(k), sealed)
                .map_err(|e| KeyringError::Stored {
                    kid: k.kid.clone(),
                    msg: e.to_string(),
                })
        }
    }
}

fn decode(k: &StoredKey, kek: &KeyEncryption) -> Result<SigningKey, KeyringError> {
    let jwk = serde_json::from_slice(&private_jwk(k, kek)?).map_err(|e| KeyringError::Stored {
        kid: k.kid.clone(),
        msg: format!("not a JWK: {e}"),
    })?;
    let key = SigningKey::from_private_jwk(&jwk).map_err(|e| KeyringError::Stored {
        kid: k.kid.clone(),
        msg: e.to_string(),
    })?;
    // The row's kid and algorithm are what tokens name; the JWK inside must agree.
    if key.kid() != k.kid || key.alg().name() != k.alg {
        return Err(KeyringError::Stored {
            kid: k.kid.clone(),
            msg: format!(
                "the stored JWK is key {} ({}), not this row's key",
                key.kid(),
                key.alg().name()
            ),
        });
    }
    Ok(key)
}

/// What [`reseal`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Keys newly sealed under the current key-encryption key.
    pub resealed: Vec<String>,
    /// Keys already under it.
    pub already_current: usize,
    /// Keys left under a previous key-encryption key (only [`Reseal::All`] moves them).
    pub left: usize,
}

/// Which stored keys [`reseal`] moves to the current key-encryption key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// Only plaintext keys (an upgrade, at every start with a key-encryption key).
    Plaintext,
    /// Every key not under the current key-encryption key (`podgate keys rewrap`).
    All,
}

/// Seals stored keys under the current key-encryption key: every stored key (expired ones too,
/// they still hold private material) is opened first, so nothing changes unless all of them
/// open; then the selected ones are written back sealed, in one transaction.
pub async fn reseal(
    db: &Db,
    kek: &KeyEncryption,
    which: Reseal,
) -> Result<ResealReport, KeyringError> {
    let Some(current) = kek.current() else {
        return Err(KeyringError::Setting(format!(
            "no key-encryption key to encrypt the signing keys with; create one with {} and set PODGATE_KEY_ENCRYPTION_KEY_FILE",
            crate::key_encryption::HOW_TO_GENERATE
        )));
    };
    let stored = db.all_keys().await?;
    let mut report = ResealReport::default();
    let mut sealed: Vec<(&StoredKey, Sealed)> = Vec::new();
    for k in &stored {
        // Opening checks the key material even for rows that stay as they are.
        let jwk = private_jwk(k, kek)?;
        let selected = match (&k.material, which) {
            (KeyMaterial::Sealed(s), _) if s.kek_id == current.id() => {
                report.already_current += 1;
                false
            }
            (KeyMaterial::Plaintext(_), _) | (KeyMaterial::Sealed(_), Reseal::All) => true,
            (KeyMaterial::Sealed(_), Reseal::Plaintext) => false,
        };
        if !selected {
            if k.material.kek_id() != Some(current.id()) {
                report.left += 1;
            }
            continue;
        }
        let new = kek
            .seal(binding(k), &jwk)
            .map_err(|e| KeyringError::Generate(e.to_string()))?
            .ok_or_else(|| KeyringError::Generate("no current key-encryption key".into()))?;
        sealed.push((k, new));
    }
    let updates: Vec<(&StoredKey, &Sealed)> = sealed.iter().map(|(k, s)| (*k, s)).collect();
    db.reseal_keys(&updates).await?;
    report.resealed = sealed.iter().map(|(k, _)| k.kid.clone()).collect();
    Ok(report)
}

/// Makes sure each kind has an active key (generating one at first start).
pub async fn ensure(
    db: &Db,
    alg: SigningAlg,
    now: i64,
    kek: &KeyEncryption,
) -> Result<Vec<String>, KeyringError> {
    let live = db.live_keys(now).await?;
    let mut made = Vec::new();
    for kind in [KeyKind::Ticket, KeyKind::Capability] {
        if !live
            .iter()
            .any(|k| k.kind == kind && k.retired_at.is_none())
        {
            let key = generate(kind, alg, now, kek)?;
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
    kek: &KeyEncryption,
) -> Result<Vec<String>, KeyringError> {
    let new = [
        generate(KeyKind::Ticket, alg, now, kek)?,
        generate(KeyKind::Capability, alg, now, kek)?,
    ];
    db.rotate_keys(&new, now, overlap).await?;
    Ok(new.iter().map(|k| k.kid.clone()).collect())
}

/// The identity assertion key that goes with capability key `capability`: an Ed25519 key whose
/// seed is SHA-256 over a label and the capability key's private JWK, with the capability
/// kid's random part behind the assertion prefix (`cap-x` has `ast-x`). One-way: the
/// assertion key, which Envoy's filter holds, tells nothing about the capability key.
pub fn assertion_key(capability: &SigningKey) -> Result<SigningKey, KeyringError> {
    let stored = |msg: String| KeyringError::Stored {
        kid: capability.kid().to_owned(),
        msg,
    };
    let private = zeroize::Zeroizing::new(
        serde_json::to_vec(&capability.to_private_jwk()).map_err(|e| stored(e.to_string()))?,
    );
    let mut hash = Sha256::new();
    hash.update(b"podgate identity assertion key\0");
    hash.update(private.as_slice());
    let seed: [u8; 32] = hash.finalize().into();
    let suffix = capability
        .kid()
        .strip_prefix(TokenKind::Capability.kid_prefix())
        .unwrap_or(capability.kid());
    let kid = format!("{}{suffix}", TokenKind::Assertion.kid_prefix());
    SigningKey::ed25519_from_seed(kid, seed).map_err(|e| stored(e.to_string()))
}

/// The assertion key that signs at `now`: the signing capability key's once it has been
/// published for `config.assertion_key_delay` (pods cache the assertion keys for up to a
/// minute, and would refuse assertions signed with a key they have not fetched yet), else that
/// of the newest live capability key published that long, else (a first start, or every older
/// key gone) the signing one's. The delay is at most the key overlap.
fn assertion_signer(
    live: &[StoredKey],
    capability_signer: &SigningKey,
    config: &Config,
    now: i64,
) -> Result<SigningKey, KeyringError> {
    // No longer than the previous key stays published (the key overlap): past it, the new
    // one is the only one pods can verify.
    let delay = config.assertion_key_delay.min(config.key_overlap);
    let delay = i64::try_from(delay).unwrap_or(i64::MAX);
    let published = |k: &&StoredKey| now.saturating_sub(k.created_at) >= delay;
    let capability = |k: &&StoredKey| k.kind == KeyKind::Capability;
    if live
        .iter()
        .filter(capability)
        .any(|k| k.kid == capability_signer.kid() && published(&k))
    {
        return assertion_key(capability_signer);
    }
    match live.iter().rev().filter(capability).find(published) {
        Some(stored) => assertion_key(&decode(stored, &config.key_encryption)?),
        None => assertion_key(capability_signer),
    }
}

/// Loads the key ring in force at `now`; the newest capability key signs at once.
pub async fn load(db: &Db, config: &Config, now: i64) -> Result<KeyRing, KeyringError> {
    load_gated(db, config, now, &SigningGate::open()).await
}

/// Loads the key ring in force at `now`; a capability key signs only once `gate` lets it.
pub async fn load_gated(
    db: &Db,
    config: &Config,
    now: i64,
    gate: &SigningGate,
) -> Result<KeyRing, KeyringError> {
    let live = db.live_keys(now).await?;
    let mut ticket_signer = None;
    let mut capability_signer = None;
    let mut ticket_keys = KeySet { keys: Vec::new() };
    let mut capability_keys = KeySet { keys: Vec::new() };
    let mut public_jwks = KeySet { keys: Vec::new() };
    let mut assertion_jwks = KeySet { keys: Vec::new() };
    // Oldest first, so the newest active key of a kind wins if there were ever two.
    for stored in &live {
        let key = decode(stored, &config.key_encryption)?;
        match stored.kind {
            KeyKind::Ticket => ticket_keys.keys.push(key.verifying_jwk()),
            KeyKind::Capability => {
                capability_keys.keys.push(key.verifying_jwk());
                if let Some(public) = key.public_jwk() {
                    public_jwks.keys.push(public);
                }
                assertion_jwks
                    .keys
                    .extend(assertion_key(&key)?.public_jwk());
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
    let mut capability_signer = capability_signer.ok_or_else(|| missing("capability"))?;
    let mut capability_pending = None;
    let newest = live
        .iter()
        .rev()
        .find(|k| k.kind == KeyKind::Capability && k.retired_at.is_none());
    if let Some(newest) = newest.filter(|k| !gate.may_sign(k, now)) {
        // Sign with the newest older key that may sign, else the oldest (it has been published
        // longest); with no older key at all (first start) the new one signs.
        let older: Vec<&StoredKey> = live
            .iter()
            .filter(|k| k.kind == KeyKind::Capability && k.kid != newest.kid)
            .collect();
        let previous = older
            .iter()
            .rev()
            .find(|k| gate.may_sign(k, now))
            .or(older.first());
        if let Some(previous) = previous {
            capability_signer = decode(previous, &config.key_encryption)?;
            capability_pending = Some(PendingKey {
                kid: newest.kid.clone(),
                signs_at_latest: newest.created_at.saturating_add(gate.max_wait),
            });
        }
    }
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
    let assertion_signer = assertion_signer(&live, &capability_signer, config, now)?;
    Ok(KeyRing {
        assertion_signer,
        assertion_jwks,
        ticket_signer,
        capability_signer,
        ticket_verifier,
        capability_keys,
        public_jwks,
        capability_pending,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn token_ids_are_unique_hex_and_sort_by_minting_time() {
        let first = token_id().unwrap();
        assert_eq!(first.len(), 32);
        assert!(first
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let same_moment: std::collections::HashSet<String> =
            (0..1000).map(|_| token_id().unwrap()).collect();
        assert_eq!(same_moment.len(), 1000);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = token_id().unwrap();
        assert!(
            later > first,
            "{later} minted after {first} sorts before it"
        );
        assert!(same_moment.iter().all(|id| *id < later));
        // The time is the first 48 bits, in milliseconds.
        let millis = u64::from_str_radix(&later[..12], 16).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now.abs_diff(millis) < 60_000);
    }
}
