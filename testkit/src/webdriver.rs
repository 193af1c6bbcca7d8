//! A real browser for the browser tests: Debian's headless Chromium driven over W3C WebDriver
//! by Debian's `chromedriver` (the same version as the browser), with a small JSON client on
//! reqwest: enough to navigate, find elements, switch into an iframe, read text, run a script,
//! read and delete the current page's cookies, and take a screenshot.
//!
//! Install both with `scripts/browser-deps.sh`. Without them [`browser_paths`] says how, and
//! [`browser_or_skip`] fails the test under `CI=true` and skips it loudly otherwise.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value as Json};

/// A free loopback port for chromedriver.
fn free_port() -> anyhow::Result<u16> {
    Ok(crate::ports::free_port()?)
}

/// The W3C key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium and chromedriver: `$PODGATE_CHROMIUM` / `$PODGATE_CHROMEDRIVER`, else Debian's.
pub fn browser_paths() -> anyhow::Result<(PathBuf, PathBuf)> {
    let pick = |var: &str, default: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    };
    let chromium = pick("PODGATE_CHROMIUM", "/usr/bin/chromium");
    let driver = pick("PODGATE_CHROMEDRIVER", "/usr/bin/chromedriver");
    let missing: Vec<String> = [&chromium, &driver]
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found: the browser test needs Debian's chromium and chromium-driver; run \
             `bash scripts/browser-deps.sh` (apt-get) or set PODGATE_CHROMIUM / PODGATE_CHROMEDRIVER",
            missing.join(" and ")
        );
    }
    Ok((chromium, driver))
}

/// `Some(())` when Chromium and chromedriver are installed. When they are missing: a panic under
/// `CI=true` (CI must run the browser tests), else `None` after a loud note on stderr (skip).
// Called by a test, as its first line: the panic is that test's failure.
#[allow(clippy::panic)]
pub fn browser_or_skip() -> Option<()> {
    match browser_paths() {
        Ok(_) => Some(()),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and the browser test cannot run: {e:#}")
        }
        Err(e) => {
            // Straight to stderr, past the test harness's capture: a skip must be seen.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 SKIPPED the real-browser test: {e:#}\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            None
        }
    }
}

/// A PNG (or any artifact) kept for people to look at: `<workspace>/artifacts/<sub>/<name>`
/// (git-ignored); returns its path.
pub fn save_artifact(sub: &str, name: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let dir = crate::workspace_root().join("artifacts").join(sub);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A running chromedriver with one headless Chromium session. Both stop when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: PathBuf,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("base", &self.base)
            .field("session", &self.session)
            .finish()
    }
}

/// An element reference.
#[derive(Debug, Clone)]
pub struct Element(Json);

impl Browser {
    /// Starts chromedriver on a loopback port and a headless Chromium session with a fresh
    /// profile (`window` = width, height).
    pub async fn start(window: (u32, u32)) -> anyhow::Result<Browser> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let (chromium, driver_path) = browser_paths()?;
        let port = free_port()?;
        let profile = std::env::temp_dir().join(format!(
            "podgate-chromium-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&profile);
        fs::create_dir_all(&profile)?;
        let log = fs::File::create(profile.join("chromedriver.log"))?;
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", driver_path.display()))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let base = format!("http://{addr}");
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            profile,
        };
        browser.wait_driver().await?;
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!(
                "--user-data-dir={}",
                browser.profile.join("profile").display()
            ),
            format!("--window-size={},{}", window.0, window.1),
        ];
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium.display().to_string(),
                        "args": args,
                    }
                }
            }
        });
        let value = browser
            .call(reqwest::Method::POST, "/session", Some(caps))
            .await?;
        browser.session = value["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("chromedriver gave no sessionId: {value}"))?
            .to_owned();
        Ok(browser)
    }

    async fn wait_driver(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                bail!("chromedriver exited with {status}: {}", self.driver_log());
            }
            if let Ok(resp) = self.http.get(format!("{}/status", self.base)).send().await {
                if let Ok(body) = resp.json::<Json>().await {
                    if body["value"]["ready"] == true {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("chromedriver was not ready in 20 s: {}", self.driver_log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// chromedriver's log.
    pub fn driver_log(&self) -> String {
        fs::read_to_string(self.profile.join("chromedriver.log")).unwrap_or_default()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> anyhow::Result<Json> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        // WebDriver wants a JSON body on every POST, `{}` when there is nothing to say.
        if method == reqwest::Method::POST {
            req = req.json(&body.unwrap_or_else(|| json!({})));
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("WebDriver {method} {path}"))?;
        let status = resp.status();
        let body: Json = resp
            .json()
            .await
            .with_context(|| format!("WebDriver {method} {path}: answer is not JSON"))?;
        if !status.is_success() {
            bail!(
                "WebDriver {method} {path} failed ({status}): {}",
                body["value"]
            );
        }
        Ok(body["value"].clone())
    }

    async fn session_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> anyhow::Result<Json> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    /// Navigates the top-level page and waits for it to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.session_call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(|_| ())
    }

    /// The top-level page's URL.
    pub async fn current_url(&self) -> anyhow::Result<String> {
        Ok(self
            .session_call(reqwest::Method::GET, "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The first element matching a CSS selector in the current frame.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        let value = self
            .session_call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(Element(value))
    }

    /// An element's rendered text.
    pub async fn text(&self, element: &Element) -> anyhow::Result<String> {
        let id = element.0[ELEMENT_KEY]
            .as_str()
            .ok_or_else(|| anyhow!("not an element reference: {}", element.0))?;
        Ok(self
            .session_call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Switches into an iframe element of the current frame.
    pub async fn enter_frame(&self, frame: &Element) -> anyhow::Result<()> {
        self.session_call(
            reqwest::Method::POST,
            "/frame",
            Some(json!({ "id": frame.0 })),
        )
        .await
        .map(|_| ())
    }

    /// Back to the top-level page.
    pub async fn leave_frames(&self) -> anyhow::Result<()> {
        self.session_call(reqwest::Method::POST, "/frame", Some(json!({ "id": null })))
            .await
            .map(|_| ())
    }

    /// Runs a script in the current frame; its return value.
    pub async fn execute(&self, script: &str) -> anyhow::Result<Json> {
        self.session_call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Polls `script` (run in the current frame) until it returns a truthy value.
    pub async fn wait_for(&self, script: &str, timeout: Duration) -> anyhow::Result<Json> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.execute(script).await.unwrap_or(Json::Null);
            let truthy = match &value {
                Json::Null => false,
                Json::Bool(b) => *b,
                Json::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                bail!("waited {timeout:?} for `{script}`");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The cookies the current page's URL would be sent (HttpOnly ones included), as
    /// WebDriver's cookie objects (`name`, `value`, `domain`, `path`, `httpOnly`, ...).
    pub async fn cookies(&self) -> anyhow::Result<Vec<Json>> {
        let value = self
            .session_call(reqwest::Method::GET, "/cookie", None)
            .await?;
        Ok(value.as_array().cloned().unwrap_or_default())
    }

    /// Deletes the current page's cookie `name`.
    pub async fn delete_cookie(&self, name: &str) -> anyhow::Result<()> {
        self.session_call(reqwest::Method::DELETE, &format!("/cookie/{name}"), None)
            .await
            .map(|_| ())
    }

    /// The current window's handle (for `switch_to_window`).
    pub async fn window_handle(&self) -> anyhow::Result<String> {
        let value = self
            .session_call(reqwest::Method::GET, "/window", None)
            .await?;
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the window handle is not a string: {value}"))
    }

    /// Opens another top-level window (not a tab, so the current page stays visible and its
    /// timers are not throttled) and switches to it; its handle.
    pub async fn new_window(&self) -> anyhow::Result<String> {
        let value = self
            .session_call(
                reqwest::Method::POST,
                "/window/new",
                Some(json!({"type": "window"})),
            )
            .await?;
        let handle = value["handle"]
            .as_str()
            .ok_or_else(|| anyhow!("no handle for the new window: {value}"))?
            .to_owned();
        self.switch_to_window(&handle).await?;
        Ok(handle)
    }

    /// Makes the window `handle` the one later commands act on.
    pub async fn switch_to_window(&self, handle: &str) -> anyhow::Result<()> {
        self.session_call(
            reqwest::Method::POST,
            "/window",
            Some(json!({ "handle": handle })),
        )
        .await
        .map(|_| ())
    }

    /// A PNG screenshot of the page as shown (iframes included).
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        let value = self
            .session_call(reqwest::Method::GET, "/screenshot", None)
            .await?;
        let b64 = value
            .as_str()
            .ok_or_else(|| anyhow!("the screenshot is not a string"))?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("decoding the screenshot")
    }

    /// Ends the session and stops chromedriver.
    pub async fn quit(mut self) {
        let _ = self
            .call(
                reqwest::Method::DELETE,
                &format!("/session/{}", self.session),
                None,
            )
            .await;
        self.session.clear();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Without the session's end Chromium would outlive chromedriver: end it synchronously.
        if !self.session.is_empty() {
            let _ = delete_session_blocking(&self.base, &self.session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = fs::remove_dir_all(&self.profile);
    }
}

/// `DELETE /session/{id}` over a plain blocking socket (usable in `Drop`).
fn delete_session_blocking(base: &str, session: &str) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let addr: SocketAddr = base.trim_start_matches("http://").parse()?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
    Ok(())
}
