//! `FilterVm`: one instance of a proxy-wasm module, driven the way Envoy
//! drives a filter on one worker (root context, then one HTTP context per
//! request), with everything the guest did recorded for tests.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail};
use wasmtime::{Instance, Store, TypedFunc, WasmParams, WasmResults};

use super::abi::{self, Action, LogLevel, Pairs};
use super::engine;
use super::outcome::{Outcome, StreamStats};
use super::state::{headers, Clock, HostState, StreamState};

mod recorded;

/// Envoy numbers contexts from 1; the root context comes first.
const ROOT_CONTEXT_ID: u32 = 1;
const UNLIMITED_FUEL: u64 = u64::MAX / 2;

/// How a VM is set up. `Default` mirrors a plain Envoy worker.
#[derive(Clone, Debug)]
pub struct VmOptions {
    /// The VM configuration buffer handed to `proxy_on_vm_start`.
    pub vm_configuration: Vec<u8>,
    /// What `proxy_get_log_level` answers (Envoy's default is info).
    pub log_level: LogLevel,
    /// Print guest logs to stderr as they happen (default: env
    /// `PODGATE_HOST_ECHO_LOGS` is set).
    pub echo_logs: bool,
    /// Trap any single callback that executes more than this much fuel
    /// (about one unit per wasm instruction). `None`: unlimited. Fuel is
    /// always measured; see [`StreamStats::fuel`].
    pub fuel_per_call: Option<u64>,
    /// Let the guest write to the test's stdout/stderr (default: discarded).
    pub inherit_stdio: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            vm_configuration: Vec::new(),
            log_level: LogLevel::Info,
            echo_logs: std::env::var_os("PODGATE_HOST_ECHO_LOGS").is_some(),
            fuel_per_call: None,
            inherit_stdio: false,
        }
    }
}

struct Exports {
    /// Optional, as in Envoy: without it the module keeps its own per-context state.
    on_context_create: Option<TypedFunc<(u32, u32), ()>>,
    on_vm_start: Option<TypedFunc<(u32, u32), u32>>,
    on_configure: Option<TypedFunc<(u32, u32), u32>>,
    on_request_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_request_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_response_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_response_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_log: Option<TypedFunc<u32, ()>>,
    on_done: Option<TypedFunc<u32, u32>>,
    on_delete: Option<TypedFunc<u32, ()>>,
    on_tick: Option<TypedFunc<u32, ()>>,
    on_http_call_response: Option<TypedFunc<HttpCallResponseParams, ()>>,
}

/// `proxy_on_http_call_response(root_context_id, token, headers, body_size, trailers)`.
type HttpCallResponseParams = (u32, u32, u32, u32, u32);

impl Exports {
    fn find(store: &mut Store<HostState>, instance: &Instance) -> anyhow::Result<Self> {
        macro_rules! optional {
            ($name:literal) => {
                match instance.get_func(&mut *store, $name) {
                    Some(func) => Some(
                        func.typed(&*store)
                            .map_err(|e| anyhow!("export {} has an unexpected type: {e}", $name))?,
                    ),
                    None => None,
                }
            };
        }
        Ok(Exports {
            on_context_create: optional!("proxy_on_context_create"),
            on_vm_start: optional!("proxy_on_vm_start"),
            on_configure: optional!("proxy_on_configure"),
            on_request_headers: optional!("proxy_on_request_headers"),
            on_request_body: optional!("proxy_on_request_body"),
            on_response_headers: optional!("proxy_on_response_headers"),
            on_response_body: optional!("proxy_on_response_body"),
            on_log: optional!("proxy_on_log"),
            on_done: optional!("proxy_on_done"),
            on_delete: optional!("proxy_on_delete"),
            on_tick: optional!("proxy_on_tick"),
            on_http_call_response: optional!("proxy_on_http_call_response"),
        })
    }
}

/// Bookkeeping for an open stream, to report its cost when it closes.
struct OpenStream {
    fuel_at_open: u64,
    calls_at_open: BTreeMap<String, u64>,
    request_headers_action: Option<Action>,
}

/// One proxy-wasm VM with its root context, as on one Envoy worker.
pub struct FilterVm {
    store: Store<HostState>,
    exports: Exports,
    next_context_id: u32,
    fuel_per_call: u64,
    fuel_total: u64,
    failure: Option<String>,
    open: HashMap<u32, OpenStream>,
    last_stream: Option<StreamStats>,
    stubbed_imports: Vec<String>,
}

/// A trap caught while calling into the guest.
struct Trap {
    message: String,
    panic: Option<String>,
}

impl Trap {
    fn into_outcome(self) -> Outcome {
        Outcome::Trapped {
            message: self.message,
            panic: self.panic,
        }
    }

    fn into_error(self, during: &str) -> anyhow::Error {
        match self.panic {
            Some(panic) => anyhow!(
                "filter trapped in {during}: {} (guest panic: {panic})",
                self.message
            ),
            None => anyhow!("filter trapped in {during}: {}", self.message),
        }
    }
}

impl FilterVm {
    /// Instantiate the module at `wasm_path` and start the VM (root context
    /// created, `proxy_on_vm_start` called). Call [`FilterVm::configure`] next.
    pub fn new(wasm_path: &Path) -> anyhow::Result<Self> {
        Self::with_options(wasm_path, VmOptions::default())
    }

    pub fn with_options(wasm_path: &Path, options: VmOptions) -> anyhow::Result<Self> {
        let loaded = engine::load(wasm_path)?;
        let pre = &loaded.pre;
        let clock = Clock::new();
        let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
        wasi.wall_clock(clock.clone());
        if options.inherit_stdio {
            wasi.inherit_stdout().inherit_stderr();
        }
        let mut state = HostState::new(wasi.build_p1(), clock);
        state.log_level = options.log_level;
        state.echo_logs = options.echo_logs;
        state.vm_configuration = options.vm_configuration.clone();
        state.root_context_id = ROOT_CONTEXT_ID;
        state.effective_context = ROOT_CONTEXT_ID;

        let mut store = Store::new(pre.module().engine(), state);
        store.set_fuel(UNLIMITED_FUEL).map_err(|e| anyhow!("{e}"))?;
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| anyhow!("instantiating {}: {e:?}", wasm_path.display()))?;

        let has_abi = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"]
            .iter()
            .any(|name| instance.get_func(&mut store, name).is_some());
        if !has_abi {
            bail!(
                "{} exports no supported proxy_abi_version_0_2_x marker",
                wasm_path.display()
            );
        }
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| anyhow!("module exports no memory"))?;
        let allocate = ["proxy_on_memory_allocate", "malloc"]
            .iter()
            .find_map(|name| instance.get_typed_func::<u32, u32>(&mut store, name).ok())
            .ok_or_else(|| anyhow!("module exports no proxy_on_memory_allocate"))?;
        store.data_mut().memory = Some(memory);
        store.data_mut().allocate = Some(allocate);
        let exports = Exports::find(&mut store, &instance)?;

        let mut vm = FilterVm {
            store,
            exports,
            next_context_id: ROOT_CONTEXT_ID + 1,
            fuel_per_call: options.fuel_per_call.unwrap_or(UNLIMITED_FUEL),
            fuel_total: 0,
            failure: None,
            open: HashMap::new(),
            last_stream: None,
            stubbed_imports: loaded.stubbed.clone(),
        };

        // Reactor modules run their constructors (and the SDK's `main!`) here.
        for name in ["_initialize", "_start"] {
            if let Ok(init) = instance.get_typed_func::<(), ()>(&mut vm.store, name) {
                vm.call(&init, (), 0)?.map_err(|t| t.into_error(name))?;
                break;
            }
        }
        if let Some(create) = vm.exports.on_context_create.clone() {
            vm.call(&create, (ROOT_CONTEXT_ID, 0), ROOT_CONTEXT_ID)?
                .map_err(|t| t.into_error("proxy_on_context_create (root)"))?;
        }
        if let Some(start) = vm.exports.on_vm_start.clone() {
            let size = abi::len_u32(options.vm_configuration.len());
            let started = vm
                .call(&start, (ROOT_CONTEXT_ID, size), ROOT_CONTEXT_ID)?
                .map_err(|t| t.into_error("proxy_on_vm_start"))?;
            if started == 0 {
                bail!("proxy_on_vm_start returned false: Envoy would not load this VM");
            }
        }
        Ok(vm)
    }

    // ---- configuration and time ---------------------------------------

    /// Deliver a plugin configuration (`proxy_on_configure` on the root
    /// context). `Ok(false)` means the filter rejected it, as Envoy would.
    /// May be called again later, as an ECDS update does. Streams the guest resets from
    /// there are destroyed as after a tick (see [`FilterVm::configure_closing`]).
    pub fn configure(&mut self, plugin_configuration: &[u8]) -> anyhow::Result<bool> {
        self.configure_closing(plugin_configuration)
            .map(|(accepted, _)| accepted)
    }

    /// [`FilterVm::configure`], and the context ids of the streams the guest reset during
    /// the callback (`proxy_set_effective_context` to the stream, then `proxy_close_stream`),
    /// in id order: destroyed the way Envoy does it after the callback returns, so no longer
    /// open.
    pub fn configure_closing(
        &mut self,
        plugin_configuration: &[u8],
    ) -> anyhow::Result<(bool, Vec<u32>)> {
        self.store.data_mut().plugin_configuration = plugin_configuration.to_vec();
        let Some(configure) = self.exports.on_configure.clone() else {
            return Ok((true, Vec::new()));
        };
        let size = abi::len_u32(plugin_configuration.len());
        let already_reset: Vec<u32> = self.reset_stream_ids();
        let accepted = self
            .call(&configure, (ROOT_CONTEXT_ID, size), ROOT_CONTEXT_ID)?
            .map_err(|t| t.into_error("proxy_on_configure"))?;
        let closed = self.close_reset_since(&already_reset)?;
        Ok((accepted != 0, closed))
    }

    /// Fix the clock the guest sees (proxy time and WASI wall clock).
    pub fn set_time(&mut self, unix_nanos: u64) {
        self.store.data().clock.set(unix_nanos);
    }

    /// Fix the clock, in seconds since the epoch.
    pub fn set_time_secs(&mut self, unix_secs: u64) {
        self.set_time(unix_secs.saturating_mul(1_000_000_000));
    }

    /// Move a fixed clock forward (fixes it at the current time first).
    pub fn advance_time(&mut self, by: Duration) {
        let now = self.now_nanos();
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.set_time(now.saturating_add(by));
    }

    /// Let the guest see the real system clock again (the default).
    pub fn use_system_time(&mut self) {
        self.store.data().clock.follow_system();
    }

    pub fn now_nanos(&self) -> u64 {
        self.store.data().clock.now_nanos()
    }

    /// Run `proxy_on_tick` on the root context, as Envoy's tick timer does.
    ///
    /// A stream the guest reset during the tick (`proxy_set_effective_context` to the stream,
    /// then `proxy_close_stream`) is then destroyed the way Envoy does it after the callback
    /// returns: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`. Returns the context ids of
    /// those streams, in id order; they are no longer open.
    pub fn tick(&mut self) -> anyhow::Result<Vec<u32>> {
        let Some(tick) = self.exports.on_tick.clone() else {
            return Ok(Vec::new());
        };
        let already_reset: Vec<u32> = self.reset_stream_ids();
        self.call(&tick, ROOT_CONTEXT_ID, ROOT_CONTEXT_ID)?
            .map_err(|t| t.into_error("proxy_on_tick"))?;
        self.close_reset_since(&already_reset)
    }

    /// Makes `proxy_get_current_time_nanoseconds` fail (`true`) or work again, as a broken
    /// host would: what the filter does when a host call it needs fails.
    pub fn fail_the_clock(&mut self, fails: bool) {
        self.store.data_mut().clock_fails = fails;
    }

    /// Lets `proxy_http_call` through from now on: each call is recorded
    /// ([`FilterVm::pending_http_calls`]) until the test answers it. Without this the call
    /// fails, as Envoy answers a call to a cluster it does not have.
    pub fn accept_http_calls(&mut self) {
        self.store.data_mut().http_calls_accepted = true;
    }

    /// Answers the pending call `token` as Envoy does when the response is in:
    /// `proxy_on_http_call_response` on the root context, the response's headers (`:status`
    /// among them) and body readable during it. What the guest does to the streams that waited
    /// shows on them ([`FilterVm::continued`], [`FilterVm::local_reply_of`]).
    pub fn answer_http_call(
        &mut self,
        token: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<()> {
        let state = self.store.data_mut();
        let Some(at) = state.http_calls.iter().position(|c| c.token == token) else {
            bail!("no pending HTTP call {token}");
        };
        state.http_calls.remove(at);
        let pairs: Pairs = headers
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        let num_headers = u32::try_from(pairs.len())?;
        let body_size = u32::try_from(body.len())?;
        state.http_call_response_headers = Some(pairs);
        state.http_call_response_body = Some(body.to_vec());
        let result = match self.exports.on_http_call_response.clone() {
            Some(func) => self.call(
                &func,
                (ROOT_CONTEXT_ID, token, num_headers, body_size, 0),
                ROOT_CONTEXT_ID,
            ),
            None => Ok(Ok(())),
        };
        let state = self.store.data_mut();
        state.http_call_response_headers = None;
        state.http_call_response_body = None;
        result?.map_err(|t| t.into_error("proxy_on_http_call_response"))
    }

    /// Destroys the streams reset since `already_reset` was read; their ids, in order.
    fn close_reset_since(&mut self, already_reset: &[u32]) -> anyhow::Result<Vec<u32>> {
        let mut closed: Vec<u32> = self
            .reset_stream_ids()
            .into_iter()
            .filter(|id| !already_reset.contains(id))
            .collect();
        closed.sort_unstable();
        for context_id in &closed {
            self.close_stream(*context_id)?;
        }
        Ok(closed)
    }

    fn reset_stream_ids(&self) -> Vec<u32> {
        self.store
            .data()
            .streams
            .iter()
            .filter(|(_, s)| s.reset)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether a stream opened with `open_stream` is still open (not closed, not destroyed
    /// after a reset during a tick).
    pub fn is_open(&self, context_id: u32) -> bool {
        self.store.data().streams.contains_key(&context_id)
    }

    /// Whether the guest reset this open stream (`proxy_close_stream`).
    pub fn was_reset(&self, context_id: u32) -> bool {
        self.store
            .data()
            .streams
            .get(&context_id)
            .is_some_and(|s| s.reset)
    }

    /// The tick period the guest asked for, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        match self.store.data().tick_period_ms {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        }
    }

    /// Set a property the guest can read with `proxy_get_property`.
    pub fn set_property(&mut self, path: &[&str], value: &[u8]) {
        let path = path.iter().map(|p| (*p).to_string()).collect();
        self.store
            .data_mut()
            .properties
            .insert(path, value.to_vec());
    }

    /// A property, including ones the guest set.
    pub fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let path: Vec<String> = path.iter().map(|p| (*p).to_string()).collect();
        self.store.data().properties.get(&path).cloned()
    }

    // ---- requests -----------------------------------------------------

    /// One request through a fresh HTTP context, headers only
    /// (`end_of_stream` true), then `on_log`, `on_done`, `on_delete`.
    /// Header names are lowercased as Envoy's codecs do. Names and values
    /// may be `&str` or raw bytes (`&[u8]`), e.g. obs-text or invalid UTF-8.
    pub fn request<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &mut self,
        request_headers: &[(K, V)],
    ) -> anyhow::Result<Outcome> {
        if self.failure.is_some() {
            return Ok(Outcome::VmDead);
        }
        let context_id = match self.create_stream()? {
            Ok(id) => id,
            Err(trap) => return Ok(trap.into_outcome()),
        };
        let outcome = self.request_headers(context_id, request_headers, true)?;
        self.finish(context_id, outcome)
    }

    /// A request and, when the filter lets it through, the upstream's
    /// response headers through the same context. Returns both outcomes.
    pub fn exchange(
        &mut self,
        request_headers: &[(&str, &str)],
        response_headers: &[(&str, &str)],
    ) -> anyhow::Result<(Outcome, Option<Outcome>)> {
        if self.failure.is_some() {
            return Ok((Outcome::VmDead, None));
        }
        let context_id = match self.create_stream()? {
            Ok(id) => id,
            Err(trap) => return Ok((trap.into_outcome(), None)),
        };
        let request = self.request_headers(context_id, request_headers, true)?;
        if !matches!(request, Outcome::Continue { .. }) {
            return Ok((self.finish(context_id, request)?, None));
        }
        let response = self.response_headers(context_id, response_headers, true)?;
        let response = self.finish(context_id, response)?;
        Ok((request, Some(response)))
    }

    /// Create an HTTP context (`proxy_on_context_create(ctx, root)`) and
    /// return its id. Drive it with `request_headers`, `request_body`,
    /// `response_headers`, then `close_stream`.
    pub fn open_stream(&mut self) -> anyhow::Result<u32> {
        if let Some(failure) = &self.failure {
            bail!("VM is dead: {failure}");
        }
        self.create_stream()?
            .map_err(|t| t.into_error("proxy_on_context_create"))
    }

    /// Deliver request headers to an open stream.
    pub fn request_headers<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &mut self,
        context_id: u32,
        request_headers: &[(K, V)],
        end_of_stream: bool,
    ) -> anyhow::Result<Outcome> {
        let count = abi::len_u32(request_headers.len());
        self.stream_mut(context_id)?.request_headers = Some(headers::from_list(request_headers));
        let func = self.exports.on_request_headers.clone();
        let action = self.stream_callback(func, context_id, count, end_of_stream)?;
        if let (Ok(action), Some(open)) = (&action, self.open.get_mut(&context_id)) {
            open.request_headers_action = Some(*action);
        }
        self.outcome(context_id, action, |s| s.request_headers.as_ref())
    }

    /// Deliver (the whole buffered) request body to an open stream. The
    /// body after the filter's edits is available from `request_body_of`.
    pub fn request_body(
        &mut self,
        context_id: u32,
        body: &[u8],
        end_of_stream: bool,
    ) -> anyhow::Result<Outcome> {
        let size = abi::len_u32(body.len());
        self.stream_mut(context_id)?.request_body = Some(body.to_vec());
        let func = self.exports.on_request_body.clone();
        let action = self.stream_callback(func, context_id, size, end_of_stream)?;
        self.outcome(context_id, action, |s| s.request_headers.as_ref())
    }

    /// The request body of an open stream, after the filter's edits.
    pub fn request_body_of(&self, context_id: u32) -> Option<Vec<u8>> {
        self.store
            .data()
            .streams
            .get(&context_id)?
            .request_body
            .clone()
    }

    /// Deliver upstream response headers to an open stream; `Continue`
    /// carries the response headers after the filter's edits.
    pub fn response_headers<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &mut self,
        context_id: u32,
        response_headers: &[(K, V)],
        end_of_stream: bool,
    ) -> anyhow::Result<Outcome> {
        let count = abi::len_u32(response_headers.len());
        self.stream_mut(context_id)?.response_headers = Some(headers::from_list(response_headers));
        let func = self.exports.on_response_headers.clone();
        let action = self.stream_callback(func, context_id, count, end_of_stream)?;
        self.outcome(context_id, action, |s| s.response_headers.as_ref())
    }

    /// Deliver a chunk of the response body to an open stream (for an upgraded WebSocket,
    /// Envoy hands each chunk of upstream bytes here). The body after the filter's edits is
    /// available from `response_body_of`; `Continue`/`Paused` carry the response headers.
    pub fn response_body(
        &mut self,
        context_id: u32,
        body: &[u8],
        end_of_stream: bool,
    ) -> anyhow::Result<Outcome> {
        let size = abi::len_u32(body.len());
        self.stream_mut(context_id)?.response_body = Some(body.to_vec());
        let func = self.exports.on_response_body.clone();
        let action = self.stream_callback(func, context_id, size, end_of_stream)?;
        self.outcome(context_id, action, |s| s.response_headers.as_ref())
    }

    /// The response body of an open stream, after the filter's edits.
    pub fn response_body_of(&self, context_id: u32) -> Option<Vec<u8>> {
        self.store
            .data()
            .streams
            .get(&context_id)?
            .response_body
            .clone()
    }

    /// End a stream: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
    /// `Err` if the guest trapped in one of them.
    pub fn close_stream(&mut self, context_id: u32) -> anyhow::Result<()> {
        match self.end_stream(context_id)? {
            Some(trap) => Err(trap.into_error("closing the stream")),
            None => Ok(()),
        }
    }

    /// Change the per-callback fuel budget (`None`: unlimited) from now on.
    pub fn set_fuel_per_call(&mut self, budget: Option<u64>) {
        self.fuel_per_call = budget.unwrap_or(UNLIMITED_FUEL);
    }

    // ---- internals ------------------------------------------------------

    fn create_stream(&mut self) -> anyhow::Result<Result<u32, Trap>> {
        let context_id = self.next_context_id;
        self.next_context_id = self
            .next_context_id
            .checked_add(1)
            .ok_or_else(|| anyhow!("context ids exhausted"))?;
        self.store
            .data_mut()
            .streams
            .insert(context_id, StreamState::default());
        self.open.insert(
            context_id,
            OpenStream {
                fuel_at_open: self.fuel_total,
                calls_at_open: self.store.data().host_calls.clone(),
                request_headers_action: None,
            },
        );
        let created = match self.exports.on_context_create.clone() {
            Some(create) => self.call(&create, (context_id, ROOT_CONTEXT_ID), context_id)?,
            None => Ok(()),
        };
        if created.is_err() {
            self.record_stream_end(context_id);
        }
        Ok(created.map(|()| context_id))
    }

    fn stream_mut(&mut self, context_id: u32) -> anyhow::Result<&mut StreamState> {
        self.store
            .data_mut()
            .streams
            .get_mut(&context_id)
            .ok_or_else(|| anyhow!("no open stream with context id {context_id}"))
    }

    /// Runs a stream callback `(context_id, size, end_of_stream) -> action`; one the module
    /// does not export answers `Continue`, as Envoy treats it.
    fn stream_callback(
        &mut self,
        func: Option<TypedFunc<(u32, u32, u32), u32>>,
        context_id: u32,
        size: u32,
        end_of_stream: bool,
    ) -> anyhow::Result<Result<Action, Trap>> {
        let Some(func) = func else {
            return Ok(Ok(Action::Continue));
        };
        if self.failure.is_some() {
            bail!("VM is dead");
        }
        let params = (context_id, size, u32::from(end_of_stream));
        Ok(self.call(&func, params, context_id)?.map(Action::from_raw))
    }

    /// Turn a callback's result into what Envoy would do with the stream.
    fn outcome(
        &mut self,
        context_id: u32,
        action: Result<Action, Trap>,
        map: impl Fn(&StreamState) -> Option<&Pairs>,
    ) -> anyhow::Result<Outcome> {
        let action = match action {
            Ok(action) => action,
            Err(trap) => return Ok(trap.into_outcome()),
        };
        let stream = self.stream_mut(context_id)?;
        if let Some(reply) = &stream.local_reply {
            return Ok(Outcome::LocalReply {
                status: reply.status,
                headers: reply.headers.clone(),
                body: reply.body.clone(),
                details: reply.details.clone(),
            });
        }
        if stream.reset {
            return Ok(Outcome::Reset);
        }
        let headers = map(stream).map(headers::to_strings).unwrap_or_default();
        Ok(match action {
            Action::Continue => Outcome::Continue { headers },
            Action::Pause => Outcome::Paused { headers },
        })
    }

    /// Close the stream and make a trap in the closing callbacks win over
    /// the earlier outcome (the VM is dead either way).
    fn finish(&mut self, context_id: u32, outcome: Outcome) -> anyhow::Result<Outcome> {
        if matches!(outcome, Outcome::Trapped { .. }) {
            self.record_stream_end(context_id);
            return Ok(outcome);
        }
        Ok(match self.end_stream(context_id)? {
            Some(trap) => trap.into_outcome(),
            None => outcome,
        })
    }

    fn end_stream(&mut self, context_id: u32) -> anyhow::Result<Option<Trap>> {
        if !self.store.data().streams.contains_key(&context_id) {
            bail!("no open stream with context id {context_id}");
        }
        let mut trap = None;
        if self.failure.is_none() {
            trap = self.end_callbacks(context_id)?;
        }
        self.record_stream_end(context_id);
        Ok(trap)
    }

    fn end_callbacks(&mut self, context_id: u32) -> anyhow::Result<Option<Trap>> {
        if let Some(on_log) = self.exports.on_log.clone() {
            if let Err(trap) = self.call(&on_log, context_id, context_id)? {
                return Ok(Some(trap));
            }
        }
        if let Some(on_done) = self.exports.on_done.clone() {
            // A false answer asks Envoy to wait for proxy_done; the SDK's
            // HTTP contexts always answer true, so deletion follows directly.
            if let Err(trap) = self.call(&on_done, context_id, context_id)? {
                return Ok(Some(trap));
            }
        }
        if let Some(on_delete) = self.exports.on_delete.clone() {
            if let Err(trap) = self.call(&on_delete, context_id, context_id)? {
                return Ok(Some(trap));
            }
        }
        Ok(None)
    }

    fn record_stream_end(&mut self, context_id: u32) {
        let state = self.store.data_mut();
        let local_replies = state
            .streams
            .remove(&context_id)
            .map(|s| s.local_reply_count)
            .unwrap_or(0);
        state.effective_context = ROOT_CONTEXT_ID;
        let Some(open) = self.open.remove(&context_id) else {
            return;
        };
        let host_calls = diff_counts(&self.store.data().host_calls, &open.calls_at_open);
        self.last_stream = Some(StreamStats {
            context_id,
            request_headers_action: open.request_headers_action,
            fuel: self.fuel_total.saturating_sub(open.fuel_at_open),
            host_calls,
            local_replies,
        });
    }

    /// Call into the guest with `context_id` as the effective context.
    /// `Ok(Err(trap))` when the guest trapped: the VM is marked dead.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        func: &TypedFunc<P, R>,
        params: P,
        context_id: u32,
    ) -> anyhow::Result<Result<R, Trap>> {
        if let Some(failure) = &self.failure {
            bail!("VM is dead: {failure}");
        }
        let logs_before = self.store.data().logs.len();
        self.store.data_mut().effective_context = context_id;
        self.store
            .set_fuel(self.fuel_per_call)
            .map_err(|e| anyhow!("setting fuel: {e}"))?;
        let result = func.call(&mut self.store, params);
        let remaining = self.store.get_fuel().unwrap_or(0);
        self.fuel_total = self
            .fuel_total
            .saturating_add(self.fuel_per_call.saturating_sub(remaining));
        match result {
            Ok(value) => Ok(Ok(value)),
            Err(error) => {
                let message = match error.downcast_ref::<wasmtime::Trap>() {
                    Some(trap) => format!("{trap}: {error:?}"),
                    None => format!("{error:?}"),
                };
                let panic = self
                    .store
                    .data()
                    .logs
                    .get(logs_before..)
                    .unwrap_or_default()
                    .iter()
                    .rev()
                    .find(|(level, _)| *level == LogLevel::Critical)
                    .map(|(_, message)| message.clone());
                self.failure = Some(match &panic {
                    Some(panic) => format!("{message} (guest panic: {panic})"),
                    None => message.clone(),
                });
                Ok(Err(Trap { message, panic }))
            }
        }
    }
}

fn diff_counts(
    now: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    now.iter()
        .filter_map(|(name, count)| {
            let delta = count.saturating_sub(before.get(name).copied().unwrap_or(0));
            (delta > 0).then(|| (name.clone(), delta))
        })
        .collect()
}

impl std::fmt::Debug for FilterVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterVm")
            .field("next_context_id", &self.next_context_id)
            .field("failure", &self.failure)
            .field("fuel_total", &self.fuel_total)
            .finish_non_exhaustive()
    }
}
