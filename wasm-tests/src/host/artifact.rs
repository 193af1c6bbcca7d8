//! Where the compiled filter lives, and building it when it is missing or
//! older than its sources.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::{anyhow, bail};

/// The workspace root (`wasm-tests/..`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.join(".."))
}

/// The cargo target directory: `CARGO_TARGET_DIR` at run time if set
/// (relative paths are taken from the workspace root), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The podgate filter `.wasm` to test.
///
/// `PODGATE_FILTER_WASM` wins if set (used as is, never built). Otherwise
/// `<target>/wasm32-wasip1/wasm-release/podgate_filter.wasm`, built with
/// `cargo build -p podgate-filter --target wasm32-wasip1 --profile
/// wasm-release` when missing or older than the filter or protocol sources.
/// At most one build runs per process.
pub fn filter_wasm_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PODGATE_FILTER_WASM") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("PODGATE_FILTER_WASM={} is not a file", path.display());
        }
        return Ok(path);
    }
    let root = workspace_root();
    let path = target_dir().join("wasm32-wasip1/wasm-release/podgate_filter.wasm");
    let sources = [
        root.join("Cargo.toml"),
        root.join("filter"),
        root.join("protocol/src"),
        root.join("protocol/Cargo.toml"),
    ];
    ensure_built(&path, &sources, || {
        cargo_build(
            &root,
            &[
                "build",
                "-p",
                "podgate-filter",
                "--target",
                "wasm32-wasip1",
                "--profile",
                "wasm-release",
            ],
        )
    })?;
    Ok(path)
}

/// Run `build` (under a process-wide lock) unless `artifact` exists and is
/// newer than every file under `sources`.
pub fn ensure_built(
    artifact: &Path,
    sources: &[PathBuf],
    build: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    static BUILD_LOCK: Mutex<()> = Mutex::new(());
    let _guard = BUILD_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if is_fresh(artifact, sources) {
        return Ok(());
    }
    build()?;
    if !artifact.is_file() {
        bail!(
            "the build finished but {} does not exist",
            artifact.display()
        );
    }
    Ok(())
}

/// Run cargo (the one running the tests, if any) in `dir` with the same
/// target directory the host looks in. Fails with cargo's output.
pub fn cargo_build(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .map_err(|e| anyhow!("running cargo {}: {e}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "cargo {} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn is_fresh(artifact: &Path, sources: &[PathBuf]) -> bool {
    let Some(built) = modified(artifact) else {
        return false;
    };
    sources
        .iter()
        .all(|source| newest(source).is_none_or(|newest| newest <= built))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Newest modification time of a file or of any file below a directory.
fn newest(path: &Path) -> Option<SystemTime> {
    let metadata = std::fs::metadata(path).ok()?;
    if !metadata.is_dir() {
        return metadata.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name() != "target")
        .filter_map(|entry| newest(&entry.path()))
        .max()
}
