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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use podgate_demo_pod::DemoPod;
use reqwest::header::HeaderValue;
use serde_json::json;

use super::client::{EnvoyClient, WsOutcome};
pub use super::control_plane::*;
use super::envoy::Envoy;
use super::web_client::WebClient;

/// The ADS bootstrap users run, relative to the workspace root.
pub use podgate_testkit::ads_bootstrap::ADS_BOOTSTRAP;
/// The suite's base domain (see the module docs).
pub const DOMAIN: &str = "podgate.localhost";
/// How long a change made through the admin API may take to reach Envoy.
pub const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(20);
/// The session cookie of the control plane.
pub const SESSION_COOKIE: &str = "podgate_session";
/// The capability cookie on pod hosts (over http).
pub const CAP_COOKIE: &str = "podgate_cap";

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
