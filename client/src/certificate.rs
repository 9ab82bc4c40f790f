//! Checks of the client's own certificate made before connecting.
//!
//! The daemon refuses a bad client certificate with a bare TLS alert (in
//! TLS 1.3 only after the client has finished its side of the handshake),
//! which says little; checking locally first names the reason and the fix.
//! Time is a parameter so the checks are tested without waiting.
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why the client's certificate cannot be used.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Its validity period ended (Unix seconds).
    Expired {
        /// The certificate's `notAfter`.
        not_after: i64,
    },
    /// Its validity period has not begun (Unix seconds).
    NotYetValid {
        /// The certificate's `notBefore`.
        not_before: i64,
    },
    /// Its extended key usage does not include TLS client authentication.
    NotForClientUse,
    /// Not an X.509 certificate this client can parse.
    Unparseable(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Expired { not_after } => write!(
                f,
                "expired at {}: get a new certificate from your CA and point KMSD_CERT and KMSD_KEY at it",
                rfc3339(*not_after)
            ),
            Problem::NotYetValid { not_before } => write!(
                f,
                "is not valid before {}: check this machine's clock, or wait until then",
                rfc3339(*not_before)
            ),
            Problem::NotForClientUse => f.write_str(
                "is not for client use (its extended key usage lacks TLS client authentication): \
                 ask your CA for a client certificate",
            ),
            Problem::Unparseable(e) => {
                write!(f, "cannot be parsed ({e}): KMSD_CERT must name a PEM X.509 certificate")
            }
        }
    }
}

/// Checks a client certificate (DER) at `now`: within its validity
/// period, and usable for TLS client authentication (no extended key usage
/// extension, or one with `clientAuth` or `anyExtendedKeyUsage`).
pub fn check(der: &[u8], now: SystemTime) -> Result<(), Problem> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| Problem::Unparseable(e.to_string()))?;
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(Problem::NotYetValid {
            not_before: validity.not_before.timestamp(),
        });
    }
    if now > validity.not_after.timestamp() {
        return Err(Problem::Expired {
            not_after: validity.not_after.timestamp(),
        });
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) if !eku.value.client_auth && !eku.value.any => Err(Problem::NotForClientUse),
        Ok(_) => Ok(()),
        Err(e) => Err(Problem::Unparseable(e.to_string())),
    }
}

/// Unix seconds as RFC 3339 (UTC), for messages.
pub(crate) fn rfc3339(secs: i64) -> String {
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    match t {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => format!("{secs} (Unix time)"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{date_time_ymd, CertificateParams, ExtendedKeyUsagePurpose, KeyPair};

    /// Valid from 2020-01-01 to 2021-01-01.
    fn cert(eku: Vec<ExtendedKeyUsagePurpose>) -> Vec<u8> {
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
        p.extended_key_usages = eku;
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const JUNE_2020: u64 = 1_590_969_600;

    #[test]
    fn a_current_client_certificate_passes() {
        assert_eq!(
            check(&cert(vec![ExtendedKeyUsagePurpose::ClientAuth]), at(JUNE_2020)),
            Ok(())
        );
        // no extended key usage at all: any use
        assert_eq!(check(&cert(vec![]), at(JUNE_2020)), Ok(()));
    }

    #[test]
    fn expired_not_yet_valid_and_server_only_certificates_are_named() {
        let client = cert(vec![ExtendedKeyUsagePurpose::ClientAuth]);
        assert_eq!(
            check(&client, at(1_640_995_200)), // 2022
            Err(Problem::Expired {
                not_after: 1_609_459_200
            })
        );
        assert_eq!(
            check(&client, at(1_546_300_800)), // 2019
            Err(Problem::NotYetValid {
                not_before: 1_577_836_800
            })
        );
        assert_eq!(
            check(&cert(vec![ExtendedKeyUsagePurpose::ServerAuth]), at(JUNE_2020)),
            Err(Problem::NotForClientUse)
        );
        assert!(matches!(check(b"not DER", at(JUNE_2020)), Err(Problem::Unparseable(_))));
    }

    #[test]
    fn messages_say_when_and_what_to_do() {
        let m = Problem::Expired {
            not_after: 1_609_459_200,
        }
        .to_string();
        assert_eq!(
            m,
            "expired at 2021-01-01T00:00:00Z: get a new certificate from your CA and point KMSD_CERT and KMSD_KEY at it"
        );
    }
}
