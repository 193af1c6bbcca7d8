//! Who may reach what: the owner; members of the pod's team; any signed-in user or anyone, by
//! the port's sharing level. Always decided from facts read from the database at mint time.

use crate::store::{AccessFacts, Sharing, User};

/// The `sub` of tokens minted for someone who is not signed in (public ports only). User ids
/// may never take this value (the admin API refuses it).
pub const ANONYMOUS_SUB: &str = "anonymous";

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
