//! Our cookie: its name, finding it in a `Cookie` header, and removing it precisely.

/// The base name of the capability cookie.
pub const DEFAULT_COOKIE_NAME: &str = "podgate_cap";
/// Header scripts may use instead of the cookie.
pub const TOKEN_HEADER: &str = "podgate-token";
/// The longest `Cookie` header the filter will scan for candidates. Above Envoy's own request
/// header limit (`max_request_headers_kb: 32` in every config under `envoy/`), so padding the
/// header with planted cookies can never hide the real one from the filter.
pub const MAX_COOKIE_HEADER_LEN: usize = 64 * 1024;

/// The cookie name actually used: `__Host-` prefixed when the public scheme is https, so the
/// browser enforces host-only, `Secure` and `Path=/`.
pub fn cookie_name(base: &str, https: bool) -> String {
    if https && !base.starts_with("__Host-") {
        format!("__Host-{base}")
    } else {
        base.to_owned()
    }
}

/// Whether a cookie name is a valid RFC 6265 token we are willing to use.
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
}

/// Iterates over `(name, value)` pairs of a `Cookie` header, trimming spaces around each pair.
fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|part| {
        let part = part.trim_matches(|c| c == ' ' || c == '\t');
        if part.is_empty() {
            return None;
        }
        Some(match part.split_once('=') {
            Some((n, v)) => (n.trim(), v.trim()),
            None => ("", part),
        })
    })
}

/// Finds every value of the cookie `name`. A browser may send the same name twice (a sibling
/// tossed one with a wider domain); callers must treat each as a separate candidate.
pub fn find_all<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    pairs(header)
        .filter(move |(n, _)| *n == name)
        .map(|(_, v)| {
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
}

/// The header without any cookie named `name`: each pair of ours goes with the `;` before it
/// (or after it, for the first), and so do empty pairs; every other pair keeps its bytes, its
/// separator and its place. Returns `None` when no pair is left (the caller removes the
/// header). Only call it on a header that `has` our cookie: others are left as they came.
pub fn strip(header: &str, name: &str) -> Option<String> {
    let mut out = String::with_capacity(header.len());
    for part in header.split(';') {
        let trimmed = part.trim_matches(|c| c == ' ' || c == '\t');
        if trimmed.is_empty() {
            continue;
        }
        let cookie_name = trimmed.split_once('=').map_or("", |(n, _)| n.trim());
        if cookie_name == name {
            continue;
        }
        if out.is_empty() {
            out.push_str(part.trim_start_matches([' ', '\t']));
        } else {
            out.push(';');
            out.push_str(part);
        }
    }
    let kept = out.trim_end_matches([' ', '\t']);
    (!kept.is_empty()).then(|| kept.to_owned())
}

/// Whether the header mentions our cookie name at all (a cheap pre-check: the name may be part
/// of another name or a value).
pub fn mentions(header: &str, name: &str) -> bool {
    header.contains(name)
}

/// Whether the header holds a pair actually named `name` (what `strip` removes).
pub fn has(header: &str, name: &str) -> bool {
    mentions(header, name) && find_all(header, name).next().is_some()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_scheme() {
        assert_eq!(cookie_name("podgate_cap", false), "podgate_cap");
        assert_eq!(cookie_name("podgate_cap", true), "__Host-podgate_cap");
        assert_eq!(cookie_name("__Host-x", true), "__Host-x");
        assert!(valid_cookie_name("podgate_cap"));
        assert!(!valid_cookie_name("a b"));
        assert!(!valid_cookie_name("a=b"));
        assert!(!valid_cookie_name("a;b"));
        assert!(!valid_cookie_name(""));
    }

    #[test]
    fn finds_our_cookie_exactly() {
        let h = "a=1; podgate_cap=tok; podgate_cap2=no; xpodgate_cap=no";
        assert_eq!(find_all(h, "podgate_cap").collect::<Vec<_>>(), ["tok"]);
        assert_eq!(
            find_all("podgate_cap=\"q\"", "podgate_cap").collect::<Vec<_>>(),
            ["q"]
        );
        assert_eq!(
            find_all("podgate_cap=a;podgate_cap=b", "podgate_cap").collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(find_all("a=1; b", "podgate_cap").count(), 0);
        assert_eq!(find_all("", "podgate_cap").count(), 0);
    }

    #[test]
    fn strips_only_our_cookie_and_keeps_order() {
        let cases = [
            ("a=1; podgate_cap=t; b=2", Some("a=1; b=2")),
            ("podgate_cap=t", None),
            ("podgate_cap=t; podgate_cap=u", None),
            ("podgate_cap=t;a=1;;b=2 ", Some("a=1;b=2")),
            ("a=1;b=2;podgate_cap=t", Some("a=1;b=2")),
            ("a=1;  b=2 ;podgate_cap=t; c=3", Some("a=1;  b=2 ; c=3")),
            ("a=1; podgate_cap=t;\tb=2", Some("a=1;\tb=2")),
            ("podgate_cap=t; podgate_cap=u;a=\"x y\"", Some("a=\"x y\"")),
            ("  ; ;podgate_cap=t; ", None),
            ("z=9; y=8; podgate_cap=t; x=7", Some("z=9; y=8; x=7")),
            (
                "podgate_cap2=keep; podgate_cap=t",
                Some("podgate_cap2=keep"),
            ),
            ("a=podgate_cap=t", Some("a=podgate_cap=t")),
            (" podgate_cap =t; a=1", Some("a=1")),
            ("flag; podgate_cap=t", Some("flag")),
        ];
        for (input, want) in cases {
            assert_eq!(strip(input, "podgate_cap").as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn a_header_without_a_pair_named_ours_is_not_ours_to_edit() {
        // The name inside another name, inside a value, as a flag without `=`, in another case.
        for header in [
            "xpodgate_cap=1",
            "podgate_cap2=1",
            "a=podgate_cap; b=2",
            "a=podgate_cap=t",
            "podgate_cap",
            "PODGATE_CAP=1",
            "__Host-podgate_cap=1",
            "a=1;;b=2 ; ",
            "",
        ] {
            assert!(!has(header, "podgate_cap"), "{header:?}");
            assert_eq!(find_all(header, "podgate_cap").count(), 0, "{header:?}");
        }
        assert!(has("a=1; podgate_cap =t", "podgate_cap"));
        assert!(has("podgate_cap=", "podgate_cap"));
    }
}
