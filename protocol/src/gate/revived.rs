//! Lapsed cookie capabilities renewed at the edge, per worker: the old capability's `jti` to
//! the fresh capability and the cookie that sets it, so that the requests that waited for the
//! renewal, and those still carrying the old cookie, are decided on the fresh one and hand its
//! cookie on (`decide::lapsed`).

use std::collections::HashMap;
use std::rc::Rc;

use crate::config::CompiledConfig;
use crate::token::Verified;

/// Most renewals one worker remembers; past it, the oldest-looking entry makes room (the
/// browser it served then signs in again, as without renewal).
pub const MAX_REVIVED: usize = 4096;

/// The fresh capabilities renewals gave, by the `jti` of the capability each one renewed.
#[derive(Debug, Default)]
pub struct Revived {
    entries: HashMap<String, (Rc<Verified>, Rc<str>)>,
}

impl Revived {
    /// Remembers that the capability `old_jti` was renewed as `fresh`, set by `set_cookie`.
    pub fn record(&mut self, old_jti: &str, fresh: Rc<Verified>, set_cookie: Rc<str>, now: i64) {
        if self.entries.len() >= MAX_REVIVED && !self.entries.contains_key(old_jti) {
            self.entries.retain(|_, (fresh, _)| now < fresh.expires_at);
            if self.entries.len() >= MAX_REVIVED {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (fresh, _))| fresh.expires_at)
                    .map(|(jti, _)| jti.clone());
                if let Some(jti) = soonest {
                    self.entries.remove(&jti);
                }
            }
        }
        self.entries.insert(old_jti.to_owned(), (fresh, set_cookie));
    }

    /// The fresh capability and its cookie for the renewed `old_jti`, while the fresh one has
    /// not expired and `config` neither withdraws it (revoked, cut off) nor lost its key.
    pub fn lookup(
        &mut self,
        config: &CompiledConfig,
        old_jti: &str,
        now: i64,
    ) -> Option<(Rc<Verified>, Rc<str>)> {
        let (fresh, set_cookie) = self.entries.get(old_jti)?;
        if now >= fresh.expires_at
            || config.withdraws(fresh)
            || !config.verifier.still_vouches_for(fresh)
        {
            self.entries.remove(old_jti);
            return None;
        }
        Some((Rc::clone(fresh), Rc::clone(set_cookie)))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
