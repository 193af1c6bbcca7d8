//! The per-worker verified-token cache: it saves signature checks and never extends a token.
use crate::reasons;
use crate::support::*;

#[test]
fn fifty_requests_with_one_token_verify_once() {
    let mut vm = vm();
    let t = alpha_cap();
    let mut fuel = Vec::new();
    for _ in 0..50 {
        let sent = Req::alpha().cookie(&t).send(&mut vm);
        sent.forwarded();
        fuel.push(sent.fuel);
    }
    assert_eq!(metric(&mut vm, "podgate.token_cache.misses"), 1);
    assert_eq!(metric(&mut vm, "podgate.token_cache.hits"), 49);
    assert_eq!(metric(&mut vm, "podgate.allowed"), 50);
    // A cached request skips the signature check: it must cost under a twentieth of the first.
    let uncached = fuel[0];
    for cached in &fuel[1..] {
        assert!(
            cached * 20 < uncached,
            "cached {cached} vs uncached {uncached}"
        );
    }
    // Stable: cached requests cost within 5% of each other (the hash map's state moves the
    // cost a little from one request to the next).
    let (lo, hi) = (
        fuel[1..].iter().min().unwrap(),
        fuel[1..].iter().max().unwrap(),
    );
    assert!(hi * 100 < lo * 105, "{fuel:?}");
}

#[test]
fn expiry_is_enforced_on_cached_tokens() {
    let mut vm = vm();
    let t = alpha_cap(); // exp = NOW + 900
    Req::alpha().token(&t).send(&mut vm).forwarded();
    vm.set_time_secs((NOW + LIFETIME + LEEWAY - 1) as u64);
    Req::alpha().token(&t).send(&mut vm).forwarded();
    assert_eq!(metric(&mut vm, "podgate.token_cache.hits"), 1);
    vm.set_time_secs((NOW + LIFETIME + LEEWAY) as u64);
    Req::alpha()
        .token(&t)
        .send(&mut vm)
        .invalid(reasons::EXPIRED);
    // That was answered from the cache (no second signature check).
    assert_eq!(metric(&mut vm, "podgate.token_cache.misses"), 1);
    assert_eq!(metric(&mut vm, "podgate.token_cache.hits"), 2);
    // And later still.
    vm.set_time_secs((NOW + 86_400) as u64);
    Req::alpha()
        .token(&t)
        .send(&mut vm)
        .invalid(reasons::EXPIRED);
}

#[test]
fn a_revoked_jti_is_refused_even_after_it_was_cached() {
    let mut vm = vm();
    let t = alpha_cap();
    let other = cap(&ed_key(1), "beta", PORT);
    Req::alpha().token(&t).send(&mut vm).forwarded();
    Req::alpha().token(&t).send(&mut vm).forwarded();
    assert_eq!(metric(&mut vm, "podgate.token_cache.hits"), 1);
    let mut cfg = config(&[&ed_key(1)]);
    cfg["revoked_jti"] = serde_json::json!(["jti-alpha-8726"]);
    assert!(push(&mut vm, &cfg));
    for _ in 0..3 {
        Req::alpha()
            .token(&t)
            .send(&mut vm)
            .invalid(reasons::REVOKED);
        Req::alpha().navigate().cookie(&t).send(&mut vm).redirect();
    }
    // Other tokens are unaffected.
    Req::to("beta", PORT)
        .token(&other)
        .send(&mut vm)
        .forwarded();
    // Revoked in the very first config: never accepted.
    let mut vm = vm_with(&cfg);
    Req::alpha()
        .token(&t)
        .send(&mut vm)
        .invalid(reasons::REVOKED);
}

#[test]
fn no_cache_means_every_request_verifies() {
    let mut cfg = config(&[&ed_key(1)]);
    cfg["token_cache_entries"] = 0.into();
    let mut vm = vm_with(&cfg);
    let t = alpha_cap();
    let cached_fuel = {
        let mut vm = crate::support::vm();
        Req::alpha().token(&t).send(&mut vm);
        Req::alpha().token(&t).send(&mut vm).fuel
    };
    for _ in 0..10 {
        let sent = Req::alpha().token(&t).send(&mut vm);
        sent.forwarded();
        assert!(
            sent.fuel > 20 * cached_fuel,
            "{} vs {cached_fuel}",
            sent.fuel
        );
    }
    assert_eq!(metric(&mut vm, "podgate.token_cache.hits"), 0);
    // Expiry without a cache.
    vm.set_time_secs((NOW + LIFETIME + LEEWAY) as u64);
    Req::alpha()
        .token(&t)
        .send(&mut vm)
        .invalid(reasons::EXPIRED);
}

#[test]
fn the_cache_stays_bounded_and_correct_with_many_tokens() {
    // HS256 so that minting 2 000 tokens natively is quick.
    let key = hs_key();
    let mut cfg = config(&[&key]);
    cfg["token_cache_entries"] = 16.into();
    let mut vm = vm_with(&cfg);
    let token_n = |n: usize, pod: &str| {
        let mut c = claims(pod, PORT);
        c.jti = format!("jti-{n}");
        c.sub = format!("user-{n}");
        cap_with(&key, &c, NOW, 600)
    };
    let first = token_n(0, "alpha");
    for n in 0..2000 {
        let t = token_n(n, "alpha");
        let sent = Req::alpha().token(&t).send(&mut vm);
        assert_eq!(
            sent.fwd1("x-podgate-user"),
            Some(format!("user-{n}").as_str())
        );
        if n % 97 == 0 {
            // Interleave denials: scoped elsewhere and tampered.
            let beta = token_n(n, "beta");
            assert_eq!(
                Req::alpha().token(&beta).send(&mut vm).error(403),
                crate::WRONG_SCOPE
            );
            Req::alpha()
                .token(&tamper_signature(&t))
                .send(&mut vm)
                .invalid(reasons::BAD_SIGNATURE);
        }
    }
    // Every distinct token was a miss; the cache never answered for a token it dropped.
    let misses = metric(&mut vm, "podgate.token_cache.misses");
    assert!(misses >= 2000, "{misses}");
    // The oldest token is long evicted: verified again, still correct.
    let before = metric(&mut vm, "podgate.token_cache.misses");
    let sent = Req::alpha().token(&first).send(&mut vm);
    assert_eq!(sent.fwd1("x-podgate-user"), Some("user-0"));
    assert_eq!(metric(&mut vm, "podgate.token_cache.misses"), before + 1);
    // Repeats within the bound hit.
    let hits = metric(&mut vm, "podgate.token_cache.hits");
    for _ in 0..5 {
        Req::alpha().token(&first).send(&mut vm).forwarded();
    }
    assert_eq!(metric(&mut vm, "podgate.token_cache.hits"), hits + 5);
    // Expiry still applies to whatever is cached.
    vm.set_time_secs((NOW + 600 + LEEWAY) as u64);
    Req::alpha()
        .token(&first)
        .send(&mut vm)
        .invalid(reasons::EXPIRED);
}

#[test]
fn a_cached_token_keeps_its_scope() {
    let mut vm = vm();
    let t = alpha_cap();
    Req::alpha().token(&t).send(&mut vm).forwarded();
    // Cached now; on other hosts it is still for alpha:8726 only.
    assert_eq!(
        Req::to("beta", PORT).token(&t).send(&mut vm).error(403),
        crate::WRONG_SCOPE
    );
    assert_eq!(
        Req::to("alpha", 8727).token(&t).send(&mut vm).error(403),
        crate::WRONG_SCOPE
    );
    assert_eq!(metric(&mut vm, "podgate.token_cache.misses"), 1);
    assert_eq!(metric(&mut vm, "podgate.token_cache.hits"), 2);
}
