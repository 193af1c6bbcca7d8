//! Talking to Envoy over loopback. Rust resolvers do not resolve `*.localhost`, so every request
//! connects to the listener's 127.0.0.1 address and carries the pod host in `Host`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::header::HOST;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

/// An HTTP/1.1 client for one Envoy listener; never follows redirects.
#[derive(Debug, Clone)]
pub struct EnvoyClient {
    listener: SocketAddr,
    http: reqwest::Client,
}

/// An answer, read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl EnvoyClient {
    pub fn new(listener: SocketAddr) -> anyhow::Result<EnvoyClient> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(EnvoyClient { listener, http })
    }

    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    /// A request to `path` on `host` (sent in `Host`), to add headers to.
    pub fn request(
        &self,
        method: reqwest::Method,
        host: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("http://{}{path}", self.listener))
            .header(HOST, host)
    }

    pub fn get(&self, host: &str, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, host, path)
    }

    /// Sends and reads the whole answer.
    pub async fn send(builder: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let resp = builder.send().await.context("request through Envoy")?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.context("reading the answer")?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Opens a WebSocket to `path` on `host` through Envoy with extra request headers.
    pub async fn websocket(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<WsOutcome> {
        let mut request = format!("ws://{host}{path}").into_client_request()?;
        for (name, value) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName = name.parse()?;
            request
                .headers_mut()
                .append(name, HeaderValue::from_str(value)?);
        }
        let stream = TcpStream::connect(self.listener).await?;
        let handshake = tokio_tungstenite::client_async(request, stream);
        match tokio::time::timeout(Duration::from_secs(10), handshake).await {
            Err(_) => anyhow::bail!("WebSocket handshake through Envoy timed out"),
            Ok(Ok((ws, _response))) => Ok(WsOutcome::Open(Box::new(ws))),
            Ok(Err(WsError::Http(response))) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                Ok(WsOutcome::Refused {
                    status,
                    body,
                    retry_after,
                })
            }
            Ok(Err(other)) => Err(other).context("WebSocket handshake through Envoy"),
        }
    }
}

/// How a WebSocket handshake through Envoy ended.
#[derive(Debug)]
pub enum WsOutcome {
    Open(Box<WebSocketStream<TcpStream>>),
    /// A non-101 answer.
    Refused {
        status: u16,
        body: String,
        /// Its `Retry-After`, if any.
        retry_after: Option<String>,
    },
}
