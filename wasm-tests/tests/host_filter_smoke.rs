#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The host against the real podgate filter: it loads, every import it uses
//! is one the host implements, and it fails closed before a configuration
//! arrives and on one it cannot parse. The filter's own behaviour is tested
//! elsewhere; these only check that the host can drive it.

use podgate_wasm_tests::host::{filter_wasm_path, FilterVm, Outcome};

fn filter_vm() -> FilterVm {
    let path = filter_wasm_path().expect("building or finding the podgate filter wasm");
    FilterVm::new(&path).expect("instantiating the podgate filter")
}

const POD_REQUEST: &[(&str, &str)] = &[
    (":authority", "localhost-8726-pod-myslug.example.dev"),
    (":path", "/"),
    (":method", "GET"),
    (":scheme", "https"),
    ("accept", "application/json"),
];

#[test]
fn the_filter_loads_and_needs_no_import_the_host_fakes() {
    let vm = filter_vm();
    assert!(
        vm.stubbed_imports().is_empty(),
        "{:?}",
        vm.stubbed_imports()
    );
    assert!(!vm.is_dead());
}

#[test]
fn before_any_configuration_requests_are_answered_locally() {
    let mut vm = filter_vm();
    let out = vm.request(POD_REQUEST).unwrap();
    assert!(matches!(out, Outcome::LocalReply { .. }), "{out:?}");
    assert!(out.status().unwrap() >= 400, "{out:?}");
    assert!(
        vm.unimplemented_calls().is_empty(),
        "{:?}",
        vm.unimplemented_calls()
    );
}

#[test]
fn an_unparsable_configuration_is_refused_and_the_vm_keeps_failing_closed() {
    let mut vm = filter_vm();
    assert!(!vm.configure(b"{ this is not json").unwrap());
    assert!(!vm.configure(b"").unwrap());
    assert!(!vm.is_dead());
    let out = vm.request(POD_REQUEST).unwrap();
    assert!(out.is_blocked(), "{out:?}");
    assert!(out.status().is_some(), "{out:?}");
}
