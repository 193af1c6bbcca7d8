//! `filter_wasm`: the whole request path through the compiled filter (`podgate_filter.wasm`) in
//! the wasmtime proxy-wasm host. Input format: the same as `gate` (`podgate_fuzz::gate_case`).
//!
//! One VM per configuration (http and https) per process, configured once: instantiation is
//! slow, and a long-lived VM is what Envoy runs (the filter's token cache carries over between
//! requests). Invariants: the VM never traps, and its answer is the native decision's
//! (forward or not, the local reply's status, the `x-podgate-user` it forwards), the native
//! decision being that of `Gate::on_request`, the filter's own entry point.
//!
//! The filter comes from `PODGATE_FILTER_WASM` if set (`scripts/fuzz.sh` builds it and sets
//! it), else `podgate_wasm_tests::host::filter_wasm_path()` builds it. Needs `--features wasm`.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use podgate_fuzz::{gate_case, gate_config_json, gate_outcome, NOW};
use podgate_protocol::config::USER_HEADER;
use podgate_protocol::gate::Outcome as GateOutcome;
use podgate_wasm_tests::host::{filter_wasm_path, FilterVm, Outcome, VmOptions};

/// A fresh VM after this many requests, so the host's records (foreign calls) stay bounded.
const RECYCLE_AFTER: u32 = 20_000;
/// Fuel (about one wasm instruction each) one callback may burn before it traps: far above a
/// real request (an ES256 verification is a few million), so only a runaway loop trips it.
const FUEL_PER_CALL: u64 = 500_000_000;

struct Worker {
    vm: FilterVm,
    requests: u32,
}

thread_local! {
    static WORKERS: RefCell<[Option<Worker>; 2]> = const { RefCell::new([None, None]) };
}

fn new_vm(https: bool) -> FilterVm {
    let path = filter_wasm_path().expect("finding or building podgate_filter.wasm");
    let options = VmOptions {
        fuel_per_call: Some(FUEL_PER_CALL),
        echo_logs: false,
        ..VmOptions::default()
    };
    let mut vm = FilterVm::with_options(&path, options).expect("instantiating the filter");
    vm.set_time_secs(NOW.unsigned_abs());
    assert!(
        vm.configure(&gate_config_json(https))
            .expect("configuring the filter"),
        "the filter refused the fuzz configuration: {:?}",
        vm.logs()
    );
    vm
}

/// Both VMs, (re)built when missing or worn out.
fn ensure_workers(workers: &mut [Option<Worker>; 2]) {
    for (slot, https) in workers.iter_mut().zip([false, true]) {
        if slot.as_ref().is_none_or(|w| w.requests >= RECYCLE_AFTER) {
            *slot = Some(Worker {
                vm: new_vm(https),
                requests: 0,
            });
        }
    }
}

fuzz_target!(
    // Compiling the module (seconds, more under ASan) happens here, outside any input's
    // timeout; later instantiations reuse the compiled module and are cheap.
    init: WORKERS.with(|workers| ensure_workers(&mut workers.borrow_mut())),
    |data: &[u8]| one_request(data)
);

fn one_request(data: &[u8]) {
    let case = gate_case(data);
    // The native gate, the filter's own entry point, preflight included.
    let expected = gate_outcome(&case);
    WORKERS.with(|workers| {
        let mut workers = workers.borrow_mut();
        ensure_workers(&mut workers);
        let worker = workers[usize::from(case.https)]
            .as_mut()
            .expect("just filled");
        worker.requests += 1;
        let vm = &mut worker.vm;
        let outcome = vm.request(&case.headers).expect("the host failed");
        assert!(
            !matches!(outcome, Outcome::Trapped { .. } | Outcome::VmDead) && !vm.is_dead(),
            "the filter trapped: {outcome:?}; logs: {:?}",
            vm.logs()
        );
        match (&expected, &outcome) {
            (GateOutcome::Preflight(reply), _)
            | (GateOutcome::Answer(reply), _)
            | (GateOutcome::Page(reply), _)
            | (GateOutcome::Wake { page: reply, .. }, _) => {
                assert_eq!(
                    outcome.status(),
                    Some(reply.status),
                    "answered locally, filter {outcome:?}"
                );
            }
            (GateOutcome::Forward(forward), Outcome::Continue { .. }) => {
                assert_eq!(
                    outcome.header(USER_HEADER),
                    forward.user.as_deref(),
                    "forwarded user differs from the native decision"
                );
            }
            (GateOutcome::Deny(denial), Outcome::LocalReply { status, .. }) => {
                assert_eq!(
                    *status,
                    denial.reply().status,
                    "native {denial:?}, filter {outcome:?}"
                );
            }
            // An API token to exchange: the filter calls the control plane, which this host
            // does not answer.
            (GateOutcome::Exchange(_), _) => {}
            // A lapsed browser capability: the filter holds the request on a renew call (this
            // host does not answer it) and forwards nothing, or, when it cannot make the call,
            // answers what the request would have had without it.
            (GateOutcome::Renew(_), Outcome::Paused { .. }) => {}
            (GateOutcome::Renew(renew), Outcome::LocalReply { status, .. }) => {
                let otherwise = match &renew.otherwise {
                    GateOutcome::Deny(denial) => denial.reply().status,
                    GateOutcome::Page(reply) => reply.status,
                    other => panic!("a lapsed capability answered with {other:?}"),
                };
                assert_eq!(*status, otherwise, "native {renew:?}, filter {outcome:?}");
            }
            _ => panic!("native decision {expected:?}, filter {outcome:?}"),
        }
        vm.clear_logs();
    });
}
