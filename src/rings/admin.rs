//! Administration of key rings: create, rotate, change policy, the
//! generic `modify` under a ring's write lock, and restore from a backup.
//! Every change is durable in the store before the cache sees it.
use super::usage::pre_reserve;
use super::{lock, Rings};
use crate::error::{Error, Invalid, Precondition};
use kmsd_keystore::keyring::{KeyPolicy, KeyPurpose, RotationReason};
use kmsd_keystore::{Algorithm, KeyName, KeyRing};

/// Minimum rotation period (production, dev mode).
pub const MIN_ROTATION_PERIOD: (u64, u64) = (3_600, 1);

/// A change to a key's policy: only the fields the caller set (`Some`).
/// For the two limits, `0` disables the limit. Built from the API message
/// by `api::convert::policy_update`; applied at creation, at
/// `UpdateKeyPolicy`, and by an approved dual-control change (on top of
/// the policy as it is *then*, so changes made meanwhile are kept).
/// Serialized into a pending dual-control request (`authz::pending`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyUpdate {
    /// Rotation period, seconds (`0`: no scheduled rotation).
    pub rotation_period_secs: Option<u64>,
    /// Usage limit per version (`0`: none).
    pub max_encryptions_per_version: Option<u64>,
    /// Versions below this never decrypt.
    pub min_decryption_version: Option<u32>,
    /// Versions below this never encrypt.
    pub min_encryption_version: Option<u32>,
    /// Whether the whole key may be scheduled for deletion.
    pub deletion_allowed: Option<bool>,
    /// Whether a manual rotation restarts the rotation schedule.
    pub manual_rotation_resets_schedule: Option<bool>,
    /// Whether a token key may rotate automatically.
    pub allow_token_rotation: Option<bool>,
    /// Whether a key whose primary was imported may rotate to generated
    /// material. (`default`: pending requests stored before it existed.)
    #[serde(default)]
    pub allow_generated_rotation: Option<bool>,
}

impl PolicyUpdate {
    /// `base` with the set fields of this update applied.
    pub fn apply(&self, mut base: KeyPolicy) -> KeyPolicy {
        if let Some(s) = self.rotation_period_secs {
            base.rotation_period_secs = (s > 0).then_some(s);
        }
        if let Some(n) = self.max_encryptions_per_version {
            base.max_encryptions_per_version = (n > 0).then_some(n);
        }
        if let Some(v) = self.min_decryption_version {
            base.min_decryption_version = v;
        }
        if let Some(v) = self.min_encryption_version {
            base.min_encryption_version = v;
        }
        if let Some(b) = self.deletion_allowed {
            base.deletion_allowed = b;
        }
        if let Some(b) = self.manual_rotation_resets_schedule {
            base.manual_rotation_resets_schedule = b;
        }
        if let Some(b) = self.allow_token_rotation {
            base.allow_token_rotation = b;
        }
        if let Some(b) = self.allow_generated_rotation {
            base.allow_generated_rotation = b;
        }
        base
    }
}

impl Rings {
    /// Creates a ring with one version. Durable when it returns.
    pub fn create(&self, name: &str, policy: KeyPolicy) -> Result<KeyRing, Error> {
        self.create_for(name, policy, KeyPurpose::EncryptDecrypt)
    }

    /// Creates an AES ring for `purpose` with one version. Durable when it returns.
    pub fn create_for(&self, name: &str, policy: KeyPolicy, purpose: KeyPurpose) -> Result<KeyRing, Error> {
        self.create_key(name, Algorithm::Aes256Gcm, policy, purpose, false)
    }

    /// Creates a ring of `algorithm` for `purpose` (one the algorithm
    /// allows) with one version of generated material; `exportable` is
    /// fixed here. Durable when it returns. Generating an RSA key takes
    /// a while: call it off the async workers.
    pub fn create_key(
        &self,
        name: &str,
        algorithm: Algorithm,
        policy: KeyPolicy,
        purpose: KeyPurpose,
        exportable: bool,
    ) -> Result<KeyRing, Error> {
        let key = KeyName::parse(name)?;
        if !algorithm.allows(purpose) {
            return Err(Error::InvalidArgument(Invalid::AlgorithmPurpose {
                algorithm: algorithm.as_str(),
                purpose: purpose.as_str(),
            }));
        }
        self.check_policy(&policy)?;
        KeyRing::check_purpose_policy(purpose, &policy).map_err(|e| match e {
            e @ kmsd_keystore::Error::Precondition(_) => Error::InvalidArgument(Invalid::PurposePolicy(e)),
            other => other.into(),
        })?;
        let mut ring = KeyRing::new(key, algorithm, policy, self.clock.now())?
            .with_purpose(purpose)
            .exportable(exportable);
        pre_reserve(&mut ring, self.block());
        let ring = self.store.create(ring).map_err(|e| match e {
            kmsd_keystore::Error::Conflict { name, .. } => Error::KeyExists(name),
            other => other.into(),
        })?;
        self.install_new(&ring, 1);
        tracing::info!(key = name, "key created");
        Ok(ring)
    }

    pub(super) fn check_policy(&self, p: &KeyPolicy) -> Result<(), Error> {
        let min = if self.dev_mode {
            MIN_ROTATION_PERIOD.1
        } else {
            MIN_ROTATION_PERIOD.0
        };
        if p.rotation_period_secs.is_some_and(|s| s < min) {
            return Err(Error::InvalidArgument(Invalid::RotationPeriod { minimum: min }));
        }
        Ok(())
    }

    /// Applies `f` to the stored ring under the ring's write lock, then
    /// refreshes the cache. Durable when it returns.
    pub fn modify<T>(
        &self,
        name: &str,
        f: impl FnMut(&mut KeyRing) -> Result<T, kmsd_keystore::Error>,
    ) -> Result<(KeyRing, T), Error> {
        self.modify_fenced(name, None, f)
    }

    /// [`Rings::modify`] whose write also needs `fence` to hold
    /// (`Error::Fenced` otherwise, nothing written): scheduled work.
    pub(super) fn modify_fenced<T>(
        &self,
        name: &str,
        fence: Option<kmsd_keystore::Fence<'_>>,
        f: impl FnMut(&mut KeyRing) -> Result<T, kmsd_keystore::Error>,
    ) -> Result<(KeyRing, T), Error> {
        let key = KeyName::parse(name)?;
        let wl = self.write_lock(name);
        let _g = lock(&wl);
        let (ring, out) = self.store.update_fenced(&key, fence, f)?;
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

    /// Restores a snapshot into this (empty) store and loads its rings.
    /// Returns (records, key rings).
    pub fn restore(&self, snapshot: &[u8]) -> Result<(u64, u64), Error> {
        if !self.cache.is_empty() || !self.corrupt.is_empty() {
            return Err(Error::FailedPrecondition(Precondition::RestoreNotEmpty));
        }
        let records = kmsd_keystore::backup::read_snapshot(snapshot, self.store.sealer()).map_err(|e| match e {
            source @ kmsd_keystore::Error::Corrupt { reason, .. } => {
                Error::InvalidArgument(Invalid::Backup { reason, source })
            }
            other => other.into(),
        })?;
        let n = kmsd_keystore::backup::restore_snapshot(&self.store, &records, &mut |_, _| {})?;
        let mut rings = 0;
        let failures = self.store.load_all(|ring| {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_update_applies_only_its_set_fields_and_zero_disables_a_limit() {
        let base = KeyPolicy {
            rotation_period_secs: Some(7200),
            max_encryptions_per_version: Some(10),
            min_decryption_version: 2,
            deletion_allowed: true,
            ..KeyPolicy::default()
        };
        assert_eq!(PolicyUpdate::default().apply(base.clone()), base);
        let update = PolicyUpdate {
            rotation_period_secs: Some(0),
            max_encryptions_per_version: Some(20),
            min_encryption_version: Some(3),
            allow_token_rotation: Some(true),
            ..PolicyUpdate::default()
        };
        let p = update.apply(base.clone());
        assert_eq!(p.rotation_period_secs, None, "0 disables scheduled rotation");
        assert_eq!(p.max_encryptions_per_version, Some(20));
        assert_eq!((p.min_decryption_version, p.min_encryption_version), (2, 3));
        assert!(p.deletion_allowed && p.allow_token_rotation && !p.manual_rotation_resets_schedule);
        let p = PolicyUpdate {
            max_encryptions_per_version: Some(0),
            deletion_allowed: Some(false),
            ..PolicyUpdate::default()
        }
        .apply(base);
        assert_eq!((p.max_encryptions_per_version, p.deletion_allowed), (None, false));
    }
}
