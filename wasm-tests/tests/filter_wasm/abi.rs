//! What Envoy calls into: every exported callback of every stream is a VM entry, which can
//! cost Envoy more than podgate's cached decision, so the filter exports only what it needs.
use crate::support::*;
use podgate_wasm_tests::host::Outcome;
use std::collections::BTreeMap;

#[test]
fn the_filter_exports_only_the_callbacks_it_needs() {
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::from_file(&engine, wasm()).unwrap();
    let mut callbacks: Vec<&str> = module
        .exports()
        .map(|e| e.name())
        .filter(|n| n.starts_with("proxy_on_"))
        .collect();
    callbacks.sort_unstable();
    assert_eq!(
        callbacks,
        [
            "proxy_on_configure",
            "proxy_on_delete",
            "proxy_on_http_call_response",
            "proxy_on_memory_allocate",
            "proxy_on_request_headers",
            "proxy_on_response_headers",
            "proxy_on_tick",
            "proxy_on_vm_start",
        ]
    );
}

#[test]
fn a_cached_pod_request_and_its_response_stay_within_their_budget() {
    let mut vm = vm();
    let req = Req::alpha().cookie(&alpha_cap());
    req.clone().send(&mut vm).forwarded();
    let fuel_before = vm.fuel_used();
    let calls_before = vm.host_calls();
    let ctx = vm.open_stream().unwrap();
    let out = vm.request_headers(ctx, &req.headers, true).unwrap();
    assert!(matches!(out, Outcome::Continue { .. }), "{out:?}");
    vm.response_headers(ctx, &[(":status", "200"), ("content-length", "2")], true)
        .unwrap();
    vm.close_stream(ctx).unwrap();
    let calls: BTreeMap<String, u64> = vm
        .host_calls()
        .into_iter()
        .map(|(name, n)| (n - calls_before.get(&name).copied().unwrap_or(0), name))
        .filter(|(n, _)| *n > 0)
        .map(|(n, name)| (name, n))
        .collect();
    // Read the request headers and the clock; remove the cookie, set X-Forwarded-Host,
    // host, upstream address, user and email (no cluster header and no new route: a pod with an
    // address keeps the route Envoy picked); record the pod and the port for Envoy's local
    // replies, and who and what for the access log (three properties). Then read the response
    // headers: nothing to change. Counters wait for the tick.
    let expected: BTreeMap<String, u64> = [
        ("proxy_get_header_map_pairs", 2),
        ("proxy_get_current_time_nanoseconds", 1),
        ("proxy_remove_header_map_value", 1),
        ("proxy_replace_header_map_value", 5),
        ("proxy_set_property", 3),
    ]
    .into_iter()
    .map(|(n, c)| (n.to_owned(), c))
    .collect();
    assert_eq!(calls, expected);
    // The cached decision is a memo hit: far below the ~32,000 instructions of deciding.
    let fuel = vm.fuel_used() - fuel_before;
    eprintln!("a cached pod request and its response: {fuel} wasm instructions");
    assert!(fuel < 20_000, "{fuel} wasm instructions");
}
