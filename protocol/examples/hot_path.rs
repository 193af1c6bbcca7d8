//! The filter's per-request work on a cached capability, natively, for an instruction profile:
//!
//!   cargo build --release -p podgate-protocol --example hot_path
//!   valgrind --tool=callgrind --callgrind-out-file=callgrind.out \
//!       target/release/examples/hot_path 20000
//!   callgrind_annotate --inclusive=yes callgrind.out | head -60
//!
//! It runs what `filter/src/lib.rs` runs between reading the header map and applying the
//! edits, `Gate::on_request`: probe the decision memo with the serialized map and, on the
//! first request only, decode the map (`wire`), build the request view, look for a preflight
//! and decide. The numbers are x86 instructions, not wasm, but the split between functions is
//! what matters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::rc::Rc;

use podgate_protocol::config::{FilterConfig, PodEntry, PodStatus};
use podgate_protocol::gate::{Gate, Outcome};
use podgate_protocol::host;
use podgate_protocol::token::{mint, KeySet, PodClaims, SigningKey, TokenKind};
use podgate_protocol::wire;

const NOW: i64 = 1_800_000_000;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let key = SigningKey::ed25519_from_seed("cap-bench", [7; 32]).unwrap();
    let mut pods = HashMap::new();
    for i in 0..1000 {
        pods.insert(
            format!("pod{i}"),
            PodEntry {
                status: PodStatus::Running,
                cluster: "podgate_pods".into(),
                address: Some("10.0.0.5:30001".into()),
            },
        );
    }
    let config = FilterConfig {
        issuer: "https://podgate.example.dev".into(),
        domain: "example.dev".into(),
        public_host_template: host::DEFAULT_PUBLIC_TEMPLATE.into(),
        upstream_host_template: host::DEFAULT_UPSTREAM_TEMPLATE.into(),
        service_host_template: None,
        public_scheme: "http".into(),
        cookie_name: "podgate_cap".into(),
        auth_url: "https://podgate.example.dev/api/proxy-auth".into(),
        control_plane_cluster: "podgate_control_plane".into(),
        keys: KeySet {
            keys: vec![key.verifying_jwk()],
        },
        pods,
        services: Default::default(),
        services_without_credential: Vec::new(),
        revoked_jti: vec![],
        cutoffs: Default::default(),
        logout_url: None,
        renewal: None,
        wake: false,
        rate_limits: None,
        concurrency_limits: None,
        assertion: None,
        leeway_secs: 30,
        max_capability_lifetime_secs: 3600,
        token_cache_entries: 1024,
    }
    .compile()
    .unwrap();
    let host = "localhost-8726-pod-pod7.example.dev";
    let claims = PodClaims {
        iss: "https://podgate.example.dev".into(),
        sub: "user-1".into(),
        aud: host.into(),
        pod: "pod7".into(),
        port: 8726,
        jti: "01JABCDEFGHJKMNPQRSTVWXYZ0".into(),
        email: Some("u@example.dev".into()),
    };
    let token = mint(TokenKind::Capability, &key, &claims, NOW, 900).unwrap();
    let cookie = format!("theme=dark; podgate_cap={token}; _ga=GA1.2.3");
    let authority = format!("{host}:10000");
    let bytes = wire::encode_header_map(&[
        (":authority", authority.as_str()),
        (":path", "/api/info"),
        (":method", "GET"),
        (":scheme", "http"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("cookie", cookie.as_str()),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6f0b2c1e-8d1a-4a7b-9a55-0c1d2e3f4a5b"),
    ]);
    let mut gate = Gate::new(Rc::new(config));
    let mut forwarded = 0usize;
    for _ in 0..rounds {
        match gate.on_request(&bytes, NOW + 5) {
            Outcome::Forward(f) => forwarded += f.edits.len(),
            other => panic!("{other:?}"),
        }
    }
    println!("{rounds} requests, {forwarded} edits");
}
