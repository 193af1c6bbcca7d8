//! Control planes sharing a PostgreSQL database: each writes its row in `replicas` every
//! [`HEARTBEAT`], counts the rows seen within [`LIVE_WITHIN`], and enforces that share of every
//! rate limit (`crate::limits`). At shutdown it deletes its row, so the others take its share
//! back at their next heartbeat; a control plane that dies is no longer counted after
//! [`LIVE_WITHIN`]. Nothing runs on SQLite, where one process serves the database.

use std::future::Future;
use std::time::Duration;

use crate::store::Backend;
use crate::AppState;

/// How often a control plane writes its row and recounts.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A row seen this recently (seconds) is a live control plane: a few missed heartbeats pass.
const LIVE_WITHIN: i64 = 7;
/// A row not seen for this long (seconds) is deleted.
const FORGET_AFTER: i64 = 3600;

/// Keeps this control plane's row and its share of the rate limits current until `shutdown`
/// completes, then deletes the row. Returns at once on SQLite.
pub async fn run(state: AppState, shutdown: impl Future<Output = ()>) {
    if state.db().backend() != Backend::Postgres {
        return;
    }
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => beat(&state).await,
        }
    }
    if let Err(e) = state.db().replica_leave().await {
        tracing::warn!(error = %e, "could not remove this control plane from the replicas table");
    }
}

/// Writes this control plane's row and applies the count of live control planes; nothing on
/// SQLite (its queries are PostgreSQL's).
pub async fn beat(state: &AppState) {
    if state.db().backend() != Backend::Postgres {
        return;
    }
    match state
        .db()
        .replica_heartbeat(LIVE_WITHIN, FORGET_AFTER)
        .await
    {
        Ok(live) => {
            let before = state.limits().set_replicas(live);
            state.metrics().set_replicas(live);
            if before != live {
                tracing::info!(
                    replicas = live,
                    instance = state.db().instance(),
                    "control planes on this database changed: each enforces its share of every rate limit"
                );
            }
        }
        // Keep the last count: a database hiccup must not multiply the limits.
        Err(e) => tracing::warn!(error = %e, "replica heartbeat failed; keeping the last count"),
    }
}
