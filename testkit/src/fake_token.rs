//! A fake OAuth 2.0 token endpoint: an HTTP/1.1 server on 127.0.0.1 answering `POST /token`
//! with short-lived opaque access tokens. It takes `client_credentials` with the client's secret
//! in HTTP Basic or in the form, or with a `private_key_jwt` client assertion (RFC 7523), and the
//! RFC 7523 `jwt-bearer` grant; each assertion's RS256 or ES256 signature is verified with the
//! client's public key, its `aud` must be the endpoint's URL and it must not have expired.
//! Every token issued is recorded with its expiry, so a test can tell whether a token was valid
//! when an upstream received it. It can be switched down (every request then gets a 503) or
//! slowed down.
//!
//! It also answers `POST /api/permission/oauth2/token` as Coze's token endpoint does for its JWT
//! OAuth apps: the assertion (`iss` the app id, `aud` [`COZE_AUDIENCE`]) in `Authorization:
//! Bearer`, a JSON body `{"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
//! "duration_seconds": n}`, and `expires_in` in the answer a Unix time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jwt_compact::alg::{Es256, Rsa, RsaPublicKey};
use jwt_compact::{AlgorithmExt as _, UntrustedToken};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The path of the Coze-style token endpoint.
pub const COZE_TOKEN_PATH: &str = "/api/permission/oauth2/token";
/// The `aud` its assertions must have, as Coze's `api.coze.com`.
pub const COZE_AUDIENCE: &str = "api.coze.com";

/// A client the endpoint knows: its secret, or the public key (PEM, SPKI) of its assertions.
#[derive(Debug, Clone)]
pub struct TokenClient {
    pub client_id: String,
    pub secret: Option<String>,
    pub public_key_pem: Option<String>,
}

/// A token the endpoint issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub client_id: String,
    /// `client_secret`, `private_key_jwt`, `jwt_bearer` or `coze_jwt`.
    pub how: String,
    pub scope: Option<String>,
    /// The verified claims of the assertion it was issued for (empty without one).
    pub claims: Map<String, Value>,
    /// The `duration_seconds` a Coze-style request asked for.
    pub requested_seconds: Option<u64>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

struct Inner {
    url: String,
    clients: Vec<TokenClient>,
    lifetime_ms: AtomicU64,
    up: AtomicBool,
    /// How long every answer waits (milliseconds).
    delay_ms: AtomicU64,
    issued: Mutex<Vec<IssuedToken>>,
    refusals: Mutex<Vec<String>>,
    counter: AtomicU64,
}

/// A running fake token endpoint; stops when dropped.
pub struct FakeTokenEndpoint {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl FakeTokenEndpoint {
    /// Binds 127.0.0.1:0; issues tokens that live `lifetime`.
    pub async fn start(
        clients: Vec<TokenClient>,
        lifetime: Duration,
    ) -> anyhow::Result<FakeTokenEndpoint> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            url: format!("http://{addr}/token"),
            clients,
            lifetime_ms: AtomicU64::new(u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX)),
            up: AtomicBool::new(true),
            delay_ms: AtomicU64::new(0),
            issued: Mutex::new(Vec::new()),
            refusals: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
        });
        let shared = Arc::clone(&inner);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, Arc::clone(&shared)));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(FakeTokenEndpoint { addr, inner, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/token`.
    pub fn url(&self) -> String {
        self.inner.url.clone()
    }

    /// The Coze-style endpoint: `http://127.0.0.1:<port>/api/permission/oauth2/token`.
    pub fn coze_url(&self) -> String {
        format!("http://{}{COZE_TOKEN_PATH}", self.addr)
    }

    /// Switches the endpoint up or down (down: every request gets a 503).
    pub fn set_up(&self, up: bool) {
        self.inner.up.store(up, Ordering::SeqCst);
    }

    /// Makes every answer wait `delay` (a slow endpoint).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.inner.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Every token issued so far.
    pub fn issued(&self) -> Vec<IssuedToken> {
        self.inner
            .issued
            .lock()
            .map(|i| i.clone())
            .unwrap_or_default()
    }

    /// Why each refused request was refused.
    pub fn refusals(&self) -> Vec<String> {
        self.inner
            .refusals
            .lock()
            .map(|i| i.clone())
            .unwrap_or_default()
    }

    /// Whether `token` was issued here and valid at `at`.
    pub fn valid_at(&self, token: &str, at: SystemTime) -> bool {
        self.issued()
            .iter()
            .any(|t| t.token == token && t.issued_at <= at && at < t.expires_at)
    }
}

impl Drop for FakeTokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn answer(
    req: Request<Incoming>,
    inner: Arc<Inner>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay = inner.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if !inner.up.load(Ordering::SeqCst) {
        return Ok(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "temporarily_unavailable"}),
        ));
    }
    let basic = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok());
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let post = req.method() == hyper::Method::POST;
    let path = req.uri().path().to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if post && path == COZE_TOKEN_PATH {
        return Ok(coze(&inner, bearer, &body));
    }
    if !(post && path == "/token") {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found"}),
        ));
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match grant(&inner, basic, &field) {
        Ok((client_id, how, claims)) => {
            let lifetime = Duration::from_millis(inner.lifetime_ms.load(Ordering::SeqCst));
            let token = issue(
                &inner,
                client_id,
                how,
                field("scope"),
                claims,
                None,
                lifetime,
            );
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": lifetime.as_secs_f64(),
                }),
            ))
        }
        Err(refusal) => Ok(refuse(&inner, refusal)),
    }
}

/// Records a token issued now that lives `lifetime`; returns it.
fn issue(
    inner: &Inner,
    client_id: String,
    how: String,
    scope: Option<String>,
    claims: Map<String, Value>,
    requested_seconds: Option<u64>,
    lifetime: Duration,
) -> String {
    let n = inner.counter.fetch_add(1, Ordering::SeqCst);
    let token = format!("fake-at-{n}-{}", std::process::id());
    let issued_at = SystemTime::now();
    let issued = IssuedToken {
        token: token.clone(),
        client_id,
        how,
        scope,
        claims,
        requested_seconds,
        issued_at,
        expires_at: issued_at + lifetime,
    };
    if let Ok(mut all) = inner.issued.lock() {
        all.push(issued);
    }
    token
}

fn refuse(inner: &Inner, (status, code, why): Refusal) -> Response<Full<Bytes>> {
    if let Ok(mut all) = inner.refusals.lock() {
        all.push(why.clone());
    }
    json_response(status, &json!({"error": code, "error_description": why}))
}

/// The Coze-style endpoint: the assertion in `Authorization: Bearer`, a JSON body, and an
/// `expires_in` that is a Unix time (whole seconds, rounded down, as Coze sends it).
fn coze(inner: &Inner, bearer: Option<String>, body: &[u8]) -> Response<Full<Bytes>> {
    let bad = |why: &str| (StatusCode::BAD_REQUEST, "invalid_request", why.to_owned());
    let answer = (|| -> Result<Response<Full<Bytes>>, Refusal> {
        let request: Map<String, Value> =
            serde_json::from_slice(body).map_err(|_| bad("the body is not a JSON object"))?;
        if request.get("grant_type").and_then(Value::as_str)
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            return Err(bad(
                "grant_type is not urn:ietf:params:oauth:grant-type:jwt-bearer",
            ));
        }
        if request.contains_key("assertion") {
            return Err(bad(
                "the assertion goes in Authorization: Bearer, not the body",
            ));
        }
        let requested = match request.get("duration_seconds") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|d| (1..=86_399).contains(d))
                    .ok_or_else(|| bad("duration_seconds must be 1 to 86399"))?,
            ),
        };
        let jwt = bearer.ok_or_else(|| invalid_client("no Authorization: Bearer assertion"))?;
        let untrusted =
            UntrustedToken::new(&jwt).map_err(|e| invalid_client(format!("not a JWT: {e}")))?;
        // Coze finds the app's public key by the key id.
        if untrusted
            .header()
            .key_id
            .as_deref()
            .is_none_or(str::is_empty)
        {
            return Err(invalid_client(
                "the assertion names no kid (the app's key id)",
            ));
        }
        let iss = Some(untrusted)
            .and_then(|t| t.deserialize_claims_unchecked::<Map<String, Value>>().ok())
            .and_then(|c| {
                c.custom
                    .get("iss")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let client = inner
            .clients
            .iter()
            .find(|c| c.client_id == iss)
            .ok_or_else(|| invalid_client("unknown app id (iss)"))?;
        let claims = verify(client, &jwt, COZE_AUDIENCE).map_err(invalid_client)?;
        let mut lifetime = Duration::from_millis(inner.lifetime_ms.load(Ordering::SeqCst));
        if let Some(d) = requested {
            lifetime = lifetime.min(Duration::from_secs(d));
        }
        let token = issue(
            inner,
            iss,
            "coze_jwt".into(),
            None,
            claims,
            requested,
            lifetime,
        );
        let expires_at = SystemTime::now() + lifetime;
        let unix = expires_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(json_response(
            StatusCode::OK,
            &json!({"access_token": token, "expires_in": unix, "token_type": "Bearer"}),
        ))
    })();
    answer.unwrap_or_else(|refusal| refuse(inner, refusal))
}

type Refusal = (StatusCode, &'static str, String);

fn invalid_client(why: impl Into<String>) -> Refusal {
    (StatusCode::UNAUTHORIZED, "invalid_client", why.into())
}

/// Checks the request; returns the client and how it proved itself.
fn grant(
    inner: &Inner,
    basic: Option<String>,
    field: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, String, Map<String, Value>), Refusal> {
    let grant_type = field("grant_type").unwrap_or_default();
    let find = |id: &str| inner.clients.iter().find(|c| c.client_id == id);
    match grant_type.as_str() {
        "client_credentials" => {
            let decode = |v: &str| {
                url::form_urlencoded::parse(format!("v={v}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            let (id, secret) = if let Some(basic) = basic {
                let (id, secret) = basic
                    .split_once(':')
                    .ok_or_else(|| invalid_client("malformed Basic credentials"))?;
                (decode(id), Some(decode(secret)))
            } else if let Some(secret) = field("client_secret") {
                (field("client_id").unwrap_or_default(), Some(secret))
            } else {
                (field("client_id").unwrap_or_default(), None)
            };
            let client = find(&id).ok_or_else(|| invalid_client("unknown client"))?;
            if let Some(secret) = secret {
                if client.secret.as_deref() != Some(secret.as_str()) {
                    return Err(invalid_client("wrong client secret"));
                }
                return Ok((id, "client_secret".into(), Map::new()));
            }
            if field("client_assertion_type").as_deref()
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err(invalid_client("no client authentication"));
            }
            let assertion =
                field("client_assertion").ok_or_else(|| invalid_client("no client_assertion"))?;
            let claims = verify(client, &assertion, &inner.url).map_err(invalid_client)?;
            if claims.get("iss").and_then(Value::as_str) != Some(id.as_str())
                || claims.get("sub").and_then(Value::as_str) != Some(id.as_str())
            {
                return Err(invalid_client(
                    "the assertion's iss and sub are not the client",
                ));
            }
            Ok((id, "private_key_jwt".into(), claims))
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
            let assertion = field("assertion").ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "no assertion".to_owned(),
                )
            })?;
            let untrusted = UntrustedToken::new(&assertion).map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    format!("not a JWT: {e}"),
                )
            })?;
            let iss = untrusted
                .deserialize_claims_unchecked::<Map<String, Value>>()
                .ok()
                .and_then(|c| {
                    c.custom
                        .get("iss")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let client = find(&iss).ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown issuer".to_owned(),
                )
            })?;
            let claims = verify(client, &assertion, &inner.url)
                .map_err(|why| (StatusCode::BAD_REQUEST, "invalid_grant", why))?;
            Ok((iss, "jwt_bearer".into(), claims))
        }
        _ => Err((
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant_type {grant_type:?}"),
        )),
    }
}

/// Verifies an assertion's signature with the client's public key, its `aud` (`audience`) and
/// its expiry; returns its claims.
fn verify(client: &TokenClient, jwt: &str, audience: &str) -> Result<Map<String, Value>, String> {
    use p256::pkcs8::DecodePublicKey as _;
    let pem = client
        .public_key_pem
        .as_deref()
        .ok_or("the client has no public key")?;
    let untrusted = UntrustedToken::new(jwt).map_err(|e| format!("not a JWT: {e}"))?;
    let claims = match untrusted.algorithm() {
        "RS256" => {
            let key = RsaPublicKey::from_public_key_pem(pem)
                .map_err(|e| format!("the client's key is not RSA: {e}"))?;
            Rsa::rs256()
                .validator::<Map<String, Value>>(&key)
                .validate(&untrusted)
                .map_err(|e| format!("bad RS256 signature: {e}"))?
                .claims()
                .clone()
        }
        "ES256" => {
            let key = p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
                .map_err(|e| format!("the client's key is not P-256: {e}"))?;
            Es256
                .validator::<Map<String, Value>>(&key)
                .validate(&untrusted)
                .map_err(|e| format!("bad ES256 signature: {e}"))?
                .claims()
                .clone()
        }
        other => return Err(format!("algorithm {other} not accepted")),
    };
    if claims.custom.get("aud").and_then(Value::as_str) != Some(audience) {
        return Err(format!("the assertion's aud is not {audience}"));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match claims.expiration.map(|e| e.timestamp()) {
        Some(exp) if exp > now => Ok(claims.custom),
        _ => Err("the assertion has expired or has no exp".into()),
    }
}
