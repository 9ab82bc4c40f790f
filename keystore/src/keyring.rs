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
//! before. Format 3 (only for rings that need it: an algorithm other than
//! AES-256-GCM, an imported version, `exportable`, or
//! `allow_generated_rotation`): the byte `3`, then the postcard encoding of
//! [`RingRecordV3`], which holds every field of formats 1 and 2 plus each
//! version's origin and variable-length material. The plaintext is built
//! in a zeroizing buffer and only ever leaves this module sealed.
use crate::error::Error;
use crate::material::{Material, MAX_MATERIAL_LEN};
use crate::name::KeyName;
use crate::secret::{KeyMaterial, SecretBytes, KEY_LEN};
use crate::store::{RecordKind, Revision};
use crate::UnixTime;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;
const RECORD_V3: u8 = 3;

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
    /// MACs (the purpose of HMAC keys).
    Mac,
    /// Signatures (the purpose of ECDSA, RSA-PSS and Ed25519 keys).
    SignVerify,
}

impl KeyPurpose {
    fn id(self) -> u8 {
        match self {
            KeyPurpose::EncryptDecrypt => 0,
            KeyPurpose::Tokenize => 1,
            KeyPurpose::Mac => 2,
            KeyPurpose::SignVerify => 3,
        }
    }

    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => KeyPurpose::EncryptDecrypt,
            1 => KeyPurpose::Tokenize,
            2 => KeyPurpose::Mac,
            3 => KeyPurpose::SignVerify,
            _ => return None,
        })
    }

    /// Upper-case name as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::EncryptDecrypt => "ENCRYPT_DECRYPT",
            KeyPurpose::Tokenize => "TOKENIZE",
            KeyPurpose::Mac => "MAC",
            KeyPurpose::SignVerify => "SIGN_VERIFY",
        }
    }
}

/// The algorithm of a key ring, fixed at creation; it decides the ring's
/// purpose ([`Algorithm::purposes`]). Stored as its serde variant index:
/// new variants go at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Algorithm {
    /// AES-256-GCM with per-message derived keys.
    Aes256Gcm,
    /// HMAC-SHA256, 256-bit key.
    HmacSha256,
    /// HMAC-SHA512, 512-bit key.
    HmacSha512,
    /// ECDSA on P-256 with SHA-256 (JWS ES256).
    EcdsaP256Sha256,
    /// RSASSA-PSS, 3072-bit modulus, SHA-256, MGF1-SHA-256, 32-byte salt.
    RsaPss3072Sha256,
    /// The same with a 4096-bit modulus.
    RsaPss4096Sha256,
    /// Ed25519 (RFC 8032).
    Ed25519,
}

impl Algorithm {
    /// Every algorithm, in API order.
    pub const ALL: [Algorithm; 7] = [
        Algorithm::Aes256Gcm,
        Algorithm::HmacSha256,
        Algorithm::HmacSha512,
        Algorithm::EcdsaP256Sha256,
        Algorithm::RsaPss3072Sha256,
        Algorithm::RsaPss4096Sha256,
        Algorithm::Ed25519,
    ];

    /// Upper-case name as in the API (`AES_256_GCM`, `HMAC_SHA256`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Aes256Gcm => "AES_256_GCM",
            Algorithm::HmacSha256 => "HMAC_SHA256",
            Algorithm::HmacSha512 => "HMAC_SHA512",
            Algorithm::EcdsaP256Sha256 => "ECDSA_P256_SHA256",
            Algorithm::RsaPss3072Sha256 => "RSA_PSS_3072_SHA256",
            Algorithm::RsaPss4096Sha256 => "RSA_PSS_4096_SHA256",
            Algorithm::Ed25519 => "ED25519",
        }
    }

    /// The purpose a new ring of this algorithm gets.
    pub fn default_purpose(self) -> KeyPurpose {
        match self {
            Algorithm::Aes256Gcm => KeyPurpose::EncryptDecrypt,
            Algorithm::HmacSha256 | Algorithm::HmacSha512 => KeyPurpose::Mac,
            _ => KeyPurpose::SignVerify,
        }
    }

    /// Whether a ring of this algorithm may have `purpose` (AES: encrypt
    /// or tokenize; HMAC: MAC; the others: sign and verify).
    pub fn allows(self, purpose: KeyPurpose) -> bool {
        match self {
            Algorithm::Aes256Gcm => matches!(purpose, KeyPurpose::EncryptDecrypt | KeyPurpose::Tokenize),
            _ => purpose == self.default_purpose(),
        }
    }

    /// Whether it signs (ECDSA, RSA-PSS, Ed25519).
    pub fn is_signing(self) -> bool {
        self.default_purpose() == KeyPurpose::SignVerify
    }

    /// The key length of an HMAC algorithm.
    pub fn hmac_key_len(self) -> Option<usize> {
        match self {
            Algorithm::HmacSha256 => Some(32),
            Algorithm::HmacSha512 => Some(64),
            _ => None,
        }
    }

    /// The modulus size of an RSA algorithm.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            Algorithm::RsaPss3072Sha256 => Some(3072),
            Algorithm::RsaPss4096Sha256 => Some(4096),
            _ => None,
        }
    }

    /// The JWS `alg` of a signing algorithm.
    pub fn jws_alg(self) -> Option<&'static str> {
        match self {
            Algorithm::EcdsaP256Sha256 => Some("ES256"),
            Algorithm::RsaPss3072Sha256 | Algorithm::RsaPss4096Sha256 => Some("PS256"),
            Algorithm::Ed25519 => Some("EdDSA"),
            _ => None,
        }
    }

    fn id(self) -> u8 {
        match self {
            Algorithm::Aes256Gcm => 0,
            Algorithm::HmacSha256 => 1,
            Algorithm::HmacSha512 => 2,
            Algorithm::EcdsaP256Sha256 => 3,
            Algorithm::RsaPss3072Sha256 => 4,
            Algorithm::RsaPss4096Sha256 => 5,
            Algorithm::Ed25519 => 6,
        }
    }

    fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.id() == id)
    }
}

/// Where a version's material came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Drawn from kmsd's OS RNG.
    #[default]
    Generated,
    /// Brought in from elsewhere ([`KeyRing::import_version`]).
    Imported,
}

impl KeyOrigin {
    /// Upper-case name as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOrigin::Generated => "GENERATED",
            KeyOrigin::Imported => "IMPORTED",
        }
    }
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
    /// Whether a ring whose primary version was imported may rotate
    /// (scheduled, usage or manual) to material kmsd generates. Default
    /// false: a new version of such a key comes only from an import.
    /// Stored in format 3 only.
    #[serde(skip)]
    pub allow_generated_rotation: bool,
}

/// One version of a key ring (not `Clone`: it holds key material).
#[derive(Debug)]
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
    /// Generated here or imported.
    pub origin: KeyOrigin,
    /// The key material (of the ring's algorithm); `None` once destroyed.
    pub material: Option<Material>,
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
    /// A version was imported ([`KeyRing::import_version`]).
    Import,
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

/// A versioned key ring (not `Clone`: it holds key material).
#[derive(Debug)]
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
    /// Whether versions may be exported (fixed at creation).
    pub exportable: bool,
    /// The store revision this ring was read at (`None` if never stored).
    pub revision: Option<Revision>,
}

/// How many rotation events a ring keeps.
pub const MAX_ROTATION_EVENTS: usize = 64;

impl KeyRing {
    /// A new ring with one fresh ACTIVE version of generated material
    /// (from the OS RNG; an RSA key takes a while), with the algorithm's
    /// purpose ([`Algorithm::default_purpose`]).
    pub fn new(name: KeyName, algorithm: Algorithm, policy: KeyPolicy, now: UnixTime) -> Result<Self, Error> {
        let first = KeyVersion::fresh(1, now, Material::generate(algorithm)?, KeyOrigin::Generated);
        Ok(Self::with_first(name, algorithm, policy, now, first))
    }

    /// A new ring whose version 1 is imported material, checked against
    /// `algorithm` ([`Material::import`]): what `ImportKeyVersion` does for
    /// a key that does not exist yet. `exportable` is fixed here as at any
    /// creation; set `policy.allow_generated_rotation` to let it rotate to
    /// generated material later.
    pub fn new_imported(
        name: KeyName,
        algorithm: Algorithm,
        policy: KeyPolicy,
        material: &[u8],
        exportable: bool,
        now: UnixTime,
    ) -> Result<Self, Error> {
        let first = KeyVersion::fresh(1, now, Material::import(algorithm, material)?, KeyOrigin::Imported);
        Ok(Self::with_first(name, algorithm, policy, now, first).exportable(exportable))
    }

    fn with_first(name: KeyName, algorithm: Algorithm, policy: KeyPolicy, now: UnixTime, first: KeyVersion) -> Self {
        let mut ring = KeyRing {
            name,
            algorithm,
            created_at: now,
            primary: 1,
            versions: vec![first],
            policy,
            next_rotation_at: None,
            delete_at: None,
            rotations: Vec::new(),
            purpose: algorithm.default_purpose(),
            exportable: false,
            revision: None,
        };
        ring.next_rotation_at = ring.compute_next_rotation();
        ring
    }

    /// The same new ring with another purpose (at creation only; AES
    /// rings only: the purpose of the other algorithms is fixed).
    pub fn with_purpose(mut self, purpose: KeyPurpose) -> Self {
        if self.algorithm.allows(purpose) {
            self.purpose = purpose;
            self.next_rotation_at = self.compute_next_rotation();
        }
        self
    }

    /// The same new ring, exportable or not (at creation only).
    pub fn exportable(mut self, exportable: bool) -> Self {
        self.exportable = exportable;
        self
    }

    /// Whether the primary version was imported and the policy keeps such
    /// a ring from rotating to generated material.
    fn imported_primary_pinned(&self) -> bool {
        !self.policy.allow_generated_rotation && self.primary_version().is_some_and(|v| v.origin == KeyOrigin::Imported)
    }

    /// Whether the ring may rotate by itself (scheduled or usage): always,
    /// except a token key whose policy does not set `allow_token_rotation`,
    /// and a ring whose primary was imported unless its policy sets
    /// `allow_generated_rotation`.
    pub fn rotates_automatically(&self) -> bool {
        (self.purpose != KeyPurpose::Tokenize || self.policy.allow_token_rotation) && !self.imported_primary_pinned()
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
        if self.imported_primary_pinned() {
            return Err(Error::Precondition(format!(
                "key {:?}: its primary version {} was imported and the policy does not allow rotating it to \
                 generated material (allow_generated_rotation is off); import a new version instead",
                self.name.as_str(),
                self.primary
            )));
        }
        if reason != RotationReason::Manual && !self.rotates_automatically() {
            return Err(Error::Precondition(format!(
                "token key {:?} does not rotate automatically (allow_token_rotation is off)",
                self.name.as_str()
            )));
        }
        let material = Material::generate(self.algorithm)?;
        self.push_primary(now, reason, material, KeyOrigin::Generated)
    }

    /// Adds imported material as a new ACTIVE primary version (origin
    /// IMPORTED, rotation reason IMPORT), demoting the old primary to
    /// DECRYPT_ONLY: what `ImportKeyVersion` does for an existing key.
    /// `algorithm` is the material's, as the importer declares it; it must
    /// be the ring's (FAILED_PRECONDITION otherwise) and the material must
    /// pass [`Material::import`] (`Error::InvalidMaterial`). Returns the
    /// new version number.
    pub fn import_version(&mut self, algorithm: Algorithm, material: &[u8], now: UnixTime) -> Result<u32, Error> {
        if algorithm != self.algorithm {
            return Err(Error::Precondition(format!(
                "key {:?} is {}, the material is declared {}",
                self.name.as_str(),
                self.algorithm.as_str(),
                algorithm.as_str()
            )));
        }
        if self.delete_at.is_some() {
            return Err(Error::Precondition(format!(
                "key {:?} is scheduled for deletion",
                self.name.as_str()
            )));
        }
        let material = Material::import(algorithm, material)?;
        self.push_primary(now, RotationReason::Import, material, KeyOrigin::Imported)
    }

    fn push_primary(
        &mut self,
        now: UnixTime,
        reason: RotationReason,
        material: Material,
        origin: KeyOrigin,
    ) -> Result<u32, Error> {
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
        self.versions.push(KeyVersion::fresh(next, now, material, origin));
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
                ver.material = None; // Material zeroizes on drop
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
            || policy.allow_token_rotation != self.policy.allow_token_rotation
            || policy.allow_generated_rotation != self.policy.allow_generated_rotation;
        self.policy = policy;
        if period_changed {
            self.next_rotation_at = self.compute_next_rotation();
        }
        Ok(())
    }

    /// Whether the ring needs format 3 (anything formats 1 and 2 cannot
    /// hold: another algorithm, an imported version, an IMPORT rotation,
    /// `exportable`, `allow_generated_rotation`).
    fn needs_v3(&self) -> bool {
        self.algorithm != Algorithm::Aes256Gcm
            || self.exportable
            || self.policy.allow_generated_rotation
            || self.versions.iter().any(|v| v.origin != KeyOrigin::Generated)
            || self.rotations.iter().any(|r| r.reason == RotationReason::Import)
            || !matches!(self.purpose, KeyPurpose::EncryptDecrypt | KeyPurpose::Tokenize)
    }

    /// Encodes the ring as record plaintext (zeroizing buffer): format 1
    /// or 2 exactly as before for the rings they can hold, else format 3.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        if self.needs_v3() {
            return self.encode_v3();
        }
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
                    material: v.material.as_ref().and_then(|m| m.aes()).map(|m| *m.expose_secret()),
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
        let cap = 512 + self.versions.len() * 128 + self.rotations.len() * 40;
        encode_into(format, cap, |tail| {
            let n = postcard::to_slice(&rec, &mut *tail)?.len();
            if format == RECORD_V1 {
                return Ok(n);
            }
            match tail.get_mut(n..) {
                Some(rest) => postcard::to_slice(&ext, rest).map(|s| n + s.len()),
                None => Err(postcard::Error::SerializeBufferFull),
            }
        })
    }

    fn encode_v3(&self) -> Zeroizing<Vec<u8>> {
        let rec = RingRecordV3 {
            algorithm: self.algorithm.id(),
            created_at: self.created_at,
            primary: self.primary,
            versions: self
                .versions
                .iter()
                .map(|v| VersionRecordV3 {
                    version: v.version,
                    state: v.state as u8,
                    created_at: v.created_at,
                    destroy_at: v.destroy_at,
                    encryptions_reserved: v.encryptions_reserved,
                    decryptions: v.decryptions,
                    last_used_at: v.last_used_at,
                    origin: match v.origin {
                        KeyOrigin::Generated => 0,
                        KeyOrigin::Imported => 1,
                    },
                    material: v.material.as_ref().map(|m| m.expose_secret().to_vec()),
                })
                .collect(),
            policy: self.policy.clone(),
            next_rotation_at: self.next_rotation_at,
            delete_at: self.delete_at,
            rotations: self.rotations.clone(),
            purpose: self.purpose.id(),
            allow_token_rotation: self.policy.allow_token_rotation,
            allow_generated_rotation: self.policy.allow_generated_rotation,
            exportable: self.exportable,
        };
        let material: usize = rec
            .versions
            .iter()
            .map(|v| v.material.as_ref().map_or(0, Vec::len))
            .sum();
        let cap = 512 + self.versions.len() * 128 + material + self.rotations.len() * 40;
        encode_into(RECORD_V3, cap, |tail| postcard::to_slice(&rec, tail).map(|s| s.len()))
    }

    /// Decodes record plaintext for the ring `name`. Bounded: every length
    /// comes from the record and is checked against what remains; never
    /// panics on truncated or corrupted input.
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
            RECORD_V3 => return Self::decode_v3(name, body, revision),
            _ => return Err(corrupt("unknown key ring record format")),
        };
        if rec.algorithm != Algorithm::Aes256Gcm {
            return Err(corrupt("format 1 and 2 records hold AES-256-GCM rings only"));
        }
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
            versions.push(KeyVersion {
                version: v.version,
                state: state_from(v.state).ok_or_else(|| corrupt("unknown version state"))?,
                created_at: v.created_at,
                destroy_at: v.destroy_at,
                encryptions_reserved: v.encryptions_reserved,
                decryptions: v.decryptions,
                last_used_at: v.last_used_at,
                origin: KeyOrigin::Generated,
                material: v.material.as_ref().map(|m| Material::Aes(KeyMaterial::from_bytes(m))),
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
            exportable: false,
            revision: Some(revision),
        })
    }

    fn decode_v3(name: &KeyName, body: &[u8], revision: Revision) -> Result<Self, Error> {
        let corrupt = |reason| Error::Corrupt {
            kind: RecordKind::KeyRing,
            name: name.to_string(),
            reason,
        };
        let rec: RingRecordV3 = postcard::from_bytes(body).map_err(|_| corrupt("key ring record does not decode"))?;
        let algorithm = Algorithm::from_id(rec.algorithm).ok_or_else(|| corrupt("unknown algorithm"))?;
        let purpose = KeyPurpose::from_id(rec.purpose).ok_or_else(|| corrupt("unknown key purpose"))?;
        if !algorithm.allows(purpose) {
            return Err(corrupt("key purpose does not fit the algorithm"));
        }
        let mut policy = rec.policy.clone();
        policy.allow_token_rotation = rec.allow_token_rotation;
        policy.allow_generated_rotation = rec.allow_generated_rotation;
        let mut versions = Vec::with_capacity(rec.versions.len());
        for (i, v) in rec.versions.iter().enumerate() {
            if v.version as usize != i + 1 {
                return Err(corrupt("key ring versions are not dense"));
            }
            let material = match &v.material {
                None => None,
                Some(m) if m.len() > MAX_MATERIAL_LEN => return Err(corrupt("key material too long")),
                Some(m) => Some(match algorithm {
                    Algorithm::Aes256Gcm => {
                        let arr: &[u8; KEY_LEN] = m
                            .as_slice()
                            .try_into()
                            .map_err(|_| corrupt("AES key material of the wrong length"))?;
                        Material::Aes(KeyMaterial::from_bytes(arr))
                    }
                    a if a.hmac_key_len().is_some_and(|n| n != m.len()) => {
                        return Err(corrupt("HMAC key material of the wrong length"))
                    }
                    _ if m.is_empty() => return Err(corrupt("empty key material")),
                    _ => Material::Bytes(SecretBytes::from_slice(m)),
                }),
            };
            versions.push(KeyVersion {
                version: v.version,
                state: state_from(v.state).ok_or_else(|| corrupt("unknown version state"))?,
                created_at: v.created_at,
                destroy_at: v.destroy_at,
                encryptions_reserved: v.encryptions_reserved,
                decryptions: v.decryptions,
                last_used_at: v.last_used_at,
                origin: match v.origin {
                    0 => KeyOrigin::Generated,
                    1 => KeyOrigin::Imported,
                    _ => return Err(corrupt("unknown key origin")),
                },
                material,
            });
        }
        if rec.primary == 0 || rec.primary as usize > versions.len() {
            return Err(corrupt("primary version does not exist"));
        }
        Ok(KeyRing {
            name: name.clone(),
            algorithm,
            created_at: rec.created_at,
            primary: rec.primary,
            versions,
            policy,
            next_rotation_at: rec.next_rotation_at,
            delete_at: rec.delete_at,
            rotations: rec.rotations.clone(),
            purpose,
            exportable: rec.exportable,
            revision: Some(revision),
        })
    }
}

fn state_from(id: u8) -> Option<VersionState> {
    Some(match id {
        0 => VersionState::Active,
        1 => VersionState::DecryptOnly,
        2 => VersionState::Disabled,
        3 => VersionState::ScheduledForDestruction,
        4 => VersionState::Destroyed,
        _ => return None,
    })
}

/// Writes `format` then what `body` serializes into a zeroizing buffer
/// sized up front (and doubled until it fits), so postcard never
/// reallocates: a reallocation would leave an unzeroized copy of key
/// material behind.
fn encode_into(
    format: u8,
    mut cap: usize,
    mut body: impl FnMut(&mut [u8]) -> Result<usize, postcard::Error>,
) -> Zeroizing<Vec<u8>> {
    loop {
        let mut buf = Zeroizing::new(vec![0u8; cap]);
        if let Some(first) = buf.first_mut() {
            *first = format;
        }
        let used = match buf.get_mut(1..) {
            Some(tail) => body(tail),
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

impl KeyVersion {
    fn fresh(version: u32, now: UnixTime, material: Material, origin: KeyOrigin) -> Self {
        KeyVersion {
            version,
            state: VersionState::Active,
            created_at: now,
            destroy_at: None,
            encryptions_reserved: 0,
            decryptions: 0,
            last_used_at: None,
            origin,
            material: Some(material),
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

/// Stored form of a ring, format 3: every field of formats 1 and 2, the
/// algorithm as a byte ([`Algorithm::ALL`] order from 0), `exportable`,
/// `allow_generated_rotation`, and per version its origin and material
/// of any length. Zeroized on drop (it holds copies of key material).
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct RingRecordV3 {
    algorithm: u8,
    created_at: i64,
    primary: u32,
    versions: Vec<VersionRecordV3>,
    #[zeroize(skip)]
    policy: KeyPolicy,
    next_rotation_at: Option<i64>,
    delete_at: Option<i64>,
    #[zeroize(skip)]
    rotations: Vec<RotationEvent>,
    /// [`KeyPurpose`] id: 0 encrypt/decrypt, 1 tokenize, 2 MAC, 3 sign/verify.
    purpose: u8,
    allow_token_rotation: bool,
    allow_generated_rotation: bool,
    exportable: bool,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct VersionRecordV3 {
    version: u32,
    state: u8,
    created_at: i64,
    destroy_at: Option<i64>,
    encryptions_reserved: u64,
    decryptions: u64,
    last_used_at: Option<i64>,
    /// 0 generated, 1 imported.
    origin: u8,
    /// Raw AES or HMAC key, or PKCS#8 DER.
    material: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let name = KeyName::parse("k").unwrap();
        let mut ring = KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 100).unwrap();
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
        let plain = KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 100).unwrap();
        assert_eq!(plain.encode()[0], RECORD_V1, "ordinary rings keep format 1");
        let mut tok = KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 100)
            .unwrap()
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
        let mut ring = KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 1).unwrap();
        for t in 0..1000 {
            ring.rotate(t, RotationReason::Scheduled).unwrap();
        }
        let back = KeyRing::decode(&name, &ring.encode(), Revision(1)).unwrap();
        assert_eq!(back.versions.len(), 1001);
        assert_eq!(back.rotations.len(), MAX_ROTATION_EVENTS);
    }

    #[test]
    fn every_algorithm_round_trips_in_format_3_and_aes_stays_in_format_1() {
        let name = KeyName::parse("k").unwrap();
        for alg in Algorithm::ALL {
            let mut ring = KeyRing::new(name.clone(), alg, KeyPolicy::default(), 100).unwrap();
            assert_eq!(ring.purpose, alg.default_purpose());
            ring.rotate(200, RotationReason::Manual).unwrap();
            let enc = ring.encode();
            let want = if alg == Algorithm::Aes256Gcm {
                RECORD_V1
            } else {
                RECORD_V3
            };
            assert_eq!(enc[0], want, "{alg:?}");
            let back = KeyRing::decode(&name, &enc, Revision(1)).unwrap();
            assert_eq!((back.algorithm, back.purpose, back.primary), (alg, ring.purpose, 2));
            for (a, b) in back.versions.iter().zip(&ring.versions) {
                assert_eq!(a.origin, KeyOrigin::Generated);
                assert_eq!(
                    a.material.as_ref().unwrap().expose_secret(),
                    b.material.as_ref().unwrap().expose_secret()
                );
                a.material.as_ref().unwrap().check(alg).unwrap();
            }
            assert_ne!(
                back.versions[0].material.as_ref().unwrap().expose_secret(),
                back.versions[1].material.as_ref().unwrap().expose_secret(),
                "a rotation draws fresh material"
            );
            for n in 0..enc.len() {
                let _ = KeyRing::decode(&name, &enc[..n], Revision(1)); // never panics
            }
        }
    }

    #[test]
    fn imported_versions_and_the_generated_rotation_rule() {
        let name = KeyName::parse("imp").unwrap();
        let hmac = [9u8; 32];
        // a ring created from imported material
        let mut ring = KeyRing::new_imported(
            name.clone(),
            Algorithm::HmacSha256,
            KeyPolicy::default(),
            &hmac,
            true,
            10,
        )
        .unwrap();
        assert_eq!(ring.versions[0].origin, KeyOrigin::Imported);
        assert!(ring.exportable);
        // a pinned imported primary rotates to generated material for no reason
        for reason in [RotationReason::Manual, RotationReason::Scheduled, RotationReason::Usage] {
            let e = ring.rotate(20, reason).unwrap_err();
            assert!(e.to_string().contains("allow_generated_rotation"), "{e}");
        }
        ring.set_policy(KeyPolicy {
            rotation_period_secs: Some(3600),
            ..KeyPolicy::default()
        })
        .unwrap();
        assert_eq!(ring.next_rotation_at, None, "no schedule that could only fail");
        // an import adds a primary; wrong algorithm or material is refused
        assert!(matches!(
            ring.import_version(Algorithm::HmacSha512, &[1; 64], 30),
            Err(Error::Precondition(_))
        ));
        assert!(matches!(
            ring.import_version(Algorithm::HmacSha256, &[1; 31], 30),
            Err(Error::InvalidMaterial(_))
        ));
        assert_eq!(ring.versions.len(), 1, "nothing added by a refused import");
        assert_eq!(ring.import_version(Algorithm::HmacSha256, &[1; 32], 30).unwrap(), 2);
        assert_eq!(ring.versions[0].state, VersionState::DecryptOnly);
        assert_eq!(ring.rotations.last().unwrap().reason, RotationReason::Import);
        // allowed: rotates to generated material, and the schedule returns
        let mut p = ring.policy.clone();
        p.allow_generated_rotation = true;
        ring.set_policy(p).unwrap();
        assert!(ring.next_rotation_at.is_some());
        assert_eq!(ring.rotate(40, RotationReason::Scheduled).unwrap(), 3);
        assert_eq!(ring.versions[2].origin, KeyOrigin::Generated);
        let enc = ring.encode();
        assert_eq!(enc[0], RECORD_V3);
        let back = KeyRing::decode(&name, &enc, Revision(1)).unwrap();
        assert!(back.exportable && back.policy.allow_generated_rotation);
        let origins: Vec<_> = back.versions.iter().map(|v| v.origin).collect();
        assert_eq!(
            origins,
            [KeyOrigin::Imported, KeyOrigin::Imported, KeyOrigin::Generated]
        );
        assert_eq!(back.versions[1].material.as_ref().unwrap().expose_secret(), &[1; 32]);
        // an AES ring with an imported version needs format 3 too; a plain
        // exportable AES ring as well
        let mut aes = KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 1).unwrap();
        assert_eq!(aes.encode()[0], RECORD_V1);
        aes.import_version(Algorithm::Aes256Gcm, &[5; 32], 2).unwrap();
        let enc = aes.encode();
        assert_eq!(enc[0], RECORD_V3);
        let back = KeyRing::decode(&name, &enc, Revision(1)).unwrap();
        assert_eq!(
            back.versions[1]
                .material
                .as_ref()
                .unwrap()
                .aes()
                .unwrap()
                .expose_secret(),
            &[5; 32]
        );
        let exp = KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 1)
            .unwrap()
            .exportable(true);
        assert_eq!(exp.encode()[0], RECORD_V3);
        // destroyed material stays destroyed through format 3
        let mut r = KeyRing::new(name.clone(), Algorithm::Ed25519, KeyPolicy::default(), 1).unwrap();
        r.rotate(2, RotationReason::Manual).unwrap();
        r.schedule_destruction(1, 5).unwrap();
        assert_eq!(r.destroy_due(5), vec![1]);
        let back = KeyRing::decode(&name, &r.encode(), Revision(1)).unwrap();
        assert!(back.versions[0].material.is_none());
        assert_eq!(back.versions[0].state, VersionState::Destroyed);
    }

    #[test]
    fn format_3_records_that_do_not_fit_their_algorithm_are_corrupt() {
        let name = KeyName::parse("k").unwrap();
        let ring = KeyRing::new(name.clone(), Algorithm::HmacSha512, KeyPolicy::default(), 1).unwrap();
        let enc = ring.encode();
        // algorithm byte (first field after the format) changed to HMAC_SHA256: 64-byte key
        let mut wrong = enc.to_vec();
        wrong[1] = 1;
        assert!(matches!(
            KeyRing::decode(&name, &wrong, Revision(1)),
            Err(Error::Corrupt { .. })
        ));
        wrong[1] = 200;
        assert!(KeyRing::decode(&name, &wrong, Revision(1)).is_err());
        // a format-1 record may not claim another algorithm
        let aes = KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 1).unwrap();
        let mut v1 = aes.encode().to_vec();
        v1[1] = 3;
        assert!(KeyRing::decode(&name, &v1, Revision(1)).is_err());
    }

    /// Format-1 and format-2 records written by the code before format 3
    /// existed (commit 9c23f72, the same construction as below): decoded,
    /// and re-encoded byte for byte; the same ring built now encodes to
    /// the same bytes.
    #[test]
    fn formats_1_and_2_are_written_byte_for_byte_as_before() {
        const GOLDEN: [&str; 2] = [
            "010080c49fd50c0303010380c49fd50c01c0deabd50c000301d8c89fd50c0101010101010101010101010101010101010101010101010101010101010101010201c8c59fd50c00110301d8c89fd50c010202020202020202020202020202020202020202020202020202020202020202030090c79fd50c00220301d8c89fd50c0103030303030303030303030303030303030303030303030303030303030303030180a30501e8070000010001908daad50c0002c8c59fd50c01020090c79fd50c020302",
            "020080c49fd50c0303010380c49fd50c01c0deabd50c000301d8c89fd50c0111111111111111111111111111111111111111111111111111111111111111110201c8c59fd50c00110301d8c89fd50c011212121212121212121212121212121212121212121212121212121212121212030090c79fd50c00220301d8c89fd50c0113131313131313131313131313131313131313131313131313131313131313130180a30501e8070000010001908daad50c0002c8c59fd50c01020090c79fd50c0203020101",
        ];
        let name = KeyName::parse("golden").unwrap();
        for (i, tok) in [false, true].into_iter().enumerate() {
            let old = hex::decode(GOLDEN[i]).unwrap();
            assert_eq!(old[0], [RECORD_V1, RECORD_V2][i]);
            let back = KeyRing::decode(&name, &old, Revision(1)).unwrap();
            assert_eq!(&back.encode()[..], &old[..], "format {} re-encoded", i + 1);
            assert_eq!(back.versions[2].origin, KeyOrigin::Generated);
            let policy = KeyPolicy {
                rotation_period_secs: Some(86_400),
                max_encryptions_per_version: Some(1000),
                deletion_allowed: true,
                allow_token_rotation: tok,
                ..KeyPolicy::default()
            };
            let mut r = KeyRing::new(name.clone(), Algorithm::Aes256Gcm, policy, 1_700_000_000).unwrap();
            if tok {
                r = r.with_purpose(KeyPurpose::Tokenize);
            }
            r.rotate(1_700_000_100, RotationReason::Manual).unwrap();
            r.rotate(1_700_000_200, RotationReason::Usage).unwrap();
            for (n, v) in r.versions.iter_mut().enumerate() {
                v.material = Some(Material::Aes(KeyMaterial::from_bytes(
                    &[n as u8 + 1 + 16 * i as u8; 32],
                )));
                v.encryptions_reserved = 17 * n as u64;
                v.decryptions = 3;
                v.last_used_at = Some(1_700_000_300);
            }
            r.schedule_destruction(1, 1_700_100_000).unwrap();
            assert_eq!(&r.encode()[..], &old[..], "format {} from the same ring", i + 1);
        }
    }
}
