//! The soak's traffic: `GET /api/info` on a pod host through a random Envoy, paced at a fixed
//! rate or back to back, by signed-in users with a capability (`podgate-token`) or an API token
//! (`Authorization: Bearer`); and a few WebSocket sessions at a time exchanging messages with
//! the pods. Each answer is judged against what the world expects now.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use podgate_testkit::XorShift;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use super::super::stack::pod_host;
use super::super::world::{judge, Verdict};

use super::{lock, Changes, Credential, World};

impl World {
    /// One request through Envoy, judged and recorded.
    pub async fn request(self: &Arc<Self>, rng: &mut XorShift) {
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

    /// One WebSocket session through Envoy: the upgrade with a capability, then a few messages,
    /// each to be echoed.
    pub async fn websocket(self: &Arc<Self>, rng: &mut XorShift) {
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
                let mut rng = XorShift::seeded(seed);
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
                let mut rng = XorShift::seeded(1000 + w as u64);
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
                let mut rng = XorShift::seeded(5000 + w as u64);
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
