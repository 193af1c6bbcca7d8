//! Starting the `podgate` binary (`podgate serve`) for a test and stopping it for sure.
//!
//! The server runs under the watchdog of [`crate::process`]: SIGTERM when the [`Podgate`] is
//! dropped or the test process dies. Its work directory (the SQLite database unless another
//! database URL is given, the key-encryption key, `podgate.log` with every run's stdout and
//! stderr, one `run-N` directory a run) is removed afterwards, and kept when a test fails. The
//! server can be killed and started again on the same directory, database and ports.
//!
//! ```no_run
//! # async fn f(binary: std::path::PathBuf, listen: std::net::SocketAddr) -> anyhow::Result<()> {
//! let cp = podgate_testkit::Podgate::builder("flow", binary)
//!     .listen(listen)
//!     .generate_kek()
//!     .args(["--admin-token", "0123456789abcdef0123456789abcdef", "--dev-mode"])
//!     .start()
//!     .await?;
//! # Ok(()) }
//! ```

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::envoy::Readiness;
use crate::process::{tail, Supervised, WorkDir};

/// How long `podgate serve` may take to become ready, unless the builder says otherwise.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a SIGTERM'd server may take to exit.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of the log a failure message carries.
const LOG_TAIL_BYTES: usize = 6000;

/// When the server counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyWhen {
    /// `GET /readyz` on the listen address answers 200.
    Readyz,
    /// The listen address accepts a TCP connection.
    PortOpen,
}

/// What a [`Podgate`] is started with.
#[derive(Debug, Clone)]
pub struct PodgateBuilder {
    label: String,
    binary: PathBuf,
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    kek: bool,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    ready_when: ReadyWhen,
    ready_timeout: Duration,
}

impl PodgateBuilder {
    /// `--listen`: the HTTP address, also the one readiness is checked on.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// `--database-url`; without it, SQLite in the work directory (`podgate.db`).
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// Signing keys stored encrypted, as in production: `podgate keys gen-kek` writes
    /// `<work dir>/kek` before the first run and `--key-encryption-key-file` names it.
    pub fn generate_kek(mut self) -> Self {
        self.kek = true;
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// Starts the server with no inherited environment (only what `env` sets).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    /// When the server counts as ready (default: `/readyz` answers 200).
    pub fn ready_when(mut self, when: ReadyWhen) -> Self {
        self.ready_when = when;
        self
    }

    /// How long it may take to become ready (default [`READY_TIMEOUT`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the server without waiting for it.
    pub fn spawn(self) -> anyhow::Result<Podgate> {
        let listen = self
            .listen
            .ok_or_else(|| anyhow!("podgate `{}`: no listen address", self.label))?;
        let dir = WorkDir::new("podgate-cp", &self.label)?;
        let mut args: Vec<OsString> = vec!["serve".into(), "--listen".into()];
        args.push(listen.to_string().into());
        args.push("--database-url".into());
        args.push(match &self.database_url {
            Some(url) => url.into(),
            None => format!("sqlite://{}", dir.path().join("podgate.db").display()).into(),
        });
        if self.kek {
            let kek = dir.path().join("kek");
            gen_kek(&self.binary, &kek)?;
            args.push("--key-encryption-key-file".into());
            args.push(kek.into());
        }
        args.extend(self.args.iter().cloned());
        let mut podgate = Podgate {
            label: self.label.clone(),
            builder: self,
            listen,
            args,
            dir,
            proc: None,
            runs: 0,
        };
        podgate.respawn()?;
        Ok(podgate)
    }

    /// Starts the server and waits until it is ready; one that exits first, or is not ready in
    /// time, is an error carrying its log.
    pub async fn start(self) -> anyhow::Result<Podgate> {
        let podgate = self.spawn()?;
        podgate.wait_ready_or_fail().await?;
        Ok(podgate)
    }
}

/// A `podgate serve` process with its own work directory (see the module docs).
pub struct Podgate {
    label: String,
    builder: PodgateBuilder,
    listen: SocketAddr,
    args: Vec<OsString>,
    proc: Option<Supervised>,
    runs: u32,
    // Last, so that the server has stopped before its directory goes.
    dir: WorkDir,
}

impl std::fmt::Debug for Podgate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Podgate")
            .field("label", &self.label)
            .field("dir", &self.dir.path())
            .field("listen", &self.listen)
            .field("args", &self.args)
            .finish()
    }
}

impl Podgate {
    /// A server named `label` (in its work directory's name and in messages) run from `binary`.
    pub fn builder(label: &str, binary: impl Into<PathBuf>) -> PodgateBuilder {
        PodgateBuilder {
            label: label.to_owned(),
            binary: binary.into(),
            listen: None,
            database_url: None,
            kek: false,
            args: Vec::new(),
            env: Vec::new(),
            env_clear: false,
            ready_when: ReadyWhen::Readyz,
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// Starts the server again (after `kill`, `stop` or `terminate`) on the same directory,
    /// database, key and ports, without waiting for it.
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("podgate `{}` is still running", self.label);
        }
        self.proc = None;
        self.runs += 1;
        let run_dir = self.dir.path().join(format!("run-{}", self.runs));
        std::fs::create_dir_all(&run_dir)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("podgate.log"))?;
        let builder = &self.builder;
        let proc = Supervised::spawn(&run_dir, &builder.binary, &self.args, |command| {
            if builder.env_clear {
                command.env_clear();
            }
            for (key, value) in &builder.env {
                match value {
                    Some(value) => command.env(key, value),
                    None => command.env_remove(key),
                };
            }
            if let Ok(out) = log.try_clone() {
                command.stdout(out);
            }
            command.stderr(log);
        })?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops the server (SIGTERM), starts it again and waits until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.respawn()?;
        self.wait_ready_or_fail().await
    }

    /// Waits until the server is ready, or has exited (with its status), for at most the
    /// builder's ready timeout; not ready in time is an error carrying the log.
    pub async fn wait_ready(&self) -> anyhow::Result<Readiness> {
        let deadline = Instant::now() + self.builder.ready_timeout;
        loop {
            if let Some(code) = self.exit_status() {
                return Ok(Readiness::Exited(code));
            }
            if self.is_ready().await {
                return Ok(Readiness::Ready);
            }
            if Instant::now() >= deadline {
                bail!(
                    "podgate `{}` was not ready after {:?}; its log:\n{}",
                    self.label,
                    self.builder.ready_timeout,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `wait_ready`, with an exit before ready as an error carrying the log.
    pub async fn wait_ready_or_fail(&self) -> anyhow::Result<()> {
        match self.wait_ready().await? {
            Readiness::Ready => Ok(()),
            Readiness::Exited(code) => bail!(
                "podgate `{}` exited with status {code} before it was ready; its log:\n{}",
                self.label,
                self.log_tail()
            ),
        }
    }

    async fn is_ready(&self) -> bool {
        match self.builder.ready_when {
            ReadyWhen::Readyz => {
                matches!(crate::http::get(self.listen, "/readyz").await, Ok((200, _)))
            }
            ReadyWhen::PortOpen => tokio::net::TcpStream::connect(self.listen).await.is_ok(),
        }
    }

    /// The `--listen` address.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The work directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The key-encryption key file `generate_kek` made.
    pub fn kek(&self) -> PathBuf {
        self.dir.path().join("kek")
    }

    /// Gives `flag` the value `value` from the next run on (added when absent).
    pub fn set_flag(&mut self, flag: &str, value: impl AsRef<OsStr>) {
        let value = value.as_ref().to_owned();
        match self.args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = value,
            _ => {
                self.args.push(flag.into());
                self.args.push(value);
            }
        }
    }

    /// The running server's pid.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Supervised::pid)
    }

    /// The last run's exit status, once it has exited.
    pub fn exit_status(&self) -> Option<i32> {
        self.proc.as_ref().and_then(Supervised::exit_status)
    }

    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(Supervised::is_running)
    }

    /// SIGKILL (no graceful shutdown, like a crash); waits until the server is gone.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        match self.proc.as_mut() {
            Some(proc) => proc
                .kill()
                .with_context(|| format!("killing podgate `{}`", self.label)),
            None => Ok(()),
        }
    }

    /// SIGTERM; the exit status and how long the graceful shutdown took.
    pub fn terminate(&mut self) -> anyhow::Result<(i32, Duration)> {
        let proc = self
            .proc
            .as_mut()
            .ok_or_else(|| anyhow!("podgate `{}` was never started", self.label))?;
        proc.terminate(TERMINATE_TIMEOUT)
            .with_context(|| format!("podgate `{}`; its log:\n{}", self.label, self.log_tail()))
    }

    /// Stops the server (SIGTERM, graceful) and waits, bounded, until it is gone.
    pub fn stop(&mut self) {
        if let Some(proc) = self.proc.as_mut() {
            proc.finish();
        }
    }

    /// The whole log so far (every run).
    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("podgate.log"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The end of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        format!(
            "--- podgate {} (work dir {}) ---\n{}",
            self.label,
            self.dir.path().display(),
            tail(&self.log(), LOG_TAIL_BYTES)
        )
    }
}

impl Drop for Podgate {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            self.dir.keep(&format!("control plane `{}`", self.label));
        }
    }
}

/// `podgate keys gen-kek path` with an empty environment: writes a new key-encryption key to
/// `path` (never over an existing file) and returns the key id it reports.
pub fn gen_kek(binary: &Path, path: &Path) -> anyhow::Result<String> {
    let made = Command::new(binary)
        .args(["keys", "gen-kek"])
        .arg(path)
        .env_clear()
        .output()
        .context("running podgate keys gen-kek")?;
    if !made.status.success() {
        bail!(
            "podgate keys gen-kek failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let said = String::from_utf8_lossy(&made.stdout);
    said.split("key-encryption key ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no key id in {said:?}"))
}
