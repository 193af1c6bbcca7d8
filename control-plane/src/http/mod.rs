//! The HTTP API: one module and `router()` per resource or flow, plus the layers every answer
//! passes through (CORS, security headers), the one error answer and how the domain's errors
//! become it (`error.rs`), and what handlers read from a request for the domain (`request.rs`).

pub mod admin;
pub mod api_tokens;
pub mod capabilities;
pub mod cookies;
pub mod cors;
pub mod dev_login;
pub mod error;
pub mod exchange;
pub mod flow;
pub mod health;
pub mod limits;
pub mod me;
pub mod metrics;
pub mod openapi;
pub mod renew;
pub mod request;
pub mod security_headers;
pub mod session;
pub mod setup;
pub mod shared;
pub mod sign_in;
pub mod wake;
