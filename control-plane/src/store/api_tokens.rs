//! API tokens (`api_tokens`): never the token, only its SHA-256.

use serde::Serialize;
use sqlx::FromRow;

use super::{Change, Db, Res, User};

/// One API token as stored: never the token, only its SHA-256.
/// Read from rows whose token columns carry a `t_` prefix ([`TOKEN_COLUMNS`]), so a join with
/// the user's columns stays unambiguous.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ApiTokenRow {
    #[sqlx(rename = "t_id")]
    pub id: String,
    #[sqlx(rename = "t_user_id")]
    pub user_id: String,
    #[sqlx(rename = "t_name")]
    pub name: String,
    #[sqlx(rename = "t_token_hash")]
    #[serde(skip)]
    pub token_hash: String,
    #[sqlx(rename = "t_prefix")]
    pub prefix: Option<String>,
    #[sqlx(rename = "t_created_via")]
    pub created_via: String,
    #[sqlx(rename = "t_created_at")]
    pub created_at: i64,
    #[sqlx(rename = "t_expires_at")]
    pub expires_at: i64,
    #[sqlx(rename = "t_last_used_at")]
    pub last_used_at: Option<i64>,
    #[sqlx(rename = "t_revoked_at")]
    pub revoked_at: Option<i64>,
}

const TOKEN_COLUMNS: &str = "t.id AS t_id, t.user_id AS t_user_id, t.name AS t_name, \
     t.token_hash AS t_token_hash, t.prefix AS t_prefix, t.created_via AS t_created_via, \
     t.created_at AS t_created_at, t.expires_at AS t_expires_at, \
     t.last_used_at AS t_last_used_at, t.revoked_at AS t_revoked_at";

impl Change {
    /// How many of `user_id`'s tokens are live at `now`, counted in this change with the user's
    /// row locked (`Change::for_update`), so that two creations cannot both count below a limit
    /// and both store a token.
    pub async fn live_api_tokens_for_update(&mut self, user_id: &str, now: i64) -> Res<i64> {
        let lock = self.for_update();
        sqlx::query(&format!("SELECT id FROM users WHERE id = $1{lock}"))
            .bind(user_id)
            .fetch_optional(self.conn())
            .await?;
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_tokens WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(user_id)
        .bind(now)
        .fetch_one(self.conn())
        .await
    }

    /// Stores `t` (the handler first counts the user's live tokens in the same change).
    pub async fn create_api_token(&mut self, t: &ApiTokenRow) -> Res<()> {
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
        .execute(self.conn())
        .await?;
        Ok(())
    }
}

impl Db {
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
        Ok(Some((ApiTokenRow::from_row(&row)?, User::from_row(&row)?)))
    }

    /// A user's tokens, newest first.
    pub async fn list_api_tokens(&self, user_id: &str) -> Res<Vec<ApiTokenRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens t WHERE t.user_id = $1 ORDER BY t.created_at DESC, t.id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(ApiTokenRow::from_row).collect()
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
        row.as_ref().map(ApiTokenRow::from_row).transpose()
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
