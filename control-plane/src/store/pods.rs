//! Pods, their ports, and the facts an authorization decision reads.

use podgate_protocol::host::SERVICE_PORT;
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Executor, FromRow, Row};

use super::cuts::session_was_cut;
use super::inline;
use super::services::service_access_facts;
use super::users::get_user;
use super::{
    collect, parse_pod_status, row_facts, Change, Db, PodStatus, Res, Sharing, User,
    DEFAULT_SHARING,
};

/// A pod status as stored (`TEXT`); decoding it checks it is one of [`super::POD_STATUSES`].
#[derive(sqlx::Type)]
#[sqlx(transparent)]
struct StoredPodStatus(String);

impl TryFrom<StoredPodStatus> for PodStatus {
    type Error = String;
    fn try_from(s: StoredPodStatus) -> Result<Self, String> {
        parse_pod_status(&s.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Pod {
    pub slug: String,
    pub owner_id: String,
    pub team_id: Option<String>,
    pub server_id: Option<String>,
    #[sqlx(try_from = "StoredPodStatus")]
    pub status: PodStatus,
    #[sqlx(try_from = "i64")]
    pub nginx_port: u16,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct PodPort {
    pub pod_slug: String,
    #[sqlx(try_from = "i64")]
    pub port: u16,
    #[sqlx(try_from = "String")]
    pub sharing: Sharing,
    pub label: String,
}

/// A pod's own limits at the edge (`pod_limits`), winning over the global ones in the filter
/// (`podgate_protocol::rate`, `podgate_protocol::concurrent`). Each is off when absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PodLimits {
    /// Requests to the pod, from every user: `per_second` on average, up to `burst` at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<PodRate>,
    /// Most streams (requests in flight and open WebSockets) open to the pod at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub concurrent: Option<u32>,
}

/// A request rate: `per_second` requests a second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PodRate {
    #[schema(minimum = 1)]
    pub per_second: u32,
    #[schema(minimum = 1)]
    pub burst: u32,
}

impl PodLimits {
    /// `Err` with why, naming the field, when a limit is 0 (it would refuse everything).
    pub fn check(&self) -> Result<(), String> {
        if let Some(rate) = &self.rate {
            if rate.per_second == 0 || rate.burst == 0 {
                return Err(
                    "`limits.rate`: per_second and burst must both be at least 1".to_owned(),
                );
            }
        }
        if self.concurrent == Some(0) {
            return Err(
                "`limits.concurrent` must be at least 1 (leave it out for no limit)".into(),
            );
        }
        Ok(())
    }

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.rate.is_none() && self.concurrent.is_none()
    }
}

fn limits_of(row: &AnyRow) -> Res<PodLimits> {
    let int = |name: &str| -> Res<Option<u32>> {
        let v: Option<i64> = row.try_get(name)?;
        v.map(|v| {
            u32::try_from(v).map_err(|e| sqlx::Error::ColumnDecode {
                index: name.to_owned(),
                source: Box::new(e),
            })
        })
        .transpose()
    };
    let rate = match (int("rate_per_second")?, int("rate_burst")?) {
        (Some(per_second), Some(burst)) => Some(PodRate { per_second, burst }),
        _ => None,
    };
    Ok(PodLimits {
        rate,
        concurrent: int("concurrent")?,
    })
}

const POD_COLS: &str =
    "slug, owner_id, team_id, server_id, status, nginx_port, created_at, updated_at";

impl Db {
    pub async fn get_pod(&self, slug: &str) -> Res<Option<Pod>> {
        sqlx::query(&format!("SELECT {POD_COLS} FROM pods WHERE slug = $1"))
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(Pod::from_row)
            .transpose()
    }

    pub async fn list_pods(&self) -> Res<Vec<Pod>> {
        let rows = sqlx::query(&format!("SELECT {POD_COLS} FROM pods ORDER BY slug"))
            .fetch_all(&self.pool)
            .await?;
        collect(rows)
    }

    /// The pods `user_id` may reach some port of, with whether they are in the pod's team: the
    /// ones they own, the ones of their teams, and the ones with a port shared with every
    /// signed-in user or everyone. The caller decides port by port (`authz::may_reach`).
    pub async fn pods_within_reach(&self, user_id: &str) -> Res<Vec<(Pod, bool)>> {
        let rows = sqlx::query(&format!(
            "SELECT {POD_COLS}, \
                    (SELECT COUNT(*) FROM team_members m WHERE m.team_id = pods.team_id AND m.user_id = $1) AS members \
             FROM pods \
             WHERE owner_id = $1 \
                OR EXISTS (SELECT 1 FROM team_members m WHERE m.team_id = pods.team_id AND m.user_id = $1) \
                OR EXISTS (SELECT 1 FROM pod_ports pp WHERE pp.pod_slug = pods.slug AND pp.sharing IN ($2, $3)) \
             ORDER BY slug"
        ))
        .bind(user_id)
        .bind(Sharing::SignedIn.as_str())
        .bind(Sharing::Public.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let members: i64 = row.try_get("members")?;
                Ok((Pod::from_row(row)?, members > 0))
            })
            .collect()
    }

    pub async fn set_pod_status(&self, slug: &str, status: PodStatus, now: i64) -> Res<bool> {
        let r = sqlx::query("UPDATE pods SET status = $2, updated_at = $3 WHERE slug = $1")
            .bind(slug)
            .bind(status.as_str())
            .bind(now)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn delete_pod(&self, slug: &str) -> Res<bool> {
        let r = sqlx::query("DELETE FROM pods WHERE slug = $1")
            .bind(slug)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Every pod with its server's address (if it has a server), for the filter's directory.
    pub async fn pod_directory(&self) -> Res<Vec<(Pod, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT p.slug AS slug, p.owner_id AS owner_id, p.team_id AS team_id, p.server_id AS server_id, \
                    p.status AS status, p.nginx_port AS nginx_port, p.created_at AS created_at, \
                    p.updated_at AS updated_at, s.address AS address \
             FROM pods p LEFT JOIN servers s ON s.id = p.server_id ORDER BY p.slug",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((Pod::from_row(row)?, row.try_get("address")?)))
            .collect()
    }

    /// The pod's own limits (`None`: only the global ones).
    pub async fn pod_limits(&self, slug: &str) -> Res<Option<PodLimits>> {
        sqlx::query(
            "SELECT rate_per_second, rate_burst, concurrent FROM pod_limits WHERE pod_slug = $1",
        )
        .bind(slug)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(limits_of)
        .transpose()
    }

    /// Every pod's own limits, by slug.
    pub async fn all_pod_limits(&self) -> Res<Vec<(String, PodLimits)>> {
        let rows = sqlx::query(
            "SELECT pod_slug, rate_per_second, rate_burst, concurrent FROM pod_limits ORDER BY pod_slug",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("pod_slug")?, limits_of(row)?)))
            .collect()
    }

    pub async fn get_pod_port(&self, slug: &str, port: u16) -> Res<Option<PodPort>> {
        sqlx::query(
            "SELECT pod_slug, port, sharing, label FROM pod_ports WHERE pod_slug = $1 AND port = $2",
        )
        .bind(slug)
        .bind(i64::from(port))
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(PodPort::from_row)
        .transpose()
    }

    pub async fn list_pod_ports(&self, slug: &str) -> Res<Vec<PodPort>> {
        let rows = sqlx::query(
            "SELECT pod_slug, port, sharing, label FROM pod_ports WHERE pod_slug = $1 ORDER BY port",
        )
        .bind(slug)
        .fetch_all(&self.pool)
        .await?;
        collect(rows)
    }
}

/// The writes to pods that may take access away, on the pool (`Db`) or inside a [`Change`]
/// that also cuts whoever lost access by them.
impl Db {
    pub async fn create_pod(&self, p: &Pod) -> Res<()> {
        create_pod(&self.writer, p).await
    }

    /// Replaces every mutable field of a pod.
    pub async fn update_pod(&self, p: &Pod) -> Res<bool> {
        update_pod(&self.writer, p).await
    }

    /// Sets the pod's own limits, or removes them (`None`, or no limit set).
    pub async fn set_pod_limits(&self, slug: &str, limits: Option<&PodLimits>) -> Res<()> {
        set_pod_limits(&self.writer, slug, limits).await
    }

    /// Creates or replaces a port's sharing level.
    pub async fn put_pod_port(&self, p: &PodPort) -> Res<()> {
        put_pod_port(&self.writer, p).await
    }

    pub async fn delete_pod_port(&self, slug: &str, port: u16) -> Res<bool> {
        delete_pod_port(&self.writer, slug, port).await
    }
}

impl Change {
    /// The pod, read in this change to be written back by it (`Change::for_update`): a PATCH
    /// does not undo a status report that raced it.
    pub async fn pod_for_update(&mut self, slug: &str) -> Res<Option<Pod>> {
        let lock = self.for_update();
        sqlx::query(&format!(
            "SELECT {POD_COLS} FROM pods WHERE slug = $1{lock}"
        ))
        .bind(slug)
        .fetch_optional(self.conn())
        .await?
        .as_ref()
        .map(Pod::from_row)
        .transpose()
    }

    pub async fn create_pod(&mut self, p: &Pod) -> Res<()> {
        create_pod(self.conn(), p).await
    }

    pub async fn update_pod(&mut self, p: &Pod) -> Res<bool> {
        update_pod(self.conn(), p).await
    }

    pub async fn set_pod_limits(&mut self, slug: &str, limits: Option<&PodLimits>) -> Res<()> {
        set_pod_limits(self.conn(), slug, limits).await
    }

    pub async fn put_pod_port(&mut self, p: &PodPort) -> Res<()> {
        put_pod_port(self.conn(), p).await
    }

    pub async fn delete_pod_port(&mut self, slug: &str, port: u16) -> Res<bool> {
        delete_pod_port(self.conn(), slug, port).await
    }
}

async fn create_pod<'e>(e: impl Executor<'e, Database = Any>, p: &Pod) -> Res<()> {
    sqlx::query(
        "INSERT INTO pods (slug, owner_id, team_id, server_id, status, nginx_port, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&p.slug)
    .bind(&p.owner_id)
    .bind(&p.team_id)
    .bind(&p.server_id)
    .bind(p.status.as_str())
    .bind(i64::from(p.nginx_port))
    .bind(p.created_at)
    .bind(p.updated_at)
    .execute(e)
    .await?;
    Ok(())
}

async fn update_pod<'e>(e: impl Executor<'e, Database = Any>, p: &Pod) -> Res<bool> {
    let r = sqlx::query(
        "UPDATE pods SET owner_id = $2, team_id = $3, server_id = $4, status = $5, nginx_port = $6, updated_at = $7 \
         WHERE slug = $1",
    )
    .bind(&p.slug)
    .bind(&p.owner_id)
    .bind(&p.team_id)
    .bind(&p.server_id)
    .bind(p.status.as_str())
    .bind(i64::from(p.nginx_port))
    .bind(p.updated_at)
    .execute(e)
    .await?;
    Ok(r.rows_affected() > 0)
}

async fn set_pod_limits<'e>(
    e: impl Executor<'e, Database = Any>,
    slug: &str,
    limits: Option<&PodLimits>,
) -> Res<()> {
    let Some(limits) = limits.filter(|l| !l.is_empty()) else {
        sqlx::query("DELETE FROM pod_limits WHERE pod_slug = $1")
            .bind(slug)
            .execute(e)
            .await?;
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO pod_limits (pod_slug, rate_per_second, rate_burst, concurrent) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (pod_slug) DO UPDATE SET rate_per_second = excluded.rate_per_second, \
         rate_burst = excluded.rate_burst, concurrent = excluded.concurrent",
    )
    .bind(slug)
    .bind(limits.rate.map(|r| i64::from(r.per_second)))
    .bind(limits.rate.map(|r| i64::from(r.burst)))
    .bind(limits.concurrent.map(i64::from))
    .execute(e)
    .await?;
    Ok(())
}

async fn put_pod_port<'e>(e: impl Executor<'e, Database = Any>, p: &PodPort) -> Res<()> {
    sqlx::query(
        "INSERT INTO pod_ports (pod_slug, port, sharing, label) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (pod_slug, port) DO UPDATE SET sharing = excluded.sharing, label = excluded.label",
    )
    .bind(&p.pod_slug)
    .bind(i64::from(p.port))
    .bind(p.sharing.as_str())
    .bind(&p.label)
    .execute(e)
    .await?;
    Ok(())
}

async fn delete_pod_port<'e>(
    e: impl Executor<'e, Database = Any>,
    slug: &str,
    port: u16,
) -> Res<bool> {
    let r = sqlx::query("DELETE FROM pod_ports WHERE pod_slug = $1 AND port = $2")
        .bind(slug)
        .bind(i64::from(port))
        .execute(e)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// What decides whether someone may reach one port of one pod, read in one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessFacts {
    pub owner_id: String,
    pub sharing: Sharing,
    /// Whether the asking user is a member of the pod's team (false without a team or user).
    pub is_team_member: bool,
}

impl AccessFacts {
    /// The facts a query read as the columns `owner_id`, `sharing` and `members` (the asking
    /// user's memberships of the pod's team, which count only when they are `signed_in`), on
    /// either path a read takes (the pool's rows and `inline.rs`'s); an unknown sharing level is
    /// the error.
    pub(super) fn from_columns(
        owner_id: String,
        sharing: &str,
        members: i64,
        signed_in: bool,
    ) -> Result<AccessFacts, String> {
        Ok(AccessFacts {
            owner_id,
            sharing: sharing.parse()?,
            is_team_member: signed_in && members > 0,
        })
    }
}

impl Db {
    /// The facts for `user_id` (if signed in) reaching `port` of pod `slug`; `None` if no pod.
    /// Port 0 ([`SERVICE_PORT`]) names the service `slug` instead.
    pub async fn access_facts(
        &self,
        slug: &str,
        port: u16,
        user_id: Option<&str>,
    ) -> Res<Option<AccessFacts>> {
        access_facts(&self.pool, slug, port, user_id).await
    }
}

impl Change {
    /// [`Db::access_facts`], as the change leaves them.
    pub async fn access_facts(
        &mut self,
        slug: &str,
        port: u16,
        user_id: Option<&str>,
    ) -> Res<Option<AccessFacts>> {
        access_facts(self.conn(), slug, port, user_id).await
    }
}

async fn access_facts<'e>(
    e: impl Executor<'e, Database = Any>,
    slug: &str,
    port: u16,
    user_id: Option<&str>,
) -> Res<Option<AccessFacts>> {
    if port == SERVICE_PORT {
        return service_access_facts(e, slug, user_id).await;
    }
    let row = sqlx::query(
        "SELECT p.owner_id AS owner_id, COALESCE(pp.sharing, $4) AS sharing, \
                (SELECT COUNT(*) FROM team_members m WHERE m.team_id = p.team_id AND m.user_id = $3) AS members \
         FROM pods p LEFT JOIN pod_ports pp ON pp.pod_slug = p.slug AND pp.port = $2 \
         WHERE p.slug = $1",
    )
    .bind(slug)
    .bind(i64::from(port))
    .bind(user_id.unwrap_or(""))
    .bind(DEFAULT_SHARING.as_str())
    .fetch_optional(e)
    .await?;
    row.map(|row| row_facts(&row, user_id.is_some()))
        .transpose()
}

/// The facts a query joining `pods` (left) read for a signed-in user: its `owner_id` (null when
/// the pod does not exist), `sharing` and `members` columns.
fn joined_facts(row: &AnyRow) -> Res<Option<AccessFacts>> {
    let owner_id: Option<String> = row.try_get("owner_id")?;
    if owner_id.is_none() {
        return Ok(None);
    }
    row_facts(row, true).map(Some)
}

impl Db {
    /// A user (read fresh) and the facts for them reaching `port` of pod `slug`, in one query:
    /// `None` when the user does not exist; facts `None` when the pod does not. Port 0
    /// ([`SERVICE_PORT`]) names the service `slug` instead (two queries).
    pub async fn user_access_facts(
        &self,
        user_id: &str,
        slug: &str,
        port: u16,
    ) -> Res<Option<(User, Option<AccessFacts>)>> {
        let read = self.redeem_facts(user_id, slug, port, None).await?;
        Ok(read.map(|r| (r.user, r.facts)))
    }
}

impl Change {
    /// [`Db::user_access_facts`], as the change leaves them.
    pub async fn user_access_facts(
        &mut self,
        user_id: &str,
        slug: &str,
        port: u16,
    ) -> Res<Option<(User, Option<AccessFacts>)>> {
        let read = redeem_facts(self.conn(), user_id, slug, port, None).await?;
        Ok(read.map(|r| (r.user, r.facts)))
    }
}

impl Db {
    /// Claims the start hook's call for pod `slug` at `now`: true unless a claim for it, by any
    /// control plane on this database, is less than `interval_secs` old. Older claims are
    /// deleted first, so the table holds only the pods woken within the interval. On
    /// PostgreSQL a second claim racing the first waits on the key and then inserts nothing.
    pub async fn claim_wake(&self, slug: &str, now: i64, interval_secs: i64) -> Res<bool> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM pod_wakes WHERE called_at <= $1")
            .bind(now.saturating_sub(interval_secs))
            .execute(&mut *tx)
            .await?;
        let claimed = sqlx::query(
            "INSERT INTO pod_wakes (pod, called_at) VALUES ($1, $2) ON CONFLICT (pod) DO NOTHING",
        )
        .bind(slug)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(claimed)
    }
}

/// What redeeming a login ticket reads: the user, the facts for them reaching the port, and
/// whether the ticket's session was ended since.
#[derive(Debug, Clone)]
pub struct RedeemFacts {
    pub user: User,
    /// `None` when the pod does not exist.
    pub facts: Option<AccessFacts>,
    /// The ticket's session (`sid`) was ended: never true without a `sid`.
    pub session_cut: bool,
}

impl Db {
    /// A user (read fresh), the facts for them reaching `port` of pod `slug` and, for a ticket
    /// of session `sid`, [`Db::session_was_cut`], in one query: `None` when the user does not
    /// exist; facts `None` when the pod does not. Port 0 ([`SERVICE_PORT`]) names the
    /// service `slug` (separate queries).
    pub async fn redeem_facts(
        &self,
        user_id: &str,
        slug: &str,
        port: u16,
        sid: Option<&str>,
    ) -> Res<Option<RedeemFacts>> {
        if port != SERVICE_PORT {
            let read = self.read_inline(|c| redeem_facts_inline(c, user_id, slug, port, sid));
            if let Some(read) = read {
                return read;
            }
        }
        redeem_facts(&mut *self.pool.acquire().await?, user_id, slug, port, sid).await
    }
}

/// The user, the facts for them reaching a pod's port and the ticket's session's cuts
/// ([`Db::redeem_facts`]): `$1` the user, `$2` the pod, `$3` the port, `$4` the default
/// sharing, `$5` the session (an empty one matches no cut: the session cuts all name one,
/// `access_cuts.sid`).
const REDEEM_FACTS: &str =
    "SELECT u.id AS id, u.email AS email, u.name AS name, u.created_at AS created_at, \
            p.owner_id AS owner_id, COALESCE(pp.sharing, $4) AS sharing, \
            (SELECT COUNT(*) FROM team_members m WHERE m.team_id = p.team_id AND m.user_id = u.id) AS members, \
            (SELECT COUNT(*) FROM access_cuts c WHERE c.sid = $5) AS cuts \
     FROM users u \
     LEFT JOIN pods p ON p.slug = $2 \
     LEFT JOIN pod_ports pp ON pp.pod_slug = p.slug AND pp.port = $3 \
     WHERE u.id = $1";

/// The live session's user and the facts for them reaching a pod's port
/// ([`Db::session_access_facts`]): `$1` the session's hash, `$2` now, `$3` the pod, `$4` the
/// port, `$5` the default sharing.
const SESSION_FACTS: &str =
    "SELECT u.id AS id, u.email AS email, u.name AS name, u.created_at AS created_at, \
            p.owner_id AS owner_id, COALESCE(pp.sharing, $5) AS sharing, \
            (SELECT COUNT(*) FROM team_members m WHERE m.team_id = p.team_id AND m.user_id = u.id) AS members \
     FROM sessions s JOIN users u ON u.id = s.user_id \
     LEFT JOIN pods p ON p.slug = $3 \
     LEFT JOIN pod_ports pp ON pp.pod_slug = p.slug AND pp.port = $4 \
     WHERE s.id_hash = $1 AND s.expires_at > $2";

/// [`REDEEM_FACTS`] on SQLite, on the calling thread ([`Db::redeem_facts`]).
fn redeem_facts_inline(
    c: &rusqlite::Connection,
    user_id: &str,
    slug: &str,
    port: u16,
    sid: Option<&str>,
) -> rusqlite::Result<Option<RedeemFacts>> {
    let params = rusqlite::named_params! {
        "$1": user_id, "$2": slug, "$3": i64::from(port),
        "$4": DEFAULT_SHARING.as_str(), "$5": sid.unwrap_or(""),
    };
    c.prepare_cached(REDEEM_FACTS)?
        .query_row(params, |row| {
            let cuts: i64 = row.get("cuts")?;
            Ok(RedeemFacts {
                user: inline::user(row)?,
                facts: inline::joined_facts(row)?,
                session_cut: sid.is_some() && cuts > 0,
            })
        })
        .optional()
}

/// [`SESSION_FACTS`] on SQLite, on the calling thread ([`Db::session_access_facts`]).
fn session_facts_inline(
    c: &rusqlite::Connection,
    id_hash: &str,
    now: i64,
    slug: &str,
    port: u16,
) -> rusqlite::Result<Option<(User, Option<AccessFacts>)>> {
    let params = rusqlite::named_params! {
        "$1": id_hash, "$2": now, "$3": slug, "$4": i64::from(port),
        "$5": DEFAULT_SHARING.as_str(),
    };
    c.prepare_cached(SESSION_FACTS)?
        .query_row(params, |row| {
            Ok((inline::user(row)?, inline::joined_facts(row)?))
        })
        .optional()
}

async fn redeem_facts(
    c: &mut AnyConnection,
    user_id: &str,
    slug: &str,
    port: u16,
    sid: Option<&str>,
) -> Res<Option<RedeemFacts>> {
    if port == SERVICE_PORT {
        let Some(user) = get_user(&mut *c, user_id).await? else {
            return Ok(None);
        };
        let facts = service_access_facts(&mut *c, slug, Some(user_id)).await?;
        let session_cut = match sid {
            Some(sid) => session_was_cut(&mut *c, sid).await?,
            None => false,
        };
        return Ok(Some(RedeemFacts {
            user,
            facts,
            session_cut,
        }));
    }
    let row = sqlx::query(REDEEM_FACTS)
        .bind(user_id)
        .bind(slug)
        .bind(i64::from(port))
        .bind(DEFAULT_SHARING.as_str())
        .bind(sid.unwrap_or(""))
        .fetch_optional(c)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let user = User::from_row(&row)?;
    let facts = joined_facts(&row)?;
    let cuts: i64 = row.try_get("cuts")?;
    Ok(Some(RedeemFacts {
        user,
        facts,
        session_cut: sid.is_some() && cuts > 0,
    }))
}

impl Db {
    /// [`Db::session_user`] and the facts for that user reaching `port` of pod `slug`, in one
    /// query: `None` when the session is not live; facts `None` when the pod does not exist.
    /// Port 0 ([`SERVICE_PORT`]) names the service `slug` (two queries).
    pub async fn session_access_facts(
        &self,
        id_hash: &str,
        now: i64,
        slug: &str,
        port: u16,
    ) -> Res<Option<(User, Option<AccessFacts>)>> {
        if port == SERVICE_PORT {
            let Some(user) = self.session_user(id_hash, now).await? else {
                return Ok(None);
            };
            let facts = service_access_facts(&self.pool, slug, Some(&user.id)).await?;
            return Ok(Some((user, facts)));
        }
        let read = self.read_inline(|c| session_facts_inline(c, id_hash, now, slug, port));
        if let Some(read) = read {
            return read;
        }
        let row = sqlx::query(SESSION_FACTS)
            .bind(id_hash)
            .bind(now)
            .bind(slug)
            .bind(i64::from(port))
            .bind(DEFAULT_SHARING.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let user = User::from_row(&row)?;
        let facts = joined_facts(&row)?;
        Ok(Some((user, facts)))
    }
}
