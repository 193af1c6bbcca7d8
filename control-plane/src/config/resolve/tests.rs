//! Defaults, and a message that names the fix for every bad setting.

use std::path::PathBuf;

use crate::config::*;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn base() -> Settings {
    Settings {
        admin_token: Some(TOKEN.into()),
        dev_mode: Some(true),
        xds_listen: Some("off".into()),
        ..Settings::default()
    }
}

#[test]
fn xds_needs_an_existing_filter_wasm_and_makes_its_path_absolute() {
    let on = |wasm: Option<&str>| Settings {
        xds_listen: None,
        filter_wasm: wasm.map(PathBuf::from),
        ..base()
    };
    assert!(err(on(None)).contains("PODGATE_FILTER_WASM"));
    assert!(err(on(Some("/nonexistent/podgate_filter.wasm"))).contains("is not a file"));
    assert!(err(Settings {
        xds_listen: Some("18000".into()),
        ..on(Some("Cargo.toml"))
    })
    .contains("PODGATE_XDS_LISTEN"));
    assert!(err(Settings {
        key_publish_delay_secs: Some(3600),
        ..base()
    })
    .contains("PODGATE_KEY_PUBLISH_DELAY_SECS"));
    // Any existing file will do for the check; the path handed to Envoy is absolute.
    let c = on(Some("Cargo.toml")).resolve(Need::Server).unwrap();
    let xds = c.xds.clone().unwrap();
    assert_eq!(xds.listen.to_string(), DEFAULT_XDS_LISTEN);
    assert!(xds.filter_wasm.is_absolute());
    assert_eq!(c.key_publish_delay, DEFAULT_KEY_PUBLISH_DELAY);
    assert_eq!(c.rotation_overlap(), (DEFAULT_KEY_OVERLAP + 5) as i64);
    // `off`, and commands other than serve, run no xDS.
    assert!(base().resolve(Need::Server).unwrap().xds.is_none());
    assert!(on(None).resolve(Need::DatabaseOnly).unwrap().xds.is_none());
}

fn err(s: Settings) -> String {
    s.resolve(Need::Server).unwrap_err().to_string()
}

#[test]
fn defaults() {
    let c = base().resolve(Need::Server).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.database_url, "sqlite://podgate.db");
    assert_eq!(c.issuer, "http://127.0.0.1:8080");
    assert_eq!(
        c.login_url.as_deref(),
        Some("http://127.0.0.1:8080/dev/login")
    );
    assert_eq!(c.pod_public_port, Some(10000));
    assert_eq!(c.capability_lifetime, 900);
    assert_eq!(c.ticket_lifetime, 60);
    assert_eq!(c.cookie_samesite, SameSite::Lax);
    assert_eq!(c.signing_alg, SigningAlg::Eddsa);
    assert_eq!(c.limits, limits::LimitsConfig::default());
    assert_eq!(
        c.pod_origin("localhost-8726-pod-myslug.localhost"),
        "http://localhost-8726-pod-myslug.localhost:10000"
    );
}

#[test]
fn every_bad_setting_says_how_to_fix_it() {
    let cases: Vec<(Settings, &str)> = vec![
        (
            Settings {
                admin_token: None,
                ..base()
            },
            "PODGATE_ADMIN_TOKEN",
        ),
        (
            Settings {
                admin_token: Some("short".into()),
                ..base()
            },
            "fewer than 32",
        ),
        (
            Settings {
                listen: Some("localhost".into()),
                ..base()
            },
            "PODGATE_LISTEN",
        ),
        (
            Settings {
                database_url: Some("mysql://x".into()),
                ..base()
            },
            "PODGATE_DATABASE_URL",
        ),
        (
            Settings {
                database_max_connections: Some(0),
                ..base()
            },
            "at least 1",
        ),
        (
            Settings {
                issuer: Some("ftp://x".into()),
                ..base()
            },
            "PODGATE_ISSUER",
        ),
        (
            Settings {
                public_scheme: Some("gopher".into()),
                ..base()
            },
            "PODGATE_PUBLIC_SCHEME",
        ),
        (
            Settings {
                domain: Some("Bad Domain".into()),
                ..base()
            },
            "PODGATE_DOMAIN",
        ),
        (
            Settings {
                host_template: Some("{pod}.{domain}".into()),
                ..base()
            },
            "PODGATE_HOST_TEMPLATE",
        ),
        (
            Settings {
                pod_public_port: Some(0),
                ..base()
            },
            "PODGATE_POD_PUBLIC_PORT",
        ),
        (
            Settings {
                dev_mode: Some(false),
                ..base()
            },
            "PODGATE_LOGIN_URL",
        ),
        (
            Settings {
                login_url: Some("/login".into()),
                ..base()
            },
            "PODGATE_LOGIN_URL",
        ),
        (
            Settings {
                dev_mode: Some(false),
                login_url: Some("https://app.example.dev/login".into()),
                ..base()
            },
            "PODGATE_KEY_ENCRYPTION_KEY_FILE",
        ),
        (
            Settings {
                key_encryption_key: Some("not a key".into()),
                ..base()
            },
            "gen-kek",
        ),
        (
            Settings {
                capability_lifetime_secs: Some(5),
                ..base()
            },
            "PODGATE_CAPABILITY_LIFETIME_SECS",
        ),
        (
            Settings {
                ticket_lifetime_secs: Some(600),
                ..base()
            },
            "PODGATE_TICKET_LIFETIME_SECS",
        ),
        (
            Settings {
                session_lifetime_secs: Some(1),
                ..base()
            },
            "PODGATE_SESSION_LIFETIME_SECS",
        ),
        (
            Settings {
                cookie_samesite: Some("none".into()),
                ..base()
            },
            "https",
        ),
        (
            Settings {
                cookie_samesite: Some("loose".into()),
                ..base()
            },
            "PODGATE_COOKIE_SAMESITE",
        ),
        (
            Settings {
                signing_alg: Some("rs256".into()),
                ..base()
            },
            "PODGATE_SIGNING_ALG",
        ),
        (
            Settings {
                key_overlap_secs: Some(10),
                ..base()
            },
            "PODGATE_KEY_OVERLAP_SECS",
        ),
        (
            Settings {
                log_format: Some("xml".into()),
                ..base()
            },
            "PODGATE_LOG_FORMAT",
        ),
        (
            Settings {
                callback_failures_per_minute: Some(0),
                ..base()
            },
            "PODGATE_CALLBACK_FAILURES_PER_MINUTE",
        ),
        (
            Settings {
                max_header_bytes: Some(100),
                ..base()
            },
            "PODGATE_MAX_HEADER_BYTES",
        ),
        (
            Settings {
                rate_limit_clients: Some(0),
                ..base()
            },
            "PODGATE_RATE_LIMIT_CLIENTS",
        ),
    ];
    for (settings, needle) in cases {
        let msg = err(settings);
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
}

#[test]
fn migrate_needs_no_admin_token() {
    let s = Settings {
        admin_token: None,
        dev_mode: None,
        ..Settings::default()
    };
    assert!(s.resolve(Need::DatabaseOnly).is_ok());
}

#[test]
fn https_drops_default_port_and_allows_samesite_none() {
    let c = Settings {
        public_scheme: Some("https".into()),
        pod_public_port: Some(443),
        cookie_samesite: Some("none".into()),
        ..base()
    }
    .resolve(Need::Server)
    .unwrap();
    assert_eq!(c.pod_origin("h.example.dev"), "https://h.example.dev");
    assert_eq!(c.cookie_samesite, SameSite::None);
}

#[test]
fn passwords_are_redacted() {
    assert_eq!(
        redact_url("postgres://u:secret@h/db"),
        "postgres://u:***@h/db"
    );
    // PostgreSQL also takes it as a query parameter.
    assert_eq!(
        redact_url("postgres://u@h/db?sslmode=require&password=s3cret&PGSSLPASSWORD=k"),
        "postgres://u@h/db?sslmode=require&password=***&PGSSLPASSWORD=***"
    );
    assert_eq!(
        redact_url("sqlite://podgate.db?mode=rwc"),
        "sqlite://podgate.db?mode=rwc"
    );
}

#[test]
fn mutual_tls_with_envoy_needs_all_three_files_and_its_own_address() {
    let dir = tempfile::tempdir().unwrap();
    crate::tls::generate_test_certs(dir.path(), &[]).unwrap();
    let file = |name: &str| Some(dir.path().join(name));
    let on = || Settings {
        envoy_tls_cert: file(crate::tls::TEST_SERVER_CERT),
        envoy_tls_key: file(crate::tls::TEST_SERVER_KEY),
        envoy_client_ca: file(crate::tls::TEST_CA),
        ..base()
    };
    assert!(base().resolve(Need::Server).unwrap().envoy_tls.is_none());
    let c = on().resolve(Need::Server).unwrap();
    let tls = c.envoy_tls.unwrap();
    assert_eq!(tls.listen.to_string(), DEFAULT_ENVOY_LISTEN);
    assert_eq!(tls.files.client_ca, dir.path().join(crate::tls::TEST_CA));

    let e = err(Settings {
        envoy_client_ca: None,
        ..on()
    });
    assert!(
        e.contains("PODGATE_ENVOY_CLIENT_CA") && !e.contains("PODGATE_ENVOY_TLS_KEY"),
        "{e}"
    );
    let e = err(Settings {
        envoy_listen: Some("127.0.0.1:8443".into()),
        ..base()
    });
    assert!(e.contains("without mutual TLS"), "{e}");
    let e = err(Settings {
        envoy_listen: Some("8443".into()),
        ..on()
    });
    assert!(e.contains("PODGATE_ENVOY_LISTEN"), "{e}");
    let e = err(Settings {
        envoy_listen: Some(DEFAULT_LISTEN.into()),
        ..on()
    });
    assert!(e.contains("--listen"), "{e}");
    let e = err(Settings {
        envoy_tls_key: file(crate::tls::TEST_CLIENT_KEY),
        ..on()
    });
    assert!(e.contains("do not make a TLS identity"), "{e}");
    // Commands other than `serve` do not read the files.
    assert!(Settings {
        envoy_client_ca: None,
        ..on()
    }
    .resolve(Need::DatabaseOnly)
    .is_ok());
}

#[test]
fn the_renew_secret_is_the_given_one_or_derived_from_the_key_encryption_key() {
    let kek = |hex: &str| Settings {
        key_encryption_key: Some(hex.into()),
        ..base()
    };
    let secret = |s: Settings| s.resolve(Need::Server).unwrap().renew_secret;
    let a = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let b = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    // Replicas sharing a key, and a restart, send Envoy the same secret; another key another.
    assert_eq!(secret(kek(a)), secret(kek(a)));
    assert_ne!(secret(kek(a)), secret(kek(b)));
    assert_eq!(secret(kek(a)).len(), 64);
    assert!(!secret(kek(a)).contains(&a[..16]), "the key shows through");
    // Given: that one, whatever the key.
    let given = "renew-secret-0123456789abcdef0123456789";
    assert_eq!(
        secret(Settings {
            renew_secret: Some(given.into()),
            ..kek(a)
        }),
        given
    );
    // A rotation rolling through: the previous key's secret is still taken, not pushed.
    let c = Settings {
        previous_key_encryption_key: Some(vec![b.into()]),
        ..kek(a)
    }
    .resolve(Need::Server)
    .unwrap();
    assert_eq!(c.renew_secret, secret(kek(a)));
    assert_eq!(c.previous_renew_secrets, vec![secret(kek(b))]);
    // No key (dev mode): a secret of the process's own.
    assert_ne!(secret(base()), secret(base()));
}
