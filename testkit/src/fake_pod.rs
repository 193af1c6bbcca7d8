//! A fake pod upstream: an HTTP/1.1 server on 127.0.0.1 that records every TCP connection it
//! accepts and every request it reads (method, path, all headers in order), answers with JSON
//! describing what it received, and echoes WebSocket messages after an upgrade. A test can make
//! it add chosen response headers (`respond_with`: `Set-Cookie`, `Access-Control-*`, raw bytes)
//! to see what the filter lets through to the client.
//!
//! "Nothing reached the pod" is asserted on this record: no request and no connection.
//!
//! Given an assertion verifier (`verify_assertions`), the pod checks every request's
//! `x-podgate-assertion` as a real pod would and records the outcome (`Recorded::assertion`).
//!
//! Paths under [`BEHAVIOUR_PREFIX`] (`/_fake/`) make the pod behave like a pod that streams or
//! fails, on any connection, without a pod of its own (see [`Behaviour`]): server-sent events and
//! chunked bodies paced in time, a download generated on the fly, an upload counted as it
//! arrives (never stored), a late answer (a long poll), no answer at all, the connection closed
//! or reset before the answer or in the middle of the body, and bytes that are not HTTP.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{
    HeaderValue, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use podgate_protocol::assertion::{Asserted, AssertionVerifier, ASSERTION_HEADER};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// One request as the pod received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent on the request line.
    pub path: String,
    /// Every header in the order hyper delivers it (lowercase names; lossy UTF-8 values).
    pub headers: Vec<(String, String)>,
    /// Body length in bytes (0 for upgrades).
    pub body_len: usize,
    /// An `Upgrade: websocket` request the pod accepted.
    pub websocket: bool,
    /// What the pod's assertion verifier made of `x-podgate-assertion` (`None` without a
    /// verifier): who the request is for, or why it was refused ("missing" without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assertion: Option<Result<Asserted, String>>,
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
}

#[derive(Debug, Default)]
struct Record {
    connections: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    /// Shared with the tasks that serve upgraded connections.
    ws_messages: Arc<AtomicUsize>,
    /// Headers appended to every plain (non-upgrade) response, in order.
    extra_headers: Mutex<Vec<(String, Vec<u8>)>>,
    /// Checks every request's identity assertion when set.
    assertions: Mutex<Option<Arc<AssertionVerifier>>>,
}

impl Record {
    fn requests(&self) -> MutexGuard<'_, Vec<Recorded>> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn extra_headers(&self) -> MutexGuard<'_, Vec<(String, Vec<u8>)>> {
        self.extra_headers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running fake pod. Stops when dropped.
#[derive(Debug)]
pub struct FakePod {
    name: String,
    addr: SocketAddr,
    record: Arc<Record>,
    accept_loop: JoinHandle<()>,
}

/// What the pod answers for a plain request: its name and what it received.
#[derive(Serialize)]
struct Echo<'a> {
    pod: &'a str,
    #[serde(flatten)]
    request: &'a Recorded,
}

impl FakePod {
    /// Binds 127.0.0.1:0 and serves until dropped. Must be called inside a tokio runtime.
    pub async fn start(name: &str) -> anyhow::Result<FakePod> {
        FakePod::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Binds `addr` (another loopback address stands for another server) and serves until
    /// dropped. Must be called inside a tokio runtime.
    pub async fn start_on(name: &str, addr: SocketAddr) -> anyhow::Result<FakePod> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let record = Arc::new(Record::default());
        let accept_loop = tokio::spawn(accept_loop(name.to_owned(), listener, Arc::clone(&record)));
        Ok(FakePod {
            name: name.to_owned(),
            addr,
            record,
            accept_loop,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received since the last `reset`.
    pub fn requests(&self) -> Vec<Recorded> {
        self.record.requests().clone()
    }

    /// TCP connections accepted since the last `reset`.
    pub fn connections(&self) -> usize {
        self.record.connections.load(Ordering::SeqCst)
    }

    /// WebSocket messages echoed since the last `reset`.
    pub fn ws_messages(&self) -> usize {
        self.record.ws_messages.load(Ordering::SeqCst)
    }

    /// No request read and no connection accepted since the last `reset`.
    pub fn untouched(&self) -> bool {
        self.connections() == 0 && self.record.requests().is_empty()
    }

    /// A one-line description of what the pod got, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "pod {} accepted {} connection(s), got {:?}",
            self.name,
            self.connections(),
            self.requests()
        )
    }

    /// Forgets everything recorded so far, and any headers set with `respond_with`.
    pub fn reset(&self) {
        self.record.connections.store(0, Ordering::SeqCst);
        self.record.ws_messages.store(0, Ordering::SeqCst);
        self.record.requests().clear();
        self.record.extra_headers().clear();
    }

    /// From now on, every request's `x-podgate-assertion` is checked with `verifier` at the
    /// time it arrives, and the outcome recorded (`Recorded::assertion`).
    pub fn verify_assertions(&self, verifier: AssertionVerifier) {
        *self
            .record
            .assertions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(verifier));
    }

    /// From now until the next `reset`, every plain response also carries these headers, in
    /// this order (repeats allowed; values are raw bytes, so obs-text works too).
    pub fn respond_with<N: AsRef<str>, V: AsRef<[u8]>>(&self, headers: &[(N, V)]) {
        *self.record.extra_headers() = headers
            .iter()
            .map(|(n, v)| (n.as_ref().to_ascii_lowercase(), v.as_ref().to_vec()))
            .collect();
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn accept_loop(name: String, listener: TcpListener, record: Arc<Record>) {
    let name: Arc<str> = name.into();
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            continue;
        };
        record.connections.fetch_add(1, Ordering::SeqCst);
        let record = Arc::clone(&record);
        let name = Arc::clone(&name);
        let fate = Arc::new(AtomicU8::new(Fate::Serve as u8));
        let io = PodIo {
            inner: stream,
            fate: Arc::clone(&fate),
        };
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let record = Arc::clone(&record);
                let name = Arc::clone(&name);
                let fate = Arc::clone(&fate);
                async move { Ok::<_, Infallible>(handle(&name, &record, &fate, req).await) }
            });
            // A broken connection is the client's business; the record already has it.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades()
                .await;
        });
    }
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// What the pod answers with: a whole body, or one it streams.
type PodBody = UnsyncBoxBody<Bytes, io::Error>;

fn whole(body: impl Into<Bytes>) -> PodBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<PodBody> {
    streamed(status, content_type, whole(body))
}

fn streamed(status: StatusCode, content_type: &'static str, body: PodBody) -> Response<PodBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn handle(
    name: &str,
    record: &Record,
    fate: &Arc<AtomicU8>,
    mut req: Request<Incoming>,
) -> Response<PodBody> {
    let websocket = is_websocket(&req);
    let mut recorded = Recorded {
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
        assertion: None,
    };
    let verifier = record
        .assertions
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    if let Some(verifier) = verifier {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        recorded.assertion = Some(match recorded.header(ASSERTION_HEADER) {
            None => Err("missing".to_owned()),
            Some(value) => verifier.verify(value, now).map_err(|e| e.to_string()),
        });
    }
    if websocket {
        let key = req.headers().get(SEC_WEBSOCKET_KEY).cloned();
        record.requests().push(recorded);
        let Some(key) = key else {
            return response(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "no Sec-WebSocket-Key",
            );
        };
        let accept = derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        let messages = Arc::clone(&record.ws_messages);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                echo(TokioIo::new(upgraded), &messages).await;
            }
        });
        let mut resp = response(StatusCode::SWITCHING_PROTOCOLS, "text/plain", Bytes::new());
        let headers = resp.headers_mut();
        headers.remove(CONTENT_TYPE);
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
        return resp;
    }
    if let Some(behaviour) = Behaviour::parse(&recorded.path) {
        return behave(name, record, fate, behaviour, recorded, req.into_body()).await;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    recorded.body_len = body.len();
    let echo = serde_json::to_string(&Echo {
        pod: name,
        request: &recorded,
    })
    .unwrap_or_default();
    record.requests().push(recorded);
    let mut resp = response(StatusCode::OK, "application/json", echo);
    for (name, value) in record.extra_headers().iter() {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    resp
}

async fn echo(io: TokioIo<hyper::upgrade::Upgraded>, messages: &AtomicUsize) {
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    while let Some(Ok(message)) = ws.next().await {
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

/// The path prefix of the pod's behaviours; any other path gets the JSON echo.
pub const BEHAVIOUR_PREFIX: &str = "/_fake/";

/// What the pod does for a path under [`BEHAVIOUR_PREFIX`] (query parameters in brackets).
/// Every one is recorded like any request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// `/_fake/events?every_ms=&count=`: `text/event-stream`, one event (`id: i`, `data: i`)
    /// at once and then one every `every_ms`, `count` in all.
    Events { every: Duration, count: u32 },
    /// `/_fake/chunks?every_ms=&count=`: a chunked `text/plain` body, one line (`chunk i`) at
    /// once and then one every `every_ms`, `count` in all.
    Chunks { every: Duration, count: u32 },
    /// `/_fake/bytes?len=`: `len` bytes with their `Content-Length`, generated as they are sent
    /// (64 KiB pieces of one shared buffer), never held whole.
    Bytes { len: u64 },
    /// `/_fake/count`: reads the request body as it arrives, keeping only its length, and
    /// answers `{"pod", "received"}` (recorded as `body_len`).
    Count,
    /// `/_fake/delay?ms=`: the JSON echo, `ms` milliseconds late (a long poll).
    Delay { after: Duration },
    /// `/_fake/never`: reads the request and never answers.
    Never,
    /// `/_fake/close`: closes the connection (FIN) instead of answering.
    Close,
    /// `/_fake/reset`: resets the connection (RST) instead of answering.
    Reset,
    /// `/_fake/cut?after=`: answers 200 with a `Content-Length` of twice `after`, sends `after`
    /// bytes, then resets the connection.
    Cut { after: u64 },
    /// `/_fake/garbage`: writes bytes that are not HTTP (an SSH banner and binary) and closes.
    Garbage,
    /// `/_fake/redirect?port=`: `302 Found` to `/_fake/redirected` on the same origin, or with
    /// `port`, to `http://127.0.0.1:{port}/elsewhere` (another origin).
    Redirect { port: Option<u16> },
}

impl Behaviour {
    /// The behaviour a request path (with its query) asks for, if any.
    pub fn parse(path_and_query: &str) -> Option<Behaviour> {
        let rest = path_and_query.strip_prefix(BEHAVIOUR_PREFIX)?;
        let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
        let param = |key: &str, default: u64| {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(default)
        };
        let count = |default| u32::try_from(param("count", default)).unwrap_or(u32::MAX);
        Some(match name {
            "events" => Behaviour::Events {
                every: Duration::from_millis(param("every_ms", 300)),
                count: count(10),
            },
            "chunks" => Behaviour::Chunks {
                every: Duration::from_millis(param("every_ms", 300)),
                count: count(10),
            },
            "bytes" => Behaviour::Bytes {
                len: param("len", 1024),
            },
            "count" => Behaviour::Count,
            "delay" => Behaviour::Delay {
                after: Duration::from_millis(param("ms", 1000)),
            },
            "never" => Behaviour::Never,
            "close" => Behaviour::Close,
            "reset" => Behaviour::Reset,
            "cut" => Behaviour::Cut {
                after: param("after", 65536),
            },
            "garbage" => Behaviour::Garbage,
            "redirect" => Behaviour::Redirect {
                port: u16::try_from(param("port", 0)).ok().filter(|p| *p > 0),
            },
            _ => return None,
        })
    }
}

/// What happens to a connection's next write: set by a behaviour, carried out by [`PodIo`].
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Write what hyper writes.
    Serve = 0,
    /// Write nothing and close (FIN).
    Close = 1,
    /// Write nothing and reset (RST: `SO_LINGER` 0, then close).
    Reset = 2,
    /// Write [`GARBAGE`] instead, then close.
    Garbage = 3,
}

/// Not HTTP: what an SSH server says first, then binary.
const GARBAGE: &[u8] = b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02\xff\xfe\r\n\r\n";

/// The pod's side of one connection: hyper reads and writes through it, and a behaviour can
/// make the next write close or reset the connection or send bytes that are not HTTP instead.
struct PodIo {
    inner: TcpStream,
    fate: Arc<AtomicU8>,
}

impl PodIo {
    fn fate(&self) -> Fate {
        match self.fate.load(Ordering::SeqCst) {
            1 => Fate::Close,
            2 => Fate::Reset,
            3 => Fate::Garbage,
            _ => Fate::Serve,
        }
    }

    /// Ends the connection as its fate says; hyper then drops it (which closes the socket).
    fn end(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match self.fate() {
            Fate::Serve => Poll::Ready(Ok(0)),
            Fate::Close => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Fate::Reset => {
                // Closing with a zero linger sends RST instead of FIN.
                let _ = self.inner.set_zero_linger();
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            }
            Fate::Garbage => match Pin::new(&mut self.inner).poll_write(cx, GARBAGE) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(_) => {
                    self.fate.store(Fate::Close as u8, Ordering::SeqCst);
                    Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
                }
            },
        }
    }
}

impl AsyncRead for PodIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PodIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.fate() == Fate::Serve {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        self.end(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.fate() == Fate::Serve {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        self.end(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.fate() == Fate::Serve {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        self.end(cx).map_ok(|_| ())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.fate() == Fate::Serve {
            return Pin::new(&mut self.inner).poll_shutdown(cx);
        }
        self.end(cx).map_ok(|_| ())
    }
}

/// One frame of a streamed body.
type Piece = Result<Frame<Bytes>, io::Error>;

fn stream_body(pieces: impl futures_util::Stream<Item = Piece> + Send + Sync + 'static) -> PodBody {
    StreamBody::new(pieces).boxed_unsync()
}

/// `count` pieces, the first at once, then one every `every`, each made by `piece(i)`.
fn paced(every: Duration, count: u32, piece: fn(u32) -> String) -> PodBody {
    let start = tokio::time::Instant::now();
    stream_body(futures_util::stream::unfold(0u32, move |i| async move {
        if i >= count {
            return None;
        }
        tokio::time::sleep_until(start + every * i).await;
        Some((Ok(Frame::data(Bytes::from(piece(i)))), i + 1))
    }))
}

/// `len` bytes in pieces of one shared 64 KiB buffer; `then`, when given, is set as the
/// connection's fate once they are all handed over, and the next piece carries it out.
fn generated(len: u64, then: Option<(Arc<AtomicU8>, Fate)>) -> PodBody {
    const PIECE: usize = 64 * 1024;
    let buffer = Bytes::from((0..PIECE).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    stream_body(futures_util::stream::unfold(0u64, move |sent| {
        let buffer = buffer.clone();
        let then = then.clone();
        async move {
            if sent >= len {
                let (fate, to) = then?;
                // Time for hyper to write out everything before: the fate is for what follows.
                tokio::time::sleep(Duration::from_millis(200)).await;
                fate.store(to as u8, Ordering::SeqCst);
                // One more byte to write, so the connection meets its fate now.
                return Some((Ok(Frame::data(Bytes::from_static(b"x"))), u64::MAX));
            }
            let piece = usize::try_from(len - sent).map_or(PIECE, |left| left.min(PIECE));
            Some((Ok(Frame::data(buffer.slice(..piece))), sent + piece as u64))
        }
    }))
}

async fn behave(
    name: &str,
    record: &Record,
    fate: &Arc<AtomicU8>,
    behaviour: Behaviour,
    mut recorded: Recorded,
    mut body: Incoming,
) -> Response<PodBody> {
    if behaviour == Behaviour::Count {
        let started = Instant::now();
        let mut received = 0usize;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => received += frame.data_ref().map_or(0, Bytes::len),
                Err(_) => break,
            }
        }
        recorded.body_len = received;
        record.requests().push(recorded);
        let answer = serde_json::json!({
            "pod": name,
            "received": received,
            "ms": started.elapsed().as_millis(),
        });
        return response(StatusCode::OK, "application/json", answer.to_string());
    }
    record.requests().push(recorded.clone());
    match behaviour {
        Behaviour::Events { every, count } => streamed(
            StatusCode::OK,
            "text/event-stream",
            paced(every, count, |i| format!("id: {i}\ndata: {i}\n\n")),
        ),
        Behaviour::Chunks { every, count } => streamed(
            StatusCode::OK,
            "text/plain",
            paced(every, count, |i| format!("chunk {i}\n")),
        ),
        Behaviour::Bytes { len } => {
            let mut resp = streamed(
                StatusCode::OK,
                "application/octet-stream",
                generated(len, None),
            );
            resp.headers_mut()
                .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
            resp
        }
        Behaviour::Cut { after } => {
            let mut resp = streamed(
                StatusCode::OK,
                "application/octet-stream",
                generated(after, Some((Arc::clone(fate), Fate::Reset))),
            );
            resp.headers_mut().insert(
                hyper::header::CONTENT_LENGTH,
                HeaderValue::from(after.saturating_mul(2)),
            );
            resp
        }
        Behaviour::Delay { after } => {
            tokio::time::sleep(after).await;
            let echo = serde_json::to_string(&Echo {
                pod: name,
                request: &recorded,
            })
            .unwrap_or_default();
            response(StatusCode::OK, "application/json", echo)
        }
        Behaviour::Redirect { port } => {
            let to = match port {
                Some(port) => format!("http://127.0.0.1:{port}/elsewhere"),
                None => format!("{BEHAVIOUR_PREFIX}redirected"),
            };
            let mut resp = response(StatusCode::FOUND, "text/plain", "moved");
            if let Ok(to) = HeaderValue::from_str(&to) {
                resp.headers_mut().insert(hyper::header::LOCATION, to);
            }
            resp
        }
        Behaviour::Never => {
            // Longer than any test; the connection goes when the peer or the runtime does.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            response(StatusCode::OK, "text/plain", "too late")
        }
        Behaviour::Close | Behaviour::Reset | Behaviour::Garbage | Behaviour::Count => {
            let to = match behaviour {
                Behaviour::Reset => Fate::Reset,
                Behaviour::Garbage => Fate::Garbage,
                _ => Fate::Close,
            };
            fate.store(to as u8, Ordering::SeqCst);
            // hyper's write of this answer meets the fate instead.
            response(StatusCode::OK, "text/plain", "never sent")
        }
    }
}
