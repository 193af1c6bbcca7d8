//! Fair limits at the edge: request-rate limits per user and per pod, as token buckets kept by
//! each worker (`Gate`), configured globally and per pod in the filter's configuration
//! (`FilterConfig::rate_limits`). A forward that finds its bucket empty becomes a `429`
//! (`Denial::RateLimited`) with `Retry-After`; nothing is forwarded.
//!
//! Envoy runs one VM per worker, so a limit holds per worker: with N workers a client may get up
//! to N times the rate through. Buckets refill by whole seconds (the filter's clock).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

/// One limit: `per_second` requests a second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// The limits in the filter's configuration. Each is off when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Requests of one user, over every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<Rate>,
    /// Requests to one pod, from every user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_pod: Option<Rate>,
    /// `per_pod` for these pods (by slug), instead of the global one.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub pods: HashMap<String, Rate>,
}

/// Most buckets one worker keeps; past it, full buckets (which limit nothing) are dropped, and
/// when none is full a new key goes unlimited until some are.
pub const MAX_BUCKETS: usize = 65_536;

impl Rate {
    /// `Err` with why when the rate limits nothing sensible.
    pub fn check(&self) -> Result<(), String> {
        if self.per_second == 0 || self.burst == 0 {
            return Err("per_second and burst must be at least 1".into());
        }
        Ok(())
    }
}

impl RateLimits {
    /// Checks every rate.
    pub fn check(&self) -> Result<(), String> {
        for (what, rate) in [("per_user", &self.per_user), ("per_pod", &self.per_pod)] {
            if let Some(rate) = rate {
                rate.check().map_err(|e| format!("{what}: {e}"))?;
            }
        }
        for (slug, rate) in &self.pods {
            rate.check().map_err(|e| format!("pods.{slug}: {e}"))?;
        }
        Ok(())
    }

    /// The per-pod rate of `pod`.
    fn pod_rate(&self, pod: &str) -> Option<Rate> {
        self.pods.get(pod).copied().or(self.per_pod)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    /// When `tokens` was last refilled (unix seconds).
    at: i64,
}

impl Bucket {
    fn refill(&mut self, rate: Rate, now: i64) {
        let elapsed = u64::try_from(now.saturating_sub(self.at)).unwrap_or(0);
        let added = elapsed.saturating_mul(u64::from(rate.per_second));
        let tokens = u64::from(self.tokens).saturating_add(added);
        self.tokens = u32::try_from(tokens.min(u64::from(rate.burst))).unwrap_or(rate.burst);
        self.at = self.at.max(now);
    }
}

/// What a forward reaches, for its per-pod limit: a pod (by slug) or a service (by name). Each
/// kind has buckets of its own, so that a service never shares one with a pod of the same name;
/// a service is limited by the global `per_pod` rate, never by a pod's own (`RateLimits::pods`
/// is by pod slug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Pod(&'a str),
    Service(&'a str),
}

impl<'a> Target<'a> {
    /// What a capability for `pod` and `port` reaches (`host::SERVICE_PORT`: a service).
    pub fn of(pod: &'a str, port: u16) -> Self {
        if port == crate::host::SERVICE_PORT {
            Target::Service(pod)
        } else {
            Target::Pod(pod)
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    User,
    Pod,
}

/// Buckets by key. Keys are a verified capability's `sub` and `pod` (a pod's slug or a service's
/// name, in maps of their own), which the control plane
/// mints, so they need no keyed hash; a keyed one (SipHash) made the buckets cost 2.5 times as
/// much on a cached forward.
type Buckets = HashMap<String, Bucket, BuildHasherDefault<Fnv>>;

/// FNV-1a over the key's bytes.
#[derive(Debug)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// One worker's buckets, by user, by pod and by service.
#[derive(Debug, Default)]
pub struct Limiter {
    users: Buckets,
    pods: Buckets,
    services: Buckets,
}

impl Limiter {
    /// Forgets every bucket (a new configuration may change the rates).
    pub fn clear(&mut self) {
        self.users.clear();
        self.pods.clear();
        self.services.clear();
    }

    /// Takes one request of `user` to `target` at `now` out of its buckets; `Err` with the
    /// limit that refused it. A request the target's limit refuses gets its user's token back.
    pub fn take(
        &mut self,
        limits: &RateLimits,
        user: &str,
        target: Target<'_>,
        now: i64,
    ) -> Result<(), Limited> {
        let user_rate = limits.per_user;
        if let Some(rate) = user_rate {
            if !take_one(&mut self.users, user, rate, now) {
                return Err(Limited::User);
            }
        }
        let (buckets, key, rate) = match target {
            Target::Pod(pod) => (&mut self.pods, pod, limits.pod_rate(pod)),
            Target::Service(name) => (&mut self.services, name, limits.per_pod),
        };
        if let Some(rate) = rate {
            if !take_one(buckets, key, rate, now) {
                if user_rate.is_some() {
                    if let Some(bucket) = self.users.get_mut(user) {
                        bucket.tokens = bucket.tokens.saturating_add(1);
                    }
                }
                return Err(Limited::Pod);
            }
        }
        Ok(())
    }
}

/// Takes a token from `key`'s bucket (made full if new, refilled to `now`); whether there was
/// one. One lookup for a key seen before.
fn take_one(map: &mut Buckets, key: &str, rate: Rate, now: i64) -> bool {
    if let Some(bucket) = map.get_mut(key) {
        bucket.refill(rate, now);
        if bucket.tokens == 0 {
            return false;
        }
        bucket.tokens -= 1;
        return true;
    }
    if map.len() >= MAX_BUCKETS {
        map.retain(|_, b| {
            let mut b = *b;
            b.refill(rate, now);
            b.tokens < rate.burst
        });
        if map.len() >= MAX_BUCKETS {
            return true;
        }
    }
    map.insert(
        key.to_owned(),
        Bucket {
            tokens: rate.burst.saturating_sub(1),
            at: now,
        },
    );
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn limits(user: Option<(u32, u32)>, pod: Option<(u32, u32)>) -> RateLimits {
        let rate = |(per_second, burst)| Rate { per_second, burst };
        RateLimits {
            per_user: user.map(rate),
            per_pod: pod.map(rate),
            pods: HashMap::new(),
        }
    }

    #[test]
    fn a_user_gets_the_burst_then_the_rate() {
        let l = limits(Some((2, 3)), None);
        let mut lim = Limiter::default();
        for _ in 0..3 {
            assert_eq!(lim.take(&l, "alice", Target::Pod("alpha"), 100), Ok(()));
        }
        assert_eq!(
            lim.take(&l, "alice", Target::Pod("alpha"), 100),
            Err(Limited::User)
        );
        // Another user has a bucket of their own, on any pod.
        assert_eq!(lim.take(&l, "bob", Target::Pod("alpha"), 100), Ok(()));
        assert_eq!(
            lim.take(&l, "alice", Target::Pod("beta"), 100),
            Err(Limited::User)
        );
        // One second later: two more, never more than the burst.
        assert_eq!(lim.take(&l, "alice", Target::Pod("alpha"), 101), Ok(()));
        assert_eq!(lim.take(&l, "alice", Target::Pod("alpha"), 101), Ok(()));
        assert_eq!(
            lim.take(&l, "alice", Target::Pod("alpha"), 101),
            Err(Limited::User)
        );
        for _ in 0..3 {
            assert_eq!(lim.take(&l, "alice", Target::Pod("alpha"), 200), Ok(()));
        }
        assert_eq!(
            lim.take(&l, "alice", Target::Pod("alpha"), 200),
            Err(Limited::User)
        );
    }

    #[test]
    fn a_pod_is_limited_over_every_user_and_per_pod_rates_win() {
        let mut l = limits(None, Some((1, 2)));
        l.pods.insert(
            "busy".into(),
            Rate {
                per_second: 1,
                burst: 4,
            },
        );
        let mut lim = Limiter::default();
        assert_eq!(lim.take(&l, "alice", Target::Pod("alpha"), 10), Ok(()));
        assert_eq!(lim.take(&l, "bob", Target::Pod("alpha"), 10), Ok(()));
        assert_eq!(
            lim.take(&l, "carol", Target::Pod("alpha"), 10),
            Err(Limited::Pod)
        );
        for user in ["a", "b", "c", "d"] {
            assert_eq!(lim.take(&l, user, Target::Pod("busy"), 10), Ok(()));
        }
        assert_eq!(
            lim.take(&l, "e", Target::Pod("busy"), 10),
            Err(Limited::Pod)
        );
    }

    #[test]
    fn a_refusal_takes_nothing_from_the_other_bucket() {
        let l = limits(Some((1, 1)), Some((1, 1)));
        let mut lim = Limiter::default();
        assert_eq!(lim.take(&l, "alice", Target::Pod("alpha"), 10), Ok(()));
        // Alice is out: her refused request leaves beta's token for bob.
        assert_eq!(
            lim.take(&l, "alice", Target::Pod("beta"), 10),
            Err(Limited::User)
        );
        assert_eq!(lim.take(&l, "bob", Target::Pod("beta"), 10), Ok(()));
        // Beta is out: carol's refused request leaves her own token for alpha... whose token
        // alice took; on gamma it goes through.
        assert_eq!(
            lim.take(&l, "carol", Target::Pod("beta"), 10),
            Err(Limited::Pod)
        );
        assert_eq!(lim.take(&l, "carol", Target::Pod("gamma"), 10), Ok(()));
    }

    #[test]
    fn a_service_has_buckets_apart_from_a_pod_of_the_same_name() {
        let mut l = limits(None, Some((1, 1)));
        l.pods.insert(
            "alpha".into(),
            Rate {
                per_second: 1,
                burst: 3,
            },
        );
        let mut lim = Limiter::default();
        // Pod alpha's own burst of 3, spent.
        for user in ["a", "b", "c"] {
            assert_eq!(lim.take(&l, user, Target::Pod("alpha"), 10), Ok(()));
        }
        assert_eq!(
            lim.take(&l, "d", Target::Pod("alpha"), 10),
            Err(Limited::Pod)
        );
        // Service alpha has its own bucket, at the global rate (not pod alpha's own).
        assert_eq!(lim.take(&l, "d", Target::Service("alpha"), 10), Ok(()));
        assert_eq!(
            lim.take(&l, "e", Target::Service("alpha"), 10),
            Err(Limited::Pod)
        );
        // And spending it leaves the pod's refill alone.
        assert_eq!(lim.take(&l, "f", Target::Pod("alpha"), 11), Ok(()));
        assert_eq!(Target::of("alpha", 0), Target::Service("alpha"));
        assert_eq!(Target::of("alpha", 8080), Target::Pod("alpha"));
    }

    #[test]
    fn zero_rates_are_refused() {
        assert!(limits(Some((0, 1)), None).check().is_err());
        assert!(limits(None, Some((1, 0))).check().is_err());
        assert!(limits(Some((1, 1)), Some((5, 10))).check().is_ok());
    }
}
