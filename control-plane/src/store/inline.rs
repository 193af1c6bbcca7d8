//! The reads every sign-in flow and renewal makes, on SQLite, run on the calling thread.
//!
//! sqlx runs each SQLite statement on its connection's own thread: the request's task hands the
//! statement over and waits to be woken with the rows, two context switches per statement. For
//! the one-query reads on the flow's path (the proxy-auth check, the callback's and a renewal's
//! read) those switches cost more CPU than the query, which reads a few pages from the cache
//! (BENCHMARKS.md, "Login storm"). Here they run on connections of their own, opened read-only
//! on the same file, on the thread that asks. A WAL reader never waits for the writer; when
//! SQLite is busy anyway (a reader meeting a WAL restart, or recovery after a crash), the read
//! says so at once instead of sleeping on the runtime's thread, and the caller reads through
//! the pool, which waits.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, ErrorCode, OpenFlags, Row};

use super::{AccessFacts, Res, User};

/// Idle connections kept. A read never awaits, so no more connections are in use at once than
/// the runtime has threads (one per CPU); the cap only bounds what a larger pool of threads
/// would keep open.
const MAX_IDLE: usize = 64;

/// Read-only connections to one SQLite file, taken by the thread that reads.
#[derive(Debug)]
pub(super) struct InlineReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl InlineReads {
    pub(super) fn new(path: &Path) -> InlineReads {
        InlineReads {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on an idle connection (opened if none): `None` when SQLite was busy, so the
    /// caller reads through the pool instead.
    pub(super) fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Option<Res<T>> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match idle {
            Some(conn) => conn,
            None => match self.open() {
                Ok(conn) => conn,
                Err(e) => return busy_or(e),
            },
        };
        match f(&conn) {
            Ok(out) => {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < MAX_IDLE {
                        idle.push(conn);
                    }
                }
                Some(Ok(out))
            }
            // A connection whose read failed is dropped, not reused.
            Err(e) => busy_or(e),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Busy means "read through the pool", at once.
        conn.busy_timeout(std::time::Duration::ZERO)?;
        Ok(conn)
    }
}

/// `None` for SQLite's busy and locked answers, the error otherwise.
fn busy_or<T>(e: rusqlite::Error) -> Option<Res<T>> {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => None,
        _ => Some(Err(sqlx::Error::AnyDriverError(Box::new(e)))),
    }
}

/// The user in a row's `id`, `email`, `name` and `created_at` columns.
pub(super) fn user(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get("id")?,
        email: row.get("email")?,
        name: row.get("name")?,
        created_at: row.get("created_at")?,
    })
}

/// [`super::row_facts`] for a row read here, `None` when its `owner_id` is null (a left join
/// that found no pod).
pub(super) fn joined_facts(row: &Row<'_>) -> rusqlite::Result<Option<AccessFacts>> {
    let Some(owner_id) = row.get::<_, Option<String>>("owner_id")? else {
        return Ok(None);
    };
    let sharing: String = row.get("sharing")?;
    AccessFacts::from_columns(owner_id, &sharing, row.get("members")?, true)
        .map(Some)
        .map_err(|e| {
            let column = row.as_ref().column_index("sharing").unwrap_or_default();
            rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e.into())
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn count(c: &Connection) -> rusqlite::Result<i64> {
        c.query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
    }

    #[test]
    fn a_busy_database_is_reported_at_once_and_a_failed_read_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
            .unwrap();
        let reads = InlineReads::new(&path);
        assert_eq!(reads.read(count).unwrap().unwrap(), 1);
        assert_eq!(
            reads.idle.lock().unwrap().len(),
            1,
            "the connection is kept"
        );

        // A rollback-journal writer holding its exclusive lock keeps every reader out: the
        // read answers at once that it could not, rather than waiting on the caller's thread.
        writer
            .execute_batch("BEGIN EXCLUSIVE; INSERT INTO t VALUES (2);")
            .unwrap();
        assert!(reads.read(count).is_none());
        writer.execute_batch("COMMIT").unwrap();
        assert_eq!(reads.read(count).unwrap().unwrap(), 2);

        // Any other failure is the caller's error, and its connection is not reused.
        let kept = reads.idle.lock().unwrap().len();
        let failed =
            reads.read(|c| c.query_row("SELECT x FROM missing", [], |row| row.get::<_, i64>(0)));
        assert!(failed.unwrap().unwrap_err().to_string().contains("missing"));
        assert_eq!(reads.idle.lock().unwrap().len(), kept - 1);

        // The connections are read-only: a write through one fails.
        let write = reads.read(|c| c.execute("INSERT INTO t VALUES (3)", []));
        assert!(write.unwrap().is_err());
        assert_eq!(reads.read(count).unwrap().unwrap(), 2);
    }
}
