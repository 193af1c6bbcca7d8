//! API tokens, the domain half: the token format, generation, and checking a presented token
//! against its stored row.
//!
//! A token is `pg_<id>_<secret>`: `id` 24 hex characters (96 random bits, the lookup key, not
//! secret), `secret` 52 base32 characters (256 random bits). Only SHA-256 of the whole token is
//! stored: a fast hash is right for a high-entropy secret (nothing to brute-force; a slow
//! password hash would only cost every request). A use looks the row up by id and compares the
//! hash in constant time; revoked and expired tokens are refused on their very next use (every
//! use reads the row: no cache of positive answers). Failed attempts drain a per-address token
//! bucket (429 when empty; `crate::limits`). `last_used_at` is written at most once a minute per
//! token.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::keys::{random_bytes, KeyringError};
use crate::limits::{Limited, RateLimiter};
use crate::store::{Db, User};

/// How often `last_used_at` of one token is written at most.
pub const LAST_USED_EVERY_SECS: i64 = 60;

pub const TOKEN_PREFIX: &str = "pg_";
const ID_HEX_LEN: usize = 24;
const SECRET_LEN: usize = 52;
/// Token lifetime bounds (days).
pub const DEFAULT_EXPIRES_IN_DAYS: u32 = 30;
pub const MAX_EXPIRES_IN_DAYS: u32 = 365;
/// Most live tokens per user.
pub const MAX_TOKENS_PER_USER: usize = 100;

const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(B32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Whether a bearer value is meant as one of our API tokens.
pub fn looks_like_api_token(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX)
}

/// `(id, secret)` of a well-formed token.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_HEX_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let id_ok = id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let secret_ok = secret.len() == SECRET_LEN && secret.bytes().all(|b| B32.contains(&b));
    (id_ok && secret_ok).then_some((id, secret))
}

/// SHA-256 of the whole token, hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh `(id, token)`.
pub fn generate() -> Result<(String, String), KeyringError> {
    let id: [u8; ID_HEX_LEN / 2] = random_bytes()?;
    let secret: [u8; 32] = random_bytes()?;
    let id = hex::encode(id);
    let token = format!("{TOKEN_PREFIX}{id}_{}", base32(&secret));
    Ok((id, token))
}

/// What checking a presented API token found.
#[derive(Debug)]
pub enum ApiTokenCheck {
    /// Valid: the token's owner and the token's id.
    /// `expires_at`: the token's expiry (unix seconds), which bounds what it mints.
    Accepted {
        user: User,
        id: String,
        expires_at: i64,
    },
    /// Malformed, unknown, revoked or expired: the reason, for the client.
    Refused(String),
}

/// Why an API token could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum ApiTokenError {
    /// This client has no failed attempt left; it may retry after the wait.
    #[error("too many failed API-token attempts; retry in {} s", .0.retry_after_secs)]
    TooManyFailures(Limited),
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// When `last_used_at` was last written per token by this process, so it is written at most
/// once every [`LAST_USED_EVERY_SECS`] per token.
#[derive(Debug, Default)]
pub struct LastUseWrites {
    touched: Mutex<HashMap<String, i64>>,
}

impl LastUseWrites {
    /// Whether `last_used_at` of token `id` should be written now (the row's own value is
    /// checked too by the caller).
    pub fn should_touch(&self, id: &str, now: i64) -> bool {
        let Ok(mut map) = self.touched.lock() else {
            return false;
        };
        if map.len() > 100_000 {
            map.retain(|_, t| now - *t < LAST_USED_EVERY_SECS);
        }
        match map.get(id) {
            Some(t) if now - *t < LAST_USED_EVERY_SECS => false,
            _ => {
                map.insert(id.to_owned(), now);
                true
            }
        }
    }
}

/// Checks an API token presented by `client`. A refusal drains the client's bucket in
/// `failures`; an empty bucket refuses before the token is even looked at.
pub async fn verify(
    db: &Db,
    failures: &RateLimiter,
    last_use: &LastUseWrites,
    token: &str,
    client: &str,
    now: i64,
) -> Result<ApiTokenCheck, ApiTokenError> {
    if let Err(limited) = failures.check(client) {
        tracing::warn!(client, "too many failed API-token attempts");
        return Err(ApiTokenError::TooManyFailures(limited));
    }
    let refused = |msg: &str| {
        failures.fail(client);
        Ok(ApiTokenCheck::Refused(msg.to_owned()))
    };
    const INVALID: &str =
        "the API token is not valid; create one with POST /api/proxy-tokens while signed in";
    let Some((id, _)) = parse(token) else {
        return refused(INVALID);
    };
    let Some((row, user)) = db.api_token_with_user(id).await? else {
        return refused(INVALID);
    };
    let presented = token_hash(token);
    let same: bool = presented.as_bytes().ct_eq(row.token_hash.as_bytes()).into();
    if !same {
        return refused(INVALID);
    }
    if row.revoked_at.is_some() {
        return refused(
            "the API token has been revoked; create a new one with POST /api/proxy-tokens",
        );
    }
    if now >= row.expires_at {
        return refused("the API token has expired; create a new one with POST /api/proxy-tokens");
    }
    let stale = row
        .last_used_at
        .is_none_or(|t| now - t >= LAST_USED_EVERY_SECS);
    if stale && last_use.should_touch(id, now) {
        if let Err(e) = db.touch_api_token(id, now).await {
            tracing::warn!(error = %e, token = id, "recording the API token's last use failed");
        }
    }
    Ok(ApiTokenCheck::Accepted {
        user,
        id: row.id,
        expires_at: row.expires_at,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_documented_shape() {
        let (id, token) = generate().unwrap();
        assert_eq!(parse(&token), Some((id.as_str(), &token[3 + 24 + 1..])));
        assert_eq!(token.len(), 3 + 24 + 1 + 52);
        assert!(parse("pg_short_x").is_none());
        assert!(parse(&token.replace("pg_", "pk_")).is_none());
        assert!(parse(&format!("{token}a")).is_none());
        assert!(parse(&token.to_uppercase()).is_none());
        assert_ne!(generate().unwrap().1, token);
        assert_eq!(base32(&[0xff; 5]), "77777777");
        assert_eq!(base32(b"f"), "my");
    }
}
