//! podgate's `Gate` as an Envoy dynamic module: Envoy `dlopen`s this `.so` and calls its hooks
//! directly, with no VM, no copy of the header map into Wasm memory and no re-entry to
//! allocate it. `just bench` runs it beside the Wasm filter (`bench/src/compare.rs`):
//!
//! - filter config `noop`: every hook returns at once (case N, against the Wasm no-op W);
//! - otherwise the config is the Wasm filter's JSON, and each worker thread runs its own `Gate`
//!   over it exactly as the Wasm filter's worker VM does on a request and its response: read
//!   the header map, decide, apply the edits, set the access log's filter state, and at the
//!   pod's response headers read that map and sanitize it (case D-native, against D).
//!
//! It is a measurement, not a product filter: no renewals, API-token exchanges, wakes, tick,
//! counters or WebSocket cut, and a refusal is answered with its status and body only.
//!
//! The ABI is declared here by hand, from Envoy's `abi.h`: only the hooks Envoy looks up for an
//! HTTP filter and the few callbacks used. Buffers are `{pointer, length}` pairs passed by
//! value; header maps are numbered request headers 0, response headers 2.

#![allow(clippy::missing_safety_doc)]

use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use podgate_protocol::config::FilterConfig;
use podgate_protocol::gate::{Forward, Gate, HeaderEdit, Outcome};
use podgate_protocol::reply::Reply;
use podgate_protocol::response::ResponseEdit;
use podgate_protocol::wire::encode_header_map;

/// A `{pointer, length}` pair: the ABI's module and Envoy buffers alike.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    ptr: *const u8,
    len: usize,
}

impl Buffer {
    fn of(bytes: &[u8]) -> Buffer {
        Buffer {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// No value: `set_header` removes the header.
    const NONE: Buffer = Buffer {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// The bytes, valid for as long as Envoy says (the current hook).
    unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: Envoy hands out a pointer to `len` readable bytes for the hook's duration.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// One header, name then value (`envoy_http_header` and `module_http_header` alike).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Header {
    name: Buffer,
    value: Buffer,
}

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
/// The headers hooks' "go on" and "stop" answers.
const CONTINUE: u32 = 0;
const STOP_ITERATION: u32 = 1;

extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, map: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        map: u32,
        out: *mut Header,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        map: u32,
        name: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        map: u32,
        name: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: *mut c_void,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut Header,
        count: usize,
        body: Buffer,
        details: Buffer,
    );
}

/// One filter configuration: nothing to do, or the Wasm filter's JSON (compiled once per worker
/// thread, in `GATES`).
enum Config {
    Noop,
    Podgate(Vec<u8>),
}

/// One stream of a `Podgate` configuration.
struct Stream {
    config: *const Config,
    id: u32,
    /// The forward whose pod response is sanitized.
    response: Option<Rc<Forward>>,
}

/// What every stream of a `Noop` configuration gets: never freed, never read.
static NOOP_STREAM: u8 = 0;

thread_local! {
    /// Each worker's gates, by configuration (its address): one per worker, as each Wasm
    /// worker has its own VM.
    static GATES: RefCell<HashMap<usize, Gate>> = RefCell::new(HashMap::new());
    static NEXT_STREAM: Cell<u32> = const { Cell::new(1) };
}

fn with_gate<T>(config: *const Config, json: &[u8], run: impl FnOnce(&mut Gate) -> T) -> Option<T> {
    GATES.with(|gates| {
        let mut gates = gates.borrow_mut();
        let gate = match gates.entry(config as usize) {
            Entry::Occupied(gate) => gate.into_mut(),
            Entry::Vacant(slot) => {
                let compiled = FilterConfig::compile_json(json).ok()?;
                slot.insert(Gate::new(Rc::new(compiled)))
            }
        };
        Some(run(gate))
    })
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The whole header map `map`, encoded as proxy-wasm encodes it for the Wasm filter.
unsafe fn header_map(filter: *mut c_void, map: u32) -> Option<Vec<u8>> {
    // SAFETY: `filter` is the stream's Envoy pointer for the current hook; the array has room
    // for the count Envoy just gave.
    unsafe {
        let count = envoy_dynamic_module_callback_http_get_headers_size(filter, map);
        let mut headers = vec![
            Header {
                name: Buffer::NONE,
                value: Buffer::NONE,
            };
            count
        ];
        if count > 0
            && !envoy_dynamic_module_callback_http_get_headers(filter, map, headers.as_mut_ptr())
        {
            return None;
        }
        let pairs: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|h| (h.name.bytes(), h.value.bytes()))
            .collect();
        Some(encode_header_map(&pairs))
    }
}

unsafe fn set(filter: *mut c_void, map: u32, name: &[u8], value: Buffer) -> bool {
    // SAFETY: as in `header_map`; the buffers outlive the call.
    unsafe { envoy_dynamic_module_callback_http_set_header(filter, map, Buffer::of(name), value) }
}

/// Answers the request with `reply` (status and body); nothing is forwarded.
unsafe fn answer(filter: *mut c_void, reply: &Reply) -> u32 {
    let mut headers: Vec<Header> = reply
        .headers
        .iter()
        .map(|(name, value)| Header {
            name: Buffer::of(name.as_bytes()),
            value: Buffer::of(value.as_bytes()),
        })
        .collect();
    // SAFETY: as in `header_map`; the headers and body outlive the call.
    unsafe {
        envoy_dynamic_module_callback_http_send_response(
            filter,
            reply.status,
            headers.as_mut_ptr(),
            headers.len(),
            Buffer::of(reply.body.as_bytes()),
            Buffer::of(reply.reason.as_bytes()),
        );
    }
    STOP_ITERATION
}

unsafe fn forward(filter: *mut c_void, stream: &mut Stream, forward: Rc<Forward>) -> u32 {
    for edit in &forward.edits {
        // SAFETY: as in `header_map`.
        let done = unsafe {
            match edit {
                HeaderEdit::Remove(name) => {
                    set(filter, REQUEST_HEADERS, name.as_bytes(), Buffer::NONE)
                }
                HeaderEdit::Set(name, value) => set(
                    filter,
                    REQUEST_HEADERS,
                    name.as_bytes(),
                    Buffer::of(value.as_bytes()),
                ),
            }
        };
        if !done {
            // SAFETY: as in `header_map`.
            return unsafe { answer(filter, &failed()) };
        }
    }
    // The filter states the Wasm filter sets: the pod and port for Envoy's local replies, then
    // the access log's line.
    forward.each_filter_state(|key, value| {
        // SAFETY: as in `header_map`.
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                filter,
                Buffer::of(key.as_bytes()),
                Buffer::of(value.as_bytes()),
            );
        }
    });
    if forward.response.is_some() {
        stream.response = Some(forward);
    }
    CONTINUE
}

fn failed() -> Reply {
    Reply {
        status: 500,
        headers: vec![("content-type", "application/json".to_owned())],
        body: r#"{"error":"the native bench filter could not decide"}"#.to_owned(),
        reason: "bench_failure",
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    c"v0.1.0".as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _envoy: *mut c_void,
    _name: Buffer,
    config: Buffer,
) -> *const c_void {
    // SAFETY: Envoy's buffer, valid during the call; copied before it returns.
    let bytes = unsafe { config.bytes() };
    let config = if bytes == b"noop" {
        Config::Noop
    } else if FilterConfig::compile_json(bytes).is_ok() {
        Config::Podgate(bytes.to_vec())
    } else {
        // Envoy refuses the configuration.
        return std::ptr::null();
    };
    Box::into_raw(Box::new(config)) as *const c_void
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *mut c_void) {
    if !config.is_null() {
        // SAFETY: made by `config_new`, destroyed once.
        drop(unsafe { Box::from_raw(config as *mut Config) });
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _envoy: *mut c_void,
) -> *mut c_void {
    let config = config as *const Config;
    // SAFETY: the configuration outlives its streams.
    match unsafe { &*config } {
        Config::Noop => std::ptr::addr_of!(NOOP_STREAM) as *mut c_void,
        Config::Podgate(_) => {
            let id = NEXT_STREAM.with(|next| {
                let id = next.get();
                next.set(id.wrapping_add(1).max(1));
                id
            });
            Box::into_raw(Box::new(Stream {
                config,
                id,
                response: None,
            })) as *mut c_void
        }
    }
}

/// The stream behind a module pointer; `None` for a no-op one.
unsafe fn stream<'a>(module: *mut c_void) -> Option<&'a mut Stream> {
    if module.is_null() || std::ptr::eq(module, std::ptr::addr_of!(NOOP_STREAM) as *mut c_void) {
        None
    } else {
        // SAFETY: made by `filter_new` for this stream, alive until `filter_destroy`.
        Some(unsafe { &mut *(module as *mut Stream) })
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: *mut c_void,
    module: *mut c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's pointers for this stream, valid during the hook.
    unsafe {
        let Some(stream) = stream(module) else {
            return CONTINUE;
        };
        let Config::Podgate(json) = &*stream.config else {
            return CONTINUE;
        };
        let Some(wire) = header_map(filter, REQUEST_HEADERS) else {
            return answer(filter, &failed());
        };
        let id = stream.id;
        let Some(outcome) = with_gate(stream.config, json, |gate| {
            gate.on_stream_request(id, &wire, now_secs())
        }) else {
            return answer(filter, &failed());
        };
        match outcome {
            Outcome::Forward(f) => forward(filter, stream, f),
            Outcome::Deny(denial) => answer(filter, &denial.reply()),
            Outcome::Page(reply)
            | Outcome::Wake { page: reply, .. }
            | Outcome::Preflight(reply)
            | Outcome::Answer(reply) => answer(filter, &reply),
            // Only the cached path: no exchanges, no renewals.
            Outcome::Exchange(_) | Outcome::Renew(_) => answer(filter, &failed()),
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: *mut c_void,
    module: *mut c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: as in `request_headers`.
    unsafe {
        let Some(stream) = stream(module) else {
            return CONTINUE;
        };
        let Some(forward) = stream.response.take() else {
            return CONTINUE;
        };
        let (Some(ctx), Config::Podgate(json)) = (forward.response.as_ref(), &*stream.config)
        else {
            return CONTINUE;
        };
        let Some(wire) = header_map(filter, RESPONSE_HEADERS) else {
            return CONTINUE;
        };
        let Some(Ok(sanitized)) =
            with_gate(stream.config, json, |gate| gate.on_response(ctx, &wire))
        else {
            return CONTINUE;
        };
        for edit in &sanitized.edits {
            match edit {
                ResponseEdit::Remove(name) => {
                    set(filter, RESPONSE_HEADERS, name, Buffer::NONE);
                }
                ResponseEdit::Add(name, value) => {
                    envoy_dynamic_module_callback_http_add_header(
                        filter,
                        RESPONSE_HEADERS,
                        Buffer::of(name),
                        Buffer::of(value),
                    );
                }
                ResponseEdit::Set(name, value) => {
                    set(
                        filter,
                        RESPONSE_HEADERS,
                        name.as_bytes(),
                        Buffer::of(value.as_bytes()),
                    );
                }
            }
        }
        CONTINUE
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter: *mut c_void,
    module: *mut c_void,
) {
    // SAFETY: as in `request_headers`.
    if let Some(stream) = unsafe { stream(module) } {
        let id = stream.id;
        GATES.with(|gates| {
            if let Some(gate) = gates.borrow_mut().get_mut(&(stream.config as usize)) {
                gate.end_stream(id);
            }
        });
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: *mut c_void) {
    // SAFETY: as in `request_headers`; destroyed once.
    if let Some(stream) = unsafe { stream(module) } {
        drop(unsafe { Box::from_raw(stream as *mut Stream) });
    }
}

/// The hooks this module has no use for: Envoy looks every one of them up.
macro_rules! continue_hooks {
    ($($name:ident ( $($arg:ident : $ty:ty),* );)*) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name($(_: $ty),*) -> u32 {
                CONTINUE
            }
        )*
    };
}

continue_hooks! {
    envoy_dynamic_module_on_http_filter_request_body(f: *mut c_void, m: *mut c_void, e: bool);
    envoy_dynamic_module_on_http_filter_request_trailers(f: *mut c_void, m: *mut c_void);
    envoy_dynamic_module_on_http_filter_response_body(f: *mut c_void, m: *mut c_void, e: bool);
    envoy_dynamic_module_on_http_filter_response_trailers(f: *mut c_void, m: *mut c_void);
    envoy_dynamic_module_on_http_filter_local_reply(f: *mut c_void, m: *mut c_void);
}

/// Hooks for features this module never starts (callouts, streams, timers, watermarks): Envoy
/// never calls them, but looks them up.
macro_rules! unused_hooks {
    ($($name:ident),* $(,)?) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name() {}
        )*
    };
}

unused_hooks!(
    envoy_dynamic_module_on_http_filter_http_callout_done,
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_reset,
    envoy_dynamic_module_on_http_filter_scheduled,
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark,
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark,
    envoy_dynamic_module_on_http_filter_config_http_callout_done,
    envoy_dynamic_module_on_http_filter_config_http_stream_headers,
    envoy_dynamic_module_on_http_filter_config_http_stream_data,
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_config_http_stream_complete,
    envoy_dynamic_module_on_http_filter_config_http_stream_reset,
    envoy_dynamic_module_on_http_filter_config_scheduled,
    envoy_dynamic_module_on_http_filter_per_route_config_destroy,
);

/// No per-route configuration: Envoy refuses one.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new() -> *const c_void {
    std::ptr::null()
}
