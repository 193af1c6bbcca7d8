//! Test harness: a fresh database per test (an SQLite file, or a new PostgreSQL database when
//! `PODGATE_TEST_POSTGRES_URL` is set), the app built on it, and request helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use podgate::config::{Config, Need, Settings};
use podgate::store::Db;
use podgate::{app, AppState};
use serde_json::Value;
use tower::ServiceExt;

pub mod oidc_provider;

pub const ADMIN: &str = "test-admin-token-0123456789abcdef0123";
/// The key-encryption key of test servers (32 bytes, base64), so signing keys are stored
/// encrypted as in production.
pub const TEST_KEK: &str = "MPq19+rsfrjVMUV7IF7CqMpya+jBhj0kJ9eIFAUFAVo=";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Sqlite,
    Postgres,
}

/// The PostgreSQL URL for tests, `None` to skip outside CI. Under `CI=true` a missing URL fails.
pub fn postgres_url() -> Option<String> {
    match std::env::var("PODGATE_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but PODGATE_TEST_POSTGRES_URL is not set: PostgreSQL tests must run in CI (scripts/pg-test.sh prints the URL)");
            }
            eprintln!("PODGATE_TEST_POSTGRES_URL not set: skipping the PostgreSQL variant");
            None
        }
    }
}

/// A fresh, migrated database that is removed when the test finishes.
pub struct TestDb {
    pub db: Db,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    pub async fn new(which: Which) -> Option<TestDb> {
        Self::create(which, true).await
    }

    /// A fresh database with no migration applied (for upgrade tests).
    pub async fn unmigrated(which: Which) -> Option<TestDb> {
        Self::create(which, false).await
    }

    async fn create(which: Which, migrate: bool) -> Option<TestDb> {
        match which {
            Which::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("podgate.db").display());
                let db = Db::connect(&url, 4).await.unwrap();
                if migrate {
                    db.migrate().await.unwrap();
                }
                Some(TestDb {
                    db,
                    url,
                    cleanup: Cleanup::File(dir),
                })
            }
            Which::Postgres => {
                let admin_url = postgres_url()?;
                let name = format!("podgate_test_{}", podgate::keys::random_id().unwrap());
                let admin = Db::connect(&admin_url, 1).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(admin.pool())
                    .await
                    .unwrap();
                admin.close().await;
                let mut url = url::Url::parse(&admin_url).unwrap();
                url.set_path(&format!("/{name}"));
                let url = url.to_string();
                let db = Db::connect(&url, 4).await.unwrap();
                if migrate {
                    db.migrate().await.unwrap();
                }
                Some(TestDb {
                    db,
                    url,
                    cleanup: Cleanup::Postgres { admin_url, name },
                })
            }
        }
    }

    pub async fn finish(self) {
        self.db.close().await;
        if let Cleanup::Postgres { admin_url, name } = &self.cleanup {
            let admin = Db::connect(admin_url, 1).await.unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(admin.pool())
                .await;
            admin.close().await;
        }
    }
}

/// A running app on a fresh database.
pub struct Harness {
    pub tdb: TestDb,
    pub state: AppState,
    pub app: Router,
}

/// Test settings: dev mode on, a fixed admin token, a fixed key-encryption key, defaults
/// elsewhere.
pub fn settings(url: &str) -> Settings {
    Settings {
        database_url: Some(url.to_owned()),
        admin_token: Some(ADMIN.to_owned()),
        key_encryption_key: Some(TEST_KEK.to_owned()),
        dev_mode: Some(true),
        // In-process tests serve no ADS (tests/xds_live.rs runs the binary with it).
        xds_listen: Some("off".to_owned()),
        ..Settings::default()
    }
}

impl Harness {
    pub async fn new(which: Which) -> Option<Harness> {
        Self::with(which, |s| s).await
    }

    pub async fn with(which: Which, f: impl FnOnce(Settings) -> Settings) -> Option<Harness> {
        let tdb = TestDb::new(which).await?;
        let config: Config = f(settings(&tdb.url)).resolve(Need::Server).unwrap();
        let state = AppState::new(config, tdb.db.clone()).await.unwrap();
        let app = app(state.clone());
        Some(Harness { tdb, state, app })
    }

    /// The default harness on a database pool of `connections` connections (4 otherwise).
    pub async fn with_connections(which: Which, connections: u32) -> Option<Harness> {
        let mut tdb = TestDb::new(which).await?;
        tdb.db = Db::connect(&tdb.url, connections).await.unwrap();
        let config: Config = settings(&tdb.url).resolve(Need::Server).unwrap();
        let state = AppState::new(config, tdb.db.clone()).await.unwrap();
        let app = app(state.clone());
        Some(Harness { tdb, state, app })
    }

    /// Makes every cut fail (the table is renamed away), as a database error between a change
    /// and its cut would, or puts the table back.
    pub async fn cuts_fail(&self, fail: bool) {
        let (from, to) = if fail {
            ("access_cuts", "access_cuts_away")
        } else {
            ("access_cuts_away", "access_cuts")
        };
        sqlx::query(&format!("ALTER TABLE {from} RENAME TO {to}"))
            .execute(self.tdb.db.pool())
            .await
            .unwrap();
    }

    /// Sends an admin request while every cut fails (as a database error part way through
    /// would), and checks it fails as a whole (a 5xx); the cuts work again afterwards.
    pub async fn admin_while_cuts_fail(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) {
        self.cuts_fail(true).await;
        let r = self.admin(method, path, body).await;
        self.cuts_fail(false).await;
        assert!(r.status.is_server_error(), "{} {}", r.status, r.body);
    }

    pub async fn finish(self) {
        self.tdb.finish().await;
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        send_to(&self.app, req).await
    }

    /// An admin API call with a JSON body (or none).
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"));
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(b.body(body).unwrap()).await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut b = Request::builder().uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    /// A call only Envoy's filter makes (`/api/proxy-renew`, `/api/proxy-wake`,
    /// `/api/proxy-exchange?...`): `POST path` with the renewal secret and the credential as a
    /// bearer, each when given, and these extra headers.
    pub async fn as_envoy(
        &self,
        path: &str,
        secret: Option<&str>,
        bearer: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let mut req = Request::builder().method(Method::POST).uri(path);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        if let Some(s) = secret {
            req = req.header("podgate-renew-secret", s);
        }
        if let Some(c) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {c}"));
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    /// A browser capability for myslug:8726, as the flow gives one to the browser signed in
    /// with `session`: the auth endpoint's ticket redeemed at the pod host's callback.
    pub async fn browser_capability(&self, session: &str) -> String {
        let (host, ticket) = self.login_ticket(session).await;
        let r = self.send(callback(&host, &ticket)).await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        capability_cookie(&r)
    }

    /// The pod host and the login ticket the auth endpoint gives the browser signed in with
    /// `session` for myslug:8726.
    pub async fn login_ticket(&self, session: &str) -> (String, String) {
        let r = self
            .get(
                "/api/proxy-auth?pod=myslug&port=8726&next=%2F",
                &[("cookie", session), ("accept", "text/html")],
            )
            .await;
        assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
        ticket_of(&r)
    }

    /// Another control plane on this harness's database, with its configuration: the app it
    /// serves.
    pub async fn replica(&self) -> Router {
        let state = AppState::new(self.state.config().clone(), self.tdb.db.clone())
            .await
            .unwrap();
        app(state)
    }

    /// `GET /metrics`, checked to be OpenMetrics text and read with a Prometheus text-format
    /// parser.
    pub async fn metrics(&self) -> prometheus_parse::Scrape {
        let r = self.get("/metrics", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/openmetrics-text")),
            "{r:?}"
        );
        assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
        prometheus_parse::Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    /// `POST /api/proxy-tokens {name}` as `session`: `(id, token)`.
    pub async fn api_token(&self, session: &str, name: &str) -> (String, String) {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/proxy-tokens")
            .header(header::COOKIE, session)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::json!({ "name": name }).to_string()))
            .unwrap();
        let r = self.send(req).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let v = r.json();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Signs in through the dev login; returns the `Cookie` header value for the session.
    pub async fn login(&self, user: &str) -> String {
        let r = self.get(&format!("/dev/login?user={user}"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let set = r.header("set-cookie").unwrap();
        set.split(';').next().unwrap().to_owned()
    }

    /// users alice (owner), bob (team member), carol (outsider); team t1; server s1;
    /// pod `myslug` owned by alice in t1.
    /// `with`, then `seed`: a harness with custom settings and the usual users and pods.
    pub async fn seeded(which: Which, f: impl FnOnce(Settings) -> Settings) -> Option<Harness> {
        let h = Harness::with(which, f).await?;
        h.seed().await;
        Some(h)
    }

    pub async fn seed(&self) {
        for (id, email) in [
            ("alice", "alice@example.dev"),
            ("bob", "bob@example.dev"),
            ("carol", "carol@example.dev"),
        ] {
            let r = self
                .admin(
                    Method::POST,
                    "/v1/users",
                    Some(serde_json::json!({"id": id, "email": email, "name": id})),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        }
        let r = self
            .admin(
                Method::POST,
                "/v1/teams",
                Some(serde_json::json!({"id": "t1", "name": "Team one"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let r = self
            .admin(
                Method::POST,
                "/v1/teams/t1/members",
                Some(serde_json::json!({"user_id": "bob"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let r = self
            .admin(
                Method::POST,
                "/v1/servers",
                Some(serde_json::json!({"id": "s1", "address": "127.0.0.1"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let r = self
            .admin(
                Method::POST,
                "/v1/pods",
                Some(serde_json::json!({"slug": "myslug", "owner_id": "alice", "team_id": "t1", "server_id": "s1", "status": "running", "nginx_port": 30001})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// The value of the one sample `name` whose labels include `labels` in a scrape (0 when there
/// is none; a histogram gives its count).
pub fn metric(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => panic!("{name} is a summary"),
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().copied().unwrap_or(0.0)
}

/// The pod host (with its port, if any) and the login ticket of the auth endpoint's redirect.
pub fn ticket_of(r: &Resp) -> (String, String) {
    let loc = url::Url::parse(r.header("location").unwrap()).unwrap();
    let ticket = loc
        .query_pairs()
        .find(|(k, _)| k == "ticket")
        .unwrap()
        .1
        .into_owned();
    let host = match loc.port() {
        Some(port) => format!("{}:{port}", loc.host_str().unwrap()),
        None => loc.host_str().unwrap().to_owned(),
    };
    (host, ticket)
}

/// The capability the callback's answer sets in its cookie.
pub fn capability_cookie(r: &Resp) -> String {
    r.header("set-cookie")
        .unwrap()
        .strip_prefix("podgate_cap=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// The pod host's callback request that redeems `ticket`, as the browser sends it.
pub fn callback(host: &str, ticket: &str) -> Request<Body> {
    Request::builder()
        .uri(format!(
            "/.podgate/callback?ticket={}&next=%2F",
            podgate_protocol::redirect::encode_query_value(ticket)
        ))
        .header(header::HOST, host)
        .body(Body::empty())
        .unwrap()
}

/// Sends `req` to `app` (a [`Harness::replica`]).
pub async fn send_to(app: &Router, req: Request<Body>) -> Resp {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Defines `NAME::sqlite` and `NAME::postgres` tests that run the async fn `NAME(Which)` (which
/// sets its own harness up, e.g. with `Harness::seeded`).
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Which::Sqlite).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Which::Postgres).await;
            }
        }
    };
}

/// Defines `NAME_sqlite` and `NAME_postgres` tests that run `body(&Harness)`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                let h = $crate::common::Harness::new($crate::common::Which::Sqlite)
                    .await
                    .unwrap();
                $body(&h).await;
                h.finish().await;
            }
            #[tokio::test]
            async fn postgres() {
                let Some(h) = $crate::common::Harness::new($crate::common::Which::Postgres).await
                else {
                    return;
                };
                $body(&h).await;
                h.finish().await;
            }
        }
    };
}
