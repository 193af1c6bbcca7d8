//! Warnings about a state that lasts (a pod left out of Envoy's configuration, a service without
//! a credential) are found again at every rebuild of the configuration, which the resync runs
//! every few seconds: each is logged when first seen and then once per [`REPEAT_EVERY`] while
//! it lasts, not at every rebuild. One that a rebuild no longer finds is forgotten, so it is
//! logged again as soon as it comes back.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often a lasting warning is logged again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(600);
/// Distinct warnings remembered; past it, all are forgotten (and logged again when next seen).
const MAX_REMEMBERED: usize = 10_000;

/// When each warning was last logged, and in which rebuild it was last found.
#[derive(Debug, Default)]
pub struct Repeats {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    round: u64,
    logged: HashMap<String, (Instant, u64)>,
}

impl Repeats {
    /// A rebuild starts: the warnings the previous one did not find are forgotten.
    pub fn round(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let previous = state.round;
        state.logged.retain(|_, (_, found)| *found == previous);
        state.round = previous + 1;
    }

    /// Whether the warning `key`, found at `now`, is to be logged: first seen (or seen again
    /// after a rebuild that did not find it), or last logged at least [`REPEAT_EVERY`] ago.
    pub fn due(&self, key: &str, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let round = state.round;
        if let Some((last, found)) = state.logged.get_mut(key) {
            *found = round;
            if now.saturating_duration_since(*last) < REPEAT_EVERY {
                return false;
            }
            *last = now;
            return true;
        }
        if state.logged.len() >= MAX_REMEMBERED {
            state.logged.clear();
        }
        state.logged.insert(key.to_owned(), (now, round));
        true
    }
}

fn repeats() -> &'static Repeats {
    static REPEATS: OnceLock<Repeats> = OnceLock::new();
    REPEATS.get_or_init(Repeats::default)
}

/// A rebuild of the configuration starts (this process's record).
pub fn round() {
    repeats().round();
}

/// Whether the lasting warning `key` is to be logged now (this process's record).
pub fn due(key: &str) -> bool {
    repeats().due(key, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_warning_is_logged_when_first_seen_then_every_ten_minutes() {
        let r = Repeats::default();
        let t = Instant::now();
        let at = |secs| t + Duration::from_secs(secs);
        r.round();
        assert!(r.due("pod a", t));
        r.round();
        assert!(!r.due("pod a", at(2)));
        assert!(r.due("pod b", at(2)));
        r.round();
        assert!(!r.due("pod a", at(599)));
        assert!(!r.due("pod b", at(599)));
        r.round();
        assert!(r.due("pod a", at(600)));
        assert!(!r.due("pod b", at(600)));
        r.round();
        assert!(!r.due("pod a", at(602)));
        // `pod b` was not found by that rebuild: when it comes back, it is logged at once.
        r.round();
        assert!(r.due("pod b", at(604)));
        assert!(!r.due("pod a", at(604)));
    }
}
