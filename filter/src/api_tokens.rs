//! API tokens at the edge, the filter's side: a request with an API token not yet exchanged
//! waits for one call to the control plane per token, pod and port (`podgate_protocol::exchange`),
//! then is decided again.

use std::rc::Rc;

use podgate_protocol::exchange::{self, ExchangeNeeded};
use podgate_protocol::gate::Outcome;
use podgate_protocol::renewal;
use podgate_protocol::reply::Denial;

use crate::access::{self, record};
use crate::raw::{self, LogLevel, MapType};
use crate::{apply_request, log, now_unix, Action, Counter, Filter, Resume};

/// An exchange in flight: the streams waiting for it, and when it started (unix seconds).
pub(crate) struct PendingExchange {
    waiting: Vec<u32>,
    started: i64,
}

/// How long after its start an exchange call is taken as lost (its answer is due within
/// the call's timeout, at most `renewal::MAX_TIMEOUT_MS`).
const EXCHANGE_LOST_SECS: i64 = 15;

impl Filter {
    /// A request with an API token not yet exchanged for this pod and port waits for the
    /// control plane: it joins the call in flight for the same key, or starts one if fewer
    /// than `exchange::MAX_IN_FLIGHT` are; beyond that it is answered 429 at once.
    pub(crate) fn start_exchange(&mut self, context_id: u32, need: Rc<ExchangeNeeded>) -> Action {
        let Some(now) = now_unix() else {
            access::record_refusal(Denial::HostCallFailed.reason());
            return self.deny(&Denial::HostCallFailed);
        };
        self.forget_lost_exchanges(now);
        if let Some(pending) = self.exchanges.get_mut(&need.key) {
            pending.waiting.push(context_id);
            return Action::Pause;
        }
        let client = access::client_address();
        if let Some(wait) = self.backoff.waiting(&client, now) {
            return self.deny(&Denial::ExchangeBusy(wait));
        }
        if self.exchanges.len() >= exchange::MAX_IN_FLIGHT {
            return self.deny(&Denial::ExchangeBusy(exchange::RETRY_AFTER_SECS));
        }
        let given = Some(client.as_str()).filter(|c| !c.is_empty());
        let Some(call) = self.gate.exchange_call(&need, given) else {
            return self.deny(&Denial::ExchangeFailed);
        };
        let headers = podgate_protocol::wire::encode_header_map(&call.headers);
        // On the root context, so that the requests that join the call are still answered
        // when this one's client gives up.
        let (made, back) =
            self.http_call_on_root(context_id, call.cluster, &headers, call.timeout_ms);
        if let Err(status) = back {
            return self.host_failed("returning to the request after the exchange call", status);
        }
        match made {
            Ok(token) => {
                self.metrics.bump(Counter::ExchangeCalls, 1);
                let pending = PendingExchange {
                    waiting: vec![context_id],
                    started: now,
                };
                self.exchanges.insert(need.key, pending);
                self.exchange_calls.insert(token, (need, client));
                Action::Pause
            }
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("podgate: cannot call the control plane to exchange: {status:?}"),
                );
                self.deny(&Denial::ExchangeFailed)
            }
        }
    }

    /// Forgets the exchange calls never answered (they cannot be, but a lost one must not hold
    /// its key and a slot for good).
    fn forget_lost_exchanges(&mut self, now: i64) {
        if self
            .exchanges
            .values()
            .any(|p| now.saturating_sub(p.started) > EXCHANGE_LOST_SECS)
        {
            self.exchanges
                .retain(|_, p| now.saturating_sub(p.started) <= EXCHANGE_LOST_SECS);
            let live = &self.exchanges;
            self.exchange_calls
                .retain(|_, (need, _)| live.contains_key(&need.key));
        }
    }

    /// Exchanges API token `need` again with nobody waiting (an open WebSocket's renewal, from
    /// the tick, on the root context): the answer goes to the exchange cache, where the next
    /// tick finds it. Nothing when an exchange for the same key is in flight or too many are.
    pub(crate) fn exchange_in_background(
        &mut self,
        need: &Rc<ExchangeNeeded>,
        client: &str,
        now: i64,
    ) {
        self.forget_lost_exchanges(now);
        if self.exchanges.contains_key(&need.key) || self.exchanges.len() >= exchange::MAX_IN_FLIGHT
        {
            return;
        }
        let given = Some(client).filter(|c| !c.is_empty());
        let Some(call) = self.gate.exchange_call(need, given) else {
            return;
        };
        let headers = podgate_protocol::wire::encode_header_map(&call.headers);
        match raw::http_call(call.cluster, &headers, b"", call.timeout_ms) {
            Ok(token) => {
                self.metrics.bump(Counter::ExchangeCalls, 1);
                let pending = PendingExchange {
                    waiting: Vec::new(),
                    started: now,
                };
                self.exchanges.insert(need.key, pending);
                self.exchange_calls
                    .insert(token, (Rc::clone(need), client.to_owned()));
            }
            Err(status) => log(
                LogLevel::Error,
                &format!("podgate: cannot call the control plane to exchange: {status:?}"),
            ),
        }
    }

    /// The control plane answered an exchange call (or the call failed: no headers): the
    /// answer is judged and remembered, and every stream that waited is decided again (a
    /// forward has its edits applied here) or gets the refusal. What to do with each, for the
    /// caller once the filter is released.
    pub(crate) fn on_exchange_response(
        &mut self,
        need: &ExchangeNeeded,
        client: &str,
        num_headers: usize,
        body_size: usize,
    ) -> Vec<(u32, Resume)> {
        let waiting = self
            .exchanges
            .remove(&need.key)
            .map(|p| p.waiting)
            .unwrap_or_default();
        let (status, retry_after) = if num_headers == 0 {
            (0, None)
        } else {
            raw::header_map_bytes(MapType::HttpCallResponseHeaders).map_or((0, None), |h| {
                (renewal::call_status(&h), exchange::call_retry_after(&h))
            })
        };
        let body = if body_size == 0 {
            Vec::new()
        } else {
            raw::http_call_body(body_size).unwrap_or_default()
        };
        let Some(now) = now_unix() else {
            return self.refuse_waiting(waiting, &Denial::HostCallFailed.reply());
        };
        if let Err(denial) = self.gate.exchanged(need, status, retry_after, &body, now) {
            if let (Denial::ExchangeBusy(secs), false) = (&denial, client.is_empty()) {
                self.backoff.back_off(client, *secs, now);
            }
            // The token is refused (revoked, expired, access lost): the WebSockets it opened
            // end now, as a browser's do when its renewal is refused.
            if matches!(denial, Denial::ApiTokenRefused | Denial::ApiTokenNotAllowed) {
                self.close_exchanged_websockets(&need.key);
            }
            if status == 0 || denial == Denial::ExchangeFailed {
                log(
                    LogLevel::Error,
                    &format!("podgate: API-token exchange failed (status {status})"),
                );
            }
            return self.refuse_waiting(waiting, &denial.reply());
        }
        self.metrics.bump(Counter::ExchangeGranted, 1);
        waiting
            .into_iter()
            .filter_map(|id| self.decide_again(id, now).map(|resume| (id, resume)))
            .collect()
    }

    /// Decides the waiting stream `context_id` again, now that its exchange or its lapsed
    /// capability's renewal is known; `None` when the stream is gone.
    pub(crate) fn decide_again(&mut self, context_id: u32, now: i64) -> Option<Resume> {
        raw::set_effective_context(context_id).ok()?;
        let bytes = raw::header_map_bytes(MapType::HttpRequestHeaders).ok()?;
        let outcome = self.decide_counted(context_id, &bytes, now);
        Some(self.resume_with(context_id, outcome, now))
    }

    /// What becomes of the waiting stream `context_id` (effective now) decided `outcome`.
    fn resume_with(&mut self, context_id: u32, outcome: Outcome, now: i64) -> Resume {
        let refuse = |f: &mut Filter, denial: Denial| {
            let reply = denial.reply();
            f.metrics.denied(reply.reason);
            Resume::Reply(reply)
        };
        record(&outcome);
        match outcome {
            Outcome::Forward(forward) => {
                if let Err(status) = apply_request(&forward.edits)
                    .and_then(|()| raw::call_foreign_function("clear_route_cache"))
                    .and_then(|()| self.set_assertion(&forward, now))
                {
                    log(
                        LogLevel::Error,
                        &format!("podgate: editing an exchanged request failed: {status:?}"),
                    );
                    access::record_refusal(Denial::HostCallFailed.reason());
                    return refuse(self, Denial::HostCallFailed);
                }
                if let Some(cookie) = forward.set_cookie.as_ref() {
                    self.set_cookies.insert(context_id, Rc::clone(cookie));
                }
                if forward.response.is_some() {
                    self.responses.insert(context_id, Rc::clone(&forward));
                }
                // Forwarded now, after its call: its age counts from here.
                let started_ms = crate::streams::now_ms().unwrap_or(0);
                self.track(context_id, &forward, started_ms);
                self.metrics.bump(Counter::Allowed, 1);
                Resume::Continue
            }
            Outcome::Deny(denial) => refuse(self, denial),
            Outcome::Page(reply) => {
                self.metrics.denied(reply.reason);
                Resume::Reply(reply)
            }
            Outcome::Wake { call, page } => {
                self.wake(context_id, &call, now);
                self.metrics.denied(page.reason);
                Resume::Reply(page)
            }
            Outcome::Preflight(reply) | Outcome::Answer(reply) => Resume::Reply(reply),
            // Judged and recorded, yet not found: never forwarded on a guess.
            Outcome::Exchange(_) => refuse(self, Denial::ExchangeFailed),
            // The renewal was refused or failed (a fresh capability would have decided it):
            // the refusal it would have had without one.
            Outcome::Renew(lapsed) => self.resume_with(context_id, lapsed.otherwise.clone(), now),
        }
    }
}
