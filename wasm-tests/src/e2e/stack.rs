//! A podgate stack for tests: fake pods, a fake control plane, and one Envoy running the static
//! bootstrap with the compiled filter in front of them.
//!
//! Starting Envoy and compiling the filter in V8 costs seconds, so a test binary shares one
//! `SharedStack` (on a process-wide runtime) and tests take turns on it: each takes the lock,
//! which clears every pod's record, so "nothing reached the pod" is exact per test. Tests that
//! need a differently configured Envoy start their own `Stack`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;

use anyhow::anyhow;
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, MutexGuard, OnceCell};

use super::bootstrap::{filter_wasm, Bootstrap};
use super::client::EnvoyClient;
use super::envoy::Envoy;
use super::fake_pod::FakePod;
use super::fixture::{assertion_key, Minter};
use podgate_protocol::assertion::{AssertionVerifier, Audience};
use podgate_protocol::host::{HostTemplate, DEFAULT_PUBLIC_TEMPLATE};
use podgate_protocol::token::KeySet;

/// One runtime for the whole test binary, so a shared stack's servers outlive each test.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("podgate-e2e")
            .build()
            .unwrap_or_else(|e| {
                // Without a runtime no e2e test can run; say so in every test that asks.
                eprintln!("podgate e2e: cannot build a tokio runtime: {e}");
                std::process::abort()
            })
    })
}

/// Runs a test body on the shared runtime (call from a plain `#[test]`).
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// One pod of a stack: its slug and status in the filter's directory (its cluster is
/// `pod_<slug>`).
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub slug: &'static str,
    pub status: &'static str,
    /// No fake pod: the cluster points at a loopback port nobody listens on.
    pub down: bool,
}

/// A running stack.
#[derive(Debug)]
pub struct Stack {
    pub envoy: Envoy,
    pub client: EnvoyClient,
    /// Fake pods by slug, in the order given.
    pub pods: Vec<(String, FakePod)>,
    /// The fake control plane behind `podgate_control_plane`.
    pub control_plane: FakePod,
    pub minter: Minter,
    /// The filter configuration Envoy runs (JSON).
    pub filter_config: serde_json::Value,
}

/// The cluster name of a pod in test stacks.
pub fn pod_cluster(slug: &str) -> String {
    format!("pod_{slug}")
}

impl Stack {
    /// Starts fake pods for `pods`, a fake control plane, and Envoy with the static bootstrap
    /// whose filter configuration gets the suite's key and this pod directory (everything else
    /// as in the file). `edit` may change the configuration further before it is written.
    pub async fn start(
        label: &str,
        pods: &[PodSpec],
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> anyhow::Result<Stack> {
        Stack::start_from(label, Bootstrap::load_static()?, pods, edit).await
    }

    /// `start` on a bootstrap the test already changed (the static file, e.g. with shorter
    /// timeouts).
    pub async fn start_from(
        label: &str,
        mut bootstrap: Bootstrap,
        pods: &[PodSpec],
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> anyhow::Result<Stack> {
        let mut config = bootstrap.filter_config()?;
        let minter = Minter::new(
            config["issuer"]
                .as_str()
                .ok_or_else(|| anyhow!("the static filter config has no issuer"))?,
        )?;
        config["keys"] = json!({ "keys": [minter.key.verifying_jwk()] });
        let assertion_key = assertion_key()?;
        config["assertion"] = json!({ "key": assertion_key.to_private_jwk(), "lifetime_secs": 60 });
        let mut directory = serde_json::Map::new();
        let mut fake_pods = Vec::new();
        let mut down = Vec::new();
        for pod in pods {
            directory.insert(
                pod.slug.to_owned(),
                json!({"status": pod.status, "cluster": pod_cluster(pod.slug)}),
            );
            if pod.down {
                down.push((pod_cluster(pod.slug), closed_port().await?));
            } else {
                fake_pods.push((pod.slug.to_owned(), FakePod::start(pod.slug).await?));
            }
        }
        config["pods"] = serde_json::Value::Object(directory);
        edit(&mut config);
        // Every fake pod checks the assertion as a real pod would: the published key, the
        // issuer, and an audience of its own pod (any port).
        let issuer = config["issuer"].as_str().unwrap_or_default().to_owned();
        let hosts = HostTemplate::new(
            config["public_host_template"]
                .as_str()
                .unwrap_or(DEFAULT_PUBLIC_TEMPLATE),
            config["domain"].as_str().unwrap_or_default(),
        )
        .map_err(|e| anyhow!("the filter config's host template: {e}"))?;
        let published = KeySet {
            keys: assertion_key.public_jwk().into_iter().collect(),
        };
        for (slug, pod) in &fake_pods {
            let audience = Audience::Pod {
                hosts: hosts.clone(),
                pod: slug.clone(),
            };
            pod.verify_assertions(
                AssertionVerifier::new(issuer.clone(), &published, audience, 5)
                    .map_err(|e| anyhow!("assertion verifier: {e}"))?,
            );
        }
        let control_plane = FakePod::start("control-plane").await?;
        let cp_cluster = config["control_plane_cluster"]
            .as_str()
            .unwrap_or("podgate_control_plane")
            .to_owned();
        let mut clusters: Vec<(String, SocketAddr)> = vec![(cp_cluster, control_plane.addr())];
        for (slug, pod) in &fake_pods {
            clusters.push((pod_cluster(slug), pod.addr()));
        }
        clusters.extend(down);
        let cluster_refs: Vec<(&str, SocketAddr)> =
            clusters.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        bootstrap
            .ephemeral_ports()?
            .set_wasm_path(&filter_wasm()?)?
            .set_filter_config(&config.to_string())?
            .set_clusters(&cluster_refs)?;
        let envoy = Envoy::start(label, &bootstrap.to_yaml()?, 1).await?;
        let client = EnvoyClient::new(envoy.listener()?)?;
        Ok(Stack {
            envoy,
            client,
            pods: fake_pods,
            control_plane,
            minter,
            filter_config: config,
        })
    }

    /// The fake pod for `slug`.
    pub fn pod(&self, slug: &str) -> Option<&FakePod> {
        self.pods.iter().find(|(s, _)| s == slug).map(|(_, p)| p)
    }

    /// Clears every record.
    pub fn reset(&self) {
        self.control_plane.reset();
        for (_, pod) in &self.pods {
            pod.reset();
        }
    }

    /// True when no pod and not the control plane accepted a connection or read a request.
    pub fn nothing_forwarded(&self) -> bool {
        self.control_plane.untouched() && self.pods.iter().all(|(_, p)| p.untouched())
    }

    /// What every upstream got, for assertion messages.
    pub fn describe(&self) -> String {
        let mut out = vec![self.control_plane.describe()];
        out.extend(self.pods.iter().map(|(_, p)| p.describe()));
        out.join("\n")
    }
}

/// A loopback address nobody listens on (bound, then released).
async fn closed_port() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?)
}

/// The stack most tests share: pods `alpha` and `beta` running, `gamma` stopped, `omega`
/// running but its upstream is down; `delta` is not in the directory.
pub struct SharedStack {
    stack: Stack,
    turn: Mutex<()>,
}

/// A test's turn on the shared stack; records were cleared when it began.
pub struct Turn<'a> {
    stack: &'a Stack,
    pub alpha: &'a FakePod,
    pub beta: &'a FakePod,
    pub gamma: &'a FakePod,
    _turn: MutexGuard<'a, ()>,
}

impl std::ops::Deref for Turn<'_> {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        self.stack
    }
}

impl SharedStack {
    pub const PODS: [PodSpec; 4] = [
        PodSpec {
            slug: "alpha",
            status: "running",
            down: false,
        },
        PodSpec {
            slug: "beta",
            status: "running",
            down: false,
        },
        PodSpec {
            slug: "gamma",
            status: "stopped",
            down: false,
        },
        PodSpec {
            slug: "omega",
            status: "running",
            down: true,
        },
    ];

    /// Waits for this test's turn on the shared stack, starting it on first use. A stack that
    /// failed to start fails every test with the same message.
    pub async fn turn() -> anyhow::Result<Turn<'static>> {
        static SHARED: OnceCell<Result<SharedStack, String>> = OnceCell::const_new();
        let shared = SHARED
            .get_or_init(|| async {
                Stack::start("shared", &SharedStack::PODS, |_| {})
                    .await
                    .map(|stack| SharedStack {
                        stack,
                        turn: Mutex::new(()),
                    })
                    .map_err(|e| format!("{e:#}"))
            })
            .await
            .as_ref()
            .map_err(|e| anyhow!("the shared e2e stack did not start: {e}"))?;
        let guard = shared.turn.lock().await;
        let stack = &shared.stack;
        stack.reset();
        let pod = |slug: &str| {
            stack
                .pod(slug)
                .ok_or_else(|| anyhow!("the shared stack has no pod {slug}"))
        };
        Ok(Turn {
            stack,
            alpha: pod("alpha")?,
            beta: pod("beta")?,
            gamma: pod("gamma")?,
            _turn: guard,
        })
    }
}
