//! One OpenID Connect issuer: its `[[oidc]]` table ([`OidcSettings`]), its checked form
//! ([`OidcProvider`]) and the checks between them.

use std::time::Duration;

use podgate_protocol::cookie::valid_cookie_name;
use serde::Deserialize;
use url::Url;

use crate::config::idp::sign_in::{resolve_sign_in, SignInClient, SignInSettings};
use crate::config::idp::{check_prefix, fetch_url};
use crate::config::{bad, ConfigError};

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
    /// Sign-in with this provider at `/auth/login` (`[oidc.sign_in]`; see `sign_in.rs`).
    pub sign_in: Option<SignInSettings>,
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
    /// The client podgate signs people in as at `/auth/login`, when configured.
    pub sign_in: Option<SignInClient>,
}

impl OidcProvider {
    /// The name recorded with users and in logs: `oidc:NAME`.
    pub fn verifier(&self) -> String {
        format!("oidc:{}", self.name)
    }
}

/// Checks one issuer. `shortcut` names the flags that made the entry when it is not an `[[oidc]]`
/// table of the file, so the messages point at what the operator actually set.
pub(super) fn resolve_oidc(
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
    let sign_in = match s.sign_in {
        Some(settings) => {
            let client = resolve_sign_in(settings, &name, &whose, &client_ids)?;
            // The sign-in's ID tokens are for its client, which is trusted like the audience.
            if !client_ids.contains(&client.client_id) {
                client_ids.push(client.client_id.clone());
            }
            Some(client)
        }
        None => None,
    };
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
        sign_in,
    })
}
