//! `--limits`: what the limits at the edge cost on the cached path, against no limits, in one
//! run.
//!
//! Four Envoys run the podgate filter on the same token and the same load, rounds interleaved
//! as in the comparison:
//!
//! - `base`: no limits, the cached path (the baseline);
//! - `base-again`: an identical second Envoy, so the ratio between the two is the run's noise;
//! - `rate`: per-user and per-pod request-rate limits so high they never refuse
//!   (`rate_limits`: the buckets);
//! - `rate+concurrent`: those and per-user and per-pod open-stream limits that never refuse
//!   (`concurrency_limits`: each forward held until Envoy deletes its stream).
//!
//! Ratios are against `base`: requests per second at saturation and Envoy CPU per request.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use serde_json::json;

use crate::compare::median;
use crate::envoy::{self, Envoy, Route};
use crate::load::{self, Requests};
use crate::pin::Placement;
use crate::tokens::{self, DirectoryPod, Keys};
use crate::Settings;

#[derive(Debug, Clone, Serialize)]
pub struct LimitsCase {
    pub id: &'static str,
    pub what: &'static str,
    pub saturation_rounds: Vec<f64>,
    pub saturation_rps: f64,
    pub cpu_rounds_us: Vec<f64>,
    pub envoy_cpu_us_per_request: f64,
    pub errors: u64,
    /// `saturation_rps` over the baseline's.
    pub rps_ratio: f64,
    /// `envoy_cpu_us_per_request` over the baseline's.
    pub cpu_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitsReport {
    pub rounds: usize,
    pub saturation_secs: f64,
    pub connections: usize,
    pub cases: Vec<LimitsCase>,
}

/// Which limits a case configures.
#[derive(Debug, Clone, Copy)]
enum Limits {
    None,
    Rate,
    RateAndConcurrent,
}

pub async fn run(
    settings: &Settings,
    placement: &Placement,
    upstream: SocketAddr,
    keys: &Keys,
) -> anyhow::Result<LimitsReport> {
    let token = crate::renewal::capability(keys, crate::unix_now(), "bench-limits")?;
    let pod_cluster = "pod_bench";
    let config = |limits: Limits| -> anyhow::Result<String> {
        let json = tokens::filter_config_json(
            &keys.jwks()?,
            &[DirectoryPod {
                slug: tokens::BENCH_POD.to_owned(),
                cluster: pod_cluster.to_owned(),
                address: None,
            }],
            None,
        )?;
        let mut value: serde_json::Value = serde_json::from_str(&json)?;
        let never = json!({"per_second": u32::MAX, "burst": u32::MAX});
        if matches!(limits, Limits::Rate | Limits::RateAndConcurrent) {
            value["rate_limits"] = json!({"per_user": never, "per_pod": never});
        }
        if matches!(limits, Limits::RateAndConcurrent) {
            value["concurrency_limits"] = json!({"per_user": u32::MAX, "per_pod": u32::MAX});
        }
        let json = value.to_string();
        tokens::check_filter_config(&json)?;
        Ok(json)
    };
    let cases: [(&'static str, &'static str, Limits); 4] = [
        (
            "base",
            "no limits, cached path (the baseline)",
            Limits::None,
        ),
        (
            "base-again",
            "the same, a second Envoy (the run's noise)",
            Limits::None,
        ),
        (
            "rate",
            "per-user and per-pod rate limits that never refuse",
            Limits::Rate,
        ),
        (
            "rate+concurrent",
            "those and per-user and per-pod open-stream limits that never refuse",
            Limits::RateAndConcurrent,
        ),
    ];
    let mut envoys = Vec::new();
    for (i, (id, _, limits)) in cases.iter().enumerate() {
        let port = envoy::free_port()?;
        let filter = envoy::podgate_filter(&settings.filter_wasm, &config(*limits)?);
        let bootstrap = envoy::static_bootstrap(
            id,
            envoy::listener(
                port,
                &Route::ClusterHeader("x-podgate-cluster"),
                vec![filter],
            ),
            vec![envoy::static_cluster(pod_cluster, upstream)],
        );
        let base_id = 30 + u32::try_from(i).unwrap_or(0);
        let mut e = Envoy::start(&settings.envoy, placement, id, &bootstrap, port, base_id).await?;
        e.wait_ready().await?;
        envoys.push(e);
    }

    let requests = Requests::fixed(&tokens::pod_host(tokens::BENCH_POD), &token);
    for (e, (id, _, _)) in envoys.iter().zip(&cases) {
        let status = load::probe(e.listener, &requests).await?;
        if status != 200 {
            bail!("{id}: expected 200 before measuring, got {status}");
        }
    }

    let conns = settings.connections;
    let warm = Duration::from_secs_f64(settings.warmup_secs);
    for e in &envoys {
        load::closed_loop(e.listener, conns, warm, &requests).await?;
    }
    let sat = Duration::from_secs_f64(settings.saturation_secs);
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut errors = vec![0u64; cases.len()];
    for round in 0..settings.rounds {
        for (i, e) in envoys.iter().enumerate() {
            let before = e.cpu_time();
            let stats = load::closed_loop(e.listener, conns, sat, &requests).await?;
            let cpu_us = if stats.ok > 0 {
                (e.cpu_time() - before).as_secs_f64() * 1e6 / stats.ok as f64
            } else {
                f64::NAN
            };
            eprintln!(
                "limits round {round} {:<16} {:>9.0} req/s  Envoy CPU {:>6.1} µs/req  errors {}",
                cases[i].0,
                stats.rps(),
                cpu_us,
                stats.errors
            );
            rps[i].push(stats.rps());
            cpu[i].push(cpu_us);
            errors[i] += stats.errors;
        }
    }
    let base_rps = median(&rps[0]);
    let base_cpu = median(&cpu[0]);
    let results = cases
        .iter()
        .enumerate()
        .map(|(i, (id, what, _))| {
            let saturation_rps = median(&rps[i]);
            let envoy_cpu_us_per_request = median(&cpu[i]);
            LimitsCase {
                id,
                what,
                saturation_rounds: rps[i].clone(),
                saturation_rps,
                cpu_rounds_us: cpu[i].clone(),
                envoy_cpu_us_per_request,
                errors: errors[i],
                rps_ratio: saturation_rps / base_rps,
                cpu_ratio: envoy_cpu_us_per_request / base_cpu,
            }
        })
        .collect();
    Ok(LimitsReport {
        rounds: settings.rounds,
        saturation_secs: settings.saturation_secs,
        connections: conns,
        cases: results,
    })
}

impl LimitsReport {
    /// The Markdown table and how to read it.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{} rounds per case, interleaved; saturation = closed loop, {} keep-alive connections, \
             {} s per round; medians of rounds.\n\n\
             | case | what | req/s | × base | Envoy CPU µs/req | × base |\n\
             |---|---|---:|---:|---:|---:|\n",
            self.rounds, self.connections, self.saturation_secs
        );
        for c in &self.cases {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.3} | {:.2} | {:.3} |\n",
                c.id,
                c.what,
                c.saturation_rps,
                c.rps_ratio,
                c.envoy_cpu_us_per_request,
                c.cpu_ratio
            ));
        }
        out
    }
}
