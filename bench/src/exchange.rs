//! `just bench --exchange-only`: what an API token at the edge costs. One Envoy with the podgate
//! filter, exchanges on (a `renewal` section), and a stand-in control plane on loopback that
//! answers every `POST /api/proxy-exchange` at once with a capability for the bench pod, and
//! counts the calls. Measured:
//!
//! - the first request with an API token (an exchange call, then the decision) against the
//!   first request with a new capability (a signature check), one request at a time on one
//!   keep-alive connection, each with a token never seen before: median and p99;
//! - cached: the same API token on every request against the same capability, both as
//!   `Authorization: Bearer`, closed loop, rounds interleaved: requests per second and Envoy
//!   CPU per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::compare::median;
use crate::envoy::{self, Envoy, Route};
use crate::load::{self, Prober, Requests};
use crate::pin::Placement;
use crate::tokens::{self, Alg, DirectoryPod, Keys};
use crate::upstream::find_head_end;
use crate::Settings;

const SECRET: &str = "bench-renew-secret-0123456789abcdef";
/// Distinct tokens for the first-request figures.
const FIRSTS: u64 = 300;

/// What the scenario measured.
#[derive(Debug, serde::Serialize)]
pub struct ExchangeReport {
    pub first_api_token_p50_us: f64,
    pub first_api_token_p99_us: f64,
    pub first_capability_p50_us: f64,
    pub first_capability_p99_us: f64,
    pub cached_api_token_rps: f64,
    pub cached_api_token_cpu_us: f64,
    pub cached_capability_rps: f64,
    pub cached_capability_cpu_us: f64,
    /// Exchange calls the stand-in control plane answered.
    pub exchange_calls: u64,
    pub rounds: usize,
    pub connections: usize,
}

impl ExchangeReport {
    pub fn markdown(&self) -> String {
        format!(
            "| what | API token (`pg_…`) | capability |\n|---|---:|---:|\n\
             | first request, p50 µs | {:.0} | {:.0} |\n\
             | first request, p99 µs | {:.0} | {:.0} |\n\
             | cached, req/s at saturation | {:.0} | {:.0} |\n\
             | cached, Envoy CPU µs/req | {:.1} | {:.1} |\n\n\
             Exchange calls answered by the stand-in control plane: {} (10 warm-up and {FIRSTS} \
             first requests, then one for the cached token). {} rounds, {} connections.\n",
            self.first_api_token_p50_us,
            self.first_capability_p50_us,
            self.first_api_token_p99_us,
            self.first_capability_p99_us,
            self.cached_api_token_rps,
            self.cached_capability_rps,
            self.cached_api_token_cpu_us,
            self.cached_capability_cpu_us,
            self.exchange_calls,
            self.rounds,
            self.connections,
        )
    }
}

/// The stand-in control plane: every request head gets `200 {"token": capability}`.
async fn control_plane(body: Arc<String>, calls: Arc<AtomicU64>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer_exchanges(stream, body.clone(), calls.clone()));
        }
    });
    Ok(addr)
}

async fn answer_exchanges(mut stream: TcpStream, body: Arc<String>, calls: Arc<AtomicU64>) {
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = find_head_end(&buf) {
            buf.drain(..end);
            calls.fetch_add(1, Ordering::Relaxed);
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}

/// A GET of `/` on the bench pod with `Authorization: Bearer token`.
fn bearer_request(token: &str) -> Requests {
    let host = tokens::pod_host(tokens::BENCH_POD);
    Requests::Fixed(Arc::new(
        format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: podgate-bench\r\nAccept: */*\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        )
        .into_bytes(),
    ))
}

/// A well-formed API token, distinct for each `n`.
fn api_token(n: u64) -> String {
    format!("pg_{n:024x}_{}", "a".repeat(52))
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(at).copied().unwrap_or(f64::NAN)
}

/// Latencies (µs, sorted) of one request each for `requests`, one at a time on `prober`.
async fn firsts(prober: &mut Prober, requests: &[Requests]) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        let t = Instant::now();
        let status = prober.status(r).await?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(status == 200, "first request answered {status}");
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

pub async fn run(
    settings: &Settings,
    placement: &Placement,
    upstream: SocketAddr,
    keys: &Keys,
) -> anyhow::Result<ExchangeReport> {
    let granted = keys.capability(Alg::EdDSA, tokens::BENCH_POD, 1)?;
    let calls = Arc::new(AtomicU64::new(0));
    let body = Arc::new(json!({ "token": granted }).to_string());
    let cp = control_plane(body, calls.clone()).await?;

    let cluster = "pod_bench";
    let config = tokens::filter_config_json(
        &keys.jwks()?,
        &[DirectoryPod {
            slug: tokens::BENCH_POD.to_owned(),
            cluster: cluster.to_owned(),
            address: None,
        }],
        None,
    )?;
    let mut config: serde_json::Value = serde_json::from_str(&config)?;
    config["renewal"] = json!({
        "url": format!("http://{cp}/api/proxy-renew"),
        "secret": SECRET,
        "before_secs": 60,
    });
    let config = config.to_string();
    tokens::check_filter_config(&config)?;
    let port = envoy::free_port()?;
    let bootstrap = envoy::static_bootstrap(
        "exchange",
        envoy::listener(
            port,
            &Route::ClusterHeader("x-podgate-cluster"),
            vec![envoy::podgate_filter(&settings.filter_wasm, &config)],
        ),
        vec![
            envoy::static_cluster(cluster, upstream),
            envoy::static_cluster("podgate_control_plane", cp),
        ],
    );
    let mut e = Envoy::start(&settings.envoy, placement, "exchange", &bootstrap, port, 7).await?;
    e.wait_ready().await?;
    let addr = e.listener;

    // Both first-request series, warmed by a few of their own kind first.
    let fresh_caps = keys.many(Alg::EdDSA, FIRSTS + 10)?;
    let caps: Vec<Requests> = fresh_caps.iter().map(|t| bearer_request(t)).collect();
    let apis: Vec<Requests> = (0..FIRSTS + 10)
        .map(|n| bearer_request(&api_token(n)))
        .collect();
    let mut prober = Prober::new(addr);
    let (warm_caps, caps) = caps.split_at(10);
    let (warm_apis, apis) = apis.split_at(10);
    firsts(&mut prober, warm_caps).await?;
    firsts(&mut prober, warm_apis)
        .await
        .context("an API token at the edge")?;
    let first_caps = firsts(&mut prober, caps).await?;
    let first_apis = firsts(&mut prober, apis).await?;

    // Cached: one token each, rounds interleaved.
    let cached_api = bearer_request(&api_token(u64::MAX / 2));
    let cached_cap = bearer_request(&fresh_caps[0]);
    let conns = settings.connections;
    let warm = Duration::from_secs_f64(settings.warmup_secs);
    let sat = Duration::from_secs_f64(settings.saturation_secs);
    for r in [&cached_api, &cached_cap] {
        load::closed_loop(addr, conns, warm, r).await?;
    }
    let (mut api_rps, mut api_cpu, mut cap_rps, mut cap_cpu) = (vec![], vec![], vec![], vec![]);
    for round in 0..settings.rounds {
        for (name, r, rps, cpu) in [
            ("API token", &cached_api, &mut api_rps, &mut api_cpu),
            ("capability", &cached_cap, &mut cap_rps, &mut cap_cpu),
        ] {
            let before = e.cpu_time();
            let stats = load::closed_loop(addr, conns, sat, r).await?;
            anyhow::ensure!(stats.errors == 0, "{name}: {} errors", stats.errors);
            let us = (e.cpu_time() - before).as_secs_f64() * 1e6 / stats.ok.max(1) as f64;
            eprintln!(
                "exchange round {round} {name:<10} {:>9.0} req/s  Envoy CPU {us:>6.1} µs/req",
                stats.rps()
            );
            rps.push(stats.rps());
            cpu.push(us);
        }
    }
    Ok(ExchangeReport {
        first_api_token_p50_us: quantile(&first_apis, 0.5),
        first_api_token_p99_us: quantile(&first_apis, 0.99),
        first_capability_p50_us: quantile(&first_caps, 0.5),
        first_capability_p99_us: quantile(&first_caps, 0.99),
        cached_api_token_rps: median(&api_rps),
        cached_api_token_cpu_us: median(&api_cpu),
        cached_capability_rps: median(&cap_rps),
        cached_capability_cpu_us: median(&cap_cpu),
        exchange_calls: calls.load(Ordering::Relaxed),
        rounds: settings.rounds,
        connections: conns,
    })
}
