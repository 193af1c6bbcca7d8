//! The main app's session endpoint: `[app_session]` and its flags ([`AppSessionSettings`]), its
//! checked form ([`AppSessionConfig`]) and the checks between them.

use std::time::Duration;

use clap::Args;
use podgate_protocol::cookie::valid_cookie_name;
use serde::Deserialize;
use url::Url;

use crate::config::idp::{check_prefix, fetch_url};
use crate::config::{bad, ConfigError};

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

fn check_pointer(p: &str, what: &str) -> Result<(), ConfigError> {
    if p.is_empty() || p.starts_with('/') {
        Ok(())
    } else {
        Err(bad(format!(
            "app_session.{what} {p:?} is not a JSON pointer; it starts with '/', e.g. /user/id"
        )))
    }
}

/// Checks `[app_session]`; `None` when no URL is set.
pub(super) fn resolve_app_session(
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
