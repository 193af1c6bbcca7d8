//! Starting stopped pods for their users (`POST /api/proxy-wake`, in `http/wake.rs`): Envoy's
//! filter calls it when a browser loads a page of a pod that is not running
//! (`podgate_protocol::wake`). The capability is checked as for a renewal
//! (`renew::still_allowed`: its session live, its user still allowed to reach the pod and
//! port); then the operator's start hook (`--start-hook-url`) is called with its secret, at most
//! once per pod every `--start-hook-interval-secs`, however many control planes share the
//! database: each remembers its own recent calls (no database write for a repeat) and claims
//! the call in `pod_wakes` before making it. The platform starts the pod and reports
//! `running` through `PUT /v1/pods/{slug}/status` as usual; the browser's page reloads itself
//! until it gets through.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::StartHook;
use crate::store::{now_unix, Db};

/// Header carrying the start hook's secret.
pub const START_SECRET_HEADER: &str = "podgate-start-secret";

/// How long the control plane waits for the start hook to answer.
const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Most pods the limiter remembers; past it, entries older than the interval go first, then
/// calls wait until some do.
const MAX_TRACKED: usize = 65_536;

/// The start hook and its per-pod limit.
#[derive(Debug)]
pub struct Waker {
    hook: Option<StartHook>,
    client: reqwest::Client,
    last_call: Mutex<HashMap<String, Instant>>,
}

/// What a wake request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The hook is being called.
    Called,
    /// The hook was called for this pod less than the interval ago: not again for about
    /// `retry_after_secs` (the whole interval when another control plane called it).
    Limited { retry_after_secs: u64 },
    /// No start hook is configured.
    Off,
}

impl Waker {
    /// The waker for `hook` (none: waking is off).
    pub fn new(hook: Option<StartHook>) -> Result<Waker, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(HOOK_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Waker {
            hook,
            client,
            last_call: Mutex::new(HashMap::new()),
        })
    }

    /// Calls the start hook for `pod` unless the limit holds it back (here, or a claim in the
    /// database by this or another control plane); the call runs in the background (its
    /// failure is logged), so the filter's call returns at once.
    pub async fn wake(&self, db: &Db, pod: &str) -> Result<Woken, sqlx::Error> {
        let Some(hook) = self.hook.as_ref() else {
            return Ok(Woken::Off);
        };
        let interval = Duration::from_secs(hook.interval_secs);
        let limited = Woken::Limited {
            retry_after_secs: hook.interval_secs,
        };
        let now = Instant::now();
        {
            let Ok(mut last) = self.last_call.lock() else {
                return Ok(limited);
            };
            if let Some(left) = last
                .get(pod)
                .and_then(|at| interval.checked_sub(now.duration_since(*at)))
                .filter(|left| !left.is_zero())
            {
                return Ok(Woken::Limited {
                    retry_after_secs: left.as_secs_f64().ceil() as u64,
                });
            }
            if last.len() >= MAX_TRACKED {
                last.retain(|_, at| now.duration_since(*at) < interval);
                if last.len() >= MAX_TRACKED {
                    return Ok(limited);
                }
            }
            last.insert(pod.to_owned(), now);
        }
        let interval_secs = i64::try_from(hook.interval_secs).unwrap_or(i64::MAX);
        match db.claim_wake(pod, now_unix(), interval_secs).await {
            Ok(true) => {}
            // Another control plane called it within the interval (remembered here as well).
            Ok(false) => return Ok(limited),
            Err(e) => {
                // Not called: the next wake may try again.
                if let Ok(mut last) = self.last_call.lock() {
                    last.remove(pod);
                }
                return Err(e);
            }
        }
        let url = hook.url.replace("{pod}", pod);
        let request = self
            .client
            .post(url)
            .header(START_SECRET_HEADER, hook.secret.as_str())
            .header(reqwest::header::CONTENT_LENGTH, "0");
        let pod = pod.to_owned();
        tokio::spawn(async move {
            match request.send().await {
                Ok(resp) if resp.status().is_success() => {
                    tracing::info!(%pod, status = resp.status().as_u16(), "start hook called");
                }
                Ok(resp) => {
                    tracing::warn!(%pod, status = resp.status().as_u16(), "start hook refused");
                }
                Err(e) => tracing::warn!(%pod, error = %e, "start hook failed"),
            }
        });
        Ok(Woken::Called)
    }
}
