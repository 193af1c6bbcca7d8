//! Signing keys at rest: the private JWKs in `signing_keys` are sealed with XChaCha20-Poly1305
//! under a key-encryption key (KEK) that the operator provides (a file or an environment
//! variable), never the database. Each ciphertext is bound to its row (kid, kind, algorithm and
//! the KEK's id are the associated data), so a ciphertext copied onto another row does not open.
//!
//! A KEK is 32 random bytes written as base64 (standard or URL-safe, padding optional) or as 64
//! hex digits. Its id is a fingerprint (the first 8 bytes of a SHA-256 of the key, in hex), stored
//! beside each ciphertext so the control plane can say which key a row needs. One KEK is current
//! (it seals); previous ones only open, until `podgate keys rewrap` has moved every row to the
//! current one.

use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Bytes of a key-encryption key.
pub const KEK_LEN: usize = 32;
/// Bytes of an XChaCha20-Poly1305 nonce (random per seal: 192 bits never repeat by chance).
const NONCE_LEN: usize = 24;
/// Prefix of every stored ciphertext: the format, so a later one can be told apart.
const SEALED_PREFIX: &str = "v1.";
/// Start of the associated data, naming what the ciphertext is.
const AAD_LABEL: &str = "podgate signing key v1";
/// How to make a key, for messages.
pub const HOW_TO_GENERATE: &str =
    "`podgate keys gen-kek FILE` (or `openssl rand -base64 32 > FILE`, or `head -c 32 /dev/urandom | base64 > FILE`)";

/// What a ciphertext is bound to: the row it belongs to and the key that sealed it.
#[derive(Debug, Clone, Copy)]
pub struct RowBinding<'a> {
    pub kid: &'a str,
    pub kind: &'a str,
    pub alg: &'a str,
}

impl RowBinding<'_> {
    fn aad(&self, kek_id: &str) -> Vec<u8> {
        // Length-prefixed fields: no two different rows give the same bytes.
        let mut aad = Vec::with_capacity(96);
        for field in [AAD_LABEL, self.kid, self.kind, self.alg, kek_id] {
            aad.extend_from_slice(&(field.len() as u32).to_be_bytes());
            aad.extend_from_slice(field.as_bytes());
        }
        aad
    }
}

/// Why a KEK cannot be used or a ciphertext cannot be opened. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KekError {
    #[error("{0}")]
    Unusable(String),
    /// The row names a KEK that is not configured.
    #[error(
        "it was encrypted with key-encryption key {needed}, which is not configured ({configured})"
    )]
    UnknownKek { needed: String, configured: String },
    /// The KEK is configured but the ciphertext does not open: altered, or copied from another row.
    #[error("it does not decrypt with key-encryption key {kek_id}: the stored ciphertext was altered or belongs to another row")]
    Tampered { kek_id: String },
    #[error("sealing failed: {0}")]
    Seal(String),
}

/// One key-encryption key. `Debug` shows its id and where it came from, never the key.
#[derive(Clone)]
pub struct KeyEncryptionKey {
    id: String,
    key: Zeroizing<[u8; KEK_LEN]>,
    /// Where it was read from, for logs and messages (a path or a variable name).
    source: String,
    /// The file it was read from, if any.
    file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEncryptionKey")
            .field("id", &self.id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl KeyEncryptionKey {
    pub fn from_bytes(bytes: [u8; KEK_LEN], source: impl Into<String>) -> KeyEncryptionKey {
        let digest = Sha256::new()
            .chain_update(b"podgate key-encryption key id\0")
            .chain_update(bytes)
            .finalize();
        KeyEncryptionKey {
            id: digest[..8].iter().map(|b| format!("{b:02x}")).collect(),
            key: Zeroizing::new(bytes),
            source: source.into(),
            file: None,
        }
    }

    /// A fresh random key.
    pub fn generate() -> Result<KeyEncryptionKey, KekError> {
        let mut bytes = [0u8; KEK_LEN];
        getrandom::getrandom(&mut bytes).map_err(|e| KekError::Seal(e.to_string()))?;
        Ok(KeyEncryptionKey::from_bytes(bytes, "generated"))
    }

    /// Parses the text of a key (surrounding whitespace ignored): 64 hex digits, or base64 of 32
    /// bytes. `source` names where it came from in the error.
    pub fn parse(text: &str, source: &str) -> Result<KeyEncryptionKey, KekError> {
        let text = Zeroizing::new(text.trim().to_owned());
        let bytes = decode_key_text(&text).ok_or_else(|| {
            KekError::Unusable(format!(
                "the key-encryption key from {source} is not 32 random bytes as base64 or 64 hex digits; create one with {HOW_TO_GENERATE}"
            ))
        })?;
        // A constant key (all zeros, a fill byte) is a placeholder, not a secret.
        if bytes.iter().all(|b| *b == bytes[0]) {
            return Err(KekError::Unusable(format!(
                "the key-encryption key from {source} is one byte repeated, not a random key; create one with {HOW_TO_GENERATE}"
            )));
        }
        Ok(KeyEncryptionKey::from_bytes(*bytes, source))
    }

    /// Reads a key file (see [`KeyEncryptionKey::parse`]).
    pub fn read_file(path: &Path) -> Result<KeyEncryptionKey, KekError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            KekError::Unusable(format!(
                "cannot read the key-encryption key file {}: {e}; check the path, or create the key with {HOW_TO_GENERATE}",
                path.display()
            ))
        })?);
        let mut kek = KeyEncryptionKey::parse(&text, &format!("the file {}", path.display()))?;
        kek.file = Some(path.to_owned());
        Ok(kek)
    }

    /// The file it was read from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The key's fingerprint, stored with every row it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// A secret for `purpose` derived from this key (64 hex digits): the same on every control
    /// plane that holds the key, and across restarts, and telling nothing of the key.
    pub fn derived_secret(&self, purpose: &str) -> String {
        let digest = Sha256::new()
            .chain_update(b"podgate derived secret\0")
            .chain_update(purpose.as_bytes())
            .chain_update(b"\0")
            .chain_update(*self.key)
            .finalize();
        hex::encode(digest)
    }

    /// The key as standard base64, for `podgate keys gen-kek`.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*self.key))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.key).into())
    }

    fn seal(&self, row: RowBinding<'_>, plaintext: &[u8]) -> Result<String, KekError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|e| KekError::Seal(e.to_string()))?;
        let aad = row.aad(&self.id);
        let ciphertext = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| KekError::Seal("the cipher refused the input".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        ))
    }

    fn open(&self, row: RowBinding<'_>, sealed: &str) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let tampered = || KekError::Tampered {
            kek_id: self.id.clone(),
        };
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(b)
                    .ok()
            })
            .ok_or_else(tampered)?;
        if bytes.len() < NONCE_LEN {
            return Err(tampered());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| tampered())?;
        let aad = row.aad(&self.id);
        self.cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| tampered())
    }
}

fn decode_key_text(text: &str) -> Option<Zeroizing<[u8; KEK_LEN]>> {
    let mut out = Zeroizing::new([0u8; KEK_LEN]);
    if text.len() == 2 * KEK_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(s, 16).ok()?;
        }
        return Some(out);
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let decoded = [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .map(Zeroizing::new)?;
    if decoded.len() != KEK_LEN {
        return None;
    }
    out.copy_from_slice(&decoded);
    Some(out)
}

/// A sealed private key as stored: which KEK sealed it, and the ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub kek_id: String,
    pub ciphertext: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

/// The configured key-encryption keys: the current one (seals and opens) and previous ones
/// (open only). No current key means keys are stored in plaintext, which only dev mode allows.
#[derive(Debug, Clone, Default)]
pub struct KeyEncryption {
    current: Option<KeyEncryptionKey>,
    previous: Vec<KeyEncryptionKey>,
}

impl KeyEncryption {
    /// No key: private keys stay plaintext (dev mode only).
    pub fn plaintext() -> KeyEncryption {
        KeyEncryption::default()
    }

    /// `current` seals; `previous` keys only open. A previous key equal to the current one, or
    /// given twice, is kept once.
    pub fn new(current: Option<KeyEncryptionKey>, previous: Vec<KeyEncryptionKey>) -> Self {
        let mut kept: Vec<KeyEncryptionKey> = Vec::new();
        for k in previous {
            let dup =
                current.as_ref().is_some_and(|c| c.id == k.id) || kept.iter().any(|p| p.id == k.id);
            if !dup {
                kept.push(k);
            }
        }
        KeyEncryption {
            current,
            previous: kept,
        }
    }

    pub fn current(&self) -> Option<&KeyEncryptionKey> {
        self.current.as_ref()
    }

    pub fn previous(&self) -> &[KeyEncryptionKey] {
        &self.previous
    }

    /// Seals under the current key; `None` when there is none (plaintext storage).
    pub fn seal(&self, row: RowBinding<'_>, plaintext: &[u8]) -> Result<Option<Sealed>, KekError> {
        let Some(kek) = &self.current else {
            return Ok(None);
        };
        Ok(Some(Sealed {
            kek_id: kek.id.clone(),
            ciphertext: kek.seal(row, plaintext)?,
        }))
    }

    /// Opens with whichever configured key the row names.
    pub fn open(
        &self,
        row: RowBinding<'_>,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let kek = self
            .current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id == sealed.kek_id)
            .ok_or_else(|| KekError::UnknownKek {
                needed: sealed.kek_id.clone(),
                configured: self.describe(),
            })?;
        kek.open(row, &sealed.ciphertext)
    }

    /// The configured key ids, for messages: `current abcd…, previous 1234…` or `none`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.current {
            parts.push(format!("current {}", c.id));
        }
        for p in &self.previous {
            parts.push(format!("previous {}", p.id));
        }
        if parts.is_empty() {
            "none is configured: set PODGATE_KEY_ENCRYPTION_KEY_FILE or --key-encryption-key-file"
                .to_owned()
        } else {
            format!(
                "configured: {}; set PODGATE_KEY_ENCRYPTION_KEY_FILE (or PODGATE_PREVIOUS_KEY_ENCRYPTION_KEY_FILE during a rotation) to the key with that id",
                parts.join(", ")
            )
        }
    }
}

/// Where the operator's keys come from (flags, environment, config file), before reading them.
#[derive(Debug, Default, Clone)]
pub struct KekInputs {
    pub file: Option<std::path::PathBuf>,
    pub value: Option<String>,
    pub previous_files: Vec<std::path::PathBuf>,
    pub previous_values: Vec<String>,
}

/// Reads the configured keys; with `required` (the server and the key commands that write, outside
/// dev mode) having none is an error that says how to make one.
pub fn resolve(inputs: KekInputs, required: bool) -> Result<KeyEncryption, KekError> {
    let current = match (inputs.file, inputs.value) {
        (Some(_), Some(_)) => {
            return Err(KekError::Unusable(
                "both a key-encryption key file and a key-encryption key value are set; set only one of PODGATE_KEY_ENCRYPTION_KEY_FILE (--key-encryption-key-file) and PODGATE_KEY_ENCRYPTION_KEY".into(),
            ))
        }
        (Some(path), None) => Some(KeyEncryptionKey::read_file(&path)?),
        (None, Some(value)) => Some(KeyEncryptionKey::parse(
            &value,
            "PODGATE_KEY_ENCRYPTION_KEY (--key-encryption-key)",
        )?),
        (None, None) => None,
    };
    let mut previous = Vec::new();
    for path in &inputs.previous_files {
        previous.push(KeyEncryptionKey::read_file(path)?);
    }
    for (i, value) in inputs.previous_values.iter().enumerate() {
        previous.push(KeyEncryptionKey::parse(
            value,
            &format!("PODGATE_PREVIOUS_KEY_ENCRYPTION_KEY (value {})", i + 1),
        )?);
    }
    if current.is_none() && !previous.is_empty() {
        return Err(KekError::Unusable(
            "a previous key-encryption key is set but no current one; set PODGATE_KEY_ENCRYPTION_KEY_FILE (--key-encryption-key-file) to the new key, and keep the old one as the previous key until `podgate keys rewrap` has run".into(),
        ));
    }
    if current.is_none() && required {
        return Err(KekError::Unusable(format!(
            "no key-encryption key: podgate stores its signing keys encrypted with a key only you hold. Create one with {HOW_TO_GENERATE}, keep it outside the database and its backups, and set PODGATE_KEY_ENCRYPTION_KEY_FILE=FILE (or --key-encryption-key-file FILE, or the key itself in PODGATE_KEY_ENCRYPTION_KEY); on a dev machine PODGATE_DEV_MODE=true keeps the keys unencrypted instead"
        )));
    }
    Ok(KeyEncryption::new(current, previous))
}

/// Whether a key file can be read by others than its owner (group or world bits set).
#[cfg(unix)]
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(not(unix))]
pub fn readable_by_others(_path: &Path) -> bool {
    false
}

/// Writes a new key to `path` (mode 0600 on Unix), refusing to replace an existing file: a
/// key-encryption key overwritten is every signing key lost.
pub fn write_new_key_file(path: &Path, kek: &KeyEncryptionKey) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(kek.to_base64().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const ROW: RowBinding<'static> = RowBinding {
        kid: "cap-1",
        kind: "capability",
        alg: "EdDSA",
    };

    fn kek(fill: u8) -> KeyEncryptionKey {
        let mut b = [fill; KEK_LEN];
        b[0] = fill.wrapping_add(1);
        KeyEncryptionKey::from_bytes(b, "test")
    }

    #[test]
    fn seal_then_open_and_the_ciphertext_hides_the_plaintext() {
        let enc = KeyEncryption::new(Some(kek(1)), vec![]);
        let secret = br#"{"kty":"OKP","d":"c2VjcmV0LXNlZWQ"}"#;
        let sealed = enc.seal(ROW, secret).unwrap().unwrap();
        assert_eq!(sealed.kek_id, kek(1).id());
        assert!(!sealed.ciphertext.contains("c2VjcmV0LXNlZWQ"));
        assert_eq!(&enc.open(ROW, &sealed).unwrap()[..], &secret[..]);
        // A fresh nonce each time.
        assert_ne!(enc.seal(ROW, secret).unwrap().unwrap(), sealed);
        // No current key: nothing sealed.
        assert!(KeyEncryption::plaintext()
            .seal(ROW, secret)
            .unwrap()
            .is_none());
    }

    #[test]
    fn another_row_another_key_or_an_altered_ciphertext_does_not_open() {
        let enc = KeyEncryption::new(Some(kek(1)), vec![]);
        let sealed = enc.seal(ROW, b"secret").unwrap().unwrap();
        for other in [
            RowBinding {
                kid: "cap-2",
                ..ROW
            },
            RowBinding {
                kind: "ticket",
                ..ROW
            },
            RowBinding {
                alg: "HS256",
                ..ROW
            },
        ] {
            assert_eq!(
                enc.open(other, &sealed).unwrap_err(),
                KekError::Tampered {
                    kek_id: kek(1).id().to_owned()
                }
            );
        }
        let other_kek = KeyEncryption::new(Some(kek(2)), vec![]);
        assert!(matches!(
            other_kek.open(ROW, &sealed).unwrap_err(),
            KekError::UnknownKek { needed, .. } if needed == kek(1).id()
        ));
        // The row claiming another configured key: that key does not open it.
        let both = KeyEncryption::new(Some(kek(2)), vec![kek(1)]);
        let relabelled = Sealed {
            kek_id: kek(2).id().to_owned(),
            ..sealed.clone()
        };
        assert!(matches!(
            both.open(ROW, &relabelled).unwrap_err(),
            KekError::Tampered { .. }
        ));
        assert_eq!(&both.open(ROW, &sealed).unwrap()[..], b"secret");
        let mut flipped = sealed.ciphertext.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        for ciphertext in [
            String::from_utf8(flipped).unwrap(),
            String::new(),
            "v1.".into(),
            "v1.AAAA".into(),
            sealed.ciphertext.replacen("v1.", "v2.", 1),
        ] {
            let bad = Sealed {
                ciphertext,
                ..sealed.clone()
            };
            assert!(matches!(
                enc.open(ROW, &bad).unwrap_err(),
                KekError::Tampered { .. }
            ));
        }
    }

    #[test]
    fn key_text_formats() {
        let k = KeyEncryptionKey::generate().unwrap();
        let b64 = k.to_base64();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        for text in [
            format!("{}\n", &*b64),
            hex.clone(),
            hex.to_ascii_uppercase(),
            url,
        ] {
            assert_eq!(KeyEncryptionKey::parse(&text, "t").unwrap().id(), k.id());
        }
        assert_eq!(k.id().len(), 16);
        for bad in [
            "",
            "short",
            &hex[..62],
            &base64::engine::general_purpose::STANDARD.encode([7u8; 31]),
            &base64::engine::general_purpose::STANDARD.encode([0u8; 32]),
            &"ab".repeat(32),
        ] {
            let e = KeyEncryptionKey::parse(bad, "the file /k").unwrap_err();
            assert!(
                e.to_string().contains("the file /k") && e.to_string().contains("gen-kek"),
                "{e}"
            );
        }
    }

    #[test]
    fn resolve_requires_a_key_only_when_asked_and_never_prints_it() {
        let e = resolve(KekInputs::default(), true).unwrap_err().to_string();
        assert!(
            e.contains("PODGATE_KEY_ENCRYPTION_KEY_FILE")
                && e.contains("gen-kek")
                && e.contains("PODGATE_DEV_MODE=true"),
            "{e}"
        );
        assert!(resolve(KekInputs::default(), false)
            .unwrap()
            .current()
            .is_none());
        let value = KeyEncryptionKey::generate()
            .unwrap()
            .to_base64()
            .to_string();
        let both = KekInputs {
            file: Some("/nonexistent".into()),
            value: Some(value.clone()),
            ..KekInputs::default()
        };
        assert!(resolve(both, true)
            .unwrap_err()
            .to_string()
            .contains("only one"));
        let only_previous = KekInputs {
            previous_values: vec![value.clone()],
            ..KekInputs::default()
        };
        assert!(resolve(only_previous, false)
            .unwrap_err()
            .to_string()
            .contains("no current one"));
        let missing = KekInputs {
            file: Some("/nonexistent/kek".into()),
            ..KekInputs::default()
        };
        assert!(resolve(missing, true)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/kek"));
        let ok = resolve(
            KekInputs {
                value: Some(value.clone()),
                previous_values: vec![value.clone()],
                ..KekInputs::default()
            },
            true,
        )
        .unwrap();
        assert!(
            ok.previous().is_empty(),
            "the current key is not also previous"
        );
        assert!(!format!("{ok:?}").contains(value.trim_end_matches('=')));
    }

    #[test]
    fn a_new_key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let k = KeyEncryptionKey::generate().unwrap();
        write_new_key_file(&path, &k).unwrap();
        assert_eq!(KeyEncryptionKey::read_file(&path).unwrap().id(), k.id());
        assert!(!readable_by_others(&path));
        let other = KeyEncryptionKey::generate().unwrap();
        assert!(write_new_key_file(&path, &other).is_err());
        assert_eq!(KeyEncryptionKey::read_file(&path).unwrap().id(), k.id());
    }
}
