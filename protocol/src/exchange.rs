//! API tokens at the edge: a request to a pod host that carries an API token (`pg_…`, as
//! `Authorization: Bearer` or `podgate-token`) is let through on a capability the filter gets
//! for it, for exactly this pod and port, from the control plane's exchange endpoint. The call
//! is authenticated with the renewal secret, so only Envoy can make it; the control plane
//! checks the API token (revoked, expired) and its owner's access as `/v1/capabilities` does.
//!
//! Pure: the cache key, the call's headers, judging the answer, and the per-worker caches of
//! what exchanges came to (`ExchangeCache`). The adapter makes the call.
//!
//! The caches never keep the API token itself: both are keyed by SHA-256 of the token, the pod
//! and the port. A WebSocket opened with one holds it while it is open, to exchange it again
//! (`Forward::exchange`), as the decision memo holds the request's headers; neither is ever
//! logged or forwarded. A granted capability is kept for its life (expiry, revocation and cut-offs are
//! checked again on every hit, and its signature once under each new configuration, whose keys
//! may differ); a refusal is kept `REFUSED_TTL_SECS`, so a wrong token repeated costs one
//! lookup, not a call.

use std::collections::HashMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::host::PodAddr;
use crate::renewal::{CompiledRenewal, InForce, RENEW_SECRET_HEADER};
use crate::token::{Verified, API_TOKEN_PREFIX};

/// The control plane's exchange endpoint (`POST`), relative to its origin; the call goes to
/// the renewal URL's authority.
pub const EXCHANGE_PATH: &str = "/api/proxy-exchange";
/// Header carrying the end client's address, so that the control plane's limit of failed API
/// tokens counts per client and not per Envoy. Trusted only with the renewal secret.
pub const CLIENT_HEADER: &str = "podgate-client";
/// Most exchange calls one worker has in flight; beyond it a request with a token not yet
/// exchanged is answered 429 at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// How long a refusal is remembered (seconds): short, so a token created or access granted a
/// moment after a refusal works soon, and long enough to absorb a client that retries at once.
pub const REFUSED_TTL_SECS: i64 = 5;
/// Most refusals one worker remembers.
pub const MAX_REFUSED: usize = 1024;
/// Most granted capabilities one worker keeps.
pub const MAX_GRANTED: usize = 1024;
/// `Retry-After` (seconds) when too many exchanges are in flight or the control plane failed.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The hex id and the base32 secret lengths of an API token (`pg_<id>_<secret>`).
const ID_LEN: usize = 24;
const SECRET_LEN: usize = 52;

/// Whether `value` is meant as an API token (it then never counts as a capability candidate).
pub fn is_api_token(value: &str) -> bool {
    value.starts_with(API_TOKEN_PREFIX)
}

/// Whether `token` has the exact shape of an API token: anything else is refused without a
/// call.
pub fn well_formed(token: &str) -> bool {
    let Some(rest) = token.strip_prefix(API_TOKEN_PREFIX) else {
        return false;
    };
    let bytes = rest.as_bytes();
    bytes.len() == ID_LEN + 1 + SECRET_LEN
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            i if i < ID_LEN => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            ID_LEN => b == b'_',
            _ => b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b),
        })
}

/// The cache key of `token` for `pod` (and `resource`, on a service reached per resource):
/// SHA-256 over the token, the pod, the port and the resource, each length-prefixed, the
/// resource marked as present or absent, so a capability exchanged for one resource is never
/// found for another.
pub type ExchangeKey = [u8; 32];

pub fn key(token: &str, pod: &PodAddr, resource: Option<&str>) -> ExchangeKey {
    let mut h = Sha256::new();
    for part in [token.as_bytes(), pod.pod.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(pod.port.to_le_bytes());
    match resource {
        Some(resource) => {
            h.update([1u8]);
            h.update((resource.len() as u64).to_le_bytes());
            h.update(resource.as_bytes());
        }
        None => h.update([0u8]),
    }
    h.finalize().into()
}

/// A request waiting on an exchange: the token, for the call only, and where it goes.
#[derive(Clone, PartialEq, Eq)]
pub struct ExchangeNeeded {
    pub key: ExchangeKey,
    pub token: String,
    pub pod: PodAddr,
    /// The resource path the capability is for (`resource`), on a service reached per
    /// resource.
    pub resource: Option<String>,
}

impl std::fmt::Debug for ExchangeNeeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeNeeded")
            .field("pod", &self.pod)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// The exchange call's headers (`:method`, `:path` with the pod and port or the service, and
/// the resource (`res`) when there is one, `:authority`, the
/// secret, the API token as a bearer, the client's address when known), for
/// `proxy_http_call`. The body is empty.
pub fn call_headers(
    renewal: &CompiledRenewal,
    need: &ExchangeNeeded,
    client: Option<&str>,
) -> Vec<(String, String)> {
    let mut headers = vec![
        (":method".into(), "POST".into()),
        (":path".into(), call_path(need)),
        (":authority".into(), renewal.authority.clone()),
        (RENEW_SECRET_HEADER.into(), renewal.secret().to_owned()),
        ("authorization".into(), format!("Bearer {}", need.token)),
        ("content-length".into(), "0".into()),
    ];
    if let Some(client) =
        client.filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_graphic()))
    {
        headers.push((CLIENT_HEADER.into(), client.to_owned()));
    }
    headers
}

/// The exchange call's `:path`. A resource is a path of unreserved characters and `/`
/// (`resource::classify`), encoded all the same.
fn call_path(need: &ExchangeNeeded) -> String {
    let mut path = format!("{EXCHANGE_PATH}?{}", crate::host::target_query(&need.pod));
    if let Some(resource) = &need.resource {
        path.push_str("&res=");
        path.push_str(&crate::redirect::encode_query_value(resource));
    }
    path
}

/// The client's address from Envoy's `source.address` property (`ip:port` or `[ip]:port`),
/// without the port.
pub fn client_ip(source_address: &str) -> &str {
    if let Some(rest) = source_address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match source_address.rsplit_once(':') {
        Some((ip, _)) if !ip.contains(':') => ip,
        _ => source_address,
    }
}

/// The control plane's answer body on success.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeAnswer {
    /// A capability for exactly the pod and port asked for.
    pub token: String,
}

/// Why an exchange let nothing through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The API token is unknown, revoked or expired (401).
    BadToken,
    /// Its owner may not reach this pod and port, or there is no such pod or port (404).
    NotAllowed,
}

/// What an exchange came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchanged {
    /// A capability for exactly this pod and port, and the token it was verified from.
    Granted(Rc<Verified>, Rc<str>),
    /// Refused, and remembered for `REFUSED_TTL_SECS`.
    Refused(Refusal),
    /// The control plane is limiting this client: retry after that many seconds.
    Busy(u32),
    /// No usable answer (timeout, the control plane away, a wrong secret, a malformed answer).
    Failed,
}

/// Judges the control plane's answer to the exchange `need`, whose public host is `host`:
/// HTTP `status` (0 when the call failed), its `Retry-After`, and `body`, at `now`. A
/// capability is accepted only if it verifies under the configuration in force, is not
/// refused by it, and is for exactly this host, pod and port (and resource, `None` but for a service reached per
/// resource).
pub fn judge(
    config: InForce<'_>,
    host: &str,
    need: &ExchangeNeeded,
    status: u32,
    retry_after: Option<u32>,
    body: &[u8],
    now: i64,
) -> Exchanged {
    match status {
        200 => {}
        401 => return Exchanged::Refused(Refusal::BadToken),
        404 => return Exchanged::Refused(Refusal::NotAllowed),
        429 => {
            return Exchanged::Busy(retry_after.unwrap_or(RETRY_AFTER_SECS).clamp(1, 3600));
        }
        // A 403 is a wrong secret: a misconfiguration, not the client's fault.
        _ => return Exchanged::Failed,
    }
    let Ok(answer) = serde_json::from_slice::<ExchangeAnswer>(body) else {
        return Exchanged::Failed;
    };
    let Ok(cap) = config.verifier.verify(&answer.token, now) else {
        return Exchanged::Failed;
    };
    let exact = cap.claims.aud == host
        && cap.claims.pod == need.pod.pod
        && cap.claims.port == need.pod.port
        && cap.res == need.resource;
    let refused = config.withdraws(&cap);
    if !exact || refused {
        return Exchanged::Failed;
    }
    Exchanged::Granted(Rc::new(cap), answer.token.into())
}

/// The `Retry-After` of an answer's serialized header map, in seconds.
pub fn call_retry_after(wire: &[u8]) -> Option<u32> {
    let headers = crate::wire::decode_header_map(wire).ok()?;
    let (_, value) = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(b"retry-after"))?;
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// What the caches hold for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Granted(Rc<Verified>),
    /// Granted under an earlier configuration: this capability is verified again under the one
    /// in force (`ExchangeCache::confirm`) before it is used.
    Unconfirmed(Rc<str>),
    Refused(Refusal),
    Miss,
}

/// A granted capability, the token it was verified from, and the configuration generation it
/// was verified under.
#[derive(Debug)]
struct Grant {
    capability: Rc<Verified>,
    token: Rc<str>,
    generation: u64,
}

/// One worker's memory of exchanges, by `key`: granted capabilities until their expiry, and
/// refusals for `REFUSED_TTL_SECS`. Both bounded: full, expired entries are dropped first, and
/// if it is still full it starts over (a flood of distinct wrong tokens only ever costs the
/// flood's own entries).
///
/// A new configuration keeps the grants (every API-token user would otherwise call the control
/// plane again at every push) but marks them unconfirmed, and drops the refusals (access may
/// have been granted).
#[derive(Debug, Default)]
pub struct ExchangeCache {
    granted: HashMap<ExchangeKey, Grant>,
    refused: HashMap<ExchangeKey, (i64, Refusal)>,
    generation: u64,
}

impl ExchangeCache {
    /// What is known of `key` at `now`; an expired entry is dropped and is a miss.
    pub fn lookup(&mut self, key: &ExchangeKey, now: i64) -> Lookup {
        if let Some(grant) = self.granted.get(key) {
            if now < grant.capability.expires_at {
                if grant.generation != self.generation {
                    return Lookup::Unconfirmed(Rc::clone(&grant.token));
                }
                return Lookup::Granted(Rc::clone(&grant.capability));
            }
            self.granted.remove(key);
        }
        if let Some(&(until, refusal)) = self.refused.get(key) {
            if now < until {
                return Lookup::Refused(refusal);
            }
            self.refused.remove(key);
        }
        Lookup::Miss
    }

    /// Remembers what the exchange for `key` came to (`Busy` and `Failed` are not kept).
    pub fn record(&mut self, key: ExchangeKey, exchanged: &Exchanged, now: i64) {
        match exchanged {
            Exchanged::Granted(cap, token) => {
                self.refused.remove(&key);
                if self.granted.len() >= MAX_GRANTED && !self.granted.contains_key(&key) {
                    self.granted.retain(|_, g| now < g.capability.expires_at);
                    if self.granted.len() >= MAX_GRANTED {
                        self.granted.clear();
                    }
                }
                let grant = Grant {
                    capability: Rc::clone(cap),
                    token: Rc::clone(token),
                    generation: self.generation,
                };
                self.granted.insert(key, grant);
            }
            Exchanged::Refused(refusal) => {
                self.granted.remove(&key);
                if self.refused.len() >= MAX_REFUSED && !self.refused.contains_key(&key) {
                    self.refused.retain(|_, (until, _)| now < *until);
                    if self.refused.len() >= MAX_REFUSED {
                        self.refused.clear();
                    }
                }
                self.refused
                    .insert(key, (now.saturating_add(REFUSED_TTL_SECS), *refusal));
            }
            Exchanged::Busy(_) | Exchanged::Failed => {}
        }
    }

    /// The capability granted for `key`, verified again under the configuration in force, is
    /// `capability`: confirmed for this configuration.
    pub fn confirm(&mut self, key: &ExchangeKey, capability: Rc<Verified>) {
        if let Some(grant) = self.granted.get_mut(key) {
            grant.capability = capability;
            grant.generation = self.generation;
        }
    }

    /// Forgets the capability granted for `key` (the configuration in force refuses it).
    pub fn forget(&mut self, key: &ExchangeKey) {
        self.granted.remove(key);
    }

    /// A new configuration is in force: grants are confirmed again before use, refusals go.
    pub fn new_configuration(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.refused.clear();
    }

    /// `(granted, refused)` entries held.
    pub fn len(&self) -> (usize, usize) {
        (self.granted.len(), self.refused.len())
    }

    pub fn is_empty(&self) -> bool {
        self.granted.is_empty() && self.refused.is_empty()
    }

    pub fn clear(&mut self) {
        self.granted.clear();
        self.refused.clear();
    }
}

/// Most clients one worker remembers as limited by the control plane.
pub const MAX_BACKED_OFF: usize = 1024;

/// The clients the control plane answered 429 for (out of failed API tokens), until the wait
/// it gave: their next tokens are refused here, without a call, so a client flooding wrong
/// tokens costs the control plane its bucket's worth of calls and then nothing. Bounded: full,
/// past waits are dropped, and if it is still full it starts over.
#[derive(Debug, Default)]
pub struct ClientBackoff {
    until: HashMap<String, i64>,
}

impl ClientBackoff {
    /// Seconds `client` still waits at `now`, if it does.
    pub fn waiting(&self, client: &str, now: i64) -> Option<u32> {
        let until = *self.until.get(client)?;
        (now < until).then(|| u32::try_from(until - now).unwrap_or(u32::MAX))
    }

    /// `client` waits `secs` from `now`.
    pub fn back_off(&mut self, client: &str, secs: u32, now: i64) {
        if self.until.len() >= MAX_BACKED_OFF && !self.until.contains_key(client) {
            self.until.retain(|_, until| now < *until);
            if self.until.len() >= MAX_BACKED_OFF {
                self.until.clear();
            }
        }
        self.until
            .insert(client.to_owned(), now.saturating_add(i64::from(secs)));
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
