//! Key material brought in from elsewhere (`ImportKeyVersion`): a new
//! primary version of an existing ring (origin IMPORTED, rotation reason
//! IMPORT), or a new ring with it as version 1. The material is checked
//! against the algorithm by the keystore (`Material::import`).
use super::usage::pre_reserve;
use super::Rings;
use crate::error::{Error, Invalid, Transfer};
use kmsd_keystore::keyring::{KeyPolicy, KeyPurpose, RotationReason};
use kmsd_keystore::{Algorithm, KeyName, KeyRing};

/// A key `ImportKeyVersion` creates: what `CreateKey` would fix.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Its policy.
    pub policy: KeyPolicy,
    /// Its purpose (one the algorithm allows).
    pub purpose: KeyPurpose,
    /// Whether its versions may be exported.
    pub exportable: bool,
}

impl Rings {
    /// Imports `material` of `algorithm` into key `name`: a new primary if
    /// the key exists (its algorithm must be `algorithm`), else a new key
    /// made as `new` says (the caller checked `key.create`). Durable when
    /// it returns.
    pub fn import(
        &self,
        name: &str,
        algorithm: Algorithm,
        material: &[u8],
        new: Option<NewKey>,
    ) -> Result<KeyRing, Error> {
        let now = self.clock.now();
        let block = self.block();
        let Some(new) = new else {
            let (ring, version) = self.modify(name, |r| {
                let v = r.import_version(algorithm, material, now)?;
                pre_reserve(r, block);
                Ok(v)
            })?;
            self.count_rotation(RotationReason::Import);
            tracing::info!(key = name, version, "key version imported");
            return Ok(ring);
        };
        let key = KeyName::parse(name)?;
        if !algorithm.allows(new.purpose) {
            return Err(Error::InvalidArgument(Invalid::AlgorithmPurpose {
                algorithm: algorithm.as_str(),
                purpose: new.purpose.as_str(),
            }));
        }
        self.check_policy(&new.policy)?;
        KeyRing::check_purpose_policy(new.purpose, &new.policy).map_err(|e| match e {
            e @ kmsd_keystore::Error::Precondition(_) => Error::InvalidArgument(Invalid::PurposePolicy(e)),
            other => other.into(),
        })?;
        let mut ring =
            KeyRing::new_imported(key, algorithm, new.policy, material, new.exportable, now)?.with_purpose(new.purpose);
        pre_reserve(&mut ring, block);
        let ring = self.store.create(ring).map_err(|e| match e {
            kmsd_keystore::Error::Conflict { name, .. } => Error::KeyExists(name),
            other => other.into(),
        })?;
        self.install_new(&ring, 1);
        tracing::info!(key = name, "key created from imported material");
        Ok(ring)
    }

    /// Whether the key exists, and its algorithm (before an import).
    pub fn algorithm_of(&self, name: &str) -> Result<Option<Algorithm>, Error> {
        match self.get(name) {
            Ok(r) => Ok(Some(r.algorithm)),
            Err(Error::KeyNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Version `version` (0 = the primary) of exportable key `name`,
    /// wrapped for `wrapping`: what an approved `ExportKeyVersion` hands
    /// back. The material is read from the store and wrapped at once.
    pub fn export(
        &self,
        name: &str,
        version: u32,
        wrapping: &kmsd_keystore::wrap::WrappingPublicKey,
    ) -> Result<(Vec<u8>, Algorithm, u32), Error> {
        let ring = self.get(name)?;
        if !ring.exportable {
            return Err(Error::Transfer(Transfer::NotExportable { key: name.to_owned() }));
        }
        let v = if version == 0 { ring.primary } else { version };
        let kv = ring.version(v).ok_or_else(|| {
            Error::InvalidArgument(Invalid::NoSuchVersion {
                key: name.to_owned(),
                version: v,
            })
        })?;
        let material = kv.material.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(crate::error::Precondition::Ring(kmsd_keystore::Error::Precondition(
                format!(
                    "key {name:?} version {v} is {}: its material is gone",
                    kv.state.as_str()
                ),
            )))
        })?;
        let wrapped = wrapping
            .wrap_material(material)
            .map_err(|e| Error::Transfer(Transfer::Wrap(e)))?;
        Ok((wrapped, ring.algorithm, v))
    }
}
