//! Part 3: the pod directory at 100, 1,000 and 10,000 pods, pushed over ADS by `podgate-xds`
//! exactly as the control plane does, in the chosen layout (one ORIGINAL_DST cluster, the
//! filter sets `x-podgate-upstream`) and in the alternative (a cluster per pod).
//!
//! "Applied" means: a request to a pod that exists only in the new push is let through (200),
//! polled every millisecond on a keep-alive connection; before that the filter answers 404.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use podgate_xds::{
    fixed_host_cluster, original_dst_cluster, wasm_filter_extension_config, AdsServer,
    FixedHostClusterOptions, OriginalDstClusterOptions, Snapshot, SnapshotCache, WasmFilterSpec,
};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::envoy::{self, Envoy};
use crate::load::{self, Prober, Requests};
use crate::pin::Placement;
use crate::tokens::{self, Alg, DirectoryPod, Keys};
use crate::Settings;

/// A push must be applied within this, or the run fails.
const APPLY_DEADLINE: Duration = Duration::from_secs(120);
const ECDS_NAME: &str = "podgate";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Layout {
    /// One ORIGINAL_DST cluster for every pod; the filter sets the address header.
    OriginalDst,
    /// One STATIC cluster per pod.
    ClusterPerPod,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScalePoint {
    pub layout: Layout,
    pub pods: usize,
    /// Bytes of the filter's JSON configuration.
    pub filter_config_bytes: usize,
    /// Building and encoding the snapshot (control-plane side), ms.
    pub snapshot_build_ms: f64,
    /// From `SnapshotCache::set` with the whole directory (N pods, one of them new) until a
    /// request to the new pod is let through, ms.
    pub push_applied_ms: f64,
    /// The same for adding one pod to a directory of N (the everyday push), ms.
    pub add_one_applied_ms: f64,
    pub envoy_rss_bytes: u64,
    /// Closed-loop requests per second on one pod with this directory (cache on, EdDSA).
    pub rps: f64,
    pub rps_errors: u64,
    /// Envoy CPU per request during that run, µs.
    pub envoy_cpu_us_per_request: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub points: Vec<ScalePoint>,
    /// Envoy's memory with the bench pod only, before the first large push, per layout.
    pub baseline_rss_bytes: Vec<(Layout, u64)>,
}

pub(crate) struct Ads {
    cache: SnapshotCache,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Ads {
    pub(crate) async fn start() -> anyhow::Result<Ads> {
        let cache = SnapshotCache::new();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = AdsServer::new(cache.clone());
        tokio::spawn(async move {
            let _ = server
                .serve_with_listener(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Ads {
            cache,
            addr,
            stop: Some(stop),
        })
    }
}

impl Drop for Ads {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The directory: the bench pod, `extra` probe pods, and fillers up to `pods` in total.
pub(crate) fn directory(
    layout: Layout,
    pods: usize,
    probes: &[String],
    upstream: SocketAddr,
) -> Vec<DirectoryPod> {
    let mut slugs = vec![tokens::BENCH_POD.to_owned()];
    slugs.extend(probes.iter().cloned());
    let fillers = pods.saturating_sub(slugs.len());
    slugs.extend((0..fillers).map(|i| format!("p{i:05}")));
    slugs
        .into_iter()
        .map(|slug| match layout {
            Layout::OriginalDst => DirectoryPod {
                cluster: "podgate_pods".to_owned(),
                address: Some(upstream),
                slug,
            },
            Layout::ClusterPerPod => DirectoryPod {
                cluster: format!("pod_{slug}"),
                address: None,
                slug,
            },
        })
        .collect()
}

/// Builds the snapshot for `pods`; returns it with the filter JSON size.
pub(crate) fn snapshot(
    layout: Layout,
    pods: &[DirectoryPod],
    keys: &Keys,
    wasm: &str,
    upstream: SocketAddr,
) -> anyhow::Result<(Snapshot, usize)> {
    let json = tokens::filter_config_json(&keys.jwks()?, pods, None)?;
    let clusters = match layout {
        Layout::OriginalDst => vec![original_dst_cluster(&OriginalDstClusterOptions::default())],
        Layout::ClusterPerPod => pods
            .iter()
            .map(|p| {
                fixed_host_cluster(
                    &p.cluster,
                    &upstream.ip().to_string(),
                    upstream.port(),
                    &FixedHostClusterOptions::default(),
                )
            })
            .collect(),
    };
    let ecds = wasm_filter_extension_config(&WasmFilterSpec {
        extension_name: ECDS_NAME,
        wasm_path: wasm,
        root_id: "podgate",
        configuration_json: &json,
    });
    Ok((Snapshot::new(clusters, vec![ecds])?, json.len()))
}

/// Pushes and waits until `probe` is let through; returns the time from `set`, ms.
pub(crate) async fn push_and_wait(
    ads: &Ads,
    snapshot: Snapshot,
    envoy: &Envoy,
    keys: &Keys,
    probe: &str,
) -> anyhow::Result<f64> {
    let request = Requests::fixed(&probe_host(probe), &keys.capability(Alg::EdDSA, probe, 7)?);
    let mut prober = Prober::new(envoy.listener);
    let started = Instant::now();
    if !ads.cache.set(snapshot) {
        bail!("snapshot for {probe} was identical to the published one");
    }
    loop {
        if let Ok(200) = prober.status(&request).await {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
        if started.elapsed() > APPLY_DEADLINE {
            bail!(
                "push with {probe} not applied within {APPLY_DEADLINE:?}:\n{}",
                envoy.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn probe_host(probe: &str) -> String {
    tokens::pod_host(probe)
}

async fn layout_run(
    layout: Layout,
    sizes: &[usize],
    settings: &Settings,
    placement: &Placement,
    upstream: SocketAddr,
    keys: &Keys,
    report: &mut ScaleReport,
) -> anyhow::Result<()> {
    if sizes.is_empty() {
        return Ok(());
    }
    let ads = Ads::start().await?;
    let wasm = settings.filter_wasm.display().to_string();
    let port = envoy::free_port()?;
    let label = match layout {
        Layout::OriginalDst => "scale-odst",
        Layout::ClusterPerPod => "scale-cpp",
    };
    let bootstrap = envoy::ads_bootstrap(label, ads.addr, port);
    let base = match layout {
        Layout::OriginalDst => 10,
        Layout::ClusterPerPod => 11,
    };
    let envoy = Envoy::start(&settings.envoy, placement, label, &bootstrap, port, base).await?;
    // First config: the bench pod only (not measured: Envoy's own start).
    let first = directory(layout, 1, &["probe0".to_owned()], upstream);
    let (snap, _) = snapshot(layout, &first, keys, &wasm, upstream)?;
    push_and_wait(&ads, snap, &envoy, keys, "probe0")
        .await
        .context("initial push")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    report.baseline_rss_bytes.push((layout, envoy.rss_bytes()?));
    let bench = Requests::fixed(
        &tokens::pod_host(tokens::BENCH_POD),
        &keys.capability(Alg::EdDSA, tokens::BENCH_POD, 1)?,
    );

    for &pods in sizes {
        let probe_a = format!("probe{pods}a");
        let probe_b = format!("probe{pods}b");
        let built = Instant::now();
        let (snap, json_bytes) = snapshot(
            layout,
            &directory(layout, pods, std::slice::from_ref(&probe_a), upstream),
            keys,
            &wasm,
            upstream,
        )?;
        let snapshot_build_ms = built.elapsed().as_secs_f64() * 1000.0;
        let push_applied_ms = push_and_wait(&ads, snap, &envoy, keys, &probe_a).await?;
        let (snap, _) = snapshot(
            layout,
            &directory(
                layout,
                pods + 1,
                &[probe_a.clone(), probe_b.clone()],
                upstream,
            ),
            keys,
            &wasm,
            upstream,
        )?;
        let add_one_applied_ms = push_and_wait(&ads, snap, &envoy, keys, &probe_b).await?;
        // Let V8 and Envoy settle (old configs freed) before reading memory.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let envoy_rss_bytes = envoy.rss_bytes()?;
        let secs = Duration::from_secs_f64(settings.saturation_secs);
        load::closed_loop(envoy.listener, settings.connections, secs / 2, &bench).await?;
        let cpu_before = envoy.cpu_time();
        let stats = load::closed_loop(envoy.listener, settings.connections, secs, &bench).await?;
        let envoy_cpu_us_per_request =
            (envoy.cpu_time() - cpu_before).as_secs_f64() * 1e6 / stats.ok.max(1) as f64;
        eprintln!(
            "scale {layout:?} {pods:>6} pods: json {json_bytes} B, build {snapshot_build_ms:.1} ms, push {push_applied_ms:.1} ms, add one {add_one_applied_ms:.1} ms, rss {:.1} MiB, {:.0} req/s, {envoy_cpu_us_per_request:.1} µs CPU/req",
            envoy_rss_bytes as f64 / 1048576.0,
            stats.rps()
        );
        report.points.push(ScalePoint {
            layout,
            pods,
            filter_config_bytes: json_bytes,
            snapshot_build_ms,
            push_applied_ms,
            add_one_applied_ms,
            envoy_rss_bytes,
            rps: stats.rps(),
            rps_errors: stats.errors,
            envoy_cpu_us_per_request,
        });
    }
    drop(envoy);
    drop(ads);
    Ok(())
}

pub async fn run(
    settings: &Settings,
    placement: &Placement,
    upstream: SocketAddr,
    keys: &Keys,
) -> anyhow::Result<ScaleReport> {
    let mut report = ScaleReport {
        points: Vec::new(),
        baseline_rss_bytes: Vec::new(),
    };
    layout_run(
        Layout::OriginalDst,
        &settings.scale_pods,
        settings,
        placement,
        upstream,
        keys,
        &mut report,
    )
    .await
    .context("scale, original-destination layout")?;
    layout_run(
        Layout::ClusterPerPod,
        &settings.cluster_per_pod_pods,
        settings,
        placement,
        upstream,
        keys,
        &mut report,
    )
    .await
    .context("scale, cluster-per-pod layout")?;
    Ok(report)
}

/// One worker count in the `--worker-memory` run.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerMemoryPoint {
    pub workers: u32,
    /// Envoy's resident memory with the bench pod and a probe pod pushed.
    pub rss_small_bytes: u64,
    /// The same after the push of `pods` pods has been applied and answered.
    pub rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerMemoryReport {
    pub pods: usize,
    pub filter_config_bytes: usize,
    pub points: Vec<WorkerMemoryPoint>,
    /// (RSS at the most workers − RSS at the fewest) / (the difference in workers), with
    /// `pods` pods.
    pub per_worker_bytes: f64,
    /// The same with the two-pod directory: what a worker costs before any directory.
    pub per_worker_small_bytes: f64,
}

/// `--worker-memory`: Envoy's RSS with `workers` worker threads (each with its own Wasm VM and
/// compiled filter configuration) at `pods` pods, pushed over ADS in the original-destination
/// layout. Each worker serves requests before the reading, so every VM has run.
pub async fn worker_memory(
    settings: &Settings,
    placement: &Placement,
    upstream: SocketAddr,
    keys: &Keys,
    pods: usize,
    workers: &[u32],
) -> anyhow::Result<WorkerMemoryReport> {
    let layout = Layout::OriginalDst;
    let wasm = settings.filter_wasm.display().to_string();
    let bench = Requests::fixed(
        &tokens::pod_host(tokens::BENCH_POD),
        &keys.capability(Alg::EdDSA, tokens::BENCH_POD, 1)?,
    );
    let mut points = Vec::new();
    let mut filter_config_bytes = 0;
    for (i, &w) in workers.iter().enumerate() {
        let ads = Ads::start().await?;
        let port = envoy::free_port()?;
        let label = format!("memory-{w}w");
        let bootstrap = envoy::ads_bootstrap(&label, ads.addr, port);
        let base = 40 + u32::try_from(i).unwrap_or(0);
        let envoy = Envoy::start_workers(
            &settings.envoy,
            placement,
            &label,
            &bootstrap,
            port,
            base,
            w,
        )
        .await?;
        let first = directory(layout, 1, &["probe0".to_owned()], upstream);
        let (snap, _) = snapshot(layout, &first, keys, &wasm, upstream)?;
        push_and_wait(&ads, snap, &envoy, keys, "probe0")
            .await
            .context("initial push")?;
        // Connections spread over the workers; each answers.
        load::closed_loop(envoy.listener, 16, Duration::from_millis(500), &bench).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_small_bytes = envoy.rss_bytes()?;
        let probe = format!("probe{pods}a");
        let (snap, json_bytes) = snapshot(
            layout,
            &directory(layout, pods, std::slice::from_ref(&probe), upstream),
            keys,
            &wasm,
            upstream,
        )?;
        filter_config_bytes = json_bytes;
        push_and_wait(&ads, snap, &envoy, keys, &probe).await?;
        load::closed_loop(envoy.listener, 16, Duration::from_millis(500), &bench).await?;
        // Let V8 and Envoy settle (the old configs freed) before reading memory.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let rss_bytes = envoy.rss_bytes()?;
        eprintln!(
            "memory {w} workers: {:.1} MiB with 2 pods, {:.1} MiB with {pods} pods",
            rss_small_bytes as f64 / 1048576.0,
            rss_bytes as f64 / 1048576.0
        );
        points.push(WorkerMemoryPoint {
            workers: w,
            rss_small_bytes,
            rss_bytes,
        });
        drop(envoy);
        drop(ads);
    }
    let slope = |f: fn(&WorkerMemoryPoint) -> u64| -> f64 {
        match (points.first(), points.last()) {
            (Some(a), Some(b)) if b.workers > a.workers => {
                (f(b) as f64 - f(a) as f64) / f64::from(b.workers - a.workers)
            }
            _ => f64::NAN,
        }
    };
    let per_worker_bytes = slope(|p| p.rss_bytes);
    let per_worker_small_bytes = slope(|p| p.rss_small_bytes);
    Ok(WorkerMemoryReport {
        pods,
        filter_config_bytes,
        points,
        per_worker_bytes,
        per_worker_small_bytes,
    })
}

impl WorkerMemoryReport {
    pub fn markdown(&self) -> String {
        let mib = |b: f64| b / 1048576.0;
        let mut out = format!(
            "Filter configuration: {} pods, {} bytes of JSON.\n\n\
             | workers | RSS, 2 pods (MiB) | RSS, {} pods (MiB) |\n|---:|---:|---:|\n",
            self.pods, self.filter_config_bytes, self.pods
        );
        for p in &self.points {
            out.push_str(&format!(
                "| {} | {:.1} | {:.1} |\n",
                p.workers,
                mib(p.rss_small_bytes as f64),
                mib(p.rss_bytes as f64)
            ));
        }
        out.push_str(&format!(
            "\nPer extra worker: {:.1} MiB at {} pods, {:.1} MiB at 2 pods.\n",
            mib(self.per_worker_bytes),
            self.pods,
            mib(self.per_worker_small_bytes)
        ));
        out
    }
}
