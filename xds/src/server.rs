//! The gRPC `AggregatedDiscoveryService`: one task per stream drives the [`AdsStream`] state
//! machine from the inbound requests and the snapshot watch channel.
//!
//! Each stream has its own bounded outbound channel and holds no shared lock across an await or
//! a send, so a slow or NACKing Envoy only ever waits on itself.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::pb::health_server::HealthServer;

use crate::health::AdsHealth;
use crate::protocol::{AdsStream, RequestEvent};
use crate::snapshot::{ResourceType, SnapshotCache};

/// Responses buffered per stream. With at most one response in flight per type, a stream never
/// needs more than a few; the bound only matters if Envoy stops reading.
const OUTBOUND_CAPACITY: usize = 8;
/// The ADS service's gRPC name, under which `grpc.health.v1.Health` also reports.
pub const ADS_SERVICE: &str = <AggregatedDiscoveryServiceServer<AdsServer> as NamedService>::NAME;
/// Largest request accepted from Envoy (NACK messages can be long).
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Counters of the ADS server, readable at any time by the caller.
#[derive(Debug, Default)]
pub struct XdsMetrics {
    /// Streams currently open.
    pub streams_connected: AtomicU64,
    /// Streams opened since start.
    pub streams_total: AtomicU64,
    /// ACKs received.
    pub acks: AtomicU64,
    /// NACKs received.
    pub nacks: AtomicU64,
    /// Requests ignored because their nonce was stale.
    pub stale_requests: AtomicU64,
    /// Requests for type URLs this server does not serve.
    pub unknown_type_requests: AtomicU64,
    /// Responses sent.
    pub responses_sent: AtomicU64,
}

impl XdsMetrics {
    fn record(&self, event: &RequestEvent) {
        let counter = match event {
            RequestEvent::Subscribe { .. } => return,
            RequestEvent::Ack { .. } => &self.acks,
            RequestEvent::Nack { .. } => &self.nacks,
            RequestEvent::Stale { .. } => &self.stale_requests,
            RequestEvent::UnknownType { .. } => &self.unknown_type_requests,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the server reports as streams come and go and Envoy answers, for the caller's own
/// metrics (the control plane's Prometheus counters). Called from the stream tasks: each call
/// must be quick and must not block.
pub trait XdsObserver: Send + Sync + std::fmt::Debug {
    /// A stream opened.
    fn stream_opened(&self);
    /// A stream ended, however it ended.
    fn stream_closed(&self);
    /// A response of `kind` was handed to a stream.
    fn pushed(&self, kind: ResourceType);
    /// Envoy applied the latest response of `kind`, `after` it was sent (`None` when this
    /// stream sent none since the previous answer).
    fn acked(&self, kind: ResourceType, after: Option<Duration>);
    /// Envoy rejected the latest response of `kind`, `after` it was sent.
    fn nacked(&self, kind: ResourceType, after: Option<Duration>);
}

/// Decrements the connected-streams gauge however the stream task ends.
struct ConnectedGuard(Arc<XdsMetrics>, Option<Arc<dyn XdsObserver>>);

impl ConnectedGuard {
    fn new(metrics: Arc<XdsMetrics>, observer: Option<Arc<dyn XdsObserver>>) -> ConnectedGuard {
        metrics.streams_connected.fetch_add(1, Ordering::Relaxed);
        metrics.streams_total.fetch_add(1, Ordering::Relaxed);
        if let Some(o) = &observer {
            o.stream_opened();
        }
        ConnectedGuard(metrics, observer)
    }
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.streams_connected.fetch_sub(1, Ordering::Relaxed);
        if let Some(o) = &self.1 {
            o.stream_closed();
        }
    }
}

/// When this stream last sent a response of each type, until Envoy answers it.
#[derive(Default)]
struct SentAt([Option<Instant>; ResourceType::ALL.len()]);

impl SentAt {
    fn slot(&mut self, kind: ResourceType) -> Option<&mut Option<Instant>> {
        let i = ResourceType::ALL.iter().position(|k| *k == kind)?;
        self.0.get_mut(i)
    }

    fn sent(&mut self, kind: ResourceType) {
        if let Some(slot) = self.slot(kind) {
            *slot = Some(Instant::now());
        }
    }

    fn answered(&mut self, kind: ResourceType) -> Option<Duration> {
        self.slot(kind)?.take().map(|t| t.elapsed())
    }
}

/// What one open ADS stream has applied: the node, and per subscribed type the version Envoy
/// last acknowledged (`None` until its first ACK). Lets a caller wait until every connected
/// Envoy runs a config (e.g. one holding a new signing key) before relying on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    /// The node id Envoy sent, once it has sent one.
    pub node_id: Option<String>,
    /// Subscribed types and the version last acknowledged for each.
    pub acked: BTreeMap<ResourceType, Option<String>>,
}

/// The open streams' [`StreamStatus`]es. The mutex is only ever held for a map update or copy,
/// never across an await; `changes` wakes waiters without them polling.
#[derive(Debug)]
struct StreamRegistry {
    streams: Mutex<BTreeMap<u64, StreamStatus>>,
    next_id: AtomicU64,
    changes: watch::Sender<u64>,
}

impl StreamRegistry {
    fn new() -> StreamRegistry {
        StreamRegistry {
            streams: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            changes: watch::channel(0).0,
        }
    }

    fn update(&self, id: u64, status: Option<StreamStatus>) {
        {
            let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
            match status {
                Some(status) => {
                    if streams.get(&id) == Some(&status) {
                        return;
                    }
                    streams.insert(id, status);
                }
                None => {
                    streams.remove(&id);
                }
            }
        }
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Removes a stream from the registry however its task ends.
struct RegisteredStream {
    registry: Arc<StreamRegistry>,
    id: u64,
}

impl RegisteredStream {
    fn new(registry: Arc<StreamRegistry>) -> RegisteredStream {
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        registry.update(
            id,
            Some(StreamStatus {
                node_id: None,
                acked: BTreeMap::new(),
            }),
        );
        RegisteredStream { registry, id }
    }

    fn record(&self, state: &AdsStream) {
        let acked = state
            .subscribed_types()
            .filter_map(ResourceType::from_type_url)
            .map(|kind| (kind, state.acked_version(kind).map(str::to_owned)))
            .collect();
        self.registry.update(
            self.id,
            Some(StreamStatus {
                node_id: state.node_id().map(str::to_owned),
                acked,
            }),
        );
    }
}

impl Drop for RegisteredStream {
    fn drop(&mut self) {
        self.registry.update(self.id, None);
    }
}

/// The ADS service: the snapshot cache it serves, its counters, what each open stream has
/// acknowledged, and a switch that ends every stream (gRPC graceful shutdown would otherwise
/// wait forever on the long-lived streams).
#[derive(Debug, Clone)]
pub struct AdsServer {
    cache: SnapshotCache,
    metrics: Arc<XdsMetrics>,
    registry: Arc<StreamRegistry>,
    closing: Arc<watch::Sender<bool>>,
    observer: Option<Arc<dyn XdsObserver>>,
    health: AdsHealth,
    /// Changed by [`AdsServer::end_streams`], with the reason the ended streams get.
    ending: Arc<watch::Sender<Arc<str>>>,
}

impl AdsServer {
    /// A server publishing what `cache` holds.
    pub fn new(cache: SnapshotCache) -> AdsServer {
        let (closing, closed) = watch::channel(false);
        AdsServer {
            cache,
            metrics: Arc::new(XdsMetrics::default()),
            registry: Arc::new(StreamRegistry::new()),
            closing: Arc::new(closing),
            observer: None,
            health: AdsHealth::new(ADS_SERVICE, closed),
            ending: Arc::new(watch::channel(Arc::from("")).0),
        }
    }

    /// The same server, reporting to `observer` (set before serving).
    pub fn with_observer(mut self, observer: Arc<dyn XdsObserver>) -> AdsServer {
        self.observer = Some(observer);
        self
    }

    /// The open streams and what each has acknowledged: a copy, no lock held afterwards.
    pub fn streams(&self) -> Vec<StreamStatus> {
        self.registry
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// A receiver that changes whenever a stream opens, closes, subscribes, ACKs or NACKs, so a
    /// caller waiting on [`AdsServer::streams`] needs no polling.
    pub fn stream_changes(&self) -> watch::Receiver<u64> {
        self.registry.changes.subscribe()
    }

    /// The counters, shared with the running server.
    pub fn metrics(&self) -> Arc<XdsMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Ends every open stream and refuses new ones; Envoys keep their last good config.
    /// Call it when shutting down a server that mounts [`AdsServer::service`] itself.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// What `grpc.health.v1.Health` answers from now on, for the whole server (`""`) and for
    /// the ADS service by name: `SERVING` (from the start) or `NOT_SERVING`. ADS itself keeps
    /// answering either way: a client with nowhere else to go keeps getting its configuration.
    pub fn set_serving(&self, serving: bool) {
        self.health.set(serving);
    }

    /// Ends every stream open now with `UNAVAILABLE` and `why`, and goes on accepting new ones:
    /// each Envoy reconnects after its back-off, to the control plane its load balancer picks
    /// then (one its health checks have not set aside, if there is one).
    pub fn end_streams(&self, why: &str) {
        self.ending.send_replace(Arc::from(why));
    }

    /// The `grpc.health.v1.Health` service reporting what [`AdsServer::set_serving`] set, to
    /// mount beside [`AdsServer::service`] on a server the caller builds.
    pub fn health_service(&self) -> HealthServer<AdsHealth> {
        HealthServer::new(self.health.clone())
    }

    /// The tonic service, to mount on a `tonic::transport::Server` next to other services.
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// Serves ADS on `addr` until `shutdown` completes, then closes the streams and returns.
    pub async fn serve(
        self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| XdsServeError::Bind { addr, source })?;
        self.serve_with_listener(listener, shutdown).await
    }

    /// Serves ADS on an already bound listener (e.g. port 0 in tests).
    pub async fn serve_with_listener(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsServeError> {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        self.serve_with_incoming(incoming, shutdown).await
    }

    /// Serves ADS on connections the caller accepts (e.g. after its own TLS handshake, which
    /// is how a server requiring client certificates runs it).
    pub async fn serve_with_incoming<S, IO, E>(
        self,
        incoming: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsServeError>
    where
        S: tokio_stream::Stream<Item = Result<IO, E>> + Send + 'static,
        IO: tonic::transport::server::Connected
            + tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + Unpin
            + Send
            + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let closer = self.clone();
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(self.service())
            .add_service(self.health_service())
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                closer.close_streams();
            })
            .await
            .map_err(XdsServeError::Transport)
    }
}

/// Serves ADS from `cache` on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    cache: SnapshotCache,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), XdsServeError> {
    AdsServer::new(cache).serve(addr, shutdown).await
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum XdsServeError {
    /// The address could not be bound.
    #[error("cannot bind the xDS gRPC address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gRPC transport failed.
    #[error("xDS gRPC server failed: {0}")]
    Transport(tonic::transport::Error),
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponseStream =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaResponseStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let closing = self.closing.subscribe();
        if *closing.borrow() {
            return Err(Status::unavailable("the control plane is shutting down"));
        }
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (outbound, receiver) = mpsc::channel(OUTBOUND_CAPACITY);
        let task = StreamTask {
            inbound,
            outbound,
            snapshots: self.cache.subscribe(),
            closing,
            ending: self.ending.subscribe(),
            metrics: Arc::clone(&self.metrics),
            registry: Arc::clone(&self.registry),
            observer: self.observer.clone(),
        };
        tokio::spawn(async move {
            tracing::info!(?peer, "ADS stream opened");
            let node = task.run().await;
            tracing::info!(
                ?peer,
                node = node.as_deref().unwrap_or("<unknown>"),
                "ADS stream closed"
            );
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "podgate serves state-of-the-world ADS only; use api_type GRPC, not DELTA_GRPC",
        ))
    }
}

/// Everything one stream owns; nothing here is shared with other streams except the
/// read-only watch receivers and the atomic counters.
struct StreamTask {
    inbound: Streaming<DiscoveryRequest>,
    outbound: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    snapshots: watch::Receiver<Option<Arc<crate::snapshot::Snapshot>>>,
    closing: watch::Receiver<bool>,
    /// Changes when [`AdsServer::end_streams`] ends the streams open at that moment.
    ending: watch::Receiver<Arc<str>>,
    metrics: Arc<XdsMetrics>,
    registry: Arc<StreamRegistry>,
    observer: Option<Arc<dyn XdsObserver>>,
}

/// Tells the observer what a request meant: an ACK or NACK, and how long after our response.
fn observe(observer: Option<&Arc<dyn XdsObserver>>, event: &RequestEvent, sent_at: &mut SentAt) {
    let Some(observer) = observer else {
        return;
    };
    match event {
        RequestEvent::Ack { type_url, .. } => {
            if let Some(kind) = ResourceType::from_type_url(type_url) {
                observer.acked(kind, sent_at.answered(kind));
            }
        }
        RequestEvent::Nack { type_url, .. } => {
            if let Some(kind) = ResourceType::from_type_url(type_url) {
                observer.nacked(kind, sent_at.answered(kind));
            }
        }
        RequestEvent::Subscribe { .. }
        | RequestEvent::Stale { .. }
        | RequestEvent::UnknownType { .. } => {}
    }
}

impl StreamTask {
    /// Runs until Envoy hangs up, the client stops reading, or the server closes; returns the
    /// node id for the log line.
    async fn run(mut self) -> Option<String> {
        let _connected = ConnectedGuard::new(Arc::clone(&self.metrics), self.observer.clone());
        let mut sent_at = SentAt::default();
        let registered = RegisteredStream::new(Arc::clone(&self.registry));
        let mut state = AdsStream::new();
        // The receiver starts with the current value marked seen: take it explicitly.
        let current = self.snapshots.borrow_and_update().clone();
        if let Some(snapshot) = current {
            state.on_snapshot(snapshot);
        }
        loop {
            let responses = tokio::select! {
                request = self.inbound.next() => match request {
                    Some(Ok(request)) => {
                        let outcome = state.on_request(request);
                        self.metrics.record(&outcome.event);
                        observe(self.observer.as_ref(), &outcome.event, &mut sent_at);
                        registered.record(&state);
                        outcome.responses
                    }
                    Some(Err(status)) => {
                        tracing::debug!(node = state.node_id(), %status, "ADS stream error");
                        break;
                    }
                    None => break,
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        // The cache is gone: the control plane is shutting down.
                        break;
                    }
                    // Clone the Arc and release the watch's read lock before anything else.
                    let snapshot = self.snapshots.borrow_and_update().clone();
                    match snapshot {
                        Some(snapshot) => state.on_snapshot(snapshot),
                        None => Vec::new(),
                    }
                },
                _ = self.closing.wait_for(|closing| *closing) => break,
                ended = self.ending.changed() => {
                    if ended.is_ok() {
                        let why = Arc::clone(&self.ending.borrow_and_update());
                        tracing::info!(node = state.node_id(), why = %why, "ending ADS stream");
                        // Best effort: a client that stopped reading just sees the stream end.
                        let _ = self.outbound.try_send(Err(Status::unavailable(why.to_string())));
                    }
                    break;
                },
                () = self.outbound.closed() => break,
            };
            for response in responses {
                let kind = ResourceType::from_type_url(&response.type_url);
                tracing::debug!(
                    node = state.node_id(),
                    type_url = %response.type_url,
                    version = %response.version_info,
                    resources = response.resources.len(),
                    "sending"
                );
                // A full channel waits on this Envoy only; closing still ends the stream.
                let sent = tokio::select! {
                    sent = self.outbound.send(Ok(response)) => sent.is_ok(),
                    _ = self.closing.wait_for(|closing| *closing) => false,
                };
                if !sent {
                    return state.node_id().map(str::to_owned);
                }
                self.metrics.responses_sent.fetch_add(1, Ordering::Relaxed);
                if let Some(kind) = kind {
                    sent_at.sent(kind);
                    if let Some(o) = &self.observer {
                        o.pushed(kind);
                    }
                }
            }
        }
        state.node_id().map(str::to_owned)
    }
}
