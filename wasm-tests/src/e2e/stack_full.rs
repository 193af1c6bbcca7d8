//! The whole podgate stack on loopback, everything real: the `podgate` binary (SQLite, dev
//! login, the ADS server), Envoy 1.40 on `envoy/podgate.yaml` (clusters and the filter over
//! ADS), and demo pods (`podgate-demo-pod`, the stand-in for a pod's nginx) that record every
//! connection and request.
//!
//! ```text
//! WebClient (`web_client`: cookie jar, *.localhost → 127.0.0.1)
//!   ├─ http://podgate.localhost:CP/…            → podgate (dev login, /api/proxy-auth, /v1/…)
//!   └─ http://localhost-P-pod-S.podgate.localhost:ENVOY/… → Envoy → filter → demo pod
//!                                                                 └ /.podgate/ → podgate
//! podgate ──ADS (gRPC, 127.0.0.1:XDS)──▶ Envoy
//! ```
//!
//! Base domain `podgate.localhost`, the control plane on `podgate.localhost`: the control plane
//! and the pod hosts are then same-site for a browser (as in production, where the workbench and
//! pod hosts share a registrable domain), so SameSite=Lax cookies work inside an iframe too.
//! Chromium, curl and this module's resolver send every `*.localhost` to loopback.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use podgate_demo_pod::DemoPod;
use podgate_testkit::podgate::Podgate;
use reqwest::header::HeaderValue;
use serde_json::{json, Value as Json};

use super::client::{EnvoyClient, WsOutcome};
use super::envoy::Envoy;
use super::web_client::WebClient;
use crate::host::{cargo_build, ensure_built, target_dir, workspace_root};

/// The ADS bootstrap users run, relative to the workspace root.
pub use podgate_testkit::ads_bootstrap::ADS_BOOTSTRAP;
/// The suite's base domain (see the module docs).
pub const DOMAIN: &str = "podgate.localhost";
/// The control plane's public host name.
pub const CP_HOST: &str = "podgate.localhost";
/// The admin token of every test control plane.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef0123456789abcdef";
/// How long a change made through the admin API may take to reach Envoy.
pub const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the control plane may take to answer `/readyz`.
const CP_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The session cookie of the control plane.
pub const SESSION_COOKIE: &str = "podgate_session";
/// The capability cookie on pod hosts (over http).
pub const CAP_COOKIE: &str = "podgate_cap";

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
    Ok(StdTcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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

// ---------------------------------------------------------------------------------------------
// The stack

/// What a stack is started with.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub label: String,
    pub capability_lifetime_secs: Option<u32>,
    pub extra_args: Vec<String>,
    /// Mutual TLS between Envoy and the control plane [default: [`mtls_by_default`]].
    pub mtls: bool,
}

impl StackOptions {
    pub fn new(label: &str) -> StackOptions {
        StackOptions {
            label: label.to_owned(),
            capability_lifetime_secs: None,
            extra_args: Vec::new(),
            mtls: mtls_by_default(),
        }
    }
}

/// Demo pods ("servers") a test starts for itself.
pub struct Servers {
    pub a: DemoPod,
    pub b: DemoPod,
}

/// A running stack: control plane, Envoy, and the admin API.
pub struct FullStack {
    pub cp: ControlPlane,
    pub envoy: Envoy,
    pub admin: Admin,
    /// Envoy's listener port (the port in pod URLs).
    pub envoy_port: u16,
    /// Raw access to Envoy's listener (Host set by hand; WebSockets).
    pub envoy_client: EnvoyClient,
    label: String,
}

impl std::fmt::Debug for FullStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FullStack")
            .field("label", &self.label)
            .field("cp", &self.cp)
            .field("envoy", &self.envoy)
            .finish()
    }
}

/// A pod seeded for one test: its people, its server(s), and its demo pods.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub slug: String,
    pub owner: String,
    pub member: String,
    pub member_email: String,
    pub outsider: String,
    pub team: String,
    pub server_a: String,
    pub server_b: String,
}

static SEED: AtomicU32 = AtomicU32::new(0);

/// A name unique in this test process (`{prefix}{n}`).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", SEED.fetch_add(1, Ordering::Relaxed))
}

impl FullStack {
    /// Starts podgate and Envoy on fresh ports and waits until Envoy runs the filter it got
    /// over ADS.
    pub async fn start(options: StackOptions) -> anyhow::Result<FullStack> {
        let filter_wasm = super::bootstrap::filter_wasm()?;
        let envoy_port = free_port()?;
        let mtls = match options.mtls {
            true => Some(CpMtls {
                certs: test_certs(&options.label)?,
                envoy_listen: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            }),
            false => None,
        };
        let settings = CpSettings {
            http: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            xds: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            pod_public_port: envoy_port,
            domain: DOMAIN.to_owned(),
            capability_lifetime_secs: options.capability_lifetime_secs,
            filter_wasm,
            extra_args: options.extra_args.clone(),
            mtls: mtls.clone(),
        };
        let cp = ControlPlane::start(&options.label, settings.clone()).await?;
        let admin = Admin::new(settings.http)?;
        let bootstrap = settings.envoy_bootstrap(envoy_port)?;
        let envoy = match Envoy::start(&options.label, &bootstrap, 1).await {
            Ok(envoy) => envoy,
            Err(e) => bail!("{e:#}\n{}", cp.log_tail()),
        };
        FullStack::assemble(cp, envoy, admin, envoy_port, &options.label).await
    }

    /// A stack of a running control plane and Envoy; waits for the filter.
    pub async fn assemble(
        cp: ControlPlane,
        envoy: Envoy,
        admin: Admin,
        envoy_port: u16,
        label: &str,
    ) -> anyhow::Result<FullStack> {
        let envoy_client = EnvoyClient::new(SocketAddr::from(([127, 0, 0, 1], envoy_port)))?;
        let stack = FullStack {
            cp,
            envoy,
            admin,
            envoy_port,
            envoy_client,
            label: label.to_owned(),
        };
        stack.wait_filter().await?;
        Ok(stack)
    }

    /// Waits until Envoy answers a pod host with the filter's own 401 (the filter and its
    /// configuration arrived over ECDS).
    pub async fn wait_filter(&self) -> anyhow::Result<()> {
        let host = self.pod_host("ready-probe", 8726);
        let deadline = Instant::now() + PROPAGATION_TIMEOUT * 2;
        let mut last;
        loop {
            let answer = EnvoyClient::send(self.envoy_client.get(&host, "/")).await;
            match answer {
                Ok(a) if a.status == 401 && a.header("www-authenticate").is_some() => return Ok(()),
                Ok(a) => last = format!("{} {}", a.status, a.body),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "Envoy never ran the podgate filter from ADS (last answer: {last});\n{}\n{}",
                    self.envoy.log_tail(),
                    self.cp.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `localhost-{port}-pod-{slug}.podgate.localhost`.
    pub fn pod_host(&self, slug: &str, port: u16) -> String {
        format!("localhost-{port}-pod-{slug}.{DOMAIN}")
    }

    /// What the pod's nginx sees in Host.
    pub fn upstream_host(&self, slug: &str, port: u16) -> String {
        format!("localhost-{port}.pod-{slug}.{DOMAIN}")
    }

    /// `http://{pod host}:{envoy port}`.
    pub fn pod_origin(&self, slug: &str, port: u16) -> String {
        format!("http://{}:{}", self.pod_host(slug, port), self.envoy_port)
    }

    pub fn pod_url(&self, slug: &str, port: u16, path: &str) -> String {
        format!("{}{path}", self.pod_origin(slug, port))
    }

    /// A URL on the control plane's public host.
    pub fn cp_url(&self, path: &str) -> String {
        format!("{}{path}", self.cp.public_url())
    }

    /// Two demo pods on ephemeral loopback ports, named "server A" and "server B".
    pub async fn servers() -> anyhow::Result<Servers> {
        Ok(Servers {
            a: DemoPod::start("server A").await?,
            b: DemoPod::start("server B").await?,
        })
    }

    /// Seeds a pod for a test: see [`seed`].
    pub async fn seed(&self, name: &str, servers: &Servers) -> anyhow::Result<Seeded> {
        seed(&self.admin, name, servers).await
    }

    /// Signs `user` in through the dev login; the session cookie lands in `web`'s jar.
    pub async fn dev_login(&self, web: &WebClient, user: &str) -> anyhow::Result<()> {
        let page = web
            .navigate(&self.cp_url(&format!("/dev/login?user={user}")))
            .await?;
        if page.status != 200 || web.jar.get(CP_HOST, SESSION_COOKIE).is_none() {
            bail!(
                "dev login as {user} failed: {} {}\n{}",
                page.status,
                page.body,
                self.cp.log_tail()
            );
        }
        Ok(())
    }

    /// Mints a capability through `POST /v1/capabilities` with `web`'s session.
    pub async fn capability(
        &self,
        web: &WebClient,
        slug: &str,
        port: u16,
    ) -> anyhow::Result<String> {
        let page = web
            .post_json(
                &self.cp_url("/v1/capabilities"),
                json!({"pod": slug, "port": port}),
            )
            .await?;
        page.json()["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                anyhow!(
                    "POST /v1/capabilities answered {}: {}",
                    page.status,
                    page.body
                )
            })
    }

    /// Repeats a script request with `token` until `done` accepts the answer (a change made
    /// through the admin API reached Envoy), for at most [`PROPAGATION_TIMEOUT`].
    pub async fn wait_until(
        &self,
        slug: &str,
        port: u16,
        token: &str,
        what: &str,
        done: impl Fn(&super::client::Answer) -> bool,
    ) -> anyhow::Result<super::client::Answer> {
        let host = self.pod_host(slug, port);
        let deadline = Instant::now() + PROPAGATION_TIMEOUT;
        loop {
            let answer = EnvoyClient::send(
                self.envoy_client
                    .get(&host, "/api/info")
                    .header("podgate-token", token),
            )
            .await?;
            if done(&answer) {
                return Ok(answer);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{what}: Envoy still answers {} {} after {PROPAGATION_TIMEOUT:?}\n{}",
                    answer.status,
                    answer.body,
                    self.cp.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens a WebSocket to `/ws` on a pod host through Envoy.
    pub async fn websocket(
        &self,
        slug: &str,
        port: u16,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<WsOutcome> {
        let host = format!("{}:{}", self.pod_host(slug, port), self.envoy_port);
        self.envoy_client.websocket(&host, "/ws", headers).await
    }

    /// Envoy's and the control plane's logs, for failure messages.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.envoy.log_tail(), self.cp.log_tail())
    }
}

/// Seeds: owner, member (in the pod's team) and outsider users, a team, servers A and B
/// (127.0.0.1), and a running pod on server A (`nginx_port` = demo pod A's port) whose ports
/// 8726 and 3000 are shared with the team.
pub async fn seed(admin: &Admin, name: &str, servers: &Servers) -> anyhow::Result<Seeded> {
    let n = unique("");
    let seeded = Seeded {
        slug: format!("{name}{n}"),
        owner: format!("owner{n}"),
        member: format!("member{n}"),
        member_email: format!("member{n}@example.dev"),
        outsider: format!("outsider{n}"),
        team: format!("team{n}"),
        server_a: format!("server-a{n}"),
        server_b: format!("server-b{n}"),
    };
    let a = admin;
    for (id, email) in [
        (&seeded.owner, format!("{}@example.dev", seeded.owner)),
        (&seeded.member, seeded.member_email.clone()),
        (&seeded.outsider, format!("{}@example.dev", seeded.outsider)),
    ] {
        a.post("/v1/users", json!({"id": id, "email": email, "name": id}))
            .await?;
    }
    a.post(
        "/v1/teams",
        json!({"id": seeded.team, "name": format!("team of {name}")}),
    )
    .await?;
    for (user, role) in [(&seeded.owner, "owner"), (&seeded.member, "member")] {
        a.post(
            &format!("/v1/teams/{}/members", seeded.team),
            json!({"user_id": user, "role": role}),
        )
        .await?;
    }
    for (id, label) in [(&seeded.server_a, "A"), (&seeded.server_b, "B")] {
        a.post(
            "/v1/servers",
            json!({"id": id, "name": format!("server {label}"), "address": "127.0.0.1"}),
        )
        .await?;
    }
    a.post(
        "/v1/pods",
        json!({
            "slug": seeded.slug,
            "owner_id": seeded.owner,
            "team_id": seeded.team,
            "server_id": seeded.server_a,
            "status": "running",
            "nginx_port": servers.a.addr().port(),
        }),
    )
    .await?;
    for port in [8726, 3000] {
        a.put(
            &format!("/v1/pods/{}/ports/{port}", seeded.slug),
            json!({"sharing": "team", "label": format!("port {port}")}),
        )
        .await?;
    }
    Ok(seeded)
}

/// Query parameters of a URL, decoded.
pub fn query_params(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url)
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

/// A `Cookie` header value made of these pairs.
pub fn cookie_header(pairs: &[(&str, &str)]) -> HeaderValue {
    let text = pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

/// Writes `bytes` to `<workspace>/artifacts/<sub>/<name>` and returns the path (the test kit's).
pub use podgate_testkit::webdriver::save_artifact;

/// A tiny HTTP/1.1 server on 127.0.0.1 that answers every request with `html` (the browser
/// test's workbench page). Stops when the handle is dropped.
pub struct StaticPage {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StaticPage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StaticPage {
    pub async fn serve(html: String) -> anyhow::Result<StaticPage> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let html: Arc<str> = html.into();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let html = Arc::clone(&html);
                tokio::spawn(async move {
                    // Read the request head (enough for a GET), then answer and close.
                    let mut buf = vec![0u8; 8192];
                    let mut read = 0;
                    while read < buf.len() {
                        match stream.read(&mut buf[read..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => read += n,
                        }
                        if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
                        html.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(html.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(StaticPage { addr, task })
    }
}
