//! Changes other nodes made, installed into this node's cache (several
//! nodes on one etcd store; `crate::cluster` follows the watch and calls
//! these), and the staleness bound on the data path.
//!
//! A changed ring is re-read through the store (so through the integrity
//! manifest, which catches up with the other node's write and still
//! refuses a record changed behind the store's back) rather than decoded
//! from the watch event: the cache only ever holds what the checked store
//! vouches for, at its latest revision.
use super::Rings;
use crate::error::Error;
use kmsd_keystore::KeyName;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When the node last knew its cache was current, and how long that may
/// be ago before the data path refuses ([`Rings::check_fresh`]).
#[derive(Debug)]
pub struct Freshness {
    /// `[store.etcd] max_staleness`.
    max: Duration,
    /// The monotonic origin of `confirmed`.
    origin: Instant,
    /// Milliseconds after `origin` at which the cache was last confirmed
    /// current (a quorum read taken then, and the watch delivered
    /// everything up to its revision and installed it).
    confirmed: AtomicU64,
}

impl Freshness {
    /// A bound of `max`, confirmed now (the cache was just loaded).
    pub fn new(max: Duration) -> Self {
        Freshness {
            max,
            origin: Instant::now(),
            confirmed: AtomicU64::new(0),
        }
    }

    /// The cache was current at `at` (the start of the confirmation).
    pub fn confirm(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.origin).as_millis();
        self.confirmed
            .fetch_max(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::AcqRel);
    }

    /// How long ago the cache was last confirmed current.
    pub fn age(&self) -> Duration {
        let at = self.origin + Duration::from_millis(self.confirmed.load(Ordering::Acquire));
        at.elapsed()
    }

    /// The bound.
    pub fn max(&self) -> Duration {
        self.max
    }
}

impl Rings {
    /// Bounds the data path by `freshness` (etcd backend; without it, as
    /// with sled, the cache is the only writer's and always current).
    pub fn set_freshness(&self, freshness: std::sync::Arc<Freshness>) {
        let _ = self.freshness.set(freshness);
    }

    /// The staleness bound of a shared store (`None`: the only writer's
    /// cache).
    pub fn freshness(&self) -> Option<&std::sync::Arc<Freshness>> {
        self.freshness.get()
    }

    /// Shares the store with other nodes: scheduled work runs only while
    /// `leadership` says this node leads, each write fenced (schedule.rs).
    pub fn set_leadership(&self, leadership: std::sync::Arc<super::Leadership>) {
        let _ = self.leadership.set(leadership);
    }

    /// The election's state, on a shared store (`None`: this node is the
    /// only writer and always schedules).
    pub fn leadership(&self) -> Option<&std::sync::Arc<super::Leadership>> {
        self.leadership.get()
    }

    /// `UNAVAILABLE` when the cache may be older than `max_staleness`: a
    /// key disabled or destroyed on another node must not keep serving
    /// here while this node cannot hear about it.
    pub(super) fn check_fresh(&self) -> Result<(), Error> {
        let Some(f) = self.freshness.get() else { return Ok(()) };
        let age = f.age();
        if age > f.max() {
            return Err(Error::Stale {
                age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                max_ms: u64::try_from(f.max().as_millis()).unwrap_or(u64::MAX),
            });
        }
        Ok(())
    }

    /// Installs the current state of ring `name` after another node (or
    /// this one) changed it: re-read through the checked store; gone from
    /// the store, it leaves the cache; failing its integrity check, it
    /// answers DATA_LOSS. Errors reaching the store are returned (the
    /// caller reloads).
    pub fn apply_remote(&self, name: &str) -> Result<(), Error> {
        let Ok(key) = KeyName::parse(name) else {
            return Ok(()); // not a ring name this daemon could have written
        };
        // No ring write lock: a change of this node under way installs
        // its own result, and installing never goes back to an older
        // revision, whichever comes first.
        match self.store.get(&key) {
            Ok(Some(ring)) => {
                self.install(&ring);
                Ok(())
            }
            Ok(None) => {
                self.forget(name);
                Ok(())
            }
            Err(kmsd_keystore::Error::Corrupt { reason, .. }) => {
                tracing::error!(
                    key = name,
                    reason,
                    "key ring changed by another node failed its integrity check"
                );
                self.cache.remove(name);
                self.corrupt.insert(name.to_owned(), ());
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reloads every ring from a fresh snapshot of the store (after a
    /// compaction or a broken watch: changes may have been missed).
    /// Rings gone from the store leave the cache.
    pub fn reload(&self) -> Result<usize, Error> {
        let mut seen = std::collections::HashSet::new();
        let failures = self.store.load_all(|ring| {
            seen.insert(ring.name.to_string());
            self.install(&ring);
        })?;
        for f in failures {
            tracing::error!(key = %f.name, error = %f.error, "key ring not loaded");
            self.cache.remove(&f.name);
            self.corrupt.insert(f.name.clone(), ());
            seen.insert(f.name);
        }
        let gone: Vec<String> = self
            .cache
            .iter()
            .map(|e| e.key().clone())
            .filter(|n| !seen.contains(n))
            .collect();
        for n in &gone {
            self.forget(n);
        }
        Ok(seen.len())
    }

    /// Drops a ring deleted from the store.
    fn forget(&self, name: &str) {
        self.cache.remove(name);
        self.absent.remove(name);
        self.corrupt.remove(name);
        // no deadline left for it: a ring without any clears its entry
        // (an AES ring: its material is never used, and its generation
        // cannot fail)
        if let Some(none) = KeyName::parse(name).ok().and_then(|key| {
            kmsd_keystore::KeyRing::new(
                key,
                kmsd_keystore::Algorithm::Aes256Gcm,
                kmsd_keystore::keyring::KeyPolicy::default(),
                self.clock.now(),
            )
            .ok()
        }) {
            self.reschedule(name, &none);
        }
    }
}
