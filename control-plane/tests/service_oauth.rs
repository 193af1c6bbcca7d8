//! Service OAuth credentials against the testkit's token endpoint: `client_credentials` with a
//! client secret and with a `private_key_jwt` assertion (ES256 and RS256), the `jwt-bearer`
//! grant, and a Coze JWT app (its own request shape and Unix-time `expires_in`), also behind
//! TLS with a private CA (`ca_pem`); the endpoint verifies every assertion's signature with the
//! client's public key. A wrong secret, a key the endpoint does not know, an endpoint that is
//! down and one that cannot be reached give errors that say why and quote no secret.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use podgate::service_oauth::{fetch, http_client, parse};
use podgate_testkit::{FakeTokenEndpoint, TokenClient};
use serde_json::json;

const ES256_PEM: &str = include_str!("fixtures/service_oauth_es256.pem");
const ES256_PUB: &str = include_str!("fixtures/service_oauth_es256.pub.pem");
const RS256_PEM: &str = include_str!("fixtures/service_oauth_rs256.pem");
const RS256_PUB: &str = include_str!("fixtures/service_oauth_rs256.pub.pem");
const SECRET: &str = "client-secret-7f3a9c1e";

async fn endpoint() -> FakeTokenEndpoint {
    FakeTokenEndpoint::start(
        vec![
            TokenClient {
                client_id: "with-secret".into(),
                secret: Some(SECRET.into()),
                public_key_pem: None,
            },
            TokenClient {
                client_id: "with-ec-key".into(),
                secret: None,
                public_key_pem: Some(ES256_PUB.into()),
            },
            TokenClient {
                client_id: "with-rsa-key".into(),
                secret: None,
                public_key_pem: Some(RS256_PUB.into()),
            },
        ],
        Duration::from_secs(3),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn every_grant_gets_a_token_the_endpoint_issued() {
    let idp = endpoint().await;
    let client = http_client();
    let cases = [
        (
            json!({"token_url": idp.url(), "grant": "client_credentials", "client_id": "with-secret", "client_secret": SECRET, "scope": "read write"}),
            "client_secret",
        ),
        (
            json!({"token_url": idp.url(), "grant": "client_credentials", "client_id": "with-ec-key", "private_key_pem": ES256_PEM, "key_id": "k1"}),
            "private_key_jwt",
        ),
        (
            json!({"token_url": idp.url(), "grant": "client_credentials", "client_id": "with-rsa-key", "private_key_pem": RS256_PEM}),
            "private_key_jwt",
        ),
        (
            json!({"token_url": idp.url(), "grant": "jwt_bearer", "iss": "with-rsa-key", "sub": "robot@example", "private_key_pem": RS256_PEM}),
            "jwt_bearer",
        ),
    ];
    for (config, how) in cases {
        let config = parse(config).unwrap();
        let token = fetch(&client, &config).await.unwrap();
        assert!(idp.valid_at(&token.value, SystemTime::now()), "{how}");
        let issued = idp.issued().pop().unwrap();
        assert_eq!(issued.how, how);
        // The control plane counts the life from before it asked: never past the real expiry.
        let life = token.expires_ms - token.obtained_ms;
        assert!((2_900..=3_000).contains(&life), "{life}");
    }
    assert_eq!(idp.issued()[0].scope.as_deref(), Some("read write"));
    assert!(idp.refusals().is_empty(), "{:?}", idp.refusals());
}

#[tokio::test]
async fn refusals_and_outages_are_errors_that_quote_no_secret() {
    let idp = endpoint().await;
    let client = http_client();
    let wrong_secret = parse(json!({"token_url": idp.url(), "grant": "client_credentials", "client_id": "with-secret", "client_secret": "wrong-secret-value"})).unwrap();
    let e = fetch(&client, &wrong_secret).await.unwrap_err();
    assert!(e.contains("invalid_client"), "{e}");
    assert!(!e.contains("wrong-secret-value"), "{e}");
    // Signed with the RSA key, claimed as the client whose key is EC: the signature fails.
    let wrong_key = parse(json!({"token_url": idp.url(), "grant": "client_credentials", "client_id": "with-ec-key", "private_key_pem": RS256_PEM})).unwrap();
    let e = fetch(&client, &wrong_key).await.unwrap_err();
    assert!(e.contains("invalid_client"), "{e}");
    assert!(idp.issued().is_empty());
    idp.set_up(false);
    let good = parse(json!({"token_url": idp.url(), "grant": "client_credentials", "client_id": "with-secret", "client_secret": SECRET})).unwrap();
    let e = fetch(&client, &good).await.unwrap_err();
    assert!(e.contains("503") && !e.contains(SECRET), "{e}");
    idp.set_up(true);
    fetch(&client, &good).await.unwrap();
}

/// Coze's JWT OAuth apps (a product document's setup): the assertion signed with the app's
/// RSA key (`kid` its key id, `iss` the app id, `aud` `api.coze.com`, plus `session_name`) goes
/// in `Authorization: Bearer`, the body is JSON with `duration_seconds`, and the answer's
/// `expires_in` is a Unix time, read as such: the token lives what is left until then.
#[tokio::test]
async fn a_coze_jwt_app_gets_a_token_with_its_expiry_read_as_a_unix_time() {
    let idp = endpoint().await;
    let client = http_client();
    let coze = json!({
        "token_url": idp.coze_url(),
        "grant": "jwt_bearer",
        "iss": "with-rsa-key",
        "aud": podgate_testkit::COZE_AUDIENCE,
        "key_id": "coze-key-1",
        "private_key_pem": RS256_PEM,
        "request_body": "json",
        "assertion_in": "authorization_header",
        "token_params": {"duration_seconds": 600},
        "assertion_claims": {"session_name": "my-app-session"},
    });
    let token = fetch(&client, &parse(coze.clone()).unwrap()).await.unwrap();
    assert!(idp.valid_at(&token.value, SystemTime::now()));
    let issued = idp.issued().pop().unwrap();
    assert_eq!(issued.how, "coze_jwt");
    assert_eq!(issued.requested_seconds, Some(600));
    assert_eq!(issued.claims["session_name"], "my-app-session");
    assert_eq!(issued.claims["aud"], podgate_testkit::COZE_AUDIENCE);
    // The endpoint's tokens live 3 s here (less than the 600 asked for), and its expires_in is
    // whole Unix seconds: the life held is at most that, never 56 years.
    let life = token.expires_ms - token.obtained_ms;
    assert!((1_000..=3_000).contains(&life), "{life}");
    // The same app with RFC 7523's form body is refused by such an endpoint, with its reason.
    let mut form = coze;
    form["request_body"] = json!("form");
    let e = fetch(&client, &parse(form).unwrap()).await.unwrap_err();
    assert!(e.contains("not a JSON object"), "{e}");
}

#[tokio::test]
async fn an_endpoint_that_cannot_be_reached_says_why() {
    // A port nothing listens on: the cause (the refused connection) is in the error.
    let port = podgate_testkit::free_port().unwrap();
    let config = parse(json!({"token_url": format!("http://127.0.0.1:{port}/token"), "grant": "client_credentials", "client_id": "c", "client_secret": SECRET})).unwrap();
    let e = fetch(&http_client(), &config).await.unwrap_err();
    assert!(e.contains("cannot be reached"), "{e}");
    assert!(e.to_lowercase().contains("refused"), "{e}");
    assert!(!e.contains(SECRET), "{e}");
}

/// A token endpoint behind TLS with a private CA: refused with the reason while only the public
/// roots are trusted, served once `ca_pem` names that CA.
#[tokio::test]
async fn a_token_endpoint_on_a_private_ca_is_reached_with_its_ca_pem() {
    let idp = endpoint().await;
    let front = podgate_testkit::TlsFront::start(idp.addr()).await.unwrap();
    let https = format!("https://localhost:{}/token", front.addr().port());
    let mut config = json!({"token_url": https, "grant": "client_credentials", "client_id": "with-secret", "client_secret": SECRET});
    let e = fetch(&http_client(), &parse(config.clone()).unwrap())
        .await
        .unwrap_err();
    assert!(
        e.contains("cannot be reached") && e.contains("certificate"),
        "{e}"
    );
    config["ca_pem"] = json!(front.ca_pem());
    let token = fetch(&http_client(), &parse(config.clone()).unwrap())
        .await
        .unwrap();
    assert!(idp.valid_at(&token.value, SystemTime::now()));
    // Only for https, and only certificates.
    let mut plain = config.clone();
    plain["token_url"] = json!(idp.url());
    assert!(parse(plain).unwrap_err().contains("only for an https"));
    config["ca_pem"] = json!("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----");
    assert!(parse(config).unwrap_err().contains("`ca_pem`"));
}
