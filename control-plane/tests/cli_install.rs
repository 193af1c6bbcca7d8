//! `curl -fsSL …/api/download/install.sh?init_url=… | bash` against a real control plane
//! serving `--cli-dir`: in a temporary HOME it downloads the binary for this machine, checks
//! its SHA-256, installs it under `~/.config/podgate/bin`, adds it to PATH once (a second run
//! adds nothing) and runs `--init` in the working directory. A tampered binary (5), no binary
//! for the platform (3), and a failed download (4) are refused before anything is installed
//! or run; a revoked link installs the binary and fails `--init` (6). A relative
//! `XDG_CONFIG_HOME` is ignored, and a start-up file it cannot write is named. See
//! `docs/cli.md` for the installer's exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod xds_support;

use std::path::{Path, PathBuf};

use reqwest::header::COOKIE;
use serde_json::{json, Value};
use xds_support::*;

const MARK: &str = "# podgate-cli (added by the podgate installer)";

fn marks(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .matches(MARK)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installer_installs_checks_and_initialises_once() {
    let cli_dir = tempfile::tempdir().unwrap();
    let served = cli_dir.path().join(format!("podgate-cli-{}", platform()));
    std::fs::copy(cli_binary(), &served).unwrap();
    let cp = ControlPlane::start(
        free_port(),
        &["--cli-dir", cli_dir.path().to_str().unwrap()],
    )
    .await;
    cp.create_user(USER).await;
    let session = cp.session(USER).await;
    let created: Value = client()
        .post(format!("http://{}/api/proxy-tokens", cp.http))
        .header(COOKIE, &session)
        .json(&json!({"name": "installer test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let init_url = created["init_url"].as_str().unwrap();
    let url = format!(
        "http://{}/api/download/install.sh?init_url={}",
        cp.http,
        url::form_urlencoded::byte_serialize(init_url.as_bytes()).collect::<String>()
    );

    // The script names the binary's hash and quotes the link.
    let script = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&served).unwrap()))
    };
    assert!(script.contains(&format!("SHA256={hash}")), "{script}");
    assert!(
        script.contains(&format!("INIT_URL='{init_url}'")),
        "{script}"
    );

    let home = tempfile::tempdir().unwrap();
    let project = home.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(home.path().join(".bashrc"), "# mine\n").unwrap();
    let path = "/usr/local/bin:/usr/bin:/bin";
    let installed: PathBuf = home.path().join(".config/podgate/bin/podgate-cli");

    let (code, out) = install(&url, home.path(), &project, path).await;
    assert_eq!(code, 0, "{out}\n{}", cp.log());
    assert!(out.contains("signed in as alice"), "{out}");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&served).unwrap()
    );
    let config: Value = serde_json::from_slice(
        &std::fs::read(home.path().join(".config/podgate/config.json")).unwrap(),
    )
    .unwrap();
    let key = project.to_string_lossy().into_owned();
    assert_eq!(config["sessions"][&key]["user_id"], "alice", "{config}");
    assert_eq!(marks(&home.path().join(".bashrc")), 1);
    assert_eq!(marks(&home.path().join(".profile")), 1);
    assert!(!home.path().join(".zshrc").exists());
    assert!(
        out.contains("open a new shell for PATH, or run: export PATH="),
        "{out}"
    );
    let profile = std::fs::read_to_string(home.path().join(".profile")).unwrap();
    assert!(
        profile.contains(&format!(
            "export PATH=\"{}:$PATH\"",
            installed.parent().unwrap().display()
        )),
        "{profile}"
    );

    // Twice: still one PATH line per file.
    let (code, out) = install(&url, home.path(), &project, path).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(marks(&home.path().join(".bashrc")), 1);
    assert_eq!(marks(&home.path().join(".profile")), 1);

    // A relative XDG_CONFIG_HOME is not one (as podgate-cli reads it): the binary goes under
    // ~/.config, never under the working directory, and PATH gets only an absolute directory.
    // A zsh user without a ~/.zshrc gets one (zsh never reads ~/.profile).
    let home2 = tempfile::tempdir().unwrap();
    let project2 = home2.path().join("project");
    std::fs::create_dir(&project2).unwrap();
    let (code, out) = install_with(
        &url,
        home2.path(),
        &project2,
        path,
        &[("XDG_CONFIG_HOME", "cfg"), ("SHELL", "/usr/bin/zsh")],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(marks(&home2.path().join(".zshrc")), 1, "{out}");
    assert!(home2
        .path()
        .join(".config/podgate/bin/podgate-cli")
        .exists());
    assert!(!project2.join("cfg").exists());
    let profile = std::fs::read_to_string(home2.path().join(".profile")).unwrap();
    let exported: Vec<&str> = profile
        .lines()
        .filter_map(|l| l.strip_prefix("export PATH=\""))
        .collect();
    assert_eq!(exported.len(), 1, "{profile}");
    assert!(exported.iter().all(|p| p.starts_with('/')), "{profile}");
    // A start-up file that cannot be written (here a directory; the tests may run as root, for
    // whom a read-only file is writable) is reported, and the sign-in still happens.
    let home3 = tempfile::tempdir().unwrap();
    let project3 = home3.path().join("project");
    std::fs::create_dir(&project3).unwrap();
    std::fs::create_dir(home3.path().join(".bashrc")).unwrap();
    let (code, out) = install(&url, home3.path(), &project3, path).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(".bashrc: add"), "{out}");
    assert!(out.contains("signed in as alice"), "{out}");
    assert_eq!(marks(&home3.path().join(".profile")), 1);

    // A binary changed after the control plane hashed it: refused, nothing replaced or run.
    let good = std::fs::read(&served).unwrap();
    std::fs::write(&served, b"#!/bin/sh\ntouch \"$HOME/pwned\"\n").unwrap();
    let (code, out) = install(&url, home.path(), &project, path).await;
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("refusing to install"), "{out}");
    assert_eq!(std::fs::read(&installed).unwrap(), good);
    assert!(!home.path().join("pwned").exists());
    let leftovers: Vec<_> = std::fs::read_dir(installed.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // The download fails: refused.
    std::fs::remove_file(&served).unwrap();
    let (code, out) = install(&url, home.path(), &project, path).await;
    assert_eq!(code, 4, "{out}");

    // A platform the control plane has no binary for: refused.
    let fake = home.path().join("fakebin");
    std::fs::create_dir(&fake).unwrap();
    let uname = fake.join("uname");
    std::fs::write(
        &uname,
        "#!/bin/sh\ncase \"$1\" in -s) echo Plan9 ;; *) echo mips ;; esac\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&uname, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(&served, &good).unwrap();
    let (code, out) = install(
        &url,
        home.path(),
        &project,
        &format!("{}:{path}", fake.display()),
    )
    .await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("no podgate-cli for plan9-mips"), "{out}");

    // The link's token revoked: the binary is installed, `--init` is refused, and the installer
    // says so with its own code (the CLI's 4 would read as "the download failed").
    let revoked = client()
        .delete(format!(
            "http://{}/api/proxy-tokens/{}",
            cp.http,
            created["id"].as_str().unwrap()
        ))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 200);
    let home4 = tempfile::tempdir().unwrap();
    let project4 = home4.path().join("project");
    std::fs::create_dir(&project4).unwrap();
    let (code, out) = install(&url, home4.path(), &project4, path).await;
    assert_eq!(code, 6, "{out}");
    assert!(out.contains("podgate-cli --init failed (exit 4"), "{out}");
    assert!(home4
        .path()
        .join(".config/podgate/bin/podgate-cli")
        .exists());

    // Anything but this control plane's setup link in the query never becomes a script: the
    // installer says why and exits 2, nothing installed, nothing of the input run.
    for evil in [
        format!("{init_url}';touch $HOME/pwned;'"),
        "http://evil.example/p/x".to_owned(),
    ] {
        let evil_url = format!(
            "http://{}/api/download/install.sh?init_url={}",
            cp.http,
            url::form_urlencoded::byte_serialize(evil.as_bytes()).collect::<String>()
        );
        let script = client()
            .get(&evil_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !script.contains("pwned") && !script.contains("evil"),
            "{script}"
        );
        let home5 = tempfile::tempdir().unwrap();
        let project5 = home5.path().join("project");
        std::fs::create_dir_all(&project5).unwrap();
        let (code, out) = install(&evil_url, home5.path(), &project5, path).await;
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("nothing installed"), "{out}");
        assert!(!home5.path().join("pwned").exists());
        assert!(!home5.path().join(".config/podgate").exists());
    }
    // Only the binaries' names are downloads.
    for name in [
        "podgate-cli",
        "..%2F..%2Fetc%2Fpasswd",
        "podgate-cli-plan9-mips",
    ] {
        let resp = client()
            .get(format!("http://{}/api/download/{name}", cp.http))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{name}");
    }
}
