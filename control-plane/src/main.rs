//! `podgate serve | migrate | keys rotate | keys list | keys rewrap | keys gen-kek`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use podgate::config::{redact_url, Cli, Command, Config, KeysCommand, LogFormat, Need, TlsCommand};
use podgate::key_encryption::{self, KeyEncryptionKey};
use podgate::store::{now_unix, Db};
use podgate::{app, envoy_app, keys, metrics_app, replicas, tls, xds_sync, AppState};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Making a key needs no configuration (and must work before any key exists).
    if let Command::Keys {
        command: KeysCommand::GenKek { file },
    } = &cli.command
    {
        return match gen_kek(file.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("podgate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Test certificates need no configuration either.
    if let Command::Tls {
        command: TlsCommand::GenTestCerts { dir, server_names },
    } = &cli.command
    {
        return match tls::generate_test_certs(dir, server_names) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("podgate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let need = match cli.command {
        Command::Serve => Need::Server,
        _ => Need::DatabaseOnly,
    };
    let config = match cli.settings.with_file().and_then(|s| s.resolve(need)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("podgate: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let result = match cli.command {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(&config).await.map(|_| ()),
        Command::Keys { command } => keys_command(&config, command).await,
        // Handled before the configuration is read.
        Command::Tls { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "podgate failed");
            eprintln!("podgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr, so command output (e.g. `keys list`) stays clean on stdout.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn migrate(config: &Config) -> Result<Db, String> {
    let url = redact_url(&config.database_url);
    let db = Db::connect(&config.database_url, config.database_max_connections)
        .await
        .map_err(|e| format!("cannot open the database {url}: {e}; check PODGATE_DATABASE_URL"))?;
    db.migrate()
        .await
        .map_err(|e| format!("migrating {url} failed: {e}"))?;
    tracing::info!(database = %url, "migrations applied");
    Ok(db)
}

fn gen_kek(file: Option<&std::path::Path>) -> Result<(), String> {
    let kek = KeyEncryptionKey::generate().map_err(|e| e.to_string())?;
    match file {
        Some(path) => {
            key_encryption::write_new_key_file(path, &kek).map_err(|e| {
                let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                    " (an existing key file is never overwritten: losing a key-encryption key loses every signing key under it)"
                } else {
                    ""
                };
                format!("cannot create {}: {e}{why}", path.display())
            })?;
            println!(
                "wrote key-encryption key {} to {} (readable by its owner only); set PODGATE_KEY_ENCRYPTION_KEY_FILE={} and keep a copy apart from the database and its backups: without it the signing keys cannot be read",
                kek.id(),
                path.display(),
                path.display()
            );
        }
        None => {
            println!("{}", &*kek.to_base64());
            eprintln!("key-encryption key id {}", kek.id());
        }
    }
    Ok(())
}

/// Commands that write signing keys need a key-encryption key outside dev mode, like `serve`.
fn require_kek(config: &Config) -> Result<(), String> {
    if config.key_encryption.current().is_none() && !config.dev_mode {
        return Err(format!(
            "no key-encryption key: signing keys are stored encrypted. Set PODGATE_KEY_ENCRYPTION_KEY_FILE (or --key-encryption-key-file) to the key `podgate serve` uses; create one with {}",
            key_encryption::HOW_TO_GENERATE
        ));
    }
    Ok(())
}

async fn keys_command(config: &Config, command: KeysCommand) -> Result<(), String> {
    let db = migrate(config).await?;
    let now = now_unix();
    let kek = &config.key_encryption;
    match command {
        KeysCommand::Rotate => {
            require_kek(config)?;
            keys::ensure(&db, config.signing_alg, now, kek)
                .await
                .map_err(|e| e.to_string())?;
            // Every live key must open with these settings, so the new keys are sealed under a
            // key-encryption key the servers have too.
            keys::load(&db, config, now)
                .await
                .map_err(|e| format!("{e}; the new keys would be encrypted with the same settings, so nothing was changed"))?;
            let kids = keys::rotate(&db, config.signing_alg, now, config.rotation_overlap(), kek)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "new active keys: {}; the previous keys keep verifying for {} s (running servers publish the new capability key to Envoy at once on PostgreSQL, within {} s on SQLite, and sign with it once every Envoy has it)",
                kids.join(", "),
                config.rotation_overlap(),
                podgate::config::DEFAULT_XDS_RESYNC
            );
        }
        KeysCommand::List => {
            for k in db.live_keys(now).await.map_err(|e| e.to_string())? {
                let state = match k.verify_until {
                    None => "active".to_owned(),
                    Some(t) => format!("verifying until {t}"),
                };
                let at_rest = match k.material.kek_id() {
                    Some(id) => format!("encrypted with {id}"),
                    None => "plaintext".to_owned(),
                };
                println!(
                    "{}\t{}\t{}\t{state}\t{at_rest}",
                    k.kid,
                    k.kind.as_str(),
                    k.alg
                );
            }
        }
        KeysCommand::Rewrap => {
            let report = keys::reseal(&db, kek, keys::Reseal::All)
                .await
                .map_err(|e| format!("{e}; nothing was changed"))?;
            let current = kek.current().map(|k| k.id().to_owned()).unwrap_or_default();
            let (services, services_current) = podgate::services::rewrap(&db, kek)
                .await
                .map_err(|e| format!("signing keys re-encrypted, service credentials not: {e}"))?;
            println!(
                "re-encrypted {} signing keys with key-encryption key {current} ({} already were) and {services} service credentials ({services_current} already were); everything stored is now encrypted with it, so previous key-encryption keys are no longer needed",
                report.resealed.len(),
                report.already_current
            );
        }
        KeysCommand::GenKek { file } => gen_kek(file.as_deref())?,
    }
    db.close().await;
    Ok(())
}

async fn serve(config: Config) -> Result<(), String> {
    if config.dev_mode {
        tracing::warn!(
            "DEV MODE IS ON: /dev/login signs anyone in as any user without a password. Never run this in production."
        );
    }
    for k in config
        .key_encryption
        .current()
        .into_iter()
        .chain(config.key_encryption.previous())
    {
        if k.file().is_some_and(key_encryption::readable_by_others) {
            tracing::warn!(
                source = k.source(),
                "the key-encryption key file can be read by other users; chmod 600 it"
            );
        }
    }
    let db = migrate(&config).await?;
    let listen = config.listen;
    let state = AppState::new(config, db.clone())
        .await
        .map_err(|e| format!("loading signing keys: {e}"))?;

    // Keys rotated by another process appear, and expired ones drop out, within 30 s.
    let reload = state.clone();
    let reloader = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = reload.reload_keys().await {
                tracing::warn!(error = %e, "reloading signing keys failed; keeping the previous ones");
            }
            // Consumed tickets only matter until they expire; keep a day for forensics.
            if let Err(e) = reload.db().prune(now_unix() - 86_400).await {
                tracing::warn!(error = %e, "pruning expired tickets and sessions failed");
            }
        }
    });

    // One shutdown for the HTTP API, the xDS server and its sync task.
    let (stop, stop_requested) = tokio::sync::watch::channel(false);
    let xds = match state.config().xds.clone() {
        Some(xds) => {
            let tls = state.config().envoy_tls.as_ref().map(|t| &t.files);
            Some(xds_sync::start(state.xds_sources(), &xds, tls, stop_requested.clone()).await?)
        }
        None => {
            tracing::info!(
                "xDS is off (--xds-listen off): Envoy gets no configuration from this process"
            );
            None
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.send_replace(true);
    });
    // The services' OAuth tokens: obtained at start, renewed before they expire.
    tokio::spawn(podgate::service_oauth::run(
        state.clone(),
        xds_sync::stopped(stop_requested.clone()),
    ));
    // On PostgreSQL: this control plane's share of the rate limits, from its first request on.
    replicas::beat(&state).await;
    let replicas = tokio::spawn(replicas::run(
        state.clone(),
        xds_sync::stopped(stop_requested.clone()),
    ));

    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        format!("cannot listen on {listen}: {e}; set PODGATE_LISTEN to a free address")
    })?;
    let metrics = match state.config().metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                format!(
                    "cannot listen for metrics on {addr}: {e}; set PODGATE_METRICS_LISTEN to a free address"
                )
            })?;
            tracing::info!(listen = %addr, "metrics (GET /metrics) listening");
            let served = axum::serve(listener, metrics_app(state.clone()))
                .with_graceful_shutdown(xds_sync::stopped(stop_requested.clone()));
            Some(tokio::spawn(async move {
                if let Err(e) = served.await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            }))
        }
        None => None,
    };
    // The Envoy-facing listener: every route, over TLS with Envoy's client certificate.
    let envoy = match state.config().envoy_tls.clone() {
        Some(envoy_tls) => {
            let config = tls::server_config(&envoy_tls.files, tls::Alpn::Http)?;
            let addr = envoy_tls.listen;
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                format!(
                    "cannot listen for Envoy on {addr}: {e}; set PODGATE_ENVOY_LISTEN to a free address"
                )
            })?;
            let listener = tls::HttpListener::new(listener, config)
                .map_err(|e| format!("the Envoy-facing listener on {addr}: {e}"))?;
            tracing::info!(listen = %addr, "Envoy-facing HTTP listening (mutual TLS)");
            // `tap_io` (doing nothing) is the wrapper axum gives the peer address for any
            // listener, which the rate limits read as they do on the public listener.
            let served = axum::serve(
                axum::serve::ListenerExt::tap_io(listener, |_| {}),
                envoy_app(state.clone())
                    .into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(xds_sync::stopped(stop_requested.clone()));
            Some(tokio::spawn(async move {
                if let Err(e) = served.await {
                    tracing::error!(error = %e, "Envoy-facing server failed");
                }
            }))
        }
        None => None,
    };
    tracing::info!(%listen, issuer = %state.config().issuer, "podgate control plane listening");
    let recorder = state.recorder().clone();
    // The peer address is the client of every rate limit (unless --client-ip-header names one).
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(xds_sync::stopped(stop_requested))
    .await
    .map_err(|e| format!("server error: {e}"))?;
    if let Some(xds) = xds {
        let _ = xds.await;
    }
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    if let Some(envoy) = envoy {
        let _ = envoy.await;
    }
    let _ = replicas.await;
    reloader.abort();
    // Audit rows queued without a waiter (login tickets) are written before the pool closes.
    recorder.flush().await;
    db.close().await;
    tracing::info!("podgate stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
