//! The tokens this control plane holds, in memory only, and the task that keeps them fresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::config::{open, OAuthConfig};
use super::fetch::{fetch, http_client, now_ms, Token, EXPIRY_SAFETY_MS};
use crate::key_encryption::KeyEncryption;
use crate::store::{OAuthEpoch, ServiceRow};
use crate::AppState;

/// The longest wait between two failed attempts.
const MAX_BACKOFF_MS: i64 = 60_000;
/// The first wait after a failed attempt (doubled after each further one).
const FIRST_BACKOFF_MS: i64 = 500;
/// How often [`run`] reads the services again without being told of a change: a safety net,
/// since every change is announced ([`ServiceTokens::services_changed`]).
const RESYNC: Duration = Duration::from_secs(30);
/// How soon [`run`] reads the services again after failing to.
const RETRY_READ: Duration = Duration::from_secs(1);
/// The shortest wait of [`run`] between two rounds, so that a token endpoint giving tokens of
/// almost no life is not asked in a tight loop.
const MIN_WAIT: Duration = Duration::from_millis(50);
/// How long an admin's refresh waits for the renewal task's attempt: a round's fetches (each at
/// most `FETCH_TIMEOUT`) and the attempt itself.
const REFRESH_WAIT: Duration = Duration::from_secs(25);

/// Where a service's credential comes from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Oauth,
    Fallback,
    None,
}

/// What this control plane holds for one OAuth service.
#[derive(Debug, Default)]
struct State {
    token: Option<Token>,
    /// The configuration the token was obtained with: a changed one is renewed at once.
    config: Option<OAuthConfig>,
    /// The generation of the service's [`OAuthEpoch`] the token was obtained in: an earlier one
    /// is renewed at once, and not used at all once a clear came after it.
    generation: i64,
    last_renewal_ms: Option<i64>,
    last_error: Option<String>,
    last_error_ms: Option<i64>,
    /// Failed attempts in a row with `failed_for`.
    failures: u32,
    /// No attempt with `failed_for` before this (the backoff after its failures).
    next_attempt_ms: i64,
    /// The configuration and generation the failures and the backoff are about: a changed
    /// configuration (an admin's fix) or a later generation (an admin's refresh or clear, here or
    /// at another control plane) starts afresh, tried at once and with the first backoff after a
    /// failure.
    failed_for: Option<(OAuthConfig, i64)>,
}

impl State {
    /// Forgets everything held when it belongs to an earlier service of the same name: a token
    /// or failures in a generation above the service's own, which only a service created where
    /// the clock was ahead can have reached. Returns whether a token was dropped.
    fn forget_if_earlier_service(&mut self, name: &str, epoch: OAuthEpoch) -> bool {
        let failed_above = self
            .failed_for
            .as_ref()
            .is_some_and(|(_, generation)| *generation > epoch.generation);
        if self.generation <= epoch.generation && !failed_above {
            return false;
        }
        tracing::info!(service = %name, "service OAuth state of an earlier service of this name dropped");
        let had_token = self.token.is_some();
        *self = State::default();
        had_token
    }
}

/// The OAuth tokens of the services, in memory only.
#[derive(Debug, Default)]
pub struct ServiceTokens {
    states: Mutex<HashMap<String, State>>,
    /// Wakes [`run`] to read the services again: notified after every write that may change
    /// them (`AppState::envoy_config_changed`) and for every change another control plane
    /// announces (`xds_sync`). A notification while [`run`] is busy is kept for its next wait.
    changed: tokio::sync::Notify,
    /// Whether [`run`] has finished a round (its first attempts answered or given up), and the
    /// wake-up of those waiting for it ([`ServiceTokens::first_round`]).
    round_done: AtomicBool,
    round_finished: tokio::sync::Notify,
    /// Wakes those waiting for an attempt's outcome ([`ServiceTokens::attempt_in`]).
    recorded: tokio::sync::Notify,
}

/// What admins see of a service's OAuth credential: never the token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialStatus {
    pub service: String,
    pub source: Source,
    pub oauth: bool,
    /// When the current token expires (Unix seconds), if there is one.
    pub expires_at: Option<i64>,
    /// When a token was last obtained (Unix seconds).
    pub last_renewal: Option<i64>,
    pub last_error: Option<String>,
    /// When the last error happened (Unix seconds).
    pub last_error_at: Option<i64>,
    /// Failed attempts since the last success, the last refresh or the last clear.
    pub failures: u32,
    pub fallback: bool,
}

impl ServiceTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token of service `name` usable now (its header, `Bearer <token>`), if it was
    /// obtained with `config`, the service's configuration now, and not before the last clear of
    /// `epoch`, where the service's row stands now. A token obtained with another configuration
    /// (a fetch that was under way when the configuration changed, or one this control plane
    /// held before another changed the service) is not the new configuration's: it is never
    /// used for it; nor is one an admin cleared, here or at another control plane.
    pub fn current(&self, name: &str, config: &OAuthConfig, epoch: OAuthEpoch) -> Option<String> {
        self.in_force(name, config, epoch, |t| format!("Bearer {}", t.value))
    }

    /// The token [`ServiceTokens::current`] gives, and when it expires (Unix milliseconds).
    pub fn current_until(
        &self,
        name: &str,
        config: &OAuthConfig,
        epoch: OAuthEpoch,
    ) -> Option<(String, i64)> {
        self.in_force(name, config, epoch, |t| {
            (format!("Bearer {}", t.value), t.expires_ms)
        })
    }

    /// When the token [`ServiceTokens::current`] gives expires (Unix seconds), if there is one.
    pub fn current_expiry(
        &self,
        name: &str,
        config: &OAuthConfig,
        epoch: OAuthEpoch,
    ) -> Option<i64> {
        self.in_force(name, config, epoch, |t| t.expires_ms / 1000)
    }

    /// `what` of the token of service `name` in force now (see [`ServiceTokens::current`]).
    fn in_force<T>(
        &self,
        name: &str,
        config: &OAuthConfig,
        epoch: OAuthEpoch,
        what: impl FnOnce(&Token) -> T,
    ) -> Option<T> {
        let now = now_ms();
        self.lock()
            .get(name)
            // Obtained since the last clear, and not in a generation the service has not reached
            // (an earlier service of that name, created on a control plane whose clock was ahead).
            .filter(|s| {
                s.config.as_ref() == Some(config)
                    && s.generation >= epoch.cleared
                    && s.generation <= epoch.generation
            })
            .and_then(|s| s.token.as_ref())
            .filter(|t| t.usable(now))
            .map(what)
    }

    /// Records the outcome of an attempt with `config` in `generation` (of the service's
    /// [`OAuthEpoch`] when it was read); returns whether what Envoy gets changed.
    pub(crate) fn record(
        &self,
        name: &str,
        config: &OAuthConfig,
        generation: i64,
        outcome: Result<Token, String>,
    ) -> bool {
        let now = now_ms();
        let mut states = self.lock();
        let state = states.entry(name.to_owned()).or_default();
        // An attempt started before a later one was recorded (a refresh or a clear came
        // between): the later one stands.
        if generation < state.generation {
            return false;
        }
        self.recorded.notify_waiters();
        match outcome {
            Ok(token) => {
                tracing::info!(service = %name, expires_in_ms = token.expires_ms - now, "service OAuth token obtained");
                state.token = Some(token);
                state.config = Some(config.clone());
                state.generation = generation;
                state.last_renewal_ms = Some(now);
                state.failures = 0;
                state.next_attempt_ms = 0;
                state.failed_for = None;
                true
            }
            Err(e) => {
                let failed_for = (config.clone(), generation);
                if state.failed_for.as_ref() != Some(&failed_for) {
                    state.failures = 0;
                    state.failed_for = Some(failed_for);
                }
                tracing::warn!(service = %name, failures = state.failures + 1, "service OAuth token not obtained: {e}");
                state.failures = state.failures.saturating_add(1);
                let backoff = FIRST_BACKOFF_MS
                    .saturating_mul(1i64 << state.failures.saturating_sub(1).min(20))
                    .min(MAX_BACKOFF_MS);
                state.next_attempt_ms = now + backoff;
                state.last_error = Some(e);
                state.last_error_ms = Some(now);
                false
            }
        }
    }

    /// The credential of `name` was set again, its OAuth configuration the same or not: the
    /// failures and the backoff start over. A token obtained with the same configuration is
    /// kept (an admin changing only the fallback does not drop a good token); one obtained with
    /// another is never used for the new configuration anyway ([`ServiceTokens::current`]),
    /// and the new one is fetched at once ([`ServiceTokens::due_at`]).
    pub fn credential_set(&self, name: &str) {
        if let Some(state) = self.lock().get_mut(name) {
            state.failures = 0;
            state.next_attempt_ms = 0;
            state.failed_for = None;
        }
    }

    /// The status of service `row`'s credential (never the token): where the credential
    /// Envoy gets comes from, as the filter's directory has it. `unusable`: the directory lists
    /// the service without a credential (`services::without_credential`).
    pub fn status(
        &self,
        kek: &KeyEncryption,
        row: &ServiceRow,
        unusable: bool,
    ) -> CredentialStatus {
        let opened = row
            .oauth
            .as_ref()
            .and_then(|stored| open(kek, &row.name, stored).ok());
        let token_in_force = opened
            .as_ref()
            .is_some_and(|config| self.current(&row.name, config, row.oauth_epoch).is_some());
        let now = now_ms();
        let states = self.lock();
        let state = states.get(&row.name);
        let token = state
            .and_then(|s| s.token.as_ref())
            .filter(|t| token_in_force && t.usable(now));
        let source = if unusable {
            Source::None
        } else if token.is_some() {
            Source::Oauth
        } else if row.credential.is_some() {
            Source::Fallback
        } else {
            Source::None
        };
        CredentialStatus {
            service: row.name.clone(),
            source,
            oauth: row.oauth.is_some(),
            expires_at: token.map(|t| t.expires_ms / 1000),
            last_renewal: state.and_then(|s| s.last_renewal_ms).map(|t| t / 1000),
            last_error: state.and_then(|s| s.last_error.clone()),
            last_error_at: state.and_then(|s| s.last_error_ms).map(|t| t / 1000),
            // Those of this generation: a refresh or a clear starts the count over.
            failures: state
                .filter(|s| {
                    s.failed_for
                        .as_ref()
                        .is_some_and(|(_, generation)| *generation >= row.oauth_epoch.generation)
                })
                .map_or(0, |s| s.failures),
            fallback: row.credential.is_some(),
        }
    }

    /// Waits until [`run`] has finished its first round, at most `within`; whether it has. The
    /// first configuration published after a start waits for it, so that an Envoy that kept
    /// the previous process's tokens is not pushed a configuration without them (a `502` for
    /// each OAuth service until its token comes) while the new tokens are being fetched.
    pub async fn first_round(&self, within: Duration) -> bool {
        let finished = self.round_finished.notified();
        tokio::pin!(finished);
        finished.as_mut().enable();
        if self.round_done.load(Ordering::Acquire) {
            return true;
        }
        tokio::time::timeout(within, finished).await.is_ok()
    }

    fn finished_round(&self) {
        if !self.round_done.swap(true, Ordering::AcqRel) {
            self.round_finished.notify_waiters();
        }
    }

    /// Waits until an attempt for service `name` in `generation` or a later one is recorded, at
    /// most `within`: `Ok` when it brought a token, the token endpoint's error otherwise.
    async fn attempt_in(
        &self,
        name: &str,
        generation: i64,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let recorded = self.recorded.notified();
            tokio::pin!(recorded);
            recorded.as_mut().enable();
            if let Some(state) = self.lock().get(name) {
                if state.token.is_some() && state.generation >= generation {
                    return Ok(());
                }
                if state
                    .failed_for
                    .as_ref()
                    .is_some_and(|(_, g)| *g >= generation)
                {
                    return Err(state.last_error.clone().unwrap_or_default());
                }
            }
            if tokio::time::timeout_at(deadline, recorded).await.is_err() {
                return Err(format!(
                    "no answer from the token endpoint within {} s",
                    within.as_secs()
                ));
            }
        }
    }

    /// Drops the tokens obtained before the last clear of their service's epoch (here or at
    /// another control plane), and whatever is held from an earlier service of the same name;
    /// returns whether what Envoy gets changed.
    fn forget_cleared(&self, services: &[Opened]) -> bool {
        let mut changed = false;
        let mut states = self.lock();
        for (name, _, epoch) in services {
            if let Some(state) = states.get_mut(name) {
                if state.forget_if_earlier_service(name, *epoch) {
                    changed = true;
                    continue;
                }
                if state.generation < epoch.cleared && state.token.take().is_some() {
                    tracing::info!(service = %name, "service OAuth token cleared by an admin");
                    changed = true;
                }
            }
        }
        changed
    }

    /// [`State::forget_if_earlier_service`] for service `name` at `epoch`, before an admin's
    /// refresh waits for its attempt: what an earlier service of the name held must not answer
    /// it.
    fn forget_earlier_service(&self, name: &str, epoch: OAuthEpoch) {
        if let Some(state) = self.lock().get_mut(name) {
            state.forget_if_earlier_service(name, epoch);
        }
    }

    /// The services may have changed: [`run`] reads them again.
    pub fn services_changed(&self) {
        self.changed.notify_one();
    }

    /// When service `name` is due for an attempt with `config` in `generation` (Unix
    /// milliseconds; 0: now): its token's renewal time, and never before the backoff after a
    /// failure with both allows. A token obtained with another configuration or in an earlier
    /// generation (an admin's refresh or clear since) is renewed at once, and failures with
    /// another configuration or in an earlier generation hold nothing back.
    fn due_at(&self, name: &str, config: &OAuthConfig, generation: i64) -> i64 {
        let states = self.lock();
        let Some(state) = states.get(name) else {
            return 0;
        };
        let renew_at = match (&state.token, &state.config) {
            (Some(t), Some(c)) if c == config && state.generation >= generation => {
                t.renew_at_ms(config.renew_margin_secs)
            }
            _ => 0,
        };
        let backoff_until = match &state.failed_for {
            Some((c, g)) if c == config && *g >= generation => state.next_attempt_ms,
            _ => 0,
        };
        renew_at.max(backoff_until)
    }

    /// Whether service `name` is due for an attempt at `now`, with `config` in `generation`.
    fn due(&self, name: &str, config: &OAuthConfig, generation: i64, now: i64) -> bool {
        now >= self.due_at(name, config, generation)
    }

    /// When [`run`] has something to do next for `services`: the earliest attempt due, or the
    /// earliest moment a held token stops being usable (when it is swept and Envoy loses it).
    fn next_wake_ms(&self, services: &[Opened]) -> Option<i64> {
        let due = services
            .iter()
            .map(|(name, config, epoch)| self.due_at(name, config, epoch.generation))
            .min();
        let expiry = self
            .lock()
            .values()
            .filter_map(|s| s.token.as_ref())
            .map(|t| t.expires_ms - EXPIRY_SAFETY_MS)
            .min();
        due.into_iter().chain(expiry).min()
    }

    /// Drops the states of services that have no OAuth configuration any more, and tokens that
    /// are no longer usable; returns whether what Envoy gets changed.
    fn sweep(&self, oauth_services: &[String], now: i64) -> bool {
        let dropped = {
            let mut states = self.lock();
            let before = states.len();
            states.retain(|name, _| oauth_services.contains(name));
            states.len() != before
        };
        self.sweep_expired(now) || dropped
    }

    /// Drops the tokens that are no longer usable; returns whether what Envoy gets changed.
    fn sweep_expired(&self, now: i64) -> bool {
        let mut changed = false;
        for (name, state) in self.lock().iter_mut() {
            if state.token.as_ref().is_some_and(|t| !t.usable(now)) {
                tracing::warn!(service = %name, "service OAuth token expired without a renewal");
                state.token = None;
                changed = true;
            }
        }
        changed
    }
}

/// For `POST …/credential/refresh`, once service `row`'s epoch moved to a new generation:
/// wakes this control plane's renewal task (and announces the change to the others, whose
/// tasks renew their own) and waits for its attempt in that generation; returns the token
/// endpoint's error when no token came. The renewal task makes the attempt, so that one
/// control plane never asks for two tokens at once.
pub async fn refresh(state: &AppState, row: &ServiceRow) -> Result<(), String> {
    if row.oauth.is_none() {
        return Err("the service has no OAuth credential".into());
    }
    let tokens = state.service_tokens();
    tokens.forget_earlier_service(&row.name, row.oauth_epoch);
    state.envoy_config_changed().await;
    tokens
        .attempt_in(&row.name, row.oauth_epoch.generation, REFRESH_WAIT)
        .await
}

/// Keeps the OAuth tokens of every service fresh until `stop` completes: each due service gets
/// an attempt (concurrently), and every change asks for a configuration push.
///
/// The services are read at start, when told of a change ([`ServiceTokens::services_changed`])
/// and every [`RESYNC`] as a safety net; between reads the task sleeps until the next attempt
/// is due or a token stops being usable, so the renewals keep to the tokens' expiry.
pub async fn run(state: AppState, stop: impl std::future::Future<Output = ()>) {
    let client = http_client();
    let tokens = state.service_tokens();
    tokio::pin!(stop);
    // The OAuth services, their configurations and epochs, as last read.
    let mut services: Vec<Opened> = Vec::new();
    // The OAuth services whose configuration does not open, as last read: no token for them.
    let mut unusable_names: Vec<String> = Vec::new();
    let mut read = true;
    let mut next_read = tokio::time::Instant::now();
    loop {
        let mut changed = false;
        if read {
            match state.db().list_services().await {
                Ok(rows) => {
                    let (opened, unusable) = oauth_services(&state, rows);
                    services = opened;
                    unusable_names = unusable.iter().map(|(name, _, _)| name.clone()).collect();
                    let names: Vec<String> = services
                        .iter()
                        .map(|(name, _, _)| name.clone())
                        .chain(unusable_names.iter().cloned())
                        .collect();
                    changed |= tokens.sweep(&names, now_ms());
                    changed |= tokens.forget_cleared(&services);
                    for (name, epoch, e) in unusable {
                        changed |= tokens.record(
                            &name,
                            &OAuthConfig::unusable(),
                            epoch.generation,
                            Err(format!("the OAuth configuration cannot be opened: {e}")),
                        );
                    }
                    next_read = tokio::time::Instant::now() + RESYNC;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "service OAuth renewal: cannot read the services");
                    next_read = tokio::time::Instant::now() + RETRY_READ;
                }
            }
        }
        let now = now_ms();
        changed |= tokens.sweep_expired(now);
        let mut attempts = tokio::task::JoinSet::new();
        for (name, config, epoch) in &services {
            if !tokens.due(name, config, epoch.generation, now) {
                continue;
            }
            let (client, name, config) = (client.clone(), name.clone(), config.clone());
            let generation = epoch.generation;
            attempts.spawn(async move {
                let outcome = fetch(&client, &config).await;
                (name, config, generation, outcome)
            });
        }
        while let Some(done) = attempts.join_next().await {
            if let Ok((name, config, generation, outcome)) = done {
                state.metrics().service_oauth_fetch(&name, outcome.is_ok());
                changed |= tokens.record(&name, &config, generation, outcome);
            }
        }
        tokens.finished_round();
        let expiries: Vec<(String, Option<i64>)> = services
            .iter()
            .map(|(name, config, epoch)| {
                (name.clone(), tokens.current_expiry(name, config, *epoch))
            })
            .chain(unusable_names.iter().map(|name| (name.clone(), None)))
            .collect();
        state.metrics().service_oauth_expiries(&expiries);
        if changed {
            state.envoy_config_changed().await;
        }
        let mut wake = next_read;
        if let Some(at) = tokens.next_wake_ms(&services) {
            let wait_ms = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
            wake = wake.min(tokio::time::Instant::now() + Duration::from_millis(wait_ms));
        }
        wake = wake.max(tokio::time::Instant::now() + MIN_WAIT);
        tokio::select! {
            () = &mut stop => return,
            () = tokens.changed.notified() => read = true,
            () = tokio::time::sleep_until(wake) => {
                read = tokio::time::Instant::now() >= next_read;
            }
        }
    }
}

/// A service's name, its OAuth configuration, opened, and its epoch.
type Opened = (String, OAuthConfig, OAuthEpoch);
/// A service's name, its epoch, and why its OAuth configuration does not open.
type Unusable = (String, OAuthEpoch, String);

/// The OAuth services of `rows` with their configurations opened, and those whose
/// configuration does not open, with why.
fn oauth_services(state: &AppState, rows: Vec<ServiceRow>) -> (Vec<Opened>, Vec<Unusable>) {
    let mut opened = Vec::new();
    let mut unusable = Vec::new();
    for row in rows {
        let Some(stored) = &row.oauth else { continue };
        match open(&state.config().key_encryption, &row.name, stored) {
            Ok(config) => opened.push((row.name, config, row.oauth_epoch)),
            Err(e) => unusable.push((row.name, row.oauth_epoch, e.to_string())),
        }
    }
    (opened, unusable)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::config::parse;
    use super::*;
    use serde_json::json;

    /// A client-credentials configuration, as the tests' services have.
    fn client_credentials() -> OAuthConfig {
        parse(json!({"token_url": "https://idp.example/token", "grant": "client_credentials", "client_id": "c", "client_secret": "s"})).unwrap()
    }

    /// A token obtained now that lives an hour.
    fn token(value: &str) -> Token {
        let now = now_ms();
        Token {
            value: value.into(),
            obtained_ms: now,
            expires_ms: now + 3_600_000,
        }
    }

    #[test]
    fn the_task_wakes_for_the_next_renewal_backoff_or_expiry() {
        let c = client_credentials();
        let tokens = ServiceTokens::default();
        let services = vec![("api".to_owned(), c.clone(), OAuthEpoch::default())];
        // Never tried: due now.
        assert_eq!(tokens.next_wake_ms(&services), Some(0));
        assert!(tokens.due("api", &c, 0, 1));
        // A token: due at its renewal time (a quarter of a short life), awake before expiry.
        let now = now_ms();
        let token = Token {
            value: "t".into(),
            obtained_ms: now,
            expires_ms: now + 4_000,
        };
        assert!(tokens.record("api", &c, 0, Ok(token.clone())));
        assert_eq!(tokens.next_wake_ms(&services), Some(now + 1_000));
        assert!(!tokens.due("api", &c, 0, now + 999));
        assert!(tokens.due("api", &c, 0, now + 1_000));
        // A failure: not before the backoff, and awake when the token stops being usable.
        assert!(!tokens.record("api", &c, 0, Err("down".into())));
        let backoff_until = tokens.due_at("api", &c, 0);
        assert!(backoff_until >= now + 1_000, "{backoff_until}");
        assert_eq!(
            tokens.next_wake_ms(&[]),
            Some(token.expires_ms - EXPIRY_SAFETY_MS)
        );
        // Another configuration (an admin's fix): tried at once, whatever the backoff of the
        // old one, and its own first failure waits the first backoff only.
        let mut other = c.clone();
        other.scope = Some("more".into());
        for _ in 0..5 {
            tokens.record("api", &c, 0, Err("down".into()));
        }
        assert!(tokens.due_at("api", &c, 0) >= now_ms() + 8_000);
        assert_eq!(tokens.due_at("api", &other, 0), 0);
        assert!(tokens.due("api", &other, 0, now_ms()));
        tokens.record("api", &other, 0, Err("still propagating".into()));
        assert_eq!(tokens.lock()["api"].failures, 1);
        assert!(tokens.due_at("api", &other, 0) <= now_ms() + FIRST_BACKOFF_MS);
        // Cleared by an admin (generation 1): tried at once, and the count starts over too.
        tokens.record("api", &other, 0, Err("again".into()));
        assert!(tokens.due("api", &other, 1, now_ms()));
        tokens.record("api", &other, 1, Err("after the clear".into()));
        assert_eq!(tokens.lock()["api"].failures, 1);
        // No longer an OAuth service: forgotten.
        assert!(tokens.sweep(&[], now));
        assert_eq!(tokens.next_wake_ms(&services), Some(0));
    }

    /// A refresh or a clear made at any control plane reaches this one as the service's epoch:
    /// after a refresh the token held is renewed at once and used until its successor comes;
    /// after a clear it is not used at all. Failures in an earlier generation hold nothing back.
    #[test]
    fn a_refresh_renews_the_token_at_once_and_a_clear_stops_its_use() {
        let c = client_credentials();
        let tokens = ServiceTokens::default();
        let at = |generation, cleared| OAuthEpoch {
            generation,
            cleared,
        };
        let now = now_ms();
        assert!(tokens.record("api", &c, 0, Ok(token("first"))));
        assert_eq!(
            tokens.current("api", &c, at(0, 0)).as_deref(),
            Some("Bearer first")
        );
        assert!(!tokens.due("api", &c, 0, now));
        // Refreshed (generation 1): still used, and due now.
        assert_eq!(
            tokens.current("api", &c, at(1, 0)).as_deref(),
            Some("Bearer first")
        );
        assert!(tokens.due("api", &c, 1, now));
        // The renewal in generation 1 fails: backoff in generation 1, none in generation 2.
        tokens.record("api", &c, 1, Err("down".into()));
        assert!(!tokens.due("api", &c, 1, now_ms()));
        assert!(tokens.due("api", &c, 2, now_ms()));
        // Cleared (generation 2): never used again, whatever its expiry.
        assert_eq!(tokens.current("api", &c, at(2, 2)), None);
        assert!(tokens.record("api", &c, 2, Ok(token("second"))));
        assert_eq!(
            tokens.current("api", &c, at(2, 2)).as_deref(),
            Some("Bearer second")
        );
        assert!(!tokens.due("api", &c, 2, now_ms()));
        // An attempt of generation 1 answered late changes nothing.
        assert!(!tokens.record("api", &c, 1, Ok(token("late"))));
        assert_eq!(
            tokens.current("api", &c, at(2, 2)).as_deref(),
            Some("Bearer second")
        );
        // Cleared again at another control plane: the renewal task's read drops the token.
        let services = vec![("api".to_owned(), c.clone(), at(3, 3))];
        assert!(tokens.forget_cleared(&services));
        assert!(tokens.lock()["api"].token.is_none());
        assert!(!tokens.forget_cleared(&services));
    }

    /// A service deleted and made again at a control plane whose clock is behind the one that
    /// made the first: the new service's generations are below the old one's. Nothing held for
    /// the old one is used for the new one, and the new one's attempts are recorded once the
    /// services are read.
    #[test]
    fn nothing_of_an_earlier_service_of_the_same_name_is_used_for_a_new_one() {
        let c = client_credentials();
        let tokens = ServiceTokens::default();
        let old = OAuthEpoch {
            generation: 2_000,
            cleared: 2_000,
        };
        let new = OAuthEpoch {
            generation: 1_000,
            cleared: 1_000,
        };
        assert!(tokens.record("api", &c, old.generation, Ok(token("old"))));
        assert_eq!(
            tokens.current("api", &c, old).as_deref(),
            Some("Bearer old")
        );
        // The same configuration, the new service: not the old one's token.
        assert_eq!(tokens.current("api", &c, new), None);
        // Read with the services, the old state goes, and the new service's attempts count.
        assert!(tokens.forget_cleared(&[("api".into(), c.clone(), new)]));
        assert!(tokens.due("api", &c, new.generation, now_ms()));
        assert!(tokens.record("api", &c, new.generation, Ok(token("new"))));
        assert_eq!(
            tokens.current("api", &c, new).as_deref(),
            Some("Bearer new")
        );
        // An earlier service whose attempts only failed: its backoff and failures go too.
        let tokens = ServiceTokens::default();
        for _ in 0..4 {
            tokens.record("other", &c, old.generation, Err("down".into()));
        }
        assert!(!tokens.due("other", &c, old.generation, now_ms()));
        tokens.forget_earlier_service("other", new);
        assert!(tokens.due("other", &c, new.generation, now_ms()));
        assert_eq!(tokens.lock()["other"].failures, 0);
    }
}
