//! What the filter tells Envoy's access log about a request: who (the capability's user, or
//! `-` when none was proven), the pod and port, the decision and its reason. One value, set once
//! per request as the filter state `wasm.podgate` (`proxy_set_property`), read by the access log
//! format as `%FILTER_STATE(wasm.podgate:PLAIN)%`.
//!
//! Never a credential: the fields are the user id from a verified capability, the pod and port
//! the filter parsed from the host, and fixed words. The user id is signed by the control plane
//! but still reduced to a safe alphabet, so no value can break a log line or fake a field.

/// The property (filter state `wasm.podgate`) the filter sets.
pub const PROPERTY: &str = "podgate";
/// On a forward to a pod or a service, the pod and the port the filter parsed from the host
/// (slug grammar and digits only), as the filter states `wasm.podgate_pod` and
/// `wasm.podgate_port`: Envoy's local reply mapping reads them to name the pod in its answer when
/// the pod fails (no connection, reset, timeout, not HTTP). Filter state, not headers, so that
/// neither pods nor services receive them.
pub const POD_PROPERTY: &str = "podgate_pod";
pub const PORT_PROPERTY: &str = "podgate_port";
/// The longest user id written; longer ones are cut.
const MAX_FIELD_LEN: usize = 128;

/// What the filter did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forwarded to a pod.
    Allow,
    /// Forwarded to the control plane (`/.podgate/` on a pod host): no user yet.
    Callback,
    /// Refused with a local reply.
    Deny,
    /// Answered by the filter (`/.podgate/userinfo`, `/.podgate/logout`).
    Answer,
    /// A CORS preflight answered by the filter.
    Preflight,
}

impl Decision {
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Callback => "callback",
            Decision::Deny => "deny",
            Decision::Answer => "answer",
            Decision::Preflight => "preflight",
        }
    }
}

/// Appends `value` reduced to letters, digits and `-._@+:`, at most `MAX_FIELD_LEN` bytes, or
/// `-` when empty or absent.
fn push_field(out: &mut String, value: Option<&str>) {
    let start = out.len();
    for c in value.unwrap_or_default().chars().take(MAX_FIELD_LEN) {
        out.push(if c.is_ascii_alphanumeric() || "-._@+:".contains(c) {
            c
        } else {
            '?'
        });
    }
    if out.len() == start {
        out.push('-');
    }
}

/// The value: `user=<sub> pod=<slug> port=<port> decision=<decision> reason=<reason>`, `-` for
/// what is unknown.
pub fn line(
    user: Option<&str>,
    pod: Option<&str>,
    port: Option<&str>,
    decision: Decision,
    reason: Option<&str>,
) -> String {
    let mut out = String::with_capacity(96);
    out.push_str("user=");
    push_field(&mut out, user);
    out.push_str(" pod=");
    push_field(&mut out, pod);
    out.push_str(" port=");
    push_field(&mut out, port);
    out.push_str(" decision=");
    out.push_str(decision.as_str());
    out.push_str(" reason=");
    push_field(&mut out, reason);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_value_names_who_and_cannot_be_forged() {
        assert_eq!(
            line(
                Some("user-1"),
                Some("demo"),
                Some("8726"),
                Decision::Allow,
                None
            ),
            "user=user-1 pod=demo port=8726 decision=allow reason=-"
        );
        assert_eq!(
            line(None, None, None, Decision::Deny, Some("no_capability")),
            "user=- pod=- port=- decision=deny reason=no_capability"
        );
        // A user id with spaces, quotes or a newline cannot add a field or a line.
        let v = line(
            Some("a b\"\nuser=admin"),
            Some("p"),
            Some("1"),
            Decision::Allow,
            None,
        );
        assert_eq!(
            v,
            "user=a?b??user?admin pod=p port=1 decision=allow reason=-"
        );
        assert_eq!(
            line(Some(&"x".repeat(500)), None, None, Decision::Allow, None).len(),
            "user= pod=- port=- decision=allow reason=-".len() + MAX_FIELD_LEN
        );
    }
}
