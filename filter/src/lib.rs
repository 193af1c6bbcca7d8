//! The proxy-wasm adapter: host calls in, decisions out. Every decision is made by
//! `podgate_protocol::gate`; this file only moves values between Envoy and that module.
//!
//! Fail closed: without a compiled configuration every request gets a 500 and nothing is
//! forwarded. Host calls go through `proxy_wasm::hostcalls` so their errors are values, never
//! panics.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use podgate_protocol::config::{CompiledConfig, FilterConfig};
use podgate_protocol::cors::{self, Preflight};
use podgate_protocol::gate::{self, DecisionMemo, HeaderEdit, Outcome, Request, VerifiedCache};
use podgate_protocol::reply::{Denial, Reply};
use podgate_protocol::response::{self, PodResponse, ResponseEdit};
use podgate_protocol::wire;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

mod raw;

/// How often the root context looks for WebSockets whose capability expired.
const WEBSOCKET_SWEEP_MS: u32 = 1000;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("podgate filter panicked: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Counter ids, defined once per VM.
#[derive(Debug, Default, Clone)]
struct Metrics {
    allowed: Option<u32>,
    callback: Option<u32>,
    denied: Vec<(&'static str, u32)>,
    cache_hits: Option<u32>,
    cache_misses: Option<u32>,
    preflight: Option<u32>,
    cookies_dropped: Option<u32>,
    cors_stripped: Option<u32>,
    websocket_expired: Option<u32>,
    response_failed: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        Metrics {
            allowed: counter("podgate.allowed"),
            callback: counter("podgate.callback"),
            denied: Denial::ALL_REASONS
                .iter()
                .filter_map(|r| Some((*r, counter(&format!("podgate.denied.{r}"))?)))
                .collect(),
            cache_hits: counter("podgate.token_cache.hits"),
            cache_misses: counter("podgate.token_cache.misses"),
            preflight: counter("podgate.preflight"),
            cookies_dropped: counter("podgate.response.set_cookie_dropped"),
            cors_stripped: counter("podgate.response.cors_stripped"),
            websocket_expired: counter("podgate.websocket.expired"),
            response_failed: counter("podgate.response.failed"),
        }
    }

    fn bump(id: Option<u32>, by: i64) {
        if let Some(id) = id {
            if by > 0 {
                let _ = hostcalls::increment_metric(id, by);
            }
        }
    }

    fn denied(&self, reason: &str) {
        let id = self
            .denied
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, id)| *id);
        Self::bump(id, 1);
    }
}

/// What every HTTP context of this VM shares: the compiled config, the verified-token cache, the
/// memo of forward decisions, and the open WebSockets (context id → capability `exp`, unix seconds) the tick closes at expiry.
#[derive(Default)]
struct Shared {
    config: Option<Rc<CompiledConfig>>,
    cache: VerifiedCache,
    memo: DecisionMemo,
    metrics: Metrics,
    websockets: HashMap<u32, i64>,
}

#[derive(Default)]
struct Root {
    shared: Rc<RefCell<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.shared.borrow_mut().metrics = Metrics::define();
        true
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        ) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
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
                let mut shared = self.shared.borrow_mut();
                shared.config = Some(Rc::new(compiled));
                // Keys or revocations may have changed: nothing verified before is trusted now.
                shared.cache.clear();
                shared.memo.clear();
                if let Err(status) = raw::set_tick_period_ms(WEBSOCKET_SWEEP_MS) {
                    // Frames are still checked; only idle WebSockets would outlive expiry.
                    log(
                        LogLevel::Error,
                        &format!("podgate: cannot set the tick period: {status:?}"),
                    );
                }
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

    /// Closes every WebSocket whose capability has expired. Envoy resets the stream right after
    /// this callback (`proxy_close_stream` on the stream made effective), then calls its
    /// `on_done`.
    fn on_tick(&mut self) {
        let expired: Vec<u32> = {
            let Ok(mut shared) = self.shared.try_borrow_mut() else {
                return;
            };
            if shared.websockets.is_empty() {
                // The common case: no host call at all.
                return;
            }
            let Some(now) = now_unix() else { return };
            let expired: Vec<u32> = shared
                .websockets
                .iter()
                .filter(|(_, exp)| now >= **exp)
                .map(|(id, _)| *id)
                .collect();
            for id in &expired {
                shared.websockets.remove(id);
            }
            expired
        };
        let mut closed = 0;
        for context_id in expired {
            let result = raw::set_effective_context(context_id).and_then(|()| raw::reset_stream());
            match result {
                Ok(()) => closed += 1,
                // Already gone: nothing left to close.
                Err(status) => log(
                    LogLevel::Debug,
                    &format!("podgate: cannot close expired WebSocket {context_id}: {status:?}"),
                ),
            }
        }
        if let Ok(shared) = self.shared.try_borrow() {
            Metrics::bump(shared.metrics.websocket_expired, closed);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Gate {
            shared: Rc::clone(&self.shared),
            context_id,
            response: None,
            websocket_expires_at: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Gate {
    shared: Rc<RefCell<Shared>>,
    context_id: u32,
    /// Set when the request was forwarded to a pod: its response is sanitized.
    response: Option<PodResponse>,
    /// Set for a WebSocket forwarded to a pod: its capability's `exp` (unix seconds).
    websocket_expires_at: Option<i64>,
}

impl Context for Gate {
    fn on_done(&mut self) -> bool {
        self.forget_websocket();
        true
    }
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now_unix() -> Option<i64> {
    let now = hostcalls::get_current_time().ok()?;
    let secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

impl Gate {
    fn deny(&self, denial: &Denial) -> Action {
        let reply = denial.reply();
        self.shared.borrow().metrics.denied(reply.reason);
        Self::answer(&reply)
    }

    fn answer(reply: &Reply) -> Action {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        if let Err(status) =
            hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
        {
            log(
                LogLevel::Error,
                &format!("podgate: local reply failed: {status:?}"),
            );
        }
        Action::Pause
    }

    fn apply(edits: &[HeaderEdit]) -> Result<(), proxy_wasm::types::Status> {
        for edit in edits {
            match edit {
                HeaderEdit::Remove(name) => {
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None)?
                }
                HeaderEdit::Set(name, value) => {
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))?
                }
            }
        }
        Ok(())
    }
}

impl HttpContext for Gate {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.shared.borrow().config.clone() else {
            return self.deny(&Denial::NotConfigured);
        };
        let bytes = match raw::header_map_bytes(MapType::HttpRequestHeaders) {
            Ok(bytes) => bytes,
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("podgate: cannot read headers: {}", status.0),
                );
                return self.deny(&Denial::NotConfigured);
            }
        };
        // Borrowed: no header is copied; a non-UTF-8 name is refused by `from_slices`.
        let headers = match wire::decode_header_map(&bytes) {
            Ok(headers) => headers,
            Err(err) => {
                log(
                    LogLevel::Error,
                    &format!("podgate: cannot decode headers: {err}"),
                );
                return self.deny(&Denial::NotConfigured);
            }
        };
        let request = match Request::from_slices(&headers) {
            Ok(request) => request,
            Err(denial) => return self.deny(&denial),
        };
        // CORS preflights are answered here and never forwarded (`cors`).
        match cors::preflight(&config, &request.preflight_view()) {
            None => {}
            Some(Preflight::Refused(denial)) => return self.deny(&denial),
            Some(Preflight::Allowed(reply)) => {
                Metrics::bump(self.shared.borrow().metrics.preflight, 1);
                return Self::answer(&reply);
            }
        }
        let Some(now) = now_unix() else {
            return self.deny(&Denial::NotConfigured);
        };
        let outcome = {
            let mut shared = self.shared.borrow_mut();
            let Shared {
                cache,
                memo,
                metrics,
                ..
            } = &mut *shared;
            let before = cache.stats();
            let outcome = gate::decide_memoized(&config, cache, memo, &request, now);
            let after = cache.stats();
            Metrics::bump(metrics.cache_hits, (after.0 - before.0) as i64);
            Metrics::bump(metrics.cache_misses, (after.1 - before.1) as i64);
            outcome
        };
        match outcome {
            Outcome::Deny(denial) => self.deny(&denial),
            Outcome::Forward(forward) => {
                let gate::Forward {
                    edits,
                    user,
                    expires_at,
                } = &*forward;
                if let Err(status) = Self::apply(edits) {
                    log(
                        LogLevel::Error,
                        &format!("podgate: header edit failed: {status:?}"),
                    );
                    return self.deny(&Denial::NotConfigured);
                }
                // Routing depends on headers we just set; Envoy must pick the route again.
                if let Err(status) = hostcalls::call_foreign_function("clear_route_cache", None) {
                    log(
                        LogLevel::Error,
                        &format!("podgate: clear_route_cache failed: {status:?}"),
                    );
                    return self.deny(&Denial::NotConfigured);
                }
                if user.is_some() {
                    // To a pod (not the control plane, which sets our cookie): its response is
                    // sanitized, and a WebSocket is closed when the capability expires.
                    self.response = Some(PodResponse::for_request(&request));
                    if request.is_websocket() {
                        if let Some(exp) = *expires_at {
                            self.websocket_expires_at = Some(exp);
                            self.shared
                                .borrow_mut()
                                .websockets
                                .insert(self.context_id, exp);
                        }
                    }
                }
                let metrics = &self.shared.borrow().metrics;
                Metrics::bump(
                    if user.is_some() {
                        metrics.allowed
                    } else {
                        metrics.callback
                    },
                    1,
                );
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(ctx) = &self.response else {
            return Action::Continue;
        };
        let Some(config) = self.shared.borrow().config.clone() else {
            return self.fail_response("no configuration");
        };
        let bytes = match raw::header_map_bytes(MapType::HttpResponseHeaders) {
            Ok(bytes) => bytes,
            Err(status) => return self.fail_response(&format!("cannot read: {status:?}")),
        };
        let headers = match wire::decode_header_map(&bytes) {
            Ok(headers) => headers,
            Err(err) => return self.fail_response(&format!("cannot decode: {err}")),
        };
        let sanitized = response::sanitize(&config, ctx, headers);
        if sanitized.edits.is_empty() {
            return Action::Continue;
        }
        if let Err(status) = apply_response(&sanitized.edits) {
            return self.fail_response(&format!("edit failed: {status:?}"));
        }
        let shared = self.shared.borrow();
        Metrics::bump(
            shared.metrics.cookies_dropped,
            sanitized.dropped_cookies.len() as i64,
        );
        Metrics::bump(shared.metrics.cors_stripped, sanitized.stripped_cors as i64);
        Action::Continue
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.check_websocket_expiry()
    }

    fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.check_websocket_expiry()
    }

    fn on_log(&mut self) {
        self.forget_websocket();
    }
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

impl Gate {
    /// A pod response we cannot vouch for never reaches the client: the stream is reset.
    fn fail_response(&self, why: &str) -> Action {
        log(LogLevel::Error, &format!("podgate: pod response: {why}"));
        if let Ok(shared) = self.shared.try_borrow() {
            Metrics::bump(shared.metrics.response_failed, 1);
        }
        let _ = raw::reset_stream();
        Action::Pause
    }

    /// Second line behind the tick: a WebSocket frame after the capability's `exp` closes the
    /// stream instead of passing.
    fn check_websocket_expiry(&mut self) -> Action {
        let Some(exp) = self.websocket_expires_at else {
            return Action::Continue;
        };
        if now_unix().is_some_and(|now| now < exp) {
            return Action::Continue;
        }
        self.forget_websocket();
        if let Ok(shared) = self.shared.try_borrow() {
            Metrics::bump(shared.metrics.websocket_expired, 1);
        }
        if let Err(status) = raw::reset_stream() {
            log(
                LogLevel::Error,
                &format!("podgate: cannot close expired WebSocket: {status:?}"),
            );
        }
        Action::Pause
    }

    fn forget_websocket(&mut self) {
        if self.websocket_expires_at.take().is_some() {
            if let Ok(mut shared) = self.shared.try_borrow_mut() {
                shared.websockets.remove(&self.context_id);
            }
        }
    }
}
