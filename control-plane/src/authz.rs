//! Who may reach what: the owner; members of the pod's team; any signed-in user or anyone, by
//! the port's sharing level. Always decided from facts read from the database at mint time.

use podgate_protocol::host::PodAddr;

use crate::store::{AccessFacts, Db, Sharing, User};

/// The one answer for "no such pod or port" and "not yours": no existence oracle.
pub const NOT_FOUND_MSG: &str =
    "no such pod or port, or you may not reach it; check the pod name and port, or ask the pod's owner to share it";

/// Why [`authorize`] refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// No such pod or port, or not this user's to reach: one answer for both.
    #[error("{NOT_FOUND_MSG}")]
    NotFound,
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
