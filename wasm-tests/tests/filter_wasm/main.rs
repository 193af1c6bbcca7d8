#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The compiled podgate filter (release `.wasm`) driven by the wasmtime proxy-wasm host.
//!
//! Every request goes through the real filter binary with a fixed clock; tokens are minted with
//! `podgate_protocol::token` or forged (HS256 over arbitrary JSON) by `support`. Each hostile
//! input also asserts that the VM is still alive (`Req::send`). Denials assert that nothing was
//! forwarded (a local reply, no `clear_route_cache`); forwards assert a route (a cluster header
//! and one `clear_route_cache`, or a pod's address) and inspect the headers Envoy would send
//! upstream.
//!
//! Modules: `answers` (one test per answer the filter gives), `tokens` (RFC 8725
//! classes), `hosts`, `stripping`, `cache`, `metrics`, `websocket`, `pod_responses` (Set-Cookie
//! and CORS headers of pods), `preflight`, `websocket_expiry` (ticks and frames after `exp`),
//! `cost` (fuel per request, printed with `--nocapture`).

#[path = "../support/mod.rs"]
mod support;

/// `TokenError` display texts, as they appear after `Invalid capability: `.
mod reasons {
    pub const SIZE: &str = "token is empty or longer than 4096 bytes";
    pub const MALFORMED: &str =
        "token is not three base64url segments of a JSON header, JSON claims and a signature";
    pub const WRONG_TYPE: &str = "token type is not podgate-cap+jwt";
    pub const UNKNOWN_KEY: &str = "token has no kid or an unknown kid";
    pub const ALG_MISMATCH: &str = "token algorithm does not match its key";
    pub const FORBIDDEN_HEADER: &str =
        "token header carries a field that is never trusted (jku, jwk, x5u, x5c, crit, ...)";
    pub const BAD_SIGNATURE: &str = "token signature is invalid";
    pub const BAD_CLAIMS: &str = "token claims are missing or malformed";
    pub const EXPIRED: &str = "token has expired";
    pub const REVOKED: &str = "token has been revoked";
    pub const NOT_YET_VALID: &str = "token is not valid yet";
    pub const LIFETIME: &str = "token lives longer than its kind allows";
    pub const WRONG_ISSUER: &str = "token was issued by someone else";
}

const NO_CAPABILITY: &str = "No capability: sign in through podgate or send a capability token";
const WRONG_SCOPE: &str = "This capability is for another pod or port";

mod support_self_check {
    use crate::support::*;

    #[test]
    fn hashing_and_encoding_helpers_match_their_specs() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(&[b'a'; 1000])),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        for n in 0..10 {
            let bytes: Vec<u8> = (0..n)
                .map(|i: u8| i.wrapping_mul(37).wrapping_add(250))
                .collect();
            assert_eq!(unb64(&b64(&bytes)), bytes);
        }
        assert_eq!(b64(b"\xfb\xff"), "-_8");
    }
}

mod abi;
mod answers;
mod cache;
mod cost;
mod cross_pod;
mod hosts;
mod lapsed;
mod metrics;
mod pod_responses;
mod preflight;
mod renewal;
mod stripping;
mod tokens;
mod websocket;
mod websocket_expiry;
