//! The proxy-wasm header-map wire format, decoded without trusting the host: a count, then a
//! (name length, value length) pair per header, then each name and value followed by a NUL.
//! The SDK's own decoder panics on a non-UTF-8 name or a short buffer; this one answers `Err`
//! on a short buffer and hands names over as bytes.

/// Why a header map could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the header map is truncated or its lengths do not add up")]
    Truncated,
}

fn read_u32(bytes: &[u8], at: usize) -> Result<usize, WireError> {
    let raw: [u8; 4] = bytes
        .get(at..at.checked_add(4).ok_or(WireError::Truncated)?)
        .and_then(|s| s.try_into().ok())
        .ok_or(WireError::Truncated)?;
    usize::try_from(u32::from_le_bytes(raw)).map_err(|_| WireError::Truncated)
}

/// One header as borrowed name and value bytes.
pub type HeaderSlices<'a> = (&'a [u8], &'a [u8]);

/// Decodes a serialized header map into borrowed `(name, value)` byte slices, in order, without
/// copying. Names are not checked here: `gate::Request::from_slices` refuses a name that is not
/// UTF-8, and the response path only compares names as bytes.
pub fn decode_header_map(bytes: &[u8]) -> Result<Vec<HeaderSlices<'_>>, WireError> {
    let mut pairs = HeaderPairs::new(bytes)?;
    let mut out = Vec::with_capacity(pairs.remaining);
    for pair in &mut pairs {
        out.push(pair?);
    }
    Ok(out)
}

/// The headers of a serialized map one at a time, borrowed, allocating nothing (the decision
/// memo reads a request this way before anything is decoded). An error ends the iteration.
#[derive(Debug, Clone)]
pub struct HeaderPairs<'a> {
    bytes: &'a [u8],
    /// Where the next (name length, value length) pair is.
    sizes: usize,
    /// Where the next name starts.
    data: usize,
    remaining: usize,
}

impl<'a> HeaderPairs<'a> {
    /// Checks the count against the buffer; each header is checked as it is reached.
    pub fn new(bytes: &'a [u8]) -> Result<Self, WireError> {
        if bytes.is_empty() {
            return Ok(HeaderPairs {
                bytes,
                sizes: 4,
                data: 4,
                remaining: 0,
            });
        }
        let count = read_u32(bytes, 0)?;
        let sizes_end = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(4))
            .filter(|end| *end <= bytes.len())
            .ok_or(WireError::Truncated)?;
        Ok(HeaderPairs {
            bytes,
            sizes: 4,
            data: sizes_end,
            remaining: count,
        })
    }

    /// The next `len` bytes of data, and the NUL after them skipped.
    fn take(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        let end = self.data.checked_add(len).ok_or(WireError::Truncated)?;
        let slice = self.bytes.get(self.data..end).ok_or(WireError::Truncated)?;
        // Each string is followed by a NUL that is not part of it.
        self.data = end.checked_add(1).ok_or(WireError::Truncated)?;
        Ok(slice)
    }

    fn pair(&mut self) -> Result<HeaderSlices<'a>, WireError> {
        let name_len = read_u32(self.bytes, self.sizes)?;
        let value_len = read_u32(self.bytes, self.sizes + 4)?;
        self.sizes += 8;
        let name = self.take(name_len)?;
        let value = self.take(value_len)?;
        Ok((name, value))
    }
}

impl<'a> Iterator for HeaderPairs<'a> {
    type Item = Result<HeaderSlices<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let pair = self.pair();
        // After an error there is nothing more to read.
        self.remaining = if pair.is_ok() { self.remaining - 1 } else { 0 };
        Some(pair)
    }
}

/// Encodes header pairs in the same format (what the filter hands Envoy for a local reply).
/// Lengths are `u32`: a pair longer than 4 GiB is a caller's bug and is cut to its length's
/// low 32 bits, which `decode_header_map` then refuses as truncated.
pub fn encode_header_map<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let data: usize = pairs
        .iter()
        .map(|(n, v)| n.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        encode_header_map(pairs)
    }

    #[test]
    fn decodes_in_order_with_raw_values() {
        let bytes = encode(&[(b":authority", b"h"), (b"x", b"\xff\xfe"), (b"empty", b"")]);
        assert_eq!(
            decode_header_map(&bytes).unwrap(),
            vec![
                (&b":authority"[..], &b"h"[..]),
                (&b"x"[..], &b"\xff\xfe"[..]),
                (&b"empty"[..], &b""[..]),
            ]
        );
        assert_eq!(decode_header_map(&[]).unwrap(), vec![]);
        // Any name bytes decode; `Request::from_slices` is what refuses a non-UTF-8 name.
        let raw = encode(&[(b"x-\xff", b"v")]);
        assert_eq!(
            decode_header_map(&raw).unwrap(),
            vec![(&b"x-\xff"[..], &b"v"[..])]
        );
    }

    #[test]
    fn refuses_what_the_sdk_would_panic_on() {
        let good = encode(&[(b"a", b"b")]);
        // Everything but the final NUL is needed.
        for cut in 1..good.len() - 1 {
            assert_eq!(
                decode_header_map(&good[..cut]),
                Err(WireError::Truncated),
                "{cut}"
            );
        }
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_header_map(&huge), Err(WireError::Truncated));
        let mut long = good;
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_header_map(&long), Err(WireError::Truncated));
    }
}
