//! rustls configuration (ring provider) and non-blocking TLS I/O over a raw socket.

use std::io::{self, Read as _, Write as _};
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::net::FdIo;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file that cannot be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Where the CA bundle usually is on Debian.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Client config. `insecure` accepts any certificate (self-signed test servers); otherwise
/// the server is verified against `ca_file`, or the system bundle.
pub fn client_config(insecure: bool, ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth()
    } else {
        let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(path)? {
            roots.add(cert)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Server config from PEM certificate chain and private key files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Pem { path: key.display().to_string(), reason: e.to_string() })?;
    server_config_from_der(certs, key)
}

pub fn server_config_from_der(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Pem { path: path.display().to_string(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate found".into()));
    }
    Ok(certs)
}

/// The server name to present (SNI) and verify: a DNS name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string())
        .map_err(|e| TlsError::Config(rustls::Error::General(format!("server name {name:?}: {e}"))))
}

/// Accepts any certificate but still checks the handshake signatures, so the TLS work
/// measured is the real work.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Outcome of [`read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Plaintext (possibly none) was appended; the socket has no more for now.
    Open,
    /// The peer closed the connection.
    Eof,
}

/// Reads what the socket has, decrypts it and appends the plaintext to `plain`.
pub fn read(conn: &mut rustls::Connection, fd: RawFd, plain: &mut Vec<u8>) -> io::Result<ReadOutcome> {
    loop {
        let socket_eof = match conn.read_tls(&mut FdIo(fd)) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::Open),
            Err(e) => return Err(e),
        };
        if decrypt(conn, plain)? == ReadOutcome::Eof || socket_eof {
            return Ok(ReadOutcome::Eof);
        }
    }
}

/// Decrypts `data`, bytes already received (a completion-based loop's read buffer), and
/// appends the plaintext to `plain`.
pub fn read_bytes(conn: &mut rustls::Connection, mut data: &[u8], plain: &mut Vec<u8>) -> io::Result<ReadOutcome> {
    while !data.is_empty() {
        conn.read_tls(&mut data)?;
        if decrypt(conn, plain)? == ReadOutcome::Eof {
            return Ok(ReadOutcome::Eof);
        }
    }
    Ok(ReadOutcome::Open)
}

/// Processes the records rustls holds and drains their plaintext into `plain`, so its
/// plaintext buffer never fills.
fn decrypt(conn: &mut rustls::Connection, plain: &mut Vec<u8>) -> io::Result<ReadOutcome> {
    conn.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match conn.reader().read(&mut chunk) {
            Ok(0) => return Ok(ReadOutcome::Eof), // close_notify
            Ok(n) => plain.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::Open),
            // Closed without close_notify.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(ReadOutcome::Eof),
            Err(e) => return Err(e),
        }
    }
}

/// Encrypts as much of `plain` as rustls buffers; returns how much it took.
pub fn write_plaintext(conn: &mut rustls::Connection, plain: &[u8]) -> io::Result<usize> {
    if plain.is_empty() {
        return Ok(0);
    }
    conn.writer().write(plain)
}

/// Writes pending TLS records to `out` (a socket, or a send buffer). Returns true when
/// `out` would block with data left.
pub fn flush(conn: &mut rustls::Connection, out: &mut impl io::Write) -> io::Result<bool> {
    while conn.wants_write() {
        match conn.write_tls(out) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}
