//! Every cookie the control plane sets, built in one place with one rule: over https a cookie
//! is `Secure` (and its name, chosen once at start by `podgate_protocol::cookie::cookie_name`,
//! carries `__Host-`); always host-only (no `Domain`), `Path=/` and `HttpOnly`.
//!
//! Three cookies exist: the capability cookie on pod hosts (https when the pods' public scheme
//! is), and on the control plane (https when its issuer URL is) its own session cookie and the
//! cookie that binds a sign-in under way to the browser that started it.

use cookie::time::Duration;
use cookie::{Cookie, SameSite};

use crate::config::SameSite as ConfiguredSameSite;
use crate::mint::Minted;
use crate::AppState;

/// The `Set-Cookie` value of `name=value`, kept `max_age_secs` seconds (0 removes it).
fn build(name: &str, value: &str, https: bool, same_site: SameSite, max_age_secs: u64) -> String {
    Cookie::build((name, value))
        .path("/")
        .max_age(Duration::seconds(
            i64::try_from(max_age_secs).unwrap_or(i64::MAX),
        ))
        .http_only(true)
        .same_site(same_site)
        .secure(https)
        .build()
        .to_string()
}

fn capability_same_site(state: &AppState) -> SameSite {
    match state.config().cookie_samesite {
        ConfiguredSameSite::Lax => SameSite::Lax,
        ConfiguredSameSite::Strict => SameSite::Strict,
        ConfiguredSameSite::None => SameSite::None,
    }
}

fn control_plane_is_https(state: &AppState) -> bool {
    state.config().issuer.starts_with("https://")
}

/// The capability cookie on a pod host: for the session's lifetime when the capability was
/// minted for a session (Envoy's filter renews it while the session lives, even once it
/// lapsed in a tab left idle), for the capability's own otherwise.
pub fn capability(state: &AppState, minted: &Minted) -> String {
    let config = state.config();
    build(
        state.capability_cookie(),
        &minted.token,
        config.public_scheme.is_https(),
        capability_same_site(state),
        if minted.in_session {
            config.session_lifetime.max(config.capability_lifetime)
        } else {
            config.capability_lifetime
        },
    )
}

/// Removes the capability cookie from a pod host.
pub fn clear_capability(state: &AppState) -> String {
    build(
        state.capability_cookie(),
        "",
        state.config().public_scheme.is_https(),
        capability_same_site(state),
        0,
    )
}

/// The control plane's session cookie, for the session's lifetime.
pub fn session(state: &AppState, value: &str) -> String {
    build(
        state.session_cookie(),
        value,
        control_plane_is_https(state),
        SameSite::Lax,
        state.config().session_lifetime,
    )
}

/// Removes the control plane's session cookie.
pub fn clear_session(state: &AppState) -> String {
    build(
        state.session_cookie(),
        "",
        control_plane_is_https(state),
        SameSite::Lax,
        0,
    )
}

/// The name of the binding cookie of the sign-in tagged `tag` (`auth::sign_in::binding_tag`).
pub fn sign_in_binding_name(state: &AppState, tag: &str) -> String {
    format!("{}-{tag}", state.sign_in_cookie())
}

/// The cookie that binds the sign-in tagged `tag` to this browser, for a sign-in's lifetime.
/// `SameSite=Lax`: the provider sends the browser back with a top-level GET from its own site.
pub fn sign_in_binding(state: &AppState, tag: &str, value: &str) -> String {
    build(
        &sign_in_binding_name(state, tag),
        value,
        control_plane_is_https(state),
        SameSite::Lax,
        crate::auth::sign_in::SIGN_IN_LIFETIME_SECS.unsigned_abs(),
    )
}

/// Removes the binding cookie of the sign-in tagged `tag` once its callback came.
pub fn clear_sign_in_binding(state: &AppState, tag: &str) -> String {
    build(
        &sign_in_binding_name(state, tag),
        "",
        control_plane_is_https(state),
        SameSite::Lax,
        0,
    )
}
