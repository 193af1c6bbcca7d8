//! One wasmtime engine per test process and one compiled module per wasm
//! file: compilation is the slow part, instantiation is cheap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use anyhow::anyhow;
use wasmtime::{Cache, CacheConfig, Config, Engine, InstancePre, Linker, Module};

use super::artifact;
use super::imports;
use super::state::HostState;

/// The compiled module is reused while the file on disk is unchanged.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ModuleKey {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
}

fn engine() -> anyhow::Result<&'static Engine> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            // Fuel is always counted so tests can measure per-request cost.
            config.consume_fuel(true);
            // Compiled code is also cached on disk, shared by test processes.
            let mut cache = CacheConfig::new();
            cache.with_directory(artifact::target_dir().join("wasmtime-cache"));
            if let Ok(cache) = Cache::new(cache) {
                config.cache(Some(cache));
            }
            Engine::new(&config).map_err(|e| format!("creating the wasmtime engine: {e}"))
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

/// A module linked against this host, ready to instantiate.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub(crate) pre: InstancePre<HostState>,
    /// Imports this host does not implement (stubs answering Unimplemented).
    pub(crate) stubbed: Vec<String>,
}

/// The linked module for `path`, compiled at most once per process (again
/// if the file changes).
pub(crate) fn load(path: &Path) -> anyhow::Result<Loaded> {
    static MODULES: OnceLock<Mutex<HashMap<ModuleKey, Loaded>>> = OnceLock::new();
    let metadata =
        std::fs::metadata(path).map_err(|e| anyhow!("reading {}: {e}", path.display()))?;
    let key = ModuleKey {
        path: path.to_path_buf(),
        modified: metadata.modified().ok(),
        len: metadata.len(),
    };
    let modules = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
    // Compiling under the lock keeps parallel tests from compiling twice.
    let mut modules = modules
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(loaded) = modules.get(&key) {
        return Ok(loaded.clone());
    }
    let engine = engine()?;
    let module = Module::from_file(engine, path)
        .map_err(|e| anyhow!("compiling {}: {e:?}", path.display()))?;
    let mut linker = Linker::new(engine);
    let stubbed = imports::link(&mut linker, &module)
        .map_err(|e| anyhow!("linking {}: {e:?}", path.display()))?;
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| anyhow!("preparing {}: {e:?}", path.display()))?;
    let loaded = Loaded { pre, stubbed };
    modules.insert(key, loaded.clone());
    Ok(loaded)
}
