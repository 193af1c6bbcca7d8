//! `podgate-cli`: reach podgate pods from a terminal with an API token.
//!
//! `--init <setup link>` saves the link's API token for the working directory; `status`,
//! `logout`, `token POD PORT`, `curl URL …` and `forward POD PORT` use it, or the token in
//! `PODGATE_TOKEN` (with `PODGATE_URL`) when it is set. Each pod request
//! carries a short-lived capability from `POST /v1/capabilities` (a WebSocket through `forward`
//! the API token, which the edge exchanges and renews). Exit
//! codes are in [`error::code`] and `docs/cli.md`.

mod api;
mod config;
mod curl;
mod error;
mod forward;
mod init_url;

use std::process::ExitCode;

use api::Backend;
use config::{now_rfc3339, ConfigFile, Session};
use error::{code, CliError, Result};

const USAGE: &str = "\
usage:
  podgate-cli --init <setup link>       save the link's API token for this directory
  podgate-cli --init -                  the same, the link read from stdin
  podgate-cli status [--json]           who you are, which control plane, token expiry, your pods
  podgate-cli logout                    revoke the API token and forget it
  podgate-cli token POD PORT            print a fresh capability for one pod port
  podgate-cli curl URL [-X METHOD] [-d DATA|@FILE|@-] [-H 'Name: value']... [-i] [-f] [-L]
                   [-o FILE] [-s] [-S]  one request to a pod URL with a capability
  podgate-cli forward POD PORT [--local ADDR]
                                        serve the pod port on ADDR (default 127.0.0.1:PORT),
                                        HTTP and WebSockets, renewing the capability itself
  podgate-cli --help | --version

PODGATE_URL and PODGATE_TOKEN (both) take the place of the saved session: a control plane's
URL and an API token (pg_…), for scripts and jobs that cannot run --init.

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
        "status" => match rest {
            [] => status(false).await,
            [json] if json == "--json" => status(true).await,
            _ => Err(CliError::usage(
                "usage: `status` takes no arguments other than --json",
            )),
        },
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

/// Where the API token of a command comes from.
pub enum Source {
    /// `PODGATE_TOKEN` (with `PODGATE_URL`): scripts, CI jobs, containers; no config file.
    Env,
    /// The session saved by `--init` for this directory (the key), or its nearest parent.
    Saved(String),
}

/// The API token and control plane in `PODGATE_TOKEN` and `PODGATE_URL`, if set: they take
/// the place of the saved session, so a job needs no `--init` and writes no file. One without
/// the other is a usage error: a token is only ever sent to the control plane named with it.
fn env_session() -> Result<Option<Session>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let (url, token) =
        match (var("PODGATE_URL"), var("PODGATE_TOKEN")) {
            (None, None) => return Ok(None),
            (Some(url), Some(token)) => (url.trim().to_owned(), token.trim().to_owned()),
            (None, Some(_)) => {
                return Err(CliError::usage(
                    "PODGATE_TOKEN is set but PODGATE_URL is not: set PODGATE_URL to the control \
                 plane's URL (e.g. https://podgate.example.dev), or unset PODGATE_TOKEN to use \
                 the saved session",
                ))
            }
            (Some(_), None) => return Err(CliError::usage(
                "PODGATE_URL is set but PODGATE_TOKEN is not: set PODGATE_TOKEN to an API token \
                 (pg_…, from the control plane's /setup page), or unset PODGATE_URL to use the \
                 saved session",
            )),
        };
    if !is_control_plane_url(&url) {
        return Err(CliError::usage(format!(
            "PODGATE_URL `{url}` is not the URL of a control plane: http:// or https://, a host, \
             no user name, query or fragment (e.g. https://podgate.example.dev)"
        )));
    }
    if init_url::token_id(&token).is_none() {
        return Err(CliError::usage(
            "PODGATE_TOKEN is not an API token (pg_…); create one on the control plane's /setup \
             page",
        ));
    }
    Ok(Some(Session {
        backend_url: url.trim_end_matches('/').to_owned(),
        auth_token: token,
        user_id: String::new(),
        user_email: None,
        token_expires_at: None,
        prefix: None,
        host_template: None,
        last_used: now_rfc3339(),
    }))
}

/// Whether `url` names a control plane as plainly as a setup link does: http or https, a host,
/// no user name, query or fragment. The API token goes nowhere else.
fn is_control_plane_url(url: &str) -> bool {
    reqwest::Url::parse(url).ok().is_some_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some_and(|h| !h.is_empty())
            && u.username().is_empty()
            && u.password().is_none()
            && u.query().is_none()
            && u.fragment().is_none()
    }) && url
        .split_once("://")
        .is_some_and(|(_, rest)| !rest.starts_with('/') && !rest.contains(['\\', '@']))
}

/// The session of this command (the environment's, else the one saved for this directory,
/// which is marked used) and a client for its control plane.
fn session() -> Result<(Source, Session, Backend)> {
    if let Some(session) = env_session()? {
        let backend = Backend::from_env(&session.backend_url, &session.auth_token)?;
        return Ok((Source::Env, session, backend));
    }
    let (key, session) = ConfigFile::load()?.session_here()?;
    // A failure to record the use does not stop the command.
    let _ = ConfigFile::update(|file| {
        if let Ok((key, _)) = file.session_here() {
            if let Some(s) = file.sessions.get_mut(&key) {
                s.last_used = now_rfc3339();
            }
        }
    });
    let backend = Backend::new(&session.backend_url, &session.auth_token)?;
    Ok((Source::Saved(key), session, backend))
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

async fn status(json: bool) -> Result<u8> {
    let (source, session, backend) = session()?;
    let me = backend.me().await?;
    if json {
        // For scripts: the same facts, as `GET /api/me` names them.
        let answer = serde_json::json!({
            "user": me["user"],
            "email": me["email"],
            "backend": backend.base,
            "session": match &source {
                Source::Env => "PODGATE_TOKEN".to_owned(),
                Source::Saved(dir) => dir.clone(),
            },
            "api_token": me["api_token"],
            "host_template": me["host_template"],
            "pods": me["pods"],
        });
        println!("{answer:#}");
        return Ok(0);
    }
    let mut out = String::new();
    let user = me["user"].as_str().unwrap_or(&session.user_id);
    out.push_str(&format!("user:     {user}"));
    if let Some(email) = me["email"].as_str() {
        out.push_str(&format!(" <{email}>"));
    }
    out.push_str(&format!("\nbackend:  {}\n", backend.base));
    match &source {
        Source::Env => out.push_str("session:  PODGATE_URL and PODGATE_TOKEN\n"),
        Source::Saved(dir) => out.push_str(&format!("session:  saved for {dir}\n")),
    }
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
    if let Some(session) = env_session()? {
        // Nothing is saved for it: revoking it is all there is to do.
        let backend = Backend::from_env(&session.backend_url, &session.auth_token)?;
        let id = init_url::token_id(&session.auth_token).unwrap_or_default();
        if backend.revoke(id).await? {
            println!("podgate-cli: the API token in PODGATE_TOKEN is revoked; unset PODGATE_TOKEN");
        } else {
            println!(
                "podgate-cli: the API token in PODGATE_TOKEN was already expired or revoked; unset \
                 PODGATE_TOKEN"
            );
        }
        return Ok(0);
    }
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
    let (_, _, backend) = session()?;
    let cap = backend.capability(pod, port).await?;
    println!("{}", cap.token);
    eprintln!(
        "podgate-cli: expires {}; send it to {} as `podgate-token: …` or `Authorization: Bearer …`",
        cap.expires_at, cap.url
    );
    Ok(0)
}

async fn curl(rest: &[String]) -> Result<u8> {
    let args = curl::parse(rest)?;
    let (_, session, backend) = session()?;
    curl::run(&session, &backend, args).await
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
    let (_, _, backend) = session()?;
    forward::run(backend, pod, port, local).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podgate_url_must_name_a_control_plane_plainly() {
        for ok in [
            "https://podgate.example.dev",
            "http://127.0.0.1:8080/",
            "https://example.dev/podgate",
        ] {
            assert!(is_control_plane_url(ok), "{ok}");
        }
        for bad in [
            "http://",
            "http:///api/me",
            "ftp://podgate.example.dev",
            "https://user:pw@podgate.example.dev",
            "https://evil.example@podgate.example.dev",
            "https://podgate.example.dev/?x=1",
            "https://podgate.example.dev/#x",
            "https:\\\\podgate.example.dev",
            "podgate.example.dev",
        ] {
            assert!(!is_control_plane_url(bad), "{bad}");
        }
    }
}
