//! The client's one error type.
//!
//! A connection failure names which certificate, why, and what to do, in
//! one line: the client's own certificate is checked before connecting
//! ([`crate::certificate`]), the daemon's TLS alerts are classified, the
//! server certificate's verification errors are explained. A call that
//! reached the daemon fails with its gRPC status, as the variant of its
//! code (mapped in one place, `From<tonic::Status>`), printed with the
//! status's canonical name (`INVALID_ARGUMENT`).
use crate::certificate::Problem;
use crate::metadata;
use rustls::{AlertDescription, CertificateError};
use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong between this client and kmsd.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting cannot be used (a malformed address or server name).
    #[error("{0}")]
    Settings(String),
    /// A CA, certificate or key file cannot be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file: "CA certificate", "client certificate", "client key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why (never key bytes).
        reason: String,
    },
    /// The client's key is not the key of its certificate.
    #[error(
        "client key {key} does not belong to client certificate {cert}: point KMSD_KEY at that certificate's own key"
    )]
    KeyMismatch {
        /// The client certificate.
        cert: PathBuf,
        /// The client key.
        key: PathBuf,
    },
    /// The client's own certificate fails a check made before connecting.
    #[error("client certificate {cert} {problem}")]
    ClientCertificate {
        /// The client certificate.
        cert: PathBuf,
        /// What is wrong with it, and what to do.
        problem: Problem,
    },
    /// The daemon refused the handshake with a TLS alert (in TLS 1.3 it
    /// judges the client certificate after the client's side is done).
    #[error("{}", refusal(addr, cert, *alert))]
    Refused {
        /// The daemon's address.
        addr: String,
        /// The client certificate that was presented.
        cert: PathBuf,
        /// The alert the daemon sent.
        alert: AlertDescription,
    },
    /// The daemon's certificate failed this client's verification.
    #[error("the server certificate of kmsd at {addr} {}", server_problem(problem, name, ca))]
    ServerCertificate {
        /// The daemon's address.
        addr: String,
        /// The name the certificate was checked against.
        name: String,
        /// The CA file the certificate was checked against.
        ca: PathBuf,
        /// The verification error.
        problem: Box<CertificateError>,
    },
    /// The daemon closed the connection right after the handshake, before
    /// any HTTP/2 frame.
    #[error(
        "kmsd at {addr} closed the connection right after the TLS handshake: it refused client certificate \
         {cert} (its identity) or is at its connection limit; the daemon's log says which"
    )]
    Closed {
        /// The daemon's address.
        addr: String,
        /// The client certificate that was presented.
        cert: PathBuf,
    },
    /// The daemon cannot be reached.
    #[error("cannot reach kmsd at {addr}: {cause}{}", unreachable_hint(cause))]
    Unreachable {
        /// The daemon's address.
        addr: String,
        /// The socket error.
        cause: io::Error,
    },
    /// Another TLS failure.
    #[error("TLS with kmsd at {addr} failed: {cause}")]
    Tls {
        /// The daemon's address.
        addr: String,
        /// The rustls error.
        cause: Box<rustls::Error>,
    },
    /// The HTTP/2 connection could not be set up.
    #[error("cannot connect to kmsd at {addr}: {}", source_chain(cause))]
    Transport {
        /// The daemon's address.
        addr: String,
        /// The transport error.
        cause: tonic::transport::Error,
    },
    /// A setting the client needs is not set (environment variable).
    #[error("{var} is not set")]
    NotSet {
        /// The environment variable.
        var: &'static str,
    },
    /// `INVALID_ARGUMENT`: the request itself is wrong (a bad key name, a
    /// ciphertext that is not one, associated data that does not match:
    /// the daemon's message says which). Retrying does not help.
    #[error("{}", status_line(.0))]
    InvalidArgument(Box<tonic::Status>),
    /// `NOT_FOUND`: no such key (or approval request).
    #[error("{}", status_line(.0))]
    NotFound(Box<tonic::Status>),
    /// `ALREADY_EXISTS`: a key of that name exists.
    #[error("{}", status_line(.0))]
    AlreadyExists(Box<tonic::Status>),
    /// `PERMISSION_DENIED`: the daemon's policy does not allow this caller
    /// this operation on this key.
    #[error("{}", status_line(.0))]
    PermissionDenied(Box<tonic::Status>),
    /// `UNAUTHENTICATED`: the call needs an officer's one-time code (see
    /// [`Error::needs_second_factor`]) or the code was wrong.
    #[error("{}", status_line(.0))]
    Unauthenticated(Box<tonic::Status>),
    /// `FAILED_PRECONDITION`: the key or version is in a state that
    /// refuses the operation (disabled, destroyed, pending deletion), or
    /// the call created a dual-control request ([`Error::pending_approval`]).
    #[error("{}", status_line(.0))]
    FailedPrecondition(Box<tonic::Status>),
    /// `RESOURCE_EXHAUSTED`: a rate limit or size limit of the daemon.
    #[error("{}", status_line(.0))]
    ResourceExhausted(Box<tonic::Status>),
    /// `UNAVAILABLE`: no endpoint could serve the call (down, draining,
    /// store unreachable), after the retries the call allowed.
    #[error("{}", status_line(.0))]
    Unavailable(Box<tonic::Status>),
    /// `DEADLINE_EXCEEDED`: the call's deadline passed (the daemon's
    /// answer, or this client's own deadline across retries).
    #[error("{}", status_line(.0))]
    DeadlineExceeded(Box<tonic::Status>),
    /// `ABORTED`: a concurrent change won (e.g. two rotations at once).
    #[error("{}", status_line(.0))]
    Aborted(Box<tonic::Status>),
    /// `INTERNAL` or `DATA_LOSS`: the daemon failed (its log says why).
    #[error("{}", status_line(.0))]
    Internal(Box<tonic::Status>),
    /// Any other status (`CANCELLED`, `UNKNOWN`, `OUT_OF_RANGE`,
    /// `UNIMPLEMENTED`).
    #[error("{}", status_line(.0))]
    Status(Box<tonic::Status>),
    /// Reading or writing a stream's bytes failed (the stream adapters).
    #[error("stream I/O: {0}")]
    Io(#[source] io::Error),
    /// An envelope blob names a key outside the caller's expected keys
    /// (refused before any call to the daemon).
    #[error("the envelope names key {key:?}, not one of the keys this caller expects")]
    UnexpectedKey {
        /// The key the blob names.
        key: String,
    },
    /// An envelope or stream cannot be opened (malformed, truncated, or
    /// failed authentication) or a message cannot be sealed.
    #[error("{0}")]
    Format(#[from] crate::format::FormatError),
    /// A JWS cannot be made (a header the helper must refuse, a key that
    /// does not sign) or read (malformed, or not verifiable as given);
    /// checked before or after the calls, never key material.
    #[error("JWS: {0}")]
    Jws(String),
}

impl Error {
    /// The gRPC status of a failed call, if the call reached the daemon.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::InvalidArgument(s)
            | Error::NotFound(s)
            | Error::AlreadyExists(s)
            | Error::PermissionDenied(s)
            | Error::Unauthenticated(s)
            | Error::FailedPrecondition(s)
            | Error::ResourceExhausted(s)
            | Error::Unavailable(s)
            | Error::DeadlineExceeded(s)
            | Error::Aborted(s)
            | Error::Internal(s)
            | Error::Status(s) => Some(s.as_ref()),
            _ => None,
        }
    }

    /// The gRPC code of a failed call, if the call reached the daemon (or
    /// ran out of time or endpoints).
    pub fn code(&self) -> Option<tonic::Code> {
        self.status().map(tonic::Status::code)
    }

    /// The call needs an officer's one-time code and none was sent
    /// (`UNAUTHENTICATED` marked with [`metadata::SECOND_FACTOR`]).
    pub fn needs_second_factor(&self) -> bool {
        self.status().is_some_and(|s| {
            s.code() == tonic::Code::Unauthenticated && s.metadata().contains_key(metadata::SECOND_FACTOR)
        })
    }

    /// The call created a dual-control request waiting for a second
    /// officer: its id ([`metadata::APPROVAL_ID`]).
    pub fn pending_approval(&self) -> Option<&str> {
        self.status()
            .filter(|s| s.code() == tonic::Code::FailedPrecondition)
            .and_then(|s| s.metadata().get(metadata::APPROVAL_ID))
            .and_then(|v| v.to_str().ok())
    }
}

/// The canonical name of a gRPC status code (`NOT_FOUND`), as in the gRPC
/// specification and the daemon's audit records.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `NAME: message`, and for a call cut by the connection, the cause.
fn status_line(s: &tonic::Status) -> String {
    let mut out = format!("{}: {}", code_name(s.code()), s.message());
    if let Some(src) = std::error::Error::source(s) {
        let _ = write!(out, ": {}", source_chain(src));
    }
    out
}

/// An error and its causes on one line.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        // (hyper and tonic repeat their cause in their own message)
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

fn refusal(addr: &str, cert: &std::path::Path, alert: AlertDescription) -> String {
    use AlertDescription as A;
    let cert = cert.display();
    let why = match alert {
        A::CertificateExpired => {
            "it is expired or not yet valid by the daemon's clock: get a new certificate from your CA \
             (if this machine finds it valid, compare the two machines' clocks)"
        }
        A::UnknownCA => {
            "it is not issued by a CA the daemon trusts (or its revocation status is unknown): \
             use a certificate from the daemon's client CA"
        }
        A::CertificateRevoked => "it is revoked: get a new certificate from your CA",
        A::UnsupportedCertificate => {
            "it is not for client use (extended key usage): ask your CA for a client certificate"
        }
        A::DecryptError => {
            "its signature does not verify against the daemon's client CA (issued by another CA of the \
             same name?): use a certificate from the daemon's client CA"
        }
        A::BadCertificate | A::DecodeError => "it is malformed: get a new certificate from your CA",
        A::CertificateUnknown | A::AccessDenied => {
            "its identity (URI SAN) breaks the daemon's identity rules: ask for a certificate with one \
             URI SAN of the form scheme://authority[/path]"
        }
        A::CertificateRequired => "no client certificate was presented: set KMSD_CERT and KMSD_KEY",
        A::ProtocolVersion | A::HandshakeFailure | A::InsufficientSecurity => {
            return format!(
                "kmsd at {addr} refused the handshake ({alert:?}): no common TLS version or cipher suite \
                 (kmsd speaks TLS 1.3 only)"
            )
        }
        other => return format!("kmsd at {addr} refused the handshake with client certificate {cert}: {other:?}"),
    };
    format!("kmsd at {addr} refused client certificate {cert}: {why}")
}

fn server_problem(e: &CertificateError, name: &str, ca: &std::path::Path) -> String {
    use CertificateError as C;
    match e {
        C::NotValidForName | C::NotValidForNameContext { .. } => format!(
            "is not valid for the name {name:?}: connect by a name the certificate carries, or set \
             KMSD_SERVER_NAME (--server-name)"
        ),
        C::UnknownIssuer => format!(
            "is not issued by the CA in {}: set KMSD_CA (--ca) to the CA that issued the daemon's certificate",
            ca.display()
        ),
        #[allow(deprecated)]
        C::BadSignature
        | C::UnsupportedSignatureAlgorithm
        | C::UnsupportedSignatureAlgorithmContext { .. }
        | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => format!(
            "does not verify against the CA in {} (issued by another CA of the same name?): set KMSD_CA (--ca) \
             to the CA that issued the daemon's certificate",
            ca.display()
        ),
        C::Expired | C::ExpiredContext { .. } => {
            "has expired: the daemon's operator must renew it (or this machine's clock is wrong)".to_owned()
        }
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "is not valid yet: check this machine's clock (or the daemon's operator renewed it too early)".to_owned()
        }
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "is not for server use (extended key usage): the daemon's operator must fix it".to_owned()
        }
        C::Revoked => "is revoked: the daemon's operator must replace it".to_owned(),
        other => format!("failed verification: {other}"),
    }
}

fn unreachable_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => " (no socket there: is kmsd running? check KMSD_ADDR)",
        io::ErrorKind::ConnectionRefused => " (nothing listens there: is kmsd running? check KMSD_ADDR)",
        io::ErrorKind::PermissionDenied => " (no permission on the socket: is your user in its group?)",
        _ => "",
    }
}

/// Turns a failed handshake into the error that explains it.
pub(crate) fn classify(e: io::Error, addr: &str, cert: &std::path::Path, name: &str, ca: &std::path::Path) -> Error {
    match kmsd_tlsconn::rustls_error(&e) {
        Some(rustls::Error::AlertReceived(alert)) => Error::Refused {
            addr: addr.to_owned(),
            cert: cert.to_owned(),
            alert,
        },
        Some(rustls::Error::InvalidCertificate(problem)) => Error::ServerCertificate {
            addr: addr.to_owned(),
            name: name.to_owned(),
            ca: ca.to_owned(),
            problem: Box::new(problem),
        },
        Some(cause) => Error::Tls {
            addr: addr.to_owned(),
            cause: Box::new(cause),
        },
        None if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ) =>
        {
            Error::Closed {
                addr: addr.to_owned(),
                cert: cert.to_owned(),
            }
        }
        None => Error::Unreachable {
            addr: addr.to_owned(),
            cause: e,
        },
    }
}

impl From<kmsd_tlsconn::FileError> for Error {
    fn from(e: kmsd_tlsconn::FileError) -> Self {
        Error::File {
            what: e.what,
            path: e.path,
            reason: e.reason,
        }
    }
}

/// The one place gRPC codes become variants.
impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code as C;
        let code = s.code();
        let s = Box::new(s);
        match code {
            C::InvalidArgument => Error::InvalidArgument(s),
            C::NotFound => Error::NotFound(s),
            C::AlreadyExists => Error::AlreadyExists(s),
            C::PermissionDenied => Error::PermissionDenied(s),
            C::Unauthenticated => Error::Unauthenticated(s),
            C::FailedPrecondition => Error::FailedPrecondition(s),
            C::ResourceExhausted => Error::ResourceExhausted(s),
            C::Unavailable => Error::Unavailable(s),
            C::DeadlineExceeded => Error::DeadlineExceeded(s),
            C::Aborted => Error::Aborted(s),
            C::Internal | C::DataLoss => Error::Internal(s),
            C::Ok | C::Cancelled | C::Unknown | C::OutOfRange | C::Unimplemented => Error::Status(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_variants() {
        use tonic::{Code, Status};
        assert!(matches!(Error::from(Status::not_found("x")), Error::NotFound(_)));
        assert!(matches!(Error::from(Status::unavailable("x")), Error::Unavailable(_)));
        assert!(matches!(
            Error::from(Status::permission_denied("x")),
            Error::PermissionDenied(_)
        ));
        assert!(matches!(Error::from(Status::data_loss("x")), Error::Internal(_)));
        assert!(matches!(Error::from(Status::unimplemented("x")), Error::Status(_)));
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::Unknown,
        ] {
            assert_eq!(Error::from(Status::new(code, "m")).code(), Some(code));
        }
    }

    #[test]
    fn statuses_print_with_their_canonical_name() {
        let e = Error::from(tonic::Status::not_found("no key \"x\""));
        assert_eq!(e.to_string(), "NOT_FOUND: no key \"x\"");
    }

    #[test]
    fn refusals_name_the_certificate_and_the_reason() {
        let e = Error::Refused {
            addr: "unix:/run/kmsd.sock".into(),
            cert: "/etc/app.pem".into(),
            alert: AlertDescription::UnknownCA,
        };
        let m = e.to_string();
        assert!(
            m.starts_with("kmsd at unix:/run/kmsd.sock refused client certificate /etc/app.pem: it is not issued by a CA the daemon trusts"),
            "{m}"
        );
    }
}
