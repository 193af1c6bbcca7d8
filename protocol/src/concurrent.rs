//! Fair limits at the edge, concurrency: how many streams forwarded to pods are open at once
//! (requests in flight and open WebSockets), per user and per pod, configured globally and per
//! pod in the filter's configuration (`FilterConfig::concurrency_limits`). A forward past a
//! limit becomes a `429` (`Denial::TooManyStreams`) with `Retry-After`; nothing is forwarded.
//!
//! Counted by each worker (`Gate`), like the request-rate buckets (`rate`): Envoy runs one VM
//! per worker and never calls into it concurrently, so the count needs no host call and no
//! lock, and a stream is counted and released by the VM that forwarded it. With N workers a
//! client may hold up to N times the limit. Counting across workers (proxy-wasm shared data)
//! would cost two host calls on every forward, and a worker VM that dies would leave its
//! streams counted in the shared data for good, locking their users out.
//!
//! Never leaks: every count is the number of held streams (`Streams::held`) with that key.
//! A stream is held by its id when forwarded and released when Envoy deletes it, whatever
//! ended it; a new configuration changes the limits, never the counts, so a stream opened
//! before it is still released. A key whose count is back to zero keeps its entry until the
//! map reaches `MAX_KEYS`, so that a user's next stream costs one lookup and no allocation.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::rate::{Fnv, Limited, Target};

/// The limits in the filter's configuration: most streams open at once. Each is off when
/// absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimits {
    /// Streams of one user, over every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<u32>,
    /// Streams to one pod, from every user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_pod: Option<u32>,
    /// `per_pod` for these pods (by slug), instead of the global one.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub pods: HashMap<String, u32>,
}

impl ConcurrencyLimits {
    /// `Err` with why when a limit is 0 (it would refuse everything).
    pub fn check(&self) -> Result<(), String> {
        for (what, limit) in [("per_user", self.per_user), ("per_pod", self.per_pod)] {
            if limit == Some(0) {
                return Err(format!("{what} must be at least 1"));
            }
        }
        for (slug, limit) in &self.pods {
            if *limit == 0 {
                return Err(format!("pods.{slug} must be at least 1"));
            }
        }
        Ok(())
    }

    /// The per-pod limit of `pod`.
    fn pod_limit(&self, pod: &str) -> Option<u32> {
        self.pods.get(pod).copied().or(self.per_pod)
    }
}

/// Open streams by key (a verified capability's `sub` or `pod`, minted by the control plane:
/// no keyed hash needed). Each count is shared with the streams that hold it (`Held`), so that
/// letting go of a stream hashes no key.
type Counts = HashMap<String, Rc<Cell<u32>>, BuildHasherDefault<Fnv>>;

/// What a held stream counts against: its user's and its pod's counts.
#[derive(Debug)]
struct Held {
    user: Rc<Cell<u32>>,
    pod: Rc<Cell<u32>>,
}

/// One worker's open streams to pods, by stream (Envoy's context id), and their counts by user,
/// by pod and by service (apart, so that a service never shares a count with a pod of the same
/// name; a service is limited by the global `per_pod`, never by a pod's own).
#[derive(Debug, Default)]
pub struct Streams {
    held: HashMap<u32, Held, BuildHasherDefault<Fnv>>,
    users: Counts,
    pods: Counts,
    services: Counts,
}

/// Most keys a count map keeps; past it, keys holding nothing are forgotten first.
pub const MAX_KEYS: usize = 65_536;

fn count(counts: &Counts, key: &str) -> u32 {
    counts.get(key).map_or(0, |n| n.get())
}

/// One more stream for `key` unless it holds `max` already (`None`: no limit): its count, or
/// `None`. One lookup for a key seen before: a key whose streams all ended keeps its entry (at
/// 0), so a user's next stream allocates nothing.
fn take(counts: &mut Counts, key: &str, max: Option<u32>) -> Option<Rc<Cell<u32>>> {
    if let Some(n) = counts.get(key) {
        if max.is_some_and(|max| n.get() >= max) {
            return None;
        }
        n.set(n.get().saturating_add(1));
        return Some(Rc::clone(n));
    }
    if max == Some(0) {
        return None;
    }
    if counts.len() >= MAX_KEYS {
        counts.retain(|_, n| n.get() > 0);
    }
    let n = Rc::new(Cell::new(1));
    counts.insert(key.to_owned(), Rc::clone(&n));
    Some(n)
}

/// One stream fewer.
fn give_back(n: &Cell<u32>) {
    n.set(n.get().saturating_sub(1));
}

impl Streams {
    /// Holds `stream` for the user and the pod of `keys` when both of their limits allow one
    /// more; `Err` with the limit that refused it (nothing is held then). `None` (a forward to
    /// the control plane, which has no user) is let through uncounted. A stream held again lets
    /// go of what it held first.
    pub fn hold(
        &mut self,
        limits: &ConcurrencyLimits,
        stream: u32,
        keys: Option<(&str, Target<'_>)>,
    ) -> Result<(), Limited> {
        self.release(stream);
        let Some((user, target)) = keys else {
            return Ok(());
        };
        let Some(user) = take(&mut self.users, user, limits.per_user) else {
            return Err(Limited::User);
        };
        let (counts, key, max) = match target {
            Target::Pod(pod) => (&mut self.pods, pod, limits.pod_limit(pod)),
            Target::Service(name) => (&mut self.services, name, limits.per_pod),
        };
        let Some(pod) = take(counts, key, max) else {
            give_back(&user);
            return Err(Limited::Pod);
        };
        self.held.insert(stream, Held { user, pod });
        Ok(())
    }

    /// `stream` ended (or was refused after all): its user and its pod count one fewer. Nothing
    /// for a stream never held.
    pub fn release(&mut self, stream: u32) {
        if self.held.is_empty() {
            // The common case without limits: no hashing at all.
            return;
        }
        if let Some(held) = self.held.remove(&stream) {
            give_back(&held.user);
            give_back(&held.pod);
        }
    }

    /// How many streams are held (open and counted).
    pub fn open(&self) -> usize {
        self.held.len()
    }

    /// How many streams `user` holds.
    pub fn of_user(&self, user: &str) -> u32 {
        count(&self.users, user)
    }

    /// How many streams `pod` holds.
    pub fn of_pod(&self, pod: &str) -> u32 {
        count(&self.pods, pod)
    }

    /// How many streams service `name` holds.
    pub fn of_service(&self, name: &str) -> u32 {
        count(&self.services, name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn forward<'a>(user: &'a str, pod: &'a str) -> Option<(&'a str, Target<'a>)> {
        Some((user, Target::Pod(pod)))
    }

    fn limits(user: Option<u32>, pod: Option<u32>) -> ConcurrencyLimits {
        ConcurrencyLimits {
            per_user: user,
            per_pod: pod,
            pods: HashMap::new(),
        }
    }

    #[test]
    fn a_user_holds_the_limit_and_a_release_lets_the_next_in() {
        let l = limits(Some(2), None);
        let mut s = Streams::default();
        let alice = forward("alice", "alpha");
        assert_eq!(s.hold(&l, 1, alice), Ok(()));
        assert_eq!(s.hold(&l, 2, forward("alice", "beta")), Ok(()));
        // Over every pod.
        assert_eq!(s.hold(&l, 3, alice), Err(Limited::User));
        assert_eq!(s.hold(&l, 3, forward("alice", "gamma")), Err(Limited::User));
        // Another user has a count of their own.
        assert_eq!(s.hold(&l, 4, forward("bob", "alpha")), Ok(()));
        s.release(2);
        assert_eq!(s.hold(&l, 5, alice), Ok(()));
        assert_eq!(s.of_user("alice"), 2);
        // A stream held twice counts once; one released twice drops once.
        assert_eq!(s.hold(&l, 5, alice), Ok(()));
        s.release(5);
        s.release(5);
        assert_eq!(s.of_user("alice"), 1);
    }

    #[test]
    fn a_pod_is_limited_over_every_user_and_per_pod_limits_win() {
        let mut l = limits(None, Some(1));
        l.pods.insert("busy".into(), 3);
        let mut s = Streams::default();
        assert_eq!(s.hold(&l, 1, forward("alice", "alpha")), Ok(()));
        assert_eq!(s.hold(&l, 2, forward("bob", "alpha")), Err(Limited::Pod));
        for (id, user) in [(3, "a"), (4, "b"), (5, "c")] {
            assert_eq!(s.hold(&l, id, forward(user, "busy")), Ok(()));
        }
        assert_eq!(s.hold(&l, 6, forward("d", "busy")), Err(Limited::Pod));
        assert_eq!(s.of_pod("busy"), 3);
    }

    #[test]
    fn a_service_counts_apart_from_a_pod_of_the_same_name() {
        let mut l = limits(None, Some(1));
        l.pods.insert("alpha".into(), 2);
        let mut s = Streams::default();
        assert_eq!(s.hold(&l, 1, forward("a", "alpha")), Ok(()));
        assert_eq!(s.hold(&l, 2, forward("b", "alpha")), Ok(()));
        // Service alpha: its own count, at the global limit (not pod alpha's own).
        let service = |user| Some((user, Target::Service("alpha")));
        assert_eq!(s.hold(&l, 3, service("c")), Ok(()));
        assert_eq!(s.hold(&l, 4, service("d")), Err(Limited::Pod));
        assert_eq!((s.of_pod("alpha"), s.of_service("alpha")), (2, 1));
        s.release(3);
        assert_eq!((s.of_pod("alpha"), s.of_service("alpha")), (2, 0));
    }

    #[test]
    fn a_refusal_holds_nothing() {
        let l = limits(Some(1), Some(1));
        let mut s = Streams::default();
        assert_eq!(s.hold(&l, 1, forward("alice", "alpha")), Ok(()));
        // Alice is at her limit: beta stays free for bob.
        assert_eq!(s.hold(&l, 2, forward("alice", "beta")), Err(Limited::User));
        assert_eq!(s.hold(&l, 3, forward("bob", "beta")), Ok(()));
        // Beta is at its limit: carol's refused stream leaves her free for gamma.
        assert_eq!(s.hold(&l, 4, forward("carol", "beta")), Err(Limited::Pod));
        assert_eq!(s.hold(&l, 5, forward("carol", "gamma")), Ok(()));
        assert_eq!(s.open(), 3);
    }

    #[test]
    fn a_forward_to_the_control_plane_is_not_counted() {
        let l = limits(Some(1), Some(1));
        let mut s = Streams::default();
        let reserved = None;
        for id in 0..10 {
            assert_eq!(s.hold(&l, id, reserved), Ok(()));
        }
        assert_eq!(s.open(), 0);
    }

    /// Many streams opened and closed, limits changed on the way (a new configuration):
    /// every count returns to zero, the maps are empty, and the user can open the full limit.
    #[test]
    fn counts_never_leak_across_opens_closes_and_new_limits() {
        let mut s = Streams::default();
        let mut id = 0;
        let alice = forward("alice", "alpha");
        for round in 0..50u32 {
            // The limits change every round, as a push would.
            let l = limits(Some(3 + round % 3), Some(2 + round % 4));
            let mut open = Vec::new();
            for _ in 0..8 {
                id += 1;
                if s.hold(&l, id, alice).is_ok() {
                    open.push(id);
                }
            }
            assert!(open.len() <= 2 + (round % 4) as usize, "{round}: {open:?}");
            for id in open {
                s.release(id);
            }
            assert_eq!((s.open(), s.of_user("alice"), s.of_pod("alpha")), (0, 0, 0));
        }
        assert!(s
            .users
            .values()
            .chain(s.pods.values())
            .all(|n| n.get() == 0));
        let l = limits(Some(4), None);
        for n in 0..4 {
            assert_eq!(s.hold(&l, 1000 + n, alice), Ok(()));
        }
        assert_eq!(s.hold(&l, 2000, alice), Err(Limited::User));
    }

    #[test]
    fn idle_keys_are_forgotten_past_the_cap_and_open_ones_kept() {
        let l = limits(Some(1), None);
        let mut s = Streams::default();
        assert_eq!(s.hold(&l, 0, forward("held", "p")), Ok(()));
        for n in 1..MAX_KEYS as u32 {
            let user = format!("u{n}");
            assert_eq!(s.hold(&l, n, forward(&user, "p")), Ok(()));
            s.release(n);
        }
        assert_eq!(s.users.len(), MAX_KEYS);
        // A new key: the idle ones go, the held one stays and still counts.
        assert_eq!(s.hold(&l, 1 << 20, forward("new", "p")), Ok(()));
        assert_eq!(s.users.len(), 2);
        assert_eq!(
            s.hold(&l, 1 << 21, forward("held", "p")),
            Err(Limited::User)
        );
    }

    #[test]
    fn zero_limits_are_refused() {
        assert!(limits(Some(0), None).check().is_err());
        assert!(limits(None, Some(0)).check().is_err());
        let mut l = limits(Some(1), Some(5));
        assert!(l.check().is_ok());
        l.pods.insert("a".into(), 0);
        assert_eq!(l.check().unwrap_err(), "pods.a must be at least 1");
    }
}
