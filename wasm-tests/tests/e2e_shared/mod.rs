//! Helpers of the suites on the shared static stack (`e2e_envoy.rs`, `e2e_credentials.rs`,
//! `edge_probes.rs`): a turn on the stack, one request through Envoy, alpha's public host, and
//! the one request a pod received.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use podgate_wasm_tests::e2e::client::Answer;
use podgate_wasm_tests::e2e::{public_host, EnvoyClient, FakePod, Recorded, SharedStack, Turn};

/// The app port in every pod host of these suites.
pub const PORT: u16 = 8726;

/// This test's turn on the shared stack (started on first use).
pub async fn turn() -> Turn<'static> {
    SharedStack::turn().await.unwrap()
}

/// Sends one request through Envoy.
pub async fn send(builder: reqwest::RequestBuilder) -> Answer {
    EnvoyClient::send(builder).await.unwrap()
}

/// alpha's public host on [`PORT`].
pub fn alpha_host() -> String {
    public_host(PORT, "alpha")
}

/// The one request `pod` received, after checking nothing else got anything.
pub fn only_request(stack: &Turn<'_>, pod: &FakePod) -> Recorded {
    only_request_to(stack, pod, pod.name())
}

/// [`only_request`], naming `what` (the request sent) in its failure messages.
pub fn only_request_to(stack: &Turn<'_>, pod: &FakePod, what: &str) -> Recorded {
    let requests = pod.requests();
    assert_eq!(requests.len(), 1, "{what}:\n{}", stack.describe());
    for other in [stack.alpha, stack.beta, stack.gamma, &stack.control_plane] {
        if other.name() != pod.name() {
            assert!(other.untouched(), "{what}:\n{}", stack.describe());
        }
    }
    requests.into_iter().next().unwrap()
}
