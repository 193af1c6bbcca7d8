//! Config propagation through a real Envoy: admin change → routable, p50/p99 over N changes; and
//! requests during a key rotation under load.
//!
//! ```sh
//! CARGO_TARGET_DIR=target-cp cargo build -p podgate --bin podgate --example propagation
//! CARGO_TARGET_DIR=target-cp cargo run -p podgate --example propagation -- 100
//! ```
//!
//! Starts the `podgate` binary (SQLite in a temporary directory) and Envoy on
//! `envoy/podgate.yaml` with ephemeral ports, like `tests/xds_live.rs`.
//! - "start": N pods exist stopped, each with a capability minted beforehand; the clock runs
//!   from the `PUT /v1/pods/{slug}/status running` answer to the first 200 from the fake pod
//!   through Envoy (polled every 1 ms; before that Envoy answers 503).
//! - "create": the clock runs from the `POST /v1/pods` answer, through minting (a few ms, so
//!   this is an upper bound), to the first 200 (before that 404).
//! - rotation: 4 loops mint a fresh capability and use it at once while keys rotate 3 times.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/xds_support/mod.rs"]
mod xds_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xds_support::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

async fn wait_200(stack: &Stack, pod: &str, token: &str) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(a) = through_envoy(&stack.http, stack.envoy.listener, pod, token).await {
            if a.status == 200 {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{pod} never routable"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let stack = Arc::new(Stack::start(&[]).await);
    let pod = FakePod::start_on("pod", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = pod.addr().port();

    // Start N stopped pods.
    let mut tokens = Vec::new();
    for i in 0..n {
        let slug = format!("s{i}");
        stack
            .cp
            .create_pod(&slug, USER, SERVER, port, "stopped")
            .await;
        tokens.push(stack.mint(&slug).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut started = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let slug = format!("s{i}");
        stack.cp.set_status(&slug, "running").await;
        started.push(wait_200(&stack, &slug, token).await);
    }
    report("pod started  → routable", started);

    // Create N running pods.
    let mut created = Vec::new();
    for i in 0..n {
        let slug = format!("c{i}");
        stack
            .cp
            .create_pod(&slug, USER, SERVER, port, "running")
            .await;
        let t0 = Instant::now();
        let token = stack.mint(&slug).await;
        let minted = t0.elapsed();
        created.push(minted + wait_200(&stack, &slug, &token).await);
    }
    report("pod created  → routable (incl. mint)", created);

    // Rotation under load.
    let bench = stack.cp.mint(&stack.session, "c0").await.unwrap();
    wait_200(&stack, "c0", &bench).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stack, stop, ok, failed) = (
            Arc::clone(&stack),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
        );
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let token = match stack.cp.mint(&stack.session, "c0").await {
                    Ok(t) => t,
                    Err(e) => {
                        failed.lock().unwrap().push(e);
                        continue;
                    }
                };
                match through_envoy(&stack.http, stack.envoy.listener, "c0", &token).await {
                    Ok(a) if a.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(a) => failed
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", a.status, a.body)),
                    Err(e) => failed.lock().unwrap().push(e),
                }
            }
        }));
    }
    let mut switches = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = kid_of(&stack.mint("c0").await);
        stack
            .cp
            .admin(reqwest::Method::POST, "/v1/keys/rotate", None)
            .await;
        let t0 = Instant::now();
        while kid_of(&stack.mint("c0").await) == before {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        switches.push(t0.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let failed = failed.lock().unwrap();
    println!(
        "rotation under load: 3 rotations, {} requests ok, {} failed {:?}; new key signing after {:?}",
        ok.load(Ordering::Relaxed),
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>(),
        switches
    );
}
