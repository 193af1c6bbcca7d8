//! The decision memo: forward decisions looked up from the serialized header map, before
//! anything is decoded.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::rc::Rc;

use super::decide::{decide_counting, Decision, Forward};
use super::request::Request;
use super::token_cache::{PremixedHasher, VerifiedCache};
use crate::config::{CompiledConfig, CredentialAt, HEADER_PREFIX};
use crate::cookie::TOKEN_HEADER;
use crate::host::SERVICE_PORT;
use crate::path;
use crate::wire::HeaderPairs;

/// How many forward decisions one worker remembers (each holds its key, about the size of the
/// request's Cookie header, and the edits).
pub const MEMO_MAX_ENTRIES: usize = 4096;

/// A per-worker memo of forward decisions, looked up from the request's header map as Envoy
/// hands it over, before anything is decoded (`DecisionMemo::probe`): on a hit the request view
/// is never built and nothing is allocated.
///
/// The key is every header a forward depends on, in the order they came, each tagged and
/// length-prefixed: `:authority`, `:method`, `Origin`, `Sec-Fetch-Site`, `Upgrade`, every `Cookie`,
/// `Authorization` and `podgate-token` value, and the names of client-sent `x-podgate-*`
/// headers. Two requests with one key have one request view in every field a forward reads.
/// The other headers `decide` reads are not in the key:
/// - `:path` is read only to tell the reserved prefix, and for a denial's redirect;
/// - `Accept` and `Sec-Fetch-Mode` only for a denial's redirect;
/// - `Access-Control-Request-*` only for a CORS preflight, which the filter answers before the
///   decision.
///
/// So the probe never memoizes a request on the reserved path or one with an
/// `Access-Control-Request-Method`, and denials are never stored. Nor a request it cannot
/// vouch for without the view: a header name, or the value of a header `decide` reads, that is
/// not ASCII (the view refuses what is not UTF-8), or a map that does not decode. Those go the
/// long way every time.
///
/// A forward on a service reached per resource (its capability names a resource) is never
/// kept: it depends on `:path`.
///
/// Only a forward decided by exactly one token candidate is kept, until that token's expiry
/// (with the verifier's leeway, the rule the token cache applies): with one candidate, the
/// decision depends on time only through that expiry. Everything else it depends on comes from
/// the configuration. A new configuration clears the memo (`clear`), unless it differs only in
/// its pods, revocations and cuts: then the forwards to the pods whose entries changed and those
/// on the capabilities it withdraws go (`keep_under`). Full, it starts over, like the token
/// cache.
///
/// Keys are hashed word by word with a per-worker random seed (`memo_hash`) and compared word by
/// word: SipHash and wasi-libc's byte-wise `memcmp` over a key the size of a Cookie header
/// would cost about as much as the decision they save. Only forwards are stored, so filling a bucket takes valid
/// capabilities, and the memo never holds more than `MEMO_MAX_ENTRIES`.
#[derive(Debug)]
pub struct DecisionMemo {
    /// By `memo_hash` of the key; a bucket holds every entry of that hash.
    entries: HashMap<u64, Vec<Memoized>, BuildHasherDefault<PremixedHasher>>,
    len: usize,
    seed: u64,
    /// The key of the request probed last, reused so a probe allocates nothing.
    pub(super) key: Vec<u8>,
    /// Counts probes: a decision is stored only under the key of the latest one.
    probes: u64,
}

impl Default for DecisionMemo {
    fn default() -> Self {
        Self {
            entries: HashMap::default(),
            len: 0,
            // The process's random SipHash keys, folded into one word.
            seed: RandomState::new().hash_one(0x0070_6f64_6761_7465_u64),
            key: Vec::new(),
            probes: 0,
        }
    }
}

#[derive(Debug)]
struct Memoized {
    key: Box<[u8]>,
    forward: Rc<Forward>,
    /// The first second the memoized decision no longer holds.
    valid_until: i64,
}

/// What `DecisionMemo::probe` found.
#[derive(Debug)]
pub enum Probe {
    /// The forward decided for an earlier request with the same key, still valid.
    Hit(Rc<Forward>),
    /// Decide with `decide_memoized`, handing it this.
    Miss(MemoSlot),
}

/// Where `decide_memoized` may store its decision: the probed key's hash, if the request may
/// be memoized at all, and which probe it came from.
#[derive(Debug)]
#[must_use]
pub struct MemoSlot {
    hash: Option<u64>,
    probe: u64,
}

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// A seeded multiply-rotate hash over 8-byte words, finished with a 64-bit avalanche
/// (MurmurHash3's `fmix64`); and every byte of `bytes` OR-ed together (the same pass tells
/// whether they are all ASCII).
pub(super) fn memo_hash(seed: u64, bytes: &[u8]) -> (u64, u8) {
    let (words, tail) = bytes.as_chunks::<8>();
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(MIX);
    let mut all = 0;
    for word in words {
        let word = u64::from_le_bytes(*word);
        all |= word;
        h = (h ^ word).wrapping_mul(MIX).rotate_left(31);
    }
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail);
    let last = u64::from_le_bytes(last);
    h = (h ^ last).wrapping_mul(MIX);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (h ^ (h >> 33), or_bytes(all | last))
}

/// The bytes of a word OR-ed together.
fn or_bytes(word: u64) -> u8 {
    word.to_le_bytes().iter().fold(0, |acc, b| acc | b)
}

/// Every byte of `bytes` OR-ed together.
pub(super) fn or_all(bytes: &[u8]) -> u8 {
    let (words, tail) = bytes.as_chunks::<8>();
    let all = words.iter().fold(0, |acc, w| acc | u64::from_le_bytes(*w));
    tail.iter().fold(or_bytes(all), |acc, b| acc | b)
}

/// `a == b`, a word at a time (wasi-libc's `memcmp` goes byte by byte).
pub(super) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let ((a_words, a_tail), (b_words, b_tail)) = (a.as_chunks::<8>(), b.as_chunks::<8>());
    let differ = a_words.iter().zip(b_words).fold(0, |acc, (x, y)| {
        acc | (u64::from_le_bytes(*x) ^ u64::from_le_bytes(*y))
    });
    differ == 0 && a_tail == b_tail
}

/// How the probe treats one header, by name.
pub(super) enum Keyed {
    /// In the key, under this tag, with its value.
    Value(u8),
    /// In the key, under this tag, by its name only (client copies of `x-podgate-*`).
    Name(u8),
    /// Read by `decide` but not for a forward: its value must only be ASCII.
    Checked,
    /// Never memoized (`:path` on the reserved prefix, a CORS preflight's header).
    Refused,
    /// Not read.
    Ignored,
}

pub(super) fn keyed(name: &[u8], value: &[u8]) -> Keyed {
    match name {
        b":authority" => Keyed::Value(b'a'),
        b":method" => Keyed::Value(b'm'),
        b"origin" => Keyed::Value(b'o'),
        b"sec-fetch-site" => Keyed::Value(b's'),
        b"upgrade" => Keyed::Value(b'u'),
        b"cookie" => Keyed::Value(b'c'),
        b"authorization" => Keyed::Value(b'b'),
        _ if name == TOKEN_HEADER.as_bytes() => Keyed::Value(b't'),
        b":path" if path::is_reserved(value) => Keyed::Refused,
        b":path" | b"accept" | b"sec-fetch-mode" | b"access-control-request-headers" => {
            Keyed::Checked
        }
        b"access-control-request-method" => Keyed::Refused,
        _ if name.starts_with(HEADER_PREFIX.as_bytes()) => Keyed::Name(b'x'),
        _ => Keyed::Ignored,
    }
}

impl DecisionMemo {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.len = 0;
    }

    /// For configuration `new`, which differs from `old` at most in its pods, revocations and
    /// cuts (`CompiledConfig::same_settings`): keeps the forwards `new` decides alike, those to
    /// a service or to a pod whose entry is the same in both, on a capability `new` does not
    /// withdraw, and drops the rest. A stored forward was decided by its one capability alone,
    /// so nothing else it was judged on can have changed. A forward let through on an exchanged
    /// API token goes too: `new` confirms its grant again.
    pub fn keep_under(&mut self, old: &CompiledConfig, new: &CompiledConfig) {
        let holds = |forward: &Forward| {
            !forward.exchanged
                && forward
                    .capability
                    .as_deref()
                    .is_some_and(|capability| !new.withdraws(capability))
                && forward.target.as_ref().is_some_and(|to| {
                    to.port == SERVICE_PORT || old.pods.get(&to.pod) == new.pods.get(&to.pod)
                })
        };
        self.entries.retain(|_, bucket| {
            bucket.retain(|m| holds(&m.forward));
            !bucket.is_empty()
        });
        self.len = self.entries.values().map(Vec::len).sum();
    }

    /// Looks the request up by its serialized header map (`wire`). A hit counts as a
    /// token-cache hit: the token was verified before.
    pub fn probe(
        &mut self,
        config: &CompiledConfig,
        cache: &mut VerifiedCache,
        wire: &[u8],
        now: i64,
    ) -> Probe {
        self.probes = self.probes.wrapping_add(1);
        let on = config.token_cache_entries.min(MEMO_MAX_ENTRIES) > 0;
        let hash = if on { self.build_key(wire) } else { None };
        if let Some(forward) = hash.and_then(|hash| self.lookup(hash, now)) {
            cache.count_hit();
            return Probe::Hit(forward);
        }
        Probe::Miss(MemoSlot {
            hash,
            probe: self.probes,
        })
    }

    /// Writes the key of the request in `wire` into `self.key` and hashes it; `None` if the
    /// request may not be memoized.
    pub(super) fn build_key(&mut self, wire: &[u8]) -> Option<u64> {
        /// The tag, the length in four 7-bit groups (so the whole key is ASCII exactly when
        /// the values are), the bytes.
        fn field(key: &mut Vec<u8>, tag: u8, bytes: &[u8]) -> bool {
            let len = bytes.len();
            if len >= 1 << 28 {
                return false;
            }
            key.extend_from_slice(&[
                tag,
                (len & 0x7f) as u8,
                (len >> 7 & 0x7f) as u8,
                (len >> 14 & 0x7f) as u8,
                (len >> 21 & 0x7f) as u8,
            ]);
            key.extend_from_slice(bytes);
            true
        }
        let pairs = HeaderPairs::new(wire).ok()?;
        let key = &mut self.key;
        key.clear();
        // Every name, and the values read but not keyed, OR-ed together: ASCII if below 0x80.
        let mut read = 0;
        for pair in pairs {
            let (name, value) = pair.ok()?;
            read |= or_all(name);
            let kept = match keyed(name, value) {
                Keyed::Value(tag) => field(key, tag, value),
                Keyed::Name(tag) => field(key, tag, name),
                Keyed::Checked => {
                    read |= or_all(value);
                    true
                }
                Keyed::Ignored => true,
                Keyed::Refused => false,
            };
            if !kept {
                return None;
            }
        }
        let (hash, keyed) = memo_hash(self.seed, key);
        ((read | keyed) < 0x80).then_some(hash)
    }

    /// The live entry for the key in `self.key`, if any; an expired one is dropped.
    fn lookup(&mut self, hash: u64, now: i64) -> Option<Rc<Forward>> {
        let bucket = self.entries.get_mut(&hash)?;
        let at = bucket.iter().position(|m| same_bytes(&m.key, &self.key))?;
        if now < bucket[at].valid_until {
            return Some(Rc::clone(&bucket[at].forward));
        }
        bucket.swap_remove(at);
        if bucket.is_empty() {
            self.entries.remove(&hash);
        }
        self.len -= 1;
        None
    }

    fn insert(&mut self, hash: u64, entry: Memoized, capacity: usize) {
        if self.len >= capacity {
            self.clear();
        }
        self.entries.entry(hash).or_default().push(entry);
        self.len += 1;
    }
}

/// `decide`, for a request the memo missed (`DecisionMemo::probe`), storing a forward it may
/// keep. Always the same answer as `decide` with the same cache: the `gate` fuzz target and
/// the tests in `gate/memo_tests.rs` check it. The memo is off when the token cache is
/// (`token_cache_entries` 0).
pub fn decide_memoized(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    memo: &mut DecisionMemo,
    slot: MemoSlot,
    req: &Request<'_>,
    now: i64,
) -> Decision {
    let (decision, looked_at) = decide_counting(config, cache, req, now);
    let capacity = config.token_cache_entries.min(MEMO_MAX_ENTRIES);
    let latest = slot.probe == memo.probes;
    if let (Some(hash), true, 1, Decision::Forward(forward)) =
        (slot.hash, latest, looked_at, &decision)
    {
        // A forward on a service reached per resource depends on the path, which is not in
        // the key: it is decided every time.
        let per_resource = forward.capability.as_ref().is_some_and(|c| c.res.is_some());
        // A forward on a lapsed cookie's renewal is the request's own: its key holds the old
        // cookie, and the browser gets the new one with this very response.
        let keep = !per_resource && forward.set_cookie.is_none();
        if let (Some(_), Some(exp), true) = (&forward.user, forward.expires_at, keep) {
            // Not past the expiry of the service credential it sets either: from then on the
            // forward sets the fallback, or is refused.
            let credential_until = forward
                .target
                .as_ref()
                .filter(|t| t.port == SERVICE_PORT)
                .and_then(|t| config.services.get(&t.pod))
                .and_then(|entry| match entry.credential_at(now) {
                    CredentialAt::Set(_, until) => until,
                    CredentialAt::NotNeeded | CredentialAt::Expired => None,
                });
            let valid_until = exp.saturating_add(config.verifier.leeway());
            let entry = Memoized {
                key: memo.key.as_slice().into(),
                forward: Rc::clone(forward),
                valid_until: credential_until.map_or(valid_until, |c| c.min(valid_until)),
            };
            memo.insert(hash, entry, capacity);
        }
    }
    decision
}
