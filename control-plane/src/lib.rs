//! The podgate control plane: who the user is, what they may reach, minting, storage and the
//! HTTP API. `app(state)` builds the whole router; `main.rs` only parses the command line.

pub mod auth;
pub mod authz;
pub mod config;
pub mod cuts;
pub mod error_text;
pub mod filter_config;
pub mod http;
pub mod ids;
pub mod key_encryption;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod mint;
pub mod recorder;
pub mod renew;
pub mod repeats;
pub mod replicas;
pub mod service_oauth;
pub mod services;
pub mod store;
pub mod tickets;
pub mod tls;
pub mod wake;
pub mod xds_sync;

use crate::auth::verify;
use crate::http::{admin, api_tokens, cors, flow, health, security_headers};

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use podgate_protocol::cookie::{cookie_name, DEFAULT_COOKIE_NAME};
use utoipa_axum::router::OpenApiRouter;

use crate::config::Config;
use crate::http::error::error_response;
use crate::keys::{KeyRing, KeyringError, LiveKeys, NoKeyRing};
use crate::metrics::Metrics;
use crate::mint::MintContext;
use crate::recorder::Recorder;
use crate::store::Db;

pub use crate::config::{SESSION_COOKIE, SIGN_IN_COOKIE};

/// Everything a handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    db: Db,
    /// The key ring in force and the gate new capability keys pass (publish before sign).
    keys: Arc<LiveKeys>,
    recorder: Recorder,
    /// Login tickets minted here and not redeemed yet: their signatures need no check.
    tickets: tickets::MintedTickets,
    capability_cookie: String,
    session_cookie: String,
    /// Name of the cookie that binds a sign-in under way to its browser.
    sign_in_cookie: String,
    verifiers: verify::Verifiers,
    /// Sign-in with the configured providers: its HTTP client and their endpoints.
    sign_ins: auth::sign_in::SignIns,
    /// Per-client rate limits of the endpoints that take credentials.
    limits: limits::Limiters,
    /// Poked after every committed admin write that changes what Envoy gets.
    envoy_config_changes: Arc<tokio::sync::Notify>,
    /// The Prometheus metrics (`GET /metrics`).
    metrics: Metrics,
    /// The start hook of stopped pods and its per-pod limit.
    waker: wake::Waker,
    /// The services' OAuth tokens, in memory only (`service_oauth`).
    service_tokens: Arc<service_oauth::ServiceTokens>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state: seals signing keys stored in plaintext (when a key-encryption key is
    /// configured), makes sure signing keys exist (first start) and loads them.
    pub async fn new(config: Config, db: Db) -> Result<AppState, KeyringError> {
        let now = store::now_unix();
        seal_stored_keys(&db, &config).await?;
        // Control planes starting together on an empty database take turns, so one key per kind
        // is made.
        let made = db
            .with_key_setup_lock(keys::ensure(
                &db,
                config.signing_alg,
                now,
                &config.key_encryption,
            ))
            .await?;
        for kid in &made {
            tracing::info!(%kid, alg = config.signing_alg.as_str(), "generated a signing key");
        }
        let capability_cookie = cookie_name(DEFAULT_COOKIE_NAME, config.public_scheme.is_https());
        let session_cookie = cookie_name(SESSION_COOKIE, config.issuer.starts_with("https://"));
        let sign_in_cookie = cookie_name(SIGN_IN_COOKIE, config.issuer.starts_with("https://"));
        let metrics = Metrics::new();
        let sign_ins = auth::sign_in::SignIns::new(metrics.clone())
            .map_err(|e| KeyringError::Generate(format!("sign-in: {e}")))?;
        let verifiers = verify::Verifiers::new(&config, &metrics)
            .map_err(|e| KeyringError::Generate(format!("identity verifiers: {e}")))?;
        let signing_gate = xds_sync::signing_gate(&config);
        let limits = limits::Limiters::new(&config.limits);
        let waker = wake::Waker::new(config.start_hook.clone())
            .map_err(|e| KeyringError::Generate(format!("start hook client: {e}")))?;
        let state = AppState {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                db: db.clone(),
                keys: Arc::new(LiveKeys::new(signing_gate)),
                recorder: Recorder::start(db.clone(), metrics.clone()),
                tickets: tickets::MintedTickets::default(),
                capability_cookie,
                session_cookie,
                sign_in_cookie,
                verifiers,
                sign_ins,
                limits,
                envoy_config_changes: Arc::new(tokio::sync::Notify::new()),
                metrics,
                waker,
                service_tokens: Arc::default(),
            }),
        };
        state.reload_keys().await?;
        Ok(state)
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The start hook of stopped pods (`wake`).
    pub fn waker(&self) -> &wake::Waker {
        &self.inner.waker
    }

    /// Group-committed writes of the hot path (ticket consumption, mint audit).
    pub fn recorder(&self) -> &Recorder {
        &self.inner.recorder
    }

    /// The login tickets minted here and not presented back yet.
    pub fn tickets(&self) -> &tickets::MintedTickets {
        &self.inner.tickets
    }

    /// Name of the capability cookie on pod hosts (`__Host-` prefixed over https).
    pub fn capability_cookie(&self) -> &str {
        &self.inner.capability_cookie
    }

    /// Name of the control plane's session cookie.
    pub fn session_cookie(&self) -> &str {
        &self.inner.session_cookie
    }

    /// Name of the cookie that binds a sign-in under way to its browser.
    pub fn sign_in_cookie(&self) -> &str {
        &self.inner.sign_in_cookie
    }

    /// What the sign-in with an identity provider reads and writes.
    pub fn sign_in_context(&self) -> auth::sign_in::SignInContext<'_> {
        auth::sign_in::SignInContext {
            db: &self.inner.db,
            sign_ins: &self.inner.sign_ins,
            verifier: &self.inner.verifiers.oidc,
            issuer: &self.inner.config.issuer,
        }
    }

    /// Identity verifiers: OIDC key caches, the main-app session cache.
    pub fn verifiers(&self) -> &verify::Verifiers {
        &self.inner.verifiers
    }

    /// The Prometheus metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether `user` (or anyone, for `None`) may reach `addr` now (`authz::authorize`), its
    /// database time counted.
    pub async fn authorize(
        &self,
        user: Option<&store::User>,
        addr: &podgate_protocol::host::PodAddr,
    ) -> Result<(), authz::AuthzError> {
        self.inner
            .metrics
            .db_timed(
                metrics::DbOp::Authorize,
                authz::authorize(&self.inner.db, user, addr),
            )
            .await
    }

    /// The per-client rate limits (`limits.rs`).
    pub fn limits(&self) -> &limits::Limiters {
        &self.inner.limits
    }

    /// The key ring in force.
    pub fn keys(&self) -> Result<Arc<KeyRing>, NoKeyRing> {
        self.inner.keys.current()
    }

    pub fn keys_loaded(&self) -> bool {
        self.inner.keys.loaded()
    }

    /// What `verify::identify` reads.
    pub fn identify_context(&self) -> verify::IdentifyContext<'_> {
        verify::IdentifyContext {
            db: &self.inner.db,
            verifiers: &self.inner.verifiers,
            api_token_failures: &self.inner.limits.api_token_failures,
            session_cookie: &self.inner.session_cookie,
        }
    }

    /// What minting and redeeming tickets read and write.
    pub fn mint_context(&self) -> MintContext<'_> {
        MintContext {
            config: &self.inner.config,
            keys: &self.inner.keys,
            db: &self.inner.db,
            recorder: &self.inner.recorder,
            tickets: &self.inner.tickets,
            metrics: &self.inner.metrics,
        }
    }

    /// What the xDS sync task reads.
    pub fn xds_sources(&self) -> xds_sync::SyncSources {
        xds_sync::SyncSources {
            db: self.inner.db.clone(),
            config: Arc::clone(&self.inner.config),
            keys: Arc::clone(&self.inner.keys),
            changes: Arc::clone(&self.inner.envoy_config_changes),
            metrics: self.inner.metrics.clone(),
            service_tokens: Arc::clone(&self.inner.service_tokens),
        }
    }

    /// The services' OAuth tokens held by this control plane.
    pub fn service_tokens(&self) -> &service_oauth::ServiceTokens {
        &self.inner.service_tokens
    }

    /// Tells the xDS sync task that what Envoy gets may have changed (call after the commit),
    /// and, on PostgreSQL, every other control plane on the database, before the caller answers.
    /// An announcement that fails is logged: the others' periodic resync still picks the change up.
    pub async fn envoy_config_changed(&self) {
        self.inner.envoy_config_changes.notify_one();
        // The change may be a service's: the OAuth renewal task reads them again.
        self.inner.service_tokens.services_changed();
        if self.inner.db.backend() != store::Backend::Postgres {
            return;
        }
        match self.inner.db.announce_config_change().await {
            Ok(()) => self.inner.metrics.announcement(true),
            Err(e) => {
                tracing::warn!(error = %e, "could not announce the change to the other control planes; they pick it up at their next resync")
            }
        }
    }

    /// Completes after [`AppState::envoy_config_changed`] (a call made while nobody waits is
    /// kept for the next wait).
    pub async fn envoy_config_change(&self) {
        self.inner.envoy_config_changes.notified().await;
    }

    /// Re-reads the keys from the database (after a rotation, or periodically so a rotation by
    /// `podgate keys rotate` in another process is picked up and expired keys drop out).
    pub async fn reload_keys(&self) -> Result<(), KeyringError> {
        self.inner
            .keys
            .reload(&self.inner.db, &self.inner.config)
            .await
    }
}

/// At start: with a key-encryption key, every signing key stored in plaintext (an upgrade, or a
/// database used in dev mode) is sealed under it, after checking that every stored key opens,
/// and so is every service credential and OAuth configuration stored in plaintext;
/// without one (dev mode only), keys stay plaintext. Keys under a previous key-encryption key
/// are left for `podgate keys rewrap`, so that control planes restarted one by one during a
/// rotation all keep reading them.
async fn seal_stored_keys(db: &Db, config: &Config) -> Result<(), KeyringError> {
    let kek = &config.key_encryption;
    let Some(current) = kek.current() else {
        tracing::warn!(
            "signing keys are stored UNENCRYPTED: dev mode without a key-encryption key (set PODGATE_KEY_ENCRYPTION_KEY_FILE to encrypt them)"
        );
        return Ok(());
    };
    let report = keys::reseal(db, kek, keys::Reseal::Plaintext).await?;
    tracing::info!(
        kek_id = current.id(),
        source = current.source(),
        previous = kek.previous().len(),
        "signing keys are encrypted with the key-encryption key"
    );
    if !report.resealed.is_empty() {
        tracing::warn!(
            kids = ?report.resealed,
            "encrypted signing keys that were stored in plaintext; copies of the plaintext may remain in database backups and free pages: rotate the signing keys (`podgate keys rotate`) to retire them"
        );
    }
    if report.left > 0 {
        tracing::warn!(
            keys = report.left,
            "signing keys are still encrypted with a previous key-encryption key; run `podgate keys rewrap` with the same key settings, then drop the previous key"
        );
    }
    // The services' credentials and OAuth configurations written in dev mode without a key.
    match services::seal_plaintext(db, kek).await {
        Ok(0) => {}
        Ok(sealed) => tracing::warn!(
            services = sealed,
            "encrypted service credentials that were stored in plaintext; copies of the plaintext may remain in database backups and free pages: replace those credentials at their issuers"
        ),
        Err(e) => tracing::error!(
            error = %e,
            "service credentials stored in plaintext could not be encrypted; they stay in plaintext until the next start"
        ),
    }
    Ok(())
}

/// The whole HTTP API: the routes of [`api`], the OpenAPI document they describe (served at
/// `GET /openapi.json`), and layers on the whole router, so no route, fallback or error can miss
/// them (outermost last): CORS, the body limit, request size checks, counting refusals, security
/// headers. `GET /metrics` is among the routes unless `--metrics-listen` serves it elsewhere
/// ([`metrics_app`]).
///
/// With mutual TLS with Envoy (`--envoy-tls-cert`), the paths only Envoy calls
/// ([`ENVOY_ONLY_PATHS`], and `/.podgate/`) are answered 404 here: Envoy reaches them on the
/// Envoy-facing listener ([`envoy_app`]), which requires its client certificate.
pub fn app(state: AppState) -> Router {
    let envoy_elsewhere = state.config().envoy_tls.is_some();
    build_app(state, envoy_elsewhere)
}

/// The HTTP API as served on the Envoy-facing listener (`--envoy-listen`, mutual TLS): every
/// route, the ones only Envoy calls included.
pub fn envoy_app(state: AppState) -> Router {
    build_app(state, false)
}

/// The endpoints only Envoy's filter calls (besides `/.podgate/` on pod hosts, which Envoy
/// forwards).
pub const ENVOY_ONLY_PATHS: [&str; 3] = [
    podgate_protocol::renewal::RENEW_PATH,
    podgate_protocol::exchange::EXCHANGE_PATH,
    podgate_protocol::wake::WAKE_PATH,
];

/// Whether `path` is one that only Envoy calls.
pub fn is_envoy_only(path: &str) -> bool {
    ENVOY_ONLY_PATHS.contains(&path) || path.starts_with(podgate_protocol::config::RESERVED_PREFIX)
}

async fn refuse_envoy_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if is_envoy_only(request.uri().path()) {
        return error_response(
            StatusCode::NOT_FOUND,
            "this endpoint is served to Envoy only, on the Envoy-facing listener (--envoy-listen, mutual TLS)",
        );
    }
    next.run(request).await
}

fn build_app(state: AppState, refuse_envoy_paths: bool) -> Router {
    let (router, mut doc) = api(&state).split_for_parts();
    let router = if refuse_envoy_paths {
        // The document describes what this listener answers: not the paths it refuses.
        doc.paths.paths.retain(|path, _| !is_envoy_only(path));
        router.layer(axum::middleware::from_fn(refuse_envoy_only))
    } else {
        router
    };
    let doc = http::openapi::Document(Arc::new(doc.to_pretty_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot encode the OpenAPI document");
        String::from("{}")
    })));
    let max_body = state.config().limits.max_body_bytes;
    router
        .layer(axum::Extension(doc))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::layer,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::limits::bounded_request,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::metrics::count_refusals,
        ))
        .layer(axum::middleware::map_response(security_headers::secure))
        .with_state(state)
}

/// Every route of the HTTP API with its OpenAPI description (`http/openapi.rs`): the routes this
/// configuration serves, and nothing else.
pub fn api(state: &AppState) -> OpenApiRouter<AppState> {
    let mut router = http::openapi::router()
        .merge(health::router())
        .merge(flow::router(state))
        .merge(http::sign_in::router(state))
        .merge(http::capabilities::router(state))
        .merge(http::renew::router(state))
        .merge(http::exchange::router(state))
        .merge(http::wake::router(state))
        .merge(api_tokens::router())
        .merge(http::me::router())
        .merge(http::setup::router())
        .merge(http::session::router())
        .merge(admin::router(state.clone()));
    if state.config().dev_mode {
        router = router.merge(http::dev_login::dev_router());
    }
    if state.config().metrics_listen.is_none() {
        router = router.merge(http::metrics::router());
    }
    router
}

/// `GET /metrics` alone, for `--metrics-listen`: every other path is a 404.
pub fn metrics_app(state: AppState) -> Router {
    Router::from(http::metrics::router())
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers::secure))
        .with_state(state)
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method; see the API reference in control-plane/README.md",
    )
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "no such endpoint; see the API reference in control-plane/README.md",
    )
}
