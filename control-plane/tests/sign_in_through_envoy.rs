//! podgate's own sign-in end to end: a browser-like client (cookies kept per host by hand, every
//! redirect followed by hand) opens a pod's page through a real Envoy fed over ADS by the real
//! `podgate` binary, which signs it in at a real, certified OpenID provider (npm
//! `oidc-provider`): pod host → auth redirect → `/auth/login` → the provider's login → the
//! callback → the capability → the pod answers. The pod records every request: it sees the user
//! podgate linked to the provider's subject, and never a code, state, token or cookie of ours.
//!
//! Needs Node.js and `bash scripts/oidc-provider-deps.sh` (skips loudly without them, fails under
//! `CI=true`), and Envoy and the filter like `xds_live.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod xds_support;

use std::collections::BTreeMap;

use common::oidc_provider::{OidcProvider, WEB};
use reqwest::StatusCode;
use serde_json::json;
use xds_support::{free_port, pod_host, FakePod, Stack, SERVER};

const POD: &str = "signin-web";
/// The account that signs in at the provider; podgate knows a user of that id, who owns the pod.
const LOGIN: &str = "dana";

/// A browser: cookies per host, page-load headers, redirects followed one at a time. Every host
/// is reached on 127.0.0.1 (Rust resolvers do not resolve `*.localhost`), with its name in `Host`.
#[derive(Default)]
struct Browser {
    jars: BTreeMap<String, BTreeMap<String, String>>,
    http: Option<reqwest::Client>,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            jars: BTreeMap::new(),
            http: Some(
                reqwest::Client::builder()
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap(),
            ),
        }
    }

    /// GETs `url` as a page load; returns the status, the `Location` resolved against `url`,
    /// and the body.
    async fn get(&mut self, url: &str) -> (StatusCode, Option<String>, String) {
        let parsed = url::Url::parse(url).unwrap();
        let host = parsed.host_str().unwrap().to_owned();
        let port = parsed.port_or_known_default().unwrap();
        let mut direct = parsed.clone();
        direct.set_host(Some("127.0.0.1")).unwrap();
        let jar = self.jars.entry(host.clone()).or_default();
        let mut req = self
            .http
            .as_ref()
            .unwrap()
            .get(direct.as_str())
            .header(reqwest::header::HOST, format!("{host}:{port}"))
            .header(reqwest::header::ACCEPT, "text/html")
            .header("sec-fetch-mode", "navigate");
        if !jar.is_empty() {
            let cookie = jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req = req.header(reqwest::header::COOKIE, cookie);
        }
        let resp = req.send().await.unwrap();
        for v in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let pair = v.to_str().unwrap().split(';').next().unwrap();
            let (k, val) = pair.split_once('=').unwrap();
            if val.is_empty() {
                jar.remove(k);
            } else {
                jar.insert(k.to_owned(), val.to_owned());
            }
        }
        let status = resp.status();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|l| parsed.join(l.to_str().unwrap()).unwrap().to_string());
        (status, location, resp.text().await.unwrap())
    }

    /// Follows `url` and `hops` redirects; returns each URL visited and the last answer.
    async fn follow(&mut self, url: &str, hops: usize) -> (Vec<String>, StatusCode, String) {
        let mut visited = vec![url.to_owned()];
        let mut at = url.to_owned();
        for _ in 0..hops {
            let (status, location, body) = self.get(&at).await;
            assert_eq!(status, StatusCode::FOUND, "at {at}: {body}");
            at = location.unwrap();
            visited.push(at.clone());
        }
        let (status, _, body) = self.get(&at).await;
        (visited, status, body)
    }

    fn cookies(&self) -> Vec<(String, String)> {
        self.jars
            .values()
            .flat_map(|j| j.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    }
}

/// The stack (Envoy and the control plane) signing in at a real provider, and the user who signs
/// in there; `None` to skip (no Node.js outside CI).
struct SignIn {
    stack: Stack,
    op: OidcProvider,
    issuer: String,
    /// The control plane's callback, as registered at the provider.
    callback: String,
    _dir: tempfile::TempDir,
}

impl SignIn {
    async fn start() -> Option<SignIn> {
        // The provider's port is chosen first: the control plane names its issuer, and the
        // provider registers the control plane's callback.
        let op_port = free_port();
        let issuer = format!("http://127.0.0.1:{op_port}");
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("client-secret");
        std::fs::write(&secret_file, format!("{}\n", WEB.1)).unwrap();
        let secret_path = secret_file.display().to_string();
        let stack = Stack::start(&[
            "--oidc-issuer",
            &issuer,
            "--oidc-audience",
            WEB.0,
            "--oidc-client-secret-file",
            &secret_path,
            "--oidc-display-name",
            "Test provider",
        ])
        .await;
        let callback = format!("http://{}/auth/callback", stack.cp.http);
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
        Some(SignIn {
            stack,
            op,
            issuer,
            callback,
            _dir: dir,
        })
    }

    /// The URL of `path` on `pod`'s app port through Envoy.
    fn page(&self, pod: &str, path: &str) -> String {
        format!(
            "http://{}:{}{path}",
            pod_host(pod),
            self.stack.envoy.listener.port()
        )
    }
}

/// Loads `page` until Envoy, once the pod's configuration arrived, sends it to sign in: the
/// auth redirect's URL.
async fn sent_to_sign_in(b: &mut Browser, page: &str, stack: &Stack) -> String {
    for _ in 0..200 {
        let (status, location, _) = b.get(page).await;
        if status == StatusCode::FOUND {
            let to_auth = location.unwrap();
            assert!(to_auth.contains("/api/proxy-auth?"), "{to_auth}");
            return to_auth;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("no auth redirect for {page}\n{}", stack.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_at_the_provider_and_reaches_the_pod_with_nothing_of_ours() {
    let Some(SignIn {
        stack,
        op,
        issuer,
        callback,
        _dir,
    }) = SignIn::start().await
    else {
        return;
    };
    let pod = FakePod::start("signin-pod").await.unwrap();
    stack
        .cp
        .create_pod(POD, LOGIN, SERVER, pod.addr().port(), "running")
        .await;
    let page = format!(
        "http://{}:{}/notes?x=1",
        pod_host(POD),
        stack.envoy.listener.port()
    );

    // Envoy's configuration (the pod) arrives over ADS shortly after the pod is created.
    let mut b = Browser::new();
    let to_auth = sent_to_sign_in(&mut b, &page, &stack).await;

    // proxy-auth → /auth/login (the default login now) → the provider.
    let (visited, status, _) = b.follow(&to_auth, 2).await;
    assert!(
        visited[1].starts_with(&format!("http://{}/auth/login?next=", stack.cp.http)),
        "{visited:?}"
    );
    assert!(
        visited[2].starts_with(&format!("{issuer}/auth?")),
        "{visited:?}"
    );
    // The provider's authorization endpoint itself redirects to its login form.
    assert_eq!(status, StatusCode::SEE_OTHER, "{visited:?}");
    let back = op.authorize(&visited[2], LOGIN, &callback).await;
    let params: BTreeMap<String, String> = url::Url::parse(&back)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let (code, state) = (params["code"].clone(), params["state"].clone());

    // The callback → proxy-auth → the pod's callback (ticket → capability) → the page.
    let (visited, status, body) = b.follow(&back, 3).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{visited:?}: {body}\n{}",
        stack.logs()
    );
    assert!(visited[1].contains("/api/proxy-auth?"), "{visited:?}");
    assert!(
        visited[2].contains("/.podgate/callback?ticket="),
        "{visited:?}"
    );
    assert_eq!(visited[3], page, "lands on the page it started from");

    // What reached the pod: one request, the page, as dana, and nothing of ours.
    let seen = pod.requests();
    assert_eq!(seen.len(), 1, "{}", pod.describe());
    let r = &seen[0];
    assert_eq!(r.path, "/notes?x=1");
    assert_eq!(r.header("x-podgate-user"), Some(LOGIN));
    // The existing user dana, linked to the provider's subject, with the email she had.
    assert_eq!(r.header("x-podgate-email"), Some("dana@example.dev"));
    let ticket = url::Url::parse(&visited[2])
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "ticket")
        .unwrap()
        .1
        .into_owned();
    let mut secrets = vec![code, state, ticket];
    secrets.extend(b.cookies().into_iter().map(|(_, v)| v));
    for (name, value) in &r.headers {
        for s in &secrets {
            assert!(
                !value.contains(s.as_str()),
                "the pod got one of our secrets in {name}: {value}"
            );
        }
        for ours in ["podgate_cap", "podgate_session", "podgate_signin"] {
            assert!(!value.contains(ours), "the pod got {name}: {value}");
        }
        assert!(
            !name.eq_ignore_ascii_case("authorization"),
            "the pod got {name}: {value}"
        );
    }
    drop(op);
}

/// Two pod tabs opened at once with no session (a browser restoring its tabs after the session
/// ended) go through the provider together and come back one after the other, the second with
/// the session cookie the first one's callback set. Both pods keep answering: the second sign-in
/// keeps the first one's session (same user, same provider) instead of ending it and cutting
/// the first tab off, and the browser holds that one session. Signing out ends both tabs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_signing_in_at_once_both_keep_working_until_sign_out() {
    let Some(signin) = SignIn::start().await else {
        return;
    };
    let stack = &signin.stack;
    let (pod_a, pod_b) = (
        FakePod::start("tab-a").await.unwrap(),
        FakePod::start("tab-b").await.unwrap(),
    );
    for (slug, pod) in [("tab-a", &pod_a), ("tab-b", &pod_b)] {
        stack
            .cp
            .create_pod(slug, LOGIN, SERVER, pod.addr().port(), "running")
            .await;
    }
    let (page_a, page_b) = (signin.page("tab-a", "/"), signin.page("tab-b", "/"));
    let mut b = Browser::new();
    let to_auth_a = sent_to_sign_in(&mut b, &page_a, stack).await;
    let to_auth_b = sent_to_sign_in(&mut b, &page_b, stack).await;
    // Both reach the provider before either comes back.
    let (visited_a, _, _) = b.follow(&to_auth_a, 2).await;
    let (visited_b, _, _) = b.follow(&to_auth_b, 2).await;
    for visited in [&visited_a, &visited_b] {
        assert!(
            visited[2].starts_with(&format!("{}/auth?", signin.issuer)),
            "{visited:?}"
        );
    }
    let back_a = signin
        .op
        .authorize(&visited_a[2], LOGIN, &signin.callback)
        .await;
    let back_b = signin
        .op
        .authorize(&visited_b[2], LOGIN, &signin.callback)
        .await;
    let cp_host = stack.cp.http.ip().to_string();
    let (visited, status, body) = b.follow(&back_a, 3).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{visited:?}: {body}\n{}",
        stack.logs()
    );
    assert_eq!(visited[3], page_a);
    let session = b.jars[&cp_host]["podgate_session"].clone();
    let (visited, status, body) = b.follow(&back_b, 3).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{visited:?}: {body}\n{}",
        stack.logs()
    );
    assert_eq!(visited[3], page_b);

    // Nothing was cut: the first tab keeps loading its pod's pages for longer than a push
    // takes, and what Envoy gets has no session cut-off.
    for _ in 0..20 {
        for page in [&page_a, &page_b] {
            let (status, location, body) = b.get(page).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{page} → {location:?}: {body}\n{}",
                stack.logs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let pushed = stack
        .cp
        .admin(reqwest::Method::GET, "/v1/filter-config", None)
        .await;
    assert_eq!(
        pushed["cutoffs"]["sessions"].as_array().map_or(0, Vec::len),
        0,
        "{pushed}"
    );
    assert_eq!(b.jars[&cp_host]["podgate_session"], session, "one session");
    for pod in [&pod_a, &pod_b] {
        let seen = pod.requests();
        assert_eq!(seen.len(), 21, "{}", pod.describe());
        assert!(seen
            .iter()
            .all(|r| r.header("x-podgate-user") == Some(LOGIN)));
    }

    // Signing out ends both tabs: each page load is sent to sign in again.
    let (status, _, body) = b
        .get(&format!("http://{}/auth/logout", stack.cp.http))
        .await;
    assert!(
        status == StatusCode::OK || status == StatusCode::FOUND,
        "{status}: {body}"
    );
    for page in [&page_a, &page_b] {
        let start = std::time::Instant::now();
        loop {
            let (status, location, _) = b.get(page).await;
            if status == StatusCode::FOUND {
                assert!(location.unwrap().contains("/api/proxy-auth?"));
                break;
            }
            assert_eq!(status, StatusCode::OK);
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "{page} still answered after sign-out\n{}",
                stack.logs()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
