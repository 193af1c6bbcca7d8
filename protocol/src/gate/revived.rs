//! Lapsed cookie capabilities renewed at the edge, per worker: the old capability's `jti` to
//! the fresh capability and the cookie that sets it, so that the requests that waited for the
//! renewal, and those still carrying the old cookie, are decided on the fresh one and hand its
//! cookie on (`decide::lapsed`). An entry is needed only until the browser stores the fresh
//! cookie, so it is kept five minutes past the old capability's `exp`, or past the renewal of
//! one that had lapsed (as the filter keeps its outcome).

use std::collections::HashMap;
use std::rc::Rc;

use crate::config::CompiledConfig;
use crate::token::Verified;

/// Most renewals one worker remembers; past it, the entry kept the shortest makes room (a
/// browser still sending the old cookie then waits for another renewal).
pub const MAX_REVIVED: usize = 1024;
/// How long an entry is kept past the old capability's `exp` or the renewal (seconds).
pub const REVIVED_KEPT_SECS: i64 = 300;

/// One renewal: the fresh capability, its cookie, and until when it is kept.
#[derive(Debug)]
struct Entry {
    fresh: Rc<Verified>,
    set_cookie: Rc<str>,
    until: i64,
}

/// The fresh capabilities renewals gave, by the `jti` of the capability each one renewed.
#[derive(Debug, Default)]
pub struct Revived {
    entries: HashMap<String, Entry>,
}

impl Revived {
    /// Remembers that the capability `old` was renewed at `now` as `fresh`, set by
    /// `set_cookie`.
    pub fn record(&mut self, old: &Verified, fresh: Rc<Verified>, set_cookie: Rc<str>, now: i64) {
        let old_jti = old.claims.jti.as_str();
        if self.entries.len() >= MAX_REVIVED && !self.entries.contains_key(old_jti) {
            self.entries.retain(|_, e| now <= e.until);
            if self.entries.len() >= MAX_REVIVED {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.until)
                    .map(|(jti, _)| jti.clone());
                if let Some(jti) = soonest {
                    self.entries.remove(&jti);
                }
            }
        }
        let until = old.expires_at.max(now).saturating_add(REVIVED_KEPT_SECS);
        let entry = Entry {
            fresh,
            set_cookie,
            until,
        };
        self.entries.insert(old_jti.to_owned(), entry);
    }

    /// The fresh capability and its cookie for the renewed `old_jti`, while the entry is kept,
    /// the fresh one has not expired and `config` neither withdraws it (revoked, cut off) nor
    /// lost its key.
    pub fn lookup(
        &mut self,
        config: &CompiledConfig,
        old_jti: &str,
        now: i64,
    ) -> Option<(Rc<Verified>, Rc<str>)> {
        let entry = self.entries.get(old_jti)?;
        let fresh = &entry.fresh;
        if now > entry.until
            || now >= fresh.expires_at
            || config.withdraws(fresh)
            || !config.verifier.still_vouches_for(fresh)
        {
            self.entries.remove(old_jti);
            return None;
        }
        Some((Rc::clone(fresh), Rc::clone(&entry.set_cookie)))
    }
}
