//! Who is asking: the caller's identity from a session, an API token, an identity provider's
//! ID token or the main app's session.

pub mod api_tokens;
pub mod app_session;
pub mod identity;
pub mod oidc;
pub mod sign_in;
pub mod verify;
