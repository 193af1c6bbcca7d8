//! The paths on pod hosts the filter answers itself, never forwarded to the pod nor to the
//! control plane:
//!
//! - `/.podgate/userinfo`: who the current capability is for (user, email, pod, port, expiry),
//!   as JSON, from the capability the filter verified for this host, or the one an API token
//!   is exchanged for (`gate::decide`); 401 without either.
//! - `/.podgate/logout`: removes the pod host's capability cookie and redirects to the control
//!   plane's sign-out (`/auth/logout`), which ends the session and cuts off every capability
//!   minted for it, on every pod host.
//!
//! Every other path under the reserved prefix goes to the control plane (`gate::decide`).

use serde::Serialize;

use crate::config::CompiledConfig;
use crate::reply::Reply;
use crate::token::Verified;

/// `/.podgate/userinfo`.
pub const USERINFO_PATH: &str = "/.podgate/userinfo";
/// `/.podgate/logout`.
pub const LOGOUT_PATH: &str = "/.podgate/logout";

/// A path the filter answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnPath {
    Userinfo,
    Logout,
}

/// Which of our own paths `path` is: exactly one of them, with or without a query. Other
/// spellings (case, percent-encoding, a trailing slash) are not ours to answer: they stay on
/// the reserved prefix and go to the control plane, which has no such route.
pub fn classify(path: &str) -> Option<OwnPath> {
    let bare = path.split_once('?').map_or(path, |(bare, _)| bare);
    match bare {
        USERINFO_PATH => Some(OwnPath::Userinfo),
        LOGOUT_PATH => Some(OwnPath::Logout),
        _ => None,
    }
}

#[derive(Serialize)]
struct Userinfo<'a> {
    user: &'a str,
    email: Option<&'a str>,
    pod: &'a str,
    port: u16,
    /// When the capability expires (unix seconds).
    expires_at: i64,
}

fn json_headers() -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".to_owned()),
        ("cache-control", "no-store".to_owned()),
    ]
}

/// The answer to `/.podgate/userinfo` for a capability verified for this host.
pub fn userinfo(v: &Verified) -> Reply {
    let body = serde_json::to_string(&Userinfo {
        user: &v.claims.sub,
        email: v.claims.email.as_deref(),
        pod: &v.claims.pod,
        port: v.claims.port,
        expires_at: v.expires_at,
    })
    .unwrap_or_else(|_| String::from("{\"error\":\"podgate could not encode the answer\"}"));
    Reply {
        status: 200,
        headers: json_headers(),
        body,
        reason: "userinfo",
    }
}

/// The answer to `/.podgate/logout`: the capability cookie removed from this host (the same
/// attributes the control plane sets it with, so the browser replaces it), then the control
/// plane's sign-out. A GET is enough: the worst a forged one does is sign the user out.
pub fn logout(config: &CompiledConfig) -> Reply {
    let secure = if config.https { "; Secure" } else { "" };
    let clear = format!(
        "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}",
        config.cookie_name
    );
    let mut headers = json_headers();
    headers.push(("set-cookie", clear));
    headers.push(("location", config.logout_url.clone()));
    headers.push(("referrer-policy", "no-referrer".to_owned()));
    let body = serde_json::json!({ "signed_out": true, "location": config.logout_url }).to_string();
    Reply {
        status: 302,
        headers,
        body,
        reason: "logout",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_paths_are_ours() {
        assert_eq!(classify("/.podgate/userinfo"), Some(OwnPath::Userinfo));
        assert_eq!(classify("/.podgate/userinfo?x=1"), Some(OwnPath::Userinfo));
        assert_eq!(classify("/.podgate/logout"), Some(OwnPath::Logout));
        for other in [
            "/.podgate/userinfo/",
            "/.PODGATE/userinfo",
            "/.podgate/%75serinfo",
            "/.podgate/callback",
            "/userinfo",
            "/x/.podgate/logout",
            "/.podgate/logoutx",
        ] {
            assert_eq!(classify(other), None, "{other}");
        }
    }
}
