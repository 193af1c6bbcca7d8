//! A browser-like HTTP client for the end-to-end suite: `*.localhost` resolved to loopback, a
//! cookie jar with browsers' domain and path rules, redirects followed hop by hop and recorded,
//! and the headers a navigation or a `fetch` sends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use reqwest::header::{HeaderMap, ACCEPT, COOKIE, LOCATION, SET_COOKIE};
use serde_json::Value as Json;

/// Resolves `localhost` and `*.localhost` to 127.0.0.1 and nothing else, as browsers and curl
/// do (Rust's resolver does not), so the suite can use real URLs and never leaves loopback.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopbackResolver;

impl reqwest::dns::Resolve for LoopbackResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let loopback = host == "localhost" || host.ends_with(".localhost");
        Box::pin(async move {
            if loopback {
                let addrs: reqwest::dns::Addrs =
                    Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
                Ok(addrs)
            } else {
                Err(format!("{host}: the e2e suite resolves only *.localhost (loopback)").into())
            }
        })
    }
}

/// One cookie as a browser keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCookie {
    pub name: String,
    pub value: String,
    /// The host it was set by (host-only cookies) or its `Domain`.
    pub scope: String,
    pub host_only: bool,
    /// The whole `Set-Cookie` line, for attribute checks.
    pub set_cookie: String,
}

impl StoredCookie {
    /// An attribute as given (case-insensitive name), e.g. `samesite` → `Lax`; flags give "".
    pub fn attribute(&self, name: &str) -> Option<String> {
        self.set_cookie.split(';').skip(1).find_map(|part| {
            let part = part.trim();
            let (n, v) = part.split_once('=').unwrap_or((part, ""));
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    fn applies_to(&self, host: &str) -> bool {
        if self.host_only {
            host == self.scope
        } else {
            host == self.scope || host.ends_with(&format!(".{}", self.scope))
        }
    }
}

/// A cookie jar with browser rules that matter here: host-only unless `Domain`, replaced by
/// name and scope, removed by `Max-Age` ≤ 0. (Paths are all `/` in podgate.)
#[derive(Debug, Default)]
pub struct CookieJar {
    cookies: Mutex<Vec<StoredCookie>>,
}

impl CookieJar {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StoredCookie>> {
        self.cookies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores one `Set-Cookie` received from `host`.
    pub fn store(&self, host: &str, set_cookie: &str) {
        let first = set_cookie.split(';').next().unwrap_or("");
        let Some((name, value)) = first.split_once('=') else {
            return;
        };
        let mut cookie = StoredCookie {
            name: name.trim().to_owned(),
            value: value.trim().to_owned(),
            scope: host.to_owned(),
            host_only: true,
            set_cookie: set_cookie.to_owned(),
        };
        if let Some(domain) = cookie.attribute("domain").filter(|d| !d.is_empty()) {
            cookie.scope = domain.trim_start_matches('.').to_ascii_lowercase();
            cookie.host_only = false;
        }
        let expired = cookie
            .attribute("max-age")
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|age| age <= 0);
        let mut jar = self.lock();
        jar.retain(|c| !(c.name == cookie.name && c.scope == cookie.scope));
        if !expired {
            jar.push(cookie);
        }
    }

    /// The cookies a browser would send to `host`.
    pub fn for_host(&self, host: &str) -> Vec<StoredCookie> {
        self.lock()
            .iter()
            .filter(|c| c.applies_to(host))
            .cloned()
            .collect()
    }

    /// The `Cookie` header for `host`, if any.
    pub fn header(&self, host: &str) -> Option<String> {
        let cookies = self.for_host(host);
        (!cookies.is_empty()).then(|| {
            cookies
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    pub fn get(&self, host: &str, name: &str) -> Option<StoredCookie> {
        self.for_host(host).into_iter().find(|c| c.name == name)
    }

    /// Forgets the cookies scoped to `host`.
    pub fn clear_host(&self, host: &str) {
        self.lock().retain(|c| c.scope != host);
    }

    /// Replaces a cookie's value (e.g. with an expired token, as a browser would still send it).
    pub fn set_raw(&self, host: &str, name: &str, value: &str) {
        self.store(host, &format!("{name}={value}; Path=/"));
    }
}

/// One hop of a navigation.
#[derive(Debug, Clone)]
pub struct Hop {
    pub url: String,
    pub status: u16,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub headers: HeaderMap,
}

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Page {
    pub url: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    /// Every hop, the last one included.
    pub hops: Vec<Hop>,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or(Json::Null)
    }

    /// The hops as `STATUS URL` lines, for assertion messages.
    pub fn trail(&self) -> String {
        self.hops
            .iter()
            .map(|h| format!("{} {}", h.status, h.url))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// How a request presents itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A browser page load (`Sec-Fetch-Mode: navigate`, `Accept: text/html…`).
    Navigate,
    /// A script's `fetch()` (`Sec-Fetch-Mode: cors`, `Accept: application/json`).
    Fetch,
}

/// A browser-like client: a cookie jar, `*.localhost` on loopback, redirects followed by hand
/// so every hop is visible.
#[derive(Debug, Clone)]
pub struct WebClient {
    http: reqwest::Client,
    pub jar: Arc<CookieJar>,
}

fn host_of(url: &str) -> anyhow::Result<String> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("parsing {url}"))?;
    parsed
        .host_str()
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| anyhow!("{url} has no host"))
}

impl WebClient {
    pub fn new() -> anyhow::Result<WebClient> {
        Ok(WebClient {
            http: reqwest::Client::builder()
                .no_proxy()
                .dns_resolver(Arc::new(LoopbackResolver))
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(15))
                .build()?,
            jar: Arc::new(CookieJar::default()),
        })
    }

    /// One request (no redirect followed), cookies from and into the jar.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        kind: Kind,
        headers: &[(&str, &str)],
        body: Option<Json>,
    ) -> anyhow::Result<Page> {
        let host = host_of(url)?;
        let mut req = self.http.request(method.clone(), url);
        req = match kind {
            Kind::Navigate => req
                .header(
                    ACCEPT,
                    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                )
                .header("sec-fetch-mode", "navigate")
                .header("sec-fetch-dest", "document"),
            Kind::Fetch => req
                .header(ACCEPT, "application/json")
                .header("sec-fetch-mode", "cors")
                .header("sec-fetch-dest", "empty"),
        };
        if let Some(cookie) = self.jar.header(&host) {
            req = req.header(COOKIE, cookie);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut set_cookies = Vec::new();
        for value in headers.get_all(SET_COOKIE) {
            if let Ok(v) = value.to_str() {
                self.jar.store(&host, v);
                set_cookies.push(v.to_owned());
            }
        }
        let location = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.text().await.unwrap_or_default();
        Ok(Page {
            url: url.to_owned(),
            status,
            headers: headers.clone(),
            body,
            hops: vec![Hop {
                url: url.to_owned(),
                status,
                location,
                set_cookies,
                headers,
            }],
        })
    }

    /// A page load, following up to 10 redirects like a browser.
    pub async fn navigate(&self, url: &str) -> anyhow::Result<Page> {
        self.follow(url, Kind::Navigate, &[]).await
    }

    /// Follows redirects from `url` with requests of `kind`.
    pub async fn follow(
        &self,
        url: &str,
        kind: Kind,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Page> {
        let mut url = url.to_owned();
        let mut hops = Vec::new();
        for _ in 0..10 {
            let page = self
                .send(reqwest::Method::GET, &url, kind, headers, None)
                .await?;
            hops.extend(page.hops.iter().cloned());
            let redirect = matches!(page.status, 301 | 302 | 303 | 307 | 308);
            match page.hops.last().and_then(|h| h.location.clone()) {
                Some(location) if redirect => {
                    let base = reqwest::Url::parse(&url)?;
                    url = base
                        .join(&location)
                        .with_context(|| format!("redirect to {location:?} from {url}"))?
                        .to_string();
                }
                _ => return Ok(Page { hops, ..page }),
            }
        }
        bail!(
            "more than 10 redirects from {url}:\n{}",
            hops.iter()
                .map(|h: &Hop| format!("{} {}", h.status, h.url))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    /// A script request (no redirect followed).
    pub async fn fetch(&self, url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Page> {
        self.send(reqwest::Method::GET, url, Kind::Fetch, headers, None)
            .await
    }

    /// `POST url` with a JSON body, as a script.
    pub async fn post_json(&self, url: &str, body: Json) -> anyhow::Result<Page> {
        self.send(reqwest::Method::POST, url, Kind::Fetch, &[], Some(body))
            .await
    }
}
