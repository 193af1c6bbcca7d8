//! Renewing capabilities at the edge, the filter's side: one call per capability and worker
//! when it enters its renewal window (`podgate_protocol::renewal`), for a request that waits for
//! it or for the open WebSockets living on it, or once it lapsed, for the requests that wait
//! for it to be decided again (`Outcome::Renew`).

use std::rc::Rc;

use podgate_protocol::exchange::ExchangeNeeded;
use podgate_protocol::gate::LapsedRenewal;
use podgate_protocol::renewal::{self, Renewed};
use podgate_protocol::reply::Denial;
use podgate_protocol::token::{TokenError, Verified};

use crate::access::record;
use crate::raw::{self, LogLevel, MapType};
use crate::{log, now_unix, Action, Counter, Filter, Resume};

/// Where the renewal of one capability stands, in one worker.
pub(crate) enum Renewal {
    /// The call is in flight; these streams wait for it (bounded by the call's timeout):
    /// `waiting`, forwarded already on the old capability, and `undecided`, whose capability
    /// lapsed, to be decided again. Past `lost_at` it is taken as lost: Envoy cancels a call,
    /// unanswered, when the stream or root context that made it goes (a client that hung up
    /// while its request waited).
    InFlight {
        old: Rc<Verified>,
        waiting: Vec<u32>,
        undecided: Vec<u32>,
        lost_at: i64,
    },
    /// Renewed: requests still carrying the old capability get this cookie too.
    Fresh {
        capability: Rc<Verified>,
        set_cookie: Rc<str>,
        until: i64,
    },
    /// The control plane refused: no more calls for it; the old one lives out its lifetime.
    Refused { until: i64 },
    /// No usable answer: tried again from `retry_at`.
    Failed { retry_at: i64, until: i64 },
}

impl Renewal {
    /// Whether the entry is still of use at `now` (`kept_until`: five minutes past the old
    /// capability's `exp`, or past the renewal of a lapsed one).
    pub(crate) fn live(&self, now: i64) -> bool {
        match self {
            Renewal::InFlight { lost_at, .. } => now <= *lost_at,
            Renewal::Fresh { until, .. }
            | Renewal::Refused { until }
            | Renewal::Failed { until, .. } => now <= *until,
        }
    }
}

/// Most renewals one worker remembers; past it, capabilities are not renewed until old entries
/// expire (they then go on until their own `exp`).
const MAX_RENEWALS: usize = 4096;
/// How long an entry outlives the old capability's `exp`: the verification leeway's maximum.
const RENEWAL_KEPT_SECS: i64 = 300;
/// How long after a failed renewal the next request tries again.
const RENEWAL_RETRY_SECS: i64 = 5;
/// How a WebSocket opened on an API token is renewed: the exchange (`Forward::exchange`), the
/// address of the client that opened it (the control plane limits failed tokens per client),
/// and when the tick may ask the control plane again (unix seconds).
#[derive(Clone)]
pub(crate) struct SocketExchange {
    pub(crate) need: Rc<ExchangeNeeded>,
    pub(crate) client: String,
    pub(crate) next_try: i64,
}

/// How long past its timeout a call still counts as in flight, before it is taken as lost.
const RENEWAL_LOST_AFTER_SECS: i64 = 2;

impl Filter {
    /// Renews the capabilities of open WebSockets that reached their renewal time: a fresh
    /// one already there replaces it; otherwise one call per capability starts (owned by the
    /// root context, as the tick runs there, so no stream waits on it).
    pub(crate) fn renew_websockets(&mut self) {
        if self.websockets.is_empty() {
            return;
        }
        let Some(now) = now_unix() else { return };
        let due: Vec<u32> = self
            .websockets
            .iter()
            .filter(|(_, s)| renewal::due(s.renew_at, now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(socket) = self.websockets.get(&id) else {
                continue;
            };
            let old = Rc::clone(&socket.capability);
            if let Some(exchange) = socket.exchange.clone() {
                self.renew_exchanged_socket(id, &old, exchange, now);
                continue;
            }
            match self.renewals.get(&old.claims.jti) {
                Some(Renewal::Fresh { capability, .. }) => {
                    let capability = Rc::clone(capability);
                    self.renew_socket(id, capability);
                }
                Some(Renewal::InFlight { .. } | Renewal::Refused { .. }) => {}
                Some(Renewal::Failed { retry_at, .. }) if now < *retry_at => {}
                _ => {
                    self.start_renewal(&old, now, None);
                }
            }
        }
    }

    /// Renews the capability `old` of WebSocket `id`, opened on an API token (`exchange`): a
    /// capability exchanged for the token since (by this tick's call, or a request's) replaces
    /// it; otherwise the token is exchanged again, at most every `RENEWAL_RETRY_SECS`. A
    /// refused token (revoked, access lost) closes the socket when the answer comes
    /// (`close_exchanged_websockets`); a call that fails leaves it until `old`'s `exp`.
    fn renew_exchanged_socket(
        &mut self,
        id: u32,
        old: &Rc<Verified>,
        mut exchange: SocketExchange,
        now: i64,
    ) {
        // Another capability, lasting at least as long (one that ends sooner, under a lifetime
        // lowered since, would cut the socket short): the token is exchanged again instead.
        let fresh = self
            .gate
            .exchanged_capability(&exchange.need, now)
            .filter(|c| c.claims.jti != old.claims.jti && c.expires_at >= old.expires_at);
        if let Some(capability) = fresh {
            // Renewed again from its own renewal time, unless the token ends with it (its
            // capabilities end no later than the token): then it closes at its `exp`.
            let renew_at = (capability.expires_at > old.expires_at)
                .then(|| {
                    let before = self.gate.config()?.renewal.as_ref()?.before_secs;
                    Some(capability.expires_at.saturating_sub(before))
                })
                .flatten();
            exchange.next_try = 0;
            if let Some(socket) = self.websockets.get_mut(&id) {
                socket.capability = capability;
                socket.renew_at = renew_at;
                socket.exchange = Some(exchange);
            }
            return;
        }
        if now < exchange.next_try {
            return;
        }
        self.exchange_in_background(&exchange.need, &exchange.client, now);
        exchange.next_try = now + RENEWAL_RETRY_SECS;
        if let Some(socket) = self.websockets.get_mut(&id) {
            socket.exchange = Some(exchange);
        }
    }

    /// The WebSocket `id` lives on `capability` from now on.
    fn renew_socket(&mut self, id: u32, capability: Rc<Verified>) {
        let renew_at = renewal::renew_at(
            self.gate.config().and_then(|c| c.renewal.as_ref()),
            &capability,
            true,
        );
        if let Some(socket) = self.websockets.get_mut(&id) {
            socket.capability = capability;
            socket.renew_at = renew_at;
        }
    }

    /// Starts the renew call for `old`, on the root context for stream `on_behalf` (then back
    /// to it) when one is given, so that the streams joining it are answered even when that
    /// one's client hangs up; whether it is in flight.
    fn start_renewal(&mut self, old: &Rc<Verified>, now: i64, on_behalf: Option<u32>) -> bool {
        let jti = &old.claims.jti;
        if self.renewals.len() >= MAX_RENEWALS && !self.renewals.contains_key(jti) {
            return false;
        }
        let Some(call) = self.gate.renewal_call(old) else {
            return false;
        };
        let headers = podgate_protocol::wire::encode_header_map(&call.headers);
        let lost_at = now + i64::from(call.timeout_ms.div_ceil(1000)) + RENEWAL_LOST_AFTER_SECS;
        let made = match on_behalf {
            Some(id) => {
                let (made, back) =
                    self.http_call_on_root(id, call.cluster, &headers, call.timeout_ms);
                match (made, back) {
                    (Ok(_), Err(status)) | (Err(status), _) => Err(status),
                    (Ok(token), Ok(())) => Ok(token),
                }
            }
            None => raw::http_call(call.cluster, &headers, b"", call.timeout_ms),
        };
        match made {
            Ok(token) => {
                self.calls.insert(token, jti.clone());
                self.renewals.insert(
                    jti.clone(),
                    Renewal::InFlight {
                        old: Rc::clone(old),
                        waiting: Vec::new(),
                        undecided: Vec::new(),
                        lost_at,
                    },
                );
                true
            }
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("podgate: cannot call the control plane to renew: {status:?}"),
                );
                self.metrics.bump(Counter::RenewalFailed, 1);
                self.renewals.insert(
                    jti.clone(),
                    Renewal::Failed {
                        retry_at: now + RENEWAL_RETRY_SECS,
                        until: kept_until(old, now),
                    },
                );
                false
            }
        }
    }

    /// A request with a capability due for renewal: a fresh one already there goes on its
    /// response; otherwise the first such request starts the call and waits for it (bounded
    /// by the call's timeout), and the others go on with the old capability meanwhile.
    pub(crate) fn renew_for_request(
        &mut self,
        context_id: u32,
        old: &Rc<Verified>,
        now: i64,
    ) -> Action {
        match self.renewals.get_mut(&old.claims.jti) {
            Some(Renewal::Fresh { set_cookie, .. }) => {
                self.set_cookies.insert(context_id, Rc::clone(set_cookie));
                Action::Continue
            }
            Some(Renewal::InFlight { .. } | Renewal::Refused { .. }) => Action::Continue,
            Some(Renewal::Failed { retry_at, .. }) if now < *retry_at => Action::Continue,
            _ => {
                if !self.start_renewal(old, now, None) {
                    return Action::Continue;
                }
                if let Some(Renewal::InFlight { waiting, .. }) =
                    self.renewals.get_mut(&old.claims.jti)
                {
                    waiting.push(context_id);
                }
                Action::Pause
            }
        }
    }

    /// A request whose cookie capability lapsed (`Outcome::Renew`): it joins the renewal in
    /// flight, or starts one, and waits to be decided again; a capability whose renewal was
    /// refused, failed a moment ago or cannot be made gets `otherwise` at once.
    pub(crate) fn renew_lapsed(
        &mut self,
        context_id: u32,
        lapsed: &LapsedRenewal,
        now: i64,
    ) -> Action {
        let old = &lapsed.old;
        match self.renewals.get_mut(&old.claims.jti) {
            Some(Renewal::InFlight { undecided, .. }) => {
                undecided.push(context_id);
                return Action::Pause;
            }
            // Never renewed, or renewed with a fresh capability the gate no longer holds (its
            // entry aged out or made room, or it was withdrawn: the control plane checks
            // again), or failed a while ago: renewed now.
            None | Some(Renewal::Fresh { .. }) => {}
            Some(Renewal::Failed { retry_at, .. }) if now >= *retry_at => {}
            // Refused, or failed a moment ago: what an expired capability gets.
            Some(_) => return self.act_otherwise(context_id, lapsed, now),
        }
        if !self.start_renewal(old, now, Some(context_id)) {
            return self.act_otherwise(context_id, lapsed, now);
        }
        if let Some(Renewal::InFlight { undecided, .. }) = self.renewals.get_mut(&old.claims.jti) {
            undecided.push(context_id);
        }
        Action::Pause
    }

    /// A lapsed capability that is not renewed now: its request gets `otherwise`, in the access
    /// log too.
    fn act_otherwise(&mut self, context_id: u32, lapsed: &LapsedRenewal, now: i64) -> Action {
        record(&lapsed.otherwise);
        self.act(context_id, lapsed.otherwise.clone(), now)
    }

    /// Forgets the renewals past their use at `now` (`Renewal::live`); a call taken as lost goes
    /// with its entry, and the requests still waiting on it to be decided again are decided
    /// now (a lapsed capability's refusal, as the renewal is not to be had): what becomes of
    /// each, for the caller once the filter is released.
    pub(crate) fn forget_renewals(&mut self, now: i64) -> Vec<(u32, Resume)> {
        let mut stranded = Vec::new();
        for renewal in self.renewals.values_mut() {
            if let Renewal::InFlight {
                undecided, lost_at, ..
            } = renewal
            {
                if now > *lost_at {
                    stranded.append(undecided);
                }
            }
        }
        self.renewals.retain(|_, r| r.live(now));
        let renewals = &self.renewals;
        self.calls
            .retain(|_, jti| matches!(renewals.get(jti), Some(Renewal::InFlight { .. })));
        stranded
            .into_iter()
            .filter_map(|id| self.decide_again(id, now).map(|resume| (id, resume)))
            .collect()
    }

    /// The control plane answered a renew call (or the call failed); the streams that waited
    /// for it, and what becomes of each: those forwarded already go on, unless a push cut their
    /// capability off while they waited (a sign-out, lost access); those whose capability
    /// lapsed are decided again, on the fresh capability if there is one.
    pub(crate) fn on_renewal_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) -> Vec<(u32, Resume)> {
        let Some(jti) = self.calls.remove(&token) else {
            return Vec::new();
        };
        let Some(Renewal::InFlight {
            old,
            waiting,
            undecided,
            ..
        }) = self.renewals.remove(&jti)
        else {
            return Vec::new();
        };
        let status = if num_headers == 0 {
            0
        } else {
            raw::header_map_bytes(MapType::HttpCallResponseHeaders)
                .map_or(0, |h| renewal::call_status(&h))
        };
        let body = if body_size == 0 {
            Vec::new()
        } else {
            raw::http_call_body(body_size).unwrap_or_default()
        };
        let now = now_unix();
        let renewed = match now {
            Some(now) => self.gate.renewed(&old, status, &body, now),
            None => Renewed::Failed,
        };
        let now = now.unwrap_or(0);
        let until = kept_until(&old, now);
        let state = match renewed {
            Renewed::Fresh {
                capability,
                set_cookie,
            } => {
                self.metrics.bump(Counter::Renewed, 1);
                for id in &waiting {
                    self.set_cookies.insert(*id, Rc::clone(&set_cookie));
                }
                let sockets: Vec<u32> = self
                    .websockets
                    .iter()
                    .filter(|(_, s)| s.capability.claims.jti == jti)
                    .map(|(id, _)| *id)
                    .collect();
                for id in sockets {
                    self.renew_socket(id, Rc::clone(&capability));
                }
                Renewal::Fresh {
                    capability,
                    set_cookie,
                    until,
                }
            }
            Renewed::Refused => {
                self.metrics.bump(Counter::RenewalRefused, 1);
                Renewal::Refused { until }
            }
            Renewed::Failed => {
                log(
                    LogLevel::Info,
                    &format!("podgate: renewal failed (status {status}); the capability goes on"),
                );
                self.metrics.bump(Counter::RenewalFailed, 1);
                Renewal::Failed {
                    retry_at: now + RENEWAL_RETRY_SECS,
                    until,
                }
            }
        };
        self.renewals.insert(jti, state);
        let mut resumed: Vec<(u32, Resume)> = undecided
            .into_iter()
            .filter_map(|id| self.decide_again(id, now).map(|resume| (id, resume)))
            .collect();
        if !self.gate.refuses(&old) {
            resumed.extend(waiting.into_iter().map(|id| (id, Resume::Continue)));
            return resumed;
        }
        // Edited for the pod already but not yet forwarded: answered as any request on a
        // withdrawn capability, without the sign-in redirect (the request's own host and path
        // are gone from its headers).
        let reply = Denial::InvalidCapability {
            reason: TokenError::Revoked,
            redirect: None,
        }
        .reply();
        resumed.extend(self.refuse_waiting(waiting, &reply));
        resumed
    }
}

/// Until when the outcome of `old`'s renewal is kept: five minutes past its `exp`, or past
/// `now` for one that lapsed, so that a refused renewal is not asked again on every request.
fn kept_until(old: &Verified, now: i64) -> i64 {
    old.expires_at.max(now).saturating_add(RENEWAL_KEPT_SECS)
}
