//! The upstream pod of `--realistic`: HTTP/1.1 keep-alive that reads request bodies (by
//! `Content-Length`) and answers each with a small 200, and WebSocket upgrades answered 101 and
//! then echoed byte for byte (the comparison's upstream, `upstream.rs`, answers bodiless GETs
//! only).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OK_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// Starts the realistic upstream on its own thread; returns its address.
pub fn start(cpu: Option<usize>) -> anyhow::Result<SocketAddr> {
    crate::upstream::start_serving("upstream-realistic", cpu, serve)
}

/// Answers each request (its body read by `Content-Length`) with a 200; an upgrade to
/// WebSocket with a 101, then echoes every byte.
async fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = request.parse(&buf[..filled]);
        let head = match parsed {
            Ok(httparse::Status::Complete(n)) => Some(n),
            Ok(httparse::Status::Partial) => None,
            Err(_) => return,
        };
        if let Some(head) = head {
            let mut length = 0usize;
            let mut upgrade = false;
            for h in request.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    length = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                } else if h.name.eq_ignore_ascii_case("upgrade") {
                    upgrade = h.value.eq_ignore_ascii_case(b"websocket");
                }
            }
            if filled >= head + length {
                if upgrade {
                    if stream.write_all(SWITCHING).await.is_err() {
                        return;
                    }
                    let rest = buf[head..filled].to_vec();
                    if !rest.is_empty() && stream.write_all(&rest).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = stream.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    return;
                }
                if stream.write_all(OK_RESPONSE).await.is_err() {
                    return;
                }
                buf.copy_within(head + length..filled, 0);
                filled -= head + length;
                continue;
            }
        }
        if filled == buf.len() {
            if buf.len() >= 1 << 20 {
                return;
            }
            buf.resize(buf.len() * 2, 0);
        }
        match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
    }
}
