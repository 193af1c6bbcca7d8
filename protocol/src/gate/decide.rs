//! The decision, as a pure function: the request view in, a local reply or a list of header
//! edits out.

use std::rc::Rc;

use super::request::Request;
use super::token_cache::{verify_now, VerifiedCache};
use crate::config::{
    CompiledConfig, PodStatus, CLUSTER_HEADER, EMAIL_HEADER, UPSTREAM_HEADER, USER_HEADER,
};
use crate::cookie::{self, MAX_COOKIE_HEADER_LEN, TOKEN_HEADER};
use crate::cors::{is_same_pod_origin, origin_pod};
use crate::exchange::{self, ExchangeNeeded};
use crate::host::{target_query, PodAddr, SERVICE_PORT};
use crate::own_paths::{self, OwnPath};
use crate::path;
use crate::redirect::{encode_query_value, safe_next, MAX_NEXT_LEN};
use crate::renewal;
use crate::reply::{Denial, Reply};
use crate::response::PodResponse;
use crate::token::{self, TokenError, Verified, API_TOKEN_PREFIX};

mod api_tokens;
mod lapsed;
mod services;
pub(super) use api_tokens::exchanged_capability;
use api_tokens::{api_token_decision, api_token_grant, api_token_of};
use lapsed::{lapsed, Lapsed};
use services::{confine, forward_to_service, resource_scope};

/// How many signatures one request may make us check. Candidates are not limited (a browser
/// sends every planted cookie of our name): each is first looked up in the verified-token cache
/// and checked without its signature (`Verifier::precheck`), which is cheap, so the real
/// capability is found among any number of planted ones, and only the candidates that pass
/// are worth a signature: those for this very host first.
pub const MAX_VERIFICATIONS: usize = 2;

/// One change to the request headers, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Remove(String),
    Set(String, String),
}

/// What the filter does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer locally; nothing is forwarded.
    Deny(Denial),
    /// Forward after applying the edits, then clear the route cache if `Forward::reroute`
    /// says so. Shared, so the decision memo can hand the same one to every request that
    /// repeats its inputs.
    Forward(Rc<Forward>),
    /// A path the filter answers itself (`own_paths`: who am I, sign out); nothing is
    /// forwarded.
    Answer(Reply),
    /// An API token not yet exchanged for this pod and port: the filter asks the control plane
    /// (`exchange`), records the answer (`Gate::exchanged`) and decides again.
    Exchange(Rc<ExchangeNeeded>),
    /// Our cookie holds a capability for this request that lapsed less than
    /// `renewal.lapsed_secs` ago (`lapsed`): the filter renews it (`Gate::renewal_call`),
    /// records the answer (`Gate::renewed`) and decides again; without a renewal the request
    /// gets `refusal`, the refusal of an expired capability.
    Renew { old: Rc<Verified>, refusal: Denial },
}

/// What a forward does to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub edits: Vec<HeaderEdit>,
    /// Whether Envoy must pick the route again after the edits: the forward sets the cluster
    /// header (the control plane, a service, a pod with a cluster of its own), or it removes a
    /// client's copy of one of our headers, which the route Envoy picked before the filter ran
    /// may have matched. A pod with an address needs neither: the route Envoy picked without
    /// the cluster header is the pods' original-destination route, whose host comes from the
    /// upstream header only at connection time.
    pub reroute: bool,
    /// Who, for logs and metrics (`None` on the reserved path).
    pub user: Option<String>,
    /// When the capability expires (unix seconds).
    pub expires_at: Option<i64>,
    /// What sanitizing the pod's response needs (`None` on the reserved path: the control
    /// plane's responses are not touched).
    pub response: Option<PodResponse>,
    /// A WebSocket upgrade, to be closed when the capability expires or is cut off.
    pub websocket: bool,
    /// The capability that let it through (`None` on the reserved path), so that an open
    /// WebSocket can be closed when a later configuration cuts it off.
    pub capability: Option<Rc<Verified>>,
    /// From when (unix seconds) the filter renews that capability (`renewal::renew_at`):
    /// `None` for one it never renews.
    pub renew_at: Option<i64>,
    /// The pod (or service) and port the host named (`None` on the reserved path): for the
    /// access log, and for Envoy's answer when the pod fails, which reads them from the filter
    /// state ([`Forward::each_filter_state`]), so that no header carries them to the pod.
    pub target: Option<PodAddr>,
    /// Let through on the capability an API token was exchanged for: a new configuration
    /// confirms that grant again before its next use, so no memo keeps this forward across one.
    pub exchanged: bool,
    /// Let through on the fresh capability that renewed the request's lapsed cookie one
    /// (`lapsed`): the `Set-Cookie` that hands it to the browser, added to the response. Never
    /// memoized.
    pub set_cookie: Option<Rc<str>>,
    /// A WebSocket let through on an API token: the exchange that renews its capability from
    /// `renew_at` on, as a cookie's renewal renews a browser's, so that it lives as long as the
    /// token (and access) does rather than ending at the capability's `exp`.
    pub exchange: Option<Rc<ExchangeNeeded>>,
}

impl Forward {
    /// Calls `set` with each filter state this forward sets, by property name: its pod and port
    /// (`access_log::POD_PROPERTY`, `PORT_PROPERTY`) when it has a target, for Envoy's failure
    /// answers, then the access log's line (`access_log::line`: its user, its pod and port,
    /// allowed, or a callback when no user was proven, the reserved path).
    pub fn each_filter_state(&self, mut set: impl FnMut(&'static str, &str)) {
        use crate::access_log::{self, Decision};
        let port = self.target.as_ref().map(|t| t.port.to_string());
        let pod = self.target.as_ref().map(|t| t.pod.as_str());
        if let (Some(pod), Some(port)) = (pod, port.as_deref()) {
            set(access_log::POD_PROPERTY, pod);
            set(access_log::PORT_PROPERTY, port);
        }
        let decision = if self.user.is_some() {
            Decision::Allow
        } else {
            Decision::Callback
        };
        let line = access_log::line(self.user.as_deref(), pod, port.as_deref(), decision, None);
        set(access_log::PROPERTY, &line);
    }
}

/// Where the capability came from; cookie-authenticated WebSockets must come from the pod's own
/// origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    TokenHeader,
    Bearer,
    Cookie,
    /// A capability the control plane gave for the request's API token.
    ApiToken,
}

/// Where the capability may be, in the order they are tried: every `podgate-token`, our
/// well-formed bearers (not API tokens, which are no capability), then our cookies from the
/// last to the first. Browsers send cookies with a longer `Path` first, which is the one
/// ordering a sibling planting cookies of our name controls, so the real cookie (`Path=/`)
/// tends to be last. Not limited in number: the scan is bounded by the header size.
fn candidates<'a>(
    config: &'a CompiledConfig,
    req: &Request<'a>,
    bearers: &[&'a str],
) -> Vec<(Source, &'a str)> {
    let mut out = Vec::new();
    // With exchanges on, API tokens are no candidates (`api_token`).
    let exchanges = config.renewal.is_some();
    for t in &req.token_headers {
        let t = t.trim();
        if !(exchanges && exchange::is_api_token(t)) {
            out.push((Source::TokenHeader, t));
        }
    }
    for bearer in bearers {
        if !bearer.starts_with(API_TOKEN_PREFIX) {
            out.push((Source::Bearer, *bearer));
        }
    }
    let name = &config.cookie_name;
    for header in req.cookies.iter().rev() {
        if header.len() <= MAX_COOKIE_HEADER_LEN && cookie::mentions(header, name) {
            let first = out.len();
            out.extend(cookie::find_all(header, name).map(|v| (Source::Cookie, v)));
            if let Some(these) = out.get_mut(first..) {
                these.reverse();
            }
        }
    }
    out
}

/// Which resource claim (`res`) a capability for this host needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want<'a> {
    /// Exactly this one: `None` for a pod or a service not reached per resource, the resource
    /// path the request is under for one that is (`resource::classify`).
    Exactly(Option<&'a str>),
    /// Any: who-am-I (`/.podgate/userinfo`) names no resource.
    Any,
}

impl Want<'_> {
    fn admits(self, res: Option<&str>) -> bool {
        match self {
            Want::Exactly(want) => want == res,
            Want::Any => true,
        }
    }
}

/// What one verified capability means for this request.
enum Verdict {
    Grant,
    /// For this host, but another resource.
    OtherResource,
    Elsewhere,
    Refused(TokenError),
}

fn judge(
    config: &CompiledConfig,
    v: &Verified,
    host: &str,
    pod: &PodAddr,
    want: Want<'_>,
) -> Verdict {
    if config.withdraws(v) {
        Verdict::Refused(TokenError::Revoked)
    } else if v.claims.aud == host && v.claims.pod == pod.pod && v.claims.port == pod.port {
        if want.admits(v.res.as_deref()) {
            Verdict::Grant
        } else {
            Verdict::OtherResource
        }
    } else {
        Verdict::Elsewhere
    }
}

/// What the candidates came to.
enum Choice {
    Granted(Source, Rc<Verified>),
    /// No grant, and at least one valid capability for this host but another resource.
    OtherResource,
    /// No grant, and at least one valid capability for another pod or port.
    ScopedElsewhere,
    /// No grant; the first reason a candidate was refused.
    Refused(TokenError),
}

/// Finds the candidate that grants this request, at a bounded cost: first every candidate is
/// looked up in the cache (a capability verified before grants at no cost) and, if not there,
/// prechecked without its signature (garbage, another kind, an unknown key, an expired `exp`
/// or a value that failed before are refused there); then at most `budget` signatures are
/// checked (each taken from it), the candidates whose unverified `aud` is this host first.
fn choose(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    found: &[(Source, &str)],
    pod: &PodAddr,
    want: Want<'_>,
    budget: &mut usize,
    now: i64,
) -> Choice {
    let host = config.public_hosts.render(pod);
    // The refusal reported is that of the earliest candidate refused, whichever pass found
    // it, so that what the caches held never changes the reason.
    let mut first_error: Option<(usize, TokenError)> = None;
    let mut refuse = |at: usize, err: TokenError| {
        if first_error.as_ref().is_none_or(|(first, _)| at < *first) {
            first_error = Some((at, err));
        }
    };
    let mut elsewhere = false;
    let mut other_resource = false;
    let mut here_first = Vec::new();
    let mut then_elsewhere = Vec::new();
    for (at, &(source, token)) in found.iter().enumerate() {
        let result = match cache.verified(config, token, now) {
            Some(known) => known,
            None => match config.verifier.precheck(token, &host, now) {
                Err(err) => Err(err),
                Ok(aud_here) => {
                    let key = cache.rejected_key(config, token);
                    match cache.known_bad(key) {
                        Some(err) => Err(err),
                        None => {
                            let pending = if aud_here {
                                &mut here_first
                            } else {
                                &mut then_elsewhere
                            };
                            pending.push((at, source, token, key));
                            continue;
                        }
                    }
                }
            },
        };
        match result.map(|v| (judge(config, &v, &host, pod, want), v)) {
            Ok((Verdict::Grant, v)) => return Choice::Granted(source, v),
            Ok((Verdict::OtherResource, _)) => other_resource = true,
            Ok((Verdict::Elsewhere, _)) => elsewhere = true,
            Ok((Verdict::Refused(err), _)) | Err(err) => refuse(at, err),
        }
    }
    let mut checked: Vec<&str> = Vec::with_capacity(*budget);
    for (at, source, token, key) in here_first.into_iter().chain(then_elsewhere) {
        if checked.contains(&token) {
            // The same value twice (planted duplicates): its outcome is known.
            continue;
        }
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        checked.push(token);
        let result = verify_now(config, cache, token, key, now);
        match result.map(|v| (judge(config, &v, &host, pod, want), v)) {
            Ok((Verdict::Grant, v)) => return Choice::Granted(source, v),
            Ok((Verdict::OtherResource, _)) => other_resource = true,
            Ok((Verdict::Elsewhere, _)) => elsewhere = true,
            Ok((Verdict::Refused(err), _)) | Err(err) => refuse(at, err),
        }
    }
    if other_resource {
        Choice::OtherResource
    } else if elsewhere {
        Choice::ScopedElsewhere
    } else {
        Choice::Refused(first_error.map_or(TokenError::Malformed, |(_, err)| err))
    }
}

/// Our tokens among every `Authorization` value, including values a proxy joined with commas
/// (`Bearer a, Bearer b`). Each comma-separated element that holds one of our tokens of any
/// kind, in any form (`token::mentions_ours`), must be exactly one well-formed
/// `Bearer <token>`: then its token is returned (a capability among them is a candidate, and
/// every one is stripped). Any other form (no scheme, another scheme, a tab, trailing words,
/// quotes) is refused: nothing is forwarded, and the client is told how to send it. Elements
/// that hold none of ours are the pod app's and pass untouched.
fn our_bearers<'a>(req: &Request<'a>) -> Result<Vec<&'a str>, Denial> {
    let mut ours = Vec::new();
    for value in &req.authorizations {
        // One pass over a value with none of ours (the app's own credentials, the common case).
        if !token::mentions_ours(value) {
            continue;
        }
        for element in value.split(',') {
            if !token::mentions_ours(element) {
                continue;
            }
            match bearer_value(element) {
                Some(token) if token::looks_like_ours(token) => ours.push(token),
                _ => return Err(Denial::MalformedAuthorization),
            }
        }
    }
    Ok(ours)
}

/// The token of a well-formed `Bearer` credential (RFC 6750 section 2.1: the scheme in any
/// case, one or more spaces, a token68), optional spaces or tabs around it.
fn bearer_value(element: &str) -> Option<&str> {
    let (scheme, value) = element
        .trim_matches(|c| c == ' ' || c == '\t')
        .split_once(' ')?;
    let value = value.trim_start_matches(' ');
    let body = value.trim_end_matches('=');
    let token68 = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    (scheme.eq_ignore_ascii_case("bearer") && token68).then_some(value)
}

/// Removes client copies of our headers and our credentials; shared by both forward paths.
fn strip_edits(
    config: &CompiledConfig,
    req: &Request<'_>,
    bearer_is_ours: bool,
) -> Vec<HeaderEdit> {
    let mut edits: Vec<HeaderEdit> = req
        .our_header_names
        .iter()
        .map(|n| HeaderEdit::Remove((*n).to_owned()))
        .collect();
    if !req.token_headers.is_empty() {
        edits.push(HeaderEdit::Remove(TOKEN_HEADER.to_owned()));
    }
    if bearer_is_ours {
        // Every copy goes, the app's own bearer too if it shared a header with ours: a
        // credential of ours never reaches the pod, at the cost of the app's.
        edits.push(HeaderEdit::Remove("authorization".to_owned()));
    }
    let name = &config.cookie_name;
    // Only a pair actually named ours is a reason to touch the header: otherwise the pod gets
    // it exactly as the client sent it.
    if req.cookies.iter().any(|h| cookie::has(h, name)) {
        // Several Cookie headers become one, without ours, the others in order and unchanged.
        let rest: Vec<String> = req
            .cookies
            .iter()
            .filter_map(|h| {
                if cookie::has(h, name) {
                    cookie::strip(h, name)
                } else {
                    Some((*h).to_owned()).filter(|h| !h.trim().is_empty())
                }
            })
            .collect();
        if rest.is_empty() {
            edits.push(HeaderEdit::Remove("cookie".to_owned()));
        } else {
            edits.push(HeaderEdit::Set("cookie".to_owned(), rest.join("; ")));
        }
    }
    edits
}

/// The URL a browser is sent to for a fresh capability. `next` is the request path in its
/// canonical form (`redirect::safe_next`): never a `ticket` parameter, never the reserved
/// prefix. A path over [`MAX_NEXT_LEN`] loses its query first (the page, if not its view), and
/// only then the whole `next`.
pub fn auth_redirect(config: &CompiledConfig, pod: &PodAddr, path: &str) -> String {
    // The pod slug or service name came from a parsed host: a slug, safe in a query.
    let mut url = format!("{}?{}", config.auth_url, target_query(pod));
    let next = if path.len() <= MAX_NEXT_LEN {
        Some(path)
    } else {
        path.split_once('?')
            .map(|(page, _)| page)
            .filter(|page| page.len() <= MAX_NEXT_LEN)
    };
    if let Some(next) = next.filter(|n| !n.is_empty()) {
        url.push_str("&next=");
        url.push_str(&encode_query_value(&safe_next(next)));
    }
    url
}

/// Methods that must not change state (RFC 9110), so a cross-origin one is harmless to let by.
fn is_safe_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// Decides what happens to a request at time `now` (unix seconds).
pub fn decide(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    req: &Request<'_>,
    now: i64,
) -> Decision {
    decide_counting(config, cache, req, now).0
}

/// `decide`, and how many token candidates it looked at (a forward decided by exactly one
/// candidate depends on `now` only through that token's expiry, so it may be memoized).
pub(super) fn decide_counting(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    req: &Request<'_>,
    now: i64,
) -> (Decision, usize) {
    let pod = match config.public_hosts.parse(req.authority) {
        Ok(pod) => pod,
        Err(err) => return (Decision::Deny(Denial::BadHost(err)), 0),
    };
    let bearers = match our_bearers(req) {
        Ok(bearers) => bearers,
        Err(denial) => return (Decision::Deny(denial), 0),
    };

    match own_paths::classify(req.path) {
        Some(OwnPath::Logout) => return (Decision::Answer(own_paths::logout(config)), 0),
        Some(OwnPath::Userinfo) => {
            // From the capability for this very host, as for a forward, but a missing or
            // refused one is a 401, never a redirect: this is for scripts. A lapsed cookie
            // (a tab left idle) waits for its renewal as a forward would, and the answer
            // hands on the fresh cookie.
            let found = candidates(config, req, &bearers);
            let looked_at = found.len();
            let mut budget = MAX_VERIFICATIONS;
            let choice = (!found.is_empty())
                .then(|| choose(config, cache, &found, &pod, Want::Any, &mut budget, now));
            let decision = match (choice, api_token_of(config, req, &bearers)) {
                (Some(Choice::Granted(_, verified)), _) => {
                    Decision::Answer(own_paths::userinfo(&verified))
                }
                // An API token (exchanges on), with no capability that grants this host, as
                // for a forward: who the capability it is exchanged for names, once the control
                // plane has granted it for this host.
                (_, Some(token)) => {
                    let decision = match api_token_grant(config, cache, pod, None, token, now) {
                        Ok(cap) => Decision::Answer(own_paths::userinfo(&cap)),
                        Err(decision) => decision,
                    };
                    return (decision, looked_at + 1);
                }
                (None, None) => Decision::Deny(Denial::NoCapability { redirect: None }),
                (Some(Choice::OtherResource | Choice::ScopedElsewhere), None) => {
                    Decision::Deny(Denial::WrongScope)
                }
                (Some(Choice::Refused(reason)), None) => {
                    let refusal = Denial::InvalidCapability {
                        reason,
                        redirect: None,
                    };
                    match lapsed(config, cache, &found, &pod, Want::Any, budget, now) {
                        Some(Lapsed::Renewed(fresh, cookie)) => {
                            let mut reply = own_paths::userinfo(&fresh);
                            reply.headers.push(("set-cookie", cookie.to_string()));
                            Decision::Answer(reply)
                        }
                        Some(Lapsed::Renew(old)) => Decision::Renew { old, refusal },
                        None => Decision::Deny(refusal),
                    }
                }
            };
            return (decision, looked_at);
        }
        None => {}
    }

    if path::is_reserved(req.path.as_bytes()) {
        // The control plane's callback: the host is validated, no token needed, the pod never
        // sees it. Host stays as is so the control plane can bind the ticket to it.
        let mut edits = strip_edits(config, req, !bearers.is_empty());
        edits.push(forwarded_host(config, &pod, req.authority));
        edits.push(HeaderEdit::Set(
            CLUSTER_HEADER.to_owned(),
            config.control_plane_cluster.clone(),
        ));
        let forward = Forward {
            edits,
            reroute: true,
            user: None,
            expires_at: None,
            response: None,
            websocket: false,
            capability: None,
            renew_at: None,
            target: None,
            exchanged: false,
            set_cookie: None,
            exchange: None,
        };
        return (Decision::Forward(Rc::new(forward)), 0);
    }

    // On a service reached per resource, the resource the path is under. A path under none is
    // refused only to a caller shown to reach this service (`confine`); anyone else gets the
    // answer a request without a capability gets, so the refusal tells nobody else that the
    // service exists or how it is reached.
    let scope = resource_scope(config, &pod, req.path);
    let resource = scope.as_ref().ok().copied().flatten();

    // An API token (exchanges on) decides when no capability grants the request: a capability
    // sent with it keeps its meaning.
    let api = api_token_of(config, req, &bearers);
    let page_load = req.is_page_load();
    let redirect = || page_load.then(|| auth_redirect(config, &pod, req.path));
    let found = candidates(config, req, &bearers);
    let looked_at = found.len();
    if found.is_empty() {
        if let Some(token) = api {
            let decision =
                api_token_decision(config, cache, req, &bearers, pod, resource, token, now);
            return (confine(&scope, decision), 1);
        }
        return (
            Decision::Deny(Denial::NoCapability {
                redirect: redirect(),
            }),
            0,
        );
    }

    // A path under no resource is judged with any capability for this host, to tell a caller
    // who reaches the service from one who does not.
    let want = scope.as_ref().map_or(Want::Any, |r| Want::Exactly(*r));
    // The cookie a lapsed capability's renewal set, to hand on with the fresh one.
    let mut set_cookie = None;
    // The signatures this request may cost, shared by the live and the lapsed candidates.
    let mut budget = MAX_VERIFICATIONS;
    let choice = choose(config, cache, &found, &pod, want, &mut budget, now);
    let (source, verified) = match (choice, api) {
        (Choice::Granted(source, verified), _) => match &scope {
            Ok(_) => (source, verified),
            Err(denial) => return (Decision::Deny(denial.clone()), looked_at),
        },
        (_, Some(token)) => {
            let decision =
                api_token_decision(config, cache, req, &bearers, pod, resource, token, now);
            return (confine(&scope, decision), looked_at + 1);
        }
        // A browser holding the capability for another resource of this service is sent to
        // get one for this resource, as without one; the control plane mints it, or refuses.
        (Choice::OtherResource, None) if page_load => {
            return (
                Decision::Deny(Denial::NoCapability {
                    redirect: redirect(),
                }),
                looked_at,
            )
        }
        (Choice::OtherResource, None) => return (Decision::Deny(Denial::WrongResource), looked_at),
        (Choice::ScopedElsewhere, None) => return (Decision::Deny(Denial::WrongScope), looked_at),
        (Choice::Refused(reason), None) => {
            // A capability from the future (the control plane's clock ahead of this proxy's by
            // more than the leeway) is not sent to sign in: the fresh one would be refused the
            // same way and the browser would go round until it gives up. The 401 says why.
            let redirect = if reason == TokenError::NotYetValid {
                None
            } else {
                redirect()
            };
            let refusal = Denial::InvalidCapability { reason, redirect };
            match lapsed(config, cache, &found, &pod, want, budget, now) {
                Some(Lapsed::Renewed(fresh, cookie)) => match &scope {
                    Ok(_) => {
                        set_cookie = Some(cookie);
                        (Source::Cookie, fresh)
                    }
                    Err(denial) => return (Decision::Deny(denial.clone()), looked_at),
                },
                Some(Lapsed::Renew(old)) => {
                    return (Decision::Renew { old, refusal }, looked_at);
                }
                None => return (Decision::Deny(refusal), looked_at),
            }
        }
    };

    if source == Source::Cookie {
        // Sibling pods are same-site, so SameSite does not stop pod B's page from using the
        // browser's cookie for pod A: cookie authority only counts from A's own origins.
        if req.is_websocket() {
            if req.origin.and_then(|o| origin_pod(config, o)).as_ref() != Some(&pod) {
                return (Decision::Deny(Denial::CrossOriginWebSocket), looked_at);
            }
        } else if !is_safe_method(req.method) {
            if let Some(origin) = req.origin {
                // A page served with `Referrer-Policy: no-referrer` (helmet's default) sends
                // `Origin: null` on its own form posts and fetches; `Sec-Fetch-Site:
                // same-origin`, which browsers set and no page can, says it came from this host.
                let own_page = origin == "null" && req.sec_fetch_site == Some("same-origin");
                if !own_page && !is_same_pod_origin(config, &pod, origin) {
                    return (Decision::Deny(Denial::CrossPodRequest), looked_at);
                }
            }
        }
    }

    let decision = forward_to_pod(config, req, &bearers, &pod, &verified, source, now);
    match (decision, set_cookie) {
        (Decision::Forward(forward), Some(cookie)) => {
            let forward = Forward {
                set_cookie: Some(cookie),
                ..Forward::clone(&forward)
            };
            (Decision::Forward(Rc::new(forward)), looked_at)
        }
        (decision, _) => (decision, looked_at),
    }
}

/// The forward to the pod `verified` grants, or the pod's own refusal (not in the directory,
/// not running).
fn forward_to_pod(
    config: &CompiledConfig,
    req: &Request<'_>,
    bearers: &[&str],
    pod: &PodAddr,
    verified: &Rc<Verified>,
    source: Source,
    now: i64,
) -> Decision {
    if pod.port == SERVICE_PORT {
        return forward_to_service(config, req, bearers, pod, verified, source, now);
    }
    let Some(entry) = config.pods.get(&pod.pod) else {
        return Decision::Deny(Denial::UnknownPod);
    };
    if entry.status != PodStatus::Running {
        return Decision::Deny(Denial::NotRunning(entry.status));
    }

    let mut edits = strip_edits(config, req, !bearers.is_empty());
    edits.push(forwarded_host(config, pod, req.authority));
    edits.push(HeaderEdit::Set(
        ":authority".to_owned(),
        config.upstream_hosts.render(pod),
    ));
    // A pod with an address goes by the route Envoy picked before the filter ran, the pods'
    // original-destination one (no cluster header set), to the address set here; any other by
    // its own cluster, named in the cluster header.
    let reroute = match &entry.address {
        Some(address) => {
            edits.push(HeaderEdit::Set(UPSTREAM_HEADER.to_owned(), address.clone()));
            !req.our_header_names.is_empty()
        }
        None => {
            edits.push(HeaderEdit::Set(
                CLUSTER_HEADER.to_owned(),
                entry.cluster.clone(),
            ));
            true
        }
    };
    edits.push(HeaderEdit::Set(
        USER_HEADER.to_owned(),
        verified.claims.sub.clone(),
    ));
    if let Some(email) = verified.claims.email.as_ref().filter(|e| is_header_safe(e)) {
        edits.push(HeaderEdit::Set(EMAIL_HEADER.to_owned(), email.clone()));
    }
    granted_forward(config, req, pod, edits, reroute, verified, source)
}

/// The forward `verified` grants with `edits`: for its user until it expires, renewed at the
/// edge when it came in the cookie, its answer handled as a pod's.
fn granted_forward(
    config: &CompiledConfig,
    req: &Request<'_>,
    pod: &PodAddr,
    edits: Vec<HeaderEdit>,
    reroute: bool,
    verified: &Rc<Verified>,
    source: Source,
) -> Decision {
    let forward = Forward {
        edits,
        reroute,
        user: Some(verified.claims.sub.clone()),
        expires_at: Some(verified.expires_at),
        response: Some(PodResponse::new(req.authority, req.origin)),
        websocket: req.is_websocket(),
        renew_at: renewal::renew_at(config.renewal.as_ref(), verified, source == Source::Cookie),
        capability: Some(Rc::clone(verified)),
        target: Some(pod.clone()),
        exchanged: source == Source::ApiToken,
        set_cookie: None,
        exchange: None,
    };
    Decision::Forward(Rc::new(forward))
}

/// The capability `decide` granted `req` for its host, found again (from the verified-token
/// cache `decide` just filled, so no signature is checked twice), or the fresh one that
/// renewed its lapsed cookie; `None` when none was. For a refusal that comes after the grant
/// and needs the capability: waking a stopped pod.
pub(super) fn granted(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    req: &Request<'_>,
    now: i64,
) -> Option<(PodAddr, Rc<Verified>)> {
    let pod = config.public_hosts.parse(req.authority).ok()?;
    let bearers = our_bearers(req).ok()?;
    let want = Want::Exactly(resource_scope(config, &pod, req.path).ok()?);
    let found = candidates(config, req, &bearers);
    let mut budget = MAX_VERIFICATIONS;
    match choose(config, cache, &found, &pod, want, &mut budget, now) {
        Choice::Granted(_, verified) => Some((pod, verified)),
        Choice::Refused(_) => match lapsed(config, cache, &found, &pod, want, budget, now) {
            Some(Lapsed::Renewed(fresh, _)) => Some((pod, fresh)),
            Some(Lapsed::Renew(_)) | None => None,
        },
        Choice::OtherResource | Choice::ScopedElsewhere => None,
    }
}

/// `X-Forwarded-Host`: the public pod host the client asked for (Host is rewritten to the
/// upstream host), rendered from the parsed pod, with the `:port` the client's authority had.
/// Replaces every client copy.
fn forwarded_host(config: &CompiledConfig, pod: &PodAddr, authority: &str) -> HeaderEdit {
    let mut host = config.public_hosts.render(pod);
    // `parse` accepted the authority, so a `:` can only start its port suffix of digits.
    if let Some((_, port)) = authority.rsplit_once(':') {
        host.push(':');
        host.push_str(port);
    }
    HeaderEdit::Set(FORWARDED_HOST_HEADER.to_owned(), host)
}

/// Set by the filter on every forward, to the pod and to the control plane.
pub const FORWARDED_HOST_HEADER: &str = "x-forwarded-host";

fn is_header_safe(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}
