//! Cutting capabilities off before their expiry, within one config push: a browser session
//! that signed out (every capability minted for it, on every pod host), users who lost access
//! to a pod (their capabilities for it issued up to that moment), and the former owner of a
//! resource of a service reached per resource (their capabilities for that resource).
//!
//! Cuts are rows of `access_cuts`, listed in the filter's `cutoffs` (`protocol::cutoff`) until
//! no capability they can refuse is valid any more: the cut's time plus the capability lifetime,
//! the leeway and a minute for a racing mint (Envoy refuses a capability living longer than the
//! lifetime it is configured with). The list is bounded by `podgate_protocol::cutoff::MAX_CUTS`; past it the oldest become
//! one "issued before" time, which refuses more, never less.
//!
//! Access is re-checked only where it may have been lost: after a change, the holders of
//! unexpired capabilities in the changed scope (from the mint audit) are checked with the
//! authorization rules of `authz`, and only those who may no longer reach a port are cut.
//! A re-check at the same scope replaces the user's earlier cut there (it refuses all that one
//! did, for longer), so repeated changes do not grow the list.
//! Callers commit their change first, cut next, and the admin layer then pushes.

use podgate_protocol::cutoff::{Cutoffs, SessionCut, UserCut, MAX_CUTS};
use podgate_protocol::host::SERVICE_PORT;
use podgate_protocol::token::DEFAULT_LEEWAY_SECS;

use crate::authz::may_reach;
use crate::ids::ANONYMOUS_SUB;
use crate::store::{now_unix, CutRow, Db, HolderScope};

/// Room for a capability minted while the cut was being made (a session cut refuses it by its
/// `sid` whenever it was issued).
const RACE_MARGIN_SECS: i64 = 60;

/// When a cut made at `at` can go: no capability issued up to then (or minted in a race with
/// the cut), living at most `capability_lifetime` seconds, is valid after it.
fn cut_until(capability_lifetime: u64, at: i64) -> i64 {
    let lifetime = i64::try_from(capability_lifetime).unwrap_or(i64::MAX);
    at.saturating_add(lifetime)
        .saturating_add(DEFAULT_LEEWAY_SECS)
        .saturating_add(RACE_MARGIN_SECS)
}

/// Cuts off every capability minted for the session `sid` (a sign-out); capabilities live at
/// most `capability_lifetime` seconds. The caller pushes.
pub async fn cut_session(db: &Db, capability_lifetime: u64, sid: &str) -> Result<(), sqlx::Error> {
    let at = now_unix();
    let cut = CutRow::Session {
        sid: sid.to_owned(),
        at,
        until: cut_until(capability_lifetime, at),
    };
    db.insert_cut(&cut, at).await?;
    Ok(())
}

/// Cuts off every capability of `user_id` issued until now, on every pod (a deleted user).
pub async fn cut_user(db: &Db, capability_lifetime: u64, user_id: &str) -> Result<(), sqlx::Error> {
    let at = now_unix();
    let cut = CutRow::User {
        user_id: user_id.to_owned(),
        pod: None,
        port: None,
        resource: None,
        at,
        until: cut_until(capability_lifetime, at),
    };
    db.insert_cut(&cut, at).await?;
    Ok(())
}

/// Cuts off every capability of `user_id` for `resource` (its path, e.g. `/sessions/abc`) of
/// the service `service` issued until now: the resource changed owner or was forgotten. Their
/// capabilities for the service's other resources are not touched.
pub async fn cut_resource(
    db: &Db,
    capability_lifetime: u64,
    user_id: &str,
    service: &str,
    resource: &str,
) -> Result<(), sqlx::Error> {
    let at = now_unix();
    let cut = CutRow::User {
        user_id: user_id.to_owned(),
        pod: Some(service.to_owned()),
        port: Some(SERVICE_PORT),
        resource: Some(resource.to_owned()),
        at,
        until: cut_until(capability_lifetime, at),
    };
    db.insert_cut(&cut, at).await?;
    tracing::info!(user = %user_id, %service, %resource, "resource lost: capabilities cut off");
    Ok(())
}

/// Re-checks the access of everyone holding an unexpired capability in `scope` and cuts off,
/// per port, those who may no longer reach it. Returns how many `(user, pod, port)` were cut.
pub async fn cut_lost_access(
    db: &Db,
    capability_lifetime: u64,
    scope: HolderScope<'_>,
) -> Result<usize, sqlx::Error> {
    let at = now_unix();
    let mut cut = 0;
    for (user_id, pod, port) in db.capability_holders(&scope, at).await? {
        let still = if user_id == ANONYMOUS_SUB {
            db.access_facts(&pod, port, None)
                .await?
                .is_some_and(|f| may_reach(&f, None))
        } else {
            match db.user_access_facts(&user_id, &pod, port).await? {
                Some((user, Some(facts))) => may_reach(&facts, Some(&user)),
                // The user or the pod is gone.
                _ => false,
            }
        };
        if still {
            continue;
        }
        let row = CutRow::User {
            user_id: user_id.clone(),
            pod: Some(pod.clone()),
            port: Some(port),
            resource: None,
            at,
            until: cut_until(capability_lifetime, at),
        };
        db.insert_cut(&row, at).await?;
        tracing::info!(user = %user_id, %pod, port, "access lost: capabilities cut off");
        cut += 1;
    }
    Ok(cut)
}

/// The cuts for the filter's configuration: those in force now, at most `MAX_CUTS`.
pub async fn cutoffs(db: &Db) -> Result<Cutoffs, sqlx::Error> {
    let now = now_unix();
    let mut all = Cutoffs::default();
    for row in db.live_cuts(now).await? {
        match row {
            CutRow::Session { sid, at, until } => all.sessions.push(SessionCut { sid, at, until }),
            CutRow::User {
                user_id,
                pod,
                port,
                resource,
                at,
                until,
            } => all.users.push(UserCut {
                sub: user_id,
                pod,
                port,
                resource,
                at,
                until,
            }),
        }
    }
    let listed = all.sessions.len() + all.users.len();
    let bounded = all.bounded(now, MAX_CUTS);
    if let Some(before) = bounded.issued_before {
        tracing::warn!(
            cuts = listed,
            max = MAX_CUTS,
            issued_before = before,
            "more cuts than Envoy is sent: every capability issued at or before the oldest listed cut is refused (browsers sign in again silently; scripts mint a new capability)"
        );
    }
    Ok(bounded)
}
