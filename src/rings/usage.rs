//! Usage counting: durable reservation blocks for encryptions, the usage
//! rotation when a version reaches its limit, and persisting decryption
//! counts and last-use times ([`Rings::flush_usage`]).
use super::{lock, Rings};
use crate::error::Error;
use kmsd_keystore::keyring::RotationReason;
use kmsd_keystore::{KeyName, KeyRing, UnixTime};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Encryptions reserved per durable write, by default
/// (`limits.usage_reservation_block`).
pub const RESERVATION_BLOCK: u64 = 16_384;

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

/// Reserves the first block of a fresh primary in the same write that
/// creates it, so its first encryptions do not wait for a store write.
pub(super) fn pre_reserve(r: &mut KeyRing, block: u64) {
    let limit = r.policy.max_encryptions_per_version;
    let primary = r.primary;
    if let Some(v) = r.version_mut(primary) {
        if v.encryptions_reserved == 0 {
            v.encryptions_reserved = limit.map_or(block, |l| l.min(block));
        }
    }
}

impl Rings {
    pub(super) fn in_background(self: &Arc<Self>, name: &str, version: u32, rotate: bool) {
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
    pub(super) fn reserve(&self, name: &str, version: u32) -> Result<(), Error> {
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
            // The new block starts where the store's reservation ended:
            // above this node's window, or above other nodes' blocks when
            // they reserved since (then this node's window jumps there and
            // the rest of its old one is never used).
            let (ring, (start, end)) = self.store.update(&key, |r| {
                let limit = r.policy.max_encryptions_per_version;
                let ver = r
                    .version_mut(version)
                    .ok_or_else(|| kmsd_keystore::Error::Precondition(format!("no version {version}")))?;
                let start = ver.encryptions_reserved.max(reserved).max(used);
                let mut end = start + block;
                if let Some(l) = limit {
                    end = end.min(l);
                }
                ver.encryptions_reserved = ver.encryptions_reserved.max(end);
                Ok((start, end))
            })?;
            if start > reserved {
                // Other nodes reserved since: jump. `used` first: a slot
                // is taken only below `reserved`, so no slot between the
                // old window and `start` is ever handed out.
                c.used.fetch_max(start, Ordering::AcqRel);
            }
            c.reserved.fetch_max(end, Ordering::AcqRel);
            self.install(&ring);
            Ok(())
        })();
        c.reserving.store(false, Ordering::Release);
        result
    }

    /// Rotates because `version` reached its encryption limit, unless
    /// someone already did. Returns whether this call rotated.
    pub(super) fn rotate_for_usage(&self, name: &str, version: u32) -> Result<bool, Error> {
        let wl = self.write_lock(name);
        let _g = lock(&wl);
        if self.cached(name)?.primary != version {
            return Ok(false);
        }
        let key = KeyName::parse(name)?;
        let now = self.clock.now();
        let block = self.block();
        let (ring, rotated) = self.store.update(&key, |r| {
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
            let written = self.store.update(&key, |r| {
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
}
