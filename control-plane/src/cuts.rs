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
//! A change that may take access away commits together with its cuts
//! ([`commit_cutting_lost_access`]), and the admin layer then pushes.

use podgate_protocol::cutoff::{Cutoffs, SessionCut, UserCut, MAX_CUTS};
use podgate_protocol::host::SERVICE_PORT;
use podgate_protocol::token::DEFAULT_LEEWAY_SECS;

use crate::authz::may_reach;
use crate::ids::ANONYMOUS_SUB;
use crate::store::{now_unix, Change, CutRow, Db, HolderScope};

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

/// Cuts off, inside `change` (a sign-out ending the session), every capability minted for the
/// session `sid`, whenever it was issued; capabilities live at most `capability_lifetime`
/// seconds. The caller commits and pushes.
pub async fn cut_session(
    change: &mut Change,
    capability_lifetime: u64,
    sid: &str,
) -> Result<(), sqlx::Error> {
    let at = now_unix();
    let cut = CutRow::Session {
        sid: sid.to_owned(),
        at,
        until: cut_until(capability_lifetime, at),
    };
    change.insert_cut(&cut, at).await
}

/// Commits `change`, which deletes user `user_id`, together with the cut of every capability
/// of theirs issued until now, on every pod. The cut is made again after the commit, as in
/// [`commit_cutting_lost_access`].
pub async fn commit_cutting_user(
    db: &Db,
    mut change: Change,
    capability_lifetime: u64,
    user_id: &str,
) -> Result<(), sqlx::Error> {
    cut_user(&mut change, capability_lifetime, user_id).await?;
    change.commit().await?;
    cut_again(db, async |again: &mut Change| {
        cut_user(again, capability_lifetime, user_id).await
    })
    .await;
    Ok(())
}

/// The second pass after a committed change: `cut` again in a transaction of its own, with the
/// time after the commit, for a capability minted from the old access while the change was
/// being made. A failure is logged, not answered: the change and the cuts made with it stand.
async fn cut_again(db: &Db, cut: impl AsyncFnOnce(&mut Change) -> Result<(), sqlx::Error>) {
    let again = async {
        let mut again = db.change().await?;
        cut(&mut again).await?;
        again.commit().await
    };
    if let Err(e) = again.await {
        tracing::warn!(error = %e, "cutting again after a committed change failed; the cuts made with the change stand");
    }
}

async fn cut_user(
    change: &mut Change,
    capability_lifetime: u64,
    user_id: &str,
) -> Result<(), sqlx::Error> {
    let at = now_unix();
    let cut = CutRow::User {
        user_id: user_id.to_owned(),
        pod: None,
        port: None,
        resource: None,
        at,
        until: cut_until(capability_lifetime, at),
    };
    change.insert_cut(&cut, at).await
}

/// A resource of a service reached per resource that one user may no longer use (it changed
/// owner or was forgotten).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceLoss {
    pub user_id: String,
    pub service: String,
    /// Its path, e.g. `/sessions/abc`.
    pub resource: String,
}

/// Commits `change` together with the cut of every capability `lost.user_id` holds for the
/// resource, issued until now; their capabilities for the service's other resources are not
/// touched. The cut is made again after the commit, as in [`commit_cutting_lost_access`].
pub async fn commit_cutting_resource(
    db: &Db,
    mut change: Change,
    capability_lifetime: u64,
    lost: Option<&ResourceLoss>,
) -> Result<(), sqlx::Error> {
    if let Some(lost) = lost {
        cut_resource(&mut change, capability_lifetime, lost).await?;
    }
    change.commit().await?;
    let Some(lost) = lost else { return Ok(()) };
    tracing::info!(user = %lost.user_id, service = %lost.service, resource = %lost.resource, "resource lost: capabilities cut off");
    cut_again(db, async |again: &mut Change| {
        cut_resource(again, capability_lifetime, lost).await
    })
    .await;
    Ok(())
}

async fn cut_resource(
    change: &mut Change,
    capability_lifetime: u64,
    lost: &ResourceLoss,
) -> Result<(), sqlx::Error> {
    let at = now_unix();
    let cut = CutRow::User {
        user_id: lost.user_id.clone(),
        pod: Some(lost.service.clone()),
        port: Some(SERVICE_PORT),
        resource: Some(lost.resource.clone()),
        at,
        until: cut_until(capability_lifetime, at),
    };
    change.insert_cut(&cut, at).await
}

/// Commits `change`, a write that may take access away in `scopes`, together with the cuts of
/// whoever lost access by it (one transaction: a failure anywhere changes nothing, and the
/// request can be repeated). Once committed, the same scopes are re-checked again, with the
/// cut's time after the commit: a capability minted while the change was being made, from the
/// access it had not yet taken away, is refused too. A failure of that second pass is logged,
/// not answered: the change and its cuts stand. Returns how many `(user, pod, port)` were cut.
pub async fn commit_cutting_lost_access(
    db: &Db,
    mut change: Change,
    capability_lifetime: u64,
    scopes: &[HolderScope<'_>],
) -> Result<usize, sqlx::Error> {
    let mut cut = Vec::new();
    for scope in scopes {
        cut.extend(cut_lost_access(&mut change, capability_lifetime, scope).await?);
    }
    change.commit().await?;
    for (user, pod, port) in &cut {
        tracing::info!(%user, %pod, port, "access lost: capabilities cut off");
    }
    cut_again(db, async |again: &mut Change| {
        for scope in scopes {
            cut_lost_access(again, capability_lifetime, scope).await?;
        }
        Ok(())
    })
    .await;
    Ok(cut.len())
}

/// Re-checks, inside `change`, the access of everyone holding an unexpired capability in
/// `scope` and cuts off, per port, those who may no longer reach it: the `(user, pod, port)`
/// cut.
async fn cut_lost_access(
    change: &mut Change,
    capability_lifetime: u64,
    scope: &HolderScope<'_>,
) -> Result<Vec<(String, String, u16)>, sqlx::Error> {
    let at = now_unix();
    let mut cut = Vec::new();
    for (user_id, pod, port) in change.capability_holders(scope, at).await? {
        let still = if user_id == ANONYMOUS_SUB {
            change
                .access_facts(&pod, port, None)
                .await?
                .is_some_and(|f| may_reach(&f, None))
        } else {
            match change.user_access_facts(&user_id, &pod, port).await? {
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
        change.insert_cut(&row, at).await?;
        cut.push((user_id, pod, port));
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
