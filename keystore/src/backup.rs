//! Backup snapshots and master-key rotation (rekey).
//!
//! # Snapshot format 1
//! ```text
//! "KMSDBAK1" | u64-BE record count |
//!   count × ( kind tag u8 | u32-BE name length | name | u32-BE value length | sealed value ) |
//! HMAC-SHA256(backup MAC key, every preceding byte)
//! ```
//! Records stay sealed under the master key exactly as stored, so a
//! snapshot never holds key material in clear; the trailing MAC (under a
//! key derived from the master key) detects any change, truncation or
//! reordering. Restoring needs the same master key (or a later one whose
//! sealer lists it as previous).
//!
//! # Rekey
//! [`rekey`] re-seals every record under a new master key, one record per
//! compare-and-swap. Records already sealed under the new key are skipped,
//! so an interrupted rekey is resumed by running it again, and at every
//! point the store opens with the (new, old) key pair: no record is lost.
use crate::error::Error;
use crate::seal::Sealer;
use crate::store::{KeyStore, RecordKind};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 8] = b"KMSDBAK1";
const KINDS: [RecordKind; 3] = [RecordKind::Meta, RecordKind::KeyRing, RecordKind::Secret];

fn kind_from_tag(t: u8) -> Option<RecordKind> {
    KINDS.into_iter().find(|k| k.tag() == t)
}

fn mac(sealer: &Sealer) -> Hmac<Sha256> {
    let key = sealer.derive_subkey(b"kmsd backup mac v1");
    // HMAC accepts keys of any length.
    Hmac::<Sha256>::new_from_slice(key.as_ref()).unwrap_or_else(|_| unreachable_hmac())
}

#[allow(clippy::panic)]
fn unreachable_hmac() -> Hmac<Sha256> {
    panic!("HMAC-SHA256 accepts any key length")
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
            records.push((kind, name.to_owned(), entry.value));
            Ok(())
        })?;
    }
    let total = records.len() as u64;
    let mut m = mac(sealer);
    let mut emit = |bytes: &[u8], out: &mut dyn std::io::Write| -> Result<(), Error> {
        m.update(bytes);
        out.write_all(bytes).map_err(Error::from)
    };
    emit(MAGIC, out)?;
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
/// the whole snapshot is authentic, and every record opens.
pub fn read_snapshot(bytes: &[u8], sealer: &Sealer) -> Result<Vec<SnapshotRecord>, Error> {
    if bytes.len() < MAGIC.len() + 8 + 32 || !bytes.starts_with(MAGIC) {
        return Err(bad("not a kmsd backup (format 1)"));
    }
    let (body, tag) = bytes.split_at(bytes.len() - 32);
    let mut m = mac(sealer);
    m.update(body);
    m.verify_slice(tag)
        .map_err(|_| bad("backup integrity check failed (modified, truncated, or another master key)"))?;
    let mut rest = &body[MAGIC.len()..];
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

/// Restores a verified snapshot into a store without key rings. Existing
/// non-key records (the store marker, the restoring daemon's own audit
/// key) are kept; missing ones (officer enrolments) are restored.
///
/// An interrupted restore is resumed by running it again with the same
/// snapshot: key rings already in the store are accepted when each is
/// byte-for-byte the snapshot's record of that name (what the interrupted
/// run wrote); any other key ring makes the store "not empty" and the
/// restore is refused, touching nothing.
pub fn restore_snapshot(
    store: &dyn KeyStore,
    records: &[SnapshotRecord],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, Error> {
    let wanted: std::collections::HashMap<&str, &[u8]> = records
        .iter()
        .filter(|r| r.kind == RecordKind::KeyRing)
        .map(|r| (r.name.as_str(), r.value.as_slice()))
        .collect();
    let mut foreign = false;
    store.for_each(RecordKind::KeyRing, &mut |name, entry| {
        if wanted.get(name).copied() != Some(entry.value.as_slice()) {
            foreign = true;
        }
        Ok(())
    })?;
    if foreign {
        return Err(Error::Precondition(
            "restore needs an empty store (it has key rings that are not from this snapshot)".into(),
        ));
    }
    let total = records.len() as u64;
    for (i, r) in records.iter().enumerate() {
        match store.put(r.kind, &r.name, None, &r.value) {
            Ok(_) => {}
            // The store marker of a freshly opened store, and secrets the
            // restoring daemon already made (its own audit key) are kept.
            Err(Error::Conflict { .. }) if r.kind != RecordKind::KeyRing => {}
            // A key ring an interrupted run already wrote (anything else
            // appeared meanwhile: refused).
            Err(e @ Error::Conflict { .. }) => {
                if store.get(r.kind, &r.name)?.map(|en| en.value) != Some(r.value.clone()) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
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
    use crate::store::memory::MemoryStore;

    fn rec(kind: RecordKind, name: &str, value: &[u8]) -> SnapshotRecord {
        SnapshotRecord {
            kind,
            name: name.into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn an_interrupted_restore_is_resumed_and_a_foreign_store_refused() {
        let snapshot = vec![
            rec(RecordKind::KeyRing, "a", b"ring a"),
            rec(RecordKind::KeyRing, "b", b"ring b"),
            rec(RecordKind::Secret, "officer/x", b"totp"),
            rec(RecordKind::KeyRing, "c", b"ring c"),
        ];
        let store = MemoryStore::new();
        // the first run stopped after two records
        store.put(RecordKind::KeyRing, "a", None, b"ring a").unwrap();
        store.put(RecordKind::KeyRing, "b", None, b"ring b").unwrap();
        assert_eq!(restore_snapshot(&store, &snapshot, &mut |_, _| {}).unwrap(), 4);
        for (kind, name, value) in [
            (RecordKind::KeyRing, "a", &b"ring a"[..]),
            (RecordKind::KeyRing, "b", b"ring b"),
            (RecordKind::KeyRing, "c", b"ring c"),
            (RecordKind::Secret, "officer/x", b"totp"),
        ] {
            assert_eq!(store.get(kind, name).unwrap().unwrap().value, value);
        }
        // a store with a key ring of its own (or a different version of one)
        let other = MemoryStore::new();
        other.put(RecordKind::KeyRing, "a", None, b"another ring a").unwrap();
        let e = restore_snapshot(&other, &snapshot, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("empty store"), "{e}");
        assert!(
            other.get(RecordKind::KeyRing, "b").unwrap().is_none(),
            "nothing written"
        );
    }
}
