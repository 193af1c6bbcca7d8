//! The callout imports: HTTP calls, recorded for the test to answer once it accepts them;
//! gRPC, not modelled.

use std::collections::HashSet;

use wasmtime::{Caller, Linker};

use super::{headers, read, run, status, unimplemented, write_u32, HostState, Stop};
use crate::host::abi;
use crate::host::state::HttpCall;

pub(super) fn link(
    linker: &mut Linker<HostState>,
    defined: &mut HashSet<(String, String)>,
) -> wasmtime::Result<()> {
    // HTTP callouts: recorded for the test to answer once it accepts them; refused otherwise
    // (BadArgument, as Envoy answers for an unknown cluster). gRPC: not modelled; statuses the
    // SDK turns into `Err` rather than a panic.
    define!(
        linker,
        defined,
        "proxy_http_call",
        |c,
         upstream_ptr: u32,
         upstream_len: u32,
         headers_ptr: u32,
         headers_len: u32,
         body_ptr: u32,
         body_len: u32,
         _trailers_ptr: u32,
         _trailers_len: u32,
         timeout_ms: u32,
         token_ptr: u32| {
            if !c.data().http_calls_accepted {
                return Err(Stop::Status(status::BAD_ARGUMENT));
            }
            let upstream =
                String::from_utf8_lossy(&read(c, upstream_ptr, upstream_len)?).into_owned();
            let raw_headers = read(c, headers_ptr, headers_len)?;
            let pairs = abi::deserialize_pairs(&raw_headers)
                .ok_or(Stop::Status(status::SERIALIZATION_FAILURE))?;
            let body = read(c, body_ptr, body_len)?;
            let token = c.data().next_http_call;
            write_u32(c, token_ptr, token)?;
            let state = c.data_mut();
            state.next_http_call += 1;
            state.http_calls.push(HttpCall {
                token,
                upstream,
                headers: headers::to_strings(&pairs),
                body,
                timeout_ms,
            });
            Ok(status::OK)
        }
    );
    define_unimplemented!(
        linker,
        defined,
        "proxy_grpc_call",
        status::INTERNAL_FAILURE,
        (u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32)
    );
    define_unimplemented!(
        linker,
        defined,
        "proxy_grpc_stream",
        status::INTERNAL_FAILURE,
        (u32, u32, u32, u32, u32, u32, u32, u32, u32)
    );
    define_unimplemented!(
        linker,
        defined,
        "proxy_grpc_send",
        status::NOT_FOUND,
        (u32, u32, u32, u32)
    );
    define_unimplemented!(
        linker,
        defined,
        "proxy_grpc_cancel",
        status::NOT_FOUND,
        (u32)
    );
    define_unimplemented!(
        linker,
        defined,
        "proxy_grpc_close",
        status::NOT_FOUND,
        (u32)
    );
    define_unimplemented!(
        linker,
        defined,
        "proxy_get_status",
        status::UNIMPLEMENTED,
        (u32, u32, u32)
    );
    Ok(())
}
