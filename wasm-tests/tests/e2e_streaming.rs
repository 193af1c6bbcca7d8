//! What a pod's users meet through a real Envoy 1.40 running `envoy/podgate-static.yaml` with
//! the compiled filter, a valid capability on every request, and the fake pod's behaviours
//! (`podgate_testkit::fake_pod::Behaviour`, paths under `/_fake/`):
//!
//! - streaming: server-sent events and chunked bodies reach the client as the pod sends them; a
//!   1 GiB download and a 100 MiB upload pass with Envoy's memory flat (its RSS, read from
//!   `/proc/<pid>/status` during the transfer);
//! - the pod route's idle timeout: a long poll and an idle WebSocket live until it and are cut
//!   after it. The file's value is an hour (`route_idle_timeout_is_the_documented_hour`); this
//!   suite sets [`IDLE`] to meet it in seconds;
//! - every way a pod fails (nothing listening, the connection closed or reset before the
//!   answer, no answer in time, bytes that are not HTTP) is answered by the file's local reply
//!   mapping: JSON `{"error", "pod", "port"}`, or a small HTML page for a browser, never an
//!   internal address.
//!
//! The measured figures (first-event latency, RSS, throughput) are printed (`--nocapture`).
//! The tests take turns on one Envoy, so a transfer's memory is its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use podgate_wasm_tests::e2e::client::Answer;
use podgate_wasm_tests::e2e::{
    block_on, public_host, Bootstrap, EnvoyClient, PodSpec, Stack, WsOutcome,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, MutexGuard, OnceCell};
use tokio_tungstenite::tungstenite::Message;

/// The app port in every pod host here.
const PORT: u16 = 8726;
/// The pod route's idle timeout in this suite's Envoy.
const IDLE: Duration = Duration::from_secs(3);
/// How much Envoy's RSS may grow during a transfer.
const RSS_BOUND_KIB: u64 = 64 * 1024;

const PODS: [PodSpec; 2] = [
    PodSpec {
        slug: "alpha",
        status: "running",
        down: false,
    },
    // In the directory and running, but nothing listens at its address.
    PodSpec {
        slug: "omega",
        status: "running",
        down: true,
    },
];

/// This test's turn on the suite's Envoy (started on first use with the idle timeout set to
/// [`IDLE`]); records are cleared when it begins.
async fn turn() -> (&'static Stack, MutexGuard<'static, ()>) {
    static STACK: OnceCell<(Stack, Mutex<()>)> = OnceCell::const_new();
    let (stack, lock) = STACK
        .get_or_init(|| async {
            let mut bootstrap = Bootstrap::load_static().unwrap();
            bootstrap.set_route_idle_timeout(IDLE).unwrap();
            let stack = Stack::start_from("streaming", bootstrap, &PODS, |_| {})
                .await
                .unwrap();
            (stack, Mutex::new(()))
        })
        .await;
    let guard = lock.lock().await;
    stack.reset();
    (stack, guard)
}

fn host(pod: &str) -> String {
    public_host(PORT, pod)
}

/// A client without a whole-request deadline (the suite's own is 10 s).
fn streaming_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------------------------
// Paced streams

/// GETs `path` on alpha and returns when each `separator`-ended piece arrived (ms since the
/// request was sent), with the answer's headers.
async fn arrivals(
    stack: &Stack,
    path: &str,
    separator: &str,
) -> (Vec<u128>, reqwest::header::HeaderMap) {
    let token = stack.minter.valid("alpha", PORT).unwrap();
    let url = format!("http://{}{path}", stack.client.listener());
    let sent = Instant::now();
    let mut resp = streaming_client()
        .get(url)
        .header("host", host("alpha"))
        .header("podgate-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    let mut text = String::new();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = resp.chunk().await.unwrap() {
            let at = ms(sent.elapsed());
            text.push_str(&String::from_utf8_lossy(&chunk));
            while seen.len() < text.matches(separator).count() {
                seen.push(at);
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the stream did not end: got {text:?}");
    (seen, headers)
}

/// The pod sends a piece at once and then every 300 ms, ten in all (0 to 2.7 s).
fn assert_paced(what: &str, arrivals: &[u128]) {
    eprintln!("{what}: pieces arrived at {arrivals:?} ms (pod sent one every 300 ms from 0)");
    assert_eq!(arrivals.len(), 10, "{what}: {arrivals:?}");
    assert!(
        arrivals[0] < 1000,
        "{what}: first piece after {arrivals:?} ms"
    );
    assert!(
        arrivals[9] >= 2400,
        "{what}: the pod paces its pieces: {arrivals:?}"
    );
    for (i, at) in arrivals.iter().enumerate() {
        let sent = 300 * i as u128;
        assert!(
            *at < sent + 1000,
            "{what}: piece {i}, sent at {sent} ms, arrived at {at} ms: held back ({arrivals:?})"
        );
    }
}

#[test]
fn server_sent_events_reach_the_client_as_the_pod_sends_them() {
    block_on(async {
        let (stack, _turn) = turn().await;
        let (seen, headers) = arrivals(stack, "/_fake/events?every_ms=300&count=10", "\n\n").await;
        assert_eq!(
            headers.get("content-type").unwrap(),
            "text/event-stream",
            "{headers:?}"
        );
        assert_paced("server-sent events", &seen);
        assert_eq!(stack.pod("alpha").unwrap().requests().len(), 1);
    });
}

#[test]
fn a_chunked_response_reaches_the_client_as_the_pod_sends_it() {
    block_on(async {
        let (stack, _turn) = turn().await;
        let (seen, headers) = arrivals(stack, "/_fake/chunks?every_ms=300&count=10", "\n").await;
        assert_eq!(
            headers.get("transfer-encoding").unwrap(),
            "chunked",
            "{headers:?}"
        );
        assert_paced("chunked body", &seen);
    });
}

// ---------------------------------------------------------------------------------------------
// Large transfers and Envoy's memory

/// Envoy's resident memory in KiB (`VmRSS` in `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Samples Envoy's RSS every 10 ms on its own thread until stopped; returns the highest.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, usize)>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            let mut samples = 0;
            while !flag.load(Ordering::SeqCst) {
                peak = peak.max(rss_kib(pid));
                samples += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (peak, samples)
        });
        RssSampler { stop, thread }
    }

    /// The highest RSS seen (KiB) and how many samples were taken.
    fn finish(self) -> (u64, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads a response head; returns the status, the head and the body bytes read with it.
async fn read_head(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut piece = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut piece).await.unwrap();
        assert!(n > 0, "closed before the response head: {buf:?}");
        buf.extend_from_slice(&piece[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
            return (status, head, buf[end + 4..].to_vec());
        }
    }
}

fn request_head(stack: &Stack, method: &str, path: &str, extra: &str) -> String {
    let token = stack.minter.valid("alpha", PORT).unwrap();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\npodgate-token: {token}\r\n{extra}Connection: close\r\n\r\n",
        host("alpha")
    )
}

#[test]
fn a_one_gib_download_streams_through_with_flat_envoy_memory() {
    const LEN: u64 = 1 << 30;
    block_on(async {
        let (stack, _turn) = turn().await;
        let pid = stack.envoy.pid();
        let before = rss_kib(pid);
        let sampler = RssSampler::start(pid);
        let started = Instant::now();
        let mut stream = TcpStream::connect(stack.client.listener()).await.unwrap();
        let head = request_head(stack, "GET", &format!("/_fake/bytes?len={LEN}"), "");
        stream.write_all(head.as_bytes()).await.unwrap();
        let (status, head, first) = read_head(&mut stream).await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-length: {LEN}")),
            "{head}"
        );
        // The pod's pattern: byte i is i % 251 within each 64 KiB piece.
        assert!(first
            .iter()
            .take(251)
            .enumerate()
            .all(|(i, b)| *b as usize == i));
        let mut received = first.len() as u64;
        let mut buf = vec![0u8; 256 * 1024];
        let read = tokio::time::timeout(Duration::from_secs(240), async {
            while received < LEN {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                received += n as u64;
            }
        })
        .await;
        let took = started.elapsed();
        let (peak, samples) = sampler.finish();
        assert!(read.is_ok(), "download stalled at {received} bytes");
        assert_eq!(received, LEN);
        let growth = peak.saturating_sub(before);
        eprintln!(
            "1 GiB download: {:.1} s, {:.0} MiB/s; Envoy RSS {} MiB before, peak {} MiB \
             (+{} MiB, {samples} samples)",
            took.as_secs_f64(),
            1024.0 / took.as_secs_f64(),
            before / 1024,
            peak / 1024,
            growth / 1024
        );
        assert!(
            growth < RSS_BOUND_KIB,
            "Envoy's RSS grew by {growth} KiB during the download"
        );
    });
}

#[test]
fn a_100_mib_upload_streams_through_with_flat_envoy_memory() {
    const LEN: usize = 100 << 20;
    block_on(async {
        let (stack, _turn) = turn().await;
        let pid = stack.envoy.pid();
        let before = rss_kib(pid);
        let sampler = RssSampler::start(pid);
        let started = Instant::now();
        let mut stream = TcpStream::connect(stack.client.listener()).await.unwrap();
        let head = request_head(
            stack,
            "POST",
            "/_fake/count",
            &format!("Content-Type: application/octet-stream\r\nContent-Length: {LEN}\r\n"),
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let piece = vec![0x5au8; 64 * 1024];
        let sent = tokio::time::timeout(Duration::from_secs(120), async {
            let mut sent = 0;
            while sent < LEN {
                let n = piece.len().min(LEN - sent);
                stream.write_all(&piece[..n]).await.unwrap();
                sent += n;
            }
        })
        .await;
        assert!(sent.is_ok(), "upload stalled");
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
            .await
            .unwrap()
            .unwrap();
        let took = started.elapsed();
        let (peak, samples) = sampler.finish();
        let (status, body) = podgate_testkit::http::parse_response(&response);
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["received"], LEN, "{body}");
        let seen = stack.pod("alpha").unwrap().requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body_len, LEN);
        let growth = peak.saturating_sub(before);
        eprintln!(
            "100 MiB upload: {:.2} s, {:.0} MiB/s; Envoy RSS {} MiB before, peak {} MiB \
             (+{} MiB, {samples} samples)",
            took.as_secs_f64(),
            100.0 / took.as_secs_f64(),
            before / 1024,
            peak / 1024,
            growth / 1024
        );
        assert!(
            growth < RSS_BOUND_KIB,
            "Envoy's RSS grew by {growth} KiB during the upload"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// The idle timeout: long polls and WebSockets

#[test]
fn route_idle_timeout_is_the_documented_hour() {
    // README and docs/architecture.md give these values; the suite shortens only the idle one.
    let mut file = Bootstrap::load_static().unwrap();
    assert_eq!(file.route_idle_timeout().unwrap(), "3600s");
    let mut shortened = Bootstrap::load_static().unwrap();
    shortened.set_route_idle_timeout(IDLE).unwrap();
    assert_eq!(shortened.route_idle_timeout().unwrap(), "3.000s");
}

#[test]
fn a_long_poll_answered_before_the_idle_timeout_gets_its_answer() {
    block_on(async {
        let (stack, _turn) = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let wait = IDLE * 3 / 4;
        let started = Instant::now();
        let answer = EnvoyClient::send(
            stack
                .client
                .get(
                    &host("alpha"),
                    &format!("/_fake/delay?ms={}", wait.as_millis()),
                )
                .header("podgate-token", token),
        )
        .await
        .unwrap();
        let took = started.elapsed();
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["pod"], "alpha", "{}", answer.body);
        assert!(took >= wait, "{took:?}");
        eprintln!(
            "long poll of {wait:?} under an idle timeout of {IDLE:?}: answered after {took:?}"
        );
    });
}

/// Asserts a pod failure answered as JSON for `pod` on [`PORT`], with `status` and an error
/// mentioning `says`, and nothing internal in the body.
fn assert_json_failure(stack: &Stack, answer: &Answer, status: u16, pod: &str, says: &str) {
    let what = format!("{pod} {says}");
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{what}: {:?}",
        answer.headers
    );
    assert_eq!(answer.header("cache-control"), Some("no-store"), "{what}");
    let json = answer.json();
    let error = json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {}", answer.body));
    assert!(error.contains(says), "{what}: {error:?}");
    assert_eq!(json["pod"], pod, "{what}: {}", answer.body);
    assert_eq!(json["port"], PORT.to_string(), "{what}: {}", answer.body);
    assert_eq!(
        json.as_object().map(|o| o.len()),
        Some(3),
        "{what}: exactly error, pod and port: {}",
        answer.body
    );
    assert_nothing_internal(stack, &what, &answer.body);
}

/// The page a browser gets: what happened, what to do, a retry link, the pod and port.
fn assert_html_failure(stack: &Stack, answer: &Answer, status: u16, pod: &str, says: &str) {
    let what = format!("{pod} {says} (browser)");
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("text/html; charset=UTF-8"),
        "{what}: {:?}",
        answer.headers
    );
    assert_eq!(answer.header("cache-control"), Some("no-store"), "{what}");
    let body = &answer.body;
    assert!(body.starts_with("<!doctype html>"), "{what}: {body}");
    assert!(body.contains(says), "{what}: {body}");
    assert!(
        body.contains(&format!("port {PORT} of pod {pod}"))
            || body.contains(&format!("Port {PORT} of pod {pod}")),
        "{what}: {body}"
    );
    assert!(body.contains("<a href=\"\">Retry</a>"), "{what}: {body}");
    assert!(
        !body.contains('%'),
        "{what}: an unexpanded substitution: {body}"
    );
    assert_nothing_internal(stack, &what, body);
}

/// No upstream address, cluster name, upstream Host or Envoy detail in an answer.
fn assert_nothing_internal(stack: &Stack, what: &str, body: &str) {
    let mut internal = vec![
        "127.0.0.1".to_owned(),
        "pod_alpha".to_owned(),
        "pod_omega".to_owned(),
        "localhost-8726.pod-".to_owned(),
        "upstream".to_owned(),
        "reset reason".to_owned(),
    ];
    for (_, pod) in &stack.pods {
        internal.push(pod.addr().port().to_string());
    }
    for needle in internal {
        assert!(!body.contains(&needle), "{what}: {needle:?} in {body:?}");
    }
}

#[test]
fn a_long_poll_past_the_idle_timeout_is_cut_with_a_clear_answer() {
    block_on(async {
        let (stack, _turn) = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let started = Instant::now();
        let answer = EnvoyClient::send(
            stack
                .client
                .get(&host("alpha"), "/_fake/delay?ms=8000")
                .header("podgate-token", token),
        )
        .await
        .unwrap();
        let took = started.elapsed();
        eprintln!("long poll of 8 s under an idle timeout of {IDLE:?}: cut after {took:?}");
        assert!(
            took >= IDLE - Duration::from_millis(250) && took < IDLE + Duration::from_secs(2),
            "cut after {took:?}"
        );
        assert_json_failure(stack, &answer, 504, "alpha", "did not answer in time");
        assert_eq!(stack.pod("alpha").unwrap().requests().len(), 1);
    });
}

#[test]
fn an_idle_websocket_lives_until_the_idle_timeout_and_is_closed_after_it() {
    block_on(async {
        let (stack, _turn) = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let outcome = stack
            .client
            .websocket(&host("alpha"), "/ws", &[("podgate-token", &token)])
            .await
            .unwrap();
        let WsOutcome::Open(mut ws) = outcome else {
            panic!("{outcome:?}");
        };
        let mut echo = async |text: &str| {
            ws.send(Message::text(text)).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(2), ws.next())
                .await
                .unwrap();
            assert!(
                matches!(&got, Some(Ok(Message::Text(t))) if t.as_str() == text),
                "{got:?}"
            );
        };
        echo("first").await;
        // Idle for three quarters of the timeout: still open.
        tokio::time::sleep(IDLE * 3 / 4).await;
        echo("after a pause").await;
        let last = Instant::now();
        // Then idle past it: Envoy closes it.
        let end = tokio::time::timeout(IDLE + Duration::from_secs(3), ws.next()).await;
        let took = last.elapsed();
        eprintln!("idle WebSocket under an idle timeout of {IDLE:?}: closed {took:?} after the last frame");
        let closed = matches!(end, Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))));
        assert!(closed, "still open {took:?} after the last frame: {end:?}");
        assert!(
            took >= IDLE - Duration::from_millis(250) && took < IDLE + Duration::from_secs(2),
            "closed {took:?} after the last frame"
        );
        assert_eq!(stack.pod("alpha").unwrap().ws_messages(), 2);
    });
}

// ---------------------------------------------------------------------------------------------
// Pod failures: a clear answer for each

/// GETs `path` on `pod` with a valid capability, as an API client or as a browser.
async fn get(stack: &Stack, pod: &str, path: &str, browser: bool) -> Answer {
    let token = stack.minter.valid(pod, PORT).unwrap();
    let mut request = stack
        .client
        .get(&host(pod), path)
        .header("podgate-token", token);
    if browser {
        request = request.header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        );
    }
    EnvoyClient::send(request).await.unwrap()
}

#[test]
fn nothing_listening_is_a_503_naming_the_pod_and_port() {
    block_on(async {
        let (stack, _turn) = turn().await;
        let says = "Nothing is listening";
        assert_failure_both_ways(stack, "omega", "/", 503, says).await;
        assert!(stack.nothing_forwarded(), "{}", stack.describe());
    });
}

#[test]
fn a_failure_answer_names_the_pod_the_filter_parsed_never_the_clients() {
    block_on(async {
        let (stack, _turn) = turn().await;
        let token = stack.minter.valid("omega", PORT).unwrap();
        let planted = "<script>alert(1)</script>";
        for browser in [false, true] {
            let mut request = stack
                .client
                .get(&host("omega"), "/")
                .header("podgate-token", &token)
                .header("x-podgate-pod", planted)
                .header("x-podgate-port", planted);
            if browser {
                request = request.header("accept", "text/html");
            }
            let answer = EnvoyClient::send(request).await.unwrap();
            assert!(!answer.body.contains("script"), "{}", answer.body);
            if browser {
                assert_html_failure(stack, &answer, 503, "omega", "Nothing is listening");
            } else {
                assert_json_failure(stack, &answer, 503, "omega", "Nothing is listening");
            }
        }
    });
}

/// `GET path` on `pod` as a script and as a browser: the JSON failure, then the page, both
/// with `status` and saying `says`.
async fn assert_failure_both_ways(stack: &Stack, pod: &str, path: &str, status: u16, says: &str) {
    let answer = get(stack, pod, path, false).await;
    assert_json_failure(stack, &answer, status, pod, says);
    let answer = get(stack, pod, path, true).await;
    assert_html_failure(stack, &answer, status, pod, says);
}

#[test]
fn a_pod_that_closes_the_connection_before_answering_is_a_503() {
    block_on(async {
        let (stack, _turn) = turn().await;
        let says = "closed the connection";
        assert_failure_both_ways(stack, "alpha", "/_fake/close", 503, says).await;
    });
}

#[test]
fn a_pod_that_resets_the_connection_before_answering_is_a_503() {
    block_on(async {
        let (stack, _turn) = turn().await;
        let says = "closed the connection";
        assert_failure_both_ways(stack, "alpha", "/_fake/reset", 503, says).await;
    });
}

#[test]
fn a_pod_that_answers_garbage_is_a_502() {
    block_on(async {
        let (stack, _turn) = turn().await;
        assert_failure_both_ways(stack, "alpha", "/_fake/garbage", 502, "not HTTP").await;
    });
}

#[test]
fn a_pod_that_never_answers_is_a_504_after_the_idle_timeout() {
    block_on(async {
        let (stack, _turn) = turn().await;
        let says = "did not answer in time";
        assert_failure_both_ways(stack, "alpha", "/_fake/never", 504, says).await;
    });
}

#[test]
fn a_pod_that_resets_mid_body_cuts_the_response_short() {
    // Once the pod's headers went out no answer can replace them: the client must see the body
    // end early, never a complete-looking one.
    block_on(async {
        let (stack, _turn) = turn().await;
        let mut stream = TcpStream::connect(stack.client.listener()).await.unwrap();
        let head = request_head(stack, "GET", "/_fake/cut?after=100000", "");
        stream.write_all(head.as_bytes()).await.unwrap();
        let (status, head, first) = read_head(&mut stream).await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase().contains("content-length: 200000"),
            "{head}"
        );
        let mut received = first.len();
        let mut buf = vec![0u8; 64 * 1024];
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received += n,
                }
            }
        })
        .await;
        assert!(end.is_ok(), "the connection stayed open");
        assert!(
            received < 200_000,
            "got {received} bytes of a 200000-byte body"
        );
    });
}

/// The filter's own answers are not rewritten: they carry none of the mapped flags.
#[test]
fn the_filters_own_answers_are_left_alone() {
    block_on(async {
        let (stack, _turn) = turn().await;
        let answer = EnvoyClient::send(
            stack
                .client
                .get(&host("alpha"), "/")
                .header("accept", "application/json"),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 401, "{}", answer.body);
        let json = answer.json();
        assert!(json["error"].as_str().unwrap().starts_with("No capability"));
        assert!(
            json.get("pod").is_none() && json.get("port").is_none(),
            "{json}"
        );
        assert!(stack.nothing_forwarded(), "{}", stack.describe());
    });
}
