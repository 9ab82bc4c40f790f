//! Key rings held in memory for the data path, and their administration.
//!
//! The data path (encrypt, decrypt) reads only the in-memory cache: a
//! sharded concurrent map from key name to an immutable, `Arc`-shared
//! snapshot of the ring. No store read, no global lock, and no work
//! proportional to the number of keys. Administrative changes go to the
//! store first (compare-and-swap, durable), and only then replace the
//! cached snapshot, so the cache never holds a version the store lacks.
//!
//! # Usage counting
//! Encryptions are counted per version with atomics. Counts are made
//! durable by *reserving* blocks (`limits.usage_reservation_block`,
//! default [`RESERVATION_BLOCK`]): before a version may perform encryption
//! number `n`, a reservation `>= n + 1` must be in the store. After a crash
//! the daemon resumes counting from the reserved total, so it may
//! over-count (by less than one and a half blocks: the next block is
//! reserved when half of the current one is left) but never under-count.
//! A version with `max_encryptions_per_version = L` performs at most `L`
//! encryptions; when the `L`-th is taken the key is rotated in the
//! background, and a caller that finds the limit reached rotates it first.
//!
//! Several nodes on one store (etcd) each count inside their own window
//! `[used, reserved)`: the stored `encryptions_reserved` is the cluster's
//! high-water mark, each reservation is a compare-and-swap of the ring
//! record that moves it by one block and hands this node exactly the
//! block it added (usage.rs), and installing a ring another node wrote
//! never widens a window. Windows are disjoint, so no version performs
//! more than its limit cluster-wide; what a node leaves unused in an
//! abandoned window is over-counted, never reused.
//!
//! Decryption counts and last-use times are kept in memory and persisted
//! by [`Rings::flush_usage`] (periodically and at shutdown): they are for
//! "is this version still used?" decisions, not for enforcement.
//!
//! # Layout
//! This file holds [`Rings`] (the cache, loading, installing snapshots,
//! `get`/`list`, statistics); `data` the data path (encrypt, decrypt,
//! tokenization keys); `usage` usage counting (reservation blocks, usage
//! rotation, `flush_usage`); `admin` create, rotate, policy changes,
//! `modify`, restore; `schedule` the deadlines and `run_due`;
//! `leadership` whether this node runs scheduled work, and its fence.
use crate::error::Error;
use dashmap::DashMap;
use kmsd_keystore::keyring::{KeyPurpose, RotationReason};
use kmsd_keystore::sign::SigningKey;
use kmsd_keystore::{Algorithm, Clock, KeyName, KeyRing, Material, Revision, RingStore, UnixTime, VersionState};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod admin;
mod data;
mod import;
mod leadership;
mod remote;
mod schedule;
mod signing;
mod usage;

pub use admin::{PolicyUpdate, MIN_ROTATION_PERIOD};
pub use data::{EncryptCall, Encrypted, DEFAULT_MAX_ROTATIONS_PER_CALL};
pub use import::NewKey;
pub use leadership::{Leadership, Observed, Term, LEADER_RECORD};
pub use remote::Freshness;
use schedule::Schedule;
pub use schedule::{DEFAULT_DESTRUCTION_WAIT, MIN_DESTRUCTION_WAIT};
pub use signing::{Public, Signed};
pub use usage::{Usage, RESERVATION_BLOCK};

/// Live usage counters of one version; shared by every snapshot of its
/// ring, so replacing a snapshot never resets them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Encryptions taken (including, after a restart, the whole reservation).
    used: AtomicU64,
    /// Encryptions durably reserved in the store.
    reserved: AtomicU64,
    /// Decryptions since creation (persisted periodically).
    decryptions: AtomicU64,
    /// Last encrypt or decrypt, Unix seconds (0 = never).
    last_used: AtomicI64,
    /// Whether decryptions/last_used changed since the last flush.
    dirty: AtomicBool,
    /// Whether a background reservation is under way.
    reserving: AtomicBool,
}

/// One version as the data path sees it.
struct CachedVersion {
    state: VersionState,
    /// AES and HMAC versions: the material; `None` once destroyed (and
    /// always for signing keys, which keep only `signer`).
    material: Option<Material>,
    /// Signing versions: the parsed private key, kept because parsing an
    /// RSA key per call is slow; `None` once destroyed. Shared by every
    /// snapshot of the ring (parsed once per version, not per change), and
    /// dropped with the last snapshot that holds the version's material.
    /// `ring`'s key pairs inside are not zeroized on drop (see
    /// `kmsd_keystore::sign`).
    signer: Option<Arc<SigningKey>>,
    counters: Arc<Counters>,
}

/// An immutable snapshot of a ring for the data path.
struct CachedRing {
    revision: Option<Revision>,
    /// The ring's algorithm (fixed at creation).
    algorithm: Algorithm,
    primary: u32,
    min_decryption_version: u32,
    max_encryptions: Option<u64>,
    /// What the ring is for.
    purpose: KeyPurpose,
    /// Whether the ring rotates by itself (a period or a usage limit)
    /// without `allow_token_rotation`: its tokens would silently change.
    breaks_tokens: bool,
    /// Index `v - 1` holds version `v`.
    versions: Vec<CachedVersion>,
}

impl CachedRing {
    fn version(&self, v: u32) -> Option<&CachedVersion> {
        self.versions.get((v as usize).checked_sub(1)?)
    }
}

/// The key rings: the in-memory cache plus the store behind it (what the
/// services share; "keys" is the gRPC service, `kmsd_keystore` the store).
pub struct Rings {
    store: RingStore,
    cache: DashMap<String, Arc<CachedRing>>,
    /// Rings whose stored record failed its integrity check at load: they
    /// answer DATA_LOSS (not NOT_FOUND) until repaired or restored.
    corrupt: DashMap<String, ()>,
    /// Per-ring locks serialising slow-path writes (reservations, usage
    /// rotations) so that concurrent callers do one write, not many.
    write_locks: DashMap<String, Arc<Mutex<()>>>,
    /// Scheduler deadlines: (time, name), and name → time.
    schedule: Mutex<Schedule>,
    /// Wakes the scheduler when an earlier deadline appears.
    pub schedule_changed: tokio::sync::Notify,
    clock: Arc<dyn Clock>,
    /// Dev mode relaxes minimum periods.
    dev_mode: bool,
    /// Rotations since start, by reason (manual, scheduled, usage).
    rotations: [AtomicU64; 3],
    /// Usage rotations one call may cause (`limits.max_rotations_per_call`).
    max_rotations_per_call: std::sync::atomic::AtomicU32,
    /// Encryptions reserved per durable write
    /// (`limits.usage_reservation_block`): what a crash may over-count,
    /// against one store write per block.
    reservation_block: AtomicU64,
    /// Negative cache of version look-ups: name → (how many versions the
    /// ring had, until when that answer holds). A ciphertext naming a
    /// version the cached ring lacks re-reads the ring from the store
    /// (another daemon sharing it may have rotated); without this, each of
    /// 10,000 items of one `DecryptBatch` naming version 4,000,000 forced
    /// a store read and unseal. One entry per existing ring (a missing ring
    /// fails before), dropped whenever the ring is installed again
    /// (creation, rotation, any change).
    absent: DashMap<String, (usize, UnixTime)>,
    /// Store reads caused by versions missing from the cache.
    miss_reads: AtomicU64,
    /// On a shared store (etcd): when the cache was last known current;
    /// the data path refuses past `max_staleness` (remote.rs). Unset: the
    /// only writer's cache, always current.
    freshness: std::sync::OnceLock<Arc<remote::Freshness>>,
    /// On a shared store (etcd): whether this node is the scheduler
    /// leader, and the fence of its scheduled writes (leadership.rs).
    /// Unset: the only writer, always scheduling, unfenced.
    leadership: std::sync::OnceLock<Arc<Leadership>>,
}

/// Counts for metrics and status.
#[derive(Debug, Clone, Default)]
pub struct KeyStats {
    /// Key rings.
    pub keys: u64,
    /// Versions by state, in `VersionState` order.
    pub versions_by_state: [u64; 5],
    /// Rotations since start: manual, scheduled, usage.
    pub rotations_by_reason: [u64; 3],
    /// Store reads caused by ciphertexts naming versions not in the cache.
    pub version_miss_reads: u64,
    /// Whether this node runs scheduled work now (always alone on sled).
    pub scheduler_leader: bool,
    /// Scheduled writes refused by their fence (another node leads).
    pub fenced_writes: u64,
}

impl std::fmt::Debug for Rings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rings({} rings)", self.cache.len())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Rings {
    /// Loads every ring from the store into memory. Rings whose records
    /// fail their integrity check are logged and remembered as corrupt;
    /// the rest serve.
    pub fn load(store: RingStore, clock: Arc<dyn Clock>, dev_mode: bool) -> Result<Self, Error> {
        let rings = Rings {
            store,
            cache: DashMap::new(),
            corrupt: DashMap::new(),
            write_locks: DashMap::new(),
            schedule: Mutex::new(Schedule::default()),
            schedule_changed: tokio::sync::Notify::new(),
            clock,
            dev_mode,
            rotations: Default::default(),
            max_rotations_per_call: std::sync::atomic::AtomicU32::new(DEFAULT_MAX_ROTATIONS_PER_CALL),
            reservation_block: AtomicU64::new(RESERVATION_BLOCK),
            absent: DashMap::new(),
            miss_reads: AtomicU64::new(0),
            freshness: std::sync::OnceLock::new(),
            leadership: std::sync::OnceLock::new(),
        };
        let failures = rings.store.load_all(|ring| {
            rings.install(&ring);
        })?;
        for f in failures {
            tracing::error!(key = %f.name, error = %f.error, "key ring not loaded");
            rings.corrupt.insert(f.name, ());
        }
        Ok(rings)
    }

    /// Sets how many usage rotations one call may cause.
    pub fn set_max_rotations_per_call(&self, n: u32) {
        self.max_rotations_per_call.store(n, Ordering::Relaxed);
    }

    /// Sets how many encryptions one durable reservation covers (at least 1).
    pub fn set_reservation_block(&self, n: u64) {
        self.reservation_block.store(n.max(1), Ordering::Relaxed);
    }

    fn block(&self) -> u64 {
        self.reservation_block.load(Ordering::Relaxed)
    }

    /// The injected clock.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// Whether dev mode is on.
    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// Number of rings in memory.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether no rings are loaded.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    fn cached(&self, name: &str) -> Result<Arc<CachedRing>, Error> {
        if let Some(r) = self.cache.get(name) {
            return Ok(r.value().clone());
        }
        // Validate before reporting, so a bad name is INVALID_ARGUMENT.
        KeyName::parse(name)?;
        if self.corrupt.contains_key(name) {
            return Err(Error::Corrupt(name.to_owned()));
        }
        Err(Error::KeyNotFound(name.to_owned()))
    }

    /// Re-reads one ring from the store into the cache (another daemon
    /// sharing the store may have rotated it). Only on a miss, never on
    /// the normal data path.
    fn refresh(&self, name: &str) -> Result<Arc<CachedRing>, Error> {
        let key = KeyName::parse(name)?;
        let ring = self
            .store
            .get(&key)?
            .ok_or_else(|| Error::KeyNotFound(name.to_owned()))?;
        Ok(self.install(&ring))
    }

    /// Replaces the cached snapshot (keeping live counters) and the
    /// scheduler's deadline for the ring.
    fn install(&self, ring: &KeyRing) -> Arc<CachedRing> {
        self.install_with(ring, None)
    }

    /// Installs a ring whose version `fresh` was just created by this
    /// process: its count starts at zero. Every other version first seen
    /// here starts at its durable reservation (it may have been used up to
    /// that before a crash).
    fn install_new(&self, ring: &KeyRing, fresh: u32) -> Arc<CachedRing> {
        self.install_with(ring, Some(fresh))
    }

    fn install_with(&self, ring: &KeyRing, fresh: Option<u32>) -> Arc<CachedRing> {
        let name = ring.name.to_string();
        let old = self.cache.get(&name).map(|e| e.value().clone());
        if let Some(old) = &old {
            if old.revision > ring.revision {
                return old.clone(); // never go back to an older revision
            }
        }
        let versions = ring
            .versions
            .iter()
            .map(|v| {
                let counters = old
                    .as_ref()
                    .and_then(|o| o.version(v.version))
                    .map(|cv| cv.counters.clone())
                    .unwrap_or_else(|| {
                        let used = if fresh == Some(v.version) {
                            0
                        } else {
                            v.encryptions_reserved
                        };
                        Arc::new(Counters {
                            used: AtomicU64::new(used),
                            reserved: AtomicU64::new(v.encryptions_reserved),
                            decryptions: AtomicU64::new(v.decryptions),
                            last_used: AtomicI64::new(v.last_used_at.unwrap_or(0)),
                            ..Counters::default()
                        })
                    });
                // An existing version's window is never widened here: the
                // stored reservation may include blocks other nodes
                // reserved (usage.rs); only `reserve` moves this node's.
                let (material, signer) = match &v.material {
                    None => (None, None),
                    Some(m) if ring.algorithm.is_signing() => {
                        let parsed = old
                            .as_ref()
                            .and_then(|o| o.version(v.version))
                            .and_then(|cv| cv.signer.clone())
                            .or_else(|| match SigningKey::parse(ring.algorithm, m) {
                                Ok(k) => Some(Arc::new(k)),
                                Err(e) => {
                                    tracing::error!(key = %name, version = v.version, error = %e, "signing key does not parse");
                                    None
                                }
                            });
                        (None, parsed)
                    }
                    Some(m) => (Some(m.duplicate()), None),
                };
                CachedVersion {
                    state: v.state,
                    material,
                    signer,
                    counters,
                }
            })
            .collect();
        let snap = Arc::new(CachedRing {
            revision: ring.revision,
            algorithm: ring.algorithm,
            primary: ring.primary,
            min_decryption_version: ring.policy.min_decryption_version,
            max_encryptions: ring.policy.max_encryptions_per_version,
            purpose: ring.purpose,
            breaks_tokens: (ring.policy.rotation_period_secs.is_some()
                || ring.policy.max_encryptions_per_version.is_some())
                && !ring.policy.allow_token_rotation,
            versions,
        });
        self.cache.insert(name.clone(), snap.clone());
        self.absent.remove(&name);
        self.corrupt.remove(&name);
        self.reschedule(&name, ring);
        snap
    }

    /// Counts for metrics and status (walks the cache; not for the data path).
    pub fn stats(&self) -> KeyStats {
        let mut s = KeyStats {
            keys: self.cache.len() as u64,
            ..KeyStats::default()
        };
        for r in self.cache.iter() {
            for v in &r.value().versions {
                let i = match v.state {
                    VersionState::Active => 0,
                    VersionState::DecryptOnly => 1,
                    VersionState::Disabled => 2,
                    VersionState::ScheduledForDestruction => 3,
                    VersionState::Destroyed => 4,
                };
                if let Some(n) = s.versions_by_state.get_mut(i) {
                    *n += 1;
                }
            }
        }
        for (out, c) in s.rotations_by_reason.iter_mut().zip(&self.rotations) {
            *out = c.load(Ordering::Relaxed);
        }
        s.version_miss_reads = self.miss_reads.load(Ordering::Relaxed);
        let lead = self.leadership.get();
        s.scheduler_leader = lead.is_none_or(|l| l.is_leader());
        s.fenced_writes = lead.map_or(0, |l| l.fenced_writes());
        s
    }

    fn count_rotation(&self, reason: RotationReason) {
        let i = match reason {
            RotationReason::Manual => 0,
            RotationReason::Scheduled => 1,
            RotationReason::Usage => 2,
            // (counted by the import path, not as a rotation)
            RotationReason::Import => return,
        };
        if let Some(c) = self.rotations.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn write_lock(&self, name: &str) -> Arc<Mutex<()>> {
        self.write_locks.entry(name.to_owned()).or_default().clone()
    }

    /// Reads a ring's metadata from the store, once a change of it under
    /// way (its write lock) has reached the cache as well: a caller that
    /// reads a version as DESTROYED or DISABLED never finds the data path
    /// still using it. (Only for keys in the cache, so that look-ups of
    /// arbitrary names add no locks.)
    pub fn get(&self, name: &str) -> Result<KeyRing, Error> {
        let key = KeyName::parse(name)?;
        let wl = self.cache.contains_key(name).then(|| self.write_lock(name));
        let _g = wl.as_ref().map(|wl| lock(wl));
        self.store.get(&key)?.ok_or_else(|| Error::KeyNotFound(name.to_owned()))
    }

    /// Lists key names.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        Ok(self.store.list(prefix, after, limit)?)
    }

    /// The underlying ring store (backup).
    pub fn ring_store(&self) -> &RingStore {
        &self.store
    }

    /// Flushes usage and syncs the store (at shutdown).
    pub fn sync(&self) -> Result<(), Error> {
        self.flush_usage()?;
        Ok(self.store.raw().sync()?)
    }
}
