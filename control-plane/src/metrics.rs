//! The control plane's Prometheus metrics: one registry per [`crate::AppState`], encoded at
//! `GET /metrics` in the OpenMetrics text format. Every label value is one of a fixed set named
//! here (or an operator-configured provider name, or a route template): never a user, a pod, a
//! token or an address. Code elsewhere calls the named functions below and holds no metric.

use std::sync::Arc;
use std::time::{Duration, Instant};

use podgate_protocol::token::TokenKind;
use podgate_xds::{ResourceType, XdsObserver};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type Labels3 = [(&'static str, &'static str); 3];
type LabelsOwned = [(&'static str, String); 3];

/// How a login, a renewal or a mint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Ok,
    /// The client's: refused credentials, a bad ticket, no access.
    Refused,
    /// Ours: the store, the keys, a provider.
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }

    /// From an HTTP status: 2xx and 3xx are done, 5xx are ours, the rest the client's.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            200..=399 => Outcome::Ok,
            500.. => Outcome::Error,
            _ => Outcome::Refused,
        }
    }
}

/// How a pod wake-up asked by Envoy's filter ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeOutcome {
    /// The start hook is being called.
    Called,
    /// The start hook was called for this pod moments ago.
    Limited,
    /// No start hook is configured.
    Off,
    /// The caller's: no renewal secret, a capability that may not start the pod.
    Refused,
    /// Ours: the store, the keys.
    Error,
}

impl WakeOutcome {
    fn as_str(self) -> &'static str {
        match self {
            WakeOutcome::Called => "called",
            WakeOutcome::Limited => "limited",
            WakeOutcome::Off => "off",
            WakeOutcome::Refused => "refused",
            WakeOutcome::Error => "error",
        }
    }
}

/// Which way a user signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginMethod {
    /// With an OpenID provider (`/auth/callback`).
    SignIn,
    /// The dev login (`/dev/login`).
    Dev,
}

/// A document fetched from an identity provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdpDocument {
    /// Its signing keys (JWKS), with the discovery document when the keys come through it.
    Jwks,
    /// Its discovery document, for signing in.
    Discovery,
}

/// The classes of database work that are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbOp {
    /// Reading whether a user may reach a pod port, at every mint.
    Authorize,
    /// The group commit of consumed tickets and the mint audit.
    Record,
    /// Reading everything Envoy's configuration is built from.
    Snapshot,
}

impl DbOp {
    fn as_str(self) -> &'static str {
        match self {
            DbOp::Authorize => "authorize",
            DbOp::Record => "record",
            DbOp::Snapshot => "snapshot",
        }
    }
}

/// Every metric of the control plane. Cheap to clone (each metric is shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    logins: Family<Labels2, Counter>,
    renewals: Family<Labels1, Counter>,
    exchanges: Family<Labels1, Counter>,
    wakes: Family<Labels1, Counter>,
    mints: Family<Labels3, Counter>,
    refusals: Family<[(&'static str, String); 2], Counter>,
    rate_limited: Family<Labels1, Counter>,
    idp_fetches: Family<LabelsOwned, Counter>,
    oauth_fetches: Family<[(&'static str, String); 2], Counter>,
    oauth_expiry: Family<[(&'static str, String); 1], Gauge>,
    /// The services `oauth_expiry` has a sample for.
    oauth_expiry_services: Arc<std::sync::Mutex<Vec<String>>>,
    db_seconds: Family<Labels1, Histogram>,
    xds: Arc<AdsMetrics>,
    replicas: Gauge,
    announcements: Family<Labels1, Counter>,
    listening: Gauge,
    xds_serving: Gauge,
    xds_build_failures: Counter,
    xds_last_round: Gauge,
}

/// The xDS part, also handed to the ADS server as its observer.
#[derive(Debug)]
pub struct AdsMetrics {
    streams: Gauge,
    pushes: Family<Labels1, Counter>,
    acks: Family<Labels1, Counter>,
    nacks: Family<Labels1, Counter>,
    ack_seconds: Family<Labels1, Histogram>,
    versions: Family<[(&'static str, String); 2], Gauge>,
    snapshots: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("podgate");
        let logins = Family::<Labels2, Counter>::default();
        registry.register(
            "logins",
            "Sign-ins finished, by method (sign_in, dev) and outcome (ok, refused, error)",
            logins.clone(),
        );
        let renewals = Family::<Labels1, Counter>::default();
        registry.register(
            "renewals",
            "Capability renewals asked by Envoy's filter, by outcome (ok, refused, error)",
            renewals.clone(),
        );
        let exchanges = Family::<Labels1, Counter>::default();
        registry.register(
            "exchanges",
            "API tokens exchanged for capabilities by Envoy's filter, by outcome (ok, refused, error)",
            exchanges.clone(),
        );
        let wakes = Family::<Labels1, Counter>::default();
        registry.register(
            "wakes",
            "Stopped pods' starts asked by Envoy's filter, by outcome (called, limited, off, refused, error)",
            wakes.clone(),
        );
        let mints = Family::<Labels3, Counter>::default();
        registry.register(
            "mints",
            "Tokens minted, by kind (ticket, capability), via (proxy-auth, callback, api, renew, exchange) and outcome (ok, refused, error)",
            mints.clone(),
        );
        let refusals = Family::<[(&'static str, String); 2], Counter>::default();
        registry.register(
            "http_refusals",
            "HTTP answers refusing a request (4xx), by route template and reason",
            refusals.clone(),
        );
        let rate_limited = Family::<Labels1, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a per-client rate limit (429), by endpoint",
            rate_limited.clone(),
        );
        let idp_fetches = Family::<LabelsOwned, Counter>::default();
        registry.register(
            "idp_fetches",
            "Documents fetched from identity providers, by provider, document (jwks, discovery) and outcome (ok, failed)",
            idp_fetches.clone(),
        );
        let oauth_fetches = Family::<[(&'static str, String); 2], Counter>::default();
        registry.register(
            "service_oauth_fetches",
            "Tokens asked of services' OAuth token endpoints, by service and outcome (ok, failed)",
            oauth_fetches.clone(),
        );
        let oauth_expiry = Family::<[(&'static str, String); 1], Gauge>::default();
        registry.register(
            "service_oauth_token_expires_at_seconds",
            "When the OAuth token this control plane pushes for a service expires (Unix seconds; 0 while it has none, and Envoy gets the fallback or answers 502)",
            oauth_expiry.clone(),
        );
        let db_seconds =
            Family::<Labels1, Histogram>::new_with_constructor(seconds_histogram as fn() -> _);
        registry.register(
            "db_seconds",
            "Time spent on database work, by operation class (authorize, record, snapshot)",
            db_seconds.clone(),
        );
        let xds = Arc::new(AdsMetrics {
            streams: Gauge::default(),
            pushes: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            ack_seconds: Family::new_with_constructor(seconds_histogram as fn() -> _),
            versions: Family::default(),
            snapshots: Counter::default(),
        });
        registry.register(
            "xds_streams",
            "ADS streams open (one per connected Envoy)",
            xds.streams.clone(),
        );
        registry.register(
            "xds_pushes",
            "xDS responses sent to Envoys, by type (cds, ecds)",
            xds.pushes.clone(),
        );
        registry.register(
            "xds_acks",
            "xDS responses Envoys applied, by type",
            xds.acks.clone(),
        );
        registry.register(
            "xds_nacks",
            "xDS responses Envoys rejected (they keep their previous configuration), by type",
            xds.nacks.clone(),
        );
        registry.register(
            "xds_ack_seconds",
            "Time from sending an xDS response to Envoy's ACK or NACK, by type",
            xds.ack_seconds.clone(),
        );
        registry.register(
            "xds_version",
            "The configuration version in force, by type: 1 for the current version",
            xds.versions.clone(),
        );
        registry.register(
            "xds_snapshots",
            "Envoy configurations published with new content",
            xds.snapshots.clone(),
        );
        let replicas = Gauge::default();
        registry.register(
            "replicas",
            "Control planes seen on the PostgreSQL database, each enforcing its share of every rate limit (1 on SQLite)",
            replicas.clone(),
        );
        replicas.set(1);
        let announcements = Family::<Labels1, Counter>::default();
        registry.register(
            "config_announcements",
            "Changes to Envoy's configuration announced to the other control planes on the PostgreSQL database, by direction (sent, received)",
            announcements.clone(),
        );
        let listening = Gauge::default();
        registry.register(
            "config_listening",
            "1 while listening for the changes other control planes on the PostgreSQL database announce",
            listening.clone(),
        );
        let xds_serving = Gauge::default();
        registry.register(
            "xds_serving",
            "1 while the ADS port's gRPC health says SERVING (a configuration published, the database answering); Envoys leave a control plane at 0",
            xds_serving.clone(),
        );
        let xds_build_failures = Counter::default();
        registry.register(
            "xds_build_failures",
            "Signing-key reloads and builds of Envoy's configuration that failed (Envoys keep the last configuration)",
            xds_build_failures.clone(),
        );
        let xds_last_round = Gauge::default();
        registry.register(
            "xds_last_round_timestamp_seconds",
            "When (Unix seconds) the last round that reloaded the signing keys and built Envoy's configuration from the database without error started",
            xds_last_round.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            logins,
            renewals,
            exchanges,
            wakes,
            mints,
            refusals,
            rate_limited,
            idp_fetches,
            oauth_fetches,
            oauth_expiry,
            oauth_expiry_services: Arc::default(),
            db_seconds,
            xds,
            replicas,
            announcements,
            listening,
            xds_serving,
            xds_build_failures,
            xds_last_round,
        }
    }

    /// Everything, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// A sign-in finished.
    pub fn login(&self, method: LoginMethod, outcome: Outcome) {
        let method = match method {
            LoginMethod::SignIn => "sign_in",
            LoginMethod::Dev => "dev",
        };
        self.logins
            .get_or_create(&[("method", method), ("outcome", outcome.as_str())])
            .inc();
    }

    /// A renewal asked by Envoy's filter was answered.
    pub fn renewal(&self, outcome: Outcome) {
        self.renewals
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    /// An API token exchange asked by Envoy's filter was answered.
    pub fn exchange(&self, outcome: Outcome) {
        self.exchanges
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    /// A pod wake-up asked by Envoy's filter was answered.
    pub fn wake(&self, outcome: WakeOutcome) {
        self.wakes
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    /// A token was minted, or minting it failed.
    pub fn mint(&self, kind: TokenKind, via: &str, outcome: Outcome) {
        let kind = match kind {
            TokenKind::LoginTicket => "ticket",
            TokenKind::Capability => "capability",
            // The control plane never signs assertions (`mint::sign_in_session` refuses them).
            TokenKind::Assertion => "assertion",
        };
        let via = match via {
            "proxy-auth" => "proxy-auth",
            "callback" => "callback",
            "renew" => "renew",
            "exchange" => "exchange",
            _ => "api",
        };
        self.mints
            .get_or_create(&[("kind", kind), ("via", via), ("outcome", outcome.as_str())])
            .inc();
    }

    /// An HTTP answer refused a request: `route` is the router's template that matched (a
    /// fixed set), `None` when none did.
    pub fn refusal(&self, route: Option<&str>, status: u16) {
        let Some(reason) = refusal_reason(status) else {
            return;
        };
        self.refusals
            .get_or_create(&[
                ("route", route.unwrap_or("unmatched").to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// A per-client rate limit refused a request to `endpoint`.
    pub fn rate_limited(&self, endpoint: &'static str) {
        self.rate_limited
            .get_or_create(&[("endpoint", endpoint)])
            .inc();
    }

    /// A document was fetched from the identity provider `provider` (a configured name).
    pub fn idp_fetch(&self, provider: &str, document: IdpDocument, ok: bool) {
        let document = match document {
            IdpDocument::Jwks => "jwks",
            IdpDocument::Discovery => "discovery",
        };
        let outcome = if ok { "ok" } else { "failed" };
        self.idp_fetches
            .get_or_create(&[
                ("provider", provider.to_owned()),
                ("document", document.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// Counts one attempt to get service `service`'s OAuth token.
    pub fn service_oauth_fetch(&self, service: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.oauth_fetches
            .get_or_create(&[
                ("service", service.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// Sets when the OAuth token pushed for each of `services` expires (0: none), and forgets
    /// the services no longer listed (each sample is set or removed in place, so a scrape
    /// never finds the family empty meanwhile).
    pub fn service_oauth_expiries(&self, services: &[(String, Option<i64>)]) {
        let mut listed = self
            .oauth_expiry_services
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (service, expires_at) in services {
            self.oauth_expiry
                .get_or_create(&[("service", service.clone())])
                .set(expires_at.unwrap_or(0));
        }
        for gone in listed
            .iter()
            .filter(|name| !services.iter().any(|(s, _)| s == *name))
        {
            self.oauth_expiry.remove(&[("service", gone.clone())]);
        }
        *listed = services.iter().map(|(s, _)| s.clone()).collect();
    }

    /// Records how long database work of class `op` took.
    pub fn db_time(&self, op: DbOp, took: Duration) {
        self.db_seconds
            .get_or_create(&[("op", op.as_str())])
            .observe(took.as_secs_f64());
    }

    /// Runs `work`, recording its time under `op`.
    pub async fn db_timed<T>(&self, op: DbOp, work: impl std::future::Future<Output = T>) -> T {
        let start = Instant::now();
        let out = work.await;
        self.db_time(op, start.elapsed());
        out
    }

    /// The control planes sharing the rate limits now.
    pub fn set_replicas(&self, n: u32) {
        self.replicas.set(i64::from(n));
    }

    /// A change announcement was sent to, or received from, the other control planes.
    pub fn announcement(&self, sent: bool) {
        let direction = if sent { "sent" } else { "received" };
        self.announcements
            .get_or_create(&[("direction", direction)])
            .inc();
    }

    /// Whether the ADS port's gRPC health says SERVING.
    pub fn set_xds_serving(&self, serving: bool) {
        self.xds_serving.set(i64::from(serving));
    }

    /// A signing-key reload or a build of Envoy's configuration failed.
    pub fn xds_build_failed(&self) {
        self.xds_build_failures.inc();
    }

    /// A round that reloaded the keys and built the configuration started at `unix_secs`.
    pub fn set_xds_last_round(&self, unix_secs: i64) {
        self.xds_last_round.set(unix_secs);
    }

    /// Whether this control plane is listening for the others' announcements.
    pub fn set_listening(&self, on: bool) {
        self.listening.set(i64::from(on));
    }

    /// The ADS server's observer.
    pub fn xds(&self) -> Arc<AdsMetrics> {
        Arc::clone(&self.xds)
    }

    /// A configuration with new content was published; `versions` are its version per type.
    pub fn xds_published(&self, versions: &[(ResourceType, &str)]) {
        self.xds.snapshots.inc();
        self.xds.versions.clear();
        for (kind, version) in versions {
            self.xds
                .versions
                .get_or_create(&[
                    ("type", type_label(*kind).to_owned()),
                    ("version", (*version).to_owned()),
                ])
                .set(1);
        }
    }
}

fn type_label(kind: ResourceType) -> &'static str {
    match kind {
        ResourceType::Cluster => "cds",
        ResourceType::ExtensionConfig => "ecds",
    }
}

impl XdsObserver for AdsMetrics {
    fn stream_opened(&self) {
        self.streams.inc();
    }

    fn stream_closed(&self) {
        self.streams.dec();
    }

    fn pushed(&self, kind: ResourceType) {
        self.pushes
            .get_or_create(&[("type", type_label(kind))])
            .inc();
    }

    fn acked(&self, kind: ResourceType, after: Option<Duration>) {
        self.acks.get_or_create(&[("type", type_label(kind))]).inc();
        if let Some(after) = after {
            self.ack_seconds
                .get_or_create(&[("type", type_label(kind))])
                .observe(after.as_secs_f64());
        }
    }

    fn nacked(&self, kind: ResourceType, after: Option<Duration>) {
        self.nacks
            .get_or_create(&[("type", type_label(kind))])
            .inc();
        if let Some(after) = after {
            self.ack_seconds
                .get_or_create(&[("type", type_label(kind))])
                .observe(after.as_secs_f64());
        }
    }
}

/// Why a 4xx answer refused, in a word; `None` for an answer that is not a refusal.
fn refusal_reason(status: u16) -> Option<&'static str> {
    if !(400..500).contains(&status) {
        return None;
    }
    Some(match status {
        400 => "bad_request",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        413 | 414 | 431 => "too_large",
        429 => "rate_limited",
        _ => "other",
    })
}
