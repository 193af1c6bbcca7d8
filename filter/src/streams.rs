//! The open streams each worker keeps until they end: WebSockets, renewed on their
//! capability and closed at its `exp`, and every other stream forwarded on a capability (server-
//! sent events, long polls, downloads), reset once a configuration cuts that capability off.

use std::rc::Rc;

use podgate_protocol::exchange::ExchangeKey;
use podgate_protocol::gate::Forward;
use podgate_protocol::token::Verified;

use crate::raw::{self, LogLevel};
use crate::renewals::{Renewal, SocketExchange};
use crate::{log, now_unix, Counter, Filter};

/// An open WebSocket: the capability it lives on (the one that opened it, or its renewal)
/// and when the tick renews it (`renewal::renew_at`).
pub(crate) struct OpenSocket {
    pub(crate) capability: Rc<Verified>,
    pub(crate) renew_at: Option<i64>,
    /// Opened on an API token: the exchange that renews its capability.
    pub(crate) exchange: Option<SocketExchange>,
}

/// An open stream that is not a WebSocket: the capability it was let through on, and when.
pub(crate) struct OpenStream {
    capability: Rc<Verified>,
    started_ms: i64,
}

/// How old a stream must be before a cut resets it: one in flight as the push lands (a request
/// answered in milliseconds) is let finish, and the tick, a second later, resets it if it is
/// still open. A client polling through a sign-out gets its answers, then the refusals.
const STREAM_CUT_GRACE_MS: i64 = 1000;

/// The clock in Unix milliseconds.
pub(crate) fn now_ms() -> Option<i64> {
    i64::try_from(raw::now_nanos().ok()? / 1_000_000).ok()
}

/// Resets these streams (Envoy resets each right after the callback, then deletes it); how
/// many were still open.
fn reset_streams(ids: &[u32]) -> u64 {
    let mut reset = 0;
    for &context_id in ids {
        match raw::set_effective_context(context_id).and_then(|()| raw::reset_stream()) {
            Ok(()) => reset += 1,
            // Already gone: nothing left to close.
            Err(status) => log(
                LogLevel::Debug,
                &format!("podgate: cannot reset stream {context_id}: {status:?}"),
            ),
        }
    }
    reset
}

impl Filter {
    /// Keeps the stream `context_id`, forwarded on a capability at `started_ms`, until it ends:
    /// a WebSocket to be renewed and closed at `exp`, any stream to be reset once its
    /// capability is cut off.
    pub(crate) fn track(&mut self, context_id: u32, forward: &Forward, started_ms: i64) {
        let Some(cap) = forward.capability.as_ref() else {
            return;
        };
        if forward.websocket {
            let socket = OpenSocket {
                capability: Rc::clone(cap),
                renew_at: forward.renew_at,
                exchange: forward.exchange.as_ref().map(|need| SocketExchange {
                    need: Rc::clone(need),
                    client: crate::access::client_address(),
                    next_try: 0,
                }),
            };
            self.websockets.insert(context_id, socket);
        } else {
            let stream = OpenStream {
                capability: Rc::clone(cap),
                started_ms,
            };
            self.streams.insert(context_id, stream);
        }
    }

    /// Closes every WebSocket whose capability has expired (unrenewed), is refused by the
    /// configuration in force (a signed-out session, access lost, revoked), or whose renewal
    /// the control plane refused. Run by the tick and by the configure callback. Envoy resets
    /// the stream right after the callback (`proxy_close_stream` on the stream made effective),
    /// then deletes it; the client sees the connection end once the listener's
    /// `delayed_close_timeout` has passed.
    pub(crate) fn close_expired_websockets(&mut self) {
        if self.websockets.is_empty() {
            // The common case: no host call at all.
            return;
        }
        let Some(now) = now_unix() else { return };
        let mut expired = Vec::new();
        let mut cut = Vec::new();
        for (id, socket) in self.websockets.iter() {
            let cap = &socket.capability;
            let renewal_refused = matches!(
                self.renewals.get(&cap.claims.jti),
                Some(Renewal::Refused { .. })
            );
            if now >= cap.expires_at {
                expired.push(*id);
            } else if self.gate.refuses(cap) || renewal_refused {
                cut.push(*id);
            }
        }
        let closed = self.close_websockets(&expired);
        self.metrics.bump(Counter::WebsocketExpired, closed);
        let closed = self.close_websockets(&cut);
        self.metrics.bump(Counter::WebsocketCut, closed);
    }

    /// Resets every other open stream whose capability the configuration in force refuses
    /// (a signed-out session, access lost, revoked, its signing key dropped), once it is older
    /// than [`STREAM_CUT_GRACE_MS`]. One still waiting for its capability's renewal is left to
    /// it: it is answered `401` when the call ends. Those left are looked at again by the tick
    /// (`recheck_streams`). Run by the configure callback, and by the tick while some are left.
    pub(crate) fn reset_cut_streams(&mut self) {
        self.recheck_streams = false;
        if self.streams.is_empty() {
            return;
        }
        let Some(now_ms) = now_ms() else {
            self.recheck_streams = true;
            return;
        };
        let waits_on_renewal = |id: u32| {
            self.renewals
                .values()
                .any(|r| matches!(r, Renewal::InFlight { waiting, .. } if waiting.contains(&id)))
        };
        let mut cut = Vec::new();
        let mut left = false;
        for (id, s) in self.streams.iter() {
            if !self.gate.refuses(&s.capability) {
                continue;
            }
            if now_ms.saturating_sub(s.started_ms) >= STREAM_CUT_GRACE_MS && !waits_on_renewal(*id)
            {
                cut.push(*id);
            } else {
                left = true;
            }
        }
        self.recheck_streams = left;
        for id in &cut {
            self.streams.remove(id);
        }
        let reset = reset_streams(&cut);
        self.metrics.bump(Counter::StreamCut, reset);
    }

    /// Closes the WebSockets opened on the API token exchange `key` stands for.
    pub(crate) fn close_exchanged_websockets(&mut self, key: &ExchangeKey) {
        let ids: Vec<u32> = self
            .websockets
            .iter()
            .filter(|(_, s)| s.exchange.as_ref().is_some_and(|e| e.need.key == *key))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let closed = self.close_websockets(&ids);
        self.metrics.bump(Counter::WebsocketCut, closed);
    }

    /// Closes these WebSockets; how many were still open.
    fn close_websockets(&mut self, ids: &[u32]) -> u64 {
        for context_id in ids {
            self.websockets.remove(context_id);
        }
        reset_streams(ids)
    }
}
