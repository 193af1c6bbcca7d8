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
//!   survives across requests.
//! - Header names are lowercased on the way in; `replace` removes every copy
//!   and appends (current Envoy `setCopy`); pseudo-headers stay first.
//! - A trap kills the VM: that request reports `Outcome::Trapped`, later ones
//!   `Outcome::VmDead`; `configure`/`tick` answer `Err`.
//! - WASI calls that may block (`fd_write`, ...) run on wasmtime-wasi's
//!   internal runtime: drive a `FilterVm` from a plain thread or
//!   `spawn_blocking`, not from inside an async task.

mod abi;
mod artifact;
mod engine;
mod imports;
mod state;
mod vm;

pub use abi::{Action, LogLevel};
pub use artifact::{cargo_build, ensure_built, filter_wasm_path, target_dir, workspace_root};
pub use state::{ForeignCall, LocalReply};
pub use vm::{FilterVm, Outcome, StreamStats, VmOptions};
