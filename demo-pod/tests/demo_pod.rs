//! The demo pod over real loopback sockets: routing by Host, the record, the WebSocket echo,
//! and stopping.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use podgate_demo_pod::{marker, DemoPod};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

/// One HTTP/1.1 request with `Connection: close`; returns (status, head, body).
async fn get(pod: &DemoPod, host: &str, path: &str, extra: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(pod.addr()).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn routes_by_host_and_records_every_request() {
    let pod = DemoPod::start("server A").await.unwrap();
    assert!(pod.untouched());

    let (status, head, body) = get(&pod, "localhost-8726.pod-demo.localhost", "/", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/html; charset=utf-8"));
    assert!(body.contains(&marker(8726)), "{body}");
    assert!(body.contains("server A"));
    assert!(body.contains("new WebSocket"), "the page opens a WebSocket");

    let (status, _, body) = get(
        &pod,
        "localhost-3000.pod-demo.localhost",
        "/api/info?x=1",
        "X-Podgate-User: u-1\r\nX-Podgate-Email: a@b.dev\r\nCookie: a=1; b=2\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["pod"], "server A");
    assert_eq!(info["service_port"], 3000);
    assert_eq!(info["path"], "/api/info?x=1");
    assert_eq!(info["host"], "localhost-3000.pod-demo.localhost");
    assert_eq!(info["user"], "u-1");
    assert_eq!(info["email"], "a@b.dev");
    assert_eq!(info["cookie_names"], serde_json::json!(["a", "b"]));
    assert!(!body.contains("a=1"), "cookie values never leave the pod");

    let (status, _, body) = get(&pod, "localhost-9999.pod-demo.localhost", "/", "").await;
    assert_eq!(status, 502);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "no service on port 9999"
    );

    // A Host that names no port goes to 3000, like the pod's nginx.
    let (status, _, body) = get(&pod, "example.dev", "/api/info", "").await;
    assert_eq!(status, 200, "{body}");

    let requests = pod.requests();
    assert_eq!(requests.len(), 4, "{}", pod.describe());
    assert_eq!(pod.connections(), 4);
    assert_eq!(requests[0].service_port, 8726);
    assert_eq!(requests[1].header("x-podgate-user"), Some("u-1"));
    assert_eq!(requests[1].cookie_names(), vec!["a", "b"]);
    assert!(requests[1].mentions("a=1"));
    assert_eq!(requests[2].service_port, 9999);
    assert_eq!(requests[3].service_port, 3000);

    pod.reset();
    assert!(pod.untouched());
    // A connection that sends nothing is recorded too.
    let _idle = TcpStream::connect(pod.addr()).await.unwrap();
    for _ in 0..100 {
        if pod.connections() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pod.connections(), 1);
    assert!(!pod.untouched());
    assert!(pod.requests().is_empty());
}

#[tokio::test]
async fn websocket_echo_on_any_port_and_stop_closes_it() {
    let pod = DemoPod::start("server B").await.unwrap();
    let request = "ws://localhost-8726.pod-demo.localhost/ws"
        .into_client_request()
        .unwrap();
    let stream = TcpStream::connect(pod.addr()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    ws.send(Message::text("ping 1")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed, Message::text("ping 1"));
    assert_eq!(pod.ws_messages(), 1);
    let seen = pod.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].websocket);
    assert_eq!(seen[0].path, "/ws");

    // A WebSocket elsewhere is refused.
    let request = "ws://localhost-3000.pod-demo.localhost/other"
        .into_client_request()
        .unwrap();
    let stream = TcpStream::connect(pod.addr()).await.unwrap();
    assert!(tokio_tungstenite::client_async(request, stream)
        .await
        .is_err());

    // Stopping closes the open WebSocket and the listener.
    pod.stop();
    let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(
        !matches!(next, Some(Ok(Message::Text(_)))),
        "the socket is closed: {next:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(pod.addr()).await.is_err());
}

/// With an assertion check, `/api/info` says who a valid assertion proves, and refuses a
/// missing, forged, other-pod or expired one.
#[tokio::test]
async fn verifies_the_identity_assertion() {
    use podgate_demo_pod::{AssertionCheck, Options};
    use podgate_protocol::assertion::Audience;
    use podgate_protocol::host::{HostTemplate, DEFAULT_PUBLIC_TEMPLATE};
    use podgate_protocol::token::{mint, KeySet, PodClaims, SigningKey, TokenKind};
    use std::sync::Arc;

    const ISS: &str = "http://cp.test";
    let key = SigningKey::ed25519_from_seed("ast-demo", [4; 32]).unwrap();
    let hosts = HostTemplate::new(DEFAULT_PUBLIC_TEMPLATE, "localhost").unwrap();
    let audience = Audience::Pod {
        hosts,
        pod: "demo".into(),
    };
    let check = Arc::new(AssertionCheck::new(ISS, audience));
    let mut options = Options::named("checked");
    options.assertions = Some(Arc::clone(&check));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pod = DemoPod::serve(options, listener).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |pod: &str| PodClaims {
        iss: ISS.into(),
        sub: "u-demo".into(),
        aud: format!("localhost-3000-pod-{pod}.localhost"),
        pod: pod.into(),
        port: 3000,
        jti: "j".into(),
        email: Some("demo@example.dev".into()),
    };
    let good = mint(TokenKind::Assertion, &key, &claims("demo"), now, 60).unwrap();
    let info = |extra: String| {
        let pod = &pod;
        async move {
            let (status, _, body) = get(
                pod,
                "localhost-3000.pod-demo.localhost",
                "/api/info",
                &extra,
            )
            .await;
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["assertion"].clone()
        }
    };
    let header = |v: &str| format!("X-Podgate-Assertion: {v}\r\n");
    // No keys fetched yet: refused.
    assert!(info(header(&good)).await["refused"].is_object());
    check
        .set_keys(&KeySet {
            keys: vec![key.public_jwk().unwrap()],
        })
        .unwrap();
    let verified = info(header(&good)).await;
    assert_eq!(verified["verified"]["sub"], "u-demo", "{verified}");
    assert_eq!(verified["verified"]["email"], "demo@example.dev");
    let forger = SigningKey::ed25519_from_seed("ast-demo", [5; 32]).unwrap();
    for (what, value) in [
        ("missing", String::new()),
        (
            "forged",
            header(&mint(TokenKind::Assertion, &forger, &claims("demo"), now, 60).unwrap()),
        ),
        (
            "another pod",
            header(&mint(TokenKind::Assertion, &key, &claims("other"), now, 60).unwrap()),
        ),
        (
            "expired",
            header(&mint(TokenKind::Assertion, &key, &claims("demo"), now - 300, 60).unwrap()),
        ),
        (
            "a capability",
            header(&mint(TokenKind::Capability, &key, &claims("demo"), now, 60).unwrap()),
        ),
    ] {
        let outcome = info(value).await;
        assert!(
            outcome["refused"]["reason"].is_string(),
            "{what}: {outcome}"
        );
    }
}
