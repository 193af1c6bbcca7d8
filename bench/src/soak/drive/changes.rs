//! The soak's background changes, each on its own period: a pod stopped or started again
//! (admin API), keys rotated (admin API and `podgate keys rotate`, in turn), an API token
//! revoked and replaced, a user signed out and signed in again (dev login).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use podgate_testkit::XorShift;

use super::super::stack::Stack;
use super::super::world::PodState;
use super::{lock, ApiToken, Session, World};

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

impl World {
    /// Stops a running pod, or starts the stopped one, at a random replica's admin API.
    pub async fn toggle_pod(&self, rng: &mut XorShift) {
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
    pub async fn rotate_keys(&self, stack: &Stack, rng: &mut XorShift, cli: bool) {
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
    pub async fn churn_api_tokens(&self, rng: &mut XorShift) {
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
    pub async fn churn_sessions(&self, rng: &mut XorShift) {
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
}
