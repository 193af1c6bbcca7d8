//! Builders for the resources podgate pushes: clusters (CDS) and the Wasm filter's extension
//! config (ECDS). Pure functions from plain values to protobufs; the control plane decides which
//! cluster layout to use.
//!
//! Two layouts are supported:
//! - one ORIGINAL_DST cluster for every pod ([`original_dst_cluster`]): the filter sets the
//!   `x-podgate-upstream: ip:port` header from its pod directory and Envoy connects there. One
//!   cluster whatever the number of pods; hosts are created on use and cleaned up when idle.
//!   The host is chosen after the route's header removals, so the cluster's own upstream filter
//!   removes the header once the host is chosen: the pod never receives it.
//! - a cluster per pod ([`fixed_host_cluster`]): Envoy's memory grows with every pod
//!   (`BENCHMARKS.md`, "Scale"), but per-pod circuit breakers and stats.
//!
//! Either way every cluster carries Envoy's edge settings: a connect timeout, circuit breakers,
//! and the 32 KiB per-connection buffer limit ([`EDGE_CONNECTION_BUFFER_LIMIT_BYTES`]).

use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, LbConfig, LbPolicy, OriginalDstLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster};
use envoy_types::pb::envoy::config::common::mutation_rules::v3::{
    header_mutation, HeaderMutation as HeaderMutationRule,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, async_data_source, data_source, socket_address, Address, AsyncDataSource, DataSource,
    Http1ProtocolOptions, Http2ProtocolOptions, SocketAddress, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::{
    HeaderMutation as HeaderMutationFilter, Mutations,
};
use envoy_types::pb::envoy::extensions::filters::http::upstream_codec::v3::UpstreamCodec;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    explicit_http_config, ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::wasm::v3::{
    plugin_config, FailurePolicy, PluginConfig, VmConfig,
};
use envoy_types::pb::google::protobuf::{Any, Duration as ProtoDuration, StringValue, UInt32Value};
use envoy_types::util::pack_any;

/// The header the filter sets to `ip:port` for the original-destination cluster.
pub const DEFAULT_UPSTREAM_HEADER: &str = "x-podgate-upstream";
/// The Envoy Wasm runtime podgate's filter runs in.
pub const WASM_RUNTIME_V8: &str = "envoy.wasm.runtime.v8";
/// Key under which cluster protocol options live in `typed_extension_protocol_options`.
const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Bytes Envoy buffers per upstream connection before it applies back-pressure (Envoy's edge
/// best practice, also on every listener): a pod that floods answers to a slow client costs
/// 32 KiB, not Envoy's default of 1 MiB, per connection.
pub const EDGE_CONNECTION_BUFFER_LIMIT_BYTES: u32 = 32 * 1024;

/// Circuit breaker limits of a cluster (default priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakerLimits {
    /// Upstream connections.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests in flight.
    pub max_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
}

impl CircuitBreakerLimits {
    /// Envoy's own defaults (1024 / 1024 / 1024 / 3): right for one pod.
    pub const PER_POD: CircuitBreakerLimits = CircuitBreakerLimits {
        max_connections: 1024,
        max_pending_requests: 1024,
        max_requests: 1024,
        max_retries: 3,
    };

    /// For one cluster shared by every pod: the limits are cluster-wide, so Envoy's defaults
    /// would cap the whole fleet at 1024 requests.
    pub const SHARED: CircuitBreakerLimits = CircuitBreakerLimits {
        max_connections: 100_000,
        max_pending_requests: 100_000,
        max_requests: 100_000,
        max_retries: 100,
    };

    fn to_proto(self) -> CircuitBreakers {
        CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: Some(UInt32Value {
                    value: self.max_connections,
                }),
                max_pending_requests: Some(UInt32Value {
                    value: self.max_pending_requests,
                }),
                max_requests: Some(UInt32Value {
                    value: self.max_requests,
                }),
                max_retries: Some(UInt32Value {
                    value: self.max_retries,
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }
}

/// Options of the original-destination cluster shared by every pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalDstClusterOptions {
    /// Cluster name the filter routes to.
    pub name: String,
    /// Header carrying `ip:port` of the pod's upstream, set by the filter after stripping.
    pub http_header_name: String,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// How often idle original-destination hosts are removed.
    pub cleanup_interval: Duration,
    /// Cluster-wide circuit breaker limits.
    pub circuit_breakers: CircuitBreakerLimits,
}

impl Default for OriginalDstClusterOptions {
    fn default() -> Self {
        OriginalDstClusterOptions {
            name: "podgate_pods".to_owned(),
            http_header_name: DEFAULT_UPSTREAM_HEADER.to_owned(),
            connect_timeout: Duration::from_secs(5),
            cleanup_interval: Duration::from_secs(60),
            circuit_breakers: CircuitBreakerLimits::SHARED,
        }
    }
}

/// One ORIGINAL_DST cluster whose destination comes from an HTTP header (`ip:port`).
pub fn original_dst_cluster(options: &OriginalDstClusterOptions) -> Cluster {
    Cluster {
        name: options.name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        lb_config: Some(LbConfig::OriginalDstLbConfig(OriginalDstLbConfig {
            use_http_header: true,
            http_header_name: options.http_header_name.clone(),
            ..Default::default()
        })),
        connect_timeout: Some(proto_duration(options.connect_timeout)),
        cleanup_interval: Some(proto_duration(options.cleanup_interval)),
        circuit_breakers: Some(options.circuit_breakers.to_proto()),
        per_connection_buffer_limit_bytes: Some(UInt32Value {
            value: EDGE_CONNECTION_BUFFER_LIMIT_BYTES,
        }),
        typed_extension_protocol_options: [(
            HTTP_PROTOCOL_OPTIONS_KEY.to_owned(),
            pack_any(removing_upstream_filters(
                &options.http_header_name,
                UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                    protocol_config: Some(
                        explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                            Http1ProtocolOptions::default(),
                        ),
                    ),
                }),
            )),
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

/// HTTP protocol options whose upstream filters remove `header` from every request once the
/// host is chosen (`header_mutation`, then the codec every upstream filter chain ends with).
fn removing_upstream_filters(
    header: &str,
    protocol: UpstreamProtocolOptions,
) -> HttpProtocolOptions {
    let mutation = HeaderMutationFilter {
        mutations: Some(Mutations {
            request_mutations: vec![HeaderMutationRule {
                action: Some(header_mutation::Action::Remove(header.to_owned())),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let filter = |name: &str, config: Any| HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    HttpProtocolOptions {
        upstream_protocol_options: Some(protocol),
        http_filters: vec![
            filter("envoy.filters.http.header_mutation", pack_any(mutation)),
            filter(
                "envoy.filters.http.upstream_codec",
                pack_any(UpstreamCodec {}),
            ),
        ],
        ..Default::default()
    }
}

/// Upstream HTTP protocol of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// Envoy's default (HTTP/1.1), what a pod's nginx and the control plane's HTTP speak.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (e.g. a gRPC upstream).
    Http2,
}

/// Options of a cluster with one fixed `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedHostClusterOptions {
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Circuit breaker limits.
    pub circuit_breakers: CircuitBreakerLimits,
    /// Upstream HTTP protocol.
    pub protocol: UpstreamProtocol,
}

impl Default for FixedHostClusterOptions {
    fn default() -> Self {
        FixedHostClusterOptions {
            connect_timeout: Duration::from_secs(5),
            circuit_breakers: CircuitBreakerLimits::PER_POD,
            protocol: UpstreamProtocol::Http1,
        }
    }
}

/// A cluster with one endpoint: STATIC when `host` is an IP address, STRICT_DNS otherwise.
/// Used for the control plane's own HTTP endpoint and for per-pod clusters.
pub fn fixed_host_cluster(
    name: &str,
    host: &str,
    port: u16,
    options: &FixedHostClusterOptions,
) -> Cluster {
    let is_ip = host.parse::<IpAddr>().is_ok();
    let discovery_type = if is_ip {
        DiscoveryType::Static
    } else {
        DiscoveryType::StrictDns
    };
    let endpoint = LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_addr(host, port)),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut cluster = Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery_type as i32)),
        lb_policy: LbPolicy::RoundRobin as i32,
        connect_timeout: Some(proto_duration(options.connect_timeout)),
        circuit_breakers: Some(options.circuit_breakers.to_proto()),
        per_connection_buffer_limit_bytes: Some(UInt32Value {
            value: EDGE_CONNECTION_BUFFER_LIMIT_BYTES,
        }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    if !is_ip {
        // Prefer IPv4 so `localhost` means 127.0.0.1, like the rest of the local stack.
        cluster.dns_lookup_family = DnsLookupFamily::V4Preferred as i32;
    }
    if options.protocol == UpstreamProtocol::Http2 {
        let protocol_options = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(
                        explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            )),
            ..Default::default()
        };
        cluster.typed_extension_protocol_options.insert(
            HTTP_PROTOCOL_OPTIONS_KEY.to_owned(),
            pack_any(protocol_options),
        );
    }
    cluster
}

/// Where the CA certificates that verify an upstream's TLS certificate come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustedCa {
    /// PEM text, inline in the cluster (a private CA).
    Pem(String),
    /// A PEM bundle file on the Envoy host (the system's roots).
    File(String),
}

/// TLS to an upstream: the name sent as SNI and required in the certificate's subject
/// alternative names, and the CA that must have signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub server_name: String,
    pub trusted_ca: TrustedCa,
}

/// Makes `cluster` speak TLS to its upstream: SNI `server_name`, the certificate verified
/// against `trusted_ca` and required to name `server_name` (a DNS name, or an IP address SAN
/// when it is one).
pub fn with_upstream_tls(mut cluster: Cluster, tls: &UpstreamTls) -> Cluster {
    use envoy_types::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        common_tls_context, subject_alt_name_matcher::SanType, CertificateValidationContext,
        CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};

    let trusted_ca = match &tls.trusted_ca {
        TrustedCa::Pem(pem) => data_source::Specifier::InlineString(pem.clone()),
        TrustedCa::File(path) => data_source::Specifier::Filename(path.clone()),
    };
    let san_type = if tls.server_name.parse::<IpAddr>().is_ok() {
        SanType::IpAddress
    } else {
        SanType::Dns
    };
    let validation = CertificateValidationContext {
        trusted_ca: Some(DataSource {
            specifier: Some(trusted_ca),
            ..Default::default()
        }),
        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
            san_type: san_type as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(tls.server_name.clone())),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(validation),
            ),
            ..Default::default()
        }),
        // SNI is a host name: none for an IP address (RFC 6066 section 3).
        sni: if san_type == SanType::Dns {
            tls.server_name.clone()
        } else {
            String::new()
        },
        ..Default::default()
    };
    cluster.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
    });
    cluster
}

/// What the Wasm filter's ECDS resource is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmFilterSpec<'a> {
    /// The extension config name the listener's `config_discovery` asks for (e.g. `podgate`).
    pub extension_name: &'a str,
    /// Path of the `.wasm` file on the Envoy host.
    pub wasm_path: &'a str,
    /// The plugin's root id.
    pub root_id: &'a str,
    /// The plugin configuration, a JSON document handed to `on_configure`.
    pub configuration_json: &'a str,
}

/// The ECDS resource for the podgate Wasm HTTP filter: fail closed, V8, code from a local file,
/// the JSON configuration as a `google.protobuf.StringValue`.
///
/// The VM config (id, runtime, code) depends only on the extension name and path, so a
/// configuration-only update keeps the VMs and just calls `on_configure` again.
pub fn wasm_filter_extension_config(spec: &WasmFilterSpec<'_>) -> TypedExtensionConfig {
    let vm_config = VmConfig {
        vm_id: spec.extension_name.to_owned(),
        runtime: WASM_RUNTIME_V8.to_owned(),
        code: Some(AsyncDataSource {
            specifier: Some(async_data_source::Specifier::Local(DataSource {
                specifier: Some(data_source::Specifier::Filename(spec.wasm_path.to_owned())),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let plugin = PluginConfig {
        name: spec.extension_name.to_owned(),
        root_id: spec.root_id.to_owned(),
        configuration: Some(pack_any(StringValue {
            value: spec.configuration_json.to_owned(),
        })),
        // Fail closed: a broken VM answers 503, it never lets requests through unchecked.
        // (`fail_open` is deprecated in favour of this and stays at its default, false.)
        failure_policy: FailurePolicy::FailClosed as i32,
        vm: Some(plugin_config::Vm::VmConfig(vm_config)),
        ..Default::default()
    };
    TypedExtensionConfig {
        name: spec.extension_name.to_owned(),
        typed_config: Some(pack_any(Wasm {
            config: Some(plugin),
        })),
    }
}

fn socket_addr(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn proto_duration(duration: Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use prost::Message;

    #[test]
    fn original_dst_cluster_routes_by_header() {
        let cluster = original_dst_cluster(&OriginalDstClusterOptions::default());
        assert_eq!(cluster.name, "podgate_pods");
        assert_eq!(
            cluster.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32
            ))
        );
        assert_eq!(cluster.lb_policy, LbPolicy::ClusterProvided as i32);
        let Some(LbConfig::OriginalDstLbConfig(lb)) = &cluster.lb_config else {
            panic!("no original_dst_lb_config");
        };
        assert!(lb.use_http_header);
        assert_eq!(lb.http_header_name, "x-podgate-upstream");
        let thresholds = &cluster.circuit_breakers.unwrap().thresholds[0];
        assert_eq!(thresholds.max_requests.unwrap().value, 100_000);
        assert_eq!(cluster.cleanup_interval.unwrap().seconds, 60);
    }

    #[test]
    fn upstream_tls_sends_sni_and_verifies_the_name_against_the_ca() {
        use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
            common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType,
            UpstreamTlsContext,
        };
        use prost::Message as _;

        let decode = |cluster: &Cluster| {
            let socket = cluster.transport_socket.as_ref().unwrap();
            assert_eq!(socket.name, "envoy.transport_sockets.tls");
            let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
                panic!("no typed config");
            };
            UpstreamTlsContext::decode(any.value.as_slice()).unwrap()
        };
        let base = fixed_host_cluster(
            "svc",
            "api.example.com",
            443,
            &FixedHostClusterOptions::default(),
        );
        let tls = with_upstream_tls(
            base.clone(),
            &UpstreamTls {
                server_name: "api.example.com".into(),
                trusted_ca: TrustedCa::Pem("-----BEGIN CERTIFICATE-----".into()),
            },
        );
        let context = decode(&tls);
        assert_eq!(context.sni, "api.example.com");
        let Some(ValidationContextType::ValidationContext(validation)) =
            context.common_tls_context.unwrap().validation_context_type
        else {
            panic!("no validation context");
        };
        let ca = validation.trusted_ca.unwrap().specifier.unwrap();
        assert_eq!(
            ca,
            data_source::Specifier::InlineString("-----BEGIN CERTIFICATE-----".into())
        );
        let san = &validation.match_typed_subject_alt_names[0];
        assert_eq!(san.san_type, SanType::Dns as i32);
        // An IP address: no SNI, an IP address SAN; the system's roots from a file.
        let by_ip = with_upstream_tls(
            base,
            &UpstreamTls {
                server_name: "10.0.0.9".into(),
                trusted_ca: TrustedCa::File("/etc/ssl/certs/ca-certificates.crt".into()),
            },
        );
        let context = decode(&by_ip);
        assert_eq!(context.sni, "");
        let Some(ValidationContextType::ValidationContext(validation)) =
            context.common_tls_context.unwrap().validation_context_type
        else {
            panic!("no validation context");
        };
        assert_eq!(
            validation.match_typed_subject_alt_names[0].san_type,
            SanType::IpAddress as i32
        );
        assert_eq!(
            validation.trusted_ca.unwrap().specifier.unwrap(),
            data_source::Specifier::Filename("/etc/ssl/certs/ca-certificates.crt".into())
        );
    }

    #[test]
    fn fixed_host_cluster_is_static_for_ips_and_dns_for_names() {
        let options = FixedHostClusterOptions::default();
        let by_ip = fixed_host_cluster("cp", "127.0.0.1", 8080, &options);
        assert_eq!(
            by_ip.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
        );
        let by_name = fixed_host_cluster("cp", "localhost", 8080, &options);
        assert_eq!(
            by_name.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32))
        );
        let endpoint = &by_ip.load_assignment.unwrap().endpoints[0].lb_endpoints[0];
        let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &endpoint.host_identifier
        else {
            panic!("no endpoint");
        };
        let Some(address::Address::SocketAddress(socket)) =
            &endpoint.address.as_ref().unwrap().address
        else {
            panic!("no socket address");
        };
        assert_eq!(socket.address, "127.0.0.1");
        assert_eq!(
            socket.port_specifier,
            Some(socket_address::PortSpecifier::PortValue(8080))
        );
        assert!(by_ip.typed_extension_protocol_options.is_empty());
        let http2 = fixed_host_cluster(
            "grpc",
            "127.0.0.1",
            18000,
            &FixedHostClusterOptions {
                protocol: UpstreamProtocol::Http2,
                ..options
            },
        );
        assert!(http2
            .typed_extension_protocol_options
            .contains_key(HTTP_PROTOCOL_OPTIONS_KEY));
    }

    /// The edge settings every cluster we push must carry, whatever its options: a connect
    /// timeout no longer than 5 s, the 32 KiB buffer limit, and explicit circuit breakers.
    fn assert_edge_hardened(cluster: &Cluster, what: &str) {
        let connect = cluster
            .connect_timeout
            .unwrap_or_else(|| panic!("{what}: no connect_timeout"));
        assert!(
            connect.seconds > 0 && connect.seconds <= 5,
            "{what}: connect_timeout {connect:?}"
        );
        assert_eq!(
            cluster.per_connection_buffer_limit_bytes,
            Some(UInt32Value { value: 32768 }),
            "{what}: per_connection_buffer_limit_bytes"
        );
        let breakers = cluster
            .circuit_breakers
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no circuit_breakers"));
        assert_eq!(
            breakers.thresholds.len(),
            1,
            "{what}: one default-priority threshold"
        );
        let limits = &breakers.thresholds[0];
        for (name, limit) in [
            ("max_connections", limits.max_connections),
            ("max_pending_requests", limits.max_pending_requests),
            ("max_requests", limits.max_requests),
            ("max_retries", limits.max_retries),
        ] {
            assert!(
                limit.is_some_and(|l| l.value > 0),
                "{what}: circuit breaker {name} is {limit:?}"
            );
        }
    }

    #[test]
    fn every_cluster_we_push_carries_the_edge_settings() {
        let pods = original_dst_cluster(&OriginalDstClusterOptions::default());
        assert_edge_hardened(&pods, "original-destination cluster");
        // The options the control plane pushes (control-plane/src/xds_sync.rs): SHARED limits.
        let shared = &pods.circuit_breakers.as_ref().unwrap().thresholds[0];
        assert_eq!(shared.max_connections.unwrap().value, 100_000);
        assert_eq!(shared.max_pending_requests.unwrap().value, 100_000);
        assert_eq!(shared.max_retries.unwrap().value, 100);
        for (what, host, protocol) in [
            ("fixed host by IP", "127.0.0.1", UpstreamProtocol::Http1),
            (
                "fixed host by name",
                "podgate-control-plane",
                UpstreamProtocol::Http1,
            ),
            (
                "fixed host over HTTP/2",
                "127.0.0.1",
                UpstreamProtocol::Http2,
            ),
        ] {
            let cluster = fixed_host_cluster(
                "c",
                host,
                8080,
                &FixedHostClusterOptions {
                    protocol,
                    ..FixedHostClusterOptions::default()
                },
            );
            assert_edge_hardened(&cluster, what);
            let per_pod = &cluster.circuit_breakers.as_ref().unwrap().thresholds[0];
            assert_eq!(per_pod.max_requests.unwrap().value, 1024, "{what}");
        }
        // Options cannot turn the buffer limit off: it is not an option.
        let custom = original_dst_cluster(&OriginalDstClusterOptions {
            connect_timeout: Duration::from_millis(1500),
            circuit_breakers: CircuitBreakerLimits::PER_POD,
            ..OriginalDstClusterOptions::default()
        });
        assert_edge_hardened(&custom, "custom original-destination cluster");
        assert_eq!(custom.connect_timeout.unwrap().nanos, 500_000_000);
        // The check itself: a cluster with Envoy's defaults (no buffer limit, no breakers) fails.
        let bare = std::panic::catch_unwind(|| assert_edge_hardened(&Cluster::default(), "bare"));
        assert!(bare.is_err(), "a bare cluster passed the edge check");
    }

    #[test]
    fn wasm_filter_config_fails_closed_and_carries_json() {
        let config = wasm_filter_extension_config(&WasmFilterSpec {
            extension_name: "podgate",
            wasm_path: "/etc/envoy/podgate.wasm",
            root_id: "podgate_root",
            configuration_json: r#"{"keys":[]}"#,
        });
        assert_eq!(config.name, "podgate");
        let any = config.typed_config.unwrap();
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
        );
        let wasm = Wasm::decode(any.value.as_slice()).unwrap();
        let plugin = wasm.config.unwrap();
        #[allow(deprecated)]
        let fail_open = plugin.fail_open;
        assert!(!fail_open);
        assert_eq!(plugin.failure_policy, FailurePolicy::FailClosed as i32);
        assert_eq!(plugin.root_id, "podgate_root");
        let configuration = plugin.configuration.unwrap();
        assert_eq!(
            configuration.type_url,
            "type.googleapis.com/google.protobuf.StringValue"
        );
        let json = StringValue::decode(configuration.value.as_slice()).unwrap();
        assert_eq!(json.value, r#"{"keys":[]}"#);
        let Some(plugin_config::Vm::VmConfig(vm)) = plugin.vm else {
            panic!("no vm config");
        };
        assert_eq!(vm.runtime, "envoy.wasm.runtime.v8");
        let Some(async_data_source::Specifier::Local(local)) = vm.code.unwrap().specifier else {
            panic!("no local code");
        };
        assert_eq!(
            local.specifier,
            Some(data_source::Specifier::Filename(
                "/etc/envoy/podgate.wasm".into()
            ))
        );
    }
}
