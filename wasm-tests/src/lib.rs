//! Tests of the compiled podgate filter: a proxy-wasm host on wasmtime
//! (`host`) and the end-to-end suite against a real Envoy.

#[cfg(feature = "e2e")]
pub mod e2e;
pub mod host;
