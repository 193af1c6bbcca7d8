//! `podgate-cli curl URL …`: one request to a pod URL with a capability, the answer streamed to
//! stdout or a file. The capability goes only to the public origin the control plane names for
//! the pod port: with `-L` a redirect elsewhere, another pod port included, is followed without
//! it and without the caller's `Authorization`, `Proxy-Authorization` and `Cookie` headers, as
//! curl drops credentials on a redirect to another origin (a pod must not be able to send your
//! request, as you, to another of your pods).

use std::io::Write;

use crate::api::{self, Backend};
use crate::config::Session;
use crate::error::{code, with_causes, CliError, Result};

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

/// The `Content-Type` curl gives a body from `-d`, unless `-H` names another.
const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

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

/// Flags that take the next argument as their value.
fn takes_value(flag: &str) -> bool {
    matches!(
        flag,
        "-X" | "--request"
            | "-d"
            | "--data"
            | "--data-binary"
            | "-H"
            | "--header"
            | "-o"
            | "--output"
    )
}

/// `-fsSL` is `-f -s -S -L`, as curl reads it: short flags together, the last of which may take
/// the next argument as its value (`-fsSLo FILE`). A value is never split.
fn split_short_flags(rest: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(rest.len());
    let mut value_next = false;
    for arg in rest {
        if value_next {
            out.push(arg.clone());
            value_next = false;
            continue;
        }
        let letters = arg.strip_prefix('-').filter(|l| !l.starts_with('-'));
        let together = letters.is_some_and(|l| {
            let (before, last) = l.split_at(l.len().saturating_sub(1));
            l.len() > 1
                && before.chars().all(|c| "fisSL".contains(c))
                && last.chars().all(|c| "fisSLoHXd".contains(c))
        });
        match letters {
            Some(l) if together => out.extend(l.chars().map(|c| format!("-{c}"))),
            _ => out.push(arg.clone()),
        }
        value_next = out.last().is_some_and(|f| takes_value(f));
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
                let value = it.next().ok_or_else(usage)?;
                let mut data = read_data(value)?;
                // As curl: `-d @FILE` drops the file's carriage returns and newlines,
                // `--data-binary` keeps them; several are joined with `&`.
                if arg != "--data-binary" && value.starts_with('@') {
                    data.retain(|b| *b != b'\r' && *b != b'\n');
                }
                a.data = Some(match a.data.take() {
                    Some(mut before) => {
                        before.push(b'&');
                        before.extend(data);
                        before
                    }
                    None => data,
                });
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
            "-o" | "--output" => {
                let to = it.next().ok_or_else(usage)?;
                // `-o -` is stdout, as in curl.
                a.output = (to != "-").then(|| to.clone());
            }
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

/// The origin of `url`: scheme, host and port (the default one when none is written); no user
/// name, no path.
fn origin(url: &str) -> Option<(String, String, u16)> {
    let u = reqwest::Url::parse(url).ok()?;
    Some((
        u.scheme().to_owned(),
        u.host_str()?.to_ascii_lowercase(),
        u.port_or_known_default()?,
    ))
}

/// Headers of the caller's that carry credentials: sent only to the origin first named, as curl
/// does, and as the capability is.
fn is_credential_header(name: &str) -> bool {
    ["authorization", "proxy-authorization", "cookie"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
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
    let mut url = a.url.clone();
    let first_origin = origin(&a.url);
    let mut body = a.data;
    let mut hops = 0;
    // The status lines and headers of the redirects, with `-i`: written only if the answer is.
    let mut heads = Vec::new();
    let resp = loop {
        let http = api::client_for(&url)?;
        let mut req = http.request(method.clone(), &url);
        let at_first_origin = origin(&url) == first_origin;
        for (n, v) in &a.headers {
            if at_first_origin || !is_credential_header(n) {
                req = req.header(n, v);
            }
        }
        if at_first_origin {
            req = req.header("podgate-token", &cap.token);
        }
        if let Some(d) = &body {
            // As curl: a body is a form unless a header says what it is.
            if !a
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            {
                req = req.header("content-type", FORM_CONTENT_TYPE);
            }
            req = req.body(d.clone());
        }
        let resp = req.send().await.map_err(|e| {
            CliError::new(
                code::UNREACHABLE,
                format!(
                    "cannot reach {url}: {}; check the URL and your network",
                    with_causes(&e)
                ),
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
            heads.extend_from_slice(&head_of(&resp));
        }
        // As curl does: a 303 is followed with a GET (a HEAD stays a HEAD), and a 301 or 302
        // after a POST too; both without the body. 307 and 308 repeat the request as it was.
        let to_get = match status.as_u16() {
            303 => method != reqwest::Method::HEAD,
            301 | 302 => method == reqwest::Method::POST,
            _ => false,
        };
        if to_get {
            method = reqwest::Method::GET;
            body = None;
        }
        url = next.to_string();
    };
    let status = resp.status();
    if a.fail && status.as_u16() >= 400 {
        // As curl -f: nothing of the answer is written, and no file is made or changed.
        eprintln!("podgate-cli: {url} answered {status}");
        return Ok(22);
    }
    // The file is made only now: a failure before leaves an earlier one as it was.
    let mut out: Box<dyn Write> = match &a.output {
        None => Box::new(std::io::stdout()),
        Some(path) => Box::new(std::fs::File::create(path).map_err(|e| {
            CliError::other(format!("cannot write {path}: {e}; pick another -o FILE"))
        })?),
    };
    if a.include {
        heads.extend_from_slice(&head_of(&resp));
        // A reader gone away is found when the body is written.
        let _ = out.write_all(&heads);
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
fn head_of(resp: &reqwest::Response) -> Vec<u8> {
    let mut head = format!("{:?} {}\r\n", resp.version(), resp.status());
    for (n, v) in resp.headers() {
        head.push_str(&format!(
            "{n}: {}\r\n",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    head.push_str("\r\n");
    head.into_bytes()
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
        // The last of the letters may take a value; `-o -` is stdout.
        let a = parse(&args(&["-fsSLo", "out.json", "http://x/"])).unwrap();
        assert!(a.fail && a.location && !a.include);
        assert_eq!(a.output.as_deref(), Some("out.json"));
        let a = parse(&args(&["http://x/", "-o", "-", "-sSH", "X-A: b"])).unwrap();
        assert_eq!(a.output, None);
        assert_eq!(a.headers, [("X-A".to_owned(), "b".to_owned())]);
        let a = parse(&args(&["http://x/", "-sS"])).unwrap();
        assert!(!a.fail && !a.location && !a.include && a.output.is_none());
        for unknown in ["-k", "-fk", "-of", "--insecure"] {
            let err = parse(&args(&["http://x/", unknown])).expect_err(unknown);
            assert_eq!(err.code, 2);
            assert!(err.message.contains("unknown curl flag"), "{}", err.message);
        }
    }

    #[test]
    fn data_is_read_as_curl_reads_it() {
        let file = std::env::temp_dir().join(format!("podgate-cli-form-{}", std::process::id()));
        std::fs::write(&file, "a=1\r\n&b=2\n").unwrap();
        let at = format!("@{}", file.display());
        let a = parse(&args(&["http://x/", "-d", &at])).unwrap();
        assert_eq!(a.data.as_deref(), Some(&b"a=1&b=2"[..]));
        let a = parse(&args(&["http://x/", "--data-binary", &at])).unwrap();
        assert_eq!(a.data.as_deref(), Some(&b"a=1\r\n&b=2\n"[..]));
        let a = parse(&args(&["http://x/", "-d", "a=1", "--data", "b=2"])).unwrap();
        assert_eq!(a.data.as_deref(), Some(&b"a=1&b=2"[..]));
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn an_origin_is_scheme_host_and_port() {
        let same = |a: &str, b: &str| origin(a).is_some() && origin(a) == origin(b);
        assert!(same("http://Pod.localhost/x?q", "http://pod.localhost:80/"));
        assert!(same(
            "https://u:p@pod.example.dev/",
            "https://pod.example.dev:443/y"
        ));
        assert!(!same("https://pod.example.dev/", "http://pod.example.dev/"));
        assert!(!same("http://pod.localhost:8080/", "http://pod.localhost/"));
        assert!(!same("http://pod.localhost/", "http://other.localhost/"));
        assert!(is_credential_header("Cookie") && is_credential_header("AUTHORIZATION"));
        assert!(!is_credential_header("x-trace"));
    }
}
