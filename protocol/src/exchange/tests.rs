//! The pure pieces of API-token exchanges: the token's shape, the cache key, the call's
//! client address, and the per-worker caches (the refusals' bound and lifetime included).
//! Through a `Gate`, with the control plane's answers judged: `gate/exchange_tests.rs`.

use super::*;
use crate::token::tests::{claims, NOW};
use crate::token::PodClaims;

const TOKEN: &str =
    "pg_0123456789abcdef01234567_abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst";

fn pod(slug: &str, port: u16) -> PodAddr {
    PodAddr {
        pod: slug.into(),
        port,
    }
}

/// A verified capability expiring at `exp`, without its token (the caches never read it).
fn cap(exp: i64) -> Rc<Verified> {
    Rc::new(Verified {
        claims: PodClaims {
            jti: format!("j{exp}"),
            ..claims()
        },
        sid: None,
        res: None,
        issued_at: NOW,
        expires_at: exp,
        kid: "k".into(),
        token: None,
    })
}

#[test]
fn only_the_exact_shape_of_an_api_token_is_well_formed() {
    assert!(well_formed(TOKEN));
    assert!(is_api_token(TOKEN));
    for bad in [
        "pg_",
        "pg_short",
        &TOKEN[..TOKEN.len() - 1],
        &format!("{TOKEN}a"),
        &TOKEN.replace("pg_", "pk_"),
        &TOKEN.to_uppercase(),
        // A hex id with a letter past `f`, a secret with a digit base32 lacks.
        &TOKEN.replacen('0', "g", 1),
        &TOKEN.replace('2', "1"),
        &TOKEN.replace("_abc", "-abc"),
    ] {
        assert!(!well_formed(bad), "{bad}");
    }
    assert!(!is_api_token("eyJhbGciOi"));
}

#[test]
fn the_key_binds_the_token_the_pod_and_the_port() {
    let k = key(TOKEN, &pod("alpha", 8726), None);
    assert_eq!(k, key(TOKEN, &pod("alpha", 8726), None));
    assert_ne!(k, key(TOKEN, &pod("alpha", 8727), None));
    assert_ne!(k, key(TOKEN, &pod("beta", 8726), None));
    let other = TOKEN.replace("abc", "abd");
    assert_ne!(k, key(&other, &pod("alpha", 8726), None));
    // Length-prefixed: moving bytes between the token and the pod changes the key.
    assert_ne!(
        key("pg_ab", &pod("c", 1), None),
        key("pg_a", &pod("bc", 1), None)
    );
}

#[test]
fn the_key_binds_the_resource() {
    let svc = pod("chat", 0);
    let a1 = key(TOKEN, &svc, Some("/sessions/a1"));
    assert_eq!(a1, key(TOKEN, &svc, Some("/sessions/a1")));
    assert_ne!(a1, key(TOKEN, &svc, Some("/sessions/b1")));
    assert_ne!(a1, key(TOKEN, &svc, None));
    assert_ne!(key(TOKEN, &svc, Some("")), key(TOKEN, &svc, None));
}

#[test]
fn the_client_address_drops_the_port() {
    assert_eq!(client_ip("10.1.2.3:5555"), "10.1.2.3");
    assert_eq!(client_ip("[::1]:5555"), "::1");
    assert_eq!(client_ip("10.1.2.3"), "10.1.2.3");
    assert_eq!(client_ip("::1"), "::1");
}

#[test]
fn a_grant_lasts_until_the_capability_expires() {
    let mut cache = ExchangeCache::default();
    let k = key(TOKEN, &pod("alpha", 8726), None);
    assert_eq!(cache.lookup(&k, NOW), Lookup::Miss);
    let granted = Exchanged::Granted(cap(NOW + 60), "t".into());
    cache.record(k, &granted, NOW);
    assert!(matches!(cache.lookup(&k, NOW + 59), Lookup::Granted(_)));
    assert_eq!(cache.lookup(&k, NOW + 60), Lookup::Miss);
    assert!(cache.is_empty(), "an expired grant is dropped");
    cache.record(k, &granted, NOW);
    cache.forget(&k);
    assert_eq!(cache.lookup(&k, NOW), Lookup::Miss);
}

#[test]
fn a_refusal_is_remembered_briefly_and_busy_or_failed_not_at_all() {
    let mut cache = ExchangeCache::default();
    let k = key(TOKEN, &pod("alpha", 8726), None);
    for passing in [Exchanged::Busy(3), Exchanged::Failed] {
        cache.record(k, &passing, NOW);
        assert_eq!(cache.lookup(&k, NOW), Lookup::Miss);
    }
    cache.record(k, &Exchanged::Refused(Refusal::BadToken), NOW);
    assert_eq!(
        cache.lookup(&k, NOW + REFUSED_TTL_SECS - 1),
        Lookup::Refused(Refusal::BadToken)
    );
    assert_eq!(cache.lookup(&k, NOW + REFUSED_TTL_SECS), Lookup::Miss);
    // A refusal replaces a grant, and a grant a refusal.
    cache.record(k, &Exchanged::Granted(cap(NOW + 60), "t".into()), NOW);
    cache.record(k, &Exchanged::Refused(Refusal::NotAllowed), NOW);
    assert_eq!(cache.lookup(&k, NOW), Lookup::Refused(Refusal::NotAllowed));
    cache.record(k, &Exchanged::Granted(cap(NOW + 60), "t".into()), NOW);
    assert!(matches!(cache.lookup(&k, NOW), Lookup::Granted(_)));
}

#[test]
fn a_flood_of_refusals_stays_bounded_and_spares_the_grants() {
    let mut cache = ExchangeCache::default();
    let good = key(TOKEN, &pod("alpha", 8726), None);
    cache.record(good, &Exchanged::Granted(cap(NOW + 600), "t".into()), NOW);
    for i in 0..(3 * MAX_REFUSED) {
        let wrong = format!("pg_{i:024x}_{}", "a".repeat(52));
        let k = key(&wrong, &pod("alpha", 8726), None);
        cache.record(k, &Exchanged::Refused(Refusal::BadToken), NOW);
        let (_, refused) = cache.len();
        assert!(refused <= MAX_REFUSED, "{refused} refusals held");
    }
    assert!(matches!(cache.lookup(&good, NOW), Lookup::Granted(_)));
    // Expired refusals make room before anything is cleared.
    let later = NOW + REFUSED_TTL_SECS;
    let last = key(TOKEN, &pod("beta", 1), None);
    cache.record(last, &Exchanged::Refused(Refusal::BadToken), later);
    assert_eq!(cache.len(), (1, 1));
}

#[test]
fn grants_stay_bounded() {
    let mut cache = ExchangeCache::default();
    for i in 0..(2 * MAX_GRANTED) {
        let t = format!("pg_{i:024x}_{}", "a".repeat(52));
        cache.record(
            key(&t, &pod("alpha", 1), None),
            &Exchanged::Granted(cap(NOW + 60), "t".into()),
            NOW,
        );
        assert!(cache.len().0 <= MAX_GRANTED);
    }
}

#[test]
fn the_retry_after_of_an_answer_is_read() {
    let wire = crate::wire::encode_header_map(&[(":status", "429"), ("Retry-After", "7")]);
    assert_eq!(call_retry_after(&wire), Some(7));
    let wire = crate::wire::encode_header_map(&[(":status", "429")]);
    assert_eq!(call_retry_after(&wire), None);
}

#[test]
fn a_client_the_control_plane_limits_waits_here() {
    let mut backoff = ClientBackoff::default();
    assert_eq!(backoff.waiting("10.0.0.1", NOW), None);
    backoff.back_off("10.0.0.1", 30, NOW);
    assert_eq!(backoff.waiting("10.0.0.1", NOW), Some(30));
    assert_eq!(backoff.waiting("10.0.0.1", NOW + 29), Some(1));
    assert_eq!(backoff.waiting("10.0.0.1", NOW + 30), None);
    assert_eq!(backoff.waiting("10.0.0.2", NOW), None, "per client");
    for i in 0..(2 * MAX_BACKED_OFF) {
        backoff.back_off(&format!("c{i}"), 30, NOW);
        assert!(backoff.len() <= MAX_BACKED_OFF);
    }
}

#[test]
fn a_new_configuration_keeps_grants_unconfirmed_and_drops_refusals() {
    let mut cache = ExchangeCache::default();
    let good = key(TOKEN, &pod("alpha", 8726), None);
    let bad = key(TOKEN, &pod("beta", 8726), None);
    cache.record(
        good,
        &Exchanged::Granted(cap(NOW + 60), "cap-token".into()),
        NOW,
    );
    cache.record(bad, &Exchanged::Refused(Refusal::BadToken), NOW);
    cache.new_configuration();
    assert_eq!(
        cache.lookup(&bad, NOW),
        Lookup::Miss,
        "access may have been granted"
    );
    assert_eq!(
        cache.lookup(&good, NOW),
        Lookup::Unconfirmed("cap-token".into()),
        "verified again under the new keys before use"
    );
    cache.confirm(&good, cap(NOW + 60));
    assert!(matches!(cache.lookup(&good, NOW), Lookup::Granted(_)));
}
