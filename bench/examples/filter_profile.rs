//! The filter's per-request cost, deterministically: wasm instructions (wasmtime fuel) and host
//! calls per request in the compiled `.wasm`, and the native cost (time, heap allocations) of
//! `gate::decide` on the same requests.
//!
//! ```text
//! cargo run --release -p podgate-bench --example filter_profile [-- path/to/podgate_filter.wasm]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use podgate_protocol::config::FilterConfig;
use podgate_protocol::gate::{self, Request, VerifiedCache};
use podgate_protocol::token::{mint, KeySet, PodClaims, SigningKey, TokenKind};
use podgate_wasm_tests::host::{filter_wasm_path, FilterVm};

/// Counts heap allocations (for the native profile).
struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ISSUER: &str = "http://127.0.0.1:8080";
const NOW: i64 = 1_800_000_000;

fn host(pod: &str) -> String {
    format!("localhost-8726-pod-{pod}.localhost")
}

fn token(key: &SigningKey, pod: &str, n: u64) -> String {
    let claims = PodClaims {
        iss: ISSUER.into(),
        sub: "u-bench".into(),
        aud: host(pod),
        pod: pod.into(),
        port: 8726,
        jti: format!("j{n}"),
        email: Some("bench@example.dev".into()),
    };
    mint(TokenKind::Capability, key, &claims, NOW, 3600).unwrap()
}

fn config(keys: &KeySet, pods: usize) -> String {
    config_signing(keys, pods, None)
}

/// [`config`], with `assertion` signing identity assertions (as the control plane configures
/// every filter by default).
fn config_signing(keys: &KeySet, pods: usize, assertion: Option<&SigningKey>) -> String {
    let mut directory = serde_json::Map::new();
    directory.insert(
        "bench".into(),
        serde_json::json!({"status": "running", "cluster": "pod_bench"}),
    );
    for i in 0..pods.saturating_sub(1) {
        directory.insert(
            format!("p{i:05}"),
            serde_json::json!({"status": "running", "cluster": "podgate_pods", "address": "10.0.0.1:80"}),
        );
    }
    let mut config = serde_json::json!({
        "issuer": ISSUER, "domain": "localhost",
        "auth_url": format!("{ISSUER}/api/proxy-auth"),
        "keys": keys, "pods": directory,
    });
    if let Some(key) = assertion {
        config["assertion"] = serde_json::json!({"key": key.to_private_jwk()});
    }
    config.to_string()
}

/// Runs `h` through `vm` and prints its row: instructions and host calls.
fn row(vm: &mut FilterVm, pods: usize, label: &str, h: &[(String, String)]) {
    let outcome = vm.request(h).unwrap();
    let stats = vm.last_stream().unwrap().clone();
    let calls: BTreeMap<_, _> = stats.host_calls.iter().collect();
    let total: u64 = stats.host_calls.values().sum();
    println!(
        "| {pods} | {label} → {} | {} | {total}: {} |",
        outcome
            .status()
            .map_or("forward".to_owned(), |s| s.to_string()),
        stats.fuel,
        calls
            .iter()
            .map(|(k, v)| format!("{}×{v}", k.trim_start_matches("proxy_")))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The headers Envoy hands the filter for a plain browser-ish GET with our cookie.
fn headers(cookie: Option<&str>) -> Vec<(String, String)> {
    let mut h = vec![
        (":authority".to_owned(), host("bench")),
        (":path".to_owned(), "/".to_owned()),
        (":method".to_owned(), "GET".to_owned()),
        (":scheme".to_owned(), "http".to_owned()),
        ("user-agent".to_owned(), "podgate-bench".to_owned()),
        ("accept".to_owned(), "*/*".to_owned()),
        ("x-forwarded-proto".to_owned(), "http".to_owned()),
        (
            "x-request-id".to_owned(),
            "9f1c2b8e-6a57-4c1e-b3f5-0d2a7c9e4b11".to_owned(),
        ),
    ];
    if let Some(c) = cookie {
        h.push(("cookie".to_owned(), c.to_owned()));
    }
    h
}

fn main() {
    let wasm = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("PODGATE_FILTER_WASM").map(PathBuf::from))
        .unwrap_or_else(|| filter_wasm_path().unwrap());
    let ed = SigningKey::ed25519_from_seed("cap-bench-ed", [42; 32]).unwrap();
    let mut scalar = [7u8; 32];
    scalar[0] = 1;
    let es = SigningKey::es256_from_bytes("cap-bench-es", &scalar).unwrap();
    let keys = KeySet {
        keys: vec![ed.public_jwk().unwrap(), es.public_jwk().unwrap()],
    };
    let ed_token = token(&ed, "bench", 1);
    let es_token = token(&es, "bench", 2);
    let cookie = |t: &str| format!("podgate_cap={t}");
    println!(
        "filter: {} ({} bytes)",
        wasm.display(),
        std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0)
    );
    println!(
        "token: {} bytes (EdDSA), {} bytes (ES256)\n",
        ed_token.len(),
        es_token.len()
    );

    println!("## wasm (wasmtime fuel ≈ instructions)\n");
    println!("| pods | request | fuel | host calls |\n|---:|---|---:|---|");
    for pods in [1usize, 10_000] {
        let mut vm = FilterVm::new(&wasm).unwrap();
        vm.set_time_secs(NOW as u64 + 10);
        let cfg = config(&keys, pods);
        let before = vm.fuel_used();
        assert!(vm.configure(cfg.as_bytes()).unwrap());
        println!(
            "| {pods} | on_configure ({} KiB JSON) | {} | |",
            cfg.len() / 1024,
            vm.fuel_used() - before
        );
        let cases: Vec<(&str, Vec<(String, String)>)> = vec![
            (
                "EdDSA cookie, first (verify + cache insert)",
                headers(Some(&cookie(&ed_token))),
            ),
            ("EdDSA cookie, cached", headers(Some(&cookie(&ed_token)))),
            (
                "EdDSA cookie, cached (again)",
                headers(Some(&cookie(&ed_token))),
            ),
            ("ES256 cookie, first", headers(Some(&cookie(&es_token)))),
            ("ES256 cookie, cached", headers(Some(&cookie(&es_token)))),
            ("no token (401)", headers(None)),
        ];
        // Last, the first request after a push that adds a pod and leaves the keys alone.
        let pushed = config(&keys, pods + 1);
        let cases = cases.into_iter().map(Some).chain([None]);
        for case in cases {
            let (label, h) = case.unwrap_or_else(|| {
                assert!(vm.configure(pushed.as_bytes()).unwrap());
                (
                    "EdDSA cookie, after a push adding a pod",
                    headers(Some(&cookie(&ed_token))),
                )
            });
            row(&mut vm, pods, label, &h);
        }
    }

    // Signing identity assertions: the first forward of a capability signs one, later ones
    // reuse it, and so do the first after a push adding a pod and the first after a push
    // revoking someone else's capability.
    let ast = SigningKey::ed25519_from_seed("ast-bench", [43; 32]).unwrap();
    let mut vm = FilterVm::new(&wasm).unwrap();
    vm.set_time_secs(NOW as u64 + 10);
    assert!(vm
        .configure(config_signing(&keys, 1, Some(&ast)).as_bytes())
        .unwrap());
    let h = headers(Some(&cookie(&ed_token)));
    row(
        &mut vm,
        1,
        "EdDSA cookie + assertion, first (verify + sign)",
        &h,
    );
    row(&mut vm, 1, "EdDSA cookie + assertion, cached", &h);
    assert!(vm
        .configure(config_signing(&keys, 2, Some(&ast)).as_bytes())
        .unwrap());
    row(
        &mut vm,
        1,
        "EdDSA cookie + assertion, after a push adding a pod",
        &h,
    );
    // A sign-out elsewhere: a push that revokes a capability this user does not hold.
    let mut revoking: serde_json::Value =
        serde_json::from_str(&config_signing(&keys, 2, Some(&ast))).unwrap();
    revoking["revoked_jti"] = serde_json::json!(["someone-elses-capability"]);
    assert!(vm.configure(revoking.to_string().as_bytes()).unwrap());
    row(
        &mut vm,
        1,
        "EdDSA cookie + assertion, after a push revoking another capability",
        &h,
    );

    println!("\n## native gate::decide (the same logic, x86-64)\n");
    let compiled = FilterConfig::compile_json(config(&keys, 1).as_bytes()).unwrap();
    let mut cache = VerifiedCache::new();
    let raw = |h: Vec<(String, String)>| -> Vec<(String, Vec<u8>)> {
        h.into_iter().map(|(k, v)| (k, v.into_bytes())).collect()
    };
    let hit_headers = raw(headers(Some(&cookie(&ed_token))));
    let n = 200_000u64;
    let time = |label: &str, iterations: u64, f: &mut dyn FnMut()| {
        f();
        let a0 = ALLOCATIONS.load(Ordering::Relaxed);
        let t0 = Instant::now();
        for _ in 0..iterations {
            f();
        }
        let ns = t0.elapsed().as_nanos() as f64 / iterations as f64;
        let allocs = (ALLOCATIONS.load(Ordering::Relaxed) - a0) as f64 / iterations as f64;
        println!("| {label} | {ns:.0} ns | {allocs:.1} |");
    };
    println!("| step | time per request | heap allocations |\n|---|---:|---:|");
    time(
        "Request::from_headers + decide, cached EdDSA",
        n,
        &mut || {
            let req = Request::from_headers(&hit_headers).unwrap();
            let d = gate::decide(&compiled, &mut cache, &req, NOW + 10);
            assert!(matches!(d, gate::Decision::Forward(_)));
        },
    );
    time("  of which public host parse", n, &mut || {
        std::hint::black_box(compiled.public_hosts.parse(&host("bench")).unwrap());
    });
    let pod = compiled.public_hosts.parse(&host("bench")).unwrap();
    time(
        "  of which public host render (scope check)",
        n,
        &mut || {
            std::hint::black_box(compiled.public_hosts.render(&pod));
        },
    );
    time("EdDSA verify (cache miss)", 2_000, &mut || {
        std::hint::black_box(compiled.verifier.verify(&ed_token, NOW + 10).unwrap());
    });
    time("ES256 verify (cache miss)", 500, &mut || {
        std::hint::black_box(compiled.verifier.verify(&es_token, NOW + 10).unwrap());
    });
    let big = config(&keys, 10_000);
    time("compile a 10,000-pod config (on_configure)", 5, &mut || {
        std::hint::black_box(FilterConfig::compile_json(big.as_bytes()).unwrap());
    });
}
