//! [`RingStore`]: key rings sealed under the master key, stored in any
//! [`KeyStore`] behind the integrity manifest ([`CheckedStore`]), changed
//! only by compare-and-swap.
//!
//! Opening a store migrates it from the format-1 code: the manifest is
//! built, then every format-1 record is re-sealed in format 2 (resumed at
//! the next open if interrupted). A destruction writes the ring and its
//! tombstone (the versions ever destroyed) in one batch, so a restore can
//! keep destroyed versions destroyed even when the ring record is gone.
use crate::error::Error;
use crate::keyring::{KeyRing, VersionState};
use crate::manifest::{CheckedStore, COVERED};
use crate::name::KeyName;
use crate::seal::{Sealer, FORMAT_V1};
use crate::store::{Cond, KeyStore, Op, RecordKind};
use std::sync::Arc;

/// How often a conflicting update is retried before giving up.
const MAX_CAS_RETRIES: usize = 16;

/// The name of the metadata record that proves the master key fits.
const STORE_MARKER: &str = "store";

/// Prefix of the metadata record listing a ring's destroyed versions.
const TOMBSTONE_PREFIX: &str = "tomb:";
const TOMBSTONE_V1: u8 = 1;

/// Typed, sealed access to key rings.
pub struct RingStore {
    checked: Arc<CheckedStore>,
    /// The same store as `checked`, as the trait object callers share.
    store: Arc<dyn KeyStore>,
    sealer: Arc<Sealer>,
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

fn tombstone_name(ring: &str) -> String {
    format!("{TOMBSTONE_PREFIX}{ring}")
}

fn encode_tombstone(versions: &std::collections::BTreeSet<u32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + 4 * versions.len());
    out.push(TOMBSTONE_V1);
    out.extend_from_slice(&(versions.len() as u32).to_be_bytes());
    for v in versions {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

fn decode_tombstone(name: &str, plain: &[u8]) -> Result<std::collections::BTreeSet<u32>, Error> {
    let corrupt = || Error::Corrupt {
        kind: RecordKind::Meta,
        name: name.to_owned(),
        reason: "tombstone does not decode",
    };
    let (&format, rest) = plain.split_first().ok_or_else(corrupt)?;
    if format != TOMBSTONE_V1 || rest.len() < 4 || (rest.len() - 4) % 4 != 0 {
        return Err(corrupt());
    }
    Ok(rest
        .chunks_exact(4)
        .skip(1)
        .filter_map(|c| c.try_into().ok().map(u32::from_be_bytes))
        .collect())
}

fn destroyed(ring: &KeyRing) -> std::collections::BTreeSet<u32> {
    ring.versions
        .iter()
        .filter(|v| v.state == VersionState::Destroyed)
        .map(|v| v.version)
        .collect()
}

impl RingStore {
    /// Wraps a store: opens (or builds) its integrity manifest, checks
    /// (or, for an empty store, writes) a sealed marker record so that a
    /// wrong master key is reported at once, and migrates format-1
    /// records.
    pub fn open(store: Arc<dyn KeyStore>, sealer: Sealer) -> Result<Self, Error> {
        let sealer = Arc::new(sealer);
        // The marker first, on the raw store: a wrong key must read as
        // such, not as a damaged manifest.
        if let Some(entry) = store.get(RecordKind::Meta, STORE_MARKER)? {
            sealer.open(RecordKind::Meta, STORE_MARKER, &entry.value).map_err(|_| {
                Error::MasterKey(
                    "the master key does not open this store (wrong key, or the store marker is corrupt)".into(),
                )
            })?;
        }
        let t = std::time::Instant::now();
        let checked = Arc::new(CheckedStore::open(store, sealer.clone())?);
        tracing::info!(ms = t.elapsed().as_millis() as u64, "integrity manifest opened");
        crate::failpoints::kill_point(crate::failpoints::MANIFEST_OPEN);
        if checked.get(RecordKind::Meta, STORE_MARKER)?.is_none() {
            let sealed = sealer.seal(RecordKind::Meta, STORE_MARKER, b"kmsd store v1")?;
            match checked.put(RecordKind::Meta, STORE_MARKER, None, &sealed) {
                Ok(_) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let rings = RingStore {
            store: checked.clone(),
            checked,
            sealer,
        };
        let t = std::time::Instant::now();
        rings.migrate()?;
        tracing::info!(ms = t.elapsed().as_millis() as u64, "format-1 migration checked");
        Ok(rings)
    }

    /// Re-seals every format-1 record in format 2 (and writes the
    /// tombstones of rings with destroyed versions). Records that fail
    /// their check are left alone (they are reported when read).
    fn migrate(&self) -> Result<(), Error> {
        let mut old = Vec::new();
        for kind in COVERED {
            self.checked.for_each_checked(kind, &mut |name, r| {
                if let Ok(e) = r {
                    if e.value.first() == Some(&FORMAT_V1) {
                        old.push((kind, name.to_owned(), e));
                    }
                }
            })?;
        }
        let n = old.len();
        for (kind, name, entry) in old {
            let plain = self.sealer.open(kind, &name, &entry.value)?;
            let sealed = self.sealer.seal(kind, &name, &plain)?;
            let mut ops = vec![Op {
                kind,
                name: &name,
                cond: Cond::At(entry.revision),
                value: Some(&sealed),
            }];
            let tomb_name = tombstone_name(&name);
            let mut tomb = None;
            if kind == RecordKind::KeyRing {
                let ring = KeyRing::decode(&KeyName::parse(&name)?, &plain, entry.revision)?;
                let gone = destroyed(&ring);
                if !gone.is_empty() && self.checked.get(RecordKind::Meta, &tomb_name)?.is_none() {
                    tomb = Some(
                        self.sealer
                            .seal(RecordKind::Meta, &tomb_name, &encode_tombstone(&gone))?,
                    );
                }
            }
            if let Some(t) = &tomb {
                ops.push(Op {
                    kind: RecordKind::Meta,
                    name: &tomb_name,
                    cond: Cond::Absent,
                    value: Some(t),
                });
            }
            match self.checked.apply(&ops) {
                Ok(_) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if n > 0 {
            tracing::info!(records = n, "format-1 records re-sealed in format 2");
        }
        Ok(())
    }

    /// The sealer (for other sealed records).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The store, behind its integrity manifest: every read is checked,
    /// every write updates the manifest. Other sealed records (secrets)
    /// go through it too.
    pub fn raw(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The store with its manifest-specific calls.
    pub fn checked(&self) -> &Arc<CheckedStore> {
        &self.checked
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

    /// The versions of ring `name` ever destroyed (from its tombstone,
    /// which outlives the ring record).
    pub fn tombstone(&self, name: &str) -> Result<std::collections::BTreeSet<u32>, Error> {
        let tomb_name = tombstone_name(name);
        match self.store.get(RecordKind::Meta, &tomb_name)? {
            None => Ok(Default::default()),
            Some(e) => decode_tombstone(&tomb_name, &self.sealer.open(RecordKind::Meta, &tomb_name, &e.value)?),
        }
    }

    /// Reads, changes with `f`, and writes back a ring, retrying on
    /// conflicting concurrent writes. `f` may run more than once; if it
    /// fails nothing is written. A change that destroys versions writes
    /// the ring's tombstone in the same batch.
    pub fn update<T>(
        &self,
        name: &KeyName,
        f: impl FnMut(&mut KeyRing) -> Result<T, Error>,
    ) -> Result<(KeyRing, T), Error> {
        self.update_fenced(name, None, f)
    }

    /// [`RingStore::update`] whose write (ring and tombstone) also needs
    /// `fence` to hold ([`KeyStore::apply_fenced`]): `Error::Fenced`, never
    /// retried, once it does not. The scheduler's writes on a shared store.
    pub fn update_fenced<T>(
        &self,
        name: &KeyName,
        fence: Option<crate::store::Fence<'_>>,
        mut f: impl FnMut(&mut KeyRing) -> Result<T, Error>,
    ) -> Result<(KeyRing, T), Error> {
        for _ in 0..MAX_CAS_RETRIES {
            let mut ring = self.get(name)?.ok_or_else(|| Error::NotFound {
                kind: RecordKind::KeyRing,
                name: name.to_string(),
            })?;
            let before = destroyed(&ring);
            let out = f(&mut ring)?;
            let after = destroyed(&ring);
            let sealed = self.sealer.seal(RecordKind::KeyRing, name.as_str(), &ring.encode())?;
            let cond = match ring.revision {
                Some(r) => Cond::At(r),
                None => Cond::Absent,
            };
            let mut ops = vec![Op {
                kind: RecordKind::KeyRing,
                name: name.as_str(),
                cond,
                value: Some(&sealed),
            }];
            let tomb_name = tombstone_name(name.as_str());
            let tomb_sealed;
            if !after.is_subset(&before) {
                let tomb_name_ref = &tomb_name;
                let (tomb_cond, mut gone) = match self.store.get(RecordKind::Meta, tomb_name_ref)? {
                    None => (Cond::Absent, Default::default()),
                    Some(e) => (
                        Cond::At(e.revision),
                        decode_tombstone(
                            tomb_name_ref,
                            &self.sealer.open(RecordKind::Meta, tomb_name_ref, &e.value)?,
                        )?,
                    ),
                };
                gone.extend(after.iter().copied());
                tomb_sealed = self
                    .sealer
                    .seal(RecordKind::Meta, tomb_name_ref, &encode_tombstone(&gone))?;
                ops.push(Op {
                    kind: RecordKind::Meta,
                    name: tomb_name_ref,
                    cond: tomb_cond,
                    value: Some(&tomb_sealed),
                });
            }
            match self.store.apply_fenced(fence, &ops) {
                Ok(revs) => {
                    ring.revision = revs.first().copied().flatten();
                    if ops.len() > 1 {
                        // A version was destroyed: its material must not
                        // linger in the backend's files. The destruction
                        // itself is durable either way.
                        if let Err(e) = self.store.reclaim() {
                            tracing::error!(key = %name, error = %e, "reclaiming the store's old records after a destruction failed: destroyed material may remain in its files");
                        }
                    }
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
        self.checked.for_each_checked(RecordKind::KeyRing, &mut |name, entry| {
            let ring = entry.and_then(|entry| {
                let n = KeyName::parse(name)?;
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
        })?;
        Ok(failures)
    }
}
