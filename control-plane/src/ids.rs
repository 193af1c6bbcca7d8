//! The rule every id of a user, team or server follows, checked wherever one is made (the
//! admin API, the dev login, users provisioned from an identity provider).

/// The `sub` of tokens minted for someone who is not signed in (public ports only). User ids
/// may never take this value (the admin API refuses it).
pub const ANONYMOUS_SUB: &str = "anonymous";

/// An id that breaks the rule; the message says what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub String);

/// Ids: 1-128 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit; `anonymous` is reserved.
pub fn check_id(id: &str, what: &str) -> Result<(), InvalidId> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(InvalidId(format!(
            "{what} id {id:?} is not valid; use 1-128 characters of A-Z, a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )));
    }
    if id == ANONYMOUS_SUB {
        return Err(InvalidId(format!(
            "{what} id \"{ANONYMOUS_SUB}\" is reserved for people who are not signed in; pick another"
        )));
    }
    Ok(())
}
