//! Group commit of the hot path's writes: login tickets consumed at the callback and the audit
//! rows of every token minted. Requests queue their write and wait for it to be committed, so a
//! token is never handed out before its audit row (and its ticket's consumption) is stored; under
//! load one statement carries many requests' rows, instead of one commit each.
//!
//! On SQLite one batch is written at a time (there is one writer connection). On PostgreSQL up
//! to [`POSTGRES_WRITERS`] batches are written at once, each its own statement on its own
//! connection, so the next batch does not wait for the previous one's round trip and fsync; the
//! unique key of `consumed_tickets` still lets only one of them consume a ticket (a concurrent
//! insert of the same jti waits for the first to commit, then inserts nothing: a replay).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::metrics::{DbOp, Metrics};
use crate::store::{AuditEntry, Backend, Db};

/// Most writes carried by one batch (11 parameters each stays far below both databases' limits).
const MAX_BATCH: usize = 256;

/// Batches written at once on PostgreSQL.
const POSTGRES_WRITERS: usize = 4;

enum Op {
    /// Record a mint.
    Record {
        entry: AuditEntry,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Consume a ticket; only if that succeeds, record the capability minted for it.
    ConsumeThenRecord {
        jti: String,
        expires_at: i64,
        entry: AuditEntry,
        done: oneshot::Sender<Result<bool, String>>,
    },
}

/// Handle to the recorder task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Op>,
}

#[derive(Debug, thiserror::Error)]
#[error("recording failed: {0}")]
pub struct RecordError(pub String);

impl Recorder {
    /// Starts the recorder task on the current runtime.
    /// The time of each commit is recorded in `metrics`.
    pub fn start(db: Db, metrics: Metrics) -> Recorder {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(db, metrics, rx));
        Recorder { tx }
    }

    /// Records a mint; returns once it is committed.
    pub async fn record(&self, entry: AuditEntry) -> Result<(), RecordError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Op::Record { entry, done })
            .await
            .map_err(|_| RecordError("recorder stopped".into()))?;
        wait.await
            .map_err(|_| RecordError("recorder stopped".into()))?
            .map_err(RecordError)
    }

    /// Consumes a ticket and records the capability minted for it; `false` for a replay (then
    /// nothing is recorded).
    pub async fn consume_then_record(
        &self,
        jti: String,
        expires_at: i64,
        entry: AuditEntry,
    ) -> Result<bool, RecordError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Op::ConsumeThenRecord {
                jti,
                expires_at,
                entry,
                done,
            })
            .await
            .map_err(|_| RecordError("recorder stopped".into()))?;
        wait.await
            .map_err(|_| RecordError("recorder stopped".into()))?
            .map_err(RecordError)
    }
}

async fn run(db: Db, metrics: Metrics, mut rx: mpsc::Receiver<Op>) {
    let writers = match db.backend() {
        Backend::Sqlite => 1,
        Backend::Postgres => POSTGRES_WRITERS,
    };
    let slots = Arc::new(Semaphore::new(writers));
    loop {
        // A free writer first: meanwhile the queue fills up into the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let (db, metrics) = (db.clone(), metrics.clone());
        tokio::spawn(async move {
            metrics
                .db_timed(DbOp::Record, write_batch(&db, batch))
                .await;
            drop(slot);
        });
    }
}

async fn write_batch(db: &Db, batch: Vec<Op>) {
    let mut tickets = Vec::new();
    let mut always = Vec::new();
    let mut if_consumed = Vec::new();
    for op in &batch {
        match op {
            Op::Record { entry, .. } => always.push(entry),
            Op::ConsumeThenRecord {
                jti,
                expires_at,
                entry,
                ..
            } => {
                tickets.push((jti.clone(), *expires_at));
                if_consumed.push(entry);
            }
        }
    }
    let consumed = match db
        .consume_then_record(&tickets, &always, &if_consumed)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "recording mints failed");
            fail_all(batch, &e.to_string());
            return;
        }
    };
    let mut verdicts = consumed.into_iter();
    for op in batch {
        // A request that gave up waiting is no longer listening; nothing to do about it.
        match op {
            Op::Record { done, .. } => {
                let _ = done.send(Ok(()));
            }
            Op::ConsumeThenRecord { done, .. } => {
                let _ = done.send(Ok(verdicts.next().unwrap_or(false)));
            }
        }
    }
}

fn fail_all(batch: Vec<Op>, why: &str) {
    for op in batch {
        match op {
            Op::Record { done, .. } => {
                let _ = done.send(Err(why.to_owned()));
            }
            Op::ConsumeThenRecord { done, .. } => {
                let _ = done.send(Err(why.to_owned()));
            }
        }
    }
}
