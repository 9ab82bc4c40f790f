//! The sled 0.34 backend.
//!
//! Each record is one sled entry: key = kind tag || name, value =
//! revision (u64 BE) || sealed bytes. Conditional writes use sled's
//! atomic `compare_and_swap` on the whole stored value.
//!
//! # Durability
//! sled's `flush` writes its buffers and then calls `sync_file_range`,
//! which neither flushes the drive's write cache nor persists file
//! metadata such as a grown file size: an acknowledged write could be lost
//! on power failure. So every write here is followed by [`SledStore::sync`]:
//! `flush`, then a full `fsync` (`File::sync_all`) of sled's log file,
//! of any blob files, and of the directories holding them. Only then is
//! the write acknowledged.
//!
//! # A write that fails
//! Failing before sled applies the batch (the write step), it changed
//! nothing and the store goes on. Failing after (the flush or the
//! `fsync`), the batch is undone in memory at once and the store refuses
//! every further write until it is opened again (`SledStore::undo`
//! says why): readers never see a write reported as failed, and after a
//! restart the store holds exactly the acknowledged writes. Reads go on
//! meanwhile. The faults are tested with the failpoints of
//! [`crate::failpoints`] (tests/faults.rs).
//!
//! A full disk is the exception: when sled's flush fails with `ENOSPC`
//! (or `EDQUOT`) the file system refused to allocate, so no written page
//! was lost; but sled then refuses every later flush until the database
//! is opened again. The batch is undone as above, and instead of waiting
//! for a restart the next write closes the database and opens it again
//! from disk ([`SledStore::reopen`]); while the disk stays full that fails
//! and the write is refused, and reads then wait for the same reopen.
//! Once space is freed writes succeed again without a restart
//! (tests/disk_full.rs).
use super::{check_cond, check_fence, storage_key, Entry, Fence, KeyStore, Op, RecordKind, Revision};
use crate::{failpoints, Error};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

fn live<'a>(g: &'a RwLockReadGuard<'_, Option<sled::Db>>) -> Result<&'a sled::Db, Error> {
    g.as_ref()
        .ok_or_else(|| Error::Backend("the store is closed (a reclaim failed half-way)".into()))
}

/// The compacted copy being built.
fn new_dir(path: &Path) -> PathBuf {
    path.with_extension("reclaim-new")
}

/// The old files, to be scrubbed.
fn old_dir(path: &Path) -> PathBuf {
    path.with_extension("reclaim-old")
}

/// Overwrites every file under `dir` with zeros in place (fsynced), then
/// removes the directory. On a file system that rewrites in place (ext4,
/// XFS) this leaves none of the old bytes on the device; see the module
/// documentation for where it does not hold.
fn scrub(dir: &Path) -> Result<(), Error> {
    use std::io::Write;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in rd.flatten() {
        let p = entry.path();
        if p.is_dir() {
            scrub(&p)?;
            continue;
        }
        let len = std::fs::metadata(&p)?.len();
        let mut f = std::fs::OpenOptions::new().write(true).open(&p)?;
        let zeros = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(zeros.get(..n).unwrap_or_default())?;
            left -= n as u64;
        }
        f.sync_all()?;
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

fn open_db(path: &Path) -> Result<sled::Db, Error> {
    sled::Config::new()
        .path(path)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| {
            if held_by_another(path) {
                locked(path)
            } else {
                Error::Backend(format!("cannot open store at {}: {e}", path.display()))
            }
        })
}

/// Whether another process holds the store's lock: sled locks its `db`
/// file exclusively (`flock` through fs2) while open. Asked before
/// anything is touched and again when sled's open fails, so that the
/// failure is typed ([`Error::Locked`]) without reading sled's message.
fn held_by_another(path: &Path) -> bool {
    use fs2::FileExt;
    let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(path.join("db")) else {
        return false;
    };
    match f.try_lock_exclusive() {
        // (free: released when `f` closes, before sled takes it)
        Ok(()) => false,
        Err(e) => e.kind() == fs2::lock_contended_error().kind(),
    }
}

fn locked(path: &Path) -> Error {
    Error::Locked {
        path: path.display().to_string(),
    }
}

/// Marks a compacted copy as complete (see [`SledStore::reclaim`]).
const RECLAIM_DONE: &str = "kmsd-reclaim-complete";

/// A [`KeyStore`] in a sled database directory.
pub struct SledStore {
    /// The database; `None` only while [`SledStore::reclaim`] swaps it
    /// for its compacted copy (under the write lock, never seen by a
    /// reader).
    db: RwLock<Option<sled::Db>>,
    /// The database directory, for fsyncing its files.
    path: PathBuf,
    /// Serialises the fsync step so concurrent writers share one sync
    /// rather than queueing many (group commit of the fsync).
    sync_lock: Mutex<()>,
    /// Whether every write is synced before it returns (always, except
    /// during a bulk load that ends with one explicit `sync`).
    sync_each_write: std::sync::atomic::AtomicBool,
    /// Set when a write's flush or `fsync` failed after sled had applied
    /// it: the store then refuses writes until it is opened again (see
    /// [`SledStore::undo`]).
    poisoned: std::sync::atomic::AtomicBool,
    /// Set by a flush that failed for want of space (`ENOSPC`, `EDQUOT`).
    out_of_space: std::sync::atomic::AtomicBool,
    /// A write failed for want of space: the database must be opened
    /// again from disk before the next write ([`SledStore::reopen`]).
    reopen_pending: std::sync::atomic::AtomicBool,
}

/// How to put one record of a batch back as it was.
struct Undo {
    key: Vec<u8>,
    /// The stored value before the batch (`None`: absent).
    before: Option<Vec<u8>>,
    /// The value the batch wrote (`None`: deleted).
    after: Option<Vec<u8>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SledStore({})", self.path.display())
    }
}

impl SledStore {
    /// Opens (or creates) the store at `path`. Fails with
    /// [`Error::Locked`] if another process holds it open.
    pub fn open(path: &Path) -> Result<Self, Error> {
        // A store another process serves is left alone: its reclaim
        // directories below are that process's work in progress.
        if held_by_another(path) {
            return Err(locked(path));
        }
        // Finish or undo an interrupted reclaim: a complete copy waiting
        // for its rename, a half-built copy, old files not yet scrubbed.
        if !path.exists() && new_dir(path).join(RECLAIM_DONE).exists() {
            std::fs::rename(new_dir(path), path)?;
        }
        if new_dir(path).exists() {
            scrub(&new_dir(path))?;
        }
        if old_dir(path).exists() {
            scrub(&old_dir(path))?;
        }
        let _ = std::fs::remove_file(path.join(RECLAIM_DONE));
        std::fs::create_dir_all(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        }
        let db = open_db(path)?;
        let store = SledStore {
            db: RwLock::new(Some(db)),
            path: path.to_owned(),
            sync_lock: Mutex::new(()),
            sync_each_write: std::sync::atomic::AtomicBool::new(true),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            out_of_space: std::sync::atomic::AtomicBool::new(false),
            reopen_pending: std::sync::atomic::AtomicBool::new(false),
        };
        failpoints::kill_point(failpoints::STORE_OPEN);
        store.sync()?;
        Ok(store)
    }

    /// DANGER: for bulk loads only (benchmark seeding, restore tooling):
    /// writes stop being durable when they return, until the caller's own
    /// final [`KeyStore::sync`]. Breaks the durability contract meanwhile.
    pub fn danger_unsynced_writes(&self, on: bool) {
        self.sync_each_write.store(!on, std::sync::atomic::Ordering::SeqCst);
    }

    fn read_db(&self) -> Result<RwLockReadGuard<'_, Option<sled::Db>>, Error> {
        let g = self
            .db
            .read()
            .map_err(|_| Error::Backend("store lock poisoned".into()))?;
        if g.is_none() && self.reopen_pending.load(std::sync::atomic::Ordering::SeqCst) {
            // a reopen after a full disk failed half-way: try again
            drop(g);
            self.reopen()?;
            return self.db.read().map_err(|_| Error::Backend("store lock poisoned".into()));
        }
        Ok(g)
    }

    /// After a write that failed for want of space (see the module
    /// documentation): closes the database and opens it again from disk,
    /// which clears sled's failed state and anything the failed batch left
    /// in memory. Fails while the disk is still full (sled's open writes);
    /// the database then stays closed and the next operation tries again.
    fn reopen(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        let mut guard = self
            .db
            .write()
            .map_err(|_| Error::Backend("store lock poisoned".into()))?;
        if !self.reopen_pending.load(Ordering::SeqCst) {
            return Ok(()); // another caller reopened it meanwhile
        }
        *guard = None; // closes it (its closing flush fails, or finds nothing new)
        *guard = Some(open_db(&self.path).map_err(|e| {
            Error::Backend(format!(
                "the disk was full and the store cannot be opened again yet ({e}); retried with the next call"
            ))
        })?);
        self.reopen_pending.store(false, Ordering::SeqCst);
        tracing::warn!(path = %self.path.display(), "store opened again from disk after a full disk; writes resume");
        Ok(())
    }

    /// Rewrites the database into a fresh directory and scrubs the old
    /// files: sled is log-structured and sled 0.34 offers no way to force
    /// the reclamation of a segment, so a superseded record (a ring still
    /// holding a since-destroyed version's material) would otherwise stay
    /// in the files until sled happened to reuse its segment.
    ///
    /// Every live entry is copied into `<store>.reclaim-new` and fsynced;
    /// the old database is closed; `<store>` is renamed to
    /// `<store>.reclaim-old` and the copy to `<store>`; the database is
    /// reopened; the old files are overwritten with zeros and removed.
    /// Readers and writers wait meanwhile (about 0.1 s for 2,000 key
    /// rings on a 2-core test machine, release build). A crash at any step is finished or undone by
    /// the next [`SledStore::open`].
    pub fn reclaim(&self) -> Result<(), Error> {
        let mut guard = self
            .db
            .write()
            .map_err(|_| Error::Backend("store lock poisoned".into()))?;
        self.writable()?;
        let Some(db) = guard.as_ref() else {
            return Err(Error::Backend("the store is closed (a reclaim failed half-way)".into()));
        };
        let (new, old) = (new_dir(&self.path), old_dir(&self.path));
        if new.exists() {
            scrub(&new)?;
        }
        {
            let copy = open_db(&new)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o700))?;
            }
            for item in db.iter() {
                let (k, v) = item?;
                copy.insert(k, v)?;
            }
            copy.flush()?;
            drop(copy);
            for f in ["db", "conf"] {
                Self::fsync_path(&new.join(f))?;
            }
            std::fs::write(new.join(RECLAIM_DONE), b"")?;
            Self::fsync_path(&new.join(RECLAIM_DONE))?;
            Self::fsync_path(&new)?;
        }
        db.flush()?;
        *guard = None; // closes the old database
        std::fs::rename(&self.path, &old)?;
        std::fs::rename(&new, &self.path)?;
        if let Some(parent) = self.path.parent() {
            Self::fsync_path(parent)?;
        }
        let _ = std::fs::remove_file(self.path.join(RECLAIM_DONE));
        *guard = Some(open_db(&self.path)?);
        drop(guard);
        scrub(&old)?;
        if let Some(parent) = self.path.parent() {
            Self::fsync_path(parent)?;
        }
        Ok(())
    }

    fn write_done(&self, names: &[&str]) -> Result<(), Error> {
        if self.sync_each_write.load(std::sync::atomic::Ordering::SeqCst) {
            self.sync_for(names)
        } else {
            Ok(())
        }
    }

    /// Refuses writes once a failed flush or `fsync` poisoned the store.
    fn writable(&self) -> Result<(), Error> {
        if self.poisoned.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Backend(
                "the store refuses writes since a write failed to reach the disk (flush or fsync error); \
                 restart kmsd once the disk is healthy"
                    .into(),
            ));
        }
        if self.reopen_pending.load(std::sync::atomic::Ordering::SeqCst) {
            self.reopen()?;
        }
        Ok(())
    }

    /// A batch sled applied in memory failed to become durable (its flush
    /// or `fsync` failed). Left alone it would be visible to readers and
    /// would reach the disk with the next flush: a write reported as
    /// failed would appear. So every record is put back as it was (unless
    /// a later write replaced it meanwhile) and the store is poisoned:
    /// after a failed `fsync` the kernel may have dropped the dirty pages
    /// and a later `fsync` that succeeds proves nothing about them, so no
    /// further write is acknowledged until the store is opened again
    /// (restart), when sled recovers whatever reached the disk: the state
    /// before the batch (the batch is one atomic log entry, and the undo
    /// is logged after it). Reads keep being served. Returns the error
    /// for the caller.
    fn undo(&self, undo: &[Undo], cause: Error) -> Error {
        use sled::transaction::ConflictableTransactionError as Cte;
        use std::sync::atomic::Ordering;
        // For want of space: nothing written was lost, the next write
        // reopens the store (module documentation); else poisoned.
        let full = self.out_of_space.swap(false, Ordering::SeqCst);
        if !full {
            self.poisoned.store(true, Ordering::SeqCst);
        }
        let reverted = self.read_db().and_then(|g| {
            live(&g)?
                .transaction(|tx| {
                    for u in undo {
                        if tx.get(&u.key)?.as_deref() != u.after.as_deref() {
                            continue; // replaced since: that write's own
                        }
                        match &u.before {
                            Some(v) => tx.insert(u.key.as_slice(), v.as_slice())?,
                            None => tx.remove(u.key.as_slice())?,
                        };
                    }
                    Ok::<(), Cte<Error>>(())
                })
                .map_err(|e| Error::Backend(format!("undoing a write that did not reach the disk: {e}")))
        });
        if full {
            self.reopen_pending.store(true, Ordering::SeqCst);
            if reverted.is_err() {
                // the batch is still in memory: close the database now (the
                // reopen fails while the disk is full; reads then wait for it)
                let _ = self.reopen();
            }
            tracing::error!(
                error = %cause,
                undone = reverted.is_ok(),
                "a store write failed: the disk is full; undone, writes resume once space is freed"
            );
            return Error::Backend(format!(
                "the disk is full: the write did not reach it and was undone ({cause}); \
                 writes resume once space is freed"
            ));
        }
        // Best effort: the undo on disk too, before a restart reads it.
        let synced = reverted.as_ref().ok().map(|()| self.sync_for(&[]));
        tracing::error!(
            error = %cause,
            undone = reverted.is_ok(),
            undo_synced = matches!(synced, Some(Ok(()))),
            "a store write failed to reach the disk: undone, and the store refuses writes until kmsd restarts"
        );
        Error::Backend(format!(
            "the write did not reach the disk and was undone ({cause}); \
             the store refuses writes until kmsd restarts"
        ))
    }

    fn decode(kind: RecordKind, name: &str, raw: &[u8]) -> Result<Entry, Error> {
        if raw.len() < 8 {
            return Err(Error::Corrupt {
                kind,
                name: name.to_owned(),
                reason: "stored value shorter than its revision",
            });
        }
        let (rev, value) = raw.split_at(8);
        let mut r = [0u8; 8];
        r.copy_from_slice(rev);
        Ok(Entry {
            revision: Revision(u64::from_be_bytes(r)),
            value: value.to_vec(),
        })
    }

    fn encode(rev: u64, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + value.len());
        v.extend_from_slice(&rev.to_be_bytes());
        v.extend_from_slice(value);
        v
    }

    fn name_of(key: &[u8]) -> Option<String> {
        std::str::from_utf8(key.get(1..)?).ok().map(str::to_owned)
    }

    /// [`KeyStore::sync`], for a batch writing `names` (the store
    /// failpoints can target it).
    fn sync_for(&self, names: &[&str]) -> Result<(), Error> {
        let _guard = self
            .sync_lock
            .lock()
            .map_err(|_| Error::Backend("sync lock poisoned".into()))?;
        failpoints::store_fault(failpoints::STORE_FLUSH, names)?;
        {
            let g = self.read_db()?;
            if let Err(e) = live(&g)?.flush() {
                if let sled::Error::Io(io) = &e {
                    use std::io::ErrorKind;
                    if matches!(io.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded) {
                        self.out_of_space.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                return Err(e.into());
            }
        }
        failpoints::store_fault(failpoints::STORE_FSYNC, names)?;
        Self::fsync_path(&self.path.join("db"))?;
        Self::fsync_path(&self.path.join("conf"))?;
        let blobs = self.path.join("blobs");
        if let Ok(rd) = std::fs::read_dir(&blobs) {
            for entry in rd.flatten() {
                Self::fsync_path(&entry.path())?;
            }
            Self::fsync_path(&blobs)?;
        }
        Self::fsync_path(&self.path)?;
        Ok(())
    }

    fn fsync_path(p: &Path) -> Result<(), Error> {
        match File::open(p) {
            Ok(f) => Ok(f.sync_all()?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl KeyStore for SledStore {
    fn get(&self, kind: RecordKind, name: &str) -> Result<Option<Entry>, Error> {
        let g = self.read_db()?;
        match live(&g)?.get(storage_key(kind, name))? {
            None => Ok(None),
            Some(raw) => Self::decode(kind, name, &raw).map(Some),
        }
    }

    fn list(&self, kind: RecordKind, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        let start = match after {
            Some(a) if a >= prefix => {
                let mut k = storage_key(kind, a);
                k.push(0); // strictly after `a`
                k
            }
            _ => storage_key(kind, prefix),
        };
        let mut out = Vec::new();
        let g = self.read_db()?;
        for item in live(&g)?.range(start..) {
            let (k, _) = item?;
            if k.first() != Some(&kind.tag()) {
                break;
            }
            let Some(n) = Self::name_of(&k) else { continue };
            if !n.starts_with(prefix) {
                break;
            }
            out.push(n);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn for_each(&self, kind: RecordKind, f: &mut dyn FnMut(&str, Entry) -> Result<(), Error>) -> Result<(), Error> {
        // Collected first: `f` may call back into the store.
        let mut all = Vec::new();
        {
            let g = self.read_db()?;
            for item in live(&g)?.scan_prefix([kind.tag()]) {
                let (k, v) = item?;
                let name = Self::name_of(&k).unwrap_or_default();
                all.push((name.clone(), Self::decode(kind, &name, &v)?));
            }
        }
        for (name, e) in all {
            f(&name, e)?;
        }
        Ok(())
    }

    fn apply_fenced(&self, fence: Option<Fence<'_>>, ops: &[Op<'_>]) -> Result<Vec<Option<Revision>>, Error> {
        use sled::transaction::{ConflictableTransactionError as Cte, TransactionError};
        let names: Vec<&str> = ops.iter().map(|o| o.name).collect();
        self.writable()?;
        failpoints::store_fault(failpoints::STORE_WRITE, &names)?;
        // A sled transaction is one atomic batch in the log: after a crash
        // recovery finds all of it or none of it.
        let g = self.read_db()?;
        let result = live(&g)?.transaction(|tx| {
            if let Some(f) = fence {
                let current = match tx.get(storage_key(f.kind, f.name))? {
                    None => None,
                    Some(raw) => Some(Self::decode(f.kind, f.name, &raw).map_err(Cte::Abort)?.revision),
                };
                check_fence(fence, current).map_err(Cte::Abort)?;
            }
            let mut out = Vec::with_capacity(ops.len());
            let mut undo = Vec::with_capacity(ops.len());
            for op in ops {
                let key = storage_key(op.kind, op.name);
                let before = tx.get(&key)?;
                let current = match &before {
                    None => None,
                    Some(raw) => Some(Self::decode(op.kind, op.name, raw).map_err(Cte::Abort)?.revision),
                };
                let rev = check_cond(op.kind, op.name, op.cond, current).map_err(Cte::Abort)?;
                let after = op.value.map(|v| Self::encode(rev.0, v));
                match &after {
                    Some(v) => {
                        tx.insert(key.clone(), v.clone())?;
                        out.push(Some(rev));
                    }
                    None => {
                        tx.remove(key.clone())?;
                        out.push(None);
                    }
                }
                undo.push(Undo {
                    key,
                    before: before.map(|b| b.to_vec()),
                    after,
                });
            }
            Ok((out, undo))
        });
        drop(g);
        match result {
            Ok((out, undo)) => match self.write_done(&names) {
                Ok(()) => Ok(out),
                Err(e) => Err(self.undo(&undo, e)),
            },
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    fn reclaim(&self) -> Result<(), Error> {
        SledStore::reclaim(self)
    }

    fn sync(&self) -> Result<(), Error> {
        self.sync_for(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store held open elsewhere is refused with the typed error, and
    /// its reclaim directories are left alone; once released it opens.
    #[test]
    fn a_store_held_open_elsewhere_is_locked_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let first = SledStore::open(&p).unwrap();
        first.put(RecordKind::KeyRing, "k", None, b"v").unwrap();
        // (sled's lock is an flock on the `db` file: a second open file
        // description conflicts with it, in this process as in another)
        std::fs::create_dir_all(new_dir(&p)).unwrap();
        match SledStore::open(&p) {
            Err(Error::Locked { path }) => assert_eq!(path, p.display().to_string()),
            other => panic!("expected Locked, got {other:?}"),
        }
        assert!(new_dir(&p).exists(), "the holder's work in progress is not touched");
        std::fs::remove_dir_all(new_dir(&p)).unwrap();
        drop(first);
        let again = SledStore::open(&p).unwrap();
        assert_eq!(again.get(RecordKind::KeyRing, "k").unwrap().unwrap().value, b"v");
    }
}
