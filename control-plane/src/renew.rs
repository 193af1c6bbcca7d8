//! Renewing a browser's capability for Envoy's filter (`POST /api/proxy-renew`, in
//! `http/renew.rs`): everything is checked again on every renewal, as at the callback, and the
//! fresh capability carries the same session id, so renewal never outlives the session or the
//! access.
//!
//! Checked, in order: the capability verifies under the capability keys in force (signature,
//! kind, issuer, lifetime), expired at most a session lifetime ago (a browser tab left idle
//! holds its cookie that long, and the filter renews it before deciding its request); it names
//! a session (`sid`; a
//! capability minted with an API token has none, so a revoked API token's capabilities are
//! never renewed); no cut refuses it (`cuts::cutoffs`: the session signed out, the user lost
//! access at or after its `iat`); the session is live (not expired, not signed out); the user
//! exists and may still reach the port (`authz::may_reach`). Then a capability for the same
//! user, pod, port and session is minted and audited (`via` = `renew`).

use podgate_protocol::host::PodAddr;
use podgate_protocol::token::{TokenKind, Verifier, DEFAULT_LEEWAY_SECS};

use crate::auth::identity::session_id;
use crate::authz::{authorize_resource, may_reach, AuthzError};
use crate::ids::ANONYMOUS_SUB;
use crate::metrics::DbOp;
use crate::mint::{mint_scoped_for, MintContext, MintError, Minted};
use crate::store::now_unix;

/// Why a capability was not renewed: the filter stops renewing it, and it lives out its
/// lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewRefusal {
    /// Malformed, expired, not ours, or another kind.
    BadCapability,
    /// No session id: minted for a script, which mints its own.
    NoSession,
    /// Cut off: the session signed out, or the user lost access since it was issued.
    CutOff,
    /// The session expired or was ended.
    SessionEnded,
    /// The user no longer exists or may no longer reach the port.
    NoLongerAllowed,
}

/// Why [`renew_capability`] minted nothing.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The capability cannot be renewed.
    #[error("renewal refused: {0:?}")]
    Refused(RenewRefusal),
    /// Ours: the keys, signing or the recorder failed.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// Ours: reading the session, the cuts or authorization failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    /// Ours: the capability keys in force do not compile.
    #[error("capability keys: {0}")]
    Keys(String),
}

fn refused(why: RenewRefusal) -> RenewError {
    RenewError::Refused(why)
}

/// What a capability that passed every check of the module stands for.
#[derive(Debug)]
pub struct StillAllowed {
    pub user: crate::store::User,
    pub addr: PodAddr,
    pub sid: String,
    /// The resource it names, on a service reached per resource (checked again).
    pub res: Option<String>,
    /// The checked capability's `jti`.
    pub jti: String,
}

/// Renews `token` (checked as the module says); the fresh capability, recorded before it is
/// handed out.
pub async fn renew_capability(ctx: &MintContext<'_>, token: &str) -> Result<Minted, RenewError> {
    let StillAllowed {
        user,
        addr,
        sid,
        res,
        jti,
    } = still_allowed(ctx, token, session_lifetime(ctx)).await?;
    let fresh = mint_scoped_for(
        ctx,
        TokenKind::Capability,
        Some(&user),
        &addr,
        res.as_deref(),
        "renew",
        None,
        Some(&sid),
    )
    .await?;
    tracing::info!(
        user = %user.id, pod = %addr.pod, port = addr.port, old = %jti,
        jti = %fresh.jti, "capability renewed"
    );
    Ok(fresh)
}

/// How long after its `exp` a browser's capability is still renewed: the session lifetime,
/// for which its cookie is kept.
fn session_lifetime(ctx: &MintContext<'_>) -> i64 {
    i64::try_from(ctx.config.session_lifetime).unwrap_or(i64::MAX)
}

/// Checks `token` as the module says, minting nothing: a browser's capability, expired at most
/// `lapsed_secs` ago (and the leeway), whose session is live and whose user may still reach
/// its pod and port. Renewal (a session lifetime) and waking a pod (`crate::wake`, 0: a live
/// capability only) both stand on it.
pub async fn still_allowed(
    ctx: &MintContext<'_>,
    token: &str,
    lapsed_secs: i64,
) -> Result<StillAllowed, RenewError> {
    let ring = ctx.keys.current().map_err(MintError::from)?;
    let lifetime = i64::try_from(ctx.config.capability_lifetime).unwrap_or(i64::MAX);
    let verifier = Verifier::new(
        TokenKind::Capability,
        ctx.config.issuer.clone(),
        &ring.capability_keys,
        DEFAULT_LEEWAY_SECS,
        lifetime,
    )
    .map_err(|e| RenewError::Keys(e.to_string()))?;
    let now = now_unix();
    let old = verifier
        .verify_lapsed(token, now, lapsed_secs)
        .map_err(|_| refused(RenewRefusal::BadCapability))?;
    let sid = old.sid.clone().ok_or(refused(RenewRefusal::NoSession))?;
    if old.claims.sub == ANONYMOUS_SUB {
        return Err(refused(RenewRefusal::NoSession));
    }
    let cutoffs = crate::cuts::cutoffs(ctx.db)
        .await?
        .compile()
        .map_err(|e| RenewError::Keys(format!("cut-offs: {e}")))?;
    if cutoffs.refuses(&old) || ctx.db.session_was_cut(&sid).await? {
        return Err(refused(RenewRefusal::CutOff));
    }
    let live = ctx
        .db
        .live_session_hashes(&old.claims.sub, now)
        .await?
        .iter()
        .any(|hash| session_id(hash) == sid);
    if !live {
        return Err(refused(RenewRefusal::SessionEnded));
    }
    let addr = PodAddr {
        pod: old.claims.pod.clone(),
        port: old.claims.port,
    };
    if old.claims.aud != ctx.config.public_hosts.render(&addr) {
        return Err(refused(RenewRefusal::BadCapability));
    }
    let (user, facts) = ctx
        .metrics
        .db_timed(
            DbOp::Authorize,
            ctx.db
                .user_access_facts(&old.claims.sub, &addr.pod, addr.port),
        )
        .await?
        .ok_or(refused(RenewRefusal::NoLongerAllowed))?;
    if !facts.is_some_and(|f| may_reach(&f, Some(&user))) {
        return Err(refused(RenewRefusal::NoLongerAllowed));
    }
    match authorize_resource(ctx.db, Some(&user), &addr, old.res.as_deref()).await {
        Ok(()) => {}
        Err(AuthzError::Store(e)) => return Err(RenewError::Store(e)),
        Err(AuthzError::NotFound | AuthzError::NotYourResource) => {
            return Err(refused(RenewRefusal::NoLongerAllowed))
        }
    }
    Ok(StillAllowed {
        user,
        addr,
        sid,
        res: old.res,
        jti: old.claims.jti,
    })
}
