//! Helpers every HTTP module uses: strict query parsing and the no-store marking of answers
//! that carry credentials.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;

use podgate_protocol::gate::Request as GateRequest;
use podgate_protocol::host::{parse_port, validate_slug, PodAddr, SERVICE_PORT};
use podgate_protocol::redirect::{safe_next, MAX_NEXT_LEN};

use crate::config::limits::MAX_QUERY_LEN;
use crate::http::error::{ApiError, ApiResult};

/// Parses a query string, refusing a second copy of any parameter in `names` (parameter
/// pollution: `pod=a&pod=b` must not be read one way here and another way elsewhere). Other
/// parameters are ignored.
pub fn single_params(query: Option<&str>, names: &[&str]) -> ApiResult<HashMap<String, String>> {
    let query = query.unwrap_or("");
    if query.len() > MAX_QUERY_LEN {
        return Err(ApiError::bad(format!(
            "the query string is longer than {MAX_QUERY_LEN} bytes"
        )));
    }
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if !names.contains(&k.as_ref()) {
            continue;
        }
        if out.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(ApiError::bad(format!(
                "the parameter `{k}` appears more than once; send it once"
            )));
        }
    }
    Ok(out)
}

/// Marks a response as never to be cached and never to leak its URL as a referrer.
pub fn no_store(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
}

/// Validates a pod and port, or a service, given by a client: a service is the address
/// (`name`, `host::SERVICE_PORT`), and is named alone.
pub fn parse_target(
    pod: Option<&str>,
    port: Option<&str>,
    service: Option<&str>,
) -> ApiResult<PodAddr> {
    if let Some(service) = service {
        if pod.is_some() || port.is_some() {
            return Err(ApiError::bad(
                "give either `service`, or `pod` and `port`, not both",
            ));
        }
        validate_slug(service)
            .map_err(|e| ApiError::bad(format!("`service` is not a service name: {e}")))?;
        return Ok(PodAddr {
            pod: service.to_owned(),
            port: SERVICE_PORT,
        });
    }
    let pod = pod.filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError::bad("missing `pod`: give the pod's slug, e.g. pod=myslug&port=8726")
    })?;
    validate_slug(pod).map_err(|e| ApiError::bad(format!("`pod` is not a pod slug: {e}")))?;
    let port = port.filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError::bad("missing `port`: give the port inside the pod, e.g. port=8726")
    })?;
    let port = parse_port(port).map_err(|e| ApiError::bad(format!("`port` is not valid: {e}")))?;
    Ok(PodAddr {
        pod: pod.to_owned(),
        port,
    })
}

/// Where to go after signing in: a same-host path, or an absolute URL on the control plane
/// itself (`issuer`; the login redirect of `/api/proxy-auth` sends one) turned into its path;
/// `None` when `next` is absent or neither.
pub fn after_login(issuer: &str, next: Option<&str>) -> Option<String> {
    let next = next?;
    // An issuer with a path (the control plane under a prefix of the app's host): the browser
    // goes back under that prefix, not to the host's root.
    let issuer_path = issuer
        .get(crate::filter_config::origin(issuer).len()..)
        .unwrap_or("");
    let issuer_prefix = format!("{issuer}/");
    let path = match next.strip_prefix(&issuer_prefix) {
        Some(rest) => format!("{issuer_path}/{rest}"),
        None => next.to_owned(),
    };
    let safe = safe_next(&path);
    (safe == path).then_some(safe)
}

/// `next` as sign-in pages take it: absent, or a path `after_login` keeps; anything else is
/// a message for a 400 (said before anything is done, so nothing is lost).
pub fn checked_next(issuer: &str, next: Option<&str>) -> Result<Option<String>, String> {
    let Some(next) = next else { return Ok(None) };
    if next.len() > MAX_NEXT_LEN {
        return Err(format!(
            "`next` is longer than {MAX_NEXT_LEN} bytes; link to a shorter path"
        ));
    }
    match after_login(issuer, Some(next)) {
        Some(safe) => Ok(Some(safe)),
        None => Err("`next` is not a path on this control plane; sign-in only returns to podgate's own pages".into()),
    }
}

/// Whether a request is a browser's page load (the filter's rule: `Sec-Fetch-Mode: navigate`, or
/// `Accept: text/html` on GET/HEAD without fetch metadata), which gets pages and redirects
/// rather than JSON.
pub fn is_page_load(headers: &HeaderMap, method: &str) -> bool {
    let h = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    GateRequest {
        method,
        accept: h(header::ACCEPT),
        sec_fetch_mode: headers.get("sec-fetch-mode").and_then(|v| v.to_str().ok()),
        upgrade: h(header::UPGRADE),
        ..GateRequest::default()
    }
    .is_page_load()
}

#[cfg(test)]
mod tests {
    use super::after_login;

    #[test]
    fn sign_in_returns_under_the_issuers_own_path() {
        let back = "api/proxy-auth?pod=demo&port=8726&next=/x";
        for (issuer, lands) in [
            (
                "https://podgate.example.dev",
                "/api/proxy-auth?pod=demo&port=8726&next=/x",
            ),
            (
                "https://app.example.dev/podgate",
                "/podgate/api/proxy-auth?pod=demo&port=8726&next=/x",
            ),
            (
                "http://127.0.0.1:8080/a/b",
                "/a/b/api/proxy-auth?pod=demo&port=8726&next=/x",
            ),
        ] {
            assert_eq!(
                after_login(issuer, Some(&format!("{issuer}/{back}"))).as_deref(),
                Some(lands),
                "{issuer}"
            );
        }
        // A path of its own stays as it is; another origin is refused.
        let issuer = "https://app.example.dev/podgate";
        assert_eq!(after_login(issuer, Some("/me")).as_deref(), Some("/me"));
        assert_eq!(
            after_login(issuer, Some("https://evil.example/podgate/x")),
            None
        );
        assert_eq!(
            after_login(issuer, Some("https://app.example.dev/other")),
            None
        );
        assert_eq!(after_login(issuer, None), None);
    }
}
