//! The proxy-wasm adapter: host calls in, decisions out. Every decision is made by
//! `podgate_protocol::gate`; this file only moves values between Envoy and that module.
//!
//! Fail closed: without a compiled configuration every request gets a 500 and nothing is
//! forwarded. Host calls go through `proxy_wasm::hostcalls` so their errors are values, never
//! panics.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use podgate_protocol::config::{CompiledConfig, FilterConfig};
use podgate_protocol::gate::{self, Decision, HeaderEdit, Request, VerifiedCache};
use podgate_protocol::reply::Denial;
use podgate_protocol::wire;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

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

/// What every HTTP context of this VM shares: the compiled config and the verified-token cache.
#[derive(Default)]
struct Shared {
    config: Option<Rc<CompiledConfig>>,
    cache: VerifiedCache,
    metrics: Metrics,
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

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Gate {
            shared: Rc::clone(&self.shared),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Gate {
    shared: Rc<RefCell<Shared>>,
}

impl Context for Gate {}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

#[link(wasm_import_module = "env")]
extern "C" {
    // The same import the SDK declares; called directly because the SDK's wrappers panic on a
    // non-UTF-8 header name or an unexpected status, and a panic would kill this worker's VM.
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

enum RawHeadersError {
    Host(u32),
    Wire(wire::WireError),
}

/// All request headers in one host call, names as strings and values as raw bytes.
fn request_headers() -> Result<Vec<(String, Vec<u8>)>, RawHeadersError> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to a buffer it allocated through the SDK's exported
    // `proxy_on_memory_allocate` (a `Vec<u8>` of capacity `size`), which we then own.
    let status =
        unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) };
    if status != 0 {
        return Err(RawHeadersError::Host(status));
    }
    if data.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: see above; the buffer is exactly `size` bytes long and ours to free.
    let bytes = unsafe { Vec::from_raw_parts(data, size, size) };
    wire::decode_header_map(&bytes).map_err(RawHeadersError::Wire)
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
        let headers = match request_headers() {
            Ok(headers) => headers,
            Err(RawHeadersError::Host(status)) => {
                log(
                    LogLevel::Error,
                    &format!("podgate: cannot read headers: {status}"),
                );
                return self.deny(&Denial::NotConfigured);
            }
            Err(RawHeadersError::Wire(wire::WireError::NonUtf8Name)) => {
                return self.deny(&Denial::MalformedHeaderName);
            }
            Err(RawHeadersError::Wire(err)) => {
                log(
                    LogLevel::Error,
                    &format!("podgate: cannot decode headers: {err}"),
                );
                return self.deny(&Denial::NotConfigured);
            }
        };
        let request = match Request::from_headers(&headers) {
            Ok(request) => request,
            Err(denial) => return self.deny(&denial),
        };
        let Some(now) = now_unix() else {
            return self.deny(&Denial::NotConfigured);
        };
        let decision = {
            let mut shared = self.shared.borrow_mut();
            let before = shared.cache.stats();
            let decision = gate::decide(&config, &mut shared.cache, &request, now);
            let after = shared.cache.stats();
            Metrics::bump(shared.metrics.cache_hits, (after.0 - before.0) as i64);
            Metrics::bump(shared.metrics.cache_misses, (after.1 - before.1) as i64);
            decision
        };
        match decision {
            Decision::Deny(denial) => self.deny(&denial),
            Decision::Forward { edits, user, .. } => {
                if let Err(status) = Self::apply(&edits) {
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
}
