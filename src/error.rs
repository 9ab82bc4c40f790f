//! The daemon's error type, and the one place it becomes a gRPC status.
//!
//! Messages name keys, versions and states, never plaintext, ciphertext
//! bytes or key material. Decryption failures are deliberately coarse: the
//! caller learns only that authentication failed; details go to the log.
use kmsd_keystore::VersionState;

/// Errors a request can end with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named key does not exist.
    #[error("key {0:?} not found")]
    KeyNotFound(String),
    /// A key with that name exists already.
    #[error("key {0:?} already exists")]
    KeyExists(String),
    /// A malformed request field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The ciphertext is not a kmsd envelope this version can read.
    #[error("malformed ciphertext: {0}")]
    MalformedCiphertext(&'static str),
    /// Authentication of the ciphertext failed (tampered, wrong key, wrong
    /// associated data). Opaque by design.
    #[error("decryption failed: the ciphertext is not authentic for this key and associated data")]
    DecryptionFailed,
    /// The key version cannot be used in its state.
    #[error("key {key:?} version {version} is {}: {action} not allowed", state.as_str())]
    VersionUnusable {
        /// Key name.
        key: String,
        /// Version.
        version: u32,
        /// Its state.
        state: VersionState,
        /// "encryption" or "decryption".
        action: &'static str,
    },
    /// The key version is below the key's minimum for the operation.
    #[error("key {key:?} version {version} is below the minimum {action} version {minimum}")]
    VersionBelowMinimum {
        /// Key name.
        key: String,
        /// Version.
        version: u32,
        /// Minimum allowed.
        minimum: u32,
        /// "encryption" or "decryption".
        action: &'static str,
    },
    /// A message, field or batch over a configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// A stored record failed its integrity check.
    #[error("key {0:?}: stored record is corrupt or was tampered with")]
    Corrupt(String),
    /// The store is unavailable or failed (a write or `fsync` error, or a
    /// store that refuses writes after one until restart). A change that
    /// fails so was not made.
    #[error("key store unavailable (a storage fault; details in the daemon's log): retry later")]
    StoreUnavailable,
    /// Concurrent changes kept conflicting.
    #[error("key {0:?} was changed concurrently; retry")]
    Conflict(String),
    /// A request the key's state or policy does not allow.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller's policy does not allow the operation.
    #[error("{0}")]
    PermissionDenied(String),
    /// An internal failure (the AEAD refused to encrypt). The static text
    /// names what failed, never data or key material.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// Something other than a key is not there (an officer enrolment
    /// waiting to be claimed).
    #[error("{0}")]
    NotFound(String),
    /// The request's work did not finish within its deadline (the request
    /// timeout, or the caller's `grpc-timeout` if shorter), and was stopped.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The caller went away; the work was stopped.
    #[error("{0}")]
    Cancelled(String),
    /// The policy does not allow the caller the operation (on the key).
    #[error(transparent)]
    Denied(#[from] crate::authz::Denied),
    /// The connection did not come through the mTLS acceptor (it always
    /// does): no verified client certificate to name the caller.
    #[error("no verified client certificate")]
    NoClientCertificate,
    /// An officer's second factor is missing, wrong, replayed, not
    /// enrolled, or the officer is locked out.
    #[error(transparent)]
    SecondFactor(#[from] crate::authz::SecondFactorError),
    /// An accepted one-time code could not be recorded as used (the store
    /// failed): the call fails closed.
    #[error("the one-time code could not be recorded as used; the operation was not performed")]
    CodeNotRecorded,
    /// The daemon has not loaded its key store yet.
    #[error("kmsd is starting: the key store is not loaded yet")]
    Starting,
    /// The audit trail cannot take the call's records (`on_failure =
    /// "fail"`): the call (or administrative operation) was not performed.
    #[error("{source}; the {what} was not performed")]
    AuditRefused {
        /// Why the audit trail refused.
        source: crate::audit::AuditError,
        /// "call" or "operation".
        what: &'static str,
    },
    /// The call's outcome could not be written to the audit trail, so its
    /// result is not given out.
    #[error(transparent)]
    AuditOutcome(crate::audit::AuditError),
    /// Dual control: the request now waits for a second officer (the
    /// status carries its id in the `x-kmsd-approval-id` metadata).
    #[error(
        "dual control: request {id} created; a second officer must approve it before it runs \
         (kmsctl approvals approve {id}); expires at {expires_at} (Unix time): {description}"
    )]
    ApprovalPending {
        /// The pending request's id.
        id: String,
        /// Unix time it expires unapproved.
        expires_at: i64,
        /// What will happen, in words.
        description: String,
    },
    /// A policy reload was refused (the file does not parse, or names
    /// DEV ONLY roles outside dev mode); the previous policy stays.
    #[error("policy reload refused (the previous policy stays in force): {0}")]
    PolicyRefused(#[source] crate::authz::PolicyError),
    /// The request stream failed mid-call (reset by the client, the
    /// connection lost): the caller gets the stream's own status.
    #[error("request stream failed: {0}")]
    RequestStream(tonic::Status),
}

impl Error {
    /// The gRPC code this error is answered with: the one table.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::KeyNotFound(_) | Error::NotFound(_) => Code::NotFound,
            Error::KeyExists(_) => Code::AlreadyExists,
            Error::InvalidArgument(_) | Error::MalformedCiphertext(_) | Error::DecryptionFailed => {
                Code::InvalidArgument
            }
            Error::VersionUnusable { .. }
            | Error::VersionBelowMinimum { .. }
            | Error::FailedPrecondition(_)
            | Error::PolicyRefused(_)
            | Error::ApprovalPending { .. } => Code::FailedPrecondition,
            Error::TooLarge(_) => Code::ResourceExhausted,
            Error::PermissionDenied(_) | Error::Denied(_) => Code::PermissionDenied,
            Error::Corrupt(_) => Code::DataLoss,
            Error::StoreUnavailable
            | Error::Starting
            | Error::CodeNotRecorded
            | Error::AuditRefused { .. }
            | Error::AuditOutcome(_) => Code::Unavailable,
            Error::Conflict(_) => Code::Aborted,
            Error::Internal(_) => Code::Internal,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Cancelled(_) => Code::Cancelled,
            Error::NoClientCertificate | Error::SecondFactor(_) => Code::Unauthenticated,
            Error::RequestStream(s) => s.code(),
        }
    }
}

/// The one place an [`Error`] becomes a gRPC status.
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::RequestStream(status) => status,
            Error::ApprovalPending { ref id, .. } => {
                let id = id.parse().ok();
                let mut status = tonic::Status::new(e.code(), e.to_string());
                if let Some(v) = id {
                    status.metadata_mut().insert(crate::authz::APPROVAL_HEADER, v);
                }
                status
            }
            Error::SecondFactor(crate::authz::SecondFactorError::Missing { .. }) => {
                let mut status = tonic::Status::new(e.code(), e.to_string());
                // a client asks its officer for a code on this mark, not on the message text
                status.metadata_mut().insert(
                    crate::client::metadata::SECOND_FACTOR,
                    tonic::metadata::MetadataValue::from_static("required"),
                );
                status
            }
            e => tonic::Status::new(e.code(), e.to_string()),
        }
    }
}

impl From<kmsd_keystore::Error> for Error {
    fn from(e: kmsd_keystore::Error) -> Self {
        use kmsd_keystore::Error as K;
        match e {
            K::NotFound { name, .. } => Error::KeyNotFound(name),
            K::Conflict { name, .. } => Error::Conflict(name),
            K::Corrupt { name, reason, .. } => {
                tracing::error!(key = %name, reason, "stored record failed its integrity check");
                Error::Corrupt(name)
            }
            K::InvalidName(why) => Error::InvalidArgument(format!("invalid key name: {why}")),
            K::Precondition(m) => Error::FailedPrecondition(m),
            K::Seal { kind, name } => {
                tracing::error!(kind = %kind, name = %name, "a record could not be sealed");
                Error::Internal("a record could not be sealed")
            }
            other => {
                tracing::error!(error = %other, "key store failure");
                Error::StoreUnavailable
            }
        }
    }
}

/// The canonical name of a gRPC code: the one table, shared by metrics
/// labels, audit records and log lines (kept in [`crate::ops::metrics`]
/// so `ops` stays a leaf).
pub use crate::ops::metrics::code_name;

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn code_names_are_the_canonical_grpc_names() {
        let names: Vec<&str> = (0..17).map(|i| code_name(Code::from_i32(i))).collect();
        assert_eq!(names.first(), Some(&"OK"));
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 17, "{names:?}");
        assert!(names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')));
    }

    #[test]
    fn a_pending_approval_is_failed_precondition_naming_the_request() {
        let s = tonic::Status::from(Error::ApprovalPending {
            id: "0123abcd".into(),
            expires_at: 42,
            description: "restore a 3-byte backup snapshot".into(),
        });
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(
            s.metadata()
                .get(crate::authz::APPROVAL_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("0123abcd")
        );
        assert!(s.message().starts_with("dual control: request 0123abcd created; a second officer must approve it before it runs (kmsctl approvals approve 0123abcd); expires at 42 (Unix time): restore"), "{}", s.message());
    }

    #[test]
    fn a_failed_request_stream_keeps_its_own_status() {
        let s = tonic::Status::from(Error::RequestStream(tonic::Status::aborted("h2 reset")));
        assert_eq!((s.code(), s.message()), (Code::Aborted, "h2 reset"));
        let e = Error::AuditRefused {
            source: crate::audit::AuditError("disk full".into()),
            what: "operation",
        };
        assert_eq!(e.code(), Code::Unavailable);
        assert_eq!(
            e.to_string(),
            "audit log unavailable: disk full; the operation was not performed"
        );
    }
}
