//! The group commit (`recorder.rs`) on real SQLite and real PostgreSQL: rows queued without a
//! waiter (login tickets) are committed before any later answer, at a flush and when
//! `podgate serve` stops, and a batch is answered only after the batches before it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod xds_support;

use std::time::Duration;

use common::{TestDb, Which};
use podgate::metrics::Metrics;
use podgate::recorder::Recorder;
use podgate::store::{now_unix, AuditEntry, Db, KeyKind};

fn row(jti: &str, kind: KeyKind) -> AuditEntry {
    let now = now_unix();
    AuditEntry {
        jti: jti.into(),
        kind,
        user_id: "alice".into(),
        pod_slug: "web".into(),
        port: 8080,
        audience: "8080--web.pods.test".into(),
        via: "proxy-auth".into(),
        api_token_id: None,
        issued_at: now,
        expires_at: now + 60,
        resource: None,
    }
}

async fn jtis(db: &Db) -> Vec<String> {
    let mut jtis: Vec<String> = db
        .list_audit(Some("alice"), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.jti)
        .collect();
    jtis.sort();
    jtis
}

/// Long enough for a write that could go through to have gone through.
const SETTLE: Duration = Duration::from_millis(300);
/// Generous bound for what must happen promptly once nothing blocks it.
const PATIENCE: Duration = Duration::from_secs(10);

/// While another connection holds SQLite's write lock, a ticket's row is queued without waiting,
/// and neither a flush nor a capability's row (which waits) is answered; once the lock is
/// released both are, with every row committed.
#[tokio::test]
async fn sqlite_queued_rows_are_committed_before_later_answers_and_at_flush() {
    let t = TestDb::new(Which::Sqlite).await.unwrap();
    let recorder = Recorder::start(t.db.clone(), Metrics::new());
    let mut blocker = t.db.pool().acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    tokio::time::timeout(PATIENCE, recorder.record_later(row("t1", KeyKind::Ticket)))
        .await
        .expect("a queued row waited for its commit")
        .unwrap();
    let flushed = tokio::spawn({
        let recorder = recorder.clone();
        async move { recorder.flush().await }
    });
    let recorded = tokio::spawn({
        let recorder = recorder.clone();
        async move { recorder.record(row("c1", KeyKind::Capability)).await }
    });
    tokio::time::sleep(SETTLE).await;
    assert!(
        !flushed.is_finished(),
        "flushed while the write was blocked"
    );
    assert!(
        !recorded.is_finished(),
        "answered before its row was committed"
    );

    sqlx::query("COMMIT").execute(&mut *blocker).await.unwrap();
    drop(blocker);
    tokio::time::timeout(PATIENCE, flushed)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(PATIENCE, recorded)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(jtis(&t.db).await, ["c1", "t1"]);
    t.finish().await;
}

/// A row nobody waits for, with nothing else to ride with, is still written on its own.
#[tokio::test]
async fn sqlite_a_lone_queued_row_is_written() {
    let t = TestDb::new(Which::Sqlite).await.unwrap();
    let recorder = Recorder::start(t.db.clone(), Metrics::new());
    recorder
        .record_later(row("t1", KeyKind::Ticket))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while jtis(&t.db).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queued row was never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(jtis(&t.db).await, ["t1"]);
    t.finish().await;
}

/// On SQLite a batch is one transaction: when its last statement fails (here a trigger refuses
/// the ticket), none of its rows is stored, the ticket is not consumed, and the writer is not
/// left inside the failed transaction for the next batch.
#[tokio::test]
async fn sqlite_a_failed_batch_stores_nothing() {
    let t = TestDb::new(Which::Sqlite).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_boom BEFORE INSERT ON consumed_tickets WHEN NEW.jti = 'boom' \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    )
    .execute(t.db.pool())
    .await
    .unwrap();
    let (ticket, capability) = (row("t1", KeyKind::Ticket), row("c1", KeyKind::Capability));
    let exp = now_unix() + 60;
    let err =
        t.db.consume_then_record(&[("boom".into(), exp)], &[&ticket], &[&capability])
            .await
            .unwrap_err();
    assert!(err.to_string().contains("refused by the test"), "{err}");
    assert!(
        jtis(&t.db).await.is_empty(),
        "part of a failed batch was stored"
    );
    let consumed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM consumed_tickets")
        .fetch_one(t.db.pool())
        .await
        .unwrap();
    assert_eq!(consumed, 0);

    let consumed =
        t.db.consume_then_record(&[("fine".into(), exp)], &[&ticket], &[&capability])
            .await
            .unwrap();
    assert_eq!(consumed, [true]);
    assert_eq!(jtis(&t.db).await, ["c1", "t1"]);
    t.finish().await;
}

/// On PostgreSQL batches are written at once: a later batch that commits first is still
/// answered only after the earlier one, so an answer means everything queued before it is stored.
#[tokio::test]
async fn postgres_a_batch_is_answered_after_the_batches_before_it() {
    let Some(t) = TestDb::new(Which::Postgres).await else {
        return;
    };
    let recorder = Recorder::start(t.db.clone(), Metrics::new());
    // Another transaction inserts ticket `x` and keeps it uncommitted: consuming `x` waits on
    // the unique key until that transaction ends.
    let mut blocker = t.db.pool().acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *blocker).await.unwrap();
    sqlx::query("INSERT INTO consumed_tickets (jti, expires_at) VALUES ('x', 0)")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let first = tokio::spawn({
        let recorder = recorder.clone();
        async move {
            recorder
                .consume_then_record("x".into(), 0, row("cx", KeyKind::Capability))
                .await
        }
    });
    tokio::time::sleep(SETTLE).await;
    let second = tokio::spawn({
        let recorder = recorder.clone();
        async move { recorder.record(row("c2", KeyKind::Capability)).await }
    });
    // The second batch commits on another connection...
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !jtis(&t.db).await.contains(&"c2".to_owned()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second batch was never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...but is not answered while the first is still waiting.
    tokio::time::sleep(SETTLE).await;
    assert!(!first.is_finished());
    assert!(!second.is_finished(), "answered before an earlier batch");

    sqlx::query("ROLLBACK")
        .execute(&mut *blocker)
        .await
        .unwrap();
    drop(blocker);
    let consumed = tokio::time::timeout(PATIENCE, first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        consumed,
        "the ticket was free once the other insert rolled back"
    );
    tokio::time::timeout(PATIENCE, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(jtis(&t.db).await, ["c2", "cx"]);
    t.finish().await;
}

/// A ticket minted by `/api/proxy-auth` right before a graceful stop (SIGTERM) is in the audit
/// trail afterwards: the server writes what is still queued before it closes the database.
#[tokio::test]
async fn a_ticket_minted_right_before_a_stop_is_in_the_audit() {
    use xds_support::{free_port, no_redirects, ControlPlane, SERVER, USER};

    let mut cp = ControlPlane::start(free_port(), &[]).await;
    cp.create_user(USER).await;
    cp.create_server(SERVER, "127.0.0.1".parse().unwrap()).await;
    cp.create_pod("web", USER, SERVER, 8080, "running").await;
    let session = cp.session(USER).await;
    let resp = no_redirects()
        .get(format!(
            "http://{}/api/proxy-auth?pod=web&port=8080&next=%2F",
            cp.http
        ))
        .header(reqwest::header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302, "{}", cp.log());
    let (status, _) = cp.terminate();
    assert_eq!(status, 0, "{}", cp.log());

    let db = Db::connect(
        &format!("sqlite://{}", cp.dir().join("podgate.db").display()),
        1,
    )
    .await
    .unwrap();
    let rows = db.list_audit(Some(USER), 10).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].kind, KeyKind::Ticket);
    assert_eq!(rows[0].via, "proxy-auth");
    assert!(
        resp.headers()[reqwest::header::LOCATION]
            .to_str()
            .unwrap()
            .contains("/.podgate/callback?ticket="),
        "{resp:?}"
    );
    db.close().await;
}
