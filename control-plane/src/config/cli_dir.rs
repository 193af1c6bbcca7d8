//! `--cli-dir`: the `podgate-cli` binaries the control plane serves, named
//! `podgate-cli-<os>-<arch>` (`uname -s` in lowercase, `uname -m` with `amd64` read as
//! `x86_64` and `arm64` as `aarch64`), hashed once at start so `install.sh` can embed what it
//! must check.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::{bad, ConfigError};

/// One downloadable binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliBinary {
    /// `linux-x86_64`.
    pub platform: String,
    pub path: PathBuf,
    /// SHA-256 of the file at start, lowercase hex.
    pub sha256: String,
}

impl CliBinary {
    /// The file name served at `/api/download/{name}`.
    pub fn file_name(&self) -> String {
        format!("podgate-cli-{}", self.platform)
    }
}

/// The platform part of a binary's file name, when it is one.
pub fn platform_of(file_name: &str) -> Option<&str> {
    let platform = file_name.strip_prefix("podgate-cli-")?;
    let (os, arch) = platform.split_once('-')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    (ok(os) && ok(arch)).then_some(platform)
}

/// Every `podgate-cli-<os>-<arch>` file in `dir`, hashed, sorted by platform. Other files are
/// ignored; a directory that cannot be read, or holds no binary, is a configuration error.
pub fn scan(dir: &Path) -> Result<Vec<CliBinary>, ConfigError> {
    let cannot = |e: std::io::Error| {
        bad(format!(
            "cannot read the CLI directory {}: {e}; set PODGATE_CLI_DIR (--cli-dir) to a directory of podgate-cli-<os>-<arch> files",
            dir.display()
        ))
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        let name = entry.file_name();
        let Some(platform) = name.to_str().and_then(platform_of) else {
            continue;
        };
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(cannot)?;
        out.push(CliBinary {
            platform: platform.to_owned(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            path,
        });
    }
    if out.is_empty() {
        return Err(bad(format!(
            "the CLI directory {} holds no podgate-cli-<os>-<arch> file (e.g. podgate-cli-linux-x86_64); put the binaries there or unset PODGATE_CLI_DIR (--cli-dir)",
            dir.display()
        )));
    }
    out.sort_by(|a, b| a.platform.cmp(&b.platform));
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hashes() {
        assert_eq!(
            platform_of("podgate-cli-linux-x86_64"),
            Some("linux-x86_64")
        );
        assert_eq!(
            platform_of("podgate-cli-darwin-aarch64"),
            Some("darwin-aarch64")
        );
        for bad in [
            "podgate-cli",
            "podgate-cli-linux",
            "podgate-cli-Linux-x86_64",
            "podgate-cli-linux-x86_64.sha256",
            "podgate-cli-linux-x86-64",
            "other-linux-x86_64",
        ] {
            assert_eq!(platform_of(bad), None, "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(scan(dir.path()).is_err());
        std::fs::write(dir.path().join("podgate-cli-linux-x86_64"), b"abc").unwrap();
        std::fs::write(dir.path().join("README"), b"ignored").unwrap();
        let found = scan(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].file_name(), "podgate-cli-linux-x86_64");
        assert_eq!(
            found[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
