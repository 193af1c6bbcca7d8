//! What the filter changes in a pod's response before the browser sees it: `Set-Cookie` headers
//! a pod may not send (`set_cookie`), `Access-Control-*` headers (`cors`), and the directives of
//! a `Clear-Site-Data` that would clear more than the pod's own origin. Responses from
//! the control plane (the reserved path) are not touched: it sets our cookie.
//!
//! The response path must stay cheap: the filter reads the response header map once and, for a
//! response without `Set-Cookie`, `Access-Control-*` or `Clear-Site-Data` headers and a request
//! without a same-pod `Origin`, makes no other host call.

use crate::config::CompiledConfig;
use crate::cors::{is_same_pod_origin, KEPT_FOR_SAME_POD};
use crate::host::PodAddr;
use crate::set_cookie::{judge_with, Refusal};

/// What the response phase needs to remember about its request. Nothing is parsed here: the
/// request path stays as cheap as before, and a response that needs no decision never parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodResponse {
    /// The request's `:authority` as the client sent it (the filter rewrites it for the pod).
    authority: String,
    /// The request's `Origin`, if any.
    origin: Option<String>,
}

impl PodResponse {
    /// For a request forwarded to a pod: its `:authority` and `Origin` as the client sent them.
    pub fn new(authority: &str, origin: Option<&str>) -> PodResponse {
        PodResponse {
            authority: authority.to_owned(),
            origin: origin.map(str::to_owned),
        }
    }
}

/// The request's pod and host, worked out on first use (parsing costs more than the rest of
/// the response path, and most responses never need it).
struct Lazy<'a> {
    config: &'a CompiledConfig,
    ctx: &'a PodResponse,
    pod: Option<Option<PodAddr>>,
    host: Option<String>,
}

impl<'a> Lazy<'a> {
    fn new(config: &'a CompiledConfig, ctx: &'a PodResponse) -> Self {
        Lazy {
            config,
            ctx,
            pod: None,
            host: None,
        }
    }

    /// The pod of the request's authority; `None` if it is not a pod host (never for a
    /// forwarded request): then no `Domain` and no `Origin` is ever the pod's.
    fn pod(&mut self) -> Option<&PodAddr> {
        let (config, ctx) = (self.config, self.ctx);
        self.pod
            .get_or_insert_with(|| config.public_hosts.parse(&ctx.authority).ok())
            .as_ref()
    }

    /// Whether `domain` is the pod's own public host.
    fn is_pod_host(&mut self, domain: &str) -> bool {
        if self.host.is_none() {
            let config = self.config;
            let Some(pod) = self.pod() else { return false };
            self.host = Some(config.public_hosts.render(pod));
        }
        self.host
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(domain))
    }

    /// The request's `Origin` when it is an origin of the same pod.
    fn cors_origin(&mut self) -> Option<&'a str> {
        let (config, ctx) = (self.config, self.ctx);
        let origin = ctx.origin.as_deref()?;
        let pod = self.pod()?;
        is_same_pod_origin(config, pod, origin).then_some(origin)
    }
}

/// One change to the response headers, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseEdit {
    /// Remove every header of this name.
    Remove(Vec<u8>),
    /// Append a header (kept `Set-Cookie` headers go back this way, in order).
    Add(Vec<u8>, Vec<u8>),
    /// Replace every header of this name with one value.
    Set(&'static str, String),
}

/// The edits for one response, with counts for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sanitized {
    pub edits: Vec<ResponseEdit>,
    /// `Set-Cookie` headers dropped, by reason.
    pub dropped_cookies: Vec<Refusal>,
    /// `Access-Control-*` header names of the pod removed.
    pub stripped_cors: usize,
}

const SET_COOKIE: &[u8] = b"set-cookie";
const ACCESS_CONTROL: &[u8] = b"access-control-";
const CLEAR_SITE_DATA: &[u8] = b"clear-site-data";
/// The `Clear-Site-Data` directives a pod keeps: they clear what belongs to its own origin.
/// `"cookies"` (and `"*"`, which includes it) clears every cookie of the registrable domain,
/// other pods' and the control plane's among them, and `"cache"` may reach past the origin
/// too; those are dropped.
const ORIGIN_SCOPED_DIRECTIVES: [&str; 2] = ["\"storage\"", "\"executionContexts\""];

/// `Clear-Site-Data` values narrowed to the origin-scoped directives; `None` when nothing
/// needs to change.
fn narrowed_clear_site_data(values: &[&[u8]]) -> Option<Vec<Vec<u8>>> {
    let mut kept = Vec::new();
    let mut changed = false;
    for value in values {
        let directives: Vec<&[u8]> = value
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|d| !d.is_empty())
            .collect();
        let scoped: Vec<&[u8]> = directives
            .iter()
            .copied()
            .filter(|d| ORIGIN_SCOPED_DIRECTIVES.iter().any(|o| o.as_bytes() == *d))
            .collect();
        changed |= scoped.len() != directives.len();
        if !scoped.is_empty() {
            kept.push(scoped.join(&b", "[..]));
        }
    }
    changed.then_some(kept)
}

fn is_name(name: &[u8], want: &[u8]) -> bool {
    name.eq_ignore_ascii_case(want)
}

fn starts_with_ignore_case(name: &[u8], prefix: &[u8]) -> bool {
    name.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// The names among `headers` that tell a shared cache (a CDN's, nginx's) to keep a response
/// whatever its `Cache-Control` says: `CDN-Cache-Control` and the vendors' own
/// `*-CDN-Cache-Control` (RFC 9213), `Surrogate-Control`, `Edge-Control` and `X-Accel-Expires`.
/// A response that carries a renewed capability cookie goes without them (and with
/// `Cache-Control: no-store`), so that no cache hands the cookie to others.
pub fn shared_cache_directives<'a>(headers: &[(&'a [u8], &'a [u8])]) -> Vec<&'a [u8]> {
    const OTHERS: [&[u8]; 3] = [b"surrogate-control", b"edge-control", b"x-accel-expires"];
    let mut names: Vec<&[u8]> = Vec::new();
    for (name, _) in headers {
        let cdn = name.len() >= 17
            && name
                .get(name.len() - 17..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case(b"cdn-cache-control"));
        let other = OTHERS.iter().any(|o| name.eq_ignore_ascii_case(o));
        if (cdn || other) && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name);
        }
    }
    names
}

/// Decides the edits for the response headers `headers` (name and value bytes, in order).
pub fn sanitize<'a>(
    config: &CompiledConfig,
    ctx: &PodResponse,
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Sanitized {
    let mut set_cookies: Vec<&[u8]> = Vec::new();
    let mut cors_names: Vec<&[u8]> = Vec::new();
    let mut clear_site_data: Vec<&[u8]> = Vec::new();
    for (name, value) in headers {
        if is_name(name, SET_COOKIE) {
            set_cookies.push(value);
        } else if is_name(name, CLEAR_SITE_DATA) {
            clear_site_data.push(value);
        } else if starts_with_ignore_case(name, ACCESS_CONTROL)
            && !cors_names.iter().any(|n| n.eq_ignore_ascii_case(name))
        {
            cors_names.push(name);
        }
    }
    let mut out = Sanitized::default();
    if let Some(kept) = narrowed_clear_site_data(&clear_site_data) {
        out.edits
            .push(ResponseEdit::Remove(CLEAR_SITE_DATA.to_vec()));
        for value in kept {
            out.edits
                .push(ResponseEdit::Add(CLEAR_SITE_DATA.to_vec(), value));
        }
    }
    if set_cookies.is_empty() && cors_names.is_empty() && ctx.origin.is_none() {
        return out;
    }
    let mut lazy = Lazy::new(config, ctx);
    if !set_cookies.is_empty() {
        let mut kept = Vec::with_capacity(set_cookies.len());
        for value in &set_cookies {
            match judge_with(value, &config.reserved_cookies, |d| lazy.is_pod_host(d)) {
                Ok(()) => kept.push(*value),
                Err(refusal) => out.dropped_cookies.push(refusal),
            }
        }
        if !out.dropped_cookies.is_empty() {
            out.edits.push(ResponseEdit::Remove(SET_COOKIE.to_vec()));
            for value in kept {
                out.edits
                    .push(ResponseEdit::Add(SET_COOKIE.to_vec(), value.to_vec()));
            }
        }
    }
    let same_pod = lazy.cors_origin();
    for name in cors_names {
        if same_pod.is_some() && is_name(name, KEPT_FOR_SAME_POD.as_bytes()) {
            continue;
        }
        out.stripped_cors += 1;
        out.edits
            .push(ResponseEdit::Remove(name.to_ascii_lowercase()));
    }
    if let Some(origin) = same_pod {
        out.edits.push(ResponseEdit::Set(
            "access-control-allow-origin",
            origin.to_owned(),
        ));
        out.edits.push(ResponseEdit::Set(
            "access-control-allow-credentials",
            "true".to_owned(),
        ));
        out.edits
            .push(ResponseEdit::Add(b"vary".to_vec(), b"Origin".to_vec()));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::FilterConfig;

    const ALPHA: &str = "localhost-8726-pod-alpha.example.dev";

    #[test]
    fn every_shared_cache_directive_is_found_once() {
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b"cache-control", b"public"),
            (b"cdn-cache-control", b"max-age=600"),
            (b"Cloudflare-CDN-Cache-Control", b"max-age=600"),
            (b"vercel-cdn-cache-control", b"max-age=600"),
            (b"surrogate-control", b"max-age=600"),
            (b"edge-control", b"cache-maxage=600s"),
            (b"x-accel-expires", b"600"),
            (b"CDN-Cache-Control", b"again"),
            (b"x-cdn-cache-controlled", b"no"),
            (b"content-type", b"text/html"),
        ];
        let found = shared_cache_directives(&headers);
        assert_eq!(
            found,
            [
                &b"cdn-cache-control"[..],
                b"Cloudflare-CDN-Cache-Control",
                b"vercel-cdn-cache-control",
                b"surrogate-control",
                b"edge-control",
                b"x-accel-expires",
            ]
        );
    }

    fn config() -> CompiledConfig {
        let json = serde_json::json!({
            "issuer": "https://podgate.example.dev",
            "domain": "example.dev",
            "public_scheme": "https",
            "auth_url": "https://podgate.example.dev/api/proxy-auth",
            "keys": {"keys": []},
        });
        FilterConfig::compile_json(json.to_string().as_bytes()).unwrap()
    }

    fn ctx(origin: Option<&str>) -> PodResponse {
        PodResponse::new("localhost-8726-pod-alpha.example.dev:443", origin)
    }

    fn run(c: &CompiledConfig, ctx: &PodResponse, headers: &[(&str, &[u8])]) -> Sanitized {
        sanitize(c, ctx, headers.iter().map(|(n, v)| (n.as_bytes(), *v)))
    }

    #[test]
    fn the_context_names_the_pod_host_and_only_a_same_pod_origin() {
        let c = config();
        let plain = ctx(None);
        let mut lazy = Lazy::new(&c, &plain);
        assert!(lazy.is_pod_host(ALPHA));
        assert!(lazy.is_pod_host(&ALPHA.to_ascii_uppercase()));
        assert!(!lazy.is_pod_host("localhost-8727-pod-alpha.example.dev"));
        assert_eq!(lazy.cors_origin(), None);
        for (origin, same) in [
            ("https://localhost-8727-pod-alpha.example.dev", true),
            ("https://localhost-8726-pod-alpha.example.dev", true),
            ("https://localhost-8726-pod-beta.example.dev", false),
            ("http://localhost-8727-pod-alpha.example.dev", false),
            ("null", false),
            ("https://localhost-8727-pod-alpha.example.dev/x", false),
            ("https://LOCALHOST-8727-POD-ALPHA.EXAMPLE.DEV", false),
        ] {
            let ctx = ctx(Some(origin));
            let mut lazy = Lazy::new(&c, &ctx);
            assert_eq!(lazy.cors_origin(), same.then_some(origin), "{origin}");
        }
    }

    /// `Clear-Site-Data: "cookies"` clears every cookie of the registrable domain: other pods'
    /// capabilities and apps' sessions, and the control plane's when it shares the domain. A pod
    /// keeps only the directives that stay within its own origin.
    #[test]
    fn clear_site_data_keeps_only_what_stays_in_the_pods_origin() {
        let c = config();
        let csd = |values: &[&[u8]]| {
            let headers: Vec<(&str, &[u8])> =
                values.iter().map(|v| ("Clear-Site-Data", *v)).collect();
            run(&c, &ctx(None), &headers)
        };
        // Origin-scoped only: untouched.
        let out = csd(&[b"\"storage\", \"executionContexts\""]);
        assert_eq!(out, Sanitized::default());
        // Cookies, cache and the wildcard go; what is left stays, in order.
        let out = csd(&[b"\"cookies\", \"storage\"", b"\"cache\""]);
        assert_eq!(
            out.edits,
            [
                ResponseEdit::Remove(b"clear-site-data".to_vec()),
                ResponseEdit::Add(b"clear-site-data".to_vec(), b"\"storage\"".to_vec()),
            ]
        );
        for value in [
            &b"\"*\""[..],
            b"\"cookies\"",
            b"\"COOKIES\"",
            b"cookies",
            b"\"cache\"",
        ] {
            let out = csd(&[value]);
            assert_eq!(
                out.edits,
                [ResponseEdit::Remove(b"clear-site-data".to_vec())],
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn a_plain_response_needs_no_edit() {
        let c = config();
        let plain: &[(&str, &[u8])] = &[
            (":status", b"200"),
            ("content-type", b"text/html"),
            ("vary", b"accept-encoding"),
            ("x-access-control-note", b"not ours"),
        ];
        assert_eq!(run(&c, &ctx(None), plain), Sanitized::default());
        let good_cookies: &[(&str, &[u8])] = &[
            (":status", b"200"),
            ("set-cookie", b"a=1; Path=/"),
            (
                "set-cookie",
                b"b=2; Domain=localhost-8726-pod-alpha.example.dev",
            ),
        ];
        assert_eq!(run(&c, &ctx(None), good_cookies), Sanitized::default());
        // A request whose authority is not a pod host (never forwarded): fail closed.
        let stray = PodResponse::new("evil.example", Some("https://evil.example"));
        let out = run(&c, &stray, good_cookies);
        assert_eq!(out.dropped_cookies, [Refusal::ForeignDomain]);
        assert!(!out.edits.iter().any(|e| matches!(e, ResponseEdit::Set(..))));
    }

    #[test]
    fn bad_cookies_go_and_the_rest_come_back_in_order_byte_for_byte() {
        let c = config();
        let headers: &[(&str, &[u8])] = &[
            (":status", b"200"),
            ("set-cookie", b"first=1; Path=/"),
            ("set-cookie", b"podgate_cap=forged"),
            ("content-type", b"text/plain"),
            ("set-cookie", b"toss=1; Domain=.example.dev"),
            ("set-cookie", b"second=\"q v\"; HttpOnly"),
            ("set-cookie", b"junk=\xff"),
            ("set-cookie", b"third=3"),
        ];
        let out = run(&c, &ctx(None), headers);
        assert_eq!(
            out.dropped_cookies,
            [Refusal::OurName, Refusal::ForeignDomain, Refusal::Malformed]
        );
        let sc = || b"set-cookie".to_vec();
        assert_eq!(
            out.edits,
            [
                ResponseEdit::Remove(sc()),
                ResponseEdit::Add(sc(), b"first=1; Path=/".to_vec()),
                ResponseEdit::Add(sc(), b"second=\"q v\"; HttpOnly".to_vec()),
                ResponseEdit::Add(sc(), b"third=3".to_vec()),
            ]
        );
        // Only bad ones: the header goes entirely.
        let only_bad: &[(&str, &[u8])] = &[("set-cookie", b"__Host-podgate_cap=x")];
        assert_eq!(
            run(&c, &ctx(None), only_bad).edits,
            [ResponseEdit::Remove(sc())]
        );
    }

    #[test]
    fn cors_headers_of_the_pod_never_survive_and_ours_follow_the_origin() {
        let c = config();
        let headers: &[(&str, &[u8])] = &[
            (":status", b"200"),
            ("access-control-allow-origin", b"*"),
            ("access-control-allow-credentials", b"true"),
            (
                "access-control-allow-origin",
                b"https://localhost-8726-pod-beta.example.dev",
            ),
            ("access-control-expose-headers", b"x-total"),
            ("access-control-allow-methods", b"*"),
            ("access-control-max-age", b"86400"),
        ];
        let removed = |names: &[&str]| -> Vec<ResponseEdit> {
            names
                .iter()
                .map(|n| ResponseEdit::Remove(n.as_bytes().to_vec()))
                .collect()
        };
        // No Origin, or a foreign one: everything goes, nothing is added.
        for origin in [
            None,
            Some("https://localhost-8726-pod-beta.example.dev"),
            Some("null"),
        ] {
            let out = run(&c, &ctx(origin), headers);
            assert_eq!(
                out.edits,
                removed(&[
                    "access-control-allow-origin",
                    "access-control-allow-credentials",
                    "access-control-expose-headers",
                    "access-control-allow-methods",
                    "access-control-max-age",
                ]),
                "{origin:?}"
            );
            assert_eq!(out.stripped_cors, 5);
        }
        // A same-pod origin: the pod's go (but expose-headers), ours are set.
        let own = "https://localhost-8727-pod-alpha.example.dev";
        let out = run(&c, &ctx(Some(own)), headers);
        let mut want = removed(&[
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-allow-methods",
            "access-control-max-age",
        ]);
        want.extend([
            ResponseEdit::Set("access-control-allow-origin", own.to_owned()),
            ResponseEdit::Set("access-control-allow-credentials", "true".to_owned()),
            ResponseEdit::Add(b"vary".to_vec(), b"Origin".to_vec()),
        ]);
        assert_eq!(out.edits, want);
        // Same-pod origin and a pod that said nothing: ours are set all the same.
        let quiet: &[(&str, &[u8])] = &[(":status", b"204")];
        assert_eq!(run(&c, &ctx(Some(own)), quiet).edits.len(), 3);
    }

    #[test]
    fn mixed_case_and_junk_names_are_matched_without_panicking() {
        let c = config();
        let headers: &[(&str, &[u8])] = &[
            ("Set-Cookie", b"podgate_cap=x"),
            ("ACCESS-CONTROL-ALLOW-ORIGIN", b"*"),
            ("access-control-", b""),
            ("access-control", b"x"),
            ("", b""),
            ("set-cookie", b""),
        ];
        let out = run(&c, &ctx(None), headers);
        assert_eq!(out.dropped_cookies, [Refusal::OurName, Refusal::Nameless]);
        assert!(out.edits.contains(&ResponseEdit::Remove(
            b"access-control-allow-origin".to_vec()
        )));
        assert!(out
            .edits
            .contains(&ResponseEdit::Remove(b"access-control-".to_vec())));
        assert!(!out
            .edits
            .contains(&ResponseEdit::Remove(b"access-control".to_vec())));
    }
}
