//! The verified-token cache and the memory of refused token values, per worker.

use std::cell::Cell;
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::rc::Rc;

use super::revived::Revived;
use crate::config::CompiledConfig;
use crate::exchange::ExchangeCache;
use crate::token::{TokenError, Verified, MAX_TOKEN_LEN, MIN_TOKEN_LEN};

/// How many token values that failed verification one worker remembers, so that planted
/// values cost a signature check once, not on every request.
const REJECTED_MAX_ENTRIES: usize = 1024;

/// A verified token in the cache, and whether it was found again since the cache was last full.
#[derive(Debug)]
struct Entry {
    verified: Rc<Verified>,
    used: Cell<bool>,
}

/// A per-worker cache of verified capabilities, keyed by the token itself (only tokens that
/// verified and fit `MAX_TOKEN_LEN` are stored, so the key needs no cryptographic hash, which
/// would cost a large share of a cached request). Expiry and revocation are re-checked on every hit, so the cache never
/// extends a token's life.
///
/// Beside it, the values that failed verification, by a keyed hash of the whole value, with
/// why (never `NotYetValid`, which time can change; every other failure is final for a given
/// verifier, and a configuration that verifies differently clears both): a planted value costs
/// one signature check per worker, not one per request.
#[derive(Debug, Default)]
pub struct VerifiedCache {
    entries: HashMap<Box<str>, Entry, TailHash>,
    rejected: HashMap<u64, TokenError, BuildHasherDefault<PremixedHasher>>,
    rejected_keys: RandomState,
    hits: u64,
    misses: u64,
    verifications: u64,
    /// What API-token exchanges came to (`exchange`): on whether or not the token cache is,
    /// as each entry stands for a call to the control plane.
    exchanges: ExchangeCache,
    /// What renewals of lapsed cookie capabilities gave (`revived`).
    revived: Revived,
}

impl VerifiedCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every token, for a configuration that verifies differently; the exchanges'
    /// grants stay, to be confirmed under it (`ExchangeCache::new_configuration`).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.rejected.clear();
        self.exchanges.new_configuration();
    }

    /// Keeps every token, verified or refused, for a configuration that verifies as the one
    /// before (`Verifier::checks_as`); the exchanges' grants are to be confirmed under it, as
    /// in [`VerifiedCache::clear`].
    pub fn new_configuration(&mut self) {
        self.exchanges.new_configuration();
    }

    /// What API-token exchanges came to.
    pub fn exchanges(&mut self) -> &mut ExchangeCache {
        &mut self.exchanges
    }

    /// What renewals of lapsed cookie capabilities gave. Each entry is checked against the
    /// configuration in force when it is used, so it outlives configurations as exchanges do.
    pub fn revived(&mut self) -> &mut Revived {
        &mut self.revived
    }

    /// `(hits, misses)`: answers from either cache, and signature checks with the cache on.
    /// Counts an answer that needed no signature check (a decision memo hit).
    pub(super) fn count_hit(&mut self) {
        self.hits += 1;
    }

    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// How many signatures were checked, cache on or off.
    pub fn verifications(&self) -> u64 {
        self.verifications
    }

    /// How many failed values are remembered.
    pub fn rejected_len(&self) -> usize {
        self.rejected.len()
    }

    /// The live verified entry for `token`, or `Expired` (and the entry dropped); `None` if the
    /// token is not in the cache (or the cache is off).
    pub(super) fn verified(
        &mut self,
        config: &CompiledConfig,
        token: &str,
        now: i64,
    ) -> Option<Result<Rc<Verified>, TokenError>> {
        if config.token_cache_entries == 0
            || token.len() < MIN_TOKEN_LEN
            || token.len() > MAX_TOKEN_LEN
        {
            return None;
        }
        let hit = self.entries.get(token)?;
        self.hits += 1;
        if now
            >= hit
                .verified
                .expires_at
                .saturating_add(config.verifier.leeway())
        {
            self.entries.remove(token);
            return Some(Err(TokenError::Expired));
        }
        hit.used.set(true);
        Some(Ok(Rc::clone(&hit.verified)))
    }

    /// The key of `token` among the rejected values; `None` with the cache off.
    pub(super) fn rejected_key(&self, config: &CompiledConfig, token: &str) -> Option<u64> {
        (config.token_cache_entries > 0).then(|| self.rejected_keys.hash_one(token))
    }

    /// Why the value of `key` failed verification before, if it did.
    pub(super) fn known_bad(&mut self, key: Option<u64>) -> Option<TokenError> {
        let err = self.rejected.get(&key?)?.clone();
        self.hits += 1;
        Some(err)
    }

    pub(super) fn reject(&mut self, key: Option<u64>, err: &TokenError) {
        let Some(key) = key else { return };
        if *err == TokenError::NotYetValid {
            return;
        }
        if self.rejected.len() >= REJECTED_MAX_ENTRIES {
            self.rejected.clear();
        }
        self.rejected.insert(key, err.clone());
    }

    pub(super) fn insert(
        &mut self,
        token: &str,
        verified: Rc<Verified>,
        capacity: usize,
        now: i64,
    ) {
        if capacity == 0 {
            return;
        }
        if self.entries.len() >= capacity {
            // Full: keep the live tokens found again since it was last full, and forget their
            // marks (a second chance, one flag set per hit). The capabilities of users who keep
            // coming back stay; tokens seen once, and expired ones, go.
            self.entries
                .retain(|_, e| e.verified.expires_at > now && e.used.replace(false));
            if self.entries.len() >= capacity {
                // Every entry was used again: more live users than entries; start over.
                self.entries.clear();
            }
        }
        self.entries.insert(
            token.into(),
            Entry {
                verified,
                used: Cell::new(false),
            },
        );
    }
}

/// Hashes a cache key by its last 16 bytes and its length, with the process's random SipHash
/// keys. A token ends in its signature, so the tail is as good as the whole for spreading keys,
/// at a fraction of the cost of SipHash over the whole token. Only verified tokens
/// are ever stored, so an attacker cannot fill a bucket; a colliding probe costs one compare.
#[derive(Debug, Clone, Default)]
struct TailHash(RandomState);

impl BuildHasher for TailHash {
    type Hasher = TailHasher;
    fn build_hasher(&self) -> TailHasher {
        TailHasher(self.0.build_hasher())
    }
}

struct TailHasher(DefaultHasher);

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let tail = bytes.get(bytes.len().saturating_sub(16)..).unwrap_or(bytes);
        self.0.write(tail);
        self.0.write_usize(bytes.len());
    }
    fn write_u8(&mut self, i: u8) {
        self.0.write_u8(i);
    }
    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// Verifies one token, through the cache: a value verified or refused before costs nothing,
/// anything else one signature check (what `choose` does for each candidate, in two passes).
#[cfg(test)]
pub(super) fn check_token(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    token: &str,
    now: i64,
) -> Result<Rc<Verified>, TokenError> {
    // Refuse oversized input before any work on it (hashing a 64 KiB value for a lookup would
    // cost about as much as a signature check).
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Size);
    }
    if let Some(known) = cache.verified(config, token, now) {
        return known;
    }
    let key = cache.rejected_key(config, token);
    if let Some(err) = cache.known_bad(key) {
        return Err(err);
    }
    verify_now(config, cache, token, key, now)
}

/// Checks a token's signature and claims, and remembers the outcome.
pub(super) fn verify_now(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    token: &str,
    key: Option<u64>,
    now: i64,
) -> Result<Rc<Verified>, TokenError> {
    let cache_on = config.token_cache_entries > 0;
    if cache_on {
        cache.misses += 1;
    }
    cache.verifications += 1;
    match config.verifier.verify(token, now) {
        Ok(verified) => {
            let verified = Rc::new(verified);
            if cache_on {
                cache.insert(token, Rc::clone(&verified), config.token_cache_entries, now);
            }
            Ok(verified)
        }
        Err(err) => {
            cache.reject(key, &err);
            Err(err)
        }
    }
}

/// `Verifier::verify_lapsed` for a candidate the cache does not hold, counted as a signature
/// check; a failure is remembered under `key` (`reject`), as `verify_now` does. A lapsed
/// capability is never put in the verified cache: nothing is let through on it.
pub(super) fn verify_lapsed_now(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    token: &str,
    key: Option<u64>,
    lapsed_secs: i64,
    now: i64,
) -> Result<Verified, TokenError> {
    if config.token_cache_entries > 0 {
        cache.misses += 1;
    }
    cache.verifications += 1;
    config
        .verifier
        .verify_lapsed(token, now, lapsed_secs)
        .inspect_err(|err| cache.reject(key, err))
}

/// A `u64` key that is already a good hash (`memo_hash`) is used as is.
#[derive(Debug, Default)]
pub(super) struct PremixedHasher(u64);

impl Hasher for PremixedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::claims;

    fn verified(expires_at: i64) -> Rc<Verified> {
        Rc::new(Verified {
            claims: claims(),
            sid: None,
            res: None,
            issued_at: 0,
            expires_at,
            kid: "k".into(),
            token: None,
        })
    }

    /// What `verified` marks on a hit.
    fn find_again(cache: &VerifiedCache, token: &str) -> bool {
        cache.entries.get(token).map(|e| e.used.set(true)).is_some()
    }

    /// Users who keep coming back keep their entries while a stream of tokens seen once passes
    /// through a full cache; expired entries go first.
    #[test]
    fn a_full_cache_keeps_the_tokens_found_again_and_drops_the_ones_seen_once() {
        let mut cache = VerifiedCache::new();
        let users: Vec<String> = (0..6).map(|i| format!("user-{i}")).collect();
        for user in &users {
            cache.insert(user, verified(1_000), 8, 0);
        }
        for round in 0..100 {
            for user in &users {
                assert!(find_again(&cache, user), "{user} evicted in round {round}");
            }
            cache.insert(&format!("once-{round}"), verified(1_000), 8, 0);
        }
        assert!(cache.len() <= 8);
        // An expired entry goes even when it was found again.
        let expired_user = "user-0";
        let mut stale = VerifiedCache::new();
        stale.insert(expired_user, verified(10), 2, 0);
        stale.insert("fresh", verified(1_000), 2, 0);
        find_again(&stale, expired_user);
        find_again(&stale, "fresh");
        stale.insert("third", verified(1_000), 2, 20);
        assert!(!stale.entries.contains_key(expired_user));
        assert!(stale.entries.contains_key("fresh"));
        assert!(stale.entries.contains_key("third"));
    }

    /// More users coming back than the cache holds: it starts over rather than refuse to cache.
    #[test]
    fn a_cache_full_of_tokens_all_found_again_starts_over() {
        let mut cache = VerifiedCache::new();
        for i in 0..4 {
            let token = format!("user-{i}");
            cache.insert(&token, verified(1_000), 4, 0);
            find_again(&cache, &token);
        }
        cache.insert("next", verified(1_000), 4, 0);
        assert_eq!(cache.len(), 1);
        assert!(cache.entries.contains_key("next"));
    }
}
