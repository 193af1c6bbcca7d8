//! API tokens at the edge, in the decision: the token a request carries, the capability the
//! exchange cache holds for it (checked against the configuration in force), a refusal it
//! remembers, or the exchange to make.

use std::rc::Rc;

use super::super::request::Request;
use super::super::token_cache::VerifiedCache;
use super::{forward_to_pod, Decision, Forward, Source};
use crate::config::CompiledConfig;
use crate::exchange::{self, ExchangeNeeded, Lookup, Refusal};
use crate::host::PodAddr;
use crate::reply::Denial;
use crate::token::Verified;

/// The first API token of the request: a `podgate-token` value, then a bearer.
fn api_token<'a>(req: &Request<'a>, bearers: &[&'a str]) -> Option<&'a str> {
    req.token_headers
        .iter()
        .map(|t| t.trim())
        .chain(bearers.iter().copied())
        .find(|t| exchange::is_api_token(t))
}

/// A request with an API token: the capability exchanged for it earlier (checked against the
/// configuration in force), a refusal remembered, or an exchange to make. A token that is not
/// of the API tokens' exact shape is refused without a call.
#[allow(clippy::too_many_arguments)]
pub(super) fn api_token_decision(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    req: &Request<'_>,
    bearers: &[&str],
    pod: PodAddr,
    resource: Option<&str>,
    token: &str,
    now: i64,
) -> Decision {
    match api_token_grant(config, cache, pod.clone(), resource, token, now) {
        Ok(cap) => {
            let decision = forward_to_pod(config, req, bearers, &pod, &cap, Source::ApiToken, now);
            match (decision, config.renewal.as_ref()) {
                // A WebSocket is renewed by exchanging the token again (`Forward::exchange`).
                (Decision::Forward(forward), Some(renewal)) if forward.websocket => {
                    let renewed = Forward {
                        renew_at: Some(cap.expires_at.saturating_sub(renewal.before_secs)),
                        exchange: Some(Rc::new(ExchangeNeeded {
                            key: exchange::key(token, &pod, resource),
                            token: token.to_owned(),
                            pod,
                            resource: resource.map(str::to_owned),
                        })),
                        ..Forward::clone(&forward)
                    };
                    Decision::Forward(Rc::new(renewed))
                }
                (decision, _) => decision,
            }
        }
        Err(decision) => decision,
    }
}

/// The capability API token `need.token` was exchanged for, for `need.pod` (and resource),
/// when the exchange cache has one in force now; `None` otherwise (nothing is asked).
pub(in crate::gate) fn exchanged_capability(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    need: &ExchangeNeeded,
    now: i64,
) -> Option<Rc<Verified>> {
    let resource = need.resource.as_deref();
    api_token_grant(config, cache, need.pod.clone(), resource, &need.token, now).ok()
}

/// The API token the request carries, when API tokens are exchanged at the edge (the filter
/// has the control plane's renewal settings).
pub(super) fn api_token_of<'r>(
    config: &CompiledConfig,
    req: &Request<'r>,
    bearers: &[&'r str],
) -> Option<&'r str> {
    config
        .renewal
        .is_some()
        .then(|| api_token(req, bearers))
        .flatten()
}

/// The capability API token `token` was exchanged for, for `pod` (and `resource` of a
/// service), when the exchange cache has one still in force; else what to do: refuse (a
/// malformed or refused token) or ask the control plane (`Decision::Exchange`).
pub(super) fn api_token_grant(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    pod: PodAddr,
    resource: Option<&str>,
    token: &str,
    now: i64,
) -> Result<Rc<Verified>, Decision> {
    if !exchange::well_formed(token) {
        return Err(Decision::Deny(Denial::ApiTokenRefused));
    }
    let key = exchange::key(token, &pod, resource);
    let exchanges = cache.exchanges();
    match exchanges.lookup(&key, now) {
        // The key binds the resource; a capability that names another is never used.
        Lookup::Granted(cap) if cap.res.as_deref() != resource => {
            exchanges.forget(&key);
            return Err(Decision::Deny(Denial::ApiTokenNotAllowed));
        }
        Lookup::Granted(cap) => {
            if config.withdraws(&cap) {
                // Revoked or cut off since: the control plane is asked again, and refuses a
                // revoked token.
                exchanges.forget(&key);
            } else {
                cache.count_hit();
                return Ok(cap);
            }
        }
        Lookup::Unconfirmed(capability) => match config.verifier.verify(&capability, now) {
            Ok(cap) if !config.withdraws(&cap) && cap.res.as_deref() == resource => {
                let cap = Rc::new(cap);
                exchanges.confirm(&key, Rc::clone(&cap));
                return Ok(cap);
            }
            // Its key is gone, or it is revoked or cut off: the control plane is asked again.
            _ => exchanges.forget(&key),
        },
        Lookup::Refused(Refusal::BadToken) => return Err(Decision::Deny(Denial::ApiTokenRefused)),
        Lookup::Refused(Refusal::NotAllowed) => {
            return Err(Decision::Deny(Denial::ApiTokenNotAllowed))
        }
        Lookup::Miss => {}
    }
    Err(Decision::Exchange(Rc::new(ExchangeNeeded {
        key,
        token: token.to_owned(),
        pod,
        resource: resource.map(str::to_owned),
    })))
}
