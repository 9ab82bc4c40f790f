//! Reading PEM (and DER CRL) files. Errors name the file and never
//! contain key bytes.
use super::TlsError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

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

/// Reads certificate revocation lists, PEM (any number per file) or DER
/// (one per file).
pub fn load_crls(paths: &[std::path::PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| TlsError(format!("cannot read CRL {}: {e}", path.display())))?;
        if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            let before = out.len();
            for crl in CertificateRevocationListDer::pem_slice_iter(&bytes) {
                out.push(crl.map_err(|e| TlsError(format!("bad CRL PEM in {}: {e}", path.display())))?);
            }
            if out.len() == before {
                return Err(TlsError(format!("no X509 CRL in {}", path.display())));
            }
        } else {
            out.push(CertificateRevocationListDer::from(bytes));
        }
    }
    Ok(out)
}
