//! `--realistic`: traffic shaped like real use, against the same proxies as the comparison.
//!
//! [`USERS`] users, each with their own capability (own `sub`, own `jti`) for one of [`PODS`]
//! pods, send a mix of page loads (GET with a browser's headers), API calls (POST with a JSON
//! body) and WebSocket sessions (an upgrade, then [`WS_MESSAGES`] messages echoed by the pod).
//! A share of the page loads (`--cold-percent` of operations, 10 unless set) carry one-off
//! capabilities from a pool of [`COLD_TOKENS`], far more distinct tokens than the filter's
//! verified-token cache holds per worker (its default size), so those miss the cache and evict
//! the users' entries: the filter's memo and cache see a real key spread.
//!
//! Every Envoy runs [`WORKERS`] workers, unpinned. Cases, rounds interleaved:
//!
//! - `B`: Envoy routing, no auth;
//! - `W`: a Wasm filter that does nothing (`bench/noop-filter`);
//! - `C`: Envoy's jwt_authn (EdDSA, the same keys, every pod's audience, a token cache as large
//!   as podgate's);
//! - `D`: the podgate filter (EdDSA capabilities, default cache size);
//! - `D-prev`, with `--prev-wasm`: another build of the filter, configured as `D`;
//! - with `--pushes-per-sec` (`pushes.rs`): `D` and `D-prev` configured over ECDS with an
//!   identity assertion key and pushed that often while the rounds run, and `D-still`,
//!   configured as `D` and never pushed.
//!
//! An operation is one HTTP answer or one WebSocket message echoed. Reported per case:
//! operations per second at saturation and Envoy CPU per operation, as ratios to B, W and C.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use podgate_protocol::token::{mint, PodClaims, TokenKind};
use podgate_testkit::XorShift;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::compare::median;
use crate::echo_upstream;
use crate::envoy::{self, Envoy, Route};
use crate::pin::Placement;
use crate::pushes::{self, Pusher, Pushes};
use crate::tokens::{self, Alg, DirectoryPod, Keys};
use crate::Settings;

/// Users, each with a capability of their own.
pub const USERS: usize = 1000;
/// Pods the users' capabilities are spread over (user `u` reaches pod `u % PODS`).
pub const PODS: usize = 100;
/// Envoy's worker threads in every case.
pub const WORKERS: u32 = 2;
/// One-off capabilities, each a different user, cycled through by the cold share.
pub const COLD_TOKENS: usize = 20_000;
/// Of 100 operations picked: page loads (the one-off ones included), API calls; the rest are
/// WebSocket sessions.
pub const PAGE_PERCENT: u64 = 45;
pub const API_PERCENT: u64 = 45;
/// WebSocket messages per session (each a masked 64-byte text frame, echoed).
pub const WS_MESSAGES: usize = 10;
const WS_PAYLOAD: usize = 64;
const LIFETIME_SECS: i64 = 3600;
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct RealisticCase {
    pub id: &'static str,
    pub what: &'static str,
    /// Operations per second at saturation, each round, and their median.
    pub saturation_rounds: Vec<f64>,
    pub ops_per_sec: f64,
    pub cpu_rounds_us: Vec<f64>,
    /// Envoy CPU per operation (all threads), µs, median of rounds.
    pub envoy_cpu_us_per_op: f64,
    /// Closed-loop latency of the HTTP requests (not the WebSocket messages), median of rounds.
    pub http_p50_us: f64,
    pub http_p99_us: f64,
    pub errors: u64,
    pub envoy_rss_bytes: Option<u64>,
    /// Configurations Envoy applied to the podgate filter over ECDS during the measured rounds
    /// (`--pushes-per-sec`); `None` for a filter configured inline.
    pub pushes_applied: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RealisticReport {
    pub users: usize,
    pub pods: usize,
    pub workers: u32,
    pub cold_tokens: usize,
    /// podgate's verified-token cache size per worker (and jwt_authn's cache size).
    pub token_cache_entries: usize,
    pub mix_percent: MixShares,
    pub ws_messages_per_session: usize,
    /// The pushes made meanwhile (`--pushes-per-sec`, `--push-kind`).
    #[serde(flatten)]
    pub pushes: pushes::Made,
    /// The podgate filter's verified-token cache over the measured rounds (both workers).
    pub podgate_cache_hits: u64,
    pub podgate_cache_misses: u64,
    pub rounds: usize,
    pub saturation_secs: f64,
    pub connections: usize,
    pub cases: Vec<RealisticCase>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MixShares {
    pub cold_page: u64,
    pub page: u64,
    pub api: u64,
    pub websocket_session: u64,
}

/// A capability for `sub` on `pod`, EdDSA.
fn capability(keys: &Keys, sub: &str, pod: &str, jti: &str) -> anyhow::Result<String> {
    let claims = PodClaims {
        iss: tokens::ISSUER.to_owned(),
        sub: sub.to_owned(),
        aud: tokens::pod_host(pod),
        pod: pod.to_owned(),
        port: tokens::BENCH_PORT,
        jti: jti.to_owned(),
        email: Some(format!("{sub}@example.dev")),
    };
    Ok(mint(
        TokenKind::Capability,
        keys.key(Alg::EdDSA),
        &claims,
        crate::unix_now(),
        LIFETIME_SECS,
    )?)
}

fn pod_slug(i: usize) -> String {
    format!("app{:03}", i % PODS)
}

/// The request bytes of one user (or one cold token).
struct User {
    page: Vec<u8>,
    api: Vec<u8>,
    upgrade: Vec<u8>,
}

const BROWSER_HEADERS: &str =
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\n";

impl User {
    fn new(host: &str, token: &str, n: usize) -> User {
        let cookie = format!("Cookie: theme=dark; podgate_cap={token}; _pk_id={n:08x}\r\n");
        let page = format!(
            "GET /lab/tree/notebooks/{n}.ipynb HTTP/1.1\r\nHost: {host}\r\n{BROWSER_HEADERS}\
             Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
             Sec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n{cookie}\r\n"
        );
        let body = format!(
            "{{\"path\":\"notebooks/{n}.ipynb\",\"type\":\"notebook\",\"content\":null,\"format\":\"json\"}}"
        );
        let api = format!(
            "POST /api/contents/notebooks/{n}.ipynb HTTP/1.1\r\nHost: {host}\r\n{BROWSER_HEADERS}\
             Accept: application/json\r\nContent-Type: application/json\r\n\
             Origin: http://{host}\r\nSec-Fetch-Mode: cors\r\n{cookie}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let upgrade = format!(
            "GET /api/kernels/{n}/channels HTTP/1.1\r\nHost: {host}\r\n{BROWSER_HEADERS}\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://{host}\r\n{cookie}\r\n"
        );
        User {
            page: page.into_bytes(),
            api: api.into_bytes(),
            upgrade: upgrade.into_bytes(),
        }
    }
}

/// Everything the load sends: the users' requests and the cold pool, shared by connections.
struct Traffic {
    users: Vec<User>,
    cold: Vec<Vec<u8>>,
    next_cold: AtomicU64,
    frame: Vec<u8>,
}

fn traffic(keys: &Keys) -> anyhow::Result<Traffic> {
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .max(1);
    let mint_range = |kind: &'static str, count: usize| -> anyhow::Result<Vec<(usize, String)>> {
        let per = count.div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        (t * per..((t + 1) * per).min(count))
                            .map(|n| {
                                let sub = format!("u-{kind}-{n}");
                                let token =
                                    capability(keys, &sub, &pod_slug(n), &format!("{kind}-{n}"))?;
                                Ok((n, token))
                            })
                            .collect::<anyhow::Result<Vec<_>>>()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(count);
            for h in handles {
                all.extend(
                    h.join()
                        .map_err(|_| anyhow::anyhow!("minting thread panicked"))??,
                );
            }
            Ok(all)
        })
    };
    eprintln!("minting {USERS} user and {COLD_TOKENS} one-off capabilities");
    let users = mint_range("user", USERS)?
        .into_iter()
        .map(|(n, token)| User::new(&tokens::pod_host(&pod_slug(n)), &token, n))
        .collect();
    let cold = mint_range("cold", COLD_TOKENS)?
        .into_iter()
        .map(|(n, token)| User::new(&tokens::pod_host(&pod_slug(n)), &token, n).page)
        .collect();
    // A masked text frame: FIN + text, mask bit + length, the mask, the masked payload.
    let mut frame = vec![0x81, 0x80 | u8::try_from(WS_PAYLOAD).unwrap_or(0x7d)];
    let mask = [0x12, 0x34, 0x56, 0x78];
    frame.extend_from_slice(&mask);
    frame.extend((0..WS_PAYLOAD).map(|i| b'a' ^ mask[i % 4]));
    Ok(Traffic {
        users,
        cold,
        next_cold: AtomicU64::new(0),
        frame,
    })
}

// ---- the load -----------------------------------------------------------------------------

#[derive(Debug, Default)]
struct MixStats {
    ops: u64,
    errors: u64,
    first_bad_status: Option<u16>,
    http_latency_ns: Vec<u64>,
}

/// Reads one response head (and its `Content-Length` body) from `stream`; its status.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    filled: &mut usize,
) -> anyhow::Result<u16> {
    loop {
        if let Some((status, used, close)) = crate::load::parse_response(&buf[..*filled])? {
            buf.copy_within(used..*filled, 0);
            *filled -= used;
            if close {
                bail!("server closed the connection (status {status})");
            }
            return Ok(status);
        }
        if *filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[*filled..]).await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        *filled += n;
    }
}

/// One WebSocket session on a new connection: upgrade, then the messages; messages echoed.
async fn websocket(addr: SocketAddr, traffic: &Traffic, user: &User) -> anyhow::Result<u64> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&user.upgrade).await?;
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            bail!("closed during the upgrade");
        }
        head.push(byte[0]);
        if head.len() > 16 * 1024 {
            bail!("upgrade answer too long");
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        let status = std::str::from_utf8(head.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        return Err(BadStatus(status).into());
    }
    let mut echo = vec![0u8; traffic.frame.len()];
    for _ in 0..WS_MESSAGES {
        stream.write_all(&traffic.frame).await?;
        stream.read_exact(&mut echo).await?;
    }
    Ok(WS_MESSAGES as u64)
}

#[derive(Debug)]
struct BadStatus(u16);

impl std::fmt::Display for BadStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status {}", self.0)
    }
}

impl std::error::Error for BadStatus {}

/// Closed loop of the mix: `connections` clients, each picking its next operation as soon as
/// the last one finished.
async fn mix_closed_loop(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    traffic: &Arc<Traffic>,
    seed: u64,
    cold_percent: u64,
) -> anyhow::Result<(MixStats, Duration)> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let traffic = Arc::clone(traffic);
        // One deterministic generator per connection.
        let mut rng = XorShift::seeded(seed ^ ((c as u64 + 1) << 20));
        tasks.spawn(async move {
            let mut stats = MixStats::default();
            let mut stream: Option<TcpStream> = None;
            let mut buf = vec![0u8; 16 * 1024];
            let mut filled = 0usize;
            let mut consecutive = 0u32;
            while Instant::now() < deadline && consecutive < 50 {
                let pick = rng.next_u64() % 100;
                let user = &traffic.users[rng.below(USERS)];
                let request: &[u8] = if pick < cold_percent {
                    let n = traffic.next_cold.fetch_add(1, Ordering::Relaxed);
                    &traffic.cold[(n % traffic.cold.len() as u64) as usize]
                } else if pick < PAGE_PERCENT {
                    &user.page
                } else if pick < PAGE_PERCENT + API_PERCENT {
                    &user.api
                } else {
                    let result =
                        tokio::time::timeout(EXCHANGE_TIMEOUT, websocket(addr, &traffic, user))
                            .await;
                    match result {
                        Ok(Ok(n)) => {
                            // The upgrade and each echoed message.
                            stats.ops += n + 1;
                            consecutive = 0;
                        }
                        Ok(Err(e)) => {
                            stats.errors += 1;
                            if let Some(BadStatus(s)) = e.downcast_ref::<BadStatus>() {
                                stats.first_bad_status.get_or_insert(*s);
                            }
                            consecutive += 1;
                        }
                        Err(_) => {
                            stats.errors += 1;
                            consecutive += 1;
                        }
                    }
                    continue;
                };
                let sent = Instant::now();
                let result = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
                    if stream.is_none() {
                        let s = TcpStream::connect(addr).await?;
                        s.set_nodelay(true)?;
                        stream = Some(s);
                        filled = 0;
                    }
                    let Some(s) = stream.as_mut() else {
                        bail!("not connected");
                    };
                    s.write_all(request).await?;
                    read_response(s, &mut buf, &mut filled).await
                })
                .await;
                match result {
                    Ok(Ok(200)) => {
                        stats.ops += 1;
                        stats
                            .http_latency_ns
                            .push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
                        consecutive = 0;
                    }
                    Ok(Ok(status)) => {
                        stats.errors += 1;
                        stats.first_bad_status.get_or_insert(status);
                        consecutive += 1;
                    }
                    _ => {
                        stream = None;
                        stats.errors += 1;
                        consecutive += 1;
                    }
                }
            }
            anyhow::Ok(stats)
        });
    }
    let mut total = MixStats::default();
    while let Some(joined) = tasks.join_next().await {
        let s = joined??;
        total.ops += s.ops;
        total.errors += s.errors;
        total.first_bad_status = total.first_bad_status.or(s.first_bad_status);
        total.http_latency_ns.extend(s.http_latency_ns);
    }
    Ok((total, start.elapsed()))
}

fn quantile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

// ---- the Envoys ---------------------------------------------------------------------------

/// The comparison's listener with WebSocket upgrades on (as every shipped configuration has).
fn listener(port: u16, route: &Route<'_>, filters: Vec<Value>) -> Value {
    let mut l = envoy::listener(port, route, filters);
    l["filter_chains"][0]["filters"][0]["typed_config"]["upgrade_configs"] =
        json!([{"upgrade_type": "websocket"}]);
    l
}

pub async fn run(
    settings: &Settings,
    placement: &Placement,
    keys: &Keys,
) -> anyhow::Result<RealisticReport> {
    let cold_percent = settings.cold_percent;
    if cold_percent > PAGE_PERCENT {
        bail!("--cold-percent must be at most {PAGE_PERCENT}");
    }
    let upstream = echo_upstream::start(placement.upstream_cpu)?;
    let traffic = Arc::new(traffic(keys)?);
    let cluster = "pod_bench";
    let pods: Vec<DirectoryPod> = (0..PODS)
        .map(|i| DirectoryPod {
            slug: pod_slug(i),
            cluster: cluster.to_owned(),
            address: None,
        })
        .collect();
    let filter_config =
        tokens::filter_config_json(&keys.jwks()?, &pods, settings.token_cache_entries)?;
    tokens::check_filter_config(&filter_config)?;
    let cache_entries =
        podgate_protocol::config::FilterConfig::compile_json(filter_config.as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .token_cache_entries;
    let jwks = serde_json::to_string(&keys.jwks()?)?;
    let mut jwt = envoy::jwt_authn_filter(tokens::ISSUER, "", &jwks, true);
    let provider = &mut jwt["typed_config"]["providers"]["podgate"];
    provider["audiences"] = json!((0..PODS)
        .map(|i| tokens::pod_host(&pod_slug(i)))
        .collect::<Vec<_>>());
    provider["jwt_cache_config"] = json!({"jwt_cache_size": cache_entries});

    // With pushes, the podgate cases get their configuration over ECDS, from a file each.
    let pushing = settings.pushes_per_sec > 0.0;
    let mut pushes = if pushing {
        Some(Pushes::new(
            keys,
            &pods,
            settings.token_cache_entries,
            settings.push_kind,
        )?)
    } else {
        None
    };
    let mut podgate = |id: &str, wasm: &Path, pushed: bool| match pushes.as_mut() {
        Some(pushes) => pushes.filter(id, wasm, pushed),
        None => Ok(envoy::podgate_filter(wasm, &filter_config)),
    };
    let mut cases: Vec<(&'static str, &'static str, Vec<Value>, Route<'static>)> = vec![
        (
            "B",
            "Envoy routing, no auth",
            vec![],
            Route::Cluster(cluster),
        ),
        (
            "W",
            "a Wasm filter that does nothing",
            vec![envoy::noop_wasm_filter(&settings.noop_wasm, None)],
            Route::Cluster(cluster),
        ),
        (
            "C",
            "Envoy's jwt_authn, token cache as large as podgate's",
            vec![jwt],
            Route::Cluster(cluster),
        ),
        (
            "D",
            if pushing {
                "podgate, pushed"
            } else {
                "podgate"
            },
            vec![podgate("D", &settings.filter_wasm, true)?],
            Route::ClusterHeader("x-podgate-cluster"),
        ),
    ];
    // Another build of the filter in the same interleaved rounds: a before/after of a change.
    if let Some(prev) = &settings.prev_wasm {
        cases.push((
            "D-prev",
            if pushing {
                "podgate, another build (`--prev-wasm`), pushed"
            } else {
                "podgate, another build (`--prev-wasm`)"
            },
            vec![podgate("D-prev", prev, true)?],
            Route::ClusterHeader("x-podgate-cluster"),
        ));
    }
    // What the pushes cost: D as configured with pushes, never pushed.
    if pushing {
        cases.push((
            "D-still",
            "podgate, configured as D, not pushed",
            vec![podgate("D-still", &settings.filter_wasm, false)?],
            Route::ClusterHeader("x-podgate-cluster"),
        ));
    }
    let mut envoys = Vec::new();
    for (i, (id, _, filters, route)) in cases.iter().enumerate() {
        let port = envoy::free_port()?;
        let bootstrap = envoy::static_bootstrap(
            &format!("realistic-{id}"),
            listener(port, route, filters.clone()),
            vec![envoy::static_cluster(cluster, upstream)],
        );
        let base = 50 + u32::try_from(i).unwrap_or(0);
        let mut e = Envoy::start_workers(
            &settings.envoy,
            placement,
            &format!("realistic-{id}"),
            &bootstrap,
            port,
            base,
            WORKERS,
        )
        .await?;
        e.wait_ready().await?;
        envoys.push(e);
    }

    // Every kind of operation answers before anything is measured; a bad token is refused.
    for (e, (id, ..)) in envoys.iter().zip(&cases) {
        let user = &traffic.users[0];
        for (kind, bytes) in [
            ("page", &user.page),
            ("api", &user.api),
            ("cold page", &traffic.cold[0]),
        ] {
            let mut s = TcpStream::connect(e.listener).await?;
            s.write_all(bytes).await?;
            let mut buf = vec![0u8; 16 * 1024];
            let mut filled = 0;
            let status = read_response(&mut s, &mut buf, &mut filled).await?;
            if status != 200 {
                bail!("{id}: {kind} answered {status}, expected 200");
            }
        }
        websocket(e.listener, &traffic, user)
            .await
            .with_context(|| format!("{id}: WebSocket session"))?;
        if matches!(*id, "C" | "D" | "D-prev") {
            let host = tokens::pod_host(&pod_slug(0));
            let status =
                crate::load::probe(e.listener, &crate::load::Requests::fixed(&host, "bad")).await?;
            if status != 401 {
                bail!("{id} let a request with a bad token through ({status})");
            }
        }
    }

    let conns = settings.connections;
    let warm = Duration::from_secs_f64(settings.warmup_secs);
    let pusher = pushes.as_ref().map(|p| p.start(settings.pushes_per_sec));
    for e in &envoys {
        mix_closed_loop(e.listener, conns, warm, &traffic, 0, cold_percent).await?;
    }
    // The filter's verified-token cache over the measured rounds (its counters are flushed
    // once a second).
    let d = cases
        .iter()
        .position(|(id, ..)| *id == "D")
        .context("no case D")?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits_before = envoys[d]
        .counter("wasmcustom.podgate.token_cache.hits")
        .await?;
    let misses_before = envoys[d]
        .counter("wasmcustom.podgate.token_cache.misses")
        .await?;
    // Only the podgate cases get their filter over ECDS, and only with pushes.
    let discovered: Vec<bool> = cases
        .iter()
        .map(|(id, ..)| pushing && id.starts_with('D'))
        .collect();
    let mut reloads_before = Vec::new();
    for (e, discovered) in envoys.iter().zip(&discovered) {
        reloads_before.push(pushes::applied(e, *discovered).await?);
    }
    let sat = Duration::from_secs_f64(settings.saturation_secs);
    let n = cases.len();
    let mut ops: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut p50: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut p99: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut errors = vec![0u64; n];
    for round in 0..settings.rounds {
        for (i, e) in envoys.iter().enumerate() {
            let before = e.cpu_time();
            let seed = (round * n + i + 1) as u64;
            let (mut stats, elapsed) =
                mix_closed_loop(e.listener, conns, sat, &traffic, seed, cold_percent).await?;
            let cpu_us = if stats.ops > 0 {
                (e.cpu_time() - before).as_secs_f64() * 1e6 / stats.ops as f64
            } else {
                f64::NAN
            };
            let rate = stats.ops as f64 / elapsed.as_secs_f64().max(1e-9);
            stats.http_latency_ns.sort_unstable();
            eprintln!(
                "realistic round {round} {:<2} {:>9.0} ops/s  Envoy CPU {:>6.1} µs/op  errors {}{}",
                cases[i].0,
                rate,
                cpu_us,
                stats.errors,
                stats
                    .first_bad_status
                    .map(|s| format!(" (first status {s})"))
                    .unwrap_or_default()
            );
            ops[i].push(rate);
            cpu[i].push(cpu_us);
            p50[i].push(quantile_us(&stats.http_latency_ns, 0.5));
            p99[i].push(quantile_us(&stats.http_latency_ns, 0.99));
            errors[i] += stats.errors;
        }
    }
    let mut reloads = Vec::new();
    for ((e, before), discovered) in envoys.iter().zip(&reloads_before).zip(&discovered) {
        let after = pushes::applied(e, *discovered).await?;
        reloads.push(after.zip(*before).map(|(n, b)| n - b));
    }
    let pushes_written = pusher.map(Pusher::finish).transpose()?.unwrap_or(0);
    for ((id, ..), applied) in cases.iter().zip(&reloads) {
        if *id != "D-still" && applied == &Some(0) {
            bail!("{id}: Envoy applied none of the {pushes_written} pushes");
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits = envoys[d]
        .counter("wasmcustom.podgate.token_cache.hits")
        .await?
        - hits_before;
    let misses = envoys[d]
        .counter("wasmcustom.podgate.token_cache.misses")
        .await?
        - misses_before;
    let results = cases
        .iter()
        .enumerate()
        .map(|(i, (id, what, ..))| RealisticCase {
            id,
            what,
            saturation_rounds: ops[i].clone(),
            ops_per_sec: median(&ops[i]),
            cpu_rounds_us: cpu[i].clone(),
            envoy_cpu_us_per_op: median(&cpu[i]),
            http_p50_us: median(&p50[i]),
            http_p99_us: median(&p99[i]),
            errors: errors[i],
            envoy_rss_bytes: envoys[i].rss_bytes().ok(),
            pushes_applied: reloads[i],
        })
        .collect();
    Ok(RealisticReport {
        users: USERS,
        pods: PODS,
        workers: WORKERS,
        cold_tokens: COLD_TOKENS,
        token_cache_entries: cache_entries,
        mix_percent: MixShares {
            cold_page: cold_percent,
            page: PAGE_PERCENT - cold_percent,
            api: API_PERCENT,
            websocket_session: 100 - PAGE_PERCENT - API_PERCENT,
        },
        pushes: pushes::Made::new(settings, pushes_written),
        podgate_cache_hits: hits,
        podgate_cache_misses: misses,
        ws_messages_per_session: WS_MESSAGES,
        rounds: settings.rounds,
        saturation_secs: settings.saturation_secs,
        connections: conns,
        cases: results,
    })
}

impl RealisticReport {
    /// The Markdown table: each case against B, W and C.
    pub fn markdown(&self) -> String {
        let find = |id: &str| self.cases.iter().find(|c| c.id == id);
        let mut out = format!(
            "{} users ({} capabilities of their own) over {} pods; Envoy with {} workers. Mix of \
             operations picked: {}% page loads with one-off capabilities (a pool of {}), {}% page \
             loads, {}% API calls (POST, JSON body), {}% WebSocket sessions (upgrade + {} \
             messages). {} rounds, interleaved; closed loop, {} connections, {} s per round; \
             medians. An operation is one HTTP answer or one echoed WebSocket message.\n\n\
             | case | what | ops/s | Envoy CPU µs/op | HTTP p50 µs | HTTP p99 µs | ops/s ÷ B | CPU − B µs | CPU ÷ W | CPU ÷ C | errors |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.users,
            self.users,
            self.pods,
            self.workers,
            self.mix_percent.cold_page,
            self.cold_tokens,
            self.mix_percent.page,
            self.mix_percent.api,
            self.mix_percent.websocket_session,
            self.ws_messages_per_session,
            self.rounds,
            self.connections,
            self.saturation_secs
        );
        let b = find("B");
        let w = find("W");
        let c = find("C");
        for case in &self.cases {
            let ratio = |base: Option<&RealisticCase>, f: fn(&RealisticCase) -> f64| {
                base.map_or(f64::NAN, |base| f(case) / f(base))
            };
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.3} | {:+.1} | {:.2} | {:.2} | {} |\n",
                case.id,
                case.what,
                case.ops_per_sec,
                case.envoy_cpu_us_per_op,
                case.http_p50_us,
                case.http_p99_us,
                ratio(b, |c| c.ops_per_sec),
                b.map_or(f64::NAN, |b| case.envoy_cpu_us_per_op - b.envoy_cpu_us_per_op),
                ratio(w, |c| c.envoy_cpu_us_per_op),
                ratio(c, |c| c.envoy_cpu_us_per_op),
                case.errors
            ));
        }
        let looked_up = (self.podgate_cache_hits + self.podgate_cache_misses).max(1);
        out.push_str(&format!(
            "\npodgate's verified-token cache ({} entries per worker) over the measured rounds: {} \
             hits, {} misses ({:.1}% misses).\n",
            self.token_cache_entries,
            self.podgate_cache_hits,
            self.podgate_cache_misses,
            100.0 * self.podgate_cache_misses as f64 / looked_up as f64
        ));
        let applied: Vec<(&str, u64)> = (self.cases.iter())
            .filter_map(|c| c.pushes_applied.map(|n| (c.id, n)))
            .collect();
        out.push_str(&self.pushes.summary(&applied));
        out
    }
}
