//! The `podgate` binary: configuration errors, `migrate`, `keys rotate|list`, and `serve` with
//! graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_podgate");

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
    let out = podgate(&db).args(["keys", "rotate"]).output().unwrap();
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
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
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
}

fn send_sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}
