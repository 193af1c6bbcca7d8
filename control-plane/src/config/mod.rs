//! Configuration: command-line flags, `PODGATE_*` environment variables and an optional TOML
//! file, in that order of precedence, checked once into a [`Config`] with a message that says
//! what is wrong and how to fix it for every bad or missing setting.
//!
//! Read in the order a setting travels:
//! - `flags.rs`: the subcommands and [`Settings`], every setting's flag, variable and file key;
//! - `file.rs`: the TOML file, merged under what flags and environment set;
//! - `resolve.rs`: the defaults, and the checks that turn [`Settings`] into a [`Config`];
//! - `checked.rs`: [`Config`] and the value types of its settings;
//! - `idp/` and `limits.rs`: the same steps for the identity verifiers and for the rate limits
//!   and size bounds, called from `resolve.rs`.

mod checked;
pub mod cli_dir;
mod file;
mod flags;
pub mod idp;
pub mod limits;
mod resolve;

pub use checked::{
    Config, EnvoyTls, LogFormat, SameSite, Scheme, SigningAlg, StartHook, XdsConfig,
};
pub use flags::{Cli, Command, KeysCommand, Settings, TlsCommand};
pub use resolve::{
    redact_url, Need, DEFAULT_CAPABILITY_LIFETIME, DEFAULT_DATABASE_URL, DEFAULT_ENVOY_LISTEN,
    DEFAULT_KEY_OVERLAP, DEFAULT_KEY_PUBLISH_DELAY, DEFAULT_LISTEN, DEFAULT_POD_PUBLIC_PORT,
    DEFAULT_SESSION_LIFETIME, DEFAULT_TICKET_LIFETIME, DEFAULT_XDS_LISTEN, DEFAULT_XDS_RESYNC,
    MAX_CAPABILITY_LIFETIME, MAX_TICKET_LIFETIME, MIN_ADMIN_TOKEN_LEN, SESSION_COOKIE,
    SIGN_IN_COOKIE,
};

/// A setting that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}
