//! Envoy survives any control plane: two `podgate serve` on one real PostgreSQL (a database of
//! the test's own) and three real Envoys 1.40, each listing both control planes for ADS and for
//! the control plane's HTTP (`envoy/podgate.yaml` as an operator renders it,
//! `podgate_testkit::AdsBootstrap`), carry a steady load of signed-in users (capabilities) to
//! fake pods while:
//!
//! 1. each control plane in turn is killed (SIGKILL) and started again (ready, and seen healthy by
//!    every Envoy's health checks, before the next step);
//! 2. then, for each Envoy, the control plane that Envoy's ADS stream is on is killed and started
//!    again;
//! 3. changes are made on either control plane and awaited through every Envoy;
//! 4. each control plane in turn is stopped (SIGTERM) and started again, the next one only once
//!    the first answers `/readyz` and the Envoys' health checks see it (a rolling restart).
//!
//! No request of the load may fail. Every kill is followed through Envoy's admin API until the
//! Envoys that were on the killed control plane have their ADS stream up on the other one
//! (`control_plane.connected_state` back to 1 and the stream's request on the other host of
//! `podgate_xds`): that is the failover time, printed. Each kill waits until both control planes
//! publish the same versions (the other one resynced the last change); the versions an Envoy runs
//! (CDS and the filter's ECDS resource) are then the same before and after, once the other
//! control plane's answers are in: versions are content hashes, so control planes on one
//! database push the same ones.
//! Propagation times (a pod created on either control plane until all three Envoys route it)
//! are printed as p50/p99.
//!
//! A second test cuts one control plane off the database (a TCP relay between them, closed):
//! the Envoy on it moves to the other one, and the changes made there reach it.
//!
//! Needs `PODGATE_TEST_POSTGRES_URL` (skipped without it, failed without it under `CI=true`),
//! Envoy and the filter as the other live suites do (`xds_support`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod xds_support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestDb, Which};
use xds_support::*;

const ENVOYS: usize = 3;
/// Every signed-in user has a pod of their own, on a fake pod named after it.
const USERS: [&str; 3] = [USER, "bob", "carol"];
/// An Envoy must be on the other control plane within this long after a kill. With the
/// bootstrap's health check (1 s) and `retry_back_off` (0.25 s to 2 s) it takes well under it.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);
/// A change must reach every Envoy within this long: the resync of the control plane the change
/// was not made on is 2 s; the rest is margin for a loaded machine.
const PROPAGATION_BOUND: Duration = Duration::from_secs(10);
/// How many changes are timed for the propagation figures.
const CHANGES: usize = 10;

/// The steady load: one task per Envoy and user, each a request every 10 ms with that user's
/// capability to that user's pod, expecting the pod's own answer.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    fn start(envoys: &[SocketAddr], users: &[(String, String)]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (e, envoy) in envoys.iter().copied().enumerate() {
            for (pod, token) in users {
                let (pod, token) = (pod.clone(), token.clone());
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                tasks.push(tokio::spawn(async move {
                    let http = client();
                    while !stop.load(Ordering::Relaxed) {
                        match through_envoy(&http, envoy, &pod, &token).await {
                            Ok(a)
                                if a.status == 200 && a.pod().as_deref() == Some(pod.as_str()) =>
                            {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            answer => failures.lock().unwrap().push(format!(
                                "{:?}: Envoy {e}, pod {pod}: {answer:?}",
                                started.elapsed()
                            )),
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }));
            }
        }
        Load {
            stop,
            ok,
            failures,
            tasks,
            started,
        }
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    async fn finish(self) -> (u64, Vec<String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            failures,
            self.started.elapsed(),
        )
    }
}

struct Fleet {
    replicas: Vec<ControlPlane>,
    envoys: Vec<Envoy>,
}

impl Fleet {
    /// Which control plane `envoy`'s ADS stream is on: the `podgate_xds` host with an active
    /// request (the stream), read from the admin `/clusters`.
    async fn attached(&self, envoy: usize) -> Option<usize> {
        if self.envoys[envoy]
            .stat("control_plane.connected_state")
            .await
            != 1
        {
            return None;
        }
        let clusters = self.envoys[envoy]
            .inner()
            .admin_get("/clusters")
            .await
            .unwrap();
        let mut on = None;
        for line in clusters.lines() {
            let Some(rest) = line.strip_prefix("podgate_xds::") else {
                continue;
            };
            let Some((host, active)) = rest.split_once("::rq_active::") else {
                continue;
            };
            if active.trim() != "0" {
                let replica = self.replicas.iter().position(|r| r.xds.to_string() == host);
                if on.is_some() || replica.is_none() {
                    return None;
                }
                on = replica;
            }
        }
        on
    }

    /// The versions `envoy` runs and how many configuration answers it has taken, per type:
    /// the admin stats `*.version_text` and `*.update_attempt` of CDS and of the filter's ECDS
    /// resource.
    async fn versions(&self, envoy: usize) -> (BTreeMap<String, String>, BTreeMap<String, u64>) {
        let text = self.envoys[envoy]
            .inner()
            .admin_get("/stats?filter=(version_text|update_attempt)$")
            .await
            .unwrap();
        let mut versions = BTreeMap::new();
        let mut attempts = BTreeMap::new();
        for (name, value) in text.lines().filter_map(|l| l.split_once(": ")) {
            if let Some(kind) = name.strip_suffix(".version_text") {
                versions.insert(kind.to_owned(), value.trim().to_owned());
            } else if let Some(kind) = name.strip_suffix(".update_attempt") {
                attempts.insert(kind.to_owned(), value.trim().parse::<u64>().unwrap_or(0));
            }
        }
        attempts.retain(|kind, _| versions.contains_key(kind));
        (versions, attempts)
    }

    /// The versions control plane `replica` publishes (its `/metrics`, `podgate_xds_version`).
    async fn published(&self, replica: usize) -> Vec<String> {
        let body = self.metrics(replica).await;
        let mut out: Vec<String> = body
            .lines()
            .filter(|l| l.starts_with("podgate_xds_version{") && l.ends_with(" 1"))
            .map(str::to_owned)
            .collect();
        out.sort();
        out
    }

    /// Control plane `replica`'s `/metrics`.
    async fn metrics(&self, replica: usize) -> String {
        client()
            .get(format!("http://{}/metrics", self.replicas[replica].http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Control plane `replica`'s `podgate_xds_serving` gauge.
    async fn xds_serving(&self, replica: usize) -> u64 {
        let body = self.metrics(replica).await;
        let line = body
            .lines()
            .find(|l| l.starts_with("podgate_xds_serving "))
            .unwrap_or_else(|| panic!("no podgate_xds_serving in {body}"));
        line["podgate_xds_serving ".len()..].trim().parse().unwrap()
    }

    /// Waits until both control planes publish the same versions: the one a change was not
    /// made on has resynced.
    async fn until_converged(&self) {
        let deadline = Instant::now() + PROPAGATION_BOUND;
        loop {
            let (a, b) = (self.published(0).await, self.published(1).await);
            if !a.is_empty() && a == b {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "control planes publish {a:?} and {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every Envoy's health checks see control plane `replica` up again, on both
    /// of its clusters (`health_flags::healthy` in the admin `/clusters`).
    async fn until_healthy_everywhere(&self, replica: usize) {
        let wanted = [
            format!(
                "podgate_xds::{}::health_flags::healthy",
                self.replicas[replica].xds
            ),
            format!(
                "podgate_control_plane::{}::health_flags::healthy",
                self.replicas[replica].http
            ),
        ];
        let deadline = Instant::now() + FAILOVER_BOUND;
        for envoy in &self.envoys {
            loop {
                let clusters = envoy.inner().admin_get("/clusters").await.unwrap();
                if wanted.iter().all(|w| clusters.lines().any(|l| l == w)) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "control plane {replica} not healthy in every Envoy: {clusters}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    async fn attachments(&self) -> Vec<Option<usize>> {
        let mut out = Vec::new();
        for e in 0..self.envoys.len() {
            out.push(self.attached(e).await);
        }
        out
    }

    /// Waits until every Envoy has its ADS stream up on a running control plane.
    async fn until_all_attached(&self) {
        let deadline = Instant::now() + FAILOVER_BOUND;
        loop {
            let now = self.attachments().await;
            if now.iter().all(Option::is_some) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not every Envoy attached: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Once both control planes publish the same versions, SIGKILLs control plane `victim`;
    /// follows every Envoy that was on it until its stream is up on another one (the failover
    /// times), checks that it runs the same versions once the other control plane answered, and
    /// starts `victim` again.
    async fn kill_and_follow(&mut self, victim: usize, failovers: &mut Vec<Duration>) {
        self.until_converged().await;
        let mut before = Vec::new();
        let mut moving = Vec::new();
        for e in 0..self.envoys.len() {
            if self.attached(e).await == Some(victim) {
                before.push(self.versions(e).await);
                moving.push(e);
            }
        }
        let killed = Instant::now();
        self.replicas[victim].kill();
        let mut pending: Vec<usize> = moving.clone();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for &e in &pending {
                match self.attached(e).await {
                    Some(r) if r != victim => {
                        let took = killed.elapsed();
                        eprintln!("kill -9 of control plane {victim}: Envoy {e} on control plane {r} after {took:?}");
                        failovers.push(took);
                    }
                    _ => still.push(e),
                }
            }
            pending = still;
            assert!(
                killed.elapsed() < FAILOVER_BOUND,
                "Envoys {pending:?} not on another control plane {FAILOVER_BOUND:?} after the kill of {victim}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The other control plane's first answers on the new stream (CDS and the filter's ECDS
        // resource) are in: the same versions.
        for (e, (versions, attempts)) in moving.iter().zip(before) {
            assert_eq!(
                versions.keys().collect::<Vec<_>>(),
                attempts.keys().collect::<Vec<_>>(),
                "Envoy {e}: {versions:?} {attempts:?}"
            );
            assert_eq!(versions.len(), 2, "CDS and ECDS: {versions:?}");
            let deadline = Instant::now() + FAILOVER_BOUND;
            loop {
                let (now, now_attempts) = self.versions(*e).await;
                if attempts.iter().all(|(kind, n)| now_attempts[kind] > *n) {
                    assert_eq!(
                        now, versions,
                        "Envoy {e} runs other versions after moving off control plane {victim}"
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "Envoy {e} got no answer of each type from its new control plane: \
                     {attempts:?} then {now_attempts:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.replicas[victim].spawn().await;
        self.until_healthy_everywhere(victim).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(label: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    format!(
        "{label}: n={} p50={:?} p99={:?} max={:?}",
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples.last().unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_survive_any_control_plane_with_no_failed_request() {
    let Some(db) = TestDb::new(Which::Postgres).await else {
        return;
    };
    eprintln!("database: {}", db.url.rsplit('/').next().unwrap());
    let kek_dir = tempfile::tempdir().unwrap();
    let kek = kek_dir.path().join("kek");
    make_kek(&kek);
    let envoy_listeners: Vec<SocketAddr> = (0..ENVOYS)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    // One issuer for both: a load balancer's name in production; here the first one's address,
    // fixed before it starts.
    let first_http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let shared = Shared {
        database_url: db.url.clone(),
        kek,
        issuer: format!("http://{first_http}"),
        renew_secret: "fleet-renew-secret-0123456789abcdef0123".to_owned(),
    };
    let envoy_port = envoy_listeners[0].port();
    let mut replicas = Vec::new();
    for r in 0..2 {
        replicas
            .push(ControlPlane::start_replica(&format!("fleet-{r}"), envoy_port, &shared).await);
    }
    let xds: Vec<SocketAddr> = replicas.iter().map(|r| r.xds).collect();
    let http: Vec<SocketAddr> = replicas.iter().map(|r| r.http).collect();
    let mut envoys = Vec::new();
    for (e, listener) in envoy_listeners.iter().enumerate() {
        envoys.push(Envoy::start_with(&format!("fleet-envoy-{e}"), *listener, &xds, &http).await);
    }
    let mut fleet = Fleet { replicas, envoys };

    // The users, their pods and their capabilities, made on either control plane.
    fleet.replicas[0]
        .create_server(SERVER, IpAddr::from([127, 0, 0, 1]))
        .await;
    let mut pods = Vec::new();
    let mut users = Vec::new();
    for (i, user) in USERS.iter().enumerate() {
        let cp = &fleet.replicas[i % 2];
        cp.create_user(user).await;
        let pod = FakePod::start(&format!("{user}-pod")).await.unwrap();
        let slug = format!("{user}-pod");
        cp.create_pod(&slug, user, SERVER, pod.addr().port(), "running")
            .await;
        let session = cp.session(user).await;
        let token = cp.mint(&session, &slug).await.unwrap();
        pods.push(pod);
        users.push((slug, token));
    }
    let http_client = client();
    for envoy in &envoy_listeners {
        for (slug, token) in &users {
            until(&http_client, *envoy, slug, token, PROPAGATION_BOUND, |a| {
                a.status == 200
            })
            .await
            .unwrap_or_else(|e| panic!("{slug} through {envoy}: {e}"));
        }
    }
    fleet.until_all_attached().await;
    eprintln!("ADS streams: {:?}", fleet.attachments().await);

    let load = Load::start(&envoy_listeners, &users);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. Each control plane in turn, restarted before the next.
    let mut failovers = Vec::new();
    for victim in 0..2 {
        fleet.kill_and_follow(victim, &mut failovers).await;
        fleet.until_all_attached().await;
    }
    // 2. For each Envoy, the control plane it is on.
    for e in 0..ENVOYS {
        let victim = fleet.attached(e).await.unwrap();
        let before = failovers.len();
        fleet.kill_and_follow(victim, &mut failovers).await;
        assert!(failovers.len() > before, "Envoy {e} did not move");
        fleet.until_all_attached().await;
    }
    assert!(
        load.failures().is_empty(),
        "failed requests during the kills: {:#?}",
        load.failures()
    );

    // 3. Changes on either control plane, through every Envoy.
    let mut propagation = Vec::new();
    let session = fleet.replicas[0].session(USER).await;
    for i in 0..CHANGES {
        let cp = &fleet.replicas[i % 2];
        let slug = format!("change-{i}");
        let made = Instant::now();
        cp.create_pod(&slug, USER, SERVER, pods[0].addr().port(), "running")
            .await;
        let token = cp.mint(&session, &slug).await.unwrap();
        // One Envoy after the other: each wait ends at its first 200, so the last one ends
        // when the change has reached all three.
        for envoy in &envoy_listeners {
            until(
                &http_client,
                *envoy,
                &slug,
                &token,
                PROPAGATION_BOUND,
                |a| a.status == 200,
            )
            .await
            .unwrap_or_else(|e| panic!("{slug} through {envoy}: {e}"));
        }
        let slowest = made.elapsed();
        propagation.push(slowest);
    }

    // 4. A rolling restart: SIGTERM, start again, wait for /readyz, then the next.
    let mut shutdowns = Vec::new();
    for r in 0..2 {
        let (status, took) = fleet.replicas[r].terminate();
        assert_eq!(status, 0, "{}", fleet.replicas[r].log());
        shutdowns.push(took);
        fleet.replicas[r].spawn().await;
        fleet.until_healthy_everywhere(r).await;
        fleet.until_all_attached().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (ok, failures, ran) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed requests out of {}: {failures:#?}",
        failures.len(),
        ok + failures.len() as u64
    );
    assert!(ok > 1000, "only {ok} requests in {ran:?}");
    eprintln!("load: {ok} requests through {ENVOYS} Envoys in {ran:?}, 0 failed");
    eprintln!(
        "{}",
        summary(
            "failover (kill -9 → ADS on the other control plane)",
            failovers
        )
    );
    eprintln!(
        "{}",
        summary(
            "propagation (change on either control plane → all Envoys route it)",
            propagation
        )
    );
    eprintln!("graceful shutdowns of the rolling restart: {shutdowns:?}");
    drop(fleet);
    db.finish().await;
}

/// `url` (a PostgreSQL URL) with its host and port replaced by `relay`'s.
fn through(url: &str, relay: &podgate_testkit::TcpCut) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_host(Some(&relay.addr().ip().to_string())).unwrap();
    url.set_port(Some(relay.addr().port())).unwrap();
    url.to_string()
}

/// An Envoy leaves a control plane that lost its database: two control planes on one
/// PostgreSQL, each reaching it through a relay the test can cut (a network partition between
/// one control plane and the database), and an Envoy listing both. The relay of the control
/// plane the Envoy's ADS stream is on is cut: that control plane answers NOT_SERVING to the gRPC
/// health check of `podgate_xds`, which sets it aside, and a few seconds later ends its ADS
/// streams: the Envoy reconnects to the other one. A pod made there and another one stopped
/// there are then routed and refused through the Envoy, which could not happen while the Envoy
/// stayed on the cut control plane (it can no longer read either change). Mended, the cut
/// control plane is healthy again in the Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_leaves_a_control_plane_that_lost_its_database() {
    /// From the cut to the Envoy on the other control plane: two failed round trips a second
    /// apart (each at most the control plane's 2 s timeout), then 3 s of NOT_SERVING before
    /// the streams end, then Envoy's reconnect back-off; the rest is margin for a loaded
    /// machine.
    const LEAVE_BOUND: Duration = Duration::from_secs(20);
    let Some(db) = TestDb::new(Which::Postgres).await else {
        return;
    };
    let target = {
        let url = url::Url::parse(&db.url).unwrap();
        let host = url.host_str().unwrap().to_owned();
        let port = url.port().unwrap_or(5432);
        let mut addrs = tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap();
        addrs.next().unwrap()
    };
    let relays = [
        podgate_testkit::TcpCut::start(target).await.unwrap(),
        podgate_testkit::TcpCut::start(target).await.unwrap(),
    ];
    let kek_dir = tempfile::tempdir().unwrap();
    let kek = kek_dir.path().join("kek");
    make_kek(&kek);
    let listener = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let first_http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut replicas = Vec::new();
    for (r, relay) in relays.iter().enumerate() {
        let shared = Shared {
            database_url: through(&db.url, relay),
            kek: kek.clone(),
            issuer: format!("http://{first_http}"),
            renew_secret: "fleet-renew-secret-0123456789abcdef0123".to_owned(),
        };
        replicas
            .push(ControlPlane::start_replica(&format!("cut-{r}"), listener.port(), &shared).await);
    }
    let xds: Vec<SocketAddr> = replicas.iter().map(|r| r.xds).collect();
    let http: Vec<SocketAddr> = replicas.iter().map(|r| r.http).collect();
    let envoy = Envoy::start_with("cut-envoy", listener, &xds, &http).await;
    let fleet = Fleet {
        replicas,
        envoys: vec![envoy],
    };
    let logs = || {
        format!(
            "--- podgate 0 ---\n{}\n--- podgate 1 ---\n{}\n--- envoy ---\n{}",
            fleet.replicas[0].log(),
            fleet.replicas[1].log(),
            fleet.envoys[0].log()
        )
    };

    let cp = &fleet.replicas[0];
    cp.create_server(SERVER, IpAddr::from([127, 0, 0, 1])).await;
    cp.create_user(USER).await;
    let pod = FakePod::start("kept-pod").await.unwrap();
    cp.create_pod("kept", USER, SERVER, pod.addr().port(), "running")
        .await;
    let session = cp.session(USER).await;
    let kept = cp.mint(&session, "kept").await.unwrap();
    let http_client = client();
    until(
        &http_client,
        listener,
        "kept",
        &kept,
        PROPAGATION_BOUND,
        |a| a.status == 200 && a.pod().as_deref() == Some("kept-pod"),
    )
    .await
    .unwrap_or_else(|e| panic!("kept: {e}\n{}", logs()));
    fleet.until_all_attached().await;
    let on = fleet.attached(0).await.unwrap();
    let other = 1 - on;
    for r in 0..2 {
        fleet.until_healthy_everywhere(r).await;
    }

    relays[on].cut();
    let cut = Instant::now();
    loop {
        if fleet.attached(0).await == Some(other) {
            break;
        }
        assert!(
            cut.elapsed() < LEAVE_BOUND,
            "the Envoy is still on control plane {on} {LEAVE_BOUND:?} after its database was \
             cut\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "database of control plane {on} cut: the Envoy on control plane {other} after {:?}",
        cut.elapsed()
    );
    // Envoy's gRPC health check of `podgate_xds` sets the cut one aside, so a reconnect (this
    // Envoy's next, or a new Envoy's first) does not pick it.
    let set_aside = format!(
        "podgate_xds::{}::health_flags::/failed_active_hc",
        fleet.replicas[on].xds
    );
    let clusters = fleet.envoys[0].admin_get("/clusters").await;
    assert!(
        clusters.lines().any(|l| l == set_aside),
        "{set_aside} not in {clusters}"
    );
    // Its operators see it: the gauge, and /readyz.
    assert_eq!(fleet.xds_serving(on).await, 0);
    assert_eq!(fleet.xds_serving(other).await, 1);
    // The cut one says why, and is not ready.
    let readyz = client()
        .get(format!("http://{}/readyz", fleet.replicas[on].http))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    assert!(
        fleet.replicas[on]
            .log()
            .contains("gRPC health says NOT_SERVING"),
        "{}",
        logs()
    );

    // Changes made through the other one reach the Envoy: a new pod is routed, and the pod
    // stopped no longer gets requests.
    let cp = &fleet.replicas[other];
    let made = Instant::now();
    cp.create_pod("made", USER, SERVER, pod.addr().port(), "running")
        .await;
    let token = cp.mint(&session, "made").await.unwrap();
    let before = pod.requests().len();
    until(
        &http_client,
        listener,
        "made",
        &token,
        PROPAGATION_BOUND,
        |a| a.status == 200,
    )
    .await
    .unwrap_or_else(|e| panic!("made through control plane {other}: {e}\n{}", logs()));
    assert!(pod.requests().len() > before, "the new pod got nothing");
    cp.set_status("kept", "stopped").await;
    until(
        &http_client,
        listener,
        "kept",
        &kept,
        PROPAGATION_BOUND,
        |a| a.status != 200,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "kept stopped through control plane {other}: {e}\n{}",
            logs()
        )
    });
    // Refused by the gate, not by the pod: the Envoy's answer is podgate's 503 and nothing more
    // reaches the pod.
    let reached = pod.requests().len();
    let refused = through_envoy(&http_client, listener, "kept", &kept)
        .await
        .unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("Pod is not running (status: stopped)"),
        "{}",
        refused.body
    );
    assert_eq!(
        pod.requests().len(),
        reached,
        "a request for the stopped pod reached it"
    );
    eprintln!(
        "changes through control plane {other} in the Envoy after {:?}",
        made.elapsed()
    );

    // Mended, the cut one is ready and healthy in the Envoy again, once it has rebuilt its
    // configuration from the database (with the changes made through the other meanwhile), not
    // on the configuration it had before the cut.
    relays[on].mend();
    fleet.until_healthy_everywhere(on).await;
    assert_eq!(fleet.xds_serving(on).await, 1);
    let log = fleet.replicas[on].log();
    let rebuilding = log.find("rebuilding Envoy's configuration before saying SERVING");
    let serving =
        log.find("Envoy's configuration is rebuilt: the ADS port's gRPC health says SERVING");
    assert!(rebuilding.is_some() && serving > rebuilding, "{}", logs());
    drop(fleet);
    db.finish().await;
}
