//! Waking stopped pods: when the control plane can start pods (`FilterConfig::wake`), a browser
//! loading a page of a pod that is not running, with a capability granted for it, makes the
//! filter ask the control plane to start it, and gets a page that reloads itself every few
//! seconds (`page::waking`) until the pod answers. Scripts get the JSON 503 and start nothing.
//!
//! The call goes the renewal's way (`renewal`): `POST /api/proxy-wake` on the control plane's
//! cluster, with the renewal secret and the user's capability as a bearer. The control plane
//! checks the capability and that its user may still reach the pod and port, limits the calls
//! per pod, and calls the operator's start hook. The filter does not wait for the answer.

use crate::config::CompiledConfig;
use crate::renewal::RENEW_SECRET_HEADER;
use crate::token::Verified;

/// The control plane's wake endpoint, beside the renew endpoint.
pub const WAKE_PATH: &str = "/api/proxy-wake";

/// Seconds between a waking page's reloads.
pub const RELOAD_SECS: u32 = 2;

/// Seconds one worker waits before it asks again for the same pod (the control plane limits the
/// hook calls itself; this spares it one call per reload of every open page).
pub const CALL_EVERY_SECS: i64 = 5;

/// The wake call for one pod: to the control plane's cluster, with these headers and no body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeCall {
    /// The pod it starts (for the worker's own limit).
    pub pod: String,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub timeout_ms: u32,
}

/// The wake call for `capability`, granted for `pod`; `None` when waking is off or the
/// capability carries no token to send.
pub fn call(config: &CompiledConfig, pod: &str, capability: &Verified) -> Option<WakeCall> {
    if !config.wake {
        return None;
    }
    let renewal = config.renewal.as_ref()?;
    let token = capability.token.as_ref()?;
    Some(WakeCall {
        pod: pod.to_owned(),
        cluster: config.control_plane_cluster.clone(),
        headers: vec![
            (":method".into(), "POST".into()),
            // Envoy reaches the control plane through its cluster: the route is at the root.
            (":path".into(), WAKE_PATH.into()),
            (":authority".into(), renewal.authority.clone()),
            (RENEW_SECRET_HEADER.into(), renewal.secret().to_owned()),
            ("authorization".into(), format!("Bearer {}", token.as_str())),
            ("content-length".into(), "0".into()),
        ],
        timeout_ms: renewal.timeout_ms,
    })
}
