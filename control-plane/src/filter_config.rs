//! What Envoy's podgate filter receives: issuer, host templates, cookie name, auth URL, the
//! capability verifying keys and the pod directory, built from the database and the key ring.
//! The xDS server pushes it over ECDS; `GET /v1/filter-config` shows it to admins (it holds the
//! HMAC secret when capabilities are HS256).
//!
//! `revoked_jti` lists the unexpired capabilities minted with a revoked API token, so Envoy
//! refuses them at once instead of at their expiry; expired ones drop out at the next build.
//! `cutoffs` lists the sessions that signed out and the users who lost access (`cuts.rs`).
//! `renewal` tells the filter where and when to renew browser capabilities (`renew.rs`), with
//! the renewal secret, which admins see here too. `assertion` carries the private identity
//! assertion key the filter signs with (`keys::assertion_key`), which admins see here too.
//! `services` carries each service's credential, opened from its sealed form (`services.rs`):
//! Envoy gets it over ECDS; `GET /v1/filter-config` shows it redacted. A service that has a
//! credential but none usable now is named in `services_without_credential` instead, which the
//! filter answers `502` without forwarding.

use std::collections::HashMap;

use podgate_protocol::assertion::Assertion;
use podgate_protocol::concurrent::ConcurrencyLimits;
use podgate_protocol::config::{FilterConfig, PodEntry};
use podgate_protocol::cookie::DEFAULT_COOKIE_NAME;
use podgate_protocol::rate::{Rate, RateLimits};
use podgate_protocol::renewal::{Renewal, RENEW_PATH};
use podgate_protocol::token::DEFAULT_LEEWAY_SECS;

use crate::config::{Config, MAX_CAPABILITY_LIFETIME};
use crate::keys::KeyRing;
use crate::service_oauth::ServiceTokens;
use crate::services::Published;
use crate::store::{now_unix, Db};

/// The ORIGINAL_DST cluster shared by every pod (the filter sets the pod's `ip:port` header).
pub const PODS_CLUSTER: &str = "podgate_pods";
/// The cluster serving `/.podgate/` on pod hosts: this control plane.
pub const CONTROL_PLANE_CLUSTER: &str = "podgate_control_plane";

/// Most revoked capability ids sent to Envoy (about 35 bytes of JSON each, 350 KB in all). Past
/// it the longest-lived are listed; the others stay valid until they expire (at most the
/// capability lifetime), and every build logs a warning.
pub const MAX_REVOKED_CAPABILITIES: usize = 10_000;

/// How long before now a token's revocation can still matter: the longest capability lifetime,
/// plus room for a mint that raced the revocation.
const REVOCATION_WINDOW_SECS: i64 = MAX_CAPABILITY_LIFETIME as i64 + 3600;

/// How long a request waits for a renewal before it goes on with the old capability.
pub const RENEW_TIMEOUT_MS: u32 = 2_000;

/// The filter renews a browser capability in the last third of its life: a browser in use
/// gets the fresh cookie well before `exp`, one renewal per lifetime.
pub fn renew_before_secs(capability_lifetime: u64) -> i64 {
    i64::try_from(capability_lifetime / 3)
        .unwrap_or(i64::MAX)
        .max(1)
}

/// `host:port`, with brackets around IPv6 addresses.
pub fn upstream_address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `scheme://authority` of an absolute URL.
pub(crate) fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url.get(after_scheme..).and_then(|rest| rest.find('/')) {
        Some(slash) => url.get(..after_scheme + slash).unwrap_or(url),
        None => url,
    }
}

/// Builds the filter configuration in force now, with the capability keys of `ring`, and no
/// service OAuth token (such services get their fallback credential, or are named in
/// `services_without_credential`).
pub async fn build(db: &Db, config: &Config, ring: &KeyRing) -> Result<FilterConfig, sqlx::Error> {
    build_with_tokens(db, config, ring, &ServiceTokens::default()).await
}

/// Builds the filter configuration in force now, with the capability keys of `ring` and the
/// services' OAuth tokens of `tokens`.
pub async fn build_with_tokens(
    db: &Db,
    config: &Config,
    ring: &KeyRing,
    tokens: &ServiceTokens,
) -> Result<FilterConfig, sqlx::Error> {
    // A slug or service name stored before a rule that refuses it now, or under other host
    // templates, is left out (its host answers as unknown, with a warning here): the filter
    // refuses a configuration holding one, so every Envoy would keep its last configuration and
    // miss every revocation, cut and new pod until it is gone.
    crate::repeats::round();
    let check_slug = config.public_hosts.pods().slug_checker();
    let mut pods = HashMap::new();
    for (pod, server_address) in db.pod_directory().await? {
        if let Err(e) = check_slug(&pod.slug) {
            if crate::repeats::due(&format!("pod {} left out: {e}", pod.slug)) {
                tracing::warn!(pod = %pod.slug, "pod left out of Envoy's configuration: its slug is not valid under the host template ({e}); rename the pod (delete and create it) or change the template");
            }
            continue;
        }
        pods.insert(
            pod.slug.clone(),
            PodEntry {
                status: pod.status,
                cluster: PODS_CLUSTER.to_owned(),
                address: server_address.map(|a| upstream_address(&a, pod.nginx_port)),
            },
        );
    }
    let (rate_limits, concurrency_limits) = edge_limits(db, config).await?;
    let mut services = HashMap::new();
    let mut services_without_credential = Vec::new();
    for row in db.list_services().await? {
        if let Err(e) = config.public_hosts.check_service_name(&row.name) {
            if crate::repeats::due(&format!("service {} left out: {e}", row.name)) {
                tracing::warn!(service = %row.name, "service left out of Envoy's configuration: its name is not valid under the service host template ({e}); rename the service (delete and create it) or change the template");
            }
            continue;
        }
        match crate::services::directory_entry(&config.key_encryption, tokens, &row) {
            Published::Entry(entry) => {
                services.insert(row.name.clone(), *entry);
            }
            Published::WithoutCredential => services_without_credential.push(row.name.clone()),
            Published::Absent => {}
        }
    }
    let revoked_jti = revoked_capabilities(db).await?;
    let cutoffs = crate::cuts::cutoffs(db).await?;
    let auth_url = format!("{}/api/proxy-auth", config.issuer);
    // The filter derives `{origin of auth_url}/auth/logout` by itself; it is sent only when
    // the issuer has a path, so that configurations stay readable by filters that predate it.
    let logout_url = format!("{}/auth/logout", config.issuer);
    let logout_url =
        (logout_url != format!("{}/auth/logout", origin(&auth_url))).then_some(logout_url);
    Ok(FilterConfig {
        issuer: config.issuer.clone(),
        domain: config.domain.clone(),
        public_host_template: config.host_template_source.clone(),
        upstream_host_template: config.upstream_host_template_source.clone(),
        // Sent only with services, so that a configuration without any stays one an older
        // filter takes.
        service_host_template: (!services.is_empty() || !services_without_credential.is_empty())
            .then(|| config.service_host_template_source.clone()),
        public_scheme: config.public_scheme.as_str().to_owned(),
        cookie_name: DEFAULT_COOKIE_NAME.to_owned(),
        auth_url,
        control_plane_cluster: CONTROL_PLANE_CLUSTER.to_owned(),
        keys: ring.capability_keys.clone(),
        pods,
        services,
        services_without_credential,
        revoked_jti,
        cutoffs,
        logout_url,
        renewal: Some(Renewal {
            // Envoy calls the control plane through its cluster, where every route is at the
            // root (as the exchange's and the reserved paths' are), even when browsers reach
            // it under the issuer's path through the app's proxy.
            url: format!("{}{RENEW_PATH}", origin(&config.issuer)),
            secret: config.renew_secret.clone(),
            before_secs: renew_before_secs(config.capability_lifetime),
            timeout_ms: RENEW_TIMEOUT_MS,
            // A browser's cookie lives as long as its session (`http/cookies.rs`).
            lapsed_secs: i64::try_from(config.session_lifetime)
                .unwrap_or(i64::MAX)
                .min(podgate_protocol::renewal::MAX_LAPSED_SECS),
        }),
        wake: config.start_hook.is_some(),
        rate_limits,
        concurrency_limits,
        assertion: (config.assertion_lifetime > 0).then(|| Assertion {
            key: ring.assertion_signer.to_private_jwk(),
            lifetime_secs: config.assertion_lifetime as i64,
        }),
        leeway_secs: DEFAULT_LEEWAY_SECS,
        max_capability_lifetime_secs: config.capability_lifetime as i64,
        token_cache_entries: 4096,
    })
}

/// The filter's limits: the global ones of the flags, with each pod's own (`pod_limits`, set
/// through the admin API) in their `pods`. Each is left out when nothing is limited.
async fn edge_limits(
    db: &Db,
    config: &Config,
) -> Result<(Option<RateLimits>, Option<ConcurrencyLimits>), sqlx::Error> {
    let mut rates = config.edge_rates.clone().unwrap_or_default();
    let mut concurrency = config.edge_concurrency.clone().unwrap_or_default();
    for (slug, limits) in db.all_pod_limits().await? {
        if let Some(rate) = limits.rate {
            let rate = Rate {
                per_second: rate.per_second,
                burst: rate.burst,
            };
            rates.pods.insert(slug.clone(), rate);
        }
        if let Some(concurrent) = limits.concurrent {
            concurrency.pods.insert(slug, concurrent);
        }
    }
    let rates = (rates != RateLimits::default()).then_some(rates);
    let concurrency = (concurrency != ConcurrencyLimits::default()).then_some(concurrency);
    Ok((rates, concurrency))
}

/// The unexpired capabilities minted with a revoked API token, at most
/// [`MAX_REVOKED_CAPABILITIES`].
async fn revoked_capabilities(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    let now = now_unix();
    let limit = MAX_REVOKED_CAPABILITIES as i64 + 1;
    let mut revoked = db
        .revoked_capabilities(now, now - REVOCATION_WINDOW_SECS, limit)
        .await?;
    let cut_short = revoked.len() > MAX_REVOKED_CAPABILITIES;
    revoked.truncate(MAX_REVOKED_CAPABILITIES);
    if cut_short && crate::repeats::due("revocations cut short") {
        tracing::warn!(
            listed = MAX_REVOKED_CAPABILITIES,
            "more unexpired capabilities of revoked API tokens than Envoy is sent; the shortest-lived stay valid until they expire (lower --capability-lifetime-secs to shorten that)"
        );
    }
    Ok(revoked)
}
