//! The command line: subcommands, and [`Settings`], every setting as a flag, a `PODGATE_*`
//! environment variable (both through clap, flags winning) and a key of the TOML file (through
//! serde, same names in snake_case). Each is optional here; `file.rs` merges the file under the
//! flags and environment, and `resolve.rs` applies defaults and checks the result.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

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
    /// Certificates for the mutual TLS between Envoy and the control plane.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Write a fresh test CA (ca.pem), a server certificate for localhost and 127.0.0.1
    /// (server.pem, server-key.pem) and an Envoy client certificate (envoy.pem, envoy-key.pem)
    /// into DIR, for the demo and tests; never overwrites. Production certificates come from
    /// your own CA.
    GenTestCerts {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// More names (DNS or IP) for the server certificate, e.g. the control plane's service
        /// name; repeat or comma-separate.
        #[arg(long = "server-name", value_delimiter = ',')]
        server_names: Vec<String>,
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

    /// Serve `GET /metrics` (Prometheus) on this address only, instead of on the HTTP API's
    /// [default: on the HTTP API's address].
    #[arg(long, env = "PODGATE_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<String>,

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

    /// Secret Envoy's filter sends to renew browser capabilities at /api/proxy-renew (at least
    /// 32 characters; the same on every control plane behind one Envoy) [default: derived from
    /// the key-encryption key; random at start without one].
    #[arg(
        long,
        env = "PODGATE_RENEW_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub renew_secret: Option<String>,

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

    /// Public host of a published upstream API (a service) [default: svc-{name}.{domain}].
    #[arg(long, env = "PODGATE_SERVICE_HOST_TEMPLATE", global = true)]
    pub service_host_template: Option<String>,

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

    /// Lifetime in seconds of the identity assertion forwarded requests carry to pods
    /// (`x-podgate-assertion`), at most 300; 0 turns assertions off [default: 60].
    #[arg(long, env = "PODGATE_ASSERTION_LIFETIME_SECS", global = true)]
    pub assertion_lifetime_secs: Option<u64>,

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

    /// Sign people in at /auth/login with that issuer as its first client id, with this client
    /// secret (prefer --oidc-client-secret-file; `[oidc.sign_in]` in the file for more).
    #[arg(
        long,
        env = "PODGATE_OIDC_CLIENT_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub oidc_client_secret: Option<String>,

    /// File with that client's secret.
    #[arg(long, env = "PODGATE_OIDC_CLIENT_SECRET_FILE", global = true)]
    pub oidc_client_secret_file: Option<PathBuf>,

    /// File with that client's private JWK, for private_key_jwt instead of a secret.
    #[arg(long, env = "PODGATE_OIDC_CLIENT_KEY_FILE", global = true)]
    pub oidc_client_key_file: Option<PathBuf>,

    /// client_secret_basic, client_secret_post or private_key_jwt [default: by what is given].
    #[arg(long, env = "PODGATE_OIDC_CLIENT_AUTH", global = true)]
    pub oidc_client_auth: Option<String>,

    /// Scopes of the sign-in, comma-separated [default: openid,email,profile].
    #[arg(
        long,
        env = "PODGATE_OIDC_SCOPES",
        global = true,
        value_delimiter = ','
    )]
    pub oidc_scopes: Option<Vec<String>>,

    /// The provider's name on the sign-in page [default: oidc].
    #[arg(long, env = "PODGATE_OIDC_DISPLAY_NAME", global = true)]
    pub oidc_display_name: Option<String>,

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

    /// URL the control plane POSTs to start a stopped pod when one of its users loads a page of
    /// it; `{pod}` is replaced by the pod's slug, e.g. https://platform.internal/pods/{pod}/start
    /// [default: none, pods are never started].
    #[arg(long, env = "PODGATE_START_HOOK_URL", global = true)]
    pub start_hook_url: Option<String>,

    /// Secret sent to the start hook in `podgate-start-secret` (at least 32 characters;
    /// required with --start-hook-url).
    #[arg(
        long,
        env = "PODGATE_START_HOOK_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub start_hook_secret: Option<String>,

    /// Fewest seconds between two start hook calls for one pod [default: 30].
    #[arg(long, env = "PODGATE_START_HOOK_INTERVAL_SECS", global = true)]
    pub start_hook_interval_secs: Option<u64>,

    /// Requests one user may make through Envoy, as PER_SECOND/BURST (e.g. 50/100), per Envoy
    /// worker; beyond it the filter answers 429 [default: no limit].
    #[arg(long, env = "PODGATE_EDGE_RATE_PER_USER", global = true)]
    pub edge_rate_per_user: Option<String>,

    /// Requests one pod may get through Envoy from all its users, as PER_SECOND/BURST, per Envoy
    /// worker [default: no limit].
    #[arg(long, env = "PODGATE_EDGE_RATE_PER_POD", global = true)]
    pub edge_rate_per_pod: Option<String>,

    /// Streams (requests in flight and open WebSockets) one user may hold open through Envoy
    /// at once, over every pod, per Envoy worker; beyond it the filter answers 429
    /// [default: no limit].
    #[arg(long, env = "PODGATE_EDGE_CONCURRENT_PER_USER", global = true)]
    pub edge_concurrent_per_user: Option<u32>,

    /// Streams one pod may have open through Envoy at once, from all its users, per Envoy
    /// worker; a pod's own `limits.concurrent` (admin API) wins [default: no limit].
    #[arg(long, env = "PODGATE_EDGE_CONCURRENT_PER_POD", global = true)]
    pub edge_concurrent_per_pod: Option<u32>,

    /// Address of the ADS (xDS gRPC) server Envoy connects to, or `off`
    /// [default: 127.0.0.1:18000].
    #[arg(long, env = "PODGATE_XDS_LISTEN", global = true)]
    pub xds_listen: Option<String>,

    /// PEM certificate (chain) the control plane presents to Envoy on the ADS server and the
    /// Envoy-facing HTTP listener; with --envoy-tls-key and --envoy-client-ca it turns on mutual
    /// TLS with Envoy [default: none, plaintext].
    #[arg(long, env = "PODGATE_ENVOY_TLS_CERT", global = true)]
    pub envoy_tls_cert: Option<PathBuf>,

    /// PEM private key of --envoy-tls-cert.
    #[arg(long, env = "PODGATE_ENVOY_TLS_KEY", global = true)]
    pub envoy_tls_key: Option<PathBuf>,

    /// PEM certificate of the CA that signs Envoy's client certificates: ADS and the
    /// Envoy-facing listener accept only clients with a certificate it signed.
    #[arg(long, env = "PODGATE_ENVOY_CLIENT_CA", global = true)]
    pub envoy_client_ca: Option<PathBuf>,

    /// Address of the Envoy-facing HTTP listener (mutual TLS; the calls of Envoy's filter and
    /// the `/.podgate/` paths Envoy forwards), used with --envoy-tls-cert
    /// [default with mutual TLS: 127.0.0.1:8443].
    #[arg(long, env = "PODGATE_ENVOY_LISTEN", global = true)]
    pub envoy_listen: Option<String>,

    /// The filter's .wasm file as Envoy's filesystem sees it (required when xDS is on).
    #[arg(long, env = "PODGATE_FILTER_WASM", global = true)]
    pub filter_wasm: Option<PathBuf>,

    /// Directory of `podgate-cli-<os>-<arch>` binaries (e.g. `podgate-cli-linux-x86_64`) served
    /// at /api/download/ and installed by install.sh [default: none; the installer says the CLI
    /// is not released yet].
    #[arg(long, env = "PODGATE_CLI_DIR", global = true)]
    pub cli_dir: Option<PathBuf>,

    /// Longest wait, in seconds, before a new capability key signs though some Envoy has not
    /// acknowledged it [default: 5].
    #[arg(long, env = "PODGATE_KEY_PUBLISH_DELAY_SECS", global = true)]
    pub key_publish_delay_secs: Option<u64>,

    /// Seconds a new capability key's identity assertion key is published before the filter
    /// signs with it, so that pods caching the assertion keys (`max-age=60`) have it first (at
    /// most the key overlap) [default: 120].
    #[arg(long, env = "PODGATE_ASSERTION_KEY_DELAY_SECS", global = true)]
    pub assertion_key_delay_secs: Option<u64>,

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
