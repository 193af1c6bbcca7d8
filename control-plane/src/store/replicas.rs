//! The control planes serving a PostgreSQL database: each writes its row every few seconds
//! (with the database's clock, so the control planes' clocks do not matter).

use sqlx::Row;

use super::{Db, Res};

impl Db {
    /// Writes this control plane's row, deletes rows not seen for `forget_after` seconds, and
    /// counts the control planes seen within `live_within` seconds (this one included).
    pub async fn replica_heartbeat(&self, live_within: i64, forget_after: i64) -> Res<u32> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO replicas (id, seen_at) VALUES ($1, CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)) \
             ON CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at",
        )
        .bind(self.instance())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM replicas WHERE seen_at < CAST(EXTRACT(EPOCH FROM now()) AS BIGINT) - $1",
        )
        .bind(forget_after)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS live FROM replicas WHERE seen_at >= CAST(EXTRACT(EPOCH FROM now()) AS BIGINT) - $1",
        )
        .bind(live_within)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let live: i64 = row.try_get("live")?;
        Ok(u32::try_from(live).unwrap_or(u32::MAX).max(1))
    }

    /// Deletes this control plane's row (at shutdown: the others raise their shares at once).
    pub async fn replica_leave(&self) -> Res<()> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(self.instance())
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
