//! Redirect targets: `next` is only ever a same-host relative path, in canonical form.

use crate::path::hex_value;

/// Longest `next` kept; longer ones fall back to `/`.
pub const MAX_NEXT_LEN: usize = 2048;

/// The canonical form of `input` when it is a safe same-host target (see [`canonical_next`]);
/// otherwise `/`.
pub fn safe_next(input: &str) -> String {
    canonical_next(input).unwrap_or_else(|| "/".to_owned())
}

/// Whether `input` is already a canonical safe target: [`safe_next`] returns it unchanged.
pub fn is_safe_next(input: &str) -> bool {
    canonical_next(input).as_deref() == Some(input)
}

/// The canonical form of a `next`, or `None` when it is refused.
///
/// Refused: anything that is not one same-host path (empty, over [`MAX_NEXT_LEN`], not starting
/// with one `/`, `//` or `/\` at the start, a backslash anywhere, whitespace, control or
/// non-ASCII characters, `%00`, `%09`, `%0A`, `%0D` anywhere); in the path part, an encoded
/// slash or backslash (`%2F`, `%5C`), an encoded percent (`%25`: a second decoding could make
/// any of these), a byte that only starts an overlong UTF-8 encoding (`%C0`, `%C1`), a `%` that
/// starts no escape, and `;` parameters (raw or `%3B`) on an empty or dot segment (`/..;/`,
/// `/;x/`, `/%3Bx/`); a path on the reserved prefix (`path::is_reserved`), which is never a
/// place to land.
///
/// Normalised, the way Envoy normalises a request path: `%2E` decoded, `.` and `..` segments
/// resolved and doubled slashes merged, so no later normalisation of the result can turn it
/// into a network-path reference (`/.//evil.com`, `/a/..//evil.com`, `/%2e%2e//evil` all land
/// on a path of this host). In the query, every `ticket` parameter (name compared after one
/// percent-decoding, without case; `&` and `;` separate parameters) is removed: a login ticket
/// never ends up in the URL a browser lands on. The fragment is kept as it is.
pub fn canonical_next(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NEXT_LEN || bytes.first() != Some(&b'/') {
        return None;
    }
    // `//host` and `/\host` are network-path references to browsers.
    if matches!(bytes.get(1), Some(b'/') | Some(b'\\')) {
        return None;
    }
    if !bytes.iter().all(|&b| b.is_ascii_graphic()) || input.contains('\\') {
        return None;
    }
    // Control characters, however encoded, could end a header line or be dropped by a browser.
    let lower = input.to_ascii_lowercase();
    if ["%00", "%09", "%0a", "%0d"]
        .iter()
        .any(|bad| lower.contains(bad))
    {
        return None;
    }
    let path_end = input.find(['?', '#']).unwrap_or(input.len());
    let (path, after) = input.split_at(path_end);
    let (query, fragment) = match after.strip_prefix('?') {
        Some(rest) => match rest.split_once('#') {
            Some((query, fragment)) => (Some(query), Some(fragment)),
            None => (Some(rest), None),
        },
        None => (None, after.strip_prefix('#')),
    };
    let mut out = canonical_path(path)?;
    if crate::path::is_reserved(out.as_bytes()) {
        return None;
    }
    if let Some(query) = query.map(without_ticket).filter(|q| !q.is_empty()) {
        out.push('?');
        out.push_str(&query);
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    (out.len() <= MAX_NEXT_LEN).then_some(out)
}

/// `path` (starting with `/`, printable ASCII) with `%2E` decoded, dot segments resolved and
/// empty segments dropped; `None` for what [`canonical_next`] refuses in a path.
fn canonical_path(path: &str) -> Option<String> {
    let mut decoded = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        let (before, escape) = rest.split_at(at);
        decoded.push_str(before);
        let hex = escape.get(1..3)?;
        let [high, low] = hex.as_bytes() else {
            return None;
        };
        let value = hex_value(*high)? << 4 | hex_value(*low)?;
        match value {
            b'.' => decoded.push('.'),
            b'/' | b'\\' | b'%' | 0xc0 | 0xc1 => return None,
            _ => {
                decoded.push('%');
                decoded.push_str(hex);
            }
        }
        rest = escape.get(3..)?;
    }
    decoded.push_str(rest);

    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ if segment.contains(';') || segment.to_ascii_lowercase().contains("%3b") => {
                // The name before `;`, raw or encoded (a server may decode before it splits).
                let lower = segment.to_ascii_lowercase();
                let end = [lower.find(';'), lower.find("%3b")]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(segment.len());
                let name = segment.get(..end).unwrap_or_default();
                if matches!(name, "" | "." | "..") {
                    // Servers that drop `;` parameters would read this as a dot segment or an
                    // empty one: no canonical form means the same to all of them.
                    return None;
                }
                segments.push(segment);
            }
            _ => segments.push(segment),
        }
    }
    let directory = matches!(decoded.rsplit('/').next(), Some("" | "." | ".."));
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || directory {
        out.push('/');
    }
    Some(out)
}

/// `query` without its `ticket` parameters, the others in order with their separators (byte
/// for byte when there is none to remove).
fn without_ticket(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    let mut kept_any = false;
    let mut separator = "";
    let mut rest = query;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let (piece, tail) = rest.split_at(end);
        if !is_ticket_parameter(piece) {
            if kept_any {
                out.push_str(separator);
            }
            out.push_str(piece);
            kept_any = true;
        }
        let (Some(next_separator), Some(after)) = (tail.get(..1), tail.get(1..)) else {
            break;
        };
        separator = next_separator;
        rest = after;
    }
    out
}

/// Whether a query parameter is named `ticket` (after one percent-decoding, without case).
fn is_ticket_parameter(piece: &str) -> bool {
    let name = piece.split('=').next().unwrap_or_default();
    let mut decoded = Vec::with_capacity(name.len());
    let mut bytes = name.as_bytes();
    while let Some((&b, tail)) = bytes.split_first() {
        match (b, tail) {
            (b'%', [high, low, more @ ..]) => match (hex_value(*high), hex_value(*low)) {
                (Some(high), Some(low)) => {
                    decoded.push(high << 4 | low);
                    bytes = more;
                    continue;
                }
                _ => decoded.push(b),
            },
            (b'+', _) => decoded.push(b' '),
            _ => decoded.push(b),
        }
        bytes = tail;
    }
    decoded.trim_ascii().eq_ignore_ascii_case(b"ticket")
}

/// Percent-encodes a value for a query string (RFC 3986 unreserved characters pass).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3 / 2);
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_redirect_table() {
        let refused = [
            "",
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "http://evil.com",
            "https:evil.com",
            "javascript:alert(1)",
            "data:text/html,x",
            "evil.com",
            " /ok",
            "/ok path",
            "/ok\tpath",
            "/ok\npath",
            "/ok\r\nSet-Cookie: a=b",
            "/%2f%2fevil.com",
            "/%2F/evil.com",
            "/%5cevil.com",
            "/a%0d%0aSet-Cookie:x",
            "/a%00",
            "/\u{3000}evil",
            "/é",
            "\u{FEFF}/x",
        ];
        for input in refused {
            assert_eq!(safe_next(input), "/", "{input:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_NEXT_LEN));
        assert_eq!(safe_next(&long), "/");
        for ok in ["/", "/a/b?c=d&e=%2F#frag", "/index.html", "/?next=//x"] {
            assert_eq!(safe_next(ok), ok);
        }
    }

    /// Each input → its canonical form, or `None` when refused (`safe_next` gives `/`).
    const CANONICAL_TABLE: &[(&str, Option<&str>)] = &[
        // Already canonical: unchanged, byte for byte.
        ("/", Some("/")),
        ("/a/b/", Some("/a/b/")),
        ("/a?b=c&&d=%2F;e#f", Some("/a?b=c&&d=%2F;e#f")),
        ("/caf%C3%A9", Some("/caf%C3%A9")),
        ("/a?x=/../b//c", Some("/a?x=/../b//c")),
        ("/?", Some("/")),
        // Dot segments next to doubled slashes: resolved and merged, never `//host`.
        ("/.//evil.com", Some("/evil.com")),
        ("/./evil.com", Some("/evil.com")),
        ("/a/..//evil.com", Some("/evil.com")),
        ("/a/../..//evil.com", Some("/evil.com")),
        ("/a/b/..//./evil.com/x", Some("/a/evil.com/x")),
        ("/%2e%2e//evil", Some("/evil")),
        ("/%2E%2E//evil", Some("/evil")),
        ("/%2e//evil", Some("/evil")),
        ("/.%2e//evil", Some("/evil")),
        ("/..", Some("/")),
        ("/a/b/..", Some("/a/")),
        ("/a/./b/.", Some("/a/b/")),
        ("/a//b", Some("/a/b")),
        ("/a///b//", Some("/a/b/")),
        ("/a%2eb", Some("/a.b")),
        ("/a/..?next=//evil.com", Some("/?next=//evil.com")),
        ("/a;b=c/d", Some("/a;b=c/d")),
        // Encoded slashes, backslashes and percents in the path: refused.
        ("/./%2Fevil.com", None),
        ("/.%2F%2Fevil.com", None),
        ("/a/..%2F%2Fevil.com", None),
        ("/%2e%2e%2f%2fevil", None),
        ("/a%2Fb", None),
        ("/a%5cb", None),
        ("/.%5C%5Cevil.com", None),
        ("/%252F%252Fevil.com", None),
        ("/%252e%252e//evil", None),
        ("/a%25", None),
        ("/%c0%af%c0%afevil.com", None),
        ("/%C0%AE%C0%AE//evil", None),
        ("/a%2", None),
        ("/a%zz", None),
        ("/a%", None),
        // Backslash variants: refused wherever they are.
        ("/.\\/evil.com", None),
        ("/./\\evil.com", None),
        ("/a/..\\/evil.com", None),
        ("/?x=\\", None),
        // Parameters on dot or empty segments mean different paths to different servers.
        ("/..;/evil.com", None),
        ("/a/..;x//evil.com", None),
        ("/.;/evil.com", None),
        ("/;x/evil.com", None),
        ("/a/;/evil.com", None),
        ("/%3bv/evil.com", None),
        ("/..%3B/evil.com", None),
        ("/a%3Bb/c", Some("/a%3Bb/c")),
        // The reserved prefix is never a place to land, in any spelling.
        ("/.podgate/callback?ticket=t", None),
        ("/.podgate/logout", None),
        ("/.PODGATE/callback", None),
        ("/%2epodgate/callback", None),
        ("/x/../.podgate/callback", None),
        ("/.//.podgate/callback", None),
        ("/a/.podgate", None),
        // A login ticket in the query is removed, whatever its spelling; the rest stays.
        ("/a?ticket=t", Some("/a")),
        ("/a?ticket=t&b=1", Some("/a?b=1")),
        ("/a?b=1&ticket=t", Some("/a?b=1")),
        ("/a?b=1&ticket=t&c=2", Some("/a?b=1&c=2")),
        ("/a?b=1;ticket=t;c=2", Some("/a?b=1;c=2")),
        ("/a?TICKET=t&Ticket=u", Some("/a")),
        ("/a?%74icket=t", Some("/a")),
        ("/a?%54%49%43%4B%45%54=t", Some("/a")),
        ("/a?ticket", Some("/a")),
        ("/a?ticket=t#x", Some("/a#x")),
        ("/a?+ticket+=t", Some("/a")),
        ("/a?tickets=t&xticket=u", Some("/a?tickets=t&xticket=u")),
        ("/a?b=ticket", Some("/a?b=ticket")),
        ("/a?next=/x%3Fticket%3Dt", Some("/a?next=/x%3Fticket%3Dt")),
    ];

    #[test]
    fn next_is_normalised_or_refused() {
        for (input, want) in CANONICAL_TABLE {
            let got = canonical_next(input);
            assert_eq!(got.as_deref(), *want, "{input:?}");
            assert_eq!(safe_next(input), want.unwrap_or("/"), "{input:?}");
            if let Some(out) = got {
                // Canonical means a fixed point, and never a network-path reference.
                assert_eq!(
                    canonical_next(&out).as_deref(),
                    Some(out.as_str()),
                    "{input:?}"
                );
                assert!(is_safe_next(&out));
                assert!(!out.starts_with("//"), "{input:?} -> {out:?}");
                assert_eq!(is_safe_next(input), *input == out, "{input:?}");
            }
        }
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query_value("/a b?c=d&e"), "/a%20b%3Fc%3Dd%26e");
        assert_eq!(encode_query_value("x-Y_z.~"), "x-Y_z.~");
    }
}
