//! Services (published upstream APIs) and the facts an authorization of one reads.

use sqlx::{Any, Executor, FromRow, Row};

use super::{enum_col, row_facts, AccessFacts, Change, Db, Res, Sharing};

/// A service as stored. Not `Serialize`, and its `Debug` leaves the credential out: the
/// stored credential is shown only through what `http/admin/services.rs` builds from it.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceRow {
    pub name: String,
    pub owner_id: String,
    pub team_id: Option<String>,
    pub sharing: Sharing,
    pub upstream_url: String,
    /// PEM of the CA bundle that verifies an https upstream; `None`: the system's roots.
    pub ca_pem: Option<String>,
    /// The static credential, or with `oauth` the fallback used while no token can be had.
    pub credential: Option<StoredCredential>,
    /// The OAuth configuration (`service_oauth`), sealed whole: its secrets are in it.
    pub oauth: Option<StoredOAuth>,
    /// The pattern of its resource paths (`/sessions/{id}`) when it is reached per resource
    /// (`podgate_protocol::resource`); `None`: one capability opens all of it.
    pub resource_path: Option<String>,
    /// Where its OAuth tokens stand in admins' refreshes and clears: written at creation only,
    /// then moved by [`Db::advance_oauth`] or [`Change::advance_oauth`] alone.
    pub oauth_epoch: OAuthEpoch,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Where a service's OAuth tokens stand in its admins' refreshes and clears, the same for every
/// control plane on the database (each holds its own tokens, in memory): a token obtained in a
/// generation before `generation` is renewed at once, one obtained before `cleared` is never
/// used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OAuthEpoch {
    /// Goes up by one at each refresh or clear.
    pub generation: i64,
    /// The generation of the last clear.
    pub cleared: i64,
}

impl OAuthEpoch {
    /// The epoch of a service created now: both at the time in milliseconds, normally above any
    /// generation an earlier service of the same name reached (one step per admin request), so
    /// that no token a control plane still holds for that one counts as this one's. Where the
    /// clock is behind the one that made the earlier service, `ServiceTokens` recognises what it
    /// holds from that one by its generation above this one's, and forgets it.
    pub fn at_creation() -> OAuthEpoch {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
        OAuthEpoch {
            generation: now_ms,
            cleared: now_ms,
        }
    }
}

impl std::fmt::Debug for ServiceRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRow")
            .field("name", &self.name)
            .field("owner_id", &self.owner_id)
            .field("upstream_url", &self.upstream_url)
            .finish_non_exhaustive()
    }
}

/// A service's credential as stored: the header name, the value sealed under the key-encryption
/// key `kek_id` names (plaintext when `kek_id` is `None`, dev mode only), and its fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCredential {
    pub header: String,
    pub kek_id: Option<String>,
    pub value: String,
    pub fingerprint: String,
}

/// A service's OAuth configuration as stored: its JSON sealed under the key-encryption key
/// `kek_id` names (plaintext when `kek_id` is `None`, dev mode only).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredOAuth {
    pub kek_id: Option<String>,
    pub config: String,
}

impl<'r> FromRow<'r, sqlx::any::AnyRow> for StoredCredential {
    fn from_row(row: &'r sqlx::any::AnyRow) -> Res<Self> {
        Ok(StoredCredential {
            header: row.try_get("credential_header")?,
            kek_id: row.try_get("credential_kek_id")?,
            value: row.try_get("credential_value")?,
            fingerprint: row.try_get("credential_fingerprint")?,
        })
    }
}

const SERVICE_COLS: &str = "name, owner_id, team_id, sharing, upstream_url, ca_pem, \
     credential_header, credential_kek_id, credential_value, credential_fingerprint, \
     oauth_kek_id, oauth_config, resource_path, oauth_generation, oauth_cleared, created_at, \
     updated_at";

fn service_from_row(row: &sqlx::any::AnyRow) -> Res<ServiceRow> {
    let header: Option<String> = row.try_get("credential_header")?;
    let oauth: Option<String> = row.try_get("oauth_config")?;
    Ok(ServiceRow {
        name: row.try_get("name")?,
        owner_id: row.try_get("owner_id")?,
        team_id: row.try_get("team_id")?,
        sharing: enum_col(row, "sharing")?,
        upstream_url: row.try_get("upstream_url")?,
        ca_pem: row.try_get("ca_pem")?,
        credential: match header {
            Some(_) => Some(StoredCredential::from_row(row)?),
            None => None,
        },
        oauth: match oauth {
            Some(config) => Some(StoredOAuth {
                kek_id: row.try_get("oauth_kek_id")?,
                config,
            }),
            None => None,
        },
        resource_path: row.try_get("resource_path")?,
        oauth_epoch: OAuthEpoch {
            generation: row.try_get("oauth_generation")?,
            cleared: row.try_get("oauth_cleared")?,
        },
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Db {
    /// Creates a service, or replaces every field of the one of that name.
    pub async fn put_service(&self, s: &ServiceRow) -> Res<()> {
        put_service(&self.writer, s).await
    }

    pub async fn get_service(&self, name: &str) -> Res<Option<ServiceRow>> {
        sqlx::query(&format!(
            "SELECT {SERVICE_COLS} FROM services WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(service_from_row)
        .transpose()
    }

    /// A refresh (`clear` false) or a clear of service `name`'s OAuth tokens: its generation up
    /// by one, and with `clear` its `cleared` too. `None`: no such service.
    pub async fn advance_oauth(&self, name: &str, clear: bool) -> Res<Option<OAuthEpoch>> {
        advance_oauth(&self.writer, name, clear).await
    }

    /// Every service, by name.
    pub async fn list_services(&self) -> Res<Vec<ServiceRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {SERVICE_COLS} FROM services ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(service_from_row).collect()
    }

    pub async fn delete_service(&self, name: &str) -> Res<bool> {
        let mut change = self.change().await?;
        let found = change.delete_service(name).await?;
        change.commit().await?;
        Ok(found)
    }

    /// Every service, by name, with the facts for `user_id` reaching it (no credential is
    /// read), for `/api/me`.
    pub async fn services_access_facts(&self, user_id: &str) -> Res<Vec<(String, AccessFacts)>> {
        let rows = sqlx::query(
            "SELECT s.name AS name, s.owner_id AS owner_id, s.sharing AS sharing, \
                    (SELECT COUNT(*) FROM team_members m WHERE m.team_id = s.team_id AND m.user_id = $1) AS members \
             FROM services s ORDER BY s.name",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let members: i64 = row.try_get("members")?;
                Ok((
                    row.try_get("name")?,
                    AccessFacts {
                        owner_id: row.try_get("owner_id")?,
                        sharing: enum_col(row, "sharing")?,
                        is_team_member: members > 0,
                    },
                ))
            })
            .collect()
    }

    /// The resource pattern of service `name`: `None` when there is no such service or it is
    /// not reached per resource.
    pub async fn service_resource_path(&self, name: &str) -> Res<Option<String>> {
        let path: Option<Option<String>> =
            sqlx::query_scalar("SELECT resource_path FROM services WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(path.flatten())
    }

    /// The owner of resource `resource_id` of service `service`, if it has one.
    pub async fn service_resource_owner(
        &self,
        service: &str,
        resource_id: &str,
    ) -> Res<Option<String>> {
        sqlx::query_scalar(
            "SELECT owner_id FROM service_resources WHERE service = $1 AND resource_id = $2",
        )
        .bind(service)
        .bind(resource_id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Resource `resource_id` of service `service` with its owner, if recorded.
    pub async fn get_service_resource(
        &self,
        service: &str,
        resource_id: &str,
    ) -> Res<Option<ServiceResourceRow>> {
        sqlx::query_as(
            "SELECT service, resource_id, owner_id, created_at, updated_at \
             FROM service_resources WHERE service = $1 AND resource_id = $2",
        )
        .bind(service)
        .bind(resource_id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Every resource of service `service` with its owner, by id.
    pub async fn list_service_resources(&self, service: &str) -> Res<Vec<ServiceResourceRow>> {
        sqlx::query_as(
            "SELECT service, resource_id, owner_id, created_at, updated_at \
             FROM service_resources WHERE service = $1 ORDER BY resource_id",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await
    }
}

/// One resource of a service reached per resource, and its owner.
#[derive(Debug, Clone, PartialEq, Eq, FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct ServiceResourceRow {
    pub service: String,
    pub resource_id: String,
    pub owner_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The writes to services that may take access away, inside a [`Change`] that also cuts
/// whoever lost access by them.
impl Change {
    /// [`Db::advance_oauth`] in this change: it happens only if the change commits.
    pub async fn advance_oauth(&mut self, name: &str, clear: bool) -> Res<Option<OAuthEpoch>> {
        advance_oauth(self.conn(), name, clear).await
    }

    /// Records `owner_id` as the owner of resource `resource_id` of service `service`; the
    /// earlier owner, if there was one.
    pub async fn put_service_resource(
        &mut self,
        service: &str,
        resource_id: &str,
        owner_id: &str,
        now: i64,
    ) -> Res<Option<String>> {
        let before: Option<String> = sqlx::query_scalar(
            "SELECT owner_id FROM service_resources WHERE service = $1 AND resource_id = $2",
        )
        .bind(service)
        .bind(resource_id)
        .fetch_optional(self.conn())
        .await?;
        sqlx::query(
            "INSERT INTO service_resources (service, resource_id, owner_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (service, resource_id) DO UPDATE SET owner_id = excluded.owner_id, \
                updated_at = excluded.updated_at",
        )
        .bind(service)
        .bind(resource_id)
        .bind(owner_id)
        .bind(now)
        .execute(self.conn())
        .await?;
        Ok(before)
    }

    /// Forgets resource `resource_id` of service `service`; its owner, if it had one.
    pub async fn delete_service_resource(
        &mut self,
        service: &str,
        resource_id: &str,
    ) -> Res<Option<String>> {
        sqlx::query_scalar(
            "DELETE FROM service_resources WHERE service = $1 AND resource_id = $2 \
             RETURNING owner_id",
        )
        .bind(service)
        .bind(resource_id)
        .fetch_optional(self.conn())
        .await
    }

    pub async fn put_service(&mut self, s: &ServiceRow) -> Res<()> {
        put_service(self.conn(), s).await
    }

    /// Creates service `s`; a service of that name already there (one created meanwhile
    /// included) is a unique violation, never replaced.
    pub async fn create_service(&mut self, s: &ServiceRow) -> Res<()> {
        write_service(self.conn(), s, false).await
    }

    /// The service, read in this change to be written back by it (`Change::for_update`): the
    /// write neither undoes one that raced it nor brings back a service deleted meanwhile.
    pub async fn service_for_update(&mut self, name: &str) -> Res<Option<ServiceRow>> {
        let lock = self.for_update();
        sqlx::query(&format!(
            "SELECT {SERVICE_COLS} FROM services WHERE name = $1{lock}"
        ))
        .bind(name)
        .fetch_optional(self.conn())
        .await?
        .as_ref()
        .map(service_from_row)
        .transpose()
    }

    pub async fn delete_service(&mut self, name: &str) -> Res<bool> {
        // Its resources go with it (also by the foreign key's cascade).
        sqlx::query("DELETE FROM service_resources WHERE service = $1")
            .bind(name)
            .execute(self.conn())
            .await?;
        let r = sqlx::query("DELETE FROM services WHERE name = $1")
            .bind(name)
            .execute(self.conn())
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

/// What [`write_service`] appends to replace every field of a service of the same name but its
/// OAuth epoch, which only [`Db::advance_oauth`] moves (a write must never take it back).
const REPLACE_SERVICE: &str = " ON CONFLICT (name) DO UPDATE SET owner_id = excluded.owner_id, \
    team_id = excluded.team_id, sharing = excluded.sharing, upstream_url = excluded.upstream_url, \
    ca_pem = excluded.ca_pem, credential_header = excluded.credential_header, \
    credential_kek_id = excluded.credential_kek_id, credential_value = excluded.credential_value, \
    credential_fingerprint = excluded.credential_fingerprint, \
    oauth_kek_id = excluded.oauth_kek_id, oauth_config = excluded.oauth_config, \
    resource_path = excluded.resource_path, updated_at = excluded.updated_at";

async fn put_service<'e>(e: impl Executor<'e, Database = Any>, s: &ServiceRow) -> Res<()> {
    write_service(e, s, true).await
}

/// Inserts service `s`; with `replace`, a service of that name has every field replaced.
async fn write_service<'e>(
    e: impl Executor<'e, Database = Any>,
    s: &ServiceRow,
    replace: bool,
) -> Res<()> {
    let c = s.credential.as_ref();
    let on_conflict = if replace { REPLACE_SERVICE } else { "" };
    sqlx::query(&format!(
        "INSERT INTO services (name, owner_id, team_id, sharing, upstream_url, ca_pem, \
            credential_header, credential_kek_id, credential_value, credential_fingerprint, \
            oauth_kek_id, oauth_config, resource_path, oauth_generation, oauth_cleared, \
            created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
            $17){on_conflict}"
    ))
    .bind(&s.name)
    .bind(&s.owner_id)
    .bind(&s.team_id)
    .bind(s.sharing.as_str())
    .bind(&s.upstream_url)
    .bind(&s.ca_pem)
    .bind(c.map(|c| c.header.clone()))
    .bind(c.and_then(|c| c.kek_id.clone()))
    .bind(c.map(|c| c.value.clone()))
    .bind(c.map(|c| c.fingerprint.clone()))
    .bind(s.oauth.as_ref().and_then(|o| o.kek_id.clone()))
    .bind(s.oauth.as_ref().map(|o| o.config.clone()))
    .bind(&s.resource_path)
    .bind(s.oauth_epoch.generation)
    .bind(s.oauth_epoch.cleared)
    .bind(s.created_at)
    .bind(s.updated_at)
    .execute(e)
    .await?;
    Ok(())
}

/// The facts for `user_id` (if signed in) reaching service `name`; `None` if no service.
pub(super) async fn service_access_facts<'e>(
    e: impl Executor<'e, Database = Any>,
    name: &str,
    user_id: Option<&str>,
) -> Res<Option<AccessFacts>> {
    let row = sqlx::query(
        "SELECT s.owner_id AS owner_id, s.sharing AS sharing, \
                (SELECT COUNT(*) FROM team_members m WHERE m.team_id = s.team_id AND m.user_id = $2) AS members \
         FROM services s WHERE s.name = $1",
    )
    .bind(name)
    .bind(user_id.unwrap_or(""))
    .fetch_optional(e)
    .await?;
    row.map(|row| row_facts(&row, user_id.is_some()))
        .transpose()
}

/// [`Db::advance_oauth`] on `conn`: the pool, or a change's transaction.
async fn advance_oauth<'e>(
    conn: impl Executor<'e, Database = Any>,
    name: &str,
    clear: bool,
) -> Res<Option<OAuthEpoch>> {
    let row = sqlx::query(
        "UPDATE services SET oauth_generation = oauth_generation + 1, \
            oauth_cleared = CASE WHEN $2 = 1 THEN oauth_generation + 1 ELSE oauth_cleared END \
         WHERE name = $1 RETURNING oauth_generation, oauth_cleared",
    )
    .bind(name)
    .bind(i64::from(clear))
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(OAuthEpoch {
            generation: row.try_get("oauth_generation")?,
            cleared: row.try_get("oauth_cleared")?,
        })
    })
    .transpose()
}
