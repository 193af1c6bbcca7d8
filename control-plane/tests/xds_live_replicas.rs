//! Several control planes on one PostgreSQL database (`PODGATE_TEST_POSTGRES_URL`; each test
//! on a database of its own): changes made through one reach the Envoy of another at once
//! (`NOTIFY`, not the periodic resync, which that test sets to a minute), also after the
//! listening connections are lost, with the times printed as p50/p99; a login ticket redeemed at
//! one is refused at another; a rate limit holds over both; three control planes starting
//! together on an empty database migrate it once and make one signing key per kind; an OAuth
//! service made through one gets its token at another at once, and its token cleared or
//! refreshed through one is replaced at the Envoy of another.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod xds_support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{TestDb, Which};
use reqwest::header::{ACCEPT, COOKIE, HOST, LOCATION};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Row;
use xds_support::*;

/// The periodic resync of these control planes: far longer than any change may take, so only
/// the announcement can carry a change in time.
const SLOW_RESYNC: [&str; 2] = ["--xds-resync-secs", "60"];
/// The most one change may take to reach the other Envoy: far below the resync, with room for
/// a loaded machine (the measured figures are printed, not asserted).
const WITHIN: Duration = Duration::from_secs(5);

/// A fresh, unmigrated PostgreSQL database and a key-encryption key file for the control planes
/// on it; `None` to skip (no `PODGATE_TEST_POSTGRES_URL` outside CI).
async fn shared_database() -> Option<(TestDb, tempfile::TempDir)> {
    let tdb = TestDb::unmigrated(Which::Postgres).await?;
    let dir = tempfile::tempdir().unwrap();
    make_kek(&dir.path().join("kek"));
    Some((tdb, dir))
}

/// Times from a change's answer on one control plane to the other Envoy showing it, by kind.
#[derive(Default)]
struct Timings(BTreeMap<&'static str, Vec<Duration>>);

impl Timings {
    fn add(&mut self, kind: &'static str, took: Duration) {
        self.0.entry(kind).or_default().push(took);
    }

    fn all(&self) -> Vec<Duration> {
        let mut all: Vec<Duration> = self.0.values().flatten().copied().collect();
        all.sort();
        all
    }
}

/// The `q` quantile of sorted `v` (nearest rank).
fn quantile(v: &[Duration], q: f64) -> Duration {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Polls `pod` through `envoy` with `token` until `check` accepts; the time since `since`.
async fn seen(
    http: &reqwest::Client,
    envoy: &Envoy,
    pod: &str,
    token: &str,
    since: Instant,
    what: &str,
    check: impl Fn(&Answer) -> bool,
) -> Duration {
    until(http, envoy.listener, pod, token, WITHIN, check)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    since.elapsed()
}

/// `POST /api/proxy-tokens` with a session: the token's id and secret.
async fn create_api_token(cp: &ControlPlane, session: &str, name: &str) -> (String, String) {
    let resp = client()
        .post(format!("http://{}/api/proxy-tokens", cp.http))
        .header(COOKIE, session)
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

/// `POST /v1/capabilities` with an API token: the capability.
async fn mint_with_api_token(cp: &ControlPlane, api_token: &str, pod: &str) -> String {
    let resp = client()
        .post(format!("http://{}/v1/capabilities", cp.http))
        .bearer_auth(api_token)
        .json(&json!({"pod": pod, "port": APP_PORT}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_one_control_plane_reach_the_envoy_of_another_at_once() {
    let Some((tdb, dir)) = shared_database().await else {
        return;
    };
    let kek = dir.path().join("kek");
    let envoy_port = free_port();
    let one = ControlPlane::start_sharing(envoy_port, &tdb.url, &kek, None, &SLOW_RESYNC).await;
    let two =
        ControlPlane::start_sharing(envoy_port, &tdb.url, &kek, Some(&one.issuer), &SLOW_RESYNC)
            .await;
    // The only Envoy, fed by the second control plane; every change goes through the first.
    let envoy = Envoy::start(envoy_port, two.xds.port(), two.http.port()).await;
    let logs = || {
        format!(
            "--- podgate 1 ---\n{}\n--- podgate 2 ---\n{}\n--- envoy ---\n{}",
            one.log(),
            two.log(),
            envoy.log()
        )
    };
    let http = client();
    let pod = FakePod::start_on("pod", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = pod.addr().port();
    one.create_user(USER).await;
    one.create_server(SERVER, IpAddr::from([127, 0, 0, 1]))
        .await;
    let alice = one.session(USER).await;
    one.admin(
        Method::POST,
        "/v1/teams",
        Some(json!({"id": "t1", "name": "Team one"})),
    )
    .await;
    one.admin(
        Method::POST,
        "/v1/pods",
        Some(json!({"slug": "shared", "owner_id": USER, "team_id": "t1", "server_id": SERVER, "nginx_port": port, "status": "running"})),
    )
    .await;
    let owner = one.mint(&alice, "shared").await.unwrap();
    seen(
        &http,
        &envoy,
        "shared",
        &owner,
        Instant::now(),
        "the first pod",
        |a| a.status == 200,
    )
    .await;

    let mut timings = Timings::default();
    let refused = |a: &Answer| a.status == 401;
    for i in 0..5 {
        // A pod created, stopped, started.
        let slug = format!("p{i}");
        one.create_pod(&slug, USER, SERVER, port, "running").await;
        let at = Instant::now();
        let token = one.mint(&alice, &slug).await.unwrap();
        let took = seen(&http, &envoy, &slug, &token, at, "pod created", |a| {
            a.status == 200
        })
        .await;
        timings.add("pod created", took);
        one.set_status(&slug, "stopped").await;
        let at = Instant::now();
        let took = seen(&http, &envoy, &slug, &token, at, "pod stopped", |a| {
            a.status != 200 && a.pod().is_none()
        })
        .await;
        timings.add("pod stopped", took);
        one.set_status(&slug, "running").await;
        let at = Instant::now();
        let took = seen(&http, &envoy, &slug, &token, at, "pod started", |a| {
            a.status == 200
        })
        .await;
        timings.add("pod started", took);

        // A team member granted (minting through the other control plane), then cut off by
        // the port's sharing lowered to the owner.
        let bob = format!("bob{i}");
        one.create_user(&bob).await;
        let bob_session = one.session(&bob).await;
        one.admin(
            Method::POST,
            "/v1/teams/t1/members",
            Some(json!({ "user_id": bob })),
        )
        .await;
        let at = Instant::now();
        let bob_token = two.mint(&bob_session, "shared").await.unwrap();
        let took = seen(
            &http,
            &envoy,
            "shared",
            &bob_token,
            at,
            "member granted",
            |a| a.status == 200,
        )
        .await;
        timings.add("member granted", took);
        one.admin(
            Method::PUT,
            &format!("/v1/pods/shared/ports/{APP_PORT}"),
            Some(json!({ "sharing": "owner" })),
        )
        .await;
        let at = Instant::now();
        let took = seen(
            &http,
            &envoy,
            "shared",
            &bob_token,
            at,
            "port restricted",
            refused,
        )
        .await;
        timings.add("port restricted", took);
        one.admin(
            Method::PUT,
            &format!("/v1/pods/shared/ports/{APP_PORT}"),
            Some(json!({ "sharing": "team" })),
        )
        .await;

        // A team member removed.
        let carol = format!("carol{i}");
        one.create_user(&carol).await;
        let carol_session = one.session(&carol).await;
        one.admin(
            Method::POST,
            "/v1/teams/t1/members",
            Some(json!({ "user_id": carol })),
        )
        .await;
        let carol_token = one.mint(&carol_session, "shared").await.unwrap();
        seen(
            &http,
            &envoy,
            "shared",
            &carol_token,
            Instant::now(),
            "carol",
            |a| a.status == 200,
        )
        .await;
        one.admin(
            Method::DELETE,
            &format!("/v1/teams/t1/members/{carol}"),
            None,
        )
        .await;
        let at = Instant::now();
        let took = seen(
            &http,
            &envoy,
            "shared",
            &carol_token,
            at,
            "member removed",
            refused,
        )
        .await;
        timings.add("member removed", took);

        // An API token revoked.
        let (id, api_token) = create_api_token(&one, &alice, &format!("T{i}")).await;
        let by_token = mint_with_api_token(&one, &api_token, "shared").await;
        seen(
            &http,
            &envoy,
            "shared",
            &by_token,
            Instant::now(),
            "API token",
            |a| a.status == 200,
        )
        .await;
        let resp = http
            .delete(format!("http://{}/api/proxy-tokens/{id}", one.http))
            .header(COOKIE, &alice)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let at = Instant::now();
        let took = seen(
            &http,
            &envoy,
            "shared",
            &by_token,
            at,
            "API token revoked",
            |a| a.status == 401 && a.body.contains("revoked"),
        )
        .await;
        timings.add("API token revoked", took);

        // A session signed out.
        let session = one.session(USER).await;
        let by_session = one.mint(&session, "shared").await.unwrap();
        seen(
            &http,
            &envoy,
            "shared",
            &by_session,
            Instant::now(),
            "session",
            |a| a.status == 200,
        )
        .await;
        let resp = http
            .post(format!("http://{}/auth/logout", one.http))
            .header(COOKIE, &session)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let at = Instant::now();
        let took = seen(
            &http,
            &envoy,
            "shared",
            &by_session,
            at,
            "signed out",
            refused,
        )
        .await;
        timings.add("signed out", took);
    }

    // Keys rotated through the first control plane, then by `podgate keys rotate`: the new
    // capability key is in the other Envoy's filter configuration.
    for i in 0..5 {
        let (kind, kids) = if i < 3 {
            let rotated = one.admin(Method::POST, "/v1/keys/rotate", None).await;
            let kids: Vec<String> = rotated["active"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect();
            ("key rotated (API)", kids)
        } else {
            ("key rotated (CLI)", rotate_by_cli(&tdb.url, &kek).await)
        };
        let at = Instant::now();
        let kid = kids
            .iter()
            .find(|k| k.starts_with("cap-"))
            .unwrap_or_else(|| panic!("no capability key in {kids:?}"))
            .to_owned();
        loop {
            if envoy.admin_get("/config_dump").await.contains(&kid) {
                break;
            }
            assert!(
                at.elapsed() < WITHIN,
                "key {kid} not in Envoy's configuration\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        timings.add(kind, at.elapsed());
    }

    // Both listening connections lost (terminated by the server): each control plane opens its
    // own again and rebuilds, and a change made meanwhile still arrives at once.
    let terminated = sqlx::query(
        "SELECT pg_terminate_backend(pid) AS gone FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(tdb.db.pool())
    .await
    .unwrap();
    assert_eq!(
        terminated.len(),
        2,
        "one listening connection per control plane"
    );
    one.create_pod("after", USER, SERVER, port, "running").await;
    let at = Instant::now();
    let token = one.mint(&alice, "after").await.unwrap();
    let took = seen(
        &http,
        &envoy,
        "after",
        &token,
        at,
        "after the connection was lost",
        |a| a.status == 200,
    )
    .await;
    eprintln!("pod created while the listening connections were lost: routable in {took:?}");
    let start = Instant::now();
    while !plain(&two.log()).contains("opening it again") {
        assert!(start.elapsed() < WITHIN, "{}", two.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // What the metrics say: both listening, announcements sent by one and received by the
    // other, two control planes sharing the rate limits.
    let metrics = |cp: &ControlPlane| {
        let url = format!("http://{}/metrics", cp.http);
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let sample = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let start = Instant::now();
    loop {
        let (m1, m2) = (metrics(&one).await, metrics(&two).await);
        let replicas = (
            sample(&m1, "podgate_replicas "),
            sample(&m2, "podgate_replicas "),
        );
        let listening = (
            sample(&m1, "podgate_config_listening "),
            sample(&m2, "podgate_config_listening "),
        );
        // Both listen again soon after the lost connections above were reopened.
        if replicas == (2.0, 2.0) && listening == (1.0, 1.0) {
            let sent = sample(
                &m1,
                "podgate_config_announcements_total{direction=\"sent\"} ",
            );
            let received = sample(
                &m2,
                "podgate_config_announcements_total{direction=\"received\"} ",
            );
            assert!(sent >= 40.0 && received >= 40.0, "{sent} {received}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "replicas {replicas:?}, listening {listening:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let all = timings.all();
    for (kind, took) in &timings.0 {
        eprintln!("{kind:>18}: {took:?}");
    }
    let (p50, p99) = (quantile(&all, 0.5), quantile(&all, 0.99));
    eprintln!(
        "propagation from control plane 1's answer to control plane 2's Envoy over {} changes: p50 {p50:?}, p99 {p99:?}, max {:?}",
        all.len(),
        all.last().unwrap()
    );
    assert!(all.len() >= 30);
    assert!(p99 < WITHIN, "p99 {p99:?}\n{}", logs());
    tdb.finish().await;
}

/// `podgate keys rotate` on `database_url`: the new key ids.
async fn rotate_by_cli(database_url: &str, kek: &std::path::Path) -> Vec<String> {
    let mut cmd = std::process::Command::new(podgate_binary());
    cmd.env_clear()
        .args(["keys", "rotate", "--database-url", database_url])
        .arg("--key-encryption-key-file")
        .arg(kek);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kids = stdout
        .strip_prefix("new active keys: ")
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("{stdout}"));
    kids.split(", ").map(str::to_owned).collect()
}

/// `GET /api/proxy-auth` on `cp` for `pod` with `session`: the callback's Host and query.
async fn ticket(cp: &ControlPlane, session: &str, pod: &str) -> (String, String) {
    let resp = no_redirects()
        .get(format!(
            "http://{}/api/proxy-auth?pod={pod}&port={APP_PORT}&next=%2F",
            cp.http
        ))
        .header(COOKIE, session)
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302, "{:?}", resp.text().await);
    let callback = url::Url::parse(resp.headers()[LOCATION].to_str().unwrap()).unwrap();
    assert_eq!(callback.path(), "/.podgate/callback");
    let host = format!(
        "{}:{}",
        callback.host_str().unwrap(),
        callback.port().unwrap()
    );
    (host, callback.query().unwrap().to_owned())
}

/// `GET /.podgate/callback` on `cp` as Envoy forwards it: the status.
async fn redeem(cp: &ControlPlane, host: &str, query: &str) -> u16 {
    no_redirects()
        .get(format!("http://{}/.podgate/callback?{query}", cp.http))
        .header(HOST, host)
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_ticket_redeemed_at_one_control_plane_is_refused_at_another() {
    let Some((tdb, dir)) = shared_database().await else {
        return;
    };
    let kek = dir.path().join("kek");
    let envoy_port = free_port();
    let one = ControlPlane::start_sharing(envoy_port, &tdb.url, &kek, None, &[]).await;
    let two = ControlPlane::start_sharing(envoy_port, &tdb.url, &kek, Some(&one.issuer), &[]).await;
    one.create_user(USER).await;
    one.create_server(SERVER, IpAddr::from([127, 0, 0, 1]))
        .await;
    one.create_pod("web", USER, SERVER, 8080, "running").await;
    let session = one.session(USER).await;

    // Issued by one, redeemed at two, replayed at one; and the other way round.
    for (issuer, first, second) in [(&one, &two, &one), (&two, &one, &two)] {
        let (host, query) = ticket(issuer, &session, "web").await;
        assert_eq!(redeem(first, &host, &query).await, 302, "{}", first.log());
        assert_eq!(redeem(second, &host, &query).await, 400, "a replay");
        assert_eq!(redeem(first, &host, &query).await, 400, "a replay");
    }
    tdb.finish().await;
}

/// `log` without its terminal colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // `ESC [ ... m`
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends `n` requests with a wrong admin token, alternating between `cps`: how many were
/// answered 401 (a failure counted) rather than 429 (out of failures).
async fn wrong_admin_tokens(cps: &[&ControlPlane], n: usize) -> usize {
    let http = client();
    let mut counted = 0;
    for i in 0..n {
        let cp = cps[i % cps.len()];
        let status = http
            .get(format!("http://{}/v1/users", cp.http))
            .bearer_auth("not-the-admin-token")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        match status {
            401 => counted += 1,
            429 => {}
            other => panic!("{other}"),
        }
    }
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_over_two_control_planes() {
    let Some((tdb, dir)) = shared_database().await else {
        return;
    };
    let kek = dir.path().join("kek");
    let envoy_port = free_port();
    // Ten wrong admin tokens per client, regaining one a minute.
    let limit = [
        "--admin-failures-burst",
        "10",
        "--admin-failures-per-minute",
        "1",
    ];
    let one = ControlPlane::start_sharing(envoy_port, &tdb.url, &kek, None, &limit).await;
    let two =
        ControlPlane::start_sharing(envoy_port, &tdb.url, &kek, Some(&one.issuer), &limit).await;
    // Both count two control planes (the first learns of the second at its next heartbeat).
    let counts_two = |cp: &ControlPlane| plain(&cp.log()).contains("replicas=2");
    let start = Instant::now();
    while !(counts_two(&one) && counts_two(&two)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}\n{}",
            one.log(),
            two.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counted = wrong_admin_tokens(&[&one, &two], 40).await;
    eprintln!("a limit of 10 over two control planes let {counted} of 40 failures through");
    assert!((9..=10).contains(&counted), "{counted}");
    drop((one, two));
    tdb.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_control_planes_starting_together_migrate_an_empty_database_once() {
    let Some((tdb, dir)) = shared_database().await else {
        return;
    };
    let kek = dir.path().join("kek");
    let envoy_port = free_port();
    let issuer = "http://podgate.replicas.test";
    let (a, b, c) = tokio::join!(
        ControlPlane::start_sharing(envoy_port, &tdb.url, &kek, Some(issuer), &[]),
        ControlPlane::start_sharing(envoy_port, &tdb.url, &kek, Some(issuer), &[]),
        ControlPlane::start_sharing(envoy_port, &tdb.url, &kek, Some(issuer), &[]),
    );
    // All three are ready (`start_replica` waited for `/readyz`) and every migration is applied
    // once.
    let files = std::fs::read_dir(workspace().join("migrations/postgres"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".sql")
        })
        .count();
    let rows = sqlx::query("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(tdb.db.pool())
        .await
        .unwrap();
    let versions: Vec<i64> = rows.iter().map(|r| r.get("version")).collect();
    assert_eq!(versions.len(), files, "{versions:?}");
    assert!(rows.iter().all(|r| r.get::<bool, _>("success")));
    // One active signing key per kind, not one per control plane.
    let active = sqlx::query(
        "SELECT kind, COUNT(*) AS n FROM signing_keys WHERE retired_at IS NULL GROUP BY kind ORDER BY kind",
    )
    .fetch_all(tdb.db.pool())
    .await
    .unwrap();
    let active: Vec<(String, i64)> = active.iter().map(|r| (r.get("kind"), r.get("n"))).collect();
    assert_eq!(
        active,
        [("capability".to_owned(), 1), ("ticket".to_owned(), 1)],
        "{}\n{}\n{}",
        a.log(),
        b.log(),
        c.log()
    );
    // Each of them signs in a user through another's session.
    a.create_user(USER).await;
    let session = b.session(USER).await;
    let me = client()
        .get(format!("http://{}/auth/userinfo", c.http))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    drop((a, b, c));
    tdb.finish().await;
}

/// Two control planes on one fresh database and a token endpoint (`podgate` / the secret
/// `client-secret-7f3a`) whose tokens live an hour, so only a change can replace one.
struct OAuthPair {
    one: ControlPlane,
    two: ControlPlane,
    idp: podgate_testkit::FakeTokenEndpoint,
    envoy_port: u16,
    _tdb: TestDb,
    _dir: tempfile::TempDir,
}

impl OAuthPair {
    /// `None` to skip (no `PODGATE_TEST_POSTGRES_URL` outside CI).
    async fn start() -> Option<OAuthPair> {
        let (tdb, dir) = shared_database().await?;
        let idp = podgate_testkit::FakeTokenEndpoint::start(
            vec![podgate_testkit::TokenClient {
                client_id: "podgate".into(),
                secret: Some("client-secret-7f3a".into()),
                public_key_pem: None,
            }],
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        let kek = dir.path().join("kek");
        let envoy_port = free_port();
        let one = ControlPlane::start_sharing(envoy_port, &tdb.url, &kek, None, &SLOW_RESYNC).await;
        let two = ControlPlane::start_sharing(
            envoy_port,
            &tdb.url,
            &kek,
            Some(&one.issuer),
            &SLOW_RESYNC,
        )
        .await;
        Some(OAuthPair {
            one,
            two,
            idp,
            envoy_port,
            _tdb: tdb,
            _dir: dir,
        })
    }
}

/// A service's OAuth credential set through one control plane: another on the database obtains
/// its own token at once, woken by the announcement (its renewal task reads the services only
/// every 30 s otherwise, and the resync is a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_service_made_through_one_control_plane_gets_a_token_at_another_at_once() {
    let Some(OAuthPair {
        one,
        two,
        idp,
        envoy_port: _,
        _tdb,
        _dir,
    }) = OAuthPair::start().await
    else {
        return;
    };
    one.create_user(USER).await;
    // Both renewal tasks have read the (empty) services at start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let made = Instant::now();
    one.admin(
        Method::POST,
        "/v1/services",
        Some(json!({
            "name": "api",
            "owner_id": USER,
            "upstream_url": "https://api.example.com",
            "credential": {"oauth": {"token_url": idp.url(), "grant": "client_credentials",
                "client_id": "podgate", "client_secret": "client-secret-7f3a"}},
        })),
    )
    .await;
    loop {
        let status = two
            .admin(Method::GET, "/v1/services/api/credential/status", None)
            .await;
        if status["source"] == "oauth" {
            break;
        }
        assert!(made.elapsed() < WITHIN, "{status}\n{}", two.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "token at the other control plane {} ms after the write",
        made.elapsed().as_millis()
    );
    // Each control plane fetched its own: the one that took the write may finish its fetch
    // after the other (on a loaded machine it has been seen to).
    while idp.issued().len() < 2 {
        assert!(made.elapsed() < WITHIN, "{:?}", idp.issued());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /v1/models` on service `api` through `envoy` with capability `token`: the status, and the
/// OAuth token the upstream received with it (`None` when nothing reached it).
async fn through_to_api(envoy: &Envoy, upstream: &FakePod, token: &str) -> (u16, Option<String>) {
    upstream.reset();
    let resp = client()
        .get(format!("http://{}/v1/models", envoy.listener))
        .header(HOST, service_host("api"))
        .header("podgate-token", token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let received = upstream.requests().pop().map(|r| {
        let got = r.header_all("authorization");
        assert_eq!(got.len(), 1, "{:?}", r.headers);
        got[0].strip_prefix("Bearer ").unwrap().to_owned()
    });
    (status, received)
}

/// A service's OAuth token cleared, then refreshed, through one control plane (an admin who
/// learnt the token leaked, or that the provider revoked it): the Envoy fed by another control
/// plane stops sending the cleared token at once and sends a new one its control plane obtained;
/// after the refresh it sends yet another, and no request is answered without the token
/// meanwhile (the token in use stays until its successor comes). The tokens live an hour, so
/// only the admin's request can have replaced them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_token_cleared_or_refreshed_at_one_control_plane_is_replaced_at_another() {
    let Some(OAuthPair {
        one,
        two,
        idp,
        envoy_port,
        _tdb,
        _dir,
    }) = OAuthPair::start().await
    else {
        return;
    };
    // The only Envoy, fed by the second control plane; the admin speaks to the first.
    let envoy = Envoy::start(envoy_port, two.xds.port(), two.http.port()).await;
    let logs = || {
        format!(
            "--- podgate 1 ---\n{}\n--- podgate 2 ---\n{}\n--- envoy ---\n{}",
            one.log(),
            two.log(),
            envoy.log()
        )
    };
    let upstream = FakePod::start("upstream").await.unwrap();
    let front = podgate_testkit::TlsFront::start(upstream.addr())
        .await
        .unwrap();
    one.create_user(USER).await;
    let alice = one.session(USER).await;
    one.admin(
        Method::POST,
        "/v1/services",
        Some(json!({
            "name": "api",
            "owner_id": USER,
            "sharing": "owner",
            "upstream_url": format!("https://localhost:{}", front.addr().port()),
            "ca_pem": front.ca_pem(),
            "credential": {"oauth": {"token_url": idp.url(), "grant": "client_credentials",
                "client_id": "podgate", "client_secret": "client-secret-7f3a"}},
        })),
    )
    .await;
    let resp = client()
        .post(format!("http://{}/v1/capabilities", one.http))
        .header(COOKIE, &alice)
        .json(&json!({"service": "api"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let capability = resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The first token, the second control plane's.
    let start = Instant::now();
    let first = loop {
        if let (200, Some(token)) = through_to_api(&envoy, &upstream, &capability).await {
            break token;
        }
        assert!(start.elapsed() < WITHIN, "{}", logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        idp.issued().iter().any(|t| t.token == first),
        "{first} {:?}",
        idp.issued()
    );

    // Cleared at the first control plane: the second's Envoy gets a new one.
    let cleared = Instant::now();
    one.admin(Method::POST, "/v1/services/api/credential/clear", None)
        .await;
    let second = loop {
        match through_to_api(&envoy, &upstream, &capability).await {
            (200, Some(token)) if token != first => break token,
            // The cleared token until the push, then 502 until the new one comes.
            (200 | 502, _) => {}
            other => panic!("{other:?}\n{}", logs()),
        }
        assert!(
            cleared.elapsed() < WITHIN,
            "the cleared token is still sent: {:?}\n{}",
            idp.issued(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "a new token at the other control plane's Envoy {} ms after the clear",
        cleared.elapsed().as_millis()
    );
    for _ in 0..20 {
        let (status, token) = through_to_api(&envoy, &upstream, &capability).await;
        assert_eq!(
            (status, token.as_deref()),
            (200, Some(second.as_str())),
            "{}",
            logs()
        );
    }

    // Refreshed at the first control plane: every request keeps its token until the next.
    let refreshed = Instant::now();
    let status = one
        .admin(Method::POST, "/v1/services/api/credential/refresh", None)
        .await;
    assert_eq!(status["source"], "oauth", "{status}");
    let third = loop {
        let (status, token) = through_to_api(&envoy, &upstream, &capability).await;
        assert_eq!(status, 200, "a request without the token: {}", logs());
        let token = token.unwrap();
        assert_ne!(token, first);
        if token != second {
            break token;
        }
        assert!(
            refreshed.elapsed() < WITHIN,
            "not renewed: {:?}\n{}",
            idp.issued(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "a new token at the other control plane's Envoy {} ms after the refresh",
        refreshed.elapsed().as_millis()
    );
    assert!(idp.issued().iter().any(|t| t.token == third));
}
