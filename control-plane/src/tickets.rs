//! The login tickets this control plane minted and that were not presented back yet, by digest.
//! A callback presenting exactly those bytes needs no signature check
//! (`Verifier::verify_signed_here`): this process signed them. Checking an Ed25519 signature is
//! the largest single cost of a callback besides signing its capability. Anything else is
//! verified in full: a ticket minted by another control plane on the same database, one
//! forgotten because the set was full, any other bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

/// At most this many tickets are remembered (a digest and an expiry each, about 100 bytes with
/// the map's overhead): tickets minted and never redeemed cost a few MiB at most; past that the
/// oldest are forgotten first.
pub const MAX_REMEMBERED: usize = 65_536;

type Digest32 = [u8; 32];

#[derive(Debug, Default)]
pub struct MintedTickets {
    inner: Mutex<Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    /// Digest → expiry (unix seconds).
    by_digest: HashMap<Digest32, i64>,
    /// Digests in minting order, which is expiry order (one ticket lifetime for all), so the
    /// expired and the oldest are dropped from the front. A digest taken since stays here
    /// until then.
    order: VecDeque<(Digest32, i64)>,
}

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

impl MintedTickets {
    fn lock(&self) -> MutexGuard<'_, Remembered> {
        // Nothing can be left half-done under this lock: a panic elsewhere does not make it
        // unusable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers a ticket this process just signed, until `expires_at` (unix seconds).
    pub fn remember(&self, token: &str, expires_at: i64, now: i64) {
        let digest = digest(token);
        let mut r = self.lock();
        while let Some((old, at)) = r.order.front().copied() {
            if at > now && r.order.len() < MAX_REMEMBERED {
                break;
            }
            r.order.pop_front();
            if r.by_digest.get(&old) == Some(&at) {
                r.by_digest.remove(&old);
            }
        }
        r.by_digest.insert(digest, expires_at);
        r.order.push_back((digest, expires_at));
    }

    /// Whether this process signed exactly `token` and it was not taken before: then it is
    /// forgotten, and its signature needs no check.
    pub fn take(&self, token: &str) -> bool {
        let digest = digest(token);
        self.lock().by_digest.remove(&digest).is_some()
    }

    /// How many tickets are remembered.
    pub fn len(&self) -> usize {
        self.lock().by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_taken_once_and_only_with_its_exact_bytes() {
        let t = MintedTickets::default();
        t.remember("header.claims.sig", 160, 100);
        assert!(!t.take("header.claims.sIg"));
        assert!(!t.take("header.claims.sig "));
        assert!(t.take("header.claims.sig"));
        assert!(!t.take("header.claims.sig"), "taken twice");
        assert!(t.is_empty());
    }

    #[test]
    fn expired_and_oldest_tickets_are_forgotten() {
        let t = MintedTickets::default();
        t.remember("a", 110, 100);
        t.remember("b", 170, 100);
        // Minting "c" at 120 drops "a", expired at 110.
        t.remember("c", 180, 120);
        assert_eq!(t.len(), 2);
        assert!(!t.take("a"));

        let t = MintedTickets::default();
        for i in 0..MAX_REMEMBERED + 10 {
            t.remember(&format!("t{i}"), 1_000, 100);
        }
        assert_eq!(t.len(), MAX_REMEMBERED);
        assert!(!t.take("t9"), "the oldest stay past the bound");
        assert!(t.take("t10"));
        assert!(t.take(&format!("t{}", MAX_REMEMBERED + 9)));
    }
}
