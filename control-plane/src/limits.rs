//! Abuse limits: a token bucket per client address on every endpoint that takes credentials,
//! and bounded request sizes everywhere.
//!
//! | limit | counts | default burst | default refill | why it counts that |
//! |---|---|---|---|---|
//! | `GET /api/proxy-auth` | every request | 120 | 120 / min | the browser flow: every request may sign a ticket and write an audit row, and there is no "failure" to count (not signed in is the normal first visit); generous, so a dashboard opening dozens of pods, or an office behind one address, never notices |
//! | `GET /.podgate/callback` | failures (4xx) | 20 | 10 / min | every login passes here once, through Envoy; a bad, expired, replayed or foreign ticket costs a signature check and a database read, and a person sees one only now and then (an old tab, the back button) |
//! | `POST /v1/capabilities` | failures (401, 403, 404) | 20 | 20 / min | scripts and CI fleets mint often and legitimately; refused credentials and probing for pods (the uniform 404) are what guessing looks like |
//! | API tokens, wherever presented | failures | 10 | 10 / min | a wrong `pg_…` token is a guess; the bucket is shared by every endpoint that takes API tokens |
//! | admin API `/v1/…` | failures (401) | 10 | 10 / min | a wrong admin token is a guess; the admin's own requests are never slowed |
//!
//! A bucket holds `burst` tokens and regains one every `60 s / per_minute`; a request (or a
//! failure) takes one; an empty bucket answers 429 with the JSON error body and `Retry-After`
//! (seconds until the next token). Limits that count failures refuse a client only once it has
//! no failure left, so its successes never cost anything. The client is the TCP peer, or the
//! header named by `--client-ip-header` (behind Envoy, set it: otherwise every request through
//! Envoy is one client); IPv6 addresses are grouped by /64, which one host commonly holds whole.
//!
//! Several control planes on one PostgreSQL database share every limit: each counts in its own
//! memory but holds `1/n` of the burst and regains tokens `n` times slower, `n` being the
//! control planes live on the database (`crate::replicas`), so a client spread over them gets at
//! most the configured limit in all (a client held to one control plane gets its share only).
//! A share is never below one token. Checking a request costs no database round trip.
//!
//! Memory is bounded: each limit tracks at most `--rate-limit-clients` clients (default 50 000,
//! about 6 MiB per limit at worst). A full bucket is the same as none and is dropped first; when
//! that is not enough, the least recently seen tenth goes.
//!
//! Sizes: bodies over `--max-body-bytes` (16 KiB; the largest legitimate body, an admin write,
//! is under 1 KiB) are 413 before any handler reads them; request headers over
//! `--max-header-bytes` (32 KiB; leaves room for chunked session cookies) or more than 100
//! headers are 431; a path over 2 KiB or a query over 8 KiB is 414. Every answer is the JSON
//! error body saying what to change.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::limits::{LimitsConfig, Rate};

/// Refused by a limit: the client may retry after this many seconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last written (also the recency used for eviction).
    at: Instant,
}

/// A token bucket per client, holding at most `max_clients` clients.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    refill: Duration,
    max_clients: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Control planes sharing the limit (at least 1): this one holds `1/replicas` of it.
    replicas: Arc<AtomicU32>,
}

/// The key of a client: its address, IPv6 addresses cut to their /64.
pub fn client_key(client: &str) -> String {
    match client.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let net = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", Ipv6Addr::from(net))
        }
        Ok(IpAddr::V6(v6)) => v6.to_canonical().to_string(),
        Ok(ip) => ip.to_string(),
        Err(_) => client.chars().take(64).collect(),
    }
}

impl RateLimiter {
    pub fn new(rate: Rate, max_clients: usize) -> Self {
        Self::shared(rate, max_clients, Arc::new(AtomicU32::new(1)))
    }

    /// A limit shared by `replicas` control planes (a count updated elsewhere).
    pub fn shared(rate: Rate, max_clients: usize, replicas: Arc<AtomicU32>) -> Self {
        RateLimiter {
            burst: f64::from(rate.burst.max(1)),
            refill: rate.refill(),
            max_clients: max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
            replicas,
        }
    }

    /// This control plane's share: its burst and its time to regain one token.
    fn share(&self) -> (f64, f64) {
        let n = f64::from(self.replicas.load(Ordering::Relaxed).max(1));
        ((self.burst / n).max(1.0), self.refill.as_secs_f64() * n)
    }

    /// The map, even after a panic elsewhere poisoned the lock (buckets are plain numbers).
    fn buckets(&self) -> MutexGuard<'_, HashMap<String, Bucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn level(&self, b: Bucket, now: Instant) -> f64 {
        let (burst, refill) = self.share();
        let gained = now.duration_since(b.at).as_secs_f64() / refill;
        (b.tokens + gained).min(burst)
    }

    fn limited(&self, level: f64) -> Limited {
        let wait = (1.0 - level).max(0.0) * self.share().1;
        // `as` saturates; a wait is at most one refill period.
        Limited {
            retry_after_secs: (wait.ceil() as u64).max(1),
        }
    }

    /// Whether `client` has a token left, without taking it (limits that count failures).
    pub fn check(&self, client: &str) -> Result<(), Limited> {
        let key = client_key(client);
        let buckets = self.buckets();
        let Some(b) = buckets.get(&key) else {
            return Ok(());
        };
        let level = self.level(*b, Instant::now());
        if level >= 1.0 {
            Ok(())
        } else {
            Err(self.limited(level))
        }
    }

    /// Takes a token for this request, or refuses (limits that count every request).
    pub fn take(&self, client: &str) -> Result<(), Limited> {
        self.spend(&client_key(client))
    }

    /// Records one failure of `client` (an empty bucket stays empty).
    pub fn fail(&self, client: &str) {
        let _ = self.spend(&client_key(client));
    }

    fn spend(&self, key: &str) -> Result<(), Limited> {
        let now = Instant::now();
        let mut buckets = self.buckets();
        let level = match buckets.get(key) {
            Some(b) => self.level(*b, now),
            None => {
                if buckets.len() >= self.max_clients {
                    self.make_room(&mut buckets, now);
                }
                self.share().0
            }
        };
        let (tokens, result) = if level >= 1.0 {
            (level - 1.0, Ok(()))
        } else {
            (level, Err(self.limited(level)))
        };
        buckets.insert(key.to_owned(), Bucket { tokens, at: now });
        result
    }

    /// Drops full buckets (the same as none), then the least recently seen down to 90 %.
    fn make_room(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        let burst = self.share().0;
        buckets.retain(|_, b| self.level(*b, now) < burst);
        if buckets.len() < self.max_clients {
            return;
        }
        let keep = self.max_clients - (self.max_clients / 10).max(1);
        let mut by_age: Vec<(Instant, String)> =
            buckets.iter().map(|(k, b)| (b.at, k.clone())).collect();
        by_age.sort_unstable_by_key(|(at, _)| *at);
        let drop = buckets.len().saturating_sub(keep);
        for (_, key) in by_age.into_iter().take(drop) {
            buckets.remove(&key);
        }
    }

    /// How many clients this limit holds a bucket for now.
    pub fn tracked_clients(&self) -> usize {
        self.buckets().len()
    }
}

/// Every limit of the process, built once from the configuration.
#[derive(Debug)]
pub struct Limiters {
    pub proxy_auth: RateLimiter,
    pub callback_failures: RateLimiter,
    pub capability_failures: RateLimiter,
    pub api_token_failures: RateLimiter,
    pub admin_failures: RateLimiter,
    /// Wrong secrets on the calls only Envoy makes (renew, exchange, wake): limited as wrong
    /// admin tokens are, in a bucket of their own, so that an admin script with a stale token
    /// never locks out the Envoy on its address, nor the reverse.
    pub envoy_secret_failures: RateLimiter,
    /// Control planes sharing the limits, read by every limit.
    replicas: Arc<AtomicU32>,
}

impl Limiters {
    pub fn new(c: &LimitsConfig) -> Self {
        let replicas = Arc::new(AtomicU32::new(1));
        let limit = |rate| RateLimiter::shared(rate, c.clients, Arc::clone(&replicas));
        Limiters {
            proxy_auth: limit(c.proxy_auth),
            callback_failures: limit(c.callback_failures),
            capability_failures: limit(c.capability_failures),
            api_token_failures: limit(c.api_token_failures),
            admin_failures: limit(c.admin_failures),
            envoy_secret_failures: limit(c.admin_failures),
            replicas,
        }
    }

    /// Sets how many control planes share the limits (at least 1); returns the previous count.
    pub fn set_replicas(&self, n: u32) -> u32 {
        self.replicas.swap(n.max(1), Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn failures_drain_only_on_fail_and_clients_are_apart() {
        let l = RateLimiter::new(
            Rate {
                burst: 3,
                per_minute: 1,
            },
            100,
        );
        for _ in 0..3 {
            assert!(l.check("1.2.3.4").is_ok());
            l.fail("1.2.3.4");
        }
        let refused = l.check("1.2.3.4").unwrap_err();
        assert!((1..=60).contains(&refused.retry_after_secs), "{refused:?}");
        assert!(l.check("5.6.7.8").is_ok());
    }

    #[test]
    fn take_counts_every_request_and_refills() {
        let l = RateLimiter::new(
            Rate {
                burst: 2,
                per_minute: 60_000,
            },
            100,
        );
        assert!(l.take("a").is_ok());
        assert!(l.take("a").is_ok());
        assert!(l.take("a").is_err());
        std::thread::sleep(Duration::from_millis(5));
        assert!(l.take("a").is_ok(), "one token per millisecond");
    }

    #[test]
    fn replicas_each_hold_their_share_and_never_less_than_one() {
        let replicas = Arc::new(AtomicU32::new(2));
        let rate = Rate {
            burst: 10,
            per_minute: 1,
        };
        let a = RateLimiter::shared(rate, 100, Arc::clone(&replicas));
        let b = RateLimiter::shared(rate, 100, Arc::clone(&replicas));
        let allowed = (0..20)
            .filter(|i| if i % 2 == 0 { &a } else { &b }.take("c").is_ok())
            .count();
        assert_eq!(allowed, 10, "two halves of 10");
        // Ten control planes on a burst of 3: each still lets one through.
        replicas.store(10, Ordering::Relaxed);
        let c = RateLimiter::shared(rate, 100, Arc::clone(&replicas));
        assert!(c.take("d").is_ok());
        assert!(c.take("d").is_err());
        // What the share costs per request, next to a limit of its own.
        let own = RateLimiter::new(rate, 100_000);
        let per_take = |l: &RateLimiter| {
            let start = Instant::now();
            for i in 0..20_000 {
                let _ = l.take(&format!("10.1.{}.{}", i / 256, i % 256));
            }
            start.elapsed() / 20_000
        };
        let shared = RateLimiter::shared(rate, 100_000, replicas);
        eprintln!(
            "take(): {:?} alone, {:?} shared by 10",
            per_take(&own),
            per_take(&shared)
        );
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        assert_eq!(client_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            client_key("2001:db8:1:2:bbbb::9"),
            client_key("2001:db8:1:2::1")
        );
        assert_ne!(client_key("2001:db8:1:3::1"), client_key("2001:db8:1:2::1"));
        assert_eq!(client_key("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(client_key("192.0.2.1"), "192.0.2.1");
    }

    #[test]
    fn memory_stays_bounded_and_full_buckets_go_first() {
        let l = RateLimiter::new(
            Rate {
                burst: 5,
                per_minute: 1,
            },
            10,
        );
        for _ in 0..5 {
            l.fail("victim");
        }
        for i in 0..1000 {
            let _ = l.take(&format!("10.0.{}.{}", i / 256, i % 256));
            assert!(l.tracked_clients() <= 10);
        }
        assert!(l.tracked_clients() >= 9, "evicts a tenth, not everything");
    }
}
