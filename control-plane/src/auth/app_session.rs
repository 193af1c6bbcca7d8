//! The main app's session: the browser's session cookie of the main app (NextAuth's by default)
//! is forwarded to the app's session endpoint, and the user id and email are read from the JSON
//! it answers (JSON pointers, `/user/id` and `/user/email` by default). Answers are reused for a
//! few seconds per cookie value (keyed by a SHA-256 of the forwarded cookies, never the value
//! itself); an app that does not answer, or answers 5xx, is a 502.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::oidc::{http_client, read_limited};
use crate::config::idp::AppSessionConfig;

/// The verifier name recorded with users.
pub const VERIFIER: &str = "app-session";
/// Largest session answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Most cached answers; beyond, expired ones are dropped, then everything.
const MAX_CACHE_ENTRIES: usize = 10_000;
/// Most cookies forwarded (NextAuth splits large ones into `NAME.0`, `NAME.1`, ...).
const MAX_FORWARDED: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUser {
    pub subject: String,
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSessionError {
    /// The app says there is no valid session (401 for the client).
    Rejected(String),
    /// The app is down or answered nonsense (502).
    Upstream(String),
}

#[derive(Clone)]
enum Answer {
    User(AppUser),
    NoSession(String),
}

pub struct AppSessionVerifier {
    cfg: AppSessionConfig,
    http: reqwest::Client,
    cache: Mutex<HashMap<[u8; 32], (Instant, Answer)>>,
    calls: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for AppSessionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppSessionVerifier")
            .field("url", &self.cfg.url.as_str())
            .finish_non_exhaustive()
    }
}

/// Whether `name` is one of ours: a configured name, or a chunk `NAME.N` of one.
fn wanted(cfg: &AppSessionConfig, name: &str) -> bool {
    cfg.cookies.iter().any(|c| {
        name == c
            || name
                .strip_prefix(c.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|n| {
                    !n.is_empty() && n.len() <= 2 && n.bytes().all(|b| b.is_ascii_digit())
                })
    })
}

impl AppSessionVerifier {
    pub fn new(cfg: AppSessionConfig) -> Result<Self, String> {
        let http = http_client(cfg.timeout)?;
        Ok(AppSessionVerifier {
            cfg,
            http,
            cache: Mutex::new(HashMap::new()),
            calls: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many times the session endpoint was called (tests and metrics).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The prefix of the ids of users first seen through the main app's session.
    pub fn user_prefix(&self) -> &str {
        &self.cfg.user_prefix
    }

    /// The main app's cookies among a request's `Cookie` headers, as one `Cookie` header value,
    /// or `None`.
    pub fn forwarded_cookies(&self, cookie_headers: &[&str]) -> Option<String> {
        let mut out: Vec<&str> = Vec::new();
        for h in cookie_headers {
            for pair in h.split(';') {
                let pair = pair.trim();
                let Some((name, value)) = pair.split_once('=') else {
                    continue;
                };
                if !value.is_empty() && wanted(&self.cfg, name.trim()) && out.len() < MAX_FORWARDED
                {
                    out.push(pair);
                }
            }
        }
        (!out.is_empty()).then(|| out.join("; "))
    }

    /// Asks the main app who this session is. `Ok(None)` when the request carries none of the
    /// app's cookies.
    pub async fn verify(
        &self,
        cookie_headers: &[&str],
    ) -> Result<Option<AppUser>, AppSessionError> {
        let Some(cookies) = self.forwarded_cookies(cookie_headers) else {
            return Ok(None);
        };
        let key: [u8; 32] = Sha256::digest(cookies.as_bytes()).into();
        if let Some(answer) = self.cached(&key) {
            return match answer {
                Answer::User(u) => Ok(Some(u)),
                Answer::NoSession(msg) => Err(AppSessionError::Rejected(msg)),
            };
        }
        let answer = self.ask(&cookies).await?;
        self.remember(key, answer.clone());
        match answer {
            Answer::User(u) => Ok(Some(u)),
            Answer::NoSession(msg) => Err(AppSessionError::Rejected(msg)),
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Answer> {
        if self.cfg.cache.is_zero() {
            return None;
        }
        let cache = self.cache.lock().ok()?;
        let (at, answer) = cache.get(key)?;
        (at.elapsed() < self.cfg.cache).then(|| answer.clone())
    }

    fn remember(&self, key: [u8; 32], answer: Answer) {
        if self.cfg.cache.is_zero() {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= MAX_CACHE_ENTRIES {
            let ttl = self.cfg.cache;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= MAX_CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), answer));
    }

    async fn ask(&self, cookies: &str) -> Result<Answer, AppSessionError> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = &self.cfg.url;
        let upstream = |what: String| {
            AppSessionError::Upstream(format!("the main app's session endpoint {what}"))
        };
        let resp = self
            .http
            .get(url.clone())
            .header(reqwest::header::COOKIE, cookies)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                let why = if e.is_timeout() {
                    format!("timed out after {} ms", self.cfg.timeout.as_millis())
                } else if e.is_connect() {
                    "refused the connection".to_owned()
                } else {
                    e.to_string()
                };
                upstream(format!("did not answer: {why} ({url})"))
            })?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Ok(Answer::NoSession(format!(
                "the main app says this session is not valid (HTTP {}); sign in to the app again",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(upstream(format!("answered HTTP {}", status.as_u16())));
        }
        let body = read_limited(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| upstream(format!("did not answer: {e}")))?;
        let json: Value = serde_json::from_slice(&body)
            .map_err(|e| upstream(format!("did not answer JSON: {e}")))?;
        Ok(self.read_answer(&json))
    }

    fn read_answer(&self, json: &Value) -> Answer {
        // NextAuth answers `{}` (or null) when there is no session.
        let empty = match json {
            Value::Null => true,
            Value::Object(m) => m.is_empty(),
            _ => false,
        };
        if empty {
            return Answer::NoSession(
                "the main app has no session for this cookie; sign in to the app again".into(),
            );
        }
        let subject = match json.pointer(&self.cfg.user_id_pointer) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Answer::NoSession(format!(
                    "the main app's session has no user id at {}; add it to the session (NextAuth: the session callback) or set app_session.user_id_pointer",
                    self.cfg.user_id_pointer
                ))
            }
        };
        let email = if self.cfg.email_pointer.is_empty() {
            None
        } else {
            json.pointer(&self.cfg.email_pointer)
                .and_then(Value::as_str)
                .filter(|e| e.contains('@') && e.len() <= 254)
                .map(str::to_owned)
        };
        Answer::User(AppUser { subject, email })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::idp::{resolve, AppSessionSettings, IdentityInputs};

    fn verifier() -> AppSessionVerifier {
        let c = resolve(
            IdentityInputs {
                app_session: AppSessionSettings {
                    url: Some("http://127.0.0.1:9/api/auth/session".into()),
                    ..AppSessionSettings::default()
                },
                ..IdentityInputs::default()
            },
            &[],
        )
        .unwrap();
        AppSessionVerifier::new(c.app_session.unwrap()).unwrap()
    }

    #[test]
    fn forwards_only_the_apps_cookies() {
        let v = verifier();
        let headers = [
            "podgate_session=abc; next-auth.session-token=tok; other=1",
            "__Secure-next-auth.session-token.0=a; __Secure-next-auth.session-token.1=b; next-auth.session-tokenX=no",
        ];
        assert_eq!(
            v.forwarded_cookies(&headers).unwrap(),
            "next-auth.session-token=tok; __Secure-next-auth.session-token.0=a; __Secure-next-auth.session-token.1=b"
        );
        assert_eq!(v.forwarded_cookies(&[]), None);
    }

    #[test]
    fn reads_nextauths_shape() {
        let v = verifier();
        let a = v.read_answer(
            &serde_json::json!({"user": {"id": "u1", "email": "a@b.dev"}, "expires": "x"}),
        );
        assert!(
            matches!(a, Answer::User(AppUser { ref subject, ref email }) if subject == "u1" && email.as_deref() == Some("a@b.dev"))
        );
        assert!(matches!(
            v.read_answer(&serde_json::json!({})),
            Answer::NoSession(_)
        ));
        match v.read_answer(&serde_json::json!({"user": {"email": "a@b.dev"}})) {
            Answer::NoSession(m) => assert!(m.contains("/user/id"), "{m}"),
            Answer::User(_) => panic!("no id"),
        }
    }
}
