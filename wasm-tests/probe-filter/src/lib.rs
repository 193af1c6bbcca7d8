//! Probe filter for the wasmtime host self-tests. Every behaviour here exists
//! so a self-test can observe that the host carried it out. Paths select the
//! behaviour: see `on_http_request_headers`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(ProbeRoot { context_id, shared: Rc::new(Shared::default()) })
    });
}}

#[derive(Default)]
struct Shared {
    config: RefCell<String>,
    seq: Cell<u64>,
    requests_metric: Cell<u32>,
    logged_metric: Cell<u32>,
    ticks_metric: Cell<u32>,
    gauge_metric: Cell<u32>,
    histogram_metric: Cell<u32>,
    /// Streams to reset on the next tick (`/close-on-tick`).
    close_on_tick: RefCell<Vec<u32>>,
}

struct ProbeRoot {
    context_id: u32,
    shared: Rc<Shared>,
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, size: usize) -> bool {
        let vm_config = self.get_vm_configuration().unwrap_or_default();
        log::info!(
            "vm start root={} size={} config={}",
            self.context_id,
            size,
            String::from_utf8_lossy(&vm_config)
        );
        vm_config != b"refuse"
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config).into_owned();
        log::info!("configure size={size} config={config}");
        if config == "panic" {
            panic!("probe configure panic");
        }
        if config == "reject" {
            log::warn!("rejecting configuration");
            return false;
        }
        let define = |kind, name| hostcalls::define_metric(kind, name).unwrap_or(0);
        self.shared
            .requests_metric
            .set(define(MetricType::Counter, "probe_requests"));
        self.shared
            .logged_metric
            .set(define(MetricType::Counter, "probe_logged"));
        self.shared
            .ticks_metric
            .set(define(MetricType::Counter, "probe_ticks"));
        self.shared
            .gauge_metric
            .set(define(MetricType::Gauge, "probe_header_count"));
        self.shared
            .histogram_metric
            .set(define(MetricType::Histogram, "probe_path_len"));
        self.set_tick_period(Duration::from_millis(1500));
        *self.shared.config.borrow_mut() = config;
        true
    }

    fn on_tick(&mut self) {
        let _ = hostcalls::increment_metric(self.shared.ticks_metric.get(), 1);
        // Reset each registered stream from the root context, as a filter closing streams on a
        // timer does: make the stream effective, then close it.
        if *self.shared.config.borrow() == "close-root" {
            let result = hostcalls::reset_http_request();
            log::info!("root close {result:?}");
        }
        let ids: Vec<u32> = self.shared.close_on_tick.borrow_mut().drain(..).collect();
        for id in ids {
            match hostcalls::set_effective_context(id) {
                Ok(()) => {
                    let _ = hostcalls::reset_http_request();
                    log::info!("tick closed ctx={id}");
                }
                Err(status) => log::warn!("tick cannot reach ctx={id}: {status:?}"),
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeHttp {
            context_id,
            shared: Rc::clone(&self.shared),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct ProbeHttp {
    context_id: u32,
    shared: Rc<Shared>,
}

impl Context for ProbeHttp {}

impl ProbeHttp {
    fn reply(&self, status: u32, body: &str) -> Action {
        self.send_http_response(
            status,
            vec![("content-type", "text/plain"), ("x-probe", "local")],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}

impl HttpContext for ProbeHttp {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let _ = hostcalls::increment_metric(shared.requests_metric.get(), 1);
        let seq = shared.seq.get() + 1;
        shared.seq.set(seq);
        let headers = self.get_http_request_headers();
        let _ = hostcalls::record_metric(shared.gauge_metric.get(), headers.len() as u64);
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let _ = hostcalls::record_metric(shared.histogram_metric.get(), path.len() as u64);
        log::debug!(
            "request ctx={} headers={num_headers} eos={end_of_stream} path={path}",
            self.context_id
        );

        match path.as_str() {
            "/local" => return self.reply(418, "teapot"),
            "/panic" => panic!("probe request panic"),
            "/time" => {
                let proxy = hostcalls::get_current_time().map(nanos).unwrap_or(0);
                let wasi = nanos(SystemTime::now());
                return self.reply(200, &format!("proxy={proxy} wasi={wasi}"));
            }
            "/pause" => return Action::Pause,
            "/reset" => {
                let _ = hostcalls::reset_http_request();
                return Action::Pause;
            }
            "/route" => {
                self.set_http_request_header(":authority", Some("rewritten.internal"));
                let result = hostcalls::call_foreign_function("clear_route_cache", None);
                self.set_http_request_header(
                    "x-clear-route-cache",
                    Some(if result.is_ok() { "ok" } else { "err" }),
                );
                return Action::Continue;
            }
            "/unknown-foreign" => {
                let result = hostcalls::call_foreign_function("no_such_function", Some(b"arg"));
                let value = match result {
                    Err(Status::NotFound) => "notfound",
                    Err(_) => "other-error",
                    Ok(_) => "ok",
                };
                self.set_http_request_header("x-foreign", Some(value));
                return Action::Continue;
            }
            "/shared" => {
                let (value, cas) = hostcalls::get_shared_data("probe-key").unwrap_or((None, None));
                let n = value
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                let next = (n + 1).to_string();
                let stored = hostcalls::set_shared_data("probe-key", Some(next.as_bytes()), cas);
                let stale =
                    hostcalls::set_shared_data("probe-key", Some(b"stale"), Some(u32::MAX - 1));
                self.set_http_request_header("x-shared", Some(&next));
                self.set_http_request_header(
                    "x-shared-stored",
                    Some(if stored.is_ok() { "ok" } else { "err" }),
                );
                self.set_http_request_header(
                    "x-shared-stale",
                    Some(if stale == Err(Status::CasMismatch) {
                        "casmismatch"
                    } else {
                        "other"
                    }),
                );
                return Action::Continue;
            }
            "/replace-all" => {
                let pairs = vec![(":path", "/replaced"), ("x-only", "1")];
                self.set_http_request_headers(pairs);
                return Action::Continue;
            }
            "/body" => return Action::Continue,
            "/close-on-tick" => {
                self.shared.close_on_tick.borrow_mut().push(self.context_id);
                return Action::Continue;
            }
            "/close-on-tick-gone" => {
                // A context id that will not exist any more when the tick comes.
                self.shared.close_on_tick.borrow_mut().push(self.context_id + 1000);
                return Action::Continue;
            }
            _ => {}
        }

        // Default: a set of edits the self-test can observe one by one.
        self.set_http_request_header("x-remove-me", None);
        self.set_http_request_header("x-replace", Some("new"));
        self.add_http_request_header("x-added", "one");
        self.add_http_request_header("x-added", "two");
        let config = shared.config.borrow().clone();
        self.set_http_request_header("x-probe-config", Some(&config));
        self.set_http_request_header("x-probe-seq", Some(&seq.to_string()));
        self.set_http_request_header("x-probe-ctx", Some(&self.context_id.to_string()));
        if let Some(cookie) = self.get_http_request_header("COOKIE") {
            self.set_http_request_header("x-seen-cookie", Some(&cookie));
        }
        if let Ok(Some(name)) = hostcalls::get_property(vec!["plugin_name"]) {
            self.set_http_request_header("x-plugin-name", Some(&String::from_utf8_lossy(&name)));
        }
        let missing = hostcalls::get_property(vec!["no", "such"]);
        self.set_http_request_header(
            "x-missing-property",
            Some(if matches!(missing, Ok(None)) {
                "none"
            } else {
                "some"
            }),
        );
        if self.get_http_request_header("x-never-sent").is_none() {
            self.set_http_request_header("x-absent-ok", Some("1"));
        }
        let _ = hostcalls::get_map(MapType::HttpRequestHeaders);
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if body.windows(4).any(|w| w == b"deny") {
            return self.reply(403, "body denied");
        }
        self.set_http_request_body(0, body_size, b"rewritten body");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("server", None);
        self.set_http_response_header("x-probe-response", Some("seen"));
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        let body = self.get_http_response_body(0, body_size).unwrap_or_default();
        if body.windows(5).any(|w| w == b"reset") {
            let _ = hostcalls::reset_http_response();
            return Action::Pause;
        }
        let mut edited = b"probe:".to_vec();
        edited.extend_from_slice(&body);
        self.set_http_response_body(0, body_size, &edited);
        Action::Continue
    }

    fn on_log(&mut self) {
        let _ = hostcalls::increment_metric(self.shared.logged_metric.get(), 1);
        log::info!("log ctx={}", self.context_id);
    }
}
