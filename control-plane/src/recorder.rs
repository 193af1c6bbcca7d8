//! Group commit of the hot path's writes: login tickets consumed at the callback and the audit
//! rows of every token minted. Requests queue their write and wait for it to be committed, so a
//! capability is never handed out before its audit row (and its ticket's consumption) is stored;
//! under load one statement carries many requests' rows, instead of one commit each.
//!
//! A login ticket's audit row is queued without waiting ([`Recorder::record_later`]) and rides
//! with the next write somebody waits for (usually its own callback's), or is written alone
//! after [`LATER_WAIT`]: a ticket grants nothing until the callback redeems it, and that
//! redemption is answered only once every earlier write (the ticket's row included) is committed.
//! [`Recorder::flush`] waits for everything queued so far; the server calls it on shutdown.
//!
//! On SQLite one batch is written at a time (there is one writer connection). On PostgreSQL up
//! to [`POSTGRES_WRITERS`] batches are written at once, each its own statement on its own
//! connection, so the next batch does not wait for the previous one's round trip and fsync; the
//! unique key of `consumed_tickets` still lets only one of them consume a ticket (a concurrent
//! insert of the same jti waits for the first to commit, then inserts nothing: a replay).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::metrics::{DbOp, Metrics};
use crate::store::{AuditEntry, Backend, Db};

/// Most writes carried by one batch (12 parameters each, an audit row and its ticket, stays far
/// below both databases' limits).
const MAX_BATCH: usize = 256;

/// Longest a row nobody waits for is held for a batch somebody waits for.
const LATER_WAIT: Duration = Duration::from_millis(50);

/// Batches written at once on PostgreSQL.
const POSTGRES_WRITERS: usize = 4;

enum Op {
    /// Record a mint; `done` is `None` when nobody waits for it.
    Record {
        entry: AuditEntry,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// Answered once everything queued before it is committed (or failed).
    Flush { done: oneshot::Sender<()> },
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
            .send(Op::Record {
                entry,
                done: Some(done),
            })
            .await
            .map_err(|_| RecordError("recorder stopped".into()))?;
        wait.await
            .map_err(|_| RecordError("recorder stopped".into()))?
            .map_err(RecordError)
    }

    /// Queues a mint's audit row and returns without waiting for its commit (only for a full
    /// queue). A failed write is logged. Every later batch is answered after this row's batch.
    pub async fn record_later(&self, entry: AuditEntry) -> Result<(), RecordError> {
        self.tx
            .send(Op::Record { entry, done: None })
            .await
            .map_err(|_| RecordError("recorder stopped".into()))
    }

    /// Returns once everything queued before this call is committed (or its write failed).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Flush { done }).await.is_ok() {
            let _ = wait.await;
        }
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
    // Each batch answers its requests only after the batch before it has answered: a request's
    // answer then also means everything queued before it is committed.
    let mut previous: Option<oneshot::Receiver<()>> = None;
    loop {
        // A free writer first: meanwhile the queue fills up into the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (batch, open) = next_batch(&mut rx).await;
        if batch.is_empty() {
            return;
        }
        let (db, metrics) = (db.clone(), metrics.clone());
        let (answered, next) = oneshot::channel();
        let before = previous.replace(next);
        tokio::spawn(async move {
            let answers = metrics
                .db_timed(DbOp::Record, write_batch(&db, batch))
                .await;
            drop(slot);
            if let Some(before) = before {
                // An error only means that batch's task is gone, and with it its waiters.
                let _ = before.await;
            }
            answers.send();
            let _ = answered.send(());
        });
        if !open {
            return;
        }
    }
}

/// The next batch, and whether the queue is still open. Rows nobody waits for are held up to
/// [`LATER_WAIT`] for a write somebody waits for to ride with (a ticket's row with the
/// callback's), so under load they add no commit of their own.
async fn next_batch(rx: &mut mpsc::Receiver<Op>) -> (Vec<Op>, bool) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut deadline = None;
    loop {
        let before = batch.len();
        let received = match deadline {
            None => rx.recv_many(&mut batch, MAX_BATCH - before).await,
            Some(at) => {
                match tokio::time::timeout_at(at, rx.recv_many(&mut batch, MAX_BATCH - before))
                    .await
                {
                    Ok(n) => n,
                    Err(_) => return (batch, true),
                }
            }
        };
        if received == 0 {
            return (batch, false);
        }
        let waited = batch[before..]
            .iter()
            .any(|op| !matches!(op, Op::Record { done: None, .. }));
        if waited || batch.len() >= MAX_BATCH {
            return (batch, true);
        }
        deadline.get_or_insert_with(|| tokio::time::Instant::now() + LATER_WAIT);
    }
}

/// A written batch's answers, sent once the batch before it has answered.
struct Answers {
    batch: Vec<Op>,
    /// For each ticket of the batch, in order: consumed now; `Err` when the write failed.
    outcome: Result<Vec<bool>, String>,
}

impl Answers {
    fn send(self) {
        let mut verdicts = match self.outcome {
            Ok(consumed) => Ok(consumed.into_iter()),
            Err(why) => Err(why),
        };
        for op in self.batch {
            // A request that gave up waiting is no longer listening; nothing to do about it.
            match (op, &mut verdicts) {
                (Op::Record { done, .. }, Ok(_)) => {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                }
                (Op::Record { done, .. }, Err(why)) => {
                    if let Some(done) = done {
                        let _ = done.send(Err(why.clone()));
                    }
                }
                (Op::ConsumeThenRecord { done, .. }, Ok(consumed)) => {
                    let _ = done.send(Ok(consumed.next().unwrap_or(false)));
                }
                (Op::ConsumeThenRecord { done, .. }, Err(why)) => {
                    let _ = done.send(Err(why.clone()));
                }
                (Op::Flush { done }, _) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

async fn write_batch(db: &Db, batch: Vec<Op>) -> Answers {
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
            Op::Flush { .. } => {}
        }
    }
    // A batch of flushes alone writes nothing (the store returns at once).
    let outcome = db
        .consume_then_record(&tickets, &always, &if_consumed)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "recording mints failed");
            e.to_string()
        });
    Answers { batch, outcome }
}
