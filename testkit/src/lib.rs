//! The test kit every podgate suite and the bench share, so that each piece of test machinery
//! exists once:
//!
//! - [`ads_bootstrap`]: `envoy/podgate.yaml` rendered for a test (ports, node id, and every
//!   control plane Envoy may take its configuration from; plaintext to them or mutual TLS);
//! - [`envoy`]: a real Envoy (binary from `PODGATE_ENVOY` or `<workspace>/.venv/bin/envoy`),
//!   started on a bootstrap given as text (optionally under a wrapper such as `taskset`), with
//!   its admin port, its own pid, a wait until it is ready, its log kept when a test fails, and
//!   stopped for sure when dropped;
//! - [`podgate`]: the `podgate serve` binary on its own work directory (SQLite by default),
//!   with a wait until `/readyz` answers (or its port opens), kill, SIGTERM and restart;
//! - [`process`]: what both launchers stand on: a watchdog that stops the program when its
//!   handle is dropped or the test process dies, and work directories removed likewise;
//! - [`fake_pod`]: a pod stand-in that records every request and connection it accepts, echoes
//!   WebSocket messages and answers with JSON describing what it received, or, for paths under
//!   `/_fake/`, streams, counts an upload, answers late or not at all, or fails;
//! - [`ports`]: loopback ports for programs told each other's ports before they start, taken
//!   below the kernel's ephemeral range so no outgoing connection can take one meanwhile;
//! - [`rng`]: a small seeded xorshift generator for the load and soak drivers;
//! - [`http`]: one HTTP/1.1 exchange written by hand on a fresh connection (for requests a
//!   client library would refuse or rewrite, and for Envoy's admin API);
//! - [`tcp_cut`]: a TCP relay a test can cut and mend, for a network partition between two
//!   programs (a control plane and its database);
//! - [`webdriver`]: Debian's headless Chromium driven over W3C WebDriver by `chromedriver`, the
//!   skip-or-fail rule of the browser tests, and screenshots kept in `artifacts/`.

pub mod ads_bootstrap;
pub mod envoy;
pub mod fake_openai;
pub mod fake_pod;
pub mod fake_token;
pub mod http;
pub mod podgate;
pub mod ports;
pub mod process;
pub mod rng;
pub mod tcp_cut;
pub mod tls_front;
pub mod webdriver;

pub use ads_bootstrap::{AdsBootstrap, EnvoyMtls};
pub use envoy::{envoy_binary, Envoy, EnvoyBuilder, Readiness};
pub use fake_openai::{FakeOpenAi, OpenAiRequest};
pub use fake_pod::{FakePod, Recorded};
pub use fake_token::{FakeTokenEndpoint, IssuedToken, TokenClient, COZE_AUDIENCE};
pub use podgate::{Podgate, PodgateBuilder, ReadyWhen};
pub use ports::free_port;
pub use rng::XorShift;
pub use tcp_cut::TcpCut;
pub use tls_front::TlsFront;

use std::path::{Path, PathBuf};

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.join(".."))
}
