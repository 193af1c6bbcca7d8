#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Node, TypedExtensionConfig};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Duration, StringValue};
use envoy_types::pb::google::rpc::Status;
use envoy_types::util::pack_any;
use prost::Message;

use super::*;
use crate::snapshot::{CLUSTER_TYPE_URL, EXTENSION_CONFIG_TYPE_URL};

const CDS: &str = CLUSTER_TYPE_URL;
const ECDS: &str = EXTENSION_CONFIG_TYPE_URL;

fn snapshot(clusters: &[(&str, i64)], extensions: &[(&str, &str)]) -> Arc<Snapshot> {
    let clusters = clusters
        .iter()
        .map(|(name, timeout)| Cluster {
            name: (*name).to_owned(),
            connect_timeout: Some(Duration {
                seconds: *timeout,
                nanos: 0,
            }),
            ..Default::default()
        })
        .collect();
    let extensions = extensions
        .iter()
        .map(|(name, value)| TypedExtensionConfig {
            name: (*name).to_owned(),
            typed_config: Some(pack_any(StringValue {
                value: (*value).to_owned(),
            })),
        })
        .collect();
    Arc::new(Snapshot::new(clusters, extensions).unwrap())
}

fn request(type_url: &str, version: &str, nonce: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        type_url: type_url.to_owned(),
        response_nonce: nonce.to_owned(),
        resource_names: names.iter().map(|name| (*name).to_owned()).collect(),
        ..Default::default()
    }
}

fn initial(type_url: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "envoy-1".to_owned(),
            cluster: "edge".to_owned(),
            ..Default::default()
        }),
        ..request(type_url, "", "", names)
    }
}

fn ack(response: &DiscoveryResponse, names: &[&str]) -> DiscoveryRequest {
    request(
        &response.type_url,
        &response.version_info,
        &response.nonce,
        names,
    )
}

fn nack(response: &DiscoveryResponse, running_version: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        error_detail: Some(Status {
            code: 3,
            message: "cluster 'a': bad connect_timeout".to_owned(),
            details: Vec::new(),
        }),
        ..request(&response.type_url, running_version, &response.nonce, names)
    }
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|any| match any.type_url.as_str() {
            CDS => Cluster::decode(any.value.as_slice()).unwrap().name,
            _ => {
                TypedExtensionConfig::decode(any.value.as_slice())
                    .unwrap()
                    .name
            }
        })
        .collect()
}

fn only(responses: Vec<DiscoveryResponse>) -> DiscoveryResponse {
    assert_eq!(
        responses.len(),
        1,
        "expected exactly one response: {responses:?}"
    );
    responses.into_iter().next().unwrap()
}

/// A stream with CDS subscribed and the first response acknowledged.
fn acked_cds(first: &Arc<Snapshot>) -> (AdsStream, DiscoveryResponse) {
    let mut stream = AdsStream::new();
    stream.on_snapshot(Arc::clone(first));
    let response = only(stream.on_request(initial(CDS, &[])).responses);
    let outcome = stream.on_request(ack(&response, &[]));
    assert!(outcome.responses.is_empty());
    (stream, response)
}

#[test]
fn initial_request_gets_every_cluster_with_the_snapshot_version() {
    let snap = snapshot(&[("a", 1), ("b", 1)], &[("podgate", "{}")]);
    let mut stream = AdsStream::new();
    assert!(
        stream.on_snapshot(Arc::clone(&snap)).is_empty(),
        "nothing subscribed yet"
    );

    let outcome = stream.on_request(initial(CDS, &[]));
    assert_eq!(
        outcome.event,
        RequestEvent::Subscribe {
            type_url: CDS.to_owned()
        }
    );
    let response = only(outcome.responses);
    assert_eq!(response.type_url, CDS);
    assert_eq!(response.version_info, snap.clusters().version());
    assert!(!response.nonce.is_empty());
    assert_eq!(names(&response), ["a", "b"]);
    assert_eq!(response.control_plane.unwrap().identifier, CONTROL_PLANE_ID);
    assert_eq!(stream.node_id(), Some("envoy-1"));
    assert!(stream.awaiting_answer(ResourceType::Cluster));
}

#[test]
fn nothing_is_sent_before_the_first_snapshot() {
    let mut stream = AdsStream::new();
    let outcome = stream.on_request(initial(CDS, &[]));
    assert!(outcome.responses.is_empty());
    let response = only(stream.on_snapshot(snapshot(&[("a", 1)], &[])));
    assert_eq!(names(&response), ["a"]);
}

#[test]
fn ack_is_recognised_and_nothing_is_resent() {
    let snap = snapshot(&[("a", 1)], &[]);
    let mut stream = AdsStream::new();
    stream.on_snapshot(Arc::clone(&snap));
    let response = only(stream.on_request(initial(CDS, &[])).responses);

    let outcome = stream.on_request(ack(&response, &[]));
    assert_eq!(
        outcome.event,
        RequestEvent::Ack {
            type_url: CDS.to_owned(),
            version: response.version_info.clone()
        }
    );
    assert!(outcome.responses.is_empty());
    assert_eq!(
        stream.acked_version(ResourceType::Cluster),
        Some(snap.clusters().version())
    );
    assert!(!stream.awaiting_answer(ResourceType::Cluster));
    // The same content published again: same version, nothing to send.
    assert!(stream.on_snapshot(snapshot(&[("a", 1)], &[])).is_empty());
}

#[test]
fn new_snapshot_after_ack_sends_only_the_changed_subscribed_types() {
    let first = snapshot(&[("a", 1)], &[("podgate", "v1")]);
    let mut stream = AdsStream::new();
    stream.on_snapshot(Arc::clone(&first));
    let cds = only(stream.on_request(initial(CDS, &[])).responses);
    let ecds = only(stream.on_request(initial(ECDS, &["podgate"])).responses);
    assert!(stream.on_request(ack(&cds, &[])).responses.is_empty());
    assert!(stream
        .on_request(ack(&ecds, &["podgate"]))
        .responses
        .is_empty());

    // Only the clusters change.
    let second = snapshot(&[("a", 1), ("b", 1)], &[("podgate", "v1")]);
    let response = only(stream.on_snapshot(Arc::clone(&second)));
    assert_eq!(response.type_url, CDS);
    assert_eq!(response.version_info, second.clusters().version());
    assert_ne!(response.nonce, cds.nonce);
    assert_eq!(names(&response), ["a", "b"]);
    stream.on_request(ack(&response, &[]));

    // Only the extension config changes.
    let third = snapshot(&[("a", 1), ("b", 1)], &[("podgate", "v2")]);
    let response = only(stream.on_snapshot(third));
    assert_eq!(response.type_url, ECDS);
    assert_eq!(names(&response), ["podgate"]);
}

#[test]
fn unsubscribed_types_get_no_pushes() {
    let (mut stream, _) = acked_cds(&snapshot(&[("a", 1)], &[("podgate", "v1")]));
    assert!(stream
        .on_snapshot(snapshot(&[("a", 1)], &[("podgate", "v2")]))
        .is_empty());
    assert_eq!(stream.subscribed_types().collect::<Vec<_>>(), [CDS]);
}

#[test]
fn nack_keeps_the_last_good_version_and_is_not_resent() {
    let good = snapshot(&[("a", 1)], &[]);
    let (mut stream, good_response) = acked_cds(&good);

    let bad = snapshot(&[("a", -1)], &[]);
    let bad_response = only(stream.on_snapshot(Arc::clone(&bad)));
    assert_eq!(bad_response.version_info, bad.clusters().version());

    // Envoy rejects it and reports the version it still runs.
    let outcome = stream.on_request(nack(&bad_response, &good_response.version_info, &[]));
    assert_eq!(
        outcome.event,
        RequestEvent::Nack {
            type_url: CDS.to_owned(),
            rejected_version: bad.clusters().version().to_owned(),
            message: "cluster 'a': bad connect_timeout".to_owned(),
        }
    );
    assert!(
        outcome.responses.is_empty(),
        "the rejected version is not resent"
    );
    assert_eq!(
        stream.acked_version(ResourceType::Cluster),
        Some(good.clusters().version())
    );
    assert!(!stream.awaiting_answer(ResourceType::Cluster));
    // Publishing the same bad content again does not resend it either.
    assert!(stream.on_snapshot(snapshot(&[("a", -1)], &[])).is_empty());

    // A fixed snapshot goes out.
    let fixed = snapshot(&[("a", 2)], &[]);
    let response = only(stream.on_snapshot(Arc::clone(&fixed)));
    assert_eq!(response.version_info, fixed.clusters().version());
    let outcome = stream.on_request(ack(&response, &[]));
    assert!(matches!(outcome.event, RequestEvent::Ack { .. }));
}

#[test]
fn reverting_to_the_last_good_content_after_a_nack_is_sent() {
    let good = snapshot(&[("a", 1)], &[]);
    let (mut stream, good_response) = acked_cds(&good);
    let bad_response = only(stream.on_snapshot(snapshot(&[("a", -1)], &[])));
    stream.on_request(nack(&bad_response, &good_response.version_info, &[]));
    let response = only(stream.on_snapshot(snapshot(&[("a", 1)], &[])));
    assert_eq!(response.version_info, good_response.version_info);
}

#[test]
fn content_rejected_once_is_sent_again_after_a_later_version_went_in() {
    // A pod stopped (B, rejected: say the VM could not start), started again (A, accepted),
    // stopped again (B once more): Envoy runs A, so B goes out again.
    let a = snapshot(&[("a", 1)], &[]);
    let (mut stream, a_response) = acked_cds(&a);
    let b_response = only(stream.on_snapshot(snapshot(&[("a", 2)], &[])));
    stream.on_request(nack(&b_response, &a_response.version_info, &[]));
    let c_response = only(stream.on_snapshot(snapshot(&[("a", 3)], &[])));
    let outcome = stream.on_request(ack(&c_response, &[]));
    assert!(matches!(outcome.event, RequestEvent::Ack { .. }));
    let again = only(stream.on_snapshot(snapshot(&[("a", 2)], &[])));
    assert_eq!(again.version_info, b_response.version_info);
    // Rejected a second time, it is not resent while nothing else went in.
    stream.on_request(nack(&again, &c_response.version_info, &[]));
    assert!(stream.on_snapshot(snapshot(&[("a", 2)], &[])).is_empty());
}

#[test]
fn stale_nonces_are_ignored() {
    let (mut stream, first) = acked_cds(&snapshot(&[("a", 1)], &[]));
    let second = only(stream.on_snapshot(snapshot(&[("a", 1), ("b", 1)], &[])));

    // A request answering the first response (or an unknown nonce) arrives after the second
    // response was sent: it is stale, changes nothing and sends nothing.
    for nonce in [first.nonce.as_str(), "no-such-nonce"] {
        let outcome = stream.on_request(request(CDS, &first.version_info, nonce, &[]));
        assert_eq!(
            outcome.event,
            RequestEvent::Stale {
                type_url: CDS.to_owned()
            }
        );
        assert!(outcome.responses.is_empty());
        assert!(stream.awaiting_answer(ResourceType::Cluster));
    }
    // A stale NACK is not counted as a NACK either.
    let outcome = stream.on_request(nack(&first, &first.version_info, &[]));
    assert!(matches!(outcome.event, RequestEvent::Stale { .. }));

    let outcome = stream.on_request(ack(&second, &[]));
    assert!(matches!(outcome.event, RequestEvent::Ack { .. }));
}

#[test]
fn snapshots_arriving_while_waiting_for_an_ack_are_coalesced() {
    let mut stream = AdsStream::new();
    stream.on_snapshot(snapshot(&[("a", 1)], &[]));
    let first = only(stream.on_request(initial(CDS, &[])).responses);

    // Two updates while the first response is unanswered: nothing is sent yet.
    assert!(stream.on_snapshot(snapshot(&[("b", 1)], &[])).is_empty());
    let latest = snapshot(&[("c", 1)], &[]);
    assert!(stream.on_snapshot(Arc::clone(&latest)).is_empty());

    // The ACK releases exactly one response with the latest content.
    let outcome = stream.on_request(ack(&first, &[]));
    assert!(matches!(outcome.event, RequestEvent::Ack { .. }));
    let response = only(outcome.responses);
    assert_eq!(response.version_info, latest.clusters().version());
    assert_eq!(names(&response), ["c"]);
}

#[test]
fn a_nack_while_an_update_is_pending_releases_the_update() {
    let mut stream = AdsStream::new();
    stream.on_snapshot(snapshot(&[("a", -1)], &[]));
    let bad = only(stream.on_request(initial(CDS, &[])).responses);
    let fixed = snapshot(&[("a", 1)], &[]);
    assert!(stream.on_snapshot(Arc::clone(&fixed)).is_empty());

    let outcome = stream.on_request(nack(&bad, "", &[]));
    assert!(matches!(outcome.event, RequestEvent::Nack { .. }));
    let response = only(outcome.responses);
    assert_eq!(response.version_info, fixed.clusters().version());
}

#[test]
fn ecds_answers_with_the_names_asked_for() {
    let snap = snapshot(
        &[("a", 1)],
        &[("podgate", "{}"), ("other", "{}"), ("third", "{}")],
    );
    let mut stream = AdsStream::new();
    stream.on_snapshot(Arc::clone(&snap));

    let first = only(stream.on_request(initial(ECDS, &["podgate"])).responses);
    assert_eq!(first.type_url, ECDS);
    assert_eq!(names(&first), ["podgate"]);
    assert_eq!(first.version_info, snap.extension_configs().version());

    // Envoy's ACK adds a name: the new set is sent, with the same version.
    let outcome = stream.on_request(ack(&first, &["podgate", "other"]));
    assert!(matches!(outcome.event, RequestEvent::Ack { .. }));
    let second = only(outcome.responses);
    assert_eq!(names(&second), ["other", "podgate"]);
    assert_eq!(second.version_info, first.version_info);

    // The same set acknowledged again: nothing more.
    assert!(stream
        .on_request(ack(&second, &["podgate", "other"]))
        .responses
        .is_empty());

    // A name the snapshot lacks is simply absent from the answer.
    let third = only(
        stream
            .on_request(request(
                ECDS,
                &second.version_info,
                &second.nonce,
                &["missing"],
            ))
            .responses,
    );
    assert!(third.resources.is_empty());

    // Unsubscribing from every name sends nothing, even on a new snapshot.
    assert!(stream.on_request(ack(&third, &[])).responses.is_empty());
    assert!(stream
        .on_snapshot(snapshot(&[("a", 1)], &[("podgate", "v2")]))
        .is_empty());
}

#[test]
fn ecds_explicit_wildcard_gets_everything() {
    let mut stream = AdsStream::new();
    stream.on_snapshot(snapshot(&[], &[("podgate", "{}"), ("other", "{}")]));
    let response = only(stream.on_request(initial(ECDS, &["*"])).responses);
    assert_eq!(names(&response), ["other", "podgate"]);
}

#[test]
fn subscription_changes_without_nonce_wait_for_the_answer_in_flight() {
    let mut stream = AdsStream::new();
    stream.on_snapshot(snapshot(&[], &[("podgate", "{}"), ("other", "{}")]));
    let first = only(stream.on_request(initial(ECDS, &["podgate"])).responses);

    // Envoy adds a name before our response reached it: taken, but nothing sent while one
    // response is in flight.
    let outcome = stream.on_request(initial(ECDS, &["podgate", "other"]));
    assert!(matches!(outcome.event, RequestEvent::Subscribe { .. }));
    assert!(outcome.responses.is_empty());

    // Its ACK of the first response carries the full set: the missing name goes out.
    let response = only(
        stream
            .on_request(ack(&first, &["podgate", "other"]))
            .responses,
    );
    assert_eq!(names(&response), ["other", "podgate"]);
}

#[test]
fn a_subscription_change_after_a_nack_is_answered() {
    let mut stream = AdsStream::new();
    stream.on_snapshot(snapshot(&[], &[("podgate", "bad"), ("other", "{}")]));
    let first = only(stream.on_request(initial(ECDS, &["podgate"])).responses);
    assert!(stream
        .on_request(nack(&first, "", &["podgate"]))
        .responses
        .is_empty());
    // Envoy's next request repeats the answered nonce without error_detail: a subscription
    // update, neither an ACK nor a second NACK, and the new name is sent.
    let outcome = stream.on_request(request(ECDS, "", &first.nonce, &["podgate", "other"]));
    assert!(matches!(outcome.event, RequestEvent::Subscribe { .. }));
    let response = only(outcome.responses);
    assert_eq!(names(&response), ["other", "podgate"]);
}

#[test]
fn unknown_type_urls_are_ignored() {
    let mut stream = AdsStream::new();
    stream.on_snapshot(snapshot(&[("a", 1)], &[]));
    let listener_type = "type.googleapis.com/envoy.config.listener.v3.Listener";
    let outcome = stream.on_request(initial(listener_type, &[]));
    assert_eq!(
        outcome.event,
        RequestEvent::UnknownType {
            type_url: listener_type.to_owned()
        }
    );
    assert!(outcome.responses.is_empty());
    assert_eq!(stream.subscribed_types().count(), 0);
    // The node id is still learnt from it.
    assert_eq!(stream.node_id(), Some("envoy-1"));
}

#[test]
fn a_reconnecting_envoy_gets_the_current_state() {
    // On a new stream Envoy sends the version it runs; it is answered anyway (Envoy ignores
    // identical clusters), which also covers a control plane restarted with new content.
    let snap = snapshot(&[("a", 1)], &[]);
    let mut stream = AdsStream::new();
    stream.on_snapshot(Arc::clone(&snap));
    let reconnect = DiscoveryRequest {
        version_info: snap.clusters().version().to_owned(),
        ..initial(CDS, &[])
    };
    let response = only(stream.on_request(reconnect).responses);
    assert_eq!(response.version_info, snap.clusters().version());
}

#[test]
fn nonces_are_unique_across_types() {
    let mut stream = AdsStream::new();
    stream.on_snapshot(snapshot(&[("a", 1)], &[("podgate", "{}")]));
    let cds = only(stream.on_request(initial(CDS, &[])).responses);
    let ecds = only(stream.on_request(initial(ECDS, &["podgate"])).responses);
    assert_ne!(cds.nonce, ecds.nonce);
    // The CDS nonce does not acknowledge ECDS.
    let outcome = stream.on_request(request(ECDS, "", &cds.nonce, &["podgate"]));
    assert!(matches!(outcome.event, RequestEvent::Stale { .. }));
}
