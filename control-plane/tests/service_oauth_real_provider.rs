//! Service OAuth credentials against a real, certified OAuth provider (npm `oidc-provider`,
//! `tests/oidc-provider/provider.mjs`): `client_credentials` with a `private_key_jwt` client
//! assertion, ES256 and RS256, each client registered with its public key only; a client
//! assertion signed with a key the provider does not know is refused.
//!
//! Needs Node.js and `bash scripts/oidc-provider-deps.sh`; skips loudly without them, fails under
//! `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::oidc_provider::OidcProvider;
use podgate::service_oauth::{fetch, http_client, parse};
use serde_json::{json, Value};

const ES256_PEM: &str = include_str!("fixtures/service_oauth_es256.pem");
const ES256_JWK: &str = include_str!("fixtures/service_oauth_es256.pub.jwk.json");
const RS256_PEM: &str = include_str!("fixtures/service_oauth_rs256.pem");
const RS256_JWK: &str = include_str!("fixtures/service_oauth_rs256.pub.jwk.json");

fn client(id: &str, jwk: &str, alg: &str) -> Value {
    let key: Value = serde_json::from_str(jwk).unwrap();
    json!({
        "client_id": id,
        "grant_types": ["client_credentials"],
        "response_types": [],
        "redirect_uris": [],
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": alg,
        "jwks": {"keys": [key]},
    })
}

#[tokio::test]
async fn private_key_jwt_client_credentials_from_a_real_provider() {
    let Some(op) = OidcProvider::start(json!({
        "clients": [client("svc-ec", ES256_JWK, "ES256"), client("svc-rsa", RS256_JWK, "RS256")],
    }))
    .await
    else {
        return;
    };
    let token_url = format!("{}/token", op.issuer);
    let http = http_client();
    for (id, pem) in [("svc-ec", ES256_PEM), ("svc-rsa", RS256_PEM)] {
        let config = parse(json!({
            "token_url": token_url,
            "grant": "client_credentials",
            "client_id": id,
            "private_key_pem": pem,
        }))
        .unwrap();
        let token = fetch(&http, &config)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(!token.value.is_empty());
        // The provider's client_credentials tokens live ten minutes.
        let life = token.expires_ms - token.obtained_ms;
        assert!((590_000..=600_000).contains(&life), "{life}");
    }
    // Signed with the RSA key, claimed as the EC client: refused.
    let wrong = parse(json!({
        "token_url": token_url,
        "grant": "client_credentials",
        "client_id": "svc-ec",
        "private_key_pem": RS256_PEM,
    }))
    .unwrap();
    let e = fetch(&http, &wrong).await.unwrap_err();
    assert!(e.contains("invalid_client"), "{e}");
}
