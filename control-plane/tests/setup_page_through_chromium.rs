//! The setup page (`/setup`) in a real headless Chromium (the test kit's WebDriver client): a
//! user signed in with the dev login sees their pod with its labelled port as a link and any
//! other port to open, creates an API token with a name and lifetime, is shown the one-line
//! install command once (copied with the button), sees the token listed, and revokes it; the
//! revoked token no longer works. The page carries the control plane's security headers with a
//! CSP that allows only its own script and fetches. A screenshot is kept in
//! `artifacts/browser/setup-page.png`.
//!
//! Needs Chromium and chromedriver (`bash scripts/browser-deps.sh`); without them it skips
//! loudly, under `CI=true` it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod xds_support;

use std::net::IpAddr;
use std::time::Duration;

use podgate_testkit::webdriver::{browser_or_skip, save_artifact, Browser};
use reqwest::Method;
use serde_json::{json, Value};
use xds_support::{client, free_port, ControlPlane, SERVER, USER};

const POD: &str = "setup-pod";
const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_page_lists_pods_and_creates_shows_once_and_revokes_tokens() {
    if browser_or_skip().is_none() {
        return;
    }
    let cp = ControlPlane::start(free_port(), &[]).await;
    cp.create_user(USER).await;
    cp.create_server(SERVER, IpAddr::from([127, 0, 0, 1])).await;
    cp.create_pod(POD, USER, SERVER, 30999, "running").await;
    cp.admin(
        Method::PUT,
        &format!("/v1/pods/{POD}/ports/8726"),
        Some(json!({"sharing": "owner", "label": "web page"})),
    )
    .await;
    let base = format!("http://{}", cp.http);

    // The page's headers: the control plane's, with its own CSP.
    let resp = client().get(format!("{base}/setup")).send().await.unwrap();
    let h = resp.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-eval") && !csp.contains("script-src 'unsafe-inline'"));
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    // Other HTML keeps the script-less CSP.
    let other = client()
        .get(format!("{base}/p/eyJ0IjoieCJ9"))
        .send()
        .await
        .unwrap();
    assert!(!other.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src"));

    let browser = Browser::start((1100, 900)).await.unwrap();
    // Signed out: the page says so and links to the sign-in.
    browser.goto(&format!("{base}/setup")).await.unwrap();
    browser
        .wait_for("return !document.getElementById('signed-out').hidden", WAIT)
        .await
        .unwrap();
    let sign_in = browser
        .execute("return document.getElementById('sign-in').href")
        .await
        .unwrap();
    let sign_in = sign_in.as_str().unwrap();
    assert!(
        sign_in.starts_with(&format!("{base}/dev/login?next=http%3A//"))
            && sign_in.ends_with("/setup"),
        "{sign_in}"
    );

    browser
        .goto(&format!("{base}/dev/login?user={USER}&next=/setup"))
        .await
        .unwrap();
    browser
        .wait_for("return document.body.dataset.ready === 'true'", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cp.log()));
    let who = browser
        .execute("return document.getElementById('who').textContent")
        .await
        .unwrap();
    assert_eq!(who, "alice <alice@example.dev>");
    let link = browser
        .execute(&format!(
            "var a = document.querySelector('li[data-pod=\"{POD}\"] a'); return a && [a.href, a.textContent]"
        ))
        .await
        .unwrap();
    assert_eq!(
        link[0],
        format!(
            "http://localhost-8726-pod-{POD}.localhost:{}/",
            cp.envoy_port
        )
    );
    assert!(link[1].as_str().unwrap().contains("web page"), "{link}");

    // Create a token: the install command is shown once.
    browser
        .execute(
            "document.getElementById('name').value = 'laptop';\
             document.getElementById('days').value = '7';\
             document.getElementById('create').click();",
        )
        .await
        .unwrap();
    let command = browser
        .wait_for(
            "var c = document.getElementById('created'); return !c.hidden && document.getElementById('command').textContent",
            WAIT,
        )
        .await
        .unwrap();
    let command = command.as_str().unwrap().to_owned();
    let prefix = format!("curl -fsSL \"{base}/api/download/install.sh?init_url=");
    assert!(
        command.starts_with(&prefix) && command.ends_with("\" | bash"),
        "{command}"
    );
    let encoded = &command[prefix.len()..command.len() - "\" | bash".len()];
    assert!(
        encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"%-_.~".contains(&b)),
        "{encoded}"
    );
    let init_url: String = url::form_urlencoded::parse(format!("u={encoded}").as_bytes())
        .next()
        .unwrap()
        .1
        .into_owned();
    assert!(init_url.starts_with(&format!("{base}/p/")), "{init_url}");
    // The command is what the installer takes.
    let script = client()
        .get(format!("{base}/api/download/install.sh?init_url={encoded}"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status().as_u16(), 200);

    browser
        .execute("document.getElementById('copy').click();")
        .await
        .unwrap();
    browser
        .wait_for(
            "return document.getElementById('copied').textContent.length > 0",
            WAIT,
        )
        .await
        .unwrap();
    let row = browser
        .wait_for(
            "var r = document.querySelector('tr[data-state=active]'); return r && r.textContent",
            WAIT,
        )
        .await
        .unwrap();
    assert!(row.as_str().unwrap().contains("laptop"), "{row}");
    let png = browser.screenshot().await.unwrap();
    let path = save_artifact("browser", "setup-page.png", &png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // The token works, until revoked on the page.
    let token = {
        use base64::Engine;
        let config = init_url.rsplit('/').next().unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(config)
            .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v["t"].as_str().unwrap().to_owned()
    };
    let me = |token: String| {
        let url = format!("{base}/api/me");
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(me(token.clone()).await, 200);
    // A reload shows the list, not the command again.
    browser.goto(&format!("{base}/setup")).await.unwrap();
    browser
        .wait_for("return document.body.dataset.ready === 'true'", WAIT)
        .await
        .unwrap();
    let shown = browser
        .execute("return document.getElementById('created').hidden && document.body.textContent.indexOf('pg_') < 0")
        .await
        .unwrap();
    assert_eq!(shown, true);
    browser
        .execute(
            "window.confirm = function () { return true; };\
             document.querySelector('tr[data-state=active] button.revoke').click();",
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "return document.querySelector('tr[data-state=revoked]') !== null",
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(me(token).await, 401);
    browser.quit().await;
}
