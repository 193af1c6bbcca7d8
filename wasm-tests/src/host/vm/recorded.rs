//! What the guest did, read back for assertions: metrics, logs, host calls, foreign calls,
//! shared data, fuel, and whether (and why) the VM died.

use std::collections::BTreeMap;

use super::super::abi::LogLevel;
use super::super::outcome::StreamStats;
use super::super::state::{ForeignCall, HttpCall, LocalReply, MetricKind};
use super::FilterVm;

impl FilterVm {
    /// Counters and gauges by name (negative gauges read as 0).
    pub fn metrics(&self) -> BTreeMap<String, u64> {
        self.store
            .data()
            .metrics
            .iter()
            .filter(|m| m.kind != MetricKind::Histogram)
            .map(|m| (m.name.clone(), u64::try_from(m.value).unwrap_or(0)))
            .collect()
    }

    /// One counter or gauge; `None` if the guest never defined it.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.metrics().get(name).copied()
    }

    /// Histogram samples by name.
    pub fn histograms(&self) -> BTreeMap<String, Vec<u64>> {
        self.store
            .data()
            .metrics
            .iter()
            .filter(|m| m.kind == MetricKind::Histogram)
            .map(|m| (m.name.clone(), m.samples.clone()))
            .collect()
    }

    /// Everything the guest logged, in order.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.store.data().logs.clone()
    }

    pub fn clear_logs(&mut self) {
        self.store.data_mut().logs.clear();
    }

    /// Host calls since the VM was created, by import name.
    pub fn host_calls(&self) -> BTreeMap<String, u64> {
        self.store.data().host_calls.clone()
    }

    /// Imports of the module this host does not implement: they exist only
    /// so the module instantiates, and answer Unimplemented when called.
    pub fn stubbed_imports(&self) -> &[String] {
        &self.stubbed_imports
    }

    /// Calls to imports this host does not model (they answered an error).
    pub fn unimplemented_calls(&self) -> BTreeMap<String, u64> {
        self.store.data().unimplemented.clone()
    }

    /// Names of the foreign functions the guest called, in order.
    pub fn foreign_calls(&self) -> Vec<String> {
        self.store
            .data()
            .foreign_calls
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    /// Foreign calls with their context and arguments.
    pub fn foreign_call_records(&self) -> Vec<ForeignCall> {
        self.store.data().foreign_calls.clone()
    }

    /// Shared data the guest stored under `key`.
    pub fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        self.store
            .data()
            .shared_data
            .get(key.as_bytes())
            .map(|(v, _)| v.clone())
    }

    /// How many times the guest called `proxy_done`.
    pub fn done_calls(&self) -> u32 {
        self.store.data().done_calls
    }

    /// Cost and decisions of the most recently closed stream.
    pub fn last_stream(&self) -> Option<&StreamStats> {
        self.last_stream.as_ref()
    }

    /// Fuel spent by every call into the guest since the VM was created.
    pub fn fuel_used(&self) -> u64 {
        self.fuel_total
    }

    /// True once the guest trapped; every later request is `VmDead`.
    pub fn is_dead(&self) -> bool {
        self.failure.is_some()
    }

    /// Why the VM died.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The local reply an open stream sent, if any.
    pub fn local_reply_of(&self, context_id: u32) -> Option<LocalReply> {
        self.store
            .data()
            .streams
            .get(&context_id)?
            .local_reply
            .clone()
    }

    /// An open stream's request headers as they stand now (after the guest's edits): for a
    /// stream it paused and let go on later, what Envoy would forward.
    pub fn request_headers_of(&self, context_id: u32) -> Option<Vec<(String, String)>> {
        let stream = self.store.data().streams.get(&context_id)?;
        stream
            .request_headers
            .as_ref()
            .map(super::super::state::headers::to_strings)
    }

    /// How many times the guest let an open stream go on (`proxy_continue_stream`), as it does
    /// for one it paused.
    pub fn continued(&self, context_id: u32) -> Option<u32> {
        Some(self.store.data().streams.get(&context_id)?.continued)
    }

    /// The `proxy_http_call`s made and not answered yet, oldest first
    /// ([`FilterVm::accept_http_calls`]).
    pub fn pending_http_calls(&self) -> Vec<HttpCall> {
        self.store.data().http_calls.clone()
    }
}
