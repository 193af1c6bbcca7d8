//! The proxy-wasm imports the filter calls directly: the SDK's wrappers for these panic on a
//! status they do not expect (or on a non-UTF-8 name), and a panic kills the worker's VM. Here
//! every status is a value.

use proxy_wasm::types::MapType;

/// `StreamType::HttpRequest` of the ABI: closing it resets the whole stream in Envoy.
const STREAM_HTTP_REQUEST: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
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
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
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

/// The serialized header map `map_type`, in one host call (empty when the host has none).
pub fn header_map_bytes(map_type: MapType) -> Result<Vec<u8>, HostStatus> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to a buffer it allocated through the SDK's exported
    // `proxy_on_memory_allocate` (a `Vec<u8>` of capacity `size`), which we then own.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    check(status)?;
    if data.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: see above; the buffer is exactly `size` bytes long and ours to free.
    Ok(unsafe { Vec::from_raw_parts(data, size, size) })
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
