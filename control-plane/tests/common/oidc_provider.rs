//! A real OpenID provider for tests: npm `oidc-provider` run by `tests/oidc-provider/provider.mjs`
//! on a loopback port, with clients, resources (RFC 9068 JWT access tokens) and accounts chosen by
//! the test, a sign-in driven over plain HTTP through its dev login and consent forms
//! (authorization code + PKCE), the `client_credentials` grant, and key rotation.
//!
//! Needs Node.js and `tests/oidc-provider/node_modules` (`scripts/oidc-provider-deps.sh`).
//! Without them [`OidcProvider::start`] skips loudly (returns `None`); under `CI=true` it fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How long the provider may take to print its `ready` line.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// The provider's default clients (provider.mjs): a confidential web client (also allowed
/// `client_credentials`), a public CLI client, and an application podgate does not trust.
pub const WEB: (&str, &str) = ("podgate-web", "podgate-web-secret");
pub const CLI: &str = "podgate-cli";
pub const OTHER: (&str, &str) = ("other-app", "other-app-secret");
pub const REDIRECT_URI: &str = "http://127.0.0.1/callback";
/// A resource whose JWT access tokens have `aud` = [`WEB`]'s client id.
pub const SELF_RESOURCE: &str = "urn:podgate:self";
/// A resource whose JWT access tokens have `aud` = this URL.
pub const API_RESOURCE: &str = "https://api.example.test";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc-provider")
}

/// Why the provider cannot run here, if it cannot.
fn missing() -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Some("Node.js (`node`) is not installed".into());
    }
    if !dir()
        .join("node_modules/oidc-provider/package.json")
        .is_file()
    {
        return Some(format!(
            "{} has no node_modules/oidc-provider",
            dir().display()
        ));
    }
    None
}

/// A running provider; stopped when dropped.
pub struct OidcProvider {
    child: Child,
    pub issuer: String,
    http: reqwest::Client,
    stderr: PathBuf,
    _tmp: tempfile::TempDir,
}

/// What one sign-in asks for.
#[derive(Debug, Clone)]
pub struct SignIn<'a> {
    pub client_id: &'a str,
    /// `None` for a public client (PKCE only).
    pub client_secret: Option<&'a str>,
    /// The account that signs in (its `sub`).
    pub login: &'a str,
    pub scope: &'a str,
    /// A resource indicator: the access token is then an RFC 9068 JWT for it.
    pub resource: Option<&'a str>,
}

impl<'a> SignIn<'a> {
    pub fn new(client_id: &'a str, client_secret: Option<&'a str>, login: &'a str) -> Self {
        SignIn {
            client_id,
            client_secret,
            login,
            scope: "openid email",
            resource: None,
        }
    }
}

/// Cookies the provider set during one sign-in (its interaction cookies), sent back on every
/// request of that sign-in; paths are ignored (the provider reads only its own names).
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let pair = v.split(';').next().unwrap_or("");
            if let Some((k, val)) = pair.split_once('=') {
                self.0.insert(k.trim().to_owned(), val.trim().to_owned());
            }
        }
    }
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Where a redirect goes, resolved against the URL it came from (the provider answers with
/// relative paths).
fn location(resp: &reqwest::Response) -> String {
    assert!(
        resp.status().is_redirection(),
        "expected a redirect, got {} ({})",
        resp.status(),
        resp.url()
    );
    let to = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("a Location header");
    resp.url().join(to).unwrap().to_string()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The decoded header and claims of a JWT (no verification: for assertions on what the
/// provider issued).
pub fn peek(jwt: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        let seg = jwt.split('.').nth(i).expect("a JWT");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(seg)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON")
    };
    (part(0), part(1))
}

impl OidcProvider {
    /// Starts provider.mjs with `config` (its JSON argument: `clients`, `resources`, `accounts`,
    /// `id_token_ttl`; `{}` for the defaults) and waits until it serves discovery. `None` when
    /// Node.js or the npm packages are missing outside CI (said loudly); under `CI=true` that
    /// fails the test.
    pub async fn start(config: Value) -> Option<OidcProvider> {
        if let Some(why) = missing() {
            let msg = format!(
                "{why}: the real-provider OpenID tests need Node.js and `bash scripts/oidc-provider-deps.sh` (npm ci in tests/oidc-provider)"
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true and {msg}");
            }
            // Straight to stderr, past the test harness's capture: a skip must be seen.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPING: {msg}");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let stderr = tmp.path().join("provider.stderr");
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .arg(config.to_string())
            .current_dir(dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("node provider.mjs starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(ready) = line.strip_prefix("ready ") {
                    let _ = tx.send(ready.to_owned());
                    break;
                }
            }
            // Keep draining so the provider never blocks on a full pipe.
            for _ in lines {}
        });
        // Node loads oidc-provider's module graph at start: seconds on an idle machine, much
        // more on a loaded one; this only bounds a provider that never comes up.
        let ready = tokio::task::spawn_blocking(move || rx.recv_timeout(READY_WITHIN))
            .await
            .unwrap();
        let mut p = OidcProvider {
            child,
            issuer: String::new(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            stderr,
            _tmp: tmp,
        };
        let ready: Value = match ready {
            Ok(line) => serde_json::from_str(&line).unwrap(),
            Err(_) => panic!(
                "provider.mjs did not start within {} s; its stderr:\n{}",
                READY_WITHIN.as_secs(),
                p.stderr_text()
            ),
        };
        p.issuer = ready["issuer"].as_str().unwrap().to_owned();
        let discovery = format!("{}/.well-known/openid-configuration", p.issuer);
        for _ in 0..100 {
            if let Ok(r) = p.http.get(&discovery).send().await {
                if r.status().is_success() {
                    let doc: Value = r.json().await.unwrap();
                    assert_eq!(doc["issuer"], p.issuer.as_str());
                    return Some(p);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "provider.mjs does not serve {discovery}; its stderr:\n{}",
            p.stderr_text()
        );
    }

    pub fn stderr_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Stops the provider (its port then refuses connections: "the provider is down").
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Follows an authorization request (`auth_url`, built by the test or by the relying party
    /// under test) through the dev login form (as `login`, any password) and the consent form,
    /// until the provider redirects to a URL starting with `redirect_uri`; returns that URL
    /// (with `code`, `state` and `iss`, or `error`).
    pub async fn authorize(&self, auth_url: &str, login: &str, redirect_uri: &str) -> String {
        let mut jar = Jar::default();
        let mut next = auth_url.to_owned();
        // /auth -> login form -> /auth/UID -> consent form -> /auth/UID -> redirect_uri.
        for _ in 0..8 {
            if next.starts_with(redirect_uri) {
                return next;
            }
            let resp = self
                .http
                .get(&next)
                .header(reqwest::header::COOKIE, jar.header())
                .send()
                .await
                .unwrap();
            jar.take(&resp);
            if resp.status().is_redirection() {
                next = location(&resp);
                continue;
            }
            let form = resp.text().await.unwrap();
            let body: Vec<(&str, &str)> = if form.contains(r#"value="login""#) {
                vec![("prompt", "login"), ("login", login), ("password", "any")]
            } else if form.contains(r#"value="consent""#) {
                vec![("prompt", "consent")]
            } else {
                panic!(
                    "unexpected page at {next}: {form}\nprovider stderr:\n{}",
                    self.stderr_text()
                );
            };
            let resp = self
                .http
                .post(&next)
                .header(reqwest::header::COOKIE, jar.header())
                .form(&body)
                .send()
                .await
                .unwrap();
            jar.take(&resp);
            next = location(&resp);
        }
        panic!("the sign-in never reached {redirect_uri}; last at {next}");
    }

    /// Follows a relying party's sign-out at the provider (`end_session_url`, its
    /// `end_session_endpoint` with the RP's parameters) through the confirmation form ("Yes,
    /// sign me out") until the provider redirects to a URL starting with
    /// `post_logout_redirect_uri`; returns that URL. Panics on the provider's error page (an
    /// unknown client or an unregistered redirect URI).
    pub async fn end_session(
        &self,
        end_session_url: &str,
        post_logout_redirect_uri: &str,
    ) -> String {
        let mut jar = Jar::default();
        let mut next = end_session_url.to_owned();
        for _ in 0..6 {
            if next.starts_with(post_logout_redirect_uri) {
                return next;
            }
            let resp = self
                .http
                .get(&next)
                .header(reqwest::header::COOKIE, jar.header())
                .send()
                .await
                .unwrap();
            jar.take(&resp);
            if resp.status().is_redirection() {
                next = location(&resp);
                continue;
            }
            let url = resp.url().clone();
            let page = resp.text().await.unwrap();
            let attr = |name: &str| -> Option<String> {
                let start = page.find(&format!("{name}=\""))? + name.len() + 2;
                let len = page[start..].find('"')?;
                Some(page[start..start + len].to_owned())
            };
            // The confirmation form, or the form the provider submits by script when the
            // browser holds no session of it: both post the xsrf and `logout=yes`.
            let (Some(action), true) = (attr("action"), page.contains("session/end/confirm"))
            else {
                panic!(
                    "unexpected page at {next}: {page}\nprovider stderr:\n{}",
                    self.stderr_text()
                );
            };
            let xsrf = page
                .split("name=\"xsrf\" value=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .expect("the logout form's xsrf")
                .to_owned();
            let resp = self
                .http
                .post(url.join(&action).unwrap())
                .header(reqwest::header::COOKIE, jar.header())
                .form(&[("xsrf", xsrf.as_str()), ("logout", "yes")])
                .send()
                .await
                .unwrap();
            jar.take(&resp);
            next = location(&resp);
        }
        panic!("the sign-out never reached {post_logout_redirect_uri}; last at {next}");
    }

    /// Follows an authorization request (`auth_url`) to the provider's login form and aborts
    /// there (the user cancels), until the provider redirects to a URL starting with
    /// `redirect_uri`; returns that URL (with `error=access_denied` and `state`).
    pub async fn deny(&self, auth_url: &str, redirect_uri: &str) -> String {
        let mut jar = Jar::default();
        let mut next = auth_url.to_owned();
        let mut aborted = false;
        for _ in 0..8 {
            if next.starts_with(redirect_uri) {
                return next;
            }
            let resp = self
                .http
                .get(&next)
                .header(reqwest::header::COOKIE, jar.header())
                .send()
                .await
                .unwrap();
            jar.take(&resp);
            if resp.status().is_redirection() {
                next = location(&resp);
                continue;
            }
            assert!(
                !aborted,
                "the provider showed a page after the abort: {next}"
            );
            // The login form of /interaction/UID: its abort link.
            next = format!("{}/abort", next.trim_end_matches('/'));
            aborted = true;
        }
        panic!("the aborted sign-in never reached {redirect_uri}; last at {next}");
    }

    /// Signs `req.login` in through the authorization code flow with PKCE (S256), `state` and
    /// `nonce`, answering the dev login and consent forms; returns the token endpoint's answer
    /// (`id_token`, `access_token`, ...).
    pub async fn sign_in(&self, req: &SignIn<'_>) -> Value {
        let verifier = b64(&rand_bytes());
        let challenge = b64(&Sha256::digest(verifier.as_bytes()));
        let state = b64(&rand_bytes());
        let nonce = b64(&rand_bytes());
        let mut params = vec![
            ("client_id", req.client_id),
            ("response_type", "code"),
            ("scope", req.scope),
            ("redirect_uri", REDIRECT_URI),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", state.as_str()),
            ("nonce", nonce.as_str()),
        ];
        if let Some(r) = req.resource {
            params.push(("resource", r));
        }
        let auth = url::Url::parse_with_params(&format!("{}/auth", self.issuer), &params).unwrap();
        let next = self.authorize(auth.as_str(), req.login, REDIRECT_URI).await;
        let back = url::Url::parse(&next).unwrap();
        let query: BTreeMap<String, String> = back.query_pairs().into_owned().collect();
        assert_eq!(
            query.get("state"),
            Some(&state),
            "sign-in did not come back: {next}"
        );
        let code = query.get("code").expect("a code");
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier.as_str()),
            ("client_id", req.client_id),
        ];
        if let Some(r) = req.resource {
            form.push(("resource", r));
        }
        let tokens = self.token(req.client_id, req.client_secret, &form).await;
        let (_, id) = peek(tokens["id_token"].as_str().expect("an id_token"));
        assert_eq!(id["nonce"], nonce.as_str());
        tokens
    }

    /// `client_credentials` for `client` (its secret), optionally for a resource (then the
    /// access token is an RFC 9068 JWT).
    pub async fn client_credentials(
        &self,
        client: (&str, &str),
        resource: Option<&str>,
        scope: Option<&str>,
    ) -> Value {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        self.token(client.0, Some(client.1), &form).await
    }

    async fn token(&self, client_id: &str, secret: Option<&str>, form: &[(&str, &str)]) -> Value {
        let mut r = self.http.post(format!("{}/token", self.issuer)).form(form);
        if let Some(s) = secret {
            r = r.basic_auth(client_id, Some(s));
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "token endpoint: {status} {body}");
        body
    }

    /// New signing keys (new kids). With `keep_old`, the old public keys stay published (an
    /// overlap); without, they are gone. Returns `{"kids": [...], "signing": KID}`.
    pub async fn rotate(&self, keep_old: bool) -> Value {
        let r = self
            .http
            .post(format!("{}/__test/rotate", self.issuer))
            .json(&json!({ "keep_old": keep_old }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        r.json().await.unwrap()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rand_bytes() -> [u8; 32] {
    podgate::keys::random_bytes().unwrap()
}
