//! The live stack for xDS tests and the propagation example: the `podgate` binary (SQLite in a
//! temporary directory, ADS on an ephemeral port), a real Envoy 1.40 on `envoy/podgate.yaml`
//! rendered with ephemeral ports, and the test kit's recording fake pods.
//!
//! Envoy comes from `$PODGATE_ENVOY` or `<workspace>/.venv/bin/envoy`, the filter from
//! `$PODGATE_FILTER_WASM` or a `cargo build` of `podgate-filter` run once; a missing one fails.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use podgate_testkit::podgate::Podgate;
use podgate_testkit::Readiness;
use reqwest::header::{ACCEPT, COOKIE, HOST, LOCATION, SET_COOKIE};
use serde_json::{json, Value};

pub const ADMIN_TOKEN: &str = "xds-live-admin-token-0123456789abcdef";
/// The pod's app port used in every host of these tests.
pub const APP_PORT: u16 = 3000;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The filter's .wasm: `$PODGATE_FILTER_WASM`, else built once into this build's target dir.
pub fn filter_wasm() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        if let Some(p) = std::env::var_os("PODGATE_FILTER_WASM") {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "PODGATE_FILTER_WASM={} is not a file",
                p.display()
            );
            return p;
        }
        // target/<profile>/deps/<test binary> or target/<profile>/examples/<example>.
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).unwrap().to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace())
            .env("CARGO_TARGET_DIR", &target)
            .args([
                "build",
                "-p",
                "podgate-filter",
                "--target",
                "wasm32-wasip1",
                "--profile",
                "wasm-release",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "building the filter failed");
        let p = target.join("wasm32-wasip1/wasm-release/podgate_filter.wasm");
        assert!(p.is_file(), "no {}", p.display());
        p
    })
    .clone()
}

/// The `podgate` binary next to this test or example.
pub fn podgate_binary() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_podgate") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.ancestors().nth(2).unwrap().join("podgate");
    assert!(p.is_file(), "no podgate binary at {}", p.display());
    p
}

/// The `podgate-cli` binary: `$PODGATE_CLI`, else built once into this build's target dir.
pub fn cli_binary() -> PathBuf {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| {
        if let Some(p) = std::env::var_os("PODGATE_CLI") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).unwrap().to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace())
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "-p", "podgate-cli"])
            .status()
            .unwrap();
        assert!(status.success(), "building podgate-cli failed");
        let p = target.join("debug/podgate-cli");
        assert!(p.is_file(), "no {}", p.display());
        p
    })
    .clone()
}

/// Now, in unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// This machine as the installer names it: `linux-x86_64` and the like.
pub fn platform() -> String {
    let run = |arg: &str| {
        let out = Command::new("uname").arg(arg).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let arch = match run("-m").as_str() {
        "amd64" => "x86_64".to_owned(),
        "arm64" => "aarch64".to_owned(),
        other => other.to_owned(),
    };
    format!("{}-{arch}", run("-s").to_lowercase())
}

/// Runs `curl -fsSL URL | bash` in `project` with `home` as HOME and `path` as PATH.
pub async fn install(url: &str, home: &Path, project: &Path, path: &str) -> (i32, String) {
    // bash fills an unset SHELL from the password database: a login shell of zsh would change
    // what the installer writes.
    install_with(url, home, project, path, &[("SHELL", "/bin/bash")]).await
}

/// [`install`] with more environment variables.
pub async fn install_with(
    url: &str,
    home: &Path,
    project: &Path,
    path: &str,
    env: &[(&str, &str)],
) -> (i32, String) {
    let mut c = Command::new("bash");
    c.env_clear()
        .env("HOME", home)
        .env("PATH", path)
        .envs(env.iter().copied())
        .current_dir(project)
        .args(["-c", "curl -fsSL \"$1\" | bash", "install", url]);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Writes a new key-encryption key to `path` with `podgate keys gen-kek`; returns its id.
pub fn make_kek(path: &Path) -> String {
    podgate_testkit::podgate::gen_kek(&podgate_binary(), path).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Asserts that `request`, as an upstream got it, carries no `x-podgate-*` header: no identity,
/// no assertion, not even the pod and port the filter parsed (a service's upstream is a third
/// party).
pub fn assert_no_podgate_header(request: &podgate_testkit::Recorded) {
    assert!(
        !request
            .headers
            .iter()
            .any(|(n, _)| n.starts_with("x-podgate-")),
        "{:?}",
        request.headers
    );
}

/// A loopback port nobody listens on, for a program started next (the test kit's ports).
pub fn free_port() -> u16 {
    podgate_testkit::free_port().unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(16)
        .build()
        .unwrap()
}

/// What the control planes of one fleet share: one database, the key-encryption key its signing
/// keys are stored under, and the settings that are part of what they push to Envoy (the issuer,
/// the renew secret), so that they push the same configuration under the same versions.
pub struct Shared {
    pub database_url: String,
    pub kek: PathBuf,
    pub issuer: String,
    pub renew_secret: String,
}

/// The control plane as a child process (the test kit's launcher); killed (SIGKILL) on drop.
pub struct ControlPlane {
    pub http: SocketAddr,
    pub xds: SocketAddr,
    pub envoy_port: u16,
    /// The issuer it was started with (`http://<its HTTP address>` unless shared).
    pub issuer: String,
    proc: Podgate,
    http_client: reqwest::Client,
}

impl ControlPlane {
    /// `podgate serve` on a fresh SQLite database and key-encryption key (signing keys are
    /// stored encrypted, as in production; a restart reads them back), logging to `podgate.log`;
    /// waits for `/readyz`.
    pub async fn start(envoy_port: u16, extra_args: &[&str]) -> ControlPlane {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let issuer = format!("http://{http}");
        let builder = ControlPlane::builder("xds-live", http, xds, envoy_port)
            .generate_kek()
            .args(["--issuer", &issuer])
            .args(extra_args.iter().copied());
        ControlPlane::launch(builder, http, xds, envoy_port, issuer).await
    }

    /// One of several control planes on one database: `podgate serve` on `database_url` with
    /// the key-encryption key file `kek` and the issuer they all share (`None`: this one's own
    /// URL); waits for `/readyz`.
    pub async fn start_sharing(
        envoy_port: u16,
        database_url: &str,
        kek: &Path,
        issuer: Option<&str>,
        extra_args: &[&str],
    ) -> ControlPlane {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let issuer = issuer.map_or_else(|| format!("http://{http}"), str::to_owned);
        let builder = ControlPlane::builder("xds-live", http, xds, envoy_port)
            .database_url(database_url)
            .arg("--key-encryption-key-file")
            .arg(kek)
            .args(["--issuer", &issuer])
            .args(extra_args.iter().copied());
        ControlPlane::launch(builder, http, xds, envoy_port, issuer).await
    }

    /// One of several control planes on `shared`'s database (`shared` also holds what they must
    /// agree on), on its own ports; waits for `/readyz`.
    pub async fn start_replica(label: &str, envoy_port: u16, shared: &Shared) -> ControlPlane {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let xds = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let builder = ControlPlane::builder(label, http, xds, envoy_port)
            .database_url(&shared.database_url)
            .arg("--key-encryption-key-file")
            .arg(&shared.kek)
            .args(["--issuer", &shared.issuer])
            .args(["--renew-secret", &shared.renew_secret]);
        ControlPlane::launch(builder, http, xds, envoy_port, shared.issuer.clone()).await
    }

    /// `podgate serve` on `http` with ADS on `xds`, the admin token, dev login and the filter.
    fn builder(
        label: &str,
        http: SocketAddr,
        xds: SocketAddr,
        envoy_port: u16,
    ) -> podgate_testkit::PodgateBuilder {
        Podgate::builder(label, podgate_binary())
            .listen(http)
            .args(["--xds-listen", &xds.to_string()])
            .args(["--admin-token", ADMIN_TOKEN, "--dev-mode"])
            .args(["--pod-public-port", &envoy_port.to_string()])
            .arg("--filter-wasm")
            .arg(filter_wasm())
            .env("RUST_LOG", "info,podgate_xds=info")
            .env_remove("PODGATE_CONFIG")
            .ready_timeout(Duration::from_secs(20))
    }

    async fn launch(
        builder: podgate_testkit::PodgateBuilder,
        http: SocketAddr,
        xds: SocketAddr,
        envoy_port: u16,
        issuer: String,
    ) -> ControlPlane {
        let proc = builder.start().await.unwrap_or_else(|e| panic!("{e:#}"));
        ControlPlane {
            http,
            xds,
            envoy_port,
            issuer,
            proc,
            http_client: client(),
        }
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// The work directory (database, key-encryption key, log).
    pub fn dir(&self) -> &Path {
        self.proc.dir()
    }

    /// The key-encryption key file the next start uses.
    pub fn kek(&self) -> PathBuf {
        self.proc.kek()
    }

    /// Starts the next run with the key-encryption key file `path`.
    pub fn set_kek(&mut self, path: &Path) {
        self.proc.set_flag("--key-encryption-key-file", path);
    }

    /// Starts `serve` expecting it to refuse to start; returns what it logged. Panics if it
    /// becomes ready or runs for 20 s.
    pub async fn serve_expecting_failure(&mut self) -> String {
        let before = self.log().len();
        self.proc.respawn().unwrap();
        match self.proc.wait_ready().await {
            Ok(Readiness::Exited(code)) => assert_ne!(code, 0, "{}", self.log()),
            ready => {
                let _ = self.proc.kill();
                panic!("podgate started ({ready:?}):\n{}", self.log());
            }
        }
        self.log()[before..].to_owned()
    }

    /// Starts the process again (on the same database, key-encryption key and ports) and waits
    /// for `/readyz`.
    pub async fn spawn(&mut self) {
        self.proc.respawn().unwrap();
        if let Err(e) = self.proc.wait_ready_or_fail().await {
            panic!("{e:#}");
        }
    }

    /// SIGTERM, then the exit status and how long the graceful shutdown took.
    pub fn terminate(&mut self) -> (i32, Duration) {
        self.proc.terminate().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// SIGKILL: no graceful shutdown, like a crash.
    pub fn kill(&mut self) {
        self.proc.kill().unwrap_or_else(|e| panic!("{e:#}"));
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, text) = self.admin_answer(method.clone(), path, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// `method path` on the admin API with `body`: the status and the answer, whatever they are.
    pub async fn admin_answer(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, String) {
        let mut req = self
            .http_client
            .request(method, format!("http://{}{path}", self.http))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.text().await.unwrap())
    }

    /// Sends an admin request while every cut fails (as a database error part way through
    /// would), and checks it fails as a whole (a 5xx); the cuts work again afterwards.
    pub async fn admin_while_cuts_fail(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) {
        self.cuts_fail(true).await;
        let (status, text) = self.admin_answer(method, path, body).await;
        self.cuts_fail(false).await;
        assert!(status.is_server_error(), "{status} {text}");
    }

    /// Makes every cut this control plane writes fail (`true`) by renaming the cuts table of
    /// its SQLite database away, from a connection of the test's own; `false` puts it back.
    async fn cuts_fail(&self, fail: bool) {
        use sqlx::Connection;
        let (from, to) = if fail {
            ("access_cuts", "access_cuts_away")
        } else {
            ("access_cuts_away", "access_cuts")
        };
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(self.dir().join("podgate.db"))
            .busy_timeout(Duration::from_secs(10));
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        sqlx::query(&format!("ALTER TABLE {from} RENAME TO {to}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }

    pub async fn create_user(&self, id: &str) {
        self.admin(
            reqwest::Method::POST,
            "/v1/users",
            Some(json!({"id": id, "email": format!("{id}@example.dev")})),
        )
        .await;
    }

    /// Team `t1` with `member` (created here) in it, and the running pod `slug` of `USER` on
    /// `SERVER` shared with that team, its app on `port`.
    pub async fn team_pod_with_member(&self, member: &str, slug: &str, port: u16) {
        self.create_user(member).await;
        let post = reqwest::Method::POST;
        self.admin(
            post.clone(),
            "/v1/teams",
            Some(json!({"id": "t1", "name": "Team one"})),
        )
        .await;
        self.admin(
            post.clone(),
            "/v1/teams/t1/members",
            Some(json!({"user_id": member})),
        )
        .await;
        self.admin(
            post,
            "/v1/pods",
            Some(json!({"slug": slug, "owner_id": USER, "team_id": "t1", "server_id": SERVER, "nginx_port": port, "status": "running"})),
        )
        .await;
    }

    pub async fn create_server(&self, id: &str, address: IpAddr) {
        self.admin(
            reqwest::Method::POST,
            "/v1/servers",
            Some(json!({"id": id, "address": address.to_string()})),
        )
        .await;
    }

    pub async fn create_pod(&self, slug: &str, owner: &str, server: &str, port: u16, status: &str) {
        self.admin(
            reqwest::Method::POST,
            "/v1/pods",
            Some(json!({"slug": slug, "owner_id": owner, "server_id": server, "nginx_port": port, "status": status})),
        )
        .await;
    }

    pub async fn set_status(&self, slug: &str, status: &str) {
        self.admin(
            reqwest::Method::PUT,
            &format!("/v1/pods/{slug}/status"),
            Some(json!({ "status": status })),
        )
        .await;
    }

    /// A dev-login session cookie for `user`.
    pub async fn session(&self, user: &str) -> String {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(format!("http://{}/dev/login?user={user}&next=/", self.http))
            .send()
            .await
            .unwrap();
        let cookie = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.contains("podgate_session="))
            .unwrap_or_else(|| panic!("no session cookie from /dev/login: {resp:?}"));
        cookie.split(';').next().unwrap().to_owned()
    }

    /// `POST /v1/capabilities` with a session cookie: the token.
    pub async fn mint(&self, session: &str, pod: &str) -> Result<String, String> {
        let resp = self
            .http_client
            .post(format!("http://{}/v1/capabilities", self.http))
            .header(reqwest::header::COOKIE, session)
            .json(&json!({"pod": pod, "port": APP_PORT}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("mint {pod}: {status} {body}"));
        }
        Ok(body["token"].as_str().unwrap().to_owned())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.proc.kill();
    }
}

/// A running Envoy on `envoy/podgate.yaml` with ephemeral ports (the test kit's: killed on
/// drop, its files kept when a test fails).
pub struct Envoy {
    inner: podgate_testkit::Envoy,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
}

impl Envoy {
    /// Starts Envoy against the control plane's ADS and HTTP ports, and waits for `/ready`.
    pub async fn start(listener_port: u16, xds_port: u16, cp_http_port: u16) -> Envoy {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Envoy::start_with(
            "xds-live",
            local(listener_port),
            &[local(xds_port)],
            &[local(cp_http_port)],
        )
        .await
    }

    /// Starts Envoy (node id `label`) with its listener on `listener`, taking its configuration
    /// from any of the control planes whose ADS addresses are `xds` and whose HTTP addresses are
    /// `http`, and waits for `/ready`.
    pub async fn start_with(
        label: &str,
        listener: SocketAddr,
        xds: &[SocketAddr],
        http: &[SocketAddr],
    ) -> Envoy {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let rendered = podgate_testkit::AdsBootstrap::load()
            .and_then(|mut b| {
                b.admin(admin)?
                    .listener(listener)?
                    .node_id(label)?
                    .control_planes(xds, http)?;
                b.to_yaml()
            })
            .unwrap_or_else(|e| panic!("{e:#}"));
        let inner = podgate_testkit::Envoy::start(label, &rendered, 1)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        Envoy {
            inner,
            listener,
            admin,
        }
    }

    /// The test kit's handle (admin API, log, pid).
    pub fn inner(&self) -> &podgate_testkit::Envoy {
        &self.inner
    }

    pub fn log(&self) -> String {
        self.inner.log()
    }

    /// One GET on the admin API (`/config_dump`, ...), as text.
    pub async fn admin_get(&self, path_and_query: &str) -> String {
        self.inner.admin_get(path_and_query).await.unwrap()
    }

    /// A stat counter from the admin API (0 when absent).
    pub async fn stat(&self, name: &str) -> u64 {
        self.inner.counter(name).await.unwrap()
    }
}

/// The public host of `pod`'s app port.
pub fn pod_host(pod: &str) -> String {
    format!("localhost-{APP_PORT}-pod-{pod}.localhost")
}

/// An answer through Envoy: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// Which fake pod answered (its JSON answer names it), if one did.
    pub fn pod(&self) -> Option<String> {
        let v: Value = serde_json::from_str(&self.body).ok()?;
        v["pod"].as_str().map(str::to_owned)
    }
}

/// `GET /` on `pod`'s host through Envoy with `token` in the `podgate-token` header.
pub async fn through_envoy(
    http: &reqwest::Client,
    envoy: SocketAddr,
    pod: &str,
    token: &str,
) -> Result<Answer, String> {
    let resp = http
        .get(format!("http://{envoy}/"))
        .header(reqwest::header::HOST, pod_host(pod))
        .header("podgate-token", token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    Ok(Answer { status, body })
}

/// Polls until `check` accepts the answer; the time it took, or the last answer on timeout.
pub async fn until(
    http: &reqwest::Client,
    envoy: SocketAddr,
    pod: &str,
    token: &str,
    within: Duration,
    check: impl Fn(&Answer) -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < within {
        match through_envoy(http, envoy, pod, token).await {
            Ok(a) if check(&a) => return Ok(start.elapsed()),
            Ok(a) => last = format!("{} {}", a.status, a.body),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(format!("not within {within:?}; last answer: {last}"))
}

/// A pod's nginx stand-in that records every request: the test kit's.
pub use podgate_testkit::FakePod;

/// The `kid` in a compact JWS header.
/// The keys the control plane publishes at `path` (a JWKS).
pub async fn published_keys(stack: &Stack, path: &str) -> podgate_protocol::token::KeySet {
    stack
        .http
        .get(format!("http://{}{path}", stack.cp.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// What pod `slug` verifies identity assertions (`x-podgate-assertion`) with: the assertion
/// keys the control plane publishes now, which are public halves of `ast-` keys only, and its
/// own public host.
pub async fn assertion_verifier(
    stack: &Stack,
    slug: &str,
) -> podgate_protocol::assertion::AssertionVerifier {
    use podgate_protocol::assertion::{AssertionVerifier, Audience};
    let jwks = published_keys(stack, "/.well-known/podgate-assertion-jwks.json").await;
    assert!(
        jwks.keys
            .iter()
            .all(|k| k.kid.starts_with("ast-") && k.d.is_none()),
        "{jwks:?}"
    );
    let issuer = format!("http://{}", stack.cp.http);
    AssertionVerifier::new(issuer, &jwks, Audience::Host(pod_host(slug)), 5).unwrap()
}

pub fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

/// The whole stack: control plane, Envoy, one user with a session, one server on 127.0.0.1.
pub struct Stack {
    pub cp: ControlPlane,
    pub envoy: Envoy,
    pub session: String,
    pub http: reqwest::Client,
}

pub const USER: &str = "alice";
pub const SERVER: &str = "server-a";

impl Stack {
    pub async fn start(extra_args: &[&str]) -> Stack {
        let envoy_port = free_port();
        let cp = ControlPlane::start(envoy_port, extra_args).await;
        let envoy = Envoy::start(envoy_port, cp.xds.port(), cp.http.port()).await;
        cp.create_user(USER).await;
        cp.create_server(SERVER, IpAddr::from([127, 0, 0, 1])).await;
        let session = cp.session(USER).await;
        Stack {
            cp,
            envoy,
            session,
            http: client(),
        }
    }

    pub async fn mint(&self, pod: &str) -> String {
        self.cp.mint(&self.session, pod).await.unwrap()
    }

    pub fn logs(&self) -> String {
        format!(
            "--- podgate ---\n{}\n--- envoy ---\n{}",
            self.cp.log(),
            self.envoy.log()
        )
    }
}

/// A client that does not follow redirects, for stepping through the browser flow.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A GET through Envoy on `pod`'s host: status, `Location`, `Set-Cookie`s and body.
pub async fn get_on_pod(
    http: &reqwest::Client,
    envoy: SocketAddr,
    pod: &str,
    path_and_query: &str,
    cookie: Option<&str>,
) -> (u16, Option<String>, Vec<String>, String) {
    get_on_host(http, envoy, &pod_host(pod), path_and_query, cookie).await
}

/// Service `name`'s public host.
pub fn service_host(name: &str) -> String {
    format!("svc-{name}.localhost")
}

/// `GET path` on service `name`'s host through Envoy, as a script, with `headers`: the status
/// and the body.
pub async fn get_service(
    stack: &Stack,
    name: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = stack
        .http
        .get(format!("http://{}{path}", stack.envoy.listener))
        .header(HOST, service_host(name));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Polls [`get_service`] until it is answered `want` (a change reaching Envoy takes a push);
/// fails with the stack's logs after `within`.
pub async fn until_service_status(
    stack: &Stack,
    name: &str,
    path: &str,
    headers: &[(&str, &str)],
    want: u16,
    within: Duration,
) {
    let start = Instant::now();
    loop {
        let (status, body) = get_service(stack, name, path, headers).await;
        if status == want {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{name}{path}: still {status} {body}\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `POST /api/proxy-tokens` with `session`: `(id, token)`.
pub async fn create_api_token(stack: &Stack, session: &str, name: &str) -> (String, String) {
    let resp = stack
        .http
        .post(format!("http://{}/api/proxy-tokens", stack.cp.http))
        .header(COOKIE, session)
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let body: Value = resp.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

/// A GET through Envoy on `host` as a browser page load (`Accept: text/html`): status,
/// `Location`, `Set-Cookie`s and body.
pub async fn get_on_host(
    http: &reqwest::Client,
    envoy: SocketAddr,
    host: &str,
    path_and_query: &str,
    cookie: Option<&str>,
) -> (u16, Option<String>, Vec<String>, String) {
    let mut req = http
        .get(format!("http://{envoy}{path_and_query}"))
        .header(HOST, host)
        .header(ACCEPT, "text/html");
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let cookies = resp
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    (status, location, cookies, resp.text().await.unwrap())
}

/// The browser flow through Envoy: a page load without a capability, the redirect to the
/// control plane with the session, the callback on the pod host. Returns the capability
/// cookie (`podgate_cap=...`).
pub async fn sign_in_through_envoy(stack: &Stack, pod: &str, session: &str) -> String {
    sign_in_on_host(stack, &pod_host(pod), "/", session, None)
        .await
        .unwrap_or_else(|(status, body)| panic!("proxy-auth refused: {status} {body}"))
}

/// [`sign_in_through_envoy`] on any public `host`, for a page load of `path` with the cookie
/// `cookie` already held: the capability cookie, or the control plane's refusal at
/// `/api/proxy-auth` (status and body).
pub async fn sign_in_on_host(
    stack: &Stack,
    host: &str,
    path: &str,
    session: &str,
    cookie: Option<&str>,
) -> Result<String, (u16, String)> {
    let http = no_redirects();
    let envoy = stack.envoy.listener;
    let (status, location, _, body) = get_on_host(&http, envoy, host, path, cookie).await;
    assert_eq!(status, 302, "{body}");
    let auth = location.unwrap();
    assert!(auth.contains("/api/proxy-auth?"), "{auth}");
    let resp = http
        .get(&auth)
        .header(COOKIE, session)
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    if status != 302 {
        return Err((status, resp.text().await.unwrap()));
    }
    let callback = url::Url::parse(resp.headers()[LOCATION].to_str().unwrap()).unwrap();
    assert_eq!(callback.path(), "/.podgate/callback");
    let path = format!("{}?{}", callback.path(), callback.query().unwrap());
    let (status, _, cookies, body) = get_on_host(&http, envoy, host, &path, None).await;
    assert_eq!(status, 302, "{body}");
    let cap = cookies
        .iter()
        .find(|c| c.starts_with("podgate_cap="))
        .unwrap_or_else(|| panic!("no capability cookie: {cookies:?}"));
    Ok(cap.split(';').next().unwrap().to_owned())
}

/// Sends `request` on a new connection to Envoy; the connection once the answer's head, which
/// starts with `status_line`, was read.
pub async fn open_raw(
    envoy: SocketAddr,
    request: &str,
    status_line: &str,
) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(envoy).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            conn.read(&mut byte).await.unwrap(),
            1,
            "closed before the answer"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with(status_line), "{head}");
    conn
}

/// Waits until Envoy closes `conn` (a reset or an end of stream); how long it took.
pub async fn until_closed(conn: &mut tokio::net::TcpStream, within: Duration) -> Duration {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(within.saturating_sub(start.elapsed()), conn.read(&mut buf))
            .await
        {
            Err(_) => panic!("the stream is still open {within:?} later"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// One masked text frame out on the open WebSocket `conn` (the fake pod echoes), its echo back.
pub async fn ws_echo(conn: &mut tokio::net::TcpStream, text: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    conn.write_all(&frame).await.unwrap();
    let mut head = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut head))
        .await
        .expect("no echo within 5 s")
        .expect("the WebSocket was closed");
    assert_eq!(head[0], 0x81, "{head:?}");
    let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
    conn.read_exact(&mut payload).await.unwrap();
    String::from_utf8(payload).unwrap()
}

/// The value of the sample `name` whose labels include `labels`, in a scrape of `/metrics`.
pub fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => panic!("{name} is a summary"),
        })
        .sum()
}

/// [`sample`] of `name` with `labels` in the control plane's `/metrics` now.
pub async fn cp_metric(stack: &Stack, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = stack
        .http
        .get(format!("http://{}/metrics", stack.cp.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    sample(&scrape, name, labels)
}
