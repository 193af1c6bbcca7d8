//! `podgate-cli curl URL …`: one request to a pod URL with a capability, the answer streamed to
//! stdout or a file. The capability goes only to the public origin the control plane names for
//! the pod port: with `-L` a redirect elsewhere, another pod port included, is followed without
//! it, as curl drops credentials on a redirect to another host (a pod must not be able to send
//! your request, as you, to another of your pods).

use std::io::Write;

use crate::api::{self, Backend};
use crate::config::Session;
use crate::error::{code, CliError, Result};

const USAGE: &str = "usage: podgate-cli curl URL [-X METHOD] [-d DATA|@FILE|@-] \
                     [-H 'Name: value']... [-i] [-f] [-L] [-o FILE] [-s] [-S]";

/// Redirects `-L` follows before it gives up, as a loop would never end.
const MAX_REDIRECTS: usize = 10;

#[derive(Debug)]
pub struct CurlArgs {
    pub url: String,
    pub method: Option<String>,
    pub data: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
    pub include: bool,
    pub fail: bool,
    pub location: bool,
    pub output: Option<String>,
}

fn read_data(d: &str) -> Result<Vec<u8>> {
    match d.strip_prefix('@') {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(|e| CliError::other(format!("cannot read stdin: {e}")))?;
            Ok(buf)
        }
        Some(path) => {
            std::fs::read(path).map_err(|e| CliError::usage(format!("cannot read {path}: {e}")))
        }
        None => Ok(d.as_bytes().to_vec()),
    }
}

/// `-fsSL` is `-f -s -S -L`, as curl reads it: short flags that take no value, together.
fn split_short_flags(rest: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(rest.len());
    let mut value_next = false;
    for arg in rest {
        let together = !value_next
            && arg.len() > 2
            && arg.starts_with('-')
            && !arg.starts_with("--")
            && arg[1..].chars().all(|c| "fisSL".contains(c));
        if together {
            out.extend(arg[1..].chars().map(|c| format!("-{c}")));
        } else {
            out.push(arg.clone());
        }
        value_next = !value_next
            && matches!(
                arg.as_str(),
                "-X" | "--request"
                    | "-d"
                    | "--data"
                    | "--data-binary"
                    | "-H"
                    | "--header"
                    | "-o"
                    | "--output"
            );
    }
    out
}

pub fn parse(rest: &[String]) -> Result<CurlArgs> {
    let usage = || CliError::usage(USAGE);
    let mut a = CurlArgs {
        url: String::new(),
        method: None,
        data: None,
        headers: Vec::new(),
        include: false,
        fail: false,
        location: false,
        output: None,
    };
    let args = split_short_flags(rest);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-X" | "--request" => a.method = Some(it.next().ok_or_else(usage)?.clone()),
            "-d" | "--data" | "--data-binary" => {
                a.data = Some(read_data(it.next().ok_or_else(usage)?)?)
            }
            "-H" | "--header" => {
                let h = it.next().ok_or_else(usage)?;
                let (n, v) = h
                    .split_once(':')
                    .ok_or_else(|| CliError::usage(format!("header `{h}` is not `Name: value`")))?;
                let (n, v) = (n.trim(), v.trim());
                // Checked here, as a usage mistake: the HTTP client would only fail at sending,
                // as if the pod could not be reached.
                if reqwest::header::HeaderName::from_bytes(n.as_bytes()).is_err() {
                    return Err(CliError::usage(format!(
                        "header `{h}`: `{n}` is not a header name (letters, digits and `-`, no spaces)"
                    )));
                }
                if reqwest::header::HeaderValue::from_str(v).is_err() {
                    return Err(CliError::usage(format!(
                        "header `{n}`: its value has a control character; send printable text"
                    )));
                }
                if n.eq_ignore_ascii_case("podgate-token") {
                    return Err(CliError::usage(
                        "do not send podgate-token yourself; podgate-cli adds the capability",
                    ));
                }
                a.headers.push((n.to_owned(), v.to_owned()));
            }
            "-i" | "--include" => a.include = true,
            "-f" | "--fail" => a.fail = true,
            "-L" | "--location" => a.location = true,
            "-o" | "--output" => a.output = Some(it.next().ok_or_else(usage)?.clone()),
            // There is no progress meter to silence, and errors always go to stderr: accepted
            // so that curl habits (`-fsS`) work.
            "-s" | "--silent" | "-S" | "--show-error" => {}
            s if s.starts_with('-') => {
                return Err(CliError::usage(format!("unknown curl flag `{s}`; {USAGE}")))
            }
            s if a.url.is_empty() => a.url = s.to_owned(),
            _ => return Err(usage()),
        }
    }
    if a.url.is_empty() {
        return Err(usage());
    }
    Ok(a)
}

/// Pod and port of a pod URL, read with the control plane's host template.
fn pod_of_url(session: &Session, template: &str, url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| {
        CliError::usage(format!(
            "{url} is not a pod URL of {} ({why}); `podgate-cli status` lists yours",
            session.backend_url
        ))
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad("it does not start with http:// or https://"));
    }
    let host = api::host_of(url).ok_or_else(|| bad("no host"))?;
    api::parse_pod_host(template, &host).ok_or_else(|| bad("its host names no pod and port"))
}

fn origin(url: &str) -> Option<reqwest::Url> {
    let mut u = reqwest::Url::parse(url).ok()?;
    u.set_path("/");
    u.set_query(None);
    u.set_fragment(None);
    Some(u)
}

pub async fn run(session: &Session, backend: &Backend, a: CurlArgs) -> Result<u8> {
    // A session saved before the host template was kept, or one from the environment: ask.
    let template = match &session.host_template {
        Some(t) => t.clone(),
        None => backend.me().await?["host_template"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                CliError::other(format!(
                    "{} names no host template for pods in /api/me",
                    session.backend_url
                ))
            })?,
    };
    let (pod, port) = pod_of_url(session, &template, &a.url)?;
    let cap = backend.capability(&pod, port).await?;
    // The capability goes only to the pod port's public origin, as the control plane names it.
    if origin(&a.url).is_none() || origin(&a.url) != origin(&cap.url) {
        return Err(CliError::usage(format!(
            "{} is not on the public URL of pod {pod} port {port}, {}; use that scheme, host and port",
            a.url, cap.url
        )));
    }
    let method = a
        .method
        .clone()
        .unwrap_or_else(|| if a.data.is_some() { "POST" } else { "GET" }.into());
    let mut method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| CliError::usage(format!("`{method}` is not an HTTP method")))?;
    let mut out: Box<dyn Write> = match &a.output {
        None => Box::new(std::io::stdout()),
        Some(path) => Box::new(std::fs::File::create(path).map_err(|e| {
            CliError::other(format!("cannot write {path}: {e}; pick another -o FILE"))
        })?),
    };
    let mut url = a.url.clone();
    let first_origin = origin(&a.url);
    let mut body = a.data;
    let mut hops = 0;
    let resp = loop {
        let http = api::client_for(&url)?;
        let mut req = http.request(method.clone(), &url);
        for (n, v) in &a.headers {
            req = req.header(n, v);
        }
        if origin(&url) == first_origin {
            req = req.header("podgate-token", &cap.token);
        }
        if let Some(d) = &body {
            req = req.body(d.clone());
        }
        let resp = req.send().await.map_err(|e| {
            CliError::new(
                code::UNREACHABLE,
                format!("cannot reach {url}: {e}; check the URL and your network"),
            )
        })?;
        let status = resp.status();
        let next = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| resp.url().join(l).ok());
        let Some(next) = next.filter(|_| a.location && status.is_redirection()) else {
            break resp;
        };
        hops += 1;
        if hops > MAX_REDIRECTS {
            return Err(CliError::other(format!(
                "more than {MAX_REDIRECTS} redirects, the last to {next}; is it a loop?"
            )));
        }
        if a.include {
            write_head(&mut out, &resp)?;
        }
        // As curl and browsers do: a 303, or a 301/302 after a POST, is followed with a GET
        // without the body; 307 and 308 repeat the request as it was.
        if status == reqwest::StatusCode::SEE_OTHER
            || (method == reqwest::Method::POST && status.as_u16() <= 302)
        {
            method = reqwest::Method::GET;
            body = None;
        }
        url = next.to_string();
    };
    let status = resp.status();
    if a.fail && status.as_u16() >= 400 {
        // As curl -f: nothing of the error page is written.
        eprintln!("podgate-cli: the pod answered {status}");
        return Ok(22);
    }
    if a.include {
        write_head(&mut out, &resp)?;
    }
    // Written as it comes, as curl does: a stream or a long download is not held in memory.
    let mut resp = resp;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| CliError::new(code::UNREACHABLE, format!("the answer was cut short: {e}")))?
    {
        if let Err(e) = out.write_all(&chunk).and_then(|()| out.flush()) {
            if a.output.is_some() {
                return Err(CliError::other(format!("cannot write the answer: {e}")));
            }
            // The reader went away (`| head`): nothing more to write.
            break;
        }
    }
    let _ = out.flush();
    Ok(0)
}

/// The status line and headers, as `-i` shows them.
fn write_head(out: &mut Box<dyn Write>, resp: &reqwest::Response) -> Result<()> {
    let mut head = format!("{:?} {}\r\n", resp.version(), resp.status());
    for (n, v) in resp.headers() {
        head.push_str(&format!(
            "{n}: {}\r\n",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    head.push_str("\r\n");
    // A reader gone away is found when the body is written.
    let _ = out.write_all(head.as_bytes());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_malformed_curl_header_is_a_usage_mistake_found_before_anything_is_sent() {
        let with = |h: &str| args(&["http://localhost-3000-pod-demo.localhost:10000/", "-H", h]);
        for (bad, says) in [
            ("Bad Name: x", "is not a header name"),
            ("x-ok: a\u{7}b", "control character"),
            ("no-colon", "is not `Name: value`"),
            ("Podgate-Token: x", "do not send podgate-token yourself"),
        ] {
            let err = parse(&with(bad)).expect_err(bad);
            assert_eq!(err.code, 2, "{bad}");
            assert!(err.message.contains(says), "{bad}: {}", err.message);
        }
        let ok = parse(&with("X-Trace:  abc ")).unwrap();
        assert_eq!(ok.headers, [("X-Trace".to_owned(), "abc".to_owned())]);
    }

    #[test]
    fn curl_habits_are_read_as_curl_reads_them() {
        // A value that looks like flags stays a value: `-o -fsS` writes to a file named `-fsS`,
        // `-H -si:v` is a header named `-si`.
        let a = parse(&args(&[
            "-fsSL",
            "http://x/",
            "-o",
            "-fsS",
            "-H",
            "-si:v",
            "-i",
        ]))
        .unwrap();
        assert!(a.fail && a.location && a.include);
        assert_eq!(a.output.as_deref(), Some("-fsS"));
        assert_eq!(a.headers, [("-si".to_owned(), "v".to_owned())]);
        assert_eq!(a.url, "http://x/");
        let a = parse(&args(&["http://x/", "-sS"])).unwrap();
        assert!(!a.fail && !a.location && !a.include && a.output.is_none());
        for unknown in ["-k", "-fk", "--insecure"] {
            let err = parse(&args(&["http://x/", unknown])).expect_err(unknown);
            assert_eq!(err.code, 2);
            assert!(err.message.contains("unknown curl flag"), "{}", err.message);
        }
    }
}
