//! `kmsd migrate`: copy every stored record from one configuration's store
//! to another's (sled to etcd, etcd to sled, sled to sled), byte for byte.
//!
//! Records are copied sealed, as they are: nothing is ever unsealed, so
//! the destination holds exactly the source's bytes (key rings, metadata,
//! secrets and the integrity manifest) and opens under the same master key
//! with the same manifest. The copy works on the raw [`KeyStore`] trait, so
//! any backend pair works.
//!
//! Safety rails:
//! - both configurations must use the same master key (their key-check
//!   values, [`kmsd_keystore::Sealer::key_id_hex`], must match; at the end
//!   the destination is opened under the destination's key, which unseals
//!   its marker record and checks the whole manifest);
//! - no rekey in progress on either side (`previous_master_key` unset);
//! - the source is verified (marker and manifest) before anything is
//!   copied; a sled source held by a running daemon cannot be opened (sled
//!   takes an exclusive lock) and is refused; an etcd source cannot tell,
//!   so every node must be stopped first (the README says so);
//! - a non-empty destination is refused unless resuming: then a record
//!   already there with the same bytes is skipped and one with different
//!   bytes stops the run;
//! - the manifest's head is copied last: an interrupted copy has records
//!   without a head, which the daemon refuses to open (a deleted head), so
//!   a half-migrated store can never be served;
//! - at the end every source record is read back from the destination and
//!   compared, and the destination must hold nothing more.
use super::{text, Progress};
use crate::config::{Backend, Config};
use kmsd_keystore::store::{Cond, Op};
use kmsd_keystore::{KeyStore, RecordKind, RingStore};
use std::sync::Arc;

/// Every kind of record, in copy order: the manifest last, so its head
/// (copied after everything else) vouches only for a complete copy.
const KINDS: [RecordKind; 4] = [
    RecordKind::Meta,
    RecordKind::KeyRing,
    RecordKind::Secret,
    RecordKind::Manifest,
];

/// Records written per batch (one atomic, durable write each): within
/// etcd's default limits of 128 operations (`--max-txn-ops`) and 1.5 MiB
/// (`--max-request-bytes`) per transaction, with [`BATCH_BYTES`].
const BATCH: usize = 64;

/// A batch is written once its records hold this many bytes.
const BATCH_BYTES: usize = 512 * 1024;

/// What a completed migration did.
#[derive(Debug)]
pub struct Migrated {
    /// Records written by this run.
    pub copied: u64,
    /// Records already at the destination with the same bytes (a resumed run).
    pub skipped: u64,
    /// Records the source and the destination both hold, compared byte for byte.
    pub verified: u64,
    /// The source (backend and place).
    pub from: String,
    /// The destination.
    pub to: String,
    /// The master key's public id (hex).
    pub key_id: String,
}

impl std::fmt::Display for Migrated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "migrate complete: {} records copied, {} already there, {} verified byte for byte (master key id {}).",
            self.copied, self.skipped, self.verified, self.key_id
        )?;
        write!(
            f,
            "From {} to {}. Serve from the destination's configuration; keep the source until it does.",
            self.from, self.to
        )
    }
}

/// Copies every record of `from`'s store into `to`'s (see the module
/// documentation for what is checked).
pub fn migrate(from: &Config, to: &Config, resume: bool, progress: Progress<'_>) -> Result<Migrated, String> {
    if same_store(from, to) {
        return Err(format!(
            "--from and --to name the same store ({}): nothing to migrate",
            from.store.describe()
        ));
    }
    for (side, cfg) in [("source", from), ("destination", to)] {
        if cfg.store.previous_master_key.is_some() {
            return Err(format!(
                "the {side} configuration sets store.previous_master_key: finish the rekey (kmsd rekey) first"
            ));
        }
    }
    let src_sealer = crate::server::sealer(from).map_err(text)?;
    let dst_sealer = crate::server::sealer(to).map_err(text)?;
    let key_id = src_sealer.key_id_hex();
    if key_id != dst_sealer.key_id_hex() {
        return Err(format!(
            "the two configurations use different master keys (key id {} in --from, {} in --to): the records \
             are copied sealed and would not open at the destination (use kmsd rekey, before or after)",
            key_id,
            dst_sealer.key_id_hex()
        ));
    }
    let src = open_side(from, "source")?;
    // The source must be what a daemon would serve: its marker opens under
    // the key and its manifest is whole.
    RingStore::open(src.clone(), src_sealer).map_err(|e| format!("source store: {e}"))?;
    let dst = open_side(to, "destination")?;
    let present = count(dst.as_ref()).map_err(|e| format!("destination store: {e}"))?;
    if present > 0 && !resume {
        return Err(format!(
            "the destination store ({}) already holds {present} records: refusing to mix stores (--resume \
             continues an interrupted migration into it)",
            to.store.describe()
        ));
    }
    let (copied, skipped) = copy_records(src.as_ref(), dst.as_ref(), progress)?;
    let verified = verify_copy(src.as_ref(), dst.as_ref())?;
    // The proof the destination serves: its marker opens under the
    // destination's key and every manifest entry matches its record.
    let rings = RingStore::open(dst.clone(), dst_sealer)
        .map_err(|e| format!("the destination does not open after the copy: {e}"))?;
    let failures = rings.load_all(|_| {}).map_err(|e| format!("destination store: {e}"))?;
    if let Some(f) = failures.first() {
        return Err(format!(
            "the destination does not load after the copy: {} key ring(s) fail, first {f:?}",
            failures.len()
        ));
    }
    dst.sync().map_err(|e| format!("destination store: {e}"))?;
    Ok(Migrated {
        copied,
        skipped,
        verified,
        from: from.store.describe(),
        to: to.store.describe(),
        key_id,
    })
}

/// Whether two configurations name the same store (copying a store onto
/// itself would skip every record, and sled's lock is per process).
fn same_store(a: &Config, b: &Config) -> bool {
    match (a.store.backend, b.store.backend) {
        (Backend::Sled, Backend::Sled) => match (a.store.sled_path(), b.store.sled_path()) {
            (Ok(x), Ok(y)) => canonical(x) == canonical(y),
            _ => false,
        },
        (Backend::Etcd, Backend::Etcd) => match (&a.store.etcd, &b.store.etcd) {
            (Some(x), Some(y)) => x.prefix() == y.prefix() && x.endpoints.iter().any(|e| y.endpoints.contains(e)),
            _ => false,
        },
        _ => false,
    }
}

/// `p` with its existing part resolved (the store directory may not exist
/// yet).
fn canonical(p: &std::path::Path) -> std::path::PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent().and_then(|d| d.canonicalize().ok()), p.file_name()) {
        (Some(d), Some(f)) => d.join(f),
        _ => p.to_owned(),
    }
}

/// Opens one side's raw store, saying which side failed and, for a sled
/// store another process holds ([`kmsd_keystore::Error::Locked`]), that a
/// daemon is probably serving it.
fn open_side(cfg: &Config, side: &str) -> Result<Arc<dyn KeyStore>, String> {
    if cfg.store.backend == Backend::Sled {
        let path = cfg
            .store
            .sled_path()
            .map_err(|e| format!("{side} store: key store: {e}"))?;
        return match kmsd_keystore::SledStore::open(path) {
            Ok(s) => Ok(Arc::new(s)),
            Err(e @ kmsd_keystore::Error::Locked { .. }) => Err(format!(
                "{side} store {}: another process holds it (is kmsd serving it? stop it first): {e}",
                cfg.store.describe()
            )),
            Err(e) => Err(format!("{side} store: key store: {e}")),
        };
    }
    crate::server::open_store(cfg).map_err(|e| format!("{side} store: {e}"))
}

/// Records of every kind in `store`.
pub fn count(store: &dyn KeyStore) -> Result<u64, kmsd_keystore::Error> {
    let mut n = 0u64;
    for kind in KINDS {
        store.for_each(kind, &mut |_, _| {
            n += 1;
            Ok(())
        })?;
    }
    Ok(n)
}

/// Copies every record of `src` to `dst`, sealed bytes as they are, in
/// batches of [`BATCH`] records or [`BATCH_BYTES`]; the manifest's head (`#`-names of the manifest
/// kind) last. A record already at `dst` with the same bytes is skipped;
/// with different bytes the copy stops. Returns (copied, skipped).
pub fn copy_records(src: &dyn KeyStore, dst: &dyn KeyStore, progress: Progress<'_>) -> Result<(u64, u64), String> {
    let total = count(src).map_err(|e| format!("source store: {e}"))?;
    let (mut copied, mut skipped) = (0u64, 0u64);
    progress(0, total);
    let mut deferred: Vec<(String, Vec<u8>)> = Vec::new();
    for kind in KINDS {
        let mut batch: Vec<(String, Vec<u8>)> = Vec::with_capacity(BATCH);
        let mut batch_bytes = 0usize;
        let mut failure: Option<String> = None;
        let mut flush = |batch: &mut Vec<(String, Vec<u8>)>, copied: &mut u64, skipped: &mut u64| {
            let (c, s) = write_batch(dst, kind, batch)?;
            *copied += c;
            *skipped += s;
            batch.clear();
            progress(*copied + *skipped, total);
            Ok::<(), String>(())
        };
        let walked = src.for_each(kind, &mut |name, entry| {
            if kind == RecordKind::Manifest && name.starts_with('#') {
                deferred.push((name.to_owned(), entry.value));
                return Ok(());
            }
            batch_bytes += entry.value.len();
            batch.push((name.to_owned(), entry.value));
            if batch.len() >= BATCH || batch_bytes >= BATCH_BYTES {
                batch_bytes = 0;
                if let Err(e) = flush(&mut batch, &mut copied, &mut skipped) {
                    failure = Some(e);
                    return Err(kmsd_keystore::Error::Backend("copy stopped".into()));
                }
            }
            Ok(())
        });
        if let Some(e) = failure {
            return Err(e);
        }
        walked.map_err(|e| format!("source store: {e}"))?;
        if kind == RecordKind::Manifest {
            batch.append(&mut deferred);
        }
        flush(&mut batch, &mut copied, &mut skipped)?;
    }
    Ok((copied, skipped))
}

/// Writes one batch: records absent at `dst` in one atomic write; records
/// present must hold the same bytes. Returns (copied, skipped).
fn write_batch(dst: &dyn KeyStore, kind: RecordKind, batch: &[(String, Vec<u8>)]) -> Result<(u64, u64), String> {
    let mut ops = Vec::with_capacity(batch.len());
    for (name, value) in batch {
        match dst.get(kind, name).map_err(|e| format!("destination store: {e}"))? {
            Some(e) if e.value == *value => {}
            Some(_) => {
                return Err(format!(
                    "the destination already holds {kind} {name:?} with different bytes: it is not an \
                     interrupted copy of this source (start again with an empty destination)"
                ))
            }
            None => ops.push(Op {
                kind,
                name,
                cond: Cond::Absent,
                value: Some(value),
            }),
        }
    }
    if !ops.is_empty() {
        dst.apply(&ops).map_err(|e| format!("destination store: {e}"))?;
    }
    let copied = ops.len() as u64;
    Ok((copied, batch.len() as u64 - copied))
}

/// Checks that `dst` holds every record of `src` with the same bytes, and
/// nothing else. Returns the number of records compared.
pub fn verify_copy(src: &dyn KeyStore, dst: &dyn KeyStore) -> Result<u64, String> {
    let mut n = 0u64;
    for kind in KINDS {
        let mut failure = None;
        let walked = src.for_each(kind, &mut |name, entry| {
            match dst.get(kind, name) {
                Ok(Some(d)) if d.value == entry.value => n += 1,
                Ok(Some(_)) => failure = Some(format!("verify: {kind} {name:?} differs at the destination")),
                Ok(None) => failure = Some(format!("verify: {kind} {name:?} is missing at the destination")),
                Err(e) => failure = Some(format!("verify: destination store: {e}")),
            }
            match failure {
                Some(_) => Err(kmsd_keystore::Error::Backend("verify stopped".into())),
                None => Ok(()),
            }
        });
        if let Some(f) = failure {
            return Err(f);
        }
        walked.map_err(|e| format!("verify: source store: {e}"))?;
    }
    let at_dst = count(dst).map_err(|e| format!("verify: destination store: {e}"))?;
    if at_dst != n {
        return Err(format!(
            "verify: the destination holds {at_dst} records, the source {n}: it held records of another store"
        ));
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kmsd_keystore::MemoryStore;

    fn put(s: &dyn KeyStore, kind: RecordKind, name: &str, v: &[u8]) {
        s.put(kind, name, None, v).unwrap();
    }

    #[test]
    fn copies_every_kind_byte_for_byte_and_resumes() {
        let src = MemoryStore::new();
        for i in 0..600 {
            put(&src, RecordKind::KeyRing, &format!("k{i:04}"), &[i as u8; 40]);
        }
        put(&src, RecordKind::Meta, "store", b"m");
        put(&src, RecordKind::Secret, "audit-key", b"s");
        put(&src, RecordKind::Manifest, "#head", b"h");
        put(&src, RecordKind::Manifest, "kk0000", b"e");
        let dst = MemoryStore::new();
        // an interrupted earlier run: some records already there
        put(&dst, RecordKind::KeyRing, "k0001", &[1u8; 40]);
        let mut seen = Vec::new();
        let (copied, skipped) = copy_records(&src, &dst, &mut |d, t| seen.push((d, t))).unwrap();
        assert_eq!((copied, skipped), (603, 1));
        assert_eq!(seen.last(), Some(&(604, 604)));
        assert_eq!(verify_copy(&src, &dst).unwrap(), 604);
        // again: everything skipped
        assert_eq!(copy_records(&src, &dst, &mut |_, _| {}).unwrap(), (0, 604));
    }

    #[test]
    fn different_bytes_or_extra_records_at_the_destination_stop_it() {
        let src = MemoryStore::new();
        put(&src, RecordKind::KeyRing, "a", b"1");
        let dst = MemoryStore::new();
        put(&dst, RecordKind::KeyRing, "a", b"2");
        let e = copy_records(&src, &dst, &mut |_, _| {}).unwrap_err();
        assert!(e.contains("key ring \"a\" with different bytes"), "{e}");
        let dst = MemoryStore::new();
        put(&dst, RecordKind::Secret, "x", b"1");
        copy_records(&src, &dst, &mut |_, _| {}).unwrap();
        let e = verify_copy(&src, &dst).unwrap_err();
        assert!(e.contains("the destination holds 2 records, the source 1"), "{e}");
    }
}
