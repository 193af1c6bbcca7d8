//! The pod-host grammar: `localhost-{port}-pod-{pod}.{domain}` and friends.
//!
//! A [`HostTemplate`] is compiled once from a template string and a base domain. Parsing is
//! strict and canonical: the same pod and port always render to the same host, and a host is
//! accepted only if rendering its parse gives it back exactly.

use std::fmt;

/// The most a single DNS label may hold.
pub const MAX_LABEL_LEN: usize = 63;
/// The longest authority we even look at; anything longer is rejected before parsing.
pub const MAX_AUTHORITY_LEN: usize = 255;

/// A pod and one of its ports: what a pod host names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodAddr {
    pub pod: String,
    pub port: u16,
}

/// Why a host is not a pod host. Each variant is one way to be wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the host is empty")]
    Empty,
    #[error("the host is longer than {MAX_AUTHORITY_LEN} characters")]
    TooLong,
    #[error("the host has characters other than lowercase a-z, 0-9, '-' and '.'")]
    InvalidCharacter,
    #[error("the host's port suffix is not a number")]
    BadPortSuffix,
    #[error("the host is not under the pod domain")]
    WrongDomain,
    #[error("the host does not match the pod host template")]
    NoMatch,
    #[error("the port is not a number from 1 to 65535 without leading zeros")]
    BadPort,
    #[error("the pod slug is not [a-z0-9]([a-z0-9-]*[a-z0-9])?")]
    BadSlug,
    #[error("a pod host label is longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong,
    #[error("the pod slug would start a host label with two characters and '--', a form DNS reserves ('xn--' is an internationalized name)")]
    ReservedLabel,
}

/// Why a template string cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the template must contain {{port}} and {{pod}} exactly once each, and {{domain}} at most once at the end (as '.{{domain}}')")]
    Placeholders,
    #[error(
        "the template has characters other than lowercase a-z, 0-9, '-', '.' and placeholders"
    )]
    InvalidCharacter,
    #[error("{{port}} and {{pod}} must be separated by a literal with a letter or a '.' in it (not only digits and '-')")]
    AmbiguousSeparator,
    #[error("the domain must be non-empty lowercase DNS labels")]
    BadDomain,
    #[error("the template makes an empty DNS label (a leading dot or '..')")]
    EmptyLabel,
}

/// Which placeholder a variable piece of the template is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Port,
    Pod,
}

/// A compiled host template: literal `prefix`, a variable, literal `middle`, a variable,
/// literal `suffix` (which ends with `.domain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTemplate {
    prefix: String,
    first: Var,
    middle: String,
    suffix: String,
    source: String,
    /// The slug starts a DNS label (`{pod}.p{port}.{domain}`): it may not start it the way
    /// internationalized names do ([`starts_label_reserved`]).
    pod_starts_label: bool,
}

impl fmt::Display for HostTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The default public host: one DNS label under the domain, so one wildcard certificate covers it.
pub const DEFAULT_PUBLIC_TEMPLATE: &str = "localhost-{port}-pod-{pod}.{domain}";
/// The default upstream Host, what the pod's nginx matches with `^localhost-(\d+)\.`.
pub const DEFAULT_UPSTREAM_TEMPLATE: &str = "localhost-{port}.pod-{pod}.{domain}";

fn is_host_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
}

/// Checks a domain: dot-separated non-empty labels of `[a-z0-9-]`, not starting or ending in '-'.
pub fn validate_domain(domain: &str) -> Result<(), TemplateError> {
    if domain.is_empty() || domain.len() > MAX_AUTHORITY_LEN {
        return Err(TemplateError::BadDomain);
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label.bytes().all(|b| is_host_char(b) && b != b'.')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(TemplateError::BadDomain);
        }
    }
    Ok(())
}

/// Whether a label starting with `slug` would have `--` as its third and fourth characters, the
/// form RFC 5891 reserves: `xn--` labels are internationalized names, which browsers show in
/// other scripts (a pod named `xn--lice-43d` would read as a look-alike of `alice`).
fn starts_label_reserved(slug: &str) -> bool {
    slug.as_bytes().get(2..4) == Some(b"--")
}

/// Checks a pod slug: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 characters.
pub fn validate_slug(slug: &str) -> Result<(), HostError> {
    let bytes = slug.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Err(HostError::BadSlug);
    };
    if bytes.len() > MAX_LABEL_LEN {
        return Err(HostError::LabelTooLong);
    }
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge_ok(first) || !edge_ok(last) || !bytes.iter().all(|&b| edge_ok(b) || b == b'-') {
        return Err(HostError::BadSlug);
    }
    Ok(())
}

/// Parses a port: 1 to 65535, decimal, no sign, no leading zeros.
pub fn parse_port(s: &str) -> Result<u16, HostError> {
    if s.is_empty() || s.len() > 5 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::BadPort);
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => u16::try_from(n).map_err(|_| HostError::BadPort),
        _ => Err(HostError::BadPort),
    }
}

/// Strips one `:port` suffix and one trailing dot, the only normalisations we allow.
pub fn normalize_authority(authority: &str) -> Result<&str, HostError> {
    if authority.is_empty() {
        return Err(HostError::Empty);
    }
    if authority.len() > MAX_AUTHORITY_LEN + 6 {
        return Err(HostError::TooLong);
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) => {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HostError::BadPortSuffix);
            }
            host
        }
        None => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    if host.len() > MAX_AUTHORITY_LEN {
        return Err(HostError::TooLong);
    }
    Ok(host)
}

impl HostTemplate {
    /// Compiles `template` (with `{port}`, `{pod}` and optionally a trailing `.{domain}`)
    /// against `domain`.
    pub fn new(template: &str, domain: &str) -> Result<Self, TemplateError> {
        validate_domain(domain)?;
        let Some(body) = template.strip_suffix(".{domain}") else {
            return Err(TemplateError::Placeholders);
        };
        if body.contains("{domain}") {
            return Err(TemplateError::Placeholders);
        }
        let (Some(port_at), Some(pod_at)) = (body.find("{port}"), body.find("{pod}")) else {
            return Err(TemplateError::Placeholders);
        };
        if body.matches("{port}").count() != 1 || body.matches("{pod}").count() != 1 {
            return Err(TemplateError::Placeholders);
        }
        let (first, first_at, first_len, second_at, second_len) = if port_at < pod_at {
            (Var::Port, port_at, 6, pod_at, 5)
        } else {
            (Var::Pod, pod_at, 5, port_at, 6)
        };
        let prefix = &body[..first_at];
        let middle = &body[first_at + first_len..second_at];
        let rest = &body[second_at + second_len..];
        for lit in [prefix, middle, rest] {
            if !lit.bytes().all(is_host_char) {
                return Err(TemplateError::InvalidCharacter);
            }
        }
        // A slug may contain '-' and digits, and a port is digits: a separator of only those
        // would let one host parse two ways (`a-1-2`; `800a` under `{port}0{pod}` is both
        // pod `a` on port 80 and pod `0a` on port 8). A letter or a dot, which no port holds,
        // marks where the port ends.
        if !middle.bytes().any(|b| b.is_ascii_lowercase() || b == b'.') {
            return Err(TemplateError::AmbiguousSeparator);
        }
        let before_pod = match first {
            Var::Pod => prefix,
            Var::Port => middle,
        };
        let compiled = Self {
            prefix: prefix.to_owned(),
            first,
            middle: middle.to_owned(),
            suffix: format!("{rest}.{domain}"),
            source: template.replace("{domain}", domain),
            pod_starts_label: before_pod.is_empty() || before_pod.ends_with('.'),
        };
        let sample = compiled.render(&PodAddr {
            pod: "a".to_owned(),
            port: 1,
        });
        if sample.split('.').any(str::is_empty) {
            return Err(TemplateError::EmptyLabel);
        }
        Ok(compiled)
    }

    /// Parses an `:authority` (or `Host`) value into the pod and port it names.
    pub fn parse(&self, authority: &str) -> Result<PodAddr, HostError> {
        let host = normalize_authority(authority)?;
        if !host.bytes().all(is_host_char) {
            return Err(HostError::InvalidCharacter);
        }
        // Suffix on a dot boundary is guaranteed: our suffix always starts with '.' or a literal
        // that is then followed by '.domain'.
        let Some(head) = host.strip_suffix(self.suffix.as_str()) else {
            return Err(HostError::WrongDomain);
        };
        let Some(vars) = head.strip_prefix(self.prefix.as_str()) else {
            return Err(HostError::NoMatch);
        };
        let (a, b) = match self.first {
            // The port has no '-', so split at the first occurrence of the separator.
            Var::Port => vars.split_once(self.middle.as_str()),
            // The slug comes first: split at the last occurrence.
            Var::Pod => vars.rsplit_once(self.middle.as_str()),
        }
        .ok_or(HostError::NoMatch)?;
        let (port, pod) = match self.first {
            Var::Port => (a, b),
            Var::Pod => (b, a),
        };
        let port = parse_port(port)?;
        validate_slug(pod)?;
        if self.pod_starts_label && starts_label_reserved(pod) {
            return Err(HostError::ReservedLabel);
        }
        let addr = PodAddr {
            pod: pod.to_owned(),
            port,
        };
        let rendered = self.render(&addr);
        if rendered != host {
            // Anything that does not round-trip (extra labels, odd separators) is not ours.
            return Err(HostError::NoMatch);
        }
        if rendered.split('.').any(|label| label.len() > MAX_LABEL_LEN) {
            return Err(HostError::LabelTooLong);
        }
        Ok(addr)
    }

    /// Renders the host for a pod and port.
    pub fn render(&self, addr: &PodAddr) -> String {
        let mut out = String::with_capacity(
            self.prefix.len() + self.middle.len() + self.suffix.len() + addr.pod.len() + 5,
        );
        out.push_str(&self.prefix);
        let port = addr.port.to_string();
        match self.first {
            Var::Port => {
                out.push_str(&port);
                out.push_str(&self.middle);
                out.push_str(&addr.pod);
            }
            Var::Pod => {
                out.push_str(&addr.pod);
                out.push_str(&self.middle);
                out.push_str(&port);
            }
        }
        out.push_str(&self.suffix);
        out
    }

    /// The longest slug whose hosts fit every label in 63 characters for every port.
    pub fn max_slug_len(&self) -> usize {
        // Measure the label that holds the slug, with the longest port, using a marker slug.
        let marked = self.render(&PodAddr {
            pod: "\u{0}".to_owned(),
            port: 65535,
        });
        let label_len = marked
            .split('.')
            .find(|l| l.contains('\u{0}'))
            .map(|l| l.len() - 1)
            .unwrap_or(0);
        MAX_LABEL_LEN.saturating_sub(label_len)
    }

    /// Checks that a slug is valid and that its hosts fit DNS limits for every port.
    pub fn check_slug(&self, slug: &str) -> Result<(), HostError> {
        self.slug_checker()(slug)
    }

    /// [`HostTemplate::check_slug`] for many slugs: the longest slug allowed is measured once
    /// (a configuration checks every pod's).
    pub fn slug_checker(&self) -> impl Fn(&str) -> Result<(), HostError> {
        let max = self.max_slug_len();
        let starts_label = self.pod_starts_label;
        move |slug| {
            validate_slug(slug)?;
            if starts_label && starts_label_reserved(slug) {
                return Err(HostError::ReservedLabel);
            }
            if slug.len() > max {
                return Err(HostError::LabelTooLong);
            }
            Ok(())
        }
    }
}

/// The port a service is addressed with: a service `name` is the pair (`name`, 0). No pod host
/// parses to port 0 (`parse_port`), so a capability for a service is never one for a pod port,
/// and a pod and a service of the same name stay apart.
pub const SERVICE_PORT: u16 = 0;
/// The default public host of a service: one DNS label under the domain.
pub const DEFAULT_SERVICE_TEMPLATE: &str = "svc-{name}.{domain}";

/// The query that names `addr` to the control plane: `service=NAME` for a service
/// ([`SERVICE_PORT`]), `pod=SLUG&port=PORT` for a pod port. Names are slugs, safe in a query.
pub fn target_query(addr: &PodAddr) -> String {
    if addr.port == SERVICE_PORT {
        format!("service={}", addr.pod)
    } else {
        format!("pod={}&port={}", addr.pod, addr.port)
    }
}

/// A compiled service host template: literal `prefix`, the service name, literal `suffix`
/// (which ends with `.domain`). Parsing is strict and canonical, as for pod hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTemplate {
    prefix: String,
    suffix: String,
    source: String,
}

impl ServiceTemplate {
    /// The name starts a DNS label (`{name}.{domain}`): it may not start it the way
    /// internationalized names do ([`starts_label_reserved`]).
    fn reserved(&self, name: &str) -> bool {
        (self.prefix.is_empty() || self.prefix.ends_with('.')) && starts_label_reserved(name)
    }
}

impl fmt::Display for ServiceTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl ServiceTemplate {
    /// Compiles `template` (with `{name}` once and a trailing `.{domain}`) against `domain`.
    pub fn new(template: &str, domain: &str) -> Result<Self, TemplateError> {
        validate_domain(domain)?;
        let Some(body) = template.strip_suffix(".{domain}") else {
            return Err(TemplateError::Placeholders);
        };
        if body.contains("{domain}")
            || body.matches("{name}").count() != 1
            || body.contains("{pod}")
            || body.contains("{port}")
        {
            return Err(TemplateError::Placeholders);
        }
        let Some((prefix, rest)) = body.split_once("{name}") else {
            return Err(TemplateError::Placeholders);
        };
        if !prefix.bytes().all(is_host_char) || !rest.bytes().all(is_host_char) {
            return Err(TemplateError::InvalidCharacter);
        }
        let compiled = Self {
            prefix: prefix.to_owned(),
            suffix: format!("{rest}.{domain}"),
            source: template.replace("{domain}", domain),
        };
        if compiled.render("a").split('.').any(str::is_empty) {
            return Err(TemplateError::EmptyLabel);
        }
        Ok(compiled)
    }

    /// Parses an `:authority` (or `Host`) value into the service name it names.
    pub fn parse(&self, authority: &str) -> Result<String, HostError> {
        let host = normalize_authority(authority)?;
        if !host.bytes().all(is_host_char) {
            return Err(HostError::InvalidCharacter);
        }
        let Some(head) = host.strip_suffix(self.suffix.as_str()) else {
            return Err(HostError::WrongDomain);
        };
        let name = head
            .strip_prefix(self.prefix.as_str())
            .ok_or(HostError::NoMatch)?;
        validate_slug(name)?;
        if self.reserved(name) {
            return Err(HostError::ReservedLabel);
        }
        let rendered = self.render(name);
        if rendered != host {
            return Err(HostError::NoMatch);
        }
        if rendered.split('.').any(|label| label.len() > MAX_LABEL_LEN) {
            return Err(HostError::LabelTooLong);
        }
        Ok(name.to_owned())
    }

    /// Renders the host of service `name`.
    pub fn render(&self, name: &str) -> String {
        format!("{}{name}{}", self.prefix, self.suffix)
    }

    /// Checks that a service name is a valid slug whose host fits DNS limits.
    pub fn check_name(&self, name: &str) -> Result<(), HostError> {
        validate_slug(name)?;
        if self.reserved(name) {
            return Err(HostError::ReservedLabel);
        }
        if self
            .render(name)
            .split('.')
            .any(|label| label.len() > MAX_LABEL_LEN)
        {
            return Err(HostError::LabelTooLong);
        }
        Ok(())
    }
}

/// Every public host: pod ports by the pod template and, when configured, services by the
/// service template (a service is the address (`name`, [`SERVICE_PORT`])). A host that both
/// templates accept is a pod host: `render` of a service whose host would be read as a pod's
/// does not parse back to it, so such a name is refused where services are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicHosts {
    pods: HostTemplate,
    services: Option<ServiceTemplate>,
}

impl fmt::Display for PublicHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.pods.fmt(f)
    }
}

impl PublicHosts {
    pub fn new(pods: HostTemplate, services: Option<ServiceTemplate>) -> Self {
        Self { pods, services }
    }

    /// The pod host template.
    pub fn pods(&self) -> &HostTemplate {
        &self.pods
    }

    /// The service host template, when services are published.
    pub fn services(&self) -> Option<&ServiceTemplate> {
        self.services.as_ref()
    }

    /// Parses an authority into the pod port or the service it names; a host neither template
    /// accepts gets the pod template's error.
    pub fn parse(&self, authority: &str) -> Result<PodAddr, HostError> {
        let pod_error = match self.pods.parse(authority) {
            Ok(addr) => return Ok(addr),
            Err(err) => err,
        };
        match self.services.as_ref().map(|s| s.parse(authority)) {
            Some(Ok(name)) => Ok(PodAddr {
                pod: name,
                port: SERVICE_PORT,
            }),
            _ => Err(pod_error),
        }
    }

    /// Renders the host of a pod port, or of a service for [`SERVICE_PORT`]. Without a service
    /// template a service renders as port 0 of the pod template, a host that never parses.
    pub fn render(&self, addr: &PodAddr) -> String {
        match (&self.services, addr.port) {
            (Some(services), SERVICE_PORT) => services.render(&addr.pod),
            _ => self.pods.render(addr),
        }
    }

    /// Whether `name` can be a service: the service template exists, the name fits it, and its
    /// host parses back to the service (not to a pod port).
    pub fn check_service_name(&self, name: &str) -> Result<(), HostError> {
        let Some(services) = &self.services else {
            return Err(HostError::NoMatch);
        };
        services.check_name(name)?;
        let addr = PodAddr {
            pod: name.to_owned(),
            port: SERVICE_PORT,
        };
        match self.parse(&self.render(&addr)) {
            Ok(parsed) if parsed == addr => Ok(()),
            _ => Err(HostError::NoMatch),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn public() -> HostTemplate {
        HostTemplate::new(DEFAULT_PUBLIC_TEMPLATE, "example.dev").unwrap()
    }

    fn upstream() -> HostTemplate {
        HostTemplate::new(DEFAULT_UPSTREAM_TEMPLATE, "example.dev").unwrap()
    }

    fn addr(pod: &str, port: u16) -> PodAddr {
        PodAddr {
            pod: pod.into(),
            port,
        }
    }

    #[test]
    fn parses_and_renders_the_default_templates() {
        let cases = [
            ("localhost-8726-pod-myslug.example.dev", "myslug", 8726),
            ("localhost-1-pod-a.example.dev", "a", 1),
            (
                "localhost-65535-pod-my-pod-2.example.dev",
                "my-pod-2",
                65535,
            ),
            ("localhost-3000-pod-0.example.dev", "0", 3000),
            ("localhost-80-pod-a-pod-b.example.dev", "a-pod-b", 80),
        ];
        for (host, pod, port) in cases {
            assert_eq!(public().parse(host), Ok(addr(pod, port)), "{host}");
            assert_eq!(public().render(&addr(pod, port)), host);
        }
        let up = upstream();
        assert_eq!(
            up.render(&addr("myslug", 8726)),
            "localhost-8726.pod-myslug.example.dev"
        );
        assert_eq!(
            up.parse("localhost-8726.pod-myslug.example.dev"),
            Ok(addr("myslug", 8726))
        );
    }

    #[test]
    fn normalises_port_suffix_and_one_trailing_dot_only() {
        let t = public();
        assert_eq!(
            t.parse("localhost-8726-pod-x.example.dev:10000"),
            Ok(addr("x", 8726))
        );
        assert_eq!(
            t.parse("localhost-8726-pod-x.example.dev."),
            Ok(addr("x", 8726))
        );
        assert_eq!(
            t.parse("localhost-8726-pod-x.example.dev.:443"),
            Ok(addr("x", 8726))
        );
        assert_eq!(
            t.parse("localhost-8726-pod-x.example.dev.."),
            Err(HostError::WrongDomain)
        );
        assert_eq!(
            t.parse("localhost-8726-pod-x.example.dev:"),
            Err(HostError::BadPortSuffix)
        );
        assert_eq!(
            t.parse("localhost-8726-pod-x.example.dev:x1"),
            Err(HostError::BadPortSuffix)
        );
        assert_eq!(
            t.parse("localhost-8726-pod-x.example.dev:1:2"),
            Err(HostError::InvalidCharacter)
        );
    }

    #[test]
    fn rejects_every_malformed_host() {
        let t = public();
        let long_slug = "a".repeat(60);
        let cases: Vec<(String, HostError)> = vec![
            ("".into(), HostError::Empty),
            (":80".into(), HostError::Empty),
            (
                "localhost-8726-pod-x.example.dev.evil.com".into(),
                HostError::WrongDomain,
            ),
            (
                "localhost-8726-pod-x.evilexample.dev".into(),
                HostError::WrongDomain,
            ),
            (
                "localhost-8726-pod-xexample.dev".into(),
                HostError::WrongDomain,
            ),
            ("example.dev".into(), HostError::WrongDomain),
            (".example.dev".into(), HostError::NoMatch),
            (
                "LOCALHOST-8726-pod-x.example.dev".into(),
                HostError::InvalidCharacter,
            ),
            (
                "localhost-8726-pod-X.example.dev".into(),
                HostError::InvalidCharacter,
            ),
            (
                "localhost-8726-pod-x_y.example.dev".into(),
                HostError::InvalidCharacter,
            ),
            (
                "localhost-8726-pod-x y.example.dev".into(),
                HostError::InvalidCharacter,
            ),
            (
                "localhost-08726-pod-x.example.dev".into(),
                HostError::BadPort,
            ),
            ("localhost-0-pod-x.example.dev".into(), HostError::BadPort),
            (
                "localhost-65536-pod-x.example.dev".into(),
                HostError::BadPort,
            ),
            (
                "localhost-99999999-pod-x.example.dev".into(),
                HostError::BadPort,
            ),
            ("localhost--pod-x.example.dev".into(), HostError::BadPort),
            (
                "localhost-+80-pod-x.example.dev".into(),
                HostError::InvalidCharacter,
            ),
            ("localhost-8726-pod-.example.dev".into(), HostError::BadSlug),
            (
                "localhost-8726-pod--x.example.dev".into(),
                HostError::BadSlug,
            ),
            (
                "localhost-8726-pod-x-.example.dev".into(),
                HostError::BadSlug,
            ),
            (
                "localhost-8726-pod-x.xn--exmple-cua.dev".into(),
                HostError::WrongDomain,
            ),
            (
                "localhost-8726-pod-a.b.example.dev".into(),
                HostError::BadSlug,
            ),
            (
                "x.localhost-8726-pod-a.example.dev".into(),
                HostError::NoMatch,
            ),
            (
                "localhost-8726.pod-a.example.dev".into(),
                HostError::NoMatch,
            ),
            (
                format!("localhost-8726-pod-{long_slug}.example.dev"),
                HostError::LabelTooLong,
            ),
            ("a".repeat(300), HostError::TooLong),
            (
                "localhost-8726-pod-é.example.dev".into(),
                HostError::InvalidCharacter,
            ),
            (
                "localhost-8726-pod-x.example.dev\0".into(),
                HostError::InvalidCharacter,
            ),
        ];
        for (host, err) in cases {
            assert_eq!(t.parse(&host), Err(err.clone()), "{host:?}");
        }
    }

    #[test]
    fn a_slug_that_starts_a_label_never_starts_it_as_an_internationalized_name() {
        // `xn--lice-43d` is how a browser is sent `аlice` (a Cyrillic `а`), and shows it.
        let pod_first = HostTemplate::new("{pod}.p{port}.{domain}", "example.dev").unwrap();
        let port_first = HostTemplate::new("p{port}.{pod}.{domain}", "example.dev").unwrap();
        for t in [&pod_first, &port_first] {
            for slug in ["xn--lice-43d", "ab--c", "12--3"] {
                let host = t.render(&addr(slug, 80));
                assert_eq!(t.parse(&host), Err(HostError::ReservedLabel), "{host}");
                assert_eq!(t.check_slug(slug), Err(HostError::ReservedLabel), "{slug}");
            }
            for slug in ["alice", "a--b", "abc--d", "x-n--a"] {
                let host = t.render(&addr(slug, 80));
                assert_eq!(t.parse(&host), Ok(addr(slug, 80)), "{host}");
                assert_eq!(t.check_slug(slug), Ok(()), "{slug}");
            }
        }
        // Inside a label (the default template), the label starts with the template's literal.
        let t = public();
        assert_eq!(
            t.parse("localhost-80-pod-xn--lice-43d.example.dev"),
            Ok(addr("xn--lice-43d", 80))
        );
        assert_eq!(t.check_slug("xn--lice-43d"), Ok(()));
        // The same for service names.
        let bare = ServiceTemplate::new("{name}.{domain}", "example.dev").unwrap();
        assert_eq!(
            bare.parse("xn--lice-43d.example.dev"),
            Err(HostError::ReservedLabel)
        );
        assert_eq!(
            bare.check_name("xn--lice-43d"),
            Err(HostError::ReservedLabel)
        );
        assert_eq!(bare.parse("alice.example.dev"), Ok("alice".to_owned()));
        let prefixed = ServiceTemplate::new(DEFAULT_SERVICE_TEMPLATE, "example.dev").unwrap();
        assert_eq!(
            prefixed.parse("svc-xn--lice-43d.example.dev"),
            Ok("xn--lice-43d".to_owned())
        );
        // A domain of internationalized labels is the operator's choice, and stays possible.
        let idn_domain = HostTemplate::new("{pod}.p{port}.{domain}", "xn--exmple-cua.dev").unwrap();
        assert_eq!(
            idn_domain.parse("alice.p80.xn--exmple-cua.dev"),
            Ok(addr("alice", 80))
        );
    }

    #[test]
    fn inner_double_hyphens_follow_the_slug_grammar() {
        // The slug grammar allows inner hyphens; the label as a whole starts with the template's
        // literal, so it can never be an IDN (`xn--`) label.
        let t = public();
        assert_eq!(
            t.parse("localhost-1-pod-a--b.example.dev"),
            Ok(addr("a--b", 1))
        );
    }

    #[test]
    fn templates_are_validated() {
        for ambiguous in [
            "{port}0{pod}.{domain}",
            "{pod}-1-{port}.{domain}",
            "x{pod}--{port}.{domain}",
        ] {
            assert_eq!(
                HostTemplate::new(ambiguous, "d"),
                Err(TemplateError::AmbiguousSeparator),
                "{ambiguous}"
            );
        }
        assert!(HostTemplate::new("{port}0x{pod}.{domain}", "d").is_ok());
        assert!(HostTemplate::new("{port}-{pod}.{domain}", "d").is_err());
        assert!(HostTemplate::new("p{port}{pod}.{domain}", "d").is_err());
        assert!(HostTemplate::new("localhost-{port}-pod-{pod}", "d").is_err());
        assert!(HostTemplate::new("{pod}.{pod}-{port}.{domain}", "d").is_err());
        assert!(HostTemplate::new("localhost-{port}-pod-{pod}.{domain}", "").is_err());
        assert!(HostTemplate::new("localhost-{port}-pod-{pod}.{domain}", "-a.b").is_err());
        assert!(HostTemplate::new("Localhost-{port}-pod-{pod}.{domain}", "d").is_err());
        for empty in [
            ".{pod}.{port}.{domain}",
            "{pod}..{port}.{domain}",
            "{pod}.-{port}..{domain}",
        ] {
            assert!(HostTemplate::new(empty, "d").is_err(), "{empty}");
        }
        let t = HostTemplate::new("{pod}--p{port}.{domain}", "d").unwrap();
        assert_eq!(t.parse("a-b--p80.d"), Ok(addr("a-b", 80)));
        assert_eq!(t.render(&addr("a-b", 80)), "a-b--p80.d");
    }

    #[test]
    fn slug_length_is_bounded_by_the_label() {
        let t = public();
        // "localhost-65535-pod-" is 20 characters.
        assert_eq!(t.max_slug_len(), 43);
        assert!(t.check_slug(&"a".repeat(43)).is_ok());
        assert_eq!(t.check_slug(&"a".repeat(44)), Err(HostError::LabelTooLong));
        let up = upstream();
        assert_eq!(up.max_slug_len(), 59);
    }

    #[test]
    fn services_parse_and_render_beside_pods() {
        let services = ServiceTemplate::new(DEFAULT_SERVICE_TEMPLATE, "example.dev").unwrap();
        assert_eq!(
            services.parse("svc-openai.example.dev:443"),
            Ok("openai".into())
        );
        assert_eq!(services.render("openai"), "svc-openai.example.dev");
        assert_eq!(services.parse("svc-.example.dev"), Err(HostError::BadSlug));
        assert_eq!(
            services.parse("svc-a.b.example.dev"),
            Err(HostError::BadSlug)
        );
        assert_eq!(services.parse("x.example.dev"), Err(HostError::NoMatch));
        assert!(ServiceTemplate::new("svc.{domain}", "d").is_err());
        assert!(ServiceTemplate::new("{name}-{port}.{domain}", "d").is_err());
        let hosts = PublicHosts::new(public(), Some(services));
        assert_eq!(
            hosts.parse("svc-openai.example.dev"),
            Ok(addr("openai", SERVICE_PORT))
        );
        assert_eq!(
            hosts.parse("localhost-1-pod-openai.example.dev"),
            Ok(addr("openai", 1))
        );
        assert_eq!(
            hosts.render(&addr("openai", SERVICE_PORT)),
            "svc-openai.example.dev"
        );
        assert_eq!(hosts.check_service_name("openai"), Ok(()));
        assert_eq!(
            target_query(&addr("openai", SERVICE_PORT)),
            "service=openai"
        );
        assert_eq!(target_query(&addr("openai", 80)), "pod=openai&port=80");
        // A service template that reads like a pod host: those names are refused.
        let pod_like = ServiceTemplate::new("localhost-1-pod-{name}.{domain}", "example.dev");
        let hosts = PublicHosts::new(public(), pod_like.ok());
        assert!(hosts.check_service_name("openai").is_err());
        let without = PublicHosts::new(public(), None);
        assert!(without.parse("svc-openai.example.dev").is_err());
        assert!(without.check_service_name("openai").is_err());
    }
}
