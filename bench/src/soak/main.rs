//! `just soak [MINUTES]`: the whole stack under steady load while it changes.
//!
//! Starts two `podgate serve` replicas on a database of its own on a PostgreSQL server
//! (`--postgres`, or `PODGATE_TEST_POSTGRES_URL`; dropped at the end), else one on SQLite; one real Envoy per replica fed over ADS;
//! fake pods. Finds the saturation rate briefly (or takes `--rate`), then for the run's length
//! sends requests at a fraction of it through the Envoys (capabilities, API tokens, WebSockets)
//! while keys rotate, pods stop and start, API tokens are revoked and users sign out and in
//! again. Every answer is judged against the changes (see `world.rs`); the run exits nonzero
//! when anything but an expected refusal happened. Writes `bench/results/soak-<time>.json` and
//! `.md`.

mod drive;
#[path = "../pg_database.rs"]
mod pg_database;
mod report;
mod stack;
mod world;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use podgate_testkit::XorShift;

use drive::World;
use stack::{Api, Stack, StackSettings};
use world::Stats;

/// Soak test: the stack under steady load while keys, pods, tokens and sessions change.
#[derive(Debug, Clone, Parser)]
#[command(name = "podgate-soak")]
pub struct Settings {
    /// How long the steady load runs, in minutes.
    #[arg(default_value_t = 10.0)]
    pub minutes: f64,
    /// How long the steady load runs, in seconds (instead of MINUTES).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Requests per second through the Envoys; without it, `--load-fraction` of the measured
    /// saturation rate.
    #[arg(long)]
    pub rate: Option<f64>,
    /// The steady rate as a fraction of saturation.
    #[arg(long, default_value_t = 0.8)]
    pub load_fraction: f64,
    /// How long the saturation measurement runs, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub saturation_secs: f64,
    /// Concurrent requests in the saturation measurement.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Most requests in flight at the steady rate (more are counted as `behind`, not sent).
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    /// Two replicas on a database the soak makes on this PostgreSQL server (and drops at the
    /// end; the URL's user must be allowed to create databases). Without it and without
    /// `--sqlite`: `PODGATE_TEST_POSTGRES_URL`.
    #[arg(long)]
    pub postgres: Option<String>,
    /// One replica on SQLite even when `PODGATE_TEST_POSTGRES_URL` is set.
    #[arg(long, conflicts_with = "postgres")]
    pub sqlite: bool,
    /// Fake pods.
    #[arg(long, default_value_t = 6)]
    pub pods: usize,
    /// Users (half use capabilities and are signed out now and then, half also use API tokens,
    /// which are revoked now and then).
    #[arg(long, default_value_t = 8)]
    pub users: usize,
    /// WebSocket sessions open at a time.
    #[arg(long, default_value_t = 4)]
    pub websockets: usize,
    /// The period of the changes: a pod stopped or started, an API token revoked, a user signed
    /// out; keys rotate every four periods.
    #[arg(long, default_value_t = 15.0)]
    pub change_secs: f64,
    /// How long a change may take to show at every Envoy (both answers are fine meanwhile).
    #[arg(long, default_value_t = 8.0)]
    pub grace_secs: f64,
    /// Latency and outcomes are reported per bucket of this many seconds.
    #[arg(long, default_value_t = 60)]
    pub bucket_secs: u64,
    /// The `podgate` binary [default: `<workspace>/target/release/podgate`, else `debug`].
    #[arg(long, env = "PODGATE_BIN")]
    pub podgate: Option<PathBuf>,
    /// Envoy 1.40.
    #[arg(long, env = "PODGATE_ENVOY")]
    pub envoy: Option<PathBuf>,
    /// The filter built with `--profile wasm-release`.
    #[arg(long, env = "PODGATE_FILTER_WASM")]
    pub filter_wasm: Option<PathBuf>,
    /// Where the JSON and Markdown go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    pub results_dir: PathBuf,
    /// Print the report but write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn main() -> std::process::ExitCode {
    let settings = Settings::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn resolve_binaries(settings: &Settings) -> anyhow::Result<StackSettings> {
    let root = podgate_testkit::workspace_root();
    let podgate = match &settings.podgate {
        Some(p) => p.clone(),
        None => ["release", "debug"]
            .iter()
            .map(|profile| root.join("target").join(profile).join("podgate"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| root.join("target/release/podgate")),
    };
    if !podgate.is_file() {
        bail!(
            "podgate not found at {} (`cargo build --release -p podgate`, or set PODGATE_BIN)",
            podgate.display()
        );
    }
    let envoy = match &settings.envoy {
        Some(p) => p.clone(),
        None => podgate_testkit::envoy_binary()?,
    };
    let filter_wasm = settings
        .filter_wasm
        .clone()
        .unwrap_or_else(|| root.join("target/wasm32-wasip1/wasm-release/podgate_filter.wasm"));
    if !filter_wasm.is_file() {
        bail!(
            "filter not found at {} (`cargo build -p podgate-filter --target wasm32-wasip1 \
             --profile wasm-release`, or set PODGATE_FILTER_WASM)",
            filter_wasm.display()
        );
    }
    let postgres = if settings.sqlite {
        None
    } else {
        settings.postgres.clone().or_else(|| {
            std::env::var("PODGATE_TEST_POSTGRES_URL")
                .ok()
                .filter(|u| !u.is_empty())
        })
    };
    Ok(StackSettings {
        podgate,
        envoy,
        filter_wasm,
        postgres,
        pods: settings.pods.max(1),
    })
}

async fn run(settings: Settings) -> anyhow::Result<bool> {
    let duration = Duration::from_secs_f64(settings.seconds.unwrap_or(settings.minutes * 60.0));
    if duration.is_zero() || settings.users < 2 {
        bail!("the soak needs a duration and at least two users");
    }
    let started_at = report::utc_now();
    let stack_settings = resolve_binaries(&settings)?;
    eprintln!(
        "soak: starting {} on {}",
        if stack_settings.postgres.is_some() {
            "two replicas"
        } else {
            "one replica"
        },
        if stack_settings.postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    let tag = format!("k{:x}", report::unix_now() % 0xff_ffff);
    let server_url = stack_settings.postgres.clone();
    let database = format!("podgate_soak_{tag}");
    let mut stack_settings = stack_settings;
    if let Some(url) = &server_url {
        stack_settings.postgres = Some(pg_database::create_database(url, &database).await?);
    }
    let outcome = soak(&settings, &stack_settings, &tag, started_at).await;
    if let Some(url) = &server_url {
        pg_database::drop_database(url, &database).await;
    }
    outcome
}

async fn soak(
    settings: &Settings,
    stack_settings: &StackSettings,
    tag: &str,
    started_at: String,
) -> anyhow::Result<bool> {
    let duration = Duration::from_secs_f64(settings.seconds.unwrap_or(settings.minutes * 60.0));
    let stack = Stack::start(stack_settings).await?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(settings.max_in_flight)
        .build()?;
    let admin = Api::new(stack.replicas[0].cp.listen(), http.clone());
    let seed = stack::seed(&admin, tag, settings.users, &stack.pods).await?;
    stack::wait_reachable(&stack, &admin, &seed, Duration::from_secs(60)).await?;
    let grace = Duration::from_secs_f64(settings.grace_secs);

    // Saturation: closed loop, no changes, its own records.
    let saturation = match settings.rate {
        Some(rate) => report::Saturation {
            measured: false,
            rate,
            secs: 0.0,
            errors: 0,
        },
        None => {
            let probe = Arc::new(
                World::new(
                    &stack,
                    &seed.users,
                    &seed.slugs,
                    grace,
                    Stats::new(Duration::from_secs(3600))?,
                    http.clone(),
                )
                .await?,
            );
            let secs = settings.saturation_secs.max(1.0);
            eprintln!(
                "soak: finding saturation ({secs:.0} s, {} in flight)",
                settings.connections
            );
            let t = Instant::now();
            let answered = probe
                .closed_loop(settings.connections.max(1), Duration::from_secs_f64(secs))
                .await;
            let secs = t.elapsed().as_secs_f64();
            report::Saturation {
                measured: true,
                rate: answered as f64 / secs,
                secs,
                errors: probe.stats.error_count(),
            }
        }
    };
    let rate = match settings.rate {
        Some(rate) => rate,
        None => saturation.rate * settings.load_fraction,
    };
    if rate <= 0.0 {
        bail!("no rate to run at (saturation {:.0}/s)", saturation.rate);
    }
    eprintln!(
        "soak: saturation {:.0} req/s; steady load {rate:.0} req/s for {:.0} s",
        saturation.rate,
        duration.as_secs_f64()
    );

    let world = Arc::new(
        World::new(
            &stack,
            &seed.users,
            &seed.slugs,
            grace,
            Stats::new(Duration::from_secs(settings.bucket_secs.max(1)))?,
            http.clone(),
        )
        .await?,
    );
    let processes = stack.processes();
    let rss_start: Vec<Option<u64>> = processes
        .iter()
        .map(|(_, pid)| stack::rss_kib(*pid))
        .collect();
    let load_start = report::loadavg();
    let period = Duration::from_secs_f64(settings.change_secs.max(0.5));
    let stack = Arc::new(stack);
    let t0 = Instant::now();

    let mut background = Vec::new();
    {
        let w = Arc::clone(&world);
        background.push(tokio::spawn(async move {
            let mut rng = XorShift::seeded(11);
            let mut next = Instant::now() + period;
            while w.tick(&mut next, period).await {
                w.toggle_pod(&mut rng).await;
            }
        }));
    }
    {
        let w = Arc::clone(&world);
        let s = Arc::clone(&stack);
        background.push(tokio::spawn(async move {
            let mut rng = XorShift::seeded(12);
            let mut cli = false;
            let mut next = Instant::now() + period * 2;
            while w.tick(&mut next, period * 4).await {
                w.rotate_keys(&s, &mut rng, cli).await;
                cli = !cli;
            }
        }));
    }
    {
        let w = Arc::clone(&world);
        background.push(tokio::spawn(async move {
            let mut rng = XorShift::seeded(13);
            let mut next = Instant::now() + period / 3;
            while w.tick(&mut next, period).await {
                w.churn_api_tokens(&mut rng).await;
            }
        }));
    }
    {
        let w = Arc::clone(&world);
        background.push(tokio::spawn(async move {
            let mut rng = XorShift::seeded(14);
            let mut next = Instant::now() + period * 2 / 3;
            while w.tick(&mut next, period).await {
                w.churn_sessions(&mut rng).await;
            }
        }));
    }
    {
        let w = Arc::clone(&world);
        let sessions = settings.websockets;
        background.push(tokio::spawn(async move { w.websockets(sessions).await }));
    }
    // The fake pods keep every request they see: forget them now and then; and follow memory.
    let samples = Arc::new(std::sync::Mutex::new(Vec::<report::RssSample>::new()));
    {
        let w = Arc::clone(&world);
        let s = Arc::clone(&stack);
        let samples = Arc::clone(&samples);
        let processes = processes.clone();
        let every = Duration::from_secs(settings.bucket_secs.max(1));
        background.push(tokio::spawn(async move {
            let mut last_sample = Instant::now();
            let mut next = Instant::now();
            while w.tick(&mut next, Duration::from_secs(2)).await {
                for pod in &s.pods {
                    pod.reset();
                }
                if last_sample.elapsed() >= every {
                    last_sample = Instant::now();
                    let at = t0.elapsed().as_secs();
                    let mut samples = samples
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for (name, pid) in &processes {
                        samples.push(report::RssSample {
                            at_s: at,
                            process: name.clone(),
                            rss_kib: stack::rss_kib(*pid),
                        });
                    }
                }
            }
        }));
    }
    let pacer = {
        let w = Arc::clone(&world);
        let max = settings.max_in_flight.max(1);
        tokio::spawn(async move { w.paced(rate, max).await })
    };
    tokio::time::sleep(duration).await;
    world.stop();
    let (sent, behind) = pacer.await.context("the pacer")?;
    for task in background {
        let _ = task.await;
    }
    let elapsed = t0.elapsed();
    let rss_end: Vec<Option<u64>> = processes
        .iter()
        .map(|(_, pid)| stack::rss_kib(*pid))
        .collect();
    for r in &stack.replicas {
        if !r.cp.is_running() {
            world
                .stats
                .error("process: a control plane exited", r.cp.log_tail());
        }
        if let Some(code) = r.envoy.exit_status() {
            world.stats.error(
                "process: an Envoy exited",
                format!("status {code}\n{}", r.envoy.log_tail()),
            );
        }
    }
    let report = report::Report::new(report::Inputs {
        settings,
        started_at,
        database: if stack_settings.postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        replicas: stack.replicas.len(),
        saturation,
        rate,
        duration: elapsed,
        sent,
        behind,
        retried: world.retried.load(std::sync::atomic::Ordering::Relaxed),
        skipped: world.skipped.load(std::sync::atomic::Ordering::Relaxed),
        processes: &processes,
        rss_start,
        rss_end,
        rss_samples: samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
        load_start,
        changes: &world.changes,
        totals: world.stats.totals(),
    });
    let markdown = report.markdown();
    println!("{markdown}");
    if !settings.dry_run {
        report.write(&settings.results_dir, &markdown)?;
    }
    let errors: u64 = report.totals.errors.values().sum();
    if errors > 0 {
        eprintln!("soak: FAILED: {errors} errors (not expected refusals)");
        eprintln!("{}", stack.log_tails());
    }
    Ok(errors == 0)
}
