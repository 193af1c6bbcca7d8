//! How a request reaches a pod by its address, through a real Envoy running
//! `envoy/podgate-static.yaml`: Envoy picks the route before the filter runs, and the route
//! without a cluster header goes to the pods' original-destination cluster (`podgate_pods`),
//! which connects to the address in `x-podgate-upstream`. The filter sets that header on a
//! forward to a pod with an address and makes Envoy pick the route again only when it names a
//! cluster or removed a client's copy of one of its headers.
//!
//! Every way a request could reach a pod without the filter's approval is tried here, each with
//! the client pointing `x-podgate-upstream` (and the cluster header) at a recording pod: the
//! filter refuses, the client's copy with a valid capability for another pod, a filter whose
//! VM dies, a configuration the filter refuses, no filter module at all. The pod must receive
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use podgate_wasm_tests::e2e::client::Answer;
use podgate_wasm_tests::e2e::{
    block_on, public_host, upstream_host, Bootstrap, Envoy, EnvoyClient, FakePod, Minter, Readiness,
};
use podgate_wasm_tests::e2e::{bootstrap::filter_wasm, pod_cluster};
use serde_json::json;

const PORT: u16 = 8726;

/// Envoy with the podgate filter, pods `alpha` and `beta` in the directory by address (the
/// control plane's layout: cluster `podgate_pods`), a fake control plane, and a pod `gamma`
/// with a cluster of its own.
struct ByAddress {
    envoy: Envoy,
    client: EnvoyClient,
    minter: Minter,
    alpha: FakePod,
    beta: FakePod,
    gamma: FakePod,
    control_plane: FakePod,
}

impl ByAddress {
    async fn start(label: &str) -> ByAddress {
        let alpha = FakePod::start("alpha").await.unwrap();
        let beta = FakePod::start("beta").await.unwrap();
        let gamma = FakePod::start("gamma").await.unwrap();
        let control_plane = FakePod::start("control-plane").await.unwrap();
        let mut bootstrap = Bootstrap::load_static().unwrap();
        let mut config = bootstrap.filter_config().unwrap();
        let minter = Minter::new(config["issuer"].as_str().unwrap()).unwrap();
        config["keys"] = json!({ "keys": [minter.key.verifying_jwk()] });
        config["pods"] = json!({
            "alpha": {"status": "running", "cluster": "podgate_pods", "address": alpha.addr().to_string()},
            "beta": {"status": "running", "cluster": "podgate_pods", "address": beta.addr().to_string()},
            "gamma": {"status": "running", "cluster": pod_cluster("gamma")},
            "sleepy": {"status": "stopped", "cluster": "podgate_pods", "address": alpha.addr().to_string()},
        });
        bootstrap
            .ephemeral_ports()
            .unwrap()
            .set_wasm_path(&filter_wasm().unwrap())
            .unwrap()
            .set_filter_config(&config.to_string())
            .unwrap()
            .set_clusters(&[
                ("podgate_control_plane", control_plane.addr()),
                (&pod_cluster("gamma"), gamma.addr()),
            ])
            .unwrap();
        let envoy = Envoy::start(label, &bootstrap.to_yaml().unwrap(), 1)
            .await
            .unwrap();
        let client = EnvoyClient::new(envoy.listener().unwrap()).unwrap();
        ByAddress {
            envoy,
            client,
            minter,
            alpha,
            beta,
            gamma,
            control_plane,
        }
    }

    fn all(&self) -> [&FakePod; 4] {
        [&self.alpha, &self.beta, &self.gamma, &self.control_plane]
    }

    fn describe(&self) -> String {
        let pods: Vec<String> = self.all().iter().map(|p| p.describe()).collect();
        format!("{}\n{}", pods.join("\n"), self.envoy.log_tail())
    }

    fn reset(&self) {
        for pod in self.all() {
            pod.reset();
        }
    }

    /// Asserts that only `pod` got anything: one request, for it (its host), without podgate's
    /// routing headers.
    fn only(&self, pod: &FakePod, what: &str) {
        let requests = pod.requests();
        assert_eq!(requests.len(), 1, "{what}:\n{}", self.describe());
        for other in self.all() {
            if other.name() != pod.name() {
                assert!(other.untouched(), "{what}:\n{}", self.describe());
            }
        }
        let seen = requests.into_iter().next().unwrap();
        for internal in [
            "x-podgate-upstream",
            "x-podgate-cluster",
            "x-podgate-pod",
            "x-podgate-port",
        ] {
            assert!(
                !seen.has_header(internal),
                "{what}: {internal} reached the pod"
            );
        }
        assert_eq!(
            seen.header_all("host"),
            vec![upstream_host(PORT, pod.name())],
            "{what}"
        );
    }

    fn nothing(&self, answer: &Answer, status: u16, what: &str) {
        assert_eq!(answer.status, status, "{what}: {}", answer.body);
        for pod in self.all() {
            assert!(pod.untouched(), "{what}:\n{}", self.describe());
        }
    }
}

async fn get(client: &EnvoyClient, pod: &str, headers: &[(&str, String)]) -> Answer {
    let mut builder = client.get(&public_host(PORT, pod), "/");
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    EnvoyClient::send(builder).await.unwrap()
}

#[test]
fn a_request_reaches_its_pod_by_address_and_no_routing_header_reaches_the_pod() {
    block_on(async {
        let s = ByAddress::start("routing-approved").await;
        let alpha = s.minter.valid("alpha", PORT).unwrap();
        let cookie = ("cookie", format!("podgate_cap={alpha}"));
        let answer = get(&s.client, "alpha", std::slice::from_ref(&cookie)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        s.only(&s.alpha, "approved");
        s.reset();
        // The same request again (the filter's memo of the decision): the same pod.
        let answer = get(&s.client, "alpha", &[cookie]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        s.only(&s.alpha, "approved, again");
        s.reset();
        // A pod with a cluster of its own goes by the cluster header.
        let gamma = s.minter.valid("gamma", PORT).unwrap();
        let answer = get(&s.client, "gamma", &[("podgate-token", gamma)]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        s.only(&s.gamma, "by cluster");
    });
}

#[test]
fn a_client_routing_header_without_the_filters_approval_reaches_nothing() {
    block_on(async {
        let s = ByAddress::start("routing-refused").await;
        let beta_addr = s.beta.addr().to_string();
        let spoofs = [
            ("x-podgate-upstream", beta_addr.clone()),
            ("x-podgate-cluster", "podgate_pods".to_owned()),
            ("x-podgate-cluster", pod_cluster("gamma")),
        ];
        for spoof in &spoofs {
            // No capability: the filter refuses, answered before the router.
            let answer = get(&s.client, "beta", std::slice::from_ref(spoof)).await;
            s.nothing(&answer, 401, &format!("no capability, {spoof:?}"));
            // A capability for another pod.
            let alpha = s.minter.valid("alpha", PORT).unwrap();
            let headers = [spoof.clone(), ("podgate-token", alpha)];
            let answer = get(&s.client, "beta", &headers).await;
            s.nothing(
                &answer,
                403,
                &format!("another pod's capability, {spoof:?}"),
            );
            // A stopped pod, whose directory entry has an address.
            let sleepy = s.minter.valid("sleepy", PORT).unwrap();
            let headers = [spoof.clone(), ("podgate-token", sleepy)];
            let answer = get(&s.client, "sleepy", &headers).await;
            assert!(answer.status >= 400, "{spoof:?}: {}", answer.body);
            for pod in s.all() {
                assert!(pod.untouched(), "stopped, {spoof:?}:\n{}", s.describe());
            }
        }
    });
}

#[test]
fn a_client_routing_header_with_a_valid_capability_goes_where_the_capability_says() {
    block_on(async {
        let s = ByAddress::start("routing-spoofed").await;
        let alpha = s.minter.valid("alpha", PORT).unwrap();
        let spoofs = [
            ("x-podgate-upstream", s.beta.addr().to_string()),
            ("x-podgate-upstream", s.control_plane.addr().to_string()),
            // Matched by the cluster-header route Envoy picks before the filter runs: the
            // filter removes it and makes Envoy pick again.
            ("x-podgate-cluster", "podgate_control_plane".to_owned()),
            ("x-podgate-cluster", pod_cluster("gamma")),
            ("x-podgate-cluster", "podgate_pods".to_owned()),
        ];
        for spoof in spoofs {
            let what = format!("{spoof:?}");
            let headers = [spoof, ("podgate-token", alpha.clone())];
            let answer = get(&s.client, "alpha", &headers).await;
            assert_eq!(answer.status, 200, "{what}: {}", answer.body);
            s.only(&s.alpha, &what);
            s.reset();
        }
    });
}

/// Starts Envoy with this filter module and configuration in front of a pod in the directory
/// by address, and asserts that a request carrying the pod's address in every routing header
/// reaches nothing: Envoy refuses to start, or answers every request itself with a 5xx.
async fn assert_nothing_reaches_the_pod(label: &str, wasm: &std::path::Path, config: &str) {
    let pod = FakePod::start("alpha").await.unwrap();
    let mut bootstrap = Bootstrap::load_static().unwrap();
    bootstrap
        .ephemeral_ports()
        .unwrap()
        .set_wasm_path(wasm)
        .unwrap()
        .set_filter_config(config)
        .unwrap()
        .set_clusters(&[
            ("podgate_control_plane", pod.addr()),
            ("pod_alpha", pod.addr()),
        ])
        .unwrap();
    let mut envoy = Envoy::spawn(label, &bootstrap.to_yaml().unwrap(), 1).unwrap();
    match envoy.wait_ready(Duration::from_secs(45)).await.unwrap() {
        Readiness::Exited(code) => assert_ne!(code, 0, "{label}: Envoy refused but exited 0"),
        Readiness::Ready => {
            let client = EnvoyClient::new(envoy.listener().unwrap()).unwrap();
            for path in ["/panic", "/", "/index.html", "/.podgate/callback?ticket=x"] {
                for cluster in [None, Some("podgate_pods"), Some("pod_alpha")] {
                    let mut builder = client
                        .get(&public_host(PORT, "alpha"), path)
                        .header("x-podgate-upstream", pod.addr().to_string());
                    if let Some(cluster) = cluster {
                        builder = builder.header("x-podgate-cluster", cluster);
                    }
                    let answer = EnvoyClient::send(builder).await.unwrap();
                    assert!(
                        answer.status >= 500,
                        "{label} {path} {cluster:?}: {} {}",
                        answer.status,
                        answer.body
                    );
                }
            }
        }
    }
    assert!(
        pod.untouched(),
        "{label}: {}\n{}",
        pod.describe(),
        envoy.log_tail()
    );
}

#[test]
fn without_a_working_filter_nothing_reaches_a_pod_by_address() {
    block_on(async {
        let wasm = filter_wasm().unwrap();
        // A configuration the filter refuses: it has none.
        let mut config = Bootstrap::load_static().unwrap().filter_config().unwrap();
        config["issuer"] = "".into();
        assert_nothing_reaches_the_pod("routing-bad-config", &wasm, &config.to_string()).await;
        assert_nothing_reaches_the_pod("routing-no-config", &wasm, "{}").await;
        // No filter module at all.
        let missing = std::env::temp_dir().join("podgate-no-such-filter.wasm");
        assert_nothing_reaches_the_pod("routing-no-module", &missing, "{}").await;
    });
}

#[test]
fn a_filter_vm_that_dies_forwards_nothing_to_a_pod_by_address() {
    block_on(async {
        // The podgate filter never panics; the probe filter panics on `/panic` and stands in for
        // a VM that dies mid-request (every later request finds it dead).
        assert_nothing_reaches_the_pod("routing-dead-vm", &probe_wasm(), "probe").await;
    });
}

/// The probe filter (`wasm-tests/probe-filter`), built once: it panics on `/panic`.
fn probe_wasm() -> std::path::PathBuf {
    use podgate_wasm_tests::host::{cargo_build, target_dir, workspace_root};
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = workspace_root().join("wasm-tests/probe-filter");
        cargo_build(&dir, &["build", "--target", "wasm32-wasip1", "--release"])
            .expect("building the probe filter");
        target_dir().join("wasm32-wasip1/release/podgate_probe_filter.wasm")
    })
    .clone()
}
