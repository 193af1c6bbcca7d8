//! Configuration: command-line flags, `PODGATE_*` environment variables and an optional TOML
//! file, in that order of precedence, checked once into a [`Config`] with a message that says
//! what is wrong and how to fix it for every bad or missing setting.

pub mod idp;
pub mod limits;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use podgate_protocol::host::HostTemplate;
use serde::Deserialize;

/// Default listen address of the HTTP API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default database: an SQLite file next to where the server runs.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://podgate.db";
/// The port Envoy listens on for pod hosts in the local stack.
pub const DEFAULT_POD_PUBLIC_PORT: u16 = 10000;
/// Capability lifetime (seconds) unless configured.
pub const DEFAULT_CAPABILITY_LIFETIME: u64 = 900;
/// Longest capability lifetime (seconds) a configuration may set.
pub const MAX_CAPABILITY_LIFETIME: u64 = 86_400;
/// Login ticket lifetime (seconds) unless configured; the protocol caps it at 60.
pub const DEFAULT_TICKET_LIFETIME: u64 = 60;
/// Control-plane session lifetime (seconds) unless configured.
pub const DEFAULT_SESSION_LIFETIME: u64 = 12 * 3600;
/// Base name of the control plane's own session cookie (on the control plane's host only).
pub const SESSION_COOKIE: &str = "podgate_session";
/// How long a rotated-out key keeps verifying, unless configured.
pub const DEFAULT_KEY_OVERLAP: u64 = 3600;
/// Default address of the ADS (xDS gRPC) server.
pub const DEFAULT_XDS_LISTEN: &str = "127.0.0.1:18000";
/// Longest wait (seconds) before a new capability key signs though not every Envoy has it.
pub const DEFAULT_KEY_PUBLISH_DELAY: u64 = 5;
/// Seconds between safety-net rebuilds of the xDS snapshot from the database.
pub const DEFAULT_XDS_RESYNC: u64 = 2;
/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;
/// Longest ticket lifetime accepted.
pub const MAX_TICKET_LIFETIME: u64 = 60;

#[derive(Debug, Parser)]
#[command(name = "podgate", version, about = "podgate control plane")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (applies migrations first).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make new ticket and capability keys active; the old ones keep verifying for the overlap
    /// window (`--key-overlap-secs`).
    Rotate,
    /// List the stored keys (kid, kind, algorithm, state, which key-encryption key encrypts
    /// them). Never prints private material.
    List,
    /// Re-encrypt every stored signing key (plaintext, or under a previous key-encryption key)
    /// under the current key-encryption key; afterwards the previous ones are no longer needed.
    Rewrap,
    /// Write a new random key-encryption key to FILE (mode 0600, never overwriting), or print it
    /// to stdout without FILE.
    GenKek {
        /// Where to write the key; it must not exist yet.
        file: Option<PathBuf>,
    },
}

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

/// Every setting, each optional here: flags and environment through clap, the TOML file through
/// serde (same names, snake_case), defaults applied in [`Settings::resolve`].
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML file with any of these settings (snake_case keys); flags and env win over it.
    #[arg(long, env = "PODGATE_CONFIG", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address the HTTP API listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "PODGATE_LISTEN", global = true)]
    pub listen: Option<String>,

    /// sqlite://FILE (created if missing, WAL) or postgres://... [default: sqlite://podgate.db].
    #[arg(long, env = "PODGATE_DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Most database connections in the pool [default: 8 for SQLite, 16 for PostgreSQL].
    #[arg(long, env = "PODGATE_DATABASE_MAX_CONNECTIONS", global = true)]
    pub database_max_connections: Option<u32>,

    /// Bearer token for the admin API under /v1/ (at least 32 characters).
    #[arg(
        long,
        env = "PODGATE_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Enable the dev login (/dev/login?user=...). Never in production.
    #[arg(long, env = "PODGATE_DEV_MODE", global = true, num_args = 0..=1, default_missing_value = "true")]
    pub dev_mode: Option<bool>,

    /// Public URL of the control plane; the `iss` of every token [default: http://LISTEN].
    #[arg(long, env = "PODGATE_ISSUER", global = true)]
    pub issuer: Option<String>,

    /// Scheme of pod hosts as browsers see them: http or https [default: http].
    #[arg(long, env = "PODGATE_PUBLIC_SCHEME", global = true)]
    pub public_scheme: Option<String>,

    /// Base domain of pod hosts [default: localhost].
    #[arg(long, env = "PODGATE_DOMAIN", global = true)]
    pub domain: Option<String>,

    /// Public pod host template [default: localhost-{port}-pod-{pod}.{domain}].
    #[arg(long, env = "PODGATE_HOST_TEMPLATE", global = true)]
    pub host_template: Option<String>,

    /// Host the pod's nginx sees [default: localhost-{port}.pod-{pod}.{domain}].
    #[arg(long, env = "PODGATE_UPSTREAM_HOST_TEMPLATE", global = true)]
    pub upstream_host_template: Option<String>,

    /// Port of pod URLs as browsers see them (Envoy's public port); left out of URLs when it is
    /// the scheme's default (80/443) [default: 10000].
    #[arg(long, env = "PODGATE_POD_PUBLIC_PORT", global = true)]
    pub pod_public_port: Option<u16>,

    /// Where people who are not signed in are sent; `next` is appended
    /// [default in dev mode: ISSUER/dev/login; required otherwise].
    #[arg(long, env = "PODGATE_LOGIN_URL", global = true)]
    pub login_url: Option<String>,

    /// Capability lifetime in seconds [default: 900].
    #[arg(long, env = "PODGATE_CAPABILITY_LIFETIME_SECS", global = true)]
    pub capability_lifetime_secs: Option<u64>,

    /// Login ticket lifetime in seconds, at most 60 [default: 60].
    #[arg(long, env = "PODGATE_TICKET_LIFETIME_SECS", global = true)]
    pub ticket_lifetime_secs: Option<u64>,

    /// Control-plane session lifetime in seconds [default: 43200].
    #[arg(long, env = "PODGATE_SESSION_LIFETIME_SECS", global = true)]
    pub session_lifetime_secs: Option<u64>,

    /// SameSite of the capability cookie: lax, strict or none (none needs https) [default: lax].
    #[arg(long, env = "PODGATE_COOKIE_SAMESITE", global = true)]
    pub cookie_samesite: Option<String>,

    /// Signing algorithm of new keys: eddsa, es256 or hs256 [default: eddsa].
    #[arg(long, env = "PODGATE_SIGNING_ALG", global = true)]
    pub signing_alg: Option<String>,

    /// Seconds a rotated-out key keeps verifying [default: 3600]; at least the capability lifetime.
    #[arg(long, env = "PODGATE_KEY_OVERLAP_SECS", global = true)]
    pub key_overlap_secs: Option<u64>,

    /// File with the key-encryption key that encrypts the signing keys in the database (32
    /// random bytes, base64 or hex: `podgate keys gen-kek FILE`). Required outside dev mode.
    #[arg(long, env = "PODGATE_KEY_ENCRYPTION_KEY_FILE", global = true)]
    pub key_encryption_key_file: Option<PathBuf>,

    /// The key-encryption key itself, instead of a file (a flag's value shows in `ps`: prefer the
    /// file or the environment variable).
    #[arg(
        long,
        env = "PODGATE_KEY_ENCRYPTION_KEY",
        global = true,
        hide_env_values = true
    )]
    pub key_encryption_key: Option<String>,

    /// Files with previous key-encryption keys, comma-separated: they only decrypt, while
    /// `podgate keys rewrap` moves every signing key to the current one.
    #[arg(
        long,
        env = "PODGATE_PREVIOUS_KEY_ENCRYPTION_KEY_FILE",
        global = true,
        value_delimiter = ','
    )]
    pub previous_key_encryption_key_file: Option<Vec<PathBuf>>,

    /// Previous key-encryption keys themselves, comma-separated, instead of files.
    #[arg(
        long,
        env = "PODGATE_PREVIOUS_KEY_ENCRYPTION_KEY",
        global = true,
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub previous_key_encryption_key: Option<Vec<String>>,

    /// Log format: text or json [default: text]. Levels come from RUST_LOG (default info).
    #[arg(long, env = "PODGATE_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,

    /// OpenID Connect issuers whose ID tokens sign people in: `[[oidc]]` tables of the config
    /// file (see control-plane/README.md).
    #[arg(skip)]
    #[serde(default)]
    pub oidc: Vec<crate::config::idp::OidcSettings>,

    /// Accept Firebase ID tokens of this project (adds the [[oidc]] entry "firebase").
    #[arg(long, env = "PODGATE_FIREBASE_PROJECT", global = true)]
    pub firebase_project: Option<String>,

    /// Accept ID tokens of this OpenID Connect issuer (keys from its discovery document; with
    /// --oidc-audience; adds the [[oidc]] entry "oidc").
    #[arg(long, env = "PODGATE_OIDC_ISSUER", global = true)]
    pub oidc_issuer: Option<String>,

    /// The client id those ID tokens are for; several client ids of the issuer comma-separated.
    #[arg(long, env = "PODGATE_OIDC_AUDIENCE", global = true)]
    pub oidc_audience: Option<String>,

    /// The main app's session endpoint (`[app_session]` in the file).
    #[command(flatten)]
    #[serde(default)]
    pub app_session: crate::config::idp::AppSessionSettings,

    /// Browser origins allowed to call POST /v1/capabilities with a bearer token, comma-separated.
    #[arg(
        long,
        env = "PODGATE_CORS_ORIGINS",
        global = true,
        value_delimiter = ','
    )]
    pub cors_origins: Option<Vec<String>>,

    /// Header a trusted proxy sets to the client address (e.g. x-envoy-external-address), for
    /// rate limits [default: the TCP peer].
    #[arg(long, env = "PODGATE_CLIENT_IP_HEADER", global = true)]
    pub client_ip_header: Option<String>,

    /// Address of the ADS (xDS gRPC) server Envoy connects to, or `off`
    /// [default: 127.0.0.1:18000].
    #[arg(long, env = "PODGATE_XDS_LISTEN", global = true)]
    pub xds_listen: Option<String>,

    /// The filter's .wasm file as Envoy's filesystem sees it (required when xDS is on).
    #[arg(long, env = "PODGATE_FILTER_WASM", global = true)]
    pub filter_wasm: Option<PathBuf>,

    /// Longest wait, in seconds, before a new capability key signs though some Envoy has not
    /// acknowledged it [default: 5].
    #[arg(long, env = "PODGATE_KEY_PUBLISH_DELAY_SECS", global = true)]
    pub key_publish_delay_secs: Option<u64>,

    /// Seconds between rebuilds of Envoy's config from the database, a safety net for changes
    /// made by other processes [default: 2].
    #[arg(long, env = "PODGATE_XDS_RESYNC_SECS", global = true)]
    pub xds_resync_secs: Option<u64>,

    /// Requests to /api/proxy-auth one client may make in a burst; every request counts
    /// [default: 120].
    #[arg(long, env = "PODGATE_PROXY_AUTH_BURST", global = true)]
    pub proxy_auth_burst: Option<u32>,

    /// Requests per minute a client regains at /api/proxy-auth [default: 120].
    #[arg(long, env = "PODGATE_PROXY_AUTH_PER_MINUTE", global = true)]
    pub proxy_auth_per_minute: Option<u32>,

    /// Failed callbacks (bad, expired, replayed tickets) one client may have in a burst
    /// [default: 20].
    #[arg(long, env = "PODGATE_CALLBACK_FAILURES_BURST", global = true)]
    pub callback_failures_burst: Option<u32>,

    /// Failed callbacks per minute a client regains [default: 10].
    #[arg(long, env = "PODGATE_CALLBACK_FAILURES_PER_MINUTE", global = true)]
    pub callback_failures_per_minute: Option<u32>,

    /// Refused POST /v1/capabilities (401, 403, 404) one client may have in a burst
    /// [default: 20].
    #[arg(long, env = "PODGATE_CAPABILITY_FAILURES_BURST", global = true)]
    pub capability_failures_burst: Option<u32>,

    /// Refused capability requests per minute a client regains [default: 20].
    #[arg(long, env = "PODGATE_CAPABILITY_FAILURES_PER_MINUTE", global = true)]
    pub capability_failures_per_minute: Option<u32>,

    /// Failed API-token attempts one client may have in a burst [default: 10].
    #[arg(long, env = "PODGATE_API_TOKEN_FAILURES_BURST", global = true)]
    pub api_token_failures_burst: Option<u32>,

    /// Failed API-token attempts per minute a client regains [default: 10].
    #[arg(long, env = "PODGATE_API_TOKEN_FAILURES_PER_MINUTE", global = true)]
    pub api_token_failures_per_minute: Option<u32>,

    /// Wrong admin tokens one client may send in a burst [default: 10].
    #[arg(long, env = "PODGATE_ADMIN_FAILURES_BURST", global = true)]
    pub admin_failures_burst: Option<u32>,

    /// Wrong admin tokens per minute a client regains [default: 10].
    #[arg(long, env = "PODGATE_ADMIN_FAILURES_PER_MINUTE", global = true)]
    pub admin_failures_per_minute: Option<u32>,

    /// Most clients each rate limit tracks; beyond it the least recently seen are forgotten
    /// [default: 50000].
    #[arg(long, env = "PODGATE_RATE_LIMIT_CLIENTS", global = true)]
    pub rate_limit_clients: Option<usize>,

    /// Largest request body accepted, in bytes; larger is 413 [default: 16384].
    #[arg(long, env = "PODGATE_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<usize>,

    /// Largest total size of request headers, in bytes; larger is 431 [default: 32768].
    #[arg(long, env = "PODGATE_MAX_HEADER_BYTES", global = true)]
    pub max_header_bytes: Option<usize>,
}

/// The checked configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub database_max_connections: u32,
    pub admin_token: Option<String>,
    pub dev_mode: bool,
    pub issuer: String,
    pub public_scheme: Scheme,
    pub domain: String,
    pub host_template: HostTemplate,
    pub upstream_host_template: HostTemplate,
    /// The templates as configured (with `{domain}`), for the filter's configuration.
    pub host_template_source: String,
    pub upstream_host_template_source: String,
    pub pod_public_port: Option<u16>,
    pub login_url: Option<String>,
    pub capability_lifetime: u64,
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
    /// The ADS server, `None` when `--xds-listen off`.
    pub xds: Option<XdsConfig>,
    /// Longest wait before a new capability key signs (publish before sign).
    pub key_publish_delay: u64,
    /// Per-client rate limits and request size bounds.
    pub limits: limits::LimitsConfig,
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

/// A setting that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// What each command needs beyond the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `serve`: everything.
    Server,
    /// `migrate`, `keys`: the database (and key settings).
    DatabaseOnly,
}

impl Settings {
    /// Reads the TOML file named by `--config` (if any) and fills in what flags and environment
    /// left unset.
    pub fn with_file(self) -> Result<Settings, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            bad(format!(
                "cannot read the config file {}: {e}; check the path given to --config / PODGATE_CONFIG",
                path.display()
            ))
        })?;
        let file: Settings = toml::from_str(&text).map_err(|e| {
            bad(format!(
                "the config file {} is not valid: {e}; keys are the long flag names in snake_case, e.g. database_url = \"sqlite://podgate.db\"",
                path.display()
            ))
        })?;
        Ok(self.or(file))
    }

    fn or(self, o: Settings) -> Settings {
        Settings {
            config: self.config,
            listen: self.listen.or(o.listen),
            database_url: self.database_url.or(o.database_url),
            database_max_connections: self.database_max_connections.or(o.database_max_connections),
            admin_token: self.admin_token.or(o.admin_token),
            dev_mode: self.dev_mode.or(o.dev_mode),
            issuer: self.issuer.or(o.issuer),
            public_scheme: self.public_scheme.or(o.public_scheme),
            domain: self.domain.or(o.domain),
            host_template: self.host_template.or(o.host_template),
            upstream_host_template: self.upstream_host_template.or(o.upstream_host_template),
            pod_public_port: self.pod_public_port.or(o.pod_public_port),
            login_url: self.login_url.or(o.login_url),
            capability_lifetime_secs: self.capability_lifetime_secs.or(o.capability_lifetime_secs),
            ticket_lifetime_secs: self.ticket_lifetime_secs.or(o.ticket_lifetime_secs),
            session_lifetime_secs: self.session_lifetime_secs.or(o.session_lifetime_secs),
            cookie_samesite: self.cookie_samesite.or(o.cookie_samesite),
            signing_alg: self.signing_alg.or(o.signing_alg),
            key_overlap_secs: self.key_overlap_secs.or(o.key_overlap_secs),
            key_encryption_key_file: self.key_encryption_key_file.or(o.key_encryption_key_file),
            key_encryption_key: self.key_encryption_key.or(o.key_encryption_key),
            previous_key_encryption_key_file: self
                .previous_key_encryption_key_file
                .or(o.previous_key_encryption_key_file),
            previous_key_encryption_key: self
                .previous_key_encryption_key
                .or(o.previous_key_encryption_key),
            log_format: self.log_format.or(o.log_format),
            oidc: if self.oidc.is_empty() {
                o.oidc
            } else {
                self.oidc
            },
            firebase_project: self.firebase_project.or(o.firebase_project),
            oidc_issuer: self.oidc_issuer.or(o.oidc_issuer),
            oidc_audience: self.oidc_audience.or(o.oidc_audience),
            app_session: self.app_session.or(o.app_session),
            cors_origins: self.cors_origins.or(o.cors_origins),
            client_ip_header: self.client_ip_header.or(o.client_ip_header),
            xds_listen: self.xds_listen.or(o.xds_listen),
            filter_wasm: self.filter_wasm.or(o.filter_wasm),
            key_publish_delay_secs: self.key_publish_delay_secs.or(o.key_publish_delay_secs),
            xds_resync_secs: self.xds_resync_secs.or(o.xds_resync_secs),
            proxy_auth_burst: self.proxy_auth_burst.or(o.proxy_auth_burst),
            proxy_auth_per_minute: self.proxy_auth_per_minute.or(o.proxy_auth_per_minute),
            callback_failures_burst: self.callback_failures_burst.or(o.callback_failures_burst),
            callback_failures_per_minute: self
                .callback_failures_per_minute
                .or(o.callback_failures_per_minute),
            capability_failures_burst: self
                .capability_failures_burst
                .or(o.capability_failures_burst),
            capability_failures_per_minute: self
                .capability_failures_per_minute
                .or(o.capability_failures_per_minute),
            api_token_failures_burst: self.api_token_failures_burst.or(o.api_token_failures_burst),
            api_token_failures_per_minute: self
                .api_token_failures_per_minute
                .or(o.api_token_failures_per_minute),
            admin_failures_burst: self.admin_failures_burst.or(o.admin_failures_burst),
            admin_failures_per_minute: self
                .admin_failures_per_minute
                .or(o.admin_failures_per_minute),
            rate_limit_clients: self.rate_limit_clients.or(o.rate_limit_clients),
            max_body_bytes: self.max_body_bytes.or(o.max_body_bytes),
            max_header_bytes: self.max_header_bytes.or(o.max_header_bytes),
        }
    }

    /// Applies defaults and checks every setting.
    pub fn resolve(self, need: Need) -> Result<Config, ConfigError> {
        let listen_s = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_s.parse().map_err(|_| {
            bad(format!(
                "listen address {listen_s:?} is not IP:PORT; set --listen / PODGATE_LISTEN, e.g. 127.0.0.1:8080"
            ))
        })?;

        let database_url = self
            .database_url
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        let is_sqlite = database_url.starts_with("sqlite:");
        if !is_sqlite
            && !database_url.starts_with("postgres://")
            && !database_url.starts_with("postgresql://")
        {
            return Err(bad(format!(
                "database URL {:?} is neither sqlite: nor postgres://; set --database-url / PODGATE_DATABASE_URL, e.g. sqlite://podgate.db or postgres://user:pass@host/db",
                redact_url(&database_url)
            )));
        }
        let database_max_connections = match self.database_max_connections {
            Some(0) => return Err(bad(
                "database_max_connections must be at least 1; set PODGATE_DATABASE_MAX_CONNECTIONS",
            )),
            Some(n) => n,
            None if is_sqlite => 8,
            None => 16,
        };

        let dev_mode = self.dev_mode.unwrap_or(false);

        let admin_token = match self.admin_token {
            Some(t) if t.len() < MIN_ADMIN_TOKEN_LEN => {
                return Err(bad(format!(
                    "the admin token is {} characters, fewer than {MIN_ADMIN_TOKEN_LEN}; set PODGATE_ADMIN_TOKEN to a random string, e.g. `openssl rand -hex 32`",
                    t.len()
                )))
            }
            Some(t) if t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(bad(
                    "the admin token contains whitespace or control characters; set PODGATE_ADMIN_TOKEN to e.g. `openssl rand -hex 32`",
                ))
            }
            Some(t) => Some(t),
            None if need == Need::Server => {
                return Err(bad(
                    "no admin token; set PODGATE_ADMIN_TOKEN (or --admin-token) to a random string of at least 32 characters, e.g. `openssl rand -hex 32`",
                ))
            }
            None => None,
        };

        let issuer = self
            .issuer
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        check_http_url(&issuer, "issuer", "PODGATE_ISSUER", "http://127.0.0.1:8080")?;

        let public_scheme = match self.public_scheme.as_deref().unwrap_or("http") {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => {
                return Err(bad(format!(
                    "public scheme {other:?} is not http or https; set --public-scheme / PODGATE_PUBLIC_SCHEME"
                )))
            }
        };

        let domain = self.domain.unwrap_or_else(|| "localhost".to_owned());
        let host_template_source = self
            .host_template
            .unwrap_or_else(|| podgate_protocol::host::DEFAULT_PUBLIC_TEMPLATE.to_owned());
        let host_template = HostTemplate::new(&host_template_source, &domain).map_err(|e| {
            bad(format!(
                "host template {host_template_source:?} with domain {domain:?} cannot be used: {e}; set PODGATE_HOST_TEMPLATE / PODGATE_DOMAIN, e.g. localhost-{{port}}-pod-{{pod}}.{{domain}} and example.dev"
            ))
        })?;
        let upstream_s = self
            .upstream_host_template
            .unwrap_or_else(|| podgate_protocol::host::DEFAULT_UPSTREAM_TEMPLATE.to_owned());
        let upstream_host_template = HostTemplate::new(&upstream_s, &domain).map_err(|e| {
            bad(format!(
                "upstream host template {upstream_s:?} cannot be used: {e}; set PODGATE_UPSTREAM_HOST_TEMPLATE, e.g. localhost-{{port}}.pod-{{pod}}.{{domain}}"
            ))
        })?;

        let pod_public_port = match self.pod_public_port.unwrap_or(DEFAULT_POD_PUBLIC_PORT) {
            0 => {
                return Err(bad(
                    "pod public port 0 is not a port; set PODGATE_POD_PUBLIC_PORT to 1-65535 (80/443 leave it out of URLs)",
                ))
            }
            80 if public_scheme == Scheme::Http => None,
            443 if public_scheme == Scheme::Https => None,
            p => Some(p),
        };

        let login_url = match self.login_url {
            Some(u) => {
                check_http_url(&u, "login URL", "PODGATE_LOGIN_URL", "https://app.example.dev/login")?;
                Some(u)
            }
            None if dev_mode => Some(format!("{issuer}/dev/login")),
            None if need == Need::Server => {
                return Err(bad(
                    "no login URL; set PODGATE_LOGIN_URL (or --login-url) to the page where people sign in, e.g. https://app.example.dev/login, or run with PODGATE_DEV_MODE=true for the dev login",
                ))
            }
            None => None,
        };

        let capability_lifetime = self
            .capability_lifetime_secs
            .unwrap_or(DEFAULT_CAPABILITY_LIFETIME);
        if !(30..=MAX_CAPABILITY_LIFETIME).contains(&capability_lifetime) {
            return Err(bad(format!(
                "capability lifetime {capability_lifetime} s is outside 30..={MAX_CAPABILITY_LIFETIME}; set PODGATE_CAPABILITY_LIFETIME_SECS, e.g. 900"
            )));
        }
        let ticket_lifetime = self.ticket_lifetime_secs.unwrap_or(DEFAULT_TICKET_LIFETIME);
        if !(5..=MAX_TICKET_LIFETIME).contains(&ticket_lifetime) {
            return Err(bad(format!(
                "ticket lifetime {ticket_lifetime} s is outside 5..={MAX_TICKET_LIFETIME}; set PODGATE_TICKET_LIFETIME_SECS, e.g. 60"
            )));
        }
        let session_lifetime = self
            .session_lifetime_secs
            .unwrap_or(DEFAULT_SESSION_LIFETIME);
        if !(60..=30 * 86_400).contains(&session_lifetime) {
            return Err(bad(format!(
                "session lifetime {session_lifetime} s is outside 60..=2592000; set PODGATE_SESSION_LIFETIME_SECS, e.g. 43200"
            )));
        }

        let cookie_samesite = match self.cookie_samesite.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("lax") => SameSite::Lax,
            Some("strict") => SameSite::Strict,
            Some("none") if public_scheme.is_https() => SameSite::None,
            Some("none") => {
                return Err(bad(
                    "cookie SameSite=None needs the public scheme https (browsers drop it otherwise); set PODGATE_COOKIE_SAMESITE=lax or PODGATE_PUBLIC_SCHEME=https",
                ))
            }
            Some(other) => {
                return Err(bad(format!(
                    "cookie SameSite {other:?} is not lax, strict or none; set PODGATE_COOKIE_SAMESITE"
                )))
            }
        };

        let signing_alg = match self
            .signing_alg
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("eddsa") | Some("ed25519") => SigningAlg::Eddsa,
            Some("es256") => SigningAlg::Es256,
            Some("hs256") => SigningAlg::Hs256,
            Some(other) => {
                return Err(bad(format!(
                "signing algorithm {other:?} is not eddsa, es256 or hs256; set PODGATE_SIGNING_ALG"
            )))
            }
        };

        let key_overlap = self.key_overlap_secs.unwrap_or(DEFAULT_KEY_OVERLAP);
        if key_overlap < capability_lifetime {
            return Err(bad(format!(
                "key overlap {key_overlap} s is shorter than the capability lifetime {capability_lifetime} s, so rotation would cut live capabilities; set PODGATE_KEY_OVERLAP_SECS to at least {capability_lifetime}"
            )));
        }

        // The server outside dev mode never stores signing keys in plaintext.
        let key_encryption = crate::key_encryption::resolve(
            crate::key_encryption::KekInputs {
                file: self.key_encryption_key_file,
                value: self.key_encryption_key,
                previous_files: self.previous_key_encryption_key_file.unwrap_or_default(),
                previous_values: self.previous_key_encryption_key.unwrap_or_default(),
            },
            need == Need::Server && !dev_mode,
        )
        .map_err(|e| bad(e.to_string()))?;

        let log_format = match self.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(bad(format!(
                    "log format {other:?} is not text or json; set PODGATE_LOG_FORMAT"
                )))
            }
        };

        let key_publish_delay = self
            .key_publish_delay_secs
            .unwrap_or(DEFAULT_KEY_PUBLISH_DELAY);
        if key_publish_delay > 300 {
            return Err(bad(format!(
                "key publish delay {key_publish_delay} s is over 300; set PODGATE_KEY_PUBLISH_DELAY_SECS, e.g. 5"
            )));
        }
        let xds = resolve_xds(
            self.xds_listen.as_deref(),
            self.filter_wasm,
            self.xds_resync_secs,
            need,
        )?;

        let limits = limits::resolve(limits::LimitInputs {
            proxy_auth: (self.proxy_auth_burst, self.proxy_auth_per_minute),
            callback_failures: (
                self.callback_failures_burst,
                self.callback_failures_per_minute,
            ),
            capability_failures: (
                self.capability_failures_burst,
                self.capability_failures_per_minute,
            ),
            api_token_failures: (
                self.api_token_failures_burst,
                self.api_token_failures_per_minute,
            ),
            admin_failures: (self.admin_failures_burst, self.admin_failures_per_minute),
            clients: self.rate_limit_clients,
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
        })?;

        let identity = crate::config::idp::resolve(
            crate::config::idp::IdentityInputs {
                oidc: self.oidc,
                firebase_project: self.firebase_project,
                oidc_issuer: self.oidc_issuer,
                oidc_audience: self.oidc_audience,
                app_session: self.app_session,
                cors_origins: self.cors_origins,
                client_ip_header: self.client_ip_header,
            },
            &[
                SESSION_COOKIE,
                podgate_protocol::cookie::DEFAULT_COOKIE_NAME,
                &podgate_protocol::cookie::cookie_name(SESSION_COOKIE, true),
                &podgate_protocol::cookie::cookie_name(
                    podgate_protocol::cookie::DEFAULT_COOKIE_NAME,
                    true,
                ),
            ],
        )?;

        Ok(Config {
            listen,
            database_url,
            database_max_connections,
            admin_token,
            dev_mode,
            issuer,
            public_scheme,
            domain,
            host_template,
            upstream_host_template,
            host_template_source,
            upstream_host_template_source: upstream_s,
            pod_public_port,
            login_url,
            capability_lifetime,
            ticket_lifetime,
            session_lifetime,
            cookie_samesite,
            signing_alg,
            key_overlap,
            key_encryption,
            log_format,
            identity,
            xds,
            key_publish_delay,
            limits,
        })
    }
}

fn resolve_xds(
    listen: Option<&str>,
    filter_wasm: Option<PathBuf>,
    resync: Option<u64>,
    need: Need,
) -> Result<Option<XdsConfig>, ConfigError> {
    let listen_s = listen.unwrap_or(DEFAULT_XDS_LISTEN);
    if listen_s.eq_ignore_ascii_case("off") || need != Need::Server {
        return Ok(None);
    }
    let listen: SocketAddr = listen_s.parse().map_err(|_| {
        bad(format!(
            "xDS address {listen_s:?} is not IP:PORT or off; set --xds-listen / PODGATE_XDS_LISTEN, e.g. 127.0.0.1:18000"
        ))
    })?;
    let Some(wasm) = filter_wasm else {
        return Err(bad(
            "no filter .wasm for the xDS server; set PODGATE_FILTER_WASM (or --filter-wasm) to the path of podgate_filter.wasm as Envoy sees it (cargo build -p podgate-filter --target wasm32-wasip1 --profile wasm-release), or PODGATE_XDS_LISTEN=off to serve no xDS",
        ));
    };
    let filter_wasm = std::path::absolute(&wasm).map_err(|e| {
        bad(format!(
            "filter .wasm path {} cannot be made absolute: {e}; set PODGATE_FILTER_WASM to an absolute path",
            wasm.display()
        ))
    })?;
    if !filter_wasm.is_file() {
        return Err(bad(format!(
            "filter .wasm {} is not a file; build it with `cargo build -p podgate-filter --target wasm32-wasip1 --profile wasm-release` and set PODGATE_FILTER_WASM to target/wasm32-wasip1/wasm-release/podgate_filter.wasm",
            filter_wasm.display()
        )));
    }
    let resync_secs = resync.unwrap_or(DEFAULT_XDS_RESYNC);
    if !(1..=3600).contains(&resync_secs) {
        return Err(bad(format!(
            "xDS resync interval {resync_secs} s is outside 1..=3600; set PODGATE_XDS_RESYNC_SECS, e.g. 2"
        )));
    }
    Ok(Some(XdsConfig {
        listen,
        filter_wasm,
        resync_secs,
    }))
}

fn check_http_url(u: &str, what: &str, env: &str, example: &str) -> Result<(), ConfigError> {
    let parsed = url::Url::parse(u).map_err(|e| {
        bad(format!(
            "{what} {u:?} is not a URL ({e}); set {env}, e.g. {example}"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad(format!(
            "{what} {u:?} must be an absolute http(s) URL; set {env}, e.g. {example}"
        )));
    }
    Ok(())
}

/// A database URL with any password replaced, for messages and logs.
pub fn redact_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => u.to_owned(),
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_names_the_keys_like_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let (current, previous) = (dir.path().join("new"), dir.path().join("old"));
        let (new, old) = (
            crate::key_encryption::KeyEncryptionKey::generate().unwrap(),
            crate::key_encryption::KeyEncryptionKey::generate().unwrap(),
        );
        crate::key_encryption::write_new_key_file(&current, &new).unwrap();
        crate::key_encryption::write_new_key_file(&previous, &old).unwrap();
        let toml = dir.path().join("podgate.toml");
        std::fs::write(
            &toml,
            format!(
                "admin_token = \"0123456789abcdef0123456789abcdef\"\nlogin_url = \"https://app.example.dev/login\"\nxds_listen = \"off\"\nkey_encryption_key_file = {:?}\nprevious_key_encryption_key_file = [{:?}]\n",
                current.display().to_string(),
                previous.display().to_string()
            ),
        )
        .unwrap();
        let config = Settings {
            config: Some(toml),
            ..Default::default()
        }
        .with_file()
        .unwrap()
        .resolve(Need::Server)
        .unwrap();
        let kek = &config.key_encryption;
        assert_eq!(kek.current().unwrap().id(), new.id());
        assert_eq!(kek.current().unwrap().file(), Some(current.as_path()));
        assert_eq!(kek.previous().len(), 1);
        assert_eq!(kek.previous()[0].id(), old.id());
        assert!(!config.dev_mode);
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn base() -> Settings {
        Settings {
            admin_token: Some(TOKEN.into()),
            dev_mode: Some(true),
            xds_listen: Some("off".into()),
            ..Settings::default()
        }
    }

    #[test]
    fn xds_needs_an_existing_filter_wasm_and_makes_its_path_absolute() {
        let on = |wasm: Option<&str>| Settings {
            xds_listen: None,
            filter_wasm: wasm.map(PathBuf::from),
            ..base()
        };
        assert!(err(on(None)).contains("PODGATE_FILTER_WASM"));
        assert!(err(on(Some("/nonexistent/podgate_filter.wasm"))).contains("is not a file"));
        assert!(err(Settings {
            xds_listen: Some("18000".into()),
            ..on(Some("Cargo.toml"))
        })
        .contains("PODGATE_XDS_LISTEN"));
        assert!(err(Settings {
            key_publish_delay_secs: Some(3600),
            ..base()
        })
        .contains("PODGATE_KEY_PUBLISH_DELAY_SECS"));
        // Any existing file will do for the check; the path handed to Envoy is absolute.
        let c = on(Some("Cargo.toml")).resolve(Need::Server).unwrap();
        let xds = c.xds.clone().unwrap();
        assert_eq!(xds.listen.to_string(), DEFAULT_XDS_LISTEN);
        assert!(xds.filter_wasm.is_absolute());
        assert_eq!(c.key_publish_delay, DEFAULT_KEY_PUBLISH_DELAY);
        assert_eq!(c.rotation_overlap(), (DEFAULT_KEY_OVERLAP + 5) as i64);
        // `off`, and commands other than serve, run no xDS.
        assert!(base().resolve(Need::Server).unwrap().xds.is_none());
        assert!(on(None).resolve(Need::DatabaseOnly).unwrap().xds.is_none());
    }

    fn err(s: Settings) -> String {
        s.resolve(Need::Server).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = base().resolve(Need::Server).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite://podgate.db");
        assert_eq!(c.issuer, "http://127.0.0.1:8080");
        assert_eq!(
            c.login_url.as_deref(),
            Some("http://127.0.0.1:8080/dev/login")
        );
        assert_eq!(c.pod_public_port, Some(10000));
        assert_eq!(c.capability_lifetime, 900);
        assert_eq!(c.ticket_lifetime, 60);
        assert_eq!(c.cookie_samesite, SameSite::Lax);
        assert_eq!(c.signing_alg, SigningAlg::Eddsa);
        assert_eq!(c.limits, limits::LimitsConfig::default());
        assert_eq!(
            c.pod_origin("localhost-8726-pod-myslug.localhost"),
            "http://localhost-8726-pod-myslug.localhost:10000"
        );
    }

    #[test]
    fn every_bad_setting_says_how_to_fix_it() {
        let cases: Vec<(Settings, &str)> = vec![
            (
                Settings {
                    admin_token: None,
                    ..base()
                },
                "PODGATE_ADMIN_TOKEN",
            ),
            (
                Settings {
                    admin_token: Some("short".into()),
                    ..base()
                },
                "fewer than 32",
            ),
            (
                Settings {
                    listen: Some("localhost".into()),
                    ..base()
                },
                "PODGATE_LISTEN",
            ),
            (
                Settings {
                    database_url: Some("mysql://x".into()),
                    ..base()
                },
                "PODGATE_DATABASE_URL",
            ),
            (
                Settings {
                    database_max_connections: Some(0),
                    ..base()
                },
                "at least 1",
            ),
            (
                Settings {
                    issuer: Some("ftp://x".into()),
                    ..base()
                },
                "PODGATE_ISSUER",
            ),
            (
                Settings {
                    public_scheme: Some("gopher".into()),
                    ..base()
                },
                "PODGATE_PUBLIC_SCHEME",
            ),
            (
                Settings {
                    domain: Some("Bad Domain".into()),
                    ..base()
                },
                "PODGATE_DOMAIN",
            ),
            (
                Settings {
                    host_template: Some("{pod}.{domain}".into()),
                    ..base()
                },
                "PODGATE_HOST_TEMPLATE",
            ),
            (
                Settings {
                    pod_public_port: Some(0),
                    ..base()
                },
                "PODGATE_POD_PUBLIC_PORT",
            ),
            (
                Settings {
                    dev_mode: Some(false),
                    ..base()
                },
                "PODGATE_LOGIN_URL",
            ),
            (
                Settings {
                    login_url: Some("/login".into()),
                    ..base()
                },
                "PODGATE_LOGIN_URL",
            ),
            (
                Settings {
                    dev_mode: Some(false),
                    login_url: Some("https://app.example.dev/login".into()),
                    ..base()
                },
                "PODGATE_KEY_ENCRYPTION_KEY_FILE",
            ),
            (
                Settings {
                    key_encryption_key: Some("not a key".into()),
                    ..base()
                },
                "gen-kek",
            ),
            (
                Settings {
                    capability_lifetime_secs: Some(5),
                    ..base()
                },
                "PODGATE_CAPABILITY_LIFETIME_SECS",
            ),
            (
                Settings {
                    ticket_lifetime_secs: Some(600),
                    ..base()
                },
                "PODGATE_TICKET_LIFETIME_SECS",
            ),
            (
                Settings {
                    session_lifetime_secs: Some(1),
                    ..base()
                },
                "PODGATE_SESSION_LIFETIME_SECS",
            ),
            (
                Settings {
                    cookie_samesite: Some("none".into()),
                    ..base()
                },
                "https",
            ),
            (
                Settings {
                    cookie_samesite: Some("loose".into()),
                    ..base()
                },
                "PODGATE_COOKIE_SAMESITE",
            ),
            (
                Settings {
                    signing_alg: Some("rs256".into()),
                    ..base()
                },
                "PODGATE_SIGNING_ALG",
            ),
            (
                Settings {
                    key_overlap_secs: Some(10),
                    ..base()
                },
                "PODGATE_KEY_OVERLAP_SECS",
            ),
            (
                Settings {
                    log_format: Some("xml".into()),
                    ..base()
                },
                "PODGATE_LOG_FORMAT",
            ),
            (
                Settings {
                    callback_failures_per_minute: Some(0),
                    ..base()
                },
                "PODGATE_CALLBACK_FAILURES_PER_MINUTE",
            ),
            (
                Settings {
                    max_header_bytes: Some(100),
                    ..base()
                },
                "PODGATE_MAX_HEADER_BYTES",
            ),
            (
                Settings {
                    rate_limit_clients: Some(0),
                    ..base()
                },
                "PODGATE_RATE_LIMIT_CLIENTS",
            ),
        ];
        for (settings, needle) in cases {
            let msg = err(settings);
            assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
        }
    }

    #[test]
    fn migrate_needs_no_admin_token() {
        let s = Settings {
            admin_token: None,
            dev_mode: None,
            ..Settings::default()
        };
        assert!(s.resolve(Need::DatabaseOnly).is_ok());
    }

    #[test]
    fn https_drops_default_port_and_allows_samesite_none() {
        let c = Settings {
            public_scheme: Some("https".into()),
            pod_public_port: Some(443),
            cookie_samesite: Some("none".into()),
            ..base()
        }
        .resolve(Need::Server)
        .unwrap();
        assert_eq!(c.pod_origin("h.example.dev"), "https://h.example.dev");
        assert_eq!(c.cookie_samesite, SameSite::None);
    }

    #[test]
    fn file_fills_what_flags_and_env_left_unset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podgate.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\ndomain = \"example.dev\"\ndev_mode = true\nadmin_token = \"0123456789abcdef0123456789abcdef\"\nxds_listen = \"off\"\n",
        )
        .unwrap();
        let s = Settings {
            config: Some(path.clone()),
            domain: Some("flag.dev".into()),
            ..Settings::default()
        }
        .with_file()
        .unwrap();
        let c = s.resolve(Need::Server).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(c.domain, "flag.dev");
        std::fs::write(&path, "lisen = 1\n").unwrap();
        let e = Settings {
            config: Some(path),
            ..Settings::default()
        }
        .with_file()
        .unwrap_err()
        .to_string();
        assert!(e.contains("not valid") && e.contains("lisen"), "{e}");
        let e = Settings {
            config: Some("/nonexistent/p.toml".into()),
            ..Settings::default()
        }
        .with_file()
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
    }
}
