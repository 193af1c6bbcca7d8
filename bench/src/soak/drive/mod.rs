//! The soak's world: the users, their sessions, capabilities and API tokens, the pods' states,
//! and what a request may meet now (`expect`). What the world does is in [`traffic`] (requests
//! and WebSocket sessions through Envoy) and [`changes`] (the background changes).
//!
//! Half the users only ever use capabilities and are the ones signed out; the other half also
//! use API tokens and are the ones whose tokens are revoked, so each refusal has one cause.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::stack::{Api, Stack};
use super::world::{Expect, PodState, Stats, Verdict};

mod changes;
pub use changes::Changes;
mod traffic;

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
