//! Sign-ins under way with an OpenID provider (`sign_in_states`): written by `/auth/login`,
//! taken once by `/auth/callback`.

use sqlx::FromRow;

use super::{Db, Res};

/// One sign-in under way, as `/auth/login` left it.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct SignInState {
    /// SHA-256 (hex) of the `state` parameter.
    pub state_hash: String,
    /// SHA-256 (hex) of the browser-binding cookie's value.
    pub browser_hash: String,
    /// The `[[oidc]]` entry's name.
    pub provider: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// Where the browser goes once signed in (already a safe path).
    pub next: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl Db {
    /// Records a sign-in under way, and drops the expired ones.
    pub async fn put_sign_in_state(&self, s: &SignInState) -> Res<()> {
        sqlx::query("DELETE FROM sign_in_states WHERE expires_at < $1")
            .bind(s.created_at)
            .execute(&self.writer)
            .await?;
        sqlx::query(
            "INSERT INTO sign_in_states \
             (state_hash, browser_hash, provider, nonce, pkce_verifier, next, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&s.state_hash)
        .bind(&s.browser_hash)
        .bind(&s.provider)
        .bind(&s.nonce)
        .bind(&s.pkce_verifier)
        .bind(&s.next)
        .bind(s.created_at)
        .bind(s.expires_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Takes the sign-in named by `state_hash`: it is deleted in the same statement, so of two
    /// callbacks with one state only the first gets it. Expired rows are returned too (the
    /// caller says "expired" rather than "unknown").
    pub async fn take_sign_in_state(&self, state_hash: &str) -> Res<Option<SignInState>> {
        sqlx::query(
            "DELETE FROM sign_in_states WHERE state_hash = $1 \
             RETURNING state_hash, browser_hash, provider, nonce, pkce_verifier, next, created_at, expires_at",
        )
        .bind(state_hash)
        .fetch_optional(&self.writer)
        .await?
        .as_ref()
        .map(SignInState::from_row)
        .transpose()
    }
}
