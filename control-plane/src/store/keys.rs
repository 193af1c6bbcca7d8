//! Signing keys: stored (sealed under the operator's key-encryption key, or in plaintext in dev
//! mode), listed while they still verify, resealed, rotated.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{enum_col, Db, KeyKind, Res};

#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    pub kind: KeyKind,
    pub alg: String,
    /// The private JWK, sealed under an operator key or (dev mode, old rows) in plaintext.
    pub material: KeyMaterial,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    pub verify_until: Option<i64>,
}

/// A signing key's private part as stored. `Debug` never shows key material.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// The private JWK as JSON: dev mode without a key-encryption key, or a row written before
    /// keys were encrypted (`podgate serve` with a key-encryption key seals it at start).
    Plaintext(String),
    /// The private JWK sealed under the key-encryption key it names.
    Sealed(crate::key_encryption::Sealed),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyMaterial::Plaintext(_) => f.write_str("Plaintext(..)"),
            KeyMaterial::Sealed(s) => write!(f, "Sealed(kek {})", s.kek_id),
        }
    }
}

impl KeyMaterial {
    /// The key-encryption key it is sealed under, `None` for plaintext.
    pub fn kek_id(&self) -> Option<&str> {
        match self {
            KeyMaterial::Plaintext(_) => None,
            KeyMaterial::Sealed(s) => Some(&s.kek_id),
        }
    }

    /// The three columns: `private_jwk` (empty when sealed), `kek_id`, `sealed_jwk`.
    fn columns(&self) -> (&str, Option<&str>, Option<&str>) {
        match self {
            KeyMaterial::Plaintext(jwk) => (jwk, None, None),
            KeyMaterial::Sealed(s) => ("", Some(&s.kek_id), Some(&s.ciphertext)),
        }
    }
}

const KEY_COLUMNS: &str =
    "kid, kind, alg, private_jwk, kek_id, sealed_jwk, created_at, retired_at, verify_until";

fn key_row(row: &AnyRow) -> Res<StoredKey> {
    let kek_id: Option<String> = row.try_get("kek_id")?;
    let material = match kek_id {
        None => KeyMaterial::Plaintext(row.try_get("private_jwk")?),
        // A missing ciphertext is left empty: opening it fails and names the row.
        Some(kek_id) => KeyMaterial::Sealed(crate::key_encryption::Sealed {
            kek_id,
            ciphertext: row
                .try_get::<Option<String>, _>("sealed_jwk")?
                .unwrap_or_default(),
        }),
    };
    Ok(StoredKey {
        kid: row.try_get("kid")?,
        kind: enum_col(row, "kind")?,
        alg: row.try_get("alg")?,
        material,
        created_at: row.try_get("created_at")?,
        retired_at: row.try_get("retired_at")?,
        verify_until: row.try_get("verify_until")?,
    })
}

impl Db {
    pub async fn insert_key(&self, k: &StoredKey) -> Res<()> {
        let (private_jwk, kek_id, sealed_jwk) = k.material.columns();
        sqlx::query(
            "INSERT INTO signing_keys (kid, kind, alg, private_jwk, kek_id, sealed_jwk, created_at, retired_at, verify_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&k.kid)
        .bind(k.kind.as_str())
        .bind(&k.alg)
        .bind(private_jwk)
        .bind(kek_id)
        .bind(sealed_jwk)
        .bind(k.created_at)
        .bind(k.retired_at)
        .bind(k.verify_until)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Keys that still verify at `now`, oldest first.
    pub async fn live_keys(&self, now: i64) -> Res<Vec<StoredKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM signing_keys \
             WHERE verify_until IS NULL OR verify_until > $1 ORDER BY created_at, kid"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_row).collect()
    }

    /// Every stored key, expired ones too (they still hold private material), oldest first.
    pub async fn all_keys(&self) -> Res<Vec<StoredKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid"
        ))
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(key_row).collect()
    }

    /// Replaces the stored material of keys with new sealed material, in one transaction. Each
    /// row changes only if it still holds what `from` says (plaintext, or sealed under that
    /// key), so two processes doing this at once cannot undo each other. Returns how many rows
    /// changed.
    pub async fn reseal_keys(
        &self,
        updates: &[(&StoredKey, &crate::key_encryption::Sealed)],
    ) -> Res<u64> {
        let mut tx = self.writer.begin().await?;
        let mut changed = 0;
        for (from, to) in updates {
            let q = match from.material.kek_id() {
                None => sqlx::query(
                    "UPDATE signing_keys SET private_jwk = '', kek_id = $2, sealed_jwk = $3 \
                     WHERE kid = $1 AND kek_id IS NULL",
                )
                .bind(&from.kid)
                .bind(&to.kek_id)
                .bind(&to.ciphertext),
                Some(old) => sqlx::query(
                    "UPDATE signing_keys SET private_jwk = '', kek_id = $2, sealed_jwk = $3 \
                     WHERE kid = $1 AND kek_id = $4",
                )
                .bind(&from.kid)
                .bind(&to.kek_id)
                .bind(&to.ciphertext)
                .bind(old),
            };
            changed += q.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Inserts new active keys and retires every older active key of the same kinds, in one
    /// transaction, so there is always exactly one signing key per kind.
    pub async fn rotate_keys(&self, new: &[StoredKey], now: i64, overlap: i64) -> Res<()> {
        let mut tx = self.writer.begin().await?;
        for k in new {
            sqlx::query(
                "UPDATE signing_keys SET retired_at = $2, verify_until = $3 WHERE kind = $1 AND retired_at IS NULL",
            )
            .bind(k.kind.as_str())
            .bind(now)
            .bind(now.saturating_add(overlap))
            .execute(&mut *tx)
            .await?;
            let (private_jwk, kek_id, sealed_jwk) = k.material.columns();
            sqlx::query(
                "INSERT INTO signing_keys (kid, kind, alg, private_jwk, kek_id, sealed_jwk, created_at, retired_at, verify_until) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)",
            )
            .bind(&k.kid)
            .bind(k.kind.as_str())
            .bind(&k.alg)
            .bind(private_jwk)
            .bind(kek_id)
            .bind(sealed_jwk)
            .bind(k.created_at)
            .execute(&mut *tx)
            .await?;
        }
        // Other control planes publish the new keys as soon as this commits.
        self.announce_config_change_in(&mut tx).await?;
        tx.commit().await
    }
}
