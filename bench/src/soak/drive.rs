//! The soak's traffic and its background changes.
//!
//! - Requests: `GET /api/info` on a pod host through a random Envoy, paced at a fixed rate, by
//!   signed-in users with a capability (`podgate-token`) or an API token (`Authorization:
//!   Bearer`); a few WebSocket sessions at a time exchange messages with the pods.
//! - Changes, each on its own period: a pod stopped or started again (admin API), keys rotated
//!   (admin API and `podgate keys rotate`, in turn), an API token revoked and replaced, a user
//!   signed out and signed in again (dev login).
//!
//! Half the users only ever use capabilities and are the ones signed out; the other half also
//! use API tokens and are the ones whose tokens are revoked, so each refusal has one cause.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use super::stack::{pod_host, Api, Stack};
use super::world::{judge, Expect, PodState, Stats, Verdict};

/// A small xorshift generator: the soak's random choices need no more.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Rng((seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(nanos)) | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        usize::try_from(x % (n.max(1) as u64)).unwrap_or(0)
    }
}

/// A session: its cookie, a number the capabilities minted with it carry, and when it was
/// signed out.
#[derive(Debug, Clone)]
struct Session {
    cookie: String,
    id: u64,
}

#[derive(Debug, Clone)]
struct Cap {
    token: String,
    session: u64,
}

#[derive(Debug, Clone)]
struct ApiToken {
    id: String,
    token: String,
    revoked: Option<Instant>,
}

/// One signed-in user.
struct Client {
    user: String,
    /// The replica it signs in and mints at.
    replica: usize,
    /// Also uses an API token (and is never signed out); else it is signed out now and then.
    api_user: bool,
    session: Session,
    /// Sessions signed out, and when.
    ended: HashMap<u64, Instant>,
    caps: HashMap<usize, Cap>,
    api: Option<ApiToken>,
    /// The last refused mint: its session and when (a signed-out client tries again at most
    /// once per [`MINT_RETRY`], not on every request).
    refused_mint: Option<(u64, Instant)>,
}

/// How long past the grace a revoked credential keeps being used.
const SETTLED_EXTRA: Duration = Duration::from_secs(2);

/// How long a client whose mint was refused waits before minting with that session again.
const MINT_RETRY: Duration = Duration::from_secs(1);

/// Counts of the background changes made.
#[derive(Debug, Default, serde::Serialize)]
pub struct Changes {
    pub pod_stops: AtomicU64,
    pub pod_starts: AtomicU64,
    pub key_rotations_api: AtomicU64,
    pub key_rotations_cli: AtomicU64,
    pub api_tokens_created: AtomicU64,
    pub api_tokens_revoked: AtomicU64,
    pub sign_ins: AtomicU64,
    pub sign_outs: AtomicU64,
    pub websocket_sessions: AtomicU64,
    pub websocket_messages: AtomicU64,
}

/// Everything the tasks share.
pub struct World {
    clients: Vec<Mutex<Client>>,
    pods: Vec<Mutex<PodState>>,
    slugs: Vec<String>,
    /// The name each fake pod answers with.
    pod_names: Vec<String>,
    apis: Vec<Api>,
    envoys: Vec<SocketAddr>,
    grace: Duration,
    http: reqwest::Client,
    pub stats: Stats,
    pub changes: Changes,
    stop: AtomicBool,
    seq: AtomicU64,
    /// Requests sent again after a 429 with Retry-After.
    pub retried: AtomicU64,
    /// Requests not sent: no capability (the user is signed out and a mint with that session
    /// was refused within [`MINT_RETRY`]).
    pub skipped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl World {
    /// Signs every user in (at replica `i % replicas`) and gives the API users a token.
    pub async fn new(
        stack: &Stack,
        users: &[String],
        slugs: &[String],
        grace: Duration,
        stats: Stats,
        http: reqwest::Client,
    ) -> anyhow::Result<World> {
        let apis: Vec<Api> = stack
            .replicas
            .iter()
            .map(|r| Api::new(r.cp.listen(), http.clone()))
            .collect();
        let mut clients = Vec::new();
        let seq = AtomicU64::new(0);
        for (i, user) in users.iter().enumerate() {
            let replica = i % apis.len();
            let cookie = apis[replica].sign_in(user).await?;
            let api_user = i % 2 == 1;
            let api = if api_user {
                let (id, token) = apis[replica].create_api_token(&cookie, "soak").await?;
                Some(ApiToken {
                    id,
                    token,
                    revoked: None,
                })
            } else {
                None
            };
            clients.push(Mutex::new(Client {
                user: user.clone(),
                replica,
                api_user,
                session: Session {
                    cookie,
                    id: seq.fetch_add(1, Ordering::Relaxed),
                },
                ended: HashMap::new(),
                caps: HashMap::new(),
                api,
                refused_mint: None,
            }));
        }
        Ok(World {
            clients,
            pods: slugs
                .iter()
                .map(|_| {
                    Mutex::new(PodState {
                        running: true,
                        changed: None,
                    })
                })
                .collect(),
            slugs: slugs.to_vec(),
            pod_names: stack.pods.iter().map(|p| p.name().to_owned()).collect(),
            apis,
            envoys: stack.replicas.iter().map(|r| r.listener).collect(),
            grace,
            http,
            stats,
            changes: Changes::default(),
            stop: AtomicBool::new(false),
            seq,
            retried: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        })
    }

    /// How long a revoked credential keeps being used, and a signed-out user stays out: past
    /// the grace, so that the refusal is seen once it must be.
    fn settled(&self) -> Duration {
        self.grace + SETTLED_EXTRA
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// A capability of `client` for pod `k`, and the session it came from: the one it holds
    /// while its session is live or was signed out less than [`World::settled`] ago (so its
    /// refusal is seen), else a new one. `None` when a mint was refused (recorded) or failed, or
    /// was refused less than [`MINT_RETRY`] ago.
    async fn capability(&self, c: usize, k: usize) -> Option<(String, u64)> {
        let (cookie, session, replica) = {
            let client = lock(&self.clients[c]);
            if let Some(cap) = client.caps.get(&k) {
                let fresh = client
                    .ended
                    .get(&cap.session)
                    .is_none_or(|t| t.elapsed() < self.settled());
                if fresh {
                    return Some((cap.token.clone(), cap.session));
                }
            }
            if client
                .refused_mint
                .is_some_and(|(s, t)| s == client.session.id && t.elapsed() < MINT_RETRY)
            {
                return None;
            }
            (
                client.session.cookie.clone(),
                client.session.id,
                client.replica,
            )
        };
        let sent = Instant::now();
        let minted = self.apis[replica].mint(&cookie, &self.slugs[k]).await;
        let ended = lock(&self.clients[c]).ended.get(&session).copied();
        let (verdict, detail, token) = match minted {
            Ok((status, Some(token))) if (200..300).contains(&status) => {
                match ended.filter(|t| t.elapsed() >= self.grace) {
                    // Signed out before the mint was sent, and it still minted.
                    Some(t) if t < sent => (
                        Verdict::Error("mint: 2xx after signed out".to_owned()),
                        String::new(),
                        None,
                    ),
                    _ => (Verdict::Ok, String::new(), Some(token)),
                }
            }
            Ok((401, _)) if ended.is_some() => (
                Verdict::Refused("signed out → mint 401".to_owned()),
                String::new(),
                None,
            ),
            Ok((status, _)) => (
                Verdict::Error(format!("mint: {status}")),
                format!("mint for {}", self.slugs[k]),
                None,
            ),
            Err(e) => (
                Verdict::Error("mint: transport".to_owned()),
                format!("{e:#}"),
                None,
            ),
        };
        if verdict != Verdict::Ok {
            lock(&self.clients[c]).refused_mint = Some((session, Instant::now()));
        }
        self.stats.record("mint", sent, verdict, || detail, false);
        let token = token?;
        lock(&self.clients[c]).caps.insert(
            k,
            Cap {
                token: token.clone(),
                session,
            },
        );
        Some((token, session))
    }

    /// What a request with `c`'s capability of session `session` (or its API token) to pod `k`
    /// may meet, now.
    fn expect(&self, c: usize, k: usize, credential: Credential) -> Expect {
        let pod = *lock(&self.pods[k]);
        let client = lock(&self.clients[c]);
        match credential {
            Credential::Capability(session) => Expect::new(
                pod,
                client.ended.get(&session).copied(),
                "signed out",
                self.grace,
            ),
            Credential::ApiToken(revoked) => {
                Expect::new(pod, revoked, "API token revoked", self.grace)
            }
            // Not looked up (`resolve` does it): as if valid.
            Credential::ApiTokenOf(_) => Expect::new(pod, None, "API token revoked", self.grace),
        }
    }

    /// One request through Envoy, judged and recorded.
    pub async fn request(self: &Arc<Self>, rng: &mut Rng) {
        let c = rng.below(self.clients.len());
        let k = rng.below(self.slugs.len());
        let envoy = self.envoys[rng.below(self.envoys.len())];
        let api = {
            let client = lock(&self.clients[c]);
            match &client.api {
                Some(t) if client.api_user && rng.below(2) == 0 => Some(t.clone()),
                _ => None,
            }
        };
        let (kind, header, value, credential) = match api {
            Some(t) => (
                "API token",
                "authorization",
                format!("Bearer {}", t.token),
                Credential::ApiTokenOf(t.id),
            ),
            None => match self.capability(c, k).await {
                Some((token, session)) => (
                    "capability",
                    "podgate-token",
                    token,
                    Credential::Capability(session),
                ),
                None => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        let sent = Instant::now();
        let mut retries = 0;
        let answer = loop {
            let answer = self
                .http
                .get(format!("http://{envoy}/api/info"))
                .header(reqwest::header::HOST, pod_host(&self.slugs[k]))
                .header(header, &value)
                .send()
                .await;
            let answer = match answer {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let wait = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    resp.text().await.map(|body| (status, wait, body))
                }
                Err(e) => Err(e),
            };
            // A 429 with Retry-After (the edge's exchanges of API tokens are busy) is retried
            // after the wait, as the answer asks: counted, and the latency includes the wait.
            match answer {
                Ok((429, Some(wait), _)) if retries < MAX_RETRIES && !self.stopped() => {
                    retries += 1;
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(wait.clamp(1, 5))).await;
                }
                other => break other.map(|(status, _, body)| (status, body)),
            }
        };
        let credential = self.resolve(c, credential);
        let expect = self.expect(c, k, credential);
        let (verdict, detail) = match answer {
            Ok((status, body)) => {
                let right = body.contains(&format!("\"pod\":\"{}\"", self.pod_names[k]));
                let verdict = judge(kind, &expect, status, right);
                (verdict, format!("{status} {}", truncate(&body, 300)))
            }
            Err(e) => {
                let cause = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                (Verdict::Error(format!("{kind}: {cause}")), format!("{e:#}"))
            }
        };
        self.stats.record(
            kind,
            sent,
            verdict,
            || format!("via {envoy}: {detail}"),
            true,
        );
    }

    /// An API token's revocation as the world knows it now.
    fn resolve(&self, c: usize, credential: Credential) -> Credential {
        match credential {
            Credential::ApiTokenOf(id) => {
                let client = lock(&self.clients[c]);
                let revoked = match &client.api {
                    Some(t) if t.id == id => t.revoked,
                    // Replaced: it was revoked before its replacement was made.
                    _ => Instant::now().checked_sub(self.settled()),
                };
                Credential::ApiToken(revoked)
            }
            other => other,
        }
    }

    /// One WebSocket session through Envoy: the upgrade with a capability, then a few messages,
    /// each to be echoed.
    pub async fn websocket(self: &Arc<Self>, rng: &mut Rng) {
        let candidates: Vec<usize> = (0..self.clients.len())
            .filter(|&c| !lock(&self.clients[c]).api_user)
            .collect();
        let c = candidates[rng.below(candidates.len())];
        let k = rng.below(self.slugs.len());
        let envoy = self.envoys[rng.below(self.envoys.len())];
        let Some((token, session)) = self.capability(c, k).await else {
            return;
        };
        let sent = Instant::now();
        let outcome = ws_session(envoy, &self.slugs[k], &token, &self.changes).await;
        let expect = self.expect(c, k, Credential::Capability(session));
        let (verdict, detail) = match outcome {
            Ws::Echoed => (Verdict::Ok, String::new()),
            Ws::Refused(status, body) => (judge("websocket", &expect, status, false), body),
            Ws::Cut(why) if expect.revoked || !expect.pod_running || expect.pod_recent => (
                Verdict::Refused(format!(
                    "websocket cut ({})",
                    if expect.revoked {
                        expect.revoked_by
                    } else {
                        "pod stopped"
                    }
                )),
                why,
            ),
            Ws::Cut(why) => (Verdict::Error("websocket: cut while valid".to_owned()), why),
        };
        self.changes
            .websocket_sessions
            .fetch_add(1, Ordering::Relaxed);
        self.stats.record(
            "websocket",
            sent,
            verdict,
            || format!("via {envoy}: {detail}"),
            false,
        );
    }

    /// Stops a running pod, or starts the stopped one, at a random replica's admin API.
    pub async fn toggle_pod(&self, rng: &mut Rng) {
        let stopped: Vec<usize> = (0..self.pods.len())
            .filter(|&k| !lock(&self.pods[k]).running)
            .collect();
        let (k, status) = match stopped.first() {
            Some(&k) => (k, "running"),
            None => (rng.below(self.pods.len()), "stopped"),
        };
        let api = &self.apis[rng.below(self.apis.len())];
        // Changed from the moment it is asked for.
        *lock(&self.pods[k]) = PodState {
            running: status == "running",
            changed: Some(Instant::now()),
        };
        let done = api
            .admin(
                reqwest::Method::PUT,
                &format!("/v1/pods/{}/status", self.slugs[k]),
                Some(serde_json::json!({ "status": status })),
            )
            .await;
        match done {
            Ok(_) => {
                let counter = if status == "running" {
                    &self.changes.pod_starts
                } else {
                    &self.changes.pod_stops
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.stats.error("change: pod status", format!("{e:#}")),
        }
    }

    /// Rotates the keys at a replica's admin API, or with `podgate keys rotate`.
    pub async fn rotate_keys(&self, stack: &Stack, rng: &mut Rng, cli: bool) {
        let done = if cli {
            stack.rotate_keys_cli().await
        } else {
            self.apis[rng.below(self.apis.len())]
                .admin(reqwest::Method::POST, "/v1/keys/rotate", None)
                .await
                .map(|_| ())
        };
        match done {
            Ok(()) if cli => {
                self.changes
                    .key_rotations_cli
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(()) => {
                self.changes
                    .key_rotations_api
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.stats.error("change: key rotation", format!("{e:#}")),
        }
    }

    /// Replaces the API tokens revoked longer than [`World::settled`] ago, then revokes one in use.
    pub async fn churn_api_tokens(&self, rng: &mut Rng) {
        for c in 0..self.clients.len() {
            let (replica, cookie, old) = {
                let client = lock(&self.clients[c]);
                match &client.api {
                    Some(t) if t.revoked.is_some_and(|r| r.elapsed() >= self.settled()) => {
                        (client.replica, client.session.cookie.clone(), t.id.clone())
                    }
                    _ => continue,
                }
            };
            let name = format!("soak{}", self.seq.fetch_add(1, Ordering::Relaxed));
            match self.apis[replica].create_api_token(&cookie, &name).await {
                Ok((id, token)) => {
                    let mut client = lock(&self.clients[c]);
                    if client.api.as_ref().is_some_and(|t| t.id == old) {
                        client.api = Some(ApiToken {
                            id,
                            token,
                            revoked: None,
                        });
                    }
                    self.changes
                        .api_tokens_created
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => self
                    .stats
                    .error("change: create API token", format!("{e:#}")),
            }
        }
        let live: Vec<usize> = (0..self.clients.len())
            .filter(|&c| {
                lock(&self.clients[c])
                    .api
                    .as_ref()
                    .is_some_and(|t| t.revoked.is_none())
            })
            .collect();
        if live.is_empty() {
            return;
        }
        let c = live[rng.below(live.len())];
        let (replica, cookie, id) = {
            let client = lock(&self.clients[c]);
            match &client.api {
                Some(t) => (client.replica, client.session.cookie.clone(), t.id.clone()),
                None => return,
            }
        };
        // Revoked from the moment it is asked for, whatever the call answers (a failure is
        // counted below).
        if let Some(t) = lock(&self.clients[c]).api.as_mut().filter(|t| t.id == id) {
            t.revoked = Some(Instant::now());
        }
        let done = self.apis[replica].revoke_api_token(&cookie, &id).await;
        match done {
            Ok(()) => {
                self.changes
                    .api_tokens_revoked
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self
                .stats
                .error("change: revoke API token", format!("{e:#}")),
        }
    }

    /// Signs in again the users signed out longer than [`World::settled`] ago, then signs one out.
    pub async fn churn_sessions(&self, rng: &mut Rng) {
        for c in 0..self.clients.len() {
            let (replica, user) = {
                let client = lock(&self.clients[c]);
                let out = client
                    .ended
                    .get(&client.session.id)
                    .is_some_and(|t| t.elapsed() >= self.settled());
                if !out {
                    continue;
                }
                (client.replica, client.user.clone())
            };
            match self.apis[replica].sign_in(&user).await {
                Ok(cookie) => {
                    let id = self.seq.fetch_add(1, Ordering::Relaxed);
                    lock(&self.clients[c]).session = Session { cookie, id };
                    self.changes.sign_ins.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => self.stats.error("change: sign in", format!("{e:#}")),
            }
        }
        let signed_in: Vec<usize> = (0..self.clients.len())
            .filter(|&c| {
                let client = lock(&self.clients[c]);
                !client.api_user && !client.ended.contains_key(&client.session.id)
            })
            .collect();
        if signed_in.is_empty() {
            return;
        }
        let c = signed_in[rng.below(signed_in.len())];
        let (replica, session) = {
            let client = lock(&self.clients[c]);
            (client.replica, client.session.clone())
        };
        // Signed out from the moment it is asked for: a request racing the call may see either.
        lock(&self.clients[c])
            .ended
            .insert(session.id, Instant::now());
        let done = self.apis[replica].sign_out(&session.cookie).await;
        match done {
            Ok(200) => {
                self.changes.sign_outs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(status) => self
                .stats
                .error("change: sign out", format!("answered {status}")),
            Err(e) => self.stats.error("change: sign out", format!("{e:#}")),
        }
    }

    /// Sleeps until `next` and moves it on by `period`; false once the world has stopped.
    pub async fn tick(&self, next: &mut Instant, period: Duration) -> bool {
        while Instant::now() < *next {
            if self.stopped() {
                return false;
            }
            let nap = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            tokio::time::sleep(nap).await;
        }
        *next += period;
        !self.stopped()
    }

    /// Fixed-rate requests (open loop: one task per request, at most `max_in_flight` at once;
    /// a request that finds the limit reached is not sent and counted as `behind`). Returns
    /// (sent, behind).
    pub async fn paced(self: &Arc<Self>, rate: f64, max_in_flight: usize) -> (u64, u64) {
        let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
        let start = Instant::now();
        let mut issued = 0u64;
        let mut behind = 0u64;
        let mut seed = 1u64;
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !self.stopped() {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            while issued < due {
                issued += 1;
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    behind += 1;
                    continue;
                };
                seed += 1;
                let world = Arc::clone(self);
                let mut rng = Rng::new(seed);
                tokio::spawn(async move {
                    world.request(&mut rng).await;
                    drop(permit);
                });
            }
        }
        // Wait for the requests in flight.
        let _ = slots
            .acquire_many(u32::try_from(max_in_flight).unwrap_or(u32::MAX))
            .await;
        (issued - behind, behind)
    }

    /// Closed loop: `workers` tasks send requests back to back for `duration`. Returns how
    /// many answers came.
    pub async fn closed_loop(self: &Arc<Self>, workers: usize, duration: Duration) -> u64 {
        let done = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + duration;
        let mut tasks = Vec::new();
        for w in 0..workers {
            let world = Arc::clone(self);
            let done = Arc::clone(&done);
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new(1000 + w as u64);
                while Instant::now() < until {
                    world.request(&mut rng).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        done.load(Ordering::Relaxed)
    }

    /// `sessions` WebSocket sessions at a time until the world stops.
    pub async fn websockets(self: &Arc<Self>, sessions: usize) {
        let mut tasks = Vec::new();
        for w in 0..sessions {
            let world = Arc::clone(self);
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new(5000 + w as u64);
                while !world.stopped() {
                    world.websocket(&mut rng).await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

#[derive(Debug, Clone)]
enum Credential {
    /// A capability minted with this session.
    Capability(u64),
    /// An API token by id, before its revocation is looked up.
    ApiTokenOf(String),
    /// An API token and when it was revoked.
    ApiToken(Option<Instant>),
}

enum Ws {
    Echoed,
    Refused(u16, String),
    Cut(String),
}

/// How often one request is sent again after a 429 with Retry-After.
const MAX_RETRIES: u32 = 3;

/// Messages per WebSocket session, and the pause between them.
const WS_MESSAGES: usize = 5;
const WS_PAUSE: Duration = Duration::from_millis(200);

async fn ws_session(envoy: SocketAddr, slug: &str, token: &str, changes: &Changes) -> Ws {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let Ok(mut request) = format!("ws://{}/ws", pod_host(slug)).into_client_request() else {
        return Ws::Cut("bad request".to_owned());
    };
    if let Ok(value) = token.parse() {
        request.headers_mut().insert("podgate-token", value);
    }
    let stream = match tokio::net::TcpStream::connect(envoy).await {
        Ok(s) => s,
        Err(e) => return Ws::Cut(format!("connect: {e}")),
    };
    let handshake = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(request, stream),
    )
    .await;
    let mut ws = match handshake {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(WsError::Http(resp))) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| truncate(&String::from_utf8_lossy(b), 300).to_owned())
                .unwrap_or_default();
            return Ws::Refused(status, body);
        }
        Ok(Err(e)) => return Ws::Cut(format!("handshake: {e}")),
        Err(_) => return Ws::Cut("handshake: timeout".to_owned()),
    };
    for i in 0..WS_MESSAGES {
        let text = format!("soak {i}");
        if let Err(e) = ws.send(Message::text(text.clone())).await {
            return Ws::Cut(format!("send: {e}"));
        }
        let echo = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(other)) => return Err(format!("got {other:?}")),
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("closed".to_owned()),
                }
            }
        })
        .await;
        match echo {
            Ok(Ok(t)) if t == text => {
                changes.websocket_messages.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(t)) => return Ws::Cut(format!("echo {t:?} for {text:?}")),
            Ok(Err(e)) => return Ws::Cut(e),
            Err(_) => return Ws::Cut("echo: timeout".to_owned()),
        }
        tokio::time::sleep(WS_PAUSE).await;
    }
    let _ = ws.close(None).await;
    Ws::Echoed
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
