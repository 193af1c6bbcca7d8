//! The browser flow as load: each flow is `GET /api/proxy-auth` (signed in, allowed) followed by
//! `GET /.podgate/callback` with the ticket it returned, sent with the pod host's `Host` as a
//! browser would send it through Envoy. Keep-alive HTTP/1.1 connections, closed loop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one answer may take before the connection counts as stuck.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

pub struct Reply {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends one request (a JSON body when `body` is not empty or the method is POST) and reads
    /// its answer.
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        host: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<Reply> {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.write_all(req.as_bytes()).await?;
        tokio::time::timeout(ANSWER_TIMEOUT, self.read_reply())
            .await
            .map_err(|_| anyhow!("no answer to {method} {target} in {ANSWER_TIMEOUT:?}"))?
    }

    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status: u16 = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("no status line in {head:?}"))?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .collect();
                if headers.iter().any(|(k, v)| {
                    k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")
                }) {
                    bail!("a chunked answer (the flow's answers all have a length)");
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    self.fill().await?;
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Ok(Reply {
                    status,
                    headers,
                    body,
                });
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One closed-loop run: flows per second and the latency of whole flows.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub flows: u64,
    pub secs: f64,
    pub flows_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Flows that did not end in a 302 with the capability cookie.
    pub errors: u64,
}

/// What one connection does in a loop, and for how long.
#[derive(Debug, Clone)]
pub struct Load {
    pub addr: SocketAddr,
    /// `podgate_session=…`.
    pub cookie: String,
    pub pod: String,
    pub port: u16,
    pub connections: usize,
    pub duration: Duration,
}

/// Runs `load` and measures it.
pub async fn run(load: &Load) -> anyhow::Result<Round> {
    let target = format!(
        "/api/proxy-auth?pod={}&port={}&next=%2Fapp",
        load.pod, load.port
    );
    // Connect first, then start the clock for everyone at once.
    let mut conns = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        conns.push(Conn::open(load.addr).await?);
    }
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut tasks = Vec::new();
    for mut c in conns {
        let (host, cookie, target) = (load.addr.to_string(), load.cookie.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match flow(&mut c, &host, &cookie, &target).await? {
                    true => lat.push(t0.elapsed()),
                    false => errors += 1,
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await??;
        all.extend(lat);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(Round {
        flows: all.len() as u64,
        secs,
        flows_per_sec: all.len() as f64 / secs,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        errors,
    })
}

/// One flow on `c`: `Ok(true)` when the callback set the capability cookie.
async fn flow(c: &mut Conn, host: &str, cookie: &str, target: &str) -> anyhow::Result<bool> {
    let r = c
        .request(
            "GET",
            target,
            host,
            &[("Cookie", cookie), ("Accept", "text/html")],
            "",
        )
        .await?;
    let Some(loc) = r.header("location").filter(|_| r.status == 302) else {
        return Ok(false);
    };
    // http://POD_HOST:PORT/.podgate/callback?...: sent here with that Host.
    let rest = loc.split_once("://").map_or("", |x| x.1);
    let (pod_host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (pod_host, path) = (pod_host.to_owned(), path.to_owned());
    let r = c.request("GET", &path, &pod_host, &[], "").await?;
    Ok(r.status == 302 && r.header("set-cookie").is_some())
}
