//! Users, teams and their members, and servers.

use serde::{Deserialize, Serialize};
use sqlx::{Any, Executor, FromRow};

use super::{collect, Change, Db, Res, Role};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    pub id: String,
    pub email: Option<String>,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Team {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Member {
    pub team_id: String,
    pub user_id: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub address: String,
    pub created_at: i64,
}

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
        get_user(&self.pool, id).await
    }

    /// What `user_id` owns that keeps them from being deleted (`ON DELETE RESTRICT`): the slugs
    /// of their pods and the names of their services, at most `limit` of each.
    pub async fn owned_by(&self, user_id: &str, limit: i64) -> Res<(Vec<String>, Vec<String>)> {
        let pods = "SELECT slug FROM pods WHERE owner_id = $1 ORDER BY slug LIMIT $2";
        let services = "SELECT name FROM services WHERE owner_id = $1 ORDER BY name LIMIT $2";
        Ok((
            self.names(pods, user_id, limit).await?,
            self.names(services, user_id, limit).await?,
        ))
    }

    /// The slugs of the pods on `server_id` (`ON DELETE RESTRICT`), at most `limit`.
    pub async fn pods_on_server(&self, server_id: &str, limit: i64) -> Res<Vec<String>> {
        let sql = "SELECT slug FROM pods WHERE server_id = $1 ORDER BY slug LIMIT $2";
        self.names(sql, server_id, limit).await
    }

    /// The one text column `sql` selects for `id` (`$1`), at most `limit` (`$2`) rows.
    async fn names(&self, sql: &str, id: &str, limit: i64) -> Res<Vec<String>> {
        sqlx::query_scalar(sql)
            .bind(id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
    }

    pub async fn get_user_by_email(&self, email: &str) -> Res<Option<User>> {
        sqlx::query("SELECT id, email, name, created_at FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(User::from_row)
            .transpose()
    }

    pub async fn list_users(&self) -> Res<Vec<User>> {
        let rows = sqlx::query("SELECT id, email, name, created_at FROM users ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        collect(rows)
    }

    pub async fn delete_user(&self, id: &str) -> Res<bool> {
        delete_user(&self.writer, id).await
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
            .map(Team::from_row)
            .transpose()
    }

    pub async fn list_teams(&self) -> Res<Vec<Team>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM teams ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        collect(rows)
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
        delete_team(&self.writer, id).await
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
        .map(Member::from_row)
        .transpose()
    }

    pub async fn list_members(&self, team_id: &str) -> Res<Vec<Member>> {
        list_members(&self.pool, team_id).await
    }

    pub async fn delete_member(&self, team_id: &str, user_id: &str) -> Res<bool> {
        delete_member(&self.writer, team_id, user_id).await
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
            .map(Server::from_row)
            .transpose()
    }

    pub async fn list_servers(&self) -> Res<Vec<Server>> {
        let rows = sqlx::query("SELECT id, name, address, created_at FROM servers ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        collect(rows)
    }

    pub async fn delete_server(&self, id: &str) -> Res<bool> {
        let r = sqlx::query("DELETE FROM servers WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

/// The writes to users, servers and teams that read what they write back in the same change,
/// and those that may take access away, inside a [`Change`] that also cuts whoever lost access by
/// them.
impl Change {
    /// The user, read in this change (on its connection: a read through the pool while a change
    /// holds a connection could wait for one that only the change's end frees).
    pub async fn get_user(&mut self, id: &str) -> Res<Option<User>> {
        get_user(self.conn(), id).await
    }

    /// The user, read in this change to be written back by it (`Change::for_update`): the
    /// write neither undoes one that raced it nor brings back a user deleted meanwhile.
    pub async fn user_for_update(&mut self, id: &str) -> Res<Option<User>> {
        let lock = self.for_update();
        sqlx::query(&format!(
            "SELECT id, email, name, created_at FROM users WHERE id = $1{lock}"
        ))
        .bind(id)
        .fetch_optional(self.conn())
        .await?
        .as_ref()
        .map(User::from_row)
        .transpose()
    }

    /// Writes `u`'s email and name; returns whether the user existed.
    pub async fn update_user(&mut self, u: &User) -> Res<bool> {
        let r = sqlx::query("UPDATE users SET email = $2, name = $3 WHERE id = $1")
            .bind(&u.id)
            .bind(&u.email)
            .bind(&u.name)
            .execute(self.conn())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The server, read in this change to be written back by it (as [`Change::user_for_update`]).
    pub async fn server_for_update(&mut self, id: &str) -> Res<Option<Server>> {
        let lock = self.for_update();
        sqlx::query(&format!(
            "SELECT id, name, address, created_at FROM servers WHERE id = $1{lock}"
        ))
        .bind(id)
        .fetch_optional(self.conn())
        .await?
        .as_ref()
        .map(Server::from_row)
        .transpose()
    }

    /// Writes `s`'s name and address; returns whether the server existed.
    pub async fn update_server(&mut self, s: &Server) -> Res<bool> {
        let r = sqlx::query("UPDATE servers SET name = $2, address = $3 WHERE id = $1")
            .bind(&s.id)
            .bind(&s.name)
            .bind(&s.address)
            .execute(self.conn())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn delete_user(&mut self, id: &str) -> Res<bool> {
        delete_user(self.conn(), id).await
    }

    pub async fn list_members(&mut self, team_id: &str) -> Res<Vec<Member>> {
        list_members(self.conn(), team_id).await
    }

    pub async fn delete_team(&mut self, id: &str) -> Res<bool> {
        delete_team(self.conn(), id).await
    }

    pub async fn delete_member(&mut self, team_id: &str, user_id: &str) -> Res<bool> {
        delete_member(self.conn(), team_id, user_id).await
    }
}

pub(super) async fn get_user<'e>(
    e: impl Executor<'e, Database = Any>,
    id: &str,
) -> Res<Option<User>> {
    sqlx::query("SELECT id, email, name, created_at FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(e)
        .await?
        .as_ref()
        .map(User::from_row)
        .transpose()
}

async fn delete_user<'e>(e: impl Executor<'e, Database = Any>, id: &str) -> Res<bool> {
    let r = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(e)
        .await?;
    Ok(r.rows_affected() > 0)
}

async fn delete_team<'e>(e: impl Executor<'e, Database = Any>, id: &str) -> Res<bool> {
    let r = sqlx::query("DELETE FROM teams WHERE id = $1")
        .bind(id)
        .execute(e)
        .await?;
    Ok(r.rows_affected() > 0)
}

async fn list_members<'e>(e: impl Executor<'e, Database = Any>, team_id: &str) -> Res<Vec<Member>> {
    let rows = sqlx::query(
        "SELECT team_id, user_id, role, created_at FROM team_members WHERE team_id = $1 ORDER BY user_id",
    )
    .bind(team_id)
    .fetch_all(e)
    .await?;
    collect(rows)
}

async fn delete_member<'e>(
    e: impl Executor<'e, Database = Any>,
    team_id: &str,
    user_id: &str,
) -> Res<bool> {
    let r = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
        .bind(team_id)
        .bind(user_id)
        .execute(e)
        .await?;
    Ok(r.rows_affected() > 0)
}
