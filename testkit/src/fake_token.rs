//! A fake OAuth 2.0 token endpoint: an HTTP/1.1 server on 127.0.0.1 answering `POST /token`
//! with short-lived opaque access tokens. It takes `client_credentials` with the client's secret
//! in HTTP Basic or in the form, or with a `private_key_jwt` client assertion (RFC 7523), and the
//! RFC 7523 `jwt-bearer` grant; each assertion's RS256 or ES256 signature is verified with the
//! client's public key, its `aud` must be the endpoint's URL and it must not have expired.
//! Every token issued is recorded with its expiry, so a test can tell whether a token was valid
//! when an upstream received it. It can be switched down (every request then gets a 503).

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
    /// `client_secret`, `private_key_jwt` or `jwt_bearer`.
    pub how: String,
    pub scope: Option<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

struct Inner {
    url: String,
    clients: Vec<TokenClient>,
    lifetime_ms: AtomicU64,
    up: AtomicBool,
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

    /// Switches the endpoint up or down (down: every request gets a 503).
    pub fn set_up(&self, up: bool) {
        self.inner.up.store(up, Ordering::SeqCst);
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
    let path_ok = req.method() == hyper::Method::POST && req.uri().path() == "/token";
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if !path_ok {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found"}),
        ));
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match grant(&inner, basic, &field) {
        Ok((client_id, how)) => {
            let n = inner.counter.fetch_add(1, Ordering::SeqCst);
            let token = format!("fake-at-{n}-{}", std::process::id());
            let lifetime = Duration::from_millis(inner.lifetime_ms.load(Ordering::SeqCst));
            let issued_at = SystemTime::now();
            let issued = IssuedToken {
                token: token.clone(),
                client_id,
                how,
                scope: field("scope"),
                issued_at,
                expires_at: issued_at + lifetime,
            };
            if let Ok(mut all) = inner.issued.lock() {
                all.push(issued);
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": lifetime.as_secs_f64(),
                }),
            ))
        }
        Err((status, code, why)) => {
            if let Ok(mut all) = inner.refusals.lock() {
                all.push(why.clone());
            }
            Ok(json_response(
                status,
                &json!({"error": code, "error_description": why}),
            ))
        }
    }
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
) -> Result<(String, String), Refusal> {
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
                return Ok((id, "client_secret".into()));
            }
            if field("client_assertion_type").as_deref()
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err(invalid_client("no client authentication"));
            }
            let assertion =
                field("client_assertion").ok_or_else(|| invalid_client("no client_assertion"))?;
            let claims = verify(inner, client, &assertion).map_err(invalid_client)?;
            if claims.get("iss").and_then(Value::as_str) != Some(id.as_str())
                || claims.get("sub").and_then(Value::as_str) != Some(id.as_str())
            {
                return Err(invalid_client(
                    "the assertion's iss and sub are not the client",
                ));
            }
            Ok((id, "private_key_jwt".into()))
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
            verify(inner, client, &assertion)
                .map_err(|why| (StatusCode::BAD_REQUEST, "invalid_grant", why))?;
            Ok((iss, "jwt_bearer".into()))
        }
        _ => Err((
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant_type {grant_type:?}"),
        )),
    }
}

/// Verifies an assertion's signature with the client's public key, its `aud` (this endpoint)
/// and its expiry; returns its claims.
fn verify(inner: &Inner, client: &TokenClient, jwt: &str) -> Result<Map<String, Value>, String> {
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
    if claims.custom.get("aud").and_then(Value::as_str) != Some(inner.url.as_str()) {
        return Err("the assertion's aud is not this endpoint".into());
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match claims.expiration.map(|e| e.timestamp()) {
        Some(exp) if exp > now => Ok(claims.custom),
        _ => Err("the assertion has expired or has no exp".into()),
    }
}
