//! Load generator for the browser flow: each "flow" is `GET /api/proxy-auth` (signed in, allowed)
//! followed by `GET /.podgate/callback` with the ticket it returned, as a browser would do
//! through Envoy. Reports flows per second and latency percentiles of whole flows.
//!
//! Loopback only, bounded in time. Against a running `podgate serve --dev-mode`:
//!
//! ```sh
//! cargo run --release -p podgate --example flow_load -- \
//!     --addr 127.0.0.1:8080 --admin-token "$PODGATE_ADMIN_TOKEN" --connections 32 --seconds 10
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    addr: SocketAddr,
    admin_token: String,
    connections: usize,
    seconds: u64,
    pod: String,
    port: u16,
}

fn args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse().unwrap(),
        admin_token: std::env::var("PODGATE_ADMIN_TOKEN").unwrap_or_default(),
        connections: 32,
        seconds: 10,
        pod: "loadpod".into(),
        port: 8726,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = v.parse().unwrap(),
            "--admin-token" => a.admin_token = v,
            "--connections" => a.connections = v.parse().unwrap(),
            "--seconds" => a.seconds = v.parse::<u64>().unwrap().min(120),
            "--pod" => a.pod = v,
            "--port" => a.port = v.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.addr.ip().is_loopback(), "load only ever goes to loopback");
    a
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    async fn request(
        &mut self,
        method: &str,
        target: &str,
        host: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.write_all(req.as_bytes()).await.unwrap();
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> Reply {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status: u16 = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .and_then(|s| s.parse().ok())
                    .unwrap();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    self.fill().await;
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Reply {
                    status,
                    headers,
                    body,
                };
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn setup(a: &Args) -> String {
    let mut c = Conn::open(a.addr).await;
    let host = a.addr.to_string();
    let auth = format!("Bearer {}", a.admin_token);
    let h = [("Authorization", auth.as_str())];
    for (path, body) in [
        (
            "/v1/users",
            r#"{"id":"loaduser","email":"load@example.dev"}"#.to_owned(),
        ),
        (
            "/v1/pods",
            format!(
                r#"{{"slug":"{}","owner_id":"loaduser","status":"running","nginx_port":30001}}"#,
                a.pod
            ),
        ),
    ] {
        let r = c.request("POST", path, &host, &h, &body).await;
        assert!(
            r.status == 201 || r.status == 409,
            "{path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = c
        .request("GET", "/dev/login?user=loaduser", &host, &[], "")
        .await;
    assert_eq!(r.status, 200, "dev login (is the server in dev mode?)");
    let set = r.header("set-cookie").unwrap();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::main]
async fn main() {
    let a = args();
    let cookie = setup(&a).await;
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let target = format!("/api/proxy-auth?pod={}&port={}&next=%2Fapp", a.pod, a.port);
    let mut tasks = Vec::new();
    for _ in 0..a.connections {
        let (addr, cookie, target) = (a.addr, cookie.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await;
            let host = addr.to_string();
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = c
                    .request(
                        "GET",
                        &target,
                        &host,
                        &[("Cookie", &cookie), ("Accept", "text/html")],
                        "",
                    )
                    .await;
                let Some(loc) = r.header("location").filter(|_| r.status == 302) else {
                    errors += 1;
                    continue;
                };
                // http://POD_HOST:PORT/.podgate/callback?...: send it here with that Host.
                let rest = loc.split_once("://").map(|x| x.1).unwrap_or("");
                let (pod_host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let r = c.request("GET", path, pod_host, &[], "").await;
                if r.status == 302 && r.header("set-cookie").is_some() {
                    lat.push(t0.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().max(a.seconds as f64);
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "flows: {} in {:.1} s = {:.0} flows/s ({} connections), errors: {}",
        all.len(),
        elapsed,
        all.len() as f64 / elapsed,
        a.connections,
        errors
    );
    println!(
        "flow latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
}
