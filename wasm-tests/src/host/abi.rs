//! The proxy-wasm ABI 0.2.1 as the host sees it: status codes, enum values,
//! and the wire format of header maps and property paths.

/// Status codes returned by host functions (`WasmResult` in Envoy).
pub mod status {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const BAD_ARGUMENT: u32 = 2;
    pub const SERIALIZATION_FAILURE: u32 = 3;
    pub const INVALID_MEMORY_ACCESS: u32 = 6;
    pub const EMPTY: u32 = 7;
    pub const CAS_MISMATCH: u32 = 8;
    pub const INTERNAL_FAILURE: u32 = 10;
    pub const UNIMPLEMENTED: u32 = 12;
}

/// `MapType` values.
pub mod map_type {
    pub const HTTP_REQUEST_HEADERS: u32 = 0;
    pub const HTTP_REQUEST_TRAILERS: u32 = 1;
    pub const HTTP_RESPONSE_HEADERS: u32 = 2;
    pub const HTTP_RESPONSE_TRAILERS: u32 = 3;
    pub const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
}

/// `BufferType` values.
pub mod buffer_type {
    pub const HTTP_REQUEST_BODY: u32 = 0;
    pub const HTTP_RESPONSE_BODY: u32 = 1;
    pub const HTTP_CALL_RESPONSE_BODY: u32 = 4;
    pub const VM_CONFIGURATION: u32 = 6;
    pub const PLUGIN_CONFIGURATION: u32 = 7;
}

/// `StreamType` values (for `proxy_continue_stream` / `proxy_close_stream`).
pub mod stream_type {
    pub const HTTP_REQUEST: u32 = 0;
    pub const HTTP_RESPONSE: u32 = 1;
}

/// `MetricType` values.
pub mod metric_type {
    pub const COUNTER: u32 = 0;
    pub const GAUGE: u32 = 1;
    pub const HISTOGRAM: u32 = 2;
}

/// `Action` returned by the stream callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    pub(crate) fn from_raw(raw: u32) -> Self {
        // Envoy treats anything that is not Continue as a stop.
        if raw == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

/// Log levels of `proxy_log`, ordered from the most verbose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// A header map: ordered pairs of raw bytes, names lowercase as in Envoy.
pub(crate) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Serialize pairs in the proxy-wasm map format: `u32` count, then a
/// `(name_len, value_len)` `u32` pair per entry, then each name and value
/// followed by a NUL byte. All integers little endian.
pub(crate) fn serialize_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let data: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&len_u32(name.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(value.len()).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// Parse the map format written by the guest. `None` when the bytes do not
/// describe a well-formed map (the caller answers `SerializationFailure`).
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Option<Pairs> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    let sizes_end = count.checked_mul(8)?.checked_add(4)?;
    if sizes_end > bytes.len() {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    let mut data = sizes_end;
    for n in 0..count {
        let name_len = read_u32(bytes, 4 + n * 8)? as usize;
        let value_len = read_u32(bytes, 8 + n * 8)? as usize;
        let name = take_nul_terminated(bytes, &mut data, name_len)?;
        let value = take_nul_terminated(bytes, &mut data, value_len)?;
        pairs.push((name, value));
    }
    Some(pairs)
}

/// Split a property path (parts joined by NUL) into its parts.
pub(crate) fn split_property_path(bytes: &[u8]) -> Vec<String> {
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
}

fn take_nul_terminated(bytes: &[u8], at: &mut usize, len: usize) -> Option<Vec<u8>> {
    let end = at.checked_add(len)?;
    let value = bytes.get(*at..end)?.to_vec();
    // The terminator is part of the format; a missing one means a truncated map.
    if *bytes.get(end)? != 0 {
        return None;
    }
    *at = end + 1;
    Some(value)
}

pub(crate) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Pairs {
        list.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn map_format_matches_the_spec_layout() {
        let bytes = serialize_pairs(&pairs(&[("a", "bc"), ("", "")]));
        let expected: Vec<u8> = [
            &2u32.to_le_bytes()[..],
            &1u32.to_le_bytes(),
            &2u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            b"a\0bc\0\0\0",
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(
            deserialize_pairs(&bytes).unwrap(),
            pairs(&[("a", "bc"), ("", "")])
        );
    }

    #[test]
    fn truncated_or_lying_maps_are_rejected() {
        let bytes = serialize_pairs(&pairs(&[("key", "value")]));
        for cut in 1..bytes.len() {
            assert_eq!(deserialize_pairs(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(deserialize_pairs(&huge), None);
        assert_eq!(deserialize_pairs(&[]), Some(Vec::new()));
        assert_eq!(deserialize_pairs(&0u32.to_le_bytes()), Some(Vec::new()));
    }

    #[test]
    fn property_paths_split_on_nul() {
        assert_eq!(
            split_property_path(b"request\0headers"),
            vec!["request".to_string(), "headers".to_string()]
        );
        assert!(split_property_path(b"").is_empty());
    }
}
