//! Links between users and the identity verifiers that vouch for them (`user_identities`).

use sqlx::Row;

use super::{Db, Res, User};
use sqlx::FromRow;

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
        .map(User::from_row)
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
        .map(User::from_row)
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
}
