//! `podgate-cli` through the real stack: the `podgate` binary, a real Envoy fed over ADS, a
//! recording fake pod. A signed-in user creates an API token; the installer served by the
//! control plane, run with its setup link in a temporary HOME, installs the CLI and its `--init`
//! saves it (0600 file in a 0700 directory); `status` names the user and the pod;
//! `curl` reaches the pod with the right method, path and body and no API token or capability
//! in what the pod sees; `forward` carries an HTTP request and a WebSocket echo; `logout`
//! revokes the token, after which the directory is not initialised (3) and the revoked token is
//! refused (4). A malformed link (2), an unreachable control plane (5), and a pod the user may
//! not reach (6) give their exit codes. `forward` refuses other host names and other sites'
//! pages, and renews its capability by itself (30 s lifetime); while the control plane is away it
//! sends the capability it holds to its end, then fails requests saying why, and recovers when
//! the control plane is back.
//!
//! The CLI comes from `$PODGATE_CLI`, else a `cargo build -p podgate-cli` run once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod xds_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use podgate_protocol::assertion::{AssertionVerifier, ASSERTION_HEADER};
use reqwest::header::COOKIE;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xds_support::*;

const POD: &str = "clipod";

/// A user's machine: a HOME and a project directory inside it.
struct Machine {
    home: tempfile::TempDir,
    /// The CLI this machine runs: the build's, or the one the installer put in place.
    bin: PathBuf,
    /// Environment variables every command gets, beside `HOME` and `PATH`.
    env: Vec<(String, String)>,
}

impl Machine {
    fn new() -> Machine {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("project")).unwrap();
        Machine {
            home,
            bin: cli_binary(),
            env: Vec::new(),
        }
    }

    fn project(&self) -> PathBuf {
        self.home.path().join("project")
    }

    fn config_file(&self) -> PathBuf {
        self.home.path().join(".config/podgate/config.json")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env_clear()
            .env("HOME", self.home.path())
            .env("PATH", "/usr/bin:/bin")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.project())
            .args(args);
        c
    }

    /// Runs the CLI to the end: exit code, stdout, stderr.
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_with_stdin(args, "").await
    }

    /// Runs the CLI to the end with `stdin` as its standard input.
    async fn run_with_stdin(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        use std::io::Write as _;
        let mut c = self.command(args);
        let stdin = stdin.to_owned();
        let out = tokio::task::spawn_blocking(move || {
            let mut child = c
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// `POST /api/proxy-tokens` as the signed-in user: the answer.
async fn create_token(stack: &Stack, name: &str) -> Value {
    let resp = stack
        .http
        .post(format!("http://{}/api/proxy-tokens", stack.cp.http))
        .header(COOKIE, &stack.session)
        .json(&json!({"name": name, "expires_in_days": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    resp.json().await.unwrap()
}

async fn pod_running(stack: &Stack) -> FakePod {
    let pod = FakePod::start_on(POD, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    stack
        .cp
        .create_pod(POD, USER, SERVER, pod.addr().port(), "running")
        .await;
    let token = stack.mint(POD).await;
    until(
        &stack.http,
        stack.envoy.listener,
        POD,
        &token,
        Duration::from_secs(5),
        |a| a.status == 200,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    pod.reset();
    pod
}

/// A WebSocket to `addr` (the forward's listener) from `origin`; panics unless it is accepted.
async fn open_websocket(addr: SocketAddr, origin: &str) -> tokio::net::TcpStream {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: {origin}\r\n\r\n"
    );
    open_raw(addr, &request, "HTTP/1.1 101").await
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// No header the pod saw carries the API token, a capability, or podgate's own header; the
/// identity assertion it gets is one that verifies for the user, and nothing else.
fn assert_no_credentials(
    req: &podgate_testkit::fake_pod::Recorded,
    api_token: &str,
    assertions: &AssertionVerifier,
) {
    for (name, value) in &req.headers {
        if name == ASSERTION_HEADER {
            let asserted = assertions.verify(value, now_unix()).unwrap();
            assert_eq!((asserted.sub.as_str(), asserted.pod.as_str()), (USER, POD));
            continue;
        }
        assert!(
            !value.contains(api_token) && !value.contains("pg_") && !value.contains("eyJ"),
            "the pod saw a credential in {name}: {value}"
        );
        assert_ne!(name, "podgate-token");
        assert_ne!(name, "authorization");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_status_curl_forward_and_logout_through_the_real_stack() {
    // The control plane serves this build's CLI to the installer.
    let cli_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        cli_binary(),
        cli_dir.path().join(format!("podgate-cli-{}", platform())),
    )
    .unwrap();
    let stack = Stack::start(&["--cli-dir", cli_dir.path().to_str().unwrap()]).await;
    let pod = pod_running(&stack).await;
    let assertions = assertion_verifier(&stack, POD).await;
    let created = create_token(&stack, "CLI test").await;
    let api_token = created["token"].as_str().unwrap().to_owned();
    let init_url = created["init_url"].as_str().unwrap().to_owned();
    let mut me = Machine::new();

    // `curl -fsSL …/install.sh?init_url=… | bash` installs the CLI and runs its --init, which
    // saves the session for the project directory, privately; every step below runs the
    // installed binary.
    let install_url = format!(
        "http://{}/api/download/install.sh?init_url={}",
        stack.cp.http,
        url::form_urlencoded::byte_serialize(init_url.as_bytes()).collect::<String>()
    );
    let (code, out) = install(
        &install_url,
        me.home.path(),
        &me.project(),
        "/usr/local/bin:/usr/bin:/bin",
    )
    .await;
    assert_eq!(code, 0, "{out}\n{}", stack.logs());
    assert!(out.contains("signed in as alice"), "{out}");
    me.bin = me.home.path().join(".config/podgate/bin/podgate-cli");
    assert!(me.bin.is_file(), "{out}");
    let config: Value = serde_json::from_slice(&std::fs::read(me.config_file()).unwrap()).unwrap();
    let key = me.project().to_string_lossy().into_owned();
    let session = &config["sessions"][&key];
    assert_eq!(session["auth_token"], api_token.as_str());
    assert_eq!(session["user_id"], "alice");
    assert_eq!(session["user_email"], "alice@example.dev");
    assert_eq!(session["backend_url"], format!("http://{}", stack.cp.http));
    assert!(session["last_used"].is_string());
    #[cfg(unix)]
    {
        assert_eq!(mode(&me.config_file()), 0o600);
        assert_eq!(mode(me.config_file().parent().unwrap()), 0o700);
    }

    // status: who, where, until when, which pods.
    let (code, out, err) = me.run(&["status"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("alice <alice@example.dev>"), "{out}");
    assert!(out.contains(&stack.cp.http.to_string()), "{out}");
    assert!(out.contains("CLI test") && out.contains("7 days"), "{out}");
    assert!(
        out.contains(POD) && out.contains("every other port"),
        "{out}"
    );

    // curl: the request reaches the pod as sent, without any credential.
    let url = format!(
        "http://{}:{}/api/items?q=1",
        pod_host(POD),
        stack.envoy.listener.port()
    );
    let (code, out, err) = me
        .run(&[
            "curl",
            &url,
            "-X",
            "PUT",
            "-d",
            "hello pod",
            "-H",
            "X-Trace: t1",
            "-i",
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}\n{}", stack.logs());
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let reqs = pod.requests();
    assert_eq!(reqs.len(), 1, "{}", pod.describe());
    assert_eq!(reqs[0].method, "PUT");
    assert_eq!(reqs[0].path, "/api/items?q=1");
    assert_eq!(reqs[0].body_len, "hello pod".len());
    assert_eq!(reqs[0].header("x-trace"), Some("t1"));
    // A body from `-d` is a form, as curl sends it.
    assert_eq!(
        reqs[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_no_credentials(&reqs[0], &api_token, &assertions);
    pod.reset();

    // The right pod host on another port or scheme: the capability is not sent there.
    for elsewhere in [
        format!("http://{}:1/", pod_host(POD)),
        format!("https://{}:{}/", pod_host(POD), stack.envoy.listener.port()),
    ] {
        let (code, _, err) = me.run(&["curl", &elsewhere]).await;
        assert_eq!(code, 2, "{elsewhere}: {err}");
        assert!(err.contains("public URL"), "{err}");
    }

    // token: a capability for one pod port.
    let (code, out, err) = me.run(&["token", POD, "3000"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.trim().starts_with("eyJ"), "{out}");
    // A pod the user may not reach: 6.
    let (code, _, err) = me.run(&["token", "nosuchpod", "3000"]).await;
    assert_eq!(code, 6, "{err}");

    // forward: HTTP and a WebSocket through a local listener.
    let (mut fwd, local, _stderr) = start_forward(&me).await;
    // Another name for the listener (DNS rebinding) or another site's page: refused.
    for (host, origin) in [
        (format!("rebound.evil.example:{}", local.port()), None),
        (local.to_string(), Some("https://evil.example")),
    ] {
        let mut req = client()
            .get(format!("http://{local}/refused"))
            .header(reqwest::header::HOST, host);
        if let Some(o) = origin {
            req = req.header(reqwest::header::ORIGIN, o);
        }
        assert_eq!(req.send().await.unwrap().status().as_u16(), 403);
    }
    // A browser sends the forward every cookie of its host, the control plane's session
    // among them when it is on the same host: the pod gets the others only.
    let resp = client()
        .post(format!("http://{local}/forwarded?x=2"))
        .header(
            COOKIE,
            format!("app=1; {}; podgate_signin=x", stack.session),
        )
        .body("via forward")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut ws = open_websocket(local, &format!("http://{local}")).await;
    assert_eq!(
        ws_echo(&mut ws, "ping through forward").await,
        "ping through forward"
    );
    drop(ws);
    let reqs = pod.requests();
    assert_eq!(reqs.len(), 2, "{}", pod.describe());
    let http_req = reqs.iter().find(|r| !r.websocket).unwrap();
    assert_eq!(http_req.path, "/forwarded?x=2");
    assert_eq!(http_req.body_len, "via forward".len());
    assert_eq!(
        http_req.header_all("cookie"),
        vec!["app=1"],
        "{:?}",
        http_req.headers
    );
    let ws_req = reqs.iter().find(|r| r.websocket).unwrap();
    assert_eq!(ws_req.path, "/ws");
    for r in &reqs {
        assert_no_credentials(r, &api_token, &assertions);
    }
    let _ = fwd.kill();
    let _ = fwd.wait();
    pod.reset();

    // A usage mistake does nothing but say so (2): `logout --help` neither revokes the token
    // nor forgets it, and `status -v` reaches nothing.
    let saved = std::fs::read(me.config_file()).unwrap();
    for args in [&["logout", "--help"][..], &["status", "-v"][..]] {
        let (code, out, err) = me.run(args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("takes no arguments"), "{err}");
        assert!(!out.contains("revoked"), "{out}");
    }
    assert_eq!(std::fs::read(me.config_file()).unwrap(), saved);
    let (code, out, err) = me.run(&["status"]).await;
    assert_eq!(code, 0, "still signed in: {out}{err}");

    // logout revokes and forgets: the directory is no longer initialised (3), and the token
    // itself, put back by hand, is refused (4).
    let saved = std::fs::read(me.config_file()).unwrap();
    let (code, out, err) = me.run(&["logout"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("revoked"), "{out}");
    let (code, _, err) = me.run(&["curl", &url]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--init"), "{err}");
    std::fs::write(me.config_file(), saved).unwrap();
    let (code, _, err) = me.run(&["curl", &url]).await;
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = me.run(&["status"]).await;
    assert_eq!(code, 4, "{err}");
    assert!(pod.requests().is_empty(), "{}", pod.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_links_and_unreachable_control_planes_have_their_exit_codes() {
    let me = Machine::new();
    for bad in [
        "not a url",
        "http://127.0.0.1:1/q/eyJ0IjoieCJ9",
        "http://127.0.0.1:1/p/!!",
        "ftp://127.0.0.1/p/eyJ0IjoieCJ9",
    ] {
        let (code, _, err) = me.run(&["--init", bad]).await;
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("setup link"), "{err}");
    }
    // An unknown command, or none: named, with the usage once.
    for args in [&["frobnicate"][..], &[][..]] {
        let (code, _, err) = me.run(args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.matches("exit codes:").count(), 1, "{args:?}: {err}");
    }
    // An unknown flag is named, with the usage.
    for (args, flag) in [
        (
            &["forward", "web", "3000", "--bogus"][..],
            "forward flag `--bogus`",
        ),
        (&["curl", "--bogus", "http://x"][..], "curl flag `--bogus`"),
    ] {
        let (code, _, err) = me.run(args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let (code, _, err) = me.run(&["status"]).await;
    assert_eq!(code, 3, "{err}");
    // A well-formed link to a port where nothing listens.
    let port = free_port();
    let config = base64_url(&format!(
        r#"{{"t":"pg_0123456789abcdef0123456789abcdef_{}"}}"#,
        "A".repeat(52)
    ));
    let (code, _, err) = me
        .run(&["--init", &format!("http://127.0.0.1:{port}/p/{config}")])
        .await;
    assert_eq!(code, 5, "{err}");
    assert!(!me.config_file().exists());
}

/// `--init` again in the same directory with another setup link revokes the token it replaces,
/// which nothing on the machine holds any more; the link can come on stdin (`--init -`), out of
/// the process's arguments. `logout` forgets every directory that held the token it revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_again_revokes_the_token_it_replaces() {
    let stack = Stack::start(&[]).await;
    let first = create_token(&stack, "first").await;
    let second = create_token(&stack, "second").await;
    let me = Machine::new();
    let (code, out, err) = me
        .run(&["--init", first["init_url"].as_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    // The same link in another directory: replacing it there keeps it for the project.
    let other = me.home.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let in_other = |args: &[&str]| {
        let mut c = me.command(args);
        c.current_dir(&other);
        c
    };
    let out = in_other(&["--init", first["init_url"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = in_other(&["--init", second["init_url"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("is kept") && said.contains("project"),
        "{said}"
    );
    let (code, out, err) = me.run(&["status"]).await;
    assert_eq!(code, 0, "the project's token was revoked: {out}{err}");
    let (code, out, err) = me
        .run_with_stdin(
            &["--init", "-"],
            &format!("{}\n", second["init_url"].as_str().unwrap()),
        )
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("had before was revoked"), "{out}{err}");
    let me_with = |token: &str| {
        stack
            .http
            .get(format!("http://{}/api/me", stack.cp.http))
            .bearer_auth(token)
            .send()
    };
    let refused = me_with(first["token"].as_str().unwrap()).await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let kept = me_with(second["token"].as_str().unwrap()).await.unwrap();
    assert_eq!(kept.status().as_u16(), 200);
    let (code, out, err) = me.run(&["status"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // Nothing on stdin: a usage error saying how to give it.
    let (code, _, err) = me.run_with_stdin(&["--init", "-"], "").await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("stdin"), "{err}");

    // logout revokes the token both directories hold, and forgets both, naming them.
    let (code, out, err) = me.run(&["logout"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("revoked") && out.contains("project") && out.contains("other"),
        "{out}"
    );
    let out = in_other(&["status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let refused = me_with(second["token"].as_str().unwrap()).await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
}

/// A listener on another origin that records the one request it gets and answers `elsewhere`.
async fn elsewhere() -> (u16, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended early");
            head.extend_from_slice(&buf[..n]);
        }
        conn.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nelsewhere",
        )
        .await
        .unwrap();
        String::from_utf8_lossy(&head).into_owned()
    });
    (port, got)
}

/// A script or CI job with `PODGATE_URL` and `PODGATE_TOKEN` and no config file: `status --json`
/// says who it is and which pods it may reach, `curl -fsSL -o FILE` follows the pod's redirect
/// on its own origin with a capability and writes the answer to the file, a redirect to another
/// origin is followed without one, and `logout` revokes the token. One variable without the
/// other, and a revoked token, are refused saying so; nothing is ever written to the config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_reaches_a_pod_with_podgate_url_and_podgate_token_and_no_init() {
    let stack = Stack::start(&[]).await;
    let pod = pod_running(&stack).await;
    let assertions = assertion_verifier(&stack, POD).await;
    let created = create_token(&stack, "CI job").await;
    let api_token = created["token"].as_str().unwrap().to_owned();
    let backend = format!("http://{}", stack.cp.http);
    let mut job = Machine::new();
    job.env = vec![
        ("PODGATE_URL".into(), backend.clone()),
        ("PODGATE_TOKEN".into(), api_token.clone()),
    ];

    let (code, out, err) = job.run(&["status", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["user"], USER);
    assert_eq!(status["backend"], backend);
    assert_eq!(status["session"], "PODGATE_TOKEN");
    assert_eq!(status["api_token"]["name"], "CI job");
    let pods: Vec<&str> = status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pod"].as_str())
        .collect();
    assert_eq!(pods, [POD], "{out}");

    // The pod redirects on its own origin; -L follows with a capability, -o writes the answer.
    let base = format!("http://{}:{}", pod_host(POD), stack.envoy.listener.port());
    let file = job.project().join("answer.json");
    let (code, out, err) = job
        .run(&[
            "curl",
            "-fsSL",
            &format!("{base}/_fake/redirect"),
            "-o",
            file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}\n{}", stack.logs());
    assert_eq!(out, "", "the answer goes to the file");
    let answer: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(answer["pod"], POD);
    assert_eq!(answer["path"], "/_fake/redirected");
    let reqs = pod.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/_fake/redirect", "/_fake/redirected"]);
    for req in &reqs {
        assert_no_credentials(req, &api_token, &assertions);
        assert!(req.has_header(ASSERTION_HEADER), "{}", pod.describe());
    }
    pod.reset();

    // A redirect to another origin is followed without the capability, and without the
    // credentials the caller gave (here the API token itself, as a script might send it to
    // the edge); other headers go on.
    let (port, got) = elsewhere().await;
    let (code, out, err) = job
        .run(&[
            "curl",
            "-L",
            "-H",
            &format!("Authorization: Bearer {api_token}"),
            "-H",
            "Cookie: app=1",
            "-H",
            "X-Trace: t2",
            &format!("{base}/_fake/redirect?port={port}"),
        ])
        .await;
    assert_eq!((code, out.as_str()), (0, "elsewhere"), "{err}");
    let head = got.await.unwrap();
    assert!(head.starts_with("GET /elsewhere "), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-trace: t2"), "{head}");
    for credential in ["podgate-token", "authorization", "cookie", "eyj", "pg_"] {
        assert!(
            !lower.contains(credential),
            "{credential} went to another origin: {head}"
        );
    }
    assert_eq!(pod.requests().len(), 1);
    pod.reset();

    // -f: an answer of 400 or more writes nothing, and leaves an earlier file as it was.
    std::fs::write(&file, "kept").unwrap();
    let (code, out, err) = job
        .run(&[
            "curl",
            "-fsS",
            &format!("{base}/.podgate/no-such-thing"),
            "-o",
            file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 22, "{out}{err}");
    assert!(err.contains("answered 404"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept");
    assert!(pod.untouched(), "{}", pod.describe());

    // Nothing was saved on this machine.
    assert!(!job.config_file().exists());
    assert!(!job.config_file().parent().unwrap().exists());

    // One variable without the other: a usage error naming the missing one.
    for (set, missing) in [
        ("PODGATE_URL", "PODGATE_TOKEN"),
        ("PODGATE_TOKEN", "PODGATE_URL"),
    ] {
        let mut half = Machine::new();
        half.env = job.env.iter().filter(|(k, _)| k == set).cloned().collect();
        let (code, _, err) = half.run(&["status"]).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&format!("{missing} is not")), "{err}");
    }

    // logout revokes it; after that the token is refused, saying where it came from.
    let (code, out, err) = job.run(&["logout"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is revoked; unset PODGATE_TOKEN"), "{out}");
    let (code, _, err) = job.run(&["curl", &format!("{base}/")]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("PODGATE_TOKEN"), "{err}");
    assert!(pod.untouched(), "{}", pod.describe());
    assert!(!job.config_file().exists());
}

/// A control plane behind TLS on a private CA (here the testkit's TLS front): the CLI trusts it
/// once the machine does, as curl would (`SSL_CERT_FILE`, or the system's store), and refuses it
/// before, saying why and sending nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_on_a_private_ca_is_reached_once_the_machine_trusts_it() {
    let stack = Stack::start(&[]).await;
    let created = create_token(&stack, "private CA").await;
    let front = podgate_testkit::TlsFront::start(stack.cp.http)
        .await
        .unwrap();
    let mut me = Machine::new();
    me.env = vec![
        (
            "PODGATE_URL".into(),
            format!("https://localhost:{}", front.addr().port()),
        ),
        (
            "PODGATE_TOKEN".into(),
            created["token"].as_str().unwrap().to_owned(),
        ),
    ];
    let (code, out, err) = me.run(&["status"]).await;
    assert_eq!(code, 5, "{out}{err}");
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(front.handshakes(), 0);
    let ca = me.home.path().join("private-ca.pem");
    std::fs::write(&ca, front.ca_pem()).unwrap();
    me.env
        .push(("SSL_CERT_FILE".into(), ca.to_string_lossy().into_owned()));
    let (code, out, err) = me.run(&["status", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["user"], USER);
    assert_eq!(status["api_token"]["name"], "private CA");
    assert!(front.handshakes() >= 1);
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// Starts `forward` for POD port 3000 on an ephemeral port: the process, its address, and its
/// stderr lines as they come.
async fn start_forward(
    me: &Machine,
) -> (
    std::process::Child,
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    let mut fwd = me
        .command(&["forward", POD, "3000", "--local", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = fwd.stdout.take().unwrap();
    let stderr = fwd.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let local: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    (fwd, local, rx)
}

/// The first line of `stderr` holding `needle` within `within`; panics with the lines seen
/// otherwise. Blocks the calling worker thread (multi-threaded runtime).
fn stderr_line(
    stderr: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    within: Duration,
) -> String {
    tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no {needle:?} within {within:?}: {seen:?}")
    })
}

/// `forward` on a stack whose capabilities live 30 s, the shortest the control plane accepts
/// (renewed with a third, 10 s, left): the stack, the pod, the process, its address, its stderr
/// lines, and the moment by which its first capability ends (it was obtained before `forward`
/// printed its address).
struct Forwarding {
    stack: Stack,
    pod: FakePod,
    fwd: std::process::Child,
    local: SocketAddr,
    stderr: std::sync::mpsc::Receiver<String>,
    first_ends_by: std::time::Instant,
    /// The id of the API token `forward` uses.
    token_id: String,
    _me: Machine,
}

async fn forward_with_short_capabilities() -> Forwarding {
    let stack = Stack::start(&["--capability-lifetime-secs", "30"]).await;
    let pod = pod_running(&stack).await;
    let created = create_token(&stack, "forward").await;
    let me = Machine::new();
    let (code, out, err) = me
        .run(&["--init", created["init_url"].as_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let (fwd, local, stderr) = start_forward(&me).await;
    Forwarding {
        stack,
        pod,
        fwd,
        local,
        stderr,
        first_ends_by: std::time::Instant::now() + Duration::from_secs(30),
        token_id: created["id"].as_str().unwrap().to_owned(),
        _me: me,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_stops_when_its_api_token_is_revoked() {
    let Forwarding {
        stack,
        pod,
        mut fwd,
        local,
        stderr,
        token_id,
        first_ends_by,
        ..
    } = forward_with_short_capabilities().await;
    let get = |path: &'static str| {
        let url = format!("http://{local}{path}");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("/before").await, 200);
    let resp = stack
        .http
        .delete(format!(
            "http://{}/api/proxy-tokens/{token_id}",
            stack.cp.http
        ))
        .header(COOKIE, &stack.session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // The edge refuses the capability within a push (`forward` passes that 401 on); the next
    // request then asks the control plane for a new one, which refuses the token: `forward`
    // says so and stops with the token's exit code, well before its capability's renewal (at
    // 20 s) was due, rather than serving refusals until then.
    let deadline = first_ends_by - Duration::from_secs(15);
    // Forwarded until the push lands, refused from then on.
    let (mut forwarded, mut refused) = (0, 0);
    let exited = loop {
        if let Some(status) = fwd.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        let url = format!("http://{local}/after");
        match client().get(url).send().await.map(|r| r.status().as_u16()) {
            Ok(200) => {
                assert_eq!(refused, 0, "forwarded after a refusal");
                forwarded += 1;
            }
            Ok(_) => refused += 1,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let Some(status) = exited else {
        let _ = fwd.kill();
        panic!("forward still runs after the token was refused");
    };
    assert_eq!(status.code(), Some(4));
    let line = stderr_line(
        &stderr,
        "refused the saved API token",
        Duration::from_secs(5),
    );
    assert!(line.contains("--init again"), "{line}");
    assert!(refused > 0, "the edge never refused the capability");
    let paths: Vec<String> = pod.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.len(), 1 + forwarded, "{paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_renews_its_capability_before_it_expires() {
    let Forwarding {
        stack: _stack,
        pod,
        mut fwd,
        local,
        stderr,
        first_ends_by,
        _me,
        ..
    } = forward_with_short_capabilities().await;
    let get = |path: &'static str| {
        let url = format!("http://{local}{path}");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("/before").await, 200);
    // A WebSocket opened now lives on past the capability's end too (the edge renews it).
    let mut ws = open_websocket(local, &format!("http://{local}")).await;
    assert_eq!(ws_echo(&mut ws, "opened").await, "opened");
    stderr_line(&stderr, "capability renewed", Duration::from_secs(35));
    // Past the first capability's end: only the renewed one can carry this request.
    tokio::time::sleep_until((first_ends_by + Duration::from_secs(1)).into()).await;
    assert_eq!(get("/after").await, 200);
    assert_eq!(ws_echo(&mut ws, "still open").await, "still open");
    let _ = fwd.kill();
    let _ = fwd.wait();
    let paths: Vec<String> = pod.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/before", "/ws", "/after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_sends_its_capability_to_its_end_while_the_control_plane_is_away() {
    let Forwarding {
        mut stack,
        pod,
        mut fwd,
        local,
        stderr,
        first_ends_by: ends_by,
        _me,
        ..
    } = forward_with_short_capabilities().await;
    let get = |path: &'static str| {
        let url = format!("http://{local}{path}");
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/before").await.0, 200);
    // The control plane goes away; Envoy keeps the configuration it has.
    stack.cp.kill();
    // Renewal (with a third of the 30 s left) fails; the capability still covers requests.
    let failed = stderr_line(
        &stderr,
        "cannot renew the capability",
        Duration::from_secs(30),
    );
    assert!(
        failed.contains("cannot reach the control plane"),
        "{failed}"
    );
    assert!(failed.contains("s more"), "{failed}");
    let (status, body) = get("/during").await;
    assert_eq!(status, 200, "{body}");
    // Past its end it is not sent: the request fails here, saying why, and reaches nobody.
    tokio::time::sleep_until(ends_by.into()).await;
    let (status, body) = get("/after").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("cannot reach the control plane"), "{body}");
    // The control plane is back: the next request waits for a new capability and goes through.
    stack.cp.spawn().await;
    let (status, body) = get("/back").await;
    assert_eq!(status, 200, "{body}");
    let _ = fwd.kill();
    let _ = fwd.wait();
    let paths: Vec<String> = pod.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/before", "/during", "/back"]);
}
