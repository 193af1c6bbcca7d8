//! Every identity setting: the shortcuts, the file's tables, and a message that names the fix
//! for each bad one.

use url::Url;

use crate::config::idp::*;

fn inputs() -> IdentityInputs {
    IdentityInputs::default()
}

fn oidc(name: &str, issuer: &str) -> OidcSettings {
    OidcSettings {
        name: name.into(),
        issuer: issuer.into(),
        audience: "client".into(),
        ..OidcSettings::default()
    }
}

#[test]
fn firebase_shortcut() {
    let c = resolve(
        IdentityInputs {
            firebase_project: Some("my-project".into()),
            ..inputs()
        },
        &[],
    )
    .unwrap();
    let p = &c.oidc[0];
    assert_eq!(p.issuer, "https://securetoken.google.com/my-project");
    assert_eq!(p.client_ids, vec!["my-project".to_owned()]);
    assert_eq!(
        p.keys,
        KeySource::Jwks(Url::parse(FIREBASE_JWKS_URL).unwrap())
    );
    assert_eq!(p.verifier(), "oidc:firebase");
}

#[test]
fn discovery_is_the_default() {
    let c = resolve(
        IdentityInputs {
            oidc: vec![oidc("auth0", "https://tenant.auth0.com/")],
            ..inputs()
        },
        &[],
    )
    .unwrap();
    assert_eq!(
        c.oidc[0].keys,
        KeySource::Discovery(
            Url::parse("https://tenant.auth0.com/.well-known/openid-configuration").unwrap()
        )
    );
}

#[test]
fn bad_settings_say_how_to_fix_them() {
    let cases: Vec<(IdentityInputs, &str)> = vec![
        (
            IdentityInputs {
                oidc: vec![oidc("x", "http://idp.example.dev")],
                ..inputs()
            },
            "plain http",
        ),
        (
            IdentityInputs {
                oidc: vec![oidc("Bad Name", "https://idp.example.dev")],
                ..inputs()
            },
            "name",
        ),
        (
            IdentityInputs {
                oidc: vec![OidcSettings {
                    audience: String::new().into(),
                    ..oidc("x", "https://idp.example.dev")
                }],
                ..inputs()
            },
            "audience",
        ),
        (
            IdentityInputs {
                oidc: vec![OidcSettings {
                    algorithms: Some(vec!["HS256".into()]),
                    ..oidc("x", "https://idp.example.dev")
                }],
                ..inputs()
            },
            "never accepted",
        ),
        (
            IdentityInputs {
                oidc: vec![
                    oidc("a", "https://idp.example.dev"),
                    oidc("a", "https://idp2.example.dev"),
                ],
                ..inputs()
            },
            "named",
        ),
        (
            IdentityInputs {
                oidc: vec![OidcSettings {
                    cookie: Some("podgate_session".into()),
                    ..oidc("x", "https://idp.example.dev")
                }],
                ..inputs()
            },
            "podgate's own cookie",
        ),
        (
            IdentityInputs {
                firebase_project: Some("My Project".into()),
                ..inputs()
            },
            "PODGATE_FIREBASE_PROJECT",
        ),
        (
            IdentityInputs {
                oidc_issuer: Some("https://accounts.google.com".into()),
                ..inputs()
            },
            "go together",
        ),
        (
            IdentityInputs {
                app_session: AppSessionSettings {
                    url: Some("http://app.example.dev/api/auth/session".into()),
                    ..AppSessionSettings::default()
                },
                ..inputs()
            },
            "plain http",
        ),
        (
            IdentityInputs {
                app_session: AppSessionSettings {
                    cookie: Some(vec!["sid".into()]),
                    ..AppSessionSettings::default()
                },
                ..inputs()
            },
            "PODGATE_APP_SESSION_URL",
        ),
        (
            IdentityInputs {
                app_session: AppSessionSettings {
                    url: Some("https://app.example.dev/api/auth/session".into()),
                    user_id_pointer: Some("user.id".into()),
                    ..AppSessionSettings::default()
                },
                ..inputs()
            },
            "JSON pointer",
        ),
        (
            IdentityInputs {
                app_session: AppSessionSettings {
                    url: Some("https://app.example.dev/api/auth/session".into()),
                    cache_secs: Some(600),
                    ..AppSessionSettings::default()
                },
                ..inputs()
            },
            "signed-out",
        ),
        (
            IdentityInputs {
                cors_origins: Some(vec!["https://app.example.dev/path".into()]),
                ..inputs()
            },
            "bare origin",
        ),
    ];
    for (i, needle) in cases {
        let msg = resolve(i, &["podgate_session"]).unwrap_err().to_string();
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
}

#[test]
fn toml_file_form() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("podgate.toml");
    std::fs::write(
        &path,
        r#"
dev_mode = true
admin_token = "0123456789abcdef0123456789abcdef"
xds_listen = "off"
cors_origins = ["https://app.example.dev"]

[[oidc]]
name = "firebase"
issuer = "https://securetoken.google.com/my-project"
audience = "my-project"
jwks_url = "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com"
cookie = "__session"

[[oidc]]
name = "keycloak"
issuer = "https://sso.example.dev/realms/myrealm"
audience = "podgate"
user_prefix = "kc-"

[app_session]
url = "https://app.example.dev/api/auth/session"
cookie = ["next-auth.session-token"]
user_id_pointer = "/user/sub"
"#,
    )
    .unwrap();
    let c = crate::config::Settings {
        config: Some(path.clone()),
        ..crate::config::Settings::default()
    }
    .with_file()
    .unwrap()
    .resolve(crate::config::Need::Server)
    .unwrap();
    let id = &c.identity;
    assert_eq!(id.oidc.len(), 2);
    assert_eq!(id.oidc[0].cookie.as_deref(), Some("__session"));
    assert_eq!(
        id.oidc[1].keys,
        KeySource::Discovery(
            Url::parse("https://sso.example.dev/realms/myrealm/.well-known/openid-configuration")
                .unwrap()
        )
    );
    let app = id.app_session.as_ref().unwrap();
    assert_eq!(app.user_id_pointer, "/user/sub");
    assert_eq!(app.cookies, vec!["next-auth.session-token".to_owned()]);
    assert_eq!(id.cors_origins, vec!["https://app.example.dev".to_owned()]);

    std::fs::write(&path, "[[oidc]]\nname = \"x\"\nissuer = \"https://i.example.dev\"\naudience = \"a\"\njwks = \"typo\"\n").unwrap();
    let e = crate::config::Settings {
        config: Some(path),
        ..crate::config::Settings::default()
    }
    .with_file()
    .unwrap_err()
    .to_string();
    assert!(e.contains("jwks"), "{e}");
}

#[test]
fn several_client_ids_per_issuer() {
    // The file's list form, its single-id form, and the flag's comma-separated form.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("podgate.toml");
    std::fs::write(
        &path,
        r#"
dev_mode = true
admin_token = "0123456789abcdef0123456789abcdef"
xds_listen = "off"

[[oidc]]
name = "google"
issuer = "https://accounts.google.com"
audience = ["web.apps.googleusercontent.com", " cli.apps.googleusercontent.com ", "web.apps.googleusercontent.com"]

[[oidc]]
name = "one"
issuer = "https://one.example.dev"
audience = "only"
"#,
    )
    .unwrap();
    let c = crate::config::Settings {
        config: Some(path.clone()),
        ..crate::config::Settings::default()
    }
    .with_file()
    .unwrap()
    .resolve(crate::config::Need::Server)
    .unwrap();
    assert_eq!(
        c.identity.oidc[0].client_ids,
        vec![
            "web.apps.googleusercontent.com".to_owned(),
            "cli.apps.googleusercontent.com".to_owned()
        ]
    );
    assert_eq!(c.identity.oidc[1].client_ids, vec!["only".to_owned()]);
    assert!(c.identity.oidc[0].require_email_verified);

    std::fs::write(
        &path,
        "[[oidc]]\nname = \"x\"\nissuer = \"https://i.example.dev\"\naudience = 5\n",
    )
    .unwrap();
    let e = crate::config::Settings {
        config: Some(path),
        ..crate::config::Settings::default()
    }
    .with_file()
    .unwrap_err()
    .to_string();
    assert!(e.contains("list of client ids"), "{e}");

    let c = resolve(
        IdentityInputs {
            oidc_issuer: Some("https://sso.example.dev".into()),
            oidc_audience: Some("web, cli".into()),
            ..inputs()
        },
        &[],
    )
    .unwrap();
    assert_eq!(
        c.oidc[0].client_ids,
        vec!["web".to_owned(), "cli".to_owned()]
    );
}

#[test]
fn advice_names_what_the_operator_set() {
    // Two entries for one issuer: the advice (one entry, every client id in its audience)
    // can be followed now.
    let msg = resolve(
        IdentityInputs {
            oidc: vec![
                oidc("web", "https://accounts.google.com"),
                oidc("cli", "https://accounts.google.com"),
            ],
            ..inputs()
        },
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("audience = ["), "{msg}");
    // Made by the environment shortcut: the message names the variables, not a table.
    for (issuer, audience, needle) in [
        ("http://sso.example.dev", "web", "PODGATE_OIDC_ISSUER"),
        ("", "web", "PODGATE_OIDC_ISSUER"),
        ("https://sso.example.dev", " , ", "PODGATE_OIDC_AUDIENCE"),
    ] {
        let msg = resolve(
            IdentityInputs {
                oidc_issuer: Some(issuer.into()),
                oidc_audience: Some(audience.into()),
                ..inputs()
            },
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
        assert!(!msg.contains("[[oidc]] \"oidc\""), "{msg}");
    }
    // The refetch interval is bounded: a rotated-in key waits up to it.
    for bad in [0, 11, 30] {
        let msg = resolve(
            IdentityInputs {
                oidc: vec![OidcSettings {
                    min_refresh_secs: Some(bad),
                    ..oidc("x", "https://idp.example.dev")
                }],
                ..inputs()
            },
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("leave it out for 5"), "{msg}");
    }
}

#[test]
fn loopback_http_is_allowed() {
    let c = resolve(
        IdentityInputs {
            oidc: vec![oidc("local", "http://127.0.0.1:9999")],
            app_session: AppSessionSettings {
                url: Some("http://localhost:3000/api/auth/session".into()),
                ..AppSessionSettings::default()
            },
            cors_origins: Some(vec!["http://localhost:3000".into()]),
            ..inputs()
        },
        &[],
    )
    .unwrap();
    assert_eq!(c.oidc.len(), 1);
    let a = c.app_session.unwrap();
    assert_eq!(a.cookies.len(), 2);
    assert_eq!(a.user_id_pointer, "/user/id");
    assert_eq!(c.cors_origins, vec!["http://localhost:3000".to_owned()]);
}
