//! Writes the committed seed corpora, `fuzz/corpus/<target>/<name>`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`. Deterministic (fixed keys,
//! deterministic signatures), so rerunning rewrites the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use podgate_fuzz::{minted_tokens, NOW};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A gate input: flags, selector, header lines.
fn gate(flags: u8, select: u8, lines: &[&str]) -> Vec<u8> {
    let mut out = vec![flags, select];
    out.extend_from_slice(lines.join("\n").as_bytes());
    out
}

fn main() {
    for (name, host) in [
        ("public", "localhost-8726-pod-myslug.example.dev"),
        ("public-port", "localhost-8726-pod-myslug.example.dev:10000"),
        ("public-dot-port", "localhost-8726-pod-x.example.dev.:443"),
        ("public-hyphens", "localhost-65535-pod-my-pod-2.example.dev"),
        ("upstream", "localhost-8726.pod-myslug.example.dev"),
        ("one-label-domain", "localhost-3000-pod-0.localhost"),
        ("pod-first-two-labels", "my-pod.p8080.example.dev"),
        ("pod-first", "a-b--p80.a.b.c"),
        ("bad-leading-zero", "localhost-08726-pod-x.example.dev"),
        ("bad-suffix", "localhost-8726-pod-x.example.dev.evil.com"),
        (
            "template",
            "{pod}-x{port}.{domain}\nexample.dev\nmy-pod-x443.example.dev:8443",
        ),
    ] {
        write("host", name, host.as_bytes());
    }

    let tokens = minted_tokens();
    let ed = &tokens[0];
    for (name, header) in [
        ("ours-middle", format!("a=1; podgate_cap={ed}; b=2")),
        (
            "ours-host-prefixed",
            format!("__Host-podgate_cap={ed}; theme=dark"),
        ),
        (
            "ours-quoted-twice",
            format!("podgate_cap=\"{ed}\";podgate_cap=x"),
        ),
        (
            "lookalikes",
            "podgate_cap2=keep; xpodgate_cap=no; podgate_cap =t; a=podgate_cap=t".into(),
        ),
        ("flags-and-spaces", " flag ;\tpodgate_cap=t;;a=1 ; b".into()),
        (
            "browser",
            "_ga=GA1.2.3.4; sessionid=abc123; csrftoken=Zz9; __Host-podgate_cap=eyJ.e30.sig".into(),
        ),
    ] {
        write("cookie", name, header.as_bytes());
    }

    for (i, t) in tokens.iter().enumerate() {
        write("token", &format!("verify-{i}"), format!("0{t}").as_bytes());
    }
    let mut clocked = b"1".to_vec();
    clocked.extend_from_slice(&(NOW + 600).to_le_bytes());
    clocked.extend_from_slice(tokens[1].as_bytes());
    write("token", "clocked-es256", &clocked);
    // Structured: token 0 unchanged; token 2 with a flipped signature byte and a swapped
    // segment; token 4 (a ticket) with a donor claims segment.
    write("token", "mutate-none", b"2\x00");
    write(
        "token",
        "mutate-flip",
        b"2\x02\x00\xf0\x00\x03\x04\x00\x00\x01",
    );
    write("token", "mutate-donor", b"2\x04\x05\x00\x00\x01");
    write(
        "token",
        "keyset",
        br#"3{"keys":[{"kty":"OKP","kid":"cap-x","alg":"EdDSA","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},{"kty":"EC","kid":"cap-y","alg":"ES256","crv":"P-256","x":"AAAA","y":"AAAA"},{"kty":"oct","kid":"cap-z","alg":"HS256","k":"c2hvcnQ"}]}"#,
    );

    for (name, next) in [
        ("root", "/"),
        ("query-fragment", "/a/b?c=d&e=%2F#frag"),
        ("inner-double-slash", "/a//b"),
        ("next-in-query", "/?next=//x"),
        ("network-path", "//evil.com"),
        ("backslash", "/\\evil.com"),
        ("scheme", "https:evil.com"),
        ("encoded-slash", "/%2f%2fevil.com"),
        ("header-injection", "/a%0d%0aSet-Cookie:x"),
        ("crlf", "/ok\r\nSet-Cookie: a=b"),
        ("ideographic-space", "/\u{3000}evil"),
        ("bom", "\u{FEFF}/x"),
        ("dot-double-slash", "/.//evil.com"),
        ("dotdot-double-slash", "/a/..//evil.com"),
        ("encoded-dotdot", "/%2e%2e//evil"),
        ("dot-encoded-slash", "/./%2Fevil.com"),
        ("dotdot-param", "/..;/evil.com"),
        ("double-encoded", "/%252e%252e//evil"),
        ("ticket-param", "/app?a=1&TICKET=t;b=2#f"),
        ("reserved-upper", "/.PODGATE/callback?ticket=t"),
        ("reserved-encoded", "/x/..;/%2Epodgate%2Fcallback"),
        ("reserved-trailing", "/.podgate.%20/x"),
        ("reserved-backslash", "/a\\..\\.podgate"),
    ] {
        write("redirect", name, next.as_bytes());
    }

    const AUTHORITY: &str = ":authority:localhost-8726-pod-alpha.example.dev";
    let page = [
        AUTHORITY,
        ":path:/index.html",
        ":method:GET",
        "accept:text/html",
    ];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Flags: bits 0-2 token kind, bits 3-4 where, bit 5 https.
        ("no-token-page-load", gate(0, 0, &page)),
        ("token-header", gate(1, 0, &page)),
        ("bearer-es256", gate(7 | 1 << 3, 1, &page)),
        (
            "cookie-https-with-others",
            gate(
                1 | 2 << 3 | 0x20,
                4,
                &[
                    AUTHORITY,
                    ":path:/",
                    ":method:GET",
                    "cookie:a=1",
                    "cookie:b=2",
                    "x-podgate-user:admin",
                    "x-podgate-cluster:pod_beta",
                ],
            ),
        ),
        ("other-pod", gate(2, 0, &page)),
        ("other-port", gate(3 | 3 << 3, 0, &page)),
        ("revoked", gate(4, 0, &page)),
        ("expired", gate(5 | 2 << 3, 0, &page)),
        // Expired, with a session id, in a cookie, https (which renews lapsed capabilities):
        // a fetch and a page load, each held on a renew call.
        (
            "lapsed-session-cookie",
            gate(
                5 | 2 << 3 | 0x20,
                1,
                &[
                    AUTHORITY,
                    ":path:/api/data",
                    ":method:GET",
                    "cookie:theme=dark",
                ],
            ),
        ),
        ("lapsed-session-cookie-page-load", gate(5 | 2 << 3 | 0x20, 1, &page)),
        ("mismatched-pod-claim", gate(1, 0x80, &page)),
        (
            "websocket-cookie-cross-origin",
            gate(
                1 | 2 << 3 | 0x20,
                0,
                &[
                    AUTHORITY,
                    ":path:/ws",
                    ":method:GET",
                    "upgrade:websocket",
                    "origin:https://evil.example",
                ],
            ),
        ),
        (
            "websocket-cookie-own-origin",
            gate(
                1 | 2 << 3 | 0x20,
                0,
                &[
                    AUTHORITY,
                    ":path:/ws",
                    ":method:GET",
                    "upgrade:websocket",
                    "origin:https://localhost-8726-pod-alpha.example.dev",
                ],
            ),
        ),
        (
            "callback",
            gate(
                0,
                0,
                &[
                    AUTHORITY,
                    ":path:/.podgate/callback?ticket=x&next=/",
                    ":method:GET",
                    "x-podgate-cluster:pod_alpha",
                ],
            ),
        ),
        (
            "stopped-pod",
            gate(
                1,
                0,
                &[
                    ":authority:localhost-80-pod-sleepy.example.dev:443",
                    ":path:/",
                    ":method:POST",
                ],
            ),
        ),
        (
            "unknown-pod",
            gate(
                1 | 1 << 3,
                2,
                &[
                    ":authority:localhost-80-pod-nobody.example.dev",
                    ":path:/api",
                    ":method:GET",
                    "sec-fetch-mode:navigate",
                ],
            ),
        ),
        (
            "bad-host",
            gate(1, 0, &[":authority:evil.com", ":path:/", ":method:GET"]),
        ),
        ("non-utf8-cookie", {
            let mut v = gate(0, 0, &[AUTHORITY, ":path:/", ":method:GET", "cookie:a="]);
            v.extend_from_slice(b"\xff\xfe");
            v
        }),
        (
            "foreign-bearer",
            gate(
                0,
                0,
                &[
                    AUTHORITY,
                    ":path:/",
                    ":method:GET",
                    "authorization:Bearer not-ours",
                    "podgate-token:  ",
                ],
            ),
        ),
    ];
    for (name, bytes) in cases {
        write("gate", name, &bytes);
        write("filter_wasm", name, &bytes);
    }

    for (name, bytes) in podgate_fuzz::credentials_seeds() {
        write("credentials", &name, &bytes);
    }
}
