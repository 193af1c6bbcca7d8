//! Minting: a login ticket or a capability for one user (or anonymous) on one pod port, signed
//! with the key ring in force and recorded in the audit trail (never the token itself).

use podgate_protocol::host::PodAddr;
use podgate_protocol::token::{mint, PodClaims, TokenKind};

use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::ids::ANONYMOUS_SUB;
use crate::keys::{random_id, KeyRing};
use crate::store::{now_unix, AuditEntry, KeyKind, User};
use crate::AppState;

/// A freshly minted token, when it expires, and its audit entry (not yet recorded).
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub expires_at: i64,
    pub audit: AuditEntry,
}

/// Mints a token of `kind` for `user` (or anonymous) on `addr`'s public host, and records it in
/// the audit trail (never the token itself), with the API token it was minted with, if any.
pub async fn mint_for(
    state: &AppState,
    kind: TokenKind,
    user: Option<&User>,
    addr: &PodAddr,
    via: &str,
    api_token: Option<&str>,
) -> ApiResult<Minted> {
    let ring = state.keys()?;
    let minted = sign_for(state.config(), &ring, kind, user, addr, via, api_token)?;
    state
        .recorder()
        .record(minted.audit.clone())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(minted)
}

/// Signs a token; the caller records `audit` before handing the token out.
pub fn sign_for(
    config: &Config,
    ring: &KeyRing,
    kind: TokenKind,
    user: Option<&User>,
    addr: &PodAddr,
    via: &str,
    api_token: Option<&str>,
) -> ApiResult<Minted> {
    let (key, lifetime, key_kind) = match kind {
        TokenKind::LoginTicket => (&ring.ticket_signer, config.ticket_lifetime, KeyKind::Ticket),
        TokenKind::Capability => (
            &ring.capability_signer,
            config.capability_lifetime,
            KeyKind::Capability,
        ),
    };
    let jti = random_id()?;
    let claims = PodClaims {
        iss: config.issuer.clone(),
        sub: user.map_or_else(|| ANONYMOUS_SUB.to_owned(), |u| u.id.clone()),
        aud: config.host_template.render(addr),
        pod: addr.pod.clone(),
        port: addr.port,
        jti: jti.clone(),
        email: user.and_then(|u| u.email.clone()),
    };
    let now = now_unix();
    let lifetime = lifetime as i64;
    let token = mint(kind, key, &claims, now, lifetime)
        .map_err(|e| ApiError::internal(format!("minting a {kind:?}: {e}")))?;
    let audit = AuditEntry {
        jti: jti.clone(),
        kind: key_kind,
        user_id: claims.sub,
        pod_slug: claims.pod,
        port: claims.port,
        audience: claims.aud,
        via: via.to_owned(),
        api_token_id: api_token.map(str::to_owned),
        issued_at: now,
        expires_at: now + lifetime,
    };
    Ok(Minted {
        token,
        jti,
        expires_at: now + lifetime,
        audit,
    })
}
