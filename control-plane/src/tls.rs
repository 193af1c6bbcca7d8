//! Mutual TLS between Envoy and the control plane: the ADS server and the Envoy-facing HTTP
//! listener (`--envoy-listen`) accept only clients presenting a certificate signed by the
//! client CA (`--envoy-client-ca`), and present the server certificate (`--envoy-tls-cert`,
//! `--envoy-tls-key`) that Envoy checks against its own trusted CA.
//!
//! One acceptor serves both: it takes TCP connections, runs each handshake in its own task
//! (a slow or silent client holds up no one), and hands over only the connections whose client
//! certificate verified. Failed handshakes are logged with the peer and the reason.
//!
//! Certificates are read once at start: rotating them is a restart (`docs/operations.md`).
//!
//! [`generate_test_certs`] writes a test CA, a server certificate and an Envoy client
//! certificate (`podgate tls gen-test-certs`), for the demo and the tests.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Verified connections waiting to be served.
const ACCEPTED_QUEUE: usize = 64;

/// The files of the mutual TLS between Envoy and the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain the control plane presents (leaf first).
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// PEM certificate(s) of the CA that signs Envoy's client certificates.
    pub client_ca: PathBuf,
}

/// Application protocols the two servers speak: gRPC needs HTTP/2, the HTTP listener serves
/// HTTP/1.1 (Envoy's default to an upstream) and HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Grpc,
    Http,
}

/// A TLS server configuration that requires a client certificate signed by the client CA.
/// Errors name the file and what is wrong with it.
pub fn server_config(files: &TlsFiles, alpn: Alpn) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(&files.cert, "--envoy-tls-cert / PODGATE_ENVOY_TLS_CERT")?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "cannot read a PEM private key from {} ({e}); set --envoy-tls-key / PODGATE_ENVOY_TLS_KEY to the server certificate's key",
            files.key.display()
        )
    })?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(
        &files.client_ca,
        "--envoy-client-ca / PODGATE_ENVOY_CLIENT_CA",
    )? {
        roots.add(ca).map_err(|e| {
            format!(
                "{} holds a certificate that cannot be a client CA: {e}",
                files.client_ca.display()
            )
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("the client CA {}: {e}", files.client_ca.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "the server certificate {} and key {} do not make a TLS identity: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = match alpn {
        Alpn::Grpc => vec![b"h2".to_vec()],
        Alpn::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "cannot read PEM certificates from {} ({e}); check {setting}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate; check {setting}",
            path.display()
        ));
    }
    Ok(certs)
}

/// A verified TLS connection and its peer.
pub type Accepted = (TlsStream<TcpStream>, SocketAddr);

/// Accepts on `listener` and completes handshakes in the background; the receiver yields the
/// connections whose client certificate verified. The acceptor stops when the receiver is
/// dropped. `what` names the server in logs.
pub fn accept(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    what: &'static str,
) -> mpsc::Receiver<Accepted> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(server = what, error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(
                        server = what,
                        %peer,
                        error = %e,
                        "refused a TLS connection (Envoy connects with a client certificate signed by --envoy-client-ca)"
                    ),
                    Err(_) => tracing::warn!(
                        server = what,
                        %peer,
                        "refused a TLS connection: no handshake within 10 s"
                    ),
                }
            });
        }
    });
    rx
}

/// The verified connections of [`accept`] as an axum listener.
#[derive(Debug)]
pub struct HttpListener {
    accepted: mpsc::Receiver<Accepted>,
    local: SocketAddr,
}

impl HttpListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<HttpListener> {
        let local = listener.local_addr()?;
        Ok(HttpListener {
            accepted: accept(listener, config, "envoy-http"),
            local,
        })
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The acceptor lives as long as this receiver; nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A verified connection as tonic serves it.
#[derive(Debug)]
pub struct GrpcConn(pub TlsStream<TcpStream>);

/// The TCP addresses, where tonic looks for them (the ADS server logs the peer).
impl tonic::transport::server::Connected for GrpcConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let tcp = self.0.get_ref().0;
        tonic::transport::server::TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
        }
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The verified connections of [`accept`] as tonic's incoming stream.
pub fn grpc_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl tokio_stream::Stream<Item = Result<GrpcConn, io::Error>> {
    let accepted = accept(listener, config, "xds");
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(accepted),
        |(tls, _)| Ok(GrpcConn(tls)),
    )
}

// ---------------------------------------------------------------------------------------------
// Test certificates

/// The files [`generate_test_certs`] writes, by name in its directory.
pub const TEST_CA: &str = "ca.pem";
pub const TEST_SERVER_CERT: &str = "server.pem";
pub const TEST_SERVER_KEY: &str = "server-key.pem";
pub const TEST_CLIENT_CERT: &str = "envoy.pem";
pub const TEST_CLIENT_KEY: &str = "envoy-key.pem";

/// Writes into `dir` (created if missing; existing files are never overwritten) a fresh CA
/// (`ca.pem`), a server certificate for `localhost`, `127.0.0.1` and `server_names`
/// (`server.pem`, `server-key.pem`) and an Envoy client certificate (`envoy.pem`,
/// `envoy-key.pem`), all P-256, valid for ten years from yesterday. The CA's key is not
/// kept: nothing else can be signed by this CA. Keys are written readable by their owner only.
/// One CA signs both sides, so `ca.pem` is both the control plane's client CA and the CA
/// Envoy validates the control plane with.
pub fn generate_test_certs(dir: &Path, server_names: &[String]) -> Result<Vec<PathBuf>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let now = time::OffsetDateTime::now_utc();
    let validity = |params: &mut CertificateParams| {
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
    };
    let err = |what: &str, e: rcgen::Error| format!("generating the {what}: {e}");

    let ca_key = KeyPair::generate().map_err(|e| err("CA key", e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "podgate test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params);
    let ca = ca_params
        .self_signed(&ca_key)
        .map_err(|e| err("CA certificate", e))?;

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for name in server_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let server_key = KeyPair::generate().map_err(|e| err("server key", e))?;
    let mut server_params =
        CertificateParams::new(names).map_err(|e| err("server certificate", e))?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "podgate control plane");
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server_params);
    let server = server_params
        .signed_by(&server_key, &ca, &ca_key)
        .map_err(|e| err("server certificate", e))?;

    let client_key = KeyPair::generate().map_err(|e| err("Envoy client key", e))?;
    let mut client_params = CertificateParams::new(vec!["podgate-envoy".to_owned()])
        .map_err(|e| err("Envoy client certificate", e))?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "podgate envoy");
    client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut client_params);
    let client = client_params
        .signed_by(&client_key, &ca, &ca_key)
        .map_err(|e| err("Envoy client certificate", e))?;

    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let files = [
        (TEST_CA, ca.pem(), false),
        (TEST_SERVER_CERT, server.pem(), false),
        (TEST_SERVER_KEY, server_key.serialize_pem(), true),
        (TEST_CLIENT_CERT, client.pem(), false),
        (TEST_CLIENT_KEY, client_key.serialize_pem(), true),
    ];
    for (name, _, _) in &files {
        let path = dir.join(name);
        if path.exists() {
            return Err(format!(
                "{} exists; test certificates are never overwritten: remove the directory's certificates first, or write to another directory",
                path.display()
            ));
        }
    }
    let mut written = Vec::new();
    for (name, pem, secret) in files {
        let path = dir.join(name);
        write_new(&path, pem.as_bytes(), secret)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn write_new(path: &Path, bytes: &[u8], secret: bool) -> io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join(TEST_SERVER_CERT),
            key: dir.join(TEST_SERVER_KEY),
            client_ca: dir.join(TEST_CA),
        }
    }

    #[test]
    fn test_certs_make_a_server_config_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate_test_certs(dir.path(), &["podgate".to_owned()]).unwrap();
        assert_eq!(written.len(), 5);
        server_config(&files(dir.path()), Alpn::Grpc).unwrap();
        server_config(&files(dir.path()), Alpn::Http).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(TEST_CLIENT_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        let e = generate_test_certs(dir.path(), &[]).unwrap_err();
        assert!(e.contains("never overwritten"), "{e}");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        generate_test_certs(dir.path(), &[]).unwrap();
        let mut bad = files(dir.path());
        bad.client_ca = dir.path().join("missing.pem");
        let e = server_config(&bad, Alpn::Http).unwrap_err();
        assert!(
            e.contains("missing.pem") && e.contains("PODGATE_ENVOY_CLIENT_CA"),
            "{e}"
        );
        let mut bad = files(dir.path());
        bad.key = dir.path().join(TEST_CLIENT_KEY);
        let e = server_config(&bad, Alpn::Http).unwrap_err();
        assert!(e.contains("do not make a TLS identity"), "{e}");
        let mut bad = files(dir.path());
        bad.cert = dir.path().join(TEST_SERVER_KEY);
        let e = server_config(&bad, Alpn::Http).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
