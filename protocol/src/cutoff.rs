//! Cut-offs: capabilities that stop working before their `exp`, because the session they were
//! minted for ended or their user lost access. The control plane lists them in the filter's
//! configuration; one push makes every Envoy refuse them.
//!
//! - A session cut refuses every capability whose `sid` claim names the session (sign-out).
//! - A user cut refuses the capabilities of one `sub` (on one pod, or one port of it, or one
//!   resource of a service reached per resource, or everywhere) issued at or before a time: the
//!   moment access was lost. Capabilities minted later, once access is back, are not touched.
//! - `issued_before` refuses every capability issued at or before it: what [`Cutoffs::bounded`]
//!   turns the oldest cuts into when there are too many, so that bounding the list never lets
//!   a cut capability through (it signs everyone out of capabilities that old instead).
//!
//! Each cut names `until`, the time after which no capability it can refuse is still valid (the
//! cut's time plus the capability lifetime and the leeway): past it the entry is dropped, so the
//! list holds only the cuts of the last capability lifetime.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::host::SERVICE_PORT;
use crate::token::Verified;

/// Most cuts (sessions and users together) the control plane sends; about 100 bytes of JSON
/// each. Past it the oldest become `issued_before`.
pub const MAX_CUTS: usize = 10_000;
/// Longest `sid`, `sub` or pod slug a cut may name.
const MAX_NAME_LEN: usize = 256;
/// Longest resource a cut may name: a pattern's prefix and an id (`crate::resource`).
const MAX_RESOURCE_LEN: usize = crate::resource::MAX_PATTERN_LEN + crate::resource::MAX_ID_LEN;

/// The capabilities of one session are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCut {
    /// The session id claim (`sid`) of its capabilities.
    pub sid: String,
    /// When the session ended (unix seconds).
    pub at: i64,
    /// After this no capability of the session is valid any more: the entry can go.
    pub until: i64,
}

/// The capabilities of one user (on one pod, or one port of it, or one resource of that port)
/// issued at or before `at` are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCut {
    /// The capability's `sub`.
    pub sub: String,
    /// Only capabilities for this pod; every pod when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Only capabilities for this port of `pod`; every port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Only capabilities for this resource (their `res` claim, e.g. `/sessions/abc`) of the
    /// service `pod` (port 0); every resource when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// When access was lost (unix seconds): capabilities with `iat` at or before it are refused.
    pub at: i64,
    /// After this no capability the cut refuses is valid any more: the entry can go.
    pub until: i64,
}

/// Every cut in force, as the filter's configuration carries it (`cutoffs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cutoffs {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<SessionCut>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserCut>,
    /// Every capability issued at or before this (unix seconds) is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<i64>,
}

/// Why a cut-off list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CutoffError {
    #[error("a cut names an empty or over-long sid, sub or pod")]
    BadName,
    #[error("a cut names a port without a pod")]
    BadPort,
    #[error("a cut names a resource without a service, or an empty or over-long one")]
    BadResource,
    #[error("more than {MAX_CUTS} cuts")]
    TooMany,
}

impl Cutoffs {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.users.is_empty() && self.issued_before.is_none()
    }

    /// The cuts still in force at `now`, at most `limit` of them: expired entries (`until`
    /// before `now`) are dropped; when more than `limit` remain, the newest `limit` are kept
    /// and `issued_before` moves up to the latest time among the others, so that every
    /// capability they refused is still refused.
    pub fn bounded(mut self, now: i64, limit: usize) -> Cutoffs {
        self.sessions.retain(|c| c.until >= now);
        self.users.retain(|c| c.until >= now);
        let total = self.sessions.len() + self.users.len();
        if total > limit {
            // One ordering over both kinds: newest first, by the time of the cut.
            let mut times: Vec<i64> = self
                .sessions
                .iter()
                .map(|c| c.at)
                .chain(self.users.iter().map(|c| c.at))
                .collect();
            times.sort_unstable_by(|a, b| b.cmp(a));
            // Cuts at or before `fold` go; `issued_before = fold` covers them. Ties at `fold`
            // go too, so fewer than `limit` may remain, never more.
            if let Some(&fold) = times.get(limit) {
                self.sessions.retain(|c| c.at > fold);
                self.users.retain(|c| c.at > fold);
                self.issued_before = Some(self.issued_before.map_or(fold, |b| b.max(fold)));
            }
        }
        self
    }

    /// Checks the names and the size, and builds the lookup the filter runs.
    pub fn compile(self) -> Result<CompiledCutoffs, CutoffError> {
        if self.sessions.len() + self.users.len() > MAX_CUTS {
            return Err(CutoffError::TooMany);
        }
        let bad = |s: &str| s.is_empty() || s.len() > MAX_NAME_LEN;
        let mut sessions = HashSet::with_capacity(self.sessions.len());
        for cut in self.sessions {
            if bad(&cut.sid) {
                return Err(CutoffError::BadName);
            }
            sessions.insert(cut.sid);
        }
        let mut users: HashMap<String, Vec<Scope>> = HashMap::new();
        for cut in self.users {
            if bad(&cut.sub) || cut.pod.as_deref().is_some_and(bad) {
                return Err(CutoffError::BadName);
            }
            // Port 0 with a name is the service of that name (`host::SERVICE_PORT`).
            if cut.port.is_some() && cut.pod.is_none() {
                return Err(CutoffError::BadPort);
            }
            if let Some(resource) = &cut.resource {
                if cut.port != Some(SERVICE_PORT)
                    || resource.is_empty()
                    || resource.len() > MAX_RESOURCE_LEN
                {
                    return Err(CutoffError::BadResource);
                }
            }
            users.entry(cut.sub).or_default().push(Scope {
                pod: cut.pod,
                port: cut.port,
                resource: cut.resource,
                at: cut.at,
            });
        }
        Ok(CompiledCutoffs {
            sessions,
            users,
            issued_before: self.issued_before,
        })
    }
}

/// Where a user cut applies and when.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope {
    pod: Option<String>,
    port: Option<u16>,
    resource: Option<String>,
    at: i64,
}

/// The cuts, indexed: a hash lookup by `sid` and by `sub`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledCutoffs {
    sessions: HashSet<String>,
    users: HashMap<String, Vec<Scope>>,
    issued_before: Option<i64>,
}

impl CompiledCutoffs {
    /// Whether a verified capability is cut off.
    pub fn refuses(&self, v: &Verified) -> bool {
        if self.issued_before.is_some_and(|b| v.issued_at <= b) {
            return true;
        }
        if !self.sessions.is_empty() {
            if let Some(sid) = &v.sid {
                if self.sessions.contains(sid) {
                    return true;
                }
            }
        }
        if self.users.is_empty() {
            return false;
        }
        let Some(scopes) = self.users.get(&v.claims.sub) else {
            return false;
        };
        scopes.iter().any(|s| {
            v.issued_at <= s.at
                && s.pod.as_ref().is_none_or(|p| *p == v.claims.pod)
                && s.port.is_none_or(|p| p == v.claims.port)
                && s.resource
                    .as_ref()
                    .is_none_or(|r| v.res.as_ref() == Some(r))
        })
    }

    /// How many cuts are listed (sessions and users).
    pub fn len(&self) -> usize {
        self.sessions.len() + self.users.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.issued_before.is_none()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::token::PodClaims;

    fn cap(sub: &str, pod: &str, port: u16, iat: i64, sid: Option<&str>) -> Verified {
        Verified {
            claims: PodClaims {
                iss: "http://cp".into(),
                sub: sub.into(),
                aud: format!("localhost-{port}-pod-{pod}.localhost"),
                pod: pod.into(),
                port,
                jti: "j".into(),
                email: None,
            },
            sid: sid.map(str::to_owned),
            res: None,
            issued_at: iat,
            expires_at: iat + 900,
            kid: "cap-1".into(),
            token: None,
        }
    }

    fn user_cut(sub: &str, pod: Option<&str>, port: Option<u16>, at: i64) -> UserCut {
        UserCut {
            sub: sub.into(),
            pod: pod.map(str::to_owned),
            port,
            resource: None,
            at,
            until: at + 930,
        }
    }

    /// A capability for resource `res` of service `service`.
    fn resource_cap(sub: &str, service: &str, res: &str, iat: i64) -> Verified {
        let mut v = cap(sub, service, SERVICE_PORT, iat, None);
        v.res = Some(res.to_owned());
        v
    }

    /// A cut of `sub`'s capabilities for resource `res` of service `service`.
    fn resource_cut(sub: &str, service: &str, res: &str, at: i64) -> UserCut {
        UserCut {
            resource: Some(res.to_owned()),
            ..user_cut(sub, Some(service), Some(SERVICE_PORT), at)
        }
    }

    fn session_cut(sid: &str, at: i64) -> SessionCut {
        SessionCut {
            sid: sid.into(),
            at,
            until: at + 930,
        }
    }

    #[test]
    fn a_session_cut_refuses_that_session_only() {
        let c = Cutoffs {
            sessions: vec![session_cut("s1", 1000)],
            ..Cutoffs::default()
        }
        .compile()
        .unwrap();
        assert!(c.refuses(&cap("alice", "p", 80, 990, Some("s1"))));
        // Whenever it was issued: a session's capabilities all go with it.
        assert!(c.refuses(&cap("alice", "p", 80, 1010, Some("s1"))));
        assert!(!c.refuses(&cap("alice", "p", 80, 990, Some("s2"))));
        // Capabilities minted outside a browser session carry no sid.
        assert!(!c.refuses(&cap("alice", "p", 80, 990, None)));
    }

    #[test]
    fn a_user_cut_refuses_what_was_issued_up_to_its_time_in_its_scope() {
        let c = Cutoffs {
            users: vec![
                user_cut("bob", Some("p"), None, 1000),
                user_cut("carol", Some("p"), Some(80), 1000),
                user_cut("dave", None, None, 1000),
            ],
            ..Cutoffs::default()
        }
        .compile()
        .unwrap();
        let table = [
            // bob: every port of pod p, issued at or before 1000.
            (cap("bob", "p", 80, 999, None), true),
            (cap("bob", "p", 81, 1000, None), true),
            (cap("bob", "p", 80, 1001, None), false),
            (cap("bob", "q", 80, 999, None), false),
            // carol: port 80 of pod p only.
            (cap("carol", "p", 80, 999, Some("s")), true),
            (cap("carol", "p", 81, 999, None), false),
            (cap("carol", "q", 80, 999, None), false),
            // dave: everywhere.
            (cap("dave", "q", 8080, 100, None), true),
            (cap("dave", "q", 8080, 1001, None), false),
            // nobody else.
            (cap("erin", "p", 80, 999, None), false),
        ];
        for (v, refused) in table {
            assert_eq!(c.refuses(&v), refused, "{:?}", v.claims);
        }
    }

    #[test]
    fn a_resource_cut_refuses_that_resource_only() {
        let c = Cutoffs {
            users: vec![resource_cut("alice", "chat", "/sessions/a1", 1000)],
            ..Cutoffs::default()
        }
        .compile()
        .unwrap();
        let table = [
            (resource_cap("alice", "chat", "/sessions/a1", 1000), true),
            (resource_cap("alice", "chat", "/sessions/a1", 1001), false),
            // Her other resources of the service, and the same path elsewhere, stay.
            (resource_cap("alice", "chat", "/sessions/a2", 999), false),
            (resource_cap("alice", "chat", "/sessions/a10", 999), false),
            (resource_cap("alice", "notes", "/sessions/a1", 999), false),
            (resource_cap("bob", "chat", "/sessions/a1", 999), false),
            // A capability for the whole service names no resource: not this cut's.
            (cap("alice", "chat", SERVICE_PORT, 999, None), false),
        ];
        for (v, refused) in table {
            assert_eq!(c.refuses(&v), refused, "{:?} {:?}", v.claims, v.res);
        }
        // A cut of the whole service still refuses every resource of it.
        let whole = Cutoffs {
            users: vec![user_cut("alice", Some("chat"), Some(SERVICE_PORT), 1000)],
            ..Cutoffs::default()
        }
        .compile()
        .unwrap();
        assert!(whole.refuses(&resource_cap("alice", "chat", "/sessions/a2", 999)));
    }

    #[test]
    fn issued_before_refuses_everything_that_old() {
        let c = Cutoffs {
            issued_before: Some(1000),
            ..Cutoffs::default()
        }
        .compile()
        .unwrap();
        assert!(c.refuses(&cap("x", "p", 80, 1000, None)));
        assert!(!c.refuses(&cap("x", "p", 80, 1001, None)));
    }

    #[test]
    fn nothing_is_refused_without_cuts() {
        let c = Cutoffs::default().compile().unwrap();
        assert!(c.is_empty());
        assert!(!c.refuses(&cap("x", "p", 80, 0, Some("s"))));
    }

    #[test]
    fn bounding_drops_expired_cuts() {
        let c = Cutoffs {
            sessions: vec![session_cut("old", 0), session_cut("new", 5000)],
            users: vec![
                user_cut("old", None, None, 0),
                user_cut("new", None, None, 5000),
            ],
            issued_before: None,
        }
        .bounded(2000, 10);
        assert_eq!(c.sessions, vec![session_cut("new", 5000)]);
        assert_eq!(c.users, vec![user_cut("new", None, None, 5000)]);
        assert_eq!(c.issued_before, None);
    }

    #[test]
    fn bounding_folds_the_oldest_into_issued_before_and_still_refuses_them() {
        let mut all = Cutoffs::default();
        for i in 0..10 {
            all.sessions.push(session_cut(&format!("s{i}"), 1000 + i));
            all.users
                .push(user_cut(&format!("u{i}"), Some("p"), None, 1000 + i));
        }
        let bounded = all.clone().bounded(1000, 6);
        assert!(bounded.sessions.len() + bounded.users.len() <= 6);
        // The newest stay listed; the others are covered by `issued_before`.
        assert!(bounded.sessions.iter().any(|c| c.sid == "s9"));
        assert!(bounded.users.iter().any(|c| c.sub == "u9"));
        assert_eq!(bounded.issued_before, Some(1006));
        let before = all.compile().unwrap();
        let after = bounded.compile().unwrap();
        // Everything the full list refused, the bounded one refuses too.
        for i in 0..10 {
            for iat in [990, 1000 + i] {
                let s = cap("x", "p", 80, iat, Some(&format!("s{i}")));
                let u = cap(&format!("u{i}"), "p", 80, iat, None);
                for v in [s, u] {
                    assert!(before.refuses(&v));
                    assert!(after.refuses(&v), "{:?} {:?}", v.claims.sub, v.sid);
                }
            }
        }
        // A capability issued after every folded cut is not touched by the fold.
        assert!(!after.refuses(&cap("y", "p", 80, 1007, None)));
    }

    #[test]
    fn bounding_keeps_an_earlier_issued_before_when_it_is_later() {
        let c = Cutoffs {
            sessions: vec![session_cut("a", 10), session_cut("b", 20)],
            users: vec![],
            issued_before: Some(50),
        }
        .bounded(0, 1);
        assert_eq!(c.issued_before, Some(50));
        assert_eq!(c.sessions, vec![session_cut("b", 20)]);
    }

    #[test]
    fn malformed_cuts_are_refused() {
        let bad = [
            Cutoffs {
                sessions: vec![session_cut("", 0)],
                ..Cutoffs::default()
            },
            Cutoffs {
                users: vec![user_cut("", None, None, 0)],
                ..Cutoffs::default()
            },
            Cutoffs {
                users: vec![user_cut("u", None, Some(80), 0)],
                ..Cutoffs::default()
            },
            Cutoffs {
                users: vec![user_cut("u", None, Some(0), 0)],
                ..Cutoffs::default()
            },
            // A resource only on a service (port 0), never empty or over-long.
            Cutoffs {
                users: vec![UserCut {
                    resource: Some("/sessions/a1".into()),
                    ..user_cut("u", Some("p"), Some(80), 0)
                }],
                ..Cutoffs::default()
            },
            Cutoffs {
                users: vec![UserCut {
                    resource: Some("/sessions/a1".into()),
                    ..user_cut("u", Some("chat"), None, 0)
                }],
                ..Cutoffs::default()
            },
            Cutoffs {
                users: vec![resource_cut("u", "chat", "", 0)],
                ..Cutoffs::default()
            },
            Cutoffs {
                users: vec![resource_cut(
                    "u",
                    "chat",
                    &"a".repeat(MAX_RESOURCE_LEN + 1),
                    0,
                )],
                ..Cutoffs::default()
            },
            Cutoffs {
                sessions: (0..=MAX_CUTS as i64)
                    .map(|i| session_cut(&i.to_string(), i))
                    .collect(),
                ..Cutoffs::default()
            },
        ];
        for c in bad {
            assert!(c.compile().is_err());
        }
        // Port 0 with a name cuts the service of that name.
        let service = Cutoffs {
            users: vec![user_cut("u", Some("openai"), Some(0), 0)],
            ..Cutoffs::default()
        };
        assert!(service.compile().is_ok());
        let resource = Cutoffs {
            users: vec![resource_cut("u", "chat", "/sessions/a1", 0)],
            ..Cutoffs::default()
        };
        assert!(resource.compile().is_ok());
    }

    #[test]
    fn the_wire_form_omits_what_is_empty() {
        assert_eq!(serde_json::to_string(&Cutoffs::default()).unwrap(), "{}");
        let c: Cutoffs = serde_json::from_str(
            r#"{"sessions":[{"sid":"s","at":1,"until":2}],"users":[{"sub":"u","pod":"p","at":1,"until":2}]}"#,
        )
        .unwrap();
        assert_eq!(c.users[0].port, None);
        assert!(serde_json::from_str::<Cutoffs>(r#"{"surprise":1}"#).is_err());
    }
}
