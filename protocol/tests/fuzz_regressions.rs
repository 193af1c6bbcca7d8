//! Replays every committed fuzz input through the checks the `cargo fuzz` targets run: the seed
//! corpora (`fuzz/corpus/<target>/`) and every minimized crasher (`fuzz/regressions/<target>/`).
//! Plain `cargo test` on stable, no libFuzzer: the checks live in `fuzz/src/lib.rs`, included
//! here as a module, so a crash found once stays fixed.
//!
//! `filter_wasm` inputs replay through the native gate (same decoding, same invariants); the
//! wasm VM itself runs only under `cargo fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The fuzz crate's helpers for the wasm target and the seed writer are unused here.
#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

/// Files (relative to `fuzz/`) known to still fail, waiting for a fix in the protocol crate.
/// Each must still fail: once it passes, remove it from here.
const KNOWN_FAILING: &[&str] = &[];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// `(target, file)` for every file under `fuzz/<kind>/<target>/`.
fn inputs(kind: &str) -> Vec<(String, PathBuf)> {
    let Ok(targets) = std::fs::read_dir(fuzz_dir().join(kind)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for target in targets {
        let target = target.unwrap();
        if !target.file_type().unwrap().is_dir() {
            continue;
        }
        let name = target.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(target.path()).unwrap() {
            let file = file.unwrap();
            if file.file_type().unwrap().is_file() {
                out.push((name.clone(), file.path()));
            }
        }
    }
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(fuzz_dir())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Runs one input; `Err` carries the panic message.
fn replay(target: &str, path: &Path) -> Result<(), String> {
    let data = std::fs::read(path).unwrap();
    match std::panic::catch_unwind(|| harness::run(target, &data)) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("unknown fuzz target {target:?}")),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic".into())),
    }
}

fn replay_all(kind: &str) -> usize {
    let all = inputs(kind);
    let mut failures = Vec::new();
    for (target, path) in &all {
        let name = relative(path);
        let known = KNOWN_FAILING.contains(&name.as_str());
        match (replay(target, path), known) {
            (Ok(()), false) | (Err(_), true) => {}
            (Err(why), false) => failures.push(format!("{name}: {why}")),
            (Ok(()), true) => {
                failures.push(format!("{name} passes now: remove it from KNOWN_FAILING"))
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    all.len()
}

#[test]
fn every_minimized_crasher_replays_without_panic() {
    replay_all("regressions");
}

#[test]
fn every_seed_replays_without_panic() {
    let count = replay_all("corpus");
    assert!(count > 0, "no seeds under fuzz/corpus");
}

#[test]
fn every_target_has_seeds() {
    let seeded: Vec<String> = inputs("corpus").into_iter().map(|(t, _)| t).collect();
    for target in harness::TARGETS {
        assert!(
            seeded.iter().any(|t| t == target),
            "fuzz/corpus/{target}/ has no seeds"
        );
    }
    for target in &seeded {
        assert!(
            harness::TARGETS.contains(&target.as_str()),
            "fuzz/corpus/{target}/ is not a fuzz target"
        );
    }
}

/// Found by the `host` target (`fuzz/regressions/host/template-with-leading-dot-renders-an-empty-label`):
/// `HostTemplate::new` used to accept template literals that make an empty DNS label, e.g.
/// `.{pod}.{port}.{domain}` parses `.a.1.d`. Found by the `host` target; refused since.
#[test]
fn templates_with_empty_labels_are_refused() {
    use podgate_protocol::host::HostTemplate;
    for template in [
        ".{pod}.{port}.{domain}",
        "{pod}..{port}.{domain}",
        ".{pod}-x.pod-{port}.{domain}",
    ] {
        if let Ok(t) = HostTemplate::new(template, "example.dev") {
            assert!(
                !harness::renders_empty_label(&t),
                "{template} renders an empty DNS label"
            );
        }
    }
}
