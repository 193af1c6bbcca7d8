//! The capability every configuration checks: the same keys, claims and cookie for podgate and
//! for Envoy's jwt_authn.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use podgate_protocol::token::{mint, KeySet, PodClaims, SigningKey, TokenKind};
use serde_json::json;

pub const ISSUER: &str = "http://127.0.0.1:8080";
pub const DOMAIN: &str = "localhost";
pub const BENCH_POD: &str = "bench";
pub const BENCH_PORT: u16 = 8726;
/// Tokens live an hour: longer than any run, within the filter's default maximum.
const LIFETIME_SECS: i64 = 3600;

/// The public host of `pod` on the bench port (the token's `aud`, the request's `Host`).
pub fn pod_host(pod: &str) -> String {
    format!("localhost-{BENCH_PORT}-pod-{pod}.{DOMAIN}")
}

/// The two signing algorithms benchmarked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Alg {
    EdDSA,
    ES256,
}

impl Alg {
    pub const ALL: [Alg; 2] = [Alg::EdDSA, Alg::ES256];

    pub fn name(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
        }
    }
}

/// The capability keys (fixed bench-only material, so runs are comparable).
pub struct Keys {
    pub ed: SigningKey,
    pub es: SigningKey,
    now: i64,
}

impl Keys {
    pub fn new() -> anyhow::Result<Keys> {
        let ed = SigningKey::ed25519_from_seed("cap-bench-ed", [42; 32])?;
        let mut scalar = [7u8; 32];
        scalar[0] = 1;
        let es = SigningKey::es256_from_bytes("cap-bench-es", &scalar)?;
        Ok(Keys {
            ed,
            es,
            now: crate::unix_now(),
        })
    }

    pub fn key(&self, alg: Alg) -> &SigningKey {
        match alg {
            Alg::EdDSA => &self.ed,
            Alg::ES256 => &self.es,
        }
    }

    /// Both public keys as a JWKS (what podgate's config and jwt_authn's `local_jwks` get).
    pub fn jwks(&self) -> anyhow::Result<KeySet> {
        Ok(KeySet {
            keys: vec![
                self.ed.public_jwk().context("Ed25519 public key")?,
                self.es.public_jwk().context("P-256 public key")?,
            ],
        })
    }

    /// A capability for `pod` on the bench port; `n` makes its `jti` unique.
    pub fn capability(&self, alg: Alg, pod: &str, n: u64) -> anyhow::Result<String> {
        let claims = PodClaims {
            iss: ISSUER.to_owned(),
            sub: "u-bench".to_owned(),
            aud: pod_host(pod),
            pod: pod.to_owned(),
            port: BENCH_PORT,
            jti: jti(alg, n),
            email: Some("bench@example.dev".to_owned()),
        };
        Ok(mint(
            TokenKind::Capability,
            self.key(alg),
            &claims,
            self.now,
            LIFETIME_SECS,
        )?)
    }

    /// `count` distinct capabilities for the bench pod, minted on every available CPU.
    pub fn many(&self, alg: Alg, count: u64) -> anyhow::Result<Vec<String>> {
        let threads = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
            .max(1) as u64;
        let per = count.div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        (t * per..((t + 1) * per).min(count))
                            .map(|n| self.capability(alg, BENCH_POD, 1_000_000 + n))
                            .collect::<anyhow::Result<Vec<String>>>()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(count as usize);
            for h in handles {
                let part = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("minting thread panicked"))??;
                all.extend(part);
            }
            Ok(all)
        })
    }
}

/// One pod in the filter's directory.
#[derive(Debug, Clone)]
pub struct DirectoryPod {
    pub slug: String,
    pub cluster: String,
    pub address: Option<SocketAddr>,
}

/// The id of [`Keys::capability`]`(alg, _, n)`.
pub fn jti(alg: Alg, n: u64) -> String {
    format!("bench-{}-{n}", alg.name())
}

/// The podgate filter configuration (protocol `FilterConfig` as JSON).
pub fn filter_config_json(
    keys: &KeySet,
    pods: &[DirectoryPod],
    token_cache_entries: Option<usize>,
) -> anyhow::Result<String> {
    let mut directory = BTreeMap::new();
    for pod in pods {
        let mut entry = json!({"status": "running", "cluster": pod.cluster});
        if let Some(addr) = pod.address {
            entry["address"] = json!(addr.to_string());
        }
        directory.insert(pod.slug.clone(), entry);
    }
    let mut config = json!({
        "issuer": ISSUER,
        "domain": DOMAIN,
        "auth_url": format!("{ISSUER}/api/proxy-auth"),
        "keys": keys,
        "pods": directory,
    });
    if let Some(entries) = token_cache_entries {
        config["token_cache_entries"] = json!(entries);
    }
    Ok(serde_json::to_string(&config)?)
}

/// `json` (a filter configuration) with the identity assertion on: a fixed Ed25519 assertion
/// key, 60 s assertions.
pub fn with_assertion(json: &str) -> anyhow::Result<String> {
    let mut config: serde_json::Value = serde_json::from_str(json)?;
    let key = SigningKey::ed25519_from_seed("ast-bench", [0x42; 32])
        .map_err(|e| anyhow::anyhow!("assertion key: {e}"))?;
    config["assertion"] = json!({"key": key.to_private_jwk(), "lifetime_secs": 60});
    Ok(serde_json::to_string(&config)?)
}

/// Fails here, not in Envoy, if the filter would refuse `json`.
pub fn check_filter_config(json: &str) -> anyhow::Result<()> {
    podgate_protocol::config::FilterConfig::compile_json(json.as_bytes())
        .map(drop)
        .map_err(|e| anyhow::anyhow!("bench filter config refused: {e}"))
}
