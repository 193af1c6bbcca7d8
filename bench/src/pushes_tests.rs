//! What `--pushes-per-sec` pushes reaches the podgate filter in a real Envoy: a pod a push adds
//! is let through to, the next push takes it away again, and the pusher keeps its rate; a
//! revocation push refuses the capability it revokes and leaves the others alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use podgate_testkit::http::exchange_on;
use podgate_testkit::FakePod;

use crate::envoy::{self, Envoy, Route};
use crate::pin::Placement;
use crate::pushes::{PushKind, Pushes, PUSHED_POD, RELOADS, REVOKED_FROM};
use crate::tokens::{self, Alg, DirectoryPod, Keys};

/// The status of a request through `proxy` to `pod` with a capability for it.
async fn status_for(proxy: &Envoy, keys: &Keys, pod: &str) -> u16 {
    let status = status_with(proxy, keys, pod, 1).await;
    assert!(matches!(status, 200 | 404), "{status}");
    status
}

/// The status of a request through `proxy` to `pod` with capability `n` for it
/// (`Keys::capability`).
async fn status_with(proxy: &Envoy, keys: &Keys, pod: &str, n: u64) -> u16 {
    let cap = keys.capability(Alg::EdDSA, pod, n).unwrap();
    let (status, body) = exchange_on(
        proxy.listener,
        &tokens::pod_host(pod),
        &format!("GET /pushed HTTP/1.1\r\nCookie: podgate_cap={cap}\r\n"),
        b"",
    )
    .await
    .unwrap();
    assert!(matches!(status, 200 | 401 | 404), "{status}: {body}");
    status
}

/// Waits until a request to `pod` is answered `want`.
async fn until_status(proxy: &Envoy, keys: &Keys, pod: &str, want: u16) {
    let start = Instant::now();
    while status_for(proxy, keys, pod).await != want {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{pod} never answered {want}\n{}",
            proxy.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bench pod, and an Envoy whose podgate filter `kind` pushes reach; the Envoy ready.
async fn pushed_envoy(kind: PushKind) -> (FakePod, Keys, Pushes, Envoy) {
    let wasm = podgate_wasm_tests::host::filter_wasm_path().unwrap();
    let pod = FakePod::start(tokens::BENCH_POD).await.unwrap();
    let keys = Keys::new().unwrap();
    let pods = [DirectoryPod {
        slug: tokens::BENCH_POD.to_owned(),
        cluster: envoy::PODS_CLUSTER.to_owned(),
        address: Some(pod.addr()),
    }];
    let mut pushes = Pushes::new(&keys, &pods, None, kind).unwrap();
    let port = envoy::free_port().unwrap();
    let bootstrap = envoy::static_bootstrap(
        "pushes-test",
        envoy::listener(
            port,
            &Route::Pods,
            vec![pushes.filter("D", &wasm, true).unwrap()],
        ),
        vec![envoy::static_cluster(envoy::PODS_CLUSTER, pod.addr())],
    );
    let envoy_bin = podgate_testkit::envoy_binary().unwrap();
    let mut proxy = Envoy::start(
        &envoy_bin,
        &Placement::detect(false),
        "pushes-test",
        &bootstrap,
        port,
        13,
    )
    .await
    .unwrap();
    proxy.wait_ready().await.unwrap();
    (pod, keys, pushes, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_the_filter_in_envoy() {
    let (pod, keys, pushes, proxy) = pushed_envoy(PushKind::Pods).await;

    // The first configuration, from the file: the bench pod is reached, with an identity
    // assertion; the pushed pod is not in the directory yet.
    assert_eq!(status_for(&proxy, &keys, tokens::BENCH_POD).await, 200);
    let seen = pod.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].header("x-podgate-assertion").is_some(), "{seen:?}");
    assert_eq!(status_for(&proxy, &keys, PUSHED_POD).await, 404);
    assert_eq!(pod.requests().len(), 1);

    // Pushing 20 times a second: the pushed pod comes and goes, and Envoy applies the pushes.
    let reloads = proxy.counter(RELOADS).await.unwrap();
    let pusher = pushes.start(20.0);
    until_status(&proxy, &keys, PUSHED_POD, 200).await;
    until_status(&proxy, &keys, PUSHED_POD, 404).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let written = pusher.finish().unwrap();
    let applied = proxy.counter(RELOADS).await.unwrap() - reloads;
    assert!(written >= 10, "{written} pushes written");
    assert!(
        applied >= 2 && applied <= written,
        "{applied} of {written} pushes applied"
    );
    // What the pushed pod got through to is its own traffic, stripped of the capability.
    let pushed_host = tokens::pod_host(PUSHED_POD);
    let reached: Vec<_> = pod
        .requests()
        .into_iter()
        .filter(|r| r.header("x-forwarded-host") == Some(pushed_host.as_str()))
        .collect();
    assert!(!reached.is_empty());
    assert!(reached
        .iter()
        .all(|r| r.header("cookie").is_none() && r.header("x-podgate-assertion").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_pushes_reach_the_filter_in_envoy() {
    let (pod, keys, pushes, proxy) = pushed_envoy(PushKind::Revocations).await;
    let (first_revoked, third_revoked) = (REVOKED_FROM + 1, REVOKED_FROM + 3);
    // Before any push, nothing is revoked.
    for n in [1, first_revoked, third_revoked] {
        assert_eq!(
            status_with(&proxy, &keys, tokens::BENCH_POD, n).await,
            200,
            "{n}"
        );
    }
    // Pushing 20 times a second: the capabilities the pushes revoke are refused, one after
    // the other, while the one the traffic uses is let through at every request.
    let reloads = proxy.counter(RELOADS).await.unwrap();
    let pusher = pushes.start(20.0);
    let start = Instant::now();
    for n in [first_revoked, third_revoked] {
        while status_with(&proxy, &keys, tokens::BENCH_POD, n).await != 401 {
            assert_eq!(status_with(&proxy, &keys, tokens::BENCH_POD, 1).await, 200);
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "capability {n} never refused\n{}",
                proxy.log_tail()
            );
        }
    }
    let written = pusher.finish().unwrap();
    assert!(written >= 3, "{written} pushes written");
    assert!(proxy.counter(RELOADS).await.unwrap() - reloads >= 2);
    assert_eq!(status_with(&proxy, &keys, tokens::BENCH_POD, 1).await, 200);
    // Every request the pod got was let through on a capability, stripped of it.
    let reached = pod.requests();
    assert!(reached.len() >= 5, "{reached:?}");
    assert!(reached
        .iter()
        .all(|r| r.header("cookie").is_none() && r.header("x-podgate-assertion").is_some()));
}
