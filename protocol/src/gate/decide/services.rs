//! Services in the decision: the resource a path is under on a service reached per resource,
//! and the forward to a service, with its credential in and the caller's out.

use std::rc::Rc;

use super::super::request::Request;
use super::{granted_forward, strip_edits, Decision, HeaderEdit, Source};
use crate::config::{CompiledConfig, CredentialAt, CLUSTER_HEADER};
use crate::host::{PodAddr, SERVICE_PORT};
use crate::reply::Denial;
use crate::resource::{self, PathMatch};
use crate::token::Verified;

/// The resource the request's path is under, on a service reached per resource (its entry has
/// a `resource_path`); `None` for a pod or any other service. A path outside the pattern, or one
/// servers could read two ways, is the refusal.
pub(super) fn resource_scope<'a>(
    config: &CompiledConfig,
    pod: &PodAddr,
    path: &'a str,
) -> Result<Option<&'a str>, Denial> {
    if pod.port != SERVICE_PORT {
        return Ok(None);
    }
    let Some(pattern) = config
        .services
        .get(&pod.pod)
        .and_then(|s| s.resource_path.as_deref())
    else {
        return Ok(None);
    };
    match resource::classify(pattern, path) {
        PathMatch::Resource(resource) => Ok(Some(resource)),
        PathMatch::Outside => Err(Denial::OutsideResources),
        PathMatch::Ambiguous => Err(Denial::AmbiguousPath),
    }
}

/// `decision`, unless the path is under no resource (`scope` is its refusal) and the decision
/// would let the request through: then that refusal. An API token is exchanged for such a path
/// as for any other (for no resource, which the control plane refuses on a service reached per
/// resource), so its answer is the same whether the service exists or not; should the control
/// plane grant it anyway, nothing is forwarded.
pub(super) fn confine(scope: &Result<Option<&str>, Denial>, decision: Decision) -> Decision {
    match (scope, decision) {
        (Err(denial), Decision::Forward(_)) => Decision::Deny(denial.clone()),
        (_, decision) => decision,
    }
}

/// The forward to the service `verified` grants; `TraceRefused` for `TRACE` and `TRACK` (an
/// upstream that echoes them would hand the caller the credential), `CredentialUnavailable` when
/// the service has no usable credential at `now` (none pushed, or an expired one without a
/// fallback), `UnknownPod` when there is no such service. The upstream gets the
/// service's credential and none of the caller's: every `Authorization` and every client copy
/// of the credential's header are removed (besides our own credentials and headers, as for a
/// pod), as is any `X-Forwarded-Host`, and neither the user's identity nor the identity assertion is sent to it.
pub(super) fn forward_to_service(
    config: &CompiledConfig,
    req: &Request<'_>,
    bearers: &[&str],
    pod: &PodAddr,
    verified: &Rc<Verified>,
    source: Source,
    now: i64,
) -> Decision {
    if ["TRACE", "TRACK"]
        .iter()
        .any(|m| req.method.eq_ignore_ascii_case(m))
    {
        return Decision::Deny(Denial::TraceRefused);
    }
    let Some(entry) = config.services.get(&pod.pod) else {
        if config.services_without_credential.contains(&pod.pod) {
            return Decision::Deny(Denial::CredentialUnavailable);
        }
        return Decision::Deny(Denial::UnknownPod);
    };
    let mut edits = strip_edits(config, req, !bearers.is_empty());
    if bearers.is_empty() && !req.authorizations.is_empty() {
        edits.push(HeaderEdit::Remove("authorization".to_owned()));
    }
    edits.push(HeaderEdit::Set(":authority".to_owned(), entry.host.clone()));
    // No client's copy, which an upstream building links or redirects from it would trust; and
    // not ours either: the upstream is a third party, told nothing of our hosts.
    edits.push(HeaderEdit::Remove(super::FORWARDED_HOST_HEADER.to_owned()));
    edits.push(HeaderEdit::Set(
        CLUSTER_HEADER.to_owned(),
        entry.cluster.clone(),
    ));
    let credential = match entry.credential_at(now) {
        CredentialAt::Set(credential, _) => Some(credential),
        CredentialAt::NotNeeded => None,
        CredentialAt::Expired => return Decision::Deny(Denial::CredentialUnavailable),
    };
    if let Some(credential) = credential {
        if credential.name != "authorization" {
            edits.push(HeaderEdit::Remove(credential.name.clone()));
        }
        edits.push(HeaderEdit::Set(
            credential.name.clone(),
            credential.value.0.clone(),
        ));
    }
    // The caller's copies of the service's other credential headers, and of the expired one's
    // when the fallback is in force.
    let expired = entry
        .credential
        .as_ref()
        .filter(|c| credential.is_some_and(|set| set.name != c.name))
        .map(|c| &c.name);
    for name in entry.strip_headers.iter().chain(expired) {
        let injected = credential.is_some_and(|c| &c.name == name);
        if !injected && name != "authorization" {
            edits.push(HeaderEdit::Remove(name.clone()));
        }
    }
    granted_forward(config, req, pod, edits, true, verified, source)
}
