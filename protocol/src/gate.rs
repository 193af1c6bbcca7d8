//! The filter's decision, as a pure function: request headers in, a local reply or a list of
//! header edits out. The proxy-wasm adapter only moves values between Envoy and this module.

use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use std::rc::Rc;

use crate::config::{
    CompiledConfig, PodStatus, CLUSTER_HEADER, EMAIL_HEADER, HEADER_PREFIX, UPSTREAM_HEADER,
    USER_HEADER,
};
use crate::cookie::{self, MAX_COOKIE_HEADER_LEN, TOKEN_HEADER};
use crate::cors::{origin_pod, PreflightRequest};
use crate::host::PodAddr;
use crate::path;
use crate::redirect::{encode_query_value, safe_next, MAX_NEXT_LEN};
use crate::reply::Denial;
use crate::response::PodResponse;
use crate::token::{self, TokenError, Verified, API_TOKEN_PREFIX, MAX_TOKEN_LEN, MIN_TOKEN_LEN};
use crate::wire::HeaderPairs;

/// The request headers the decision reads (besides our own `x-podgate-*`).
const HEADER_NAMES_READ: [&str; 12] = [
    ":authority",
    ":path",
    ":method",
    "cookie",
    "authorization",
    "accept",
    "sec-fetch-mode",
    "upgrade",
    "origin",
    "access-control-request-method",
    "access-control-request-headers",
    TOKEN_HEADER,
];

/// How many signatures one request may make us check. Candidates are not limited (a browser
/// sends every planted cookie of our name): each is first looked up in the verified-token cache
/// and checked without its signature (`Verifier::precheck`), which is cheap, so the real
/// capability is found among any number of planted ones, and only the candidates that pass
/// are worth a signature: those for this very host first.
pub const MAX_VERIFICATIONS: usize = 2;

/// How many token values that failed verification one worker remembers, so that planted
/// values cost a signature check once, not on every request.
const REJECTED_MAX_ENTRIES: usize = 1024;

/// The request headers the decision reads. Every other header passes through untouched, except
/// client copies of ours, which are listed in `our_header_names`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub authority: &'a str,
    pub path: &'a str,
    pub method: &'a str,
    /// Every `Cookie` header (HTTP/2 and Envoy usually join them; HTTP/1 clients may not).
    pub cookies: Vec<&'a str>,
    /// Every `podgate-token` header.
    pub token_headers: Vec<&'a str>,
    /// Every `Authorization` header.
    pub authorizations: Vec<&'a str>,
    pub accept: Option<&'a str>,
    pub sec_fetch_mode: Option<&'a str>,
    pub upgrade: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// CORS preflight fields (`cors::preflight`).
    pub access_control_request_method: Option<&'a str>,
    pub access_control_request_headers: Option<&'a str>,
    /// Names of client-sent headers starting with `x-podgate-` (to be removed).
    pub our_header_names: Vec<&'a str>,
}

impl<'a> Request<'a> {
    /// Builds the view from a header list as Envoy hands it over (lowercase names, raw value
    /// bytes). A header we read that is not UTF-8 is refused rather than guessed at; other
    /// headers pass through untouched whatever their bytes.
    pub fn from_headers(headers: &'a [(String, Vec<u8>)]) -> Result<Self, Denial> {
        Self::from_pairs(
            headers
                .iter()
                .map(|(name, raw)| (name.as_bytes(), raw.as_slice())),
        )
    }

    /// [`Request::from_headers`] over the borrowed pairs of `wire::decode_header_map`,
    /// without copying a header: a name that is not UTF-8 is `MalformedHeaderName`.
    pub fn from_slices(headers: &'a [crate::wire::HeaderSlices<'a>]) -> Result<Self, Denial> {
        Self::from_pairs(headers.iter().copied())
    }

    fn from_pairs(headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Result<Self, Denial> {
        let mut req = Request::default();
        for (name, raw) in headers {
            let Ok(name) = std::str::from_utf8(name) else {
                return Err(Denial::MalformedHeaderName);
            };
            let ours = name.starts_with(HEADER_PREFIX);
            let read = HEADER_NAMES_READ.iter().find(|n| **n == name).copied();
            if ours {
                req.our_header_names.push(name);
                continue;
            }
            let Some(read) = read else { continue };
            let Ok(value) = std::str::from_utf8(raw) else {
                return Err(Denial::MalformedHeader(read));
            };
            match name {
                ":authority" => req.authority = value,
                ":path" => req.path = value,
                ":method" => req.method = value,
                // Envoy joins repeated Cookie headers with "; " before filters run.
                "cookie" => req.cookies.push(value),
                "authorization" => req.authorizations.push(value),
                "accept" => req.accept = Some(value),
                "sec-fetch-mode" => req.sec_fetch_mode = Some(value),
                "upgrade" => req.upgrade = Some(value),
                "origin" => req.origin = Some(value),
                "access-control-request-method" => req.access_control_request_method = Some(value),
                "access-control-request-headers" => {
                    req.access_control_request_headers = Some(value)
                }
                _ => req.token_headers.push(value),
            }
        }
        Ok(req)
    }

    /// A WebSocket upgrade (`Upgrade: websocket`, any casing).
    pub fn is_websocket(&self) -> bool {
        self.upgrade
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    }

    /// The fields a CORS preflight decision reads (`cors::preflight`).
    pub fn preflight_view(&self) -> PreflightRequest<'a> {
        PreflightRequest {
            authority: self.authority,
            method: self.method,
            origin: self.origin,
            request_method: self.access_control_request_method,
            request_headers: self.access_control_request_headers,
        }
    }

    /// A browser loading a page (so a redirect to sign in helps), not a script or a subresource.
    pub fn is_page_load(&self) -> bool {
        if self.is_websocket() || !(self.method == "GET" || self.method == "HEAD") {
            return false;
        }
        match self.sec_fetch_mode {
            Some(mode) => mode == "navigate",
            None => self.accept.is_some_and(|a| a.contains("text/html")),
        }
    }
}

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
    /// Forward after applying the edits; always clear the route cache afterwards. Shared, so
    /// the decision memo can hand the same one to every request that repeats its inputs.
    Forward(Rc<Forward>),
}

/// What a forward does to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub edits: Vec<HeaderEdit>,
    /// Who, for logs and metrics (`None` on the reserved path).
    pub user: Option<String>,
    /// When the capability expires (unix seconds).
    pub expires_at: Option<i64>,
    /// What sanitizing the pod's response needs (`None` on the reserved path: the control
    /// plane's responses are not touched).
    pub response: Option<PodResponse>,
    /// A WebSocket upgrade, to be closed when the capability expires.
    pub websocket: bool,
}

/// Where the capability came from; cookie-authenticated WebSockets must come from the pod's own
/// origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    TokenHeader,
    Bearer,
    Cookie,
}

/// A per-worker cache of verified capabilities, keyed by the token itself (only tokens that
/// verified and fit `MAX_TOKEN_LEN` are stored; hashing the key with SHA-256 cost 30% of a
/// cached request). Expiry and revocation are re-checked on every hit, so the cache never
/// extends a token's life.
///
/// Beside it, the values that failed verification, by a keyed hash of the whole value, with
/// why (never `NotYetValid`, which time can change; every other failure is final for a given
/// configuration, and a new configuration clears both): a planted value costs one signature
/// check per worker, not one per request.
#[derive(Debug, Default)]
pub struct VerifiedCache {
    entries: HashMap<Box<str>, Rc<Verified>, TailHash>,
    rejected: HashMap<u64, TokenError, BuildHasherDefault<PremixedHasher>>,
    rejected_keys: RandomState,
    hits: u64,
    misses: u64,
    verifications: u64,
}

impl VerifiedCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.rejected.clear();
    }

    /// `(hits, misses)`: answers from either cache, and signature checks with the cache on.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// How many signatures were checked, cache on or off.
    pub fn verifications(&self) -> u64 {
        self.verifications
    }

    /// How many failed values are remembered.
    pub fn rejected_len(&self) -> usize {
        self.rejected.len()
    }

    /// The live verified entry for `token`, or `Expired` (and the entry dropped); `None` if the
    /// token is not in the cache (or the cache is off).
    fn verified(
        &mut self,
        config: &CompiledConfig,
        token: &str,
        now: i64,
    ) -> Option<Result<Rc<Verified>, TokenError>> {
        if config.token_cache_entries == 0
            || token.len() < MIN_TOKEN_LEN
            || token.len() > MAX_TOKEN_LEN
        {
            return None;
        }
        let hit = self.entries.get(token)?;
        self.hits += 1;
        if now >= hit.expires_at.saturating_add(config.verifier.leeway()) {
            self.entries.remove(token);
            return Some(Err(TokenError::Expired));
        }
        Some(Ok(Rc::clone(hit)))
    }

    /// The key of `token` among the rejected values; `None` with the cache off.
    fn rejected_key(&self, config: &CompiledConfig, token: &str) -> Option<u64> {
        (config.token_cache_entries > 0).then(|| self.rejected_keys.hash_one(token))
    }

    /// Why the value of `key` failed verification before, if it did.
    fn known_bad(&mut self, key: Option<u64>) -> Option<TokenError> {
        let err = self.rejected.get(&key?)?.clone();
        self.hits += 1;
        Some(err)
    }

    fn reject(&mut self, key: Option<u64>, err: &TokenError) {
        let Some(key) = key else { return };
        if *err == TokenError::NotYetValid {
            return;
        }
        if self.rejected.len() >= REJECTED_MAX_ENTRIES {
            self.rejected.clear();
        }
        self.rejected.insert(key, err.clone());
    }

    fn insert(&mut self, token: &str, verified: Rc<Verified>, capacity: usize, now: i64) {
        if capacity == 0 {
            return;
        }
        if self.entries.len() >= capacity {
            self.entries.retain(|_, v| v.expires_at > now);
            if self.entries.len() >= capacity {
                // Still full of live tokens: start over rather than track recency per hit.
                self.entries.clear();
            }
        }
        self.entries.insert(token.into(), verified);
    }
}

/// Hashes a cache key by its last 16 bytes and its length, with the process's random SipHash
/// keys. A token ends in its signature, so the tail is as good as the whole for spreading keys,
/// and SipHash over a whole ~300-byte token was 7% of a cached request. Only verified tokens
/// are ever stored, so an attacker cannot fill a bucket; a colliding probe costs one compare.
#[derive(Debug, Clone, Default)]
struct TailHash(RandomState);

impl BuildHasher for TailHash {
    type Hasher = TailHasher;
    fn build_hasher(&self) -> TailHasher {
        TailHasher(self.0.build_hasher())
    }
}

struct TailHasher(DefaultHasher);

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let tail = bytes.get(bytes.len().saturating_sub(16)..).unwrap_or(bytes);
        self.0.write(tail);
        self.0.write_usize(bytes.len());
    }
    fn write_u8(&mut self, i: u8) {
        self.0.write_u8(i);
    }
    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// Verifies one token, through the cache: a value verified or refused before costs nothing,
/// anything else one signature check (what `choose` does for each candidate, in two passes).
#[cfg(test)]
fn check_token(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    token: &str,
    now: i64,
) -> Result<Rc<Verified>, TokenError> {
    // Refuse oversized input before any work on it (hashing a 64 KiB value for a lookup would
    // cost about as much as a signature check).
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Size);
    }
    if let Some(known) = cache.verified(config, token, now) {
        return known;
    }
    let key = cache.rejected_key(config, token);
    if let Some(err) = cache.known_bad(key) {
        return Err(err);
    }
    verify_now(config, cache, token, key, now)
}

/// Checks a token's signature and claims, and remembers the outcome.
fn verify_now(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    token: &str,
    key: Option<u64>,
    now: i64,
) -> Result<Rc<Verified>, TokenError> {
    let cache_on = config.token_cache_entries > 0;
    if cache_on {
        cache.misses += 1;
    }
    cache.verifications += 1;
    match config.verifier.verify(token, now) {
        Ok(verified) => {
            let verified = Rc::new(verified);
            if cache_on {
                cache.insert(token, Rc::clone(&verified), config.token_cache_entries, now);
            }
            Ok(verified)
        }
        Err(err) => {
            cache.reject(key, &err);
            Err(err)
        }
    }
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
    for t in &req.token_headers {
        out.push((Source::TokenHeader, t.trim()));
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

/// What one verified capability means for this request.
enum Verdict {
    Grant,
    Elsewhere,
    Refused(TokenError),
}

fn judge(config: &CompiledConfig, v: &Verified, host: &str, pod: &PodAddr) -> Verdict {
    if config.revoked.contains(&v.claims.jti) {
        Verdict::Refused(TokenError::Revoked)
    } else if v.claims.aud == host && v.claims.pod == pod.pod && v.claims.port == pod.port {
        Verdict::Grant
    } else {
        Verdict::Elsewhere
    }
}

/// What the candidates came to.
enum Choice {
    Granted(Source, Rc<Verified>),
    /// No grant, and at least one valid capability for another pod or port.
    ScopedElsewhere,
    /// No grant; the first reason a candidate was refused.
    Refused(TokenError),
}

/// Finds the candidate that grants this request, at a bounded cost: first every candidate is
/// looked up in the cache (a capability verified before grants at no cost) and, if not there,
/// prechecked without its signature (garbage, another kind, an unknown key, an expired `exp`
/// or a value that failed before are refused there); then at most `MAX_VERIFICATIONS`
/// signatures are checked, the candidates whose unverified `aud` is this host first.
fn choose(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    found: Vec<(Source, &str)>,
    pod: &PodAddr,
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
    let mut here_first = Vec::new();
    let mut then_elsewhere = Vec::new();
    for (at, (source, token)) in found.into_iter().enumerate() {
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
        match result.map(|v| (judge(config, &v, &host, pod), v)) {
            Ok((Verdict::Grant, v)) => return Choice::Granted(source, v),
            Ok((Verdict::Elsewhere, _)) => elsewhere = true,
            Ok((Verdict::Refused(err), _)) | Err(err) => refuse(at, err),
        }
    }
    let mut checked: Vec<&str> = Vec::with_capacity(MAX_VERIFICATIONS);
    for (at, source, token, key) in here_first.into_iter().chain(then_elsewhere) {
        if checked.contains(&token) {
            // The same value twice (planted duplicates): its outcome is known.
            continue;
        }
        if checked.len() >= MAX_VERIFICATIONS {
            break;
        }
        checked.push(token);
        let result = verify_now(config, cache, token, key, now);
        match result.map(|v| (judge(config, &v, &host, pod), v)) {
            Ok((Verdict::Grant, v)) => return Choice::Granted(source, v),
            Ok((Verdict::Elsewhere, _)) => elsewhere = true,
            Ok((Verdict::Refused(err), _)) | Err(err) => refuse(at, err),
        }
    }
    if elsewhere {
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
/// prefix.
pub fn auth_redirect(config: &CompiledConfig, pod: &PodAddr, path: &str) -> String {
    let mut url = format!(
        "{}?pod={}&port={}",
        config.auth_url,
        encode_query_value(&pod.pod),
        pod.port
    );
    if !path.is_empty() && path.len() <= MAX_NEXT_LEN {
        url.push_str("&next=");
        url.push_str(&encode_query_value(&safe_next(path)));
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
fn decide_counting(
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
            user: None,
            expires_at: None,
            response: None,
            websocket: false,
        };
        return (Decision::Forward(Rc::new(forward)), 0);
    }

    let page_load = req.is_page_load();
    let redirect = || page_load.then(|| auth_redirect(config, &pod, req.path));
    let found = candidates(config, req, &bearers);
    let looked_at = found.len();
    if found.is_empty() {
        return (
            Decision::Deny(Denial::NoCapability {
                redirect: redirect(),
            }),
            0,
        );
    }

    let (source, verified) = match choose(config, cache, found, &pod, now) {
        Choice::Granted(source, verified) => (source, verified),
        Choice::ScopedElsewhere => return (Decision::Deny(Denial::WrongScope), looked_at),
        Choice::Refused(reason) => {
            return (
                Decision::Deny(Denial::InvalidCapability {
                    reason,
                    redirect: redirect(),
                }),
                looked_at,
            )
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
                let same_pod = origin_pod(config, origin).is_some_and(|o| o.pod == pod.pod);
                if !same_pod {
                    return (Decision::Deny(Denial::CrossPodRequest), looked_at);
                }
            }
        }
    }

    let Some(entry) = config.pods.get(&pod.pod) else {
        return (Decision::Deny(Denial::UnknownPod), looked_at);
    };
    if entry.status != PodStatus::Running {
        return (Decision::Deny(Denial::NotRunning(entry.status)), looked_at);
    }

    let mut edits = strip_edits(config, req, !bearers.is_empty());
    edits.push(forwarded_host(config, &pod, req.authority));
    edits.push(HeaderEdit::Set(
        ":authority".to_owned(),
        config.upstream_hosts.render(&pod),
    ));
    edits.push(HeaderEdit::Set(
        CLUSTER_HEADER.to_owned(),
        entry.cluster.clone(),
    ));
    if let Some(address) = &entry.address {
        edits.push(HeaderEdit::Set(UPSTREAM_HEADER.to_owned(), address.clone()));
    }
    edits.push(HeaderEdit::Set(
        USER_HEADER.to_owned(),
        verified.claims.sub.clone(),
    ));
    if let Some(email) = verified.claims.email.as_ref().filter(|e| is_header_safe(e)) {
        edits.push(HeaderEdit::Set(EMAIL_HEADER.to_owned(), email.clone()));
    }
    let forward = Forward {
        edits,
        user: Some(verified.claims.sub.clone()),
        expires_at: Some(verified.expires_at),
        response: Some(PodResponse::for_request(req)),
        websocket: req.is_websocket(),
    };
    (Decision::Forward(Rc::new(forward)), looked_at)
}

/// How many forward decisions one worker remembers (each holds its key, about the size of the
/// request's Cookie header, and the edits).
pub const MEMO_MAX_ENTRIES: usize = 4096;

/// A per-worker memo of forward decisions, looked up from the request's header map as Envoy
/// hands it over, before anything is decoded (`DecisionMemo::probe`): on a hit the request view
/// is never built and nothing is allocated.
///
/// The key is every header a forward depends on, in the order they came, each tagged and
/// length-prefixed: `:authority`, `:method`, `Origin`, `Upgrade`, every `Cookie`,
/// `Authorization` and `podgate-token` value, and the names of client-sent `x-podgate-*`
/// headers. Two requests with one key have one request view in every field a forward reads.
/// The other headers `decide` reads are not in the key:
/// - `:path` is read only to tell the reserved prefix, and for a denial's redirect;
/// - `Accept` and `Sec-Fetch-Mode` only for a denial's redirect;
/// - `Access-Control-Request-*` only for a CORS preflight, which the filter answers before the
///   decision.
///
/// So the probe never memoizes a request on the reserved path or one with an
/// `Access-Control-Request-Method`, and denials are never stored. Nor a request it cannot
/// vouch for without the view: a header name, or the value of a header `decide` reads, that is
/// not ASCII (the view refuses what is not UTF-8), or a map that does not decode. Those go the
/// long way every time.
///
/// Only a forward decided by exactly one token candidate is kept, until that token's expiry
/// (with the verifier's leeway, the rule the token cache applies): with one candidate, the
/// decision depends on time only through that expiry. Everything else it depends on comes from
/// the configuration, and a new configuration clears the memo (`clear`). Full, it starts over,
/// like the token cache.
///
/// Keys are hashed word by word with a per-worker random seed (`memo_hash`) and compared word by
/// word: SipHash and `memcmp` over a ~450-byte key cost 15,000 wasm instructions, as much as
/// the decision they would save. Only forwards are stored, so filling a bucket takes valid
/// capabilities, and the memo never holds more than `MEMO_MAX_ENTRIES`.
#[derive(Debug)]
pub struct DecisionMemo {
    /// By `memo_hash` of the key; a bucket holds every entry of that hash.
    entries: HashMap<u64, Vec<Memoized>, BuildHasherDefault<PremixedHasher>>,
    len: usize,
    seed: u64,
    /// The key of the request probed last, reused so a probe allocates nothing.
    key: Vec<u8>,
    /// Counts probes: a decision is stored only under the key of the latest one.
    probes: u64,
}

impl Default for DecisionMemo {
    fn default() -> Self {
        Self {
            entries: HashMap::default(),
            len: 0,
            // The process's random SipHash keys, folded into one word.
            seed: RandomState::new().hash_one(0x0070_6f64_6761_7465_u64),
            key: Vec::new(),
            probes: 0,
        }
    }
}

#[derive(Debug)]
struct Memoized {
    key: Box<[u8]>,
    forward: Rc<Forward>,
    /// The first second the memoized decision no longer holds.
    valid_until: i64,
}

/// What `DecisionMemo::probe` found.
#[derive(Debug)]
pub enum Probe {
    /// The forward decided for an earlier request with the same key, still valid.
    Hit(Rc<Forward>),
    /// Decide with `decide_memoized`, handing it this.
    Miss(MemoSlot),
}

/// Where `decide_memoized` may store its decision: the probed key's hash, if the request may
/// be memoized at all, and which probe it came from.
#[derive(Debug)]
#[must_use]
pub struct MemoSlot {
    hash: Option<u64>,
    probe: u64,
}

/// A `u64` key that is already a good hash (`memo_hash`) is used as is.
#[derive(Debug, Default)]
struct PremixedHasher(u64);

impl Hasher for PremixedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// A seeded multiply-rotate hash over 8-byte words, finished with a 64-bit avalanche
/// (MurmurHash3's `fmix64`); and every byte of `bytes` OR-ed together (the same pass tells
/// whether they are all ASCII).
fn memo_hash(seed: u64, bytes: &[u8]) -> (u64, u8) {
    let (words, tail) = bytes.as_chunks::<8>();
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(MIX);
    let mut all = 0;
    for word in words {
        let word = u64::from_le_bytes(*word);
        all |= word;
        h = (h ^ word).wrapping_mul(MIX).rotate_left(31);
    }
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail);
    let last = u64::from_le_bytes(last);
    h = (h ^ last).wrapping_mul(MIX);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (h ^ (h >> 33), or_bytes(all | last))
}

/// The bytes of a word OR-ed together.
fn or_bytes(word: u64) -> u8 {
    word.to_le_bytes().iter().fold(0, |acc, b| acc | b)
}

/// Every byte of `bytes` OR-ed together.
fn or_all(bytes: &[u8]) -> u8 {
    let (words, tail) = bytes.as_chunks::<8>();
    let all = words.iter().fold(0, |acc, w| acc | u64::from_le_bytes(*w));
    tail.iter().fold(or_bytes(all), |acc, b| acc | b)
}

/// `a == b`, a word at a time (wasi-libc's `memcmp` goes byte by byte).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let ((a_words, a_tail), (b_words, b_tail)) = (a.as_chunks::<8>(), b.as_chunks::<8>());
    let differ = a_words.iter().zip(b_words).fold(0, |acc, (x, y)| {
        acc | (u64::from_le_bytes(*x) ^ u64::from_le_bytes(*y))
    });
    differ == 0 && a_tail == b_tail
}

/// How the probe treats one header, by name.
enum Keyed {
    /// In the key, under this tag, with its value.
    Value(u8),
    /// In the key, under this tag, by its name only (client copies of `x-podgate-*`).
    Name(u8),
    /// Read by `decide` but not for a forward: its value must only be ASCII.
    Checked,
    /// Never memoized (`:path` on the reserved prefix, a CORS preflight's header).
    Refused,
    /// Not read.
    Ignored,
}

fn keyed(name: &[u8], value: &[u8]) -> Keyed {
    match name {
        b":authority" => Keyed::Value(b'a'),
        b":method" => Keyed::Value(b'm'),
        b"origin" => Keyed::Value(b'o'),
        b"upgrade" => Keyed::Value(b'u'),
        b"cookie" => Keyed::Value(b'c'),
        b"authorization" => Keyed::Value(b'b'),
        _ if name == TOKEN_HEADER.as_bytes() => Keyed::Value(b't'),
        b":path" if path::is_reserved(value) => Keyed::Refused,
        b":path" | b"accept" | b"sec-fetch-mode" | b"access-control-request-headers" => {
            Keyed::Checked
        }
        b"access-control-request-method" => Keyed::Refused,
        _ if name.starts_with(HEADER_PREFIX.as_bytes()) => Keyed::Name(b'x'),
        _ => Keyed::Ignored,
    }
}

impl DecisionMemo {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.len = 0;
    }

    /// Looks the request up by its serialized header map (`wire`). A hit counts as a
    /// token-cache hit: the token was verified before.
    pub fn probe(
        &mut self,
        config: &CompiledConfig,
        cache: &mut VerifiedCache,
        wire: &[u8],
        now: i64,
    ) -> Probe {
        self.probes = self.probes.wrapping_add(1);
        let on = config.token_cache_entries.min(MEMO_MAX_ENTRIES) > 0;
        let hash = if on { self.build_key(wire) } else { None };
        if let Some(forward) = hash.and_then(|hash| self.lookup(hash, now)) {
            cache.hits += 1;
            return Probe::Hit(forward);
        }
        Probe::Miss(MemoSlot {
            hash,
            probe: self.probes,
        })
    }

    /// Writes the key of the request in `wire` into `self.key` and hashes it; `None` if the
    /// request may not be memoized.
    fn build_key(&mut self, wire: &[u8]) -> Option<u64> {
        /// The tag, the length in four 7-bit groups (so the whole key is ASCII exactly when
        /// the values are), the bytes.
        fn field(key: &mut Vec<u8>, tag: u8, bytes: &[u8]) -> bool {
            let len = bytes.len();
            if len >= 1 << 28 {
                return false;
            }
            key.extend_from_slice(&[
                tag,
                (len & 0x7f) as u8,
                (len >> 7 & 0x7f) as u8,
                (len >> 14 & 0x7f) as u8,
                (len >> 21 & 0x7f) as u8,
            ]);
            key.extend_from_slice(bytes);
            true
        }
        let pairs = HeaderPairs::new(wire).ok()?;
        let key = &mut self.key;
        key.clear();
        // Every name, and the values read but not keyed, OR-ed together: ASCII if below 0x80.
        let mut read = 0;
        for pair in pairs {
            let (name, value) = pair.ok()?;
            read |= or_all(name);
            let kept = match keyed(name, value) {
                Keyed::Value(tag) => field(key, tag, value),
                Keyed::Name(tag) => field(key, tag, name),
                Keyed::Checked => {
                    read |= or_all(value);
                    true
                }
                Keyed::Ignored => true,
                Keyed::Refused => false,
            };
            if !kept {
                return None;
            }
        }
        let (hash, keyed) = memo_hash(self.seed, key);
        ((read | keyed) < 0x80).then_some(hash)
    }

    /// The live entry for the key in `self.key`, if any; an expired one is dropped.
    fn lookup(&mut self, hash: u64, now: i64) -> Option<Rc<Forward>> {
        let bucket = self.entries.get_mut(&hash)?;
        let at = bucket.iter().position(|m| same_bytes(&m.key, &self.key))?;
        if now < bucket[at].valid_until {
            return Some(Rc::clone(&bucket[at].forward));
        }
        bucket.swap_remove(at);
        if bucket.is_empty() {
            self.entries.remove(&hash);
        }
        self.len -= 1;
        None
    }

    fn insert(&mut self, hash: u64, entry: Memoized, capacity: usize) {
        if self.len >= capacity {
            self.clear();
        }
        self.entries.entry(hash).or_default().push(entry);
        self.len += 1;
    }
}

/// `decide`, for a request the memo missed (`DecisionMemo::probe`), storing a forward it may
/// keep. Always the same answer as `decide` with the same cache: the `gate` fuzz target and
/// `gate_tests::memo_*` check it. The memo is off when the token cache is
/// (`token_cache_entries` 0).
pub fn decide_memoized(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    memo: &mut DecisionMemo,
    slot: MemoSlot,
    req: &Request<'_>,
    now: i64,
) -> Decision {
    let (decision, looked_at) = decide_counting(config, cache, req, now);
    let capacity = config.token_cache_entries.min(MEMO_MAX_ENTRIES);
    let latest = slot.probe == memo.probes;
    if let (Some(hash), true, 1, Decision::Forward(forward)) =
        (slot.hash, latest, looked_at, &decision)
    {
        if let (Some(_), Some(exp)) = (&forward.user, forward.expires_at) {
            let entry = Memoized {
                key: memo.key.as_slice().into(),
                forward: Rc::clone(forward),
                valid_until: exp.saturating_add(config.verifier.leeway()),
            };
            memo.insert(hash, entry, capacity);
        }
    }
    decision
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "gate_tests.rs"]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "gate_edge_tests.rs"]
mod edge_tests;
