//! podgate's Envoy ADS server (state of the world, gRPC on tonic, types from `envoy-types`).
//!
//! - [`snapshot`]: immutable, content-versioned [`Snapshot`]s and the one-writer
//!   [`SnapshotCache`] that publishes them.
//! - [`protocol`]: the per-stream protocol as a pure state machine ([`AdsStream`]).
//! - [`server`]: the `AggregatedDiscoveryService` ([`AdsServer`], [`serve`]) and its counters.
//! - [`builders`]: clusters (original destination, fixed host) and the Wasm filter's ECDS config.
//!
//! The crate knows nothing about the database: the control plane builds resources with
//! [`builders`], wraps them in a [`Snapshot`] and calls [`SnapshotCache::set`].

pub mod builders;
pub mod protocol;
pub mod server;
pub mod snapshot;

pub use builders::{
    fixed_host_cluster, original_dst_cluster, wasm_filter_extension_config, CircuitBreakerLimits,
    FixedHostClusterOptions, OriginalDstClusterOptions, UpstreamProtocol, WasmFilterSpec,
    DEFAULT_UPSTREAM_HEADER,
};
pub use protocol::{AdsStream, RequestEvent, RequestOutcome};
pub use server::{serve, AdsServer, XdsMetrics, XdsServeError};
pub use snapshot::{
    ResourceSet, ResourceType, Snapshot, SnapshotCache, SnapshotError, CLUSTER_TYPE_URL,
    EXTENSION_CONFIG_TYPE_URL,
};

/// The `envoy-types` crate this API is expressed in (tonic 0.14 / prost 0.14).
pub use envoy_types;
