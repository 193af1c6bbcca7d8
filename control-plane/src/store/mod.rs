//! Storage: every SQL statement of the control plane. One code path for SQLite and PostgreSQL
//! through sqlx's `Any` driver (`$N` placeholders, `BIGINT` times, `TEXT` enumerations), with
//! migrations per database in `migrations/sqlite` and `migrations/postgres`.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};

pub use podgate_protocol::config::PodStatus;

mod idp;
pub use idp::ApiTokenRow;

/// Every pod status, as stored and as the admin API accepts them.
pub const POD_STATUSES: &[&str] = &["starting", "running", "stopping", "stopped", "error"];

/// Parses a pod status, saying which values exist when it is not one.
pub fn parse_pod_status(s: &str) -> Result<PodStatus, String> {
    PodStatus::parse(s).ok_or_else(|| format!("{s:?} is not one of {}", POD_STATUSES.join(", ")))
}

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
        if backend == Backend::Sqlite {
            tokio::spawn(checkpointer(pool.clone(), writer.clone()));
        }
        Ok(Db {
            pool,
            writer,
            backend,
        })
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

/// How often the SQLite WAL is checkpointed into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL size (frames of one page) above which the WAL is reset to empty: under constant load some
/// reader always holds a snapshot, so a PASSIVE checkpoint alone never lets the WAL restart.
const WAL_RESET_FRAMES: i64 = 4096;

/// Copies the WAL into the database file in the background (PASSIVE: never blocks writers or
/// readers), so requests never wait for a checkpoint's fsync; when the WAL has grown past
/// [`WAL_RESET_FRAMES`], truncates it through the writer connection, so writes queue behind it
/// briefly instead of sleeping in SQLite's busy handler. Ends when the pool closes.
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
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
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

// ---------------------------------------------------------------------------------------------
// Domain records

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub email: Option<String>,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Team {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub team_id: String,
    pub user_id: String,
    pub role: Role,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub address: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub slug: String,
    pub owner_id: String,
    pub team_id: Option<String>,
    pub server_id: Option<String>,
    pub status: PodStatus,
    pub nginx_port: u16,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPort {
    pub pod_slug: String,
    pub port: u16,
    pub sharing: Sharing,
    pub label: String,
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

fn enum_col<T: FromStr<Err = String>>(row: &AnyRow, col: &str) -> Result<T, sqlx::Error> {
    let s: String = row.try_get(col)?;
    T::from_str(&s).map_err(|e| sqlx::Error::ColumnDecode {
        index: col.to_owned(),
        source: e.into(),
    })
}

fn port_col(row: &AnyRow, col: &str) -> Result<u16, sqlx::Error> {
    let v: i64 = row.try_get(col)?;
    u16::try_from(v).map_err(|e| sqlx::Error::ColumnDecode {
        index: col.to_owned(),
        source: Box::new(e),
    })
}

fn user_from(row: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn team_from(row: &AnyRow) -> Result<Team, sqlx::Error> {
    Ok(Team {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn member_from(row: &AnyRow) -> Result<Member, sqlx::Error> {
    Ok(Member {
        team_id: row.try_get("team_id")?,
        user_id: row.try_get("user_id")?,
        role: enum_col(row, "role")?,
        created_at: row.try_get("created_at")?,
    })
}

fn server_from(row: &AnyRow) -> Result<Server, sqlx::Error> {
    Ok(Server {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        address: row.try_get("address")?,
        created_at: row.try_get("created_at")?,
    })
}

fn pod_from(row: &AnyRow) -> Result<Pod, sqlx::Error> {
    Ok(Pod {
        slug: row.try_get("slug")?,
        owner_id: row.try_get("owner_id")?,
        team_id: row.try_get("team_id")?,
        server_id: row.try_get("server_id")?,
        status: {
            let s: String = row.try_get("status")?;
            parse_pod_status(&s).map_err(|e| sqlx::Error::ColumnDecode {
                index: "status".to_owned(),
                source: e.into(),
            })?
        },
        nginx_port: port_col(row, "nginx_port")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn pod_port_from(row: &AnyRow) -> Result<PodPort, sqlx::Error> {
    Ok(PodPort {
        pod_slug: row.try_get("pod_slug")?,
        port: port_col(row, "port")?,
        sharing: enum_col(row, "sharing")?,
        label: row.try_get("label")?,
    })
}

fn collect<T>(
    rows: Vec<AnyRow>,
    f: fn(&AnyRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, sqlx::Error> {
    rows.iter().map(f).collect()
}

type Res<T> = Result<T, sqlx::Error>;

// ---------------------------------------------------------------------------------------------
// Users, teams, members, servers

impl Db {
    pub async fn create_user(&self, u: &User) -> Res<()> {
        sqlx::query("INSERT INTO users (id, email, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&u.id)
            .bind(&u.email)
            .bind(&u.name)
            .bind(u.created_at)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn get_user(&self, id: &str) -> Res<Option<User>> {
        sqlx::query("SELECT id, email, name, created_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    pub async fn get_user_by_email(&self, email: &str) -> Res<Option<User>> {
        sqlx::query("SELECT id, email, name, created_at FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    pub async fn list_users(&self) -> Res<Vec<User>> {
        let rows = sqlx::query("SELECT id, email, name, created_at FROM users ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        collect(rows, user_from)
    }

    /// Returns whether the user existed.
    pub async fn update_user(&self, id: &str, email: Option<&str>, name: &str) -> Res<bool> {
        let r = sqlx::query("UPDATE users SET email = $2, name = $3 WHERE id = $1")
            .bind(id)
            .bind(email)
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn delete_user(&self, id: &str) -> Res<bool> {
        let r = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn create_team(&self, t: &Team) -> Res<()> {
        sqlx::query("INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.created_at)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn get_team(&self, id: &str) -> Res<Option<Team>> {
        sqlx::query("SELECT id, name, created_at FROM teams WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(team_from)
            .transpose()
    }

    pub async fn list_teams(&self) -> Res<Vec<Team>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM teams ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        collect(rows, team_from)
    }

    pub async fn update_team(&self, id: &str, name: &str) -> Res<bool> {
        let r = sqlx::query("UPDATE teams SET name = $2 WHERE id = $1")
            .bind(id)
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn delete_team(&self, id: &str) -> Res<bool> {
        let r = sqlx::query("DELETE FROM teams WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Adds a member or changes an existing member's role.
    pub async fn put_member(&self, m: &Member) -> Res<()> {
        sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (team_id, user_id) DO UPDATE SET role = excluded.role",
        )
        .bind(&m.team_id)
        .bind(&m.user_id)
        .bind(m.role.as_str())
        .bind(m.created_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn get_member(&self, team_id: &str, user_id: &str) -> Res<Option<Member>> {
        sqlx::query(
            "SELECT team_id, user_id, role, created_at FROM team_members WHERE team_id = $1 AND user_id = $2",
        )
        .bind(team_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(member_from)
        .transpose()
    }

    pub async fn list_members(&self, team_id: &str) -> Res<Vec<Member>> {
        let rows = sqlx::query(
            "SELECT team_id, user_id, role, created_at FROM team_members WHERE team_id = $1 ORDER BY user_id",
        )
        .bind(team_id)
        .fetch_all(&self.pool)
        .await?;
        collect(rows, member_from)
    }

    pub async fn delete_member(&self, team_id: &str, user_id: &str) -> Res<bool> {
        let r = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn create_server(&self, s: &Server) -> Res<()> {
        sqlx::query("INSERT INTO servers (id, name, address, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&s.id)
            .bind(&s.name)
            .bind(&s.address)
            .bind(s.created_at)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn get_server(&self, id: &str) -> Res<Option<Server>> {
        sqlx::query("SELECT id, name, address, created_at FROM servers WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(server_from)
            .transpose()
    }

    pub async fn list_servers(&self) -> Res<Vec<Server>> {
        let rows = sqlx::query("SELECT id, name, address, created_at FROM servers ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        collect(rows, server_from)
    }

    pub async fn update_server(&self, id: &str, name: &str, address: &str) -> Res<bool> {
        let r = sqlx::query("UPDATE servers SET name = $2, address = $3 WHERE id = $1")
            .bind(id)
            .bind(name)
            .bind(address)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn delete_server(&self, id: &str) -> Res<bool> {
        let r = sqlx::query("DELETE FROM servers WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

// ---------------------------------------------------------------------------------------------
// Pods and their ports

const POD_COLS: &str =
    "slug, owner_id, team_id, server_id, status, nginx_port, created_at, updated_at";

impl Db {
    pub async fn create_pod(&self, p: &Pod) -> Res<()> {
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
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn get_pod(&self, slug: &str) -> Res<Option<Pod>> {
        sqlx::query(&format!("SELECT {POD_COLS} FROM pods WHERE slug = $1"))
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(pod_from)
            .transpose()
    }

    pub async fn list_pods(&self) -> Res<Vec<Pod>> {
        let rows = sqlx::query(&format!("SELECT {POD_COLS} FROM pods ORDER BY slug"))
            .fetch_all(&self.pool)
            .await?;
        collect(rows, pod_from)
    }

    /// Replaces every mutable field of a pod.
    pub async fn update_pod(&self, p: &Pod) -> Res<bool> {
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
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() > 0)
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
            .map(|row| Ok((pod_from(row)?, row.try_get("address")?)))
            .collect()
    }

    /// Creates or replaces a port's sharing level.
    pub async fn put_pod_port(&self, p: &PodPort) -> Res<()> {
        sqlx::query(
            "INSERT INTO pod_ports (pod_slug, port, sharing, label) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (pod_slug, port) DO UPDATE SET sharing = excluded.sharing, label = excluded.label",
        )
        .bind(&p.pod_slug)
        .bind(i64::from(p.port))
        .bind(p.sharing.as_str())
        .bind(&p.label)
        .execute(&self.writer)
        .await?;
        Ok(())
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
        .map(pod_port_from)
        .transpose()
    }

    pub async fn list_pod_ports(&self, slug: &str) -> Res<Vec<PodPort>> {
        let rows = sqlx::query(
            "SELECT pod_slug, port, sharing, label FROM pod_ports WHERE pod_slug = $1 ORDER BY port",
        )
        .bind(slug)
        .fetch_all(&self.pool)
        .await?;
        collect(rows, pod_port_from)
    }

    pub async fn delete_pod_port(&self, slug: &str, port: u16) -> Res<bool> {
        let r = sqlx::query("DELETE FROM pod_ports WHERE pod_slug = $1 AND port = $2")
            .bind(slug)
            .bind(i64::from(port))
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization facts

/// What decides whether someone may reach one port of one pod, read in one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessFacts {
    pub owner_id: String,
    pub sharing: Sharing,
    /// Whether the asking user is a member of the pod's team (false without a team or user).
    pub is_team_member: bool,
}

impl Db {
    /// The facts for `user_id` (if signed in) reaching `port` of pod `slug`; `None` if no pod.
    pub async fn access_facts(
        &self,
        slug: &str,
        port: u16,
        user_id: Option<&str>,
    ) -> Res<Option<AccessFacts>> {
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
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let members: i64 = row.try_get("members")?;
        Ok(Some(AccessFacts {
            owner_id: row.try_get("owner_id")?,
            sharing: enum_col(&row, "sharing")?,
            is_team_member: user_id.is_some() && members > 0,
        }))
    }
}

impl Db {
    /// A user (read fresh) and the facts for them reaching `port` of pod `slug`, in one query:
    /// `None` when the user does not exist; facts `None` when the pod does not.
    pub async fn user_access_facts(
        &self,
        user_id: &str,
        slug: &str,
        port: u16,
    ) -> Res<Option<(User, Option<AccessFacts>)>> {
        let row = sqlx::query(
            "SELECT u.id AS id, u.email AS email, u.name AS name, u.created_at AS created_at, \
                    p.owner_id AS owner_id, COALESCE(pp.sharing, $4) AS sharing, \
                    (SELECT COUNT(*) FROM team_members m WHERE m.team_id = p.team_id AND m.user_id = u.id) AS members \
             FROM users u \
             LEFT JOIN pods p ON p.slug = $2 \
             LEFT JOIN pod_ports pp ON pp.pod_slug = p.slug AND pp.port = $3 \
             WHERE u.id = $1",
        )
        .bind(user_id)
        .bind(slug)
        .bind(i64::from(port))
        .bind(DEFAULT_SHARING.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let user = user_from(&row)?;
        let owner_id: Option<String> = row.try_get("owner_id")?;
        let facts = match owner_id {
            None => None,
            Some(owner_id) => {
                let members: i64 = row.try_get("members")?;
                Some(AccessFacts {
                    owner_id,
                    sharing: enum_col(&row, "sharing")?,
                    is_team_member: members > 0,
                })
            }
        };
        Ok(Some((user, facts)))
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions, tickets, audit, keys

#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    pub kind: KeyKind,
    pub alg: String,
    pub private_jwk: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    pub verify_until: Option<i64>,
}

fn insert_audit(e: &AuditEntry) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(
        "INSERT INTO token_audit (jti, kind, user_id, pod_slug, port, audience, via, api_token_id, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&e.jti)
    .bind(e.kind.as_str())
    .bind(&e.user_id)
    .bind(&e.pod_slug)
    .bind(i64::from(e.port))
    .bind(&e.audience)
    .bind(&e.via)
    .bind(&e.api_token_id)
    .bind(e.issued_at)
    .bind(e.expires_at)
}

/// One row of the mint audit trail (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub jti: String,
    pub kind: KeyKind,
    pub user_id: String,
    pub pod_slug: String,
    pub port: u16,
    pub audience: String,
    /// Which endpoint minted it (`proxy-auth`, `callback`, `capabilities`).
    pub via: String,
    /// The API token it was minted with, if any: revoking that token revokes it.
    #[serde(default)]
    pub api_token_id: Option<String>,
    pub issued_at: i64,
    pub expires_at: i64,
}

impl Db {
    pub async fn create_session(
        &self,
        id_hash: &str,
        user_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Res<()> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id_hash)
        .bind(user_id)
        .bind(now)
        .bind(expires_at)
        .execute(&self.writer)
        .await?;
        Ok(())
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
        .map(user_from)
        .transpose()
    }

    pub async fn delete_session(&self, id_hash: &str) -> Res<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Marks a ticket used. `false` means it was used before: a replay.
    pub async fn consume_ticket(&self, jti: &str, expires_at: i64) -> Res<bool> {
        let r = sqlx::query(
            "INSERT INTO consumed_tickets (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Drops consumed tickets and sessions that expired before `before`.
    pub async fn prune(&self, before: i64) -> Res<u64> {
        let a = sqlx::query("DELETE FROM consumed_tickets WHERE expires_at < $1")
            .bind(before)
            .execute(&self.writer)
            .await?;
        let b = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(before)
            .execute(&self.writer)
            .await?;
        Ok(a.rows_affected() + b.rows_affected())
    }

    pub async fn record_mint(&self, e: &AuditEntry) -> Res<()> {
        insert_audit(e).execute(&self.writer).await?;
        Ok(())
    }

    /// Consumes many tickets in one statement; `true` for each one consumed now, `false` for a
    /// replay (used before, or earlier in the same batch).
    pub async fn consume_tickets(&self, tickets: &[(String, i64)]) -> Res<Vec<bool>> {
        consume_tickets_on(&self.writer, tickets).await
    }

    /// Records many mints in one statement.
    pub async fn record_mints(&self, entries: &[&AuditEntry]) -> Res<()> {
        record_mints_on(&self.writer, entries).await
    }

    /// Consumes `tickets` and records `always` plus, for each ticket consumed now, its entry in
    /// `if_consumed` (same order as `tickets`). On PostgreSQL one transaction (one commit, one
    /// fsync); on SQLite two autocommit statements (commits are cheap there, round trips are
    /// not). Either way nothing is handed out before this returns, and a failure between the two
    /// statements only burns tickets.
    pub async fn consume_then_record(
        &self,
        tickets: &[(String, i64)],
        always: &[&AuditEntry],
        if_consumed: &[&AuditEntry],
    ) -> Res<Vec<bool>> {
        fn pick<'a>(
            always: &[&'a AuditEntry],
            if_consumed: &[&'a AuditEntry],
            consumed: &[bool],
        ) -> Vec<&'a AuditEntry> {
            let mut out = always.to_vec();
            out.extend(
                if_consumed
                    .iter()
                    .zip(consumed)
                    .filter(|(_, c)| **c)
                    .map(|(e, _)| *e),
            );
            out
        }
        match self.backend {
            Backend::Postgres => {
                let mut tx = self.writer.begin().await?;
                let consumed = consume_tickets_on(&mut *tx, tickets).await?;
                record_mints_on(&mut *tx, &pick(always, if_consumed, &consumed)).await?;
                tx.commit().await?;
                Ok(consumed)
            }
            Backend::Sqlite => {
                let consumed = consume_tickets_on(&self.writer, tickets).await?;
                record_mints_on(&self.writer, &pick(always, if_consumed, &consumed)).await?;
                Ok(consumed)
            }
        }
    }
}

async fn consume_tickets_on<'c, E>(exec: E, tickets: &[(String, i64)]) -> Res<Vec<bool>>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let mut seen = std::collections::HashSet::new();
    let fresh: Vec<&(String, i64)> = tickets
        .iter()
        .filter(|(jti, _)| seen.insert(jti.as_str()))
        .collect();
    if fresh.is_empty() {
        return Ok(vec![false; tickets.len()]);
    }
    let mut sql = String::from("INSERT INTO consumed_tickets (jti, expires_at) VALUES ");
    for i in 0..fresh.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}, ${})", 2 * i + 1, 2 * i + 2));
    }
    sql.push_str(" ON CONFLICT (jti) DO NOTHING RETURNING jti");
    let mut q = sqlx::query(&sql);
    for (jti, exp) in &fresh {
        q = q.bind(jti.as_str()).bind(*exp);
    }
    let rows = q.fetch_all(exec).await?;
    let mut inserted = std::collections::HashSet::new();
    for row in &rows {
        inserted.insert(row.try_get::<String, _>("jti")?);
    }
    // Only the first occurrence of a jti in the batch may claim it.
    let mut claimed = std::collections::HashSet::new();
    Ok(tickets
        .iter()
        .map(|(jti, _)| inserted.contains(jti) && claimed.insert(jti.as_str()))
        .collect())
}

async fn record_mints_on<'c, E>(exec: E, entries: &[&AuditEntry]) -> Res<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    if entries.is_empty() {
        return Ok(());
    }
    let mut sql = String::from(
            "INSERT INTO token_audit (jti, kind, user_id, pod_slug, port, audience, via, api_token_id, issued_at, expires_at) VALUES ",
        );
    for i in 0..entries.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        let b = 10 * i;
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6,
            b + 7,
            b + 8,
            b + 9,
            b + 10
        ));
    }
    let mut q = sqlx::query(&sql);
    for e in entries {
        q = q
            .bind(e.jti.as_str())
            .bind(e.kind.as_str())
            .bind(e.user_id.as_str())
            .bind(e.pod_slug.as_str())
            .bind(i64::from(e.port))
            .bind(e.audience.as_str())
            .bind(e.via.as_str())
            .bind(e.api_token_id.as_deref())
            .bind(e.issued_at)
            .bind(e.expires_at);
    }
    q.execute(exec).await?;
    Ok(())
}

impl Db {
    /// The newest audit entries, optionally of one user, newest first.
    pub async fn list_audit(&self, user_id: Option<&str>, limit: i64) -> Res<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT jti, kind, user_id, pod_slug, port, audience, via, api_token_id, issued_at, expires_at FROM token_audit \
             WHERE ($1 = '' OR user_id = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(user_id.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    jti: row.try_get("jti")?,
                    kind: enum_col(row, "kind")?,
                    user_id: row.try_get("user_id")?,
                    pod_slug: row.try_get("pod_slug")?,
                    port: port_col(row, "port")?,
                    audience: row.try_get("audience")?,
                    via: row.try_get("via")?,
                    api_token_id: row.try_get("api_token_id")?,
                    issued_at: row.try_get("issued_at")?,
                    expires_at: row.try_get("expires_at")?,
                })
            })
            .collect()
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

    pub async fn insert_key(&self, k: &StoredKey) -> Res<()> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, kind, alg, private_jwk, created_at, retired_at, verify_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&k.kid)
        .bind(k.kind.as_str())
        .bind(&k.alg)
        .bind(&k.private_jwk)
        .bind(k.created_at)
        .bind(k.retired_at)
        .bind(k.verify_until)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Keys that still verify at `now`, oldest first.
    pub async fn live_keys(&self, now: i64) -> Res<Vec<StoredKey>> {
        let rows = sqlx::query(
            "SELECT kid, kind, alg, private_jwk, created_at, retired_at, verify_until FROM signing_keys \
             WHERE verify_until IS NULL OR verify_until > $1 ORDER BY created_at, kid",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredKey {
                    kid: row.try_get("kid")?,
                    kind: enum_col(row, "kind")?,
                    alg: row.try_get("alg")?,
                    private_jwk: row.try_get("private_jwk")?,
                    created_at: row.try_get("created_at")?,
                    retired_at: row.try_get("retired_at")?,
                    verify_until: row.try_get("verify_until")?,
                })
            })
            .collect()
    }

    /// Inserts new active keys and retires every older active key of the same kinds, in one
    /// transaction, so there is always exactly one signing key per kind.
    pub async fn rotate_keys(&self, new: &[StoredKey], now: i64, overlap: i64) -> Res<()> {
        let mut tx = self.writer.begin().await?;
        for k in new {
            sqlx::query(
                "UPDATE signing_keys SET retired_at = $2, verify_until = $3 WHERE kind = $1 AND retired_at IS NULL",
            )
            .bind(k.kind.as_str())
            .bind(now)
            .bind(now.saturating_add(overlap))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO signing_keys (kid, kind, alg, private_jwk, created_at, retired_at, verify_until) \
                 VALUES ($1, $2, $3, $4, $5, NULL, NULL)",
            )
            .bind(&k.kid)
            .bind(k.kind.as_str())
            .bind(&k.alg)
            .bind(&k.private_jwk)
            .bind(k.created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
}
