//! Part 1: every configuration side by side, same upstream, same token, same load.
//!
//! All Envoys run at once (each pinned to the same CPU, idle unless measured) so that rounds can
//! be interleaved: round r measures every case once, and a burst of noise on this shared machine
//! hits all cases rather than one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::envoy::{self, Envoy, Route};
use crate::load::{self, Requests, RunStats};
use crate::pin::Placement;
use crate::tokens::{self, Alg, DirectoryPod, Keys};
use crate::Settings;

/// Which proxy (if any) a case goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Proxy {
    /// A: the upstream directly.
    Direct,
    /// B: Envoy routing, no auth.
    Envoy,
    /// C: Envoy's jwt_authn, token cache on.
    JwtAuthnCache,
    /// C': jwt_authn without its cache.
    JwtAuthnNoCache,
    /// D: the podgate filter, verified-token cache on.
    Podgate,
    /// D-limit: the same with per-user and per-pod rate limits so high they never refuse: what
    /// the token buckets cost on the cached path.
    PodgateLimited,
    /// D-assert: the podgate filter signing the identity assertion (`x-podgate-assertion`),
    /// verified-token cache on: against D, what the assertion costs a cached request.
    PodgateAssertion,
    /// D-prev: another build of the filter (`--prev-wasm`), configured as D.
    PodgatePrev,
    /// W: Envoy with a Wasm filter that does nothing (`bench/noop-filter`) but exports the
    /// callbacks podgate's does: what entering the VM costs before any work.
    WasmNoop,
    /// W-calls: the same filter making `WASM_CALLS` host calls per request (header replaces):
    /// what a host call costs.
    WasmCalls,
    /// N: Envoy with a dynamic module (a native `.so`, `bench/native-filter`) that does
    /// nothing: what entering a native filter costs.
    NativeNoop,
    /// D-native: podgate's `Gate` in that module, configured as D: what podgate would cost
    /// Envoy without a VM.
    PodgateNative,
}

/// Host calls per request in case W-calls.
pub const WASM_CALLS: u32 = 10;

/// What the token does across requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TokenUse {
    /// The same token on every request.
    Same,
    /// A different token on every request (pre-minted, cycled): every check is a real signature
    /// verification.
    Fresh,
}

pub struct Case {
    pub id: String,
    pub proxy: Proxy,
    pub alg: Alg,
    pub tokens: TokenUse,
    requests: Requests,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyRound {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub ok: u64,
    pub errors: u64,
    /// How late the generator sent when a connection was free (its own jitter), p99.
    pub send_lag_p99_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub id: String,
    pub proxy: Proxy,
    pub alg: Alg,
    pub tokens: TokenUse,
    /// Requests per second at saturation, each round.
    pub saturation_rounds: Vec<f64>,
    /// Median of the rounds.
    pub saturation_rps: f64,
    pub saturation_errors: u64,
    /// Envoy CPU time per request during the saturation rounds (all threads), µs, median of
    /// rounds. Unlike req/s this barely moves when other work shares the machine.
    pub envoy_cpu_us_per_request: Option<f64>,
    /// p50 latency under saturation (closed loop), median of rounds, µs.
    pub saturation_p50_us: f64,
    /// The fixed rate the latency rounds ran at.
    pub latency_rate: f64,
    /// False when this case cannot sustain the common rate and was measured at half of its own
    /// saturation instead.
    pub latency_at_common_rate: bool,
    pub latency_rounds: Vec<LatencyRound>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Envoy's resident memory after the case's runs, bytes (`None` for the direct case).
    pub envoy_rss_bytes: Option<u64>,
    pub envoy_peak_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub common_rate: f64,
    pub fresh_tokens_per_alg: u64,
    pub cases: Vec<CaseResult>,
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

struct Envoys {
    plain: Envoy,
    jwt_cache: Envoy,
    jwt_nocache: Envoy,
    podgate: Envoy,
    podgate_limited: Envoy,
    podgate_assertion: Envoy,
    podgate_prev: Option<Envoy>,
    wasm_noop: Envoy,
    wasm_calls: Envoy,
    native_noop: Option<Envoy>,
    podgate_native: Option<Envoy>,
}

impl Envoys {
    fn get(&self, proxy: Proxy) -> Option<&Envoy> {
        match proxy {
            Proxy::Direct => None,
            Proxy::Envoy => Some(&self.plain),
            Proxy::JwtAuthnCache => Some(&self.jwt_cache),
            Proxy::JwtAuthnNoCache => Some(&self.jwt_nocache),
            Proxy::Podgate => Some(&self.podgate),
            Proxy::PodgateLimited => Some(&self.podgate_limited),
            Proxy::PodgateAssertion => Some(&self.podgate_assertion),
            Proxy::PodgatePrev => self.podgate_prev.as_ref(),
            Proxy::WasmNoop => Some(&self.wasm_noop),
            Proxy::WasmCalls => Some(&self.wasm_calls),
            Proxy::NativeNoop => self.native_noop.as_ref(),
            Proxy::PodgateNative => self.podgate_native.as_ref(),
        }
    }
}

/// Every case's Envoy, with the binary and filters `settings` name.
async fn start_envoys(
    settings: &Settings,
    placement: &Placement,
    upstream: SocketAddr,
    keys: &Keys,
) -> anyhow::Result<Envoys> {
    let envoy_bin = settings.envoy.as_path();
    let wasm = settings.filter_wasm.as_path();
    let prev_wasm = settings.prev_wasm.as_deref();
    let noop_wasm = settings.noop_wasm.as_path();
    let native_module = settings.native_module.as_deref();
    let cluster = "pod_bench";
    let clusters = || vec![envoy::static_cluster(cluster, upstream)];
    let jwks = serde_json::to_string(&keys.jwks()?)?;
    let aud = tokens::pod_host(tokens::BENCH_POD);

    let start = |label: &'static str,
                 filters: Vec<serde_json::Value>,
                 route: Route<'static>,
                 base: u32| {
        let port = envoy::free_port();
        let mut clusters = clusters();
        if matches!(route, Route::Pods) {
            // The pods' route goes to a static cluster here, like B's, so that D − W is the
            // filter's work alone: in production it is the original-destination cluster, which
            // connects to the address the filter set.
            clusters.push(envoy::static_cluster(envoy::PODS_CLUSTER, upstream));
        }
        async move {
            let port = port?;
            let bootstrap =
                envoy::static_bootstrap(label, envoy::listener(port, &route, filters), clusters);
            let mut e = Envoy::start(envoy_bin, placement, label, &bootstrap, port, base).await?;
            e.wait_ready().await?;
            anyhow::Ok(e)
        }
    };
    let filter_config = tokens::filter_config_json(
        &keys.jwks()?,
        // As the control plane writes a pod: the pods' original-destination cluster and the
        // pod's address.
        &[DirectoryPod {
            slug: tokens::BENCH_POD.to_owned(),
            cluster: envoy::PODS_CLUSTER.to_owned(),
            address: Some(upstream),
        }],
        None,
    )?;
    tokens::check_filter_config(&filter_config)?;
    let limited_config = {
        let mut config: serde_json::Value = serde_json::from_str(&filter_config)?;
        let never = serde_json::json!({"per_second": u32::MAX, "burst": u32::MAX});
        config["rate_limits"] = serde_json::json!({"per_user": never, "per_pod": never});
        config.to_string()
    };
    tokens::check_filter_config(&limited_config)?;
    let assertion_config = tokens::with_assertion(&filter_config)?;
    tokens::check_filter_config(&assertion_config)?;
    let podgate_prev = match prev_wasm {
        Some(prev) => Some(
            start(
                "podgate-prev",
                vec![envoy::podgate_filter(prev, &filter_config)],
                Route::Pods,
                9,
            )
            .await?,
        ),
        None => None,
    };
    let (native_noop, podgate_native) = match native_module {
        Some(module) => (
            Some(
                start(
                    "native-noop",
                    vec![envoy::native_filter(module, "noop")],
                    Route::Cluster(cluster),
                    10,
                )
                .await?,
            ),
            Some(
                start(
                    "podgate-native",
                    vec![envoy::native_filter(module, &filter_config)],
                    Route::Pods,
                    11,
                )
                .await?,
            ),
        ),
        None => (None, None),
    };
    Ok(Envoys {
        podgate_prev,
        native_noop,
        podgate_native,
        plain: start("plain", vec![], Route::Cluster(cluster), 1).await?,
        jwt_cache: start(
            "jwt-cache",
            vec![envoy::jwt_authn_filter(tokens::ISSUER, &aud, &jwks, true)],
            Route::Cluster(cluster),
            2,
        )
        .await?,
        jwt_nocache: start(
            "jwt-nocache",
            vec![envoy::jwt_authn_filter(tokens::ISSUER, &aud, &jwks, false)],
            Route::Cluster(cluster),
            3,
        )
        .await?,
        podgate: start(
            "podgate",
            vec![envoy::podgate_filter(wasm, &filter_config)],
            Route::Pods,
            4,
        )
        .await?,
        podgate_limited: start(
            "podgate-limited",
            vec![envoy::podgate_filter(wasm, &limited_config)],
            Route::Pods,
            7,
        )
        .await?,
        podgate_assertion: start(
            "podgate-assertion",
            vec![envoy::podgate_filter(wasm, &assertion_config)],
            Route::Pods,
            8,
        )
        .await?,
        wasm_noop: start(
            "wasm-noop",
            vec![envoy::noop_wasm_filter(noop_wasm, None)],
            Route::Cluster(cluster),
            5,
        )
        .await?,
        wasm_calls: start(
            "wasm-calls",
            vec![envoy::noop_wasm_filter(
                noop_wasm,
                Some(&WASM_CALLS.to_string()),
            )],
            Route::Cluster(cluster),
            6,
        )
        .await?,
    })
}

fn build_cases(
    keys: &Keys,
    fresh: u64,
    only: &[String],
    prev: bool,
    native: bool,
) -> anyhow::Result<Vec<Case>> {
    let host = tokens::pod_host(tokens::BENCH_POD);
    let mut cases = Vec::new();
    let same = |alg: Alg| -> anyhow::Result<Requests> {
        Ok(Requests::fixed(
            &host,
            &keys.capability(alg, tokens::BENCH_POD, 1)?,
        ))
    };
    let ed_same = same(Alg::EdDSA)?;
    cases.push(Case {
        id: "A".into(),
        proxy: Proxy::Direct,
        alg: Alg::EdDSA,
        tokens: TokenUse::Same,
        requests: ed_same.clone(),
    });
    cases.push(Case {
        id: "B".into(),
        proxy: Proxy::Envoy,
        alg: Alg::EdDSA,
        tokens: TokenUse::Same,
        requests: ed_same.clone(),
    });
    cases.push(Case {
        id: "W".into(),
        proxy: Proxy::WasmNoop,
        alg: Alg::EdDSA,
        tokens: TokenUse::Same,
        requests: ed_same.clone(),
    });
    cases.push(Case {
        id: "W-calls".into(),
        proxy: Proxy::WasmCalls,
        alg: Alg::EdDSA,
        tokens: TokenUse::Same,
        requests: ed_same.clone(),
    });
    if native {
        cases.push(Case {
            id: "N".into(),
            proxy: Proxy::NativeNoop,
            alg: Alg::EdDSA,
            tokens: TokenUse::Same,
            requests: ed_same,
        });
    }
    let wanted = |id: &str| only.is_empty() || only.iter().any(|o| o == id);
    for alg in Alg::ALL {
        let same_req = same(alg)?;
        for (prefix, proxy, tokens) in [
            ("C-cache", Proxy::JwtAuthnCache, TokenUse::Same),
            ("C-nocache", Proxy::JwtAuthnNoCache, TokenUse::Same),
            ("D-cache", Proxy::Podgate, TokenUse::Same),
            ("D-limit", Proxy::PodgateLimited, TokenUse::Same),
            ("D-fresh", Proxy::Podgate, TokenUse::Fresh),
        ] {
            let id = format!("{prefix}-{}", alg.name());
            // The buckets cost the same whatever signed the token: one algorithm is enough.
            if prefix == "D-limit" && alg.name() != Alg::EdDSA.name() {
                continue;
            }
            if !wanted(&id) {
                continue;
            }
            let requests = match tokens {
                TokenUse::Same => same_req.clone(),
                TokenUse::Fresh => {
                    eprintln!("minting {fresh} {} capabilities for {id}", alg.name());
                    Requests::rotating(&host, Arc::new(keys.many(alg, fresh)?))
                }
            };
            cases.push(Case {
                id,
                proxy,
                alg,
                tokens,
                requests,
            });
        }
    }
    if prev {
        cases.push(Case {
            id: "D-prev-cache-EdDSA".into(),
            proxy: Proxy::PodgatePrev,
            alg: Alg::EdDSA,
            tokens: TokenUse::Same,
            requests: same(Alg::EdDSA)?,
        });
        // The other build with a new token on every request, beside each D-fresh case measured:
        // a before/after of the signature check.
        for alg in Alg::ALL {
            let fresh_id = format!("D-fresh-{}", alg.name());
            if let Some(measured) = cases.iter().find(|c| c.id == fresh_id) {
                let requests = measured.requests.clone();
                cases.push(Case {
                    id: format!("D-prev-fresh-{}", alg.name()),
                    proxy: Proxy::PodgatePrev,
                    alg,
                    tokens: TokenUse::Fresh,
                    requests,
                });
            }
        }
    }
    // podgate's decision code natively, cached requests (EdDSA): against D-cache-EdDSA and N.
    let id = "D-native-cache-EdDSA";
    if native && wanted(id) {
        cases.push(Case {
            id: id.into(),
            proxy: Proxy::PodgateNative,
            alg: Alg::EdDSA,
            tokens: TokenUse::Same,
            requests: same(Alg::EdDSA)?,
        });
    }
    // The identity assertion on, cached requests (EdDSA capabilities): against D-cache-EdDSA.
    let id = "D-cache-assert-EdDSA";
    if wanted(id) {
        cases.push(Case {
            id: id.into(),
            proxy: Proxy::PodgateAssertion,
            alg: Alg::EdDSA,
            tokens: TokenUse::Same,
            requests: same(Alg::EdDSA)?,
        });
    }
    Ok(cases)
}

fn target(case: &Case, envoys: &Envoys, upstream: SocketAddr) -> SocketAddr {
    envoys.get(case.proxy).map_or(upstream, |e| e.listener)
}

/// Checks every path answers as expected before measuring anything.
async fn sanity(
    cases: &[Case],
    envoys: &Envoys,
    upstream: SocketAddr,
    deny_check: bool,
) -> anyhow::Result<()> {
    for case in cases {
        let status = load::probe(target(case, envoys, upstream), &case.requests).await?;
        if status != 200 {
            bail!("{}: expected 200 before measuring, got {status}", case.id);
        }
    }
    if !deny_check {
        return Ok(());
    }
    // The auth filters really run: no token, no entry.
    let host = tokens::pod_host(tokens::BENCH_POD);
    for proxy in [
        Proxy::JwtAuthnCache,
        Proxy::JwtAuthnNoCache,
        Proxy::Podgate,
        Proxy::PodgateAssertion,
        Proxy::PodgatePrev,
        Proxy::PodgateNative,
    ] {
        let Some(e) = envoys.get(proxy) else { continue };
        let status = load::probe(e.listener, &Requests::fixed(&host, "not-a-token")).await?;
        if status != 401 {
            bail!("{proxy:?} let a request with a bad token through ({status})");
        }
    }
    Ok(())
}

pub async fn run(
    settings: &Settings,
    placement: &Placement,
    upstream: SocketAddr,
    keys: &Keys,
) -> anyhow::Result<CompareReport> {
    let envoys = start_envoys(settings, placement, upstream, keys)
        .await
        .context("starting the Envoys")?;
    let cases = build_cases(
        keys,
        settings.fresh_tokens,
        &settings.only,
        settings.prev_wasm.is_some(),
        settings.native_module.is_some(),
    )?;
    sanity(&cases, &envoys, upstream, !settings.skip_deny_check).await?;

    let conns = settings.connections;
    let sat = Duration::from_secs_f64(settings.saturation_secs);
    eprintln!("warm-up: {}s per case", settings.warmup_secs);
    for case in &cases {
        let addr = target(case, &envoys, upstream);
        let warm = Duration::from_secs_f64(settings.warmup_secs);
        load::closed_loop(addr, conns, warm, &case.requests).await?;
    }

    let mut sat_rounds: Vec<Vec<RunStats>> = cases.iter().map(|_| Vec::new()).collect();
    let mut cpu_rounds: Vec<Vec<f64>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 0..settings.rounds {
        for (i, case) in cases.iter().enumerate() {
            let addr = target(case, &envoys, upstream);
            let envoy = envoys.get(case.proxy);
            let cpu_before = envoy.map(Envoy::cpu_time);
            let stats = load::closed_loop(addr, conns, sat, &case.requests).await?;
            let cpu_us = match (envoy, cpu_before) {
                (Some(e), Some(before)) if stats.ok > 0 => {
                    (e.cpu_time() - before).as_secs_f64() * 1e6 / stats.ok as f64
                }
                _ => f64::NAN,
            };
            cpu_rounds[i].push(cpu_us);
            eprintln!(
                "saturation round {round} {:<16} {:>9.0} req/s  Envoy CPU {:>6.1} µs/req  errors {}{}",
                case.id,
                stats.rps(),
                cpu_us,
                stats.errors,
                stats
                    .first_bad_status
                    .map(|s| format!(" (first status {s})"))
                    .unwrap_or_default()
            );
            sat_rounds[i].push(stats);
        }
    }
    let sat_median =
        |i: usize| median(&sat_rounds[i].iter().map(RunStats::rps).collect::<Vec<_>>());
    let b_index = cases
        .iter()
        .position(|c| c.proxy == Proxy::Envoy)
        .context("case B missing")?;
    let common_rate = (settings.rate_fraction * sat_median(b_index)).max(100.0);
    eprintln!(
        "latency rate: {common_rate:.0} req/s ({} of B's saturation)",
        settings.rate_fraction
    );

    let lat = Duration::from_secs_f64(settings.latency_secs);
    let rates: Vec<(f64, bool)> = (0..cases.len())
        .map(|i| {
            let own = sat_median(i);
            if own >= common_rate * 1.05 {
                (common_rate, true)
            } else {
                ((settings.rate_fraction * own).max(10.0), false)
            }
        })
        .collect();
    let mut lat_rounds: Vec<Vec<LatencyRound>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 0..settings.rounds {
        for (i, case) in cases.iter().enumerate() {
            let addr = target(case, &envoys, upstream);
            let (rate, _) = rates[i];
            let stats = load::open_loop(
                addr,
                settings.latency_connections,
                rate,
                lat,
                &case.requests,
                placement.loadgen_cpu,
            )
            .await?;
            let r = LatencyRound {
                rate,
                p50_us: stats.quantile_us(0.5),
                p99_us: stats.quantile_us(0.99),
                p999_us: stats.quantile_us(0.999),
                max_us: stats.latency.max() as f64 / 1000.0,
                ok: stats.ok,
                errors: stats.errors,
                send_lag_p99_us: stats.send_lag.value_at_quantile(0.99) as f64 / 1000.0,
            };
            eprintln!(
                "latency round {round} {:<16} @{:>7.0}/s p50 {:>8.1}µs p99 {:>8.1}µs p99.9 {:>8.1}µs errors {} (gen lag p99 {:.1}µs)",
                case.id, rate, r.p50_us, r.p99_us, r.p999_us, r.errors, r.send_lag_p99_us
            );
            lat_rounds[i].push(r);
        }
    }

    let mut results = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let envoy = envoys.get(case.proxy);
        let rounds = &lat_rounds[i];
        let pick = |f: fn(&LatencyRound) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
        results.push(CaseResult {
            id: case.id.clone(),
            proxy: case.proxy,
            alg: case.alg,
            tokens: case.tokens,
            saturation_rounds: sat_rounds[i].iter().map(RunStats::rps).collect(),
            saturation_rps: sat_median(i),
            saturation_errors: sat_rounds[i].iter().map(|s| s.errors).sum(),
            envoy_cpu_us_per_request: envoy.map(|_| median(&cpu_rounds[i])),
            saturation_p50_us: median(
                &sat_rounds[i]
                    .iter()
                    .map(|s| s.quantile_us(0.5))
                    .collect::<Vec<_>>(),
            ),
            latency_rate: rates[i].0,
            latency_at_common_rate: rates[i].1,
            latency_rounds: rounds.clone(),
            p50_us: pick(|r| r.p50_us),
            p99_us: pick(|r| r.p99_us),
            p999_us: pick(|r| r.p999_us),
            envoy_rss_bytes: envoy.and_then(|e| e.rss_bytes().ok()),
            envoy_peak_rss_bytes: envoy.and_then(|e| e.peak_rss_bytes().ok()),
        });
    }
    Ok(CompareReport {
        common_rate,
        fresh_tokens_per_alg: settings.fresh_tokens,
        cases: results,
    })
}
