//! Storage of identity-verifier links (`user_identities`) and API tokens (`api_tokens`).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{user_from, Db, Res, User};

/// One API token as stored: never the token, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiTokenRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    #[serde(skip)]
    pub token_hash: String,
    pub prefix: Option<String>,
    pub created_via: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

const TOKEN_COLUMNS: &str = "t.id AS t_id, t.user_id AS t_user_id, t.name AS t_name, \
     t.token_hash AS t_token_hash, t.prefix AS t_prefix, t.created_via AS t_created_via, \
     t.created_at AS t_created_at, t.expires_at AS t_expires_at, \
     t.last_used_at AS t_last_used_at, t.revoked_at AS t_revoked_at";

fn token_from(row: &AnyRow) -> Result<ApiTokenRow, sqlx::Error> {
    Ok(ApiTokenRow {
        id: row.try_get("t_id")?,
        user_id: row.try_get("t_user_id")?,
        name: row.try_get("t_name")?,
        token_hash: row.try_get("t_token_hash")?,
        prefix: row.try_get("t_prefix")?,
        created_via: row.try_get("t_created_via")?,
        created_at: row.try_get("t_created_at")?,
        expires_at: row.try_get("t_expires_at")?,
        last_used_at: row.try_get("t_last_used_at")?,
        revoked_at: row.try_get("t_revoked_at")?,
    })
}

impl Db {
    /// The user linked to `subject` at `verifier`, read fresh.
    pub async fn identity_user(&self, verifier: &str, subject: &str) -> Res<Option<User>> {
        sqlx::query(
            "SELECT u.id AS id, u.email AS email, u.name AS name, u.created_at AS created_at \
             FROM user_identities i JOIN users u ON u.id = i.user_id \
             WHERE i.verifier = $1 AND i.subject = $2",
        )
        .bind(verifier)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_from)
        .transpose()
    }

    /// Links `subject` at `verifier` to the user `candidate.id`, creating that user when it
    /// does not exist (an existing user with that id, e.g. one an admin made with the
    /// provider's id, is linked as it is). The email is set only when nobody has it yet.
    /// Safe under races: every insert tolerates a concurrent twin. Returns the linked user.
    pub async fn link_identity(
        &self,
        verifier: &str,
        subject: &str,
        candidate: &User,
    ) -> Res<Option<User>> {
        sqlx::query(
            "INSERT INTO users (id, email, name, created_at) VALUES ($1, NULL, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&candidate.id)
        .bind(&candidate.name)
        .bind(candidate.created_at)
        .execute(&self.writer)
        .await?;
        if let Some(email) = &candidate.email {
            // A duplicate email (another user has it, or a racing twin set it) only means this
            // user stays without one.
            let r = sqlx::query(
                "UPDATE users SET email = $2 WHERE id = $1 AND email IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM users o WHERE o.email = $2)",
            )
            .bind(&candidate.id)
            .bind(email)
            .execute(&self.writer)
            .await;
            if let Err(e) = r {
                if !matches!(&e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation)
                {
                    return Err(e);
                }
            }
        }
        sqlx::query(
            "INSERT INTO user_identities (verifier, subject, user_id, email, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (verifier, subject) DO NOTHING",
        )
        .bind(verifier)
        .bind(subject)
        .bind(&candidate.id)
        .bind(&candidate.email)
        .bind(candidate.created_at)
        .execute(&self.writer)
        .await?;
        // Read through the writer: on SQLite a reader could still see the snapshot before.
        sqlx::query(
            "SELECT u.id AS id, u.email AS email, u.name AS name, u.created_at AS created_at \
             FROM user_identities i JOIN users u ON u.id = i.user_id \
             WHERE i.verifier = $1 AND i.subject = $2",
        )
        .bind(verifier)
        .bind(subject)
        .fetch_optional(&self.writer)
        .await?
        .as_ref()
        .map(user_from)
        .transpose()
    }

    /// Verifiers and subjects linked to a user.
    pub async fn user_identities(&self, user_id: &str) -> Res<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT verifier, subject FROM user_identities WHERE user_id = $1 ORDER BY verifier, subject",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("verifier")?, r.try_get("subject")?)))
            .collect()
    }

    pub async fn create_api_token(&self, t: &ApiTokenRow) -> Res<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, name, token_hash, prefix, created_via, created_at, expires_at, last_used_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL)",
        )
        .bind(&t.id)
        .bind(&t.user_id)
        .bind(&t.name)
        .bind(&t.token_hash)
        .bind(&t.prefix)
        .bind(&t.created_via)
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// A token and its user, read fresh (no cache: a revocation counts from the next use).
    pub async fn api_token_with_user(&self, id: &str) -> Res<Option<(ApiTokenRow, User)>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS}, u.id AS id, u.email AS email, u.name AS name, u.created_at AS created_at \
             FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some((token_from(&row)?, user_from(&row)?)))
    }

    /// A user's tokens, newest first.
    pub async fn list_api_tokens(&self, user_id: &str) -> Res<Vec<ApiTokenRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens t WHERE t.user_id = $1 ORDER BY t.created_at DESC, t.id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from).collect()
    }

    /// Revokes a token of `user_id` (idempotent: an earlier revocation time is kept). `None`
    /// when the user has no such token.
    pub async fn revoke_api_token(
        &self,
        user_id: &str,
        id: &str,
        now: i64,
    ) -> Res<Option<ApiTokenRow>> {
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $3 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(user_id)
        .bind(now)
        .execute(&self.writer)
        .await?;
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens t WHERE t.id = $1 AND t.user_id = $2"
        ))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(token_from).transpose()
    }

    /// Records a use of a token (callers throttle this).
    pub async fn touch_api_token(&self, id: &str, now: i64) -> Res<()> {
        sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
