//! Minting: a login ticket or a capability for one user (or anonymous) on one pod port, signed
//! with the key ring in force and recorded in the audit trail (never the token itself).

use podgate_protocol::host::PodAddr;
use podgate_protocol::token::{mint_scoped, PodClaims, TokenError, TokenKind};

use crate::authz::{authorize_resource, may_reach, AuthzError};
use crate::config::Config;
use crate::ids::ANONYMOUS_SUB;
use crate::keys::{token_id, KeyRing, KeyringError, LiveKeys, NoKeyRing};
use crate::metrics::{DbOp, Metrics, Outcome};
use crate::recorder::{RecordError, Recorder};
use crate::store::{now_unix, AuditEntry, Db, KeyKind, User};
use crate::tickets::MintedTickets;

/// What minting reads and writes: the settings, the keys in force, the database (a ticket's
/// authorization is read again) and the audit trail.
#[derive(Debug, Clone, Copy)]
pub struct MintContext<'a> {
    pub config: &'a Config,
    pub keys: &'a LiveKeys,
    pub db: &'a Db,
    pub recorder: &'a Recorder,
    /// Login tickets minted here: remembered at minting, taken at redemption.
    pub tickets: &'a MintedTickets,
    /// Every mint is counted, by kind, way and outcome.
    pub metrics: &'a Metrics,
}

/// Why nothing was minted: always ours, never the client's.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    NoKeys(#[from] NoKeyRing),
    /// The operating system gave no randomness for the token's id.
    #[error(transparent)]
    Random(#[from] KeyringError),
    #[error("minting a {kind:?}: {message}")]
    Sign { kind: TokenKind, message: String },
    /// The audit entry (or the ticket's consumption) could not be written.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// A freshly minted token, when it expires, and its audit entry (not yet recorded).
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub expires_at: i64,
    pub audit: AuditEntry,
    /// Minted for a user's session (a `sid`): renewed at the edge while the session lives.
    pub in_session: bool,
}

/// The API token a capability is minted with: recorded with it, so that revoking the token
/// revokes the capability too, and its expiry is the capability's latest.
#[derive(Debug, Clone)]
pub struct ByApiToken {
    pub id: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Mints a token of `kind` for `user` (or anonymous) on `addr`'s public host, and records it in
/// the audit trail (never the token itself), with the API token it was minted with, if any. It
/// carries the resource claim `res` (a resource path, `/sessions/abc`) on a service reached per
/// resource (the caller has checked `authz::authorize_resource`), and the control-plane session
/// `sid` when there is one (a ticket passes it on to its capability), so that signing out cuts
/// it off.
#[allow(clippy::too_many_arguments)]
pub async fn mint_scoped_for(
    ctx: &MintContext<'_>,
    kind: TokenKind,
    user: Option<&User>,
    addr: &PodAddr,
    res: Option<&str>,
    via: &str,
    api_token: Option<&ByApiToken>,
    sid: Option<&str>,
) -> Result<Minted, MintError> {
    let minted = async {
        let ring = ctx.keys.current()?;
        let minted = sign_in_session(
            ctx.config, &ring, kind, user, addr, res, via, api_token, sid,
        )?;
        match kind {
            // A ticket grants nothing until its redemption, which waits for its own row and,
            // through the recorder's order, for this one.
            TokenKind::LoginTicket => {
                ctx.recorder.record_later(minted.audit.clone()).await?;
                ctx.tickets
                    .remember(&minted.token, minted.expires_at, minted.audit.issued_at);
            }
            _ => ctx.recorder.record(minted.audit.clone()).await?,
        }
        Ok(minted)
    }
    .await;
    let outcome = if minted.is_ok() {
        Outcome::Ok
    } else {
        Outcome::Error
    };
    ctx.metrics.mint(kind, via, outcome);
    minted
}

/// Signs a token as [`mint_scoped_for`] says; the caller records `audit` before handing the
/// token out.
#[allow(clippy::too_many_arguments)]
pub fn sign_in_session(
    config: &Config,
    ring: &KeyRing,
    kind: TokenKind,
    user: Option<&User>,
    addr: &PodAddr,
    res: Option<&str>,
    via: &str,
    api_token: Option<&ByApiToken>,
    sid: Option<&str>,
) -> Result<Minted, MintError> {
    let (key, lifetime, key_kind) = match kind {
        TokenKind::LoginTicket => (&ring.ticket_signer, config.ticket_lifetime, KeyKind::Ticket),
        TokenKind::Capability => (
            &ring.capability_signer,
            config.capability_lifetime,
            KeyKind::Capability,
        ),
        // Assertions are signed by Envoy's filter with a key of their own, never here.
        TokenKind::Assertion => {
            return Err(MintError::Sign {
                kind,
                message: "identity assertions are signed by the filter".into(),
            })
        }
    };
    let jti = token_id()?;
    let claims = PodClaims {
        iss: config.issuer.clone(),
        sub: user.map_or_else(|| ANONYMOUS_SUB.to_owned(), |u| u.id.clone()),
        aud: config.public_hosts.render(addr),
        pod: addr.pod.clone(),
        port: addr.port,
        jti: jti.clone(),
        email: user.and_then(|u| u.email.clone()),
    };
    let now = now_unix();
    // A capability minted with an API token ends when the token does, or sooner: the filter
    // keeps what it exchanged until the capability's expiry, and nothing is pushed when a token
    // expires (it was checked unexpired a moment ago; a second at least, on a clock tick).
    let lifetime = match api_token {
        Some(t) => (lifetime as i64).min(t.expires_at - now).max(1),
        None => lifetime as i64,
    };
    let token =
        mint_scoped(kind, key, &claims, sid, res, now, lifetime).map_err(|e| MintError::Sign {
            kind,
            message: e.to_string(),
        })?;
    let audit = AuditEntry {
        jti: jti.clone(),
        kind: key_kind,
        user_id: claims.sub,
        pod_slug: claims.pod,
        port: claims.port,
        audience: claims.aud,
        via: via.to_owned(),
        api_token_id: api_token.map(|t| t.id.clone()),
        issued_at: now,
        expires_at: now + lifetime,
        resource: res.map(str::to_owned),
    };
    Ok(Minted {
        token,
        jti,
        expires_at: now + lifetime,
        audit,
        in_session: sid.is_some() && user.is_some(),
    })
}

/// Why a login ticket was refused: the client's to retry with a fresh sign-in link.
#[derive(Debug)]
#[allow(dead_code)] // the fields are read through `Debug`, in the log line
pub enum TicketRefusal {
    /// Malformed, expired, or not signed by a ticket key of ours.
    BadTicket(String),
    /// Minted for another pod host than the one it was presented on.
    WrongHost,
    /// Already redeemed once.
    Replayed,
    /// Minted for a session that has signed out since.
    SignedOut,
    /// The user no longer exists or may no longer reach the port.
    NoLongerAllowed,
}

/// Why [`redeem_ticket`] minted nothing.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// The client's: the ticket cannot be used.
    #[error("ticket refused: {0:?}")]
    Refused(TicketRefusal),
    /// Ours: the keys, signing or the recorder failed.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// Ours: reading authorization failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// Redeems a login ticket presented on `addr`'s host: checks it, reads authorization again,
/// consumes it (single use) and mints the capability, recorded before it is handed out.
pub async fn redeem_ticket(
    ctx: &MintContext<'_>,
    addr: &PodAddr,
    ticket: &str,
) -> Result<Minted, RedeemError> {
    let redeemed = redeem(ctx, addr, ticket).await;
    let outcome = match &redeemed {
        Ok(_) => Outcome::Ok,
        Err(RedeemError::Refused(_)) => Outcome::Refused,
        Err(_) => Outcome::Error,
    };
    ctx.metrics.mint(TokenKind::Capability, "callback", outcome);
    redeemed
}

async fn redeem(
    ctx: &MintContext<'_>,
    addr: &PodAddr,
    ticket: &str,
) -> Result<Minted, RedeemError> {
    let ring = ctx.keys.current().map_err(MintError::from)?;
    let now = now_unix();
    // A ticket this process minted, presented with exactly its bytes, was signed here: the
    // claims are checked as always, the signature is not checked again.
    let verified = if ctx.tickets.take(ticket) {
        ring.ticket_verifier.verify_signed_here(ticket, now)
    } else {
        match ring.ticket_verifier.verify(ticket, now) {
            // Signed by another control plane with a ticket key it rotated in since this one
            // read the keys: read again (rate-limited) and check with what is there now.
            Err(TokenError::UnknownKey) => {
                match ctx
                    .keys
                    .reload_for_unknown_key(ctx.db, ctx.config, &ring)
                    .await
                {
                    Some(fresh) => fresh.ticket_verifier.verify(ticket, now),
                    None => Err(TokenError::UnknownKey),
                }
            }
            other => other,
        }
    }
    .map_err(|e| RedeemError::Refused(TicketRefusal::BadTicket(e.to_string())))?;
    let claims = &verified.claims;
    // `aud` must be exactly this host; pod and port must be what this host names.
    let this_host = ctx.config.public_hosts.render(addr);
    if claims.aud != this_host || claims.pod != addr.pod || claims.port != addr.port {
        return Err(RedeemError::Refused(TicketRefusal::WrongHost));
    }
    // Authorization is read again: the ticket proves who, not what they may reach now; and
    // whether the ticket's session has signed out since (one query for a user's ticket).
    let sid = verified.sid.as_deref();
    let read_access = async {
        if claims.sub == ANONYMOUS_SUB {
            let facts = ctx.db.access_facts(&addr.pod, addr.port, None).await?;
            let cut = match sid {
                Some(sid) => ctx.db.session_was_cut(sid).await?,
                None => false,
            };
            Ok::<_, RedeemError>((None, facts, cut))
        } else {
            let read = ctx
                .db
                .redeem_facts(&claims.sub, &addr.pod, addr.port, sid)
                .await?
                .ok_or(RedeemError::Refused(TicketRefusal::NoLongerAllowed))?;
            Ok((Some(read.user), read.facts, read.session_cut))
        }
    };
    let (user, facts, session_cut) = ctx.metrics.db_timed(DbOp::Authorize, read_access).await?;
    if !facts.is_some_and(|f| may_reach(&f, user.as_ref())) {
        return Err(RedeemError::Refused(TicketRefusal::NoLongerAllowed));
    }
    // The resource the ticket names, if any, is checked again too.
    let res = verified.res.as_deref();
    match authorize_resource(ctx.db, user.as_ref(), addr, res).await {
        Ok(()) => {}
        Err(AuthzError::Store(e)) => return Err(RedeemError::Store(e)),
        Err(AuthzError::NotFound | AuthzError::NotYourResource) => {
            return Err(RedeemError::Refused(TicketRefusal::NoLongerAllowed))
        }
    }
    // A ticket of a session that signed out since is not redeemed (its capability would be
    // refused anyway: it carries the session's id).
    if session_cut {
        return Err(RedeemError::Refused(TicketRefusal::SignedOut));
    }
    let cap = sign_in_session(
        ctx.config,
        &ring,
        TokenKind::Capability,
        user.as_ref(),
        addr,
        res,
        "callback",
        None,
        sid,
    )?;
    // Single use: a ticket already consumed is a replay; the capability is recorded before it
    // is handed out.
    let first_use = ctx
        .recorder
        .consume_then_record(claims.jti.clone(), verified.expires_at, cap.audit.clone())
        .await
        .map_err(MintError::from)?;
    if !first_use {
        return Err(RedeemError::Refused(TicketRefusal::Replayed));
    }
    tracing::info!(
        user = %claims.sub, pod = %addr.pod, port = addr.port, jti = %cap.jti,
        "capability minted"
    );
    Ok(cap)
}
