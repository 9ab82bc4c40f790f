//! Backup snapshots and master-key rotation (rekey).
//!
//! # Snapshot format 2 (written)
//! ```text
//! "KMSDBAK2" | u64-BE record count |
//!   count × ( kind tag u8 | u32-BE name length | name | u32-BE value length | sealed value ) |
//! HMAC-SHA256(backup MAC subkey, every preceding byte)
//! ```
//! Format 1 (`"KMSDBAK1"`, read only) is the same with the MAC keyed by
//! `HMAC-SHA256(master key, "kmsd backup mac v1")`.
//!
//! Records stay sealed under the master key exactly as stored, so a
//! snapshot never holds key material in clear; the trailing MAC (under the
//! backup subkey of the master key, [`crate::seal::Purpose::BackupMac`])
//! detects any change, truncation or reordering. A snapshot verifies under
//! the current master key or any previous one the sealer holds
//! (`store.previous_master_key`), so backups taken before a rekey stay
//! restorable while the old key is kept.
//!
//! Restoring re-seals every record under the current key (and format),
//! writes it through the integrity manifest, and keeps every version the
//! current store's tombstones list as destroyed: a backup taken before a
//! destruction never brings the material back into a store that knows of
//! it.
//!
//! Pending dual-control requests (secret records named
//! [`NOT_BACKED_UP`]`…`) and import jobs ([`IMPORT_JOBS`]`…`) are not in
//! a snapshot: a request outlives its
//! approval window by minutes at most, a restore brought back with it
//! could revive a request since rejected, and a pending restore's own
//! snapshot would double the backup.
//!
//! # Rekey
//! [`rekey`] re-seals every record under a new master key, one record per
//! compare-and-swap. Records already sealed under the new key are skipped,
//! so an interrupted rekey is resumed by running it again, and at every
//! point the store opens with the (new, old) key pair: no record is lost.
use crate::error::Error;
use crate::keyring::{KeyRing, VersionState};
use crate::manifest::COVERED;
use crate::name::KeyName;
use crate::rings::RingStore;
use crate::seal::{Purpose, Sealer};
use crate::store::{KeyStore, RecordKind};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

const MAGIC_V1: &[u8; 8] = b"KMSDBAK1";
const MAGIC_V2: &[u8; 8] = b"KMSDBAK2";
const KINDS: [RecordKind; 3] = COVERED;

/// Names of the secret records a snapshot leaves out (the daemon's pending
/// dual-control requests and their bodies).
pub const NOT_BACKED_UP: &str = "approval";
/// Names of the import jobs' secret records (`import-job:<id>`, the
/// daemon's): not in a snapshot either. A job lives hours at most, and a
/// restore must not revive one.
pub const IMPORT_JOBS: &str = "import-job:";

/// Whether a record goes into a snapshot.
fn backed_up(kind: RecordKind, name: &str) -> bool {
    !(kind == RecordKind::Secret && (name.starts_with(NOT_BACKED_UP) || name.starts_with(IMPORT_JOBS)))
}

fn kind_from_tag(t: u8) -> Option<RecordKind> {
    KINDS.into_iter().find(|k| k.tag() == t)
}

fn mac_with(key: &[u8; 32]) -> Option<Hmac<Sha256>> {
    // HMAC accepts keys of any length: never None.
    Hmac::<Sha256>::new_from_slice(key).ok()
}

/// Writes a snapshot of every record to `out`, calling `progress(done,
/// total)` as it goes. Returns the number of records.
pub fn write_snapshot(
    store: &dyn KeyStore,
    sealer: &Sealer,
    out: &mut dyn std::io::Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, Error> {
    let mut records = Vec::new();
    for kind in KINDS {
        store.for_each(kind, &mut |name, entry| {
            if backed_up(kind, name) {
                records.push((kind, name.to_owned(), entry.value));
            }
            Ok(())
        })?;
    }
    let total = records.len() as u64;
    let mut m =
        mac_with(&sealer.subkey(Purpose::BackupMac)).ok_or_else(|| Error::Backend("backup MAC key rejected".into()))?;
    let mut emit = |bytes: &[u8], out: &mut dyn std::io::Write| -> Result<(), Error> {
        m.update(bytes);
        out.write_all(bytes).map_err(Error::from)
    };
    emit(MAGIC_V2, out)?;
    emit(&total.to_be_bytes(), out)?;
    for (i, (kind, name, value)) in records.iter().enumerate() {
        let mut rec = Vec::with_capacity(9 + name.len() + value.len());
        rec.push(kind.tag());
        rec.extend_from_slice(&(name.len() as u32).to_be_bytes());
        rec.extend_from_slice(name.as_bytes());
        rec.extend_from_slice(&(value.len() as u32).to_be_bytes());
        rec.extend_from_slice(value);
        emit(&rec, out)?;
        progress(i as u64 + 1, total);
    }
    out.write_all(&m.finalize().into_bytes())?;
    Ok(total)
}

/// A parsed snapshot record.
#[derive(Debug)]
pub struct SnapshotRecord {
    /// Kind.
    pub kind: RecordKind,
    /// Name.
    pub name: String,
    /// Sealed value.
    pub value: Vec<u8>,
}

fn bad(reason: &'static str) -> Error {
    Error::Corrupt {
        kind: RecordKind::Meta,
        name: "backup".into(),
        reason,
    }
}

/// Verifies a snapshot's MAC and parses it. Nothing is returned unless
/// the whole snapshot is authentic, and every record opens. The MAC is
/// accepted under the current master key or any previous one `sealer`
/// holds.
pub fn read_snapshot(bytes: &[u8], sealer: &Sealer) -> Result<Vec<SnapshotRecord>, Error> {
    if bytes.len() < MAGIC_V2.len() + 8 + 32 {
        return Err(bad("not a kmsd backup (format 1 or 2)"));
    }
    let keys: Vec<Zeroizing<[u8; 32]>> = if bytes.starts_with(MAGIC_V2) {
        sealer.subkeys(Purpose::BackupMac)
    } else if bytes.starts_with(MAGIC_V1) {
        sealer.legacy_backup_mac_keys()
    } else {
        return Err(bad("not a kmsd backup (format 1 or 2)"));
    };
    let (body, tag) = bytes.split_at(bytes.len() - 32);
    let authentic = keys.iter().any(|k| {
        mac_with(k).is_some_and(|mut m| {
            m.update(body);
            m.verify_slice(tag).is_ok()
        })
    });
    if !authentic {
        return Err(bad(
            "backup integrity check failed (modified, truncated, or made under a master key not configured as \
             store.master_key or store.previous_master_key)",
        ));
    }
    let mut rest = &body[MAGIC_V2.len()..];
    let take = |rest: &mut &[u8], n: usize| -> Result<Vec<u8>, Error> {
        if rest.len() < n {
            return Err(bad("backup is truncated"));
        }
        let (a, b) = rest.split_at(n);
        *rest = b;
        Ok(a.to_vec())
    };
    let u32_of = |v: Vec<u8>| -> u32 { v.try_into().map(u32::from_be_bytes).unwrap_or(u32::MAX) };
    let count = take(&mut rest, 8)?
        .try_into()
        .map(u64::from_be_bytes)
        .unwrap_or(u64::MAX);
    let mut out = Vec::new();
    for _ in 0..count {
        let kind =
            kind_from_tag(take(&mut rest, 1)?.first().copied().unwrap_or(0)).ok_or(bad("unknown record kind"))?;
        let nlen = u32_of(take(&mut rest, 4)?) as usize;
        let name = String::from_utf8(take(&mut rest, nlen)?).map_err(|_| bad("record name is not UTF-8"))?;
        let vlen = u32_of(take(&mut rest, 4)?) as usize;
        let value = take(&mut rest, vlen)?;
        sealer.open(kind, &name, &value)?;
        out.push(SnapshotRecord { kind, name, value });
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the last record"));
    }
    Ok(out)
}

/// A record's plaintext as it will be restored: key rings lose the
/// material of every version the current store's tombstone lists.
fn restored_plaintext(rings: &RingStore, r: &SnapshotRecord) -> Result<(Zeroizing<Vec<u8>>, usize), Error> {
    let plain = rings.sealer().open(r.kind, &r.name, &r.value)?;
    if r.kind != RecordKind::KeyRing {
        return Ok((plain, 0));
    }
    let gone = rings.tombstone(&r.name)?;
    if gone.is_empty() {
        return Ok((plain, 0));
    }
    let rev = crate::store::Revision(0);
    let mut ring = KeyRing::decode(&KeyName::parse(&r.name)?, &plain, rev)?;
    let mut stripped = 0;
    for v in &mut ring.versions {
        if gone.contains(&v.version) && (v.state != VersionState::Destroyed || v.material.is_some()) {
            v.state = VersionState::Destroyed;
            v.material = None; // zeroized on drop
            stripped += 1;
        }
    }
    Ok((ring.encode(), stripped))
}

/// Frames `body` (what follows the magic: record count and records) as a
/// format-2 snapshot with a valid MAC under `sealer`'s current key, so the
/// fuzz target in `fuzz/` (and its stable replay in the daemon's
/// `tests/fuzz_regressions.rs`) reaches the record parser behind the MAC.
/// Not an API.
#[doc(hidden)]
pub fn fuzz_frame_snapshot(body: &[u8], sealer: &Sealer) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC_V2.len() + body.len() + 32);
    out.extend_from_slice(MAGIC_V2);
    out.extend_from_slice(body);
    if let Some(mut m) = mac_with(&sealer.subkey(Purpose::BackupMac)) {
        m.update(&out);
        out.extend_from_slice(&m.finalize().into_bytes());
    }
    out
}

/// Restores a verified snapshot into a store without key rings. Existing
/// non-key records (the store marker, the restoring daemon's own audit
/// key, tombstones) are kept; missing ones (officer enrolments) are
/// restored. Every record is re-sealed under the current key and written
/// through the integrity manifest; versions the current store knows as
/// destroyed stay destroyed.
///
/// An interrupted restore is resumed by running it again with the same
/// snapshot: key rings already in the store are accepted when each holds
/// what the snapshot's record of that name restores to (what the
/// interrupted run wrote); any other key ring makes the store "not empty"
/// and the restore is refused, touching nothing.
pub fn restore_snapshot(
    rings: &RingStore,
    records: &[SnapshotRecord],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, Error> {
    let store = rings.raw();
    let mut plains = Vec::with_capacity(records.len());
    let mut stripped = 0;
    for r in records {
        let (p, n) = restored_plaintext(rings, r)?;
        stripped += n;
        plains.push(p);
    }
    if stripped > 0 {
        tracing::warn!(
            versions = stripped,
            "restore: versions destroyed after the backup was taken stay destroyed"
        );
    }
    let wanted: std::collections::HashMap<&str, &[u8]> = records
        .iter()
        .zip(&plains)
        .filter(|(r, _)| r.kind == RecordKind::KeyRing)
        .map(|(r, p)| (r.name.as_str(), p.as_slice()))
        .collect();
    let mut foreign = false;
    store.for_each(RecordKind::KeyRing, &mut |name, entry| {
        let same = rings
            .sealer()
            .open(RecordKind::KeyRing, name, &entry.value)
            .is_ok_and(|p| wanted.get(name).copied() == Some(p.as_slice()));
        foreign |= !same;
        Ok(())
    })?;
    if foreign {
        return Err(Error::Precondition(
            "restore needs an empty store (it has key rings that are not from this snapshot)".into(),
        ));
    }
    let total = records.len() as u64;
    for (i, (r, plain)) in records.iter().zip(&plains).enumerate() {
        let sealed = rings.sealer().seal(r.kind, &r.name, plain)?;
        match store.put(r.kind, &r.name, None, &sealed) {
            Ok(_) => {}
            // The store marker of a freshly opened store, secrets the
            // restoring daemon already made (its own audit key), and the
            // store's own tombstones are kept.
            Err(Error::Conflict { .. }) if r.kind != RecordKind::KeyRing => {}
            // A key ring an interrupted run already wrote (anything else
            // appeared meanwhile: refused).
            Err(e @ Error::Conflict { .. }) => {
                let now = store.get(r.kind, &r.name)?;
                let same = now
                    .and_then(|en| rings.sealer().open(r.kind, &r.name, &en.value).ok())
                    .is_some_and(|p| p.as_slice() == plain.as_slice());
                if !same {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        crate::failpoints::kill_point(crate::failpoints::RESTORE_RECORD);
        progress(i as u64 + 1, total);
    }
    store.sync()?;
    Ok(total)
}

/// Re-seals every record not yet under `sealer`'s current key. Returns
/// (re-sealed, already current).
pub fn rekey(store: &dyn KeyStore, sealer: &Sealer, progress: &mut dyn FnMut(u64, u64)) -> Result<(u64, u64), Error> {
    let mut names = Vec::new();
    for kind in KINDS {
        store.for_each(kind, &mut |name, _| {
            names.push((kind, name.to_owned()));
            Ok(())
        })?;
    }
    let total = names.len() as u64;
    let (mut resealed, mut current) = (0, 0);
    for (i, (kind, name)) in names.iter().enumerate() {
        while let Some(entry) = store.get(*kind, name)? {
            if sealer.is_current(&entry.value) {
                current += 1;
                break;
            }
            let plain = sealer.open(*kind, name, &entry.value)?;
            let sealed = sealer.seal(*kind, name, &plain)?;
            match store.put(*kind, name, Some(entry.revision), &sealed) {
                Ok(_) => {
                    resealed += 1;
                    crate::failpoints::kill_point(crate::failpoints::REKEY_RECORD);
                    break;
                }
                Err(Error::Conflict { .. }) => continue, // changed meanwhile: re-read
                Err(e) => return Err(e),
            }
        }
        progress(i as u64 + 1, total);
    }
    store.sync()?;
    Ok((resealed, current))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keyring::KeyPolicy;
    use crate::store::memory::MemoryStore;
    use crate::{Algorithm, MasterKey};
    use std::sync::Arc;

    fn rings(store: &Arc<MemoryStore>) -> RingStore {
        RingStore::open(store.clone(), Sealer::new(MasterKey::from_bytes(&[3; 32]))).unwrap()
    }

    #[test]
    fn an_interrupted_restore_is_resumed_and_a_foreign_store_refused() {
        let src = Arc::new(MemoryStore::new());
        let source = rings(&src);
        for n in ["a", "b", "c"] {
            source
                .create(
                    KeyRing::new(
                        KeyName::parse(n).unwrap(),
                        Algorithm::Aes256Gcm,
                        KeyPolicy::default(),
                        1,
                    )
                    .unwrap(),
                )
                .unwrap();
        }
        let mut snap = Vec::new();
        write_snapshot(source.raw().as_ref(), source.sealer(), &mut snap, &mut |_, _| {}).unwrap();
        let records = read_snapshot(&snap, source.sealer()).unwrap();
        let dst = Arc::new(MemoryStore::new());
        let target = rings(&dst);
        // the first run stopped after two rings
        let firsts: Vec<SnapshotRecord> = records
            .iter()
            .filter(|r| r.kind == RecordKind::KeyRing && r.name != "c")
            .map(|r| SnapshotRecord {
                kind: r.kind,
                name: r.name.clone(),
                value: r.value.clone(),
            })
            .collect();
        restore_snapshot(&target, &firsts, &mut |_, _| {}).unwrap();
        assert_eq!(
            restore_snapshot(&target, &records, &mut |_, _| {}).unwrap(),
            records.len() as u64
        );
        for n in ["a", "b", "c"] {
            let name = KeyName::parse(n).unwrap();
            assert_eq!(
                target.get(&name).unwrap().unwrap().versions[0]
                    .material
                    .as_ref()
                    .unwrap()
                    .expose_secret(),
                source.get(&name).unwrap().unwrap().versions[0]
                    .material
                    .as_ref()
                    .unwrap()
                    .expose_secret()
            );
        }
        // a store with a key ring of its own (or a different version of one)
        let other_store = Arc::new(MemoryStore::new());
        let other = rings(&other_store);
        other
            .create(
                KeyRing::new(
                    KeyName::parse("a").unwrap(),
                    Algorithm::Aes256Gcm,
                    KeyPolicy::default(),
                    1,
                )
                .unwrap(),
            )
            .unwrap();
        let e = restore_snapshot(&other, &records, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("empty store"), "{e}");
        assert!(
            other.get(&KeyName::parse("b").unwrap()).unwrap().is_none(),
            "nothing written"
        );
    }
}
