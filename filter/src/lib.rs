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
//! no context-create, body, log or done callbacks.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use podgate_protocol::config::FilterConfig;
use podgate_protocol::gate::{Forward, Gate, HeaderEdit, Outcome};
use podgate_protocol::reply::{Denial, Reply};
use podgate_protocol::response::ResponseEdit;
use podgate_protocol::token::Verified;

mod abi;
mod raw;

use raw::{LogLevel, MapType};

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
}

impl Counter {
    const ALL: [(Counter, &'static str); 11] = [
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
    /// Open WebSockets to pods: context id → the capability that opened it, closed by the
    /// tick at its `exp` (unix seconds), or once a configuration cuts it off.
    websockets: ByContext<(i64, Rc<Verified>)>,
}

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
        self.metrics = Metrics::define();
        // The tick flushes the counters, configured or not.
        start_ticking();
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
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
                // Keys, pods or revocations may have changed: the gate starts its caches over.
                self.gate.configure(Rc::new(compiled));
                // Again for this configuration's root context: Envoy may give an update its
                // own, and a tick belongs to the root context that asked for it.
                start_ticking();
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

    fn on_tick(&mut self) {
        self.close_expired_websockets();
        self.metrics.flush();
    }

    /// Closes every WebSocket whose capability has expired, or is refused by the configuration
    /// in force (a signed-out session, access lost, revoked). Envoy resets the stream right
    /// after this callback (`proxy_close_stream` on the stream made effective), then deletes it.
    fn close_expired_websockets(&mut self) {
        if self.websockets.is_empty() {
            // The common case: no host call at all.
            return;
        }
        let Some(now) = now_unix() else { return };
        let mut expired = Vec::new();
        let mut cut = Vec::new();
        for (id, (exp, cap)) in self.websockets.iter() {
            if now >= *exp {
                expired.push(*id);
            } else if self.gate.refuses(cap) {
                cut.push(*id);
            }
        }
        let closed = self.close_websockets(&expired);
        self.metrics.bump(Counter::WebsocketExpired, closed);
        let closed = self.close_websockets(&cut);
        self.metrics.bump(Counter::WebsocketCut, closed);
    }

    /// Closes these WebSockets; how many were still open.
    fn close_websockets(&mut self, ids: &[u32]) -> u64 {
        let mut closed = 0;
        for &context_id in ids {
            self.websockets.remove(&context_id);
            let result = raw::set_effective_context(context_id).and_then(|()| raw::reset_stream());
            match result {
                Ok(()) => closed += 1,
                // Already gone: nothing left to close.
                Err(status) => log(
                    LogLevel::Debug,
                    &format!("podgate: cannot close WebSocket {context_id}: {status:?}"),
                ),
            }
        }
        closed
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
        self.deny(&Denial::HostCallFailed)
    }

    fn on_request_headers(&mut self, context_id: u32) -> Action {
        let bytes = match raw::header_map_bytes(MapType::HttpRequestHeaders) {
            Ok(bytes) => bytes,
            Err(status) => return self.host_failed("reading the request headers", status),
        };
        let now = match raw::now_nanos() {
            Ok(nanos) => i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
            Err(status) => return self.host_failed("reading the clock", status),
        };
        let before = self.gate.stats();
        let outcome = self.gate.on_request(&bytes, now);
        let after = self.gate.stats();
        self.metrics.bump(Counter::CacheHits, after.0 - before.0);
        self.metrics.bump(Counter::CacheMisses, after.1 - before.1);
        match outcome {
            Outcome::Forward(forward) => self.forward(context_id, forward),
            Outcome::Deny(denial) => self.deny(&denial),
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
        }
    }

    fn forward(&mut self, context_id: u32, forward: Rc<Forward>) -> Action {
        if let Err(status) = apply_request(&forward.edits) {
            return self.host_failed("editing the request headers", status);
        }
        // Routing depends on headers we just set; Envoy must pick the route again.
        if let Err(status) = raw::call_foreign_function("clear_route_cache") {
            return self.host_failed("clear_route_cache", status);
        }
        if forward.user.is_none() {
            self.metrics.bump(Counter::Callback, 1);
            return Action::Continue;
        }
        // To a pod (not the control plane, which sets our cookie): a WebSocket is closed when
        // the capability expires, and the response is sanitized.
        if let (true, Some(exp), Some(cap)) = (
            forward.websocket,
            forward.expires_at,
            forward.capability.as_ref(),
        ) {
            self.websockets.insert(context_id, (exp, Rc::clone(cap)));
        }
        if forward.response.is_some() {
            self.responses.insert(context_id, forward);
        }
        self.metrics.bump(Counter::Allowed, 1);
        Action::Continue
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
        if sanitized.edits.is_empty() {
            return Action::Continue;
        }
        if let Err(status) = apply_response(&sanitized.edits) {
            return self.fail_response(&format!("edit failed: {status:?}"));
        }
        self.metrics.bump(
            Counter::CookiesDropped,
            sanitized.dropped_cookies.len() as u64,
        );
        self.metrics
            .bump(Counter::CorsStripped, sanitized.stripped_cors as u64);
        Action::Continue
    }

    /// The stream is gone: forget it.
    fn on_delete(&mut self, context_id: u32) {
        self.responses.remove(&context_id);
        self.websockets.remove(&context_id);
    }

    /// A pod response we cannot vouch for never reaches the client: the stream is reset.
    fn fail_response(&mut self, why: &str) -> Action {
        log(LogLevel::Error, &format!("podgate: pod response: {why}"));
        self.metrics.bump(Counter::ResponseFailed, 1);
        let _ = raw::reset_stream();
        Action::Pause
    }
}
