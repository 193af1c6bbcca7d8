//! The limit settings: token-bucket rates per endpoint and request size bounds, with their
//! defaults and the checks a configured value must pass. What they do at run time is in
//! `crate::limits` (the buckets) and `crate::http::limits` (the middleware).

use std::time::Duration;

use crate::config::ConfigError;

/// A token bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens a client starts with and can save up.
    pub burst: u32,
    /// Tokens regained per minute.
    pub per_minute: u32,
}

impl Rate {
    /// Time to regain one token.
    pub fn refill(self) -> Duration {
        Duration::from_secs(60) / self.per_minute.max(1)
    }
}

pub const DEFAULT_PROXY_AUTH: Rate = Rate {
    burst: 120,
    per_minute: 120,
};
pub const DEFAULT_CALLBACK_FAILURES: Rate = Rate {
    burst: 20,
    per_minute: 10,
};
pub const DEFAULT_CAPABILITY_FAILURES: Rate = Rate {
    burst: 20,
    per_minute: 20,
};
pub const DEFAULT_API_TOKEN_FAILURES: Rate = Rate {
    burst: 10,
    per_minute: 10,
};
pub const DEFAULT_ADMIN_FAILURES: Rate = Rate {
    burst: 10,
    per_minute: 10,
};
/// Most clients one limit tracks.
pub const DEFAULT_RATE_LIMIT_CLIENTS: usize = 50_000;
/// Largest request body accepted.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest total of request header names and values accepted.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most request headers accepted.
pub const MAX_HEADER_COUNT: usize = 100;
/// Longest path accepted (pod paths never come here: `next` is at most 2 KiB of query).
pub const MAX_PATH_LEN: usize = 2048;
/// Longest query string accepted (a ticket and an encoded `next` fit with room to spare).
pub const MAX_QUERY_LEN: usize = 8 * 1024;

/// The checked limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    pub proxy_auth: Rate,
    pub callback_failures: Rate,
    pub capability_failures: Rate,
    pub api_token_failures: Rate,
    pub admin_failures: Rate,
    pub clients: usize,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            proxy_auth: DEFAULT_PROXY_AUTH,
            callback_failures: DEFAULT_CALLBACK_FAILURES,
            capability_failures: DEFAULT_CAPABILITY_FAILURES,
            api_token_failures: DEFAULT_API_TOKEN_FAILURES,
            admin_failures: DEFAULT_ADMIN_FAILURES,
            clients: DEFAULT_RATE_LIMIT_CLIENTS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// The limit settings as read from flags, environment and the file.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitInputs {
    pub proxy_auth: (Option<u32>, Option<u32>),
    pub callback_failures: (Option<u32>, Option<u32>),
    pub capability_failures: (Option<u32>, Option<u32>),
    pub api_token_failures: (Option<u32>, Option<u32>),
    pub admin_failures: (Option<u32>, Option<u32>),
    pub clients: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub max_header_bytes: Option<usize>,
}

fn rate(
    (burst, per_minute): (Option<u32>, Option<u32>),
    default: Rate,
    env: &str,
) -> Result<Rate, ConfigError> {
    let r = Rate {
        burst: burst.unwrap_or(default.burst),
        per_minute: per_minute.unwrap_or(default.per_minute),
    };
    for (value, suffix, example) in [
        (r.burst, "BURST", default.burst),
        (r.per_minute, "PER_MINUTE", default.per_minute),
    ] {
        if !(1..=1_000_000).contains(&value) {
            return Err(ConfigError(format!(
                "rate limit {value} is outside 1..=1000000; set PODGATE_{env}_{suffix}, e.g. {example}"
            )));
        }
    }
    Ok(r)
}

fn within(
    value: Option<usize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
    env: &str,
) -> Result<usize, ConfigError> {
    let v = value.unwrap_or(default);
    if !range.contains(&v) {
        return Err(ConfigError(format!(
            "{v} is outside {}..={}; set PODGATE_{env}, e.g. {default}",
            range.start(),
            range.end()
        )));
    }
    Ok(v)
}

/// Applies defaults and checks every limit.
pub fn resolve(i: LimitInputs) -> Result<LimitsConfig, ConfigError> {
    Ok(LimitsConfig {
        proxy_auth: rate(i.proxy_auth, DEFAULT_PROXY_AUTH, "PROXY_AUTH")?,
        callback_failures: rate(
            i.callback_failures,
            DEFAULT_CALLBACK_FAILURES,
            "CALLBACK_FAILURES",
        )?,
        capability_failures: rate(
            i.capability_failures,
            DEFAULT_CAPABILITY_FAILURES,
            "CAPABILITY_FAILURES",
        )?,
        api_token_failures: rate(
            i.api_token_failures,
            DEFAULT_API_TOKEN_FAILURES,
            "API_TOKEN_FAILURES",
        )?,
        admin_failures: rate(i.admin_failures, DEFAULT_ADMIN_FAILURES, "ADMIN_FAILURES")?,
        clients: within(
            i.clients,
            DEFAULT_RATE_LIMIT_CLIENTS,
            1..=10_000_000,
            "RATE_LIMIT_CLIENTS",
        )?,
        max_body_bytes: within(
            i.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            1024..=16 * 1024 * 1024,
            "MAX_BODY_BYTES",
        )?,
        max_header_bytes: within(
            i.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES,
            4096..=1024 * 1024,
            "MAX_HEADER_BYTES",
        )?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_variable() {
        let e = resolve(LimitInputs {
            proxy_auth: (Some(0), None),
            ..LimitInputs::default()
        })
        .unwrap_err();
        assert!(e.0.contains("PODGATE_PROXY_AUTH_BURST"), "{e}");
        let e = resolve(LimitInputs {
            max_body_bytes: Some(10),
            ..LimitInputs::default()
        })
        .unwrap_err();
        assert!(e.0.contains("PODGATE_MAX_BODY_BYTES"), "{e}");
        assert_eq!(
            resolve(LimitInputs::default()).unwrap(),
            LimitsConfig::default()
        );
    }
}
