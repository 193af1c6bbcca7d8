//! Obtaining a token from a service's token endpoint: the client assertion or assertion grant,
//! the token request, and the answer read into a [`Token`].

use std::collections::BTreeMap;
use std::time::Duration;

use jwt_compact::alg::{Es256, Rsa};
use jwt_compact::{AlgorithmExt, Claims, Header};
use podgate_protocol::config::credential_value_allowed;
use serde_json::{json, Map, Value};

use super::config::{signing_key, AssertionIn, Grant, OAuthConfig, RequestBody, SigningKey};
use crate::error_text::with_causes;
use crate::store::now_unix;

/// The RFC 7523 client assertion type.
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The RFC 7523 assertion grant type.
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// A token endpoint's answer without `expires_in` is taken to last this long.
const DEFAULT_TOKEN_LIFETIME_MS: i64 = 3_600_000;
/// A token is not pushed for use in its last this many milliseconds (transit and clock skew).
pub(super) const EXPIRY_SAFETY_MS: i64 = 500;
/// An `expires_in` of at least this many seconds is a Unix time, not a lifetime: it is
/// 2001-09-09 as a date and 31 years as a lifetime. Coze's token endpoint answers that way.
const ABSOLUTE_EXPIRES_IN: f64 = 1_000_000_000.0;
/// From this on, an absolute `expires_in` is in milliseconds (as seconds it would be the year
/// 5138; as milliseconds it is 1973).
const ABSOLUTE_EXPIRES_IN_MS: f64 = 100_000_000_000.0;
/// A token is held at most this long, whatever its endpoint says (it is then renewed at half
/// of that): an answer that is read wrong can never keep a token for years.
const MAX_TOKEN_LIFETIME_MS: i64 = 400 * 86_400_000;
/// How long a token endpoint may take to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Now, in Unix milliseconds.
pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A token obtained from a service's token endpoint; its `Debug` leaves the value out.
#[derive(Clone)]
pub struct Token {
    pub value: String,
    /// When it was asked for (Unix milliseconds): its life is counted from there.
    pub obtained_ms: i64,
    pub expires_ms: i64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// When to renew it: `margin` before its expiry, and never later than half its life; never
    /// before a quarter of its life either, so that a margin close to the lifetime does not
    /// renew it over and over.
    pub fn renew_at_ms(&self, margin_secs: u64) -> i64 {
        let margin = i64::try_from(margin_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let life = self.expires_ms - self.obtained_ms;
        let by_margin = self.expires_ms.saturating_sub(margin);
        by_margin
            .min(self.obtained_ms + life / 2)
            .max(self.obtained_ms + life / 4)
    }

    /// Whether it may be pushed for use at `now_ms`.
    pub fn usable(&self, now_ms: i64) -> bool {
        now_ms + EXPIRY_SAFETY_MS < self.expires_ms
    }
}

fn sign(key: &SigningKey, kid: Option<&str>, claims: Map<String, Value>) -> Result<String, String> {
    let claims = Claims::new(claims);
    let mut header = Header::empty().with_token_type("JWT");
    if let Some(kid) = kid {
        header = header.with_key_id(kid.to_owned());
    }
    match key {
        SigningKey::Rs256(k) => Rsa::rs256().token(&header, &claims, k.as_ref()),
        SigningKey::Es256(k) => Es256.token(&header, &claims, k.as_ref()),
    }
    .map_err(|e| format!("cannot sign the assertion: {e}"))
}

/// The claims of an assertion: `iss`, `sub`, `aud`, a fresh `jti`, `iat`, `exp` a minute on,
/// and `extra` (the configuration's `assertion_claims`, which cannot name any of those).
fn assertion_claims(
    iss: &str,
    sub: &str,
    aud: &str,
    extra: &BTreeMap<String, Value>,
) -> Result<Map<String, Value>, String> {
    let now = now_unix();
    let jti = crate::keys::random_bytes::<16>().map_err(|e| e.to_string())?;
    let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    let mut claims: Map<String, Value> = extra.clone().into_iter().collect();
    for (k, v) in [
        ("iss", json!(iss)),
        ("sub", json!(sub)),
        ("aud", json!(aud)),
        ("jti", json!(jti)),
        ("iat", json!(now)),
        ("exp", json!(now + 60)),
    ] {
        claims.insert(k.into(), v);
    }
    Ok(claims)
}

/// A request parameter as form text.
fn form_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Asks the token endpoint for a new access token. Errors never quote a secret or a token.
pub async fn fetch(client: &reqwest::Client, c: &OAuthConfig) -> Result<Token, String> {
    let aud = c.aud.clone().unwrap_or_else(|| c.token_url.clone());
    let mut params: Vec<(&str, Value)> = Vec::new();
    let mut basic = None;
    let mut bearer_assertion = None;
    match c.grant {
        Grant::ClientCredentials => {
            let client_id = c.client_id.clone().unwrap_or_default();
            params.push(("grant_type", json!("client_credentials")));
            if let Some(secret) = &c.client_secret {
                basic = Some((client_id, secret.clone()));
            } else {
                let pem = c.private_key_pem.as_deref().unwrap_or_default();
                let key = signing_key(pem)?;
                let claims = assertion_claims(&client_id, &client_id, &aud, &c.assertion_claims)?;
                params.push(("client_id", json!(client_id)));
                params.push(("client_assertion_type", json!(CLIENT_ASSERTION_TYPE)));
                let assertion = sign(&key, c.key_id.as_deref(), claims)?;
                params.push(("client_assertion", json!(assertion)));
            }
        }
        Grant::JwtBearer => {
            let pem = c.private_key_pem.as_deref().unwrap_or_default();
            let key = signing_key(pem)?;
            let iss = c
                .iss
                .clone()
                .or_else(|| c.client_id.clone())
                .unwrap_or_default();
            let sub = c.sub.clone().unwrap_or_else(|| iss.clone());
            let claims = assertion_claims(&iss, &sub, &aud, &c.assertion_claims)?;
            let assertion = sign(&key, c.key_id.as_deref(), claims)?;
            params.push(("grant_type", json!(JWT_BEARER_GRANT)));
            match c.assertion_in {
                AssertionIn::Body => params.push(("assertion", json!(assertion))),
                AssertionIn::AuthorizationHeader => bearer_assertion = Some(assertion),
            }
            if let Some(id) = &c.client_id {
                params.push(("client_id", json!(id)));
            }
        }
    }
    if let Some(scope) = &c.scope {
        params.push(("scope", json!(scope)));
    }
    params.extend(c.token_params.iter().map(|(k, v)| (k.as_str(), v.clone())));
    // A private CA: a client of its own that trusts that CA only.
    let own_client;
    let client = match &c.ca_pem {
        None => client,
        Some(pem) => {
            own_client = client_trusting(pem)?;
            &own_client
        }
    };
    let obtained_ms = now_ms();
    let mut req = client.post(&c.token_url).timeout(FETCH_TIMEOUT);
    req = match c.request_body {
        RequestBody::Form => {
            let form: Vec<(&str, String)> =
                params.iter().map(|(k, v)| (*k, form_text(v))).collect();
            req.form(&form)
        }
        RequestBody::Json => {
            let body: Map<String, Value> =
                params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            req.json(&body)
        }
    };
    if let Some((id, secret)) = basic {
        // RFC 6749 2.3.1: both form-urlencoded before Basic.
        let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        req = req.basic_auth(enc(&id), Some(enc(&secret)));
    }
    if let Some(assertion) = bearer_assertion {
        req = req.bearer_auth(assertion);
    }
    let resp = req.send().await.map_err(|e| {
        format!(
            "the token endpoint cannot be reached: {}",
            with_causes(&e.without_url())
        )
    })?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|_| format!("the token endpoint answered {status} without JSON"))?;
    if !status.is_success() {
        // The OAuth error code and description name no secret of ours.
        let code = body.get("error").and_then(Value::as_str).unwrap_or("?");
        let description = body
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or("");
        let description: String = description.chars().take(200).collect();
        return Err(format!(
            "the token endpoint refused ({status}): {code} {description}"
        ));
    }
    let Some(value) = body.get("access_token").and_then(Value::as_str) else {
        return Err("the token endpoint's answer has no access_token".into());
    };
    if let Some(kind) = body.get("token_type").and_then(Value::as_str) {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(format!(
                "the token endpoint gave a token of type {kind:?}, not Bearer"
            ));
        }
    }
    if !credential_value_allowed(&format!("Bearer {value}")) {
        return Err("the access token is not visible ASCII of at most 8185 characters".into());
    }
    let lifetime_ms = lifetime_ms(expires_in(body.get("expires_in"))?, obtained_ms)?;
    Ok(Token {
        value: value.to_owned(),
        obtained_ms,
        expires_ms: obtained_ms.saturating_add(lifetime_ms),
    })
}

/// How long a token asked for at `obtained_ms` lives, from its answer's `expires_in`: seconds
/// of life, or from [`ABSOLUTE_EXPIRES_IN`] on a Unix time in seconds (from
/// [`ABSOLUTE_EXPIRES_IN_MS`] on, in milliseconds); an hour without one; never more than
/// [`MAX_TOKEN_LIFETIME_MS`]. A token already expired is an error.
fn lifetime_ms(expires_in: Option<f64>, obtained_ms: i64) -> Result<i64, String> {
    let lifetime = match expires_in {
        // A Unix time: what is left of it from when the token was asked for.
        Some(ms) if ms >= ABSOLUTE_EXPIRES_IN_MS => (ms as i64).saturating_sub(obtained_ms),
        Some(s) if s >= ABSOLUTE_EXPIRES_IN => ((s * 1000.0) as i64).saturating_sub(obtained_ms),
        Some(s) => (s * 1000.0) as i64,
        None => DEFAULT_TOKEN_LIFETIME_MS,
    };
    if lifetime <= 0 {
        return Err("the token endpoint gave a token that has expired".into());
    }
    Ok(lifetime.min(MAX_TOKEN_LIFETIME_MS))
}

/// The seconds of a token answer's `expires_in`: a number, or a string holding one (as some
/// providers send it); `None` when absent. From [`ABSOLUTE_EXPIRES_IN`] on, the caller reads
/// it as a Unix time. Anything else is an error rather than a guess, so
/// that a token is never held past its real expiry.
fn expires_in(value: Option<&Value>) -> Result<Option<f64>, String> {
    let secs = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match secs {
        Some(s) if s.is_finite() => Ok(Some(s)),
        _ => Err(format!(
            "the token endpoint's expires_in {} is not a number of seconds",
            value
                .map(Value::to_string)
                .unwrap_or_default()
                .chars()
                .take(40)
                .collect::<String>()
        )),
    }
}

/// The HTTP client of the token endpoints.
pub fn http_client() -> reqwest::Client {
    client_builder().build().unwrap_or_default()
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
}

/// A client like [`http_client`] that trusts the certificates of `pem` and nothing else.
fn client_trusting(pem: &str) -> Result<reqwest::Client, String> {
    let roots = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
        .map_err(|e| format!("`ca_pem` cannot be read: {e}"))?;
    let mut builder = client_builder().tls_built_in_root_certs(false);
    for root in roots {
        builder = builder.add_root_certificate(root);
    }
    builder
        .build()
        .map_err(|e| format!("cannot make a client trusting `ca_pem`: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_by_the_margin_at_most_half_way_and_not_before_a_quarter() {
        let t = |life_ms| Token {
            value: String::new(),
            obtained_ms: 0,
            expires_ms: life_ms,
        };
        // An hour-long token with the default margin: half way.
        assert_eq!(t(3_600_000).renew_at_ms(300), 1_800_000);
        // A margin past half its life: by the margin.
        assert_eq!(t(3_600_000).renew_at_ms(2_000), 1_600_000);
        // A margin longer than its life: a quarter of the way in.
        assert_eq!(t(3_000).renew_at_ms(300), 750);
        assert!(t(3_000).usable(2_000));
        assert!(!t(3_000).usable(2_600));
    }

    #[test]
    fn expires_in_is_a_lifetime_or_a_unix_time_and_never_years() {
        let now = 1_765_000_000_000; // Unix milliseconds, December 2025.
        assert_eq!(lifetime_ms(Some(600.0), now).unwrap(), 600_000);
        assert_eq!(lifetime_ms(None, now).unwrap(), DEFAULT_TOKEN_LIFETIME_MS);
        // Coze: a Unix time in seconds, an hour on.
        assert_eq!(lifetime_ms(Some(1_765_003_600.0), now).unwrap(), 3_600_000);
        // The same in milliseconds.
        assert_eq!(
            lifetime_ms(Some(1_765_003_600_000.0), now).unwrap(),
            3_600_000
        );
        // In the past, or no life at all: an error, never a token.
        for gone in [1_764_999_000.0, 1_764_999_000_000.0, 0.0, -5.0] {
            assert!(lifetime_ms(Some(gone), now).is_err(), "{gone}");
        }
        // Years, however it is written: held 400 days at most.
        for far in [1e9 - 1.0, 4_000_000_000.0, 9e15] {
            assert_eq!(
                lifetime_ms(Some(far), now).unwrap(),
                MAX_TOKEN_LIFETIME_MS,
                "{far}"
            );
        }
    }

    #[test]
    fn expires_in_is_a_number_of_seconds_or_an_error() {
        let of = |v: Value| expires_in(Some(&v));
        assert_eq!(of(json!(600)).unwrap(), Some(600.0));
        assert_eq!(of(json!(1.5)).unwrap(), Some(1.5));
        // Sent as a string by some providers: still its seconds, not the default hour.
        assert_eq!(of(json!("600")).unwrap(), Some(600.0));
        assert_eq!(of(json!(" 2 ")).unwrap(), Some(2.0));
        assert_eq!(expires_in(None).unwrap(), None);
        assert_eq!(of(Value::Null).unwrap(), None);
        for bad in [
            json!("soon"),
            json!("inf"),
            json!("NaN"),
            json!(true),
            json!([600]),
        ] {
            let e = of(bad.clone()).unwrap_err();
            assert!(e.contains("expires_in"), "{bad}: {e}");
        }
    }
}
