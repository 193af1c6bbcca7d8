//! `just bench`: podgate's filter against the bare proxy and Envoy's own jwt_authn, one run,
//! every configuration side by side; then the pod directory at scale over xDS. Writes
//! `bench/results/<time>.json`, `bench/results/latest.json` and the table in `BENCHMARKS.md`.
//!
//! Loopback only. Envoy runs with one worker pinned to CPU 0 (except in `--realistic` and
//! `--worker-memory`, which run several workers unpinned); this process (load generator,
//! pacer, upstream, ADS server) runs on the other CPUs.

mod compare;
mod echo_upstream;
mod envoy;
mod exchange;
mod interleaved;
mod limits;
mod load;
mod pin;
mod pushes;
mod realistic;
mod renewal;
mod report;
mod scale;
mod tokens;
mod upstream;

#[cfg(test)]
mod native_tests;
#[cfg(test)]
mod pushes_tests;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Parser;

/// Measure podgate against Envoy's jwt_authn and the bare proxy.
#[derive(Debug, Clone, Parser)]
#[command(name = "podgate-bench")]
pub struct Settings {
    /// Envoy 1.40 binary.
    #[arg(long, env = "PODGATE_ENVOY")]
    pub envoy: PathBuf,
    /// The filter built with `--profile wasm-release`.
    #[arg(long, env = "PODGATE_FILTER_WASM")]
    pub filter_wasm: PathBuf,
    /// The no-op Wasm filter (`bench/noop-filter`, case W).
    #[arg(long, env = "PODGATE_NOOP_WASM")]
    pub noop_wasm: PathBuf,
    /// podgate as an Envoy dynamic module (`bench/native-filter`, a native `.so`): cases N
    /// (the module doing nothing) and D-native-cache-EdDSA (podgate's `Gate` in it) when set.
    #[arg(long, env = "PODGATE_NATIVE_MODULE")]
    pub native_module: Option<PathBuf>,
    /// Rounds per case (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Closed-loop warm-up per case, seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// One saturation round, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub saturation_secs: f64,
    /// One fixed-rate latency round, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub latency_secs: f64,
    /// Keep-alive connections in the saturation runs.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Keep-alive connections serving the fixed-rate schedule.
    #[arg(long, default_value_t = 32)]
    pub latency_connections: usize,
    /// The latency rate as a fraction of B's (bare Envoy's) saturation.
    #[arg(long, default_value_t = 0.5)]
    pub rate_fraction: f64,
    /// Distinct tokens minted per algorithm for the "new token every request" case (cycled).
    #[arg(long, default_value_t = 20_000)]
    pub fresh_tokens: u64,
    /// Directory sizes for the scale run (one ORIGINAL_DST cluster).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub scale_pods: Vec<usize>,
    /// Directory sizes for the cluster-per-pod alternative.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub cluster_per_pod_pods: Vec<usize>,
    /// Skip the scale run.
    #[arg(long)]
    pub no_scale: bool,
    /// Skip the side-by-side comparison.
    #[arg(long)]
    pub no_compare: bool,
    /// Another build of the filter (e.g. the previous commit's `.wasm`), measured as case
    /// `D-prev-cache-EdDSA` in the same interleaved rounds as `D-cache-EdDSA` (and
    /// `D-prev-fresh-{alg}` beside each `D-fresh-{alg}` measured; with `--realistic`, case
    /// `D-prev` beside `D`): a before/after comparison that outside load moves equally.
    #[arg(long)]
    pub prev_wasm: Option<PathBuf>,
    /// Only these C/D cases (e.g. `D-cache-EdDSA`); A and B always run.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Do not check that the auth filters refuse a bad token (for measuring a stand-in filter
    /// in place of podgate's, e.g. a do-nothing one, with `PODGATE_FILTER_WASM`).
    #[arg(long)]
    pub skip_deny_check: bool,
    /// Do not pin Envoy and the load generator to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Where the JSON goes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    pub results_dir: PathBuf,
    /// The Markdown file whose generated section is rewritten.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md"))]
    pub markdown: PathBuf,
    /// Only the API-token exchange scenario (`exchange.rs`): prints its table and writes
    /// `exchange-latest.json` in the results directory; `BENCHMARKS.md` is not touched.
    #[arg(long)]
    pub exchange_only: bool,
    /// Print the report but write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only the renewal scenario (renewal at the edge against the cached path): its table on
    /// stdout and `renewal-<time>.json` in the results directory; `BENCHMARKS.md` and
    /// `latest.json` are left alone.
    #[arg(long)]
    pub renewal: bool,
    /// Only the limits scenario (rate and open-stream limits at the edge against none, on the
    /// cached path): its table on stdout and `limits-<time>.json` in the results directory;
    /// `BENCHMARKS.md` and `latest.json` are left alone.
    #[arg(long)]
    pub limits: bool,
    /// Only the realistic-traffic scenario (`realistic.rs`: 1,000 users over 100 pods, page
    /// loads, API calls and WebSocket messages, Envoy with 2 workers; podgate against bare
    /// Envoy, a do-nothing Wasm filter and jwt_authn): its table on stdout and
    /// `realistic-<time>.json` in the results directory; `BENCHMARKS.md` and `latest.json` are
    /// left alone.
    #[arg(long)]
    pub realistic: bool,
    /// Only Envoy's memory per worker with the filter (`--memory-workers` workers, each run at
    /// `--memory-pods` pods over ADS): its table on stdout and `worker-memory-<time>.json` in
    /// the results directory; `BENCHMARKS.md` and `latest.json` are left alone.
    #[arg(long)]
    pub worker_memory: bool,
    /// `--realistic`: the percentage of operations that are page loads with one-off
    /// capabilities (taken from the page loads' share), at most 45.
    #[arg(long, default_value_t = 10)]
    pub cold_percent: u64,
    /// `--realistic`: pushes of the filter's configuration per second while the rounds run
    /// (0: none). Above 0 the podgate cases (`D`, `D-prev`) get their configuration as the
    /// control plane delivers it, over ECDS (here from a file Envoy watches), with an identity
    /// assertion key; each push changes what `--push-kind` says. Case `D-still` is `D` the same
    /// way, never pushed.
    #[arg(long, default_value_t = 0.0)]
    pub pushes_per_sec: f64,
    /// `--pushes-per-sec`: what each push changes: `pods` adds or removes a pod no traffic goes
    /// to, as a pod started or stopped does; `revocations` revokes one more capability no
    /// traffic uses, as a sign-out or a revoked token elsewhere does.
    #[arg(long, value_enum, default_value = "pods")]
    pub push_kind: pushes::PushKind,
    /// `--realistic`: podgate's `token_cache_entries` (jwt_authn's cache follows it); the
    /// filter's default unless set.
    #[arg(long)]
    pub token_cache_entries: Option<usize>,
    /// Directory size for `--worker-memory`.
    #[arg(long, default_value_t = 10_000)]
    pub memory_pods: usize,
    /// Worker counts for `--worker-memory` (the increment is taken between the first and the
    /// last).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub memory_workers: Vec<u32>,
}

/// Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    if !settings.envoy.is_file() {
        bail!(
            "Envoy not found at {} (set PODGATE_ENVOY; `./just setup` installs it)",
            settings.envoy.display()
        );
    }
    if !settings.filter_wasm.is_file() {
        bail!(
            "filter not found at {} (build it with `cargo build -p podgate-filter --target \
             wasm32-wasip1 --profile wasm-release`, or set PODGATE_FILTER_WASM)",
            settings.filter_wasm.display()
        );
    }
    if !settings.noop_wasm.is_file() {
        bail!(
            "no-op filter not found at {} (build it with `cargo build --manifest-path \
             bench/noop-filter/Cargo.toml --target wasm32-wasip1 --release --target-dir target`, \
             or set PODGATE_NOOP_WASM)",
            settings.noop_wasm.display()
        );
    }
    if let Some(module) = settings.native_module.as_ref().filter(|m| !m.is_file()) {
        bail!(
            "native module not found at {} (build it with `cargo build --release -p \
             podgate-native-bench`, or unset PODGATE_NATIVE_MODULE)",
            module.display()
        );
    }
    if settings.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let placement = pin::Placement::detect(!settings.no_pin);
    if !pin::pin_current_thread(placement.loadgen_cpu) && placement.loadgen_cpu.is_some() {
        eprintln!("could not pin the load generator to CPU 1");
    }
    for note in &placement.notes {
        eprintln!("placement: {note}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("load generator runtime")?;
    runtime.block_on(run(settings, placement))
}

async fn run(settings: Settings, placement: pin::Placement) -> anyhow::Result<()> {
    if settings.renewal {
        return run_renewal(&settings, &placement).await;
    }
    if settings.limits {
        return run_limits(&settings, &placement).await;
    }
    if settings.realistic {
        let machine = report::Machine::detect(placement.online_cpus);
        let keys = tokens::Keys::new()?;
        let report = realistic::run(&settings, &placement, &keys).await?;
        let json = serde_json::json!({"machine": machine, "realistic": report});
        return finish(&settings, "realistic", &report.markdown(), &json);
    }
    if settings.worker_memory {
        let machine = report::Machine::detect(placement.online_cpus);
        let upstream = upstream::start(placement.upstream_cpu)?;
        let keys = tokens::Keys::new()?;
        let report = scale::worker_memory(
            &settings,
            &placement,
            upstream,
            &keys,
            settings.memory_pods,
            &settings.memory_workers,
        )
        .await?;
        let json = serde_json::json!({"machine": machine, "worker_memory": report});
        return finish(&settings, "worker-memory", &report.markdown(), &json);
    }
    let started = Instant::now();
    let machine_before = report::Machine::detect(placement.online_cpus);
    let upstream = upstream::start(placement.upstream_cpu)?;
    let keys = tokens::Keys::new()?;
    if settings.exchange_only {
        let report = exchange::run(&settings, &placement, upstream, &keys).await?;
        println!("{}", report.markdown());
        if !settings.dry_run {
            let path = settings.results_dir.join("exchange-latest.json");
            std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    let compare = if settings.no_compare {
        None
    } else {
        Some(compare::run(&settings, &placement, upstream, &keys).await?)
    };
    let scale = if settings.no_scale {
        None
    } else {
        Some(scale::run(&settings, &placement, upstream, &keys).await?)
    };
    let report = report::Report::new(
        &settings,
        machine_before,
        placement,
        compare,
        scale,
        started.elapsed(),
    );
    let markdown = report.markdown();
    println!("{markdown}");
    if !settings.dry_run {
        report.write(&settings)?;
    }
    Ok(())
}

async fn run_renewal(settings: &Settings, placement: &pin::Placement) -> anyhow::Result<()> {
    let started = Instant::now();
    let machine = report::Machine::detect(placement.online_cpus);
    let upstream = upstream::start(placement.upstream_cpu)?;
    let keys = tokens::Keys::new()?;
    let report = renewal::run(settings, placement, upstream, &keys).await?;
    let markdown = format!(
        "{}\nTotal run {:.0} s.",
        report.markdown(),
        started.elapsed().as_secs_f64()
    );
    let json = serde_json::json!({"machine": machine, "renewal": report});
    finish(settings, "renewal", &markdown, &json)
}

async fn run_limits(settings: &Settings, placement: &pin::Placement) -> anyhow::Result<()> {
    let started = Instant::now();
    let machine = report::Machine::detect(placement.online_cpus);
    let upstream = upstream::start(placement.upstream_cpu)?;
    let keys = tokens::Keys::new()?;
    let report = limits::run(settings, placement, upstream, &keys).await?;
    let markdown = format!(
        "{}\nTotal run {:.0} s.",
        report.markdown(),
        started.elapsed().as_secs_f64()
    );
    let json = serde_json::json!({"machine": machine, "limits": report});
    finish(settings, "limits", &markdown, &json)
}

/// Prints `markdown` and, unless `--dry-run`, writes `json` to `<name>-<time>.json` in the
/// results directory.
fn finish(
    settings: &Settings,
    name: &str,
    markdown: &str,
    json: &serde_json::Value,
) -> anyhow::Result<()> {
    println!("{markdown}");
    if !settings.dry_run {
        let time = chrono::DateTime::from_timestamp(unix_now(), 0)
            .map(|t| t.format("%Y-%m-%dT%H%M%SZ").to_string())
            .unwrap_or_default();
        let path = settings.results_dir.join(format!("{name}-{time}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
