//! `podgate-cli`: reach podgate pods from a terminal with an API token.
//!
//! `--init <setup link>` saves the link's API token for the working directory; `status`,
//! `logout`, `token POD PORT`, `curl URL …` and `forward POD PORT` use it. Each pod request
//! carries a short-lived capability from `POST /v1/capabilities`, never the API token. Exit
//! codes are in [`error::code`] and `docs/cli.md`.

mod api;
mod config;
mod error;
mod forward;
mod init_url;

use std::io::Write;
use std::process::ExitCode;

use api::Backend;
use config::{now_rfc3339, ConfigFile, Session};
use error::{code, CliError, Result};

const USAGE: &str = "\
usage:
  podgate-cli --init <setup link>       save the link's API token for this directory
  podgate-cli --init -                  the same, the link read from stdin
  podgate-cli status                    who you are, which control plane, token expiry, your pods
  podgate-cli logout                    revoke the saved API token and forget it
  podgate-cli token POD PORT            print a fresh capability for one pod port
  podgate-cli curl URL [-X METHOD] [-d DATA|@FILE|@-] [-H 'Name: value']... [-i] [-f]
                                        one request to a pod URL with a capability
  podgate-cli forward POD PORT [--local ADDR]
                                        serve the pod port on ADDR (default 127.0.0.1:PORT),
                                        HTTP and WebSockets, renewing the capability itself
  podgate-cli --help | --version

exit codes: 0 ok, 1 other failure, 2 usage or malformed link/URL, 3 not initialised here,
4 API token expired or revoked, 5 control plane or pod unreachable, 6 access to the pod refused,
22 (curl -f) the pod answered 400 or above";

fn main() -> ExitCode {
    let args: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect()
    {
        Ok(args) => args,
        Err(bad) => {
            eprintln!(
                "podgate-cli: the argument {} is not valid UTF-8; pods, ports, paths and links \
                 are text",
                bad.to_string_lossy()
            );
            return ExitCode::from(code::USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("podgate-cli: cannot start: {e}");
            return ExitCode::from(code::OTHER);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("podgate-cli: {e}");
            if e.code == code::USAGE && e.message.starts_with("usage") {
                eprintln!("{USAGE}");
            }
            ExitCode::from(e.code)
        }
    }
}

async fn run(args: Vec<String>) -> Result<u8> {
    let Some(first) = args.first() else {
        return Err(CliError::usage("usage: no command"));
    };
    let rest = &args[1..];
    match first.as_str() {
        "--init" | "init" => {
            let [url] = rest else {
                return Err(CliError::usage(
                    "usage: podgate-cli --init <setup link>, or --init - to read it from stdin",
                ));
            };
            if url == "-" {
                init(&setup_link_from_stdin()?).await
            } else {
                init(url).await
            }
        }
        // The arguments are checked before anything runs: `logout --help` must not log out.
        "status" => {
            no_args(rest, "status")?;
            status().await
        }
        "logout" => {
            no_args(rest, "logout")?;
            logout().await
        }
        "token" => {
            let (pod, port) = pod_port(rest, "token POD PORT")?;
            token(&pod, port).await
        }
        "curl" => curl(rest).await,
        "forward" => forward_cmd(rest).await,
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(0)
        }
        "-V" | "--version" => {
            println!("podgate-cli {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        other => Err(CliError::usage(format!("usage: unknown command `{other}`"))),
    }
}

fn no_args(rest: &[String], cmd: &str) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(CliError::usage(format!(
            "usage: `{cmd}` takes no arguments"
        )))
    }
}

fn parse_port(s: &str) -> Result<u16> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| CliError::usage(format!("`{s}` is not a port (1-65535)")))
}

fn pod_port(rest: &[String], usage: &str) -> Result<(String, u16)> {
    match rest {
        [pod, port] => Ok((pod.clone(), parse_port(port)?)),
        _ => Err(CliError::usage(format!("usage: podgate-cli {usage}"))),
    }
}

/// The saved session for this directory and a client for its control plane; marks it used.
fn session() -> Result<(Session, Backend)> {
    let (_, session) = ConfigFile::load()?.session_here()?;
    // A failure to record the use does not stop the command.
    let _ = ConfigFile::update(|file| {
        if let Ok((key, _)) = file.session_here() {
            if let Some(s) = file.sessions.get_mut(&key) {
                s.last_used = now_rfc3339();
            }
        }
    });
    let backend = Backend::new(&session.backend_url, &session.auth_token)?;
    Ok((session, backend))
}

/// The setup link on the first line of stdin (`--init -`): a link there is not in the process's
/// arguments, where anyone on the machine can read it while `--init` runs.
fn setup_link_from_stdin() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::other(format!("cannot read the setup link from stdin: {e}")))?;
    let link = line.trim();
    if link.is_empty() {
        return Err(CliError::usage(
            "--init - reads the setup link from stdin, and stdin had none; e.g. printf '%s\\n' \"$LINK\" | podgate-cli --init -",
        ));
    }
    Ok(link.to_owned())
}

async fn init(raw: &str) -> Result<u8> {
    let link = init_url::parse(raw)?;
    let backend = Backend::new(&link.backend_url, &link.token)?;
    let me = backend.me().await?;
    let user = me["user"]
        .as_str()
        .ok_or_else(|| CliError::other("the control plane's /api/me names no user"))?
        .to_owned();
    let dir = config::current_dir()?;
    let session = Session {
        backend_url: link.backend_url.clone(),
        auth_token: link.token.clone(),
        user_id: user.clone(),
        user_email: me["email"].as_str().map(str::to_owned),
        token_expires_at: me["api_token"]["expires_at"].as_str().map(str::to_owned),
        prefix: link.prefix,
        host_template: me["host_template"].as_str().map(str::to_owned),
        last_used: now_rfc3339(),
    };
    let (replaced, file) =
        ConfigFile::update(|file| (file.sessions.insert(dir.clone(), session), file.clone()))?;
    println!(
        "podgate-cli: signed in as {user} on {} for {dir} (saved in {})",
        link.backend_url,
        config::config_path()?.display()
    );
    if let Some(old) = replaced.filter(|old| old.auth_token != link.token) {
        // A link may be used in several directories: the token stays while another holds it.
        let elsewhere: Vec<&str> = file
            .sessions
            .iter()
            .filter(|(_, s)| s.auth_token == old.auth_token)
            .map(|(d, _)| d.as_str())
            .collect();
        if elsewhere.is_empty() {
            revoke_replaced(&old, &dir).await;
        } else {
            println!(
                "podgate-cli: the API token {dir} had before is kept: {} still use it",
                elsewhere.join(", ")
            );
        }
    }
    Ok(0)
}

/// The API token an `--init` replaced for `dir`, which no other directory uses, is revoked, as
/// `logout` would: nothing on this machine holds it any more, so it would otherwise stay live,
/// unseen, until it expires. A failure is reported, never fatal: the new session is saved.
async fn revoke_replaced(old: &Session, dir: &str) {
    let revoked = match (
        init_url::token_id(&old.auth_token),
        Backend::new(&old.backend_url, &old.auth_token),
    ) {
        (Some(id), Ok(backend)) => backend.revoke(id).await,
        (None, _) => Err(CliError::other("it is malformed")),
        (_, Err(e)) => Err(e),
    };
    match revoked {
        Ok(true) => println!("podgate-cli: the API token {dir} had before was revoked"),
        Ok(false) => {}
        Err(e) => eprintln!(
            "podgate-cli: the API token {dir} had before could not be revoked ({e}); revoke it on {}/setup",
            old.backend_url
        ),
    }
}

async fn status() -> Result<u8> {
    let (session, backend) = session()?;
    let me = backend.me().await?;
    let mut out = String::new();
    let user = me["user"].as_str().unwrap_or(&session.user_id);
    out.push_str(&format!("user:     {user}"));
    if let Some(email) = me["email"].as_str() {
        out.push_str(&format!(" <{email}>"));
    }
    out.push_str(&format!("\nbackend:  {}\n", backend.base));
    let token = &me["api_token"];
    out.push_str(&format!(
        "token:    {} (expires {}, in {})\n",
        token["name"].as_str().unwrap_or("?"),
        token["expires_at"].as_str().unwrap_or("?"),
        human_secs(token["expires_in_secs"].as_i64().unwrap_or(0)),
    ));
    let pods = me["pods"].as_array().cloned().unwrap_or_default();
    if pods.is_empty() {
        out.push_str("pods:     none you may reach\n");
    } else {
        out.push_str("pods:\n");
    }
    for p in pods {
        out.push_str(&format!(
            "  {} ({}{})\n",
            p["pod"].as_str().unwrap_or("?"),
            p["status"].as_str().unwrap_or("?"),
            if p["owner"].as_bool() == Some(true) {
                ", yours"
            } else {
                ""
            },
        ));
        for port in p["ports"].as_array().cloned().unwrap_or_default() {
            out.push_str(&format!(
                "    port {}: {}\n",
                port["port"],
                port["url"].as_str().unwrap_or("?")
            ));
        }
        if p["other_ports"].as_bool() == Some(true) {
            out.push_str("    every other port\n");
        }
    }
    print!("{out}");
    Ok(0)
}

fn human_secs(s: i64) -> String {
    match s {
        s if s >= 2 * 86_400 => format!("{} days", (s + 43_200) / 86_400),
        s if s >= 7200 => format!("{} hours", (s + 1800) / 3600),
        s => format!("{} minutes", (s + 30) / 60),
    }
}

async fn logout() -> Result<u8> {
    let (key, session) = ConfigFile::load()?.session_here()?;
    let backend = Backend::new(&session.backend_url, &session.auth_token)?;
    let id = init_url::token_id(&session.auth_token).ok_or_else(|| {
        CliError::other(format!(
            "the API token saved for {key} is malformed; run `podgate-cli --init <setup \
                 link>` in {key} again, or remove the entry for {key} from {}",
            config::config_path().map_or_else(
                |_| "the config file".to_owned(),
                |p| p.display().to_string()
            )
        ))
    })?;
    // Unreachable: keep the session so a later logout can still revoke it.
    let revoked = backend.revoke(id).await?;
    // Every directory that held the token (one setup link used in several) is forgotten: its
    // session could only fail from now on.
    let forgotten = ConfigFile::update(|file| {
        let mut dirs: Vec<String> = file
            .sessions
            .iter()
            .filter(|(_, s)| s.auth_token == session.auth_token)
            .map(|(dir, _)| dir.clone())
            .collect();
        dirs.sort();
        for dir in &dirs {
            file.sessions.remove(dir);
        }
        dirs
    })?;
    // Empty: `--init` replaced the session meanwhile; that one stays.
    let dirs = if forgotten.is_empty() {
        format!("nothing ({key} was signed in again meanwhile)")
    } else {
        forgotten.join(", ")
    };
    if revoked {
        println!("podgate-cli: API token revoked and forgotten for {dirs}");
    } else {
        println!("podgate-cli: the API token was already expired or revoked; forgotten for {dirs}");
    }
    Ok(0)
}

async fn token(pod: &str, port: u16) -> Result<u8> {
    let (_, backend) = session()?;
    let cap = backend.capability(pod, port).await?;
    println!("{}", cap.token);
    eprintln!(
        "podgate-cli: expires {}; send it to {} as `podgate-token: …` or `Authorization: Bearer …`",
        cap.expires_at, cap.url
    );
    Ok(0)
}

struct CurlArgs {
    url: String,
    method: Option<String>,
    data: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
    include: bool,
    fail: bool,
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

fn parse_curl(rest: &[String]) -> Result<CurlArgs> {
    let usage = || {
        CliError::usage(
            "usage: podgate-cli curl URL [-X METHOD] [-d DATA|@FILE] [-H 'Name: value']... [-i] [-f]",
        )
    };
    let mut a = CurlArgs {
        url: String::new(),
        method: None,
        data: None,
        headers: Vec::new(),
        include: false,
        fail: false,
    };
    let mut it = rest.iter();
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
                a.headers.push((n.to_owned(), v.to_owned()));
            }
            "-i" | "--include" => a.include = true,
            "-f" | "--fail" => a.fail = true,
            s if s.starts_with('-') => {
                return Err(CliError::usage(format!("usage: unknown curl flag `{s}`")))
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
fn pod_of_url(session: &Session, url: &str) -> Result<(String, u16)> {
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
    let template = session
        .host_template
        .as_deref()
        .ok_or_else(|| bad("the saved session has no host template; run --init again"))?;
    api::parse_pod_host(template, &host).ok_or_else(|| bad("its host names no pod and port"))
}

async fn curl(rest: &[String]) -> Result<u8> {
    let a = parse_curl(rest)?;
    let (session, backend) = session()?;
    let (pod, port) = pod_of_url(&session, &a.url)?;
    let cap = backend.capability(&pod, port).await?;
    // The capability goes only to the pod port's public origin, as the control plane names it.
    let origin = |u: &str| reqwest::Url::parse(u).ok().map(|u| u.origin());
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
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| CliError::usage(format!("`{method}` is not an HTTP method")))?;
    let http = api::client_for(&a.url)?;
    let mut req = http.request(method, &a.url);
    for (n, v) in &a.headers {
        if n.eq_ignore_ascii_case("podgate-token") {
            return Err(CliError::usage(
                "do not send podgate-token yourself; podgate-cli adds the capability",
            ));
        }
        req = req.header(n, v);
    }
    req = req.header("podgate-token", &cap.token);
    if let Some(d) = a.data {
        req = req.body(d);
    }
    let resp = req.send().await.map_err(|e| {
        CliError::new(
            code::UNREACHABLE,
            format!(
                "cannot reach {}: {e}; check the URL and your network",
                a.url
            ),
        )
    })?;
    let status = resp.status();
    let mut stdout = std::io::stdout();
    if a.include {
        let mut head = format!("{:?} {}\r\n", resp.version(), status);
        for (n, v) in resp.headers() {
            head.push_str(&format!(
                "{n}: {}\r\n",
                String::from_utf8_lossy(v.as_bytes())
            ));
        }
        head.push_str("\r\n");
        let _ = stdout.write_all(head.as_bytes());
    }
    // Written as it comes, as curl does: a stream or a long download is not held in memory.
    let mut resp = resp;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| CliError::new(code::UNREACHABLE, format!("the answer was cut short: {e}")))?
    {
        if stdout
            .write_all(&chunk)
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The reader went away (`| head`): nothing more to write.
            break;
        }
    }
    let _ = stdout.flush();
    if a.fail && status.as_u16() >= 400 {
        eprintln!("podgate-cli: the pod answered {status}");
        return Ok(22);
    }
    Ok(0)
}

async fn forward_cmd(rest: &[String]) -> Result<u8> {
    let usage = || CliError::usage("usage: podgate-cli forward POD PORT [--local ADDR]");
    let mut positional = Vec::new();
    let mut local = None;
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--local" | "-l" => local = Some(it.next().ok_or_else(usage)?.clone()),
            s if s.starts_with('-') => {
                return Err(CliError::usage(format!(
                    "unknown forward flag `{s}`; usage: podgate-cli forward POD PORT [--local ADDR]"
                )))
            }
            s => positional.push(s.to_owned()),
        }
    }
    let (pod, port) = pod_port(&positional, "forward POD PORT [--local ADDR]")?;
    let local = local.unwrap_or_else(|| format!("127.0.0.1:{port}"));
    let local: std::net::SocketAddr = local.parse().map_err(|_| {
        CliError::usage(format!(
            "--local `{local}` is not an address like 127.0.0.1:8080"
        ))
    })?;
    let (_, backend) = session()?;
    forward::run(backend, pod, port, local).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_curl_header_is_a_usage_mistake_found_before_anything_is_sent() {
        let args = |h: &str| {
            ["http://localhost-3000-pod-demo.localhost:10000/", "-H", h]
                .map(str::to_owned)
                .to_vec()
        };
        for (bad, says) in [
            ("Bad Name: x", "is not a header name"),
            ("x-ok: a\u{7}b", "control character"),
            ("no-colon", "is not `Name: value`"),
        ] {
            let err = parse_curl(&args(bad)).err().expect(bad);
            assert_eq!(err.code, 2, "{bad}");
            assert!(err.message.contains(says), "{bad}: {}", err.message);
        }
        let ok = parse_curl(&args("X-Trace:  abc ")).unwrap();
        assert_eq!(ok.headers, [("X-Trace".to_owned(), "abc".to_owned())]);
    }
}
