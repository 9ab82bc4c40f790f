//! The raw storage contract: named, revisioned, opaque (already sealed)
//! records, with conditional writes.
//!
//! Writes are compare-and-swap on a record revision, so that several
//! daemons can share one store and a replicated backend on an existing
//! distributed engine (etcd transactions, for instance) can implement the
//! same trait. Values reaching a backend are always sealed by
//! [`crate::Sealer`]: a backend never sees key material in clear.
use crate::Error;
use std::fmt;

pub mod memory;
pub mod sled_store;

/// What a record holds. The tag is part of the storage key and of the
/// sealing AAD, so records cannot move between kinds unnoticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RecordKind {
    /// A key ring: versions, their material, states and policy.
    KeyRing,
    /// Store-wide metadata (format version, master key id).
    Meta,
    /// Sealed secrets of other subsystems (audit key, officer TOTP secrets).
    Secret,
    /// The integrity manifest ([`crate::manifest`]): a sealed head and one
    /// entry (generation, hash) per record of the other kinds. Never in a
    /// backup, never visible through a [`crate::manifest::CheckedStore`].
    Manifest,
    /// Coordination records that live only as long as their writer's
    /// lease: the scheduler leader of several nodes on etcd, written by the
    /// election with an etcd lease (kmsd's `leader` module). Not sealed
    /// (it holds a node's name, no secret), not covered by the manifest,
    /// never in a backup nor copied by `kmsd migrate`; a
    /// [`crate::manifest::CheckedStore`] uses one only as a batch's
    /// [`Fence`].
    Lease,
}

impl RecordKind {
    /// The byte that prefixes this kind's records.
    pub fn tag(self) -> u8 {
        match self {
            RecordKind::KeyRing => b'k',
            RecordKind::Meta => b'm',
            RecordKind::Secret => b's',
            RecordKind::Manifest => b'g',
            RecordKind::Lease => b'l',
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::KeyRing => "key ring",
            RecordKind::Meta => "metadata record",
            RecordKind::Secret => "secret record",
            RecordKind::Manifest => "manifest record",
            RecordKind::Lease => "lease record",
        })
    }
}

/// A record's revision: it grows with every write of the record, and a
/// record deleted and created again never gets an old revision back.
/// Callers compare revisions for equality only. (sled and memory: 1 when
/// created, +1 per write; etcd: the record's `mod_revision`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(pub u64);

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The record's current revision.
    pub revision: Revision,
    /// The (sealed) value.
    pub value: Vec<u8>,
}

/// The condition one operation of a batch ([`KeyStore::apply`]) puts on
/// its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// The record must not exist.
    Absent,
    /// The record must exist at this revision.
    At(Revision),
    /// Whatever the record's state (for records the caller's own lock and
    /// another operation's condition already protect).
    Any,
}

/// One operation of an atomic batch.
#[derive(Debug, Clone, Copy)]
pub struct Op<'a> {
    /// Record kind.
    pub kind: RecordKind,
    /// Record name.
    pub name: &'a str,
    /// The condition on the record's current state.
    pub cond: Cond,
    /// The new value, or `None` to delete the record.
    pub value: Option<&'a [u8]>,
}

/// A condition a batch puts on a record it does not write: the batch
/// applies only while that record exists at `revision`
/// ([`KeyStore::apply_fenced`]). A node that holds the scheduler's
/// leadership fences its scheduled writes with the leader record at the
/// revision its election created, so that once another node took over
/// (the record expired with the lease and was created again, at a new
/// revision) a write the former leader still had under way changes
/// nothing, however long it was paused.
///
/// The fence record must not come back at a revision it had: etcd's
/// revisions are store-wide and never reused; memory and sled number a
/// record deleted and created again from 1, so there a fence record is
/// only ever replaced (a sled node has no election: it never fences).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence<'a> {
    /// Record kind (the leader record is [`RecordKind::Lease`]).
    pub kind: RecordKind,
    /// Record name.
    pub name: &'a str,
    /// The revision the record must still have.
    pub revision: Revision,
}

/// Storage for sealed records.
///
/// # Contract
/// - `put` with `expected = None` creates the record and fails with
///   [`Error::Conflict`] if it exists; with `Some(rev)` it replaces the
///   record only if its revision is `rev`, else `Conflict` (or
///   [`Error::NotFound`] if it is gone). It returns the new revision.
/// - A write that returned `Ok` is durable: it survives a crash or power
///   loss of the host. A write that returned `Err` changed nothing.
/// - `delete` removes the record only at revision `expected`.
/// - `list` returns names of one kind in byte order, strictly after
///   `after`, starting with `prefix`, at most `limit`.
/// - `apply` performs a batch atomically: every operation's condition
///   holds and all are applied, or the first failing condition is
///   returned (`Conflict`, or `NotFound` for `At` on a missing record) and
///   none is. After a crash, either all or none of an acknowledged batch
///   is there, and a batch that returned `Err` changed nothing. A batch
///   names each record at most once.
/// - `apply_fenced` with a [`Fence`] is `apply` under one more condition,
///   checked in the same transaction and before the operations' own:
///   the fence record exists at the fence's revision, else
///   [`Error::Fenced`] and nothing is applied. The fence record is only
///   compared, never written, and is not one of the batch's records.
/// - Backends never panic on any stored byte string.
pub trait KeyStore: Send + Sync + 'static {
    /// Reads a record.
    fn get(&self, kind: RecordKind, name: &str) -> Result<Option<Entry>, Error>;
    /// Conditionally writes a record (see the contract). By default one
    /// [`apply`](Self::apply) of a single operation.
    fn put(&self, kind: RecordKind, name: &str, expected: Option<Revision>, value: &[u8]) -> Result<Revision, Error> {
        let cond = match expected {
            None => Cond::Absent,
            Some(r) => Cond::At(r),
        };
        let revs = self.apply(&[Op {
            kind,
            name,
            cond,
            value: Some(value),
        }])?;
        Ok(revs.first().copied().flatten().unwrap_or(Revision(0)))
    }
    /// Conditionally deletes a record. By default one
    /// [`apply`](Self::apply) of a single operation.
    fn delete(&self, kind: RecordKind, name: &str, expected: Revision) -> Result<(), Error> {
        self.apply(&[Op {
            kind,
            name,
            cond: Cond::At(expected),
            value: None,
        }])
        .map(|_| ())
    }
    /// Lists names (see the contract).
    fn list(&self, kind: RecordKind, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error>;
    /// Calls `f` on every record of `kind`, in name order.
    fn for_each(&self, kind: RecordKind, f: &mut dyn FnMut(&str, Entry) -> Result<(), Error>) -> Result<(), Error>;
    /// Applies a batch atomically (see the contract). Returns, per
    /// operation, the record's new revision (`None` for a deletion). By
    /// default [`apply_fenced`](Self::apply_fenced) without a fence.
    fn apply(&self, ops: &[Op<'_>]) -> Result<Vec<Option<Revision>>, Error> {
        self.apply_fenced(None, ops)
    }
    /// Applies a batch atomically while `fence` (if any) holds (see the
    /// contract; every backend decides the fence with [`check_fence`]).
    fn apply_fenced(&self, fence: Option<Fence<'_>>, ops: &[Op<'_>]) -> Result<Vec<Option<Revision>>, Error>;
    /// Removes superseded versions of records from the backend's files,
    /// so that a record overwritten to destroy key material leaves nothing
    /// behind (called after a destruction). Backends that keep no old
    /// versions do nothing.
    fn reclaim(&self) -> Result<(), Error> {
        Ok(())
    }
    /// Makes every write so far durable (used at shutdown).
    fn sync(&self) -> Result<(), Error>;
}

/// Storage key: kind tag followed by the name.
pub(crate) fn storage_key(kind: RecordKind, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(kind.tag());
    k.extend_from_slice(name.as_bytes());
    k
}

/// The revision compare-and-swap decision every backend takes for each
/// operation of a batch, so that they cannot drift apart: checks `cond`
/// against the record's current revision (`None`: the record is absent)
/// and returns the revision the write gives it.
///
/// | `cond` | absent | at revision `c` |
/// |---|---|---|
/// | [`Cond::Absent`] | 1 | [`Error::Conflict`] |
/// | [`Cond::At`]`(r)` | [`Error::NotFound`] | `c + 1` if `r == c`, else [`Error::Conflict`] |
/// | [`Cond::Any`] | 1 | `c + 1` |
///
/// A backend reads the current revision and applies the writes inside one
/// transaction (sled's, etcd's), so nothing changes between the decision
/// and the write (etcd numbers revisions itself: it compares in its
/// transaction and calls this on the records a failed one read, for the
/// exact `Conflict` or `NotFound`). A deletion takes the same decision and ignores the
/// returned revision.
pub fn check_cond(kind: RecordKind, name: &str, cond: Cond, current: Option<Revision>) -> Result<Revision, Error> {
    match (cond, current) {
        (Cond::Absent, None) | (Cond::Any, None) => Ok(Revision(1)),
        (Cond::Any, Some(c)) => Ok(Revision(c.0.saturating_add(1))),
        (Cond::At(r), Some(c)) if r == c => Ok(Revision(c.0.saturating_add(1))),
        (Cond::At(_), None) => Err(Error::NotFound {
            kind,
            name: name.into(),
        }),
        (Cond::Absent, Some(_)) | (Cond::At(_), Some(_)) => Err(Error::Conflict {
            kind,
            name: name.into(),
        }),
    }
}

/// The fence decision every backend takes ([`KeyStore::apply_fenced`]):
/// `current` is the fence record's revision (`None`: absent), read in the
/// batch's transaction. The fence holds only at its exact revision.
pub fn check_fence(fence: Option<Fence<'_>>, current: Option<Revision>) -> Result<(), Error> {
    match fence {
        Some(f) if current != Some(f.revision) => Err(Error::Fenced {
            kind: f.kind,
            name: f.name.into(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_holds_only_at_its_exact_revision() {
        let f = Fence {
            kind: RecordKind::Lease,
            name: "leader",
            revision: Revision(5),
        };
        let fenced = |r: Result<(), Error>| matches!(r, Err(Error::Fenced { .. }));
        assert!(check_fence(None, None).is_ok());
        assert!(check_fence(None, Some(Revision(1))).is_ok());
        assert!(check_fence(Some(f), Some(Revision(5))).is_ok());
        assert!(fenced(check_fence(Some(f), None)), "record gone: the lease expired");
        assert!(
            fenced(check_fence(Some(f), Some(Revision(9)))),
            "created again by another node"
        );
        assert!(fenced(check_fence(Some(f), Some(Revision(4)))));
    }

    /// The whole decision table, once, for every backend.
    #[test]
    fn check_cond_decides_every_case() {
        let k = RecordKind::KeyRing;
        let conflict = |r: Result<Revision, Error>| matches!(r, Err(Error::Conflict { .. }));
        let not_found = |r: Result<Revision, Error>| matches!(r, Err(Error::NotFound { .. }));
        assert_eq!(check_cond(k, "a", Cond::Absent, None).unwrap(), Revision(1));
        assert!(conflict(check_cond(k, "a", Cond::Absent, Some(Revision(3)))));
        assert!(not_found(check_cond(k, "a", Cond::At(Revision(3)), None)));
        assert_eq!(
            check_cond(k, "a", Cond::At(Revision(3)), Some(Revision(3))).unwrap(),
            Revision(4)
        );
        assert!(conflict(check_cond(k, "a", Cond::At(Revision(2)), Some(Revision(3)))));
        assert!(conflict(check_cond(k, "a", Cond::At(Revision(4)), Some(Revision(3)))));
        assert_eq!(check_cond(k, "a", Cond::Any, None).unwrap(), Revision(1));
        assert_eq!(check_cond(k, "a", Cond::Any, Some(Revision(7))).unwrap(), Revision(8));
        assert_eq!(
            check_cond(k, "a", Cond::Any, Some(Revision(u64::MAX))).unwrap(),
            Revision(u64::MAX)
        );
    }
}
