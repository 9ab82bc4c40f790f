//! The data-key caches of envelope encryption, with the limits of the AWS
//! Encryption SDK's caching cryptographic materials manager.
//!
//! - [`CacheLimits`] (sealing side): a data key from `GenerateDataKey`
//!   seals messages until it reaches its maximum age, messages or bytes;
//!   at most `max_entries` keys (one per kmsd key name) are kept, the
//!   oldest evicted first. A key that reaches its message or byte limit is
//!   evicted at once (not left to expire).
//! - [`UnwrapLimits`] (opening side): a data key unwrapped by `Decrypt` is
//!   kept by (key name, wrapped key) for at most `max_age`, at most
//!   `max_entries` of them.
//!
//! **Zeroized on eviction, by type**: the caches hold each data key as an
//! `Arc<DataKey>`, and [`DataKey`] is a zeroizing `SecretBox` that is
//! neither `Clone` nor `Copy`, so the key exists once; when an entry is
//! evicted (age, limits, capacity, `Envelopes::clear_caches`) its
//! `Arc` is dropped and, once the last seal or open using it finishes, the
//! key is zeroized. The tests hold a `Weak` to an entry's key and check
//! that eviction drops it.
//!
//! Time is a parameter (`now`) of every operation: the tests drive expiry
//! without waiting. No lock is held across an `await`: callers look up,
//! release, call the daemon, then insert.
use crate::format::DataKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long, and for how much, one cached data key may seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// A data key is not used after this age (from its generation).
    pub max_age: Duration,
    /// Messages one data key may seal.
    pub max_messages: u64,
    /// Plaintext bytes one data key may seal; a message larger than this
    /// gets a data key of its own, not cached.
    pub max_bytes: u64,
    /// Data keys kept at once (one per kmsd key name); 0 disables caching:
    /// every seal calls `GenerateDataKey`.
    pub max_entries: usize,
}

impl Default for CacheLimits {
    /// 5 minutes, 2^32 messages (the envelope format's bound per data key,
    /// `docs/formats.md` §2), 2^63 − 1 bytes (the AWS SDK's default), 100
    /// key names.
    fn default() -> Self {
        CacheLimits {
            max_age: Duration::from_secs(300),
            max_messages: 1 << 32,
            max_bytes: i64::MAX as u64,
            max_entries: 100,
        }
    }
}

impl CacheLimits {
    /// No caching: one `GenerateDataKey` per message.
    pub fn disabled() -> Self {
        CacheLimits {
            max_entries: 0,
            ..CacheLimits::default()
        }
    }
}

/// How long, and how many, unwrapped data keys are kept for opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnwrapLimits {
    /// An unwrapped data key is forgotten after this age.
    pub max_age: Duration,
    /// Unwrapped data keys kept at once; 0 disables caching: every open
    /// calls `Decrypt`.
    pub max_entries: usize,
}

impl Default for UnwrapLimits {
    /// 5 minutes, 1,000 data keys.
    fn default() -> Self {
        UnwrapLimits {
            max_age: Duration::from_secs(300),
            max_entries: 1000,
        }
    }
}

impl UnwrapLimits {
    /// No caching: one `Decrypt` per message.
    pub fn disabled() -> Self {
        UnwrapLimits {
            max_entries: 0,
            ..UnwrapLimits::default()
        }
    }
}

/// A cached data key for sealing: the key, its wrapped form, and what it
/// has sealed so far.
struct SealEntry {
    key: Arc<DataKey>,
    wrapped: Arc<[u8]>,
    created: Instant,
    messages: u64,
    bytes: u64,
}

/// A data key lent to one seal.
pub(crate) struct Lease {
    pub(crate) key: Arc<DataKey>,
    pub(crate) wrapped: Arc<[u8]>,
}

/// The sealing side's cache, by kmsd key name.
pub(crate) struct DataKeyCache {
    limits: CacheLimits,
    entries: Mutex<HashMap<String, SealEntry>>,
}

impl DataKeyCache {
    pub(crate) fn new(limits: CacheLimits) -> Self {
        DataKeyCache {
            limits,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// One use of `name`'s cached data key for a message of `len` bytes,
    /// if it is within every limit after this use; an entry that is not
    /// is evicted.
    pub(crate) fn take(&self, name: &str, len: u64, now: Instant) -> Option<Lease> {
        let l = self.limits;
        let mut entries = self.entries.lock().ok()?;
        let usable = entries.get(name).map(|e| {
            now.saturating_duration_since(e.created) < l.max_age
                && e.messages < l.max_messages
                && e.bytes.checked_add(len).is_some_and(|b| b <= l.max_bytes)
        })?;
        if !usable {
            entries.remove(name);
            return None;
        }
        let e = entries.get_mut(name)?;
        e.messages += 1;
        e.bytes += len;
        let lease = Lease {
            key: e.key.clone(),
            wrapped: e.wrapped.clone(),
        };
        if e.messages >= l.max_messages || e.bytes >= l.max_bytes {
            // spent: evict now rather than hold the key until it expires
            entries.remove(name);
        }
        Some(lease)
    }

    /// Caches a fresh data key that has just been used for one message of
    /// `len` bytes, if the limits allow it another use; evicts expired
    /// entries, then the oldest if full.
    pub(crate) fn put(&self, name: &str, lease: &Lease, len: u64, now: Instant) {
        let l = self.limits;
        if l.max_entries == 0 || l.max_messages <= 1 || len >= l.max_bytes {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        entries.retain(|_, e| now.saturating_duration_since(e.created) < l.max_age);
        if !entries.contains_key(name) && entries.len() >= l.max_entries {
            if let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.created).map(|(k, _)| k.clone()) {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            name.to_owned(),
            SealEntry {
                key: lease.key.clone(),
                wrapped: lease.wrapped.clone(),
                created: now,
                messages: 1,
                bytes: len,
            },
        );
    }

    /// Drops every cached key.
    pub(crate) fn clear(&self) {
        if let Ok(mut e) = self.entries.lock() {
            e.clear();
        }
    }

    /// Cached keys now.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

/// An unwrapped data key's identity: (kmsd key name, wrapped key).
type WrappedId = (String, Vec<u8>);

/// The opening side's cache: unwrapped keys and when they were unwrapped.
pub(crate) struct UnwrapCache {
    limits: UnwrapLimits,
    entries: Mutex<HashMap<WrappedId, (Arc<DataKey>, Instant)>>,
}

impl UnwrapCache {
    pub(crate) fn new(limits: UnwrapLimits) -> Self {
        UnwrapCache {
            limits,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The unwrapped key of `wrapped`, if cached and not expired (an
    /// expired one is evicted).
    pub(crate) fn get(&self, name: &str, wrapped: &[u8], now: Instant) -> Option<Arc<DataKey>> {
        let mut entries = self.entries.lock().ok()?;
        let id = (name.to_owned(), wrapped.to_vec());
        let (key, created) = entries.get(&id)?;
        if now.saturating_duration_since(*created) < self.limits.max_age {
            return Some(key.clone());
        }
        entries.remove(&id);
        None
    }

    /// Caches an unwrapped key; evicts expired entries, then the oldest if
    /// full.
    pub(crate) fn put(&self, name: &str, wrapped: &[u8], key: &Arc<DataKey>, now: Instant) {
        let l = self.limits;
        if l.max_entries == 0 {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let id = (name.to_owned(), wrapped.to_vec());
        if entries.len() >= l.max_entries && !entries.contains_key(&id) {
            entries.retain(|_, (_, c)| now.saturating_duration_since(*c) < l.max_age);
            if entries.len() >= l.max_entries {
                if let Some(oldest) = entries.iter().min_by_key(|(_, (_, c))| *c).map(|(k, _)| k.clone()) {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(id, (key.clone(), now));
    }

    /// Drops every cached key.
    pub(crate) fn clear(&self) {
        if let Ok(mut e) = self.entries.lock() {
            e.clear();
        }
    }

    /// Cached keys now.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Weak;

    fn lease(b: u8) -> Lease {
        Lease {
            key: Arc::new(DataKey::from_slice(&[b; 32]).unwrap()),
            wrapped: Arc::from(&[b; 82][..]),
        }
    }

    fn limits(max_messages: u64) -> CacheLimits {
        CacheLimits {
            max_age: Duration::from_secs(60),
            max_messages,
            max_bytes: 1 << 40,
            max_entries: 10,
        }
    }

    #[test]
    fn max_messages_counts_every_seal_and_the_spent_key_is_dropped() {
        let c = DataKeyCache::new(limits(100));
        let now = Instant::now();
        let mut generated = 0;
        let mut weak: Vec<Weak<DataKey>> = Vec::new();
        for _ in 0..1000 {
            if c.take("k", 10, now).is_none() {
                generated += 1;
                let l = lease(generated as u8);
                weak.push(Arc::downgrade(&l.key));
                c.put("k", &l, 10, now);
            }
        }
        assert_eq!(generated, 10);
        // every spent key was evicted at its 100th message and dropped
        assert!(weak.iter().all(|w| w.upgrade().is_none()));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn expired_entries_are_not_used_and_are_dropped() {
        let c = DataKeyCache::new(limits(100));
        let t0 = Instant::now();
        let l = lease(1);
        let w = Arc::downgrade(&l.key);
        c.put("k", &l, 1, t0);
        drop(l);
        assert!(c.take("k", 1, t0 + Duration::from_secs(59)).is_some());
        assert!(c.take("k", 1, t0 + Duration::from_secs(60)).is_none());
        assert!(w.upgrade().is_none(), "the expired key was not dropped");
    }

    #[test]
    fn max_bytes_and_oversized_messages() {
        let c = DataKeyCache::new(CacheLimits {
            max_bytes: 100,
            ..limits(1000)
        });
        let now = Instant::now();
        c.put("k", &lease(1), 60, now);
        assert!(c.take("k", 41, now).is_none(), "60 + 41 > 100");
        c.put("k", &lease(2), 60, now);
        assert!(c.take("k", 40, now).is_some());
        assert_eq!(c.len(), 0, "reaching max_bytes evicts");
        c.put("k", &lease(3), 100, now);
        assert_eq!(c.len(), 0, "a message of max_bytes leaves nothing to reuse");
    }

    #[test]
    fn capacity_evicts_the_oldest_and_drops_it() {
        let c = DataKeyCache::new(CacheLimits {
            max_entries: 2,
            ..limits(100)
        });
        let t0 = Instant::now();
        let first = lease(1);
        let w = Arc::downgrade(&first.key);
        c.put("a", &first, 1, t0);
        drop(first);
        c.put("b", &lease(2), 1, t0 + Duration::from_secs(1));
        c.put("c", &lease(3), 1, t0 + Duration::from_secs(2));
        assert_eq!(c.len(), 2);
        assert!(w.upgrade().is_none());
        assert!(c.take("a", 1, t0 + Duration::from_secs(2)).is_none());
        assert!(c.take("b", 1, t0 + Duration::from_secs(2)).is_some());
    }

    #[test]
    fn disabled_caches_keep_nothing() {
        let c = DataKeyCache::new(CacheLimits::disabled());
        c.put("k", &lease(1), 1, Instant::now());
        assert!(c.take("k", 1, Instant::now()).is_none());
        let u = UnwrapCache::new(UnwrapLimits::disabled());
        u.put("k", &[1], &lease(1).key, Instant::now());
        assert!(u.get("k", &[1], Instant::now()).is_none());
    }

    #[test]
    fn unwrap_cache_expires_and_is_bounded() {
        let u = UnwrapCache::new(UnwrapLimits {
            max_age: Duration::from_secs(10),
            max_entries: 3,
        });
        let t0 = Instant::now();
        let mut weak = Vec::new();
        for i in 0..5u8 {
            let k = lease(i).key;
            weak.push(Arc::downgrade(&k));
            u.put("k", &[i], &k, t0 + Duration::from_secs(u64::from(i)));
        }
        assert_eq!(u.len(), 3);
        assert!(weak[0].upgrade().is_none() && weak[1].upgrade().is_none());
        assert!(u.get("k", &[4], t0 + Duration::from_secs(13)).is_some());
        assert!(u.get("k", &[2], t0 + Duration::from_secs(12)).is_none(), "expired");
        assert!(weak[2].upgrade().is_none());
        assert!(u.get("other", &[4], t0).is_none(), "the key name is part of the entry");
        u.clear();
        assert!(weak.iter().all(|w| w.upgrade().is_none()));
    }
}
