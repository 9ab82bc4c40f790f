//! The data path: encryption under the primary version (a counted slot
//! from the reserved block, lock-free), decryption, and tokenization keys.
//! Reads only the in-memory cache; the one store read is a ring refresh
//! when a ciphertext names a version the cache lacks.
use super::{CachedRing, CachedVersion, Rings};
use crate::crypto;
use crate::error::{Error, Invalid, Limit, Precondition};
use kmsd_keystore::keyring::KeyPurpose;
use kmsd_keystore::VersionState;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
    pub(super) rotations_left: u32,
}

/// Default of `limits.max_rotations_per_call`.
pub const DEFAULT_MAX_ROTATIONS_PER_CALL: u32 = 16;

/// The operations counted against a version's usage limit like
/// encryptions (`max_encryptions_per_version`, reservation blocks, usage
/// rotation): each needs the ring's primary, ACTIVE, and a key of the
/// right type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counted {
    Encrypt,
    Mac,
    Sign,
}

impl Counted {
    fn action(self) -> &'static str {
        match self {
            Counted::Encrypt => "encryption",
            Counted::Mac => "MAC",
            Counted::Sign => "signing",
        }
    }

    fn check(self, name: &str, ring: &CachedRing) -> Result<(), Error> {
        match self {
            Counted::Encrypt => envelope_key(name, ring),
            Counted::Mac => key_type(name, ring, KeyPurpose::Mac, "compute MACs"),
            Counted::Sign => key_type(name, ring, KeyPurpose::SignVerify, "sign"),
        }
    }
}

/// FAILED_PRECONDITION naming the key's algorithm: the operation is not
/// one of its type (purpose separation).
fn wrong_type(name: &str, ring: &CachedRing, action: &'static str) -> Error {
    Error::FailedPrecondition(Precondition::WrongKeyType {
        key: name.to_owned(),
        algorithm: ring.algorithm.as_str(),
        action,
    })
}

pub(super) fn key_type(name: &str, ring: &CachedRing, purpose: KeyPurpose, action: &'static str) -> Result<(), Error> {
    if ring.purpose != purpose {
        return Err(wrong_type(name, ring, action));
    }
    Ok(())
}

/// Envelope operations refuse a token key and any key not for
/// encryption (purpose separation).
fn envelope_key(name: &str, ring: &CachedRing) -> Result<(), Error> {
    match ring.purpose {
        KeyPurpose::EncryptDecrypt => Ok(()),
        KeyPurpose::Tokenize => Err(Error::FailedPrecondition(Precondition::TokenKey {
            key: name.to_owned(),
        })),
        _ => Err(wrong_type(name, ring, "encrypt or decrypt")),
    }
}

/// How long a negative version look-up is trusted without a store read
/// (only matters when another process writes the same store).
const ABSENT_TTL_SECS: i64 = 5;

impl Rings {
    /// State for a call of up to `messages` encryptions.
    pub fn call(&self, messages: usize) -> EncryptCall {
        EncryptCall {
            fresh: crypto::Fresh::for_messages(messages),
            rotations_left: self.max_rotations_per_call.load(Ordering::Relaxed),
        }
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
        let EncryptCall { fresh, rotations_left } = call;
        let (ciphertext, version) = self.counted(rotations_left, name, Counted::Encrypt, |v, version| {
            let material = v
                .material
                .as_ref()
                .and_then(|m| m.aes())
                .ok_or_else(|| Error::Corrupt(name.to_owned()))?;
            crypto::encrypt_fresh(fresh, material, name, version, plaintext, associated_data)
        })?;
        Ok(Encrypted { ciphertext, version })
    }

    /// Runs `op` once with the ring's primary version after taking a
    /// counted slot of its usage (reserving blocks and rotating for usage
    /// as needed): encryptions, MACs and signatures alike.
    pub(super) fn counted<T>(
        self: &Arc<Self>,
        rotations_left: &mut u32,
        name: &str,
        kind: Counted,
        op: impl FnOnce(&CachedVersion, u32) -> Result<T, Error>,
    ) -> Result<(T, u32), Error> {
        self.check_fresh()?;
        let mut op = Some(op);
        for _ in 0..8 {
            match self.try_counted(rotations_left, name, kind, &mut op)? {
                Ok(done) => return Ok(done),
                Err(Slow::Reserve(v)) => self.reserve(name, v)?,
                Err(Slow::Rotate(v)) => {
                    if *rotations_left == 0 {
                        return Err(Error::TooLarge(Limit::UsageRotations {
                            key: name.to_owned(),
                            version: v,
                            max: self.max_rotations_per_call.load(Ordering::Relaxed),
                        }));
                    }
                    if self.rotate_for_usage(name, v)? {
                        *rotations_left -= 1;
                    }
                }
            }
        }
        Err(Error::Conflict(name.to_owned()))
    }

    /// The lock-free path: takes a counted slot and runs the operation.
    fn try_counted<T, F: FnOnce(&CachedVersion, u32) -> Result<T, Error>>(
        self: &Arc<Self>,
        rotations_left: &mut u32,
        name: &str,
        kind: Counted,
        op: &mut Option<F>,
    ) -> Result<Result<(T, u32), Slow>, Error> {
        let ring = self.cached(name)?;
        kind.check(name, &ring)?;
        let version = ring.primary;
        let v = ring.version(version).ok_or_else(|| Error::Corrupt(name.to_owned()))?;
        let has_key = v.material.is_some() || v.signer.is_some();
        if v.state != VersionState::Active || !has_key {
            return Err(Error::VersionUnusable {
                key: name.to_owned(),
                version,
                state: v.state,
                action: kind.action(),
            });
        }
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
            // charged to this call; without budget the next operation
            // (of whichever call) rotates in the foreground, on its budget
            if *rotations_left > 0 {
                *rotations_left -= 1;
                self.in_background(name, version, true);
            }
        } else if n + self.block() / 2 >= c.reserved.load(Ordering::Acquire)
            && !c.reserving.swap(true, Ordering::AcqRel)
        {
            self.in_background(name, version, false);
        }
        c.last_used.store(self.clock.now(), Ordering::Relaxed);
        let op = op.take().ok_or(Error::Internal("a counted operation ran twice"))?;
        Ok(Ok((op(v, version)?, version)))
    }

    /// Decrypts an envelope; returns the plaintext and the version used.
    pub fn decrypt(&self, name: &str, ciphertext: &[u8], associated_data: &[u8]) -> Result<(Vec<u8>, u32), Error> {
        let header = crypto::parse_header(ciphertext)?;
        self.check_fresh()?;
        let mut ring = self.cached(name)?;
        envelope_key(name, &ring)?;
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
        let material = match (v.state, v.material.as_ref().and_then(|m| m.aes())) {
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
        self.check_fresh()?;
        let ring = self.cached(name)?;
        if !matches!(ring.purpose, KeyPurpose::EncryptDecrypt | KeyPurpose::Tokenize) {
            return Err(wrong_type(name, &ring, "tokenize"));
        }
        if version.is_none() && ring.purpose == KeyPurpose::EncryptDecrypt && ring.breaks_tokens {
            // A token made now would silently stop matching after the
            // next automatic rotation.
            return Err(Error::FailedPrecondition(Precondition::RotatingTokenKey {
                key: name.to_owned(),
            }));
        }
        let (v, action) = match version {
            None => (ring.primary, "encryption"),
            Some(v) => (v.unwrap_or(ring.primary), "decryption"),
        };
        let Some(ver) = ring.version(v) else {
            return Err(Error::InvalidArgument(Invalid::NoSuchVersion {
                key: name.to_owned(),
                version: v,
            }));
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
        match (ver.material.as_ref().and_then(|m| m.aes()), usable) {
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
}
