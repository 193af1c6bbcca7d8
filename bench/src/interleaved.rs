//! The measurement the `--renewal` and `--limits` modes share: Envoys that differ in one setting,
//! the same requests, rounds interleaved so that the machine's drift falls on every case alike,
//! and each case against the first (the baseline).

use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use crate::compare::median;
use crate::envoy::Envoy;
use crate::load::{self, Requests};
use crate::Settings;

/// One case's rounds, medians and ratios against the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
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

/// Checks that every Envoy answers `requests` with 200.
pub async fn probe(
    envoys: &[Envoy],
    cases: &[(&'static str, &'static str)],
    requests: &Requests,
) -> anyhow::Result<()> {
    for (e, (id, _)) in envoys.iter().zip(cases) {
        let status = load::probe(e.listener, requests).await?;
        if status != 200 {
            bail!("{id}: expected 200 before measuring, got {status}");
        }
    }
    Ok(())
}

/// Warms every Envoy, then runs `settings.rounds` rounds, each Envoy in turn at saturation
/// (closed loop), and reads the Envoy's CPU time around each; `cases[i]` names `envoys[i]`, and
/// the first is the baseline. `label` starts each progress line.
pub async fn measure(
    label: &str,
    settings: &Settings,
    envoys: &[Envoy],
    cases: &[(&'static str, &'static str)],
    requests: &Requests,
) -> anyhow::Result<Vec<Case>> {
    let conns = settings.connections;
    let warm = Duration::from_secs_f64(settings.warmup_secs);
    for e in envoys {
        load::closed_loop(e.listener, conns, warm, requests).await?;
    }
    let sat = Duration::from_secs_f64(settings.saturation_secs);
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut errors = vec![0u64; cases.len()];
    for round in 0..settings.rounds {
        for (i, e) in envoys.iter().enumerate() {
            let before = e.cpu_time();
            let stats = load::closed_loop(e.listener, conns, sat, requests).await?;
            let cpu_us = if stats.ok > 0 {
                (e.cpu_time() - before).as_secs_f64() * 1e6 / stats.ok as f64
            } else {
                f64::NAN
            };
            eprintln!(
                "{label} round {round} {:<16} {:>9.0} req/s  Envoy CPU {:>6.1} µs/req  errors {}",
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
    Ok(cases
        .iter()
        .enumerate()
        .map(|(i, (id, what))| {
            let saturation_rps = median(&rps[i]);
            let envoy_cpu_us_per_request = median(&cpu[i]);
            Case {
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
        .collect())
}

/// The Markdown table of `cases`, after the run's shape and `note` (empty for none).
pub fn markdown(settings: (usize, usize, f64), note: &str, cases: &[Case]) -> String {
    let (rounds, connections, saturation_secs) = settings;
    let mut out = format!(
        "{rounds} rounds per case, interleaved; saturation = closed loop, {connections} \
         keep-alive connections, {saturation_secs} s per round; medians of rounds.{note}\n\n\
         | case | what | req/s | × base | Envoy CPU µs/req | × base |\n\
         |---|---|---:|---:|---:|---:|\n"
    );
    for c in cases {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.3} | {:.2} | {:.3} |\n",
            c.id, c.what, c.saturation_rps, c.rps_ratio, c.envoy_cpu_us_per_request, c.cpu_ratio
        ));
    }
    out
}
