//! The filter's configuration: what the control plane pushes (ECDS) or a bootstrap embeds, and
//! its compiled, indexed form that every request shares.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::assertion::{Assertion, CompiledAssertion};
use crate::concurrent::ConcurrencyLimits;
use crate::cookie;
use crate::cutoff::{CompiledCutoffs, Cutoffs};
use crate::host::{
    HostTemplate, PublicHosts, ServiceTemplate, TemplateError, DEFAULT_PUBLIC_TEMPLATE,
    DEFAULT_UPSTREAM_TEMPLATE,
};
use crate::rate::RateLimits;
use crate::renewal::{CompiledRenewal, InForce, Renewal};
use crate::set_cookie::ReservedNames;
use crate::token::{
    KeyError, KeySet, TokenKind, Verified, Verifier, DEFAULT_LEEWAY_SECS,
    DEFAULT_MAX_CAPABILITY_LIFETIME_SECS,
};

/// Header the filter sets to pick the upstream cluster (route `cluster_header`).
pub const CLUSTER_HEADER: &str = "x-podgate-cluster";
/// Header the filter sets with the pod's `address:port` for an original-destination cluster.
pub const UPSTREAM_HEADER: &str = "x-podgate-upstream";
/// The routing headers the route configuration removes: every Envoy config podgate ships lists
/// them in its route configuration's `request_headers_to_remove`, which the router applies
/// after it chose the route's cluster (`CLUSTER_HEADER`), so neither pods nor the control plane
/// receive them. `UPSTREAM_HEADER` is not here: the original-destination cluster reads it when
/// it picks the host, after those removals, so that cluster's upstream filter removes it
/// (`podgate_xds::builders::original_dst_cluster`).
pub const ROUTE_HEADERS: [&str; 1] = [CLUSTER_HEADER];
/// Identity headers the pod receives.
pub const USER_HEADER: &str = "x-podgate-user";
pub const EMAIL_HEADER: &str = "x-podgate-email";
/// Every header whose name starts with this is ours: client copies are removed.
pub const HEADER_PREFIX: &str = "x-podgate-";
/// The reserved path prefix on pod hosts, served by the control plane.
pub const RESERVED_PREFIX: &str = "/.podgate/";
/// Client copies of forwarding headers that Envoy removes before a request reaches a pod or the
/// control plane: every Envoy config podgate ships lists them in its route configuration's
/// `request_headers_to_remove`, and the test and bench bootstraps are built from this list.
/// The forwarding headers that do arrive are set at the edge: `X-Forwarded-For` (overwritten
/// with the TCP peer's address alone) and `X-Forwarded-Proto` by Envoy, `X-Forwarded-Host` by
/// the filter.
pub const CLIENT_FORWARDING_HEADERS: [&str; 27] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-protocol",
    "x-original-host",
    "x-original-url",
    "x-original-uri",
    "x-original-forwarded-for",
    "x-rewrite-url",
    "x-host",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-originating-ip",
    "client-ip",
    "front-end-https",
    "x-url-scheme",
];

/// The lifecycle states a pod may be in; only `Running` is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodStatus {
    Running,
    Starting,
    Stopping,
    Stopped,
    Error,
}

impl PodStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            PodStatus::Running => "running",
            PodStatus::Starting => "starting",
            PodStatus::Stopping => "stopping",
            PodStatus::Stopped => "stopped",
            PodStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => PodStatus::Running,
            "starting" => PodStatus::Starting,
            "stopping" => PodStatus::Stopping,
            "stopped" => PodStatus::Stopped,
            "error" => PodStatus::Error,
            _ => return None,
        })
    }
}

/// One pod in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEntry {
    pub status: PodStatus,
    /// The Envoy cluster that reaches the pod's nginx.
    pub cluster: String,
    /// `ip:port` of the pod's nginx, for an original-destination cluster. When present the
    /// filter sets it in `UPSTREAM_HEADER` and no cluster header: the request goes by the pods'
    /// route, to the original-destination cluster the Envoy configuration names (`cluster` is
    /// then not used). When absent, the cluster header names `cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// One published upstream API (a service) in the directory. Like a pod entry, it ignores
/// fields it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// The Envoy cluster that reaches the upstream (with its TLS settings).
    pub cluster: String,
    /// The `Host` the upstream receives: its URL's authority.
    pub host: String,
    /// The credential the filter sets on every forwarded request, replacing the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<InjectedHeader>,
    /// Other headers that carry one of the service's credentials (the fallback's while an
    /// OAuth token is in force, or the token's while the fallback is): the filter removes the
    /// caller's copies, as it replaces the caller's copy of `credential`. Left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strip_headers: Vec<String>,
    /// The service is reached per resource (`resource`): the pattern of its resource paths,
    /// e.g. `/sessions/{id}`. A capability for it then names one resource, and paths outside
    /// the pattern are refused. Left out when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_path: Option<String>,
    /// When `credential` stops being usable (unix seconds): an OAuth access token's expiry.
    /// From then on the filter sets `fallback_credential` instead, or answers `502` without
    /// one, so that Envoy never sends an expired token, even while no control plane is there
    /// to push the next one. Left out for a credential that does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_expires_at: Option<i64>,
    /// The credential set once `credential` has expired (the service's static fallback beside
    /// its OAuth token). Left out when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_credential: Option<InjectedHeader>,
}

/// The credential a service's forward sets at some moment ([`ServiceEntry::credential_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialAt<'a> {
    /// This header, until that time (unix seconds) when it expires.
    Set(&'a InjectedHeader, Option<i64>),
    /// The service takes no credential.
    NotNeeded,
    /// Its credential has expired and it has no fallback: nothing may be forwarded.
    Expired,
}

impl ServiceEntry {
    /// The credential the filter sets at `now` (unix seconds): `credential` until
    /// `credential_expires_at`, then `fallback_credential`.
    pub fn credential_at(&self, now: i64) -> CredentialAt<'_> {
        match (&self.credential, self.credential_expires_at) {
            (None, _) => CredentialAt::NotNeeded,
            (Some(_), Some(exp)) if now >= exp => match &self.fallback_credential {
                Some(fallback) => CredentialAt::Set(fallback, None),
                None => CredentialAt::Expired,
            },
            (Some(c), exp) => CredentialAt::Set(c, exp),
        }
    }
}

/// A header the filter sets on the upstream request: `name: value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectedHeader {
    /// Lowercase header name, e.g. `authorization` or `x-api-key`.
    pub name: String,
    pub value: SecretValue,
}

/// A secret header value: `Debug` never prints it, so no log line carries it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(pub String);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(..)")
    }
}

/// Header names a service credential may not use: pseudo-headers and routing (checked apart),
/// hop-by-hop and framing headers, cookies, and ours.
const FORBIDDEN_CREDENTIAL_HEADERS: [&str; 11] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
    "cookie",
    "podgate-token",
    "x-forwarded-host",
];

/// Whether `name` may carry a service's credential: a lowercase RFC 9110 token that is not a
/// pseudo-header, a hop-by-hop or framing header, a cookie, or one of ours.
pub fn credential_header_allowed(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_!#$%&'*+.^`|~".contains(&b)
        })
        && !name.starts_with(HEADER_PREFIX)
        && !FORBIDDEN_CREDENTIAL_HEADERS.contains(&name)
}

/// Whether a header the filter sets on a request reaches the upstream: Envoy overwrites
/// `X-Forwarded-For` and `X-Forwarded-Proto` and removes `CLIENT_FORWARDING_HEADERS` after the
/// filter runs, so a credential there would never arrive. Checked where admins set one (a
/// service stored before keeps working as it did).
pub fn header_reaches_upstream(name: &str) -> bool {
    !matches!(name, "x-forwarded-for" | "x-forwarded-proto")
        && !CLIENT_FORWARDING_HEADERS.contains(&name)
}

/// Whether `value` may be a header value: visible ASCII and inner spaces, no line breaks.
pub fn credential_value_allowed(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 8192
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && !value.starts_with(' ')
        && !value.ends_with(' ')
}

fn default_public_template() -> String {
    DEFAULT_PUBLIC_TEMPLATE.to_owned()
}
fn default_upstream_template() -> String {
    DEFAULT_UPSTREAM_TEMPLATE.to_owned()
}
fn default_cookie_name() -> String {
    cookie::DEFAULT_COOKIE_NAME.to_owned()
}
fn default_scheme() -> String {
    "http".to_owned()
}
fn default_leeway() -> i64 {
    DEFAULT_LEEWAY_SECS
}
fn default_max_lifetime() -> i64 {
    DEFAULT_MAX_CAPABILITY_LIFETIME_SECS
}
fn default_cache_entries() -> usize {
    4096
}
fn default_control_plane_cluster() -> String {
    "podgate_control_plane".to_owned()
}

/// The filter's configuration as JSON on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// `iss` of every capability.
    pub issuer: String,
    /// Base domain the pod hosts live under.
    pub domain: String,
    #[serde(default = "default_public_template")]
    pub public_host_template: String,
    #[serde(default = "default_upstream_template")]
    pub upstream_host_template: String,
    /// The public host of a service (`{name}` and `.{domain}`); no services without it. Left
    /// out when absent, so a configuration without services is one an older filter takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_host_template: Option<String>,
    /// `http` or `https`: decides the cookie prefix and the pod's own origin.
    #[serde(default = "default_scheme")]
    pub public_scheme: String,
    /// Base cookie name; `__Host-` is prefixed over https.
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// Where browser page loads without a valid capability are sent
    /// (e.g. `http://127.0.0.1:8080/api/proxy-auth`).
    pub auth_url: String,
    /// Cluster serving `/.podgate/` on pod hosts.
    #[serde(default = "default_control_plane_cluster")]
    pub control_plane_cluster: String,
    /// Capability verifying keys (JWKS shape).
    pub keys: KeySet,
    /// slug → pod.
    #[serde(default, deserialize_with = "pods_in_one_table")]
    pub pods: HashMap<String, PodEntry>,
    /// name → service (published upstream APIs); left out when empty.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub services: HashMap<String, ServiceEntry>,
    /// Services published without a usable credential now (an OAuth token that cannot be had
    /// and no fallback): a request for one is answered `502` and forwarded nowhere. Kept apart
    /// from `services`, whose entries an older filter would forward, and left out when empty,
    /// so a configuration without such services is one an older filter takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services_without_credential: Vec<String>,
    /// Capability ids revoked before their expiry.
    #[serde(default)]
    pub revoked_jti: Vec<String>,
    /// Sessions ended and access lost: capabilities refused before their expiry (`cutoff`).
    /// Left out when empty, so a configuration without cuts is one an older filter takes.
    #[serde(default, skip_serializing_if = "Cutoffs::is_empty")]
    pub cutoffs: Cutoffs,
    /// Where `/.podgate/logout` on a pod host sends the browser once it cleared the pod
    /// host's cookie: the control plane's `/auth/logout`. Derived from `auth_url`'s origin
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logout_url: Option<String>,
    /// Renewing browser capabilities at the edge (`renewal`). Left out when off, so a
    /// configuration without it is one an older filter takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<Renewal>,
    /// The control plane can start stopped pods (`wake`): a browser loading a page of one asks
    /// it to, through the renewal's call, and gets a page that reloads itself. Needs `renewal`.
    /// Left out when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wake: bool,
    /// Request-rate limits per user and per pod (`rate`); left out when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    /// Limits on the streams open at once per user and per pod (`concurrent`); left out when
    /// there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limits: Option<ConcurrencyLimits>,
    /// Signing the identity assertion forwarded requests carry to pods (`assertion`). Left
    /// out when off, so a configuration without it is one an older filter takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertion: Option<Assertion>,
    #[serde(default = "default_leeway")]
    pub leeway_secs: i64,
    #[serde(default = "default_max_lifetime")]
    pub max_capability_lifetime_secs: i64,
    /// Size of the per-worker verified-token cache (0 disables it).
    #[serde(default = "default_cache_entries")]
    pub token_cache_entries: usize,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration is not valid JSON for the podgate filter: {0}")]
    Json(String),
    #[error("public_host_template: {0}")]
    PublicTemplate(TemplateError),
    #[error("upstream_host_template: {0}")]
    UpstreamTemplate(TemplateError),
    #[error("service_host_template: {0}")]
    ServiceTemplate(TemplateError),
    #[error("keys: {0}")]
    Keys(KeyError),
    #[error("{field}: {why}")]
    Field { field: &'static str, why: String },
}

/// The compiled configuration: templates parsed, keys decoded, lookups indexed.
#[derive(Debug)]
pub struct CompiledConfig {
    /// Pod hosts and service hosts.
    pub public_hosts: PublicHosts,
    pub upstream_hosts: HostTemplate,
    pub verifier: Verifier,
    pub cookie_name: String,
    /// Cookie names a pod may never set (`set_cookie`).
    pub reserved_cookies: ReservedNames,
    pub https: bool,
    pub auth_url: String,
    pub control_plane_cluster: String,
    pub pods: HashMap<String, PodEntry>,
    /// name → service.
    pub services: HashMap<String, ServiceEntry>,
    /// Services with no usable credential now: answered `502`, never forwarded.
    pub services_without_credential: HashSet<String>,
    pub revoked: HashSet<String>,
    /// Sessions ended and access lost (`cutoff`).
    pub cutoffs: CompiledCutoffs,
    /// The control plane's sign-out URL (`/.podgate/logout` redirects there).
    pub logout_url: String,
    /// Renewing browser capabilities (`renewal`); `None`: off.
    pub renewal: Option<CompiledRenewal>,
    /// Stopped pods can be started (`wake`); only with `renewal`, whose call it uses.
    pub wake: bool,
    /// Request-rate limits (`rate`); `None`: none.
    pub rate_limits: Option<RateLimits>,
    /// Limits on open streams (`concurrent`); `None`: none.
    pub concurrency_limits: Option<ConcurrencyLimits>,
    /// Signing identity assertions (`assertion`); `None`: off.
    pub assertion: Option<CompiledAssertion>,
    pub token_cache_entries: usize,
    /// This configuration as written, but for the lists that change as pods and sessions come
    /// and go (pods, revocations, cuts; compared in their compiled form): two configurations
    /// with the same `others` decide alike for every request but those to a pod whose entry
    /// differs and those on a capability one of them withdraws (`Gate::configure` keeps the
    /// other decisions).
    others: Settings,
}

/// A configuration without its pods, revocations and cuts, compared whole. Its `Debug` shows
/// nothing of it: it holds the renewal secret, the assertion key and the services' credentials.
#[derive(PartialEq, Eq)]
struct Settings(FilterConfig);

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Settings(..)")
    }
}

fn field(field: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        why: why.into(),
    }
}

fn is_header_value_safe(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

/// An absolute http(s) URL without query or fragment, safe in a header value.
fn is_absolute_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && !url.contains('?')
        && !url.contains('#')
        && is_header_value_safe(url)
}

/// `scheme://authority` of an absolute URL that `is_absolute_url` accepted.
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url.get(after_scheme..).and_then(|rest| rest.find('/')) {
        Some(slash) => url.get(..after_scheme + slash).unwrap_or(url),
        None => url,
    }
}

impl FilterConfig {
    /// Parses and compiles a configuration from its JSON bytes.
    pub fn compile_json(bytes: &[u8]) -> Result<CompiledConfig, ConfigError> {
        // UTF-8 checked once here, not string by string as `from_slice` does: every push makes
        // every worker read the whole directory (`BENCHMARKS.md`, "Scale").
        let text =
            std::str::from_utf8(bytes).map_err(|e| ConfigError::Json(format!("not UTF-8: {e}")))?;
        let config: FilterConfig =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        config.compile()
    }

    /// Validates every field and builds the indexed form.
    pub fn compile(mut self) -> Result<CompiledConfig, ConfigError> {
        let pods = std::mem::take(&mut self.pods);
        let revoked_jti = std::mem::take(&mut self.revoked_jti);
        let cutoffs = std::mem::take(&mut self.cutoffs);
        let others = Settings(self.clone());
        let pod_hosts = HostTemplate::new(&self.public_host_template, &self.domain)
            .map_err(ConfigError::PublicTemplate)?;
        let service_hosts = self
            .service_host_template
            .as_deref()
            .map(|t| ServiceTemplate::new(t, &self.domain))
            .transpose()
            .map_err(ConfigError::ServiceTemplate)?;
        let public_hosts = PublicHosts::new(pod_hosts, service_hosts);
        let upstream_hosts = HostTemplate::new(&self.upstream_host_template, &self.domain)
            .map_err(ConfigError::UpstreamTemplate)?;
        let https = match self.public_scheme.as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(field("public_scheme", "must be \"http\" or \"https\"")),
        };
        if !cookie::valid_cookie_name(&self.cookie_name) {
            return Err(field("cookie_name", "must be a non-empty RFC 6265 token"));
        }
        if self.issuer.is_empty() {
            return Err(field("issuer", "must be the control plane's public URL"));
        }
        if !is_absolute_url(&self.auth_url) {
            return Err(field(
                "auth_url",
                "must be an absolute http(s) URL without query or fragment",
            ));
        }
        let logout_url = match self.logout_url {
            Some(url) => {
                if !is_absolute_url(&url) {
                    return Err(field(
                        "logout_url",
                        "must be an absolute http(s) URL without query or fragment",
                    ));
                }
                url
            }
            None => format!("{}/auth/logout", origin_of(&self.auth_url)),
        };
        let cutoffs = cutoffs
            .compile()
            .map_err(|e| field("cutoffs", e.to_string()))?;
        let renewal = self
            .renewal
            .map(Renewal::compile)
            .transpose()
            .map_err(|e| field("renewal", e))?;
        if let Some(limits) = &self.rate_limits {
            limits.check().map_err(|e| field("rate_limits", e))?;
        }
        if let Some(limits) = &self.concurrency_limits {
            limits.check().map_err(|e| field("concurrency_limits", e))?;
        }
        let assertion = self
            .assertion
            .map(Assertion::compile)
            .transpose()
            .map_err(|e| field("assertion", e))?;
        if !(0..=300).contains(&self.leeway_secs) {
            return Err(field("leeway_secs", "must be between 0 and 300"));
        }
        if self.max_capability_lifetime_secs < 1 {
            return Err(field("max_capability_lifetime_secs", "must be positive"));
        }
        if self.token_cache_entries > 1 << 20 {
            return Err(field("token_cache_entries", "must be at most 1048576"));
        }
        if self.control_plane_cluster.is_empty()
            || !is_header_value_safe(&self.control_plane_cluster)
        {
            return Err(field("control_plane_cluster", "must be a cluster name"));
        }
        for (name, service) in &self.services {
            if public_hosts.check_service_name(name).is_err() {
                return Err(field(
                    "services",
                    format!("{name:?} is not a valid service name"),
                ));
            }
            if service.cluster.is_empty() || !is_header_value_safe(&service.cluster) {
                return Err(field(
                    "services",
                    format!("{name:?} has an invalid cluster name"),
                ));
            }
            if service.host.is_empty() || !is_header_value_safe(&service.host) {
                return Err(field("services", format!("{name:?} has an invalid host")));
            }
            if let Some(pattern) = &service.resource_path {
                if let Err(e) = crate::resource::check_pattern(pattern) {
                    return Err(field(
                        "services",
                        format!("{name:?} has an invalid resource_path: {e}"),
                    ));
                }
            }
            for credential in service
                .credential
                .iter()
                .chain(&service.fallback_credential)
            {
                // The value is never named in the message.
                if !credential_header_allowed(&credential.name)
                    || !credential_value_allowed(&credential.value.0)
                {
                    return Err(field(
                        "services",
                        format!("{name:?} has an invalid credential header"),
                    ));
                }
            }
            if let Some(bad) = service
                .strip_headers
                .iter()
                .find(|h| !credential_header_allowed(h))
            {
                return Err(field(
                    "services",
                    format!("{name:?} names {bad:?} in strip_headers, not a credential header"),
                ));
            }
        }
        for name in &self.services_without_credential {
            if public_hosts.check_service_name(name).is_err() {
                return Err(field(
                    "services_without_credential",
                    format!("{name:?} is not a valid service name"),
                ));
            }
            if self.services.contains_key(name) {
                return Err(field(
                    "services_without_credential",
                    format!("{name:?} is also in services"),
                ));
            }
        }
        let check_slug = public_hosts.pods().slug_checker();
        for (slug, pod) in &pods {
            if check_slug(slug).is_err() {
                return Err(field("pods", format!("{slug:?} is not a valid pod slug")));
            }
            if pod.cluster.is_empty() || !is_header_value_safe(&pod.cluster) {
                return Err(field(
                    "pods",
                    format!("{slug:?} has an invalid cluster name"),
                ));
            }
            if let Some(addr) = &pod.address {
                if addr.is_empty() || !is_header_value_safe(addr) || !addr.contains(':') {
                    return Err(field("pods", format!("{slug:?} address must be ip:port")));
                }
            }
        }
        let verifier = Verifier::new(
            TokenKind::Capability,
            self.issuer,
            &self.keys,
            self.leeway_secs,
            self.max_capability_lifetime_secs,
        )
        .map_err(ConfigError::Keys)?;
        Ok(CompiledConfig {
            public_hosts,
            upstream_hosts,
            verifier,
            reserved_cookies: ReservedNames::new(&self.cookie_name),
            cookie_name: cookie::cookie_name(&self.cookie_name, https),
            https,
            auth_url: self.auth_url,
            control_plane_cluster: self.control_plane_cluster,
            pods,
            services: self.services,
            services_without_credential: self.services_without_credential.into_iter().collect(),
            revoked: revoked_jti.into_iter().collect(),
            cutoffs,
            logout_url,
            wake: self.wake && renewal.is_some(),
            rate_limits: self.rate_limits,
            concurrency_limits: self.concurrency_limits,
            renewal,
            assertion,
            token_cache_entries: self.token_cache_entries,
            others,
        })
    }
}

impl CompiledConfig {
    /// Whether `other` differs from this configuration at most in its pods and in the
    /// capabilities it [`withdraws`](Self::withdraws) (revocations and cuts): a pod's lifecycle,
    /// a sign-out, a revoked token, lost access.
    pub fn same_settings(&self, other: &CompiledConfig) -> bool {
        self.others == other.others
    }

    /// Whether this configuration refuses `capability` before its expiry: revoked, or cut off
    /// (a signed-out session, access lost).
    pub fn withdraws(&self, capability: &Verified) -> bool {
        self.in_force().withdraws(capability)
    }

    /// Whether both sign identity assertions, and alike: the same key (every JWK field, as
    /// written) and the same lifetime. An assertion signed under one is as good under the other.
    pub fn signs_assertions_as(&self, other: &CompiledConfig) -> bool {
        self.others.0.assertion.is_some() && self.others.0.assertion == other.others.0.assertion
    }

    /// What judging a renewal's answer reads from this configuration (`renewal::judge`).
    pub fn in_force(&self) -> InForce<'_> {
        InForce {
            verifier: &self.verifier,
            revoked: &self.revoked,
            cutoffs: &self.cutoffs,
            cookie_name: &self.cookie_name,
        }
    }
}

/// Reads `pods` into a table sized once: serde's own map reading grows the table as it goes
/// (JSON does not say how many entries come), hashing every slug again at each growth. As
/// there, a slug given twice keeps its last entry.
fn pods_in_one_table<'de, D>(deserializer: D) -> Result<HashMap<String, PodEntry>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Pods;
    impl<'de> serde::de::Visitor<'de> for Pods {
        type Value = HashMap<String, PodEntry>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of pod slugs to pod entries")
        }

        fn visit_map<A>(self, mut map: A) -> Result<Self::Value, A::Error>
        where
            A: serde::de::MapAccess<'de>,
        {
            let mut entries = Vec::new();
            while let Some(entry) = map.next_entry::<String, PodEntry>()? {
                entries.push(entry);
            }
            let mut pods = HashMap::with_capacity(entries.len());
            pods.extend(entries);
            Ok(pods)
        }
    }
    deserializer.deserialize_map(Pods)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "issuer": "http://127.0.0.1:8080",
            "domain": "localhost",
            "auth_url": "http://127.0.0.1:8080/api/proxy-auth",
            "keys": {"keys": []},
            "pods": {"myslug": {"status": "running", "cluster": "pod_myslug"}}
        })
    }

    fn compile(v: &serde_json::Value) -> Result<CompiledConfig, ConfigError> {
        FilterConfig::compile_json(v.to_string().as_bytes())
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = compile(&minimal()).unwrap();
        assert_eq!(c.cookie_name, "podgate_cap");
        assert!(!c.https);
        assert_eq!(
            c.public_hosts.to_string(),
            "localhost-{port}-pod-{pod}.localhost"
        );
        assert_eq!(c.pods["myslug"].status, PodStatus::Running);
        assert!(c.cutoffs.is_empty());
        assert_eq!(c.logout_url, "http://127.0.0.1:8080/auth/logout");
        let mut https = minimal();
        https["public_scheme"] = "https".into();
        assert_eq!(compile(&https).unwrap().cookie_name, "__Host-podgate_cap");
    }

    #[test]
    fn every_bad_field_is_refused_with_its_name() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("issuer", "".into(), "issuer"),
            ("domain", "Bad_Domain".into(), "public_host_template"),
            (
                "public_host_template",
                "{pod}.{domain}".into(),
                "public_host_template",
            ),
            (
                "upstream_host_template",
                "x.{domain}".into(),
                "upstream_host_template",
            ),
            ("public_scheme", "ftp".into(), "public_scheme"),
            ("cookie_name", "a b".into(), "cookie_name"),
            ("auth_url", "/relative".into(), "auth_url"),
            ("auth_url", "http://x/a?b=c".into(), "auth_url"),
            ("leeway_secs", 3600.into(), "leeway_secs"),
            ("logout_url", "/auth/logout".into(), "logout_url"),
            (
                "cutoffs",
                serde_json::json!({"sessions": [{"sid": "", "at": 1, "until": 2}]}),
                "cutoffs",
            ),
            (
                "cutoffs",
                serde_json::json!({"users": [{"sub": "u", "port": 80, "at": 1, "until": 2}]}),
                "cutoffs",
            ),
            (
                "max_capability_lifetime_secs",
                0.into(),
                "max_capability_lifetime_secs",
            ),
            (
                "pods",
                serde_json::json!({"Bad": {"status": "running", "cluster": "c"}}),
                "pods",
            ),
            (
                "pods",
                serde_json::json!({"ok": {"status": "running", "cluster": ""}}),
                "pods",
            ),
            (
                "pods",
                serde_json::json!({"ok": {"status": "zombie", "cluster": "c"}}),
                "configuration is not valid JSON",
            ),
            (
                "keys",
                serde_json::json!({"keys": [{"kty": "oct", "kid": "cap-1", "alg": "HS256", "k": "c2hvcnQ"}]}),
                "keys",
            ),
            ("surprise", true.into(), "configuration is not valid JSON"),
        ];
        for (field, value, says) in cases {
            let mut v = minimal();
            v[field] = value;
            let err = compile(&v).unwrap_err().to_string();
            assert!(err.starts_with(says), "{field}: {err}");
        }
        assert!(FilterConfig::compile_json(b"").is_err());
        assert!(FilterConfig::compile_json(b"[]").is_err());
    }

    #[test]
    fn services_without_a_credential_are_names_apart_from_the_published_ones() {
        let mut v = minimal();
        v["service_host_template"] = crate::host::DEFAULT_SERVICE_TEMPLATE.into();
        v["services_without_credential"] = serde_json::json!(["api"]);
        let c = compile(&v).unwrap();
        assert!(c.services_without_credential.contains("api"));
        v["services_without_credential"] = serde_json::json!(["Bad_Name"]);
        let err = compile(&v).unwrap_err().to_string();
        assert!(err.starts_with("services_without_credential"), "{err}");
        // The headers a service's caller copies are removed from: credential headers only.
        let mut with_strip = minimal();
        with_strip["service_host_template"] = crate::host::DEFAULT_SERVICE_TEMPLATE.into();
        with_strip["services"] = serde_json::json!({"api": {"cluster": "c", "host": "h", "strip_headers": ["x-api-key"]}});
        let c = compile(&with_strip).unwrap();
        assert_eq!(
            c.services["api"].strip_headers,
            vec!["x-api-key".to_owned()]
        );
        with_strip["services"]["api"]["strip_headers"] = serde_json::json!(["host"]);
        let err = compile(&with_strip).unwrap_err().to_string();
        assert!(err.contains("strip_headers"), "{err}");
        v["services_without_credential"] = serde_json::json!(["api"]);
        v["services"] = serde_json::json!({"api": {"cluster": "c", "host": "h"}});
        let err = compile(&v).unwrap_err().to_string();
        assert!(err.contains("also in services"), "{err}");
        // Left out of the JSON when empty.
        let plain = FilterConfig::compile_json(minimal().to_string().as_bytes()).unwrap();
        assert!(plain.services_without_credential.is_empty());
        let config: FilterConfig = serde_json::from_value(minimal()).unwrap();
        let json = serde_json::to_string(&config).unwrap();
        assert!(!json.contains("services_without_credential"), "{json}");
    }

    #[test]
    fn the_pod_directory_reads_as_serde_reads_a_map_and_refuses_what_is_not_utf8() {
        let mut v = minimal();
        let mut pods = serde_json::Map::new();
        for i in 0..300 {
            pods.insert(
                format!("p{i}"),
                serde_json::json!({"status": "stopped", "cluster": "podgate_pods",
                    "address": format!("10.0.{}.{}:80", i / 250, i % 250)}),
            );
        }
        v["pods"] = pods.clone().into();
        let expected: HashMap<String, PodEntry> = serde_json::from_value(pods.into()).unwrap();
        assert_eq!(compile(&v).unwrap().pods, expected);
        // A slug given twice keeps its last entry, as serde's own map reading does; an entry
        // that is not a pod is refused with where it is.
        let twice = minimal().to_string().replace(
            r#""pods":{"#,
            r#""pods":{"myslug":{"status":"stopped","cluster":"first"},"#,
        );
        let c = FilterConfig::compile_json(twice.as_bytes()).unwrap();
        assert_eq!(
            (c.pods.len(), c.pods["myslug"].cluster.as_str()),
            (1, "pod_myslug")
        );
        let mut bad = minimal();
        bad["pods"]["other"] = serde_json::json!(["running"]);
        let err = compile(&bad).unwrap_err().to_string();
        assert!(
            err.contains("not valid JSON") && err.contains("column"),
            "{err}"
        );
        // One byte that is not UTF-8 inside a slug: refused, and the message says so.
        let mut bytes = minimal().to_string().into_bytes();
        let at = bytes.windows(6).position(|w| w == b"myslug").unwrap();
        bytes[at] = 0xff;
        let err = FilterConfig::compile_json(&bytes).unwrap_err().to_string();
        assert!(
            err.contains("not UTF-8") && err.contains(&format!("index {at}")),
            "{err}"
        );
    }
}
