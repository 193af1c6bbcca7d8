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
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::verify::client_ip;
use crate::config::ConfigError;
use crate::error::{error_response, ApiError};
use crate::AppState;

/// A token bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens a client starts with and can save up.
    pub burst: u32,
    /// Tokens regained per minute.
    pub per_minute: u32,
}

impl Rate {
    /// Time to regain one token.
    pub fn refill(self) -> Duration {
        Duration::from_secs(60) / self.per_minute.max(1)
    }
}

pub const DEFAULT_PROXY_AUTH: Rate = Rate {
    burst: 120,
    per_minute: 120,
};
pub const DEFAULT_CALLBACK_FAILURES: Rate = Rate {
    burst: 20,
    per_minute: 10,
};
pub const DEFAULT_CAPABILITY_FAILURES: Rate = Rate {
    burst: 20,
    per_minute: 20,
};
pub const DEFAULT_API_TOKEN_FAILURES: Rate = Rate {
    burst: 10,
    per_minute: 10,
};
pub const DEFAULT_ADMIN_FAILURES: Rate = Rate {
    burst: 10,
    per_minute: 10,
};
/// Most clients one limit tracks.
pub const DEFAULT_RATE_LIMIT_CLIENTS: usize = 50_000;
/// Largest request body accepted.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest total of request header names and values accepted.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most request headers accepted.
pub const MAX_HEADER_COUNT: usize = 100;
/// Longest path accepted (pod paths never come here: `next` is at most 2 KiB of query).
pub const MAX_PATH_LEN: usize = 2048;
/// Longest query string accepted (a ticket and an encoded `next` fit with room to spare).
pub const MAX_QUERY_LEN: usize = 8 * 1024;

/// The checked limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    pub proxy_auth: Rate,
    pub callback_failures: Rate,
    pub capability_failures: Rate,
    pub api_token_failures: Rate,
    pub admin_failures: Rate,
    pub clients: usize,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            proxy_auth: DEFAULT_PROXY_AUTH,
            callback_failures: DEFAULT_CALLBACK_FAILURES,
            capability_failures: DEFAULT_CAPABILITY_FAILURES,
            api_token_failures: DEFAULT_API_TOKEN_FAILURES,
            admin_failures: DEFAULT_ADMIN_FAILURES,
            clients: DEFAULT_RATE_LIMIT_CLIENTS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// The limit settings as read from flags, environment and the file.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitInputs {
    pub proxy_auth: (Option<u32>, Option<u32>),
    pub callback_failures: (Option<u32>, Option<u32>),
    pub capability_failures: (Option<u32>, Option<u32>),
    pub api_token_failures: (Option<u32>, Option<u32>),
    pub admin_failures: (Option<u32>, Option<u32>),
    pub clients: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub max_header_bytes: Option<usize>,
}

fn rate(
    (burst, per_minute): (Option<u32>, Option<u32>),
    default: Rate,
    env: &str,
) -> Result<Rate, ConfigError> {
    let r = Rate {
        burst: burst.unwrap_or(default.burst),
        per_minute: per_minute.unwrap_or(default.per_minute),
    };
    for (value, suffix, example) in [
        (r.burst, "BURST", default.burst),
        (r.per_minute, "PER_MINUTE", default.per_minute),
    ] {
        if !(1..=1_000_000).contains(&value) {
            return Err(ConfigError(format!(
                "rate limit {value} is outside 1..=1000000; set PODGATE_{env}_{suffix}, e.g. {example}"
            )));
        }
    }
    Ok(r)
}

fn within(
    value: Option<usize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
    env: &str,
) -> Result<usize, ConfigError> {
    let v = value.unwrap_or(default);
    if !range.contains(&v) {
        return Err(ConfigError(format!(
            "{v} is outside {}..={}; set PODGATE_{env}, e.g. {default}",
            range.start(),
            range.end()
        )));
    }
    Ok(v)
}

/// Applies defaults and checks every limit.
pub fn resolve(i: LimitInputs) -> Result<LimitsConfig, ConfigError> {
    Ok(LimitsConfig {
        proxy_auth: rate(i.proxy_auth, DEFAULT_PROXY_AUTH, "PROXY_AUTH")?,
        callback_failures: rate(
            i.callback_failures,
            DEFAULT_CALLBACK_FAILURES,
            "CALLBACK_FAILURES",
        )?,
        capability_failures: rate(
            i.capability_failures,
            DEFAULT_CAPABILITY_FAILURES,
            "CAPABILITY_FAILURES",
        )?,
        api_token_failures: rate(
            i.api_token_failures,
            DEFAULT_API_TOKEN_FAILURES,
            "API_TOKEN_FAILURES",
        )?,
        admin_failures: rate(i.admin_failures, DEFAULT_ADMIN_FAILURES, "ADMIN_FAILURES")?,
        clients: within(
            i.clients,
            DEFAULT_RATE_LIMIT_CLIENTS,
            1..=10_000_000,
            "RATE_LIMIT_CLIENTS",
        )?,
        max_body_bytes: within(
            i.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            1024..=16 * 1024 * 1024,
            "MAX_BODY_BYTES",
        )?,
        max_header_bytes: within(
            i.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES,
            4096..=1024 * 1024,
            "MAX_HEADER_BYTES",
        )?,
    })
}

// ---------------------------------------------------------------------------------------------
// The token bucket

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
        RateLimiter {
            burst: f64::from(rate.burst.max(1)),
            refill: rate.refill(),
            max_clients: max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The map, even after a panic elsewhere poisoned the lock (buckets are plain numbers).
    fn buckets(&self) -> MutexGuard<'_, HashMap<String, Bucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn level(&self, b: Bucket, now: Instant) -> f64 {
        let gained = now.duration_since(b.at).as_secs_f64() / self.refill.as_secs_f64();
        (b.tokens + gained).min(self.burst)
    }

    fn limited(&self, level: f64) -> Limited {
        let wait = (1.0 - level).max(0.0) * self.refill.as_secs_f64();
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
                self.burst
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
        buckets.retain(|_, b| self.level(*b, now) < self.burst);
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
}

impl Limiters {
    pub fn new(c: &LimitsConfig) -> Self {
        Limiters {
            proxy_auth: RateLimiter::new(c.proxy_auth, c.clients),
            callback_failures: RateLimiter::new(c.callback_failures, c.clients),
            capability_failures: RateLimiter::new(c.capability_failures, c.clients),
            api_token_failures: RateLimiter::new(c.api_token_failures, c.clients),
            admin_failures: RateLimiter::new(c.admin_failures, c.clients),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Middleware

/// An endpoint with its own limit (API tokens are limited where they are verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ProxyAuth,
    Callback,
    Capabilities,
    Admin,
}

impl Endpoint {
    fn limiter(self, l: &Limiters) -> &RateLimiter {
        match self {
            Endpoint::ProxyAuth => &l.proxy_auth,
            Endpoint::Callback => &l.callback_failures,
            Endpoint::Capabilities => &l.capability_failures,
            Endpoint::Admin => &l.admin_failures,
        }
    }

    /// `None` when every request counts, else which answers are failures.
    fn failure(self) -> Option<fn(StatusCode) -> bool> {
        match self {
            Endpoint::ProxyAuth => None,
            Endpoint::Callback => {
                Some(|s| s.is_client_error() && s != StatusCode::TOO_MANY_REQUESTS)
            }
            Endpoint::Capabilities => Some(|s| {
                matches!(
                    s,
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
                )
            }),
            Endpoint::Admin => Some(|s| s == StatusCode::UNAUTHORIZED),
        }
    }

    fn refusal(self, l: Limited) -> ApiError {
        let wait = l.retry_after_secs;
        let message = match self {
            Endpoint::ProxyAuth => format!(
                "too many sign-in requests from this address; wait {wait} s and reload the page"
            ),
            Endpoint::Callback => format!(
                "too many failed sign-in links from this address; wait {wait} s, then open the pod's address again for a fresh link"
            ),
            Endpoint::Capabilities => format!(
                "too many refused capability requests from this address; wait {wait} s and retry with valid credentials and an existing pod and port"
            ),
            Endpoint::Admin => format!(
                "too many requests with a wrong admin token from this address; wait {wait} s and retry with PODGATE_ADMIN_TOKEN"
            ),
        };
        ApiError::TooManyRequests {
            message,
            retry_after_secs: wait,
        }
    }
}

/// The per-client limit of one endpoint: `route_layer(from_fn_with_state((state, endpoint),
/// limit))`.
pub async fn limit(
    State((state, endpoint)): State<(AppState, Endpoint)>,
    req: Request,
    next: Next,
) -> Response {
    let client = client_ip(&state, req.headers(), req.extensions());
    let limiter = endpoint.limiter(state.limits());
    let failure = endpoint.failure();
    let admitted = match failure {
        None => limiter.take(&client),
        Some(_) => limiter.check(&client),
    };
    if let Err(limited) = admitted {
        tracing::warn!(
            client,
            ?endpoint,
            retry_after = limited.retry_after_secs,
            "rate limited"
        );
        return endpoint.refusal(limited).into_response();
    }
    let resp = next.run(req).await;
    if failure.is_some_and(|is_failure| is_failure(resp.status())) {
        limiter.fail(&client);
    }
    resp
}

/// Refuses oversized requests before routing: headers, path, query, and a declared body length
/// (bodies without one are cut at the same size by `DefaultBodyLimit`).
pub async fn bounded_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limits = &state.config().limits;
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers.len() > MAX_HEADER_COUNT || header_bytes > limits.max_header_bytes {
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!(
                "the request has {} headers of {header_bytes} bytes in all; at most {MAX_HEADER_COUNT} headers and {} bytes are accepted (send fewer or smaller cookies)",
                headers.len(),
                limits.max_header_bytes
            ),
        );
    }
    let uri = req.uri();
    if uri.path().len() > MAX_PATH_LEN {
        return error_response(
            StatusCode::URI_TOO_LONG,
            &format!(
                "the path is longer than {MAX_PATH_LEN} bytes; no endpoint has such paths (see control-plane/README.md)"
            ),
        );
    }
    if uri.query().is_some_and(|q| q.len() > MAX_QUERY_LEN) {
        return error_response(
            StatusCode::URI_TOO_LONG,
            &format!(
                "the query string is longer than {MAX_QUERY_LEN} bytes; send shorter parameters (`next` is at most 2048 bytes)"
            ),
        );
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return body_too_large(limits.max_body_bytes);
    }
    next.run(req).await
}

/// 413 with the JSON error body.
pub fn body_too_large(max: usize) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!(
            "the request body is larger than {max} bytes, the most this server accepts (--max-body-bytes); send a smaller JSON body"
        ),
    )
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

    #[test]
    fn bad_settings_name_their_variable() {
        let e = resolve(LimitInputs {
            proxy_auth: (Some(0), None),
            ..LimitInputs::default()
        })
        .unwrap_err();
        assert!(e.0.contains("PODGATE_PROXY_AUTH_BURST"), "{e}");
        let e = resolve(LimitInputs {
            max_body_bytes: Some(10),
            ..LimitInputs::default()
        })
        .unwrap_err();
        assert!(e.0.contains("PODGATE_MAX_BODY_BYTES"), "{e}");
        assert_eq!(
            resolve(LimitInputs::default()).unwrap(),
            LimitsConfig::default()
        );
    }
}
