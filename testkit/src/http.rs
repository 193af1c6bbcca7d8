//! One HTTP/1.1 exchange written by hand on a fresh connection: the request goes out exactly as
//! given, and the answer is read until the peer closes (`Connection: close`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long one exchange may take, connect to close.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `request_line_and_headers` (ending in `\r\n`) followed by `Host: localhost`,
/// `Content-Length` and `Connection: close`, then `body`; returns the status and the body
/// (de-chunked when the answer is chunked).
pub async fn exchange(
    addr: SocketAddr,
    request_line_and_headers: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    exchange_on(addr, "localhost", request_line_and_headers, body).await
}

/// [`exchange`] with `Host: host`: a request line with a path no URL parser would keep as is
/// (`/a/../b`, `%2e%2e`) to a public host through Envoy.
pub async fn exchange_on(
    addr: SocketAddr,
    host: &str,
    request_line_and_headers: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let head = format!(
        "{request_line_and_headers}Host: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    let response = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(&request).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    })
    .await
    .with_context(|| format!("no answer from {addr} within {EXCHANGE_TIMEOUT:?}"))??;
    Ok(parse_response(&response))
}

/// One `GET path` (Envoy's admin API, a pod): status and body.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    exchange(addr, &format!("GET {path} HTTP/1.1\r\n"), b"").await
}

/// The status (0 when there is none) and the body of a whole HTTP/1.1 response.
pub fn parse_response(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

/// The payload of a chunked body; stops at the last chunk or at the first malformed one.
pub fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}
