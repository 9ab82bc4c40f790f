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
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        let code = match &e {
            Error::KeyNotFound(_) | Error::NotFound(_) => Code::NotFound,
            Error::KeyExists(_) => Code::AlreadyExists,
            Error::InvalidArgument(_) | Error::MalformedCiphertext(_) | Error::DecryptionFailed => {
                Code::InvalidArgument
            }
            Error::VersionUnusable { .. } | Error::VersionBelowMinimum { .. } | Error::FailedPrecondition(_) => {
                Code::FailedPrecondition
            }
            Error::TooLarge(_) => Code::ResourceExhausted,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Corrupt(_) => Code::DataLoss,
            Error::StoreUnavailable => Code::Unavailable,
            Error::Conflict(_) => Code::Aborted,
            Error::Internal(_) => Code::Internal,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Cancelled(_) => Code::Cancelled,
        };
        tonic::Status::new(code, e.to_string())
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

/// The canonical name of a gRPC code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
