//! The proxy-wasm host functions the filter calls (ABI 0.2.1), each a value-returning wrapper:
//! no status the host can answer panics here, and a panic would kill the worker's VM.

/// The header maps the filter reads and edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
#[allow(clippy::enum_variant_names)] // the ABI's names
pub enum MapType {
    HttpRequestHeaders = 0,
    HttpResponseHeaders = 2,
    /// The answer to `http_call`.
    HttpCallResponseHeaders = 6,
}

/// Envoy's log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum LogLevel {
    Debug = 1,
    Info = 2,
    Error = 4,
    Critical = 5,
}

/// `BufferType::PluginConfiguration` of the ABI.
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
/// `BufferType::HttpCallResponseBody` of the ABI.
const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
/// `MetricType::Counter` of the ABI.
const METRIC_COUNTER: u32 = 0;
/// `StreamType::HttpRequest` of the ABI: closing it resets the whole stream in Envoy.
const STREAM_HTTP_REQUEST: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_remove_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_call_foreign_function(
        name_data: *const u8,
        name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        return_results_data: *mut *mut u8,
        return_results_size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        return_token: *mut u32,
    ) -> u32;
}

/// A non-zero host status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostStatus(pub u32);

fn check(status: u32) -> Result<(), HostStatus> {
    if status == 0 {
        Ok(())
    } else {
        Err(HostStatus(status))
    }
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate` (a boxed
/// slice of exactly `size` bytes).
///
/// # Safety
/// `data` is null or was returned by `proxy_on_memory_allocate(size)` and is owned by nobody
/// else.
unsafe fn host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: per the contract above, a live allocation of exactly `size` bytes, now ours.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

pub fn log(level: LogLevel, message: &str) {
    // SAFETY: pointer and length of a live slice; the host only reads it. A failed log has
    // nowhere to go.
    let _ = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// Envoy's wall clock, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> Result<u64, HostStatus> {
    let mut nanos = 0u64;
    // SAFETY: the host writes one u64 through a pointer to a live local.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos)
}

/// The whole plugin configuration (empty when Envoy has none).
pub fn plugin_configuration(size: usize) -> Result<Vec<u8>, HostStatus> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: the host writes a pointer and a length through pointers to live locals.
    let status = unsafe {
        proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, size, &mut data, &mut len)
    };
    check(status)?;
    // SAFETY: allocated by the host through `proxy_on_memory_allocate(len)`, handed to us.
    Ok(unsafe { host_buffer(data, len) })
}

/// The serialized header map `map_type`, in one host call (empty when the host has none).
pub fn header_map_bytes(map_type: MapType) -> Result<Vec<u8>, HostStatus> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a length through pointers to live locals.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    check(status)?;
    // SAFETY: allocated by the host through `proxy_on_memory_allocate(size)`, handed to us.
    Ok(unsafe { host_buffer(data, size) })
}

pub fn remove_header(map_type: MapType, name: &[u8]) -> Result<(), HostStatus> {
    // SAFETY: pointers and lengths of live slices; the host only reads them.
    check(unsafe { proxy_remove_header_map_value(map_type, name.as_ptr(), name.len()) })
}

pub fn add_header(map_type: MapType, name: &[u8], value: &[u8]) -> Result<(), HostStatus> {
    // SAFETY: pointers and lengths of live slices; the host only reads them.
    check(unsafe {
        proxy_add_header_map_value(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn replace_header(map_type: MapType, name: &[u8], value: &[u8]) -> Result<(), HostStatus> {
    // SAFETY: pointers and lengths of live slices; the host only reads them.
    check(unsafe {
        proxy_replace_header_map_value(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Answers the request locally (Envoy sends it after the current callback returns).
pub fn send_local_response(
    status: u32,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), HostStatus> {
    let pairs = podgate_protocol::wire::encode_header_map(headers);
    // SAFETY: pointers and lengths of live slices; the host only reads them.
    check(unsafe {
        proxy_send_local_response(
            status,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            pairs.as_ptr(),
            pairs.len(),
            -1,
        )
    })
}

/// Sets the property `path` (one segment) of the effective context to `value`; Envoy keeps it
/// as the filter state `wasm.<path>`, which access logs read.
pub fn set_property(path: &str, value: &str) -> Result<(), HostStatus> {
    // SAFETY: pointers and lengths of live slices, only read by the host.
    check(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// Calls Envoy's foreign function `name` without arguments, dropping its result.
pub fn call_foreign_function(name: &str) -> Result<(), HostStatus> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: pointers and lengths of live slices; the host writes a pointer and a length
    // through pointers to live locals.
    let status = unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            std::ptr::null(),
            0,
            &mut data,
            &mut size,
        )
    };
    check(status)?;
    // SAFETY: any result was allocated through `proxy_on_memory_allocate(size)`; freed here.
    drop(unsafe { host_buffer(data, size) });
    Ok(())
}

pub fn define_counter(name: &str) -> Result<u32, HostStatus> {
    let mut id = 0u32;
    // SAFETY: pointer and length of a live slice; the host writes one u32 to a live local.
    check(unsafe { proxy_define_metric(METRIC_COUNTER, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_counter(id: u32, by: i64) -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(id, by) })
}

/// Makes `context_id` the context later host calls act on (until the callback returns).
pub fn set_effective_context(context_id: u32) -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(context_id) })
}

/// Resets the effective context's stream (Envoy does it right after the current callback).
pub fn reset_stream() -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    check(unsafe { proxy_close_stream(STREAM_HTTP_REQUEST) })
}

pub fn set_tick_period_ms(period: u32) -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// The value of the property at `path` (its segments joined by NUL, as the ABI has it), for
/// the effective context.
pub fn property(path: &[&str]) -> Result<Vec<u8>, HostStatus> {
    let path = path.join("\0");
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: pointer and length of a live slice, only read by the host; it writes a pointer
    // and a length through pointers to live locals.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    check(status)?;
    // SAFETY: allocated by the host through `proxy_on_memory_allocate(size)`, handed to us.
    Ok(unsafe { host_buffer(data, size) })
}

/// Resumes the effective context's request (paused by its request-headers callback).
pub fn continue_request() -> Result<(), HostStatus> {
    // SAFETY: no pointers.
    check(unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) })
}

/// Sends an HTTP request to `cluster` with the serialized `headers` (pseudo-headers included)
/// and `body`; Envoy answers through `proxy_on_http_call_response` with the returned token,
/// within `timeout_ms`. The call belongs to the effective context.
pub fn http_call(
    cluster: &str,
    headers: &[u8],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, HostStatus> {
    let trailers = podgate_protocol::wire::encode_header_map::<&str, &str>(&[]);
    let mut token = 0u32;
    // SAFETY: pointers and lengths of live slices, only read by the host; it writes one u32
    // through a pointer to a live local.
    check(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// The body of the HTTP call's answer being delivered (`size` bytes).
pub fn http_call_body(size: usize) -> Result<Vec<u8>, HostStatus> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: the host writes a pointer and a length through pointers to live locals.
    let status = unsafe {
        proxy_get_buffer_bytes(BUFFER_HTTP_CALL_RESPONSE_BODY, 0, size, &mut data, &mut len)
    };
    check(status)?;
    // SAFETY: allocated by the host through `proxy_on_memory_allocate(len)`, handed to us.
    Ok(unsafe { host_buffer(data, len) })
}
