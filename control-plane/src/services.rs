//! Services: upstream APIs published on their own public host (the service host template),
//! reached through the same filter and credentials as pods (a service is the address
//! (`name`, `host::SERVICE_PORT`)), with a credential Envoy sets on every forwarded request.
//!
//! The credential's value is sealed under the operator's key-encryption key
//! (`key_encryption`), bound to its row: the service's name, the kind `service-credential` and
//! the header name are the associated data, so a sealed value copied onto another service, or
//! under another header name, does not open. It is opened only to build the filter's
//! configuration, which the xDS server pushes to Envoy over ECDS; `GET /v1/filter-config`
//! shows it redacted ([`redact`]), and admins only ever see its fingerprint. After a rotation of
//! the key-encryption key, credentials sealed under the previous key open while it stays
//! configured; `podgate keys rewrap` moves them to the current one ([`rewrap`]), as it does
//! the signing keys, and setting a credential again seals it under the current one.

use podgate_protocol::config::{
    credential_header_allowed, credential_value_allowed, header_reaches_upstream, FilterConfig,
    InjectedHeader, SecretValue, ServiceEntry,
};
use podgate_xds::envoy_types::pb::envoy::config::cluster::v3::Cluster;
use podgate_xds::{
    fixed_host_cluster, with_upstream_tls, CircuitBreakerLimits, FixedHostClusterOptions,
    TrustedCa, UpstreamProtocol, UpstreamTls,
};
use sha2::{Digest, Sha256};

use crate::key_encryption::{KekError, KeyEncryption, RowBinding, Sealed};
use crate::store::{ServiceRow, StoredCredential};

/// The CA bundle that verifies an https upstream without its own CA: the system's roots, as
/// Debian, Ubuntu and Alpine install them (Envoy has no default trust store).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// What `GET /v1/filter-config` shows in place of a credential's value.
pub const REDACTED: &str = "(redacted)";
/// The `kind` a sealed credential is bound to (signing keys are `ticket` or `capability`).
const SEALED_KIND: &str = "service-credential";

/// An upstream URL, checked: `http` or `https`, a host, an optional port, no path beyond `/`,
/// no query, fragment or user information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub https: bool,
    /// The host name or IP address (without brackets).
    pub host: String,
    pub port: u16,
    /// The `Host` the upstream receives: the URL's authority (its port only when not the
    /// scheme's default).
    pub authority: String,
}

/// Parses an upstream URL, saying what is wrong.
pub fn parse_upstream(url: &str) -> Result<Upstream, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let https = match parsed.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(format!("the scheme {other:?} is not http or https")),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("user information is not allowed; set a credential instead".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("a query or fragment is not allowed".into());
    }
    if parsed.path() != "/" {
        return Err(
            "a path is not allowed: a service is published at its upstream's root, so give scheme://host[:port]"
                .into(),
        );
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("the URL has no host".into()),
    };
    let port = parsed
        .port_or_known_default()
        .ok_or("the URL has no port")?;
    let authority = match parsed.port() {
        Some(p) => format!("{}:{p}", parsed.host_str().unwrap_or(&host)),
        None => parsed.host_str().unwrap_or(&host).to_owned(),
    };
    Ok(Upstream {
        https,
        host,
        port,
        authority,
    })
}

/// Whether a credential may be set: the header name and the value (which no message names).
pub fn check_credential(header: &str, value: &str) -> Result<(), String> {
    if !credential_header_allowed(header) {
        return Err(format!(
            "the header name {header:?} cannot carry a credential: use a lowercase header name such as authorization or x-api-key, not a hop-by-hop, cookie, host or x-podgate-* header"
        ));
    }
    if !header_reaches_upstream(header) {
        return Err(format!(
            "Envoy overwrites or removes {header:?} before a request reaches the upstream, so a credential there would never arrive; use the header the upstream reads its key from, such as authorization or x-api-key"
        ));
    }
    if !credential_value_allowed(value) {
        return Err("the credential's value must be 1-8192 visible ASCII characters or inner spaces, without line breaks".into());
    }
    Ok(())
}

/// What admins see of a credential: `sha256:` and the first 8 hex digits of the value's
/// SHA-256, enough to tell two values apart, too little to check a guess with any confidence.
pub fn fingerprint(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn binding<'a>(name: &'a str, header: &'a str) -> RowBinding<'a> {
    RowBinding {
        kid: name,
        kind: SEALED_KIND,
        alg: header,
    }
}

/// Seals a service's credential under the current key-encryption key (plaintext without one,
/// which only dev mode allows).
pub fn seal(
    kek: &KeyEncryption,
    name: &str,
    header: &str,
    value: &str,
) -> Result<StoredCredential, KekError> {
    let fingerprint = fingerprint(value);
    let (kek_id, value) = match kek.seal(binding(name, header), value.as_bytes())? {
        Some(sealed) => (Some(sealed.kek_id), sealed.ciphertext),
        None => (None, value.to_owned()),
    };
    Ok(StoredCredential {
        header: header.to_owned(),
        kek_id,
        value,
        fingerprint,
    })
}

/// The largest CA bundle a service or its token endpoint may have.
pub const MAX_CA_PEM_LEN: usize = 64 * 1024;

/// Whether `pem` (a service's `ca_pem`, or its OAuth token endpoint's) is at most
/// [`MAX_CA_PEM_LEN`] bytes and every block of it an X.509 certificate that can be a trust
/// anchor, as Envoy and rustls will read it: a truncated or mistyped one would make Envoy
/// refuse the service's cluster (and leave the service without an upstream), so it is refused
/// here with the reason.
pub fn check_ca_pem(pem: &str) -> Result<(), String> {
    if pem.len() > MAX_CA_PEM_LEN || !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "must be PEM certificates (-----BEGIN CERTIFICATE-----), at most {MAX_CA_PEM_LEN} bytes"
        ));
    }
    use rustls::pki_types::pem::{self, PemObject as _};
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let cert = cert.map_err(|e| {
            let why = match e {
                pem::Error::MissingSectionEnd { .. } => {
                    "is cut short (no -----END CERTIFICATE----- after its -----BEGIN line)"
                }
                pem::Error::Base64Decode(_) => "is not base64 between its BEGIN and END lines",
                _ => "is not readable PEM",
            };
            format!("certificate {} {why}", i + 1)
        })?;
        roots
            .add(cert)
            .map_err(|e| format!("certificate {} is not an X.509 certificate: {e}", i + 1))?;
    }
    if roots.is_empty() {
        return Err(
            "no complete certificate (-----BEGIN CERTIFICATE----- … -----END CERTIFICATE-----)"
                .into(),
        );
    }
    Ok(())
}

/// Opens a service's stored credential.
pub fn open(
    kek: &KeyEncryption,
    name: &str,
    stored: &StoredCredential,
) -> Result<String, KekError> {
    let Some(kek_id) = &stored.kek_id else {
        return Ok(stored.value.clone());
    };
    let sealed = Sealed {
        kek_id: kek_id.clone(),
        ciphertext: stored.value.clone(),
    };
    let plain = kek.open(binding(name, &stored.header), &sealed)?;
    String::from_utf8(plain.to_vec()).map_err(|_| KekError::Tampered {
        kek_id: kek_id.clone(),
    })
}

/// Moves every stored service credential and OAuth configuration under the current
/// key-encryption key (`podgate keys rewrap`, after a rotation of that key): all are opened
/// first, so one that does not open changes nothing; then each service is sealed again in a
/// change of its own that reads it afresh, so that a credential changed or a service deleted
/// meanwhile (the control planes keep serving) is neither undone nor brought back. Returns how
/// many services were resealed and how many sealed values already were under the current key.
pub async fn rewrap(db: &crate::store::Db, kek: &KeyEncryption) -> Result<(usize, usize), String> {
    reseal(db, kek, crate::keys::Reseal::All).await
}

/// At every start with a key-encryption key: the service credentials and OAuth configurations
/// stored in plaintext (written in dev mode without one) are sealed under it, as the signing
/// keys are; those under a previous key-encryption key are left for `podgate keys rewrap`.
/// Returns how many services were sealed.
pub async fn seal_plaintext(db: &crate::store::Db, kek: &KeyEncryption) -> Result<usize, String> {
    reseal(db, kek, crate::keys::Reseal::Plaintext)
        .await
        .map(|(written, _)| written)
}

async fn reseal(
    db: &crate::store::Db,
    kek: &KeyEncryption,
    which: crate::keys::Reseal,
) -> Result<(usize, usize), String> {
    let Some(current) = kek.current() else {
        return Err("no current key-encryption key to seal the service credentials with".into());
    };
    let rows = db
        .list_services()
        .await
        .map_err(|e| format!("reading the services: {e}"))?;
    let mut to_reseal = Vec::new();
    let mut already = 0;
    for row in &rows {
        let (resealed, under_current) = match resealed(kek, current.id(), row, which) {
            Ok(done) => done,
            // At start, one row that does not read must not keep the others in plaintext.
            Err(e) if which == crate::keys::Reseal::Plaintext => {
                tracing::error!(service = %row.name, error = %e, "a service credential stored in plaintext cannot be read; left as it is");
                continue;
            }
            Err(e) => return Err(e),
        };
        already += under_current;
        if resealed.is_some() {
            to_reseal.push(row.name.clone());
        }
    }
    let mut written = 0;
    for name in to_reseal {
        let failed = |e: sqlx::Error| format!("storing the credential of service {name}: {e}");
        let mut change = db.change().await.map_err(failed)?;
        let fresh = change.service_for_update(&name).await.map_err(failed)?;
        // Deleted meanwhile: nothing to reseal. Changed meanwhile: what is stored now is sealed.
        let row = match fresh {
            Some(row) => match resealed(kek, current.id(), &row, which) {
                Ok((row, _)) => row,
                Err(e) if which == crate::keys::Reseal::Plaintext => {
                    tracing::error!(service = %name, error = %e, "a service credential stored in plaintext cannot be read; left as it is");
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        if let Some(row) = row {
            change.put_service(&row).await.map_err(failed)?;
            written += 1;
        }
        change.commit().await.map_err(failed)?;
    }
    Ok((written, already))
}

/// Service `row` with its credential and OAuth configuration sealed under the key-encryption key
/// `current_id` (`None` when nothing of it is to be sealed: `which` says whether a value under a
/// previous key is), and how many of its sealed values already were under `current_id`.
fn resealed(
    kek: &KeyEncryption,
    current_id: &str,
    row: &ServiceRow,
    which: crate::keys::Reseal,
) -> Result<(Option<ServiceRow>, usize), String> {
    // Whether a value stored under `kek_id` stays as it is.
    let stays = |kek_id: Option<&str>| match (kek_id, which) {
        (None, _) => false,
        (Some(id), _) if id == current_id => true,
        (Some(_), crate::keys::Reseal::Plaintext) => true,
        (Some(_), crate::keys::Reseal::All) => false,
    };
    let mut changed = false;
    let mut already = 0;
    let mut credential = row.credential.clone();
    if let Some(stored) = &row.credential {
        if stays(stored.kek_id.as_deref()) {
            already += usize::from(stored.kek_id.as_deref() == Some(current_id));
        } else {
            let value = open(kek, &row.name, stored)
                .map_err(|e| format!("the credential of service {}: {e}", row.name))?;
            credential = Some(
                seal(kek, &row.name, &stored.header, &value)
                    .map_err(|e| format!("the credential of service {}: {e}", row.name))?,
            );
            changed = true;
        }
    }
    let mut oauth = row.oauth.clone();
    if let Some(stored) = &row.oauth {
        if stays(stored.kek_id.as_deref()) {
            already += usize::from(stored.kek_id.as_deref() == Some(current_id));
        } else {
            let config = crate::service_oauth::open(kek, &row.name, stored)
                .map_err(|e| format!("the OAuth configuration of service {}: {e}", row.name))?;
            oauth = Some(
                crate::service_oauth::seal(kek, &row.name, &config)
                    .map_err(|e| format!("the OAuth configuration of service {}: {e}", row.name))?,
            );
            changed = true;
        }
    }
    let row = changed.then(|| ServiceRow {
        credential,
        oauth,
        ..row.clone()
    });
    Ok((row, already))
}

/// The Envoy cluster of service `row`: its name and a digest of its upstream (URL and CA).
///
/// Envoy applies a push's clusters and its filter configuration one after the other, and a
/// cluster whose host changed keeps serving with the old host while the new one warms (DNS). Had
/// the cluster kept its name when a service's upstream and credential change together, the new
/// credential could go to the old upstream meanwhile. With the upstream in the name, a filter
/// entry only ever names a cluster with the upstream its credential was set for; until that
/// cluster is in force Envoy answers `503` for it.
pub fn cluster_name(row: &ServiceRow) -> String {
    let mut digest = Sha256::new();
    digest.update(row.upstream_url.as_bytes());
    digest.update([0]);
    if let Some(pem) = &row.ca_pem {
        digest.update(pem.as_bytes());
    }
    let hex: String = digest
        .finalize()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}_{hex}", stat_name(&row.name))
}

/// The name service `name`'s cluster has in Envoy's statistics, whatever its upstream
/// (`cluster.podgate_service_{name}.…`).
pub fn stat_name(name: &str) -> String {
    format!("podgate_service_{name}")
}

/// What the filter's directory holds of a service.
#[derive(Debug)]
pub enum Published {
    /// Forwarded with this entry (its credential opened, if it has one).
    Entry(Box<ServiceEntry>),
    /// Listed in `services_without_credential`: it has a credential, but none can be used now
    /// (no valid OAuth token and no fallback, or a sealed value that does not open), so the
    /// filter answers `502` and forwards nothing.
    WithoutCredential,
    /// Left out (its upstream URL cannot be used): the filter answers as for no service.
    Absent,
}

/// The filter's directory entry of a service, with its credential opened (a warning names the
/// service, never the value, when it is not an entry). A service is never published without
/// the credential it has.
///
/// A service with an OAuth credential carries its current token (`service_oauth`), or its
/// static credential as the fallback while it has none; with neither it is
/// [`Published::WithoutCredential`], so that nothing reaches its upstream without a credential.
pub fn directory_entry(
    kek: &KeyEncryption,
    tokens: &crate::service_oauth::ServiceTokens,
    row: &ServiceRow,
) -> Published {
    let (published, why) = classify(kek, tokens, row);
    // Found again at every rebuild: logged when first seen, then now and then while it lasts.
    if let Some(why) =
        why.filter(|why| crate::repeats::due(&format!("service {}: {why}", row.name)))
    {
        match published {
            Published::Absent => {
                tracing::warn!(service = %row.name, "service not published: {why}")
            }
            _ => tracing::warn!(service = %row.name, "service without a credential: {why}"),
        }
    }
    published
}

/// Whether service `row` has a credential Envoy cannot use now ([`Published::WithoutCredential`]),
/// as [`directory_entry`] decides it, without logging: for `/readyz`.
pub fn without_credential(
    kek: &KeyEncryption,
    tokens: &crate::service_oauth::ServiceTokens,
    row: &ServiceRow,
) -> bool {
    matches!(classify(kek, tokens, row).0, Published::WithoutCredential)
}

/// [`directory_entry`]'s decision, and why when it is not an entry.
fn classify(
    kek: &KeyEncryption,
    tokens: &crate::service_oauth::ServiceTokens,
    row: &ServiceRow,
) -> (Published, Option<String>) {
    let upstream = match parse_upstream(&row.upstream_url) {
        Ok(u) => u,
        Err(e) => return (Published::Absent, Some(format!("its upstream URL: {e}"))),
    };
    // The header of the OAuth token, while the fallback is in force.
    let mut oauth_header = None;
    if let Some(stored) = &row.oauth {
        let config = match crate::service_oauth::open(kek, &row.name, stored) {
            Ok(config) => config,
            Err(e) => {
                return (
                    Published::WithoutCredential,
                    Some(format!("its OAuth configuration cannot be opened: {e}")),
                )
            }
        };
        if let Some((value, expires_ms)) = tokens.current_until(&row.name, &config, row.oauth_epoch)
        {
            let strip_headers = other_credential_headers(row, Some(&config.header), &config.header);
            // The filter stops sending the token at its expiry (to the second before it) and
            // sets the fallback from then on, should no control plane push the next token in
            // time; one that does not open is left out (the filter answers 502 then), as it
            // would be once the token is gone.
            let fallback_credential = row.credential.as_ref().and_then(|stored| {
                let value = open(kek, &row.name, stored).ok()?;
                Some(InjectedHeader {
                    name: stored.header.clone(),
                    value: SecretValue(value),
                })
            });
            let entry = ServiceEntry {
                cluster: cluster_name(row),
                host: upstream.authority,
                credential: Some(InjectedHeader {
                    name: config.header,
                    value: SecretValue(value),
                }),
                strip_headers,
                resource_path: row.resource_path.clone(),
                credential_expires_at: Some(expires_ms.div_euclid(1000)),
                fallback_credential,
            };
            return (Published::Entry(Box::new(entry)), None);
        }
        if row.credential.is_none() {
            return (
                Published::WithoutCredential,
                Some("no valid OAuth token and no fallback credential".into()),
            );
        }
        oauth_header = Some(config.header);
    }
    let credential = match &row.credential {
        None => None,
        Some(stored) => match open(kek, &row.name, stored) {
            Ok(value) => Some(InjectedHeader {
                name: stored.header.clone(),
                value: SecretValue(value),
            }),
            Err(e) => {
                return (
                    Published::WithoutCredential,
                    Some(format!("its credential cannot be opened: {e}")),
                )
            }
        },
    };
    let strip_headers = match &credential {
        Some(c) => other_credential_headers(row, oauth_header.as_deref(), &c.name),
        None => Vec::new(),
    };
    let entry = ServiceEntry {
        cluster: cluster_name(row),
        host: upstream.authority,
        credential,
        strip_headers,
        resource_path: row.resource_path.clone(),
        credential_expires_at: None,
        fallback_credential: None,
    };
    (Published::Entry(Box::new(entry)), None)
}

/// The headers of service `row`'s credentials (its fallback's, and `oauth_header` when its OAuth
/// configuration opened) other than `injected`, the one in force: a caller's copies of them are
/// removed, as the caller's copy of the one in force is replaced.
fn other_credential_headers(
    row: &ServiceRow,
    oauth_header: Option<&str>,
    injected: &str,
) -> Vec<String> {
    row.credential
        .iter()
        .map(|c| c.header.as_str())
        .chain(oauth_header)
        .filter(|h| *h != injected)
        .map(str::to_owned)
        .collect()
}

/// The Envoy cluster of a service: its upstream's host and port (DNS when a name), TLS with
/// SNI and certificate verification for https (its own CA, or the system's roots).
pub fn cluster(row: &ServiceRow) -> Option<Cluster> {
    let upstream = parse_upstream(&row.upstream_url).ok()?;
    let mut cluster = fixed_host_cluster(
        &cluster_name(row),
        &upstream.host,
        upstream.port,
        &FixedHostClusterOptions {
            connect_timeout: std::time::Duration::from_secs(5),
            circuit_breakers: CircuitBreakerLimits::PER_POD,
            protocol: UpstreamProtocol::Http1,
        },
    );
    cluster.alt_stat_name = stat_name(&row.name);
    if !upstream.https {
        return Some(cluster);
    }
    let trusted_ca = match &row.ca_pem {
        Some(pem) => TrustedCa::Pem(pem.clone()),
        None => TrustedCa::File(SYSTEM_CA_FILE.to_owned()),
    };
    Some(with_upstream_tls(
        cluster,
        &UpstreamTls {
            server_name: upstream.host,
            trusted_ca,
        },
    ))
}

/// `config` with every service credential's value replaced by [`REDACTED`], for showing.
pub fn redact(mut config: FilterConfig) -> FilterConfig {
    for service in config.services.values_mut() {
        let credentials = service
            .credential
            .iter_mut()
            .chain(service.fallback_credential.iter_mut());
        for credential in credentials {
            credential.value = SecretValue(REDACTED.to_owned());
        }
    }
    config
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::key_encryption::KeyEncryptionKey;

    /// Service `api` of alice's at `https://api.example.com`, with neither credential.
    fn api() -> ServiceRow {
        ServiceRow {
            name: "api".into(),
            owner_id: "alice".into(),
            team_id: None,
            sharing: crate::store::Sharing::Owner,
            upstream_url: "https://api.example.com".into(),
            ca_pem: None,
            credential: None,
            oauth: None,
            resource_path: None,
            oauth_epoch: crate::store::OAuthEpoch::default(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn upstream_urls_are_checked() {
        let u = parse_upstream("https://api.example.com").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port),
            (true, "api.example.com", 443)
        );
        assert_eq!(u.authority, "api.example.com");
        let u = parse_upstream("http://127.0.0.1:8080/").unwrap();
        assert_eq!((u.port, u.authority.as_str()), (8080, "127.0.0.1:8080"));
        for bad in [
            "ftp://x",
            "https://u:p@x",
            "https://x/v1",
            "https://x?a=b",
            "x",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_serves_only_the_configuration_it_was_obtained_with() {
        use crate::key_encryption::KeyEncryptionKey;
        use crate::service_oauth::{parse, seal, OAuthConfig, ServiceTokens, Source, Token};
        let kek = KeyEncryption::new(Some(KeyEncryptionKey::from_bytes([7; 32], "test")), vec![]);
        let a = parse(serde_json::json!({"token_url": "https://idp.example/token", "grant": "client_credentials", "client_id": "c", "client_secret": "s"})).unwrap();
        let mut b = a.clone();
        b.scope = Some("other".into());
        let row = |config: &OAuthConfig| ServiceRow {
            credential: Some(super::seal(&kek, "api", "authorization", "Bearer fallback").unwrap()),
            oauth: Some(seal(&kek, "api", config).unwrap()),
            ..api()
        };
        let injected =
            |tokens: &ServiceTokens, row: &ServiceRow| match directory_entry(&kek, tokens, row) {
                Published::Entry(e) => e.credential.unwrap().value.0,
                other => panic!("{other:?}"),
            };
        let tokens = ServiceTokens::default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let token = Token {
            value: "from-a".into(),
            obtained_ms: now,
            expires_ms: now + 3_600_000,
        };
        // A fetch with configuration A answered after the service moved to B (or another
        // control plane changed it): B's requests get the fallback, never A's token.
        tokens.record("api", &a, 0, Ok(token));
        assert_eq!(injected(&tokens, &row(&a)), "Bearer from-a");
        assert_eq!(injected(&tokens, &row(&b)), "Bearer fallback");
        let status_of =
            |row: &ServiceRow| tokens.status(&kek, row, without_credential(&kek, &tokens, row));
        let status = status_of(&row(&b));
        assert!(matches!(status.source, Source::Fallback), "{status:?}");
        assert_eq!(status.expires_at, None);
        assert!(matches!(status_of(&row(&a)).source, Source::Oauth));
        // A configuration that does not open (sealed for another service): no credential, as
        // the filter's directory has it, whatever token is held.
        let sealed_elsewhere = ServiceRow {
            oauth: Some(seal(&kek, "other", &a).unwrap()),
            ..row(&a)
        };
        assert!(matches!(
            directory_entry(&kek, &tokens, &sealed_elsewhere),
            Published::WithoutCredential
        ));
        let status = status_of(&sealed_elsewhere);
        assert!(matches!(status.source, Source::None), "{status:?}");
        // Failures count in the generation they happened in: a refresh or a clear starts over.
        tokens.record("api", &a, 0, Err("down".into()));
        assert_eq!(status_of(&row(&a)).failures, 1);
        let refreshed = ServiceRow {
            oauth_epoch: crate::store::OAuthEpoch {
                generation: 1,
                cleared: 0,
            },
            ..row(&a)
        };
        assert_eq!(status_of(&refreshed).failures, 0);
    }

    #[test]
    fn a_services_cluster_is_named_after_its_upstream_and_counted_under_its_own_name() {
        let kek = KeyEncryption::new(None, vec![]);
        let tokens = crate::service_oauth::ServiceTokens::default();
        let row = ServiceRow {
            credential: Some(seal(&kek, "api", "authorization", "Bearer sk-1").unwrap()),
            ..api()
        };
        let entry_cluster = |row: &ServiceRow| match directory_entry(&kek, &tokens, row) {
            Published::Entry(e) => e.cluster,
            other => panic!("{other:?}"),
        };
        let cluster_of = |row: &ServiceRow| cluster(row).unwrap();
        // The filter's entry names the cluster built for the same upstream.
        assert_eq!(entry_cluster(&row), cluster_of(&row).name);
        assert!(cluster_of(&row).name.starts_with("podgate_service_api_"));
        // Another credential for the same upstream: the same cluster.
        let rekeyed = ServiceRow {
            credential: Some(seal(&kek, "api", "authorization", "Bearer sk-2").unwrap()),
            ..row.clone()
        };
        assert_eq!(entry_cluster(&rekeyed), entry_cluster(&row));
        // Another URL, or another CA: another cluster, so a credential set with it never names
        // the cluster of the upstream before.
        let moved = ServiceRow {
            upstream_url: "https://api2.example.com".into(),
            ..rekeyed.clone()
        };
        let pinned = ServiceRow {
            ca_pem: Some("-----BEGIN CERTIFICATE-----".into()),
            ..rekeyed.clone()
        };
        let names = [&row, &moved, &pinned].map(|r| cluster_of(r).name);
        assert!(names[0] != names[1] && names[0] != names[2] && names[1] != names[2]);
        assert_eq!(entry_cluster(&moved), names[1]);
        // Envoy's statistics keep the service's name.
        for r in [&row, &moved, &pinned] {
            assert_eq!(cluster_of(r).alt_stat_name, "podgate_service_api");
        }
    }

    #[test]
    fn a_service_is_never_an_entry_without_the_credential_it_has() {
        let kek = KeyEncryption::new(Some(KeyEncryptionKey::from_bytes([7; 32], "test")), vec![]);
        let tokens = crate::service_oauth::ServiceTokens::default();
        let oauth = crate::service_oauth::parse(serde_json::json!({"token_url": "https://idp.example/token", "grant": "client_credentials", "client_id": "c", "client_secret": "s"})).unwrap();
        let row = ServiceRow {
            oauth: Some(crate::service_oauth::seal(&kek, "api", &oauth).unwrap()),
            ..api()
        };
        // OAuth without a token or a fallback: without a credential.
        assert!(matches!(
            directory_entry(&kek, &tokens, &row),
            Published::WithoutCredential
        ));
        assert!(without_credential(&kek, &tokens, &row));
        // With a fallback: an entry carrying it.
        let fallback = ServiceRow {
            credential: Some(seal(&kek, "api", "authorization", "Bearer sk-1").unwrap()),
            ..row.clone()
        };
        match directory_entry(&kek, &tokens, &fallback) {
            Published::Entry(e) => {
                assert_eq!(e.credential.unwrap().value.0, "Bearer sk-1");
                // Both in `authorization`: nothing else to remove.
                assert!(e.strip_headers.is_empty(), "{:?}", e.strip_headers);
            }
            other => panic!("{other:?}"),
        }
        assert!(!without_credential(&kek, &tokens, &fallback));
        // The fallback in another header: while it is in force the caller's copy of the token's
        // header is removed, and while the token is, the caller's copy of the fallback's.
        let elsewhere = ServiceRow {
            credential: Some(seal(&kek, "api", "x-api-key", "sk-1").unwrap()),
            ..row.clone()
        };
        let entry = |tokens: &crate::service_oauth::ServiceTokens| match directory_entry(
            &kek, tokens, &elsewhere,
        ) {
            Published::Entry(e) => *e,
            other => panic!("{other:?}"),
        };
        let e = entry(&tokens);
        assert_eq!(e.credential.unwrap().name, "x-api-key");
        assert_eq!(e.strip_headers, vec!["authorization".to_owned()]);
        let now = crate::store::now_unix() * 1000;
        let token = crate::service_oauth::Token {
            value: "at-1".into(),
            obtained_ms: now,
            expires_ms: now + 600_000,
        };
        assert!(tokens.record("api", &oauth, 0, Ok(token)));
        let e = entry(&tokens);
        assert_eq!(e.credential.unwrap().value.0, "Bearer at-1");
        assert_eq!(e.strip_headers, vec!["x-api-key".to_owned()]);
        // The filter is told when the token expires and what to set from then on.
        assert_eq!(e.credential_expires_at, Some(now / 1000 + 600));
        let fallback = e.fallback_credential.unwrap();
        assert_eq!(
            (fallback.name.as_str(), fallback.value.0.as_str()),
            ("x-api-key", "sk-1")
        );
        // The fallback alone never expires.
        let without_token = entry(&crate::service_oauth::ServiceTokens::default());
        assert_eq!(without_token.credential_expires_at, None);
        assert_eq!(without_token.fallback_credential, None);
        // A static credential that does not open (sealed for another service): without one.
        let moved = ServiceRow {
            oauth: None,
            credential: Some(seal(&kek, "other", "authorization", "Bearer sk-1").unwrap()),
            ..row.clone()
        };
        assert!(matches!(
            directory_entry(&kek, &tokens, &moved),
            Published::WithoutCredential
        ));
        // No credential at all: an entry without one; an unusable URL: absent.
        let open_row = ServiceRow {
            oauth: None,
            ..row.clone()
        };
        assert!(matches!(
            directory_entry(&kek, &tokens, &open_row),
            Published::Entry(e) if e.credential.is_none()
        ));
        let bad_url = ServiceRow {
            upstream_url: "ftp://x".into(),
            ..row
        };
        assert!(matches!(
            directory_entry(&kek, &tokens, &bad_url),
            Published::Absent
        ));
    }

    #[test]
    fn a_sealed_credential_opens_only_on_its_row() {
        let kek = KeyEncryption::new(Some(KeyEncryptionKey::from_bytes([7; 32], "test")), vec![]);
        let stored = seal(&kek, "openai", "authorization", "Bearer sk-1").unwrap();
        assert!(stored.kek_id.is_some());
        assert!(!stored.value.contains("sk-1"));
        assert_eq!(open(&kek, "openai", &stored).unwrap(), "Bearer sk-1");
        assert!(open(&kek, "other", &stored).is_err());
        let moved = StoredCredential {
            header: "x-api-key".into(),
            ..stored.clone()
        };
        assert!(open(&kek, "openai", &moved).is_err());
        assert_eq!(stored.fingerprint, fingerprint("Bearer sk-1"));
        assert!(check_credential("authorization", "Bearer sk-1").is_ok());
        assert!(check_credential("x-podgate-user", "v").is_err());
        assert!(check_credential("x-api-key", "a\r\nb").is_err());
        for gone in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-real-ip",
            "forwarded",
        ] {
            let e = check_credential(gone, "v").unwrap_err();
            assert!(e.contains("never arrive"), "{gone}: {e}");
        }
    }
}
