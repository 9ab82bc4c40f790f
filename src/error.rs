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
    /// A malformed request field: which one and why.
    #[error(transparent)]
    InvalidArgument(Invalid),
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
    /// A message, field, batch or rate over a configured limit: which
    /// limit, and its value.
    #[error(transparent)]
    TooLarge(Limit),
    /// A stored record failed its integrity check.
    #[error("key {0:?}: stored record is corrupt or was tampered with")]
    Corrupt(String),
    /// The store is unavailable or failed (a write or `fsync` error, or a
    /// store that refuses writes after one until restart). A change that
    /// fails so was not made.
    #[error("key store unavailable (a storage fault; details in the daemon's log): retry later")]
    StoreUnavailable,
    /// A scheduled write was refused by its fence: this node is no longer
    /// the scheduler leader (another node took over while it was paused or
    /// cut off), so the write was not made. Only the scheduler sees it.
    #[error("this node is no longer the scheduler leader (its write was fenced off): nothing was written")]
    Fenced,
    /// This node has not heard from etcd within `max_staleness`: its
    /// cache may miss a change made on another node (a key disabled or
    /// destroyed there), so it refuses to serve from it until the watch
    /// reports again.
    #[error(
        "this node's key cache may be stale: no word from etcd for {age_ms} ms (max_staleness is {max_ms} ms); \
         it serves again as soon as etcd answers, retry on another node or later"
    )]
    Stale {
        /// How long since the cache was last confirmed current.
        age_ms: u64,
        /// `[store.etcd] max_staleness`.
        max_ms: u64,
    },
    /// Concurrent changes kept conflicting.
    #[error("key {0:?} was changed concurrently; retry")]
    Conflict(String),
    /// A request the key's state or policy does not allow.
    #[error(transparent)]
    FailedPrecondition(Precondition),
    /// The caller may not do this (dual-control rules, a batch item the
    /// policy refuses).
    #[error(transparent)]
    PermissionDenied(Forbidden),
    /// An internal failure (the AEAD refused to encrypt). The static text
    /// names what failed, never data or key material.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// Something other than a key is not there (an officer enrolment
    /// waiting to be claimed, a pending approval request).
    #[error(transparent)]
    NotFound(Missing),
    /// The request's work did not finish within its deadline (the request
    /// timeout, or the caller's `grpc-timeout` if shorter), and was stopped.
    #[error(transparent)]
    DeadlineExceeded(Deadline),
    /// The caller went away (or its request stream failed); the work was
    /// stopped.
    #[error(transparent)]
    Cancelled(Cancel),
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
    /// Import jobs, imports and exports ([`crate::import`]): each case its
    /// own code ([`Transfer::code`]).
    #[error(transparent)]
    Transfer(Transfer),
}

/// Which request field is malformed, and why ([`Error::InvalidArgument`]).
/// The texts are the ones clients see; none carries a value the caller
/// sent except key names and the approval identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// A key name outside the keystore's rules.
    #[error("{0}")]
    KeyName(#[source] kmsd_keystore::Error),
    /// `CreateKey.algorithm` not a known algorithm.
    #[error("unknown algorithm")]
    Algorithm,
    /// A purpose the key's algorithm does not have (AES: ENCRYPT_DECRYPT or
    /// TOKENIZE; HMAC: MAC; signing keys: SIGN_VERIFY).
    #[error("a {algorithm} key cannot have purpose {purpose}")]
    AlgorithmPurpose {
        /// The algorithm's API name.
        algorithm: &'static str,
        /// The purpose's API name.
        purpose: &'static str,
    },
    /// Key material or an input the key refuses (the keystore's text:
    /// never the material).
    #[error("{0}")]
    KeyInput(#[source] kmsd_keystore::Error),
    /// `CreateKey.purpose` is not a known purpose.
    #[error("unknown key purpose")]
    UnknownPurpose,
    /// `UpdateKeyPolicy` tried to change the purpose.
    #[error("a key's purpose is fixed at creation")]
    PurposeFixed,
    /// A policy the key's purpose does not allow (the keystore's rule).
    #[error("{0}")]
    PurposePolicy(#[source] kmsd_keystore::Error),
    /// `rotation_period` under the minimum.
    #[error("rotation_period must be at least {minimum} seconds")]
    RotationPeriod {
        /// The minimum (shorter in dev mode).
        minimum: u64,
    },
    /// `waiting_period` under the minimum.
    #[error("waiting_period must be at least {minimum} seconds")]
    WaitingPeriod {
        /// The minimum (shorter in dev mode).
        minimum: u64,
    },
    /// `SetVersionState` to a state it cannot set.
    #[error("state must be DECRYPT_ONLY or DISABLED")]
    VersionState,
    /// A version the key does not have.
    #[error("key {key:?} has no version {version}")]
    NoSuchVersion {
        /// Key name.
        key: String,
        /// The version asked for.
        version: u32,
    },
    /// `Sign`/`Verify` with neither a message nor a digest.
    #[error("set the message or its SHA-256 digest")]
    NoSignInput,
    /// A `SignatureEncoding` value this version does not know.
    #[error("unknown signature encoding")]
    SignatureEncoding,
    /// `GenerateDataKey.bits` other than 128, 192 or 256.
    #[error("bits must be 128, 192 or 256")]
    DataKeyBits,
    /// `ListKeys.page_token` that does not open for this caller and prefix.
    #[error(
        "invalid page_token (not from a previous ListKeys with the same prefix by this caller, \
         or the master key changed): list again from the start"
    )]
    PageToken,
    /// `EnrollOfficer.identity` empty or too long.
    #[error("identity must be 1-512 characters")]
    OfficerIdentity,
    /// A snapshot that is not a valid kmsd backup for this master key.
    #[error("backup rejected: {reason}")]
    Backup {
        /// What failed (static text from the keystore).
        reason: &'static str,
        /// The keystore's error.
        source: kmsd_keystore::Error,
    },
    /// A data kind left unspecified.
    #[error("kind is required")]
    DataKind,
    /// `Mask.pan_keep_bin` other than 0, 6 or 8.
    #[error("pan_keep_bin must be 0, 6 or 8")]
    PanKeepBin,
    /// A value `Mask` refuses (never contains the value).
    #[error("{0}")]
    Mask(#[source] crate::masking::MaskError),
    /// A value or token tokenization refuses (never contains either).
    #[error("{0}")]
    Token(#[source] crate::masking::TokenError),
    /// `Detokenize` of a format-preserving kind without `key_version`.
    #[error(
        "key_version is required to detokenize a format-preserving token (PAN, sort code, account \
         number, phone): it carries no version, and the wrong one gives a wrong value silently"
    )]
    TokenVersionRequired,
    /// A `RedactStream` that ended with an error (the audit outcome; the
    /// caller gets the stream's own status).
    #[error("stream failed")]
    RedactStream,
}

/// Which configured limit a request went over, and its value
/// ([`Error::TooLarge`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Limit {
    /// A batch with more items than `limits.max_batch_items`.
    #[error("batch of {items} items exceeds the limit of {max}")]
    BatchItems {
        /// Items sent.
        items: usize,
        /// The limit.
        max: usize,
    },
    /// A restore upload over its cap.
    #[error("backup larger than {cap} bytes, {what}")]
    Backup {
        /// The cap in bytes.
        cap: usize,
        /// Which cap ("the restore limit", or the pending-bytes room).
        what: &'static str,
    },
    /// `limits.max_pending_approvals` requests already wait (counted over
    /// every node of a cluster: they are in the shared store).
    #[error(
        "dual control: {pending} requests are already pending, the most allowed (limits.max_pending_approvals); \
         approve, reject or let some expire first"
    )]
    PendingApprovals {
        /// Requests pending.
        pending: usize,
    },
    /// The request would take pending requests over `limits.max_pending_bytes`.
    #[error(
        "dual control: this request would hold {request} bytes in the key store while pending, and pending \
         requests already hold {held}; the most allowed is {max} (limits.max_pending_bytes)"
    )]
    PendingBytes {
        /// Bytes this request holds.
        request: usize,
        /// Bytes pending requests hold.
        held: usize,
        /// The limit.
        max: usize,
    },
    /// A call that would cause more usage rotations than
    /// `limits.max_rotations_per_call`.
    #[error(
        "key {key:?}: version {version} reached its usage limit (max_encryptions_per_version) and \
         this call already caused {max} usage rotations, the most one call may \
         (limits.max_rotations_per_call); retry the rest in another call"
    )]
    UsageRotations {
        /// Key name.
        key: String,
        /// The version at its limit.
        version: u32,
        /// The limit.
        max: u32,
    },
    /// The caller's `limits.tokenize_rate` bucket is empty.
    #[error("tokenize rate limit for this identity exceeded (limits.tokenize_rate); retry in {retry_ms} ms")]
    TokenizeRate {
        /// When a token is next available (at least 1).
        retry_ms: u128,
    },
}

/// What the key's state or policy does not allow
/// ([`Error::FailedPrecondition`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Precondition {
    /// A ring change its state refuses (the keystore's rule and text).
    #[error("{0}")]
    Ring(#[source] kmsd_keystore::Error),
    /// An envelope operation on a token key.
    #[error("key {key:?} is a token key (purpose TOKENIZE): it only tokenizes and detokenizes")]
    TokenKey {
        /// Key name.
        key: String,
    },
    /// An operation the key's algorithm does not do (Encrypt on an HMAC
    /// key, Sign on an AES key, Mac on a signing key...).
    #[error("key {key:?} is {algorithm}: it does not {action}")]
    WrongKeyType {
        /// Key name.
        key: String,
        /// The key's algorithm (API name).
        algorithm: &'static str,
        /// What was asked ("encrypt", "sign", "compute MACs", ...).
        action: &'static str,
    },
    /// Tokenizing under a key that rotates by itself.
    #[error(
        "key {key:?} rotates automatically (rotation period or usage limit): tokens are deterministic \
         and would change at each rotation; use a key created with purpose TOKENIZE, or set \
         allow_token_rotation on this key to accept that"
    )]
    RotatingTokenKey {
        /// Key name.
        key: String,
    },
    /// `ScheduleKeyDeletion` on a key whose policy forbids it.
    #[error("key {key:?} does not allow deletion (policy deletion_allowed is false)")]
    DeletionNotAllowed {
        /// Key name.
        key: String,
    },
    /// `Restore` into a store that has keys.
    #[error("restore needs an empty store (this one has keys)")]
    RestoreNotEmpty,
}

/// Why the caller may not do this ([`Error::PermissionDenied`]; the
/// policy's own denials are [`Error::Denied`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Forbidden {
    /// A dual-control operation requested by a non-officer.
    #[error("{op} needs dual control: it must be requested by an officer and approved by another")]
    DualControlRequester {
        /// The operation.
        op: &'static str,
    },
    /// An officer approving their own request.
    #[error("dual control: the requester cannot approve their own request")]
    OwnRequest,
    /// A non-officer approving.
    #[error("dual control: only an officer can approve")]
    NotAnOfficer,
    /// An officer deciding on a request outside their own rights.
    #[error("dual control: approving or rejecting needs the right it decides on: {0}")]
    DecisionOutsideRights(#[source] crate::authz::Denied),
    /// One item of a batch the policy refuses on its key.
    #[error("permission denied: may not {op} on key {key:?}")]
    BatchItem {
        /// The operation.
        op: &'static str,
        /// The item's key.
        key: String,
    },
}

/// What is not there, other than a key ([`Error::NotFound`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Missing {
    /// No officer enrolment offer waits for this identity.
    #[error("no officer enrolment waits for {identity} (none, claimed or expired)")]
    Enrolment {
        /// The identity.
        identity: String,
    },
    /// No pending approval request with this id, to approve.
    #[error("no pending approval request {id} (unknown or expired)")]
    Approval {
        /// The request id given.
        id: String,
    },
    /// No pending approval request with this id, to reject.
    #[error("no pending approval request {id}")]
    Rejection {
        /// The request id given.
        id: String,
    },
    /// The request was there when this call read it, and another officer
    /// (on this node or another of the cluster) approved or rejected it
    /// before this call could: a request is decided once.
    #[error("pending approval request {id} was approved or rejected meanwhile by another officer")]
    Vanished {
        /// The request id given.
        id: String,
    },
}

/// Which deadline passed ([`Error::DeadlineExceeded`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Deadline {
    /// The call as a whole (`deadline.rs`).
    #[error("the request did not finish within its deadline")]
    Request,
    /// Waiting for room under `limits.max_redaction_bytes_in_flight`.
    #[error("no room for the redaction before the request deadline (limits.max_redaction_bytes_in_flight)")]
    RedactionRoom,
    /// Redaction itself.
    #[error("redaction did not finish within the request deadline")]
    Redaction,
}

/// What stopped because the caller went away ([`Error::Cancelled`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Cancel {
    /// The request stream failed mid-call (the audit outcome; the caller
    /// gets the stream's own status).
    #[error("the request stream failed")]
    RequestStream,
    /// Redaction, because the caller went away.
    #[error("the caller went away; redaction stopped")]
    Redaction,
    /// Redaction, stopped by its caller (the pure entry point).
    #[error("redaction stopped")]
    RedactionStopped,
}

/// What went wrong with an import job, an import or an export
/// ([`Error::Transfer`]). No variant carries key material or any byte of
/// a wrapped key; unwrapping failures are one coarse case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Transfer {
    /// No import job with this id (never created, or removed after it
    /// expired or was retired).
    #[error("import job {id} not found")]
    JobNotFound {
        /// The id given.
        id: String,
    },
    /// An import job id that cannot be one (32 hex digits).
    #[error("import job id must be 32 lowercase hex digits")]
    JobId,
    /// The job has expired (and is removed).
    #[error("import job {id} expired at {expired_at} (Unix time); create another (kmsctl import-job create)")]
    JobExpired {
        /// The job.
        id: String,
        /// When it expired.
        expired_at: i64,
    },
    /// The job was retired after too many blobs failed to unwrap under it
    /// (a bound on the RSA decryption oracle, see SECURITY.md).
    #[error(
        "import job {id} is retired: {failures} wrapped keys failed to unwrap under it; create another job \
         (kmsctl import-job create)"
    )]
    JobRetired {
        /// The job.
        id: String,
        /// Failed unwraps that retired it.
        failures: u32,
    },
    /// The job imports into another key.
    #[error("import job {id} is for key {job_key:?}, not {key:?}")]
    JobForAnotherKey {
        /// The job.
        id: String,
        /// The key the job was created for.
        job_key: String,
        /// The key the request named.
        key: String,
    },
    /// `ttl_seconds` beyond the most allowed.
    #[error("ttl_seconds must be at most {max} (0 = the default, {default})")]
    JobTtl {
        /// The most allowed.
        max: u64,
        /// The default.
        default: u64,
    },
    /// `limits.max_import_jobs` jobs are live already.
    #[error("{live} import jobs are live, the most allowed (limits.max_import_jobs); let some expire first")]
    TooManyJobs {
        /// Live jobs counted.
        live: usize,
    },
    /// The wrapped key or the wrapping public key is malformed or does not
    /// unwrap (the keystore's static reason; one answer for both halves of
    /// a wrapped key).
    #[error("{0}")]
    Wrap(#[source] kmsd_keystore::wrap::WrapError),
    /// The request's algorithm is not the key's.
    #[error("key {key:?} is {key_algorithm}, not {requested}: material is imported only into a key of its algorithm")]
    AlgorithmMismatch {
        /// Key name.
        key: String,
        /// The key's algorithm.
        key_algorithm: &'static str,
        /// The request's.
        requested: &'static str,
    },
    /// Export of a key not created exportable.
    #[error("key {key:?} is not exportable (exportable is fixed at creation, default false)")]
    NotExportable {
        /// Key name.
        key: String,
    },
}

impl Transfer {
    /// The gRPC code of each case.
    pub fn code(&self) -> tonic::Code {
        use kmsd_keystore::wrap::WrapError;
        use tonic::Code;
        match self {
            Transfer::JobNotFound { .. } => Code::NotFound,
            Transfer::JobId | Transfer::JobTtl { .. } => Code::InvalidArgument,
            Transfer::Wrap(WrapError::Key(_)) => Code::Internal,
            Transfer::Wrap(_) => Code::InvalidArgument,
            Transfer::JobExpired { .. }
            | Transfer::JobRetired { .. }
            | Transfer::JobForAnotherKey { .. }
            | Transfer::AlgorithmMismatch { .. }
            | Transfer::NotExportable { .. } => Code::FailedPrecondition,
            Transfer::TooManyJobs { .. } => Code::ResourceExhausted,
        }
    }
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
            | Error::Fenced
            | Error::Stale { .. }
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
            Error::Transfer(t) => t.code(),
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
            K::Fenced { .. } => Error::Fenced,
            K::Corrupt { name, reason, .. } => {
                tracing::error!(key = %name, reason, "stored record failed its integrity check");
                Error::Corrupt(name)
            }
            e @ K::InvalidName(_) => Error::InvalidArgument(Invalid::KeyName(e)),
            e @ K::Precondition(_) => Error::FailedPrecondition(Precondition::Ring(e)),
            e @ (K::InvalidMaterial(_) | K::InvalidInput(_)) => Error::InvalidArgument(Invalid::KeyInput(e)),
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

    /// The typed variants answer with the codes and texts the free-form
    /// strings had (clients and tests match on them).
    #[test]
    fn typed_variants_keep_their_codes_and_texts() {
        let denied = crate::authz::Denied {
            identity: "spiffe://x/officer/b".into(),
            op: "key.destroy",
            on: " on key \"k\"".into(),
        };
        let cases: Vec<(Error, Code, &str)> = vec![
            (
                Error::InvalidArgument(Invalid::NoSuchVersion {
                    key: "k".into(),
                    version: 3,
                }),
                Code::InvalidArgument,
                "key \"k\" has no version 3",
            ),
            (
                Error::InvalidArgument(Invalid::WaitingPeriod { minimum: 86400 }),
                Code::InvalidArgument,
                "waiting_period must be at least 86400 seconds",
            ),
            (
                Error::InvalidArgument(Invalid::Token(crate::masking::TokenError::InvalidToken)),
                Code::InvalidArgument,
                "token is invalid for this key, tweak and kind",
            ),
            (
                Error::from(kmsd_keystore::KeyName::parse("a b").unwrap_err()),
                Code::InvalidArgument,
                "invalid key name: only A-Z a-z 0-9 . _ - are allowed",
            ),
            (
                Error::TooLarge(Limit::BatchItems { items: 5, max: 4 }),
                Code::ResourceExhausted,
                "batch of 5 items exceeds the limit of 4",
            ),
            (
                Error::TooLarge(Limit::PendingBytes {
                    request: 10,
                    held: 20,
                    max: 25,
                }),
                Code::ResourceExhausted,
                "dual control: this request would hold 10 bytes in the key store while pending, and pending \
                 requests already hold 20; the most allowed is 25 (limits.max_pending_bytes)",
            ),
            (
                Error::TooLarge(Limit::TokenizeRate { retry_ms: 7 }),
                Code::ResourceExhausted,
                "tokenize rate limit for this identity exceeded (limits.tokenize_rate); retry in 7 ms",
            ),
            (
                Error::FailedPrecondition(Precondition::TokenKey { key: "t".into() }),
                Code::FailedPrecondition,
                "key \"t\" is a token key (purpose TOKENIZE): it only tokenizes and detokenizes",
            ),
            (
                Error::from(kmsd_keystore::Error::Precondition("version 2 is DESTROYED".into())),
                Code::FailedPrecondition,
                "version 2 is DESTROYED",
            ),
            (
                Error::PermissionDenied(Forbidden::BatchItem {
                    op: "decrypt",
                    key: "k".into(),
                }),
                Code::PermissionDenied,
                "permission denied: may not decrypt on key \"k\"",
            ),
            (
                Error::PermissionDenied(Forbidden::DecisionOutsideRights(denied)),
                Code::PermissionDenied,
                "dual control: approving or rejecting needs the right it decides on: permission denied: \
                 spiffe://x/officer/b may not key.destroy on key \"k\"",
            ),
            (
                Error::NotFound(Missing::Enrolment {
                    identity: "spiffe://x/o".into(),
                }),
                Code::NotFound,
                "no officer enrolment waits for spiffe://x/o (none, claimed or expired)",
            ),
            (
                Error::DeadlineExceeded(Deadline::Request),
                Code::DeadlineExceeded,
                "the request did not finish within its deadline",
            ),
            (
                Error::Cancelled(Cancel::Redaction),
                Code::Cancelled,
                "the caller went away; redaction stopped",
            ),
        ];
        for (e, code, text) in cases {
            let s = tonic::Status::from(e);
            assert_eq!((s.code(), s.message()), (code, text));
        }
    }

    #[test]
    fn typed_variants_keep_their_sources() {
        use std::error::Error as _;
        let e = Error::InvalidArgument(Invalid::Mask(crate::masking::MaskError::Empty));
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("value is empty"));
        let e = Error::from(kmsd_keystore::Error::Precondition("no".into()));
        assert!(e.source().is_some_and(|s| s.is::<kmsd_keystore::Error>()));
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
