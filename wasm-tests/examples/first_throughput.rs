//! A first throughput figure: Envoy with the podgate filter versus the same Envoy without it.
//!
//! Starts one fast upstream (hyper, answers 200 "ok") and two Envoys from
//! `envoy/podgate-static.yaml`, both `--concurrency 1`, access log off:
//!   * `podgate`: the filter in front, the client sends a valid capability cookie (so after the
//!     first request every check is a cache hit, the steady state for a browser);
//!   * `baseline`: no filter, the route goes straight to the same upstream.
//!
//! Each is driven by the same client (N keep-alive connections, a warm-up, then a fixed time),
//! one after the other, and requests/s and the ratio are printed.
//!
//!   cargo run --release -p podgate-wasm-tests --example first_throughput -- [connections] [seconds]
//!
//! Defaults: 32 connections, 5 s after a 1 s warm-up. Envoy and the filter are found as in the
//! e2e suite (`PODGATE_ENVOY`, `PODGATE_FILTER_WASM`). The client shares the machine with Envoy,
//! so the absolute numbers are a floor; the ratio is the figure to watch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use podgate_wasm_tests::e2e::bootstrap::filter_wasm;
use podgate_wasm_tests::e2e::{public_host, Bootstrap, Envoy, Minter};
use serde_json::json;
use tokio::net::TcpListener;

const POD: &str = "bench";
const PORT: u16 = 8726;
const CLUSTER: &str = "pod_bench";
const WARMUP: Duration = Duration::from_secs(1);

/// An upstream that answers every request with 200 "ok" as fast as it can.
async fn fast_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn start_envoy(
    label: &str,
    upstream: SocketAddr,
    filter_config: Option<&serde_json::Value>,
) -> Envoy {
    let mut bootstrap = Bootstrap::load_static().unwrap();
    bootstrap
        .ephemeral_ports()
        .unwrap()
        .without_access_log()
        .unwrap()
        .set_clusters(&[("podgate_control_plane", upstream), (CLUSTER, upstream)])
        .unwrap();
    match filter_config {
        Some(config) => {
            bootstrap
                .set_wasm_path(&filter_wasm().unwrap())
                .unwrap()
                .set_filter_config(&config.to_string())
                .unwrap();
        }
        None => {
            bootstrap.without_filter(CLUSTER).unwrap();
        }
    }
    Envoy::start(label, &bootstrap.to_yaml().unwrap(), 1)
        .await
        .unwrap()
}

/// Drives `listener` with `connections` keep-alive clients for warm-up plus `measure`; returns
/// requests/s over `measure` and the count of non-200 answers or errors.
async fn drive(
    listener: SocketAddr,
    cookie: Option<String>,
    connections: usize,
    measure: Duration,
) -> (f64, u64) {
    let host = public_host(PORT, POD);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let end = start + WARMUP + measure;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        // One client per task: one keep-alive connection each.
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let url = format!("http://{listener}/");
        let (host, cookie) = (host.clone(), cookie.clone());
        let (done, failed, counting) = (done.clone(), failed.clone(), counting.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let mut request = client.get(&url).header("host", &host);
                if let Some(cookie) = &cookie {
                    request = request.header("cookie", cookie);
                }
                let ok = match request.send().await {
                    Ok(resp) => resp.status().as_u16() == 200 && resp.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if counting.load(Ordering::Relaxed) {
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(WARMUP).await;
    counting.store(true, Ordering::Relaxed);
    let measured_from = Instant::now();
    tokio::time::sleep(measure).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = measured_from.elapsed().as_secs_f64();
    let count = done.load(Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    (count as f64 / elapsed, failed.load(Ordering::Relaxed))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let measure = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = fast_upstream().await;
        let mut config = Bootstrap::load_static().unwrap().filter_config().unwrap();
        let minter = Minter::new(config["issuer"].as_str().unwrap()).unwrap();
        config["keys"] = json!({ "keys": [minter.key.verifying_jwk()] });
        config["pods"] = json!({ POD: { "status": "running", "cluster": CLUSTER } });
        let cookie = format!(
            "theme=dark; podgate_cap={}; lang=en",
            minter.valid(POD, PORT).unwrap()
        );

        let podgate = start_envoy("throughput-podgate", upstream, Some(&config)).await;
        let baseline = start_envoy("throughput-baseline", upstream, None).await;
        println!(
            "first_throughput: {connections} keep-alive connections, {WARMUP:?} warm-up + {measure:?} each, Envoy --concurrency 1, access log off"
        );
        let (with_filter, failed_with) = drive(
            podgate.listener().unwrap(),
            Some(cookie.clone()),
            connections,
            measure,
        )
        .await;
        let (without_filter, failed_without) = drive(
            baseline.listener().unwrap(),
            Some(cookie),
            connections,
            measure,
        )
        .await;
        // The filter hands its counts to Envoy from its 1 s tick.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let hits = podgate
            .counter("wasmcustom.podgate.token_cache.hits")
            .await
            .unwrap_or(0);
        let misses = podgate
            .counter("wasmcustom.podgate.token_cache.misses")
            .await
            .unwrap_or(0);
        println!(
            "  podgate filter (cached cookie token): {with_filter:>9.0} req/s  ({failed_with} failed; token cache {hits} hits, {misses} misses)"
        );
        println!(
            "  no filter (same Envoy, same route):   {without_filter:>9.0} req/s  ({failed_without} failed)"
        );
        if without_filter > 0.0 {
            println!(
                "  ratio podgate / baseline: {:.2}  (filter cost {:.0}%)",
                with_filter / without_filter,
                (1.0 - with_filter / without_filter) * 100.0
            );
        }
    });
}
