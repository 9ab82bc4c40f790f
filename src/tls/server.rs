//! The rustls server configuration: TLS 1.3 only, ALPN h2, client
//! certificates required and verified (chain, CRLs, identity rules) during
//! the handshake.
use super::identity::{IdentityRules, PeerIdentity};
use super::pem::{load_certs, load_crls, load_key};
use super::{provider, TlsError};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;

/// What the server configuration is built from (the `[tls]` section gives
/// it: `config::Tls::server_tls`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM; refused if group or others can read it).
    pub key: PathBuf,
    /// CA that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Certificate revocation lists of the client CA and intermediates.
    pub client_crls: Vec<PathBuf>,
    /// URI SAN rules, enforced in the handshake.
    pub rules: IdentityRules,
}

/// Builds the server configuration: TLS 1.3 only, ALPN h2, client
/// certificates required, verified against `client_ca` and the configured
/// CRLs, and held to the URI SAN rules ([`IdentityRules`]) during the
/// handshake. A private key that group or others can read is refused (at
/// start and on reload).
pub fn server_config(tls: &ServerTls) -> Result<Arc<ServerConfig>, TlsError> {
    crate::ops::secret_file::check(&tls.key, "TLS private key").map_err(TlsError)?;
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&tls.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| TlsError(format!("bad client CA {}: {e}", tls.client_ca.display())))?;
    }
    // With CRLs, every certificate of the chain below the CA must have a
    // known status (rustls' default): a missing CRL refuses, never admits.
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls(load_crls(&tls.client_crls)?)
        .build()
        .map_err(|e| TlsError(format!("client verifier (client CA or CRL): {e}")))?;
    let verifier = Arc::new(IdentityVerifier {
        inner: webpki,
        rules: tls.rules.clone(),
    });
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

/// The client certificate verifier: webpki (chain to the client CA, CRLs),
/// then the identity rules, so a certificate whose URI SANs break them
/// fails the handshake and never reaches a service.
#[derive(Debug)]
struct IdentityVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    rules: IdentityRules,
}

impl ClientCertVerifier for IdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        PeerIdentity::from_cert_checked(end_entity, String::new(), &self.rules).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))))
        })?;
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}
