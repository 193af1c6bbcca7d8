//! `podgate-demo-pod`: a stand-in for a pod's nginx (see the library's docs), for `just demo`.
//!
//! ```sh
//! podgate-demo-pod --listen 127.0.0.1:30001 --name "server A"
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use podgate_demo_pod::{marker, DemoPod, Options, API_PORT, PAGE_PORT, WS_PATH};

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
    let options = Options {
        name: args.name.clone(),
        log_requests: !args.quiet,
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
