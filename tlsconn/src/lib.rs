//! `kmsd-tlsconn`: the client end of kmsd's TLS connections, one
//! implementation for both clients that make them: `kmsd-client` (to the
//! daemon) and `kmsd-etcd` (to etcd).
//!
//! # Layout
//! - [`load_certs`], [`load_roots`], [`load_key`]: the PEM files, with a
//!   [`FileError`] naming which file and why (never key bytes); each
//!   client turns it into its own error type.
//! - [`handshake`]: the TLS handshake followed by a wait for the server's
//!   first bytes. In TLS 1.3 the client's side of the handshake ends
//!   before the server has judged the client certificate, so a refusal
//!   would otherwise surface at the first call as a bare transport error;
//!   read here, it is an alert ([`rustls_error`]) or a close
//!   ([`HandshakeError::Closed`]) the caller can name.
//! - [`stream`]: [`Rewind`], the TLS stream with those first bytes put
//!   back in front for the HTTP/2 client.
//!
//! Policy (protocol versions, which alert means what, the messages) stays
//! with each client: this crate only moves bytes and loads files.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod stream;

pub use stream::{Rewind, Socket};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio_rustls::client::TlsStream;

/// A PEM file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// Which file ("CA certificate", "client certificate", "client key").
    pub what: &'static str,
    /// Its path.
    pub path: PathBuf,
    /// Why (never key bytes).
    pub reason: String,
}

/// The certificates in the PEM file at `path` (at least one), `what`
/// naming the file in errors.
pub fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let file = |reason: String| FileError {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file(format!("cannot read: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file("no certificate in it".to_owned()));
    }
    Ok(certs)
}

/// The trust anchors: every certificate in the CA file at `ca`.
pub fn load_roots(ca: &Path) -> Result<RootCertStore, FileError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca, "CA certificate")? {
        roots.add(c).map_err(|e| FileError {
            what: "CA certificate",
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The client's private key (PEM) at `key`. The error never contains key
/// bytes.
pub fn load_key(key: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    PrivateKeyDer::from_pem_file(key).map_err(|e| FileError {
        what: "client key",
        path: key.to_owned(),
        reason: e.to_string(),
    })
}

/// The crypto provider (ring), as the daemon uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why [`handshake`] gave no stream.
#[derive(Debug)]
pub enum HandshakeError {
    /// The handshake or the first read failed ([`rustls_error`] tells a
    /// TLS alert or certificate problem from a socket error).
    Io(io::Error),
    /// The server closed the connection after the handshake without a
    /// byte (a refused client certificate, often).
    Closed,
}

/// Runs the TLS handshake over `socket`, then waits for the server's first
/// bytes (its HTTP/2 SETTINGS once it has accepted the client
/// certificate; else an alert or a close) and returns the stream with
/// them replayed.
pub async fn handshake<S>(
    cfg: Arc<ClientConfig>,
    name: ServerName<'static>,
    socket: S,
) -> Result<Rewind<TlsStream<S>>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, socket)
        .await
        .map_err(HandshakeError::Io)?;
    let mut first = vec![0u8; 4096];
    let n = tls.read(&mut first).await.map_err(HandshakeError::Io)?;
    if n == 0 {
        return Err(HandshakeError::Closed);
    }
    first.truncate(n);
    Ok(Rewind::new(first, tls))
}

/// The rustls error inside an I/O error of the handshake or of a read, if
/// it is one (an alert received, a certificate that did not verify).
pub fn rustls_error(e: &io::Error) -> Option<rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn file_errors_name_the_file_and_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = load_certs(&empty, "client certificate").unwrap_err();
        assert_eq!(
            (e.what, e.reason.as_str()),
            ("client certificate", "no certificate in it")
        );
        let e = load_roots(&dir.join("absent.pem")).unwrap_err();
        assert_eq!(e.what, "CA certificate");
        assert!(e.reason.starts_with("cannot read: "), "{}", e.reason);
        let e = load_key(&empty).unwrap_err();
        assert_eq!(e.what, "client key");
    }
}
