//! Who the user is by the control plane's own session cookie (set by the dev login): the
//! session's hash is stored, never the cookie's value. `verify::identify` asks here in its turn.

use podgate_protocol::cookie::find_all;
use podgate_protocol::host::PodAddr;
use sha2::{Digest, Sha256};

use crate::keys::{random_bytes, KeyringError};
use crate::store::{now_unix, AccessFacts, Db, User};

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

/// The values of the `session_cookie` pairs in `cookie_headers` that can be ours (64 hex
/// characters; anything else is not), at most [`MAX_SESSION_CANDIDATES`] per header. Values
/// that cannot be ours are passed over before the cap, so cookies a sibling planted with a
/// longer path (sent first) hide the real one only if they look like ours too.
fn session_values<'a>(
    session_cookie: &'a str,
    cookie_headers: &'a [&'a str],
) -> impl Iterator<Item = &'a str> + 'a {
    cookie_headers.iter().flat_map(move |cookie_header| {
        find_all(cookie_header, session_cookie)
            .filter(|value| value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
            .take(MAX_SESSION_CANDIDATES)
    })
}

/// The user of the first live session named by a `session_cookie` pair in `cookie_headers`
/// (the request's `Cookie` headers), read fresh from the database, or `None`.
pub async fn current_user(
    db: &Db,
    session_cookie: &str,
    cookie_headers: &[&str],
) -> Result<Option<User>, sqlx::Error> {
    Ok(current_session(db, session_cookie, cookie_headers)
        .await?
        .map(|(user, _)| user))
}

/// [`current_user`], with the id (`sid`) of the session that named them.
pub async fn current_session(
    db: &Db,
    session_cookie: &str,
    cookie_headers: &[&str],
) -> Result<Option<(User, String)>, sqlx::Error> {
    let now = now_unix();
    for value in session_values(session_cookie, cookie_headers) {
        let id_hash = session_hash(value);
        if let Some(user) = db.session_user(&id_hash, now).await? {
            return Ok(Some((user, session_id(&id_hash))));
        }
    }
    Ok(None)
}

/// [`current_session`], with the facts for its user reaching `addr`, read in the same query
/// (the page flow asks both at once): `(user, sid, facts)`; facts `None` when the pod does not
/// exist.
pub async fn current_session_with_facts(
    db: &Db,
    session_cookie: &str,
    cookie_headers: &[&str],
    addr: &PodAddr,
) -> Result<Option<(User, String, Option<AccessFacts>)>, sqlx::Error> {
    let now = now_unix();
    for value in session_values(session_cookie, cookie_headers) {
        let id_hash = session_hash(value);
        if let Some((user, facts)) = db
            .session_access_facts(&id_hash, now, &addr.pod, addr.port)
            .await?
        {
            return Ok(Some((user, session_id(&id_hash), facts)));
        }
    }
    Ok(None)
}

/// Starts a session of `lifetime_secs` for `user`, signed in with the identity provider
/// `provider` (`None`: the dev login); returns the session cookie's value.
pub async fn start_session(
    db: &Db,
    lifetime_secs: u64,
    user: &User,
    provider: Option<&str>,
) -> Result<String, SessionError> {
    let secret: [u8; 32] = random_bytes()?;
    let value = hex::encode(secret);
    let now = now_unix();
    db.create_session(
        &session_hash(&value),
        &user.id,
        provider,
        now,
        now + lifetime_secs as i64,
    )
    .await?;
    Ok(value)
}

/// The first live session of `user_id` signed in with `provider` (`None`: the dev login) and
/// started at `since` or later that a `session_cookie` pair in `cookie_headers` names: its
/// stored id hash and the cookie's value.
pub async fn recent_session_of(
    db: &Db,
    session_cookie: &str,
    cookie_headers: &[&str],
    user_id: &str,
    provider: Option<&str>,
    since: i64,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let now = now_unix();
    for value in session_values(session_cookie, cookie_headers) {
        let id_hash = session_hash(value);
        if let Some((owner, signed_in_with)) = db.recent_session_owner(&id_hash, since, now).await?
        {
            if owner == user_id && signed_in_with.as_deref() == provider {
                return Ok(Some((id_hash, value.to_owned())));
            }
        }
    }
    Ok(None)
}

/// A session a sign-out ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedSession {
    /// Its id, the `sid` of the capabilities minted for it.
    pub sid: String,
    /// The identity provider it signed in with (`None`: the dev login).
    pub provider: Option<String>,
}

/// The sessions named by a `session_cookie` pair in `cookie_headers`, to end: each one's stored
/// id hash (for [`Db::delete_session`]), and the session when it is live. Nothing is changed:
/// a sign-out then cuts the live ones' capabilities off and ends them all in one transaction,
/// so that one stopped by a database error is finished by the same request again.
pub async fn sessions_to_end(
    db: &Db,
    session_cookie: &str,
    cookie_headers: &[&str],
) -> Result<Vec<(String, Option<EndedSession>)>, sqlx::Error> {
    let now = now_unix();
    let mut named = Vec::new();
    for value in session_values(session_cookie, cookie_headers) {
        let id_hash = session_hash(value);
        if named.iter().any(|(seen, _)| *seen == id_hash) {
            continue;
        }
        let live = db
            .live_session_provider(&id_hash, now)
            .await?
            .map(|provider| EndedSession {
                sid: session_id(&id_hash),
                provider,
            });
        named.push((id_hash, live));
    }
    Ok(named)
}
