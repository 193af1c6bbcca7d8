#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Cost per request of the compiled podgate filter in the wasmtime test host, for EdDSA, ES256
//! and HS256 capability keys:
//!
//! - fuel (≈ wasm instructions; repeatable to about ±2% across VMs, whose hash-map seeds come
//!   from WASI randomness) and host calls for a cached hit, an uncached verification and a
//!   no-token 401;
//! - wall-clock µs per request (median over many runs) for the same three cases.
//!
//! ```text
//! CARGO_TARGET_DIR=target-host cargo run --release --example filter_cost -p podgate-wasm-tests [RUNS]
//! ```
//!
//! Wall-clock numbers are for wasmtime (Cranelift) with fuel metering on, driven by this test
//! host (which records every call); Envoy's V8 differs. Nothing asserts on them.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use podgate_wasm_tests::host::{FilterVm, Outcome};
use support::*;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

/// Time one request, asserting what it must do.
fn timed(vm: &mut FilterVm, req: &Req, forwarded: bool) -> f64 {
    let start = Instant::now();
    let out = vm.request(&req.headers).unwrap();
    let micros = start.elapsed().as_secs_f64() * 1e6;
    assert_eq!(
        matches!(out, Outcome::Continue { .. }),
        forwarded,
        "{out:?}"
    );
    micros
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    println!("podgate filter cost per request (wasmtime, fuel metering on), {runs} runs each");
    println!(
        "{:<6} | {:>10} {:>11} {:>10} | {:>6} {:>6} {:>6} | {:>9} {:>9} {:>9}",
        "alg",
        "fuel/hit",
        "fuel/miss",
        "fuel/401",
        "hc/hit",
        "hc/mis",
        "hc/401",
        "µs/hit",
        "µs/miss",
        "µs/401"
    );
    for (alg, key) in [
        ("EdDSA", ed_key(1)),
        ("ES256", es_key()),
        ("HS256", hs_key()),
    ] {
        let cfg = config(&[&key]);
        let mut vm = vm_with(&cfg);
        let token = cap(&key, "alpha", PORT);

        // Deterministic cost: fuel and host calls.
        let no_token = Req::alpha().send(&mut vm);
        let miss = Req::alpha().cookie(&token).send(&mut vm);
        let hit = Req::alpha().cookie(&token).send(&mut vm);
        miss.forwarded();
        hit.forwarded();
        let calls = |s: &Sent| s.host_calls.values().sum::<u64>();

        // Wall clock. Misses: distinct tokens (cache on, as in production), so each is one
        // signature check plus the cache insert.
        let mut fresh = vm_with(&cfg);
        let tokens: Vec<String> = (0..runs)
            .map(|n| {
                let mut c = claims("alpha", PORT);
                c.jti = format!("jti-{n}");
                cap_with(&key, &c, NOW, 600)
            })
            .collect();
        let warm = Req::alpha().cookie(&cap(&key, "alpha", PORT));
        timed(&mut fresh, &warm, true);
        let miss_us = median(
            tokens
                .iter()
                .map(|t| timed(&mut fresh, &Req::alpha().cookie(t), true))
                .collect(),
        );
        let hit_us = median(
            (0..runs.max(1000))
                .map(|_| timed(&mut fresh, &warm, true))
                .collect(),
        );
        let deny = Req::alpha();
        let deny_us = median(
            (0..runs.max(1000))
                .map(|_| timed(&mut fresh, &deny, false))
                .collect(),
        );
        println!(
            "{:<6} | {:>10} {:>11} {:>10} | {:>6} {:>6} {:>6} | {:>9.1} {:>9.1} {:>9.1}",
            alg,
            hit.fuel,
            miss.fuel,
            no_token.fuel,
            calls(&hit),
            calls(&miss),
            calls(&no_token),
            hit_us,
            miss_us,
            deny_us
        );
    }
    println!("hc = host calls per request; fuel ≈ wasm instructions; µs = median wall clock");
}
