//! Memory for sizing: the control plane's resident memory as its pod directory grows and as
//! Envoys connect, and each Envoy's at the largest directory.
//!
//! ```sh
//! cargo build --release -p podgate --bin podgate --example sizing
//! target/release/examples/sizing                 # 1,000, 5,000 and 10,000 pods, 3 Envoys
//! target/release/examples/sizing 1000,10000 4    # directory sizes, Envoys
//! ```
//!
//! Starts the `podgate` binary next to the example (SQLite in a temporary directory) and Envoy on
//! `envoy/podgate.yaml` with ephemeral ports, like `tests/xds_live.rs`. Pods are created through
//! the admin API (8 at a time, all on one fake pod); a size counts once Envoy routes the last pod
//! created, then 3 s pass (a resync; freed configurations gone) before memory is read from
//! `/proc/PID/status`: `VmRSS` now and `VmHWM`, the peak. With the largest directory, one more
//! Envoy at a time connects and routes it; the control plane's growth per Envoy is the mean.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/xds_support/mod.rs"]
mod xds_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use xds_support::*;

/// `(VmRSS, VmHWM)` of `pid`, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

async fn routed(
    http: &reqwest::Client,
    envoy: SocketAddr,
    cp: &ControlPlane,
    session: &str,
    pod: &str,
) {
    let token = cp.mint(session, pod).await.unwrap();
    until(http, envoy, pod, &token, Duration::from_secs(120), |a| {
        a.status == 200
    })
    .await
    .unwrap_or_else(|e| panic!("{pod} through {envoy}: {e}"));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let sizes: Vec<usize> = args
        .next()
        .map(|s| s.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![1000, 5000, 10000]);
    let envoys: usize = args.next().map(|n| n.parse().unwrap()).unwrap_or(3);

    let first_port = free_port();
    let cp = Arc::new(ControlPlane::start(first_port, &[]).await);
    let cp_pid = cp.pid().unwrap();
    cp.create_user(USER).await;
    cp.create_server(SERVER, IpAddr::from([127, 0, 0, 1])).await;
    let session = cp.session(USER).await;
    let pod = FakePod::start("pod").await.unwrap();
    let port = pod.addr().port();
    cp.create_pod("p0", USER, SERVER, port, "running").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, hwm) = memory(cp_pid);
    println!("control plane, 1 pod, no Envoy: rss {rss:.1} MiB (peak {hwm:.1})");

    let http = client();
    let mut running = vec![Envoy::start(first_port, cp.xds.port(), cp.http.port()).await];
    routed(&http, running[0].listener, &cp, &session, "p0").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, hwm) = memory(cp_pid);
    println!("control plane, 1 pod, 1 Envoy: rss {rss:.1} MiB (peak {hwm:.1})");

    let mut created = 1;
    for &size in &sizes {
        while created < size {
            let batch: Vec<usize> = (created..size.min(created + 8)).collect();
            let calls = batch.iter().map(|i| {
                let cp = cp.clone();
                let slug = format!("p{i}");
                tokio::spawn(
                    async move { cp.create_pod(&slug, USER, SERVER, port, "running").await },
                )
            });
            for call in calls.collect::<Vec<_>>() {
                call.await.unwrap();
            }
            created += batch.len();
        }
        routed(
            &http,
            running[0].listener,
            &cp,
            &session,
            &format!("p{}", size - 1),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (rss, hwm) = memory(cp_pid);
        let (envoy_rss, envoy_hwm) = memory(running[0].inner().pid());
        println!(
            "{size:>6} pods, 1 Envoy: control plane rss {rss:.1} MiB (peak {hwm:.1}); Envoy rss {envoy_rss:.1} MiB (peak {envoy_hwm:.1})"
        );
    }

    let last = format!("p{}", created - 1);
    let (base, _) = memory(cp_pid);
    for n in 2..=envoys {
        let listener = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let envoy =
            Envoy::start_with(&format!("sizing-{n}"), listener, &[cp.xds], &[cp.http]).await;
        routed(&http, listener, &cp, &session, &last).await;
        running.push(envoy);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (rss, hwm) = memory(cp_pid);
        let (envoy_rss, _) = memory(running[n - 1].inner().pid());
        println!(
            "{created:>6} pods, {n} Envoys: control plane rss {rss:.1} MiB (peak {hwm:.1}), {:.1} MiB per Envoy beyond the first; the new Envoy rss {envoy_rss:.1} MiB",
            (rss - base) / (n - 1) as f64
        );
    }
}
