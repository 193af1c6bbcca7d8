//! The small HTML pages a browser page load gets instead of the JSON of a refusal that cannot
//! redirect (`gate::Gate::on_request`): what happened, what to do, and a retry or sign-in link.
//! Scripts (no page load, `Request::is_page_load`) keep the JSON of `Denial::reply`.
//!
//! Every page carries the refusal's status, reason and `WWW-Authenticate`; its text is fixed but
//! for the pod name, port and status the request named, all escaped. No internal address (the
//! upstream host, the cluster) is ever shown.

use crate::config::PodStatus;
use crate::host::PodAddr;
use crate::reply::{Denial, Reply};
use crate::token::TokenError;
use crate::wake::RELOAD_SECS;

/// `Content-Security-Policy` of every page: no script, no subresource, no framing; inline
/// style only.
pub const PAGE_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What a page says: a title, the paragraphs under it, and one link.
struct Text {
    title: String,
    lines: Vec<String>,
    link: Link,
    /// Seconds after which the page reloads itself, if it does.
    reload: Option<u32>,
}

enum Link {
    /// Load the same URL again.
    Retry,
    /// Sign in through the control plane (the sign-in redirect's URL).
    SignIn(String),
}

/// `s` with `& < > " '` escaped, safe in HTML text and in a quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page for `denial`, answered to a page load of `pod`; `sign_in` is the URL that gets a
/// capability for it (`gate::auth_redirect`). `None` for a refusal that has no page: a
/// redirect, or one no page load meets (a malformed request, a cross-origin call, a failure
/// of ours).
pub fn for_denial(denial: &Denial, pod: &PodAddr, sign_in: &str) -> Option<Reply> {
    let json = denial.reply();
    let name = escape(&pod.pod);
    let port = pod.port;
    // What the host names: a pod's port, or a service (`host::SERVICE_PORT`).
    let service = port == crate::host::SERVICE_PORT;
    let place = if service {
        format!("service {name}")
    } else {
        format!("port {port} of pod {name}")
    };
    let (kind, kind_title) = if service {
        ("service", "Service")
    } else {
        ("pod", "Pod")
    };
    let text = match denial {
        Denial::InvalidCapability {
            reason: TokenError::NotYetValid,
            redirect: None,
        } => Text {
            title: "Clocks out of step".to_owned(),
            lines: vec![
                format!("The capability this browser holds for {place} is not valid yet: the control plane that issued it keeps a clock ahead of this proxy's."),
                "An operator should make both keep time (NTP). Once they agree, sign in again; until then a new sign-in gives a capability just as early.".to_owned(),
            ],
            // Not sent there on its own (that would loop while the clocks disagree), but the
            // way back once they agree: the cookie lives as long as the session.
            link: Link::SignIn(sign_in.to_owned()),
            reload: None,
        },
        Denial::NoCapability { redirect: None } | Denial::InvalidCapability { redirect: None, .. } => Text {
            title: "Sign-in needed".to_owned(),
            lines: vec![
                format!("This address of {place} needs a podgate sign-in, and the capability this browser holds for it is missing or no longer valid."),
                "Sign in again, then come back to this page.".to_owned(),
            ],
            link: Link::SignIn(sign_in.to_owned()),
            reload: None,
        },
        Denial::WrongScope => Text {
            title: "Not for this pod".to_owned(),
            lines: vec![
                format!("The capability sent with this request is for another pod or port, not for {place}."),
                if service {
                    "Sign in for this service to get one that is.".to_owned()
                } else {
                    "Sign in for this pod and port to get one that is.".to_owned()
                },
            ],
            link: Link::SignIn(sign_in.to_owned()),
            reload: None,
        },
        Denial::UnknownPod => Text {
            title: format!("{kind_title} not found"),
            lines: vec![
                format!("There is no {kind} named {name}."),
                format!("Check the address; if the {kind} was just created, retry in a moment."),
            ],
            link: Link::Retry,
            reload: None,
        },
        Denial::CredentialUnavailable => Text {
            title: "Service unavailable".to_owned(),
            lines: vec![
                format!("Service {name} cannot be reached now: podgate has no valid credential for its upstream."),
                "Retry in a while; if it lasts, tell an administrator.".to_owned(),
            ],
            link: Link::Retry,
            reload: None,
        },
        Denial::NotRunning(status) => Text {
            title: "Pod not running".to_owned(),
            lines: vec![
                format!("Pod {name} is not running (status: {}).", status.as_str()),
                "Start the pod, then retry.".to_owned(),
            ],
            link: Link::Retry,
            reload: None,
        },
        Denial::RateLimited { retry_after, .. } => Text {
            title: "Too many requests".to_owned(),
            lines: vec![
                format!("Too many requests reached {place} in a short time."),
                format!("Wait {retry_after} s, then retry."),
            ],
            link: Link::Retry,
            reload: None,
        },
        Denial::TooManyStreams { retry_after, .. } => Text {
            title: "Too many open connections".to_owned(),
            lines: vec![
                format!("Too many connections to port {port} of pod {name} are open at once."),
                format!("Close a tab or wait {retry_after} s, then retry."),
            ],
            link: Link::Retry,
            reload: None,
        },
        _ => return None,
    };
    if json.status == 302 {
        return None;
    }
    Some(page_reply(json, &text))
}

/// The page of a pod that is not running, for a browser whose visit asked the control plane to
/// start it (`wake`): it says so and reloads itself every `wake::RELOAD_SECS`, so it turns
/// into the pod's own page once the pod runs. Status and reason are the 503's.
pub fn waking(pod: &PodAddr, status: PodStatus) -> Reply {
    let json = Denial::NotRunning(status).reply();
    let name = escape(&pod.pod);
    let text = Text {
        title: "Pod starting".to_owned(),
        lines: vec![
            format!(
                "Pod {name} is not running (status: {}); podgate asked for it to start.",
                status.as_str()
            ),
            "This page reloads by itself and shows the pod once it is up.".to_owned(),
        ],
        link: Link::Retry,
        reload: Some(RELOAD_SECS),
    };
    let mut reply = page_reply(json, &text);
    reply.headers.push(("retry-after", RELOAD_SECS.to_string()));
    reply
}

/// `text` as the page answering `json`'s refusal: its status, reason and headers, the page's
/// own content type and security headers.
fn page_reply(json: Reply, text: &Text) -> Reply {
    let mut headers: Vec<(&'static str, String)> = json
        .headers
        .into_iter()
        .filter(|(name, _)| *name != "content-type")
        .collect();
    headers.insert(0, ("content-type", "text/html; charset=utf-8".to_owned()));
    headers.push(("content-security-policy", PAGE_CSP.to_owned()));
    headers.push(("x-content-type-options", "nosniff".to_owned()));
    // The sign-in link carries the path; nothing of it goes to another site.
    headers.push(("referrer-policy", "no-referrer".to_owned()));
    Reply {
        status: json.status,
        headers,
        body: render(text),
        reason: json.reason,
    }
}

fn render(text: &Text) -> String {
    let title = escape(&text.title);
    let mut body = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">",
    );
    if let Some(secs) = text.reload {
        body.push_str(&format!("<meta http-equiv=\"refresh\" content=\"{secs}\">"));
    }
    body.push_str(&format!(
        "<title>{title}</title></head><body><h1>{title}</h1>"
    ));
    for line in &text.lines {
        body.push_str("<p>");
        body.push_str(line);
        body.push_str("</p>");
    }
    match &text.link {
        Link::Retry => body.push_str("<p><a href=\"\">Retry</a></p>"),
        Link::SignIn(url) => {
            body.push_str("<p><a href=\"");
            body.push_str(&escape(url));
            body.push_str("\">Sign in</a></p>");
        }
    }
    body.push_str("</body></html>\n");
    body
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::token::TokenError;

    fn pod(name: &str) -> PodAddr {
        PodAddr {
            pod: name.to_owned(),
            port: 8080,
        }
    }

    fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn every_page_keeps_the_status_reason_and_security_headers() {
        let cases = [
            (
                Denial::NoCapability { redirect: None },
                401,
                "Sign-in needed",
            ),
            (
                Denial::InvalidCapability {
                    reason: TokenError::Expired,
                    redirect: None,
                },
                401,
                "Sign-in needed",
            ),
            (Denial::WrongScope, 403, "Not for this pod"),
            (Denial::UnknownPod, 404, "Pod not found"),
            (
                Denial::NotRunning(PodStatus::Stopped),
                503,
                "Pod not running",
            ),
        ];
        for (denial, status, title) in cases {
            let page = for_denial(&denial, &pod("alpha"), "https://cp/auth?pod=alpha").unwrap();
            assert_eq!(page.status, status, "{denial:?}");
            assert_eq!(page.reason, denial.reason());
            assert_eq!(
                header(&page, "content-type"),
                Some("text/html; charset=utf-8")
            );
            assert_eq!(header(&page, "cache-control"), Some("no-store"));
            assert_eq!(header(&page, "x-content-type-options"), Some("nosniff"));
            assert_eq!(header(&page, "content-security-policy"), Some(PAGE_CSP));
            assert_eq!(
                header(&page, "www-authenticate"),
                header(&denial.reply(), "www-authenticate")
            );
            assert!(page.body.starts_with("<!doctype html>"), "{}", page.body);
            assert!(
                page.body.contains(&format!("<h1>{title}</h1>")),
                "{}",
                page.body
            );
            assert!(!page.body.contains("<script"), "{}", page.body);
        }
    }

    #[test]
    fn sign_in_pages_link_to_the_sign_in_url_escaped() {
        let page = for_denial(
            &Denial::WrongScope,
            &pod("alpha"),
            "https://cp/auth?pod=alpha&port=8080&next=%2F",
        )
        .unwrap();
        assert!(page.body.contains(
            "<a href=\"https://cp/auth?pod=alpha&amp;port=8080&amp;next=%2F\">Sign in</a>"
        ));
        let page = for_denial(&Denial::UnknownPod, &pod("alpha"), "https://cp/auth").unwrap();
        assert!(page.body.contains("<a href=\"\">Retry</a>"));
        assert!(!page.body.contains("https://cp/auth"));
    }

    #[test]
    fn names_are_escaped() {
        let page = for_denial(
            &Denial::NotRunning(PodStatus::Stopped),
            &pod("a<b>&\"c"),
            "x",
        )
        .unwrap();
        assert!(page
            .body
            .contains("Pod a&lt;b&gt;&amp;&quot;c is not running (status: stopped)."));
        assert!(!page.body.contains("a<b>"));
    }

    #[test]
    fn a_service_is_named_as_a_service() {
        let service = PodAddr {
            pod: "openai".into(),
            port: crate::host::SERVICE_PORT,
        };
        let page = for_denial(&Denial::UnknownPod, &service, "x").unwrap();
        assert!(page.body.contains("Service not found"), "{}", page.body);
        assert!(page.body.contains("There is no service named openai."));
        let page = for_denial(&Denial::WrongScope, &service, "x").unwrap();
        assert!(page.body.contains("not for service openai."));
        assert!(!page.body.contains("port 0"));
        let page = for_denial(&Denial::UnknownPod, &pod("a"), "x").unwrap();
        assert!(page.body.contains("There is no pod named a."));
        let page = for_denial(&Denial::CredentialUnavailable, &service, "x").unwrap();
        assert_eq!(
            (page.status, page.reason),
            (502, "upstream_credential_unavailable")
        );
        assert!(page.body.contains("Service openai cannot be reached now"));
    }

    #[test]
    fn the_waking_page_is_the_503_reloading_itself() {
        let page = waking(&pod("a<b"), PodStatus::Stopped);
        let json = Denial::NotRunning(PodStatus::Stopped).reply();
        assert_eq!((page.status, page.reason), (503, json.reason));
        assert_eq!(header(&page, "retry-after"), Some("2"));
        assert_eq!(header(&page, "content-security-policy"), Some(PAGE_CSP));
        assert!(page
            .body
            .contains("<meta http-equiv=\"refresh\" content=\"2\">"));
        assert!(page.body.contains("<h1>Pod starting</h1>"));
        assert!(page
            .body
            .contains("Pod a&lt;b is not running (status: stopped)"));
        assert!(!page.body.contains("<script"));
        // The pages that do not wake never reload.
        let still = for_denial(&Denial::NotRunning(PodStatus::Stopped), &pod("a"), "x").unwrap();
        assert!(!still.body.contains("refresh"));
    }

    #[test]
    fn redirects_and_other_refusals_have_no_page() {
        let p = pod("alpha");
        for denial in [
            Denial::NoCapability {
                redirect: Some("https://cp/auth".into()),
            },
            Denial::CrossPodRequest,
            Denial::CrossOriginWebSocket,
            Denial::MalformedAuthorization,
            Denial::NotConfigured,
            Denial::HostCallFailed,
        ] {
            assert_eq!(for_denial(&denial, &p, "x"), None, "{denial:?}");
        }
    }
}
