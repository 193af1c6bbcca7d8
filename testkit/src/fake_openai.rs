//! A fake OpenAI-compatible upstream: an HTTP/1.1 server on 127.0.0.1 that records every
//! request's headers and answers `POST /v1/chat/completions` with `"stream": true` as
//! server-sent events in the chat-completion chunk format, one chunk every `every`, then
//! `data: [DONE]`. Any other request gets a 404 in OpenAI's error shape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The words the fake streams, one per chunk.
pub const FAKE_OPENAI_WORDS: [&str; 5] = ["one ", "two ", "three ", "four ", "five"];

/// One request as the fake received it: method, path, headers in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl OpenAiRequest {
    /// Every value of header `name` (lowercase).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A running fake; stops when dropped.
pub struct FakeOpenAi {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<OpenAiRequest>>>,
    task: JoinHandle<()>,
}

impl FakeOpenAi {
    /// Binds 127.0.0.1:0; streams one chunk every `every`.
    pub async fn start(every: Duration) -> anyhow::Result<FakeOpenAi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, Arc::clone(&record), every));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(FakeOpenAi { addr, seen, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<OpenAiRequest> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

/// One `chat.completion.chunk` event: word `i`, or the last one with `finish_reason`.
fn chunk(i: usize) -> String {
    let (delta, finish) = match FAKE_OPENAI_WORDS.get(i) {
        Some(word) => (
            serde_json::json!({"content": word}),
            serde_json::Value::Null,
        ),
        None => (serde_json::json!({}), serde_json::json!("stop")),
    };
    let event = serde_json::json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    format!("data: {event}\n\n")
}

async fn answer(
    req: Request<Incoming>,
    record: Arc<Mutex<Vec<OpenAiRequest>>>,
    every: Duration,
) -> Result<Response<Body>, Infallible> {
    let recorded = OpenAiRequest {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
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
    };
    if let Ok(mut seen) = record.lock() {
        seen.push(recorded.clone());
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let streaming = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .is_some_and(|v| v["stream"] == true);
    if recorded.method != "POST" || recorded.path != "/v1/chat/completions" || !streaming {
        let error =
            serde_json::json!({"error": {"message": "not found", "type": "invalid_request_error"}});
        return Ok(full(
            StatusCode::NOT_FOUND,
            "application/json",
            error.to_string(),
        ));
    }
    let start = tokio::time::Instant::now();
    let pieces = futures_util::stream::unfold(0usize, move |i| async move {
        let last = FAKE_OPENAI_WORDS.len() + 1;
        if i > last {
            return None;
        }
        tokio::time::sleep_until(start + every * u32::try_from(i).unwrap_or(u32::MAX)).await;
        let text = if i == last {
            "data: [DONE]\n\n".to_owned()
        } else {
            chunk(i)
        };
        Some((
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(text))),
            i + 1,
        ))
    });
    let mut resp = Response::new(StreamBody::new(pieces).boxed_unsync());
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    Ok(resp)
}
