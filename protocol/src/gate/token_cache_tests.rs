//! Native tests of the verified-token cache under the decision: it saves the signature check,
//! never extends a token, stays within its bound, and keeps apart keys that share a tail.

use std::rc::Rc;

use super::token_cache::check_token;
use super::*;
use crate::token::tests::{claims, NOW};
use crate::token::{mint, PodClaims, TokenKind};

use super::tests::{base, cap, config, config_with, key, status, HOST};

#[test]
fn cache_saves_verification_but_never_extends_a_token() {
    let c = config();
    let token = cap(); // iat NOW, exp NOW+900, leeway 30
    let h = base(&[("podgate-token", &token)]);
    let req = Request::from_headers(&h).unwrap();
    let mut cache = VerifiedCache::new();
    for i in 0..50 {
        assert!(matches!(
            decide(&c, &mut cache, &req, NOW + i),
            Decision::Forward(_)
        ));
    }
    assert_eq!(
        cache.stats(),
        (49, 1),
        "one signature check for 50 requests"
    );
    assert!(matches!(
        decide(&c, &mut cache, &req, NOW + 929),
        Decision::Forward(_)
    ));
    assert_eq!(status(&decide(&c, &mut cache, &req, NOW + 930)), 401);
    assert!(cache.is_empty(), "expired entries are dropped on hit");
    // A tampered copy of a cached token is a different key: it is verified and refused.
    let mut tampered = token.clone();
    tampered.push('A');
    let h2 = base(&[("podgate-token", &tampered)]);
    let req2 = Request::from_headers(&h2).unwrap();
    assert_eq!(status(&decide(&c, &mut cache, &req2, NOW)), 401);
}

#[test]
fn cache_is_bounded() {
    let c = config_with(|c| c.token_cache_entries = 4);
    let mut cache = VerifiedCache::new();
    for i in 0..10 {
        let cl = PodClaims {
            jti: format!("j{i}"),
            aud: HOST.into(),
            pod: "alpha".into(),
            ..claims()
        };
        let t = mint(TokenKind::Capability, &key(), &cl, NOW, 900).unwrap();
        let h = base(&[("podgate-token", &t)]);
        let req = Request::from_headers(&h).unwrap();
        assert!(matches!(
            decide(&c, &mut cache, &req, NOW),
            Decision::Forward(_)
        ));
        assert!(cache.len() <= 4);
    }
}

#[test]
fn cache_keys_sharing_a_tail_stay_apart() {
    // The cache hashes only a key's last 16 bytes; equality still compares the whole token.
    let c = config();
    let mut cache = VerifiedCache::new();
    let tail = "x".repeat(80);
    let verified = |jti: &str| {
        Rc::new(crate::token::Verified {
            claims: PodClaims {
                jti: jti.into(),
                ..claims()
            },
            sid: None,
            res: None,
            issued_at: NOW,
            expires_at: NOW + 900,
            kid: "cap-ed1".into(),
            token: None,
        })
    };
    for i in 0..50 {
        cache.insert(
            &format!("head{i}.{tail}"),
            verified(&format!("j{i}")),
            64,
            NOW,
        );
    }
    assert_eq!(cache.len(), 50);
    for i in 0..50 {
        let hit = check_token(&c, &mut cache, &format!("head{i}.{tail}"), NOW).unwrap();
        assert_eq!(hit.claims.jti, format!("j{i}"));
    }
    // An unknown token with the same tail is a miss (then fails verification), never a hit.
    assert!(check_token(&c, &mut cache, &format!("other.{tail}"), NOW).is_err());
    assert_eq!(cache.stats(), (50, 1));
}
