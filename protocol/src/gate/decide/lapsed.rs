//! Lapsed cookie capabilities, in the decision: a browser tab left idle longer than a
//! capability lives still holds our cookie (its `Max-Age` is the session's) with a capability
//! past its `exp`. When no capability grants the request and one of our cookies holds a
//! capability for this very request that lapsed at most `renewal.lapsed_secs` ago, genuine
//! (its signature checked), with a session id and not withdrawn, the request waits for its
//! renewal instead of being refused: the control plane checks the session and the access
//! again and mints a fresh capability for the same session, or refuses. Nothing is ever let
//! through on the lapsed capability itself.

use std::rc::Rc;

use super::super::token_cache::{verify_lapsed_now, VerifiedCache};
use super::{judge, Source, Verdict, Want};
use crate::config::CompiledConfig;
use crate::host::PodAddr;
use crate::token::Verified;

/// What a lapsed cookie capability comes to.
pub(super) enum Lapsed {
    /// Renewed already in this worker: decide on the fresh capability and hand on its cookie.
    Renewed(Rc<Verified>, Rc<str>),
    /// To renew: the request waits.
    Renew(Rc<Verified>),
}

/// The first of our cookies (in candidate order) that holds a lapsed capability this request
/// could be renewed on, and what it comes to; `None` when renewal of lapsed capabilities is
/// off or no cookie holds one. At most `budget` signatures are checked (what the request's
/// live candidates left of `MAX_VERIFICATIONS`): only cookies whose unverified claims say they
/// lapsed within the window for this very host (`Verifier::lapsed_for`: planted ones for
/// another host cost none) and that did not fail before get one.
pub(super) fn lapsed(
    config: &CompiledConfig,
    cache: &mut VerifiedCache,
    found: &[(Source, &str)],
    pod: &PodAddr,
    want: Want<'_>,
    mut budget: usize,
    now: i64,
) -> Option<Lapsed> {
    let lapsed_secs = config
        .renewal
        .as_ref()
        .map(|r| r.lapsed_secs)
        .filter(|secs| *secs > 0)?;
    let host = config.public_hosts.render(pod);
    let grants = |v: &Verified| matches!(judge(config, v, &host, pod, want), Verdict::Grant);
    for &(source, token) in found {
        if source != Source::Cookie || !config.verifier.lapsed_for(token, &host, now, lapsed_secs) {
            continue;
        }
        let key = cache.rejected_key(config, token);
        if cache.known_bad(key).is_some() {
            continue;
        }
        if budget == 0 {
            break;
        }
        budget -= 1;
        let Ok(old) = verify_lapsed_now(config, cache, token, key, lapsed_secs, now) else {
            continue;
        };
        if old.sid.is_none() || old.token.is_none() || !grants(&old) {
            continue;
        }
        if let Some((fresh, cookie)) = cache.revived().lookup(config, &old.claims.jti, now) {
            if grants(&fresh) {
                return Some(Lapsed::Renewed(fresh, cookie));
            }
        }
        return Some(Lapsed::Renew(Rc::new(old)));
    }
    None
}
