//! Configuration of the identity verifiers: OpenID Connect issuers (`[[oidc]]` tables, or the
//! `firebase_project` / `oidc_issuer` shortcuts), the main app's session endpoint
//! (`[app_session]`), browser origins allowed to call `/v1/capabilities` (`cors_origins`), and
//! where the client address of rate limits comes from (`client_ip_header`). Everything is checked
//! once at start with a message that says how to fix it.
//!
//! Read in this order: `oidc.rs` (one issuer: its `[[oidc]]` table, its checked form and the
//! checks), `app_session.rs` (the same for `[app_session]`), then [`resolve`] here, which adds
//! the shortcuts' entries, refuses two entries for one name or issuer, and checks the CORS
//! origins and the client address header.

mod app_session;
mod oidc;
mod sign_in;

use std::net::IpAddr;

use url::Url;

use crate::config::{bad, ConfigError};

use app_session::resolve_app_session;
use oidc::resolve_oidc;

pub use app_session::{
    AppSessionConfig, AppSessionSettings, DEFAULT_APP_SESSION_CACHE_SECS,
    DEFAULT_APP_SESSION_COOKIES, DEFAULT_APP_SESSION_EMAIL, DEFAULT_APP_SESSION_TIMEOUT_MS,
    DEFAULT_APP_SESSION_USER_ID,
};
pub use oidc::{
    ClientIds, IdTokenAlg, KeySource, OidcProvider, OidcSettings, DEFAULT_MIN_REFRESH_SECS,
    DEFAULT_OIDC_LEEWAY, DEFAULT_OIDC_MAX_LIFETIME, FIREBASE_JWKS_URL, MAX_MIN_REFRESH_SECS,
};
pub use sign_in::{
    ClientAuth, ClientKey, ClientKeyMaterial, ClientSecret, SignInClient, SignInSettings,
    DEFAULT_SCOPES,
};

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

impl IdentityConfig {
    /// Whether some provider signs people in at `/auth/login`.
    pub fn has_sign_in(&self) -> bool {
        self.oidc.iter().any(|p| p.sign_in.is_some())
    }
}

/// The identity settings as read from flags, environment and the file.
#[derive(Debug, Clone, Default)]
pub struct IdentityInputs {
    pub oidc: Vec<OidcSettings>,
    pub firebase_project: Option<String>,
    pub oidc_issuer: Option<String>,
    pub oidc_audience: Option<String>,
    /// Sign-in as the `oidc` entry's first client id (`PODGATE_OIDC_CLIENT_*`).
    pub oidc_sign_in: SignInSettings,
    pub app_session: AppSessionSettings,
    pub cors_origins: Option<Vec<String>>,
    pub client_ip_header: Option<String>,
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
    let s = inputs.oidc_sign_in;
    let sign_in_set = s.client_secret.is_some()
        || s.client_secret_file.is_some()
        || s.private_key_file.is_some()
        || s.client_auth.is_some()
        || s.scopes.is_some()
        || s.display_name.is_some()
        || s.client_id.is_some();
    if sign_in_set && inputs.oidc_issuer.is_none() {
        return Err(bad(
            "PODGATE_OIDC_CLIENT_* settings sign people in with the provider of PODGATE_OIDC_ISSUER, which is not set; set PODGATE_OIDC_ISSUER and PODGATE_OIDC_AUDIENCE too, or use an [oidc.sign_in] table in the config file",
        ));
    }
    match (inputs.oidc_issuer, inputs.oidc_audience) {
        // Several client ids of the issuer come comma-separated.
        (Some(issuer), Some(audience)) => settings.push(OidcSettings {
            name: "oidc".into(),
            issuer,
            audience: ClientIds(audience.split(',').map(str::to_owned).collect()),
            sign_in: sign_in_set.then_some(s),
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
mod tests;
