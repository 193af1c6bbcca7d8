//! The CLI's one error type: a message for people and the exit code scripts read.

use std::fmt;

/// Exit codes (`docs/cli.md` lists them).
pub mod code {
    /// Anything else: an unexpected answer, a config file that cannot be read or written.
    pub const OTHER: u8 = 1;
    /// Wrong usage: unknown command or flag, a malformed init URL or pod URL.
    pub const USAGE: u8 = 2;
    /// No saved session for this directory (or a parent), and no `PODGATE_TOKEN`: run
    /// `podgate-cli --init URL` first, or set `PODGATE_URL` and `PODGATE_TOKEN`.
    pub const NOT_INITIALISED: u8 = 3;
    /// The control plane refused the API token (saved, or `PODGATE_TOKEN`): expired, revoked or
    /// unknown.
    pub const TOKEN_REFUSED: u8 = 4;
    /// The control plane (or the pod URL) could not be reached.
    pub const UNREACHABLE: u8 = 5;
    /// The control plane refused access to that pod or port.
    pub const ACCESS_REFUSED: u8 = 6;
    /// The control plane is limiting this address (`429`): too many refused tokens, or too
    /// many requests, from it. Waiting is the fix, not a new token.
    pub const RATE_LIMITED: u8 = 7;
}

#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn new(code: u8, message: impl Into<String>) -> CliError {
        CliError {
            code,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(code::USAGE, message)
    }
    pub fn other(message: impl Into<String>) -> CliError {
        CliError::new(code::OTHER, message)
    }
    /// A refusal no retry can change: the API token (expired, revoked) or access to the pod
    /// port (unshared, deleted).
    pub fn is_refusal(&self) -> bool {
        matches!(self.code, code::TOKEN_REFUSED | code::ACCESS_REFUSED)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Result<T> = std::result::Result<T, CliError>;

/// `e` with the errors under it (`a: b: c`), each said once: an HTTP client's error alone says
/// only "error sending request", its causes say why (a certificate not trusted, a refused
/// connection).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut said = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !said.contains(&text) {
            said.push_str(": ");
            said.push_str(&text);
        }
        cause = c.source();
    }
    said
}
