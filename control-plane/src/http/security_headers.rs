//! Security headers on every response, set by one layer on the whole router (routes, fallbacks,
//! errors, CORS preflights, 413/429 answers alike), so no route can forget them:
//!
//! | header | value | on |
//! |---|---|---|
//! | `Content-Security-Policy` | [`HTML_CSP`] | HTML pages (the setup-link page, the callback's failure page) |
//! | `Content-Security-Policy` | `setup::SETUP_CSP` | the `/setup` page only (its own script and fetches) |
//! | `Content-Security-Policy` | [`API_CSP`] | everything else (JSON, redirects, the install script) |
//! | `X-Frame-Options` | `DENY` | every response |
//! | `X-Content-Type-Options` | `nosniff` | every response |
//! | `Referrer-Policy` | `no-referrer` | every response (callback URLs carry tickets) |
//! | `Cache-Control` | `no-store` | every response that sets a cookie (forced), and every response whose handler chose no caching itself |
//!
//! The handlers that choose caching are `GET /.well-known/jwks.json` and
//! `GET /.well-known/podgate-assertion-jwks.json` (`public, max-age=60`):
//! public keys, which Envoy-side tooling and clients may cache; rotation publishes a new key before
//! it signs. Everything that carries or sets a credential (the callback's cookie, the proxy-auth
//! ticket redirect, minted capabilities, API-token creation, the dev login) is `no-store`.
//!
//! Framing: the workbench embeds a pod with an iframe whose `src` is `/api/proxy-auth` (seed
//! 001). The flow's 302s carry `DENY` and `frame-ancestors 'none'` too, which does not break it:
//! browsers judge framing on the document they render, not on redirects on the way (checked with
//! Chromium: an iframe through such a 302 renders its target). Only our own HTML, the callback's
//! failure page, refuses to render in a frame; the workbench reloads the frame to start over.

use axum::http::{header, HeaderValue};
use axum::response::Response;

use crate::http::setup::{SetupPage, SETUP_CSP};

/// HTML pages: nothing loads but their own inline style; never framed, no `<base>`, no forms.
pub const HTML_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
/// Everything else: nothing may load or frame it, should a browser ever render it.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// `map_response` layer: adds the headers above.
pub async fn secure(mut resp: Response) -> Response {
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/html")
        });
    let setup_page = html && resp.extensions().get::<SetupPage>().is_some();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(if setup_page {
            SETUP_CSP
        } else if html {
            HTML_CSP
        } else {
            API_CSP
        }),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if h.contains_key(header::SET_COOKIE) || !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
