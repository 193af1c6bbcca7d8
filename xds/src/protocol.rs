//! The state-of-the-world ADS protocol for one stream, as a pure state machine (no I/O, no tokio).
//!
//! Requests and snapshots go in, responses come out. Per type URL the machine tracks what Envoy
//! subscribed to, what was last sent (version, nonce, names) and what Envoy rejected.
//!
//! Flow control: at most one response per type is in flight. A snapshot that arrives while a
//! response awaits its ACK/NACK is remembered, and the latest one is sent when the answer comes,
//! so a slow Envoy gets one coalesced update instead of a queue of stale ones.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use crate::snapshot::{ResourceType, Snapshot};

/// Identifies this server in responses (`control_plane.identifier`).
pub const CONTROL_PLANE_ID: &str = "podgate";

/// What a request meant, for counters and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestEvent {
    /// A request that answers nothing new: a first request (no nonce), a change sent before any
    /// response arrived, or a subscription update repeating an already answered nonce.
    Subscribe {
        /// Type URL subscribed to.
        type_url: String,
    },
    /// Envoy applied the response with this version.
    Ack {
        /// Type URL acknowledged.
        type_url: String,
        /// Version Envoy now runs.
        version: String,
    },
    /// Envoy rejected the response with this version and keeps its previous config.
    Nack {
        /// Type URL rejected.
        type_url: String,
        /// The version we sent and Envoy rejected.
        rejected_version: String,
        /// Envoy's error message.
        message: String,
    },
    /// The nonce is not the one of our latest response: Envoy answers an older response.
    Stale {
        /// Type URL of the stale request.
        type_url: String,
    },
    /// A type URL this server does not serve; ignored.
    UnknownType {
        /// The unknown type URL.
        type_url: String,
    },
}

/// The result of feeding one request to the state machine.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutcome {
    /// What the request meant.
    pub event: RequestEvent,
    /// Responses to send, in order.
    pub responses: Vec<DiscoveryResponse>,
}

/// Per type URL state of one stream.
#[derive(Debug, Default)]
struct TypeState {
    /// The names Envoy currently asks for (meaningless when `wildcard`).
    names: BTreeSet<String>,
    wildcard: bool,
    /// Version, nonce and names of the last response sent for this type.
    sent: Option<Sent>,
    /// Whether the last sent response still awaits its ACK or NACK.
    awaiting_answer: bool,
    /// The last version Envoy rejected; never resent.
    rejected_version: Option<String>,
    /// The last version Envoy acknowledged.
    acked_version: Option<String>,
}

#[derive(Debug)]
struct Sent {
    version: String,
    nonce: String,
    wildcard: bool,
    names: BTreeSet<String>,
}

/// The protocol state of one ADS stream.
#[derive(Debug, Default)]
pub struct AdsStream {
    node_id: Option<String>,
    snapshot: Option<Arc<Snapshot>>,
    types: BTreeMap<ResourceType, TypeState>,
    next_nonce: u64,
}

impl AdsStream {
    /// A stream that has received nothing yet.
    pub fn new() -> AdsStream {
        AdsStream::default()
    }

    /// The node id from the first request that carried a node, for logs.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// Type URLs Envoy has subscribed to on this stream.
    pub fn subscribed_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.types.keys().map(|kind| kind.type_url())
    }

    /// The version last sent for a type, if any.
    pub fn sent_version(&self, kind: ResourceType) -> Option<&str> {
        self.types
            .get(&kind)
            .and_then(|state| state.sent.as_ref())
            .map(|sent| sent.version.as_str())
    }

    /// The version Envoy last acknowledged for a type, if any (`None` before the first ACK).
    pub fn acked_version(&self, kind: ResourceType) -> Option<&str> {
        self.types
            .get(&kind)
            .and_then(|state| state.acked_version.as_deref())
    }

    /// Whether the last response of a type still awaits Envoy's ACK or NACK.
    pub fn awaiting_answer(&self, kind: ResourceType) -> bool {
        self.types
            .get(&kind)
            .is_some_and(|state| state.awaiting_answer)
    }

    /// Feeds a request from Envoy.
    pub fn on_request(&mut self, request: DiscoveryRequest) -> RequestOutcome {
        if self.node_id.is_none() {
            if let Some(node) = request.node.as_ref() {
                self.node_id = Some(node.id.clone());
            }
        }
        let Some(kind) = ResourceType::from_type_url(&request.type_url) else {
            tracing::debug!(
                node = self.node_label(),
                type_url = %request.type_url,
                "ignoring a request for a type this server does not serve"
            );
            return RequestOutcome {
                event: RequestEvent::UnknownType {
                    type_url: request.type_url,
                },
                responses: Vec::new(),
            };
        };
        let type_url = request.type_url;
        let node_label = self.node_label().to_owned();
        let state = self.types.entry(kind).or_default();

        let event = if request.response_nonce.is_empty() {
            // A first request, or a change sent before any response reached Envoy: both carry
            // the full subscription and are always taken.
            RequestEvent::Subscribe { type_url }
        } else {
            let is_latest = state
                .sent
                .as_ref()
                .is_some_and(|sent| sent.nonce == request.response_nonce);
            if !is_latest {
                // Envoy answers an older response; its answer to the latest one will follow.
                tracing::debug!(node = %node_label, %type_url, nonce = %request.response_nonce, "stale nonce");
                return RequestOutcome {
                    event: RequestEvent::Stale { type_url },
                    responses: Vec::new(),
                };
            }
            if !state.awaiting_answer {
                // The latest response was already answered: this only updates the subscription.
                RequestEvent::Subscribe { type_url }
            } else {
                state.awaiting_answer = false;
                let sent_version = state
                    .sent
                    .as_ref()
                    .map(|sent| sent.version.clone())
                    .unwrap_or_default();
                match request.error_detail {
                    Some(status) => {
                        tracing::warn!(
                            node = %node_label,
                            %type_url,
                            rejected_version = %sent_version,
                            running_version = %request.version_info,
                            code = status.code,
                            message = %status.message,
                            "Envoy rejected a config (NACK); it keeps its last good config"
                        );
                        state.rejected_version = Some(sent_version.clone());
                        RequestEvent::Nack {
                            type_url,
                            rejected_version: sent_version,
                            message: status.message,
                        }
                    }
                    None => {
                        tracing::debug!(node = %node_label, %type_url, version = %request.version_info, "ACK");
                        state.acked_version = Some(request.version_info.clone());
                        // A later version went in: the content rejected before differs from
                        // what Envoy runs now, and is sent again if it comes back (a pod
                        // stopped, started, stopped again), once more at most.
                        state.rejected_version = None;
                        RequestEvent::Ack {
                            type_url,
                            version: request.version_info,
                        }
                    }
                }
            }
        };

        state.wildcard = (kind.empty_means_wildcard() && request.resource_names.is_empty())
            || request.resource_names.iter().any(|name| name == "*");
        state.names = request
            .resource_names
            .into_iter()
            .filter(|name| name != "*")
            .collect();

        let responses = self.respond_if_needed(kind).into_iter().collect();
        RequestOutcome { event, responses }
    }

    /// Feeds a newly published snapshot; returns responses for the subscribed types whose
    /// version changed (and that are not waiting for an ACK).
    pub fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<DiscoveryResponse> {
        self.snapshot = Some(snapshot);
        ResourceType::ALL
            .into_iter()
            .filter_map(|kind| self.respond_if_needed(kind))
            .collect()
    }

    fn node_label(&self) -> &str {
        self.node_id.as_deref().unwrap_or("<unknown>")
    }

    /// The one rule for sending: nothing in flight, a snapshot exists, and either the version
    /// differs from both the last sent and the last rejected, or the subscription changed.
    fn respond_if_needed(&mut self, kind: ResourceType) -> Option<DiscoveryResponse> {
        let snapshot = self.snapshot.clone()?;
        let state = self.types.get_mut(&kind)?;
        if state.awaiting_answer {
            return None;
        }
        if !state.wildcard && state.names.is_empty() {
            // Unsubscribed from every named resource: nothing to send.
            return None;
        }
        let set = snapshot.resources(kind);
        let version = set.version();
        let needed = match &state.sent {
            None => true,
            Some(sent) => {
                let subscription_changed = sent.wildcard != state.wildcard
                    || (!state.wildcard && sent.names != state.names);
                let new_version =
                    sent.version != version && state.rejected_version.as_deref() != Some(version);
                subscription_changed || new_version
            }
        };
        if !needed {
            return None;
        }

        let resources = if state.wildcard {
            set.iter().map(|(_, any)| any.clone()).collect()
        } else {
            // Only the names asked for; absent names are simply not included.
            state
                .names
                .iter()
                .filter_map(|name| set.get(name).cloned())
                .collect()
        };
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        state.sent = Some(Sent {
            version: version.to_owned(),
            nonce: nonce.clone(),
            wildcard: state.wildcard,
            names: state.names.clone(),
        });
        state.awaiting_answer = true;
        Some(DiscoveryResponse {
            version_info: version.to_owned(),
            resources,
            type_url: kind.type_url().to_owned(),
            nonce,
            control_plane: Some(ControlPlane {
                identifier: CONTROL_PLANE_ID.to_owned(),
            }),
            ..Default::default()
        })
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
