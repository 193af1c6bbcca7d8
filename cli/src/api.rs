//! The control plane's API as the CLI uses it: `GET /api/me`, `POST /v1/capabilities`,
//! `DELETE /api/proxy-tokens/{id}`, each with the API token (saved, or `PODGATE_TOKEN`) as
//! `Authorization: Bearer`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{code, with_causes, CliError, Result};

/// A reqwest client for `url`: names under `localhost` resolve to the loopback address
/// (RFC 6761), as browsers do, so pod hosts like `…-pod-x.localhost` work without DNS. TLS
/// trusts the public roots and the system's (`SSL_CERT_FILE`, `SSL_CERT_DIR` included).
pub fn client_for(url: &str) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(host) = host_of(url) {
        if is_localhost(&host) {
            b = b.resolve(&host, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        }
    }
    b.build()
        .map_err(|e| CliError::other(format!("cannot set up HTTP: {}", with_causes(&e))))
}

/// `localhost` or a name under it.
pub fn is_localhost(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// The host of an `http(s)://host[:port]/…` URL.
pub fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map(|(h, _)| h.trim_start_matches('[').to_owned());
    }
    Some(
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_owned(),
    )
}

fn unreachable(what: &str, url: &str, e: &reqwest::Error) -> CliError {
    CliError::new(
        code::UNREACHABLE,
        format!(
            "cannot reach {what} at {url}: {}; check the URL and your network",
            with_causes(e)
        ),
    )
}

/// The `error` of a JSON error answer, else the start of the body.
fn reason(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// A capability for one pod port.
#[derive(Debug, Clone, Deserialize)]
pub struct Capability {
    pub token: String,
    /// The control plane's expiry, as it says it (RFC 3339), for messages.
    pub expires_at: String,
    pub url: String,
    /// Seconds it lives from the answer (a control plane before `expires_in`: absent).
    #[serde(default)]
    expires_in: Option<i64>,
    /// When it was obtained (unix seconds, this machine's clock), to renew it with a third of
    /// its life left.
    #[serde(skip)]
    pub obtained_at: i64,
    /// When it expires on this machine's clock: `obtained_at + expires_in`, so that a clock
    /// minutes off the control plane's neither sends an expired capability nor renews early.
    #[serde(skip)]
    pub expires_unix: i64,
}

/// Seconds before its expiry a capability is no longer sent: the request's way to the edge.
const SEND_MARGIN_SECS: i64 = 2;

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Capability {
    /// The capability in a `/v1/capabilities` answer, obtained at `now` (this machine's clock).
    pub fn from_answer(body: &str, now: i64) -> Result<Capability> {
        let mut cap: Capability = serde_json::from_str(body)
            .map_err(|e| CliError::other(format!("unexpected capability answer: {e}")))?;
        cap.obtained_at = now;
        cap.expires_unix = match cap.expires_in {
            Some(secs) => now.saturating_add(secs),
            None => chrono::DateTime::parse_from_rfc3339(&cap.expires_at)
                .map(|t| t.timestamp())
                .map_err(|e| CliError::other(format!("unexpected capability expiry: {e}")))?,
        };
        Ok(cap)
    }

    /// Whether it may still be sent at `now`: the edge will not find it expired on arrival.
    pub fn usable(&self, now: i64) -> bool {
        self.usable_for(now) > 0
    }

    /// Seconds from `now` it may still be sent.
    pub fn usable_for(&self, now: i64) -> i64 {
        (self.expires_unix - SEND_MARGIN_SECS - now).max(0)
    }

    /// The last second it is used without renewal: less than a third of its life left after it,
    /// counted as at least 5 s and at most a minute.
    pub fn renew_at(&self) -> i64 {
        let life = (self.expires_unix - self.obtained_at).max(0);
        self.expires_unix - (life / 3).clamp(5, 60)
    }
}

pub struct Backend {
    pub base: String,
    token: String,
    /// The token came from `PODGATE_TOKEN`, not from a saved session: what to do when it is
    /// refused differs.
    from_env: bool,
    /// How long a call may take, connecting included.
    pub timeout: Duration,
    http: reqwest::Client,
}

impl Backend {
    /// The API token itself: `forward` sends it, not a capability, on a WebSocket upgrade, so
    /// that the edge renews the socket's capability for as long as the token lives.
    pub fn api_token(&self) -> &str {
        &self.token
    }

    pub fn new(base: &str, token: &str) -> Result<Backend> {
        Ok(Backend {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            from_env: false,
            timeout: Duration::from_secs(30),
            http: client_for(base)?,
        })
    }

    /// A client for the API token in `PODGATE_TOKEN`.
    pub fn from_env(base: &str, token: &str) -> Result<Backend> {
        Ok(Backend {
            from_env: true,
            ..Backend::new(base, token)?
        })
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<(u16, String)> {
        let resp = req
            .bearer_auth(&self.token)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| unreachable("the control plane", &self.base, &e))?;
        let status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| unreachable("the control plane", &self.base, &e))?;
        Ok((status, body))
    }

    fn refused(&self, status: u16, body: &str) -> CliError {
        let why = reason(body);
        match status {
            401 if self.from_env => CliError::new(
                code::TOKEN_REFUSED,
                format!(
                    "the control plane refused the API token in PODGATE_TOKEN ({why}); it has \
                     expired or was revoked: create a new one on {}/setup",
                    self.base
                ),
            ),
            401 => CliError::new(
                code::TOKEN_REFUSED,
                format!(
                    "the control plane refused the saved API token ({why}); it has expired or \
                     was revoked: create a new setup link on {}/setup and run --init again",
                    self.base
                ),
            ),
            429 => CliError::new(
                code::RATE_LIMITED,
                format!(
                    "the control plane is limiting requests from this address ({why}); wait \
                     a minute and try again"
                ),
            ),
            _ => CliError::other(format!("the control plane answered {status}: {why}")),
        }
    }

    /// `GET /api/me`.
    pub async fn me(&self) -> Result<Value> {
        let (status, body) = self
            .call(self.http.get(format!("{}/api/me", self.base)))
            .await?;
        if status != 200 {
            return Err(self.refused(status, &body));
        }
        serde_json::from_str(&body).map_err(|_| {
            CliError::other(format!(
                "{} did not answer /api/me with JSON; is it a podgate control plane?",
                self.base
            ))
        })
    }

    /// `POST /v1/capabilities {pod, port}`.
    pub async fn capability(&self, pod: &str, port: u16) -> Result<Capability> {
        let (status, body) = self
            .call(
                self.http
                    .post(format!("{}/v1/capabilities", self.base))
                    .json(&json!({ "pod": pod, "port": port })),
            )
            .await?;
        match status {
            200 => {}
            403 | 404 => {
                return Err(CliError::new(
                    code::ACCESS_REFUSED,
                    format!(
                        "no access to pod {pod} port {port}: {}; `podgate-cli status` lists what you may reach",
                        reason(&body)
                    ),
                ))
            }
            400 => {
                return Err(CliError::usage(format!(
                    "pod {pod} port {port}: {}",
                    reason(&body)
                )))
            }
            _ => return Err(self.refused(status, &body)),
        }
        Capability::from_answer(&body, now_unix())
    }

    /// `DELETE /api/proxy-tokens/{id}`; `Ok(false)` when the token was already refused.
    pub async fn revoke(&self, id: &str) -> Result<bool> {
        let (status, body) = self
            .call(
                self.http
                    .delete(format!("{}/api/proxy-tokens/{id}", self.base)),
            )
            .await?;
        match status {
            200 => Ok(true),
            401 | 404 => Ok(false),
            _ => Err(self.refused(status, &body)),
        }
    }
}

/// Pod and port named by `host` under `template` (`{pod}` and `{port}` placeholders, e.g.
/// `{port}-pod-{pod}.example.dev`).
pub fn parse_pod_host(template: &str, host: &str) -> Option<(String, u16)> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let port_at = template.find("{port}")?;
    let pod_at = template.find("{pod}")?;
    let (first, second) = if port_at < pod_at {
        ((port_at, 6), (pod_at, 5))
    } else {
        ((pod_at, 5), (port_at, 6))
    };
    let prefix = &template[..first.0];
    let middle = &template[first.0 + first.1..second.0];
    let suffix = &template[second.0 + second.1..];
    let vars = host.strip_prefix(prefix)?.strip_suffix(suffix)?;
    let (a, b) = if port_at < pod_at {
        vars.split_once(middle)?
    } else {
        vars.rsplit_once(middle)?
    };
    let (port, pod) = if port_at < pod_at { (a, b) } else { (b, a) };
    let ok_pod = !pod.is_empty()
        && pod
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    ok_pod.then(|| (pod.to_owned(), port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refusals_have_their_exit_codes() {
        let backend = Backend::new("http://127.0.0.1:1", "pg_x").unwrap();
        let limited = backend.refused(429, r#"{"error":"too many failed API tokens"}"#);
        assert_eq!(limited.code, code::RATE_LIMITED);
        assert!(
            limited.message.contains("too many failed API tokens"),
            "{}",
            limited.message
        );
        assert!(!limited.is_refusal(), "forward waits, it does not stop");
        assert_eq!(backend.refused(401, "{}").code, code::TOKEN_REFUSED);
        assert_eq!(backend.refused(500, "{}").code, code::OTHER);
    }

    #[test]
    fn pod_hosts() {
        let t = "localhost-{port}-pod-{pod}.localhost";
        assert_eq!(
            parse_pod_host(t, "localhost-3000-pod-my-pod.localhost"),
            Some(("my-pod".into(), 3000))
        );
        assert_eq!(parse_pod_host(t, "localhost-x-pod-a.localhost"), None);
        assert_eq!(parse_pod_host(t, "other.localhost"), None);
        assert_eq!(
            parse_pod_host("{pod}--{port}.pods.example.dev", "a-b--80.pods.example.dev"),
            Some(("a-b".into(), 80))
        );
        assert_eq!(
            host_of("http://a.localhost:10000/x"),
            Some("a.localhost".into())
        );
        assert_eq!(host_of("https://[::1]:1/"), Some("::1".into()));
        assert!(is_localhost("x-1.localhost") && !is_localhost("localhost.evil.dev"));
    }

    #[test]
    fn renewal_point() {
        let cap = |obtained, expires| Capability {
            token: String::new(),
            expires_at: String::new(),
            url: String::new(),
            expires_in: None,
            obtained_at: obtained,
            expires_unix: expires,
        };
        // 15 min: renewed with a minute left.
        // 30 s: renewed with 10 s left.
        assert_eq!((cap(0, 900).renew_at(), cap(0, 30).renew_at()), (840, 20));
        // Sent until two seconds before it expires.
        assert!(cap(0, 30).usable(27) && !cap(0, 30).usable(28));
    }

    #[test]
    fn expiry_is_counted_on_this_machines_clock() {
        // The control plane says 15 minutes from now; this machine's clock is an hour ahead of
        // its, so `expires_at` is already past here.
        let now = 1_800_000_000;
        let answer = json!({
            "token": "t", "url": "http://p/",
            "expires_at": "2027-01-15T07:00:00Z", "expires_in": 900,
        })
        .to_string();
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339("2027-01-15T07:00:00Z")
                .unwrap()
                .timestamp(),
            now - 3_600
        );
        let cap = Capability::from_answer(&answer, now).unwrap();
        assert_eq!(cap.expires_unix, now + 900);
        assert!(cap.usable(now));
        assert_eq!(cap.renew_at(), now + 840);
        // Behind by an hour: not renewed every request either.
        let cap = Capability::from_answer(&answer, now - 7_200).unwrap();
        assert_eq!(cap.renew_at(), now - 7_200 + 840);
        // A control plane that does not say `expires_in`: its `expires_at` is what there is.
        let old = json!({"token": "t", "url": "http://p/", "expires_at": "2027-01-15T07:00:00Z"});
        let cap = Capability::from_answer(&old.to_string(), now).unwrap();
        assert_eq!(cap.expires_unix, 1_799_996_400);
        assert!(Capability::from_answer(r#"{"token":"t"}"#, now).is_err());
    }
}
