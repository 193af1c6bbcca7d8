//! The load generator: HTTP/1.1 over keep-alive connections, two modes.
//!
//! - Closed loop (saturation): N connections, each sends its next request as soon as the last
//!   answer arrived. Requests per second is what the target can sustain.
//! - Open loop (latency): requests are *scheduled* at a constant rate by a pacer thread and
//!   served by a pool of connections; a request's latency runs from its scheduled time, so a
//!   slow answer that delays the next request is counted against the target, not hidden
//!   (no coordinated omission).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Latencies are recorded in nanoseconds up to this.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// One connection gives up after this many consecutive failures.
const MAX_CONSECUTIVE_ERRORS: u32 = 50;
/// No single exchange may take longer than this.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What each request looks like. `Rotating` gives every request its own token.
#[derive(Debug, Clone)]
pub enum Requests {
    Fixed(Arc<Vec<u8>>),
    Rotating {
        head: Arc<String>,
        tokens: Arc<Vec<String>>,
        tail: Arc<String>,
        next: Arc<AtomicU64>,
    },
}

impl Requests {
    /// A GET of `/` on `host` with the capability in the cookie (`podgate_cap`).
    pub fn fixed(host: &str, token: &str) -> Requests {
        Requests::Fixed(Arc::new(request_bytes(host, token).into_bytes()))
    }

    /// Like [`Requests::fixed`], with the next token of `tokens` on every request (wrapping).
    pub fn rotating(host: &str, tokens: Arc<Vec<String>>) -> Requests {
        Requests::Rotating {
            head: Arc::new(format!(
                "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: podgate-bench\r\nAccept: */*\r\nCookie: podgate_cap="
            )),
            tokens,
            tail: Arc::new("\r\n\r\n".to_owned()),
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    fn write_into(&self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Requests::Fixed(bytes) => out.extend_from_slice(bytes),
            Requests::Rotating {
                head,
                tokens,
                tail,
                next,
            } => {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let len = tokens.len().max(1) as u64;
                let token = tokens
                    .get(usize::try_from(n % len).unwrap_or(0))
                    .map_or("", String::as_str);
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(token.as_bytes());
                out.extend_from_slice(tail.as_bytes());
            }
        }
    }
}

pub fn request_bytes(host: &str, token: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: podgate-bench\r\nAccept: */*\r\nCookie: podgate_cap={token}\r\n\r\n"
    )
}

/// The result of one run.
#[derive(Debug)]
pub struct RunStats {
    /// Answers with status 200.
    pub ok: u64,
    /// Other statuses, I/O errors and timeouts.
    pub errors: u64,
    /// The first unexpected status seen, for the log.
    pub first_bad_status: Option<u16>,
    pub elapsed: Duration,
    /// Latency of the 200s (ns): from send (closed loop) or from the scheduled time (open loop).
    pub latency: Histogram<u64>,
    /// Open loop only: how late the generator itself was in sending, when a connection was free.
    pub send_lag: Histogram<u64>,
}

impl RunStats {
    fn new() -> anyhow::Result<RunStats> {
        Ok(RunStats {
            ok: 0,
            errors: 0,
            first_bad_status: None,
            elapsed: Duration::ZERO,
            latency: histogram()?,
            send_lag: histogram()?,
        })
    }

    fn merge(&mut self, other: &RunStats) -> anyhow::Result<()> {
        self.ok += other.ok;
        self.errors += other.errors;
        self.first_bad_status = self.first_bad_status.or(other.first_bad_status);
        self.latency.add(&other.latency)?;
        self.send_lag.add(&other.send_lag)?;
        Ok(())
    }

    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).context("histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos())
        .unwrap_or(MAX_LATENCY_NS)
        .clamp(1, MAX_LATENCY_NS);
    let _ = h.record(ns);
}

/// One keep-alive HTTP/1.1 client connection.
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    filled: usize,
    request: Vec<u8>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: vec![0; 16 * 1024],
            filled: 0,
            request: Vec::with_capacity(2048),
        }
    }

    async fn connect(&mut self) -> anyhow::Result<()> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        stream.set_nodelay(true)?;
        self.stream = Some(stream);
        self.filled = 0;
        Ok(())
    }

    /// Sends the prepared request and reads one answer; returns its status.
    async fn exchange(&mut self) -> anyhow::Result<u16> {
        if self.stream.is_none() {
            self.connect().await?;
        }
        match tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange_inner()).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                bail!("no answer within {EXCHANGE_TIMEOUT:?}")
            }
        }
    }

    async fn exchange_inner(&mut self) -> anyhow::Result<u16> {
        let Some(stream) = self.stream.as_mut() else {
            bail!("not connected");
        };
        stream.write_all(&self.request).await?;
        loop {
            if let Some((status, used, close)) = parse_response(&self.buf[..self.filled])? {
                self.buf.copy_within(used..self.filled, 0);
                self.filled -= used;
                if close {
                    self.stream = None;
                }
                return Ok(status);
            }
            if self.filled == self.buf.len() {
                if self.buf.len() >= 1 << 20 {
                    bail!("response larger than 1 MiB");
                }
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = stream.read(&mut self.buf[self.filled..]).await?;
            if n == 0 {
                bail!("connection closed by the server");
            }
            self.filled += n;
        }
    }
}

/// `Some((status, bytes used, connection closing))` once a whole response is buffered.
pub(crate) fn parse_response(bytes: &[u8]) -> anyhow::Result<Option<(u16, usize, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.unwrap_or(0);
    let mut content_length = 0usize;
    let mut chunked = false;
    let mut close = false;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)?.trim().parse()?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    if chunked {
        // Only the terminating chunk matters to us (bodies here are tiny).
        let body = &bytes[head_len..];
        return Ok(body
            .windows(5)
            .position(|w| w == b"0\r\n\r\n")
            .map(|at| (status, head_len + at + 5, close)));
    }
    let total = head_len + content_length;
    Ok((bytes.len() >= total).then_some((status, total, close)))
}

fn count(stats: &mut RunStats, result: anyhow::Result<u16>, consecutive: &mut u32) -> bool {
    match result {
        Ok(200) => {
            stats.ok += 1;
            *consecutive = 0;
            true
        }
        Ok(status) => {
            stats.errors += 1;
            stats.first_bad_status.get_or_insert(status);
            *consecutive += 1;
            false
        }
        Err(_) => {
            stats.errors += 1;
            *consecutive += 1;
            false
        }
    }
}

/// One request on a fresh connection; its status.
pub async fn probe(addr: SocketAddr, requests: &Requests) -> anyhow::Result<u16> {
    let mut conn = Conn::new(addr);
    requests.write_into(&mut conn.request);
    conn.exchange().await
}

/// A keep-alive prober for polling (scale measurements).
pub struct Prober(Conn);

impl Prober {
    pub fn new(addr: SocketAddr) -> Prober {
        Prober(Conn::new(addr))
    }

    pub async fn status(&mut self, requests: &Requests) -> anyhow::Result<u16> {
        requests.write_into(&mut self.0.request);
        self.0.exchange().await
    }
}

/// Closed loop: `connections` clients as fast as they can for `duration`.
pub async fn closed_loop(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    requests: &Requests,
) -> anyhow::Result<RunStats> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut conn = Conn::new(addr);
        conn.connect().await?;
        conns.push(conn);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let requests = requests.clone();
        tasks.spawn(async move {
            let mut stats = RunStats::new()?;
            let mut consecutive = 0;
            while Instant::now() < deadline && consecutive < MAX_CONSECUTIVE_ERRORS {
                requests.write_into(&mut conn.request);
                let sent = Instant::now();
                let result = conn.exchange().await;
                if count(&mut stats, result, &mut consecutive) {
                    record(&mut stats.latency, sent.elapsed());
                }
            }
            anyhow::Ok(stats)
        });
    }
    let mut total = RunStats::new()?;
    while let Some(joined) = tasks.join_next().await {
        total.merge(&joined??)?;
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// Shared state of an open-loop run.
struct Schedule {
    start: Instant,
    rate: f64,
    total: u64,
    /// Requests whose scheduled time has come.
    released: AtomicU64,
    /// Requests taken by a connection.
    claimed: AtomicU64,
    notify: Notify,
}

impl Schedule {
    fn at(&self, index: u64) -> Instant {
        self.start + Duration::from_secs_f64(index as f64 / self.rate)
    }

    /// The next released request, or `None` once every request was claimed.
    async fn next(&self) -> Option<u64> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let released = self.released.load(Ordering::Acquire);
            let claim = self
                .claimed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    (c < released).then_some(c + 1)
                });
            match claim {
                Ok(index) => return Some(index),
                Err(claimed) if claimed >= self.total => return None,
                Err(_) => notified.await,
            }
        }
    }
}

/// Releases requests on schedule, from a thread with a 1 µs timer slack.
fn pace(schedule: &Schedule, cpu: Option<usize>) {
    crate::pin::pin_current_thread(cpu);
    crate::pin::tight_timer_slack();
    let tick = Duration::from_micros(20);
    loop {
        let elapsed = schedule.start.elapsed().as_secs_f64();
        let due = ((elapsed * schedule.rate).floor() as u64 + 1).min(schedule.total);
        if due > schedule.released.load(Ordering::Acquire) {
            schedule.released.store(due, Ordering::Release);
            schedule.notify.notify_waiters();
        }
        if due >= schedule.total {
            break;
        }
        let next = schedule.at(due);
        let now = Instant::now();
        if next > now {
            std::thread::sleep((next - now).min(tick));
        }
    }
    // Wake everyone so idle connections see the end.
    schedule.notify.notify_waiters();
}

/// Open loop: `rate` requests per second for `duration`, over `connections` keep-alive
/// connections, latency from each request's scheduled time.
pub async fn open_loop(
    addr: SocketAddr,
    connections: usize,
    rate: f64,
    duration: Duration,
    requests: &Requests,
    pacer_cpu: Option<usize>,
) -> anyhow::Result<RunStats> {
    if rate <= 0.0 || !rate.is_finite() {
        bail!("open-loop rate must be positive, got {rate}");
    }
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut conn = Conn::new(addr);
        conn.connect().await?;
        conns.push(conn);
    }
    let total = (rate * duration.as_secs_f64()).ceil().max(1.0) as u64;
    let schedule = Arc::new(Schedule {
        start: Instant::now() + Duration::from_millis(5),
        rate,
        total,
        released: AtomicU64::new(0),
        claimed: AtomicU64::new(0),
        notify: Notify::new(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let requests = requests.clone();
        let schedule = Arc::clone(&schedule);
        tasks.spawn(async move {
            let mut stats = RunStats::new()?;
            let mut consecutive = 0;
            let mut free_since = Instant::now();
            while let Some(index) = schedule.next().await {
                if consecutive >= MAX_CONSECUTIVE_ERRORS {
                    stats.errors += 1;
                    continue;
                }
                let scheduled = schedule.at(index);
                requests.write_into(&mut conn.request);
                let sent = Instant::now();
                if free_since <= scheduled {
                    // The connection was idle when the request was due: any delay is ours.
                    record(
                        &mut stats.send_lag,
                        sent.saturating_duration_since(scheduled),
                    );
                }
                let result = conn.exchange().await;
                let done = Instant::now();
                free_since = done;
                if count(&mut stats, result, &mut consecutive) {
                    record(
                        &mut stats.latency,
                        done.saturating_duration_since(scheduled),
                    );
                }
            }
            anyhow::Ok(stats)
        });
    }
    let pacer_schedule = Arc::clone(&schedule);
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || pace(&pacer_schedule, pacer_cpu))
        .context("spawning the pacer")?;
    let mut merged = RunStats::new()?;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(stats)) => merged.merge(&stats)?,
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.into());
            }
        }
    }
    let _ = pacer.join();
    if let Some(e) = first_error {
        return Err(e);
    }
    merged.elapsed = schedule.start.elapsed();
    Ok(merged)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_framed() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1";
        assert_eq!(parse_response(r).unwrap(), Some((200, r.len() - 8, false)));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok").unwrap(),
            None
        );
        let c = b"HTTP/1.1 401 U\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(parse_response(c).unwrap(), Some((401, c.len(), true)));
    }
}
