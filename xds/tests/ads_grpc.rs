//! The gRPC service in-process, with tonic clients standing in for Envoys: a stalled client does
//! not hold back a healthy one, counters follow and the observer hears streams, pushes and answers,
//! Delta ADS is refused, shutdown ends streams, ending the streams ends only those open then,
//! gRPC health reports what the server was told.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use podgate_xds::envoy_types::pb::envoy::config::core::v3::Node;
use podgate_xds::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use podgate_xds::envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use podgate_xds::envoy_types::pb::google::rpc::Status as RpcStatus;
use podgate_xds::{
    fixed_host_cluster, AdsServer, FixedHostClusterOptions, Snapshot, SnapshotCache,
    CLUSTER_TYPE_URL,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

const STEP: Duration = Duration::from_secs(5);

fn snapshot(generation: u16) -> Snapshot {
    let clusters = (0..3)
        .map(|i| {
            fixed_host_cluster(
                &format!("pod_{i}"),
                "127.0.0.1",
                9000 + generation,
                &FixedHostClusterOptions::default(),
            )
        })
        .collect();
    Snapshot::new(clusters, vec![]).unwrap()
}

async fn start(cache: &SnapshotCache) -> (SocketAddr, AdsServer, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = AdsServer::new(cache.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = server.clone();
    tokio::spawn(async move {
        running
            .serve_with_listener(listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, server, stop)
}

/// A plaintext gRPC channel to the server at `addr`.
async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A fake Envoy: requests go in through `requests`, responses come out of `responses`.
struct FakeEnvoy {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl FakeEnvoy {
    async fn connect(addr: SocketAddr, node_id: &str) -> FakeEnvoy {
        let mut client = AggregatedDiscoveryServiceClient::new(channel(addr).await);
        let (requests, outbound) = mpsc::channel(16);
        requests
            .send(DiscoveryRequest {
                node: Some(Node {
                    id: node_id.to_owned(),
                    ..Default::default()
                }),
                type_url: CLUSTER_TYPE_URL.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
        let responses = client
            .stream_aggregated_resources(ReceiverStream::new(outbound))
            .await
            .unwrap()
            .into_inner();
        FakeEnvoy {
            requests,
            responses,
        }
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(STEP, self.responses.message())
            .await
            .expect("no response in time")
            .unwrap()
            .expect("stream ended")
    }

    async fn ack(&self, response: &DiscoveryResponse) {
        self.requests
            .send(DiscoveryRequest {
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                type_url: response.type_url.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn nack(&self, response: &DiscoveryResponse, running_version: &str) {
        self.requests
            .send(DiscoveryRequest {
                version_info: running_version.to_owned(),
                response_nonce: response.nonce.clone(),
                type_url: response.type_url.clone(),
                error_detail: Some(RpcStatus {
                    code: 3,
                    message: "rejected by the test".to_owned(),
                    details: Vec::new(),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_stalled_envoy_does_not_hold_back_a_healthy_one() {
    let cache = SnapshotCache::new();
    cache.set(snapshot(0));
    let (addr, server, _stop) = start(&cache).await;
    let metrics = server.metrics();

    // The stalled Envoy subscribes, then never reads nor answers again.
    let stalled = FakeEnvoy::connect(addr, "stalled").await;
    let mut healthy = FakeEnvoy::connect(addr, "healthy").await;
    let first = healthy.next().await;
    healthy.ack(&first).await;
    wait_for("two streams", || {
        metrics.streams_connected.load(Ordering::Relaxed) == 2
    })
    .await;

    for generation in 1..=20 {
        let expected = snapshot(generation);
        let version = expected.clusters().version().to_owned();
        // Publishing is a plain call that waits on no stream: the healthy one gets every
        // version while the stalled one reads nothing.
        cache.set(expected);
        let response = healthy.next().await;
        assert_eq!(response.version_info, version);
        healthy.ack(&response).await;
    }
    wait_for("21 ACKs", || metrics.acks.load(Ordering::Relaxed) == 21).await;

    drop(stalled);
    wait_for("stalled stream closed", || {
        metrics.streams_connected.load(Ordering::Relaxed) == 1
    })
    .await;
}

#[tokio::test]
async fn a_nacked_version_is_counted_and_not_resent() {
    let cache = SnapshotCache::new();
    cache.set(snapshot(0));
    let (addr, server, _stop) = start(&cache).await;
    let metrics = server.metrics();
    let mut envoy = FakeEnvoy::connect(addr, "nacking").await;
    let good = envoy.next().await;
    envoy.ack(&good).await;

    cache.set(snapshot(1));
    let bad = envoy.next().await;
    envoy.nack(&bad, &good.version_info).await;
    wait_for("NACK counted", || {
        metrics.nacks.load(Ordering::Relaxed) == 1
    })
    .await;
    // Nothing is resent for the rejected version.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), envoy.responses.message())
            .await
            .is_err()
    );
    // The next version is sent.
    cache.set(snapshot(2));
    let next = envoy.next().await;
    assert_eq!(next.version_info, snapshot(2).clusters().version());
}

#[tokio::test]
async fn nothing_is_sent_before_the_first_snapshot() {
    let cache = SnapshotCache::new();
    let (addr, _server, _stop) = start(&cache).await;
    let mut envoy = FakeEnvoy::connect(addr, "early").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), envoy.responses.message())
            .await
            .is_err(),
        "an Envoy must not receive an empty config before the control plane has one"
    );
    cache.set(snapshot(0));
    assert_eq!(envoy.next().await.resources.len(), 3);
}

#[tokio::test]
async fn delta_ads_is_refused_and_shutdown_ends_open_streams() {
    let cache = SnapshotCache::new();
    cache.set(snapshot(0));
    let (addr, server, stop) = start(&cache).await;
    let channel = channel(addr).await;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let status = client
        .delta_aggregated_resources(tokio_stream::iter(Vec::<DeltaDiscoveryRequest>::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    let mut envoy = FakeEnvoy::connect(addr, "open").await;
    envoy.next().await;
    stop.send(()).unwrap();
    // The stream ends (cleanly or with an error) instead of keeping the server alive.
    let ended = tokio::time::timeout(STEP, envoy.responses.message()).await;
    assert!(matches!(ended, Ok(Ok(None)) | Ok(Err(_))), "{ended:?}");
    let metrics = server.metrics();
    wait_for("no stream left", || {
        metrics.streams_connected.load(Ordering::Relaxed) == 0
    })
    .await;
}

#[tokio::test]
async fn each_streams_acknowledged_version_is_visible() {
    use podgate_xds::ResourceType;

    let cache = SnapshotCache::new();
    cache.set(snapshot(0));
    let (addr, server, _stop) = start(&cache).await;
    let mut changes = server.stream_changes();
    let mut envoy = FakeEnvoy::connect(addr, "acking").await;
    let first = envoy.next().await;
    let acked_by = |server: &AdsServer, node: &str| {
        server
            .streams()
            .into_iter()
            .find(|s| s.node_id.as_deref() == Some(node))
            .and_then(|s| s.acked.get(&ResourceType::Cluster).cloned())
    };
    // Subscribed, nothing acknowledged yet.
    wait_for("subscribed", || acked_by(&server, "acking") == Some(None)).await;
    changes.borrow_and_update();
    envoy.ack(&first).await;
    tokio::time::timeout(STEP, changes.changed())
        .await
        .unwrap()
        .unwrap();
    wait_for("first ACK recorded", || {
        acked_by(&server, "acking") == Some(Some(first.version_info.clone()))
    })
    .await;

    // A NACK leaves the last acknowledged version in place.
    cache.set(snapshot(1));
    let bad = envoy.next().await;
    envoy.nack(&bad, &first.version_info).await;
    wait_for("NACK counted", || {
        server.metrics().nacks.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(
        acked_by(&server, "acking"),
        Some(Some(first.version_info.clone()))
    );

    drop(envoy);
    wait_for("stream gone from the registry", || {
        server.streams().is_empty()
    })
    .await;
}

/// An observer that records what the server reports, in order.
#[derive(Debug, Default)]
struct Recording(std::sync::Mutex<Vec<String>>);

impl Recording {
    fn push(&self, what: String) {
        self.0.lock().unwrap().push(what);
    }
    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl podgate_xds::XdsObserver for Recording {
    fn stream_opened(&self) {
        self.push("opened".into());
    }
    fn stream_closed(&self) {
        self.push("closed".into());
    }
    fn pushed(&self, kind: podgate_xds::ResourceType) {
        self.push(format!("pushed {kind:?}"));
    }
    fn acked(&self, kind: podgate_xds::ResourceType, after: Option<Duration>) {
        assert!(after.is_some_and(|a| a < STEP), "{after:?}");
        self.push(format!("acked {kind:?}"));
    }
    fn nacked(&self, kind: podgate_xds::ResourceType, after: Option<Duration>) {
        assert!(after.is_some_and(|a| a < STEP), "{after:?}");
        self.push(format!("nacked {kind:?}"));
    }
}

#[tokio::test]
async fn the_observer_hears_streams_pushes_acks_and_nacks() {
    let cache = SnapshotCache::new();
    cache.set(snapshot(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recording = std::sync::Arc::new(Recording::default());
    let server = AdsServer::new(cache.clone()).with_observer(recording.clone());
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve_with_listener(listener, async {
        let _ = stopped.await;
    }));

    let mut envoy = FakeEnvoy::connect(addr, "observed").await;
    let good = envoy.next().await;
    envoy.ack(&good).await;
    cache.set(snapshot(1));
    let bad = envoy.next().await;
    envoy.nack(&bad, &good.version_info).await;
    wait_for("the NACK heard", || recording.events().len() == 5).await;
    drop(envoy);
    wait_for("the stream's end heard", || recording.events().len() == 6).await;
    assert_eq!(
        recording.events(),
        [
            "opened",
            "pushed Cluster",
            "acked Cluster",
            "pushed Cluster",
            "nacked Cluster",
            "closed"
        ]
    );
}

#[tokio::test]
async fn grpc_health_reports_what_the_server_was_told() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let cache = SnapshotCache::new();
    cache.set(snapshot(0));
    let (addr, server, stop) = start(&cache).await;
    let channel = channel(addr).await;
    let health = HealthClient::new(channel);
    let status = |name: &str| {
        let mut health = health.clone();
        let service = name.to_owned();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .map(|r| r.into_inner().status())
        }
    };
    // The whole server and the ADS service by name, as Envoy's grpc_health_check asks.
    for name in ["", podgate_xds::ADS_SERVICE] {
        assert_eq!(
            status(name).await.unwrap(),
            ServingStatus::Serving,
            "{name:?}"
        );
    }
    assert_eq!(
        podgate_xds::ADS_SERVICE,
        "envoy.service.discovery.v3.AggregatedDiscoveryService"
    );

    let mut watch = health
        .clone()
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    server.set_serving(false);
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    for name in ["", podgate_xds::ADS_SERVICE] {
        assert_eq!(
            status(name).await.unwrap(),
            ServingStatus::NotServing,
            "{name:?}"
        );
    }
    // ADS itself still answers: a client with nowhere else to go keeps its configuration.
    let mut envoy = FakeEnvoy::connect(addr, "still-served").await;
    assert_eq!(envoy.next().await.type_url, CLUSTER_TYPE_URL);

    server.set_serving(true);
    assert_eq!(status("").await.unwrap(), ServingStatus::Serving);
    // A name the server does not serve is not found, not healthy.
    let unknown = health
        .clone()
        .check(HealthCheckRequest {
            service: "some.other.Service".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // A Watch still open when the server shuts down ends, so the shutdown does not wait on it.
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    stop.send(()).unwrap();
    let ended = tokio::time::timeout(STEP, watch.message()).await;
    assert!(matches!(ended, Ok(Ok(None)) | Ok(Err(_))), "{ended:?}");
}

#[tokio::test]
async fn ending_the_streams_ends_the_open_ones_and_accepts_new_ones() {
    let cache = SnapshotCache::new();
    cache.set(snapshot(0));
    let (addr, server, _stop) = start(&cache).await;
    let mut open = FakeEnvoy::connect(addr, "open").await;
    let first = open.next().await;
    open.ack(&first).await;

    server.end_streams("this control plane cannot read its configuration");
    let ended = tokio::time::timeout(STEP, open.responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Unavailable);
    assert_eq!(
        ended.message(),
        "this control plane cannot read its configuration"
    );

    // A stream opened afterwards is served as usual, and stays open.
    let mut next = FakeEnvoy::connect(addr, "next").await;
    let response = next.next().await;
    assert_eq!(response.version_info, first.version_info);
    next.ack(&response).await;
    let metrics = server.metrics();
    wait_for("one stream left", || {
        metrics.streams_connected.load(Ordering::Relaxed) == 1
    })
    .await;
    cache.set(snapshot(1));
    assert_ne!(next.next().await.version_info, first.version_info);
}
