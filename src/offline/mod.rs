//! The offline commands of `kmsd`: what an operator runs against a stopped
//! daemon's store and audit log (`kmsd rekey`, `restore`, `officer-enroll`,
//! `audit-verify`, `migrate`). Each opens the store through the integrity manifest,
//! exactly as the daemon would, does one job and returns what happened;
//! the binary prints it.
//!
//! Never run next to a serving daemon: sled takes an exclusive lock on the
//! store, so opening it fails while the daemon holds it.
//!
//! Errors are one line of text for the operator (`kmsd: <error>`), with the
//! file or record they concern.
mod audit_verify;
mod enrol;
pub mod migrate;
mod rekey;
mod restore;

pub use audit_verify::{audit_verify, audit_verify_nodes, NodesVerified, Verified};
pub use enrol::{officer_enrol, Enrolled};
pub use migrate::{migrate, Migrated};
pub use rekey::{rekey, Rekeyed};
pub use restore::{restore, Restored};

/// Called as work proceeds with (records done, records in total); the
/// binary draws a progress bar with it.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Turns any displayable error into the operator's one line.
fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}
