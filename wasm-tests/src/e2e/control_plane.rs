//! The control plane of the whole-stack suites (`stack_full`): the `podgate` binary, built when
//! missing; a `podgate serve` on SQLite with the dev login and ADS, optionally with mutual TLS
//! towards Envoy (test certificates from `podgate tls gen-test-certs`); the Envoy bootstrap
//! rendered for it; and a client of its admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use podgate_testkit::podgate::Podgate;
use serde_json::Value as Json;

use crate::host::{cargo_build, ensure_built, target_dir, workspace_root};

/// The control plane's public host name.
pub const CP_HOST: &str = "podgate.localhost";
/// The admin token of every test control plane.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef0123456789abcdef";
/// How long the control plane may take to answer `/readyz`.
const CP_READY_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Binaries and ports

/// The `podgate` binary: `$PODGATE_BIN`, else `<target>/debug/podgate`, built with
/// `cargo build -p podgate --bin podgate` when missing or older than its sources (a binary a
/// workspace `cargo test` just built is used as is, so CI does not build it twice).
pub fn podgate_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(path) = std::env::var_os("PODGATE_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("PODGATE_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            let path = target_dir().join("debug/podgate");
            let sources: Vec<PathBuf> = [
                "Cargo.toml",
                "Cargo.lock",
                "control-plane/Cargo.toml",
                "control-plane/src",
                "protocol/Cargo.toml",
                "protocol/src",
                "xds/Cargo.toml",
                "xds/src",
                "migrations",
            ]
            .iter()
            .map(|p| root.join(p))
            .collect();
            ensure_built(&path, &sources, || {
                cargo_build(&root, &["build", "-p", "podgate", "--bin", "podgate"])
            })
            .map_err(|e| format!("{e:#}"))?;
            Ok(path)
        })
        .clone()
        .map_err(|e| anyhow!("building the podgate binary: {e}"))
}

/// A loopback port nobody listens on right now (bound, then released). The stack needs its
/// ports before anything starts, because each program is told the others' ports.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(podgate_testkit::free_port()?)
}

// ---------------------------------------------------------------------------------------------
// The control plane process

/// Settings of one test control plane.
#[derive(Debug, Clone)]
pub struct CpSettings {
    pub http: SocketAddr,
    pub xds: SocketAddr,
    /// Envoy's listener port (the port in pod URLs).
    pub pod_public_port: u16,
    pub domain: String,
    /// `--capability-lifetime-secs`, when not the default.
    pub capability_lifetime_secs: Option<u32>,
    pub filter_wasm: PathBuf,
    /// Anything else (`--flag`, `value`, ...).
    pub extra_args: Vec<String>,
    /// Mutual TLS with Envoy: the test certificates and the Envoy-facing listener.
    pub mtls: Option<CpMtls>,
}

/// The control plane side of mutual TLS with Envoy in a test.
#[derive(Debug, Clone)]
pub struct CpMtls {
    /// A directory of `podgate tls gen-test-certs`.
    pub certs: PathBuf,
    /// `--envoy-listen`.
    pub envoy_listen: SocketAddr,
}

/// The files `podgate tls gen-test-certs` writes.
pub const TEST_CA: &str = "ca.pem";
pub const TEST_SERVER_CERT: &str = "server.pem";
pub const TEST_SERVER_KEY: &str = "server-key.pem";
pub const TEST_CLIENT_CERT: &str = "envoy.pem";
pub const TEST_CLIENT_KEY: &str = "envoy-key.pem";

/// Writes a fresh test CA with server and Envoy client certificates into a new directory under
/// the target directory's `tmp/` (`podgate tls gen-test-certs`, as the demo does) and returns it.
pub fn test_certs(label: &str) -> anyhow::Result<PathBuf> {
    let dir = target_dir().join("tmp").join(format!(
        "podgate-e2e-tls-{label}-{}-{}",
        std::process::id(),
        unique("")
    ));
    let out = std::process::Command::new(podgate_binary()?)
        .args(["tls", "gen-test-certs"])
        .arg(&dir)
        .output()
        .context("running podgate tls gen-test-certs")?;
    if !out.status.success() {
        bail!(
            "podgate tls gen-test-certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(dir)
}

/// Whether whole-stack suites run with mutual TLS between Envoy and the control plane by
/// default: yes, as the demo and production do, unless `PODGATE_E2E_MTLS=0` (the suites that
/// test mutual TLS itself always do).
pub fn mtls_by_default() -> bool {
    !std::env::var("PODGATE_E2E_MTLS").is_ok_and(|v| v == "0" || v == "false")
}

/// A `podgate serve` process with its own SQLite database (the test kit's launcher); can be
/// killed and started again on the same database and ports.
pub struct ControlPlane {
    settings: CpSettings,
    proc: Podgate,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("proc", &self.proc)
            .field("settings", &self.settings)
            .finish()
    }
}

impl ControlPlane {
    /// Starts `podgate serve` and waits for `/readyz`. Signing keys are stored encrypted under
    /// a key made the way an operator makes one; restarts read them back with it.
    pub async fn start(label: &str, settings: CpSettings) -> anyhow::Result<ControlPlane> {
        let s = &settings;
        let mut builder = Podgate::builder(label, podgate_binary()?)
            .listen(s.http)
            .generate_kek()
            .args(["--xds-listen", &s.xds.to_string()])
            .args(["--admin-token", ADMIN_TOKEN, "--dev-mode"])
            .args(["--issuer", &public_url(s.http)])
            .args(["--domain", &s.domain])
            .args(["--pod-public-port", &s.pod_public_port.to_string()])
            .arg("--filter-wasm")
            .arg(&s.filter_wasm)
            .env("RUST_LOG", "info")
            .ready_timeout(CP_READY_TIMEOUT);
        if let Some(mtls) = &s.mtls {
            builder = builder
                .arg("--envoy-tls-cert")
                .arg(mtls.certs.join(TEST_SERVER_CERT))
                .arg("--envoy-tls-key")
                .arg(mtls.certs.join(TEST_SERVER_KEY))
                .arg("--envoy-client-ca")
                .arg(mtls.certs.join(TEST_CA))
                .args(["--envoy-listen", &mtls.envoy_listen.to_string()]);
        }
        if let Some(secs) = s.capability_lifetime_secs {
            builder = builder.args(["--capability-lifetime-secs", &secs.to_string()]);
        }
        let proc = builder.args(&s.extra_args).start().await?;
        Ok(ControlPlane { settings, proc })
    }

    /// The public URL (`--issuer`): `http://podgate.localhost:PORT`.
    pub fn public_url(&self) -> String {
        public_url(self.settings.http)
    }

    /// The loopback address of the HTTP API.
    pub fn http_addr(&self) -> SocketAddr {
        self.settings.http
    }

    pub fn settings(&self) -> &CpSettings {
        &self.settings
    }

    /// Waits until `/readyz` answers 200; an exit or a timeout is an error with the log.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        self.proc.wait_ready_or_fail().await
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// Kills the process with SIGKILL (no graceful shutdown) and waits until it is gone.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.proc.kill()
    }

    /// Stops the process with SIGTERM (graceful) and waits until it is gone.
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Starts the process again on the same database and ports, and waits for `/readyz`.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.restart().await
    }

    /// The whole log so far (every run).
    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn log_tail(&self) -> String {
        self.proc.log_tail()
    }

    pub fn dir(&self) -> &Path {
        self.proc.dir()
    }
}

impl CpSettings {
    /// `envoy/podgate.yaml` for an Envoy on `listener_port` in front of this control plane:
    /// with its test certificates when it runs mutual TLS.
    pub fn envoy_bootstrap(&self, listener_port: u16) -> anyhow::Result<String> {
        match &self.mtls {
            Some(mtls) => render_ads_bootstrap(
                listener_port,
                self.xds.port(),
                mtls.envoy_listen.port(),
                Some(&envoy_mtls(&mtls.certs)),
            ),
            None => render_ads_bootstrap(listener_port, self.xds.port(), self.http.port(), None),
        }
    }
}

/// The control plane's public URL for its HTTP address.
fn public_url(http: SocketAddr) -> String {
    format!("http://{CP_HOST}:{}", http.port())
}

// ---------------------------------------------------------------------------------------------
// The ADS bootstrap

pub use podgate_testkit::EnvoyMtls;

/// The client certificate, key and CA of a `podgate tls gen-test-certs` directory, for Envoy.
pub fn envoy_mtls(dir: &Path) -> EnvoyMtls {
    EnvoyMtls {
        client: Some((dir.join(TEST_CLIENT_CERT), dir.join(TEST_CLIENT_KEY))),
        ca: dir.join(TEST_CA),
    }
}

/// `envoy/podgate.yaml` for one control plane on loopback: the listener on `listener_port`, the
/// ADS cluster on `xds_port`, the control plane's HTTP on `cp_http_port` (its Envoy-facing
/// listener with mutual TLS, its API's without). With `mtls` the two clusters keep the file's
/// TLS settings with these files; without, they are plaintext.
pub fn render_ads_bootstrap(
    listener_port: u16,
    xds_port: u16,
    cp_http_port: u16,
    mtls: Option<&EnvoyMtls>,
) -> anyhow::Result<String> {
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut bootstrap = podgate_testkit::AdsBootstrap::load()?;
    bootstrap
        .listener(local(listener_port))?
        .control_planes(&[local(xds_port)], &[local(cp_http_port)])?;
    if let Some(mtls) = mtls {
        bootstrap.mtls(mtls)?;
    }
    bootstrap.to_yaml()
}

// ---------------------------------------------------------------------------------------------
// The admin API

/// The control plane's admin API (`/v1/…` with the admin bearer token).
#[derive(Debug, Clone)]
pub struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    pub fn new(addr: SocketAddr) -> anyhow::Result<Admin> {
        Ok(Admin {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// One call; answers (status, JSON body or `Null`).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> anyhow::Result<(u16, Json)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("admin {method} {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Json::Null)))
    }

    /// One call that must succeed (2xx).
    pub async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> anyhow::Result<Json> {
        let (status, json) = self.call(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            bail!("admin {method} {path} answered {status}: {json}");
        }
        Ok(json)
    }

    pub async fn post(&self, path: &str, body: Json) -> anyhow::Result<Json> {
        self.ok(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Json) -> anyhow::Result<Json> {
        self.ok(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Json) -> anyhow::Result<Json> {
        self.ok(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Json> {
        self.ok(reqwest::Method::DELETE, path, None).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Json> {
        self.ok(reqwest::Method::GET, path, None).await
    }
}

static SEED: AtomicU32 = AtomicU32::new(0);

/// A name unique in this test process (`{prefix}{n}`).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", SEED.fetch_add(1, Ordering::Relaxed))
}
