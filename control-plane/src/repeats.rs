//! Warnings about a state that lasts (a pod left out of Envoy's configuration, a service without
//! a credential) are found again at every rebuild of the configuration, which the resync runs
//! every few seconds: each is logged when first seen and then once per [`REPEAT_EVERY`] while
//! it lasts, not at every rebuild.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often a lasting warning is logged again.
pub const REPEAT_EVERY: Duration = Duration::from_secs(600);
/// Distinct warnings remembered; past it, all are forgotten (and logged again when next seen).
const MAX_REMEMBERED: usize = 10_000;

/// When each warning was last logged.
#[derive(Debug, Default)]
pub struct Repeats {
    logged: Mutex<HashMap<String, Instant>>,
}

impl Repeats {
    /// Whether the warning `key` is to be logged at `now`: first seen, or last logged at least
    /// [`REPEAT_EVERY`] ago.
    pub fn due(&self, key: &str, now: Instant) -> bool {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = logged.get(key) {
            if now.saturating_duration_since(*last) < REPEAT_EVERY {
                return false;
            }
        }
        if logged.len() >= MAX_REMEMBERED {
            logged.clear();
        }
        logged.insert(key.to_owned(), now);
        true
    }
}

/// Whether the lasting warning `key` is to be logged now (this process's record).
pub fn due(key: &str) -> bool {
    static REPEATS: OnceLock<Repeats> = OnceLock::new();
    REPEATS
        .get_or_init(Repeats::default)
        .due(key, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_warning_is_logged_when_first_seen_then_every_ten_minutes() {
        let r = Repeats::default();
        let t = Instant::now();
        assert!(r.due("pod a", t));
        assert!(!r.due("pod a", t + Duration::from_secs(2)));
        assert!(r.due("pod b", t + Duration::from_secs(2)));
        assert!(!r.due("pod a", t + REPEAT_EVERY - Duration::from_secs(1)));
        assert!(r.due("pod a", t + REPEAT_EVERY));
        assert!(!r.due("pod a", t + REPEAT_EVERY + Duration::from_secs(2)));
    }
}
