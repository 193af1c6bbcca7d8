//! Envoy's configuration over ADS: one task builds a [`Snapshot`] from the database and
//! publishes it to the xds crate's cache, which every Envoy stream serves.
//!
//! - CDS: one ORIGINAL_DST cluster, `podgate_pods`, for every pod. The filter puts the pod's
//!   `server address:nginx port` (from its pod directory) in `x-podgate-upstream` after
//!   stripping client copies, and Envoy connects there. Memory stays constant with the number
//!   of pods (a cluster per pod grows Envoy's memory with every pod: `BENCHMARKS.md`, "Scale"),
//!   at the price of circuit breakers and stats shared by all pods.
//! - CDS: one cluster per service, to its upstream (TLS with SNI and certificate verification
//!   for https; `services.rs`).
//! - ECDS: the podgate Wasm filter (`podgate`) with the JSON of [`filter_config::build`]: keys,
//!   host templates, the pod directory with status, issuer, auth URL, cookie name.
//!
//! Rebuilt at start, right after admin writes (debounced, so a burst is one push), and every
//! few seconds as a safety net. On PostgreSQL every write that changes what Envoy gets is also
//! announced on the [`CONFIG_CHANNEL`] (`NOTIFY`), and this task listens there: a change made
//! through another control plane (or `podgate keys rotate`) is reloaded and pushed at once. The
//! listening connection is opened again whenever it is lost, followed by a rebuild (what was
//! announced meanwhile is lost). Identical content is not pushed: versions are content hashes,
//! of JSON with sorted keys ([`filter_json`]), so control planes on one database push the same
//! versions and an Envoy moving between them gets nothing new, unless a service has an OAuth
//! credential: each control plane pushes the token it obtained itself.
//!
//! Publish before sign: while a new capability key is pending (see [`crate::keys`]), the task
//! watches what every connected Envoy has acknowledged and clears the key for signing once all
//! of them run a config holding it.

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use podgate_protocol::config::FilterConfig;
use podgate_xds::{
    original_dst_cluster, wasm_filter_extension_config, AdsServer, CircuitBreakerLimits,
    OriginalDstClusterOptions, ResourceType, Snapshot, SnapshotCache, StreamStatus, WasmFilterSpec,
    DEFAULT_UPSTREAM_HEADER,
};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, XdsConfig};
use crate::filter_config::{self, PODS_CLUSTER};
use crate::keys::{LiveKeys, SigningGate};
use crate::metrics::{DbOp, Metrics};
use crate::store::{now_unix, Backend, Db, CONFIG_CHANNEL};

/// The ECDS resource name (the listener's `config_discovery` filter name) and the plugin root id.
pub const FILTER_EXTENSION: &str = "podgate";
pub const FILTER_ROOT_ID: &str = "podgate";
/// A burst of admin writes within this window becomes one push.
const DEBOUNCE: Duration = Duration::from_millis(15);
/// How often a pending key is re-checked besides ACK events (for its deadline).
const PENDING_CHECK: Duration = Duration::from_millis(200);
/// Envoy ACKs an ECDS update from its main thread and then hands it to the workers: give them
/// a moment before tokens signed with the new key exist.
const WORKER_SETTLE: Duration = Duration::from_millis(50);
/// First wait before opening the listening connection again after losing it (doubles up to
/// [`LISTEN_RETRY_MAX`]).
const LISTEN_RETRY: Duration = Duration::from_millis(100);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long the first configuration waits for the services' first OAuth tokens: a token
/// endpoint's timeout, and a little more.
const FIRST_TOKENS_WAIT: Duration = Duration::from_secs(12);
/// How often the ADS port's gRPC health is brought in line with the database.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// A database round trip that takes longer than this counts as no answer.
const HEALTH_PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the ADS port says `NOT_SERVING` for a lost database before its streams are ended:
/// Envoys' health checks of `podgate_xds` (every second, 1 s timeout) have seen it by then.
const STREAMS_END_AFTER: Duration = Duration::from_secs(3);
/// How often, while the database stays unreachable, the streams are ended again.
const STREAMS_END_AGAIN: Duration = Duration::from_secs(30);
/// How long rebuilds (or key reloads) may keep failing while the database answers before the
/// ADS port says `NOT_SERVING`, as for a lost database: this control plane's Envoys would
/// otherwise keep a configuration that misses every change made since, with nothing to show it.
const BUILDS_FAILING_LIMIT_MS: i64 = 10_000;
/// How often failing rounds are tried again, whatever the resync interval.
const ROUND_RETRY: Duration = Duration::from_secs(2);
/// Connect timeout to a pod's nginx.
const POD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The gate new capability keys pass before signing. Without xDS nothing is waited for. With
/// PostgreSQL, other control planes may serve other Envoys: a key signs no earlier than two
/// resync intervals after its creation, so each of them has published it.
pub fn signing_gate(config: &Config) -> SigningGate {
    match &config.xds {
        None => SigningGate::open(),
        Some(xds) => {
            let shared_database = !config.database_url.starts_with("sqlite:");
            let min_wait = if shared_database {
                xds.resync_secs.saturating_mul(2)
            } else {
                0
            };
            SigningGate::new(min_wait, config.key_publish_delay)
        }
    }
}

/// What the sync task reads: owned handles, so the task can run as long as the process.
#[derive(Debug, Clone)]
pub struct SyncSources {
    pub db: Db,
    pub config: Arc<Config>,
    /// The keys in force: the task reloads them, and clears new capability keys for signing.
    pub keys: Arc<LiveKeys>,
    /// Notified after every committed write that changes what Envoy gets.
    pub changes: Arc<tokio::sync::Notify>,
    /// Streams, pushes, ACKs and the build's database time are counted here.
    pub metrics: Metrics,
    /// The services' OAuth tokens, in memory (`service_oauth`).
    pub service_tokens: Arc<crate::service_oauth::ServiceTokens>,
}

/// What a snapshot holds, for logs and for the publish-before-sign check.
#[derive(Debug, Clone)]
pub struct Built {
    pub snapshot: Snapshot,
    pub pods: usize,
    /// Capability key ids in the filter's key set.
    pub kids: HashSet<String>,
}

/// The filter's configuration as JSON, the same text for the same content: its pods are a
/// `HashMap`, whose order differs from one map to the next (and so between builds and between
/// control planes); through `serde_json::Value` every object's keys come out sorted. The ECDS
/// version is a hash of this text, so control planes on one database push the same versions
/// (but for the services' OAuth tokens, each control plane's own).
pub fn filter_json(filter: &FilterConfig) -> Result<String, serde_json::Error> {
    serde_json::to_string(&serde_json::to_value(filter)?)
}

/// Builds the snapshot in force now: the pods cluster and the filter's ECDS config.
pub async fn build_snapshot(sources: &SyncSources, filter_wasm: &Path) -> Result<Built, String> {
    let ring = sources
        .keys
        .current()
        .map_err(|e| format!("building the filter configuration: {e}"))?;
    let filter = sources
        .metrics
        .db_timed(
            DbOp::Snapshot,
            filter_config::build_with_tokens(
                &sources.db,
                &sources.config,
                &ring,
                &sources.service_tokens,
            ),
        )
        .await
        .map_err(|e| format!("building the filter configuration: database: {e}"))?;
    let json =
        filter_json(&filter).map_err(|e| format!("encoding the filter configuration: {e}"))?;
    let wasm_path = filter_wasm.to_string_lossy();
    let pods_cluster = original_dst_cluster(&OriginalDstClusterOptions {
        name: PODS_CLUSTER.to_owned(),
        http_header_name: DEFAULT_UPSTREAM_HEADER.to_owned(),
        connect_timeout: POD_CONNECT_TIMEOUT,
        cleanup_interval: Duration::from_secs(60),
        circuit_breakers: CircuitBreakerLimits::SHARED,
    });
    let extension = wasm_filter_extension_config(&WasmFilterSpec {
        extension_name: FILTER_EXTENSION,
        wasm_path: &wasm_path,
        root_id: FILTER_ROOT_ID,
        configuration_json: &json,
    });
    let mut clusters = vec![pods_cluster];
    let services = sources
        .db
        .list_services()
        .await
        .map_err(|e| format!("reading the services: database: {e}"))?;
    // A service without a usable credential now keeps its cluster (the filter forwards nothing
    // to it meanwhile): a token that lapses and comes back changes the filter's configuration
    // only, so no request meets a cluster removed before the filter's new answer arrives.
    clusters.extend(
        services
            .iter()
            .filter(|row| {
                filter.services.contains_key(&row.name)
                    || filter.services_without_credential.contains(&row.name)
            })
            .filter_map(crate::services::cluster),
    );
    let snapshot = Snapshot::new(clusters, vec![extension])
        .map_err(|e| format!("inconsistent snapshot: {e}"))?;
    Ok(Built {
        snapshot,
        pods: filter.pods.len(),
        kids: filter.keys.keys.iter().map(|k| k.kid.clone()).collect(),
    })
}

/// How the rounds of the sync task fare (each a key reload and a rebuild from the database),
/// for the health task: since when they fail, which was the last one that worked, and a way to
/// ask for a round now. Rounds are numbered as they start, so "a round that started after
/// this moment worked" does not depend on the clock.
#[derive(Debug, Default)]
struct Rounds {
    /// Unix ms since which rounds have failed; 0 while the last one worked.
    failing_since_ms: std::sync::atomic::AtomicI64,
    /// How many rounds have started.
    started: std::sync::atomic::AtomicU64,
    /// The number of the last round that worked.
    last_ok: std::sync::atomic::AtomicU64,
    /// Asks the sync task for a round (keys and configuration) now.
    wanted: tokio::sync::Notify,
}

impl Rounds {
    /// A round starts: its number.
    fn begin(&self) -> u64 {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .saturating_add(1)
    }

    /// How many rounds have started so far.
    fn begun(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn worked(&self, round: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        self.last_ok.fetch_max(round, SeqCst);
        self.failing_since_ms.store(0, SeqCst);
    }

    fn failed(&self, started_ms: i64) {
        use std::sync::atomic::Ordering::SeqCst;
        let _ = self
            .failing_since_ms
            .compare_exchange(0, started_ms, SeqCst, SeqCst);
    }

    /// How long (ms) rounds have failed at `now_ms`, if they have for longer than `limit_ms`.
    fn failing_longer_than(&self, limit_ms: i64, now_ms: i64) -> Option<i64> {
        let since = self
            .failing_since_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        let failing = now_ms.saturating_sub(since);
        (since != 0 && failing > limit_ms).then_some(failing)
    }

    /// Whether the last round failed.
    fn failing(&self) -> bool {
        self.failing_since_ms
            .load(std::sync::atomic::Ordering::SeqCst)
            != 0
    }

    /// Whether a round that started after the first `begun` ones has worked.
    fn worked_since(&self, begun: u64) -> bool {
        self.last_ok.load(std::sync::atomic::Ordering::SeqCst) > begun
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Binds the ADS address, then serves ADS and keeps it in step with the database until
/// `shutdown` turns true. The returned task ends once both have stopped (streams closed).
/// With `tls`, only clients presenting a certificate its client CA signed get a stream.
pub async fn start(
    sources: SyncSources,
    xds: &XdsConfig,
    tls: Option<&crate::tls::TlsFiles>,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let tls = tls
        .map(|files| crate::tls::server_config(files, crate::tls::Alpn::Grpc))
        .transpose()?;
    let listener = TcpListener::bind(xds.listen).await.map_err(|e| {
        format!(
            "cannot listen for xDS on {}: {e}; set PODGATE_XDS_LISTEN to a free address, or off",
            xds.listen
        )
    })?;
    let cache = SnapshotCache::new();
    let server = AdsServer::new(cache.clone()).with_observer(sources.metrics.xds());
    tracing::info!(listen = %xds.listen, filter_wasm = %xds.filter_wasm.display(), mutual_tls = tls.is_some(), "xDS (ADS) server listening");
    // Not serving until the first configuration is published (`follow_database`).
    server.set_serving(false);
    let rounds = Arc::new(Rounds::default());
    let health = tokio::spawn(follow_database(
        sources.db.clone(),
        Serving {
            server: server.clone(),
            metrics: sources.metrics.clone(),
        },
        cache.clone(),
        Arc::clone(&rounds),
        stopped(shutdown.clone()),
    ));
    let sync = tokio::spawn(run(
        sources,
        server.clone(),
        cache,
        xds.filter_wasm.clone(),
        Duration::from_secs(xds.resync_secs),
        rounds,
        stopped(shutdown.clone()),
    ));
    let ads = async move {
        match tls {
            Some(config) => {
                let incoming = crate::tls::grpc_incoming(listener, config);
                server
                    .serve_with_incoming(incoming, stopped(shutdown))
                    .await
            }
            None => {
                server
                    .serve_with_listener(listener, stopped(shutdown))
                    .await
            }
        }
    };
    Ok(tokio::spawn(async move {
        if let Err(e) = ads.await {
            tracing::error!(error = %e, "xDS server failed");
        }
        let _ = sync.await;
        let _ = health.await;
    }))
}

/// Keeps the ADS port's `grpc.health.v1` answer in line with the database until `shutdown`
/// completes. `NOT_SERVING` until the first configuration is published (a control plane that
/// has published nothing has nothing to give an Envoy), then while the database fails two round
/// trips in a row (each failing or taking over [`HEALTH_PING_TIMEOUT`]; one slow round trip is
/// not an outage), `SERVING` again once one succeeds. A control plane that cannot read the
/// database no longer sees changes made through the others (revocations, sign-outs, pods
/// stopped): on PostgreSQL, once it has said `NOT_SERVING` for [`STREAMS_END_AFTER`] (long
/// enough for Envoys' health checks of `podgate_xds` to set it aside), it ends its ADS streams,
/// and again every [`STREAMS_END_AGAIN`] while the outage lasts (a stream that came back to it
/// while Envoy's load balancer ignored health, with too few control planes healthy, moves on at
/// the next round). An Envoy with no other control plane comes back and keeps what it has. On
/// SQLite there is no other control plane to move to, so streams are left alone.
async fn follow_database(
    db: Db,
    serving: Serving,
    cache: SnapshotCache,
    rounds: Arc<Rounds>,
    shutdown: impl Future<Output = ()>,
) {
    let server = &serving.server;
    tokio::pin!(shutdown);
    let mut published = cache.subscribe();
    tokio::select! {
        () = &mut shutdown => return,
        _ = published.wait_for(Option::is_some) => {}
    }
    serving.set(true);
    let shared = db.backend() == Backend::Postgres;
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Failed round trips in a row; since when the database has been taken as gone, and when the
    // streams were last ended since.
    let mut failures = 0u32;
    let mut outage: Option<(std::time::Instant, Option<std::time::Instant>)> = None;
    // Whether the ADS port says `SERVING`; while it does not and the database answers, how
    // many rounds had begun when it answered again (a later one must work before `SERVING`).
    let mut serving_now = true;
    let mut recovering: Option<u64> = None;
    // When a round was last asked for because rounds fail.
    let mut retried: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        // Failing rounds are tried again every `ROUND_RETRY` whatever the resync interval, so
        // that one failure (a rebuild after a change, rounds during an outage) is not taken
        // for a lasting one; so is the round a recovery waits for.
        let waiting = recovering.is_some_and(|begun| !rounds.worked_since(begun));
        if (rounds.failing() || waiting) && retried.is_none_or(|at| at.elapsed() >= ROUND_RETRY) {
            retried = Some(std::time::Instant::now());
            rounds.wanted.notify_one();
        }
        let answer = match tokio::time::timeout(HEALTH_PING_TIMEOUT, db.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {HEALTH_PING_TIMEOUT:?}")),
        };
        // A database that answers while this control plane cannot build from it (a query that
        // fails, a signing key it cannot open) is as good as lost to its Envoys.
        let answer = answer.and_then(|()| {
            match rounds.failing_longer_than(BUILDS_FAILING_LIMIT_MS, now_ms()) {
                Some(ms) => Err(format!(
                    "Envoy's configuration cannot be built from it (signing keys or configuration, for {} s; see the warnings above)",
                    ms / 1000
                )),
                None => Ok(()),
            }
        });
        let error = match answer {
            Ok(()) => {
                failures = 0;
                outage = None;
                if !serving_now {
                    // Not `SERVING` on the configuration from before the outage, which misses
                    // what changed meanwhile: once a round that started now has worked.
                    let begun = match recovering {
                        Some(begun) => begun,
                        None => {
                            // Counted before asking, so the round asked for is a later one.
                            let begun = rounds.begun();
                            recovering = Some(begun);
                            rounds.wanted.notify_one();
                            tracing::info!("the database answers again: rebuilding Envoy's configuration before saying SERVING");
                            begun
                        }
                    };
                    if rounds.worked_since(begun) {
                        recovering = None;
                        serving_now = true;
                        serving.set(true);
                        tracing::info!(
                            "Envoy's configuration is rebuilt: the ADS port's gRPC health says SERVING"
                        );
                    }
                }
                continue;
            }
            Err(e) => e,
        };
        failures = failures.saturating_add(1);
        if failures < 2 {
            continue;
        }
        let Some((since, ended)) = &mut outage else {
            outage = Some((std::time::Instant::now(), None));
            serving_now = false;
            recovering = None;
            serving.set(false);
            tracing::warn!(
                error = %error,
                "the database does not answer: the ADS port's gRPC health says NOT_SERVING"
            );
            continue;
        };
        let due = since.elapsed() >= STREAMS_END_AFTER
            && ended.is_none_or(|at| at.elapsed() >= STREAMS_END_AGAIN);
        if shared && due {
            *ended = Some(std::time::Instant::now());
            let streams = server.streams().len();
            if streams > 0 {
                server.end_streams(
                    "this control plane cannot read its database; reconnect to another",
                );
                tracing::warn!(
                    streams,
                    error = %error,
                    "the database still does not answer: ended the ADS streams, so Envoys \
                     reconnect to a control plane that can read it"
                );
            }
        }
    }
}

/// Where the ADS port's health is said: its gRPC health and the `podgate_xds_serving` gauge.
struct Serving {
    server: AdsServer,
    metrics: Metrics,
}

impl Serving {
    fn set(&self, serving: bool) {
        self.metrics.set_xds_serving(serving);
        self.server.set_serving(serving);
    }
}

/// Completes when `flag` turns true (or its sender is gone).
pub async fn stopped(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

/// Keeps `cache` in step with the database until `shutdown` completes.
async fn run(
    sources: SyncSources,
    server: AdsServer,
    cache: SnapshotCache,
    filter_wasm: std::path::PathBuf,
    resync: Duration,
    rounds: Arc<Rounds>,
    shutdown: impl Future<Output = ()>,
) {
    let mut sync = Sync {
        sources,
        server,
        cache,
        filter_wasm,
        pending: None,
    };
    let mut stream_changes = sync.server.stream_changes();
    let mut resync_tick = tokio::time::interval(resync);
    resync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending_tick = tokio::time::interval(PENDING_CHECK);
    pending_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Changes announced by other processes on the database (PostgreSQL only).
    let remote = Arc::new(tokio::sync::Notify::new());
    let listener = (sync.sources.db.backend() == Backend::Postgres).then(|| {
        tokio::spawn(listen(
            sync.sources.config.database_url.clone(),
            sync.sources.db.instance().to_owned(),
            Arc::clone(&remote),
            sync.sources.metrics.clone(),
        ))
    });
    tokio::pin!(shutdown);
    // The services' OAuth tokens first (one round of the token task, bounded by a token
    // endpoint's timeout): Envoys keep what they have meanwhile, tokens included.
    tokio::select! {
        () = &mut shutdown => {
            if let Some(listener) = listener {
                listener.abort();
            }
            return;
        }
        done = sync.sources.service_tokens.first_round(FIRST_TOKENS_WAIT) => {
            if !done {
                tracing::warn!(waited = ?FIRST_TOKENS_WAIT, "the services' first OAuth tokens are not all in; publishing without them");
            }
        }
    }
    // The first resync tick fires at once: that is the build at start.
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = sync.sources.changes.notified() => {
                tokio::time::sleep(DEBOUNCE).await;
                if !sync.rebuild().await {
                    rounds.failed(now_ms());
                }
            }
            () = remote.notified() => {
                // The change may be a service's: the OAuth renewal task reads them again.
                sync.sources.service_tokens.services_changed();
                tokio::time::sleep(DEBOUNCE).await;
                // The change may be a key rotation.
                sync.round(&rounds).await;
            }
            // Keys rotated elsewhere appear, expired ones drop out.
            _ = resync_tick.tick() => sync.round(&rounds).await,
            () = rounds.wanted.notified() => sync.round(&rounds).await,
            changed = stream_changes.changed(), if sync.pending.is_some() => {
                if changed.is_ok() {
                    sync.check_pending().await;
                }
            }
            _ = pending_tick.tick(), if sync.pending.is_some() => sync.check_pending().await,
        }
    }
    if let Some(listener) = listener {
        listener.abort();
    }
}

/// Listens on [`CONFIG_CHANNEL`] and wakes `remote` for every announcement not sent by this
/// process (`own`), and once after every (re)connection, since announcements made while not
/// listening are lost. Runs until aborted.
async fn listen(url: String, own: String, remote: Arc<tokio::sync::Notify>, metrics: Metrics) {
    let mut retry = LISTEN_RETRY;
    loop {
        let mut listener = match connect_listener(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?retry, "cannot listen for changes made by other control planes; the periodic resync still picks them up");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(LISTEN_RETRY_MAX);
                continue;
            }
        };
        retry = LISTEN_RETRY;
        tracing::debug!(
            channel = CONFIG_CHANNEL,
            "listening for changes made by other control planes"
        );
        metrics.set_listening(true);
        remote.notify_one();
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) if n.payload() == own => {}
                Ok(Some(_)) => {
                    metrics.announcement(false);
                    remote.notify_one();
                }
                Ok(None) => {
                    tracing::warn!("lost the connection listening for changes made by other control planes; opening it again");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening for changes made by other control planes failed; opening it again");
                    break;
                }
            }
        }
        metrics.set_listening(false);
    }
}

async fn connect_listener(url: &str) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(CONFIG_CHANNEL).await?;
    Ok(listener)
}

/// A key being published: the ECDS versions known to hold it.
#[derive(Debug)]
struct Pending {
    kid: String,
    versions: HashSet<String>,
}

struct Sync {
    sources: SyncSources,
    server: AdsServer,
    cache: SnapshotCache,
    filter_wasm: std::path::PathBuf,
    pending: Option<Pending>,
}

impl Sync {
    async fn reload_keys(&self) -> Result<(), crate::keys::KeyringError> {
        self.sources
            .keys
            .reload(&self.sources.db, &self.sources.config)
            .await
    }

    /// Reloads the signing keys and rebuilds Envoy's configuration, and says how it went in
    /// `rounds`.
    async fn round(&mut self, rounds: &Rounds) {
        let round = rounds.begin();
        let started = now_ms();
        let keys = self.reload_keys().await;
        if let Err(e) = &keys {
            self.sources.metrics.xds_build_failed();
            tracing::warn!(error = %e, "reloading signing keys failed; keeping the previous ones");
        }
        if self.rebuild().await && keys.is_ok() {
            rounds.worked(round);
            self.sources.metrics.set_xds_last_round(started / 1000);
        } else {
            rounds.failed(started);
        }
    }

    /// Builds Envoy's configuration and publishes it if it changed; whether it could be built.
    async fn rebuild(&mut self) -> bool {
        let built = match build_snapshot(&self.sources, &self.filter_wasm).await {
            Ok(built) => built,
            Err(e) => {
                self.sources.metrics.xds_build_failed();
                tracing::warn!(error = %e, "cannot build Envoy's configuration; Envoys keep the last one");
                return false;
            }
        };
        let cds = built.snapshot.version(ResourceType::Cluster).to_owned();
        let ecds = built
            .snapshot
            .version(ResourceType::ExtensionConfig)
            .to_owned();
        if self.cache.set(built.snapshot) {
            self.sources.metrics.xds_published(&[
                (ResourceType::Cluster, &cds),
                (ResourceType::ExtensionConfig, &ecds),
            ]);
            tracing::info!(cds_version = %cds, ecds_version = %ecds, pods = built.pods, "pushed Envoy configuration");
        } else {
            tracing::debug!(ecds_version = %ecds, "Envoy configuration unchanged");
        }
        self.note_pending(&ecds, &built.kids);
        self.check_pending().await;
        true
    }

    /// Remembers which published versions hold the pending key.
    fn note_pending(&mut self, ecds_version: &str, kids: &HashSet<String>) {
        let pending_kid = match self.sources.keys.current() {
            Ok(ring) => ring.capability_pending.as_ref().map(|p| p.kid.clone()),
            Err(_) => None,
        };
        let Some(kid) = pending_kid else {
            self.pending = None;
            return;
        };
        if self.pending.as_ref().is_none_or(|p| p.kid != kid) {
            self.pending = Some(Pending {
                kid: kid.clone(),
                versions: HashSet::new(),
            });
        }
        if kids.contains(&kid) {
            if let Some(p) = self.pending.as_mut() {
                p.versions.insert(ecds_version.to_owned());
            }
        }
    }

    /// Clears the pending key once every connected Envoy runs a config holding it, and lets it
    /// sign once cleared or past its deadline.
    async fn check_pending(&mut self) {
        let Some(pending) = &self.pending else {
            return;
        };
        let Ok(ring) = self.sources.keys.current() else {
            return;
        };
        let Some(in_ring) = ring.capability_pending.as_ref() else {
            self.pending = None;
            return;
        };
        if in_ring.kid != pending.kid {
            // Rotated again: the next rebuild tracks the new key.
            return;
        }
        let everywhere = !pending.versions.is_empty()
            && all_acknowledged(&self.server.streams(), &pending.versions);
        let past_deadline = now_unix() >= in_ring.signs_at_latest;
        if !everywhere && !past_deadline {
            return;
        }
        let kid = pending.kid.clone();
        if everywhere {
            tokio::time::sleep(WORKER_SETTLE).await;
            self.sources.keys.signing_gate().clear(&kid);
        }
        if let Err(e) = self.reload_keys().await {
            tracing::warn!(error = %e, "reloading signing keys failed; keeping the previous ones");
            return;
        }
        let still_pending = self
            .sources
            .keys
            .current()
            .ok()
            .and_then(|r| r.capability_pending.as_ref().map(|p| p.kid == kid))
            .unwrap_or(false);
        if !still_pending {
            if everywhere {
                tracing::info!(%kid, envoys = self.server.streams().len(), "every connected Envoy has the new capability key: it signs now");
            } else {
                tracing::warn!(%kid, "publish delay passed before every Envoy acknowledged the new capability key: it signs now");
            }
            self.pending = None;
        }
    }
}

/// Whether every stream subscribed to ECDS has acknowledged one of `versions` (a stream not yet
/// subscribed will be sent the current snapshot, which holds the key).
fn all_acknowledged(streams: &[StreamStatus], versions: &HashSet<String>) -> bool {
    streams
        .iter()
        .all(|s| match s.acked.get(&ResourceType::ExtensionConfig) {
            None => true,
            Some(None) => false,
            Some(Some(v)) => versions.contains(v),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn rounds_say_how_long_they_have_failed_and_whether_one_worked_since() {
        let rounds = Rounds::default();
        assert_eq!(rounds.failing_longer_than(10_000, 50_000), None);
        let first = rounds.begin();
        rounds.worked(first);
        // Recovering from here: only a round begun later counts.
        let begun = rounds.begun();
        assert!(!rounds.worked_since(begun));
        rounds.begin();
        rounds.failed(2_000);
        // The first failure counts: those after it do not move it.
        rounds.begin();
        rounds.failed(5_000);
        assert!(rounds.failing());
        assert_eq!(rounds.failing_longer_than(10_000, 12_000), None);
        assert_eq!(rounds.failing_longer_than(10_000, 12_001), Some(10_001));
        assert!(!rounds.worked_since(begun));
        let fourth = rounds.begin();
        rounds.worked(fourth);
        assert!(!rounds.failing());
        assert_eq!(rounds.failing_longer_than(10_000, 60_000), None);
        assert!(rounds.worked_since(begun));
    }

    fn stream(ecds: Option<Option<&str>>) -> StreamStatus {
        let mut acked = BTreeMap::new();
        acked.insert(ResourceType::Cluster, Some("c".to_owned()));
        if let Some(v) = ecds {
            acked.insert(ResourceType::ExtensionConfig, v.map(str::to_owned));
        }
        StreamStatus {
            node_id: Some("n".into()),
            acked,
        }
    }

    #[test]
    fn the_same_pods_give_the_same_json_whatever_the_map_order() {
        let config = |pods: &[String]| {
            let mut c: FilterConfig = serde_json::from_value(serde_json::json!({
                "issuer": "http://cp", "domain": "localhost", "auth_url": "http://cp/api/proxy-auth",
                "keys": {"keys": []}
            }))
            .unwrap();
            for slug in pods {
                let entry = serde_json::json!({"status": "running", "cluster": "podgate_pods"});
                c.pods
                    .insert(slug.clone(), serde_json::from_value(entry).unwrap());
            }
            c
        };
        let slugs: Vec<String> = (0..64).map(|i| format!("pod-{i:02}")).collect();
        let reversed: Vec<String> = slugs.iter().rev().cloned().collect();
        let (a, b) = (config(&slugs), config(&reversed));
        let json = filter_json(&a).unwrap();
        assert_eq!(json, filter_json(&b).unwrap());
        assert!(json.find("\"pod-00\"").unwrap() < json.find("\"pod-63\"").unwrap());
        assert_eq!(
            serde_json::from_str::<FilterConfig>(&json).unwrap().pods,
            a.pods
        );
    }

    #[test]
    fn a_key_is_everywhere_when_every_ecds_subscriber_acked_a_version_holding_it() {
        let good: HashSet<String> = ["v2".to_owned(), "v3".to_owned()].into();
        assert!(
            all_acknowledged(&[], &good),
            "no Envoy: nothing to wait for"
        );
        assert!(all_acknowledged(
            &[stream(Some(Some("v2"))), stream(Some(Some("v3")))],
            &good
        ));
        // Not subscribed to ECDS yet: it will get the current snapshot.
        assert!(all_acknowledged(&[stream(None)], &good));
        // Subscribed but nothing acknowledged, or still on (or NACKed back to) an old version.
        assert!(!all_acknowledged(&[stream(Some(None))], &good));
        assert!(!all_acknowledged(
            &[stream(Some(Some("v2"))), stream(Some(Some("v1")))],
            &good
        ));
    }
}
