//! Signing keys at rest, on real SQLite and real PostgreSQL: the stored rows hold no private key
//! material, keys come back after a restart, a wrong or missing key-encryption key is a clear
//! error that changes nothing, the operator's key rotates (previous key, then rewrap), a
//! ciphertext moved to another row is refused, and plaintext rows from before encryption are
//! sealed at start, service credentials written in dev mode too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, TestDb, Which};
use podgate::config::{Need, Settings, SigningAlg};
use podgate::key_encryption::{KeyEncryption, KeyEncryptionKey};
use podgate::keys;
use podgate::store::{now_unix, Db, KeyKind, KeyMaterial};
use podgate::AppState;
use podgate_protocol::token::Jwk;
use sqlx::Row;

/// Dev-mode settings without a key-encryption key: signing keys stored in plaintext.
fn dev_without_kek(url: &str) -> Settings {
    Settings {
        key_encryption_key: None,
        ..common::settings(url)
    }
}

/// Production settings (no dev mode) with `current` and `previous` key-encryption keys.
fn with_keks(
    s: Settings,
    current: Option<&KeyEncryptionKey>,
    previous: &[&KeyEncryptionKey],
) -> Settings {
    Settings {
        dev_mode: Some(false),
        login_url: Some("https://app.example.dev/login".into()),
        key_encryption_key: current.map(|k| k.to_base64().to_string()),
        previous_key_encryption_key: (!previous.is_empty())
            .then(|| previous.iter().map(|k| k.to_base64().to_string()).collect()),
        ..s
    }
}

/// Starts the control plane's state on `t` the way `podgate serve` does.
async fn start(t: &TestDb, s: Settings) -> Result<AppState, String> {
    let config = s.resolve(Need::Server).map_err(|e| e.to_string())?;
    AppState::new(config, t.db.clone())
        .await
        .map_err(|e| e.to_string())
}

async fn start_with(
    t: &TestDb,
    current: Option<&KeyEncryptionKey>,
    previous: &[&KeyEncryptionKey],
) -> Result<AppState, String> {
    start(t, with_keks(common::settings(&t.url), current, previous)).await
}

fn enc(current: &KeyEncryptionKey, previous: &[&KeyEncryptionKey]) -> KeyEncryption {
    KeyEncryption::new(
        Some(current.clone()),
        previous.iter().map(|k| (*k).clone()).collect(),
    )
}

/// Every stored row as the database holds it: kid → all its text columns joined.
async fn raw_rows(db: &Db) -> Vec<(String, String)> {
    let rows = sqlx::query(
        "SELECT kid, kind, alg, private_jwk, kek_id, sealed_jwk FROM signing_keys ORDER BY kid",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            let cols: Vec<String> = (0..6)
                .map(|i| {
                    r.try_get::<Option<String>, _>(i)
                        .unwrap()
                        .unwrap_or_default()
                })
                .collect();
            (cols[0].clone(), cols.join("|"))
        })
        .collect()
}

/// The private part of a JWK: `d` (Ed25519 seed, P-256 scalar) or `k` (HMAC secret).
fn secret_of(jwk: &Jwk) -> String {
    jwk.d.clone().or_else(|| jwk.k.clone()).unwrap()
}

/// kid → secret of every stored key, opened with `kek`.
async fn stored_secrets(db: &Db, kek: &KeyEncryption) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for k in db.all_keys().await.unwrap() {
        let jwk: Jwk = serde_json::from_slice(&keys::private_jwk(&k, kek).unwrap()).unwrap();
        assert_eq!(jwk.kid, k.kid);
        out.push((k.kid, secret_of(&jwk)));
    }
    out
}

/// No stored row contains any of `secrets`, and none holds a JWK.
fn assert_no_secret_stored(rows: &[(String, String)], secrets: &[(String, String)]) {
    assert!(!secrets.is_empty());
    for (kid, row) in rows {
        for (owner, secret) in secrets {
            assert!(
                secret.len() >= 40 && !row.contains(secret.as_str()),
                "row {kid} holds the private key of {owner}: {row}"
            );
        }
        assert!(
            !row.contains("\"d\"") && !row.contains("\"k\"") && !row.contains("\"kty\""),
            "row {kid} holds a JWK: {row}"
        );
    }
}

async fn kek_ids(db: &Db) -> Vec<Option<String>> {
    db.all_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.material.kek_id().map(str::to_owned))
        .collect()
}

/// For every algorithm: what is stored holds no private key material, the admin API's rotation
/// seals its keys too, and after a restart the same keys are loaded back.
async fn stored_rows_hold_no_private_key_material(which: Which) {
    for alg in ["eddsa", "es256", "hs256"] {
        let a = KeyEncryptionKey::generate().unwrap();
        let Some(h) = Harness::with(which, |s| {
            with_keks(
                Settings {
                    signing_alg: Some(alg.into()),
                    ..s
                },
                Some(&a),
                &[],
            )
        })
        .await
        else {
            return;
        };
        let r = h.admin(Method::POST, "/v1/keys/rotate", None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let listed = h.admin(Method::GET, "/v1/keys", None).await.json();
        let listed = listed.as_array().unwrap();
        assert_eq!(listed.len(), 4);
        for k in listed {
            assert_eq!(k["kek_id"], a.id(), "{k}");
        }
        let db = &h.tdb.db;
        let rows = raw_rows(db).await;
        assert_eq!(rows.len(), 4);
        let secrets = stored_secrets(db, &enc(&a, &[])).await;
        assert_no_secret_stored(&rows, &secrets);
        for k in db.all_keys().await.unwrap() {
            let KeyMaterial::Sealed(s) = &k.material else {
                panic!("{} stored in plaintext", k.kid);
            };
            assert_eq!(s.kek_id, a.id());
            assert!(s.ciphertext.starts_with("v1."));
        }

        // Round trip: a restart loads the very same keys, and makes none.
        let before = h.state.keys().unwrap();
        let again = start_with(&h.tdb, Some(&a), &[]).await.unwrap();
        let after = again.keys().unwrap();
        for (x, y) in [
            (&before.capability_signer, &after.capability_signer),
            (&before.ticket_signer, &after.ticket_signer),
        ] {
            assert_eq!(x.kid(), y.kid());
            assert_eq!(x.to_private_jwk(), y.to_private_jwk());
        }
        assert_eq!(raw_rows(db).await.len(), 4);
        assert_eq!(
            before.capability_keys.keys.len(),
            after.capability_keys.keys.len()
        );
        h.finish().await;
    }
}
on_both!(stored_rows_hold_no_private_key_material);

/// A key-encryption key other than the one the keys are under, or none at all, stops the start
/// with an error that names a key and the key-encryption key it needs; nothing is regenerated
/// or rewritten, and the right key still works afterwards.
async fn wrong_or_missing_operator_key_is_a_clear_error(which: Which) {
    let Some(t) = TestDb::new(which).await else {
        return;
    };
    let a = KeyEncryptionKey::generate().unwrap();
    let b = KeyEncryptionKey::generate().unwrap();
    let first = start_with(&t, Some(&a), &[]).await.unwrap();
    let kids: Vec<String> = raw_rows(&t.db).await.into_iter().map(|r| r.0).collect();
    let rows = raw_rows(&t.db).await;

    let e = start_with(&t, Some(&b), &[]).await.unwrap_err();
    assert!(
        kids.iter().any(|kid| e.contains(kid.as_str()))
            && e.contains(a.id())
            && e.contains(b.id())
            && e.contains("not configured"),
        "{e}"
    );
    assert_eq!(raw_rows(&t.db).await, rows, "a wrong key changed the rows");

    // Dev mode without any key-encryption key cannot read them either.
    let e = start(&t, dev_without_kek(&t.url)).await.unwrap_err();
    assert!(
        kids.iter().any(|kid| e.contains(kid.as_str()))
            && e.contains(a.id())
            && e.contains("PODGATE_KEY_ENCRYPTION_KEY_FILE"),
        "{e}"
    );
    assert_eq!(raw_rows(&t.db).await, rows, "dev mode changed the rows");

    // Outside dev mode no key at all is a configuration error before the database is touched.
    let e = start_with(&t, None, &[]).await.unwrap_err();
    assert!(
        e.contains("no key-encryption key") && e.contains("gen-kek"),
        "{e}"
    );

    // Rewrapping with the wrong key changes nothing either.
    let e = keys::reseal(&t.db, &enc(&b, &[]), keys::Reseal::All)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(a.id()), "{e}");
    assert_eq!(raw_rows(&t.db).await, rows);

    // The right key: the same keys as before.
    let back = start_with(&t, Some(&a), &[]).await.unwrap();
    assert_eq!(
        back.keys().unwrap().capability_signer.kid(),
        first.keys().unwrap().capability_signer.kid()
    );
    assert_eq!(raw_rows(&t.db).await, rows);
    t.finish().await;
}
on_both!(wrong_or_missing_operator_key_is_a_clear_error);

/// Rotating the operator's key: with the new key current and the old one previous, the server
/// starts and seals new keys under the new one (but leaves old rows for the rewrap); the rewrap
/// moves every row, expired ones included; then the old key is no longer needed, and no longer
/// opens anything.
async fn operator_key_rotation_then_rewrap(which: Which) {
    let Some(t) = TestDb::new(which).await else {
        return;
    };
    let a = KeyEncryptionKey::generate().unwrap();
    let b = KeyEncryptionKey::generate().unwrap();
    start_with(&t, Some(&a), &[]).await.unwrap();
    // An expired pair (retired long ago) and an active pair, all under `a`.
    let now = now_unix();
    keys::rotate(&t.db, SigningAlg::Eddsa, now - 100, 1, &enc(&a, &[]))
        .await
        .unwrap();
    assert_eq!(t.db.all_keys().await.unwrap().len(), 4);
    assert_eq!(t.db.live_keys(now).await.unwrap().len(), 2);
    let secrets = stored_secrets(&t.db, &enc(&a, &[])).await;

    // Step 1: new key current, old key previous. The start works and rewraps nothing.
    let state = start_with(&t, Some(&b), &[&a]).await.unwrap();
    assert!(kek_ids(&t.db)
        .await
        .iter()
        .all(|id| id.as_deref() == Some(a.id())));
    let rotated = keys::rotate(
        &t.db,
        SigningAlg::Eddsa,
        now,
        3600,
        &state.config().key_encryption,
    )
    .await
    .unwrap();
    state.reload_keys().await.unwrap();
    let signer = state.keys().unwrap().capability_signer.to_private_jwk();
    assert!(rotated.contains(&signer.kid));
    let ids = kek_ids(&t.db).await;
    assert_eq!(
        ids.iter().filter(|i| i.as_deref() == Some(b.id())).count(),
        2
    );
    assert_eq!(
        ids.iter().filter(|i| i.as_deref() == Some(a.id())).count(),
        4
    );

    // Without the previous key the rows still under it cannot be read yet.
    let e = start_with(&t, Some(&b), &[]).await.unwrap_err();
    assert!(e.contains(a.id()) && e.contains("not configured"), "{e}");

    // Step 2: rewrap.
    let report = keys::reseal(&t.db, &enc(&b, &[&a]), keys::Reseal::All)
        .await
        .unwrap();
    assert_eq!(report.resealed.len(), 4);
    assert_eq!(report.already_current, 2);
    assert!(kek_ids(&t.db)
        .await
        .iter()
        .all(|id| id.as_deref() == Some(b.id())));
    let mut all_secrets = secrets.clone();
    all_secrets.extend(stored_secrets(&t.db, &enc(&b, &[])).await);
    assert_no_secret_stored(&raw_rows(&t.db).await, &all_secrets);
    // The same private keys, now under `b` alone (expired rows too).
    let resealed = stored_secrets(&t.db, &enc(&b, &[])).await;
    for (kid, secret) in &secrets {
        assert!(resealed.contains(&(kid.clone(), secret.clone())), "{kid}");
    }

    // Step 3: the previous key is no longer needed...
    let after = start_with(&t, Some(&b), &[]).await.unwrap();
    assert_eq!(
        after.keys().unwrap().capability_signer.to_private_jwk(),
        signer
    );
    let again = keys::reseal(&t.db, &enc(&b, &[]), keys::Reseal::All)
        .await
        .unwrap();
    assert!(again.resealed.is_empty());
    assert_eq!(again.already_current, 6);
    // ...and opens nothing any more.
    let e = start_with(&t, Some(&a), &[]).await.unwrap_err();
    assert!(e.contains(b.id()), "{e}");
    t.finish().await;
}
on_both!(operator_key_rotation_then_rewrap);

/// A ciphertext copied or swapped onto another row, or a row relabelled as another kind or
/// algorithm, does not open: the start stops naming the row, and a rewrap changes nothing.
async fn ciphertext_moved_between_rows_is_refused(which: Which) {
    let Some(t) = TestDb::new(which).await else {
        return;
    };
    let a = KeyEncryptionKey::generate().unwrap();
    start_with(&t, Some(&a), &[]).await.unwrap();
    // Two keys of each kind: rows that differ only in their kid.
    keys::rotate(&t.db, SigningAlg::Eddsa, now_unix(), 3600, &enc(&a, &[]))
        .await
        .unwrap();
    let stored = t.db.all_keys().await.unwrap();
    let ticket = stored.iter().find(|k| k.kind == KeyKind::Ticket).unwrap();
    let capability = stored
        .iter()
        .find(|k| k.kind == KeyKind::Capability)
        .unwrap();
    let newer_capability = stored
        .iter()
        .rfind(|k| k.kind == KeyKind::Capability)
        .unwrap();
    assert_ne!(capability.kid, newer_capability.kid);
    let sealed = |kid: &str| {
        let k = stored.iter().find(|k| k.kid == kid).unwrap();
        match &k.material {
            KeyMaterial::Sealed(s) => s.ciphertext.clone(),
            KeyMaterial::Plaintext(_) => panic!("plaintext"),
        }
    };
    let (t_ct, c_ct, n_ct) = (
        sealed(&ticket.kid),
        sealed(&capability.kid),
        sealed(&newer_capability.kid),
    );
    let pristine = raw_rows(&t.db).await;
    let set = |kid: &str, column: &str, value: &str| {
        let db = t.db.clone();
        let sql = format!("UPDATE signing_keys SET {column} = $1 WHERE kid = $2");
        let (kid, value) = (kid.to_owned(), value.to_owned());
        async move {
            sqlx::query(&sql)
                .bind(value)
                .bind(kid)
                .execute(db.pool())
                .await
                .unwrap();
        }
    };
    let restore = || async {
        set(&ticket.kid, "sealed_jwk", &t_ct).await;
        set(&capability.kid, "sealed_jwk", &c_ct).await;
        set(&newer_capability.kid, "sealed_jwk", &n_ct).await;
        set(&ticket.kid, "kind", "ticket").await;
        set(&ticket.kid, "alg", &ticket.alg).await;
        assert_eq!(raw_rows(&t.db).await, pristine);
    };

    // Swapped between two capability keys (same kind, same algorithm).
    set(&capability.kid, "sealed_jwk", &n_ct).await;
    set(&newer_capability.kid, "sealed_jwk", &c_ct).await;
    expect_refused(&t, &a, &[&capability.kid, &newer_capability.kid]).await;
    restore().await;
    // Swapped between a ticket key and a capability key.
    set(&ticket.kid, "sealed_jwk", &c_ct).await;
    set(&capability.kid, "sealed_jwk", &t_ct).await;
    expect_refused(&t, &a, &[&ticket.kid, &capability.kid]).await;
    restore().await;
    // Copied: the capability key's ciphertext on the ticket row.
    set(&ticket.kid, "sealed_jwk", &c_ct).await;
    expect_refused(&t, &a, &[&ticket.kid]).await;
    restore().await;
    // Relabelled: a ticket key turned into a capability key would be published to Envoy.
    set(&ticket.kid, "kind", "capability").await;
    expect_refused(&t, &a, &[&ticket.kid]).await;
    restore().await;
    set(&ticket.kid, "alg", "HS256").await;
    expect_refused(&t, &a, &[&ticket.kid]).await;
    restore().await;

    start_with(&t, Some(&a), &[]).await.unwrap();
    t.finish().await;
}
on_both!(ciphertext_moved_between_rows_is_refused);

async fn expect_refused(t: &TestDb, a: &KeyEncryptionKey, kids: &[&str]) {
    let rows = raw_rows(&t.db).await;
    let e = start_with(t, Some(a), &[]).await.unwrap_err();
    assert!(
        kids.iter().any(|kid| e.contains(kid)) && e.contains("altered or belongs to another row"),
        "{e}"
    );
    let e = keys::reseal(&t.db, &enc(a, &[]), keys::Reseal::All)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("altered or belongs to another row"), "{e}");
    assert_eq!(
        raw_rows(&t.db).await,
        rows,
        "a refused start changed the rows"
    );
}

/// An upgrade: rows written in plaintext before the key-encryption migration are kept as they
/// are in dev mode without a key, and sealed at the first start with one (expired rows too),
/// without making new keys.
async fn plaintext_rows_from_before_encryption_are_sealed_at_start(which: Which) {
    let Some(t) = TestDb::unmigrated(which).await else {
        return;
    };
    // The schema as it was before encryption.
    let dir = tempfile::tempdir().unwrap();
    let folder = match which {
        Which::Sqlite => "sqlite",
        Which::Postgres => "postgres",
    };
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(folder);
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0004" {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(t.db.pool())
        .await
        .unwrap();
    // What an older podgate wrote: an expired pair and an active pair, private JWKs in clear.
    let plaintext = KeyEncryption::plaintext();
    let now = now_unix();
    let mut secrets = Vec::new();
    for (created, verify_until) in [(now - 100, Some(now - 50)), (now - 10, None)] {
        for kind in [KeyKind::Ticket, KeyKind::Capability] {
            let k = keys::generate(kind, SigningAlg::Es256, created, &plaintext).unwrap();
            let KeyMaterial::Plaintext(jwk) = &k.material else {
                panic!("sealed without a key");
            };
            secrets.push((
                k.kid.clone(),
                secret_of(&serde_json::from_str(jwk).unwrap()),
            ));
            sqlx::query(
                "INSERT INTO signing_keys (kid, kind, alg, private_jwk, created_at, retired_at, verify_until) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&k.kid)
            .bind(kind.as_str())
            .bind(&k.alg)
            .bind(jwk)
            .bind(created)
            .bind(verify_until.map(|_| now - 90))
            .bind(verify_until)
            .execute(t.db.pool())
            .await
            .unwrap();
        }
    }
    t.db.migrate().await.unwrap();
    let rows = raw_rows(&t.db).await;
    // The check below can fail: the secrets are in these rows now.
    assert!(secrets
        .iter()
        .all(|(kid, s)| rows.iter().any(|(k, r)| k == kid && r.contains(s.as_str()))));

    // Dev mode without a key-encryption key: left as they are (documented), and they load.
    let dev = start(&t, dev_without_kek(&t.url)).await.unwrap();
    let active = dev.keys().unwrap().capability_signer.to_private_jwk();
    assert_eq!(raw_rows(&t.db).await, rows);

    // With a key-encryption key: every row sealed, no key made, the same keys loaded.
    let a = KeyEncryptionKey::generate().unwrap();
    let state = start_with(&t, Some(&a), &[]).await.unwrap();
    let sealed_rows = raw_rows(&t.db).await;
    assert_eq!(sealed_rows.len(), 4);
    assert_no_secret_stored(&sealed_rows, &secrets);
    assert!(kek_ids(&t.db)
        .await
        .iter()
        .all(|id| id.as_deref() == Some(a.id())));
    assert_eq!(
        state.keys().unwrap().capability_signer.to_private_jwk(),
        active
    );
    let opened = stored_secrets(&t.db, &enc(&a, &[])).await;
    for s in &secrets {
        assert!(opened.contains(s), "{}", s.0);
    }
    t.finish().await;
}
on_both!(plaintext_rows_from_before_encryption_are_sealed_at_start);

/// Service credentials written in dev mode without a key-encryption key (a static key and an
/// OAuth configuration with its client secret) are sealed at the first start with one, as the
/// signing keys are, and open to the same values.
async fn plaintext_service_credentials_are_sealed_at_start(which: Which) {
    use podgate::store::{ServiceRow, User};
    let Some(t) = TestDb::new(which).await else {
        return;
    };
    const KEY: &str = "sk-dev-mode-plaintext-1234";
    const CLIENT_SECRET: &str = "oauth-dev-mode-secret-5678";
    let plaintext = KeyEncryption::plaintext();
    let oauth = podgate::service_oauth::parse(serde_json::json!({
        "token_url": "https://idp.example/token", "grant": "client_credentials",
        "client_id": "c", "client_secret": CLIENT_SECRET,
    }))
    .unwrap();
    let dev = start(&t, dev_without_kek(&t.url)).await.unwrap();
    dev.db()
        .create_user(&User {
            id: "alice".into(),
            email: None,
            name: "Alice".into(),
            created_at: now_unix(),
        })
        .await
        .unwrap();
    let row = ServiceRow {
        name: "api".into(),
        owner_id: "alice".into(),
        team_id: None,
        sharing: podgate::store::Sharing::Owner,
        upstream_url: "https://api.example.com".into(),
        ca_pem: None,
        credential: Some(podgate::services::seal(&plaintext, "api", "x-api-key", KEY).unwrap()),
        oauth: Some(podgate::service_oauth::seal(&plaintext, "api", &oauth).unwrap()),
        resource_path: None,
        oauth_epoch: podgate::store::OAuthEpoch::default(),
        created_at: now_unix(),
        updated_at: now_unix(),
    };
    let mut change = t.db.change().await.unwrap();
    change.create_service(&row).await.unwrap();
    change.commit().await.unwrap();
    drop(dev);
    let stored = t.db.get_service("api").await.unwrap().unwrap();
    assert!(stored.credential.as_ref().unwrap().value.contains(KEY));
    assert!(stored
        .oauth
        .as_ref()
        .unwrap()
        .config
        .contains(CLIENT_SECRET));

    let a = KeyEncryptionKey::generate().unwrap();
    start_with(&t, Some(&a), &[]).await.unwrap();
    let sealed = t.db.get_service("api").await.unwrap().unwrap();
    let credential = sealed.credential.as_ref().unwrap();
    let stored_oauth = sealed.oauth.as_ref().unwrap();
    assert_eq!(credential.kek_id.as_deref(), Some(a.id()));
    assert_eq!(stored_oauth.kek_id.as_deref(), Some(a.id()));
    assert!(!credential.value.contains(KEY));
    assert!(!stored_oauth.config.contains(CLIENT_SECRET));
    let kek = enc(&a, &[]);
    assert_eq!(
        podgate::services::open(&kek, "api", credential).unwrap(),
        KEY
    );
    assert_eq!(
        podgate::service_oauth::open(&kek, "api", stored_oauth).unwrap(),
        oauth
    );
    t.finish().await;
}
on_both!(plaintext_service_credentials_are_sealed_at_start);
