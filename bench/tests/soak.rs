//! `just soak`, short: `podgate-soak` for 20 seconds on SQLite (one control plane, one Envoy,
//! fake pods) with its changes every few seconds, at a fraction of the saturation it measures
//! first. It must pass (no answer the changes do not explain), have seen each kind of expected
//! refusal, and write its JSON and Markdown.
//!
//! Needs Envoy (`./just setup`); builds the filter and `podgate` when missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cargo build ARGS` in the workspace, into this build's target directory.
fn cargo_build(args: &[&str]) -> PathBuf {
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .env("CARGO_TARGET_DIR", &target)
        .arg("build")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "cargo build {args:?} failed");
    target
}

fn filter_wasm() -> PathBuf {
    if let Some(p) = std::env::var_os("PODGATE_FILTER_WASM").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let target = cargo_build(&[
        "-p",
        "podgate-filter",
        "--target",
        "wasm32-wasip1",
        "--profile",
        "wasm-release",
    ]);
    target.join("wasm32-wasip1/wasm-release/podgate_filter.wasm")
}

/// The newest modification time of a file under `path`.
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| newest(&e.path()))
        .max()
}

/// `$PODGATE_BIN`, else `target/debug/podgate`: used as is when newer than its sources (a
/// workspace `cargo test` just built it), else built.
fn podgate() -> PathBuf {
    if let Some(p) = std::env::var_os("PODGATE_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let built = exe.ancestors().nth(2).unwrap().join("podgate");
    let sources = [
        "Cargo.lock",
        "control-plane",
        "protocol/src",
        "xds/src",
        "migrations",
    ]
    .iter()
    .filter_map(|p| newest(&workspace().join(p)))
    .max();
    match (newest(&built), sources) {
        (Some(binary), Some(sources)) if binary >= sources => built,
        _ => cargo_build(&["-p", "podgate", "--bin", "podgate"]).join("debug/podgate"),
    }
}

#[test]
fn a_short_soak_on_sqlite_passes_and_sees_every_expected_refusal() {
    let results = std::env::temp_dir().join(format!("podgate-soak-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&results);
    let out = Command::new(env!("CARGO_BIN_EXE_podgate-soak"))
        .args(["--seconds", "20", "--sqlite"])
        .args(["--saturation-secs", "2", "--load-fraction", "0.3"])
        .args([
            "--change-secs",
            "4",
            "--grace-secs",
            "3",
            "--bucket-secs",
            "10",
        ])
        .arg("--results-dir")
        .arg(&results)
        .arg("--podgate")
        .arg(podgate())
        .arg("--filter-wasm")
        .arg(filter_wasm())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the soak failed:\n{stdout}\n{stderr}");
    for refusal in [
        "pod stopped → 503",
        "API token revoked → 401",
        "signed out → 401",
    ] {
        assert!(stdout.contains(refusal), "no `{refusal}` in:\n{stdout}");
    }
    let json = std::fs::read_dir(&results)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap_or_else(|| panic!("no JSON in {}", results.display()));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["rss"].as_array().map(Vec::len), Some(2), "{report}");
    assert!(report["totals"]["buckets"]
        .as_array()
        .is_some_and(|b| b.len() >= 2));
    let _ = std::fs::remove_dir_all(&results);
}
