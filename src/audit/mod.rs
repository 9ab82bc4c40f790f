//! The tamper-evident audit trail.
//!
//! One JSON line per record, fields in a fixed order, no payloads (never
//! plaintext, ciphertext, tokens, codes or key material):
//! ```text
//! {"seq":1,"time":"…","request_id":"…","identity":"…","op":"encrypt","key":"k","key_version":1,
//!  "result":"OK","detail":null,"peer":"unix","latency_us":12,"prev":"<hex>","mac":"<hex>"}
//! ```
//! - `prev` is the SHA-256 of the previous record's line (without its
//!   newline); the first record of a chain has the SHA-256 of
//!   `"kmsd audit chain v1"`, and the first record of a rotated-to file
//!   carries the last hash of the file before it, so the chain continues
//!   across files.
//! - `mac` is HMAC-SHA256, under the audit key (kept sealed in the key
//!   store), of the line up to and excluding `,"mac":"…"` followed by `}`.
//! - A head file beside the log (`<log>.head`) holds the last sequence
//!   number and hash, MAC'd, rewritten after every durable batch: a log cut
//!   short at its tail no longer reaches the head.
//!
//! Edits, deletions, insertions, reordering and truncation of the tail are
//! all detected by [`verify()`]. Writing is group-committed: a writer thread
//! drains everything queued, appends it with one `write` and one
//! `fdatasync`, and only then answers callers waiting for durability.
//!
//! # Layout
//! - `record`: the audit key, [`Event`], the hand-built MAC'd line and its
//!   chain hash (no I/O).
//! - `chain`: the files of the chain: the head file ([`read_head`],
//!   [`Anchor`]) and the rotated files ([`rotated_files`], [`log_files`]).
//! - `handle`: [`AuditHandle`], what callers hold: queueing, durable
//!   records, `on_failure`.
//! - `writer`: the writer thread ([`spawn`]): group commit, rotation,
//!   retention, retries.
//! - `recovery`: opening the writer on an existing log after a crash.
//! - `verify`: [`verify()`] and the streaming [`Verifier`].
//! - [`fuzzing`]: entry points for `fuzz/` (not an API).
mod chain;
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod record;
mod recovery;
#[cfg(test)]
mod tests;
mod verify;
mod writer;

pub use chain::{log_files, read_head, rotated_files, Anchor, Rotated};
pub use handle::{blocking_section, AuditHandle};
pub use record::{AuditKey, Event};
pub use verify::{verify, Broken, Report, Verifier, MAX_LINE};
pub use writer::{spawn, OnFailure, Options, RETRY_EVERY, SYNC_EVERY, TICK};

/// An audit write failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditError(pub String);
