//! Recognising podgate's own tokens in text without keys: a word of a credential header
//! (`looks_like_ours`) or anywhere in a string (`mentions_ours`), so that credentials of ours are
//! stripped before a request reaches a pod and never written to a log.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::Deserialize;

use super::TokenKind;

/// Every `typ` podgate mints starts with this (`podgate-<kind>+jwt`), so a kind added later is
/// known as ours by `looks_like_ours` even before it is listed in `TokenKind::ALL`.
pub const TYP_PREFIX: &str = "podgate-";
/// API tokens are opaque `pg_<id>_<secret>`.
pub const API_TOKEN_PREFIX: &str = "pg_";
/// The shortest value taken for an API token (real ones are 80 characters): shorter `pg_...`
/// words, such as a user name in another scheme's parameters, are not ours.
pub const MIN_API_TOKEN_LOOKALIKE_LEN: usize = 20;
/// The longest protected header `looks_like_ours` decodes; ours are about 100 bytes.
const MAX_LOOKALIKE_HEADER_LEN: usize = 1024;

/// Whether one word (a run of token characters taken out of a credential header) is one of
/// podgate's tokens of any kind: a `pg_` API token, or a JWS (three segments) whose protected
/// header names a podgate `typ` (any kind, any casing) or a `kid` with one of our key-kind
/// prefixes. No signature check, no key set: a forged or expired token of ours is still ours.
pub fn looks_like_ours(word: &str) -> bool {
    if looks_like_api_token(word) {
        return true;
    }
    let mut segments = word.split('.');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(header), Some(_), Some(_), None) => header_is_ours(header),
        _ => false,
    }
}

/// `pg_` and at least `MIN_API_TOKEN_LOOKALIKE_LEN` characters of the API token alphabet.
fn looks_like_api_token(word: &str) -> bool {
    word.len() >= MIN_API_TOKEN_LOOKALIKE_LEN
        && word
            .strip_prefix(API_TOKEN_PREFIX)
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// Whether a base64url segment is the protected header of one of our tokens. Cost: one decode
/// and JSON parse of at most `MAX_LOOKALIKE_HEADER_LEN` bytes, and only for a segment that
/// starts like our compact JSON headers: `{"` and a first key starting with a letter encode as
/// `eyJ` (what `mentions_ours` searches for).
fn header_is_ours(segment: &str) -> bool {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(default)]
        typ: Option<serde_json::Value>,
        #[serde(default)]
        kid: Option<serde_json::Value>,
    }
    if !segment.starts_with("eyJ") || segment.len() > MAX_LOOKALIKE_HEADER_LEN {
        return false;
    }
    let Ok(json) = B64.decode(segment) else {
        return false;
    };
    let Ok(peek) = serde_json::from_slice::<Peek>(&json) else {
        return false;
    };
    let typ_ours = peek
        .typ
        .as_ref()
        .and_then(|t| t.as_str())
        .and_then(|t| t.get(..TYP_PREFIX.len()))
        .is_some_and(|p| p.eq_ignore_ascii_case(TYP_PREFIX));
    let kid_ours = peek
        .kid
        .as_ref()
        .and_then(|k| k.as_str())
        .is_some_and(|kid| {
            TokenKind::ALL
                .iter()
                .any(|kind| kid.starts_with(kind.kid_prefix()))
        });
    typ_ours || kid_ours
}

/// The characters of one segment of a JWS compact token (base64url) and of an API token.
fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Whether `text` holds one of our tokens in any form: a segment (a maximal run of base64url
/// characters, so whatever surrounds it: quotes, spaces, tabs, commas, `=`, dots, another
/// scheme) that is an API token or one of our protected headers. So a token of ours with bytes
/// glued on after it counts too. Our protected headers are JSON objects, so they start with
/// `eyJ`; API tokens start with `pg_`. The bytes are searched eight at a time for the `J` and
/// the `_` of those prefixes (this runs on every `Authorization` value the filter sees); only a
/// segment that starts with one of the two prefixes is looked at further, each once.
pub fn mentions_ours(text: &str) -> bool {
    let (blocks, _) = text.as_bytes().as_chunks::<16>();
    let mut at = 0;
    for block in blocks {
        let (low, high) = block.split_at(8);
        let marked = [low, high].iter().any(|half| {
            let mut word = [0u8; 8];
            word.copy_from_slice(half);
            has_marker(u64::from_le_bytes(word))
        });
        if marked && (at..at + 16).any(|i| ours_ends_prefix_at(text, i)) {
            return true;
        }
        at += 16;
    }
    (at..text.len()).any(|i| ours_ends_prefix_at(text, i))
}

/// Whether a byte of `word` is `J` or `_` (the zero-byte test of "Bit Twiddling Hacks", for
/// both bytes at once).
fn has_marker(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let j = word ^ ONES.wrapping_mul(u64::from(b'J'));
    let underscore = word ^ ONES.wrapping_mul(u64::from(b'_'));
    ((j.wrapping_sub(ONES) & !j) | (underscore.wrapping_sub(ONES) & !underscore)) & HIGHS != 0
}

/// Whether the byte at `at` ends the prefix (`eyJ` or `pg_`) of a segment of `text` that is
/// one of our tokens' (`looks_like_api_token`, `header_is_ours`).
fn ours_ends_prefix_at(text: &str, at: usize) -> bool {
    let bytes = text.as_bytes();
    let prefix: &[u8] = match bytes.get(at) {
        Some(b'J') => b"ey",
        Some(b'_') => b"pg",
        _ => return false,
    };
    let Some(start) = at.checked_sub(2) else {
        return false;
    };
    if bytes.get(start..at) != Some(prefix) {
        return false;
    }
    let follows_segment = start
        .checked_sub(1)
        .and_then(|before| bytes.get(before))
        .is_some_and(|b| is_segment_byte(*b));
    if follows_segment {
        return false;
    }
    let len = bytes.get(start..).map_or(0, |rest| {
        rest.iter()
            .take(MAX_LOOKALIKE_HEADER_LEN + 1)
            .take_while(|b| is_segment_byte(**b))
            .count()
    });
    let segment = text.get(start..start + len).unwrap_or_default();
    looks_like_api_token(segment) || header_is_ours(segment)
}
