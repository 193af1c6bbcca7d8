//! Shared helpers for the wasmtime-hosted tests of the compiled podgate filter: one config
//! builder, signing keys, token forging (HS256 over arbitrary JSON), a request builder and
//! assertions on what the filter did.
//!
//! Every request sent through [`Req::send`] asserts that the VM is still alive afterwards and
//! records the request's fuel, host calls and `clear_route_cache` calls.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use podgate_protocol::token::{mint, PodClaims, SigningKey, TokenKind};
use podgate_wasm_tests::host::{filter_wasm_path, FilterVm, Outcome};
use serde_json::{json, Value};

/// The fixed clock every VM starts at (unix seconds).
pub const NOW: i64 = 1_800_000_000;
pub const ISS: &str = "http://127.0.0.1:8080";
pub const DOMAIN: &str = "localhost";
pub const AUTH_URL: &str = "http://127.0.0.1:8080/api/proxy-auth";
pub const LEEWAY: i64 = 30;
pub const MAX_LIFETIME: i64 = 3600;
/// Lifetime of the capabilities `cap` mints.
pub const LIFETIME: i64 = 900;
pub const COOKIE: &str = "podgate_cap";
pub const PORT: u16 = 8726;
pub const CAP_TYP: &str = "podgate-cap+jwt";

/// The public pod host (default template).
pub fn host(pod: &str, port: u16) -> String {
    format!("localhost-{port}-pod-{pod}.{DOMAIN}")
}

/// The upstream Host the pod's nginx sees (default upstream template).
pub fn upstream_host(pod: &str, port: u16) -> String {
    format!("localhost-{port}.pod-{pod}.{DOMAIN}")
}

// ---- keys --------------------------------------------------------------------------------

/// An Ed25519 capability key `cap-ed{n}`.
pub fn ed_key(n: u8) -> SigningKey {
    SigningKey::ed25519_from_seed(format!("cap-ed{n}"), [n; 32]).unwrap()
}

/// The ES256 capability key `cap-es`.
pub fn es_key() -> SigningKey {
    let mut scalar = [0u8; 32];
    scalar[0] = 1;
    scalar[31] = 7;
    SigningKey::es256_from_bytes("cap-es", &scalar).unwrap()
}

/// The HMAC secret of [`hs_key`].
pub const HS_SECRET: [u8; 32] = [9u8; 32];

/// The HS256 capability key `cap-hs` (secret [`HS_SECRET`]).
pub fn hs_key() -> SigningKey {
    SigningKey::hs256("cap-hs", &HS_SECRET).unwrap()
}

/// An Ed25519 login-ticket key `tkt-ed1`.
pub fn ticket_key() -> SigningKey {
    SigningKey::ed25519_from_seed("tkt-ed1", [42; 32]).unwrap()
}

// ---- config ------------------------------------------------------------------------------

/// The one config builder: domain `localhost`, http, pods `alpha` (running, with an address),
/// `beta` (running, no address), `sleepy` (stopped); capability keys as given. Tests edit the
/// returned JSON (`cfg["leeway_secs"] = 0.into()`) for their variant.
pub fn config(keys: &[&SigningKey]) -> Value {
    let jwks: Vec<Value> = keys
        .iter()
        .map(|k| serde_json::to_value(k.verifying_jwk()).unwrap())
        .collect();
    json!({
        "issuer": ISS,
        "domain": DOMAIN,
        "public_scheme": "http",
        "auth_url": AUTH_URL,
        "keys": {"keys": jwks},
        "pods": {
            "alpha": {"status": "running", "cluster": "pod_alpha", "address": "127.0.0.1:30001"},
            "beta": {"status": "running", "cluster": "pod_beta"},
            "sleepy": {"status": "stopped", "cluster": "pod_sleepy"}
        },
        "leeway_secs": LEEWAY,
        "max_capability_lifetime_secs": MAX_LIFETIME,
        "token_cache_entries": 1024
    })
}

/// The compiled filter, built (or found) once per process.
pub fn wasm() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| filter_wasm_path().expect("building or finding the podgate filter wasm"))
        .clone()
}

/// A fresh VM (one Envoy worker) at [`NOW`], not configured.
pub fn bare_vm() -> FilterVm {
    let mut vm = FilterVm::new(&wasm()).expect("instantiating the podgate filter");
    vm.set_time_secs(NOW as u64);
    vm
}

/// A fresh VM at [`NOW`] with `cfg` accepted.
pub fn vm_with(cfg: &Value) -> FilterVm {
    let mut vm = bare_vm();
    assert!(
        vm.configure(cfg.to_string().as_bytes()).unwrap(),
        "config refused: {:?}",
        vm.logs()
    );
    vm
}

/// A fresh VM at [`NOW`] configured with the default Ed25519 key `cap-ed1`.
pub fn vm() -> FilterVm {
    vm_with(&config(&[&ed_key(1)]))
}

/// Push a new config (ECDS update); returns whether the filter took it.
pub fn push(vm: &mut FilterVm, cfg: &Value) -> bool {
    let ok = vm.configure(cfg.to_string().as_bytes()).unwrap();
    assert!(!vm.is_dead(), "{:?}", vm.failure());
    ok
}

// ---- tokens ------------------------------------------------------------------------------

/// Claims for `pod`/`port` with the matching `aud`.
pub fn claims(pod: &str, port: u16) -> PodClaims {
    PodClaims {
        iss: ISS.into(),
        sub: "user-1".into(),
        aud: host(pod, port),
        pod: pod.into(),
        port,
        jti: format!("jti-{pod}-{port}"),
        email: Some("u1@example.dev".into()),
    }
}

/// A capability for `pod`/`port`, issued at [`NOW`], valid [`LIFETIME`] seconds.
pub fn cap(key: &SigningKey, pod: &str, port: u16) -> String {
    mint(
        TokenKind::Capability,
        key,
        &claims(pod, port),
        NOW,
        LIFETIME,
    )
    .unwrap()
}

/// A capability with explicit claims and times.
pub fn cap_with(key: &SigningKey, claims: &PodClaims, iat: i64, lifetime: i64) -> String {
    mint(TokenKind::Capability, key, claims, iat, lifetime).unwrap()
}

/// A capability for alpha:8726 signed with `cap-ed1` (valid in [`vm`]).
pub fn alpha_cap() -> String {
    cap(&ed_key(1), "alpha", PORT)
}

pub fn segments(token: &str) -> Vec<&str> {
    token.split('.').collect()
}

/// `token` with its header replaced (signature kept, so only header checks can refuse it first).
pub fn with_header(token: &str, header: &Value) -> String {
    let s = segments(token);
    format!("{}.{}.{}", b64(header.to_string().as_bytes()), s[1], s[2])
}

/// `token` with its claims replaced and the old signature kept.
pub fn with_claims(token: &str, claims: &Value) -> String {
    let s = segments(token);
    format!("{}.{}.{}", s[0], b64(claims.to_string().as_bytes()), s[2])
}

/// `token` with one signature character changed.
pub fn tamper_signature(token: &str) -> String {
    let s = segments(token);
    let sig = s[2];
    let mid = sig.len() / 2;
    let flipped = if &sig[mid..=mid] == "A" { "B" } else { "A" };
    format!(
        "{}.{}.{}{}{}",
        s[0],
        s[1],
        &sig[..mid],
        flipped,
        &sig[mid + 1..]
    )
}

/// The standard capability header for `kid`.
pub fn header_json(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "typ": CAP_TYP, "kid": kid})
}

/// The wire claims of a capability for `pod`/`port` issued at `iat` for `lifetime` seconds.
pub fn claims_json(pod: &str, port: u16, iat: i64, lifetime: i64) -> Value {
    json!({
        "iss": ISS, "sub": "user-1", "aud": host(pod, port), "pod": pod, "port": port,
        "jti": format!("jti-{pod}-{port}"), "email": "u1@example.dev",
        "iat": iat, "exp": iat + lifetime
    })
}

/// A JWS signed with HMAC-SHA256 over arbitrary header and claims JSON.
pub fn hs_sign(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mac = hmac_sha256(secret, input.as_bytes());
    format!("{input}.{}", b64(&mac))
}

/// A token signed with [`hs_key`] over arbitrary claims (valid signature, claims as given).
pub fn hs_token(claims: &Value) -> String {
    hs_sign(&HS_SECRET, &header_json("HS256", "cap-hs"), claims)
}

// ---- requests ----------------------------------------------------------------------------

/// A request as Envoy hands it to the filter (names lowercase, values raw bytes).
#[derive(Clone, Debug)]
pub struct Req {
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What one request did.
#[derive(Debug)]
pub struct Sent {
    pub out: Outcome,
    /// `clear_route_cache` calls during this request.
    pub route_clears: usize,
    pub fuel: u64,
    pub host_calls: BTreeMap<String, u64>,
}

impl Req {
    /// `GET {path}` on `authority`.
    pub fn get(authority: &str, path: &str) -> Self {
        Req {
            headers: vec![
                (b":authority".to_vec(), authority.as_bytes().to_vec()),
                (b":path".to_vec(), path.as_bytes().to_vec()),
                (b":method".to_vec(), b"GET".to_vec()),
                (b":scheme".to_vec(), b"http".to_vec()),
            ],
        }
    }

    /// `GET /` on the pod host of `pod`/`port`.
    pub fn to(pod: &str, port: u16) -> Self {
        Self::get(&host(pod, port), "/")
    }

    /// `GET /` on alpha:8726.
    pub fn alpha() -> Self {
        Self::to("alpha", PORT)
    }

    /// Replace (or add) a header, keeping its position if present.
    pub fn set(mut self, name: &str, value: &str) -> Self {
        self = self.set_raw(name.as_bytes(), value.as_bytes());
        self
    }

    pub fn set_raw(mut self, name: &[u8], value: &[u8]) -> Self {
        match self.headers.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_vec(),
            None => self.headers.push((name.to_vec(), value.to_vec())),
        }
        self
    }

    /// Append a header (repeats allowed).
    pub fn add(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
        self
    }

    pub fn add_raw(mut self, name: &[u8], value: &[u8]) -> Self {
        self.headers.push((name.to_vec(), value.to_vec()));
        self
    }

    pub fn method(self, method: &str) -> Self {
        self.set(":method", method)
    }

    pub fn path(self, path: &str) -> Self {
        self.set(":path", path)
    }

    /// `podgate-token: {token}`.
    pub fn token(self, token: &str) -> Self {
        self.add("podgate-token", token)
    }

    /// `authorization: Bearer {token}`.
    pub fn bearer(self, token: &str) -> Self {
        self.add("authorization", &format!("Bearer {token}"))
    }

    /// `cookie: podgate_cap={token}`.
    pub fn cookie(self, token: &str) -> Self {
        self.add("cookie", &format!("{COOKIE}={token}"))
    }

    /// A browser page load: `sec-fetch-mode: navigate` and `accept: text/html`.
    pub fn navigate(self) -> Self {
        self.set("sec-fetch-mode", "navigate")
            .set("accept", "text/html,application/xhtml+xml")
    }

    /// A WebSocket upgrade.
    pub fn websocket(self) -> Self {
        self.set("upgrade", "websocket")
            .set("connection", "Upgrade")
            .set("sec-websocket-version", "13")
            .set("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    /// Send through `vm`; asserts the VM survived and nothing trapped.
    pub fn send(&self, vm: &mut FilterVm) -> Sent {
        let clears_before = route_clears(vm);
        let out = vm.request(&self.headers).expect("driving the filter");
        assert!(
            !matches!(out, Outcome::Trapped { .. } | Outcome::VmDead),
            "the filter VM died: {out:?}"
        );
        assert!(!vm.is_dead(), "the filter VM died: {:?}", vm.failure());
        let stats = vm.last_stream().expect("stream stats").clone();
        Sent {
            out,
            route_clears: route_clears(vm) - clears_before,
            fuel: stats.fuel,
            host_calls: stats.host_calls,
        }
    }
}

fn route_clears(vm: &FilterVm) -> usize {
    vm.foreign_calls()
        .iter()
        .filter(|n| *n == "clear_route_cache")
        .count()
}

impl Sent {
    pub fn status(&self) -> Option<u32> {
        self.out.status()
    }

    /// Asserts a local reply with `status` (nothing forwarded, route cache untouched, JSON body,
    /// `cache-control: no-store`) and returns the body.
    pub fn denied(&self, status: u32) -> Value {
        let Outcome::LocalReply {
            status: got, body, ..
        } = &self.out
        else {
            panic!("expected a local {status}, got {:?}", self.out);
        };
        assert_eq!(*got, status, "{:?}", self.out);
        assert_eq!(
            self.route_clears, 0,
            "clear_route_cache called on a denied request"
        );
        assert_eq!(
            self.out.header("content-type"),
            Some("application/json"),
            "{:?}",
            self.out
        );
        assert_eq!(self.out.header("cache-control"), Some("no-store"));
        serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.out.body_text()))
    }

    /// The `error` text of a local reply with `status`.
    pub fn error(&self, status: u32) -> String {
        let body = self.denied(status);
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {body}"))
            .to_owned()
    }

    /// Asserts a 401 with `WWW-Authenticate: Bearer realm="podgate"…`, no redirect, and returns
    /// the error text.
    pub fn unauthorized(&self) -> String {
        let error = self.error(401);
        let challenge = self.out.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm=\"podgate\""),
            "{challenge:?}"
        );
        assert_eq!(self.out.header("location"), None);
        error
    }

    /// Asserts a 401 for a token that failed verification with `reason` (the `TokenError`
    /// display text).
    pub fn invalid(&self, reason: &str) {
        let error = self.unauthorized();
        assert_eq!(
            error,
            format!("Invalid capability: {reason}"),
            "{:?}",
            self.out
        );
        assert_eq!(
            self.out.header("www-authenticate"),
            Some("Bearer realm=\"podgate\", error=\"invalid_token\"")
        );
    }

    /// Asserts a 302 to the auth endpoint and returns the `location`.
    pub fn redirect(&self) -> String {
        let body = self.denied(302);
        let location = self
            .out
            .header("location")
            .unwrap_or_else(|| panic!("302 without location: {:?}", self.out))
            .to_owned();
        assert_eq!(body["location"].as_str(), Some(location.as_str()));
        assert_eq!(self.out.header("www-authenticate"), None);
        assert_eq!(self.out.header("referrer-policy"), Some("no-referrer"));
        location
    }

    /// Asserts the request was forwarded (exactly one `clear_route_cache`) and returns the
    /// headers Envoy would send upstream.
    pub fn forwarded(&self) -> &[(String, String)] {
        let Outcome::Continue { headers } = &self.out else {
            panic!("expected the request to be forwarded, got {:?}", self.out);
        };
        assert!(
            self.route_clears <= 1,
            "clear_route_cache at most once per forward"
        );
        // Routed by the cluster header (Envoy picks the route again), or by the pods' route
        // Envoy picked before the filter ran, to the address the filter set.
        let named = |name: &str| headers.iter().any(|(n, _)| n == name);
        if named("x-podgate-cluster") {
            assert_eq!(self.route_clears, 1, "a cluster header without a new route");
        } else {
            assert!(
                named("x-podgate-upstream"),
                "forwarded to no cluster and no address"
            );
        }
        headers
    }

    /// Every forwarded value of `name`.
    pub fn fwd(&self, name: &str) -> Vec<&str> {
        self.forwarded()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single forwarded value of `name` (None when absent; panics on repeats).
    pub fn fwd1(&self, name: &str) -> Option<&str> {
        let values = self.fwd(name);
        assert!(values.len() <= 1, "{name} forwarded {} times", values.len());
        values.first().copied()
    }
}

/// Metric value, 0 when the filter never touched it.
/// A counter's value in Envoy after the next tick (the filter hands its counts over from the
/// tick, once a second).
pub fn metric(vm: &mut FilterVm, name: &str) -> u64 {
    vm.tick().expect("tick");
    vm.metric(name).unwrap_or(0)
}

// ---- encoding and hashing -----------------------------------------------------------------

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// base64url decoding (no padding); panics on bad input (test tokens only).
pub fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("base64url")
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// HMAC-SHA256.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}
