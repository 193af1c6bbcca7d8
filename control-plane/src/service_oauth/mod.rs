//! OAuth 2.0 access tokens as a service's credential: the control plane obtains them from the
//! service's token endpoint and renews them, and the filter configuration carries the current
//! one (`Bearer <token>` in the configured header) to every Envoy.
//!
//! Grants: `client_credentials`, the client authenticated with its secret (HTTP Basic) or with
//! a private key (`private_key_jwt`, an RFC 7523 client assertion), and `jwt_bearer` (an RFC
//! 7523 assertion grant signed with the private key, `iss`/`sub`/`aud` configurable). Keys are
//! RSA (RS256, at least 2048 bits) or EC P-256 (ES256), in PEM (PKCS#8, PKCS#1 or SEC1).
//!
//! The configuration, secrets included, is stored sealed under the key-encryption key, bound to
//! the service's name and the kind `service-oauth`. Tokens are held in memory only
//! ([`ServiceTokens`]), never in the database: with several control planes each fetches its
//! own. [`run`] renews each token `renew_margin_secs` before it expires and never later than
//! half its life, retries with exponential backoff, and asks for a configuration push after
//! every change so that each Envoy has a new token well before the old one expires. While no
//! valid token can be had, the service's static credential (if set) is used as a fallback;
//! without one the filter answers `502` for the service (`services::Published::WithoutCredential`),
//! so no request reaches the upstream without a credential.

mod config;
mod fetch;
mod tokens;

pub use config::{
    check, open, parse, seal, AssertionIn, Grant, OAuthConfig, OpenError, RequestBody,
};
pub use fetch::{fetch, http_client, Token};
pub use tokens::{refresh, run, CredentialStatus, ServiceTokens, Source};
