//! `forward POD PORT`: a local HTTP listener that sends every request, WebSockets included, to
//! the pod port's public URL through Envoy with a capability in `podgate-token`. The capability
//! is renewed before it expires, by a background task and, should that fall behind, before a
//! request. One upstream connection per request: simple, and a WebSocket owns its connection
//! anyway.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, COOKIE, HOST, ORIGIN, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::api::{is_localhost, now_unix, Backend, Capability};
use crate::error::{code, CliError, Result};

type Body = BoxBody<Bytes, hyper::Error>;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where the pod port is reached: its public URL's parts.
struct Target {
    https: bool,
    host: String,
    port: u16,
    /// `host[:port]` as the `Host` header.
    authority: String,
    /// `scheme://authority`, for `Origin`.
    origin: String,
}

impl Target {
    /// Whether what is sent to it stays between this machine and the edge: `https`, or a
    /// loopback host.
    fn keeps_secrets(&self) -> bool {
        self.https
            || is_localhost(&self.host)
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    fn from_url(url: &str) -> Result<Target> {
        let bad = || CliError::other(format!("the control plane gave an odd pod URL: {url}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let https = match scheme {
            "http" => false,
            "https" => true,
            _ => return Err(bad()),
        };
        let authority = rest.split('/').next().ok_or_else(bad)?.to_owned();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h.to_owned(), p.parse().map_err(|_| bad())?)
            }
            _ => (authority.clone(), if https { 443 } else { 80 }),
        };
        Ok(Target {
            https,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            origin: format!("{scheme}://{authority}"),
            authority,
        })
    }
}

struct Shared {
    backend: Backend,
    pod: String,
    port: u16,
    cap: Mutex<Held>,
    /// Failed attempts to get a capability for a request, counted to tell a request whether
    /// one failed while it waited for [`Shared::cap`].
    failures: AtomicU64,
    target: Target,
    local: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    /// Told when the control plane refuses the API token or access to the pod port: `forward`
    /// then stops with that error, rather than asking again with a token that cannot succeed
    /// (each refused attempt also counts against the failed-token limit of this address).
    refused: tokio::sync::mpsc::UnboundedSender<CliError>,
}

/// The capability held, and the last failure to get one for a request that needed it.
struct Held {
    cap: Capability,
    failed: Option<CliError>,
}

impl Shared {
    /// The capability to send now: the one held while it is valid (the background task renews
    /// it ahead of its end), else a new one, which the request waits for (after the machine
    /// slept, or when the control plane could not be reached until its end). One request asks
    /// at a time; the requests that waited meanwhile get its failure rather than each waiting
    /// for the control plane in turn (up to its 30 s timeout apiece).
    async fn token(&self) -> Result<String> {
        let failures_before = self.failures.load(Ordering::SeqCst);
        let mut held = self.cap.lock().await;
        if !held.cap.usable(now_unix()) {
            if self.failures.load(Ordering::SeqCst) != failures_before {
                if let Some(e) = &held.failed {
                    return Err(CliError::new(e.code, e.message.clone()));
                }
            }
            match self.stop_if_refused(self.backend.capability(&self.pod, self.port).await) {
                Ok(cap) => {
                    eprintln!(
                        "podgate-cli: capability renewed, expires {}",
                        cap.expires_at
                    );
                    *held = Held { cap, failed: None };
                }
                Err(e) => {
                    held.failed = Some(CliError::new(e.code, e.message.clone()));
                    self.failures.fetch_add(1, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        Ok(held.cap.token.clone())
    }

    /// Replaces the capability with a new one. On failure the held one stays in use until its
    /// end: a control plane away for a moment does not fail requests the capability still
    /// covers.
    async fn renew(&self) -> Result<()> {
        let fresh = self.stop_if_refused(self.backend.capability(&self.pod, self.port).await)?;
        eprintln!(
            "podgate-cli: capability renewed, expires {}",
            fresh.expires_at
        );
        *self.cap.lock().await = Held {
            cap: fresh,
            failed: None,
        };
        Ok(())
    }

    /// `asked`, after telling `forward` to stop when it is a refusal no retry can change
    /// ([`CliError::is_refusal`]).
    fn stop_if_refused<T>(&self, asked: Result<T>) -> Result<T> {
        if let Some(e) = asked.as_ref().err().filter(|e| e.is_refusal()) {
            let _ = self.refused.send(CliError::new(e.code, e.message.clone()));
        }
        asked
    }

    /// The edge refused the capability `sent` as invalid (revoked, cut off, its signing key
    /// withdrawn): if it is still the one held, it is not sent again, and the next request
    /// waits for a new one, or stops `forward` when the control plane refuses the API token.
    /// Not within five seconds of obtaining it, so that a pod answering such a `401` itself
    /// costs a new capability now and then, not one per request.
    async fn refused_by_edge(&self, sent: &str) {
        let mut held = self.cap.lock().await;
        let now = now_unix();
        if held.cap.token == sent && now.saturating_sub(held.cap.obtained_at) >= 5 {
            eprintln!("podgate-cli: the edge refused the capability; asking for a new one");
            held.cap.expires_unix = held.cap.expires_unix.min(now);
        }
    }

    /// Seconds until the capability needs renewing.
    async fn until_renewal(&self) -> u64 {
        let renew_at = self.cap.lock().await.cap.renew_at();
        u64::try_from(renew_at + 1 - now_unix()).unwrap_or(0)
    }

    /// Seconds the held capability may still be sent.
    async fn usable_for(&self) -> i64 {
        self.cap.lock().await.cap.usable_for(now_unix())
    }

    async fn connect(&self) -> std::io::Result<Box<dyn Io>> {
        let tcp = if is_localhost(&self.target.host) {
            TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, self.target.port))).await?
        } else {
            TcpStream::connect((self.target.host.as_str(), self.target.port)).await?
        };
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(tls) => {
                let name =
                    tokio_rustls::rustls::pki_types::ServerName::try_from(self.target.host.clone())
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                Ok(Box::new(tls.connect(name, tcp).await?))
            }
        }
    }
}

/// TLS to the edge: the public roots, and the system's (`SSL_CERT_FILE` and `SSL_CERT_DIR`
/// included), as `curl` and the control plane calls have them, so that a platform on a private
/// CA the machine trusts is reached too.
fn tls_connector() -> Result<tokio_rustls::TlsConnector> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // A certificate of the system's that cannot be read is skipped, as reqwest skips it.
    let (_added, _skipped) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CliError::other(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

pub async fn run(backend: Backend, pod: String, port: u16, local: SocketAddr) -> Result<u8> {
    let cap = backend.capability(&pod, port).await?;
    let target = Target::from_url(&cap.url)?;
    let listener = TcpListener::bind(local).await.map_err(|e| {
        CliError::other(format!(
            "cannot listen on {local}: {e}; pick another with --local"
        ))
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::other(format!("cannot listen on {local}: {e}")))?;
    let tls = if target.https {
        Some(tls_connector()?)
    } else {
        None
    };
    println!(
        "podgate-cli: forwarding http://{local}/ to {} (pod {pod} port {port}); Ctrl-C stops",
        cap.url
    );
    let (refused, mut refusal) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        backend,
        pod,
        port,
        cap: Mutex::new(Held { cap, failed: None }),
        failures: AtomicU64::new(0),
        target,
        local,
        tls,
        refused,
    });
    let renewer = Arc::clone(&shared);
    tokio::spawn(async move {
        loop {
            let wait = renewer.until_renewal().await;
            tokio::time::sleep(Duration::from_secs(wait.max(1))).await;
            if let Err(e) = renewer.renew().await {
                if e.is_refusal() {
                    // `forward` stops and says why.
                    return;
                }
                match renewer.usable_for().await {
                    0 => eprintln!(
                        "podgate-cli: cannot renew the capability: {e}; retrying in {RENEW_RETRY_SECS} s"
                    ),
                    left => eprintln!(
                        "podgate-cli: cannot renew the capability: {e}; the current one is sent for {left} s more, retrying in {RENEW_RETRY_SECS} s"
                    ),
                }
                tokio::time::sleep(Duration::from_secs(RENEW_RETRY_SECS)).await;
            }
        }
    });
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tokio::signal::ctrl_c() => return Ok(0),
            Some(e) = refusal.recv() => return Err(e),
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(answer(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn full(status: StatusCode, msg: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": msg }).to_string();
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn answer(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    match proxy(shared, req).await {
        Ok(resp) => resp,
        Err(e) => {
            eprintln!("podgate-cli: {e}");
            let status = match e.code {
                code::TOKEN_REFUSED => StatusCode::UNAUTHORIZED,
                code::ACCESS_REFUSED => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_GATEWAY,
            };
            full(status, &format!("podgate-cli: {e}"))
        }
    }
}

/// Seconds between attempts to renew the capability when the control plane cannot be reached.
const RENEW_RETRY_SECS: u64 = 5;

/// Hop-by-hop headers (RFC 9110 §7.6.1), not forwarded; `Upgrade` and `Connection: upgrade`
/// are put back for an upgrade.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// Whether the edge answered that the capability is not valid (any more): `401` with
/// `WWW-Authenticate: Bearer realm="podgate", error="invalid_token"`.
fn refused_as_invalid<B>(resp: &Response<B>) -> bool {
    resp.status() == StatusCode::UNAUTHORIZED
        && resp
            .headers()
            .get_all(hyper::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("realm=\"podgate\"") && v.contains("error=\"invalid_token\""))
}

/// Whether a cookie named `name` is one of podgate's: the capability cookie, the control
/// plane's session and its sign-in cookie (with or without the `__Host-` prefix).
fn is_podgate_cookie(name: &[u8]) -> bool {
    let name = name.strip_prefix(b"__Host-").unwrap_or(name);
    name == b"podgate_cap" || name == b"podgate_session" || name.starts_with(b"podgate_signin")
}

/// Removes podgate's cookies from the request's `Cookie` headers, the others kept in order
/// (a header left empty goes). Cookies ignore ports: a browser sends this listener every
/// cookie of its host, the control plane's session included when the control plane is on
/// `localhost` too, and the pod must never get it.
fn strip_podgate_cookies(headers: &mut hyper::HeaderMap) {
    let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    let is_ours = |pair: &[u8]| {
        let pair = pair.trim_ascii_start();
        let name = pair.split(|b| *b == b'=').next().unwrap_or(pair);
        is_podgate_cookie(name.trim_ascii_end())
    };
    if !values
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b';').any(is_ours))
    {
        return;
    }
    headers.remove(COOKIE);
    for value in values {
        let kept: Vec<&[u8]> = value
            .as_bytes()
            .split(|b| *b == b';')
            .filter(|pair| !is_ours(pair) && !pair.trim_ascii().is_empty())
            .map(<[u8]>::trim_ascii)
            .collect();
        if let Ok(v) = HeaderValue::from_bytes(&kept.join(&b"; "[..])) {
            if !v.is_empty() {
                headers.append(COOKIE, v);
            }
        }
    }
}

/// Whether `origin` is this listener's own (a browser page served through the forward).
fn is_local_origin(origin: &str, local: SocketAddr) -> bool {
    let Some(rest) = origin.strip_prefix("http://") else {
        return false;
    };
    names_listener(rest, local, |host| {
        host == "127.0.0.1" || host == "::1" || is_localhost(host)
    })
}

/// Whether `authority` (`host[:port]`, an IPv6 address in brackets) has this listener's port,
/// 80 when it names none (as browsers and curl leave it out), and a host `host_ok` accepts.
fn names_listener(authority: &str, local: SocketAddr, host_ok: impl Fn(&str) -> bool) -> bool {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, rest)) => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return false,
            },
            None => return false,
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port_ok = match port {
        Some(port) => port == local.port().to_string(),
        None => local.port() == 80,
    };
    port_ok && !host.is_empty() && host_ok(host)
}

/// Why a request to the listener is not forwarded, if it is not: it must name the listener by
/// an IP address or a `localhost` name with its port (another name is DNS rebinding: a web page
/// of that name reading the pod as the user), and must not come from another site's page
/// (`Origin` of another site, `Sec-Fetch-Site: cross-site`: a page making the user's browser
/// send requests that would carry the capability).
fn refusal<B>(req: &Request<B>, local: SocketAddr) -> Option<&'static str> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let host_ok = header(HOST.as_str()).is_some_and(|h| {
        names_listener(h, local, |name| {
            name.parse::<std::net::IpAddr>().is_ok() || is_localhost(name)
        })
    });
    if !host_ok {
        return Some("podgate-cli forward answers only requests to its own address (an IP address or localhost with its port)");
    }
    // `null` included: a sandboxed frame of any page sends it. With `Sec-Fetch-Site:
    // same-origin`, which browsers set and no page can, it is a page served through this
    // forward under `Referrer-Policy: no-referrer`, as the filter reads it too.
    let own_null =
        header(ORIGIN.as_str()) == Some("null") && header("sec-fetch-site") == Some("same-origin");
    if !own_null && header(ORIGIN.as_str()).is_some_and(|o| !is_local_origin(o, local)) {
        return Some("podgate-cli forward refuses requests from another site's page");
    }
    if header("sec-fetch-site") == Some("cross-site") {
        return Some("podgate-cli forward refuses requests from another site's page");
    }
    None
}

async fn proxy(shared: &Shared, mut req: Request<Incoming>) -> Result<Response<Body>> {
    if let Some(why) = refusal(&req, shared.local) {
        return Ok(full(StatusCode::FORBIDDEN, why));
    }
    let upgrade = req.headers().get(UPGRADE).cloned();
    // A WebSocket goes with the API token: the edge exchanges it and renews the capability the
    // socket lives on until the token ends, where a capability of ours would end it at its
    // `exp`. Never in the clear off this machine (an `http://` pod URL elsewhere): the token
    // reaches every pod of its owner, a capability one pod port for minutes. Every other
    // request goes with the capability held.
    let token = match upgrade {
        Some(_) if shared.target.keeps_secrets() => shared.backend.api_token().to_owned(),
        _ => shared.token().await?,
    };
    let client_side = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = path
        .parse()
        .map_err(|_| CliError::other("the request target is not a path"))?;
    strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = upgrade {
        parts.headers.insert(UPGRADE, u);
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let bad_header = |_| CliError::other("the pod URL is not a valid header value");
    parts.headers.insert(
        HOST,
        HeaderValue::from_str(&shared.target.authority).map_err(bad_header)?,
    );
    let local_origin = parts
        .headers
        .get(ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| is_local_origin(o, shared.local));
    if local_origin {
        parts.headers.insert(
            ORIGIN,
            HeaderValue::from_str(&shared.target.origin).map_err(bad_header)?,
        );
    }
    strip_podgate_cookies(&mut parts.headers);
    parts.headers.remove("podgate-token");
    parts.headers.insert(
        HeaderName::from_static("podgate-token"),
        HeaderValue::from_str(&token).map_err(|_| CliError::other("odd capability"))?,
    );
    let unreachable = |e: &dyn std::fmt::Display| {
        CliError::new(
            code::UNREACHABLE,
            format!(
                "cannot reach {}: {e}; check the URL and your network",
                shared.target.origin
            ),
        )
    };
    let io = shared.connect().await.map_err(|e| unreachable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn.with_upgrades());
    let mut resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| unreachable(&e))?;
    if refused_as_invalid(&resp) {
        shared.refused_by_edge(&token).await;
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_side {
            let pod_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(c), Ok(p)) = tokio::join!(client_side, pod_side) {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(p))
                            .await;
                }
            });
        }
    } else {
        strip_hop_by_hop(resp.headers_mut());
    }
    Ok(resp.map(BodyExt::boxed))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_api_token_travels_only_over_tls_or_loopback() {
        for (url, keeps) in [
            ("https://pod.example.dev/", true),
            ("http://localhost-3000-pod-demo.localhost:10000/", true),
            ("http://127.0.0.1:10000/", true),
            ("http://[::1]:10000/", true),
            ("http://pod.example.dev/", false),
            ("http://10.0.0.5:10000/", false),
        ] {
            assert_eq!(
                Target::from_url(url).unwrap().keeps_secrets(),
                keeps,
                "{url}"
            );
        }
    }

    #[test]
    fn podgates_cookies_never_reach_the_pod_and_the_others_do() {
        let mut h = hyper::HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("podgate_session=s1; app=1;__Host-podgate_session=s2"),
        );
        h.append(
            COOKIE,
            HeaderValue::from_static("podgate_signin=t; podgate_cap=c; __Host-podgate_cap=d"),
        );
        h.append(
            COOKIE,
            HeaderValue::from_static("theme=dark; podgate_sessionx=kept"),
        );
        strip_podgate_cookies(&mut h);
        let left: Vec<_> = h
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["app=1", "theme=dark; podgate_sessionx=kept"]);
        // Nothing of ours: the headers are left exactly as sent.
        let mut h = hyper::HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1;b=2 ;  c"));
        strip_podgate_cookies(&mut h);
        assert_eq!(h.get(COOKIE).unwrap(), "a=1;b=2 ;  c");
    }

    #[test]
    fn targets_and_origins() {
        let t = Target::from_url("http://localhost-3000-pod-a.localhost:10000/").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port),
            (false, "localhost-3000-pod-a.localhost", 10000)
        );
        assert_eq!(t.origin, "http://localhost-3000-pod-a.localhost:10000");
        let t = Target::from_url("https://3000-pod-a.pods.example.dev/").unwrap();
        assert_eq!((t.https, t.port), (true, 443));
        assert_eq!(t.authority, "3000-pod-a.pods.example.dev");
        let local: SocketAddr = "127.0.0.1:8700".parse().unwrap();
        assert!(is_local_origin("http://127.0.0.1:8700", local));
        assert!(is_local_origin("http://localhost:8700", local));
        assert!(!is_local_origin("http://evil.example:8700", local));
        assert!(!is_local_origin("http://127.0.0.1:8701", local));
    }

    #[test]
    fn only_its_own_address_and_no_other_site() {
        let local: SocketAddr = "127.0.0.1:8700".parse().unwrap();
        let req = |headers: &[(&str, &str)]| {
            let mut b = Request::builder().uri("/");
            for (n, v) in headers {
                b = b.header(*n, *v);
            }
            b.body(()).unwrap()
        };
        for ok in [
            req(&[("host", "127.0.0.1:8700")]),
            req(&[
                ("host", "localhost:8700"),
                ("origin", "http://localhost:8700"),
            ]),
            req(&[("host", "[::1]:8700"), ("sec-fetch-site", "same-origin")]),
            req(&[
                ("host", "127.0.0.1:8700"),
                ("origin", "null"),
                ("sec-fetch-site", "same-origin"),
            ]),
        ] {
            assert_eq!(refusal(&ok, local), None, "{ok:?}");
        }
        for bad in [
            req(&[]),
            req(&[("host", "127.0.0.1")]),
            req(&[("host", "127.0.0.1:9999")]),
            req(&[("host", "rebound.evil.example:8700")]),
            req(&[
                ("host", "127.0.0.1:8700"),
                ("origin", "https://evil.example"),
            ]),
            req(&[("host", "127.0.0.1:8700"), ("origin", "null")]),
            req(&[
                ("host", "127.0.0.1:8700"),
                ("origin", "null"),
                ("sec-fetch-site", "cross-site"),
            ]),
            req(&[("host", "127.0.0.1:8700"), ("sec-fetch-site", "cross-site")]),
        ] {
            assert!(refusal(&bad, local).is_some(), "{bad:?}");
        }
        // On port 80 browsers and curl leave the port out of `Host` and `Origin`.
        let on_80: SocketAddr = "127.0.0.1:80".parse().unwrap();
        for ok in [
            req(&[("host", "127.0.0.1")]),
            req(&[("host", "localhost"), ("origin", "http://localhost")]),
            req(&[("host", "[::1]"), ("origin", "http://[::1]")]),
            req(&[("host", "127.0.0.1:80")]),
        ] {
            assert_eq!(refusal(&ok, on_80), None, "{ok:?}");
        }
        for bad in [
            req(&[("host", "rebound.evil.example")]),
            req(&[("host", "127.0.0.1:8700")]),
            req(&[("host", "[::1]x")]),
            req(&[("host", "127.0.0.1"), ("origin", "http://evil.example")]),
        ] {
            assert!(refusal(&bad, on_80).is_some(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn requests_waiting_for_a_capability_share_the_failure_of_the_one_that_asked() {
        // A control plane that accepts connections and never answers.
        let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = hole.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((conn, _)) = hole.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                open.push(conn);
            }
        });
        let mut backend = Backend::new(&format!("http://{addr}"), "pg_id_secret").unwrap();
        backend.timeout = Duration::from_millis(300);
        let expired = r#"{"token":"t","url":"http://localhost-1-pod-p.localhost:1/","expires_at":"2027-01-01T00:00:00Z","expires_in":30}"#;
        let (refused, _refusal) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            backend,
            pod: "p".into(),
            port: 1,
            cap: Mutex::new(Held {
                cap: Capability::from_answer(expired, now_unix() - 60).unwrap(),
                failed: None,
            }),
            failures: AtomicU64::new(0),
            target: Target::from_url("http://localhost-1-pod-p.localhost:1/").unwrap(),
            local: addr,
            tls: None,
            refused,
        });
        let (a, b, c) = tokio::join!(shared.token(), shared.token(), shared.token());
        for r in [a, b, c] {
            let e = r.expect_err("no capability can be had");
            assert_eq!(e.code, code::UNREACHABLE, "{}", e.message);
        }
        // One asked; the two waiting behind it took its answer.
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // A request after that asks again.
        assert!(shared.token().await.is_err());
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
