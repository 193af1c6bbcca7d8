//! A proxy-wasm filter that does nothing: the baseline of what Envoy spends on a Wasm filter
//! with podgate's callbacks (a VM entry for request headers, response headers and the stream's
//! deletion), measured by `just bench` as case W. With a number N as its configuration, it
//! instead replaces one request header N times per request (case W-calls): what N host calls
//! cost.

use std::cell::Cell;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
}

const PLUGIN_CONFIGURATION: u32 = 7;
const REQUEST_HEADERS: u32 = 0;

thread_local! {
    static CALLS: Cell<u32> = const { Cell::new(0) };
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    Box::into_raw(vec![0u8; size].into_boxed_slice()).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_root: u32, size: usize) -> u32 {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut len = 0usize;
    // SAFETY: the host writes a pointer and a length through pointers to live locals.
    let status =
        unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &mut data, &mut len) };
    let calls = if status == 0 && !data.is_null() {
        // SAFETY: the host allocated `len` bytes through `proxy_on_memory_allocate`.
        let bytes = unsafe { Vec::from_raw_parts(data, len, len) };
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0)
    } else {
        0
    };
    CALLS.with(|c| c.set(calls));
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context: u32, _headers: usize, _end: u32) -> u32 {
    for _ in 0..CALLS.with(Cell::get) {
        // SAFETY: pointers and lengths of static byte strings; the host only reads them.
        unsafe {
            proxy_replace_header_map_value(REQUEST_HEADERS, b"x-noop".as_ptr(), 6, b"1".as_ptr(), 1)
        };
    }
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_context: u32, _headers: usize, _end: u32) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(_context: u32) {}
