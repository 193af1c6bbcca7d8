//! podgate's sign-in and sign-out in a real browser: Debian's headless Chromium (the test kit's
//! WebDriver client over `chromedriver`) opens a pod's page through a real Envoy fed over ADS by
//! the real `podgate` binary; podgate sends it to sign in at a real OpenID provider (npm
//! `oidc-provider`), whose own login and consent pages the test fills in as a person would; back
//! at `/auth/callback`, the capability lands the browser on the pod's page, which shows the
//! signed-in user. The recording pod saw that user and nothing of ours. Then the sign-out link on
//! the pod's page (`/.podgate/logout`) ends the session: the next load of the pod's page goes
//! back through podgate's sign-in (the provider, still signed in itself, answers without a form,
//! and the capability is a new one); signed out again and with the provider's session forgotten,
//! the next load lands on the provider's login page without reaching the pod. Screenshots of the
//! signed-in pod page and of that login page are kept in `artifacts/browser/`.
//!
//! Needs Chromium and chromedriver (`bash scripts/browser-deps.sh`), Node.js and
//! `bash scripts/oidc-provider-deps.sh`, and Envoy and the filter like `xds_live.rs`. Without the
//! browser or the provider it skips loudly; under `CI=true` it fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod xds_support;

use std::time::{Duration, Instant};

use common::oidc_provider::{OidcProvider, WEB};
use podgate_testkit::webdriver::{browser_or_skip, save_artifact, Browser};
use serde_json::{json, Value};
use xds_support::{free_port, pod_host, FakePod, Stack, SERVER};

const POD: &str = "chromium-web";
/// The account that signs in at the provider; podgate knows a user of that id, who owns the pod.
const LOGIN: &str = "erin";

/// One step of a sign-in in the browser, run on whatever page is showing: `pod` once the page
/// is on the pod's origin; on the provider's login form, fills in LOGIN (any password) and
/// submits; on its consent form, submits; `submitted` while a submitted page is still showing
/// (a page submits once); `loading` or `other` otherwise.
const SIGN_IN_STEP: &str = r#"
var origin = arguments[0], login = arguments[1];
if (document.readyState !== 'complete') return 'loading';
if (location.origin === origin) return 'pod';
if (window.__podgateSubmitted) return 'submitted';
var name = document.querySelector('input[name=login]');
if (name) {
  name.value = login;
  document.querySelector('input[name=password]').value = 'any';
  window.__podgateSubmitted = true;
  name.form.querySelector('[type=submit]').click();
  return 'login';
}
var consent = document.querySelector('input[name=prompt][value=consent]');
if (consent) {
  window.__podgateSubmitted = true;
  consent.form.querySelector('[type=submit]').click();
  return 'consent';
}
return 'other';
"#;

/// The text of the page showing (a JSON answer is shown in a `<pre>`).
const PAGE_TEXT: &str = r#"
if (document.readyState !== 'complete') return '';
var pre = document.querySelector('pre');
return pre ? pre.textContent : document.body.innerText;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_at_the_provider_sees_the_pod_and_signs_out() {
    if browser_or_skip().is_none() {
        return;
    }
    let started = Instant::now();
    let Some(Setup {
        stack,
        op,
        pod,
        issuer,
        cp,
        origin,
        page,
        _dir,
    }) = setup(&[]).await
    else {
        return;
    };

    let browser = Browser::start((1000, 720)).await.unwrap();
    let setup = started.elapsed();

    // Sign in: the pod's page → podgate → the provider's login (and consent) → the pod's page.
    browser.goto(&page).await.unwrap();
    let steps = sign_in(&browser, &origin, &stack, &op).await;
    eprintln!("sign-in: the pages the test filled in: {steps:?}");
    let login_at = steps
        .iter()
        .find(|(step, _)| step == "login")
        .map(|(_, url)| url.clone())
        .unwrap_or_else(|| panic!("the provider's login form never showed: {steps:?}"));
    assert!(
        login_at.starts_with(&format!("{issuer}/interaction/")),
        "{steps:?}"
    );
    assert_eq!(browser.current_url().await.unwrap(), page, "{steps:?}");

    // The pod's page as the browser shows it: the pod's echo of the request, as erin.
    let text = browser
        .wait_for(PAGE_TEXT, Duration::from_secs(10))
        .await
        .unwrap();
    let shown: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
    assert_eq!(shown["pod"], "chromium-pod", "{shown}");
    assert_eq!(shown["path"], "/notes?x=1", "{shown}");
    let shown_user = shown["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "x-podgate-user")
        .map(|h| h[1].clone());
    assert_eq!(shown_user, Some(json!(LOGIN)), "{shown}");
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = save_artifact("browser", "sign-in-pod.png", &png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // The capability cookie on the pod's host: HttpOnly, invisible to the pod's script.
    let pod_cookies = browser.cookies().await.unwrap();
    let cap = pod_cookies
        .iter()
        .find(|c| c["name"] == "podgate_cap")
        .unwrap_or_else(|| panic!("no capability cookie: {pod_cookies:?}"));
    assert_eq!(cap["httpOnly"], true, "{cap}");
    assert_eq!(browser.execute("return document.cookie").await.unwrap(), "");
    let mut secrets: Vec<String> = pod_cookies
        .iter()
        .filter_map(|c| c["value"].as_str().map(str::to_owned))
        .collect();

    // The control plane knows erin in this browser too (its session cookie).
    browser.goto(&format!("{cp}/auth/userinfo")).await.unwrap();
    let who: Value = serde_json::from_str(
        browser
            .wait_for(PAGE_TEXT, Duration::from_secs(10))
            .await
            .unwrap()
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(who["user"], LOGIN, "{who}");
    let cp_cookies = browser.cookies().await.unwrap();
    assert!(
        cp_cookies.iter().any(|c| c["name"] == "podgate_session"),
        "{cp_cookies:?}"
    );
    secrets.extend(
        cp_cookies
            .iter()
            .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("podgate")))
            .filter_map(|c| c["value"].as_str().map(str::to_owned)),
    );

    // What reached the pod: the page (and whatever else Chromium asked for on its own, such as
    // /favicon.ico), always as erin, and nothing of ours: no code, state, ticket, cookie or
    // authorization of podgate's.
    let seen = pod.requests();
    assert!(
        seen.iter().any(|r| r.path == "/notes?x=1"),
        "{}",
        pod.describe()
    );
    for r in &seen {
        assert_eq!(r.header("x-podgate-user"), Some(LOGIN), "{r:?}");
        for word in ["code=", "state=", "ticket", "iss=", "/.podgate/"] {
            assert!(!r.path.contains(word), "the pod got {word} in {}", r.path);
        }
        for (name, value) in &r.headers {
            assert!(
                !name.eq_ignore_ascii_case("authorization"),
                "the pod got {name}: {value}"
            );
            for ours in ["podgate_cap", "podgate_session", "podgate_signin", "ticket"] {
                assert!(!value.contains(ours), "the pod got {name}: {value}");
            }
            for s in &secrets {
                assert!(
                    !value.contains(s.as_str()),
                    "the pod got one of our cookies in {name}: {value}"
                );
            }
        }
    }

    // Sign out with the pod page's link. The next load of the pod's page goes back through
    // podgate's sign-in: the provider still remembers erin (its own session, which podgate's
    // sign-out does not end), so it answers without a form, and podgate signs erin in afresh
    // (a new capability) - the single sign-on any OpenID provider gives.
    let old_cap = cap["value"].as_str().unwrap().to_owned();
    sign_out(&browser, &page, &cp).await;
    browser.goto(&page).await.unwrap();
    let steps = sign_in(&browser, &origin, &stack, &op).await;
    assert!(steps.is_empty(), "the provider asked again: {steps:?}");
    assert_eq!(browser.current_url().await.unwrap(), page);
    let new_cap = browser
        .cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c["name"] == "podgate_cap")
        .and_then(|c| c["value"].as_str().map(str::to_owned))
        .expect("a new capability cookie");
    assert_ne!(new_cap, old_cap, "the old capability came back");

    // Signed out again, and with the provider's session forgotten too (its cookies on the same
    // host, 127.0.0.1, as when that session ends), the provider shows its login page.
    let cp_cookies = sign_out(&browser, &page, &cp).await;
    for c in &cp_cookies {
        let name = c["name"].as_str().unwrap();
        if !name.starts_with("podgate") {
            browser.delete_cookie(name).await.unwrap();
        }
    }

    // The next load of the pod's page goes back to sign-in and never reaches the pod.
    pod.reset();
    browser.goto(&page).await.unwrap();
    let login_form = browser
        .wait_for(
            "return document.readyState === 'complete' && \
             !!document.querySelector('input[name=login]') ? location.href : '';",
            Duration::from_secs(20),
        )
        .await;
    let at = browser.current_url().await.unwrap_or_default();
    let login_form = login_form.unwrap_or_else(|e| {
        panic!(
            "{e:#}: after sign-out the pod's page load is at {at}\n{}",
            stack.logs()
        )
    });
    assert!(
        login_form
            .as_str()
            .unwrap()
            .starts_with(&format!("{issuer}/interaction/")),
        "{login_form}"
    );
    assert!(pod.untouched(), "{}", pod.describe());
    let png = browser.screenshot().await.unwrap();
    let path = save_artifact("browser", "sign-out-back-to-login.png", &png).unwrap();
    eprintln!("screenshot: {}", path.display());

    browser.quit().await;
    drop(op);
    eprintln!(
        "timing: {:.1?} in all, {:.1?} of it starting podgate, Envoy, the provider and Chromium",
        started.elapsed(),
        setup
    );
}

/// What a browser test signs in through: the stack (with `extra` settings) and the OpenID
/// provider it signs in with, erin's recording pod on it, and a page of the pod Envoy routes.
struct Setup {
    stack: Stack,
    op: OidcProvider,
    pod: FakePod,
    issuer: String,
    /// The control plane's URL.
    cp: String,
    /// The pod port's origin.
    origin: String,
    page: String,
    _dir: tempfile::TempDir,
}

/// Starts a [`Setup`]; `None` when the provider cannot run here (outside CI).
async fn setup(extra: &[&str]) -> Option<Setup> {
    // The provider's port is chosen first: the control plane names its issuer, and the
    // provider registers the control plane's callback.
    let op_port = free_port();
    let issuer = format!("http://127.0.0.1:{op_port}");
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, format!("{}\n", WEB.1)).unwrap();
    let secret_path = secret_file.display().to_string();
    let mut args = vec![
        "--oidc-issuer",
        &issuer,
        "--oidc-audience",
        WEB.0,
        "--oidc-client-secret-file",
        &secret_path,
        "--oidc-display-name",
        "Test provider",
    ];
    args.extend_from_slice(extra);
    let stack = Stack::start(&args).await;
    let cp = format!("http://{}", stack.cp.http);
    let callback = format!("{cp}/auth/callback");
    let op = OidcProvider::start(json!({
        "port": op_port,
        "clients": [{
            "client_id": WEB.0, "client_secret": WEB.1, "redirect_uris": [callback],
            "grant_types": ["authorization_code"], "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }],
    }))
    .await?;
    assert_eq!(op.issuer, issuer);
    stack.cp.create_user(LOGIN).await;
    let pod = FakePod::start("chromium-pod").await.unwrap();
    stack
        .cp
        .create_pod(POD, LOGIN, SERVER, pod.addr().port(), "running")
        .await;
    // Chromium resolves every `*.localhost` name to loopback itself.
    let origin = format!("http://{}:{}", pod_host(POD), stack.envoy.listener.port());
    let page = format!("{origin}/notes?x=1");
    wait_for_the_pod_route(&stack, &page).await;
    Some(Setup {
        stack,
        op,
        pod,
        issuer,
        cp,
        origin,
        page,
        _dir: dir,
    })
}

/// With `--cookie-samesite strict`, the capability cookie is not sent on the navigation that
/// comes back from the provider (a chain that started on another site); the callback's page
/// navigates to the pod's page itself, from the pod's own origin, which sends it: the sign-in
/// lands on the pod's page rather than going round through sign-in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_with_strict_cookies_and_lands_on_the_pod() {
    if browser_or_skip().is_none() {
        return;
    }
    let Some(s) = setup(&["--cookie-samesite", "strict"]).await else {
        return;
    };
    let browser = Browser::start((1000, 720)).await.unwrap();
    browser.goto(&s.page).await.unwrap();
    let steps = sign_in(&browser, &s.origin, &s.stack, &s.op).await;
    assert!(steps.iter().any(|(step, _)| step == "login"), "{steps:?}");
    let text = browser
        .wait_for(PAGE_TEXT, Duration::from_secs(10))
        .await
        .unwrap();
    let shown: Value = serde_json::from_str(text.as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: not the pod's page: {text}\n{}", s.stack.logs()));
    assert_eq!(shown["path"], "/notes?x=1", "{shown}");
    assert_eq!(browser.current_url().await.unwrap(), s.page);
    let cap = browser
        .cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c["name"] == "podgate_cap")
        .expect("a capability cookie");
    assert_eq!(cap["sameSite"], "Strict", "{cap}");
    // One page load reached the pod (and whatever Chromium asked for on its own), as erin.
    let seen = s.pod.requests();
    assert_eq!(
        seen.iter().filter(|r| r.path == "/notes?x=1").count(),
        1,
        "{}",
        s.pod.describe()
    );
    assert!(seen
        .iter()
        .all(|r| r.header("x-podgate-user") == Some(LOGIN)));
    browser.quit().await;
}

/// Clicks a sign-out link on the pod's page (the fake pod answers JSON, so the test puts the
/// link a pod's page would have, `<a href="/.podgate/logout">`, into it); the browser lands on the
/// control plane's "signed out" page with no session cookie left. Returns the cookies that page
/// sees.
async fn sign_out(browser: &Browser, page: &str, cp: &str) -> Vec<Value> {
    browser.goto(page).await.unwrap();
    browser
        .execute(
            "document.body.insertAdjacentHTML('afterbegin', \
             '<a id=\"sign-out\" href=\"/.podgate/logout\">Sign out</a>'); \
             document.getElementById('sign-out').click();",
        )
        .await
        .unwrap();
    let heading = browser
        .wait_for(
            "var h = document.querySelector('h1'); \
             return document.readyState === 'complete' && h ? h.textContent : '';",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(heading, "You are signed out");
    assert_eq!(
        browser.current_url().await.unwrap(),
        format!("{cp}/auth/logout")
    );
    let cookies = browser.cookies().await.unwrap();
    assert!(
        !cookies.iter().any(|c| c["name"] == "podgate_session"),
        "{cookies:?}"
    );
    cookies
}

/// Waits until Envoy routes the pod's host (its configuration arrives over ADS shortly after the
/// pod is created): a page load there is then sent to sign in (302).
async fn wait_for_the_pod_route(stack: &Stack, page: &str) {
    let url = url::Url::parse(page).unwrap();
    let direct = format!(
        "http://{}{}?{}",
        stack.envoy.listener,
        url.path(),
        url.query().unwrap_or_default()
    );
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for _ in 0..400 {
        let resp = http
            .get(&direct)
            .header(reqwest::header::HOST, &host)
            .header(reqwest::header::ACCEPT, "text/html")
            .header("sec-fetch-mode", "navigate")
            .send()
            .await;
        if resp.is_ok_and(|r| r.status() == reqwest::StatusCode::FOUND) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("Envoy never routed {host}\n{}", stack.logs());
}

/// Drives the browser through the provider's pages until it shows the pod's origin; returns
/// each step taken with the URL it was taken on.
async fn sign_in(
    browser: &Browser,
    origin: &str,
    stack: &Stack,
    op: &OidcProvider,
) -> Vec<(String, String)> {
    let script = format!(
        "return (function() {{ {SIGN_IN_STEP} }}).apply(null, {});",
        json!([origin, LOGIN])
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut steps: Vec<(String, String)> = Vec::new();
    loop {
        let url = browser.current_url().await.unwrap_or_default();
        // A script run while a page is being replaced may fail: the next poll sees the new one.
        let step = browser
            .execute(&script)
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "loading".to_owned());
        if step == "pod" {
            return steps;
        }
        if step == "login" || step == "consent" {
            steps.push((step, url));
        } else if Instant::now() >= deadline {
            let body = browser
                .execute("return document.documentElement.outerHTML")
                .await
                .unwrap_or_default();
            panic!(
                "the sign-in did not reach the pod: at {url} ({step}) after {steps:?}: {body}\n\
                 --- provider ---\n{}\n{}",
                op.stderr_text(),
                stack.logs()
            );
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
