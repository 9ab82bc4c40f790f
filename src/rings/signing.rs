//! MACs and signatures on the data path: `Mac` and `Sign` with the
//! primary ACTIVE version, counted like encryptions (usage limit,
//! reservation blocks, usage rotation: `data::Counted`); `VerifyMac`,
//! `Verify`, `GetPublicKey` and MACs under a named version with a version
//! that may still verify (ACTIVE or DECRYPT_ONLY, not below
//! `min_decryption_version`), counted as decryptions. Reads only the
//! in-memory cache (one store read when a request names a version the
//! cache lacks). The primitives are `kmsd_keystore::sign`'s.
use super::data::{key_type, Counted};
use super::{CachedRing, CachedVersion, EncryptCall, Rings};
use crate::error::{Error, Invalid};
use kmsd_keystore::keyring::KeyPurpose;
use kmsd_keystore::sign::{self, PublicKey, SigEncoding, SignInput};
use kmsd_keystore::{Algorithm, VersionState};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A signature and what made it.
#[derive(Debug)]
pub struct Signed {
    /// The signature.
    pub signature: Vec<u8>,
    /// The version that signed.
    pub version: u32,
    /// The key's algorithm.
    pub algorithm: Algorithm,
}

/// A version's public key.
#[derive(Debug)]
pub struct Public {
    /// The key.
    pub key: PublicKey,
    /// Its version.
    pub version: u32,
    /// The key's algorithm.
    pub algorithm: Algorithm,
}

impl Rings {
    /// The MAC of `data` under the primary version (counted), or under
    /// `version` (`Some`, non-zero: a version that may still verify, for a
    /// blind-index look-up across a rotation; not counted).
    pub fn mac_in(
        self: &Arc<Self>,
        call: &mut EncryptCall,
        name: &str,
        version: Option<u32>,
        data: &[u8],
    ) -> Result<(Vec<u8>, u32), Error> {
        if let Some(v) = version.filter(|v| *v != 0) {
            return self.verifying(name, v, KeyPurpose::Mac, "compute MACs", |ring, cv| {
                let m = cv.material.as_ref().ok_or_else(|| Error::Corrupt(name.to_owned()))?;
                Ok(sign::mac(ring.algorithm, m, data)?)
            });
        }
        let algorithm = self.cached(name)?.algorithm;
        self.counted(&mut call.rotations_left, name, Counted::Mac, |v, _| {
            let m = v.material.as_ref().ok_or_else(|| Error::Corrupt(name.to_owned()))?;
            Ok(sign::mac(algorithm, m, data)?)
        })
    }

    /// Whether `tag` is the MAC of `data` under `version` (0 = primary),
    /// compared in constant time.
    pub fn verify_mac(&self, name: &str, version: u32, data: &[u8], tag: &[u8]) -> Result<(bool, u32), Error> {
        self.verifying(name, version, KeyPurpose::Mac, "verify MACs", |ring, cv| {
            let m = cv.material.as_ref().ok_or_else(|| Error::Corrupt(name.to_owned()))?;
            Ok(sign::verify_mac(ring.algorithm, m, data, tag)?)
        })
    }

    /// Signs with the primary version (counted).
    pub fn sign_in(
        self: &Arc<Self>,
        call: &mut EncryptCall,
        name: &str,
        input: SignInput<'_>,
        encoding: SigEncoding,
    ) -> Result<Signed, Error> {
        let algorithm = self.cached(name)?.algorithm;
        let (signature, version) = self.counted(&mut call.rotations_left, name, Counted::Sign, |v, _| {
            let key = v.signer.as_ref().ok_or_else(|| Error::Corrupt(name.to_owned()))?;
            Ok(key.sign(input, encoding)?)
        })?;
        Ok(Signed {
            signature,
            version,
            algorithm,
        })
    }

    /// Whether `signature` is valid for `input` under `version` (0 = primary).
    pub fn verify_signature(
        &self,
        name: &str,
        version: u32,
        input: SignInput<'_>,
        signature: &[u8],
        encoding: SigEncoding,
    ) -> Result<(bool, u32, Algorithm), Error> {
        self.verifying(
            name,
            version,
            KeyPurpose::SignVerify,
            "verify signatures",
            |ring, cv| {
                let key = cv.signer.as_ref().ok_or_else(|| Error::Corrupt(name.to_owned()))?;
                Ok((key.public_key().verify(input, signature, encoding)?, ring.algorithm))
            },
        )
        .map(|((ok, alg), v)| (ok, v, alg))
    }

    /// The public key of `version` (0 = primary).
    pub fn public_key(&self, name: &str, version: u32) -> Result<Public, Error> {
        self.verifying(
            name,
            version,
            KeyPurpose::SignVerify,
            "have a public key",
            |ring, cv| {
                let key = cv.signer.as_ref().ok_or_else(|| Error::Corrupt(name.to_owned()))?;
                Ok((key.public_key().clone(), ring.algorithm))
            },
        )
        .map(|((key, algorithm), version)| Public {
            key,
            version,
            algorithm,
        })
    }

    /// Runs `f` with `version` (0 = primary) of a ring of `purpose`, if it
    /// may verify: it exists (a version the cache lacks is looked up in the
    /// store once), is ACTIVE or DECRYPT_ONLY, and is not below
    /// `min_decryption_version`. Counted as a use (decryptions, last use).
    fn verifying<T>(
        &self,
        name: &str,
        version: u32,
        purpose: KeyPurpose,
        action: &'static str,
        f: impl FnOnce(&CachedRing, &CachedVersion) -> Result<T, Error>,
    ) -> Result<(T, u32), Error> {
        self.check_fresh()?;
        let mut ring = self.cached(name)?;
        key_type(name, &ring, purpose, action)?;
        let v = if version == 0 { ring.primary } else { version };
        if ring.version(v).is_none() {
            ring = self.refresh(name)?;
        }
        let Some(cv) = ring.version(v) else {
            return Err(Error::InvalidArgument(Invalid::NoSuchVersion {
                key: name.to_owned(),
                version: v,
            }));
        };
        if v < ring.min_decryption_version {
            return Err(Error::VersionBelowMinimum {
                key: name.to_owned(),
                version: v,
                minimum: ring.min_decryption_version,
                action: "verification",
            });
        }
        if !matches!(cv.state, VersionState::Active | VersionState::DecryptOnly) {
            return Err(Error::VersionUnusable {
                key: name.to_owned(),
                version: v,
                state: cv.state,
                action: "verification",
            });
        }
        let out = f(&ring, cv)?;
        cv.counters.decryptions.fetch_add(1, Ordering::Relaxed);
        cv.counters.last_used.store(self.clock.now(), Ordering::Relaxed);
        cv.counters.dirty.store(true, Ordering::Release);
        Ok((out, v))
    }
}
