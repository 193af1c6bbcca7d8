//! Who the user is. [`current_user`] is the one place that answers it; today it knows the
//! control plane's own session cookie (set by the dev login), and identity providers and API
//! tokens plug in here later without the endpoints changing.

use axum::http::{header, HeaderMap};
use podgate_protocol::cookie::find_all;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::keys::random_bytes;
use crate::store::{now_unix, User};
use crate::AppState;

/// How many copies of our session cookie we look at (a browser may send several).
const MAX_SESSION_CANDIDATES: usize = 4;

fn session_hash(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// The session id claim (`sid`) of the session whose stored hash is `id_hash`: a hash of that
/// hash, so capabilities name the session without carrying its secret or its database key.
pub fn session_id(id_hash: &str) -> String {
    let digest = Sha256::digest(format!("podgate-sid\n{id_hash}").as_bytes());
    hex::encode(digest).chars().take(32).collect()
}

/// The session id claim of a session cookie's value (`session_id` of its hash).
pub fn session_id_of_cookie(value: &str) -> String {
    session_id(&session_hash(value))
}

/// The signed-in user of this request, read fresh from the database, or `None`.
pub async fn current_user(state: &AppState, headers: &HeaderMap) -> ApiResult<Option<User>> {
    Ok(current_session(state, headers).await?.map(|(user, _)| user))
}

/// The signed-in user of this request and the id (`sid`) of their session, or `None`.
pub async fn current_session(
    state: &AppState,
    headers: &HeaderMap,
) -> ApiResult<Option<(User, String)>> {
    let now = now_unix();
    for cookie_header in headers.get_all(header::COOKIE) {
        let Ok(cookie_header) = cookie_header.to_str() else {
            continue;
        };
        for value in find_all(cookie_header, state.session_cookie()).take(MAX_SESSION_CANDIDATES) {
            // Our values are 64 hex characters; anything else is not ours.
            if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let id_hash = session_hash(value);
            if let Some(user) = state.db().session_user(&id_hash, now).await? {
                return Ok(Some((user, session_id(&id_hash))));
            }
        }
    }
    Ok(None)
}

/// Starts a session for `user`; returns the session cookie's value.
pub async fn start_session(state: &AppState, user: &User) -> ApiResult<String> {
    let secret: [u8; 32] = random_bytes().map_err(|e| ApiError::internal(e.to_string()))?;
    let value = hex::encode(secret);
    let now = now_unix();
    let lifetime = state.config().session_lifetime;
    state
        .db()
        .create_session(&session_hash(&value), &user.id, now, now + lifetime as i64)
        .await?;
    Ok(value)
}

/// Ends every session of ours this request's cookies name.
pub async fn end_sessions(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    ended_sessions(state, headers).await.map(|_| ())
}

/// Ends every live session of ours this request's cookies name; returns their ids (`sid`).
pub async fn ended_sessions(state: &AppState, headers: &HeaderMap) -> ApiResult<Vec<String>> {
    let now = now_unix();
    let mut ended = Vec::new();
    for cookie_header in headers.get_all(header::COOKIE) {
        if let Ok(h) = cookie_header.to_str() {
            for value in find_all(h, state.session_cookie()).take(MAX_SESSION_CANDIDATES) {
                let id_hash = session_hash(value);
                if state.db().session_user(&id_hash, now).await?.is_some() {
                    ended.push(session_id(&id_hash));
                }
                state.db().delete_session(&id_hash).await?;
            }
        }
    }
    Ok(ended)
}
