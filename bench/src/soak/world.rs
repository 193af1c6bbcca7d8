//! What the soak knows about the world while it changes it, and how it judges each answer.
//!
//! Every change the background tasks make (a pod stopped or started, an API token revoked, a
//! session signed out) is recorded with the time it was asked for. An answer is judged against
//! the state at the time of the request: a change older than the propagation grace must show
//! (a stopped pod is a 503, a revoked token or a signed-out session's capability a 401), a
//! change within it may or may not show yet (either answer is fine), and everything else must
//! be a 200 from the right pod. Anything outside that is an error, counted by its cause.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// A pod's status as the soak last set it.
#[derive(Debug, Clone, Copy)]
pub struct PodState {
    pub running: bool,
    /// When the status last changed (`None`: never since the start).
    pub changed: Option<Instant>,
}

/// What a request is allowed to meet, from the state when it was sent.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// The pod is running (or was changed within the grace, so 200 and 503 both fit).
    pub pod_running: bool,
    pub pod_recent: bool,
    /// The credential has been revoked (signed out, API token revoked), and when.
    pub revoked: bool,
    pub revoked_recent: bool,
    /// What the revocation was, for the report.
    pub revoked_by: &'static str,
}

impl Expect {
    pub fn new(
        pod: PodState,
        revoked_at: Option<Instant>,
        revoked_by: &'static str,
        grace: Duration,
    ) -> Expect {
        let recent = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < grace);
        Expect {
            pod_running: pod.running,
            pod_recent: recent(pod.changed),
            revoked: revoked_at.is_some(),
            revoked_recent: recent(revoked_at),
            revoked_by,
        }
    }
}

/// The verdict on one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// A refusal a change asked for (its name).
    Refused(String),
    /// Anything else (its cause).
    Error(String),
}

/// Judges an HTTP answer through Envoy: `status`, and whether the body names the pod asked for
/// (`right_pod`, only looked at for a 200). `kind` names the request in causes.
pub fn judge(kind: &str, expect: &Expect, status: u16, right_pod: bool) -> Verdict {
    let may_be_valid = !expect.revoked || expect.revoked_recent;
    let may_be_refused = expect.revoked;
    let may_run = expect.pod_running || expect.pod_recent;
    let may_be_stopped = !expect.pod_running || expect.pod_recent;
    match status {
        200 if may_be_valid && may_run => {
            if right_pod {
                Verdict::Ok
            } else {
                Verdict::Error(format!("{kind}: 200 from another pod"))
            }
        }
        401 if may_be_refused => Verdict::Refused(format!("{} → 401", expect.revoked_by)),
        // Every soak client has the same address, so revoked API tokens failing again and again
        // trip the control plane's limit on failed API tokens per client: still a refusal.
        429 if may_be_refused && kind == "API token" => Verdict::Refused(format!(
            "{} → 429 (failed tokens per client)",
            expect.revoked_by
        )),
        503 if may_be_stopped => Verdict::Refused("pod stopped → 503".to_owned()),
        200 if !may_be_valid => Verdict::Error(format!("{kind}: 200 after {}", expect.revoked_by)),
        200 => Verdict::Error(format!("{kind}: 200 from a stopped pod")),
        other => {
            let state = if !expect.pod_running {
                "pod stopped"
            } else if expect.revoked {
                expect.revoked_by
            } else {
                "valid, pod running"
            };
            Verdict::Error(format!("{kind}: {other} ({state})"))
        }
    }
}

/// The latency and outcome records, by time bucket.
pub struct Stats {
    start: Instant,
    /// An empty histogram each new bucket starts from.
    empty: Histogram<u64>,
    bucket: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    buckets: Vec<Bucket>,
    ok: BTreeMap<String, u64>,
    refused: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    /// A few examples of each error cause (answer bodies, transport errors).
    examples: BTreeMap<String, Vec<String>>,
}

pub struct Bucket {
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub refused: u64,
    pub errors: u64,
}

/// One bucket's figures, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BucketFigures {
    pub from_s: u64,
    pub requests: u64,
    pub ok: u64,
    pub refused: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Everything counted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Totals {
    pub ok: BTreeMap<String, u64>,
    pub refused: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub error_examples: BTreeMap<String, Vec<String>>,
    pub buckets: Vec<BucketFigures>,
}

impl Stats {
    pub fn new(bucket: Duration) -> anyhow::Result<Stats> {
        Ok(Stats {
            start: Instant::now(),
            // Microseconds, 1 µs to 60 s, 3 significant digits.
            empty: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            bucket,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Records one request of `kind` sent at `sent` (latency to now, into the bucket of `sent`)
    /// and its verdict; `detail` is kept as an example of an error.
    pub fn record(
        &self,
        kind: &str,
        sent: Instant,
        verdict: Verdict,
        detail: impl FnOnce() -> String,
        timed: bool,
    ) {
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        let index = usize::try_from(
            sent.saturating_duration_since(self.start).as_secs() / self.bucket.as_secs().max(1),
        )
        .unwrap_or(0);
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while inner.buckets.len() <= index {
            inner.buckets.push(Bucket {
                latency: self.empty.clone(),
                ok: 0,
                refused: 0,
                errors: 0,
            });
        }
        let bucket = &mut inner.buckets[index];
        if timed {
            let _ = bucket.latency.record(micros.clamp(1, 60_000_000));
        }
        match verdict {
            Verdict::Ok => {
                bucket.ok += 1;
                *inner.ok.entry(kind.to_owned()).or_default() += 1;
            }
            Verdict::Refused(what) => {
                bucket.refused += 1;
                *inner.refused.entry(what).or_default() += 1;
            }
            Verdict::Error(cause) => {
                bucket.errors += 1;
                let examples = inner.examples.entry(cause.clone()).or_default();
                if examples.len() < 3 {
                    examples.push(detail());
                }
                *inner.errors.entry(cause).or_default() += 1;
            }
        }
    }

    /// Counts an error that is no request's answer (a background change that failed).
    pub fn error(&self, cause: &str, detail: String) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let examples = inner.examples.entry(cause.to_owned()).or_default();
        if examples.len() < 3 {
            examples.push(detail);
        }
        *inner.errors.entry(cause.to_owned()).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.errors.values().sum()
    }

    pub fn totals(&self) -> Totals {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Totals {
            ok: inner.ok.clone(),
            refused: inner.refused.clone(),
            errors: inner.errors.clone(),
            error_examples: inner.examples.clone(),
            buckets: inner
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| BucketFigures {
                    from_s: i as u64 * self.bucket.as_secs().max(1),
                    requests: b.ok + b.refused + b.errors,
                    ok: b.ok,
                    refused: b.refused,
                    errors: b.errors,
                    p50_ms: ms(&b.latency, 0.5),
                    p90_ms: ms(&b.latency, 0.9),
                    p99_ms: ms(&b.latency, 0.99),
                    max_ms: b.latency.max() as f64 / 1000.0,
                })
                .collect(),
        }
    }
}
