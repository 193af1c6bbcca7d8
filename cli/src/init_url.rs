//! Setup links: `{control plane}/p/{base64url({"t": API token, "n": prefix})}`.

use base64::Engine;
use serde_json::Value;

use crate::error::{CliError, Result};

/// What a setup link carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitUrl {
    /// The control plane's URL (scheme, host, port and any path before `/p/`), no trailing `/`.
    pub backend_url: String,
    pub token: String,
    pub prefix: Option<String>,
}

fn bad(why: &str) -> CliError {
    CliError::usage(format!(
        "that is not a podgate setup link ({why}); copy the whole link, which looks like \
         https://podgate.example.dev/p/eyJ0Ijoi…, or create a new one on the control plane's /setup page"
    ))
}

/// An API token's shape: `pg_<32 hex>_<52 base32>`, its id being the hex part.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("pg_")?;
    let (id, secret) = rest.split_once('_')?;
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && !secret.is_empty()
        && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some(id)
}

pub fn parse(raw: &str) -> Result<InitUrl> {
    let raw = raw.trim();
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| bad("it does not start with http:// or https://"))?;
    if !matches!(scheme, "http" | "https") {
        return Err(bad("it does not start with http:// or https://"));
    }
    if rest.contains(['?', '#', '@', ' ', '\\']) || rest.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad("it has a query, fragment, user name or odd characters"));
    }
    let (base, config) = rest
        .rsplit_once("/p/")
        .ok_or_else(|| bad("its path does not contain /p/"))?;
    if base.is_empty() || base.starts_with('/') {
        return Err(bad("it has no host"));
    }
    if config.is_empty()
        || config.len() > 2048
        || !config
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad("the part after /p/ is not base64url"));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(config)
        .map_err(|_| bad("the part after /p/ is not base64url"))?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|_| bad("the part after /p/ is not JSON"))?;
    let token = v["t"]
        .as_str()
        .filter(|t| token_id(t).is_some())
        .ok_or_else(|| bad("it carries no API token"))?;
    let prefix = v["n"].as_str().map(str::to_owned);
    Ok(InitUrl {
        backend_url: format!("{scheme}://{}", base.trim_end_matches('/')),
        token: token.to_owned(),
        prefix,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOKEN: &str =
        "pg_0123456789abcdef0123456789abcdef_ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGHIJKLMNOPQRST";

    fn link(base: &str, json: &str) -> String {
        format!(
            "{base}/p/{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    #[test]
    fn reads_a_setup_link() {
        let u = parse(&link(
            "http://127.0.0.1:8080",
            &format!(r#"{{"t":"{TOKEN}","n":"proj"}}"#),
        ))
        .unwrap();
        assert_eq!(u.backend_url, "http://127.0.0.1:8080");
        assert_eq!(u.token, TOKEN);
        assert_eq!(u.prefix.as_deref(), Some("proj"));
        let u = parse(&link(
            "https://cp.example.dev/podgate",
            &format!(r#"{{"t":"{TOKEN}","n":null}}"#),
        ))
        .unwrap();
        assert_eq!(u.backend_url, "https://cp.example.dev/podgate");
        assert_eq!(token_id(TOKEN), Some("0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn refuses_anything_else() {
        let good = link("http://h", &format!(r#"{{"t":"{TOKEN}"}}"#));
        for bad in [
            "".to_owned(),
            "h/p/x".to_owned(),
            format!("ftp{}", &good[4..]),
            format!("{good}?x=1"),
            format!("{good}#x"),
            good.replace("http://h", "http://u@h"),
            good.replace("/p/", "/q/"),
            link("http://h", r#"{"t":"not-a-token"}"#),
            link("http://h", "[]"),
            "http://h/p/!!".to_owned(),
            "http:///p/eyJ0IjoiIn0".to_owned(),
        ] {
            assert_eq!(parse(&bad).unwrap_err().code, 2, "{bad}");
        }
    }
}
