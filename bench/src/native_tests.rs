//! The dynamic module of case D-native (`bench/native-filter`) in a real Envoy does podgate's
//! work, so that what it measures is that work: a capability in the cookie is let through with
//! the cookie stripped and the identity headers set, and nothing is forwarded without one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use podgate_testkit::http::exchange_on;
use podgate_testkit::FakePod;

use crate::envoy::{self, Envoy, Route};
use crate::pin::Placement;
use crate::tokens::{self, Alg, DirectoryPod, Keys};

/// Builds the module into this build's target directory; its path.
fn native_module() -> PathBuf {
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "-p", "podgate-native-bench"])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cargo build -p podgate-native-bench failed"
    );
    target.join("debug/libpodgate_native_bench.so")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_module_does_podgates_work_in_envoy() {
    let module = native_module();
    let pod = FakePod::start(tokens::BENCH_POD).await.unwrap();
    let keys = Keys::new().unwrap();
    let config = tokens::filter_config_json(
        &keys.jwks().unwrap(),
        &[DirectoryPod {
            slug: tokens::BENCH_POD.to_owned(),
            cluster: envoy::PODS_CLUSTER.to_owned(),
            address: Some(pod.addr()),
        }],
        None,
    )
    .unwrap();
    let port = envoy::free_port().unwrap();
    let bootstrap = envoy::static_bootstrap(
        "native-test",
        envoy::listener(
            port,
            &Route::Pods,
            vec![envoy::native_filter(&module, &config)],
        ),
        vec![envoy::static_cluster(envoy::PODS_CLUSTER, pod.addr())],
    );
    let envoy_bin = podgate_testkit::envoy_binary().unwrap();
    let mut proxy = Envoy::start(
        &envoy_bin,
        &Placement::detect(false),
        "native-test",
        &bootstrap,
        port,
        12,
    )
    .await
    .unwrap();
    proxy.wait_ready().await.unwrap();
    let host = tokens::pod_host(tokens::BENCH_POD);
    let cap = keys.capability(Alg::EdDSA, tokens::BENCH_POD, 1).unwrap();

    let (status, body) = exchange_on(
        proxy.listener,
        &host,
        &format!("GET /hello HTTP/1.1\r\nCookie: theme=dark; podgate_cap={cap}\r\n"),
        b"",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}\n{}", proxy.log_tail());
    let requests = pod.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let got = &requests[0];
    assert_eq!(got.path, "/hello");
    assert_eq!(got.header_all("cookie"), vec!["theme=dark"]);
    assert_eq!(got.header_all("x-podgate-user"), vec!["u-bench"]);
    assert_eq!(got.header_all("x-podgate-email"), vec!["bench@example.dev"]);
    assert_eq!(got.header_all("x-forwarded-host"), vec![host.as_str()]);
    assert!(!format!("{:?}", got.headers).contains(&cap));

    // No capability, or a forged one: refused, nothing forwarded.
    for cookie in ["", "Cookie: podgate_cap=not-a-token\r\n"] {
        let (status, body) = exchange_on(
            proxy.listener,
            &host,
            &format!("GET /hello HTTP/1.1\r\n{cookie}"),
            b"",
        )
        .await
        .unwrap();
        assert_eq!(status, 401, "{cookie:?}: {body}");
    }
    assert_eq!(pod.requests().len(), 1, "nothing more reached the pod");
}
