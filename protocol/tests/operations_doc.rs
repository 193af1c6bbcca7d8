//! Keeps the troubleshooting tables of `docs/operations.md` complete: every answer the filter can
//! give (`reply.rs`) has a row with its code, status and message, and every reason a host or a
//! token is refused is listed. A new `Denial`, `HostError` or `TokenError` variant fails to
//! compile here until it has a sample, and then fails this test until the doc has its row.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use podgate_protocol::config::PodStatus;
use podgate_protocol::host::HostError;
use podgate_protocol::reply::Denial;
use podgate_protocol::token::TokenError;

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One of each answer. The match makes a new variant a compile error until it is added here.
fn denials() -> Vec<Denial> {
    let all = vec![
        Denial::BadHost(HostError::WrongDomain),
        Denial::MalformedHeader("cookie"),
        Denial::MalformedHeaderName,
        Denial::MalformedAuthorization,
        Denial::NoCapability { redirect: None },
        Denial::InvalidCapability {
            reason: TokenError::Expired,
            redirect: None,
        },
        Denial::WrongScope,
        Denial::CrossOriginWebSocket,
        Denial::CrossPodRequest,
        Denial::CrossOriginPreflight,
        Denial::BadPreflight,
        Denial::UnknownPod,
        Denial::AmbiguousPath,
        Denial::WrongResource,
        Denial::OutsideResources,
        Denial::TraceRefused,
        Denial::CredentialUnavailable,
        Denial::NotRunning(PodStatus::Stopped),
        Denial::RateLimited {
            scope: podgate_protocol::rate::Limited::User,
            retry_after: 1,
        },
        Denial::TooManyStreams {
            scope: podgate_protocol::rate::Limited::User,
            retry_after: 1,
        },
        Denial::NotConfigured,
        Denial::HostCallFailed,
        Denial::ApiTokenRefused,
        Denial::ApiTokenNotAllowed,
        Denial::ExchangeBusy(1),
        Denial::ExchangeFailed,
    ];
    for d in &all {
        match d {
            Denial::BadHost(_)
            | Denial::MalformedHeader(_)
            | Denial::MalformedHeaderName
            | Denial::MalformedAuthorization
            | Denial::NoCapability { .. }
            | Denial::InvalidCapability { .. }
            | Denial::WrongScope
            | Denial::CrossOriginWebSocket
            | Denial::CrossPodRequest
            | Denial::CrossOriginPreflight
            | Denial::BadPreflight
            | Denial::UnknownPod
            | Denial::AmbiguousPath
            | Denial::WrongResource
            | Denial::OutsideResources
            | Denial::TraceRefused
            | Denial::CredentialUnavailable
            | Denial::NotRunning(_)
            | Denial::RateLimited { .. }
            | Denial::TooManyStreams { .. }
            | Denial::NotConfigured
            | Denial::HostCallFailed
            | Denial::ApiTokenRefused
            | Denial::ApiTokenNotAllowed
            | Denial::ExchangeBusy(_)
            | Denial::ExchangeFailed => {}
        }
    }
    all
}

fn host_errors() -> Vec<HostError> {
    let all = vec![
        HostError::Empty,
        HostError::TooLong,
        HostError::InvalidCharacter,
        HostError::BadPortSuffix,
        HostError::WrongDomain,
        HostError::NoMatch,
        HostError::BadPort,
        HostError::BadSlug,
        HostError::LabelTooLong,
        HostError::ReservedLabel,
    ];
    for e in &all {
        match e {
            HostError::Empty
            | HostError::TooLong
            | HostError::InvalidCharacter
            | HostError::BadPortSuffix
            | HostError::WrongDomain
            | HostError::NoMatch
            | HostError::BadPort
            | HostError::BadSlug
            | HostError::LabelTooLong
            | HostError::ReservedLabel => {}
        }
    }
    all
}

fn token_errors() -> Vec<TokenError> {
    let all = vec![
        TokenError::Size,
        TokenError::Malformed,
        TokenError::WrongType {
            expected: "capability",
        },
        TokenError::UnknownKey,
        TokenError::AlgorithmMismatch,
        TokenError::ForbiddenHeader,
        TokenError::BadSignature,
        TokenError::BadClaims,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::LifetimeTooLong,
        TokenError::WrongIssuer,
        TokenError::Revoked,
    ];
    for e in &all {
        match e {
            TokenError::Size
            | TokenError::Malformed
            | TokenError::WrongType { .. }
            | TokenError::UnknownKey
            | TokenError::AlgorithmMismatch
            | TokenError::ForbiddenHeader
            | TokenError::BadSignature
            | TokenError::BadClaims
            | TokenError::Expired
            | TokenError::NotYetValid
            | TokenError::LifetimeTooLong
            | TokenError::WrongIssuer
            | TokenError::Revoked => {}
        }
    }
    all
}

/// The first words of an answer's message, before any detail that varies
/// (`Not a pod host: <why>` → `Not a pod host`).
fn message_head(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    let error = value["error"].as_str().unwrap();
    let end = error.find([':', '(']).unwrap_or(error.len());
    error[..end].trim().to_owned()
}

#[test]
fn the_samples_cover_every_reason() {
    let mut sampled: Vec<&str> = denials().iter().map(Denial::reason).collect();
    sampled.sort_unstable();
    sampled.dedup();
    let mut all = Denial::ALL_REASONS.to_vec();
    all.sort_unstable();
    assert_eq!(sampled, all);
}

#[test]
fn every_answer_of_the_filter_has_a_row_in_the_operations_doc() {
    let doc = doc();
    let mut missing = Vec::new();
    for denial in denials() {
        let reply = denial.reply();
        let code = format!("| `{}` |", reply.reason);
        let Some(row) = doc.lines().find(|l| l.starts_with(&code)) else {
            missing.push(format!("no table row starting with {code}"));
            continue;
        };
        let status = format!("`{}`", reply.status);
        if !row.contains(&status) {
            missing.push(format!("the row of {code} does not say {status}"));
        }
        let head = message_head(&reply.body);
        if !row.contains(&head) {
            missing.push(format!("the row of {code} does not quote {head:?}"));
        }
        let redirects = matches!(
            denial,
            Denial::NoCapability { .. } | Denial::InvalidCapability { .. }
        );
        if redirects && !row.contains("`302`") {
            missing.push(format!(
                "the row of {code} does not mention the `302` redirect"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/operations.md, \"The filter's answers\":\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_reason_a_host_or_token_is_refused_is_in_the_operations_doc() {
    let doc = doc();
    let mut missing = Vec::new();
    for e in host_errors() {
        let text = format!("| `{e}` |");
        if !doc.contains(&text) {
            missing.push(text);
        }
    }
    for e in token_errors() {
        let text = match e {
            // The expected kind varies; the doc writes it as a placeholder.
            TokenError::WrongType { .. } => {
                assert!(e.to_string().starts_with("token type is not "), "{e}");
                "| `token type is not <kind>` |".to_owned()
            }
            e => format!("| `{e}` |"),
        };
        if !doc.contains(&text) {
            missing.push(text);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/operations.md lacks rows:\n{}",
        missing.join("\n")
    );
}
