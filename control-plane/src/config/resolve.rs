//! Defaults and checks: [`Settings::resolve`] turns the merged settings into a [`Config`], each
//! bad or missing setting refused with a message that says how to fix it.

use std::net::SocketAddr;
use std::path::PathBuf;

use podgate_protocol::assertion::DEFAULT_ASSERTION_LIFETIME_SECS;
use podgate_protocol::host::{HostTemplate, PublicHosts, ServiceTemplate};
use podgate_protocol::token::MAX_ASSERTION_LIFETIME_SECS;

use crate::config::{
    bad, idp, limits, Config, ConfigError, EnvoyTls, LogFormat, SameSite, Scheme, Settings,
    SigningAlg, StartHook, XdsConfig,
};

/// Fewest seconds between two start hook calls for one pod unless configured.
pub const DEFAULT_START_HOOK_INTERVAL_SECS: u64 = 30;
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
/// Base name of the cookie that binds a sign-in under way to the browser that started it.
pub const SIGN_IN_COOKIE: &str = "podgate_signin";
/// How long a rotated-out key keeps verifying, unless configured.
pub const DEFAULT_KEY_OVERLAP: u64 = 3600;
/// Default address of the ADS (xDS gRPC) server.
pub const DEFAULT_XDS_LISTEN: &str = "127.0.0.1:18000";
/// Default address of the Envoy-facing HTTP listener, when mutual TLS with Envoy is on.
pub const DEFAULT_ENVOY_LISTEN: &str = "127.0.0.1:8443";
/// Longest wait (seconds) before a new capability key signs though not every Envoy has it.
pub const DEFAULT_KEY_PUBLISH_DELAY: u64 = 5;
/// How long a new assertion key is published before it signs, unless configured: the assertion
/// keys' `max-age` (60 s) twice over, so a pod that fetched them just before a rotation has
/// fetched them again, with the new key, before the first assertion it signs arrives.
pub const DEFAULT_ASSERTION_KEY_DELAY: u64 = 120;
/// Seconds between safety-net rebuilds of the xDS snapshot from the database.
pub const DEFAULT_XDS_RESYNC: u64 = 2;
/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;
/// Longest ticket lifetime accepted.
pub const MAX_TICKET_LIFETIME: u64 = 60;

/// What each command needs beyond the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `serve`: everything.
    Server,
    /// `migrate`, `keys`: the database (and key settings).
    DatabaseOnly,
}

impl Settings {
    /// Applies defaults and checks every setting.
    pub fn resolve(self, need: Need) -> Result<Config, ConfigError> {
        let listen_s = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_s.parse().map_err(|_| {
            bad(format!(
                "listen address {listen_s:?} is not IP:PORT; set --listen / PODGATE_LISTEN, e.g. 127.0.0.1:8080"
            ))
        })?;
        let metrics_listen = self
            .metrics_listen
            .map(|m| {
                m.parse::<SocketAddr>().map_err(|_| {
                    bad(format!(
                        "metrics address {m:?} is not IP:PORT; set --metrics-listen / PODGATE_METRICS_LISTEN, e.g. 127.0.0.1:9090"
                    ))
                })
            })
            .transpose()?;
        if metrics_listen == Some(listen) {
            return Err(bad(format!(
                "--metrics-listen {listen} is the HTTP API's own address; leave it unset to serve /metrics there, or pick another port"
            )));
        }

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

        let renew_secret = match self.renew_secret {
            Some(s) if s.len() < MIN_ADMIN_TOKEN_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(bad(format!(
                    "the renew secret must be at least {MIN_ADMIN_TOKEN_LEN} visible ASCII characters; set PODGATE_RENEW_SECRET to e.g. `openssl rand -hex 32`"
                )))
            }
            given => given,
        };

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

        let service_s = self
            .service_host_template
            .unwrap_or_else(|| podgate_protocol::host::DEFAULT_SERVICE_TEMPLATE.to_owned());
        let service_host_template = ServiceTemplate::new(&service_s, &domain).map_err(|e| {
            bad(format!(
                "service host template {service_s:?} cannot be used: {e}; set PODGATE_SERVICE_HOST_TEMPLATE to one `{{name}}` and a trailing `.{{domain}}`, e.g. svc-{{name}}.{{domain}}"
            ))
        })?;
        let public_hosts = PublicHosts::new(host_template.clone(), Some(service_host_template));

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

        // Whether an identity provider signs people in (checked in full by `idp::resolve`).
        let signs_in = self.oidc.iter().any(|o| o.sign_in.is_some())
            || self.oidc_client_secret.is_some()
            || self.oidc_client_secret_file.is_some()
            || self.oidc_client_key_file.is_some()
            || self.oidc_client_auth.is_some()
            || self.oidc_scopes.is_some()
            || self.oidc_display_name.is_some();
        let login_url = match self.login_url {
            Some(u) => {
                check_http_url(&u, "login URL", "PODGATE_LOGIN_URL", "https://app.example.dev/login")?;
                Some(u)
            }
            // podgate's own sign-in, when a provider is configured for it, before the dev login.
            None if signs_in => Some(format!("{issuer}/auth/login")),
            None if dev_mode => Some(format!("{issuer}/dev/login")),
            None if need == Need::Server => {
                return Err(bad(
                    "no login URL; set PODGATE_LOGIN_URL (or --login-url) to the page where people sign in, e.g. https://app.example.dev/login, configure an identity provider to sign in with ([oidc.sign_in] or PODGATE_OIDC_CLIENT_SECRET), or run with PODGATE_DEV_MODE=true for the dev login",
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
        let assertion_lifetime = self
            .assertion_lifetime_secs
            .unwrap_or(DEFAULT_ASSERTION_LIFETIME_SECS as u64);
        if assertion_lifetime > MAX_ASSERTION_LIFETIME_SECS as u64 {
            return Err(bad(format!(
                "assertion lifetime {assertion_lifetime} s is over {MAX_ASSERTION_LIFETIME_SECS}; set PODGATE_ASSERTION_LIFETIME_SECS, e.g. 60 (0 turns assertions off)"
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
        // Unless given: derived from the key-encryption key, so that every control plane
        // sharing it (replicas on one database must) sends Envoy the same secret, before and
        // after a restart, and those of the previous keys are still taken while a rotation
        // rolls through; without one (dev mode), a secret of this process's own.
        const PURPOSE: &str = "renew secret";
        let (renew_secret, previous_renew_secrets) = match (renew_secret, key_encryption.current())
        {
            (Some(given), _) => (given, Vec::new()),
            (None, Some(kek)) => (
                kek.derived_secret(PURPOSE),
                key_encryption
                    .previous()
                    .iter()
                    .map(|k| k.derived_secret(PURPOSE))
                    .collect(),
            ),
            (None, None) => {
                let mut bytes = [0u8; 32];
                getrandom::getrandom(&mut bytes)
                    .map_err(|e| bad(format!("no randomness for the renew secret: {e}")))?;
                (hex::encode(bytes), Vec::new())
            }
        };

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
        let assertion_key_delay = self
            .assertion_key_delay_secs
            .unwrap_or(DEFAULT_ASSERTION_KEY_DELAY);
        if assertion_key_delay > 3600 {
            return Err(bad(format!(
                "assertion key delay {assertion_key_delay} s is over 3600; set PODGATE_ASSERTION_KEY_DELAY_SECS, e.g. 120"
            )));
        }
        let xds = resolve_xds(
            self.xds_listen.as_deref(),
            self.filter_wasm,
            self.xds_resync_secs,
            need,
        )?;

        let envoy_tls = resolve_envoy_tls(
            self.envoy_tls_cert,
            self.envoy_tls_key,
            self.envoy_client_ca,
            self.envoy_listen.as_deref(),
            need,
        )?;
        if let Some(tls) = &envoy_tls {
            let taken = [
                Some(("--listen", listen)),
                metrics_listen.map(|m| ("--metrics-listen", m)),
                xds.as_ref().map(|x| ("--xds-listen", x.listen)),
            ];
            if let Some((flag, _)) = taken.into_iter().flatten().find(|(_, a)| *a == tls.listen) {
                return Err(bad(format!(
                    "--envoy-listen {} is also {flag}; the Envoy-facing listener needs an address of its own (set PODGATE_ENVOY_LISTEN, e.g. {DEFAULT_ENVOY_LISTEN})",
                    tls.listen
                )));
            }
        }

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

        let identity = idp::resolve(
            idp::IdentityInputs {
                oidc: self.oidc,
                firebase_project: self.firebase_project,
                oidc_issuer: self.oidc_issuer,
                oidc_audience: self.oidc_audience,
                oidc_sign_in: idp::SignInSettings {
                    display_name: self.oidc_display_name,
                    client_id: None,
                    client_secret: self.oidc_client_secret,
                    client_secret_file: self.oidc_client_secret_file,
                    client_auth: self.oidc_client_auth,
                    private_key_file: self.oidc_client_key_file,
                    scopes: self.oidc_scopes,
                    // A config-file setting only (`[oidc.sign_in]`).
                    sign_out_at_provider: None,
                },
                app_session: self.app_session,
                cors_origins: self.cors_origins,
                client_ip_header: self.client_ip_header,
            },
            &[
                SESSION_COOKIE,
                SIGN_IN_COOKIE,
                podgate_protocol::cookie::DEFAULT_COOKIE_NAME,
                &podgate_protocol::cookie::cookie_name(SESSION_COOKIE, true),
                &podgate_protocol::cookie::cookie_name(SIGN_IN_COOKIE, true),
                &podgate_protocol::cookie::cookie_name(
                    podgate_protocol::cookie::DEFAULT_COOKIE_NAME,
                    true,
                ),
            ],
        )?;

        let cli_binaries = match (&self.cli_dir, need) {
            (Some(dir), Need::Server) => crate::config::cli_dir::scan(dir)?,
            _ => Vec::new(),
        };
        let per_user = self
            .edge_rate_per_user
            .as_deref()
            .map(|v| parse_rate("edge-rate-per-user", v))
            .transpose()?;
        let per_pod = self
            .edge_rate_per_pod
            .as_deref()
            .map(|v| parse_rate("edge-rate-per-pod", v))
            .transpose()?;
        let edge_rates =
            (per_user.is_some() || per_pod.is_some()).then(|| podgate_protocol::rate::RateLimits {
                per_user,
                per_pod,
                ..Default::default()
            });
        let concurrent_user =
            check_concurrent("edge-concurrent-per-user", self.edge_concurrent_per_user)?;
        let concurrent_pod =
            check_concurrent("edge-concurrent-per-pod", self.edge_concurrent_per_pod)?;
        let edge_concurrency = (concurrent_user.is_some() || concurrent_pod.is_some()).then(|| {
            podgate_protocol::concurrent::ConcurrencyLimits {
                per_user: concurrent_user,
                per_pod: concurrent_pod,
                ..Default::default()
            }
        });
        let start_hook = resolve_start_hook(
            self.start_hook_url,
            self.start_hook_secret,
            self.start_hook_interval_secs,
        )?;

        Ok(Config {
            listen,
            metrics_listen,
            database_url,
            database_max_connections,
            admin_token,
            renew_secret,
            previous_renew_secrets,
            dev_mode,
            issuer,
            public_scheme,
            domain,
            host_template,
            upstream_host_template,
            host_template_source,
            upstream_host_template_source: upstream_s,
            public_hosts,
            service_host_template_source: service_s,
            pod_public_port,
            login_url,
            capability_lifetime,
            assertion_lifetime,
            ticket_lifetime,
            session_lifetime,
            cookie_samesite,
            signing_alg,
            key_overlap,
            key_encryption,
            log_format,
            identity,
            envoy_tls,
            xds,
            key_publish_delay,
            assertion_key_delay,
            limits,
            cli_binaries,
            start_hook,
            edge_rates,
            edge_concurrency,
        })
    }
}

/// The `--edge-concurrent-*` flag `name`: at least 1 when set.
fn check_concurrent(name: &str, value: Option<u32>) -> Result<Option<u32>, ConfigError> {
    match value {
        Some(0) => Err(bad(format!(
            "--{name} 0 would refuse every request; give at least 1, or leave it unset for no limit"
        ))),
        v => Ok(v),
    }
}

/// `PER_SECOND/BURST` (both at least 1) of the `--edge-rate-*` flag `name`.
fn parse_rate(name: &str, value: &str) -> Result<podgate_protocol::rate::Rate, ConfigError> {
    let parsed = value.split_once('/').and_then(|(rate, burst)| {
        Some(podgate_protocol::rate::Rate {
            per_second: rate.trim().parse().ok()?,
            burst: burst.trim().parse().ok()?,
        })
    });
    match parsed {
        Some(rate) if rate.check().is_ok() => Ok(rate),
        _ => Err(bad(format!(
            "--{name} {value:?} is not PER_SECOND/BURST with both at least 1, e.g. 50/100"
        ))),
    }
}

/// The start hook from its three settings: a URL needs a secret, the others need the URL.
fn resolve_start_hook(
    url: Option<String>,
    secret: Option<String>,
    interval: Option<u64>,
) -> Result<Option<StartHook>, ConfigError> {
    let Some(url) = url else {
        if secret.is_some() || interval.is_some() {
            return Err(bad(
                "a start hook secret or interval without a start hook URL; set PODGATE_START_HOOK_URL too, or neither",
            ));
        }
        return Ok(None);
    };
    let parsed = url::Url::parse(&url.replace("{pod}", "pod"))
        .map_err(|e| bad(format!("the start hook URL {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad(format!(
            "the start hook URL {url:?} must be an absolute http(s) URL, e.g. https://platform.internal/pods/{{pod}}/start"
        )));
    }
    let secret = match secret {
        Some(s) if s.len() >= MIN_ADMIN_TOKEN_LEN && s.bytes().all(|b| b.is_ascii_graphic()) => s,
        _ => {
            return Err(bad(format!(
                "the start hook needs a secret of at least {MIN_ADMIN_TOKEN_LEN} visible ASCII characters; set PODGATE_START_HOOK_SECRET to e.g. `openssl rand -hex 32`"
            )))
        }
    };
    let interval_secs = match interval {
        Some(0) => return Err(bad("the start hook interval must be at least 1 second")),
        Some(n) => n,
        None => DEFAULT_START_HOOK_INTERVAL_SECS,
    };
    Ok(Some(StartHook {
        url,
        secret,
        interval_secs,
    }))
}

/// Mutual TLS with Envoy: the three files together or none; the Envoy-facing listener only
/// with them (a plaintext one would add nothing to the API's own listener).
fn resolve_envoy_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    listen: Option<&str>,
    need: Need,
) -> Result<Option<EnvoyTls>, ConfigError> {
    if need != Need::Server {
        return Ok(None);
    }
    let (cert, key, client_ca) = match (cert, key, client_ca) {
        (None, None, None) => {
            if let Some(l) = listen {
                return Err(bad(format!(
                    "--envoy-listen {l:?} without mutual TLS; set PODGATE_ENVOY_TLS_CERT, PODGATE_ENVOY_TLS_KEY and PODGATE_ENVOY_CLIENT_CA too (`podgate tls gen-test-certs DIR` makes a test set), or leave PODGATE_ENVOY_LISTEN unset"
                )));
            }
            return Ok(None);
        }
        (Some(cert), Some(key), Some(client_ca)) => (cert, key, client_ca),
        (cert, key, ca) => {
            let missing: Vec<&str> = [
                (cert.is_none(), "PODGATE_ENVOY_TLS_CERT (--envoy-tls-cert)"),
                (key.is_none(), "PODGATE_ENVOY_TLS_KEY (--envoy-tls-key)"),
                (ca.is_none(), "PODGATE_ENVOY_CLIENT_CA (--envoy-client-ca)"),
            ]
            .into_iter()
            .filter_map(|(gone, name)| gone.then_some(name))
            .collect();
            return Err(bad(format!(
                "mutual TLS with Envoy needs a server certificate, its key and the client CA together; missing {}",
                missing.join(" and ")
            )));
        }
    };
    let listen_s = listen.unwrap_or(DEFAULT_ENVOY_LISTEN);
    let listen: SocketAddr = listen_s.parse().map_err(|_| {
        bad(format!(
            "Envoy-facing address {listen_s:?} is not IP:PORT; set --envoy-listen / PODGATE_ENVOY_LISTEN, e.g. {DEFAULT_ENVOY_LISTEN}"
        ))
    })?;
    let files = crate::tls::TlsFiles {
        cert,
        key,
        client_ca,
    };
    // Read now, so a bad file is a configuration error at start rather than at the first
    // connection.
    crate::tls::server_config(&files, crate::tls::Alpn::Http).map_err(bad)?;
    Ok(Some(EnvoyTls { listen, files }))
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

/// A database URL with any password replaced, for messages and logs: the one of its user part
/// and any query parameter naming one (`?password=`, `sslpassword=`, as PostgreSQL takes them).
pub fn redact_url(u: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(u) else {
        return u.to_owned();
    };
    let secret = |name: &str| name.to_ascii_lowercase().contains("password");
    let mut changed = false;
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
        changed = true;
    }
    if parsed.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed {
        parsed.to_string()
    } else {
        u.to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
