//! The one error type of the etcd client and store.
//!
//! Every way of not reaching a working etcd (no endpoint answers, the
//! member has lost quorum or its leader, the request outlived its
//! timeout) is [`Error::Unavailable`]: callers retry later or fail closed,
//! and the daemon answers gRPC `UNAVAILABLE`. Variants never carry values
//! stored in etcd, only endpoints, keys' kinds and reasons.
use std::path::PathBuf;
use std::time::Duration;

/// Errors of [`crate::EtcdClient`] and [`crate::EtcdStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings are unusable (no endpoint, a malformed address,
    /// a certificate without its key).
    #[error("etcd settings: {0}")]
    Settings(String),
    /// A TLS file could not be read or parsed.
    #[error("etcd TLS: cannot use the {what} {path}: {reason}")]
    File {
        /// Which file ("CA certificate", "client certificate", "client key").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why (never key bytes).
        reason: String,
    },
    /// etcd could not be reached or could not answer: every endpoint
    /// refused or timed out, the member has no leader or lost quorum, or
    /// the request did not finish within its timeout. A write that fails
    /// so may or may not have been applied; a compare-and-swap retried
    /// after it tells which.
    #[error("etcd unavailable: {reason}")]
    Unavailable {
        /// What failed, with the endpoint when one is known.
        reason: String,
    },
    /// The request did not finish within the request timeout (a kind of
    /// unavailability, kept apart so that the message says so).
    #[error("etcd unavailable: no answer within {timeout:?} ({what})")]
    Timeout {
        /// The timeout that expired.
        timeout: Duration,
        /// The request.
        what: &'static str,
    },
    /// The TLS handshake with an endpoint failed: etcd refused the client
    /// certificate (or its absence), or its server certificate did not
    /// verify against the configured CA.
    #[error("etcd at {endpoint}: TLS handshake failed: {reason}")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// What the handshake said, in words.
        reason: String,
    },
    /// etcd's authorization refused the request (the certificate's user
    /// has no role allowing it: a key outside its prefix, or an
    /// administrative call).
    #[error("etcd refused the request: permission denied ({0})")]
    PermissionDenied(String),
    /// The revision asked for was compacted away.
    #[error("etcd revision {requested} was compacted (the oldest kept is {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// etcd's compaction revision (0 if etcd did not say).
        compacted: i64,
    },
    /// etcd refused the request as too large (`--max-request-bytes`,
    /// 1.5 MiB by default).
    #[error("etcd refused the request as too large: {0}")]
    TooLarge(String),
    /// Any other answer of etcd.
    #[error("etcd: {0}")]
    Status(Box<tonic::Status>),
}

impl Error {
    /// Whether the error says etcd was not reachable or not able to
    /// answer (the caller may retry later).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Timeout { .. } | Error::Tls { .. }
        )
    }

    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        Error::Unavailable { reason: reason.into() }
    }

    /// Classifies a gRPC status from `endpoint`.
    pub(crate) fn from_status(endpoint: &str, s: tonic::Status) -> Self {
        use tonic::Code;
        let msg = s.message();
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                Error::unavailable(format!("{endpoint}: {}", describe(&s)))
            }
            // made on this side from a transport failure (a connection
            // reset, a stream broken by missed pings): etcd's own answers
            // carry no source
            _ if std::error::Error::source(&s).is_some() => Error::unavailable(format!("{endpoint}: {}", describe(&s))),
            Code::PermissionDenied | Code::Unauthenticated => Error::PermissionDenied(format!("{endpoint}: {msg}")),
            Code::OutOfRange if msg.contains("compacted") => Error::Compacted {
                requested: 0,
                compacted: 0,
            },
            Code::InvalidArgument | Code::ResourceExhausted
                if msg.contains("too large") || msg.contains("larger than max") =>
            {
                Error::TooLarge(msg.to_owned())
            }
            // etcd's "leader changed", "timed out", "no leader" arrive as
            // Unavailable; a few older servers use Unknown for them
            Code::Unknown if msg.contains("etcdserver:") && (msg.contains("leader") || msg.contains("timed out")) => {
                Error::unavailable(format!("{endpoint}: {msg}"))
            }
            _ => Error::Status(Box::new(s)),
        }
    }
}

/// A status's message with its transport cause, for a one-line reason.
fn describe(s: &tonic::Status) -> String {
    let mut out = s.message().to_owned();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(c) = cause {
        let line = c.to_string();
        if !out.contains(&line) {
            out.push_str(": ");
            out.push_str(&line);
        }
        cause = c.source();
    }
    out
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

impl From<Error> for kmsd_keystore::Error {
    /// Everything becomes the keystore's `Backend` (which the daemon
    /// answers as `UNAVAILABLE`), with the reason for the log.
    fn from(e: Error) -> Self {
        kmsd_keystore::Error::Backend(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn statuses_map_to_typed_errors() {
        let e = |code, msg: &str| Error::from_status("127.0.0.1:2379", Status::new(code, msg));
        for (code, msg) in [
            (Code::Unavailable, "etcdserver: no leader"),
            (Code::Unavailable, "etcdserver: request timed out"),
            (Code::DeadlineExceeded, "context deadline exceeded"),
            (Code::Unknown, "etcdserver: leader changed"),
        ] {
            let err = e(code, msg);
            assert!(err.is_unavailable(), "{code:?} {msg}: {err:?}");
            assert!(err.to_string().contains("127.0.0.1:2379"), "{err}");
        }
        assert!(matches!(
            e(Code::PermissionDenied, "etcdserver: permission denied"),
            Error::PermissionDenied(_)
        ));
        assert!(matches!(
            e(Code::InvalidArgument, "etcdserver: request is too large"),
            Error::TooLarge(_)
        ));
        assert!(matches!(
            e(
                Code::ResourceExhausted,
                "grpc: received message larger than max (3000000 vs. 2097152)"
            ),
            Error::TooLarge(_)
        ));
        assert!(matches!(
            e(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            ),
            Error::Compacted { .. }
        ));
        // etcd's own refusals stay what they are
        assert!(matches!(
            e(Code::InvalidArgument, "etcdserver: duplicate key given in txn request"),
            Error::Status(_)
        ));
        // a status made on this side from a broken connection is unavailability
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "broken pipe",
        )));
        assert!(Error::from_status("x:1", broken).is_unavailable());
    }

    #[test]
    fn everything_reaches_the_keystore_as_backend() {
        let k: kmsd_keystore::Error = Error::unavailable("x:1: connection refused").into();
        assert!(
            matches!(k, kmsd_keystore::Error::Backend(ref m) if m.contains("etcd unavailable")),
            "{k}"
        );
    }
}
