//! Sign-in with an OpenID provider: the `[oidc.sign_in]` table of an `[[oidc]]` entry
//! ([`SignInSettings`]), its checked form ([`SignInClient`]) and the checks between them. The
//! entry's issuer, keys, algorithms and claims (`subject_claim`, `email_claim`) are the ones its
//! ID tokens are verified with; this table adds the client podgate signs people in as.

use std::path::PathBuf;

use jwt_compact::alg::RsaPrivateKey;
use jwt_compact::jwk::JsonWebKey;
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use crate::config::{bad, ConfigError};

/// Scopes asked for unless configured.
pub const DEFAULT_SCOPES: &[&str] = &["openid", "email", "profile"];

/// One `[oidc.sign_in]` table (or the `PODGATE_OIDC_CLIENT_*` settings of the `oidc` entry).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInSettings {
    /// What the sign-in page calls this provider [default: the entry's name].
    pub display_name: Option<String>,
    /// The client podgate signs in as [default: the entry's first audience]; ID tokens of the
    /// sign-in must be issued to it.
    pub client_id: Option<String>,
    /// The client's secret (prefer `client_secret_file` or the environment).
    pub client_secret: Option<String>,
    /// A file holding the client's secret (surrounding whitespace ignored).
    pub client_secret_file: Option<PathBuf>,
    /// How podgate authenticates at the token endpoint: `client_secret_basic`,
    /// `client_secret_post` or `private_key_jwt` [default: `client_secret_basic` with a secret,
    /// `private_key_jwt` with a key].
    pub client_auth: Option<String>,
    /// For `private_key_jwt`: a file with the client's private key as a JWK (JSON; RSA of at
    /// least 2048 bits, signing RS256, or EC P-256, signing ES256), whose public half is
    /// registered with the provider.
    pub private_key_file: Option<PathBuf>,
    /// Scopes asked for; `openid` is required [default: openid, email, profile].
    pub scopes: Option<Vec<String>>,
    /// Signing out here also signs out at the provider: the browser is sent on to the
    /// provider's `end_session_endpoint` (OpenID Connect RP-Initiated Logout) with
    /// `post_logout_redirect_uri` = `ISSUER/auth/logout`, which must be registered with the
    /// provider [default: false].
    pub sign_out_at_provider: Option<bool>,
}

/// A client secret; never printed.
#[derive(Clone)]
pub struct ClientSecret(pub String);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(***)")
    }
}

/// The private key of `private_key_jwt`; never printed.
#[derive(Clone)]
pub enum ClientKeyMaterial {
    Rs256(Box<RsaPrivateKey>),
    Es256(Box<p256::ecdsa::SigningKey>),
}

/// A client's signing key for `private_key_jwt`, with the `kid` its assertions name.
#[derive(Clone)]
pub struct ClientKey {
    pub kid: String,
    pub material: ClientKeyMaterial,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// How podgate authenticates to the token endpoint.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// The secret in HTTP Basic.
    SecretBasic(ClientSecret),
    /// The secret in the form body.
    SecretPost(ClientSecret),
    /// A JWT signed with the client's key (RFC 7523).
    PrivateKeyJwt(ClientKey),
}

impl ClientAuth {
    pub fn method(&self) -> &'static str {
        match self {
            ClientAuth::SecretBasic(_) => "client_secret_basic",
            ClientAuth::SecretPost(_) => "client_secret_post",
            ClientAuth::PrivateKeyJwt(_) => "private_key_jwt",
        }
    }
}

/// The checked sign-in client of one provider.
#[derive(Debug, Clone)]
pub struct SignInClient {
    pub display_name: String,
    pub client_id: String,
    pub auth: ClientAuth,
    pub scopes: Vec<String>,
    /// Signing out sends the browser to the provider's end-session endpoint.
    pub sign_out_at_provider: bool,
}

fn read_secret_file(path: &PathBuf, whose: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(format!(
            "{whose}: cannot read client_secret_file {}: {e}",
            path.display()
        ))
    })?;
    Ok(text.trim().to_owned())
}

fn b64(v: Option<&Value>) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v?.as_str()?.trim_end_matches('='))
        .ok()
}

/// Reads a private JWK (RSA or EC P-256) for `private_key_jwt`. Its `kid` is the file's, or the
/// RFC 7638 thumbprint of its public half.
fn read_client_key(path: &PathBuf, whose: &str) -> Result<ClientKey, ConfigError> {
    let fail = |why: String| {
        bad(format!(
            "{whose}: private_key_file {} {why}; give a private JWK (JSON) of an RSA key of at least 2048 bits or an EC P-256 key",
            path.display()
        ))
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot be read ({e})")))?;
    let jwk: Value = serde_json::from_str(&text).map_err(|e| fail(format!("is not JSON ({e})")))?;
    let given_kid = jwk
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    let (material, public) = match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => {
            let parsed: JsonWebKey<'_> =
                serde_json::from_value(jwk.clone()).map_err(|e| fail(format!("({e})")))?;
            let key = RsaPrivateKey::try_from(&parsed)
                .map_err(|e| fail(format!("is not a usable RSA private key ({e})")))?;
            use jwt_compact::alg::RsaPublicKey;
            let bits = jwt_compact::alg::StrongKey::try_from(RsaPublicKey::from(&key));
            if bits.is_err() {
                return Err(fail("holds an RSA key shorter than 2048 bits".into()));
            }
            let public = JsonWebKey::Rsa {
                modulus: b64(jwk.get("n"))
                    .ok_or_else(|| fail("has no n".into()))?
                    .into(),
                public_exponent: b64(jwk.get("e"))
                    .ok_or_else(|| fail("has no e".into()))?
                    .into(),
                private_parts: None,
            };
            (ClientKeyMaterial::Rs256(Box::new(key)), public)
        }
        Some("EC") if jwk.get("crv").and_then(Value::as_str) == Some("P-256") => {
            let d = b64(jwk.get("d")).ok_or_else(|| fail("has no private part d".into()))?;
            let key = p256::ecdsa::SigningKey::from_slice(&d)
                .map_err(|_| fail("holds no valid P-256 private key".into()))?;
            let point = key.verifying_key().to_encoded_point(false);
            let (Some(x), Some(y)) = (point.x(), point.y()) else {
                return Err(fail("holds no valid P-256 private key".into()));
            };
            let public = JsonWebKey::EllipticCurve {
                curve: "P-256".into(),
                x: x.to_vec().into(),
                y: y.to_vec().into(),
                secret: None,
            };
            (ClientKeyMaterial::Es256(Box::new(key)), public)
        }
        _ => return Err(fail("is not an RSA or EC P-256 JWK".into())),
    };
    let kid = given_kid.unwrap_or_else(|| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.thumbprint::<Sha256>())
    });
    Ok(ClientKey { kid, material })
}

/// Checks one `[oidc.sign_in]` table of the entry `whose` (named `name`, trusting `client_ids`).
pub(super) fn resolve_sign_in(
    s: SignInSettings,
    name: &str,
    whose: &str,
    client_ids: &[String],
) -> Result<SignInClient, ConfigError> {
    let client_id = match s.client_id {
        Some(id) if id.trim().is_empty() => {
            return Err(bad(format!(
            "{whose}: sign_in.client_id is empty; copy the client id from the provider's console"
        )))
        }
        Some(id) => id.trim().to_owned(),
        None => client_ids.first().cloned().ok_or_else(|| {
            bad(format!(
                "{whose}: sign-in needs a client id; set sign_in.client_id or audience"
            ))
        })?,
    };
    let secret = match (s.client_secret, s.client_secret_file) {
        (Some(_), Some(_)) => {
            return Err(bad(format!(
                "{whose}: sign_in sets both client_secret and client_secret_file; keep one"
            )))
        }
        (Some(secret), None) => Some(secret),
        (None, Some(path)) => Some(read_secret_file(&path, whose)?),
        (None, None) => None,
    };
    if secret.as_deref().is_some_and(str::is_empty) {
        return Err(bad(format!(
            "{whose}: the sign-in client secret is empty; copy it from the provider's console"
        )));
    }
    let method = s
        .client_auth
        .as_deref()
        .unwrap_or(match (&secret, &s.private_key_file) {
            (None, Some(_)) => "private_key_jwt",
            _ => "client_secret_basic",
        });
    let auth = match (method, secret, s.private_key_file) {
        ("client_secret_basic", Some(secret), None) => ClientAuth::SecretBasic(ClientSecret(secret)),
        ("client_secret_post", Some(secret), None) => ClientAuth::SecretPost(ClientSecret(secret)),
        ("private_key_jwt", None, Some(path)) => {
            ClientAuth::PrivateKeyJwt(read_client_key(&path, whose)?)
        }
        ("client_secret_basic" | "client_secret_post", None, _) | ("private_key_jwt", _, None) => {
            return Err(bad(format!(
                "{whose}: sign-in with client_auth {method} needs {}",
                if method == "private_key_jwt" {
                    "private_key_file (the client's private JWK)"
                } else {
                    "client_secret or client_secret_file (or PODGATE_OIDC_CLIENT_SECRET)"
                }
            )))
        }
        ("client_secret_basic" | "client_secret_post" | "private_key_jwt", _, _) => {
            return Err(bad(format!(
                "{whose}: sign-in takes either a client secret or a private_key_file, not both; keep the one client_auth {method} uses"
            )))
        }
        (other, _, _) => {
            return Err(bad(format!(
                "{whose}: sign_in.client_auth {other:?} is not client_secret_basic, client_secret_post or private_key_jwt"
            )))
        }
    };
    let scopes = match s.scopes {
        None => DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        Some(list) => {
            let list: Vec<String> = list
                .iter()
                .flat_map(|s| s.split_whitespace())
                .map(str::to_owned)
                .collect();
            if !list.iter().any(|s| s == "openid") {
                return Err(bad(format!(
                    "{whose}: sign_in.scopes must include openid (without it there is no ID token), e.g. scopes = [\"openid\", \"email\"]"
                )));
            }
            if list.iter().any(|s| {
                s.len() > 128
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            }) {
                return Err(bad(format!(
                    "{whose}: sign_in.scopes holds a value that is not a scope token"
                )));
            }
            list
        }
    };
    let display_name = s.display_name.unwrap_or_else(|| name.to_owned());
    if display_name.is_empty()
        || display_name.len() > 64
        || display_name.chars().any(char::is_control)
    {
        return Err(bad(format!(
            "{whose}: sign_in.display_name must be 1-64 characters without control characters"
        )));
    }
    Ok(SignInClient {
        display_name,
        client_id,
        auth,
        scopes,
        sign_out_at_provider: s.sign_out_at_provider.unwrap_or(false),
    })
}
