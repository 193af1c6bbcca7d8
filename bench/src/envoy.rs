//! Starting Envoy (the test kit's launcher: one worker, pinned), talking to its admin API,
//! reading its memory, and the bootstraps of every benchmarked configuration.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use podgate_testkit::Readiness;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::pin::Placement;
use podgate_protocol::config::{CLIENT_FORWARDING_HEADERS, ROUTE_HEADERS};

/// Envoy must be up (admin address written, listener bound) within this.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// A running Envoy: the test kit's launcher (stopped on drop, and when this process dies), with
/// the bench's command line (one worker, pinned, log level `warn`, a base id per Envoy).
pub struct Envoy {
    pub label: String,
    inner: podgate_testkit::Envoy,
    pub listener: SocketAddr,
}

/// A free loopback port (the test kit's: below the ephemeral range).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(podgate_testkit::free_port()?)
}

impl Envoy {
    /// Starts Envoy with `bootstrap` (JSON) and waits for its admin API. `listener` is the port
    /// the bootstrap's listener binds.
    pub async fn start(
        envoy: &Path,
        placement: &Placement,
        label: &str,
        bootstrap: &Value,
        listener: u16,
        base_id: u32,
    ) -> anyhow::Result<Envoy> {
        Envoy::start_workers(envoy, placement, label, bootstrap, listener, base_id, 1).await
    }

    /// [`Envoy::start`] with `workers` worker threads. With more than one, Envoy is not pinned
    /// (its workers could not run in parallel on the one CPU it would get).
    pub async fn start_workers(
        envoy: &Path,
        placement: &Placement,
        label: &str,
        bootstrap: &Value,
        listener: u16,
        base_id: u32,
        workers: u32,
    ) -> anyhow::Result<Envoy> {
        let mut builder =
            podgate_testkit::Envoy::builder(label, &serde_json::to_string_pretty(bootstrap)?)
                .binary(envoy)
                .concurrency(workers)
                .log_level("warn")
                .args([
                    "--base-id".to_owned(),
                    (std::process::id() % 10_000 * 100 + base_id).to_string(),
                ]);
        if let (Some(taskset), Some(cpu), 1) = (&placement.taskset, placement.envoy_cpu, workers) {
            let wrapper: [OsString; 3] = [taskset.into(), "-c".into(), cpu.to_string().into()];
            builder = builder.wrapper(wrapper);
        }
        let mut inner = builder.spawn()?;
        inner.wait_admin(STARTUP_DEADLINE).await?;
        Ok(Envoy {
            label: label.to_owned(),
            inner,
            listener: SocketAddr::from(([127, 0, 0, 1], listener)),
        })
    }

    /// Envoy's own pid (not a wrapper's): `taskset` execs Envoy.
    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// A counter from the admin `/stats` (0 when absent).
    pub async fn counter(&self, name: &str) -> anyhow::Result<u64> {
        self.inner.counter(name).await
    }

    pub fn log_tail(&self) -> String {
        self.inner.log_tail()
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        proc_status_kb(self.pid(), "VmRSS:").map(|kb| kb * 1024)
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        proc_status_kb(self.pid(), "VmHWM:").map(|kb| kb * 1024)
    }

    /// Waits until the admin API reports LIVE and the listener accepts connections.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        if let Readiness::Exited(code) = self.inner.wait_ready(STARTUP_DEADLINE).await? {
            bail!(
                "Envoy {} exited with status {code}:\n{}",
                self.label,
                self.log_tail()
            );
        }
        loop {
            if TcpStream::connect(self.listener).await.is_ok() {
                return Ok(());
            }
            if let Some(code) = self.inner.exit_status() {
                bail!(
                    "Envoy {} exited with status {code}:\n{}",
                    self.label,
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy {}'s listener never accepted a connection:\n{}",
                    self.label,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// CPU time Envoy has used so far (every thread), from the scheduler's nanosecond counters.
    pub fn cpu_time(&self) -> Duration {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return Duration::ZERO;
        };
        let ns: u64 = tasks
            .filter_map(Result::ok)
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split(' ').next().and_then(|v| v.parse::<u64>().ok()))
            .sum();
        Duration::from_nanos(ns)
    }
}

fn proc_status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// `envoy --version`.
pub fn binary_version(envoy: &Path) -> String {
    Command::new(envoy)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

// ---- bootstraps ---------------------------------------------------------------------------

/// How the routes pick their cluster.
pub enum Route<'a> {
    Cluster(&'a str),
    ClusterHeader(&'a str),
    /// podgate's routes (`envoy/podgate.yaml`): by the cluster header when the filter set
    /// it, else the pods' cluster, `PODS_CLUSTER`.
    Pods,
}

/// The cluster of the pods' route (`Route::Pods`): in production the original-destination
/// cluster (`podgate_xds::builders::original_dst_cluster`), which connects to the address in
/// `x-podgate-upstream`.
pub const PODS_CLUSTER: &str = "podgate_pods";

fn routes_json(route: &Route<'_>) -> Value {
    let all = json!({"prefix": "/"});
    match route {
        Route::Cluster(name) => {
            json!([{"match": all, "route": {"cluster": name, "timeout": "0s"}}])
        }
        Route::ClusterHeader(header) => {
            json!([{"match": all, "route": {"cluster_header": header, "timeout": "0s"}}])
        }
        Route::Pods => json!([
            {
                "match": {
                    "prefix": "/",
                    "headers": [{"name": "x-podgate-cluster", "present_match": true}]
                },
                "route": {"cluster_header": "x-podgate-cluster", "timeout": "0s"}
            },
            {"match": all, "route": {"cluster": PODS_CLUSTER, "timeout": "0s"}}
        ]),
    }
}

fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            "suppress_envoy_headers": true
        }
    })
}

/// The listener every configuration shares: one HTTP connection manager, one route, the given
/// filters before the router. No access log, no tracing.
pub fn listener(port: u16, route: &Route<'_>, filters: Vec<Value>) -> Value {
    let mut http_filters = filters;
    let removed: Vec<&str> = CLIENT_FORWARDING_HEADERS
        .iter()
        .chain(ROUTE_HEADERS.iter())
        .copied()
        .collect();
    http_filters.push(router());
    json!({
        "name": "bench",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "bench",
                "codec_type": "AUTO",
                "route_config": {
                    "name": "bench",
                    // What every shipped config does to forwarding headers, so each figure
                    // includes it.
                    "request_headers_to_add": [{
                        "header": {
                            "key": "x-forwarded-for",
                            "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
                        },
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"
                    }],
                    "request_headers_to_remove": removed,
                    // The pods' cluster may come over CDS after the routes load.
                    "validate_clusters": false,
                    "virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": routes_json(route)
                    }]
                },
                "http_filters": http_filters
            }
        }]}]
    })
}

/// A STATIC cluster with one endpoint.
pub fn static_cluster(name: &str, upstream: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": upstream.ip().to_string(),
                "port_value": upstream.port()
            }}}}]}]
        }
    })
}

/// A bootstrap with static listener and clusters only.
pub fn static_bootstrap(label: &str, listener: Value, clusters: Vec<Value>) -> Value {
    json!({
        "node": {"id": format!("podgate-bench-{label}"), "cluster": "podgate-bench"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": clusters}
    })
}

/// Envoy's own JWT filter: one provider with an inline JWKS, the token from our cookie.
pub fn jwt_authn_filter(issuer: &str, audience: &str, jwks: &str, cache: bool) -> Value {
    let mut provider = json!({
        "issuer": issuer,
        "audiences": [audience],
        "local_jwks": {"inline_string": jwks},
        "from_cookies": ["podgate_cap"],
        "forward": false
    });
    if cache {
        provider["jwt_cache_config"] = json!({"jwt_cache_size": 100});
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"podgate": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "podgate"}}]
        }
    })
}

/// The podgate Wasm filter with an inline configuration, fail closed, in V8.
pub fn podgate_filter(wasm: &Path, configuration_json: &str) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": WASM_TYPE_URL,
            "config": {
                "name": "podgate",
                "root_id": "podgate",
                "failure_policy": "FAIL_CLOSED",
                "vm_config": {
                    "vm_id": "podgate",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration_json
                }
            }
        }
    })
}

/// The podgate filter as the control plane delivers it, over ECDS (name `podgate`), here read
/// from the file `path`, which Envoy watches: a bench pushes a configuration by writing it
/// with [`write_podgate_filter`].
pub fn podgate_filter_discovered(path: &Path) -> Value {
    json!({
        "name": "podgate",
        "config_discovery": {
            "config_source": {
                "path_config_source": {
                    "path": path.display().to_string(),
                    "watched_directory": {
                        "path": path.parent().unwrap_or(Path::new(".")).display().to_string()
                    }
                },
                "resource_api_version": "V3"
            },
            "type_urls": [WASM_TYPE_URL]
        }
    })
}

/// Writes the discovery response [`podgate_filter_discovered`] reads at `path`: the podgate
/// filter ([`podgate_filter`]) with `configuration_json`, as version `version`. Written beside
/// and moved into place, the change Envoy's watch on the directory sees.
pub fn write_podgate_filter(
    path: &Path,
    wasm: &Path,
    configuration_json: &str,
    version: u64,
) -> anyhow::Result<()> {
    let filter = podgate_filter(wasm, configuration_json);
    let response = json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "podgate",
            "typed_config": filter["typed_config"],
        }]
    });
    let staged = path.with_extension("staged");
    std::fs::write(&staged, serde_json::to_vec(&response)?)
        .with_context(|| format!("writing {}", staged.display()))?;
    std::fs::rename(&staged, path).with_context(|| format!("moving to {}", path.display()))?;
    Ok(())
}

/// The no-op Wasm filter (case W; with `calls`, case W-calls): the same runtime and failure
/// policy as podgate's.
pub fn noop_wasm_filter(wasm: &Path, calls: Option<&str>) -> Value {
    let mut filter = json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": WASM_TYPE_URL,
            "config": {
                "name": "noop",
                "failure_policy": "FAIL_CLOSED",
                "vm_config": {
                    "vm_id": if calls.is_some() { "noop-calls" } else { "noop" },
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}}
                }
            }
        }
    });
    if let Some(calls) = calls {
        filter["typed_config"]["config"]["configuration"] = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": calls
        });
    }
    filter
}

/// podgate's `Gate` as an Envoy dynamic module (`bench/native-filter`): `config` is the Wasm
/// filter's JSON (case D-native), or `noop` (case N).
pub fn native_filter(module: &Path, config: &str) -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {
                "name": "podgate_native_bench",
                "module": {"local": {"filename": module.display().to_string()}}
            },
            "filter_name": "podgate",
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": config
            }
        }
    })
}

/// A bootstrap whose clusters come from ADS (CDS) and whose podgate filter comes from ECDS.
pub fn ads_bootstrap(label: &str, ads: SocketAddr, listener_port: u16) -> Value {
    let ecds_filter = json!({
        "name": "podgate",
        "config_discovery": {
            "config_source": {"ads": {}, "resource_api_version": "V3"},
            "type_urls": [WASM_TYPE_URL]
        }
    });
    json!({
        "node": {"id": format!("podgate-bench-{label}"), "cluster": "podgate-bench"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {
            "listeners": [listener(
                listener_port,
                &Route::Pods,
                vec![ecds_filter],
            )],
            "clusters": [{
                "name": "xds_cluster",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": {
                    "cluster_name": "xds_cluster",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": ads.port()
                    }}}}]}]
                }
            }]
        }
    })
}
