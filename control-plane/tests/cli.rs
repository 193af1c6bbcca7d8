//! The `podgate` binary: configuration errors, `migrate`, `keys rotate|list|rewrap|gen-kek`, and
//! `serve` with graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_podgate");
/// A key-encryption key for commands that write signing keys (32 bytes, base64).
const KEK: &str = "q2n8YJk0m4x7c1VbQe9WfT3sLr6uHd5ZpA0gNi2oKjM=";
const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn podgate(db: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PODGATE_DATABASE_URL", db)
        .env("RUST_LOG", "info");
    c
}

#[test]
fn missing_admin_token_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("p.db").display());
    let out = podgate(&db).args(["serve", "--dev-mode"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PODGATE_ADMIN_TOKEN") && err.contains("openssl rand"),
        "{err}"
    );
    let out = podgate(&db)
        .args(["serve", "--dev-mode", "--listen", "nowhere"])
        .env("PODGATE_ADMIN_TOKEN", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

#[test]
fn migrate_and_rotate_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("p.db").display());
    let out = podgate(&db).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("p.db").exists());
    let out = podgate(&db)
        .args(["keys", "rotate"])
        .env("PODGATE_KEY_ENCRYPTION_KEY", KEK)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("tkt-") && stdout.contains("cap-"),
        "{stdout}"
    );
    let out = podgate(&db)
        .args(["keys", "list", "--signing-alg", "es256"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert_eq!(list.lines().count(), 4, "{list}");
    assert_eq!(list.matches("active").count(), 2, "{list}");
    assert_eq!(list.matches("verifying until").count(), 2, "{list}");
    assert!(!list.contains("\"d\""));
}

#[test]
fn serve_answers_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("p.db").display());
    let port = podgate_testkit::free_port().unwrap();
    let mut child = podgate(&db)
        .args([
            "serve",
            "--dev-mode",
            "--log-format",
            "json",
            "--xds-listen",
            "off",
        ])
        .env("PODGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("PODGATE_ADMIN_TOKEN", "0123456789abcdef0123456789abcdef")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            break body;
        }
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    // SIGTERM: finishes and exits 0.
    send_sigterm(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("DEV MODE IS ON"), "{logs}");
    assert!(logs.contains("\"level\":\"WARN\""), "JSON logs: {logs}");
    assert!(logs.contains("podgate stopped"), "{logs}");
    // On SQLite there is no other control plane to count: no heartbeat, and no error about one.
    assert!(!logs.contains("replica heartbeat"), "{logs}");
}

/// Outside dev mode, `serve` and `keys rotate` without a key-encryption key stop with a message
/// that says how to make one and where to put it; nothing is written.
#[test]
fn no_key_encryption_key_outside_dev_mode_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("p.db").display());
    let out = podgate(&db)
        .args(["serve", "--xds-listen", "off"])
        .args(["--login-url", "https://app.example.dev/login"])
        .env("PODGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no key-encryption key")
            && err.contains("PODGATE_KEY_ENCRYPTION_KEY_FILE")
            && err.contains("podgate keys gen-kek")
            && err.contains("PODGATE_DEV_MODE=true"),
        "{err}"
    );
    assert!(
        !dir.path().join("p.db").exists(),
        "serve touched the database"
    );
    let out = podgate(&db).args(["keys", "rotate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no key-encryption key") && err.contains("PODGATE_KEY_ENCRYPTION_KEY_FILE"),
        "{err}"
    );
    // Rewrapping needs a key to rewrap under, in dev mode too.
    let out = podgate(&db)
        .args(["keys", "rewrap", "--dev-mode"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no key-encryption key") && err.contains("gen-kek"),
        "{err}"
    );
    let out = podgate(&db).args(["keys", "list"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "keys were written"
    );
    // A file that is not a key is refused with the same advice.
    std::fs::write(dir.path().join("kek"), "changeme\n").unwrap();
    let out = podgate(&db)
        .args(["serve", "--xds-listen", "off", "--dev-mode"])
        .arg("--key-encryption-key-file")
        .arg(dir.path().join("kek"))
        .env("PODGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kek") && err.contains("gen-kek"), "{err}");
    assert!(
        !err.contains("changeme"),
        "the file's content is echoed: {err}"
    );
}

/// The id `podgate keys gen-kek FILE` reports for the key it wrote.
fn gen_kek(path: &std::path::Path) -> String {
    let id = podgate_testkit::podgate::gen_kek(std::path::Path::new(BIN), path)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(id.len(), 16, "{id}");
    id
}

/// The operator's whole procedure through the binary: make a key, rotate signing keys under it,
/// a wrong key stops `serve` naming the key id it needs, rotate the operator key (current +
/// previous), rewrap, and serve with the new key alone.
#[test]
fn operator_key_procedure_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("p.db").display());
    let (old, new) = (dir.path().join("kek-old"), dir.path().join("kek-new"));
    let old_id = gen_kek(&old);
    let text = std::fs::read_to_string(&old).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&old).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // Never overwritten.
    let out = Command::new(BIN)
        .env_clear()
        .args(["keys", "gen-kek"])
        .arg(&old)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwritten"));
    assert_eq!(std::fs::read_to_string(&old).unwrap(), text);
    // Without a file: the key on stdout, its id on stderr.
    let out = Command::new(BIN)
        .env_clear()
        .args(["keys", "gen-kek"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().len(), 44);
    assert!(String::from_utf8_lossy(&out.stderr).contains("key-encryption key id"));

    let keys = |args: &[&str], files: &[(&str, &std::path::Path)]| {
        let mut c = podgate(&db);
        c.arg("keys").args(args);
        for (env, path) in files {
            c.env(env, path);
        }
        c.output().unwrap()
    };
    let current = "PODGATE_KEY_ENCRYPTION_KEY_FILE";
    let previous = "PODGATE_PREVIOUS_KEY_ENCRYPTION_KEY_FILE";
    let out = keys(&["rotate"], &[(current, &old)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&keys(&["list"], &[]).stdout).into_owned();
    assert_eq!(list.lines().count(), 4, "{list}");
    assert_eq!(
        list.matches(&format!("encrypted with {old_id}")).count(),
        4,
        "{list}"
    );

    // A wrong key: serve stops, naming a stored key and the key-encryption key it needs.
    let new_id = gen_kek(&new);
    let out = podgate(&db)
        .args(["serve", "--xds-listen", "off"])
        .args(["--login-url", "https://app.example.dev/login"])
        .env("PODGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env(current, &new)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&old_id) && err.contains(&new_id) && err.contains("stored key "),
        "{err}"
    );
    // So does `keys rotate`, which writes nothing.
    let out = keys(&["rotate"], &[(current, &new)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&old_id));
    assert_eq!(String::from_utf8_lossy(&keys(&["list"], &[]).stdout), list);

    // Rotation of the operator key: new current, old previous; then rewrap.
    let out = keys(&["rotate"], &[(current, &new), (previous, &old)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = keys(&["rewrap"], &[(current, &new), (previous, &old)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("re-encrypted 4") && said.contains(&new_id),
        "{said}"
    );
    let list = String::from_utf8_lossy(&keys(&["list"], &[]).stdout).into_owned();
    assert!(!list.contains(&old_id), "{list}");
    assert_eq!(
        list.matches(&format!("encrypted with {new_id}")).count(),
        6,
        "{list}"
    );

    // The old key is no longer needed: serve with the new one alone.
    let port = podgate_testkit::free_port().unwrap();
    let mut child = podgate(&db)
        .args(["serve", "--xds-listen", "off"])
        .args(["--login-url", "https://app.example.dev/login"])
        .env("PODGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("PODGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env(current, &new)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = wait_ready(port, &mut child);
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    send_sigterm(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(
        logs.contains(&new_id) && !logs.contains("UNENCRYPTED"),
        "{logs}"
    );
}

/// Polls `/readyz` until the server answers; fails if it exits first.
fn wait_ready(port: u16, child: &mut std::process::Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            return body;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("podgate exited with {status}");
        }
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn send_sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}
