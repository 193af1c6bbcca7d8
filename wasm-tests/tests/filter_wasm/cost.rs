//! Fuel (about one unit per wasm instruction) and host calls per request, per key algorithm. Printed with
//! `cargo test -p podgate-wasm-tests --test filter_wasm cost -- --nocapture`; wall-clock
//! numbers come from `cargo run --release --example filter_cost -p podgate-wasm-tests`.
use std::collections::BTreeMap;

use crate::support::*;

struct Row {
    alg: &'static str,
    no_token: Sent,
    uncached: Sent,
    cached: Sent,
}

fn measure() -> Vec<Row> {
    [
        ("EdDSA", ed_key(1)),
        ("ES256", es_key()),
        ("HS256", hs_key()),
    ]
    .into_iter()
    .map(|(alg, key)| {
        let mut vm = vm_with(&config(&[&key]));
        let t = cap(&key, "alpha", PORT);
        let no_token = Req::alpha().send(&mut vm);
        let uncached = Req::alpha().cookie(&t).send(&mut vm);
        let cached = Req::alpha().cookie(&t).send(&mut vm);
        uncached.forwarded();
        cached.forwarded();
        no_token.denied(401);
        Row {
            alg,
            no_token,
            uncached,
            cached,
        }
    })
    .collect()
}

fn calls(sent: &Sent) -> u64 {
    sent.host_calls.values().sum()
}

#[test]
fn cost_per_request() {
    let rows = measure();
    println!(
        "{:<6} {:>12} {:>12} {:>12} {:>8} {:>8} {:>8}",
        "alg", "cached", "uncached", "no-token", "calls/c", "calls/u", "calls/n"
    );
    for r in &rows {
        println!(
            "{:<6} {:>12} {:>12} {:>12} {:>8} {:>8} {:>8}",
            r.alg,
            r.cached.fuel,
            r.uncached.fuel,
            r.no_token.fuel,
            calls(&r.cached),
            calls(&r.uncached),
            calls(&r.no_token)
        );
    }
    println!(
        "host calls (cached forward): {:?}",
        rows[0].cached.host_calls
    );
    println!(
        "host calls (no-token 401):   {:?}",
        rows[0].no_token.host_calls
    );
    for r in &rows {
        // One header read for the whole request, never per-header reads.
        for sent in [&r.cached, &r.uncached, &r.no_token] {
            assert_eq!(sent.host_calls.get("proxy_get_header_map_pairs"), Some(&1));
            assert_eq!(sent.host_calls.get("proxy_get_header_map_value"), None);
        }
        // A bounded number of host calls: a forward reads and edits a few headers, a denial fewer;
        // both set the access log's property once.
        assert!(calls(&r.cached) <= 13, "{:?}", r.cached.host_calls);
        assert!(calls(&r.no_token) <= 5, "{:?}", r.no_token.host_calls);
        // A cached forward costs a small multiple of the cheapest denial.
        assert!(r.cached.fuel < 5 * r.no_token.fuel, "{}", r.alg);
    }
    // The cache saves each algorithm its signature check; HMAC is cheap to check, so its gain is small.
    let ratio = |r: &Row| r.uncached.fuel / r.cached.fuel;
    assert!(ratio(&rows[0]) >= 20, "EdDSA {}", ratio(&rows[0]));
    assert!(ratio(&rows[1]) >= 50, "ES256 {}", ratio(&rows[1]));
    assert!(ratio(&rows[2]) >= 2, "HS256 {}", ratio(&rows[2]));
}

/// Fuel and host calls of the response phase alone, for a forwarded cached request.
fn response_cost(req: &Req, response: &[(&str, &str)]) -> (u64, BTreeMap<String, u64>) {
    let mut vm = vm();
    let warm = Req::alpha().token(&alpha_cap());
    warm.send(&mut vm).forwarded();
    let ctx = vm.open_stream().unwrap();
    vm.request_headers(ctx, &req.headers, true).unwrap();
    let fuel = vm.fuel_used();
    let calls = vm.host_calls();
    vm.response_headers(ctx, response, true).unwrap();
    let spent = vm.fuel_used() - fuel;
    let delta = vm
        .host_calls()
        .into_iter()
        .filter_map(|(n, c)| {
            let d = c - calls.get(&n).copied().unwrap_or(0);
            (d > 0).then_some((n, d))
        })
        .collect();
    vm.close_stream(ctx).unwrap();
    (spent, delta)
}

#[test]
fn response_cost_per_case() {
    let t = alpha_cap();
    let plain_req = Req::alpha().token(&t);
    let plain: &[(&str, &str)] = &[
        (":status", "200"),
        ("content-type", "text/html"),
        ("content-length", "1234"),
        ("date", "Mon, 23 Nov 2026 15:00:00 GMT"),
        ("server", "nginx"),
        ("cache-control", "no-cache"),
    ];
    let mut with_cookies = plain.to_vec();
    with_cookies.push(("set-cookie", "session=abc; Path=/; HttpOnly"));
    with_cookies.push(("set-cookie", "theme=dark; Max-Age=60"));
    let mut with_bad = with_cookies.clone();
    with_bad.push(("set-cookie", "toss=1; Domain=localhost"));
    let own = Req::alpha()
        .token(&t)
        .set("origin", "http://localhost-8727-pod-alpha.localhost");
    let cases = [
        ("plain", &plain_req, plain.to_vec()),
        ("2 good cookies", &plain_req, with_cookies),
        ("1 bad cookie", &plain_req, with_bad),
        ("same-pod origin", &own, plain.to_vec()),
    ];
    println!(
        "{:<16} {:>8} {:>6}  host calls",
        "response", "fuel", "calls"
    );
    let mut rows = Vec::new();
    for (name, req, response) in cases {
        let (fuel, calls) = response_cost(req, &response);
        println!(
            "{name:<16} {fuel:>8} {:>6}  {calls:?}",
            calls.values().sum::<u64>()
        );
        rows.push((fuel, calls));
    }
    // A response with nothing to change: the one header read, nothing else.
    assert_eq!(
        rows[0].1,
        BTreeMap::from([("proxy_get_header_map_pairs".to_owned(), 1)])
    );
    assert_eq!(rows[1].1.values().sum::<u64>(), 1, "{:?}", rows[1].1);
    // Dropping one: remove all, re-add the two kept (the drop is counted at the next tick).
    assert_eq!(rows[2].1.values().sum::<u64>(), 4, "{:?}", rows[2].1);
    assert_eq!(rows[2].1.get("proxy_add_header_map_value"), Some(&2));
    // A same-pod origin: ACAO, ACAC, Vary.
    assert_eq!(rows[3].1.values().sum::<u64>(), 4, "{:?}", rows[3].1);
    // Measured: a plain response costs well under a tenth of a cached request, and cookies
    // without a Domain need no host parsing.
    assert!(rows[0].0 < 5_000, "{}", rows[0].0);
    assert!(rows[1].0 < 15_000, "{}", rows[1].0);
}

/// Fuel of a cached forward (a memo hit, the whole stream to its `proxy_on_delete`) with rate
/// limits that never refuse, and with those plus open-stream limits that never refuse, against
/// the same without limits: what the per-user and per-pod buckets and counts cost on the cached
/// path. Printed with `-- --nocapture`; the section on limits in `BENCHMARKS.md` quotes it.
#[test]
fn rate_limits_cost_on_the_cached_path() {
    let key = ed_key(1);
    let t = cap(&key, "alpha", PORT);
    let cached = |config: &serde_json::Value| {
        let mut vm = vm_with(config);
        Req::alpha().cookie(&t).send(&mut vm).forwarded();
        let hit = Req::alpha().cookie(&t).send(&mut vm);
        hit.forwarded();
        hit
    };
    let plain = cached(&config(&[&key]));
    let mut limited_config = config(&[&key]);
    let never = serde_json::json!({"per_second": u32::MAX, "burst": u32::MAX});
    limited_config["rate_limits"] = serde_json::json!({"per_user": never, "per_pod": never});
    let limited = cached(&limited_config);
    let mut both_config = limited_config.clone();
    both_config["concurrency_limits"] =
        serde_json::json!({"per_user": u32::MAX, "per_pod": u32::MAX});
    let both = cached(&both_config);
    println!(
        "cached forward: {} without limits, {} with per-user and per-pod rate limits (+{}), {} with rate and open-stream limits (+{})",
        plain.fuel,
        limited.fuel,
        limited.fuel.saturating_sub(plain.fuel),
        both.fuel,
        both.fuel.saturating_sub(plain.fuel)
    );
    // No host call more: the buckets and the counts live in the VM.
    assert_eq!(calls(&limited), calls(&plain));
    assert_eq!(calls(&both), calls(&plain));
    // Hash lookups and a refill: a small share of the cached request.
    for (what, fuel) in [("rate", limited.fuel), ("rate and open streams", both.fuel)] {
        assert!(
            fuel < plain.fuel + plain.fuel / 3,
            "{what}: {fuel} against {}",
            plain.fuel
        );
    }
}
