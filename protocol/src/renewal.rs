//! Renewal at the edge: a browser's capability (a cookie carrying a session id, `sid`) that is
//! in the last part of its life is exchanged by the filter for a fresh one, for the same
//! session, pod and port, with a call to the control plane's renew endpoint; the fresh cookie
//! goes back on the response. A cookie capability past its `exp` but within `lapsed_secs` of it
//! (a tab left idle longer than a capability lives) is renewed the same way before its request
//! is decided. Pure: when to renew, what the call carries, and whether the control plane's
//! answer is a capability the filter may hand out. The adapter makes the call.

use std::collections::HashSet;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::cutoff::CompiledCutoffs;
use crate::token::{Verified, Verifier};

/// The control plane's renew endpoint (`POST`), relative to its origin.
pub const RENEW_PATH: &str = "/api/proxy-renew";
/// Header carrying the secret the control plane and the filter share: only Envoy calls the
/// renew endpoint.
pub const RENEW_SECRET_HEADER: &str = "podgate-renew-secret";
/// Shortest renewal secret accepted (bytes): 128 bits of base64url or hex and more.
pub const MIN_SECRET_LEN: usize = 22;
/// Longest time the filter waits for the control plane's answer (milliseconds).
pub const MAX_TIMEOUT_MS: u32 = 10_000;
/// Longest `lapsed_secs`: the control plane's longest session (30 days).
pub const MAX_LAPSED_SECS: i64 = 30 * 86_400;

fn default_timeout_ms() -> u32 {
    1_000
}

/// The `renewal` section of the filter's configuration. Absent: nothing is renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renewal {
    /// The renew endpoint, an absolute http(s) URL; the call goes to `control_plane_cluster`
    /// with this URL's authority and path.
    pub url: String,
    /// Sent in `podgate-renew-secret`.
    pub secret: String,
    /// A capability is renewed once fewer than this many seconds of its life remain.
    pub before_secs: i64,
    /// How long a request waits for the renewal before it goes on with the old capability.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    /// How long past its `exp` (and the verification leeway) a cookie capability with a session
    /// id is still renewed, its request waiting for the answer; 0: never (the browser signs in
    /// again). The control plane sends its session lifetime, which also bounds the cookie's.
    #[serde(default)]
    pub lapsed_secs: i64,
}

/// The compiled `renewal` section.
#[derive(Clone, PartialEq, Eq)]
pub struct CompiledRenewal {
    pub authority: String,
    pub path: String,
    secret: String,
    pub before_secs: i64,
    pub timeout_ms: u32,
    pub lapsed_secs: i64,
}

impl CompiledRenewal {
    /// The secret the control plane and the filter share (also authenticates API-token
    /// exchanges, `exchange`).
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl std::fmt::Debug for CompiledRenewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRenewal")
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("before_secs", &self.before_secs)
            .field("timeout_ms", &self.timeout_ms)
            .field("lapsed_secs", &self.lapsed_secs)
            .finish_non_exhaustive()
    }
}

impl Renewal {
    /// Checks every field; the error names what is wrong.
    pub fn compile(self) -> Result<CompiledRenewal, String> {
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"))
            .ok_or("url must be an absolute http(s) URL")?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => return Err("url must have a path".into()),
        };
        let safe = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !safe(authority) || !safe(path) || path.contains(['?', '#']) {
            return Err("url must be an absolute http(s) URL without query or fragment".into());
        }
        if self.secret.len() < MIN_SECRET_LEN || !safe(&self.secret) {
            return Err(format!(
                "secret must be at least {MIN_SECRET_LEN} visible ASCII characters"
            ));
        }
        if self.before_secs < 1 {
            return Err("before_secs must be positive".into());
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(format!("timeout_ms must be between 1 and {MAX_TIMEOUT_MS}"));
        }
        if !(0..=MAX_LAPSED_SECS).contains(&self.lapsed_secs) {
            return Err(format!(
                "lapsed_secs must be between 0 and {MAX_LAPSED_SECS}"
            ));
        }
        Ok(CompiledRenewal {
            authority: authority.to_owned(),
            path: path.to_owned(),
            secret: self.secret,
            before_secs: self.before_secs,
            timeout_ms: self.timeout_ms,
            lapsed_secs: self.lapsed_secs,
        })
    }
}

/// When the filter starts renewing `capability` (unix seconds), or `None` when it never
/// does: renewal off, a capability from a header (scripts mint their own), or one without a
/// session id (nothing bounds its renewal). Fixed per capability, so a memoized forward keeps
/// it, and the cached path pays one comparison for it.
pub fn renew_at(
    renewal: Option<&CompiledRenewal>,
    capability: &Verified,
    from_cookie: bool,
) -> Option<i64> {
    let renewal = renewal?;
    (from_cookie && capability.sid.is_some() && capability.token.is_some())
        .then(|| capability.expires_at.saturating_sub(renewal.before_secs))
}

/// Whether a capability whose renewal starts at `renew_at` is due at `now`.
pub fn due(renew_at: Option<i64>, now: i64) -> bool {
    renew_at.is_some_and(|at| now >= at)
}

/// A renew call to make: to `cluster`, with `headers` and no body, answered within
/// `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalCall<'a> {
    pub cluster: &'a str,
    pub headers: Vec<(String, String)>,
    pub timeout_ms: u32,
}

/// The renew call's headers (`:method`, `:path`, `:authority`, the secret and the old
/// capability as a bearer), for `proxy_http_call`. The body is empty.
pub fn call_headers(renewal: &CompiledRenewal, old: &Verified) -> Option<Vec<(String, String)>> {
    let token = old.token.as_ref()?;
    Some(vec![
        (":method".into(), "POST".into()),
        (":path".into(), renewal.path.clone()),
        (":authority".into(), renewal.authority.clone()),
        (RENEW_SECRET_HEADER.into(), renewal.secret.clone()),
        ("authorization".into(), format!("Bearer {}", token.as_str())),
        ("content-length".into(), "0".into()),
    ])
}

/// The HTTP status of the renew call's answer from its serialized header map, or 0 when there
/// is none (the call failed or timed out: Envoy hands over no headers).
pub fn call_status(wire: &[u8]) -> u32 {
    crate::wire::decode_header_map(wire)
        .ok()
        .and_then(|headers| {
            headers
                .iter()
                .find(|(name, _)| *name == b":status")
                .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The control plane's answer body on success.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewAnswer {
    /// The fresh capability.
    pub token: String,
    /// The `Set-Cookie` value the callback would set for it.
    pub set_cookie: String,
}

/// What a renewal came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    /// A fresh capability for the same session, user, pod, port and resource, and its cookie.
    Fresh {
        capability: Rc<Verified>,
        set_cookie: Rc<str>,
    },
    /// The control plane refused (signed out, access lost, revoked): renewal stops, and the
    /// old capability lives out its lifetime.
    Refused,
    /// No usable answer (timeout, the control plane away, a malformed answer): the old
    /// capability goes on; a later request may try again.
    Failed,
}

/// What judging an answer reads from the configuration in force (`CompiledConfig::in_force`).
#[derive(Clone, Copy)]
pub struct InForce<'a> {
    pub verifier: &'a Verifier,
    /// Revoked capability ids.
    pub revoked: &'a HashSet<String>,
    pub cutoffs: &'a CompiledCutoffs,
    /// Our cookie's name on pod hosts.
    pub cookie_name: &'a str,
}

impl InForce<'_> {
    /// Whether `capability` is refused before its expiry: revoked, or cut off (a signed-out
    /// session, access lost).
    pub fn withdraws(&self, capability: &Verified) -> bool {
        self.revoked.contains(&capability.claims.jti) || self.cutoffs.refuses(capability)
    }
}

/// Judges the control plane's answer to the renewal of `old`: HTTP `status` (0 when the call
/// failed) and `body`, at `now`. Only a 401 is a refusal. A fresh capability is accepted only if it verifies under the
/// configuration in force, is not refused by it, names the same session, user, audience, pod,
/// port and resource (`res`), outlives the old one, and its `Set-Cookie` sets exactly it under our name,
/// host-only.
pub fn judge(config: InForce<'_>, old: &Verified, status: u32, body: &[u8], now: i64) -> Renewed {
    match status {
        200 => {}
        // The control plane refused this capability; a 403 (a wrong secret) is a
        // misconfiguration, not a refusal, and is retried like any failure.
        401 => return Renewed::Refused,
        _ => return Renewed::Failed,
    }
    let Ok(answer) = serde_json::from_slice::<RenewAnswer>(body) else {
        return Renewed::Failed;
    };
    let Ok(fresh) = config.verifier.verify(&answer.token, now) else {
        return Renewed::Failed;
    };
    let same = fresh.sid == old.sid
        && fresh.claims.sub == old.claims.sub
        && fresh.claims.aud == old.claims.aud
        && fresh.claims.pod == old.claims.pod
        && fresh.claims.port == old.claims.port
        && fresh.res == old.res
        && fresh.expires_at > old.expires_at;
    let refused = config.withdraws(&fresh);
    if !same || refused || !cookie_sets(config, &answer.set_cookie, &answer.token) {
        return Renewed::Failed;
    }
    Renewed::Fresh {
        capability: Rc::new(fresh),
        set_cookie: answer.set_cookie.into(),
    }
}

/// Whether `set_cookie` sets our cookie to `token`, host-only, as one header value.
fn cookie_sets(config: InForce<'_>, set_cookie: &str, token: &str) -> bool {
    let mut parts = set_cookie.split(';');
    let first = parts.next().unwrap_or_default();
    let sets_ours = first
        .strip_prefix(config.cookie_name)
        .and_then(|rest| rest.strip_prefix('='))
        == Some(token);
    let host_only = parts.all(|attr| {
        let name = attr.trim().split('=').next().unwrap_or_default();
        !name.eq_ignore_ascii_case("domain")
    });
    let one_value = set_cookie
        .bytes()
        .all(|b| b == b' ' || b.is_ascii_graphic());
    sets_ours && host_only && one_value && set_cookie.len() <= 8 * 1024
}
