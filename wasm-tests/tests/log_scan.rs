//! No token, ticket, API token or cookie value in any log Envoy or the control plane wrote
//! during the tests. `./just test` runs this last (it is `#[ignore]`d otherwise): the test kit
//! copies every work directory's `*.log` (Envoy's access and server log, the control plane's
//! log) to `$PODGATE_TEST_LOG_ARCHIVE` when it removes the directory, and this reads them all.
//!
//! What counts as a credential in a line: one of our tokens in any form
//! (`token::mentions_ours`: a JWS naming a podgate `typ` or key-kind `kid`, a `pg_` API token),
//! any compact JWS (`eyJ…` `.` `eyJ…` `.` a signature: an identity provider's ID token too),
//! and a value after one of our cookie names (`podgate_cap`, `podgate_session`,
//! `podgate_signin` and each sign-in's `podgate_signin-<tag>`, with or without `__Host-`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use podgate_protocol::token;

const COOKIE_NAMES: [&str; 3] = ["podgate_cap", "podgate_session", "podgate_signin"];

fn segment_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-' || **b == b'_')
        .count()
}

/// A compact JWS anywhere in `line`: two base64url segments starting `eyJ` (JSON objects) and a
/// signature of at least 16 characters, dot-separated.
fn holds_jws(line: &str) -> bool {
    let bytes = line.as_bytes();
    (0..bytes.len()).any(|at| {
        let rest = &bytes[at..];
        if !rest.starts_with(b"eyJ") || (at > 0 && segment_len(&bytes[at - 1..at]) == 1) {
            return false;
        }
        let header = segment_len(rest);
        let Some(after) = rest.get(header..).and_then(|r| r.strip_prefix(b".")) else {
            return false;
        };
        if !after.starts_with(b"eyJ") {
            return false;
        }
        let claims = segment_len(after);
        after
            .get(claims..)
            .and_then(|r| r.strip_prefix(b"."))
            .is_some_and(|sig| segment_len(sig) >= 16)
    })
}

/// A cookie of ours (a sign-in's own, `podgate_signin-<tag>`, too) with a value of at least 16
/// characters.
fn holds_cookie_value(line: &str) -> bool {
    COOKIE_NAMES.iter().any(|name| {
        line.match_indices(name).any(|(at, _)| {
            let mut rest = &line.as_bytes()[at + name.len()..];
            if let Some(tagged) = rest.strip_prefix(b"-") {
                rest = &tagged[tagged.iter().take_while(|b| b.is_ascii_hexdigit()).count()..];
            }
            rest.strip_prefix(b"=")
                .is_some_and(|value| segment_len(value) >= 16)
        })
    })
}

/// Why `line` leaks a credential, if it does.
fn leak(line: &str) -> Option<&'static str> {
    if token::mentions_ours(line) {
        Some("one of podgate's tokens")
    } else if holds_jws(line) {
        Some("a JWT")
    } else if holds_cookie_value(line) {
        Some("a cookie value")
    } else {
        None
    }
}

#[test]
fn the_scan_finds_every_credential_shape() {
    let cap = "eyJhbGciOiJFZERTQSIsInR5cCI6InBvZGdhdGUtY2FwK2p3dCIsImtpZCI6ImNhcC0xIn0.eyJzdWIiOiJ1In0.c2lnbmF0dXJlc2lnbmF0dXJlc2ln";
    let foreign = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJlc2lnbmF0dXJlc2ln";
    let api = "pg_0123456789abcdef01234567_abcdefghijklmnopqrstuvwxyz234567";
    for (line, why) in [
        (format!("GET /x?t={cap} 200"), "one of podgate's tokens"),
        (format!("authorization: Bearer {foreign}"), "a JWT"),
        (format!("token={api}"), "one of podgate's tokens"),
        (
            "cookie: podgate_session=abcdefghijklmnopqrstuvwxyz".into(),
            "a cookie value",
        ),
        (
            "set-cookie: __Host-podgate_cap=abcdefghijklmnop1234".into(),
            "a cookie value",
        ),
        (
            "set-cookie: podgate_signin-0123456789ab=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
                .into(),
            "a cookie value",
        ),
    ] {
        assert_eq!(leak(&line), Some(why), "{line}");
    }
    for clean in [
        "[2026-12-05] \"GET /a HTTP/1.1\" 401 - user=- pod=- port=- decision=deny reason=no_capability",
        "cookie podgate_cap removed",
        "kid=cap-0123 typ podgate-cap+jwt",
    ] {
        assert_eq!(leak(clean), None, "{clean}");
    }
}

#[test]
#[ignore = "run by `./just test` after every other test, on the logs they left"]
fn no_credential_in_any_log_the_tests_left() {
    let dir = PathBuf::from(
        std::env::var_os(podgate_testkit::process::LOG_ARCHIVE_VAR)
            .expect("PODGATE_TEST_LOG_ARCHIVE names the directory of the tests' logs"),
    );
    let mut files = 0;
    let mut lines = 0;
    let mut leaks = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        for (n, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            lines += 1;
            if let Some(why) = leak(line) {
                leaks.push(format!("{}:{}: {why}: {line:.300}", path.display(), n + 1));
            }
        }
    }
    eprintln!("scanned {files} log files, {lines} lines");
    assert!(files > 0, "no log in {}", dir.display());
    assert!(
        leaks.is_empty(),
        "credentials in the logs:\n{}",
        leaks.join("\n")
    );
}
