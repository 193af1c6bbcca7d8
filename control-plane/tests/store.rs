//! Storage on real SQLite and real PostgreSQL: every table, constraint and query.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestDb, Which};
use podgate::config::SigningAlg;
use podgate::key_encryption::KeyEncryption;
use podgate::keys;
use podgate::store::{
    now_unix, AuditEntry, CutRow, Db, KeyKind, Member, Pod, PodPort, PodStatus, Role, Server,
    Sharing, Team, User,
};

macro_rules! on_both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                let t = TestDb::new(Which::Sqlite).await.unwrap();
                $body(&t.db).await;
                t.finish().await;
            }
            #[tokio::test]
            async fn postgres() {
                let Some(t) = TestDb::new(Which::Postgres).await else {
                    return;
                };
                $body(&t.db).await;
                t.finish().await;
            }
        }
    };
}

fn user(id: &str, email: Option<&str>) -> User {
    User {
        id: id.into(),
        email: email.map(Into::into),
        name: id.into(),
        created_at: 1,
    }
}

fn pod(slug: &str, owner: &str, team: Option<&str>) -> Pod {
    Pod {
        slug: slug.into(),
        owner_id: owner.into(),
        team_id: team.map(Into::into),
        server_id: None,
        status: PodStatus::Running,
        nginx_port: 30001,
        created_at: 1,
        updated_at: 1,
    }
}

async fn crud(db: &Db) {
    db.create_user(&user("a", Some("a@x.dev"))).await.unwrap();
    db.create_user(&user("b", None)).await.unwrap();
    assert_eq!(
        db.get_user("a").await.unwrap().unwrap().email.as_deref(),
        Some("a@x.dev")
    );
    assert_eq!(
        db.get_user_by_email("a@x.dev").await.unwrap().unwrap().id,
        "a"
    );
    assert!(db.get_user("zz").await.unwrap().is_none());
    // Unique id and email.
    let e = db.create_user(&user("a", None)).await.unwrap_err();
    assert!(
        matches!(e, sqlx::Error::Database(ref d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation),
        "{e:?}"
    );
    let e = db
        .create_user(&user("c", Some("a@x.dev")))
        .await
        .unwrap_err();
    assert!(
        matches!(e, sqlx::Error::Database(ref d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation),
        "{e:?}"
    );
    let mut change = db.change().await.unwrap();
    let mut b = change.user_for_update("b").await.unwrap().unwrap();
    (b.email, b.name) = (Some("b@x.dev".into()), "Bee".into());
    assert!(change.update_user(&b).await.unwrap());
    assert!(change.user_for_update("zz").await.unwrap().is_none());
    assert!(!change.update_user(&user("zz", None)).await.unwrap());
    change.commit().await.unwrap();
    assert_eq!(db.get_user("b").await.unwrap().unwrap().name, "Bee");
    assert_eq!(db.list_users().await.unwrap().len(), 2);

    db.create_team(&Team {
        id: "t".into(),
        name: "T".into(),
        created_at: 1,
    })
    .await
    .unwrap();
    assert!(db.update_team("t", "T2").await.unwrap());
    assert_eq!(db.get_team("t").await.unwrap().unwrap().name, "T2");
    let m = Member {
        team_id: "t".into(),
        user_id: "b".into(),
        role: Role::Member,
        created_at: 1,
    };
    db.put_member(&m).await.unwrap();
    db.put_member(&Member {
        role: Role::Admin,
        ..m.clone()
    })
    .await
    .unwrap();
    assert_eq!(
        db.get_member("t", "b").await.unwrap().unwrap().role,
        Role::Admin
    );
    assert_eq!(db.list_members("t").await.unwrap().len(), 1);
    // A member of a missing team is refused by the foreign key.
    let e = db
        .put_member(&Member {
            team_id: "nope".into(),
            ..m.clone()
        })
        .await
        .unwrap_err();
    assert!(podgate::store::is_foreign_key_violation(&e), "{e:?}");

    db.create_server(&Server {
        id: "s".into(),
        name: "S".into(),
        address: "10.0.0.1".into(),
        created_at: 1,
    })
    .await
    .unwrap();
    let mut change = db.change().await.unwrap();
    let mut server = change.server_for_update("s").await.unwrap().unwrap();
    server.address = "10.0.0.2".into();
    assert!(change.update_server(&server).await.unwrap());
    change.commit().await.unwrap();
    assert_eq!(
        db.get_server("s").await.unwrap().unwrap().address,
        "10.0.0.2"
    );
    assert_eq!(db.list_servers().await.unwrap().len(), 1);

    let mut p = pod("p1", "a", Some("t"));
    p.server_id = Some("s".into());
    db.create_pod(&p).await.unwrap();
    assert_eq!(db.get_pod("p1").await.unwrap().unwrap(), p);
    p.nginx_port = 65535;
    p.status = PodStatus::Stopping;
    p.team_id = None;
    assert!(db.update_pod(&p).await.unwrap());
    assert_eq!(db.get_pod("p1").await.unwrap().unwrap(), p);
    assert!(db.set_pod_status("p1", PodStatus::Error, 5).await.unwrap());
    assert_eq!(
        db.get_pod("p1").await.unwrap().unwrap().status,
        PodStatus::Error
    );
    assert_eq!(db.list_pods().await.unwrap().len(), 1);
    // Owner and server cannot be deleted while a pod refers to them.
    let e = db.delete_user("a").await.unwrap_err();
    assert!(podgate::store::is_foreign_key_violation(&e), "{e:?}");
    assert!(db.delete_server("s").await.is_err());
    // A pod with a bad status or port is refused by CHECK constraints.
    let bad = sqlx::query("INSERT INTO pods (slug, owner_id, status, nginx_port, created_at, updated_at) VALUES ('x', 'a', 'dancing', 1, 1, 1)")
        .execute(db.pool())
        .await;
    assert!(bad.is_err());
    let bad = sqlx::query("INSERT INTO pods (slug, owner_id, status, nginx_port, created_at, updated_at) VALUES ('x', 'a', 'running', 0, 1, 1)")
        .execute(db.pool())
        .await;
    assert!(bad.is_err());

    let pp = PodPort {
        pod_slug: "p1".into(),
        port: 8726,
        sharing: Sharing::SignedIn,
        label: "code".into(),
    };
    db.put_pod_port(&pp).await.unwrap();
    db.put_pod_port(&PodPort {
        sharing: Sharing::Public,
        ..pp.clone()
    })
    .await
    .unwrap();
    assert_eq!(
        db.get_pod_port("p1", 8726).await.unwrap().unwrap().sharing,
        Sharing::Public
    );
    assert_eq!(db.list_pod_ports("p1").await.unwrap().len(), 1);
    assert!(db.delete_pod_port("p1", 8726).await.unwrap());
    assert!(!db.delete_pod_port("p1", 8726).await.unwrap());
    db.put_pod_port(&pp).await.unwrap();

    // Deleting a pod removes its ports; deleting a team removes memberships.
    assert!(db.delete_pod("p1").await.unwrap());
    assert!(db.list_pod_ports("p1").await.unwrap().is_empty());
    assert!(db.delete_team("t").await.unwrap());
    assert!(db.get_member("t", "b").await.unwrap().is_none());
    assert!(db.delete_member("t", "b").await.is_ok());
    assert!(db.delete_user("a").await.unwrap());
    assert!(db.delete_server("s").await.unwrap());
    assert!(!db.delete_server("s").await.unwrap());
}
on_both!(crud_and_constraints, crud);

/// Users `owner`, `mate` and `other` (each with an email `ID@x.dev`), team `t` with `mate` as
/// a member, and pod `p` of `owner` on team `t`.
async fn team_pod(db: &Db) {
    for id in ["owner", "mate", "other"] {
        db.create_user(&user(id, Some(&format!("{id}@x.dev"))))
            .await
            .unwrap();
    }
    db.create_team(&Team {
        id: "t".into(),
        name: "T".into(),
        created_at: 1,
    })
    .await
    .unwrap();
    db.put_member(&Member {
        team_id: "t".into(),
        user_id: "mate".into(),
        role: Role::Member,
        created_at: 1,
    })
    .await
    .unwrap();
    db.create_pod(&pod("p", "owner", Some("t"))).await.unwrap();
}

async fn access(db: &Db) {
    team_pod(db).await;
    db.create_pod(&pod("solo", "owner", None)).await.unwrap();

    let f = db
        .access_facts("p", 80, Some("mate"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.owner_id, "owner");
    assert_eq!(f.sharing, Sharing::Team);
    assert!(f.is_team_member);
    assert!(
        !db.access_facts("p", 80, Some("other"))
            .await
            .unwrap()
            .unwrap()
            .is_team_member
    );
    assert!(
        !db.access_facts("p", 80, None)
            .await
            .unwrap()
            .unwrap()
            .is_team_member
    );
    assert!(
        !db.access_facts("solo", 80, Some("mate"))
            .await
            .unwrap()
            .unwrap()
            .is_team_member
    );
    assert!(db
        .access_facts("nope", 80, Some("mate"))
        .await
        .unwrap()
        .is_none());
    db.put_pod_port(&PodPort {
        pod_slug: "p".into(),
        port: 80,
        sharing: Sharing::Owner,
        label: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(
        db.access_facts("p", 80, None)
            .await
            .unwrap()
            .unwrap()
            .sharing,
        Sharing::Owner
    );
    assert_eq!(
        db.access_facts("p", 81, None)
            .await
            .unwrap()
            .unwrap()
            .sharing,
        Sharing::Team
    );
}
on_both!(access_facts, access);

/// Consumes ticket `jti` with nothing to record: whether it was consumed now (else a replay).
async fn consume(db: &Db, jti: &str, expires_at: i64) -> bool {
    let consumed = db
        .consume_then_record(&[(jti.to_owned(), expires_at)], &[], &[])
        .await
        .unwrap();
    consumed[0]
}

async fn tickets_sessions_audit(db: &Db) {
    assert!(consume(db, "j1", 100).await);
    assert!(!consume(db, "j1", 100).await, "replay must be detected");
    assert!(consume(db, "j2", 10_000).await);
    db.create_user(&user("u", Some("u@x.dev"))).await.unwrap();
    db.create_session("h1", "u", None, 1, 50).await.unwrap();
    db.create_session("h2", "u", Some("corp"), 1, 10_000)
        .await
        .unwrap();
    assert_eq!(db.session_user("h1", 10).await.unwrap().unwrap().id, "u");
    assert!(
        db.session_user("h1", 50).await.unwrap().is_none(),
        "expired session"
    );
    assert!(db.session_user("nope", 10).await.unwrap().is_none());
    assert_eq!(db.prune(1000).await.unwrap(), 2);
    assert!(consume(db, "j1", 100).await, "pruned after expiry");
    assert!(!consume(db, "j2", 100).await, "not pruned before expiry");
    db.delete_session("h2").await.unwrap();
    assert!(db.session_user("h2", 10).await.unwrap().is_none());

    for (i, kind) in [KeyKind::Ticket, KeyKind::Capability]
        .into_iter()
        .enumerate()
    {
        let entry = AuditEntry {
            jti: format!("jti{i}"),
            kind,
            user_id: if i == 0 { "u".into() } else { "v".into() },
            pod_slug: "p".into(),
            port: 8726,
            audience: "localhost-8726-pod-p.localhost".into(),
            via: "test".into(),
            api_token_id: (i == 1).then(|| "tok".into()),
            issued_at: 10,
            expires_at: 70,
            resource: (i == 1).then(|| "/sessions/abc".into()),
        };
        db.consume_then_record(&[], &[&entry], &[]).await.unwrap();
    }
    let all = db.list_audit(None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].jti, "jti1", "newest first");
    assert_eq!(all[0].api_token_id.as_deref(), Some("tok"));
    assert_eq!(all[1].api_token_id, None);
    assert_eq!(all[0].resource.as_deref(), Some("/sessions/abc"));
    assert_eq!(all[1].resource, None);
    let u = db.list_audit(Some("u"), 10).await.unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].kind, KeyKind::Ticket);
    assert_eq!(db.list_audit(None, 1).await.unwrap().len(), 1);

    // Batches: one statement consumes many tickets; replays (earlier or within the batch) are
    // refused; many audit rows go in one statement.
    let batch: Vec<(String, i64)> = ["b1", "b2", "b1", "j2", "b3"]
        .iter()
        .map(|j| (j.to_string(), 100))
        .collect();
    assert_eq!(
        db.consume_then_record(&batch, &[], &[]).await.unwrap(),
        vec![true, true, false, false, true]
    );
    assert_eq!(
        db.consume_then_record(&batch[..2], &[], &[]).await.unwrap(),
        vec![false, false]
    );
    assert!(db
        .consume_then_record(&[], &[], &[])
        .await
        .unwrap()
        .is_empty());
    let rows: Vec<AuditEntry> = (0..300)
        .map(|i| AuditEntry {
            jti: format!("bulk{i}"),
            kind: KeyKind::Capability,
            user_id: "bulk".into(),
            pod_slug: "p".into(),
            port: 8726,
            audience: "a".into(),
            via: "test".into(),
            api_token_id: (i % 2 == 0).then(|| format!("tok{i}")),
            issued_at: 10,
            expires_at: 910,
            resource: (i % 3 == 0).then(|| format!("/sessions/s{i}")),
        })
        .collect();
    let refs: Vec<&AuditEntry> = rows.iter().take(256).collect();
    db.consume_then_record(&[], &refs, &[]).await.unwrap();
    db.consume_then_record(&[], &[], &[]).await.unwrap();
    let bulk = db.list_audit(Some("bulk"), 1000).await.unwrap();
    assert_eq!(bulk.len(), 256);
    assert!(bulk
        .iter()
        .all(|e| e.api_token_id.is_some() == e.jti.ends_with(['0', '2', '4', '6', '8'])));

    // Consuming and recording together: a replayed ticket's capability is not recorded.
    let t: Vec<(String, i64)> = vec![("c1".into(), 100), ("b1".into(), 100)];
    let consumed = db
        .consume_then_record(&t, &[&rows[256]], &[&rows[257], &rows[258]])
        .await
        .unwrap();
    assert_eq!(consumed, vec![true, false]);
    let bulk: Vec<String> = db
        .list_audit(Some("bulk"), 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.jti)
        .collect();
    assert!(bulk.contains(&"bulk256".to_owned()) && bulk.contains(&"bulk257".to_owned()));
    assert!(!bulk.contains(&"bulk258".to_owned()), "replay recorded");

    // The same ticket twice in one batch: only the first claims it and has its entry recorded;
    // a batch of replays only records what is recorded whatever happens.
    let t: Vec<(String, i64)> = vec![("d1".into(), 100), ("d1".into(), 100), ("d2".into(), 100)];
    let consumed = db
        .consume_then_record(&t, &[], &[&rows[259], &rows[260], &rows[261]])
        .await
        .unwrap();
    assert_eq!(consumed, vec![true, false, true]);
    let consumed = db
        .consume_then_record(&t[..1], &[&rows[262]], &[&rows[263]])
        .await
        .unwrap();
    assert_eq!(consumed, vec![false]);
    let bulk: Vec<AuditEntry> = db.list_audit(Some("bulk"), 1000).await.unwrap();
    let has = |jti: &str| bulk.iter().any(|e| e.jti == jti);
    assert!(has("bulk259") && has("bulk261") && has("bulk262"));
    assert!(!has("bulk260") && !has("bulk263"), "replay recorded");
    let e = bulk.iter().find(|e| e.jti == "bulk262").unwrap();
    assert_eq!(e, &rows[262], "recorded as given");
    // Every row, by each way of writing it, comes back as given (resource included).
    for e in &bulk {
        let given = rows.iter().find(|r| r.jti == e.jti).unwrap();
        assert_eq!(e, given, "recorded as given");
    }
    assert!(bulk
        .iter()
        .any(|e| e.jti == "bulk261" && e.resource.is_some()));
    // Login tickets' rows beside a consumption, and alone.
    let ticket_row = |jti: &str| AuditEntry {
        jti: jti.into(),
        kind: KeyKind::Ticket,
        user_id: "tickets".into(),
        ..rows[0].clone()
    };
    let (t1, t2, t3) = (ticket_row("t1"), ticket_row("t2"), ticket_row("t3"));
    let consumed = db
        .consume_then_record(
            &[("e1".into(), 100)],
            &[&t1, &rows[264], &t2],
            &[&rows[265]],
        )
        .await
        .unwrap();
    assert_eq!(consumed, vec![true]);
    assert!(db
        .consume_then_record(&[], &[&t3], &[])
        .await
        .unwrap()
        .is_empty());
    let mut tickets: Vec<String> = db
        .list_audit(Some("tickets"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.jti)
        .collect();
    tickets.sort();
    assert_eq!(tickets, ["t1", "t2", "t3"]);
    let bulk: Vec<AuditEntry> = db.list_audit(Some("bulk"), 1000).await.unwrap();
    assert!(bulk.iter().any(|e| e.jti == "bulk264") && bulk.iter().any(|e| e.jti == "bulk265"));

    // A full batch of fresh tickets, each with its entry.
    let t: Vec<(String, i64)> = (0..256).map(|i| (format!("full{i}"), 100)).collect();
    let full: Vec<AuditEntry> = (0..256)
        .map(|i| AuditEntry {
            jti: format!("fullcap{i}"),
            user_id: "full".into(),
            ..rows[0].clone()
        })
        .collect();
    let refs: Vec<&AuditEntry> = full.iter().collect();
    let consumed = db.consume_then_record(&t, &[], &refs).await.unwrap();
    assert!(consumed.iter().all(|c| *c));
    assert_eq!(db.list_audit(Some("full"), 1000).await.unwrap().len(), 256);
}
on_both!(tickets_sessions_and_audit, tickets_sessions_audit);

/// What a ticket's redemption reads, in one query: the user, the facts and the session's cut.
async fn redeem_reads(db: &Db) {
    db.create_user(&user("owner", None)).await.unwrap();
    db.create_pod(&pod("p", "owner", None)).await.unwrap();
    db.insert_cut(
        &CutRow::Session {
            sid: "gone".into(),
            at: 10,
            until: now_unix() + 600,
        },
        now_unix(),
    )
    .await
    .unwrap();
    let r = db
        .redeem_facts("owner", "p", 80, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.user.id, "owner");
    assert_eq!(r.facts.unwrap().owner_id, "owner");
    assert!(!r.session_cut);
    let r = db
        .redeem_facts("owner", "p", 80, Some("live"))
        .await
        .unwrap()
        .unwrap();
    assert!(!r.session_cut);
    let r = db
        .redeem_facts("owner", "p", 80, Some("gone"))
        .await
        .unwrap()
        .unwrap();
    assert!(r.session_cut);
    assert!(db.session_was_cut("gone").await.unwrap());
    let r = db
        .redeem_facts("owner", "nope", 80, Some("gone"))
        .await
        .unwrap()
        .unwrap();
    assert!(r.facts.is_none() && r.session_cut);
    assert!(db
        .redeem_facts("nobody", "p", 80, None)
        .await
        .unwrap()
        .is_none());
}
on_both!(redeem_facts_in_one_query, redeem_reads);

/// The reads of the sign-in flow and renewals (on SQLite run on the calling thread, on
/// PostgreSQL through the pool): who is asking, whether they may, and each write is seen by
/// the very next read.
async fn flow_reads(db: &Db) {
    team_pod(db).await;
    db.put_pod_port(&PodPort {
        pod_slug: "p".into(),
        port: 81,
        sharing: Sharing::Owner,
        label: String::new(),
    })
    .await
    .unwrap();
    db.create_session("live", "mate", None, 1, 1_000)
        .await
        .unwrap();
    db.create_session("old", "mate", None, 1, 50).await.unwrap();

    let (who, facts) = db
        .session_access_facts("live", 100, "p", 80)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, user("mate", Some("mate@x.dev")));
    let facts = facts.unwrap();
    assert_eq!(facts.owner_id, "owner");
    assert_eq!(facts.sharing, Sharing::Team);
    assert!(facts.is_team_member);
    let (_, facts) = db
        .session_access_facts("live", 100, "p", 81)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(facts.unwrap().sharing, Sharing::Owner);
    let (who, facts) = db
        .session_access_facts("live", 100, "nope", 80)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who.id, "mate");
    assert!(facts.is_none());
    // An expired session and an unknown one are nobody.
    assert!(db
        .session_access_facts("old", 100, "p", 80)
        .await
        .unwrap()
        .is_none());
    assert!(db
        .session_access_facts("never", 100, "p", 80)
        .await
        .unwrap()
        .is_none());

    let r = db
        .redeem_facts("mate", "p", 81, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.user, user("mate", Some("mate@x.dev")));
    let facts = r.facts.unwrap();
    assert_eq!(
        (facts.sharing, facts.is_team_member),
        (Sharing::Owner, true)
    );
    let r = db
        .redeem_facts("other", "p", 80, None)
        .await
        .unwrap()
        .unwrap();
    assert!(!r.facts.unwrap().is_team_member);

    // Each change is read back at once, by both reads.
    assert!(db.delete_member("t", "mate").await.unwrap());
    let (_, facts) = db
        .session_access_facts("live", 100, "p", 80)
        .await
        .unwrap()
        .unwrap();
    assert!(!facts.unwrap().is_team_member);
    let r = db
        .redeem_facts("mate", "p", 80, None)
        .await
        .unwrap()
        .unwrap();
    assert!(!r.facts.unwrap().is_team_member);
    db.delete_session("live").await.unwrap();
    assert!(db
        .session_access_facts("live", 100, "p", 80)
        .await
        .unwrap()
        .is_none());
    assert!(db.delete_user("other").await.unwrap());
    assert!(db
        .redeem_facts("other", "p", 80, None)
        .await
        .unwrap()
        .is_none());
}
on_both!(flow_reads_see_every_change_at_once, flow_reads);

async fn key_storage(db: &Db) {
    // Dev mode without a key-encryption key (tests/keys_at_rest.rs covers encrypted storage).
    let kek = &KeyEncryption::plaintext();
    for alg in [SigningAlg::Eddsa, SigningAlg::Es256, SigningAlg::Hs256] {
        let k = keys::generate(KeyKind::Capability, alg, 1, kek).unwrap();
        assert!(k.kid.starts_with("cap-"));
        let jwk: podgate_protocol::token::Jwk =
            serde_json::from_slice(&keys::private_jwk(&k, kek).unwrap()).unwrap();
        podgate_protocol::token::SigningKey::from_private_jwk(&jwk).unwrap();
    }
    let made = keys::ensure(db, SigningAlg::Eddsa, 100, kek).await.unwrap();
    assert_eq!(made.len(), 2);
    assert!(
        keys::ensure(db, SigningAlg::Eddsa, 100, kek)
            .await
            .unwrap()
            .is_empty(),
        "idempotent"
    );
    let new = keys::rotate(db, SigningAlg::Es256, 200, 1000, kek)
        .await
        .unwrap();
    let live = db.live_keys(300).await.unwrap();
    assert_eq!(live.len(), 4);
    let active: Vec<_> = live
        .iter()
        .filter(|k| k.retired_at.is_none())
        .map(|k| k.kid.clone())
        .collect();
    assert_eq!(active.len(), 2);
    for kid in &new {
        assert!(active.contains(kid));
    }
    for k in live.iter().filter(|k| k.retired_at.is_some()) {
        assert_eq!(k.verify_until, Some(1200));
        assert_eq!(k.alg, "EdDSA");
    }
    // After the overlap only the new keys remain.
    assert_eq!(db.live_keys(1200).await.unwrap().len(), 2);
    // The ring loads from what is stored.
    let config = podgate::config::Config::for_tests("sqlite://unused.db").unwrap();
    let ring = keys::load(db, &config, 300).await.unwrap();
    assert_eq!(ring.capability_keys.keys.len(), 2);
    assert_eq!(ring.public_jwks.keys.len(), 2);
    assert!(ring.capability_signer.kid().starts_with("cap-"));
    assert!(ring.ticket_signer.kid().starts_with("tkt-"));
    assert_eq!(ring.ticket_verifier.key_count(), 2);
    // Each capability key has its assertion key: published for both during the overlap;
    // public halves only, and none of them a capability key. The filter signs with the one of
    // the capability key that signs once it has been published for the assertion key delay
    // (120 s): until then with the previous one, which pods have.
    assert_eq!(ring.assertion_jwks.keys.len(), 2);
    assert!(ring
        .assertion_jwks
        .keys
        .iter()
        .all(|k| k.kid.starts_with("ast-") && k.d.is_none() && k.k.is_none()));
    let old_capability = live
        .iter()
        .find(|k| k.kind == KeyKind::Capability && k.retired_at.is_some())
        .unwrap();
    assert_eq!(
        ring.assertion_signer.kid(),
        old_capability.kid.replacen("cap-", "ast-", 1),
        "100 s after the rotation"
    );
    let published = keys::load(db, &config, 320).await.unwrap();
    assert_eq!(
        published.assertion_signer.kid(),
        published
            .capability_signer
            .kid()
            .replacen("cap-", "ast-", 1),
        "120 s after the rotation"
    );
    for capability in &ring.public_jwks.keys {
        assert!(!ring.assertion_jwks.keys.iter().any(|a| a.x == capability.x));
    }
    // Derived, not random: reloading gives the same assertion key.
    let again = keys::load(db, &config, 300).await.unwrap();
    assert_eq!(again.assertion_jwks, ring.assertion_jwks);
}
on_both!(keys_generate_rotate_and_load, key_storage);

async fn hs256_ring(db: &Db) {
    keys::ensure(db, SigningAlg::Hs256, 1, &KeyEncryption::plaintext())
        .await
        .unwrap();
    let config = podgate::config::Config::for_tests("sqlite://unused.db").unwrap();
    let ring = keys::load(db, &config, 2).await.unwrap();
    // HMAC secrets are never published; the assertion key is Ed25519 whatever the capability
    // algorithm, so pods can verify it.
    assert!(ring.public_jwks.keys.is_empty());
    assert_eq!(ring.assertion_jwks.keys.len(), 1);
    assert_eq!(ring.assertion_jwks.keys[0].alg, "EdDSA");
    assert_eq!(ring.capability_keys.keys.len(), 1);
}
on_both!(hs256_secrets_stay_private, hs256_ring);

/// Services: stored with their credential sealed, read back, reached by the pod rules through
/// the address (name, 0), their credentials moved to a new key-encryption key by the rewrap.
async fn services(db: &Db) {
    use podgate::key_encryption::KeyEncryptionKey;
    use podgate::services;
    use podgate::store::ServiceRow;

    db.create_user(&user("owner", None)).await.unwrap();
    db.create_user(&user("mate", None)).await.unwrap();
    db.create_user(&user("other", None)).await.unwrap();
    db.create_team(&Team {
        id: "t".into(),
        name: "T".into(),
        created_at: 1,
    })
    .await
    .unwrap();
    db.put_member(&Member {
        team_id: "t".into(),
        user_id: "mate".into(),
        role: Role::Member,
        created_at: 1,
    })
    .await
    .unwrap();
    let old = KeyEncryption::new(Some(KeyEncryptionKey::from_bytes([1; 32], "old")), vec![]);
    let credential = services::seal(&old, "api", "x-api-key", "sk-secret-value").unwrap();
    let row = ServiceRow {
        name: "api".into(),
        owner_id: "owner".into(),
        team_id: Some("t".into()),
        sharing: Sharing::Team,
        upstream_url: "https://api.example.com".into(),
        ca_pem: None,
        credential: Some(credential),
        oauth: None,
        resource_path: Some("/sessions/{id}".into()),
        oauth_epoch: podgate::store::OAuthEpoch::default(),
        created_at: 1,
        updated_at: 1,
    };
    db.put_service(&row).await.unwrap();
    let back = db.get_service("api").await.unwrap().unwrap();
    assert!(back == row);
    let stored = back.credential.as_ref().unwrap();
    assert!(!stored.value.contains("sk-secret-value"));
    assert_eq!(
        services::open(&old, "api", stored).unwrap(),
        "sk-secret-value"
    );
    assert_eq!(db.list_services().await.unwrap().len(), 1);
    // A pod of the same name is another thing: port 0 reads the service.
    db.create_pod(&pod("api", "other", None)).await.unwrap();
    let f = db
        .access_facts("api", 0, Some("mate"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (f.owner_id.as_str(), f.sharing, f.is_team_member),
        ("owner", Sharing::Team, true)
    );
    let f = db
        .access_facts("api", 80, Some("mate"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.owner_id, "other");
    let (u, f) = db
        .user_access_facts("other", "api", 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.id, "other");
    assert!(!f.unwrap().is_team_member);
    assert!(db.access_facts("nothing", 0, None).await.unwrap().is_none());

    // The operator's key rotates: the rewrap reseals under the new one; the old one no longer
    // opens it.
    let new_key = KeyEncryptionKey::from_bytes([2; 32], "new");
    let rotating = KeyEncryption::new(
        Some(new_key.clone()),
        vec![KeyEncryptionKey::from_bytes([1; 32], "old")],
    );
    assert_eq!(services::rewrap(db, &rotating).await.unwrap(), (1, 0));
    assert_eq!(services::rewrap(db, &rotating).await.unwrap(), (0, 1));
    let moved = db
        .get_service("api")
        .await
        .unwrap()
        .unwrap()
        .credential
        .unwrap();
    assert_eq!(moved.kek_id.as_deref(), Some(new_key.id()));
    let new_only = KeyEncryption::new(Some(new_key), vec![]);
    assert_eq!(
        services::open(&new_only, "api", &moved).unwrap(),
        "sk-secret-value"
    );
    assert!(services::open(&old, "api", &moved).is_err());

    // An OAuth configuration, secret included, is stored sealed, read back whole, and moved
    // to the new key by the rewrap too.
    let oauth = podgate::service_oauth::parse(serde_json::json!({
        "token_url": "https://idp.example/token", "grant": "client_credentials",
        "client_id": "c", "client_secret": "oauth-secret-value"
    }))
    .unwrap();
    let sealed = podgate::service_oauth::seal(&old, "oa", &oauth).unwrap();
    assert!(!sealed.config.contains("oauth-secret-value"));
    let oa = ServiceRow {
        name: "oa".into(),
        credential: None,
        oauth: Some(sealed),
        ..row.clone()
    };
    db.put_service(&oa).await.unwrap();
    assert!(db.get_service("oa").await.unwrap().unwrap() == oa);
    assert_eq!(services::rewrap(db, &rotating).await.unwrap(), (1, 1));
    assert_eq!(services::rewrap(db, &rotating).await.unwrap(), (0, 2));
    let moved = db.get_service("oa").await.unwrap().unwrap().oauth.unwrap();
    assert_eq!(
        moved.kek_id.as_deref(),
        Some(new_only.current().unwrap().id())
    );
    assert!(podgate::service_oauth::open(&new_only, "oa", &moved).unwrap() == oauth);
    assert!(podgate::service_oauth::open(&old, "oa", &moved).is_err());

    // Refreshes and clears move its OAuth epoch, and only they: a write of the row (the
    // rewrap above, an admin's PUT) never takes it back.
    use podgate::store::OAuthEpoch;
    let epoch = |generation, cleared| OAuthEpoch {
        generation,
        cleared,
    };
    assert_eq!(
        db.advance_oauth("oa", false).await.unwrap(),
        Some(epoch(1, 0))
    );
    assert_eq!(
        db.advance_oauth("oa", true).await.unwrap(),
        Some(epoch(2, 2))
    );
    assert_eq!(
        db.advance_oauth("oa", false).await.unwrap(),
        Some(epoch(3, 2))
    );
    let read = db.get_service("oa").await.unwrap().unwrap();
    assert_eq!(read.oauth_epoch, epoch(3, 2));
    db.put_service(&oa).await.unwrap();
    assert_eq!(
        db.get_service("oa").await.unwrap().unwrap().oauth_epoch,
        epoch(3, 2)
    );
    assert_eq!(db.advance_oauth("none", true).await.unwrap(), None);
    // In a change (a credential's removal), only if the change commits.
    let mut change = db.change().await.unwrap();
    assert_eq!(
        change.advance_oauth("oa", true).await.unwrap(),
        Some(epoch(4, 4))
    );
    drop(change);
    let epoch_now = || async { db.get_service("oa").await.unwrap().unwrap().oauth_epoch };
    assert_eq!(epoch_now().await, epoch(3, 2));
    let mut change = db.change().await.unwrap();
    change.advance_oauth("oa", true).await.unwrap();
    change.commit().await.unwrap();
    assert_eq!(epoch_now().await, epoch(4, 4));
    assert!(db.delete_service("oa").await.unwrap());

    assert!(db.delete_service("api").await.unwrap());
    assert!(!db.delete_service("api").await.unwrap());
    assert!(db.access_facts("api", 0, None).await.unwrap().is_none());
}

on_both!(services_stored_sealed_and_reached, services);

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let db = Db::connect(&format!("sqlite://{}", path.display()), 2)
        .await
        .unwrap();
    db.migrate().await.unwrap();
    assert!(path.exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    // Migrating twice is a no-op.
    db.migrate().await.unwrap();
    // Requests never checkpoint; the background checkpointer copies the WAL into the file.
    let auto: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(auto, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&path).unwrap().len() < 20 * 4096 {
        assert!(
            std::time::Instant::now() < deadline,
            "WAL never checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    db.close().await;
}

#[test]
fn ci_without_postgres_url_fails() {
    // The harness panics under CI=true when the URL is missing (checked in a child process so
    // this test's own environment is not changed).
    if std::env::var("PODGATE_CHILD_CHECK").is_ok() {
        std::env::remove_var("PODGATE_TEST_POSTGRES_URL");
        std::env::set_var("CI", "true");
        let _ = common::postgres_url();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "ci_without_postgres_url_fails", "--nocapture"])
        .env("PODGATE_CHILD_CHECK", "1")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the PostgreSQL variant must fail in CI without a URL"
    );
    // Failed for that reason, not another.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("CI=true but PODGATE_TEST_POSTGRES_URL is not set"),
        "{said}"
    );
}
