//! OpenID Connect sign-in end to end: a real, certified OpenID provider (npm `oidc-provider`,
//! `tests/oidc-provider/provider.mjs`), the real `podgate` binary trusting it
//! (`--oidc-issuer`/`--oidc-audience`), a real Envoy fed over ADS, and a recording pod. Only the
//! provider's ID tokens for podgate's clients mint a capability, and only a capability reaches
//! the pod, as the user podgate created for the token's subject; the same provider's access
//! tokens, `client_credentials` tokens and ID tokens for another application mint nothing and
//! forward nothing, whichever way they are sent.
//!
//! Needs Node.js and `bash scripts/oidc-provider-deps.sh`; skips loudly without them, fails under
//! `CI=true`. Needs Envoy and the filter like `xds_live.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod xds_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::oidc_provider::{peek, OidcProvider, SignIn, CLI, OTHER, SELF_RESOURCE, WEB};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use xds_support::{pod_host, Stack, APP_PORT, SERVER, USER};

const POD: &str = "oidc-web";
/// The account that signs in at the provider; podgate has never seen it before.
const LOGIN: &str = "dana";

/// The headers of one request, in the order the pod got them.
type Headers = Vec<(String, String)>;
/// How a test shapes a request through Envoy.
type Shape<'a> = Box<dyn FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder + 'a>;

/// A pod's nginx stand-in that records every header of every request it gets.
struct RecordingPod {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Headers>>>,
    task: JoinHandle<()>,
}

impl Drop for RecordingPod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingPod {
    async fn start() -> RecordingPod {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Headers>>> = Arc::default();
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.as_str().to_owned(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect();
                        record.lock().unwrap().push(headers);
                        let body = Full::new(Bytes::from_static(b"oidc-pod"));
                        async move { Ok::<_, Infallible>(hyper::Response::new(body)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RecordingPod { addr, seen, task }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Headers {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

/// `POST /v1/capabilities` for the pod's app port with `token` as `Authorization: Bearer`:
/// the status and the JSON body.
async fn mint(stack: &Stack, token: &str) -> (StatusCode, Value) {
    let resp = stack
        .http
        .post(format!("http://{}/v1/capabilities", stack.cp.http))
        .bearer_auth(token)
        .json(&json!({"pod": POD, "port": APP_PORT}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("mint answered {status} with a body that is not JSON ({e}): {text:?}")
    });
    (status, body)
}

/// Asserts a 401 with a JSON error containing `needle` and no capability.
fn assert_refused(what: &str, (status, body): &(StatusCode, Value), needle: &str) {
    assert_eq!(*status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {body}"));
    assert!(
        error.contains(needle),
        "{what}: {needle:?} not in {error:?}"
    );
    assert!(body.get("token").is_none(), "{what} minted: {body}");
}

/// `GET /` on the pod's host through Envoy, with the request shaped by `shape`: the status.
async fn through_envoy(
    stack: &Stack,
    shape: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> u16 {
    let req = stack
        .http
        .get(format!("http://{}/", stack.envoy.listener))
        .header(reqwest::header::HOST, pod_host(POD));
    shape(req).send().await.unwrap().status().as_u16()
}

/// Sends `token` straight to the pod's host through Envoy in every place a credential can go
/// (the `podgate-token` header, `Authorization: Bearer`, the capability cookie, both headers at
/// once); asserts that none is answered 200 and that the pod saw nothing.
async fn assert_forwards_nothing(stack: &Stack, pod: &RecordingPod, what: &str, token: &str) {
    let before = pod.count();
    let shapes: [(&str, Shape); 4] = [
        (
            "podgate-token",
            Box::new(|r| r.header("podgate-token", token)),
        ),
        ("bearer", Box::new(|r| r.bearer_auth(token))),
        (
            "cookie",
            Box::new(|r| r.header(reqwest::header::COOKIE, format!("podgate_cap={token}"))),
        ),
        (
            "podgate-token and bearer",
            Box::new(|r| r.header("podgate-token", token).bearer_auth(token)),
        ),
    ];
    for (how, shape) in shapes {
        let status = through_envoy(stack, shape).await;
        assert_ne!(status, 200, "{what} as {how} was answered 200");
        assert_eq!(
            pod.count(),
            before,
            "{what} as {how} reached the pod (answered {status})\n{}",
            stack.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_provider_id_token_reaches_the_pod_and_its_access_token_does_not() {
    let Some(op) = OidcProvider::start(json!({})).await else {
        return;
    };
    let audience = format!("{},{}", WEB.0, CLI);
    let stack = Stack::start(&["--oidc-issuer", &op.issuer, "--oidc-audience", &audience]).await;
    let pod = RecordingPod::start().await;
    // The pod is someone else's at first: a valid ID token alone gives no access.
    stack
        .cp
        .create_pod(POD, USER, SERVER, pod.addr.port(), "running")
        .await;

    // A real sign-in through podgate's web client (code flow with PKCE), asking for a JWT access
    // token whose audience is that same client id: same issuer, same keys, same subject.
    let mut req = SignIn::new(WEB.0, Some(WEB.1), LOGIN);
    req.resource = Some(SELF_RESOURCE);
    let tokens = op.sign_in(&req).await;
    let id_token = tokens["id_token"].as_str().unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    let (at_header, at_claims) = peek(access);
    assert_eq!(at_header["typ"], "at+jwt");
    assert_eq!(at_claims["aud"], WEB.0);
    assert_eq!(at_claims["sub"], LOGIN);
    assert_eq!(at_header["kid"], peek(id_token).0["kid"]);

    // The ID token signs dana in (podgate creates the user on the spot) but the pod is alice's:
    // answered as if there were no such pod.
    let (status, body) = mint(&stack, id_token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.get("token").is_none(), "{body}");
    let user = stack
        .cp
        .admin(Method::GET, &format!("/v1/users/{LOGIN}"), None)
        .await;
    assert_eq!(user["id"], LOGIN, "{user}");
    // Now the pod is dana's.
    stack
        .cp
        .admin(
            Method::PATCH,
            &format!("/v1/pods/{POD}"),
            Some(json!({ "owner_id": LOGIN })),
        )
        .await;

    // 1. The ID token mints a capability, and the capability reaches the pod as dana.
    let (status, body) = mint(&stack, id_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let capability = body["token"].as_str().unwrap().to_owned();
    assert_ne!(capability, id_token);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = through_envoy(&stack, |r| r.header("podgate-token", &capability)).await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the capability is not forwarded (last {status})\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let headers = pod.last();
    let header = |name: &str| {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(header("x-podgate-user"), [LOGIN], "{headers:?}");
    assert_eq!(
        header("x-podgate-email"),
        ["dana@example.test"],
        "{headers:?}"
    );
    assert_eq!(
        header("host"),
        [format!("localhost-{APP_PORT}.pod-{POD}.localhost").as_str()]
    );
    for (k, v) in &headers {
        assert!(
            !v.contains(&capability) && !v.contains(id_token),
            "a token reached the pod in {k}: {headers:?}"
        );
    }
    assert!(header("podgate-token").is_empty(), "{headers:?}");
    assert!(header("authorization").is_empty(), "{headers:?}");
    // A client's own identity headers next to the capability are replaced, not forwarded.
    let forged = through_envoy(&stack, |r| {
        r.header("podgate-token", &capability)
            .header("x-podgate-user", USER)
            .header("x-podgate-email", "alice@example.dev")
    })
    .await;
    assert_eq!(forged, 200);
    let headers = pod.last();
    let values = |name: &str| {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(values("x-podgate-user"), [LOGIN], "{headers:?}");
    assert_eq!(
        values("x-podgate-email"),
        ["dana@example.test"],
        "{headers:?}"
    );
    // The ID token is no capability: sent straight to the pod, it forwards nothing.
    assert_forwards_nothing(&stack, &pod, "the ID token", id_token).await;

    // 2. The same sign-in's access token and a client_credentials token of podgate's own client
    // (also `aud` = podgate-web) mint nothing, and forward nothing.
    assert_refused("access token", &mint(&stack, access).await, "access token");
    assert_forwards_nothing(&stack, &pod, "the access token", access).await;
    let cc = op
        .client_credentials(WEB, Some(SELF_RESOURCE), Some("self:read"))
        .await;
    let cc = cc["access_token"].as_str().unwrap();
    assert_eq!(peek(cc).1["aud"], WEB.0);
    assert_refused(
        "client_credentials token",
        &mint(&stack, cc).await,
        "access token",
    );
    assert_forwards_nothing(&stack, &pod, "the client_credentials token", cc).await;

    // 3. dana's ID token for another application of the same issuer.
    let other = op
        .sign_in(&SignIn::new(OTHER.0, Some(OTHER.1), LOGIN))
        .await;
    let other_id = other["id_token"].as_str().unwrap();
    assert_eq!(peek(other_id).1["aud"], OTHER.0);
    assert_refused(
        "other-app ID token",
        &mint(&stack, other_id).await,
        "not for a client podgate trusts",
    );
    assert_forwards_nothing(&stack, &pod, "the other-app ID token", other_id).await;

    // The capability still works: the refusals changed nothing for dana.
    let before = pod.count();
    assert_eq!(
        through_envoy(&stack, |r| r.header("podgate-token", &capability)).await,
        200
    );
    assert_eq!(pod.count(), before + 1);
}
