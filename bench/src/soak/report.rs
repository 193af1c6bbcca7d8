//! The soak's report: JSON and Markdown in the results directory, the Markdown on stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::drive::Changes;
use super::world::Totals;
use super::Settings;

/// Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// Now as `2026-01-02T030405Z` (file names).
pub fn utc_now() -> String {
    chrono::DateTime::from_timestamp(unix_now(), 0)
        .map(|t| t.format("%Y-%m-%dT%H%M%SZ").to_string())
        .unwrap_or_default()
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    /// False when `--rate` was given.
    pub measured: bool,
    /// Answers per second, closed loop.
    pub rate: f64,
    pub secs: f64,
    /// Answers during the measurement that were not a 200 from the right pod.
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RssSample {
    pub at_s: u64,
    pub process: String,
    pub rss_kib: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    pub process: String,
    pub pid: u32,
    pub start_kib: Option<u64>,
    pub end_kib: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangeCounts {
    pub pod_stops: u64,
    pub pod_starts: u64,
    pub key_rotations_api: u64,
    pub key_rotations_cli: u64,
    pub api_tokens_created: u64,
    pub api_tokens_revoked: u64,
    pub sign_ins: u64,
    pub sign_outs: u64,
    pub websocket_sessions: u64,
    pub websocket_messages: u64,
}

/// What the report is made of.
pub struct Inputs<'a> {
    pub settings: &'a Settings,
    pub started_at: String,
    pub database: &'static str,
    pub replicas: usize,
    pub saturation: Saturation,
    pub rate: f64,
    pub duration: Duration,
    pub sent: u64,
    pub behind: u64,
    pub retried: u64,
    pub skipped: u64,
    pub processes: &'a [(String, u32)],
    pub rss_start: Vec<Option<u64>>,
    pub rss_end: Vec<Option<u64>>,
    pub rss_samples: Vec<RssSample>,
    pub load_start: String,
    pub changes: &'a Changes,
    pub totals: Totals,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_at: String,
    pub command: String,
    pub database: &'static str,
    pub replicas: usize,
    pub envoys: usize,
    pub pods: usize,
    pub users: usize,
    pub cpus: usize,
    pub load_average_at_start: String,
    pub load_average_at_end: String,
    pub saturation: Saturation,
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub duration_secs: f64,
    /// Requests the pacer started, and those it skipped because the limit in flight was reached.
    pub sent: u64,
    pub behind: u64,
    /// Requests sent again after a 429 with Retry-After (then judged by the last answer).
    pub retried_after_429: u64,
    /// Requests the pacer started that were not sent: the user was signed out and had a mint
    /// refused within the last second.
    pub skipped_signed_out: u64,
    pub grace_secs: f64,
    pub change_secs: f64,
    pub changes: ChangeCounts,
    pub rss: Vec<Rss>,
    pub rss_samples: Vec<RssSample>,
    pub totals: Totals,
    pub passed: bool,
}

impl Report {
    pub fn new(i: Inputs<'_>) -> Report {
        let c = i.changes;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let errors: u64 = i.totals.errors.values().sum();
        let rss = i
            .processes
            .iter()
            .enumerate()
            .map(|(n, (name, pid))| Rss {
                process: name.clone(),
                pid: *pid,
                start_kib: i.rss_start.get(n).copied().flatten(),
                end_kib: i.rss_end.get(n).copied().flatten(),
            })
            .collect();
        let secs = i.duration.as_secs_f64();
        let http: u64 = i.totals.buckets.iter().map(|b| b.requests).sum();
        Report {
            started_at: i.started_at,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            database: i.database,
            replicas: i.replicas,
            envoys: i.replicas,
            pods: i.settings.pods,
            users: i.settings.users,
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            load_average_at_start: i.load_start,
            load_average_at_end: loadavg(),
            saturation: i.saturation,
            target_rate: i.rate,
            achieved_rate: if secs > 0.0 { http as f64 / secs } else { 0.0 },
            duration_secs: secs,
            sent: i.sent,
            behind: i.behind,
            retried_after_429: i.retried,
            skipped_signed_out: i.skipped,
            grace_secs: i.settings.grace_secs,
            change_secs: i.settings.change_secs,
            changes: ChangeCounts {
                pod_stops: get(&c.pod_stops),
                pod_starts: get(&c.pod_starts),
                key_rotations_api: get(&c.key_rotations_api),
                key_rotations_cli: get(&c.key_rotations_cli),
                api_tokens_created: get(&c.api_tokens_created),
                api_tokens_revoked: get(&c.api_tokens_revoked),
                sign_ins: get(&c.sign_ins),
                sign_outs: get(&c.sign_outs),
                websocket_sessions: get(&c.websocket_sessions),
                websocket_messages: get(&c.websocket_messages),
            },
            rss,
            rss_samples: i.rss_samples,
            totals: i.totals,
            passed: errors == 0,
        }
    }

    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let mib =
            |k: Option<u64>| k.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
        let _ = writeln!(
            m,
            "### Soak {} ({})\n\n`{}`\n\n{} replica(s) of `podgate serve` on {}, {} Envoy(s) fed over \
             ADS, {} fake pods, {} users; {} CPUs, load average {} at the start, {} at the end.\n",
            self.started_at,
            if self.passed { "passed" } else { "FAILED" },
            self.command,
            self.replicas,
            self.database,
            self.envoys,
            self.pods,
            self.users,
            self.cpus,
            self.load_average_at_start,
            self.load_average_at_end,
        );
        let _ = writeln!(
            m,
            "Saturation {:.0} req/s{}; steady load {:.0} req/s asked, {:.0} req/s answered, for {:.0} s \
             ({} requests not sent: too many in flight; {} not sent: signed out, a mint refused \
             within the last second; {} sent again after a 429 with Retry-After, judged by the \
             last answer). Changes every {:.0} s, judged with a \
             {:.0} s grace.\n",
            self.saturation.rate,
            if self.saturation.measured {
                format!(
                    " (closed loop, {:.0} s, {} errors)",
                    self.saturation.secs, self.saturation.errors
                )
            } else {
                " (given)".to_owned()
            },
            self.target_rate,
            self.achieved_rate,
            self.duration_secs,
            self.behind,
            self.skipped_signed_out,
            self.retried_after_429,
            self.change_secs,
            self.grace_secs,
        );
        let c = &self.changes;
        let _ = writeln!(
            m,
            "Changes made: {} pod stops, {} pod starts, {} key rotations (admin API) and {} \
             (`podgate keys rotate`), {} API tokens revoked and {} created, {} sign-outs and {} \
             sign-ins; {} WebSocket sessions, {} messages echoed.\n",
            c.pod_stops,
            c.pod_starts,
            c.key_rotations_api,
            c.key_rotations_cli,
            c.api_tokens_revoked,
            c.api_tokens_created,
            c.sign_outs,
            c.sign_ins,
            c.websocket_sessions,
            c.websocket_messages,
        );
        let section = |m: &mut String, title: &str, map: &BTreeMap<String, u64>| {
            let _ = writeln!(m, "| {title} | count |\n|---|---:|");
            if map.is_empty() {
                let _ = writeln!(m, "| none | 0 |");
            }
            for (k, v) in map {
                let _ = writeln!(m, "| {k} | {v} |");
            }
            let _ = writeln!(m);
        };
        section(&mut m, "answered as asked", &self.totals.ok);
        section(&mut m, "expected refusals", &self.totals.refused);
        section(&mut m, "errors", &self.totals.errors);
        for (cause, examples) in &self.totals.error_examples {
            for e in examples {
                let _ = writeln!(m, "- {cause}: `{}`", e.replace('`', "'").replace('\n', " "));
            }
        }
        if !self.totals.error_examples.is_empty() {
            let _ = writeln!(m);
        }
        let _ = writeln!(
            m,
            "| from s | answers | ok | refused | errors | p50 ms | p90 ms | p99 ms | max ms |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for b in &self.totals.buckets {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                b.from_s,
                b.requests,
                b.ok,
                b.refused,
                b.errors,
                b.p50_ms,
                b.p90_ms,
                b.p99_ms,
                b.max_ms
            );
        }
        let _ = writeln!(
            m,
            "\nAnswers: HTTP requests through Envoy, mints and WebSocket sessions; latency: the HTTP \
             requests through Envoy only, from send to the whole answer.\n\n| process | RSS at start, MiB | RSS at end, MiB |\n|---|---:|---:|"
        );
        for r in &self.rss {
            let _ = writeln!(
                m,
                "| {} | {} | {} |",
                r.process,
                mib(r.start_kib),
                mib(r.end_kib)
            );
        }
        m
    }

    /// `soak-<time>.json` and `soak-<time>.md` in `dir`.
    pub fn write(&self, dir: &Path, markdown: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join(format!("soak-{}.json", self.started_at));
        std::fs::write(&json, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let md = dir.join(format!("soak-{}.md", self.started_at));
        std::fs::write(&md, markdown).with_context(|| format!("writing {}", md.display()))?;
        eprintln!("wrote {} and {}", json.display(), md.display());
        Ok(())
    }
}
