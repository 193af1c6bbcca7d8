//! The HTTP API of long-lived, revocable API tokens for CLIs and automation:
//! `POST|GET /api/proxy-tokens`, `DELETE /api/proxy-tokens/{id}`, the setup page `GET /p/{config}`,
//! `GET /api/download/install.sh?init_url=` and the `--cli-dir` binaries it installs,
//! `GET /api/download/podgate-cli-<os>-<arch>`. The token format and its check are in
//! `crate::auth::api_tokens`; the unexpired capabilities minted with a revoked token are pushed
//! to Envoy as revoked (`crate::filter_config`).

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::api_tokens::{
    generate, parse, token_hash, DEFAULT_EXPIRES_IN_DAYS, MAX_EXPIRES_IN_DAYS, MAX_TOKENS_PER_USER,
};
use crate::auth::verify::{identify, Accept, Identity, Via};
use crate::config::cli_dir::CliBinary;
use crate::http::error::{error_response, ApiError, ApiResult, ErrorBody, JsonBody, PathArgs};
use crate::http::openapi::{Malformed, NotFound, TooMany, Unauthorized};
use crate::http::request::{credentials, ClientIp};
use crate::http::shared::{no_store, single_params};
use crate::store::{now_unix, ApiTokenRow};
use crate::AppState;

const MAX_INIT_CONFIG_LEN: usize = 2048;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(init_page))
        .routes(routes!(install_script_handler))
        .routes(routes!(download_cli))
}

fn rfc3339(t: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn forbidden(msg: &str) -> Response {
    error_response(StatusCode::FORBIDDEN, msg)
}

/// The control plane's own origin, e.g. `https://podgate.example.dev`.
fn own_origin(state: &AppState) -> String {
    url::Url::parse(&state.config().issuer)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

/// Cookie-authenticated changes must come from our own origin or a configured one (pods are
/// same-site with the control plane, so SameSite cookies do not stop them).
fn cross_origin_refused(state: &AppState, headers: &HeaderMap, via: &Via) -> Option<Response> {
    if !via.is_cookie() {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("invalid");
    let allowed = origin == own_origin(state)
        || state
            .config()
            .identity
            .cors_origins
            .iter()
            .any(|o| o == origin);
    (!allowed).then(|| {
        tracing::warn!(origin, "cookie-authenticated API-token request from another origin refused");
        forbidden("this request comes from another origin; manage API tokens from the app or the control plane itself")
    })
}

/// The signed-in user who may manage tokens, or the answer to give.
async fn manager(
    state: &AppState,
    headers: &HeaderMap,
    client: &str,
) -> Result<Identity, Response> {
    let outcome = identify(
        &state.identify_context(),
        &credentials(headers),
        client,
        Accept::Manage,
    )
    .await
    .map_err(|e| ApiError::from(e).into_response())?;
    let Some(identity) = outcome.identity else {
        let msg = outcome.rejection.unwrap_or_else(|| {
            "not signed in; sign in (control-plane session, ID token, or the main app's session) to manage API tokens".into()
        });
        let mut resp = ApiError::Unauthorized(msg).into_response();
        no_store(&mut resp);
        return Err(resp);
    };
    if let Some(resp) = cross_origin_refused(state, headers, &identity.via) {
        return Err(resp);
    }
    Ok(identity)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub expires_in_days: Option<u32>,
    /// Optional session-name prefix carried in the init URL (`n`).
    pub prefix: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    pub id: String,
    pub name: String,
    /// Shown once; only its hash is kept.
    pub token: String,
    pub init_url: String,
    pub expires_at: String,
}

fn check_name(name: &str) -> ApiResult<()> {
    let n = name.chars().count();
    if n == 0 || n > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "`name` must be 1-100 characters without control characters, e.g. \"CLI Setup - 1/10/2026\"",
        ));
    }
    Ok(())
}

fn check_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `base64url({"t": token, "n": prefix})`.
pub fn init_config(token: &str, prefix: Option<&str>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({ "t": token, "n": prefix }).to_string())
}

/// Decodes an init config: `(token, prefix)` when well formed.
pub fn decode_init_config(config: &str) -> Option<(String, Option<String>)> {
    if config.is_empty()
        || config.len() > MAX_INIT_CONFIG_LEN
        || !config
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(config)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let obj = v.as_object()?;
    if obj.keys().any(|k| k != "t" && k != "n") {
        return None;
    }
    let token = obj.get("t")?.as_str()?;
    parse(token)?;
    let prefix = match obj.get("n") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if check_prefix(p) => Some(p.clone()),
        _ => return None,
    };
    Some((token.to_owned(), prefix))
}

/// `POST /api/proxy-tokens {name, expires_in_days, prefix?}`.
#[utoipa::path(
    post,
    path = "/api/proxy-tokens",
    tag = "api-tokens",
    responses(
        (status = 201, description = "The new API token, shown once"),
        Malformed,
        Unauthorized,
        (status = 403, description = "An API token cannot create API tokens: sign in", body = ErrorBody),
        (status = 409, description = "The caller already has the most live API tokens allowed: revoke one", body = ErrorBody),
        TooMany,
    )
)]
async fn create_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client): ClientIp,
    // Read once the caller may create a token: a caller who may not learns that first.
    body: Result<JsonBody<CreateToken>, ApiError>,
) -> ApiResult<Response> {
    let identity = match manager(&state, &headers, &client).await {
        Ok(i) => i,
        Err(resp) => return Ok(resp),
    };
    if matches!(identity.via, Via::ApiToken { .. }) {
        return Ok(forbidden(
            "an API token cannot create API tokens; sign in (session, ID token or the main app's session) to create one",
        ));
    }
    let JsonBody(req) = body?;
    check_name(&req.name)?;
    let days = req.expires_in_days.unwrap_or(DEFAULT_EXPIRES_IN_DAYS);
    if !(1..=MAX_EXPIRES_IN_DAYS).contains(&days) {
        return Err(ApiError::bad(format!(
            "`expires_in_days` must be 1-{MAX_EXPIRES_IN_DAYS}, e.g. 30"
        )));
    }
    if let Some(p) = &req.prefix {
        if !check_prefix(p) {
            return Err(ApiError::bad(
                "`prefix` must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-'",
            ));
        }
    }
    let user = &identity.user;
    let now = now_unix();
    // Counted and stored in one change, the user's row locked: concurrent creations cannot
    // both count below the limit.
    let mut change = state.db().change().await?;
    let live = change.live_api_tokens_for_update(&user.id, now).await?;
    if usize::try_from(live).unwrap_or(usize::MAX) >= MAX_TOKENS_PER_USER {
        return Err(ApiError::conflict(format!(
            "you have {live} live API tokens, the most allowed; revoke some with DELETE /api/proxy-tokens/ID"
        )));
    }
    let (id, token) = generate()?;
    let row = ApiTokenRow {
        id: id.clone(),
        user_id: user.id.clone(),
        name: req.name.clone(),
        token_hash: token_hash(&token),
        prefix: req.prefix.clone(),
        created_via: identity.via.label(),
        created_at: now,
        expires_at: now + i64::from(days) * 86_400,
        last_used_at: None,
        revoked_at: None,
    };
    change.create_api_token(&row).await?;
    change.commit().await?;
    tracing::info!(user = %user.id, token = %id, via = %row.created_via, days, "API token created");
    let init_url = format!(
        "{}/p/{}",
        state.config().issuer,
        init_config(&token, req.prefix.as_deref())
    );
    let expires_at =
        rfc3339(row.expires_at).ok_or_else(|| ApiError::internal("expiry out of range"))?;
    let mut resp = (
        StatusCode::CREATED,
        Json(CreatedToken {
            id,
            name: req.name,
            token,
            init_url,
            expires_at,
        }),
    )
        .into_response();
    no_store(&mut resp);
    Ok(resp)
}

fn token_view(t: &ApiTokenRow, now: i64) -> Value {
    let state = if t.revoked_at.is_some() {
        "revoked"
    } else if now >= t.expires_at {
        "expired"
    } else {
        "active"
    };
    json!({
        "id": t.id,
        "name": t.name,
        "prefix": t.prefix,
        "state": state,
        "created_at": rfc3339(t.created_at),
        "expires_at": rfc3339(t.expires_at),
        "last_used_at": t.last_used_at.and_then(rfc3339),
        "revoked_at": t.revoked_at.and_then(rfc3339),
        "created_via": t.created_via,
    })
}

/// `GET /api/proxy-tokens`: the user's tokens, newest first, never a secret.
#[utoipa::path(
    get,
    path = "/api/proxy-tokens",
    tag = "api-tokens",
    responses(
        (status = 200, description = "The caller's API tokens"),
        Unauthorized,
        (status = 403, description = "An API token cannot list API tokens: sign in", body = ErrorBody),
        TooMany,
    )
)]
async fn list_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client): ClientIp,
) -> ApiResult<Response> {
    let identity = match manager(&state, &headers, &client).await {
        Ok(i) => i,
        Err(resp) => return Ok(resp),
    };
    if matches!(identity.via, Via::ApiToken { .. }) {
        return Ok(forbidden(
            "an API token cannot list API tokens; sign in to see them",
        ));
    }
    let now = now_unix();
    let tokens: Vec<Value> = state
        .db()
        .list_api_tokens(&identity.user.id)
        .await?
        .iter()
        .map(|t| token_view(t, now))
        .collect();
    let mut resp = Json(json!({ "tokens": tokens })).into_response();
    no_store(&mut resp);
    Ok(resp)
}

/// `DELETE /api/proxy-tokens/{id}`: revokes; refused from the token's next use on, and the
/// capabilities minted with it are pushed to Envoy as revoked. An API token may revoke itself (a
/// CLI's logout), no other.
#[utoipa::path(
    delete,
    path = "/api/proxy-tokens/{id}",
    tag = "api-tokens",
    params(
        ("id" = String, Path, description = "The id"),
    ),
    responses(
        (status = 200, description = "Revoked"),
        Unauthorized,
        (status = 403, description = "An API token may revoke only itself", body = ErrorBody),
        NotFound,
        TooMany,
    )
)]
async fn revoke_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientIp(client): ClientIp,
    PathArgs(id): PathArgs<String>,
) -> ApiResult<Response> {
    let identity = match manager(&state, &headers, &client).await {
        Ok(i) => i,
        Err(resp) => return Ok(resp),
    };
    if let Via::ApiToken { id: own, .. } = &identity.via {
        if *own != id {
            return Ok(forbidden(
                "an API token can revoke only itself; sign in to revoke other tokens",
            ));
        }
    }
    let now = now_unix();
    let Some(row) = state
        .db()
        .revoke_api_token(&identity.user.id, &id, now)
        .await?
    else {
        return Err(ApiError::not_found(
            "no such API token of yours; list them with GET /api/proxy-tokens",
        ));
    };
    tracing::info!(user = %identity.user.id, token = %id, via = %identity.via.label(), "API token revoked");
    // Its unexpired capabilities join the filter's `revoked_jti`: push now, not at the resync.
    state.envoy_config_changed().await;
    let mut resp = Json(json!({ "revoked": true, "token": token_view(&row, now) })).into_response();
    no_store(&mut resp);
    Ok(resp)
}

fn page(status: StatusCode, body: String) -> Response {
    // CSP, nosniff and framing rules come from `security_headers` like every response's.
    let mut resp = (status, Html(body)).into_response();
    no_store(&mut resp);
    resp
}

/// `GET /p/{config}`: how to use a setup link. The token is not looked up (no validity
/// oracle); the page only explains.
#[utoipa::path(
    get,
    path = "/p/{config}",
    tag = "api-tokens",
    params(
        ("config" = String, Path, description = "The init URL's configuration"),
    ),
    responses(
        (status = 200, description = "The setup page of an init URL", content_type = "text/html"),
        (status = 400, description = "A page saying the link is malformed and how to get a new one", content_type = "text/html"),
    )
)]
async fn init_page(State(state): State<AppState>, PathArgs(config): PathArgs<String>) -> Response {
    let Some((token, prefix)) = decode_init_config(&config) else {
        return page(
            StatusCode::BAD_REQUEST,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>podgate setup link</title></head>\
             <body><h1>This setup link is malformed</h1><p>Copy the whole link again, or create a new \
             API token in the app.</p></body></html>"
                .into(),
        );
    };
    let issuer = &state.config().issuer;
    let init_url = format!("{issuer}/p/{config}");
    let install = format!(
        "curl -fsSL \"{issuer}/api/download/install.sh?init_url={}\" | bash",
        podgate_protocol::redirect::encode_query_value(&init_url)
    );
    let example = format!(
        "curl -fsS -X POST {issuer}/v1/capabilities -H \"Authorization: Bearer {token}\" -H \"Content-Type: application/json\" -d '{{\"pod\":\"POD\",\"port\":PORT}}'"
    );
    let prefix_line = prefix
        .map(|p| {
            format!(
                "<p>Session prefix: <code>{}</code></p>",
                html_escape::encode_quoted_attribute(&p)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>podgate setup link</title>\
         <style>body{{font-family:sans-serif;max-width:48rem;margin:2rem auto}}pre{{background:#f4f4f4;padding:1rem;white-space:pre-wrap;word-break:break-all}}</style></head>\
         <body><h1>podgate setup link</h1>\
         <p>This link carries an API token. Keep it secret: anyone who has it can act as you \
         until it expires or you revoke it (<code>DELETE /api/proxy-tokens/ID</code>, or in the app).</p>\
         {prefix_line}\
         <h2>Install the CLI</h2><pre>{}</pre>\
         <p>{}</p>\
         <h2>Use the token today</h2><p>Exchange it for a capability for one pod and port:</p><pre>{}</pre>\
         </body></html>",
        html_escape::encode_quoted_attribute(&install),
        if state.config().cli_binaries.is_empty() {
            "The podgate CLI is not released yet: the installer says so and stops."
        } else {
            "Run it in the directory you will use the CLI from: it installs <code>podgate-cli</code> \
             and saves this token for that directory."
        },
        html_escape::encode_quoted_attribute(&example)
    );
    page(StatusCode::OK, body)
}

/// Quotes a string for bash with single quotes.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The init URL, checked: exactly `{issuer}/p/<base64url config>`, with a well-formed config.
pub fn check_init_url(issuer: &str, raw: &str) -> Result<String, String> {
    let prefix = format!("{issuer}/p/");
    let Some(config) = raw.strip_prefix(&prefix) else {
        return Err(format!(
            "`init_url` must be a setup link of this control plane, {prefix}…"
        ));
    };
    if decode_init_config(config).is_none() {
        return Err(
            "`init_url` does not carry a well-formed setup config (base64url of {\"t\": token, \"n\": \
             prefix}); copy the whole setup link again, or create a new API token on /setup"
                .into(),
        );
    }
    let parsed = url::Url::parse(raw).map_err(|e| format!("`init_url` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
    {
        return Err("`init_url` must be a plain http(s) URL without query or fragment".into());
    }
    Ok(raw.to_owned())
}

/// The installer for a setup link that was refused: it says `why` and exits 2.
fn refusal_script(why: &str) -> String {
    format!(
        "#!/usr/bin/env bash\n\
         # podgate CLI installer: the setup link in this URL was refused.\n\
         echo {} >&2\n\
         exit 2\n",
        shell_quote(&format!(
            "podgate: nothing installed: {why} (copy the install command from /setup again)"
        ))
    )
}

fn install_script(issuer: &str, init_url: Option<&str>, binaries: &[CliBinary]) -> String {
    let quoted_issuer = shell_quote(&format!("{issuer}/p/"));
    let mut s = String::from(
        "#!/usr/bin/env bash\n\
         # podgate CLI installer.\n\
         set -euo pipefail\n\n",
    );
    match init_url {
        Some(u) => {
            s.push_str(&format!("INIT_URL={}\n", shell_quote(u)));
            s.push_str(&format!(
                "# Checked by the server; checked again here before anything uses it.\n\
                 case \"$INIT_URL\" in\n\
                 \x20 ''|*[!A-Za-z0-9:/._~%-]*) echo 'podgate: the init URL has unexpected characters; ask the app for a new setup link' >&2; exit 2 ;;\n\
                 esac\n\
                 case \"$INIT_URL\" in\n\
                 \x20 {quoted_issuer}*) ;;\n\
                 \x20 *) echo 'podgate: the init URL is not a setup link of this control plane' >&2; exit 2 ;;\n\
                 esac\n\n"
            ));
        }
        None => s.push_str("INIT_URL=''\n\n"),
    }
    if binaries.is_empty() {
        s.push_str(&format!(
            "echo 'podgate: the podgate CLI is not released yet, so there is nothing to install.' >&2\n\
             echo 'podgate: until it is, exchange the API token of your setup link for a capability:' >&2\n\
             echo {} >&2\n\
             echo 'podgate: (open the setup link in a browser to see the token and this command filled in)' >&2\n\
             exit 1\n",
            shell_quote(&format!(
                "podgate:   curl -X POST {issuer}/v1/capabilities -H 'Authorization: Bearer pg_…' -H 'Content-Type: application/json' -d '{{\"pod\":\"POD\",\"port\":PORT}}'"
            ))
        ));
        return s;
    }
    s.push_str(&format!("BASE={}\n", shell_quote(issuer)));
    s.push_str(
        "die() { code=\"$1\"; shift; echo \"podgate: $*\" >&2; exit \"$code\"; }\n\n\
         OS=\"$(uname -s | tr '[:upper:]' '[:lower:]')\"\n\
         ARCH=\"$(uname -m)\"\n\
         case \"$ARCH\" in amd64) ARCH=x86_64 ;; arm64) ARCH=aarch64 ;; esac\n\
         # The SHA-256 of each binary, computed by the control plane when it started.\n\
         case \"$OS-$ARCH\" in\n",
    );
    for b in binaries {
        // Platforms and hashes are [a-z0-9_-] only (`config::cli_dir`): nothing to quote.
        s.push_str(&format!("  {}) SHA256={} ;;\n", b.platform, b.sha256));
    }
    let available: Vec<&str> = binaries.iter().map(|b| b.platform.as_str()).collect();
    s.push_str(&format!(
        "  *) die 3 \"no podgate-cli for $OS-$ARCH on this control plane (it has: {})\" ;;\n\
         esac\n\n",
        available.join(", ")
    ));
    s.push_str(
        "# XDG_CONFIG_HOME counts only as an absolute path (as podgate-cli reads it): a relative\n\
         # one would put the binary, and a PATH entry, relative to wherever a shell starts.\n\
         case \"${XDG_CONFIG_HOME:-}\" in\n\
         \x20 /*) CONFIG_DIR=\"$XDG_CONFIG_HOME/podgate\" ;;\n\
         \x20 *) CONFIG_DIR=\"$HOME/.config/podgate\" ;;\n\
         esac\n\
         BIN_DIR=\"$CONFIG_DIR/bin\"\n\
         mkdir -p \"$BIN_DIR\"\n\
         chmod 700 \"$CONFIG_DIR\"\n\
         TMP=\"$(mktemp \"$BIN_DIR/.podgate-cli.XXXXXX\")\"\n\
         trap 'rm -f \"$TMP\"' EXIT\n\
         curl -fsS --proto '=http,https' -o \"$TMP\" \"$BASE/api/download/podgate-cli-$OS-$ARCH\" \\\n\
         \x20 || die 4 \"downloading podgate-cli-$OS-$ARCH from $BASE failed\"\n\
         if command -v sha256sum >/dev/null 2>&1; then GOT=\"$(sha256sum \"$TMP\" | cut -d' ' -f1)\"\n\
         elif command -v shasum >/dev/null 2>&1; then GOT=\"$(shasum -a 256 \"$TMP\" | cut -d' ' -f1)\"\n\
         else die 1 'neither sha256sum nor shasum is installed; cannot check the download'; fi\n\
         [ \"$GOT\" = \"$SHA256\" ] || die 5 \"the download's SHA-256 is $GOT, not $SHA256: refusing to install it\"\n\
         chmod 755 \"$TMP\"\n\
         mv -f \"$TMP\" \"$BIN_DIR/podgate-cli\"\n\
         trap - EXIT\n\
         echo \"podgate: installed $BIN_DIR/podgate-cli\" >&2\n\n\
         # PATH: one marked line per shell start-up file, added once.\n\
         MARK='# podgate-cli (added by the podgate installer)'\n\
         case \"$BIN_DIR\" in\n\
         \x20 *[!A-Za-z0-9/._-]*) echo \"podgate: add $BIN_DIR to your PATH yourself (its name has characters this script does not quote)\" >&2 ;;\n\
         \x20 *)\n\
         \x20   for RC in \"$HOME/.bashrc\" \"$HOME/.zshrc\" \"$HOME/.profile\"; do\n\
         \x20     if [ \"$RC\" != \"$HOME/.profile\" ] && [ ! -e \"$RC\" ]; then\n\
         \x20       # zsh reads .zshrc, never .profile: made for a zsh user who has none.\n\
         \x20       case \"$RC:${SHELL:-}\" in *.zshrc:*/zsh) ;; *) continue ;; esac\n\
         \x20     fi\n\
         \x20     if [ -e \"$RC\" ] && grep -qF \"$MARK\" \"$RC\" 2>/dev/null; then continue; fi\n\
         \x20     if printf '\\n%s\\nexport PATH=\"%s:$PATH\"\\n' \"$MARK\" \"$BIN_DIR\" 2>/dev/null >> \"$RC\"; then\n\
         \x20       echo \"podgate: added $BIN_DIR to PATH in $RC\" >&2\n\
         \x20     else\n\
         \x20       echo \"podgate: cannot write $RC: add $BIN_DIR to your PATH yourself\" >&2\n\
         \x20     fi\n\
         \x20   done\n\
         \x20   case \":$PATH:\" in\n\
         \x20     *\":$BIN_DIR:\"*) ;;\n\
         \x20     *) echo \"podgate: open a new shell for PATH, or run: export PATH=\\\"$BIN_DIR:\\$PATH\\\"\" >&2 ;;\n\
         \x20   esac ;;\n\
         esac\n\n\
         if [ -n \"$INIT_URL\" ]; then\n\
         \x20 # Its own exit codes would read as the installer's (4, 5): one code of its own.\n\
         \x20 # The link goes in on stdin (printf is the shell's own): not in any process's\n\
         \x20 # arguments, which anyone on the machine can read.\n\
         \x20 printf '%s\\n' \"$INIT_URL\" | \"$BIN_DIR/podgate-cli\" --init - \\\n\
         \x20   || die 6 \"installed $BIN_DIR/podgate-cli, but podgate-cli --init failed (exit $?, said above); once fixed, run the install command again (a new setup link's, if this one was revoked or expired)\"\n\
         else\n\
         \x20 echo \"podgate: run podgate-cli --init <setup link> in your project directory\" >&2\n\
         fi\n",
    );
    s
}

/// `GET /api/download/install.sh?init_url=`: a bash script. `init_url` must be this control
/// plane's setup link; it is single-quoted in the script and checked there again. Anything
/// else (shell metacharacters included) never reaches a script: the answer is a fixed script
/// that says why and exits 2, since `curl -fsSL … | bash` would show nothing of a 400 but
/// curl's own error, and exit 0 with nothing installed.
#[utoipa::path(
    get,
    path = "/api/download/install.sh",
    tag = "api-tokens",
    responses(
        (status = 200, description = "The installer script; for an `init_url` that is not this control plane's setup link, a script that says so and exits 2"),
        Malformed,
    )
)]
async fn install_script_handler(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let params = single_params(query.as_deref(), &["init_url"])?;
    let issuer = &state.config().issuer;
    let script = match params.get("init_url").filter(|u| !u.is_empty()) {
        Some(raw) => match check_init_url(issuer, raw) {
            Ok(init_url) => install_script(issuer, Some(&init_url), &state.config().cli_binaries),
            // The reasons name this control plane's prefix, never the input.
            Err(why) => refusal_script(&why),
        },
        None => install_script(issuer, None, &state.config().cli_binaries),
    };
    let mut resp = script.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/x-shellscript; charset=utf-8"),
    );
    no_store(&mut resp);
    Ok(resp)
}

/// `GET /api/download/podgate-cli-<os>-<arch>`: one of `--cli-dir`'s binaries, as it is on
/// disk now (`install.sh` checks it against the hash taken at start).
#[utoipa::path(
    get,
    path = "/api/download/{name}",
    tag = "api-tokens",
    params(
        ("name" = String, Path, description = "The binary's file name, `podgate-cli-<os>-<arch>`"),
    ),
    responses(
        (status = 200, description = "The CLI binary"),
        (status = 404, description = "No such binary on this control plane", body = ErrorBody),
        (status = 503, description = "A dependency is unavailable", body = ErrorBody),
    )
)]
async fn download_cli(State(state): State<AppState>, PathArgs(name): PathArgs<String>) -> Response {
    let Some(binary) = state
        .config()
        .cli_binaries
        .iter()
        .find(|b| b.file_name() == name)
    else {
        return error_response(
            StatusCode::NOT_FOUND,
            "no such download; install.sh picks the binary for your platform",
        );
    };
    // Streamed from the file (a few kilobytes held per download, whatever the binary's size
    // and however slowly the client reads), with its length.
    let opened = match tokio::fs::File::open(&binary.path).await {
        Ok(file) => file.metadata().await.map(|m| (file, m.len())),
        Err(e) => Err(e),
    };
    match opened {
        Ok((file, len)) => {
            let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
            let mut resp = body.into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            no_store(&mut resp);
            resp
        }
        Err(e) => {
            tracing::error!(path = %binary.path.display(), error = %e, "cannot read a CLI binary");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the CLI binary cannot be read on the control plane; tell its operator",
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn init_config_round_trips() {
        let (_, token) = generate().unwrap();
        let c = init_config(&token, Some("proj-1"));
        assert_eq!(
            decode_init_config(&c),
            Some((token.clone(), Some("proj-1".into())))
        );
        assert_eq!(
            decode_init_config(&init_config(&token, None)),
            Some((token, None))
        );
        assert!(decode_init_config("e30").is_none()); // {}
        assert!(decode_init_config("!!").is_none());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
        let issuer = "http://127.0.0.1:8080";
        let (_, token) = generate().unwrap();
        let good = format!("{issuer}/p/{}", init_config(&token, None));
        assert_eq!(check_init_url(issuer, &good).unwrap(), good);
        for bad in [
            format!("{good}'; rm -rf ~; '"),
            format!("{good}$(id)"),
            format!("{good}`id`"),
            format!("{good}?x=1"),
            format!("{good}#f"),
            format!("{good}\nid"),
            format!("http://evil.example{}", &good[issuer.len()..]),
            format!("{issuer}/q/{}", init_config(&token, None)),
            format!("{issuer}.evil.example/p/{}", init_config(&token, None)),
            "javascript:alert(1)".to_owned(),
        ] {
            assert!(check_init_url(issuer, &bad).is_err(), "{bad}");
        }
        let script = install_script(issuer, Some(&good), &[]);
        assert!(script.contains(&format!("INIT_URL='{good}'")));
        assert!(script.contains("exit 1"));
    }
}
