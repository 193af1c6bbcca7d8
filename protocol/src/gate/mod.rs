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
//!
//! A forwarded pod response goes through `response::sanitize`.

mod decide;
mod memo;
mod request;
mod token_cache;

use std::rc::Rc;

use crate::assertion::AssertionCache;
use crate::config::CompiledConfig;
use crate::cors::{self, Preflight};
use crate::renewal::{self, RenewalCall, Renewed};
use crate::reply::{Denial, Reply};
use crate::response::{self, PodResponse, Sanitized};
use crate::token::Verified;
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
    /// Forward after applying the edits, then clear the route cache (routing depends on the
    /// headers set).
    Forward(Rc<Forward>),
    /// Answer locally with `Denial::reply`; nothing is forwarded.
    Deny(Denial),
    /// A CORS preflight, answered locally with this reply; nothing is forwarded.
    Preflight(Reply),
    /// A path the filter answers itself (`/.podgate/userinfo`, `/.podgate/logout`), answered
    /// locally with this reply; nothing is forwarded.
    Answer(Reply),
}

impl From<Decision> for Outcome {
    fn from(decision: Decision) -> Self {
        match decision {
            Decision::Forward(forward) => Outcome::Forward(forward),
            Decision::Deny(denial) => Outcome::Deny(denial),
            Decision::Answer(reply) => Outcome::Answer(reply),
        }
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
    assertions: AssertionCache,
}

impl Gate {
    /// A gate with `config` in force.
    pub fn new(config: Rc<CompiledConfig>) -> Self {
        let mut gate = Gate::default();
        gate.configure(config);
        gate
    }

    /// Puts `config` in force. Keys, pods or revocations may have changed: nothing decided
    /// before is trusted, so both caches start empty.
    pub fn configure(&mut self, config: Rc<CompiledConfig>) {
        self.config = Some(config);
        self.cache.clear();
        self.memo.clear();
        self.assertions.clear();
    }

    /// The configuration in force, if any.
    pub fn config(&self) -> Option<&CompiledConfig> {
        self.config.as_deref()
    }

    /// Whether the configuration in force refuses `capability` now: revoked, cut off (a
    /// signed-out session, access lost), or no configuration at all. The filter asks it for
    /// the capabilities of open WebSockets, so that a push closes them too.
    pub fn refuses(&self, capability: &Verified) -> bool {
        self.config().is_none_or(|c| {
            c.revoked.contains(&capability.claims.jti) || c.cutoffs.refuses(capability)
        })
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
    /// costs no signature check.
    pub fn renewed(&mut self, old: &Verified, status: u32, body: &[u8], now: i64) -> Renewed {
        let Some(config) = self.config.as_deref() else {
            return Renewed::Failed;
        };
        let renewed = renewal::judge(config.in_force(), old, status, body, now);
        if let Renewed::Fresh { capability, .. } = &renewed {
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

    /// The identity assertion for a forward to a pod at `now` (`assertion`): `None` on the
    /// reserved path and when assertions are off. Signed once per capability and worker per
    /// half assertion lifetime; every other call hands out the cached value.
    pub fn assertion(&mut self, forward: &Forward, now: i64) -> Option<Rc<str>> {
        let config = self.config.as_deref()?;
        let signer = config.assertion.as_ref()?;
        let capability = forward.capability.as_deref()?;
        forward.response.as_ref()?;
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
        let Gate {
            config,
            cache,
            memo,
            ..
        } = self;
        let Some(config) = config.as_deref() else {
            return Outcome::Deny(Denial::NotConfigured);
        };
        // A request that repeats an earlier forward's inputs is answered from the serialized
        // map, without decoding it.
        let slot = match memo.probe(config, cache, wire, now) {
            memo::Probe::Hit(forward) => return Outcome::Forward(forward),
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
        memo::decide_memoized(config, cache, memo, slot, &request, now).into()
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
