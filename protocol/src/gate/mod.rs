//! The filter's request sequence, in one place: [`Gate`] takes the request's header map as
//! Envoy serializes it and says what to do with it; for a forwarded request it then takes the
//! pod's response header map and says what to change. The proxy-wasm adapter only moves bytes
//! between Envoy and a `Gate`.
//!
//! A request goes, in order:
//! 1. `memo`: the decision memo, probed on the serialized map before anything is decoded; a hit
//!    is the forward decided for an earlier request with the same inputs.
//! 2. `wire` decodes the map, borrowing every header; `request` builds the view of the headers
//!    the decision reads.
//! 3. `cors::preflight` answers a CORS preflight; it is never forwarded.
//! 4. `decide` decides, checking tokens through `token_cache`; `memo` keeps a forward it may.
//! 5. A forward (decided or a memo hit) on a stream is held against its user's and its pod's
//!    open-stream limits (`concurrent`) and takes their request-rate tokens (`rate`); a
//!    refusal of a browser page load becomes its page (`refusal`, `page`), or, for a pod that
//!    is not running when the control plane can start pods, a wake call and its page (`wake`).
//!
//! A forwarded pod response goes through `response::sanitize`.

mod decide;
mod memo;
mod request;
mod revived;
mod token_cache;

use std::rc::Rc;

use crate::assertion::AssertionCache;
use crate::concurrent::Streams;
use crate::config::CompiledConfig;
use crate::cors::{self, Preflight};
use crate::exchange::{self, ExchangeNeeded, Exchanged, Refusal};
use crate::rate::{Limiter, Target};
use crate::renewal::{self, RenewalCall, Renewed};
use crate::reply::{Denial, Reply};
use crate::response::{self, PodResponse, Sanitized};
use crate::token::Verified;
use crate::wake::{self, WakeCall};
use crate::wire::{self, WireError};

pub use decide::{
    auth_redirect, decide, Decision, Forward, HeaderEdit, FORWARDED_HOST_HEADER, MAX_VERIFICATIONS,
};
pub use memo::{DecisionMemo, MEMO_MAX_ENTRIES};
pub use request::Request;
pub use token_cache::VerifiedCache;

/// What the filter does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward after applying the edits, then clear the route cache when the forward says so
    /// (`Forward::reroute`).
    Forward(Rc<Forward>),
    /// Answer locally with `Denial::reply`; nothing is forwarded.
    Deny(Denial),
    /// A refusal answered with a reply of its own, counted as the refusal (`Reply::reason`): to
    /// a browser page load, an HTML page (`page::for_denial`) instead of its JSON; to a script
    /// of another port of the pod, its JSON with CORS headers (`refusal`). Nothing is forwarded.
    Page(Reply),
    /// A page load of a pod that is not running, by a user it was granted to, when the control
    /// plane can start pods (`wake`): make the call (without waiting for its answer), then
    /// answer with the page (`page::waking`), counted as the refusal. Nothing is forwarded.
    Wake { call: WakeCall, page: Reply },
    /// A CORS preflight, answered locally with this reply; nothing is forwarded.
    Preflight(Reply),
    /// A path the filter answers itself (`/.podgate/userinfo`, `/.podgate/logout`), answered
    /// locally with this reply; nothing is forwarded.
    Answer(Reply),
    /// An API token to exchange for a capability (`Gate::exchange_call`) before deciding
    /// again; the request waits.
    Exchange(Rc<ExchangeNeeded>),
    /// A browser's cookie capability that lapsed while its tab was idle, to renew
    /// (`Gate::renewal_call`, `Gate::renewed`) before deciding again; the request waits. When
    /// it cannot be renewed (refused, failed, no call possible), the request gets `otherwise`.
    Renew(Rc<LapsedRenewal>),
}

/// A lapsed capability to renew before its request is decided again, and the answer the
/// request gets without a renewal (the refusal of an expired capability: a sign-in redirect
/// for a page load, a `401` for a script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LapsedRenewal {
    pub old: Rc<Verified>,
    pub otherwise: Outcome,
}

impl From<Decision> for Outcome {
    fn from(decision: Decision) -> Self {
        match decision {
            Decision::Forward(forward) => Outcome::Forward(forward),
            Decision::Deny(denial) => Outcome::Deny(denial),
            Decision::Answer(reply) => Outcome::Answer(reply),
            Decision::Exchange(need) => Outcome::Exchange(need),
            Decision::Renew { old, refusal } => Outcome::Renew(Rc::new(LapsedRenewal {
                old,
                otherwise: Outcome::Deny(refusal),
            })),
        }
    }
}

/// The user and the pod or service a forward's stream counts against; `None` for a forward to
/// the control plane.
fn stream_keys(forward: &Forward) -> Option<(&str, Target<'_>)> {
    let user = forward.user.as_deref()?;
    let claims = &forward.capability.as_deref()?.claims;
    Some((user, Target::of(&claims.pod, claims.port)))
}

/// The refusal of `forward` when its user or its pod holds as many open streams as allowed
/// (`concurrent`), or when its user's or its pod's request rate is spent (`rate`); a forward to
/// the control plane (no user) is never limited. A forward let through on `stream` is held
/// until `Gate::end_stream`; without a stream (`Gate::on_request`) nothing is counted. One
/// `Option` test per kind when no limit is configured.
fn over_limit(
    config: &CompiledConfig,
    limiter: &mut Limiter,
    streams: &mut Streams,
    stream: Option<u32>,
    forward: &Rc<Forward>,
    now: i64,
) -> Option<Denial> {
    // Held first, and let go of if the rate refuses: a refused stream holds nothing.
    let held = match (config.concurrency_limits.as_ref(), stream) {
        (Some(limits), Some(stream)) => match streams.hold(limits, stream, stream_keys(forward)) {
            Ok(()) => Some(stream),
            Err(scope) => {
                return Some(Denial::TooManyStreams {
                    scope,
                    retry_after: 1,
                })
            }
        },
        _ => None,
    };
    let limits = config.rate_limits.as_ref()?;
    let (user, capability) = (forward.user.as_deref()?, forward.capability.as_ref()?);
    let target = Target::of(&capability.claims.pod, capability.claims.port);
    let scope = limiter.take(limits, user, target, now).err()?;
    if let Some(stream) = held {
        streams.release(stream);
    }
    Some(Denial::RateLimited {
        scope,
        retry_after: 1,
    })
}

/// How `denial` is answered to `request`: for a browser page load (`Request::is_page_load`), its
/// page when it has one (the sign-in link asks for this very page back); its JSON otherwise,
/// with the CORS headers a forwarded answer would get when the `Origin` is one of the pod's own
/// (`cors::is_same_pod_origin`), so that a script on another port of the pod can read why (a
/// `401` to sign in again, a `503` pod stopped, a `429`) instead of a network error.
pub fn refusal(config: &CompiledConfig, request: &Request<'_>, denial: Denial) -> Outcome {
    let Ok(pod) = config.public_hosts.parse(request.authority) else {
        return Outcome::Deny(denial);
    };
    if !request.is_page_load() {
        return match request.origin {
            // CORS does not apply to WebSockets: their refusals stay as they are.
            Some(origin)
                if !request.is_websocket()
                    && crate::cors::is_same_pod_origin(config, &pod, origin) =>
            {
                let mut reply = denial.reply();
                reply.headers.extend([
                    ("access-control-allow-origin", origin.to_owned()),
                    ("access-control-allow-credentials", "true".to_owned()),
                    (
                        "access-control-expose-headers",
                        "www-authenticate, retry-after".to_owned(),
                    ),
                    ("vary", "Origin".to_owned()),
                ]);
                Outcome::Page(reply)
            }
            _ => Outcome::Deny(denial),
        };
    }
    let sign_in = auth_redirect(config, &pod, request.path);
    match crate::page::for_denial(&denial, &pod, &sign_in) {
        Some(reply) => Outcome::Page(reply),
        None => Outcome::Deny(denial),
    }
}

/// Why a pod response cannot be vouched for (the filter then resets the stream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseFailure {
    #[error("no configuration")]
    NotConfigured,
    #[error("cannot decode: {0}")]
    Wire(#[from] WireError),
}

/// One worker's gate: the compiled configuration, the verified-token cache with its memory of
/// refused values, and the decision memo. Envoy runs one VM per worker thread and never calls
/// into it concurrently, so nothing here is shared between threads.
#[derive(Debug, Default)]
pub struct Gate {
    config: Option<Rc<CompiledConfig>>,
    cache: VerifiedCache,
    memo: DecisionMemo,
    /// This worker's request-rate buckets (`rate`).
    limiter: Limiter,
    /// This worker's open streams to pods (`concurrent`): kept across configurations, which
    /// change the limits, not what is open.
    streams: Streams,
    assertions: AssertionCache,
}

impl Gate {
    /// A gate with `config` in force.
    pub fn new(config: Rc<CompiledConfig>) -> Self {
        let mut gate = Gate::default();
        gate.configure(config);
        gate
    }

    /// Puts `config` in force. What was decided, verified and signed under the configuration
    /// before is kept only where `config` would decide, verify and sign it alike:
    /// - the decision memo, when `config` differs only in its pods (a pod created, started,
    ///   stopped, moved or deleted), revocations and cuts (a revoked token, a sign-out, lost
    ///   access), but for the forwards to the pods whose entries changed, those on the
    ///   capabilities it withdraws and those let through on an exchanged API token; any other
    ///   change (keys, services, templates) starts it over;
    /// - the verified tokens, when the capability verifier checks as the one before (same
    ///   keys, issuer, leeway and lifetime cap) and the cache keeps its size: a signature and
    ///   the claims checked then are checked the same now, and what can change (expiry,
    ///   revocation, cuts, scope) is checked on every hit;
    /// - the rate buckets, while the rates are the same: a push for some pod must not give every
    ///   client a full burst again;
    /// - the identity assertions signed, while the same key signs them for the same lifetime:
    ///   each is bound to its capability, which every request checks first.
    pub fn configure(&mut self, config: Rc<CompiledConfig>) {
        let old = self.config.replace(Rc::clone(&config));
        let old = old.as_deref();
        let same_size = old.is_some_and(|o| o.token_cache_entries == config.token_cache_entries);
        if same_size && old.is_some_and(|o| o.verifier.checks_as(&config.verifier)) {
            self.cache.new_configuration();
        } else {
            self.cache.clear();
        }
        match old.filter(|o| o.same_settings(&config)) {
            Some(old) => self.memo.keep_under(old, &config),
            None => self.memo.clear(),
        }
        if !old.is_some_and(|o| o.rate_limits == config.rate_limits) {
            self.limiter.clear();
        }
        if !(same_size && old.is_some_and(|o| o.signs_assertions_as(&config))) {
            self.assertions.clear();
        }
    }

    /// Stream `stream` ended: what it held (`concurrent`) is let go. Nothing for a stream never
    /// held.
    pub fn end_stream(&mut self, stream: u32) {
        self.streams.release(stream);
    }

    /// The open streams counted against the concurrency limits.
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// The configuration in force, if any.
    pub fn config(&self) -> Option<&CompiledConfig> {
        self.config.as_deref()
    }

    /// Whether the configuration in force refuses `capability` now: revoked, cut off (a
    /// signed-out session, access lost), signed with a key no longer listed (or for another
    /// issuer), or no configuration at all. The filter asks it for the capabilities of open
    /// WebSockets, so that a push closes them too.
    pub fn refuses(&self, capability: &Verified) -> bool {
        self.config()
            .is_none_or(|c| c.withdraws(capability) || !c.verifier.still_vouches_for(capability))
    }

    /// The renew call for `capability` (`renewal::call_headers`) to the control plane's
    /// cluster; `None` when renewal is off or the capability cannot be renewed.
    pub fn renewal_call(&self, capability: &Verified) -> Option<RenewalCall<'_>> {
        let config = self.config()?;
        let renewal = config.renewal.as_ref()?;
        Some(RenewalCall {
            cluster: config.control_plane_cluster.as_str(),
            headers: renewal::call_headers(renewal, capability)?,
            timeout_ms: renewal.timeout_ms,
        })
    }

    /// Judges the control plane's answer to the renewal of `old` (`renewal::judge`); a fresh
    /// capability goes into the verified-token cache, so the browser's next request with it
    /// costs no signature check, and is remembered for the old one (`revived`), so a request
    /// with the old one once it lapsed is decided on it.
    pub fn renewed(&mut self, old: &Verified, status: u32, body: &[u8], now: i64) -> Renewed {
        let Some(config) = self.config.as_deref() else {
            return Renewed::Failed;
        };
        let renewed = renewal::judge(config.in_force(), old, status, body, now);
        if let Renewed::Fresh {
            capability,
            set_cookie,
        } = &renewed
        {
            // For the requests still carrying the old capability once it lapsed.
            if config.renewal.as_ref().is_some_and(|r| r.lapsed_secs > 0) {
                self.cache
                    .revived()
                    .record(old, Rc::clone(capability), Rc::clone(set_cookie), now);
            }
            if let Some(token) = capability.token.as_ref() {
                if config.token_cache_entries > 0 {
                    self.cache.insert(
                        token.as_str(),
                        Rc::clone(capability),
                        config.token_cache_entries,
                        now,
                    );
                }
            }
        }
        renewed
    }

    /// The capability API token exchange `need` stands for now: the one the exchange cache
    /// holds, in force under this configuration (`None`: none, refused, or withdrawn). For an
    /// open WebSocket's renewal, which asks the control plane again when this is still the
    /// capability it lives on.
    pub fn exchanged_capability(
        &mut self,
        need: &ExchangeNeeded,
        now: i64,
    ) -> Option<Rc<Verified>> {
        let config = Rc::clone(self.config.as_ref()?);
        decide::exchanged_capability(&config, &mut self.cache, need, now)
    }

    /// The exchange call for `need` (`exchange::call_headers`) to the control plane's cluster,
    /// with the client's address when known; `None` when exchanges are off (no renewal
    /// section: it carries the URL's authority and the secret).
    pub fn exchange_call(
        &self,
        need: &ExchangeNeeded,
        client: Option<&str>,
    ) -> Option<RenewalCall<'_>> {
        let config = self.config()?;
        let renewal = config.renewal.as_ref()?;
        Some(RenewalCall {
            cluster: config.control_plane_cluster.as_str(),
            headers: exchange::call_headers(renewal, need, client),
            timeout_ms: renewal.timeout_ms,
        })
    }

    /// Judges the control plane's answer to the exchange for `need` (`exchange::judge`) and
    /// remembers it, so deciding the waiting requests again finds it. `Ok` when they should be
    /// decided again; otherwise the answer every one of them gets.
    pub fn exchanged(
        &mut self,
        need: &ExchangeNeeded,
        status: u32,
        retry_after: Option<u32>,
        body: &[u8],
        now: i64,
    ) -> Result<(), Denial> {
        let Some(config) = self.config.as_deref() else {
            return Err(Denial::NotConfigured);
        };
        let host = config.public_hosts.render(&need.pod);
        let exchanged = exchange::judge(
            config.in_force(),
            &host,
            need,
            status,
            retry_after,
            body,
            now,
        );
        self.cache.exchanges().record(need.key, &exchanged, now);
        match exchanged {
            Exchanged::Granted(..) => Ok(()),
            Exchanged::Refused(Refusal::BadToken) => Err(Denial::ApiTokenRefused),
            Exchanged::Refused(Refusal::NotAllowed) => Err(Denial::ApiTokenNotAllowed),
            Exchanged::Busy(secs) => Err(Denial::ExchangeBusy(secs)),
            Exchanged::Failed => Err(Denial::ExchangeFailed),
        }
    }

    /// The identity assertion for a forward to a pod at `now` (`assertion`): `None` on the
    /// reserved path, for a service, and when assertions are off. Signed once per capability and worker per
    /// half assertion lifetime; every other call hands out the cached value.
    pub fn assertion(&mut self, forward: &Forward, now: i64) -> Option<Rc<str>> {
        let config = self.config.as_deref()?;
        let signer = config.assertion.as_ref()?;
        let capability = forward.capability.as_deref()?;
        forward.response.as_ref()?;
        if capability.claims.port == crate::host::SERVICE_PORT {
            // A service is a third party: it learns nothing of our users.
            return None;
        }
        self.assertions
            .get(signer, capability, now, config.token_cache_entries)
    }

    /// How many identity assertions this gate signed.
    pub fn assertions_signed(&self) -> u64 {
        self.assertions.signed()
    }

    /// The verified-token cache (for its counters).
    pub fn cache(&self) -> &VerifiedCache {
        &self.cache
    }

    /// The verified-token cache, the gate given up (for its counters, in tests and fuzzing).
    pub fn into_cache(self) -> VerifiedCache {
        self.cache
    }

    /// The decision memo (for its size).
    pub fn memo(&self) -> &DecisionMemo {
        &self.memo
    }

    /// `(hits, misses)` of the token cache so far; a memo hit counts as a hit.
    pub fn stats(&self) -> (u64, u64) {
        self.cache.stats()
    }

    /// Decides what happens to the request whose header map is `wire` (Envoy's serialization,
    /// `wire::decode_header_map`) at `now` (unix seconds). Without a configuration every
    /// request is refused; a map that does not decode is the proxy's failure.
    pub fn on_request(&mut self, wire: &[u8], now: i64) -> Outcome {
        self.decide_request(None, wire, now)
    }

    /// `on_request` for Envoy's stream `stream`: a forward to a pod is also counted against
    /// the concurrency limits (`concurrent`) until `end_stream(stream)`, which the caller must
    /// make when the stream ends, however it ends.
    pub fn on_stream_request(&mut self, stream: u32, wire: &[u8], now: i64) -> Outcome {
        self.decide_request(Some(stream), wire, now)
    }

    fn decide_request(&mut self, stream: Option<u32>, wire: &[u8], now: i64) -> Outcome {
        let Gate {
            config,
            cache,
            memo,
            limiter,
            streams,
            ..
        } = self;
        let Some(config) = config.as_deref() else {
            return Outcome::Deny(Denial::NotConfigured);
        };
        // A request that repeats an earlier forward's inputs is answered from the serialized
        // map, without decoding it.
        let slot = match memo.probe(config, cache, wire, now) {
            memo::Probe::Hit(forward) => {
                let Some(limited) = over_limit(config, limiter, streams, stream, &forward, now)
                else {
                    return Outcome::Forward(forward);
                };
                // Rare: the request is decoded only to tell a page load from a script.
                let Ok(headers) = wire::decode_header_map(wire) else {
                    return Outcome::Deny(Denial::HostCallFailed);
                };
                return match Request::from_slices(&headers) {
                    Ok(request) => refusal(config, &request, limited),
                    Err(denial) => Outcome::Deny(denial),
                };
            }
            memo::Probe::Miss(slot) => slot,
        };
        // Borrowed: no header is copied; a non-UTF-8 name is refused by `from_slices`.
        let Ok(headers) = wire::decode_header_map(wire) else {
            return Outcome::Deny(Denial::HostCallFailed);
        };
        let request = match Request::from_slices(&headers) {
            Ok(request) => request,
            Err(denial) => return Outcome::Deny(denial),
        };
        match cors::preflight(config, &request.preflight_view()) {
            None => {}
            Some(Preflight::Refused(denial)) => return Outcome::Deny(denial),
            Some(Preflight::Allowed(reply)) => return Outcome::Preflight(reply),
        }
        match memo::decide_memoized(config, cache, memo, slot, &request, now) {
            Decision::Deny(Denial::NotRunning(status)) if config.wake && request.is_page_load() => {
                match decide::granted(config, cache, &request, now).and_then(|(pod, cap)| {
                    let call = wake::call(config, &pod.pod, &cap)?;
                    Some((pod, call))
                }) {
                    Some((pod, call)) => Outcome::Wake {
                        call,
                        page: crate::page::waking(&pod, status),
                    },
                    None => refusal(config, &request, Denial::NotRunning(status)),
                }
            }
            Decision::Deny(denial) => refusal(config, &request, denial),
            Decision::Renew {
                old,
                refusal: denial,
            } => Outcome::Renew(Rc::new(LapsedRenewal {
                old,
                otherwise: refusal(config, &request, denial),
            })),
            Decision::Forward(forward) => {
                match over_limit(config, limiter, streams, stream, &forward, now) {
                    Some(limited) => refusal(config, &request, limited),
                    None => Outcome::Forward(forward),
                }
            }
            decision => decision.into(),
        }
    }

    /// The edits for a forwarded pod response whose header map is `wire`; `pod` is what the
    /// forward kept of its request (`Forward::response`).
    pub fn on_response(
        &self,
        pod: &PodResponse,
        wire: &[u8],
    ) -> Result<Sanitized, ResponseFailure> {
        let config = self.config().ok_or(ResponseFailure::NotConfigured)?;
        let headers = wire::decode_header_map(wire)?;
        Ok(response::sanitize(config, pod, headers))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod edge_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod session_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod renewal_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod lapsed_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod exchange_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod page_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod resource_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod memo_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod credential_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod gate_call_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod service_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod token_cache_tests;
