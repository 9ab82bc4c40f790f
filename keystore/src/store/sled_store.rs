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
use super::{check_cond, storage_key, Entry, KeyStore, Op, RecordKind, Revision};
use crate::Error;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A [`KeyStore`] in a sled database directory.
pub struct SledStore {
    db: sled::Db,
    /// The database directory, for fsyncing its files.
    path: PathBuf,
    /// Serialises the fsync step so concurrent writers share one sync
    /// rather than queueing many (group commit of the fsync).
    sync_lock: Mutex<()>,
    /// Whether every write is synced before it returns (always, except
    /// during a bulk load that ends with one explicit `sync`).
    sync_each_write: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SledStore({})", self.path.display())
    }
}

impl SledStore {
    /// Opens (or creates) the store at `path`. Fails if another process
    /// holds it open.
    pub fn open(path: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        }
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| Error::Backend(format!("cannot open store at {}: {e}", path.display())))?;
        let store = SledStore {
            db,
            path: path.to_owned(),
            sync_lock: Mutex::new(()),
            sync_each_write: std::sync::atomic::AtomicBool::new(true),
        };
        store.sync()?;
        Ok(store)
    }

    /// DANGER: for bulk loads only (benchmark seeding, restore tooling):
    /// writes stop being durable when they return, until the caller's own
    /// final [`KeyStore::sync`]. Breaks the durability contract meanwhile.
    pub fn danger_unsynced_writes(&self, on: bool) {
        self.sync_each_write.store(!on, std::sync::atomic::Ordering::SeqCst);
    }

    fn write_done(&self) -> Result<(), Error> {
        if self.sync_each_write.load(std::sync::atomic::Ordering::SeqCst) {
            self.sync()
        } else {
            Ok(())
        }
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
        match self.db.get(storage_key(kind, name))? {
            None => Ok(None),
            Some(raw) => Self::decode(kind, name, &raw).map(Some),
        }
    }

    fn put(&self, kind: RecordKind, name: &str, expected: Option<Revision>, value: &[u8]) -> Result<Revision, Error> {
        let key = storage_key(kind, name);
        let current = self.db.get(&key)?;
        let (old, next) = match (current, expected) {
            (None, None) => (None, 1),
            (Some(_), None) => {
                return Err(Error::Conflict {
                    kind,
                    name: name.into(),
                })
            }
            (None, Some(_)) => {
                return Err(Error::NotFound {
                    kind,
                    name: name.into(),
                })
            }
            (Some(raw), Some(exp)) => {
                let e = Self::decode(kind, name, &raw)?;
                if e.revision != exp {
                    return Err(Error::Conflict {
                        kind,
                        name: name.into(),
                    });
                }
                (Some(raw), exp.0 + 1)
            }
        };
        match self.db.compare_and_swap(&key, old, Some(Self::encode(next, value)))? {
            Ok(()) => {
                self.write_done()?;
                Ok(Revision(next))
            }
            Err(_) => Err(Error::Conflict {
                kind,
                name: name.into(),
            }),
        }
    }

    fn delete(&self, kind: RecordKind, name: &str, expected: Revision) -> Result<(), Error> {
        let key = storage_key(kind, name);
        let Some(raw) = self.db.get(&key)? else {
            return Err(Error::NotFound {
                kind,
                name: name.into(),
            });
        };
        if Self::decode(kind, name, &raw)?.revision != expected {
            return Err(Error::Conflict {
                kind,
                name: name.into(),
            });
        }
        match self.db.compare_and_swap(&key, Some(raw), None::<Vec<u8>>)? {
            Ok(()) => self.sync(),
            Err(_) => Err(Error::Conflict {
                kind,
                name: name.into(),
            }),
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
        for item in self.db.range(start..) {
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
        for item in self.db.scan_prefix([kind.tag()]) {
            let (k, v) = item?;
            let name = Self::name_of(&k).unwrap_or_default();
            f(&name, Self::decode(kind, &name, &v)?)?;
        }
        Ok(())
    }

    fn apply(&self, ops: &[Op<'_>]) -> Result<Vec<Option<Revision>>, Error> {
        use sled::transaction::{ConflictableTransactionError as Cte, TransactionError};
        // A sled transaction is one atomic batch in the log: after a crash
        // recovery finds all of it or none of it.
        let result = self.db.transaction(|tx| {
            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                let key = storage_key(op.kind, op.name);
                let current = match tx.get(&key)? {
                    None => None,
                    Some(raw) => Some(Self::decode(op.kind, op.name, &raw).map_err(Cte::Abort)?.revision.0),
                };
                let rev = check_cond(op.kind, op.name, op.cond, current).map_err(Cte::Abort)?;
                match op.value {
                    Some(v) => {
                        tx.insert(key, Self::encode(rev, v))?;
                        out.push(Some(Revision(rev)));
                    }
                    None => {
                        tx.remove(key)?;
                        out.push(None);
                    }
                }
            }
            Ok(out)
        });
        match result {
            Ok(out) => {
                self.write_done()?;
                Ok(out)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    fn sync(&self) -> Result<(), Error> {
        let _guard = self
            .sync_lock
            .lock()
            .map_err(|_| Error::Backend("sync lock poisoned".into()))?;
        self.db.flush()?;
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
}
