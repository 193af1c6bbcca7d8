//! Configuration of the identity verifiers: OpenID Connect issuers (`[[oidc]]` tables, or the
//! `firebase_project` / `oidc_issuer` shortcuts), the main app's session endpoint
//! (`[app_session]`), browser origins allowed to call `/v1/capabilities` (`cors_origins`), and
//! where the client address of rate limits comes from (`client_ip_header`). Everything is checked
//! once at start with a message that says how to fix it.

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;
use podgate_protocol::cookie::valid_cookie_name;
use serde::Deserialize;
use url::Url;

use crate::config::ConfigError;

/// Firebase's ID-token signing keys (JWKS), the same for every project.
pub const FIREBASE_JWKS_URL: &str =
    "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com";
/// Leeway for `exp`, `iat` and `nbf` of ID tokens unless configured.
pub const DEFAULT_OIDC_LEEWAY: u64 = 60;
/// Longest ID-token lifetime (`exp - iat`) accepted unless configured.
pub const DEFAULT_OIDC_MAX_LIFETIME: u64 = 86_400;
/// Least seconds between two fetches of an issuer's keys unless configured. A token naming a kid
/// we do not know waits for the next fetch, so this is also the longest it waits.
pub const DEFAULT_MIN_REFRESH_SECS: u64 = 5;
/// Most seconds allowed between two fetches (a token signed with a new key waits up to that).
pub const MAX_MIN_REFRESH_SECS: u64 = 10;
/// Default JSON pointers into NextAuth's `GET /api/auth/session` answer.
pub const DEFAULT_APP_SESSION_USER_ID: &str = "/user/id";
pub const DEFAULT_APP_SESSION_EMAIL: &str = "/user/email";
/// NextAuth's session cookies (https first).
pub const DEFAULT_APP_SESSION_COOKIES: &[&str] = &[
    "__Secure-next-auth.session-token",
    "next-auth.session-token",
];
pub const DEFAULT_APP_SESSION_CACHE_SECS: u64 = 5;
pub const DEFAULT_APP_SESSION_TIMEOUT_MS: u64 = 3000;

/// One `[[oidc]]` table of the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSettings {
    /// Short name: logs, the `verifier` recorded for users, `oidc:NAME`.
    pub name: String,
    /// Exact `iss` of the ID tokens (no trailing-slash normalisation: Auth0's ends with `/`).
    pub issuer: String,
    /// The client id the ID tokens must be for (their `aud`), or a list of client ids of this
    /// issuer that podgate trusts (e.g. a web and a CLI client of one Google project); Firebase:
    /// the project id.
    pub audience: ClientIds,
    /// Where the signing keys are; without it they come from the discovery document.
    pub jwks_url: Option<String>,
    /// Discovery document [default: ISSUER/.well-known/openid-configuration].
    pub discovery_url: Option<String>,
    /// Cookie that carries the ID token for browsers (optional; bearer works without it).
    pub cookie: Option<String>,
    /// Claim with the user's stable id [default: sub].
    pub subject_claim: Option<String>,
    /// Claim with the user's email [default: email]; used only when `email_verified` is JSON
    /// `true` (see `require_email_verified`).
    pub email_claim: Option<String>,
    /// Take the email only when the token says `email_verified: true` [default: true]. With
    /// false, an email is also taken when the token has no `email_verified` claim at all (for
    /// providers that never send it); a claim that is present and not JSON `true` (false,
    /// "true", 1) still means not verified.
    pub require_email_verified: Option<bool>,
    /// Prefix of ids of users created on first sign-in [default: none].
    pub user_prefix: Option<String>,
    /// Allowed algorithms [default: RS256 and ES256].
    pub algorithms: Option<Vec<String>>,
    /// Clock leeway in seconds [default: 60].
    pub leeway_secs: Option<u64>,
    /// Longest `exp - iat` accepted [default: 86400].
    pub max_lifetime_secs: Option<u64>,
    /// Allow plain-http issuer and key URLs that are not loopback (never in production).
    pub allow_insecure_http: Option<bool>,
    /// Least seconds between two fetches of the keys; a token naming an unknown kid waits for
    /// the next fetch, so at most 10 [default: 5].
    pub min_refresh_secs: Option<u64>,
}

/// The client ids of one issuer: `audience = "id"` or `audience = ["web-id", "cli-id"]` in the
/// file; `PODGATE_OIDC_AUDIENCE` takes them comma-separated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIds(pub Vec<String>);

impl From<&str> for ClientIds {
    fn from(s: &str) -> Self {
        ClientIds(vec![s.to_owned()])
    }
}

impl From<String> for ClientIds {
    fn from(s: String) -> Self {
        ClientIds(vec![s])
    }
}

impl From<Vec<String>> for ClientIds {
    fn from(v: Vec<String>) -> Self {
        ClientIds(v)
    }
}

impl<'de> Deserialize<'de> for ClientIds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "audience must be a client id (a string) or a list of client ids, e.g. audience = [\"web-client\", \"cli-client\"]",
            )
        })? {
            OneOrMany::One(s) => ClientIds(vec![s]),
            OneOrMany::Many(v) => ClientIds(v),
        })
    }
}

/// `[app_session]`: the main app's session endpoint (NextAuth's shape by default).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSessionSettings {
    /// The main app's session endpoint, e.g. https://app.example.dev/api/auth/session.
    #[arg(
        long = "app-session-url",
        env = "PODGATE_APP_SESSION_URL",
        global = true
    )]
    pub url: Option<String>,
    /// Session cookie names forwarded to it, comma-separated
    /// [default: __Secure-next-auth.session-token,next-auth.session-token].
    #[arg(
        long = "app-session-cookie",
        env = "PODGATE_APP_SESSION_COOKIE",
        global = true,
        value_delimiter = ','
    )]
    pub cookie: Option<Vec<String>>,
    /// JSON pointer to the user id in the answer [default: /user/id].
    #[arg(
        long = "app-session-user-id-pointer",
        env = "PODGATE_APP_SESSION_USER_ID_POINTER",
        global = true
    )]
    pub user_id_pointer: Option<String>,
    /// JSON pointer to the email in the answer [default: /user/email].
    #[arg(
        long = "app-session-email-pointer",
        env = "PODGATE_APP_SESSION_EMAIL_POINTER",
        global = true
    )]
    pub email_pointer: Option<String>,
    /// Seconds an answer is reused for the same cookie [default: 5; 0 disables].
    #[arg(
        long = "app-session-cache-secs",
        env = "PODGATE_APP_SESSION_CACHE_SECS",
        global = true
    )]
    pub cache_secs: Option<u64>,
    /// Milliseconds to wait for the endpoint [default: 3000].
    #[arg(
        long = "app-session-timeout-ms",
        env = "PODGATE_APP_SESSION_TIMEOUT_MS",
        global = true
    )]
    pub timeout_ms: Option<u64>,
    /// Prefix of ids of users created on first sign-in [default: none].
    #[arg(
        long = "app-session-user-prefix",
        env = "PODGATE_APP_SESSION_USER_PREFIX",
        global = true
    )]
    pub user_prefix: Option<String>,
    /// Allow a plain-http session URL that is not loopback.
    #[arg(
        long = "app-session-allow-insecure-http",
        env = "PODGATE_APP_SESSION_ALLOW_INSECURE_HTTP",
        global = true
    )]
    pub allow_insecure_http: Option<bool>,
}

impl AppSessionSettings {
    pub fn or(self, o: AppSessionSettings) -> AppSessionSettings {
        AppSessionSettings {
            url: self.url.or(o.url),
            cookie: self.cookie.or(o.cookie),
            user_id_pointer: self.user_id_pointer.or(o.user_id_pointer),
            email_pointer: self.email_pointer.or(o.email_pointer),
            cache_secs: self.cache_secs.or(o.cache_secs),
            timeout_ms: self.timeout_ms.or(o.timeout_ms),
            user_prefix: self.user_prefix.or(o.user_prefix),
            allow_insecure_http: self.allow_insecure_http.or(o.allow_insecure_http),
        }
    }
}

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Jwks(Url),
    Discovery(Url),
}

/// An algorithm an ID token may use. The key fixes which one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdTokenAlg {
    Rs256,
    Es256,
}

impl IdTokenAlg {
    pub fn name(self) -> &'static str {
        match self {
            IdTokenAlg::Rs256 => "RS256",
            IdTokenAlg::Es256 => "ES256",
        }
    }
    pub fn parse(s: &str) -> Option<IdTokenAlg> {
        match s {
            "RS256" => Some(IdTokenAlg::Rs256),
            "ES256" => Some(IdTokenAlg::Es256),
            _ => None,
        }
    }
}

/// A checked OpenID Connect issuer.
#[derive(Debug, Clone)]
pub struct OidcProvider {
    pub name: String,
    pub issuer: String,
    /// The client ids of this issuer that podgate trusts (never empty): an ID token's `aud` must
    /// list one of them and nothing else, and its `azp`, when present, must be one of them.
    pub client_ids: Vec<String>,
    pub keys: KeySource,
    pub cookie: Option<String>,
    pub subject_claim: String,
    pub email_claim: String,
    pub require_email_verified: bool,
    pub user_prefix: String,
    pub algorithms: Vec<IdTokenAlg>,
    pub leeway: i64,
    pub max_lifetime: i64,
    pub allow_insecure_http: bool,
    pub min_refresh: Duration,
}

impl OidcProvider {
    /// The name recorded with users and in logs: `oidc:NAME`.
    pub fn verifier(&self) -> String {
        format!("oidc:{}", self.name)
    }
}

/// A checked main-app session verifier.
#[derive(Debug, Clone)]
pub struct AppSessionConfig {
    pub url: Url,
    pub cookies: Vec<String>,
    pub user_id_pointer: String,
    pub email_pointer: String,
    pub cache: Duration,
    pub timeout: Duration,
    pub user_prefix: String,
}

/// Everything the verifiers need, checked.
#[derive(Debug, Clone, Default)]
pub struct IdentityConfig {
    pub oidc: Vec<OidcProvider>,
    pub app_session: Option<AppSessionConfig>,
    /// Origins (scheme://host[:port]) allowed to call `/v1/capabilities` from a browser.
    pub cors_origins: Vec<String>,
    /// Request header with the client address (set by a trusted proxy), for rate limits.
    pub client_ip_header: Option<String>,
}

/// The identity settings as read from flags, environment and the file.
#[derive(Debug, Clone, Default)]
pub struct IdentityInputs {
    pub oidc: Vec<OidcSettings>,
    pub firebase_project: Option<String>,
    pub oidc_issuer: Option<String>,
    pub oidc_audience: Option<String>,
    pub app_session: AppSessionSettings,
    pub cors_origins: Option<Vec<String>>,
    pub client_ip_header: Option<String>,
}

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Whether a URL's host is a loopback address (tests and local stacks may use plain http).
pub fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        None => false,
    }
}

/// Parses a URL that podgate fetches: https, or http on loopback, or http when allowed.
pub fn fetch_url(u: &str, what: &str, insecure_ok: bool, fix: &str) -> Result<Url, ConfigError> {
    let parsed =
        Url::parse(u).map_err(|e| bad(format!("{what} {u:?} is not a URL ({e}); {fix}")))?;
    if parsed.host_str().is_none() || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(format!(
            "{what} {u:?} must be an absolute URL with a host and no user info; {fix}"
        )));
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if insecure_ok || is_loopback(&parsed) => Ok(parsed),
        "http" => Err(bad(format!(
            "{what} {u:?} is plain http: ID tokens and sessions must be checked over https (http is allowed for loopback addresses, or with allow_insecure_http = true for tests); {fix}"
        ))),
        other => Err(bad(format!(
            "{what} {u:?} has scheme {other:?}; use https; {fix}"
        ))),
    }
}

fn check_prefix(prefix: &str, whose: &str) -> Result<(), ConfigError> {
    let ok = prefix.len() <= 32
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && prefix
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "user_prefix {prefix:?} of {whose} is not valid; use up to 32 characters of A-Z, a-z, 0-9, '.', '_', '-', starting with a letter or digit, e.g. \"fb-\""
        )))
    }
}

fn check_pointer(p: &str, what: &str) -> Result<(), ConfigError> {
    if p.is_empty() || p.starts_with('/') {
        Ok(())
    } else {
        Err(bad(format!(
            "app_session.{what} {p:?} is not a JSON pointer; it starts with '/', e.g. /user/id"
        )))
    }
}

/// Checks one issuer. `shortcut` names the flags that made the entry when it is not an `[[oidc]]`
/// table of the file, so the messages point at what the operator actually set.
fn resolve_oidc(
    s: OidcSettings,
    shortcut: Option<&str>,
    reserved: &[&str],
) -> Result<OidcProvider, ConfigError> {
    let name = s.name;
    let valid_name = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid_name {
        return Err(bad(format!(
            "[[oidc]] name {name:?} is not valid; use 1-32 characters of a-z, 0-9, '-', '_', e.g. name = \"firebase\""
        )));
    }
    let whose = shortcut.map_or_else(|| format!("[[oidc]] {name:?}"), str::to_owned);
    let fix = match shortcut {
        None => format!("fix {whose}"),
        Some(_) => format!(
            "fix {whose} (allow_insecure_http and the other settings need an [[oidc]] table in the config file)"
        ),
    };
    let insecure = s.allow_insecure_http.unwrap_or(false);
    if s.issuer.is_empty() {
        return Err(bad(format!(
            "{whose} has no issuer; set issuer to the exact `iss` of its ID tokens, e.g. https://securetoken.google.com/PROJECT"
        )));
    }
    let issuer_url = fetch_url(&s.issuer, "OIDC issuer", insecure, &fix)?;
    let mut client_ids: Vec<String> = Vec::new();
    for id in s.audience.0 {
        let id = id.trim().to_owned();
        if id.is_empty() {
            continue;
        }
        if id.len() > 255 || id.chars().any(char::is_control) {
            return Err(bad(format!(
                "{whose}: audience {id:?} is not a client id (up to 255 characters, no control characters); copy the client id from the provider's console"
            )));
        }
        if !client_ids.contains(&id) {
            client_ids.push(id);
        }
    }
    if client_ids.is_empty() {
        return Err(bad(format!(
            "{whose} has no audience; set audience to your OAuth client id, or a list of this issuer's client ids, e.g. audience = [\"web-client\", \"cli-client\"] (Firebase: the project id)"
        )));
    }
    let keys = match (s.jwks_url, s.discovery_url) {
        (Some(_), Some(_)) => {
            return Err(bad(format!(
                "[[oidc]] {name:?} sets both jwks_url and discovery_url; keep one"
            )))
        }
        (Some(j), None) => KeySource::Jwks(fetch_url(&j, "OIDC jwks_url", insecure, &fix)?),
        (None, Some(d)) => {
            KeySource::Discovery(fetch_url(&d, "OIDC discovery_url", insecure, &fix)?)
        }
        (None, None) => {
            let base = issuer_url.as_str().trim_end_matches('/');
            let d = format!("{base}/.well-known/openid-configuration");
            KeySource::Discovery(fetch_url(&d, "OIDC discovery URL", insecure, &fix)?)
        }
    };
    if let Some(c) = &s.cookie {
        if !valid_cookie_name(c) {
            return Err(bad(format!(
                "[[oidc]] {name:?}: cookie {c:?} is not a valid cookie name"
            )));
        }
        if reserved.contains(&c.as_str()) {
            return Err(bad(format!(
                "[[oidc]] {name:?}: cookie {c:?} is podgate's own cookie; name the cookie your app stores the ID token in"
            )));
        }
    }
    let algorithms = match s.algorithms {
        None => vec![IdTokenAlg::Rs256, IdTokenAlg::Es256],
        Some(list) if list.is_empty() => {
            return Err(bad(format!(
                "[[oidc]] {name:?}: algorithms is empty; leave it out for RS256 and ES256"
            )))
        }
        Some(list) => list
            .iter()
            .map(|a| {
                IdTokenAlg::parse(a).ok_or_else(|| {
                    bad(format!(
                        "[[oidc]] {name:?}: algorithm {a:?} is not supported; use RS256 and/or ES256 (none and HS* are never accepted for ID tokens)"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let user_prefix = s.user_prefix.unwrap_or_default();
    check_prefix(&user_prefix, &format!("[[oidc]] {name:?}"))?;
    let subject_claim = s.subject_claim.unwrap_or_else(|| "sub".to_owned());
    let email_claim = s.email_claim.unwrap_or_else(|| "email".to_owned());
    if subject_claim.is_empty() || email_claim.is_empty() {
        return Err(bad(format!(
            "[[oidc]] {name:?}: subject_claim and email_claim must not be empty (defaults: sub, email)"
        )));
    }
    let leeway = s.leeway_secs.unwrap_or(DEFAULT_OIDC_LEEWAY);
    if leeway > 300 {
        return Err(bad(format!(
            "[[oidc]] {name:?}: leeway_secs {leeway} is more than 300; clocks should agree within a minute"
        )));
    }
    let max_lifetime = s.max_lifetime_secs.unwrap_or(DEFAULT_OIDC_MAX_LIFETIME);
    if !(60..=7 * 86_400).contains(&max_lifetime) {
        return Err(bad(format!(
            "[[oidc]] {name:?}: max_lifetime_secs {max_lifetime} is outside 60..=604800"
        )));
    }
    let min_refresh = s.min_refresh_secs.unwrap_or(DEFAULT_MIN_REFRESH_SECS);
    if !(1..=MAX_MIN_REFRESH_SECS).contains(&min_refresh) {
        return Err(bad(format!(
            "[[oidc]] {name:?}: min_refresh_secs {min_refresh} is outside 1..={MAX_MIN_REFRESH_SECS}: a token signed with the issuer's new key waits up to that long for the keys to be fetched again; leave it out for {DEFAULT_MIN_REFRESH_SECS}"
        )));
    }
    Ok(OidcProvider {
        name,
        issuer: s.issuer,
        client_ids,
        keys,
        cookie: s.cookie,
        subject_claim,
        email_claim,
        require_email_verified: s.require_email_verified.unwrap_or(true),
        user_prefix,
        algorithms,
        leeway: leeway as i64,
        max_lifetime: max_lifetime as i64,
        allow_insecure_http: insecure,
        min_refresh: Duration::from_secs(min_refresh),
    })
}

fn resolve_app_session(
    s: AppSessionSettings,
    reserved: &[&str],
) -> Result<Option<AppSessionConfig>, ConfigError> {
    let Some(url) = s.url else {
        if s.cookie.is_some() || s.user_id_pointer.is_some() || s.email_pointer.is_some() {
            return Err(bad(
                "app_session settings are given but no app_session.url; set PODGATE_APP_SESSION_URL to the main app's session endpoint, e.g. https://app.example.dev/api/auth/session",
            ));
        }
        return Ok(None);
    };
    let fix = "set PODGATE_APP_SESSION_URL (or app_session.url), e.g. https://app.example.dev/api/auth/session";
    let url = fetch_url(
        &url,
        "app session URL",
        s.allow_insecure_http.unwrap_or(false),
        fix,
    )?;
    let cookies = match s.cookie {
        Some(list) => list
            .into_iter()
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>(),
        None => DEFAULT_APP_SESSION_COOKIES
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
    };
    if cookies.is_empty() {
        return Err(bad(
            "app_session.cookie is empty; name the main app's session cookie, e.g. next-auth.session-token",
        ));
    }
    for c in &cookies {
        if !valid_cookie_name(c) || reserved.contains(&c.as_str()) {
            return Err(bad(format!(
                "app_session.cookie {c:?} is not a valid cookie name of the main app; e.g. next-auth.session-token"
            )));
        }
    }
    let user_id_pointer = s
        .user_id_pointer
        .unwrap_or_else(|| DEFAULT_APP_SESSION_USER_ID.to_owned());
    if user_id_pointer.is_empty() {
        return Err(bad(
            "app_session.user_id_pointer is empty; point it at the user id, e.g. /user/id",
        ));
    }
    check_pointer(&user_id_pointer, "user_id_pointer")?;
    let email_pointer = s
        .email_pointer
        .unwrap_or_else(|| DEFAULT_APP_SESSION_EMAIL.to_owned());
    check_pointer(&email_pointer, "email_pointer")?;
    let cache_secs = s.cache_secs.unwrap_or(DEFAULT_APP_SESSION_CACHE_SECS);
    if cache_secs > 60 {
        return Err(bad(format!(
            "app_session.cache_secs {cache_secs} is more than 60: a signed-out user would keep access that long; use a few seconds"
        )));
    }
    let timeout_ms = s.timeout_ms.unwrap_or(DEFAULT_APP_SESSION_TIMEOUT_MS);
    if !(100..=30_000).contains(&timeout_ms) {
        return Err(bad(format!(
            "app_session.timeout_ms {timeout_ms} is outside 100..=30000"
        )));
    }
    let user_prefix = s.user_prefix.unwrap_or_default();
    check_prefix(&user_prefix, "app_session")?;
    Ok(Some(AppSessionConfig {
        url,
        cookies,
        user_id_pointer,
        email_pointer,
        cache: Duration::from_secs(cache_secs),
        timeout: Duration::from_millis(timeout_ms),
        user_prefix,
    }))
}

/// Checks every identity setting. `reserved` are podgate's own cookie names.
pub fn resolve(inputs: IdentityInputs, reserved: &[&str]) -> Result<IdentityConfig, ConfigError> {
    let mut settings = inputs.oidc;
    let from_file = settings.len();
    if let Some(project) = inputs.firebase_project {
        let ok = !project.is_empty()
            && project.len() <= 64
            && project
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(bad(format!(
                "firebase project {project:?} is not a Firebase project id (a-z, 0-9, '-'); set PODGATE_FIREBASE_PROJECT to the id shown in the Firebase console"
            )));
        }
        settings.push(OidcSettings {
            name: "firebase".into(),
            issuer: format!("https://securetoken.google.com/{project}"),
            audience: project.into(),
            jwks_url: Some(FIREBASE_JWKS_URL.into()),
            ..OidcSettings::default()
        });
    }
    match (inputs.oidc_issuer, inputs.oidc_audience) {
        // Several client ids of the issuer come comma-separated.
        (Some(issuer), Some(audience)) => settings.push(OidcSettings {
            name: "oidc".into(),
            issuer,
            audience: ClientIds(audience.split(',').map(str::to_owned).collect()),
            ..OidcSettings::default()
        }),
        (None, None) => {}
        _ => {
            return Err(bad(
                "PODGATE_OIDC_ISSUER and PODGATE_OIDC_AUDIENCE go together; set both (the issuer's discovery document gives the keys), or use [[oidc]] tables in the config file",
            ))
        }
    }
    let mut oidc = Vec::with_capacity(settings.len());
    for (i, s) in settings.into_iter().enumerate() {
        let shortcut = (i >= from_file).then_some(match s.name.as_str() {
            "firebase" => "PODGATE_FIREBASE_PROJECT (--firebase-project)",
            _ => "PODGATE_OIDC_ISSUER and PODGATE_OIDC_AUDIENCE (--oidc-issuer, --oidc-audience; several client ids comma-separated)",
        });
        let p = resolve_oidc(s, shortcut, reserved)?;
        if oidc.iter().any(|o: &OidcProvider| o.name == p.name) {
            return Err(bad(format!(
                "two identity providers are named {:?}; give each [[oidc]] entry its own name (firebase_project adds one named \"firebase\", oidc_issuer one named \"oidc\")",
                p.name
            )));
        }
        if oidc.iter().any(|o: &OidcProvider| o.issuer == p.issuer) {
            return Err(bad(format!(
                "two identity providers have the issuer {:?}; keep one [[oidc]] entry for it and list every client id in its audience, e.g. audience = [\"web-client\", \"cli-client\"] (an issuer set by PODGATE_OIDC_ISSUER or PODGATE_FIREBASE_PROJECT counts as an entry too)",
                p.issuer
            )));
        }
        oidc.push(p);
    }
    let app_session = resolve_app_session(inputs.app_session, reserved)?;

    let mut cors_origins = Vec::new();
    for o in inputs.cors_origins.unwrap_or_default() {
        let o = o.trim();
        if o.is_empty() {
            continue;
        }
        let parsed = Url::parse(o).map_err(|e| {
            bad(format!(
                "CORS origin {o:?} is not a URL ({e}); set PODGATE_CORS_ORIGINS to origins like https://app.example.dev"
            ))
        })?;
        let origin = parsed.origin().ascii_serialization();
        if !matches!(parsed.scheme(), "http" | "https") || origin != o.trim_end_matches('/') {
            return Err(bad(format!(
                "CORS origin {o:?} is not a bare origin; use scheme://host[:port] without a path, e.g. https://app.example.dev"
            )));
        }
        cors_origins.push(origin);
    }

    let client_ip_header = match inputs.client_ip_header {
        Some(h) if h.is_empty() => None,
        Some(h) => {
            let lower = h.to_ascii_lowercase();
            if axum::http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                return Err(bad(format!(
                    "client IP header {h:?} is not a header name; e.g. x-envoy-external-address"
                )));
            }
            Some(lower)
        }
        None => None,
    };

    // Users are found by (verifier, subject); the prefixes only keep the ids of users created on
    // first sign-in apart, so a subject of one issuer can never name another issuer's user.
    let mut prefixes: Vec<&str> = oidc.iter().map(|p| p.user_prefix.as_str()).collect();
    if let Some(a) = &app_session {
        prefixes.push(a.user_prefix.as_str());
    }
    let mut sorted = prefixes.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != prefixes.len() {
        tracing::warn!(
            "several identity verifiers share a user_prefix: a user created by one may be linked to the same id as a subject of another; set user_prefix per [[oidc]] entry when the issuers are not one user base"
        );
    }

    Ok(IdentityConfig {
        oidc,
        app_session,
        cors_origins,
        client_ip_header,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn inputs() -> IdentityInputs {
        IdentityInputs::default()
    }

    fn oidc(name: &str, issuer: &str) -> OidcSettings {
        OidcSettings {
            name: name.into(),
            issuer: issuer.into(),
            audience: "client".into(),
            ..OidcSettings::default()
        }
    }

    #[test]
    fn firebase_shortcut() {
        let c = resolve(
            IdentityInputs {
                firebase_project: Some("my-project".into()),
                ..inputs()
            },
            &[],
        )
        .unwrap();
        let p = &c.oidc[0];
        assert_eq!(p.issuer, "https://securetoken.google.com/my-project");
        assert_eq!(p.client_ids, vec!["my-project".to_owned()]);
        assert_eq!(
            p.keys,
            KeySource::Jwks(Url::parse(FIREBASE_JWKS_URL).unwrap())
        );
        assert_eq!(p.verifier(), "oidc:firebase");
    }

    #[test]
    fn discovery_is_the_default() {
        let c = resolve(
            IdentityInputs {
                oidc: vec![oidc("auth0", "https://tenant.auth0.com/")],
                ..inputs()
            },
            &[],
        )
        .unwrap();
        assert_eq!(
            c.oidc[0].keys,
            KeySource::Discovery(
                Url::parse("https://tenant.auth0.com/.well-known/openid-configuration").unwrap()
            )
        );
    }

    #[test]
    fn bad_settings_say_how_to_fix_them() {
        let cases: Vec<(IdentityInputs, &str)> = vec![
            (
                IdentityInputs {
                    oidc: vec![oidc("x", "http://idp.example.dev")],
                    ..inputs()
                },
                "plain http",
            ),
            (
                IdentityInputs {
                    oidc: vec![oidc("Bad Name", "https://idp.example.dev")],
                    ..inputs()
                },
                "name",
            ),
            (
                IdentityInputs {
                    oidc: vec![OidcSettings {
                        audience: String::new().into(),
                        ..oidc("x", "https://idp.example.dev")
                    }],
                    ..inputs()
                },
                "audience",
            ),
            (
                IdentityInputs {
                    oidc: vec![OidcSettings {
                        algorithms: Some(vec!["HS256".into()]),
                        ..oidc("x", "https://idp.example.dev")
                    }],
                    ..inputs()
                },
                "never accepted",
            ),
            (
                IdentityInputs {
                    oidc: vec![
                        oidc("a", "https://idp.example.dev"),
                        oidc("a", "https://idp2.example.dev"),
                    ],
                    ..inputs()
                },
                "named",
            ),
            (
                IdentityInputs {
                    oidc: vec![OidcSettings {
                        cookie: Some("podgate_session".into()),
                        ..oidc("x", "https://idp.example.dev")
                    }],
                    ..inputs()
                },
                "podgate's own cookie",
            ),
            (
                IdentityInputs {
                    firebase_project: Some("My Project".into()),
                    ..inputs()
                },
                "PODGATE_FIREBASE_PROJECT",
            ),
            (
                IdentityInputs {
                    oidc_issuer: Some("https://accounts.google.com".into()),
                    ..inputs()
                },
                "go together",
            ),
            (
                IdentityInputs {
                    app_session: AppSessionSettings {
                        url: Some("http://app.example.dev/api/auth/session".into()),
                        ..AppSessionSettings::default()
                    },
                    ..inputs()
                },
                "plain http",
            ),
            (
                IdentityInputs {
                    app_session: AppSessionSettings {
                        cookie: Some(vec!["sid".into()]),
                        ..AppSessionSettings::default()
                    },
                    ..inputs()
                },
                "PODGATE_APP_SESSION_URL",
            ),
            (
                IdentityInputs {
                    app_session: AppSessionSettings {
                        url: Some("https://app.example.dev/api/auth/session".into()),
                        user_id_pointer: Some("user.id".into()),
                        ..AppSessionSettings::default()
                    },
                    ..inputs()
                },
                "JSON pointer",
            ),
            (
                IdentityInputs {
                    app_session: AppSessionSettings {
                        url: Some("https://app.example.dev/api/auth/session".into()),
                        cache_secs: Some(600),
                        ..AppSessionSettings::default()
                    },
                    ..inputs()
                },
                "signed-out",
            ),
            (
                IdentityInputs {
                    cors_origins: Some(vec!["https://app.example.dev/path".into()]),
                    ..inputs()
                },
                "bare origin",
            ),
        ];
        for (i, needle) in cases {
            let msg = resolve(i, &["podgate_session"]).unwrap_err().to_string();
            assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
        }
    }

    #[test]
    fn toml_file_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podgate.toml");
        std::fs::write(
            &path,
            r#"
dev_mode = true
admin_token = "0123456789abcdef0123456789abcdef"
xds_listen = "off"
cors_origins = ["https://app.example.dev"]

[[oidc]]
name = "firebase"
issuer = "https://securetoken.google.com/my-project"
audience = "my-project"
jwks_url = "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com"
cookie = "__session"

[[oidc]]
name = "keycloak"
issuer = "https://sso.example.dev/realms/myrealm"
audience = "podgate"
user_prefix = "kc-"

[app_session]
url = "https://app.example.dev/api/auth/session"
cookie = ["next-auth.session-token"]
user_id_pointer = "/user/sub"
"#,
        )
        .unwrap();
        let c = crate::config::Settings {
            config: Some(path.clone()),
            ..crate::config::Settings::default()
        }
        .with_file()
        .unwrap()
        .resolve(crate::config::Need::Server)
        .unwrap();
        let id = &c.identity;
        assert_eq!(id.oidc.len(), 2);
        assert_eq!(id.oidc[0].cookie.as_deref(), Some("__session"));
        assert_eq!(
            id.oidc[1].keys,
            KeySource::Discovery(
                Url::parse(
                    "https://sso.example.dev/realms/myrealm/.well-known/openid-configuration"
                )
                .unwrap()
            )
        );
        let app = id.app_session.as_ref().unwrap();
        assert_eq!(app.user_id_pointer, "/user/sub");
        assert_eq!(app.cookies, vec!["next-auth.session-token".to_owned()]);
        assert_eq!(id.cors_origins, vec!["https://app.example.dev".to_owned()]);

        std::fs::write(&path, "[[oidc]]\nname = \"x\"\nissuer = \"https://i.example.dev\"\naudience = \"a\"\njwks = \"typo\"\n").unwrap();
        let e = crate::config::Settings {
            config: Some(path),
            ..crate::config::Settings::default()
        }
        .with_file()
        .unwrap_err()
        .to_string();
        assert!(e.contains("jwks"), "{e}");
    }

    #[test]
    fn several_client_ids_per_issuer() {
        // The file's list form, its single-id form, and the flag's comma-separated form.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podgate.toml");
        std::fs::write(
            &path,
            r#"
dev_mode = true
admin_token = "0123456789abcdef0123456789abcdef"
xds_listen = "off"

[[oidc]]
name = "google"
issuer = "https://accounts.google.com"
audience = ["web.apps.googleusercontent.com", " cli.apps.googleusercontent.com ", "web.apps.googleusercontent.com"]

[[oidc]]
name = "one"
issuer = "https://one.example.dev"
audience = "only"
"#,
        )
        .unwrap();
        let c = crate::config::Settings {
            config: Some(path.clone()),
            ..crate::config::Settings::default()
        }
        .with_file()
        .unwrap()
        .resolve(crate::config::Need::Server)
        .unwrap();
        assert_eq!(
            c.identity.oidc[0].client_ids,
            vec![
                "web.apps.googleusercontent.com".to_owned(),
                "cli.apps.googleusercontent.com".to_owned()
            ]
        );
        assert_eq!(c.identity.oidc[1].client_ids, vec!["only".to_owned()]);
        assert!(c.identity.oidc[0].require_email_verified);

        std::fs::write(
            &path,
            "[[oidc]]\nname = \"x\"\nissuer = \"https://i.example.dev\"\naudience = 5\n",
        )
        .unwrap();
        let e = crate::config::Settings {
            config: Some(path),
            ..crate::config::Settings::default()
        }
        .with_file()
        .unwrap_err()
        .to_string();
        assert!(e.contains("list of client ids"), "{e}");

        let c = resolve(
            IdentityInputs {
                oidc_issuer: Some("https://sso.example.dev".into()),
                oidc_audience: Some("web, cli".into()),
                ..inputs()
            },
            &[],
        )
        .unwrap();
        assert_eq!(
            c.oidc[0].client_ids,
            vec!["web".to_owned(), "cli".to_owned()]
        );
    }

    #[test]
    fn advice_names_what_the_operator_set() {
        // Two entries for one issuer: the advice (one entry, every client id in its audience)
        // can be followed now.
        let msg = resolve(
            IdentityInputs {
                oidc: vec![
                    oidc("web", "https://accounts.google.com"),
                    oidc("cli", "https://accounts.google.com"),
                ],
                ..inputs()
            },
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("audience = ["), "{msg}");
        // Made by the environment shortcut: the message names the variables, not a table.
        for (issuer, audience, needle) in [
            ("http://sso.example.dev", "web", "PODGATE_OIDC_ISSUER"),
            ("", "web", "PODGATE_OIDC_ISSUER"),
            ("https://sso.example.dev", " , ", "PODGATE_OIDC_AUDIENCE"),
        ] {
            let msg = resolve(
                IdentityInputs {
                    oidc_issuer: Some(issuer.into()),
                    oidc_audience: Some(audience.into()),
                    ..inputs()
                },
                &[],
            )
            .unwrap_err()
            .to_string();
            assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
            assert!(!msg.contains("[[oidc]] \"oidc\""), "{msg}");
        }
        // The refetch interval is bounded: a rotated-in key waits up to it.
        for bad in [0, 11, 30] {
            let msg = resolve(
                IdentityInputs {
                    oidc: vec![OidcSettings {
                        min_refresh_secs: Some(bad),
                        ..oidc("x", "https://idp.example.dev")
                    }],
                    ..inputs()
                },
                &[],
            )
            .unwrap_err()
            .to_string();
            assert!(msg.contains("leave it out for 5"), "{msg}");
        }
    }

    #[test]
    fn loopback_http_is_allowed() {
        let c = resolve(
            IdentityInputs {
                oidc: vec![oidc("local", "http://127.0.0.1:9999")],
                app_session: AppSessionSettings {
                    url: Some("http://localhost:3000/api/auth/session".into()),
                    ..AppSessionSettings::default()
                },
                cors_origins: Some(vec!["http://localhost:3000".into()]),
                ..inputs()
            },
            &[],
        )
        .unwrap();
        assert_eq!(c.oidc.len(), 1);
        let a = c.app_session.unwrap();
        assert_eq!(a.cookies.len(), 2);
        assert_eq!(a.user_id_pointer, "/user/id");
        assert_eq!(c.cors_origins, vec!["http://localhost:3000".to_owned()]);
    }
}
