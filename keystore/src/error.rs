//! The one error type of the key store, with its contract.
//!
//! No variant ever carries key material, plaintext or the master key: only
//! record kinds, key names and static reasons.
use crate::store::RecordKind;

/// Errors of the key store.
///
/// Contract for [`crate::KeyStore`] implementations: a failed write leaves
/// the store as it was (no half-written record); `Conflict` means the
/// expected revision did not match and nothing was written; `Backend` means
/// the outcome is unknown only for the one record named by the call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The record does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Record kind.
        kind: RecordKind,
        /// Record name.
        name: String,
    },
    /// A conditional write found another revision (or an existing record
    /// where none was expected). Nothing was written.
    #[error("{kind} {name:?} was changed concurrently (revision conflict)")]
    Conflict {
        /// Record kind.
        kind: RecordKind,
        /// Record name.
        name: String,
    },
    /// A fenced batch ([`crate::KeyStore::apply_fenced`]) found its fence
    /// record gone or at another revision: the writer lost what the fence
    /// stood for (the scheduler's leadership). Nothing was written.
    #[error("{kind} {name:?} no longer holds this writer's revision (fenced: another writer took over); nothing was written")]
    Fenced {
        /// Fence record kind.
        kind: RecordKind,
        /// Fence record name.
        name: String,
    },
    /// A stored record failed its integrity check or could not be decoded:
    /// it was corrupted, tampered with, copied from another name, or sealed
    /// under an unknown master key.
    #[error("{kind} {name:?} is corrupt: {reason}")]
    Corrupt {
        /// Record kind.
        kind: RecordKind,
        /// Record name.
        name: String,
        /// What failed (static text, never data).
        reason: &'static str,
    },
    /// A key name outside 1-128 characters of `[A-Za-z0-9._-]`.
    #[error("invalid key name: {0}")]
    InvalidName(&'static str),
    /// The operation is not allowed in the ring's current state.
    #[error("{0}")]
    Precondition(String),
    /// Key material (imported, or read from a record) is not a valid key
    /// of the ring's algorithm. The reason never contains the material.
    #[error("{0}")]
    InvalidMaterial(String),
    /// A request's input is malformed for the key (a digest of the wrong
    /// length, a digest for Ed25519, a public key of another type).
    #[error("{0}")]
    InvalidInput(String),
    /// The master key could not be loaded or is malformed.
    #[error("master key: {0}")]
    MasterKey(String),
    /// Sealing a record failed (the AEAD refused to encrypt; only above
    /// its ~64 GiB per-call limit). Nothing was written.
    #[error("{kind} {name:?} could not be sealed")]
    Seal {
        /// Record kind.
        kind: RecordKind,
        /// Record name.
        name: String,
    },
    /// The store is held open by another process: sled takes an exclusive
    /// lock on its directory's `db` file, so a store a running daemon
    /// serves cannot be opened beside it. Nothing was read or changed.
    #[error("the store at {path} is held by another process (is kmsd serving it?)")]
    Locked {
        /// The store's directory.
        path: String,
    },
    /// The storage backend failed (I/O error).
    #[error("storage backend: {0}")]
    Backend(String),
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Backend(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Backend(e.to_string())
    }
}
