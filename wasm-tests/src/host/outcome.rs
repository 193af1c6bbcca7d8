//! What a stream callback decided ([`Outcome`]) and what one stream cost ([`StreamStats`]),
//! as `FilterVm` reports them.

use std::collections::BTreeMap;

use super::abi::Action;

/// What a stream callback decided, as Envoy would act on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The filter continued: `headers` are the headers Envoy would pass on
    /// (request headers for the request phase, response headers for the
    /// response phase), in order, after the filter's edits.
    Continue { headers: Vec<(String, String)> },
    /// The filter answered itself with `proxy_send_local_response`; nothing
    /// is forwarded. `details` is empty unless the filter set it.
    LocalReply {
        status: u32,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        details: String,
    },
    /// The filter returned Pause without a local reply: Envoy would hold the
    /// stream (nothing forwarded yet).
    Paused { headers: Vec<(String, String)> },
    /// The filter reset the stream (`proxy_close_stream`).
    Reset,
    /// The guest trapped (a panic aborts to `unreachable`) during this
    /// stream. The VM is dead from now on. `panic` is the last critical log
    /// the guest wrote during the call (the SDK logs the panic message there).
    Trapped {
        message: String,
        panic: Option<String>,
    },
    /// The VM died earlier. Envoy with `fail_open: false` answers these
    /// requests itself (503); nothing reaches the upstream.
    VmDead,
}

impl Outcome {
    /// The headers Envoy would forward, if the filter continued.
    pub fn forwarded(&self) -> Option<&[(String, String)]> {
        match self {
            Outcome::Continue { headers } => Some(headers),
            _ => None,
        }
    }

    /// Status of a local reply.
    pub fn status(&self) -> Option<u32> {
        match self {
            Outcome::LocalReply { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// First value of a header (case-insensitive) among the forwarded,
    /// paused or local-reply headers.
    pub fn header(&self, name: &str) -> Option<&str> {
        let list = match self {
            Outcome::Continue { headers } | Outcome::Paused { headers } => headers,
            Outcome::LocalReply { headers, .. } => headers,
            _ => return None,
        };
        list.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header (case-insensitive), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        let list = match self {
            Outcome::Continue { headers } | Outcome::Paused { headers } => headers,
            Outcome::LocalReply { headers, .. } => headers,
            _ => return Vec::new(),
        };
        list.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Local reply body as text (lossy).
    pub fn body_text(&self) -> Option<String> {
        match self {
            Outcome::LocalReply { body, .. } => Some(String::from_utf8_lossy(body).into_owned()),
            _ => None,
        }
    }

    /// True when nothing can reach the upstream because of this outcome.
    pub fn is_blocked(&self) -> bool {
        !matches!(self, Outcome::Continue { .. })
    }
}

/// Cost and decisions of one stream, from context creation to deletion.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub context_id: u32,
    /// What `proxy_on_request_headers` returned, if it returned.
    pub request_headers_action: Option<Action>,
    /// Wasm fuel (≈ instructions) spent in every callback of the stream.
    pub fuel: u64,
    /// Host calls made during the stream, by import name.
    pub host_calls: BTreeMap<String, u64>,
    /// How many times the filter called `proxy_send_local_response`.
    pub local_replies: u32,
}
