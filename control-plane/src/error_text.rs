//! Errors as people read them in logs and answers.

/// An error and its causes, `a: b: c`, each said once: an HTTP client's own text says only
/// "error sending request" whether the name did not resolve, the connection was refused or the
/// certificate was not trusted.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}
