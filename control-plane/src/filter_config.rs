//! What Envoy's podgate filter receives: issuer, host templates, cookie name, auth URL, the
//! capability verifying keys and the pod directory, built from the database and the key ring.
//! The xDS server pushes it over ECDS; `GET /v1/filter-config` shows it to admins (it holds the
//! HMAC secret when capabilities are HS256).

use std::collections::HashMap;

use podgate_protocol::config::{FilterConfig, PodEntry};
use podgate_protocol::cookie::DEFAULT_COOKIE_NAME;
use podgate_protocol::token::DEFAULT_LEEWAY_SECS;

use crate::error::ApiResult;
use crate::AppState;

/// The ORIGINAL_DST cluster shared by every pod (the filter sets the pod's `ip:port` header).
pub const PODS_CLUSTER: &str = "podgate_pods";
/// The cluster serving `/.podgate/` on pod hosts: this control plane.
pub const CONTROL_PLANE_CLUSTER: &str = "podgate_control_plane";

/// `host:port`, with brackets around IPv6 addresses.
pub fn upstream_address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Builds the filter configuration in force now.
pub async fn build(state: &AppState) -> ApiResult<FilterConfig> {
    let config = state.config();
    let ring = state.keys()?;
    let mut pods = HashMap::new();
    for (pod, server_address) in state.db().pod_directory().await? {
        pods.insert(
            pod.slug.clone(),
            PodEntry {
                status: pod.status,
                cluster: PODS_CLUSTER.to_owned(),
                address: server_address.map(|a| upstream_address(&a, pod.nginx_port)),
            },
        );
    }
    Ok(FilterConfig {
        issuer: config.issuer.clone(),
        domain: config.domain.clone(),
        public_host_template: config.host_template_source.clone(),
        upstream_host_template: config.upstream_host_template_source.clone(),
        public_scheme: config.public_scheme.as_str().to_owned(),
        cookie_name: DEFAULT_COOKIE_NAME.to_owned(),
        auth_url: format!("{}/api/proxy-auth", config.issuer),
        control_plane_cluster: CONTROL_PLANE_CLUSTER.to_owned(),
        keys: ring.capability_keys.clone(),
        pods,
        revoked_jti: Vec::new(),
        leeway_secs: DEFAULT_LEEWAY_SECS,
        max_capability_lifetime_secs: config.capability_lifetime as i64,
        token_cache_entries: 1024,
    })
}
