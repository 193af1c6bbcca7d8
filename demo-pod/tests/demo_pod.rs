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
