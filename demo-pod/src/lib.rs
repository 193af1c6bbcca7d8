//! A stand-in for a pod's nginx, for tests and `just demo`.
//!
//! One HTTP/1.1 listener that routes by `Host` the way the pod's nginx does (`^localhost-(\d+)\.`
//! names the port inside the pod; a Host that does not match goes to port 3000, nginx's default)
//! to small fake services:
//!
//! | port | path | answer |
//! |---|---|---|
//! | any | `/ws` with `Upgrade: websocket` | a WebSocket echo |
//! | 8726 | `/`, `/index.html` | an HTML page: [`marker`] text, the server's name, the user, and a script that opens a WebSocket to `/ws` on the same host and shows the echo |
//! | 8726, 3000 | `/api/info` | JSON describing what the pod received ([`Info`]) |
//! | 3000 | `/` | JSON index of the API |
//! | any other | any | `502 {"error": "no service on port N"}` |
//!
//! As a library it records every TCP connection it accepts and every request it reads, so a test
//! can assert that nothing reached the pod ([`DemoPod::untouched`]) and what exactly did.
//!
//! Given an [`AssertionCheck`] (`--assertion-jwks-url`), it verifies every request's
//! `x-podgate-assertion` as a real pod should (the control plane's published assertion keys,
//! its issuer, an audience of this pod) and shows the outcome on the page and in `/api/info`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HOST, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use podgate_protocol::assertion::{AssertionVerifier, Audience, ASSERTION_HEADER};
use podgate_protocol::token::{KeyError, KeySet};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The port of the HTML page (the first tab of the workbench page).
pub const PAGE_PORT: u16 = 8726;
/// The port of the JSON API.
pub const API_PORT: u16 = 3000;
/// Where a Host that names no port goes (the pod's nginx default).
pub const DEFAULT_PORT: u16 = 3000;
/// The WebSocket echo's path (on every port).
pub const WS_PATH: &str = "/ws";
/// The largest request body read; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The visible marker text of the page on `port`: what a browser test looks for.
pub fn marker(port: u16) -> String {
    format!("podgate demo pod \u{2014} port {port}")
}

/// The port inside the pod that a Host names, as the pod's nginx reads it: `^localhost-(\d+)\.`
/// (case-insensitive). `None` when the Host does not match or the number is not a port.
pub fn target_port(host: &str) -> Option<u16> {
    let prefix = host.get(..10)?;
    if !prefix.eq_ignore_ascii_case("localhost-") {
        return None;
    }
    let rest = &host[10..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || rest.as_bytes().get(digits) != Some(&b'.') {
        return None;
    }
    rest[..digits].parse().ok().filter(|p| *p != 0)
}

/// One request as the pod received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recorded {
    /// The TCP peer (Envoy, in the stack).
    pub peer: SocketAddr,
    pub method: String,
    /// Path and query, as sent on the request line.
    pub path: String,
    /// Every header in the order hyper delivers it (lowercase names; lossy UTF-8 values).
    pub headers: Vec<(String, String)>,
    /// Body length in bytes (0 for upgrades).
    pub body_len: usize,
    /// An `Upgrade: websocket` request.
    pub websocket: bool,
    /// The port inside the pod the Host named (or [`DEFAULT_PORT`]).
    pub service_port: u16,
    /// What the pod's [`AssertionCheck`] made of `x-podgate-assertion` (`None` without one).
    pub assertion: Option<AssertionOutcome>,
}

/// What checking a request's identity assertion gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssertionOutcome {
    /// A valid assertion for this pod: who the request is for.
    Verified { sub: String, email: Option<String> },
    /// Missing, forged, expired, for another pod, or no keys yet.
    Refused { reason: String },
}

/// How the demo pod checks `x-podgate-assertion`: the control plane's issuer, this pod's
/// audience, and the published assertion keys (replaced by [`AssertionCheck::set_keys`]).
#[derive(Debug)]
pub struct AssertionCheck {
    issuer: String,
    audience: Audience,
    verifier: std::sync::RwLock<Option<AssertionVerifier>>,
}

impl AssertionCheck {
    pub fn new(issuer: &str, audience: Audience) -> AssertionCheck {
        AssertionCheck {
            issuer: issuer.to_owned(),
            audience,
            verifier: std::sync::RwLock::new(None),
        }
    }

    /// Puts the published key set (`/.well-known/podgate-assertion-jwks.json`) in force.
    pub fn set_keys(&self, keys: &KeySet) -> Result<(), KeyError> {
        let verifier = AssertionVerifier::new(&*self.issuer, keys, self.audience.clone(), 5)?;
        *self
            .verifier
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(verifier);
        Ok(())
    }

    /// Checks one request's assertion header at `now` (unix seconds).
    pub fn check(&self, value: Option<&str>, now: i64) -> AssertionOutcome {
        let refused = |reason: &str| AssertionOutcome::Refused {
            reason: reason.to_owned(),
        };
        let Some(value) = value else {
            return refused("no x-podgate-assertion");
        };
        let guard = self
            .verifier
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(verifier) = guard.as_ref() else {
            return refused("no assertion keys fetched yet");
        };
        match verifier.verify(value, now) {
            Ok(asserted) => AssertionOutcome::Verified {
                sub: asserted.sub,
                email: asserted.email,
            },
            Err(e) => refused(&e.to_string()),
        }
    }
}

/// Unix seconds now.
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Recorded {
    /// The first value of a header (name in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether any header has this name.
    pub fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }

    /// The names of every cookie in every `Cookie` header, in order.
    pub fn cookie_names(&self) -> Vec<String> {
        cookie_names(self.header_all("cookie").into_iter())
    }

    /// True when any header value contains `needle` (e.g. a token that must not reach the pod).
    pub fn mentions(&self, needle: &str) -> bool {
        self.path.contains(needle) || self.headers.iter().any(|(_, v)| v.contains(needle))
    }
}

fn cookie_names<'a>(headers: impl Iterator<Item = &'a str>) -> Vec<String> {
    headers
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
            (!name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

/// What `GET /api/info` answers: what the pod received.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// The pod's name (`--name`), e.g. which server it runs on.
    pub pod: String,
    pub service_port: u16,
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    /// `x-podgate-user`, set by the podgate filter.
    pub user: Option<String>,
    /// `x-podgate-email`, set by the podgate filter.
    pub email: Option<String>,
    /// Names only: values never leave the pod in a demo.
    pub cookie_names: Vec<String>,
    pub header_names: Vec<String>,
    /// The identity assertion's check (with `--assertion-jwks-url`): the user it proves, or
    /// why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assertion: Option<AssertionOutcome>,
}

impl Info {
    fn of(name: &str, r: &Recorded) -> Info {
        let mut header_names: Vec<String> = Vec::new();
        for (n, _) in &r.headers {
            if !header_names.contains(n) {
                header_names.push(n.clone());
            }
        }
        Info {
            pod: name.to_owned(),
            service_port: r.service_port,
            method: r.method.clone(),
            path: r.path.clone(),
            host: r.header("host").map(str::to_owned),
            user: r.header("x-podgate-user").map(str::to_owned),
            email: r.header("x-podgate-email").map(str::to_owned),
            cookie_names: r.cookie_names(),
            header_names,
            assertion: r.assertion.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Record {
    connections: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    /// Shared with the tasks that serve upgraded connections.
    ws_messages: Arc<AtomicUsize>,
}

impl Record {
    fn requests(&self) -> MutexGuard<'_, Vec<Recorded>> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How a [`DemoPod`] runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Shown on the page and in every JSON answer (e.g. "server A").
    pub name: String,
    /// One line per request on stderr.
    pub log_requests: bool,
    /// Checks every request's identity assertion when set.
    pub assertions: Option<Arc<AssertionCheck>>,
}

impl Options {
    pub fn named(name: &str) -> Options {
        Options {
            name: name.to_owned(),
            log_requests: false,
            assertions: None,
        }
    }
}

struct Shared {
    options: Options,
    record: Record,
    stop: watch::Receiver<bool>,
}

/// A running demo pod. Stops (listener, connections and WebSockets) when dropped or
/// [`DemoPod::stop`]ped.
pub struct DemoPod {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept_loop: JoinHandle<()>,
}

impl std::fmt::Debug for DemoPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoPod")
            .field("name", &self.shared.options.name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl DemoPod {
    /// Binds 127.0.0.1 on an ephemeral port. Must be called inside a tokio runtime.
    pub async fn start(name: &str) -> anyhow::Result<DemoPod> {
        DemoPod::bind(Options::named(name), "127.0.0.1:0".parse()?).await
    }

    /// Binds `addr` and serves until stopped. Must be called inside a tokio runtime.
    pub async fn bind(options: Options, addr: SocketAddr) -> anyhow::Result<DemoPod> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        DemoPod::serve(options, listener)
    }

    /// Serves on an already bound listener.
    pub fn serve(options: Options, listener: TcpListener) -> anyhow::Result<DemoPod> {
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            options,
            record: Record::default(),
            stop: stop_rx,
        });
        let accept_loop = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(DemoPod {
            addr,
            shared,
            stop,
            accept_loop,
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.options.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request read since the last [`reset`](Self::reset).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.record.requests().clone()
    }

    /// TCP connections accepted since the last reset.
    pub fn connections(&self) -> usize {
        self.shared.record.connections.load(Ordering::SeqCst)
    }

    /// WebSocket messages echoed since the last reset.
    pub fn ws_messages(&self) -> usize {
        self.shared.record.ws_messages.load(Ordering::SeqCst)
    }

    /// No connection accepted and no request read since the last reset.
    pub fn untouched(&self) -> bool {
        self.connections() == 0 && self.shared.record.requests().is_empty()
    }

    /// A one-line description of what the pod got, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "demo pod {:?} ({}) accepted {} connection(s), got {:?}",
            self.name(),
            self.addr,
            self.connections(),
            self.requests()
        )
    }

    /// Forgets everything recorded so far.
    pub fn reset(&self) {
        let record = &self.shared.record;
        record.connections.store(0, Ordering::SeqCst);
        record.ws_messages.store(0, Ordering::SeqCst);
        record.requests().clear();
    }

    /// Stops listening and closes every connection, WebSockets included.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        self.accept_loop.abort();
    }

    /// Resolves when [`stop`](Self::stop) is called or the accept loop ends.
    pub async fn stopped(&self) {
        let mut rx = self.shared.stop.clone();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

impl Drop for DemoPod {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut stop = shared.stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of file descriptors and the like: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        shared.record.connections.fetch_add(1, Ordering::SeqCst);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut stop = shared.stop.clone();
            let service_shared = Arc::clone(&shared);
            let service = service_fn(move |req| {
                let shared = Arc::clone(&service_shared);
                async move { Ok::<_, Infallible>(handle(&shared, peer, req).await) }
            });
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            // A broken connection is the client's business; the record already has it.
            tokio::select! {
                _ = conn => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, value: &impl Serialize) -> Resp {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    response(status, "application/json", body)
}

fn error_json(status: StatusCode, message: &str) -> Resp {
    json_response(status, &json!({ "error": message }))
}

async fn handle(shared: &Shared, peer: SocketAddr, mut req: Request<Incoming>) -> Resp {
    let host = req
        .headers()
        .get(HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .unwrap_or_default();
    let service_port = target_port(&host).unwrap_or(DEFAULT_PORT);
    let websocket = is_websocket(&req);
    let path_only = req.uri().path().to_owned();
    let mut recorded = Recorded {
        peer,
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len: 0,
        websocket,
        service_port,
        assertion: None,
    };
    if let Some(check) = &shared.options.assertions {
        recorded.assertion = Some(check.check(recorded.header(ASSERTION_HEADER), now_unix()));
    }
    let name = shared.options.name.as_str();
    let resp = if websocket {
        let key = req.headers().get(SEC_WEBSOCKET_KEY).cloned();
        shared.record.requests().push(recorded.clone());
        match key {
            _ if path_only != WS_PATH => error_json(
                StatusCode::NOT_FOUND,
                &format!("no WebSocket at {path_only}; the echo is at {WS_PATH}"),
            ),
            None => error_json(StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key"),
            Some(key) => upgrade(shared, &mut req, &key),
        }
    } else {
        let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
            .collect()
            .await;
        match body {
            Ok(body) => {
                recorded.body_len = body.to_bytes().len();
                shared.record.requests().push(recorded.clone());
                route(name, &recorded, &path_only)
            }
            Err(_) => {
                shared.record.requests().push(recorded.clone());
                error_json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the demo pod reads at most {MAX_BODY_BYTES} bytes of body"),
                )
            }
        }
    };
    if shared.options.log_requests {
        eprintln!(
            "[{name}] {} {host} {} -> port {service_port}: {}",
            recorded.method,
            recorded.path,
            resp.status().as_u16()
        );
    }
    resp
}

fn upgrade(shared: &Shared, req: &mut Request<Incoming>, key: &HeaderValue) -> Resp {
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    let stop = shared.stop.clone();
    let messages = Arc::clone(&shared.record.ws_messages);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            echo(TokioIo::new(upgraded), &messages, stop).await;
        }
    });
    let mut resp = response(StatusCode::SWITCHING_PROTOCOLS, "text/plain", Bytes::new());
    let headers = resp.headers_mut();
    headers.remove(CONTENT_TYPE);
    headers.remove(CACHE_CONTROL);
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    resp
}

/// Echoes text and binary messages until the peer closes or the pod stops.
async fn echo(
    io: TokioIo<hyper::upgrade::Upgraded>,
    messages: &AtomicUsize,
    mut stop: watch::Receiver<bool>,
) {
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    loop {
        let next = tokio::select! {
            next = ws.next() => next,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(Ok(message)) = next else { return };
        match message {
            Message::Text(_) | Message::Binary(_) => {
                messages.fetch_add(1, Ordering::SeqCst);
                if ws.send(message).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// Routes a plain (non-upgrade) request by the port its Host named.
fn route(name: &str, r: &Recorded, path: &str) -> Resp {
    let get = r.method == "GET" || r.method == "HEAD";
    match (r.service_port, path) {
        (_, WS_PATH) => error_json(
            StatusCode::UPGRADE_REQUIRED,
            "this is the WebSocket echo; connect with a WebSocket client",
        ),
        (PAGE_PORT | API_PORT, "/api/info") => json_response(StatusCode::OK, &Info::of(name, r)),
        (PAGE_PORT, "/" | "/index.html") if get => {
            response(StatusCode::OK, "text/html; charset=utf-8", page(name, r))
        }
        (API_PORT, "/") if get => json_response(
            StatusCode::OK,
            &json!({
                "service": "podgate demo JSON API",
                "pod": name,
                "endpoints": ["GET /api/info", "WebSocket /ws"],
            }),
        ),
        (PAGE_PORT | API_PORT, _) => error_json(
            StatusCode::NOT_FOUND,
            &format!(
                "the demo pod has nothing at {path} on port {}",
                r.service_port
            ),
        ),
        (port, _) => error_json(
            StatusCode::BAD_GATEWAY,
            &format!("no service on port {port}"),
        ),
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The script of the page: a WebSocket to `/ws` on the page's own host, showing the echo.
const PAGE_SCRIPT: &str = r#"(function () {
  var status = document.getElementById("ws-status");
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var ws;
  try { ws = new WebSocket(scheme + location.host + "/ws"); }
  catch (e) { status.textContent = "WebSocket: " + e; status.className = "err"; return; }
  ws.onopen = function () { ws.send("hello from " + location.host); };
  ws.onmessage = function (event) {
    status.textContent = "WebSocket echo: " + event.data;
    status.className = "ok";
    ws.close();
  };
  ws.onerror = function () { status.textContent = "WebSocket: error"; status.className = "err"; };
})();"#;

fn page(name: &str, r: &Recorded) -> String {
    let marker = html_escape(&marker(r.service_port));
    let name = html_escape(name);
    let user = html_escape(
        r.header("x-podgate-user")
            .unwrap_or("nobody (no x-podgate-user)"),
    );
    let host = html_escape(r.header("host").unwrap_or(""));
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{marker}</title>
<style>
  body {{ font-family: sans-serif; margin: 2rem; background: #eef6ee; color: #123; }}
  #marker {{ font-size: 1.8rem; color: #0a6b2d; }}
  code {{ background: #fff; padding: 0 .3rem; }}
  .ok {{ color: #0a6b2d; font-weight: bold; }}
  .err {{ color: #a00; font-weight: bold; }}
</style>
</head>
<body>
<h1 id="marker">{marker}</h1>
<p>Served by <b id="server">{name}</b> to <b id="user">{user}</b>.</p>
<p>Host as the pod saw it: <code id="host">{host}</code></p>
<p id="ws-status">WebSocket: connecting&hellip;</p>
<script>
{PAGE_SCRIPT}
</script>
</body>
</html>
"#
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn target_port_reads_the_host_like_the_pods_nginx() {
        assert_eq!(target_port("localhost-8726.pod-demo.localhost"), Some(8726));
        assert_eq!(target_port("LOCALHOST-3000.pod-x.example.dev"), Some(3000));
        assert_eq!(target_port("localhost-3000-pod-demo.localhost"), None);
        assert_eq!(target_port("localhost-.pod"), None);
        assert_eq!(target_port("localhost-99999.pod"), None);
        assert_eq!(target_port("localhost-0.pod"), None);
        assert_eq!(target_port("localhost"), None);
        assert_eq!(target_port(""), None);
        assert_eq!(target_port("xlocalhost-80.pod"), None);
    }

    #[test]
    fn cookie_names_keep_order_and_drop_values() {
        assert_eq!(
            cookie_names(["a=1; b=2", "c", " d = x "].into_iter()),
            vec!["a", "b", "c", "d"]
        );
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}
