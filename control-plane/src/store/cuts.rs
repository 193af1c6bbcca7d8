//! Access cuts: capabilities refused before their expiry (a sign-out, or a loss of access), and
//! who holds unexpired capabilities where (read from the mint audit to re-check their access).

use sqlx::{Any, Executor, Row};

use super::{Change, Db, Res};

/// One cut as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CutRow {
    /// Every capability minted for the session `sid`.
    Session { sid: String, at: i64, until: i64 },
    /// The capabilities of `user_id` (on `pod`, on `port` of it, for `resource` of that
    /// service) issued at or before `at`.
    User {
        user_id: String,
        pod: Option<String>,
        port: Option<u16>,
        resource: Option<String>,
        at: i64,
        until: i64,
    },
}

/// Where to look for capability holders whose access may have been lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderScope<'a> {
    /// Every pod one user holds capabilities for.
    User(&'a str),
    /// Every user holding a capability for one pod.
    Pod(&'a str),
    /// Every user holding a capability for one port of one pod.
    Port(&'a str, u16),
}

impl Db {
    /// [`Change::insert_cut`] in a transaction of its own.
    pub async fn insert_cut(&self, cut: &CutRow, now: i64) -> Res<()> {
        let mut change = self.change().await?;
        change.insert_cut(cut, now).await?;
        change.commit().await
    }

    /// Every cut still in force at `now`, the newest first.
    pub async fn live_cuts(&self, now: i64) -> Res<Vec<CutRow>> {
        let rows = sqlx::query(
            "SELECT sid, user_id, pod_slug, port, resource, cut_at, expires_at FROM access_cuts \
             WHERE expires_at >= $1 ORDER BY cut_at DESC, id DESC",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut cuts = Vec::with_capacity(rows.len());
        for row in rows {
            let at: i64 = row.try_get("cut_at")?;
            let until: i64 = row.try_get("expires_at")?;
            let sid: Option<String> = row.try_get("sid")?;
            let user_id: Option<String> = row.try_get("user_id")?;
            cuts.push(match (sid, user_id) {
                (Some(sid), _) => CutRow::Session { sid, at, until },
                (None, Some(user_id)) => {
                    let port: Option<i64> = row.try_get("port")?;
                    CutRow::User {
                        user_id,
                        pod: row.try_get("pod_slug")?,
                        port: port.and_then(|p| u16::try_from(p).ok()),
                        resource: row.try_get("resource")?,
                        at,
                        until,
                    }
                }
                // The table's CHECK rules this out.
                (None, None) => continue,
            });
        }
        Ok(cuts)
    }

    /// Whether the session `sid` was ended (a ticket minted for it before is not redeemed).
    pub async fn session_was_cut(&self, sid: &str) -> Res<bool> {
        session_was_cut(&self.pool, sid).await
    }
}

impl Change {
    /// Records a cut; expired cuts, and earlier cuts of the same user and scope (the new one
    /// refuses all they did, for longer), are dropped on the way.
    pub async fn insert_cut(&mut self, cut: &CutRow, now: i64) -> Res<()> {
        sqlx::query("DELETE FROM access_cuts WHERE expires_at < $1")
            .bind(now)
            .execute(self.conn())
            .await?;
        if let CutRow::User {
            user_id,
            pod,
            port,
            resource,
            ..
        } = cut
        {
            sqlx::query(
                "DELETE FROM access_cuts WHERE user_id = $1 AND COALESCE(pod_slug, '') = $2 \
                 AND COALESCE(port, -1) = $3 AND COALESCE(resource, '') = $4",
            )
            .bind(user_id.as_str())
            .bind(pod.as_deref().unwrap_or(""))
            .bind(port.map_or(-1, i64::from))
            .bind(resource.as_deref().unwrap_or(""))
            .execute(self.conn())
            .await?;
        }
        let (sid, user, pod, port, resource, at, until) = match cut {
            CutRow::Session { sid, at, until } => {
                (Some(sid.as_str()), None, None, None, None, at, until)
            }
            CutRow::User {
                user_id,
                pod,
                port,
                resource,
                at,
                until,
            } => (
                None,
                Some(user_id.as_str()),
                pod.as_deref(),
                port.map(i64::from),
                resource.as_deref(),
                at,
                until,
            ),
        };
        sqlx::query(
            "INSERT INTO access_cuts (sid, user_id, pod_slug, port, resource, cut_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(sid)
        .bind(user)
        .bind(pod)
        .bind(port)
        .bind(resource)
        .bind(*at)
        .bind(*until)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// The distinct `(user, pod, port)` holding a capability in `scope` that expires after
    /// `now`, from the mint audit.
    pub async fn capability_holders(
        &mut self,
        scope: &HolderScope<'_>,
        now: i64,
    ) -> Res<Vec<(String, String, u16)>> {
        let (user, pod, port) = match scope {
            HolderScope::User(user) => (*user, "", -1),
            HolderScope::Pod(pod) => ("", *pod, -1),
            HolderScope::Port(pod, port) => ("", *pod, i64::from(*port)),
        };
        let q = sqlx::query(
            "SELECT DISTINCT user_id, pod_slug, port FROM token_audit \
             WHERE kind = 'capability' AND expires_at > $1 \
             AND ($2 = '' OR user_id = $2) AND ($3 = '' OR pod_slug = $3) AND ($4 < 0 OR port = $4)",
        )
        .bind(now)
        .bind(user)
        .bind(pod)
        .bind(port);
        let rows = q.fetch_all(self.conn()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let port: i64 = row.try_get("port")?;
            if let Ok(port) = u16::try_from(port) {
                out.push((row.try_get("user_id")?, row.try_get("pod_slug")?, port));
            }
        }
        Ok(out)
    }
}

pub(super) async fn session_was_cut<'e>(
    e: impl Executor<'e, Database = Any>,
    sid: &str,
) -> Res<bool> {
    let row = sqlx::query("SELECT 1 AS one FROM access_cuts WHERE sid = $1 LIMIT 1")
        .bind(sid)
        .fetch_optional(e)
        .await?;
    Ok(row.is_some())
}
