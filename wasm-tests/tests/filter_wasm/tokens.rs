//! RFC 8725 classes through the compiled filter.
use crate::reasons;
use crate::support::*;
use serde_json::json;

/// Fuel of a no-token request on alpha (the cheapest denial).
fn no_token_fuel() -> u64 {
    let mut vm = vm();
    Req::alpha().send(&mut vm).fuel
}

/// A malformed token of ordinary size (≤ 1 KiB) must cost less than this multiple of a
/// no-token request. Such a token is still hashed for the cache key and base64url and JSON
/// decoded before it is refused, so it costs a few times a no-token request; the bound stays
/// far below one signature check (asserted too).
const CHEAP_FACTOR: u64 = 6;
/// Oversized tokens (over the 4 KiB `MAX_TOKEN_LEN`) are refused before hashing or parsing;
/// what is left is reading the header, linear in its size (`Authorization` costs more per
/// byte: it is searched for our tokens in any form). Bound: twice the no-token cost plus 12
/// fuel per byte, well below one EdDSA verification for a 64 KiB header.
const FUEL_PER_HEADER_BYTE: u64 = 12;

/// A malformed token costs less than this fraction of a request that checks a signature: it
/// never reaches the check (an EdDSA check is about thirty times the costliest malformed case).
const BELOW_A_CHECK: u64 = 20;

/// Fuel of one uncached EdDSA verification (a forwarded request).
fn signature_check_fuel() -> u64 {
    let mut vm = vm();
    Req::alpha().token(&alpha_cap()).send(&mut vm).fuel
}

fn format_cases() -> Vec<(&'static str, String, &'static str)> {
    let good = alpha_cap();
    let s = segments(&good);
    let (h, c, sig) = (s[0], s[1], s[2]);
    vec![
        ("empty", String::new(), reasons::SIZE),
        ("blank", "   ".into(), reasons::SIZE),
        ("one segment", "abc".into(), reasons::MALFORMED),
        ("two segments", format!("{h}.{c}"), reasons::MALFORMED),
        (
            "four segments",
            format!("{h}.{c}.{sig}.x"),
            reasons::MALFORMED,
        ),
        ("only dots", "..".into(), reasons::MALFORMED),
        (
            "empty signature",
            format!("{h}.{c}."),
            reasons::BAD_SIGNATURE,
        ),
        ("padding", format!("{h}=.{c}.{sig}"), reasons::MALFORMED),
        (
            "padded claims",
            format!("{h}.{c}==.{sig}"),
            reasons::MALFORMED,
        ),
        ("plus", format!("{h}.{c}+.{sig}"), reasons::MALFORMED),
        ("slash", format!("{h}.{c}/.{sig}"), reasons::MALFORMED),
        (
            "standard alphabet signature",
            format!("{h}.{c}.{}", sig.replace('-', "+").replace('_', "/") + "+/"),
            reasons::MALFORMED,
        ),
        (
            "header is an array",
            format!("{}.{c}.{sig}", b64(b"[1,2]")),
            reasons::MALFORMED,
        ),
        (
            "header is a string",
            format!("{}.{c}.{sig}", b64(b"\"EdDSA\"")),
            reasons::MALFORMED,
        ),
        (
            "header is null",
            format!("{}.{c}.{sig}", b64(b"null")),
            reasons::MALFORMED,
        ),
        (
            "header is truncated JSON",
            format!("{}.{c}.{sig}", b64(b"{\"alg\":")),
            reasons::MALFORMED,
        ),
        (
            "header is not JSON",
            format!("{}.{c}.{sig}", b64(b"\xff\xfe")),
            reasons::MALFORMED,
        ),
    ]
}

#[test]
fn malformed_tokens_are_401_and_cheap() {
    let base = no_token_fuel();
    let signature = signature_check_fuel();
    let mut vm = vm();
    for (name, token, reason) in format_cases() {
        assert!(token.len() <= 1024, "{name}");
        let sent = Req::alpha().token(&token).send(&mut vm);
        sent.invalid(reason);
        assert!(
            sent.fuel < CHEAP_FACTOR * base,
            "{name}: {} fuel vs {base} for no token",
            sent.fuel
        );
        assert!(
            sent.fuel * BELOW_A_CHECK < signature,
            "{name}: {} vs {signature}",
            sent.fuel
        );
        // The same through the cookie.
        Req::alpha().cookie(&token).send(&mut vm).invalid(reason);
    }
    // The positive control through the same VM.
    Req::alpha().token(&alpha_cap()).send(&mut vm).forwarded();
}

/// Tokens over the 4 KiB limit (`MAX_TOKEN_LEN`). As cookies, those that fit the 64 KiB
/// cookie scan limit are candidates; the last is over it.
fn oversized_tokens() -> Vec<(&'static str, String)> {
    vec![
        ("4097 bytes", "a".repeat(4097)),
        ("16 000 bytes", "a".repeat(16_000)),
        ("64 KiB", "a".repeat(64 * 1024)),
        ("64 KiB of base64url segments", {
            let seg = "A".repeat(21 * 1024);
            format!("{seg}.{seg}.{seg}")
        }),
        ("100 000 dots", ".".repeat(100_000)),
    ]
}

fn cheap_bound(base: u64, token: &str) -> u64 {
    2 * base + FUEL_PER_HEADER_BYTE * token.len() as u64
}

#[test]
fn oversized_tokens_are_401_and_never_kill_the_vm() {
    let mut vm = vm();
    for (name, token) in oversized_tokens() {
        Req::alpha()
            .token(&token)
            .send(&mut vm)
            .invalid(reasons::SIZE);
        let cookie = Req::alpha().cookie(&token).send(&mut vm);
        if COOKIE.len() + 1 + token.len() <= podgate_protocol::cookie::MAX_COOKIE_HEADER_LEN {
            cookie.invalid(reasons::SIZE);
        } else {
            // Over the cookie scan limit: no candidate at all.
            assert_eq!(cookie.unauthorized(), crate::NO_CAPABILITY, "{name}");
        }
        // Too big to be one of ours, so the app's: no capability.
        let bearer = Req::alpha().bearer(&token).send(&mut vm);
        assert_eq!(bearer.unauthorized(), crate::NO_CAPABILITY, "{name}");
    }
    Req::alpha().token(&alpha_cap()).send(&mut vm).forwarded();
}

#[test]
fn oversized_tokens_are_refused_cheaply_on_every_path() {
    let base = no_token_fuel();
    let mut vm = vm();
    for (name, token) in oversized_tokens() {
        let bound = cheap_bound(base, &token);
        for (path, req) in [
            ("podgate-token", Req::alpha().token(&token)),
            ("bearer", Req::alpha().bearer(&token)),
            ("cookie", Req::alpha().cookie(&token)),
        ] {
            let sent = req.send(&mut vm);
            assert!(sent.fuel < bound, "{name} {path}: {} >= {bound}", sent.fuel);
        }
    }
}

#[test]
fn alg_none_in_any_casing_is_refused() {
    let mut vm = vm();
    let good = alpha_cap();
    for alg in ["none", "None", "NONE", "nOnE", "nonE"] {
        let header = json!({"alg": alg, "typ": CAP_TYP, "kid": "cap-ed1"});
        let signed = with_header(&good, &header);
        let s = segments(&signed);
        let unsigned = format!("{}.{}.", s[0], s[1]);
        for token in [signed.clone(), unsigned] {
            Req::alpha()
                .token(&token)
                .send(&mut vm)
                .invalid(reasons::ALG_MISMATCH);
        }
    }
    // No alg at all.
    let token = with_header(&good, &json!({"typ": CAP_TYP, "kid": "cap-ed1"}));
    assert_eq!(Req::alpha().token(&token).send(&mut vm).status(), Some(401));
}

#[test]
fn hs256_signed_with_the_eddsa_public_key_is_refused() {
    let key = ed_key(1);
    let public = unb64(key.verifying_jwk().x.as_deref().unwrap());
    assert_eq!(public.len(), 32);
    let claims = claims_json("alpha", PORT, NOW, 600);
    let confused = hs_sign(&public, &header_json("HS256", "cap-ed1"), &claims);
    let mut vm = vm();
    Req::alpha()
        .token(&confused)
        .send(&mut vm)
        .invalid(reasons::ALG_MISMATCH);
    // Also with the JWK's base64url text as the secret (another classic confusion).
    let as_text = hs_sign(
        key.verifying_jwk().x.unwrap().as_bytes(),
        &header_json("HS256", "cap-ed1"),
        &claims,
    );
    Req::alpha()
        .token(&as_text)
        .send(&mut vm)
        .invalid(reasons::ALG_MISMATCH);
    Req::alpha().token(&alpha_cap()).send(&mut vm).forwarded();
}

#[test]
fn an_algorithm_other_than_the_keys_is_refused() {
    let good = alpha_cap();
    let mut vm = vm();
    for alg in ["ES256", "HS256", "RS256", "PS256", "EdDSA "] {
        let token = with_header(&good, &header_json(alg, "cap-ed1"));
        Req::alpha()
            .token(&token)
            .send(&mut vm)
            .invalid(reasons::ALG_MISMATCH);
    }
    // And the other way round: an ES256 key with EdDSA or HS256 headers.
    let es = es_key();
    let mut vm = vm_with(&config(&[&es]));
    let es_token = cap(&es, "alpha", PORT);
    Req::alpha().token(&es_token).send(&mut vm).forwarded();
    for alg in ["EdDSA", "HS256", "ES384"] {
        let token = with_header(&es_token, &header_json(alg, "cap-es"));
        Req::alpha()
            .token(&token)
            .send(&mut vm)
            .invalid(reasons::ALG_MISMATCH);
    }
    // HS256 key: an EdDSA header is refused before any crypto.
    let mut vm = vm_with(&config(&[&hs_key()]));
    let hs_token = cap(&hs_key(), "alpha", PORT);
    Req::alpha().token(&hs_token).send(&mut vm).forwarded();
    let token = with_header(&hs_token, &header_json("EdDSA", "cap-hs"));
    Req::alpha()
        .token(&token)
        .send(&mut vm)
        .invalid(reasons::ALG_MISMATCH);
}

#[test]
fn untrusted_key_sources_and_crit_in_the_header_are_refused() {
    let good = alpha_cap();
    let mut vm = vm();
    let public_jwk = serde_json::to_value(ed_key(1).verifying_jwk()).unwrap();
    let cases = [
        ("jwk", public_jwk),
        ("jku", json!("https://evil.example/jwks.json")),
        ("x5u", json!("https://evil.example/cert.pem")),
        ("x5c", json!(["MIIBszCCAVmgAwIBAgIU"])),
        ("x5t", json!(b64(&[1u8; 20]))),
        ("x5t#S256", json!(b64(&[1u8; 32]))),
        ("crit", json!(["exp"])),
        ("crit", json!(["x-podgate-unknown"])),
        ("crit", json!([])),
        ("b64", json!(false)),
        ("zip", json!("DEF")),
    ];
    for (field, value) in cases {
        let mut header = header_json("EdDSA", "cap-ed1");
        header[field] = value;
        let token = with_header(&good, &header);
        Req::alpha()
            .token(&token)
            .send(&mut vm)
            .invalid(reasons::FORBIDDEN_HEADER);
    }
    // Re-signed with the real key material over a header with jku (HS256 so we can sign any
    // header): still refused, the signature being valid changes nothing.
    let mut vm = vm_with(&config(&[&hs_key()]));
    let mut header = header_json("HS256", "cap-hs");
    header["jku"] = json!("https://evil.example/jwks.json");
    let token = hs_sign(&HS_SECRET, &header, &claims_json("alpha", PORT, NOW, 600));
    Req::alpha()
        .token(&token)
        .send(&mut vm)
        .invalid(reasons::FORBIDDEN_HEADER);
    // Control: the same without jku passes.
    let token = hs_sign(
        &HS_SECRET,
        &header_json("HS256", "cap-hs"),
        &claims_json("alpha", PORT, NOW, 600),
    );
    Req::alpha().token(&token).send(&mut vm).forwarded();
}

#[test]
fn unknown_or_missing_kid_is_refused() {
    let good = alpha_cap();
    let mut vm = vm();
    for header in [
        header_json("EdDSA", "cap-other"),
        header_json("EdDSA", "cap-ed2"),
        header_json("EdDSA", ""),
        json!({"alg": "EdDSA", "typ": CAP_TYP}),
    ] {
        Req::alpha()
            .token(&with_header(&good, &header))
            .send(&mut vm)
            .invalid(reasons::UNKNOWN_KEY);
    }
    // A token really signed by a key the filter does not have.
    let stranger = cap(&ed_key(2), "alpha", PORT);
    Req::alpha()
        .token(&stranger)
        .send(&mut vm)
        .invalid(reasons::UNKNOWN_KEY);
}

#[test]
fn wrong_or_missing_typ_is_refused() {
    let good = alpha_cap();
    let mut vm = vm();
    for typ in [
        Some("JWT"),
        Some("PODGATE-CAP+JWT"),
        Some("podgate-ticket+jwt"),
        Some("podgate-cap"),
        None,
    ] {
        let mut header = json!({"alg": "EdDSA", "kid": "cap-ed1"});
        if let Some(typ) = typ {
            header["typ"] = typ.into();
        }
        Req::alpha()
            .token(&with_header(&good, &header))
            .send(&mut vm)
            .invalid(reasons::WRONG_TYPE);
    }
}

#[test]
fn a_login_ticket_is_never_a_capability() {
    let tkt = ticket_key();
    let cap_key = ed_key(1);
    // The config carries the ticket key too (capability verifiers ignore `tkt-` kids).
    let mut vm = vm_with(&config(&[&cap_key, &tkt]));
    let claims = claims("alpha", PORT);
    let ticket = podgate_protocol::token::mint(
        podgate_protocol::token::TokenKind::LoginTicket,
        &tkt,
        &claims,
        NOW,
        60,
    )
    .unwrap();
    Req::alpha()
        .token(&ticket)
        .send(&mut vm)
        .invalid(reasons::WRONG_TYPE);
    Req::alpha()
        .cookie(&ticket)
        .send(&mut vm)
        .invalid(reasons::WRONG_TYPE);
    // As a bearer it is ours (a podgate typ): a candidate, refused as a capability, and
    // stripped when another credential authenticates.
    Req::alpha()
        .bearer(&ticket)
        .send(&mut vm)
        .invalid(reasons::WRONG_TYPE);
    let sent = Req::alpha()
        .token(&alpha_cap())
        .bearer(&ticket)
        .send(&mut vm);
    assert_eq!(sent.fwd1("authorization"), None);
    // A capability typ signed with the ticket key: the kid belongs to the other kind.
    let forged = cap_with(&tkt, &claims, NOW, 60);
    Req::alpha()
        .token(&forged)
        .send(&mut vm)
        .invalid(reasons::UNKNOWN_KEY);
    // A ticket header re-labelled as capability keeps the ticket signature: refused.
    let relabelled = with_header(&ticket, &header_json("EdDSA", "tkt-ed1"));
    Req::alpha()
        .token(&relabelled)
        .send(&mut vm)
        .invalid(reasons::UNKNOWN_KEY);
    Req::alpha()
        .token(&cap(&cap_key, "alpha", PORT))
        .send(&mut vm)
        .forwarded();
}

/// One request at `secs` on a fresh VM (so no cache is involved).
fn at(cfg: &serde_json::Value, secs: i64, token: &str) -> Sent {
    let mut vm = vm_with(cfg);
    vm.set_time_secs(secs as u64);
    Req::alpha().token(token).send(&mut vm)
}

#[test]
fn expiry_and_not_before_at_the_leeway_boundary() {
    let key = ed_key(1);
    let cfg = config(&[&key]);
    let token = cap_with(&key, &claims("alpha", PORT), NOW, 600);
    // exp = NOW+600, leeway 30: valid through NOW+629, expired at NOW+630.
    at(&cfg, NOW + 600 + LEEWAY - 1, &token).forwarded();
    at(&cfg, NOW + 600 + LEEWAY, &token).invalid(reasons::EXPIRED);
    // iat = NOW: valid from NOW-30, not yet valid at NOW-31.
    at(&cfg, NOW - LEEWAY, &token).forwarded();
    at(&cfg, NOW - LEEWAY - 1, &token).invalid(reasons::NOT_YET_VALID);
    // With leeway_secs 0 the boundaries move to exp and iat exactly.
    let mut strict = cfg.clone();
    strict["leeway_secs"] = 0.into();
    at(&strict, NOW + 599, &token).forwarded();
    at(&strict, NOW + 600, &token).invalid(reasons::EXPIRED);
    at(&strict, NOW, &token).forwarded();
    at(&strict, NOW - 1, &token).invalid(reasons::NOT_YET_VALID);
    // With leeway_secs 300.
    let mut loose = cfg;
    loose["leeway_secs"] = 300.into();
    at(&loose, NOW + 899, &token).forwarded();
    at(&loose, NOW + 900, &token).invalid(reasons::EXPIRED);
}

#[test]
fn nbf_is_enforced_with_the_leeway() {
    let cfg = config(&[&hs_key()]);
    let mut claims = claims_json("alpha", PORT, NOW, 600);
    claims["nbf"] = (NOW + 100).into();
    let token = hs_token(&claims);
    at(&cfg, NOW + 100 - LEEWAY - 1, &token).invalid(reasons::NOT_YET_VALID);
    at(&cfg, NOW + 100 - LEEWAY, &token).forwarded();
}

#[test]
fn missing_or_mistyped_time_claims_are_refused() {
    let cfg = config(&[&hs_key()]);
    let mut vm = vm_with(&cfg);
    let base = claims_json("alpha", PORT, NOW, 600);
    Req::alpha()
        .token(&hs_token(&base))
        .send(&mut vm)
        .forwarded();
    let cases: Vec<(&str, Option<serde_json::Value>)> = vec![
        ("exp", None),
        ("exp", Some(json!((NOW + 600).to_string()))),
        ("exp", Some(json!(null))),
        ("exp", Some(json!(true))),
        ("exp", Some(json!([NOW + 600]))),
        ("exp", Some(json!({"t": NOW + 600}))),
        ("exp", Some(json!(1.5e300))),
        ("iat", None),
        ("iat", Some(json!(NOW.to_string()))),
        ("nbf", Some(json!("soon"))),
    ];
    for (field, value) in cases {
        let mut claims = base.clone();
        match value {
            Some(v) => claims[field] = v,
            None => {
                claims.as_object_mut().unwrap().remove(field);
            }
        }
        let sent = Req::alpha().token(&hs_token(&claims)).send(&mut vm);
        assert_eq!(sent.status(), Some(401), "{field}: {claims}");
        sent.invalid(reasons::BAD_CLAIMS);
    }
}

#[test]
fn wrong_or_missing_identity_claims_are_refused() {
    let cfg = config(&[&hs_key()]);
    let mut vm = vm_with(&cfg);
    let base = claims_json("alpha", PORT, NOW, 600);
    let mut cases: Vec<(serde_json::Value, &str)> = Vec::new();
    for (field, value, reason) in [
        (
            "iss",
            Some(json!("https://evil.example")),
            reasons::WRONG_ISSUER,
        ),
        (
            "iss",
            Some(json!("http://127.0.0.1:8080/")),
            reasons::WRONG_ISSUER,
        ),
        ("iss", None, reasons::BAD_CLAIMS),
        (
            "iss",
            Some(json!(["http://127.0.0.1:8080"])),
            reasons::BAD_CLAIMS,
        ),
        ("aud", None, reasons::BAD_CLAIMS),
        (
            "aud",
            Some(json!([host("alpha", PORT)])),
            reasons::BAD_CLAIMS,
        ),
        ("aud", Some(json!("")), reasons::BAD_CLAIMS),
        ("sub", None, reasons::BAD_CLAIMS),
        ("sub", Some(json!("")), reasons::BAD_CLAIMS),
        ("jti", None, reasons::BAD_CLAIMS),
        ("pod", None, reasons::BAD_CLAIMS),
        ("port", None, reasons::BAD_CLAIMS),
        ("port", Some(json!("8726")), reasons::BAD_CLAIMS),
        ("port", Some(json!(70000)), reasons::BAD_CLAIMS),
    ] {
        let mut claims = base.clone();
        match value {
            Some(v) => claims[field] = v,
            None => {
                claims.as_object_mut().unwrap().remove(field);
            }
        }
        cases.push((claims, reason));
    }
    for (claims, reason) in cases {
        let sent = Req::alpha().token(&hs_token(&claims)).send(&mut vm);
        assert_eq!(sent.status(), Some(401), "{claims}");
        sent.invalid(reason);
    }
}

#[test]
fn a_valid_token_scoped_elsewhere_by_any_one_claim_is_403() {
    let cfg = config(&[&hs_key()]);
    let mut vm = vm_with(&cfg);
    let base = claims_json("alpha", PORT, NOW, 600);
    for (field, value) in [
        ("aud", json!(host("beta", PORT))),
        ("aud", json!(format!("{}:10000", host("alpha", PORT)))),
        ("aud", json!(format!("{}.", host("alpha", PORT)))),
        ("aud", json!(format!("http://{}", host("alpha", PORT)))),
        ("aud", json!(host("alpha", PORT).to_uppercase())),
        ("pod", json!("beta")),
        ("port", json!(8727)),
    ] {
        let mut claims = base.clone();
        claims[field] = value;
        let sent = Req::alpha().token(&hs_token(&claims)).send(&mut vm);
        assert_eq!(sent.error(403), crate::WRONG_SCOPE, "{claims}");
    }
}

#[test]
fn a_lifetime_over_the_configured_maximum_is_refused() {
    let key = ed_key(1);
    let mut vm = vm();
    let c = claims("alpha", PORT);
    Req::alpha()
        .token(&cap_with(&key, &c, NOW, MAX_LIFETIME))
        .send(&mut vm)
        .forwarded();
    Req::alpha()
        .token(&cap_with(&key, &c, NOW, MAX_LIFETIME + 1))
        .send(&mut vm)
        .invalid(reasons::LIFETIME);
    // A smaller configured maximum applies.
    let mut cfg = config(&[&key]);
    cfg["max_capability_lifetime_secs"] = 60.into();
    let mut vm = vm_with(&cfg);
    Req::alpha()
        .token(&cap_with(&key, &c, NOW, 60))
        .send(&mut vm)
        .forwarded();
    Req::alpha()
        .token(&cap_with(&key, &c, NOW, 61))
        .send(&mut vm)
        .invalid(reasons::LIFETIME);
    // exp before iat.
    let mut vm = vm_with(&config(&[&hs_key()]));
    let mut claims = claims_json("alpha", PORT, NOW, 0);
    claims["exp"] = (NOW + 10).into();
    claims["iat"] = (NOW + 20).into();
    Req::alpha()
        .token(&hs_token(&claims))
        .send(&mut vm)
        .invalid(reasons::LIFETIME);
}

#[test]
fn key_rotation_overlap_then_removal_even_for_cached_tokens() {
    let (old, new) = (ed_key(1), ed_key(2));
    let old_token = cap(&old, "alpha", PORT);
    let new_token = cap(&new, "alpha", PORT);
    let mut vm = vm_with(&config(&[&old]));
    Req::alpha().token(&old_token).send(&mut vm).forwarded();
    Req::alpha()
        .token(&new_token)
        .send(&mut vm)
        .invalid(reasons::UNKNOWN_KEY);
    // Overlap window: both verify.
    assert!(push(&mut vm, &config(&[&old, &new])));
    Req::alpha().token(&old_token).send(&mut vm).forwarded();
    Req::alpha().token(&new_token).send(&mut vm).forwarded();
    // The old token is cached now (a hit, no signature check).
    let hits = metric(&mut vm, "podgate.token_cache.hits");
    Req::alpha().token(&old_token).send(&mut vm).forwarded();
    assert_eq!(metric(&mut vm, "podgate.token_cache.hits"), hits + 1);
    // Old key removed: the old token is refused although it was cached before the push.
    assert!(push(&mut vm, &config(&[&new])));
    Req::alpha()
        .token(&old_token)
        .send(&mut vm)
        .invalid(reasons::UNKNOWN_KEY);
    Req::alpha().token(&new_token).send(&mut vm).forwarded();
}

#[test]
fn an_empty_key_set_after_a_push_denies_everything() {
    let key = ed_key(1);
    let token = alpha_cap();
    let mut vm = vm();
    Req::alpha().token(&token).send(&mut vm).forwarded();
    Req::alpha().token(&token).send(&mut vm).forwarded(); // cached
    assert!(push(&mut vm, &config(&[])));
    Req::alpha()
        .token(&token)
        .send(&mut vm)
        .invalid(reasons::UNKNOWN_KEY);
    Req::alpha()
        .cookie(&token)
        .send(&mut vm)
        .invalid(reasons::UNKNOWN_KEY);
    for pod in ["beta", "sleepy", "ghost"] {
        let t = cap(&key, pod, PORT);
        Req::to(pod, PORT)
            .token(&t)
            .send(&mut vm)
            .invalid(reasons::UNKNOWN_KEY);
    }
    // A bearer with our typ is still recognised as ours and refused (not passed through).
    let sent = Req::alpha().bearer(&token).send(&mut vm);
    sent.invalid(reasons::UNKNOWN_KEY);
    // Only the callback path, which needs no token, still goes (to the control plane).
    let cb = Req::alpha()
        .path("/.podgate/callback?ticket=x")
        .send(&mut vm);
    assert_eq!(cb.fwd1("x-podgate-cluster"), Some("podgate_control_plane"));
}

#[test]
fn an_invalid_key_set_is_refused_at_configure() {
    let short = json!({"kty": "oct", "kid": "cap-short", "alg": "HS256", "k": b64(&[7u8; 31])});
    let exact = json!({"kty": "oct", "kid": "cap-exact", "alg": "HS256", "k": b64(&[7u8; 32])});
    let broken_ed =
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "cap-bad", "alg": "EdDSA", "x": "AAAA"});
    let rsa = json!({"kty": "RSA", "kid": "cap-rsa", "alg": "RS256", "n": "AQAB", "e": "AQAB"});
    let dup = serde_json::to_value(ed_key(1).verifying_jwk()).unwrap();
    for (name, keys, accepted) in [
        ("HMAC 248 bits", json!([short]), false),
        ("HMAC 256 bits", json!([exact]), true),
        ("Ed25519 key too short", json!([broken_ed]), false),
        ("RSA", json!([rsa]), false),
        ("duplicate kid", json!([dup, dup]), false),
    ] {
        let mut cfg = config(&[]);
        cfg["keys"]["keys"] = keys;
        let mut vm = bare_vm();
        assert_eq!(push(&mut vm, &cfg), accepted, "{name}");
        if !accepted {
            // Fail closed: still unconfigured.
            assert_eq!(
                Req::alpha().token(&alpha_cap()).send(&mut vm).status(),
                Some(500),
                "{name}"
            );
        }
    }
}

#[test]
fn our_bearer_is_accepted_in_any_scheme_casing() {
    let token = alpha_cap();
    let mut vm = vm();
    for auth in [
        format!("Bearer {token}"),
        format!("bearer {token}"),
        format!("BEARER {token}"),
        format!("Bearer   {token}  "),
    ] {
        let sent = Req::alpha().add("authorization", &auth).send(&mut vm);
        assert_eq!(sent.fwd1("authorization"), None, "{auth}");
        assert_eq!(sent.fwd1("x-podgate-user"), Some("user-1"));
    }
    // Tampered bearer with our typ: ours, so refused (not passed to the app).
    Req::alpha()
        .bearer(&tamper_signature(&token))
        .send(&mut vm)
        .invalid(reasons::BAD_SIGNATURE);
}
