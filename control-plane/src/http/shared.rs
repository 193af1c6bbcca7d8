//! Helpers every HTTP module uses: strict query parsing and the no-store marking of answers
//! that carry credentials.

use std::collections::HashMap;

use axum::http::{header, HeaderValue};
use axum::response::Response;

use podgate_protocol::host::{parse_port, validate_slug, PodAddr};

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

/// Validates a pod and port given by a client.
pub fn parse_target(pod: Option<&str>, port: Option<&str>) -> ApiResult<PodAddr> {
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
