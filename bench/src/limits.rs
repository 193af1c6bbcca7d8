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

use serde::Serialize;
use serde_json::json;

use crate::envoy::{self, Envoy, Route};
use crate::load::Requests;
use crate::pin::Placement;
use crate::tokens::{self, DirectoryPod, Keys};
use crate::{interleaved, Settings};

#[derive(Debug, Clone, Serialize)]
pub struct LimitsReport {
    pub rounds: usize,
    pub saturation_secs: f64,
    pub connections: usize,
    pub cases: Vec<crate::interleaved::Case>,
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
    let named: Vec<(&'static str, &'static str)> =
        cases.iter().map(|(id, what, _)| (*id, *what)).collect();
    interleaved::probe(&envoys, &named, &requests).await?;

    let conns = settings.connections;
    let results = interleaved::measure("limits", settings, &envoys, &named, &requests).await?;
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
        let shape = (self.rounds, self.connections, self.saturation_secs);
        interleaved::markdown(shape, "", &self.cases)
    }
}
