//! Envoy's edge best practices, checked in every Envoy configuration podgate ships.
//!
//! The files are found by listing `envoy/*.yaml`, so a new configuration is covered the day it
//! lands; the bootstraps the end-to-end suites render from them, the one docker compose derives
//! from `envoy/podgate.yaml`, and those in ConfigMaps of `deploy/kubernetes/*.yaml` are checked
//! the same way. Each must also pass `envoy --mode validate`. A failure names the file, the
//! place (listener, cluster) and the setting. The checker itself is shown to catch every setting it knows, one tampering at a time.
//!
//! The limits are upper bounds ("no looser than"), taken from Envoy's edge best practices and
//! podgate's own limits: a tighter value passes, a missing or looser one fails. The escaped-slash action
//! is exact (`UNESCAPE_AND_REDIRECT`, see the comment in the files): the suites depend on it.
//!
//! The clusters the control plane pushes over CDS are built in `xds/src/builders.rs` and checked
//! by its unit test `every_cluster_we_push_carries_the_edge_settings` (this crate does not
//! depend on podgate-xds).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use podgate_protocol::config::{CLIENT_FORWARDING_HEADERS, ROUTE_HEADERS};
use podgate_wasm_tests::e2e::bootstrap::{filter_wasm, Bootstrap};
use podgate_wasm_tests::e2e::envoy_binary;
use podgate_wasm_tests::e2e::stack_full::{envoy_mtls, render_ads_bootstrap};
use podgate_wasm_tests::host::workspace_root;
use serde::Deserialize as _;
use serde_yaml::Value;

const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const ROUTER: &str = "envoy.filters.http.router";

/// Upper bounds: Envoy's edge best practices (buffers, HTTP/2 windows and streams) and ours.
const MAX_BUFFER_BYTES: u64 = 32 * 1024;
const MAX_HEADERS_KB: u64 = 32;
const MAX_HEADERS_COUNT: u64 = 100;
const MAX_REQUEST_HEADERS_TIMEOUT_S: f64 = 10.0;
const MAX_STREAM_IDLE_TIMEOUT_S: f64 = 300.0;
const MAX_IDLE_TIMEOUT_S: f64 = 3600.0;
const MAX_CONNECT_TIMEOUT_S: f64 = 5.0;
const MAX_H2_STREAMS: u64 = 100;
const MAX_H2_STREAM_WINDOW: u64 = 64 * 1024;
const MAX_H2_CONNECTION_WINDOW: u64 = 1024 * 1024;
const ESCAPED_SLASHES_ACTION: &str = "UNESCAPE_AND_REDIRECT";

/// A throwaway self-signed certificate for `*.pods.example.dev` (P-256, valid for a century)
/// and its key, only so `envoy --mode validate` can load the production example's TLS context.
/// Never used to serve anything.
const THROWAWAY_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBsDCCAVagAwIBAgIUKwrDUSRBZSqY2EojtZIqkLPmNBIwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSKi5wb2RzLmV4YW1wbGUuZGV2MCAXDTI2MTEyMzE1MDIwNloY
DzIxMjYxMDMwMTUwMjA2WjAdMRswGQYDVQQDDBIqLnBvZHMuZXhhbXBsZS5kZXYw
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAT6UdFZcXbXPX8PYoWL+G2TIL7jA/jZ
vpzrlP27oFQdRJbS0pf0WmFbbkeD4huQ4BDjQhyjJ0XolU5s6pCPGjilo3IwcDAd
BgNVHQ4EFgQUxfbyO9jpmBzmc9exeHfTKvczXB4wHwYDVR0jBBgwFoAUxfbyO9jp
mBzmc9exeHfTKvczXB4wDwYDVR0TAQH/BAUwAwEB/zAdBgNVHREEFjAUghIqLnBv
ZHMuZXhhbXBsZS5kZXYwCgYIKoZIzj0EAwIDSAAwRQIgWKyqRgVEFXg+DzMiOypu
M0xX9DvEVqLwQkG7WvhFhioCIQClJsZrJD4FoYyKFnjDxIPZKfZmD+HzYQOskmcF
S9+OdA==
-----END CERTIFICATE-----
";
const THROWAWAY_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgj1NZ5Pjso50Ci/E9
yxUgy0hLJ2C60ifQFuIjSo3BAUuhRANCAAT6UdFZcXbXPX8PYoWL+G2TIL7jA/jZ
vpzrlP27oFQdRJbS0pf0WmFbbkeD4huQ4BDjQhyjJ0XolU5s6pCPGjil
-----END PRIVATE KEY-----
";

// ---------------------------------------------------------------------------------------------
// The checker: one problem per missing or loosened setting, each naming where and what.

/// Problems found in one bootstrap document.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, place: &str, setting: &str, problem: impl std::fmt::Display) {
        self.0.push(format!("{place}: `{setting}` {problem}"));
    }

    /// `value` must be a whole number in `1..=max`.
    fn at_most(&mut self, place: &str, setting: &str, value: Option<&Value>, max: u64) {
        match value {
            None => self.push(place, setting, format!("is missing (want 1..={max})")),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=max).contains(&n) => {}
                _ => self.push(place, setting, format!("is {} (want 1..={max})", show(v))),
            },
        }
    }

    /// `value` must be a duration above zero (zero disables the timeout) and at most `max_s`.
    fn timeout(&mut self, place: &str, setting: &str, value: Option<&Value>, max_s: f64) {
        match value {
            None => self.push(
                place,
                setting,
                format!("is missing (want 0s < t <= {max_s}s)"),
            ),
            Some(v) => match seconds(v) {
                Some(s) if s > 0.0 && s <= max_s => {}
                _ => self.push(
                    place,
                    setting,
                    format!("is {} (want 0s < t <= {max_s}s)", show(v)),
                ),
            },
        }
    }

    /// `value` must be exactly `want`.
    fn exactly(&mut self, place: &str, setting: &str, value: Option<&Value>, want: &Value) {
        if value != Some(want) {
            let found = value.map_or_else(|| "missing".to_owned(), show);
            self.push(place, setting, format!("is {found} (want {})", show(want)));
        }
    }
}

fn show(v: &Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim().replace('\n', " "))
        .unwrap_or_else(|_| format!("{v:?}"))
}

/// `"10s"`, `"0.25s"` or `{seconds, nanos}` in seconds.
fn seconds(v: &Value) -> Option<f64> {
    if let Some(text) = v.as_str() {
        return text.strip_suffix('s')?.parse().ok();
    }
    let whole = v.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
    let nanos = v.get("nanos").and_then(Value::as_f64).unwrap_or(0.0);
    (v.get("seconds").is_some() || v.get("nanos").is_some()).then_some(whole + nanos / 1e9)
}

fn seq(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_sequence).map_or(&[], Vec::as_slice)
}

fn name_of(v: &Value) -> &str {
    v.get("name").and_then(Value::as_str).unwrap_or("<unnamed>")
}

fn type_of(v: &Value) -> Option<&str> {
    v.get("typed_config")?.get("@type")?.as_str()
}

/// Every check, on a whole bootstrap.
fn check_bootstrap(doc: &Value) -> Problems {
    let mut p = Problems::default();
    check_admin(doc, &mut p);
    check_overload_manager(doc, &mut p);
    let mut hcms = 0;
    for listener in seq(doc.get("static_resources").and_then(|s| s.get("listeners"))) {
        hcms += check_listener(listener, &mut p);
    }
    if hcms == 0 {
        p.push(
            "static_resources.listeners",
            "http_connection_manager",
            "is nowhere: no HTTP listener to check",
        );
    }
    for cluster in seq(doc.get("static_resources").and_then(|s| s.get("clusters"))) {
        let place = format!("cluster {}", name_of(cluster));
        p.timeout(
            &place,
            "connect_timeout",
            cluster.get("connect_timeout"),
            MAX_CONNECT_TIMEOUT_S,
        );
        p.at_most(
            &place,
            "per_connection_buffer_limit_bytes",
            cluster.get("per_connection_buffer_limit_bytes"),
            MAX_BUFFER_BYTES,
        );
    }
    p
}

/// The admin API can stop the server and dump secrets: loopback only.
fn check_admin(doc: &Value, p: &mut Problems) {
    let Some(admin) = doc.get("admin") else {
        return;
    };
    let address = admin
        .get("address")
        .and_then(|a| a.get("socket_address"))
        .and_then(|s| s.get("address"))
        .and_then(Value::as_str);
    let loopback = address
        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback());
    if !loopback {
        p.push(
            "admin",
            "address.socket_address.address",
            format!(
                "is {} (want a loopback address)",
                address.unwrap_or("missing")
            ),
        );
    }
}

fn check_overload_manager(doc: &Value, p: &mut Problems) {
    let place = "overload_manager";
    let Some(om) = doc.get("overload_manager") else {
        p.push(place, "overload_manager", "is missing");
        return;
    };
    let monitors = seq(om.get("resource_monitors"));
    let monitor = |name: &str| monitors.iter().find(|m| name_of(m) == name);
    match monitor("envoy.resource_monitors.global_downstream_max_connections") {
        None => p.push(
            place,
            "envoy.resource_monitors.global_downstream_max_connections",
            "is missing",
        ),
        Some(m) => p.at_most(
            place,
            "max_active_downstream_connections",
            m.get("typed_config")
                .and_then(|t| t.get("max_active_downstream_connections")),
            1_000_000,
        ),
    }
    match monitor("envoy.resource_monitors.fixed_heap") {
        None => p.push(place, "envoy.resource_monitors.fixed_heap", "is missing"),
        Some(m) => p.at_most(
            place,
            "max_heap_size_bytes",
            m.get("typed_config")
                .and_then(|t| t.get("max_heap_size_bytes")),
            u64::MAX,
        ),
    }
    let stops = seq(om.get("actions")).iter().any(|a| {
        name_of(a) == "envoy.overload_actions.stop_accepting_requests"
            && !seq(a.get("triggers")).is_empty()
    });
    if !stops {
        p.push(
            place,
            "envoy.overload_actions.stop_accepting_requests",
            "is missing",
        );
    }
}

/// Checks a listener and every HCM in it; returns how many HCMs it has.
fn check_listener(listener: &Value, p: &mut Problems) -> usize {
    let place = format!("listener {}", name_of(listener));
    p.at_most(
        &place,
        "per_connection_buffer_limit_bytes",
        listener.get("per_connection_buffer_limit_bytes"),
        MAX_BUFFER_BYTES,
    );
    let chains = seq(listener.get("filter_chains"))
        .iter()
        .chain(listener.get("default_filter_chain"));
    let mut hcms = 0;
    for chain in chains {
        for filter in seq(chain.get("filters")) {
            if type_of(filter) == Some(HCM_TYPE) {
                hcms += 1;
                check_hcm(&place, &filter["typed_config"], p);
            }
        }
    }
    hcms
}

fn check_hcm(listener: &str, hcm: &Value, p: &mut Problems) {
    let place = format!(
        "{listener} (HCM {})",
        hcm["stat_prefix"].as_str().unwrap_or("?")
    );
    let place = place.as_str();
    let yes = Value::Bool(true);
    p.exactly(
        place,
        "use_remote_address",
        hcm.get("use_remote_address"),
        &yes,
    );
    p.exactly(
        place,
        "xff_num_trusted_hops",
        hcm.get("xff_num_trusted_hops"),
        &Value::from(0),
    );
    p.exactly(place, "normalize_path", hcm.get("normalize_path"), &yes);
    p.exactly(place, "merge_slashes", hcm.get("merge_slashes"), &yes);
    p.exactly(
        place,
        "path_with_escaped_slashes_action",
        hcm.get("path_with_escaped_slashes_action"),
        &Value::from(ESCAPED_SLASHES_ACTION),
    );
    // One trailing dot of the host is normalised once: by the filter where it runs (Envoy
    // stripping one first would let `host..` through), by Envoy on any other listener.
    if runs_podgate(hcm) {
        if hcm.get("strip_trailing_host_dot") == Some(&yes) {
            p.push(
                place,
                "strip_trailing_host_dot",
                "is true before the podgate filter (want it off: the filter strips the one dot)",
            );
        }
    } else {
        p.exactly(
            place,
            "strip_trailing_host_dot",
            hcm.get("strip_trailing_host_dot"),
            &yes,
        );
    }
    p.at_most(
        place,
        "max_request_headers_kb",
        hcm.get("max_request_headers_kb"),
        MAX_HEADERS_KB,
    );
    p.timeout(
        place,
        "request_headers_timeout",
        hcm.get("request_headers_timeout"),
        MAX_REQUEST_HEADERS_TIMEOUT_S,
    );
    p.timeout(
        place,
        "stream_idle_timeout",
        hcm.get("stream_idle_timeout"),
        MAX_STREAM_IDLE_TIMEOUT_S,
    );
    let common = hcm.get("common_http_protocol_options");
    p.timeout(
        place,
        "common_http_protocol_options.idle_timeout",
        common.and_then(|c| c.get("idle_timeout")),
        MAX_IDLE_TIMEOUT_S,
    );
    p.exactly(
        place,
        "common_http_protocol_options.headers_with_underscores_action",
        common.and_then(|c| c.get("headers_with_underscores_action")),
        &Value::from("REJECT_REQUEST"),
    );
    p.at_most(
        place,
        "common_http_protocol_options.max_headers_count",
        common.and_then(|c| c.get("max_headers_count")),
        MAX_HEADERS_COUNT,
    );
    if hcm["http_protocol_options"]["accept_http_10"] == yes {
        p.push(place, "http_protocol_options.accept_http_10", "is true");
    }
    // AUTO (the default) serves HTTP/2 too, with prior knowledge or by ALPN.
    let serves_h2 = !matches!(hcm["codec_type"].as_str(), Some("HTTP1" | "HTTP3"));
    if serves_h2 {
        let h2 = hcm.get("http2_protocol_options");
        for (setting, max) in [
            ("max_concurrent_streams", MAX_H2_STREAMS),
            ("initial_stream_window_size", MAX_H2_STREAM_WINDOW),
            ("initial_connection_window_size", MAX_H2_CONNECTION_WINDOW),
        ] {
            p.at_most(
                place,
                &format!("http2_protocol_options.{setting}"),
                h2.and_then(|h| h.get(setting)),
                max,
            );
        }
    }
    check_http_filters(place, hcm, p);
    check_forwarding_headers(place, hcm, p);
}

/// A route configuration that forwards anything (not only redirects or direct responses)
/// overwrites `X-Forwarded-For` with the TCP peer and removes every client copy of the other
/// forwarding headers (`CLIENT_FORWARDING_HEADERS`) and podgate's cluster header
/// (`ROUTE_HEADERS`), but not `X-Forwarded-Host`, which the filter sets before the router
/// applies this.
fn check_forwarding_headers(place: &str, hcm: &Value, p: &mut Problems) {
    let Some(routes) = hcm.get("route_config") else {
        // RDS: not used by any config we ship; a new one must be taught here.
        p.push(place, "route_config", "is missing (inline routes expected)");
        return;
    };
    let forwards = seq(routes.get("virtual_hosts"))
        .iter()
        .flat_map(|vh| seq(vh.get("routes")))
        .any(|r| r.get("route").is_some());
    if !forwards {
        return;
    }
    let removed: Vec<&str> = seq(routes.get("request_headers_to_remove"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in CLIENT_FORWARDING_HEADERS {
        if !removed.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            p.push(
                place,
                "route_config.request_headers_to_remove",
                format!("does not remove {name}"),
            );
        }
    }
    for name in ROUTE_HEADERS {
        if !removed.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            p.push(
                place,
                "route_config.request_headers_to_remove",
                format!("does not remove podgate's cluster header {name}"),
            );
        }
    }
    for kept in ["x-forwarded-host", "x-forwarded-for", "x-forwarded-proto"] {
        if removed.iter().any(|r| r.eq_ignore_ascii_case(kept)) {
            p.push(
                place,
                "route_config.request_headers_to_remove",
                format!("removes {kept}, which the edge sets"),
            );
        }
    }
    let xff = seq(routes.get("request_headers_to_add")).iter().any(|h| {
        h["header"]["key"]
            .as_str()
            .is_some_and(|k| k.eq_ignore_ascii_case("x-forwarded-for"))
            && h["header"]["value"].as_str() == Some("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")
            && h["append_action"].as_str() == Some("OVERWRITE_IF_EXISTS_OR_ADD")
    });
    if !xff {
        p.push(
            place,
            "route_config.request_headers_to_add",
            "does not overwrite x-forwarded-for with %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        );
    }
}

/// The podgate filter fails closed, pod traffic keeps WebSockets, and the router adds no
/// `x-envoy-*` headers.
/// Whether the HCM runs the podgate filter: a Wasm filter, inline or over ECDS.
fn runs_podgate(hcm: &Value) -> bool {
    seq(hcm.get("http_filters")).iter().any(|filter| {
        type_of(filter) == Some(WASM_TYPE)
            || filter.get("config_discovery").is_some_and(|d| {
                seq(d.get("type_urls"))
                    .iter()
                    .any(|t| t.as_str() == Some(WASM_TYPE))
            })
    })
}

fn check_http_filters(place: &str, hcm: &Value, p: &mut Problems) {
    let filters = seq(hcm.get("http_filters"));
    let mut has_podgate = false;
    for filter in filters {
        let name = name_of(filter);
        if type_of(filter) == Some(WASM_TYPE) {
            has_podgate = true;
            check_wasm_plugin(place, name, &filter["typed_config"]["config"], p);
        }
        if let Some(discovery) = filter.get("config_discovery") {
            let wasm = seq(discovery.get("type_urls"))
                .iter()
                .any(|t| t.as_str() == Some(WASM_TYPE));
            if wasm {
                has_podgate = true;
                if discovery["apply_default_config_without_warming"] == Value::Bool(true) {
                    p.push(
                        place,
                        &format!("{name}.config_discovery.apply_default_config_without_warming"),
                        "is true (requests could pass before the filter's config arrives)",
                    );
                }
                if let Some(default) = discovery.get("default_config") {
                    check_wasm_plugin(place, name, &default["config"], p);
                }
            }
        }
    }
    match filters.last() {
        Some(router) if name_of(router) == ROUTER => p.exactly(
            place,
            "envoy.filters.http.router.suppress_envoy_headers",
            router["typed_config"].get("suppress_envoy_headers"),
            &Value::Bool(true),
        ),
        _ => p.push(place, "http_filters", "does not end with the router"),
    }
    if has_podgate {
        let websocket = seq(hcm.get("upgrade_configs"))
            .iter()
            .any(|u| u["upgrade_type"].as_str() == Some("websocket"));
        if !websocket {
            p.push(
                place,
                "upgrade_configs",
                "has no websocket (pods' WebSockets would break)",
            );
        }
    }
}

fn check_wasm_plugin(place: &str, filter: &str, plugin: &Value, p: &mut Problems) {
    if plugin["fail_open"] == Value::Bool(true) {
        p.push(place, &format!("{filter}.config.fail_open"), "is true");
    }
    p.exactly(
        place,
        &format!("{filter}.config.failure_policy"),
        plugin.get("failure_policy"),
        &Value::from("FAIL_CLOSED"),
    );
}

// ---------------------------------------------------------------------------------------------
// The files

fn envoy_dir() -> PathBuf {
    workspace_root().join("envoy")
}

/// Every `envoy/*.yaml` (and `.yml`), sorted.
fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(envoy_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    format!("envoy/{}", path.file_name().unwrap().to_string_lossy())
}

fn parse(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file_name(path)))
}

fn is_envoy_bootstrap(doc: &Value) -> bool {
    ["static_resources", "dynamic_resources", "admin", "node"]
        .iter()
        .any(|k| doc.get(*k).is_some())
}

fn is_compose_file(doc: &Value) -> bool {
    doc.get("services").is_some()
}

/// `(name, document)` of every Envoy bootstrap in `envoy/`, plus the one docker compose runs.
fn shipped_bootstraps() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for path in yaml_files() {
        let doc = parse(&path);
        if is_envoy_bootstrap(&doc) {
            out.push((file_name(&path), doc));
        } else if is_compose_file(&doc) {
            out.push(compose_envoy_bootstrap(&path, &doc));
        } else {
            panic!(
                "{}: neither an Envoy bootstrap nor a docker compose file; teach \
                 wasm-tests/tests/edge_config.rs what it is",
                file_name(&path)
            );
        }
    }
    out.extend(kubernetes_bootstraps());
    out
}

/// The Envoy bootstraps held in ConfigMaps of `deploy/kubernetes/*.yaml`.
fn kubernetes_bootstraps() -> Vec<(String, Value)> {
    let dir = workspace_root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = format!(
            "deploy/kubernetes/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if doc["kind"] != "ConfigMap" {
                continue;
            }
            let Some(data) = doc["data"].as_mapping() else {
                continue;
            };
            for (key, value) in data {
                let parsed = value.as_str().and_then(|v| serde_yaml::from_str(v).ok());
                if let Some(bootstrap) = parsed.filter(is_envoy_bootstrap) {
                    out.push((
                        format!(
                            "{name} (ConfigMap {}, {})",
                            doc["metadata"]["name"].as_str().unwrap_or_default(),
                            key.as_str().unwrap_or_default()
                        ),
                        bootstrap,
                    ));
                }
            }
        }
    }
    out
}

/// The compose file runs `envoy/podgate.yaml` through `sed -e 's/A/B/' ...`: applies those
/// substitutions (literal strings) and returns the bootstrap Envoy really gets.
fn compose_envoy_bootstrap(path: &Path, compose: &Value) -> (String, Value) {
    let name = file_name(path);
    let command = compose["services"]["envoy"]["command"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: services.envoy.command is not a string"));
    assert!(
        command.contains("/etc/podgate/podgate.yaml"),
        "{name}: the Envoy service no longer runs podgate.yaml; check its bootstrap here"
    );
    let mut text = std::fs::read_to_string(envoy_dir().join("podgate.yaml")).unwrap();
    let mut substitutions = 0;
    for part in command.split("-e 's/").skip(1) {
        let expression = part.split('\'').next().unwrap();
        let pieces: Vec<&str> = expression.split('/').collect();
        assert!(
            pieces.len() >= 2,
            "{name}: cannot read the sed expression {expression:?}"
        );
        assert!(
            text.contains(pieces[0]),
            "{name}: the sed expression {expression:?} no longer matches envoy/podgate.yaml"
        );
        text = text.replace(pieces[0], pieces[1]);
        substitutions += 1;
    }
    assert!(
        substitutions > 0,
        "{name}: no sed expression found in {command:?}"
    );
    // The admin port must not be published to the host.
    for port in seq(compose["services"]["envoy"].get("ports")) {
        let port = port.as_str().unwrap_or_default();
        assert!(
            !port.contains("9901"),
            "{name}: the Envoy admin port is published ({port})"
        );
    }
    let doc = serde_yaml::from_str(&text).unwrap();
    (
        format!("{name} (envoy/podgate.yaml as compose runs it)"),
        doc,
    )
}

/// The bootstraps the end-to-end suites start: the static one as `e2e::Stack` renders it, and
/// `envoy/podgate.yaml` as `e2e::stack_full` renders it.
fn rendered_bootstraps() -> Vec<(String, Value)> {
    let pod: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut stat = Bootstrap::load_static().unwrap();
    let config = stat.filter_config().unwrap().to_string();
    stat.ephemeral_ports()
        .unwrap()
        .set_wasm_path(Path::new("/podgate/filter.wasm"))
        .unwrap()
        .set_filter_config(&config)
        .unwrap()
        .set_clusters(&[("podgate_control_plane", pod), ("pod_alpha", pod)])
        .unwrap();
    let ads = render_ads_bootstrap(10000, 18000, 8080, None).unwrap();
    let tls = envoy_mtls(Path::new("/podgate/tls"));
    let ads_mtls = render_ads_bootstrap(10000, 18000, 8443, Some(&tls)).unwrap();
    vec![
        (
            "envoy/podgate-static.yaml as the e2e suite renders it".to_owned(),
            serde_yaml::from_str(&stat.to_yaml().unwrap()).unwrap(),
        ),
        (
            "envoy/podgate.yaml as the whole-stack suite renders it".to_owned(),
            serde_yaml::from_str(&ads).unwrap(),
        ),
        (
            "envoy/podgate.yaml as the whole-stack suite renders it with mutual TLS".to_owned(),
            serde_yaml::from_str(&ads_mtls).unwrap(),
        ),
    ]
}

fn assert_hardened(bootstraps: &[(String, Value)]) {
    let mut report = Vec::new();
    for (name, doc) in bootstraps {
        for problem in check_bootstrap(doc).0 {
            report.push(format!("{name}: {problem}"));
        }
    }
    assert!(
        report.is_empty(),
        "edge hardening (Envoy's edge best practices, the threat catalog) is missing or loosened:\n  {}",
        report.join("\n  ")
    );
}

#[test]
fn every_envoy_config_follows_the_edge_best_practices() {
    let bootstraps = shipped_bootstraps();
    let names: Vec<&str> = bootstraps.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "envoy/podgate.yaml",
        "envoy/podgate-static.yaml",
        "envoy/podgate-production.yaml",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} not found in {names:?}"
        );
    }
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("envoy/docker-compose.yaml")),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("deploy/kubernetes/envoy.yaml (ConfigMap podgate-envoy")),
        "{names:?}"
    );
    assert_hardened(&bootstraps);
}

#[test]
fn the_bootstraps_the_suites_render_keep_the_edge_settings() {
    assert_hardened(&rendered_bootstraps());
}

// ---------------------------------------------------------------------------------------------
// The checker catches what it claims to

/// A mutable reference to the first HCM of the static bootstrap.
fn static_hcm(doc: &mut Value) -> &mut Value {
    &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

fn remove(v: &mut Value, key: &str) {
    v.as_mapping_mut().unwrap().remove(key);
}

type Tamper = fn(&mut Value);

#[test]
fn the_checker_catches_each_missing_or_loosened_setting() {
    let original = parse(&envoy_dir().join("podgate-static.yaml"));
    assert!(check_bootstrap(&original).0.is_empty());
    let cases: &[(&str, Tamper)] = &[
        ("`use_remote_address`", |d| {
            remove(static_hcm(d), "use_remote_address")
        }),
        ("`xff_num_trusted_hops` is 1", |d| {
            static_hcm(d)["xff_num_trusted_hops"] = 1.into()
        }),
        ("`normalize_path` is false", |d| {
            static_hcm(d)["normalize_path"] = false.into()
        }),
        ("`merge_slashes`", |d| {
            remove(static_hcm(d), "merge_slashes")
        }),
        (
            "`path_with_escaped_slashes_action` is KEEP_UNCHANGED",
            |d| static_hcm(d)["path_with_escaped_slashes_action"] = "KEEP_UNCHANGED".into(),
        ),
        (
            "`strip_trailing_host_dot` is true before the podgate filter",
            |d| static_hcm(d)["strip_trailing_host_dot"] = true.into(),
        ),
        ("`max_request_headers_kb` is 96", |d| {
            static_hcm(d)["max_request_headers_kb"] = 96.into()
        }),
        ("`request_headers_timeout` is 0s", |d| {
            static_hcm(d)["request_headers_timeout"] = "0s".into()
        }),
        ("`request_headers_timeout` is missing", |d| {
            remove(static_hcm(d), "request_headers_timeout")
        }),
        ("`stream_idle_timeout` is 3600s", |d| {
            static_hcm(d)["stream_idle_timeout"] = "3600s".into()
        }),
        (
            "`common_http_protocol_options.idle_timeout` is missing",
            |d| {
                remove(
                    &mut static_hcm(d)["common_http_protocol_options"],
                    "idle_timeout",
                )
            },
        ),
        (
            "`common_http_protocol_options.headers_with_underscores_action` is DROP_HEADER",
            |d| {
                static_hcm(d)["common_http_protocol_options"]["headers_with_underscores_action"] =
                    "DROP_HEADER".into()
            },
        ),
        (
            "`common_http_protocol_options.max_headers_count` is 500",
            |d| static_hcm(d)["common_http_protocol_options"]["max_headers_count"] = 500.into(),
        ),
        ("`http_protocol_options.accept_http_10` is true", |d| {
            static_hcm(d)["http_protocol_options"]["accept_http_10"] = true.into()
        }),
        (
            "`http2_protocol_options.max_concurrent_streams` is 1000",
            |d| static_hcm(d)["http2_protocol_options"]["max_concurrent_streams"] = 1000.into(),
        ),
        (
            "`http2_protocol_options.initial_stream_window_size` is missing",
            |d| {
                remove(
                    &mut static_hcm(d)["http2_protocol_options"],
                    "initial_stream_window_size",
                )
            },
        ),
        (
            "`http2_protocol_options.initial_connection_window_size` is 268435456",
            |d| {
                static_hcm(d)["http2_protocol_options"]["initial_connection_window_size"] =
                    268_435_456.into()
            },
        ),
        ("`upgrade_configs` has no websocket", |d| {
            remove(static_hcm(d), "upgrade_configs")
        }),
        ("`envoy.filters.http.wasm.config.fail_open` is true", |d| {
            static_hcm(d)["http_filters"][0]["typed_config"]["config"]["fail_open"] = true.into()
        }),
        (
            "`envoy.filters.http.wasm.config.failure_policy` is FAIL_OPEN",
            |d| {
                static_hcm(d)["http_filters"][0]["typed_config"]["config"]["failure_policy"] =
                    "FAIL_OPEN".into()
            },
        ),
        (
            "`envoy.filters.http.router.suppress_envoy_headers` is missing",
            |d| {
                remove(
                    &mut static_hcm(d)["http_filters"][1]["typed_config"],
                    "suppress_envoy_headers",
                )
            },
        ),
        (
            "listener podgate_http: `per_connection_buffer_limit_bytes`",
            |d| {
                remove(
                    &mut d["static_resources"]["listeners"][0],
                    "per_connection_buffer_limit_bytes",
                )
            },
        ),
        (
            "cluster pod_demo: `per_connection_buffer_limit_bytes` is 1048576",
            |d| {
                d["static_resources"]["clusters"][1]["per_connection_buffer_limit_bytes"] =
                    1_048_576.into()
            },
        ),
        (
            "cluster podgate_control_plane: `connect_timeout` is missing",
            |d| remove(&mut d["static_resources"]["clusters"][0], "connect_timeout"),
        ),
        ("admin: `address.socket_address.address` is 0.0.0.0", |d| {
            d["admin"]["address"]["socket_address"]["address"] = "0.0.0.0".into()
        }),
        (
            "`envoy.resource_monitors.global_downstream_max_connections` is missing",
            |d| {
                let monitors = d["overload_manager"]["resource_monitors"]
                    .as_sequence_mut()
                    .unwrap();
                monitors.retain(|m| {
                    name_of(m) != "envoy.resource_monitors.global_downstream_max_connections"
                });
            },
        ),
        ("`overload_manager` is missing", |d| {
            remove(d, "overload_manager")
        }),
        (
            "`route_config.request_headers_to_remove` does not remove forwarded",
            |d| {
                static_hcm(d)["route_config"]["request_headers_to_remove"]
                    .as_sequence_mut()
                    .unwrap()
                    .retain(|h| h.as_str() != Some("forwarded"))
            },
        ),
        (
            "`route_config.request_headers_to_remove` does not remove x-real-ip",
            |d| {
                remove(
                    &mut static_hcm(d)["route_config"],
                    "request_headers_to_remove",
                )
            },
        ),
        (
            "`route_config.request_headers_to_remove` removes x-forwarded-host",
            |d| {
                static_hcm(d)["route_config"]["request_headers_to_remove"]
                    .as_sequence_mut()
                    .unwrap()
                    .push("x-forwarded-host".into())
            },
        ),
        (
            "`route_config.request_headers_to_add` does not overwrite x-forwarded-for",
            |d| {
                static_hcm(d)["route_config"]["request_headers_to_add"][0]["append_action"] =
                    "APPEND_IF_EXISTS_OR_ADD".into()
            },
        ),
        (
            "`route_config.request_headers_to_add` does not overwrite x-forwarded-for",
            |d| remove(&mut static_hcm(d)["route_config"], "request_headers_to_add"),
        ),
    ];
    for (expected, tamper) in cases {
        let mut doc = original.clone();
        tamper(&mut doc);
        let problems = check_bootstrap(&doc).0;
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "tampering {expected} went unnoticed; the checker said {problems:?}"
        );
    }
    // An HTTP/1-only listener needs no HTTP/2 settings; any other codec does.
    let mut doc = original.clone();
    remove(static_hcm(&mut doc), "http2_protocol_options");
    assert!(!check_bootstrap(&doc).0.is_empty());
    static_hcm(&mut doc)["codec_type"] = "HTTP1".into();
    assert!(
        check_bootstrap(&doc).0.is_empty(),
        "{:?}",
        check_bootstrap(&doc).0
    );
}

// ---------------------------------------------------------------------------------------------
// Envoy itself accepts every file

/// Points what a bootstrap reads from disk at files that exist here: the filter `.wasm` and
/// the throwaway certificate.
fn with_local_files(doc: &mut Value, wasm: &str, cert: &str, key: &str) {
    match doc {
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let reads = v
                    .get("filename")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let local = match k.as_str() {
                    Some("certificate_chain") => Some(cert),
                    Some("private_key") => Some(key),
                    // The throwaway certificate is its own CA.
                    Some("trusted_ca") => Some(cert),
                    Some("local") if reads.ends_with(".wasm") => Some(wasm),
                    _ => None,
                };
                match local {
                    Some(file) => v["filename"] = file.into(),
                    None => with_local_files(v, wasm, cert, key),
                }
            }
        }
        Value::Sequence(items) => {
            for item in items {
                with_local_files(item, wasm, cert, key);
            }
        }
        _ => {}
    }
}

#[test]
fn every_envoy_config_passes_envoy_validate() {
    let envoy = envoy_binary().unwrap();
    let dir = std::env::temp_dir().join(format!("podgate-edge-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("wildcard.crt"), dir.join("wildcard.key"));
    std::fs::write(&cert, THROWAWAY_CERT).unwrap();
    std::fs::write(&key, THROWAWAY_KEY).unwrap();
    let wasm = filter_wasm().unwrap();
    let mut all = shipped_bootstraps();
    all.extend(rendered_bootstraps());
    let mut failures = Vec::new();
    for (n, (name, mut doc)) in all.into_iter().enumerate() {
        with_local_files(
            &mut doc,
            wasm.to_str().unwrap(),
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
        );
        let path = dir.join(format!("bootstrap-{n}.yaml"));
        std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
        let out = Command::new(&envoy)
            .args(["--mode", "validate", "--log-level", "warn", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{name}: envoy --mode validate failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Pod traffic: the same failure answers and timeouts in every file

/// The HCMs of a bootstrap that run the podgate filter (inline or over ECDS): pod traffic.
fn pod_hcms(doc: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for listener in seq(doc.get("static_resources").and_then(|s| s.get("listeners"))) {
        let chains = seq(listener.get("filter_chains"))
            .iter()
            .chain(listener.get("default_filter_chain"));
        for chain in chains {
            for filter in seq(chain.get("filters")) {
                if type_of(filter) != Some(HCM_TYPE) {
                    continue;
                }
                let hcm = &filter["typed_config"];
                let podgate = seq(hcm.get("http_filters")).iter().any(|f| {
                    type_of(f) == Some(WASM_TYPE)
                        || seq(f.get("config_discovery").and_then(|d| d.get("type_urls")))
                            .iter()
                            .any(|t| t.as_str() == Some(WASM_TYPE))
                });
                if podgate {
                    out.push((format!("listener {}", name_of(listener)), hcm));
                }
            }
        }
    }
    out
}

/// Every bootstrap we ship or render, with the HCMs that carry pod traffic.
fn every_pod_hcm(all: &[(String, Value)]) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for (name, doc) in all {
        let hcms = pod_hcms(doc);
        assert!(
            !hcms.is_empty(),
            "{name}: no listener runs the podgate filter"
        );
        out.extend(
            hcms.into_iter()
                .map(|(place, hcm)| (format!("{name}: {place}"), hcm)),
        );
    }
    out
}

/// The failure answers `e2e_streaming.rs` checks through Envoy are those of
/// `envoy/podgate-static.yaml`; every other file must answer pod failures the same way.
#[test]
fn every_pod_listener_answers_pod_failures_as_the_tested_file_does() {
    let mut tested = parse(&envoy_dir().join("podgate-static.yaml"));
    let reference = static_hcm(&mut tested)["local_reply_config"].clone();
    let flags: Vec<&str> = seq(reference.get("mappers"))
        .iter()
        .flat_map(|m| {
            let filters = seq(m["filter"]["and_filter"].get("filters"));
            filters
                .iter()
                .flat_map(|f| seq(f["response_flag_filter"].get("flags")))
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
        })
        .collect();
    for flag in ["UF", "UH", "URX", "UC", "UR", "UPE", "UT", "SI"] {
        assert!(
            flags.contains(&flag),
            "envoy/podgate-static.yaml maps no {flag}"
        );
    }
    let mut all = shipped_bootstraps();
    all.extend(rendered_bootstraps());
    let mut report = Vec::new();
    for (place, hcm) in every_pod_hcm(&all) {
        if hcm.get("local_reply_config") != Some(&reference) {
            report.push(place);
        }
    }
    assert!(
        report.is_empty(),
        "local_reply_config differs from envoy/podgate-static.yaml's in:\n  {}",
        report.join("\n  ")
    );
}

/// The timeouts README and docs/architecture.md give for pod traffic: no whole-request
/// deadline (pods stream), an hour of idleness on the pod route (long polls, idle WebSockets, a
/// pod that does not answer), five minutes on the HCM for anything else, and a short delayed
/// close.
#[test]
fn every_pod_listener_has_the_documented_timeouts() {
    let mut all = shipped_bootstraps();
    all.extend(rendered_bootstraps());
    let mut report = Vec::new();
    for (place, hcm) in every_pod_hcm(&all) {
        if hcm["stream_idle_timeout"].as_str() != Some("300s") {
            report.push(format!("{place}: stream_idle_timeout is not 300s"));
        }
        // A WebSocket the filter cuts off ends for the client this long after (not Envoy's
        // default second), so within a second of the sign-out or removal.
        if hcm["delayed_close_timeout"].as_str() != Some("0.2s") {
            report.push(format!("{place}: delayed_close_timeout is not 0.2s"));
        }
        let routes: Vec<&Value> = seq(hcm["route_config"].get("virtual_hosts"))
            .iter()
            .flat_map(|vh| seq(vh.get("routes")))
            .filter_map(|r| r.get("route"))
            .collect();
        if routes.is_empty() {
            report.push(format!("{place}: no route to a pod"));
        }
        for route in routes {
            if route["timeout"].as_str() != Some("0s") {
                report.push(format!("{place}: the pod route's timeout is not 0s"));
            }
            if route["idle_timeout"].as_str() != Some("3600s") {
                report.push(format!(
                    "{place}: the pod route's idle_timeout is not 3600s"
                ));
            }
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}
