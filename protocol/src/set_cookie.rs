//! Which `Set-Cookie` headers a pod may send to the browser.
//!
//! Sibling pods share a registrable domain, so a pod that could set a cookie for the base domain
//! (or for another pod's host) could toss cookies at its siblings: shadow their capability
//! cookie, or fill their cookie jar until the browser evicts it (a lockout). A pod could also
//! overwrite or delete our own capability cookie on its host. So a pod's `Set-Cookie` is kept
//! only when:
//!
//! - it is valid UTF-8 without control characters and at most [`MAX_SET_COOKIE_LEN`] bytes;
//! - its name is not empty (browsers send a nameless cookie as its bare value, so
//!   `=podgate_cap=x` would reach us as `podgate_cap=x`);
//! - its name, with any `__Host-`/`__Secure-` prefixes removed and compared without case, is none
//!   of ours ([`ReservedNames`]: the configured capability cookie, the default capability cookie
//!   and the control plane's session cookie);
//! - every `Domain` attribute (RFC 6265 §5.2.3: case-insensitive name, one leading dot ignored)
//!   names exactly the pod's own public host. An empty `Domain`, a trailing dot, a port, quotes
//!   or any other host drop the cookie.
//!
//! Anything else is dropped whole (never rewritten); the kept headers go back byte for byte, in
//! their order. Host-only cookies (no `Domain`) are the normal case and always kept.

use crate::cookie::DEFAULT_COOKIE_NAME;

/// The longest `Set-Cookie` value judged; a longer one is dropped (browsers refuse cookies whose
/// name and value exceed 4096 bytes anyway).
pub const MAX_SET_COOKIE_LEN: usize = 8 * 1024;

/// Base name of the control plane's session cookie (`control-plane`'s `SESSION_COOKIE` must
/// stay equal to it; it lives on the control plane's host, but a pod must not mint it either).
pub const SESSION_COOKIE_NAME: &str = "podgate_session";

/// Why a pod's `Set-Cookie` was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not UTF-8, a control character, or too long.
    Malformed,
    /// No name (`=v` or `v`).
    Nameless,
    /// One of our cookie names, in any casing or prefix form.
    OurName,
    /// A `Domain` attribute other than the pod's own exact host.
    ForeignDomain,
}

/// The cookie names only podgate may set, stored lowercase without `__Host-`/`__Secure-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedNames {
    bases: Vec<String>,
}

impl ReservedNames {
    /// Ours: `configured` (the capability cookie, any prefix form), the default capability
    /// cookie name and the control plane's session cookie.
    pub fn new(configured: &str) -> Self {
        let mut bases: Vec<String> = Vec::new();
        for name in [configured, DEFAULT_COOKIE_NAME, SESSION_COOKIE_NAME] {
            let base = without_prefixes(name.trim()).to_ascii_lowercase();
            if !base.is_empty() && !bases.contains(&base) {
                bases.push(base);
            }
        }
        ReservedNames { bases }
    }

    /// Whether `name` (already trimmed) is one of ours.
    pub fn contains(&self, name: &str) -> bool {
        let base = without_prefixes(name);
        self.bases.iter().any(|b| b.eq_ignore_ascii_case(base))
    }
}

/// `name` without any number of leading `__Host-` / `__Secure-` prefixes, in any casing
/// (RFC 6265bis matches the prefixes case-insensitively).
fn without_prefixes(mut name: &str) -> &str {
    loop {
        let mut stripped = false;
        for prefix in ["__host-", "__secure-"] {
            if let Some(head) = name.get(..prefix.len()) {
                if head.eq_ignore_ascii_case(prefix) {
                    name = name.get(prefix.len()..).unwrap_or("");
                    stripped = true;
                }
            }
        }
        if !stripped {
            return name;
        }
    }
}

fn trim_wsp(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// Judges one `Set-Cookie` value from the pod whose public host is `pod_host` (no port).
pub fn judge(raw: &[u8], pod_host: &str, reserved: &ReservedNames) -> Result<(), Refusal> {
    judge_with(raw, reserved, |domain| {
        domain.eq_ignore_ascii_case(pod_host)
    })
}

/// `judge`, asking `is_pod_host` about each `Domain` value (leading dot removed, non-empty), so
/// a caller can work out the pod's host only when a cookie names a domain at all.
pub fn judge_with(
    raw: &[u8],
    reserved: &ReservedNames,
    mut is_pod_host: impl FnMut(&str) -> bool,
) -> Result<(), Refusal> {
    if raw.len() > MAX_SET_COOKIE_LEN {
        return Err(Refusal::Malformed);
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err(Refusal::Malformed);
    };
    if text.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(Refusal::Malformed);
    }
    let mut parts = text.split(';');
    let pair = parts.next().unwrap_or("");
    let Some((name, _value)) = pair.split_once('=') else {
        return Err(Refusal::Nameless);
    };
    let name = trim_wsp(name);
    if name.is_empty() {
        return Err(Refusal::Nameless);
    }
    if reserved.contains(name) {
        return Err(Refusal::OurName);
    }
    for attribute in parts {
        let (attr_name, attr_value) = attribute.split_once('=').unwrap_or((attribute, ""));
        if !trim_wsp(attr_name).eq_ignore_ascii_case("domain") {
            continue;
        }
        let domain = trim_wsp(attr_value);
        let domain = domain.strip_prefix('.').unwrap_or(domain);
        if domain.is_empty() || !is_pod_host(domain) {
            return Err(Refusal::ForeignDomain);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const POD: &str = "localhost-8726-pod-alpha.example.dev";

    fn ours() -> ReservedNames {
        ReservedNames::new("__Host-podgate_cap")
    }

    #[test]
    fn the_pods_own_cookies_are_kept() {
        let keep = [
            "session=abc",
            "session=abc; Path=/; HttpOnly; Secure; SameSite=Lax",
            "theme=\"dark blue\"; Max-Age=60",
            "a=",
            "a=b=c",
            " spaced = v ; path=/",
            "prefs=1; Domain=localhost-8726-pod-alpha.example.dev",
            "prefs=1; Domain=.localhost-8726-pod-alpha.example.dev",
            "prefs=1; DOMAIN=LOCALHOST-8726-POD-ALPHA.EXAMPLE.DEV",
            "prefs=1; domain = localhost-8726-pod-alpha.example.dev ; path=/",
            "prefs=1;Domain=localhost-8726-pod-alpha.example.dev;Domain=.localhost-8726-pod-alpha.example.dev",
            "__Host-app=1; Path=/; Secure",
            "__Secure-app=1; Secure",
            "podgate_cap2=1",
            "xpodgate_cap=1",
            "podgate=1",
            "my_podgate_session_copy=1",
            "tab=\tx",
            "app=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
            // Attribute-looking text in the value is not an attribute.
            "a=Domain=example.dev",
            "élan=été",
        ];
        for header in keep {
            assert_eq!(judge(header.as_bytes(), POD, &ours()), Ok(()), "{header:?}");
        }
    }

    #[test]
    fn cookie_tossing_and_our_names_are_dropped() {
        use Refusal::*;
        let cases: Vec<(&[u8], Refusal)> = vec![
            // The parent domain, in every spelling a browser would take.
            (b"x=1; Domain=example.dev", ForeignDomain),
            (b"x=1; Domain=.example.dev", ForeignDomain),
            (b"x=1; domain=EXAMPLE.DEV", ForeignDomain),
            (b"x=1; Domain=example.dev.", ForeignDomain),
            (b"x=1; Domain = .Example.Dev ; Path=/", ForeignDomain),
            (b"x=1; Domain=dev", ForeignDomain),
            // A sibling pod, another port of this pod, near misses of our own host.
            (
                b"x=1; Domain=localhost-8726-pod-beta.example.dev",
                ForeignDomain,
            ),
            (
                b"x=1; Domain=localhost-8727-pod-alpha.example.dev",
                ForeignDomain,
            ),
            (
                b"x=1; Domain=localhost-8726-pod-alpha.example.dev.",
                ForeignDomain,
            ),
            (
                b"x=1; Domain=..localhost-8726-pod-alpha.example.dev",
                ForeignDomain,
            ),
            (
                b"x=1; Domain=localhost-8726-pod-alpha.example.dev:443",
                ForeignDomain,
            ),
            (
                b"x=1; Domain=\"localhost-8726-pod-alpha.example.dev\"",
                ForeignDomain,
            ),
            (b"x=1; Domain=evil.com", ForeignDomain),
            // Empty Domain attributes (browsers differ; we do not guess).
            (b"x=1; Domain=", ForeignDomain),
            (b"x=1; Domain", ForeignDomain),
            (b"x=1; Domain=.", ForeignDomain),
            // The last Domain wins in browsers, so every Domain must be ours.
            (
                b"x=1; Domain=localhost-8726-pod-alpha.example.dev; Domain=example.dev",
                ForeignDomain,
            ),
            (
                b"x=1; Domain=example.dev; Domain=localhost-8726-pod-alpha.example.dev",
                ForeignDomain,
            ),
            (
                b"x=1; Path=/; Secure; HttpOnly; SameSite=None; Domain=example.dev",
                ForeignDomain,
            ),
            // Our names: capability (both forms), default and session, any casing or prefix.
            (b"podgate_cap=forged", OurName),
            (b"__Host-podgate_cap=forged; Path=/; Secure", OurName),
            (b"__host-podgate_cap=forged", OurName),
            (b"__Secure-podgate_cap=forged", OurName),
            (b"__Secure-__Host-podgate_cap=x", OurName),
            (b"PODGATE_CAP=forged", OurName),
            (b"Podgate_Cap=forged", OurName),
            (b" podgate_cap =forged", OurName),
            (b"\tpodgate_cap\t=forged", OurName),
            (b"podgate_cap=; Max-Age=0", OurName),
            (b"podgate_session=forged", OurName),
            (b"__Host-podgate_session=forged", OurName),
            (
                b"podgate_cap=x; Domain=localhost-8726-pod-alpha.example.dev",
                OurName,
            ),
            // Nameless cookies reach the server as their bare value.
            (b"=podgate_cap=forged", Nameless),
            (b" =x", Nameless),
            (b"podgate_cap", Nameless),
            (b"justavalue; Path=/", Nameless),
            (b"", Nameless),
            // Junk.
            (b"x=\xff\xfe", Malformed),
            (b"\xffpodgate_cap=x", Malformed),
            (b"x=1\r\nSet-Cookie: podgate_cap=x", Malformed),
            (b"x=1\0; Domain=example.dev", Malformed),
            (b"x=\x7f", Malformed),
        ];
        for (header, want) in cases {
            assert_eq!(
                judge(header, POD, &ours()),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
        let huge = format!("x={}", "a".repeat(MAX_SET_COOKIE_LEN));
        assert_eq!(judge(huge.as_bytes(), POD, &ours()), Err(Malformed));
        let many = "x=1".to_owned() + &"; Path=/".repeat(900);
        assert_eq!(judge(many.as_bytes(), POD, &ours()), Ok(()));
    }

    #[test]
    fn a_configured_name_is_reserved_in_every_form() {
        let names = ReservedNames::new("corp_cap");
        for name in [
            "corp_cap",
            "CORP_CAP",
            "__Host-corp_cap",
            "__Secure-corp_cap",
            "podgate_cap",
            "podgate_session",
        ] {
            assert!(names.contains(name), "{name}");
        }
        for name in ["corp_cap2", "corp", "__Host-", "", "__Host-x"] {
            assert!(!names.contains(name), "{name}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x1234_5678_u32;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    b"=;. \t\xffDdomainpodgate_cap__Host-"[(seed >> 16) as usize % 31]
                })
                .collect();
            let _ = judge(&bytes, POD, &ours());
        }
    }
}
