//! podgate's contract between minting and verifying: the pod-host grammar, token kinds and
//! claims, cookie rules, the filter's configuration schema and the answers the filter gives.
//! Pure Rust with no I/O, so it builds natively and for `wasm32-wasip1`.

pub mod access_log;
pub mod assertion;
pub mod concurrent;
pub mod config;
pub mod cookie;
pub mod cors;
pub mod cutoff;
pub mod exchange;
pub mod gate;
pub mod host;
pub mod own_paths;
pub mod page;
pub mod path;
pub mod rate;
pub mod redirect;
pub mod renewal;
pub mod reply;
pub mod resource;
pub mod response;
pub mod set_cookie;
pub mod token;
pub mod wake;
pub mod wire;
