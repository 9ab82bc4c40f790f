//! Who is calling: the identity taken from a verified client
//! certificate (URI SAN, else the hash of its public key), and the rules a
//! certificate's URI SANs must follow.
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// What a client certificate's URI SANs must look like (`[tls]`).
///
/// Identities live in two namespaces that must never meet: a URI SAN
/// (`spiffe://bank.internal/payments`), or, for a certificate without one,
/// the hash of its public key (`sha256:<64 hex digits>`). A URI SAN is
/// therefore accepted only as an absolute URI with an authority,
/// `scheme://authority[/path]` (printable ASCII, at most 2048 bytes), and
/// never with the scheme `sha256`: no certificate can spell another
/// principal's key hash (`sha256:…` has no `//`).
#[derive(Debug, Clone, Default)]
pub struct IdentityRules {
    /// Accept a certificate with more than one URI SAN (its identity is the
    /// first; every one must follow the rules). Off: such a certificate is
    /// ambiguous and refused.
    pub allow_multiple_uri_sans: bool,
    /// When not empty, every URI SAN must start with one of these
    /// (`spiffe://bank.internal/`, slash included) and have something after it.
    pub trust_domains: Vec<String>,
}

impl IdentityRules {
    fn check(&self, uris: &[&str]) -> Result<(), IdentityError> {
        if uris.len() > 1 && !self.allow_multiple_uri_sans {
            return Err(IdentityError::MultipleUriSans(uris.len()));
        }
        for u in uris {
            check_uri_san(u)?;
            if !self.trust_domains.is_empty()
                && !self
                    .trust_domains
                    .iter()
                    .any(|d| u.strip_prefix(d.as_str()).is_some_and(|rest| !rest.is_empty()))
            {
                return Err(IdentityError::OutsideTrustDomains((*u).to_owned()));
            }
        }
        Ok(())
    }
}

/// Checks the form of a URI SAN (see [`IdentityRules`]); also used to
/// validate configured trust domains.
pub fn check_uri_san(u: &str) -> Result<(), IdentityError> {
    let malformed = || IdentityError::MalformedUri(u.to_owned());
    if u.is_empty() || u.len() > 2048 || !u.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(malformed());
    }
    let (scheme, rest) = u.split_once("://").ok_or_else(malformed)?;
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(malformed());
    }
    if scheme.eq_ignore_ascii_case("sha256") {
        return Err(IdentityError::KeyHashNamespace(u.to_owned()));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(malformed());
    }
    Ok(())
}

/// Why a verified client certificate gives no identity. Messages quote the
/// offending URI escaped (it goes to logs).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The certificate could not be parsed.
    #[error("client certificate could not be parsed")]
    Unparseable,
    /// More than one URI SAN, and `tls.allow_multiple_uri_sans` is off.
    #[error("client certificate has {0} URI SANs; one is allowed (tls.allow_multiple_uri_sans)")]
    MultipleUriSans(usize),
    /// A URI SAN that is not `scheme://authority[/path]` in printable ASCII.
    #[error("client certificate URI SAN {0:?} is not an absolute URI scheme://authority/...")]
    MalformedUri(String),
    /// A URI SAN in the key-hash namespace (`sha256…`).
    #[error("client certificate URI SAN {0:?} uses the sha256 scheme reserved for key-hash identities")]
    KeyHashNamespace(String),
    /// A URI SAN outside `tls.trust_domains`.
    #[error("client certificate URI SAN {0:?} is outside the configured trust domains (tls.trust_domains)")]
    OutsideTrustDomains(String),
}

/// Who is calling: taken from the verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// `sha256:<hex>` of the certificate's SubjectPublicKeyInfo.
    pub spki_sha256: String,
    /// The first URI SAN (for example a SPIFFE ID), if present; it follows
    /// the [`IdentityRules`].
    pub uri_san: Option<String>,
    /// Remote address (`unix` for the Unix socket).
    pub peer_addr: Arc<str>,
    /// [`PeerIdentity::id`], shared with every audit record of the connection.
    id: Arc<str>,
}

impl PeerIdentity {
    /// The identity policies refer to: the URI SAN when present, else the
    /// public-key hash (as MinIO KES does). The two namespaces cannot meet:
    /// a URI SAN is `scheme://…` and never of the scheme `sha256`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The identity as a shared string (audit records hold it without
    /// copying).
    pub fn id_shared(&self) -> Arc<str> {
        self.id.clone()
    }

    /// Extracts the identity from a DER certificate under the default
    /// [`IdentityRules`] (one URI SAN at most, any trust domain).
    pub fn from_cert(der: &[u8], peer_addr: String) -> Option<Self> {
        Self::from_cert_checked(der, peer_addr, &IdentityRules::default()).ok()
    }

    /// Extracts the identity from a DER certificate, refusing URI SANs that
    /// break `rules`.
    pub fn from_cert_checked(der: &[u8], peer_addr: String, rules: &IdentityRules) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::Unparseable)?;
        let spki = cert.tbs_certificate.subject_pki.raw;
        let spki_sha256 = format!("sha256:{}", hex::encode(Sha256::digest(spki)));
        let uris: Vec<&str> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(_) => return Err(IdentityError::Unparseable),
        };
        rules.check(&uris)?;
        let uri_san = uris.first().map(|u| (*u).to_owned());
        let id = Arc::from(uri_san.as_deref().unwrap_or(&spki_sha256));
        Ok(PeerIdentity {
            spki_sha256,
            uri_san,
            peer_addr: Arc::from(peer_addr),
            id,
        })
    }
}

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

    fn cert_with_uris(uris: &[&str]) -> (rcgen::KeyPair, rcgen::Certificate) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI(rcgen::Ia5String::try_from(*u).unwrap()))
            .collect();
        let cert = params.self_signed(&key).unwrap();
        (key, cert)
    }

    #[test]
    fn uri_sans_cannot_spell_a_key_hash_and_follow_the_rules() {
        let hash = format!("sha256:{}", "ab".repeat(32));
        let (_, spoof) = cert_with_uris(&[&hash]);
        let e = PeerIdentity::from_cert_checked(spoof.der(), String::new(), &IdentityRules::default()).unwrap_err();
        assert!(matches!(e, IdentityError::MalformedUri(_)), "{e}");
        for bad in [
            "sha256://x",
            "SHA256://host/p",
            "spiffe:/x",
            "spiffe://",
            "spiffe:///path",
            "1x://a",
            "urn:uuid:1234",
            "spiffe://a b/c",
            "",
        ] {
            assert!(check_uri_san(bad).is_err(), "{bad:?}");
        }
        for good in [
            "spiffe://bank.internal/payments",
            "https://svc.internal:8443/x?y",
            "x-y.z+w://h",
        ] {
            check_uri_san(good).unwrap();
        }
        // two URI SANs: refused unless allowed; then the first is the identity
        let (_, two) = cert_with_uris(&["spiffe://bank.internal/a", "spiffe://bank.internal/b"]);
        let e = PeerIdentity::from_cert_checked(two.der(), String::new(), &IdentityRules::default()).unwrap_err();
        assert!(matches!(e, IdentityError::MultipleUriSans(2)), "{e}");
        let allow = IdentityRules {
            allow_multiple_uri_sans: true,
            ..Default::default()
        };
        let id = PeerIdentity::from_cert_checked(two.der(), String::new(), &allow).unwrap();
        assert_eq!(id.id(), "spiffe://bank.internal/a");
        // trust domains: a prefix with its slash, and something after it
        let domains = IdentityRules {
            trust_domains: vec!["spiffe://bank.internal/".into()],
            ..Default::default()
        };
        let (_, inside) = cert_with_uris(&["spiffe://bank.internal/a"]);
        PeerIdentity::from_cert_checked(inside.der(), String::new(), &domains).unwrap();
        for outside in [
            "spiffe://bank.internal.evil/a",
            "spiffe://other/a",
            "spiffe://bank.internal/",
        ] {
            let (_, c) = cert_with_uris(&[outside]);
            let e = PeerIdentity::from_cert_checked(c.der(), String::new(), &domains).unwrap_err();
            assert!(matches!(e, IdentityError::OutsideTrustDomains(_)), "{outside}: {e}");
        }
        // a certificate without URI SAN keeps its key-hash identity
        let (key, none) = cert_with_uris(&[]);
        let id = PeerIdentity::from_cert_checked(none.der(), String::new(), &domains).unwrap();
        assert_eq!(
            id.id(),
            format!("sha256:{}", hex::encode(Sha256::digest(key.public_key_der())))
        );
    }
}
