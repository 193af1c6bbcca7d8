//! A fake pod upstream: an HTTP/1.1 server on 127.0.0.1 that records every TCP connection it
//! accepts and every request it reads (method, path, all headers in order), answers with JSON
//! describing what it received, and echoes WebSocket messages after an upgrade. A test can make
//! it add chosen response headers (`respond_with`: `Set-Cookie`, `Access-Control-*`, raw bytes)
//! to see what the filter lets through to the client.
//!
//! "Nothing reached the pod" is asserted on this record: no request and no connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
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
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let record = Arc::clone(&record);
                let name = Arc::clone(&name);
                async move { Ok::<_, Infallible>(handle(&name, &record, req).await) }
            });
            // A broken connection is the client's business; the record already has it.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
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

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn handle(name: &str, record: &Record, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
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
    };
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
