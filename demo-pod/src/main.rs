//! `podgate-demo-pod`: a stand-in for a pod's nginx (see the library's docs), for `just demo`.
//!
//! ```sh
//! podgate-demo-pod --listen 127.0.0.1:30001 --name "server A"
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use std::sync::Arc;
use std::time::Duration;

use podgate_demo_pod::{marker, AssertionCheck, DemoPod, Options, API_PORT, PAGE_PORT, WS_PATH};
use podgate_protocol::assertion::Audience;
use podgate_protocol::host::{HostTemplate, DEFAULT_PUBLIC_TEMPLATE};
use podgate_protocol::token::KeySet;

/// A stand-in for a pod's nginx: routes by Host (`localhost-PORT.…`) to a demo page (port 8726),
/// a JSON API (port 3000, `GET /api/info`) and a WebSocket echo (`/ws` on any port).
#[derive(Debug, Parser)]
#[command(name = "podgate-demo-pod", version)]
struct Args {
    /// Address to listen on (HTTP/1.1).
    #[arg(long, default_value = "127.0.0.1:30001")]
    listen: SocketAddr,
    /// Name shown on the page and in JSON answers (e.g. the server it runs on).
    #[arg(long, default_value = "demo pod")]
    name: String,
    /// Do not log one line per request on stderr.
    #[arg(long)]
    quiet: bool,
    /// Verify every request's `x-podgate-assertion` with the keys published here (the control
    /// plane's `/.well-known/podgate-assertion-jwks.json`, plain http), fetched every minute.
    #[arg(long, requires_all = ["issuer", "pod"])]
    assertion_jwks_url: Option<String>,
    /// The control plane's issuer (`iss` of the assertions).
    #[arg(long)]
    issuer: Option<String>,
    /// This pod's slug: assertions must be for one of its public hosts.
    #[arg(long)]
    pod: Option<String>,
    /// The base domain of the public pod hosts.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// The public pod host template.
    #[arg(long, default_value = DEFAULT_PUBLIC_TEMPLATE)]
    host_template: String,
}

/// How often the published assertion keys are fetched again (keys rotate with an overlap far
/// longer than this).
const JWKS_REFRESH: Duration = Duration::from_secs(60);
/// How soon a failed fetch is retried (the control plane may start after the pod).
const JWKS_RETRY: Duration = Duration::from_secs(1);

/// The assertion check the flags ask for, and a task that keeps its keys fresh.
fn assertion_check(args: &Args) -> Result<Option<Arc<AssertionCheck>>, String> {
    let (Some(url), Some(issuer), Some(pod)) = (&args.assertion_jwks_url, &args.issuer, &args.pod)
    else {
        return Ok(None);
    };
    let hosts = HostTemplate::new(&args.host_template, &args.domain).map_err(|e| e.to_string())?;
    let audience = Audience::Pod {
        hosts,
        pod: pod.clone(),
    };
    let check = Arc::new(AssertionCheck::new(issuer, audience));
    let (authority, path) = url
        .strip_prefix("http://")
        .map(|rest| rest.split_once('/').map_or((rest, "/"), |(a, p)| (a, p)))
        .ok_or("--assertion-jwks-url must be an http:// URL")?;
    let (authority, path) = (
        authority.to_owned(),
        format!("/{}", path.trim_start_matches('/')),
    );
    let refreshed = Arc::clone(&check);
    tokio::spawn(async move {
        loop {
            let wait = match fetch_keys(&authority, &path).await {
                Ok(keys) => match refreshed.set_keys(&keys) {
                    Ok(()) => JWKS_REFRESH,
                    Err(e) => {
                        eprintln!("podgate-demo-pod: the published assertion keys: {e}");
                        JWKS_RETRY
                    }
                },
                Err(e) => {
                    eprintln!("podgate-demo-pod: fetching http://{authority}{path}: {e}");
                    JWKS_RETRY
                }
            };
            tokio::time::sleep(wait).await;
        }
    });
    Ok(Some(check))
}

/// `GET http://authority/path` (HTTP/1.1, `Connection: close`) and the JSON key set it answers.
async fn fetch_keys(authority: &str, path: &str) -> Result<KeySet, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        stream.take(1 << 20).read_to_end(&mut answer),
    )
    .await
    .map_err(|_| "read timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    serde_json::from_str(body).map_err(|e| format!("not a JWKS: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("podgate-demo-pod: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let assertions = match assertion_check(&args) {
        Ok(check) => check,
        Err(e) => {
            eprintln!("podgate-demo-pod: {e}");
            return ExitCode::from(2);
        }
    };
    let options = Options {
        name: args.name.clone(),
        log_requests: !args.quiet,
        assertions,
    };
    let pod = match DemoPod::bind(options, args.listen).await {
        Ok(pod) => pod,
        Err(e) => {
            eprintln!("podgate-demo-pod: {e:#}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "podgate-demo-pod {:?} listening on http://{} (port {PAGE_PORT}: \"{}\", port {API_PORT}: JSON /api/info, {WS_PATH}: WebSocket echo)",
        pod.name(),
        pod.addr(),
        marker(PAGE_PORT)
    );
    shutdown_signal().await;
    eprintln!("podgate-demo-pod {:?}: stopping", pod.name());
    pod.stop();
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
