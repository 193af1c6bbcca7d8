//! Request paths: which ones belong to the reserved prefix (`/.podgate/`), under any spelling.
//!
//! Envoy normalises the path before the filter runs (`normalize_path`, `merge_slashes`, escaped
//! slashes redirected), but the filter does not rely on it: a pod's server may decode, fold case,
//! split `;` parameters or resolve `..` in ways Envoy does not, and a ticket must never reach a
//! pod whatever that server makes of the path.

/// The reserved segment: `RESERVED_PREFIX` without its slashes.
const RESERVED_SEGMENT: &[u8; 8] = b".podgate";

/// Whether `path` is on the reserved prefix under any spelling a server on the way could read
/// as `/.podgate/…`: the path (up to the first `?`) holds a segment whose name is `.podgate`,
/// compared without ASCII case, after one percent-decoding, where
///
/// - segments are split at `/` and `\`, raw or percent-encoded;
/// - a name ends at `;` (path parameters, which some servers drop: `..;` is `..` to them),
///   at `#`, at an encoded `?` and at NUL, and trailing dots and spaces are ignored (`.podgate.`).
///
/// Any segment counts, not only the first: servers resolve `..`, `..;` and `\` differently, and
/// whichever way one does, it can only remove segments, never make a `.podgate` out of others.
/// So `/x/../.podgate/`, `/..;/.podgate/`, `/%2Epodgate/`, `/.PODGATE/`, `/.podgate%2F…` and
/// `/a/.podgate/b` are all reserved. Linear in the length of `path`; allocates nothing.
pub fn is_reserved(path: &[u8]) -> bool {
    let mut segment = Segment::default();
    let mut rest = path;
    while let Some((&raw, tail)) = rest.split_first() {
        if raw == b'?' {
            break;
        }
        let (byte, tail) = match (raw, tail) {
            (b'%', [high, low, more @ ..]) => match (hex_value(*high), hex_value(*low)) {
                (Some(high), Some(low)) => (high << 4 | low, more),
                _ => (raw, tail),
            },
            _ => (raw, tail),
        };
        rest = tail;
        match byte {
            b'/' | b'\\' => {
                if segment.is_reserved() {
                    return true;
                }
                segment = Segment::default();
            }
            b';' | b'#' | b'?' | 0 => segment.ended = true,
            _ => segment.push(byte),
        }
    }
    segment.is_reserved()
}

/// The name of the segment being read, as far as the comparison needs it.
#[derive(Default)]
struct Segment {
    /// The first bytes of the name.
    name: [u8; RESERVED_SEGMENT.len()],
    /// How many bytes of the name were stored in `name`.
    len: usize,
    /// A byte other than a trailing dot or space came after `name` was full.
    longer: bool,
    /// The name ended (`;`, `#`, encoded `?`, NUL); the rest of the segment is not compared.
    ended: bool,
}

impl Segment {
    fn push(&mut self, byte: u8) {
        if self.ended {
            return;
        }
        match self.name.get_mut(self.len) {
            Some(slot) => {
                *slot = byte;
                self.len += 1;
            }
            // Trailing dots and spaces are dropped by some servers (`.podgate.`); anything else
            // makes it another name.
            None if byte == b'.' || byte == b' ' => {}
            None => self.longer = true,
        }
    }

    fn is_reserved(&self) -> bool {
        self.len == RESERVED_SEGMENT.len()
            && !self.longer
            && self.name.eq_ignore_ascii_case(RESERVED_SEGMENT)
    }
}

/// The value of one hexadecimal digit.
pub(crate) fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_reserved_prefix_is_reserved() {
        let reserved = [
            "/.podgate/callback?ticket=t",
            "/.podgate/",
            "/.podgate",
            "/.podgate?ticket=t",
            "/.PODGATE/callback?ticket=t",
            "/.PodGate/callback",
            "/%2epodgate/callback?ticket=t",
            "/%2Epodgate/callback",
            "/%2e%70%6f%64%67%61%74%65/callback",
            "/.%50ODGATE/callback",
            "/.podgate%2Fcallback?ticket=t",
            "/.podgate%2fcallback",
            "/.podgate%5Ccallback",
            "/.podgate\\callback",
            "//.podgate/callback",
            "///.podgate//callback",
            "/./.podgate/callback",
            "/x/../.podgate/callback",
            "/x/%2e%2e/.podgate/callback",
            "/..;/.podgate/callback",
            "/x/..;/.podgate/callback",
            "\\.podgate\\callback",
            "/x\\..\\.podgate/callback",
            "/.podgate;jsessionid=1/callback",
            "/.podgate;/callback",
            "/.podgate%3Bx/callback",
            "/.podgate%3Fticket=t",
            "/.podgate#/../x",
            "/x#/../.podgate/callback",
            "/.podgate%00/callback",
            "/.podgate./callback",
            "/.podgate%20/callback",
            "/.podgate.%20./callback",
            "/a/.podgate/b",
            "/.podgate/x/../../y",
            ".podgate/callback",
        ];
        for path in reserved {
            assert!(is_reserved(path.as_bytes()), "{path:?} is not reserved");
        }
    }

    #[test]
    fn other_paths_are_not_reserved() {
        let ordinary = [
            "",
            "/",
            "/index.html",
            "/podgate/callback",
            "/.podgates/callback",
            "/x.podgate/callback",
            "/.podgatex",
            "/.podgat",
            "/.podgat%65x",
            "/..podgate",
            "/%252epodgate/callback",
            "/a?next=/.podgate/callback",
            "/a?/.podgate/",
            "/.podgate.x/",
            "/.pod gate/",
            "/%2",
            "/%",
            "/.podgate%2",
            "/.podgat%",
        ];
        for path in ordinary {
            assert!(!is_reserved(path.as_bytes()), "{path:?} is reserved");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_cost_one_pass() {
        let long = format!("/{}", "%2e%2E/..;/".repeat(20_000));
        assert!(!is_reserved(long.as_bytes()));
        assert!(is_reserved(format!("{long}.podgate").as_bytes()));
        for bytes in [&b"\xff\xfe%"[..], b"%%%", b"/\x00\x00", b"%2"] {
            let _ = is_reserved(bytes);
        }
    }
}
