//! Resource-scoped services: a service whose `resource_path` is a pattern such as
//! `/sessions/{id}` is reached one resource at a time. A capability for it names the resource
//! it was minted for (its `res` claim, e.g. `/sessions/abc`), and the filter forwards a request
//! only when its path lies under that very resource.
//!
//! The path is matched as the client sent it (Envoy has normalised it already, see
//! `docs/architecture.md`), but nothing here relies on that: a path any server on the way could
//! read two ways is refused before it is matched ([`classify`]), because the upstream, not the
//! filter, decides what a path names.

/// The one placeholder of a pattern, its last segment.
pub const ID_PLACEHOLDER: &str = "{id}";
/// The longest pattern, and the longest resource id.
pub const MAX_PATTERN_LEN: usize = 256;
pub const MAX_ID_LEN: usize = 128;

/// Why a pattern was refused; the message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0}; write it as literal segments ending in one `{{id}}` segment, e.g. `/sessions/{{id}}`"
)]
pub struct PatternError(&'static str);

/// Checks a pattern: `/`, one or more literal segments of unreserved characters (letters,
/// digits, `-`, `.`, `_`, `~`; never `.` or `..`), then `{id}` as the last segment.
pub fn check_pattern(pattern: &str) -> Result<(), PatternError> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(PatternError("it is longer than 256 bytes"));
    }
    let Some(prefix) = pattern.strip_suffix(ID_PLACEHOLDER) else {
        return Err(PatternError("it does not end in `{id}`"));
    };
    let Some(literal) = prefix.strip_prefix('/').and_then(|p| p.strip_suffix('/')) else {
        return Err(PatternError(
            "it must start with `/` and `{id}` must be a whole segment",
        ));
    };
    if literal.is_empty() {
        return Err(PatternError(
            "it needs at least one literal segment before `{id}`",
        ));
    }
    for segment in literal.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(PatternError("a segment is empty, `.` or `..`"));
        }
        if !segment.bytes().all(is_unreserved) {
            return Err(PatternError(
                "a segment holds a character other than letters, digits, `-`, `.`, `_`, `~`",
            ));
        }
    }
    Ok(())
}

/// Whether `id` can be a resource id: 1 to `MAX_ID_LEN` unreserved characters, not `.` or
/// `..`. Such an id means the same to every server, raw in a path.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id.bytes().all(is_unreserved)
}

/// RFC 3986 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The resource path (`/sessions/abc`) of id `id` under a checked `pattern`.
pub fn resource_of_id(pattern: &str, id: &str) -> String {
    let prefix = pattern.strip_suffix(ID_PLACEHOLDER).unwrap_or(pattern);
    format!("{prefix}{id}")
}

/// The id of the resource path `resource` under a checked `pattern`, when it is one.
pub fn id_of_resource<'a>(pattern: &str, resource: &'a str) -> Option<&'a str> {
    let prefix = pattern.strip_suffix(ID_PLACEHOLDER)?;
    resource.strip_prefix(prefix).filter(|id| valid_id(id))
}

/// What a request path comes to under a service's pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMatch<'a> {
    /// Under this resource (`/sessions/abc` for `/sessions/abc/events?x=1`).
    Resource(&'a str),
    /// Not under the pattern (another path of the service, or an id that cannot be one).
    Outside,
    /// A path a server could read two ways: refused before matching.
    Ambiguous,
}

/// Classifies `path` (with its query) under a checked `pattern`.
///
/// Ambiguous, so refused whatever the pattern: a path not starting with `/`; an empty segment
/// other than a final one (`//`); a `.` or `..` segment; a `\` or `;` (some servers split
/// segments or drop parameters there: `..;` is `..` to them); a `%` that is not followed by two
/// hex digits, or that encodes `/`, `\`, `.`, `%`, `;` or a control character; a control
/// character or a byte that is not ASCII. Everything before the first `?` counts.
///
/// Otherwise the path is under a resource when it starts with the pattern's literal prefix and
/// its next segment is a [`valid_id`]; the resource is the prefix and that segment, and
/// whatever follows (`/events`, `/`) stays under it.
pub fn classify<'a>(pattern: &str, path: &'a str) -> PathMatch<'a> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if ambiguous(path) {
        return PathMatch::Ambiguous;
    }
    let Some(prefix) = pattern.strip_suffix(ID_PLACEHOLDER) else {
        return PathMatch::Outside;
    };
    let Some(rest) = path.strip_prefix(prefix) else {
        return PathMatch::Outside;
    };
    let id = rest.split_once('/').map_or(rest, |(id, _)| id);
    if !valid_id(id) {
        return PathMatch::Outside;
    }
    match path.get(..prefix.len() + id.len()) {
        Some(resource) => PathMatch::Resource(resource),
        None => PathMatch::Outside,
    }
}

fn ambiguous(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return true;
    }
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return true;
        }
    }
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' | b';' => return true,
            b'%' => {
                let decoded = match (
                    bytes.get(i + 1).and_then(|h| hex(*h)),
                    bytes.get(i + 2).and_then(|l| hex(*l)),
                ) {
                    (Some(high), Some(low)) => high << 4 | low,
                    _ => return true,
                };
                if matches!(decoded, b'/' | b'\\' | b'.' | b'%' | b';')
                    || !(0x20..0x7f).contains(&decoded)
                {
                    return true;
                }
                i += 3;
                continue;
            }
            _ if !(0x20..0x7f).contains(&b) => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/sessions/{id}";

    #[test]
    fn patterns() {
        for ok in ["/sessions/{id}", "/v1/chat.sessions/{id}", "/a~b_c-d/{id}"] {
            assert_eq!(check_pattern(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/sessions",
            "sessions/{id}",
            "/{id}",
            "/sessions/{id}/events",
            "/sessions/x{id}",
            "/sessions//{id}",
            "/../{id}",
            "/./{id}",
            "/a b/{id}",
            "/a%2F/{id}",
            "/{id}/{id}",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
        assert!(check_pattern(&format!("/{}/{{id}}", "a".repeat(300))).is_err());
    }

    #[test]
    fn resources_and_their_subpaths() {
        assert_eq!(
            classify(P, "/sessions/a1"),
            PathMatch::Resource("/sessions/a1")
        );
        assert_eq!(
            classify(P, "/sessions/a1/"),
            PathMatch::Resource("/sessions/a1")
        );
        assert_eq!(
            classify(P, "/sessions/a1/events?since=3"),
            PathMatch::Resource("/sessions/a1")
        );
        assert_eq!(
            classify(P, "/sessions/a1?x=/../b1"),
            PathMatch::Resource("/sessions/a1")
        );
        assert_eq!(
            classify(P, "/sessions/a1/x%20y"),
            PathMatch::Resource("/sessions/a1")
        );
        assert_eq!(
            classify(P, "/sessions/a.b~c_d-e"),
            PathMatch::Resource("/sessions/a.b~c_d-e")
        );
    }

    #[test]
    fn outside_the_pattern() {
        for path in [
            "/",
            "/sessions",
            "/sessions/",
            "/Sessions/a1",
            "/sessionsa1",
            "/other/a1",
            "/sessions/a:1",
            "/sessions/a%20b",
            "/x/sessions/a1",
        ] {
            assert_eq!(classify(P, path), PathMatch::Outside, "{path}");
        }
        let long = format!("/sessions/{}", "a".repeat(MAX_ID_LEN + 1));
        assert_eq!(classify(P, &long), PathMatch::Outside);
    }

    #[test]
    fn ambiguous_paths_are_refused_before_matching() {
        for path in [
            "/sessions/a1/../b1",
            "/sessions/a1/..",
            "/sessions/../sessions/b1",
            "/sessions/./b1",
            "/sessions/a1/.",
            "/sessions//b1",
            "//sessions/b1",
            "/sessions/a1//x",
            "/sessions/a1%2F..%2Fb1",
            "/sessions/a1%2f..%2fb1",
            "/sessions/a1/%2e%2e/b1",
            "/sessions/a1/%2E%2E/b1",
            "/sessions/a1/.%2e/b1",
            "/sessions/a1%5C..%5Cb1",
            "/sessions/a1\\..\\b1",
            "/sessions/a1/..;/b1",
            "/sessions/a1;x",
            "/sessions/a1%3B",
            "/sessions/a1%252e%252e",
            "/sessions/a1%",
            "/sessions/a1%2",
            "/sessions/a1%zz",
            "/sessions/a1%00",
            "/sessions/a1\u{7f}",
            "/sessions/a\u{e9}",
            "sessions/a1",
            "",
        ] {
            assert_eq!(classify(P, path), PathMatch::Ambiguous, "{path:?}");
        }
    }

    #[test]
    fn ids_and_resources() {
        assert!(valid_id("a1"));
        assert!(!valid_id(""));
        assert!(!valid_id(".."));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"a".repeat(MAX_ID_LEN + 1)));
        assert_eq!(resource_of_id(P, "a1"), "/sessions/a1");
        assert_eq!(id_of_resource(P, "/sessions/a1"), Some("a1"));
        assert_eq!(id_of_resource(P, "/sessions/a1/x"), None);
        assert_eq!(id_of_resource(P, "/other/a1"), None);
    }
}
