//! The fast upstream every configuration forwards to: HTTP/1.1 keep-alive, a fixed 200 with a
//! two-byte body, on its own thread and runtime.

use std::net::SocketAddr;
use std::sync::mpsc;

use anyhow::{anyhow, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
/// A request head larger than this is refused (the bench sends well under 1 KiB).
const MAX_HEAD: usize = 64 * 1024;

/// Starts the upstream on a new thread pinned to `cpu`; returns its address. It runs until the
/// process exits.
pub fn start(cpu: Option<usize>) -> anyhow::Result<SocketAddr> {
    start_serving("upstream", cpu, serve)
}

/// Starts a loopback server on a new thread named `name`, pinned to `cpu`, with a runtime of
/// its own, that hands each accepted connection to `serve`; returns its address. It runs until
/// the process exits.
pub fn start_serving<F>(
    name: &str,
    cpu: Option<usize>,
    serve: fn(TcpStream) -> F,
) -> anyhow::Result<SocketAddr>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            crate::pin::pin_current_thread(cpu);
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("upstream runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match TcpListener::bind("127.0.0.1:0").await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow!("upstream bind: {e}")));
                        return;
                    }
                };
                let _ = tx.send(listener.local_addr().map_err(Into::into));
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream));
                }
            });
        })
        .context("spawning the upstream thread")?;
    rx.recv().context("upstream thread ended before binding")?
}

/// Answers every complete request head on the connection (pipelining included; the bench sends
/// GETs without bodies).
async fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut out = Vec::with_capacity(RESPONSE.len() * 4);
    loop {
        if filled == buf.len() {
            if buf.len() >= MAX_HEAD {
                return;
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        filled += n;
        let mut start = 0;
        while let Some(end) = find_head_end(&buf[start..filled]) {
            out.extend_from_slice(RESPONSE);
            start += end;
        }
        if start > 0 {
            buf.copy_within(start..filled, 0);
            filled -= start;
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// Index just past the first `\r\n\r\n`.
pub fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}
