//! Storage: every SQL statement of the control plane. One code path for SQLite and PostgreSQL
//! through sqlx's `Any` driver (`$N` placeholders, `BIGINT` times, `TEXT` enumerations), with
//! migrations per database in `migrations/sqlite` and `migrations/postgres`.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::AnyConnection;
use sqlx::{AnyPool, Executor, Row};

pub use podgate_protocol::config::PodStatus;

mod api_tokens;
mod cuts;
mod idp;
mod inline;
mod keys;
mod pods;
mod replicas;
mod services;
mod sessions;
mod sign_in;
mod users;

pub use api_tokens::ApiTokenRow;
pub use cuts::{CutRow, HolderScope};
pub use keys::{KeyMaterial, StoredKey};
pub use pods::{AccessFacts, Pod, PodLimits, PodPort, PodRate, RedeemFacts};
pub use services::{OAuthEpoch, ServiceResourceRow, ServiceRow, StoredCredential, StoredOAuth};
pub use sessions::AuditEntry;
pub use sign_in::SignInState;
pub use users::{Member, Server, Team, User};

/// Every pod status, as stored and as the admin API accepts them.
pub const POD_STATUSES: &[&str] = &["starting", "running", "stopping", "stopped", "error"];

/// Parses a pod status, saying which values exist when it is not one.
pub fn parse_pod_status(s: &str) -> Result<PodStatus, String> {
    PodStatus::parse(s).ok_or_else(|| format!("{s:?} is not one of {}", POD_STATUSES.join(", ")))
}

/// The PostgreSQL channel on which a control plane announces a committed change to what Envoy
/// gets; every control plane on the database listens on it (`xds_sync`). The payload is the
/// sender's [`Db::instance`], so a control plane skips its own announcements.
pub const CONFIG_CHANNEL: &str = "podgate_config";

/// The PostgreSQL advisory lock held while a control plane makes sure signing keys exist, so
/// control planes starting together on an empty database generate one key per kind, not one
/// each.
const KEY_SETUP_LOCK: i64 = 0x706f_6467_6b65_7973;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database: a pool and which backend it talks to.
#[derive(Debug, Clone)]
pub struct Db {
    /// Reads (and, on PostgreSQL, writes).
    pool: AnyPool,
    /// Writes. On SQLite a single connection, so writers queue here instead of sleeping in
    /// SQLite's busy handler while another connection holds the write lock.
    writer: AnyPool,
    backend: Backend,
    /// On an SQLite file, connections for the reads of the sign-in flow and renewals, which run
    /// on the calling thread (`inline.rs`).
    inline: Option<std::sync::Arc<inline::InlineReads>>,
    /// This process's random id: the payload of its change announcements and its row in
    /// `replicas`.
    instance: std::sync::Arc<str>,
}

/// A write transaction: a change and what it entails (the cuts of whoever lost access by it)
/// are committed together or not at all, so a request that fails part way changes nothing and
/// can simply be repeated. Its reads see its own writes. On SQLite it holds the one writer
/// connection until it commits or is dropped (dropped, it rolls back).
pub struct Change {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
}

impl Change {
    fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// What ends a read that the change writes back from: on PostgreSQL it locks the rows
    /// read until the change commits, so a write that raced it waits instead of being
    /// overwritten; on SQLite the change already holds the one writer connection.
    fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    pub async fn commit(self) -> Res<()> {
        self.tx.commit().await
    }
}

/// Turns `sqlite://file.db` into a URL that creates the file if missing.
fn sqlite_url(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode=rwc")
}

impl Db {
    /// Connects (creating an SQLite file if missing, in WAL mode). Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite => sqlite_url(url),
            Backend::Postgres => url.to_owned(),
        };
        let options = || {
            AnyPoolOptions::new()
                .acquire_timeout(Duration::from_secs(5))
                // A connection is checked with a round trip only when it sat idle for a while
                // (the server may have dropped it meanwhile), not on every acquire, where the
                // check would be a second round trip for every statement.
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= RECHECK_IDLE_AFTER {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .after_connect(move |conn, _meta| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            // WAL lets readers run beside the one writer; NORMAL is durable in WAL
                            // except for the last transactions before a power loss.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute("PRAGMA busy_timeout = 5000").await?;
                            // Checkpoints (the only fsyncs under synchronous=NORMAL) run in the
                            // background checkpointer, never inside a request's commit.
                            conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                        }
                        Ok(())
                    })
                })
        };
        let pool = options()
            .max_connections(max_connections)
            .connect(&url)
            .await?;
        let writer = match backend {
            Backend::Sqlite => options().max_connections(1).connect(&url).await?,
            Backend::Postgres => pool.clone(),
        };
        let mut inline = None;
        if backend == Backend::Sqlite {
            tokio::spawn(checkpointer(pool.clone(), writer.clone()));
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)?;
            let path = options.get_filename();
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            if !in_memory && !path.as_os_str().is_empty() {
                inline = Some(std::sync::Arc::new(inline::InlineReads::new(path)));
            }
        }
        let mut id = [0u8; 8];
        getrandom::getrandom(&mut id)
            .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
        Ok(Db {
            pool,
            writer,
            backend,
            inline,
            instance: hex::encode(id).into(),
        })
    }

    /// Begins a [`Change`].
    pub async fn change(&self) -> Res<Change> {
        Ok(Change {
            tx: self.writer.begin().await?,
            backend: self.backend,
        })
    }

    /// Runs `read` on the calling thread when the database is an SQLite file
    /// ([`inline::InlineReads::read`]): `None` when it is not, or SQLite was busy, and the
    /// caller reads through the pool.
    fn read_inline<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Option<Res<T>> {
        self.inline.as_ref()?.read(read)
    }

    /// Applies the migrations of this backend.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.writer).await,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.writer).await,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// This process's random id among the control planes on the database.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Announces that what Envoy gets changed, to every control plane listening on this
    /// database (PostgreSQL `NOTIFY`, delivered once the statement commits); nothing on SQLite,
    /// where one process serves the database.
    pub async fn announce_config_change(&self) -> Res<()> {
        if self.backend == Backend::Postgres {
            sqlx::query(&self.announcement())
                .execute(&self.writer)
                .await?;
        }
        Ok(())
    }

    /// [`Db::announce_config_change`] inside a transaction: delivered only if it commits.
    pub(crate) async fn announce_config_change_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Res<()> {
        if self.backend == Backend::Postgres {
            sqlx::query(&self.announcement()).execute(&mut **tx).await?;
        }
        Ok(())
    }

    fn announcement(&self) -> String {
        // The payload is hex (see `connect`): nothing to quote.
        format!("NOTIFY {CONFIG_CHANNEL}, '{}'", self.instance)
    }

    /// Runs `f` while holding the key-setup lock on PostgreSQL (control planes starting together
    /// take turns); on SQLite runs it directly. The lock lives on a connection of its own that
    /// is closed afterwards, which releases the lock even if `f` fails.
    pub async fn with_key_setup_lock<T, E>(
        &self,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E>
    where
        E: From<sqlx::Error>,
    {
        if self.backend != Backend::Postgres {
            return f.await;
        }
        let mut conn = self.writer.acquire().await?.detach();
        sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_lock($1)) AS l")
            .bind(KEY_SETUP_LOCK)
            .fetch_one(&mut conn)
            .await?;
        let out = f.await;
        let _ = sqlx::Connection::close(conn).await;
        out
    }

    /// A round trip to the database, for `/readyz`.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.writer)
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// How long a pooled connection may sit idle before it is checked with a round trip when it is
/// next taken.
const RECHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// How often the SQLite WAL is checkpointed into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL size (frames of one page, 128 MiB at SQLite's 4 KiB pages) above which the WAL is
/// restarted: under constant load some reader always holds a snapshot, so a PASSIVE checkpoint
/// alone never lets the WAL restart. Each restart holds the writer for two fsyncs, so under a
/// login storm the size sets how often writes wait for one; a smaller size showed in the flows'
/// tail latency (BENCHMARKS.md, "Login storm").
const WAL_RESET_FRAMES: i64 = 32_768;

/// Copies the WAL into the database file in the background (PASSIVE: never blocks writers or
/// readers), so requests never wait for a checkpoint's fsync; when the WAL has grown past
/// [`WAL_RESET_FRAMES`], restarts it through the writer connection, so writes queue behind it
/// briefly instead of sleeping in SQLite's busy handler. RESTART, not TRUNCATE: the next writes
/// reuse the file from its start instead of growing it again block by block (under a login storm
/// the truncating reset showed in the flows' tail latency). The WAL file therefore keeps the
/// largest size it reached (a little over 128 MiB after a storm). Ends when the pool closes.
async fn checkpointer(pool: AnyPool, writer: AnyPool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() || writer.is_closed() {
            return;
        }
        let frames = match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await
        {
            Ok(row) => row.try_get::<i64, _>(1).unwrap_or(0),
            Err(e) => {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                continue;
            }
        };
        if frames > WAL_RESET_FRAMES {
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                .fetch_one(&writer)
                .await
            {
                if writer.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "WAL reset failed; will retry");
            }
        }
    }
}

/// Whether an error is a foreign-key violation. SQLite reports a `RESTRICT` hit during a
/// cascading delete as a trigger constraint, so its message is checked too.
pub fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation
                || db.message().contains("FOREIGN KEY constraint failed")
        }
        _ => false,
    }
}

/// Current Unix time in seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Defines a `TEXT` enumeration stored as its snake_case name.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [&'static str] = &[$($s),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$variant),)+
                    other => Err(format!(
                        "{other:?} is not one of {}",
                        $name::ALL.join(", ")
                    )),
                }
            }
        }
    };
}

text_enum!(
    /// A member's role in a team. Every role may reach the team's pods.
    Role { Owner => "owner", Admin => "admin", Member => "member" }
);
text_enum!(
    /// Who may reach a pod port, beyond its owner.
    Sharing { Owner => "owner", Team => "team", SignedIn => "signed_in", Public => "public" }
);
text_enum!(
    /// Which kind of token a key signs (matches `TokenKind`).
    KeyKind { Ticket => "ticket", Capability => "capability" }
);

/// Sharing level of a port that has no row in `pod_ports`.
pub const DEFAULT_SHARING: Sharing = Sharing::Team;

pub(super) fn enum_col<T: FromStr<Err = String>>(
    row: &AnyRow,
    col: &str,
) -> Result<T, sqlx::Error> {
    let s: String = row.try_get(col)?;
    T::from_str(&s).map_err(|e| sqlx::Error::ColumnDecode {
        index: col.to_owned(),
        source: e.into(),
    })
}

/// The facts a query read from a row of `pods` or `services`: its `owner_id`, `sharing` and
/// `members` (the asking user's memberships of its team, which count only when they are
/// `signed_in`) columns.
pub(super) fn row_facts(row: &AnyRow, signed_in: bool) -> Res<AccessFacts> {
    let sharing: String = row.try_get("sharing")?;
    AccessFacts::from_columns(
        row.try_get("owner_id")?,
        &sharing,
        row.try_get("members")?,
        signed_in,
    )
    .map_err(|e| sqlx::Error::ColumnDecode {
        index: "sharing".to_owned(),
        source: e.into(),
    })
}

pub(super) fn collect<T>(rows: Vec<AnyRow>) -> Result<Vec<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, AnyRow>,
{
    rows.iter().map(T::from_row).collect()
}

pub(super) type Res<T> = Result<T, sqlx::Error>;
