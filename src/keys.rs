//! Key rings held in memory for the data path, and their administration.
//!
//! The data path (encrypt, decrypt) reads only the in-memory cache: a
//! sharded concurrent map from key name to an immutable, `Arc`-shared
//! snapshot of the ring. No store read, no global lock, and no work
//! proportional to the number of keys. Administrative changes go to the
//! store first (compare-and-swap, durable), and only then replace the
//! cached snapshot, so the cache never holds a version the store lacks.
use crate::crypto;
use crate::error::Error;
use dashmap::DashMap;
use kmsd_keystore::keyring::{KeyPolicy, RotationReason};
use kmsd_keystore::{Algorithm, Clock, KeyMaterial, KeyName, KeyRing, RingStore, VersionState};
use std::sync::Arc;

/// One version as the data path sees it.
struct CachedVersion {
    state: VersionState,
    /// `None` once destroyed.
    material: Option<KeyMaterial>,
}

/// An immutable snapshot of a ring for the data path.
struct CachedRing {
    primary: u32,
    min_decryption_version: u32,
    /// Index `v - 1` holds version `v`.
    versions: Vec<CachedVersion>,
}

impl CachedRing {
    fn from_ring(ring: &KeyRing) -> Self {
        CachedRing {
            primary: ring.primary,
            min_decryption_version: ring.policy.min_decryption_version,
            versions: ring
                .versions
                .iter()
                .map(|v| CachedVersion {
                    state: v.state,
                    material: v.material.clone(),
                })
                .collect(),
        }
    }

    fn version(&self, v: u32) -> Option<&CachedVersion> {
        self.versions.get((v as usize).checked_sub(1)?)
    }
}

/// Key rings: cache plus store.
pub struct Keys {
    rings: RingStore,
    cache: DashMap<String, Arc<CachedRing>>,
    /// Rings whose stored record failed its integrity check at load: they
    /// answer DATA_LOSS (not NOT_FOUND) until repaired or restored.
    corrupt: DashMap<String, ()>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} rings)", self.cache.len())
    }
}

/// Result of a successful encryption.
#[derive(Debug)]
pub struct Encrypted {
    /// The envelope.
    pub ciphertext: Vec<u8>,
    /// The version that encrypted it.
    pub version: u32,
}

impl Keys {
    /// Loads every ring from the store into memory. Rings whose records
    /// fail their integrity check are logged and left out; the rest serve.
    pub fn load(rings: RingStore, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        let cache = DashMap::new();
        let corrupt = DashMap::new();
        let failures = rings.load_all(|ring| {
            cache.insert(ring.name.to_string(), Arc::new(CachedRing::from_ring(&ring)));
        })?;
        for f in failures {
            tracing::error!(key = %f.name, error = %f.error, "key ring not loaded");
            corrupt.insert(f.name, ());
        }
        Ok(Keys {
            rings,
            cache,
            corrupt,
            clock,
        })
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

    fn install(&self, ring: &KeyRing) -> Arc<CachedRing> {
        let snap = Arc::new(CachedRing::from_ring(ring));
        // Never replace a newer snapshot with an older one.
        let mut entry = self.cache.entry(ring.name.to_string()).or_insert_with(|| snap.clone());
        if entry.versions.len() <= snap.versions.len() {
            *entry = snap.clone();
        }
        entry.clone()
    }

    /// Encrypts under the ring's primary version.
    pub fn encrypt(&self, name: &str, plaintext: &[u8], associated_data: &[u8]) -> Result<Encrypted, Error> {
        let ring = self.cached(name)?;
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
        let ciphertext = crypto::encrypt(material, name, version, plaintext, associated_data);
        Ok(Encrypted { ciphertext, version })
    }

    /// Decrypts an envelope; returns the plaintext and the version used.
    pub fn decrypt(&self, name: &str, ciphertext: &[u8], associated_data: &[u8]) -> Result<(Vec<u8>, u32), Error> {
        let header = crypto::parse_header(ciphertext)?;
        let mut ring = self.cached(name)?;
        if ring.version(header.version).is_none() {
            ring = self.refresh(name)?;
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
        Ok((plaintext, header.version))
    }

    /// Creates a ring with one version. Durable when it returns.
    pub fn create(&self, name: &str, policy: KeyPolicy) -> Result<KeyRing, Error> {
        let key = KeyName::parse(name)?;
        let ring = KeyRing::new(key, Algorithm::Aes256Gcm, policy, self.clock.now());
        let ring = self.rings.create(ring).map_err(|e| match e {
            kmsd_keystore::Error::Conflict { name, .. } => Error::KeyExists(name),
            other => other.into(),
        })?;
        self.install(&ring);
        Ok(ring)
    }

    /// Reads a ring's metadata from the store.
    pub fn get(&self, name: &str) -> Result<KeyRing, Error> {
        let key = KeyName::parse(name)?;
        self.rings.get(&key)?.ok_or_else(|| Error::KeyNotFound(name.to_owned()))
    }

    /// Adds a version and makes it primary. Durable when it returns.
    pub fn rotate(&self, name: &str, reason: RotationReason) -> Result<KeyRing, Error> {
        let key = KeyName::parse(name)?;
        let now = self.clock.now();
        let (ring, new_version) = self.rings.update(&key, |r| r.rotate(now, reason))?;
        self.install(&ring);
        tracing::info!(key = name, from = new_version - 1, to = new_version, reason = ?reason, "key rotated");
        Ok(ring)
    }

    /// Lists key names.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        Ok(self.rings.list(prefix, after, limit)?)
    }

    /// Flushes the store (at shutdown).
    pub fn sync(&self) -> Result<(), Error> {
        Ok(self.rings.raw().sync()?)
    }
}
