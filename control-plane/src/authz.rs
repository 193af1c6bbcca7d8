//! Who may reach what: the owner; members of the pod's team; any signed-in user or anyone, by
//! the port's sharing level. On a service reached per resource, also who may use the one
//! resource a capability names (`may_use_resource`). Always decided from facts read from the
//! database at mint time.

use podgate_protocol::host::{PodAddr, SERVICE_PORT};
use podgate_protocol::resource::{self, PathMatch};

use crate::store::{AccessFacts, Db, Sharing, User};

/// The one answer for "no such pod or port" and "not yours": no existence oracle.
pub const NOT_FOUND_MSG: &str =
    "no such pod or port, or you may not reach it; check the pod name and port, or ask the pod's owner to share it";

/// The one answer for "no such resource" and "not yours": no existence oracle either.
pub const RESOURCE_MSG: &str =
    "this service is reached one resource at a time, and there is no such resource here or it is not yours to use";
/// What to do about [`RESOURCE_MSG`].
pub const RESOURCE_HINT: &str =
    "open a path under one of your own resources (e.g. /sessions/{id}); an admin records a resource's owner with PUT /v1/services/{name}/resources/{id}";

/// Why [`authorize`] or [`authorize_resource`] refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// No such pod or port, or not this user's to reach: one answer for both.
    #[error("{NOT_FOUND_MSG}")]
    NotFound,
    /// On a service reached per resource: no resource named, no such resource, or not this
    /// user's to use: one answer for all.
    #[error("{RESOURCE_MSG}")]
    NotYourResource,
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// Whether `user` (or nobody, when `None`) may reach the port these facts describe.
pub fn may_reach(facts: &AccessFacts, user: Option<&User>) -> bool {
    let is_owner = user.is_some_and(|u| u.id == facts.owner_id);
    match facts.sharing {
        Sharing::Public => true,
        Sharing::SignedIn => user.is_some(),
        Sharing::Team => is_owner || (user.is_some() && facts.is_team_member),
        Sharing::Owner => is_owner,
    }
}

/// What [`may_use_resource`] decides from: one resource of a service reached per resource.
#[derive(Debug, Clone, Copy)]
pub struct ResourceFacts<'a> {
    pub service: &'a str,
    pub resource_id: &'a str,
    /// Its owner as recorded through the admin API; `None`: none recorded.
    pub owner_id: Option<&'a str>,
}

/// Whether `user` (or nobody, when `None`) may use the resource these facts describe, on top
/// of reaching its service ([`may_reach`]): its owner only. The one place the rule lives, read
/// by every mint of a capability for a resource (browser sign-in, its renewal, API tokens at the
/// edge, `/v1/capabilities`) and by the cuts after an owner changes; a deployment with another
/// notion of ownership (a team, a role) changes it here.
pub fn may_use_resource(facts: &ResourceFacts<'_>, user: Option<&User>) -> bool {
    matches!((facts.owner_id, user), (Some(owner), Some(u)) if owner == u.id)
}

/// The resource path (`/sessions/abc`) that `path` is under on `addr`, when `addr` is a service
/// reached per resource; `Ok(None)` for a pod or any other service. A path under no resource
/// is [`AuthzError::NotYourResource`].
pub async fn resource_for_path(
    db: &Db,
    addr: &PodAddr,
    path: &str,
) -> Result<Option<String>, AuthzError> {
    if addr.port != SERVICE_PORT {
        return Ok(None);
    }
    let Some(pattern) = db.service_resource_path(&addr.pod).await? else {
        return Ok(None);
    };
    match resource::classify(&pattern, path) {
        PathMatch::Resource(r) => Ok(Some(r.to_owned())),
        PathMatch::Outside | PathMatch::Ambiguous => Err(AuthzError::NotYourResource),
    }
}

/// The resource path of resource id `id` (a [`resource::valid_id`]) on `addr`; `None` when
/// `addr` is not a service reached per resource.
pub async fn resource_of_id(
    db: &Db,
    addr: &PodAddr,
    id: &str,
) -> Result<Option<String>, sqlx::Error> {
    if addr.port != SERVICE_PORT {
        return Ok(None);
    }
    let pattern = db.service_resource_path(&addr.pod).await?;
    Ok(pattern.map(|p| resource::resource_of_id(&p, id)))
}

/// `Ok` when a capability for `addr` naming resource `res` (a resource path, or none) may be
/// minted for `user`, who may reach `addr` ([`authorize`] is the caller's): on a service reached
/// per resource, `res` must be one of its resources and [`may_use_resource`] must allow it; on
/// anything else, `res` must be `None`. Reads the database every time.
pub async fn authorize_resource(
    db: &Db,
    user: Option<&User>,
    addr: &PodAddr,
    res: Option<&str>,
) -> Result<(), AuthzError> {
    let pattern = if addr.port == SERVICE_PORT {
        db.service_resource_path(&addr.pod).await?
    } else {
        None
    };
    let (pattern, res) = match (pattern, res) {
        (None, None) => return Ok(()),
        (None, Some(_)) => return Err(AuthzError::NotFound),
        (Some(_), None) => return Err(AuthzError::NotYourResource),
        (Some(pattern), Some(res)) => (pattern, res),
    };
    let Some(id) = resource::id_of_resource(&pattern, res) else {
        return Err(AuthzError::NotYourResource);
    };
    let owner = db.service_resource_owner(&addr.pod, id).await?;
    let facts = ResourceFacts {
        service: &addr.pod,
        resource_id: id,
        owner_id: owner.as_deref(),
    };
    if may_use_resource(&facts, user) {
        Ok(())
    } else {
        Err(AuthzError::NotYourResource)
    }
}

/// `Ok` when `user` (or nobody, for `None`) may reach `addr`; the uniform
/// [`AuthzError::NotFound`] when the pod does not exist or they may not. Reads the database
/// every time.
pub async fn authorize(db: &Db, user: Option<&User>, addr: &PodAddr) -> Result<(), AuthzError> {
    let facts = db
        .access_facts(&addr.pod, addr.port, user.map(|u| u.id.as_str()))
        .await?;
    match facts {
        Some(f) if may_reach(&f, user) => Ok(()),
        _ => Err(AuthzError::NotFound),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            email: None,
            name: String::new(),
            created_at: 0,
        }
    }

    fn facts(sharing: Sharing, member: bool) -> AccessFacts {
        AccessFacts {
            owner_id: "alice".into(),
            sharing,
            is_team_member: member,
        }
    }

    #[test]
    fn a_resource_is_its_owners_only() {
        let alice = user("alice");
        let bob = user("bob");
        let facts = |owner| ResourceFacts {
            service: "chat",
            resource_id: "a1",
            owner_id: owner,
        };
        assert!(may_use_resource(&facts(Some("alice")), Some(&alice)));
        assert!(!may_use_resource(&facts(Some("alice")), Some(&bob)));
        assert!(!may_use_resource(&facts(Some("alice")), None));
        assert!(!may_use_resource(&facts(None), Some(&alice)));
    }

    #[test]
    fn table() {
        let alice = user("alice");
        let bob = user("bob");
        let cases = [
            (Sharing::Owner, false, Some(&alice), true),
            (Sharing::Owner, true, Some(&bob), false),
            (Sharing::Owner, false, None, false),
            (Sharing::Team, false, Some(&alice), true),
            (Sharing::Team, true, Some(&bob), true),
            (Sharing::Team, false, Some(&bob), false),
            (Sharing::Team, true, None, false),
            (Sharing::SignedIn, false, Some(&bob), true),
            (Sharing::SignedIn, false, None, false),
            (Sharing::Public, false, None, true),
            (Sharing::Public, false, Some(&bob), true),
        ];
        for (sharing, member, who, expected) in cases {
            assert_eq!(
                may_reach(&facts(sharing, member), who),
                expected,
                "{sharing:?} member={member} who={:?}",
                who.map(|u| &u.id)
            );
        }
    }
}
