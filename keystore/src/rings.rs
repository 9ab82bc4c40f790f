//! [`RingStore`]: key rings sealed under the master key, stored in any
//! [`KeyStore`], changed only by compare-and-swap.
use crate::error::Error;
use crate::keyring::KeyRing;
use crate::name::KeyName;
use crate::seal::Sealer;
use crate::store::{KeyStore, RecordKind};
use std::sync::Arc;

/// How often a conflicting update is retried before giving up.
const MAX_CAS_RETRIES: usize = 16;

/// The name of the metadata record that proves the master key fits.
const STORE_MARKER: &str = "store";

/// Typed, sealed access to key rings.
pub struct RingStore {
    store: Arc<dyn KeyStore>,
    sealer: Sealer,
}

impl std::fmt::Debug for RingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RingStore({:?})", self.sealer)
    }
}

/// A ring that failed to load at start-up (the others still load).
#[derive(Debug)]
pub struct LoadFailure {
    /// The record name.
    pub name: String,
    /// Why.
    pub error: Error,
}

impl RingStore {
    /// Wraps a store. Checks (or, for an empty store, writes) a sealed
    /// marker record so that a wrong master key is reported at once.
    pub fn open(store: Arc<dyn KeyStore>, sealer: Sealer) -> Result<Self, Error> {
        match store.get(RecordKind::Meta, STORE_MARKER)? {
            Some(entry) => {
                sealer.open(RecordKind::Meta, STORE_MARKER, &entry.value).map_err(|_| {
                    Error::MasterKey(
                        "the master key does not open this store (wrong key, or the store marker is corrupt)".into(),
                    )
                })?;
            }
            None => {
                let sealed = sealer.seal(RecordKind::Meta, STORE_MARKER, b"kmsd store v1")?;
                match store.put(RecordKind::Meta, STORE_MARKER, None, &sealed) {
                    Ok(_) | Err(Error::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(RingStore { store, sealer })
    }

    /// The sealer (for other sealed records).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The raw store.
    pub fn raw(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// Stores a new ring; `Conflict` if the name is taken.
    pub fn create(&self, mut ring: KeyRing) -> Result<KeyRing, Error> {
        let sealed = self
            .sealer
            .seal(RecordKind::KeyRing, ring.name.as_str(), &ring.encode())?;
        let rev = self.store.put(RecordKind::KeyRing, ring.name.as_str(), None, &sealed)?;
        ring.revision = Some(rev);
        Ok(ring)
    }

    /// Reads a ring.
    pub fn get(&self, name: &KeyName) -> Result<Option<KeyRing>, Error> {
        let Some(entry) = self.store.get(RecordKind::KeyRing, name.as_str())? else {
            return Ok(None);
        };
        let plain = self.sealer.open(RecordKind::KeyRing, name.as_str(), &entry.value)?;
        KeyRing::decode(name, &plain, entry.revision).map(Some)
    }

    /// Reads, changes with `f`, and writes back a ring, retrying on
    /// conflicting concurrent writes. `f` may run more than once; if it
    /// fails nothing is written.
    pub fn update<T>(
        &self,
        name: &KeyName,
        mut f: impl FnMut(&mut KeyRing) -> Result<T, Error>,
    ) -> Result<(KeyRing, T), Error> {
        for _ in 0..MAX_CAS_RETRIES {
            let mut ring = self.get(name)?.ok_or_else(|| Error::NotFound {
                kind: RecordKind::KeyRing,
                name: name.to_string(),
            })?;
            let out = f(&mut ring)?;
            let sealed = self.sealer.seal(RecordKind::KeyRing, name.as_str(), &ring.encode())?;
            match self
                .store
                .put(RecordKind::KeyRing, name.as_str(), ring.revision, &sealed)
            {
                Ok(rev) => {
                    ring.revision = Some(rev);
                    return Ok((ring, out));
                }
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict {
            kind: RecordKind::KeyRing,
            name: name.to_string(),
        })
    }

    /// Lists ring names.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        self.store.list(RecordKind::KeyRing, prefix, after, limit)
    }

    /// Loads every ring, calling `f` for each good one; rings that fail to
    /// open or decode are returned, not fatal.
    pub fn load_all(&self, mut f: impl FnMut(KeyRing)) -> Result<Vec<LoadFailure>, Error> {
        let mut failures = Vec::new();
        self.store.for_each(RecordKind::KeyRing, &mut |name, entry| {
            let ring = KeyName::parse(name).and_then(|n| {
                let plain = self.sealer.open(RecordKind::KeyRing, name, &entry.value)?;
                KeyRing::decode(&n, &plain, entry.revision)
            });
            match ring {
                Ok(r) => f(r),
                Err(error) => failures.push(LoadFailure {
                    name: name.to_owned(),
                    error,
                }),
            }
            Ok(())
        })?;
        Ok(failures)
    }
}
