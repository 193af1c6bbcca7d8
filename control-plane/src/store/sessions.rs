//! Sessions of the control plane, single-use login tickets, and the mint audit trail.

use serde::{Deserialize, Serialize};
use sqlx::{Any, Executor, FromRow, Row};

use super::{collect, Backend, Change, Db, KeyKind, Res, User};

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// The columns of an audit row, in the order `bind_audit` binds them.
const AUDIT_COLUMNS: &str =
    "jti, kind, user_id, pod_slug, port, audience, via, api_token_id, issued_at, expires_at, resource";
/// How many there are.
const AUDIT_WIDTH: usize = 11;

/// `($first, $first+1, ...)`: the placeholders of one audit row from parameter `first` on.
fn audit_placeholders(first: usize) -> String {
    let params: Vec<String> = (first..first + AUDIT_WIDTH)
        .map(|n| format!("${n}"))
        .collect();
    format!("({})", params.join(", "))
}

/// Binds an audit row's columns ([`AUDIT_COLUMNS`]).
fn bind_audit<'q>(q: AnyQuery<'q>, e: &'q AuditEntry) -> AnyQuery<'q> {
    q.bind(e.jti.as_str())
        .bind(e.kind.as_str())
        .bind(e.user_id.as_str())
        .bind(e.pod_slug.as_str())
        .bind(i64::from(e.port))
        .bind(e.audience.as_str())
        .bind(e.via.as_str())
        .bind(e.api_token_id.as_deref())
        .bind(e.issued_at)
        .bind(e.expires_at)
        .bind(e.resource.as_deref())
}

/// One row of the mint audit trail (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub jti: String,
    #[sqlx(try_from = "String")]
    pub kind: KeyKind,
    pub user_id: String,
    pub pod_slug: String,
    #[sqlx(try_from = "i64")]
    pub port: u16,
    pub audience: String,
    /// Which endpoint minted it (`proxy-auth`, `callback`, `capabilities`).
    pub via: String,
    /// The API token it was minted with, if any: revoking that token revokes it.
    #[serde(default)]
    pub api_token_id: Option<String>,
    pub issued_at: i64,
    pub expires_at: i64,
    /// On a service reached per resource, the resource it was minted for (`/sessions/abc`).
    #[serde(default)]
    pub resource: Option<String>,
}

impl Db {
    /// A session of `user_id`, signed in with the identity provider `provider` (`None`: the
    /// dev login).
    pub async fn create_session(
        &self,
        id_hash: &str,
        user_id: &str,
        provider: Option<&str>,
        now: i64,
        expires_at: i64,
    ) -> Res<()> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, provider, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash)
        .bind(user_id)
        .bind(provider)
        .bind(now)
        .bind(expires_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Whether a session is live, and if so the identity provider it signed in with.
    pub async fn live_session_provider(
        &self,
        id_hash: &str,
        now: i64,
    ) -> Res<Option<Option<String>>> {
        sqlx::query("SELECT provider FROM sessions WHERE id_hash = $1 AND expires_at > $2")
            .bind(id_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.try_get::<Option<String>, _>("provider"))
            .transpose()
    }

    /// Whose a live session started at `since` or later is and the identity provider it signed
    /// in with (`None`: the dev login).
    pub async fn recent_session_owner(
        &self,
        id_hash: &str,
        since: i64,
        now: i64,
    ) -> Res<Option<(String, Option<String>)>> {
        sqlx::query(
            "SELECT user_id, provider FROM sessions \
             WHERE id_hash = $1 AND created_at >= $2 AND expires_at > $3",
        )
        .bind(id_hash)
        .bind(since)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| Ok((row.try_get("user_id")?, row.try_get("provider")?)))
        .transpose()
    }

    /// The user of a live session, read fresh from `users`.
    pub async fn session_user(&self, id_hash: &str, now: i64) -> Res<Option<User>> {
        sqlx::query(
            "SELECT u.id AS id, u.email AS email, u.name AS name, u.created_at AS created_at \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(User::from_row)
        .transpose()
    }

    /// The `id_hash` of every live session of `user_id` (a user has a few).
    pub async fn live_session_hashes(&self, user_id: &str, now: i64) -> Res<Vec<String>> {
        sqlx::query("SELECT id_hash FROM sessions WHERE user_id = $1 AND expires_at > $2")
            .bind(user_id)
            .bind(now)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("id_hash"))
            .collect()
    }

    pub async fn delete_session(&self, id_hash: &str) -> Res<()> {
        delete_session(&self.writer, id_hash).await
    }

    /// Drops consumed tickets, sessions and sign-ins under way that expired before `before`.
    pub async fn prune(&self, before: i64) -> Res<u64> {
        let c = sqlx::query("DELETE FROM sign_in_states WHERE expires_at < $1")
            .bind(before)
            .execute(&self.writer)
            .await?;
        let a = sqlx::query("DELETE FROM consumed_tickets WHERE expires_at < $1")
            .bind(before)
            .execute(&self.writer)
            .await?;
        let b = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(before)
            .execute(&self.writer)
            .await?;
        Ok(a.rows_affected() + b.rows_affected() + c.rows_affected())
    }

    /// Consumes `tickets` and records `always` plus, for each ticket consumed now, its entry in
    /// `if_consumed` (same order as `tickets`). On PostgreSQL one statement (one round trip, one
    /// commit, one fsync); on SQLite one transaction sent as one command. Either way it all
    /// commits or nothing does, and nothing is handed out before this returns.
    pub async fn consume_then_record(
        &self,
        tickets: &[(String, i64)],
        always: &[&AuditEntry],
        if_consumed: &[&AuditEntry],
    ) -> Res<Vec<bool>> {
        match self.backend {
            Backend::Postgres if tickets.is_empty() => {
                record_mints_on(&self.writer, always).await?;
                Ok(Vec::new())
            }
            Backend::Postgres => {
                consume_then_record_pg(&self.writer, tickets, always, if_consumed).await
            }
            Backend::Sqlite => {
                consume_then_record_sqlite(&self.writer, tickets, always, if_consumed).await
            }
        }
    }
}

/// What a batch claims: for each ticket, whether it is the first occurrence of its jti in
/// `tickets` (only that one may claim it); the rows to record, `always` (no ticket) then each
/// first occurrence's entry of `if_consumed` with its ticket; and the first occurrences'
/// tickets, to insert.
struct Claimed<'a> {
    first: Vec<bool>,
    rows: Vec<(&'a AuditEntry, Option<&'a str>)>,
    fresh: Vec<(&'a str, i64)>,
}

fn claimable<'a>(
    tickets: &'a [(String, i64)],
    always: &[&'a AuditEntry],
    if_consumed: &[&'a AuditEntry],
) -> Claimed<'a> {
    let mut seen = std::collections::HashSet::new();
    let first: Vec<bool> = tickets
        .iter()
        .map(|(jti, _)| seen.insert(jti.as_str()))
        .collect();
    let mut rows: Vec<(&AuditEntry, Option<&str>)> = always.iter().map(|e| (*e, None)).collect();
    rows.extend(
        if_consumed
            .iter()
            .zip(tickets)
            .zip(&first)
            .filter(|(_, first)| **first)
            .map(|((e, (jti, _)), _)| (*e, Some(jti.as_str()))),
    );
    let fresh = tickets
        .iter()
        .zip(&first)
        .filter(|(_, f)| **f)
        .map(|((jti, exp), _)| (jti.as_str(), *exp))
        .collect();
    Claimed { first, rows, fresh }
}

/// [`Db::consume_then_record`] on SQLite, in one transaction sent as one command (one hand-off
/// to sqlx's connection thread, one commit): the audit rows of `always` and of the entries
/// whose ticket is not consumed yet go into `token_audit`, then the tickets into
/// `consumed_tickets`, which returns the ones it took. SQLite has no `INSERT` inside `WITH`, so
/// the audit insert looks at `consumed_tickets` before the tickets go in; the transaction holds
/// the write lock, so nothing changes between the two.
async fn consume_then_record_sqlite(
    writer: &sqlx::AnyPool,
    tickets: &[(String, i64)],
    always: &[&AuditEntry],
    if_consumed: &[&AuditEntry],
) -> Res<Vec<bool>> {
    let Claimed { first, rows, fresh } = claimable(tickets, always, if_consumed);
    if rows.is_empty() && fresh.is_empty() {
        return Ok(vec![false; tickets.len()]);
    }
    let mut n = 0;
    let mut param = || {
        n += 1;
        n
    };
    let mut sql = String::from("BEGIN IMMEDIATE; ");
    if !rows.is_empty() {
        // The `VALUES` rows are an audit row's columns and the ticket it waits for, last.
        let values: Vec<String> = (1..=AUDIT_WIDTH).map(|i| format!("e.column{i}")).collect();
        let ticket = format!("e.column{}", AUDIT_WIDTH + 1);
        sql.push_str(&format!(
            "INSERT INTO token_audit ({AUDIT_COLUMNS}) SELECT {} FROM (VALUES ",
            values.join(", ")
        ));
        for i in 0..rows.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            let params: Vec<String> = (0..=AUDIT_WIDTH).map(|_| format!("${}", param())).collect();
            sql.push_str(&format!("({})", params.join(", ")));
        }
        sql.push_str(&format!(
            ") AS e WHERE {ticket} IS NULL \
             OR NOT EXISTS (SELECT 1 FROM consumed_tickets c WHERE c.jti = {ticket}); "
        ));
    }
    if !fresh.is_empty() {
        sql.push_str("INSERT INTO consumed_tickets (jti, expires_at) VALUES ");
        for i in 0..fresh.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("(${}, ${})", param(), param()));
        }
        sql.push_str(" ON CONFLICT (jti) DO NOTHING RETURNING jti; ");
    }
    sql.push_str("COMMIT");
    let mut q = sqlx::query(&sql);
    for (e, ticket) in &rows {
        q = bind_audit(q, e).bind(*ticket);
    }
    for (jti, exp) in &fresh {
        q = q.bind(*jti).bind(*exp);
    }
    let mut conn = writer.acquire().await?;
    let inserted: std::collections::HashSet<String> = match q.fetch_all(&mut *conn).await {
        Ok(found) => found
            .iter()
            .map(|row| row.try_get::<String, _>("jti"))
            .collect::<Res<_>>()?,
        Err(e) => {
            // The transaction may be open on this connection; end it before it goes back to
            // the pool (nothing to roll back, and an error, when `BEGIN` itself failed).
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Err(e);
        }
    };
    Ok(tickets
        .iter()
        .zip(&first)
        .map(|((jti, _), first)| *first && inserted.contains(jti))
        .collect())
}

/// [`Db::consume_then_record`] on PostgreSQL, in one statement: the tickets are inserted into
/// `consumed_tickets` (a ticket already there is not: a replay), and the audit rows of `always`
/// and of the entries whose ticket that insert claimed go into `token_audit`, all in one
/// autocommit statement. Only the first occurrence of a jti in `tickets` may claim it.
async fn consume_then_record_pg(
    writer: &sqlx::AnyPool,
    tickets: &[(String, i64)],
    always: &[&AuditEntry],
    if_consumed: &[&AuditEntry],
) -> Res<Vec<bool>> {
    // Rows are (entry, the ticket it waits for: `None` for one recorded whatever happens).
    let Claimed {
        first,
        rows,
        mut fresh,
    } = claimable(tickets, always, if_consumed);
    // In jti order: batches written at once then take the tickets' unique-key locks in one
    // order, so two of them replaying each other's tickets wait on each other, never deadlock.
    fresh.sort_unstable();
    let mut sql =
        String::from("WITH consumed AS (INSERT INTO consumed_tickets (jti, expires_at) VALUES ");
    let mut n = 0;
    let mut param = || {
        n += 1;
        n
    };
    for i in 0..fresh.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}::text, ${}::bigint)", param(), param()));
    }
    sql.push_str(" ON CONFLICT (jti) DO NOTHING RETURNING jti)");
    if !rows.is_empty() {
        let values: Vec<String> = AUDIT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect();
        sql.push_str(&format!(
            ", recorded AS (INSERT INTO token_audit ({AUDIT_COLUMNS}) SELECT {} FROM (VALUES ",
            values.join(", ")
        ));
        for i in 0..rows.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            // The audit row's columns (a `VALUES` list needs their types here), then its ticket.
            sql.push_str(&format!(
                "(${}::text, ${}::text, ${}::text, ${}::text, ${}::bigint, ${}::text, ${}::text, ${}::text, ${}::bigint, ${}::bigint, ${}::text, ${}::text)",
                param(), param(), param(), param(), param(), param(), param(), param(), param(), param(), param(), param()
            ));
        }
        sql.push_str(&format!(
            ") AS e({AUDIT_COLUMNS}, ticket) \
             WHERE e.ticket IS NULL OR e.ticket IN (SELECT jti FROM consumed) RETURNING 1)"
        ));
    }
    sql.push_str(" SELECT jti FROM consumed");
    let mut q = sqlx::query(&sql);
    for (jti, exp) in &fresh {
        q = q.bind(*jti).bind(*exp);
    }
    for (e, ticket) in &rows {
        q = bind_audit(q, e).bind(*ticket);
    }
    let inserted: std::collections::HashSet<String> = q
        .fetch_all(writer)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>("jti"))
        .collect::<Res<_>>()?;
    Ok(tickets
        .iter()
        .zip(&first)
        .map(|((jti, _), first)| *first && inserted.contains(jti))
        .collect())
}

async fn record_mints_on<'c, E>(exec: E, entries: &[&AuditEntry]) -> Res<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    if entries.is_empty() {
        return Ok(());
    }
    let mut sql = format!("INSERT INTO token_audit ({AUDIT_COLUMNS}) VALUES ");
    for i in 0..entries.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&audit_placeholders(AUDIT_WIDTH * i + 1));
    }
    let mut q = sqlx::query(&sql);
    for e in entries {
        q = bind_audit(q, e);
    }
    q.execute(exec).await?;
    Ok(())
}

impl Db {
    /// The newest audit entries, optionally of one user, newest first.
    pub async fn list_audit(&self, user_id: Option<&str>, limit: i64) -> Res<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT jti, kind, user_id, pod_slug, port, audience, via, api_token_id, issued_at, expires_at, resource FROM token_audit \
             WHERE ($1 = '' OR user_id = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(user_id.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        collect(rows)
    }

    /// Ids of the unexpired capabilities minted with an API token revoked since
    /// `revoked_since`, the longest-lived first, at most `limit`. A capability minted while its
    /// token was being revoked is recorded after the revocation, and found by the next call.
    pub async fn revoked_capabilities(
        &self,
        now: i64,
        revoked_since: i64,
        limit: i64,
    ) -> Res<Vec<String>> {
        let rows = sqlx::query(
            "SELECT a.jti AS jti FROM api_tokens t JOIN token_audit a ON a.api_token_id = t.id \
             WHERE t.revoked_at IS NOT NULL AND t.revoked_at >= $1 \
             AND a.api_token_id IS NOT NULL AND a.expires_at > $2 AND a.kind = 'capability' \
             ORDER BY a.expires_at DESC, a.jti LIMIT $3",
        )
        .bind(revoked_since)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| row.try_get("jti")).collect()
    }
}

impl Change {
    /// Ends a session, inside a sign-out that also cuts its capabilities.
    pub async fn delete_session(&mut self, id_hash: &str) -> Res<()> {
        delete_session(self.conn(), id_hash).await
    }
}

async fn delete_session<'e>(e: impl Executor<'e, Database = Any>, id_hash: &str) -> Res<()> {
    sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(e)
        .await?;
    Ok(())
}
