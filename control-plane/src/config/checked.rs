//! The checked configuration the server runs with ([`Config`]) and the value types of its
//! settings, as [`Settings::resolve`] builds them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::ValueEnum;
use podgate_protocol::host::{HostTemplate, PublicHosts};
use serde::Deserialize;

use crate::config::{limits, ConfigError, Need, Settings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningAlg {
    /// Ed25519 (JWS `EdDSA`), the default: Envoys only ever hold public keys.
    Eddsa,
    /// ECDSA P-256 (JWS `ES256`).
    Es256,
    /// HMAC-SHA256 with a random 256-bit secret (JWS `HS256`); the filter then holds the secret.
    Hs256,
}

impl SigningAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::Eddsa => "EdDSA",
            SigningAlg::Es256 => "ES256",
            SigningAlg::Hs256 => "HS256",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The checked configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where `GET /metrics` is served alone; `None`: on `listen`, with the API.
    pub metrics_listen: Option<SocketAddr>,
    pub database_url: String,
    pub database_max_connections: u32,
    pub admin_token: Option<String>,
    /// What the filter sends to renew browser capabilities (`http/renew.rs`).
    pub renew_secret: String,
    /// Also accepted from the filter: the secrets derived from the previous key-encryption
    /// keys, while a rotation rolls through the control planes (empty when one is given).
    pub previous_renew_secrets: Vec<String>,
    pub dev_mode: bool,
    pub issuer: String,
    pub public_scheme: Scheme,
    pub domain: String,
    pub host_template: HostTemplate,
    pub upstream_host_template: HostTemplate,
    /// The templates as configured (with `{domain}`), for the filter's configuration.
    pub host_template_source: String,
    pub upstream_host_template_source: String,
    /// Pod hosts and service hosts, as tokens name them (`aud`).
    pub public_hosts: PublicHosts,
    /// The service host template as configured (with `{domain}`).
    pub service_host_template_source: String,
    pub pod_public_port: Option<u16>,
    pub login_url: Option<String>,
    pub capability_lifetime: u64,
    /// Lifetime of the identity assertion the filter signs; 0: off.
    pub assertion_lifetime: u64,
    pub ticket_lifetime: u64,
    pub session_lifetime: u64,
    pub cookie_samesite: SameSite,
    pub signing_alg: SigningAlg,
    pub key_overlap: u64,
    /// The operator's key-encryption keys: signing keys are stored sealed under the current one.
    pub key_encryption: crate::key_encryption::KeyEncryption,
    pub log_format: LogFormat,
    /// Identity verifiers (OIDC issuers, the main app's session), CORS origins, client address.
    pub identity: crate::config::idp::IdentityConfig,
    /// Mutual TLS with Envoy: the ADS server and the Envoy-facing HTTP listener require a client
    /// certificate; `None`: plaintext, and no Envoy-facing listener.
    pub envoy_tls: Option<EnvoyTls>,
    /// The ADS server, `None` when `--xds-listen off`.
    pub xds: Option<XdsConfig>,
    /// Longest wait before a new capability key signs (publish before sign).
    pub key_publish_delay: u64,
    /// How long a new capability key's assertion key is published before it signs.
    pub assertion_key_delay: u64,
    /// Per-client rate limits and request size bounds.
    pub limits: limits::LimitsConfig,
    /// The `podgate-cli` binaries of `--cli-dir`, hashed at start (none without it).
    pub cli_binaries: Vec<crate::config::cli_dir::CliBinary>,
    /// The operator's hook that starts stopped pods (`wake`), `None` when not configured.
    pub start_hook: Option<StartHook>,
    /// Request-rate limits the filter applies (`podgate_protocol::rate`), `None`: none.
    pub edge_rates: Option<podgate_protocol::rate::RateLimits>,
    /// Open-stream limits the filter applies (`podgate_protocol::concurrent`), `None`: none.
    pub edge_concurrency: Option<podgate_protocol::concurrent::ConcurrencyLimits>,
}

/// The start hook: `POST url` (with `{pod}` replaced) carrying `secret` in
/// `podgate-start-secret`, at most once per pod every `interval_secs`.
#[derive(Clone)]
pub struct StartHook {
    pub url: String,
    pub secret: String,
    pub interval_secs: u64,
}

impl std::fmt::Debug for StartHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartHook")
            .field("url", &self.url)
            .field("interval_secs", &self.interval_secs)
            .finish_non_exhaustive()
    }
}

/// Mutual TLS with Envoy (`tls.rs`).
#[derive(Debug, Clone)]
pub struct EnvoyTls {
    /// The Envoy-facing HTTP listener (mutual TLS).
    pub listen: SocketAddr,
    pub files: crate::tls::TlsFiles,
}

/// The ADS server's settings.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    pub listen: SocketAddr,
    /// Absolute path of the filter's .wasm, named in the ECDS config Envoy receives.
    pub filter_wasm: PathBuf,
    /// Seconds between safety-net rebuilds.
    pub resync_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
    pub fn is_https(self) -> bool {
        self == Scheme::Https
    }
}

impl Config {
    /// The public origin of a pod host, e.g. `http://localhost-8726-pod-myslug.localhost:10000`.
    pub fn pod_origin(&self, host: &str) -> String {
        match self.pod_public_port {
            Some(p) => format!("{}://{host}:{p}", self.public_scheme.as_str()),
            None => format!("{}://{host}", self.public_scheme.as_str()),
        }
    }

    /// A configuration for tests and examples: dev mode, defaults everywhere, a fixed admin token.
    pub fn for_tests(database_url: &str) -> Result<Config, ConfigError> {
        Settings {
            database_url: Some(database_url.to_owned()),
            admin_token: Some("test-admin-token-0123456789abcdef0123".to_owned()),
            dev_mode: Some(true),
            xds_listen: Some("off".to_owned()),
            ..Settings::default()
        }
        .resolve(Need::Server)
    }

    /// How long a rotated-out key keeps verifying: the overlap, plus the publish delay during
    /// which it may still sign.
    pub fn rotation_overlap(&self) -> i64 {
        i64::try_from(self.key_overlap.saturating_add(self.key_publish_delay)).unwrap_or(i64::MAX)
    }
}
