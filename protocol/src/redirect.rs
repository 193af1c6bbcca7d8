//! Redirect targets: `next` is only ever a same-host relative path.

/// Longest `next` kept; longer ones fall back to `/`.
pub const MAX_NEXT_LEN: usize = 2048;

/// Returns `input` when it is a safe same-host path (starts with one `/`, no scheme, no
/// authority, no backslash, no whitespace or control characters, no encoded slash tricks that
/// browsers would turn into an authority); otherwise `/`.
pub fn safe_next(input: &str) -> String {
    if is_safe_next(input) {
        input.to_owned()
    } else {
        "/".to_owned()
    }
}

/// The check behind [`safe_next`].
pub fn is_safe_next(input: &str) -> bool {
    let bytes = input.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NEXT_LEN || bytes[0] != b'/' {
        return false;
    }
    // `//host` and `/\host` are network-path references to browsers.
    if matches!(bytes.get(1), Some(b'/') | Some(b'\\')) {
        return false;
    }
    if !bytes.iter().all(|&b| b.is_ascii_graphic()) || input.contains('\\') {
        return false;
    }
    // Percent-encoded slash, backslash or control characters could be decoded into the above by
    // a later hop; refuse them rather than reason about every decoder.
    let lower = input.to_ascii_lowercase();
    for bad in ["%2f", "%5c", "%00", "%09", "%0a", "%0d", "%20"] {
        if lower.starts_with(&format!("/{bad}")) {
            return false;
        }
    }
    !lower.contains("%0a") && !lower.contains("%0d") && !lower.contains("%00")
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
        for ok in [
            "/",
            "/a/b?c=d&e=%2F#frag",
            "/index.html",
            "/a//b",
            "/?next=//x",
        ] {
            assert_eq!(safe_next(ok), ok);
        }
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query_value("/a b?c=d&e"), "/a%20b%3Fc%3Dd%26e");
        assert_eq!(encode_query_value("x-Y_z.~"), "x-Y_z.~");
    }
}
