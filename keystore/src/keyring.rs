//! Versioned key rings and their stored record format.
//!
//! A key ring is one record: its name, algorithm, policy, and every
//! version with its state, timestamps, counters and (unless destroyed)
//! material. One record per ring keeps each change atomic under a single
//! compare-and-swap.
//!
//! Record plaintext, format 1: the byte `1`, then the postcard encoding of
//! [`RingRecordV1`]. Format 2 (only for rings that need it: token keys,
//! `allow_token_rotation`): the byte `2`, the same postcard encoding of
//! [`RingRecordV1`], then the postcard encoding of [`RingExtV2`]. A ring
//! without those settings is still written in format 1, byte for byte as
//! before. The plaintext is built in a zeroizing buffer and only ever
//! leaves this module sealed.
use crate::error::Error;
use crate::name::KeyName;
use crate::secret::{KeyMaterial, KEY_LEN};
use crate::store::{RecordKind, Revision};
use crate::UnixTime;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;

/// What a key ring is for, fixed at creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyPurpose {
    /// Envelope encryption (and, for compatibility, tokens).
    #[default]
    EncryptDecrypt,
    /// Tokens only. A token is deterministic and a format-preserving one
    /// carries no version, so a token key never rotates automatically
    /// (scheduled or usage) unless its policy sets `allow_token_rotation`,
    /// and it never encrypts or decrypts envelopes.
    Tokenize,
}

impl KeyPurpose {
    fn id(self) -> u8 {
        match self {
            KeyPurpose::EncryptDecrypt => 0,
            KeyPurpose::Tokenize => 1,
        }
    }
}

/// The algorithm of a key ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Algorithm {
    /// AES-256-GCM with per-message derived keys.
    Aes256Gcm,
}

/// State of one key version (NIST SP 800-57 life cycle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionState {
    /// The primary version: encrypts and decrypts.
    Active,
    /// Decrypts only.
    DecryptOnly,
    /// Neither; reversible.
    Disabled,
    /// Will be destroyed at the version's `destroy_at`.
    ScheduledForDestruction,
    /// Material zeroized and removed; metadata kept.
    Destroyed,
}

impl VersionState {
    /// Upper-case name as used in the API and in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Active => "ACTIVE",
            VersionState::DecryptOnly => "DECRYPT_ONLY",
            VersionState::Disabled => "DISABLED",
            VersionState::ScheduledForDestruction => "SCHEDULED_FOR_DESTRUCTION",
            VersionState::Destroyed => "DESTROYED",
        }
    }
}

/// Per-key policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPolicy {
    /// Rotate when the primary version is this many seconds old.
    pub rotation_period_secs: Option<u64>,
    /// Rotate before a version encrypts more than this many messages.
    pub max_encryptions_per_version: Option<u64>,
    /// Versions below this never decrypt.
    pub min_decryption_version: u32,
    /// Versions below this never encrypt.
    pub min_encryption_version: u32,
    /// Whether the whole key may be scheduled for deletion.
    pub deletion_allowed: bool,
    /// Whether a manual rotation restarts the rotation schedule. Default
    /// false: an officer's ad-hoc rotation leaves the next scheduled
    /// rotation where it was, so the schedule stays predictable.
    pub manual_rotation_resets_schedule: bool,
    /// Whether a token key ([`KeyPurpose::Tokenize`]) may rotate
    /// automatically (scheduled or usage). Default false. Stored in the
    /// format-2 extension, not in the format-1 policy encoding.
    #[serde(skip)]
    pub allow_token_rotation: bool,
}

/// One version of a key ring.
#[derive(Debug, Clone)]
pub struct KeyVersion {
    /// 1-based, dense: version `n` is `versions[n - 1]`.
    pub version: u32,
    /// Life-cycle state.
    pub state: VersionState,
    /// When it was created.
    pub created_at: UnixTime,
    /// When a scheduled destruction takes effect.
    pub destroy_at: Option<UnixTime>,
    /// Encryptions reserved durably for this version (an upper bound of
    /// those performed).
    pub encryptions_reserved: u64,
    /// Decryptions recorded (best effort, persisted periodically).
    pub decryptions: u64,
    /// Last use (encrypt or decrypt), persisted periodically.
    pub last_used_at: Option<UnixTime>,
    /// The key material; `None` once destroyed.
    pub material: Option<KeyMaterial>,
}

/// Why a rotation happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationReason {
    /// An operator asked for it.
    Manual,
    /// The rotation period elapsed.
    Scheduled,
    /// The per-version encryption limit was reached.
    Usage,
}

/// A rotation, kept in the ring's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationEvent {
    /// When.
    pub at: UnixTime,
    /// Previous primary.
    pub from_version: u32,
    /// New primary.
    pub to_version: u32,
    /// Why.
    pub reason: RotationReason,
}

/// A versioned key ring.
#[derive(Debug, Clone)]
pub struct KeyRing {
    /// Its name.
    pub name: KeyName,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// When it was created.
    pub created_at: UnixTime,
    /// The version that encrypts.
    pub primary: u32,
    /// Every version, dense from 1.
    pub versions: Vec<KeyVersion>,
    /// Policy.
    pub policy: KeyPolicy,
    /// When the scheduler next rotates it (persisted so a restart keeps it).
    pub next_rotation_at: Option<UnixTime>,
    /// When the whole key is to be deleted, if scheduled.
    pub delete_at: Option<UnixTime>,
    /// Most recent rotations (bounded).
    pub rotations: Vec<RotationEvent>,
    /// What the ring is for (fixed at creation).
    pub purpose: KeyPurpose,
    /// The store revision this ring was read at (`None` if never stored).
    pub revision: Option<Revision>,
}

/// How many rotation events a ring keeps.
pub const MAX_ROTATION_EVENTS: usize = 64;

impl KeyRing {
    /// A new ring with one fresh ACTIVE version.
    pub fn new(name: KeyName, algorithm: Algorithm, policy: KeyPolicy, now: UnixTime) -> Self {
        let mut ring = KeyRing {
            name,
            algorithm,
            created_at: now,
            primary: 1,
            versions: vec![KeyVersion::fresh(1, now)],
            policy,
            next_rotation_at: None,
            delete_at: None,
            rotations: Vec::new(),
            purpose: KeyPurpose::EncryptDecrypt,
            revision: None,
        };
        ring.next_rotation_at = ring.compute_next_rotation();
        ring
    }

    /// The same new ring with another purpose (at creation only).
    pub fn with_purpose(mut self, purpose: KeyPurpose) -> Self {
        self.purpose = purpose;
        self.next_rotation_at = self.compute_next_rotation();
        self
    }

    /// Whether the ring may rotate by itself (scheduled or usage): always,
    /// except a token key whose policy does not set `allow_token_rotation`.
    pub fn rotates_automatically(&self) -> bool {
        self.purpose != KeyPurpose::Tokenize || self.policy.allow_token_rotation
    }

    /// Refuses an automatic-rotation policy on a token key that does not
    /// allow it (a silent change of every token otherwise).
    pub fn check_purpose_policy(purpose: KeyPurpose, policy: &KeyPolicy) -> Result<(), Error> {
        let automatic = policy.rotation_period_secs.is_some() || policy.max_encryptions_per_version.is_some();
        if purpose == KeyPurpose::Tokenize && automatic && !policy.allow_token_rotation {
            return Err(Error::Precondition(
                "a token key does not rotate automatically: tokens are deterministic and a format-preserving \
                 token carries no key version, so a rotation changes every token; set allow_token_rotation \
                 to accept that, or rotate by hand"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The version `v`, if it exists.
    pub fn version(&self, v: u32) -> Option<&KeyVersion> {
        self.versions.get((v as usize).checked_sub(1)?)
    }

    /// The primary version.
    pub fn primary_version(&self) -> Option<&KeyVersion> {
        self.version(self.primary)
    }

    /// When the primary is due for scheduled rotation.
    pub fn compute_next_rotation(&self) -> Option<UnixTime> {
        if !self.rotates_automatically() {
            return None;
        }
        let period = self.policy.rotation_period_secs?;
        let created = self.primary_version()?.created_at;
        Some(created.saturating_add(i64::try_from(period).unwrap_or(i64::MAX)))
    }

    /// Adds a fresh version, makes it primary, and demotes the old primary
    /// to DECRYPT_ONLY. Returns the new version number.
    ///
    /// The next scheduled rotation is `new primary's created_at + period`,
    /// except after a manual rotation when the policy does not reset the
    /// schedule (then it stays where it was).
    pub fn rotate(&mut self, now: UnixTime, reason: RotationReason) -> Result<u32, Error> {
        if self.delete_at.is_some() {
            return Err(Error::Precondition(format!(
                "key {:?} is scheduled for deletion",
                self.name.as_str()
            )));
        }
        if reason != RotationReason::Manual && !self.rotates_automatically() {
            return Err(Error::Precondition(format!(
                "token key {:?} does not rotate automatically (allow_token_rotation is off)",
                self.name.as_str()
            )));
        }
        let old = self.primary;
        let next = u32::try_from(self.versions.len())
            .ok()
            .and_then(|n| n.checked_add(1))
            .ok_or_else(|| Error::Precondition("key ring has too many versions".into()))?;
        if let Some(v) = self.version_mut(old) {
            if v.state == VersionState::Active {
                v.state = VersionState::DecryptOnly;
            }
        }
        self.versions.push(KeyVersion::fresh(next, now));
        self.primary = next;
        let keep_schedule = reason == RotationReason::Manual
            && !self.policy.manual_rotation_resets_schedule
            && self.next_rotation_at.is_some();
        if !keep_schedule {
            self.next_rotation_at = self.compute_next_rotation();
        }
        self.rotations.push(RotationEvent {
            at: now,
            from_version: old,
            to_version: next,
            reason,
        });
        if self.rotations.len() > MAX_ROTATION_EVENTS {
            let excess = self.rotations.len() - MAX_ROTATION_EVENTS;
            self.rotations.drain(..excess);
        }
        Ok(next)
    }

    /// Mutable access to version `v`.
    pub fn version_mut(&mut self, v: u32) -> Option<&mut KeyVersion> {
        self.versions.get_mut((v as usize).checked_sub(1)?)
    }

    fn existing_mut(&mut self, v: u32) -> Result<&mut KeyVersion, Error> {
        let name = self.name.to_string();
        self.version_mut(v)
            .ok_or_else(|| Error::Precondition(format!("key {name:?} has no version {v}")))
    }

    /// Whether a scheduled rotation is due at `now`.
    pub fn rotation_due(&self, now: UnixTime) -> bool {
        self.delete_at.is_none() && self.next_rotation_at.is_some_and(|t| t <= now)
    }

    /// Moves a non-primary version between DECRYPT_ONLY and DISABLED.
    pub fn set_version_state(&mut self, v: u32, state: VersionState) -> Result<(), Error> {
        if !matches!(state, VersionState::DecryptOnly | VersionState::Disabled) {
            return Err(Error::Precondition(
                "only DECRYPT_ONLY and DISABLED can be set directly; rotate to make a new ACTIVE version, \
                 and schedule destruction to destroy one"
                    .into(),
            ));
        }
        if v == self.primary {
            return Err(Error::Precondition(format!(
                "version {v} is the primary; rotate before changing its state"
            )));
        }
        let ver = self.existing_mut(v)?;
        match ver.state {
            VersionState::DecryptOnly | VersionState::Disabled => {
                ver.state = state;
                Ok(())
            }
            other => Err(Error::Precondition(format!(
                "version {v} is {}; its state cannot be changed",
                other.as_str()
            ))),
        }
    }

    /// Schedules version `v` for destruction at `at`.
    pub fn schedule_destruction(&mut self, v: u32, at: UnixTime) -> Result<(), Error> {
        if v == self.primary && self.delete_at.is_none() {
            return Err(Error::Precondition(format!(
                "version {v} is the primary; rotate before destroying it"
            )));
        }
        let ver = self.existing_mut(v)?;
        match ver.state {
            VersionState::DecryptOnly | VersionState::Disabled | VersionState::ScheduledForDestruction => {
                ver.state = VersionState::ScheduledForDestruction;
                ver.destroy_at = Some(at);
                Ok(())
            }
            other => Err(Error::Precondition(format!("version {v} is {}", other.as_str()))),
        }
    }

    /// Cancels a scheduled destruction; the version becomes DISABLED.
    pub fn cancel_destruction(&mut self, v: u32) -> Result<(), Error> {
        if self.delete_at.is_some() {
            return Err(Error::Precondition(
                "the whole key is scheduled for deletion; cancel that instead".into(),
            ));
        }
        let ver = self.existing_mut(v)?;
        if ver.state != VersionState::ScheduledForDestruction {
            return Err(Error::Precondition(format!(
                "version {v} is {}, not scheduled",
                ver.state.as_str()
            )));
        }
        ver.state = VersionState::Disabled;
        ver.destroy_at = None;
        Ok(())
    }

    /// Schedules every version for destruction at `at` (whole-key deletion).
    pub fn schedule_deletion(&mut self, at: UnixTime) -> Result<(), Error> {
        if !self.policy.deletion_allowed {
            return Err(Error::Precondition(format!(
                "key {:?} does not allow deletion (policy deletion_allowed is false)",
                self.name.as_str()
            )));
        }
        self.delete_at = Some(at);
        for ver in &mut self.versions {
            if ver.state != VersionState::Destroyed {
                ver.state = VersionState::ScheduledForDestruction;
                ver.destroy_at = Some(at);
            }
        }
        Ok(())
    }

    /// Cancels a whole-key deletion: the primary is ACTIVE again, the other
    /// surviving versions DISABLED.
    pub fn cancel_deletion(&mut self) -> Result<(), Error> {
        if self.delete_at.take().is_none() {
            return Err(Error::Precondition("the key is not scheduled for deletion".into()));
        }
        let primary = self.primary;
        for ver in &mut self.versions {
            if ver.state == VersionState::ScheduledForDestruction {
                ver.state = if ver.version == primary {
                    VersionState::Active
                } else {
                    VersionState::Disabled
                };
                ver.destroy_at = None;
            }
        }
        Ok(())
    }

    /// Destroys versions whose destruction time has come: material
    /// dropped (zeroized), state DESTROYED, metadata kept. Returns the
    /// versions destroyed.
    pub fn destroy_due(&mut self, now: UnixTime) -> Vec<u32> {
        let mut done = Vec::new();
        for ver in &mut self.versions {
            if ver.state == VersionState::ScheduledForDestruction && ver.destroy_at.is_some_and(|t| t <= now) {
                ver.state = VersionState::Destroyed;
                ver.material = None; // KeyMaterial zeroizes on drop
                done.push(ver.version);
            }
        }
        done
    }

    /// The earliest pending destruction time.
    pub fn next_destruction(&self) -> Option<UnixTime> {
        self.versions
            .iter()
            .filter(|v| v.state == VersionState::ScheduledForDestruction)
            .filter_map(|v| v.destroy_at)
            .min()
    }

    /// Replaces the policy after checking it against the ring.
    pub fn set_policy(&mut self, policy: KeyPolicy) -> Result<(), Error> {
        Self::check_purpose_policy(self.purpose, &policy)?;
        if policy.min_encryption_version > self.primary {
            return Err(Error::Precondition(format!(
                "min_encryption_version {} is above the primary version {}; rotate first",
                policy.min_encryption_version, self.primary
            )));
        }
        if policy.min_decryption_version > self.primary {
            return Err(Error::Precondition(format!(
                "min_decryption_version {} is above the primary version {}",
                policy.min_decryption_version, self.primary
            )));
        }
        if policy.max_encryptions_per_version == Some(0) || policy.rotation_period_secs == Some(0) {
            return Err(Error::Precondition(
                "limits must be positive (omit them to disable)".into(),
            ));
        }
        let period_changed = policy.rotation_period_secs != self.policy.rotation_period_secs
            || policy.allow_token_rotation != self.policy.allow_token_rotation;
        self.policy = policy;
        if period_changed {
            self.next_rotation_at = self.compute_next_rotation();
        }
        Ok(())
    }

    /// Encodes the ring as record plaintext (zeroizing buffer).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let rec = RingRecordV1 {
            algorithm: self.algorithm,
            created_at: self.created_at,
            primary: self.primary,
            versions: self
                .versions
                .iter()
                .map(|v| VersionRecordV1 {
                    version: v.version,
                    state: v.state as u8,
                    created_at: v.created_at,
                    destroy_at: v.destroy_at,
                    encryptions_reserved: v.encryptions_reserved,
                    decryptions: v.decryptions,
                    last_used_at: v.last_used_at,
                    material: v.material.as_ref().map(|m| *m.expose_secret()),
                })
                .collect(),
            policy: self.policy.clone(),
            next_rotation_at: self.next_rotation_at,
            delete_at: self.delete_at,
            rotations: self.rotations.clone(),
        };
        let ext = RingExtV2 {
            purpose: self.purpose.id(),
            allow_token_rotation: self.policy.allow_token_rotation,
        };
        let format = if ext == RingExtV2::default() {
            RECORD_V1
        } else {
            RECORD_V2
        };
        // Size the buffer up front so postcard never reallocates (a
        // reallocation would leave an unzeroized copy of key material).
        let mut cap = 512 + self.versions.len() * 128 + self.rotations.len() * 40;
        loop {
            let mut buf = Zeroizing::new(vec![0u8; cap]);
            if let Some(first) = buf.first_mut() {
                *first = format;
            }
            let used = match buf.get_mut(1..) {
                Some(tail) => postcard::to_slice(&rec, tail).map(|s| s.len()).and_then(|n| {
                    if format == RECORD_V1 {
                        return Ok(n);
                    }
                    match tail.get_mut(n..) {
                        Some(rest) => postcard::to_slice(&ext, rest).map(|s| n + s.len()),
                        None => Err(postcard::Error::SerializeBufferFull),
                    }
                }),
                None => Err(postcard::Error::SerializeBufferFull),
            };
            match used {
                Ok(n) => {
                    buf.truncate(1 + n);
                    return buf;
                }
                Err(_) => cap *= 2,
            }
        }
    }

    /// Decodes record plaintext for the ring `name`.
    pub fn decode(name: &KeyName, plain: &[u8], revision: Revision) -> Result<Self, Error> {
        let corrupt = |reason| Error::Corrupt {
            kind: RecordKind::KeyRing,
            name: name.to_string(),
            reason,
        };
        let (&format, body) = plain.split_first().ok_or_else(|| corrupt("empty record"))?;
        let (rec, ext) = match format {
            RECORD_V1 => (
                postcard::from_bytes::<RingRecordV1>(body).map_err(|_| corrupt("key ring record does not decode"))?,
                RingExtV2::default(),
            ),
            RECORD_V2 => {
                let (rec, rest) = postcard::take_from_bytes::<RingRecordV1>(body)
                    .map_err(|_| corrupt("key ring record does not decode"))?;
                let ext: RingExtV2 =
                    postcard::from_bytes(rest).map_err(|_| corrupt("key ring record extension does not decode"))?;
                (rec, ext)
            }
            _ => return Err(corrupt("unknown key ring record format")),
        };
        let purpose = match ext.purpose {
            0 => KeyPurpose::EncryptDecrypt,
            1 => KeyPurpose::Tokenize,
            _ => return Err(corrupt("unknown key purpose")),
        };
        let mut policy = rec.policy.clone();
        policy.allow_token_rotation = ext.allow_token_rotation;
        let mut versions = Vec::with_capacity(rec.versions.len());
        for (i, v) in rec.versions.iter().enumerate() {
            if v.version as usize != i + 1 {
                return Err(corrupt("key ring versions are not dense"));
            }
            let state = match v.state {
                0 => VersionState::Active,
                1 => VersionState::DecryptOnly,
                2 => VersionState::Disabled,
                3 => VersionState::ScheduledForDestruction,
                4 => VersionState::Destroyed,
                _ => return Err(corrupt("unknown version state")),
            };
            versions.push(KeyVersion {
                version: v.version,
                state,
                created_at: v.created_at,
                destroy_at: v.destroy_at,
                encryptions_reserved: v.encryptions_reserved,
                decryptions: v.decryptions,
                last_used_at: v.last_used_at,
                material: v.material.as_ref().map(KeyMaterial::from_bytes),
            });
        }
        if rec.primary == 0 || rec.primary as usize > versions.len() {
            return Err(corrupt("primary version does not exist"));
        }
        Ok(KeyRing {
            name: name.clone(),
            algorithm: rec.algorithm,
            created_at: rec.created_at,
            primary: rec.primary,
            versions,
            policy,
            next_rotation_at: rec.next_rotation_at,
            delete_at: rec.delete_at,
            rotations: rec.rotations.clone(),
            purpose,
            revision: Some(revision),
        })
    }
}

impl KeyVersion {
    fn fresh(version: u32, now: UnixTime) -> Self {
        KeyVersion {
            version,
            state: VersionState::Active,
            created_at: now,
            destroy_at: None,
            encryptions_reserved: 0,
            decryptions: 0,
            last_used_at: None,
            material: Some(KeyMaterial::generate()),
        }
    }
}

/// Stored form of a ring (format 1). Zeroized on drop because it holds
/// copies of key material while being encoded or decoded.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct RingRecordV1 {
    #[zeroize(skip)]
    algorithm: Algorithm,
    created_at: i64,
    primary: u32,
    versions: Vec<VersionRecordV1>,
    #[zeroize(skip)]
    policy: KeyPolicy,
    next_rotation_at: Option<i64>,
    delete_at: Option<i64>,
    #[zeroize(skip)]
    rotations: Vec<RotationEvent>,
}

/// Format-2 extension of a ring record (no secrets).
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RingExtV2 {
    /// [`KeyPurpose`] id: 0 encrypt/decrypt, 1 tokenize.
    purpose: u8,
    /// [`KeyPolicy::allow_token_rotation`].
    allow_token_rotation: bool,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct VersionRecordV1 {
    version: u32,
    state: u8,
    created_at: i64,
    destroy_at: Option<i64>,
    encryptions_reserved: u64,
    decryptions: u64,
    last_used_at: Option<i64>,
    material: Option<[u8; KEY_LEN]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let name = KeyName::parse("k").unwrap();
        let mut ring = KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 100);
        ring.rotate(200, RotationReason::Manual).unwrap();
        let enc = ring.encode();
        let back = KeyRing::decode(&name, &enc, Revision(3)).unwrap();
        assert_eq!(back.primary, 2);
        assert_eq!(back.versions.len(), 2);
        assert_eq!(back.versions[0].state, VersionState::DecryptOnly);
        assert_eq!(back.versions[1].state, VersionState::Active);
        assert_eq!(
            back.versions[0].material.as_ref().unwrap().expose_secret(),
            ring.versions[0].material.as_ref().unwrap().expose_secret()
        );
        assert_eq!(back.rotations.len(), 1);
        for n in 0..enc.len() {
            let _ = KeyRing::decode(&name, &enc[..n], Revision(1)); // never panics
        }
    }

    #[test]
    fn token_keys_use_format_2_and_never_rotate_by_themselves() {
        let name = KeyName::parse("t").unwrap();
        let plain = KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 100);
        assert_eq!(plain.encode()[0], RECORD_V1, "ordinary rings keep format 1");
        let mut tok = KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 100)
            .with_purpose(KeyPurpose::Tokenize);
        let enc = tok.encode();
        assert_eq!(enc[0], RECORD_V2);
        let back = KeyRing::decode(&name, &enc, Revision(1)).unwrap();
        assert_eq!(back.purpose, KeyPurpose::Tokenize);
        assert!(!back.policy.allow_token_rotation);
        for n in 0..enc.len() {
            let _ = KeyRing::decode(&name, &enc[..n], Revision(1)); // never panics
        }
        // automatic rotation is refused, by policy and at the rotation itself
        let auto = KeyPolicy {
            rotation_period_secs: Some(3600),
            ..KeyPolicy::default()
        };
        assert!(matches!(tok.set_policy(auto.clone()), Err(Error::Precondition(_))));
        assert!(tok.rotate(200, RotationReason::Scheduled).is_err());
        assert!(tok.rotate(200, RotationReason::Usage).is_err());
        assert_eq!(tok.rotate(200, RotationReason::Manual).unwrap(), 2);
        // unless asked
        tok.set_policy(KeyPolicy {
            allow_token_rotation: true,
            ..auto
        })
        .unwrap();
        assert!(tok.next_rotation_at.is_some());
        assert_eq!(tok.rotate(300, RotationReason::Scheduled).unwrap(), 3);
        let back = KeyRing::decode(&name, &tok.encode(), Revision(2)).unwrap();
        assert!(back.policy.allow_token_rotation);
        assert_eq!(back.policy.rotation_period_secs, Some(3600));
    }

    #[test]
    fn large_ring_encodes() {
        let name = KeyName::parse("big").unwrap();
        let mut ring = KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 1);
        for t in 0..1000 {
            ring.rotate(t, RotationReason::Scheduled).unwrap();
        }
        let back = KeyRing::decode(&name, &ring.encode(), Revision(1)).unwrap();
        assert_eq!(back.versions.len(), 1001);
        assert_eq!(back.rotations.len(), MAX_ROTATION_EVENTS);
    }
}
