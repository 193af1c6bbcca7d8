//! The proxy-wasm adapter: host calls in, decisions out. Every decision is made by a
//! `podgate_protocol::gate::Gate`; this file only moves bytes between Envoy and it: it reads the
//! serialized header map, calls `Gate::on_request` (or `Gate::on_response`) and applies the
//! outcome.
//!
//! Fail closed: without a compiled configuration every request gets a 500 and nothing is
//! forwarded; a host call that fails gets a 500 of its own (`denied.host_error`). Host calls go
//! through `raw`, whose errors are values, never panics.
//!
//! The filter speaks the proxy-wasm ABI itself (`abi`) rather than through an SDK, so that it
//! exports only the callbacks it needs: Envoy enters the VM once for every exported callback of
//! every stream, and each entry costs more Envoy CPU than podgate's whole cached decision.
//! Per request: `proxy_on_request_headers`, `proxy_on_response_headers` and `proxy_on_delete`;
//! no context-create, body, log or done callbacks. `proxy_on_http_call_response` is entered
//! only for the answer to a capability renewal (`renewal`), once per capability and worker,
//! or to an API-token exchange (`exchange`), once per token, pod, port and worker.
//!
//! Beside this file: `renewals` (the renew calls and where each capability's renewal stands),
//! `api_tokens` (the exchange calls and the requests waiting for them) and `access` (the
//! access log's filter state).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use podgate_protocol::assertion::ASSERTION_HEADER;
use podgate_protocol::config::FilterConfig;
use podgate_protocol::exchange::{self, ExchangeKey, ExchangeNeeded};
use podgate_protocol::gate::{Forward, Gate, HeaderEdit, Outcome};
use podgate_protocol::renewal;
use podgate_protocol::reply::{Denial, Reply};
use podgate_protocol::response::ResponseEdit;
use podgate_protocol::wake::{self, WakeCall};

mod abi;
mod access;
mod api_tokens;
mod raw;
mod renewals;
mod streams;

use access::record;
use api_tokens::PendingExchange;
use raw::{LogLevel, MapType};
use renewals::Renewal;
use streams::{OpenSocket, OpenStream};

/// How often the root context flushes the counters and looks for WebSockets whose capability
/// expired.
const TICK_MS: u32 = 1000;

/// What a callback tells Envoy to do with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Action {
    Continue = 0,
    Pause = 1,
}

/// The filter's counters. Counts add up in the VM and reach Envoy once a second, from the
/// tick (`flush`): an `increment_metric` per request and counter cost more Envoy CPU than the
/// cached decision. Envoy's stats lag by at most one tick; a VM that dies loses at most that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum Counter {
    Allowed,
    Callback,
    CacheHits,
    CacheMisses,
    Preflight,
    CookiesDropped,
    CorsStripped,
    WebsocketExpired,
    ResponseFailed,
    Answered,
    WebsocketCut,
    Renewed,
    RenewalRefused,
    RenewalFailed,
    ExchangeCalls,
    ExchangeGranted,
    AssertionSigned,
    StreamCut,
}

impl Counter {
    const ALL: [(Counter, &'static str); 18] = [
        (Counter::Allowed, "podgate.allowed"),
        (Counter::Callback, "podgate.callback"),
        (Counter::CacheHits, "podgate.token_cache.hits"),
        (Counter::CacheMisses, "podgate.token_cache.misses"),
        (Counter::Preflight, "podgate.preflight"),
        (
            Counter::CookiesDropped,
            "podgate.response.set_cookie_dropped",
        ),
        (Counter::CorsStripped, "podgate.response.cors_stripped"),
        (Counter::WebsocketExpired, "podgate.websocket.expired"),
        (Counter::ResponseFailed, "podgate.response.failed"),
        (Counter::Answered, "podgate.answered"),
        (Counter::WebsocketCut, "podgate.websocket.cut"),
        (Counter::Renewed, "podgate.renewal.renewed"),
        (Counter::RenewalRefused, "podgate.renewal.refused"),
        (Counter::RenewalFailed, "podgate.renewal.failed"),
        (Counter::ExchangeCalls, "podgate.exchange.calls"),
        (Counter::ExchangeGranted, "podgate.exchange.granted"),
        (Counter::AssertionSigned, "podgate.assertion.signed"),
        (Counter::StreamCut, "podgate.stream.cut"),
    ];
}

/// Counter ids, defined once per VM (`podgate.denied.<reason>` after the named ones), and the
/// counts not yet handed to Envoy, by the same index.
#[derive(Debug, Default, Clone)]
struct Metrics {
    ids: Vec<Option<u32>>,
    pending: Vec<u64>,
}

impl Metrics {
    fn define() -> Self {
        let counter = |name: &str| raw::define_counter(name).ok();
        let mut ids: Vec<Option<u32>> =
            Counter::ALL.iter().map(|(_, name)| counter(name)).collect();
        ids.extend(
            Denial::ALL_REASONS
                .iter()
                .map(|r| counter(&format!("podgate.denied.{r}"))),
        );
        let pending = vec![0; ids.len()];
        Metrics { ids, pending }
    }

    fn add(&mut self, index: usize, by: u64) {
        if let Some(count) = self.pending.get_mut(index) {
            *count = count.saturating_add(by);
        }
    }

    fn bump(&mut self, counter: Counter, by: u64) {
        self.add(counter as usize, by);
    }

    fn denied(&mut self, reason: &str) {
        if let Some(at) = Denial::ALL_REASONS.iter().position(|r| *r == reason) {
            self.add(Counter::ALL.len() + at, 1);
        }
    }

    /// Hands every pending count to Envoy.
    fn flush(&mut self) {
        for (id, count) in self.ids.iter().zip(self.pending.iter_mut()) {
            if let (Some(id), Ok(by @ 1..)) = (id, i64::try_from(*count)) {
                let _ = raw::increment_counter(*id, by);
            }
            *count = 0;
        }
    }
}

/// One worker's filter: its gate (the compiled config and the caches), its counters, and what
/// open streams need later. Envoy runs one VM per worker thread and never calls into it
/// concurrently.
#[derive(Default)]
struct Filter {
    gate: Gate,
    metrics: Metrics,
    /// Streams forwarded to a pod, until their response headers (or their end): the forward,
    /// which holds what sanitizing the response needs.
    responses: ByContext<Rc<Forward>>,
    /// Open WebSockets to pods, closed by the tick at their capability's `exp` or once its
    /// renewal is refused, and as soon as a configuration that cuts it off arrives (the tick
    /// looks again).
    websockets: ByContext<OpenSocket>,
    /// Every other open stream forwarded on a capability (a long poll, server-sent events, a
    /// download or upload), reset once a configuration that cuts its capability off arrives.
    /// Not at `exp`: a request is judged when it starts, as `jwt_authn` judges it.
    streams: ByContext<OpenStream>,
    /// When the request being decided arrived (Unix milliseconds): the clock read it costs
    /// anyway, kept for the stream it may open.
    request_ms: i64,
    /// Whether the last look at `streams` left some that are cut off (in flight, or waiting on
    /// a renewal) for the tick.
    recheck_streams: bool,
    /// Renewals by the renewed capability's `jti`: at most one call in flight per capability,
    /// and its outcome for the requests that still carry the old one.
    renewals: HashMap<String, Renewal>,
    /// The renew calls in flight: Envoy's call token → the old capability's `jti`.
    calls: HashMap<u32, String>,
    /// Streams whose response gets a renewed capability's cookie (empty but around a renewal,
    /// so the response path looks it up only then).
    set_cookies: ByContext<Rc<str>>,
    /// When this worker last asked the control plane to start each pod (`wake`).
    wakes: HashMap<String, i64>,
    /// API-token exchanges in flight, by cache key: the streams waiting for each (at most
    /// `exchange::MAX_IN_FLIGHT` keys; requests with the same token, pod and port share one
    /// call).
    exchanges: HashMap<ExchangeKey, PendingExchange>,
    /// The exchange calls in flight: Envoy's call token → what was asked, and for which
    /// client.
    exchange_calls: HashMap<u32, (Rc<ExchangeNeeded>, String)>,
    /// Clients the control plane limits: refused here until their wait is over.
    backoff: exchange::ClientBackoff,
    /// The root context, which owns the exchange calls: a call owned by a stream is cancelled,
    /// unanswered, when that stream ends, and the requests that joined it would wait on.
    root_context: Option<u32>,
}

/// What becomes of a stream that waited for an HTTP call, once the filter is released.
pub(crate) enum Resume {
    /// Let it go on (its edits, if any, are applied).
    Continue,
    /// Answer it locally; nothing is forwarded.
    Reply(Reply),
}

/// Most pods one worker remembers asking to start; past it, older entries go first.
const MAX_WAKES: usize = 4096;
/// Per-stream state by Envoy's context id. Ids are Envoy's counter, not the client's, so they
/// need no keyed hash, and a keyed one would be a visible share of a cached request.
type ByContext<V> = HashMap<u32, V, BuildHasherDefault<ContextIdHasher>>;

/// A context id times a 64-bit odd constant (Fibonacci hashing): distinct ids stay distinct
/// in the low bits and spread over the high ones.
#[derive(Default)]
struct ContextIdHasher(u64);

impl Hasher for ContextIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

fn log(level: LogLevel, message: &str) {
    raw::log(level, message);
}

/// Asks Envoy to call `proxy_on_tick` every `TICK_MS` on the current root context.
fn start_ticking() {
    if let Err(status) = raw::set_tick_period_ms(TICK_MS) {
        // Counters would not reach Envoy, and only the tick closes expired WebSockets.
        log(
            LogLevel::Error,
            &format!("podgate: cannot set the tick period: {status:?}"),
        );
    }
}

fn now_unix() -> Option<i64> {
    i64::try_from(raw::now_nanos().ok()? / 1_000_000_000).ok()
}

/// Answers locally; nothing is forwarded.
fn answer(reply: &Reply) -> Action {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    if let Err(status) = raw::send_local_response(reply.status, &headers, reply.body.as_bytes()) {
        log(
            LogLevel::Error,
            &format!("podgate: local reply failed: {status:?}"),
        );
    }
    Action::Pause
}

fn apply_request(edits: &[HeaderEdit]) -> Result<(), raw::HostStatus> {
    let map = MapType::HttpRequestHeaders;
    for edit in edits {
        match edit {
            HeaderEdit::Remove(name) => raw::remove_header(map, name.as_bytes())?,
            HeaderEdit::Set(name, value) => {
                raw::replace_header(map, name.as_bytes(), value.as_bytes())?
            }
        }
    }
    Ok(())
}

fn apply_response(edits: &[ResponseEdit]) -> Result<(), raw::HostStatus> {
    let map = MapType::HttpResponseHeaders;
    for edit in edits {
        match edit {
            ResponseEdit::Remove(name) => raw::remove_header(map, name)?,
            ResponseEdit::Add(name, value) => raw::add_header(map, name, value)?,
            ResponseEdit::Set(name, value) => {
                raw::replace_header(map, name.as_bytes(), value.as_bytes())?
            }
        }
    }
    Ok(())
}

impl Filter {
    fn on_vm_start(&mut self) -> bool {
        // Envoy starts every root context it creates this way, one per configuration it pushes,
        // in the same VM. The counters are defined by the first: defined again, the counts
        // Envoy shows stalled after a push, and those not yet handed over were lost.
        if self.metrics.ids.is_empty() {
            self.metrics = Metrics::define();
        }
        // The tick flushes the counters, configured or not.
        start_ticking();
        true
    }

    fn on_configure(&mut self, root_context_id: u32, size: usize) -> bool {
        // Exchange calls are made on behalf of the root context (`start_exchange`).
        self.root_context = Some(root_context_id);
        let bytes = match raw::plugin_configuration(size) {
            Ok(bytes) if !bytes.is_empty() => bytes,
            Ok(_) => {
                log(
                    LogLevel::Critical,
                    "podgate: no plugin configuration; refusing to start",
                );
                return false;
            }
            Err(status) => {
                log(
                    LogLevel::Critical,
                    &format!("podgate: cannot read plugin configuration: {status:?}"),
                );
                return false;
            }
        };
        match FilterConfig::compile_json(&bytes) {
            Ok(compiled) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "podgate: configured: {} pods, {} capability keys",
                        compiled.pods.len(),
                        compiled.verifier.key_count()
                    ),
                );
                // Keys, pods or revocations may have changed: the gate starts its memo over
                // (and its token cache, unless the keys and checks are the same), and the fresh
                // capabilities renewals gave are let go (calls in flight are judged by the new
                // configuration); a refusal or a failure is the control plane's and stands.
                self.gate.configure(Rc::new(compiled));
                self.renewals
                    .retain(|_, r| !matches!(r, Renewal::Fresh { .. }));
                // Again for this configuration's root context: Envoy may give an update its
                // own, and a tick belongs to the root context that asked for it. Before the
                // closes below, which make each stream they close the effective context.
                start_ticking();
                // A cut (sign-out, lost access, revocation) ends the WebSockets and the other
                // open streams it covers as this configuration arrives, not a tick later.
                self.reset_cut_streams();
                self.close_expired_websockets();
                true
            }
            Err(err) => {
                // Returning false makes Envoy reject this config and keep the last good one.
                log(
                    LogLevel::Critical,
                    &format!("podgate: configuration refused: {err}"),
                );
                false
            }
        }
    }

    /// The tick: renews and closes WebSockets, forgets renewals past their use (a call taken
    /// as lost goes with its entry, and a capability can be renewed again), and hands the
    /// counts over. The streams a lost call left waiting, and what becomes of each, for the
    /// caller once the filter is released.
    fn on_tick(&mut self) -> Vec<(u32, Resume)> {
        self.renew_websockets();
        // Only what the configure callback left (cut, but in flight or waiting on a renewal):
        // the configuration is what refuses, and it has not changed since.
        if self.recheck_streams {
            self.reset_cut_streams();
        }
        self.close_expired_websockets();
        let mut resumed = Vec::new();
        if !self.renewals.is_empty() {
            if let Some(now) = now_unix() {
                resumed = self.forget_renewals(now);
            }
        }
        self.metrics.flush();
        resumed
    }

    /// The control plane answered a call (or the call failed: no headers). Returns the streams
    /// that waited for it and what becomes of each, for the caller once the filter is
    /// released.
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) -> Vec<(u32, Resume)> {
        if let Some((need, client)) = self.exchange_calls.remove(&token) {
            return self.on_exchange_response(&need, &client, num_headers, body_size);
        }
        self.on_renewal_response(token, num_headers, body_size)
    }

    /// Answers each stream of `waiting` (paused on a call) with `reply`: counted, and in the
    /// access log's line of each, as a refusal.
    fn refuse_waiting(&mut self, waiting: Vec<u32>, reply: &Reply) -> Vec<(u32, Resume)> {
        waiting
            .into_iter()
            .map(|id| {
                self.metrics.denied(reply.reason);
                if raw::set_effective_context(id).is_ok() {
                    access::record_refusal(reply.reason);
                }
                (id, Resume::Reply(reply.clone()))
            })
            .collect()
    }

    fn deny(&mut self, denial: &Denial) -> Action {
        let reply = denial.reply();
        self.metrics.denied(reply.reason);
        answer(&reply)
    }

    /// A host call failed: the request is answered with a 500 of its own and nothing is
    /// forwarded.
    fn host_failed(&mut self, what: &str, status: raw::HostStatus) -> Action {
        log(
            LogLevel::Error,
            &format!("podgate: {what} failed: {status:?}"),
        );
        // The access log says so too, whatever it said of the request before.
        access::record_refusal(Denial::HostCallFailed.reason());
        self.deny(&Denial::HostCallFailed)
    }

    /// The gate's decision for the request on stream `context_id` (its serialized headers
    /// `bytes`), with the token cache's hits and misses it made counted.
    fn decide_counted(&mut self, context_id: u32, bytes: &[u8], now: i64) -> Outcome {
        let before = self.gate.stats();
        // On this stream: a forward to a pod counts against the concurrency limits until
        // `on_delete`.
        let outcome = self.gate.on_stream_request(context_id, bytes, now);
        let after = self.gate.stats();
        self.metrics.bump(Counter::CacheHits, after.0 - before.0);
        self.metrics.bump(Counter::CacheMisses, after.1 - before.1);
        outcome
    }

    fn on_request_headers(&mut self, context_id: u32) -> Action {
        let bytes = match raw::header_map_bytes(MapType::HttpRequestHeaders) {
            Ok(bytes) => bytes,
            Err(status) => return self.host_failed("reading the request headers", status),
        };
        let now = match raw::now_nanos() {
            Ok(nanos) => {
                self.request_ms = i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX);
                i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX)
            }
            Err(status) => return self.host_failed("reading the clock", status),
        };
        let outcome = self.decide_counted(context_id, &bytes, now);
        record(&outcome);
        self.act(context_id, outcome, now)
    }

    /// Carries out what the gate decided for the request on stream `context_id`.
    fn act(&mut self, context_id: u32, outcome: Outcome, now: i64) -> Action {
        match outcome {
            Outcome::Forward(forward) => self.forward(context_id, forward, now),
            Outcome::Deny(denial) => self.deny(&denial),
            // A refusal's HTML page for a browser page load, counted as the refusal.
            Outcome::Page(reply) => {
                self.metrics.denied(reply.reason);
                answer(&reply)
            }
            // A stopped pod a browser loads: ask the control plane to start it, then the page.
            Outcome::Wake { call, page } => {
                self.wake(context_id, &call, now);
                self.metrics.denied(page.reason);
                answer(&page)
            }
            // CORS preflights are answered here and never forwarded.
            Outcome::Preflight(reply) => {
                self.metrics.bump(Counter::Preflight, 1);
                answer(&reply)
            }
            // `/.podgate/userinfo` and `/.podgate/logout`: answered here, never forwarded.
            Outcome::Answer(reply) => {
                self.metrics.bump(Counter::Answered, 1);
                answer(&reply)
            }
            Outcome::Exchange(need) => self.start_exchange(context_id, need),
            Outcome::Renew(lapsed) => self.renew_lapsed(context_id, &lapsed, now),
        }
    }

    /// An HTTP call to the control plane made on behalf of the root context, so that it
    /// outlives the stream `context_id` (a call owned by a stream is cancelled, unanswered, when
    /// the stream ends), then back to that stream. The call's token, and whether the stream is
    /// effective again.
    fn http_call_on_root(
        &self,
        context_id: u32,
        cluster: &str,
        headers: &[u8],
        timeout_ms: u32,
    ) -> (Result<u32, raw::HostStatus>, Result<(), raw::HostStatus>) {
        let on_root = self
            .root_context
            .is_some_and(|root| raw::set_effective_context(root).is_ok());
        let made = raw::http_call(cluster, headers, b"", timeout_ms);
        let back = if on_root {
            raw::set_effective_context(context_id)
        } else {
            Ok(())
        };
        (made, back)
    }

    /// Asks the control plane to start a pod (`wake::WakeCall`), at most once per pod every
    /// `wake::CALL_EVERY_SECS` in this worker. Nobody waits for the answer: its token is not
    /// one of `calls`, so `on_http_call_response` drops it.
    fn wake(&mut self, context_id: u32, call: &WakeCall, now: i64) {
        if self
            .wakes
            .get(&call.pod)
            .is_some_and(|at| now < at.saturating_add(wake::CALL_EVERY_SECS))
        {
            return;
        }
        if self.wakes.len() >= MAX_WAKES {
            self.wakes
                .retain(|_, at| now < at.saturating_add(wake::CALL_EVERY_SECS));
            if self.wakes.len() >= MAX_WAKES {
                return;
            }
        }
        let headers = podgate_protocol::wire::encode_header_map(&call.headers);
        // On the root context: the page is answered at once, which ends the stream.
        let (made, back) =
            self.http_call_on_root(context_id, &call.cluster, &headers, call.timeout_ms);
        if let Err(status) = back {
            log(
                LogLevel::Error,
                &format!("podgate: cannot return to the request after waking: {status:?}"),
            );
        }
        match made {
            Ok(_) => {
                self.wakes.insert(call.pod.clone(), now);
            }
            Err(status) => log(
                LogLevel::Error,
                &format!("podgate: cannot call the control plane to start a pod: {status:?}"),
            ),
        }
    }

    /// Sets the identity assertion on a forward to a pod: signed once per capability and worker
    /// per half its lifetime, a cached value (one header write) on every other request.
    fn set_assertion(&mut self, forward: &Forward, now: i64) -> Result<(), raw::HostStatus> {
        let signed = self.gate.assertions_signed();
        let Some(assertion) = self.gate.assertion(forward, now) else {
            return Ok(());
        };
        self.metrics.bump(
            Counter::AssertionSigned,
            self.gate.assertions_signed() - signed,
        );
        let map = MapType::HttpRequestHeaders;
        raw::replace_header(map, ASSERTION_HEADER.as_bytes(), assertion.as_bytes())
    }

    fn forward(&mut self, context_id: u32, forward: Rc<Forward>, now: i64) -> Action {
        if let Err(status) = apply_request(&forward.edits) {
            return self.host_failed("editing the request headers", status);
        }
        // Envoy picked the route before the filter ran. When the forward names a cluster, or
        // removed a client's copy of our headers that route may have matched, Envoy must pick
        // it again; a pod with an address keeps that route, the pods' original-destination one.
        if forward.reroute {
            if let Err(status) = raw::call_foreign_function("clear_route_cache") {
                return self.host_failed("clear_route_cache", status);
            }
        }
        if forward.user.is_none() {
            self.metrics.bump(Counter::Callback, 1);
            return Action::Continue;
        }
        if let Err(status) = self.set_assertion(&forward, now) {
            return self.host_failed("setting the identity assertion", status);
        }
        // To a pod or a service (not the control plane, which sets our cookie): the stream is
        // kept until it ends (a WebSocket closed when its capability expires unrenewed, any
        // stream reset when it is cut off), and the response is sanitized.
        self.track(context_id, &forward, self.request_ms);
        // One comparison on the cached path; a capability due for renewal is rare (once per
        // capability and worker, and the requests that follow carry the fresh one).
        let action = match (renewal::due(forward.renew_at, now), &forward.capability) {
            (true, Some(cap)) => {
                let cap = Rc::clone(cap);
                self.renew_for_request(context_id, &cap, now)
            }
            _ => Action::Continue,
        };
        // The fresh capability that renewed a lapsed cookie: its cookie goes on the response.
        if let Some(cookie) = forward.set_cookie.as_ref() {
            self.set_cookies.insert(context_id, Rc::clone(cookie));
        }
        if forward.response.is_some() {
            self.responses.insert(context_id, forward);
        }
        self.metrics.bump(Counter::Allowed, 1);
        action
    }

    fn on_response_headers(&mut self, context_id: u32) -> Action {
        let Some(forward) = self.responses.remove(&context_id) else {
            return Action::Continue;
        };
        let Some(ctx) = forward.response.as_ref() else {
            return Action::Continue;
        };
        let bytes = match raw::header_map_bytes(MapType::HttpResponseHeaders) {
            Ok(bytes) => bytes,
            Err(status) => return self.fail_response(&format!("cannot read: {status:?}")),
        };
        let sanitized = match self.gate.on_response(ctx, &bytes) {
            Ok(sanitized) => sanitized,
            Err(failure) => return self.fail_response(&failure.to_string()),
        };
        if !sanitized.edits.is_empty() {
            if let Err(status) = apply_response(&sanitized.edits) {
                return self.fail_response(&format!("edit failed: {status:?}"));
            }
            self.metrics.bump(
                Counter::CookiesDropped,
                sanitized.dropped_cookies.len() as u64,
            );
            self.metrics
                .bump(Counter::CorsStripped, sanitized.stripped_cors as u64);
        }
        // A renewed capability's cookie, after the pod's own cookies were sanitized (their
        // edits remove and add `set-cookie` headers). The map is empty but around a renewal.
        if self.set_cookies.is_empty() {
            return Action::Continue;
        }
        if let Some(cookie) = self.set_cookies.remove(&context_id) {
            // A response that carries a capability is for this browser alone and for now: no
            // cache keeps it (a pod's `public` or `s-maxage` would let a shared cache hand the
            // cookie to others; CDNs read their own headers before `Cache-Control`).
            let map = MapType::HttpResponseHeaders;
            let Ok(headers) = podgate_protocol::wire::decode_header_map(&bytes) else {
                return self.fail_response("cannot read its headers");
            };
            let mut edited = raw::add_header(map, b"set-cookie", cookie.as_bytes())
                .and_then(|()| raw::replace_header(map, b"cache-control", b"no-store"));
            for name in podgate_protocol::response::shared_cache_directives(&headers) {
                edited = edited.and_then(|()| raw::remove_header(map, name));
            }
            if let Err(status) = edited {
                return self.fail_response(&format!("adding the renewed cookie: {status:?}"));
            }
        }
        Action::Continue
    }

    /// The stream is gone, however it ended (completed, reset, closed by the tick, refused):
    /// forget it, and let go of what it held against the concurrency limits.
    fn on_delete(&mut self, context_id: u32) {
        self.gate.end_stream(context_id);
        self.responses.remove(&context_id);
        self.websockets.remove(&context_id);
        self.streams.remove(&context_id);
        if !self.set_cookies.is_empty() {
            self.set_cookies.remove(&context_id);
        }
    }

    /// A pod response we cannot vouch for never reaches the client: the stream is reset.
    fn fail_response(&mut self, why: &str) -> Action {
        log(LogLevel::Error, &format!("podgate: pod response: {why}"));
        self.metrics.bump(Counter::ResponseFailed, 1);
        let _ = raw::reset_stream();
        Action::Pause
    }
}
