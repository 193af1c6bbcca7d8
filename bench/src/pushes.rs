//! `--pushes-per-sec`: the filter's configuration pushed while the realistic rounds run, as the
//! control plane pushes it to every Envoy whenever a pod is created, started, stopped or
//! deleted, a token revoked or a session ended.
//!
//! The podgate cases get their filter over ECDS, as from the control plane, but from a file
//! Envoy watches ([`envoy::podgate_filter_discovered`]): a push is a new file moved into place.
//! Every configuration carries an identity assertion key (the control plane's default). What a
//! push changes is `--push-kind`'s ([`PushKind`]): one pod no traffic goes to, added and removed
//! in turn (a pod's lifecycle), or one more revoked capability that no traffic uses (a sign-out
//! or a revoked token elsewhere); keys, rates and the assertion key stay as they were.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use podgate_protocol::token::KeySet;
use serde::Serialize;
use serde_json::Value;

use crate::envoy;
use crate::tokens::{self, Alg, DirectoryPod, Keys};
use crate::Settings;

/// What each push changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PushKind {
    /// Adds [`PUSHED_POD`], and the next push removes it.
    Pods,
    /// Revokes one more capability: push `n` lists the ids of `Keys::capability(EdDSA, _,
    /// REVOKED_FROM + 1..=REVOKED_FROM + n)`.
    Revocations,
}

/// The first `n` whose capability ([`Keys::capability`]) a revocation push revokes.
pub const REVOKED_FROM: u64 = 1_000_000_000;

/// The pushes of a realistic run, for its report.
#[derive(Debug, Clone, Serialize)]
pub struct Made {
    #[serde(rename = "pushes_per_sec")]
    pub per_sec: f64,
    #[serde(rename = "push_kind")]
    pub kind: PushKind,
    /// Pushes written to each pushed Envoy from the warm-up to the end of the rounds.
    #[serde(rename = "pushes_written")]
    pub written: u64,
}

impl Made {
    pub fn new(settings: &Settings, written: u64) -> Self {
        Made {
            per_sec: settings.pushes_per_sec,
            kind: settings.push_kind,
            written,
        }
    }

    /// The report's paragraph on pushes (none without): the rate, what each changed, the pushes
    /// written to each pushed Envoy, and the configurations each case's Envoy `applied` during
    /// the measured rounds.
    pub fn summary(&self, applied: &[(&str, u64)]) -> String {
        if self.per_sec <= 0.0 {
            return String::new();
        }
        let applied: Vec<String> = applied.iter().map(|(id, n)| format!("{id} {n}")).collect();
        let each = match self.kind {
            PushKind::Pods => "adding or removing a pod",
            PushKind::Revocations => "revoking one more capability that no traffic uses",
        };
        format!(
            "\nPushes: {} a second, each {each}; {} written to each pushed Envoy from the \
             warm-up on. Configurations applied over ECDS during the measured rounds: {}.\n",
            self.per_sec,
            self.written,
            applied.join(", ")
        )
    }
}

/// Envoy's count of the configurations its ECDS subscription for the podgate filter applied.
pub const RELOADS: &str = "extension_config_discovery.http_filter.podgate.config_reload";

/// [`RELOADS`] in `envoy` when its podgate filter is `discovered` over ECDS; `None` for one
/// configured inline.
pub async fn applied(envoy: &envoy::Envoy, discovered: bool) -> anyhow::Result<Option<u64>> {
    if !discovered {
        return Ok(None);
    }
    Ok(Some(envoy.counter(RELOADS).await?))
}

/// The pod a push adds, and the next one removes.
pub const PUSHED_POD: &str = "pushed-pod";

/// The configurations pushed, and the files of the Envoys that get them.
pub struct Pushes {
    dir: PathBuf,
    configs: Arc<Configs>,
    /// The file of each pushed Envoy, and the `.wasm` it names.
    pushed: Vec<(PathBuf, PathBuf)>,
}

impl Pushes {
    /// The configurations for `pods`, with `keys` and `token_cache_entries` as the unpushed
    /// cases have them, plus an assertion key, changed by each push as `kind` says; their files
    /// under a directory of their own.
    pub fn new(
        keys: &Keys,
        pods: &[DirectoryPod],
        token_cache_entries: Option<usize>,
        kind: PushKind,
    ) -> anyhow::Result<Self> {
        let jwks: KeySet = keys.jwks()?;
        // The pushed pod runs where the first one does.
        let first = pods.first().context("no pods to push beside")?;
        let mut more = pods.to_vec();
        more.push(DirectoryPod {
            slug: PUSHED_POD.to_owned(),
            ..first.clone()
        });
        let mut configs = Vec::new();
        for directory in [pods, &more] {
            let json = tokens::with_assertion(&tokens::filter_config_json(
                &jwks,
                directory,
                token_cache_entries,
            )?)?;
            tokens::check_filter_config(&json)?;
            configs.push(json);
        }
        let [without, with] = <[String; 2]>::try_from(configs)
            .map_err(|_| anyhow::anyhow!("two configurations expected"))?;
        // One directory per `Pushes`: each removes its own when dropped.
        static MADE: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "podgate-bench-pushes-{}-{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let configs = Configs {
            kind,
            base: serde_json::from_str(&without)?,
            pods: [without, with],
        };
        Ok(Pushes {
            dir,
            configs: Arc::new(configs),
            pushed: Vec::new(),
        })
    }

    /// The podgate filter for case `id` running `wasm`, its file written with the first
    /// configuration; the pusher rewrites it when `pushed`.
    pub fn filter(&mut self, id: &str, wasm: &Path, pushed: bool) -> anyhow::Result<Value> {
        let dir = self.dir.join(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("podgate.json");
        envoy::write_podgate_filter(&file, wasm, &self.configs.at(0), 0)?;
        if pushed {
            self.pushed.push((file.clone(), wasm.to_owned()));
        }
        Ok(envoy::podgate_filter_discovered(&file))
    }

    /// Pushes to every pushed Envoy `per_sec` times a second until the pusher is dropped.
    pub fn start(&self, per_sec: f64) -> Pusher {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let period = Duration::from_secs_f64(1.0 / per_sec);
        let (configs, pushed) = (Arc::clone(&self.configs), self.pushed.clone());
        let thread = {
            let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
            std::thread::spawn(move || -> anyhow::Result<()> {
                let start = Instant::now();
                let mut version = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    version += 1;
                    // On schedule, not after each write: the rate holds however long writes take.
                    let due = start + period.mul_f64(version as f64);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let config = configs.at(version);
                    for (file, wasm) in &pushed {
                        envoy::write_podgate_filter(file, wasm, &config, version)?;
                    }
                    count.store(version, Ordering::Relaxed);
                }
                Ok(())
            })
        };
        Pusher {
            stop,
            count,
            thread: Some(thread),
        }
    }
}

/// What push `version` writes (0: the first configuration).
struct Configs {
    kind: PushKind,
    /// Without and with [`PUSHED_POD`].
    pods: [String; 2],
    /// The first configuration.
    base: Value,
}

impl Configs {
    fn at(&self, version: u64) -> String {
        match self.kind {
            PushKind::Pods => self.pods[(version % 2) as usize].clone(),
            PushKind::Revocations => {
                let mut config = self.base.clone();
                config["revoked_jti"] = (1..=version)
                    .map(|i| tokens::jti(Alg::EdDSA, REVOKED_FROM + i))
                    .collect();
                config.to_string()
            }
        }
    }
}

impl Drop for Pushes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Pushing, until dropped or [`Pusher::finish`]ed.
pub struct Pusher {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Pusher {
    /// Pushes written to every pushed Envoy so far.
    pub fn pushes(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops pushing; an error if a push could not be written.
    pub fn finish(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(written)) => written.map(|()| self.pushes()),
            Some(Err(_)) => anyhow::bail!("the pusher panicked"),
            None => Ok(self.pushes()),
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
