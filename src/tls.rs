//! TLS for the gRPC listeners: rustls, TLS 1.3 only, client certificate
//! required and verified against the configured CA; the client's identity
//! extracted from its verified certificate. Admission (handshake budget,
//! connection cap, idle timeout) is in [`crate::conn`].
use crate::config::Tls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A TLS setup problem (bad file, bad key, bad CA).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The crypto provider used everywhere (ring: constant-time AES-GCM and
/// ECDSA, builds without cmake).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads all certificates of a PEM file.
pub fn load_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("cannot read certificates from {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("bad certificate PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

/// Reads a PEM private key. The error never contains key bytes.
pub fn load_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError(format!("cannot read private key {}: {e}", path.display())))
}

/// Builds the server configuration: TLS 1.3 only, ALPN h2, client
/// certificates required and verified against `client_ca`. A private key
/// that group or others can read is refused (at start and on reload).
pub fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>, TlsError> {
    crate::config::check_secret_file(&tls.key, "TLS private key").map_err(|e| TlsError(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&tls.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| TlsError(format!("bad client CA {}: {e}", tls.client_ca.display())))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError(format!("client verifier: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(format!("TLS 1.3: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&tls.cert)?, load_key(&tls.key)?)
        .map_err(|e| {
            TlsError(format!(
                "server certificate {} / key {}: {e}",
                tls.cert.display(),
                tls.key.display()
            ))
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Who is calling: taken from the verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// `sha256:<hex>` of the certificate's SubjectPublicKeyInfo.
    pub spki_sha256: String,
    /// The first URI SAN (for example a SPIFFE ID), if present.
    pub uri_san: Option<String>,
    /// Remote address (`unix` for the Unix socket).
    pub peer_addr: Arc<str>,
    /// [`PeerIdentity::id`], shared with every audit record of the connection.
    id: Arc<str>,
}

impl PeerIdentity {
    /// The identity policies refer to: the URI SAN when present, else the
    /// public-key hash (as MinIO KES does).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The identity as a shared string (audit records hold it without
    /// copying).
    pub fn id_shared(&self) -> Arc<str> {
        self.id.clone()
    }

    /// Extracts the identity from a DER certificate.
    pub fn from_cert(der: &[u8], peer_addr: String) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let spki = cert.tbs_certificate.subject_pki.raw;
        let spki_sha256 = format!("sha256:{}", hex::encode(Sha256::digest(spki)));
        let uri_san = cert.subject_alternative_name().ok().flatten().and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
        });
        let id = Arc::from(uri_san.as_deref().unwrap_or(&spki_sha256));
        Some(PeerIdentity {
            spki_sha256,
            uri_san,
            peer_addr: Arc::from(peer_addr),
            id,
        })
    }
}

/// A plain stream from any listener.
pub enum RawStream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            RawStream::Tcp($s) => $e,
            RawStream::Unix($s) => $e,
        }
    };
}

impl AsyncRead for RawStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for RawStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            RawStream::Tcp(s) => s.is_write_vectored(),
            RawStream::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// The current TLS configuration, swapped atomically on reload; new
/// handshakes use the new one, established connections keep theirs.
pub type SharedServerConfig = Arc<RwLock<Arc<ServerConfig>>>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn identity_from_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::Ia5String::try_from("spiffe://bank.internal/payments").unwrap(),
        )];
        let cert = params.self_signed(&key).unwrap();
        let id = PeerIdentity::from_cert(cert.der(), "unix".into()).unwrap();
        assert_eq!(id.id(), "spiffe://bank.internal/payments");
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(key.public_key_der())));
        assert_eq!(id.spki_sha256, expected);

        let plain = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let id = PeerIdentity::from_cert(plain.der(), "unix".into()).unwrap();
        assert_eq!(id.id(), expected);
    }
}
