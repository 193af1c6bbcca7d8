//! The callbacks the filter exports to Envoy (proxy-wasm ABI 0.2.1). Envoy skips every callback
//! a module does not export, so this list is the per-request cost: a stream enters the VM for
//! its request headers, its response headers and its deletion, and for nothing else.
//!
//! Each entry point borrows the worker's one `Filter`. Envoy never re-enters a VM from inside
//! a host call the filter makes (local replies and stream resets run after the callback
//! returns), so the borrow cannot fail; if it ever did, the request is refused, never passed.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use podgate_protocol::reply::Denial;

use crate::raw::{self, LogLevel};
use crate::{Action, Filter, Resume};

thread_local! {
    static FILTER: RefCell<Filter> = RefCell::new(Filter::default());
}

/// Runs `f` on the worker's filter, or `busy` if it is already in use.
fn with_filter<T>(busy: impl FnOnce() -> T, f: impl FnOnce(&mut Filter) -> T) -> T {
    FILTER.with(|filter| match filter.try_borrow_mut() {
        Ok(mut filter) => f(&mut filter),
        Err(_) => {
            raw::log(LogLevel::Critical, "podgate: filter re-entered; refusing");
            busy()
        }
    })
}

/// The ABI version marker Envoy looks for.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The WASI reactor's initializer: runs static constructors and installs the panic hook (a
/// panic aborts the VM, which Envoy then fails closed; the hook says why in Envoy's log).
#[no_mangle]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    {
        extern "C" {
            fn __wasm_call_ctors();
        }
        // SAFETY: the reactor contract: called once, before any other export.
        unsafe { __wasm_call_ctors() };
    }
    std::panic::set_hook(Box::new(|info| {
        raw::log(
            LogLevel::Critical,
            &format!("podgate filter panicked: {info}"),
        );
    }));
}

/// Where the host copies data it hands to the filter (header maps, configuration): a boxed
/// slice of exactly `size` bytes, taken back by `raw::host_buffer`.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let buffer: Box<[MaybeUninit<u8>]> = Box::new_uninit_slice(size);
    Box::into_raw(buffer).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    u32::from(with_filter(|| false, Filter::on_vm_start))
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_context_id: u32, configuration_size: usize) -> u32 {
    u32::from(with_filter(
        || false,
        |f| f.on_configure(root_context_id, configuration_size),
    ))
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(_root_context_id: u32) {
    resume(with_filter(Vec::new, Filter::on_tick));
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _num_headers: usize,
    _end_of_stream: u32,
) -> u32 {
    let refuse = || crate::answer(&Denial::NotConfigured.reply());
    with_filter(refuse, |f| f.on_request_headers(context_id)) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(
    context_id: u32,
    _num_headers: usize,
    _end_of_stream: u32,
) -> u32 {
    let reset = || {
        let _ = raw::reset_stream();
        Action::Pause
    };
    with_filter(reset, |f| f.on_response_headers(context_id)) as u32
}

/// The answer to an HTTP call the filter made (a capability renewal or an API-token exchange);
/// entered only when one was made, never on a request's path. The requests that waited for it
/// are resumed, or answered, after the filter is released: resuming one may run Envoy's later filters and a local reply at once,
/// which enters the VM again (its response headers).
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    _context_id: u32,
    token: u32,
    num_headers: usize,
    body_size: usize,
    _num_trailers: usize,
) {
    resume(with_filter(Vec::new, |f| {
        f.on_http_call_response(token, num_headers, body_size)
    }));
}

/// Resumes streams that waited on a call, once the filter is released: resuming may run
/// Envoy's later filters and enter the VM again.
fn resume(waiting: Vec<(u32, Resume)>) {
    for (context_id, resume) in waiting {
        let resumed = raw::set_effective_context(context_id).and_then(|()| match resume {
            Resume::Continue => raw::continue_request(),
            Resume::Reply(reply) => {
                crate::answer(&reply);
                Ok(())
            }
        });
        if let Err(status) = resumed {
            // The stream ended while it waited: nothing to resume.
            raw::log(
                LogLevel::Debug,
                &format!("podgate: cannot resume request {context_id}: {status:?}"),
            );
        }
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    with_filter(|| (), |f| f.on_delete(context_id));
}
