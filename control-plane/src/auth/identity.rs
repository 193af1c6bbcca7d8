//! Who the user is by the control plane's own session cookie (set by the dev login): the
//! session's hash is stored, never the cookie's value. `verify::identify` asks here in its turn.

use podgate_protocol::cookie::find_all;
use sha2::{Digest, Sha256};

use crate::keys::{random_bytes, KeyringError};
use crate::store::{now_unix, Db, User};

/// How many copies of our session cookie we look at (a browser may send several).
const MAX_SESSION_CANDIDATES: usize = 4;

/// Why a session could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The operating system gave no randomness for the session's secret.
    #[error(transparent)]
    Random(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

fn session_hash(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// The user of the first live session named by a `session_cookie` pair in `cookie_headers`
/// (the request's `Cookie` headers), read fresh from the database, or `None`.
pub async fn current_user(
    db: &Db,
    session_cookie: &str,
    cookie_headers: &[&str],
) -> Result<Option<User>, sqlx::Error> {
    let now = now_unix();
    for cookie_header in cookie_headers {
        for value in find_all(cookie_header, session_cookie).take(MAX_SESSION_CANDIDATES) {
            // Our values are 64 hex characters; anything else is not ours.
            if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            if let Some(user) = db.session_user(&session_hash(value), now).await? {
                return Ok(Some(user));
            }
        }
    }
    Ok(None)
}

/// Starts a session of `lifetime_secs` for `user`; returns the session cookie's value.
pub async fn start_session(
    db: &Db,
    lifetime_secs: u64,
    user: &User,
) -> Result<String, SessionError> {
    let secret: [u8; 32] = random_bytes()?;
    let value = hex::encode(secret);
    let now = now_unix();
    db.create_session(
        &session_hash(&value),
        &user.id,
        now,
        now + lifetime_secs as i64,
    )
    .await?;
    Ok(value)
}

/// Ends every session named by a `session_cookie` pair in `cookie_headers`.
pub async fn end_sessions(
    db: &Db,
    session_cookie: &str,
    cookie_headers: &[&str],
) -> Result<(), sqlx::Error> {
    for cookie_header in cookie_headers {
        for value in find_all(cookie_header, session_cookie).take(MAX_SESSION_CANDIDATES) {
            db.delete_session(&session_hash(value)).await?;
        }
    }
    Ok(())
}
