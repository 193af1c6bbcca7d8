//! The request view: the headers the decision reads, borrowed from the header map Envoy hands
//! over. Every other header passes through untouched.

use crate::config::HEADER_PREFIX;
use crate::cookie::TOKEN_HEADER;
use crate::cors::PreflightRequest;
use crate::reply::Denial;

/// The request headers the decision reads (besides our own `x-podgate-*`).
pub(super) const HEADER_NAMES_READ: [&str; 13] = [
    ":authority",
    ":path",
    ":method",
    "cookie",
    "authorization",
    "accept",
    "sec-fetch-mode",
    "sec-fetch-site",
    "upgrade",
    "origin",
    "access-control-request-method",
    "access-control-request-headers",
    TOKEN_HEADER,
];

/// The request headers the decision reads. Every other header passes through untouched, except
/// client copies of ours, which are listed in `our_header_names`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub authority: &'a str,
    pub path: &'a str,
    pub method: &'a str,
    /// Every `Cookie` header (HTTP/2 and Envoy usually join them; HTTP/1 clients may not).
    pub cookies: Vec<&'a str>,
    /// Every `podgate-token` header.
    pub token_headers: Vec<&'a str>,
    /// Every `Authorization` header.
    pub authorizations: Vec<&'a str>,
    pub accept: Option<&'a str>,
    pub sec_fetch_mode: Option<&'a str>,
    /// Set by the browser, never by a page: `same-origin` for a request from this very host.
    pub sec_fetch_site: Option<&'a str>,
    pub upgrade: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// CORS preflight fields (`cors::preflight`).
    pub access_control_request_method: Option<&'a str>,
    pub access_control_request_headers: Option<&'a str>,
    /// Names of client-sent headers starting with `x-podgate-` (to be removed).
    pub our_header_names: Vec<&'a str>,
}

impl<'a> Request<'a> {
    /// Builds the view from a header list as Envoy hands it over (lowercase names, raw value
    /// bytes). A header we read that is not UTF-8 is refused rather than guessed at; other
    /// headers pass through untouched whatever their bytes.
    pub fn from_headers(headers: &'a [(String, Vec<u8>)]) -> Result<Self, Denial> {
        Self::from_pairs(
            headers
                .iter()
                .map(|(name, raw)| (name.as_bytes(), raw.as_slice())),
        )
    }

    /// [`Request::from_headers`] over the borrowed pairs of `wire::decode_header_map`,
    /// without copying a header: a name that is not UTF-8 is `MalformedHeaderName`.
    pub fn from_slices(headers: &'a [crate::wire::HeaderSlices<'a>]) -> Result<Self, Denial> {
        Self::from_pairs(headers.iter().copied())
    }

    fn from_pairs(headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Result<Self, Denial> {
        let mut req = Request::default();
        for (name, raw) in headers {
            let Ok(name) = std::str::from_utf8(name) else {
                return Err(Denial::MalformedHeaderName);
            };
            let ours = name.starts_with(HEADER_PREFIX);
            let read = HEADER_NAMES_READ.iter().find(|n| **n == name).copied();
            if ours {
                req.our_header_names.push(name);
                continue;
            }
            let Some(read) = read else { continue };
            let Ok(value) = std::str::from_utf8(raw) else {
                return Err(Denial::MalformedHeader(read));
            };
            match name {
                ":authority" => req.authority = value,
                ":path" => req.path = value,
                ":method" => req.method = value,
                // Envoy joins repeated Cookie headers with "; " before filters run.
                "cookie" => req.cookies.push(value),
                "authorization" => req.authorizations.push(value),
                "accept" => req.accept = Some(value),
                "sec-fetch-mode" => req.sec_fetch_mode = Some(value),
                "sec-fetch-site" => req.sec_fetch_site = Some(value),
                "upgrade" => req.upgrade = Some(value),
                "origin" => req.origin = Some(value),
                "access-control-request-method" => req.access_control_request_method = Some(value),
                "access-control-request-headers" => {
                    req.access_control_request_headers = Some(value)
                }
                _ => req.token_headers.push(value),
            }
        }
        Ok(req)
    }

    /// A WebSocket upgrade (`Upgrade: websocket`, any casing).
    pub fn is_websocket(&self) -> bool {
        self.upgrade
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    }

    /// The fields a CORS preflight decision reads (`cors::preflight`).
    pub fn preflight_view(&self) -> PreflightRequest<'a> {
        PreflightRequest {
            authority: self.authority,
            method: self.method,
            origin: self.origin,
            request_method: self.access_control_request_method,
            request_headers: self.access_control_request_headers,
        }
    }

    /// A browser loading a page (so a redirect to sign in helps), not a script or a subresource.
    pub fn is_page_load(&self) -> bool {
        if self.is_websocket() || !(self.method == "GET" || self.method == "HEAD") {
            return false;
        }
        match self.sec_fetch_mode {
            Some(mode) => mode == "navigate",
            None => self.accept.is_some_and(|a| a.contains("text/html")),
        }
    }
}
