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
//! Decryption counts and last-use times are kept in memory and persisted
//! by [`Keys::flush_usage`] (periodically and at shutdown): they are for
//! "is this version still used?" decisions, not for enforcement.
use crate::crypto;
use crate::error::Error;
use dashmap::DashMap;
use kmsd_keystore::keyring::{KeyPolicy, KeyPurpose, RotationReason};
use kmsd_keystore::{Algorithm, Clock, KeyMaterial, KeyName, KeyRing, Revision, RingStore, UnixTime, VersionState};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Encryptions reserved per durable write, by default
/// (`limits.usage_reservation_block`).
pub const RESERVATION_BLOCK: u64 = 16_384;

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
    /// `None` once destroyed.
    material: Option<KeyMaterial>,
    counters: Arc<Counters>,
}

/// An immutable snapshot of a ring for the data path.
struct CachedRing {
    revision: Option<Revision>,
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

/// What the lock-free fast path of `encrypt` could not do itself.
enum Slow {
    /// The reservation is used up: reserve more (a durable write).
    Reserve(u32),
    /// The version reached its encryption limit: rotate.
    Rotate(u32),
}

/// Result of a successful encryption.
#[derive(Debug)]
pub struct Encrypted {
    /// The envelope.
    pub ciphertext: Vec<u8>,
    /// The version that encrypted it.
    pub version: u32,
}

/// What one call's encryptions share: the salts and nonces drawn for the
/// call (never kept beyond it, see [`crypto::Fresh`]) and how many usage
/// rotations the call may still cause.
#[derive(Debug)]
pub struct EncryptCall {
    fresh: crypto::Fresh,
    /// Usage rotations this call may still start (foreground or
    /// background). With a tiny `max_encryptions_per_version`, one batch
    /// would otherwise rotate once per item: thousands of store writes
    /// and versions from one request.
    rotations_left: u32,
}

/// Default of `limits.max_rotations_per_call`.
pub const DEFAULT_MAX_ROTATIONS_PER_CALL: u32 = 16;

/// Live usage of one version, for `GetKey`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Encryptions counted.
    pub encryptions: u64,
    /// Decryptions counted.
    pub decryptions: u64,
    /// Last use (0 = never).
    pub last_used_at: UnixTime,
}

/// Envelope operations refuse a token key (purpose separation).
fn not_a_token_key(name: &str, ring: &CachedRing) -> Result<(), Error> {
    if ring.purpose == KeyPurpose::Tokenize {
        return Err(Error::FailedPrecondition(format!(
            "key {name:?} is a token key (purpose TOKENIZE): it only tokenizes and detokenizes"
        )));
    }
    Ok(())
}

/// Minimum waiting periods for destruction (production, dev mode).
pub const MIN_DESTRUCTION_WAIT: (u64, u64) = (86_400, 1);
/// Default destruction waiting period.
pub const DEFAULT_DESTRUCTION_WAIT: u64 = 30 * 86_400;
/// Minimum rotation period (production, dev mode).
pub const MIN_ROTATION_PERIOD: (u64, u64) = (3_600, 1);

/// Reserves the first block of a fresh primary in the same write that
/// creates it, so its first encryptions do not wait for a store write.
fn pre_reserve(r: &mut KeyRing, block: u64) {
    let limit = r.policy.max_encryptions_per_version;
    let primary = r.primary;
    if let Some(v) = r.version_mut(primary) {
        if v.encryptions_reserved == 0 {
            v.encryptions_reserved = limit.map_or(block, |l| l.min(block));
        }
    }
}

/// Key rings: cache plus store.
pub struct Keys {
    rings: RingStore,
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
}

/// How long a negative version look-up is trusted without a store read
/// (only matters when another process writes the same store).
const ABSENT_TTL_SECS: i64 = 5;

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
}

#[derive(Default)]
struct Schedule {
    queue: BTreeSet<(UnixTime, String)>,
    by_name: HashMap<String, UnixTime>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} rings)", self.cache.len())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Keys {
    /// Loads every ring from the store into memory. Rings whose records
    /// fail their integrity check are logged and remembered as corrupt;
    /// the rest serve.
    pub fn load(rings: RingStore, clock: Arc<dyn Clock>, dev_mode: bool) -> Result<Self, Error> {
        let keys = Keys {
            rings,
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
        };
        let failures = keys.rings.load_all(|ring| {
            keys.install(&ring);
        })?;
        for f in failures {
            tracing::error!(key = %f.name, error = %f.error, "key ring not loaded");
            keys.corrupt.insert(f.name, ());
        }
        Ok(keys)
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

    /// State for a call of up to `messages` encryptions.
    pub fn call(&self, messages: usize) -> EncryptCall {
        EncryptCall {
            fresh: crypto::Fresh::for_messages(messages),
            rotations_left: self.max_rotations_per_call.load(Ordering::Relaxed),
        }
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
            .rings
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
                            decryptions: AtomicU64::new(v.decryptions),
                            last_used: AtomicI64::new(v.last_used_at.unwrap_or(0)),
                            ..Counters::default()
                        })
                    });
                counters.reserved.fetch_max(v.encryptions_reserved, Ordering::AcqRel);
                CachedVersion {
                    state: v.state,
                    material: v.material.clone(),
                    counters,
                }
            })
            .collect();
        let snap = Arc::new(CachedRing {
            revision: ring.revision,
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

    fn reschedule(&self, name: &str, ring: &KeyRing) {
        let deadline = [
            if ring.delete_at.is_none() {
                ring.next_rotation_at
            } else {
                None
            },
            ring.next_destruction(),
        ]
        .into_iter()
        .flatten()
        .min();
        let mut s = lock(&self.schedule);
        let earliest_before = s.queue.first().map(|(t, _)| *t);
        if let Some(old) = s.by_name.remove(name) {
            s.queue.remove(&(old, name.to_owned()));
        }
        if let Some(t) = deadline {
            s.queue.insert((t, name.to_owned()));
            s.by_name.insert(name.to_owned(), t);
            if earliest_before.is_none_or(|e| t < e) {
                drop(s);
                self.schedule_changed.notify_one();
            }
        }
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
        s
    }

    fn count_rotation(&self, reason: RotationReason) {
        let i = match reason {
            RotationReason::Manual => 0,
            RotationReason::Scheduled => 1,
            RotationReason::Usage => 2,
        };
        if let Some(c) = self.rotations.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every scheduled deadline, by key.
    pub fn scheduled(&self) -> Vec<(String, UnixTime)> {
        lock(&self.schedule)
            .by_name
            .iter()
            .map(|(n, t)| (n.clone(), *t))
            .collect()
    }

    /// The earliest scheduled deadline (rotation or destruction).
    pub fn next_deadline(&self) -> Option<UnixTime> {
        lock(&self.schedule).queue.first().map(|(t, _)| *t)
    }

    fn write_lock(&self, name: &str) -> Arc<Mutex<()>> {
        self.write_locks.entry(name.to_owned()).or_default().clone()
    }

    /// Encrypts under the ring's primary version (a call of one message).
    pub fn encrypt(self: &Arc<Self>, name: &str, plaintext: &[u8], associated_data: &[u8]) -> Result<Encrypted, Error> {
        self.encrypt_in(&mut self.call(1), name, plaintext, associated_data)
    }

    /// Encrypts one message of a call (batches share one [`EncryptCall`]).
    pub fn encrypt_in(
        self: &Arc<Self>,
        call: &mut EncryptCall,
        name: &str,
        plaintext: &[u8],
        associated_data: &[u8],
    ) -> Result<Encrypted, Error> {
        for _ in 0..8 {
            match self.try_encrypt(call, name, plaintext, associated_data)? {
                Ok(e) => return Ok(e),
                Err(Slow::Reserve(v)) => self.reserve(name, v)?,
                Err(Slow::Rotate(v)) => {
                    if call.rotations_left == 0 {
                        return Err(Error::TooLarge(format!(
                            "key {name:?}: version {v} reached its usage limit (max_encryptions_per_version) and \
                             this call already caused {} usage rotations, the most one call may \
                             (limits.max_rotations_per_call); retry the rest in another call",
                            self.max_rotations_per_call.load(Ordering::Relaxed)
                        )));
                    }
                    if self.rotate_for_usage(name, v)? {
                        call.rotations_left -= 1;
                    }
                }
            }
        }
        Err(Error::Conflict(name.to_owned()))
    }

    /// The lock-free path: takes a counted encryption slot and encrypts.
    fn try_encrypt(
        self: &Arc<Self>,
        call: &mut EncryptCall,
        name: &str,
        plaintext: &[u8],
        associated_data: &[u8],
    ) -> Result<Result<Encrypted, Slow>, Error> {
        let ring = self.cached(name)?;
        not_a_token_key(name, &ring)?;
        let version = ring.primary;
        let v = ring.version(version).ok_or_else(|| Error::Corrupt(name.to_owned()))?;
        let material = match (v.state, &v.material) {
            (VersionState::Active, Some(m)) => m,
            (state, _) => {
                return Err(Error::VersionUnusable {
                    key: name.to_owned(),
                    version,
                    state,
                    action: "encryption",
                })
            }
        };
        let c = &v.counters;
        let mut n = c.used.load(Ordering::Acquire);
        loop {
            if ring.max_encryptions.is_some_and(|limit| n >= limit) {
                return Ok(Err(Slow::Rotate(version)));
            }
            if n >= c.reserved.load(Ordering::Acquire) {
                return Ok(Err(Slow::Reserve(version)));
            }
            match c
                .used
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(cur) => n = cur,
            }
        }
        // Slot n is ours. Look ahead: the last allowed slot triggers the usage
        // rotation, and a half-used reservation triggers the next one, both in
        // the background so that callers rarely wait for a durable write.
        if ring.max_encryptions.is_some_and(|limit| n + 1 >= limit) {
            // charged to this call; without budget the next encryption
            // (of whichever call) rotates in the foreground, on its budget
            if call.rotations_left > 0 {
                call.rotations_left -= 1;
                self.in_background(name, version, true);
            }
        } else if n + self.block() / 2 >= c.reserved.load(Ordering::Acquire)
            && !c.reserving.swap(true, Ordering::AcqRel)
        {
            self.in_background(name, version, false);
        }
        c.last_used.store(self.clock.now(), Ordering::Relaxed);
        let ciphertext = crypto::encrypt_fresh(&mut call.fresh, material, name, version, plaintext, associated_data)?;
        Ok(Ok(Encrypted { ciphertext, version }))
    }

    fn in_background(self: &Arc<Self>, name: &str, version: u32, rotate: bool) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        let name = name.to_owned();
        rt.spawn_blocking(move || {
            let r = if rotate {
                this.rotate_for_usage(&name, version).map(|_| ())
            } else {
                this.reserve(&name, version)
            };
            if let Err(e) = r {
                tracing::warn!(key = %name, version, error = %e, "background key maintenance failed");
            }
        });
    }

    /// Durably reserves the next block of encryptions for `version`.
    fn reserve(&self, name: &str, version: u32) -> Result<(), Error> {
        let wl = self.write_lock(name);
        let _g = lock(&wl);
        let ring = self.cached(name)?;
        let Some(v) = ring.version(version) else { return Ok(()) };
        let c = v.counters.clone();
        let result = (|| {
            let used = c.used.load(Ordering::Acquire);
            let reserved = c.reserved.load(Ordering::Acquire);
            let block = self.block();
            if used + block / 2 < reserved || ring.primary != version {
                return Ok(()); // someone else reserved meanwhile, or it is no longer primary
            }
            let key = KeyName::parse(name)?;
            let (ring, _) = self.rings.update(&key, |r| {
                let limit = r.policy.max_encryptions_per_version;
                let ver = r
                    .version_mut(version)
                    .ok_or_else(|| kmsd_keystore::Error::Precondition(format!("no version {version}")))?;
                let mut target = ver.encryptions_reserved.max(reserved).max(used) + block;
                if let Some(l) = limit {
                    target = target.min(l);
                }
                ver.encryptions_reserved = ver.encryptions_reserved.max(target);
                Ok(())
            })?;
            self.install(&ring);
            Ok(())
        })();
        c.reserving.store(false, Ordering::Release);
        result
    }

    /// Rotates because `version` reached its encryption limit, unless
    /// someone already did. Returns whether this call rotated.
    fn rotate_for_usage(&self, name: &str, version: u32) -> Result<bool, Error> {
        let wl = self.write_lock(name);
        let _g = lock(&wl);
        if self.cached(name)?.primary != version {
            return Ok(false);
        }
        let key = KeyName::parse(name)?;
        let now = self.clock.now();
        let block = self.block();
        let (ring, rotated) = self.rings.update(&key, |r| {
            if r.primary != version {
                return Ok(None);
            }
            let v = r.rotate(now, RotationReason::Usage)?;
            pre_reserve(r, block);
            Ok(Some(v))
        })?;
        match rotated {
            Some(to) => self.install_new(&ring, to),
            None => self.install(&ring),
        };
        if let Some(to) = rotated {
            self.count_rotation(RotationReason::Usage);
            tracing::info!(key = name, from = version, to, reason = "usage", "key rotated");
        }
        Ok(rotated.is_some())
    }

    /// Decrypts an envelope; returns the plaintext and the version used.
    pub fn decrypt(&self, name: &str, ciphertext: &[u8], associated_data: &[u8]) -> Result<(Vec<u8>, u32), Error> {
        let header = crypto::parse_header(ciphertext)?;
        let mut ring = self.cached(name)?;
        not_a_token_key(name, &ring)?;
        if ring.version(header.version).is_none() {
            let now = self.clock.now();
            let known_absent = self
                .absent
                .get(name)
                .is_some_and(|e| e.0 == ring.versions.len() && now < e.1);
            if !known_absent {
                self.miss_reads.fetch_add(1, Ordering::Relaxed);
                ring = self.refresh(name)?;
                if ring.version(header.version).is_none() {
                    self.absent.insert(
                        name.to_owned(),
                        (ring.versions.len(), now.saturating_add(ABSENT_TTL_SECS)),
                    );
                }
            }
        }
        let Some(v) = ring.version(header.version) else {
            tracing::info!(
                key = name,
                version = header.version,
                "ciphertext names a version the key does not have"
            );
            return Err(Error::DecryptionFailed);
        };
        if header.version < ring.min_decryption_version {
            return Err(Error::VersionBelowMinimum {
                key: name.to_owned(),
                version: header.version,
                minimum: ring.min_decryption_version,
                action: "decryption",
            });
        }
        let material = match (v.state, &v.material) {
            (VersionState::Active | VersionState::DecryptOnly, Some(m)) => m,
            (state, _) => {
                return Err(Error::VersionUnusable {
                    key: name.to_owned(),
                    version: header.version,
                    state,
                    action: "decryption",
                })
            }
        };
        let plaintext = crypto::decrypt(material, name, ciphertext, associated_data).inspect_err(|_| {
            tracing::info!(key = name, version = header.version, "ciphertext failed authentication");
        })?;
        v.counters.decryptions.fetch_add(1, Ordering::Relaxed);
        v.counters.last_used.store(self.clock.now(), Ordering::Relaxed);
        v.counters.dirty.store(true, Ordering::Release);
        Ok((plaintext, header.version))
    }

    /// Runs `f` with a version as a tokenization key: `None` uses the
    /// primary (which must be ACTIVE, as for encryption); `Some(v)` (or
    /// `Some(None)` = primary) a version allowed to decrypt. `f` gets the
    /// keyed function tokenization needs ([`crypto::TokenPrf`]), never the
    /// material.
    pub fn with_token_key<T>(
        &self,
        name: &str,
        version: Option<Option<u32>>,
        f: impl FnOnce(&crypto::TokenPrf<'_>, u32) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let ring = self.cached(name)?;
        if version.is_none() && ring.purpose == KeyPurpose::EncryptDecrypt && ring.breaks_tokens {
            // A token made now would silently stop matching after the
            // next automatic rotation.
            return Err(Error::FailedPrecondition(format!(
                "key {name:?} rotates automatically (rotation period or usage limit): tokens are deterministic \
                 and would change at each rotation; use a key created with purpose TOKENIZE, or set \
                 allow_token_rotation on this key to accept that"
            )));
        }
        let (v, action) = match version {
            None => (ring.primary, "encryption"),
            Some(v) => (v.unwrap_or(ring.primary), "decryption"),
        };
        let Some(ver) = ring.version(v) else {
            return Err(Error::InvalidArgument(format!("key {name:?} has no version {v}")));
        };
        if action == "decryption" && v < ring.min_decryption_version {
            return Err(Error::VersionBelowMinimum {
                key: name.to_owned(),
                version: v,
                minimum: ring.min_decryption_version,
                action,
            });
        }
        let usable = match action {
            "encryption" => ver.state == VersionState::Active,
            _ => matches!(ver.state, VersionState::Active | VersionState::DecryptOnly),
        };
        match (&ver.material, usable) {
            (Some(m), true) => {
                ver.counters.last_used.store(self.clock.now(), Ordering::Relaxed);
                f(&crypto::TokenPrf::new(m), v)
            }
            _ => Err(Error::VersionUnusable {
                key: name.to_owned(),
                version: v,
                state: ver.state,
                action,
            }),
        }
    }

    /// Live usage of every version of a ring.
    pub fn usage(&self, name: &str) -> Vec<Usage> {
        self.cache
            .get(name)
            .map(|r| {
                r.versions
                    .iter()
                    .map(|v| Usage {
                        encryptions: v.counters.used.load(Ordering::Acquire),
                        decryptions: v.counters.decryptions.load(Ordering::Acquire),
                        last_used_at: v.counters.last_used.load(Ordering::Acquire),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Persists changed decryption counts and last-use times.
    pub fn flush_usage(&self) -> Result<usize, Error> {
        let dirty: Vec<String> = self
            .cache
            .iter()
            .filter(|e| {
                e.value()
                    .versions
                    .iter()
                    .any(|v| v.counters.dirty.load(Ordering::Acquire))
            })
            .map(|e| e.key().clone())
            .collect();
        for name in &dirty {
            let Some(ring) = self.cache.get(name).map(|e| e.value().clone()) else {
                continue;
            };
            let snapshot: Vec<(u64, i64)> = ring
                .versions
                .iter()
                .map(|v| {
                    v.counters.dirty.store(false, Ordering::Release);
                    (
                        v.counters.decryptions.load(Ordering::Acquire),
                        v.counters.last_used.load(Ordering::Acquire),
                    )
                })
                .collect();
            let key = KeyName::parse(name)?;
            let wl = self.write_lock(name);
            let _g = lock(&wl);
            let written = self.rings.update(&key, |r| {
                for (ver, (d, t)) in r.versions.iter_mut().zip(&snapshot) {
                    ver.decryptions = ver.decryptions.max(*d);
                    if *t > 0 {
                        ver.last_used_at = Some(ver.last_used_at.unwrap_or(0).max(*t));
                    }
                }
                Ok(())
            });
            let (ring, _) = written.inspect_err(|_| {
                // not persisted: the next flush (or shutdown) tries again
                for v in &ring.versions {
                    v.counters.dirty.store(true, Ordering::Release);
                }
            })?;
            self.install(&ring);
        }
        Ok(dirty.len())
    }

    /// Creates a ring with one version. Durable when it returns.
    pub fn create(&self, name: &str, policy: KeyPolicy) -> Result<KeyRing, Error> {
        self.create_for(name, policy, KeyPurpose::EncryptDecrypt)
    }

    /// Creates a ring for `purpose` with one version. Durable when it returns.
    pub fn create_for(&self, name: &str, policy: KeyPolicy, purpose: KeyPurpose) -> Result<KeyRing, Error> {
        let key = KeyName::parse(name)?;
        self.check_policy(&policy)?;
        KeyRing::check_purpose_policy(purpose, &policy).map_err(|e| match e {
            kmsd_keystore::Error::Precondition(m) => Error::InvalidArgument(m),
            other => other.into(),
        })?;
        let mut ring = KeyRing::new(key, Algorithm::Aes256Gcm, policy, self.clock.now()).with_purpose(purpose);
        pre_reserve(&mut ring, self.block());
        let ring = self.rings.create(ring).map_err(|e| match e {
            kmsd_keystore::Error::Conflict { name, .. } => Error::KeyExists(name),
            other => other.into(),
        })?;
        self.install_new(&ring, 1);
        tracing::info!(key = name, "key created");
        Ok(ring)
    }

    fn check_policy(&self, p: &KeyPolicy) -> Result<(), Error> {
        let min = if self.dev_mode {
            MIN_ROTATION_PERIOD.1
        } else {
            MIN_ROTATION_PERIOD.0
        };
        if p.rotation_period_secs.is_some_and(|s| s < min) {
            return Err(Error::InvalidArgument(format!(
                "rotation_period must be at least {min} seconds"
            )));
        }
        Ok(())
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
        self.rings.get(&key)?.ok_or_else(|| Error::KeyNotFound(name.to_owned()))
    }

    /// Applies `f` to the stored ring under the ring's write lock, then
    /// refreshes the cache. Durable when it returns.
    pub fn modify<T>(
        &self,
        name: &str,
        f: impl FnMut(&mut KeyRing) -> Result<T, kmsd_keystore::Error>,
    ) -> Result<(KeyRing, T), Error> {
        let key = KeyName::parse(name)?;
        let wl = self.write_lock(name);
        let _g = lock(&wl);
        let (ring, out) = self.rings.update(&key, f)?;
        kmsd_keystore::failpoints::kill_point(kmsd_keystore::failpoints::KEYS_INSTALL);
        // A primary this process has not seen was created by `f` here.
        self.install_new(&ring, ring.primary);
        Ok((ring, out))
    }

    /// Adds a version and makes it primary. Durable when it returns.
    pub fn rotate(&self, name: &str, reason: RotationReason) -> Result<KeyRing, Error> {
        let now = self.clock.now();
        let block = self.block();
        let (ring, new_version) = self.modify(name, |r| {
            let v = r.rotate(now, reason)?;
            pre_reserve(r, block);
            Ok(v)
        })?;
        self.count_rotation(reason);
        tracing::info!(key = name, from = new_version - 1, to = new_version, reason = ?reason, "key rotated");
        Ok(ring)
    }

    /// Replaces a ring's policy.
    pub fn set_policy(&self, name: &str, policy: KeyPolicy) -> Result<KeyRing, Error> {
        self.check_policy(&policy)?;
        Ok(self.modify(name, |r| r.set_policy(policy.clone()))?.0)
    }

    /// Applies `f` to the key's policy as stored now and writes the result,
    /// checked, under the ring's write lock: an approved change applies only
    /// the fields it asked for, on top of changes made since it was asked.
    pub fn update_policy(&self, name: &str, f: impl Fn(KeyPolicy) -> KeyPolicy) -> Result<KeyRing, Error> {
        let mut refused = None;
        let result = self.modify(name, |r| {
            let p = f(r.policy.clone());
            if let Err(e) = self.check_policy(&p) {
                refused = Some(e);
                return Err(kmsd_keystore::Error::Precondition("policy refused".into()));
            }
            r.set_policy(p)
        });
        match (result, refused) {
            (_, Some(e)) => Err(e),
            (result, None) => result.map(|(ring, ())| ring),
        }
    }

    /// Checks a destruction waiting period against the minimum.
    pub fn destruction_time(&self, waiting_secs: u64) -> Result<UnixTime, Error> {
        let wait = if waiting_secs == 0 {
            DEFAULT_DESTRUCTION_WAIT
        } else {
            waiting_secs
        };
        let min = if self.dev_mode {
            MIN_DESTRUCTION_WAIT.1
        } else {
            MIN_DESTRUCTION_WAIT.0
        };
        if wait < min {
            return Err(Error::InvalidArgument(format!(
                "waiting_period must be at least {min} seconds"
            )));
        }
        Ok(self.clock.now().saturating_add(i64::try_from(wait).unwrap_or(i64::MAX)))
    }

    /// Runs every scheduled action due at `now`: rotations and
    /// destructions. Returns how many rings changed.
    pub fn run_due(&self, now: UnixTime) -> Result<usize, Error> {
        let due: Vec<String> = {
            let s = lock(&self.schedule);
            s.queue
                .iter()
                .take_while(|(t, _)| *t <= now)
                .map(|(_, n)| n.clone())
                .collect()
        };
        let mut changed = 0;
        for name in due {
            match self.run_scheduled(&name, now) {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => tracing::error!(key = %name, error = %e, "scheduled key maintenance failed"),
            }
        }
        Ok(changed)
    }

    fn run_scheduled(&self, name: &str, now: UnixTime) -> Result<bool, Error> {
        let current = self.get(name)?;
        if !current.rotation_due(now) && current.next_destruction().is_none_or(|t| t > now) {
            self.install(&current); // the deadline moved; refresh the schedule
            return Ok(false);
        }
        let block = self.block();
        let (_, (rotated, destroyed)) = self.modify(name, |r| {
            let rotated = if r.rotation_due(now) {
                let from = r.primary;
                let to = r.rotate(now, RotationReason::Scheduled)?;
                pre_reserve(r, block);
                Some((from, to))
            } else {
                None
            };
            Ok((rotated, r.destroy_due(now)))
        })?;
        if let Some((from, to)) = rotated {
            self.count_rotation(RotationReason::Scheduled);
            tracing::info!(key = name, from, to, reason = "scheduled", "key rotated");
        }
        for v in destroyed {
            tracing::info!(key = name, version = v, "key version destroyed");
        }
        Ok(true)
    }

    /// Lists key names.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        Ok(self.rings.list(prefix, after, limit)?)
    }

    /// Restores a snapshot into this (empty) store and loads its rings.
    /// Returns (records, key rings).
    pub fn restore(&self, snapshot: &[u8]) -> Result<(u64, u64), Error> {
        if !self.cache.is_empty() || !self.corrupt.is_empty() {
            return Err(Error::FailedPrecondition(
                "restore needs an empty store (this one has keys)".into(),
            ));
        }
        let records = kmsd_keystore::backup::read_snapshot(snapshot, self.rings.sealer()).map_err(|e| match e {
            kmsd_keystore::Error::Corrupt { reason, .. } => {
                Error::InvalidArgument(format!("backup rejected: {reason}"))
            }
            other => other.into(),
        })?;
        let n = kmsd_keystore::backup::restore_snapshot(&self.rings, &records, &mut |_, _| {})?;
        let mut rings = 0;
        let failures = self.rings.load_all(|ring| {
            self.install(&ring);
            rings += 1;
        })?;
        for f in failures {
            tracing::error!(key = %f.name, error = %f.error, "restored key ring does not load");
            self.corrupt.insert(f.name, ());
        }
        tracing::info!(records = n, keys = rings, "backup restored");
        Ok((n, rings))
    }

    /// The underlying ring store (backup).
    pub fn ring_store(&self) -> &RingStore {
        &self.rings
    }

    /// Flushes usage and syncs the store (at shutdown).
    pub fn sync(&self) -> Result<(), Error> {
        self.flush_usage()?;
        Ok(self.rings.raw().sync()?)
    }
}
