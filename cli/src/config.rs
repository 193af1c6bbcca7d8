//! The config file: `$XDG_CONFIG_HOME/podgate/config.json` (else `~/.config/podgate/`), one
//! session per working directory. The directory is created 0700 and the file written 0600
//! (through a temporary file and a rename, so a crash never leaves half a file): it holds API
//! tokens.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{code, CliError, Result};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ConfigFile {
    /// Keyed by the absolute directory `--init` ran in.
    #[serde(default)]
    pub sessions: BTreeMap<String, Session>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The control plane, e.g. `https://podgate.example.dev`.
    pub backend_url: String,
    /// The API token (`pg_…`).
    pub auth_token: String,
    pub user_id: String,
    #[serde(default)]
    pub user_email: Option<String>,
    /// The API token's expiry (RFC 3339), as the control plane said at `--init`.
    #[serde(default)]
    pub token_expires_at: Option<String>,
    /// The session-name prefix the setup link carried, if any.
    #[serde(default)]
    pub prefix: Option<String>,
    /// How the control plane names pod hosts (`{pod}`, `{port}`), to read pod URLs.
    #[serde(default)]
    pub host_template: Option<String>,
    /// RFC 3339.
    pub last_used: String,
}

/// `$XDG_CONFIG_HOME/podgate` or `$HOME/.config/podgate`.
pub fn config_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        let x = PathBuf::from(x);
        if x.is_absolute() {
            return Ok(x.join("podgate"));
        }
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| CliError::other("neither XDG_CONFIG_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".config").join("podgate"))
}

pub fn config_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("config.json"))
}

/// The working directory as the key sessions are saved under.
pub fn current_dir() -> Result<String> {
    let dir = std::env::current_dir()
        .map_err(|e| CliError::other(format!("cannot read the working directory: {e}")))?;
    Ok(dir.to_string_lossy().into_owned())
}

pub fn now_rfc3339() -> String {
    chrono::DateTime::from_timestamp(crate::api::now_unix(), 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

impl ConfigFile {
    /// The file, or an empty one when there is none yet.
    pub fn load() -> Result<ConfigFile> {
        let path = config_path()?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CliError::other(format!(
                    "{} is not a podgate config file ({e}); move it away and run --init again",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(CliError::other(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Reads the file, applies `change` and writes it back, holding the config directory's
    /// lock throughout, so that two commands at once (an `--init` in another directory while a
    /// `logout` waits on the network) never write over each other's changes. Returns what
    /// `change` returns.
    pub fn update<T>(change: impl FnOnce(&mut ConfigFile) -> T) -> Result<T> {
        let dir = config_dir()?;
        create_private_dir(&dir)?;
        let lock_path = dir.join(".config.lock");
        let lock = lock_file(&lock_path)
            .and_then(|f| f.lock().map(|()| f))
            .map_err(|e| CliError::other(format!("cannot lock {}: {e}", lock_path.display())))?;
        let mut file = ConfigFile::load()?;
        let out = change(&mut file);
        file.save()?;
        drop(lock);
        Ok(out)
    }

    /// Writes the file 0600 in a 0700 directory (callers hold the lock: [`ConfigFile::update`]).
    fn save(&self) -> Result<()> {
        let dir = config_dir()?;
        create_private_dir(&dir)?;
        let path = dir.join("config.json");
        let tmp = dir.join(format!(".config.json.{}", std::process::id()));
        // A leftover of a process that died with this one's id (the lock is held, so no live
        // command writes it).
        let _ = std::fs::remove_file(&tmp);
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| CliError::other(format!("cannot encode the config: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut f = private_file(&tmp)?;
            f.write_all(&body)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CliError::other(format!("cannot write {}: {e}", path.display()))
        })
    }

    /// The session for `dir` or its nearest parent that has one: `(key, session)`.
    pub fn find(&self, dir: &str) -> Option<(String, &Session)> {
        let mut at = Some(Path::new(dir));
        while let Some(d) = at {
            if let Some(s) = self.sessions.get(d.to_string_lossy().as_ref()) {
                return Some((d.to_string_lossy().into_owned(), s));
            }
            at = d.parent();
        }
        None
    }

    /// Like [`ConfigFile::find`] for the working directory, or the "not initialised" error.
    pub fn session_here(&self) -> Result<(String, Session)> {
        let dir = current_dir()?;
        self.find(&dir).map(|(k, s)| (k, s.clone())).ok_or_else(|| {
            CliError::new(
                code::NOT_INITIALISED,
                format!(
                    "no podgate session for {dir}; run `podgate-cli --init <setup link>` here \
                         (create a setup link on the control plane's /setup page), or set \
                         PODGATE_URL and PODGATE_TOKEN"
                ),
            )
        })
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |e: std::io::Error| CliError::other(format!("cannot create {}: {e}", dir.display()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::other(format!("cannot create {}: {e}", dir.display())))
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// The config directory's lock file (empty; only locked), 0600 like the config.
#[cfg(unix)]
fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn session(url: &str) -> Session {
        Session {
            backend_url: url.into(),
            auth_token: "pg_x".into(),
            user_id: "alice".into(),
            user_email: None,
            token_expires_at: None,
            prefix: None,
            host_template: None,
            last_used: now_rfc3339(),
        }
    }

    #[test]
    fn the_nearest_directory_wins() {
        let mut c = ConfigFile::default();
        c.sessions.insert("/home/a".into(), session("http://one"));
        c.sessions.insert("/home/a/b".into(), session("http://two"));
        assert_eq!(c.find("/home/a/b/c").unwrap().1.backend_url, "http://two");
        assert_eq!(c.find("/home/a/x").unwrap().0, "/home/a");
        assert!(c.find("/home").is_none());
    }
}
