//! Signing keys: stored, listed while they still verify, rotated.

use sqlx::Row;

use super::{enum_col, Db, KeyKind, Res};

#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    pub kind: KeyKind,
    pub alg: String,
    pub private_jwk: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    pub verify_until: Option<i64>,
}

impl Db {
    pub async fn insert_key(&self, k: &StoredKey) -> Res<()> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, kind, alg, private_jwk, created_at, retired_at, verify_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&k.kid)
        .bind(k.kind.as_str())
        .bind(&k.alg)
        .bind(&k.private_jwk)
        .bind(k.created_at)
        .bind(k.retired_at)
        .bind(k.verify_until)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Keys that still verify at `now`, oldest first.
    pub async fn live_keys(&self, now: i64) -> Res<Vec<StoredKey>> {
        let rows = sqlx::query(
            "SELECT kid, kind, alg, private_jwk, created_at, retired_at, verify_until FROM signing_keys \
             WHERE verify_until IS NULL OR verify_until > $1 ORDER BY created_at, kid",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredKey {
                    kid: row.try_get("kid")?,
                    kind: enum_col(row, "kind")?,
                    alg: row.try_get("alg")?,
                    private_jwk: row.try_get("private_jwk")?,
                    created_at: row.try_get("created_at")?,
                    retired_at: row.try_get("retired_at")?,
                    verify_until: row.try_get("verify_until")?,
                })
            })
            .collect()
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
            sqlx::query(
                "INSERT INTO signing_keys (kid, kind, alg, private_jwk, created_at, retired_at, verify_until) \
                 VALUES ($1, $2, $3, $4, $5, NULL, NULL)",
            )
            .bind(&k.kid)
            .bind(k.kind.as_str())
            .bind(&k.alg)
            .bind(&k.private_jwk)
            .bind(k.created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
}
