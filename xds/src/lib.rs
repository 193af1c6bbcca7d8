//! podgate's Envoy ADS server (state of the world, gRPC on tonic, types from `envoy-types`).
//!
//! - [`snapshot`]: immutable, content-versioned [`Snapshot`]s and the one-writer
//!   [`SnapshotCache`] that publishes them.
//! - [`protocol`]: the per-stream protocol as a pure state machine ([`AdsStream`]).
//! - [`server`]: the `AggregatedDiscoveryService` ([`AdsServer`], [`serve`]) and its counters.
//! - [`builders`]: clusters (original destination, fixed host) and the Wasm filter's ECDS config.
//! - [`health`]: `grpc.health.v1.Health` beside ADS, serving or not as the caller says
//!   ([`AdsServer::set_serving`]).
//!
//! The crate knows nothing about the database: the control plane builds resources with
//! [`builders`], wraps them in a [`Snapshot`] and calls [`SnapshotCache::set`].
//!
//! ```no_run
//! use podgate_xds::*;
//!
//! # async fn run(filter_json: String) -> Result<(), Box<dyn std::error::Error>> {
//! let cache = SnapshotCache::new();
//! let server = AdsServer::new(cache.clone());
//! let metrics = server.metrics(); // acks, nacks, streams_connected: plain atomics
//!
//! // On start and after every relevant database change (one writer):
//! let snapshot = Snapshot::new(
//!     vec![
//!         original_dst_cluster(&OriginalDstClusterOptions::default()),
//!         fixed_host_cluster("podgate_control_plane", "127.0.0.1", 8080, &Default::default()),
//!     ],
//!     vec![wasm_filter_extension_config(&WasmFilterSpec {
//!         extension_name: "podgate",
//!         wasm_path: "/etc/envoy/podgate_filter.wasm",
//!         root_id: "podgate",
//!         configuration_json: &filter_json,
//!     })],
//! )?;
//! let pushed = cache.set(snapshot); // false when nothing changed: no push
//!
//! // Serve until shutdown (or mount `server.service()` and `server.health_service()` on your
//! // own tonic server). Say NOT_SERVING while the configuration source is unreachable:
//! // server.set_serving(false);
//! server
//!     .serve("127.0.0.1:18000".parse()?, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! # let _ = (metrics, pushed);
//! # Ok(())
//! # }
//! ```

pub mod builders;
pub mod health;
pub mod protocol;
pub mod server;
pub mod snapshot;

pub use builders::{
    fixed_host_cluster, original_dst_cluster, wasm_filter_extension_config, with_upstream_tls,
    CircuitBreakerLimits, FixedHostClusterOptions, OriginalDstClusterOptions, TrustedCa,
    UpstreamProtocol, UpstreamTls, WasmFilterSpec, DEFAULT_UPSTREAM_HEADER,
};
pub use protocol::{AdsStream, RequestEvent, RequestOutcome};
pub use server::{
    serve, AdsServer, StreamStatus, XdsMetrics, XdsObserver, XdsServeError, ADS_SERVICE,
};
pub use snapshot::{
    ResourceSet, ResourceType, Snapshot, SnapshotCache, SnapshotError, CLUSTER_TYPE_URL,
    EXTENSION_CONFIG_TYPE_URL,
};

/// The `envoy-types` crate this API is expressed in (tonic 0.14 / prost 0.14).
pub use envoy_types;
