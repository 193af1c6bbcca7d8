//! Cross-origin access to pods: who may read a pod's responses from another origin.
//!
//! Policy (like Coder's default for workspace apps): cross-origin access is allowed only between
//! origins of the same pod — any port of the pod, our public scheme, any listener port — and
//! nothing else. Sibling pods are same-site, so this is the only thing standing between pod B's
//! page and pod A's credentialed responses besides the cookie's host-only scope.
//!
//! - A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
//!   by the filter and never forwarded, whatever credentials it carries (browsers send none):
//!   from a same-pod origin `204` with `Access-Control-Allow-Origin: <origin>`,
//!   `Access-Control-Allow-Credentials: true`, the requested method and headers echoed
//!   (validated token characters, bounded), `Access-Control-Max-Age` and `Vary`; from any other
//!   origin (another pod, `null`, a foreign site, another scheme, anything that is not exactly a
//!   browser-serialized origin) `403 cross_origin_preflight`. A same-pod preflight with a
//!   malformed method or header list gets `400 bad_preflight`. No token is needed: the preflight
//!   reveals nothing and the actual request is authenticated as usual.
//! - On every response the filter forwards from a pod, every `Access-Control-*` header the pod
//!   set is removed. When the request's `Origin` is a same-pod origin, the filter then sets
//!   `Access-Control-Allow-Origin: <origin>` and `Access-Control-Allow-Credentials: true` itself
//!   and adds `Vary: Origin`; the pod's `Access-Control-Expose-Headers` is the one header kept in
//!   that case (it only lets same-pod pages read more of the response). So a pod can never widen
//!   access to another pod's origin, to `*` with credentials, or to any other site.

use crate::config::CompiledConfig;
use crate::host::{PodAddr, SERVICE_PORT};
use crate::reply::{Denial, Reply};

/// How long a browser may cache a preflight answer (Chrome caps at 7200 s).
pub const PREFLIGHT_MAX_AGE_SECS: u32 = 600;
/// Longest `Access-Control-Request-Method` echoed.
const MAX_METHOD_LEN: usize = 32;
/// Longest `Access-Control-Request-Headers` echoed, and most names in it.
const MAX_REQUEST_HEADERS_LEN: usize = 1024;
const MAX_REQUEST_HEADER_NAMES: usize = 32;

/// Response headers a pod may keep for a same-pod origin; every other `access-control-*` goes.
pub const KEPT_FOR_SAME_POD: &str = "access-control-expose-headers";

/// The pod an `Origin` names, when it has our scheme and is a pod host (any port suffix), and
/// nothing else: no path, no userinfo, lowercase as browsers serialize it.
pub fn origin_pod(config: &CompiledConfig, origin: &str) -> Option<PodAddr> {
    let scheme = if config.https { "https://" } else { "http://" };
    let authority = origin.strip_prefix(scheme)?;
    if authority.contains('/') {
        return None;
    }
    config.public_hosts.parse(authority).ok()
}

/// Whether `origin` is an origin of the pod `pod` (same pod, any of its ports), or, for a
/// service, the service's own. A pod and a service of the same name are strangers: the pod's
/// pages must not use the service's credential, nor the service's answers reach them.
pub fn is_same_pod_origin(config: &CompiledConfig, pod: &PodAddr, origin: &str) -> bool {
    origin_pod(config, origin)
        .is_some_and(|o| o.pod == pod.pod && (o.port == SERVICE_PORT) == (pod.port == SERVICE_PORT))
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(is_tchar)
}

/// The request header names of `Access-Control-Request-Headers`, re-joined with `", "`, or
/// `None` when the list is malformed (an empty list is `Some("")`).
fn request_header_names(list: &str) -> Option<String> {
    if list.len() > MAX_REQUEST_HEADERS_LEN {
        return None;
    }
    if list.trim().is_empty() {
        return Some(String::new());
    }
    let mut out = String::with_capacity(list.len());
    for (i, name) in list.split(',').enumerate() {
        let name = name.trim_matches(|c| c == ' ' || c == '\t');
        if i >= MAX_REQUEST_HEADER_NAMES || !is_token(name, 128) {
            return None;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(name);
    }
    Some(out)
}

/// The filter's answer to a CORS preflight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preflight {
    /// A same-pod origin: answer with this `204`.
    Allowed(Reply),
    /// Any other origin, or a malformed preflight: answer with this denial.
    Refused(Denial),
}

/// The parts of a request a preflight decision reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreflightRequest<'a> {
    pub authority: &'a str,
    pub method: &'a str,
    pub origin: Option<&'a str>,
    pub request_method: Option<&'a str>,
    pub request_headers: Option<&'a str>,
}

/// Answers a CORS preflight, or `None` when the request is not one (then `gate::decide` runs;
/// a preflight to a host that is not a pod host is left to it, which answers `400`).
pub fn preflight(config: &CompiledConfig, req: &PreflightRequest<'_>) -> Option<Preflight> {
    if req.method != "OPTIONS" {
        return None;
    }
    let (Some(origin), Some(method)) = (req.origin, req.request_method) else {
        return None;
    };
    let pod = config.public_hosts.parse(req.authority).ok()?;
    if !is_same_pod_origin(config, &pod, origin) {
        return Some(Preflight::Refused(Denial::CrossOriginPreflight));
    }
    let method = method.trim_matches(|c| c == ' ' || c == '\t');
    if !is_token(method, MAX_METHOD_LEN) {
        return Some(Preflight::Refused(Denial::BadPreflight));
    }
    let headers = match req.request_headers {
        None => String::new(),
        Some(list) => match request_header_names(list) {
            Some(names) => names,
            None => return Some(Preflight::Refused(Denial::BadPreflight)),
        },
    };
    let mut reply_headers = vec![
        ("access-control-allow-origin", origin.to_owned()),
        ("access-control-allow-credentials", "true".to_owned()),
        ("access-control-allow-methods", method.to_owned()),
    ];
    if !headers.is_empty() {
        reply_headers.push(("access-control-allow-headers", headers));
    }
    reply_headers.push(("access-control-max-age", PREFLIGHT_MAX_AGE_SECS.to_string()));
    reply_headers.push((
        "vary",
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".to_owned(),
    ));
    Some(Preflight::Allowed(Reply {
        status: 204,
        headers: reply_headers,
        body: String::new(),
        reason: "preflight",
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::FilterConfig;

    const ALPHA: &str = "localhost-8726-pod-alpha.example.dev";

    fn config(scheme: &str) -> CompiledConfig {
        let json = serde_json::json!({
            "issuer": "https://podgate.example.dev",
            "domain": "example.dev",
            "public_scheme": scheme,
            "auth_url": "https://podgate.example.dev/api/proxy-auth",
            "keys": {"keys": []},
        });
        FilterConfig::compile_json(json.to_string().as_bytes()).unwrap()
    }

    fn ask(c: &CompiledConfig, origin: &str) -> Option<Preflight> {
        preflight(
            c,
            &PreflightRequest {
                authority: ALPHA,
                method: "OPTIONS",
                origin: Some(origin),
                request_method: Some("PUT"),
                request_headers: Some("content-type,x-requested-with"),
            },
        )
    }

    fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn same_pod_origins_are_allowed_with_the_origin_echoed() {
        let c = config("https");
        for origin in [
            "https://localhost-8726-pod-alpha.example.dev",
            "https://localhost-8727-pod-alpha.example.dev",
            "https://localhost-3000-pod-alpha.example.dev:8443",
            "https://localhost-1-pod-alpha.example.dev:443",
        ] {
            let Some(Preflight::Allowed(reply)) = ask(&c, origin) else {
                panic!("{origin}: {:?}", ask(&c, origin));
            };
            assert_eq!(reply.status, 204);
            assert!(reply.body.is_empty());
            assert_eq!(header(&reply, "access-control-allow-origin"), Some(origin));
            assert_eq!(
                header(&reply, "access-control-allow-credentials"),
                Some("true")
            );
            assert_eq!(header(&reply, "access-control-allow-methods"), Some("PUT"));
            assert_eq!(
                header(&reply, "access-control-allow-headers"),
                Some("content-type, x-requested-with")
            );
            assert_eq!(header(&reply, "access-control-max-age"), Some("600"));
            assert!(header(&reply, "vary").unwrap().starts_with("Origin"));
        }
    }

    #[test]
    fn every_other_origin_is_refused() {
        let c = config("https");
        for origin in [
            "null",
            "",
            "https://localhost-8726-pod-beta.example.dev",
            "https://localhost-8726-pod-alphax.example.dev",
            "http://localhost-8726-pod-alpha.example.dev",
            "wss://localhost-8726-pod-alpha.example.dev",
            "https://localhost-8726-pod-alpha.example.dev/",
            "https://localhost-8726-pod-alpha.example.dev/path",
            "https://LOCALHOST-8726-POD-ALPHA.EXAMPLE.DEV",
            "HTTPS://localhost-8726-pod-alpha.example.dev",
            "https://user@localhost-8726-pod-alpha.example.dev",
            "https://localhost-8726-pod-alpha.example.dev.evil.com",
            "https://example.dev",
            "https://evil.example",
            "https://localhost-8726-pod-alpha.example.dev https://evil.example",
            " https://localhost-8726-pod-alpha.example.dev",
        ] {
            assert_eq!(
                ask(&c, origin),
                Some(Preflight::Refused(Denial::CrossOriginPreflight)),
                "{origin:?}"
            );
        }
        // Over plain http the http origin is ours and the https one is not.
        let plain = config("http");
        assert!(matches!(
            ask(&plain, "http://localhost-8727-pod-alpha.example.dev"),
            Some(Preflight::Allowed(_))
        ));
        assert_eq!(
            ask(&plain, "https://localhost-8727-pod-alpha.example.dev"),
            Some(Preflight::Refused(Denial::CrossOriginPreflight))
        );
    }

    #[test]
    fn only_real_preflights_are_answered() {
        let c = config("https");
        let own = "https://localhost-8727-pod-alpha.example.dev";
        let base = PreflightRequest {
            authority: ALPHA,
            method: "OPTIONS",
            origin: Some(own),
            request_method: Some("GET"),
            request_headers: None,
        };
        assert!(matches!(preflight(&c, &base), Some(Preflight::Allowed(_))));
        let not = [
            PreflightRequest {
                method: "GET",
                ..base
            },
            PreflightRequest {
                method: "options",
                ..base
            },
            PreflightRequest {
                origin: None,
                ..base
            },
            PreflightRequest {
                request_method: None,
                ..base
            },
            // Not a pod host: gate::decide answers 400.
            PreflightRequest {
                authority: "example.dev",
                ..base
            },
        ];
        for req in not {
            assert_eq!(preflight(&c, &req), None, "{req:?}");
        }
        // Without requested headers there is no allow-headers line.
        let Some(Preflight::Allowed(reply)) = preflight(&c, &base) else {
            panic!()
        };
        assert_eq!(header(&reply, "access-control-allow-headers"), None);
    }

    #[test]
    fn echoed_values_are_validated_and_bounded() {
        let c = config("https");
        let own = "https://localhost-8726-pod-alpha.example.dev";
        let req = |method: &'static str, headers: Option<&'static str>| PreflightRequest {
            authority: ALPHA,
            method: "OPTIONS",
            origin: Some(own),
            request_method: Some(method),
            request_headers: headers,
        };
        let bad = Some(Preflight::Refused(Denial::BadPreflight));
        assert_eq!(preflight(&c, &req("GET\r\nX: y", None)), bad);
        assert_eq!(preflight(&c, &req("", None)), bad);
        assert_eq!(preflight(&c, &req("G E T", None)), bad);
        let long_method: &'static str = Box::leak("P".repeat(33).into_boxed_str());
        assert_eq!(preflight(&c, &req(long_method, None)), bad);
        assert_eq!(preflight(&c, &req("PUT", Some("a,,b"))), bad);
        assert_eq!(preflight(&c, &req("PUT", Some("a b"))), bad);
        assert_eq!(
            preflight(&c, &req("PUT", Some("x\r\nset-cookie: a=b"))),
            bad
        );
        assert_eq!(preflight(&c, &req("PUT", Some("x\"y"))), bad);
        let many: &'static str = Box::leak(vec!["h"; 33].join(",").into_boxed_str());
        assert_eq!(preflight(&c, &req("PUT", Some(many))), bad);
        let huge: &'static str = Box::leak("h".repeat(1025).into_boxed_str());
        assert_eq!(preflight(&c, &req("PUT", Some(huge))), bad);
        // Browsers' own shapes pass.
        for (method, headers, want) in [
            (
                "PATCH",
                Some("authorization,content-type"),
                "authorization, content-type",
            ),
            ("DELETE", Some(" x-a ,\tx-b "), "x-a, x-b"),
            ("PROPFIND", Some(""), ""),
        ] {
            let Some(Preflight::Allowed(reply)) = preflight(&c, &req(method, headers)) else {
                panic!("{method} {headers:?}");
            };
            assert_eq!(header(&reply, "access-control-allow-methods"), Some(method));
            let got = header(&reply, "access-control-allow-headers").unwrap_or("");
            assert_eq!(got, want);
        }
    }
}
