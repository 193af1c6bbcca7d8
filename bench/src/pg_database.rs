//! A PostgreSQL database of a run's own, for the binaries that start control planes on one
//! (`podgate-soak`, `podgate-login`); each includes this file as a module.

use anyhow::Context as _;

/// A database of the run's own on the PostgreSQL server of `url` (`CREATE DATABASE`), dropped
/// by [`drop_database`]: signing keys are stored under the run's key-encryption key, so each run
/// needs a fresh database.
pub async fn create_database(url: &str, name: &str) -> anyhow::Result<String> {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(url)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    let _ = admin.close().await;
    let mut own = reqwest::Url::parse(url).context("the PostgreSQL URL")?;
    own.set_path(&format!("/{name}"));
    Ok(own.to_string())
}

/// `DROP DATABASE name` on the server of `url` (best effort).
pub async fn drop_database(url: &str, name: &str) {
    use sqlx::Connection as _;
    if let Ok(mut admin) = sqlx::PgConnection::connect(url).await {
        let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        if let Err(e) = dropped {
            eprintln!("could not drop database {name}: {e}");
        }
        let _ = admin.close().await;
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "the PostgreSQL URL".to_owned(),
    }
}
