//! The checks behind podgate's `cargo fuzz` targets, one function per target.
//!
//! Each function takes the raw fuzz input, runs the parser under test and asserts its
//! invariants; a panic is a finding. The fuzz targets in `fuzz_targets/` are one-line wrappers
//! around these, and `protocol/tests/fuzz_regressions.rs` includes this very file (with
//! `#[path]`) to replay every committed input through the same code in plain `cargo test`. So
//! this file may only use `std`, `podgate_protocol` and `serde_json`.
//!
//! Input formats (seeds in `fuzz/corpus/<target>/`):
//! - `host`: the bytes are an authority; if they are `template\ndomain\nauthority`, that
//!   template is compiled and tried too.
//! - `cookie`, `redirect`: the bytes are the header value / `next` (lossy UTF-8); for
//!   `redirect` they are also the request path `path::is_reserved` classifies (raw bytes).
//! - `token`: first byte picks the mode (`'0'`: verify the rest at a fixed time, `'1'`: 8 bytes
//!   of clock then the token, `'2'`: mutate a minted token, `'3'`: the rest is a JWKS).
//! - `gate` and `filter_wasm`: a flags byte, a selector byte, then header lines `name:value`
//!   separated by `\n` (see [`gate_case`]).
//! - `response`: a flags byte (scheme, authority), an origin selector byte, then the pod's
//!   response header lines `name:value` separated by `\n` (see [`response`]).
//! - `credentials`: a mode byte, then the bytes (lossy UTF-8) as an `Authorization` value
//!   (`'a'`), as a `Cookie` header around the real capability (`'c'`), or as words to classify
//!   and precheck (anything else); see [`credentials`].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::OnceLock;

use podgate_protocol::config::{
    CompiledConfig, FilterConfig, PodEntry, PodStatus, CLUSTER_HEADER, EMAIL_HEADER, HEADER_PREFIX,
    UPSTREAM_HEADER, USER_HEADER,
};
use podgate_protocol::cookie;
use podgate_protocol::cors::{self, Preflight};
use podgate_protocol::gate::{self, Decision, Gate, HeaderEdit, Outcome, Request, VerifiedCache};
use podgate_protocol::host::{self, HostTemplate, PodAddr};
use podgate_protocol::redirect;
use podgate_protocol::renewal::Renewal;
use podgate_protocol::reply::Denial;
use podgate_protocol::token::{self, KeySet, PodClaims, SigningKey, TokenKind, Verifier};

/// Every fuzz target; each has a seed directory `fuzz/corpus/<target>/`.
pub const TARGETS: [&str; 8] = [
    "host",
    "cookie",
    "token",
    "redirect",
    "gate",
    "response",
    "filter_wasm",
    "credentials",
];

/// The clock every check runs at (unix seconds).
pub const NOW: i64 = 1_800_000_000;
/// The issuer of every token the fuzzer mints.
pub const ISS: &str = "https://podgate.example.dev";

/// Runs the native check of `target` on one input. `filter_wasm` inputs replay through the
/// native gate (same decoding, same invariants; the wasm VM itself runs only under libFuzzer).
/// Returns `false` for an unknown target.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "host" => host(data),
        "cookie" => cookie(data),
        "token" => token(data),
        "redirect" => redirect(data),
        "response" => response(data),
        "credentials" => credentials(data),
        "gate" | "filter_wasm" => {
            gate(data);
        }
        _ => return false,
    }
    true
}

fn has_crlf_nul(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0))
}

// ---- host ---------------------------------------------------------------------------------

/// Templates every host input is parsed with: both defaults, a one-label domain, and two
/// pod-first templates (one spanning two labels).
const HOST_TEMPLATES: [(&str, &str); 5] = [
    (host::DEFAULT_PUBLIC_TEMPLATE, "example.dev"),
    (host::DEFAULT_UPSTREAM_TEMPLATE, "example.dev"),
    (host::DEFAULT_PUBLIC_TEMPLATE, "localhost"),
    ("{pod}.p{port}.{domain}", "example.dev"),
    ("{pod}--p{port}.{domain}", "a.b.c"),
];

fn host_templates() -> &'static [HostTemplate] {
    static TEMPLATES: OnceLock<Vec<HostTemplate>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        HOST_TEMPLATES
            .iter()
            .map(|(t, d)| HostTemplate::new(t, d).expect("a fixed fuzz template compiles"))
            .collect()
    })
}

/// `host`: arbitrary bytes as an authority.
pub fn host(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = host::normalize_authority(text);
    let _ = host::parse_port(text);
    let _ = host::validate_slug(text);
    for template in host_templates() {
        check_host(template, text, true);
    }
    let mut parts = text.splitn(3, '\n');
    if let (Some(template), Some(domain), Some(authority)) =
        (parts.next(), parts.next(), parts.next())
    {
        if let Ok(t) = HostTemplate::new(template, domain) {
            // Known gap (fuzz/regressions/host/template-with-leading-dot-renders-an-empty-label):
            // `HostTemplate::new` accepts literals that make empty DNS labels (`.{pod}...`,
            // `..`). Operator configuration, not request bytes: the label check is skipped for
            // such templates so fuzzing goes on; `protocol/tests/fuzz_regressions.rs` tracks it.
            check_host(&t, authority, !renders_empty_label(&t));
            let _ = t.check_slug(authority);
        }
    }
}

/// The normalisation the grammar promises, computed independently: one `:port`, then one
/// trailing dot.
fn strip_port_and_dot(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// Whether the template's own literals make an empty label (whatever the pod and port).
pub fn renders_empty_label(template: &HostTemplate) -> bool {
    let sample = template.render(&PodAddr {
        pod: "a".into(),
        port: 1,
    });
    sample.split('.').any(str::is_empty)
}

fn check_host(template: &HostTemplate, authority: &str, check_labels: bool) {
    let Ok(addr) = template.parse(authority) else {
        return;
    };
    let normalized = strip_port_and_dot(authority);
    assert_eq!(
        host::normalize_authority(authority),
        Ok(normalized),
        "{template}: parse accepted {authority:?}"
    );
    assert_eq!(
        template.render(&addr),
        normalized,
        "{template}: render(parse({authority:?})) is not the normalised input"
    );
    assert_eq!(
        host::validate_slug(&addr.pod),
        Ok(()),
        "{template}: {addr:?}"
    );
    assert!(addr.port >= 1, "{template}: {addr:?}");
    assert_eq!(
        template.parse(normalized).as_ref(),
        Ok(&addr),
        "{template}: parse is not idempotent on {authority:?}"
    );
    assert!(
        !check_labels
            || normalized
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63),
        "{template}: accepted a bad DNS label in {authority:?}"
    );
    assert!(
        normalized
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
        "{template}: accepted {authority:?}"
    );
}

// ---- cookie -------------------------------------------------------------------------------

const COOKIE_NAMES: [&str; 3] = ["podgate_cap", "__Host-podgate_cap", "a"];

/// `cookie`: arbitrary bytes as a `Cookie` header value.
pub fn cookie(data: &[u8]) {
    let header = String::from_utf8_lossy(data);
    for name in COOKIE_NAMES {
        check_cookie(&header, name);
    }
}

/// A pair's name as the header grammar reads it: text before the first `=`, trimmed; a pair
/// without `=` has no name.
fn pair_name(pair: &str) -> &str {
    pair.split_once('=').map_or("", |(n, _)| n.trim())
}

fn check_cookie(header: &str, name: &str) {
    let pairs: Vec<&str> = header
        .split(';')
        .map(|p| p.trim_matches(|c| c == ' ' || c == '\t'))
        .filter(|p| !p.is_empty())
        .collect();
    let ours = pairs.iter().filter(|p| pair_name(p) == name).count();
    let others: Vec<&str> = pairs
        .iter()
        .copied()
        .filter(|p| pair_name(p) != name)
        .collect();

    let found: Vec<&str> = cookie::find_all(header, name).collect();
    assert_eq!(found.len(), ours, "find_all({header:?}, {name:?})");
    assert_eq!(
        cookie::has(header, name),
        ours > 0,
        "has({header:?}, {name:?})"
    );
    if !cookie::mentions(header, name) {
        assert!(
            found.is_empty(),
            "found {name:?} in {header:?} without a mention"
        );
    }
    for value in &found {
        assert!(!value.contains(';'), "{value:?}");
    }

    match cookie::strip(header, name) {
        None => assert!(
            others.is_empty(),
            "strip({header:?}, {name:?}) dropped {others:?}"
        ),
        Some(out) => {
            assert!(!out.is_empty());
            let raw: Vec<&str> = out.split(';').collect();
            let kept: Vec<&str> = raw
                .iter()
                .map(|p| p.trim_matches(|c| c == ' ' || c == '\t'))
                .filter(|p| !p.is_empty())
                .collect();
            assert_eq!(
                kept, others,
                "strip({header:?}, {name:?}) must keep every other pair, in order"
            );
            // Byte for byte: each kept pair with the spaces the client put around it (the
            // first's leading and the last's trailing ones aside), and no empty pair.
            let parts: HashSet<&str> = header.split(';').collect();
            for (i, part) in raw.iter().enumerate() {
                assert!(
                    !part.trim_matches(|c| c == ' ' || c == '\t').is_empty(),
                    "an empty pair in {out:?}"
                );
                assert!(
                    (i == 0 || i + 1 == raw.len()) || parts.contains(part),
                    "{part:?} is not the client's bytes ({header:?} -> {out:?})"
                );
            }
            assert!(
                kept.iter().all(|p| pair_name(p) != name),
                "strip left {name:?} in {out:?}"
            );
            assert_eq!(cookie::find_all(&out, name).count(), 0, "{out:?}");
            assert!(out.len() <= header.len() + header.matches(';').count());
            if !has_crlf_nul(header.as_bytes()) {
                assert!(!has_crlf_nul(out.as_bytes()), "{out:?}");
            }
        }
    }
}

// ---- redirect -----------------------------------------------------------------------------

/// `redirect`: arbitrary bytes as a `next` target.
pub fn redirect(data: &[u8]) {
    // The reserved-path classifier, against a plain reference that allocates.
    assert_eq!(
        podgate_protocol::path::is_reserved(data),
        reserved_reference(data),
        "is_reserved({:?})",
        String::from_utf8_lossy(data)
    );

    let input = String::from_utf8_lossy(data);
    let canonical = redirect::canonical_next(&input);
    let out = redirect::safe_next(&input);
    assert_eq!(
        Some(out.as_str()).filter(|_| canonical.is_some()),
        canonical.as_deref()
    );
    if canonical.is_none() {
        assert_eq!(out, "/", "refused {input:?} but got {out:?}");
    }
    assert_eq!(
        redirect::is_safe_next(&input),
        canonical.as_deref() == Some(&*input)
    );
    assert!(out.starts_with('/'), "{out:?}");
    assert!(
        !out.starts_with("//") && !out.starts_with("/\\"),
        "network-path reference {out:?}"
    );
    assert!(
        out.bytes().all(|b| b.is_ascii_graphic()),
        "control, whitespace or non-ASCII in {out:?}"
    );
    assert!(!out.contains('\\'), "{out:?}");
    assert!(out.len() <= redirect::MAX_NEXT_LEN);
    let lower = out.to_ascii_lowercase();
    for bad in ["%0a", "%0d", "%00", "%09"] {
        assert!(!lower.contains(bad), "{out:?}");
    }
    let path_end = out.find(['?', '#']).unwrap_or(out.len());
    let (path, after) = out.split_at(path_end);
    let lower_path = path.to_ascii_lowercase();
    for bad in ["%2f", "%5c", "%25", "%2e", "%c0", "%c1"] {
        assert!(!lower_path.contains(bad), "{bad} in the path of {out:?}");
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (n, segment) in segments.iter().enumerate() {
        assert!(
            !matches!(*segment, "." | "..") && (!segment.is_empty() || n + 1 == segments.len()),
            "{out:?} is not canonical"
        );
    }
    // The path a browser sends for it (the fragment stays in the browser).
    assert!(!reserved_reference(path.as_bytes()), "{out:?} is reserved");
    if let Some(query) = after.strip_prefix('?') {
        let query = query.split('#').next().unwrap_or_default();
        for piece in query.split(['&', ';']) {
            let name = piece
                .split('=')
                .next()
                .unwrap_or_default()
                .replace('+', " ");
            let name = String::from_utf8_lossy(&lenient_decode(name.as_bytes())).to_string();
            assert!(
                !name.trim().eq_ignore_ascii_case("ticket"),
                "a ticket parameter in {out:?}"
            );
        }
    }
    // What a later hop could make of it: decode everything once, backslashes as slashes, `;`
    // parameters dropped, dot segments removed (RFC 3986): still a path of this host.
    let decoded = String::from_utf8_lossy(&lenient_decode(path.as_bytes())).replace('\\', "/");
    let unparam: Vec<&str> = decoded
        .split('/')
        .map(|s| s.split(';').next().unwrap_or_default())
        .collect();
    let later = remove_dot_segments(&unparam.join("/"));
    assert!(
        !later.starts_with("//"),
        "{out:?} becomes {later:?} after a later normalisation"
    );
    assert_eq!(
        redirect::safe_next(&out),
        out,
        "safe_next is not idempotent"
    );

    // The same bytes as a query value (the gate's `next=`): only unreserved or %XX, reversible.
    let encoded = redirect::encode_query_value(&input);
    assert!(
        encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/%".contains(&b)),
        "{encoded:?}"
    );
    assert_eq!(percent_decode(&encoded), input.as_bytes(), "{encoded:?}");
}

/// `path::is_reserved` written plainly: decode once, split at `/` and `\\`, cut each name at
/// `;`, `#`, `?` or NUL, drop trailing dots and spaces, compare with `.podgate` without case.
pub fn reserved_reference(path: &[u8]) -> bool {
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    lenient_decode(path)
        .split(|&b| b == b'/' || b == b'\\')
        .any(|segment| {
            let name = segment
                .split(|&b| matches!(b, b';' | b'#' | b'?' | 0))
                .next()
                .unwrap_or_default();
            let mut name = name;
            while let [rest @ .., b'.' | b' '] = name {
                name = rest;
            }
            name.eq_ignore_ascii_case(b".podgate")
        })
}

/// One percent-decoding; a `%` that starts no escape stays as it is.
fn lenient_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match escape {
            Some((high, low)) => {
                out.push((high << 4 | low) as u8);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// RFC 3986 section 5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut output = String::new();
    let pop = |output: &mut String| match output.rfind('/') {
        Some(at) => output.truncate(at),
        None => output.clear(),
    };
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest;
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest;
        } else if input.starts_with("/./") {
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            input = &input[3..];
            pop(&mut output);
        } else if input == "/.." {
            input = "/";
            pop(&mut output);
        } else if input == "." || input == ".." {
            input = "";
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            output.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    output
}

fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'A'..=b'F' => b - b'A' + 10,
        _ => panic!("not an uppercase hex digit: {b}"),
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            assert!(i + 2 < bytes.len(), "truncated escape in {s:?}");
            out.push(hex(bytes[i + 1]) << 4 | hex(bytes[i + 2]));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

// ---- token --------------------------------------------------------------------------------

/// One token the fuzzer minted, and what each verifier must say about it unchanged.
struct Minted {
    token: String,
    valid_capability: bool,
    valid_ticket: bool,
}

struct TokenFixture {
    capabilities: Verifier,
    tickets: Verifier,
    minted: Vec<Minted>,
}

fn es256_scalar(last: u8) -> [u8; 32] {
    let mut scalar = [0x11u8; 32];
    scalar[31] = last;
    scalar
}

fn claims_for(pod: &str, port: u16, aud: String) -> PodClaims {
    PodClaims {
        iss: ISS.into(),
        sub: "user-1".into(),
        aud,
        pod: pod.into(),
        port,
        jti: "jti-1".into(),
        email: Some("u@example.dev".into()),
    }
}

fn token_fixture() -> &'static TokenFixture {
    static FIXTURE: OnceLock<TokenFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let cap = TokenKind::Capability;
        let tkt = TokenKind::LoginTicket;
        let ed = SigningKey::ed25519_from_seed("cap-fz-ed", [0x42; 32]).unwrap();
        let es = SigningKey::es256_from_bytes("cap-fz-es", &es256_scalar(0x07)).unwrap();
        let hs = SigningKey::hs256("cap-fz-hs", &[0x17; 32]).unwrap();
        let ticket_key = SigningKey::ed25519_from_seed("tkt-fz-ed", [0x43; 32]).unwrap();
        let set = KeySet {
            keys: [&ed, &es, &hs, &ticket_key]
                .iter()
                .map(|k| k.verifying_jwk())
                .collect(),
        };
        let capabilities = Verifier::new(cap, ISS, &set, 30, 3600).unwrap();
        let tickets = Verifier::new(tkt, ISS, &set, 30, 3600).unwrap();
        let claims = claims_for(
            "myslug",
            8726,
            "localhost-8726-pod-myslug.example.dev".into(),
        );
        let no_email = PodClaims {
            email: None,
            ..claims.clone()
        };
        let wrong_issuer = PodClaims {
            iss: "https://evil.example".into(),
            ..claims.clone()
        };
        let mint = |kind, key: &SigningKey, c: &PodClaims, iat, life| {
            token::mint(kind, key, c, iat, life).unwrap()
        };
        let mut minted = Vec::new();
        let mut add = |token: String, valid_capability: bool, valid_ticket: bool| {
            minted.push(Minted {
                token,
                valid_capability,
                valid_ticket,
            })
        };
        for key in [&ed, &es, &hs] {
            add(mint(cap, key, &claims, NOW, 900), true, false);
        }
        add(mint(cap, &ed, &no_email, NOW - 10, 60), true, false);
        add(mint(tkt, &ticket_key, &claims, NOW, 60), false, true);
        // A capability `typ` signed with the ticket key, a ticket `typ` signed with a capability
        // key, an expired one, one living too long, one from another issuer: never valid.
        add(mint(cap, &ticket_key, &claims, NOW, 60), false, false);
        add(mint(tkt, &ed, &claims, NOW, 60), false, false);
        add(mint(cap, &ed, &claims, NOW - 5000, 900), false, false);
        add(mint(cap, &es, &claims, NOW, 7200), false, false);
        add(mint(cap, &hs, &wrong_issuer, NOW, 60), false, false);
        TokenFixture {
            capabilities,
            tickets,
            minted,
        }
    })
}

/// The minted tokens, for seeding the corpus.
pub fn minted_tokens() -> Vec<String> {
    token_fixture()
        .minted
        .iter()
        .map(|m| m.token.clone())
        .collect()
}

/// `token`: see the module docs for the modes.
pub fn token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => check_untrusted_token(&String::from_utf8_lossy(rest), NOW),
        1 => {
            let (clock, rest) = rest.split_at(rest.len().min(8));
            let mut buf = [0u8; 8];
            buf[..clock.len()].copy_from_slice(clock);
            let now = i64::from_le_bytes(buf);
            check_untrusted_token(&String::from_utf8_lossy(rest), now);
        }
        2 => check_mutated_token(rest),
        _ => {
            if let Ok(set) = serde_json::from_slice::<KeySet>(rest) {
                for kind in [TokenKind::Capability, TokenKind::LoginTicket] {
                    if let Ok(v) = Verifier::new(kind, ISS, &set, 30, 3600) {
                        for m in &token_fixture().minted {
                            let _ = v.verify(&m.token, NOW);
                        }
                    }
                }
            }
        }
    }
}

/// The signed part of a compact JWS: everything before the last `.`.
fn signing_input(token: &str) -> &str {
    token.rsplit_once('.').map_or(token, |(signed, _)| signed)
}

fn check_untrusted_token(token: &str, now: i64) {
    let f = token_fixture();
    for (verifier, max_life) in [(&f.capabilities, 3600), (&f.tickets, 60)] {
        let ours = verifier.claims_ours(token);
        let Ok(v) = verifier.verify(token, now) else {
            continue;
        };
        // Ed25519 signing here is hedged (randomized), so a token minted by another process
        // (a seed) carries another valid signature: compare what was signed.
        assert!(
            f.minted
                .iter()
                .any(|m| signing_input(&m.token) == signing_input(token)),
            "a token the fuzzer never signed verified: {token:?}"
        );
        assert!(ours, "verified but claims_ours is false: {token:?}");
        assert_eq!(v.claims.iss, ISS);
        assert!(v.expires_at >= v.issued_at && v.expires_at - v.issued_at <= max_life);
        assert!(now < v.expires_at.saturating_add(30));
        assert!(v.issued_at <= now.saturating_add(30));
    }
}

/// Structured mode: pick a minted token, apply up to 8 edits (4 bytes each: op, position,
/// argument) and require that it verifies only if it is still (or again) a valid minted token.
fn check_mutated_token(data: &[u8]) {
    let f = token_fixture();
    let Some((&pick, ops)) = data.split_first() else {
        return;
    };
    let original = &f.minted[usize::from(pick) % f.minted.len()];
    let mut bytes = original.token.clone().into_bytes();
    for op in ops.chunks_exact(4).take(8) {
        let len = bytes.len().max(1);
        let pos = usize::from(u16::from_le_bytes([op[1], op[2]])) % len;
        let arg = op[3];
        match op[0] % 8 {
            0 => {
                if let Some(b) = bytes.get_mut(pos) {
                    *b ^= 1 << (arg % 8);
                }
            }
            1 => {
                if let Some(b) = bytes.get_mut(pos) {
                    *b = arg;
                }
            }
            2 => bytes.insert(pos.min(bytes.len()), arg),
            3 => {
                if pos < bytes.len() {
                    bytes.remove(pos);
                }
            }
            4 | 5 => {
                // Swap two segments, or take one segment from another minted token.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut segments: Vec<String> = text.split('.').map(str::to_owned).collect();
                let a = usize::from(arg % 3);
                if op[0] % 8 == 4 {
                    let b = usize::from((arg / 3) % 3);
                    if a < segments.len() && b < segments.len() {
                        segments.swap(a, b);
                    }
                } else {
                    let donor = &f.minted[pos % f.minted.len()].token;
                    if let (Some(slot), Some(seg)) = (segments.get_mut(a), donor.split('.').nth(a))
                    {
                        *slot = seg.to_owned();
                    }
                }
                bytes = segments.join(".").into_bytes();
            }
            6 => bytes.truncate(pos),
            _ => bytes.extend_from_slice(if arg % 2 == 0 { b"." } else { b"=" }),
        }
    }
    let token = String::from_utf8_lossy(&bytes);
    // Edits may rebuild another minted token exactly (e.g. all three segments from a donor),
    // which is as good as unchanged: compare against every token the fuzzer signed.
    let exact = f.minted.iter().find(|m| m.token == token);
    let signed_as = |m: &&Minted| signing_input(&m.token) == signing_input(&token);
    for (verifier, valid) in [
        (
            &f.capabilities,
            (|m: &Minted| m.valid_capability) as fn(&Minted) -> bool,
        ),
        (&f.tickets, |m: &Minted| m.valid_ticket),
    ] {
        let result = verifier.verify(&token, NOW);
        if result.is_ok() {
            assert!(
                f.minted.iter().filter(signed_as).any(valid),
                "{:?} verifier accepted an edited token {token:?} (from {:?}): {result:?}",
                verifier.kind(),
                original.token
            );
        }
        if exact.is_some_and(valid) {
            assert!(
                result.is_ok(),
                "{:?} verifier refused the valid minted {token:?}: {result:?}",
                verifier.kind()
            );
        }
        let _ = verifier.claims_ours(&token);
    }
}

// ---- gate ---------------------------------------------------------------------------------

/// One request for the gate, decoded from fuzz bytes.
#[derive(Debug, Clone)]
pub struct GateCase {
    /// Which of the two configurations (`public_scheme` https or http) applies.
    pub https: bool,
    pub now: i64,
    /// Lowercase names, raw values, as Envoy hands them to the filter.
    pub headers: Vec<(String, Vec<u8>)>,
}

struct GateFixture {
    /// Index 0: http, 1: https.
    configs: [CompiledConfig; 2],
    json: [Vec<u8>; 2],
    ed: SigningKey,
    es: SigningKey,
}

/// The gate's pod directory: two running pods, one stopped, one starting.
fn gate_filter_config(https: bool, keys: KeySet) -> FilterConfig {
    let mut pods = HashMap::new();
    for (slug, status, address) in [
        ("alpha", PodStatus::Running, Some("10.0.0.5:30001")),
        ("beta", PodStatus::Running, None),
        ("sleepy", PodStatus::Stopped, None),
        ("a-b", PodStatus::Starting, Some("10.0.0.6:30002")),
    ] {
        pods.insert(
            slug.to_owned(),
            PodEntry {
                status,
                cluster: format!("pod_{slug}"),
                address: address.map(str::to_owned),
            },
        );
    }
    FilterConfig {
        issuer: ISS.into(),
        domain: "example.dev".into(),
        public_host_template: host::DEFAULT_PUBLIC_TEMPLATE.into(),
        upstream_host_template: host::DEFAULT_UPSTREAM_TEMPLATE.into(),
        service_host_template: None,
        public_scheme: if https { "https" } else { "http" }.into(),
        cookie_name: cookie::DEFAULT_COOKIE_NAME.into(),
        auth_url: "https://podgate.example.dev/api/proxy-auth".into(),
        control_plane_cluster: "podgate_control_plane".into(),
        keys,
        pods,
        services: Default::default(),
        services_without_credential: Vec::new(),
        revoked_jti: vec!["jti-revoked".into()],
        cutoffs: Default::default(),
        logout_url: None,
        // The https configuration renews lapsed browser capabilities (a decision that waits for
        // the control plane); the http one has no renewal.
        renewal: https.then(|| Renewal {
            url: "https://podgate.example.dev/api/proxy-renew".into(),
            secret: "fuzz-renew-secret-0123456789".into(),
            before_secs: 300,
            timeout_ms: 2000,
            lapsed_secs: 43_200,
        }),
        wake: false,
        rate_limits: None,
        concurrency_limits: None,
        assertion: None,
        leeway_secs: 30,
        max_capability_lifetime_secs: 3600,
        token_cache_entries: 2,
    }
}

fn gate_fixture() -> &'static GateFixture {
    static FIXTURE: OnceLock<GateFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Only the fuzzer holds the private halves; the configuration gets the public keys.
        let ed = SigningKey::ed25519_from_seed("cap-gate-ed", [0x5a; 32]).unwrap();
        let es = SigningKey::es256_from_bytes("cap-gate-es", &es256_scalar(0x2b)).unwrap();
        let keys = KeySet {
            keys: vec![ed.public_jwk().unwrap(), es.public_jwk().unwrap()],
        };
        let json = [false, true]
            .map(|https| serde_json::to_vec(&gate_filter_config(https, keys.clone())).unwrap());
        let configs =
            [false, true].map(|https| gate_filter_config(https, keys.clone()).compile().unwrap());
        GateFixture {
            configs,
            json,
            ed,
            es,
        }
    })
}

/// The filter configuration JSON of [`GateCase::https`], for the wasm VM.
pub fn gate_config_json(https: bool) -> Vec<u8> {
    gate_fixture().json[usize::from(https)].clone()
}

/// The compiled configuration of [`GateCase::https`].
pub fn gate_config(https: bool) -> &'static CompiledConfig {
    &gate_fixture().configs[usize::from(https)]
}

thread_local! {
    /// The configurations of [`gate_config`] again, shared the way a `Gate` holds one.
    static SHARED_CONFIGS: [Rc<CompiledConfig>; 2] = [false, true].map(|https| {
        let json = gate_config_json(https);
        Rc::new(FilterConfig::compile_json(&json).expect("the fixture compiles"))
    });
}

/// A fresh gate with the configuration of [`GateCase::https`]: empty caches and memo.
pub fn fresh_gate(https: bool) -> Gate {
    SHARED_CONFIGS.with(|configs| Gate::new(Rc::clone(&configs[usize::from(https)])))
}

const SUBS: [&str; 3] = ["user-1", "anonymous", "01HZX3 user"];
const EMAILS: [Option<&str>; 5] = [
    None,
    Some("u@example.dev"),
    Some("evil@x\r\nx-podgate-user: admin"),
    Some("\u{e9}l\u{e8}ve@example.dev"),
    Some("a\0b@example.dev"),
];

/// Mints the capability the flags ask for. Variants: 1 valid for the authority's pod and port,
/// 2 another pod, 3 another port, 4 revoked, 5 expired (with a session id when `select` is
/// odd), 6 not yet valid, 7 valid (ES256 key).
/// With `select & 0x80` the `aud` names the authority but the `pod` claim another pod.
fn gate_token(variant: u8, select: u8, pod: &PodAddr, config: &CompiledConfig) -> String {
    type Key = (u8, u8, String, u16);
    thread_local! {
        static MINTED: RefCell<HashMap<Key, String>> = RefCell::new(HashMap::new());
    }
    let key: Key = (variant, select, pod.pod.clone(), pod.port);
    if let Some(t) = MINTED.with(|m| m.borrow().get(&key).cloned()) {
        return t;
    }
    let f = gate_fixture();
    let other_pod = if pod.pod == "beta" { "alpha" } else { "beta" };
    let mut scope = pod.clone();
    match variant {
        2 => scope.pod = other_pod.into(),
        3 => {
            scope.port = if pod.port == u16::MAX {
                1
            } else {
                pod.port + 1
            }
        }
        _ => {}
    }
    let aud = config.public_hosts.render(&scope);
    let mut claims = PodClaims {
        iss: ISS.into(),
        sub: SUBS[usize::from(select & 0x7f) % SUBS.len()].into(),
        aud,
        pod: scope.pod.clone(),
        port: scope.port,
        jti: if variant == 4 { "jti-revoked" } else { "jti-1" }.into(),
        email: EMAILS[usize::from(select & 0x7f) / SUBS.len() % EMAILS.len()].map(str::to_owned),
    };
    if select & 0x80 != 0 {
        claims.pod = other_pod.into();
    }
    let (iat, life) = match variant {
        5 => (NOW - 2000, 900),
        6 => (NOW + 1000, 900),
        _ => (NOW, 900),
    };
    let signer = if variant == 7 { &f.es } else { &f.ed };
    // An expired capability minted for a browser session with an odd `select`: in a cookie,
    // the https configuration renews it.
    let sid = (variant == 5 && select & 1 == 1).then_some("sid-1");
    let t = token::mint_in_session(TokenKind::Capability, signer, &claims, sid, iat, life).unwrap();
    MINTED.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= 4096 {
            m.clear();
        }
        m.insert(key, t.clone());
    });
    t
}

/// Decodes a gate input.
///
/// - byte 0, flags: bits 0-2 which capability to add (0 none; see [`gate_token`]), bits 3-4
///   where (0 `podgate-token`, 1 `authorization: Bearer`, 2 appended to the cookie, 3
///   prepended; to the last or first `cookie` header), bit 5 the https configuration;
/// - byte 1 picks the token's `sub` and `email` (and bit 7 a mismatched `pod` claim; bit 0, with
///   variant 5, a session id);
/// - then header lines `name:value` split at `\n`; the name ends at the first `:` after its
///   first byte (so `:authority:x` works) and is lowercased; the value is raw bytes. Repeated
///   headers stay separate (an HTTP/1 client may send several `Cookie` headers).
pub fn gate_case(data: &[u8]) -> GateCase {
    let flags = data.first().copied().unwrap_or(0);
    let select = data.get(1).copied().unwrap_or(0);
    let https = flags & 0x20 != 0;
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    for line in data.get(2..).unwrap_or(&[]).split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let colon = line.iter().skip(1).position(|&b| b == b':').map(|i| i + 1);
        let (name, value) = match colon {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &line[line.len()..]),
        };
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        headers.push((name, value.to_vec()));
    }

    let variant = flags & 7;
    if variant != 0 {
        let config = gate_config(https);
        let authority = headers
            .iter()
            .rev()
            .find(|(n, _)| n == ":authority")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let pod = config.public_hosts.parse(&authority).unwrap_or(PodAddr {
            pod: "alpha".into(),
            port: 8726,
        });
        let t = gate_token(variant, select, &pod, config);
        let pair = format!("{}={t}", config.cookie_name).into_bytes();
        match (flags >> 3) & 3 {
            0 => headers.push(("podgate-token".into(), t.into_bytes())),
            1 => headers.push(("authorization".into(), format!("Bearer {t}").into_bytes())),
            place => {
                let mut cookies = headers
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| n == "cookie")
                    .map(|(i, _)| i);
                let at = if place == 2 {
                    cookies.next_back()
                } else {
                    cookies.next()
                };
                match at {
                    Some(at) => {
                        let old = std::mem::take(&mut headers[at].1);
                        headers[at].1 = if place == 2 {
                            [old.as_slice(), b"; ", &pair].concat()
                        } else {
                            [pair.as_slice(), b"; ", &old].concat()
                        };
                    }
                    None => headers.push(("cookie".into(), pair)),
                }
            }
        }
    }
    GateCase {
        https,
        now: NOW,
        headers,
    }
}

/// What the filter does with a case: its header map, serialized as Envoy hands it over,
/// through a fresh [`Gate`], the filter's own entry point.
pub fn gate_outcome(case: &GateCase) -> Outcome {
    let wire = podgate_protocol::wire::encode_header_map(&case.headers);
    fresh_gate(case.https).on_request(&wire, case.now)
}

/// `gate`: the whole decision, natively.
pub fn gate(data: &[u8]) {
    check_gate(&gate_case(data));
}

/// Checks every invariant of the decision for one case and returns it.
pub fn check_gate(case: &GateCase) -> Decision {
    let config = gate_config(case.https);
    let req = match Request::from_headers(&case.headers) {
        Ok(req) => req,
        Err(denial) => {
            assert!(matches!(denial, Denial::MalformedHeader(_)), "{denial:?}");
            check_reply(config, &denial);
            let refused = Decision::Deny(denial.clone());
            check_memo(case, &Outcome::Deny(denial), false);
            return refused;
        }
    };
    let mut cache = VerifiedCache::new();
    let first = gate::decide(config, &mut cache, &req, case.now);
    assert!(
        cache.verifications() <= gate::MAX_VERIFICATIONS as u64,
        "{} signature checks for one request",
        cache.verifications()
    );
    // Again through the now warm cache: the cache never changes a forward, and changes a
    // refusal only when more candidates wanted a signature check than one request may make.
    let again = gate::decide(config, &mut cache, &req, case.now);
    let budget_bound = budget_may_bind(config, case, &req);
    if !(budget_bound && matches!(first, Decision::Deny(_))) {
        assert_eq!(
            first, again,
            "the verified-token cache changed the decision"
        );
    }
    // The filter answers a CORS preflight before deciding; the gate must too.
    let expected = match cors::preflight(config, &req.preflight_view()) {
        Some(Preflight::Allowed(reply)) => Outcome::Preflight(reply),
        Some(Preflight::Refused(denial)) => Outcome::Deny(denial),
        None => match first.clone() {
            Decision::Deny(denial) => gate::refusal(config, &req, denial),
            Decision::Renew { old, refusal } => Outcome::Renew(Rc::new(gate::LapsedRenewal {
                old,
                otherwise: gate::refusal(config, &req, refusal),
            })),
            decision => decision.into(),
        },
    };
    check_memo(case, &expected, budget_bound);
    match &first {
        Decision::Deny(denial) => check_reply(config, denial),
        Decision::Answer(reply) => check_answer(config, &req, reply),
        Decision::Forward(f) => check_forward(
            config,
            case,
            &req,
            &f.edits,
            f.reroute,
            f.user.as_deref(),
            f.expires_at,
        ),
        // An API token to exchange, a lapsed capability to renew: nothing is forwarded before
        // the control plane answers.
        Decision::Exchange(_) | Decision::Renew { .. } => {}
    }
    first
}

thread_local! {
    /// One decision memo per config for the whole run, and the last `now` it saw.
    static RUN_GATES: RefCell<HashMap<bool, (Gate, i64)>> = RefCell::new(HashMap::new());
}

/// The filter's entry point, `Gate::on_request`, answers exactly what the preflight check and
/// `decide` answer: through a fresh gate (a miss, then a hit), and through one gate that has
/// seen every earlier input of the run, so another request's memo entry must never match this
/// one. Time only moves forward for a gate, as a clock does; a case earlier than the last
/// starts that gate over.
fn check_memo(case: &GateCase, expected: &Outcome, budget_bound: bool) {
    let wire = podgate_protocol::wire::encode_header_map(&case.headers);
    let mut gate = fresh_gate(case.https);
    // A refusal the verification budget decided may turn into the forward a warm cache finds.
    let may_differ = |got: &Outcome| {
        budget_bound && matches!(expected, Outcome::Deny(_) | Outcome::Page(_)) && got != expected
    };
    for round in ["miss", "hit"] {
        let got = gate.on_request(&wire, case.now);
        if round == "miss" || !may_differ(&got) {
            assert_eq!(&got, expected, "the memo changed the decision ({round})");
        }
    }
    RUN_GATES.with(|memos| {
        let mut memos = memos.borrow_mut();
        let (gate, last) = memos
            .entry(case.https)
            .or_insert_with(|| (fresh_gate(case.https), i64::MIN));
        if case.now < *last {
            *gate = fresh_gate(case.https);
        }
        *last = case.now;
        let got = gate.on_request(&wire, case.now);
        if !may_differ(&got) {
            assert_eq!(
                &got, expected,
                "an earlier input's memo entry changed the decision"
            );
        }
    });
}

/// Whether more distinct values in the credential headers pass the signature-free checks than
/// one request may verify (a superset of the gate's candidates, found without its logic).
fn budget_may_bind(config: &CompiledConfig, case: &GateCase, req: &Request<'_>) -> bool {
    let Ok(pod) = config.public_hosts.parse(req.authority) else {
        return false;
    };
    let host = config.public_hosts.render(&pod);
    let mut pieces = credential_pieces(&case.headers);
    pieces.sort();
    pieces.dedup();
    pieces
        .iter()
        .filter(|p| config.verifier.precheck(p, &host, case.now).is_ok())
        .count()
        > gate::MAX_VERIFICATIONS
}

fn check_reply(config: &CompiledConfig, denial: &Denial) {
    let reply = denial.reply();
    assert!((300..600).contains(&reply.status), "{reply:?}");
    for (name, value) in &reply.headers {
        assert!(!has_crlf_nul(value.as_bytes()), "{name}: {value:?}");
    }
    if reply.status == 302 {
        let location = reply
            .headers
            .iter()
            .find(|(n, _)| *n == "location")
            .map(|(_, v)| v.as_str())
            .expect("a redirect without a location");
        assert!(
            location.starts_with(&format!("{}?pod=", config.auth_url)),
            "{location:?}"
        );
        assert!(
            location.bytes().all(|b| b.is_ascii_graphic()),
            "{location:?}"
        );
    }
    assert!(
        serde_json::from_str::<serde_json::Value>(&reply.body).is_ok(),
        "{:?}",
        reply.body
    );
}

/// A path the filter answers itself: only its exact paths, with clean headers and a JSON body;
/// sign-out goes only to the configured control plane.
fn check_answer(
    config: &CompiledConfig,
    req: &Request<'_>,
    reply: &podgate_protocol::reply::Reply,
) {
    let own = podgate_protocol::own_paths::classify(req.path);
    assert!(own.is_some(), "answered {:?} itself", req.path);
    for (name, value) in &reply.headers {
        assert!(!has_crlf_nul(value.as_bytes()), "{name}: {value:?}");
    }
    if own == Some(podgate_protocol::own_paths::OwnPath::Logout) {
        assert_eq!(reply.status, 302);
        assert!(reply
            .headers
            .iter()
            .any(|(n, v)| *n == "location" && *v == config.logout_url));
    } else {
        assert_eq!(reply.status, 200);
    }
    assert!(
        serde_json::from_str::<serde_json::Value>(&reply.body).is_ok(),
        "{:?}",
        reply.body
    );
}

/// Every piece of a credential-carrying header that could be a token.
fn credential_pieces(headers: &[(String, Vec<u8>)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| matches!(n.as_str(), "podgate-token" | "authorization" | "cookie"))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(|c: char| matches!(c, ';' | '=' | '"' | ',') || c.is_whitespace())
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every value of header `name`, in order.
fn values<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Vec<&'h [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// The request headers after the edits, with Envoy's `setCopy` semantics.
fn apply(headers: &[(String, Vec<u8>)], edits: &[HeaderEdit]) -> Vec<(String, Vec<u8>)> {
    let mut out = headers.to_vec();
    for edit in edits {
        match edit {
            HeaderEdit::Remove(name) => out.retain(|(n, _)| n != name),
            HeaderEdit::Set(name, value) => {
                out.retain(|(n, _)| n != name);
                out.push((name.clone(), value.clone().into_bytes()));
            }
        }
    }
    out
}

fn check_forward(
    config: &CompiledConfig,
    case: &GateCase,
    req: &Request<'_>,
    edits: &[HeaderEdit],
    reroute: bool,
    user: Option<&str>,
    expires_at: Option<i64>,
) {
    let pod = config
        .public_hosts
        .parse(req.authority)
        .expect("forwarded a request whose authority is not a pod host");
    let mut set: HashMap<&str, &str> = HashMap::new();
    for edit in edits {
        if let HeaderEdit::Set(name, value) = edit {
            if name == "cookie" {
                // The stripped cookie is the client's own bytes; it may only carry what the
                // client sent (Envoy never delivers CR, LF or NUL in a value).
                let sent: Vec<u8> = values(&case.headers, "cookie").concat();
                for b in value.bytes().filter(|&b| matches!(b, b'\r' | b'\n' | 0)) {
                    assert!(
                        sent.contains(&b),
                        "cookie edit introduced {b:#x}: {value:?}"
                    );
                }
            } else {
                assert!(
                    !has_crlf_nul(value.as_bytes()),
                    "edit sets {name} to {value:?}"
                );
            }
            set.insert(name.as_str(), value.as_str());
        }
    }

    // Our credentials and the client's copies of our headers never reach the upstream.
    let forwarded = apply(&case.headers, edits);
    // X-Forwarded-Host is ours alone: the public pod host, with the authority's port if any.
    let mut public = config.public_hosts.render(&pod);
    if let Some((_, port)) = req.authority.rsplit_once(':') {
        public = format!("{public}:{port}");
    }
    let forwarded_hosts: Vec<&[u8]> = forwarded
        .iter()
        .filter(|(n, _)| n == "x-forwarded-host")
        .map(|(_, v)| v.as_slice())
        .collect();
    assert_eq!(forwarded_hosts, vec![public.as_bytes()], "x-forwarded-host");
    for (name, value) in &forwarded {
        assert_ne!(name, "podgate-token", "the token header was forwarded");
        if name == "cookie" {
            let text = String::from_utf8_lossy(value);
            assert_eq!(
                cookie::find_all(&text, &config.cookie_name).count(),
                0,
                "our cookie was forwarded: {text:?}"
            );
        }
        if name == "authorization" {
            // Any kind of ours, in any form: stripped or refused, never forwarded.
            let text = String::from_utf8_lossy(value);
            assert!(
                !token::mentions_ours(&text),
                "our token was forwarded in authorization: {text:?}"
            );
        }
        if name == "cookie" {
            // Untouched unless a pair named ours was in it.
            let sent = values(&case.headers, "cookie");
            if sent.len() == 1
                && !cookie::has(&String::from_utf8_lossy(sent[0]), &config.cookie_name)
            {
                assert_eq!(
                    value.as_slice(),
                    sent[0],
                    "a Cookie header without ours was edited"
                );
            }
        }
        if name.starts_with(HEADER_PREFIX) {
            assert_eq!(
                set.get(name.as_str()).map(|v| v.as_bytes()),
                Some(value.as_slice()),
                "a client copy of {name} was forwarded"
            );
        }
    }

    let Some(user) = user else {
        // The control plane's callback path: no capability needed, but nothing else either.
        assert!(reserved_reference(req.path.as_bytes()), "{:?}", req.path);
        assert_eq!(
            set.get(CLUSTER_HEADER).copied(),
            Some(config.control_plane_cluster.as_str())
        );
        for name in [":authority", USER_HEADER, EMAIL_HEADER, UPSTREAM_HEADER] {
            assert!(!set.contains_key(name), "callback forward sets {name}");
        }
        assert!(
            reroute,
            "the callback names a cluster: Envoy must pick the route again"
        );
        assert_eq!(expires_at, None);
        return;
    };

    assert!(!reserved_reference(req.path.as_bytes()), "{:?}", req.path);
    let entry = config
        .pods
        .get(&pod.pod)
        .expect("forwarded to a pod that is not in the directory");
    assert_eq!(entry.status, PodStatus::Running, "{pod:?}");
    let upstream = config.upstream_hosts.render(&pod);
    assert_eq!(set.get(":authority").copied(), Some(upstream.as_str()));
    // By address (the pods' route Envoy picked before the filter ran) or by the pod's cluster;
    // Envoy picks the route again whenever the cluster header is set or a client copy of any
    // header of ours was removed (the first pick may have matched it).
    assert_eq!(set.get(UPSTREAM_HEADER).copied(), entry.address.as_deref());
    let cluster = set.get(CLUSTER_HEADER).copied();
    match &entry.address {
        Some(_) => assert_eq!(
            cluster, None,
            "a pod with an address goes by the pods' route"
        ),
        None => assert_eq!(cluster, Some(entry.cluster.as_str())),
    }
    let client_copy = case
        .headers
        .iter()
        .any(|(n, _)| n.starts_with(HEADER_PREFIX));
    if cluster.is_some() || client_copy {
        assert!(reroute, "the route Envoy picked may be wrong, and is kept");
    }
    assert_eq!(set.get(USER_HEADER).copied(), Some(user));
    if let Some(email) = set.get(EMAIL_HEADER) {
        assert!(email.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    }

    // The point of the gate: a forward to a pod carries a valid, unrevoked capability for
    // exactly that pod and port (checked here without the gate's own candidate logic).
    let host = config.public_hosts.render(&pod);
    let granted = credential_pieces(&case.headers).iter().any(|piece| {
        config.verifier.verify(piece, case.now).is_ok_and(|v| {
            v.claims.aud == host
                && v.claims.pod == pod.pod
                && v.claims.port == pod.port
                && v.claims.sub == user
                && Some(v.expires_at) == expires_at
                && !config.revoked.contains(&v.claims.jti)
        })
    });
    assert!(
        granted,
        "forwarded to {pod:?} as {user:?} without a valid capability for it"
    );
}

// ---- credentials --------------------------------------------------------------------------

/// The pod host every `credentials` case is for.
const CREDENTIALS_HOST: &str = "localhost-8726-pod-alpha.example.dev";

/// `credentials`: how the gate reads our tokens out of `Authorization` and `Cookie`.
///
/// - `'a'`: the rest is an `Authorization` value sent beside a valid `podgate-token`. The
///   answer is a forward or `MalformedAuthorization`; refused only if the value mentions one of
///   our tokens (`token::mentions_ours`); forwarded, no `Authorization` that reaches the pod
///   mentions ours, and a value that mentions none reaches it byte for byte.
/// - `'c'`: a position byte, then the rest is a `Cookie` header (planted cookies and the app's)
///   into which the real capability is spliced at a `;` boundary picked by the position byte.
///   At most `MAX_VERIFICATIONS` signatures are checked; the real one wins unless more values
///   pass the signature-free checks than that (the documented limit); a forward carries no
///   pair named ours and every other pair in order.
/// - otherwise: the rest, split at whitespace, are words. No panic; a word that
///   `looks_like_ours` is `mentions_ours`; `Verifier::precheck` refuses only what `verify`
///   refuses, and reads the `aud` that `verify` finds.
pub fn credentials(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let config = gate_config(false);
    let pod = PodAddr {
        pod: "alpha".into(),
        port: 8726,
    };
    let real = gate_token(1, 0, &pod, config);
    match mode {
        b'a' => credentials_authorization(&real, &String::from_utf8_lossy(rest)),
        b'c' => {
            let Some((&at, rest)) = rest.split_first() else {
                return;
            };
            credentials_cookie(config, &real, at, &String::from_utf8_lossy(rest));
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let _ = token::mentions_ours(&text);
            for word in text.split_whitespace() {
                if token::looks_like_ours(word) {
                    assert!(token::mentions_ours(word), "{word:?}");
                }
                let pre = config.verifier.precheck(word, CREDENTIALS_HOST, NOW);
                let full = config.verifier.verify(word, NOW);
                match (&pre, &full) {
                    (Err(_), Ok(_)) => panic!("precheck refused a token verify accepts: {word:?}"),
                    (Ok(here), Ok(v)) => assert_eq!(*here, v.claims.aud == CREDENTIALS_HOST),
                    _ => {}
                }
            }
        }
    }
}

/// Seeds for `credentials`: `(name, bytes)`.
pub fn credentials_seeds() -> Vec<(String, Vec<u8>)> {
    let config = gate_config(false);
    let alpha = PodAddr {
        pod: "alpha".into(),
        port: 8726,
    };
    let cap = gate_token(2, 0, &alpha, config);
    let expired = gate_token(5, 0, &alpha, config);
    let ticket = minted_tokens().into_iter().nth(4).unwrap_or_default();
    let api = format!("pg_{}_{}", "0123456789abcdef01234567", "a".repeat(52));
    let forger = SigningKey::ed25519_from_seed("cap-gate-ed", [0xa5; 32]).unwrap();
    let forged = |n: usize| {
        let claims = claims_for("alpha", 8726, CREDENTIALS_HOST.into());
        let claims = PodClaims {
            jti: format!("forged-{n}"),
            ..claims
        };
        token::mint(TokenKind::Capability, &forger, &claims, NOW, 900).unwrap()
    };
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, mode: &[u8], text: &str| {
        out.push((name.to_owned(), [mode, text.as_bytes()].concat()));
    };
    for (name, value) in [
        ("bearer", format!("Bearer {cap}")),
        ("bearer-lower-spaces", format!("  bearer   {cap} ")),
        ("tab", format!("Bearer\t{cap}")),
        ("no-scheme", cap.clone()),
        ("trailing", format!("Bearer {cap} x")),
        ("quoted", format!("Bearer \"{cap}\"")),
        ("joined", format!("Bearer app, Bearer {cap}")),
        ("joined-bare", format!("Bearer app,{cap}")),
        ("ticket", format!("Bearer {ticket}")),
        ("api-token", format!("Token {api}")),
        ("glued", format!("Bearer {cap}.x")),
        ("foreign", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln".into()),
        ("basic", "Basic dXNlcjpwYXNz".into()),
    ] {
        add(&format!("auth-{name}"), b"a", &value);
    }
    let many: Vec<String> = (0..12)
        .map(|n| format!("podgate_cap={}", forged(n)))
        .collect();
    for (name, at, header) in [
        ("forged-first", 0u8, many.join("; ")),
        ("forged-last", 12, many.join("; ")),
        (
            "two-forged",
            1,
            format!("podgate_cap={}; podgate_cap={}", forged(20), forged(21)),
        ),
        (
            "expired-and-other-pod",
            2,
            format!("podgate_cap={expired}; a=1; podgate_cap={cap}"),
        ),
        (
            "lookalike-names",
            1,
            "xpodgate_cap=1; podgate_cap2=2;a=podgate_cap".into(),
        ),
        (
            "garbage",
            3,
            "podgate_cap=x.y.z; podgate_cap=\"\"; podgate_cap=;;b=2".into(),
        ),
    ] {
        add(&format!("cookie-{name}"), &[b'c', at], &header);
    }
    add(
        "words",
        b"w",
        &format!("{cap} {ticket} {api} {} x.y.z eyJ.e30.", forged(30)),
    );
    out
}

fn credentials_headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut h: Vec<(String, Vec<u8>)> = vec![
        (":authority".into(), CREDENTIALS_HOST.into()),
        (":path".into(), b"/".to_vec()),
        (":method".into(), b"GET".to_vec()),
    ];
    h.extend(
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
    );
    h
}

/// `headers` through a fresh gate with the plain-HTTP configuration at `NOW`, as the filter
/// takes them: the decision (never a preflight: these are GETs) and the gate's token cache.
fn through_fresh_gate(headers: &[(String, Vec<u8>)]) -> (Decision, VerifiedCache) {
    let mut gate = fresh_gate(false);
    let wire = podgate_protocol::wire::encode_header_map(headers);
    let decision = match gate.on_request(&wire, NOW) {
        Outcome::Forward(forward) => Decision::Forward(forward),
        Outcome::Deny(denial) => Decision::Deny(denial),
        Outcome::Answer(reply) => Decision::Answer(reply),
        Outcome::Exchange(need) => Decision::Exchange(need),
        Outcome::Renew(renew) => match &renew.otherwise {
            Outcome::Deny(refusal) => Decision::Renew {
                old: std::rc::Rc::clone(&renew.old),
                refusal: refusal.clone(),
            },
            otherwise => panic!("a lapsed capability answered with {otherwise:?}"),
        },
        Outcome::Page(reply) | Outcome::Wake { page: reply, .. } => {
            panic!("a page for a request without Accept: {reply:?}")
        }
        Outcome::Preflight(reply) => panic!("a GET answered as a preflight: {reply:?}"),
    };
    (decision, gate.into_cache())
}

fn credentials_authorization(real: &str, value: &str) {
    let headers = credentials_headers(&[("podgate-token", real), ("authorization", value)]);
    if Request::from_headers(&headers).is_err() {
        return;
    }
    let (decision, cache) = through_fresh_gate(&headers);
    let mentions = token::mentions_ours(value);
    match &decision {
        Decision::Deny(Denial::MalformedAuthorization) => {
            assert!(
                mentions,
                "refused an Authorization with none of ours: {value:?}"
            )
        }
        Decision::Forward(f) => {
            let forwarded = apply(&headers, &f.edits);
            let auth = values(&forwarded, "authorization");
            for v in &auth {
                let text = String::from_utf8_lossy(v);
                assert!(!token::mentions_ours(&text), "forwarded ours: {text:?}");
            }
            if !mentions {
                assert_eq!(auth, vec![value.as_bytes()], "the app's value was changed");
            }
        }
        other => panic!("{other:?} for {value:?}"),
    }
    assert!(cache.verifications() <= gate::MAX_VERIFICATIONS as u64);
}

fn credentials_cookie(config: &CompiledConfig, real: &str, at: u8, planted: &str) {
    let name = &config.cookie_name;
    let mut parts: Vec<String> = planted.split(';').map(str::to_owned).collect();
    let at = usize::from(at) % (parts.len() + 1);
    parts.insert(at, format!(" {name}={real}"));
    let header = parts.join(";");
    let headers = credentials_headers(&[("cookie", &header)]);
    if Request::from_headers(&headers).is_err() {
        return;
    }
    let (decision, cache) = through_fresh_gate(&headers);
    assert!(cache.verifications() <= gate::MAX_VERIFICATIONS as u64);
    let mut values_ours: Vec<&str> = cookie::find_all(&header, name).collect();
    values_ours.sort_unstable();
    values_ours.dedup();
    let contenders = values_ours
        .iter()
        .filter(|v| config.verifier.precheck(v, CREDENTIALS_HOST, NOW).is_ok())
        .count();
    match &decision {
        Decision::Forward(f) => {
            let forwarded = apply(&headers, &f.edits);
            let cookies = values(&forwarded, "cookie");
            assert!(cookies.len() <= 1);
            let kept = cookies
                .first()
                .map(|c| String::from_utf8_lossy(c).into_owned());
            assert_eq!(kept, cookie::strip(&header, name), "{header:?}");
            if let Some(kept) = kept {
                assert_eq!(cookie::find_all(&kept, name).count(), 0, "{kept:?}");
            }
        }
        // Another valid value of this host (a fuzzer cannot mint one) or the budget.
        other => assert!(
            contenders > gate::MAX_VERIFICATIONS || header.len() > cookie::MAX_COOKIE_HEADER_LEN,
            "{other:?}: the real capability lost to {contenders} contenders in {header:?}"
        ),
    }
}

// ---- response -----------------------------------------------------------------------------

/// Authorities the response target answers for: a pod host, the same with a port, another
/// port of the same pod, and a host that is no pod.
const RESPONSE_AUTHORITIES: [&str; 4] = [
    "localhost-8726-pod-alpha.example.dev",
    "localhost-8726-pod-alpha.example.dev:443",
    "localhost-3000-pod-alpha.example.dev",
    "example.dev",
];

/// Origins a request may carry: none, the pod's own, another port of the same pod, another
/// pod, the base domain, junk; selector values past the table take the first header line.
const RESPONSE_ORIGINS: [Option<&str>; 6] = [
    None,
    Some("https://localhost-8726-pod-alpha.example.dev"),
    Some("http://localhost-3000-pod-alpha.example.dev"),
    Some("https://localhost-8726-pod-beta.example.dev"),
    Some("https://example.dev"),
    Some("null"),
];

/// A pod's response headers through `protocol::response::sanitize`. Invariants: no panic;
/// after the edits every `Set-Cookie` left is one the pod sent, in the pod's order, and passes
/// `set_cookie::judge` for the request's pod host; no `Access-Control-*` header survives but
/// ours for a same-pod `Origin` (allow-origin = that origin, allow-credentials = true) and the
/// pod's expose-headers there; with no `Set-Cookie` or `Access-Control-*` header and no
/// `Origin` there is no edit at all.
pub fn response(data: &[u8]) {
    use podgate_protocol::response::{sanitize, PodResponse, ResponseEdit};
    use podgate_protocol::set_cookie::judge;

    let (&flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (&select, rest) = rest.split_first().unwrap_or((&0, &[]));
    let config = gate_config(flags & 1 == 1);
    let authority = RESPONSE_AUTHORITIES[usize::from(flags >> 1) % RESPONSE_AUTHORITIES.len()];
    let mut lines: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
    let free_origin;
    let origin = match RESPONSE_ORIGINS.get(usize::from(select)) {
        Some(o) => *o,
        None => {
            free_origin = String::from_utf8_lossy(if lines.is_empty() {
                &[]
            } else {
                lines.remove(0)
            })
            .into_owned();
            Some(free_origin.as_str())
        }
    };
    let headers: Vec<(Vec<u8>, Vec<u8>)> = lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| match l.iter().position(|&b| b == b':') {
            Some(i) => (l[..i].to_vec(), l[i + 1..].to_vec()),
            None => (l.to_vec(), Vec::new()),
        })
        .collect();
    let ctx = PodResponse::new(authority, origin);
    let out = sanitize(
        config,
        &ctx,
        headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
    );

    let lower = |n: &[u8]| n.to_ascii_lowercase();
    let is_set_cookie = |n: &[u8]| n.eq_ignore_ascii_case(b"set-cookie");
    let is_cors = |n: &[u8]| n.len() >= 15 && n[..15].eq_ignore_ascii_case(b"access-control-");
    let is_clear_site_data = |n: &[u8]| n.eq_ignore_ascii_case(b"clear-site-data");
    let touched = headers
        .iter()
        .any(|(n, _)| is_set_cookie(n) || is_cors(n) || is_clear_site_data(n));
    if !touched && origin.is_none() {
        assert!(
            out.edits.is_empty(),
            "edits for a plain response: {:?}",
            out.edits
        );
    }

    // Apply the edits the way the filter does.
    let mut after: Vec<(Vec<u8>, Vec<u8>)> = headers.clone();
    for edit in &out.edits {
        match edit {
            ResponseEdit::Remove(name) => after.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
            ResponseEdit::Add(name, value) => after.push((name.clone(), value.clone())),
            ResponseEdit::Set(name, value) => {
                after.retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes()));
                after.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
            }
        }
    }

    // No `Clear-Site-Data` directive that reaches past the pod's origin survives.
    for (_, value) in after.iter().filter(|(n, _)| is_clear_site_data(n)) {
        for directive in value
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|d| !d.is_empty())
        {
            assert!(
                directive == b"\"storage\"" || directive == b"\"executionContexts\"",
                "Clear-Site-Data {:?} survived",
                String::from_utf8_lossy(value)
            );
        }
    }

    let pod_host = config
        .public_hosts
        .parse(authority)
        .ok()
        .map(|p| config.public_hosts.render(&p));
    let sent: Vec<&Vec<u8>> = headers
        .iter()
        .filter(|(n, _)| is_set_cookie(n))
        .map(|(_, v)| v)
        .collect();
    let kept: Vec<&Vec<u8>> = after
        .iter()
        .filter(|(n, _)| is_set_cookie(n))
        .map(|(_, v)| v)
        .collect();
    let mut from = 0;
    for value in &kept {
        let at = sent[from..].iter().position(|s| s == value);
        assert!(
            at.is_some(),
            "a Set-Cookie the pod did not send, or out of order: {value:?}"
        );
        from += at.unwrap_or(0) + 1;
        match &pod_host {
            Some(host) => assert!(
                judge(value, host, &config.reserved_cookies).is_ok(),
                "a refused Set-Cookie survived: {:?}",
                String::from_utf8_lossy(value)
            ),
            None => assert!(
                judge(value, "\u{0}no-host", &config.reserved_cookies).is_ok(),
                "a cookie with a Domain survived on a non-pod host"
            ),
        }
    }
    assert_eq!(
        kept.len() + out.dropped_cookies.len(),
        sent.len(),
        "every Set-Cookie is kept or counted as dropped"
    );

    let same_pod = origin.filter(|o| {
        config
            .public_hosts
            .parse(authority)
            .ok()
            .is_some_and(|pod| podgate_protocol::cors::is_same_pod_origin(config, &pod, o))
    });
    for (name, value) in after.iter().filter(|(n, _)| is_cors(n)) {
        let name = lower(name);
        let Some(o) = same_pod else {
            panic!(
                "{:?} survived without a same-pod Origin",
                String::from_utf8_lossy(&name)
            );
        };
        match name.as_slice() {
            b"access-control-allow-origin" => assert_eq!(value.as_slice(), o.as_bytes()),
            b"access-control-allow-credentials" => assert_eq!(value.as_slice(), b"true"),
            b"access-control-expose-headers" => {}
            other => panic!("{:?} survived", String::from_utf8_lossy(other)),
        }
    }
    let acao = after
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"access-control-allow-origin"))
        .count();
    assert_eq!(
        acao,
        usize::from(same_pod.is_some()),
        "one allow-origin for a same-pod Origin, else none"
    );
}
