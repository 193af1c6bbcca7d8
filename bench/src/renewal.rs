//! `--renewal`: what renewal at the edge costs, against the normal cached path, in one run.
//!
//! Four Envoys run the podgate filter on the same token (a browser's cookie capability with a
//! session id) and the same load, rounds interleaved as in the comparison:
//!
//! - `base`: renewal off, the cached path (the baseline);
//! - `base-again`: an identical second Envoy, so the ratio between the two is the run's noise;
//! - `renewal-cached`: renewal on, the capability not yet in its renewal window: the cached path
//!   with renewal configured (one comparison more);
//! - `renewal-window`: renewal on, the capability inside its window: the filter renews it once
//!   (a call to a stub renew endpoint), then every request carrying it looks its renewal up and
//!   gets the fresh cookie on its response.
//!
//! Ratios are against `base`: requests per second at saturation and Envoy CPU per request.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use podgate_protocol::token::{mint_in_session, PodClaims, TokenKind};
use serde::Serialize;
use serde_json::json;

use crate::envoy::{self, Envoy, Route};
use crate::load::Requests;
use crate::pin::Placement;
use crate::tokens::{self, Alg, DirectoryPod, Keys};
use crate::{interleaved, Settings};

/// The session id the bench capability carries.
const SID: &str = "0123456789abcdef0123456789abcdef";
/// The renewal secret the filter sends the stub (not checked there).
const SECRET: &str = "bench-renew-secret-0123456789";
/// The capability's lifetime, seconds (the filter's default maximum).
const LIFETIME_SECS: i64 = 3600;
/// `before_secs` that leaves the capability outside its window for the whole run.
const BEFORE_NOT_DUE: i64 = 60;
/// `before_secs` that puts the capability inside its window from the start.
const BEFORE_DUE: i64 = LIFETIME_SECS - 1;

#[derive(Debug, Clone, Serialize)]
pub struct RenewalReport {
    pub rounds: usize,
    pub saturation_secs: f64,
    pub connections: usize,
    /// Renew calls the stub answered (one per worker is expected).
    pub renew_calls: u64,
    pub cases: Vec<crate::interleaved::Case>,
}

/// The renew endpoint's stand-in: answers every request with `answer`, keep-alive; counts them.
fn start_stub(answer: String, calls: Arc<AtomicU64>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("renew stub bind")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("renew-stub".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let answer = answer.clone();
                let calls = Arc::clone(&calls);
                std::thread::spawn(move || serve_stub(stream, &answer, &calls));
            }
        })
        .context("spawning the renew stub")?;
    Ok(addr)
}

/// Answers each request head on the connection (the renew call has no body).
fn serve_stub(mut stream: TcpStream, answer: &str, calls: &AtomicU64) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            calls.fetch_add(1, Ordering::Relaxed);
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The bench capability, minted for session `SID`, issued at `issued_at`.
pub(crate) fn capability(keys: &Keys, issued_at: i64, jti: &str) -> anyhow::Result<String> {
    let pod = tokens::BENCH_POD;
    let claims = PodClaims {
        iss: tokens::ISSUER.to_owned(),
        sub: "u-bench".to_owned(),
        aud: tokens::pod_host(pod),
        pod: pod.to_owned(),
        port: tokens::BENCH_PORT,
        jti: jti.to_owned(),
        email: Some("bench@example.dev".to_owned()),
    };
    Ok(mint_in_session(
        TokenKind::Capability,
        keys.key(Alg::EdDSA),
        &claims,
        Some(SID),
        issued_at,
        LIFETIME_SECS,
    )?)
}

pub async fn run(
    settings: &Settings,
    placement: &Placement,
    upstream: SocketAddr,
    keys: &Keys,
) -> anyhow::Result<RenewalReport> {
    let now = crate::unix_now();
    let old = capability(keys, now, "bench-renewal-old")?;
    // The renewal outlives the old capability by a second, as the filter requires.
    let fresh = capability(keys, now + 1, "bench-renewal-fresh")?;
    let body = json!({
        "token": fresh,
        "set_cookie": format!("podgate_cap={fresh}; HttpOnly; SameSite=Lax; Path=/; Max-Age={LIFETIME_SECS}"),
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let calls = Arc::new(AtomicU64::new(0));
    let stub = start_stub(answer, Arc::clone(&calls))?;

    let pod_cluster = "pod_bench";
    let cp_cluster = "podgate_control_plane";
    let config = |before_secs: Option<i64>| -> anyhow::Result<String> {
        let json = tokens::filter_config_json(
            &keys.jwks()?,
            &[DirectoryPod {
                slug: tokens::BENCH_POD.to_owned(),
                cluster: pod_cluster.to_owned(),
                address: None,
            }],
            None,
        )?;
        let mut value: serde_json::Value = serde_json::from_str(&json)?;
        if let Some(before_secs) = before_secs {
            value["renewal"] = json!({
                "url": format!("http://{stub}/api/proxy-renew"),
                "secret": SECRET,
                "before_secs": before_secs,
            });
        }
        let json = value.to_string();
        tokens::check_filter_config(&json)?;
        Ok(json)
    };
    let cases: [(&'static str, &'static str, Option<i64>); 4] = [
        ("base", "renewal off, cached path (the baseline)", None),
        (
            "base-again",
            "the same, a second Envoy (the run's noise)",
            None,
        ),
        (
            "renewal-cached",
            "renewal on, capability not yet in its window (cached path)",
            Some(BEFORE_NOT_DUE),
        ),
        (
            "renewal-window",
            "renewal on, capability inside its window (renewed once, fresh cookie on every answer)",
            Some(BEFORE_DUE),
        ),
    ];
    let mut envoys = Vec::new();
    for (i, (id, _, before)) in cases.iter().enumerate() {
        let port = envoy::free_port()?;
        let filter = envoy::podgate_filter(&settings.filter_wasm, &config(*before)?);
        let bootstrap = envoy::static_bootstrap(
            id,
            envoy::listener(
                port,
                &Route::ClusterHeader("x-podgate-cluster"),
                vec![filter],
            ),
            vec![
                envoy::static_cluster(pod_cluster, upstream),
                envoy::static_cluster(cp_cluster, stub),
            ],
        );
        let base_id = 20 + u32::try_from(i).unwrap_or(0);
        let mut e = Envoy::start(&settings.envoy, placement, id, &bootstrap, port, base_id).await?;
        e.wait_ready().await?;
        envoys.push(e);
    }

    let requests = Requests::fixed(&tokens::pod_host(tokens::BENCH_POD), &old);
    let named: Vec<(&'static str, &'static str)> =
        cases.iter().map(|(id, what, _)| (*id, *what)).collect();
    interleaved::probe(&envoys, &named, &requests).await?;
    // The window case really renews: its answers carry the fresh cookie.
    if !renewed_cookie_on_answer(
        envoys[3].listener,
        &tokens::pod_host(tokens::BENCH_POD),
        &old,
        &fresh,
    )
    .await?
    {
        bail!("renewal-window: the answer carries no renewed cookie");
    }

    let conns = settings.connections;
    let results = interleaved::measure("renewal", settings, &envoys, &named, &requests).await?;
    Ok(RenewalReport {
        rounds: settings.rounds,
        saturation_secs: settings.saturation_secs,
        connections: conns,
        renew_calls: calls.load(Ordering::Relaxed),
        cases: results,
    })
}

/// Whether a request with `old` through `listener` is answered with `fresh` as our cookie.
async fn renewed_cookie_on_answer(
    listener: SocketAddr,
    host: &str,
    old: &str,
    fresh: &str,
) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(listener).await?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nCookie: podgate_cap={old}\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer))
        .await
        .context("the renewal-window answer took over 5 s")??;
    let answer = String::from_utf8_lossy(&answer);
    Ok(answer.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("set-cookie:")
            && l.contains(&format!("podgate_cap={fresh}"))
    }))
}

impl RenewalReport {
    /// The Markdown table and how to read it.
    pub fn markdown(&self) -> String {
        let shape = (self.rounds, self.connections, self.saturation_secs);
        let note = format!(" Renew calls answered by the stub: {}.", self.renew_calls);
        interleaved::markdown(shape, &note, &self.cases)
    }
}
