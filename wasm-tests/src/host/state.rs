//! Everything the host keeps for one VM: the data the guest reads (headers,
//! buffers, properties, clock) and the record of what it did (logs, metrics,
//! local replies, foreign calls, host-call counts).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::{Memory, TypedFunc};
use wasmtime_wasi::p1::WasiP1Ctx;

use super::abi::{self, LogLevel, Pairs};

/// The clock the guest sees, shared by `proxy_get_current_time_nanoseconds`
/// and the WASI wall clock. `REAL_TIME` means "follow the system clock".
#[derive(Clone, Debug)]
pub(crate) struct Clock(Arc<AtomicU64>);

const REAL_TIME: u64 = u64::MAX;

impl Clock {
    pub(crate) fn new() -> Self {
        Clock(Arc::new(AtomicU64::new(REAL_TIME)))
    }

    pub(crate) fn set(&self, unix_nanos: u64) {
        // u64::MAX is the sentinel; the year 2554 is far enough away.
        self.0
            .store(unix_nanos.min(REAL_TIME - 1), Ordering::SeqCst);
    }

    pub(crate) fn follow_system(&self) {
        self.0.store(REAL_TIME, Ordering::SeqCst);
    }

    pub(crate) fn now_nanos(&self) -> u64 {
        match self.0.load(Ordering::SeqCst) {
            REAL_TIME => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            fixed => fixed,
        }
    }
}

impl wasmtime_wasi::HostWallClock for Clock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }
}

/// A local reply the filter asked for with `proxy_send_local_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub grpc_status: i32,
}

/// A call the guest made through `proxy_http_call`, waiting for the test to answer it
/// (`FilterVm::answer_http_call`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    pub token: u32,
    /// The cluster called.
    pub upstream: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
}

/// A call the guest made through `proxy_call_foreign_function`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignCall {
    pub context_id: u32,
    pub name: String,
    pub arguments: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug)]
pub(crate) struct Metric {
    pub(crate) name: String,
    pub(crate) kind: MetricKind,
    pub(crate) value: i64,
    pub(crate) samples: Vec<u64>,
}

/// Per-HTTP-stream data, keyed by context id.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub(crate) request_headers: Option<Pairs>,
    pub(crate) request_body: Option<Vec<u8>>,
    pub(crate) request_trailers: Option<Pairs>,
    pub(crate) response_headers: Option<Pairs>,
    pub(crate) response_body: Option<Vec<u8>>,
    pub(crate) response_trailers: Option<Pairs>,
    pub(crate) local_reply: Option<LocalReply>,
    pub(crate) local_reply_count: u32,
    pub(crate) reset: bool,
    pub(crate) continued: u32,
}

/// The store data of a VM.
pub(crate) struct HostState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) memory: Option<Memory>,
    pub(crate) allocate: Option<TypedFunc<u32, u32>>,
    pub(crate) clock: Clock,
    pub(crate) log_level: LogLevel,
    pub(crate) echo_logs: bool,
    pub(crate) logs: Vec<(LogLevel, String)>,
    pub(crate) host_calls: BTreeMap<String, u64>,
    /// `PODGATE_FUEL_TRACE` set: every host call prints the fuel left in the callback, so the
    /// differences show where a callback's wasm instructions go (`examples/fuel_trace.rs`).
    pub(crate) trace_fuel: bool,
    pub(crate) unimplemented: BTreeMap<String, u64>,
    pub(crate) root_context_id: u32,
    pub(crate) effective_context: u32,
    pub(crate) vm_configuration: Vec<u8>,
    pub(crate) plugin_configuration: Vec<u8>,
    pub(crate) properties: HashMap<Vec<String>, Vec<u8>>,
    pub(crate) streams: HashMap<u32, StreamState>,
    pub(crate) metrics: Vec<Metric>,
    pub(crate) shared_data: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    pub(crate) next_cas: u32,
    pub(crate) queues: Vec<(String, Vec<Vec<u8>>)>,
    pub(crate) tick_period_ms: u32,
    pub(crate) foreign_calls: Vec<ForeignCall>,
    pub(crate) done_calls: u32,
    /// `proxy_http_call` is taken (`FilterVm::accept_http_calls`); otherwise it fails, as a
    /// host without the cluster would answer.
    pub(crate) http_calls_accepted: bool,
    /// `proxy_get_current_time_nanoseconds` fails (`FilterVm::fail_the_clock`).
    pub(crate) clock_fails: bool,
    pub(crate) http_calls: Vec<HttpCall>,
    pub(crate) next_http_call: u32,
    /// The answer `proxy_on_http_call_response` reads, while it runs.
    pub(crate) http_call_response_headers: Option<Pairs>,
    pub(crate) http_call_response_body: Option<Vec<u8>>,
}

impl HostState {
    pub(crate) fn new(wasi: WasiP1Ctx, clock: Clock) -> Self {
        HostState {
            wasi,
            memory: None,
            allocate: None,
            clock,
            log_level: LogLevel::Info,
            echo_logs: false,
            logs: Vec::new(),
            host_calls: BTreeMap::new(),
            trace_fuel: std::env::var_os("PODGATE_FUEL_TRACE").is_some(),
            unimplemented: BTreeMap::new(),
            root_context_id: 0,
            effective_context: 0,
            vm_configuration: Vec::new(),
            plugin_configuration: Vec::new(),
            properties: HashMap::new(),
            streams: HashMap::new(),
            metrics: Vec::new(),
            shared_data: HashMap::new(),
            next_cas: 1,
            queues: Vec::new(),
            tick_period_ms: 0,
            foreign_calls: Vec::new(),
            done_calls: 0,
            http_calls_accepted: false,
            clock_fails: false,
            http_calls: Vec::new(),
            next_http_call: 1,
            http_call_response_headers: None,
            http_call_response_body: None,
        }
    }

    pub(crate) fn count(&mut self, name: &str) {
        bump(&mut self.host_calls, name);
    }

    pub(crate) fn count_unimplemented(&mut self, name: &str) {
        bump(&mut self.host_calls, name);
        bump(&mut self.unimplemented, name);
    }

    /// The stream the guest is acting on, if the effective context is one.
    pub(crate) fn stream(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.effective_context)
    }

    /// The header map of `map_type` for the effective stream. The outer
    /// `None` means the map type or context is wrong (BadArgument), the inner
    /// one that the map does not exist yet in this phase.
    pub(crate) fn map_slot(&mut self, map_type: u32) -> Option<&mut Option<Pairs>> {
        if map_type == abi::map_type::HTTP_CALL_RESPONSE_HEADERS {
            return Some(&mut self.http_call_response_headers);
        }
        let stream = self.stream()?;
        Some(match map_type {
            abi::map_type::HTTP_REQUEST_HEADERS => &mut stream.request_headers,
            abi::map_type::HTTP_REQUEST_TRAILERS => &mut stream.request_trailers,
            abi::map_type::HTTP_RESPONSE_HEADERS => &mut stream.response_headers,
            abi::map_type::HTTP_RESPONSE_TRAILERS => &mut stream.response_trailers,
            _ => return None,
        })
    }

    pub(crate) fn metric_mut(&mut self, id: u32) -> Option<&mut Metric> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.metrics.get_mut(index)
    }
}

fn bump(map: &mut BTreeMap<String, u64>, name: &str) {
    if let Some(count) = map.get_mut(name) {
        *count += 1;
    } else {
        map.insert(name.to_string(), 1);
    }
}

/// Header map edits with Envoy's semantics: names are lowercased, `set`
/// removes every copy then appends, pseudo-headers stay in front.
pub(crate) mod headers {
    use super::Pairs;

    pub(crate) fn lower(name: &[u8]) -> Vec<u8> {
        name.to_ascii_lowercase()
    }

    pub(crate) fn get<'a>(map: &'a Pairs, name: &[u8]) -> Option<&'a [u8]> {
        let name = lower(name);
        map.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }

    pub(crate) fn remove(map: &mut Pairs, name: &[u8]) {
        let name = lower(name);
        map.retain(|(k, _)| *k != name);
    }

    pub(crate) fn add(map: &mut Pairs, name: &[u8], value: &[u8]) {
        let name = lower(name);
        if name.first() == Some(&b':') {
            let at = map
                .iter()
                .position(|(k, _)| k.first() != Some(&b':'))
                .unwrap_or(map.len());
            map.insert(at, (name, value.to_vec()));
        } else {
            map.push((name, value.to_vec()));
        }
    }

    /// `setCopy` in current Envoy: remove all, then add.
    pub(crate) fn replace(map: &mut Pairs, name: &[u8], value: &[u8]) {
        remove(map, name);
        add(map, name, value);
    }

    pub(crate) fn replace_all(map: &mut Pairs, pairs: Pairs) {
        map.clear();
        for (name, value) in pairs {
            add(map, &name, &value);
        }
    }

    pub(crate) fn from_list<K: AsRef<[u8]>, V: AsRef<[u8]>>(list: &[(K, V)]) -> Pairs {
        let mut map = Pairs::new();
        for (name, value) in list {
            add(&mut map, name.as_ref(), value.as_ref());
        }
        map
    }

    pub(crate) fn to_strings(map: &Pairs) -> Vec<(String, String)> {
        map.iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::headers;

    #[test]
    fn set_removes_every_copy_and_pseudo_headers_stay_first() {
        let mut map = headers::from_list(&[(":path", "/"), ("x-a", "1"), ("X-A", "2"), ("b", "3")]);
        headers::replace(&mut map, b"x-a", b"9");
        headers::add(&mut map, b":authority", b"h");
        assert_eq!(
            headers::to_strings(&map),
            [
                (":path", "/"),
                (":authority", "h"),
                ("b", "3"),
                ("x-a", "9")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(headers::get(&map, b"X-A"), Some(&b"9"[..]));
    }
}
