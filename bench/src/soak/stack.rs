//! What the soak runs against, all real and on loopback: `podgate serve` replicas (two on one
//! PostgreSQL database, or one on SQLite), one Envoy per replica on `envoy/podgate.yaml` fed
//! over ADS by its replica, and the test kit's fake pods; plus the admin API calls that seed
//! users, a team, a server and the pods.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use podgate_testkit::{Envoy, FakePod, Podgate};
use serde_json::{json, Value};

/// The admin token of every replica.
pub const ADMIN_TOKEN: &str = "soak-admin-token-0123456789abcdef0123456789abcdef";
/// The pod port every request goes to (shared with the team).
pub const APP_PORT: u16 = 3000;
/// A failure budget high enough that the refusals the soak asks for (revoked API tokens,
/// signed-out sessions) never turn into the rate limiter's 429s: every client is 127.0.0.1.
const FAILURE_BURST: &str = "1000000";

/// A loopback port nobody listens on right now (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(podgate_testkit::free_port()?)
}

/// What the stack is started with.
#[derive(Debug, Clone)]
pub struct StackSettings {
    pub podgate: PathBuf,
    pub envoy: PathBuf,
    pub filter_wasm: PathBuf,
    /// `postgres://…`: two replicas on it; `None`: one replica on SQLite.
    pub postgres: Option<String>,
    pub pods: usize,
}

/// One `podgate serve` and the Envoy it feeds.
pub struct Replica {
    pub cp: Podgate,
    pub envoy: Envoy,
    /// Envoy's `podgate_http` listener.
    pub listener: SocketAddr,
}

/// The running stack.
pub struct Stack {
    pub replicas: Vec<Replica>,
    pub pods: Vec<FakePod>,
    /// `--database-url` of every replica.
    pub database_url: String,
    /// The key-encryption key file every replica reads.
    pub kek: PathBuf,
    pub podgate: PathBuf,
}

impl Stack {
    pub async fn start(settings: &StackSettings) -> anyhow::Result<Stack> {
        let count = if settings.postgres.is_some() { 2 } else { 1 };
        let https: Vec<SocketAddr> = (0..count)
            .map(|_| free_port().map(|p| SocketAddr::from(([127, 0, 0, 1], p))))
            .collect::<anyhow::Result<_>>()?;
        // One issuer for every replica: a capability minted by one verifies at every Envoy.
        let issuer = format!("http://{}", https[0]);
        let mut replicas = Vec::new();
        let mut kek: Option<PathBuf> = None;
        let mut database_url = String::new();
        for (i, http) in https.iter().enumerate() {
            let xds = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let listener_port = free_port()?;
            let mut builder = Podgate::builder(&format!("soak-{i}"), &settings.podgate)
                .listen(*http)
                .args(["--xds-listen", &xds.to_string()])
                .args(["--admin-token", ADMIN_TOKEN, "--dev-mode"])
                .args(["--issuer", &issuer])
                .args(["--pod-public-port", &listener_port.to_string()])
                .arg("--filter-wasm")
                .arg(&settings.filter_wasm)
                .args(["--capability-failures-burst", FAILURE_BURST])
                .args(["--capability-failures-per-minute", FAILURE_BURST])
                .args(["--api-token-failures-burst", FAILURE_BURST])
                .args(["--api-token-failures-per-minute", FAILURE_BURST])
                .env("RUST_LOG", "warn")
                .env_remove("PODGATE_CONFIG")
                .ready_timeout(Duration::from_secs(90));
            if let Some(url) = &settings.postgres {
                builder = builder.database_url(url.clone());
            }
            builder = match &kek {
                None => builder.generate_kek(),
                Some(path) => builder
                    .arg("--key-encryption-key-file")
                    .arg(path.as_os_str()),
            };
            let cp = builder.start().await?;
            if kek.is_none() {
                kek = Some(cp.kek());
                database_url = match &settings.postgres {
                    Some(url) => url.clone(),
                    None => format!("sqlite://{}", cp.dir().join("podgate.db").display()),
                };
            }
            let bootstrap = render_bootstrap(listener_port, xds.port(), http.port())?;
            let envoy = Envoy::builder(&format!("soak-envoy-{i}"), &bootstrap)
                .binary(&settings.envoy)
                .concurrency(1)
                .log_level("warn")
                .start()
                .await
                .map_err(|e| anyhow!("{e:#}\n{}", cp.log_tail()))?;
            replicas.push(Replica {
                cp,
                envoy,
                listener: SocketAddr::from(([127, 0, 0, 1], listener_port)),
            });
        }
        let mut pods = Vec::new();
        for k in 0..settings.pods {
            pods.push(FakePod::start(&format!("soak-pod-{k}")).await?);
        }
        Ok(Stack {
            replicas,
            pods,
            database_url,
            kek: kek.ok_or_else(|| anyhow!("no replica started"))?,
            podgate: settings.podgate.clone(),
        })
    }

    /// Every process whose memory the report follows: (name, pid).
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut all = Vec::new();
        for (i, r) in self.replicas.iter().enumerate() {
            if let Some(pid) = r.cp.pid() {
                all.push((format!("podgate-{i}"), pid));
            }
            all.push((format!("envoy-{i}"), r.envoy.pid()));
        }
        all
    }

    /// The end of every log, for failure messages.
    pub fn log_tails(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("{}\n{}", r.cp.log_tail(), r.envoy.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `podgate keys rotate` as an operator runs it: another process on the same database.
    pub async fn rotate_keys_cli(&self) -> anyhow::Result<()> {
        let mut command = tokio::process::Command::new(&self.podgate);
        command
            .args(["keys", "rotate", "--database-url", &self.database_url])
            .arg("--key-encryption-key-file")
            .arg(&self.kek)
            .env_remove("PODGATE_CONFIG");
        let out = command
            .output()
            .await
            .context("running podgate keys rotate")?;
        if !out.status.success() {
            bail!(
                "podgate keys rotate failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// `envoy/podgate.yaml` rendered for the soak: the admin on an ephemeral port, the listener on
/// `listener_port`, ADS on `xds_port`, the control plane's HTTP on `cp_http_port`, plain TCP to
/// the control plane, and no access log.
fn render_bootstrap(
    listener_port: u16,
    xds_port: u16,
    cp_http_port: u16,
) -> anyhow::Result<String> {
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    podgate_testkit::AdsBootstrap::load()?
        .listener(loopback(listener_port))?
        .control_planes(&[loopback(xds_port)], &[loopback(cp_http_port)])?
        .without_access_log()?
        .to_yaml()
}

/// The public host of `slug`'s app port (default domain and template).
pub fn pod_host(slug: &str) -> String {
    format!("localhost-{APP_PORT}-pod-{slug}.localhost")
}

/// A replica's HTTP API: the admin calls with the admin token, the user calls with a session.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(addr: SocketAddr, http: reqwest::Client) -> Api {
        Api {
            base: format!("http://{addr}"),
            http,
        }
    }

    /// One admin call that must succeed.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
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
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("admin {method} {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET /dev/login?user=…`: the session cookie (`podgate_session=…`).
    pub async fn sign_in(&self, user: &str) -> anyhow::Result<String> {
        let resp = self
            .http
            .get(format!("{}/dev/login?user={user}", self.base))
            .send()
            .await?;
        let status = resp.status().as_u16();
        resp.headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("podgate_session="))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("/dev/login as {user} answered {status} without a session"))
    }

    /// `GET /dev/logout` with the session: its status.
    pub async fn sign_out(&self, session: &str) -> anyhow::Result<u16> {
        let resp = self
            .http
            .get(format!("{}/dev/logout", self.base))
            .header(reqwest::header::COOKIE, session)
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }

    /// `POST /v1/capabilities` with a session: the status and the token when one came.
    pub async fn mint(&self, session: &str, slug: &str) -> anyhow::Result<(u16, Option<String>)> {
        let resp = self
            .http
            .post(format!("{}/v1/capabilities", self.base))
            .header(reqwest::header::COOKIE, session)
            .json(&json!({"pod": slug, "port": APP_PORT}))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body["token"].as_str().map(str::to_owned)))
    }

    /// `POST /api/proxy-tokens` with a session: `(id, token)`.
    pub async fn create_api_token(
        &self,
        session: &str,
        name: &str,
    ) -> anyhow::Result<(String, String)> {
        let resp = self
            .http
            .post(format!("{}/api/proxy-tokens", self.base))
            .header(reqwest::header::COOKIE, session)
            .json(&json!({"name": name, "expires_in_days": 1}))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        match (body["id"].as_str(), body["token"].as_str()) {
            (Some(id), Some(token)) if status == 201 => Ok((id.to_owned(), token.to_owned())),
            _ => bail!("POST /api/proxy-tokens answered {status}: {body}"),
        }
    }

    /// `DELETE /api/proxy-tokens/{id}` with a session.
    pub async fn revoke_api_token(&self, session: &str, id: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .delete(format!("{}/api/proxy-tokens/{id}", self.base))
            .header(reqwest::header::COOKIE, session)
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "DELETE /api/proxy-tokens/{id} answered {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// The people and pods of one run (ids carry the run's tag).
#[derive(Debug, Clone)]
pub struct Seed {
    pub users: Vec<String>,
    pub slugs: Vec<String>,
}

/// Users `…u0…`, one team holding them all, a server on 127.0.0.1, and one running pod per fake
/// pod, owned by the first user, in the team, its app port shared with the team.
pub async fn seed(api: &Api, tag: &str, users: usize, pods: &[FakePod]) -> anyhow::Result<Seed> {
    use reqwest::Method;
    let users: Vec<String> = (0..users).map(|i| format!("{tag}u{i}")).collect();
    for u in &users {
        api.admin(
            Method::POST,
            "/v1/users",
            Some(json!({"id": u, "email": format!("{u}@example.dev"), "name": u})),
        )
        .await?;
    }
    let team = format!("{tag}team");
    api.admin(
        Method::POST,
        "/v1/teams",
        Some(json!({"id": team, "name": "soak team"})),
    )
    .await?;
    for (i, u) in users.iter().enumerate() {
        let role = if i == 0 { "owner" } else { "member" };
        api.admin(
            Method::POST,
            &format!("/v1/teams/{team}/members"),
            Some(json!({"user_id": u, "role": role})),
        )
        .await?;
    }
    let server = format!("{tag}server");
    api.admin(
        Method::POST,
        "/v1/servers",
        Some(json!({"id": server, "name": "soak server", "address": "127.0.0.1"})),
    )
    .await?;
    let mut slugs = Vec::new();
    for (k, pod) in pods.iter().enumerate() {
        let slug = format!("{tag}p{k}");
        api.admin(
            Method::POST,
            "/v1/pods",
            Some(json!({
                "slug": slug,
                "owner_id": users[0],
                "team_id": team,
                "server_id": server,
                "status": "running",
                "nginx_port": pod.addr().port(),
            })),
        )
        .await?;
        api.admin(
            Method::PUT,
            &format!("/v1/pods/{slug}/ports/{APP_PORT}"),
            Some(json!({"sharing": "team", "label": "app"})),
        )
        .await?;
        slugs.push(slug);
    }
    Ok(Seed { users, slugs })
}

/// Waits until every Envoy forwards a request with a fresh capability to every pod: the filter
/// and the pod directory arrived over ADS.
pub async fn wait_reachable(
    stack: &Stack,
    api: &Api,
    seed: &Seed,
    timeout: Duration,
) -> anyhow::Result<()> {
    let session = api.sign_in(&seed.users[0]).await?;
    let deadline = Instant::now() + timeout;
    for slug in &seed.slugs {
        let token = loop {
            match api.mint(&session, slug).await? {
                (_, Some(token)) => break token,
                (status, None) if Instant::now() >= deadline => {
                    bail!("no capability for {slug} (last answer {status})")
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        for replica in &stack.replicas {
            let mut last;
            loop {
                let answer = api
                    .http
                    .get(format!("http://{}/api/info", replica.listener))
                    .header(reqwest::header::HOST, pod_host(slug))
                    .header("podgate-token", &token)
                    .send()
                    .await;
                match answer {
                    Ok(a) if a.status().as_u16() == 200 => break,
                    Ok(a) => last = a.status().to_string(),
                    Err(e) => last = e.to_string(),
                }
                if Instant::now() >= deadline {
                    bail!(
                        "pod {slug} never reachable through {} (last answer {last})\n{}",
                        replica.listener,
                        stack.log_tails()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    api.sign_out(&session).await?;
    Ok(())
}

/// Resident memory of `pid` in KiB (`VmRSS`), if it is still there.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
