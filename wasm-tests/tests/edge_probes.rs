//! Edge hardening probed from outside, through a real Envoy 1.40 running
//! `envoy/podgate-static.yaml` in front of fake pods that record every connection and request.
//!
//! What `edge_config.rs` checks in the files, these tests show on the wire: header count and size
//! limits, escaped slashes, dot segments and doubled slashes, who the pod is told the client is,
//! the HTTP/2 stream and window limits, a client that never finishes its headers, and where the
//! admin API listens. Each asserts on what reached the fake pods (the record stays empty for a
//! refusal) and, where a pod could not record it, on Envoy's upstream counters.
//!
//! Requests go over a raw TCP connection: an HTTP client library would normalise `..`, `//` and
//! `\` in the path itself, and the point is what Envoy does with them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr, TcpStream as StdTcpStream, UdpSocket};
use std::time::{Duration, Instant};

use podgate_protocol::config::CLIENT_FORWARDING_HEADERS;
use podgate_wasm_tests::e2e::bootstrap::filter_wasm;
use podgate_wasm_tests::e2e::{
    block_on, public_host, upstream_host, Bootstrap, Envoy, FakePod, Minter, Turn,
};
use serde_json::json;
use serde_yaml::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

mod e2e_shared;
use e2e_shared::{alpha_host, only_request_to, turn, PORT};

const RAW_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 exchange

/// An answer read off the wire until Envoy closed the connection.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse_answer(bytes: &[u8]) -> Option<RawAnswer> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(RawAnswer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A GET of `path` exactly as written, with `Connection: close`.
fn get_request(host: &str, path: &str, headers: &[(String, String)]) -> String {
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("connection: close\r\n\r\n");
    request
}

/// Sends `request` and reads until Envoy closes; `None` when it closed without an answer.
async fn exchange(listener: SocketAddr, request: &str) -> Option<RawAnswer> {
    let mut stream = TcpStream::connect(listener).await.unwrap();
    // Envoy may answer and close before it read everything (431): a failed write is fine.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(RAW_TIMEOUT, stream.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "Envoy did not close within {RAW_TIMEOUT:?}");
    parse_answer(&bytes)
}

fn token_header(token: &str) -> (String, String) {
    ("podgate-token".to_owned(), token.to_owned())
}

fn assert_nothing_forwarded(stack: &Turn<'_>, what: &str) {
    assert!(
        stack.nothing_forwarded(),
        "{what}: something reached an upstream:\n{}",
        stack.describe()
    );
}

/// Requests Envoy sent to any upstream of the shared stack, from its own counters: a request
/// the pod refused to parse (hyper allows 100 headers) on a reused connection leaves no trace in
/// the pod's record, but it is counted here.
async fn upstream_requests(stack: &Turn<'_>) -> u64 {
    let mut total = 0;
    for cluster in [
        "pod_alpha",
        "pod_beta",
        "pod_gamma",
        "podgate_control_plane",
    ] {
        let counter = format!("cluster.{cluster}.upstream_rq_total");
        total += stack.envoy.counter(&counter).await.unwrap();
    }
    total
}

/// Envoy's own 431 (not one relayed from the pod), or a closed connection; nothing forwarded.
async fn assert_refused_by_envoy(
    stack: &Turn<'_>,
    answer: Option<RawAnswer>,
    before: u64,
    what: &str,
) {
    if let Some(answer) = answer {
        assert_eq!(answer.status, 431, "{what}: {answer:?}");
        assert_eq!(
            answer.body, "Request Header Fields Too Large",
            "{what}: Envoy's own answer"
        );
    }
    assert_nothing_forwarded(stack, what);
    assert_eq!(
        upstream_requests(stack).await,
        before,
        "{what}: Envoy sent it upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// Header limits: max_headers_count 100, max_request_headers_kb 32

fn numbered_headers(count: usize, value_len: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("x-h{i}"), "v".repeat(value_len)))
        .collect()
}

#[test]
fn too_many_headers_are_431_and_nothing_reaches_the_pod() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let listener = stack.client.listener();

        // Under the limit: everything arrives.
        let mut headers = vec![token_header(&token)];
        headers.extend(numbered_headers(80, 8));
        let answer = exchange(listener, &get_request(&alpha_host(), "/", &headers))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = only_request_to(&stack, stack.alpha, "80 headers");
        assert!(
            seen.has_header("x-h0") && seen.has_header("x-h79"),
            "{seen:?}"
        );
        stack.reset();

        // Over the count, each header small.
        let before = upstream_requests(&stack).await;
        assert!(before > 0, "Envoy's upstream counters read nothing");
        let mut headers = vec![token_header(&token)];
        headers.extend(numbered_headers(101, 8));
        let answer = exchange(listener, &get_request(&alpha_host(), "/", &headers)).await;
        assert_refused_by_envoy(&stack, answer, before, "101 headers").await;

        // Under the count, over 32 KiB in all: many medium headers, none of them big.
        let mut headers = vec![token_header(&token)];
        headers.extend(numbered_headers(80, 500));
        let answer = exchange(listener, &get_request(&alpha_host(), "/", &headers)).await;
        assert_refused_by_envoy(&stack, answer, before, "80 headers of 500 bytes").await;
    });
}

// ---------------------------------------------------------------------------------------------
// Paths: escaped slashes redirect, dot segments and doubled slashes are resolved before routing

#[test]
fn escaped_slashes_are_redirected_unescaped_and_never_forwarded_escaped() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let listener = stack.client.listener();
        let cases = [
            ("/a%2Fb", "/a/b"),
            ("/a%2fb", "/a/b"),
            ("/a%5Cb", "/a/b"),
            ("/a%5cb", "/a/b"),
            ("/a%2Fb?q=1", "/a/b?q=1"),
            (
                "/x/..%2F.podgate/callback?ticket=t",
                "/.podgate/callback?ticket=t",
            ),
            (
                "/.podgate%2Fcallback?ticket=t",
                "/.podgate/callback?ticket=t",
            ),
            ("/.podgate%5C..%5Csecret", "/secret"),
        ];
        for (path, location) in cases {
            stack.reset();
            let before = upstream_requests(&stack).await;
            let headers = [token_header(&token)];
            let answer = exchange(listener, &get_request(&alpha_host(), path, &headers))
                .await
                .unwrap();
            assert_eq!(answer.status, 307, "{path}: {answer:?}");
            assert_eq!(answer.header("location"), Some(location), "{path}");
            assert_nothing_forwarded(&stack, path);
            assert_eq!(
                upstream_requests(&stack).await,
                before,
                "{path}: sent upstream"
            );

            // Following the redirect: the request is routed on the plain path, and that is what
            // the upstream sees.
            let answer = exchange(listener, &get_request(&alpha_host(), location, &headers))
                .await
                .unwrap();
            assert_eq!(answer.status, 200, "{path} -> {location}: {answer:?}");
            let upstream = if location.starts_with("/.podgate/") {
                &stack.control_plane
            } else {
                stack.alpha
            };
            let seen = only_request_to(&stack, upstream, path);
            assert_eq!(seen.path, location, "{path}");
        }

        // One decoding only: `%252F` is the text `%2F` in a segment, not a slash.
        stack.reset();
        let headers = [token_header(&token)];
        let answer = exchange(listener, &get_request(&alpha_host(), "/a%252Fb", &headers))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            only_request_to(&stack, stack.alpha, "%252F").path,
            "/a%252Fb"
        );
    });
}

#[test]
fn dot_segments_and_doubled_slashes_never_reach_a_pod_as_another_path() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let listener = stack.client.listener();
        let callback = "/.podgate/callback?ticket=t";
        // (sent, where it must land, the path that upstream must see)
        let cases = [
            ("/a/../.podgate/callback?ticket=t", "cp", callback),
            ("/../.podgate/callback?ticket=t", "cp", callback),
            ("/./.podgate/callback?ticket=t", "cp", callback),
            ("/a/b/../../.podgate/callback?ticket=t", "cp", callback),
            ("//.podgate/callback?ticket=t", "cp", callback),
            ("///.podgate//callback?ticket=t", "cp", callback),
            ("/a/%2e%2e/.podgate/callback?ticket=t", "cp", callback),
            ("/a/.%2E/.podgate/callback?ticket=t", "cp", callback),
            ("/%2e%2e/.podgate/callback?ticket=t", "cp", callback),
            ("/a\\..\\.podgate/callback?ticket=t", "cp", callback),
            (
                "/.podgate/x/../../.podgate/callback?ticket=t",
                "cp",
                callback,
            ),
            // Out of the reserved prefix: the pod gets the resolved path, nothing else.
            ("/.podgate/../secret", "pod", "/secret"),
            ("/.podgate/%2e%2e/secret", "pod", "/secret"),
            ("/a//b///c", "pod", "/a/b/c"),
            ("/a/./b/../c", "pod", "/a/c"),
            ("/a\\b", "pod", "/a/b"),
            // Only the path is normalised, never the query.
            ("/a?next=/../b//c", "pod", "/a?next=/../b//c"),
        ];
        for (sent, lands, path) in cases {
            stack.reset();
            let answer = exchange(
                listener,
                &get_request(&alpha_host(), sent, &[token_header(&token)]),
            )
            .await
            .unwrap();
            assert_eq!(answer.status, 200, "{sent}: {answer:?}");
            let upstream = if lands == "cp" {
                &stack.control_plane
            } else {
                stack.alpha
            };
            let seen = only_request_to(&stack, upstream, sent);
            assert_eq!(seen.path, path, "{sent}");
            let path_only = seen.path.split('?').next().unwrap_or_default();
            for bad in [
                "/../", "/./", "//", "\\", "%2f", "%2F", "%5c", "%5C", "%2e", "%2E",
            ] {
                assert!(
                    !path_only.contains(bad),
                    "{sent}: {bad} reached {}",
                    seen.path
                );
            }
        }

        // Without a token the walk out of the reserved prefix is a pod path like any other.
        stack.reset();
        let answer = exchange(
            listener,
            &get_request(&alpha_host(), "/.podgate/../secret", &[]),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 401, "{answer:?}");
        assert_nothing_forwarded(&stack, "/.podgate/../secret without a token");
    });
}

// ---------------------------------------------------------------------------------------------
// Who the pod is told the client is: use_remote_address, xff_num_trusted_hops 0

/// The machine's address on its default route, if it has one (no packet is sent).
fn non_loopback_address() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn the_pod_is_told_the_real_peer_never_what_the_client_claims() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let listener = stack.client.listener();
        let cases: [&[(&str, &str)]; 5] = [
            &[],
            &[("x-forwarded-for", "10.0.0.1")],
            &[("x-forwarded-for", "1.2.3.4, 10.0.0.1")],
            &[
                ("X-Forwarded-For", "10.0.0.1"),
                ("x-forwarded-for", "10.0.0.2"),
            ],
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-envoy-external-address", "10.9.9.9"),
                ("x-forwarded-proto", "https"),
                ("x-request-id", "chosen-by-the-client"),
            ],
        ];
        for claims in cases {
            stack.reset();
            let mut headers = vec![token_header(&token)];
            headers.extend(
                claims
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
            );
            let answer = exchange(listener, &get_request(&alpha_host(), "/", &headers))
                .await
                .unwrap();
            assert_eq!(answer.status, 200, "{claims:?}: {answer:?}");
            let seen = only_request_to(&stack, stack.alpha, "x-forwarded-for");
            assert_eq!(
                seen.header("host"),
                Some(upstream_host(PORT, "alpha").as_str())
            );
            // The TCP peer alone: no client claim, no hop of Envoy's own.
            assert_eq!(
                seen.header_all("x-forwarded-for"),
                vec!["127.0.0.1"],
                "{claims:?}: {seen:?}"
            );
            assert_eq!(
                seen.header_all("x-envoy-external-address"),
                vec!["127.0.0.1"],
                "{claims:?}: the external address is the TCP peer"
            );
            assert_eq!(
                seen.header_all("x-forwarded-proto"),
                vec!["http"],
                "{claims:?}: the scheme is the connection's"
            );
            let request_id = seen.header("x-request-id").unwrap_or_default();
            assert!(
                !request_id.is_empty() && request_id != "chosen-by-the-client",
                "{claims:?}: x-request-id {request_id:?}"
            );
        }
    });
}

/// Every forwarding header a client may forge, twice and in two casings, with values that
/// would mislead a pod (another pod, another site, a private address).
fn forged_forwarding_headers() -> Vec<(String, String)> {
    let beta = public_host(PORT, "beta");
    let mut forged = Vec::new();
    let names = CLIENT_FORWARDING_HEADERS.iter().copied().chain([
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    ]);
    for name in names {
        let value = match name {
            "forwarded" => format!("for=10.0.0.1;host={beta};proto=https"),
            "x-forwarded-host" | "x-original-host" | "x-host" | "x-forwarded-server" => {
                beta.clone()
            }
            "x-forwarded-proto" | "x-forwarded-scheme" | "x-url-scheme" => "https".to_owned(),
            "x-original-url" | "x-original-uri" | "x-rewrite-url" | "x-forwarded-uri"
            | "x-forwarded-prefix" | "x-forwarded-path" => "/admin".to_owned(),
            "x-forwarded-port" => "443".to_owned(),
            "x-forwarded-ssl" | "front-end-https" => "on".to_owned(),
            _ => "10.0.0.1".to_owned(),
        };
        forged.push((name.to_owned(), value.clone()));
        forged.push((name.to_ascii_uppercase(), format!("{value}-again")));
    }
    forged
}

#[test]
fn forged_forwarding_headers_never_reach_a_pod_or_the_control_plane() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let listener = stack.client.listener();
        let forged = forged_forwarding_headers();
        assert!(forged.len() + 2 <= 100, "over Envoy's header count limit");
        // (the authority sent, the path, who must get it, the X-Forwarded-Host it must carry)
        let with_port = format!("{}:10000", alpha_host());
        let cases = [
            (alpha_host(), "/", "pod", alpha_host()),
            (with_port.clone(), "/a?b=c", "pod", with_port.clone()),
            (
                alpha_host(),
                "/.podgate/callback?ticket=t",
                "cp",
                alpha_host(),
            ),
            (
                with_port.clone(),
                "/.podgate/callback",
                "cp",
                with_port.clone(),
            ),
        ];
        for (authority, path, lands, forwarded_host) in cases {
            for headers in [vec![], forged.clone()] {
                stack.reset();
                let mut all = vec![token_header(&token)];
                all.extend(headers.iter().cloned());
                let what = format!("{authority}{path} with {} forged", headers.len());
                let answer = exchange(listener, &get_request(&authority, path, &all))
                    .await
                    .unwrap();
                assert_eq!(answer.status, 200, "{what}: {answer:?}");
                let upstream = if lands == "cp" {
                    &stack.control_plane
                } else {
                    stack.alpha
                };
                let seen = only_request_to(&stack, upstream, &what);
                for name in CLIENT_FORWARDING_HEADERS {
                    assert!(
                        seen.header_all(name).is_empty(),
                        "{what}: {name} reached the upstream: {seen:?}"
                    );
                }
                assert_eq!(
                    seen.header_all("x-forwarded-for"),
                    vec!["127.0.0.1"],
                    "{what}: {seen:?}"
                );
                assert_eq!(
                    seen.header_all("x-forwarded-proto"),
                    vec!["http"],
                    "{what}: {seen:?}"
                );
                assert_eq!(
                    seen.header_all("x-forwarded-host"),
                    vec![forwarded_host.as_str()],
                    "{what}: {seen:?}"
                );
                // Nothing of any forged value survived under another name either.
                for (name, value) in &seen.headers {
                    assert!(
                        !value.contains("10.0.0.1")
                            && !value.contains("pod-beta")
                            && !value.contains("/admin")
                            && !value.contains("-again"),
                        "{what}: {name}: {value} reached the upstream"
                    );
                }
            }
        }
    });
}

#[test]
fn malformed_forwarding_header_lines_never_smuggle_a_claim() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let listener = stack.client.listener();
        // Raw header lines a lenient parser might read as a forwarding header.
        for line in [
            "x-forwarded-for : 10.0.0.1",
            "x-forwarded-for\t: 10.0.0.1",
            "x-real-ip:\r\n 10.0.0.1",
            "x-forwarded-host: ok\r\n\tlocalhost-8726-pod-beta.localhost",
            " x-forwarded-for: 10.0.0.1",
            "x_forwarded_for: 10.0.0.1",
            "x-forwarded-for: 10.0.0.1\rx-real-ip: 10.0.0.1",
        ] {
            stack.reset();
            // Logged to show which way Envoy took each.
            let request = format!(
                "GET / HTTP/1.1\r\nhost: {}\r\npodgate-token: {token}\r\n{line}\r\nconnection: close\r\n\r\n",
                alpha_host()
            );
            let answer = exchange(listener, &request).await;
            eprintln!("{line:?}: {:?}", answer.as_ref().map(|a| a.status));
            match answer {
                Some(answer) if answer.status == 200 => {
                    let seen = only_request_to(&stack, stack.alpha, line);
                    assert_eq!(
                        seen.header_all("x-forwarded-for"),
                        vec!["127.0.0.1"],
                        "{line:?}"
                    );
                    for (name, value) in &seen.headers {
                        assert!(
                            !value.contains("10.0.0.1") && !value.contains("pod-beta"),
                            "{line:?}: {name}: {value} reached the pod"
                        );
                    }
                }
                other => {
                    let status = other.as_ref().map(|a| a.status);
                    // Refused by Envoy (400), or folded into the token header (401).
                    assert!(
                        matches!(status, None | Some(400) | Some(401)),
                        "{line:?}: {other:?}"
                    );
                    assert_nothing_forwarded(&stack, line);
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The reserved prefix in every spelling: a ticket never reaches a pod, never lands in a `next`

/// A page load of `path` without credentials; follows Envoy's own redirects on this host (the
/// escaped-slash 307) and returns every answer.
async fn page_load_following(
    listener: SocketAddr,
    path: &str,
    extra: &[(String, String)],
) -> Vec<RawAnswer> {
    let mut headers = vec![
        ("sec-fetch-mode".to_owned(), "navigate".to_owned()),
        ("accept".to_owned(), "text/html".to_owned()),
    ];
    headers.extend(extra.iter().cloned());
    let mut answers = Vec::new();
    let mut path = path.to_owned();
    for _ in 0..3 {
        let Some(answer) = exchange(listener, &get_request(&alpha_host(), &path, &headers)).await
        else {
            break;
        };
        let next = answer
            .header("location")
            .filter(|l| l.starts_with('/') && answer.status == 307)
            .map(str::to_owned);
        answers.push(answer);
        match next {
            Some(next) => path = next,
            None => break,
        }
    }
    answers
}

/// Spellings of the reserved prefix; `TICKET` is replaced with the ticket.
const RESERVED_SPELLINGS: &[&str] = &[
    "/.podgate/callback?ticket=TICKET",
    "/.PODGATE/callback?ticket=TICKET",
    "/.PodGate/callback?ticket=TICKET",
    "/%2epodgate/callback?ticket=TICKET",
    "/%2Epodgate/callback?ticket=TICKET",
    "/.%70odgate/callback?ticket=TICKET",
    "/.podgate%2Fcallback?ticket=TICKET",
    "/.podgate%2fcallback?ticket=TICKET",
    "/.PODGATE%2Fcallback?ticket=TICKET",
    "/.podgate%5Ccallback?ticket=TICKET",
    "//.podgate/callback?ticket=TICKET",
    "/./.podgate/callback?ticket=TICKET",
    "/x/../.podgate/callback?ticket=TICKET",
    "/x/../.PODGATE/callback?ticket=TICKET",
    "/x/%2e%2e/.podgate/callback?ticket=TICKET",
    "/..;/.podgate/callback?ticket=TICKET",
    "/x/..;/.podgate/callback?ticket=TICKET",
    "/.podgate;x/callback?ticket=TICKET",
    "/.podgate;/callback?ticket=TICKET",
    "/.podgate?ticket=TICKET",
    "/.podgate%3Fticket=TICKET",
    "/.podgate%3fticket%3DTICKET",
    "/.podgate./callback?ticket=TICKET",
    "/.podgate%20/callback?ticket=TICKET",
    "/a/.podgate/callback?ticket=TICKET",
    "/.podgate\\callback?ticket=TICKET",
    "/x\\..\\.PODGATE\\callback?ticket=TICKET",
    "/.podgate/callback?a=1&ticket=TICKET",
    "/.podgate/callback?ticket=TICKET#frag",
];

#[test]
fn every_spelling_of_the_reserved_prefix_keeps_the_ticket_from_the_pod() {
    block_on(async {
        let stack = turn().await;
        let token = stack.minter.valid("alpha", PORT).unwrap();
        let listener = stack.client.listener();
        let ticket = "tkt.SECRET-TICKET-VALUE.sig";
        for spelling in RESERVED_SPELLINGS {
            let path = spelling.replace("TICKET", ticket);
            // With a capability for the pod (a forward would happen off the reserved prefix),
            // and as a browser page load without one (a redirect would happen).
            for credentials in [vec![token_header(&token)], vec![]] {
                stack.reset();
                let answers = page_load_following(listener, &path, &credentials).await;
                let what = format!("{path} (token: {})", !credentials.is_empty());
                assert!(!answers.is_empty(), "{what}: no answer");
                assert!(
                    stack.alpha.untouched() && stack.beta.untouched() && stack.gamma.untouched(),
                    "{what} reached a pod:\n{}",
                    stack.describe()
                );
                for answer in &answers {
                    let location = answer.header("location").unwrap_or_default();
                    assert!(
                        answer.status == 307 || !location.contains("SECRET-TICKET"),
                        "{what}: the ticket is in the redirect {location}"
                    );
                    assert!(
                        !location.contains("/api/proxy-auth"),
                        "{what}: a reserved path went to sign-in: {location}"
                    );
                }
                let last = answers.last().unwrap();
                let seen = stack.control_plane.requests();
                eprintln!(
                    "{what}: {} {:?} -> control plane {:?}",
                    last.status,
                    answers.iter().map(|a| a.status).collect::<Vec<_>>(),
                    seen.iter().map(|r| r.path.as_str()).collect::<Vec<_>>()
                );
                // Envoy refused it, or the control plane got it.
                assert!(
                    last.status == 400 || (last.status == 200 && seen.len() == 1),
                    "{what}: {last:?}\n{}",
                    stack.describe()
                );
            }
        }
    });
}

#[test]
fn a_page_load_redirect_never_carries_a_ticket() {
    block_on(async {
        let stack = turn().await;
        let listener = stack.client.listener();
        for (path, next) in [
            ("/app?ticket=SECRET", "next=/app"),
            ("/app?a=1&ticket=SECRET&b=2", "next=/app%3Fa%3D1%26b%3D2"),
            ("/app?TICKET=SECRET", "next=/app"),
            ("/app?%74icket=SECRET", "next=/app"),
            ("/app?a=1;ticket=SECRET", "next=/app%3Fa%3D1"),
        ] {
            stack.reset();
            let answers = page_load_following(listener, path, &[]).await;
            let [answer] = answers.as_slice() else {
                panic!("{path}: {answers:?}")
            };
            assert_eq!(answer.status, 302, "{path}: {answer:?}");
            let location = answer.header("location").unwrap_or_default();
            assert!(location.contains("/api/proxy-auth?"), "{path}: {location}");
            assert!(location.ends_with(next), "{path}: {location}");
            assert!(!location.contains("SECRET"), "{path}: {location}");
            assert_nothing_forwarded(&stack, path);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 (prior knowledge on the plain listener; ALPN in production): what Envoy announces

/// Frames of an HTTP/2 connection as `(type, stream id, payload)`.
fn h2_frames(mut bytes: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        frames.push((bytes[3], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    frames
}

#[test]
fn http2_clients_get_the_edge_stream_and_window_limits() {
    const SETTINGS: u8 = 0x4;
    const WINDOW_UPDATE: u8 = 0x8;
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    block_on(async {
        let stack = turn().await;
        let mut stream = TcpStream::connect(stack.client.listener()).await.unwrap();
        // The client preface and an empty SETTINGS frame.
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend_from_slice(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
        stream.write_all(&preface).await.unwrap();
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        let (settings, window_update) = loop {
            let frames = h2_frames(&bytes);
            let settings = frames
                .iter()
                .find(|f| f.0 == SETTINGS && f.2.len() % 6 == 0 && !f.2.is_empty());
            let update = frames.iter().find(|f| f.0 == WINDOW_UPDATE && f.1 == 0);
            if let (Some(s), Some(u)) = (settings, update) {
                break (s.2.clone(), u.2.clone());
            }
            assert!(
                Instant::now() < deadline,
                "no SETTINGS and WINDOW_UPDATE: {bytes:?}"
            );
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "Envoy closed an HTTP/2 connection: {bytes:?}");
            bytes.extend_from_slice(&buf[..n]);
        };
        let setting = |id: u16| {
            settings
                .chunks(6)
                .find(|s| u16::from_be_bytes([s[0], s[1]]) == id)
                .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
        };
        assert_eq!(setting(MAX_CONCURRENT_STREAMS), Some(100), "{settings:?}");
        assert_eq!(setting(INITIAL_WINDOW_SIZE), Some(65_536), "{settings:?}");
        // The connection window starts at 65,535 and is raised to 1 MiB, no more.
        let increment = u32::from_be_bytes([
            window_update[0],
            window_update[1],
            window_update[2],
            window_update[3],
        ]) & 0x7fff_ffff;
        assert_eq!(
            65_535 + u64::from(increment),
            1_048_576,
            "{window_update:?}"
        );
        assert_nothing_forwarded(&stack, "an HTTP/2 preface");
    });
}

// ---------------------------------------------------------------------------------------------
// Envoys of their own: timeouts short enough to watch, the admin address from the file

/// An Envoy on the static bootstrap in front of one running pod `alpha` (and a fake control
/// plane), with `edit` applied to the rendered document before it starts.
struct ProbeEnvoy {
    envoy: Envoy,
    alpha: FakePod,
    control_plane: FakePod,
    minter: Minter,
}

impl ProbeEnvoy {
    async fn start(label: &str, edit: impl FnOnce(&mut Value)) -> ProbeEnvoy {
        let alpha = FakePod::start("alpha").await.unwrap();
        let control_plane = FakePod::start("control-plane").await.unwrap();
        let mut bootstrap = Bootstrap::load_static().unwrap();
        let mut config = bootstrap.filter_config().unwrap();
        let minter = Minter::new(config["issuer"].as_str().unwrap()).unwrap();
        config["keys"] = json!({ "keys": [minter.key.verifying_jwk()] });
        config["pods"] = json!({"alpha": {"status": "running", "cluster": "pod_alpha"}});
        bootstrap
            .ephemeral_ports()
            .unwrap()
            .set_wasm_path(&filter_wasm().unwrap())
            .unwrap()
            .set_filter_config(&config.to_string())
            .unwrap()
            .set_clusters(&[
                ("podgate_control_plane", control_plane.addr()),
                ("pod_alpha", alpha.addr()),
            ])
            .unwrap();
        let mut doc: Value = serde_yaml::from_str(&bootstrap.to_yaml().unwrap()).unwrap();
        edit(&mut doc);
        let envoy = Envoy::start(label, &serde_yaml::to_string(&doc).unwrap(), 1)
            .await
            .unwrap();
        ProbeEnvoy {
            envoy,
            alpha,
            control_plane,
            minter,
        }
    }

    fn untouched(&self) -> bool {
        self.alpha.untouched() && self.control_plane.untouched()
    }

    fn describe(&self) -> String {
        format!(
            "{}\n{}",
            self.alpha.describe(),
            self.control_plane.describe()
        )
    }
}

fn hcm_of(doc: &mut Value) -> &mut Value {
    let listeners = doc["static_resources"]["listeners"]
        .as_sequence_mut()
        .unwrap();
    let listener = listeners
        .iter_mut()
        .find(|l| l["name"].as_str() == Some("podgate_http"))
        .unwrap();
    &mut listener["filter_chains"][0]["filters"][0]["typed_config"]
}

/// Reads until Envoy closes the connection or `limit` passes; the bytes and when it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut bytes = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut bytes)).await {
        Ok(_) => (bytes, Some(start.elapsed())),
        Err(_) => (bytes, None),
    }
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    block_on(async {
        // The files say 10 s (edge_config.rs checks it); 1 s here so the test is quick.
        let probe = ProbeEnvoy::start("edge-slow-headers", |doc| {
            let hcm = hcm_of(doc);
            hcm["request_headers_timeout"] = "1s".into();
            hcm["common_http_protocol_options"]["idle_timeout"] = "2s".into();
        })
        .await;
        let listener = probe.envoy.listener().unwrap();
        let token = probe.minter.valid("alpha", PORT).unwrap();

        // The same Envoy forwards a complete request: the cut below is the timeout's doing.
        let full = get_request(&alpha_host(), "/", &[token_header(&token)]);
        let answer = exchange(listener, &full).await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(probe.alpha.requests().len(), 1, "{}", probe.describe());
        probe.alpha.reset();

        // Headers started, never finished (a valid token among them).
        let partial = format!(
            "GET / HTTP/1.1\r\nhost: {}\r\npodgate-token: {token}\r\n",
            alpha_host()
        );
        let mut stream = TcpStream::connect(listener).await.unwrap();
        stream.write_all(partial.as_bytes()).await.unwrap();
        let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(8)).await;
        let closed = closed.expect("Envoy kept a half-sent request open past 8 s");
        assert!(closed >= Duration::from_millis(900), "cut after {closed:?}");
        let answer = parse_answer(&bytes);
        assert_eq!(answer.map(|a| a.status), Some(408), "{bytes:?}");
        assert!(probe.untouched(), "half-sent headers: {}", probe.describe());

        // Trickling a byte every 200 ms does not extend the deadline: it is for all headers.
        let mut stream = TcpStream::connect(listener).await.unwrap();
        stream.write_all(partial.as_bytes()).await.unwrap();
        let start = Instant::now();
        let mut bytes = Vec::new();
        let mut buf = [0u8; 1024];
        let cut = loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break start.elapsed(),
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    assert!(start.elapsed() < Duration::from_secs(8), "a trickle kept it open");
                    // Envoy may have closed its side already; the read arm reports that.
                    let _ = stream.write_all(b"x").await;
                }
            }
        };
        assert!(cut < Duration::from_secs(8), "cut after {cut:?}");
        assert!(probe.untouched(), "trickled headers: {}", probe.describe());

        // A connection that sends nothing at all is closed after the idle timeout.
        let mut stream = TcpStream::connect(listener).await.unwrap();
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        let closed = closed.expect("a silent connection stayed open past 10 s");
        assert!(
            closed >= Duration::from_millis(1800),
            "closed after {closed:?}"
        );
        assert!(probe.untouched(), "silent connection: {}", probe.describe());
    });
}

#[test]
fn the_admin_api_is_not_reachable_on_a_non_loopback_address() {
    block_on(async {
        // Keep the admin address the file gives; only the port becomes ephemeral.
        let file = Bootstrap::load_static().unwrap();
        let admin_ip = file
            .get("admin.address.socket_address.address")
            .and_then(Value::as_str)
            .unwrap()
            .to_owned();
        assert!(
            admin_ip.parse::<IpAddr>().unwrap().is_loopback(),
            "envoy/podgate-static.yaml binds the admin API to {admin_ip}"
        );
        let probe = ProbeEnvoy::start("edge-admin", |doc| {
            doc["admin"]["address"]["socket_address"]["address"] = admin_ip.as_str().into();
        })
        .await;
        let admin = probe.envoy.admin().unwrap();
        assert!(admin.ip().is_loopback(), "admin bound to {admin}");
        // The admin API answers on loopback...
        let ready = probe.envoy.admin_get("/ready").await.unwrap();
        assert_eq!(ready.trim(), "LIVE");
        // ...and nothing listens on that port on the machine's other address.
        match non_loopback_address() {
            Some(ip) => {
                let outside = SocketAddr::new(ip, admin.port());
                let connected = StdTcpStream::connect_timeout(&outside, Duration::from_secs(2));
                assert!(
                    connected.is_err(),
                    "the admin API port {} accepts connections on {ip}",
                    admin.port()
                );
            }
            None => eprintln!(
                "edge_probes: this machine has no non-loopback address; the admin API was \
                 checked to bind {admin}"
            ),
        }
        assert!(probe.untouched(), "{}", probe.describe());
    });
}
