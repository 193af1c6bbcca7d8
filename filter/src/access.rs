//! What the access log says about each request: the filter state `wasm.podgate`
//! (`podgate_protocol::access_log`), and, on a forward to a pod, its pod and port for Envoy's
//! answer should the pod fail (`wasm.podgate_pod`, `wasm.podgate_port`).

use podgate_protocol::access_log;
use podgate_protocol::gate::Outcome;

use crate::log;
use crate::raw::{self, LogLevel};

/// Tells the access log who the request is for, the pod, the port and the decision
/// (`access_log`), and Envoy's local replies the pod and port of a forward. A failure is logged,
/// never a reason to refuse the request.
pub(crate) fn record(outcome: &Outcome) {
    let value = match outcome {
        Outcome::Forward(forward) => return forward.each_filter_state(set),
        Outcome::Deny(denial) => access_log::line(
            None,
            None,
            None,
            access_log::Decision::Deny,
            Some(denial.reason()),
        ),
        Outcome::Page(reply) | Outcome::Wake { page: reply, .. } => access_log::line(
            None,
            None,
            None,
            access_log::Decision::Deny,
            Some(reply.reason),
        ),
        // Recorded once the exchange or the renewal decides it (`decide_again`, or the
        // refusal).
        Outcome::Exchange(_) | Outcome::Renew(_) => return,
        Outcome::Preflight(_) => {
            access_log::line(None, None, None, access_log::Decision::Preflight, None)
        }
        Outcome::Answer(_) => {
            access_log::line(None, None, None, access_log::Decision::Answer, None)
        }
    };
    set(access_log::PROPERTY, &value);
}

/// The access log's line for a request refused for `reason` (after a wait for the control
/// plane, or when a host call failed), in place of any line set for it before.
pub(crate) fn record_refusal(reason: &str) {
    set(
        access_log::PROPERTY,
        &access_log::line(None, None, None, access_log::Decision::Deny, Some(reason)),
    );
}

fn set(property: &str, value: &str) {
    if let Err(status) = raw::set_property(property, value) {
        log(
            LogLevel::Error,
            &format!("podgate: cannot set the filter state {property}: {status:?}"),
        );
    }
}

/// The address of the current stream's client (empty when unknown), so that the control plane
/// limits failed tokens per client.
pub(crate) fn client_address() -> String {
    let source = raw::property(&["source", "address"]).ok();
    source
        .as_deref()
        .and_then(|s| std::str::from_utf8(s).ok())
        .map(podgate_protocol::exchange::client_ip)
        .unwrap_or_default()
        .to_owned()
}
