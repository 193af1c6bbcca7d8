//! A proxy-wasm host on wasmtime, for tests: it loads a compiled filter
//! (`wasm32-wasip1`, proxy-wasm ABI 0.2.1) and drives it the way Envoy does,
//! recording what the filter did.
//!
//! ```no_run
//! use podgate_wasm_tests::host::{filter_wasm_path, FilterVm, Outcome};
//! # fn main() -> anyhow::Result<()> {
//! let mut vm = FilterVm::new(&filter_wasm_path()?)?;
//! vm.set_time_secs(1_700_000_000);
//! assert!(vm.configure(br#"{"...": "..."}"#)?);
//! match vm.request(&[(":authority", "h"), (":path", "/"), (":method", "GET")])? {
//!     Outcome::Continue { headers } => println!("forwarded {headers:?}"),
//!     Outcome::LocalReply { status, .. } => println!("answered {status}"),
//!     other => println!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! Semantics worth knowing:
//! - The root context is id 1; each request gets a fresh HTTP context (2, 3,
//!   ...). One `FilterVm` is one worker's VM: state the filter keeps (caches)
//!   survives across requests. Build a new `FilterVm` for a fresh worker.
//! - Header names are lowercased on the way in and may be raw bytes;
//!   `proxy_get_header_map_value` answers the first copy; `replace` removes
//!   every copy and appends (current Envoy `setCopy`); pseudo-headers stay
//!   first. Envoy coalesces `cookie` headers into one; pass one here too.
//! - A local reply is reported as `Outcome::LocalReply` whatever the action
//!   returned (see `StreamStats::request_headers_action` for the action). It
//!   is not run back through `proxy_on_response_headers`.
//! - `tick()` runs `proxy_on_tick`; a stream the guest resets from there
//!   (`proxy_set_effective_context` + `proxy_close_stream`) is destroyed right
//!   after the tick (`on_log`, `on_done`, `on_delete`), as Envoy does once the
//!   callback returns, and its id is returned. `configure_closing()` does the
//!   same for `proxy_on_configure` (`configure()` too, without the ids).
//! - The clock (`proxy_get_current_time_nanoseconds` and the WASI wall clock)
//!   follows the system until `set_time`/`set_time_secs` fixes it.
//! - A trap kills the VM: that request reports `Outcome::Trapped` (with the
//!   panic message the SDK logged at critical level), later ones
//!   `Outcome::VmDead`; `configure`/`tick`/`open_stream` answer `Err`.
//! - Fuel (about one unit per wasm instruction) is counted for every call;
//!   `last_stream().fuel` is a deterministic per-request cost.
//! - HTTP callouts fail (as a call to a cluster Envoy lacks) unless the test
//!   calls `accept_http_calls()`: then each is recorded
//!   (`pending_http_calls()`) until the test answers it
//!   (`answer_http_call()`, which runs `proxy_on_http_call_response`).
//! - Imports the host does not model (gRPC callouts) answer an error
//!   status the SDK turns into `Err`, and are listed by
//!   `unimplemented_calls()`; unknown imports are stubbed
//!   (`stubbed_imports()`) so the module still instantiates.
//! - WASI calls that may block (`fd_write`, ...) run on wasmtime-wasi's
//!   internal runtime; a guest writing to stdout from inside an async test
//!   would fail. The SDK and the podgate filter log through `proxy_log`.

mod abi;
mod artifact;
mod engine;
mod imports;
mod outcome;
mod state;
mod vm;

pub use abi::{Action, LogLevel};
pub use artifact::{cargo_build, ensure_built, filter_wasm_path, target_dir, workspace_root};
pub use outcome::{Outcome, StreamStats};
pub use state::{ForeignCall, HttpCall, LocalReply};
pub use vm::{FilterVm, VmOptions};
