#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Self-tests of the wasmtime proxy-wasm host against the probe filter in
//! `wasm-tests/probe-filter`. Each test asserts on something the guest did
//! (a header it set, a metric it counted, a time it read), so a host that
//! silently ignored a call would fail.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use podgate_wasm_tests::host::{
    cargo_build, target_dir, workspace_root, Action, FilterVm, LogLevel, Outcome, VmOptions,
};

/// Build the probe once per process (cargo makes it a no-op when fresh).
fn probe_wasm() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = workspace_root().join("wasm-tests/probe-filter");
        cargo_build(&dir, &["build", "--target", "wasm32-wasip1", "--release"])
            .expect("building the probe filter");
        let wasm = target_dir().join("wasm32-wasip1/release/podgate_probe_filter.wasm");
        assert!(wasm.is_file(), "{} missing after build", wasm.display());
        wasm
    })
    .clone()
}

fn configured(config: &str) -> FilterVm {
    let mut vm = FilterVm::new(&probe_wasm()).unwrap();
    assert!(vm.configure(config.as_bytes()).unwrap());
    vm
}

fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn forwarded(outcome: &Outcome) -> Vec<(String, String)> {
    match outcome {
        Outcome::Continue { headers } => headers.clone(),
        other => panic!("expected Continue, got {other:?}"),
    }
}

fn get(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":authority", "pod.example".into()),
        (":path", path.into()),
        (":method", "GET".into()),
    ]
}

fn request(vm: &mut FilterVm, path: &str) -> Outcome {
    let headers = get(path);
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vm.request(&refs).unwrap()
}

fn has_log(vm: &FilterVm, level: LogLevel, text: &str) -> bool {
    vm.logs().iter().any(|(l, m)| *l == level && m == text)
}

#[test]
fn vm_start_receives_the_vm_configuration() {
    let options = VmOptions {
        vm_configuration: b"vm-cfg".to_vec(),
        ..VmOptions::default()
    };
    let vm = FilterVm::with_options(&probe_wasm(), options).unwrap();
    assert!(
        has_log(&vm, LogLevel::Info, "vm start root=1 size=6 config=vm-cfg"),
        "{:?}",
        vm.logs()
    );
}

#[test]
fn a_vm_start_refusal_is_an_error() {
    let options = VmOptions {
        vm_configuration: b"refuse".to_vec(),
        ..VmOptions::default()
    };
    let error = FilterVm::with_options(&probe_wasm(), options).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("proxy_on_vm_start returned false"),
        "{error}"
    );
}

#[test]
fn configure_delivers_the_plugin_configuration_and_reports_rejection() {
    let mut vm = FilterVm::new(&probe_wasm()).unwrap();
    assert!(vm.configure(b"first").unwrap());
    assert!(has_log(
        &vm,
        LogLevel::Info,
        "configure size=5 config=first"
    ));
    assert!(!vm.configure(b"reject").unwrap());
    assert!(has_log(&vm, LogLevel::Warn, "rejecting configuration"));
    // A rejected update leaves the VM alive with the previous config.
    assert!(!vm.is_dead());
    let out = request(&mut vm, "/");
    assert_eq!(out.header("x-probe-config"), Some("first"));
}

#[test]
fn header_edits_are_applied_with_envoy_semantics() {
    let mut vm = configured("cfg-a");
    vm.set_property(&["plugin_name"], b"probe-plugin");
    let out = vm
        .request(&[
            (":authority", "pod.example"),
            (":path", "/"),
            (":method", "GET"),
            ("X-Replace", "old-1"),
            ("x-remove-me", "secret"),
            ("accept", "*/*"),
            ("x-replace", "old-2"),
            ("Cookie", "a=b; c=d"),
        ])
        .unwrap();
    let headers = forwarded(&out);
    let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    // Removed, replaced (every copy, moved to the end), added twice, read case-insensitively.
    assert!(!names.contains(&"x-remove-me"), "{headers:?}");
    assert_eq!(out.header_values("x-replace"), ["new"]);
    assert_eq!(out.header_values("x-added"), ["one", "two"]);
    assert_eq!(out.header("x-seen-cookie"), Some("a=b; c=d"));
    assert_eq!(out.header("x-probe-config"), Some("cfg-a"));
    assert_eq!(out.header("x-plugin-name"), Some("probe-plugin"));
    assert_eq!(out.header("x-missing-property"), Some("none"));
    assert_eq!(out.header("x-absent-ok"), Some("1"));
    // Untouched headers keep their order, pseudo-headers stay first.
    assert_eq!(
        &names[..5],
        [":authority", ":path", ":method", "accept", "cookie"]
    );
    assert_eq!(vm.unimplemented_calls(), Default::default());
}

#[test]
fn every_request_gets_a_fresh_context_on_the_same_vm() {
    let mut vm = configured("x");
    let first = request(&mut vm, "/");
    let second = request(&mut vm, "/");
    assert_eq!(first.header("x-probe-ctx"), Some("2"));
    assert_eq!(second.header("x-probe-ctx"), Some("3"));
    // Root-context state survives between requests (the filter's caches rely on it).
    assert_eq!(first.header("x-probe-seq"), Some("1"));
    assert_eq!(second.header("x-probe-seq"), Some("2"));
    // on_log ran for both streams.
    assert_eq!(vm.metric("probe_logged"), Some(2));
    assert!(has_log(&vm, LogLevel::Info, "log ctx=3"));
    let stats = vm.last_stream().unwrap();
    assert_eq!(stats.context_id, 3);
    assert_eq!(stats.request_headers_action, Some(Action::Continue));
}

#[test]
fn a_local_reply_is_captured_and_nothing_is_forwarded() {
    let mut vm = configured("x");
    let out = request(&mut vm, "/local");
    match &out {
        Outcome::LocalReply {
            status,
            headers,
            body,
            details,
        } => {
            assert_eq!(*status, 418);
            assert_eq!(body, b"teapot");
            assert_eq!(details, "");
            assert!(headers.contains(&("x-probe".to_string(), "local".to_string())));
            assert!(headers.contains(&("content-type".to_string(), "text/plain".to_string())));
        }
        other => panic!("expected a local reply, got {other:?}"),
    }
    assert!(out.is_blocked());
    assert_eq!(out.forwarded(), None);
    let stats = vm.last_stream().unwrap();
    assert_eq!(stats.request_headers_action, Some(Action::Pause));
    assert_eq!(stats.local_replies, 1);
    assert_eq!(stats.host_calls.get("proxy_send_local_response"), Some(&1));
}

#[test]
fn foreign_calls_are_recorded_and_unknown_ones_are_not_found() {
    let mut vm = configured("x");
    let out = request(&mut vm, "/route");
    assert_eq!(out.header(":authority"), Some("rewritten.internal"));
    assert_eq!(out.header("x-clear-route-cache"), Some("ok"));
    // The rewritten pseudo-header is still among the pseudo-headers.
    assert_eq!(
        forwarded(&out)[..2]
            .iter()
            .filter(|(k, _)| k.starts_with(':'))
            .count(),
        2
    );
    assert_eq!(vm.foreign_calls(), ["clear_route_cache"]);

    let out = request(&mut vm, "/unknown-foreign");
    assert_eq!(out.header("x-foreign"), Some("notfound"));
    let records = vm.foreign_call_records();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].name, "no_such_function");
    assert_eq!(records[1].arguments, b"arg");
    assert_eq!(records[1].context_id, 3);
}

#[test]
fn metrics_of_every_kind_are_recorded() {
    let mut vm = configured("x");
    request(&mut vm, "/");
    request(&mut vm, "/local");
    assert_eq!(vm.metric("probe_requests"), Some(2));
    assert_eq!(vm.metric("probe_header_count"), Some(3));
    assert_eq!(vm.histograms().get("probe_path_len"), Some(&vec![1, 6]));
    assert_eq!(vm.metric("probe_ticks"), Some(0));
    assert_eq!(vm.metric("never_defined"), None);
}

#[test]
fn a_guest_panic_is_a_trap_and_the_vm_stays_dead() {
    let mut vm = configured("x");
    assert!(request(&mut vm, "/").forwarded().is_some());
    let out = request(&mut vm, "/panic");
    match &out {
        Outcome::Trapped { message, panic } => {
            assert!(message.contains("unreachable"), "{message}");
            let panic = panic.as_deref().unwrap_or_default();
            assert!(panic.contains("probe request panic"), "{panic}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(out.is_blocked());
    assert!(vm.is_dead());
    assert!(vm.failure().unwrap().contains("probe request panic"));
    // Fails closed from now on, as Envoy does with a dead VM.
    assert_eq!(request(&mut vm, "/"), Outcome::VmDead);
    assert!(vm.configure(b"x").is_err());
    assert!(vm.tick().is_err());
    assert!(vm.open_stream().is_err());
}

#[test]
fn a_panic_in_configure_is_an_error() {
    let mut vm = FilterVm::new(&probe_wasm()).unwrap();
    let error = vm.configure(b"panic").unwrap_err();
    assert!(
        error.to_string().contains("probe configure panic"),
        "{error}"
    );
    assert!(vm.is_dead());
    assert_eq!(request(&mut vm, "/"), Outcome::VmDead);
}

#[test]
fn the_guest_sees_the_controlled_clock() {
    let mut vm = configured("x");
    vm.set_time(1_700_000_000_123_456_789);
    let out = request(&mut vm, "/time");
    assert_eq!(
        out.body_text().unwrap(),
        "proxy=1700000000123456789 wasi=1700000000123456789"
    );
    vm.advance_time(Duration::from_secs(5));
    let out = request(&mut vm, "/time");
    assert_eq!(
        out.body_text().unwrap(),
        "proxy=1700000005123456789 wasi=1700000005123456789"
    );
    vm.set_time_secs(42);
    assert_eq!(
        request(&mut vm, "/time").body_text().unwrap(),
        "proxy=42000000000 wasi=42000000000"
    );
}

#[test]
fn ticks_reach_the_root_context() {
    let mut vm = configured("x");
    assert_eq!(vm.tick_period(), Some(Duration::from_millis(1500)));
    vm.tick().unwrap();
    vm.tick().unwrap();
    assert_eq!(vm.metric("probe_ticks"), Some(2));
}

#[test]
fn shared_data_keeps_values_and_checks_cas() {
    let mut vm = configured("x");
    let first = request(&mut vm, "/shared");
    let second = request(&mut vm, "/shared");
    assert_eq!(first.header("x-shared"), Some("1"));
    assert_eq!(second.header("x-shared"), Some("2"));
    assert_eq!(second.header("x-shared-stored"), Some("ok"));
    assert_eq!(second.header("x-shared-stale"), Some("casmismatch"));
    assert_eq!(vm.shared_data("probe-key").as_deref(), Some(&b"2"[..]));
}

#[test]
fn set_header_map_pairs_replaces_the_whole_map() {
    let mut vm = configured("x");
    let out = request(&mut vm, "/replace-all");
    assert_eq!(
        forwarded(&out),
        owned(&[(":path", "/replaced"), ("x-only", "1")])
    );
}

#[test]
fn pause_and_reset_are_reported() {
    let mut vm = configured("x");
    assert!(matches!(request(&mut vm, "/pause"), Outcome::Paused { .. }));
    assert_eq!(request(&mut vm, "/reset"), Outcome::Reset);
}

#[test]
fn a_stream_can_carry_a_body_and_a_response() {
    let mut vm = configured("x");
    let ctx = vm.open_stream().unwrap();
    let headers = [
        (":authority", "pod.example"),
        (":path", "/body"),
        (":method", "POST"),
    ];
    assert!(vm
        .request_headers(ctx, &headers, false)
        .unwrap()
        .forwarded()
        .is_some());
    assert!(matches!(
        vm.request_body(ctx, b"part", false).unwrap(),
        Outcome::Paused { .. }
    ));
    let out = vm.request_body(ctx, b"hello", true).unwrap();
    assert!(out.forwarded().is_some());
    assert_eq!(vm.request_body_of(ctx).unwrap(), b"rewritten body");
    let response = vm
        .response_headers(
            ctx,
            &[(":status", "200"), ("server", "upstream"), ("x-up", "1")],
            true,
        )
        .unwrap();
    assert_eq!(
        forwarded(&response),
        owned(&[
            (":status", "200"),
            ("x-up", "1"),
            ("x-probe-response", "seen")
        ])
    );
    vm.close_stream(ctx).unwrap();
    assert_eq!(vm.last_stream().unwrap().context_id, ctx);

    let ctx = vm.open_stream().unwrap();
    vm.request_headers(ctx, &headers, false).unwrap();
    assert_eq!(
        vm.request_body(ctx, b"please deny", true).unwrap().status(),
        Some(403)
    );
    vm.close_stream(ctx).unwrap();
}

#[test]
fn exchange_runs_the_response_only_when_the_request_continues() {
    let mut vm = configured("x");
    let request_headers = [
        (":authority", "pod.example"),
        (":path", "/"),
        (":method", "GET"),
    ];
    let (request, response) = vm
        .exchange(&request_headers, &[(":status", "204")])
        .unwrap();
    assert!(request.forwarded().is_some());
    assert_eq!(response.unwrap().header("x-probe-response"), Some("seen"));

    let local = [
        (":authority", "pod.example"),
        (":path", "/local"),
        (":method", "GET"),
    ];
    let (request, response) = vm.exchange(&local, &[(":status", "204")]).unwrap();
    assert_eq!(request.status(), Some(418));
    assert_eq!(response, None);
}

#[test]
fn fuel_is_measured_deterministically_and_can_be_capped() {
    let mut a = configured("x");
    let mut b = configured("x");
    request(&mut a, "/");
    request(&mut b, "/");
    let cost = a.last_stream().unwrap().fuel;
    assert!(cost > 1_000, "a request should cost real work, got {cost}");
    assert_eq!(cost, b.last_stream().unwrap().fuel);
    assert!(a.fuel_used() > cost);

    // A budget below one request's cost traps that request.
    a.set_fuel_per_call(Some(cost / 10));
    let out = request(&mut a, "/");
    match out {
        Outcome::Trapped { message, .. } => assert!(message.contains("fuel"), "{message}"),
        other => panic!("expected an out-of-fuel trap, got {other:?}"),
    }
    assert!(a.is_dead());
}

#[test]
fn host_calls_are_counted_per_stream_and_in_total() {
    let mut vm = configured("x");
    request(&mut vm, "/");
    let stats = vm.last_stream().unwrap().clone();
    // The default path reads :path and COOKIE and x-never-sent one by one.
    assert_eq!(stats.host_calls.get("proxy_get_header_map_value"), Some(&3));
    assert_eq!(stats.host_calls.get("proxy_get_header_map_pairs"), Some(&2));
    assert_eq!(stats.host_calls.get("proxy_add_header_map_value"), Some(&2));
    assert_eq!(stats.host_calls.get("proxy_get_property"), Some(&2));
    assert!(stats.host_calls.get("proxy_log").copied().unwrap_or(0) >= 2);
    assert!(
        vm.stubbed_imports().is_empty(),
        "{:?}",
        vm.stubbed_imports()
    );
    let total = vm.host_calls();
    assert_eq!(total.get("proxy_define_metric"), Some(&5));
    assert_eq!(total.get("proxy_set_tick_period_milliseconds"), Some(&1));
    assert!(vm.unimplemented_calls().is_empty());
}

#[test]
fn raw_header_bytes_reach_the_guest() {
    // The probe reads headers as `String`; the SDK panics on invalid UTF-8.
    // A host that sanitised values would hide that failure mode.
    let mut vm = configured("x");
    let headers: [(&[u8], &[u8]); 3] = [
        (b":authority", b"pod.example"),
        (b":path", b"/"),
        (b"x-obs-text", b"caf\xe9"),
    ];
    let out = vm.request(&headers).unwrap();
    assert!(matches!(out, Outcome::Trapped { .. }), "{out:?}");
    assert!(vm.is_dead());
}

#[test]
fn a_vm_can_be_driven_from_inside_an_async_runtime() {
    // The end-to-end suite is async; WASI calls a normal filter makes
    // (clock, random) must not need a runtime of their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut vm = configured("async");
        vm.set_time_secs(7);
        assert_eq!(
            request(&mut vm, "/").header("x-probe-config"),
            Some("async")
        );
        assert_eq!(
            request(&mut vm, "/time").body_text().unwrap(),
            "proxy=7000000000 wasi=7000000000"
        );
    });
}

#[test]
fn a_tick_resets_a_stream_made_effective_and_envoy_style_destroys_it() {
    let mut vm = configured("x");
    let ctx = vm.open_stream().unwrap();
    let headers = [
        (":authority", "pod.example"),
        (":path", "/close-on-tick"),
        (":method", "GET"),
    ];
    assert!(vm
        .request_headers(ctx, &headers, true)
        .unwrap()
        .forwarded()
        .is_some());
    assert!(vm.is_open(ctx));
    assert!(!vm.was_reset(ctx));
    let logged_before = vm.metric("probe_logged").unwrap();
    let calls_before = vm.host_calls();

    // The tick made the stream effective and closed it; the host then destroyed the stream.
    assert_eq!(vm.tick().unwrap(), vec![ctx]);
    assert!(!vm.is_open(ctx));
    assert!(has_log(
        &vm,
        LogLevel::Info,
        &format!("tick closed ctx={ctx}")
    ));
    assert_eq!(
        vm.metric("probe_logged"),
        Some(logged_before + 1),
        "on_log ran"
    );
    assert!(has_log(&vm, LogLevel::Info, &format!("log ctx={ctx}")));
    let calls = vm.host_calls();
    let delta = |name: &str| {
        calls.get(name).copied().unwrap_or(0) - calls_before.get(name).copied().unwrap_or(0)
    };
    assert_eq!(delta("proxy_set_effective_context"), 1);
    assert_eq!(delta("proxy_close_stream"), 1);
    assert_eq!(vm.last_stream().unwrap().context_id, ctx);
    // Nothing left to close on the next tick.
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    assert!(vm.close_stream(ctx).is_err(), "already destroyed");
}

#[test]
fn a_tick_cannot_make_a_vanished_context_effective() {
    let mut vm = configured("x");
    let out = request(&mut vm, "/close-on-tick-gone");
    assert!(out.forwarded().is_some());
    let ctx = vm.last_stream().unwrap().context_id;
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    let gone = ctx + 1000;
    assert!(
        vm.logs().iter().any(|(level, m)| *level == LogLevel::Warn
            && m == &format!("tick cannot reach ctx={gone}: BadArgument")),
        "{:?}",
        vm.logs()
    );
    // Closing the stream of a finished request later is not possible either.
    assert!(!vm.is_dead());
}

#[test]
fn response_bodies_reach_the_guest_and_can_be_edited_or_reset() {
    let mut vm = configured("x");
    let ctx = vm.open_stream().unwrap();
    let headers = [
        (":authority", "pod.example"),
        (":path", "/body"),
        (":method", "GET"),
    ];
    vm.request_headers(ctx, &headers, true).unwrap();
    let response = vm
        .response_headers(ctx, &[(":status", "101"), ("upgrade", "websocket")], false)
        .unwrap();
    assert_eq!(response.header("x-probe-response"), Some("seen"));
    let out = vm.response_body(ctx, b"frame-1", false).unwrap();
    assert_eq!(out.header(":status"), Some("101"), "{out:?}");
    assert_eq!(vm.response_body_of(ctx).unwrap(), b"probe:frame-1");
    assert_eq!(
        vm.response_body(ctx, b"please reset", false).unwrap(),
        Outcome::Reset
    );
    assert!(vm.was_reset(ctx));
    vm.close_stream(ctx).unwrap();
    assert!(!vm.is_open(ctx));
}

#[test]
fn close_stream_on_the_root_context_is_a_harmless_ok() {
    // Envoy answers Ok and does nothing when the effective context has no HTTP stream.
    let mut vm = configured("close-root");
    let ctx = vm.open_stream().unwrap();
    assert_eq!(vm.tick().unwrap(), Vec::<u32>::new());
    assert!(
        has_log(&vm, LogLevel::Info, "root close Ok(())"),
        "{:?}",
        vm.logs()
    );
    assert!(vm.is_open(ctx));
    assert!(!vm.was_reset(ctx));
    vm.close_stream(ctx).unwrap();
}
