//! Fair limits at the edge through a real Envoy (one worker): open-stream limits per pod and
//! per user (`concurrency_limits`, `protocol/src/concurrent.rs`) on a static stack with fake
//! pods, and a pod's own limits set through the admin API of a live control plane (ADS) taking
//! effect at the next push.
//!
//! A stream past a limit gets `429` with `Retry-After` and reaches no pod; a closed WebSocket or
//! a finished request lets the next one in, and no count is left behind by streams that ended.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use podgate_wasm_tests::e2e::fixture::now;
use podgate_wasm_tests::e2e::stack_full::{
    FullStack, Seeded, Servers, StackOptions, PROPAGATION_TIMEOUT,
};
use podgate_wasm_tests::e2e::web_client::WebClient;
use podgate_wasm_tests::e2e::{
    block_on, public_host, EnvoyClient, FakePod, PodSpec, Stack, WsOutcome,
};
use serde_json::json;

const PORT: u16 = 8726;

type Socket = Box<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>>;

/// How long a closed stream may take to be let go of (Envoy deletes it, then the filter's
/// `proxy_on_delete` runs).
const RELEASE: Duration = Duration::from_secs(5);

async fn open_ws(stack: &Stack, pod: &str, token: &str) -> WsOutcome {
    stack
        .client
        .websocket(&public_host(PORT, pod), "/ws", &[("podgate-token", token)])
        .await
        .unwrap()
}

fn opened(outcome: WsOutcome, what: &str) -> Socket {
    match outcome {
        WsOutcome::Open(ws) => ws,
        WsOutcome::Refused { status, body, .. } => panic!("{what}: refused {status} {body}"),
    }
}

/// Asserts `outcome` is the filter's `429` for an open-stream limit of `whose` ("your" or
/// "this pod's"), with `Retry-After: 1`.
fn assert_too_many(outcome: WsOutcome, whose: &str, what: &str) {
    let WsOutcome::Refused {
        status,
        body,
        retry_after,
    } = outcome
    else {
        panic!("{what}: a WebSocket past the limit opened");
    };
    assert_eq!(status, 429, "{what}: {body}");
    assert_eq!(retry_after.as_deref(), Some("1"), "{what}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        error["error"],
        format!(
            "Too many open connections: {whose} open requests and WebSockets are at the limit; retry in 1 s"
        ),
        "{what}"
    );
}

async fn close(mut ws: Socket) {
    let _ = ws.close(None).await;
    drop(ws);
}

/// Opens a WebSocket to `pod`, retrying while a stream closed just before is still counted
/// (for at most [`RELEASE`]).
async fn open_when_released(stack: &Stack, pod: &str, token: &str, what: &str) -> Socket {
    let deadline = Instant::now() + RELEASE;
    loop {
        match open_ws(stack, pod, token).await {
            WsOutcome::Open(ws) => return ws,
            WsOutcome::Refused { status, body, .. } => {
                assert_eq!(status, 429, "{what}: {body}");
                assert!(Instant::now() < deadline, "{what}: still refused: {body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn upgrades(pod: &FakePod) -> usize {
    pod.requests().iter().filter(|r| r.websocket).count()
}

/// A pod's own limit of N (beta: 2): N WebSockets open, the N+1st is refused and never reaches
/// the pod, closing one lets the next in; a user's limit (3) holds over two pods; requests in
/// flight count like WebSockets; and after many opened and closed streams the full limits are
/// still there.
#[test]
fn open_streams_past_a_pod_or_user_limit_are_429_and_closing_one_lets_the_next_in() {
    block_on(async {
        let pods = ["alpha", "beta"].map(|slug| PodSpec {
            slug,
            status: "running",
            down: false,
        });
        let stack = Stack::start("concurrency-limits", &pods, |c| {
            c["concurrency_limits"] = json!({"per_user": 3, "pods": {"beta": 2}});
        })
        .await
        .unwrap();
        let token = |user: &str, pod: &str| {
            stack
                .minter
                .mint(&stack.minter.capability(pod, PORT).subject(user))
                .unwrap()
        };
        let (alpha, beta) = (stack.pod("alpha").unwrap(), stack.pod("beta").unwrap());
        let (u1_beta, u1_alpha, u2_beta, u2_alpha) = (
            token("u1", "beta"),
            token("u1", "alpha"),
            token("u2", "beta"),
            token("u2", "alpha"),
        );

        // beta holds two, from any user.
        let mut beta_open = Vec::new();
        for n in 0..2 {
            let ws = opened(
                open_ws(&stack, "beta", &u1_beta).await,
                &format!("beta #{n}"),
            );
            beta_open.push(ws);
        }
        assert_too_many(
            open_ws(&stack, "beta", &u2_beta).await,
            "this pod's",
            "beta's third",
        );
        assert_eq!(upgrades(beta), 2, "{}", beta.describe());

        // u1 holds three over both pods: the third on alpha opens, a fourth does not.
        let u1_on_alpha = opened(open_ws(&stack, "alpha", &u1_alpha).await, "u1's third");
        assert_too_many(
            open_ws(&stack, "alpha", &u1_alpha).await,
            "your",
            "u1's fourth",
        );
        assert_eq!(upgrades(alpha), 1, "{}", alpha.describe());
        // A request is a stream too: refused while u1 is at the limit, nothing forwarded.
        let refused = EnvoyClient::send(
            stack
                .client
                .get(&public_host(PORT, "alpha"), "/")
                .header("podgate-token", &u1_alpha),
        )
        .await
        .unwrap();
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(alpha.requests().len(), 1, "{}", alpha.describe());
        // Another user has a count of their own.
        let u2_on_alpha = opened(open_ws(&stack, "alpha", &u2_alpha).await, "u2 on alpha");

        // One of beta's closes: the next gets in (u2's; u1 is still at three).
        close(beta_open.pop().unwrap()).await;
        let u2_on_beta = open_when_released(&stack, "beta", &u2_beta, "after a close").await;
        assert_too_many(
            open_ws(&stack, "beta", &u2_beta).await,
            "this pod's",
            "beta full again",
        );
        for ws in beta_open
            .drain(..)
            .chain([u1_on_alpha, u2_on_alpha, u2_on_beta])
        {
            close(ws).await;
        }

        // Requests in flight count: two slow ones fill beta, a third is refused meanwhile.
        beta.reset();
        let slow = |token: String| {
            let request = stack
                .client
                .get(&public_host(PORT, "beta"), "/_fake/delay?ms=3000")
                .header("podgate-token", token);
            tokio::spawn(EnvoyClient::send(request))
        };
        let deadline = Instant::now() + RELEASE;
        let mut in_flight = Vec::new();
        while in_flight.len() < 2 {
            // Each waits until every closed WebSocket is let go of.
            let before = beta.requests().len();
            let call = slow(u2_beta.clone());
            while beta.requests().len() == before && !call.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if beta.requests().len() > before {
                in_flight.push(call);
            } else {
                assert!(Instant::now() < deadline, "slow requests refused");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert_too_many(
            open_ws(&stack, "beta", &u1_beta).await,
            "this pod's",
            "beta full of requests in flight",
        );
        for call in in_flight {
            assert_eq!(call.await.unwrap().unwrap().status, 200);
        }

        // Many streams opened and closed leave nothing counted: the full limits again.
        for n in 0..25 {
            let ws = open_when_released(&stack, "beta", &u1_beta, &format!("round {n}")).await;
            close(ws).await;
        }
        let mut held = Vec::new();
        for n in 0..2 {
            held.push(open_when_released(&stack, "beta", &u1_beta, &format!("full #{n}")).await);
        }
        held.push(open_when_released(&stack, "alpha", &u1_alpha, "u1's third").await);
        assert_too_many(
            open_ws(&stack, "alpha", &u1_alpha).await,
            "your",
            "u1 at the limit after the rounds",
        );
        for ws in held {
            close(ws).await;
        }
    });
}

/// Waits until a request with the owner's capability is forwarded (the pod reached Envoy).
async fn wait_known(stack: &FullStack, seeded: &Seeded) {
    let owner = WebClient::new().unwrap();
    stack.dev_login(&owner, &seeded.owner).await.unwrap();
    let token = stack.capability(&owner, &seeded.slug, PORT).await.unwrap();
    stack
        .wait_until(
            &seeded.slug,
            PORT,
            &token,
            "the new pod reaches Envoy",
            |a| a.status == 200,
        )
        .await
        .unwrap();
}

async fn live_ws(stack: &FullStack, seeded: &Seeded, token: &str) -> WsOutcome {
    stack
        .websocket(&seeded.slug, PORT, &[("podgate-token", token)])
        .await
        .unwrap()
}

/// Opens WebSockets until `keep` are held and the next is refused `429` (the pod's limit of
/// `keep` reached Envoy), closing each that opens beyond them; the held ones. The refused one
/// reached no pod.
async fn fill_until_refused(
    stack: &FullStack,
    seeded: &Seeded,
    servers: &Servers,
    token: &str,
    keep: usize,
    what: &str,
) -> Vec<Socket> {
    let deadline = Instant::now() + PROPAGATION_TIMEOUT;
    let mut held = Vec::new();
    loop {
        let before = servers.a.requests().len();
        match live_ws(stack, seeded, token).await {
            WsOutcome::Open(ws) if held.len() < keep => held.push(ws),
            WsOutcome::Open(ws) => close(ws).await,
            // The limit in force before the push: wait for the new one.
            WsOutcome::Refused { status: 429, .. } if held.len() < keep => {}
            refused @ WsOutcome::Refused { .. } => {
                assert_too_many(refused, "this pod's", what);
                assert_eq!(
                    servers.a.requests().len(),
                    before,
                    "{what}: the refused stream reached the pod: {}",
                    servers.a.describe()
                );
                return held;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never refused\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pod's own limits set through the admin API of a live control plane take effect through
/// Envoy at the next push, winning over the global flag: first an open-stream limit (with
/// many streams opened and closed, and a push changing it, leaving nothing counted), then a
/// request rate.
#[test]
fn a_pods_own_limits_set_through_the_admin_api_take_effect_through_envoy() {
    block_on(async {
        let mut options = StackOptions::new("pod-limits");
        options.extra_args = vec!["--edge-concurrent-per-pod".into(), "50".into()];
        let stack = FullStack::start(options).await.unwrap();
        let servers = FullStack::servers().await.unwrap();
        let seeded = stack.seed("limits", &servers).await.unwrap();
        wait_known(&stack, &seeded).await;
        let member = WebClient::new().unwrap();
        stack.dev_login(&member, &seeded.member).await.unwrap();
        let token = stack.capability(&member, &seeded.slug, PORT).await.unwrap();
        let pod_path = format!("/v1/pods/{}", seeded.slug);

        let answer = stack
            .admin
            .patch(&pod_path, json!({"limits": {"concurrent": 2}}))
            .await
            .unwrap();
        assert_eq!(answer["limits"], json!({"concurrent": 2}), "{answer}");
        let mut held = fill_until_refused(&stack, &seeded, &servers, &token, 2, "limit of 2").await;

        // Closing one lets the next in; many opened and closed leave nothing counted.
        let deadline = Instant::now() + PROPAGATION_TIMEOUT;
        for round in 0..20 {
            close(held.pop().unwrap()).await;
            loop {
                match live_ws(&stack, &seeded, &token).await {
                    WsOutcome::Open(ws) => {
                        held.push(ws);
                        break;
                    }
                    WsOutcome::Refused { status, body, .. } => {
                        assert!(
                            status == 429 && Instant::now() < deadline,
                            "round {round}: {status} {body}"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        for ws in held.drain(..) {
            close(ws).await;
        }
        // A push with another limit: the whole of it opens, one more does not.
        stack
            .admin
            .patch(&pod_path, json!({"limits": {"concurrent": 3}}))
            .await
            .unwrap();
        let held = fill_until_refused(&stack, &seeded, &servers, &token, 3, "limit of 3").await;
        for ws in held {
            close(ws).await;
        }

        // A request rate for the pod: past its burst, 429 with Retry-After, nothing forwarded.
        stack
            .admin
            .patch(
                &pod_path,
                json!({"limits": {"rate": {"per_second": 1, "burst": 2}}}),
            )
            .await
            .unwrap();
        let answer = stack
            .wait_until(&seeded.slug, PORT, &token, "the pod's rate", |a| {
                a.status == 429
            })
            .await
            .unwrap();
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert_eq!(
            answer.json()["error"],
            "Too many requests: this pod's request rate is spent; retry in 1 s",
            "{}",
            answer.body
        );
        // Within one second of a refused request the bucket stays empty: the next is refused
        // too and reaches no pod. Buckets refill by whole seconds of the clock Envoy shares
        // with this test, so a pair is checked only when both were sent within one second.
        let send = || {
            EnvoyClient::send(
                stack
                    .envoy_client
                    .get(&stack.pod_host(&seeded.slug, PORT), "/api/info")
                    .header("podgate-token", &token),
            )
        };
        let mut pairs = 0;
        loop {
            pairs += 1;
            assert!(pairs <= 20, "no two requests within one second");
            let second = now();
            let refused = send().await.unwrap();
            let forwarded = servers.a.requests().len();
            let again = send().await.unwrap();
            if refused.status != 429 || now() != second {
                continue;
            }
            assert_eq!(again.status, 429, "{}", again.body);
            assert_eq!(servers.a.requests().len(), forwarded);
            break;
        }
    });
}
