//! A service's OAuth configuration: what admins send, checked, and how it is stored (sealed
//! under the key-encryption key, bound to the service's name and the kind `service-oauth`).

use std::collections::BTreeMap;

use jwt_compact::alg::{RsaPrivateKey, RsaPublicKey, StrongKey};
use podgate_protocol::config::{credential_header_allowed, header_reaches_upstream};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::key_encryption::{KekError, KeyEncryption, RowBinding, Sealed};
use crate::store::StoredOAuth;

/// The `kind` a sealed OAuth configuration is bound to.
const SEALED_KIND: &str = "service-oauth";
/// The `alg` of its binding (the whole configuration is one sealed value).
const SEALED_ALG: &str = "json";

/// The grant a service's tokens are obtained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    ClientCredentials,
    JwtBearer,
}

/// How the token request's parameters are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestBody {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    #[default]
    Form,
    /// A JSON object (Coze's token endpoint).
    Json,
}

/// Where a `jwt_bearer` assertion goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssertionIn {
    /// The `assertion` parameter (RFC 7523).
    #[default]
    Body,
    /// `Authorization: Bearer <assertion>` (Coze's JWT OAuth apps).
    AuthorizationHeader,
}

/// Parameters the token request always has: `token_params` may not set them.
const RESERVED_PARAMS: [&str; 7] = [
    "grant_type",
    "assertion",
    "scope",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
];
/// Claims every assertion has: `assertion_claims` may not set them.
const RESERVED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "iat", "exp", "nbf", "jti"];
/// At most this many `token_params` and `assertion_claims` each.
const MAX_EXTRAS: usize = 16;
/// The JSON of `assertion_claims` is at most this long.
const MAX_CLAIMS_JSON: usize = 4096;

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_header() -> String {
    "authorization".to_owned()
}

fn default_margin() -> u64 {
    300
}

/// A service's OAuth configuration, secrets included; its `Debug` names no secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    pub token_url: String,
    pub grant: Grant,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
    /// The `kid` the assertions name, if the provider wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `jwt_bearer`: the assertion's `iss` (default: `client_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// `jwt_bearer`: the assertion's `sub` (default: `iss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The assertions' `aud` (default: `token_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default = "default_header")]
    pub header: String,
    #[serde(default = "default_margin")]
    pub renew_margin_secs: u64,
    /// How the token request is written: `form` (default) or `json`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub request_body: RequestBody,
    /// `jwt_bearer`: where the assertion goes: `body` (default) or `authorization_header`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub assertion_in: AssertionIn,
    /// More parameters of the token request (strings, numbers or booleans), such as Coze's
    /// `duration_seconds`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub token_params: BTreeMap<String, Value>,
    /// More claims of the assertions, such as Coze's `session_name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub assertion_claims: BTreeMap<String, Value>,
    /// PEM of the CA bundle that verifies an https `token_url`, in place of the public roots
    /// (an identity provider on a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Whether a plain-http `token_url` that is not a loopback address is accepted (the
    /// secret or the assertion crosses the network in the clear: a test stack's choice).
    #[serde(default, skip_serializing_if = "is_default")]
    pub allow_insecure_http: bool,
}

impl std::fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("token_url", &self.token_url)
            .field("grant", &self.grant)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// How the client proves itself: what admins see (never the secret).
impl OAuthConfig {
    pub fn client_auth(&self) -> &'static str {
        match (self.grant, &self.client_secret) {
            (Grant::JwtBearer, _) => "jwt_assertion",
            (Grant::ClientCredentials, Some(_)) => "client_secret_basic",
            (Grant::ClientCredentials, None) => "private_key_jwt",
        }
    }
}

/// The private key of the assertions; never printed.
pub(super) enum SigningKey {
    Rs256(Box<RsaPrivateKey>),
    Es256(Box<p256::ecdsa::SigningKey>),
}

/// Reads an RSA (at least 2048 bits) or P-256 private key in PEM.
pub(super) fn signing_key(pem: &str) -> Result<SigningKey, String> {
    use p256::pkcs8::DecodePrivateKey as _;
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .ok()
        .or_else(|| rsa::RsaPrivateKey::from_pkcs1_pem(pem).ok());
    if let Some(key) = rsa {
        if StrongKey::try_from(RsaPublicKey::from(&key)).is_err() {
            return Err("`private_key_pem` holds an RSA key shorter than 2048 bits".into());
        }
        return Ok(SigningKey::Rs256(Box::new(key)));
    }
    if let Ok(key) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
        return Ok(SigningKey::Es256(Box::new(key)));
    }
    if let Ok(key) = p256::SecretKey::from_sec1_pem(pem) {
        return Ok(SigningKey::Es256(Box::new(key.into())));
    }
    Err(
        "`private_key_pem` is not an RSA or EC P-256 private key in PEM (PKCS#8, PKCS#1 or SEC1)"
            .into(),
    )
}

/// Reads and checks `credential.oauth` as an admin sends it, without ever quoting a value.
pub fn parse(v: Value) -> Result<OAuthConfig, String> {
    const SHAPE: &str = "`credential.oauth` must be {\"token_url\", \"grant\": \"client_credentials\" | \"jwt_bearer\", \"client_id\"?, \"client_secret\"? | \"private_key_pem\"?, \"key_id\"?, \"scope\"?, \"iss\"?, \"sub\"?, \"aud\"?, \"header\"?, \"renew_margin_secs\"?, \"request_body\"?: \"form\" | \"json\", \"assertion_in\"?: \"body\" | \"authorization_header\", \"token_params\"?: {...}, \"assertion_claims\"?: {...}, \"ca_pem\"?, \"allow_insecure_http\"?} (strings, renew_margin_secs a number)";
    let config: OAuthConfig = serde_json::from_value(v).map_err(|e| {
        // serde names a field in these and quotes no value: said first. An unknown variant is
        // a value (what was sent for `grant`, say), so only the choices are said; its other
        // messages (a wrong type) may quote the value sent, a secret perhaps: only the shape.
        let said = e.to_string();
        let said = said.split(" at line ").next().unwrap_or_default();
        let names_only = ["unknown field", "missing field", "duplicate field"]
            .iter()
            .any(|start| said.starts_with(start));
        if names_only {
            format!("`credential.oauth`: {said}; {SHAPE}")
        } else if let Some((_, choices)) = said
            .strip_prefix("unknown variant ")
            .and_then(|rest| rest.split_once(", expected "))
        {
            format!(
                "`credential.oauth`: a value is not one of its choices (expected {choices}); {SHAPE}"
            )
        } else {
            SHAPE.to_owned()
        }
    })?;
    check(&config)?;
    Ok(config)
}

/// Whether a configuration can be used.
pub fn check(c: &OAuthConfig) -> Result<(), String> {
    let url = url::Url::parse(&c.token_url).map_err(|e| format!("`token_url`: not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("`token_url` must be an http(s) URL with a host".into());
    }
    if url.scheme() == "http" && !c.allow_insecure_http && !crate::config::idp::is_loopback(&url) {
        return Err("`token_url` is plain http: the client's secret or assertion would cross the network in the clear; use https (http is accepted for a loopback address, or with \"allow_insecure_http\": true)".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("`token_url` must not carry user information".into());
    }
    if let Some(pem) = &c.ca_pem {
        if url.scheme() != "https" {
            return Err("`ca_pem` is only for an https `token_url`".into());
        }
        crate::services::check_ca_pem(pem).map_err(|e| format!("`ca_pem`: {e}"))?;
    }
    if !credential_header_allowed(&c.header) {
        return Err(format!(
            "the header name {:?} cannot carry a credential: use a lowercase header name such as authorization",
            c.header
        ));
    }
    if !header_reaches_upstream(&c.header) {
        return Err(format!(
            "Envoy overwrites or removes {:?} before a request reaches the upstream, so the token would never arrive; use the header the upstream reads it from, such as authorization",
            c.header
        ));
    }
    if c.renew_margin_secs > 86_400 {
        return Err("`renew_margin_secs` must be at most 86400".into());
    }
    match c.grant {
        Grant::ClientCredentials => {
            if c.client_id.as_deref().is_none_or(str::is_empty) {
                return Err("`client_credentials` needs `client_id`".into());
            }
            match (&c.client_secret, &c.private_key_pem) {
                (Some(s), None) if !s.is_empty() => {}
                (None, Some(pem)) => {
                    signing_key(pem)?;
                }
                _ => {
                    return Err(
                        "`client_credentials` needs exactly one of `client_secret` and `private_key_pem`"
                            .into(),
                    )
                }
            }
        }
        Grant::JwtBearer => {
            if c.client_secret.is_some() {
                return Err("`jwt_bearer` takes `private_key_pem`, not `client_secret`".into());
            }
            let Some(pem) = &c.private_key_pem else {
                return Err("`jwt_bearer` needs `private_key_pem`".into());
            };
            signing_key(pem)?;
            if c.client_id.is_none() && c.iss.is_none() {
                return Err("`jwt_bearer` needs `iss` (or `client_id`)".into());
            }
        }
    }
    check_extras(c)
}

/// `token_params`, `assertion_claims` and `assertion_in` against the grant.
fn check_extras(c: &OAuthConfig) -> Result<(), String> {
    let signs = c.grant == Grant::JwtBearer || c.private_key_pem.is_some();
    if c.assertion_in == AssertionIn::AuthorizationHeader && c.grant != Grant::JwtBearer {
        return Err("`assertion_in: authorization_header` is for the `jwt_bearer` grant".into());
    }
    if c.token_params.len() > MAX_EXTRAS || c.assertion_claims.len() > MAX_EXTRAS {
        return Err(format!(
            "`token_params` and `assertion_claims` take at most {MAX_EXTRAS} entries each"
        ));
    }
    for (name, value) in &c.token_params {
        if name.is_empty() || name.len() > 64 {
            return Err("a `token_params` name must be 1 to 64 characters".into());
        }
        if RESERVED_PARAMS.contains(&name.as_str()) {
            return Err(format!(
                "`token_params` may not set {name:?}: podgate writes it from the grant and the other fields"
            ));
        }
        if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            return Err(format!(
                "`token_params.{name}` must be a string, a number or a boolean"
            ));
        }
    }
    if !c.assertion_claims.is_empty() && !signs {
        return Err(
            "`assertion_claims` needs an assertion: the `jwt_bearer` grant, or `private_key_pem`"
                .into(),
        );
    }
    for name in c.assertion_claims.keys() {
        if name.is_empty() || RESERVED_CLAIMS.contains(&name.as_str()) {
            return Err(format!(
                "`assertion_claims` may not set {name:?}: set `iss`, `sub` or `aud` instead, podgate writes the rest"
            ));
        }
    }
    let claims_len = serde_json::to_string(&c.assertion_claims).map_or(usize::MAX, |s| s.len());
    if claims_len > MAX_CLAIMS_JSON {
        return Err(format!(
            "`assertion_claims` must be at most {MAX_CLAIMS_JSON} bytes of JSON"
        ));
    }
    Ok(())
}

fn binding(name: &str) -> RowBinding<'_> {
    RowBinding {
        kid: name,
        kind: SEALED_KIND,
        alg: SEALED_ALG,
    }
}

/// Seals a service's OAuth configuration under the current key-encryption key (plaintext
/// without one, which only dev mode allows).
pub fn seal(kek: &KeyEncryption, name: &str, c: &OAuthConfig) -> Result<StoredOAuth, KekError> {
    let json = serde_json::to_string(c).map_err(|_| KekError::Tampered {
        kek_id: String::new(),
    })?;
    Ok(match kek.seal(binding(name), json.as_bytes())? {
        Some(sealed) => StoredOAuth {
            kek_id: Some(sealed.kek_id),
            config: sealed.ciphertext,
        },
        None => StoredOAuth {
            kek_id: None,
            config: json,
        },
    })
}

/// Why a stored OAuth configuration does not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Its seal does not open here: a key-encryption key this control plane does not have, or
    /// a value sealed for another service.
    Seal(String),
    /// It opens, but what is inside is not a configuration.
    Content(&'static str),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Seal(e) => f.write_str(e),
            OpenError::Content(e) => f.write_str(e),
        }
    }
}

impl From<OpenError> for String {
    fn from(e: OpenError) -> String {
        e.to_string()
    }
}

/// Opens a service's stored OAuth configuration.
pub fn open(
    kek: &KeyEncryption,
    name: &str,
    stored: &StoredOAuth,
) -> Result<OAuthConfig, OpenError> {
    let json = match &stored.kek_id {
        None => stored.config.clone(),
        Some(kek_id) => {
            let sealed = Sealed {
                kek_id: kek_id.clone(),
                ciphertext: stored.config.clone(),
            };
            let plain = kek
                .open(binding(name), &sealed)
                .map_err(|e| OpenError::Seal(e.to_string()))?;
            String::from_utf8(plain.to_vec()).map_err(|_| OpenError::Content("not UTF-8"))?
        }
    };
    serde_json::from_str(&json)
        .map_err(|_| OpenError::Content("the stored configuration is not readable"))
}

impl OAuthConfig {
    /// A placeholder recorded with an error when a stored configuration cannot be opened.
    pub(super) fn unusable() -> OAuthConfig {
        OAuthConfig {
            token_url: String::new(),
            grant: Grant::ClientCredentials,
            client_id: None,
            client_secret: None,
            private_key_pem: None,
            key_id: None,
            scope: None,
            iss: None,
            sub: None,
            aud: None,
            header: default_header(),
            renew_margin_secs: default_margin(),
            request_body: RequestBody::Form,
            assertion_in: AssertionIn::Body,
            token_params: BTreeMap::new(),
            assertion_claims: BTreeMap::new(),
            ca_pem: None,
            allow_insecure_http: false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configurations_are_checked_without_quoting_secrets() {
        let base = json!({"token_url": "https://idp.example/token", "grant": "client_credentials", "client_id": "c"});
        let mut ok = base.clone();
        ok["client_secret"] = json!("s3cret-value");
        let c = parse(ok).unwrap();
        assert_eq!(
            (c.header.as_str(), c.renew_margin_secs),
            ("authorization", 300)
        );
        assert_eq!(c.client_auth(), "client_secret_basic");
        assert!(!format!("{c:?}").contains("s3cret"));
        // Neither or both of the secret and the key; a bad key; unknown fields; a bad header.
        assert!(parse(base.clone()).is_err());
        let mut both = base.clone();
        both["client_secret"] = json!("s");
        both["private_key_pem"] = json!("x");
        assert!(parse(both).is_err());
        let mut bad_key = base.clone();
        bad_key["private_key_pem"] =
            json!("-----BEGIN PRIVATE KEY-----\ns3cret\n-----END PRIVATE KEY-----");
        let e = parse(bad_key).unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        let mut extra = base.clone();
        extra["client_secret"] = json!("s3cret-value");
        extra["nope"] = json!(1);
        let e = parse(extra).unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        // What serde says names the field or the variant, never a value: said first.
        assert!(
            e.starts_with("`credential.oauth`: unknown field `nope`"),
            "{e}"
        );
        let mut grant = base.clone();
        grant["grant"] = json!("s3cret-value");
        let e = parse(grant).unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("expected `client_credentials`"), "{e}");
        let e = parse(json!({"grant": "client_credentials"})).unwrap_err();
        assert!(e.contains("missing field `token_url`"), "{e}");
        // A value of the wrong type may be a secret: only the shape is said.
        let mut typed = base.clone();
        typed["client_secret"] = json!(["s3cret-value"]);
        let e = parse(typed).unwrap_err();
        assert!(
            !e.contains("s3cret") && e.starts_with("`credential.oauth` must be"),
            "{e}"
        );
        let mut header = base.clone();
        header["client_secret"] = json!("s");
        header["header"] = json!("x-podgate-user");
        assert!(parse(header.clone()).is_err());
        // A header Envoy overwrites or removes on the way to the upstream.
        for gone in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-real-ip",
            "forwarded",
        ] {
            header["header"] = json!(gone);
            let e = parse(header.clone()).unwrap_err();
            assert!(e.contains("never arrive"), "{gone}: {e}");
        }
        // Plain http: only for a loopback address, or when asked for.
        let mut plain = base;
        plain["client_secret"] = json!("s3cret-value");
        plain["token_url"] = json!("http://idp.example/token");
        let e = parse(plain.clone()).unwrap_err();
        assert!(e.contains("plain http") && !e.contains("s3cret"), "{e}");
        plain["allow_insecure_http"] = json!(true);
        assert!(parse(plain.clone()).unwrap().allow_insecure_http);
        plain["allow_insecure_http"] = json!(false);
        for local in [
            "http://127.0.0.1:9/token",
            "http://[::1]:9/token",
            "http://localhost/t",
        ] {
            plain["token_url"] = json!(local);
            assert!(parse(plain.clone()).is_ok(), "{local}");
        }
        assert!(parse(
            json!({"token_url": "https://idp.example/token", "grant": "jwt_bearer", "iss": "i"})
        )
        .is_err());
    }

    /// A P-256 key made for these tests only.
    const TEST_P256_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg60ZIdjCYPnfKTabQ
RVxDfYPLgPj3jqamYallgC8X4CuhRANCAASit8rBAVfC3CEC2ZI5XwJeVLz1kX9r
EjOjyC4vqDpuLWqardtuuclj2gz9Zw3ou1u88qFlp3ipPLXToU5sHHcL
-----END PRIVATE KEY-----";

    #[test]
    fn request_body_assertion_place_params_and_claims_are_checked() {
        let coze = json!({
            "token_url": "https://api.coze.com/api/permission/oauth2/token",
            "grant": "jwt_bearer",
            "iss": "1234567890",
            "aud": "api.coze.com",
            "key_id": "kid-1",
            "private_key_pem": TEST_P256_PEM,
            "request_body": "json",
            "assertion_in": "authorization_header",
            "token_params": {"duration_seconds": 86399},
            "assertion_claims": {"session_name": "my-app-session"},
        });
        let c = parse(coze.clone()).unwrap();
        assert_eq!(
            (c.request_body, c.assertion_in),
            (RequestBody::Json, AssertionIn::AuthorizationHeader)
        );
        // Stored and opened again as it was; an older configuration reads as the defaults.
        let back: OAuthConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let plain = parse(json!({"token_url": "https://idp.example/token", "grant": "client_credentials", "client_id": "c", "client_secret": "s"})).unwrap();
        let json = serde_json::to_string(&plain).unwrap();
        assert!(
            !json.contains("request_body") && !json.contains("token_params"),
            "{json}"
        );
        for (field, value, says) in [
            ("token_params", json!({"grant_type": "x"}), "grant_type"),
            ("token_params", json!({"assertion": "x"}), "assertion"),
            (
                "token_params",
                json!({"nested": {"a": 1}}),
                "string, a number or a boolean",
            ),
            ("assertion_claims", json!({"exp": 1}), "\"exp\""),
            ("assertion_claims", json!({"aud": "x"}), "\"aud\""),
            ("request_body", json!("xml"), "request_body"),
        ] {
            let mut bad = coze.clone();
            bad[field] = value;
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{field}: {e}");
        }
        // The header place and claims need an assertion.
        let secret = json!({"token_url": "https://idp.example/token", "grant": "client_credentials", "client_id": "c", "client_secret": "s", "assertion_in": "authorization_header"});
        assert!(parse(secret).unwrap_err().contains("jwt_bearer"));
        let secret = json!({"token_url": "https://idp.example/token", "grant": "client_credentials", "client_id": "c", "client_secret": "s", "assertion_claims": {"a": 1}});
        assert!(parse(secret).unwrap_err().contains("needs an assertion"));
    }

    #[test]
    fn a_sealed_configuration_opens_only_for_its_service() {
        use crate::key_encryption::KeyEncryptionKey;
        let kek = KeyEncryption::new(Some(KeyEncryptionKey::from_bytes([9; 32], "t")), vec![]);
        let c = parse(json!({"token_url": "https://idp.example/token", "grant": "client_credentials", "client_id": "c", "client_secret": "s3cret-value"})).unwrap();
        let stored = seal(&kek, "api", &c).unwrap();
        assert!(stored.kek_id.is_some());
        assert!(!stored.config.contains("s3cret"));
        assert_eq!(open(&kek, "api", &stored).unwrap(), c);
        assert!(open(&kek, "other", &stored).is_err());
    }
}
